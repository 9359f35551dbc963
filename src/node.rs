//! The composition root: a node directory (key, config, store) and the operations the CLI and
//! the demo run on it. This is the only layer that reads the clock, the OS RNG and node files.

use std::mem::take;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::batch::Trust;
use crate::batch::{BATCH_CHANGES_MAX, VerifiedBatch};
use crate::bundle::{self, BundleError, BundleWriter};
use crate::config::{Config, ConfigError, Scope, TrustSet, TrustedNode};
use crate::entity::{self, EntityError};
use crate::event::{Event, EventKind};
use crate::id::{EntityId, EntityType, Incarnation, NodeId, Vector};
use crate::identity::{KeyError, Keypair};
use crate::protocol::message::{self, Role, WireBatch};
use crate::store::{ApplyContext, ApplyReport, MergeReport, Rejection};
use crate::store::{PutOutcome, Store, StoreError, Summary};

pub mod env;
pub mod push;
mod resend;
mod scope;
pub mod serve;

pub use env::{Env, OsEnv};
use scope::ScopeCheck;

pub const CONFIG_FILE: &str = "sitesync.toml";
pub const KEY_FILE: &str = "node.key";
pub const STORE_FILE: &str = "store.redb";
/// Changes applied per write transaction during an import, and taken out of waiting per
/// receipt transaction when a gap fills (bounds memory and the work a crash can lose; each
/// chunk is durable on its own).
pub const IMPORT_CHUNK_CHANGES: usize = 200_000;
/// Body bytes applied per import transaction at most (bounds memory for large bodies).
pub const IMPORT_CHUNK_BYTES: usize = 256 * 1024 * 1024;
/// Environment variable that overrides `IMPORT_CHUNK_CHANGES` (smaller: less memory and less
/// work redone after a crash; larger: fewer reloads of documents touched in several chunks).
pub const IMPORT_CHUNK_ENV: &str = "SITESYNC_IMPORT_CHUNK_CHANGES";

fn import_chunk_changes() -> usize {
    crate::env_parse(IMPORT_CHUNK_ENV).filter(|n| *n > 0).unwrap_or(IMPORT_CHUNK_CHANGES)
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0} already holds a sitesync node ({1} exists); refusing to overwrite it")]
    Exists(PathBuf, &'static str),
    #[error(
        "{0} is not a sitesync node directory ({1} is missing); create one with `sitesync init`"
    )]
    NotANode(PathBuf, &'static str),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("{path}: key file is readable by other users (mode {mode:o}); run chmod 600 on it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// Bad record input: exit code 2.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Entity(#[from] EntityError),
}

/// What an import did, summed over its transactions.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub exporter: Option<NodeId>,
    pub frames: u64,
    pub applied: ApplyReport,
    /// Frames that passed their checksum but did not decode as a batch.
    pub frame_errors: Vec<String>,
    /// `(file bytes, declared bytes)` if the bundle was cut short.
    pub truncated: Option<(u64, u64)>,
    /// Frames the header declares but the file does not hold whole.
    pub missing_frames: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    pub batches: u64,
    pub changes: u64,
    pub bytes: u64,
    /// Batches left out because this node holds them without some bodies (withheld by its
    /// parent), with every later batch of the same author.
    pub withheld_batches: u64,
}

/// A conflict with what the node's config and the built-in resolver say about it.
#[derive(Clone, Debug)]
pub struct ConflictView {
    pub conflict: crate::conflict::Conflict,
    pub policy: crate::conflict::Policy,
    /// The value [`crate::conflict::LatestWrite`] would keep.
    pub proposal: Option<usize>,
}

/// How to resolve a conflict.
#[derive(Clone, Debug)]
pub enum Choice {
    /// Keep value N of the conflict.
    Take(usize),
    /// Write this value instead.
    Value(Value),
}

/// An open node directory.
pub struct Node {
    pub dir: PathBuf,
    pub config: Config,
    key: Keypair,
    pub store: Store,
    /// The clock and entropy this node uses ([`OsEnv`] unless opened by the simulator).
    env: std::sync::Arc<dyn Env>,
    /// Roster members by owner, with the roster heads they were read at.
    rosters: std::sync::Mutex<RosterCache>,
}

type RosterCache = std::collections::HashMap<NodeId, (Vec<[u8; 32]>, Vec<NodeId>)>;

fn lock(m: &std::sync::Mutex<RosterCache>) -> std::sync::MutexGuard<'_, RosterCache> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], NodeError> {
    env_bytes(&OsEnv)
}

fn env_bytes<const N: usize>(env: &dyn Env) -> Result<[u8; N], NodeError> {
    let mut out = [0u8; N];
    env.fill_random(&mut out)?;
    Ok(out)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.to_path_buf(), source }
}

impl Node {
    /// Creates a node directory: key (mode 0600), config and store.
    pub fn init(dir: &Path, name: &str) -> Result<Node, NodeError> {
        Node::init_with_env(dir, name, std::sync::Arc::new(OsEnv))
    }

    /// As [`Node::init`], drawing the key and the first incarnation from `env` and keeping
    /// `env` as the node's clock and entropy (the simulator's seeded nodes).
    pub fn init_with_env(
        dir: &Path,
        name: &str,
        env: std::sync::Arc<dyn Env>,
    ) -> Result<Node, NodeError> {
        let config = Config::new(name).map_err(|m| NodeError::Input(format!("--name: {m}")))?;
        for file in [CONFIG_FILE, KEY_FILE, STORE_FILE] {
            if dir.join(file).exists() {
                return Err(NodeError::Exists(dir.to_path_buf(), file));
            }
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = Keypair::from_secret(env_bytes(&*env)?);
        let key_path = dir.join(KEY_FILE);
        write_key(&key_path, &key)?;
        config.save(&dir.join(CONFIG_FILE))?;
        let incarnation = Incarnation(u64::from_le_bytes(env_bytes(&*env)?));
        let store = Store::create(&dir.join(STORE_FILE), key.node_id(), incarnation)?;
        Ok(Node { dir: dir.to_path_buf(), config, key, store, env, rosters: Default::default() })
    }

    /// Opens an existing node directory.
    pub fn open(dir: &Path) -> Result<Node, NodeError> {
        Node::open_with_env(dir, std::sync::Arc::new(OsEnv))
    }

    /// As [`Node::open`], with `env` as the node's clock and entropy.
    pub fn open_with_env(dir: &Path, env: std::sync::Arc<dyn Env>) -> Result<Node, NodeError> {
        for file in [CONFIG_FILE, KEY_FILE, STORE_FILE] {
            if !dir.join(file).exists() {
                return Err(NodeError::NotANode(dir.to_path_buf(), file));
            }
        }
        let config = Config::load(&dir.join(CONFIG_FILE))?;
        let key = read_key(&dir.join(KEY_FILE))?;
        let fresh = Incarnation(u64::from_le_bytes(env_bytes(&*env)?));
        let store = Store::open(&dir.join(STORE_FILE), key.node_id(), fresh, env.now_secs())?;
        let rosters = Default::default();
        let node = Node { dir: dir.to_path_buf(), config, key, store, env, rosters };
        // Waiting batches whose gap was filled by a receipt a crash cut short are applied now.
        let ready = node.store.ready_pending()?;
        if !ready.is_empty() {
            let trust = node.trust_set()?;
            let ctx = node.apply_context(&trust, None, Vec::new())?;
            node.store.promote_ready(&ready, ctx)?;
        }
        // Changes received before a crash but not yet merged are merged now.
        if node.store.has_dirty()? {
            node.merge_received()?;
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.key.node_id()
    }

    /// This node's clock (seconds since the Unix epoch).
    fn now(&self) -> i64 {
        self.env.now_secs()
    }

    fn fresh_incarnation(&self) -> Result<Incarnation, NodeError> {
        Ok(Incarnation(u64::from_le_bytes(env_bytes(&*self.env)?)))
    }

    /// Validates and writes one record or a JSON list of records (one change per record that
    /// differs, all in one transaction). Nothing is written if any record is invalid.
    pub fn put(&self, ty: EntityType, input: &Value) -> Result<Vec<PutOutcome>, NodeError> {
        if ty == EntityType::Roster {
            return Err(NodeError::Input(
                "roster records are written by sitesync from the [[peers]] of sitesync.toml".into(),
            ));
        }
        let items: Vec<&Value> = match input {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        let mut records = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let record =
                entity::validate(ty, item, crate::id::Uid::from_random(env_bytes(&*self.env)?));
            let record = match (record, input.is_array()) {
                (Ok(r), _) => r,
                (Err(e), true) => return Err(NodeError::Input(format!("record {i}: {e}"))),
                (Err(e), false) => return Err(e.into()),
            };
            records.push(record);
        }
        Ok(self.store.put(&self.key, &records, self.now())?)
    }

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

    /// Writes the current config back to `sitesync.toml`.
    pub fn save_config(&self) -> Result<(), NodeError> {
        Ok(self.config.save(&self.dir.join(CONFIG_FILE))?)
    }

    /// Every conflict seen here, newest first, with its policy and the built-in resolver's
    /// proposal.
    pub fn conflicts(&self) -> Result<Vec<ConflictView>, NodeError> {
        use crate::conflict::ConflictResolver;
        Ok(self
            .store
            .conflicts()?
            .into_iter()
            .map(|c| {
                let policy = self.config.conflicts.policy(c.entity.ty, &c.path);
                let proposal = crate::conflict::LatestWrite.propose(&c);
                ConflictView { conflict: c, policy, proposal }
            })
            .collect())
    }

    /// Resolves the open conflict `id` by taking one of its values or writing a new one; the
    /// record must still validate. The resolution is a local change that syncs like any other.
    pub fn resolve(
        &self,
        id: &str,
        choice: Choice,
    ) -> Result<crate::conflict::Conflict, NodeError> {
        let all = self.store.conflicts()?;
        let c = all.into_iter().find(|c| c.id == id).ok_or_else(|| {
            NodeError::Input(format!("no conflict {id:?} here (see `sitesync conflicts`)"))
        })?;
        if !c.is_open() {
            return Err(NodeError::Input(format!("conflict {id} is already closed")));
        }
        let (value, how) = match choice {
            Choice::Take(i) => {
                let v = c.values.get(i).ok_or_else(|| {
                    NodeError::Input(format!(
                        "--take {i}: conflict {id} has {} values (0 to {})",
                        c.values.len(),
                        c.values.len().saturating_sub(1)
                    ))
                })?;
                let value: Value = serde_json::from_str(&v.json)
                    .map_err(|e| NodeError::Input(format!("value {i} of conflict {id}: {e}")))?;
                (value, format!("took value {i}"))
            }
            Choice::Value(v) => (v, "wrote a new value".to_string()),
        };
        let ty = c.entity.ty;
        let check = |record: &Value| {
            entity::validate(ty, record, c.entity.uuid)
                .map(|_| ())
                .map_err(|e| format!("the record would not be valid: {e}"))
        };
        match self.store.resolve(&self.key, &c, &value, how, check, now_secs()) {
            Err(StoreError::Invalid(m)) => Err(NodeError::Input(m)),
            other => other.map_err(NodeError::from),
        }?;
        Ok(c)
    }

    /// Applies the `[audit]` retention (or the given limits) to the audit log; returns how many
    /// entries were removed.
    pub fn compact_audit(
        &self,
        keep_entries: Option<u64>,
        keep_days: Option<u64>,
    ) -> Result<u64, NodeError> {
        let keep_entries = keep_entries.or(self.config.retention.keep_entries);
        let keep_days = keep_days.or(self.config.retention.keep_days);
        if keep_entries.is_none() && keep_days.is_none() {
            return Ok(0);
        }
        let now = now_secs();
        let since = keep_days.map(|d| now - (d.min(1 << 20) as i64) * 86_400);
        Ok(self.store.compact_audit(&self.key, keep_entries, since, now)?)
    }

    /// Records a configuration change in the audit log (ids and settings, no secrets).
    pub fn config_changed(&self, change: String) -> Result<(), NodeError> {
        let kind = EventKind::Config { change };
        Ok(self.store.record(Event { time: now_secs(), kind })?)
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

    pub fn summary(&self) -> Result<Summary, NodeError> {
        Ok(self.store.summary()?)
    }

    /// Moves the store to a new incarnation (required after restoring a backup by hand).
    pub fn reincarnate(&self, reason: &str) -> Result<Incarnation, NodeError> {
        Ok(self.store.reincarnate(self.fresh_incarnation()?, reason, self.now())?.incarnation)
    }

    /// Writes the batches `since` lacks to `out`. `progress(batches_done, batches_total)`.
    pub fn export(
        &self,
        out: &Path,
        since: &Vector,
        peer: Option<NodeId>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ExportReport, NodeError> {
        let vector = self.store.vector()?;
        let total = vector.ahead_of(since);
        let mut writer = BundleWriter::create(out)?;
        let mut report = ExportReport::default();
        // Trusted authors only, rosters before the authors they vouch for (as over the network).
        let order = self.trust_order()?;
        // A bundle carries whole batches: an author's batches stop at the first one whose
        // bodies this node does not hold (withheld by its parent); the receiver gets the rest
        // from a node that holds them.
        let mut stopped: std::collections::BTreeSet<crate::id::AuthorId> = Default::default();
        self.store.export_in_order::<NodeError>(&order, since, |signed, bodies| {
            if stopped.contains(&signed.author()) || bodies.iter().any(Vec::is_empty) {
                stopped.insert(signed.author());
                report.withheld_batches += 1;
                return Ok(true);
            }
            report.changes += signed.batch.changes.len() as u64;
            writer.push(signed, bodies)?;
            report.batches += 1;
            progress(report.batches, total);
            Ok(true)
        })?;
        report.bytes = writer.finish(self.id(), self.now(), vector)?;
        let kind = EventKind::Exported {
            peer,
            batches: report.batches,
            changes: report.changes,
            bytes: report.bytes,
        };
        self.store.record(Event { time: self.now(), kind })?;
        tracing::info!(
            batches = report.batches,
            changes = report.changes,
            bytes = report.bytes,
            "exported bundle"
        );
        Ok(report)
    }

    /// Verifies and applies a bundle. A corrupted bundle applies nothing; a truncated one
    /// applies the whole batches before the cut. `progress(frames_done, frames_total)`.
    pub fn import(
        &self,
        path: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ImportReport, NodeError> {
        let started = Instant::now();
        let scan = bundle::scan(path)?;
        let mut report = ImportReport {
            exporter: Some(scan.header.exporter),
            truncated: scan.truncated,
            missing_frames: scan.header.frames - scan.usable_frames,
            ..ImportReport::default()
        };
        let mut trust = self.trust_set()?;
        let mut chunk: Vec<VerifiedBatch> = Vec::new();
        // Batches of authors not trusted yet: a roster earlier in the bundle may vouch for them
        // once applied, so they are checked again after each chunk.
        let mut deferred: Vec<crate::store::BatchWithBodies> = Vec::new();
        let mut refused: Vec<Rejection> = Vec::new();
        let mut chunk_changes = 0;
        let mut chunk_bytes = 0;
        let chunk_limit = import_chunk_changes();
        let mut frames = bundle::frames(path, &scan)?.peekable();
        while let Some(item) = frames.next() {
            report.frames += 1;
            match item {
                Ok((signed, bodies)) if !trust.trusts(&signed.author().node) => {
                    deferred.push((signed, bodies));
                }
                Ok((signed, bodies)) => {
                    let (author, seq) = (signed.author(), signed.seq());
                    // Bundles carry every body: only a parent's live session withholds.
                    match signed.verify(bodies, &trust, false) {
                        Ok(vb) => {
                            chunk_changes += vb.changes.len();
                            chunk_bytes += vb.bodies.iter().map(Vec::len).sum::<usize>();
                            chunk.push(vb);
                        }
                        Err(e) => refused.push(Rejection { author, seq, reason: e.to_string() }),
                    }
                }
                Err(reason) => {
                    report.frame_errors.push(format!("frame {}: {reason}", report.frames - 1))
                }
            }
            let last = frames.peek().is_none();
            if last
                || chunk_changes + BATCH_CHANGES_MAX > chunk_limit
                || chunk_bytes >= IMPORT_CHUNK_BYTES
            {
                let from = Some(scan.header.exporter);
                let r =
                    self.receive(&trust, from, std::mem::take(&mut chunk), take(&mut refused))?;
                report.applied.add(r);
                chunk_changes = 0;
                chunk_bytes = 0;
                // Retry deferred authors until a pass accepts none (rosters vouch level by
                // level); at the end of the bundle, what is still untrusted is refused.
                while !deferred.is_empty() {
                    trust = self.trust_set()?;
                    let mut verified = Vec::new();
                    let before = deferred.len();
                    deferred = sort_by_trust(
                        take(&mut deferred),
                        &trust,
                        false,
                        false,
                        &mut verified,
                        &mut refused,
                    );
                    let progress = deferred.len() < before;
                    if !progress && last {
                        sort_by_trust(
                            take(&mut deferred),
                            &trust,
                            true,
                            false,
                            &mut verified,
                            &mut refused,
                        );
                    }
                    if !verified.is_empty() || !refused.is_empty() {
                        let from = Some(scan.header.exporter);
                        let r = self.receive(&trust, from, verified, take(&mut refused))?;
                        report.applied.add(r);
                    }
                    if !progress {
                        break;
                    }
                }
            }
            progress(report.frames, scan.usable_frames);
        }
        let merged = self.merge_received()?;
        for (entity, hash, reason) in merged.skipped {
            report.applied.unmergeable.push((entity, format!("change {hash}: {reason}")));
        }
        if report.truncated.is_none() {
            self.store.learn_peer_vector(&scan.header.exporter, &scan.header.vector, self.now())?;
        }
        let a = &report.applied;
        tracing::info!(
            frames = report.frames,
            applied = a.applied_batches,
            changes = a.applied_changes,
            present = a.present,
            rejected = a.rejected.len(),
            ms = started.elapsed().as_millis() as u64,
            "imported bundle"
        );
        Ok(report)
    }

    /// The next batches `after` lacks, in wire form, within one message's limits.
    /// `order` is [`Node::trust_order`], taken once per session: only authors this node trusts
    /// are relayed (a node removed from every roster stops travelling), rosters first.
    /// `child` is the receiving child and its scope, when it is one: bodies outside the scope
    /// are withheld and remembered for a later re-send (`src/node/resend.rs`).
    pub fn fetch_wire(
        &self,
        order: &[NodeId],
        after: &Vector,
        child: Option<(NodeId, &Scope)>,
    ) -> Result<Vec<WireBatch>, NodeError> {
        let batches = self.store.fetch_after(
            order,
            after,
            message::BATCHES_PER_MESSAGE_MAX,
            message::MESSAGE_BODY_BYTES_TARGET,
        )?;
        let Some((child, scope)) = child.filter(|(_, s)| !s.is_everything()) else {
            return Ok(batches.into_iter().map(|(b, bodies)| WireBatch::new(b, bodies)).collect());
        };
        // Scope follows the merged records: merge what arrived since the last merge first.
        self.merge_received()?;
        let mut check = ScopeCheck::new(self, scope);
        let mut out = Vec::with_capacity(batches.len());
        let mut withheld = Vec::new();
        let mut sent = std::collections::BTreeSet::new();
        for (signed, mut bodies) in batches {
            for (c, body) in signed.batch.changes.iter().zip(bodies.iter_mut()) {
                // An empty body is not held here (withheld by this node's parent): it cannot
                // be re-sent from here, so it is not remembered.
                if body.is_empty() {
                    continue;
                }
                let (allowed, anchors) = check.verdict(&c.entity)?;
                let anchors: Vec<String> = anchors.iter().map(EntityId::key).collect();
                if allowed {
                    sent.extend(anchors);
                } else {
                    body.clear();
                    withheld.push((anchors, c.entity, c.body));
                }
            }
            out.push(WireBatch::new(signed, bodies));
        }
        // Durable before the message leaves: a body withheld and forgotten is never re-sent.
        self.store.note_withheld(&child, &withheld, &sent)?;
        Ok(out)
    }

    /// Verifies and applies batches received from `from` in one transaction; returns the
    /// vector held afterwards, the report, and how many batches failed verification (bad
    /// signature, untrusted author, wrong hashes or actors: a peer that sends those is cut off).
    pub fn apply_wire(
        &self,
        from: NodeId,
        batches: Vec<WireBatch>,
    ) -> Result<(Vector, ApplyReport, usize), NodeError> {
        let trust = self.trust_set()?;
        let peer = self.config.peers.iter().find(|p| p.node_id == from);
        // Only a parent withholds bodies (outside this node's scope); a child pushes only the
        // entity types its entry allows.
        let withheld_ok = peer.is_some_and(|p| p.role == Role::Parent);
        let scope = peer.filter(|p| p.role == Role::Child).map(|p| &p.scope);
        let (mut verified, mut refused) = (Vec::with_capacity(batches.len()), Vec::new());
        let mut parts = Vec::with_capacity(batches.len());
        for b in batches {
            let (signed, bodies) = b.into_parts();
            let outside = scope.and_then(|scope| {
                signed.batch.changes.iter().find(|c| !scope.may_push(c.entity.ty))
            });
            match outside {
                Some(c) => refused.push(Rejection {
                    author: signed.author(),
                    seq: signed.seq(),
                    reason: format!(
                        "pushes a {} record, outside this child's scope ({})",
                        c.entity.ty,
                        scope.map(|s| s.describe()).unwrap_or_default()
                    ),
                }),
                None => parts.push((signed, bodies)),
            }
        }
        let mut untrusted =
            sort_by_trust(parts, &trust, false, withheld_ok, &mut verified, &mut refused);
        // Rosters in this message may authorize the authors of later batches in it, level by
        // level: apply what verifies, recompute trust, and retry the rest until nothing more
        // is accepted.
        let mut report = ApplyReport::default();
        while !untrusted.is_empty() && !verified.is_empty() {
            let r = self.apply_verified(from, take(&mut verified), Vec::new())?;
            report.add(r);
            let trust = self.trust_set()?;
            untrusted =
                sort_by_trust(untrusted, &trust, false, withheld_ok, &mut verified, &mut refused);
        }
        let trust = self.trust_set()?;
        sort_by_trust(untrusted, &trust, true, withheld_ok, &mut verified, &mut refused);
        let failed_verification = refused.len();
        let last = self.apply_verified(from, verified, refused)?;
        report.add(last);
        Ok((self.store.vector()?, report, failed_verification))
    }

    fn apply_verified(
        &self,
        from: NodeId,
        verified: Vec<VerifiedBatch>,
        refused: Vec<Rejection>,
    ) -> Result<ApplyReport, NodeError> {
        let trust = self.trust_set()?;
        self.receive(&trust, Some(from), verified, refused)
    }

    /// One receipt transaction for verified batches (and the refusals to report with them).
    fn receive(
        &self,
        trust: &TrustSet,
        from: Option<NodeId>,
        verified: Vec<VerifiedBatch>,
        refused: Vec<Rejection>,
    ) -> Result<ApplyReport, NodeError> {
        let ctx = self.apply_context(trust, from, refused)?;
        Ok(self.store.apply(verified, ctx)?)
    }

    fn apply_context<'a>(
        &self,
        trust: &'a TrustSet,
        from: Option<NodeId>,
        refused: Vec<Rejection>,
    ) -> Result<ApplyContext<'a>, NodeError> {
        Ok(ApplyContext {
            trust,
            from,
            refused,
            fresh_incarnation: self.fresh_incarnation()?,
            time: self.now(),
            threads: worker_threads(),
            give_up_after: self.config.failures.give_up_after,
            promote_max: (import_chunk_changes(), IMPORT_CHUNK_BYTES),
        })
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
        let id = EntityId::new(EntityType::Roster, crate::id::Uid::of_node(owner));
        // Trust is computed for every received message, over every roster: the members are
        // reused while the roster document's heads (which fix its content) stay the same.
        let Some(heads) = self.store.heads(&id)? else { return Ok(Vec::new()) };
        let cache =
            |c: &mut RosterCache| c.get(owner).filter(|(h, _)| *h == heads).map(|e| e.1.clone());
        if let Some(members) = cache(&mut lock(&self.rosters)) {
            return Ok(members);
        }
        let Some((doc, _)) = self.store.get(&id)? else { return Ok(Vec::new()) };
        let members = doc.get("members").and_then(Value::as_object);
        let members: Vec<NodeId> =
            members.map_or_else(Vec::new, |m| m.keys().filter_map(|k| k.parse().ok()).collect());
        lock(&self.rosters).insert(*owner, (heads, members.clone()));
        Ok(members)
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

    /// Merges every received but not yet merged change into its document (once per document).
    pub fn merge_received(&self) -> Result<MergeReport, NodeError> {
        let started = std::time::Instant::now();
        let r = self.store.merge_dirty(worker_threads(), self.now())?;
        Ok(log_merged(started, r))
    }

    /// As [`Node::merge_received`], in one transaction of at most `max_docs` documents.
    pub fn merge_received_up_to(&self, max_docs: usize) -> Result<MergeReport, NodeError> {
        let started = std::time::Instant::now();
        let r = self.store.merge_some(worker_threads(), self.now(), max_docs)?;
        Ok(log_merged(started, r.unwrap_or_default()))
    }

    /// Signing key access for tools that build bundles by hand (tests, benches, the demo).
    pub fn keypair(&self) -> &Keypair {
        &self.key
    }
}

/// The node's status as `status --json` prints it: identity, vector, counts, digest, and per
/// configured peer its role, address, contacts, lag both ways, next retry and last error.
pub fn status_json(node: &Node) -> Result<serde_json::Value, NodeError> {
    use serde_json::json;
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

/// Verifies the batches whose authors `trust` accepts into `verified` (or `refused` with the
/// reason). The batches of other authors are returned untouched, for a later pass once a roster
/// may vouch for them; with `finally` they are refused too.
fn sort_by_trust(
    batches: Vec<crate::store::BatchWithBodies>,
    trust: &TrustSet,
    finally: bool,
    withheld_ok: bool,
    verified: &mut Vec<VerifiedBatch>,
    refused: &mut Vec<Rejection>,
) -> Vec<crate::store::BatchWithBodies> {
    let mut later = Vec::new();
    for (signed, bodies) in batches {
        if !finally && !trust.trusts(&signed.author().node) {
            later.push((signed, bodies));
            continue;
        }
        let (author, seq) = (signed.author(), signed.seq());
        match signed.verify(bodies, trust, withheld_ok) {
            Ok(vb) => verified.push(vb),
            Err(e) => refused.push(Rejection { author, seq, reason: e.to_string() }),
        }
    }
    later
}

/// Logs a merge that did something (ids and counts only) and hands its report back.
fn log_merged(started: std::time::Instant, r: MergeReport) -> MergeReport {
    if r.documents > 0 {
        tracing::info!(
            documents = r.documents,
            changes = r.changes,
            skipped = r.skipped.len(),
            millis = started.elapsed().as_millis() as u64,
            "merged"
        );
    }
    r
}

/// Merge workers: one per core, at least two (the reading thread then overlaps its redb reads
/// with merging even on one core), at most eight.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(2, 8)
}

fn write_key(path: &Path, key: &Keypair) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(key.to_file_text().as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn read_key(path: &Path) -> Result<Keypair, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(NodeError::KeyMode { path: path.to_path_buf(), mode });
    }
    let text = std::fs::read(path).map_err(io(path))?;
    let text = String::from_utf8(text)
        .map_err(|_| NodeError::Key { path: path.to_path_buf(), source: KeyError::Header })?;
    Keypair::from_file_text(&text)
        .map_err(|source| NodeError::Key { path: path.to_path_buf(), source })
}

/// Parses an entity id given as TYPE and UUID arguments.
pub fn entity_id(ty: &str, uuid: &str) -> Result<EntityId, NodeError> {
    let ty: EntityType =
        ty.parse().map_err(|e: crate::id::IdError| NodeError::Input(e.to_string()))?;
    let uuid = crate::id::parse_uuid(uuid).map_err(|e| NodeError::Input(e.to_string()))?;
    Ok(EntityId::new(ty, uuid))
}
