//! End-to-end tests of replication as a user runs it: the real `sitesync` binary, node
//! directories in temporary folders, bundle files carried between nodes.
//!
//! Random choices (records, sampled records, corrupted bits, kill delays) come from a seed that
//! each test prints on stderr; set `SITESYNC_TEST_SEED=<n>` to replay a run.
//!
//! This file holds what the rooms share (seeded records, the [`Node`] directory helper, checks
//! of command output); the tests live in the rooms, by what they test:
//! - `node_files`: what `init` writes, and broken node files;
//! - `bundles`: records carried in bundles, imported once or twice, trusted or not;
//! - `concurrent_edits`: edits made apart merge, and conflict the same way everywhere;
//! - `gaps`: batches that arrive before the ones they follow wait, then apply;
//! - `damaged_bundles`: corrupted and truncated bundle files;
//! - `crashes`: `kill -9` during a large import;
//! - `bad_input`: bad records, arguments and files give one clear error line.

mod bad_input;
mod bundles;
mod concurrent_edits;
mod crashes;
mod damaged_bundles;
mod gaps;
mod node_files;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// An OpenMRS identifier type uuid (metadata sitesync does not store).
const ID_TYPE: &str = "8d79403a-c2cc-11de-8d13-0010c6dffd0f";

// Running the binary: the helpers shared with the network tests (tests/net/mod.rs, one directory
// up from this target's own folder, hence the path).
#[path = "../net/mod.rs"]
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
