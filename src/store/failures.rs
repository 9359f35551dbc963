//! Failures as records: every operation whose last attempt failed, with what is needed to retry
//! it, how often it failed, when it retries next, and whether it needs an administrator.
//!
//! One record per operation (`failures-1`, keyed by [`Operation::id`]), upserted by each failed
//! attempt and removed by the first success, in the transaction that records the attempt in the
//! audit log. The audit log gets the first failure, a changed reason, the retries numbered 2, 4,
//! 8, 16, … (a parent unreachable for a week is not 2,000 entries), crossing the give-up
//! threshold, each retry by hand, and the recovery.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::tables::FAILURES;
use super::{Store, StoreError, append_event, corrupt, encode};
use crate::event::{Event, EventKind, FailureChange};
use crate::id::{AuthorId, NodeId};

/// Most failure records kept. Beyond it, refused batches are still logged but not kept as
/// records (a hostile peer must not grow the table without bound); sync and push records,
/// one per configured peer or target, are always kept.
pub const FAILURES_MAX: u64 = 10_000;

/// Hex characters of a node id or hash in an operation's id and description. Ids key
/// `failures-1` and appear in audit entries and scripts, so this never changes (it is not
/// [`crate::id::short`], which only shortens ids for people).
const OP_ID_CHARS: usize = 16;

/// What failed, with what is needed to run it again. New variants go at the end (postcard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// A sync session with a configured peer (retry: sync with it now).
    Sync { peer: NodeId },
    /// A batch refused on receipt (retry: sync again with the node it came from, which offers it
    /// again; the record closes once the batch is held).
    Batch { from: Option<NodeId>, author: AuthorId, seq: u64 },
    /// A push to a configured FHIR target (retry: push it now).
    FhirPush { target: String },
    /// A record a child wrote outside the entity types it may push, held back here: its batch
    /// was applied without that record's body. Nothing to retry: the record stays with the
    /// child (widening the child's `types` lets its later records through).
    HeldBack { from: NodeId, entity: crate::id::EntityId },
    /// A run of the bridge to an EMR that stopped early: the EMR unreachable or answering
    /// errors (retry: run the bridge now).
    EmrLink { emr: String },
    /// One resource the bridge could not carry between the EMR and this node (retry: run the
    /// bridge now; each run tries it again, and the record closes when it goes through).
    EmrRecord { emr: String, resource: String },
}

impl Operation {
    /// A short stable id, the same on every attempt: `sync-<node id prefix>`,
    /// `batch-<hash prefix>`, `push-<target>`.
    pub fn id(&self) -> String {
        match self {
            Operation::Sync { peer } => format!("sync-{}", &peer.to_string()[..OP_ID_CHARS]),
            Operation::Batch { author, seq, .. } => {
                let mut h = blake3::Hasher::new();
                h.update(author.to_string().as_bytes());
                h.update(&seq.to_be_bytes());
                format!("batch-{}", &h.finalize().to_hex()[..OP_ID_CHARS])
            }
            Operation::FhirPush { target } => format!("push-{target}"),
            Operation::HeldBack { entity, .. } => {
                let h = blake3::hash(entity.key().as_bytes());
                format!("record-{}", &h.to_hex()[..OP_ID_CHARS])
            }
            Operation::EmrLink { emr } => format!("emr-{emr}"),
            Operation::EmrRecord { emr, resource } => {
                let h = blake3::hash(format!("{emr}\u{0}{resource}").as_bytes());
                format!("emr-record-{}", &h.to_hex()[..OP_ID_CHARS])
            }
        }
    }

    /// What failed, in an operator's words (ids, no patient data).
    pub fn describe(&self) -> String {
        match self {
            Operation::Sync { peer } => format!("sync with {}", &peer.to_string()[..OP_ID_CHARS]),
            Operation::Batch { from, author, seq } => {
                let from = from
                    .map_or("a bundle".to_string(), |n| n.to_string()[..OP_ID_CHARS].to_string());
                format!("batch {author} #{seq} from {from}")
            }
            Operation::FhirPush { target } => format!("FHIR push to {target}"),
            Operation::HeldBack { from, entity } => {
                format!("record {entity} from {} held back", &from.to_string()[..OP_ID_CHARS])
            }
            Operation::EmrLink { emr } => format!("EMR bridge to {emr}"),
            Operation::EmrRecord { emr, resource } => format!("{resource} with EMR {emr}"),
        }
    }

    /// The peer a retry syncs with, if the retry is a sync.
    pub fn peer(&self) -> Option<NodeId> {
        match self {
            Operation::Sync { peer } => Some(*peer),
            Operation::Batch { from, .. } => *from,
            Operation::FhirPush { .. } => None,
            Operation::HeldBack { from, .. } => Some(*from),
            Operation::EmrLink { .. } | Operation::EmrRecord { .. } => None,
        }
    }
}

/// One failed operation. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub op: Operation,
    /// Why the last attempt failed.
    pub reason: String,
    pub first_failed: i64,
    pub last_failed: i64,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When the next automatic attempt runs, if one is scheduled.
    pub next_retry: Option<i64>,
    /// Set once `attempts` reached the give-up threshold (`[failures] give_up_after`).
    pub needs_attention: bool,
    /// Retries run by hand since the first failure.
    pub manual_retries: u32,
}

/// How one attempt at an operation ended.
pub struct Attempt<'a> {
    pub op: &'a Operation,
    /// `Err(reason)` when it failed.
    pub result: Result<(), &'a str>,
    pub time: i64,
    pub next_retry: Option<i64>,
    /// Attempts after which the operation needs attention.
    pub give_up_after: u32,
}

fn decode(v: &[u8]) -> Result<FailureRecord, StoreError> {
    postcard::from_bytes(v).map_err(|e| corrupt("failure record", e))
}

fn log(
    tx: &redb::WriteTransaction,
    time: i64,
    rec: &FailureRecord,
    change: FailureChange,
) -> Result<(), StoreError> {
    let kind = EventKind::Failure {
        id: rec.op.id(),
        what: rec.op.describe(),
        change,
        attempts: rec.attempts,
        reason: rec.reason.clone(),
    };
    append_event(tx, Event { time, kind })
}

/// Records one attempt inside `tx`. Returns the record after it (`None`: no failure stands).
pub(crate) fn attempt(
    tx: &redb::WriteTransaction,
    a: &Attempt<'_>,
) -> Result<Option<FailureRecord>, StoreError> {
    let id = a.op.id();
    let mut table = tx.open_table(FAILURES)?;
    let old = table.get(id.as_str())?.map(|v| decode(v.value())).transpose()?;
    match (a.result, old) {
        (Ok(()), None) => Ok(None),
        (Ok(()), Some(rec)) => {
            table.remove(id.as_str())?;
            drop(table);
            log(tx, a.time, &rec, FailureChange::Recovered)?;
            Ok(None)
        }
        (Err(reason), old) => {
            if old.is_none()
                && matches!(a.op, Operation::Batch { .. })
                && table.len()? >= FAILURES_MAX
            {
                return Ok(None);
            }
            let first = old.is_none();
            let mut rec = old.unwrap_or(FailureRecord {
                op: a.op.clone(),
                reason: String::new(),
                first_failed: a.time,
                last_failed: a.time,
                attempts: 0,
                next_retry: None,
                needs_attention: false,
                manual_retries: 0,
            });
            let reason_changed = rec.reason != reason;
            rec.op = a.op.clone();
            rec.reason = reason.to_string();
            rec.last_failed = a.time;
            rec.attempts = rec.attempts.saturating_add(1);
            rec.next_retry = a.next_retry;
            let give_up = !rec.needs_attention && rec.attempts >= a.give_up_after.max(1);
            rec.needs_attention |= give_up;
            table.insert(id.as_str(), encode(&rec).as_slice())?;
            drop(table);
            if first {
                log(tx, a.time, &rec, FailureChange::Failed)?;
            } else if reason_changed || rec.attempts.is_power_of_two() {
                log(tx, a.time, &rec, FailureChange::RetryFailed)?;
            }
            if give_up {
                log(tx, a.time, &rec, FailureChange::NeedsAttention)?;
            }
            Ok(Some(rec))
        }
    }
}

impl Store {
    /// Records one attempt at `op`: a failure upserts its record, a success removes it.
    pub fn record_attempt(&self, a: &Attempt<'_>) -> Result<Option<FailureRecord>, StoreError> {
        let tx = self.db.begin_write()?;
        let rec = attempt(&tx, a)?;
        tx.commit()?;
        Ok(rec)
    }

    /// Notes a retry asked for by hand (audit entry, counter). `None` if no such failure.
    pub fn record_manual_retry(
        &self,
        id: &str,
        time: i64,
    ) -> Result<Option<FailureRecord>, StoreError> {
        let tx = self.db.begin_write()?;
        let rec = {
            let mut table = tx.open_table(FAILURES)?;
            let Some(mut rec) = table.get(id)?.map(|v| decode(v.value())).transpose()? else {
                return Ok(None);
            };
            rec.manual_retries = rec.manual_retries.saturating_add(1);
            table.insert(id, encode(&rec).as_slice())?;
            rec
        };
        log(&tx, time, &rec, FailureChange::ManualRetry)?;
        tx.commit()?;
        Ok(Some(rec))
    }

    /// Sets when the next automatic attempt of a standing failure runs (nothing if none stands).
    pub fn set_failure_next_retry(&self, id: &str, next: Option<i64>) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(FAILURES)?;
            let rec = table.get(id)?.map(|v| decode(v.value())).transpose()?;
            if let Some(mut rec) = rec {
                rec.next_retry = next;
                table.insert(id, encode(&rec).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One failure by id.
    pub fn failure(&self, id: &str) -> Result<Option<FailureRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(FAILURES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        table.get(id)?.map(|v| decode(v.value())).transpose()
    }

    /// Every standing failure, oldest first. Refused batches that this node holds by now (they
    /// came again, or by another path) are closed here, as recovered.
    pub fn failures(&self, time: i64) -> Result<Vec<FailureRecord>, StoreError> {
        let vector = self.vector()?;
        let (held, standing): (Vec<_>, Vec<_>) =
            self.failures_read()?.into_iter().partition(|r| match &r.op {
                Operation::Batch { author, seq, .. } => vector.get(author) >= *seq,
                _ => false,
            });
        if !held.is_empty() {
            let tx = self.db.begin_write()?;
            for rec in &held {
                tx.open_table(FAILURES)?.remove(rec.op.id().as_str())?;
                log(&tx, time, rec, FailureChange::Recovered)?;
            }
            tx.commit()?;
        }
        Ok(standing)
    }

    /// Standing failures without writing anything (for read-only views).
    pub fn failures_read(&self) -> Result<Vec<FailureRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(FAILURES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = table.iter()?.map(|i| decode(i?.1.value())).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|r| (r.first_failed, r.op.id()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let peer = NodeId([7; 32]);
        let a = Operation::Sync { peer };
        assert_eq!(a.id(), Operation::Sync { peer }.id());
        assert!(a.id().starts_with("sync-0707"));
        let b = Operation::FhirPush { target: "shr".into() };
        assert_eq!(b.id(), "push-shr");
        assert_ne!(a.id(), b.id());
    }
}
