//! Conflicts: fields of a record that hold concurrent values after a merge.
//!
//! A conflict is a property of the merged document: every node holding the same changes sees
//! the same fields with the same values and the same deterministic winner, so its id (a hash of
//! the record, the field path and the values with their authors and times) is the same on
//! every node. A resolution is an ordinary local change that writes the field once more; it
//! supersedes every concurrent value, so each node that merges it sees the conflict gone and
//! closes it there.
//!
//! Policy (`[conflicts]` in the config) decides what an administrator must look at: `review`
//! (open until resolved) or `auto` (Automerge's deterministic winner is kept and the conflict is
//! only logged). [`ConflictResolver`] is the extension point for code that proposes a value;
//! [`LatestWrite`] is the built-in example.

use serde::{Deserialize, Serialize};

use crate::entity::doc::FieldConflict;
use crate::id::{EntityId, EntityType};

/// What happens to a conflict on a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// Keep the deterministic winner and log the conflict.
    Auto,
    /// Open until an administrator resolves it.
    Review,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Policy::Auto),
            "review" => Ok(Policy::Review),
            other => Err(format!("{other:?} is not a policy (auto or review)")),
        }
    }
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Review => "review",
        }
    }
}

/// Clinical values, reviewed by default: what a wrong automatic pick could harm.
pub const REVIEW_BY_DEFAULT: &[&str] = &[
    "obs.value",
    "obs.valueCoded",
    "obs.valueNumeric",
    "obs.valueText",
    "obs.valueDatetime",
    "obs.valueBoolean",
    "allergy",
    "condition",
    "patient.identifiers",
    "patient.names",
    "patient.birthdate",
    "patient.gender",
    "person.names",
    "person.birthdate",
    "person.gender",
];

/// The policy rules: `type` or `type.field[.subfield]` -> policy; the longest matching rule
/// wins; the built-in defaults apply below the configured rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRules {
    pub rules: Vec<(String, Policy)>,
}

impl PolicyRules {
    /// The policy of a conflict on `path` (stored form, keyed items named by uuid) of a `ty`
    /// record.
    pub fn policy(&self, ty: EntityType, path: &str) -> Policy {
        let field = schema_path(path);
        let full = format!("{}.{field}", ty.as_str());
        let matches = |rule: &str| full == rule || full.starts_with(&format!("{rule}."));
        if let Some((_, p)) =
            self.rules.iter().filter(|(r, _)| matches(r)).max_by_key(|(r, _)| r.len())
        {
            return *p;
        }
        if REVIEW_BY_DEFAULT.iter().any(|r| matches(r)) { Policy::Review } else { Policy::Auto }
    }
}

/// A path with the item uuids of keyed collections left out: `names.<uuid>.familyName` ->
/// `names.familyName`.
pub fn schema_path(path: &str) -> String {
    path.split('.').filter(|seg| crate::id::parse_uuid(seg).is_err()).collect::<Vec<_>>().join(".")
}

/// The id of a conflict: the same on every node holding the same changes.
pub fn conflict_id(entity: &EntityId, c: &FieldConflict) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"sitesync conflict v1\0");
    h.update(entity.key().as_bytes());
    h.update(&[0]);
    h.update(c.path.as_bytes());
    let mut values: Vec<String> = c
        .values
        .iter()
        .map(|v| format!("{}\0{}\0{}", v.author.as_deref().unwrap_or(""), v.time, v.value))
        .collect();
    values.sort();
    for v in values {
        h.update(&[1]);
        h.update(v.as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// One value of a conflict as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredValue {
    /// The value as JSON text.
    pub json: String,
    /// `node:incarnation` of the author, when known.
    pub author: Option<String>,
    /// The author's clock (Unix seconds; advisory).
    pub time: i64,
}

/// A conflict as the node keeps it (table `conflicts-1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: String,
    pub entity: EntityId,
    /// Stored-form path (keyed items by uuid).
    pub path: String,
    pub values: Vec<StoredValue>,
    /// Index of the value reads return.
    pub winner: usize,
    /// When this node first saw it (Unix seconds).
    pub seen: i64,
    /// When this node saw it superseded (resolved here or elsewhere), if it was.
    pub closed: Option<i64>,
}

impl Conflict {
    pub fn from_field(entity: EntityId, c: &FieldConflict, seen: i64) -> Conflict {
        Conflict {
            id: conflict_id(&entity, c),
            entity,
            path: c.path.clone(),
            values: c
                .values
                .iter()
                .map(|v| StoredValue {
                    json: v.value.to_string(),
                    author: v.author.clone(),
                    time: v.time,
                })
                .collect(),
            winner: c.winner,
            seen,
            closed: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }
}

/// Code that proposes a value for a conflict: the extension point for implementers (register
/// one in a fork or an embedding program; `conflicts` shows its proposal).
pub trait ConflictResolver: Send + Sync {
    fn name(&self) -> &'static str;
    /// The index of the value to keep, or `None` to leave the choice to a person.
    fn propose(&self, conflict: &Conflict) -> Option<usize>;
}

/// The built-in example: the value written last by its author's clock (ties: the winner).
/// Clocks at clinics drift, so this is a suggestion, not an automatic rule.
pub struct LatestWrite;

impl ConflictResolver for LatestWrite {
    fn name(&self) -> &'static str {
        "latest write"
    }

    fn propose(&self, conflict: &Conflict) -> Option<usize> {
        let latest = conflict.values.iter().map(|v| v.time).max()?;
        let winner_time = conflict.values.get(conflict.winner).map(|v| v.time);
        if winner_time == Some(latest) {
            return Some(conflict.winner);
        }
        conflict.values.iter().position(|v| v.time == latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_review_clinical_fields_and_rules_override_by_length() {
        let uuid = "0b7c7a55-3d5e-4c1a-9d2f-4a1e2c3b4d5e";
        let none = PolicyRules::default();
        assert_eq!(none.policy(EntityType::Patient, "birthdate"), Policy::Review);
        assert_eq!(
            none.policy(EntityType::Patient, &format!("names.{uuid}.familyName")),
            Policy::Review
        );
        assert_eq!(none.policy(EntityType::Patient, "dead"), Policy::Auto);
        assert_eq!(none.policy(EntityType::Visit, "stopDatetime"), Policy::Auto);
        assert_eq!(none.policy(EntityType::Allergy, "severity"), Policy::Review);
        let rules = PolicyRules {
            rules: vec![("patient".into(), Policy::Review), ("patient.names".into(), Policy::Auto)],
        };
        assert_eq!(rules.policy(EntityType::Patient, "dead"), Policy::Review);
        assert_eq!(
            rules.policy(EntityType::Patient, &format!("names.{uuid}.givenName")),
            Policy::Auto
        );
        assert_eq!(schema_path(&format!("names.{uuid}.familyName")), "names.familyName");
    }

    #[test]
    fn latest_write_proposes_the_newest_value() {
        let v = |t| StoredValue { json: "1".into(), author: None, time: t };
        let c = Conflict {
            id: "x".into(),
            entity: EntityId::new(EntityType::Patient, crate::id::Uid::from_random([1; 16])),
            path: "birthdate".into(),
            values: vec![v(5), v(9), v(7)],
            winner: 0,
            seen: 0,
            closed: None,
        };
        assert_eq!(LatestWrite.propose(&c), Some(1));
    }
}
