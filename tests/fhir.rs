//! FHIR export (src/fhir): the example records of `docs/examples/entities/` against reviewed
//! golden resources in `tests/fixtures/fhir/`; the NDJSON export and the transaction Bundle of
//! the examples and of ~230 generated records through the independent validator
//! (`../shared/tools/fhir_validate.py --strict`, in the `.venv-fhir` venv that `scripts/test`
//! sets up); records that cannot be valid FHIR skipped with a reason; and no `null`, `""`, `[]`
//! or `{}` anywhere in the output.
//!
//! `FHIR_BLESS=1 cargo test --release --test fhir` rewrites the golden files (review the diff
//! field by field against docs/fhir-mapping.md before committing it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use sitesync::entity;
use sitesync::fhir::{self, Context, Date, FhirSettings, Mapper, Site};
use sitesync::id::{EntityId, EntityType, NodeId, Uid, parse_uuid};

type Rec = (EntityType, Uid, Value);

/// Example types that become a resource, and the golden file of each.
const EXPORTED: [&str; 11] = [
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
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn settings() -> FhirSettings {
    let path = root().join("tests/fixtures/fhir/settings.toml");
    let text = std::fs::read_to_string(&path).expect("settings fixture");
    FhirSettings::from_toml(&text).expect("valid settings fixture")
}

fn site() -> Site {
    Site { node: NodeId([0x5a; 32]), name: "Mawingu Health Centre".into() }
}

fn today() -> Date {
    Date::parse("2024-03-20").expect("date")
}

/// A record in stored form, validated exactly as `sitesync put` does.
fn stored(ty: EntityType, input: &Value) -> Rec {
    let record = entity::validate(ty, input, Uid::from_random([9; 16]))
        .unwrap_or_else(|e| panic!("test record does not validate: {e}\n{input:#}"));
    (ty, record.id.uuid, Value::Object(record.body))
}

/// The 13 example records (stored form) and the concepts their codes need.
fn examples() -> Vec<Rec> {
    let mut out = Vec::new();
    for ty in EntityType::ALL.iter().filter(|t| **t != EntityType::Roster) {
        let path = root().join(format!("docs/examples/entities/{ty}.json"));
        out.push(stored(*ty, &read_json(&path)));
    }
    let concepts = read_json(&root().join("tests/fixtures/fhir/concepts.json"));
    for c in concepts.as_array().expect("a list of concepts") {
        out.push(stored(EntityType::Concept, c));
    }
    out
}

fn source_of(records: &[Rec]) -> HashMap<EntityId, Value> {
    records.iter().map(|(ty, uuid, v)| (EntityId::new(*ty, *uuid), v.clone())).collect()
}

fn uid(s: &str) -> Uid {
    parse_uuid(s).expect("uuid")
}

// ------------------------------------------------------------------ golden ---

#[test]
fn examples_match_the_reviewed_golden_resources() {
    let records = examples();
    let source = source_of(&records);
    let (settings, site) = (settings(), site());
    let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
    let mut mapper = Mapper::new(ctx);
    for (ty, uuid, value) in &records {
        mapper.index(*ty, *uuid, value);
    }
    let bless = std::env::var_os("FHIR_BLESS").is_some();
    let mut failures = Vec::new();
    let mut check = |name: &str, got: Value| {
        let path = root().join(format!("tests/fixtures/fhir/{name}.json"));
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&path, text).expect("write golden file");
            return;
        }
        let want = read_json(&path);
        if got != want {
            failures.push(format!(
                "{name}: output differs from {}\n--- got\n{}\n--- want\n{}",
                path.display(),
                serde_json::to_string_pretty(&got).expect("json"),
                serde_json::to_string_pretty(&want).expect("json"),
            ));
        }
    };
    for name in EXPORTED {
        let ty: EntityType = name.parse().expect("type");
        let (_, uuid, value) =
            records.iter().find(|(t, _, _)| *t == ty).expect("an example of every type");
        let mapped = mapper
            .map(ty, *uuid, value)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name} has a resource"));
        assert_eq!(mapped.warnings, Vec::new(), "{name}: the examples lose nothing");
        let got = mapped.resource.to_json();
        // The output form of `sitesync get` (collections as lists) maps to the same resource.
        let output_form = entity::to_output(ty, value.as_object().expect("object"));
        let again = mapper.map(ty, *uuid, &output_form).expect("maps").expect("resource");
        assert_eq!(again.resource.to_json(), got, "{name}: stored and output forms differ");
        check(name, got);
    }
    check("organization", fhir::model::Resource::Organization(ctx.organization()).to_json());
    for ty in [EntityType::Concept, EntityType::Generic] {
        let (_, uuid, value) = records.iter().find(|(t, _, _)| *t == ty).expect("example");
        assert_eq!(mapper.map(ty, *uuid, value), Ok(None), "{ty} records have no resource");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------- validator ---

/// The validator script: `shared/tools/fhir_validate.py` next to the project, or
/// `$FHIR_VALIDATE`.
fn validator_script() -> PathBuf {
    if let Some(p) = std::env::var_os("FHIR_VALIDATE") {
        return PathBuf::from(p);
    }
    let root = root();
    root.ancestors()
        .map(|a| a.join("shared/tools/fhir_validate.py"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "the FHIR validator shared/tools/fhir_validate.py was not found beside {} or any \
                 parent directory; set FHIR_VALIDATE=/path/to/fhir_validate.py",
                root.display()
            )
        })
}

/// Runs the validator in strict mode on `paths`; panics with its output unless it passes.
fn validate_strict(paths: &[&Path]) {
    let python = root().join(".venv-fhir/bin/python");
    assert!(
        python.exists(),
        "{} is missing: create the validator's venv with\n  python3 -m venv .venv-fhir && \
         .venv-fhir/bin/pip install 'fhir.resources==6.4.0' 'pydantic<2'\n(scripts/test does this)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(validator_script())
        .args(["--strict", "--quiet"])
        .args(paths)
        .output()
        .expect("run the FHIR validator");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the FHIR validator failed:\n{text}");
    assert!(text.contains(" 0 error(s), 0 warning(s)"), "unexpected validator summary:\n{text}");
}

/// Exports `records` to NDJSON files and a Bundle in a temporary directory; checks the shape
/// of every line and of the Bundle, and runs the validator on both.
/// With `FHIR_OUT=DIR` set, the files stay in `DIR/<label>` for inspection.
fn export_and_validate(
    label: &str,
    records: Vec<Rec>,
    settings: &FhirSettings,
) -> fhir::ExportReport {
    let source = source_of(&records);
    let site = site();
    let ctx = Context { settings, site: &site, today: today(), source: &source };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = match std::env::var_os("FHIR_OUT") {
        Some(out) => PathBuf::from(out).join(label),
        None => tmp.path().to_path_buf(),
    };
    let ndjson = dir.join("ndjson");
    let mut export = fhir::export(records, ctx);
    let written = export.write_ndjson(&ndjson).expect("write ndjson");
    assert!(!written.is_empty());
    let bundle_path = dir.join("bundle.json");
    export.write_bundle(&bundle_path).expect("write bundle");
    for path in &written {
        let text = std::fs::read_to_string(path).expect("read ndjson");
        for (n, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line).expect("one JSON resource per line");
            assert_no_empty_values(&value, &format!("{}:{}", path.display(), n + 1));
            assert_invariants(&value, &format!("{}:{}", path.display(), n + 1));
            let ty = value["resourceType"].as_str().expect("resourceType");
            assert_eq!(path.file_name().and_then(|f| f.to_str()), Some(&*format!("{ty}.ndjson")));
        }
    }
    let bundle = read_json(&bundle_path);
    assert_no_empty_values(&bundle, "bundle.json");
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), export.report.total(), "one entry per resource");
    for e in entries {
        let (ty, id) = (e["resource"]["resourceType"].as_str(), e["resource"]["id"].as_str());
        let (ty, id) = (ty.expect("type"), id.expect("id"));
        assert_eq!(e["request"], json!({"method": "PUT", "url": format!("{ty}/{id}")}));
        assert_eq!(e["fullUrl"], json!(format!("urn:uuid:{id}")));
    }
    validate_strict(&[&ndjson, &bundle_path]);
    export.report
}

#[test]
fn examples_export_validates_strictly() {
    let report = export_and_validate("examples", examples(), &settings());
    assert_eq!(report.skipped, Vec::new());
    assert_eq!(report.warnings, Vec::new());
    assert_eq!(report.total(), 12, "11 example resources and the site Organization");
    assert_eq!(report.resources.get("Encounter"), Some(&2), "a visit and an encounter");
    assert_eq!(report.not_exported.get(&EntityType::Concept), Some(&4));
    assert_eq!(report.not_exported.get(&EntityType::Generic), Some(&1));
    let golden: Vec<PathBuf> = EXPORTED
        .iter()
        .chain(&["organization"])
        .map(|n| root().join(format!("tests/fixtures/fhir/{n}.json")))
        .collect();
    let golden: Vec<&Path> = golden.iter().map(PathBuf::as_path).collect();
    validate_strict(&golden);
}

#[test]
fn generated_records_export_validates_strictly() {
    let records = generated();
    assert!(records.len() >= 200, "{} records", records.len());
    let mut settings = settings();
    settings.relationship_types.insert(uid(&id(RELTYPE, 1)).to_string(), "MTH".into());
    settings.encounter_classes.insert(uid(&id(LOC, 2)).to_string(), "HH".into());
    let report = export_and_validate("generated", records.clone(), &settings);
    assert_eq!(report.skipped, Vec::new(), "every generated record is expressible");
    let expected = [
        ("Organization", 1),
        ("Location", 5),
        ("Practitioner", 5),
        ("Person", 10),
        ("Patient", 30),
        ("Encounter", 50),
        ("Observation", records.iter().filter(|r| r.0 == EntityType::Obs).count()),
        ("Condition", 15),
        ("AllergyIntolerance", 10),
        ("Appointment", 12),
        ("RelatedPerson", 8),
    ];
    for (ty, n) in expected {
        assert_eq!(report.resources.get(ty), Some(&n), "{ty}");
    }
    // What the generator leaves out on purpose is reported, by record and field.
    let warned = |field: &str| report.warnings.iter().any(|w| w.field.ends_with(field));
    assert!(warned("latitude"), "a location with only a latitude");
    assert!(warned("concept"), "an obs whose concept this node does not hold");
    assert!(warned("person"), "a provider whose person this node does not hold");
    assert!(report.warnings.iter().any(|w| w.message.contains("has no system")));
}

// ------------------------------------------------------------ unexpressible ---

#[test]
fn unexpressible_records_are_skipped_with_a_reason() {
    let mut records = examples();
    let patient = "4a38207f-3a68-401d-b9f8-8324419c9ef3";
    let concept = "e376a8ae-b11e-4d53-a00d-1bf68b98fdd7";
    let bad: Vec<(EntityType, Value, &str, &str)> = vec![
        (
            EntityType::Obs,
            json!({"uuid": "b0000000-0000-4000-8000-000000000001", "person": patient,
                   "concept": concept, "obsDatetime": "2024-03-05T09:00:00Z"}),
            "value",
            "no value",
        ),
        (
            EntityType::Relationship,
            json!({"uuid": "b0000000-0000-4000-8000-000000000002",
                   "personA": patient, "relationshipType": "5fa60a4e-0d5d-4afa-bd0b-9c47a89eca38",
                   "personB": "bd0197a5-1071-4a18-a71e-75b6790cc9b6"}),
            "personB",
            "is not a patient",
        ),
        (
            EntityType::Condition,
            json!({"uuid": "b0000000-0000-4000-8000-000000000003", "patient": patient,
                   "condition": {"nonCoded": "Cough"}, "clinicalStatus": "ACTIVE",
                   "endDate": "2024-03-01"}),
            "endDate",
            "con-4",
        ),
        (
            EntityType::Appointment,
            json!({"uuid": "b0000000-0000-4000-8000-000000000004", "patient": patient,
                   "service": "3739f0f4-ba53-48b7-bd24-32d2d3bb7a86",
                   "startDateTime": "2024-03-19", "endDateTime": "2024-03-19",
                   "status": "Scheduled"}),
            "startDateTime",
            "instant",
        ),
        (
            EntityType::Visit,
            json!({"uuid": "b0000000-0000-4000-8000-000000000005", "patient": patient,
                   "visitType": "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466",
                   "startDatetime": "0000-01-01"}),
            "startDatetime",
            "year 0000",
        ),
        (
            // A visit with the uuid of the example encounter: both would be Encounter/<uuid>.
            EntityType::Visit,
            json!({"uuid": "277ef06d-46d4-4856-aa8c-ae77df5cd1a3", "patient": patient,
                   "visitType": "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466",
                   "startDatetime": "2024-03-05T08:00:00Z"}),
            "uuid",
            "already produced",
        ),
    ];
    for (ty, input, _, _) in &bad {
        records.push(stored(*ty, input));
    }
    let settings = settings();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = source_of(&records);
    let site = site();
    let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
    let mut export = fhir::export(records.clone(), ctx);
    export.write_ndjson(dir.path()).expect("write ndjson");
    export.write_bundle(&dir.path().join("bundle.json")).expect("write bundle");
    let report = &export.report;
    assert_eq!(report.skipped.len(), bad.len(), "{:#?}", report.skipped);
    let mut all_output = String::new();
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        all_output += &std::fs::read_to_string(entry.expect("entry").path()).expect("read");
    }
    for (ty, input, field, reason) in &bad {
        let uuid = input["uuid"].as_str().expect("uuid");
        let err = report
            .skipped
            .iter()
            .find(|e| e.entity.ty == *ty && e.entity.uuid.as_str() == uuid)
            .unwrap_or_else(|| panic!("{ty}/{uuid} is reported as skipped"));
        assert_eq!(err.field, *field, "{err}");
        assert!(err.reason.contains(reason), "{err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{ty}/{uuid}: field {field}: ")), "{text}");
        if *field != "uuid" {
            assert!(!all_output.contains(uuid), "{ty}/{uuid} must not be in the output");
        }
    }
    // The duplicate kept the first record: the example encounter, not the visit.
    let encounters = std::fs::read_to_string(dir.path().join("Encounter.ndjson")).expect("read");
    assert_eq!(encounters.matches("277ef06d-46d4-4856-aa8c-ae77df5cd1a3\"").count(), 1);
    assert!(encounters.contains("\"code\":\"encounter\""));
    validate_strict(&[dir.path()]);
}

#[test]
fn settings_decide_what_is_expressible() {
    let records = examples();
    let source = source_of(&records);
    let site = site();
    let patient = records.iter().find(|r| r.0 == EntityType::Patient).expect("patient").clone();
    let visit_no_zone = stored(
        EntityType::Visit,
        &json!({"uuid": "b0000000-0000-4000-8000-000000000010",
                "patient": "4a38207f-3a68-401d-b9f8-8324419c9ef3",
                "visitType": "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466",
                "startDatetime": "2024-03-05T08:00"}),
    );

    // Without identifier systems and without the uuid identifier, a patient has no identifier.
    let bare = FhirSettings::from_toml("patient_uuid_identifier = false").expect("settings");
    let ctx = Context { settings: &bare, site: &site, today: today(), source: &source };
    let err = Mapper::new(ctx).map(patient.0, patient.1, &patient.2).expect_err("no identifier");
    assert_eq!(err.field, "identifiers");
    // Default settings: the uuid identifier only; both configured types are left out, with
    // a warning each.
    let defaults = FhirSettings::default();
    let ctx = Context { settings: &defaults, site: &site, today: today(), source: &source };
    let mapped =
        Mapper::new(ctx).map(patient.0, patient.1, &patient.2).expect("maps").expect("some");
    let json = mapped.resource.to_json();
    assert_eq!(
        json["identifier"],
        json!([{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:4a38207f-3a68-401d-b9f8-8324419c9ef3"}])
    );
    assert_eq!(mapped.warnings.len(), 2, "{:?}", mapped.warnings);
    assert_eq!(json["meta"]["source"], json!("urn:uuid:5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a"));
    // A date-time without a zone needs utc_offset.
    let err = Mapper::new(ctx)
        .map(visit_no_zone.0, visit_no_zone.1, &visit_no_zone.2)
        .expect_err("no zone");
    assert_eq!(err.field, "startDatetime");
    assert!(err.reason.contains("utc_offset"), "{err}");
    let with_offset = settings();
    let ctx = Context { settings: &with_offset, site: &site, today: today(), source: &source };
    let mapped =
        Mapper::new(ctx).map(visit_no_zone.0, visit_no_zone.1, &visit_no_zone.2).expect("ok");
    let json = mapped.expect("some").resource.to_json();
    assert_eq!(json["period"]["start"], json!("2024-03-05T08:00:00+03:00"));
}

#[test]
fn estimated_birth_dates_follow_fhir2_precision() {
    let records = examples();
    let source = source_of(&records);
    let (settings, site) = (settings(), site());
    let person = |birthdate: &str| {
        stored(
            EntityType::Person,
            &json!({"uuid": "b0000000-0000-4000-8000-000000000020", "gender": "F",
                    "names": [{"uuid": "b0000000-0000-4000-8000-000000000021", "givenName": "A"}],
                    "birthdate": birthdate, "birthdateEstimated": true}),
        )
    };
    for (birthdate, want) in [
        ("2010-06-01", "2010"),
        ("2021-06-01", "2021-06"),
        ("2019-03-21", "2019-03"),
        ("2018-03-20", "2018"),
    ] {
        let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
        let (ty, uuid, value) = person(birthdate);
        let r = Mapper::new(ctx).map(ty, uuid, &value).expect("maps").expect("some");
        assert_eq!(r.resource.to_json()["birthDate"], json!(want), "{birthdate}");
    }
}

// --------------------------------------------------------------- invariants ---

/// The R4 invariants (FHIRPath constraints) of the elements sitesync emits, which the Python
/// validator does not evaluate (a FHIR server does: Medplum rejected a voided condition with an
/// end date under con-4).
fn assert_invariants(r: &Value, at: &str) {
    let has = |k: &str| r.get(k).is_some();
    let codes = |k: &str| -> Vec<String> {
        r[k]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["code"].as_str())
            .map(str::to_string)
            .collect()
    };
    match r["resourceType"].as_str() {
        Some("Condition") => {
            let error = codes("verificationStatus").iter().any(|c| c == "entered-in-error");
            let problem = r["category"].to_string().contains("problem-list-item");
            assert!(!problem || error || has("clinicalStatus"), "{at}: con-3");
            let clinical = codes("clinicalStatus");
            let abated_ok = ["inactive", "resolved", "remission"]
                .iter()
                .any(|c| clinical.iter().any(|x| x == c));
            assert!(!has("abatementDateTime") || abated_ok, "{at}: con-4");
            assert!(!error || !has("clinicalStatus"), "{at}: con-5");
        }
        Some("AllergyIntolerance") => {
            let error = codes("verificationStatus").iter().any(|c| c == "entered-in-error");
            assert!(error || has("clinicalStatus"), "{at}: ait-1");
            assert!(!error || !has("clinicalStatus"), "{at}: ait-2");
        }
        Some("Appointment") => {
            assert_eq!(has("start"), has("end"), "{at}: app-2");
            let status = r["status"].as_str().unwrap_or("");
            assert!(
                has("start") || ["proposed", "cancelled", "waitlist"].contains(&status),
                "{at}: app-3"
            );
            for p in r["participant"].as_array().into_iter().flatten() {
                assert!(p.get("type").is_some() || p.get("actor").is_some(), "{at}: app-1");
            }
        }
        Some("Location") => {
            if let Some(p) = r.get("position") {
                assert!(p["latitude"].is_number() && p["longitude"].is_number(), "{at}: position");
            }
        }
        _ => {}
    }
    // ext-1 everywhere: an extension has a value or sub-extensions, not both.
    fn ext(v: &Value, at: &str) {
        match v {
            Value::Object(o) => {
                if o.contains_key("url")
                    && (o.contains_key("extension") || o.keys().any(|k| k.starts_with("value")))
                {
                    let value = o.keys().any(|k| k.starts_with("value"));
                    assert!(value != o.contains_key("extension"), "{at}: ext-1");
                }
                o.values().for_each(|x| ext(x, at));
            }
            Value::Array(a) => a.iter().for_each(|x| ext(x, at)),
            _ => {}
        }
    }
    ext(r, at);
}

// --------------------------------------------------------------- JSON shape ---

/// FHIR JSON has no `null`, `""` (or blank), `[]` or `{}`.
fn assert_no_empty_values(value: &Value, at: &str) {
    fn walk(v: &Value, path: &str, bad: &mut Vec<String>) {
        match v {
            Value::Null => bad.push(format!("{path}: null")),
            Value::String(s) if s.trim().is_empty() => bad.push(format!("{path}: blank string")),
            Value::Array(a) if a.is_empty() => bad.push(format!("{path}: []")),
            Value::Object(o) if o.is_empty() => bad.push(format!("{path}: {{}}")),
            Value::Array(a) => {
                a.iter().enumerate().for_each(|(i, x)| walk(x, &format!("{path}[{i}]"), bad))
            }
            Value::Object(o) => o.iter().for_each(|(k, x)| walk(x, &format!("{path}.{k}"), bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    walk(value, "", &mut bad);
    assert!(bad.is_empty(), "{at}: empty values in FHIR output:\n{}", bad.join("\n"));
}

#[test]
fn no_empty_values_even_from_sparse_records() {
    // Records with only their required fields, and optional strings that are blank after
    // cleaning, map without empty elements.
    let patient = "c0000000-0000-4000-8000-000000000001";
    let sparse = vec![
        stored(
            EntityType::Patient,
            &json!({"uuid": patient, "gender": "U",
                    "identifiers": [{"uuid": "c0000000-0000-4000-8000-000000000002",
                                     "identifier": " \u{a0} ", "identifierType": "0e69a49e-72ab-43af-8bb9-087ecb64dd5e"}],
                    "names": [{"uuid": "c0000000-0000-4000-8000-000000000003", "givenName": "\u{b}"}],
                    "addresses": [{"uuid": "c0000000-0000-4000-8000-000000000004", "preferred": true}],
                    "attributes": [{"uuid": "c0000000-0000-4000-8000-000000000005",
                                    "attributeType": "f2648c03-219b-4a99-b0f7-0c897f4f1946", "value": "  "}]}),
        ),
        stored(
            EntityType::Person,
            &json!({"uuid": "c0000000-0000-4000-8000-000000000006", "names": [], "gender": "M"}),
        ),
        stored(
            EntityType::Location,
            &json!({"uuid": "c0000000-0000-4000-8000-000000000007", "name": "X", "tags": []}),
        ),
        stored(
            EntityType::Provider,
            &json!({"uuid": "c0000000-0000-4000-8000-000000000008", "identifier": "P-1"}),
        ),
        stored(
            EntityType::Visit,
            &json!({"uuid": "c0000000-0000-4000-8000-000000000009", "patient": patient,
                    "visitType": "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466", "startDatetime": "2024-01-01"}),
        ),
        stored(
            EntityType::Encounter,
            &json!({"uuid": "c0000000-0000-4000-8000-00000000000a", "patient": patient,
                    "encounterType": "c559e725-60aa-42cc-a77f-be67097c9493", "encounterDatetime": "2024-01-01",
                    "encounterProviders": []}),
        ),
        stored(
            EntityType::Obs,
            &json!({"uuid": "c0000000-0000-4000-8000-00000000000b", "person": patient,
                    "concept": "c0000000-0000-4000-8000-0000000000ff", "obsDatetime": "2024-01-01",
                    "valueBoolean": false}),
        ),
        stored(
            EntityType::Condition,
            &json!({"uuid": "c0000000-0000-4000-8000-00000000000c", "patient": patient,
                    "condition": {"nonCoded": "Cough"}, "clinicalStatus": "HISTORY_OF"}),
        ),
        stored(
            EntityType::Allergy,
            &json!({"uuid": "c0000000-0000-4000-8000-00000000000d", "patient": patient,
                    "allergen": {"allergenType": "OTHER", "nonCodedAllergen": "Latex"},
                    "reactions": [{"uuid": "c0000000-0000-4000-8000-00000000000e", "voided": true,
                                   "reactionNonCoded": "Rash"}]}),
        ),
        stored(
            EntityType::Appointment,
            &json!({"uuid": "c0000000-0000-4000-8000-00000000000f", "patient": patient,
                    "service": "3739f0f4-ba53-48b7-bd24-32d2d3bb7a86", "status": "Requested",
                    "startDateTime": "2024-01-01T10:00:00Z", "endDateTime": "2024-01-01T10:15:00Z"}),
        ),
        stored(
            EntityType::Relationship,
            &json!({"uuid": "c0000000-0000-4000-8000-000000000010", "personA": "c0000000-0000-4000-8000-000000000006",
                    "relationshipType": "5fa60a4e-0d5d-4afa-bd0b-9c47a89eca38", "personB": patient}),
        ),
    ];
    let n = sparse.len();
    let report = export_and_validate("sparse", sparse, &settings());
    assert_eq!(report.skipped, Vec::new());
    assert_eq!(report.total(), n + 1);
}

// ---------------------------------------------------------------- generator ---

const CONCEPT: u32 = 0xc0;
const LOC: u32 = 0x10;
const PERSON: u32 = 0x20;
const PATIENT: u32 = 0x30;
const PROVIDER: u32 = 0x40;
const VISIT: u32 = 0x50;
const ENCOUNTER: u32 = 0x60;
const OBS: u32 = 0x70;
const CONDITION: u32 = 0x80;
const ALLERGY: u32 = 0x90;
const APPOINTMENT: u32 = 0xa0;
const RELATIONSHIP: u32 = 0xb0;
const ITEM: u32 = 0xd0;
const RELTYPE: u32 = 0xe0;
const META: u32 = 0xf0;

/// A deterministic uuid: `<kind>` and a number.
fn id(kind: u32, n: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// A small deterministic generator (xorshift), so the data set is the same on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const GIVEN: &[&str] =
    &["Amani", "Baraka", "Chausiku", "Dalila", "Eshe", "Faraji", "Gathoni", "Hamisi"];
const FAMILY: &[&str] = &["Mwangaza", "Otieno", "Wanjiru", "Kamau", "Achieng", "Mutua", "Njoroge"];

/// Collects generated records; numbers collection items and obs.
struct Builder {
    g: Gen,
    out: Vec<Rec>,
    items: usize,
    obs: usize,
}

impl Builder {
    fn item(&mut self) -> String {
        self.items += 1;
        id(ITEM, self.items)
    }

    /// Adds an obs of `concept` with one value field (or none) and extra fields; returns its uuid.
    fn obs(&mut self, concept: String, value: Option<(&str, Value)>, extra: Value) -> String {
        let uuid = id(OBS, self.obs);
        self.obs += 1;
        let i = self.obs;
        let mut o = json!({"uuid": uuid, "person": id(PATIENT, i % 30), "concept": concept,
                           "obsDatetime": format!("2024-02-{:02}T09:{:02}:00.000+0300", 1 + i % 28, i % 60),
                           "encounter": id(ENCOUNTER, i % 30), "location": id(LOC, i % 5)});
        if let Some((field, v)) = value {
            o[field] = v;
        }
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                o[k] = v;
            }
        }
        if self.g.chance(20) {
            o["status"] = json!(self.g.pick(&["PRELIMINARY", "FINAL", "AMENDED"]));
        }
        self.out.push(stored(EntityType::Obs, &o));
        uuid
    }
}

/// About 230 varied records: every type, voided and retired ones, obs of every value kind,
/// obs groups (one voided with voided members), names and addresses with every part, and
/// values that need cleaning.
fn generated() -> Vec<Rec> {
    let mut b = Builder { g: Gen(0x5eed_f00d_1234_5678), out: Vec::new(), items: 0, obs: 0 };
    let mut mapping = 0usize;
    let mut ciel = |code: &str| {
        mapping += 1;
        json!({"uuid": id(ITEM, 50_000 + mapping), "source": "CIEL", "code": code, "mapType": "SAME-AS"})
    };

    // Concepts 0..14
    let concepts = [
        json!({"display": "Weight (kg)", "datatype": "Numeric", "conceptClass": "Misc", "units": "kg", "allowDecimal": true,
               "mappings": [ciel("5089"), {"uuid": id(ITEM, 20_001), "source": "LOINC", "code": "29463-7", "mapType": "SAME-AS"}]}),
        json!({"display": "Pulse", "datatype": "Numeric", "conceptClass": "Finding", "units": "beats/min", "allowDecimal": false, "mappings": [ciel("5087")]}),
        json!({"display": "CD4 count", "datatype": "Numeric", "conceptClass": "Test", "units": "cells/µL", "allowDecimal": false}),
        json!({"display": "Tablets dispensed", "datatype": "Numeric", "conceptClass": "Misc", "units": "tablets"}),
        json!({"display": "HIV test result", "datatype": "Coded", "conceptClass": "Test", "mappings": [ciel("1040")]}),
        json!({"display": "Positive", "datatype": "N/A", "conceptClass": "Misc", "mappings": [ciel("703")]}),
        json!({"display": "Negative", "datatype": "N/A", "conceptClass": "Misc", "mappings": [ciel("664")]}),
        json!({"display": "Clinical notes", "datatype": "Text", "conceptClass": "Misc"}),
        json!({"display": "Date of next visit", "datatype": "Datetime", "conceptClass": "Misc"}),
        json!({"display": "Currently pregnant", "datatype": "Boolean", "conceptClass": "Finding"}),
        json!({"display": "Vital signs", "datatype": "N/A", "conceptClass": "ConvSet"}),
        json!({"display": "Malaria", "datatype": "N/A", "conceptClass": "Diagnosis", "mappings": [ciel("116128")]}),
        json!({"display": "Rash", "datatype": "N/A", "conceptClass": "Symptom", "mappings": [ciel("512")]}),
        json!({"display": "Peanuts", "datatype": "N/A", "conceptClass": "Misc"}),
    ];
    for (i, mut c) in concepts.into_iter().enumerate() {
        c["uuid"] = json!(id(CONCEPT, i));
        b.out.push(stored(EntityType::Concept, &c));
    }
    let concept = |i: usize| id(CONCEPT, i);

    // Locations 0..5
    for i in 0..5 {
        let mut l = json!({"uuid": id(LOC, i), "name": format!("Clinic {i}"), "cityVillage": "Mawingu", "country": "Kenya"});
        match i {
            0 => {
                l["latitude"] = json!("-1.2921");
                l["longitude"] = json!("36.8219");
                l["address1"] = json!("Hospital Road");
                l["address2"] = json!("Block C");
                l["tags"] = json!(["Login Location", "  Visit \t Location "]);
            }
            1 => l["retired"] = json!(true),
            3 => l["latitude"] = json!("0.5"),
            4 => l["parentLocation"] = json!(id(LOC, 0)),
            _ => {}
        }
        b.out.push(stored(EntityType::Location, &l));
    }

    // Names, addresses and attributes shared by persons and patients.
    fn demographics(b: &mut Builder, rec: &mut Value) {
        let mut names = vec![
            json!({"uuid": b.item(), "givenName": b.g.pick(GIVEN), "familyName": b.g.pick(FAMILY), "preferred": true}),
        ];
        if b.g.chance(30) {
            names.push(json!({"uuid": b.item(), "prefix": "Mrs.", "givenName": b.g.pick(GIVEN), "middleName": b.g.pick(GIVEN),
                              "familyNamePrefix": "wa", "familyName": b.g.pick(FAMILY), "familyName2": b.g.pick(FAMILY),
                              "familyNameSuffix": "II", "degree": "BSc", "preferred": false}));
        }
        if b.g.chance(20) {
            names.push(
                json!({"uuid": b.item(), "givenName": "Old", "familyName": "Name", "voided": true}),
            );
        }
        rec["names"] = json!(names);
        rec["gender"] = json!(b.g.pick(&["M", "F", "U", "O"]));
        if b.g.chance(80) {
            rec["birthdate"] = json!(format!(
                "{}-{:02}-{:02}",
                1940 + b.g.below(84),
                1 + b.g.below(12),
                1 + b.g.below(28)
            ));
            rec["birthdateEstimated"] = json!(b.g.chance(30));
        }
        let mut addresses = vec![
            json!({"uuid": b.item(), "address1": "Plot 7", "address2": "Mango Lane", "address3": "Ward 3",
                                        "cityVillage": "Mawingu", "countyDistrict": "Riverbend", "stateProvince": "Lakeside",
                                        "country": "Kenya", "postalCode": "40100", "latitude": "-0.1", "longitude": "34.7", "preferred": true}),
        ];
        if b.g.chance(30) {
            addresses
                .push(json!({"uuid": b.item(), "cityVillage": "Old Town", "preferred": false}));
        }
        if b.g.chance(10) {
            addresses.push(json!({"uuid": b.item(), "country": "Uganda", "voided": true}));
        }
        rec["addresses"] = json!(addresses);
        let mut attributes = vec![
            json!({"uuid": b.item(), "attributeType": "f2648c03-219b-4a99-b0f7-0c897f4f1946", "value": "+254 700 000 000"}),
        ];
        if b.g.chance(50) {
            attributes.push(json!({"uuid": b.item(), "attributeType": "9cd5ed96-8db1-4620-9dc1-cb37918a0895", "value": "Mother's name\u{a0}here"}));
        }
        if b.g.chance(20) {
            attributes.push(json!({"uuid": b.item(), "attributeType": "9cd5ed96-8db1-4620-9dc1-cb37918a0895", "value": "gone", "voided": true}));
        }
        rec["attributes"] = json!(attributes);
    }

    // Persons 0..10
    for i in 0..10 {
        let mut p = json!({"uuid": id(PERSON, i)});
        demographics(&mut b, &mut p);
        if i == 9 {
            p["voided"] = json!(true);
            p["voidReason"] = json!("duplicate");
        }
        b.out.push(stored(EntityType::Person, &p));
    }
    // Patients 0..30
    for i in 0..30 {
        let mut p = json!({"uuid": id(PATIENT, i)});
        demographics(&mut b, &mut p);
        let mut ids = vec![json!({"uuid": b.item(), "identifier": format!("{}MRN", 100 + i),
                                  "identifierType": "0e69a49e-72ab-43af-8bb9-087ecb64dd5e", "location": id(LOC, i % 5), "preferred": true})];
        if b.g.chance(50) {
            ids.push(json!({"uuid": b.item(), "identifier": format!("NID-{i:06}"), "identifierType": "8cab81b7-71de-465e-8901-bbe7d5ac9506"}));
        }
        if b.g.chance(30) {
            // A type without a configured system: left out, with a warning.
            ids.push(json!({"uuid": b.item(), "identifier": format!("ART-{i}"), "identifierType": id(META, 1)}));
        }
        if b.g.chance(10) {
            ids.push(json!({"uuid": b.item(), "identifier": "OLD", "identifierType": "0e69a49e-72ab-43af-8bb9-087ecb64dd5e", "voided": true}));
        }
        p["identifiers"] = json!(ids);
        match i % 10 {
            3 => {
                p["dead"] = json!(true);
                p["deathDate"] = json!("2023-12-01T14:30:00.000+0300");
                p["causeOfDeath"] = json!(concept(11));
            }
            4 => p["dead"] = json!(true),
            5 => p["voided"] = json!(true),
            _ => {}
        }
        b.out.push(stored(EntityType::Patient, &p));
    }
    // Providers 0..5
    for i in 0..5 {
        let mut p = json!({"uuid": id(PROVIDER, i), "identifier": format!("PRV-{i:04}")});
        match i {
            0 | 4 => p["person"] = json!(id(PERSON, i)),
            1 => p["name"] = json!("Nurse Zawadi"),
            2 => {
                p["person"] = json!(id(PERSON, 2));
                p["retired"] = json!(true);
                p["retireReason"] = json!("left");
            }
            _ => {
                // A person this node does not hold.
                p["person"] = json!(id(PERSON, 99));
                p["name"] = json!("Dr. Visiting");
            }
        }
        if i == 4 {
            p["attributes"] = json!([{"uuid": b.item(), "attributeType": "f2648c03-219b-4a99-b0f7-0c897f4f1946", "value": "+254 711 111 111"},
                                     {"uuid": b.item(), "attributeType": id(META, 2), "value": "licence"}]);
        }
        b.out.push(stored(EntityType::Provider, &p));
    }
    // Visits 0..20
    for i in 0..20 {
        let day = 1 + i % 28;
        let mut v = json!({"uuid": id(VISIT, i), "patient": id(PATIENT, i % 30), "visitType": id(META, 3),
                           "startDatetime": format!("2024-02-{day:02}T08:00:00.000+0300")});
        if i % 3 != 0 {
            v["stopDatetime"] = json!(format!("2024-02-{day:02}T11:30:00.000+0300"));
        }
        if i % 4 != 0 {
            v["location"] = json!(id(LOC, i % 5));
        }
        if i == 7 {
            v["voided"] = json!(true);
        }
        v["attributes"] =
            json!([{"uuid": b.item(), "attributeType": id(META, 4), "value": "Insurance"}]);
        b.out.push(stored(EntityType::Visit, &v));
    }
    // Encounters 0..30
    for i in 0..30 {
        let mut e = json!({"uuid": id(ENCOUNTER, i), "patient": id(PATIENT, i % 30), "encounterType": id(META, 5),
                           "encounterDatetime": format!("2024-02-{:02}T09:{:02}:00Z", 1 + i % 28, i % 60)});
        if i % 2 == 0 {
            e["visit"] = json!(id(VISIT, i % 20));
        }
        if i % 5 != 4 {
            e["location"] = json!(id(LOC, i % 5));
        }
        let mut providers = vec![
            json!({"uuid": b.item(), "provider": id(PROVIDER, i % 5), "encounterRole": id(META, 6)}),
        ];
        if i % 3 == 0 {
            providers.push(json!({"uuid": b.item(), "provider": id(PROVIDER, (i + 1) % 5), "encounterRole": id(META, 6), "voided": true}));
            // The same provider twice (two roles): one participant.
            providers.push(json!({"uuid": b.item(), "provider": id(PROVIDER, i % 5), "encounterRole": id(META, 7)}));
        }
        e["encounterProviders"] = json!(providers);
        if i == 11 {
            e["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Encounter, &e));
    }
    // Obs
    let interpretations = [
        "NORMAL",
        "ABNORMAL",
        "CRITICALLY_ABNORMAL",
        "CRITICALLY_HIGH",
        "CRITICALLY_LOW",
        "HIGH",
        "LOW",
        "OFF_SCALE_LOW",
        "OFF_SCALE_HIGH",
        "SIGNIFICANT_CHANGE_DOWN",
        "SIGNIFICANT_CHANGE_UP",
        "RESISTANT",
        "SUSCEPTIBLE",
        "INTERMEDIATE",
        "POSITIVE",
        "NEGATIVE",
    ];
    for (i, interpretation) in interpretations.iter().enumerate() {
        b.obs(
            concept(0),
            Some(("valueNumeric", json!(40.0 + i as f64 * 1.25))),
            json!({"interpretation": interpretation}),
        );
    }
    for i in 0..6 {
        b.obs(concept(1), Some(("valueNumeric", json!(60 + i * 7))), json!({}));
        b.obs(
            concept(2),
            Some(("valueNumeric", json!(350 + i * 50))),
            json!({"comment": "  fasting \u{c} sample "}),
        );
        b.obs(concept(3), Some(("valueNumeric", json!(30))), json!({}));
        b.obs(concept(4), Some(("valueCoded", json!(concept(5 + i % 2)))), json!({}));
        b.obs(
            concept(7),
            Some(("valueText", json!(format!("Patient reports {i} days of cough\nand fever")))),
            json!({}),
        );
        b.obs(
            concept(8),
            Some(("valueDatetime", json!(format!("2024-04-{:02}", 1 + i)))),
            json!({}),
        );
        b.obs(concept(9), Some(("valueBoolean", json!(i % 2 == 0))), json!({}));
    }
    // A date-time without a zone (utc_offset applies), a voided obs, a concept not held here.
    b.obs(concept(8), Some(("valueDatetime", json!("2024-04-09T10:30"))), json!({}));
    b.obs(
        concept(0),
        Some(("valueNumeric", json!(70))),
        json!({"voided": true, "voidReason": "wrong patient"}),
    );
    b.obs(id(CONCEPT, 999), Some(("valueNumeric", json!(1.5))), json!({}));
    // Obs groups: members point at their group; the group itself has no value.
    for i in 0..4 {
        let group = id(OBS, 500 + i);
        let voided_group = i == 3;
        for (c, v) in [(1usize, json!(72)), (0, json!(61.5))] {
            b.obs(
                concept(c),
                Some(("valueNumeric", v)),
                json!({"obsGroup": group, "person": id(PATIENT, i), "voided": voided_group || (i == 1 && c == 0)}),
            );
        }
        let mut o = json!({"uuid": group, "person": id(PATIENT, i), "concept": concept(10), "obsDatetime": "2024-02-10T09:00:00Z"});
        if voided_group {
            o["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Obs, &o));
    }
    // Conditions 0..15
    for i in 0..15 {
        let mut c = json!({"uuid": id(CONDITION, i), "patient": id(PATIENT, i), "clinicalStatus": (["ACTIVE", "INACTIVE", "HISTORY_OF"][i % 3])});
        c["condition"] = match i % 4 {
            0 => json!({"coded": concept(11)}),
            1 => json!({"nonCoded": "Chronic cough"}),
            2 => json!({"coded": concept(11), "nonCoded": "Malaria, clinically diagnosed"}),
            _ => json!({"coded": concept(12)}),
        };
        if i % 2 == 0 {
            c["verificationStatus"] = json!(["CONFIRMED", "PROVISIONAL"][i % 4 / 2]);
        }
        if i % 3 != 0 {
            c["onsetDate"] = json!("2023-06-01");
            c["endDate"] = json!("2024-01-15T00:00:00.000+0300");
        }
        if i % 5 == 0 {
            c["additionalDetail"] = json!("Seen at outreach");
            c["encounter"] = json!(id(ENCOUNTER, i));
        }
        if i == 6 || i == 7 {
            c["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Condition, &c));
    }
    // Allergies 0..10
    for i in 0..10 {
        let ty = ["DRUG", "FOOD", "ENVIRONMENT", "OTHER"][i % 4];
        let mut a = json!({"uuid": id(ALLERGY, i), "patient": id(PATIENT, i)});
        a["allergen"] = match i % 3 {
            0 => json!({"allergenType": ty, "codedAllergen": concept(13)}),
            1 => json!({"allergenType": ty, "nonCodedAllergen": "Bee stings"}),
            _ => {
                json!({"allergenType": ty, "codedAllergen": concept(13), "nonCodedAllergen": "Roasted peanuts"})
            }
        };
        if i % 4 != 3 {
            a["severity"] = json!(["MILD", "MODERATE", "SEVERE"][i % 3]);
        }
        a["reactions"] = match i % 4 {
            0 => {
                json!([{"uuid": b.item(), "reaction": concept(12)}, {"uuid": b.item(), "reactionNonCoded": "Itching"}])
            }
            1 => {
                json!([{"uuid": b.item(), "reaction": concept(12), "reactionNonCoded": "Raised rash"}])
            }
            2 => json!([{"uuid": b.item(), "reaction": concept(12), "voided": true}]),
            _ => json!([]),
        };
        if i % 2 == 0 {
            a["comment"] = json!("Reported by patient");
        }
        if i == 5 {
            a["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Allergy, &a));
    }
    // Appointments 0..12
    let statuses = ["Requested", "Scheduled", "CheckedIn", "Completed", "Cancelled", "Missed"];
    for i in 0..12 {
        let mut a = json!({"uuid": id(APPOINTMENT, i), "patient": id(PATIENT, i), "service": id(META, 8),
                           "startDateTime": format!("2024-03-{:02}T09:00:00.000+0300", 1 + i),
                           "endDateTime": format!("2024-03-{:02}T09:30:00.000+0300", 1 + i),
                           "status": statuses[i % 6]});
        if i % 2 == 0 {
            a["provider"] = json!(id(PROVIDER, i % 5));
            a["location"] = json!(id(LOC, i % 5));
        }
        if i % 3 != 2 {
            a["appointmentKind"] = json!(["Scheduled", "WalkIn", "Virtual"][i % 3]);
            a["comments"] = json!("Follow-up");
        }
        if i == 10 {
            a["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Appointment, &a));
    }
    // Relationships 0..8: person A a person (or a patient), person B a patient.
    for i in 0..8 {
        let mut r = json!({"uuid": id(RELATIONSHIP, i), "relationshipType": id(RELTYPE, 1 + i % 2),
                           "personA": if i == 3 { id(PATIENT, 20) } else { id(PERSON, i) }, "personB": id(PATIENT, i)});
        match i % 4 {
            0 => r["startDate"] = json!("2020-01-01"),
            1 => {
                r["startDate"] = json!("2019-05-01T00:00:00.000+0300");
                r["endDate"] = json!("2023-05-01T00:00:00.000+0300");
            }
            2 => r["startDate"] = json!("2030-01-01"),
            _ => {}
        }
        if i == 6 {
            r["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Relationship, &r));
    }
    // Generic records have no resource.
    b.out.push(stored(
        EntityType::Generic,
        &json!({"uuid": id(META, 100), "property": "locale", "value": "en"}),
    ));
    b.out.push(stored(
        EntityType::Generic,
        &json!({"uuid": id(META, 101), "list": [1, null, {"a": []}]}),
    ));
    b.out
}

// ---------------------------------------------------------------------- CLI ---

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

#[test]
fn odd_stored_data_is_an_error_never_a_panic() {
    // Records reach a node from other nodes (and other versions); whatever a field holds, the
    // mapper answers with a resource or a MapError naming the record and the field.
    let records = examples();
    let source = source_of(&records);
    let (settings, site) = (settings(), site());
    let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
    let mapper = Mapper::new(ctx);
    let odd = [
        json!(null),
        json!(7),
        json!(-1.5),
        json!(true),
        json!(""),
        json!("x"),
        json!("2024-13-45T99:99"),
        json!([]),
        json!([1, {"a": 2}]),
        json!({}),
        json!({"00000000-0000-4000-8000-000000000001": {"voided": "yes"}}),
    ];
    let mut mapped = 0;
    let mut ndjson: std::collections::BTreeMap<&str, String> = Default::default();
    for (ty, uuid, value) in &records {
        let Value::Object(map) = value else { panic!("object") };
        for (field, original) in map {
            let mut variants: Vec<Value> = odd.to_vec();
            // Inside keyed collections and nested objects, one level down.
            if let Value::Object(items) = original {
                for (k, item) in items {
                    if let Value::Object(inner) = item {
                        for f in inner.keys() {
                            for o in &odd {
                                let mut v = original.clone();
                                v[k][f] = o.clone();
                                variants.push(v);
                            }
                        }
                    } else {
                        for o in &odd {
                            let mut v = original.clone();
                            v[k] = o.clone();
                            variants.push(v);
                        }
                    }
                }
            }
            for variant in variants {
                let mut record = value.clone();
                record[field] = variant;
                match mapper.map(*ty, *uuid, &record) {
                    Ok(None) => {}
                    Ok(Some(m)) => {
                        mapped += 1;
                        let line = m.resource.to_json().to_string() + "\n";
                        ndjson.entry(m.resource.resource_type()).or_default().push_str(&line);
                    }
                    Err(e) => {
                        assert_eq!(e.entity, EntityId::new(*ty, *uuid));
                        assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e}");
                    }
                }
            }
        }
    }
    assert!(mapped > 300, "{mapped} variants mapped");
    // What maps at all is valid FHIR.
    let dir = tempfile::tempdir().expect("tempdir");
    for (ty, text) in &ndjson {
        std::fs::write(dir.path().join(format!("{ty}.ndjson")), text).expect("write");
    }
    validate_strict(&[dir.path()]);
    for not_object in [json!(null), json!([]), json!("patient")] {
        let err = mapper.map(
            EntityType::Patient,
            uid("4a38207f-3a68-401d-b9f8-8324419c9ef3"),
            &not_object,
        );
        assert_eq!(err.map_err(|e| e.field), Err("(record)".to_string()));
    }
}
