//! Packing of a session's change bodies on the wire.
//!
//! Each Automerge change carries bytes the receiver can rebuild: a 4-byte checksum and a length
//! (both follow from the rest), the 40-byte actor (it must equal the batch author's, a rule the
//! receiver checks anyway), and one 32-byte hash per dependency — usually the hash of an earlier
//! change to the same record, which the receiver has just received in the same session. Random
//! hashes do not compress, so they are most of what an edit costs on the wire.
//!
//! A session keeps two tables per direction, filled in the order changes travel: the Automerge
//! hash of every change sent, and every record named. A packed change names its record and its
//! dependencies by index into these tables when it can, and by value otherwise. The receiver
//! rebuilds the exact original bytes, so body hashes and signatures are checked as before: a
//! packed change that rebuilds differently fails its batch's signature, nothing more. A change
//! that does not rebuild exactly (any chunk but a plain change, a non-minimal length) travels
//! verbatim.
//!
//! Both sides bound the tables at [`TABLE_ENTRIES_MAX`] entries and stop adding at the same
//! point, so they never disagree. Frames are decoded in the order they were sent (one QUIC stream),
//! which is what keeps the two copies equal.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::batch::{BATCH_CHANGES_MAX, CHANGE_BYTES_MAX};
use crate::id::{BodyHash, EntityId};

/// Most entries in each of a session's tables (change hashes, records), per direction.
pub const TABLE_ENTRIES_MAX: usize = 1 << 20;
/// Most body bytes a packed message may rebuild to (bounds amplification by references).
pub const UNPACKED_BYTES_MAX: usize = 128 * 1024 * 1024;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_CHANGE: u8 = 1;
const BODY_VERBATIM: u8 = 0;
const BODY_PACKED: u8 = 1;
/// The body is withheld (outside the receiver's scope): only its 32-byte hash follows.
const BODY_WITHHELD: u8 = 2;
const ACTOR_AUTHOR: u8 = 1;
const ACTOR_LITERAL: u8 = 0;

/// The sending side's tables.
#[derive(Default)]
pub struct PackState {
    hashes: HashMap<[u8; 32], u32>,
    /// Entries recorded so far (a hash seen twice takes two entries, as on the receiving side).
    recorded: usize,
    entities: HashMap<EntityId, u32>,
}

/// The receiving side's tables.
#[derive(Default)]
pub struct UnpackState {
    hashes: Vec<[u8; 32]>,
    entities: Vec<EntityId>,
    /// Body bytes rebuilt for the message being decoded.
    rebuilt: usize,
}

impl UnpackState {
    /// Starts a new message (resets the per-message amplification budget).
    pub fn begin_message(&mut self) {
        self.rebuilt = 0;
    }
}

/// The Automerge hash of a change chunk (`sha256(type | leb(len) | data)`), as its
/// dependants name it. `None` for bytes that are not a minimal-length chunk.
fn change_hash(chunk: &[u8]) -> Option<[u8; 32]> {
    let header = parse_header(chunk)?;
    Some(header.hash)
}

struct Header<'a> {
    data: &'a [u8],
    hash: [u8; 32],
}

fn parse_header(chunk: &[u8]) -> Option<Header<'_>> {
    if chunk.len() < 9 || chunk[..4] != MAGIC {
        return None;
    }
    let (len, used) = read_uleb(&chunk[9..])?;
    let data = &chunk[9 + used..];
    if len != data.len() as u64 || uleb_len(len) != used {
        return None;
    }
    let hash: [u8; 32] = Sha256::digest(&chunk[8..]).into();
    if hash[..4] != chunk[4..8] {
        return None;
    }
    Some(Header { data, hash })
}

/// Packs the changes of one batch. `actor` is the batch author's actor bytes. An empty body
/// is a withheld one; `withheld` holds their hashes in order.
pub fn pack_batch(
    state: &mut PackState,
    actor: &[u8],
    entities: &[EntityId],
    bodies: &[Vec<u8>],
    withheld: &[BodyHash],
) -> Vec<u8> {
    let mut withheld = withheld.iter();
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len()).sum::<usize>() / 2 + 16);
    for (entity, body) in entities.iter().zip(bodies) {
        match state.entities.get(entity) {
            Some(&i) => write_uleb(&mut out, u64::from(i) + 1),
            None => {
                write_uleb(&mut out, 0);
                // An EntityId always serializes.
                let _ = postcard::to_io(entity, &mut out);
                if state.entities.len() < TABLE_ENTRIES_MAX {
                    let i = state.entities.len() as u32;
                    state.entities.insert(*entity, i);
                }
            }
        }
        if body.is_empty() {
            out.push(BODY_WITHHELD);
            out.extend_from_slice(&withheld.next().copied().unwrap_or(BodyHash([0; 32])).0);
            continue;
        }
        let hash = match pack_change(state, actor, body) {
            Some((packed, hash)) => {
                out.push(BODY_PACKED);
                out.extend_from_slice(&packed);
                Some(hash)
            }
            None => {
                out.push(BODY_VERBATIM);
                write_uleb(&mut out, body.len() as u64);
                out.extend_from_slice(body);
                change_hash(body)
            }
        };
        // Both sides record the hash of every change that is a well-formed chunk.
        if let Some(hash) = hash
            && state.recorded < TABLE_ENTRIES_MAX
        {
            let i = state.recorded as u32;
            state.hashes.entry(hash).or_insert(i);
            state.recorded += 1;
        }
    }
    out
}

/// Packs one change, or `None` when it must travel verbatim.
fn pack_change(state: &PackState, actor: &[u8], body: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    if body.get(8) != Some(&CHUNK_CHANGE) {
        return None;
    }
    let header = parse_header(body)?;
    let data = header.data;
    let (ndeps, mut at) = read_uleb(data)?;
    let mut out = Vec::with_capacity(data.len());
    write_uleb(&mut out, ndeps);
    for _ in 0..ndeps {
        let dep: [u8; 32] = data.get(at..at + 32)?.try_into().ok()?;
        at += 32;
        match state.hashes.get(&dep) {
            Some(&i) => write_uleb(&mut out, u64::from(i) + 1),
            None => {
                write_uleb(&mut out, 0);
                out.extend_from_slice(&dep);
            }
        }
    }
    let (actor_len, used) = read_uleb(&data[at..])?;
    let actor_start = at + used;
    let actor_end = actor_start.checked_add(usize::try_from(actor_len).ok()?)?;
    let this_actor = data.get(actor_start..actor_end)?;
    if this_actor == actor {
        out.push(ACTOR_AUTHOR);
    } else {
        out.push(ACTOR_LITERAL);
        write_uleb(&mut out, actor_len);
        out.extend_from_slice(this_actor);
    }
    let rest = &data[actor_end..];
    write_uleb(&mut out, rest.len() as u64);
    out.extend_from_slice(rest);
    // The receiver rebuilds every length as minimal LEB128 and the checksum from the hash;
    // `read_uleb` and `parse_header` accepted only minimal lengths and a matching checksum, so
    // the rebuilt bytes are these bytes.
    Some((out, header.hash))
}

/// A batch's changes as unpacked: record ids, bodies (empty when withheld), and the hashes of
/// the withheld bodies in order.
pub type Unpacked = (Vec<EntityId>, Vec<Vec<u8>>, Vec<BodyHash>);

/// Unpacks the changes of one batch (`count` of them).
pub fn unpack_batch(
    state: &mut UnpackState,
    actor: &[u8],
    count: usize,
    packed: &[u8],
) -> Result<Unpacked, String> {
    if count > BATCH_CHANGES_MAX {
        return Err(format!("{count} changes in one batch (limit {BATCH_CHANGES_MAX})"));
    }
    let mut entities = Vec::with_capacity(count);
    let mut bodies = Vec::with_capacity(count);
    let mut withheld = Vec::new();
    let mut rest = packed;
    for n in 0..count {
        let bad = |what: &str| format!("change {n} of the batch: {what}");
        let (e, used) = read_uleb(rest).ok_or_else(|| bad("record reference"))?;
        rest = &rest[used..];
        let entity = if e == 0 {
            let (entity, tail): (EntityId, &[u8]) =
                postcard::take_from_bytes(rest).map_err(|e| bad(&format!("record id: {e}")))?;
            rest = tail;
            if state.entities.len() < TABLE_ENTRIES_MAX {
                state.entities.push(entity);
            }
            entity
        } else {
            *usize::try_from(e - 1)
                .ok()
                .and_then(|i| state.entities.get(i))
                .ok_or_else(|| bad(&format!("record reference {e} to nothing")))?
        };
        let (&kind, tail) = rest.split_first().ok_or_else(|| bad("truncated"))?;
        rest = tail;
        if kind == BODY_WITHHELD {
            let hash: [u8; 32] =
                rest.get(..32).and_then(|h| h.try_into().ok()).ok_or_else(|| bad("truncated"))?;
            rest = &rest[32..];
            withheld.push(BodyHash(hash));
            entities.push(entity);
            bodies.push(Vec::new());
            continue;
        }
        let (body, hash) = match kind {
            BODY_VERBATIM => {
                let (len, used) = read_uleb(rest).ok_or_else(|| bad("body length"))?;
                let len = usize::try_from(len).map_err(|_| bad("body length"))?;
                if len == 0 {
                    return Err(bad("an empty body"));
                }
                if len > CHANGE_BYTES_MAX {
                    return Err(bad(&format!("body of {len} bytes")));
                }
                let body = rest.get(used..used + len).ok_or_else(|| bad("truncated body"))?;
                rest = &rest[used + len..];
                state.rebuilt += len;
                (body.to_vec(), change_hash(body))
            }
            BODY_PACKED => {
                let hashes = &state.hashes;
                let (body, used) = rebuild(
                    rest,
                    actor,
                    &|i| usize::try_from(i).ok().and_then(|i| hashes.get(i)).copied(),
                    &mut state.rebuilt,
                )
                .map_err(|e| bad(&e))?;
                rest = &rest[used..];
                let hash: [u8; 32] = Sha256::digest(&body[8..]).into();
                (body, Some(hash))
            }
            other => return Err(bad(&format!("unknown body kind {other}"))),
        };
        if state.rebuilt > UNPACKED_BYTES_MAX {
            return Err(format!("a message rebuilds to more than {UNPACKED_BYTES_MAX} bytes"));
        }
        if let Some(hash) = hash
            && state.hashes.len() < TABLE_ENTRIES_MAX
        {
            state.hashes.push(hash);
        }
        entities.push(entity);
        bodies.push(body);
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last change of a batch", rest.len()));
    }
    Ok((entities, bodies, withheld))
}

/// Reads packed bytes front to back.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn uleb(&mut self, what: &str) -> Result<u64, String> {
        let (v, used) = read_uleb(&self.bytes[self.at..]).ok_or_else(|| format!("bad {what}"))?;
        self.at += used;
        Ok(v)
    }

    fn len(&mut self, what: &str) -> Result<usize, String> {
        usize::try_from(self.uleb(what)?).map_err(|_| format!("bad {what}"))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or_else(|| format!("bad {what}"))?;
        let out = self.bytes.get(self.at..end).ok_or_else(|| format!("truncated {what}"))?;
        self.at = end;
        Ok(out)
    }
}

/// Rebuilds a change chunk from its packed form; returns the chunk and the packed bytes used.
fn rebuild(
    packed: &[u8],
    actor: &[u8],
    hash_at: &dyn Fn(u64) -> Option<[u8; 32]>,
    budget: &mut usize,
) -> Result<(Vec<u8>, usize), String> {
    let mut c = Cursor { bytes: packed, at: 0 };
    let ndeps = c.uleb("dependency count")?;
    if ndeps > (CHANGE_BYTES_MAX / 32) as u64 {
        return Err(format!("{ndeps} dependencies"));
    }
    let mut deps: Vec<[u8; 32]> = Vec::new();
    for _ in 0..ndeps {
        let r = c.uleb("dependency")?;
        let dep = if r == 0 {
            c.take(32, "dependency")?.try_into().map_err(|_| "dependency")?
        } else {
            hash_at(r - 1).ok_or_else(|| format!("dependency reference {r} to nothing"))?
        };
        deps.push(dep);
    }
    let flag = c.take(1, "actor")?[0];
    let this_actor: &[u8] = match flag {
        ACTOR_AUTHOR => actor,
        ACTOR_LITERAL => {
            let len = c.len("actor length")?;
            c.take(len, "actor")?
        }
        other => return Err(format!("unknown actor flag {other}")),
    };
    let rest_len = c.len("change length")?;
    let rest = c.take(rest_len, "change")?;
    let size = 10 + deps.len() * 32 + 10 + this_actor.len() + rest.len();
    if size > CHANGE_BYTES_MAX {
        return Err(format!("a change of {size} bytes"));
    }
    *budget += size;
    if *budget > UNPACKED_BYTES_MAX {
        return Err(format!("a message rebuilds to more than {UNPACKED_BYTES_MAX} bytes"));
    }
    let mut data = Vec::with_capacity(size);
    write_uleb(&mut data, ndeps);
    for d in &deps {
        data.extend_from_slice(d);
    }
    write_uleb(&mut data, this_actor.len() as u64);
    data.extend_from_slice(this_actor);
    data.extend_from_slice(rest);
    let mut chunk = Vec::with_capacity(data.len() + 20);
    chunk.extend_from_slice(&MAGIC);
    chunk.extend_from_slice(&[0; 4]);
    chunk.push(CHUNK_CHANGE);
    write_uleb(&mut chunk, data.len() as u64);
    chunk.extend_from_slice(&data);
    let hash = Sha256::digest(&chunk[8..]);
    chunk[4..8].copy_from_slice(&hash[..4]);
    Ok((chunk, c.at))
}

fn write_uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn uleb_len(v: u64) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v != 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Reads a minimal unsigned LEB128; returns the value and the bytes used.
fn read_uleb(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            // Minimal: no trailing zero byte (except the value 0 itself).
            if i > 0 && b == 0 {
                return None;
            }
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::doc::EntityDoc;
    use crate::id::{AuthorId, EntityType, Incarnation, NodeId, Uid};
    use proptest::prelude::*;

    fn author(n: u8) -> AuthorId {
        AuthorId { node: NodeId([n; 32]), incarnation: Incarnation(7) }
    }

    /// `docs` records, each a create and `edits` edits, interleaved like a clinic's day.
    fn changes(who: &AuthorId, docs: usize, edits: usize) -> (Vec<EntityId>, Vec<Vec<u8>>) {
        let mut held: Vec<EntityDoc> = (0..docs).map(|_| EntityDoc::new()).collect();
        let (mut entities, mut bodies) = (Vec::new(), Vec::new());
        for round in 0..=edits {
            for (i, doc) in held.iter_mut().enumerate() {
                let body = serde_json::json!({"name": format!("n{i}"), "visits": round})
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let change =
                    doc.write(who, &body, &[], 1_700_000_000 + round as i64).ok().flatten();
                let change = change.expect("a change");
                entities.push(EntityId::new(EntityType::Generic, Uid::from_random([i as u8; 16])));
                bodies.push(change.raw_bytes().to_vec());
            }
        }
        (entities, bodies)
    }

    #[test]
    fn chunk_hash_is_automerges_change_hash() {
        let (_, bodies) = changes(&author(1), 2, 1);
        for body in &bodies {
            let change = automerge::Change::from_bytes(body.clone()).expect("a change");
            assert_eq!(change_hash(body), Some(change.hash().0));
        }
    }

    #[test]
    fn packed_changes_rebuild_exactly_and_edits_shrink() {
        let who = author(1);
        let (entities, bodies) = changes(&who, 20, 5);
        let (mut tx, mut rx) = (PackState::default(), UnpackState::default());
        let actor = who.actor_bytes();
        let mut packed_total = 0;
        // Three messages, as a session sends them: references cross message boundaries.
        for range in [0..40, 40..41, 41..bodies.len()] {
            let packed =
                pack_batch(&mut tx, &actor, &entities[range.clone()], &bodies[range.clone()], &[]);
            packed_total += packed.len();
            rx.begin_message();
            let (e, b, _) = unpack_batch(&mut rx, &actor, range.len(), &packed).expect("unpacks");
            assert_eq!(e, entities[range.clone()]);
            assert_eq!(b, bodies[range]);
        }
        let raw: usize = bodies.iter().map(Vec::len).sum();
        // Every edit names its predecessor by index and the author by a flag: >= 70 bytes
        // saved per edit.
        assert!(packed_total + 100 * 70 < raw, "packed {packed_total} of {raw}");
    }

    #[test]
    fn foreign_actor_non_changes_and_withheld_bodies_round_trip() {
        let who = author(1);
        let (entities, mut bodies) = changes(&author(2), 2, 1);
        bodies[0] = b"not a change at all".to_vec();
        let mut tx = PackState::default();
        bodies[1] = Vec::new();
        let hidden = BodyHash([9; 32]);
        let packed = pack_batch(&mut tx, &who.actor_bytes(), &entities, &bodies, &[hidden]);
        let mut rx = UnpackState::default();
        let (_, b, w) = unpack_batch(&mut rx, &who.actor_bytes(), 4, &packed).expect("unpacks");
        assert_eq!(b, bodies);
        assert_eq!(w, vec![hidden], "a withheld body travels as its hash");
    }

    #[test]
    fn dangling_references_and_amplification_are_refused() {
        let mut rx = UnpackState::default();
        // Record reference 5 in an empty table.
        assert!(unpack_batch(&mut rx, &[0; 40], 1, &[5]).unwrap_err().contains("to nothing"));
        // A dependency reference to nothing.
        let entity = EntityId::new(EntityType::Generic, Uid::from_random([1; 16]));
        let mut packed = vec![0];
        postcard::to_io(&entity, &mut packed).expect("entity");
        packed.extend([BODY_PACKED, 1, 9, ACTOR_AUTHOR, 0]);
        let err = unpack_batch(&mut UnpackState::default(), &[0; 40], 1, &packed).unwrap_err();
        assert!(err.contains("dependency reference"), "{err}");
        // More changes than a batch may hold.
        assert!(unpack_batch(&mut rx, &[0; 40], BATCH_CHANGES_MAX + 1, &[]).is_err());
        // Trailing bytes.
        assert!(unpack_batch(&mut rx, &[0; 40], 0, &[1]).is_err());
    }

    #[test]
    fn leb128_is_minimal_only() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            write_uleb(&mut out, v);
            assert_eq!(read_uleb(&out), Some((v, out.len())));
            assert_eq!(uleb_len(v), out.len());
        }
        assert_eq!(read_uleb(&[0x80, 0x00]), None, "non-minimal zero");
        assert_eq!(read_uleb(&[0x80]), None, "truncated");
    }

    proptest! {
        #[test]
        fn any_packed_bytes_unpack_or_fail_cleanly(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            count in 0usize..8,
        ) {
            let mut rx = UnpackState::default();
            let _ = unpack_batch(&mut rx, &[0; 40], count, &bytes);
        }

        #[test]
        fn flipped_packed_bytes_never_panic(at in any::<usize>(), bit in 0u8..8) {
            let who = author(3);
            let (entities, bodies) = changes(&who, 2, 2);
            let mut tx = PackState::default();
            let mut packed = pack_batch(&mut tx, &who.actor_bytes(), &entities, &bodies, &[]);
            let i = at % packed.len();
            packed[i] ^= 1 << bit;
            let mut rx = UnpackState::default();
            let _ = unpack_batch(&mut rx, &who.actor_bytes(), bodies.len(), &packed);
        }
    }
}
