//! Store operations for the admin view: a record's change history and paging through the audit
//! log.

use redb::{ReadableDatabase, ReadableTableMetadata};

use super::tables::{AUDIT, DOCS, EVENTS};
use super::{DocRecord, StoreError, corrupt, decode_doc};
use crate::entity::doc::{ChangeInfo, EntityDoc};
use crate::event::Event;
use crate::id::EntityId;

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
}
