//! The data interface of the admin view: everything its pages and the JSON API show or do goes
//! through [`AdminData`], so the stores behind it (the conflicts table, the hash-chained audit
//! log, the failures queue) can change without touching the web layer.
//!
//! Every method blocks (storage, a sync round); the web layer calls them on tokio's blocking
//! pool. The types here serialize as the JSON API's response bodies (see `docs/api.md`).
//! No method returns key material, and no type here is ever logged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{EntityId, EntityType, NodeId};

/// Most changes shown on a record page.
pub const HISTORY_CHANGES_MAX: usize = 100;
/// Most audit entries in one page.
pub const AUDIT_PAGE_MAX: usize = 500;
/// Most record ids in one page.
pub const RECORDS_PAGE_MAX: usize = 1_000;

/// Why a data call failed; the web layer maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Nothing by that id (404).
    #[error("{0}")]
    NotFound(String),
    /// Bad input; nothing was changed (422 on the API, a message on the page).
    #[error("{0}")]
    Input(String),
    /// The action needs something that is not there now, e.g. a running sync loop (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

/// The admin view's data and actions. Implemented by the node (`node/admin_view.rs`).
pub trait AdminData: Send + Sync + 'static {
    /// This node, every configured peer and every node known through rosters.
    fn overview(&self) -> Result<Overview, DataError>;

    /// Audit entries matching `filter`, newest first, one page.
    fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, DataError>;

    /// Operations whose last attempt failed.
    fn failures(&self) -> Result<Vec<FailureView>, DataError>;

    /// Retries failure `id` now and says how it went.
    fn retry(&self, id: &str) -> Result<ActionReport, DataError>;

    /// Open conflicts, in record then path order.
    fn conflicts(&self) -> Result<Vec<ConflictSummary>, DataError>;

    /// One open conflict with every value side by side (`NotFound` once it is resolved).
    fn conflict(&self, id: &str) -> Result<Conflict, DataError>;

    /// Resolves conflict `id`: one new local change that supersedes every concurrent value. Bad
    /// input (an index out of range, a value the record's schema refuses) changes nothing.
    fn resolve(&self, id: &str, how: &Resolution) -> Result<ActionReport, DataError>;

    /// Record ids, of one type or all, in key order: at most `limit` after `after`.
    fn records(
        &self,
        ty: Option<EntityType>,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<RecordPage, DataError>;

    /// One record: its current JSON, open conflicts and change history.
    fn record(&self, id: &EntityId) -> Result<RecordView, DataError>;

    /// Runs a sync round with every dialled peer now ("sync now"; `entity` is the record the
    /// operator asked for: batches travel in order, so the round carries its pending changes).
    fn sync_now(&self, entity: Option<&EntityId>) -> Result<ActionReport, DataError>;

    /// Writes a bundle of what `peer` lacks (everything for `None`) to a temporary file.
    fn export_bundle(&self, peer: Option<NodeId>) -> Result<ExportedBundle, DataError>;

    /// Verifies and applies the bundle file at `path`.
    fn import_bundle(&self, path: &Path) -> Result<ImportSummary, DataError>;

    /// The metric families `/metrics` shows (by default derived from the overview).
    fn metrics(&self) -> Result<Vec<MetricFamily>, DataError> {
        Ok(super::metrics::from_overview(&self.overview()?))
    }
}

/// The overview page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overview {
    /// When this was read (seconds since the Unix epoch).
    pub time: i64,
    pub node: NodeSummary,
    pub peers: Vec<PeerView>,
    /// The EMRs this node bridges to (`[[emr]]`), beside its peers.
    #[serde(default)]
    pub emr: Vec<EmrView>,
    /// Every node whose changes this node accepts beyond itself: configured peers and trusted
    /// nodes, and the nodes their rosters list (on a parent: every child in the network).
    pub network: Vec<NetworkNode>,
    pub open_conflicts: u64,
    /// Standing failures (syncs, refused batches, FHIR pushes), and those needing attention.
    pub failures: u64,
    pub failures_needing_attention: u64,
}

/// This node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSummary {
    pub node_id: String,
    pub name: String,
    /// The author this node writes as (`node/incarnation`).
    pub author: String,
    /// The state digest: nodes holding the same changes show the same digest.
    pub digest: String,
    pub batches: u64,
    /// Batches received that wait for earlier ones of their author (backlog).
    pub pending_batches: u64,
    /// Records per entity type.
    pub entities: BTreeMap<String, u64>,
}

/// One configured peer, as `status --json` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    pub node_id: String,
    pub name: Option<String>,
    /// Its role toward this node: `parent`, `child` or `peer`.
    pub role: String,
    /// Where this node dials it; `None` when it dials in.
    pub addr: Option<String>,
    pub last_contact: Option<i64>,
    pub last_success: Option<i64>,
    /// Batches this node holds that the peer lacks (as last known).
    pub batches_to_send: u64,
    /// Batches the peer holds that this node lacks (as last known).
    pub batches_to_receive: u64,
    pub next_retry: Option<i64>,
    /// Failed sessions in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    pub sessions: u64,
    pub batches_sent: u64,
    pub batches_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One EMR link (docs/emr.md), as `sitesync emr status` reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EmrView {
    pub name: String,
    pub base_url: String,
    pub profile: String,
    pub direction: String,
    pub last_run: i64,
    pub last_success: i64,
    /// Seconds since the last run that went through (`None`: never).
    pub lag_secs: Option<i64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub records_in: u64,
    pub records_out: u64,
    pub unchanged: u64,
    /// Resources standing failed.
    pub failed: u64,
}

/// A node known to this one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkNode {
    pub node_id: String,
    pub name: Option<String>,
    /// Its role as listed: toward this node if configured here, else in the roster that lists it.
    pub role: String,
    /// Who lists it: `this node`, or the node id of the roster's owner.
    pub listed_by: String,
    /// Batches of its authoring this node holds.
    pub batches_held: u64,
    /// When it wrote the newest change this node holds (its own clock): how current its data
    /// is here, for nodes several tiers away too.
    pub newest_change: Option<i64>,
}

/// Which audit entries to show. Times are seconds since the Unix epoch, inclusive.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    pub origin: Option<NodeId>,
    pub kind: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Entries numbered below this only (the `next_before` of the previous page).
    pub before: Option<u64>,
    pub limit: usize,
}

/// One page of audit entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<u64>,
    /// The kinds and outcomes entries can have (for filter choices).
    pub kinds: Vec<String>,
    pub outcomes: Vec<String>,
    /// The origins there are entries of: this node first, then each child whose entries this
    /// node keeps a copy of.
    pub origins: Vec<String>,
}

/// One audit entry. No patient data: ids, counts, bytes, reasons.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub time: i64,
    /// The node that recorded the entry.
    pub origin: String,
    pub kind: String,
    /// `ok`, `rejected` or `error`.
    pub outcome: String,
    /// The other node involved, if any.
    pub peer: Option<String>,
    pub summary: String,
}

/// An operation whose last attempt failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailureView {
    /// Pass to `retry`.
    pub id: String,
    /// What failed, e.g. `sync with parent district (0a1b…)`.
    pub operation: String,
    pub peer: Option<String>,
    pub reason: String,
    /// Failed attempts in a row.
    pub attempts: u32,
    pub last_success: Option<i64>,
    /// When the next automatic attempt runs, if one is scheduled.
    pub next_retry: Option<i64>,
    /// Whether `retry` can run it now (a child dials in on its own schedule).
    pub retryable: bool,
    /// When the first attempt of this run of failures failed.
    pub first_failed: i64,
    /// Failed `[failures] give_up_after` times in a row: an administrator should look.
    pub needs_attention: bool,
    /// Retries run by hand since the first failure.
    pub manual_retries: u32,
}

/// What an action did, in an operator's words.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActionReport {
    pub ok: bool,
    pub message: String,
    /// Sync sessions run by the action, if any.
    pub sessions: Vec<Value>,
}

/// How to resolve a conflict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Keep value number N (0-based, as listed by `conflict`).
    Take(usize),
    /// Write this value (validated against the record's schema).
    Value(Value),
}

/// One open conflict in the list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConflictSummary {
    pub id: String,
    /// `type/uuid`.
    pub entity: String,
    /// Dotted field path.
    pub path: String,
    pub values: usize,
    /// Node ids of the values' authors, in value order.
    pub authors: Vec<Option<String>>,
    /// The newest value's time.
    pub time: i64,
}

/// One conflict with its values side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Conflict {
    pub id: String,
    pub entity: String,
    pub path: String,
    /// Index of the value reads return now (the deterministic winner).
    pub winner: usize,
    pub values: Vec<ConflictValueView>,
}

/// One of a conflict's values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConflictValueView {
    pub index: usize,
    pub value: Value,
    /// The writing author (`node/incarnation`).
    pub author: Option<String>,
    /// The writing node's id and configured name, when known.
    pub node: Option<String>,
    pub node_name: Option<String>,
    /// The author's clock when written (advisory).
    pub time: i64,
}

/// One page of record ids.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordPage {
    pub records: Vec<String>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// One record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordView {
    pub id: String,
    /// The record as `sitesync get` prints it (winning values).
    pub record: Value,
    pub conflicts: Vec<ConflictSummary>,
    /// The latest changes, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Whether older changes were left out of `history`.
    pub history_truncated: bool,
}

/// One change of a record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub hash: String,
    pub author: Option<String>,
    pub node: Option<String>,
    pub node_name: Option<String>,
    pub time: i64,
    /// `set`/`delete`/`insert` of each field path the change touched, with the new value.
    pub edits: Vec<HistoryEdit>,
}

/// One field edit of a change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEdit {
    pub path: String,
    pub action: String,
    pub value: Option<Value>,
}

/// A bundle written for download; the file is removed when this is dropped.
#[derive(Debug)]
pub struct ExportedBundle {
    pub file: tempfile::TempPath,
    /// A file name to offer, e.g. `sitesync-for-0a1b2c3d4e5f.ssb`.
    pub name: String,
    pub batches: u64,
    pub changes: u64,
    pub bytes: u64,
}

/// What an import did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportSummary {
    pub ok: bool,
    pub exporter: Option<String>,
    pub frames: u64,
    pub applied_batches: u64,
    pub applied_changes: u64,
    pub already_present: u64,
    pub waiting: u64,
    /// One line per rejected batch or frame, with the reason.
    pub rejected: Vec<String>,
    /// Set when the bundle was cut short.
    pub truncated: Option<String>,
}

/// One Prometheus metric family.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricFamily {
    /// `sitesync_…`.
    pub name: String,
    pub help: String,
    /// `gauge` or `counter`.
    pub kind: String,
    /// (labels, value).
    pub samples: Vec<(Vec<(String, String)>, f64)>,
}
