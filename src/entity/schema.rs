//! The field schema of every entity type, following OpenMRS REST representations.
//!
//! One declarative table per type drives validation, the canonical document layout (which
//! collections are maps keyed by item uuid) and, later, FHIR export. Adding a field is one line.

use crate::id::EntityType;

/// What a field may hold.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Any non-empty string up to `STRING_BYTES_MAX`.
    Str,
    /// A uuid (reference to metadata we do not store, e.g. an identifier type).
    Uuid,
    /// A uuid that names another sitesync entity of this type.
    Ref(EntityType),
    /// `YYYY-MM-DD`.
    Date,
    /// RFC 3339 date-time, e.g. `2024-03-01T09:30:00Z` or with an offset; a plain date is
    /// accepted too, as OpenMRS accepts both.
    DateTime,
    Bool,
    /// A JSON number (integer or decimal).
    Number,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A list of strings.
    StrList,
    /// A nested object with its own fields.
    Object(&'static [Field]),
    /// A collection whose items carry their own `uuid`: stored as a map keyed by that uuid so
    /// that items added at two sites both survive a merge.
    Keyed(&'static [Field]),
}

/// One field of an entity or of a nested object.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: true }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: false }
}

use EntityType as T;
use Kind::*;

const GENDER: Kind = Enum(&["M", "F", "U", "O"]);

const IDENTIFIER: &[Field] = &[
    req("identifier", Str),
    req("identifierType", Uuid),
    opt("location", Ref(T::Location)),
    opt("preferred", Bool),
    opt("voided", Bool),
];

const NAME: &[Field] = &[
    opt("prefix", Str),
    opt("givenName", Str),
    opt("middleName", Str),
    opt("familyNamePrefix", Str),
    opt("familyName", Str),
    opt("familyName2", Str),
    opt("familyNameSuffix", Str),
    opt("degree", Str),
    opt("preferred", Bool),
    opt("voided", Bool),
];

const ADDRESS: &[Field] = &[
    opt("address1", Str),
    opt("address2", Str),
    opt("address3", Str),
    opt("cityVillage", Str),
    opt("countyDistrict", Str),
    opt("stateProvince", Str),
    opt("country", Str),
    opt("postalCode", Str),
    opt("latitude", Str),
    opt("longitude", Str),
    opt("preferred", Bool),
    opt("voided", Bool),
];

const ATTRIBUTE: &[Field] = &[req("attributeType", Uuid), req("value", Str), opt("voided", Bool)];

const PATIENT: &[Field] = &[
    req("identifiers", Keyed(IDENTIFIER)),
    req("names", Keyed(NAME)),
    req("gender", GENDER),
    opt("birthdate", Date),
    opt("birthdateEstimated", Bool),
    opt("dead", Bool),
    opt("deathDate", DateTime),
    opt("causeOfDeath", Ref(T::Concept)),
    opt("addresses", Keyed(ADDRESS)),
    opt("attributes", Keyed(ATTRIBUTE)),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const PERSON: &[Field] = &[
    req("names", Keyed(NAME)),
    req("gender", GENDER),
    opt("birthdate", Date),
    opt("birthdateEstimated", Bool),
    opt("dead", Bool),
    opt("deathDate", DateTime),
    opt("causeOfDeath", Ref(T::Concept)),
    opt("addresses", Keyed(ADDRESS)),
    opt("attributes", Keyed(ATTRIBUTE)),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const LOCATION: &[Field] = &[
    req("name", Str),
    opt("description", Str),
    opt("address1", Str),
    opt("address2", Str),
    opt("cityVillage", Str),
    opt("countyDistrict", Str),
    opt("stateProvince", Str),
    opt("country", Str),
    opt("postalCode", Str),
    opt("latitude", Str),
    opt("longitude", Str),
    opt("parentLocation", Ref(T::Location)),
    opt("tags", StrList),
    opt("retired", Bool),
    opt("retireReason", Str),
];

const VISIT: &[Field] = &[
    req("patient", Ref(T::Patient)),
    req("visitType", Uuid),
    req("startDatetime", DateTime),
    opt("stopDatetime", DateTime),
    opt("location", Ref(T::Location)),
    opt("attributes", Keyed(ATTRIBUTE)),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const ENCOUNTER_PROVIDER: &[Field] =
    &[req("provider", Ref(T::Provider)), req("encounterRole", Uuid), opt("voided", Bool)];

const ENCOUNTER: &[Field] = &[
    req("patient", Ref(T::Patient)),
    req("encounterType", Uuid),
    req("encounterDatetime", DateTime),
    opt("location", Ref(T::Location)),
    opt("visit", Ref(T::Visit)),
    opt("form", Uuid),
    opt("encounterProviders", Keyed(ENCOUNTER_PROVIDER)),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const OBS: &[Field] = &[
    req("person", Ref(T::Patient)),
    req("concept", Ref(T::Concept)),
    req("obsDatetime", DateTime),
    opt("encounter", Ref(T::Encounter)),
    opt("location", Ref(T::Location)),
    opt("obsGroup", Ref(T::Obs)),
    opt("valueNumeric", Number),
    opt("valueText", Str),
    opt("valueCoded", Ref(T::Concept)),
    opt("valueDatetime", DateTime),
    opt("valueBoolean", Bool),
    opt("status", Enum(&["PRELIMINARY", "FINAL", "AMENDED"])),
    opt(
        "interpretation",
        Enum(&[
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
        ]),
    ),
    opt("comment", Str),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const CODED_OR_TEXT: &[Field] = &[opt("coded", Ref(T::Concept)), opt("nonCoded", Str)];

const CONDITION: &[Field] = &[
    req("patient", Ref(T::Patient)),
    req("condition", Object(CODED_OR_TEXT)),
    req("clinicalStatus", Enum(&["ACTIVE", "INACTIVE", "HISTORY_OF"])),
    opt("verificationStatus", Enum(&["CONFIRMED", "PROVISIONAL"])),
    opt("onsetDate", DateTime),
    opt("endDate", DateTime),
    opt("additionalDetail", Str),
    opt("encounter", Ref(T::Encounter)),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const ALLERGEN: &[Field] = &[
    req("allergenType", Enum(&["DRUG", "FOOD", "ENVIRONMENT", "OTHER"])),
    opt("codedAllergen", Ref(T::Concept)),
    opt("nonCodedAllergen", Str),
];

const REACTION: &[Field] =
    &[opt("reaction", Ref(T::Concept)), opt("reactionNonCoded", Str), opt("voided", Bool)];

const ALLERGY: &[Field] = &[
    req("patient", Ref(T::Patient)),
    req("allergen", Object(ALLERGEN)),
    opt("severity", Enum(&["MILD", "MODERATE", "SEVERE"])),
    opt("reactions", Keyed(REACTION)),
    opt("comment", Str),
    opt("encounter", Ref(T::Encounter)),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const APPOINTMENT: &[Field] = &[
    req("patient", Ref(T::Patient)),
    req("service", Uuid),
    req("startDateTime", DateTime),
    req("endDateTime", DateTime),
    req(
        "status",
        Enum(&["Requested", "Scheduled", "CheckedIn", "Completed", "Cancelled", "Missed"]),
    ),
    opt("appointmentKind", Enum(&["Scheduled", "WalkIn", "Virtual"])),
    opt("location", Ref(T::Location)),
    opt("provider", Ref(T::Provider)),
    opt("comments", Str),
    opt("voided", Bool),
];

const RELATIONSHIP: &[Field] = &[
    req("personA", Uuid),
    req("relationshipType", Uuid),
    req("personB", Uuid),
    opt("startDate", DateTime),
    opt("endDate", DateTime),
    opt("voided", Bool),
    opt("voidReason", Str),
];

const PROVIDER: &[Field] = &[
    req("identifier", Str),
    opt("person", Ref(T::Person)),
    opt("name", Str),
    opt("attributes", Keyed(ATTRIBUTE)),
    opt("retired", Bool),
    opt("retireReason", Str),
];

const CONCEPT_MAPPING: &[Field] = &[
    req("source", Str),
    req("code", Str),
    opt("sourceUrl", Str),
    opt("mapType", Enum(&["SAME-AS", "NARROWER-THAN", "BROADER-THAN"])),
];

const CONCEPT: &[Field] = &[
    req("display", Str),
    req(
        "datatype",
        Enum(&[
            "Numeric",
            "Coded",
            "Text",
            "N/A",
            "Document",
            "Date",
            "Time",
            "Datetime",
            "Boolean",
            "Rule",
            "Structured Numeric",
            "Complex",
        ]),
    ),
    opt("conceptClass", Str),
    opt("units", Str),
    opt("allowDecimal", Bool),
    opt("mappings", Keyed(CONCEPT_MAPPING)),
    opt("retired", Bool),
];

/// The fields of a typed entity; `None` for `generic`, which takes any JSON object.
pub fn fields(ty: EntityType) -> Option<&'static [Field]> {
    Some(match ty {
        T::Patient => PATIENT,
        T::Person => PERSON,
        T::Location => LOCATION,
        T::Visit => VISIT,
        T::Encounter => ENCOUNTER,
        T::Obs => OBS,
        T::Condition => CONDITION,
        T::Allergy => ALLERGY,
        T::Appointment => APPOINTMENT,
        T::Relationship => RELATIONSHIP,
        T::Provider => PROVIDER,
        T::Concept => CONCEPT,
        T::Generic | T::Roster => return None,
    })
}
