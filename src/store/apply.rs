//! Applying received batches: sequencing against the vector, durable receipt, and
//! materializing the touched documents, all in one write transaction.
//!
//! Sequencing rules (DESIGN.md "Changes, batches and the replication log"): a batch is applied
//! only as the next seq of its author and only if its `prev` is the hash of the batch held
//! before it; an earlier seq is "already present" when identical and a fork otherwise; a later
//! seq waits in `PENDING` until the gap fills. Documents are materialized on scoped worker
//! threads (Automerge's apply is the hot path), then written back in the same transaction.

use std::collections::{BTreeMap, HashMap, VecDeque};

use automerge::Change;
use redb::ReadableTable;

use super::tables::*;
use super::{
    Store, StoreError, append_event, corrupt, decode_batch, decode_doc, encode, encode_batch,
};
use crate::batch::{Trust, VerifiedBatch};
use crate::entity::doc::EntityDoc;
use crate::event::{Event, EventKind};
use crate::id::{AuthorId, BodyHash, EntityId, Incarnation, NodeId};

/// How far ahead of the held seq a batch may be and still be kept to wait for the gap.
pub const PENDING_AHEAD_MAX: u64 = 1_000_000;

/// A batch refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub author: AuthorId,
    pub seq: u64,
    pub reason: String,
}

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied_batches: u64,
    pub applied_changes: u64,
    /// Batches already held (identical).
    pub present: u64,
    /// Batches of this apply stored to wait for an earlier seq.
    pub waiting: u64,
    /// Batches that had been waiting (received earlier) and were taken out of waiting now
    /// that the gap filled; counted in `applied_batches` too when they apply.
    pub released: u64,
    pub rejected: Vec<Rejection>,
    /// Entities whose accepted changes Automerge refused to merge.
    pub unmergeable: Vec<(EntityId, String)>,
    /// Set when this node's own log was found ahead of or forked from its store (a restored
    /// backup): the store moved to this new author before any further local write.
    pub reincarnated: Option<AuthorId>,
}

/// The inputs of the apply hot path beyond the batches themselves.
pub struct ApplyContext<'a> {
    pub trust: &'a dyn Trust,
    /// The node the batches came from, when known (for the report).
    pub from: Option<NodeId>,
    /// Batches refused before they reached the store (verification), reported in the same
    /// transaction.
    pub refused: Vec<Rejection>,
    /// Used if this node's own log turns out to be ahead of its store.
    pub fresh_incarnation: Incarnation,
    pub time: i64,
    /// Worker threads for materializing documents.
    pub threads: usize,
}

struct Work {
    key: String,
    record: DocRecord,
    changes: Vec<(BodyHash, Change)>,
}

impl Store {
    /// Applies verified batches in one write transaction (see the module docs for the rules).
    pub fn apply(
        &self,
        incoming: Vec<VerifiedBatch>,
        ctx: ApplyContext<'_>,
    ) -> Result<ApplyReport, StoreError> {
        let own = self.author();
        let mut report = ApplyReport { rejected: ctx.refused, ..ApplyReport::default() };
        let tx = self.db.begin_write()?;
        let mut touched: BTreeMap<EntityId, Vec<(BodyHash, Change)>> = BTreeMap::new();
        let mut own_log_diverged = false;
        {
            let mut vector = tx.open_table(VECTOR)?;
            let mut batches = tx.open_table(BATCHES)?;
            let mut bodies = tx.open_table(BODIES)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut held: HashMap<AuthorId, u64> = HashMap::new();
            let mut queue: VecDeque<VerifiedBatch> = incoming.into();
            while let Some(vb) = queue.pop_front() {
                let (author, seq) = (vb.signed.author(), vb.signed.seq());
                let actor = author.actor_bytes();
                let top = match held.get(&author) {
                    Some(s) => *s,
                    None => vector.get(&actor)?.map_or(0, |v| v.value()),
                };
                let reject = |reason: String| Rejection { author, seq, reason };
                if seq <= top {
                    let stored = batches
                        .get((&actor, seq))?
                        .ok_or_else(|| corrupt(format!("batch {author} #{seq}"), "missing"))?;
                    if decode_batch(stored.value())?.0 == vb.hash {
                        report.present += 1;
                    } else {
                        own_log_diverged |= author == own;
                        report.rejected.push(reject(format!(
                            "fork: differs from the batch #{seq} already held for this author \
                             (its node's store was probably restored from a backup)"
                        )));
                    }
                    continue;
                }
                if seq > top + 1 {
                    if seq - top > PENDING_AHEAD_MAX {
                        report
                            .rejected
                            .push(reject(format!("seq is {} ahead of the held #{top}", seq - top)));
                    } else {
                        let bodies =
                            vb.bodies.into_iter().map(serde_bytes::ByteBuf::from).collect();
                        let rec = PendingBatch { signed: vb.signed, bodies };
                        pending.insert((&actor, seq), encode(&rec).as_slice())?;
                        report.waiting += 1;
                    }
                    continue;
                }
                if seq > 1 {
                    let stored = batches.get((&actor, seq - 1))?.ok_or_else(|| {
                        corrupt(format!("batch {author} #{}", seq - 1), "missing")
                    })?;
                    if Some(decode_batch(stored.value())?.0) != vb.signed.batch.prev {
                        report.rejected.push(reject(format!(
                            "prev does not match the held batch #{}",
                            seq - 1
                        )));
                        continue;
                    }
                }
                own_log_diverged |= author == own;
                batches.insert((&actor, seq), encode_batch(&vb.hash, &vb.signed).as_slice())?;
                vector.insert(&actor, seq)?;
                held.insert(author, seq);
                report.applied_batches += 1;
                report.applied_changes += vb.changes.len() as u64;
                for ((r, body), change) in
                    vb.signed.batch.changes.iter().zip(&vb.bodies).zip(vb.changes)
                {
                    bodies.insert(&r.body.0, body.as_slice())?;
                    touched.entry(r.entity).or_default().push((r.body, change));
                }
                let next = pending.remove((&actor, seq + 1))?.map(|v| v.value().to_vec());
                if let Some(bytes) = next {
                    let rec: PendingBatch =
                        postcard::from_bytes(&bytes).map_err(|e| corrupt("pending batch", e))?;
                    let (a, s) = (rec.signed.author(), rec.signed.seq());
                    let bodies =
                        rec.bodies.into_iter().map(serde_bytes::ByteBuf::into_vec).collect();
                    match rec.signed.verify(bodies, ctx.trust) {
                        Ok(vb) => {
                            report.released += 1;
                            queue.push_front(vb);
                        }
                        Err(e) => report.rejected.push(Rejection {
                            author: a,
                            seq: s,
                            reason: e.to_string(),
                        }),
                    }
                }
            }
        }
        self.materialize(&tx, touched, ctx.threads, &mut report)?;
        if own_log_diverged {
            let fresh = AuthorId { node: self.node, incarnation: ctx.fresh_incarnation };
            tx.open_table(META)?
                .insert("incarnation", fresh.incarnation.0.to_be_bytes().as_slice())?;
            let reason =
                "this node's own log was found ahead of or forked from its store".to_string();
            let kind =
                EventKind::Incarnation { old: own.incarnation, new: fresh.incarnation, reason };
            append_event(&tx, Event { time: ctx.time, kind })?;
            report.reincarnated = Some(fresh);
        }
        record_report(&tx, &report, ctx.from, ctx.time)?;
        tx.commit()?;
        if let Some(author) = report.reincarnated {
            self.set_author(author);
        }
        Ok(report)
    }

    fn materialize(
        &self,
        tx: &redb::WriteTransaction,
        touched: BTreeMap<EntityId, Vec<(BodyHash, Change)>>,
        threads: usize,
        report: &mut ApplyReport,
    ) -> Result<(), StoreError> {
        let mut docs = tx.open_table(DOCS)?;
        let bodies = tx.open_table(BODIES)?;
        let mut work = Vec::with_capacity(touched.len());
        for (id, mut changes) in touched {
            let key = id.key();
            let record = match docs.get(key.as_str())? {
                Some(v) => decode_doc(&key, v.value())?,
                None => DocRecord::default(),
            };
            for hash in &record.queued {
                let body = bodies
                    .get(&hash.0)?
                    .ok_or_else(|| corrupt(format!("queued body {hash}"), "missing"))?;
                let change = Change::from_bytes(body.value().to_vec())
                    .map_err(|e| corrupt(format!("body {hash}"), e))?;
                changes.push((*hash, change));
            }
            work.push(Work { key, record, changes });
        }
        let results = run_parallel(work, threads.max(1))?;
        for (key, result) in results {
            match result {
                Ok(record) => {
                    docs.insert(key.as_str(), encode(&record).as_slice())?;
                }
                Err(reason) => {
                    let entity = key.parse().map_err(|e| corrupt(format!("doc key {key:?}"), e))?;
                    report.unmergeable.push((entity, reason));
                }
            }
        }
        Ok(())
    }
}

type Outcome = (String, Result<DocRecord, String>);

fn run_parallel(work: Vec<Work>, threads: usize) -> Result<Vec<Outcome>, StoreError> {
    if threads == 1 || work.len() < 64 {
        return Ok(work.into_iter().map(materialize_one).collect());
    }
    let per = work.len().div_ceil(threads);
    let mut groups: Vec<Vec<Work>> = Vec::with_capacity(threads);
    let mut rest = work.into_iter();
    for _ in 0..threads {
        groups.push(rest.by_ref().take(per).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| scope.spawn(move || g.into_iter().map(materialize_one).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            // materialize_one catches panics per document, so a worker cannot die mid-way.
            let part = h.join().map_err(|_| corrupt("materialize worker", "panicked"))?;
            out.extend(part);
        }
        Ok(out)
    })
}

/// Applies one document's changes. A panic inside Automerge on peer-supplied changes becomes an
/// error for this document, never a crash of the node.
fn materialize_one(work: Work) -> Outcome {
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
        Ok(DocRecord { heads, queued, doc: saved })
    }))
    .unwrap_or_else(|_| Err("automerge panicked while merging".to_string()));
    (key, result)
}

fn record_report(
    tx: &redb::WriteTransaction,
    r: &ApplyReport,
    from: Option<NodeId>,
    time: i64,
) -> Result<(), StoreError> {
    for rej in &r.rejected {
        let kind =
            EventKind::Rejected { author: rej.author, seq: rej.seq, reason: rej.reason.clone() };
        append_event(tx, Event { time, kind })?;
    }
    for (entity, reason) in &r.unmergeable {
        let kind = EventKind::Unmergeable { entity: *entity, reason: reason.clone() };
        append_event(tx, Event { time, kind })?;
    }
    let kind = EventKind::Received {
        from,
        applied_batches: r.applied_batches,
        applied_changes: r.applied_changes,
        present: r.present,
        waiting: r.waiting,
        rejected: r.rejected.len() as u64,
    };
    append_event(tx, Event { time, kind })
}
