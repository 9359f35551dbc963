//! Events: the durable report of what a node did, written in the same transaction as the work
//! it describes. No patient data: ids, counts, bytes, hashes and reasons only.

use serde::{Deserialize, Serialize};

use crate::id::{AuthorId, EntityId, Incarnation, NodeId};

/// One entry of the node's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: i64,
    pub kind: EventKind,
}

/// What happened. New variants go at the end (postcard encodes the variant index).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// Local records written and sealed.
    LocalWrite { records: u64, changes: u64, batches: u64 },
    /// Batches received (from a bundle, later from a peer).
    Received {
        from: Option<NodeId>,
        applied_batches: u64,
        applied_changes: u64,
        present: u64,
        waiting: u64,
        rejected: u64,
    },
    /// One batch refused, with the reason.
    Rejected { author: AuthorId, seq: u64, reason: String },
    /// A bundle written for a peer.
    Exported { peer: Option<NodeId>, batches: u64, changes: u64, bytes: u64 },
    /// An accepted change could not be merged into its document (kept, reported).
    Unmergeable { entity: EntityId, reason: String },
    /// The store moved to a new incarnation.
    Incarnation { old: Incarnation, new: Incarnation, reason: String },
    /// A sync session with a peer ended.
    Session {
        peer: NodeId,
        outcome: String,
        complete: bool,
        batches_sent: u64,
        batches_received: u64,
        bytes_sent: u64,
        bytes_received: u64,
        millis: u64,
    },
    /// The configuration changed (peers, trust, network, roster), in words without secrets.
    Config { change: String },
    /// A merge left a field with concurrent values.
    ConflictDetected { id: String, entity: EntityId, path: String, values: u64 },
    /// A conflict's values were superseded by a later change (resolved here or elsewhere).
    ConflictClosed { id: String, entity: EntityId, path: String },
    /// An administrator resolved a conflict on this node (the change travels like any other).
    ConflictResolved { id: String, entity: EntityId, path: String, how: String },
    /// A child's audit entries did not fit the copy held here (its log was rewritten).
    AuditCopy { origin: NodeId, problem: String },
    /// A failed operation changed state (`store/failures.rs`): `id` is what `sitesync retry`
    /// takes.
    Failure { id: String, what: String, change: FailureChange, attempts: u32, reason: String },
    /// A FHIR push run to a configured target: resources delivered, created and updated,
    /// failed (refused, or records that cannot be valid FHIR), the last HTTP status that was
    /// not 2xx and the server's OperationOutcome text (ids and reasons, no resource content).
    FhirPush {
        target: String,
        sent: u64,
        created: u64,
        updated: u64,
        failed: u64,
        status: Option<u16>,
        outcome_text: String,
    },
    /// Bodies withheld from a child earlier, re-sent now that their records are inside its
    /// scope, and acknowledged by the child.
    BodiesResent { to: NodeId, bodies: u64 },
    /// Bodies the parent had withheld, received later: stored, held already (another path
    /// brought them), refused (never withheld here: not stored).
    BodiesReceived { from: NodeId, stored: u64, held: u64, refused: u64 },
    /// A run of the bridge to an EMR (counts only, never patient data): resources read,
    /// records changed here by them, resources written into the EMR, resources that failed,
    /// and why the run stopped early.
    EmrRun {
        emr: String,
        read: u64,
        records_in: u64,
        written: u64,
        failed: u64,
        error: Option<String>,
    },
}

/// How a failure record changed. New variants go at the end (postcard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureChange {
    /// The first failed attempt.
    Failed,
    /// An automatic retry failed too (logged at attempts 2, 4, 8, … and when the reason changes).
    RetryFailed,
    /// The attempts reached the give-up threshold: an administrator should look.
    NeedsAttention,
    /// Someone asked for a retry by hand (`sitesync retry`, the web view).
    ManualRetry,
    /// An attempt succeeded; the failure is closed.
    Recovered,
}

impl FailureChange {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureChange::Failed => "failed",
            FailureChange::RetryFailed => "retry failed",
            FailureChange::NeedsAttention => "needs attention",
            FailureChange::ManualRetry => "retried by hand",
            FailureChange::Recovered => "recovered",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::LocalWrite { records, changes, batches } => {
                write!(f, "local write: {records} records, {changes} changes, {batches} batches")
            }
            EventKind::Received {
                from,
                applied_batches,
                applied_changes,
                present,
                waiting,
                rejected,
            } => {
                let from = from.map_or("unknown".to_string(), |n| n.to_string());
                write!(
                    f,
                    "received from {from}: applied {applied_batches} batches ({applied_changes} \
                     changes), {present} already present, {waiting} waiting, {rejected} rejected"
                )
            }
            EventKind::Rejected { author, seq, reason } => {
                write!(f, "rejected batch {author} #{seq}: {reason}")
            }
            EventKind::Exported { peer, batches, changes, bytes } => {
                let peer = peer.map_or("any node".to_string(), |n| n.to_string());
                write!(
                    f,
                    "exported for {peer}: {batches} batches, {changes} changes, {bytes} bytes"
                )
            }
            EventKind::Unmergeable { entity, reason } => {
                write!(f, "change to {entity} could not be merged: {reason}")
            }
            EventKind::Incarnation { old, new, reason } => {
                write!(f, "incarnation {old} -> {new}: {reason}")
            }
            EventKind::Session {
                peer,
                outcome,
                complete: _,
                batches_sent,
                batches_received,
                bytes_sent,
                bytes_received,
                millis,
            } => write!(
                f,
                "session with {peer}: {outcome}; sent {batches_sent} batches ({bytes_sent} bytes), \
                 received {batches_received} batches ({bytes_received} bytes), {millis} ms"
            ),
            EventKind::Config { change } => write!(f, "config: {change}"),
            EventKind::ConflictDetected { id, entity, path, values } => {
                write!(f, "conflict {id} on {entity} {path}: {values} concurrent values")
            }
            EventKind::ConflictClosed { id, entity, path } => {
                write!(f, "conflict {id} on {entity} {path} closed (values superseded)")
            }
            EventKind::ConflictResolved { id, entity, path, how } => {
                write!(f, "conflict {id} on {entity} {path} resolved here: {how}")
            }
            EventKind::AuditCopy { origin, problem } => {
                write!(f, "audit log of {origin}: {problem}")
            }
            EventKind::Failure { id, what, change, attempts, reason } => match change {
                FailureChange::Recovered => {
                    write!(f, "failure {id} ({what}) recovered after {attempts} failed attempts")
                }
                FailureChange::ManualRetry => {
                    write!(f, "failure {id} ({what}) retried by hand after {attempts} attempts")
                }
                _ => write!(
                    f,
                    "failure {id} ({what}) {}: attempt {attempts}: {reason}",
                    change.as_str()
                ),
            },
            EventKind::FhirPush {
                target,
                sent,
                created,
                updated,
                failed,
                status,
                outcome_text,
            } => {
                write!(
                    f,
                    "fhir push to {target}: sent {sent} ({created} created, {updated} updated), \
                     {failed} failed"
                )?;
                if let Some(s) = status {
                    write!(f, ", last HTTP status {s}")?;
                }
                write!(f, ": {outcome_text}")
            }
            EventKind::BodiesResent { to, bodies } => {
                write!(f, "re-sent {bodies} withheld bodies to {to} (now inside its scope)")
            }
            EventKind::BodiesReceived { from, stored, held, refused } => write!(
                f,
                "received withheld bodies from {from}: {stored} stored, {held} already held, \
                 {refused} refused"
            ),
            EventKind::EmrRun { emr, read, records_in, written, failed, error } => {
                write!(
                    f,
                    "emr {emr}: read {read} resources, {records_in} records changed here, \
                     {written} written into the EMR, {failed} failed"
                )?;
                match error {
                    Some(e) => write!(f, "; stopped: {e}"),
                    None => Ok(()),
                }
            }
        }
    }
}
