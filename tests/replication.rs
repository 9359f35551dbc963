//! End-to-end tests of replication as a user runs it: the real `sitesync` binary, node
//! directories in temporary folders, bundle files carried between nodes.
//!
//! Random choices (records, sampled records, corrupted bits, kill delays) come from a seed that
//! each test prints on stderr; set `SITESYNC_TEST_SEED=<n>` to replay a run.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// An OpenMRS identifier type uuid (metadata sitesync does not store).
const ID_TYPE: &str = "8d79403a-c2cc-11de-8d13-0010c6dffd0f";

// Running the binary: the helpers shared with the network tests (tests/net/mod.rs).
mod net;
use net::{Run, command, p, run, run_with};

fn seeded(test: &str) -> StdRng {
    let seed =
        std::env::var("SITESYNC_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(
            || SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
        );
    eprintln!("{test}: seed {seed} (SITESYNC_TEST_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

fn uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid().hyphenated().to_string()
}

/// A valid patient record, numbered `n` (in the form `get` prints it back: single-item lists).
fn patient(rng: &mut StdRng, n: usize) -> Value {
    const GIVEN: [&str; 6] = ["Amina", "Joseph", "Grace", "Peter", "Wanjiru", "Samuel"];
    const FAMILY: [&str; 5] = ["Okello", "Mwangi", "Achieng", "Kamau", "Otieno"];
    let gender = ["M", "F", "U", "O"][n % 4];
    json!({
        "uuid": uuid(rng),
        "identifiers": [{"uuid": uuid(rng), "identifier": format!("MRN-{n:06}"), "identifierType": ID_TYPE}],
        "names": [{"uuid": uuid(rng), "givenName": GIVEN[n % 6], "familyName": FAMILY[n % 5]}],
        "gender": gender,
        "birthdate": format!("{:04}-{:02}-{:02}", 1940 + n % 80, 1 + n % 12, 1 + n % 28),
    })
}

fn uuid_of(record: &Value) -> &str {
    record["uuid"].as_str().expect("record uuid")
}

// ---------------------------------------------------------------------------------------------
// A node directory
// ---------------------------------------------------------------------------------------------

struct Node {
    dir: PathBuf,
    id: String,
}

impl Node {
    /// `sitesync init --dir PARENT/NAME --name NAME`; checks it prints the node id.
    fn init(parent: &Path, name: &str) -> Node {
        let dir = parent.join(name);
        let r = run(None, &["init", "--dir", p(&dir), "--name", name]);
        assert_eq!(r.code, Some(0), "init {name}: {}", r.describe());
        let id = r.stdout.trim().to_string();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "init prints the node id (64 lowercase hex), got {:?}",
            r.stdout
        );
        Node { dir, id }
    }

    fn run(&self, args: &[&str]) -> Run {
        run(Some(&self.dir), args)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.code == Some(0) && !r.panicked(),
            "sitesync --dir {} {}: {}",
            self.dir.display(),
            args.join(" "),
            r.describe()
        );
        r.stdout
    }

    fn trust(&self, other: &Node) {
        let out = self.ok(&["trust", "add", &other.id]);
        assert_eq!(out.trim(), format!("trusted {}", other.id));
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json prints JSON")
    }

    fn digest(&self) -> String {
        self.status()["digest"].as_str().expect("digest").to_string()
    }

    fn author(&self) -> String {
        self.status()["author"].as_str().expect("author").to_string()
    }

    /// `put TYPE -` with the JSON on standard input.
    fn put_run(&self, ty: &str, value: &Value) -> Run {
        let mut c = command(Some(&self.dir));
        c.args(["put", ty, "-"]);
        run_with(c, Some(serde_json::to_vec(value).expect("encode")))
    }

    /// A put that must succeed and change every record; returns the printed ids.
    fn put(&self, ty: &str, value: &Value) -> Vec<String> {
        let r = self.put_run(ty, value);
        assert!(r.code == Some(0) && !r.panicked(), "put {ty}: {}", r.describe());
        let lines: Vec<String> = r.stdout.lines().map(str::to_string).collect();
        let n = value.as_array().map_or(1, Vec::len);
        assert_eq!(lines.len(), n, "put prints one line per record: {}", r.stdout);
        assert!(
            lines.iter().all(|l| !l.contains("unchanged")),
            "every record was new or edited: {}",
            r.stdout
        );
        lines
    }

    fn get_text(&self, ty: &str, uuid: &str) -> String {
        self.ok(&["get", ty, uuid])
    }

    fn get(&self, ty: &str, uuid: &str) -> Value {
        serde_json::from_str(&self.get_text(ty, uuid)).expect("get prints JSON")
    }

    fn list(&self, ty: &str) -> Vec<String> {
        self.ok(&["list", ty]).lines().map(str::to_string).collect()
    }

    fn export(&self, out: &Path, extra: &[&str]) -> String {
        let mut args = vec!["export", "--out", p(out)];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    fn import(&self, bundle: &Path) -> Run {
        self.run(&["import", p(bundle)])
    }
}

/// The seq a status shows for `author` (0 if the author is absent).
fn seq_of(status: &Value, author: &str) -> u64 {
    status["vector"].get(author).map_or(0, |v| v.as_u64().expect("seq is a number"))
}

fn patients_in(status: &Value) -> u64 {
    status["entities"].get("patient").map_or(0, |v| v.as_u64().expect("count"))
}

fn exported_batches(out: &str) -> u64 {
    let rest = out.strip_prefix("exported ").unwrap_or_else(|| panic!("export output: {out}"));
    rest.split(' ').next().and_then(|n| n.parse().ok()).expect("batch count")
}

fn has_line(out: &str, prefix: &str) -> bool {
    out.lines().any(|l| l.starts_with(prefix))
}

/// Asserts an import succeeded and applied `applied` batches with `present` already held.
fn assert_imported(r: &Run, applied: u64, present: u64) {
    assert!(r.code == Some(0) && !r.panicked(), "import: {}", r.describe());
    assert!(has_line(&r.stdout, &format!("applied: {applied} batches")), "{}", r.describe());
    assert!(
        has_line(&r.stdout, &format!("already present: {present} batches")),
        "{}",
        r.describe()
    );
    assert!(has_line(&r.stdout, "rejected: 0 batches"), "{}", r.describe());
}

/// Frame boundaries of a bundle, from the format in the `bundle` module docs:
/// `(offset where frames start, end offset of each frame, offset of the trailer)`.
fn frame_layout(bytes: &[u8]) -> (usize, Vec<usize>, usize) {
    assert_eq!(&bytes[..8], b"SSBNDL\r\n", "bundle magic");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1, "bundle version");
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let frames_start = 14 + u32_at(10) as usize + 32;
    let trailer = bytes.len() - 40;
    assert_eq!(&bytes[trailer..trailer + 8], b"SSBEND\r\n", "trailer magic");
    let mut ends = Vec::new();
    let mut at = frames_start;
    while at < trailer {
        at += 4 + u32_at(at) as usize + 32;
        ends.push(at);
    }
    assert_eq!(at, trailer, "frames fill the frame section");
    (frames_start, ends, trailer)
}

/// Problems with a failed run that should have printed one clear error line.
fn error_problems(what: &str, r: &Run, code: i32, needles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if r.code != Some(code) {
        out.push(format!("{what}: exit code {:?}, expected {code}", r.code));
    }
    if r.panicked() {
        out.push(format!("{what}: panicked"));
    }
    if r.stderr.lines().count() != 1 || !r.stderr.ends_with('\n') {
        out.push(format!("{what}: stderr is not exactly one line"));
    }
    for n in needles {
        if !r.stderr.contains(n) {
            out.push(format!("{what}: the message does not mention {n:?}"));
        }
    }
    if !out.is_empty() {
        out.push(format!("    ({what}) {}", r.describe().replace('\n', "\n    ")));
    }
    out
}

fn assert_no_problems(problems: &[String]) {
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 0. init
// ---------------------------------------------------------------------------------------------

#[test]
fn init_creates_a_private_key_and_an_empty_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let key = a.dir.join("node.key");
    let mode = std::fs::metadata(&key).expect("node.key exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "node.key must be readable by its owner only, got {mode:o}");
    assert!(a.dir.join("sitesync.toml").is_file() && a.dir.join("store.redb").is_file());
    assert_eq!(a.ok(&["id"]).trim(), a.id, "`id` prints the id `init` printed");
    let s = a.status();
    assert_eq!(s["node_id"], json!(a.id));
    assert_eq!(s["name"], json!("clinic-a"));
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(0), Some(0)));
    assert_eq!(s["entities"], json!({}));
    let b = Node::init(tmp.path(), "clinic-b");
    assert_ne!(a.id, b.id, "every node gets its own key");
}

// ---------------------------------------------------------------------------------------------
// 1. A bundle carries 1,000 patients and 100 edits
// ---------------------------------------------------------------------------------------------

#[test]
fn bundle_replicates_1000_patients_and_100_edits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bundle_replicates_1000_patients_and_100_edits");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    a.trust(&b);
    b.trust(&a);

    let mut patients: Vec<Value> = (0..1000).map(|n| patient(&mut rng, n)).collect();
    // One put of the whole list, from a file.
    let file = tmp.path().join("patients.json");
    std::fs::write(&file, serde_json::to_vec(&patients).expect("encode")).expect("write");
    let out = a.ok(&["put", "patient", p(&file)]);
    let expected: Vec<String> =
        patients.iter().map(|r| format!("patient/{}", uuid_of(r))).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "put prints TYPE/UUID per record");

    // 100 edits in 4 puts: 50 new birthdates, 50 added addresses.
    let mut order: Vec<usize> = (0..patients.len()).collect();
    order.shuffle(&mut rng);
    let edited: Vec<usize> = order[..100].to_vec();
    for (k, chunk) in edited.chunks(25).enumerate() {
        let mut list = Vec::new();
        for &i in chunk {
            let rec = &mut patients[i];
            if k < 2 {
                rec["birthdate"] = json!(format!("{}-06-{:02}", 2020 + i % 5, 1 + i % 28));
            } else {
                rec["addresses"] = json!([{
                    "uuid": uuid(&mut rng),
                    "address1": format!("Plot {i}"),
                    "cityVillage": "Kisumu",
                    "country": "Kenya",
                }]);
            }
            list.push(rec.clone());
        }
        a.put("patient", &Value::Array(list));
    }
    let sa = a.status();
    assert_eq!(patients_in(&sa), 1000);
    assert_eq!(sa["batches"], json!(5), "one batch per put");

    let bundle = tmp.path().join("a-to-b.ssb");
    let out = a.export(&bundle, &[]);
    assert!(out.starts_with("exported 5 batches (1100 changes, "), "{out}");
    let r = b.import(&bundle);
    assert_imported(&r, 5, 0);
    assert!(r.stdout.contains("applied: 5 batches (1100 changes)"), "{}", r.stdout);

    let sb = b.status();
    assert_eq!(sb["digest"], sa["digest"], "A and B hold the same state");
    assert_eq!(sb["vector"], sa["vector"]);
    assert_eq!(sb["entities"], sa["entities"]);
    assert_eq!(sb["batches"], sa["batches"]);
    assert_eq!(sb["pending_batches"], json!(0));

    let (la, lb) = (a.list("patient"), b.list("patient"));
    assert_eq!(la, lb, "both nodes list the same records");
    let want: BTreeSet<String> = expected.iter().cloned().collect();
    assert_eq!(la.iter().cloned().collect::<BTreeSet<_>>(), want);

    // Every record, on both nodes at once (one process per `get`: a few seconds in release).
    let sample: Vec<usize> = (0..patients.len()).collect();
    let uuids: Vec<&str> = sample.iter().map(|&i| uuid_of(&patients[i])).collect();
    let (got_a, got_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| uuids.iter().map(|u| a.get_text("patient", u)).collect::<Vec<_>>());
        let tb = s.spawn(|| uuids.iter().map(|u| b.get_text("patient", u)).collect::<Vec<_>>());
        (ta.join().expect("thread A"), tb.join().expect("thread B"))
    });
    for (k, &i) in sample.iter().enumerate() {
        assert_eq!(got_a[k], got_b[k], "get {} differs between A and B", uuids[k]);
        let got: Value = serde_json::from_str(&got_a[k]).expect("JSON");
        assert_eq!(got, patients[i], "get {} returns what was last put", uuids[k]);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrent edits merge; concurrent edits of one field conflict the same way everywhere
// ---------------------------------------------------------------------------------------------

fn conflicts_of(node: &Node, uuid: &str) -> (String, Value) {
    let text = node.ok(&["get", "patient", uuid, "--conflicts"]);
    let v: Value = serde_json::from_str(&text).expect("get --conflicts prints JSON");
    (text, v)
}

#[test]
fn concurrent_edits_merge_and_same_field_conflicts_agree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("concurrent_edits_merge_and_same_field_conflicts_agree");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    a.trust(&b);
    b.trust(&a);
    let (author_a, author_b) = (a.author(), b.author());

    let mut rec = patient(&mut rng, 7);
    rec["gender"] = json!("F");
    let id = uuid_of(&rec).to_string();
    a.put("patient", &rec);
    let b0 = tmp.path().join("b0.ssb");
    a.export(&b0, &[]);
    assert_imported(&b.import(&b0), 1, 0);
    assert_eq!(b.get("patient", &id), rec);

    // Apart: A adds an address, B changes the birthdate.
    let mut on_a = a.get("patient", &id);
    let address = json!({"uuid": uuid(&mut rng), "address1": "Plot 12", "cityVillage": "Gulu"});
    on_a["addresses"] = json!([address]);
    a.put("patient", &on_a);
    let mut on_b = b.get("patient", &id);
    on_b["birthdate"] = json!("1977-07-07");
    b.put("patient", &on_b);

    // B -> A with --peer (B learnt A's vector from b0), then A -> B with --peer (A learnt B's
    // from b1).
    let b1 = tmp.path().join("b1.ssb");
    assert_eq!(exported_batches(&b.export(&b1, &["--peer", &a.id])), 1, "only B's edit");
    assert_imported(&a.import(&b1), 1, 0);
    let b2 = tmp.path().join("b2.ssb");
    assert_eq!(exported_batches(&a.export(&b2, &["--peer", &b.id])), 1, "only A's edit");
    assert_imported(&b.import(&b2), 1, 0);

    let (ga, gb) = (a.get_text("patient", &id), b.get_text("patient", &id));
    assert_eq!(ga, gb, "both nodes show the same record");
    let merged: Value = serde_json::from_str(&ga).expect("JSON");
    assert_eq!(merged["birthdate"], json!("1977-07-07"), "B's edit is on both nodes");
    assert_eq!(merged["addresses"], json!([address]), "A's edit is on both nodes");
    assert_eq!(merged["gender"], json!("F"));
    assert_eq!(a.digest(), b.digest());
    for node in [&a, &b] {
        assert_eq!(conflicts_of(node, &id).1["conflicts"], json!([]), "different fields merge");
    }

    // Apart again: both change the gender, differently.
    let mut on_a = a.get("patient", &id);
    on_a["gender"] = json!("M");
    a.put("patient", &on_a);
    let mut on_b = b.get("patient", &id);
    on_b["gender"] = json!("O");
    b.put("patient", &on_b);

    // B -> A with `vector` + `export --since`, A -> B with --peer.
    let va = tmp.path().join("a.vector.json");
    a.ok(&["vector", "--out", p(&va)]);
    let b3 = tmp.path().join("b3.ssb");
    assert_eq!(exported_batches(&b.export(&b3, &["--since", p(&va)])), 1, "only B's edit");
    assert_imported(&a.import(&b3), 1, 0);
    let b4 = tmp.path().join("b4.ssb");
    assert_eq!(exported_batches(&a.export(&b4, &["--peer", &b.id])), 1, "only A's edit");
    assert_imported(&b.import(&b4), 1, 0);

    assert_eq!(a.digest(), b.digest());
    let (ga, gb) = (a.get_text("patient", &id), b.get_text("patient", &id));
    assert_eq!(ga, gb, "both nodes show the same winner");
    let (ca_text, ca) = conflicts_of(&a, &id);
    let (cb_text, _) = conflicts_of(&b, &id);
    assert_eq!(ca_text, cb_text, "both nodes list the same conflicts");
    let conflicts = ca["conflicts"].as_array().expect("conflicts list");
    assert_eq!(conflicts.len(), 1, "only the gender conflicts: {ca_text}");
    let c = &conflicts[0];
    assert_eq!(c["path"], json!("gender"));
    let values = c["values"].as_array().expect("values");
    let shown: BTreeSet<&str> = values.iter().filter_map(|v| v["value"].as_str()).collect();
    assert_eq!(shown, BTreeSet::from(["M", "O"]), "both values are kept: {ca_text}");
    let authors: BTreeSet<&str> = values.iter().filter_map(|v| v["author"].as_str()).collect();
    assert_eq!(authors, BTreeSet::from([author_a.as_str(), author_b.as_str()]));
    let winner = c["winner"].as_u64().expect("winner") as usize;
    assert!(winner < values.len());
    assert_eq!(ca["record"]["gender"], values[winner]["value"], "get shows the listed winner");
    assert_eq!(ca["record"]["birthdate"], json!("1977-07-07"));
    assert_eq!(ca["record"]["addresses"], json!([address]));
}

#[test]
fn concurrent_first_items_of_a_keyed_collection_both_survive() {
    // names, identifiers, addresses and attributes are stored keyed by item uuid "so that items
    // added at two sites both survive a merge" (src/entity/schema.rs).
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("concurrent_first_items_of_a_keyed_collection_both_survive");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    a.trust(&b);
    b.trust(&a);
    let rec = patient(&mut rng, 3);
    let id = uuid_of(&rec).to_string();
    a.put("patient", &rec);
    let b0 = tmp.path().join("b0.ssb");
    a.export(&b0, &[]);
    assert_imported(&b.import(&b0), 1, 0);

    let exchange = |round: &str| {
        let ab = tmp.path().join(format!("{round}-a.ssb"));
        let ba = tmp.path().join(format!("{round}-b.ssb"));
        a.export(&ab, &[]);
        b.export(&ba, &[]);
        let (ra, rb) = (a.import(&ba), b.import(&ab));
        assert!(ra.code == Some(0) && rb.code == Some(0), "{}\n{}", ra.describe(), rb.describe());
        assert_eq!(a.digest(), b.digest());
        let (ga, gb) = (a.get("patient", &id), b.get("patient", &id));
        assert_eq!(ga, gb);
        ga
    };

    // Both sites add a name to the existing collection: both survive.
    let name_a = json!({"uuid": uuid(&mut rng), "givenName": "Akello"});
    let name_b = json!({"uuid": uuid(&mut rng), "givenName": "Bosco"});
    let mut on_a = rec.clone();
    on_a["names"] = json!([name_a]);
    a.put("patient", &on_a);
    let mut on_b = rec.clone();
    on_b["names"] = json!([name_b]);
    b.put("patient", &on_b);
    let merged = exchange("names");
    let names: BTreeSet<&str> = merged["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n["givenName"].as_str())
        .collect();
    assert!(names.contains("Akello") && names.contains("Bosco"), "both names kept: {merged}");

    // Both sites add the patient's first address: both must survive too.
    let addr_a = json!({"uuid": uuid(&mut rng), "cityVillage": "Arua"});
    let addr_b = json!({"uuid": uuid(&mut rng), "cityVillage": "Mbale"});
    let mut on_a = a.get("patient", &id);
    on_a["addresses"] = json!([addr_a]);
    a.put("patient", &on_a);
    let mut on_b = b.get("patient", &id);
    on_b["addresses"] = json!([addr_b]);
    b.put("patient", &on_b);
    let merged = exchange("addresses");
    let cities: BTreeSet<&str> = merged["addresses"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["cityVillage"].as_str()).collect())
        .unwrap_or_default();
    let (_, c) = conflicts_of(&a, &id);
    assert_eq!(
        cities,
        BTreeSet::from(["Arua", "Mbale"]),
        "addresses added concurrently at two sites must both survive the merge; got {} with \
         conflicts {}",
        merged["addresses"],
        c["conflicts"]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Importing a bundle twice
// ---------------------------------------------------------------------------------------------

#[test]
fn importing_the_same_bundle_twice_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("importing_the_same_bundle_twice_changes_nothing");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    b.trust(&a);
    for k in 0..3 {
        let list: Vec<Value> = (0..4).map(|i| patient(&mut rng, k * 10 + i)).collect();
        a.put("patient", &Value::Array(list));
    }
    let bundle = tmp.path().join("a.ssb");
    assert_eq!(exported_batches(&a.export(&bundle, &[])), 3);

    assert_imported(&b.import(&bundle), 3, 0);
    let first = b.status();
    assert_eq!(first["digest"], a.status()["digest"]);

    let r = b.import(&bundle);
    assert_imported(&r, 0, 3);
    assert!(r.stdout.contains("already present: 3 batches"), "{}", r.stdout);
    assert!(r.stdout.contains("nothing new"), "{}", r.stdout);
    let second = b.status();
    assert_eq!(second["digest"], first["digest"], "a second import changes nothing");
    assert_eq!(second["batches"], first["batches"]);
    assert_eq!(second["vector"], first["vector"]);
    assert_eq!(second["entities"], first["entities"]);
}

#[test]
fn bundles_imported_out_of_order_wait_then_complete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bundles_imported_out_of_order_wait_then_complete");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    b.trust(&a);
    for k in 0..3 {
        a.put("patient", &json!([patient(&mut rng, k)]));
    }
    // A bundle of batches 2 and 3 only (for a node said to hold batch 1), arriving first.
    let vector = tmp.path().join("claims-1.json");
    let claim = json!({"vector": {a.author(): 1}});
    std::fs::write(&vector, claim.to_string()).expect("write");
    let late = tmp.path().join("late.ssb");
    assert_eq!(exported_batches(&a.export(&late, &["--since", p(&vector)])), 2);
    let r = b.import(&late);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("waiting for earlier batches: 2"), "{}", r.describe());
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(0), Some(2)));
    assert_eq!(patients_in(&s), 0, "nothing shows before the gap fills");

    let all = tmp.path().join("all.ssb");
    a.export(&all, &[]);
    let r = b.import(&all);
    assert!(r.code == Some(0) && has_line(&r.stdout, "applied: 3 batches"), "{}", r.describe());
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(3), Some(0)));
    assert_eq!(s["digest"], a.status()["digest"]);
}

/// Site `a` with six one-patient batches; site `b`, trusting it, holds batches 2–6 waiting for
/// the first; and a bundle of all six, to fill the gap.
struct GapOfFive {
    /// Holds both node directories for the test's length.
    _tmp: tempfile::TempDir,
    a: Node,
    b: Node,
    all: PathBuf,
}

fn gap_of_five(test: &str) -> GapOfFive {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded(test);
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    b.trust(&a);
    for k in 0..6 {
        a.put("patient", &json!([patient(&mut rng, k)]));
    }
    let vector = tmp.path().join("claims-1.json");
    std::fs::write(&vector, json!({"vector": {a.author(): 1}}).to_string()).expect("write");
    let late = tmp.path().join("late.ssb");
    assert_eq!(exported_batches(&a.export(&late, &["--since", p(&vector)])), 5);
    let r = b.import(&late);
    assert!(r.stdout.contains("waiting for earlier batches: 5"), "{}", r.describe());
    let all = tmp.path().join("all.ssb");
    a.export(&all, &[]);
    GapOfFive { _tmp: tmp, a, b, all }
}

impl GapOfFive {
    /// `import` of the whole bundle into `b`, one change per transaction, with `env` set.
    fn fill(&self, env: &[(&str, &str)]) -> Run {
        let mut c = command(Some(&self.b.dir));
        c.env(sitesync::node::IMPORT_CHUNK_ENV, "1").envs(env.iter().copied());
        c.args(["import", p(&self.all)]);
        run_with(c, None)
    }
}

#[test]
fn a_long_gap_fills_in_bounded_transactions() {
    let gap = gap_of_five("a_long_gap_fills_in_bounded_transactions");
    let (a, b) = (&gap.a, &gap.b);
    // Batch 1 fills the gap; with one change per transaction, each waiting batch is taken out
    // of waiting in a transaction of its own.
    let r = gap.fill(&[]);
    assert!(r.code == Some(0) && has_line(&r.stdout, "applied: 6 batches"), "{}", r.describe());
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(6), Some(0)));
    assert_eq!(s["digest"], a.status()["digest"]);
    let listed = b.ok(&["audit", "list", "--limit", "100"]);
    let applied: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split("received from ").nth(1)?.split(": applied ").nth(1))
        .filter(|rest| !rest.starts_with("0 batches"))
        .collect();
    // Batch 1 with batch 2 in one transaction, then batches 3..6 one per transaction.
    assert_eq!(applied.len(), 5, "one receipt per transaction expected:\n{listed}");
    assert!(applied.iter().filter(|r| r.starts_with("1 batches")).count() >= 4, "{listed}");
}

#[test]
fn a_crash_between_the_transactions_of_a_filled_gap_is_finished_at_open() {
    let gap = gap_of_five("a_crash_between_the_transactions_of_a_filled_gap_is_finished_at_open");
    let (a, b) = (&gap.a, &gap.b);
    // The import dies right after the first transaction that continues the gap's promotion.
    let r = gap.fill(&[(sitesync::FAILPOINT_ENV, "promotion-step")]);
    assert_eq!(r.code, Some(137), "the import must have been cut: {}", r.describe());
    // Opening the node finishes what the crash cut short.
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(6), Some(0)));
    assert_eq!(s["digest"], a.status()["digest"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Damaged and untrusted bundles
// ---------------------------------------------------------------------------------------------

#[test]
fn corrupted_bundles_are_rejected_at_every_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("corrupted_bundles_are_rejected_at_every_byte");
    let a = Node::init(tmp.path(), "site-a");
    let receivers = [Node::init(tmp.path(), "site-b"), Node::init(tmp.path(), "site-c")];
    let rec = json!({
        "uuid": uuid(&mut rng),
        "identifiers": [{"uuid": uuid(&mut rng), "identifier": "M1", "identifierType": ID_TYPE}],
        "names": [{"uuid": uuid(&mut rng), "givenName": "Amina"}],
        "gender": "F",
    });
    a.put("patient", &rec);
    let bundle = tmp.path().join("one.ssb");
    a.export(&bundle, &[]);
    let good = std::fs::read(&bundle).expect("read bundle");
    assert!(good.len() < 1200, "a one-patient bundle is small ({} bytes)", good.len());
    let empty_digest = receivers[0].digest();
    for r in &receivers {
        r.trust(&a);
    }

    // Every byte position, split between two receivers: odd positions get every bit flipped,
    // even positions one random bit.
    let flips: Vec<(usize, u8)> = (0..good.len())
        .map(|i| (i, if i % 2 == 1 { 0xFF } else { 1u8 << rng.random_range(0..8u32) }))
        .collect();
    let problems: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = receivers
            .iter()
            .enumerate()
            .map(|(w, node)| {
                let (good, flips, dir) = (&good, &flips, tmp.path());
                s.spawn(move || {
                    let file = dir.join(format!("flipped-{w}.ssb"));
                    let mut problems = Vec::new();
                    for &(i, mask) in flips.iter().filter(|(i, _)| i % 2 == w) {
                        let mut bytes = good.clone();
                        bytes[i] ^= mask;
                        std::fs::write(&file, &bytes).expect("write");
                        let r = node.import(&file);
                        let what = format!("byte {i} ^ {mask:#04x}");
                        let mut found = error_problems(&what, &r, 1, &["flipped-"]);
                        let clear = ["corrupt", "checksum", "not a sitesync bundle", "version"];
                        if !clear.iter().any(|c| r.stderr.contains(c)) {
                            found.push(format!("{what}: unclear message: {}", r.stderr.trim()));
                        }
                        if !r.stdout.is_empty() {
                            found.push(format!("{what}: printed an import report: {}", r.stdout));
                        }
                        problems.extend(found);
                    }
                    problems
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert_no_problems(&problems);

    // Bytes appended after the declared end are corruption too.
    let mut longer = good.clone();
    longer.push(0);
    let file = tmp.path().join("longer.ssb");
    std::fs::write(&file, &longer).expect("write");
    assert_no_problems(&error_problems(
        "appended byte",
        &receivers[0].import(&file),
        1,
        &["longer.ssb", "corrupt"],
    ));

    for r in &receivers {
        let s = r.status();
        assert_eq!(s["digest"], json!(empty_digest), "no corrupted bundle changed the store");
        assert_eq!((s["batches"].as_u64(), patients_in(&s)), (Some(0), 0));
    }
    // The intact bundle applies, so the rejections above were about the damage.
    assert_imported(&receivers[0].import(&bundle), 1, 0);
    assert_eq!(receivers[0].digest(), a.digest());
}

#[test]
fn truncated_bundles_apply_the_whole_batches_before_the_cut() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("truncated_bundles_apply_the_whole_batches_before_the_cut");
    let a = Node::init(tmp.path(), "site-a");
    let sizes = [3usize, 5, 2, 7, 4, 6];
    let mut n = 0;
    for &size in &sizes {
        let list: Vec<Value> = (0..size).map(|i| patient(&mut rng, n + i)).collect();
        n += size;
        a.put("patient", &Value::Array(list));
    }
    let author = a.author();
    let bundle = tmp.path().join("six.ssb");
    assert_eq!(exported_batches(&a.export(&bundle, &[])), 6);
    let bytes = std::fs::read(&bundle).expect("read");
    let (start, ends, trailer) = frame_layout(&bytes);
    assert_eq!(ends.len(), 6, "one frame per batch");
    let frame_start = |k: usize| if k == 0 { start } else { ends[k - 1] };

    // (cut offset, whole frames before it)
    let mut cuts =
        vec![(start, 0), (start + 2, 0), (ends[2], 3), (trailer + 20, 6), (bytes.len() - 1, 6)];
    for (k, &end) in ends.iter().enumerate() {
        cuts.push(((frame_start(k) + end) / 2, k));
    }
    cuts.push((frame_start(4) + 40 + rng.random_range(0..ends[4] - frame_start(4) - 40), 4));

    let want = a.digest();
    for (t, &(cut, whole)) in cuts.iter().enumerate() {
        let b = Node::init(tmp.path(), &format!("cut-{t}"));
        b.trust(&a);
        let file = tmp.path().join(format!("cut-{t}.ssb"));
        std::fs::write(&file, &bytes[..cut]).expect("write");
        let r = b.import(&file);
        let what = format!("bundle cut at byte {cut} of {} ({whole} whole frames)", bytes.len());
        assert_eq!(r.code, Some(1), "{what}: an incomplete import exits 1: {}", r.describe());
        assert!(!r.panicked(), "{what}: {}", r.describe());
        assert!(r.stdout.contains("truncated"), "{what}: says truncated: {}", r.describe());
        assert!(
            has_line(&r.stdout, &format!("applied: {whole} batches")),
            "{what}: {}",
            r.describe()
        );
        assert!(
            r.stdout.contains(&format!("{} batches are missing", 6 - whole)),
            "{what}: {}",
            r.describe()
        );
        let s = b.status();
        assert_eq!(s["batches"].as_u64(), Some(whole as u64), "{what}: batches held");
        assert_eq!(seq_of(&s, &author), whole as u64, "{what}: vector");
        assert_eq!(patients_in(&s), sizes[..whole].iter().sum::<usize>() as u64, "{what}");
        assert_eq!(s["pending_batches"], json!(0), "{what}");

        let r = b.import(&bundle);
        assert_imported(&r, 6 - whole as u64, whole as u64);
        assert_eq!(b.digest(), want, "{what}: the full bundle completes the node");
    }
}

#[test]
fn bundles_from_untrusted_authors_are_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bundles_from_untrusted_authors_are_rejected");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    let c = Node::init(tmp.path(), "site-c");
    for k in 0..2 {
        a.put("patient", &json!([patient(&mut rng, 2 * k), patient(&mut rng, 2 * k + 1)]));
    }
    let bundle = tmp.path().join("a.ssb");
    a.export(&bundle, &[]);
    let before = b.digest();

    let r = b.import(&bundle);
    assert_eq!(r.code, Some(1), "rejections exit 1: {}", r.describe());
    assert!(!r.panicked());
    assert!(has_line(&r.stdout, "applied: 0 batches"), "{}", r.describe());
    assert!(has_line(&r.stdout, "rejected: 2 batches"), "{}", r.describe());
    let rejections: Vec<&str> = r.stdout.lines().filter(|l| l.contains("not trusted")).collect();
    assert_eq!(rejections.len(), 2, "each batch is listed as not trusted: {}", r.stdout);
    assert!(rejections.iter().all(|l| l.contains(&a.id)), "names the author: {}", r.stdout);
    let s = b.status();
    assert_eq!(s["digest"], json!(before), "nothing applied");
    assert_eq!(s["batches"], json!(0));

    // Trusting A makes the same bundle apply.
    b.trust(&a);
    assert_imported(&b.import(&bundle), 2, 0);
    assert_eq!(b.digest(), a.digest());

    // B relays A's batches along with its own; C trusts only B: B's apply, A's are rejected.
    let own = patient(&mut rng, 99);
    b.put("patient", &own);
    let relay = tmp.path().join("b.ssb");
    assert_eq!(exported_batches(&b.export(&relay, &[])), 3);
    c.trust(&b);
    let r = c.import(&relay);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(has_line(&r.stdout, "applied: 1 batches"), "{}", r.describe());
    assert!(has_line(&r.stdout, "rejected: 2 batches"), "{}", r.describe());
    assert_eq!(r.stdout.lines().filter(|l| l.contains("not trusted")).count(), 2, "{}", r.stdout);
    assert_eq!(c.list("patient"), vec![format!("patient/{}", uuid_of(&own))]);
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 during a large import
// ---------------------------------------------------------------------------------------------

#[test]
fn import_killed_at_random_moments_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("import_killed_at_random_moments_leaves_a_consistent_store");
    let a = Node::init(tmp.path(), "big-site");
    let (puts, per_put) = (20, 1000);
    for k in 0..puts {
        let list: Vec<Value> = (0..per_put).map(|i| patient(&mut rng, k * per_put + i)).collect();
        let r = a.put_run("patient", &Value::Array(list));
        assert_eq!(r.code, Some(0), "{}", r.describe());
    }
    let author = a.author();
    let sa = a.status();
    assert_eq!(sa["batches"], json!(puts));
    assert_eq!(patients_in(&sa), (puts * per_put) as u64);
    let bundle = tmp.path().join("big.ssb");
    a.export(&bundle, &[]);

    // One uninterrupted import, to know its duration and the digest it reaches.
    // One apply transaction per batch, so kills can land between commits and leave a store
    // that holds some of the batches (the real default groups 50,000 changes per transaction).
    let chunked = |dir: &Path| {
        let mut c = command(Some(dir));
        c.env(sitesync::node::IMPORT_CHUNK_ENV, per_put.to_string());
        c.args(["import", p(&bundle)]);
        c
    };
    let reference = Node::init(tmp.path(), "reference");
    reference.trust(&a);
    let started = Instant::now();
    let r = run_with(chunked(&reference.dir), None);
    let full = started.elapsed();
    assert_imported(&r, puts as u64, 0);
    let want = reference.digest();
    assert_eq!(want, sa["digest"].as_str().expect("digest"));
    eprintln!("uninterrupted import: {full:?}");

    let tries = 5;
    let mut killed_midway = 0;
    let mut partially_applied = 0;
    for t in 0..tries {
        let b = Node::init(tmp.path(), &format!("victim-{t}"));
        b.trust(&a);
        // Spread the kills over the first half of the import: receipt (one transaction per
        // batch here) comes first, merging the documents after it.
        let delay = full.mul_f64(0.5 * (t as f64 + rng.random::<f64>()) / tries as f64);
        let mut c = chunked(&b.dir);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        let mut child = c.stderr(Stdio::piped()).spawn().expect("spawn import");
        std::thread::sleep(delay);
        let running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("kill"); // SIGKILL
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "try {t}: {stderr}");
        if running {
            killed_midway += 1;
        }
        let partial = |held: u64| held > 0 && held < puts as u64;

        // The store opens, and what it holds is consistent: whole batches with their records.
        let s = b.status();
        let held = s["batches"].as_u64().expect("batches");
        assert_eq!(seq_of(&s, &author), held, "try {t}: vector matches the batches held");
        assert_eq!(patients_in(&s), held * per_put as u64, "try {t}: records of held batches");
        assert_eq!(s["pending_batches"], json!(0), "try {t}");
        if partial(held) {
            partially_applied += 1;
        }
        eprintln!(
            "try {t}: killed after {delay:?} (still running: {running}), {held} batches held"
        );

        assert_imported(&b.import(&bundle), puts as u64 - held, held);
        assert_eq!(b.digest(), want, "try {t}: the re-import reaches the uninterrupted digest");
    }
    assert!(killed_midway >= 1, "no try killed the import while it was running");
    assert!(partially_applied >= 1, "no kill landed between two committed transactions");
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input: one clear line on stderr, the intended exit code, never a panic
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_records_are_refused_with_exit_code_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bad_records_are_refused_with_exit_code_2");
    let a = Node::init(tmp.path(), "site-a");
    let good = patient(&mut rng, 1);
    a.put("patient", &good);
    let before = a.status();
    let mut problems = Vec::new();

    let bad_json = tmp.path().join("bad.json");
    std::fs::write(&bad_json, "{\"uuid\": ").expect("write");
    problems.extend(error_problems(
        "malformed JSON file",
        &a.run(&["put", "patient", p(&bad_json)]),
        2,
        &["bad.json", "not valid JSON"],
    ));
    let mut c = command(Some(&a.dir));
    c.args(["put", "patient", "-"]);
    let r = run_with(c, Some(b"[{\"gender\": \"F\",]".to_vec()));
    problems.extend(error_problems("malformed JSON on stdin", &r, 2, &["not valid JSON"]));
    let missing = tmp.path().join("nope.json");
    problems.extend(error_problems(
        "missing input file",
        &a.run(&["put", "patient", p(&missing)]),
        2,
        &["nope.json"],
    ));

    let mut wrong = patient(&mut rng, 2);
    wrong["gender"] = json!(5);
    problems.extend(error_problems(
        "gender: 5",
        &a.put_run("patient", &wrong),
        2,
        &["gender", "5"],
    ));
    let mut wrong = patient(&mut rng, 3);
    wrong["names"] = json!("Amina Okello");
    problems.extend(error_problems(
        "names: a string",
        &a.put_run("patient", &wrong),
        2,
        &["names"],
    ));
    let mut wrong = patient(&mut rng, 4);
    wrong.as_object_mut().expect("object").remove("gender");
    problems.extend(error_problems(
        "no gender",
        &a.put_run("patient", &wrong),
        2,
        &["gender", "required"],
    ));
    let mut wrong = patient(&mut rng, 5);
    wrong["gendr"] = json!("F");
    problems.extend(error_problems("unknown field", &a.put_run("patient", &wrong), 2, &["gendr"]));
    let mut wrong = patient(&mut rng, 6);
    wrong["identifiers"][0]["uuid"] = json!("not-a-uuid");
    problems.extend(error_problems(
        "bad item uuid",
        &a.put_run("patient", &wrong),
        2,
        &["identifiers[0].uuid", "not-a-uuid"],
    ));
    // A list with one bad record: nothing of the list is written.
    let mut wrong = patient(&mut rng, 7);
    wrong["birthdate"] = json!(19900101);
    let list = json!([patient(&mut rng, 8), wrong, patient(&mut rng, 9)]);
    problems.extend(error_problems(
        "bad record 1 of 3",
        &a.put_run("patient", &list),
        2,
        &["record 1", "birthdate", "19900101"],
    ));

    problems.extend(error_problems(
        "put of an unknown type",
        &a.put_run("pateint", &good),
        2,
        &["pateint"],
    ));
    problems.extend(error_problems(
        "get of an unknown type",
        &a.run(&["get", "pateint", uuid_of(&good)]),
        2,
        &["pateint"],
    ));
    problems.extend(error_problems(
        "list of an unknown type",
        &a.run(&["list", "pateint"]),
        2,
        &["pateint"],
    ));
    assert_no_problems(&problems);

    let after = a.status();
    assert_eq!(after["digest"], before["digest"], "no refused put wrote anything");
    assert_eq!(after["batches"], before["batches"]);
    assert_eq!(a.list("patient"), vec![format!("patient/{}", uuid_of(&good))]);
}

#[test]
fn broken_node_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "site-a");
    let config = a.dir.join("sitesync.toml");
    let key = a.dir.join("node.key");
    let config_text = std::fs::read(&config).expect("config");
    let key_text = std::fs::read(&key).expect("key");
    let mut problems = Vec::new();
    let mut check = |what: &str, needles: &[&str]| {
        problems.extend(error_problems(what, &a.run(&["status"]), 1, needles));
        std::fs::write(&config, &config_text).expect("restore config");
        std::fs::write(&key, &key_text).expect("restore key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };

    std::fs::remove_file(&config).expect("rm config");
    check("missing config", &["sitesync.toml", "missing"]);
    std::fs::write(&config, "this is [not toml\n").expect("write");
    check("garbage config", &["sitesync.toml"]);
    std::fs::write(&config, "version = 1\ncolour = \"red\"\n[node]\nname = \"a\"\n")
        .expect("write");
    check("unknown config key", &["sitesync.toml", "colour"]);
    std::fs::write(&config, "version = 1\n[node]\nname = \"a\"\nnam = \"b\"\n").expect("write");
    check("unknown node key", &["sitesync.toml", "nam"]);
    std::fs::write(&config, "version = 7\n[node]\nname = \"a\"\n").expect("write");
    check("config version 7", &["sitesync.toml", "version 7"]);
    std::fs::write(&config, "version = 1\n[node]\nname = \"a\"\n[[trust]]\nnode_id = \"zz\"\n")
        .expect("write");
    check("bad trusted node id", &["sitesync.toml", "trust[0].node_id", "zz"]);

    std::fs::write(&key, "garbage\n").expect("write");
    check("garbage key file", &["node.key"]);
    std::fs::remove_file(&key).expect("rm key");
    check("missing key file", &["node.key", "missing"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    check("key file mode 0644", &["node.key", "readable by other users", "chmod 600"]);
    assert_no_problems(&problems);

    assert_eq!(a.ok(&["id"]).trim(), a.id, "the restored node works");
}

#[test]
fn bad_arguments_and_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bad_arguments_and_files_give_one_line_errors");
    let a = Node::init(tmp.path(), "site-a");
    let other = Node::init(tmp.path(), "site-b");
    a.put("patient", &patient(&mut rng, 1));
    let before = a.status();
    let mut problems = Vec::new();

    // No node directory.
    problems.extend(error_problems("no --dir", &run(None, &["status"]), 2, &["--dir"]));
    // init over an existing node refuses and keeps it.
    let r = run(None, &["init", "--dir", p(&a.dir), "--name", "again"]);
    problems.extend(error_problems("init over a node", &r, 1, &["site-a", "refusing"]));

    // Imports of files that are not bundles.
    let missing = tmp.path().join("missing.ssb");
    problems.extend(error_problems(
        "import of a missing file",
        &a.import(&missing),
        1,
        &["missing.ssb"],
    ));
    let empty = tmp.path().join("empty.ssb");
    std::fs::write(&empty, b"").expect("write");
    problems.extend(error_problems(
        "import of an empty file",
        &a.import(&empty),
        1,
        &["empty.ssb", "not a sitesync bundle"],
    ));
    for i in 0..4 {
        let file = tmp.path().join(format!("random-{i}.bin"));
        let len = [3usize, 100, 4096, 70_000][i];
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        std::fs::write(&file, &bytes).expect("write");
        problems.extend(error_problems(
            &format!("import of {len} random bytes"),
            &a.import(&file),
            1,
            &["random-", "not a sitesync bundle"],
        ));
        // The right magic and version, then random bytes (at least a whole prefix: see
        // `a_bundle_cut_inside_its_prefix_is_not_called_foreign` for shorter files).
        if len < 4 {
            continue;
        }
        let mut bytes = bytes;
        bytes.splice(0..0, b"SSBNDL\r\n\x01\x00".iter().copied());
        let file = tmp.path().join(format!("random-magic-{i}.bin"));
        std::fs::write(&file, &bytes).expect("write");
        problems.extend(error_problems(
            &format!("import of magic + {len} random bytes"),
            &a.import(&file),
            1,
            &["random-magic-", "corrupt"],
        ));
    }

    // trust add with bad ids.
    problems.extend(error_problems("trust add xyz", &a.run(&["trust", "add", "xyz"]), 2, &["xyz"]));
    let upper = other.id.to_uppercase();
    problems.extend(error_problems(
        "trust add UPPERCASE",
        &a.run(&["trust", "add", &upper]),
        2,
        &[upper.as_str()],
    ));
    problems.extend(error_problems(
        "trust add own id",
        &a.run(&["trust", "add", &a.id]),
        2,
        &["own id"],
    ));

    // get of records that are not there.
    let unknown = uuid(&mut rng);
    problems.extend(error_problems(
        "get unknown uuid",
        &a.run(&["get", "patient", &unknown]),
        1,
        &[unknown.as_str()],
    ));
    problems.extend(error_problems(
        "get malformed uuid",
        &a.run(&["get", "patient", "12345"]),
        2,
        &["12345"],
    ));

    // export --since with bad vector files writes no bundle.
    let out = tmp.path().join("never.ssb");
    let cases: [(&str, &str, &[&str]); 4] = [
        ("garbage.json", "this is not json", &["garbage.json", "not valid JSON"]),
        ("list.json", "[1, 2]", &["list.json", "not a JSON object"]),
        ("author.json", "{\"vector\": {\"abc\": 1}}", &["author.json", "abc"]),
        ("seq.json", "{\"vector\": {\"X:0000000000000001\": \"one\"}}", &["seq.json"]),
    ];
    for (name, text, needles) in cases {
        let file = tmp.path().join(name);
        let text = text.replace('X', &other.id);
        std::fs::write(&file, text).expect("write");
        let r = a.run(&["export", "--out", p(&out), "--since", p(&file)]);
        problems.extend(error_problems(&format!("export --since {name}"), &r, 2, needles));
    }
    let r = a.run(&["export", "--out", p(&out), "--since", p(&tmp.path().join("none.json"))]);
    problems.extend(error_problems("export --since a missing file", &r, 2, &["none.json"]));
    let r = a.run(&["export", "--out", p(&out), "--peer", &other.id]);
    problems.extend(error_problems("export --peer never seen", &r, 2, &[other.id.as_str()]));
    assert!(!out.exists(), "a refused export writes no bundle");
    assert_no_problems(&problems);

    assert_eq!(a.ok(&["id"]).trim(), a.id, "init did not overwrite the node");
    assert_eq!(a.status()["digest"], before["digest"]);
    assert!(a.ok(&["trust", "list"]).trim().is_empty(), "no bad id was trusted");
}

#[test]
fn a_closed_standard_output_does_not_panic() {
    // `sitesync list | head -1` closes the pipe early; the node must not print a panic.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("a_closed_standard_output_does_not_panic");
    let a = Node::init(tmp.path(), "site-a");
    let list: Vec<Value> = (0..200).map(|n| patient(&mut rng, n)).collect();
    a.put("patient", &Value::Array(list));
    let mut c = command(Some(&a.dir));
    c.args(["list", "patient"]).stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = c.stderr(Stdio::piped()).spawn().expect("spawn");
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "list into a closed pipe panicked:\n{stderr}");
}

#[test]
fn a_bundle_cut_inside_its_prefix_is_not_called_foreign() {
    // A copy that stopped after the magic bytes (inside the 14-byte prefix of magic, version and
    // header length) is a damaged sitesync bundle, not "not a sitesync bundle (bad magic bytes)".
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("a_bundle_cut_inside_its_prefix_is_not_called_foreign");
    let a = Node::init(tmp.path(), "site-a");
    a.put("patient", &patient(&mut rng, 1));
    let bundle = tmp.path().join("a.ssb");
    a.export(&bundle, &[]);
    let bytes = std::fs::read(&bundle).expect("read");
    let mut problems = Vec::new();
    for cut in 8..14 {
        let file = tmp.path().join(format!("prefix-{cut}.ssb"));
        std::fs::write(&file, &bytes[..cut]).expect("write");
        let r = a.import(&file);
        let what = format!("bundle cut after {cut} bytes");
        problems.extend(error_problems(&what, &r, 1, &["prefix-"]));
        let damaged = ["truncated", "corrupt", "ends"].iter().any(|w| r.stderr.contains(w));
        if r.stderr.contains("bad magic") || !damaged {
            problems.push(format!("{what}: misleading message: {}", r.stderr.trim()));
        }
    }
    assert_no_problems(&problems);
}
