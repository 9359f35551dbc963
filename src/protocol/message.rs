//! Protocol messages and their frame codec.
//!
//! A frame is `len: u32 LE | flags: u8 | payload`, where `len` counts `flags` and `payload`, and
//! `payload` is `postcard(Message)`, zstd-compressed when `flags & FLAG_ZSTD`. Every limit is a
//! named constant; every decoding failure is a [`CodecError`], never a panic.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::batch::{Batch, BatchHash, ChangeRef, Signature, SignedBatch};
use crate::id::{AuthorId, BodyHash, EntityId, NodeId, Vector};

/// Wire protocol version, also named in the ALPN (`sitesync/1`).
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame on the wire (flags + payload), in bytes.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest decompressed payload, in bytes (bounds a zstd bomb).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most batches in one `Batches` message.
pub const BATCHES_PER_MESSAGE_MAX: usize = 256;
/// A sender stops adding batches to a message once it holds this many body bytes (a single
/// larger batch still travels alone).
pub const MESSAGE_BODY_BYTES_TARGET: usize = 512 * 1024;
/// Longest error message carried, in bytes.
pub const ERROR_TEXT_MAX: usize = 1024;

const FLAG_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 3;

/// A node's role toward the node it talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Parent,
    Child,
    Peer,
}

/// Why a session was refused or ended, as sent to the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The protocol versions differ; nothing was exchanged.
    Version,
    /// A message did not decode, or broke the protocol's order or limits.
    Protocol,
    /// The peer is not allowed this exchange (not authorized, wrong role).
    Forbidden,
    /// The node failed internally (storage); try again later.
    Internal,
}

/// One batch as it travels: the signed batch without its body hashes, and the change bodies.
///
/// The manifest's body hashes are signed but not sent: the receiver recomputes them from the
/// bodies (32 incompressible bytes per change saved). A body altered in transit therefore shows
/// as a signature that does not verify.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireBatch {
    version: u8,
    author: AuthorId,
    seq: u64,
    prev: Option<BatchHash>,
    entities: Vec<EntityId>,
    signature: Signature,
    bodies: Vec<ByteBuf>,
}

impl WireBatch {
    pub fn new(signed: SignedBatch, bodies: Vec<Vec<u8>>) -> Self {
        let b = signed.batch;
        WireBatch {
            version: b.version,
            author: b.author,
            seq: b.seq,
            prev: b.prev,
            entities: b.changes.iter().map(|c| c.entity).collect(),
            signature: signed.signature,
            bodies: bodies.into_iter().map(ByteBuf::from).collect(),
        }
    }

    pub fn author(&self) -> AuthorId {
        self.author
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn body_bytes(&self) -> usize {
        self.bodies.iter().map(|b| b.len()).sum()
    }

    /// The signed batch (body hashes recomputed) and its bodies, ready to verify.
    pub fn into_parts(self) -> (SignedBatch, Vec<Vec<u8>>) {
        let bodies: Vec<Vec<u8>> = self.bodies.into_iter().map(ByteBuf::into_vec).collect();
        let changes = self
            .entities
            .iter()
            .zip(&bodies)
            .map(|(entity, body)| ChangeRef { entity: *entity, body: BodyHash::of(body) })
            .collect();
        let batch = Batch {
            version: self.version,
            author: self.author,
            seq: self.seq,
            prev: self.prev,
            changes,
        };
        (SignedBatch { batch, signature: self.signature }, bodies)
    }
}

/// Everything two nodes say to each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Message {
    /// First message each way: who I am and what I hold.
    Hello { version: u16, node: NodeId, role: Role, vector: Vector },
    /// Batches the other side lacks, in author then seq order.
    Batches { batches: Vec<WireBatch> },
    /// What the sender now holds, after applying the last `Batches` it received.
    Ack { vector: Vector },
    /// The sender has nothing more to send in this round.
    Done,
    /// The sender ends the session.
    Error { code: ErrorCode, message: String },
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Batches { .. } => "batches",
            Message::Ack { .. } => "ack",
            Message::Done => "done",
            Message::Error { .. } => "error",
        }
    }
}

/// Why bytes from a peer are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    FrameTooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame flags {0:#04x}")]
    Flags(u8),
    #[error("compressed payload does not decompress within {PAYLOAD_BYTES_MAX} bytes: {0}")]
    Decompress(String),
    #[error("payload is not a message: {0}")]
    Decode(String),
    #[error("message breaks a limit: {0}")]
    Limit(String),
}

/// Encodes a message as one frame (length prefix included). Batches are compressed.
pub fn encode(message: &Message) -> Vec<u8> {
    let payload = postcard::to_stdvec(message).unwrap_or_default();
    let (flags, payload) = match message {
        Message::Batches { .. } => match zstd::bulk::compress(&payload, ZSTD_LEVEL) {
            Ok(z) if z.len() < payload.len() => (FLAG_ZSTD, z),
            _ => (0, payload),
        },
        _ => (0, payload),
    };
    let len = (payload.len() + 1) as u32;
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&payload);
    out
}

/// Reads the length prefix of a frame: how many bytes follow it.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > FRAME_BYTES_MAX {
        return Err(CodecError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Decodes the bytes after a length prefix (`flags | payload`) into a message and checks its
/// limits.
pub fn decode(frame: &[u8]) -> Result<Message, CodecError> {
    let (&flags, payload) = frame.split_first().ok_or(CodecError::Empty)?;
    if frame.len() > FRAME_BYTES_MAX {
        return Err(CodecError::FrameTooLarge(frame.len()));
    }
    let inflated;
    let payload = match flags {
        0 => payload,
        FLAG_ZSTD => {
            inflated = zstd::bulk::decompress(payload, PAYLOAD_BYTES_MAX)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            &inflated[..]
        }
        other => return Err(CodecError::Flags(other)),
    };
    let message: Message =
        postcard::from_bytes(payload).map_err(|e| CodecError::Decode(e.to_string()))?;
    check_limits(&message)?;
    Ok(message)
}

fn check_limits(message: &Message) -> Result<(), CodecError> {
    match message {
        Message::Batches { batches } if batches.is_empty() => {
            Err(CodecError::Limit("a batches message holds no batch".into()))
        }
        Message::Batches { batches } if batches.len() > BATCHES_PER_MESSAGE_MAX => {
            Err(CodecError::Limit(format!(
                "{} batches in one message (limit {BATCHES_PER_MESSAGE_MAX})",
                batches.len()
            )))
        }
        Message::Batches { batches }
            if batches.iter().any(|b| b.entities.len() != b.bodies.len()) =>
        {
            Err(CodecError::Limit(
                "a batch carries a different number of bodies and changes".into(),
            ))
        }
        Message::Error { message, .. } if message.len() > ERROR_TEXT_MAX => {
            Err(CodecError::Limit(format!("error text of {} bytes", message.len())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(m: &Message) -> Message {
        let bytes = encode(m);
        let len = frame_len(bytes[..4].try_into().expect("4 bytes")).expect("len");
        assert_eq!(len, bytes.len() - 4);
        decode(&bytes[4..]).expect("decodes")
    }

    #[test]
    fn messages_round_trip() {
        let hello = Message::Hello {
            version: 1,
            node: NodeId([5; 32]),
            role: Role::Child,
            vector: Vector::default(),
        };
        assert!(matches!(round_trip(&hello), Message::Hello { version: 1, role: Role::Child, .. }));
        assert!(matches!(round_trip(&Message::Done), Message::Done));
        let err = Message::Error { code: ErrorCode::Version, message: "x".into() };
        assert!(matches!(round_trip(&err), Message::Error { code: ErrorCode::Version, .. }));
    }

    #[test]
    fn a_wire_batch_carries_no_body_hashes_but_still_verifies() {
        use crate::batch::{BATCH_VERSION, BatchError, Trust};
        use crate::entity::doc::EntityDoc;
        use crate::id::{EntityType, Incarnation, Uid};
        use crate::identity::Keypair;
        struct All;
        impl Trust for All {
            fn trusts(&self, _: &NodeId) -> bool {
                true
            }
        }
        let key = Keypair::from_secret([4; 32]);
        let author = AuthorId { node: key.node_id(), incarnation: Incarnation(1) };
        let body = serde_json::json!({"a": 1}).as_object().cloned().unwrap_or_default();
        let change = EntityDoc::new().write(&author, &body, &[], 1).ok().flatten().expect("change");
        let bytes = change.raw_bytes().to_vec();
        let entity = EntityId::new(EntityType::Generic, Uid::from_random([2; 16]));
        let changes = vec![ChangeRef { entity, body: BodyHash::of(&bytes) }];
        let batch = Batch { version: BATCH_VERSION, author, seq: 1, prev: None, changes };
        let wire = WireBatch::new(batch.clone().sign(&key), vec![bytes.clone()]);
        let m = round_trip(&Message::Batches { batches: vec![wire] });
        let Message::Batches { batches } = m else { panic!("not batches") };
        let (signed, bodies) = batches.into_iter().next().expect("one").into_parts();
        assert_eq!(signed.batch, batch, "the manifest is rebuilt exactly");
        assert!(signed.clone().verify(bodies.clone(), &All).is_ok());
        let mut tampered = bodies;
        tampered[0][12] ^= 1;
        let wire = WireBatch::new(signed, tampered);
        let (signed, bodies) = wire.into_parts();
        assert!(matches!(signed.verify(bodies, &All), Err(BatchError::Signature { .. })));
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(frame_len([0, 0, 0, 0]), Err(CodecError::Empty));
        assert!(matches!(frame_len(u32::MAX.to_le_bytes()), Err(CodecError::FrameTooLarge(_))));
        assert!(matches!(decode(&[7, 1, 2]), Err(CodecError::Flags(7))));
        assert!(matches!(decode(&[FLAG_ZSTD, 1, 2, 3]), Err(CodecError::Decompress(_))));
        let empty = postcard::to_stdvec(&Message::Batches { batches: vec![] }).expect("encode");
        let mut frame = vec![0];
        frame.extend(empty);
        assert!(matches!(decode(&frame), Err(CodecError::Limit(_))));
    }

    #[test]
    fn a_zstd_bomb_is_refused() {
        let huge = vec![0u8; PAYLOAD_BYTES_MAX + 1];
        let mut frame = vec![FLAG_ZSTD];
        frame.extend(zstd::bulk::compress(&huge, 3).expect("compress"));
        assert!(frame.len() < FRAME_BYTES_MAX);
        assert!(matches!(decode(&frame), Err(CodecError::Decompress(_))));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn flipped_frames_never_panic(flip in 0usize..200, bit in 0u8..8) {
            let hello = Message::Hello { version: 1, node: NodeId([5; 32]), role: Role::Peer, vector: Vector::default() };
            let mut bytes = encode(&hello);
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(len) = frame_len(bytes[..4].try_into().expect("4")) {
                let end = (4 + len).min(bytes.len());
                let _ = decode(&bytes[4..end]);
            }
        }
    }
}
