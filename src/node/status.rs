//! The node's status as `status --json` prints it and the admin view's overview reads it.

use serde_json::{Value, json};

use super::{Node, NodeError};
use crate::batch::Trust;

/// The node's status as `status --json` prints it: identity, vector, counts, digest, and per
/// configured peer its role, address, contacts, lag both ways, next retry and last error.
pub fn status_json(node: &Node) -> Result<serde_json::Value, NodeError> {
    let s = node.summary()?;
    let entities: serde_json::Map<String, Value> =
        s.entities.iter().map(|(t, n)| (t.to_string(), Value::from(*n))).collect();
    let mut peers = Vec::new();
    let trust = node.trust_set()?;
    for p in &node.config.peers {
        let st = node.store.peer_state(&p.node_id)?;
        let known = node.store.peer_vector(&p.node_id)?.unwrap_or_default();
        // The network figure when there was a session, else the last bundle's; only authors
        // this node trusts count (others are never exchanged).
        let mut theirs = if st.last_contact > 0 { st.vector.clone() } else { known };
        theirs.0.retain(|a, _| trust.trusts(&a.node));
        let never = |t: i64| if t == 0 { Value::Null } else { Value::from(t) };
        peers.push(json!({
            "node_id": p.node_id.to_string(),
            "name": p.name,
            "role": crate::config::role_name(p.role),
            "addr": p.addr.map(|a| a.to_string()),
            "last_contact": never(st.last_contact),
            "last_success": never(st.last_success),
            "batches_to_send": s.vector.ahead_of(&theirs),
            "batches_to_receive": theirs.ahead_of(&s.vector),
            "next_retry": never(st.next_retry),
            "failures": st.failures,
            "last_error": st.last_error,
            "sessions": st.sessions,
            "batches_sent": st.batches_sent,
            "batches_received": st.batches_received,
            "bytes_sent": st.bytes_sent,
            "bytes_received": st.bytes_received,
        }));
    }
    Ok(json!({
        "node_id": node.id().to_string(),
        "name": node.config.name,
        "author": node.store.author().to_string(),
        "vector": s.vector.to_json(),
        "entities": entities,
        "batches": s.batches,
        "pending_batches": s.pending,
        "digest": s.digest.to_hex().to_string(),
        "peers": peers,
    }))
}
