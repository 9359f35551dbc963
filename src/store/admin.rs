//! Store operations for the admin view: a record's change history and paging through the audit
//! log.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::tables::{AUDIT, BATCHES, BODIES, DOCS, EVENTS, REMOTE_AUDIT};
use super::{DocRecord, StoreError, corrupt, decode_doc};
use crate::entity::doc::{ChangeInfo, EntityDoc};
use crate::event::Event;
use crate::id::{EntityId, NodeId};

/// Events, newest first, and the number to continue below (if any may remain).
pub type EventPage = (Vec<(u64, Event)>, Option<u64>);

impl super::Store {
    /// The last `limit` changes of record `id` (oldest first), or `None` if there is no such
    /// record.
    pub fn history(
        &self,
        id: &EntityId,
        limit: usize,
    ) -> Result<Option<Vec<ChangeInfo>>, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let key = id.key();
        let Some(v) = docs.get(key.as_str())? else { return Ok(None) };
        let rec: DocRecord = decode_doc(&key, v.value())?;
        if rec.doc.is_empty() {
            return Ok(None);
        }
        Ok(Some(EntityDoc::load(&rec.doc)?.history(limit)))
    }

    /// Events numbered below `before` (all when `None`), newest first, that `keep` accepts: at
    /// most `limit`. Also returns the number to pass as `before` for the next page, if any
    /// event may remain.
    pub fn events_page(
        &self,
        before: Option<u64>,
        limit: usize,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Result<EventPage, StoreError> {
        let tx = self.db.begin_read()?;
        // The audit log (entries are `link ‖ event`); a store whose old event log has not
        // moved into it yet reads that one.
        let (events, linked) = match tx.open_table(AUDIT) {
            Ok(t) if !t.is_empty()? => (t, true),
            _ => (tx.open_table(EVENTS)?, false),
        };
        let mut out = Vec::new();
        let range = match before {
            Some(b) => events.range(..b)?,
            None => events.range(0..)?,
        };
        for item in range.rev() {
            let (k, v) = item?;
            let bytes = if linked { v.value().get(32..).unwrap_or_default() } else { v.value() };
            let event: Event = postcard::from_bytes(bytes).map_err(|e| corrupt("event", e))?;
            if !keep(&event) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|(n, _): &(u64, Event)| *n);
                return Ok((out, next));
            }
            out.push((k.value(), event));
        }
        Ok((out, None))
    }

    /// Like [`Self::events_page`], over the copy this node keeps of child `origin`'s audit log
    /// (numbered as the child numbers them).
    pub fn remote_events_page(
        &self,
        origin: &NodeId,
        before: Option<u64>,
        limit: usize,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Result<EventPage, StoreError> {
        let tx = self.db.begin_read()?;
        let copy = match tx.open_table(REMOTE_AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
            Err(e) => return Err(e.into()),
        };
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for item in copy.range((&origin.0, 0)..(&origin.0, end))?.rev() {
            let (k, v) = item?;
            let bytes = v.value().get(32..).ok_or_else(|| corrupt("audit copy entry", "short"))?;
            let event: Event =
                postcard::from_bytes(bytes).map_err(|e| corrupt("audit copy entry", e))?;
            if !keep(&event) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|(n, _): &(u64, Event)| *n);
                return Ok((out, next));
            }
            out.push((k.value().1, event));
        }
        Ok((out, None))
    }

    /// When node `node` wrote the newest change of its authoring that this node holds (seconds
    /// since the Unix epoch, as the author's clock said): how fresh its data is here, for any
    /// node of the network, however many tiers away. `None` if nothing of it is held (or only
    /// withheld bodies).
    pub fn newest_change_time(&self, node: &NodeId) -> Result<Option<i64>, StoreError> {
        let vector = self.vector()?;
        let tx = self.db.begin_read()?;
        let (batches, bodies) = match (tx.open_table(BATCHES), tx.open_table(BODIES)) {
            (Ok(b), Ok(d)) => (b, d),
            _ => return Ok(None),
        };
        let mut newest = None;
        for (author, seq) in vector.0.iter().filter(|(a, s)| a.node == *node && **s > 0) {
            let Some(v) = batches.get((&author.actor_bytes(), *seq))? else { continue };
            let (_, signed) = super::decode_batch(v.value())?;
            let Some(last) = signed.batch.changes.last() else { continue };
            let Some(body) = bodies.get(&last.body.0)? else { continue };
            if body.value().is_empty() {
                continue;
            }
            let change = automerge::Change::from_bytes(body.value().to_vec())
                .map_err(|e| corrupt(format!("body {}", last.body), e))?;
            newest = newest.max(Some(change.timestamp()));
        }
        Ok(newest)
    }

    /// The children whose audit entries this node keeps a copy of.
    pub fn audit_origins(&self) -> Result<Vec<NodeId>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let tx = self.db.begin_read()?;
        let copy = match tx.open_table(REMOTE_AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out: Vec<NodeId> = Vec::new();
        // One lookup per origin: jump past each origin's entries instead of reading them all.
        let mut first = copy.first()?.map(|(k, _)| *k.value().0);
        while let Some(origin) = first {
            out.push(NodeId(origin));
            let mut after = copy.range((Excluded((&origin, u64::MAX)), Unbounded))?;
            first = after.next().transpose()?.map(|(k, _)| *k.value().0);
        }
        Ok(out)
    }
}
