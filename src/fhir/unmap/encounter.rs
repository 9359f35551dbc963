//! Places and care events read back: Location, and Encounters as visits or encounters (the
//! inverse of `map/encounter.rs`).

use serde_json::{Number, Value};

use super::person::{address_fields, uuid_code};
use super::{In, Job, UnmapError, code_of};
use crate::fhir::map::{CS_ENCOUNTER_TYPE, CS_VISIT_TYPE, EXT_ENCOUNTER_TAG, EXT_LOCATION_TAG};
use crate::id::EntityType;

/// Whether an Encounter is a visit or an encounter: by its type's coding system (as OpenMRS
/// FHIR2 decides on write), then by the OpenMRS `meta.tag`.
pub(super) fn kind(resource: &Value) -> Option<EntityType> {
    let systems: Vec<&str> = resource
        .get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|cc| cc.get("coding")?.as_array())
        .flatten()
        .filter_map(|c| c.get("system")?.as_str())
        .collect();
    let visit = systems.contains(&CS_VISIT_TYPE);
    let encounter = systems.contains(&CS_ENCOUNTER_TYPE);
    match (visit, encounter) {
        (true, false) => return Some(EntityType::Visit),
        (false, true) => return Some(EntityType::Encounter),
        _ => {}
    }
    let tags = resource.get("meta")?.get("tag")?.as_array()?;
    tags.iter()
        .filter(|t| t.get("system").and_then(Value::as_str) == Some(EXT_ENCOUNTER_TAG))
        .find_map(|t| match t.get("code")?.as_str()? {
            "visit" => Some(EntityType::Visit),
            "encounter" => Some(EntityType::Encounter),
            _ => None,
        })
}

impl Job<'_, '_> {
    pub(super) fn location(&mut self, r: &In) -> Result<(), UnmapError> {
        let name = r.text("name")?.ok_or_else(|| r.err("name", "is required"))?;
        self.set("name", name);
        let description = r.text("description")?;
        self.set_opt("description", description);
        if let Some(a) = r.object("address")? {
            for (k, v) in address_fields(&a)? {
                self.out.insert(k, v);
            }
        }
        if let Some(p) = r.object("position")? {
            let coordinate = |name: &str| -> Result<Option<String>, UnmapError> {
                match p.get(name) {
                    None => Ok(None),
                    Some(Value::Number(n)) => Ok(Some(coordinate_text(n))),
                    Some(_) => Err(p.err(name, "is not a number")),
                }
            };
            let (lat, lon) = (coordinate("latitude")?, coordinate("longitude")?);
            self.set_opt("latitude", lat);
            self.set_opt("longitude", lon);
        }
        let parent = self.reference(r, "partOf", &["Location"])?;
        self.set_opt("parentLocation", parent.map(|p| p.to_string()));
        let mut tags = Vec::new();
        if let Some(meta) = r.object("meta")? {
            for t in meta.objects("tag")? {
                if t.str("system")? == Some(EXT_LOCATION_TAG)
                    && let Some(code) = t.text("code")?
                {
                    tags.push(Value::from(code));
                }
            }
        }
        if !tags.is_empty() {
            self.set("tags", tags);
        }
        self.set_flag("retired", r.str("status")? == Some("inactive"));
        Ok(())
    }

    pub(super) fn visit(&mut self, r: &In) -> Result<(), UnmapError> {
        let ty = self.encounter_type(r, CS_VISIT_TYPE, "visit type")?;
        self.set("visitType", ty);
        self.subject(r, "patient")?;
        let period = r.object("period")?.ok_or_else(|| r.err("period", "is required"))?;
        let start =
            self.datetime(&period, "start")?.ok_or_else(|| period.err("start", "is required"))?;
        self.set("startDatetime", start);
        let stop = self.datetime(&period, "end")?;
        self.set_opt("stopDatetime", stop);
        self.encounter_location(r)?;
        self.set_flag("voided", r.str("status")? == Some("entered-in-error"));
        Ok(())
    }

    /// An encounter; its providers are not read back (FHIR carries no encounter role, which
    /// a record needs: `docs/emr.md`).
    pub(super) fn encounter(&mut self, r: &In) -> Result<(), UnmapError> {
        let ty = self.encounter_type(r, CS_ENCOUNTER_TYPE, "encounter type")?;
        self.set("encounterType", ty);
        self.subject(r, "patient")?;
        let period = r.object("period")?.ok_or_else(|| r.err("period", "is required"))?;
        let start =
            self.datetime(&period, "start")?.ok_or_else(|| period.err("start", "is required"))?;
        self.set("encounterDatetime", start);
        self.encounter_location(r)?;
        let visit = self.reference(r, "partOf", &["Encounter"])?;
        self.set_opt("visit", visit.map(|v| v.to_string()));
        self.set_flag("voided", r.str("status")? == Some("entered-in-error"));
        Ok(())
    }

    fn encounter_type(&self, r: &In, system: &str, what: &str) -> Result<String, UnmapError> {
        let types = r.objects("type")?;
        for cc in &types {
            if code_of(cc, system)?.is_some() {
                return Ok(uuid_code(cc, system, what)?.to_string());
            }
        }
        Err(r.err("type", format!("has no coding of {system} (the {what})")))
    }

    /// `subject` (a Patient) as `field`, required.
    pub(super) fn subject(&mut self, r: &In, field: &str) -> Result<(), UnmapError> {
        let patient = self
            .reference(r, "subject", &["Patient"])?
            .ok_or_else(|| r.err("subject", "is required"))?;
        self.set(field, patient.to_string());
        Ok(())
    }

    fn encounter_location(&mut self, r: &In) -> Result<(), UnmapError> {
        if let Some(first) = r.objects("location")?.first() {
            let loc = self.reference(first, "location", &["Location"])?;
            self.set_opt("location", loc.map(|l| l.to_string()));
        }
        Ok(())
    }
}

/// A coordinate as a record stores it (decimal text).
fn coordinate_text(n: &Number) -> String {
    n.to_string()
}
