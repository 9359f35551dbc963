//! What a node can be asked: one [`Request`] per operation, one [`Reply`] per answer, and
//! [`Node::execute`], which carries a request out. The CLI parses its arguments into a
//! `Request` and executes it in-process, or sends it to the running node over the control
//! endpoint (`control.rs`); the admin view calls the same node code through a
//! [`super::NodeHandle`]. Every variant here can run inside a running node: commands that
//! change the configuration or the store file (init, trust, peer, network, reincarnate) are not
//! requests, and need the node stopped.
//!
//! Requests and replies cross the control endpoint as postcard (`control.rs`), so new variants
//! go at the end of each enum; JSON values travel as their text ([`Json`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::session_host::SessionReport;
use super::{BundleExportReport, ConflictView, ImportReport, Node, NodeError};
use crate::event::Event;
use crate::fhir::{Cursor, FhirExportReport, FhirSettings, PushReport, PushTargetStatus};
use crate::id::{EntityId, EntityType, NodeId, Vector};
use crate::store::PutOutcome;
use crate::store::audit::AuditReport;
use crate::store::failures::FailureRecord;

/// A JSON value that crosses the control endpoint as its text (postcard cannot carry a
/// self-describing value).
#[derive(Clone, Debug, PartialEq)]
pub struct Json(pub serde_json::Value);

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map(Json).map_err(serde::de::Error::custom)
    }
}

/// A value whose serde form is meant for JSON (it skips absent fields, which postcard cannot
/// read back), carried across the control endpoint as its JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonOf<T>(pub T);

impl<T: Serialize> Serialize for JsonOf<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for JsonOf<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map(JsonOf).map_err(serde::de::Error::custom)
    }
}

/// What a bundle export leaves out: the batches a node is known to hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Since {
    /// Everything this node holds.
    Everything,
    /// What this node learnt `NodeId` holds from its last bundle.
    Peer(NodeId),
    /// What a vector (`sitesync vector`) says is held.
    Vector(Vector),
}

/// How to resolve a conflict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Choice {
    /// Keep value N of the conflict.
    Take(usize),
    /// Write this value instead.
    Value(Json),
}

/// One operation a node carries out (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// This node's id.
    Id,
    /// Validate and write one record, or a JSON list of records, of `ty`.
    Put { ty: EntityType, records: Json },
    /// A record, with its fields that hold concurrent values when `conflicts`.
    Get { id: EntityId, conflicts: bool },
    /// Record ids, of one type or all.
    List { ty: Option<EntityType> },
    /// Write a bundle file of what `since` lacks (the path is the node's to write).
    Export { out: PathBuf, since: Since },
    /// Verify and apply a bundle file.
    Import { file: PathBuf },
    /// Identity, vector, counts, digest and per peer: contacts, lag, next retry, last error.
    Status,
    /// This node's vector.
    Vector,
    /// The last `limit` audit entries, this node's or (on a parent) a child's copy.
    Events { limit: usize, origin: Option<NodeId> },
    /// Every conflict seen here.
    Conflicts,
    /// Resolve conflict `id`.
    Resolve { id: String, choice: Choice },
    /// Check the audit log's hash chain.
    AuditVerify,
    /// Apply the audit retention (or these limits).
    AuditCompact { keep_entries: Option<u64>, keep_days: Option<u64> },
    /// The failures registry.
    Failures,
    /// Sync now with one dialled peer or all (only in a running node).
    Sync { peer: Option<NodeId> },
    /// Run a failed operation again now (only in a running node).
    Retry { id: String },
    /// Export records as FHIR R4 NDJSON (and a Bundle) into `out`. `settings` is the TOML text
    /// of a `[fhir]` table (the config's when `None`); `types` empty means every exported type.
    FhirExport {
        out: PathBuf,
        types: Vec<EntityType>,
        bundle: Option<PathBuf>,
        settings: Option<String>,
        since: Option<Cursor>,
    },
    /// Push to a `[[fhir.targets]]` entry.
    FhirPush { target: String, full: bool },
    /// Each push target's state.
    FhirStatus,
    /// Run the EMR bridge now (to one `[[emr]]` or all).
    EmrSync { emr: Option<String> },
    /// Each EMR link's state.
    EmrStatus,
}

impl Request {
    /// Whether the request needs the node's sync loops, which only `serve` runs.
    pub fn needs_running_node(&self) -> bool {
        matches!(self, Request::Sync { .. } | Request::Retry { .. })
    }
}

/// What a FHIR export wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FhirExported {
    /// NDJSON files written.
    pub files: usize,
    /// Resources written.
    pub resources: usize,
    /// Entries of the transaction Bundle, when one was asked for.
    pub bundle_entries: Option<usize>,
    pub report: FhirExportReport,
    /// The cursor to pass next time.
    pub cursor: Cursor,
}

/// What a retry did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retried {
    pub id: String,
    /// The operation, in an operator's words.
    pub what: String,
    /// The failure is closed: it works now.
    pub closed: bool,
    /// Why it still fails, when it does.
    pub reason: Option<String>,
    pub sessions: Vec<SessionReport>,
    pub push: Option<JsonOf<PushReport>>,
}

/// The answer to a [`Request`], variant for variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Id(NodeId),
    Put(Vec<PutOutcome>),
    /// The record, and its conflicting fields when asked.
    Record {
        record: Json,
        conflicts: Option<Json>,
    },
    Ids(Vec<EntityId>),
    Exported(BundleExportReport),
    Imported(ImportReport),
    Status(Json),
    Vector {
        node: NodeId,
        vector: Vector,
    },
    Events(Vec<(u64, Event)>),
    Conflicts(Vec<ConflictView>),
    Resolved(crate::conflict::Conflict),
    AuditVerified(AuditReport),
    Compacted(u64),
    Failures(Vec<FailureRecord>),
    Sessions(Vec<SessionReport>),
    Retried(Retried),
    FhirExported(FhirExported),
    Pushed(JsonOf<PushReport>),
    PushStatus(JsonOf<Vec<PushTargetStatus>>),
    EmrRuns(JsonOf<Vec<super::emr::EmrReport>>),
    EmrStatus(JsonOf<Vec<super::emr::EmrLinkStatus>>),
}

impl Node {
    /// Carries out `request` on this node (blocking). `progress(done, total)` follows long
    /// work (bundles, FHIR exports). Syncs and retries need the running node's loops: they are
    /// carried out by [`super::NodeHandle::execute`], and refused here.
    pub fn execute(
        &self,
        request: Request,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Reply, NodeError> {
        Ok(match request {
            Request::Id => Reply::Id(self.id()),
            Request::Put { ty, records } => Reply::Put(self.put(ty, &records.0)?),
            Request::Get { id, conflicts } => {
                let (record, found) = self
                    .store
                    .get(&id)?
                    .ok_or_else(|| NodeError::NotFound(format!("no record {id} in this node")))?;
                let found = conflicts.then(|| Json(serde_json::json!(found)));
                Reply::Record { record: Json(record), conflicts: found }
            }
            Request::List { ty } => Reply::Ids(self.store.list(ty)?),
            Request::Export { out, since } => {
                let (vector, peer) = self.since_vector(since)?;
                Reply::Exported(self.export(&out, &vector, peer, progress)?)
            }
            Request::Import { file } => Reply::Imported(self.import(&file, progress)?),
            Request::Status => Reply::Status(Json(super::status_json(self)?)),
            Request::Vector => Reply::Vector { node: self.id(), vector: self.store.vector()? },
            Request::Events { limit, origin: None } => Reply::Events(self.store.events(limit)?),
            Request::Events { limit, origin: Some(o) } => {
                Reply::Events(self.store.child_audit(&o, limit)?)
            }
            Request::Conflicts => Reply::Conflicts(self.conflicts()?),
            Request::Resolve { id, choice } => Reply::Resolved(self.resolve(&id, choice)?),
            Request::AuditVerify => Reply::AuditVerified(self.store.verify_audit()?),
            Request::AuditCompact { keep_entries, keep_days } => {
                Reply::Compacted(self.compact_audit_asked(keep_entries, keep_days)?)
            }
            Request::Failures => Reply::Failures(self.store.failures(self.now())?),
            Request::FhirExport { out, types, bundle, settings, since } => {
                let settings = settings.as_deref().map(FhirSettings::from_toml).transpose();
                let settings = settings.map_err(|e| NodeError::Input(e.to_string()))?;
                let req = FhirExportRequest { out, types, bundle, settings, since };
                Reply::FhirExported(self.fhir_export_files(req, progress)?)
            }
            Request::FhirPush { target, full } => {
                let opts =
                    super::push::PushOptions { retry_failed: true, full, ..Default::default() };
                Reply::Pushed(JsonOf(self.push_run(&target, opts)?))
            }
            Request::FhirStatus => Reply::PushStatus(JsonOf(self.push_status()?)),
            Request::EmrSync { emr } => Reply::EmrRuns(JsonOf(self.emr_now(emr.as_deref(), true)?)),
            Request::EmrStatus => Reply::EmrStatus(JsonOf(self.emr_status()?)),
            Request::Sync { .. } | Request::Retry { .. } => {
                return Err(NodeError::NotRunning(self.dir.clone()));
            }
        })
    }

    /// The vector a bundle export leaves out, and the peer it is for.
    fn since_vector(&self, since: Since) -> Result<(Vector, Option<NodeId>), NodeError> {
        match since {
            Since::Everything => Ok((Vector::default(), None)),
            Since::Vector(v) => Ok((v, None)),
            Since::Peer(p) => {
                let v = self.store.peer_vector(&p)?.ok_or_else(|| {
                    NodeError::Input(format!(
                        "nothing is known about what {p} holds yet: import a bundle from it \
                         first, or use --since"
                    ))
                })?;
                Ok((v, Some(p)))
            }
        }
    }

    /// `audit compact`: the given limits, else the `[audit]` retention; refuses limits that
    /// would keep nothing and a call with no retention at all.
    fn compact_audit_asked(
        &self,
        keep_entries: Option<u64>,
        keep_days: Option<u64>,
    ) -> Result<u64, NodeError> {
        if keep_entries == Some(0) || keep_days == Some(0) {
            return Err(NodeError::Input(
                "--keep-entries / --keep-days: 0 would keep nothing".into(),
            ));
        }
        let none = keep_entries.is_none() && keep_days.is_none();
        if none && self.config.retention == crate::config::Retention::default() {
            return Err(NodeError::Input(
                "no retention: set [audit] keep_days / keep_entries in the config, or give \
                 --keep-entries / --keep-days"
                    .into(),
            ));
        }
        self.compact_audit(keep_entries, keep_days)
    }
}

/// A FHIR export to files, as [`Request::FhirExport`] asks it.
pub struct FhirExportRequest {
    pub out: PathBuf,
    pub types: Vec<EntityType>,
    pub bundle: Option<PathBuf>,
    pub settings: Option<FhirSettings>,
    pub since: Option<Cursor>,
}
