//! Typed FHIR R4 (4.0.1) resources and datatypes, only the elements sitesync emits.
//!
//! Every optional element is skipped when empty, so the JSON never holds `null`, `""`, `[]` or
//! `{}`: FHIR forbids them. Strings put here are already cleaned by the mapper (see
//! [`super::map`]); the types only decide the JSON shape. Choice elements (`value[x]`,
//! `deceased[x]`) are enums flattened into their parent.

use serde::Serialize;
use serde_json::Number;

/// `Option::is_none`, for `skip_serializing_if` on boxed options.
fn none<T>(v: &Option<T>) -> bool {
    v.is_none()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Coding {
    #[serde(skip_serializing_if = "none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub display: Option<String>,
}

impl Coding {
    pub fn new(system: &str, code: &str) -> Coding {
        Coding { system: Some(system.into()), code: Some(code.into()), display: None }
    }

    pub fn with_display(mut self, display: &str) -> Coding {
        self.display = Some(display.into());
        self
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CodeableConcept {
    /// The item uuid when the concept stands for a keyed collection item (an allergy
    /// reaction), so that reading the resource back finds the same item.
    #[serde(skip_serializing_if = "none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    #[serde(skip_serializing_if = "none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    pub fn of(coding: Coding) -> CodeableConcept {
        CodeableConcept { id: None, coding: vec![coding], text: None }
    }

    pub fn is_empty(&self) -> bool {
        self.coding.is_empty() && self.text.is_none()
    }

    /// A concept given as text only.
    pub fn text(text: String) -> CodeableConcept {
        CodeableConcept { id: None, coding: Vec::new(), text: Some(text) }
    }
}

/// `value[x]` of an extension.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ExtensionValue {
    #[serde(rename = "valueString")]
    String(String),
    #[serde(rename = "valueReference")]
    Reference(Reference),
}

/// An extension: a value or nested extensions, never both (ext-1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Extension {
    /// The item uuid of a keyed collection item carried as an extension (a person attribute),
    /// so that reading the resource back finds the same item.
    #[serde(skip_serializing_if = "none")]
    pub id: Option<String>,
    pub url: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(flatten, skip_serializing_if = "none")]
    pub value: Option<ExtensionValue>,
}

impl Extension {
    pub fn string(url: &str, value: String) -> Extension {
        Extension {
            id: None,
            url: url.into(),
            extension: Vec::new(),
            value: Some(ExtensionValue::String(value)),
        }
    }

    pub fn reference(url: &str, value: Reference) -> Extension {
        Extension {
            id: None,
            url: url.into(),
            extension: Vec::new(),
            value: Some(ExtensionValue::Reference(value)),
        }
    }

    /// A complex extension; `None` when it would have no sub-extension.
    pub fn nested(url: &str, extension: Vec<Extension>) -> Option<Extension> {
        (!extension.is_empty()).then(|| Extension {
            id: None,
            url: url.into(),
            extension,
            value: None,
        })
    }

    /// The same extension with an element id.
    pub fn with_id(mut self, id: String) -> Extension {
        self.id = Some(id);
        self
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Identifier {
    #[serde(skip_serializing_if = "none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(rename = "use", skip_serializing_if = "none")]
    pub use_: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "none")]
    pub type_: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HumanName {
    #[serde(skip_serializing_if = "none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(rename = "use", skip_serializing_if = "none")]
    pub use_: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suffix: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    #[serde(skip_serializing_if = "none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(rename = "use", skip_serializing_if = "none")]
    pub use_: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub line: Vec<String>,
    #[serde(skip_serializing_if = "none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub district: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub country: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ContactPoint {
    #[serde(skip_serializing_if = "none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub value: Option<String>,
    #[serde(rename = "use", skip_serializing_if = "none")]
    pub use_: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub rank: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reference {
    #[serde(skip_serializing_if = "none")]
    pub reference: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "none")]
    pub type_: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub identifier: Option<Box<Identifier>>,
    #[serde(skip_serializing_if = "none")]
    pub display: Option<String>,
}

impl Reference {
    /// `{reference: "Type/id", type: "Type"}`.
    pub fn to(resource_type: &str, id: &str) -> Reference {
        Reference {
            reference: Some(format!("{resource_type}/{id}")),
            type_: Some(resource_type.into()),
            ..Reference::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Period {
    #[serde(skip_serializing_if = "none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub end: Option<String>,
}

impl Period {
    pub fn is_empty(&self) -> bool {
        self.start.is_none() && self.end.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quantity {
    pub value: Number,
    #[serde(skip_serializing_if = "none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub code: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Annotation {
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Meta {
    #[serde(skip_serializing_if = "none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<Coding>,
}

// ---------------------------------------------------------------- resources ---

/// `deceased[x]` of a Patient.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Deceased {
    #[serde(rename = "deceasedBoolean")]
    Boolean(bool),
    #[serde(rename = "deceasedDateTime")]
    DateTime(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PatientLink {
    pub other: Reference,
    #[serde(rename = "type")]
    pub type_: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<HumanName>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub telecom: Vec<ContactPoint>,
    #[serde(skip_serializing_if = "none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub birth_date: Option<String>,
    #[serde(flatten, skip_serializing_if = "none")]
    pub deceased: Option<Deceased>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<Address>,
    #[serde(skip_serializing_if = "none")]
    pub managing_organization: Option<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<PatientLink>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PersonLink {
    pub target: Reference,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<HumanName>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub telecom: Vec<ContactPoint>,
    #[serde(skip_serializing_if = "none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub birth_date: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<Address>,
    #[serde(skip_serializing_if = "none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<PersonLink>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Practitioner {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<HumanName>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub telecom: Vec<ContactPoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<Address>,
    #[serde(skip_serializing_if = "none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub birth_date: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Organization {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Position {
    pub longitude: Number,
    pub latitude: Number,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub address: Option<Address>,
    #[serde(skip_serializing_if = "none")]
    pub position: Option<Position>,
    #[serde(skip_serializing_if = "none")]
    pub part_of: Option<Reference>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EncounterParticipant {
    pub individual: Reference,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EncounterLocation {
    pub location: Reference,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Encounter {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    pub status: String,
    pub class: Coding,
    #[serde(rename = "type", skip_serializing_if = "Vec::is_empty")]
    pub type_: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub subject: Option<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub participant: Vec<EncounterParticipant>,
    #[serde(skip_serializing_if = "none")]
    pub period: Option<Period>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub location: Vec<EncounterLocation>,
    #[serde(skip_serializing_if = "none")]
    pub part_of: Option<Reference>,
}

/// `value[x]` of an Observation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ObservationValue {
    #[serde(rename = "valueQuantity")]
    Quantity(Quantity),
    #[serde(rename = "valueCodeableConcept")]
    CodeableConcept(CodeableConcept),
    #[serde(rename = "valueString")]
    String(String),
    #[serde(rename = "valueBoolean")]
    Boolean(bool),
    #[serde(rename = "valueDateTime")]
    DateTime(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    pub status: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<CodeableConcept>,
    pub code: CodeableConcept,
    #[serde(skip_serializing_if = "none")]
    pub subject: Option<Reference>,
    #[serde(skip_serializing_if = "none")]
    pub encounter: Option<Reference>,
    #[serde(skip_serializing_if = "none")]
    pub effective_date_time: Option<String>,
    #[serde(flatten, skip_serializing_if = "none")]
    pub value: Option<ObservationValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interpretation: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub note: Vec<Annotation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub has_member: Vec<Reference>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    #[serde(skip_serializing_if = "none")]
    pub clinical_status: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub verification_status: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub code: Option<CodeableConcept>,
    pub subject: Reference,
    #[serde(skip_serializing_if = "none")]
    pub encounter: Option<Reference>,
    #[serde(skip_serializing_if = "none")]
    pub onset_date_time: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub abatement_date_time: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub note: Vec<Annotation>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AllergyReaction {
    #[serde(skip_serializing_if = "none")]
    pub substance: Option<CodeableConcept>,
    pub manifestation: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub severity: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllergyIntolerance {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "none")]
    pub clinical_status: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub verification_status: Option<CodeableConcept>,
    #[serde(rename = "type", skip_serializing_if = "none")]
    pub type_: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<String>,
    #[serde(skip_serializing_if = "none")]
    pub criticality: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub code: Option<CodeableConcept>,
    pub patient: Reference,
    #[serde(skip_serializing_if = "none")]
    pub encounter: Option<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub note: Vec<Annotation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reaction: Vec<AllergyReaction>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppointmentParticipant {
    pub actor: Reference,
    pub status: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    pub status: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_type: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub appointment_type: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub end: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub comment: Option<String>,
    pub participant: Vec<AppointmentParticipant>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelatedPerson {
    pub id: String,
    #[serde(skip_serializing_if = "none")]
    pub meta: Option<Meta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "none")]
    pub active: Option<bool>,
    pub patient: Reference,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relationship: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<HumanName>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub telecom: Vec<ContactPoint>,
    #[serde(skip_serializing_if = "none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "none")]
    pub birth_date: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<Address>,
    #[serde(skip_serializing_if = "none")]
    pub period: Option<Period>,
}

/// One resource sitesync emits; serializes with its `resourceType` first.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "resourceType")]
pub enum Resource {
    Organization(Organization),
    Patient(Patient),
    Person(Person),
    Practitioner(Practitioner),
    Location(Location),
    Encounter(Encounter),
    Observation(Observation),
    Condition(Condition),
    AllergyIntolerance(AllergyIntolerance),
    Appointment(Appointment),
    RelatedPerson(RelatedPerson),
}

impl Resource {
    /// The FHIR resource type name, e.g. `Patient`.
    pub fn resource_type(&self) -> &'static str {
        match self {
            Resource::Organization(_) => "Organization",
            Resource::Patient(_) => "Patient",
            Resource::Person(_) => "Person",
            Resource::Practitioner(_) => "Practitioner",
            Resource::Location(_) => "Location",
            Resource::Encounter(_) => "Encounter",
            Resource::Observation(_) => "Observation",
            Resource::Condition(_) => "Condition",
            Resource::AllergyIntolerance(_) => "AllergyIntolerance",
            Resource::Appointment(_) => "Appointment",
            Resource::RelatedPerson(_) => "RelatedPerson",
        }
    }

    /// `Resource.id`.
    pub fn id(&self) -> &str {
        match self {
            Resource::Organization(r) => &r.id,
            Resource::Patient(r) => &r.id,
            Resource::Person(r) => &r.id,
            Resource::Practitioner(r) => &r.id,
            Resource::Location(r) => &r.id,
            Resource::Encounter(r) => &r.id,
            Resource::Observation(r) => &r.id,
            Resource::Condition(r) => &r.id,
            Resource::AllergyIntolerance(r) => &r.id,
            Resource::Appointment(r) => &r.id,
            Resource::RelatedPerson(r) => &r.id,
        }
    }

    /// The resource as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing these types cannot fail: every map key is a string and every number is
        // finite (serde_json::Number).
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BundleRequest {
    pub method: String,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    pub full_url: String,
    pub resource: Resource,
    pub request: BundleRequest,
}

/// A Bundle (sitesync writes `transaction` bundles of `PUT Type/id` entries).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub resource_type: &'static str,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<BundleEntry>,
}

impl Bundle {
    pub fn transaction(entry: Vec<BundleEntry>) -> Bundle {
        Bundle { resource_type: "Bundle", type_: "transaction".into(), entry }
    }
}
