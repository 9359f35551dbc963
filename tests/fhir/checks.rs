//! What every export's output is checked against: the independent validator
//! (`shared/tools/fhir_validate.py --strict`), the R4 invariants it does not evaluate, and the
//! JSON shape (no empty values). No tests here: the rooms with tests call these.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use sitesync::fhir::{self, Context, FhirSettings};

use crate::{Rec, read_json, root, site, source_of, today};

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
pub(crate) fn validate_strict(paths: &[&Path]) {
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
pub(crate) fn export_and_validate(
    label: &str,
    records: Vec<Rec>,
    settings: &FhirSettings,
) -> fhir::FhirExportReport {
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

// --------------------------------------------------------------- invariants ---

/// The R4 invariants (FHIRPath constraints) of the elements sitesync emits, which the Python
/// validator does not evaluate (a FHIR server does: Medplum rejected a voided condition with an
/// end date under con-4).
pub(crate) fn assert_invariants(r: &Value, at: &str) {
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
pub(crate) fn assert_no_empty_values(value: &Value, at: &str) {
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
