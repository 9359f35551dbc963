//! The admin view's data ([`AdminData`]) for a running node, through its [`NodeHandle`]:
//!
//! - overview and failures from [`super::status_json`] (peer state: lag both ways, last
//!   success, last error, next retry) and the rosters (every node in the network);
//! - audit entries from the event log (the hash-chained audit log replaces it behind
//!   [`AdminData::audit`]);
//! - conflicts from the node's conflict registry (filled when merges meet concurrent values;
//!   `src/conflict.rs`): every conflict not yet superseded, under the view's id
//!   `type:uuid:path` (at most one unsuperseded conflict per field); resolving goes through
//!   `Node::resolve`, the same path as `sitesync resolve`;
//! - retry and "sync now" in the node's own sync loops, through the handle (the same calls the
//!   control endpoint makes for `sitesync sync` and `sitesync retry`);
//! - a resolution as one forced local write of the chosen value at the conflicting path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::session_host::SessionReport;
use super::{Node, NodeError, NodeHandle, status_json};
use crate::entity::doc::FieldConflict;
use crate::event::{Event, EventKind, FailureChange};
use crate::id::{EntityId, EntityType, NodeId, Vector};
use crate::store::failures::Operation;
use crate::web::data::*;

/// The admin data of a running node.
pub struct AdminView {
    handle: NodeHandle,
    node: Arc<Node>,
}

impl From<NodeError> for DataError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Input(m) => DataError::Input(m),
            NodeError::Entity(e) => DataError::Input(e.to_string()),
            NodeError::NotFound(m) => DataError::NotFound(m),
            NodeError::NotRunning(_) => DataError::Unavailable(
                "the node's sync loops are not running (start `sitesync serve`)".into(),
            ),
            other => DataError::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for DataError {
    fn from(e: crate::store::StoreError) -> Self {
        DataError::Internal(e.to_string())
    }
}

fn internal(e: impl std::fmt::Display) -> DataError {
    DataError::Internal(e.to_string())
}

/// `type:uuid:path`, the id of the conflict at `path` of `entity`.
pub fn conflict_id(entity: &EntityId, path: &str) -> String {
    format!("{}:{}:{path}", entity.ty, entity.uuid)
}

fn parse_conflict_id(id: &str) -> Result<(EntityId, String), DataError> {
    let bad = || DataError::NotFound(format!("{id:?} is not a conflict id (type:uuid:path)"));
    let mut parts = id.splitn(3, ':');
    let (Some(ty), Some(uuid), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let entity = super::entity_id(ty, uuid).map_err(|_| bad())?;
    Ok((entity, path.to_string()))
}

impl AdminView {
    pub fn new(handle: NodeHandle) -> AdminView {
        AdminView { node: handle.node().clone(), handle }
    }

    /// The registry's conflicts that are not superseded yet.
    fn unsettled(&self) -> Result<Vec<crate::conflict::Conflict>, DataError> {
        Ok(self.node.conflicts()?.into_iter().map(|v| v.conflict).filter(|c| c.is_open()).collect())
    }

    /// The unsettled conflict the view's id names.
    fn registered(&self, id: &str) -> Result<crate::conflict::Conflict, DataError> {
        let (entity, path) = parse_conflict_id(id)?;
        self.unsettled()?.into_iter().find(|c| c.entity == entity && c.path == path).ok_or_else(
            || {
                DataError::NotFound(format!(
                    "conflict {id} is not open (resolved, or no such field)"
                ))
            },
        )
    }

    /// Node names as configured here or listed in rosters, by node id (hex).
    fn names(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for n in self.network().unwrap_or_default() {
            if let Some(name) = n.name {
                out.insert(n.node_id, name);
            }
        }
        out.insert(self.node.id().to_string(), self.node.config.name.clone());
        out
    }

    fn network(&self) -> Result<Vec<NetworkNode>, DataError> {
        let node = &self.node;
        let vector = node.store.vector()?;
        let held = |n: &NodeId| vector.0.iter().filter(|(a, _)| a.node == *n).map(|(_, s)| s).sum();
        let mut listed: HashMap<NodeId, (String, Option<String>, String)> = HashMap::new();
        for p in &node.config.peers {
            let role = crate::config::role_name(p.role).to_string();
            listed.insert(p.node_id, (role, p.name.clone(), "this node".into()));
        }
        for t in &node.config.trust {
            listed.entry(t.node_id).or_insert((
                "trusted".into(),
                t.name.clone(),
                "this node".into(),
            ));
        }
        let order = node.trust_order()?;
        for owner in &order {
            for (member, entry) in node.roster_entries(owner)?.iter() {
                let role =
                    entry.get("role").and_then(Value::as_str).unwrap_or("member").to_string();
                let name = entry.get("name").and_then(Value::as_str).map(str::to_string);
                listed.entry(*member).or_insert((role, name, owner.to_string()));
            }
        }
        order
            .iter()
            .skip(1)
            .map(|n| {
                let (role, name, by) =
                    listed.remove(n).unwrap_or(("member".into(), None, "?".into()));
                Ok(NetworkNode {
                    node_id: n.to_string(),
                    name,
                    role,
                    listed_by: by,
                    batches_held: held(n),
                    newest_change: node.store.newest_change_time(n)?,
                })
            })
            .collect()
    }

    fn view_value(
        &self,
        names: &HashMap<String, String>,
        i: usize,
        v: &crate::entity::doc::ConflictValue,
    ) -> ConflictValueView {
        let node = v.author.as_deref().and_then(|a| a.split(':').next()).map(str::to_string);
        ConflictValueView {
            index: i,
            value: v.value.clone(),
            author: v.author.clone(),
            node_name: node.as_ref().and_then(|n| names.get(n).cloned()),
            node,
            time: v.time,
        }
    }

    fn sync_round(&self, peer: Option<NodeId>) -> Result<Vec<Value>, DataError> {
        Ok(self.handle.sync(peer)?.iter().map(session_json).collect())
    }

    fn entity_of(&self, id: &EntityId) -> Result<(Value, Vec<FieldConflict>), DataError> {
        self.node
            .store
            .get(id)?
            .ok_or_else(|| DataError::NotFound(format!("no record {id} in this node")))
    }
}

fn summary(c: &crate::conflict::Conflict) -> ConflictSummary {
    ConflictSummary {
        id: conflict_id(&c.entity, &c.path),
        entity: c.entity.to_string(),
        path: c.path.clone(),
        values: c.values.len(),
        authors: c
            .values
            .iter()
            .map(|v| v.author.as_deref().and_then(|a| a.split(':').next()).map(str::to_string))
            .collect(),
        time: c.values.iter().map(|v| v.time).max().unwrap_or(0),
    }
}

/// A registry value in the shape `view_value` takes.
fn field_value(v: &crate::conflict::StoredValue) -> crate::entity::doc::ConflictValue {
    crate::entity::doc::ConflictValue {
        value: serde_json::from_str(&v.json).unwrap_or(Value::Null),
        author: v.author.clone(),
        time: v.time,
    }
}

/// The members of `owner`'s roster with their entries (role, name).
/// A session report as the JSON API shows it.
fn session_json(r: &SessionReport) -> Value {
    serde_json::to_value(r).unwrap_or_default()
}

fn sessions_ok(sessions: &[Value]) -> bool {
    sessions.iter().all(|s| s["complete"] == Value::Bool(true))
}

fn describe_sessions(sessions: &[Value]) -> String {
    sessions
        .iter()
        .map(|s| {
            format!(
                "{}: {}; sent {} batches, received {}",
                s["peer"].as_str().map_or("?", crate::id::short),
                s["outcome"].as_str().unwrap_or("?"),
                s["batches_sent"],
                s["batches_received"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The event's kind name, its outcome and the other node involved.
fn classify(kind: &EventKind) -> (&'static str, &'static str, Option<NodeId>) {
    match kind {
        EventKind::LocalWrite { .. } => ("local_write", "ok", None),
        EventKind::Received { from, rejected, .. } => {
            ("received", if *rejected > 0 { "rejected" } else { "ok" }, *from)
        }
        EventKind::Rejected { author, .. } => ("rejected", "rejected", Some(author.node)),
        EventKind::Exported { peer, .. } => ("exported", "ok", *peer),
        EventKind::Unmergeable { .. } => ("unmergeable", "error", None),
        EventKind::Incarnation { .. } => ("incarnation", "ok", None),
        EventKind::Session { peer, complete, .. } => {
            ("session", if *complete { "ok" } else { "error" }, Some(*peer))
        }
        EventKind::Config { .. } => ("config", "ok", None),
        EventKind::ConflictDetected { .. } => ("conflict", "open", None),
        EventKind::ConflictClosed { .. } => ("conflict", "closed", None),
        EventKind::ConflictResolved { .. } => ("conflict", "resolved", None),
        EventKind::AuditCopy { origin, .. } => ("audit_copy", "error", Some(*origin)),
        EventKind::Failure { change, .. } => (
            "failure",
            match change {
                FailureChange::Recovered | FailureChange::ManualRetry => "ok",
                _ => "error",
            },
            None,
        ),
        EventKind::FhirPush { failed, outcome_text, .. } => {
            ("fhir_push", if *failed == 0 && outcome_text == "ok" { "ok" } else { "error" }, None)
        }
        EventKind::BodiesResent { to, .. } => ("bodies", "ok", Some(*to)),
        EventKind::BodiesReceived { from, refused, .. } => {
            ("bodies", if *refused > 0 { "rejected" } else { "ok" }, Some(*from))
        }
        EventKind::EmrRun { failed, error, .. } => {
            ("emr", if *failed == 0 && error.is_none() { "ok" } else { "error" }, None)
        }
    }
}

const KINDS: [&str; 14] = [
    "local_write",
    "received",
    "rejected",
    "exported",
    "unmergeable",
    "incarnation",
    "session",
    "config",
    "conflict",
    "audit_copy",
    "failure",
    "fhir_push",
    "bodies",
    "emr",
];
const OUTCOMES: [&str; 6] = ["ok", "rejected", "error", "open", "closed", "resolved"];

/// Finds the key of `map` that the dotted `path` starts with (the longest, as keys may hold
/// dots), and the rest of the path after it.
fn split_key<'a>(map: &Map<String, Value>, path: &'a str) -> Option<(String, Option<&'a str>)> {
    let key = map
        .keys()
        .filter(|k| path == *k || path.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with('.')))
        .max_by_key(|k| k.len())?
        .clone();
    let rest = (path.len() > key.len()).then(|| &path[key.len() + 1..]);
    Some((key, rest))
}

fn set_path(map: &mut Map<String, Value>, path: &str, value: Value) -> bool {
    let Some((key, rest)) = split_key(map, path) else { return false };
    match (rest, map.get_mut(&key)) {
        (None, Some(slot)) => {
            *slot = value;
            true
        }
        (Some(rest), Some(Value::Object(inner))) => set_path(inner, rest, value),
        _ => false,
    }
}

fn get_path<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let (key, rest) = split_key(map, path)?;
    match (rest, map.get(&key)?) {
        (None, v) => Some(v),
        (Some(rest), Value::Object(inner)) => get_path(inner, rest),
        _ => None,
    }
}

impl AdminData for AdminView {
    fn overview(&self) -> Result<Overview, DataError> {
        let s = status_json(&self.node)?;
        let peers: Vec<PeerView> = serde_json::from_value(s["peers"].clone()).map_err(internal)?;
        let entities = serde_json::from_value(s["entities"].clone()).map_err(internal)?;
        let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
        let node = NodeSummary {
            node_id: text("node_id"),
            name: text("name"),
            author: text("author"),
            digest: text("digest"),
            batches: s["batches"].as_u64().unwrap_or(0),
            pending_batches: s["pending_batches"].as_u64().unwrap_or(0),
            entities,
        };
        let open_conflicts = self.unsettled()?.len() as u64;
        let failures = self.node.store.failures_read()?;
        let emr = self
            .node
            .emr_status()?
            .into_iter()
            .map(|l| EmrView {
                name: l.name,
                base_url: l.base_url,
                profile: l.profile,
                direction: l.direction,
                last_run: l.last_run,
                last_success: l.last_success,
                lag_secs: l.lag_secs,
                consecutive_failures: l.consecutive_failures,
                last_error: l.last_error,
                records_in: l.records_in,
                records_out: l.records_out,
                unchanged: l.unchanged,
                failed: l.failed,
            })
            .collect();
        Ok(Overview {
            time: self.node.now(),
            node,
            peers,
            emr,
            network: self.network()?,
            open_conflicts,
            failures: failures.len() as u64,
            failures_needing_attention: failures.iter().filter(|f| f.needs_attention).count()
                as u64,
        })
    }

    fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, DataError> {
        let own = self.node.id();
        let limit = filter.limit.clamp(1, AUDIT_PAGE_MAX);
        let mut origins = vec![own.to_string()];
        origins.extend(self.node.store.audit_origins()?.iter().map(NodeId::to_string));
        let keep = |e: &Event| {
            let (kind, outcome, _) = classify(&e.kind);
            filter.kind.as_deref().is_none_or(|k| k == kind)
                && filter.outcome.as_deref().is_none_or(|o| o == outcome)
                && filter.since.is_none_or(|t| e.time >= t)
                && filter.until.is_none_or(|t| e.time <= t)
        };
        // Without an origin, this node's own entries; with a child's, the copy kept of its log.
        let origin = filter.origin.unwrap_or(own);
        let (events, next_before) = if origin == own {
            self.node.store.events_page(filter.before, limit, keep)?
        } else {
            self.node.store.remote_events_page(&origin, filter.before, limit, keep)?
        };
        let entries = events
            .into_iter()
            .map(|(id, e)| {
                let (kind, outcome, peer) = classify(&e.kind);
                AuditEntry {
                    id,
                    time: e.time,
                    origin: origin.to_string(),
                    kind: kind.into(),
                    outcome: outcome.into(),
                    peer: peer.map(|p| p.to_string()),
                    summary: e.kind.to_string(),
                }
            })
            .collect();
        Ok(AuditPage {
            entries,
            next_before,
            kinds: KINDS.iter().map(|k| k.to_string()).collect(),
            outcomes: OUTCOMES.iter().map(|k| k.to_string()).collect(),
            origins,
        })
    }

    fn failures(&self) -> Result<Vec<FailureView>, DataError> {
        let records = self.node.store.failures(self.node.now())?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            // The configured peer it concerns, if any: its name, role and whether it is dialled.
            let entry = r.op.peer().and_then(|p| self.node.config.peer(&p));
            let label = entry.map(|p| {
                let role = crate::config::role_name(p.role);
                let id = p.node_id.to_string();
                match &p.name {
                    Some(n) => format!("{role} {n} ({})", crate::id::short(&id)),
                    None => format!("{role} {}", crate::id::short(&id)),
                }
            });
            let operation = match (&r.op, &label) {
                (Operation::Sync { .. }, Some(l)) => format!("sync with {l}"),
                (Operation::HeldBack { entity, .. }, Some(l)) => {
                    format!("record {entity} held back, from {l}")
                }
                (Operation::Batch { author, seq, .. }, Some(l)) => {
                    format!("batch {author} #{seq} refused, from {l}")
                }
                _ => r.op.describe(),
            };
            let retryable = entry.is_some_and(|p| p.addr.is_some())
                || matches!(
                    r.op,
                    Operation::FhirPush { .. }
                        | Operation::EmrLink { .. }
                        | Operation::EmrRecord { .. }
                );
            let last_success = match entry {
                Some(p) => {
                    Some(self.node.store.peer_state(&p.node_id)?.last_success).filter(|t| *t > 0)
                }
                None => None,
            };
            out.push(FailureView {
                id: r.op.id(),
                operation,
                peer: r.op.peer().map(|p| p.to_string()),
                reason: r.reason,
                attempts: r.attempts,
                last_success,
                next_retry: if retryable { r.next_retry } else { None },
                retryable,
                first_failed: r.first_failed,
                needs_attention: r.needs_attention,
                manual_retries: r.manual_retries,
            });
        }
        Ok(out)
    }

    fn retry(&self, id: &str) -> Result<ActionReport, DataError> {
        let rec = self
            .node
            .store
            .failure(id)?
            .ok_or_else(|| DataError::NotFound(format!("no failure {id:?}")))?;
        let dialled =
            rec.op.peer().and_then(|p| self.node.config.peer(&p)).filter(|e| e.addr.is_some());
        let runs_here = matches!(
            rec.op,
            Operation::FhirPush { .. } | Operation::EmrLink { .. } | Operation::EmrRecord { .. }
        );
        if dialled.is_none() && !runs_here {
            let why = match rec.op.peer().and_then(|p| self.node.config.peer(&p)) {
                Some(e) => {
                    format!("{} dials in to this node; it retries on its own schedule", e.label())
                }
                None => format!("{}: nothing to retry from here", rec.op.describe()),
            };
            return Err(DataError::Input(why));
        }
        let retried = self.handle.retry(id)?;
        let sessions: Vec<Value> = retried.sessions.iter().map(session_json).collect();
        let ok = retried.closed;
        let what = match sessions.is_empty() {
            true => retried.reason.unwrap_or_else(|| "delivered".to_string()),
            false => describe_sessions(&sessions),
        };
        let message = match ok {
            true => format!("retried, it works now: {what}"),
            false => format!("the retry failed too: {what}"),
        };
        Ok(ActionReport { ok, message, sessions })
    }

    fn conflicts(&self) -> Result<Vec<ConflictSummary>, DataError> {
        Ok(self.unsettled()?.iter().map(summary).collect())
    }

    fn conflict(&self, id: &str) -> Result<Conflict, DataError> {
        let c = self.registered(id)?;
        let names = self.names();
        Ok(Conflict {
            id: conflict_id(&c.entity, &c.path),
            entity: c.entity.to_string(),
            path: c.path.clone(),
            winner: c.winner,
            values: c
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| self.view_value(&names, i, &field_value(v)))
                .collect(),
        })
    }

    fn resolve(&self, id: &str, how: &Resolution) -> Result<ActionReport, DataError> {
        let registered = self.registered(id)?;
        let (entity, path) = (registered.entity, registered.path.clone());
        let chosen = match how {
            Resolution::Take(i) => match registered.values.get(*i) {
                Some(v) => field_value(v).value,
                None => {
                    return Err(DataError::Input(format!(
                        "there is no value {i}: this conflict has values 0 to {}",
                        registered.values.len().saturating_sub(1)
                    )));
                }
            },
            Resolution::Value(Value::Null) => {
                return Err(DataError::Input(
                    "null is not a value to keep; enter the value".into(),
                ));
            }
            Resolution::Value(v) => v.clone(),
        };
        let canonical = self.validated_value(&entity, &path, chosen)?;
        match self.node.resolve(&registered.id, super::Choice::Value(super::Json(canonical))) {
            Ok(_) => {}
            Err(NodeError::Input(m)) => return Err(DataError::Input(m)),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(entity = %entity, "conflict resolved by the operator");
        Ok(ActionReport {
            ok: true,
            message: format!(
                "resolved {path} of {entity}: one new local change, which closes the conflict on \
                 every node that receives it"
            ),
            sessions: Vec::new(),
        })
    }

    fn records(
        &self,
        ty: Option<EntityType>,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<RecordPage, DataError> {
        let limit = limit.clamp(1, RECORDS_PAGE_MAX);
        let ids = self.node.store.list(ty)?;
        let mut rest = ids.into_iter().filter(|id| after.is_none_or(|a| id > a));
        let records: Vec<String> = rest.by_ref().take(limit).map(|id| id.to_string()).collect();
        let next_after = match rest.next() {
            Some(_) => records.last().cloned(),
            None => None,
        };
        Ok(RecordPage { records, next_after })
    }

    fn record(&self, id: &EntityId) -> Result<RecordView, DataError> {
        let (record, _) = self.entity_of(id)?;
        let mut changes = self.node.store.history(id, HISTORY_CHANGES_MAX + 1)?.unwrap_or_default();
        let history_truncated = changes.len() > HISTORY_CHANGES_MAX;
        if history_truncated {
            changes.remove(0);
        }
        let names = self.names();
        let history = changes
            .into_iter()
            .map(|c| {
                let node =
                    c.author.as_deref().and_then(|a| a.split(':').next()).map(str::to_string);
                HistoryEntry {
                    hash: c.hash,
                    node_name: node.as_ref().and_then(|n| names.get(n).cloned()),
                    node,
                    author: c.author,
                    time: c.time,
                    edits: c
                        .edits
                        .into_iter()
                        .map(|e| HistoryEdit {
                            path: e.path,
                            action: e.action.into(),
                            value: e.value,
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(RecordView {
            id: id.to_string(),
            record,
            conflicts: self.unsettled()?.iter().filter(|c| c.entity == *id).map(summary).collect(),
            history,
            history_truncated,
        })
    }

    fn sync_now(&self, entity: Option<&EntityId>) -> Result<ActionReport, DataError> {
        if let Some(id) = entity {
            self.entity_of(id)?;
        }
        let sessions = self.sync_round(None)?;
        if sessions.is_empty() {
            return Ok(ActionReport {
                ok: true,
                message: "no peer to dial (children dial in to this node on their own schedule)"
                    .into(),
                sessions,
            });
        }
        let ok = sessions_ok(&sessions);
        let mut message = describe_sessions(&sessions);
        if let Some(id) = entity.filter(|_| ok) {
            message.push_str(&format!(
                ". {id}: carried by this round (batches travel in order, so a round carries every \
                 pending change)"
            ));
        }
        Ok(ActionReport { ok, message, sessions })
    }

    fn export_bundle(&self, peer: Option<NodeId>) -> Result<ExportedBundle, DataError> {
        let node = &self.node;
        let since = match peer {
            None => Vector::default(),
            Some(p) => self.known_vector(&p)?,
        };
        let file = tempfile::Builder::new()
            .prefix(".admin-export-")
            .suffix(".ssb")
            .tempfile_in(&node.dir)
            .map_err(internal)?
            .into_temp_path();
        let report = node.export(&file, &since, peer, |_, _| {})?;
        let name = match peer {
            Some(p) => format!("sitesync-for-{}.ssb", crate::id::short(&p.to_string())),
            None => format!("sitesync-{}-all.ssb", crate::id::short(&node.id().to_string())),
        };
        Ok(ExportedBundle {
            file,
            name,
            batches: report.batches,
            changes: report.changes,
            bytes: report.bytes,
        })
    }

    fn import_bundle(&self, path: &Path) -> Result<ImportSummary, DataError> {
        let r = match self.node.import(path, |_, _| {}) {
            Ok(r) => r,
            Err(NodeError::Bundle(e)) => {
                return Err(DataError::Input(format!("not a usable bundle: {e}")));
            }
            Err(e) => return Err(e.into()),
        };
        let a = &r.applied;
        let mut rejected: Vec<String> =
            a.rejected.iter().map(|x| format!("{} #{}: {}", x.author, x.seq, x.reason)).collect();
        rejected.extend(r.frame_errors.iter().cloned());
        let truncated = r.truncated.map(|(have, declared)| {
            format!(
                "the bundle is truncated ({have} of {declared} bytes); {} batches missing",
                r.missing_frames
            )
        });
        Ok(ImportSummary {
            ok: rejected.is_empty() && truncated.is_none(),
            exporter: r.exporter.map(|n| n.to_string()),
            frames: r.frames,
            applied_batches: a.applied_batches,
            applied_changes: a.applied_changes,
            already_present: a.present,
            waiting: a.waiting,
            rejected,
            truncated,
        })
    }
}

impl AdminView {
    /// What `peer` holds as last known: from its last session, else from its last bundle.
    fn known_vector(&self, peer: &NodeId) -> Result<Vector, DataError> {
        let state = self.node.store.peer_state(peer)?;
        if state.last_contact > 0 {
            return Ok(state.vector);
        }
        self.node.store.peer_vector(peer)?.ok_or_else(|| {
            DataError::Input(format!(
                "nothing is known about what {peer} holds yet: import a bundle from it first, \
                 or export everything"
            ))
        })
    }

    /// Puts `value` at `path` of the record's current content and validates the whole record
    /// against its schema; returns the value in canonical (stored) form.
    fn validated_value(
        &self,
        entity: &EntityId,
        path: &str,
        value: Value,
    ) -> Result<Value, DataError> {
        let (current, _) = self.entity_of(entity)?;
        let uid = entity.uuid;
        let mut body = crate::entity::validate(entity.ty, &current, uid)
            .map_err(|e| {
                DataError::Input(format!("the record does not validate as it stands: {e}"))
            })?
            .body;
        if !set_path(&mut body, path, value) {
            return Err(DataError::Internal(format!("{path} is not a field of {entity}")));
        }
        let output = crate::entity::to_output(entity.ty, &body);
        let checked = crate::entity::validate(entity.ty, &output, uid)
            .map_err(|e| DataError::Input(format!("that value does not fit the record: {e}")))?;
        get_path(&checked.body, path).cloned().ok_or_else(|| {
            DataError::Input(format!("that value does not fit the record: {path} would be removed"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_with_dotted_keys_resolve_to_the_longest_key() {
        let mut m =
            json!({"a.b": {"c": 1}, "a": {"b": {"c": 2}}}).as_object().cloned().expect("obj");
        assert_eq!(get_path(&m, "a.b.c"), Some(&json!(1)));
        assert!(set_path(&mut m, "a.b.c", json!(3)));
        assert_eq!(m["a.b"]["c"], json!(3));
        assert!(!set_path(&mut m, "x.y", json!(3)));
    }

    #[test]
    fn conflict_ids_round_trip() {
        let id: EntityId = "patient/5b6f0e0e-2b1d-4c2e-9a57-3c1d1f0b9a01".parse().expect("id");
        let cid = conflict_id(&id, "names.x:y.familyName");
        assert_eq!(parse_conflict_id(&cid).expect("parses"), (id, "names.x:y.familyName".into()));
        assert!(parse_conflict_id("nope").is_err());
    }
}
