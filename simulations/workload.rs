//! The EMR workload and its oracle. Every site writes through `Node::put`, like the EMR beside
//! it would: new patients, visits with encounters and observations, and edits that read the
//! record (`get`), change one field and write it back, so that sites edit the same records
//! while apart (different fields and the same field).
//!
//! The oracle is a model of a multi-value register per edited field: a write records the values
//! the writer saw in that field (the winner and any concurrent values) when it wrote, and those
//! are exactly the values it overwrites. After convergence, the values still standing in a
//! field on every node must be those of the writes no other write saw; more than one is a
//! conflict that every node must list the same way. Values are unique per write, so a value
//! names its write.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sitesync::id::{AuthorId, EntityId, EntityType};

use crate::world::{Ev, World};

const ID_TYPE: &str = "8d79403a-c2cc-11de-8d13-0010c6dffd0f";
const NATIONAL_ID_TYPE: &str = "8cab81b7-71de-465e-8901-bbe7d5ac9506";
const PHONE_ATTRIBUTE: &str = "f2648c03-219b-4a99-b0f7-0c897f4f1946";
const VISIT_TYPE: &str = "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466";
const ENCOUNTER_TYPE: &str = "c559e725-60aa-42cc-a77f-be67097c9493";
const WEIGHT: &str = "e376a8ae-b11e-4d53-a00d-1bf68b98fdd7";
const GIVEN: [&str; 6] = ["Amina", "Joseph", "Grace", "Peter", "Wanjiru", "Samuel"];

/// One write of an edited field.
#[derive(Clone, Debug)]
pub struct FieldWrite {
    pub value: Value,
    /// The values the writer saw in the field (and so overwrote).
    pub saw: Vec<Value>,
    /// The batch that carries the write: (author, seq).
    pub batch: (AuthorId, u64),
}

/// A record the workload created.
#[derive(Clone, Debug)]
pub struct Rec {
    /// The patient the record belongs to (itself for a patient): what a catchment follows.
    pub patient: EntityId,
    /// The batch that carries the creation.
    pub batch: (AuthorId, u64),
    /// The record as its creator read it back after the put.
    pub created: Value,
    /// Edited fields (dotted paths, keyed items by uuid) and their writes.
    pub fields: BTreeMap<String, Vec<FieldWrite>>,
}

#[derive(Default)]
pub struct Oracle {
    pub records: BTreeMap<EntityId, Rec>,
    pub patients: Vec<EntityId>,
    pub obs: Vec<EntityId>,
    /// Patients every site edits (created before the faults start).
    pub hot: Vec<EntityId>,
    counter: u64,
}

impl Oracle {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Forgets the writes that `held` says nobody holds any more (a restored backup lost them:
    /// the node's own writes since the backup, and others' writes it was the last to hold);
    /// returns how many.
    pub fn forget(&mut self, held: impl Fn(&AuthorId, u64) -> bool) -> u64 {
        let mut lost = 0;
        let gone: Vec<EntityId> = self
            .records
            .iter()
            .filter(|(_, r)| !held(&r.batch.0, r.batch.1))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.records.remove(id);
            lost += 1;
        }
        for list in [&mut self.patients, &mut self.obs, &mut self.hot] {
            list.retain(|id| !gone.contains(id));
        }
        for rec in self.records.values_mut() {
            for writes in rec.fields.values_mut() {
                let before = writes.len();
                writes.retain(|w| held(&w.batch.0, w.batch.1));
                lost += (before - writes.len()) as u64;
            }
        }
        lost
    }

    /// The values that must still stand in `path` of `id`: those no other write saw.
    pub fn standing(&self, id: &EntityId, path: &str) -> Vec<Value> {
        let Some(writes) = self.records.get(id).and_then(|r| r.fields.get(path)) else {
            return Vec::new();
        };
        writes
            .iter()
            .filter(|w| !writes.iter().any(|o| o.saw.contains(&w.value)))
            .map(|w| w.value.clone())
            .collect()
    }
}

/// The value at a dotted path; a segment inside a list names the item with that `uuid`.
pub fn field_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(items) => items.iter().find(|i| i["uuid"] == seg)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn set_field(v: &mut Value, path: &str, new: Value) -> bool {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => match m.get_mut(seg) {
                Some(x) => x,
                None => return false,
            },
            Value::Array(items) => match items.iter_mut().find(|i| i["uuid"] == seg) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    *cur = new;
    true
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn iso(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A site's EMR writes something, then its next write is scheduled.
pub fn write(world: &mut World, site: usize) {
    if !world.sites[site].writes_on {
        return;
    }
    let gap = world.write_gap();
    world.after(gap, Ev::Write(site));
    if !world.alive(site) {
        return;
    }
    match world.rng.below(100) {
        0..20 => {
            new_patient(world, site);
        }
        20..50 => new_encounter(world, site),
        50..85 => {
            if let Some(id) = pick_patient(world, site) {
                edit(world, site, id, None);
            }
        }
        _ => {
            let n = world.oracle.obs.len();
            if n > 0 {
                let id = world.oracle.obs[world.rng.index(n)];
                edit(world, site, id, None);
            }
        }
    }
}

/// A patient for an edit: a hot one often, else any the site holds.
fn pick_patient(world: &mut World, site: usize) -> Option<EntityId> {
    let hot = world.oracle.hot.len();
    if hot > 0 && world.rng.chance(0.4) {
        return Some(world.oracle.hot[world.rng.index(hot)]);
    }
    let n = world.oracle.patients.len();
    for _ in 0..4 {
        if n == 0 {
            return None;
        }
        let id = world.oracle.patients[world.rng.index(n)];
        if world.node(site).is_some_and(|node| node.store.get(&id).ok().flatten().is_some()) {
            return Some(id);
        }
    }
    None
}

/// Registers a new patient at `site`.
pub fn new_patient(world: &mut World, site: usize) -> Option<EntityId> {
    new_patient_at(world, site, &[])
}

/// Registers a new patient at `site` that also holds identifiers issued at `elsewhere`
/// (locations of other clinics).
pub fn new_patient_at(world: &mut World, site: usize, elsewhere: &[String]) -> Option<EntityId> {
    let n = world.oracle.next();
    let tag = format!("{}-{n:06}", world.sites[site].name);
    let r = &mut world.rng;
    let (uuid, idu, nidu, nu, au, tu) =
        (r.uuid(), r.uuid(), r.uuid(), r.uuid(), r.uuid(), r.uuid());
    let gender = ["M", "F", "U", "O"][r.index(4)];
    let birth = format!("{:04}-{:02}-{:02}", 1940 + r.below(80), 1 + r.below(12), 1 + r.below(28));
    let given = GIVEN[r.index(GIVEN.len())];
    let record = json!({
        "uuid": uuid,
        "identifiers": [
            {"uuid": idu, "identifier": tag, "identifierType": ID_TYPE,
             "location": world.sites[site].location, "preferred": true, "voided": false},
            {"uuid": nidu, "identifier": format!("NID-{n}"), "identifierType": NATIONAL_ID_TYPE,
             "preferred": false, "voided": false}
        ],
        "names": [{"uuid": nu, "givenName": given, "middleName": format!("m-{tag}"),
                   "familyName": format!("f-{tag}"), "preferred": true, "voided": false}],
        "gender": gender,
        "birthdate": birth,
        "birthdateEstimated": false,
        "dead": false,
        "addresses": [{"uuid": au, "address1": format!("a-{tag}"), "cityVillage": "Mawingu",
                       "country": "Kenya", "preferred": true, "voided": false}],
        "attributes": [{"uuid": tu, "attributeType": PHONE_ATTRIBUTE,
                        "value": format!("p-{tag}"), "voided": false}],
        "voided": false
    });
    let mut record = record;
    for (k, loc) in elsewhere.iter().enumerate() {
        let item = json!({"uuid": world.rng.uuid(), "identifier": format!("{tag}-{k}"),
                          "identifierType": ID_TYPE, "location": loc, "preferred": false,
                          "voided": false});
        if let Some(list) = record["identifiers"].as_array_mut() {
            list.push(item);
        }
    }
    let paths = vec![
        format!("names.{nu}.middleName"),
        format!("names.{nu}.familyName"),
        format!("addresses.{au}.address1"),
        format!("attributes.{tu}.value"),
    ];
    let ids = put_new(world, site, EntityType::Patient, None, vec![(record, paths)]);
    world.oracle.patients.extend(&ids);
    ids.first().copied()
}

/// A visit, an encounter in it and one to three observations, for a patient the site holds.
fn new_encounter(world: &mut World, site: usize) {
    let Some(patient) = pick_patient(world, site) else { return };
    let secs = world.sites[site].env.as_ref();
    let when = iso(sitesync::node::Env::now_secs(secs));
    let loc = world.sites[site].location.clone();
    let (visit, enc) = (world.rng.uuid(), world.rng.uuid());
    let p = patient.uuid.to_string();
    let v = json!({"uuid": visit, "patient": p, "visitType": VISIT_TYPE, "startDatetime": when,
                   "location": loc, "voided": false});
    put_new(world, site, EntityType::Visit, Some(patient), vec![(v, Vec::new())]);
    let e = json!({"uuid": enc, "patient": p, "encounterType": ENCOUNTER_TYPE,
                   "encounterDatetime": when, "location": loc, "visit": visit, "voided": false});
    put_new(world, site, EntityType::Encounter, Some(patient), vec![(e, Vec::new())]);
    let count = world.rng.range(1, 3);
    let mut obs = Vec::new();
    for _ in 0..count {
        let n = world.oracle.next();
        let value = 40.0 + world.rng.below(600) as f64 / 10.0;
        let o = json!({"uuid": world.rng.uuid(), "person": p, "concept": WEIGHT,
                       "obsDatetime": when, "encounter": enc, "location": loc,
                       "valueNumeric": value, "status": "FINAL",
                       "comment": format!("c-{}-{n:06}", world.sites[site].name),
                       "voided": false});
        obs.push((o, vec!["comment".to_string()]));
    }
    let ids = put_new(world, site, EntityType::Obs, Some(patient), obs);
    world.oracle.obs.extend(ids);
}

/// Writes new records in one `put` and registers them with the oracle as read back.
fn put_new(
    world: &mut World,
    site: usize,
    ty: EntityType,
    patient: Option<EntityId>,
    records: Vec<(Value, Vec<String>)>,
) -> Vec<EntityId> {
    let Some(node) = world.sites[site].node.as_ref() else { return Vec::new() };
    let input = Value::Array(records.iter().map(|(v, _)| v.clone()).collect());
    let out = match node.put(ty, &input) {
        Ok(out) => out,
        Err(e) => {
            world.fail(format!("{}: a valid {ty} was refused: {e}", world.sites[site].name));
            return Vec::new();
        }
    };
    let read: Vec<_> = out.iter().map(|o| (o.id, node.store.get(&o.id))).collect();
    let batch = last_batch(node);
    let mut ids = Vec::new();
    for ((id, got), (_, paths)) in read.into_iter().zip(records) {
        let created = match got {
            Ok(Some((json, _))) => json,
            other => {
                let m =
                    format!("{}: {id} not readable after put: {other:?}", world.sites[site].name);
                world.fail(m);
                continue;
            }
        };
        let mut fields = BTreeMap::new();
        for p in paths {
            let value = field_at(&created, &p).cloned().unwrap_or(Value::Null);
            fields.insert(p, vec![FieldWrite { value, saw: Vec::new(), batch }]);
        }
        let patient = patient.unwrap_or(id);
        world.oracle.records.insert(id, Rec { patient, batch, created, fields });
        ids.push(id);
    }
    world.stats.writes += ids.len() as u64;
    let key: Vec<u8> = ids.iter().flat_map(|i| i.key().into_bytes()).collect();
    world.trace(b"put", &[&key]);
    ids
}

/// The batch a write just sealed: the node's author and its top seq.
fn last_batch(node: &sitesync::node::Node) -> (AuthorId, u64) {
    let author = node.store.author();
    let seq = node.store.vector().map_or(0, |v| v.get(&author));
    (author, seq)
}

/// Reads `id` at `site`, changes one edited field (`path`, or a random one) and writes it back.
pub fn edit(world: &mut World, site: usize, id: EntityId, path: Option<&str>) {
    let Some(rec) = world.oracle.records.get(&id) else { return };
    let paths: Vec<String> = rec.fields.keys().cloned().collect();
    if paths.is_empty() {
        return;
    }
    let path = match path {
        Some(p) => p.to_string(),
        None => paths[world.rng.index(paths.len())].clone(),
    };
    let n = world.oracle.next();
    let Some(node) = world.sites[site].node.as_ref() else { return };
    // The EMR reads what `put` builds on: received changes are merged first.
    if node.store.has_dirty().unwrap_or(false)
        && let Err(e) = node.merge_received()
    {
        world.fail(format!("{}: merging before an edit: {e}", world.sites[site].name));
        return;
    }
    let Ok(Some((mut json, conflicts))) = node.store.get(&id) else { return };
    let mut saw: Vec<Value> = field_at(&json, &path).into_iter().cloned().collect();
    if let Some(c) = conflicts.iter().find(|c| c.path == path) {
        for v in &c.values {
            if !saw.contains(&v.value) {
                saw.push(v.value.clone());
            }
        }
    }
    let value = Value::String(format!("e-{}-{n:06}", world.sites[site].name));
    if !set_field(&mut json, &path, value.clone()) {
        return;
    }
    let put = node.put(id.ty, &json);
    let batch = last_batch(node);
    // Read your own write.
    let back = node.store.get(&id).ok().flatten().and_then(|(j, _)| field_at(&j, &path).cloned());
    if let Err(e) = put {
        world.fail(format!("{}: an edit of {id} was refused: {e}", world.sites[site].name));
        return;
    }
    if back.as_ref() != Some(&value) {
        let m =
            format!("{}: wrote {value} to {id} {path}, read back {back:?}", world.sites[site].name);
        world.fail(m);
    }
    if let Some(rec) = world.oracle.records.get_mut(&id) {
        rec.fields.entry(path.clone()).or_default().push(FieldWrite { value, saw, batch });
    }
    world.stats.edits += 1;
    world.trace(b"edit", &[id.key().as_bytes(), path.as_bytes()]);
}

/// Creates the hot patients at `site` (usually the parent) before the faults start; with
/// catchments, they hold an identifier at every clinic (so every clinic edits them).
pub fn hot_patients(world: &mut World, site: usize, count: usize) {
    let everywhere: Vec<String> = if world.opts.catchment {
        world.children.iter().map(|&c| world.sites[c].location.clone()).collect()
    } else {
        Vec::new()
    };
    for _ in 0..count {
        if let Some(id) = new_patient_at(world, site, &everywhere) {
            world.oracle.hot.push(id);
        }
    }
}

/// Whether `site` should hold `id`: everything at a site without a catchment, else records
/// whose patient has an identifier issued at the site's clinic (as the oracle knows it).
pub fn in_scope(world: &World, site: usize, id: &EntityId) -> bool {
    if !world.opts.catchment || site == world.parent {
        return true;
    }
    let Some(rec) = world.oracle.records.get(id) else { return false };
    let Some(patient) = world.oracle.records.get(&rec.patient) else { return false };
    let location = Value::String(world.sites[site].location.clone());
    patient.created["identifiers"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i["location"] == location))
}

/// A patient registered elsewhere is registered at `clinic` too: the parent adds an
/// identifier issued there (a transfer). From now on the patient, and everything recorded
/// for it before, is inside the clinic's catchment.
pub fn transfer(world: &mut World, clinic: usize) {
    let n = world.oracle.patients.len();
    if n == 0 {
        return;
    }
    let id = world.oracle.patients[world.rng.index(n)];
    let site = world.parent;
    if in_scope(world, clinic, &id) {
        return;
    }
    let item = json!({"uuid": world.rng.uuid(), "identifier": format!("T-{}", world.oracle.next()),
                      "identifierType": ID_TYPE, "location": world.sites[clinic].location,
                      "preferred": false, "voided": false});
    let Some(node) = world.sites[site].node.as_ref() else { return };
    if node.store.has_dirty().unwrap_or(false) && node.merge_received().is_err() {
        return;
    }
    let Ok(Some((mut json, _))) = node.store.get(&id) else { return };
    let Some(list) = json["identifiers"].as_array_mut() else { return };
    list.push(item);
    let put = node.put(id.ty, &json);
    let back = node.store.get(&id).ok().flatten();
    match (put, back) {
        (Ok(_), Some((back, _))) => {
            if let Some(rec) = world.oracle.records.get_mut(&id) {
                rec.created["identifiers"] = back["identifiers"].clone();
            }
            world.stats.edits += 1;
            world.trace(b"transfer", &[id.key().as_bytes()]);
        }
        (r, _) => world.fail(format!("parent: a transfer of {id} failed: {r:?}")),
    }
}
