//! `FhirSettings`: what the FHIR export needs to know that the records do not say: the
//! `[fhir]` table of `sitesync.toml` (with the push targets, `target.rs`), or a TOML file given to
//! `sitesync fhir export --settings FILE` (a `[fhir]` table, or the keys at the top level).
//!
//! Unknown keys are errors (a typo never silently does nothing). Every table is optional; the
//! built-in defaults are listed on each field and in `docs/fhir-mapping.md`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::id::parse_uuid;

/// FHIR2's seeded `fhir_concept_source` URLs, plus SNOMED CT (FHIR2's fallback for a source
/// whose HL7 code is `SCT`). Looked up by concept source name, ignoring case.
pub const DEFAULT_CONCEPT_SOURCES: &[(&str, &str)] = &[
    ("CIEL", "https://openconceptlab.org/orgs/CIEL/sources/CIEL"),
    ("LOINC", "http://loinc.org"),
    ("SNOMED CT", "http://snomed.info/sct"),
];

/// FHIR2's seeded `fhir_observation_category_map`: concept class name -> observation-category
/// code.
pub const DEFAULT_OBSERVATION_CATEGORIES: &[(&str, &str)] =
    &[("Test", "laboratory"), ("Procedure", "procedure"), ("Finding", "exam")];

/// The R4 observation-category codes.
const OBSERVATION_CATEGORY_CODES: &[&str] = &[
    "social-history",
    "vital-signs",
    "imaging",
    "laboratory",
    "procedure",
    "survey",
    "exam",
    "therapy",
    "activity",
];

const CONTACT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];
const CONTACT_USES: &[&str] = &["home", "work", "temp", "old", "mobile"];

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("fhir settings: {0}")]
    Parse(String),
    #[error("fhir settings: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { field: field.into(), message: message.into() }
}

/// Settings of the FHIR export (`[fhir]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    /// `meta.source` of every resource. Default: `urn:uuid:<site uuid>`, the site uuid being
    /// derived from the node id (`Uid::of_node`).
    pub source: Option<String>,
    /// Base URL for `Bundle.entry.fullUrl` (`<base_url>/Type/<id>`). Default: none, entries
    /// use `urn:uuid:<id>`.
    pub base_url: Option<String>,
    /// Identifier system URI per patient identifier type uuid. Identifiers of a type not
    /// listed here are left out (an identifier without a system is rejected by MPIs).
    pub identifier_systems: BTreeMap<String, String>,
    /// Add `{system: "urn:ietf:rfc:3986", value: "urn:uuid:<patient uuid>"}` to every Patient.
    /// Default: true (so a patient always has at least one identifier with a system).
    pub patient_uuid_identifier: Option<bool>,
    /// The managing organization of patients (this site).
    pub organization: OrganizationSettings,
    /// Coding system URI per concept source name (in addition to, and overriding,
    /// [`DEFAULT_CONCEPT_SOURCES`]).
    pub concept_sources: BTreeMap<String, String>,
    /// Person (and provider) attribute types exported as `telecom`, by attribute type uuid.
    pub contact_points: BTreeMap<String, ContactPointSettings>,
    /// v3-ActCode for `Encounter.class` per location uuid (FHIR2 `fhir_encounter_class_map`).
    pub encounter_classes: BTreeMap<String, String>,
    /// `Encounter.class` when the location is not in `encounter_classes`. Default: `AMB`.
    pub default_encounter_class: Option<String>,
    /// observation-category code per concept class name (in addition to, and overriding,
    /// [`DEFAULT_OBSERVATION_CATEGORIES`]).
    pub observation_categories: BTreeMap<String, String>,
    /// v3-RoleCode (`RelatedPerson.relationship`) per relationship type uuid: the role of
    /// person A toward person B.
    pub relationship_types: BTreeMap<String, String>,
    /// UTC offset (`+03:00`) of date-times that carry none. FHIR requires a zone on every
    /// date-time with a time; without this setting such a record is not exported.
    pub utc_offset: Option<String>,
}

/// `[fhir.organization]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizationSettings {
    /// The Organization's resource id. Default: the site uuid.
    pub id: Option<String>,
    /// Its name. Default: the node name.
    pub name: Option<String>,
    /// `Organization.identifier` (also sent in `Patient.managingOrganization.identifier`),
    /// e.g. the facility code registered at the MPI. Both or neither.
    pub identifier_system: Option<String>,
    pub identifier_value: Option<String>,
    /// Whether the export includes the Organization resource itself. Default: true (a server
    /// that checks references needs it in the same transaction).
    pub export: Option<bool>,
}

/// `[fhir.contact_points."<attribute type uuid>"]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPointSettings {
    /// ContactPoint.system: phone, fax, email, pager, url, sms or other.
    pub system: String,
    /// ContactPoint.use: home, work, temp, old or mobile.
    #[serde(rename = "use", default)]
    pub use_: Option<String>,
    #[serde(default)]
    pub rank: Option<u32>,
}

impl FhirSettings {
    /// Parses and checks TOML text: a `[fhir]` table, or the settings at the top level.
    pub fn from_toml(text: &str) -> Result<FhirSettings, SettingsError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| SettingsError::Parse(e.to_string()))?;
        let settings: FhirSettings = match table.get("fhir") {
            Some(inner) => inner.clone().try_into(),
            None => toml::Value::Table(table).try_into(),
        }
        .map_err(|e: toml::de::Error| SettingsError::Parse(e.to_string()))?;
        settings.checked()
    }

    /// Checks every value and normalizes uuid keys (lowercase hex, as records store them).
    pub fn checked(mut self) -> Result<FhirSettings, SettingsError> {
        for (field, value) in [
            ("source", &self.source),
            ("base_url", &self.base_url),
            ("organization.identifier_system", &self.organization.identifier_system),
        ] {
            if let Some(v) = value {
                check_uri(field, v)?;
            }
        }
        if let Some(base) = &self.base_url
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(invalid("base_url", "must start with http:// or https://"));
        }
        if let Some(base) = self.base_url.take() {
            self.base_url = Some(base.trim_end_matches('/').to_string());
        }
        if let Some(id) = &self.organization.id
            && !is_fhir_id(id)
        {
            return Err(invalid("organization.id", "is not a FHIR id ([A-Za-z0-9-.]{1,64})"));
        }
        if let Some(name) = &self.organization.name
            && name.trim().is_empty()
        {
            return Err(invalid("organization.name", "is empty"));
        }
        if let Some(id) = &self.organization.id
            && self.base_url.is_none()
            && self.export_organization()
            && uuid::Uuid::try_parse(id).is_err()
        {
            return Err(invalid(
                "organization.id",
                "is not a uuid: set base_url too (a Bundle entry's fullUrl is urn:uuid:<id> without it)",
            ));
        }
        match (&self.organization.identifier_system, &self.organization.identifier_value) {
            (Some(_), Some(v)) if v.trim().is_empty() => {
                return Err(invalid("organization.identifier_value", "is empty"));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "organization",
                    "identifier_system and identifier_value go together",
                ));
            }
            _ => {}
        }
        self.identifier_systems = uuid_keys("identifier_systems", self.identifier_systems)?;
        for (k, v) in &self.identifier_systems {
            check_uri(&format!("identifier_systems.{k}"), v)?;
        }
        for (k, v) in &self.concept_sources {
            check_uri(&format!("concept_sources.{k}"), v)?;
        }
        self.contact_points = uuid_keys("contact_points", self.contact_points)?;
        for (k, cp) in &self.contact_points {
            if !CONTACT_SYSTEMS.contains(&cp.system.as_str()) {
                return Err(invalid(
                    format!("contact_points.{k}.system"),
                    format!("must be one of {}", CONTACT_SYSTEMS.join(", ")),
                ));
            }
            if let Some(u) = &cp.use_
                && !CONTACT_USES.contains(&u.as_str())
            {
                return Err(invalid(
                    format!("contact_points.{k}.use"),
                    format!("must be one of {}", CONTACT_USES.join(", ")),
                ));
            }
            if cp.rank == Some(0) {
                return Err(invalid(format!("contact_points.{k}.rank"), "must be 1 or more"));
            }
        }
        self.encounter_classes = uuid_keys("encounter_classes", self.encounter_classes)?;
        for (k, v) in &self.encounter_classes {
            check_code(&format!("encounter_classes.{k}"), v)?;
        }
        if let Some(c) = &self.default_encounter_class {
            check_code("default_encounter_class", c)?;
        }
        for (k, v) in &self.observation_categories {
            if !OBSERVATION_CATEGORY_CODES.contains(&v.as_str()) {
                return Err(invalid(
                    format!("observation_categories.{k}"),
                    format!("must be one of {}", OBSERVATION_CATEGORY_CODES.join(", ")),
                ));
            }
        }
        self.relationship_types = uuid_keys("relationship_types", self.relationship_types)?;
        for (k, v) in &self.relationship_types {
            check_code(&format!("relationship_types.{k}"), v)?;
        }
        if let Some(off) = &self.utc_offset
            && super::time::parse_offset(off).is_none()
        {
            return Err(invalid("utc_offset", "must be Z or +hh:mm / -hh:mm, at most 14:00"));
        }
        Ok(self)
    }

    /// The coding system of a concept source: these settings, then the built-in table.
    pub fn concept_source_url(&self, source: &str) -> Option<&str> {
        let found = self.concept_sources.iter().find(|(k, _)| k.eq_ignore_ascii_case(source));
        match found {
            Some((_, url)) => Some(url.as_str()),
            None => DEFAULT_CONCEPT_SOURCES
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(source))
                .map(|(_, url)| *url),
        }
    }

    /// The observation category of a concept class: these settings, then the built-in table.
    pub fn observation_category(&self, concept_class: &str) -> Option<&str> {
        let found = self.observation_categories.iter().find(|(k, _)| k.as_str() == concept_class);
        match found {
            Some((_, code)) => Some(code.as_str()),
            None => DEFAULT_OBSERVATION_CATEGORIES
                .iter()
                .find(|(k, _)| *k == concept_class)
                .map(|(_, code)| *code),
        }
    }

    pub fn encounter_class(&self, location: Option<&str>) -> &str {
        location
            .and_then(|l| self.encounter_classes.get(l))
            .or(self.default_encounter_class.as_ref())
            .map_or("AMB", String::as_str)
    }

    pub fn patient_uuid_identifier(&self) -> bool {
        self.patient_uuid_identifier.unwrap_or(true)
    }

    pub fn export_organization(&self) -> bool {
        self.organization.export.unwrap_or(true)
    }
}

/// `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn check_uri(field: &str, v: &str) -> Result<(), SettingsError> {
    if v.is_empty() || v.chars().any(char::is_whitespace) || !v.contains(':') {
        return Err(invalid(field, "is not an absolute URI (scheme:..., no spaces)"));
    }
    Ok(())
}

fn check_code(field: &str, v: &str) -> Result<(), SettingsError> {
    if v.is_empty() || v.chars().any(char::is_whitespace) {
        return Err(invalid(field, "is not a code (no spaces)"));
    }
    Ok(())
}

fn uuid_keys<V>(
    field: &str,
    map: BTreeMap<String, V>,
) -> Result<BTreeMap<String, V>, SettingsError> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let uid = parse_uuid(&k).map_err(|e| invalid(format!("{field}.{k}"), e.to_string()))?;
        out.insert(uid.to_string(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_lookups() {
        let s = FhirSettings::from_toml("").expect("empty settings are valid");
        assert_eq!(s, FhirSettings::default());
        assert_eq!(s.concept_source_url("ciel"), Some(DEFAULT_CONCEPT_SOURCES[0].1));
        assert_eq!(s.observation_category("Test"), Some("laboratory"));
        assert_eq!(s.encounter_class(None), "AMB");
        assert!(s.patient_uuid_identifier() && s.export_organization());
    }

    #[test]
    fn fhir_table_and_normalized_keys() {
        let text = r#"
            [fhir]
            utc_offset = "+03:00"
            [fhir.identifier_systems]
            "0E69A49E-72AB-43AF-8BB9-087ECB64DD5E" = "http://clinic.example/openmrs-id"
            [fhir.concept_sources]
            CIEL = "http://example.org/ciel"
        "#;
        let s = FhirSettings::from_toml(text).expect("valid");
        assert!(s.identifier_systems.contains_key("0e69a49e-72ab-43af-8bb9-087ecb64dd5e"));
        assert_eq!(s.concept_source_url("CIEL"), Some("http://example.org/ciel"));
        assert_eq!(s.concept_source_url("LOINC"), Some("http://loinc.org"));
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let bad = [
            "identifer_systems = {}",
            "[identifier_systems]\nnot-a-uuid = \"http://x\"",
            "[identifier_systems]\n\"0e69a49e-72ab-43af-8bb9-087ecb64dd5e\" = \"no scheme\"",
            "utc_offset = \"+3\"",
            "base_url = \"ftp://x\"",
            "[organization]\nidentifier_system = \"http://x\"",
            "[organization]\nid = \"has space\"",
            "[contact_points.\"0e69a49e-72ab-43af-8bb9-087ecb64dd5e\"]\nsystem = \"pigeon\"",
            "[observation_categories]\nTest = \"lab\"",
        ];
        for text in bad {
            assert!(FhirSettings::from_toml(text).is_err(), "{text}");
        }
    }
}
