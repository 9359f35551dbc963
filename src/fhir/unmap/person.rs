//! People read back: Patient, Person, Practitioner and RelatedPerson (the inverse of
//! `map/person.rs`).

use serde_json::{Map, Value};

use super::{In, Job, UnmapError, code_of};
use crate::fhir::map::{
    EXT_ADDRESS, EXT_IDENTIFIER_LOCATION, EXT_NAME, EXT_PERSON_ATTRIBUTE,
    EXT_PERSON_ATTRIBUTE_TYPE, EXT_PERSON_ATTRIBUTE_VALUE, EXT_PROVIDER_IDENTIFIER, URI_SYSTEM,
};
use crate::id::{Uid, parse_uuid};

impl Job<'_, '_> {
    pub(super) fn patient(&mut self, r: &In) -> Result<(), UnmapError> {
        let mut identifiers = Map::new();
        for (i, it) in r.objects("identifier")?.iter().enumerate() {
            let system = it.str("system")?;
            let value = it.text("value")?;
            if system == Some(URI_SYSTEM) {
                // The patient's own uuid as an identifier (`patient_uuid_identifier`).
                continue;
            }
            let Some(value) = value else {
                self.warn(&it.path, "has no value; not read");
                continue;
            };
            let Some(ty) = self.identifier_type(it, system)? else {
                self.warn(
                    &it.path,
                    "names no identifier type (no uuid coding, and its system is not in [fhir.identifier_systems]); not read",
                );
                continue;
            };
            let mut item = Map::new();
            item.insert("identifier".into(), value.into());
            item.insert("identifierType".into(), ty.to_string().into());
            for e in it.extensions(EXT_IDENTIFIER_LOCATION)? {
                if let Some(reference) = e.object("valueReference")?
                    && let Some(loc) = super::reference_id(&reference, &["Location"])?
                {
                    item.insert("location".into(), loc.to_string().into());
                }
            }
            if it.str("use")? == Some("official") {
                item.insert("preferred".into(), true.into());
            }
            identifiers.insert(self.item_uuid(it, "identifier", i).to_string(), item.into());
        }
        self.set("identifiers", identifiers);
        self.demographics(r)?;
        match (r.str("deceasedDateTime")?, r.bool("deceasedBoolean")?) {
            (Some(_), _) => {
                self.set("dead", true);
                let when = self.datetime(r, "deceasedDateTime")?;
                self.set_opt("deathDate", when);
            }
            (None, Some(dead)) => self.set_flag("dead", dead),
            (None, None) => {}
        }
        self.set_flag("voided", r.bool("active")? == Some(false));
        Ok(())
    }

    pub(super) fn person(&mut self, r: &In) -> Result<(), UnmapError> {
        self.demographics(r)?;
        self.set_flag("voided", r.bool("active")? == Some(false));
        Ok(())
    }

    /// A provider: its identifier, contact points and whether it is retired. Names come from
    /// the person a provider names and are not read back (`docs/emr.md`).
    pub(super) fn practitioner(&mut self, r: &In) -> Result<(), UnmapError> {
        let value = r
            .objects("identifier")?
            .iter()
            .find(|i| i.str("system").ok().flatten() == Some(EXT_PROVIDER_IDENTIFIER))
            .map(|i| i.text("value"))
            .transpose()?
            .flatten();
        let Some(value) = value else {
            return Err(r.err(
                "identifier",
                format!("has no identifier of system {EXT_PROVIDER_IDENTIFIER} (the provider identifier)"),
            ));
        };
        self.set("identifier", value);
        self.telecom(r)?;
        self.set_flag("retired", r.bool("active")? == Some(false));
        Ok(())
    }

    /// A relationship: who to whom, of which type, and when (its `active` follows from the
    /// dates and is not read).
    pub(super) fn related_person(&mut self, r: &In) -> Result<(), UnmapError> {
        let a = r
            .objects("identifier")?
            .iter()
            .find(|i| i.str("system").ok().flatten() == Some("RelatedPerson"))
            .and_then(|i| i.str("value").ok().flatten())
            .and_then(|v| v.strip_prefix("Person/"))
            .and_then(|id| parse_uuid(id).ok());
        let Some(a) = a else {
            return Err(r.err(
                "identifier",
                "has no identifier `RelatedPerson|Person/<uuid>` naming the related person",
            ));
        };
        let Some(b) = self.reference(r, "patient", &["Patient"])? else {
            return Err(r.err("patient", "is required"));
        };
        let ty = r
            .objects("relationship")?
            .first()
            .map(|cc| cc.codings())
            .transpose()?
            .unwrap_or_default()
            .into_iter()
            .find_map(|(system, code)| match (system, code) {
                (None, Some(c)) => parse_uuid(c).ok(),
                _ => None,
            });
        let Some(ty) = ty else {
            return Err(r.err("relationship", "has no coding naming a relationship type uuid"));
        };
        self.set("personA", a.to_string());
        self.set("relationshipType", ty.to_string());
        self.set("personB", b.to_string());
        if let Some(period) = r.object("period")? {
            let start = self.datetime(&period, "start")?;
            let end = self.datetime(&period, "end")?;
            self.set_opt("startDate", start);
            self.set_opt("endDate", end);
        }
        Ok(())
    }

    /// Names, gender, birth date, addresses, telecom and person-attribute extensions.
    fn demographics(&mut self, r: &In) -> Result<(), UnmapError> {
        let mut names = Map::new();
        for (i, n) in r.objects("name")?.iter().enumerate() {
            if let Some(item) = human_name(n)? {
                names.insert(self.item_uuid(n, "name", i).to_string(), item.into());
            }
        }
        self.set("names", names);
        let gender = match r.str("gender")? {
            None => None,
            Some("male") => Some("M"),
            Some("female") => Some("F"),
            Some("unknown") => Some("U"),
            Some("other") => Some("O"),
            Some(_) => return Err(r.err("gender", "is not male, female, other or unknown")),
        };
        self.set_opt("gender", gender);
        if let Some(b) = r.str("birthDate")? {
            // The export writes an estimated birth date as a year or a month (FHIR2).
            let (date, estimated) = match b.len() {
                4 => (format!("{b}-01-01"), true),
                7 => (format!("{b}-01"), true),
                _ => (b.to_string(), false),
            };
            if crate::fhir::time::Date::parse(&date).is_none() {
                return Err(r.err("birthDate", "is not a FHIR date"));
            }
            self.set("birthdate", date);
            self.set_flag("birthdateEstimated", estimated);
        }
        let mut addresses = Map::new();
        for (i, a) in r.objects("address")?.iter().enumerate() {
            let mut item = address_fields(a)?;
            if item.is_empty() {
                continue;
            }
            if a.str("use")? == Some("home") {
                item.insert("preferred".into(), true.into());
            }
            addresses.insert(self.item_uuid(a, "address", i).to_string(), item.into());
        }
        self.set("addresses", addresses);
        self.telecom(r)?;
        let mut attributes = self.out.remove("attributes").and_then(into_map).unwrap_or_default();
        for (i, e) in r.extensions(EXT_PERSON_ATTRIBUTE)?.iter().enumerate() {
            let ty = e.extension_text(EXT_PERSON_ATTRIBUTE_TYPE)?;
            let value = e.extension_text(EXT_PERSON_ATTRIBUTE_VALUE)?;
            let (Some(ty), Some(value)) = (ty, value) else {
                self.warn(&e.path, "is a person attribute without a type or a value; not read");
                continue;
            };
            let Ok(ty) = parse_uuid(&ty) else {
                self.warn(&e.path, "names its attribute type by name, not by uuid; not read");
                continue;
            };
            let mut item = Map::new();
            item.insert("attributeType".into(), ty.to_string().into());
            item.insert("value".into(), value.into());
            attributes.insert(self.item_uuid(e, "attribute", i).to_string(), item.into());
        }
        self.set("attributes", attributes);
        Ok(())
    }

    /// `telecom` -> attributes of the contact point types in `[fhir.contact_points]`.
    fn telecom(&mut self, r: &In) -> Result<(), UnmapError> {
        let mut attributes = Map::new();
        for (i, t) in r.objects("telecom")?.iter().enumerate() {
            let (system, use_) = (t.str("system")?, t.str("use")?);
            let Some(value) = t.text("value")? else { continue };
            let Some(ty) = self.contact_point_type(system, use_) else {
                self.warn(
                    &t.path,
                    "matches no attribute type of [fhir.contact_points] (by system and use); not read",
                );
                continue;
            };
            let mut item = Map::new();
            item.insert("attributeType".into(), ty.into());
            item.insert("value".into(), value.into());
            attributes.insert(self.item_uuid(t, "telecom", i).to_string(), item.into());
        }
        self.set("attributes", attributes);
        Ok(())
    }

    fn contact_point_type(&self, system: Option<&str>, use_: Option<&str>) -> Option<String> {
        let system = system?;
        let points = &self.settings().contact_points;
        let same_system = || points.iter().filter(|(_, cp)| cp.system == system);
        same_system()
            .find(|(_, cp)| cp.use_.as_deref() == use_)
            .or_else(|| same_system().find(|(_, cp)| cp.use_.is_none()))
            .or_else(|| same_system().next())
            .map(|(ty, _)| ty.clone())
    }

    /// An identifier's type: the uuid coding of its `type`, else the type whose system in
    /// `[fhir.identifier_systems]` is the identifier's system.
    fn identifier_type(&self, it: &In, system: Option<&str>) -> Result<Option<Uid>, UnmapError> {
        if let Some(cc) = it.object("type")? {
            for (s, code) in cc.codings()? {
                if s.is_none()
                    && let Some(Ok(uid)) = code.map(parse_uuid)
                {
                    return Ok(Some(uid));
                }
            }
        }
        let Some(system) = system else { return Ok(None) };
        Ok(self
            .settings()
            .identifier_systems
            .iter()
            .find(|(_, s)| s.as_str() == system)
            .and_then(|(ty, _)| parse_uuid(ty).ok()))
    }
}

fn into_map(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A name item from a HumanName: the OpenMRS name extension first, then `given` (the first is
/// the given name, the rest the middle name), `family`, `prefix`, `suffix` (the degree); a name
/// given only as `text` becomes the given name. `None` when the name has no part.
fn human_name(n: &In) -> Result<Option<Map<String, Value>>, UnmapError> {
    let mut item = Map::new();
    let parts = n.extensions(EXT_NAME)?;
    let part = |field: &str| -> Result<Option<String>, UnmapError> {
        for p in &parts {
            if let Some(t) = p.extension_text(&format!("{EXT_NAME}#{field}"))? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    };
    let given: Vec<String> =
        n.strings("given")?.into_iter().filter_map(crate::fhir::read::clean).collect();
    let prefix = match part("prefix")? {
        Some(p) => Some(p),
        None => n.strings("prefix")?.first().and_then(|p| crate::fhir::read::clean(p)),
    };
    let degree = match part("degree")? {
        Some(d) => Some(d),
        None => n.strings("suffix")?.first().and_then(|s| crate::fhir::read::clean(s)),
    };
    let fields = [
        ("prefix", prefix),
        ("givenName", given.first().cloned()),
        ("middleName", (given.len() > 1).then(|| given[1..].join(" "))),
        ("familyNamePrefix", part("familyNamePrefix")?),
        ("familyName", n.text("family")?),
        ("familyName2", part("familyName2")?),
        ("familyNameSuffix", part("familyNameSuffix")?),
        ("degree", degree),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            item.insert(k.to_string(), v.into());
        }
    }
    if item.is_empty()
        && let Some(text) = n.text("text")?
    {
        item.insert("givenName".into(), text.into());
    }
    if item.is_empty() {
        return Ok(None);
    }
    if n.str("use")? == Some("official") {
        item.insert("preferred".into(), true.into());
    }
    Ok(Some(item))
}

/// Address fields from an Address: the OpenMRS address extension for `address1`..`address3`,
/// else `line`; then city, district, state, postal code, country.
pub(super) fn address_fields(a: &In) -> Result<Map<String, Value>, UnmapError> {
    let mut item = Map::new();
    let parts = a.extensions(EXT_ADDRESS)?;
    let lines: Vec<String> =
        a.strings("line")?.into_iter().filter_map(crate::fhir::read::clean).collect();
    let mut from_ext: [Option<String>; 3] = Default::default();
    for (i, slot) in from_ext.iter_mut().enumerate() {
        for p in &parts {
            if let Some(t) = p.extension_text(&format!("{EXT_ADDRESS}#address{}", i + 1))? {
                *slot = Some(t);
            }
        }
    }
    // The extension says which line is which; a client that edited `line` without it (it
    // does not know the extension) is read by position.
    let ext_lines: Vec<String> = from_ext.iter().flatten().cloned().collect();
    let values =
        if ext_lines == lines { from_ext } else { [0, 1, 2].map(|i| lines.get(i).cloned()) };
    for (i, value) in values.into_iter().enumerate() {
        if let Some(v) = value {
            item.insert(format!("address{}", i + 1), v.into());
        }
    }
    for (fhir, record) in [
        ("city", "cityVillage"),
        ("district", "countyDistrict"),
        ("state", "stateProvince"),
        ("postalCode", "postalCode"),
        ("country", "country"),
    ] {
        if let Some(v) = a.text(fhir)? {
            item.insert(record.into(), v.into());
        }
    }
    Ok(item)
}

/// The uuid code of the first coding of `system`.
pub(super) fn uuid_code(cc: &In, system: &str, what: &str) -> Result<Uid, UnmapError> {
    let code = code_of(cc, system)?
        .ok_or_else(|| cc.err("coding", format!("has no coding of {system} (the {what})")))?;
    parse_uuid(code).map_err(|_| cc.err("coding", format!("the {what} code is not a uuid")))
}
