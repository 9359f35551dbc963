//! Receiving over the network: the next batches a peer lacks in wire form (bodies outside a
//! child's scope withheld), verifying and durably receiving a peer's batches in trust order
//! (rosters in a message may vouch for later authors in it), and merging what was received.

use std::mem::take;

use super::scope::ScopeCheck;
use super::trust::PushLimits;
use super::{IMPORT_CHUNK_BYTES, IMPORT_CHUNK_CHANGES, IMPORT_CHUNK_ENV, Node, NodeError};
use crate::batch::{ChangeRef, Holes, Trust, VerifiedBatch};
use crate::config::{Scope, TrustSet};
use crate::id::{AuthorId, EntityId, EntityType, NodeId, Vector};
use crate::protocol::message::{self, Role, WireBatch};
use crate::store::failures::{Attempt, Operation};
use crate::store::{ApplyContext, ApplyReport, MergeReport, Rejection};

/// Who a fetch is for, which decides what its batches may leave out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// This node's child: bodies outside its scope are withheld, and remembered for a re-send
    /// (`src/node/resend.rs`).
    Child(Scope),
    /// A peer under a parent's scope (as that parent's signed roster publishes it): bodies
    /// outside that scope and bodies this node lacks are left out; the peer reports them to
    /// its parent (`Holes`), which re-sends what the peer may hold.
    ScopedPeer(Scope),
    /// Anyone else (this node's parent; a peer under no parent's scope): whole batches only.
    Whole,
    /// A peer, while this node has not yet heard from its own parent (it holds no roster of
    /// it): nothing. This node cannot tell yet whether the parent limits what the peer may
    /// hold, and a body sent by mistake cannot be taken back. The peer's batches still come
    /// in, and the parent's roster, relayed by any peer, opens the way.
    NotYet,
}

/// The absent bodies a node accepts in a batch ([`Holes`]): any from its parent, which
/// withholds what is outside this node's scope; from anyone, the body of a record outside its
/// author's push types, which its author's parent holds back and which travels nowhere.
pub(super) struct HoleRule {
    pub(super) from_parent: bool,
    /// From a peer, while this node has a parent to report the holes to.
    pub(super) from_reporting_peer: bool,
    pub(super) limits: PushLimits,
}

impl HoleRule {
    /// The rule for batches whose sender is neither this node's parent nor a reporting peer
    /// (a bundle, or what this node itself sends): held-back records only.
    pub(super) fn held_back_only(limits: PushLimits) -> Self {
        HoleRule { from_parent: false, from_reporting_peer: false, limits }
    }

    /// Whether a batch's `bodies` (held-back ones cleared) lack a body that is not held back:
    /// one withheld from this node, which it cannot pass on.
    pub(super) fn lacks(
        &self,
        author: AuthorId,
        changes: &[ChangeRef],
        bodies: &[Vec<u8>],
    ) -> bool {
        changes
            .iter()
            .zip(bodies)
            .any(|(c, b)| b.is_empty() && !self.held_back(&author.node, &c.entity))
    }

    /// Whether `entity`, written by `author`, is outside what its author may push.
    pub(super) fn held_back(&self, author: &NodeId, entity: &EntityId) -> bool {
        entity.ty != EntityType::Roster
            && self.limits.get(author).is_some_and(|types| !types.contains(&entity.ty))
    }

    /// Clears the bodies of held-back records in `bodies`; returns those records.
    pub(super) fn hold_back(
        &self,
        author: AuthorId,
        changes: &[ChangeRef],
        bodies: &mut [Vec<u8>],
    ) -> Vec<EntityId> {
        let mut held = Vec::new();
        for (c, body) in changes.iter().zip(bodies.iter_mut()) {
            if !body.is_empty() && self.held_back(&author.node, &c.entity) {
                body.clear();
                held.push(c.entity);
            }
        }
        held
    }
}

impl Holes for &HoleRule {
    fn allows(&self, author: &AuthorId, change: &ChangeRef) -> bool {
        self.from_parent || self.from_reporting_peer || self.held_back(&author.node, &change.entity)
    }
}

impl Node {
    /// The next batches `after` lacks, in wire form, within one message's limits, for `peer`
    /// as `to` says ([`Receiver`]). `order` is [`Node::trust_order`], taken once per session:
    /// only authors this node trusts are relayed (a node removed from every roster stops
    /// travelling), rosters first. Records held back (outside their author's push types)
    /// travel without their bodies, to anyone.
    pub fn fetch_wire(
        &self,
        order: &[NodeId],
        after: &Vector,
        peer: NodeId,
        to: &Receiver,
    ) -> Result<Vec<WireBatch>, NodeError> {
        if *to == Receiver::NotYet {
            return Ok(Vec::new());
        }
        let batches = self.fetch_whole(order, after, !matches!(to, Receiver::Whole))?;
        let (scope, child) = match to {
            Receiver::Child(s) => (s, true),
            Receiver::ScopedPeer(s) => (s, false),
            Receiver::Whole | Receiver::NotYet => (&Scope::default(), false),
        };
        if scope.is_everything() {
            return Ok(batches.into_iter().map(|(b, bodies)| WireBatch::new(b, bodies)).collect());
        }
        // Scope follows the merged records: merge what arrived since the last merge first.
        self.merge_received()?;
        let mut check = ScopeCheck::new(self, scope);
        let mut out = Vec::with_capacity(batches.len());
        let mut withheld = Vec::new();
        let mut unsure = Vec::new();
        let mut sent = std::collections::BTreeSet::new();
        for (signed, mut bodies) in batches {
            for (c, body) in signed.batch.changes.iter().zip(bodies.iter_mut()) {
                // An empty body is not held here (withheld by this node's parent): it cannot
                // be re-sent from here, so it is not remembered.
                if body.is_empty() {
                    continue;
                }
                let verdict = check.verdict(&c.entity)?;
                let anchors: Vec<String> = verdict.anchors.iter().map(EntityId::key).collect();
                if verdict.allowed {
                    sent.extend(anchors);
                    // A change withheld when its record could not be read yet is remembered
                    // under the record itself: this one travelling makes it due too.
                    sent.insert(c.entity.key());
                } else {
                    body.clear();
                    withheld.push((anchors, c.entity, c.body));
                    unsure.extend(verdict.unsure());
                }
            }
            out.push(WireBatch::new(signed, bodies));
        }
        // Durable before the message leaves: a body withheld and forgotten is never re-sent. (A
        // peer's parent takes over what is left out for the peer, when the peer reports it.)
        if child {
            self.store.note_withheld(&peer, &withheld, &sent, &unsure)?;
        }
        Ok(out)
    }

    /// The next batches `after` lacks, held-back records without their bodies. Unless `holes`
    /// (a child, or a peer that reports what is left out to its parent), the receiver gets
    /// whole batches only: an author's batches stop at the first one holding a body this node
    /// lacks (withheld by its parent), and the receiver gets them from a node that holds them.
    fn fetch_whole(
        &self,
        order: &[NodeId],
        after: &Vector,
        holes: bool,
    ) -> Result<Vec<crate::store::BatchWithBodies>, NodeError> {
        let rule = HoleRule::held_back_only(self.push_limits()?);
        let mut after = after.clone();
        loop {
            let fetched = self.store.fetch_after(
                order,
                &after,
                message::BATCHES_PER_MESSAGE_MAX,
                message::MESSAGE_BODY_BYTES_TARGET,
            )?;
            let (mut keep, mut stopped) = (Vec::with_capacity(fetched.len()), false);
            for (signed, mut bodies) in fetched {
                let author = signed.author();
                if after.get(&author) == u64::MAX {
                    continue;
                }
                rule.hold_back(author, &signed.batch.changes, &mut bodies);
                if !holes && rule.lacks(author, &signed.batch.changes, &bodies) {
                    after.0.insert(author, u64::MAX);
                    stopped = true;
                    continue;
                }
                keep.push((signed, bodies));
            }
            // A stopped author's batches may have filled the message: fetch past them.
            if !keep.is_empty() || !stopped {
                return Ok(keep);
            }
        }
    }

    /// Verifies and applies batches received from `from` in one transaction; returns the
    /// vector held afterwards, the report, and how many batches failed verification (bad
    /// signature, untrusted author, wrong hashes or actors: a peer that sends those is cut off).
    pub fn apply_wire(
        &self,
        from: NodeId,
        batches: Vec<WireBatch>,
    ) -> Result<(Vector, ApplyReport, usize), NodeError> {
        let trust = self.trust_set()?;
        let peer = self.config.peers.iter().find(|p| p.node_id == from);
        // A peer may leave bodies out when this node has a parent to report them to. (The peer
        // does so only when it holds that parent's roster with the `holes` mark; this node may
        // not hold it yet, early on, and reports the holes once it does.)
        let has_parent = self.config.peers.iter().any(|p| p.role == Role::Parent);
        let rule = HoleRule {
            from_parent: peer.is_some_and(|p| p.role == Role::Parent),
            from_reporting_peer: has_parent && peer.is_some_and(|p| p.role == Role::Peer),
            limits: self.push_limits()?,
        };
        let (mut verified, mut refused) = (Vec::with_capacity(batches.len()), Vec::new());
        let mut parts = Vec::with_capacity(batches.len());
        let mut held = Vec::new();
        for b in batches {
            let (signed, mut bodies) = b.into_parts();
            // A record outside what its author may push is held back, not its batch: the
            // author's later batches apply, and vectors stay contiguous everywhere.
            let author = signed.author();
            for entity in rule.hold_back(author, &signed.batch.changes, &mut bodies) {
                held.push((author.node, entity));
            }
            parts.push((signed, bodies));
        }
        let mut untrusted = sort_by_trust(parts, &trust, false, &rule, &mut verified, &mut refused);
        // Rosters in this message may authorize the authors of later batches in it, level by
        // level: apply what verifies, recompute trust, and retry the rest until nothing more
        // is accepted.
        let mut report = ApplyReport::default();
        while !untrusted.is_empty() && !verified.is_empty() {
            let r = self.apply_verified(from, take(&mut verified), Vec::new(), &rule)?;
            report.add(r);
            let trust = self.trust_set()?;
            untrusted = sort_by_trust(untrusted, &trust, false, &rule, &mut verified, &mut refused);
        }
        let trust = self.trust_set()?;
        sort_by_trust(untrusted, &trust, true, &rule, &mut verified, &mut refused);
        let failed_verification = refused.len();
        let last = self.apply_verified(from, verified, refused, &rule)?;
        report.add(last);
        self.report_held_back(&held, &mut report)?;
        Ok((self.store.vector()?, report, failed_verification))
    }

    /// Records the records held back from this node's children (where the limit is this
    /// node's, so where an administrator can act): each in the failures registry and the
    /// audit log, with the reason; every held-back record in the report.
    pub(super) fn report_held_back(
        &self,
        held: &[(NodeId, EntityId)],
        report: &mut ApplyReport,
    ) -> Result<(), NodeError> {
        for (author, entity) in held {
            let child = self.config.peers.iter().find(|p| p.node_id == *author);
            let reason = format!(
                "a {} record, outside what this node may push ({})",
                entity.ty,
                child.map_or_else(|| "its parent's limit".to_string(), |p| p.scope.describe())
            );
            report.held_back.push((*entity, reason.clone()));
            if child.is_none_or(|p| p.role != Role::Child) {
                continue;
            }
            tracing::warn!(from = %author, %entity, "record held back: outside the child's types");
            let op = Operation::HeldBack { from: *author, entity: *entity };
            self.store.record_attempt(&Attempt {
                op: &op,
                result: Err(&reason),
                time: self.now(),
                next_retry: None,
                give_up_after: self.config.failures.give_up_after,
            })?;
        }
        Ok(())
    }

    fn apply_verified(
        &self,
        from: NodeId,
        verified: Vec<VerifiedBatch>,
        refused: Vec<Rejection>,
        rule: &HoleRule,
    ) -> Result<ApplyReport, NodeError> {
        let trust = self.trust_set()?;
        self.receive(&trust, Some(from), verified, refused, Some(rule))
    }

    /// One receipt transaction for verified batches (and the refusals to report with them).
    pub(super) fn receive(
        &self,
        trust: &TrustSet,
        from: Option<NodeId>,
        verified: Vec<VerifiedBatch>,
        refused: Vec<Rejection>,
        rule: Option<&HoleRule>,
    ) -> Result<ApplyReport, NodeError> {
        let ctx = self.apply_context(trust, from, refused, rule)?;
        Ok(self.store.apply(verified, ctx)?)
    }

    /// The inputs of a receipt: `rule` says who sent the batches (their parent or not) and
    /// which records are held back everywhere (none known: every absent body is reported).
    pub(super) fn apply_context<'a>(
        &self,
        trust: &'a TrustSet,
        from: Option<NodeId>,
        refused: Vec<Rejection>,
        rule: Option<&'a HoleRule>,
    ) -> Result<ApplyContext<'a>, NodeError> {
        Ok(ApplyContext {
            trust,
            from,
            refused,
            fresh_incarnation: self.fresh_incarnation()?,
            time: self.now(),
            threads: worker_threads(),
            give_up_after: self.config.failures.give_up_after,
            promote_max: (import_chunk_changes(), IMPORT_CHUNK_BYTES),
            from_parent: rule.is_some_and(|r| r.from_parent),
            held_back: Box::new(move |a, e| rule.is_some_and(|r| r.held_back(a, e))),
        })
    }

    /// Merges every received but not yet merged change into its document (once per document).
    pub fn merge_received(&self) -> Result<MergeReport, NodeError> {
        let started = self.millis();
        let r = self.store.merge_dirty(worker_threads(), self.now())?;
        Ok(log_merged(self.millis().saturating_sub(started), r))
    }

    /// As [`Node::merge_received`], in one transaction of at most `max_docs` documents.
    pub fn merge_received_up_to(&self, max_docs: usize) -> Result<MergeReport, NodeError> {
        let started = self.millis();
        let r = self.store.merge_some(worker_threads(), self.now(), max_docs)?;
        Ok(log_merged(self.millis().saturating_sub(started), r.unwrap_or_default()))
    }
}

/// Verifies the batches whose authors `trust` accepts into `verified` (or `refused` with the
/// reason). The batches of other authors are returned untouched, for a later pass once a roster
/// may vouch for them; with `finally` they are refused too.
pub(super) fn sort_by_trust(
    batches: Vec<crate::store::BatchWithBodies>,
    trust: &TrustSet,
    finally: bool,
    holes: &HoleRule,
    verified: &mut Vec<VerifiedBatch>,
    refused: &mut Vec<Rejection>,
) -> Vec<crate::store::BatchWithBodies> {
    let mut later = Vec::new();
    for (signed, bodies) in batches {
        if !finally && !trust.trusts(&signed.author().node) {
            later.push((signed, bodies));
            continue;
        }
        let (author, seq) = (signed.author(), signed.seq());
        match signed.verify(bodies, trust, holes) {
            Ok(vb) => verified.push(vb),
            Err(e) => refused.push(Rejection { author, seq, reason: e.to_string() }),
        }
    }
    later
}

/// Logs a merge that did something (ids and counts only) and hands its report back.
fn log_merged(millis: u64, r: MergeReport) -> MergeReport {
    if r.documents > 0 {
        tracing::info!(
            documents = r.documents,
            changes = r.changes,
            skipped = r.skipped.len(),
            millis,
            "merged"
        );
    }
    r
}

/// Merge workers: one per core, at least two (the reading thread then overlaps its redb reads
/// with merging even on one core), at most eight.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(2, 8)
}

pub(super) fn import_chunk_changes() -> usize {
    crate::env_parse(IMPORT_CHUNK_ENV).filter(|n| *n > 0).unwrap_or(IMPORT_CHUNK_CHANGES)
}
