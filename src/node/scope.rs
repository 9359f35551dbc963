//! Whether a record is inside a child's scope (its entity types and catchment).
//!
//! Patient-linked records follow their patient: a patient is inside a catchment when one of
//! its identifiers names a location in it (OpenMRS records where each identifier was issued).
//! A record whose patient this node does not hold, or cannot read, is outside: a body withheld
//! by mistake can be sent later, a body sent by mistake cannot be taken back.

use std::collections::HashMap;

use serde_json::Value;

use super::{Node, NodeError};
use crate::config::Scope;
use crate::id::{EntityId, EntityType, Uid, parse_uuid};

pub(crate) struct ScopeCheck<'a> {
    node: &'a Node,
    scope: &'a Scope,
    /// Patient uuid -> inside the catchment (`None`: no such patient here).
    patients: HashMap<Uid, Option<bool>>,
    /// Record -> its verdict, for records changed several times in one fetch.
    records: HashMap<EntityId, bool>,
}

impl<'a> ScopeCheck<'a> {
    pub(crate) fn new(node: &'a Node, scope: &'a Scope) -> Self {
        ScopeCheck { node, scope, patients: HashMap::new(), records: HashMap::new() }
    }

    /// Whether the child may receive the body of a change to `entity`.
    pub(crate) fn allows(&mut self, entity: &EntityId) -> Result<bool, NodeError> {
        if let Some(&v) = self.records.get(entity) {
            return Ok(v);
        }
        let v = self.decide(entity)?;
        self.records.insert(*entity, v);
        Ok(v)
    }

    fn decide(&mut self, entity: &EntityId) -> Result<bool, NodeError> {
        use EntityType as T;
        if entity.ty == T::Roster {
            return Ok(true);
        }
        if let Some(types) = &self.scope.types
            && !types.contains(&entity.ty)
        {
            return Ok(false);
        }
        if self.scope.catchment.is_none() {
            return Ok(true);
        }
        Ok(match entity.ty {
            T::Patient => self.patient(entity.uuid)? == Some(true),
            // The person of a patient shares its uuid; other persons (providers, contacts)
            // are not patient records.
            T::Person => self.patient(entity.uuid)?.unwrap_or(true),
            T::Visit | T::Encounter | T::Condition | T::Allergy | T::Appointment => {
                self.linked(entity, &["patient"])?
            }
            T::Obs => self.linked(entity, &["person"])?,
            T::Relationship => {
                let record = self.record(entity)?;
                let mut verdicts = Vec::new();
                for field in ["personA", "personB"] {
                    if let Some(uuid) = record.as_ref().and_then(|r| uuid_at(r, field)) {
                        verdicts.push(self.patient(uuid)?);
                    }
                }
                // Inside if either side is a patient inside; a relationship between people
                // who are not patients here follows no catchment.
                record.is_some()
                    && (verdicts.contains(&Some(true)) || verdicts.iter().all(Option::is_none))
            }
            T::Location | T::Provider | T::Concept | T::Generic | T::Roster => true,
        })
    }

    /// Inside when the record names a patient inside the catchment.
    fn linked(&mut self, entity: &EntityId, fields: &[&str]) -> Result<bool, NodeError> {
        let Some(record) = self.record(entity)? else { return Ok(false) };
        for field in fields {
            if let Some(uuid) = uuid_at(&record, field)
                && self.patient(uuid)? == Some(true)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn record(&self, entity: &EntityId) -> Result<Option<Value>, NodeError> {
        Ok(self.node.store.get(entity)?.map(|(json, _)| json))
    }

    fn patient(&mut self, uuid: Uid) -> Result<Option<bool>, NodeError> {
        if let Some(&v) = self.patients.get(&uuid) {
            return Ok(v);
        }
        let catchment = self.scope.catchment.as_ref();
        let id = EntityId::new(EntityType::Patient, uuid);
        let v = self.record(&id)?.map(|patient| {
            items(patient.get("identifiers")).any(|identifier| {
                uuid_at(identifier, "location")
                    .is_some_and(|l| catchment.is_none_or(|c| c.contains(&l)))
            })
        });
        self.patients.insert(uuid, v);
        Ok(v)
    }
}

/// The items of a collection, whether shown as a list or as a map keyed by item uuid.
fn items(v: Option<&Value>) -> Box<dyn Iterator<Item = &Value> + '_> {
    match v {
        Some(Value::Array(a)) => Box::new(a.iter()),
        Some(Value::Object(m)) => Box::new(m.values()),
        _ => Box::new(std::iter::empty()),
    }
}

/// A reference field: a uuid string, or an object with a `uuid`.
fn uuid_at(record: &Value, field: &str) -> Option<Uid> {
    let v = record.get(field)?;
    let s = v.as_str().or_else(|| v.get("uuid").and_then(Value::as_str))?;
    parse_uuid(s).ok()
}
