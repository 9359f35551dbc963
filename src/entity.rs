//! Typed entities: validation of OpenMRS-style JSON and the canonical document form.
//!
//! `validate` turns untrusted JSON into a [`Record`] (parse, don't validate): every field is
//! checked against [`schema`], collections of uuid-carrying items become maps keyed by that uuid,
//! and errors name the field path and the bad value. `doc` maps records to Automerge documents.
//! Nothing here does I/O.

pub mod doc;
pub mod schema;

use serde_json::{Map, Value};

use crate::id::{EntityId, EntityType, Uid, parse_uuid};
use schema::{Field, Kind};

/// Longest string value accepted in a record.
pub const STRING_BYTES_MAX: usize = 64 * 1024;
/// Largest JSON input for one `put`, in bytes.
pub const INPUT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest record a `put` accepts, in bytes of its canonical JSON: its change must fit one
/// batch, and a batch one network frame (`batch::BATCH_BODY_BYTES_MAX`).
pub const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most items in one keyed collection (names, identifiers, ...).
pub const KEYED_ITEMS_MAX: usize = 1_000;
/// Deepest nesting accepted in a `generic` record.
pub const GENERIC_DEPTH_MAX: usize = 32;

/// A field that failed validation: where, and what was wrong with its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{ty}: field {path}: {problem}")]
pub struct EntityError {
    pub ty: EntityType,
    pub path: String,
    pub problem: String,
}

/// A validated record in canonical form: the JSON object that is stored in the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: EntityId,
    /// Canonical content: keyed collections are objects keyed by item uuid, items carry no
    /// `uuid` field; absent and `null` fields are omitted.
    pub body: Map<String, Value>,
}

/// Validates one JSON record of type `ty`. `new_uuid` is used when the input has no `uuid`.
pub fn validate(ty: EntityType, input: &Value, new_uuid: Uid) -> Result<Record, EntityError> {
    let err = |path: &str, problem: String| EntityError { ty, path: path.to_string(), problem };
    let obj = input.as_object().ok_or_else(|| err("(record)", "is not a JSON object".into()))?;
    let uuid = match obj.get("uuid") {
        None | Some(Value::Null) => new_uuid,
        Some(Value::String(s)) => parse_uuid(s).map_err(|e| err("uuid", e.to_string()))?,
        Some(other) => return Err(err("uuid", format!("{other} is not a uuid string"))),
    };
    let mut body = match schema::fields(ty) {
        Some(fields) => check_object(obj, fields, "", true).map_err(|(p, m)| err(&p, m))?,
        None => check_generic(obj).map_err(|(p, m)| err(&p, m))?,
    };
    if schema::fields(ty).is_some() {
        cross_checks(ty, &body).map_err(|(p, m)| err(&p, m))?;
    }
    body.insert("uuid".into(), Value::String(uuid.to_string()));
    Ok(Record { id: EntityId::new(ty, uuid), body })
}

type Failure = (String, String);

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

fn check_object(
    obj: &Map<String, Value>,
    fields: &[Field],
    at: &str,
    has_uuid: bool,
) -> Result<Map<String, Value>, Failure> {
    for key in obj.keys() {
        let known = (has_uuid && key == "uuid") || fields.iter().any(|f| f.name == key);
        if !known {
            let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
            let msg = format!("unknown field (known: uuid, {})", known.join(", "));
            return Err((join(at, key), msg));
        }
    }
    let mut out = Map::new();
    for field in fields {
        let path = join(at, field.name);
        match obj.get(field.name) {
            None | Some(Value::Null) if field.required => {
                return Err((path, "is required".into()));
            }
            // A keyed collection always exists in the document, empty if need be: two sites
            // that each add a first item then add to the same map, and both items survive.
            // (Two maps created concurrently at one key would conflict, and one would hide.)
            None | Some(Value::Null) if matches!(field.kind, Kind::Keyed(_)) => {
                out.insert(field.name.to_string(), Value::Object(Map::new()));
            }
            None | Some(Value::Null) => {}
            Some(value) => {
                out.insert(field.name.to_string(), check_value(value, field.kind, &path)?);
            }
        }
    }
    Ok(out)
}

fn show(value: &Value) -> String {
    let s = value.to_string();
    if s.len() > 80 { format!("{}...", &s[..s.floor_char_boundary(77)]) } else { s }
}

fn check_value(value: &Value, kind: Kind, path: &str) -> Result<Value, Failure> {
    let bad = |what: &str| Err((path.to_string(), format!("{} is not {what}", show(value))));
    match kind {
        Kind::Str => match value.as_str() {
            Some("") => bad("a non-empty string"),
            Some(s) if s.len() > STRING_BYTES_MAX => bad("a string of at most 64 KiB"),
            Some(_) => Ok(value.clone()),
            None => bad("a string"),
        },
        Kind::Uuid | Kind::Ref(_) => match value.as_str().map(parse_uuid) {
            Some(Ok(u)) => Ok(Value::String(u.to_string())),
            _ => bad("a uuid"),
        },
        // OpenMRS REST writes dates as date-times at midnight; the date part is what it means.
        Kind::Date => match value.as_str() {
            Some(s) if is_date(s) => Ok(value.clone()),
            Some(s) if s.contains('T') && is_datetime(s) => Ok(Value::String(s[..10].to_string())),
            _ => bad("a date (YYYY-MM-DD)"),
        },
        Kind::DateTime => match value.as_str() {
            Some(s) if is_datetime(s) => Ok(value.clone()),
            _ => bad("a date-time (YYYY-MM-DDThh:mm:ss with optional fraction and Z/+hh:mm)"),
        },
        Kind::Bool if value.is_boolean() => Ok(value.clone()),
        Kind::Bool => bad("true or false"),
        Kind::Number if value.is_number() => Ok(value.clone()),
        Kind::Number => bad("a number"),
        Kind::Enum(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => Ok(value.clone()),
            _ => bad(&format!("one of {}", allowed.join(", "))),
        },
        Kind::StrList => match value.as_array() {
            Some(items)
                if items.len() <= KEYED_ITEMS_MAX
                    && items.iter().all(|v| {
                        v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= STRING_BYTES_MAX)
                    }) =>
            {
                Ok(value.clone())
            }
            _ => bad("a list of at most 1,000 non-empty strings of at most 64 KiB"),
        },
        Kind::Object(fields) => match value.as_object() {
            Some(obj) => Ok(Value::Object(check_object(obj, fields, path, false)?)),
            None => bad("an object"),
        },
        Kind::Keyed(fields) => check_keyed(value, fields, path),
    }
}

/// A keyed collection arrives as a JSON list of items with `uuid`s (as in OpenMRS REST) and is
/// stored as an object keyed by those uuids.
fn check_keyed(value: &Value, fields: &[Field], path: &str) -> Result<Value, Failure> {
    let items = value
        .as_array()
        .ok_or_else(|| (path.to_string(), format!("{} is not a list of objects", show(value))))?;
    if items.len() > KEYED_ITEMS_MAX {
        return Err((
            path.to_string(),
            format!("has {} items (limit {KEYED_ITEMS_MAX})", items.len()),
        ));
    }
    let mut out = Map::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| (at.clone(), format!("{} is not an object", show(item))))?;
        let uuid = match obj.get("uuid") {
            Some(Value::String(s)) => {
                parse_uuid(s).map_err(|e| (format!("{at}.uuid"), e.to_string()))?
            }
            Some(other) => {
                return Err((format!("{at}.uuid"), format!("{} is not a uuid", show(other))));
            }
            None => {
                return Err((format!("{at}.uuid"), "is required (items are keyed by uuid)".into()));
            }
        };
        let key = uuid.to_string();
        if out.contains_key(&key) {
            return Err((format!("{at}.uuid"), format!("{key:?} appears twice")));
        }
        out.insert(key, Value::Object(check_object(obj, fields, &at, true)?));
    }
    Ok(Value::Object(out))
}

fn check_generic(obj: &Map<String, Value>) -> Result<Map<String, Value>, Failure> {
    fn walk(value: &Value, path: &str, depth: usize) -> Result<Value, Failure> {
        if depth > GENERIC_DEPTH_MAX {
            return Err((
                path.to_string(),
                format!("nests deeper than {GENERIC_DEPTH_MAX} levels"),
            ));
        }
        Ok(match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    if !v.is_null() {
                        out.insert(k.clone(), walk(v, &join(path, k), depth + 1)?);
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => {
                let walked: Result<Vec<_>, _> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| walk(v, &format!("{path}[{i}]"), depth + 1))
                    .collect();
                Value::Array(walked?)
            }
            Value::String(s) if s.len() > STRING_BYTES_MAX => {
                return Err((path.to_string(), "is a string longer than 64 KiB".into()));
            }
            other => other.clone(),
        })
    }
    let mut rest = obj.clone();
    rest.remove("uuid");
    match walk(&Value::Object(rest), "", 0)? {
        Value::Object(map) => Ok(map),
        _ => unreachable!("walk maps an object to an object"),
    }
}

fn cross_checks(ty: EntityType, body: &Map<String, Value>) -> Result<(), Failure> {
    let one_of = |obj: &str, a: &str, b: &str| -> Result<(), Failure> {
        let inner = body.get(obj).and_then(Value::as_object);
        if inner.is_some_and(|m| m.contains_key(a) || m.contains_key(b)) {
            Ok(())
        } else {
            Err((obj.to_string(), format!("needs {obj}.{a} or {obj}.{b}")))
        }
    };
    match ty {
        EntityType::Condition => one_of("condition", "coded", "nonCoded"),
        EntityType::Allergy => one_of("allergen", "codedAllergen", "nonCodedAllergen"),
        EntityType::Obs => {
            let values =
                ["valueNumeric", "valueText", "valueCoded", "valueDatetime", "valueBoolean"];
            let set: Vec<&str> = values.into_iter().filter(|v| body.contains_key(*v)).collect();
            if set.len() > 1 {
                return Err((
                    set[1].to_string(),
                    format!("an obs holds one value; also has {}", set[0]),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Turns stored canonical content back into the OpenMRS-style JSON a user wrote: `uuid` first,
/// fields in schema order, keyed collections as lists sorted by item uuid.
pub fn to_output(ty: EntityType, body: &Map<String, Value>) -> Value {
    match schema::fields(ty) {
        Some(fields) => Value::Object(object_out(body, fields)),
        None => {
            let mut out = Map::new();
            if let Some(uuid) = body.get("uuid") {
                out.insert("uuid".into(), uuid.clone());
            }
            for (k, v) in body {
                if k != "uuid" {
                    out.insert(k.clone(), v.clone());
                }
            }
            Value::Object(out)
        }
    }
}

fn object_out(body: &Map<String, Value>, fields: &[Field]) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(uuid) = body.get("uuid") {
        out.insert("uuid".into(), uuid.clone());
    }
    for field in fields {
        let Some(value) = body.get(field.name) else { continue };
        let value = match (field.kind, value) {
            (Kind::Keyed(_), Value::Object(items)) if items.is_empty() => continue,
            (Kind::Keyed(inner), Value::Object(items)) => {
                let list = items.iter().map(|(uuid, item)| {
                    let mut obj = Map::new();
                    obj.insert("uuid".into(), Value::String(uuid.clone()));
                    if let Value::Object(item) = item {
                        obj.extend(object_out(item, inner));
                    }
                    Value::Object(obj)
                });
                Value::Array(list.collect())
            }
            (Kind::Object(inner), Value::Object(obj)) => Value::Object(object_out(obj, inner)),
            _ => value.clone(),
        };
        out.insert(field.name.to_string(), value);
    }
    // Fields this version does not know (written by a newer node) are kept, after the rest.
    for (k, v) in body {
        if !out.contains_key(k) && !fields.iter().any(|f| f.name == k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD` with a real month and day (leap years included).
pub fn is_date(s: &str) -> bool {
    if !s.is_ascii() {
        return false;
    }
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return false };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Some(y), Some(m), Some(d)) = (digits(y), digits(m), digits(d)) else { return false };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// A date, or `date T hh:mm[:ss[.fraction]] [Z | ±hh:mm | ±hhmm]`.
pub fn is_datetime(s: &str) -> bool {
    // Byte slicing below relies on ASCII.
    if !s.is_ascii() {
        return false;
    }
    let Some((date, rest)) = s.split_once('T') else { return is_date(s) };
    if !is_date(date) {
        return false;
    }
    let (time, zone) = match rest.find(['Z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let zone_ok = match zone {
        "" | "Z" => true,
        z => {
            let z = &z[1..];
            let (h, m) = match z.len() {
                5 if &z[2..3] == ":" => (&z[..2], &z[3..]),
                4 => (&z[..2], &z[2..]),
                _ => return false,
            };
            digits(h).is_some_and(|h| h < 24) && digits(m).is_some_and(|m| m < 60)
        }
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let parts: Vec<&str> = hms.split(':').collect();
    let ranges = [24, 60, 61];
    let time_ok = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .zip(ranges)
            .all(|(p, max)| p.len() == 2 && digits(p).is_some_and(|v| v < max))
        && (1..=9).contains(&frac.len())
        && frac.bytes().all(|b| b.is_ascii_digit());
    zone_ok && time_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nil() -> Uid {
        Uid::from_random([0; 16])
    }

    fn uuid(n: u8) -> String {
        format!("00000000-0000-4000-8000-0000000000{n:02x}")
    }

    fn patient() -> Value {
        json!({
            "uuid": uuid(1),
            "identifiers": [{"uuid": uuid(2), "identifier": "MRN-1", "identifierType": uuid(3)}],
            "names": [{"uuid": uuid(4), "givenName": "Amina", "familyName": "Okello"}],
            "gender": "F",
            "birthdate": "1990-02-28"
        })
    }

    #[test]
    fn valid_patient_becomes_keyed_maps_and_round_trips() {
        let rec = validate(EntityType::Patient, &patient(), nil()).expect("valid");
        assert_eq!(rec.id.to_string(), format!("patient/{}", uuid(1)));
        assert!(rec.body["names"].as_object().expect("map").contains_key(&uuid(4)));
        assert_eq!(to_output(EntityType::Patient, &rec.body), patient());
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let mut p = patient();
        p["gender"] = json!("X");
        let e = validate(EntityType::Patient, &p, nil()).unwrap_err();
        assert_eq!(e.path, "gender");
        assert!(e.to_string().contains("\"X\" is not one of M, F, U, O"), "{e}");

        let mut p = patient();
        p["birthdate"] = json!("1990-02-30");
        let e = validate(EntityType::Patient, &p, nil()).unwrap_err();
        assert!(e.to_string().contains("birthdate") && e.to_string().contains("1990-02-30"));

        let mut p = patient();
        p["names"][0]["uuid"] = json!("nope");
        let e = validate(EntityType::Patient, &p, nil()).unwrap_err();
        assert_eq!(e.path, "names[0].uuid");

        let mut p = patient();
        p["gendr"] = json!("F");
        let e = validate(EntityType::Patient, &p, nil()).unwrap_err();
        assert!(e.to_string().contains("gendr") && e.to_string().contains("unknown field"));

        let mut p = patient();
        p.as_object_mut().expect("obj").remove("gender");
        let e = validate(EntityType::Patient, &p, nil()).unwrap_err();
        assert_eq!((e.path.as_str(), e.problem.as_str()), ("gender", "is required"));
    }

    #[test]
    fn openmrs_shapes_are_accepted_and_nested_objects_carry_no_uuid() {
        let mut p = patient();
        p["birthdate"] = json!("1988-07-14T00:00:00.000+0300");
        p["causeOfDeath"] = json!("5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let rec = validate(EntityType::Patient, &p, nil()).expect("valid");
        assert_eq!(rec.body["birthdate"], json!("1988-07-14"));
        assert_eq!(rec.body["causeOfDeath"], json!("5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
        let allergy = json!({"patient": uuid(1), "allergen": {"uuid": 5, "allergenType": "FOOD",
                             "nonCodedAllergen": "peanuts"}});
        let e =
            validate(EntityType::Allergy, &allergy, nil()).expect_err("uuid in a nested object");
        assert_eq!(e.path, "allergen.uuid");
    }

    #[test]
    fn missing_uuid_takes_the_given_one() {
        let mut p = patient();
        p.as_object_mut().expect("obj").remove("uuid");
        let fresh = Uid::from_random([9; 16]);
        let rec = validate(EntityType::Patient, &p, fresh).expect("valid");
        assert_eq!(rec.id.uuid, fresh);
    }

    #[test]
    fn generic_takes_any_object_but_not_a_list() {
        let g = json!({"kind": "form", "fields": [1, {"a": null, "b": true}]});
        let rec = validate(EntityType::Generic, &g, nil()).expect("valid");
        assert_eq!(rec.body["fields"], json!([1, {"b": true}]));
        assert!(validate(EntityType::Generic, &json!([1]), nil()).is_err());
    }

    #[test]
    fn dates_and_datetimes() {
        for ok in [
            "2024-02-29",
            "2024-03-01T09:30",
            "2024-03-01T09:30:00.123Z",
            "2024-03-01T09:30:00+0300",
        ] {
            assert!(is_datetime(ok), "{ok}");
        }
        assert!(is_datetime("2024-03-01T09:30:00.999999999Z"));
        for bad in [
            "2024-03-05T08:42+1\u{e9}00",
            "2024-03-01T09:30:00.Z",
            "2023-02-29",
            "2024-13-01",
            "24-01-01",
            "2024-03-01T25:00",
            "2024-03-01T09:30+3",
            "x",
        ] {
            assert!(!is_datetime(bad), "{bad}");
        }
    }
}
