//! Comparing what the EMR says with what the node holds, field by field, and deciding which
//! side changed (`docs/emr.md`, "Which side changed").
//!
//! Everything is compared as *projections*: a record's fields in the form the EMR gives them
//! back (`unmap(map(record))`), flattened to paths ([`flatten`]). Three projections of one
//! record meet here:
//!
//! - `emr`: the resource the EMR holds now, read back;
//! - `held`: the record this node holds, mapped and read back;
//! - `base`: what the EMR held when the two last agreed (stored per EMR and record by the
//!   bridge, with `pending`: what the bridge is writing into the EMR right now).
//!
//! A path changed **in the EMR** when `emr` differs from `base` there (and from `pending`: our
//! own write coming back is not a change). Such a path is written into the record, unless the
//! record already says it. A path changed **in the node** when `held` differs from `base`; the
//! record then goes to the EMR. Without a base (first sight), the EMR's side is taken only
//! where it says something and the record does not already; nothing is removed.
//!
//! An echo (a record the bridge wrote, read back) therefore yields nothing, also after a crash
//! between the write and the stored base: its projection equals `held`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::entity::schema::{self, Kind};
use crate::id::EntityType;

/// A record's fields as paths: `gender`; `names.<uuid>` (the item is present, value `true`);
/// `names.<uuid>.givenName`; `condition.coded`.
pub type Flat = BTreeMap<String, Value>;

/// One change the EMR made, to be written into the record (stored form paths).
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    Set(String, Value),
    Remove(String),
    /// The item at `collection.uuid` is gone from the EMR: void it (items are never deleted).
    VoidItem(String),
    /// The item is in the EMR again (or new): un-void it; its fields come as `Set`s.
    RestoreItem(String),
}

/// Flattens a record's fields (stored form) to paths, leaving out the top-level fields in
/// `unsaid`.
pub fn flatten(ty: EntityType, fields: &Map<String, Value>, unsaid: &[&str]) -> Flat {
    let mut out = Flat::new();
    let schema = schema::fields(ty).unwrap_or(&[]);
    for (k, v) in fields {
        if unsaid.contains(&k.as_str()) {
            continue;
        }
        let kind = schema.iter().find(|f| f.name == k).map(|f| f.kind);
        match (kind, v) {
            (Some(Kind::Keyed(_)), Value::Object(items)) => {
                for (uuid, item) in items {
                    out.insert(format!("{k}.{uuid}"), Value::Bool(true));
                    if let Value::Object(item) = item {
                        for (f, x) in item {
                            out.insert(format!("{k}.{uuid}.{f}"), x.clone());
                        }
                    }
                }
            }
            (Some(Kind::Object(_)), Value::Object(inner)) => {
                for (f, x) in inner {
                    out.insert(format!("{k}.{f}"), x.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Whether `path` names an item of a keyed collection (`names.<uuid>`).
fn is_item(ty: EntityType, path: &str) -> bool {
    let mut parts = path.split('.');
    let (Some(k), Some(_), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    schema::fields(ty)
        .and_then(|fs| fs.iter().find(|f| f.name == k))
        .is_some_and(|f| matches!(f.kind, Kind::Keyed(_)))
}

/// What the EMR changed (see the module doc), as edits for the record.
pub fn emr_edits(
    ty: EntityType,
    base: Option<&Flat>,
    pending: Option<&Flat>,
    emr: &Flat,
    held: &Flat,
) -> Vec<Edit> {
    let mut paths: BTreeSet<&String> = emr.keys().collect();
    if let Some(b) = base {
        paths.extend(b.keys());
    }
    let mut edits = Vec::new();
    for p in paths {
        let now = emr.get(p);
        let changed = match base {
            Some(b) => now != b.get(p) && pending.is_none_or(|q| now != q.get(p)),
            None => now.is_some(),
        };
        if !changed || held.get(p) == now {
            continue;
        }
        edits.push(match (is_item(ty, p), now) {
            (true, Some(_)) => Edit::RestoreItem(p.clone()),
            (true, None) => Edit::VoidItem(p.clone()),
            (false, Some(v)) => Edit::Set(p.clone(), v.clone()),
            (false, None) => Edit::Remove(p.clone()),
        });
    }
    // A removed item's fields are not removed one by one: the item is voided.
    let voided: Vec<String> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::VoidItem(p) => Some(format!("{p}.")),
            _ => None,
        })
        .collect();
    edits.retain(|e| match e {
        Edit::Remove(p) => !voided.iter().any(|v| p.starts_with(v.as_str())),
        _ => true,
    });
    edits
}

/// Whether the node changed the record since the EMR last agreed: `held` differs from `base`
/// (without a base: from what the EMR holds).
pub fn node_changed(base: Option<&Flat>, emr: Option<&Flat>, held: &Flat) -> bool {
    match (base, emr) {
        (Some(b), _) => b != held,
        (None, Some(e)) => e != held,
        (None, None) => true,
    }
}

/// Applies edits to a record's fields (stored form). Paths that run through a missing object
/// create it.
pub fn apply(fields: &mut Map<String, Value>, edits: &[Edit]) {
    for e in edits {
        match e {
            Edit::Set(p, v) => {
                let (parent, last) = walk(fields, p);
                parent.insert(last.to_string(), v.clone());
            }
            Edit::Remove(p) => {
                let (parent, last) = walk(fields, p);
                parent.remove(last);
            }
            Edit::VoidItem(p) => {
                let (parent, last) = walk(fields, p);
                if let Some(Value::Object(item)) = parent.get_mut(last) {
                    item.insert("voided".into(), Value::Bool(true));
                }
            }
            Edit::RestoreItem(p) => {
                let (parent, last) = walk(fields, p);
                let item =
                    parent.entry(last.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if !item.is_object() {
                    *item = Value::Object(Map::new());
                }
                if let Value::Object(item) = item {
                    item.remove("voided");
                }
            }
        }
    }
}

/// The object holding the last segment of `path`, creating objects on the way.
fn walk<'m>(
    fields: &'m mut Map<String, Value>,
    path: &'m str,
) -> (&'m mut Map<String, Value>, &'m str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or("");
    let mut cur = fields;
    for part in parts {
        let next = cur.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        cur = match next {
            Value::Object(m) => m,
            _ => unreachable!("made an object above"),
        };
    }
    (cur, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flat(v: Value) -> Flat {
        flatten(EntityType::Patient, v.as_object().expect("object"), &[])
    }

    const N: &str = "6860a7e7-7f95-4b22-afdf-d1c2bc9e3028";

    #[test]
    fn an_edit_in_the_emr_is_a_set_and_an_echo_is_nothing() {
        let base = flat(json!({"gender": "F", "names": {N: {"givenName": "A"}}}));
        let emr = flat(json!({"gender": "F", "names": {N: {"givenName": "B"}}}));
        let held = base.clone();
        let edits = emr_edits(EntityType::Patient, Some(&base), None, &emr, &held);
        assert_eq!(edits, vec![Edit::Set(format!("names.{N}.givenName"), json!("B"))]);
        // The record already says it: nothing.
        assert_eq!(emr_edits(EntityType::Patient, Some(&base), None, &emr, &emr), vec![]);
        // Our own write coming back (pending), before the base was stored: nothing.
        let held2 = flat(json!({"gender": "F", "names": {N: {"givenName": "C"}}}));
        assert_eq!(emr_edits(EntityType::Patient, Some(&base), Some(&emr), &emr, &held2), vec![]);
    }

    #[test]
    fn an_item_gone_from_the_emr_is_voided_and_first_sight_removes_nothing() {
        let base = flat(json!({"gender": "F", "names": {N: {"givenName": "A"}}}));
        let emr = flat(json!({"gender": "F", "names": {}}));
        let edits = emr_edits(EntityType::Patient, Some(&base), None, &emr, &base);
        assert_eq!(edits, vec![Edit::VoidItem(format!("names.{N}"))]);
        let held = flat(json!({"gender": "F", "birthdate": "1990-01-01"}));
        let edits = emr_edits(EntityType::Patient, None, None, &emr, &held);
        assert_eq!(edits, vec![]);
        let mut record = json!({"gender": "F", "names": {N: {"givenName": "A"}}});
        let map = record.as_object_mut().expect("object");
        apply(map, &[Edit::VoidItem(format!("names.{N}"))]);
        assert_eq!(map["names"][N]["voided"], json!(true));
        apply(map, &[Edit::RestoreItem(format!("names.{N}")), Edit::Remove("gender".into())]);
        assert_eq!(record, json!({"names": {N: {"givenName": "A"}}}));
    }

    #[test]
    fn the_node_changed_when_held_moved_from_the_base() {
        let base = flat(json!({"gender": "F"}));
        let held = flat(json!({"gender": "M"}));
        assert!(node_changed(Some(&base), None, &held));
        assert!(!node_changed(Some(&base), None, &base));
        assert!(!node_changed(None, Some(&held), &held));
        assert!(node_changed(None, None, &held));
    }
}
