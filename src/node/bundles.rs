//! Bundle files, the USB-stick path: writing what another node lacks ([`Node::export`]) and
//! verifying and applying a bundle ([`Node::import`]) in bounded transactions, with the same
//! checks as a network session.

use std::mem::take;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::receive::{HoleRule, import_chunk_changes, sort_by_trust};
use super::{IMPORT_CHUNK_BYTES, Node, NodeError};
use crate::batch::{BATCH_CHANGES_MAX, Trust, VerifiedBatch};
use crate::bundle::{self, BundleWriter};
use crate::event::{Event, EventKind};
use crate::id::{NodeId, Vector};
use crate::store::{ApplyReport, Rejection};

/// What an import did, summed over its transactions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub exporter: Option<NodeId>,
    pub frames: u64,
    pub applied: ApplyReport,
    /// Frames that passed their checksum but did not decode as a batch.
    pub frame_errors: Vec<String>,
    /// `(file bytes, declared bytes)` if the bundle was cut short.
    pub truncated: Option<(u64, u64)>,
    /// Frames the header declares but the file does not hold whole.
    pub missing_frames: u64,
}

/// What a bundle export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleExportReport {
    pub batches: u64,
    pub changes: u64,
    pub bytes: u64,
    /// Batches left out because this node holds them without some bodies (withheld by its
    /// parent), with every later batch of the same author.
    pub withheld_batches: u64,
}

impl Node {
    /// Writes the batches `since` lacks to `out`. `progress(batches_done, batches_total)`.
    pub fn export(
        &self,
        out: &Path,
        since: &Vector,
        peer: Option<NodeId>,
        progress: impl Fn(u64, u64),
    ) -> Result<BundleExportReport, NodeError> {
        let vector = self.store.vector()?;
        let total = vector.ahead_of(since);
        let mut writer = BundleWriter::create(out)?;
        let mut report = BundleExportReport::default();
        // Trusted authors only, rosters before the authors they vouch for (as over the network).
        let order = self.trust_order()?;
        // A bundle carries whole batches: an author's batches stop at the first one whose
        // bodies this node does not hold (withheld by its parent); the receiver gets the rest
        // from a node that holds them. A record held back (outside its author's push types)
        // travels nowhere: its absent body does not stop the batch.
        let rule = HoleRule::held_back_only(self.push_limits()?);
        let mut stopped: std::collections::BTreeSet<crate::id::AuthorId> = Default::default();
        self.store.export_in_order::<NodeError>(&order, since, |signed, mut bodies| {
            let author = signed.author();
            rule.hold_back(author, &signed.batch.changes, &mut bodies);
            if stopped.contains(&author) || rule.lacks(author, &signed.batch.changes, &bodies) {
                stopped.insert(signed.author());
                report.withheld_batches += 1;
                return Ok(true);
            }
            report.changes += signed.batch.changes.len() as u64;
            writer.push(signed, bodies)?;
            report.batches += 1;
            progress(report.batches, total);
            Ok(true)
        })?;
        report.bytes = writer.finish(self.id(), self.now(), vector)?;
        let kind = EventKind::Exported {
            peer,
            batches: report.batches,
            changes: report.changes,
            bytes: report.bytes,
        };
        self.store.record(Event { time: self.now(), kind })?;
        tracing::info!(
            batches = report.batches,
            changes = report.changes,
            bytes = report.bytes,
            "exported bundle"
        );
        Ok(report)
    }

    /// Verifies and applies a bundle. A corrupted bundle applies nothing; a truncated one
    /// applies the whole batches before the cut. `progress(frames_done, frames_total)`.
    pub fn import(
        &self,
        path: &Path,
        progress: impl Fn(u64, u64),
    ) -> Result<ImportReport, NodeError> {
        let started = self.millis();
        let scan = bundle::scan(path)?;
        let mut report = ImportReport {
            exporter: Some(scan.header.exporter),
            truncated: scan.truncated,
            missing_frames: scan.header.frames - scan.usable_frames,
            ..ImportReport::default()
        };
        let mut trust = self.trust_set()?;
        let mut rule = HoleRule::held_back_only(self.push_limits()?);
        let mut held = Vec::new();
        let mut chunk: Vec<VerifiedBatch> = Vec::new();
        // Batches of authors not trusted yet: a roster earlier in the bundle may vouch for them
        // once applied, so they are checked again after each chunk.
        let mut deferred: Vec<crate::store::BatchWithBodies> = Vec::new();
        let mut refused: Vec<Rejection> = Vec::new();
        let mut chunk_changes = 0;
        let mut chunk_bytes = 0;
        let chunk_limit = import_chunk_changes();
        let mut frames = bundle::frames(path, &scan)?.peekable();
        while let Some(item) = frames.next() {
            report.frames += 1;
            match item {
                Ok((signed, bodies)) if !trust.trusts(&signed.author().node) => {
                    deferred.push((signed, bodies));
                }
                Ok((signed, mut bodies)) => {
                    let (author, seq) = (signed.author(), signed.seq());
                    // Bundles carry every body but those held back (outside their author's
                    // push types), which this node holds back too.
                    for entity in rule.hold_back(author, &signed.batch.changes, &mut bodies) {
                        held.push((author.node, entity));
                    }
                    match signed.verify(bodies, &trust, &rule) {
                        Ok(vb) => {
                            chunk_changes += vb.changes.len();
                            chunk_bytes += vb.bodies.iter().map(Vec::len).sum::<usize>();
                            chunk.push(vb);
                        }
                        Err(e) => refused.push(Rejection { author, seq, reason: e.to_string() }),
                    }
                }
                Err(reason) => {
                    report.frame_errors.push(format!("frame {}: {reason}", report.frames - 1))
                }
            }
            let last = frames.peek().is_none();
            if last
                || chunk_changes + BATCH_CHANGES_MAX > chunk_limit
                || chunk_bytes >= IMPORT_CHUNK_BYTES
            {
                let from = Some(scan.header.exporter);
                let r = self.receive(
                    &trust,
                    from,
                    std::mem::take(&mut chunk),
                    take(&mut refused),
                    Some(&rule),
                )?;
                report.applied.add(r);
                chunk_changes = 0;
                chunk_bytes = 0;
                // Retry deferred authors until a pass accepts none (rosters vouch level by
                // level); at the end of the bundle, what is still untrusted is refused.
                while !deferred.is_empty() {
                    trust = self.trust_set()?;
                    rule.limits = self.push_limits()?;
                    let mut verified = Vec::new();
                    let before = deferred.len();
                    deferred = sort_by_trust(
                        take(&mut deferred),
                        &trust,
                        false,
                        &rule,
                        &mut verified,
                        &mut refused,
                    );
                    let progress = deferred.len() < before;
                    if !progress && last {
                        sort_by_trust(
                            take(&mut deferred),
                            &trust,
                            true,
                            &rule,
                            &mut verified,
                            &mut refused,
                        );
                    }
                    if !verified.is_empty() || !refused.is_empty() {
                        let from = Some(scan.header.exporter);
                        let r =
                            self.receive(&trust, from, verified, take(&mut refused), Some(&rule))?;
                        report.applied.add(r);
                    }
                    if !progress {
                        break;
                    }
                }
            }
            progress(report.frames, scan.usable_frames);
        }
        self.report_held_back(&held, &mut report.applied)?;
        let merged = self.merge_received()?;
        for (entity, hash, reason) in merged.skipped {
            report.applied.unmergeable.push((entity, format!("change {hash}: {reason}")));
        }
        if report.truncated.is_none() {
            self.store.learn_peer_vector(&scan.header.exporter, &scan.header.vector, self.now())?;
        }
        let a = &report.applied;
        tracing::info!(
            frames = report.frames,
            applied = a.applied_batches,
            changes = a.applied_changes,
            present = a.present,
            rejected = a.rejected.len(),
            ms = self.millis().saturating_sub(started),
            "imported bundle"
        );
        Ok(report)
    }
}
