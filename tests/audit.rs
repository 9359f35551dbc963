//! The audit log's hash chain: `audit verify` passes on an untouched log, and names the entry
//! when one was edited, deleted or moved in the store file.

mod net;

use net::*;
use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;
use sitesync::event::{Event, EventKind};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-1");

/// A node with a few entries: three writes, an export.
fn node_with_entries(parent: &std::path::Path, name: &str) -> Node {
    let n = Node::init(parent, name);
    for i in 0..3 {
        n.put("patient", &Value::Array(patients(&format!("{name}{i}"), 2)));
    }
    n.ok(&["export", "--out", p(&parent.join(format!("{name}.ssb")))]);
    let listed = n.ok(&["audit", "list"]);
    assert!(listed.lines().count() >= 4, "entries: {listed}");
    n
}

fn tamper(n: &Node, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    let db = Database::open(n.dir.join(sitesync::node::STORE_FILE)).expect("open store");
    let tx = db.begin_write().expect("write");
    {
        let mut t = tx.open_table(AUDIT).expect("audit table");
        f(&mut t);
    }
    tx.commit().expect("commit");
}

fn read(t: &redb::Table<u64, &[u8]>, k: u64) -> Vec<u8> {
    t.get(k).expect("get").expect("entry").value().to_vec()
}

fn verify(n: &Node) -> Run {
    n.run(&["audit", "verify"])
}

#[test]
fn audit_verify_names_edited_deleted_and_moved_entries() {
    let tmp = tempfile::tempdir().expect("tempdir");

    let intact = node_with_entries(tmp.path(), "intact");
    let r = verify(&intact);
    assert!(r.code == Some(0) && r.stdout.contains("intact"), "{}", r.describe());

    // Edit: entry 1's counts changed, its link kept.
    let edited = node_with_entries(tmp.path(), "edited");
    tamper(&edited, |t| {
        let bytes = read(t, 1);
        let mut event: Event = postcard::from_bytes(&bytes[32..]).expect("an event");
        if let EventKind::LocalWrite { records, .. } = &mut event.kind {
            *records += 100;
        } else {
            panic!("entry 1 is a write: {event:?}");
        }
        let mut out = bytes[..32].to_vec();
        out.extend(postcard::to_stdvec(&event).expect("encode"));
        t.insert(1, out.as_slice()).expect("insert");
    });
    let r = verify(&edited);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(r.stdout.contains("entry 1 was edited"), "{}", r.describe());

    // Delete: entry 2 removed.
    let deleted = node_with_entries(tmp.path(), "deleted");
    tamper(&deleted, |t| {
        t.remove(2).expect("remove");
    });
    let r = verify(&deleted);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(r.stdout.contains("entry 2 was deleted"), "{}", r.describe());

    // Reorder: entries 1 and 2 swapped.
    let moved = node_with_entries(tmp.path(), "moved");
    tamper(&moved, |t| {
        let (a, b) = (read(t, 1), read(t, 2));
        t.insert(1, b.as_slice()).expect("insert");
        t.insert(2, a.as_slice()).expect("insert");
    });
    let r = verify(&moved);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(r.stdout.contains("out of order"), "{}", r.describe());

    // The last entry removed: the head recorded with it says it existed.
    let cut = node_with_entries(tmp.path(), "cut");
    tamper(&cut, |t| {
        let last = t.last().expect("last").expect("an entry").0.value();
        t.remove(last).expect("remove");
    });
    let r = verify(&cut);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(r.stdout.contains("(the last) was deleted"), "{}", r.describe());

    // Tampering never stops the node: it still opens and answers.
    assert!(cut.ok(&["list"]).lines().count() == 6);
}

#[test]
fn compaction_keeps_a_verifiable_chain_from_a_signed_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = node_with_entries(tmp.path(), "kept");
    let r = n.run(&["audit", "compact"]);
    assert_eq!(r.code, Some(2), "no retention configured: {}", r.describe());
    let r = n.run(&["audit", "compact", "--keep-entries", "0"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let said = n.ok(&["audit", "compact", "--keep-entries", "2"]);
    assert!(said.contains("removed"), "{said}");
    let listed = n.ok(&["audit", "list"]);
    // The two kept entries and the compaction's own entry.
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains("audit log compacted"), "{listed}");
    let r = verify(&n);
    assert!(r.code == Some(0) && r.stdout.contains("intact"), "{}", r.describe());

    // A forged checkpoint (moved to hide an entry) no longer verifies.
    let db = Database::open(n.dir.join(sitesync::node::STORE_FILE)).expect("open store");
    let meta_def: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
    let tx = db.begin_write().expect("write");
    {
        let mut meta = tx.open_table(meta_def).expect("meta");
        let mut cp =
            meta.get("audit-checkpoint").expect("get").expect("a checkpoint").value().to_vec();
        let first = u64::from_be_bytes(cp[..8].try_into().expect("8"));
        cp[..8].copy_from_slice(&(first + 1).to_be_bytes());
        meta.insert("audit-checkpoint", cp.as_slice()).expect("insert");
    }
    tx.commit().expect("commit");
    drop(db);
    let r = verify(&n);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(r.stdout.contains("checkpoint is not signed"), "{}", r.describe());
}

#[test]
fn a_parent_keeps_a_copy_of_a_child_log_and_notices_a_rewrite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let child = sitesync::node::Node::init(&tmp.path().join("c"), "clinic").expect("child");
    let parent = sitesync::node::Node::init(&tmp.path().join("p"), "district").expect("parent");
    child.put(sitesync::id::EntityType::Patient, &Value::Array(patients("c", 3))).expect("put");
    child.config_changed("a change".into()).expect("entry");
    let entries = child.store.audit_for_parent(&parent.id(), 100).expect("entries");
    assert!(entries.len() >= 2);
    let next = parent.store.store_child_audit(&child.id(), &entries, 1).expect("store");
    assert_eq!(next, entries.len() as u64);
    // Sent again (an ack was lost): nothing changes, nothing is reported.
    let again = parent.store.store_child_audit(&child.id(), &entries, 2).expect("store");
    assert_eq!(again, next);
    let copy = parent.store.child_audit(&child.id(), 100).expect("copy");
    assert_eq!(copy.len(), entries.len());
    assert!(
        !parent
            .store
            .events(100)
            .expect("events")
            .iter()
            .any(|(_, e)| e.kind.to_string().contains("audit log of"))
    );
    // The child's log rewritten: entry 0 differs from the copy; entry 1 no longer links.
    let mut forged = entries.clone();
    forged[0].1[40] ^= 1;
    parent.store.store_child_audit(&child.id(), &forged[..1], 3).expect("store");
    let mut unlinked = entries.clone();
    unlinked[1].1[0] ^= 1;
    let mut fresh = parent.store.child_audit(&child.id(), 100).expect("copy").len() as u64;
    unlinked[1].0 = fresh;
    fresh += 1;
    parent.store.store_child_audit(&child.id(), &unlinked[1..2], 4).expect("store");
    let log: Vec<String> =
        parent.store.events(100).expect("events").iter().map(|(_, e)| e.kind.to_string()).collect();
    assert!(log.iter().any(|l| l.contains("entry 0 differs")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("does not link")), "{log:#?}");
    assert_eq!(
        parent.store.child_audit(&child.id(), 100).expect("copy").len() as u64,
        fresh - 1,
        "the held copy is kept"
    );
}

/// `[audit] keep_days = 365` and `keep_entries = N` keep the larger part of the log: when the
/// clock jumps two years ahead, every entry is older than a year, and still the last N stay
/// (what `serve` applies at start, `Node::compact_audit` with the configured retention).
#[test]
fn retention_keeps_the_larger_part_of_the_log() {
    use sitesync::node::Env;
    const N: u64 = 100_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("clinic");
    let mut node = sitesync::node::Node::init(&dir, "clinic").expect("init");
    node.config.retention =
        sitesync::config::Retention { keep_days: Some(365), keep_entries: Some(N) };
    node.save_config().expect("save config");
    for i in 0..N + 100 {
        node.config_changed(format!("entry {i}")).expect("entry");
    }
    let before = node.store.events(usize::MAX).expect("events");
    drop(node);
    let two_years = 2 * 366 * 86_400;
    let later =
        sitesync::node::Node::open_with_env(&dir, std::sync::Arc::new(SkewedClock(two_years)))
            .expect("reopen two years later");
    assert!(
        later.store.events(1).expect("newest")[0].1.time
            < SkewedClock(two_years).now_secs() - 365 * 86_400
    );
    let removed = later.compact_audit(None, None).expect("retention");
    let after = later.store.events(usize::MAX).expect("events");
    let last_n = &before[before.len() - N as usize..];
    assert!(removed > 0 && removed <= 100, "only entries beyond the last {N} go: {removed}");
    assert_eq!(&after[..N as usize], last_n, "the last {N} entries are all kept, unchanged");
    let r = later.store.verify_audit().expect("verify");
    assert!(r.problems.is_empty(), "the kept chain verifies: {:?}", r.problems);
}

/// A child whose retention removed entries it never uploaded: its parent records the gap as a
/// problem in its own audit log, stores what exists, and the upload carries on from there
/// (before, the parent's cursor stayed at the gap and the copy stalled).
#[test]
fn a_gap_in_a_child_log_is_reported_and_the_copy_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let child = sitesync::node::Node::init(&tmp.path().join("c"), "clinic").expect("child");
    let parent = sitesync::node::Node::init(&tmp.path().join("p"), "district").expect("parent");
    for i in 0..5 {
        child.config_changed(format!("early {i}")).expect("entry");
    }
    let first = child.store.audit_for_parent(&parent.id(), 100).expect("entries");
    let next = parent.store.store_child_audit(&child.id(), &first, 1).expect("store");
    child.store.audit_acked(&parent.id(), next).expect("ack");
    for i in 0..10 {
        child.config_changed(format!("unsent {i}")).expect("entry");
    }
    // The child keeps only its last 3 entries: most of the unsent ones are gone.
    child.compact_audit(Some(3), None).expect("compact");
    let rest = child.store.audit_for_parent(&parent.id(), 100).expect("entries");
    assert!(rest[0].0 > next, "the child skips ahead: {} after {next}", rest[0].0);
    let newest = rest.last().expect("an entry").0;
    let next = parent.store.store_child_audit(&child.id(), &rest, 2).expect("store");
    assert_eq!(next, newest + 1, "the copy goes on past the gap");
    let problems: Vec<String> = parent
        .store
        .events(100)
        .expect("events")
        .iter()
        .map(|(_, e)| e.kind.to_string())
        .filter(|t| t.contains("never arrived"))
        .collect();
    assert_eq!(problems.len(), 1, "the gap is recorded once: {problems:?}");
    child.store.audit_acked(&parent.id(), next).expect("ack");
    child.config_changed("after the gap".into()).expect("entry");
    let more = child.store.audit_for_parent(&parent.id(), 100).expect("entries");
    assert_eq!(more.len(), 1, "only the new entry is sent");
    assert_eq!(parent.store.store_child_audit(&child.id(), &more, 3).expect("store"), next + 1);
    let copy = parent.store.child_audit(&child.id(), 100).expect("copy");
    assert!(copy.iter().any(|(_, e)| e.kind.to_string().contains("after the gap")));
}
