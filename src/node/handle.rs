//! [`NodeHandle`]: the node as its callers reach it. The CLI (in-process), the control
//! endpoint and the admin view all execute [`Request`]s through a handle; in a running node the
//! handle also reaches the sync loops, so "sync now" and "retry" run in the loop that owns the
//! peer (which records the attempt), never beside it.
//!
//! Every method blocks (storage, a sync round): call them off the async runtime's threads
//! (`spawn_blocking`), as the control endpoint and the admin view do.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::command::{Reply, Request, Retried};
use super::session_host::SessionReport;
use super::{Node, NodeError};
use crate::id::NodeId;
use crate::store::failures::Operation;

/// How a sync loop answers "sync now": with the report of the round it ran.
pub type SyncReply = oneshot::Sender<SessionReport>;

/// The sync loops of a running node, by the peer each dials.
#[derive(Default)]
pub struct SyncLoops {
    pub(crate) triggers: HashMap<NodeId, mpsc::Sender<SyncReply>>,
}

/// A node and, when `serve` runs it, its sync loops (cheap to clone).
#[derive(Clone)]
pub struct NodeHandle {
    node: Arc<Node>,
    loops: Option<Arc<SyncLoops>>,
}

impl NodeHandle {
    /// A handle on a node no `serve` runs: syncs and retries are refused.
    pub fn new(node: Arc<Node>) -> NodeHandle {
        NodeHandle { node, loops: None }
    }

    /// A handle on the running node, whose sync loops are `loops`.
    pub(crate) fn running(node: Arc<Node>, loops: Arc<SyncLoops>) -> NodeHandle {
        NodeHandle { node, loops: Some(loops) }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Whether the node's sync loops run (in `serve`).
    pub fn is_running(&self) -> bool {
        self.loops.is_some()
    }

    /// Carries out `request` (see [`Node::execute`]); syncs and retries go to the sync loops.
    pub fn execute(
        &self,
        request: Request,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Reply, NodeError> {
        match request {
            Request::Sync { peer } => Ok(Reply::Sessions(self.sync(peer)?)),
            Request::Retry { id } => Ok(Reply::Retried(self.retry(&id)?)),
            other => self.node.execute(other, progress),
        }
    }

    fn loops(&self) -> Result<&SyncLoops, NodeError> {
        self.loops.as_deref().ok_or_else(|| NodeError::NotRunning(self.node.dir.clone()))
    }

    /// Runs a round now with `peer`, or with every dialled peer; returns their reports.
    pub fn sync(&self, peer: Option<NodeId>) -> Result<Vec<SessionReport>, NodeError> {
        let loops = self.loops()?;
        let targets: Vec<NodeId> = match peer {
            Some(p) if loops.triggers.contains_key(&p) => vec![p],
            Some(p) if self.node.config.peer(&p).is_some() => {
                return Err(NodeError::Input(format!(
                    "{p} dials in to this node (a child); it syncs on its own schedule"
                )));
            }
            Some(p) => return Err(NodeError::Input(format!("{p} is not a configured peer"))),
            None => {
                let mut all: Vec<NodeId> = loops.triggers.keys().copied().collect();
                all.sort();
                all
            }
        };
        Ok(targets.into_iter().filter_map(|t| self.round(loops, t)).collect())
    }

    /// One round in `peer`'s loop, waited for (none if the loop is gone: shutting down).
    fn round(&self, loops: &SyncLoops, peer: NodeId) -> Option<SessionReport> {
        let trigger = loops.triggers.get(&peer)?;
        let (tx, rx) = oneshot::channel();
        trigger.blocking_send(tx).ok()?;
        rx.blocking_recv().ok()
    }

    /// Runs failed operation `id` again: a sync in the loop of the peer it concerns (which
    /// records the attempt), or a FHIR push. Says whether the failure is closed now.
    pub fn retry(&self, id: &str) -> Result<Retried, NodeError> {
        let loops = self.loops()?;
        let node = &self.node;
        let rec = node.store.failure(id)?.ok_or_else(|| {
            NodeError::Input(format!("no failure {id:?} (see `sitesync failures`)"))
        })?;
        let what = rec.op.describe();
        let mut sessions = Vec::new();
        let mut push = None;
        match (&rec.op, rec.op.peer()) {
            (Operation::HeldBack { entity, .. }, _) => {
                return Err(NodeError::Input(format!(
                    "{what}: nothing to retry; {entity} is outside what that child may push and \
                     stays with it (widening its types lets its later records through)"
                )));
            }
            (Operation::FhirPush { target }, _) => {
                node.store.record_manual_retry(id, node.now())?;
                push = Some(super::command::JsonOf(node.push_now(target)?));
            }
            (Operation::EmrLink { emr } | Operation::EmrRecord { emr, .. }, _) => {
                node.store.record_manual_retry(id, node.now())?;
                node.emr_now(Some(emr), false)?;
            }
            (_, Some(p)) => {
                if !loops.triggers.contains_key(&p) {
                    return Err(NodeError::Input(format!(
                        "{what}: {p} dials in to this node; the retry happens when it next \
                         connects"
                    )));
                }
                node.store.record_manual_retry(id, node.now())?;
                sessions.extend(self.round(loops, p));
            }
            (_, None) => {
                return Err(NodeError::Input(format!(
                    "{what}: nothing to retry from here; import the bundle or push again"
                )));
            }
        }
        let standing = node.store.failures(node.now())?.into_iter().find(|r| r.op.id() == id);
        Ok(Retried {
            id: id.to_string(),
            what,
            closed: standing.is_none(),
            reason: standing.map(|r| r.reason),
            sessions,
            push,
        })
    }
}
