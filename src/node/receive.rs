//! Receiving over the network: the next batches a peer lacks in wire form (bodies outside a
//! child's scope withheld), verifying and durably receiving a peer's batches in trust order
//! (rosters in a message may vouch for later authors in it), and merging what was received.

use std::mem::take;

use super::scope::ScopeCheck;
use super::{IMPORT_CHUNK_BYTES, IMPORT_CHUNK_CHANGES, IMPORT_CHUNK_ENV, Node, NodeError};
use crate::batch::{Trust, VerifiedBatch};
use crate::config::{Scope, TrustSet};
use crate::id::{EntityId, NodeId, Vector};
use crate::protocol::message::{self, Role, WireBatch};
use crate::store::{ApplyContext, ApplyReport, MergeReport, Rejection};

impl Node {
    /// The next batches `after` lacks, in wire form, within one message's limits.
    /// `order` is [`Node::trust_order`], taken once per session: only authors this node trusts
    /// are relayed (a node removed from every roster stops travelling), rosters first.
    /// `child` is the receiving child and its scope, when it is one: bodies outside the scope
    /// are withheld and remembered for a later re-send (`src/node/resend.rs`).
    pub fn fetch_wire(
        &self,
        order: &[NodeId],
        after: &Vector,
        child: Option<(NodeId, &Scope)>,
    ) -> Result<Vec<WireBatch>, NodeError> {
        let batches = self.store.fetch_after(
            order,
            after,
            message::BATCHES_PER_MESSAGE_MAX,
            message::MESSAGE_BODY_BYTES_TARGET,
        )?;
        let Some((child, scope)) = child.filter(|(_, s)| !s.is_everything()) else {
            return Ok(batches.into_iter().map(|(b, bodies)| WireBatch::new(b, bodies)).collect());
        };
        // Scope follows the merged records: merge what arrived since the last merge first.
        self.merge_received()?;
        let mut check = ScopeCheck::new(self, scope);
        let mut out = Vec::with_capacity(batches.len());
        let mut withheld = Vec::new();
        let mut sent = std::collections::BTreeSet::new();
        for (signed, mut bodies) in batches {
            for (c, body) in signed.batch.changes.iter().zip(bodies.iter_mut()) {
                // An empty body is not held here (withheld by this node's parent): it cannot
                // be re-sent from here, so it is not remembered.
                if body.is_empty() {
                    continue;
                }
                let (allowed, anchors) = check.verdict(&c.entity)?;
                let anchors: Vec<String> = anchors.iter().map(EntityId::key).collect();
                if allowed {
                    sent.extend(anchors);
                } else {
                    body.clear();
                    withheld.push((anchors, c.entity, c.body));
                }
            }
            out.push(WireBatch::new(signed, bodies));
        }
        // Durable before the message leaves: a body withheld and forgotten is never re-sent.
        self.store.note_withheld(&child, &withheld, &sent)?;
        Ok(out)
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
        // Only a parent withholds bodies (outside this node's scope); a child pushes only the
        // entity types its entry allows.
        let withheld_ok = peer.is_some_and(|p| p.role == Role::Parent);
        let scope = peer.filter(|p| p.role == Role::Child).map(|p| &p.scope);
        let (mut verified, mut refused) = (Vec::with_capacity(batches.len()), Vec::new());
        let mut parts = Vec::with_capacity(batches.len());
        for b in batches {
            let (signed, bodies) = b.into_parts();
            let outside = scope.and_then(|scope| {
                signed.batch.changes.iter().find(|c| !scope.may_push(c.entity.ty))
            });
            match outside {
                Some(c) => refused.push(Rejection {
                    author: signed.author(),
                    seq: signed.seq(),
                    reason: format!(
                        "pushes a {} record, outside this child's scope ({})",
                        c.entity.ty,
                        scope.map(|s| s.describe()).unwrap_or_default()
                    ),
                }),
                None => parts.push((signed, bodies)),
            }
        }
        let mut untrusted =
            sort_by_trust(parts, &trust, false, withheld_ok, &mut verified, &mut refused);
        // Rosters in this message may authorize the authors of later batches in it, level by
        // level: apply what verifies, recompute trust, and retry the rest until nothing more
        // is accepted.
        let mut report = ApplyReport::default();
        while !untrusted.is_empty() && !verified.is_empty() {
            let r = self.apply_verified(from, take(&mut verified), Vec::new())?;
            report.add(r);
            let trust = self.trust_set()?;
            untrusted =
                sort_by_trust(untrusted, &trust, false, withheld_ok, &mut verified, &mut refused);
        }
        let trust = self.trust_set()?;
        sort_by_trust(untrusted, &trust, true, withheld_ok, &mut verified, &mut refused);
        let failed_verification = refused.len();
        let last = self.apply_verified(from, verified, refused)?;
        report.add(last);
        Ok((self.store.vector()?, report, failed_verification))
    }

    fn apply_verified(
        &self,
        from: NodeId,
        verified: Vec<VerifiedBatch>,
        refused: Vec<Rejection>,
    ) -> Result<ApplyReport, NodeError> {
        let trust = self.trust_set()?;
        self.receive(&trust, Some(from), verified, refused)
    }

    /// One receipt transaction for verified batches (and the refusals to report with them).
    pub(super) fn receive(
        &self,
        trust: &TrustSet,
        from: Option<NodeId>,
        verified: Vec<VerifiedBatch>,
        refused: Vec<Rejection>,
    ) -> Result<ApplyReport, NodeError> {
        let ctx = self.apply_context(trust, from, refused)?;
        Ok(self.store.apply(verified, ctx)?)
    }

    pub(super) fn apply_context<'a>(
        &self,
        trust: &'a TrustSet,
        from: Option<NodeId>,
        refused: Vec<Rejection>,
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
    withheld_ok: bool,
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
        match signed.verify(bodies, trust, withheld_ok) {
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
