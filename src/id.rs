//! Domain identifiers: node ids, authors (node + store incarnation), entity ids, content hashes
//! and the replication vector.
//!
//! Everything here is a plain value with `Display`/`FromStr`; nothing does I/O. Parsing errors name
//! the bad input so the CLI can print them as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of an Automerge actor id written by sitesync: node id (32) + incarnation (8).
pub const ACTOR_BYTES: usize = 40;

/// Why an identifier could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("node id {0:?} is not 64 lowercase hex characters")]
    NodeId(String),
    #[error("author {0:?} is not NODE_ID:INCARNATION (64 + 16 hex characters)")]
    Author(String),
    #[error("unknown entity type {0:?} (expected one of: {list})", list = EntityType::names())]
    EntityType(String),
    #[error("{0:?} is not a uuid (36 characters: letters, digits and '-')")]
    Uuid(String),
    #[error("entity id {0:?} is not TYPE/UUID")]
    EntityId(String),
}

/// Characters of a node id, author or hash shown where the whole id does not fit.
pub const SHORT_ID_CHARS: usize = 12;

/// The first [`SHORT_ID_CHARS`] characters of an id's text (all of it if shorter): the one way
/// ids are shortened for people (logs, pages, CLI output, file names).
pub fn short(id: &str) -> &str {
    id.get(..SHORT_ID_CHARS).unwrap_or(id)
}

/// A node's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", short(&hex::encode(self.0)))
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::NodeId(s.to_string());
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let bytes = hex::decode(s).map_err(|_| bad())?;
        Ok(NodeId(bytes.try_into().map_err(|_| bad())?))
    }
}

/// One incarnation of a node's store. A store restored from a backup or copied to another
/// machine gets a new incarnation before it writes, so no (author, seq) is ever reused with
/// different content (see `docs/architecture.md`, "Incarnations").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incarnation({self})")
    }
}

/// The author of changes and batches: a node in one store incarnation. Batches are numbered
/// per author; the Automerge actor id of every change is `author.actor_bytes()`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuthorId {
    pub node: NodeId,
    pub incarnation: Incarnation,
}

impl AuthorId {
    pub fn actor_bytes(&self) -> [u8; ACTOR_BYTES] {
        let mut out = [0u8; ACTOR_BYTES];
        out[..32].copy_from_slice(&self.node.0);
        out[32..].copy_from_slice(&self.incarnation.0.to_be_bytes());
        out
    }

    pub fn from_actor_bytes(bytes: &[u8]) -> Option<AuthorId> {
        if bytes.len() != ACTOR_BYTES {
            return None;
        }
        let node = NodeId(bytes[..32].try_into().ok()?);
        let incarnation = Incarnation(u64::from_be_bytes(bytes[32..].try_into().ok()?));
        Some(AuthorId { node, incarnation })
    }
}

impl fmt::Display for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.incarnation)
    }
}

impl fmt::Debug for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Author({self})")
    }
}

impl FromStr for AuthorId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::Author(s.to_string());
        let (node, inc) = s.split_once(':').ok_or_else(bad)?;
        let node = node.parse().map_err(|_| bad())?;
        if inc.len() != 16 {
            return Err(bad());
        }
        let inc = u64::from_str_radix(inc, 16).map_err(|_| bad())?;
        Ok(AuthorId { node, incarnation: Incarnation(inc) })
    }
}

macro_rules! entity_types {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The kinds of record sitesync stores; each is one Automerge document per uuid.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        pub enum EntityType { $($variant),* }

        impl EntityType {
            pub const ALL: &'static [EntityType] = &[$(EntityType::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(EntityType::$variant => $name),* }
            }
        }

        impl FromStr for EntityType {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                match s {
                    $($name => Ok(EntityType::$variant),)*
                    _ => Err(IdError::EntityType(s.to_string())),
                }
            }
        }
    };
}

entity_types! {
    Patient => "patient",
    Person => "person",
    Location => "location",
    Visit => "visit",
    Encounter => "encounter",
    Obs => "obs",
    Condition => "condition",
    Allergy => "allergy",
    Appointment => "appointment",
    Relationship => "relationship",
    Provider => "provider",
    Concept => "concept",
    Generic => "generic",
    Roster => "roster",
}

impl EntityType {
    fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
        names.join(", ")
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Length of a record id: OpenMRS uuids are 36 characters.
pub const UID_BYTES: usize = 36;

/// A record's id as OpenMRS writes it: 36 characters. A hyphenated hex uuid is stored
/// lowercased; other 36-character ids of letters, digits and `-` (OpenMRS's CIEL concepts,
/// e.g. `5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`) are kept exactly, as OpenMRS compares them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid([u8; UID_BYTES]);

impl Uid {
    /// A new random (v4) uuid from 16 bytes of entropy.
    pub fn from_random(bytes: [u8; 16]) -> Uid {
        let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut out = [0u8; UID_BYTES];
        out.copy_from_slice(uuid.hyphenated().to_string().as_bytes());
        Uid(out)
    }

    /// The id of a node's roster record: the first 16 bytes of the node id, as a uuid.
    pub fn of_node(node: &NodeId) -> Uid {
        let h = hex::encode(&node.0[..16]);
        let text = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
        let mut out = [0u8; UID_BYTES];
        out.copy_from_slice(text.as_bytes());
        Uid(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked by parse_uuid).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.as_str())
    }
}

impl FromStr for Uid {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_uuid(s)
    }
}

impl Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_uuid(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a record id (see [`Uid`]): a hyphenated uuid (stored lowercased) or a 36-character
/// OpenMRS id of ASCII letters, digits and `-` (kept as written).
pub fn parse_uuid(s: &str) -> Result<Uid, IdError> {
    let bad = || IdError::Uuid(s.to_string());
    if s.len() != UID_BYTES || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(bad());
    }
    let mut out = [0u8; UID_BYTES];
    match uuid::Uuid::try_parse(s) {
        Ok(u) => out.copy_from_slice(u.hyphenated().to_string().as_bytes()),
        Err(_) => out.copy_from_slice(s.as_bytes()),
    }
    Ok(Uid(out))
}

/// One record: `(type, uuid)`, printed as `type/uuid`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct EntityId {
    pub ty: EntityType,
    pub uuid: Uid,
}

impl EntityId {
    pub fn new(ty: EntityType, uuid: Uid) -> Self {
        EntityId { ty, uuid }
    }

    /// The store key: `type/uuid`, which also sorts records by type then uuid.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl EntityId {
    /// The id given as a type and a uuid (two command-line arguments, two URL segments).
    pub fn parse_parts(ty: &str, uuid: &str) -> Result<EntityId, IdError> {
        Ok(EntityId::new(ty.parse()?, parse_uuid(uuid)?))
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ty, self.uuid)
    }
}

impl FromStr for EntityId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (ty, uuid) = s.split_once('/').ok_or_else(|| IdError::EntityId(s.to_string()))?;
        Ok(EntityId { ty: ty.parse()?, uuid: parse_uuid(uuid)? })
    }
}

/// blake3 of a change body: the content address of one Automerge change.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BodyHash(pub [u8; 32]);

impl BodyHash {
    pub fn of(bytes: &[u8]) -> Self {
        BodyHash(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for BodyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BodyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BodyHash({})", short(&hex::encode(self.0)))
    }
}

/// For each author, the highest batch seq held contiguously (1..=seq).
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Vector(pub BTreeMap<AuthorId, u64>);

impl Vector {
    pub fn get(&self, author: &AuthorId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Raises each entry to the larger of both sides.
    pub fn merge(&mut self, other: &Vector) {
        for (author, &seq) in &other.0 {
            let held = self.0.entry(*author).or_insert(0);
            *held = (*held).max(seq);
        }
    }

    /// Batches this vector has beyond `other`, summed over authors.
    pub fn ahead_of(&self, other: &Vector) -> u64 {
        self.0.iter().map(|(a, &s)| s.saturating_sub(other.get(a))).sum()
    }

    /// The vector as a JSON object `{"NODE:INCARNATION": seq}`.
    pub fn to_json(&self) -> serde_json::Value {
        let map = self.0.iter().map(|(a, s)| (a.to_string(), serde_json::Value::from(*s)));
        serde_json::Value::Object(map.collect())
    }

    pub fn from_json(value: &serde_json::Value) -> Result<Vector, String> {
        let obj = value.as_object().ok_or("the vector is not a JSON object")?;
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            let author: AuthorId = k.parse().map_err(|e: IdError| e.to_string())?;
            let seq = v.as_u64().ok_or_else(|| format!("seq {v} of author {k} is not a number"))?;
            out.insert(author, seq);
        }
        Ok(Vector(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_and_rejects_bad_input() {
        let id = NodeId([0xab; 32]);
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        assert!("abc".parse::<NodeId>().is_err());
        assert!("AB".repeat(32).parse::<NodeId>().is_err());
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
    }

    #[test]
    fn author_round_trips_through_text_and_actor_bytes() {
        let a = AuthorId { node: NodeId([7; 32]), incarnation: Incarnation(0x0102_0304_0506_0708) };
        assert_eq!(a.to_string().parse::<AuthorId>(), Ok(a));
        assert_eq!(AuthorId::from_actor_bytes(&a.actor_bytes()), Some(a));
        assert_eq!(AuthorId::from_actor_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn entity_id_parses_and_names_bad_parts() {
        let s = "patient/5b6f2a4e-8c1d-4d0e-9f00-0123456789ab";
        assert_eq!(s.parse::<EntityId>().map(|e| e.to_string()), Ok(s.to_string()));
        let err = "pateint/5b6f2a4e-8c1d-4d0e-9f00-0123456789ab".parse::<EntityId>().unwrap_err();
        assert!(err.to_string().contains("pateint"));
        assert!("patient/xyz".parse::<EntityId>().is_err());
    }

    #[test]
    fn uids_accept_uuids_and_openmrs_ids() {
        let upper = "5B6F2A4E-8C1D-4D0E-9F00-0123456789AB";
        assert_eq!(parse_uuid(upper).map(|u| u.to_string()), Ok(upper.to_lowercase()));
        let ciel = "5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(parse_uuid(ciel).map(|u| u.to_string()), Ok(ciel.to_string()));
        let accented = "5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\u{e9}";
        for bad in ["", "abc", accented, "5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/"] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
        let id = Uid::from_random([7; 16]);
        let bytes = postcard::to_stdvec(&id).expect("encode");
        assert_eq!(postcard::from_bytes::<Uid>(&bytes).expect("decode"), id);
    }

    #[test]
    fn vector_json_round_trip_and_merge() {
        let a = AuthorId { node: NodeId([1; 32]), incarnation: Incarnation(9) };
        let b = AuthorId { node: NodeId([2; 32]), incarnation: Incarnation(3) };
        let mut v = Vector::default();
        v.0.insert(a, 4);
        let mut w = Vector::default();
        w.0.insert(a, 2);
        w.0.insert(b, 5);
        assert_eq!(Vector::from_json(&v.to_json()), Ok(v.clone()));
        assert_eq!(v.ahead_of(&w), 2);
        v.merge(&w);
        assert_eq!((v.get(&a), v.get(&b)), (4, 5));
    }
}
