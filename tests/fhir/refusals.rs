//! Records that cannot be valid FHIR: skipped from an export with a reason naming the record
//! and the field (never in the output), and odd stored data from other nodes or versions is a
//! `MapError`, never a panic.

use serde_json::{Value, json};

use sitesync::fhir::{self, Context, Mapper};
use sitesync::id::{EntityId, EntityType};

use crate::checks::validate_strict;
use crate::{examples, settings, site, source_of, stored, today, uid};

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
