//! One end of a sync session on this node: the sans-IO [`Session`] and everything the node does
//! for it. `serve`'s QUIC driver and the simulator both drive a [`SessionHost`]; they differ
//! only in clock, network and randomness.
//!
//! The host turns the session's effects into [`Action`]s: frames to write, and [`Job`]s of
//! store work (reading and encoding the next `Batches` message, durable receipt, the child's
//! audit entries, the re-send of withheld bodies, merges during and after the session, and the
//! session's record: peer state, audit cursor, audit entry). A driver writes the frames, runs
//! each job where blocking work belongs ([`Job::run`] on tokio's blocking pool, or as a later
//! simulated event) and hands the result back with [`SessionHost::complete`]. The host keeps
//! the order `serve` relies on: while a receipt, an audit store or a body re-send step runs, no
//! further effect is handed out, so the next effect sees what that one made durable.
//!
//! The host owns no sockets, threads or clocks: time is an argument, in milliseconds on the
//! driver's monotonic clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::receive::Receiver;
use super::{Node, NodeError};
use crate::config::Scope;
use crate::id::{BodyHash, EntityId, NodeId, Vector};
use crate::protocol::message::{self, AuditEntry, Encoder, Message, Role, WireBatch};
use crate::protocol::session::{Effect, Outcome, ResendBody, Session, SessionStats};
use crate::store::MergeReport;
use crate::store::receive::ApplyReport;
use crate::store::resend::BodiesReport;
use crate::store::tables::PeerState;

/// Frames handed to the writer and not yet written beyond which the peer is taken as not
/// reading (the protocol keeps this small: one `Batches` message in flight and a few short
/// messages).
pub const WRITE_BACKLOG_MAX: usize = 64;
/// A session that has run this long since its last merge merges what it received so far, in
/// the background while the transfer goes on: records arriving over a slow link show at the
/// receiver during a long transfer, not only at its end.
pub const MERGE_DURING_SESSION_MS: u64 = 30_000;
/// Environment variable that overrides `MERGE_DURING_SESSION_MS` (0: after every message).
pub const MERGE_EVERY_ENV: &str = "SITESYNC_MERGE_EVERY_MS";
/// Documents merged by one merge during a session (one short transaction: the session's
/// receipts wait while it runs).
pub const MERGE_DURING_SESSION_DOCS: usize = 2_000;

/// What one session did, as `sync` and the logs report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// The peer's node id (hex).
    pub peer: String,
    pub outcome: String,
    pub complete: bool,
    pub batches_sent: u64,
    pub batches_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub millis: u64,
}

impl SessionReport {
    /// A session that never started (the dial failed): `why` is the outcome.
    pub fn failed(peer: NodeId, why: String, millis: u64) -> SessionReport {
        SessionReport {
            peer: peer.to_string(),
            outcome: why,
            complete: false,
            batches_sent: 0,
            batches_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            millis,
        }
    }
}

/// Folds one ended session into the peer's state. `vector` is what the peer said it holds, when
/// the session got past the handshake: it replaces the old one, never merges with it (a peer
/// restored from a backup holds less than before).
pub fn record_session(s: &mut PeerState, time: i64, vector: Option<Vector>, rep: &SessionReport) {
    if let Some(v) = vector {
        s.last_contact = time;
        s.vector = v;
    }
    s.sessions += 1;
    s.batches_sent += rep.batches_sent;
    s.batches_received += rep.batches_received;
    s.bytes_sent += rep.bytes_sent;
    s.bytes_received += rep.bytes_received;
    if rep.complete {
        s.last_success = time;
        s.last_error = None;
        s.failures = 0;
    } else {
        s.last_error = Some(rep.outcome.clone());
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Write this frame to the peer; report it with [`SessionHost::written`] once it is on the
    /// wire. `batches` marks a `Batches` message.
    Transmit { frame: Vec<u8>, batches: bool },
    /// Run this store work ([`Job::run`]) and hand the result to [`SessionHost::complete`].
    Run(Job),
    /// The session is over: stop reading, let the writer drain (then report what it wrote),
    /// and keep polling: the merge and the record of the session follow as jobs.
    Closed(Outcome),
    /// Everything is done, the session is recorded.
    Ended(SessionReport),
}

/// Store work for a session, run by the driver off its event loop.
#[derive(Debug)]
pub struct Job {
    pub peer: NodeId,
    pub kind: JobKind,
}

/// The kinds of [`Job`].
pub enum JobKind {
    /// Read the next batches the peer lacks and encode them as one `Batches` message.
    Fetch { after: Vector, order: Arc<Vec<NodeId>>, to: Receiver, encoder: Arc<Mutex<Encoder>> },
    /// Verify and durably receive batches.
    Apply { batches: Vec<WireBatch> },
    /// Store a child's audit entries in its copy (parent side).
    StoreAudit { entries: Vec<AuditEntry> },
    /// Read the next withheld bodies inside the child's scope (parent side).
    FetchBodies { scope: Option<Scope> },
    /// The child acknowledged these re-sent bodies: forget that they were withheld.
    BodiesDelivered { items: Vec<ResendBody> },
    /// Store bodies the parent re-sent (child side).
    StoreBodies { bodies: Vec<Vec<u8>> },
    /// Take over the holes a child reports (parent side).
    StoreHoles { items: Vec<(EntityId, BodyHash)> },
    /// Merge part of what arrived so far (a long session).
    MergeSome,
    /// The session is over: merge what it brought.
    MergeAll,
    /// Record the ended session: peer state, the parent's audit cursor, the audit entry, and
    /// the holes the parent recorded (reported, so forgotten here).
    Record {
        report: SessionReport,
        vector: Option<Vector>,
        audit_acked: Option<u64>,
        holes_reported: Vec<BodyHash>,
    },
}

impl JobKind {
    /// How this kind of job reports an error.
    fn failed(&self) -> fn(String) -> Done {
        match self {
            JobKind::Fetch { .. } => |e| Done::Fetched(Err(e)),
            JobKind::Apply { .. } => |e| Done::Applied(Err(e)),
            JobKind::StoreAudit { .. } => |e| Done::AuditStored(Err(e)),
            JobKind::FetchBodies { .. } => |e| Done::BodiesFetched(Err(e)),
            JobKind::BodiesDelivered { .. } => |e| Done::BodiesDelivered(Err(e)),
            JobKind::StoreBodies { .. } => |e| Done::BodiesStored(Err(e)),
            JobKind::StoreHoles { .. } => |e| Done::HolesStored(Err(e)),
            JobKind::MergeSome | JobKind::MergeAll => |e| Done::Merged(Err(e)),
            JobKind::Record { .. } => |e| Done::Recorded(Err(e)),
        }
    }
}

impl std::fmt::Debug for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            JobKind::Fetch { .. } => "Fetch",
            JobKind::Apply { .. } => "Apply",
            JobKind::StoreAudit { .. } => "StoreAudit",
            JobKind::FetchBodies { .. } => "FetchBodies",
            JobKind::BodiesDelivered { .. } => "BodiesDelivered",
            JobKind::StoreBodies { .. } => "StoreBodies",
            JobKind::StoreHoles { .. } => "StoreHoles",
            JobKind::MergeSome => "MergeSome",
            JobKind::MergeAll => "MergeAll",
            JobKind::Record { .. } => "Record",
        };
        f.write_str(name)
    }
}

/// What a receipt did: the vector held afterwards, the report, and how many batches failed
/// verification.
pub type Receipt = (Vector, ApplyReport, usize);

/// The result of a [`Job`], for [`SessionHost::complete`]. Errors are their text.
#[derive(Debug)]
pub enum Done {
    /// The batches fetched and their encoded `Batches` frame (none: nothing left to send).
    Fetched(Result<(Vec<WireBatch>, Vec<u8>), String>),
    Applied(Result<Receipt, String>),
    AuditStored(Result<u64, String>),
    BodiesFetched(Result<Vec<ResendBody>, String>),
    BodiesDelivered(Result<(), String>),
    BodiesStored(Result<BodiesReport, String>),
    /// How many of a child's holes were taken over.
    HolesStored(Result<u64, String>),
    /// A merge during the session, or the one after it.
    Merged(Result<MergeReport, String>),
    Recorded(Result<(), String>),
}

fn text<T>(r: Result<T, NodeError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

impl Job {
    /// Runs the job on `node` (blocking: storage, Automerge, compression).
    pub fn run(self, node: &Node) -> Done {
        let peer = self.peer;
        match self.kind {
            JobKind::Fetch { .. } => {
                let batches = self.fetch(node);
                self.encoded(batches)
            }
            JobKind::Apply { batches } => Done::Applied(text(node.apply_wire(peer, batches))),
            JobKind::StoreAudit { entries } => {
                let entries: Vec<(u64, Vec<u8>)> =
                    entries.into_iter().map(|e| (e.n, e.stored.into_vec())).collect();
                let stored = node.store.store_child_audit(&peer, &entries, node.now());
                Done::AuditStored(stored.map_err(|e| e.to_string()))
            }
            JobKind::FetchBodies { scope } => Done::BodiesFetched(text(match scope {
                Some(scope) => node.fetch_bodies(peer, &scope),
                None => Ok(Vec::new()),
            })),
            JobKind::BodiesDelivered { items } => {
                Done::BodiesDelivered(text(node.bodies_delivered(peer, &items)))
            }
            JobKind::StoreBodies { bodies } => {
                Done::BodiesStored(text(node.receive_bodies(peer, bodies)))
            }
            JobKind::StoreHoles { items } => {
                Done::HolesStored(text(node.take_over_holes(peer, &items)))
            }
            JobKind::MergeSome => {
                Done::Merged(text(node.merge_received_up_to(MERGE_DURING_SESSION_DOCS)))
            }
            JobKind::MergeAll => Done::Merged(text(node.merge_received())),
            JobKind::Record { report, vector, audit_acked, holes_reported } => {
                let recorded = record(node, peer, &report, vector, audit_acked);
                let forgotten = node.store.peer_holes_reported(&holes_reported);
                Done::Recorded(text(recorded.and(forgotten.map_err(NodeError::from))))
            }
        }
    }

    /// As [`Job::run`], with a panic inside the store or Automerge turned into the job's error,
    /// so the session ends cleanly instead of waiting forever for a result.
    pub fn run_caught(self, node: &Node) -> Done {
        let failed = self.kind.failed();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(node)))
            .unwrap_or_else(|_| failed("the store work panicked".into()))
    }

    /// The first half of a `Fetch` job: the batches, not yet encoded (the simulator's hostile
    /// relay changes them between the halves). Other jobs fetch nothing.
    pub fn fetch(&self, node: &Node) -> Result<Vec<WireBatch>, NodeError> {
        match &self.kind {
            JobKind::Fetch { after, order, to, .. } => node.fetch_wire(order, after, self.peer, to),
            _ => Ok(Vec::new()),
        }
    }

    /// The second half of a `Fetch` job: the batches encoded as the session's next `Batches`
    /// message. Encoding at fetch time keeps the encoder's tables in step with the peer's
    /// decoder, since the session sends fetched messages in the order they were fetched.
    pub fn encoded(self, batches: Result<Vec<WireBatch>, NodeError>) -> Done {
        let JobKind::Fetch { encoder, .. } = self.kind else {
            return Done::Fetched(Err("not a fetch".into()));
        };
        Done::Fetched(text(batches).map(|batches| {
            if batches.is_empty() {
                return (batches, Vec::new());
            }
            let m = Message::Batches { batches };
            let frame = lock(&encoder).encode(&m);
            match m {
                Message::Batches { batches } => (batches, frame),
                _ => (Vec::new(), Vec::new()),
            }
        }))
    }
}

/// The encoder, whoever held it last (a panic while encoding leaves nothing half-written that
/// matters: the session ends on the next error).
fn lock(m: &Mutex<Encoder>) -> std::sync::MutexGuard<'_, Encoder> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The record of an ended session: the peer's state, where the next audit upload to the parent
/// starts, and the audit entry. Each is written even when another fails (each failure is
/// logged with what it was); the first failure is returned.
fn record(
    node: &Node,
    peer: NodeId,
    rep: &SessionReport,
    vector: Option<Vector>,
    audit_acked: Option<u64>,
) -> Result<(), NodeError> {
    let time = node.now();
    let mut first = None;
    let mut step = |what: &str, r: Result<(), crate::store::StoreError>| {
        if let Err(e) = r {
            tracing::error!(%peer, "recording {what}: {e}");
            first.get_or_insert(e);
        }
    };
    let state = node.store.update_peer_state(&peer, |s| record_session(s, time, vector, rep));
    step("peer state", state);
    if let Some(next) = audit_acked {
        step("the parent's audit cursor", node.store.audit_acked(&peer, next));
    }
    let kind = crate::event::EventKind::Session {
        peer,
        outcome: rep.outcome.clone(),
        complete: rep.complete,
        batches_sent: rep.batches_sent,
        batches_received: rep.batches_received,
        bytes_sent: rep.bytes_sent,
        bytes_received: rep.bytes_received,
        millis: rep.millis,
    };
    step("the session in the audit log", node.store.record(crate::event::Event { time, kind }));
    first.map_or(Ok(()), |e| Err(e.into()))
}

/// Where a closed session is in its ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Still running.
    No,
    /// Closed; the driver drains its writer and says so with [`SessionHost::drained`].
    Draining,
    /// Waiting for a merge still running from during the session.
    WaitingMerge,
    /// The merge after the session runs.
    Merging,
    /// The record is being written.
    Recording,
    Ended,
}

/// One end of a session on this node (see the module docs).
pub struct SessionHost {
    peer: NodeId,
    session: Session,
    encoder: Arc<Mutex<Encoder>>,
    /// The trust order, read once per session: rosters before the authors they vouch for.
    order: Arc<Vec<NodeId>>,
    /// The peer's scope, when it is this node's child.
    scope: Option<Scope>,
    /// What the peer's batches may leave out.
    to: Receiver,
    /// `Batches` frames encoded when fetched, sent in order.
    ready: VecDeque<Vec<u8>>,
    /// Actions waiting to be handed out before the session's next effect.
    queued: VecDeque<Action>,
    /// A job the session waits on runs (receipt, audit store, a body re-send step).
    waiting: bool,
    frames_handed: u64,
    frames_written: u64,
    bytes_written: u64,
    bytes_received: u64,
    started: u64,
    merge_every: u64,
    last_merge: u64,
    merging: bool,
    merges_during: u64,
    local_at_start: Vector,
    outcome: Option<Outcome>,
    ending: Ending,
    /// The report the record job writes (taken after the merge, so its time includes it).
    recorded: Option<SessionReport>,
    /// The holes reported to the parent, in the order sent (child side).
    holes: Vec<BodyHash>,
}

impl SessionHost {
    /// Starts this node's end of a session with `peer` (a configured peer) at `now`: reads the
    /// vector and the trust order, re-checks a child's withheld bodies against its scope, and
    /// queues a child's audit entries for its parent.
    pub fn start(node: &Node, peer: NodeId, now: u64) -> Result<SessionHost, NodeError> {
        let entry = node
            .config
            .peer(&peer)
            .ok_or_else(|| NodeError::Input(format!("{peer} is not a configured peer")))?;
        let role = entry.local_role();
        let scope = (entry.role == Role::Child).then(|| entry.scope.clone());
        // A child whose scope changed has every withheld body checked again.
        if let Some(scope) = &scope {
            node.check_child_scope(peer, scope)?;
        }
        // A child sends its parent the audit entries the parent's copy lacks, and the holes
        // peers left in its batches if the parent takes them over (its roster says so; an
        // older parent could not read the message).
        let (audit, holes) = match role {
            Role::Child => (
                node.store.audit_for_parent(&peer, message::AUDIT_ENTRIES_PER_MESSAGE_MAX)?,
                match node.parent_takes_over_holes()? {
                    true => node.store.peer_holes(message::HOLES_PER_MESSAGE_MAX)?,
                    false => Vec::new(),
                },
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let vector = node.store.vector()?;
        let order = node.trust_order()?;
        let mut host = SessionHost::new(node.id(), peer, role, vector, now);
        host.order = Arc::new(order);
        host.to = node.receiver(peer)?;
        host.scope = scope;
        let entries = audit.into_iter().map(|(n, stored)| AuditEntry { n, stored: stored.into() });
        host.session.send_audit(entries.collect());
        host.holes = holes.iter().map(|(_, h)| *h).collect();
        host.session.send_holes(holes);
        Ok(host)
    }

    /// A session that could not start on this node (its store could not be read): it tells
    /// the peer and ends.
    pub fn failed_start(node: NodeId, peer: NodeId, role: Role, now: u64, why: String) -> Self {
        let mut host = SessionHost::new(node, peer, role, Vector::default(), now);
        host.session.handle_local_error(why);
        host
    }

    fn new(node: NodeId, peer: NodeId, role: Role, vector: Vector, now: u64) -> SessionHost {
        let merge_every = crate::env_parse(MERGE_EVERY_ENV).unwrap_or(MERGE_DURING_SESSION_MS);
        SessionHost {
            peer,
            session: Session::new(now, node, role, peer, vector.clone()),
            encoder: Default::default(),
            order: Default::default(),
            scope: None,
            to: Receiver::Whole,
            ready: VecDeque::new(),
            queued: VecDeque::new(),
            waiting: false,
            frames_handed: 0,
            frames_written: 0,
            bytes_written: 0,
            bytes_received: 0,
            started: now,
            merge_every,
            last_merge: now,
            merging: false,
            merges_during: 0,
            local_at_start: vector,
            outcome: None,
            ending: Ending::No,
            recorded: None,
            holes: Vec::new(),
        }
    }

    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Merges during the session every `ms` instead of what `SITESYNC_MERGE_EVERY_MS` or
    /// [`MERGE_DURING_SESSION_MS`] says (the simulator: a replayed seed must not depend on the
    /// environment).
    pub fn merging_every(mut self, ms: u64) -> SessionHost {
        self.merge_every = ms;
        self
    }

    /// Whether the peer's `Hello` arrived.
    pub fn handshaken(&self) -> bool {
        self.session.handshaken()
    }

    /// Batches the peer holds that this node lacked when the session started (known once
    /// handshaken): the length of an initial sync.
    pub fn batches_to_receive(&self) -> u64 {
        self.session.peer_vector().ahead_of(&self.local_at_start)
    }

    pub fn stats(&self) -> &SessionStats {
        self.session.stats()
    }

    /// When [`SessionHost::handle_timeout`] is due at the latest (none once closed).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.session.poll_timeout()
    }

    /// A decoded message of `bytes` bytes arrived.
    pub fn handle_message(&mut self, now: u64, message: Message, bytes: u64) {
        self.bytes_received += bytes;
        self.session.handle_message(now, message);
    }

    /// A frame of `bytes` bytes arrived that does not decode.
    pub fn handle_malformed(&mut self, reason: String, bytes: u64) {
        self.bytes_received += bytes;
        self.session.handle_malformed(reason);
    }

    pub fn handle_disconnect(&mut self, reason: String) {
        self.session.handle_disconnect(reason);
    }

    /// Bytes moved at `at` (a slow link still carrying a large message is not idle).
    pub fn handle_activity(&mut self, at: u64) {
        self.session.handle_activity(at);
    }

    /// The session's timer is due. While a job the session waits on runs (a receipt, say),
    /// the peer is waiting for this node, not idle: that time never counts against it.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.waiting {
            self.session.handle_activity(now);
        }
        self.session.handle_timeout(now);
    }

    /// The writer has written `frames` frames of `bytes` bytes in all so far.
    pub fn written(&mut self, frames: u64, bytes: u64) {
        self.frames_written = self.frames_written.max(frames);
        self.bytes_written = self.bytes_written.max(bytes);
    }

    /// The writer is done after [`Action::Closed`] (drained, or given up on).
    pub fn drained(&mut self) {
        if self.ending == Ending::Draining {
            self.ending = Ending::WaitingMerge;
        }
    }

    /// The next thing the driver must do, if any.
    pub fn poll(&mut self, now: u64) -> Option<Action> {
        loop {
            if let Some(a) = self.queued.pop_front() {
                return Some(a);
            }
            if self.ending != Ending::No {
                return self.poll_ending(now);
            }
            if self.waiting {
                return None;
            }
            let effect = self.session.poll_effect()?;
            if let Some(a) = self.on_effect(effect) {
                return Some(a);
            }
        }
    }

    fn job(&self, kind: JobKind) -> Action {
        Action::Run(Job { peer: self.peer, kind })
    }

    /// The action for one effect of the session (none: handled here).
    fn on_effect(&mut self, effect: Effect) -> Option<Action> {
        match effect {
            Effect::Send(m) => return self.transmit(m),
            Effect::Fetch { after } => {
                let (order, to) = (self.order.clone(), self.to.clone());
                let encoder = self.encoder.clone();
                return Some(self.job(JobKind::Fetch { after, order, to, encoder }));
            }
            Effect::Closed(outcome) => {
                self.outcome = Some(outcome.clone());
                self.ending = Ending::Draining;
                return Some(Action::Closed(outcome));
            }
            _ => {}
        }
        // The rest change what the next effect reads: the session waits for each.
        self.waiting = true;
        let kind = match effect {
            Effect::Apply { batches } => JobKind::Apply { batches },
            Effect::StoreAudit { entries } => JobKind::StoreAudit { entries },
            Effect::FetchBodies => JobKind::FetchBodies { scope: self.scope.clone() },
            Effect::BodiesDelivered { items } => JobKind::BodiesDelivered { items },
            Effect::StoreBodies { bodies } => JobKind::StoreBodies { bodies },
            Effect::StoreHoles { items } => JobKind::StoreHoles { items },
            Effect::Send(_) | Effect::Fetch { .. } | Effect::Closed(_) => return None,
        };
        Some(self.job(kind))
    }

    fn transmit(&mut self, m: Message) -> Option<Action> {
        if self.frames_handed.saturating_sub(self.frames_written) >= WRITE_BACKLOG_MAX as u64 {
            self.session.handle_forbidden("the peer stopped reading".into());
        }
        let batches = matches!(m, Message::Batches { .. });
        let frame = if batches {
            // Encoded when it was fetched (the session sends fetches in order).
            match self.ready.pop_front() {
                Some(frame) => frame,
                None => {
                    self.session.handle_local_error("a batches message was not encoded".into());
                    return None;
                }
            }
        } else {
            lock(&self.encoder).encode(&m)
        };
        self.frames_handed += 1;
        Some(Action::Transmit { frame, batches })
    }

    fn poll_ending(&mut self, now: u64) -> Option<Action> {
        match self.ending {
            Ending::WaitingMerge if !self.merging => {
                let stats = self.session.stats();
                if stats.batches_received > 0 || stats.bodies_received > 0 {
                    self.ending = Ending::Merging;
                    return Some(self.job(JobKind::MergeAll));
                }
                self.ending = Ending::Merging;
                self.poll_record(now)
            }
            _ => None,
        }
    }

    /// The record job, once the merge after the session is done.
    fn poll_record(&mut self, now: u64) -> Option<Action> {
        self.ending = Ending::Recording;
        let report = self.report(now);
        self.recorded = Some(report.clone());
        let vector = self.session.handshaken().then(|| self.session.peer_vector().clone());
        let audit_acked = self.session.stats().audit_acked;
        let acked = self.session.stats().holes_acked.unwrap_or(0) as usize;
        let holes_reported = self.holes.iter().take(acked).copied().collect();
        Some(self.job(JobKind::Record { report, vector, audit_acked, holes_reported }))
    }

    /// What the session did so far.
    pub fn report(&self, now: u64) -> SessionReport {
        let outcome = self.outcome.clone().unwrap_or(Outcome::TimedOut);
        let stats = self.session.stats();
        SessionReport {
            peer: self.peer.to_string(),
            outcome: outcome.to_string(),
            complete: outcome == Outcome::Complete,
            batches_sent: stats.batches_sent,
            batches_received: stats.batches_received,
            bytes_sent: self.bytes_written,
            bytes_received: self.bytes_received,
            millis: now.saturating_sub(self.started),
        }
    }

    /// The result of a job, at `now`.
    pub fn complete(&mut self, now: u64, done: Done) {
        let s = &mut self.session;
        match done {
            Done::Fetched(Ok((batches, frame))) => {
                if !batches.is_empty() {
                    self.ready.push_back(frame);
                }
                s.handle_fetched(now, batches);
            }
            Done::Fetched(Err(e)) => s.handle_local_error(format!("reading batches: {e}")),
            Done::Applied(r) => {
                self.waiting = false;
                self.applied(now, r);
            }
            Done::AuditStored(r) => {
                self.waiting = false;
                match r {
                    Ok(next) => s.handle_audit_stored(now, next),
                    Err(e) => s.handle_local_error(format!("storing audit entries: {e}")),
                }
            }
            Done::BodiesFetched(r) => {
                self.waiting = false;
                match r {
                    Ok(bodies) => s.handle_bodies_fetched(now, bodies),
                    Err(e) => s.handle_local_error(format!("reading withheld bodies: {e}")),
                }
            }
            Done::BodiesDelivered(r) => {
                self.waiting = false;
                if let Err(e) = r {
                    s.handle_local_error(format!("recording re-sent bodies: {e}"));
                }
            }
            Done::BodiesStored(r) => {
                self.waiting = false;
                match r {
                    Ok(r) => s.handle_bodies_stored(now, r.hashes),
                    Err(e) => s.handle_local_error(format!("storing re-sent bodies: {e}")),
                }
            }
            Done::HolesStored(r) => {
                self.waiting = false;
                match r {
                    Ok(_) => s.handle_holes_stored(now),
                    Err(e) => s.handle_local_error(format!("recording reported holes: {e}")),
                }
            }
            Done::Merged(r) => self.merged(now, r),
            Done::Recorded(r) => self.recorded(now, r),
        }
    }

    fn applied(&mut self, now: u64, r: Result<Receipt, String>) {
        let peer = self.peer;
        let (vector, report, failed) = match r {
            Ok(r) => r,
            Err(e) => return self.session.handle_local_error(format!("applying batches: {e}")),
        };
        for rej in &report.rejected {
            tracing::warn!(%peer, author = %rej.author, seq = rej.seq, reason = %rej.reason, "rejected batch");
        }
        if failed > 0 {
            // Forged or tampered batches: the peer is cut off (what verified is applied and
            // stays).
            let why = report.rejected.first().map_or(String::new(), |x| x.reason.clone());
            let reason = format!("{failed} batches failed verification (first: {why})");
            return self.session.handle_forbidden(reason);
        }
        self.session.handle_applied(now, vector);
        if !self.merging && now.saturating_sub(self.last_merge) >= self.merge_every {
            (self.last_merge, self.merging) = (now, true);
            self.merges_during += 1;
            let job = self.job(JobKind::MergeSome);
            self.queued.push_back(job);
        }
    }

    fn merged(&mut self, now: u64, r: Result<MergeReport, String>) {
        let peer = self.peer;
        if let Err(e) = r {
            tracing::error!(%peer, "merging received changes: {e}");
        }
        match self.ending {
            Ending::Merging => {
                if let Some(a) = self.poll_record(now) {
                    self.queued.push_back(a);
                }
            }
            _ => self.merging = false,
        }
    }

    fn recorded(&mut self, now: u64, r: Result<(), String>) {
        let peer = self.peer;
        if let Err(e) = r {
            tracing::error!(%peer, "recording the session: {e}");
        }
        self.ending = Ending::Ended;
        let rep = self.recorded.take().unwrap_or_else(|| self.report(now));
        tracing::info!(
            %peer, outcome = %rep.outcome, sent = rep.batches_sent, received = rep.batches_received,
            bytes_out = rep.bytes_sent, bytes_in = rep.bytes_received, ms = rep.millis,
            merged_during = self.merges_during, "session ended"
        );
        self.queued.push_back(Action::Ended(rep));
    }

    /// Merges started during the session so far.
    pub fn merges_during(&self) -> u64 {
        self.merges_during
    }
}

#[cfg(test)]
mod tests;
