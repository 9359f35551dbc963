//! The example records in `docs/examples/entities/` against the real binary: each one is valid
//! and round-trips exactly through `put` and `get`; a wrong-typed field is refused with exit
//! code 2, a one-line error naming the field and nothing written; and bad command input (unknown
//! type, malformed JSON, a directory that is not a node) fails cleanly, never with a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const TYPES: [&str; 13] = [
    "patient",
    "person",
    "location",
    "visit",
    "encounter",
    "obs",
    "condition",
    "allergy",
    "appointment",
    "relationship",
    "provider",
    "concept",
    "generic",
];

fn sitesync(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitesync"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SITESYNC_DIR")
        .output()
        .expect("run sitesync")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn example_path(ty: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("docs/examples/entities/{ty}.json"))
}

fn example(ty: &str) -> Value {
    let path = example_path(ty);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn uuid_of(record: &Value) -> &str {
    record["uuid"].as_str().expect("example has a uuid")
}

/// A fresh node in `root/node`.
fn init(root: &Path) -> PathBuf {
    let node = root.join("node");
    let out = sitesync(&node, &["init", "--name", "test"]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    node
}

fn put(node: &Path, ty: &str, file: &Path) -> Output {
    sitesync(node, &["put", ty, file.to_str().expect("utf-8 path")])
}

fn assert_nothing_written(node: &Path) {
    let out = sitesync(node, &["list"]);
    assert!(out.status.success(), "list failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "a refused put must write nothing");
}

/// Asserts exit code 2 and a single `sitesync: ...` line on stderr containing `needle`.
fn assert_refused(out: &Output, needle: &str, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{what}: exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert!(
        err.ends_with('\n') && err.trim_end().lines().count() == 1,
        "{what}: not one line: {err:?}"
    );
    assert!(err.starts_with("sitesync: "), "{what}: {err:?}");
    assert!(err.contains(needle), "{what}: error does not mention {needle:?}: {err:?}");
    assert_eq!(stdout(out), "", "{what}: nothing should be printed on stdout");
}

#[test]
fn every_example_round_trips_exactly() {
    for ty in TYPES {
        let tmp = tempfile::tempdir().expect("tempdir");
        let node = init(tmp.path());
        let input = example(ty);
        let uuid = uuid_of(&input);

        let out = put(&node, ty, &example_path(ty));
        assert!(out.status.success(), "{ty}: put failed: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{ty}/{uuid}\n"), "{ty}: printed id");

        let out = sitesync(&node, &["get", ty, uuid]);
        assert!(out.status.success(), "{ty}: get failed: {}", stderr(&out));
        let back: Value = serde_json::from_slice(&out.stdout).expect("get prints JSON");
        assert_eq!(back, input, "{ty}: get returns what was put");

        // Putting the same record again changes nothing.
        let out = put(&node, ty, &example_path(ty));
        assert_eq!(stdout(&out), format!("{ty}/{uuid} (unchanged)\n"), "{ty}: second put");
    }
}

#[test]
fn examples_reference_each_other_consistently() {
    let patient = uuid_of(&example("patient")).to_string();
    let encounter = uuid_of(&example("encounter")).to_string();
    let concept = uuid_of(&example("concept")).to_string();
    for (ty, field) in [
        ("visit", "patient"),
        ("encounter", "patient"),
        ("obs", "person"),
        ("condition", "patient"),
        ("allergy", "patient"),
        ("appointment", "patient"),
    ] {
        assert_eq!(example(ty)[field], json!(patient), "{ty}.{field}");
    }
    let obs = example("obs");
    assert_eq!(obs["encounter"], json!(encounter));
    assert_eq!(obs["concept"], json!(concept));
    assert_eq!(example("encounter")["visit"], json!(uuid_of(&example("visit"))));
    assert_eq!(example("provider")["person"], json!(uuid_of(&example("person"))));
}

/// One field of each typed example set to a value of the wrong kind, and the path the error
/// must name.
fn wrong_fields() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("patient", "gender", json!("X")),
        ("patient", "names[0].givenName", json!(7)),
        ("person", "birthdate", json!("1979-02-30")),
        ("location", "name", json!(42)),
        ("location", "tags", json!(["Login Location", 3])),
        ("visit", "startDatetime", json!("2024-03-05 08:42")),
        ("encounter", "encounterDatetime", json!(20240305)),
        ("encounter", "encounterProviders[0].provider", json!("not-a-uuid")),
        ("obs", "valueNumeric", json!("61.5")),
        ("condition", "clinicalStatus", json!("active")),
        ("allergy", "severity", json!("SEVERE!")),
        ("allergy", "allergen.allergenType", json!("MEDICINE")),
        ("appointment", "status", json!("Booked")),
        ("relationship", "personA", json!(12345)),
        ("provider", "retired", json!("no")),
        ("concept", "datatype", json!("Float")),
        ("concept", "mappings[1].mapType", json!("SAME_AS")),
    ]
}

/// Sets `path` (dotted, with `[i]` list indexes) in `record`; the field must already exist.
fn set(record: &mut Value, path: &str, value: Value) {
    let mut at = record;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => {
                (name, Some(rest.trim_end_matches(']').parse::<usize>().expect("index")))
            }
            None => (part, None),
        };
        at = at.get_mut(name).unwrap_or_else(|| panic!("example has no field {name} ({path})"));
        if let Some(i) = index {
            at = at.get_mut(i).unwrap_or_else(|| panic!("example has no item {i} ({path})"));
        }
    }
    *at = value;
}

#[test]
fn a_wrong_typed_field_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = init(tmp.path());
    let mut covered: Vec<&str> = Vec::new();
    for (ty, path, value) in wrong_fields() {
        let mut record = example(ty);
        set(&mut record, path, value);
        let file = tmp.path().join(format!("{ty}-bad.json"));
        std::fs::write(&file, serde_json::to_vec(&record).expect("json")).expect("write");
        let out = put(&node, ty, &file);
        assert_refused(&out, &format!("{ty}: field {path}:"), &format!("{ty}.{path}"));
        assert_nothing_written(&node);
        covered.push(ty);
    }
    for ty in TYPES.iter().filter(|t| **t != "generic") {
        assert!(covered.contains(ty), "no wrong-field case for {ty}");
    }
}

#[test]
fn cross_field_checks_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = init(tmp.path());
    let mut obs = example("obs");
    obs["valueText"] = json!("sixty-one and a half");
    let mut condition = example("condition");
    condition["condition"] = json!({});
    let mut allergy = example("allergy");
    allergy["allergen"] = json!({"allergenType": "DRUG"});
    let mut patient = example("patient");
    patient["gendr"] = json!("F");
    let mut unnamed = example("patient");
    unnamed.as_object_mut().expect("object").remove("names");
    for (ty, record, needle) in [
        ("obs", obs, "obs: field valueText: an obs holds one value"),
        ("condition", condition, "field condition: needs condition.coded or condition.nonCoded"),
        ("allergy", allergy, "needs allergen.codedAllergen or allergen.nonCodedAllergen"),
        ("patient", patient, "field gendr: unknown field"),
        ("patient", unnamed, "field names: is required"),
    ] {
        let file = tmp.path().join("bad.json");
        std::fs::write(&file, serde_json::to_vec(&record).expect("json")).expect("write");
        assert_refused(&put(&node, ty, &file), needle, needle);
        assert_nothing_written(&node);
    }
}

#[test]
fn generic_refuses_a_non_object_and_deep_nesting() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = init(tmp.path());
    let file = tmp.path().join("bad.json");

    std::fs::write(&file, "[1, 2]").expect("write");
    assert_refused(&put(&node, "generic", &file), "is not a JSON object", "generic list");

    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({ "a": deep });
    }
    std::fs::write(&file, serde_json::to_vec(&deep).expect("json")).expect("write");
    assert_refused(&put(&node, "generic", &file), "nests deeper than 32 levels", "generic deep");
    assert_nothing_written(&node);
}

#[test]
fn unknown_entity_type_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = init(tmp.path());
    let out = put(&node, "pateint", &example_path("patient"));
    assert_refused(&out, "unknown entity type \"pateint\"", "unknown type");
    assert_nothing_written(&node);
}

#[test]
fn malformed_json_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = init(tmp.path());
    let file = tmp.path().join("broken.json");
    std::fs::write(&file, "{\"gender\": \"F\",").expect("write");
    assert_refused(&put(&node, "patient", &file), "not valid JSON", "malformed JSON");
    assert_nothing_written(&node);
}

#[test]
fn put_into_a_directory_that_is_not_a_node_fails_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for dir in [tmp.path().to_path_buf(), tmp.path().join("missing")] {
        let out = put(&dir, "patient", &example_path("patient"));
        let err = stderr(&out);
        assert!(!out.status.success(), "put into {} succeeded", dir.display());
        assert!(!err.contains("panicked"), "panicked: {err}");
        assert!(err.contains("is not a sitesync node directory"), "{err}");
        assert!(!dir.join("store.redb").exists(), "put must not create a store");
    }
}

/// A multi-byte character in a date-time's zone suffix is refused with exit 2, never a panic
/// (the date-time check slices by byte offset, so it must reject non-ASCII first).
#[test]
fn non_ascii_datetime_zone_is_refused_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = init(tmp.path());
    let file = tmp.path().join("bad.json");
    for zone in ["+1é00", "+1é0"] {
        let mut visit = example("visit");
        visit["startDatetime"] = json!(format!("2024-03-05T08:42{zone}"));
        std::fs::write(&file, serde_json::to_vec(&visit).expect("json")).expect("write");
        assert_refused(&put(&node, "visit", &file), "visit: field startDatetime:", zone);
    }
    assert_nothing_written(&node);
}
