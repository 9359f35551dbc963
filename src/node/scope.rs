//! Whether a record is inside a child's scope (its entity types and catchment).
//!
//! Patient-linked records follow their patient: a patient is inside a catchment when one of
//! its identifiers names a location in it (OpenMRS records where each identifier was issued).
//! A record whose patient this node does not hold, or cannot read, is outside: a body withheld
//! by mistake can be sent later, a body sent by mistake cannot be taken back.
//!
//! Each verdict names its **anchors**: the records whose state decided it (the patient of a
//! patient-linked record; both persons of a relationship; else the record itself). A body
//! withheld from a child is remembered under its anchors and checked again when one of them
//! changes (`src/node/resend.rs`); an anchor inside the scope makes its records inside too,
//! except for `types`, whose change re-checks everything.
//!
//! A verdict taken without something it needed (the record itself, or its patient, not held or
//! not readable here yet) also names what it **missed**: the body is remembered as withheld
//! until then, and merging a missed record here makes its anchor due again
//! (`src/store/resend.rs`, table `unsure-1`), whichever way the record arrives.

use std::collections::HashMap;

use serde_json::Value;

use super::{Node, NodeError};
use crate::config::Scope;
use crate::id::{EntityId, EntityType, Uid, parse_uuid};
use crate::store::resend::Unsure;

/// Whether a child may receive the body of a change to a record, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) allowed: bool,
    /// The records whose state decided it.
    pub(crate) anchors: Vec<EntityId>,
    /// The records it needed and could not read here, with the heads they were read at (none
    /// when decided on full knowledge). A patient-linked record read before the field naming
    /// its patient arrived (an edit merged without its creation) is among them: it is
    /// anchored under itself.
    pub(crate) missed: Vec<(EntityId, Heads)>,
}

type Heads = Vec<[u8; 32]>;

impl Verdict {
    /// What a body withheld from a child under this verdict waits for ([`Unsure`]).
    pub(crate) fn unsure(&self) -> Vec<Unsure> {
        self.missed
            .iter()
            .flat_map(|(m, heads)| {
                self.anchors.iter().map(move |a| Unsure {
                    missed: m.key(),
                    anchor: a.key(),
                    heads: heads.clone(),
                })
            })
            .collect()
    }
}

pub(crate) struct ScopeCheck<'a> {
    node: &'a Node,
    scope: &'a Scope,
    /// Patient uuid -> inside the catchment (`None`: no such patient here).
    patients: HashMap<Uid, Option<bool>>,
    /// Record -> its verdict, for records changed several times in one fetch.
    records: HashMap<EntityId, Verdict>,
    /// The records read as absent while deciding the current verdict.
    missed: Vec<(EntityId, Heads)>,
    /// Records read for a verdict (read once for its anchors too), with the heads read at.
    read: HashMap<EntityId, (Option<Value>, Heads)>,
}

impl<'a> ScopeCheck<'a> {
    pub(crate) fn new(node: &'a Node, scope: &'a Scope) -> Self {
        ScopeCheck {
            node,
            scope,
            patients: HashMap::new(),
            records: HashMap::new(),
            missed: Vec::new(),
            read: HashMap::new(),
        }
    }

    /// Whether the child may receive the body of a change to `entity`, its anchors, and what
    /// the decision missed.
    pub(crate) fn verdict(&mut self, entity: &EntityId) -> Result<Verdict, NodeError> {
        if let Some(v) = self.records.get(entity) {
            return Ok(v.clone());
        }
        self.missed.clear();
        let allowed = self.decide(entity)?;
        let anchors = self.anchors(entity)?;
        let mut missed = std::mem::take(&mut self.missed);
        let unlinked = self.scope.catchment.is_some()
            && linked_fields(entity.ty).is_some()
            && anchors == [*entity];
        if unlinked && let Some((_, heads)) = self.read.get(entity) {
            missed.push((*entity, heads.clone()));
        }
        missed.sort_by_key(|(m, _)| m.key());
        missed.dedup_by(|a, b| a.0 == b.0);
        let v = Verdict { allowed, anchors, missed };
        self.records.insert(*entity, v.clone());
        Ok(v)
    }

    /// The records whose state decides whether `entity` is inside a catchment.
    fn anchors(&mut self, entity: &EntityId) -> Result<Vec<EntityId>, NodeError> {
        use EntityType as T;
        let patient = |u| EntityId::new(T::Patient, u);
        let fields: &[&str] = match entity.ty {
            _ if self.scope.catchment.is_none() => &[],
            T::Patient | T::Person => return Ok(vec![patient(entity.uuid)]),
            ty => linked_fields(ty).unwrap_or(&[]),
        };
        let record = if fields.is_empty() { None } else { self.record(entity)? };
        let mut out: Vec<EntityId> = fields
            .iter()
            .filter_map(|f| record.as_ref().and_then(|r| uuid_at(r, f)))
            .map(patient)
            .collect();
        out.dedup();
        if out.is_empty() {
            out.push(*entity);
        }
        Ok(out)
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

    fn record(&mut self, entity: &EntityId) -> Result<Option<Value>, NodeError> {
        let (v, heads) = match self.read.get(entity) {
            Some(v) => v.clone(),
            None => {
                let v = self.node.store.get_with_heads(entity)?;
                self.read.insert(*entity, v.clone());
                v
            }
        };
        if v.is_none() {
            self.missed.push((*entity, heads));
        }
        Ok(v)
    }

    fn patient(&mut self, uuid: Uid) -> Result<Option<bool>, NodeError> {
        if let Some(&v) = self.patients.get(&uuid) {
            if v.is_none() {
                let id = EntityId::new(EntityType::Patient, uuid);
                let heads = self.read.get(&id).map(|(_, h)| h.clone()).unwrap_or_default();
                self.missed.push((id, heads));
            }
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

/// The fields naming the patient (or persons) of a patient-linked record other than a patient
/// or person (`None`: not patient-linked).
fn linked_fields(ty: EntityType) -> Option<&'static [&'static str]> {
    use EntityType as T;
    match ty {
        T::Visit | T::Encounter | T::Condition | T::Allergy | T::Appointment => Some(&["patient"]),
        T::Obs => Some(&["person"]),
        T::Relationship => Some(&["personA", "personB"]),
        _ => None,
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
