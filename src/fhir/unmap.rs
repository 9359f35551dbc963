//! One FHIR resource -> the record fields it expresses: the inverse of [`super::map`], for the
//! EMR bridge's read side (`docs/emr.md` lists, per type, the fields read and written).
//!
//! Pure. The output is a record in stored form (keyed collections as objects keyed by item
//! uuid) holding **only** what the resource expresses; a caller overlays it on the record it
//! holds, field by field, and never deletes what the resource cannot say. Fields that the
//! resource leaves unsaid on purpose this time (a voided condition carries no clinical status,
//! FHIR con-5) are listed in [`Unmapped::unsaid`], so that their absence is not read as a
//! removal.
//!
//! The inverse is exact on what the export writes: for every record `r`,
//! `unmap(map(r))` is `r`'s *projection* (the fields an EMR round-trips, in the form the EMR
//! gives them back), and `map(apply(r, unmap(map(r))))` equals `map(r)`. The golden tests in
//! `tests/fhir/roundtrip.rs` check both for every example and generated record.
//!
//! - Item uuids: an element's `id` when it is a uuid (the export writes every item's uuid
//!   there), otherwise one derived from the resource, the element and its position, so reading
//!   the same resource twice gives the same items.
//! - Codes: a coding without a system whose code is a uuid is the concept itself (the export's
//!   first coding); otherwise a held concept with a mapping to the coding's system and code
//!   ([`ConceptCodes`]); otherwise the resource cannot be read yet and waits for that concept.
//!
//! Errors name the resource (`Type/id`), the element path and the reason, never a value.

mod clinical;
mod encounter;
mod person;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::map::RecordSource;
use super::read::{Obj, clean};
use super::settings::FhirSettings;
use super::time::Date;
use crate::id::{EntityId, EntityType, Uid, parse_uuid};

/// A resource that cannot become a record (yet).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{resource}: {field}: {reason}")]
pub struct UnmapError {
    /// `Type/id` as the EMR names it.
    pub resource: String,
    /// The element path, e.g. `identifier[1].type`.
    pub field: String,
    pub reason: String,
    /// The record this one waits for (a concept not held yet); `None`: the resource itself
    /// must change before it can be read.
    pub waits_for: Option<WaitsFor>,
}

/// What a resource that cannot be read yet waits for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WaitsFor {
    /// A record of this node's store (a referenced patient, encounter, location, ...).
    Record(EntityId),
    /// A concept with a mapping to this system and code.
    Code { system: String, code: String },
}

/// A resource read as a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Unmapped {
    pub entity: EntityId,
    /// Stored form, only the fields the resource expresses.
    pub fields: Map<String, Value>,
    /// Top-level fields the resource does not express this time although the type maps them
    /// (their absence is not a removal).
    pub unsaid: Vec<&'static str>,
    /// Values for required fields among `unsaid`, for a record that has none yet (a voided
    /// condition created in the EMR still needs a clinical status).
    pub defaults: Map<String, Value>,
    /// An obs group's members (`hasMember`): FHIR names them only on the group, so each
    /// member's `obsGroup` is this record; the caller writes it into the members it holds.
    pub members: Vec<Uid>,
    /// Elements left out of the record (an identifier of an unknown system, a telecom of no
    /// configured attribute type). A write into the EMR keeps them as they are.
    pub skipped: Vec<Skipped>,
}

/// An element of a resource that the record cannot hold, and why (never its value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The element path, e.g. `identifier[2]`.
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Held concepts by their mapped codes: `(system, code)` -> concept uuid, built from concept
/// records the way the export writes their codings.
#[derive(Clone, Debug, Default)]
pub struct ConceptCodes {
    by_code: BTreeMap<(String, String), Uid>,
}

impl ConceptCodes {
    /// Indexes concept records (stored or `get` form). The first concept (in uuid order) with
    /// a code wins.
    pub fn build<'r>(
        settings: &FhirSettings,
        concepts: impl IntoIterator<Item = (Uid, &'r Value)>,
    ) -> ConceptCodes {
        let mut list: Vec<(Uid, &Value)> = concepts.into_iter().collect();
        list.sort_by_key(|(u, _)| *u);
        let mut by_code = BTreeMap::new();
        for (uuid, record) in list {
            let Some(map) = record.as_object() else { continue };
            let o = Obj::root(EntityId::new(EntityType::Concept, uuid), map);
            for item in o.items("mappings").unwrap_or_default() {
                let m = item.obj(o.entity);
                let (Ok(Some(source)), Ok(Some(code))) = (m.raw_str("source"), m.raw_str("code"))
                else {
                    continue;
                };
                let system = match settings.concept_source_url(source) {
                    Some(u) => u.to_string(),
                    None => match m.raw_str("sourceUrl") {
                        Ok(Some(u)) => u.to_string(),
                        _ => continue,
                    },
                };
                let Some(code) = super::read::clean_code(code) else { continue };
                by_code.entry((system, code)).or_insert(uuid);
            }
        }
        ConceptCodes { by_code }
    }

    pub fn get(&self, system: &str, code: &str) -> Option<Uid> {
        self.by_code.get(&(system.to_string(), code.to_string())).copied()
    }

    pub fn len(&self) -> usize {
        self.by_code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_code.is_empty()
    }
}

/// Reads resources as records.
pub struct Unmapper<'a> {
    pub settings: &'a FhirSettings,
    /// Held records: concepts (their display tells a coded allergen's text from free text).
    pub source: &'a dyn RecordSource,
    pub codes: &'a ConceptCodes,
    /// Today, for estimated birth dates written as a year or a month.
    pub today: Date,
}

/// The sitesync entity type a resource becomes, or `None` for types the bridge does not read.
/// An Encounter is a visit or an encounter by its type's coding system (as OpenMRS FHIR2
/// decides on write), then by its `meta.tag`.
pub fn entity_type_of(resource: &Value) -> Option<EntityType> {
    Some(match resource.get("resourceType")?.as_str()? {
        "Patient" => EntityType::Patient,
        "Person" => EntityType::Person,
        "Practitioner" => EntityType::Provider,
        "Location" => EntityType::Location,
        "Encounter" => encounter::kind(resource)?,
        "Observation" => EntityType::Obs,
        "Condition" => EntityType::Condition,
        "AllergyIntolerance" => EntityType::Allergy,
        "Appointment" => EntityType::Appointment,
        "RelatedPerson" => EntityType::Relationship,
        _ => return None,
    })
}

impl Unmapper<'_> {
    /// Reads one resource. `Ok(None)`: a resource type the bridge does not read (e.g. an
    /// Organization), or an Encounter that is neither a visit nor an encounter.
    pub fn unmap(&self, resource: &Value) -> Result<Option<Unmapped>, UnmapError> {
        let ty_name = resource.get("resourceType").and_then(Value::as_str).unwrap_or("?");
        let id = resource.get("id").and_then(Value::as_str).unwrap_or("");
        let key = format!("{ty_name}/{id}");
        let Some(map) = resource.as_object() else {
            return Err(error(&key, "(resource)", "is not a JSON object"));
        };
        let Some(ty) = entity_type_of(resource) else { return Ok(None) };
        let uuid = parse_uuid(id).map_err(|_| {
            error(&key, "id", "is not a 36-character uuid, so it cannot name a record")
        })?;
        let mut job = Job {
            u: self,
            key: &key,
            entity: EntityId::new(ty, uuid),
            out: Map::new(),
            unsaid: Vec::new(),
            defaults: Map::new(),
            members: Vec::new(),
            skipped: Vec::new(),
        };
        let r = In { key: &key, path: String::new(), map };
        match ty {
            EntityType::Patient => job.patient(&r)?,
            EntityType::Person => job.person(&r)?,
            EntityType::Provider => job.practitioner(&r)?,
            EntityType::Relationship => job.related_person(&r)?,
            EntityType::Location => job.location(&r)?,
            EntityType::Visit => job.visit(&r)?,
            EntityType::Encounter => job.encounter(&r)?,
            EntityType::Obs => job.observation(&r)?,
            EntityType::Condition => job.condition(&r)?,
            EntityType::Allergy => job.allergy(&r)?,
            EntityType::Appointment => job.appointment(&r)?,
            EntityType::Concept | EntityType::Generic | EntityType::Roster => return Ok(None),
        }
        Ok(Some(Unmapped {
            entity: job.entity,
            fields: job.out,
            unsaid: job.unsaid,
            defaults: job.defaults,
            members: job.members,
            skipped: job.skipped,
        }))
    }
}

fn error(key: &str, field: &str, reason: impl Into<String>) -> UnmapError {
    UnmapError {
        resource: key.to_string(),
        field: field.to_string(),
        reason: reason.into(),
        waits_for: None,
    }
}

/// One resource being read.
struct Job<'u, 'a> {
    u: &'u Unmapper<'a>,
    key: &'u str,
    entity: EntityId,
    out: Map<String, Value>,
    unsaid: Vec<&'static str>,
    defaults: Map<String, Value>,
    members: Vec<Uid>,
    skipped: Vec<Skipped>,
}

impl Job<'_, '_> {
    fn settings(&self) -> &FhirSettings {
        self.u.settings
    }

    fn warn(&mut self, path: &str, reason: impl std::fmt::Display) {
        self.skipped.push(Skipped { path: path.to_string(), reason: reason.to_string() });
    }

    fn set(&mut self, field: &str, value: impl Into<Value>) {
        self.out.insert(field.to_string(), value.into());
    }

    fn set_opt(&mut self, field: &str, value: Option<impl Into<Value>>) {
        if let Some(v) = value {
            self.set(field, v);
        }
    }

    /// `true` only: a false flag is the same as an absent one, as the export reads it.
    fn set_flag(&mut self, field: &str, on: bool) {
        if on {
            self.set(field, true);
        }
    }

    /// The uuid of an item: its element id when that is a uuid, else derived from the
    /// resource, the element name and its position.
    fn item_uuid(&self, element: &In, name: &str, index: usize) -> Uid {
        if let Ok(Some(id)) = element.str("id")
            && let Ok(uid) = parse_uuid(id)
        {
            return uid;
        }
        let h = blake3::hash(format!("{}\u{0}{name}\u{0}{index}", self.key).as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&h.as_bytes()[..16]);
        Uid::from_random(bytes)
    }

    /// The id of a `Type/id` reference to a record of one of `types`.
    fn reference(&self, r: &In, name: &str, types: &[&str]) -> Result<Option<Uid>, UnmapError> {
        let Some(reference) = r.object(name)? else { return Ok(None) };
        reference_id(&reference, types)
    }

    /// A concept from a CodeableConcept (see the module doc).
    fn concept(&self, cc: &In) -> Result<Uid, UnmapError> {
        let codings = cc.objects("coding")?;
        for c in &codings {
            if c.str("system")?.is_none()
                && let Some(code) = c.str("code")?
                && let Ok(uid) = parse_uuid(code)
            {
                return Ok(uid);
            }
        }
        let mut first = None;
        for c in &codings {
            if let (Some(system), Some(code)) = (c.str("system")?, c.str("code")?) {
                if let Some(uid) = self.u.codes.get(system, code) {
                    return Ok(uid);
                }
                first.get_or_insert((system.to_string(), code.to_string()));
            }
        }
        let mut e = cc.err("coding", "names no concept held by this node");
        if let Some((system, code)) = first {
            e.waits_for = Some(WaitsFor::Code { system, code });
        }
        Err(e)
    }

    /// A FHIR date, dateTime or instant as a record date-time, in the form the export writes
    /// (so a value read back compares equal). A partial date (`2024`, `2024-03`) is refused:
    /// records hold at least a whole date.
    fn datetime(&self, r: &In, name: &str) -> Result<Option<String>, UnmapError> {
        match r.str(name)? {
            None => Ok(None),
            Some(s) => super::time::datetime(s, None).map(Some).map_err(|reason| {
                r.err(name, format!("{reason} (a record needs at least a whole date)"))
            }),
        }
    }

    /// A resource entered in error: the record is voided, and the fields the status stands
    /// for are not said (`default`: what a new record gets for a required one).
    fn voided_by_status(&mut self, unsaid: &[&'static str], default: Option<(&str, &str)>) {
        self.set("voided", true);
        self.unsaid.extend_from_slice(unsaid);
        if let Some((field, value)) = default {
            self.defaults.insert(field.to_string(), value.into());
        }
    }
}

/// A coding's `(system, code)`.
type SystemCode<'v> = (Option<&'v str>, Option<&'v str>);

/// A JSON object inside the resource, with its element path for errors.
struct In<'v> {
    key: &'v str,
    path: String,
    map: &'v Map<String, Value>,
}

impl<'v> In<'v> {
    fn field(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }

    fn err(&self, name: &str, reason: impl Into<String>) -> UnmapError {
        error(self.key, &self.field(name), reason)
    }

    fn get(&self, name: &str) -> Option<&'v Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn str(&self, name: &str) -> Result<Option<&'v str>, UnmapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(name, "is not a string")),
        }
    }

    /// The string cleaned as the export cleans it; `None` when absent or blank.
    fn text(&self, name: &str) -> Result<Option<String>, UnmapError> {
        Ok(self.str(name)?.and_then(clean))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, UnmapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(name, "is not true or false")),
        }
    }

    fn object(&self, name: &str) -> Result<Option<In<'v>>, UnmapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(In { key: self.key, path: self.field(name), map })),
            Some(_) => Err(self.err(name, "is not an object")),
        }
    }

    /// The objects of a list element (a single object is read as a list of one).
    fn objects(&self, name: &str) -> Result<Vec<In<'v>>, UnmapError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(map) => {
                        Ok(In { key: self.key, path: format!("{}[{i}]", self.field(name)), map })
                    }
                    _ => Err(self.err(name, "holds an item that is not an object")),
                })
                .collect(),
            Some(_) => Err(self.err(name, "is not a list")),
        }
    }

    fn strings(&self, name: &str) -> Result<Vec<&'v str>, UnmapError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| self.err(name, "is not a list of strings")))
                .collect(),
            Some(_) => Err(self.err(name, "is not a list of strings")),
        }
    }

    /// The extensions with this url.
    fn extensions(&self, url: &str) -> Result<Vec<In<'v>>, UnmapError> {
        Ok(self
            .objects("extension")?
            .into_iter()
            .filter(|e| e.map.get("url").and_then(Value::as_str) == Some(url))
            .collect())
    }

    /// `valueString` of the first extension with this url.
    fn extension_text(&self, url: &str) -> Result<Option<String>, UnmapError> {
        for e in self.extensions(url)? {
            if let Some(t) = e.text("valueString")? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// The codings of a CodeableConcept element: `(system, code)`.
    fn codings(&self) -> Result<Vec<SystemCode<'v>>, UnmapError> {
        self.objects("coding")?.iter().map(|c| Ok((c.str("system")?, c.str("code")?))).collect()
    }
}

/// The id of a reference `{reference: "Type/id"}` (also an absolute URL ending in `Type/id`)
/// whose type is one of `types`.
fn reference_id(r: &In, types: &[&str]) -> Result<Option<Uid>, UnmapError> {
    let Some(text) = r.str("reference")? else { return Ok(None) };
    let mut parts = text.rsplit('/');
    let (Some(id), Some(ty)) = (parts.next(), parts.next()) else {
        return Err(r.err("reference", "is not Type/id"));
    };
    if !types.contains(&ty) {
        return Err(r.err("reference", format!("names a {ty}, not a {}", types.join(" or "))));
    }
    parse_uuid(id).map(Some).map_err(|_| r.err("reference", "does not end in a uuid"))
}

/// The code of the first coding of `system` in a CodeableConcept.
fn code_of<'v>(cc: &In<'v>, system: &str) -> Result<Option<&'v str>, UnmapError> {
    Ok(cc.codings()?.into_iter().find(|(s, _)| *s == Some(system)).and_then(|(_, c)| c))
}
