//! One sync session between two nodes, as a sans-IO state machine.
//!
//! The driver (the node's session host, itself driven over QUIC or by the simulator; a test)
//! feeds it decoded messages and the results of the
//! effects it asked for, and polls it for effects: messages to send, batches to fetch from the
//! store, batches to apply, and the end of the session. Time is an argument (milliseconds on any
//! monotonic clock); the session owns no sockets, clocks, threads or storage.
//!
//! A session is one round both ways. Each side sends `Hello`, then pushes what the other lacks,
//! one `Batches` message at a time, waiting for the `Ack` (the receiver's vector after a durable
//! apply) before the next; then `Done`. The round ends when both sides are done and nothing is
//! in flight. A transfer cut at any point resumes from the receiver's durable vector in the next
//! session's `Hello`, so at most the one message in flight is sent again.
//!
//! A parent then re-sends, before its `Done`, the change bodies it withheld from this child
//! earlier whose records are inside the child's scope now (`Bodies`, one message in flight,
//! each acknowledged by `BodiesAck`). It waits for the child's `Done` first, so the batches
//! both ways are complete before the first `Bodies`.

use std::collections::VecDeque;

use serde_bytes::ByteBuf;

use super::message::{AuditEntry, ErrorCode, Message, PROTOCOL_VERSION, Role, WireBatch};
use crate::id::{BodyHash, EntityId, NodeId, Vector};

/// A session ends if nothing arrives for this long (milliseconds).
pub const SESSION_IDLE_MS: u64 = 120_000;

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides are done.
    Complete,
    /// We refused or broke off (the message was sent to the peer too).
    Refused { code: ErrorCode, reason: String },
    /// The peer refused or broke off.
    Remote { code: ErrorCode, reason: String },
    /// Nothing arrived for `SESSION_IDLE_MS`.
    TimedOut,
    /// The connection broke before the round completed.
    Lost { reason: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Complete => f.write_str("complete"),
            Outcome::Refused { code, reason } => write!(f, "refused ({code:?}): {reason}"),
            Outcome::Remote { code, reason } => write!(f, "the peer refused ({code:?}): {reason}"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Lost { reason } => write!(f, "connection lost: {reason}"),
        }
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Effect {
    /// Send this message to the peer.
    Send(Message),
    /// Load the next batches the peer lacks (seq above `after` for each author held, in author
    /// then seq order, within the message limits) and call [`Session::handle_fetched`].
    Fetch { after: Vector },
    /// Verify and durably apply these batches, then call [`Session::handle_applied`].
    Apply { batches: Vec<WireBatch> },
    /// The session is over; the driver closes the connection.
    Closed(Outcome),
    /// A child's audit entries arrived (this node is its parent): store them in the child's
    /// copy, then call [`Session::handle_audit_stored`].
    StoreAudit { entries: Vec<AuditEntry> },
    /// Parent side: load the next bodies withheld from this child that are inside its scope
    /// now (within the `Bodies` message limits) and call [`Session::handle_bodies_fetched`]
    /// (none: the re-send is over).
    FetchBodies,
    /// Parent side: the child acknowledged these bodies; forget that they were withheld from
    /// it (durably) before carrying out the next effect.
    BodiesDelivered { items: Vec<ResendBody> },
    /// Child side: bodies the parent withheld earlier arrived: store those this node holds as
    /// withheld, then call [`Session::handle_bodies_stored`].
    StoreBodies { bodies: Vec<Vec<u8>> },
    /// Parent side: the child reported bodies it lacks because a peer left them out: take
    /// them over as withheld from the child (durably, marked due for the re-send at the end
    /// of this round), then call [`Session::handle_holes_stored`].
    StoreHoles { items: Vec<(EntityId, BodyHash)> },
}

/// A body a parent re-sends, with the record its scope follows (the "anchor"; opaque to the
/// session, handed back in [`Effect::BodiesDelivered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResendBody {
    pub anchor: String,
    pub hash: BodyHash,
    /// Empty in [`Effect::BodiesDelivered`].
    pub body: Vec<u8>,
}

/// Counters a driver reports when a session ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub batches_sent: u64,
    pub batches_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Audit entries sent to the parent in this session.
    pub audit_sent: u64,
    /// The next audit entry the parent lacks, as it acknowledged (child side).
    pub audit_acked: Option<u64>,
    /// Withheld bodies re-sent to the child (parent side) / received from the parent.
    pub bodies_sent: u64,
    pub bodies_received: u64,
    /// Holes reported to the parent in this session, and how many it recorded (child side).
    pub holes_sent: u64,
    pub holes_acked: Option<u64>,
}

/// A child's report of the holes peers left in its batches, sent after its batches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HolesReport {
    None,
    Ready(Vec<(EntityId, BodyHash)>),
    /// Sent: how many, and their digest.
    AwaitingAck(u64, [u8; 32]),
    Done,
}

/// The parent's re-send of withheld bodies, after its batches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resend {
    /// Waits until this side's batches are all acked and the peer is done.
    Waiting,
    Fetching,
    /// One `Bodies` message in flight: what it carried.
    AwaitingAck(Vec<ResendBody>),
    /// Over (or never: only a parent re-sends).
    Finished,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Running,
    Closed,
}

/// One sync session (see the module docs).
pub struct Session {
    local: NodeId,
    role: Role,
    peer: NodeId,
    phase: Phase,
    /// What the peer holds, from its `Hello` and `Ack`s.
    peer_vector: Vector,
    /// What we have sent or the peer holds: the next fetch starts above it, so a batch the peer
    /// refuses is not sent again in this session.
    sent_up_to: Vector,
    fetching: bool,
    /// Batches fetched while the last `Batches` awaits its ack: sent as soon as it arrives, so
    /// reading the next message overlaps the peer's apply (one message in flight, one ready).
    prepared: Option<Vec<WireBatch>>,
    awaiting_ack: bool,
    applying: bool,
    /// A child's audit entries are being stored (parent side).
    storing_audit: bool,
    /// This side fetched everything it had to send in `Batches`.
    batches_done: bool,
    resend: Resend,
    /// Re-sent bodies are being stored (child side).
    storing_bodies: bool,
    /// The report of holes left by peers (child side).
    holes: HolesReport,
    /// A child's holes are being recorded (parent side): the digest of what arrived.
    storing_holes: Option<[u8; 32]>,
    local_done: bool,
    remote_done: bool,
    last_activity: u64,
    handshaken: bool,
    effects: VecDeque<Effect>,
    stats: SessionStats,
}

fn complementary(ours: Role, theirs: Role) -> bool {
    matches!(
        (ours, theirs),
        (Role::Parent, Role::Child) | (Role::Child, Role::Parent) | (Role::Peer, Role::Peer)
    )
}

impl Session {
    /// Starts a session of `local` (in `role` toward `peer`) holding `vector`: sends `Hello`.
    pub fn new(now: u64, local: NodeId, role: Role, peer: NodeId, vector: Vector) -> Session {
        let mut s = Session {
            local,
            role,
            peer,
            phase: Phase::AwaitHello,
            peer_vector: Vector::default(),
            sent_up_to: Vector::default(),
            fetching: false,
            prepared: None,
            awaiting_ack: false,
            applying: false,
            storing_audit: false,
            batches_done: false,
            resend: if role == Role::Parent { Resend::Waiting } else { Resend::Finished },
            storing_bodies: false,
            holes: HolesReport::None,
            storing_holes: None,
            local_done: false,
            remote_done: false,
            last_activity: now,
            handshaken: false,
            effects: VecDeque::new(),
            stats: SessionStats::default(),
        };
        s.send(Message::Hello { version: PROTOCOL_VERSION, node: local, role, vector });
        s
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn peer(&self) -> NodeId {
        self.peer
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// What the peer is known to hold.
    pub fn peer_vector(&self) -> &Vector {
        &self.peer_vector
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// The next thing the driver must do, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When the driver must call [`Session::handle_timeout`] at the latest.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.phase != Phase::Closed).then_some(self.last_activity + SESSION_IDLE_MS)
    }

    fn send(&mut self, message: Message) {
        self.stats.messages_sent += 1;
        self.effects.push_back(Effect::Send(message));
    }

    fn close(&mut self, outcome: Outcome) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.effects.push_back(Effect::Closed(outcome));
        }
    }

    fn refuse(&mut self, code: ErrorCode, reason: String) {
        if self.phase == Phase::Closed {
            return;
        }
        let mut message = reason.clone();
        message.truncate(super::message::ERROR_TEXT_MAX);
        self.send(Message::Error { code, message });
        self.close(Outcome::Refused { code, reason });
    }

    fn fetch(&mut self) {
        if !self.fetching && self.prepared.is_none() && !self.batches_done && !self.local_done {
            self.fetching = true;
            self.effects.push_back(Effect::Fetch { after: self.sent_up_to.clone() });
        }
    }

    /// Queues this (child) node's audit entries for its parent, right after `Hello`. The
    /// parent's `AuditAck` (in [`SessionStats::audit_acked`]) says where the next session
    /// starts; entries it already holds are skipped there.
    pub fn send_audit(&mut self, entries: Vec<AuditEntry>) {
        if self.role == Role::Child && !entries.is_empty() && self.phase != Phase::Closed {
            self.stats.audit_sent += entries.len() as u64;
            self.send(Message::Audit { entries });
        }
    }

    /// Queues this (child) node's report of the holes peers left in its batches, sent once its
    /// own batches are acknowledged and before its `Done`. The parent's `HolesAck` (in
    /// [`SessionStats::holes_acked`]) says how many it recorded.
    pub fn send_holes(&mut self, items: Vec<(EntityId, BodyHash)>) {
        if self.role == Role::Child && !items.is_empty() && self.phase != Phase::Closed {
            self.holes = HolesReport::Ready(items);
        }
    }

    /// The child's holes are recorded (parent side).
    pub fn handle_holes_stored(&mut self, now: u64) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(digest) = self.storing_holes.take() else { return };
        self.last_activity = self.last_activity.max(now);
        self.send(Message::HolesAck { digest });
        self.check_complete();
    }

    /// The child's audit entries are stored; `next` is the first entry the copy lacks.
    pub fn handle_audit_stored(&mut self, now: u64, next: u64) {
        if self.phase != Phase::Running || !self.storing_audit {
            return;
        }
        self.last_activity = self.last_activity.max(now);
        self.storing_audit = false;
        self.send(Message::AuditAck { next });
        self.check_complete();
    }

    fn check_complete(&mut self) {
        let idle = !self.fetching
            && !self.awaiting_ack
            && !self.applying
            && !self.storing_audit
            && !self.storing_bodies
            && self.storing_holes.is_none()
            && !matches!(self.holes, HolesReport::AwaitingAck(..));
        if self.phase == Phase::Running && self.local_done && self.remote_done && idle {
            self.close(Outcome::Complete);
        }
    }

    /// A message arrived from the peer.
    pub fn handle_message(&mut self, now: u64, message: Message) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_activity = now;
        self.stats.messages_received += 1;
        match (self.phase, message) {
            (_, Message::Error { code, message }) => {
                self.close(Outcome::Remote { code, reason: message });
            }
            (Phase::AwaitHello, Message::Hello { version, node, role, vector }) => {
                self.handle_hello(version, node, role, vector);
            }
            (Phase::Running, Message::Batches { batches }) if !self.applying => {
                self.stats.batches_received += batches.len() as u64;
                self.applying = true;
                self.effects.push_back(Effect::Apply { batches });
            }
            (Phase::Running, Message::Ack { vector }) if self.awaiting_ack => {
                self.awaiting_ack = false;
                self.peer_vector.merge(&vector);
                self.sent_up_to.merge(&vector);
                match self.prepared.take() {
                    Some(batches) => self.send_batches(batches),
                    None => self.fetch(),
                }
                self.next_local_step();
                self.check_complete();
            }
            (Phase::Running, Message::Audit { entries })
                if self.role == Role::Parent && !self.storing_audit =>
            {
                self.storing_audit = true;
                self.effects.push_back(Effect::StoreAudit { entries });
            }
            (Phase::Running, Message::AuditAck { next }) if self.role == Role::Child => {
                self.stats.audit_acked = Some(next);
            }
            (Phase::Running, Message::Holes { items })
                if self.role == Role::Parent
                    && self.storing_holes.is_none()
                    && !self.remote_done =>
            {
                self.storing_holes = Some(super::message::holes_digest(&items));
                self.effects.push_back(Effect::StoreHoles { items });
            }
            (Phase::Running, Message::HolesAck { digest })
                if matches!(self.holes, HolesReport::AwaitingAck(..)) =>
            {
                if let HolesReport::AwaitingAck(count, sent) = self.holes {
                    // A report changed on the way is not recorded as sent: reported again.
                    self.stats.holes_acked = Some(if digest == sent { count } else { 0 });
                }
                self.holes = HolesReport::Done;
                self.next_local_step();
                self.check_complete();
            }
            (Phase::Running, Message::Done) if !self.remote_done => {
                self.remote_done = true;
                self.next_local_step();
                self.check_complete();
            }
            (Phase::Running, Message::Bodies { bodies })
                if self.role == Role::Child && !self.storing_bodies && !self.applying =>
            {
                self.stats.bodies_received += bodies.len() as u64;
                self.storing_bodies = true;
                let bodies = bodies.into_iter().map(ByteBuf::into_vec).collect();
                self.effects.push_back(Effect::StoreBodies { bodies });
            }
            (Phase::Running, Message::BodiesAck { hashes })
                if matches!(self.resend, Resend::AwaitingAck(_)) =>
            {
                let Resend::AwaitingAck(sent) =
                    std::mem::replace(&mut self.resend, Resend::Fetching)
                else {
                    return;
                };
                let acked: std::collections::HashSet<BodyHash> = hashes.into_iter().collect();
                let items: Vec<ResendBody> = sent
                    .into_iter()
                    .filter(|b| acked.contains(&b.hash))
                    .map(|b| ResendBody { body: Vec::new(), ..b })
                    .collect();
                if items.is_empty() {
                    // Nothing of it acknowledged: fetching again would send the same bodies.
                    self.resend = Resend::Finished;
                    self.next_local_step();
                    self.check_complete();
                } else {
                    self.effects.push_back(Effect::BodiesDelivered { items });
                    self.effects.push_back(Effect::FetchBodies);
                }
            }
            (phase, other) => {
                let reason = format!("unexpected {} message ({phase:?})", other.kind());
                self.refuse(ErrorCode::Protocol, reason);
            }
        }
    }

    fn handle_hello(&mut self, version: u16, node: NodeId, role: Role, vector: Vector) {
        if version != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {version} is not supported (this node speaks version \
                 {PROTOCOL_VERSION}); upgrade the older node, its changes stay queued"
            );
            return self.refuse(ErrorCode::Version, reason);
        }
        if node != self.peer {
            let reason =
                format!("hello from node {node}, but the connection is from {}", self.peer);
            return self.refuse(ErrorCode::Forbidden, reason);
        }
        if !complementary(self.role, role) {
            let reason = format!(
                "role mismatch: this node is {:?} toward {node}, which says it is {role:?}",
                self.role
            );
            return self.refuse(ErrorCode::Forbidden, reason);
        }
        self.phase = Phase::Running;
        self.handshaken = true;
        self.peer_vector = vector.clone();
        self.sent_up_to = vector;
        self.fetch();
    }

    /// The batches the last `Fetch` asked for (empty: nothing more to send this round).
    pub fn handle_fetched(&mut self, now: u64, batches: Vec<WireBatch>) {
        if self.phase != Phase::Running || !self.fetching {
            return;
        }
        self.last_activity = self.last_activity.max(now);
        self.fetching = false;
        if batches.is_empty() {
            self.batches_done = true;
            self.next_local_step();
            self.check_complete();
            return;
        }
        if self.awaiting_ack {
            self.prepared = Some(batches);
        } else {
            self.send_batches(batches);
        }
    }

    /// After this side's batches: a parent re-sends withheld bodies once its batches are acked
    /// and the child is done (an old child that cannot decode `Bodies` then fails only the end
    /// of a round whose batches are complete); then `Done`. `Done` may follow a `Batches` still
    /// awaiting its ack: the peer reads in order.
    fn next_local_step(&mut self) {
        if self.phase != Phase::Running || !self.batches_done || self.local_done {
            return;
        }
        match self.resend {
            Resend::Waiting if !self.awaiting_ack && self.remote_done => {
                self.resend = Resend::Fetching;
                self.effects.push_back(Effect::FetchBodies);
            }
            Resend::Finished => {
                // A child reports the holes peers left once its own batches are acknowledged,
                // then waits for the record before it is done.
                match std::mem::replace(&mut self.holes, HolesReport::Done) {
                    HolesReport::Ready(items) if !self.awaiting_ack => {
                        self.stats.holes_sent = items.len() as u64;
                        let digest = super::message::holes_digest(&items);
                        self.holes = HolesReport::AwaitingAck(items.len() as u64, digest);
                        self.send(Message::Holes { items });
                        return;
                    }
                    waiting @ (HolesReport::Ready(_) | HolesReport::AwaitingAck(..)) => {
                        self.holes = waiting;
                        return;
                    }
                    other => self.holes = other,
                }
                self.local_done = true;
                self.send(Message::Done);
            }
            _ => {}
        }
    }

    /// The bodies the last `FetchBodies` asked for (empty: the re-send is over).
    pub fn handle_bodies_fetched(&mut self, now: u64, bodies: Vec<ResendBody>) {
        if self.phase != Phase::Running || self.resend != Resend::Fetching {
            return;
        }
        self.last_activity = self.last_activity.max(now);
        if bodies.is_empty() {
            self.resend = Resend::Finished;
            self.next_local_step();
            self.check_complete();
            return;
        }
        self.stats.bodies_sent += bodies.len() as u64;
        let mut sent = Vec::with_capacity(bodies.len());
        let mut wire = Vec::with_capacity(bodies.len());
        for b in bodies {
            sent.push(ResendBody {
                anchor: b.anchor,
                hash: BodyHash::of(&b.body),
                body: Vec::new(),
            });
            wire.push(ByteBuf::from(b.body));
        }
        self.resend = Resend::AwaitingAck(sent);
        self.send(Message::Bodies { bodies: wire });
    }

    /// The re-sent bodies are stored (child side); `hashes` are those this node is done with.
    pub fn handle_bodies_stored(&mut self, now: u64, hashes: Vec<BodyHash>) {
        if self.phase != Phase::Running || !self.storing_bodies {
            return;
        }
        self.last_activity = self.last_activity.max(now);
        self.storing_bodies = false;
        self.send(Message::BodiesAck { hashes });
        self.check_complete();
    }

    /// Sends one `Batches` message, then fetches the next while its ack is awaited.
    fn send_batches(&mut self, batches: Vec<WireBatch>) {
        for b in &batches {
            let (author, seq) = (b.author(), b.seq());
            let up = self.sent_up_to.0.entry(author).or_insert(0);
            *up = (*up).max(seq);
        }
        self.stats.batches_sent += batches.len() as u64;
        self.awaiting_ack = true;
        self.send(Message::Batches { batches });
        self.fetch();
    }

    /// The last `Apply` is durable; `vector` is what this node now holds.
    pub fn handle_applied(&mut self, now: u64, vector: Vector) {
        if self.phase != Phase::Running || !self.applying {
            return;
        }
        self.last_activity = self.last_activity.max(now);
        self.applying = false;
        self.send(Message::Ack { vector });
        self.check_complete();
    }

    /// The driver could not fetch or apply (storage failure): the session ends.
    pub fn handle_local_error(&mut self, reason: String) {
        self.refuse(ErrorCode::Internal, reason);
    }

    /// The peer sent batches that fail verification (forged, tampered, untrusted author): the
    /// session ends.
    pub fn handle_forbidden(&mut self, reason: String) {
        self.refuse(ErrorCode::Forbidden, reason);
    }

    /// The peer sent bytes that are not a message: the session ends.
    pub fn handle_malformed(&mut self, reason: String) {
        self.refuse(ErrorCode::Protocol, reason);
    }

    /// Bytes moved at `now` (part of a message): the peer is alive even if no whole message
    /// arrived yet.
    pub fn handle_activity(&mut self, now: u64) {
        self.last_activity = self.last_activity.max(now);
    }

    /// The connection or stream broke.
    pub fn handle_disconnect(&mut self, reason: String) {
        self.close(Outcome::Lost { reason });
    }

    /// Whether the peer's `Hello` was accepted.
    pub fn handshaken(&self) -> bool {
        self.handshaken
    }

    /// Time passed; ends the session if the peer has been silent too long.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.phase != Phase::Closed && now >= self.last_activity + SESSION_IDLE_MS {
            self.close(Outcome::TimedOut);
        }
    }
}

#[cfg(test)]
mod tests;
