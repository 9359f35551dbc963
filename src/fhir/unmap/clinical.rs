//! Clinical resources read back: Observation, Condition, AllergyIntolerance and Appointment
//! (the inverse of `map/clinical.rs`).

use serde_json::{Map, Value};

use super::{In, Job, UnmapError, code_of};
use crate::fhir::map::{EXT_NON_CODED_CONDITION, HL7, interpretation_name};
use crate::id::{EntityType, Uid, parse_uuid};

impl Job<'_, '_> {
    /// An obs. Its group comes from the group's `hasMember` ([`super::Unmapped::members`]);
    /// its location is not in the resource and is not read.
    pub(super) fn observation(&mut self, r: &In) -> Result<(), UnmapError> {
        let code = r.object("code")?.ok_or_else(|| r.err("code", "is required"))?;
        let concept = self.concept(&code)?;
        self.set("concept", concept.to_string());
        self.subject(r, "person")?;
        let encounter = self.reference(r, "encounter", &["Encounter"])?;
        self.set_opt("encounter", encounter.map(|e| e.to_string()));
        let when = self
            .datetime(r, "effectiveDateTime")?
            .ok_or_else(|| r.err("effectiveDateTime", "is required"))?;
        self.set("obsDatetime", when);
        if let Some(q) = r.object("valueQuantity")? {
            match q.get("value") {
                Some(Value::Number(n)) => self.set("valueNumeric", Value::Number(n.clone())),
                _ => return Err(q.err("value", "is not a number")),
            }
        } else if let Some(cc) = r.object("valueCodeableConcept")? {
            let c = self.concept(&cc)?;
            self.set("valueCoded", c.to_string());
        } else if let Some(t) = r.text("valueString")? {
            self.set("valueText", t);
        } else if r.get("valueDateTime").is_some() {
            let dt = self.datetime(r, "valueDateTime")?;
            self.set_opt("valueDatetime", dt);
        } else if let Some(b) = r.bool("valueBoolean")? {
            self.set("valueBoolean", b);
        }
        match r.str("status")? {
            Some("entered-in-error") => self.voided_by_status(&["status"], None),
            Some("preliminary") | Some("registered") => self.set("status", "PRELIMINARY"),
            Some("amended") | Some("corrected") => self.set("status", "AMENDED"),
            _ => {}
        }
        for cc in r.objects("interpretation")? {
            let name = code_of(&cc, &format!("{HL7}/v3-ObservationInterpretation"))?
                .and_then(interpretation_name);
            if let Some(name) = name {
                self.set("interpretation", name);
                break;
            }
        }
        let comment = first_note(r)?;
        self.set_opt("comment", comment);
        for m in r.objects("hasMember")? {
            if let Some(member) = super::reference_id(&m, &["Observation"])? {
                self.members.push(member);
            }
        }
        Ok(())
    }

    pub(super) fn condition(&mut self, r: &In) -> Result<(), UnmapError> {
        let mut condition = Map::new();
        let non_coded = r.extension_text(EXT_NON_CODED_CONDITION)?;
        let code = r.object("code")?.ok_or_else(|| r.err("code", "is required"))?;
        if code.codings()?.is_empty() {
            // Only text: the export writes a non-coded condition's text here too.
            let text = non_coded.clone().or(code.text("text")?);
            let Some(text) = text else {
                return Err(code.err("text", "the condition has neither a coding nor a text"));
            };
            condition.insert("nonCoded".into(), text.into());
        } else {
            let c = self.concept(&code)?;
            condition.insert("coded".into(), c.to_string().into());
            if let Some(t) = non_coded {
                condition.insert("nonCoded".into(), t.into());
            }
        }
        self.set("condition", condition);
        self.subject(r, "patient")?;
        let encounter = self.reference(r, "encounter", &["Encounter"])?;
        self.set_opt("encounter", encounter.map(|e| e.to_string()));
        let verification = match r.object("verificationStatus")? {
            Some(cc) => code_of(&cc, &format!("{HL7}/condition-ver-status"))?,
            None => None,
        };
        if verification == Some("entered-in-error") {
            self.voided_by_status(
                &["clinicalStatus", "verificationStatus", "endDate"],
                Some(("clinicalStatus", "INACTIVE")),
            );
        } else {
            let clinical = match r.object("clinicalStatus")? {
                Some(cc) => code_of(&cc, &format!("{HL7}/condition-clinical"))?,
                None => None,
            };
            let clinical = match clinical {
                Some("active" | "recurrence" | "relapse") => "ACTIVE",
                Some("inactive" | "remission" | "resolved") => "INACTIVE",
                _ => return Err(r.err("clinicalStatus", "is required (active or inactive)")),
            };
            self.set("clinicalStatus", clinical);
            let verification = match verification {
                Some("confirmed") => Some("CONFIRMED"),
                Some("provisional" | "differential" | "unconfirmed") => Some("PROVISIONAL"),
                _ => None,
            };
            self.set_opt("verificationStatus", verification);
            let end = self.datetime(r, "abatementDateTime")?;
            self.set_opt("endDate", end);
        }
        let onset = self.datetime(r, "onsetDateTime")?;
        self.set_opt("onsetDate", onset);
        let detail = first_note(r)?;
        self.set_opt("additionalDetail", detail);
        Ok(())
    }

    pub(super) fn allergy(&mut self, r: &In) -> Result<(), UnmapError> {
        let code = r.object("code")?.ok_or_else(|| r.err("code", "is required"))?;
        let mut allergen = Map::new();
        let category = r.strings("category")?.first().copied();
        let allergen_type = match category {
            Some("medication") => "DRUG",
            Some("food") => "FOOD",
            Some("environment") => "ENVIRONMENT",
            _ => "OTHER",
        };
        allergen.insert("allergenType".into(), allergen_type.into());
        let (coded, text) = self.coded_or_text(&code)?;
        if let Some(c) = coded {
            allergen.insert("codedAllergen".into(), c.to_string().into());
        }
        if let Some(t) = text {
            allergen.insert("nonCodedAllergen".into(), t.into());
        }
        self.set("allergen", allergen);
        let Some(patient) = self.reference(r, "patient", &["Patient"])? else {
            return Err(r.err("patient", "is required"));
        };
        self.set("patient", patient.to_string());
        let encounter = self.reference(r, "encounter", &["Encounter"])?;
        self.set_opt("encounter", encounter.map(|e| e.to_string()));
        let mut severity = None;
        let mut reactions = Map::new();
        let mut n = 0;
        for reaction in r.objects("reaction")? {
            if severity.is_none() {
                severity = match reaction.str("severity")? {
                    Some("mild") => Some("MILD"),
                    Some("moderate") => Some("MODERATE"),
                    Some("severe") => Some("SEVERE"),
                    _ => None,
                };
            }
            for m in reaction.objects("manifestation")? {
                let (coded, text) = self.coded_or_text(&m)?;
                let mut item = Map::new();
                if let Some(c) = coded {
                    item.insert("reaction".into(), c.to_string().into());
                }
                if let Some(t) = text {
                    item.insert("reactionNonCoded".into(), t.into());
                }
                if !item.is_empty() {
                    reactions.insert(self.item_uuid(&m, "reaction", n).to_string(), item.into());
                }
                n += 1;
            }
        }
        if severity.is_none() {
            severity = match r.str("criticality")? {
                Some("low") => Some("MILD"),
                Some("unable-to-assess") => Some("MODERATE"),
                Some("high") => Some("SEVERE"),
                _ => None,
            };
        }
        self.set_opt("severity", severity);
        self.set("reactions", reactions);
        let comment = first_note(r)?;
        self.set_opt("comment", comment);
        let clinical = match r.object("clinicalStatus")? {
            Some(cc) => code_of(&cc, &format!("{HL7}/allergyintolerance-clinical"))?,
            None => None,
        };
        self.set_flag("voided", matches!(clinical, Some("inactive" | "resolved")));
        Ok(())
    }

    pub(super) fn appointment(&mut self, r: &In) -> Result<(), UnmapError> {
        let status = match r.str("status")? {
            Some("proposed" | "pending" | "waitlist") => Some("Requested"),
            Some("booked") => Some("Scheduled"),
            Some("arrived" | "checked-in") => Some("CheckedIn"),
            Some("fulfilled") => Some("Completed"),
            Some("cancelled") => Some("Cancelled"),
            Some("noshow") => Some("Missed"),
            Some("entered-in-error") => None,
            _ => return Err(r.err("status", "is not an Appointment status")),
        };
        match status {
            Some(s) => self.set("status", s),
            None => self.voided_by_status(&["status"], Some(("status", "Cancelled"))),
        }
        let service = r
            .objects("serviceType")?
            .iter()
            .map(|cc| cc.codings())
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .find_map(|(system, code)| match (system, code) {
                (None, Some(c)) => parse_uuid(c).ok(),
                _ => None,
            })
            .ok_or_else(|| r.err("serviceType", "has no coding naming a service uuid"))?;
        self.set("service", service.to_string());
        if let Some(t) = r.object("appointmentType")? {
            let kind = match code_of(&t, &format!("{HL7}/v2-0276"))? {
                Some("ROUTINE") => Some("Scheduled"),
                Some("WALKIN") => Some("WalkIn"),
                _ if t.text("text")?.as_deref() == Some("Virtual") => Some("Virtual"),
                _ => None,
            };
            self.set_opt("appointmentKind", kind);
        }
        let start = self.datetime(r, "start")?;
        let end = self.datetime(r, "end")?;
        self.set_opt("startDateTime", start);
        self.set_opt("endDateTime", end);
        let comment = r.text("comment")?;
        self.set_opt("comments", comment);
        for p in r.objects("participant")? {
            let Some(actor) = p.object("actor")? else { continue };
            let Some(reference) = actor.str("reference")? else { continue };
            let field = match reference.rsplit('/').nth(1) {
                Some("Patient") => "patient",
                Some("Practitioner") => "provider",
                Some("Location") => "location",
                _ => continue,
            };
            let id = super::reference_id(&actor, &["Patient", "Practitioner", "Location"])?;
            if let Some(id) = id
                && !self.out.contains_key(field)
            {
                self.set(field, id.to_string());
            }
        }
        if !self.out.contains_key("patient") {
            return Err(r.err("participant", "names no Patient"));
        }
        Ok(())
    }

    /// A concept and a free text from a CodeableConcept: the text counts as free text when
    /// there is no coding, or when it is not the concept's display (the export writes the
    /// display there).
    fn coded_or_text(&self, cc: &In) -> Result<(Option<Uid>, Option<String>), UnmapError> {
        let text = cc.text("text")?;
        if cc.codings()?.is_empty() {
            return Ok((None, text));
        }
        let concept = self.concept(cc)?;
        let display = self
            .u
            .source
            .record(EntityType::Concept, &concept)
            .and_then(|c| c.get("display").and_then(Value::as_str).map(str::to_string))
            .and_then(|d| crate::fhir::read::clean(&d));
        let text = text.filter(|t| Some(t) != display.as_ref());
        Ok((Some(concept), text))
    }
}

/// The text of the first note.
fn first_note(r: &In) -> Result<Option<String>, UnmapError> {
    match r.objects("note")?.first() {
        Some(n) => n.text("text"),
        None => Ok(None),
    }
}
