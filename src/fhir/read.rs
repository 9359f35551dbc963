//! Reading fields of a stored record for the mapper: typed accessors whose errors name the record
//! and the field (never the value: records hold patient data).
//!
//! Both forms a record comes in are accepted: the stored form ([`crate::entity::doc::EntityDoc::to_json`],
//! keyed collections as objects keyed by item uuid) and the output form of `sitesync get`
//! (keyed collections as lists of items that carry `uuid`). Fields this version does not know
//! (written by a newer node) are ignored.

use serde_json::{Map, Number, Value};

use super::MapError;
use crate::id::{EntityId, Uid, parse_uuid};

/// A JSON object inside a record, with its dotted path for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'v> {
    pub entity: EntityId,
    pub path: &'v str,
    pub map: &'v Map<String, Value>,
}

/// Keyed items own their path strings; this holds one item.
pub(crate) struct Item {
    pub uuid: Uid,
    pub path: String,
    pub map: Map<String, Value>,
}

impl Item {
    pub fn obj(&self, entity: EntityId) -> Obj<'_> {
        Obj { entity, path: &self.path, map: &self.map }
    }
}

impl<'v> Obj<'v> {
    pub fn root(entity: EntityId, map: &'v Map<String, Value>) -> Obj<'v> {
        Obj { entity, path: "", map }
    }

    pub fn field(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }

    pub fn err(&self, name: &str, reason: impl Into<String>) -> MapError {
        MapError { entity: self.entity, field: self.field(name), reason: reason.into() }
    }

    fn get(&self, name: &str) -> Option<&'v Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The string as stored (`None` if absent).
    pub fn raw_str(&self, name: &str) -> Result<Option<&'v str>, MapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(name, "is not a string")),
        }
    }

    /// The string cleaned for FHIR ([`clean`]); `None` if absent or blank.
    pub fn text(&self, name: &str) -> Result<Option<String>, MapError> {
        Ok(self.raw_str(name)?.and_then(clean))
    }

    pub fn flag(&self, name: &str) -> Result<Option<bool>, MapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(name, "is not true or false")),
        }
    }

    /// `voided` (or `retired`) as a plain bool.
    pub fn is(&self, name: &str) -> Result<bool, MapError> {
        Ok(self.flag(name)?.unwrap_or(false))
    }

    pub fn number(&self, name: &str) -> Result<Option<&'v Number>, MapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n)),
            Some(_) => Err(self.err(name, "is not a number")),
        }
    }

    pub fn uid(&self, name: &str) -> Result<Option<Uid>, MapError> {
        match self.raw_str(name)? {
            None => Ok(None),
            Some(s) => parse_uuid(s).map(Some).map_err(|_| self.err(name, "is not a uuid")),
        }
    }

    pub fn req_uid(&self, name: &str) -> Result<Uid, MapError> {
        self.uid(name)?.ok_or_else(|| self.err(name, "is required"))
    }

    pub fn object(&self, name: &str) -> Result<Option<&'v Map<String, Value>>, MapError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.err(name, "is not an object")),
        }
    }

    pub fn str_list(&self, name: &str) -> Result<Vec<&'v str>, MapError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| self.err(name, "is not a list of strings")))
                .collect(),
            Some(_) => Err(self.err(name, "is not a list of strings")),
        }
    }

    /// A keyed collection in either form, items sorted by uuid.
    pub fn items(&self, name: &str) -> Result<Vec<Item>, MapError> {
        let mut out = Vec::new();
        let item = |uuid: &str, v: &Value| -> Result<Item, MapError> {
            let uid = parse_uuid(uuid)
                .map_err(|_| self.err(name, "has an item whose uuid is not a uuid"))?;
            let path = format!("{}[{uid}]", self.field(name));
            let mut map = v
                .as_object()
                .cloned()
                .ok_or_else(|| self.err(name, "has an item that is not an object"))?;
            map.remove("uuid");
            Ok(Item { uuid: uid, path, map })
        };
        match self.get(name) {
            None => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    out.push(item(k, v)?);
                }
            }
            Some(Value::Array(list)) => {
                for v in list {
                    let uuid = v
                        .get("uuid")
                        .and_then(Value::as_str)
                        .ok_or_else(|| self.err(name, "has an item without a uuid"))?;
                    out.push(item(uuid, v)?);
                }
            }
            Some(_) => return Err(self.err(name, "is not a collection")),
        }
        out.sort_by_key(|a| a.uuid);
        Ok(out)
    }
}

/// A string as FHIR wants it: control characters and whitespace other than space, tab, CR and
/// LF become spaces (FHIR strings match `[ \r\n\t\S]+`), and leading/trailing whitespace is
/// trimmed; `None` if nothing is left.
pub fn clean(s: &str) -> Option<String> {
    let odd =
        |c: char| (c.is_whitespace() || c.is_control()) && !matches!(c, ' ' | '\r' | '\n' | '\t');
    let mapped: String = s.chars().map(|c| if odd(c) { ' ' } else { c }).collect();
    let t = mapped.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// A FHIR `code` (`[^\s]+(\s[^\s]+)*`): [`clean`], with every run of whitespace made one space.
pub fn clean_code(s: &str) -> Option<String> {
    let words: Vec<&str> =
        s.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Whether a uid is an RFC 4122-shaped uuid (8-4-4-4-12 hex), usable as `urn:uuid:`.
pub fn is_hex_uuid(uid: &Uid) -> bool {
    uuid::Uuid::try_parse(uid.as_str()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean("  a\u{a0}b\u{b}c \n"), Some("a b c".into()));
        assert_eq!(clean(" \t "), None);
        assert_eq!(clean_code(" Login \t Location "), Some("Login Location".into()));
        assert_eq!(clean_code("\u{a0}"), None);
    }
}
