//! Local writes: records written on this node (`put`) and conflict resolutions (`resolve`)
//! become Automerge changes, sealed into signed batches of this node's current author.
//!
//! Each write is one transaction. It first merges the received changes of the records it writes
//! (so the write builds on them instead of reading as concurrent with what the node holds), then
//! stores the new change bodies and documents, seals the changes into batches continuing the
//! author's chain (seq + 1, `prev` = the hash of the author's batch before, at most
//! `BATCH_CHANGES_MAX` changes each), advances the author's vector entry and appends the events.
//! Sealing in the transaction that stores the changes means there is never an unsealed local
//! change that a crash or a restore could strand.
//!
//! This module does not validate records against the entity schema (the node layer does before
//! `put`, and hands `resolve` its `check`), and writes only as [`Store::author`].

use redb::ReadableTable;

use super::merge::merge_keys;
use super::tables::*;
use super::{
    Store, StoreError, append_event, conflicts, corrupt, decode_batch, decode_doc, encode,
    encode_batch,
};
use crate::batch::{BATCH_BODY_BYTES_MAX, BATCH_CHANGES_MAX, BATCH_VERSION, Batch, ChangeRef};
use crate::entity::doc::EntityDoc;
use crate::entity::{self, Record};
use crate::event::{Event, EventKind};
use crate::id::{AuthorId, BodyHash, EntityId, EntityType};
use crate::identity::Keypair;

/// What a `put` did to one record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PutOutcome {
    pub id: EntityId,
    pub changed: bool,
}

impl Store {
    /// Writes validated records as local changes (one change per record that differs) and seals
    /// them into signed batches, all in one transaction.
    pub fn put(
        &self,
        key: &Keypair,
        records: &[Record],
        time: i64,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let tx = self.db.begin_write()?;
        let outcomes = self.put_in(&tx, key, records, time)?;
        tx.commit()?;
        Ok(outcomes)
    }

    /// [`Store::put`] inside a transaction the caller commits (with writes of its own that
    /// must be durable together with the records, e.g. the EMR bridge's cursor).
    pub(crate) fn put_in(
        &self,
        tx: &redb::WriteTransaction,
        key: &Keypair,
        records: &[Record],
        time: i64,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let author = self.author();
        let mut outcomes = Vec::with_capacity(records.len());
        let mut refs = Vec::new();
        // Received changes to these records are merged first, so the local write builds on them
        // (and does not read as concurrent with what this node already holds).
        let keys: Vec<String> = records.iter().map(|r| r.id.key()).collect();
        let merged = merge_keys(tx, &keys, 1, time)?;
        if !merged.skipped.is_empty() {
            tracing::warn!(skipped = merged.skipped.len(), "changes left out while merging");
        }
        {
            let mut docs = tx.open_table(DOCS)?;
            let mut bodies = tx.open_table(BODIES)?;
            for record in records {
                let key_str = record.id.key();
                let mut rec = match docs.get(key_str.as_str())? {
                    Some(v) => decode_doc(&key_str, v.value())?,
                    None => DocRecord::default(),
                };
                let mut doc =
                    if rec.doc.is_empty() { EntityDoc::new() } else { EntityDoc::load(&rec.doc)? };
                let keyed = keyed_fields(record.id.ty);
                let change = doc.write(&author, &record.body, &keyed, time)?;
                let changed = change.is_some();
                if let Some(change) = change {
                    let bytes = change.raw_bytes();
                    let hash = BodyHash::of(bytes);
                    bodies.insert(&hash.0, bytes)?;
                    refs.push((ChangeRef { entity: record.id, body: hash }, bytes.len()));
                    rec.heads = doc.heads().iter().map(|h| h.0).collect();
                    rec.doc = doc.save();
                    docs.insert(key_str.as_str(), encode(&rec).as_slice())?;
                    // A local write over a conflicting field supersedes its values.
                    if conflicts::has_entries(tx, &key_str)? {
                        conflicts::update(tx, record.id, &doc, time)?;
                    }
                }
                outcomes.push(PutOutcome { id: record.id, changed });
            }
        }
        let batches = seal(tx, key, author, &refs)?;
        if !refs.is_empty() {
            let kind = EventKind::LocalWrite {
                records: records.len() as u64,
                changes: refs.len() as u64,
                batches,
            };
            append_event(tx, Event { time, kind })?;
        }
        Ok(outcomes)
    }

    /// Resolves a conflict: writes `value` at the conflict's field as one local change (sealed
    /// like any write), which supersedes every concurrent value here and on every node that
    /// merges it. `check` sees the record as it would read afterwards and may refuse it (schema
    /// validation); then nothing is written.
    pub fn resolve(
        &self,
        key: &Keypair,
        conflict: &crate::conflict::Conflict,
        value: &serde_json::Value,
        how: String,
        check: impl Fn(&serde_json::Value) -> Result<(), String>,
        time: i64,
    ) -> Result<(), StoreError> {
        let author = self.author();
        let tx = self.db.begin_write()?;
        let key_str = conflict.entity.key();
        merge_keys(&tx, std::slice::from_ref(&key_str), 1, time)?;
        let mut rec = {
            let docs = tx.open_table(DOCS)?;
            match docs.get(key_str.as_str())? {
                Some(v) => decode_doc(&key_str, v.value())?,
                None => {
                    return Err(StoreError::Invalid(format!(
                        "{} is not held here",
                        conflict.entity
                    )));
                }
            }
        };
        let mut doc = EntityDoc::load(&rec.doc)?;
        if !doc
            .conflicts()
            .iter()
            .any(|c| crate::conflict::conflict_id(&conflict.entity, c) == conflict.id)
        {
            return Err(StoreError::Invalid(format!(
                "conflict {} is already closed (its values were superseded)",
                conflict.id
            )));
        }
        let change =
            doc.set_path(&author, &conflict.path, value, time).map_err(StoreError::Invalid)?;
        check(&entity::to_output(conflict.entity.ty, &doc.to_json()))
            .map_err(StoreError::Invalid)?;
        let bytes = change.raw_bytes();
        let hash = BodyHash::of(bytes);
        tx.open_table(BODIES)?.insert(&hash.0, bytes)?;
        rec.heads = doc.heads().iter().map(|h| h.0).collect();
        rec.doc = doc.save();
        tx.open_table(DOCS)?.insert(key_str.as_str(), encode(&rec).as_slice())?;
        let refs = [(ChangeRef { entity: conflict.entity, body: hash }, bytes.len())];
        let batches = seal(&tx, key, author, &refs)?;
        let kind = EventKind::ConflictResolved {
            id: conflict.id.clone(),
            entity: conflict.entity,
            path: conflict.path.clone(),
            how,
        };
        append_event(&tx, Event { time, kind })?;
        let kind = EventKind::LocalWrite { records: 1, changes: 1, batches };
        append_event(&tx, Event { time, kind })?;
        conflicts::update(&tx, conflict.entity, &doc, time)?;
        tx.commit()?;
        Ok(())
    }
}

/// The collections of `ty` stored as maps keyed by item uuid.
pub fn keyed_fields(ty: EntityType) -> Vec<&'static str> {
    let Some(fields) = entity::schema::fields(ty) else { return Vec::new() };
    fields
        .iter()
        .filter(|f| matches!(f.kind, entity::schema::Kind::Keyed(_)))
        .map(|f| f.name)
        .collect()
}

/// Seals `refs` (new local changes, with their body sizes) into batches of at most
/// `BATCH_CHANGES_MAX` changes and `BATCH_BODY_BYTES_MAX` bytes of bodies (a larger change
/// alone), continuing the author's chain. Returns how many batches were written.
fn seal(
    tx: &redb::WriteTransaction,
    key: &Keypair,
    author: AuthorId,
    refs: &[(ChangeRef, usize)],
) -> Result<u64, StoreError> {
    if refs.is_empty() {
        return Ok(0);
    }
    let actor = author.actor_bytes();
    let mut vector = tx.open_table(VECTOR)?;
    let mut batches = tx.open_table(BATCHES)?;
    let mut seq = vector.get(&actor)?.map_or(0, |v| v.value());
    let mut prev = match seq {
        0 => None,
        s => {
            let v = batches
                .get((&actor, s))?
                .ok_or_else(|| corrupt(format!("own batch #{s}"), "missing"))?;
            Some(decode_batch(v.value())?.0)
        }
    };
    let mut count = 0;
    for chunk in batches_of(refs) {
        seq += 1;
        let changes = chunk.iter().map(|(c, _)| *c).collect();
        let batch = Batch { version: BATCH_VERSION, author, seq, prev, changes };
        let hash = batch.hash();
        let signed = batch.sign(key);
        batches.insert((&actor, seq), encode_batch(&hash, &signed).as_slice())?;
        prev = Some(hash);
        count += 1;
    }
    vector.insert(&actor, seq)?;
    Ok(count)
}

/// `refs` cut into the changes of consecutive batches: a batch ends before the change that
/// would take it past `BATCH_CHANGES_MAX` changes or `BATCH_BODY_BYTES_MAX` bytes.
fn batches_of(refs: &[(ChangeRef, usize)]) -> Vec<&[(ChangeRef, usize)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, (_, size)) in refs.iter().enumerate() {
        let full = i - start == BATCH_CHANGES_MAX || bytes + size > BATCH_BODY_BYTES_MAX;
        if i > start && full {
            out.push(&refs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < refs.len() {
        out.push(&refs[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_by_count_and_by_bytes() {
        let c = |n: u8| ChangeRef {
            entity: crate::id::EntityId::new(
                crate::id::EntityType::Generic,
                crate::id::Uid::from_random([n; 16]),
            ),
            body: BodyHash([n; 32]),
        };
        let mb = 1024 * 1024;
        let sizes =
            |b: &[&[(ChangeRef, usize)]]| -> Vec<usize> { b.iter().map(|x| x.len()).collect() };
        let small: Vec<_> = (0..5_000).map(|i| (c((i % 250) as u8), 10)).collect();
        assert_eq!(sizes(&batches_of(&small)), [BATCH_CHANGES_MAX, 5_000 - BATCH_CHANGES_MAX]);
        let big: Vec<_> = (0..5).map(|i| (c(i), 3 * mb)).collect();
        assert_eq!(sizes(&batches_of(&big)), [2, 2, 1], "8 MiB of bodies at most per batch");
        let huge = vec![(c(1), mb), (c(2), 12 * mb), (c(3), mb)];
        assert_eq!(sizes(&batches_of(&huge)), [1, 1, 1], "a larger change is sealed alone");
        assert!(batches_of(&[]).is_empty());
    }
}
