//! What the admin view needs from a document beyond reads and reconciled writes: finding the
//! field a dotted path names (for [`EntityDoc::set_path`], the forced write of a resolution),
//! and the document's change history (who changed which fields, when).
//!
//! Pure, like the rest of `doc`: time and the author are arguments.

use automerge::patches::TextRepresentation;
use automerge::{ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc, Value};
use serde_json::Value as Json;

use super::{EntityDoc, value_json};
use crate::id::AuthorId;

/// Longest value shown in a history entry, in bytes (longer ones are cut with "...").
pub const HISTORY_VALUE_BYTES_MAX: usize = 200;

/// One change of a document, as the record page shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChangeInfo {
    /// Automerge change hash (hex).
    pub hash: String,
    /// The sitesync author (`node/incarnation`), when written by a sitesync actor.
    pub author: Option<String>,
    /// The author's per-document change counter.
    pub seq: u64,
    /// The author's clock when the change was made (seconds since the Unix epoch; advisory).
    pub time: i64,
    /// Operations in the change.
    pub ops: usize,
    /// What the change did to the visible fields, in document order.
    pub edits: Vec<FieldEdit>,
}

/// One visible effect of a change.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FieldEdit {
    /// Dotted path, as in [`super::FieldConflict::path`].
    pub path: String,
    /// `set`, `delete`, `insert`, `increment` or `conflict`.
    pub action: &'static str,
    /// The new value (scalars; `{}`/`[]` for new objects), cut at `HISTORY_VALUE_BYTES_MAX`.
    pub value: Option<Json>,
}

impl EntityDoc {
    /// The last `limit` changes of the document in causal order (oldest first), each with
    /// the fields it set or removed (computed by diffing the change against its dependencies).
    pub fn history(&self, limit: usize) -> Vec<ChangeInfo> {
        let changes = self.doc.get_changes(&[]);
        let skip = changes.len().saturating_sub(limit);
        changes
            .into_iter()
            .skip(skip)
            .map(|c| {
                let patches = self.doc.diff(c.deps(), &[c.hash()], TextRepresentation::Array);
                let edits = patches.iter().flat_map(|p| edits_of(&self.doc, p)).collect();
                ChangeInfo {
                    hash: c.hash().to_string(),
                    author: AuthorId::from_actor_bytes(c.actor_id().to_bytes())
                        .map(|a| a.to_string()),
                    seq: c.seq(),
                    time: c.timestamp(),
                    ops: c.len(),
                    edits,
                }
            })
            .collect()
    }
}

/// Finds the map and key a dotted path names. Keys may themselves hold dots (generic records),
/// so each step takes the longest key of the current map that the rest of the path starts with.
pub(super) fn locate(doc: &automerge::Automerge, path: &str) -> Option<(ObjId, String)> {
    let mut obj = ROOT;
    let mut rest = path;
    for _ in 0..=super::READ_DEPTH_MAX {
        let key = doc
            .keys(&obj)
            .filter(|k| {
                rest == k || rest.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with('.'))
            })
            .max_by_key(String::len)?;
        if rest == key {
            return Some((obj, key));
        }
        rest = &rest[key.len() + 1..];
        match doc.get(&obj, key.as_str()).ok().flatten() {
            Some((Value::Object(ObjType::Map), id)) => obj = id,
            _ => return None,
        }
    }
    None
}

fn edits_of(doc: &automerge::Automerge, patch: &automerge::Patch) -> Vec<FieldEdit> {
    let base: Vec<String> = patch
        .path
        .iter()
        .map(|(_, p)| match p {
            Prop::Map(k) => k.clone(),
            Prop::Seq(i) => i.to_string(),
        })
        .collect();
    let at = |last: String| {
        let mut parts = base.clone();
        parts.push(last);
        parts.join(".")
    };
    let shown = |value: &Value<'_>, id: &ObjId| Some(cut(value_json(doc, value, id, 0)));
    match &patch.action {
        PatchAction::PutMap { key, value, .. } => {
            vec![FieldEdit {
                path: at(key.clone()),
                action: "set",
                value: shown(&value.0, &value.1),
            }]
        }
        PatchAction::PutSeq { index, value, .. } => vec![FieldEdit {
            path: at(index.to_string()),
            action: "set",
            value: shown(&value.0, &value.1),
        }],
        PatchAction::Insert { index, values } => values
            .iter()
            .enumerate()
            .map(|(i, (v, id, _))| FieldEdit {
                path: at((index + i).to_string()),
                action: "insert",
                value: shown(v, id),
            })
            .collect(),
        PatchAction::DeleteMap { key } => {
            vec![FieldEdit { path: at(key.clone()), action: "delete", value: None }]
        }
        PatchAction::DeleteSeq { index, length } => (0..*length)
            .map(|i| FieldEdit { path: at((index + i).to_string()), action: "delete", value: None })
            .collect(),
        PatchAction::Increment { prop, value } => vec![FieldEdit {
            path: at(prop_name(prop)),
            action: "increment",
            value: Some(Json::from(*value)),
        }],
        PatchAction::Conflict { prop } => {
            vec![FieldEdit { path: at(prop_name(prop)), action: "conflict", value: None }]
        }
        PatchAction::SpliceText { index, .. } => {
            vec![FieldEdit { path: at(index.to_string()), action: "set", value: None }]
        }
        PatchAction::Mark { .. } => Vec::new(),
    }
}

fn prop_name(prop: &Prop) -> String {
    match prop {
        Prop::Map(k) => k.clone(),
        Prop::Seq(i) => i.to_string(),
    }
}

/// New objects read as `{}`/`[]` here (their fields follow as edits of their own); long
/// strings are cut.
fn cut(value: Json) -> Json {
    match value {
        Json::Object(_) => Json::Object(Default::default()),
        Json::Array(_) => Json::Array(Vec::new()),
        Json::String(s) if s.len() > HISTORY_VALUE_BYTES_MAX => {
            let end = s.floor_char_boundary(HISTORY_VALUE_BYTES_MAX - 3);
            Json::String(format!("{}...", &s[..end]))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Incarnation, NodeId};
    use serde_json::json;

    fn author(n: u8) -> AuthorId {
        AuthorId { node: NodeId([n; 32]), incarnation: Incarnation(n as u64) }
    }

    fn obj(v: Json) -> serde_json::Map<String, Json> {
        v.as_object().cloned().expect("object")
    }

    /// Two replicas that wrote `gender` concurrently, merged.
    fn conflicted() -> EntityDoc {
        let mut a = EntityDoc::new();
        let c0 = a
            .write(&author(1), &obj(json!({"gender": "F", "names": {"n1": {"g": "A"}}})), &[], 1)
            .expect("w")
            .expect("c");
        let mut b = EntityDoc::new();
        b.apply(vec![c0]).expect("apply");
        let base = obj(json!({"gender": "M", "names": {"n1": {"g": "A"}}}));
        let ca = a.write(&author(1), &base, &[], 2).expect("w").expect("c");
        let other = obj(json!({"gender": "O", "names": {"n1": {"g": "A"}}}));
        let cb = b.write(&author(2), &other, &[], 3).expect("w").expect("c");
        a.apply(vec![cb]).expect("apply");
        b.apply(vec![ca]).expect("apply");
        a
    }

    #[test]
    fn overwriting_with_the_winner_still_closes_the_conflict() {
        let mut doc = conflicted();
        let c = &doc.conflicts()[0];
        let winner = c.values[c.winner].value.clone();
        assert!(doc.write(&author(1), &doc.to_json(), &[], 4).expect("w").is_none());
        assert_eq!(doc.conflicts().len(), 1, "a reconciled write of the winner changes nothing");
        let change = doc.set_path(&author(1), "gender", &winner, 5).expect("overwrite");
        assert_eq!(change.timestamp(), 5);
        assert!(doc.conflicts().is_empty());
        assert_eq!(doc.to_json()["gender"], winner);
    }

    #[test]
    fn overwrite_finds_nested_paths_and_refuses_unknown_ones() {
        let mut doc = conflicted();
        assert!(doc.set_path(&author(1), "names.n1.g", &json!("B"), 5).is_ok());
        assert_eq!(doc.to_json()["names"]["n1"]["g"], json!("B"));
        let missing = doc.set_path(&author(1), "names.n2.g", &json!("B"), 6);
        assert_eq!(missing.err().as_deref(), Some("the record has no field names.n2.g"));
        assert!(doc.set_path(&author(1), "nope", &json!(1), 6).is_err());
    }

    #[test]
    fn history_names_authors_and_edited_fields() {
        let doc = conflicted();
        let h = doc.history(10);
        assert_eq!(h.len(), 3);
        assert!(h[0].edits.iter().any(|e| e.path == "names.n1.g" && e.value == Some(json!("A"))));
        let last_two: Vec<_> = h[1..].iter().flat_map(|c| c.edits.clone()).collect();
        assert!(last_two.iter().all(|e| e.path == "gender"), "{last_two:?}");
        assert_eq!(h[0].author, Some(author(1).to_string()));
        assert_eq!(doc.history(1).len(), 1);
    }
}
