//! Bodies withheld from a child and sent later, once their records enter the child's scope.
//!
//! The rule: a parent withholds from a child the bodies of changes whose records are outside the
//! child's scope, while the signed manifests still travel (the child's vector stays contiguous
//! and it holds each withheld hash). A record can enter the scope later (a patient transferred
//! to one of the child's locations, a wider scope); the parent then sends the bodies it withheld
//! under it, and forgets one only when the child acknowledges it, so a cut session sends it again.
//! The full protocol is in docs/protocol.md, section "Scope", item "Re-sending withheld bodies".
//!
//! Parent side: which bodies were withheld from which child, by anchor (the record the scope
//! decision followed), which anchors must be checked again, and forgetting a body once the
//! child acknowledged it. Child side: storing a re-sent body, only if its hash is one this node
//! holds as withheld (that hash came in a signed manifest, so the body is the one its author
//! signed), and marking its record for the next merge. This module decides no scope: the node
//! layer does (`src/node/scope.rs`).

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::tables::*;
use super::{Store, StoreError, append_event, corrupt};
use crate::event::{Event, EventKind};
use crate::id::{BodyHash, EntityId, NodeId};

const HASH_MIN: [u8; 32] = [0; 32];
const HASH_MAX: [u8; 32] = [0xff; 32];

/// A body withheld from a child: the anchors its scope follows, its record and its hash.
pub type WithheldBody = (Vec<String>, EntityId, BodyHash);

/// A verdict taken without a record it needed (`missed`, "type/uuid"): merging that record
/// here makes `anchor` due again for the child. `heads`: the record's heads when the verdict
/// was taken (none: not readable here at all); if they differ when the verdict is recorded, a
/// merge came in between and the anchor is due at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsure {
    pub missed: String,
    pub anchor: String,
    pub heads: Vec<[u8; 32]>,
}

/// What one pass over a child's due anchors decided ([`Store::settle_due`]).
#[derive(Clone, Debug, Default)]
pub struct Settled {
    /// Anchors with nothing inside the scope now: no longer due (unless a merge since says
    /// otherwise).
    pub idle: Vec<String>,
    /// Verdicts that missed a record.
    pub unsure: Vec<Unsure>,
    /// Bodies outside the scope whose verdict follows other anchors than the one they are
    /// remembered under: remembered under those too.
    pub refile: Vec<WithheldBody>,
    /// Entries whose body is not a change of the record they name (a child's false report):
    /// forgotten.
    pub forget: Vec<(String, BodyHash)>,
}

/// A due anchor and the bodies withheld under it (record, body hash).
pub type DueAnchor = (String, Vec<(EntityId, BodyHash)>);

/// What a child did with the bodies of one `Bodies` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodiesReport {
    /// Every body's hash, in order: what the child acknowledges (it is done with all of them).
    pub hashes: Vec<BodyHash>,
    /// Stored now (they were withheld here).
    pub stored: u64,
    /// Held already (another path brought them).
    pub held: u64,
    /// Not stored: never withheld here, or not a plain Automerge change chunk.
    pub refused: u64,
}

impl Store {
    /// Records the bodies withheld from `child` in one fetch, under each of their anchors, and
    /// marks due each anchor of `sent` (records whose changes travel with their bodies now)
    /// under which bodies were withheld from `child` before; `unsure` lists the verdicts taken
    /// without a record they needed ([`Unsure`]). No write transaction when there is nothing
    /// to record.
    pub fn note_withheld(
        &self,
        child: &NodeId,
        withheld: &[WithheldBody],
        sent: &BTreeSet<String>,
        unsure: &[Unsure],
    ) -> Result<(), StoreError> {
        let due: Vec<&String> = {
            let tx = self.db.begin_read()?;
            match tx.open_table(WITHHELD_FOR) {
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
                Ok(table) => {
                    let mut due = Vec::new();
                    for anchor in sent {
                        if has_entries(&table, child, anchor)? {
                            due.push(anchor);
                        }
                    }
                    due
                }
            }
        };
        if withheld.is_empty() && due.is_empty() && unsure.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(WITHHELD_FOR)?;
            for (anchors, entity, hash) in withheld {
                let key = entity.key();
                for anchor in anchors {
                    table.insert((&child.0, anchor.as_str(), &hash.0), key.as_str())?;
                }
            }
            let mut marks = tx.open_table(RESEND_DUE)?;
            for anchor in due {
                marks.insert((&child.0, anchor.as_str()), ())?;
            }
            for anchor in note_unsure(&tx, child, unsure)? {
                marks.insert((&child.0, anchor.as_str()), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Compares `scope` (a hash of the child's scope) with the one its entries were last
    /// checked against: if it differs, every anchor of `child` becomes due. Returns how many
    /// anchors were made due.
    pub fn check_withheld_scope(&self, child: &NodeId, scope: [u8; 32]) -> Result<u64, StoreError> {
        {
            let tx = self.db.begin_read()?;
            match tx.open_table(WITHHELD_SCOPE) {
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
                Ok(t) => {
                    if t.get(&child.0)?.is_some_and(|v| *v.value() == scope) {
                        return Ok(0);
                    }
                }
            }
        }
        let tx = self.db.begin_write()?;
        let mut count = 0;
        {
            let mut scopes = tx.open_table(WITHHELD_SCOPE)?;
            let had = scopes.insert(&child.0, &scope)?.is_some();
            if had {
                let table = tx.open_table(WITHHELD_FOR)?;
                let mut marks = tx.open_table(RESEND_DUE)?;
                let mut last: Option<String> = None;
                for item in table.range((&child.0, "", &HASH_MIN)..)? {
                    let (k, _) = item?;
                    let (node, anchor, _) = k.value();
                    if node != &child.0 {
                        break;
                    }
                    if last.as_deref() != Some(anchor) {
                        marks.insert((&child.0, anchor), ())?;
                        last = Some(anchor.to_string());
                        count += 1;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(count)
    }

    /// At most `max` due anchors of `child` after `after` (from the first if `None`), each
    /// with the bodies withheld under it.
    pub fn due_withheld(
        &self,
        child: &NodeId,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<DueAnchor>, StoreError> {
        let tx = self.db.begin_read()?;
        let (marks, table) = match (tx.open_table(RESEND_DUE), tx.open_table(WITHHELD_FOR)) {
            (Ok(m), Ok(t)) => (m, t),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in marks.range((&child.0, after.unwrap_or(""))..)? {
            let (k, _) = item?;
            let (node, anchor) = k.value();
            if node != &child.0 || out.len() >= max {
                break;
            }
            if Some(anchor) == after {
                continue;
            }
            let mut items = Vec::new();
            for e in table.range((&child.0, anchor, &HASH_MIN)..=(&child.0, anchor, &HASH_MAX))? {
                let (k, v) = e?;
                let entity: EntityId = v
                    .value()
                    .parse()
                    .map_err(|e| corrupt(format!("withheld-for entry {anchor}"), e))?;
                items.push((entity, BodyHash(*k.value().2)));
            }
            out.push((anchor.to_string(), items));
        }
        Ok(out)
    }

    /// The body of a change, if held here.
    pub fn body(&self, hash: &BodyHash) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let bodies = tx.open_table(BODIES)?;
        Ok(bodies.get(&hash.0)?.map(|v| v.value().to_vec()))
    }

    /// Records, in one transaction, what a pass over `child`'s due anchors decided
    /// ([`Settled`]): idle anchors stop being due, unless a record one of their verdicts missed
    /// was merged since (then they stay due, as a merge after this transaction would make them).
    pub fn settle_due(&self, child: &NodeId, settled: &Settled) -> Result<(), StoreError> {
        let Settled { idle, unsure, refile, forget } = settled;
        if idle.is_empty() && unsure.is_empty() && refile.is_empty() && forget.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(WITHHELD_FOR)?;
            for (anchors, entity, hash) in refile {
                let key = entity.key();
                for anchor in anchors {
                    table.insert((&child.0, anchor.as_str(), &hash.0), key.as_str())?;
                }
            }
            for (anchor, hash) in forget {
                table.remove((&child.0, anchor.as_str(), &hash.0))?;
            }
            let changed: BTreeSet<String> = note_unsure(&tx, child, unsure)?.into_iter().collect();
            let mut marks = tx.open_table(RESEND_DUE)?;
            for anchor in idle {
                if !changed.contains(anchor) {
                    marks.remove((&child.0, anchor.as_str()))?;
                }
            }
            for anchor in &changed {
                marks.insert((&child.0, anchor.as_str()), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether `body` is a change of `entity` here: merged into its document, queued in it, or
    /// received and not merged yet (one read transaction, so a merge cannot fall in between).
    pub fn is_change_of(&self, entity: &EntityId, body: &[u8]) -> Result<bool, StoreError> {
        let hash = BodyHash::of(body);
        let key = entity.key();
        let tx = self.db.begin_read()?;
        if let Ok(dirty) = tx.open_table(DIRTY)
            && let Some(list) = dirty.get(key.as_str())?
        {
            let fresh: Vec<BodyHash> = postcard::from_bytes(list.value())
                .map_err(|e| corrupt(format!("dirty list {key}"), e))?;
            if fresh.contains(&hash) {
                return Ok(true);
            }
        }
        let docs = tx.open_table(DOCS)?;
        let Some(v) = docs.get(key.as_str())? else { return Ok(false) };
        let rec = super::decode_doc(&key, v.value())?;
        if rec.queued.contains(&hash) {
            return Ok(true);
        }
        if rec.doc.is_empty() || !is_change_chunk(body) {
            return Ok(false);
        }
        let bytes = body.to_vec();
        let Ok(Ok(change)) = std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes))
        else {
            return Ok(false);
        };
        let doc = automerge::Automerge::load(&rec.doc)
            .map_err(|e| corrupt(format!("document {key}"), e))?;
        Ok(automerge::ReadDoc::get_change_by_hash(&doc, &change.hash()).is_some())
    }

    /// `child` acknowledged these re-sent bodies: they are no longer withheld from it. An
    /// anchor left without entries is no longer due. The audit log counts them.
    pub fn bodies_delivered(
        &self,
        child: &NodeId,
        items: &[(String, BodyHash)],
        time: i64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        let mut count = 0;
        {
            let mut table = tx.open_table(WITHHELD_FOR)?;
            let mut marks = tx.open_table(RESEND_DUE)?;
            let mut anchors = BTreeSet::new();
            for (anchor, hash) in items {
                if table.remove((&child.0, anchor.as_str(), &hash.0))?.is_some() {
                    count += 1;
                }
                anchors.insert(anchor.as_str());
            }
            for anchor in anchors {
                if !has_entries(&table, child, anchor)? {
                    marks.remove((&child.0, anchor))?;
                }
            }
        }
        if count > 0 {
            let kind = EventKind::BodiesResent { to: *child, bodies: count };
            append_event(&tx, Event { time, kind })?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records that `child` reported holes this node does not hold the bodies of yet, with the
    /// anchors they were taken over under: when a body arrives, its anchors become due.
    pub fn await_bodies(
        &self,
        child: &NodeId,
        items: &[(BodyHash, Vec<String>)],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(AWAITED)?;
            for (hash, anchors) in items {
                for anchor in anchors {
                    table.insert((&hash.0, &child.0, anchor.as_str()), ())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Up to `max` absent bodies a node other than the parent left out (`PEER_HOLES`), to
    /// report to the parent, in hash order.
    pub fn peer_holes(&self, max: usize) -> Result<Vec<(EntityId, BodyHash)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(PEER_HOLES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.iter()?.take(max) {
            let (hash, key) = item?;
            let entity: EntityId =
                key.value().parse().map_err(|e| corrupt("peer hole", format!("{e}")))?;
            out.push((entity, BodyHash(*hash.value())));
        }
        Ok(out)
    }

    /// The parent recorded these holes: they are its to re-send now.
    pub fn peer_holes_reported(&self, hashes: &[BodyHash]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(PEER_HOLES)?;
            for h in hashes {
                table.remove(&h.0)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores the bodies of a `Bodies` message from this node's parent `from`, in one write
    /// transaction: each body whose hash this node holds as withheld is stored, its withheld
    /// entry removed and its record marked for the next merge (where the changes that waited
    /// for it apply). Bodies never withheld here are not stored. The audit log counts each.
    pub fn receive_bodies(
        &self,
        from: &NodeId,
        bodies: Vec<Vec<u8>>,
        time: i64,
    ) -> Result<BodiesReport, StoreError> {
        let mut report = BodiesReport::default();
        let tx = self.db.begin_write()?;
        {
            let mut withheld = tx.open_table(WITHHELD)?;
            let mut peer_holes = tx.open_table(PEER_HOLES)?;
            let mut stored = tx.open_table(BODIES)?;
            let mut touched: BTreeMap<String, Vec<BodyHash>> = BTreeMap::new();
            for body in bodies {
                let hash = BodyHash::of(&body);
                report.hashes.push(hash);
                let key = withheld.get(&hash.0)?.map(|v| v.value().to_string());
                match key {
                    Some(key) if is_change_chunk(&body) => {
                        withheld.remove(&hash.0)?;
                        peer_holes.remove(&hash.0)?;
                        stored.insert(&hash.0, body.as_slice())?;
                        wake_awaited(&tx, &hash)?;
                        touched.entry(key).or_default().push(hash);
                        report.stored += 1;
                    }
                    None if stored.get(&hash.0)?.is_some() => report.held += 1,
                    _ => report.refused += 1,
                }
            }
            super::receive::mark_dirty(&tx, touched)?;
        }
        let (stored, held, refused) = (report.stored, report.held, report.refused);
        let kind = EventKind::BodiesReceived { from: *from, stored, held, refused };
        append_event(&tx, Event { time, kind })?;
        tx.commit()?;
        Ok(report)
    }
}

/// Whether bodies are withheld from `child` under `anchor`.
fn has_entries(
    table: &impl ReadableTable<(&'static [u8; 32], &'static str, &'static [u8; 32]), &'static str>,
    child: &NodeId,
    anchor: &str,
) -> Result<bool, StoreError> {
    let mut range = table.range((&child.0, anchor, &HASH_MIN)..=(&child.0, anchor, &HASH_MAX))?;
    Ok(range.next().transpose()?.is_some())
}

/// A plain (uncompressed) Automerge change chunk that decodes, as batch verification requires
/// (`src/batch.rs`): a merge must never meet a body it cannot load.
fn is_change_chunk(body: &[u8]) -> bool {
    if body.get(8) != Some(&1) {
        return false;
    }
    let bytes = body.to_vec();
    matches!(std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes)), Ok(Ok(_)))
}

/// Records the verdicts that missed a record (in `tx`); returns the anchors whose missed
/// record was merged since the verdict (they are due now, not waiting).
fn note_unsure(
    tx: &redb::WriteTransaction,
    child: &NodeId,
    unsure: &[Unsure],
) -> Result<Vec<String>, StoreError> {
    let mut changed = Vec::new();
    if unsure.is_empty() {
        return Ok(changed);
    }
    let docs = tx.open_table(DOCS)?;
    let mut waiting = tx.open_table(UNSURE)?;
    for u in unsure {
        let heads = match docs.get(u.missed.as_str())? {
            Some(v) => super::decode_doc_heads(&u.missed, v.value())?,
            None => Vec::new(),
        };
        if heads != u.heads {
            changed.push(u.anchor.clone());
        } else {
            waiting.insert((u.missed.as_str(), &child.0, u.anchor.as_str()), ())?;
        }
    }
    Ok(changed)
}

/// Records were merged (in the transaction `tx`): the verdicts that missed one of them are
/// taken again, as their anchors become due for their children.
pub(crate) fn wake_unsure(tx: &redb::WriteTransaction, keys: &[String]) -> Result<(), StoreError> {
    let mut unsure = tx.open_table(UNSURE)?;
    if unsure.is_empty()? {
        return Ok(());
    }
    let mut due = tx.open_table(RESEND_DUE)?;
    for key in keys {
        let waiting: Vec<([u8; 32], String)> = unsure
            .range((key.as_str(), &HASH_MIN, "")..=(key.as_str(), &HASH_MAX, "\u{10ffff}"))?
            .map(|item| item.map(|(k, _)| (*k.value().1, k.value().2.to_string())))
            .collect::<Result<_, _>>()?;
        for (child, anchor) in &waiting {
            due.insert((child, anchor.as_str()), ())?;
            unsure.remove((key.as_str(), child, anchor.as_str()))?;
        }
    }
    Ok(())
}

/// A body arrived (in the transaction `tx` stores it): the children that reported it as a hole
/// before this node held it get its anchors checked at their next session.
pub(crate) fn wake_awaited(tx: &redb::WriteTransaction, hash: &BodyHash) -> Result<(), StoreError> {
    let mut awaited = tx.open_table(AWAITED)?;
    let waiting: Vec<([u8; 32], String)> = awaited
        .range((&hash.0, &HASH_MIN, "")..=(&hash.0, &HASH_MAX, "\u{10ffff}"))?
        .map(|item| item.map(|(k, _)| (*k.value().1, k.value().2.to_string())))
        .collect::<Result<_, _>>()?;
    if waiting.is_empty() {
        return Ok(());
    }
    let mut due = tx.open_table(RESEND_DUE)?;
    for (child, anchor) in &waiting {
        due.insert((child, anchor.as_str()), ())?;
        awaited.remove((&hash.0, child, anchor.as_str()))?;
    }
    Ok(())
}
