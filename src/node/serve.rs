//! `sitesync serve`: the running node. Owns the tokio runtime and every task: the QUIC listener
//! (`serve/listen.rs`), one sync loop per dialled peer (`serve/dial.rs`), each session driven
//! over QUIC by `serve/driver.rs`, the control endpoint (`control.rs`), the admin view
//! (`crate::web`, over [`super::AdminView`]), the FHIR push loops (`push.rs`), and shutdown on
//! SIGINT/SIGTERM. Storage calls run on tokio's blocking pool; the store serializes its own
//! write transactions. What a person should see (where it listens, an initial sync's progress)
//! goes to the [`ServeEvents`] the caller passes; the node prints nothing itself.

mod dial;
mod driver;
mod listen;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use dial::sync_once;
pub use driver::{IO_CHUNK_BYTES, WRITER_DRAIN_MS, describe_close};
pub use listen::accept_loop;

use super::handle::{NodeHandle, SyncLoops};
use super::{AdminView, Node, NodeError};
use crate::id::NodeId;
use crate::transport;

/// How long shutdown waits for the node's tasks (sessions, pushes, the admin view) to finish
/// before it aborts them, and again for QUIC to close its connections.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// What `serve` tells the person who started it. The CLI prints it; tests may ignore it.
pub trait ServeEvents: Send + Sync {
    /// The node listens: its QUIC address, and the admin view's address (or why it did not
    /// start; `None` when it is disabled).
    fn started(&self, node: NodeId, listen: SocketAddr, admin: Option<Result<SocketAddr, String>>);

    /// A display of the node's initial sync (its first session with its parent, when it holds
    /// nothing but its own changes), if someone can see one.
    fn initial_sync(&self) -> Option<Box<dyn SyncProgress>> {
        None
    }
}

/// Progress of a long sync, counted in batches received.
pub trait SyncProgress: Send + Sync {
    /// The batches to receive, once the peer said what it holds.
    fn length(&self, total: u64);
    fn advance(&self, batches: u64);
    fn finish(&self);
}

/// Runs the node until SIGINT or SIGTERM.
pub fn serve(node: Node, events: Arc<dyn ServeEvents>) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| NodeError::Io { path: node.dir.clone(), source: e })?;
    rt.block_on(serve_async(Arc::new(node), events))
}

/// Publishes the roster (a change only if the config changed) and applies the audit retention,
/// once at start.
async fn prepare(node: &Arc<Node>) -> Result<(), NodeError> {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.publish_roster()).await {
        Ok(Ok(changed)) => tracing::info!(changed, "roster published"),
        Ok(Err(e)) => return Err(e),
        Err(e) => tracing::error!("publishing the roster: {e}"),
    }
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.compact_audit(None, None)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "audit log compacted"),
        Ok(Err(e)) => tracing::error!("compacting the audit log: {e}"),
        Err(e) => tracing::error!("compacting the audit log: {e}"),
    }
    Ok(())
}

/// The QUIC endpoint: a server on `[network] listen`, else a client-only endpoint.
fn endpoint(node: &Node) -> Result<quinn::Endpoint, NodeError> {
    let allowed: Vec<NodeId> = node.config.peers.iter().map(|p| p.node_id).collect();
    match node.config.listen {
        Some(addr) => {
            let config = transport::server_config(node.keypair(), allowed)
                .map_err(|e| NodeError::Input(e.to_string()))?;
            quinn::Endpoint::server(config, addr)
                .map_err(|e| NodeError::Io { path: addr.to_string().into(), source: e })
        }
        None => quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| NodeError::Io { path: "network".into(), source: e }),
    }
}

async fn serve_async(node: Arc<Node>, events: Arc<dyn ServeEvents>) -> Result<(), NodeError> {
    prepare(&node).await?;
    let endpoint = endpoint(&node)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut loops = SyncLoops::default();
    for peer in node.config.peers.iter().filter(|p| p.addr.is_some()) {
        let (tx, rx) = mpsc::channel(16);
        loops.triggers.insert(peer.node_id, tx);
        let (n, e, p) = (node.clone(), endpoint.clone(), peer.clone());
        tasks.spawn(dial::peer_loop(n, e, p, rx, events.clone(), shutdown_rx.clone()));
    }
    let handle = NodeHandle::running(node.clone(), Arc::new(loops));
    if node.config.listen.is_some() {
        tasks.spawn(accept_loop(node.clone(), endpoint.clone(), shutdown_rx.clone()));
    }
    let token: Arc<str> = hex::encode(node.random_bytes::<16>()?).into();
    let (control_path, control) = super::control::bind(&node.dir, &token).await?;
    tasks.spawn(super::control::serve(handle.clone(), control, token, shutdown_rx.clone()));
    let admin = start_admin(&handle, &mut tasks, &shutdown_rx).await;
    let io = |e: std::io::Error| NodeError::Io { path: "network".into(), source: e };
    let listen = endpoint.local_addr().map_err(io)?;
    tracing::info!(node = %node.id(), %listen, peers = node.config.peers.len(), "serving");
    events.started(node.id(), listen, admin);
    // FHIR push targets with `continuous = true`, each on its interval (src/node/push.rs).
    super::push::spawn_push_loops(&node, &mut tasks, &shutdown_rx);
    super::emr::spawn_emr_loops(&node, &mut tasks, &shutdown_rx);

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    endpoint.close(0u32.into(), b"shutting down");
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
    super::control::remove_file(&control_path);
    Ok(())
}

/// Starts the admin web view and JSON API (`[admin]` in the config), stopped with everything
/// else. A view that cannot start (the address is in use, the token file is unreadable) is
/// reported and left out: the node goes on syncing without it.
async fn start_admin(
    handle: &NodeHandle,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> Option<Result<SocketAddr, String>> {
    let node = handle.node().clone();
    let config = node.config.admin.clone();
    if !config.enabled {
        return None;
    }
    let n = node.clone();
    let token = match tokio::task::spawn_blocking(move || n.admin_token()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Some(not_started(e.to_string())),
        Err(e) => return Some(not_started(e.to_string())),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return Some(not_started(format!("listening on {}: {e}", config.listen))),
    };
    let addr = listener.local_addr().map_or(config.listen, |a| a);
    tracing::info!(%addr, "admin view");
    let data = Arc::new(AdminView::new(handle.clone()));
    let app = crate::web::router(data, &token, &node.config.name, node.dir.clone());
    tasks.spawn(crate::web::serve(listener, app, shutdown.clone()));
    Some(Ok(addr))
}

fn not_started(why: String) -> Result<SocketAddr, String> {
    tracing::error!("admin view not started: {why}");
    Err(why)
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
