//! Every redb table of a node's store, with its key and value layout. Table names carry a
//! version (`docs-1`), so a changed layout would get a new name instead of being read as the old.
//!
//! There are no migrations between store formats: `Store::open` reads `META["format"]` first and
//! refuses a store of any format but [`STORE_FORMAT`] with `StoreError::Format`, before it reads
//! anything else or writes anything (the file is left as it is; a missing or malformed format
//! entry is reported as corrupt). Within format 1, tables added after the first stores were
//! written may be missing: their first write creates them, and readers take a missing one as
//! empty. The one move of data is the unchained `events-1` log of early stores, copied into the
//! audit chain at its first append (`store/audit.rs`).
//!
//! Values are postcard-encoded unless stated otherwise. Author keys are the 40 actor bytes
//! (node id 32 + incarnation 8, big-endian), so an author's batches sort by seq.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::id::{BodyHash, Vector};

/// Store format version, kept in `META["format"]`.
pub const STORE_FORMAT: u64 = 1;

/// `name -> bytes`: `format` (u64 BE), `node` (32 B), `incarnation` (u64 BE), `file-identity`
/// (dev u64 BE ++ inode u64 BE of the store file when the incarnation was last confirmed).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");

/// `blake3(body) -> body`: raw Automerge change bytes, content-addressed.
pub const BODIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bodies-1");

/// `(author, seq) -> batch hash (32 B) ++ postcard(SignedBatch)`: every accepted batch, kept so
/// it can be relayed unchanged.
pub const BATCHES: TableDefinition<(&[u8; 40], u64), &[u8]> = TableDefinition::new("batches-1");

/// `author -> seq`: the vector, the highest seq held contiguously for each author.
pub const VECTOR: TableDefinition<&[u8; 40], u64> = TableDefinition::new("vector-1");

/// `(author, seq) -> postcard(PendingBatch)`: verified batches waiting for an earlier seq.
pub const PENDING: TableDefinition<(&[u8; 40], u64), &[u8]> = TableDefinition::new("pending-1");

/// `"type/uuid" -> postcard(DocRecord)`: one Automerge document per entity.
pub const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs-1");

/// `node id -> postcard(Vector)`: what each other node was last known to hold (from the
/// headers of bundles it exported), so `export --peer` sends only what it lacks.
pub const PEERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("peers-1");

/// `n -> postcard(Event)`: the unchained event log of stores written before the audit chain;
/// its entries move into [`AUDIT`] at the first append (`store/audit.rs`).
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events-1");

/// `n -> prev hash (32 B) ++ postcard(Event)`: the audit log, hash-chained (`store/audit.rs`);
/// `meta-1["audit-head"]` = last n (u64 BE) ++ its hash.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-1");

/// An entity document and its replication state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DocRecord {
    /// Automerge heads, for the digest.
    pub heads: Vec<[u8; 32]>,
    /// Bodies received for this entity that Automerge queued because a change they depend on
    /// has not arrived yet; re-applied with the next change to this entity.
    pub queued: Vec<BodyHash>,
    /// `Automerge::save()` of the document; empty while every change is queued.
    #[serde(with = "serde_bytes")]
    pub doc: Vec<u8>,
}

/// A verified batch stored until the seq before it arrives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingBatch {
    pub signed: crate::batch::SignedBatch,
    pub bodies: Vec<serde_bytes::ByteBuf>,
}

/// Peer knowledge record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerRecord {
    pub vector: Vector,
    /// Seconds since the Unix epoch when this was learnt.
    pub seen: i64,
}

/// `node id -> postcard(PeerState)`: the network state of each configured peer.
pub const PEER_STATE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("peer-state-1");

/// What `status` shows per peer. Times are seconds since the Unix epoch (0 = never).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// Last time a session with this peer got past the handshake.
    pub last_contact: i64,
    /// Last time a session completed.
    pub last_success: i64,
    /// Why the last session failed, if it did.
    pub last_error: Option<String>,
    /// Consecutive failed attempts (drives the backoff).
    pub failures: u32,
    /// When the next attempt is due.
    pub next_retry: i64,
    /// What the peer held at the end of the last session.
    pub vector: Vector,
    pub batches_sent: u64,
    pub batches_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sessions: u64,
}

/// `"type/uuid" -> postcard(Vec<BodyHash>)`: changes durably received for this entity but not yet
/// merged into its document, in arrival order. Receipt writes here; merging (after a
/// session, an import, or before a local write to the entity) empties it.
pub const DIRTY: TableDefinition<&str, &[u8]> = TableDefinition::new("dirty-1");

/// `blake3(body) -> "type/uuid"`: changes this node holds only as a manifest entry, because the
/// parent withheld their bodies (outside this node's scope). Relayed as withheld too.
pub const WITHHELD: TableDefinition<&[u8; 32], &str> = TableDefinition::new("withheld-1");

/// `blake3(body) -> "type/uuid"`: of those, the ones a node other than this node's parent left
/// out (a peer, outside this node's scope as the peer judged it, or not held by the peer; or a
/// batch that waited, whose sender is not known any more). Reported to the parent (`Holes`),
/// which re-sends what is inside this node's scope; removed once the parent recorded them, or
/// when the body arrives. Added in this version; a store without it reads it as empty.
pub const PEER_HOLES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("peer-holes-1");

/// `(child node id, anchor "type/uuid", blake3(body)) -> "type/uuid"`: bodies this node (a
/// parent) withheld from a child, by the record the scope decision followed (the anchor: the
/// patient of a patient-linked record, else the record itself) (`store/resend.rs`); also the
/// holes a child reported (`Holes`), taken over as if withheld here. An entry goes when the
/// child acknowledges the re-sent body.
pub const WITHHELD_FOR: TableDefinition<(&[u8; 32], &str, &[u8; 32]), &str> =
    TableDefinition::new("withheld-for-1");

/// `(child node id, anchor "type/uuid") -> ()`: anchors whose withheld bodies must be checked
/// against the child's scope again at its next session (a change of the anchor travelled with
/// its body, or the child's scope changed).
pub const RESEND_DUE: TableDefinition<(&[u8; 32], &str), ()> = TableDefinition::new("resend-due-1");

/// `(blake3(body), child node id, anchor "type/uuid") -> ()`: holes a child reported whose body
/// this node did not hold yet. When the body arrives (a receipt, a re-sent body), its anchors
/// become due for that child and the entries go. Added in this version; a store without it
/// reads it as empty.
pub const AWAITED: TableDefinition<(&[u8; 32], &[u8; 32], &str), ()> =
    TableDefinition::new("awaited-1");

/// `(record "type/uuid", child node id, anchor "type/uuid") -> ()`: a scope verdict on a body
/// withheld from the child (or re-checked) was taken without this record (not held or not
/// readable here yet). When a merge here changes the record, the anchor becomes due for the
/// child and the entry goes. Added in this version; a store without it reads it as empty.
pub const UNSURE: TableDefinition<(&str, &[u8; 32], &str), ()> = TableDefinition::new("unsure-1");

/// `child node id -> blake3 of its scope (32 B)`: the scope the child's entries were last
/// checked against; a different one makes every anchor of that child due.
pub const WITHHELD_SCOPE: TableDefinition<&[u8; 32], &[u8; 32]> =
    TableDefinition::new("withheld-scope-1");

/// `conflict id -> postcard(Conflict)`: every conflict this node has seen, open or closed
/// (`src/conflict.rs`).
pub const CONFLICTS: TableDefinition<&str, &[u8]> = TableDefinition::new("conflicts-1");

/// `"type/uuid" -> postcard(Vec<conflict id>)`: the conflicts of each record.
pub const CONFLICT_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("conflict-index-1");

/// `(origin node, n) -> stored entry` (link ‖ postcard(Event)): the copy of each child's audit
/// log this node keeps as its parent (`store/audit.rs`).
pub const REMOTE_AUDIT: TableDefinition<(&[u8; 32], u64), &[u8]> =
    TableDefinition::new("remote-audit-1");

/// `parent node -> n`: the first entry of this node's audit log that parent does not hold yet
/// (from its last `AuditAck`).
pub const AUDIT_SENT: TableDefinition<&[u8; 32], u64> = TableDefinition::new("audit-sent-1");

/// `failure id -> postcard(FailureRecord)`: every operation whose last attempt failed
/// (`store/failures.rs`).
pub const FAILURES: TableDefinition<&str, &[u8]> = TableDefinition::new("failures-1");
/// `target name -> 1 (version byte) ++ JSON(fhir::PushState)`: each FHIR push target's cursor,
/// last attempt and success, failures and failed resources (`store/fhir_push.rs`).
pub const FHIR_PUSH: TableDefinition<&str, &[u8]> = TableDefinition::new("fhir-push-1");

/// `(target name, "Type/id") -> 1 (version byte) ++ blake3 of the resource JSON (32 B)`: the
/// version of each resource the target acknowledged (a 2xx to the Bundle that carried it), so a
/// run after a crash or a failure never resends what was delivered.
pub const FHIR_PUSH_SENT: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("fhir-push-sent-1");

/// `(EMR name, FHIR resource type) -> postcard(EmrCursor)`: where reading that type from that
/// EMR stands (`store/emr.rs`).
pub const EMR_CURSOR: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("emr-cursor-1");

/// `"<EMR name>\0type/uuid" -> postcard(EmrBase)`: the last state of the record the EMR and
/// this node agreed on, and a write into the EMR in flight.
pub const EMR_BASE: TableDefinition<&str, &[u8]> = TableDefinition::new("emr-base-1");

/// `EMR name -> postcard(EmrState)`: the write side's position and the link's counters.
pub const EMR_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("emr-state-1");
