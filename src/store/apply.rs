//! Applying received batches: sequencing against the vector, durable receipt, and
//! materializing the touched documents, all in one write transaction.
//!
//! Sequencing rules (DESIGN.md "Changes, batches and the replication log"): a batch is applied
//! only as the next seq of its author and only if its `prev` is the hash of the batch held
//! before it; an earlier seq is "already present" when identical and a fork otherwise; a later
//! seq waits in `PENDING` until the gap fills. Documents are materialized on scoped worker
//! threads (Automerge's apply is the hot path), then written back in the same transaction.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use automerge::Change;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::tables::*;
use super::{
    Store, StoreError, append_event, corrupt, decode_batch, decode_doc, encode, encode_batch,
};
use crate::batch::{BatchHash, Trust, VerifiedBatch};
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

impl ApplyReport {
    /// Adds the counts of a later apply to these.
    pub fn add(&mut self, r: ApplyReport) {
        self.applied_batches += r.applied_batches;
        self.applied_changes += r.applied_changes;
        self.present += r.present;
        self.waiting += r.waiting;
        self.released += r.released;
        self.rejected.extend(r.rejected);
        self.unmergeable.extend(r.unmergeable);
        self.reincarnated = r.reincarnated.or(self.reincarnated);
    }
}

/// What one receipt transaction did, the authors whose waiting batches it left for the next,
/// and the `(author, seq)` of the batches it stored to wait.
type Receipt = (ApplyReport, Vec<AuthorId>, Vec<(AuthorId, u64)>);

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
    /// Worker threads for merging documents.
    pub threads: usize,
    /// Refusals of one batch after which its failure record needs attention.
    pub give_up_after: u32,
    /// Most changes and body bytes taken out of waiting (`PENDING`) in one transaction; when a
    /// long gap fills, the rest follow in further transactions (memory stays bounded).
    pub promote_max: (usize, usize),
}

struct Work {
    key: String,
    record: DocRecord,
    changes: Vec<(BodyHash, Change)>,
}

/// Where an accepted batch comes from: this call's input or the pending table.
#[derive(Clone, Copy)]
enum Src {
    Incoming(usize),
    Promoted(usize),
}

/// The read-only outcome of sequencing: what would be written.
#[derive(Default)]
struct Plan {
    accepted: Vec<Src>,
    promoted: Vec<VerifiedBatch>,
    to_pending: Vec<(AuthorId, u64, Vec<u8>)>,
    from_pending: Vec<(AuthorId, u64)>,
    present: u64,
    waiting: u64,
    rejected: Vec<Rejection>,
    own_log_diverged: bool,
    /// Authors whose next waiting batch was left for the next transaction (`promote_max`).
    stalled: Vec<AuthorId>,
}

impl Plan {
    fn batch<'a>(&'a self, incoming: &'a [VerifiedBatch], src: Src) -> &'a VerifiedBatch {
        match src {
            Src::Incoming(i) => &incoming[i],
            Src::Promoted(i) => &self.promoted[i],
        }
    }
}

impl Store {
    /// Durably receives verified batches in one write transaction: sequencing (see the module
    /// docs), bodies, batches, vector, pending batches, and the touched entities marked dirty.
    /// Documents are merged later, once per entity, by [`Store::merge_dirty`].
    ///
    /// Batches that waited for a gap this receipt fills are applied with it, up to
    /// `ctx.promote_max` per transaction; the rest follow in further transactions before this
    /// returns, each durable on its own.
    pub fn apply(
        &self,
        incoming: Vec<VerifiedBatch>,
        mut ctx: ApplyContext<'_>,
    ) -> Result<ApplyReport, StoreError> {
        let refused = std::mem::take(&mut ctx.refused);
        let (mut report, stalled, parked) = self.receive_once(&incoming, &ctx, refused, &[])?;
        if !stalled.is_empty() {
            // Each further transaction takes at least one batch out of waiting: this ends.
            report.add(self.promote_ready(&stalled, ctx)?);
            // Batches of this call parked behind the bound may have been applied since.
            let tx = self.db.begin_read()?;
            let pending = tx.open_table(PENDING)?;
            let mut still = 0;
            for (author, seq) in parked {
                still += u64::from(pending.get((&author.actor_bytes(), seq))?.is_some());
            }
            report.waiting = still;
        }
        Ok(report)
    }

    /// Authors whose next batch waits in `PENDING` although the gap before it is filled: a
    /// crash between the transactions of a long gap's promotion leaves them so.
    pub fn ready_pending(&self) -> Result<Vec<AuthorId>, StoreError> {
        let tx = self.db.begin_read()?;
        let pending = match tx.open_table(PENDING) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            t => t?,
        };
        if pending.is_empty()? {
            return Ok(Vec::new());
        }
        // A seq 1 never waits, so an author with a waiting batch has a held one: look up the
        // seq after each author's top.
        let vector = tx.open_table(VECTOR)?;
        let mut ready = Vec::new();
        for item in vector.iter()? {
            let (actor, top) = item?;
            let actor = *actor.value();
            if pending.get((&actor, top.value() + 1))?.is_some() {
                ready.push(
                    AuthorId::from_actor_bytes(&actor)
                        .ok_or_else(|| corrupt("vector key", "bad actor"))?,
                );
            }
        }
        Ok(ready)
    }

    /// Applies the waiting batches of `authors` whose gap is filled (see
    /// [`Store::ready_pending`]), in transactions bounded by `ctx.promote_max`.
    pub fn promote_ready(
        &self,
        authors: &[AuthorId],
        ctx: ApplyContext<'_>,
    ) -> Result<ApplyReport, StoreError> {
        let mut report = ApplyReport::default();
        let mut stalled = authors.to_vec();
        while !stalled.is_empty() {
            let (r, s, _) = self.receive_once(&[], &ctx, Vec::new(), &stalled)?;
            report.add(r);
            stalled = s;
            crate::failpoint("promotion-step");
        }
        Ok(report)
    }

    /// One receipt transaction; returns its report, the authors whose waiting batches are left
    /// for the next, and the batches of `incoming` it stored to wait.
    fn receive_once(
        &self,
        incoming: &[VerifiedBatch],
        ctx: &ApplyContext<'_>,
        refused: Vec<Rejection>,
        resume: &[AuthorId],
    ) -> Result<Receipt, StoreError> {
        let own = self.author();
        let tx = self.db.begin_write()?;
        let plan = sequence(&tx, incoming, ctx.trust, own, resume, ctx.promote_max)?;
        let mut report = ApplyReport {
            present: plan.present,
            waiting: plan.waiting,
            released: plan.promoted.len() as u64,
            ..ApplyReport::default()
        };
        report.rejected = refused;
        report.rejected.extend(plan.rejected.iter().cloned());
        write_plan(&tx, &plan, incoming, &mut report)?;
        // Rosters decide trust for what comes next: merge them at once (they are tiny).
        let mut rosters: Vec<String> = Vec::new();
        for &src in &plan.accepted {
            for c in &plan.batch(incoming, src).signed.batch.changes {
                if c.entity.ty == crate::id::EntityType::Roster
                    && !rosters.contains(&c.entity.key())
                {
                    rosters.push(c.entity.key());
                }
            }
        }
        if !rosters.is_empty() {
            let merged = merge_keys(&tx, &rosters, 1, ctx.time)?;
            for (entity, hash, reason) in merged.skipped {
                report.unmergeable.push((entity, format!("change {hash}: {reason}")));
            }
        }
        if plan.own_log_diverged {
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
        record_report(&tx, &report, ctx.from, ctx.time, ctx.give_up_after)?;
        tx.commit()?;
        if let Some(author) = report.reincarnated {
            self.set_author(author);
        }
        let parked = plan.to_pending.iter().map(|(a, seq, _)| (*a, *seq)).collect();
        Ok((report, plan.stalled, parked))
    }
}

/// Sequences the batches against the store without writing: which apply, wait, are present or
/// are refused.
fn sequence(
    tx: &redb::WriteTransaction,
    incoming: &[VerifiedBatch],
    trust: &dyn Trust,
    own: AuthorId,
    resume: &[AuthorId],
    promote_max: (usize, usize),
) -> Result<Plan, StoreError> {
    let vector = tx.open_table(VECTOR)?;
    let batches = tx.open_table(BATCHES)?;
    let pending = tx.open_table(PENDING)?;
    let mut plan = Plan::default();
    // Changes and body bytes taken out of waiting so far in this transaction.
    let mut promoted_size = (0usize, 0usize);
    // Per author: the top seq and its hash as this plan would leave them.
    let mut tops: HashMap<AuthorId, u64> = HashMap::new();
    // Hashes of the batches this plan accepts, which are not in the table yet.
    let mut planned: HashMap<(AuthorId, u64), BatchHash> = HashMap::new();
    let mut queue: VecDeque<Src> = (0..incoming.len()).map(Src::Incoming).collect();
    let mut pending_seen: HashSet<(AuthorId, u64)> = HashSet::new();
    // Batches of this call that wait for an earlier seq: (author, seq) -> index in `incoming`.
    let mut waiting: HashMap<(AuthorId, u64), usize> = HashMap::new();
    let mut promoted: Vec<VerifiedBatch> = Vec::new();
    // Take a waiting batch out of `PENDING` (verified again) and queue it, unless this
    // transaction already took its share: then the author is left for the next one.
    // A batch left waiting stays out of `pending_seen`: a copy arriving later in this call is
    // then applied and its waiting copy removed as usual.
    let mut promote = |author: AuthorId,
                       seq: u64,
                       plan: &mut Plan,
                       pending_seen: &mut HashSet<(AuthorId, u64)>,
                       promoted: &mut Vec<VerifiedBatch>,
                       queue: &mut VecDeque<Src>|
     -> Result<(), StoreError> {
        if pending_seen.contains(&(author, seq)) {
            return Ok(());
        }
        let Some(v) = pending.get((&author.actor_bytes(), seq))? else {
            return Ok(());
        };
        // At least one batch per transaction, whatever the bound: the caller's loop ends.
        let full = promoted_size.0 >= promote_max.0 || promoted_size.1 >= promote_max.1;
        if full && !promoted.is_empty() {
            if !plan.stalled.contains(&author) {
                plan.stalled.push(author);
            }
            return Ok(());
        }
        pending_seen.insert((author, seq));
        let rec: PendingBatch =
            postcard::from_bytes(v.value()).map_err(|e| corrupt("pending batch", e))?;
        plan.from_pending.push((author, seq));
        let bodies: Vec<Vec<u8>> =
            rec.bodies.into_iter().map(serde_bytes::ByteBuf::into_vec).collect();
        promoted_size.0 += bodies.len();
        promoted_size.1 += bodies.iter().map(Vec::len).sum::<usize>();
        // Withheld bodies in a pending batch were allowed when it arrived.
        match rec.signed.verify(bodies, trust, true) {
            Ok(vb) => {
                promoted.push(vb);
                queue.push_front(Src::Promoted(promoted.len() - 1));
            }
            Err(e) => plan.rejected.push(Rejection { author, seq, reason: e.to_string() }),
        }
        Ok(())
    };
    for &author in resume {
        let top = vector.get(&author.actor_bytes())?.map_or(0, |v| v.value());
        promote(author, top + 1, &mut plan, &mut pending_seen, &mut promoted, &mut queue)?;
    }
    while let Some(src) = queue.pop_front() {
        let vb = match src {
            Src::Incoming(i) => &incoming[i],
            Src::Promoted(i) => &promoted[i],
        };
        let (author, seq, hash) = (vb.signed.author(), vb.signed.seq(), vb.hash);
        let actor = author.actor_bytes();
        let top = match tops.get(&author) {
            Some(t) => *t,
            None => vector.get(&actor)?.map_or(0, |v| v.value()),
        };
        let reject = |reason: String| Rejection { author, seq, reason };
        let stored_hash = |s: u64| -> Result<BatchHash, StoreError> {
            if let Some(h) = planned.get(&(author, s)) {
                return Ok(*h);
            }
            let stored = batches
                .get((&actor, s))?
                .ok_or_else(|| corrupt(format!("batch {author} #{s}"), "missing"))?;
            Ok(decode_batch(stored.value())?.0)
        };
        if seq <= top {
            if stored_hash(seq)? == hash {
                plan.present += 1;
            } else {
                plan.own_log_diverged |= author == own;
                plan.rejected.push(reject(format!(
                    "fork: differs from the batch #{seq} already held for this author \
                     (its node's store was probably restored from a backup)"
                )));
            }
            continue;
        }
        if seq > top + 1 {
            plan.own_log_diverged |= author == own;
            if seq - top > PENDING_AHEAD_MAX {
                plan.rejected
                    .push(reject(format!("seq is {} ahead of the held #{top}", seq - top)));
            } else if let Src::Incoming(i) = src {
                waiting.insert((author, seq), i);
            }
            continue;
        }
        if seq > 1 && Some(stored_hash(seq - 1)?) != vb.signed.batch.prev {
            plan.own_log_diverged |= author == own;
            plan.rejected.push(reject(format!("prev does not match the held batch #{}", seq - 1)));
            continue;
        }
        plan.own_log_diverged |= author == own;
        tops.insert(author, seq);
        planned.insert((author, seq), hash);
        // A copy may wait in the table from an earlier receipt; it is applied now.
        if !pending_seen.contains(&(author, seq)) && pending.get((&actor, seq))?.is_some() {
            pending_seen.insert((author, seq));
            plan.from_pending.push((author, seq));
        }
        plan.accepted.push(src);
        // The next seq of this author may be waiting: earlier in this call, or from an
        // earlier receipt.
        let next = (author, seq + 1);
        if let Some(i) = waiting.remove(&next) {
            queue.push_front(Src::Incoming(i));
        } else {
            promote(author, seq + 1, &mut plan, &mut pending_seen, &mut promoted, &mut queue)?;
        }
    }
    plan.promoted = promoted;
    let mut left: Vec<_> = waiting.into_iter().collect();
    left.sort();
    for ((author, seq), i) in left {
        let vb = &incoming[i];
        let bodies = vb.bodies.iter().cloned().map(serde_bytes::ByteBuf::from).collect();
        let rec = PendingBatch { signed: vb.signed.clone(), bodies };
        plan.to_pending.push((author, seq, encode(&rec)));
        plan.waiting += 1;
    }
    Ok(plan)
}

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
    pub fn merge_dirty(
        &self,
        threads: usize,
        time: i64,
    ) -> Result<MergeReport, StoreError> {
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
    let index = tx.open_table(CONFLICT_INDEX)?;
    for (key, result) in results {
        match result {
            Ok(Merged { record, concurrent }) => {
                docs.insert(key.as_str(), encode(&record).as_slice())?;
                report.documents += 1;
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
        for (hash, reason) in skipped {
            let kind =
                EventKind::Unmergeable { entity, reason: format!("change {hash}: {reason}") };
            append_event(tx, Event { time, kind })?;
            report.skipped.push((entity, hash, reason));
        }
    }
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

/// Writes a plan: bodies, batches, vector, pending batches, and the dirty lists.
fn write_plan(
    tx: &redb::WriteTransaction,
    plan: &Plan,
    incoming: &[VerifiedBatch],
    report: &mut ApplyReport,
) -> Result<(), StoreError> {
    let mut touched: BTreeMap<String, Vec<BodyHash>> = BTreeMap::new();
    let mut vector = tx.open_table(VECTOR)?;
    let mut batches = tx.open_table(BATCHES)?;
    let mut bodies = tx.open_table(BODIES)?;
    let mut pending = tx.open_table(PENDING)?;
    let mut withheld = tx.open_table(WITHHELD)?;
    for &src in &plan.accepted {
        let b = plan.batch(incoming, src);
        let (author, seq) = (b.signed.author(), b.signed.seq());
        let actor = author.actor_bytes();
        batches.insert((&actor, seq), encode_batch(&b.hash, &b.signed).as_slice())?;
        vector.insert(&actor, seq)?;
        for (r, body) in b.signed.batch.changes.iter().zip(&b.bodies) {
            if body.is_empty() {
                // Withheld by the parent: the manifest is held, the record is not.
                withheld.insert(&r.body.0, r.entity.key().as_str())?;
                continue;
            }
            bodies.insert(&r.body.0, body.as_slice())?;
            touched.entry(r.entity.key()).or_default().push(r.body);
        }
        report.applied_batches += 1;
        report.applied_changes += b.changes.len() as u64;
    }
    for (author, seq) in &plan.from_pending {
        pending.remove((&author.actor_bytes(), *seq))?;
    }
    for (author, seq, bytes) in &plan.to_pending {
        pending.insert((&author.actor_bytes(), *seq), bytes.as_slice())?;
    }
    mark_dirty(tx, touched)
}

/// Appends received changes to each record's dirty list (merged later by
/// [`Store::merge_dirty`]).
pub(crate) fn mark_dirty(
    tx: &redb::WriteTransaction,
    touched: BTreeMap<String, Vec<BodyHash>>,
) -> Result<(), StoreError> {
    let mut dirty = tx.open_table(DIRTY)?;
    for (key, mut hashes) in touched {
        if let Some(v) = dirty.get(key.as_str())? {
            let mut old: Vec<BodyHash> = postcard::from_bytes(v.value())
                .map_err(|e| corrupt(format!("dirty list {key}"), e))?;
            old.append(&mut hashes);
            hashes = old;
        }
        dirty.insert(key.as_str(), encode(&hashes).as_slice())?;
    }
    Ok(())
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

fn record_report(
    tx: &redb::WriteTransaction,
    r: &ApplyReport,
    from: Option<NodeId>,
    time: i64,
    give_up_after: u32,
) -> Result<(), StoreError> {
    for rej in &r.rejected {
        let kind =
            EventKind::Rejected { author: rej.author, seq: rej.seq, reason: rej.reason.clone() };
        append_event(tx, Event { time, kind })?;
        // The refused batch stands as a failure until it is held (it comes again, or by another
        // path); a retry syncs with the node it came from.
        let op = super::failures::Operation::Batch { from, author: rej.author, seq: rej.seq };
        let attempt = super::failures::Attempt {
            op: &op,
            result: Err(&rej.reason),
            time,
            next_retry: None,
            give_up_after,
        };
        super::failures::attempt(tx, &attempt)?;
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
