//! Frozen formats keep loading: bundle format v1 and a v1 node directory (key file, config, store).
//!
//! The fixtures in `tests/fixtures/` were written once by the ignored test `write_v1_fixtures`
//! (`cargo test --release --test fixtures -- --ignored write_v1_fixtures`) and must never be
//! regenerated for an existing version: a new format version gets new fixture files instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sitesync")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin()).arg("--dir").arg(dir).args(args).output().expect("run sitesync");
    assert!(
        out.status.success(),
        "sitesync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("v1-expected.json")).expect("expected file");
    serde_json::from_str(&text).expect("expected json")
}

fn status(dir: &Path) -> Value {
    serde_json::from_str(&run(dir, &["status", "--json"])).expect("status json")
}

fn check_records(dir: &Path, expected: &Value) {
    let records = expected["records"].as_object().expect("records");
    let listed = run(dir, &["list"]);
    assert_eq!(listed.lines().count(), records.len(), "{listed}");
    for (id, want) in records {
        let (ty, uuid) = id.split_once('/').expect("type/uuid");
        let got: Value =
            serde_json::from_str(&run(dir, &["get", ty, uuid, "--conflicts"])).expect("json");
        assert_eq!(&got, want, "{id}");
    }
}

#[test]
fn bundle_v1_still_imports() {
    let expected = expected();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n");
    Command::new(bin())
        .args(["init", "--dir"])
        .arg(&dir)
        .args(["--name", "reader"])
        .output()
        .expect("init");
    // Trust the fixture's authors by editing the config file (config format v1), so that the
    // reader writes no record of its own (`trust add` would publish its roster) and its digest
    // can equal the exporter's.
    let config = dir.join("sitesync.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    for node in expected["authors"].as_array().expect("authors") {
        text.push_str(&format!("\n[[trust]]\nnode_id = {node}\n"));
    }
    std::fs::write(&config, text).expect("write config");
    let out = run(&dir, &["import", fixtures().join("bundle-v1.ssb").to_str().expect("path")]);
    assert!(out.contains("rejected: 0 batches"), "{out}");
    assert_eq!(status(&dir)["digest"], expected["digest"]);
    check_records(&dir, &expected);
}

#[test]
fn node_directory_v1_still_opens() {
    let expected = expected();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n");
    std::fs::create_dir(&dir).expect("mkdir");
    for file in ["node.key", "sitesync.toml", "store.redb"] {
        std::fs::copy(fixtures().join("node-v1").join(file), dir.join(file)).expect("copy");
    }
    // git does not keep file modes beyond the executable bit.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let s = status(&dir);
    assert_eq!(s["digest"], expected["digest"]);
    assert_eq!(s["node_id"], expected["authors"][0]);
    check_records(&dir, &expected);
    // The copied store is a new file: it must have moved to a new incarnation before writing.
    assert_ne!(s["author"], expected["original_author"]);
    // Its event log (written before the audit chain) moved into the chain with that write:
    // the old entries first, the incarnation change last, and the chain checks out.
    let log = run(&dir, &["audit", "list", "--limit", "1000"]);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(lines.iter().any(|l| l.contains("local write")), "{log}");
    assert!(lines.last().is_some_and(|l| l.contains("incarnation")), "{log}");
    assert!(run(&dir, &["audit", "verify"]).contains("intact"));
}

/// Writes the v1 fixtures. Run by hand only when a new format version is introduced.
#[test]
#[ignore]
fn write_v1_fixtures() {
    let out = fixtures();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    let id_x = Command::new(bin())
        .args(["init", "--dir"])
        .arg(&x)
        .args(["--name", "fixture-x"])
        .output()
        .expect("init");
    let id_y = Command::new(bin())
        .args(["init", "--dir"])
        .arg(&y)
        .args(["--name", "fixture-y"])
        .output()
        .expect("init");
    let id_x = String::from_utf8(id_x.stdout).expect("utf8").trim().to_string();
    let id_y = String::from_utf8(id_y.stdout).expect("utf8").trim().to_string();
    run(&x, &["trust", "add", &id_y]);
    run(&y, &["trust", "add", &id_x]);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/entities");
    for ty in ["location", "concept", "patient", "visit", "encounter", "obs", "generic"] {
        run(&x, &["put", ty, examples.join(format!("{ty}.json")).to_str().expect("path")]);
    }
    let b1 = tmp.path().join("x1.ssb");
    run(&x, &["export", "--out", b1.to_str().expect("p")]);
    run(&y, &["import", b1.to_str().expect("p")]);
    // Concurrent edits of one patient: different fields merge, the same field conflicts.
    let patient: Value = serde_json::from_str(
        &std::fs::read_to_string(examples.join("patient.json")).expect("read"),
    )
    .expect("json");
    let uuid = patient["uuid"].as_str().expect("uuid").to_string();
    let write = |dir: &Path, p: &Value, name: &str| {
        let f = tmp.path().join(name);
        std::fs::write(&f, p.to_string()).expect("write");
        run(dir, &["put", "patient", f.to_str().expect("p")]);
    };
    let mut px = patient.clone();
    px["birthdate"] = json!("1985-06-01");
    px["birthdateEstimated"] = json!(true);
    write(&x, &px, "px.json");
    let mut py = patient.clone();
    py["birthdate"] = json!("1985-06-10");
    py["dead"] = json!(false);
    write(&y, &py, "py.json");
    let b2 = tmp.path().join("y1.ssb");
    run(&y, &["export", "--out", b2.to_str().expect("p")]);
    run(&x, &["import", b2.to_str().expect("p")]);
    std::fs::create_dir_all(&out).expect("mkdir");
    run(&x, &["export", "--out", out.join("bundle-v1.ssb").to_str().expect("p")]);
    let s = status(&x);
    let mut records = serde_json::Map::new();
    for id in run(&x, &["list"]).lines() {
        let (ty, u) = id.split_once('/').expect("id");
        let got: Value =
            serde_json::from_str(&run(&x, &["get", ty, u, "--conflicts"])).expect("json");
        records.insert(id.to_string(), got);
    }
    assert!(
        records[&format!("patient/{uuid}")]["conflicts"].as_array().is_some_and(|c| !c.is_empty())
    );
    let meta = json!({
        "note": "written by tests/fixtures.rs write_v1_fixtures; never regenerate for version 1",
        "authors": [id_x, id_y],
        "original_author": s["author"],
        "digest": s["digest"],
        "records": records,
    });
    std::fs::write(
        out.join("v1-expected.json"),
        serde_json::to_string_pretty(&meta).expect("json") + "\n",
    )
    .expect("write");
    let node = out.join("node-v1");
    std::fs::create_dir_all(&node).expect("mkdir");
    for file in ["node.key", "sitesync.toml", "store.redb"] {
        std::fs::copy(x.join(file), node.join(file)).expect("copy");
    }
}

/// The batches of the frozen v1 bundle.
fn bundle_batches() -> Vec<(sitesync::batch::SignedBatch, Vec<Vec<u8>>)> {
    let path = fixtures().join("bundle-v1.ssb");
    let scan = sitesync::bundle::scan(&path).expect("scan");
    sitesync::bundle::frames(&path, &scan).expect("frames").map(|f| f.expect("frame")).collect()
}

/// A session's frames as protocol v1 sends them: Hello, the bundle's batches in two `Batches`
/// messages (the second refers back to changes of the first, and withholds the first body of
/// its first batch), Ack, Done.
fn session_frames(batches: &[(sitesync::batch::SignedBatch, Vec<Vec<u8>>)]) -> Vec<u8> {
    use sitesync::protocol::message::{Encoder, Message, Role, WireBatch};
    let mut enc = Encoder::default();
    let node = batches[0].0.author().node;
    let wire: Vec<WireBatch> =
        batches.iter().map(|(s, b)| WireBatch::new(s.clone(), b.clone())).collect();
    let half = wire.len() / 2;
    let mut second: Vec<WireBatch> = Vec::new();
    for (i, (s, b)) in batches[half..].iter().enumerate() {
        let mut b = b.clone();
        if i == 0 {
            b[0].clear();
        }
        second.push(WireBatch::new(s.clone(), b));
    }
    let vector = sitesync::id::Vector::default();
    let mut out = Vec::new();
    for m in [
        Message::Hello { version: 1, node, role: Role::Parent, vector: vector.clone() },
        Message::Batches { batches: wire[..half].to_vec() },
        Message::Batches { batches: second },
        Message::Ack { vector },
        Message::Done,
    ] {
        out.extend(enc.encode(&m));
    }
    out
}

#[test]
fn session_stream_v1_still_decodes() {
    use sitesync::protocol::message::{Decoder, Message, frame_len};
    let batches = bundle_batches();
    let bytes = std::fs::read(fixtures().join("session-v1.bin")).expect("session fixture");
    let mut dec = Decoder::default();
    let (mut at, mut kinds, mut got) = (0, Vec::new(), Vec::new());
    while at < bytes.len() {
        let len = frame_len(bytes[at..at + 4].try_into().expect("prefix")).expect("length");
        let m = dec.decode(&bytes[at + 4..at + 4 + len]).expect("a v1 frame decodes");
        at += 4 + len;
        kinds.push(m.kind());
        if let Message::Batches { batches } = m {
            got.extend(batches);
        }
    }
    assert_eq!(kinds, ["hello", "batches", "batches", "ack", "done"]);
    assert_eq!(got.len(), batches.len());
    let half = batches.len() / 2;
    for (i, (w, (signed, bodies))) in got.into_iter().zip(&batches).enumerate() {
        assert_eq!(w.withheld(), usize::from(i == half), "batch {i}");
        let (s, b) = w.into_parts();
        assert_eq!(&s, signed, "batch {i}: the manifest is rebuilt exactly");
        for (j, (got, want)) in b.iter().zip(bodies).enumerate() {
            if i == half && j == 0 {
                assert!(got.is_empty(), "the withheld body stays withheld");
            } else {
                assert_eq!(got, want, "batch {i} body {j} rebuilt byte for byte");
            }
        }
    }
}

/// Writes `session-v1.bin` from the frozen bundle (run once; never for an existing version).
#[test]
#[ignore]
fn write_session_v1_fixture() {
    let frames = session_frames(&bundle_batches());
    std::fs::write(fixtures().join("session-v1.bin"), frames).expect("write");
}

/// The re-send of withheld bodies as protocol v1 sends it (added to v1 later; old frames keep
/// decoding): a `Bodies` message with the first three bodies of the frozen bundle, and the
/// `BodiesAck` naming their hashes.
fn bodies_frames(batches: &[(sitesync::batch::SignedBatch, Vec<Vec<u8>>)]) -> Vec<u8> {
    use sitesync::protocol::message::{Encoder, Message};
    let bodies: Vec<Vec<u8>> = batches.iter().flat_map(|(_, b)| b.clone()).take(3).collect();
    let hashes = bodies.iter().map(|b| sitesync::id::BodyHash::of(b)).collect();
    let mut enc = Encoder::default();
    let mut out = Vec::new();
    for m in [
        Message::Bodies { bodies: bodies.into_iter().map(serde_bytes::ByteBuf::from).collect() },
        Message::BodiesAck { hashes },
    ] {
        out.extend(enc.encode(&m));
    }
    out
}

#[test]
fn bodies_frames_v1_still_decode() {
    use sitesync::protocol::message::{Decoder, Message, frame_len};
    let bytes = std::fs::read(fixtures().join("session-v1-bodies.bin")).expect("bodies fixture");
    let want: Vec<Vec<u8>> = bundle_batches().iter().flat_map(|(_, b)| b.clone()).take(3).collect();
    let mut dec = Decoder::default();
    let mut at = 0;
    let mut got = Vec::new();
    while at < bytes.len() {
        let len = frame_len(bytes[at..at + 4].try_into().expect("prefix")).expect("length");
        got.push(dec.decode(&bytes[at + 4..at + 4 + len]).expect("a v1 frame decodes"));
        at += 4 + len;
    }
    let [Message::Bodies { bodies }, Message::BodiesAck { hashes }] = &got[..] else {
        panic!("not bodies then bodies-ack: {:?}", got.iter().map(|m| m.kind()).collect::<Vec<_>>())
    };
    let bodies: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    assert_eq!(bodies, want, "bodies byte for byte");
    let want: Vec<_> = want.iter().map(|b| sitesync::id::BodyHash::of(b)).collect();
    assert_eq!(hashes, &want);
}

/// Writes `session-v1-bodies.bin` (run once; never regenerated).
#[test]
#[ignore]
fn write_bodies_v1_fixture() {
    let frames = bodies_frames(&bundle_batches());
    std::fs::write(fixtures().join("session-v1-bodies.bin"), frames).expect("write");
}

/// One request of every kind, as `sitesync` sends them to a running node (control version 2).
fn control_requests() -> Vec<sitesync::node::Request> {
    use sitesync::node::command::Since;
    use sitesync::node::{Choice, Json, Request};
    let id: sitesync::id::EntityId =
        "patient/5b6f0e0e-2b1d-4c2e-9a57-3c1d1f0b9a01".parse().expect("entity id");
    let node: sitesync::id::NodeId = "ab".repeat(32).parse().expect("node id");
    let cursor = sitesync::fhir::Cursor::start();
    vec![
        Request::Id,
        Request::Put {
            ty: sitesync::id::EntityType::Patient,
            records: Json(serde_json::json!({"uuid": id.uuid.to_string(), "gender": "F"})),
        },
        Request::Get { id, conflicts: true },
        Request::List { ty: Some(sitesync::id::EntityType::Visit) },
        Request::Export { out: "/tmp/out.ssb".into(), since: Since::Peer(node) },
        Request::Export { out: "/tmp/all.ssb".into(), since: Since::Everything },
        Request::Import { file: "/tmp/in.ssb".into() },
        Request::Status,
        Request::Vector,
        Request::Events { limit: 50, origin: Some(node) },
        Request::Conflicts,
        Request::Resolve { id: "0123456789abcdef".into(), choice: Choice::Take(1) },
        Request::Resolve { id: "fedcba9876543210".into(), choice: Choice::Value(Json("M".into())) },
        Request::AuditVerify,
        Request::AuditCompact { keep_entries: Some(100), keep_days: None },
        Request::Failures,
        Request::Sync { peer: Some(node) },
        Request::Retry { id: "sync-abababababababab".into() },
        Request::FhirExport {
            out: "/tmp/fhir".into(),
            types: vec![sitesync::id::EntityType::Patient],
            bundle: Some("/tmp/bundle.json".into()),
            settings: Some("[fhir]\n".into()),
            since: Some(cursor),
        },
        Request::FhirPush { target: "shr".into(), full: true },
        Request::FhirStatus,
    ]
}

const CONTROL_TOKEN: &str = "00112233445566778899aabbccddeeff";

#[test]
fn control_requests_v2_still_decode() {
    use sitesync::node::control::{CONTROL_VERSION, decode_request};
    let bytes = std::fs::read(fixtures().join("control-v2.bin")).expect("control fixture");
    let mut at = 0;
    let mut got = Vec::new();
    while at < bytes.len() {
        assert_eq!(bytes[at], 2, "version byte");
        assert_eq!(CONTROL_VERSION, 2, "a new control version keeps decoding version 2");
        let token_len = usize::from(bytes[at + 1]);
        let token = &bytes[at + 2..at + 2 + token_len];
        assert_eq!(token, CONTROL_TOKEN.as_bytes());
        at += 2 + token_len;
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("length")) as usize;
        got.push(decode_request(&bytes[at + 4..at + 4 + len]).expect("a v2 request decodes"));
        at += 4 + len;
    }
    assert_eq!(got, control_requests());
}

/// Writes `control-v2.bin` (run once; never regenerated).
#[test]
#[ignore]
fn write_control_v2_fixture() {
    let mut out = Vec::new();
    for r in control_requests() {
        out.extend(sitesync::node::control::encode_request(CONTROL_TOKEN, &r).expect("encode"));
    }
    std::fs::write(fixtures().join("control-v2.bin"), out).expect("write");
}
