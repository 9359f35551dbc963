//! Whom a node trusts: its own config (`[[trust]]`, `[[peers]]`) and, through their signed
//! rosters, every node they vouch for, transitively, in breadth-first order (every roster
//! before the nodes it authorizes: the order batches travel in). Also the roster this node
//! publishes, and the config edits that change trust.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{CONFIG_FILE, Node, NodeError};
use crate::config::{TrustSet, TrustedNode};
use crate::entity;
use crate::id::{EntityId, EntityType, NodeId};
use crate::protocol::message::Role;

/// A roster's members, each with its entry (role, name, and for a child its scope).
pub type RosterEntries = Arc<Vec<(NodeId, Map<String, Value>)>>;

/// Roster entries by owner, with the roster heads they were read at.
pub(super) type RosterCache = HashMap<NodeId, (Vec<[u8; 32]>, RosterEntries)>;

/// The entity types each node may push, where its parent limits them.
pub type PushLimits = HashMap<NodeId, BTreeSet<EntityType>>;

fn lock(m: &std::sync::Mutex<RosterCache>) -> std::sync::MutexGuard<'_, RosterCache> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Node {
    /// Adds (or renames) a trusted node in the config.
    pub fn trust_add(&mut self, node_id: NodeId, name: Option<String>) -> Result<bool, NodeError> {
        if let Some(n) = &name {
            crate::config::check_name(n).map_err(|m| NodeError::Input(format!("--name: {m}")))?;
        }
        let added = match self.config.trust.iter_mut().find(|t| t.node_id == node_id) {
            Some(t) => {
                t.name = name.or(t.name.take());
                false
            }
            None => {
                self.config.trust.push(TrustedNode { node_id, name });
                true
            }
        };
        self.config.save(&self.dir.join(CONFIG_FILE))?;
        self.config_changed(format!("trust {node_id}"))?;
        Ok(added)
    }

    pub fn trust_remove(&mut self, node_id: NodeId) -> Result<bool, NodeError> {
        let before = self.config.trust.len();
        self.config.trust.retain(|t| t.node_id != node_id);
        self.config.save(&self.dir.join(CONFIG_FILE))?;
        let removed = self.config.trust.len() != before;
        if removed {
            self.config_changed(format!("no longer trust {node_id}"))?;
        }
        Ok(removed)
    }

    /// The nodes whose batches this node accepts: itself, `[[trust]]`, `[[peers]]`, and, through
    /// their rosters, every node they authorize (transitively). Rosters are signed data: each
    /// node's roster record is written only by that node.
    pub fn trust_set(&self) -> Result<TrustSet, NodeError> {
        let order = self.trust_order()?;
        Ok(TrustSet { own: self.id(), others: order.into_iter().skip(1).collect() })
    }

    /// The trusted nodes in breadth-first order from this node (itself first, then its
    /// configured peers and trusted nodes, then the members of their rosters, and so on): every
    /// roster comes before the nodes it authorizes. Batches are sent in this order, so a
    /// receiver gets the roster that vouches for an author before that author's batches.
    pub fn trust_order(&self) -> Result<Vec<NodeId>, NodeError> {
        let base = self.config.trust_set(self.id());
        let mut seen: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
        let mut order = vec![self.id()];
        seen.insert(self.id());
        let mut queue: std::collections::VecDeque<NodeId> = std::collections::VecDeque::new();
        queue.push_back(self.id());
        let mut direct = base.others.clone();
        direct.sort();
        for n in direct {
            if seen.insert(n) {
                order.push(n);
                queue.push_back(n);
            }
        }
        while let Some(n) = queue.pop_front() {
            // This node's own level comes from its config, which may be newer than the roster
            // it last published.
            if n == self.id() {
                continue;
            }
            let mut members = self.roster_members(&n)?;
            members.sort();
            for m in members {
                if seen.insert(m) {
                    order.push(m);
                    queue.push_back(m);
                }
            }
        }
        Ok(order)
    }

    /// The members of `owner`'s roster as held here (empty if none).
    pub fn roster_members(&self, owner: &NodeId) -> Result<Vec<NodeId>, NodeError> {
        Ok(self.roster_entries(owner)?.iter().map(|(n, _)| *n).collect())
    }

    /// The members of `owner`'s roster as held here, each with its entry (empty if none).
    pub fn roster_entries(&self, owner: &NodeId) -> Result<RosterEntries, NodeError> {
        let id = EntityId::new(EntityType::Roster, crate::id::Uid::of_node(owner));
        // Trust is computed for every received message, over every roster: the entries are
        // reused while the roster document's heads (which fix its content) stay the same.
        let Some(heads) = self.store.heads(&id)? else { return Ok(Arc::default()) };
        let cache =
            |c: &mut RosterCache| c.get(owner).filter(|(h, _)| *h == heads).map(|e| e.1.clone());
        if let Some(entries) = cache(&mut lock(&self.rosters)) {
            return Ok(entries);
        }
        let Some((doc, _)) = self.store.get(&id)? else { return Ok(Arc::default()) };
        let members = doc.get("members").and_then(Value::as_object);
        let entries: Vec<(NodeId, Map<String, Value>)> = members.map_or_else(Vec::new, |m| {
            m.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_object().cloned()?))).collect()
        });
        let entries = Arc::new(entries);
        lock(&self.rosters).insert(*owner, (heads, entries.clone()));
        Ok(entries)
    }

    /// The entity types each node may push, where its parent limits them (`types` of a child's
    /// scope): this node's own children from its config; any other node from the first roster
    /// in trust order that lists it as a child with `types`. A body of a record outside its
    /// author's push types travels nowhere: it may be absent from a batch from anyone.
    pub fn push_limits(&self) -> Result<PushLimits, NodeError> {
        let mut limits = PushLimits::new();
        for p in self.config.peers.iter().filter(|p| p.role == Role::Child) {
            if let Some(types) = &p.scope.types {
                limits.insert(p.node_id, types.clone());
            }
        }
        for owner in self.trust_order()?.into_iter().skip(1) {
            for (member, entry) in self.roster_entries(&owner)?.iter() {
                if limits.contains_key(member) || entry.get("role") != Some(&Value::from("child")) {
                    continue;
                }
                let types = entry.get("types").and_then(Value::as_array);
                let parsed: Option<BTreeSet<EntityType>> =
                    types.map(|t| t.iter().filter_map(|v| v.as_str()?.parse().ok()).collect());
                if let Some(types) = parsed {
                    limits.insert(*member, types);
                }
            }
        }
        Ok(limits)
    }

    /// What `peer`'s batches may leave out: a child's scope is this node's config; a peer's is
    /// the one its own parent publishes, if any. Nothing goes to a peer whose scope is
    /// unknown while this node has not heard from its own parent yet ([`super::Receiver::NotYet`]).
    pub fn receiver(&self, peer: NodeId) -> Result<super::Receiver, NodeError> {
        use super::Receiver;
        let Some(entry) = self.config.peer(&peer) else { return Ok(Receiver::Whole) };
        Ok(match entry.role {
            Role::Child => Receiver::Child(entry.scope.clone()),
            Role::Peer => match self.published_scope(&peer)? {
                Some(scope) => Receiver::ScopedPeer(scope),
                None if self.parent_unheard()? => Receiver::NotYet,
                None => Receiver::Whole,
            },
            Role::Parent => Receiver::Whole,
        })
    }

    /// Whether this node has a parent and holds no roster of any of its parents: it has not
    /// heard from its parent yet, directly or through a peer that relayed the parent's roster.
    pub fn parent_unheard(&self) -> Result<bool, NodeError> {
        let mut parents = self.config.peers.iter().filter(|p| p.role == Role::Parent).peekable();
        if parents.peek().is_none() {
            return Ok(false);
        }
        for parent in parents {
            if !self.roster_entries(&parent.node_id)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The scope `node`'s parent gives it, as the first roster in trust order that lists it as
    /// a child publishes it (`None`: no parent here limits it, or its parent is of a version
    /// that does not take over holes, so the node must get whole batches).
    pub fn published_scope(
        &self,
        node: &NodeId,
    ) -> Result<Option<crate::config::Scope>, NodeError> {
        for owner in self.trust_order()?.into_iter().skip(1) {
            let entries = self.roster_entries(&owner)?;
            let Some((_, entry)) = entries.iter().find(|(m, _)| m == node) else { continue };
            if entry.get("role") != Some(&Value::from("child")) {
                continue;
            }
            if entry.get("holes") != Some(&Value::Bool(true)) {
                return Ok(None);
            }
            let list = |field: &str| entry.get(field).and_then(Value::as_array).cloned();
            return Ok(Some(crate::config::Scope {
                types: list("types")
                    .map(|t| t.iter().filter_map(|v| v.as_str()?.parse().ok()).collect()),
                catchment: list("catchment").map(|c| {
                    c.iter().filter_map(|v| crate::id::parse_uuid(v.as_str()?).ok()).collect()
                }),
            }));
        }
        Ok(None)
    }

    /// Whether this node's parent takes over the holes it reports: the parent's roster, as
    /// held here, lists this node as a child with the `holes` mark (an older parent's does
    /// not, and could not read a `Holes` message).
    pub fn parent_takes_over_holes(&self) -> Result<bool, NodeError> {
        for parent in self.config.peers.iter().filter(|p| p.role == Role::Parent) {
            let entries = self.roster_entries(&parent.node_id)?;
            let marked = entries.iter().any(|(m, entry)| {
                *m == self.id()
                    && entry.get("role") == Some(&Value::from("child"))
                    && entry.get("holes") == Some(&Value::Bool(true))
            });
            if marked {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes this node's roster from its config: every configured peer with its role, and the
    /// nodes of `[[trust]]`. Only a change when the config changed.
    pub fn publish_roster(&self) -> Result<bool, NodeError> {
        // A node that never had network peers (bundles only) publishes no roster: its trust
        // list stays local, and it writes no record of its own.
        let uid = crate::id::Uid::of_node(&self.id());
        let id = EntityId::new(EntityType::Roster, uid);
        if self.config.peers.is_empty() && self.store.get(&id)?.is_none() {
            return Ok(false);
        }
        let members: serde_json::Map<String, Value> = self
            .config
            .peers
            .iter()
            .map(|p| {
                let mut m = serde_json::Map::new();
                m.insert("role".into(), Value::from(crate::config::role_name(p.role)));
                if let Some(n) = &p.name {
                    m.insert("name".into(), Value::from(n.clone()));
                }
                // A child's scope is published, so that every node can tell a record held
                // back from this child (outside its types) from one a relay dropped.
                if let Some(types) = p.scope.types.as_ref().filter(|_| p.role == Role::Child) {
                    let names: Vec<Value> = types.iter().map(|t| Value::from(t.as_str())).collect();
                    m.insert("types".into(), Value::Array(names));
                }
                // And its catchment, so that its peers leave out what it may not hold.
                if let Some(places) = p.scope.catchment.as_ref().filter(|_| p.role == Role::Child) {
                    let uuids: Vec<Value> =
                        places.iter().map(|u| Value::from(u.to_string())).collect();
                    m.insert("catchment".into(), Value::Array(uuids));
                }
                // This parent takes over the holes the child reports (`Holes`): its peers may
                // leave bodies out for it. An older parent publishes no such mark, and peers
                // send its children whole batches, as they did.
                if p.role == Role::Child {
                    m.insert("holes".into(), Value::Bool(true));
                }
                (p.node_id.to_string(), Value::Object(m))
            })
            .chain(self.config.trust.iter().map(|t| {
                let mut m = serde_json::Map::new();
                m.insert("role".into(), Value::from("trusted"));
                if let Some(n) = &t.name {
                    m.insert("name".into(), Value::from(n.clone()));
                }
                (t.node_id.to_string(), Value::Object(m))
            }))
            .collect();
        let uid = crate::id::Uid::of_node(&self.id());
        let mut body = serde_json::Map::new();
        body.insert("uuid".into(), Value::from(uid.to_string()));
        body.insert("owner".into(), Value::from(self.id().to_string()));
        body.insert("members".into(), Value::Object(members));
        let record = entity::Record { id: EntityId::new(EntityType::Roster, uid), body };
        let out = self.store.put(&self.key, &[record], self.now())?;
        Ok(out.iter().any(|o| o.changed))
    }
}
