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
