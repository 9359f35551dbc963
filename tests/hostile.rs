//! Batches a trusted but buggy or compromised node could send, and restore-from-backup cases:
//! nothing may poison a document, half-apply a batch, depend on grouping, or strand a node.

use std::path::Path;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ExpandedChange, ROOT};
use serde_json::json;
use sitesync::batch::{BATCH_VERSION, Batch, ChangeRef, SignedBatch};
use sitesync::bundle::BundleWriter;
use sitesync::id::{AuthorId, BodyHash, EntityId, EntityType, Incarnation, NodeId, Vector};
use sitesync::identity::Keypair;
use sitesync::node::Node;

type Wire = (SignedBatch, Vec<Vec<u8>>);
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

fn author(k: &Keypair, inc: u64) -> AuthorId {
    AuthorId { node: k.node_id(), incarnation: Incarnation(inc) }
}

/// A first change by `a` putting `key = val` at the root of a new document.
fn simple(a: &AuthorId, key: &str, val: i64) -> Change {
    let mut d = Automerge::new();
    d.set_actor(ActorId::from(a.actor_bytes()));
    let mut tx = d.transaction();
    tx.put(ROOT, key, val).expect("put");
    tx.commit();
    d.get_changes(&[]).into_iter().next().expect("a change").clone()
}

/// Re-encodes `c` after editing its JSON form (to build ops Automerge would never emit).
fn mutate(c: &Change, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut j = serde_json::to_value(c.decode()).expect("json");
    j.as_object_mut().expect("object").remove("hash");
    f(&mut j);
    let e: ExpandedChange = serde_json::from_value(j).expect("expanded change");
    Change::from(e).raw_bytes().to_vec()
}

fn chain(k: &Keypair, a: AuthorId, per_batch: Vec<Vec<(EntityId, Vec<u8>)>>) -> Vec<Wire> {
    let mut prev = None;
    let mut out = vec![];
    for (i, items) in per_batch.into_iter().enumerate() {
        let changes =
            items.iter().map(|(e, b)| ChangeRef { entity: *e, body: BodyHash::of(b) }).collect();
        let batch = Batch { version: BATCH_VERSION, author: a, seq: i as u64 + 1, prev, changes };
        prev = Some(batch.hash());
        out.push((batch.sign(k), items.into_iter().map(|(_, b)| b).collect()));
    }
    out
}

fn bundle(path: &Path, exporter: NodeId, batches: Vec<Wire>) {
    let mut w = BundleWriter::create(path).expect("create");
    for (s, b) in batches {
        w.push(s, b).expect("push");
    }
    w.finish(exporter, 0, Vector::default()).expect("finish");
}

fn generic(n: u32) -> EntityId {
    format!("generic/00000000-0000-4000-8000-{n:012}").parse().expect("id")
}

fn hex_actor(a: &AuthorId) -> String {
    hex::encode(a.actor_bytes())
}

struct Net {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    evil: Keypair,
}

impl Net {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        Net { _tmp: tmp, dir, evil: Keypair::from_secret([0xee; 32]) }
    }

    /// A node that trusts the crafting key.
    fn node(&self, name: &str) -> Node {
        let mut n = Node::init(&self.dir.join(name), name).expect("init");
        n.trust_add(self.evil.node_id(), None).expect("trust");
        n
    }

    fn import(&self, node: &Node, batches: Vec<Wire>, name: &str) -> sitesync::node::ImportReport {
        let path = self.dir.join(name);
        bundle(&path, self.evil.node_id(), batches);
        node.import(&path, |_, _| {}).expect("import runs")
    }
}

fn digest(n: &Node) -> String {
    n.summary().expect("summary").digest.to_hex().to_string()
}

#[test]
fn a_change_on_an_unknown_object_is_left_out_and_the_record_stays_readable() {
    let net = Net::new();
    let d = net.node("d");
    let a = author(&net.evil, 0x9999);
    let base = simple(&a, "y", 1);
    let actor = hex_actor(&a);
    let poisoned = mutate(&base, |j| j["ops"][0]["obj"] = json!(format!("9@{actor}")));
    let r = net.import(&d, chain(&net.evil, a, vec![vec![(generic(1), poisoned)]]), "p.ssb");
    assert_eq!(r.applied.unmergeable.len(), 1, "reported: {:?}", r.applied);
    assert!(d.store.get(&generic(1)).expect("readable").is_none(), "the change is left out");
    let events = d.store.events(10).expect("events");
    assert!(events.iter().any(|(_, e)| e.kind.to_string().contains("could not be merged")));
    // The local node can still create and read the record.
    d.put(EntityType::Generic, &json!({"uuid": generic(1).uuid.to_string(), "x": 1})).expect("put");
    assert!(d.store.get(&generic(1)).expect("get").is_some());
}

#[test]
fn a_poisoned_document_among_many_is_left_out_alone() {
    // Enough documents that the merge runs on the reader + worker-thread pipeline.
    let net = Net::new();
    let d = net.node("d");
    let a = author(&net.evil, 0x4242);
    let actor = hex_actor(&a);
    let mut items: Vec<(EntityId, Vec<u8>)> = (0..150)
        .map(|i| (generic(i), simple(&a, "y", i64::from(i)).raw_bytes().to_vec()))
        .collect();
    let poisoned =
        mutate(&simple(&a, "y", 1), |j| j["ops"][0]["obj"] = json!(format!("9@{actor}")));
    items.insert(70, (generic(999), poisoned));
    let r = net.import(&d, chain(&net.evil, a, vec![items]), "many.ssb");
    assert_eq!(r.applied.unmergeable.len(), 1, "reported: {:?}", r.applied.unmergeable);
    assert_eq!(r.applied.unmergeable[0].0, generic(999));
    assert!(d.store.get(&generic(999)).expect("readable").is_none(), "the change is left out");
    for i in 0..150 {
        let (body, _) = d.store.get(&generic(i)).expect("get").expect("merged");
        assert_eq!(body["y"], json!(i), "document {i}");
    }
}

#[test]
fn other_malformed_ops_never_leave_an_unreadable_document() {
    let net = Net::new();
    let d = net.node("d");
    let a = author(&net.evil, 0x7777);
    let base = simple(&a, "y", 1);
    let actor = hex_actor(&a);
    let muts: Vec<Mutation> = vec![
        Box::new({
            let actor = actor.clone();
            move |j| j["ops"][0]["pred"] = json!([format!("5@{actor}")])
        }),
        Box::new({
            let actor = actor.clone();
            move |j| {
                j["ops"] = json!([
                    {"action": "set", "obj": "_root", "key": "s", "value": "x", "pred": []},
                    {"action": "set", "obj": format!("1@{actor}"), "key": "k", "value": 1, "pred": []}
                ])
            }
        }),
        Box::new(|j| j["seq"] = json!(1000)),
    ];
    let per: Vec<_> = muts
        .iter()
        .enumerate()
        .map(|(i, f)| vec![(generic(i as u32), mutate(&base, |j| f(j)))])
        .collect();
    let r = net.import(&d, chain(&net.evil, a, per), "w.ssb");
    for id in d.store.list(None).expect("list") {
        assert!(d.store.get(&id).is_ok(), "{id} must stay readable");
    }
    assert_eq!(d.store.vector().expect("vector").get(&a), r.applied.applied_batches);
    assert!(!r.applied.unmergeable.is_empty(), "the malformed changes are reported");
}

#[test]
fn duplicate_actor_seqs_are_left_out_the_same_way_in_any_grouping() {
    let net = Net::new();
    let a = author(&net.evil, 0xd00d);
    let c1 = simple(&a, "y", 1).raw_bytes().to_vec();
    let c2 = simple(&a, "y", 2).raw_bytes().to_vec();
    let honest = author(&net.evil, 1);
    let h1 = simple(&honest, "z", 5).raw_bytes().to_vec();
    let dup = chain(&net.evil, a, vec![vec![(generic(1), c1), (generic(1), c2)]]);
    let honest_batch = chain(&net.evil, honest, vec![vec![(generic(3), h1)]]);

    let one = net.node("one");
    let mut all = dup.clone();
    all.extend(honest_batch.clone());
    let r = net.import(&one, all, "all.ssb");
    assert_eq!(r.applied.unmergeable.len(), 1, "the duplicate seq is left out: {:?}", r.applied);

    let two = net.node("two");
    net.import(&two, honest_batch, "h.ssb");
    net.import(&two, dup, "d.ssb");
    assert_eq!(digest(&one), digest(&two));
    let kept = |n: &Node| n.store.get(&generic(1)).expect("get").expect("record").0;
    assert_eq!(kept(&one), kept(&two));
    assert_eq!(kept(&one)["y"], json!(1), "the first of the two changes is kept");
}

#[test]
fn a_compressed_change_chunk_is_refused_before_it_is_inflated() {
    let net = Net::new();
    let d = net.node("d");
    let a = author(&net.evil, 0xb0b);
    // An Automerge chunk header of type 2 (compressed change) with a small deflate payload.
    let mut body = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2, 3, 0x03, 0x00, 0x00];
    body.extend([0u8; 4]);
    let r = net.import(&d, chain(&net.evil, a, vec![vec![(generic(1), body)]]), "b.ssb");
    assert_eq!(r.applied.rejected.len(), 1);
    assert!(r.applied.rejected[0].reason.contains("uncompressed"), "{:?}", r.applied.rejected);
}

/// Copies `from` over `to` in place (the same inode), as restoring a file by overwriting does.
fn overwrite(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).expect("read backup");
    std::fs::write(to, bytes).expect("overwrite");
}

#[test]
fn a_node_that_sees_its_own_later_batch_moves_to_a_new_author() {
    let net = Net::new();
    let dir = net.dir.join("a");
    let a = Node::init(&dir, "a").expect("init");
    let own = a.store.author();
    a.put(EntityType::Generic, &json!({"uuid": generic(1).uuid.to_string(), "i": 1})).expect("put");
    drop(a);
    let backup = net.dir.join("backup.redb");
    std::fs::copy(dir.join("store.redb"), &backup).expect("backup");
    let a = Node::open(&dir).expect("open");
    for i in 2..4 {
        a.put(EntityType::Generic, &json!({"uuid": generic(i).uuid.to_string(), "i": i}))
            .expect("put");
    }
    let mut since = Vector::default();
    since.0.insert(own, 2);
    let only3 = net.dir.join("a3.ssb");
    a.export(&only3, &since, None, |_, _| {}).expect("export");
    drop(a);
    // Restored in place and the operator forgot `reincarnate`: the inode is the same.
    overwrite(&backup, &dir.join("store.redb"));
    let a = Node::open(&dir).expect("open restored");
    assert_eq!(a.store.author(), own, "an in-place restore cannot be seen at open");
    let r = a.import(&only3, |_, _| {}).expect("import");
    assert_eq!(r.applied.waiting, 1);
    assert!(r.applied.reincarnated.is_some(), "its own seq 3 shows the store is behind");
    assert_ne!(a.store.author(), own);
}

#[test]
fn a_restored_node_gets_back_what_it_lost_through_export_peer() {
    let net = Net::new();
    let (pdir, qdir) = (net.dir.join("p"), net.dir.join("q"));
    let mut p = Node::init(&pdir, "p").expect("init");
    let mut q = Node::init(&qdir, "q").expect("init");
    p.trust_add(q.id(), None).expect("trust");
    q.trust_add(p.id(), None).expect("trust");
    p.put(EntityType::Generic, &json!({"uuid": generic(1).uuid.to_string(), "x": 1})).expect("put");
    drop(p);
    let backup = net.dir.join("p-backup");
    std::fs::create_dir(&backup).expect("mkdir");
    for f in ["node.key", "sitesync.toml", "store.redb"] {
        std::fs::copy(pdir.join(f), backup.join(f)).expect("backup");
    }
    let p = Node::open(&pdir).expect("open");
    p.put(EntityType::Generic, &json!({"uuid": generic(1).uuid.to_string(), "x": 2})).expect("put");
    p.put(EntityType::Generic, &json!({"uuid": generic(3).uuid.to_string(), "y": 3})).expect("put");
    let b = net.dir.join("p1.ssb");
    p.export(&b, &Vector::default(), None, |_, _| {}).expect("export");
    q.import(&b, |_, _| {}).expect("import");
    drop(p);
    // Restore the backup (documented procedure: restore, then reincarnate).
    for f in ["node.key", "sitesync.toml", "store.redb"] {
        overwrite(&backup.join(f), &pdir.join(f));
    }
    let p = Node::open(&pdir).expect("open restored");
    p.reincarnate("restored from backup").expect("reincarnate");
    // P tells Q what it holds now; Q sends back what P lost.
    let b = net.dir.join("p2.ssb");
    let q_vector = q.store.vector().expect("vector");
    p.export(&b, &q_vector, Some(q.id()), |_, _| {}).expect("export");
    q.import(&b, |_, _| {}).expect("import");
    let b = net.dir.join("q1.ssb");
    let since = q.store.peer_vector(&p.id()).expect("peer").expect("known");
    q.export(&b, &since, Some(p.id()), |_, _| {}).expect("export");
    let r = p.import(&b, |_, _| {}).expect("import");
    assert!(r.applied.applied_batches >= 2, "P gets its two lost batches back: {r:?}");
    assert_eq!(digest(&p), digest(&q));
    assert_eq!(p.store.get(&generic(1)).expect("get").expect("record").0["x"], json!(2));
}
