//! One record -> one FHIR resource, following OpenMRS FHIR2 (`docs/fhir-mapping.md` lists every
//! field and every deviation).
//!
//! Pure: what the record does not say comes from the [`Context`] (settings, the site, today's
//! date) and from a [`RecordSource`] (concepts for codes, the person behind a provider or a
//! relationship, whether a uuid is a patient). A record that cannot become a valid resource is
//! an `Err(MapError)` naming the record and the field; recoverable losses (an identifier without
//! a configured system, a concept this node does not hold) are [`Warning`]s.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Number, Value};

use super::model::*;
use super::read::{Item, Obj, clean, clean_code, is_hex_uuid};
use super::settings::FhirSettings;
use super::time::{Date, datetime, instant};
use super::{MapError, Warning};
use crate::id::{EntityId, EntityType, NodeId, Uid};

pub const EXT: &str = "http://fhir.openmrs.org/ext";
pub const EXT_NAME: &str = "http://fhir.openmrs.org/ext/name";
pub const EXT_ADDRESS: &str = "http://fhir.openmrs.org/ext/address";
pub const EXT_PERSON_ATTRIBUTE: &str = "http://fhir.openmrs.org/ext/person-attribute";
pub const EXT_PERSON_ATTRIBUTE_TYPE: &str = "http://fhir.openmrs.org/ext/person-attribute-type";
pub const EXT_PERSON_ATTRIBUTE_VALUE: &str = "http://fhir.openmrs.org/ext/person-attribute-value";
pub const EXT_IDENTIFIER_LOCATION: &str = "http://fhir.openmrs.org/ext/patient/identifier#location";
pub const EXT_NON_CODED_CONDITION: &str = "http://fhir.openmrs.org/ext/non-coded-condition";
pub const EXT_PROVIDER_IDENTIFIER: &str = "http://fhir.openmrs.org/ext/provider/identifier";
pub const EXT_LOCATION_TAG: &str = "http://fhir.openmrs.org/ext/location-tag";
pub const EXT_ENCOUNTER_TAG: &str = "http://fhir.openmrs.org/ext/encounter-tag";
pub const CS_ENCOUNTER_TYPE: &str = "http://fhir.openmrs.org/code-system/encounter-type";
pub const CS_VISIT_TYPE: &str = "http://fhir.openmrs.org/code-system/visit-type";
const HL7: &str = "http://terminology.hl7.org/CodeSystem";
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Where records referenced by the one being mapped come from (concepts, persons, patients).
pub trait RecordSource {
    /// The record of this type and uuid, in stored or `get` form, if held.
    fn record(&self, ty: EntityType, uuid: &Uid) -> Option<Value>;
}

impl RecordSource for HashMap<EntityId, Value> {
    fn record(&self, ty: EntityType, uuid: &Uid) -> Option<Value> {
        self.get(&EntityId::new(ty, *uuid)).cloned()
    }
}

impl RecordSource for BTreeMap<EntityId, Value> {
    fn record(&self, ty: EntityType, uuid: &Uid) -> Option<Value> {
        self.get(&EntityId::new(ty, *uuid)).cloned()
    }
}

impl<F: Fn(EntityType, &Uid) -> Option<Value>> RecordSource for F {
    fn record(&self, ty: EntityType, uuid: &Uid) -> Option<Value> {
        self(ty, uuid)
    }
}

/// The node that exports: it is the managing organization of its patients and the
/// `meta.source` of every resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub node: NodeId,
    /// The node's name (`sitesync.toml`), the Organization's default name.
    pub name: String,
}

impl Site {
    /// The site uuid, derived from the node id.
    pub fn uuid(&self) -> Uid {
        Uid::of_node(&self.node)
    }
}

/// Everything a mapping reads besides the record itself.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub settings: &'a FhirSettings,
    pub site: &'a Site,
    /// The export's date: FHIR2 makes an estimated birth date's precision depend on the age,
    /// and a relationship's `active` on its dates.
    pub today: Date,
    pub source: &'a dyn RecordSource,
}

impl Context<'_> {
    /// `meta.source` of every resource.
    pub fn meta_source(&self) -> String {
        match &self.settings.source {
            Some(s) => s.clone(),
            None => format!("urn:uuid:{}", self.site.uuid()),
        }
    }

    pub fn organization_id(&self) -> String {
        match &self.settings.organization.id {
            Some(id) => id.clone(),
            None => self.site.uuid().to_string(),
        }
    }

    fn organization_name(&self) -> Option<String> {
        clean(self.settings.organization.name.as_deref().unwrap_or(&self.site.name))
    }

    fn organization_identifier(&self) -> Option<Identifier> {
        let o = &self.settings.organization;
        match (&o.identifier_system, &o.identifier_value) {
            (Some(system), Some(value)) => Some(Identifier {
                system: Some(system.clone()),
                value: clean(value),
                ..Identifier::default()
            }),
            _ => None,
        }
    }

    /// The site's Organization resource.
    pub fn organization(&self) -> Organization {
        Organization {
            id: self.organization_id(),
            meta: Some(Meta { source: Some(self.meta_source()), tag: Vec::new() }),
            identifier: self.organization_identifier().into_iter().collect(),
            active: Some(true),
            name: self.organization_name(),
        }
    }

    /// `Patient.managingOrganization`.
    pub fn managing_organization(&self) -> Reference {
        Reference {
            identifier: self.organization_identifier().map(Box::new),
            display: self.organization_name(),
            ..Reference::to("Organization", &self.organization_id())
        }
    }
}

/// A mapped resource and what was lost on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    pub resource: Resource,
    pub warnings: Vec<Warning>,
}

/// What a concept record contributes.
#[derive(Clone, Debug)]
struct ConceptInfo {
    code: CodeableConcept,
    class: Option<String>,
    units: Option<String>,
    allow_decimal: Option<bool>,
    found: bool,
}

/// Maps records to resources. Holds a cache of concepts and the obs group index.
pub struct Mapper<'a> {
    ctx: Context<'a>,
    /// Obs group uuid -> its members (uuid, voided), from [`Mapper::index`].
    members: HashMap<Uid, Vec<(Uid, bool)>>,
    concepts: RefCell<HashMap<Uid, ConceptInfo>>,
}

impl<'a> Mapper<'a> {
    pub fn new(ctx: Context<'a>) -> Mapper<'a> {
        Mapper { ctx, members: HashMap::new(), concepts: RefCell::new(HashMap::new()) }
    }

    pub fn context(&self) -> &Context<'a> {
        &self.ctx
    }

    /// Notes an obs group member (an obs with `obsGroup`), for the group's `hasMember`. Call it
    /// for every obs before mapping: a group is known only from its members.
    pub fn index(&mut self, ty: EntityType, uuid: Uid, record: &Value) {
        if ty != EntityType::Obs {
            return;
        }
        let Some(map) = record.as_object() else { return };
        let obj = Obj::root(EntityId::new(ty, uuid), map);
        if let Ok(Some(group)) = obj.uid("obsGroup") {
            let voided = obj.is("voided").unwrap_or(false);
            let list = self.members.entry(group).or_default();
            if !list.iter().any(|(m, _)| *m == uuid) {
                list.push((uuid, voided));
                list.sort();
            }
        }
    }

    /// Maps one record. `Ok(None)`: the type has no FHIR resource (concept, generic, roster).
    pub fn map(
        &self,
        ty: EntityType,
        uuid: Uid,
        record: &Value,
    ) -> Result<Option<Mapped>, MapError> {
        let entity = EntityId::new(ty, uuid);
        if matches!(ty, EntityType::Concept | EntityType::Generic | EntityType::Roster) {
            return Ok(None);
        }
        let map = record.as_object().ok_or_else(|| MapError {
            entity,
            field: "(record)".into(),
            reason: "is not a JSON object".into(),
        })?;
        let mut job = Job { m: self, entity, warnings: Vec::new() };
        let o = Obj::root(entity, map);
        let resource = match ty {
            EntityType::Patient => Resource::Patient(job.patient(&o)?),
            EntityType::Person => Resource::Person(job.person(&o)?),
            EntityType::Provider => Resource::Practitioner(job.practitioner(&o)?),
            EntityType::Location => Resource::Location(job.location(&o)?),
            EntityType::Visit => Resource::Encounter(job.visit(&o)?),
            EntityType::Encounter => Resource::Encounter(job.encounter(&o)?),
            EntityType::Obs => Resource::Observation(job.observation(&o)?),
            EntityType::Condition => Resource::Condition(job.condition(&o)?),
            EntityType::Allergy => Resource::AllergyIntolerance(job.allergy(&o)?),
            EntityType::Appointment => Resource::Appointment(job.appointment(&o)?),
            EntityType::Relationship => Resource::RelatedPerson(job.related_person(&o)?),
            EntityType::Concept | EntityType::Generic | EntityType::Roster => return Ok(None),
        };
        Ok(Some(Mapped { resource, warnings: job.warnings }))
    }
}

/// The FHIR resource type a sitesync entity type becomes, if any.
pub fn resource_type_of(ty: EntityType) -> Option<&'static str> {
    Some(match ty {
        EntityType::Patient => "Patient",
        EntityType::Person => "Person",
        EntityType::Provider => "Practitioner",
        EntityType::Location => "Location",
        EntityType::Visit | EntityType::Encounter => "Encounter",
        EntityType::Obs => "Observation",
        EntityType::Condition => "Condition",
        EntityType::Allergy => "AllergyIntolerance",
        EntityType::Appointment => "Appointment",
        EntityType::Relationship => "RelatedPerson",
        EntityType::Concept | EntityType::Generic | EntityType::Roster => return None,
    })
}

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

/// Mapping one record: the record's id and the warnings collected so far.
struct Job<'m, 'a> {
    m: &'m Mapper<'a>,
    entity: EntityId,
    warnings: Vec<Warning>,
}

fn coded(system: &str, code: &str, display: &str) -> CodeableConcept {
    CodeableConcept::of(Coding::new(system, code).with_display(display))
}

fn uid_coding(uuid: &Uid) -> Coding {
    Coding { code: Some(uuid.to_string()), ..Coding::default() }
}

fn prefer_first<T>(items: &mut [(bool, T)]) {
    // Stable: items are already in uuid order.
    items.sort_by_key(|(preferred, _)| !*preferred);
}

impl Job<'_, '_> {
    fn ctx(&self) -> &Context<'_> {
        &self.m.ctx
    }

    fn settings(&self) -> &FhirSettings {
        self.m.ctx.settings
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            entity: self.entity,
            field: field.into(),
            message: message.into(),
        });
    }

    fn meta(&self, tag: Vec<Coding>) -> Option<Meta> {
        Some(Meta { source: Some(self.ctx().meta_source()), tag })
    }

    /// A FHIR dateTime from a field, or an error naming the field.
    fn datetime(&self, o: &Obj, name: &str) -> Result<Option<String>, MapError> {
        match o.raw_str(name)? {
            None => Ok(None),
            Some(s) => datetime(s, self.settings().utc_offset.as_deref())
                .map(Some)
                .map_err(|reason| o.err(name, reason)),
        }
    }

    fn instant(&self, o: &Obj, name: &str) -> Result<Option<String>, MapError> {
        match o.raw_str(name)? {
            None => Ok(None),
            Some(s) => instant(s, self.settings().utc_offset.as_deref())
                .map(Some)
                .map_err(|reason| o.err(name, reason)),
        }
    }

    /// The date part of a date or date-time field, for comparisons with today.
    fn date_of(&self, o: &Obj, name: &str) -> Result<Option<Date>, MapError> {
        match o.raw_str(name)? {
            None => Ok(None),
            Some(s) => s
                .get(..10)
                .and_then(Date::parse)
                .map(Some)
                .ok_or_else(|| o.err(name, "is not a date")),
        }
    }

    // ------------------------------------------------------------- concepts ---

    fn concept_info(&mut self, field: &str, uuid: &Uid) -> ConceptInfo {
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

    fn concept(&mut self, field: &str, uuid: &Uid) -> CodeableConcept {
        self.concept_info(field, uuid).code
    }

    // ------------------------------------------------------------ people ---

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
                ext.extend(Extension::nested(
                    EXT_PERSON_ATTRIBUTE,
                    vec![
                        Extension::string(EXT_PERSON_ATTRIBUTE_TYPE, ty.to_string()),
                        Extension::string(EXT_PERSON_ATTRIBUTE_VALUE, value),
                    ],
                ));
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

    fn patient(&mut self, o: &Obj) -> Result<Patient, MapError> {
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

    fn person(&mut self, o: &Obj) -> Result<Person, MapError> {
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

    fn practitioner(&mut self, o: &Obj) -> Result<Practitioner, MapError> {
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

    fn related_person(&mut self, o: &Obj) -> Result<RelatedPerson, MapError> {
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

    // ------------------------------------------------------------ places ---

    fn location(&mut self, o: &Obj) -> Result<Location, MapError> {
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

    fn visit(&mut self, o: &Obj) -> Result<Encounter, MapError> {
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

    fn encounter(&mut self, o: &Obj) -> Result<Encounter, MapError> {
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

    // ------------------------------------------------------ observations ---

    fn observation(&mut self, o: &Obj) -> Result<Observation, MapError> {
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

    fn condition(&mut self, o: &Obj) -> Result<Condition, MapError> {
        let id = self.entity.uuid;
        let voided = o.is("voided")?;
        let inner = o.object("condition")?.ok_or_else(|| o.err("condition", "is required"))?;
        let c = Obj { entity: o.entity, path: "condition", map: inner };
        let non_coded = c.text("nonCoded")?;
        let code = match c.uid("coded")? {
            Some(concept) => Some(self.concept("condition.coded", &concept)),
            // Not FHIR2 (which only has the extension): a receiver that does not know the
            // extension would otherwise get a condition without any meaning.
            None => {
                non_coded.clone().map(|t| CodeableConcept { coding: Vec::new(), text: Some(t) })
            }
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

    fn allergy(&mut self, o: &Obj) -> Result<AllergyIntolerance, MapError> {
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
                    Some(t) => CodeableConcept { coding: Vec::new(), text: Some(t) },
                    None => continue,
                },
            };
            manifestation.push(cc);
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

    fn appointment(&mut self, o: &Obj) -> Result<Appointment, MapError> {
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
            Some("Virtual") => {
                Some(CodeableConcept { coding: Vec::new(), text: Some("Virtual".into()) })
            }
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

/// A concept record's CodeableConcept (FHIR2 `ConceptTranslatorImpl`): `text` and the first
/// coding's `display` are the concept's display; the first coding's code is its uuid; then,
/// per coding system, the one mapping of that system, or its SAME-AS mapping when there are
/// several map types. A concept record that does not read is still usable by its uuid.
fn concept_info(settings: &FhirSettings, uuid: &Uid, map: &Map<String, Value>) -> ConceptInfo {
    let o = Obj::root(EntityId::new(EntityType::Concept, *uuid), map);
    let display = o.text("display").ok().flatten();
    let mut code = CodeableConcept {
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

/// An Address from a person address item or a location (FHIR2 `PersonAddressTranslatorImpl` /
/// `LocationAddressTranslatorImpl`, plus `line` and `district`); `None` when it has no part.
fn address(item: Option<&Item>, it: &Obj) -> Result<Option<Address>, MapError> {
    let lines = [it.text("address1")?, it.text("address2")?, it.text("address3")?];
    let mut ext = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(l) = line {
            ext.push(Extension::string(&format!("{EXT_ADDRESS}#address{}", i + 1), l.clone()));
        }
    }
    let a = Address {
        id: item.map(|i| i.uuid.to_string()),
        extension: Extension::nested(EXT_ADDRESS, ext).into_iter().collect(),
        use_: match item {
            Some(_) if it.is("preferred")? => Some("home".into()),
            _ => None,
        },
        line: lines.into_iter().flatten().collect(),
        city: it.text("cityVillage")?,
        district: it.text("countyDistrict")?,
        state: it.text("stateProvince")?,
        postal_code: it.text("postalCode")?,
        country: it.text("country")?,
    };
    let empty = a.line.is_empty()
        && a.city.is_none()
        && a.district.is_none()
        && a.state.is_none()
        && a.postal_code.is_none()
        && a.country.is_none();
    Ok((!empty).then_some(a))
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

/// OpenMRS obs interpretation -> v3-ObservationInterpretation code and display.
fn interpretation(i: &str) -> Option<(&'static str, &'static str)> {
    Some(match i {
        "NORMAL" => ("N", "Normal"),
        "ABNORMAL" => ("A", "Abnormal"),
        "CRITICALLY_ABNORMAL" => ("AA", "Critical abnormal"),
        "CRITICALLY_HIGH" => ("HH", "Critical high"),
        "CRITICALLY_LOW" => ("LL", "Critical low"),
        "HIGH" => ("H", "High"),
        "LOW" => ("L", "Low"),
        "OFF_SCALE_LOW" => ("<", "Off scale low"),
        "OFF_SCALE_HIGH" => (">", "Off scale high"),
        "SIGNIFICANT_CHANGE_DOWN" => ("D", "Significant change down"),
        "SIGNIFICANT_CHANGE_UP" => ("U", "Significant change up"),
        "RESISTANT" => ("R", "Resistant"),
        "SUSCEPTIBLE" => ("S", "Susceptible"),
        "INTERMEDIATE" => ("I", "Intermediate"),
        "POSITIVE" => ("POS", "Positive"),
        "NEGATIVE" => ("NEG", "Negative"),
        _ => return None,
    })
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
