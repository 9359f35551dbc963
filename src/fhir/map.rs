//! One record -> one FHIR resource, following OpenMRS FHIR2 (`docs/fhir-mapping.md` lists every
//! field and every deviation).
//!
//! Pure: what the record does not say comes from the [`Context`] (settings, the site, today's
//! date) and from a [`RecordSource`] (concepts for codes, the person behind a provider or a
//! relationship, whether a uuid is a patient). A record that cannot become a valid resource is
//! an `Err(MapError)` naming the record and the field; recoverable losses (an identifier without
//! a configured system, a concept this node does not hold) are [`Warning`]s.
//!
//! This file owns what every resource family shares: the [`Mapper`] and its dispatch by entity
//! type, [`resource_type_of`], the [`Context`], the OpenMRS extension and code system URLs, and
//! the per-record `Job` with its field readers and the helpers more than one family uses. The
//! families are rooms of their own, each adding its methods to `Job`:
//!
//! - `person`: Patient, Person, Practitioner (provider) and RelatedPerson (relationship), and
//!   the demographics they share.
//! - `encounter`: Location, and the visits and encounters that happen there (both Encounter).
//! - `clinical`: Observation, Condition, AllergyIntolerance and Appointment.
//! - `terminology`: concept records as CodeableConcepts, and the fixed code tables.
//!
//! Nothing here maps a field of one family: a new family gets a room of its own and one arm in
//! the dispatch of [`Mapper::map`].

mod clinical;
mod encounter;
mod person;
mod terminology;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::model::*;
use super::read::{Item, Obj, clean};
use super::settings::FhirSettings;
use super::time::{Date, datetime, instant};
use super::{MapError, Warning};
use crate::id::{EntityId, EntityType, NodeId, Uid};
use terminology::ConceptInfo;

pub(crate) use terminology::interpretation_name;
pub use terminology::ucum_code;

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
pub(crate) const HL7: &str = "http://terminology.hl7.org/CodeSystem";
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

/// Mapping one record: the record's id and the warnings collected so far.
struct Job<'m, 'a> {
    m: &'m Mapper<'a>,
    entity: EntityId,
    warnings: Vec<Warning>,
}

/// A coding with a uuid for its code and no system: OpenMRS metadata (identifier, relationship
/// and service types) and concepts this node does not hold.
fn uid_coding(uuid: &Uid) -> Coding {
    Coding { code: Some(uuid.to_string()), ..Coding::default() }
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
