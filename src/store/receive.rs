//! Durable receipt of verified batches: sequencing them against the vector, storing those that
//! apply, keeping those that come early, and marking the touched documents dirty.
//!
//! One call of [`Store::apply`] (an import chunk or one network message) is one write
//! transaction: bodies, batches, vector entries, pending batches, the report (events and failure
//! records of refused batches) and the dirty marks commit together, so a node killed at any
//! instant holds either all of a receipt or none of it. When a receipt fills a gap, the batches
//! that waited for it follow in further transactions of at most `ApplyContext::promote_max`
//! changes and body bytes each (memory stays bounded), each durable on its own; a crash between
//! them leaves batches waiting behind a filled gap, which [`Store::ready_pending`] finds and
//! [`Store::promote_ready`] applies when the node opens.
//!
//! Sequencing rules (docs/protocol.md "Acceptance rules", rule 6): a batch is applied only as
//! the next seq of its author and only if its `prev` is the hash of the batch held before it. An
//! earlier seq is "already present" when identical to the held batch and a fork (rejected)
//! otherwise. A later seq waits, verified, in `PENDING` until the gap fills (at most
//! [`PENDING_AHEAD_MAX`] ahead; further is rejected), and is verified again when it is taken out,
//! so a trust removal in between takes effect. A batch of this node's own author that the store
//! does not hold, or that differs from the one it holds, means the store was restored from a
//! backup: the store moves to a fresh incarnation in the same transaction (docs/architecture.md
//! "Authors, incarnations and batches").
//!
//! This module does not merge documents: merging happens later, in transactions of its own
//! ([`super::merge`]). Rosters are the one exception: they decide trust for what comes next and
//! are tiny, so they are merged inside the receipt transaction. Verification (signature, trust,
//! bodies) is done before a batch gets here; only a `VerifiedBatch` is received.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::merge::merge_keys;
use super::tables::*;
use super::{Store, StoreError, append_event, corrupt, decode_batch, encode, encode_batch};
use crate::batch::{BatchHash, Trust, VerifiedBatch};
use crate::event::{Event, EventKind};
use crate::id::{AuthorId, BodyHash, EntityId, Incarnation, NodeId};

/// How far ahead of the held seq a batch may be and still be kept to wait for the gap.
pub const PENDING_AHEAD_MAX: u64 = 1_000_000;

/// A batch refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    pub author: AuthorId,
    pub seq: u64,
    pub reason: String,
}

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Records held back: outside what their author may push, applied without their bodies.
    pub held_back: Vec<(EntityId, String)>,
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
        self.held_back.extend(r.held_back);
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
    /// The batches come from this node's parent: their absent bodies were withheld by it,
    /// which remembers them. Absent bodies from anyone else (and in batches that waited) are
    /// recorded in `PEER_HOLES` for the parent, but for records that travel nowhere.
    pub from_parent: bool,
    /// Whether a record, by its author's node, is held back everywhere (outside its author's
    /// push types): its absent body is not worth reporting.
    pub held_back: HeldBack<'a>,
}

/// Whether a record, by its author's node, is held back everywhere ([`ApplyContext::held_back`]).
pub type HeldBack<'a> = Box<dyn Fn(&NodeId, &EntityId) -> bool + 'a>;

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
        write_plan(&tx, &plan, incoming, ctx, &mut report)?;
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

/// Writes a plan: bodies, batches, vector, pending batches, and the dirty lists.
fn write_plan(
    tx: &redb::WriteTransaction,
    plan: &Plan,
    incoming: &[VerifiedBatch],
    ctx: &ApplyContext<'_>,
    report: &mut ApplyReport,
) -> Result<(), StoreError> {
    let mut touched: BTreeMap<String, Vec<BodyHash>> = BTreeMap::new();
    let mut vector = tx.open_table(VECTOR)?;
    let mut batches = tx.open_table(BATCHES)?;
    let mut bodies = tx.open_table(BODIES)?;
    let mut pending = tx.open_table(PENDING)?;
    let mut withheld = tx.open_table(WITHHELD)?;
    let mut peer_holes = tx.open_table(PEER_HOLES)?;
    // Bodies children reported as holes before this node held them (rare: usually none).
    let awaited = tx.open_table(AWAITED)?.len()? > 0;
    for &src in &plan.accepted {
        let b = plan.batch(incoming, src);
        let from_parent = ctx.from_parent && matches!(src, Src::Incoming(_));
        let (author, seq) = (b.signed.author(), b.signed.seq());
        let actor = author.actor_bytes();
        batches.insert((&actor, seq), encode_batch(&b.hash, &b.signed).as_slice())?;
        vector.insert(&actor, seq)?;
        for (r, body) in b.signed.batch.changes.iter().zip(&b.bodies) {
            if body.is_empty() {
                // Absent: the manifest is held, the record is not.
                withheld.insert(&r.body.0, r.entity.key().as_str())?;
                if !from_parent && !(ctx.held_back)(&author.node, &r.entity) {
                    peer_holes.insert(&r.body.0, r.entity.key().as_str())?;
                }
                continue;
            }
            bodies.insert(&r.body.0, body.as_slice())?;
            if awaited {
                super::resend::wake_awaited(tx, &r.body)?;
            }
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
