//! Commands that change the node's configuration (`sitesync.toml`): trusted nodes, peers and
//! the network section. They need the node stopped: a running node reads its config at start.

use super::{Cli, CliError, PeerAction, TrustAction, input, open_stopped, parse_node_id};
use crate::say;

pub(super) fn trust(cli: &Cli, action: &TrustAction) -> Result<(), CliError> {
    let mut node = open_stopped(cli)?;
    match action {
        TrustAction::Add { node_id, name } => {
            let id = parse_node_id(node_id)?;
            if id == node.id() {
                return Err(input("that is this node's own id; a node always trusts itself"));
            }
            let added = node.trust_add(id, name.clone())?;
            node.publish_roster()?;
            say!("{} {id}", if added { "trusted" } else { "updated" });
        }
        TrustAction::Remove { node_id } => {
            let id = parse_node_id(node_id)?;
            let removed = node.trust_remove(id)?;
            node.publish_roster()?;
            say!("{} {id}", if removed { "removed" } else { "was not trusted:" });
        }
        TrustAction::List => {
            for t in &node.config.trust {
                say!("{}  {}", t.node_id, t.name.as_deref().unwrap_or(""));
            }
        }
    }
    Ok(())
}

pub(super) fn peer(cli: &Cli, action: &PeerAction) -> Result<(), CliError> {
    let mut node = open_stopped(cli)?;
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

/// `sitesync network`: where this node listens and how often it syncs.
pub(super) fn network(
    cli: &Cli,
    listen: Option<&str>,
    interval: Option<u64>,
) -> Result<(), CliError> {
    let mut node = open_stopped(cli)?;
    if let Some(l) = listen {
        node.config.listen =
            Some(crate::config::parse_addr(l).map_err(|m| input(format!("--listen: {m}")))?);
    }
    if let Some(i) = interval {
        if i < crate::config::SYNC_INTERVAL_SECS_MIN {
            return Err(input(format!("--interval: {i} is below the minimum of 1 second")));
        }
        node.config.sync_interval_secs = i;
    }
    node.save_config()?;
    let listen = node.config.listen.map_or("(none)".into(), |a| a.to_string());
    let every = node.config.sync_interval_secs;
    node.config_changed(format!("network: listen {listen}, sync every {every} s"))?;
    say!("listen {listen}, sync every {every} s");
    Ok(())
}
