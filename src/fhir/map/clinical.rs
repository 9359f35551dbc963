//! Clinical resources: Observation (an obs, or an obs group with its members), Condition and
//! AllergyIntolerance (the problem lists), and Appointment.
//!
//! Their codes come from concepts ([`terminology`](super::terminology)); the FHIR invariants
//! these resources carry (con-4, con-5, app-2, app-3) are checked here, where a record that
//! would break one becomes a `MapError` rather than an invalid resource.

use serde_json::Number;

use super::terminology::{interpretation, ucum_code};
use super::{EXT_NON_CODED_CONDITION, HL7, Job, UCUM, uid_coding};
use crate::fhir::MapError;
use crate::fhir::model::*;
use crate::fhir::read::Obj;

impl Job<'_, '_> {
    // ------------------------------------------------------ observations ---

    pub(super) fn observation(&mut self, o: &Obj) -> Result<Observation, MapError> {
        let id = self.entity.uuid;
        let voided = o.is("voided")?;
        let concept = o.req_uid("concept")?;
        let info = self.concept_info("concept", &concept);
        let value = if let Some(n) = o.number("valueNumeric")? {
            let value = match (info.allow_decimal, n.as_f64()) {
                // FHIR2 writes an integer when the concept does not allow decimals; a value
                // with a fraction is kept as it is rather than truncated.
                (Some(false), Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Number::from(f as i64)
                }
                _ => n.clone(),
            };
            let ucum = info.units.as_deref().and_then(ucum_code);
            Some(ObservationValue::Quantity(Quantity {
                value,
                unit: info.units.clone(),
                system: ucum.map(|_| UCUM.to_string()),
                code: ucum.map(str::to_string),
            }))
        } else if let Some(c) = o.uid("valueCoded")? {
            Some(ObservationValue::CodeableConcept(self.concept("valueCoded", &c)))
        } else if o.has("valueText") {
            match o.text("valueText")? {
                Some(t) => Some(ObservationValue::String(t)),
                None => return Err(o.err("valueText", "is blank")),
            }
        } else if let Some(dt) = self.datetime(o, "valueDatetime")? {
            Some(ObservationValue::DateTime(dt))
        } else {
            o.flag("valueBoolean")?.map(ObservationValue::Boolean)
        };
        let members: Vec<Reference> = self
            .m
            .members
            .get(&id)
            .map(|list| {
                list.iter()
                    .filter(|(_, member_voided)| voided || !member_voided)
                    .map(|(m, _)| Reference::to("Observation", m.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if value.is_none() && members.is_empty() {
            return Err(o.err(
                "value",
                "the obs has no value (valueNumeric, valueCoded, valueText, valueDatetime or valueBoolean) \
                 and is not the group of any obs",
            ));
        }
        let status = if voided {
            "entered-in-error"
        } else {
            match o.raw_str("status")? {
                None | Some("FINAL") => "final",
                Some("PRELIMINARY") => "preliminary",
                Some("AMENDED") => "amended",
                Some(_) => return Err(o.err("status", "is not PRELIMINARY, FINAL or AMENDED")),
            }
        };
        let interpretation = match o.raw_str("interpretation")? {
            None => None,
            Some(i) => Some(
                interpretation(i)
                    .map(|(code, display)| {
                        coded(&format!("{HL7}/v3-ObservationInterpretation"), code, display)
                    })
                    .ok_or_else(|| o.err("interpretation", "is not an OpenMRS interpretation"))?,
            ),
        };
        let category =
            info.class.as_deref().and_then(|c| self.settings().observation_category(c)).map(
                |code| {
                    CodeableConcept::of(Coding::new(&format!("{HL7}/observation-category"), code))
                },
            );
        Ok(Observation {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            status: status.into(),
            category: category.into_iter().collect(),
            code: info.code,
            subject: Some(Reference::to("Patient", o.req_uid("person")?.as_str())),
            encounter: o.uid("encounter")?.map(|e| Reference::to("Encounter", e.as_str())),
            effective_date_time: self.datetime(o, "obsDatetime")?,
            value,
            interpretation: interpretation.into_iter().collect(),
            note: o.text("comment")?.map(|text| Annotation { text }).into_iter().collect(),
            has_member: members,
        })
    }

    // ---------------------------------------------------- problem lists ---

    pub(super) fn condition(&mut self, o: &Obj) -> Result<Condition, MapError> {
        let id = self.entity.uuid;
        let voided = o.is("voided")?;
        let inner = o.object("condition")?.ok_or_else(|| o.err("condition", "is required"))?;
        let c = Obj { entity: o.entity, path: "condition", map: inner };
        let non_coded = c.text("nonCoded")?;
        let code = match c.uid("coded")? {
            Some(concept) => Some(self.concept("condition.coded", &concept)),
            // Not FHIR2 (which only has the extension): a receiver that does not know the
            // extension would otherwise get a condition without any meaning.
            None => non_coded.clone().map(CodeableConcept::text),
        };
        if code.is_none() {
            return Err(c.err("coded", "the condition has neither coded nor nonCoded"));
        }
        let abatement = self.datetime(o, "endDate")?;
        let clinical = match o.raw_str("clinicalStatus")? {
            Some("ACTIVE") => "active",
            Some("INACTIVE" | "HISTORY_OF") => "inactive",
            Some(_) => return Err(o.err("clinicalStatus", "is not ACTIVE, INACTIVE or HISTORY_OF")),
            None => return Err(o.err("clinicalStatus", "is required")),
        };
        if abatement.is_some() && clinical == "active" && !voided {
            return Err(o.err(
                "endDate",
                "an active condition with an end date breaks FHIR con-4 (an abated condition is inactive, resolved or in remission)",
            ));
        }
        let verification = if voided {
            Some(("entered-in-error", "Entered in Error"))
        } else {
            match o.raw_str("verificationStatus")? {
                None => None,
                Some("CONFIRMED") => Some(("confirmed", "Confirmed")),
                Some("PROVISIONAL") => Some(("provisional", "Provisional")),
                Some(_) => {
                    return Err(o.err("verificationStatus", "is not CONFIRMED or PROVISIONAL"));
                }
            }
        };
        Ok(Condition {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            extension: non_coded
                .map(|t| Extension::string(EXT_NON_CODED_CONDITION, t))
                .into_iter()
                .collect(),
            // con-5: no clinicalStatus on an entered-in-error condition.
            clinical_status: (!voided).then(|| {
                let display = if clinical == "active" { "Active" } else { "Inactive" };
                coded(&format!("{HL7}/condition-clinical"), clinical, display)
            }),
            verification_status: verification.map(|(code, display)| {
                coded(&format!("{HL7}/condition-ver-status"), code, display)
            }),
            category: vec![coded(
                &format!("{HL7}/condition-category"),
                "problem-list-item",
                "Problem List Item",
            )],
            code,
            subject: Reference::to("Patient", o.req_uid("patient")?.as_str()),
            encounter: o.uid("encounter")?.map(|e| Reference::to("Encounter", e.as_str())),
            onset_date_time: self.datetime(o, "onsetDate")?,
            // con-4 wants an abated condition inactive, con-5 forbids any clinicalStatus on an
            // entered-in-error one: a voided condition goes without its end date.
            abatement_date_time: if voided { None } else { abatement },
            note: o.text("additionalDetail")?.map(|text| Annotation { text }).into_iter().collect(),
        })
    }

    pub(super) fn allergy(&mut self, o: &Obj) -> Result<AllergyIntolerance, MapError> {
        let id = self.entity.uuid;
        let voided = o.is("voided")?;
        let inner = o.object("allergen")?.ok_or_else(|| o.err("allergen", "is required"))?;
        let a = Obj { entity: o.entity, path: "allergen", map: inner };
        let category = match a.raw_str("allergenType")? {
            Some("DRUG") => Some("medication"),
            Some("FOOD") => Some("food"),
            Some("ENVIRONMENT") => Some("environment"),
            Some("OTHER") | None => None,
            Some(_) => return Err(a.err("allergenType", "is not DRUG, FOOD, ENVIRONMENT or OTHER")),
        };
        let mut code = a.uid("codedAllergen")?.map(|c| self.concept("allergen.codedAllergen", &c));
        if let Some(text) = a.text("nonCodedAllergen")? {
            code.get_or_insert_with(CodeableConcept::default).text = Some(text);
        }
        if code.is_none() {
            return Err(a.err(
                "codedAllergen",
                "the allergen has neither codedAllergen nor nonCodedAllergen",
            ));
        }
        let severity = match o.raw_str("severity")? {
            None => None,
            Some("MILD") => Some("mild"),
            Some("MODERATE") => Some("moderate"),
            Some("SEVERE") => Some("severe"),
            Some(_) => return Err(o.err("severity", "is not MILD, MODERATE or SEVERE")),
        };
        let criticality = severity.map(|s| match s {
            "severe" => "high",
            "mild" => "low",
            _ => "unable-to-assess",
        });
        let mut manifestation = Vec::new();
        for item in o.items("reactions")? {
            let it = item.obj(o.entity);
            if it.is("voided")? {
                continue;
            }
            let text = it.text("reactionNonCoded")?;
            let cc = match it.uid("reaction")? {
                Some(c) => {
                    let field = format!("{}.reaction", item.path);
                    let mut cc = self.concept(&field, &c);
                    if text.is_some() {
                        cc.text = text;
                    }
                    cc
                }
                None => match text {
                    Some(t) => CodeableConcept::text(t),
                    None => continue,
                },
            };
            manifestation.push(CodeableConcept { id: Some(item.uuid.to_string()), ..cc });
        }
        let reaction = if manifestation.is_empty() {
            if severity.is_some() {
                self.warn("severity", "no reaction to carry the severity (reaction.manifestation is 1..*); criticality only");
            }
            Vec::new()
        } else {
            vec![AllergyReaction {
                substance: code.clone(),
                manifestation,
                severity: severity.map(str::to_string),
            }]
        };
        let (clinical, display) =
            if voided { ("inactive", "Inactive") } else { ("active", "Active") };
        Ok(AllergyIntolerance {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            clinical_status: Some(coded(
                &format!("{HL7}/allergyintolerance-clinical"),
                clinical,
                display,
            )),
            verification_status: Some(coded(
                &format!("{HL7}/allergyintolerance-verification"),
                "confirmed",
                "Confirmed",
            )),
            type_: Some("allergy".into()),
            category: category.map(str::to_string).into_iter().collect(),
            criticality: criticality.map(str::to_string),
            code,
            patient: Reference::to("Patient", o.req_uid("patient")?.as_str()),
            encounter: o.uid("encounter")?.map(|e| Reference::to("Encounter", e.as_str())),
            note: o.text("comment")?.map(|text| Annotation { text }).into_iter().collect(),
            reaction,
        })
    }

    pub(super) fn appointment(&mut self, o: &Obj) -> Result<Appointment, MapError> {
        let id = self.entity.uuid;
        let status = if o.is("voided")? {
            "entered-in-error"
        } else {
            match o.raw_str("status")? {
                Some("Requested") => "proposed",
                Some("Scheduled") => "booked",
                Some("CheckedIn") => "checked-in",
                Some("Completed") => "fulfilled",
                Some("Cancelled") => "cancelled",
                Some("Missed") => "noshow",
                Some(_) => return Err(o.err("status", "is not an OpenMRS appointment status")),
                None => return Err(o.err("status", "is required")),
            }
        };
        let start = self.instant(o, "startDateTime")?;
        let end = self.instant(o, "endDateTime")?;
        if start.is_some() != end.is_some() {
            return Err(o.err(
                if start.is_none() { "startDateTime" } else { "endDateTime" },
                "is required: FHIR app-2 needs both start and end or neither",
            ));
        }
        if start.is_none() && !matches!(status, "proposed" | "cancelled" | "waitlist") {
            return Err(o.err(
                "startDateTime",
                "is required: FHIR app-3 needs start and end unless proposed or cancelled",
            ));
        }
        let appointment_type = match o.raw_str("appointmentKind")? {
            None => None,
            Some("Scheduled") => {
                Some(coded(&format!("{HL7}/v2-0276"), "ROUTINE", "Routine appointment"))
            }
            Some("WalkIn") => Some(coded(
                &format!("{HL7}/v2-0276"),
                "WALKIN",
                "A previously unscheduled walk-in visit",
            )),
            Some("Virtual") => Some(CodeableConcept::text("Virtual".into())),
            Some(_) => return Err(o.err("appointmentKind", "is not Scheduled, WalkIn or Virtual")),
        };
        let mut participant = vec![AppointmentParticipant {
            actor: Reference::to("Patient", o.req_uid("patient")?.as_str()),
            status: "accepted".into(),
        }];
        if let Some(p) = o.uid("provider")? {
            participant.push(AppointmentParticipant {
                actor: Reference::to("Practitioner", p.as_str()),
                status: "accepted".into(),
            });
        }
        if let Some(l) = o.uid("location")? {
            participant.push(AppointmentParticipant {
                actor: Reference::to("Location", l.as_str()),
                status: "accepted".into(),
            });
        }
        Ok(Appointment {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            status: status.into(),
            service_type: vec![CodeableConcept::of(uid_coding(&o.req_uid("service")?))],
            appointment_type,
            start,
            end,
            comment: o.text("comments")?,
            participant,
        })
    }
}

/// One coding of a fixed HL7 code system, with its display.
fn coded(system: &str, code: &str, display: &str) -> CodeableConcept {
    CodeableConcept::of(Coding::new(system, code).with_display(display))
}
