//! `sitesync serve`: the running node. Owns the tokio runtime and every task: the QUIC listener,
//! one sync loop per dialled peer (interval, exponential backoff with jitter), the loopback
//! control endpoint the CLI talks to, and shutdown on SIGINT/SIGTERM. Storage calls run on
//! tokio's blocking pool; the store serializes its own write transactions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{Node, NodeError, now_secs, random_bytes};
use crate::config::Peer;
use crate::id::{NodeId, Vector};
use crate::protocol::message::{self, Message, Role, WireBatch};
use crate::protocol::session::{Effect, Outcome, Session, SessionStats};
use crate::store::failures::{Attempt, Operation};
use crate::store::tables::PeerState;
use crate::transport::{self, ReadError};

/// File in the node directory with the control endpoint's address and token (mode 0600).
pub const CONTROL_FILE: &str = "control.json";
/// First retry delay after a failed session, in milliseconds; doubles per failure.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest retry delay, in milliseconds.
pub const BACKOFF_MAX_MS: u64 = 300_000;
/// How long a dial may take before it counts as a failure.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Largest control request, in bytes.
pub const CONTROL_REQUEST_BYTES_MAX: usize = crate::entity::INPUT_BYTES_MAX * 2 + 64 * 1024;
/// Socket reads and writes are done in pieces of this size, each counting as activity.
pub const IO_CHUNK_BYTES: usize = 64 * 1024;
/// Messages queued for sending beyond which the peer is taken as not reading.
pub const WRITE_BACKLOG_MAX: usize = 64;
/// How long a finished session waits for its last messages to be written.
pub const WRITER_DRAIN_MS: u64 = 10_000;
/// How long shutdown waits for running sessions.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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

fn report(
    peer: NodeId,
    outcome: &Outcome,
    stats: &SessionStats,
    sent: u64,
    received: u64,
    started: Instant,
) -> SessionReport {
    SessionReport {
        peer: peer.to_string(),
        outcome: outcome.to_string(),
        complete: *outcome == Outcome::Complete,
        batches_sent: stats.batches_sent,
        batches_received: stats.batches_received,
        bytes_sent: sent,
        bytes_received: received,
        millis: started.elapsed().as_millis() as u64,
    }
}

/// The encoder, whoever held it last (a panic while encoding leaves nothing half-written that
/// matters: the session ends on the next error).
fn lock(m: &std::sync::Mutex<message::Encoder>) -> std::sync::MutexGuard<'_, message::Encoder> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The scope of `peer` if it is this node's child.
fn child_scope(node: &Node, peer: NodeId) -> Option<crate::config::Scope> {
    node.config
        .peers
        .iter()
        .find(|p| p.node_id == peer && p.role == Role::Child)
        .map(|p| p.scope.clone())
}

/// Carries out an effect of the re-send of withheld bodies: fetching them and forgetting the
/// acknowledged ones (parent side), storing them (child side). Each is awaited before the next
/// effect, so a delivery is durable before the next fetch reads what is left.
async fn bodies_effect(
    node: &Arc<Node>,
    peer: NodeId,
    session: &mut Session,
    effect: Effect,
    now: impl Fn() -> u64,
) {
    let n = node.clone();
    match effect {
        Effect::FetchBodies => {
            let fetched = tokio::task::spawn_blocking(move || match child_scope(&n, peer) {
                Some(scope) => n.fetch_bodies(peer, &scope),
                None => Ok(Vec::new()),
            })
            .await;
            match fetched {
                Ok(Ok(bodies)) => session.handle_bodies_fetched(now(), bodies),
                Ok(Err(e)) => session.handle_local_error(format!("reading withheld bodies: {e}")),
                Err(e) => session.handle_local_error(format!("reading withheld bodies: {e}")),
            }
        }
        Effect::BodiesDelivered { items } => {
            match tokio::task::spawn_blocking(move || n.bodies_delivered(peer, &items)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => session.handle_local_error(format!("recording re-sent bodies: {e}")),
                Err(e) => session.handle_local_error(format!("recording re-sent bodies: {e}")),
            }
        }
        Effect::StoreBodies { bodies } => {
            match tokio::task::spawn_blocking(move || n.receive_bodies(peer, bodies)).await {
                Ok(Ok(r)) => session.handle_bodies_stored(now(), r.hashes),
                Ok(Err(e)) => session.handle_local_error(format!("storing re-sent bodies: {e}")),
                Err(e) => session.handle_local_error(format!("storing re-sent bodies: {e}")),
            }
        }
        _ => {}
    }
}

/// Runs one session over an open bidirectional stream until it ends, then records the peer
/// state. Writes go through their own task so that both sides can send at once.
pub async fn drive(
    node: Arc<Node>,
    conn: &quinn::Connection,
    peer: NodeId,
    role: Role,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    progress: Option<indicatif::ProgressBar>,
) -> SessionReport {
    let started = Instant::now();
    let now = move || transport::millis_since(started);
    let start = {
        let n = node.clone();
        tokio::task::spawn_blocking(move || {
            // A child sends its parent the audit entries the parent's copy lacks.
            let audit = if role == Role::Child {
                n.store.audit_for_parent(&peer, message::AUDIT_ENTRIES_PER_MESSAGE_MAX)?
            } else {
                Vec::new()
            };
            // A child whose scope changed has every withheld body checked again.
            if let Some(scope) = child_scope(&n, peer) {
                n.check_child_scope(peer, &scope)?;
            }
            Ok::<_, NodeError>((n.store.vector()?, n.trust_order()?, audit))
        })
        .await
    };
    let (vector, order, audit) = match start {
        Ok(Ok((v, o, a))) => (Some(v), Arc::new(o), a),
        _ => (None, Arc::new(Vec::new()), Vec::new()),
    };
    let local_at_start = vector.clone().unwrap_or_default();
    let mut sized = false;
    // Bytes moving either way count as activity, so a slow link that is still carrying a large
    // message does not time the session out (milliseconds since `started`).
    let activity = Arc::new(AtomicU64::new(0));
    // Messages queued for the writer; the protocol keeps this small, so a long queue means the
    // peer stopped reading.
    let backlog = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (w_activity, w_backlog) = (activity.clone(), backlog.clone());
    let writer = tokio::spawn(async move {
        let mut written = 0u64;
        'messages: while let Some(bytes) = rx.recv().await {
            for chunk in bytes.chunks(IO_CHUNK_BYTES) {
                if send.write_all(chunk).await.is_err() {
                    break 'messages;
                }
                written += chunk.len() as u64;
                w_activity.store(transport::millis_since(started), Ordering::Relaxed);
            }
            w_backlog.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = send.finish();
        // Wait until the peer has read everything (or a short grace), so closing the
        // connection right after cannot cut our last message.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        written
    });
    // Reading runs in its own task, so a timer never cancels a half-read frame.
    let (rtx, mut rrx) = mpsc::channel::<Result<(Message, usize), ReadError>>(1);
    let r_activity = activity.clone();
    let reader = tokio::spawn(async move {
        let mut decoder = message::Decoder::default();
        loop {
            let r = transport::read_message_with(&mut recv, &mut decoder, &mut || {
                r_activity.store(transport::millis_since(started), Ordering::Relaxed);
            })
            .await;
            let stop = r.is_err();
            if rtx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    let mut session = match vector {
        Some(v) => {
            let mut s = Session::new(now(), node.id(), role, peer, v);
            s.send_audit(
                audit
                    .into_iter()
                    .map(|(n, stored)| message::AuditEntry { n, stored: stored.into() })
                    .collect(),
            );
            s
        }
        _ => {
            let mut s = Session::new(now(), node.id(), role, peer, Vector::default());
            s.handle_local_error("could not read this node's vector or trust".into());
            s
        }
    };
    let encoder = Arc::new(std::sync::Mutex::new(message::Encoder::default()));
    let (fetch_tx, mut fetch_rx) =
        mpsc::unbounded_channel::<Result<(Vec<WireBatch>, Vec<u8>), NodeError>>();
    let mut ready: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut received = 0u64;
    // Merging during a long session: one background merge at a time.
    let merge_every = crate::env_parse(MERGE_EVERY_ENV).unwrap_or(MERGE_DURING_SESSION_MS);
    let (mut last_merge, mut merges_during) = (now(), 0u64);
    let mut merging: Option<tokio::task::JoinHandle<()>> = None;
    let outcome = loop {
        let mut closed = None;
        while let Some(effect) = session.poll_effect() {
            match effect {
                Effect::Send(m) => {
                    if backlog.fetch_add(1, Ordering::Relaxed) >= WRITE_BACKLOG_MAX {
                        session.handle_forbidden("the peer stopped reading".into());
                    }
                    let frame = match m {
                        // Encoded when it was fetched (the session sends fetches in order).
                        Message::Batches { .. } => match ready.pop_front() {
                            Some(frame) => frame,
                            None => {
                                session
                                    .handle_local_error("a batches message was not encoded".into());
                                continue;
                            }
                        },
                        other => lock(&encoder).encode(&other),
                    };
                    let _ = tx.send(frame);
                }
                Effect::Fetch { after } => {
                    // Read and encode the next message off the loop, so it is ready (packed and
                    // compressed) while the peer applies the one in flight. Batches messages
                    // are sent in the order they are fetched, which keeps the encoder's tables
                    // in step with the peer's decoder.
                    let (n, order, enc, ftx) =
                        (node.clone(), order.clone(), encoder.clone(), fetch_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let scope = child_scope(&n, peer);
                        let child = scope.as_ref().map(|s| (peer, s));
                        let r = n.fetch_wire(&order, &after, child).map(|batches| {
                            let frame = (!batches.is_empty()).then(|| {
                                let m = Message::Batches { batches };
                                let frame = lock(&enc).encode(&m);
                                match m {
                                    Message::Batches { batches } => (batches, frame),
                                    _ => (Vec::new(), Vec::new()),
                                }
                            });
                            frame.unwrap_or_default()
                        });
                        let _ = ftx.send(r);
                    });
                }
                Effect::Apply { batches } => {
                    if let Some(bar) = &progress {
                        bar.inc(batches.len() as u64);
                    }
                    let n = node.clone();
                    match tokio::task::spawn_blocking(move || n.apply_wire(peer, batches)).await {
                        Ok(Ok((vector, r, failed))) => {
                            for rej in &r.rejected {
                                tracing::warn!(%peer, author = %rej.author, seq = rej.seq, reason = %rej.reason, "rejected batch");
                            }
                            if failed > 0 {
                                // Forged or tampered batches: the peer is cut off (what verified
                                // is applied and stays).
                                let why =
                                    r.rejected.first().map_or(String::new(), |x| x.reason.clone());
                                session.handle_forbidden(format!(
                                    "{failed} batches failed verification (first: {why})"
                                ));
                            } else {
                                session.handle_applied(now(), vector);
                                let idle = merging.as_ref().is_none_or(|h| h.is_finished());
                                if idle && now().saturating_sub(last_merge) >= merge_every {
                                    (last_merge, merges_during) = (now(), merges_during + 1);
                                    let n = node.clone();
                                    merging = Some(tokio::task::spawn_blocking(move || {
                                        if let Err(e) =
                                            n.merge_received_up_to(MERGE_DURING_SESSION_DOCS)
                                        {
                                            tracing::error!(%peer, "merging during the session: {e}");
                                        }
                                    }));
                                }
                            }
                        }
                        Ok(Err(e)) => session.handle_local_error(format!("applying batches: {e}")),
                        Err(e) => session.handle_local_error(format!("applying batches: {e}")),
                    }
                }
                Effect::StoreAudit { entries } => {
                    let n = node.clone();
                    let entries: Vec<(u64, Vec<u8>)> =
                        entries.into_iter().map(|e| (e.n, e.stored.into_vec())).collect();
                    let stored = tokio::task::spawn_blocking(move || {
                        n.store.store_child_audit(&peer, &entries, now_secs())
                    })
                    .await;
                    match stored {
                        Ok(Ok(next)) => session.handle_audit_stored(now(), next),
                        Ok(Err(e)) => {
                            session.handle_local_error(format!("storing audit entries: {e}"))
                        }
                        Err(e) => session.handle_local_error(format!("storing audit entries: {e}")),
                    }
                }
                e @ (Effect::FetchBodies
                | Effect::BodiesDelivered { .. }
                | Effect::StoreBodies { .. }) => {
                    bodies_effect(&node, peer, &mut session, e, now).await
                }
                Effect::Closed(o) => closed = Some(o),
            }
        }
        if let Some(o) = closed {
            break o;
        }
        let deadline = session.poll_timeout().unwrap_or(u64::MAX);
        let wait = Duration::from_millis(deadline.saturating_sub(now()));
        tokio::select! {
            Some(f) = fetch_rx.recv() => match f {
                Ok((batches, frame)) => {
                    if !batches.is_empty() {
                        ready.push_back(frame);
                    }
                    session.handle_fetched(now(), batches)
                }
                Err(e) => session.handle_local_error(format!("reading batches: {e}")),
            },
            r = rrx.recv() => match r {
                Some(Ok((m, n))) => {
                    received += n as u64;
                    session.handle_message(now(), m);
                    if let Some(bar) = progress.as_ref().filter(|_| !sized && session.handshaken()) {
                        bar.set_length(session.peer_vector().ahead_of(&local_at_start));
                        sized = true;
                    }
                }
                Some(Err(ReadError::Codec(e))) => session.handle_malformed(e.to_string()),
                Some(Err(e)) => {
                    let why = conn.close_reason().map_or_else(|| e.to_string(), |r| describe_close(&r));
                    session.handle_disconnect(why)
                }
                None => session.handle_disconnect("the reader stopped".into()),
            },
            _ = tokio::time::sleep(wait) => {
                session.handle_activity(activity.load(Ordering::Relaxed));
                session.handle_timeout(now());
            }
        }
    };
    drop(tx);
    reader.abort();
    // A peer that stopped reading must not hold this task: give the writer a deadline, then
    // close the connection under it.
    let sent = match tokio::time::timeout(Duration::from_millis(WRITER_DRAIN_MS), writer).await {
        Ok(r) => r.unwrap_or(0),
        Err(_) => {
            conn.close(2u32.into(), b"peer stopped reading");
            0
        }
    };
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    // Merge what this session received, once per document (receipt was durable per message),
    // after the merge still running from during the session.
    if let Some(h) = merging.take() {
        let _ = h.await;
    }
    if session.stats().batches_received > 0 || session.stats().bodies_received > 0 {
        let n = node.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || n.merge_received()).await {
            tracing::error!(%peer, "merging received changes: {e}");
        }
    }
    let rep = report(peer, &outcome, session.stats(), sent, received, started);
    let vector = session.handshaken().then(|| session.peer_vector().clone());
    let n = node.clone();
    let rep2 = rep.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        n.store.update_peer_state(&peer, |s| record_session(s, now_secs(), vector, &rep2))
    })
    .await;
    if let Ok(Err(e)) = recorded {
        tracing::error!(%peer, "recording peer state: {e}");
    }
    if let Some(next) = session.stats().audit_acked {
        let n = node.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || n.store.audit_acked(&peer, next)).await
        {
            tracing::error!(%peer, "recording the parent's audit cursor: {e}");
        }
    }
    let (n, r) = (node.clone(), rep.clone());
    let logged = tokio::task::spawn_blocking(move || {
        let kind = crate::event::EventKind::Session {
            peer,
            outcome: r.outcome,
            complete: r.complete,
            batches_sent: r.batches_sent,
            batches_received: r.batches_received,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            millis: r.millis,
        };
        n.store.record(crate::event::Event { time: now_secs(), kind })
    })
    .await;
    if let Ok(Err(e)) = logged {
        tracing::error!(%peer, "recording the session in the audit log: {e}");
    }
    tracing::info!(
        %peer, outcome = %rep.outcome, sent = rep.batches_sent, received = rep.batches_received,
        bytes_out = rep.bytes_sent, bytes_in = rep.bytes_received, ms = rep.millis,
        merged_during = merges_during, "session ended"
    );
    rep
}

/// Says why a connection closed, in an operator's words where the cause is known.
pub fn describe_close(reason: &quinn::ConnectionError) -> String {
    let raw = reason.to_string();
    // TLS alert 120 (no_application_protocol): the ALPN, i.e. the protocol version, differs.
    if raw.contains("known protocol") || raw.contains("error 120") {
        format!(
            "the peer speaks another protocol version (this node offers ALPN {}): {raw}",
            String::from_utf8_lossy(transport::ALPN)
        )
    } else if raw.contains("cryptographic handshake") || raw.contains("certificate") {
        format!(
            "the peer refused this node's key in the TLS handshake (is this node configured as \
             its peer?): {raw}"
        )
    } else {
        format!("connection closed: {raw}")
    }
}

/// A progress bar for a node's initial sync: shown on a terminal when the store holds nothing
/// but its own batches.
fn initial_sync_bar(node: &Node) -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let vector = node.store.vector().ok()?;
    if vector.0.keys().any(|a| a.node != node.id()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "initial sync {bar:40} {pos}/{len} batches ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Dials `peer` and runs one session (with a progress bar if `initial` and this is the node's
/// initial sync on a terminal).
pub async fn sync_once(node: Arc<Node>, endpoint: &quinn::Endpoint, peer: &Peer) -> SessionReport {
    sync_once_with(node, endpoint, peer, false).await
}

async fn sync_once_with(
    node: Arc<Node>,
    endpoint: &quinn::Endpoint,
    peer: &Peer,
    initial: bool,
) -> SessionReport {
    let progress = if initial { initial_sync_bar(&node) } else { None };
    let started = Instant::now();
    let fail = |why: String| SessionReport {
        peer: peer.node_id.to_string(),
        outcome: why,
        complete: false,
        batches_sent: 0,
        batches_received: 0,
        bytes_sent: 0,
        bytes_received: 0,
        millis: started.elapsed().as_millis() as u64,
    };
    let Some(addr) = peer.addr else { return fail("no address to dial".into()) };
    let config = match transport::client_config(node.keypair(), peer.node_id, transport::ALPN) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let connecting = match endpoint.connect_with(config, addr, transport::SERVER_NAME) {
        Ok(c) => c,
        Err(e) => {
            return record_failure(&node, peer.node_id, fail(format!("dialling {addr}: {e}")))
                .await;
        }
    };
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let why = format!("connecting to {addr}: {}", describe_close(&e));
            return record_failure(&node, peer.node_id, fail(why)).await;
        }
        Err(_) => {
            return record_failure(
                &node,
                peer.node_id,
                fail(format!("connecting to {addr}: timed out")),
            )
            .await;
        }
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            return record_failure(&node, peer.node_id, fail(format!("opening a stream: {e}")))
                .await;
        }
    };
    let rep = drive(node, &conn, peer.node_id, peer.local_role(), send, recv, progress).await;
    conn.close(0u32.into(), b"done");
    rep
}

async fn record_failure(node: &Arc<Node>, peer: NodeId, rep: SessionReport) -> SessionReport {
    let n = node.clone();
    let why = rep.outcome.clone();
    let _ = tokio::task::spawn_blocking(move || {
        n.store.update_peer_state(&peer, |s| {
            s.last_error = Some(why);
        })
    })
    .await;
    tracing::warn!(%peer, outcome = %rep.outcome, "sync failed");
    rep
}

/// Delay before retry number `failures` (1-based): doubling from `BACKOFF_BASE_MS`, capped,
/// with ±25 % jitter from `jitter` (a uniform random u32).
pub fn backoff_ms(failures: u32, cap_ms: u64, jitter: u32) -> u64 {
    let exp = BACKOFF_BASE_MS.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    let base = exp.min(cap_ms).min(BACKOFF_MAX_MS);
    let spread = base / 2;
    base - base / 4 + (u64::from(jitter) % (spread + 1))
}

type SyncReply = oneshot::Sender<SessionReport>;

/// One peer's sync loop: a round every interval, sooner when asked, backing off on failure.
async fn peer_loop(
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    peer: Peer,
    mut now_rx: mpsc::Receiver<SyncReply>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval_ms = node.config.sync_interval_secs * 1000;
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    let mut first = peer.role == Role::Parent;
    loop {
        let mut waiters: Vec<SyncReply> = Vec::new();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(w) = now_rx.recv() => waiters.push(w),
            _ = shutdown.changed() => return,
        }
        while let Ok(w) = now_rx.try_recv() {
            waiters.push(w);
        }
        let initial = first;
        first = false;
        let rep = sync_once_with(node.clone(), &endpoint, &peer, initial).await;
        let delay = if rep.complete {
            failures = 0;
            interval_ms
        } else {
            failures += 1;
            let jitter = random_bytes::<4>().map(u32::from_le_bytes).unwrap_or(0);
            backoff_ms(failures, interval_ms.max(BACKOFF_BASE_MS), jitter)
        };
        let next = now_secs() + (delay / 1000) as i64;
        let n = node.clone();
        let (id, f) = (peer.node_id, failures);
        let outcome = rep.clone();
        let _ = tokio::task::spawn_blocking(move || {
            n.store.update_peer_state(&id, |s| {
                s.next_retry = next;
                s.failures = f;
            })?;
            let op = Operation::Sync { peer: id };
            let result = if outcome.complete { Ok(()) } else { Err(outcome.outcome.as_str()) };
            n.store.record_attempt(&Attempt {
                op: &op,
                result,
                time: now_secs(),
                next_retry: Some(next),
                give_up_after: n.config.failures.give_up_after,
            })
        })
        .await;
        for w in waiters {
            let _ = w.send(rep.clone());
        }
        wait = Duration::from_millis(delay);
    }
}

/// Accepts connections from configured peers and serves one session on each.
pub async fn accept_loop(
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let node = node.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Unknown keys are refused here, inside the TLS handshake.
                    tracing::warn!("refused a connection: {e}");
                    return;
                }
            };
            let Some(peer_id) = transport::peer_node(&conn) else { return };
            let Some(peer) = node.config.peer(&peer_id).cloned() else {
                conn.close(1u32.into(), b"not a configured peer");
                return;
            };
            // A peer may reconnect and sync more than once on one connection's lifetime; one
            // stream is one session.
            while let Ok((send, recv)) = conn.accept_bi().await {
                drive(node.clone(), &conn, peer.node_id, peer.local_role(), send, recv, None).await;
            }
        });
    }
}

#[derive(Serialize, Deserialize)]
struct ControlFile {
    addr: SocketAddr,
    token: String,
    pid: u32,
}

/// A request to the running node's control endpoint.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    /// Sync now with one peer or every dialled peer.
    Sync { peer: Option<NodeId> },
    /// The node's status, as `sitesync status --json` prints it.
    Status,
    /// Run a CLI command (put, get, list, export, import, vector, events, id) in the node:
    /// arguments with absolute paths, and the standard input for `put -`.
    Exec { args: Vec<String>, stdin: Option<String> },
    /// Retry a failed operation now (`sitesync retry ID`, the web view's button).
    Retry { id: String },
}

async fn control_loop(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    token: String,
    triggers: Arc<HashMap<NodeId, mpsc::Sender<SyncReply>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (node, token, triggers) = (node.clone(), token.clone(), triggers.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(CONTROL_REQUEST_BYTES_MAX as u64);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = handle_control(&node, &token, &triggers, &line).await;
            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

async fn handle_control(
    node: &Arc<Node>,
    token: &str,
    triggers: &HashMap<NodeId, mpsc::Sender<SyncReply>>,
    line: &str,
) -> Value {
    let Ok(req) = serde_json::from_str::<Value>(line) else {
        return json!({"error": "the request is not JSON"});
    };
    if req.get("token").and_then(Value::as_str) != Some(token) {
        return json!({"error": "wrong control token"});
    }
    let request: ControlRequest = match serde_json::from_value(req) {
        Ok(r) => r,
        Err(e) => return json!({"error": format!("bad request: {e}")}),
    };
    match request {
        ControlRequest::Status => {
            let n = node.clone();
            match tokio::task::spawn_blocking(move || super::status_json(&n)).await {
                Ok(Ok(v)) => json!({"status": v}),
                Ok(Err(e)) => json!({"error": e.to_string()}),
                Err(e) => json!({"error": e.to_string()}),
            }
        }
        ControlRequest::Exec { args, stdin } => {
            let n = node.clone();
            match tokio::task::spawn_blocking(move || crate::cli::execute_forwarded(n, args, stdin))
                .await
            {
                Ok((code, stdout, stderr)) => {
                    json!({"code": code, "stdout": stdout, "stderr": stderr})
                }
                Err(e) => json!({"error": e.to_string()}),
            }
        }
        ControlRequest::Retry { id } => retry(node, triggers, id).await,
        ControlRequest::Sync { peer } => {
            let targets: Vec<NodeId> = match peer {
                Some(p) if triggers.contains_key(&p) => vec![p],
                Some(p) if node.config.peer(&p).is_some() => {
                    return json!({"error": format!("{p} dials in to this node (a child); it syncs on its own schedule")});
                }
                Some(p) => return json!({"error": format!("{p} is not a configured peer")}),
                None => triggers.keys().copied().collect(),
            };
            let mut reports = Vec::new();
            for t in targets {
                let (tx, rx) = oneshot::channel();
                if let Some(trigger) = triggers.get(&t)
                    && trigger.send(tx).await.is_ok()
                    && let Ok(r) = rx.await
                {
                    reports.push(r);
                }
            }
            json!({"sessions": reports})
        }
    }
}

/// Runs a failed operation again: a sync with the peer it concerns, through that peer's loop
/// (which records the attempt). Answers with the sessions and whether the failure is closed.
async fn retry(
    node: &Arc<Node>,
    triggers: &HashMap<NodeId, mpsc::Sender<SyncReply>>,
    id: String,
) -> Value {
    retry_op(node, triggers, id).await.unwrap_or_else(|e| json!({ "error": e }))
}

/// Runs blocking store or push work off the runtime; errors become their text.
async fn off_runtime<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn retry_op(
    node: &Arc<Node>,
    triggers: &HashMap<NodeId, mpsc::Sender<SyncReply>>,
    id: String,
) -> Result<Value, String> {
    let (n, looked) = (node.clone(), id.clone());
    let rec = off_runtime(move || n.store.failure(&looked))
        .await?
        .ok_or_else(|| format!("no failure {id:?} (see `sitesync failures`)"))?;
    let what = rec.op.describe();
    // A push runs here; a sync runs in the peer's loop, which records the attempt.
    let trigger = match (&rec.op, rec.op.peer()) {
        (Operation::FhirPush { .. }, _) => None,
        (_, Some(p)) => Some(triggers.get(&p).cloned().ok_or_else(|| {
            format!("{what}: {p} dials in to this node; the retry happens when it next connects")
        })?),
        (_, None) => {
            return Err(format!(
                "{what}: nothing to retry from here; import the bundle or push again"
            ));
        }
    };
    let (n, noted) = (node.clone(), id.clone());
    off_runtime(move || n.store.record_manual_retry(&noted, now_secs())).await?;
    let mut sessions = Vec::new();
    let mut push = Value::Null;
    match (trigger, &rec.op) {
        (Some(trigger), _) => {
            let (tx, rx) = oneshot::channel();
            if trigger.send(tx).await.is_ok()
                && let Ok(r) = rx.await
            {
                sessions.push(r);
            }
        }
        (None, Operation::FhirPush { target }) => {
            let (n, target) = (node.clone(), target.clone());
            let report = off_runtime(move || n.push_now(&target)).await?;
            push = serde_json::to_value(&report).unwrap_or_default();
        }
        (None, _) => {}
    }
    let n = node.clone();
    let standing = off_runtime(move || n.store.failures(now_secs()))
        .await?
        .into_iter()
        .find(|r| r.op.id() == id);
    Ok(json!({
        "retried": id,
        "what": what,
        "closed": standing.is_none(),
        "reason": standing.map(|r| r.reason),
        "sessions": sessions,
        "push": push,
    }))
}

/// Sends a request to the running node of `dir`. `Ok(None)` if no node is running there.
pub fn control_request(dir: &Path, request: &ControlRequest) -> Result<Option<Value>, NodeError> {
    use std::io::{BufRead, Write};
    let path = dir.join(CONTROL_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let file: ControlFile = serde_json::from_str(&text)
        .map_err(|e| NodeError::Input(format!("{}: {e}", path.display())))?;
    let Ok(mut stream) = std::net::TcpStream::connect(file.addr) else { return Ok(None) };
    let mut body = serde_json::to_value(request).unwrap_or_default();
    body["token"] = Value::String(file.token);
    let io = |e| NodeError::Io { path: path.clone(), source: e };
    stream.write_all(format!("{body}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(io)?;
    let reply: Value = serde_json::from_str(&line)
        .map_err(|e| NodeError::Input(format!("the running node answered badly: {e}")))?;
    if let Some(err) = reply.get("error").and_then(Value::as_str) {
        return Err(NodeError::Input(err.to_string()));
    }
    Ok(Some(reply))
}

fn write_control_file(dir: &Path, addr: SocketAddr, token: &str) -> Result<PathBuf, NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(CONTROL_FILE);
    let _ = std::fs::remove_file(&path);
    let body = serde_json::to_string(&ControlFile {
        addr,
        token: token.to_string(),
        pid: std::process::id(),
    })
    .unwrap_or_default();
    let io = |e| NodeError::Io { path: path.clone(), source: e };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    f.write_all(body.as_bytes()).map_err(io)?;
    Ok(path)
}

/// Runs the node until SIGINT or SIGTERM.
pub fn serve(node: Node) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| NodeError::Io { path: node.dir.clone(), source: e })?;
    rt.block_on(serve_async(Arc::new(node)))
}

async fn serve_async(node: Arc<Node>) -> Result<(), NodeError> {
    // The roster this node signs: the peers it authorizes (a change only if the config changed).
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.publish_roster()).await {
        Ok(Ok(changed)) => tracing::info!(changed, "roster published"),
        Ok(Err(e)) => return Err(e),
        Err(e) => tracing::error!("publishing the roster: {e}"),
    }
    // Audit retention, once at start (`sitesync audit compact` runs it by hand).
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.compact_audit(None, None)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "audit log compacted"),
        Ok(Err(e)) => tracing::error!("compacting the audit log: {e}"),
        Err(e) => tracing::error!("compacting the audit log: {e}"),
    }
    let io = |e: std::io::Error| NodeError::Io { path: "network".into(), source: e };
    let allowed: Vec<NodeId> = node.config.peers.iter().map(|p| p.node_id).collect();
    let endpoint = match node.config.listen {
        Some(addr) => {
            let config = transport::server_config(node.keypair(), allowed)
                .map_err(|e| NodeError::Input(e.to_string()))?;
            quinn::Endpoint::server(config, addr)
                .map_err(|e| NodeError::Io { path: addr.to_string().into(), source: e })?
        }
        None => quinn::Endpoint::client(
            "0.0.0.0:0".parse().map_err(|_| NodeError::Input("bind".into()))?,
        )
        .map_err(io)?,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut triggers = HashMap::new();
    for peer in node.config.peers.iter().filter(|p| p.addr.is_some()) {
        let (tx, rx) = mpsc::channel(16);
        triggers.insert(peer.node_id, tx);
        tasks.spawn(peer_loop(
            node.clone(),
            endpoint.clone(),
            peer.clone(),
            rx,
            shutdown_rx.clone(),
        ));
    }
    if node.config.listen.is_some() {
        tasks.spawn(accept_loop(node.clone(), endpoint.clone(), shutdown_rx.clone()));
    }
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
    let token = hex::encode(random_bytes::<16>()?);
    let control_path = write_control_file(&node.dir, control.local_addr().map_err(io)?, &token)?;
    tasks.spawn(control_loop(
        node.clone(),
        control,
        token,
        Arc::new(triggers),
        shutdown_rx.clone(),
    ));
    let listen = endpoint.local_addr().map_err(io)?;
    tracing::info!(node = %node.id(), %listen, peers = node.config.peers.len(), "serving");
    crate::say!("serving node {} on {listen} (Ctrl-C to stop)", node.id());
    // The admin web view and JSON API (`[admin]` in the config), stopped with everything else.
    tasks.spawn(crate::web::run(node.clone(), shutdown_rx.clone()));
    // FHIR push targets with `continuous = true`, each on its interval (src/node/push.rs).
    crate::node::push::spawn_push_loops(&node, &mut tasks, &shutdown_rx);

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    endpoint.close(0u32.into(), b"shutting down");
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(control_path);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let at = |f, j| backoff_ms(f, 60_000, j);
        assert!((750..=1_250).contains(&at(1, 0)) && (750..=1_250).contains(&at(1, u32::MAX)));
        assert!((1_500..=2_500).contains(&at(2, 7)));
        assert!((45_000..=75_000).contains(&at(30, 12345)));
        assert_ne!(at(5, 1), at(5, 9_999));
    }
}
