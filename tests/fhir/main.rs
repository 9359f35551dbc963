//! FHIR export (src/fhir): the example records of `docs/examples/entities/` against reviewed
//! golden resources in `tests/fixtures/fhir/`; the NDJSON export and the transaction Bundle of
//! the examples and of ~230 generated records through the independent validator
//! (`../shared/tools/fhir_validate.py --strict`, in the `.venv-fhir` venv that `scripts/test`
//! sets up); records that cannot be valid FHIR skipped with a reason; and no `null`, `""`, `[]`
//! or `{}` anywhere in the output.
//!
//! `FHIR_BLESS=1 cargo test --release --test fhir` rewrites the golden files (review the diff
//! field by field against docs/fhir-mapping.md before committing it).
//!
//! The rooms, by what they test:
//!
//! - `golden`: each example record against its reviewed golden resource.
//! - `exports`: whole exports (the examples, ~230 generated records, sparse records) through
//!   the validator.
//! - `refusals`: records that cannot be valid FHIR are skipped with a reason, odd stored data is
//!   an error and never a panic.
//! - `context`: what the settings and today's date change in a mapping.
//! - `cli`: `sitesync fhir export` on a node.
//! - `roundtrip`: the inverse mapping against the export (what the EMR bridge reads back).
//! - `checks` (no tests): the validator run and the checks every export's output passes.
//! - `generator` (no tests): the deterministic generated data set.
//!
//! This file holds the fixtures every room reads (settings, site, today, the examples) and no
//! tests. Every path is from `CARGO_MANIFEST_DIR` ([`root`]): a room must not read a path
//! relative to its own file.

mod checks;
mod cli;
mod context;
mod exports;
mod generator;
mod golden;
mod refusals;
mod roundtrip;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use sitesync::entity;
use sitesync::fhir::{Date, FhirSettings, Site};
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
