//! Where and when care happens: Location, and the visits and encounters at a location, which
//! both become an Encounter (told apart by a `meta.tag`; an encounter is `partOf` its visit).
//!
//! The site's own Organization is not here: it is the [`Context`](super::Context)'s, since it
//! comes from the settings and the node, not from a record.

use serde_json::Number;

use super::{
    CS_ENCOUNTER_TYPE, CS_VISIT_TYPE, EXT_ENCOUNTER_TAG, EXT_LOCATION_TAG, HL7, Job, address,
};
use crate::fhir::MapError;
use crate::fhir::model::*;
use crate::fhir::read::{Obj, clean_code};
use crate::id::Uid;

impl Job<'_, '_> {
    // ------------------------------------------------------------ places ---

    pub(super) fn location(&mut self, o: &Obj) -> Result<Location, MapError> {
        let id = self.entity.uuid;
        let mut tag = Vec::new();
        for t in o.str_list("tags")? {
            match clean_code(t) {
                Some(code) => tag.push(Coding {
                    system: Some(EXT_LOCATION_TAG.into()),
                    code: Some(code),
                    display: None,
                }),
                None => self.warn(o.field("tags"), "a blank tag is left out"),
            }
        }
        let position = match (o.raw_str("latitude")?, o.raw_str("longitude")?) {
            (None, None) => None,
            (Some(lat), Some(lon)) => {
                match (coordinate(lat, 90.0), coordinate(lon, 180.0)) {
                    (Some(latitude), Some(longitude)) => Some(Position { longitude, latitude }),
                    _ => {
                        self.warn("latitude", "latitude/longitude are not decimal degrees in range; position left out");
                        None
                    }
                }
            }
            _ => {
                self.warn(
                    "latitude",
                    "only one of latitude and longitude is set; position left out",
                );
                None
            }
        };
        Ok(Location {
            id: id.to_string(),
            meta: self.meta(tag),
            status: Some(if o.is("retired")? { "inactive" } else { "active" }.into()),
            name: Some(o.text("name")?.ok_or_else(|| o.err("name", "is required"))?),
            description: o.text("description")?,
            address: address(None, o)?,
            position,
            part_of: o.uid("parentLocation")?.map(|p| Reference::to("Location", p.as_str())),
        })
    }

    // ------------------------------------------------------- encounters ---

    fn encounter_status(&self, o: &Obj) -> Result<String, MapError> {
        Ok(if o.is("voided")? { "entered-in-error" } else { "unknown" }.into())
    }

    fn encounter_class(&self, location: Option<&Uid>) -> Coding {
        let code = self.settings().encounter_class(location.map(Uid::as_str));
        Coding::new(&format!("{HL7}/v3-ActCode"), code)
    }

    pub(super) fn visit(&mut self, o: &Obj) -> Result<Encounter, MapError> {
        let id = self.entity.uuid;
        let location = o.uid("location")?;
        let period = Period {
            start: Some(
                self.datetime(o, "startDatetime")?
                    .ok_or_else(|| o.err("startDatetime", "is required"))?,
            ),
            end: self.datetime(o, "stopDatetime")?,
        };
        Ok(Encounter {
            id: id.to_string(),
            meta: self.meta(vec![Coding::new(EXT_ENCOUNTER_TAG, "visit")]),
            status: self.encounter_status(o)?,
            class: self.encounter_class(location.as_ref()),
            type_: vec![CodeableConcept::of(Coding::new(
                CS_VISIT_TYPE,
                o.req_uid("visitType")?.as_str(),
            ))],
            subject: Some(Reference::to("Patient", o.req_uid("patient")?.as_str())),
            participant: Vec::new(),
            period: Some(period),
            location: location
                .map(|l| EncounterLocation { location: Reference::to("Location", l.as_str()) })
                .into_iter()
                .collect(),
            part_of: None,
        })
    }

    pub(super) fn encounter(&mut self, o: &Obj) -> Result<Encounter, MapError> {
        let id = self.entity.uuid;
        let location = o.uid("location")?;
        let mut participant: Vec<EncounterParticipant> = Vec::new();
        for item in o.items("encounterProviders")? {
            let it = item.obj(o.entity);
            if it.is("voided")? {
                continue;
            }
            let provider = it.req_uid("provider")?;
            let reference = Reference::to("Practitioner", provider.as_str());
            if !participant.iter().any(|p| p.individual == reference) {
                participant.push(EncounterParticipant { individual: reference });
            }
        }
        let start = self
            .datetime(o, "encounterDatetime")?
            .ok_or_else(|| o.err("encounterDatetime", "is required"))?;
        Ok(Encounter {
            id: id.to_string(),
            meta: self.meta(vec![Coding::new(EXT_ENCOUNTER_TAG, "encounter")]),
            status: self.encounter_status(o)?,
            class: self.encounter_class(location.as_ref()),
            type_: vec![CodeableConcept::of(Coding::new(
                CS_ENCOUNTER_TYPE,
                o.req_uid("encounterType")?.as_str(),
            ))],
            subject: Some(Reference::to("Patient", o.req_uid("patient")?.as_str())),
            participant,
            period: Some(Period { start: Some(start), end: None }),
            location: location
                .map(|l| EncounterLocation { location: Reference::to("Location", l.as_str()) })
                .into_iter()
                .collect(),
            part_of: o.uid("visit")?.map(|v| Reference::to("Encounter", v.as_str())),
        })
    }
}

/// A coordinate in decimal degrees within ±`max`.
fn coordinate(s: &str, max: f64) -> Option<Number> {
    let t = s.trim();
    let digits_ok = !t.is_empty()
        && t.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.chars().filter(|c| *c == '.').count() <= 1;
    let v: f64 = t.parse().ok()?;
    if !digits_ok || !v.is_finite() || v.abs() > max {
        return None;
    }
    Number::from_f64(v)
}
