//! The network commands: `status` (local or through the running node), `sync`, `peer`.

use anyhow::anyhow;
use serde_json::Value;

use super::{Cli, Failure, PeerAction, input, node_dir, open, parse_node_id};
use crate::node::Node;
use crate::say;

pub(super) fn status(cli: &Cli, as_json: bool) -> Result<(), Failure> {
    let dir = node_dir(cli)?;
    let running =
        crate::node::serve::control_request(dir, &crate::node::serve::ControlRequest::Status)?;
    let out = match running {
        Some(reply) => reply["status"].clone(),
        None => crate::node::status_json(&*open(cli)?)?,
    };
    if as_json {
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_status(&out);
    Ok(())
}

fn print_status(s: &Value) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let when = |v: &Value| match v.as_i64() {
        Some(t) => {
            let ago = crate::node::now_secs() - t;
            if ago >= 0 { format!("{ago} s ago") } else { format!("in {} s", -ago) }
        }
        None => "never".to_string(),
    };
    say!("node     {} ({})", text(&s["node_id"]), text(&s["name"]));
    say!("author   {}", text(&s["author"]));
    say!("digest   {}", text(&s["digest"]));
    say!("batches  {} held, {} waiting for earlier ones", s["batches"], s["pending_batches"]);
    let entities = s["entities"].as_object().cloned().unwrap_or_default();
    say!("records  {}", entities.values().filter_map(Value::as_u64).sum::<u64>());
    for (t, n) in &entities {
        say!("  {t:<13}{n}");
    }
    say!("vector");
    for (author, seq) in s["vector"].as_object().cloned().unwrap_or_default() {
        say!("  {author}  {seq}");
    }
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    if !peers.is_empty() {
        say!("peers");
    }
    for p in peers {
        let name = p["name"].as_str().map(|n| format!(" ({n})")).unwrap_or_default();
        say!(
            "  {} {}{name}  {}",
            text(&p["role"]),
            text(&p["node_id"]),
            p["addr"].as_str().unwrap_or("dials in")
        );
        say!(
            "    last contact {}, last success {}, next retry {}",
            when(&p["last_contact"]),
            when(&p["last_success"]),
            when(&p["next_retry"])
        );
        say!(
            "    lag: {} batches to send, {} to receive",
            p["batches_to_send"],
            p["batches_to_receive"]
        );
        if let Some(e) = p["last_error"].as_str() {
            say!("    last error: {e}");
        }
    }
}

/// Prints one line per session report (as the control endpoint answers them); true if any
/// did not complete.
fn say_sessions(sessions: &[Value]) -> bool {
    let mut failed = false;
    for s in sessions {
        failed |= s["complete"] != Value::Bool(true);
        say!(
            "{}: {}; sent {} batches ({} bytes), received {} batches ({} bytes) in {} ms",
            s["peer"].as_str().unwrap_or("?"),
            s["outcome"].as_str().unwrap_or("?"),
            s["batches_sent"],
            s["bytes_sent"],
            s["batches_received"],
            s["bytes_received"],
            s["millis"]
        );
    }
    failed
}

pub(super) fn sync(cli: &Cli, peer: Option<&str>, entity: Option<&str>) -> Result<(), Failure> {
    use crate::node::serve::{ControlRequest, control_request};
    let dir = node_dir(cli)?;
    let peer = peer.map(parse_node_id).transpose()?;
    let entity = entity
        .map(|e| e.parse::<crate::id::EntityId>().map_err(|err| input(format!("--entity: {err}"))))
        .transpose()?;
    let reply = control_request(dir, &ControlRequest::Sync { peer })?.ok_or_else(|| Failure {
        code: 1,
        error: anyhow!(
            "no node is running in {}; start it with `sitesync --dir {} serve`",
            dir.display(),
            dir.display()
        ),
    })?;
    let sessions = reply["sessions"].as_array().cloned().unwrap_or_default();
    if sessions.is_empty() {
        say!("no peer to dial (children dial in to this node on their own schedule)");
    }
    let failed = say_sessions(&sessions);
    if let Some(id) = entity {
        say!(
            "{id}: carried by the round above (batches travel in order, so a round carries every pending change)"
        );
    }
    if failed {
        return Err(Failure {
            code: 1,
            error: anyhow!("a sync session did not complete (see above)"),
        });
    }
    Ok(())
}

pub(super) fn peer(cli: &Cli, action: &PeerAction) -> Result<(), Failure> {
    let mut node = open(cli)?.owned(node_dir(cli)?)?;
    match action {
        PeerAction::Add { node_id, role, addr, name, types, catchment } => {
            let node_id = parse_node_id(node_id)?;
            if node_id == node.id() {
                return Err(input("that is this node's own id"));
            }
            let role =
                crate::config::parse_role(role).map_err(|m| input(format!("--role: {m}")))?;
            let addr = addr
                .as_deref()
                .map(crate::config::parse_addr)
                .transpose()
                .map_err(|m| input(format!("--addr: {m}")))?;
            if let Some(n) = name {
                crate::config::check_name(n).map_err(|m| input(format!("--name: {m}")))?;
            }
            let scope = crate::config::Scope {
                types: types
                    .as_deref()
                    .map(crate::config::Scope::parse_types)
                    .transpose()
                    .map_err(|m| input(format!("--types: {m}")))?,
                catchment: catchment
                    .as_deref()
                    .map(crate::config::Scope::parse_catchment)
                    .transpose()
                    .map_err(|m| input(format!("--catchment: {m}")))?,
            };
            if !scope.is_everything() && role != crate::protocol::message::Role::Child {
                return Err(input("--types and --catchment limit a child only (--role child)"));
            }
            let peer = crate::config::Peer { node_id, role, addr, name: name.clone(), scope };
            crate::config::check_peer(&peer).map_err(|m| input(format!("--addr: {m}")))?;
            node.config.peers.retain(|p| p.node_id != node_id);
            node.config.peers.push(peer);
            node.save_config()?;
            let scope = node.config.peers.last().map(|p| p.scope.describe()).unwrap_or_default();
            node.config_changed(format!(
                "peer {node_id} added as {} ({scope})",
                crate::config::role_name(role)
            ))?;
            node.publish_roster()?;
            say!("peer {node_id} added as {}", crate::config::role_name(role));
        }
        PeerAction::Remove { node_id } => {
            let id = parse_node_id(node_id)?;
            let before = node.config.peers.len();
            node.config.peers.retain(|p| p.node_id != id);
            node.save_config()?;
            if node.config.peers.len() != before {
                node.config_changed(format!("peer {id} removed"))?;
            }
            node.publish_roster()?;
            say!(
                "{} {id}",
                if node.config.peers.len() != before { "removed" } else { "was not a peer:" }
            );
        }
        PeerAction::List => {
            for p in &node.config.peers {
                let scope = if p.scope.is_everything() {
                    String::new()
                } else {
                    format!("  [scope: {}]", p.scope.describe())
                };
                say!(
                    "{}  {:<7} {}  {}{scope}",
                    p.node_id,
                    crate::config::role_name(p.role),
                    p.addr.map_or("-".into(), |a| a.to_string()),
                    p.name.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// `sitesync failures`: every standing failure, oldest first.
pub(super) fn failures(node: &Node, json: bool) -> Result<(), Failure> {
    let list = node.store.failures(crate::node::now_secs())?;
    if json {
        let out: Vec<Value> = list
            .iter()
            .map(|f| {
                serde_json::json!({
                    "id": f.op.id(),
                    "what": f.op.describe(),
                    "peer": f.op.peer().map(|p| p.to_string()),
                    "reason": f.reason,
                    "attempts": f.attempts,
                    "first_failed": f.first_failed,
                    "last_failed": f.last_failed,
                    "next_retry": f.next_retry,
                    "needs_attention": f.needs_attention,
                    "manual_retries": f.manual_retries,
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if list.is_empty() {
        say!("no failures");
    }
    for f in &list {
        let mark = if f.needs_attention { "  NEEDS ATTENTION" } else { "" };
        say!("{}  {}{mark}", f.op.id(), f.op.describe());
        say!(
            "    {} failed attempts since {}, last {}; next automatic retry {}",
            f.attempts,
            f.first_failed,
            f.last_failed,
            f.next_retry.map_or("when the peer next connects".to_string(), |t| t.to_string())
        );
        say!("    reason: {}", f.reason);
    }
    Ok(())
}

/// `sitesync retry ID`: runs the failed operation again in the running node.
pub(super) fn retry(cli: &Cli, id: &str) -> Result<(), Failure> {
    use crate::node::serve::{ControlRequest, control_request};
    let dir = node_dir(cli)?;
    let request = ControlRequest::Retry { id: id.to_string() };
    let reply = control_request(dir, &request)?.ok_or_else(|| Failure {
        code: 1,
        error: anyhow!(
            "no node is running in {}; retries run in the running node (`sitesync --dir {} serve`)",
            dir.display(),
            dir.display()
        ),
    })?;
    let what = reply["what"].as_str().unwrap_or("?");
    say_sessions(reply["sessions"].as_array().map_or(&[], Vec::as_slice));
    if reply["closed"] == Value::Bool(true) {
        say!("{id} ({what}): retried, it works now; the failure is closed");
        Ok(())
    } else {
        let reason = reply["reason"].as_str().unwrap_or("unknown");
        Err(Failure { code: 1, error: anyhow!("{id} ({what}): the retry failed too: {reason}") })
    }
}
