//! The conflict registry: which records have fields with concurrent values, updated in the
//! transaction that merges them.

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::tables::{CONFLICT_INDEX, CONFLICTS};
use super::{StoreError, append_event, corrupt, encode};
use crate::conflict::Conflict;
use crate::entity::doc::EntityDoc;
use crate::event::{Event, EventKind};
use crate::id::EntityId;

/// Whether `key` has conflicts on record (open or closed).
pub(crate) fn has_entries(tx: &redb::WriteTransaction, key: &str) -> Result<bool, StoreError> {
    Ok(tx.open_table(CONFLICT_INDEX)?.get(key)?.is_some())
}

/// Brings the registry of `entity` in line with `doc`: new conflicts are recorded, those whose
/// values were superseded are closed. Both are written to the audit log (ids and paths only).
pub(crate) fn update(
    tx: &redb::WriteTransaction,
    entity: EntityId,
    doc: &EntityDoc,
    time: i64,
) -> Result<(), StoreError> {
    let key = entity.key();
    let current: BTreeMap<String, Conflict> = doc
        .conflicts()
        .iter()
        .map(|c| {
            let c = Conflict::from_field(entity, c, time);
            (c.id.clone(), c)
        })
        .collect();
    let mut index = tx.open_table(CONFLICT_INDEX)?;
    let mut ids: Vec<String> = match index.get(key.as_str())? {
        Some(v) => postcard::from_bytes(v.value()).map_err(|e| corrupt("conflict index", e))?,
        None => Vec::new(),
    };
    if ids.is_empty() && current.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(CONFLICTS)?;
    let mut events = Vec::new();
    for id in &ids {
        if current.contains_key(id) {
            continue;
        }
        let Some(v) = table.get(id.as_str())?.map(|v| v.value().to_vec()) else { continue };
        let mut c: Conflict = postcard::from_bytes(&v).map_err(|e| corrupt("conflict", e))?;
        if c.closed.is_none() {
            c.closed = Some(time);
            table.insert(id.as_str(), encode(&c).as_slice())?;
            events.push(EventKind::ConflictClosed { id: id.clone(), entity, path: c.path });
        }
    }
    for (id, c) in current {
        if table.get(id.as_str())?.is_some() {
            continue;
        }
        events.push(EventKind::ConflictDetected {
            id: id.clone(),
            entity,
            path: c.path.clone(),
            values: c.values.len() as u64,
        });
        table.insert(id.as_str(), encode(&c).as_slice())?;
        ids.push(id);
    }
    index.insert(key.as_str(), encode(&ids).as_slice())?;
    drop((table, index));
    for kind in events {
        append_event(tx, Event { time, kind })?;
    }
    Ok(())
}

/// Every conflict on record, newest first.
pub(crate) fn list(tx: &redb::ReadTransaction) -> Result<Vec<Conflict>, StoreError> {
    let table = match tx.open_table(CONFLICTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in table.iter()? {
        let (_, v) = item?;
        out.push(postcard::from_bytes::<Conflict>(v.value()).map_err(|e| corrupt("conflict", e))?);
    }
    out.sort_by(|a, b| b.seen.cmp(&a.seen).then(a.id.cmp(&b.id)));
    Ok(out)
}
