//! Protocol messages and their frame codec.
//!
//! A frame is `len: u32 LE | flags: u8 | payload`, where `len` counts `flags` and `payload`, and
//! `payload` is `postcard(Message)`, zstd-compressed when `flags & FLAG_ZSTD`. Every limit is a
//! named constant; every decoding failure is a [`CodecError`], never a panic.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::batch::{Batch, BatchHash, ChangeRef, Signature, SignedBatch};
use crate::id::{AuthorId, BodyHash, EntityId, NodeId, Vector};

use super::pack::{self, PackState, UnpackState};

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
/// Most audit entries in one `Audit` message (a child sends at most this many per session).
pub const AUDIT_ENTRIES_PER_MESSAGE_MAX: usize = 2_000;
/// Largest audit entry carried, in bytes.
pub const AUDIT_ENTRY_BYTES_MAX: usize = 64 * 1024;
/// Most items in one `Holes` message (a child reports at most this many per session).
pub const HOLES_PER_MESSAGE_MAX: usize = 4_096;
/// Most change bodies in one `Bodies` message (and hashes in one `BodiesAck`).
pub const BODIES_PER_MESSAGE_MAX: usize = 4_096;
/// A sender stops adding bodies to a `Bodies` message once it holds this many bytes (a single
/// larger body still travels alone).
pub const BODIES_BYTES_TARGET: usize = 512 * 1024;

const FLAG_ZSTD: u8 = 1;
/// The payload continues the session's zstd stream (flushed at the end of each frame).
const FLAG_ZSTD_STREAM: u8 = 2;
const ZSTD_LEVEL: i32 = 7;
/// Window of a session's compression stream (2^23 = 8 MiB): matches reach back across about a
/// dozen earlier messages. The receiver refuses frames that need more.
const ZSTD_WINDOW_LOG: u32 = 23;

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
/// as a signature that does not verify. On the wire the bodies are packed against the session's
/// tables ([`super::pack`]); this is the unpacked form.
#[derive(Clone, Debug)]
pub struct WireBatch {
    version: u8,
    author: AuthorId,
    seq: u64,
    prev: Option<BatchHash>,
    entities: Vec<EntityId>,
    signature: Signature,
    /// Change bodies; an empty one is withheld (outside the receiver's scope).
    bodies: Vec<Vec<u8>>,
    /// The hashes of the withheld bodies, in order.
    withheld: Vec<BodyHash>,
}

/// A batch in a frame: the manifest fields, and its changes packed.
#[derive(Serialize, Deserialize)]
struct PackedBatch {
    version: u8,
    author: AuthorId,
    seq: u64,
    prev: Option<BatchHash>,
    signature: Signature,
    count: u32,
    changes: ByteBuf,
}

impl WireBatch {
    /// A batch and its bodies; an empty body is sent withheld (its hash from the manifest).
    pub fn new(signed: SignedBatch, bodies: Vec<Vec<u8>>) -> Self {
        let b = signed.batch;
        let withheld = b
            .changes
            .iter()
            .zip(&bodies)
            .filter(|(_, body)| body.is_empty())
            .map(|(c, _)| c.body)
            .collect();
        WireBatch {
            version: b.version,
            author: b.author,
            seq: b.seq,
            prev: b.prev,
            entities: b.changes.iter().map(|c| c.entity).collect(),
            signature: signed.signature,
            bodies,
            withheld,
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

    /// How many bodies are withheld.
    pub fn withheld(&self) -> usize {
        self.withheld.len()
    }

    /// How many changes the batch lists.
    pub fn entities_len(&self) -> usize {
        self.entities.len()
    }

    /// The signed batch (body hashes recomputed, or as sent for withheld bodies) and its
    /// bodies (empty when withheld), ready to verify.
    pub fn into_parts(self) -> (SignedBatch, Vec<Vec<u8>>) {
        let mut withheld = self.withheld.iter();
        let changes = self
            .entities
            .iter()
            .zip(&self.bodies)
            .map(|(entity, body)| {
                let body = if body.is_empty() {
                    // A missing hash cannot verify: the signature check refuses the batch.
                    withheld.next().copied().unwrap_or(BodyHash([0; 32]))
                } else {
                    BodyHash::of(body)
                };
                ChangeRef { entity: *entity, body }
            })
            .collect();
        let batch = Batch {
            version: self.version,
            author: self.author,
            seq: self.seq,
            prev: self.prev,
            changes,
        };
        (SignedBatch { batch, signature: self.signature }, self.bodies)
    }

    fn pack(&self, state: &mut PackState) -> PackedBatch {
        let actor = self.author.actor_bytes();
        let changes = pack::pack_batch(state, &actor, &self.entities, &self.bodies, &self.withheld);
        PackedBatch {
            version: self.version,
            author: self.author,
            seq: self.seq,
            prev: self.prev,
            signature: self.signature,
            count: self.entities.len() as u32,
            changes: ByteBuf::from(changes),
        }
    }

    fn unpack(p: PackedBatch, state: &mut UnpackState) -> Result<WireBatch, String> {
        let actor = p.author.actor_bytes();
        let (entities, bodies, withheld) =
            pack::unpack_batch(state, &actor, p.count as usize, &p.changes)
                .map_err(|e| format!("batch {} #{}: {e}", p.author, p.seq))?;
        Ok(WireBatch {
            version: p.version,
            author: p.author,
            seq: p.seq,
            prev: p.prev,
            entities,
            signature: p.signature,
            bodies,
            withheld,
        })
    }
}

/// Everything two nodes say to each other. `B` is how a batch is held: [`WireBatch`] in
/// memory ([`Message`]), packed in a frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MessageOf<B> {
    /// First message each way: who I am and what I hold.
    Hello { version: u16, node: NodeId, role: Role, vector: Vector },
    /// Batches the other side lacks, in author then seq order.
    Batches { batches: Vec<B> },
    /// What the sender now holds, after applying the last `Batches` it received.
    Ack { vector: Vector },
    /// The sender has nothing more to send in this round.
    Done,
    /// The sender ends the session.
    Error { code: ErrorCode, message: String },
    /// A child's audit log entries, for its parent's copy (sent right after `Hello`).
    Audit { entries: Vec<AuditEntry> },
    /// The parent stored the child's audit entries: the next entry it lacks.
    AuditAck { next: u64 },
    /// Parent -> child: change bodies it withheld earlier whose records are now inside the
    /// child's scope. Each body travels without its hash: the child recomputes it and accepts
    /// the body only if the hash is one it holds as withheld (from a signed manifest).
    Bodies { bodies: Vec<ByteBuf> },
    /// Child -> parent: the hashes of the last `Bodies` message the child is done with (stored
    /// durably, already held, or refused as never withheld there); not sent again.
    BodiesAck { hashes: Vec<BodyHash> },
    /// Child -> parent, after its batches: bodies the child holds only as manifest entries
    /// because a peer sent their batches without them (outside the child's scope as the peer
    /// judged it, or not held by the peer). The parent takes them over as withheld by itself:
    /// it re-sends those inside the child's scope, now or when they enter it.
    Holes { items: Vec<(EntityId, BodyHash)> },
    /// Parent -> child: the last `Holes` is recorded; `digest` is [`holes_digest`] of the items
    /// as the parent read them, so a child whose report was changed on the way keeps its holes
    /// and reports them again.
    HolesAck { digest: [u8; 32] },
}

/// The digest a `HolesAck` carries: blake3 over the reported items in order.
pub fn holes_digest(items: &[(EntityId, BodyHash)]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("sitesync holes report v1");
    for (entity, hash) in items {
        h.update(entity.key().as_bytes());
        h.update(&[0]);
        h.update(&hash.0);
    }
    *h.finalize().as_bytes()
}

/// One entry of a node's audit log as it travels: its number and its stored bytes (link to
/// the previous entry ‖ postcard(event)); the receiver rechecks the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub n: u64,
    pub stored: ByteBuf,
}

/// A protocol message, batches unpacked.
pub type Message = MessageOf<WireBatch>;

impl<B> MessageOf<B> {
    pub fn kind(&self) -> &'static str {
        match self {
            MessageOf::Hello { .. } => "hello",
            MessageOf::Batches { .. } => "batches",
            MessageOf::Ack { .. } => "ack",
            MessageOf::Done => "done",
            MessageOf::Error { .. } => "error",
            MessageOf::Audit { .. } => "audit",
            MessageOf::AuditAck { .. } => "audit-ack",
            MessageOf::Bodies { .. } => "bodies",
            MessageOf::BodiesAck { .. } => "bodies-ack",
            MessageOf::Holes { .. } => "holes",
            MessageOf::HolesAck { .. } => "holes-ack",
        }
    }

    fn map_batches<C, E>(self, f: impl FnMut(B) -> Result<C, E>) -> Result<MessageOf<C>, E> {
        Ok(match self {
            MessageOf::Hello { version, node, role, vector } => {
                MessageOf::Hello { version, node, role, vector }
            }
            MessageOf::Batches { batches } => MessageOf::Batches {
                batches: batches.into_iter().map(f).collect::<Result<_, E>>()?,
            },
            MessageOf::Ack { vector } => MessageOf::Ack { vector },
            MessageOf::Done => MessageOf::Done,
            MessageOf::Error { code, message } => MessageOf::Error { code, message },
            MessageOf::Audit { entries } => MessageOf::Audit { entries },
            MessageOf::AuditAck { next } => MessageOf::AuditAck { next },
            MessageOf::Bodies { bodies } => MessageOf::Bodies { bodies },
            MessageOf::BodiesAck { hashes } => MessageOf::BodiesAck { hashes },
            MessageOf::Holes { items } => MessageOf::Holes { items },
            MessageOf::HolesAck { digest } => MessageOf::HolesAck { digest },
        })
    }
}

/// The sending half of a session's codec: frames in the order they are sent.
#[derive(Default)]
pub struct Encoder {
    pack: PackState,
    zstd: Option<zstd::stream::raw::Encoder<'static>>,
}

impl Encoder {
    /// Encodes a message as one frame (length prefix included). Batches are packed against
    /// this session's tables, then compressed.
    pub fn encode(&mut self, message: &Message) -> Vec<u8> {
        let zstd = matches!(message, MessageOf::Batches { .. });
        let packed: MessageOf<PackedBatch> = match message {
            MessageOf::Batches { batches } => MessageOf::Batches {
                batches: batches.iter().map(|b| b.pack(&mut self.pack)).collect(),
            },
            MessageOf::Hello { version, node, role, vector } => MessageOf::Hello {
                version: *version,
                node: *node,
                role: *role,
                vector: vector.clone(),
            },
            MessageOf::Ack { vector } => MessageOf::Ack { vector: vector.clone() },
            MessageOf::Done => MessageOf::Done,
            MessageOf::Error { code, message } => {
                MessageOf::Error { code: *code, message: message.clone() }
            }
            MessageOf::Audit { entries } => MessageOf::Audit { entries: entries.clone() },
            MessageOf::AuditAck { next } => MessageOf::AuditAck { next: *next },
            MessageOf::Bodies { bodies } => MessageOf::Bodies { bodies: bodies.clone() },
            MessageOf::BodiesAck { hashes } => MessageOf::BodiesAck { hashes: hashes.clone() },
            MessageOf::Holes { items } => MessageOf::Holes { items: items.clone() },
            MessageOf::HolesAck { digest } => MessageOf::HolesAck { digest: *digest },
        };
        let payload = postcard::to_stdvec(&packed).unwrap_or_default();
        // Bodies go in a self-contained zstd frame, not the session's stream: they are encoded
        // when sent, while `Batches` frames are encoded ahead, when fetched.
        let single = matches!(message, MessageOf::Bodies { .. });
        let (flags, payload) = if single {
            match zstd::bulk::compress(&payload, ZSTD_LEVEL) {
                Ok(z) => (FLAG_ZSTD, z),
                Err(_) => (0, payload),
            }
        } else if zstd {
            match self.compress(&payload) {
                Ok(z) => (FLAG_ZSTD_STREAM, z),
                // The stream is unusable: later frames go uncompressed (flags 0), which the
                // receiver reads without its stream.
                Err(_) => {
                    self.zstd = None;
                    (0, payload)
                }
            }
        } else {
            (0, payload)
        };
        let len = (payload.len() + 1) as u32;
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.extend_from_slice(&len.to_le_bytes());
        out.push(flags);
        out.extend_from_slice(&payload);
        out
    }
}

impl Encoder {
    /// Compresses `payload` as the next piece of the session's zstd stream, flushed so the
    /// receiver can decode it whole.
    fn compress(&mut self, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        use zstd::zstd_safe::CParameter;
        if self.zstd.is_none() {
            let mut z = zstd::stream::raw::Encoder::new(ZSTD_LEVEL)?;
            z.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
            self.zstd = Some(z);
        }
        let z = self.zstd.as_mut().ok_or_else(|| std::io::Error::other("no stream"))?;
        let mut out: Vec<u8> =
            Vec::with_capacity(zstd::zstd_safe::compress_bound(payload.len()) + 64);
        let mut input = InBuffer::around(payload);
        loop {
            if out.len() == out.capacity() {
                out.reserve(64 * 1024);
            }
            let pos = out.len();
            let mut output = OutBuffer::around_pos(&mut out, pos);
            if input.pos() < payload.len() {
                z.run(&mut input, &mut output)?;
            } else if z.flush(&mut output)? == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// The receiving half of a session's codec: frames must be decoded in the order they arrive.
#[derive(Default)]
pub struct Decoder {
    unpack: UnpackState,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
}

impl Decoder {
    /// Decodes the bytes after a length prefix (`flags | payload`) into a message and checks
    /// its limits.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Message, CodecError> {
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
            FLAG_ZSTD_STREAM => {
                inflated = self.decompress(payload)?;
                &inflated[..]
            }
            other => return Err(CodecError::Flags(other)),
        };
        let packed: MessageOf<PackedBatch> =
            postcard::from_bytes(payload).map_err(|e| CodecError::Decode(e.to_string()))?;
        check_limits(&packed)?;
        self.unpack.begin_message();
        packed.map_batches(|b| WireBatch::unpack(b, &mut self.unpack)).map_err(CodecError::Limit)
    }
}

impl Decoder {
    /// Decompresses the next piece of the session's zstd stream, up to `PAYLOAD_BYTES_MAX`.
    fn decompress(&mut self, piece: &[u8]) -> Result<Vec<u8>, CodecError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        use zstd::zstd_safe::DParameter;
        let fail = |e: std::io::Error| CodecError::Decompress(e.to_string());
        if self.zstd.is_none() {
            let mut z = zstd::stream::raw::Decoder::new().map_err(fail)?;
            z.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG)).map_err(fail)?;
            self.zstd = Some(z);
        }
        let z = self.zstd.as_mut().ok_or(CodecError::Decompress("no stream".into()))?;
        let mut out: Vec<u8> = Vec::with_capacity((piece.len() * 4).min(PAYLOAD_BYTES_MAX));
        let mut input = InBuffer::around(piece);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= PAYLOAD_BYTES_MAX {
                    return Err(CodecError::Decompress(format!(
                        "more than {PAYLOAD_BYTES_MAX} bytes"
                    )));
                }
                out.reserve((out.len().max(64 * 1024)).min(PAYLOAD_BYTES_MAX - out.len()));
            }
            let pos = out.len();
            let (written, room) = {
                let mut output = OutBuffer::around_pos(&mut out, pos);
                z.run(&mut input, &mut output).map_err(fail)?;
                (output.pos(), output.capacity())
            };
            // Done once every input byte is consumed and the decoder had room to spare.
            if input.pos() == piece.len() && written < room {
                return Ok(out);
            }
        }
    }
}

/// Encodes one message with fresh tables: for a frame that is the only one its receiver
/// decodes with its own fresh [`Decoder`] (tests, one-shot tools). Sessions use [`Encoder`].
pub fn encode(message: &Message) -> Vec<u8> {
    Encoder::default().encode(message)
}

/// Decodes one frame with fresh tables (see [`encode`]).
pub fn decode(frame: &[u8]) -> Result<Message, CodecError> {
    Decoder::default().decode(frame)
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

fn check_limits(message: &MessageOf<PackedBatch>) -> Result<(), CodecError> {
    match message {
        MessageOf::Batches { batches } if batches.is_empty() => {
            Err(CodecError::Limit("a batches message holds no batch".into()))
        }
        MessageOf::Batches { batches } if batches.len() > BATCHES_PER_MESSAGE_MAX => {
            Err(CodecError::Limit(format!(
                "{} batches in one message (limit {BATCHES_PER_MESSAGE_MAX})",
                batches.len()
            )))
        }
        MessageOf::Audit { entries } if entries.len() > AUDIT_ENTRIES_PER_MESSAGE_MAX => {
            Err(CodecError::Limit(format!(
                "{} audit entries in one message (limit {AUDIT_ENTRIES_PER_MESSAGE_MAX})",
                entries.len()
            )))
        }
        MessageOf::Audit { entries }
            if entries.iter().any(|e| e.stored.len() > AUDIT_ENTRY_BYTES_MAX) =>
        {
            Err(CodecError::Limit(format!("an audit entry over {AUDIT_ENTRY_BYTES_MAX} bytes")))
        }
        MessageOf::Bodies { bodies } if bodies.is_empty() => {
            Err(CodecError::Limit("a bodies message holds no body".into()))
        }
        MessageOf::Bodies { bodies } if bodies.len() > BODIES_PER_MESSAGE_MAX => {
            Err(CodecError::Limit(format!(
                "{} bodies in one message (limit {BODIES_PER_MESSAGE_MAX})",
                bodies.len()
            )))
        }
        MessageOf::Bodies { bodies }
            if bodies.iter().any(|b| b.is_empty() || b.len() > crate::batch::CHANGE_BYTES_MAX) =>
        {
            Err(CodecError::Limit("a body that is empty or over the change size limit".into()))
        }
        MessageOf::Holes { items } if items.is_empty() || items.len() > HOLES_PER_MESSAGE_MAX => {
            Err(CodecError::Limit(format!(
                "{} items in one holes message (1 to {HOLES_PER_MESSAGE_MAX})",
                items.len()
            )))
        }
        MessageOf::BodiesAck { hashes } if hashes.len() > BODIES_PER_MESSAGE_MAX => {
            Err(CodecError::Limit(format!(
                "{} hashes in one bodies ack (limit {BODIES_PER_MESSAGE_MAX})",
                hashes.len()
            )))
        }
        MessageOf::Error { message, .. } if message.len() > ERROR_TEXT_MAX => {
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
        let bodies = Message::Bodies { bodies: vec![ByteBuf::from(vec![7u8; 300])] };
        let Message::Bodies { bodies } = round_trip(&bodies) else { panic!("not bodies") };
        assert_eq!(bodies, vec![ByteBuf::from(vec![7u8; 300])]);
        let ack = Message::BodiesAck { hashes: vec![BodyHash([3; 32])] };
        let Message::BodiesAck { hashes } = round_trip(&ack) else { panic!("not an ack") };
        assert_eq!(hashes, vec![BodyHash([3; 32])]);
    }

    #[test]
    fn bodies_limits_are_enforced() {
        let frame = |m: &MessageOf<PackedBatch>| {
            let mut f = vec![0];
            f.extend(postcard::to_stdvec(m).expect("encode"));
            f
        };
        let none = MessageOf::<PackedBatch>::Bodies { bodies: vec![] };
        assert!(matches!(decode(&frame(&none)), Err(CodecError::Limit(_))));
        let empty = MessageOf::<PackedBatch>::Bodies { bodies: vec![ByteBuf::new()] };
        assert!(matches!(decode(&frame(&empty)), Err(CodecError::Limit(_))));
        let many = MessageOf::<PackedBatch>::BodiesAck {
            hashes: vec![BodyHash([1; 32]); BODIES_PER_MESSAGE_MAX + 1],
        };
        assert!(matches!(decode(&frame(&many)), Err(CodecError::Limit(_))));
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
        assert!(signed.clone().verify(bodies.clone(), &All, false).is_ok());
        let mut tampered = bodies;
        tampered[0][12] ^= 1;
        let wire = WireBatch::new(signed, tampered);
        let (signed, bodies) = wire.into_parts();
        assert!(matches!(signed.verify(bodies, &All, false), Err(BatchError::Signature { .. })));
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(frame_len([0, 0, 0, 0]), Err(CodecError::Empty));
        assert!(matches!(frame_len(u32::MAX.to_le_bytes()), Err(CodecError::FrameTooLarge(_))));
        assert!(matches!(decode(&[7, 1, 2]), Err(CodecError::Flags(7))));
        assert!(matches!(decode(&[FLAG_ZSTD, 1, 2, 3]), Err(CodecError::Decompress(_))));
        let empty = postcard::to_stdvec(&MessageOf::<PackedBatch>::Batches { batches: vec![] })
            .expect("encode");
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
        fn bodies_round_trip_and_flipped_bodies_frames_never_panic(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..8),
            flip in 0usize..4096,
            bit in 0u8..8,
        ) {
            let bodies: Vec<ByteBuf> = bodies.into_iter().map(ByteBuf::from).collect();
            let m = Message::Bodies { bodies: bodies.clone() };
            let Message::Bodies { bodies: back } = round_trip(&m) else { panic!("not bodies") };
            prop_assert_eq!(back, bodies);
            let hashes: Vec<BodyHash> = (0..3u8).map(|i| BodyHash([i; 32])).collect();
            for m in [m, Message::BodiesAck { hashes }] {
                let mut bytes = encode(&m);
                let i = flip % bytes.len();
                bytes[i] ^= 1 << bit;
                if let Ok(len) = frame_len(bytes[..4].try_into().expect("4")) {
                    let end = (4 + len).min(bytes.len());
                    let _ = decode(&bytes[4..end]);
                }
            }
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
