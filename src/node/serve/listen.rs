//! The listener: accepts QUIC connections from configured peers (unknown keys are refused in
//! the TLS handshake) and serves one session per stream they open.

use std::sync::Arc;

use tokio::sync::watch;

use super::super::Node;
use super::driver::drive;
use crate::transport;

/// Accepts connections from configured peers until `shutdown` changes.
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
                let role = peer.local_role();
                drive(node.clone(), &conn, peer.node_id, role, send, recv, None).await;
            }
        });
    }
}
