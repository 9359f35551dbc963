//! Batches: signed manifests of consecutive changes by one author.
//!
//! `Batch` is sealed into a `SignedBatch` by its author; a receiver turns a `SignedBatch` plus its
//! bodies into a `VerifiedBatch` with [`SignedBatch::verify`], which checks everything that does
//! not depend on the receiver's state (version, limits, trust, signature, body hashes, change
//! actors). Only a `VerifiedBatch` can be applied; sequencing rules (next seq, `prev` chain) are
//! checked by the store against what it holds. Pure: no I/O.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{AuthorId, BodyHash, EntityId, NodeId};
use crate::identity::{self, Keypair};

/// Format version of `Batch`, signed with it.
pub const BATCH_VERSION: u8 = 1;
/// Most changes in one batch.
pub const BATCH_CHANGES_MAX: usize = 4_096;
/// Change bodies one batch seals, at most, in bytes (a single larger change is sealed alone;
/// a record's change cannot be much larger than `entity::RECORD_BYTES_MAX`). With its manifest
/// and signature, a batch then fits one network frame (`protocol::message::FRAME_BYTES_MAX`,
/// 16 MiB) even when nothing compresses, so every author's batches can travel.
pub const BATCH_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest change body accepted, in bytes.
pub const CHANGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Domain separation for the signed digest, so a batch signature means nothing elsewhere.
const SIGNING_CONTEXT: &str = "sitesync batch signature v1";

/// One change listed in a batch: which entity it belongs to and the hash of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRef {
    pub entity: EntityId,
    pub body: BodyHash,
}

/// The content-address of a batch: blake3 of its encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct BatchHash(pub [u8; 32]);

impl std::fmt::Display for BatchHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The signed content of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub version: u8,
    pub author: AuthorId,
    /// 1, 2, 3 ... per author.
    pub seq: u64,
    /// Hash of the author's batch `seq - 1`; `None` for seq 1.
    pub prev: Option<BatchHash>,
    pub changes: Vec<ChangeRef>,
}

impl Batch {
    pub fn hash(&self) -> BatchHash {
        // postcard of our own struct into a Vec cannot fail.
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        BatchHash(*blake3::hash(&bytes).as_bytes())
    }

    fn signing_digest(&self) -> [u8; 32] {
        blake3::derive_key(SIGNING_CONTEXT, &self.hash().0)
    }

    pub fn sign(self, key: &Keypair) -> SignedBatch {
        let signature = Signature(key.sign(&self.signing_digest()));
        SignedBatch { batch: self, signature }
    }
}

/// An ed25519 signature (64 bytes, serialized as a byte string).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| serde::de::Error::invalid_length(v.len(), &"64 bytes"))?;
        Ok(Signature(arr))
    }
}

fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    d.deserialize_bytes(V)
}

/// A batch with its author's signature, as stored and as carried by relays unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBatch {
    pub batch: Batch,
    pub signature: Signature,
}

/// Why a batch was refused. The whole batch is refused; nothing of it is applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum BatchError {
    #[error("batch format version {0} is not supported (this node reads {BATCH_VERSION})")]
    Version(u8),
    #[error("batch {author} #{seq} lists no changes")]
    Empty { author: AuthorId, seq: u64 },
    #[error("batch {author} #{seq} lists {count} changes (limit {BATCH_CHANGES_MAX})")]
    TooManyChanges { author: AuthorId, seq: u64, count: usize },
    #[error("batch {author} has seq 0 (seqs start at 1)")]
    SeqZero { author: AuthorId },
    #[error("batch {author} #{seq}: prev must be absent exactly for seq 1")]
    PrevShape { author: AuthorId, seq: u64 },
    #[error("batch {author} #{seq}: author node {node} is not trusted")]
    Untrusted { author: AuthorId, seq: u64, node: NodeId },
    #[error("batch {author} #{seq}: signature does not verify")]
    Signature { author: AuthorId, seq: u64 },
    #[error("batch {author} #{seq}: lists {listed} changes but carries {carried} bodies")]
    BodyCount { author: AuthorId, seq: u64, listed: usize, carried: usize },
    #[error("batch {author} #{seq}: body {index} does not hash to its listed hash")]
    BodyHash { author: AuthorId, seq: u64, index: usize },
    #[error("batch {author} #{seq}: body {index} is not an Automerge change ({reason})")]
    BodyDecode { author: AuthorId, seq: u64, index: usize, reason: String },
    #[error("batch {author} #{seq}: change {index} writes the roster of another node")]
    RosterOwner { author: AuthorId, seq: u64, index: usize },
    #[error(
        "batch {author} #{seq}: body {index} is absent, and nothing allows it here (a parent \
         withholds what is outside its child's scope; a record outside its author's push scope \
         travels without its body)"
    )]
    Withheld { author: AuthorId, seq: u64, index: usize },
    #[error("batch {author} #{seq}: change {index} is by actor {actor}, not the batch author")]
    Actor { author: AuthorId, seq: u64, index: usize, actor: String },
}

/// Who a receiver accepts changes from.
pub trait Trust {
    fn trusts(&self, node: &NodeId) -> bool;
}

/// Which bodies of a batch may be absent where it arrives: withheld by the sender (a parent
/// withholds what is outside its child's scope), or held back for good (a record outside its
/// author's push scope). An absent body's manifest entry is still signed: it can delay a
/// record, never change one.
pub trait Holes {
    fn allows(&self, author: &AuthorId, change: &ChangeRef) -> bool;
}

/// `true`: every body may be absent (from a parent); `false`: none.
impl Holes for bool {
    fn allows(&self, _: &AuthorId, _: &ChangeRef) -> bool {
        *self
    }
}

/// A batch whose signature, trust, bodies and actors have been checked. Sequencing against the
/// receiver's state is the store's job.
#[derive(Debug)]
pub struct VerifiedBatch {
    pub signed: SignedBatch,
    pub hash: BatchHash,
    /// The bodies, in the order listed; an empty one is absent (withheld, or held back).
    pub bodies: Vec<Vec<u8>>,
    /// The decoded changes of the bodies carried, in the order listed.
    pub changes: Vec<automerge::Change>,
}

impl SignedBatch {
    pub fn author(&self) -> AuthorId {
        self.batch.author
    }

    pub fn seq(&self) -> u64 {
        self.batch.seq
    }

    /// Checks everything about the batch that does not depend on what the receiver holds.
    /// An empty body is an absent one, accepted only where `holes` allows it: its manifest
    /// entry is still signed.
    pub fn verify(
        self,
        bodies: Vec<Vec<u8>>,
        trust: &dyn Trust,
        holes: impl Holes,
    ) -> Result<VerifiedBatch, BatchError> {
        let b = &self.batch;
        let (author, seq) = (b.author, b.seq);
        if b.version != BATCH_VERSION {
            return Err(BatchError::Version(b.version));
        }
        if seq == 0 {
            return Err(BatchError::SeqZero { author });
        }
        if (seq == 1) != b.prev.is_none() {
            return Err(BatchError::PrevShape { author, seq });
        }
        if b.changes.is_empty() {
            return Err(BatchError::Empty { author, seq });
        }
        if b.changes.len() > BATCH_CHANGES_MAX {
            return Err(BatchError::TooManyChanges { author, seq, count: b.changes.len() });
        }
        if !trust.trusts(&author.node) {
            return Err(BatchError::Untrusted { author, seq, node: author.node });
        }
        if !identity::verify(&author.node, &b.signing_digest(), &self.signature.0) {
            return Err(BatchError::Signature { author, seq });
        }
        if bodies.len() != b.changes.len() {
            let (listed, carried) = (b.changes.len(), bodies.len());
            return Err(BatchError::BodyCount { author, seq, listed, carried });
        }
        // A roster is written only by the node it belongs to.
        let own_roster = crate::id::Uid::of_node(&author.node);
        for (index, r) in b.changes.iter().enumerate() {
            if r.entity.ty == crate::id::EntityType::Roster && r.entity.uuid != own_roster {
                return Err(BatchError::RosterOwner { author, seq, index });
            }
        }
        let actor = author.actor_bytes();
        let mut changes = Vec::with_capacity(bodies.len());
        for (index, (body, listed)) in bodies.iter().zip(&b.changes).enumerate() {
            if body.is_empty() {
                if holes.allows(&author, listed) {
                    continue;
                }
                return Err(BatchError::Withheld { author, seq, index });
            }
            if body.len() > CHANGE_BYTES_MAX || BodyHash::of(body) != listed.body {
                return Err(BatchError::BodyHash { author, seq, index });
            }
            // Automerge chunk header: magic (4), checksum (4), type (1). Only plain change
            // chunks (type 1) are accepted: a compressed one (type 2) inflates without bound
            // inside the decoder, and sitesync never writes one.
            if body.get(8) != Some(&1) {
                let reason = "not an uncompressed Automerge change chunk".to_string();
                return Err(BatchError::BodyDecode { author, seq, index, reason });
            }
            // Peer bytes: a decoder panic must become a rejection, never a crash.
            let decoded = std::panic::catch_unwind(|| automerge::Change::from_bytes(body.clone()));
            let change = match decoded {
                Ok(Ok(change)) => change,
                Ok(Err(e)) => {
                    let reason = e.to_string();
                    return Err(BatchError::BodyDecode { author, seq, index, reason });
                }
                Err(_) => {
                    let reason = "the decoder panicked".to_string();
                    return Err(BatchError::BodyDecode { author, seq, index, reason });
                }
            };
            if change.actor_id().to_bytes() != actor {
                let actor = change.actor_id().to_hex_string();
                return Err(BatchError::Actor { author, seq, index, actor });
            }
            changes.push(change);
        }
        let hash = self.batch.hash();
        Ok(VerifiedBatch { signed: self, hash, bodies, changes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::doc::EntityDoc;
    use crate::id::{EntityType, Incarnation};

    struct Everyone;
    impl Trust for Everyone {
        fn trusts(&self, _: &NodeId) -> bool {
            true
        }
    }
    struct Nobody;
    impl Trust for Nobody {
        fn trusts(&self, _: &NodeId) -> bool {
            false
        }
    }

    fn sample(key: &Keypair) -> (SignedBatch, Vec<Vec<u8>>) {
        let author = AuthorId { node: key.node_id(), incarnation: Incarnation(5) };
        let mut doc = EntityDoc::new();
        let body = serde_json::json!({"a": 1}).as_object().cloned().unwrap_or_default();
        let change = doc.write(&author, &body, &[], 1).ok().flatten().expect("a change");
        let bytes = change.raw_bytes().to_vec();
        let entity = EntityId::new(EntityType::Generic, crate::id::Uid::from_random([0; 16]));
        let batch = Batch {
            version: BATCH_VERSION,
            author,
            seq: 1,
            prev: None,
            changes: vec![ChangeRef { entity, body: BodyHash::of(&bytes) }],
        };
        (batch.sign(key), vec![bytes])
    }

    #[test]
    fn a_sealed_batch_verifies() {
        let key = Keypair::from_secret([1; 32]);
        let (signed, bodies) = sample(&key);
        let verified = signed.clone().verify(bodies, &Everyone, false).expect("verifies");
        assert_eq!(verified.hash, signed.batch.hash());
    }

    #[test]
    fn every_tampering_is_refused() {
        let key = Keypair::from_secret([1; 32]);
        let (signed, bodies) = sample(&key);
        assert!(matches!(
            signed.clone().verify(bodies.clone(), &Nobody, false),
            Err(BatchError::Untrusted { .. })
        ));

        let mut forged = signed.clone();
        forged.batch.seq = 2;
        forged.batch.prev = Some(BatchHash([0; 32]));
        assert!(matches!(
            forged.verify(bodies.clone(), &Everyone, false),
            Err(BatchError::Signature { .. })
        ));

        let mut flipped = bodies.clone();
        flipped[0][10] ^= 1;
        assert!(matches!(
            signed.clone().verify(flipped, &Everyone, false),
            Err(BatchError::BodyHash { .. })
        ));

        assert!(matches!(
            signed.clone().verify(vec![], &Everyone, false),
            Err(BatchError::BodyCount { .. })
        ));

        // Signed by another key in the author's name.
        let impostor = Keypair::from_secret([2; 32]);
        let resigned = signed.batch.clone().sign(&impostor);
        assert!(matches!(
            resigned.verify(bodies.clone(), &Everyone, false),
            Err(BatchError::Signature { .. })
        ));

        // A genuine change relabelled as another author's (the other key signs it honestly).
        let other = Keypair::from_secret([3; 32]);
        let mut batch = signed.batch.clone();
        batch.author.node = other.node_id();
        let relabelled = batch.sign(&other);
        assert!(matches!(
            relabelled.verify(bodies.clone(), &Everyone, false),
            Err(BatchError::Actor { .. })
        ));
        // A withheld body (empty) passes only where a parent may withhold; the manifest entry
        // stays signed either way.
        let withheld = vec![Vec::new(); bodies.len()];
        assert!(matches!(
            signed.clone().verify(withheld.clone(), &Everyone, false),
            Err(BatchError::Withheld { index: 0, .. })
        ));
        let vb = signed.clone().verify(withheld, &Everyone, true).expect("verifies withheld");
        assert!(vb.changes.is_empty() && vb.bodies.iter().all(Vec::is_empty));
    }

    #[test]
    fn signature_decodes_only_from_64_bytes() {
        let key = Keypair::from_secret([1; 32]);
        let (signed, _) = sample(&key);
        let bytes = postcard::to_stdvec(&signed).expect("encode");
        let back: SignedBatch = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, signed);
        assert!(postcard::from_bytes::<SignedBatch>(&bytes[..bytes.len() - 1]).is_err());
    }
}
