//! Concepts as codes: a concept record becomes the CodeableConcept of every resource that
//! names it (FHIR2 `ConceptTranslatorImpl`), cached per [`Mapper`](super::Mapper); and the fixed
//! tables from OpenMRS vocabularies to standard code systems (obs interpretations, UCUM units).
//!
//! Concepts have no resource of their own, so nothing here builds a resource; a concept this
//! node does not hold is a warning and a uuid-only code, never an error.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Job, uid_coding};
use crate::fhir::model::{CodeableConcept, Coding};
use crate::fhir::read::{Obj, clean_code};
use crate::fhir::settings::FhirSettings;
use crate::id::{EntityId, EntityType, Uid};

/// What a concept record contributes.
#[derive(Clone, Debug)]
pub(super) struct ConceptInfo {
    pub(super) code: CodeableConcept,
    pub(super) class: Option<String>,
    pub(super) units: Option<String>,
    pub(super) allow_decimal: Option<bool>,
    found: bool,
}

impl Job<'_, '_> {
    pub(super) fn concept_info(&mut self, field: &str, uuid: &Uid) -> ConceptInfo {
        let cached = self.m.concepts.borrow().get(uuid).cloned();
        if let Some(info) = cached {
            if !info.found {
                self.warn(
                    field,
                    format!(
                        "concept {uuid} is not held by this node; the code carries only its uuid"
                    ),
                );
            }
            return info;
        }
        let info = match self.ctx().source.record(EntityType::Concept, uuid) {
            Some(Value::Object(map)) => concept_info(self.settings(), uuid, &map),
            _ => ConceptInfo {
                code: CodeableConcept::of(uid_coding(uuid)),
                class: None,
                units: None,
                allow_decimal: None,
                found: false,
            },
        };
        if !info.found {
            self.warn(
                field,
                format!("concept {uuid} is not held by this node; the code carries only its uuid"),
            );
        }
        self.m.concepts.borrow_mut().insert(*uuid, info.clone());
        info
    }

    pub(super) fn concept(&mut self, field: &str, uuid: &Uid) -> CodeableConcept {
        self.concept_info(field, uuid).code
    }
}

/// A concept record's CodeableConcept (FHIR2 `ConceptTranslatorImpl`): `text` and the first
/// coding's `display` are the concept's display; the first coding's code is its uuid; then,
/// per coding system, the one mapping of that system, or its SAME-AS mapping when there are
/// several map types. A concept record that does not read is still usable by its uuid.
fn concept_info(settings: &FhirSettings, uuid: &Uid, map: &Map<String, Value>) -> ConceptInfo {
    let o = Obj::root(EntityId::new(EntityType::Concept, *uuid), map);
    let display = o.text("display").ok().flatten();
    let mut code = CodeableConcept {
        id: None,
        coding: vec![Coding {
            code: Some(uuid.to_string()),
            display: display.clone(),
            system: None,
        }],
        text: display,
    };
    // system -> map type -> code (first mapping in uuid order wins within one map type)
    let mut systems: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for item in o.items("mappings").unwrap_or_default() {
        let m = item.obj(o.entity);
        let (Ok(Some(source)), Ok(Some(value))) = (m.raw_str("source"), m.raw_str("code")) else {
            continue;
        };
        let Some(value) = clean_code(value) else { continue };
        let url = match settings.concept_source_url(source) {
            Some(u) => u.to_string(),
            None => match m.raw_str("sourceUrl") {
                Ok(Some(u)) if u.contains(':') && !u.chars().any(char::is_whitespace) => {
                    u.to_string()
                }
                _ => continue,
            },
        };
        let map_type = m.raw_str("mapType").ok().flatten().unwrap_or("").to_string();
        systems.entry(url).or_default().entry(map_type).or_insert(value);
    }
    for (system, by_type) in systems {
        let chosen =
            if by_type.len() == 1 { by_type.values().next() } else { by_type.get("SAME-AS") };
        if let Some(c) = chosen {
            code.coding.push(Coding::new(&system, c));
        }
    }
    ConceptInfo {
        code,
        class: o.text("conceptClass").ok().flatten(),
        units: o.text("units").ok().flatten(),
        allow_decimal: o.flag("allowDecimal").ok().flatten(),
        found: true,
    }
}

/// OpenMRS obs interpretations, their v3-ObservationInterpretation codes and displays.
const INTERPRETATIONS: &[(&str, &str, &str)] = &[
    ("NORMAL", "N", "Normal"),
    ("ABNORMAL", "A", "Abnormal"),
    ("CRITICALLY_ABNORMAL", "AA", "Critical abnormal"),
    ("CRITICALLY_HIGH", "HH", "Critical high"),
    ("CRITICALLY_LOW", "LL", "Critical low"),
    ("HIGH", "H", "High"),
    ("LOW", "L", "Low"),
    ("OFF_SCALE_LOW", "<", "Off scale low"),
    ("OFF_SCALE_HIGH", ">", "Off scale high"),
    ("SIGNIFICANT_CHANGE_DOWN", "D", "Significant change down"),
    ("SIGNIFICANT_CHANGE_UP", "U", "Significant change up"),
    ("RESISTANT", "R", "Resistant"),
    ("SUSCEPTIBLE", "S", "Susceptible"),
    ("INTERMEDIATE", "I", "Intermediate"),
    ("POSITIVE", "POS", "Positive"),
    ("NEGATIVE", "NEG", "Negative"),
];

/// OpenMRS obs interpretation -> v3-ObservationInterpretation code and display.
pub(super) fn interpretation(i: &str) -> Option<(&'static str, &'static str)> {
    INTERPRETATIONS
        .iter()
        .find(|(name, _, _)| *name == i)
        .map(|(_, code, display)| (*code, *display))
}

/// v3-ObservationInterpretation code -> OpenMRS obs interpretation.
pub(crate) fn interpretation_name(code: &str) -> Option<&'static str> {
    INTERPRETATIONS.iter().find(|(_, c, _)| *c == code).map(|(name, _, _)| *name)
}

/// The UCUM code of a concept's units, for the units OpenMRS dictionaries use most; other
/// units are sent as `unit` text only (FHIR2 adds system and code only for valid UCUM).
pub fn ucum_code(units: &str) -> Option<&'static str> {
    const TABLE: &[(&str, &str)] = &[
        ("kg", "kg"),
        ("g", "g"),
        ("mg", "mg"),
        ("cm", "cm"),
        ("mm", "mm"),
        ("m", "m"),
        ("mmHg", "mm[Hg]"),
        ("mm[Hg]", "mm[Hg]"),
        ("DEG C", "Cel"),
        ("°C", "Cel"),
        ("Cel", "Cel"),
        ("%", "%"),
        ("/min", "/min"),
        ("beats/min", "/min"),
        ("breaths/min", "/min"),
        ("kg/m2", "kg/m2"),
        ("mg/dl", "mg/dL"),
        ("mg/dL", "mg/dL"),
        ("g/dl", "g/dL"),
        ("g/dL", "g/dL"),
        ("mmol/l", "mmol/L"),
        ("mmol/L", "mmol/L"),
        ("cells/mm3", "/mm3"),
        ("cells/µL", "/uL"),
        ("copies/ml", "{copies}/mL"),
        ("copies/mL", "{copies}/mL"),
        ("mL", "mL"),
        ("ml", "mL"),
        ("L", "L"),
        ("weeks", "wk"),
        ("days", "d"),
        ("months", "mo"),
        ("years", "a"),
    ];
    TABLE.iter().find(|(u, _)| *u == units).map(|(_, code)| *code)
}
