//! `sitesync fhir push` against a real FHIR R4 server (`../shared/tools/fhir-server`, Medplum's
//! engine, started with `--ref-integrity` and a request log), on 127.0.0.1 only:
//!
//! 1. a push creates every resource, a second push sends nothing, and after one record changes
//!    only that record is sent (request log); `fhir export --since` follows the same cursor;
//!    the Patient carries what an MPI needs;
//! 2. 500s and dropped connections (a fault-injecting proxy in front of the server) are retried
//!    and every resource ends with exactly one version per record version (`_history`);
//! 3. a resource the server refuses is reported with its OperationOutcome text (audit log,
//!    `fhir status`), and delivered once the cause is fixed;
//! 4. a record that cannot be valid FHIR is reported with the reason and never sent;
//! 5. bad `[[fhir.targets]]` values give an error naming the value.
//!
//! The server needs Node >= 20.19 and its npm packages (`scripts/test` installs them; the
//! server's start script runs `npm ci` when they are missing). Without `node`, these tests fail.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

mod net;

use net::fhir_server::{FhirServer, forward, read_request};

/// One FHIR server at a time: each takes ~300 MB and a core to load its schema.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const PATIENT: &str = "4a38207f-3a68-401d-b9f8-8324419c9ef3";
const LOCATION: &str = "eac6940a-38be-439c-8927-0d7d2fe3ec7c";
/// The parent of the example location, which the examples do not hold.
const PARENT_LOCATION: &str = "2a4ac92a-f045-4c9f-8d48-a6f02acadd4b";

// ------------------------------------------------------------------ server ---

/// What `fhir push` sent, from the server's request log.
impl FhirServer {
    /// Transaction Bundles posted so far.
    fn posts(&self) -> usize {
        self.requests().iter().filter(|(m, _, _)| m == "POST").count()
    }

    /// The `request.url` of every entry of the transaction Bundles posted after the first
    /// `skip` logged requests.
    fn pushed_since(&self, skip: usize) -> Vec<String> {
        let mut out = Vec::new();
        let posts = self.requests().into_iter().filter(|(m, _, _)| m == "POST");
        for (_, _, body) in posts.skip(skip) {
            {
                for e in body["entry"].as_array().into_iter().flatten() {
                    out.push(e["request"]["url"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        out
    }
}

// -------------------------------------------------------------------- node ---

fn sitesync(dir: &Path, args: &[&str]) -> Output {
    net::command(Some(dir)).args(args).output().expect("run sitesync")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = sitesync(dir, args);
    assert!(out.status.success(), "sitesync {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn put_json(dir: &Path, ty: &str, record: &Value) {
    let file = dir.join(format!("put-{ty}.json"));
    std::fs::write(&file, record.to_string()).expect("write record");
    ok(dir, &["put", ty, file.to_str().expect("utf-8")]);
}

fn example(ty: &str) -> Value {
    let path = root().join(format!("docs/examples/entities/{ty}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("json")
}

/// A node holding every example record, their concepts and (if `parent`) the example
/// location's parent, so every reference resolves; its `[fhir]` table is the settings fixture
/// plus one target `shr` at `base` with `extra` keys.
fn node_with_examples(tmp: &Path, base: &str, extra: &str, parent: bool) -> PathBuf {
    let dir = tmp.join("node");
    ok(&dir, &["init", "--name", "Mawingu Health Centre"]);
    for ty in [
        "patient",
        "person",
        "provider",
        "location",
        "visit",
        "encounter",
        "obs",
        "condition",
        "allergy",
        "appointment",
        "relationship",
        "generic",
        "concept",
    ] {
        put_json(&dir, ty, &example(ty));
    }
    let concepts = root().join("tests/fixtures/fhir/concepts.json");
    ok(&dir, &["put", "concept", concepts.to_str().expect("utf-8")]);
    if parent {
        put_json(&dir, "location", &json!({"uuid": PARENT_LOCATION, "name": "Riverbend District"}));
    }
    let settings = std::fs::read_to_string(root().join("tests/fixtures/fhir/settings.toml"))
        .expect("settings fixture");
    let config = dir.join("sitesync.toml");
    let mut toml = std::fs::read_to_string(&config).expect("config");
    toml.push_str(&format!(
        "\n{settings}\n[[fhir.targets]]\nname = \"shr\"\nbase_url = \"{base}\"\nbatch_size = 4\n{extra}"
    ));
    std::fs::write(&config, toml).expect("write config");
    dir
}

fn status_json(dir: &Path) -> Value {
    let s: Value = serde_json::from_str(&ok(dir, &["fhir", "status", "--json"])).expect("json");
    s[0].clone()
}

/// Resources per type of a full `fhir export` of the node (what a push must create).
fn exported_counts(dir: &Path, tmp: &Path) -> Value {
    let out = tmp.join("export-all");
    ok(dir, &["fhir", "export", "--out", out.to_str().expect("utf-8")]);
    let mut counts = serde_json::Map::new();
    for entry in std::fs::read_dir(&out).expect("export dir") {
        let path = entry.expect("entry").path();
        let ty = path.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
        let n = std::fs::read_to_string(&path).expect("read").lines().count();
        counts.insert(ty, json!(n));
    }
    Value::Object(counts)
}

fn cursor_of(output: &str) -> String {
    let line = output.lines().rfind(|l| l.starts_with("cursor ")).expect("a cursor line");
    line["cursor ".len()..].split_whitespace().next().expect("cursor").to_string()
}

// ------------------------------------------------------------------- tests ---

#[test]
fn push_creates_everything_then_sends_only_what_changed() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = FhirServer::start(tmp.path(), &[]);
    let dir = node_with_examples(tmp.path(), &server.base, "", true);
    let want = exported_counts(&dir, tmp.path());
    assert_eq!(want["Patient"], 1, "{want}");

    let first = ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert_eq!(server.counts(), want, "{first}");
    let total: u64 = want.as_object().expect("counts").values().filter_map(Value::as_u64).sum();
    assert!(first.contains(&format!("{total} sent ({total} created, 0 updated)")), "{first}");

    // Nothing changed: nothing is sent, not even a request.
    let before = server.posts();
    let second = ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert!(second.contains(" 0 sent "), "{second}");
    assert_eq!(server.posts(), before, "a push without changes makes no request");

    // What an MPI needs of a Patient: an identifier with a system, the managing organization,
    // and meta.source naming this node.
    let (status, patient) = server.read(&format!("Patient/{PATIENT}"));
    assert_eq!(status, 200);
    let ids = patient["identifier"].as_array().expect("identifiers");
    assert!(ids.iter().all(|i| i["system"].as_str().is_some_and(|s| s.contains(':'))), "{ids:?}");
    let node_id: sitesync::id::NodeId = ok(&dir, &["id"]).trim().parse().expect("node id");
    let site = sitesync::id::Uid::of_node(&node_id).to_string();
    assert_eq!(patient["managingOrganization"]["reference"], format!("Organization/{site}"));
    assert!(
        patient["meta"]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("urn:uuid:{site}"))),
        "{}",
        patient["meta"]
    );
    let (status, _) = server.read(&format!("Organization/{site}"));
    assert_eq!(status, 200);

    // The incremental export follows the same kind of cursor.
    let all = ok(&dir, &["fhir", "export", "--out", tmp.path().join("e1").to_str().expect("p")]);
    let cursor = cursor_of(&all);
    let none = tmp.path().join("e2");
    let same =
        ok(&dir, &["fhir", "export", "--out", none.to_str().expect("p"), "--since", &cursor]);
    assert!(same.starts_with("wrote 1 resources"), "only the Organization: {same}");
    assert_eq!(cursor_of(&same), cursor);

    // One record changes: only it is sent, and the server holds its second version.
    let mut p = example("patient");
    p["gender"] = json!("U");
    put_json(&dir, "patient", &p);
    let before = server.posts();
    let third = ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert!(third.contains(" 1 sent (0 created, 1 updated)"), "{third}");
    assert_eq!(server.pushed_since(before), [format!("Patient/{PATIENT}")]);
    assert_eq!(server.versions(&format!("Patient/{PATIENT}")), 2);
    assert_eq!(server.versions(&format!("Location/{LOCATION}")), 1);
    let changed = tmp.path().join("e3");
    let only =
        ok(&dir, &["fhir", "export", "--out", changed.to_str().expect("p"), "--since", &cursor]);
    assert!(only.contains("Organization 1, Patient 1") && only.starts_with("wrote 2"), "{only}");
    assert_ne!(cursor_of(&only), cursor);

    // A bad cursor is refused, naming it.
    let out = sitesync(&dir, &["fhir", "export", "--out", "x", "--since", "c1.deadbeef00"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("c1.deadbeef00"), "{}", text(&out));

    let s = status_json(&dir);
    assert_eq!(
        (s["consecutive_failures"].as_u64(), s["failed"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    let audit = ok(&dir, &["audit", "list", "--limit", "10"]);
    assert!(
        audit.contains("fhir push to shr: sent 1 (0 created, 1 updated), 0 failed: ok"),
        "{audit}"
    );
}

/// What the proxy does to the n-th request (1-based).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Pass,
    /// Answer 500 with an OperationOutcome, without forwarding.
    Error500,
    /// Forward, then close the connection without passing the answer on (the server applied
    /// the Bundle; the client cannot know).
    DropAfter,
    /// Close the connection after reading the request, without forwarding.
    DropBefore,
}

/// A fault-injecting HTTP proxy on 127.0.0.1 in front of `upstream` (host:port): one request
/// per connection, faults by request number.
fn fault_proxy(upstream: String, faults: Vec<Fault>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let Some((head, body)) = read_request(&mut client) else { continue };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            match faults.get(n).copied().unwrap_or(Fault::Pass) {
                Fault::Error500 => {
                    let oo = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"injected failure"}]}"#;
                    let _ = write!(
                        client,
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{oo}",
                        oo.len()
                    );
                }
                Fault::DropBefore => {}
                fault => {
                    let answer = forward(&upstream, &head, &body);
                    if fault == Fault::Pass {
                        let _ = client.write_all(&answer);
                    }
                }
            }
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    (format!("http://{addr}/fhir/R4"), count)
}

#[test]
fn failures_are_retried_and_each_version_is_delivered_once() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = FhirServer::start(tmp.path(), &[]);
    let upstream = server.origin().trim_start_matches("http://").to_string();
    use Fault::*;
    // Bundle 1: two 500s, then through. Bundle 2: applied but the answer is lost, then resent.
    // Bundle 3: the connection drops before it reaches the server, then resent.
    let faults = vec![Error500, Error500, Pass, DropAfter, Pass, DropBefore, Pass];
    let (proxy, requests) = fault_proxy(upstream, faults);
    let dir = node_with_examples(tmp.path(), &proxy, "", true);
    let want = exported_counts(&dir, tmp.path());

    let out = ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert_eq!(server.counts(), want, "{out}");
    assert!(requests.load(Ordering::SeqCst) >= 7, "every fault was met: {out}");
    let mut keys = Vec::new();
    for (ty, n) in want.as_object().expect("counts") {
        let (_, found) = server.read(&format!("{ty}?_count=100"));
        let ids: Vec<String> = found["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| format!("{ty}/{}", e["resource"]["id"].as_str().expect("id")))
            .collect();
        assert_eq!(ids.len() as u64, n.as_u64().expect("n"), "{ty}");
        keys.extend(ids);
    }
    for key in &keys {
        assert_eq!(server.versions(key), 1, "{key}: one record version, one server version");
    }
    let s = status_json(&dir);
    assert_eq!(s["consecutive_failures"], 0);
    assert_eq!(s["failed"].as_array().map(Vec::len), Some(0));

    // A new record version through the same proxy (faults used up): exactly one more version.
    let mut p = example("patient");
    p["birthdate"] = json!("1988-07-15");
    put_json(&dir, "patient", &p);
    ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert_eq!(server.versions(&format!("Patient/{PATIENT}")), 2);
    for key in keys.iter().filter(|k| !k.starts_with("Patient/")) {
        assert_eq!(server.versions(key), 1, "{key}");
    }
}

#[test]
fn retries_are_bounded_and_the_cursor_stays() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = FhirServer::start(tmp.path(), &[]);
    let upstream = server.origin().trim_start_matches("http://").to_string();
    let (proxy, _) = fault_proxy(upstream, vec![Fault::Error500; 5]);
    let dir = node_with_examples(tmp.path(), &proxy, "", true);
    let out = sitesync(&dir, &["fhir", "push", "--target", "shr"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("gave up after 5 attempts: injected failure"), "{}", text(&out));
    let s = status_json(&dir);
    assert_eq!(s["consecutive_failures"], 1);
    assert_eq!(s["last_error"]["status"], 500);
    let start = sitesync::fhir::Cursor::start().to_string();
    assert_eq!(s["cursor"], start, "the cursor does not move past what was not delivered");
    let audit = ok(&dir, &["audit", "list", "--limit", "5"]);
    assert!(
        audit.contains("fhir push to shr: sent 0") && audit.contains("injected failure"),
        "{audit}"
    );
    // The server is reachable again: everything is delivered.
    let out = ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert!(out.contains("0 already delivered"), "{out}");
    assert_eq!(server.counts(), exported_counts(&dir, tmp.path()));
    assert_eq!(status_json(&dir)["consecutive_failures"], 0);
}

#[test]
fn a_refused_resource_is_reported_with_the_servers_outcome() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = FhirServer::start(tmp.path(), &[]);
    // Without the parent location, the server (checking references) refuses the location,
    // and with it everything that points at it.
    let dir = node_with_examples(tmp.path(), &server.base, "", false);
    let out = sitesync(&dir, &["fhir", "push", "--target", "shr"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let why = format!(
        "Resource Location/{PARENT_LOCATION} not found, specified in path: Location.partOf"
    );
    assert!(said.contains(&format!("failed Location/{LOCATION} (HTTP 400): {why}")), "{said}");
    assert_eq!(server.counts()["Practitioner"], 1, "the rest went through");
    assert_eq!(server.read(&format!("Location/{LOCATION}")).0, 404);

    let audit = ok(&dir, &["audit", "list", "--limit", "5"]);
    let line = audit.lines().find(|l| l.contains("fhir push to shr")).expect("audit entry");
    assert!(line.contains("last HTTP status 400") && line.contains(&why), "{line}");
    let status = ok(&dir, &["fhir", "status"]);
    assert!(status.contains(&format!("Location/{LOCATION} (HTTP 400): {why}")), "{status}");
    let s = status_json(&dir);
    let failed = s["failed"].as_array().expect("failed");
    let loc = failed.iter().find(|f| f["key"] == format!("Location/{LOCATION}")).expect("listed");
    assert_eq!(
        (loc["status"].as_u64(), loc["record"].as_str()),
        (Some(400), Some(format!("location/{LOCATION}").as_str()))
    );
    assert!(failed.len() > 1, "the encounters at that location fail too: {failed:?}");
    // The target stands in the failure registry (`sitesync failures`, the view), with the reason.
    let registry: Value = serde_json::from_str(&ok(&dir, &["failures", "--json"])).expect("json");
    let push = registry
        .as_array()
        .and_then(|l| l.iter().find(|f| f["id"] == "push-shr"))
        .cloned()
        .unwrap_or_else(|| panic!("push-shr is a failure: {registry}"));
    assert!(push["reason"].as_str().is_some_and(|r| r.contains(&why)), "{push}");

    // The cause is fixed (the parent arrives): the next push delivers everything.
    put_json(&dir, "location", &json!({"uuid": PARENT_LOCATION, "name": "Riverbend District"}));
    let out = ok(&dir, &["fhir", "push", "--target", "shr"]);
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(server.counts(), exported_counts(&dir, tmp.path()));
    assert_eq!(status_json(&dir)["failed"].as_array().map(Vec::len), Some(0));
    assert_eq!(ok(&dir, &["failures"]).trim(), "no failures", "the push failure closed");
    let audit = ok(&dir, &["audit", "list", "--limit", "10"]);
    assert!(audit.contains("failure push-shr (FHIR push to shr) recovered"), "{audit}");
}

#[test]
fn a_record_that_cannot_be_valid_fhir_is_reported_and_never_sent() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = FhirServer::start(tmp.path(), &[]);
    let dir = node_with_examples(tmp.path(), &server.base, "", true);
    let bad = "0f2ad3a4-7c55-4d07-9d5e-5a4c1b2e9f10";
    let mut obs = example("obs");
    obs["uuid"] = json!(bad);
    obs.as_object_mut().expect("object").remove("valueNumeric");
    put_json(&dir, "obs", &obs);
    let out = sitesync(&dir, &["fhir", "push", "--target", "shr"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("not sent obs/{bad}: cannot be valid FHIR: field value")),
        "{said}"
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|(_, url, body)| !url.contains(bad) && !body.to_string().contains(bad))
    );
    assert_eq!(server.read(&format!("Observation/{bad}")).0, 404);
    assert_eq!(server.read(&format!("Patient/{PATIENT}")).0, 200, "the rest went through");
    let s = status_json(&dir);
    let f = &s["failed"][0];
    assert_eq!(
        (f["key"].as_str(), f["status"].as_u64()),
        (Some(format!("obs/{bad}").as_str()), None)
    );
    let audit = ok(&dir, &["audit", "list", "--limit", "5"]);
    assert!(audit.contains(&format!("obs/{bad} not sent: cannot be valid FHIR")), "{audit}");
}

#[test]
fn bad_target_values_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    ok(&dir, &["init", "--name", "n"]);
    let config = dir.join("sitesync.toml");
    let plain = std::fs::read_to_string(&config).expect("config");
    let target = "[[fhir.targets]]\nname = \"shr\"\nbase_url = \"http://127.0.0.1:1/fhir/R4\"\n";
    let cases = [
        (format!("{target}batch_size = 0\n"), "fhir.targets[0].batch_size", "0"),
        (format!("{target}batch_size = 51\n"), "fhir.targets[0].batch_size", "51"),
        (
            format!("{target}types = [\"Patient\", \"Obsrvation\"]\n"),
            "fhir.targets[0].types",
            "Obsrvation",
        ),
        (
            "[[fhir.targets]]\nname = \"shr\"\nbase_url = \"htp://x\"\n".into(),
            "fhir.targets[0].base_url",
            "htp://x",
        ),
        (format!("{target}{target}"), "fhir.targets[1].name", "\"shr\""),
        (format!("{target}interval_secs = -5\n"), "fhir.targets[0].interval_secs", "-5"),
    ];
    for (extra, field, value) in cases {
        std::fs::write(&config, format!("{plain}\n{extra}")).expect("write");
        let out = sitesync(&dir, &["fhir", "status"]);
        let said = text(&out);
        assert!(!out.status.success(), "{extra}: {said}");
        assert!(said.contains(field) && said.contains(value), "{extra}: {said}");
    }
    std::fs::write(&config, format!("{plain}\n{target}")).expect("write");
    let out = sitesync(&dir, &["fhir", "push", "--target", "mpi"]);
    assert!(
        text(&out).contains("no FHIR push target named \"mpi\"") && text(&out).contains("shr"),
        "{}",
        text(&out)
    );
}

#[test]
fn serve_pushes_a_continuous_target_by_itself() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = FhirServer::start(tmp.path(), &[]);
    let extra = "continuous = true\ninterval_secs = 1\n";
    let dir = node_with_examples(tmp.path(), &server.base, extra, true);
    let want = exported_counts(&dir, tmp.path());
    ok(&dir, &["admin", "set", "--enabled", "false"]);
    let log = tmp.path().join("serve.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut serve = net::command(Some(&dir));
    serve.arg("serve").stdout(out.try_clone().expect("log")).stderr(out);
    let child = serve.spawn().expect("spawn serve");
    // Killed by PID when dropped, even if an assertion fails.
    let _serving = net::Serve { child, name: "node".into(), log };
    let wait_until = |what: &str, f: &mut dyn FnMut() -> bool| {
        let done = net::wait_for(std::time::Duration::from_secs(60), || f().then_some(()));
        assert!(done.is_some(), "timed out waiting for {what}");
    };

    // Nobody runs `fhir push`: the running node delivers everything on its own.
    wait_until("the first continuous push", &mut || server.counts() == want);
    // A record written through the running node goes out on a later round, as version 2.
    wait_until("the control endpoint", &mut || dir.join("control.json").exists());
    let mut p = example("patient");
    p["gender"] = json!("U");
    put_json(&dir, "patient", &p);
    let key = format!("Patient/{PATIENT}");
    wait_until("the changed patient", &mut || server.versions(&key) == 2);
    let (_, patient) = server.read(&key);
    assert_eq!(patient["gender"], json!("unknown"), "{patient}");
    assert_eq!(server.versions(&format!("Location/{LOCATION}")), 1, "nothing else re-sent");
    let status = ok(&dir, &["fhir", "status", "--json"]);
    assert!(status.contains("\"last_success\""), "{status}");
}
