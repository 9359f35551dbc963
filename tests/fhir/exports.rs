//! Whole exports through the validator: the examples (and their golden files), ~230 generated
//! records of every type, and records with only their required fields; each checked for its
//! resource counts, skips and warnings as well.

use std::path::{Path, PathBuf};

use serde_json::json;

use sitesync::id::EntityType;

use crate::checks::{export_and_validate, validate_strict};
use crate::generator::{LOC, RELTYPE, generated, id};
use crate::{EXPORTED, examples, root, settings, stored, uid};

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
