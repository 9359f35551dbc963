//! The audit log: the node's events, append-only and hash-chained.
//!
//! Entry `n` is stored as `prev (32 B) ++ postcard(Event)` under key `n` in `audit-1`, where
//! `prev` is the hash of entry `n - 1` (32 zero bytes for the first). An entry's hash is
//! `blake3("sitesync audit v1" ‖ n (u64 BE) ‖ stored bytes)`. `meta-1["audit-head"]` holds the
//! last entry's number and hash, written in the same transaction as the entry, so removing or
//! editing the last entry is detected too. Entries are appended in the transaction of the work
//! they describe: an entry exists if and only if the work is durable.
//!
//! The chain detects an edited, deleted or reordered entry made by anyone who changes the store
//! file without recomputing every later hash; it does not stop someone holding the file and
//! willing to rewrite the whole chain (the parent's copy of a child's entries, issue 5, is the
//! defence against that).

use redb::{ReadableTable, ReadableTableMetadata};

use super::tables::{AUDIT, AUDIT_SENT, EVENTS, META, REMOTE_AUDIT};
use super::{StoreError, corrupt, encode};
use crate::event::Event;
use crate::id::NodeId;

const DOMAIN: &[u8] = b"sitesync audit v1";
const HEAD: &str = "audit-head";
/// `first kept n (u64 BE) ‖ link of that entry (32 B) ‖ signature (64 B)`: written by a
/// compaction; the chain is verified from it.
const CHECKPOINT: &str = "audit-checkpoint";

/// What a checkpoint's signature covers.
fn checkpoint_digest(node: &NodeId, first: u64, link: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("sitesync audit checkpoint v1");
    h.update(&node.0);
    h.update(&first.to_be_bytes());
    h.update(link);
    *h.finalize().as_bytes()
}

/// Removes the entries before `keep_from` and records a checkpoint signed by the node (`sign`
/// signs a digest with the node key), so the rest of the chain still verifies. Returns how many
/// entries were removed.
pub(crate) fn compact(
    tx: &redb::WriteTransaction,
    node: &NodeId,
    keep_from: u64,
    sign: &dyn Fn(&[u8; 32]) -> [u8; 64],
) -> Result<u64, StoreError> {
    migrate_events(tx)?;
    let link: [u8; 32] = {
        let audit = tx.open_table(AUDIT)?;
        let Some(v) = audit.get(keep_from)? else { return Ok(0) };
        v.value()
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("audit entry", "short"))?
    };
    let mut removed = 0;
    {
        let mut audit = tx.open_table(AUDIT)?;
        let old: Vec<u64> = audit
            .range(..keep_from)?
            .map(|item| item.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for k in old {
            audit.remove(k)?;
            removed += 1;
        }
    }
    if removed == 0 {
        return Ok(0);
    }
    let signature = sign(&checkpoint_digest(node, keep_from, &link));
    let mut cp = keep_from.to_be_bytes().to_vec();
    cp.extend_from_slice(&link);
    cp.extend_from_slice(&signature);
    tx.open_table(META)?.insert(CHECKPOINT, cp.as_slice())?;
    Ok(removed)
}

/// The hash of entry `n` with its stored bytes.
pub(crate) fn entry_hash(n: u64, stored: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(&n.to_be_bytes());
    h.update(stored);
    *h.finalize().as_bytes()
}

fn read_head(tx: &redb::WriteTransaction) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let meta = tx.open_table(META)?;
    let Some(v) = meta.get(HEAD)? else { return Ok(None) };
    parse_head(v.value()).map(Some)
}

fn parse_head(bytes: &[u8]) -> Result<(u64, [u8; 32]), StoreError> {
    if bytes.len() != 40 {
        return Err(corrupt("meta audit-head", "not 40 bytes"));
    }
    let n = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
    let hash: [u8; 32] = bytes[8..].try_into().unwrap_or([0; 32]);
    Ok((n, hash))
}

/// Appends `event` to the audit log inside `tx`.
pub(crate) fn append(tx: &redb::WriteTransaction, event: &Event) -> Result<(), StoreError> {
    migrate_events(tx)?;
    let (n, prev) = match read_head(tx)? {
        Some((n, hash)) => (n + 1, hash),
        None => (0, [0; 32]),
    };
    let mut stored = prev.to_vec();
    stored.extend(encode(event));
    let hash = entry_hash(n, &stored);
    tx.open_table(AUDIT)?.insert(n, stored.as_slice())?;
    let mut head = n.to_be_bytes().to_vec();
    head.extend_from_slice(&hash);
    tx.open_table(META)?.insert(HEAD, head.as_slice())?;
    Ok(())
}

/// Moves the entries of the unchained log of earlier stores (`events-1`) into the chain, once.
fn migrate_events(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let legacy: Vec<Vec<u8>> = {
        let events = tx.open_table(EVENTS)?;
        if events.is_empty()? {
            return Ok(());
        }
        events
            .iter()?
            .map(|item| item.map(|(_, v)| v.value().to_vec()))
            .collect::<Result<_, _>>()?
    };
    tx.open_table(EVENTS)?.retain(|_, _| false)?;
    for bytes in legacy {
        let event: Event = postcard::from_bytes(&bytes).map_err(|e| corrupt("event", e))?;
        append(tx, &event)?;
    }
    Ok(())
}

/// Reads the last `limit` entries (oldest first), including those still in `events-1`.
pub(crate) fn entries(
    tx: &redb::ReadTransaction,
    limit: usize,
) -> Result<Vec<(u64, Event)>, StoreError> {
    let mut out = Vec::new();
    if let Some(audit) = open_read(tx)? {
        for item in audit.iter()?.rev().take(limit) {
            let (k, v) = item?;
            let bytes = v.value();
            let event = bytes
                .get(32..)
                .ok_or_else(|| corrupt("audit entry", "shorter than its link"))
                .and_then(|b| postcard::from_bytes(b).map_err(|e| corrupt("audit entry", e)))?;
            out.push((k.value(), event));
        }
    }
    // Entries of a store written before the chain, not migrated yet (read-only use).
    if out.len() < limit {
        let events = tx.open_table(EVENTS)?;
        for item in events.iter()?.rev().take(limit - out.len()) {
            let (k, v) = item?;
            let event = postcard::from_bytes(v.value()).map_err(|e| corrupt("event", e))?;
            out.push((k.value(), event));
        }
    }
    out.reverse();
    Ok(out)
}

fn open_read(
    tx: &redb::ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, StoreError> {
    match tx.open_table(AUDIT) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What `audit verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// Every break in the chain, in order, in words.
    pub problems: Vec<String>,
}

/// Walks the chain and names every entry that was edited, deleted or moved. `node` checks the
/// signature of a compaction checkpoint.
pub(crate) fn verify(tx: &redb::ReadTransaction, node: &NodeId) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport::default();
    let Some(audit) = open_read(tx)? else { return Ok(report) };
    let meta = tx.open_table(META)?;
    // Where the chain starts: entry 0, or the entry a compaction kept first.
    let (mut expected_n, mut prev_hash) = (0u64, [0u8; 32]);
    if let Some(v) = meta.get(CHECKPOINT)? {
        let cp = v.value();
        let first = cp.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        let link: Option<[u8; 32]> = cp.get(8..40).and_then(|b| b.try_into().ok());
        let sig: Option<[u8; 64]> = cp.get(40..104).and_then(|b| b.try_into().ok());
        match (first, link, sig) {
            (Some(first), Some(link), Some(sig))
                if crate::identity::verify(node, &checkpoint_digest(node, first, &link), &sig) =>
            {
                (expected_n, prev_hash) = (first, link);
            }
            _ => report
                .problems
                .push("the compaction checkpoint is not signed by this node (edited)".into()),
        }
    }
    let mut stored: Vec<(u64, Vec<u8>)> = Vec::new();
    for item in audit.iter()? {
        let (k, v) = item?;
        stored.push((k.value(), v.value().to_vec()));
    }
    report.entries = stored.len() as u64;
    // Where each hash was found: an entry whose link names another entry than the one before it
    // was moved.
    let hashes: std::collections::HashMap<[u8; 32], u64> =
        stored.iter().map(|(n, bytes)| (entry_hash(*n, bytes), *n)).collect();
    for (n, bytes) in &stored {
        let n = *n;
        if n > expected_n {
            let missing = if n - expected_n == 1 {
                format!("entry {expected_n} was deleted")
            } else {
                format!("entries {expected_n} to {} were deleted", n - 1)
            };
            report.problems.push(missing);
        }
        let link: [u8; 32] = bytes.get(..32).and_then(|b| b.try_into().ok()).unwrap_or([0xff; 32]);
        if bytes.len() < 32 || postcard::from_bytes::<Event>(&bytes[32..]).is_err() {
            report.problems.push(format!("entry {n} is unreadable (edited)"));
        } else if n < expected_n {
            report.problems.push(format!("entry {n} is before the checkpoint (added)"));
        } else if n == expected_n && link != prev_hash {
            match hashes.get(&link) {
                Some(&j) if j != n.wrapping_sub(1) => report
                    .problems
                    .push(format!("entry {n} is out of order (it was written after entry {j})")),
                _ if n > 0 => report
                    .problems
                    .push(format!("entry {} was edited (entry {n} no longer matches it)", n - 1)),
                _ => report.problems.push(format!("entry {n} has a broken link")),
            }
        }
        prev_hash = entry_hash(n, bytes);
        expected_n = n + 1;
    }
    match meta.get(HEAD)? {
        Some(v) => {
            let (head_n, head_hash) = parse_head(v.value())?;
            if head_n + 1 > expected_n {
                let from = expected_n;
                report.problems.push(if head_n == from {
                    format!("entry {from} (the last) was deleted")
                } else {
                    format!("entries {from} to {head_n} (the last) were deleted")
                });
            } else if head_n + 1 < expected_n {
                report.problems.push(format!(
                    "entries after {head_n} were added outside the log (the head names {head_n})"
                ));
            } else if head_hash != prev_hash {
                report.problems.push(format!("entry {head_n} (the last) was edited"));
            }
        }
        None if !stored.is_empty() => {
            report.problems.push("the record of the last entry is missing".into());
        }
        None => {}
    }
    Ok(report)
}

/// This node's own entries from `from` on (at most `max`), as stored, for its parent.
pub(crate) fn since(
    tx: &redb::ReadTransaction,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let Some(audit) = open_read(tx)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in audit.range(from..)?.take(max) {
        let (k, v) = item?;
        out.push((k.value(), v.value().to_vec()));
    }
    Ok(out)
}

/// Where this node's next audit upload to `parent` starts.
pub(crate) fn cursor(tx: &redb::ReadTransaction, parent: &NodeId) -> Result<u64, StoreError> {
    match tx.open_table(AUDIT_SENT) {
        Ok(t) => Ok(t.get(&parent.0)?.map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn set_cursor(
    tx: &redb::WriteTransaction,
    parent: &NodeId,
    next: u64,
) -> Result<(), StoreError> {
    tx.open_table(AUDIT_SENT)?.insert(&parent.0, next)?;
    Ok(())
}

/// Stores a child's entries in its copy. An entry already held must be identical, and an entry
/// must link to the one before it when that one is held: otherwise the child's log was rewritten,
/// and the problem is returned (the held copy is kept). Entries that skip ahead of the copy are
/// stored too, and the skipped ones are returned as a problem: the child removed them (its
/// retention) before they were uploaded, and they will never come. Returns the entry after the
/// newest one held (where the child's next upload starts), and the problems found.
pub(crate) fn store_remote(
    tx: &redb::WriteTransaction,
    origin: &NodeId,
    entries: &[(u64, Vec<u8>)],
) -> Result<(u64, Vec<String>), StoreError> {
    let mut problems = Vec::new();
    let mut copy = tx.open_table(REMOTE_AUDIT)?;
    let newest = copy.range((&origin.0, 0)..=(&origin.0, u64::MAX))?.next_back().transpose()?;
    let mut next = newest.map_or(0, |(k, _)| k.value().1 + 1);
    for (n, stored) in entries {
        let (n, stored) = (*n, stored.as_slice());
        if stored.len() < 32 || postcard::from_bytes::<Event>(&stored[32..]).is_err() {
            problems.push(format!("entry {n} does not decode"));
            continue;
        }
        if let Some(held) = copy.get((&origin.0, n))? {
            if held.value() != stored {
                problems.push(format!("entry {n} differs from the copy held here (rewritten)"));
            }
            continue;
        }
        if let Some(n1) = n.checked_sub(1)
            && let Some(prev) = copy.get((&origin.0, n1))?
            && stored[..32] != entry_hash(n1, prev.value())
        {
            problems.push(format!("entry {n} does not link to entry {n1} held here"));
            continue;
        }
        if n > next {
            problems.push(format!(
                "entries {next} to {} never arrived: the child removed them before they were \
                 uploaded (its retention); the copy goes on from entry {n}",
                n - 1
            ));
        }
        copy.insert((&origin.0, n), stored)?;
        next = next.max(n + 1);
    }
    Ok((next, problems))
}

/// The last `limit` entries of a child's copy, oldest first.
pub(crate) fn remote_entries(
    tx: &redb::ReadTransaction,
    origin: &NodeId,
    limit: usize,
) -> Result<Vec<(u64, Event)>, StoreError> {
    let copy = match tx.open_table(REMOTE_AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in copy.range((&origin.0, 0)..=(&origin.0, u64::MAX))?.rev().take(limit) {
        let (k, v) = item?;
        let event =
            v.value().get(32..).ok_or_else(|| corrupt("audit copy entry", "short")).and_then(
                |b| postcard::from_bytes(b).map_err(|e| corrupt("audit copy entry", e)),
            )?;
        out.push((k.value().1, event));
    }
    out.reverse();
    Ok(out)
}
