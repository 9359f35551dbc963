//! The checks after a run: converged, no lost write, nothing forged or tampered accepted,
//! conflicts surfaced identically. (Liveness is the run loop's deadline; the cheap invariants
//! run during the run: vectors never go backwards, a restart restores exactly the committed
//! vector, a node acks only what it holds, a write reads back.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sitesync::id::{EntityId, EntityType, NodeId};

use crate::workload::field_at;
use crate::world::World;

/// Every site runs, holds the same vector and digest, and nothing waits. With catchments,
/// digests differ by design: every record a child should hold has the parent's heads there,
/// and it holds no other.
pub fn converged(world: &World) -> bool {
    if world.opts.catchment {
        return converged_in_scope(world);
    }
    let mut first: Option<(sitesync::id::Vector, blake3::Hash)> = None;
    for s in &world.sites {
        let Some(node) = s.node.as_ref() else { return false };
        let Ok(sum) = node.summary() else { return false };
        if sum.pending > 0 {
            return false;
        }
        match &first {
            None => first = Some((sum.vector, sum.digest)),
            Some((v, d)) => {
                if *v != sum.vector || *d != sum.digest {
                    return false;
                }
            }
        }
    }
    true
}

fn converged_in_scope(world: &World) -> bool {
    let mut vector = None;
    for s in &world.sites {
        let Some(Ok(sum)) = s.node.as_ref().map(|n| n.summary()) else { return false };
        if sum.pending > 0 || vector.get_or_insert_with(|| sum.vector.clone()) != &sum.vector {
            return false;
        }
    }
    let Some(parent) = world.node(world.parent) else { return false };
    for id in world.oracle.records.keys() {
        let Ok(want) = parent.store.heads(id) else { return false };
        for &c in &world.children {
            let Some(node) = world.node(c) else { return false };
            let held = node.store.heads(id).ok().flatten();
            let should = crate::workload::in_scope(world, c, id);
            if (should && held != want) || (!should && held.is_some()) {
                return false;
            }
        }
    }
    true
}

/// Why the sites are not converged (for the liveness failure).
pub fn divergence(world: &World) -> String {
    let mut out = Vec::new();
    if world.opts.catchment {
        out.push("(with catchments the digests differ by design)".to_string());
    }
    let mut reference = None;
    for s in &world.sites {
        let Some(node) = s.node.as_ref() else {
            out.push(format!("{} is down", s.name));
            continue;
        };
        let Ok(sum) = node.summary() else { continue };
        let batches = sum.vector.0.values().sum::<u64>();
        let line = format!(
            "{}: {batches} batches held, {} waiting, digest {}",
            s.name,
            sum.pending,
            &sum.digest.to_hex()[..12]
        );
        match &reference {
            None => reference = Some((sum.vector.clone(), sum.digest)),
            Some((v, d)) if *v == sum.vector && *d == sum.digest => continue,
            Some((v, _)) => {
                let lacks = v.ahead_of(&sum.vector);
                let extra = sum.vector.ahead_of(v);
                out.push(format!("{line} (lacks {lacks}, has {extra} more than the first site)"));
                continue;
            }
        }
        out.push(line);
    }
    out.join("; ")
}

/// The checks after convergence; failures are added to `world.failures`. After a failed run
/// only `forgeries` apply (the others expect a converged network).
pub fn after_run(world: &mut World) {
    let mut problems = scan(world, true);
    problems.extend(records(world));
    problems.extend(audit_copies(world));
    for p in problems.into_iter().take(10) {
        world.fail(p);
    }
}

/// Each parent's copy of a child's audit log matches the child's log: every entry the child
/// has uploaded is in the copy, identical, and the copy holds nothing the child's log says
/// otherwise. A child restored from a backup is left out: its log was rewound, which its
/// parent reports as a rewrite (tests/audit.rs checks that). So are runs whose adversary
/// corrupts or replays frames: audit entries are chained but not signed, and an `AuditAck`
/// names no session, so a man in the middle holding the session keys can change an entry that
/// still decodes (the parent then reports the broken link instead of storing the next
/// entries), or replay another child's ack (the child then skips entries) (docs/protocol.md,
/// "Known limits").
fn audit_copies(world: &World) -> Vec<String> {
    let mut problems = Vec::new();
    if world.opts.corrupt > 0.0 || world.opts.replay > 0.0 {
        return problems;
    }
    for (&child, &parent) in &world.parent_of {
        let (c, p) = (&world.sites[child], &world.sites[parent]);
        let (Some(cn), Some(pn)) = (c.node.as_ref(), p.node.as_ref()) else { continue };
        if c.restore_count > 0 {
            continue;
        }
        let read = (
            cn.store.events(usize::MAX),
            cn.store.audit_for_parent(&p.id, usize::MAX),
            pn.store.child_audit(&c.id, usize::MAX),
        );
        let (Ok(own), Ok(unsent), Ok(copy)) = read else {
            problems.push(format!("{}: reading the audit log or its copy failed", c.name));
            continue;
        };
        let sent_before = unsent.first().map_or(u64::MAX, |(n, _)| *n);
        let copy: BTreeMap<u64, sitesync::event::Event> = copy.into_iter().collect();
        for (n, entry) in own {
            match copy.get(&n) {
                Some(held) if *held != entry => problems.push(format!(
                    "{}'s copy of {}'s audit entry {n} differs from the entry",
                    p.name, c.name
                )),
                None if n < sent_before => problems.push(format!(
                    "{}'s copy of {}'s audit log lacks entry {n}, which was uploaded",
                    p.name, c.name
                )),
                _ => {}
            }
        }
    }
    problems
}

/// Nothing forged anywhere, even if the run failed otherwise: no batch of an outside author, no
/// record nobody wrote.
pub fn forgeries(world: &mut World) {
    for p in scan(world, false).into_iter().take(5) {
        world.fail(p);
    }
}

fn scan(world: &World, lost_too: bool) -> Vec<String> {
    let ids: BTreeSet<NodeId> = world.sites.iter().map(|s| s.id).collect();
    let mut problems = Vec::new();
    for (site, s) in world.sites.iter().enumerate() {
        let Some(node) = s.node.as_ref() else { continue };
        // Nothing forged: every author held is one of the network's nodes.
        match node.store.vector() {
            Ok(v) => {
                for a in v.0.keys().filter(|a| !ids.contains(&a.node)) {
                    problems.push(format!("{} holds batches of an outside author {a}", s.name));
                }
            }
            Err(e) => problems.push(format!("{}: vector: {e}", s.name)),
        }
        // Exactly the records the workload wrote (rosters aside): none lost, none forged.
        match node.store.list(None) {
            Ok(list) => {
                let held: BTreeSet<EntityId> =
                    list.into_iter().filter(|id| id.ty != EntityType::Roster).collect();
                // Exactly those in the site's scope (all of them without a catchment): nothing
                // out of scope was let through.
                let written: BTreeSet<EntityId> = world
                    .oracle
                    .records
                    .keys()
                    .filter(|id| crate::workload::in_scope(world, site, id))
                    .copied()
                    .collect();
                if let Some(id) = written.difference(&held).next().filter(|_| lost_too) {
                    let n = written.difference(&held).count();
                    problems.push(format!("{}: lost {n} written records, e.g. {id}", s.name));
                }
                if let Some(id) = held.difference(&written).next() {
                    let n = held.difference(&written).count();
                    let what = if world.oracle.records.contains_key(id) {
                        "outside its catchment"
                    } else {
                        "nobody wrote"
                    };
                    problems.push(format!("{}: holds {n} records {what}, e.g. {id}", s.name));
                }
            }
            Err(e) => problems.push(format!("{}: list: {e}", s.name)),
        }
    }
    problems
}

/// Per record: every site reads the same JSON and conflicts; untouched fields are as created;
/// each edited field holds exactly the standing values of the oracle.
fn records(world: &mut World) -> Vec<String> {
    let mut problems = Vec::new();
    let mut conflicted = 0;
    for (id, rec) in &world.oracle.records {
        let mut first: Option<(Value, Vec<sitesync::entity::doc::FieldConflict>, &str)> = None;
        for (site, s) in world.sites.iter().enumerate() {
            let Some(node) = s.node.as_ref() else { continue };
            if !crate::workload::in_scope(world, site, id) {
                continue;
            }
            let (json, conflicts) = match node.store.get(id) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    problems.push(format!("{}: lost write: {id} is missing", s.name));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{}: get {id}: {e}", s.name));
                    continue;
                }
            };
            match &first {
                Some((j, c, name)) => {
                    if *j != json {
                        let d = difference(j, &json, String::new());
                        problems
                            .push(format!("{id} reads differently at {name} and {}: {d}", s.name));
                    } else if *c != conflicts {
                        problems.push(format!(
                            "{id} shows other conflicts at {name} and {}: {c:?} / {conflicts:?}",
                            s.name
                        ));
                    }
                }
                None => {
                    problems.extend(against_oracle(world, id, rec, &json, &conflicts, &s.name));
                    if !conflicts.is_empty() {
                        conflicted += 1;
                    }
                    first = Some((json, conflicts, &s.name));
                }
            }
        }
        if problems.len() > 10 {
            break;
        }
    }
    world.stats.conflicts = conflicted;
    problems
}

fn against_oracle(
    world: &World,
    id: &EntityId,
    rec: &crate::workload::Rec,
    json: &Value,
    conflicts: &[sitesync::entity::doc::FieldConflict],
    site: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stripped = json.clone();
    let mut created = rec.created.clone();
    for path in rec.fields.keys() {
        let standing = world.oracle.standing(id, path);
        let winner = field_at(json, path).cloned();
        let surfaced: Vec<Value> = match conflicts.iter().find(|c| &c.path == path) {
            Some(c) => c.values.iter().map(|v| v.value.clone()).collect(),
            None => winner.clone().into_iter().collect(),
        };
        let want: BTreeMap<String, usize> = count(&standing);
        let got: BTreeMap<String, usize> = count(&surfaced);
        if want != got || !winner.as_ref().is_some_and(|w| standing.contains(w)) {
            let writes = &rec.fields[path];
            let lost: Vec<&Value> = standing.iter().filter(|v| !surfaced.contains(v)).collect();
            problems.push(format!(
                "{site}: {id} {path}: holds {surfaced:?} (winner {winner:?}), but the writes \
                 leave {standing:?} standing ({} writes; lost: {lost:?})",
                writes.len()
            ));
        }
        blank(&mut stripped, path);
        blank(&mut created, path);
    }
    if stripped != created {
        let d = difference(&created, &stripped, String::new());
        problems.push(format!("{site}: {id} was altered since it was created: {d}"));
    }
    problems
}

/// The first place where two JSON values differ, as `path: a / b`.
fn difference(a: &Value, b: &Value, at: String) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let w = y.get(k).unwrap_or(&Value::Null);
                if v != w {
                    return difference(v, w, format!("{at}.{k}"));
                }
            }
            let extra = y.keys().find(|k| !x.contains_key(*k));
            format!("{at}: only the second has {extra:?}")
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            match x.iter().zip(y).enumerate().find(|(_, (v, w))| v != w) {
                Some((i, (v, w))) => difference(v, w, format!("{at}[{i}]")),
                None => format!("{at}: equal"),
            }
        }
        _ => format!("{at}: {a} / {b}"),
    }
}

fn count(values: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for v in values {
        *out.entry(v.to_string()).or_insert(0) += 1;
    }
    out
}

fn blank(v: &mut Value, path: &str) {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => match m.get_mut(seg) {
                Some(x) => x,
                None => return,
            },
            Value::Array(items) => match items.iter_mut().find(|i| i["uuid"] == seg) {
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
    }
    *cur = Value::Null;
}
