//! People: Patient, Person, Practitioner (a provider) and RelatedPerson (a relationship), and
//! the demographics they share (names, gender, birth date, addresses, attributes).
//!
//! A provider or a relationship borrows the demographics of the person it names, read through
//! the [`RecordSource`](super::RecordSource); problems in that other record are warnings here,
//! never a reason to refuse this one.

use serde_json::Value;

use super::{
    EXT_IDENTIFIER_LOCATION, EXT_NAME, EXT_PERSON_ATTRIBUTE, EXT_PERSON_ATTRIBUTE_TYPE,
    EXT_PERSON_ATTRIBUTE_VALUE, EXT_PROVIDER_IDENTIFIER, HL7, Job, URI_SYSTEM, address, uid_coding,
};
use crate::fhir::MapError;
use crate::fhir::model::*;
use crate::fhir::read::{Item, Obj, is_hex_uuid};
use crate::fhir::time::Date;
use crate::id::{EntityId, EntityType, Uid};

/// Demographics shared by Patient, Person, Practitioner and RelatedPerson.
#[derive(Default)]
struct Demographics {
    name: Vec<HumanName>,
    gender: Option<String>,
    birth_date: Option<String>,
    address: Vec<Address>,
    telecom: Vec<ContactPoint>,
    extension: Vec<Extension>,
}

impl Job<'_, '_> {
    fn demographics(&mut self, o: &Obj) -> Result<Demographics, MapError> {
        let mut d = Demographics::default();
        let mut names = Vec::new();
        for item in o.items("names")? {
            let it = item.obj(o.entity);
            if it.is("voided")? {
                continue;
            }
            if let Some(name) = human_name(&item, &it)? {
                names.push((it.is("preferred")?, name));
            }
        }
        prefer_first(&mut names);
        d.name = names.into_iter().map(|(_, n)| n).collect();
        d.gender = match o.raw_str("gender")? {
            None => None,
            Some("M") => Some("male".into()),
            Some("F") => Some("female".into()),
            Some("U") => Some("unknown".into()),
            Some("O") => Some("other".into()),
            Some(_) => {
                self.warn(o.field("gender"), "is not M, F, U or O; left out");
                None
            }
        };
        d.birth_date = self.birth_date(o)?;
        let mut addresses = Vec::new();
        for item in o.items("addresses")? {
            let it = item.obj(o.entity);
            if it.is("voided")? {
                continue;
            }
            if let Some(a) = address(Some(&item), &it)? {
                addresses.push((it.is("preferred")?, a));
            }
        }
        prefer_first(&mut addresses);
        d.address = addresses.into_iter().map(|(_, a)| a).collect();
        let (telecom, extension) = self.attributes(o, true)?;
        d.telecom = telecom;
        d.extension = extension;
        Ok(d)
    }

    /// Attributes: contact point types (settings) become `telecom`; with `extensions`, the
    /// others become FHIR2 person-attribute extensions.
    fn attributes(
        &mut self,
        o: &Obj,
        extensions: bool,
    ) -> Result<(Vec<ContactPoint>, Vec<Extension>), MapError> {
        let mut telecom = Vec::new();
        let mut ext = Vec::new();
        for item in o.items("attributes")? {
            let it = item.obj(o.entity);
            if it.is("voided")? {
                continue;
            }
            let ty = it.req_uid("attributeType")?;
            let Some(value) = it.text("value")? else { continue };
            if let Some(cp) = self.settings().contact_points.get(ty.as_str()) {
                telecom.push(ContactPoint {
                    id: Some(item.uuid.to_string()),
                    system: Some(cp.system.clone()),
                    value: Some(value),
                    use_: cp.use_.clone(),
                    rank: cp.rank,
                });
            } else if extensions {
                ext.extend(
                    Extension::nested(
                        EXT_PERSON_ATTRIBUTE,
                        vec![
                            Extension::string(EXT_PERSON_ATTRIBUTE_TYPE, ty.to_string()),
                            Extension::string(EXT_PERSON_ATTRIBUTE_VALUE, value),
                        ],
                    )
                    .map(|e| e.with_id(item.uuid.to_string())),
                );
            }
        }
        Ok((telecom, ext))
    }

    /// `birthDate`; an estimated one is cut to the year (older than 5) or the month (FHIR2).
    fn birth_date(&self, o: &Obj) -> Result<Option<String>, MapError> {
        let Some(s) = o.raw_str("birthdate")? else { return Ok(None) };
        let date =
            s.get(..10).and_then(Date::parse).ok_or_else(|| o.err("birthdate", "is not a date"))?;
        if !o.is("birthdateEstimated")? {
            return Ok(Some(date.to_string()));
        }
        Ok(Some(if date.years_until(&self.ctx().today) > 5 {
            format!("{:04}", date.year)
        } else {
            format!("{:04}-{:02}", date.year, date.month)
        }))
    }

    /// Reads a linked person's (or patient's) demographics; problems there are warnings here.
    fn linked_demographics(&mut self, field: &str, uuid: &Uid) -> Option<Demographics> {
        let source = self.ctx().source;
        let (ty, record) = [EntityType::Person, EntityType::Patient]
            .into_iter()
            .find_map(|ty| source.record(ty, uuid).map(|r| (ty, r)))?;
        let Value::Object(map) = record else { return None };
        let mut sub = Job { m: self.m, entity: EntityId::new(ty, *uuid), warnings: Vec::new() };
        match sub.demographics(&Obj::root(sub.entity, &map)) {
            Ok(d) => Some(d),
            Err(e) => {
                self.warn(
                    field,
                    format!("{} could not be read ({e}); its demographics are left out", e.entity),
                );
                None
            }
        }
    }

    pub(super) fn patient(&mut self, o: &Obj) -> Result<Patient, MapError> {
        let id = self.entity.uuid;
        let mut identifiers = Vec::new();
        for item in o.items("identifiers")? {
            let it = item.obj(o.entity);
            if it.is("voided")? {
                continue;
            }
            let ty = it.req_uid("identifierType")?;
            let Some(value) = it.text("identifier")? else {
                self.warn(&item.path, "identifier is blank; left out");
                continue;
            };
            let Some(system) = self.settings().identifier_systems.get(ty.as_str()).cloned() else {
                self.warn(
                    &item.path,
                    format!("identifier type {ty} has no system in [fhir.identifier_systems]; identifier left out"),
                );
                continue;
            };
            let preferred = it.is("preferred")?;
            let extension = match it.uid("location")? {
                Some(loc) => vec![Extension::reference(
                    EXT_IDENTIFIER_LOCATION,
                    Reference::to("Location", loc.as_str()),
                )],
                None => Vec::new(),
            };
            identifiers.push((
                preferred,
                Identifier {
                    id: Some(item.uuid.to_string()),
                    extension,
                    use_: Some(if preferred { "official" } else { "usual" }.into()),
                    type_: Some(CodeableConcept::of(uid_coding(&ty))),
                    system: Some(system),
                    value: Some(value),
                },
            ));
        }
        prefer_first(&mut identifiers);
        let mut identifier: Vec<Identifier> = identifiers.into_iter().map(|(_, i)| i).collect();
        if self.settings().patient_uuid_identifier() && is_hex_uuid(&id) {
            identifier.push(Identifier {
                system: Some(URI_SYSTEM.into()),
                value: Some(format!("urn:uuid:{id}")),
                ..Identifier::default()
            });
        }
        if identifier.is_empty() {
            return Err(o.err(
                "identifiers",
                "no identifier has a system: list its identifier type in [fhir.identifier_systems] \
                 (or keep patient_uuid_identifier on)",
            ));
        }
        let d = self.demographics(o)?;
        let deceased = match self.datetime(o, "deathDate")? {
            Some(when) => Deceased::DateTime(when),
            None => Deceased::Boolean(o.is("dead")?),
        };
        Ok(Patient {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            extension: d.extension,
            identifier,
            active: Some(!o.is("voided")?),
            name: d.name,
            telecom: d.telecom,
            gender: d.gender,
            birth_date: d.birth_date,
            deceased: Some(deceased),
            address: d.address,
            managing_organization: Some(self.ctx().managing_organization()),
            link: Vec::new(),
        })
    }

    pub(super) fn person(&mut self, o: &Obj) -> Result<Person, MapError> {
        let id = self.entity.uuid;
        let d = self.demographics(o)?;
        let is_patient = self.ctx().source.record(EntityType::Patient, &id).is_some();
        Ok(Person {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            extension: d.extension,
            name: d.name,
            telecom: d.telecom,
            gender: d.gender,
            birth_date: d.birth_date,
            address: d.address,
            active: Some(!o.is("voided")?),
            link: if is_patient {
                vec![PersonLink { target: Reference::to("Patient", id.as_str()) }]
            } else {
                Vec::new()
            },
        })
    }

    pub(super) fn practitioner(&mut self, o: &Obj) -> Result<Practitioner, MapError> {
        let id = self.entity.uuid;
        let value = o.text("identifier")?.ok_or_else(|| o.err("identifier", "is required"))?;
        let mut d = match o.uid("person")? {
            Some(person) => self.linked_demographics("person", &person).unwrap_or_else(|| {
                self.warn(
                    "person",
                    format!("person {person} is not held by this node; name from provider.name"),
                );
                Demographics::default()
            }),
            None => Demographics::default(),
        };
        if d.name.is_empty()
            && let Some(name) = o.text("name")?
        {
            d.name.push(HumanName { text: Some(name), ..HumanName::default() });
        }
        let (telecom, _) = self.attributes(o, false)?;
        Ok(Practitioner {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            identifier: vec![Identifier {
                system: Some(EXT_PROVIDER_IDENTIFIER.into()),
                value: Some(value),
                ..Identifier::default()
            }],
            active: Some(!o.is("retired")?),
            name: d.name,
            telecom,
            address: d.address,
            gender: d.gender,
            birth_date: d.birth_date,
        })
    }

    pub(super) fn related_person(&mut self, o: &Obj) -> Result<RelatedPerson, MapError> {
        let id = self.entity.uuid;
        let a = o.req_uid("personA")?;
        let b = o.req_uid("personB")?;
        if self.ctx().source.record(EntityType::Patient, &b).is_none() {
            return Err(o.err(
                "personB",
                format!("{b} is not a patient held by this node; RelatedPerson.patient (1..1) must name one"),
            ));
        }
        let d = self.linked_demographics("personA", &a).unwrap_or_else(|| {
            self.warn(
                "personA",
                format!("person {a} is not held by this node; no name, gender or address"),
            );
            Demographics::default()
        });
        let ty = o.req_uid("relationshipType")?;
        let mut relationship = CodeableConcept::of(uid_coding(&ty));
        if let Some(role) = self.settings().relationship_types.get(ty.as_str()) {
            relationship.coding.push(Coding::new(&format!("{HL7}/v3-RoleCode"), role));
        }
        let today = self.ctx().today;
        let started = self.date_of(o, "startDate")?.is_none_or(|s| s <= today);
        let not_ended = self.date_of(o, "endDate")?.is_none_or(|e| e > today);
        let period =
            Period { start: self.datetime(o, "startDate")?, end: self.datetime(o, "endDate")? };
        Ok(RelatedPerson {
            id: id.to_string(),
            meta: self.meta(Vec::new()),
            identifier: vec![Identifier {
                system: Some("RelatedPerson".into()),
                value: Some(format!("Person/{a}")),
                ..Identifier::default()
            }],
            active: Some(!o.is("voided")? && started && not_ended),
            patient: Reference::to("Patient", b.as_str()),
            relationship: vec![relationship],
            name: d.name,
            telecom: d.telecom,
            gender: d.gender,
            birth_date: d.birth_date,
            address: d.address,
            period: (!period.is_empty()).then_some(period),
        })
    }
}

/// A HumanName from a name item (FHIR2 `PersonNameTranslatorImpl`, plus `use`, `text`,
/// `prefix` and `suffix`); `None` when the name has no part at all.
fn human_name(item: &Item, it: &Obj) -> Result<Option<HumanName>, MapError> {
    let part = |n: &str| it.text(n);
    let (prefix, given, middle) = (part("prefix")?, part("givenName")?, part("middleName")?);
    let (family_prefix, family, family2) =
        (part("familyNamePrefix")?, part("familyName")?, part("familyName2")?);
    let (family_suffix, degree) = (part("familyNameSuffix")?, part("degree")?);
    let full: Vec<&str> =
        [&prefix, &given, &middle, &family_prefix, &family, &family2, &family_suffix, &degree]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect();
    if full.is_empty() {
        return Ok(None);
    }
    let mut ext = Vec::new();
    for (field, value) in [
        ("prefix", &prefix),
        ("familyNamePrefix", &family_prefix),
        ("familyName2", &family2),
        ("familyNameSuffix", &family_suffix),
        ("degree", &degree),
    ] {
        if let Some(v) = value {
            ext.push(Extension::string(&format!("{EXT_NAME}#{field}"), v.clone()));
        }
    }
    Ok(Some(HumanName {
        id: Some(item.uuid.to_string()),
        extension: Extension::nested(EXT_NAME, ext).into_iter().collect(),
        use_: it.is("preferred")?.then(|| "official".to_string()),
        text: Some(full.join(" ")),
        family,
        given: [given, middle].into_iter().flatten().collect(),
        prefix: prefix.into_iter().collect(),
        suffix: degree.into_iter().collect(),
    }))
}

fn prefer_first<T>(items: &mut [(bool, T)]) {
    // Stable: items are already in uuid order.
    items.sort_by_key(|(preferred, _)| !*preferred);
}
