//! Store operations for the admin view: a forced write of one field (a conflict resolution),
//! a record's change history, a scan for conflicting fields, and paging through the event log.
//!
//! The conflict scan reads every document's heads and loads the documents whose heads changed
//! since the last scan; it stands in until conflicts are recorded in their own table when
//! changes are merged.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;

use super::tables::{BODIES, DOCS, EVENTS};
use super::{
    DocRecord, StoreError, append_event, apply, corrupt, decode_doc, decode_doc_heads, encode, seal,
};
use crate::batch::ChangeRef;
use crate::entity::doc::{ChangeInfo, EntityDoc, FieldConflict};
use crate::event::{Event, EventKind};
use crate::id::{BodyHash, EntityId};
use crate::identity::Keypair;

/// The fields holding concurrent values of every document, as of its heads (a digest of them),
/// so a rescan loads only the documents that changed since.
#[derive(Default)]
pub struct ConflictScan {
    docs: HashMap<String, ([u8; 32], Vec<FieldConflict>)>,
}

fn heads_digest(heads: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for head in heads {
        h.update(head);
    }
    *h.finalize().as_bytes()
}

/// Events, newest first, and the number to continue below (if any may remain).
pub type EventPage = (Vec<(u64, Event)>, Option<u64>);

impl super::Store {
    /// Writes `value` at `path` of record `id` as one local change, sealed into a batch like
    /// any write: it supersedes every value held at that path now, concurrent ones included.
    /// Returns `false` (nothing written) when the record or the path does not exist. The value
    /// must already be validated (canonical form).
    pub fn overwrite_field(
        &self,
        key: &Keypair,
        id: &EntityId,
        path: &str,
        value: &Value,
        time: i64,
    ) -> Result<bool, StoreError> {
        let author = self.author();
        let tx = self.db.begin_write()?;
        let key_str = id.key();
        // Received changes are merged first, so the write supersedes what this node holds.
        apply::materialize_keys(&tx, std::slice::from_ref(&key_str), 1, time)?;
        let change = {
            let mut docs = tx.open_table(DOCS)?;
            let Some(mut rec) =
                docs.get(key_str.as_str())?.map(|v| decode_doc(&key_str, v.value())).transpose()?
            else {
                return Ok(false);
            };
            if rec.doc.is_empty() {
                return Ok(false);
            }
            let mut doc = EntityDoc::load(&rec.doc)?;
            let Some(change) = doc.overwrite(&author, path, value, time)? else {
                return Ok(false);
            };
            let bytes = change.raw_bytes();
            let hash = BodyHash::of(bytes);
            tx.open_table(BODIES)?.insert(&hash.0, bytes)?;
            rec.heads = doc.heads().iter().map(|h| h.0).collect();
            rec.doc = doc.save();
            docs.insert(key_str.as_str(), encode(&rec).as_slice())?;
            ChangeRef { entity: *id, body: hash }
        };
        let batches = seal(&tx, key, author, &[change])?;
        let kind = EventKind::LocalWrite { records: 1, changes: 1, batches };
        append_event(&tx, Event { time, kind })?;
        tx.commit()?;
        Ok(true)
    }

    /// The last `limit` changes of record `id` (oldest first), or `None` if there is no such
    /// record.
    pub fn history(
        &self,
        id: &EntityId,
        limit: usize,
    ) -> Result<Option<Vec<ChangeInfo>>, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let key = id.key();
        let Some(v) = docs.get(key.as_str())? else { return Ok(None) };
        let rec: DocRecord = decode_doc(&key, v.value())?;
        if rec.doc.is_empty() {
            return Ok(None);
        }
        Ok(Some(EntityDoc::load(&rec.doc)?.history(limit)))
    }

    /// Every record with fields holding concurrent values, in key order. Brings `scan` up to
    /// date first: documents whose heads changed since are loaded again, the others are not.
    pub fn scan_conflicts(
        &self,
        scan: &mut ConflictScan,
    ) -> Result<Vec<(EntityId, Vec<FieldConflict>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let mut seen = HashMap::with_capacity(scan.docs.len());
        let mut out = Vec::new();
        for item in docs.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let heads = decode_doc_heads(key, v.value())?;
            if heads.is_empty() {
                continue;
            }
            let digest = heads_digest(&heads);
            let entry = match scan.docs.remove(key) {
                Some(known) if known.0 == digest => known,
                _ => {
                    let rec = decode_doc(key, v.value())?;
                    (digest, EntityDoc::load(&rec.doc)?.conflicts())
                }
            };
            if !entry.1.is_empty() {
                let id = key.parse().map_err(|e| corrupt(format!("doc key {key:?}"), e))?;
                out.push((id, entry.1.clone()));
            }
            seen.insert(key.to_string(), entry);
        }
        scan.docs = seen;
        Ok(out)
    }

    /// Events numbered below `before` (all when `None`), newest first, that `keep` accepts: at
    /// most `limit`. Also returns the number to pass as `before` for the next page, if any
    /// event may remain.
    pub fn events_page(
        &self,
        before: Option<u64>,
        limit: usize,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Result<EventPage, StoreError> {
        let tx = self.db.begin_read()?;
        let events = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        let range = match before {
            Some(b) => events.range(..b)?,
            None => events.range(0..)?,
        };
        for item in range.rev() {
            let (k, v) = item?;
            let event: Event = postcard::from_bytes(v.value()).map_err(|e| corrupt("event", e))?;
            if !keep(&event) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|(n, _): &(u64, Event)| *n);
                return Ok((out, next));
            }
            out.push((k.value(), event));
        }
        Ok((out, None))
    }
}
