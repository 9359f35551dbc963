//! One entity as one Automerge document: reconcile a canonical record into the document as a
//! single change holding only what differs, apply received changes, read the winning values
//! back as JSON, and list fields that hold concurrent values (conflicts).
//!
//! Pure: time and the author are arguments; no storage, no clock.

use std::borrow::Cow;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use serde_json::{Map, Value as Json};

use crate::id::AuthorId;

mod admin;
pub use admin::{ChangeInfo, FieldEdit};

/// An Automerge operation failed: the document or a change is malformed.
#[derive(Debug, thiserror::Error)]
#[error("automerge: {0}")]
pub struct DocError(#[from] pub automerge::AutomergeError);

/// One value of a field that holds several concurrent values.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConflictValue {
    pub value: Json,
    /// The author of the write, when it was written by a sitesync actor.
    pub author: Option<String>,
    /// The author's clock when the change was made (seconds since the Unix epoch; advisory).
    pub time: i64,
}

/// A field with concurrent values. Every replica that holds the same changes lists the same
/// values in the same order and the same winner.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FieldConflict {
    /// Dotted path, with keyed collection items named by uuid: `names.<uuid>.familyName`.
    pub path: String,
    /// Index into `values` of the value that reads return (Automerge's deterministic pick).
    pub winner: usize,
    pub values: Vec<ConflictValue>,
}

/// An entity document.
pub struct EntityDoc {
    doc: Automerge,
}

impl Default for EntityDoc {
    fn default() -> Self {
        Self::new()
    }
}

impl EntityDoc {
    pub fn new() -> Self {
        EntityDoc { doc: Automerge::new() }
    }

    pub fn load(bytes: &[u8]) -> Result<Self, DocError> {
        Ok(EntityDoc { doc: Automerge::load(bytes)? })
    }

    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Applies received changes; those whose dependencies are missing are queued inside the
    /// document until they arrive (and are not part of `save()`: see [`EntityDoc::holds`]).
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), DocError> {
        self.doc.apply_changes(changes)?;
        Ok(())
    }

    /// Whether the change with this Automerge hash is applied (not merely queued).
    pub fn holds(&self, hash: &ChangeHash) -> bool {
        self.doc.get_change_by_hash(hash).is_some()
    }

    /// Writes `body` (a canonical record) as one change by `author`, containing only what
    /// differs. Fields absent from `body` are removed, except items of the collections named in
    /// `keyed`, which are kept (items are voided, never deleted). Returns `None` when nothing
    /// differs.
    pub fn write(
        &mut self,
        author: &AuthorId,
        body: &Map<String, Json>,
        keyed: &[&str],
        time_secs: i64,
    ) -> Result<Option<Change>, DocError> {
        self.doc.set_actor(ActorId::from(author.actor_bytes()));
        let mut tx = self.doc.transaction();
        reconcile_map(&mut tx, &ROOT, body, keyed, false)?;
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(time_secs));
        Ok(hash.and_then(|h| self.doc.get_change_by_hash(&h).cloned()))
    }

    /// Writes `value` at `path` (dotted, stored form) as one change by `author`, even when it
    /// equals the current winner: the write supersedes every concurrent value of the field,
    /// which is how a conflict is resolved. Every object on the way must exist.
    pub fn set_path(
        &mut self,
        author: &AuthorId,
        path: &str,
        value: &Json,
        time_secs: i64,
    ) -> Result<Change, String> {
        let missing = || format!("the record has no field {path}");
        // Keys may hold dots (generic records): `locate` takes the longest matching key per step.
        let (obj, last) = admin::locate(&self.doc, path).ok_or_else(missing)?;
        let last = last.as_str();
        self.doc.set_actor(ActorId::from(author.actor_bytes()));
        let mut tx = self.doc.transaction();
        let written: Result<(), DocError> = (|| {
            match value {
                Json::Object(map) => {
                    let child = tx.put_object(&obj, last, ObjType::Map)?;
                    reconcile_map(&mut tx, &child, map, &[], false)?;
                }
                Json::Array(items) => {
                    let list = tx.put_object(&obj, last, ObjType::List)?;
                    fill_list(&mut tx, &list, items)?;
                }
                scalar => tx.put(&obj, last, scalar_from_json(scalar))?,
            }
            Ok(())
        })();
        if let Err(e) = written {
            tx.rollback();
            return Err(e.to_string());
        }
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(time_secs));
        hash.and_then(|h| self.doc.get_change_by_hash(&h).cloned()).ok_or_else(missing)
    }

    /// The document's current content with each field's winning value.
    pub fn to_json(&self) -> Map<String, Json> {
        match object_json(&self.doc, &ROOT, ObjType::Map, 0) {
            Json::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// Every field that holds more than one concurrent value, in path order.
    pub fn conflicts(&self) -> Vec<FieldConflict> {
        let mut out = Vec::new();
        collect_conflicts(&self.doc, &ROOT, "", 0, &mut out);
        out
    }
}

fn scalar_from_json(value: &Json) -> ScalarValue {
    match value {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        _ => ScalarValue::Null,
    }
}

fn scalar_json(value: &ScalarValue) -> Json {
    match value {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::String(hex::encode(b)),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Json::Null,
    }
}

fn reconcile_map<T: Transactable + ReadDoc>(
    tx: &mut T,
    obj: &ObjId,
    new: &Map<String, Json>,
    keyed: &[&str],
    keep_absent: bool,
) -> Result<(), DocError> {
    for (key, value) in new {
        let existing = tx.get(obj, key.as_str())?;
        let keep_children = keyed.contains(&key.as_str());
        match value {
            Json::Object(map) => {
                let child = match existing {
                    Some((Value::Object(ObjType::Map), id)) => id,
                    _ => tx.put_object(obj, key.as_str(), ObjType::Map)?,
                };
                // Only the top level names keyed collections; their items reconcile normally.
                reconcile_map(tx, &child, map, &[], keep_children)?;
            }
            Json::Array(items) => {
                let same = match &existing {
                    Some((Value::Object(ObjType::List), id)) => {
                        object_json(tx, id, ObjType::List, 0) == *value
                    }
                    _ => false,
                };
                if !same {
                    let list = tx.put_object(obj, key.as_str(), ObjType::List)?;
                    fill_list(tx, &list, items)?;
                }
            }
            scalar => {
                let new = scalar_from_json(scalar);
                let same = matches!(&existing, Some((Value::Scalar(old), _)) if **old == new);
                if !same {
                    tx.put(obj, key.as_str(), new)?;
                }
            }
        }
    }
    if !keep_absent {
        // A keyed collection left out of a put keeps its items (they are voided, never deleted).
        let stale: Vec<String> =
            tx.keys(obj).filter(|k| !new.contains_key(k) && !keyed.contains(&k.as_str())).collect();
        for key in stale {
            tx.delete(obj, key.as_str())?;
        }
    }
    Ok(())
}

fn fill_list<T: Transactable + ReadDoc>(
    tx: &mut T,
    list: &ObjId,
    items: &[Json],
) -> Result<(), DocError> {
    for (i, item) in items.iter().enumerate() {
        match item {
            Json::Object(map) => {
                let child = tx.insert_object(list, i, ObjType::Map)?;
                reconcile_map(tx, &child, map, &[], false)?;
            }
            Json::Array(inner) => {
                let child = tx.insert_object(list, i, ObjType::List)?;
                fill_list(tx, &child, inner)?;
            }
            scalar => tx.insert(list, i, scalar_from_json(scalar))?,
        }
    }
    Ok(())
}

/// Deepest nesting read back from a document. Received documents are not schema-checked, and
/// a peer could nest objects arbitrarily deep: reads stop here instead of recursing until the
/// stack overflows (deeper objects read as `null`).
pub const READ_DEPTH_MAX: usize = 64;

fn value_json<D: ReadDoc>(doc: &D, value: &Value<'_>, id: &ObjId, depth: usize) -> Json {
    match value {
        Value::Scalar(s) => scalar_json(s),
        Value::Object(ty) => object_json(doc, id, *ty, depth + 1),
    }
}

fn object_json<D: ReadDoc>(doc: &D, obj: &ObjId, ty: ObjType, depth: usize) -> Json {
    if depth > READ_DEPTH_MAX {
        return Json::Null;
    }
    match ty {
        ObjType::Map | ObjType::Table => {
            let mut out = Map::new();
            for key in doc.keys(obj) {
                if let Ok(Some((value, id))) = doc.get(obj, key.as_str()) {
                    out.insert(key, value_json(doc, &value, &id, depth));
                }
            }
            Json::Object(out)
        }
        ObjType::List => {
            let items = (0..doc.length(obj)).filter_map(|i| match doc.get(obj, i) {
                Ok(Some((value, id))) => Some(value_json(doc, &value, &id, depth)),
                _ => None,
            });
            Json::Array(items.collect())
        }
        ObjType::Text => Json::String(doc.text(obj).unwrap_or_default()),
    }
}

fn collect_conflicts(
    doc: &Automerge,
    obj: &ObjId,
    at: &str,
    depth: usize,
    out: &mut Vec<FieldConflict>,
) {
    if depth > READ_DEPTH_MAX {
        return;
    }
    let keys: Vec<String> = doc.keys(obj).collect();
    for key in keys {
        let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
        let all = doc.get_all(obj, key.as_str()).unwrap_or_default();
        if all.len() > 1 {
            let winner_id = doc.get(obj, key.as_str()).ok().flatten().map(|(_, id)| id);
            let winner = all.iter().position(|(_, id)| Some(id) == winner_id.as_ref()).unwrap_or(0);
            let values = all.iter().map(|(v, id)| conflict_value(doc, v, id)).collect();
            out.push(FieldConflict { path: path.clone(), winner, values });
        }
        if let Ok(Some((Value::Object(ObjType::Map), id))) = doc.get(obj, key.as_str()) {
            collect_conflicts(doc, &id, &path, depth + 1, out);
        }
    }
}

fn conflict_value(doc: &Automerge, value: &Value<'_>, id: &ObjId) -> ConflictValue {
    let author = match id {
        ObjId::Id(_, actor, _) => AuthorId::from_actor_bytes(actor.to_bytes()),
        ObjId::Root => None,
    };
    let time = doc
        .hash_for_opid(id)
        .and_then(|h| doc.get_change_by_hash(&h).map(|c| c.timestamp()))
        .unwrap_or(0);
    let value = match value {
        Value::Scalar(Cow::Borrowed(s)) => scalar_json(s),
        other => value_json(doc, other, id, 0),
    };
    ConflictValue { value, author: author.map(|a| a.to_string()), time }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Incarnation, NodeId};
    use serde_json::json;

    fn author(n: u8) -> AuthorId {
        AuthorId { node: NodeId([n; 32]), incarnation: Incarnation(n as u64) }
    }

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn write_holds_only_what_differs() {
        let mut doc = EntityDoc::new();
        let v1 = obj(json!({"uuid": "u", "gender": "F", "names": {"n1": {"givenName": "A"}}}));
        let c1 = doc.write(&author(1), &v1, &["names"], 10).expect("write").expect("change");
        assert_eq!(doc.to_json(), v1);
        assert!(doc.write(&author(1), &v1, &["names"], 11).expect("write").is_none());
        let v2 = obj(json!({"uuid": "u", "gender": "M", "names": {"n1": {"givenName": "A"}}}));
        let c2 = doc.write(&author(1), &v2, &["names"], 12).expect("write").expect("change");
        assert_eq!(c2.len(), 1, "one op: the gender");
        assert!(c2.raw_bytes().len() < c1.raw_bytes().len());
    }

    #[test]
    fn absent_keyed_items_are_kept_but_absent_fields_are_removed() {
        let mut doc = EntityDoc::new();
        let v1 = obj(
            json!({"gender": "F", "birthdate": "2000-01-01", "names": {"n1": {"givenName": "A"}}}),
        );
        doc.write(&author(1), &v1, &["names"], 1).expect("write");
        let v2 = obj(json!({"gender": "F", "names": {"n2": {"givenName": "B"}}}));
        doc.write(&author(1), &v2, &["names"], 2).expect("write");
        let v3 = obj(json!({"gender": "F"}));
        doc.write(&author(1), &v3, &["names"], 3).expect("write");
        let out = doc.to_json();
        assert!(!out.contains_key("birthdate"));
        assert_eq!(out["names"], json!({"n1": {"givenName": "A"}, "n2": {"givenName": "B"}}));
    }

    #[test]
    fn concurrent_same_field_edits_conflict_and_agree_on_the_winner() {
        let mut base = EntityDoc::new();
        let v = obj(json!({"gender": "F", "city": "X"}));
        let c0 = base.write(&author(1), &v, &[], 1).expect("write").expect("change");
        let mut a = EntityDoc::new();
        let mut b = EntityDoc::new();
        a.apply(vec![c0.clone()]).expect("apply");
        b.apply(vec![c0]).expect("apply");
        let ca = a
            .write(&author(2), &obj(json!({"gender": "M", "city": "X"})), &[], 2)
            .expect("w")
            .expect("c");
        let cb = b
            .write(&author(3), &obj(json!({"gender": "U", "city": "Y"})), &[], 3)
            .expect("w")
            .expect("c");
        a.apply(vec![cb]).expect("apply");
        b.apply(vec![ca]).expect("apply");
        assert_eq!(a.heads(), b.heads());
        assert_eq!(a.to_json(), b.to_json());
        let conflicts = a.conflicts();
        assert_eq!(conflicts, b.conflicts());
        assert_eq!(conflicts.len(), 1, "only gender conflicts; city merged");
        assert_eq!(conflicts[0].path, "gender");
        assert_eq!(conflicts[0].values.len(), 2);
        assert_eq!(a.to_json()["city"], json!("Y"));
    }

    #[test]
    fn a_document_nested_deeper_than_the_read_limit_reads_without_overflowing() {
        let mut doc = EntityDoc::new();
        doc.doc.set_actor(ActorId::from(author(1).actor_bytes()));
        let mut tx = doc.doc.transaction();
        let mut obj = ROOT;
        for _ in 0..20_000 {
            obj = tx.put_object(&obj, "m", ObjType::Map).expect("nest");
        }
        tx.commit();
        // Runs on a thread with a small stack, as a tokio worker would.
        let json = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || (doc.to_json(), doc.conflicts().len()))
            .expect("spawn")
            .join()
            .expect("no stack overflow");
        assert!(json.0.contains_key("m"));
    }

    #[test]
    fn save_load_round_trip() {
        let mut doc = EntityDoc::new();
        let v = obj(json!({"a": [1, 2.5, "x", {"b": null}], "c": true}));
        doc.write(&author(1), &v, &[], 1).expect("write");
        let back = EntityDoc::load(&doc.save()).expect("load");
        assert_eq!(back.to_json(), doc.to_json());
        assert_eq!(back.heads(), doc.heads());
    }
}
