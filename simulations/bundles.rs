//! The USB courier: bundles exported at one site (`Node::export`), carried, and imported at
//! another (`Node::import`) out of order, twice, bit-flipped or truncated. A damaged bundle
//! must apply nothing (bit flip) or only the whole batches before the cut (truncation).

use std::path::PathBuf;

use crate::world::{HOUR_MS, World};

/// A bundle in the courier's bag.
#[derive(Clone, Debug)]
pub struct Carried {
    pub path: PathBuf,
    pub to: usize,
    pub from: usize,
}

/// The courier's next stop: the parent or a child; it delivers, then collects.
pub fn courier(world: &mut World) {
    if world.healed {
        return;
    }
    let site = if world.rng.chance(0.4) || world.children.is_empty() {
        world.parent
    } else {
        world.children[world.rng.index(world.children.len())]
    };
    visit(world, site, true);
    let next = world.rng.range(2 * HOUR_MS, 12 * HOUR_MS);
    world.after(next, crate::world::Ev::Script(crate::scenario::Script::Courier));
}

fn visit(world: &mut World, site: usize, faults: bool) {
    if !world.alive(site) {
        return;
    }
    let (mut mine, rest): (Vec<Carried>, Vec<Carried>) =
        std::mem::take(&mut world.bag).into_iter().partition(|b| b.to == site);
    world.bag = rest;
    world.rng.shuffle(&mut mine);
    for (n, b) in mine.into_iter().enumerate() {
        if faults && n > 0 && world.rng.chance(0.2) {
            // Left in the bag: delivered on a later visit, after newer bundles.
            world.bag.push(b);
            continue;
        }
        // The first bundle of a visit is always damaged on the way (then often the others).
        import(world, site, &b, faults, n == 0);
        if faults && world.rng.chance(0.2) {
            // Carried again: imported a second time later.
            world.bag.push(b);
        }
    }
    let targets = if site == world.parent { world.children.clone() } else { vec![world.parent] };
    for t in targets {
        export(world, site, t);
    }
}

fn export(world: &mut World, from: usize, to: usize) {
    let Some(node) = world.sites[from].node.as_ref() else { return };
    let to_id = world.sites[to].id;
    let since = node.store.peer_vector(&to_id).ok().flatten().unwrap_or_default();
    world.bundle_seq += 1;
    let path = world.tmp.path().join(format!("bundle-{:06}.ssb", world.bundle_seq));
    match node.export(&path, &since, Some(to_id), |_, _| {}) {
        Ok(r) if r.batches > 0 => {
            world.stats.bundles += 1;
            let bytes = std::fs::read(&path).unwrap_or_default();
            world.trace(b"export", &[&bytes]);
            world.bag.push(Carried { path, to, from });
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => world.fail(format!("{}: export: {e}", world.sites[from].name)),
    }
}

fn import(world: &mut World, site: usize, b: &Carried, faults: bool, damage: bool) {
    let roll = if faults { world.rng.below(100) } else { 100 };
    if roll < 30 || (faults && damage) {
        let Ok(mut bytes) = std::fs::read(&b.path) else { return };
        let damaged = b.path.with_extension(format!("damaged-{}", world.bundle_seq));
        world.bundle_seq += 1;
        let flipped = roll % 2 == 0;
        if flipped {
            let at = world.rng.index(bytes.len());
            bytes[at] ^= 1 << world.rng.below(8);
        } else {
            bytes.truncate(world.rng.index(bytes.len()));
        }
        if std::fs::write(&damaged, &bytes).is_err() {
            return;
        }
        world.stats.bundle_faults += 1;
        let before = world.node(site).and_then(|n| n.store.vector().ok());
        let r = world.node(site).map(|n| n.import(&damaged, |_, _| {}));
        let after = world.node(site).and_then(|n| n.store.vector().ok());
        world.trace(b"import-damaged", &[&[u8::from(flipped)], &[u8::from(before == after)]]);
        if flipped && before != after {
            let m = format!(
                "{}: a bit-flipped bundle from {} applied batches ({r:?})",
                world.sites[site].name, world.sites[b.from].name
            );
            world.fail(m);
        }
        if let Some(v) = after {
            world.vector_moved(site, &v);
        }
        let _ = std::fs::remove_file(&damaged);
        if world.rng.chance(0.5) {
            // The courier noticed, and the intact copy is imported another day.
            world.bag.push(b.clone());
            return;
        }
    }
    let Some(node) = world.sites[site].node.as_ref() else { return };
    let result = node.import(&b.path, |_, _| {});
    let vector = node.store.vector();
    match result {
        Ok(r) => {
            world.stats.batches_applied += r.applied.applied_batches;
            world.stats.batches_present += r.applied.present;
            world.stats.rejected_batches += r.applied.rejected.len() as u64;
            let counts = [r.applied.applied_batches, r.applied.present, r.frames];
            let counts: Vec<u8> = counts.iter().flat_map(|n| n.to_le_bytes()).collect();
            world.trace(b"import", &[&counts]);
            if let Ok(v) = vector {
                world.vector_moved(site, &v);
            }
        }
        Err(e) => {
            let m = format!("{}: an intact bundle did not import: {e}", world.sites[site].name);
            world.fail(m);
        }
    }
}

/// At the heal: what is left in the bag is delivered (stale by now), then two clean rounds
/// (every child to the parent, the parent to every child).
pub fn final_rounds(world: &mut World) {
    let left = std::mem::take(&mut world.bag);
    for b in &left {
        import(world, b.to, b, false, false);
    }
    for _ in 0..2 {
        for c in world.children.clone() {
            export(world, c, world.parent);
        }
        let (parent, children) = (world.parent, world.children.clone());
        deliver_all(world, parent);
        for c in children {
            export(world, parent, c);
            deliver_all(world, c);
        }
    }
}

fn deliver_all(world: &mut World, site: usize) {
    let (mine, rest): (Vec<Carried>, Vec<Carried>) =
        std::mem::take(&mut world.bag).into_iter().partition(|b| b.to == site);
    world.bag = rest;
    for b in mine {
        import(world, site, &b, false, false);
    }
}
