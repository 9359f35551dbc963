//! Merging: the received changes of each dirty document go through Automerge, and the merged
//! document is stored with its conflict entries brought up to date.
//!
//! Receipt ([`super::receive`]) only lists each touched document's new changes in `DIRTY`.
//! Merging comes later, in write transactions of its own of at most [`MERGE_DOCS_MAX`] documents
//! each ([`Store::merge_some`]): each document is loaded, merged and saved once however many
//! messages brought its changes, and a merge running beside a transfer holds redb's one writer
//! for a bounded time. A local write or a conflict resolution first merges the records it writes,
//! inside its own transaction (`merge_keys`), so it builds on what the node already received.
//!
//! Invariants:
//! - a merged document is stored only if it loads back with the same heads (Automerge accepts
//!   some malformed ops and then saves a document it cannot load);
//! - a change that cannot be merged is left out of its document, stays in `BODIES`, and is
//!   reported as an unmergeable event; its batch stays accepted;
//! - changes whose Automerge dependencies have not arrived stay in the record's `queued` list
//!   and are merged again with the document's next changes;
//! - a panic inside Automerge fails one document, never the node;
//! - results are written in reading order whichever worker finished first, so what is written
//!   (conflict entries, events) does not depend on timing and simulations replay exactly.
//!
//! The scoped merge workers are the only threads of the store; the calling thread keeps all redb
//! I/O. This module must not sequence or store batches: receipt does. The whole receive path is
//! described in docs/architecture.md ("Receiving" section).

use std::collections::HashMap;

use automerge::Change;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::tables::*;
use super::{Store, StoreError, append_event, corrupt, decode_doc, encode};
use crate::entity::doc::EntityDoc;
use crate::event::{Event, EventKind};
use crate::id::{BodyHash, EntityId};

/// Most documents merged in one transaction by `merge_dirty`.
pub const MERGE_DOCS_MAX: usize = 20_000;

/// What merging dirty documents did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    pub documents: u64,
    pub changes: u64,
    /// Changes that could not be merged and were left out of their document (kept, reported).
    pub skipped: Vec<(EntityId, BodyHash, String)>,
}

impl Store {
    /// Merges every dirty entity's received changes into its document: each document is loaded,
    /// merged and saved once however many messages brought its changes.
    pub fn merge_dirty(&self, threads: usize, time: i64) -> Result<MergeReport, StoreError> {
        let mut total = MergeReport::default();
        while let Some(r) = self.merge_some(threads, time, MERGE_DOCS_MAX)? {
            total.documents += r.documents;
            total.changes += r.changes;
            total.skipped.extend(r.skipped);
        }
        Ok(total)
    }

    /// Merges at most `max_docs` dirty documents in one transaction; `None` when none was
    /// dirty. A merge running beside a transfer keeps its transactions short this way (redb
    /// has one writer: the transfer's receipts wait for it).
    pub fn merge_some(
        &self,
        threads: usize,
        time: i64,
        max_docs: usize,
    ) -> Result<Option<MergeReport>, StoreError> {
        let tx = self.db.begin_write()?;
        let keys: Vec<String> = {
            let dirty = tx.open_table(DIRTY)?;
            let mut keys = Vec::new();
            for item in dirty.iter()?.take(max_docs.max(1)) {
                keys.push(item?.0.value().to_string());
            }
            keys
        };
        if keys.is_empty() {
            return Ok(None);
        }
        let r = merge_keys(&tx, &keys, threads, time)?;
        tx.commit()?;
        Ok(Some(r))
    }

    /// Whether any received change waits to be merged.
    pub fn has_dirty(&self) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        match tx.open_table(DIRTY) {
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Ok(t) => Ok(!t.is_empty()?),
            Err(e) => Err(e.into()),
        }
    }
}

/// Merges the dirty changes of `keys` (those that have any) into their documents, inside `tx`.
///
/// A pipeline: this thread reads each document's record and raw change bodies from redb while
/// `threads` workers decode and merge the documents read before it; the merged records are
/// written back here once every document is merged.
pub(crate) fn merge_keys(
    tx: &redb::WriteTransaction,
    keys: &[String],
    threads: usize,
    time: i64,
) -> Result<MergeReport, StoreError> {
    let mut report = MergeReport::default();
    // Per document, the hashes of the changes being merged: enough to load them again for the
    // rare one-at-a-time retry, without keeping a second copy of every change.
    let mut merging: HashMap<String, Vec<BodyHash>> = HashMap::new();
    let results = {
        let mut dirty = tx.open_table(DIRTY)?;
        let docs = tx.open_table(DOCS)?;
        let bodies = tx.open_table(BODIES)?;
        let mut next = keys.iter();
        let mut read = || -> Result<Option<RawWork>, StoreError> {
            for key in next.by_ref() {
                let Some(list) = dirty.remove(key.as_str())?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let fresh: Vec<BodyHash> = postcard::from_bytes(&list)
                    .map_err(|e| corrupt(format!("dirty list {key}"), e))?;
                let work = load_raw(&docs, &bodies, key, &fresh)?;
                report.changes += fresh.len() as u64;
                merging.insert(key.clone(), work.bodies.iter().map(|(h, _)| *h).collect());
                return Ok(Some(work));
            }
            Ok(None)
        };
        merge_pipelined(&mut read, keys.len(), threads.max(1))?
    };
    let mut failed = Vec::new();
    let mut docs = tx.open_table(DOCS)?;
    let bodies = tx.open_table(BODIES)?;
    let mut check = Vec::new();
    let mut merged = Vec::new();
    let index = tx.open_table(CONFLICT_INDEX)?;
    for (key, result) in results {
        match result {
            Ok(Merged { record, concurrent }) => {
                docs.insert(key.as_str(), encode(&record).as_slice())?;
                report.documents += 1;
                merged.push(key.clone());
                // Conflicts can only appear where concurrent changes met (several heads, or a
                // change merging several) and only disappear where some were on record.
                if record.heads.len() > 1 || concurrent || index.get(key.as_str())?.is_some() {
                    check.push((key, record));
                }
            }
            Err(MergeError::Corrupt(what, why)) => return Err(corrupt(what, why)),
            Err(MergeError::Refused) => failed.push(key),
        }
    }
    drop(index);
    for (key, record) in check {
        update_conflicts(tx, &key, &record, time)?;
    }
    for key in failed {
        // Rare: merge one change at a time, leaving out each change that cannot be merged. The
        // document record is still the one from before this merge.
        let hashes = merging.remove(&key).unwrap_or_default();
        let record = load_record(&docs, &key)?;
        let changes = hashes
            .iter()
            .map(|h| Ok((*h, load_change(&bodies, h)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let entity: EntityId = key.parse().map_err(|e| corrupt(format!("doc key {key:?}"), e))?;
        let (record, skipped) = merge_carefully(Work { key: key.clone(), record, changes });
        docs.insert(key.as_str(), encode(&record).as_slice())?;
        update_conflicts(tx, &key, &record, time)?;
        report.documents += 1;
        merged.push(key.clone());
        for (hash, reason) in skipped {
            let kind =
                EventKind::Unmergeable { entity, reason: format!("change {hash}: {reason}") };
            append_event(tx, Event { time, kind })?;
            report.skipped.push((entity, hash, reason));
        }
    }
    // Scope verdicts that missed one of these records are taken again (a parent's re-send).
    drop((docs, bodies));
    super::resend::wake_unsure(tx, &merged)?;
    Ok(report)
}

/// Updates the conflict registry of the record `key` from its merged document.
fn update_conflicts(
    tx: &redb::WriteTransaction,
    key: &str,
    record: &DocRecord,
    time: i64,
) -> Result<(), StoreError> {
    if record.doc.is_empty() {
        return Ok(());
    }
    let entity: EntityId = key.parse().map_err(|e| corrupt(format!("doc key {key:?}"), e))?;
    let doc = EntityDoc::load(&record.doc).map_err(|e| corrupt(format!("document {key}"), e))?;
    super::conflicts::update(tx, entity, &doc, time)
}

/// A document's record and the raw bodies of the changes to merge into it: those it queued
/// earlier (waiting for dependencies), then `fresh`.
fn load_raw(
    docs: &impl ReadableTable<&'static str, &'static [u8]>,
    bodies: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    key: &str,
    fresh: &[BodyHash],
) -> Result<RawWork, StoreError> {
    let record = load_record(docs, key)?;
    let mut raw = Vec::with_capacity(record.queued.len() + fresh.len());
    for hash in record.queued.iter().chain(fresh) {
        let body =
            bodies.get(&hash.0)?.ok_or_else(|| corrupt(format!("body {hash}"), "missing"))?;
        raw.push((*hash, body.value().to_vec()));
    }
    Ok(RawWork { key: key.to_string(), record, bodies: raw })
}

fn load_record(
    docs: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<DocRecord, StoreError> {
    match docs.get(key)? {
        Some(v) => decode_doc(key, v.value()),
        None => Ok(DocRecord::default()),
    }
}

fn load_change(
    bodies: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    hash: &BodyHash,
) -> Result<Change, StoreError> {
    let body = bodies.get(&hash.0)?.ok_or_else(|| corrupt(format!("body {hash}"), "missing"))?;
    Change::from_bytes(body.value().to_vec()).map_err(|e| corrupt(format!("body {hash}"), e))
}

/// Applies a document's changes one at a time from its last good state, leaving out each change
/// that Automerge refuses or that leaves a document which does not load back.
fn merge_carefully(work: Work) -> (DocRecord, Vec<(BodyHash, String)>) {
    let Work { key, record, changes } = work;
    let mut good = record.clone();
    good.queued.clear();
    let mut skipped = Vec::new();
    let mut queued_all = Vec::new();
    for (hash, change) in changes {
        let trial = Work {
            key: key.clone(),
            record: good.clone(),
            changes: {
                let mut c: Vec<(BodyHash, Change)> = queued_all.clone();
                c.push((hash, change.clone()));
                c
            },
        };
        match merge_one(trial).1 {
            Ok(next) => {
                queued_all.retain(|(h, _): &(BodyHash, Change)| next.queued.contains(h));
                if next.queued.contains(&hash) {
                    queued_all.push((hash, change));
                }
                good = DocRecord { queued: Vec::new(), ..next };
            }
            Err(reason) => skipped.push((hash, reason)),
        }
    }
    good.queued = queued_all.iter().map(|(h, _)| *h).collect();
    (good, skipped)
}

/// A document and its decoded changes, to merge into it.
struct Work {
    key: String,
    record: DocRecord,
    changes: Vec<(BodyHash, Change)>,
}

/// A document read for merging: its record and the raw bodies of its changes.
struct RawWork {
    key: String,
    record: DocRecord,
    bodies: Vec<(BodyHash, Vec<u8>)>,
}

/// A merged document, and whether a change merged into it joined concurrent work (several
/// dependencies), which calls for a conflict check.
struct Merged {
    record: DocRecord,
    concurrent: bool,
}

enum MergeError {
    /// A stored body does not decode: the store is damaged (what, why).
    Corrupt(String, String),
    /// Automerge refused the merge; the document is merged again one change at a time (which
    /// finds the reason of each change left out).
    Refused,
}

type Outcome = (String, Result<Merged, MergeError>);

/// Documents waiting between the reading thread and the merge workers.
const MERGE_QUEUE: usize = 256;

/// Runs `read` on this thread and merges what it returns on `threads` workers, in parallel
/// with the reading. Small merges run inline.
fn merge_pipelined(
    read: &mut dyn FnMut() -> Result<Option<RawWork>, StoreError>,
    documents: usize,
    threads: usize,
) -> Result<Vec<Outcome>, StoreError> {
    if threads == 1 || documents < 64 {
        let mut out = Vec::with_capacity(documents);
        while let Some(work) = read()? {
            out.push(merge_raw(work));
        }
        return Ok(out);
    }
    // Each document carries its place in the reading order, and the results are put back in
    // that order: what is written after the merge (conflict entries, events) must not depend
    // on which worker finished first (simulations replay exactly).
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, RawWork)>(MERGE_QUEUE);
    // Only the workers hold the receiver: should they all be gone, sending fails at once
    // instead of blocking on a full queue inside the write transaction.
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        // The lock is held only to take the next document.
                        let next = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        match next {
                            Ok((at, work)) => out.push((at, merge_raw(work))),
                            Err(_) => break,
                        }
                    }
                    out
                })
            })
            .collect();
        drop(rx);
        let mut read_result = Ok(());
        for at in 0.. {
            match read() {
                Ok(Some(work)) => {
                    if tx.send((at, work)).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    read_result = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let mut out = Vec::with_capacity(documents);
        for h in handles {
            // merge_raw catches panics per document, so a worker cannot die mid-way.
            let part = h.join().map_err(|_| corrupt("merge worker", "panicked"))?;
            out.extend(part);
        }
        out.sort_unstable_by_key(|(at, _)| *at);
        read_result.map(|()| out.into_iter().map(|(_, o)| o).collect())
    })
}

/// Decodes a document's change bodies and merges them. A panic while decoding (bodies were
/// decoded once already, at receipt) is reported as a damaged store, never a dead worker.
fn merge_raw(work: RawWork) -> Outcome {
    let key = work.key.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_and_merge(work)))
        .unwrap_or_else(|_| {
            (
                key.clone(),
                Err(MergeError::Corrupt(format!("document {key}"), "decoding panicked".into())),
            )
        })
}

fn decode_and_merge(work: RawWork) -> Outcome {
    let RawWork { key, record, bodies } = work;
    let mut changes = Vec::with_capacity(bodies.len());
    let mut concurrent = false;
    for (hash, body) in bodies {
        match Change::from_bytes(body) {
            Ok(c) => {
                concurrent |= c.deps().len() > 1;
                changes.push((hash, c));
            }
            Err(e) => {
                return (key, Err(MergeError::Corrupt(format!("body {hash}"), e.to_string())));
            }
        }
    }
    let (key, result) = merge_one(Work { key, record, changes });
    (key, result.map(|record| Merged { record, concurrent }).map_err(|_| MergeError::Refused))
}

/// Applies one document's changes. A panic inside Automerge on peer-supplied changes becomes an
/// error for this document, never a crash of the node.
fn merge_one(work: Work) -> (String, Result<DocRecord, String>) {
    let Work { key, record, changes } = work;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut doc = if record.doc.is_empty() {
            EntityDoc::new()
        } else {
            EntityDoc::load(&record.doc).map_err(|e| e.to_string())?
        };
        let mut seen = std::collections::HashSet::new();
        let mut hashes = Vec::with_capacity(changes.len());
        let mut batch = Vec::with_capacity(changes.len());
        for (body, change) in changes {
            if seen.insert(body) {
                hashes.push((body, change.hash()));
                batch.push(change);
            }
        }
        doc.apply(batch).map_err(|e| e.to_string())?;
        let queued: Vec<BodyHash> =
            hashes.iter().filter(|(_, h)| !doc.holds(h)).map(|(b, _)| *b).collect();
        let heads: Vec<[u8; 32]> = doc.heads().iter().map(|h| h.0).collect();
        let saved = if heads.is_empty() { Vec::new() } else { doc.save() };
        // Automerge accepts some malformed ops (an op on an unknown object) and then saves a
        // document that does not load; such a merge must be refused, not stored.
        if !saved.is_empty() {
            let back = EntityDoc::load(&saved)
                .map_err(|e| format!("the merged document does not load: {e}"))?;
            if back.heads() != doc.heads() {
                return Err("the merged document does not load back to the same heads".into());
            }
        }
        Ok(DocRecord { heads, queued, doc: saved })
    }))
    .unwrap_or_else(|_| Err("automerge panicked while merging".to_string()));
    (key, result)
}
