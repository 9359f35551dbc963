//! The node's redb store: entity documents, change bodies, batches, the vector, pending batches,
//! peer knowledge and the event log (layouts in [`tables`]).
//!
//! Each step that changes replicated state is one write transaction, so a node killed at any
//! instant restarts with a consistent store:
//! - a local write seals its changes into batches in the transaction that stores them
//!   (`store/local.rs`);
//! - receiving batches stores bodies, batches, the vector, pending batches, the report and the
//!   marks of the touched documents together, one transaction per import chunk or network
//!   message ([`receive`]);
//! - the marked (dirty) documents are merged through Automerge later, in bounded transactions of
//!   their own ([`merge`]); a crash before that leaves them dirty, to be merged when the node
//!   opens.
//!
//! This file owns opening and creating the store, its author (the current incarnation), reads
//! (records, vector, summary and digest, export of held batches), peer knowledge, the entry
//! points of the audit log, and the record encodings the rooms share. The store owns no threads
//! except the scoped workers that merge documents in parallel ([`merge`]), and decides no trust
//! and no scope: the node layer does.

mod admin;
pub mod emr;
pub use admin::EventPage;
pub mod audit;
pub(crate) mod conflicts;
pub mod failures;
mod fhir_push;
pub use fhir_push::FhirChanges;
mod local;
pub use local::{PutOutcome, keyed_fields};
pub mod merge;
pub use merge::MergeReport;
pub mod receive;
pub use receive::{ApplyContext, ApplyReport, Rejection};
pub mod resend;
pub mod tables;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::batch::{BatchHash, SignedBatch};
use crate::entity;
use crate::entity::doc::{EntityDoc, FieldConflict};
use crate::event::{Event, EventKind};
use crate::id::{AuthorId, EntityId, EntityType, Incarnation, NodeId, Vector};
use crate::identity::Keypair;
use tables::*;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Db(#[from] redb::Error),
    #[error("the store is in use by another sitesync process (only one may open it at a time)")]
    Busy,
    #[error("store format {found} is not supported (this sitesync reads format {STORE_FORMAT})")]
    Format { found: u64 },
    #[error("store belongs to node {found}, not {expected}")]
    WrongNode { found: NodeId, expected: NodeId },
    #[error("store record {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("{0}")]
    Doc(#[from] crate::entity::doc::DocError),
    #[error("store file: {0}")]
    Io(#[from] std::io::Error),
    /// A request that cannot be carried out as asked (nothing was written).
    #[error("{0}")]
    Invalid(String),
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
redb_errors!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Busy,
            other => StoreError::Db(other.into()),
        }
    }
}

pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt { what: what.into(), reason: reason.to_string() }
}

/// A signed batch and its change bodies, in listed order.
pub type BatchWithBodies = (SignedBatch, Vec<Vec<u8>>);

/// Counts and digest, as `status` prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub vector: Vector,
    pub entities: BTreeMap<EntityType, u64>,
    pub batches: u64,
    pub pending: u64,
    pub digest: blake3::Hash,
}

/// A node's store.
pub struct Store {
    db: Database,
    path: std::path::PathBuf,
    node: NodeId,
    author: Mutex<AuthorId>,
}

impl Store {
    /// Creates a new store at `path` for `node` with a first incarnation.
    pub fn create(
        path: &Path,
        node: NodeId,
        incarnation: Incarnation,
    ) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("format", STORE_FORMAT.to_be_bytes().as_slice())?;
            meta.insert("node", node.0.as_slice())?;
            meta.insert("incarnation", incarnation.0.to_be_bytes().as_slice())?;
            meta.insert("file-identity", file_identity(path)?.as_slice())?;
            // Create every table so readers never meet a missing one.
            tx.open_table(BODIES)?;
            tx.open_table(BATCHES)?;
            tx.open_table(VECTOR)?;
            tx.open_table(PENDING)?;
            tx.open_table(DOCS)?;
            tx.open_table(PEERS)?;
            tx.open_table(EVENTS)?;
            tx.open_table(AUDIT)?;
            tx.open_table(PEER_STATE)?;
            tx.open_table(DIRTY)?;
        }
        tx.commit()?;
        let author = AuthorId { node, incarnation };
        Ok(Store { db, path: path.to_path_buf(), node, author: Mutex::new(author) })
    }

    /// Opens the store of `node`. If the store file is not the one this incarnation was
    /// confirmed on (it was copied or restored from a backup), the store moves to
    /// `fresh_incarnation` before anything is written, so no (author, seq) is reused.
    pub fn open(
        path: &Path,
        node: NodeId,
        fresh_incarnation: Incarnation,
        time: i64,
    ) -> Result<Store, StoreError> {
        let db = Database::open(path)?;
        let (incarnation, same_file) = {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let read = |what: &str| -> Result<Vec<u8>, StoreError> {
                let v =
                    meta.get(what)?.ok_or_else(|| corrupt(format!("meta {what}"), "missing"))?;
                Ok(v.value().to_vec())
            };
            let read_u64 = |what: &str| -> Result<u64, StoreError> {
                let bytes: [u8; 8] = read(what)?
                    .try_into()
                    .map_err(|_| corrupt(format!("meta {what}"), "not 8 bytes"))?;
                Ok(u64::from_be_bytes(bytes))
            };
            let format = read_u64("format")?;
            if format != STORE_FORMAT {
                return Err(StoreError::Format { found: format });
            }
            let stored_node: [u8; 32] =
                read("node")?.try_into().map_err(|_| corrupt("meta node", "not 32 bytes"))?;
            if stored_node != node.0 {
                return Err(StoreError::WrongNode { found: NodeId(stored_node), expected: node });
            }
            let identity = read("file-identity").unwrap_or_default();
            (Incarnation(read_u64("incarnation")?), identity == file_identity(path)?)
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
            node,
            author: Mutex::new(AuthorId { node, incarnation }),
        };
        if !same_file {
            // Read-only commands never write; this write happens once per copied store.
            let reason = "the store file was copied or restored from a backup";
            tracing::warn!(old = %incarnation, new = %fresh_incarnation, "{reason}: new incarnation");
            store.reincarnate(fresh_incarnation, reason, time)?;
        }
        Ok(store)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The author this store writes as now.
    pub fn author(&self) -> AuthorId {
        match self.author.lock() {
            Ok(a) => *a,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set_author(&self, author: AuthorId) {
        match self.author.lock() {
            Ok(mut a) => *a = author,
            Err(poisoned) => *poisoned.into_inner() = author,
        }
    }

    /// Moves the store to a new incarnation (the operator restored it from a backup, or a
    /// fork of this node's own log was detected).
    pub fn reincarnate(
        &self,
        fresh: Incarnation,
        reason: &str,
        time: i64,
    ) -> Result<AuthorId, StoreError> {
        let tx = self.db.begin_write()?;
        let old = self.author();
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("incarnation", fresh.0.to_be_bytes().as_slice())?;
            meta.insert("file-identity", file_identity(&self.path)?.as_slice())?;
        }
        let kind =
            EventKind::Incarnation { old: old.incarnation, new: fresh, reason: reason.to_string() };
        append_event(&tx, Event { time, kind })?;
        tx.commit()?;
        let author = AuthorId { node: self.node, incarnation: fresh };
        self.set_author(author);
        Ok(author)
    }

    /// The record as JSON (winning values), or `None` if the store has no such entity.
    pub fn get(
        &self,
        id: &EntityId,
    ) -> Result<Option<(serde_json::Value, Vec<FieldConflict>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let key = id.key();
        let Some(v) = docs.get(key.as_str())? else { return Ok(None) };
        let rec = decode_doc(&key, v.value())?;
        if rec.doc.is_empty() {
            // Only queued changes (their dependencies have not arrived): nothing to show yet.
            return Ok(None);
        }
        let doc = EntityDoc::load(&rec.doc)?;
        let json = entity::to_output(id.ty, &doc.to_json());
        Ok(Some((json, doc.conflicts())))
    }

    /// The record as JSON (`None` as for [`Store::get`]) and the heads it was read at (none if
    /// no change of it is merged here), in one read.
    pub fn get_with_heads(
        &self,
        id: &EntityId,
    ) -> Result<(Option<serde_json::Value>, Vec<[u8; 32]>), StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let key = id.key();
        let Some(v) = docs.get(key.as_str())? else { return Ok((None, Vec::new())) };
        let rec = decode_doc(&key, v.value())?;
        if rec.doc.is_empty() {
            return Ok((None, rec.heads));
        }
        let doc = EntityDoc::load(&rec.doc)?;
        Ok((Some(entity::to_output(id.ty, &doc.to_json())), rec.heads))
    }

    /// The Automerge heads of a record (which fix its content), without loading its document;
    /// `None` if the store holds no merged change of it.
    pub fn heads(&self, id: &EntityId) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let key = id.key();
        let Some(v) = docs.get(key.as_str())? else { return Ok(None) };
        let heads = decode_doc_heads(&key, v.value())?;
        Ok(Some(heads).filter(|h| !h.is_empty()))
    }

    /// Ids of stored entities, optionally of one type, in key order.
    pub fn list(&self, ty: Option<EntityType>) -> Result<Vec<EntityId>, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let mut out = Vec::new();
        let prefix = ty.map(|t| format!("{t}/"));
        let iter = match &prefix {
            Some(p) => docs.range(p.as_str()..)?,
            None => docs.iter()?,
        };
        for item in iter {
            let (k, _) = item?;
            let key = k.value();
            if prefix.as_ref().is_some_and(|p| !key.starts_with(p.as_str())) {
                break;
            }
            out.push(key.parse().map_err(|e| corrupt(format!("doc key {key:?}"), e))?);
        }
        Ok(out)
    }

    /// The vector: for each author, the highest seq held contiguously.
    pub fn vector(&self) -> Result<Vector, StoreError> {
        let tx = self.db.begin_read()?;
        read_vector(&tx.open_table(VECTOR)?)
    }

    /// Vector, entity counts, batch counts and the digest: blake3 over the sorted
    /// (entity id, Automerge heads). Nodes holding the same changes have the same digest.
    pub fn summary(&self) -> Result<Summary, StoreError> {
        let tx = self.db.begin_read()?;
        let vector = read_vector(&tx.open_table(VECTOR)?)?;
        let docs = tx.open_table(DOCS)?;
        let mut entities = BTreeMap::new();
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"sitesync digest v1\0");
        for item in docs.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let heads = decode_doc_heads(key, v.value())?;
            if heads.is_empty() {
                continue;
            }
            let id: EntityId = key.parse().map_err(|e| corrupt(format!("doc key {key:?}"), e))?;
            *entities.entry(id.ty).or_insert(0) += 1;
            hasher.update(key.as_bytes());
            hasher.update(&[0]);
            hasher.update(&(heads.len() as u64).to_be_bytes());
            for h in &heads {
                hasher.update(h);
            }
        }
        let batches = tx.open_table(BATCHES)?.len()?;
        let pending = tx.open_table(PENDING)?.len()?;
        Ok(Summary { vector, entities, batches, pending, digest: hasher.finalize() })
    }

    /// What `node` was last known to hold (learnt from bundles it exported).
    pub fn peer_vector(&self, node: &NodeId) -> Result<Option<Vector>, StoreError> {
        let tx = self.db.begin_read()?;
        let peers = tx.open_table(PEERS)?;
        let Some(v) = peers.get(&node.0)? else { return Ok(None) };
        let rec: PeerRecord =
            postcard::from_bytes(v.value()).map_err(|e| corrupt("peer record", e))?;
        Ok(Some(rec.vector))
    }

    /// Records that `node` holds `vector` (as of its latest bundle). The newest figure replaces
    /// the old one: a node restored from a backup holds less than before, and must be sent
    /// again what it lost.
    pub fn learn_peer_vector(
        &self,
        node: &NodeId,
        vector: &Vector,
        time: i64,
    ) -> Result<(), StoreError> {
        if *node == self.node {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut peers = tx.open_table(PEERS)?;
            let mut rec: PeerRecord = match peers.get(&node.0)? {
                Some(v) => {
                    postcard::from_bytes(v.value()).map_err(|e| corrupt("peer record", e))?
                }
                None => PeerRecord::default(),
            };
            rec.vector = vector.clone();
            rec.seen = time;
            peers.insert(&node.0, encode(&rec).as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Calls `sink` with every held batch (and its bodies) that `since` lacks, in author then
    /// seq order (this node's own authors first: its roster travels before the batches it
    /// authorizes), until `sink` returns `false`. Returns the number of batches visited.
    pub fn export_since<E: From<StoreError>>(
        &self,
        since: &Vector,
        sink: impl FnMut(SignedBatch, Vec<Vec<u8>>) -> Result<bool, E>,
    ) -> Result<u64, E> {
        let held = self.vector()?;
        let mut nodes: Vec<NodeId> = vec![self.node];
        for a in held.0.keys() {
            if !nodes.contains(&a.node) {
                nodes.push(a.node);
            }
        }
        self.export_in_order(&nodes, since, sink)
    }

    /// As [`Store::export_since`], for the authors of `nodes` only, in that order.
    pub fn export_in_order<E: From<StoreError>>(
        &self,
        nodes: &[NodeId],
        since: &Vector,
        mut sink: impl FnMut(SignedBatch, Vec<Vec<u8>>) -> Result<bool, E>,
    ) -> Result<u64, E> {
        let tx = self.db.begin_read().map_err(StoreError::from)?;
        let held = read_vector(&tx.open_table(VECTOR).map_err(StoreError::from)?)?;
        let batches = tx.open_table(BATCHES).map_err(StoreError::from)?;
        let bodies = tx.open_table(BODIES).map_err(StoreError::from)?;
        let withheld = match tx.open_table(WITHHELD) {
            Ok(t) => Some(t),
            // Stores that never held a withheld body.
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(StoreError::from(e).into()),
        };
        let mut count = 0;
        let rank: std::collections::HashMap<NodeId, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut order: Vec<(&AuthorId, &u64)> =
            held.0.iter().filter(|(a, _)| rank.contains_key(&a.node)).collect();
        order.sort_by_key(|(a, _)| (rank.get(&a.node).copied().unwrap_or(usize::MAX), **a));
        for (author, &top) in order {
            let from = since.get(author) + 1;
            if from > top {
                continue;
            }
            let actor = author.actor_bytes();
            for item in batches.range((&actor, from)..=(&actor, top)).map_err(StoreError::from)? {
                let (_, v) = item.map_err(StoreError::from)?;
                let (_, signed) = decode_batch(v.value())?;
                let mut carried = Vec::with_capacity(signed.batch.changes.len());
                for c in &signed.batch.changes {
                    match bodies.get(&c.body.0).map_err(StoreError::from)? {
                        Some(body) => carried.push(body.value().to_vec()),
                        // Withheld by this node's parent: relayed as withheld (empty).
                        None if match &withheld {
                            Some(w) => w.get(&c.body.0).map_err(StoreError::from)?.is_some(),
                            None => false,
                        } =>
                        {
                            carried.push(Vec::new())
                        }
                        None => return Err(corrupt(format!("body {}", c.body), "missing").into()),
                    }
                }
                count += 1;
                if !sink(signed, carried)? {
                    return Ok(count);
                }
            }
        }
        Ok(count)
    }

    /// The next batches `after` lacks, of the authors of `nodes` in that order (then seq
    /// order): at most `max_batches`, and no more once `max_body_bytes` of bodies are collected
    /// (one batch always fits).
    pub fn fetch_after(
        &self,
        nodes: &[NodeId],
        after: &Vector,
        max_batches: usize,
        max_body_bytes: usize,
    ) -> Result<Vec<BatchWithBodies>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        self.export_in_order::<StoreError>(nodes, after, |signed, bodies| {
            let size: usize = bodies.iter().map(Vec::len).sum();
            if !out.is_empty() && bytes + size > max_body_bytes {
                return Ok(false);
            }
            bytes += size;
            out.push((signed, bodies));
            Ok(out.len() < max_batches && bytes < max_body_bytes)
        })?;
        Ok(out)
    }

    /// The network state kept for `node` (contacts, errors, retry time, counters).
    pub fn peer_state(&self, node: &NodeId) -> Result<PeerState, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(PEER_STATE) {
            // Stores written before the table existed; the first update creates it.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(PeerState::default()),
            other => other?,
        };
        match table.get(&node.0)? {
            Some(v) => postcard::from_bytes(v.value()).map_err(|e| corrupt("peer state", e)),
            None => Ok(PeerState::default()),
        }
    }

    /// Read-modify-writes the network state of `node` in one transaction.
    pub fn update_peer_state(
        &self,
        node: &NodeId,
        f: impl FnOnce(&mut PeerState),
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(PEER_STATE)?;
            let mut state: PeerState = match table.get(&node.0)? {
                Some(v) => postcard::from_bytes(v.value()).map_err(|e| corrupt("peer state", e))?,
                None => PeerState::default(),
            };
            f(&mut state);
            table.insert(&node.0, encode(&state).as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends an event on its own (for work that changed nothing else, such as an export).
    pub fn record(&self, event: Event) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        append_event(&tx, event)?;
        tx.commit()?;
        Ok(())
    }

    /// The last `limit` entries of the audit log, oldest first.
    pub fn events(&self, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        audit::entries(&self.db.begin_read()?, limit)
    }

    /// This node's audit entries for `parent`, from its cursor on (at most `max`).
    pub fn audit_for_parent(
        &self,
        parent: &NodeId,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let from = audit::cursor(&tx, parent)?;
        audit::since(&tx, from, max)
    }

    /// Records that `parent` holds this node's audit entries before `next`.
    pub fn audit_acked(&self, parent: &NodeId, next: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        audit::set_cursor(&tx, parent, next)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a child's audit entries in this node's copy of its log (see
    /// `audit::store_remote`); returns the next entry the copy lacks. Problems (a rewritten
    /// child log) are recorded in this node's own audit log.
    pub fn store_child_audit(
        &self,
        origin: &NodeId,
        entries: &[(u64, Vec<u8>)],
        time: i64,
    ) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let (next, problems) = audit::store_remote(&tx, origin, entries)?;
        for problem in problems {
            let kind = EventKind::AuditCopy { origin: *origin, problem };
            append_event(&tx, Event { time, kind })?;
        }
        tx.commit()?;
        Ok(next)
    }

    /// The last `limit` entries of the copy of `origin`'s audit log, oldest first.
    pub fn child_audit(
        &self,
        origin: &NodeId,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>, StoreError> {
        audit::remote_entries(&self.db.begin_read()?, origin, limit)
    }

    /// Every conflict this node has seen, newest first.
    pub fn conflicts(&self) -> Result<Vec<crate::conflict::Conflict>, StoreError> {
        conflicts::list(&self.db.begin_read()?)
    }

    /// Checks the audit log's hash chain (see `store/audit.rs`).
    pub fn verify_audit(&self) -> Result<audit::AuditReport, StoreError> {
        audit::verify(&self.db.begin_read()?, &self.node)
    }

    /// Applies a retention policy to the audit log: keeps the last `keep_entries` entries and
    /// those newer than `keep_since` (Unix seconds, both kept: the larger part of the log
    /// stays), removes the rest and signs a checkpoint
    /// with `key` so the kept chain still verifies. Returns how many entries were removed.
    pub fn compact_audit(
        &self,
        key: &Keypair,
        keep_entries: Option<u64>,
        keep_since: Option<i64>,
        time: i64,
    ) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let entries = audit::entries(&self.db.begin_read()?, usize::MAX)?;
        let Some(&(last, _)) = entries.last() else { return Ok(0) };
        // Both limits keep a newest part of the log: an entry stays when either keeps it, so
        // the larger part stays (the last `keep_entries`, or everything newer than
        // `keep_since`, whichever reaches further back; the newest entry always stays).
        let by_count = keep_entries.map(|k| (last + 1).saturating_sub(k.max(1)));
        let by_age = keep_since
            .map(|since| entries.iter().find(|(_, e)| e.time >= since).map_or(last, |(n, _)| *n));
        let keep_from = match (by_count, by_age) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0,
        };
        let removed = audit::compact(&tx, &self.node, keep_from, &|d| key.sign(d))?;
        if removed > 0 {
            let kind = EventKind::Config {
                change: format!(
                    "audit log compacted: {removed} entries before {keep_from} removed, signed checkpoint kept"
                ),
            };
            append_event(&tx, Event { time, kind })?;
        }
        tx.commit()?;
        Ok(removed)
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own types into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

pub(crate) fn decode_doc(key: &str, bytes: &[u8]) -> Result<DocRecord, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(format!("document {key}"), e))
}

/// The heads of a stored [`DocRecord`] (its first field), without copying the document.
pub(crate) fn decode_doc_heads(key: &str, bytes: &[u8]) -> Result<Vec<[u8; 32]>, StoreError> {
    postcard::take_from_bytes(bytes)
        .map(|(heads, _)| heads)
        .map_err(|e| corrupt(format!("document {key}"), e))
}

pub(crate) fn encode_batch(hash: &BatchHash, signed: &SignedBatch) -> Vec<u8> {
    let mut out = hash.0.to_vec();
    out.extend(encode(signed));
    out
}

pub(crate) fn decode_batch(bytes: &[u8]) -> Result<(BatchHash, SignedBatch), StoreError> {
    if bytes.len() < 32 {
        return Err(corrupt("batch", "shorter than its hash"));
    }
    let (hash, rest) = bytes.split_at(32);
    let signed = postcard::from_bytes(rest).map_err(|e| corrupt("batch", e))?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt("batch", "hash"))?;
    Ok((BatchHash(hash), signed))
}

pub(crate) fn read_vector(
    table: &impl ReadableTable<&'static [u8; 40], u64>,
) -> Result<Vector, StoreError> {
    let mut out = BTreeMap::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let author = AuthorId::from_actor_bytes(k.value())
            .ok_or_else(|| corrupt("vector key", "not 40 bytes"))?;
        out.insert(author, v.value());
    }
    Ok(Vector(out))
}

pub(crate) fn append_event(tx: &redb::WriteTransaction, event: Event) -> Result<(), StoreError> {
    audit::append(tx, &event)
}

/// (device, inode) of the store file: changes when the file is copied or restored.
fn file_identity(path: &Path) -> Result<[u8; 16], StoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&meta.dev().to_be_bytes());
    out[8..].copy_from_slice(&meta.ino().to_be_bytes());
    Ok(out)
}
