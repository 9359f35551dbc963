//! The adversary: on the wire (corrupted, duplicated, reordered and replayed frames), inside a
//! stream (batches forged with a wrong key, by an untrusted author, or with a tampered body,
//! encoded with the session's own encoder as a peer holding the session keys could), and the
//! hostile relay (a configured, trusted peer that tampers with what it relays). None of it may
//! be accepted anywhere; the checks after the run look for any trace of it.

use sitesync::batch::{BATCH_VERSION, Batch, BatchHash, ChangeRef};
use sitesync::id::{AuthorId, BodyHash, EntityId, EntityType, Incarnation};
use sitesync::identity::Keypair;
use sitesync::node::Env;
use sitesync::protocol::message::WireBatch;

use crate::world::World;

/// Uuids of forged records start with this, so a check can spot any that got through.
pub const FORGED_PREFIX: &str = "f0f0f0f0";

/// What happens to a frame on the wire: the frames that travel instead, each with an extra
/// delay (non-zero: it is overtaken by later frames) and whether it is the sender's own.
pub fn on_wire(
    world: &mut World,
    _conn: u64,
    _from: usize,
    bytes: Vec<u8>,
) -> Vec<(Vec<u8>, u64, bool)> {
    let o = world.opts.clone();
    if world.healed || (o.corrupt + o.duplicate + o.reorder + o.replay) == 0.0 {
        return vec![(bytes, 0, true)];
    }
    let mut out = Vec::new();
    if !world.captured.is_empty() && world.rng.chance(o.replay) {
        let i = world.rng.index(world.captured.len());
        out.push((world.captured[i].clone(), 0, false));
        world.stats.replayed += 1;
    }
    let mut bytes = bytes;
    let mut genuine = true;
    if world.rng.chance(o.corrupt) {
        genuine = false;
        for _ in 0..world.rng.range(1, 3) {
            let at = world.rng.index(bytes.len());
            bytes[at] ^= 1 << world.rng.below(8);
        }
        world.stats.corrupted += 1;
    }
    if world.rng.chance(o.reorder) {
        let delay = world.rng.range(50, 3_000);
        out.push((bytes.clone(), delay, genuine));
        world.stats.reordered += 1;
    } else {
        out.push((bytes.clone(), 0, genuine));
    }
    if world.rng.chance(o.duplicate) {
        out.push((bytes, 0, genuine));
        world.stats.duplicated += 1;
    }
    out
}

/// What a sender's fetched batches become before they are encoded: tampered by a hostile
/// relay, or joined by forged batches (a man in the middle holding the session keys).
pub fn on_fetch(
    world: &mut World,
    conn: u64,
    end: usize,
    batches: Vec<WireBatch>,
) -> Vec<WireBatch> {
    let Some(c) = world.conns.get(&conn) else { return batches };
    let site = c.ends[end].site;
    if c.ends[end].hostile {
        return relay(world, site, batches);
    }
    if world.healed || !world.rng.chance(world.opts.forge) {
        return batches;
    }
    let mut batches = batches;
    let forged = forge(world, &batches);
    let at = world.rng.index(batches.len() + 1);
    batches.insert(at, forged);
    world.stats.forged += 1;
    batches
}

/// The adversary's own key: trusted by nobody.
fn adversary_key(world: &World) -> Keypair {
    Keypair::from_secret(*blake3::hash(&world.opts.seed.to_le_bytes()).as_bytes())
}

/// A forged patient record as one Automerge change by `author`.
fn forged_change(world: &mut World, author: &AuthorId) -> Option<(EntityId, Vec<u8>)> {
    let uuid = format!("{FORGED_PREFIX}{}", &world.rng.uuid()[8..]);
    let input = serde_json::json!({
        "uuid": uuid,
        "identifiers": [{"uuid": world.rng.uuid(), "identifier": "FORGED",
                         "identifierType": "8d79403a-c2cc-11de-8d13-0010c6dffd0f"}],
        "names": [{"uuid": world.rng.uuid(), "givenName": "Mallory"}],
        "gender": "U"
    });
    let record = sitesync::entity::validate(
        EntityType::Patient,
        &input,
        sitesync::id::Uid::from_random([0; 16]),
    )
    .ok()?;
    let keyed = sitesync::store::keyed_fields(EntityType::Patient);
    let time = world.sites[0].env.now_secs();
    let mut doc = sitesync::entity::doc::EntityDoc::new();
    let change = doc.write(author, &record.body, &keyed, time).ok()??;
    Some((record.id, change.raw_bytes().to_vec()))
}

/// One forged batch: signed with the wrong key for a real author, signed by an untrusted
/// author, or a genuine batch with a body swapped.
fn forge(world: &mut World, genuine: &[WireBatch]) -> WireBatch {
    let evil = adversary_key(world);
    let victim = world.rng.index(world.sites.len());
    let victim_author = world.sites[victim]
        .node
        .as_ref()
        .map(|n| n.store.author())
        .unwrap_or(AuthorId { node: world.sites[victim].id, incarnation: Incarnation(7) });
    let held = world.sites[victim].last_vector.get(&victim_author);
    let kind = world.rng.below(3);
    if kind == 2
        && let Some(g) = genuine.first()
    {
        let (signed, mut bodies) = g.clone().into_parts();
        if let Some(body) = bodies.iter_mut().find(|b| !b.is_empty()) {
            let at = world.rng.index(body.len());
            body[at] ^= 0x20;
        }
        return WireBatch::new(signed, bodies);
    }
    let author = if kind == 0 {
        victim_author
    } else {
        AuthorId { node: evil.node_id(), incarnation: Incarnation(1) }
    };
    let seq = if kind == 0 { held + 1 } else { 1 };
    let Some((entity, body)) = forged_change(world, &author) else {
        return genuine.first().cloned().unwrap_or_else(|| empty(&evil));
    };
    let prev = (seq > 1).then(|| BatchHash(world.rng.bytes()));
    let changes = vec![ChangeRef { entity, body: BodyHash::of(&body) }];
    let batch = Batch { version: BATCH_VERSION, author, seq, prev, changes };
    WireBatch::new(batch.sign(&evil), vec![body])
}

fn empty(evil: &Keypair) -> WireBatch {
    let author = AuthorId { node: evil.node_id(), incarnation: Incarnation(1) };
    let batch = Batch { version: BATCH_VERSION, author, seq: 1, prev: None, changes: Vec::new() };
    WireBatch::new(batch.sign(evil), Vec::new())
}

/// The hostile relay's treatment of what it sends: about a third of the batches are flipped,
/// re-signed with its own key, withheld, claimed as its own, dropped or sent twice.
fn relay(world: &mut World, site: usize, batches: Vec<WireBatch>) -> Vec<WireBatch> {
    let Some(node) = world.sites[site].node.as_ref() else { return batches };
    let own = node.store.author();
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        if b.author().node == own.node || !world.rng.chance(0.35) {
            out.push(b);
            continue;
        }
        world.stats.tampered += 1;
        let (signed, mut bodies) = b.clone().into_parts();
        let node = world.sites[site].node.as_ref().expect("checked above");
        match world.rng.below(6) {
            0 => {
                if let Some(body) = bodies.iter_mut().find(|x| !x.is_empty()) {
                    let at = world.rng.index(body.len());
                    body[at] ^= 0x01;
                }
                out.push(WireBatch::new(signed, bodies));
            }
            1 => out.push(WireBatch::new(signed.batch.sign(node.keypair()), bodies)),
            2 => {
                if let Some(body) = bodies.iter_mut().find(|x| !x.is_empty()) {
                    body.clear();
                }
                out.push(WireBatch::new(signed, bodies));
            }
            3 => {
                let mut batch = signed.batch;
                batch.author = own;
                out.push(WireBatch::new(batch.sign(node.keypair()), bodies));
            }
            4 => {}
            _ => {
                out.push(b.clone());
                out.push(b);
            }
        }
    }
    out
}
