//! Dialling: one sync loop per peer this node dials (its parent, its peers). A loop runs a round
//! every interval, sooner when asked ("sync now", a retry), and backs off after a failure
//! ([`DialSchedule`]); a round is one QUIC connection carrying one session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::super::handle::SyncReply;
use super::super::schedule::{CONNECT_TIMEOUT_MS, DialSchedule, dial_failed};
use super::super::session_host::SessionReport;
use super::super::{Node, ServeEvents};
use super::driver::{describe_close, drive};
use crate::config::Peer;
use crate::protocol::message::Role;
use crate::transport;

/// Dials `peer` and runs one session. `events` is asked for a progress display when this is
/// the node's initial sync (its store holds nothing but its own batches).
pub async fn sync_once(
    node: Arc<Node>,
    endpoint: &quinn::Endpoint,
    peer: &Peer,
    events: Option<&dyn ServeEvents>,
) -> SessionReport {
    let progress = events.filter(|_| initial_sync(&node)).and_then(|e| e.initial_sync());
    let started = Instant::now();
    let millis = || started.elapsed().as_millis() as u64;
    let id = peer.node_id;
    let Some(addr) = peer.addr else {
        return SessionReport::failed(id, "no address to dial".into(), millis());
    };
    let config = match transport::client_config(node.keypair(), id, transport::ALPN) {
        Ok(c) => c,
        Err(e) => return SessionReport::failed(id, e.to_string(), millis()),
    };
    let failed = |why: String| {
        let (n, ms, fallback) = (node.clone(), millis(), why.clone());
        async move {
            tokio::task::spawn_blocking(move || dial_failed(&n, id, why, ms))
                .await
                .unwrap_or_else(|_| SessionReport::failed(id, fallback, ms))
        }
    };
    let connecting = match endpoint.connect_with(config, addr, transport::SERVER_NAME) {
        Ok(c) => c,
        Err(e) => return failed(format!("dialling {addr}: {e}")).await,
    };
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(format!("connecting to {addr}: {}", describe_close(&e))).await,
        Err(_) => return failed(format!("connecting to {addr}: timed out")).await,
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return failed(format!("opening a stream: {e}")).await,
    };
    let rep = drive(node, &conn, id, peer.local_role(), send, recv, progress).await;
    conn.close(0u32.into(), b"done");
    rep
}

/// Whether the node's store holds nothing but its own batches (its first sync is a long one).
fn initial_sync(node: &Node) -> bool {
    node.store.vector().is_ok_and(|v| v.0.keys().all(|a| a.node == node.id()))
}

/// One peer's sync loop: a round every interval, sooner when asked, backing off on failure.
pub(super) async fn peer_loop(
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    peer: Peer,
    mut asked: mpsc::Receiver<SyncReply>,
    events: Arc<dyn ServeEvents>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval_ms = node.config.sync_interval_secs * 1000;
    let mut schedule = DialSchedule::default();
    let mut wait = Duration::ZERO;
    let mut first = peer.role == Role::Parent;
    loop {
        let mut waiters: Vec<SyncReply> = Vec::new();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(w) = asked.recv() => waiters.push(w),
            _ = shutdown.changed() => return,
        }
        while let Ok(w) = asked.try_recv() {
            waiters.push(w);
        }
        let events = if first { Some(&*events) } else { None };
        first = false;
        let rep = sync_once(node.clone(), &endpoint, &peer, events).await;
        let delay = schedule.next(rep.complete, interval_ms, node.random_u32());
        let (n, id, r, s) = (node.clone(), peer.node_id, rep.clone(), schedule.clone());
        let _ = tokio::task::spawn_blocking(move || s.record(&n, id, &r, delay)).await;
        for w in waiters {
            let _ = w.send(rep.clone());
        }
        wait = Duration::from_millis(delay);
    }
}
