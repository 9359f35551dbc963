//! `sitesync fhir export` on a node built with the CLI: the same resources as the golden files,
//! `--type` filtering, and a type without a resource refused with exit code 2.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use sitesync::id::EntityType;

use crate::checks::validate_strict;
use crate::{read_json, root};

fn sitesync(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sitesync"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SITESYNC_DIR")
        .output()
        .expect("run sitesync")
}

#[test]
fn cli_exports_a_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = tmp.path().join("node");
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(sitesync(&node, &["init", "--name", "Mawingu Health Centre"]));
    for ty in EntityType::ALL.iter().filter(|t| **t != EntityType::Roster) {
        let path = root().join(format!("docs/examples/entities/{ty}.json"));
        ok(sitesync(&node, &["put", ty.as_str(), path.to_str().expect("utf-8")]));
    }
    let concepts = root().join("tests/fixtures/fhir/concepts.json");
    ok(sitesync(&node, &["put", "concept", concepts.to_str().expect("utf-8")]));
    let settings = root().join("tests/fixtures/fhir/settings.toml");
    let out_dir = tmp.path().join("fhir");
    let bundle = tmp.path().join("bundle.json");
    let args = [
        "fhir",
        "export",
        "--out",
        out_dir.to_str().expect("utf-8"),
        "--bundle",
        bundle.to_str().expect("utf-8"),
        "--settings",
        settings.to_str().expect("utf-8"),
    ];
    let text = ok(sitesync(&node, &args));
    assert!(text.starts_with("wrote 12 resources in 11 NDJSON files"), "{text}");
    assert!(!text.contains("warning"), "{text}");
    // The node's resources are the golden ones, but for meta.source and the Organization,
    // which name this node.
    let patient = std::fs::read_to_string(out_dir.join("Patient.ndjson")).expect("read");
    let mut patient: Value = serde_json::from_str(patient.trim()).expect("json");
    let mut want = read_json(&root().join("tests/fixtures/fhir/patient.json"));
    for v in [&mut patient, &mut want] {
        v["meta"].take();
        v["managingOrganization"]["reference"].take();
    }
    assert_eq!(patient, want);
    validate_strict(&[&out_dir, &bundle]);

    // Only some types; a type without a resource is refused (exit 2).
    let args = ["fhir", "export", "--out", out_dir.to_str().expect("utf-8"), "--type", "obs"];
    let text = ok(sitesync(&node, &args));
    assert!(text.contains("Observation 1, Organization 1"), "{text}");
    assert!(!out_dir.join("Patient.ndjson").exists(), "files of types not exported are removed");
    let out = sitesync(&node, &["fhir", "export", "--out", "x", "--type", "concept"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no FHIR resource"));
}
