//! Property tests of the CRDT laws at the store level: any order, duplication and chunking of the
//! same signed batches converges to the same digest, with nothing left waiting.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};
use sitesync::batch::SignedBatch;
use sitesync::config::TrustSet;
use sitesync::id::{EntityType, Incarnation, NodeId};
use sitesync::node::Node;
use sitesync::store::ApplyContext;

fn uuid(tag: u32, n: usize) -> String {
    format!("{tag:08x}-0000-4000-8000-{n:012x}")
}

fn patient(n: usize, birthdate: &str, city: Option<&str>) -> Value {
    let mut p = json!({
        "uuid": uuid(1, n),
        "identifiers": [{"uuid": uuid(2, n), "identifier": format!("ID-{n}"),
                         "identifierType": uuid(9, 0)}],
        "names": [{"uuid": uuid(3, n), "givenName": "Grace", "familyName": format!("F{n}")}],
        "gender": "F",
        "birthdate": birthdate,
    });
    if let Some(city) = city {
        p["addresses"] = json!([{"uuid": uuid(4, n), "cityVillage": city}]);
    }
    p
}

fn exchange(from: &Node, to: &Node, dir: &Path, name: &str) {
    let path = dir.join(name);
    from.export(&path, &to.store.vector().expect("vector"), None, |_, _| {}).expect("export");
    to.import(&path, |_, _| {}).expect("import");
}

type Batches = Vec<(SignedBatch, Vec<Vec<u8>>)>;

/// Three authors with dependent and concurrent edits: B and C edit A's patients (different
/// fields and the same field) after receiving A's creates, in several batches each.
fn history(dir: &Path) -> (Vec<NodeId>, Batches, String) {
    let nodes: Vec<Node> =
        ["a", "b", "c"].iter().map(|n| Node::init(&dir.join(n), n).expect("init")).collect();
    let ids: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    for mut node in nodes.into_iter() {
        for id in &ids {
            if *id != node.id() {
                node.trust_add(*id, None).expect("trust");
            }
        }
    }
    let nodes: Vec<Node> =
        ["a", "b", "c"].iter().map(|n| Node::open(&dir.join(n)).expect("open")).collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for round in 0..3 {
        let list: Vec<Value> =
            (round * 4..round * 4 + 4).map(|n| patient(n, "1980-01-01", None)).collect();
        a.put(EntityType::Patient, &Value::Array(list)).expect("put");
    }
    exchange(a, b, dir, "ab");
    exchange(a, c, dir, "ac");
    for n in 0..6 {
        b.put(EntityType::Patient, &patient(n, "1981-02-02", Some("Gulu"))).expect("put");
        c.put(EntityType::Patient, &patient(n, "1982-03-03", None)).expect("put");
    }
    b.put(EntityType::Patient, &patient(100, "1990-05-05", None)).expect("put");
    a.put(EntityType::Patient, &patient(7, "1980-01-01", Some("Lira"))).expect("put");
    // The reference: every node after a full exchange.
    exchange(b, a, dir, "ba");
    exchange(c, a, dir, "ca");
    let reference = a.summary().expect("summary").digest.to_hex().to_string();
    let mut batches = Vec::new();
    a.store
        .export_since::<sitesync::store::StoreError>(&Default::default(), |s, b| {
            batches.push((s, b));
            Ok(true)
        })
        .expect("export");
    (ids, batches, reference)
}

fn fixture() -> &'static (tempfile::TempDir, Vec<NodeId>, Batches, String) {
    static CELL: std::sync::OnceLock<(tempfile::TempDir, Vec<NodeId>, Batches, String)> =
        std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ids, batches, reference) = history(dir.path());
        (dir, ids, batches, reference)
    })
}

fn delivery() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    let n = fixture().2.len();
    let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
    let dups = proptest::collection::vec(0..n, 0..n);
    let chunks = proptest::collection::vec(1..6usize, 1..8);
    (order, dups, chunks)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_order_duplication_and_chunking_converges((order, dups, chunks) in delivery()) {
        let (_dir, ids, batches, reference) = fixture();
        let mut sequence = order.clone();
        for (i, d) in dups.iter().enumerate() {
            let at = (i * 7 + d) % (sequence.len() + 1);
            sequence.insert(at, *d);
        }
        let sink_dir = tempfile::tempdir().expect("tempdir");
        let sink = Node::init(&sink_dir.path().join("sink"), "sink").expect("init");
        let trust = TrustSet { own: sink.id(), others: ids.clone() };
        let mut rest = sequence.as_slice();
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let take = (*sizes.next().unwrap_or(&1)).min(rest.len());
            let (now, later) = rest.split_at(take);
            rest = later;
            let verified = now
                .iter()
                .map(|&i| {
                    let (s, b) = batches[i].clone();
                    s.verify(b, &trust, false).expect("genuine batches verify")
                })
                .collect();
            let ctx = ApplyContext {
                trust: &trust,
                from: None,
                refused: Vec::new(),
                fresh_incarnation: Incarnation(1),
                time: 0,
                threads: 2,
                give_up_after: 3,
                // Small and varying: a filled gap is taken out of waiting over several
                // transactions, which must not change the outcome either.
                promote_max: (take % 3 + 1, usize::MAX),
                from_parent: false,
                held_back: Box::new(|_, _| false),
            };
            let report = sink.store.apply(verified, ctx).expect("apply");
            prop_assert!(report.rejected.is_empty(), "rejected: {:?}", report.rejected);
            // Merging every few deliveries, as sessions do, must not change the outcome.
            if take % 2 == 0 {
                sink.merge_received().expect("merge");
            }
        }
        let merged = sink.merge_received().expect("merge");
        prop_assert!(merged.skipped.is_empty(), "skipped: {:?}", merged.skipped);
        let summary = sink.summary().expect("summary");
        prop_assert_eq!(summary.pending, 0);
        prop_assert_eq!(summary.digest.to_hex().to_string(), reference.clone());
    }
}

#[test]
fn the_fixture_really_has_concurrent_edits_and_dependencies() {
    let (_dir, _ids, batches, _) = fixture();
    let authors: std::collections::BTreeSet<_> = batches.iter().map(|(s, _)| s.author()).collect();
    assert_eq!(authors.len(), 3, "three authors");
    assert!(batches.len() >= 10, "several batches per author: {}", batches.len());
}
