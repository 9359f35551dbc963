//! Re-sending withheld bodies to a child once their records are inside its scope, and taking
//! them in as that child (docs/protocol.md "Re-sending withheld bodies").
//!
//! A parent remembers each body it withholds from a child under the body's anchors
//! (`Node::fetch_wire`). An anchor becomes due when a change under it travels to the child with
//! its body (a transfer: the patient got an identifier at the child's clinic), when a record
//! a verdict missed is merged here, or when the child's scope is not the one the entries were
//! last checked against. The holes a child reports (bodies its peers left out) are taken over
//! the same way. At the end of each
//! session the parent checks the records of the due anchors against the child's scope as it
//! stands and sends the bodies now inside it; each is forgotten once the child acknowledged it,
//! so a cut session sends them again.

use super::scope::ScopeCheck;
use super::{Node, NodeError};
use crate::config::Scope;
use crate::id::{BodyHash, EntityId, NodeId};
use crate::protocol::message::{BODIES_BYTES_TARGET, BODIES_PER_MESSAGE_MAX};
use crate::protocol::session::ResendBody;
use crate::store::resend::{BodiesReport, Settled};

/// Due anchors read per store transaction while looking for bodies to re-send.
const DUE_ANCHORS_PER_READ: usize = 256;

/// A stable digest of a child's scope (types and catchment, in order).
fn scope_digest(scope: &Scope) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"sitesync scope v1\0");
    match &scope.types {
        None => h.update(b"types: all\0"),
        Some(types) => types
            .iter()
            .fold(h.update(b"types:\0"), |h, t| h.update(t.to_string().as_bytes()).update(b"\0")),
    };
    match &scope.catchment {
        None => h.update(b"catchment: everywhere\0"),
        Some(uids) => uids.iter().fold(h.update(b"catchment:\0"), |h, u| {
            h.update(u.to_string().as_bytes()).update(b"\0")
        }),
    };
    *h.finalize().as_bytes()
}

impl Node {
    /// At the start of a session with `child`: when its scope differs from the one its withheld
    /// bodies were last checked against, every one of them is checked again at the end of the
    /// session. Returns how many anchors that made due.
    pub fn check_child_scope(&self, child: NodeId, scope: &Scope) -> Result<u64, NodeError> {
        Ok(self.store.check_withheld_scope(&child, scope_digest(scope))?)
    }

    /// Takes over the holes `child` reports: bodies a peer left out of batches the child holds.
    /// Each is recorded as withheld from the child under its anchors (as if this node had
    /// withheld it itself) and made due, so this round's re-send sends what is inside the
    /// child's scope, and a later one what enters it. A body this node does not hold yet is
    /// awaited: when it arrives, its anchors become due again. A body held here that is not a
    /// change of the record the child names is dropped (a false report could otherwise get a
    /// child a body outside its scope); the re-send checks the others again before sending.
    /// Returns how many items were taken over.
    pub fn take_over_holes(
        &self,
        child: NodeId,
        items: &[(EntityId, BodyHash)],
    ) -> Result<u64, NodeError> {
        let scope = self.config.peer(&child).map(|p| p.scope.clone()).unwrap_or_default();
        // Scope follows the merged records.
        self.merge_received()?;
        let mut check = ScopeCheck::new(self, &scope);
        let (mut withheld, mut due, mut awaited, mut unsure) =
            (Vec::new(), std::collections::BTreeSet::new(), Vec::new(), Vec::new());
        let mut false_reports = 0u64;
        for (entity, hash) in items {
            let verdict = check.verdict(entity)?;
            let anchors: Vec<String> = verdict.anchors.iter().map(EntityId::key).collect();
            match self.store.body(hash)? {
                None => awaited.push((*hash, anchors.clone())),
                Some(body) if !self.store.is_change_of(entity, &body)? => {
                    false_reports += 1;
                    continue;
                }
                Some(_) => {}
            }
            unsure.extend(verdict.unsure());
            due.extend(anchors.iter().cloned());
            withheld.push((anchors, *entity, *hash));
        }
        if false_reports > 0 {
            tracing::warn!(%child, false_reports, "holes naming a body of another record dropped");
        }
        self.store.note_withheld(&child, &withheld, &Default::default(), &unsure)?;
        self.store.note_withheld(&child, &[], &due, &[])?;
        self.store.await_bodies(&child, &awaited)?;
        Ok(withheld.len() as u64)
    }

    /// The next bodies withheld from `child` that are inside `scope` now, within one `Bodies`
    /// message's limits (none: nothing more to re-send). Due anchors with nothing inside the
    /// scope stop being due; a body outside it for want of a record waits for that record's
    /// merge (`unsure-1`), under the anchors its verdict follows now.
    pub fn fetch_bodies(&self, child: NodeId, scope: &Scope) -> Result<Vec<ResendBody>, NodeError> {
        if self.store.due_withheld(&child, None, 1)?.is_empty() {
            return Ok(Vec::new());
        }
        // Scope follows the merged records.
        self.merge_received()?;
        let mut check = ScopeCheck::new(self, scope);
        let mut out: Vec<ResendBody> = Vec::new();
        let mut bytes = 0;
        let mut after: Option<String> = None;
        loop {
            let due = self.store.due_withheld(&child, after.as_deref(), DUE_ANCHORS_PER_READ)?;
            let Some((last, _)) = due.last() else { return Ok(out) };
            after = Some(last.clone());
            let mut settled = Settled::default();
            let mut full = false;
            for (anchor, items) in due {
                // Stays due while a body inside the scope is not held here yet, or this
                // message is full before the anchor is done.
                let mut keep = false;
                for (entity, hash) in items {
                    let verdict = check.verdict(&entity)?;
                    if !verdict.allowed {
                        settled.unsure.extend(verdict.unsure());
                        let anchors: Vec<String> =
                            verdict.anchors.iter().map(EntityId::key).collect();
                        if anchors != [anchor.clone()] {
                            settled.refile.push((anchors, entity, hash));
                        }
                        continue;
                    }
                    keep = true;
                    if full {
                        continue;
                    }
                    let Some(body) = self.store.body(&hash)? else { continue };
                    if !self.store.is_change_of(&entity, &body)? {
                        tracing::warn!(%child, "a withheld entry naming a body of another record dropped");
                        settled.forget.push((anchor.clone(), hash));
                        continue;
                    }
                    if !out.is_empty()
                        && (out.len() >= BODIES_PER_MESSAGE_MAX
                            || bytes + body.len() > BODIES_BYTES_TARGET)
                    {
                        full = true;
                        continue;
                    }
                    bytes += body.len();
                    out.push(ResendBody { anchor: anchor.clone(), hash, body });
                }
                if !keep {
                    settled.idle.push(anchor);
                }
            }
            self.store.settle_due(&child, &settled)?;
            if full || out.len() >= BODIES_PER_MESSAGE_MAX {
                return Ok(out);
            }
        }
    }

    /// `child` acknowledged these re-sent bodies (durably forgotten as withheld from it).
    pub fn bodies_delivered(&self, child: NodeId, items: &[ResendBody]) -> Result<(), NodeError> {
        let items: Vec<(String, crate::id::BodyHash)> =
            items.iter().map(|b| (b.anchor.clone(), b.hash)).collect();
        Ok(self.store.bodies_delivered(&child, &items, self.now())?)
    }

    /// Stores the bodies a `Bodies` message from `from` carried (see
    /// [`crate::store::Store::receive_bodies`]); only this node's parent re-sends.
    pub fn receive_bodies(
        &self,
        from: NodeId,
        bodies: Vec<Vec<u8>>,
    ) -> Result<BodiesReport, NodeError> {
        let parent = self
            .config
            .peers
            .iter()
            .any(|p| p.node_id == from && p.role == crate::protocol::message::Role::Parent);
        if !parent {
            return Err(NodeError::Input(format!("{from} is not this node's parent")));
        }
        let report = self.store.receive_bodies(&from, bodies, self.now())?;
        if report.refused > 0 {
            tracing::warn!(%from, refused = report.refused, "bodies never withheld here refused");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_digest_changes_with_the_scope_only() {
        let uid = crate::id::Uid::from_random([3; 16]);
        let all = Scope::default();
        let one = Scope { types: None, catchment: Some(std::iter::once(uid).collect()) };
        assert_eq!(scope_digest(&all), scope_digest(&Scope::default()));
        assert_ne!(scope_digest(&all), scope_digest(&one));
        let typed = Scope {
            types: Some(std::iter::once(crate::id::EntityType::Patient).collect()),
            catchment: None,
        };
        assert_ne!(scope_digest(&all), scope_digest(&typed));
    }
}
