//! The composition root: a node directory (key, config, store), the operations every caller
//! runs on it, and the running node. Node code reads the clock and draws randomness only
//! through the node's [`Env`] (the OS's, or the simulator's seeded one).
//!
//! Rooms: `command.rs` (what a node can be asked: [`Request`], [`Reply`], [`Node::execute`]),
//! `handle.rs` ([`NodeHandle`]: the node and its sync loops, as the CLI, the control endpoint and
//! the admin view reach it), `control.rs` (the control endpoint), `admin_view.rs` (the admin
//! view's data), `trust.rs` (trust and rosters), `bundles.rs` (bundle export and import),
//! `receive.rs` (wire batches in and out, merging), `session_host.rs` (one session's effects,
//! for `serve` and the simulator), `schedule.rs` (when a sync loop dials next), `serve.rs` (the
//! running node: runtime, listener, dialling, shutdown), `push.rs` (FHIR export and push),
//! `resend.rs` and `scope.rs` (a child's scope and the re-send of withheld bodies),
//! `status.rs`, `files.rs`, `env.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::entity::{self, EntityError};
use crate::event::{Event, EventKind};
use crate::id::{EntityType, Incarnation, NodeId};
use crate::identity::{KeyError, Keypair};
use crate::store::{PutOutcome, Store, StoreError, Summary};

mod admin_view;
mod bundles;
pub mod command;
pub mod control;
pub mod emr;
pub mod env;
mod files;
mod handle;
pub mod push;
mod receive;
mod resend;
pub mod schedule;
mod scope;
pub mod serve;
pub mod session_host;
mod status;
mod trust;

pub use admin_view::AdminView;
pub use bundles::{BundleExportReport, ImportReport};
pub use command::{Choice, Json, Reply, Request};
pub use env::{Env, OsEnv, now_secs};
pub use files::{TOKEN_FILE, admin_token};
pub use handle::{NodeHandle, SyncLoops};
pub use receive::Receiver;
pub use serve::{ServeEvents, SyncProgress};
pub use status::status_json;

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
    Bundle(#[from] crate::bundle::BundleError),
    /// Bad input: exit code 2.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Entity(#[from] EntityError),
    /// Nothing by that id (a record, a conflict).
    #[error("{0}")]
    NotFound(String),
    /// The request needs the running node's sync loops.
    #[error("no node is running in {}; start it with `sitesync --dir {} serve`", .0.display(), .0.display())]
    NotRunning(PathBuf),
    /// The running node refused or failed a request it was sent; the text is its.
    #[error("{0}")]
    Remote(String),
}

impl NodeError {
    /// Whether this is bad input (nothing was written; exit code 2).
    pub fn is_input(&self) -> bool {
        matches!(self, NodeError::Input(_) | NodeError::Entity(_))
    }
}

/// A conflict with what the node's config and the built-in resolver say about it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConflictView {
    pub conflict: crate::conflict::Conflict,
    pub policy: crate::conflict::Policy,
    /// The value [`crate::conflict::LatestWrite`] would keep.
    pub proposal: Option<usize>,
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
    rosters: std::sync::Mutex<trust::RosterCache>,
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
        files::write_key(&key_path, &key)?;
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
        let key = files::read_key(&dir.join(KEY_FILE))?;
        let fresh = Incarnation(u64::from_le_bytes(env_bytes(&*env)?));
        let store = Store::open(&dir.join(STORE_FILE), key.node_id(), fresh, env.now_secs())?;
        let rosters = Default::default();
        let node = Node { dir: dir.to_path_buf(), config, key, store, env, rosters };
        // Waiting batches whose gap was filled by a receipt a crash cut short are applied now.
        let ready = node.store.ready_pending()?;
        if !ready.is_empty() {
            let trust = node.trust_set()?;
            let ctx = node.apply_context(&trust, None, Vec::new(), None)?;
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

    /// This node's clock (seconds since the Unix epoch): the only clock node code reads.
    pub(crate) fn now(&self) -> i64 {
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
            // Every write must fit the wire: a record's change fits one batch, a batch one frame.
            let size = serde_json::to_vec(&record.body).map_or(0, |b| b.len());
            if size > entity::RECORD_BYTES_MAX {
                let which = if input.is_array() { format!("record {i}: ") } else { String::new() };
                return Err(NodeError::Input(format!(
                    "{which}{ty} {}: {size} bytes, more than the {} bytes one record may hold \
                     (RECORD_BYTES_MAX); nothing was written",
                    record.id.uuid,
                    entity::RECORD_BYTES_MAX
                )));
            }
            records.push(record);
        }
        Ok(self.store.put(&self.key, &records, self.now())?)
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
            Choice::Value(Json(v)) => (v, "wrote a new value".to_string()),
        };
        let ty = c.entity.ty;
        let check = |record: &Value| {
            entity::validate(ty, record, c.entity.uuid)
                .map(|_| ())
                .map_err(|e| format!("the record would not be valid: {e}"))
        };
        match self.store.resolve(&self.key, &c, &value, how, check, self.now()) {
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
        let now = self.now();
        let since = keep_days.map(|d| now - (d.min(1 << 20) as i64) * 86_400);
        Ok(self.store.compact_audit(&self.key, keep_entries, since, now)?)
    }

    /// Records a configuration change in the audit log (ids and settings, no secrets).
    pub fn config_changed(&self, change: String) -> Result<(), NodeError> {
        let kind = EventKind::Config { change };
        Ok(self.store.record(Event { time: self.now(), kind })?)
    }

    pub fn summary(&self) -> Result<Summary, NodeError> {
        Ok(self.store.summary()?)
    }

    /// Moves the store to a new incarnation (required after restoring a backup by hand).
    pub fn reincarnate(&self, reason: &str) -> Result<Incarnation, NodeError> {
        Ok(self.store.reincarnate(self.fresh_incarnation()?, reason, self.now())?.incarnation)
    }

    /// Signing key access for tools that build bundles by hand (tests, benches, the demo).
    pub fn keypair(&self) -> &Keypair {
        &self.key
    }

    /// Milliseconds on this node's monotonic clock.
    pub(crate) fn millis(&self) -> u64 {
        self.env.millis()
    }

    /// Random bytes from this node's entropy.
    pub(crate) fn random_bytes<const N: usize>(&self) -> Result<[u8; N], NodeError> {
        env_bytes(&*self.env)
    }

    /// A random u32 from this node's entropy (0 if it fails: jitter only).
    pub(crate) fn random_u32(&self) -> u32 {
        self.random_bytes::<4>().map(u32::from_le_bytes).unwrap_or(0)
    }

    /// The admin view's token, created on first use (see `files.rs`).
    pub fn admin_token(&self) -> Result<String, NodeError> {
        admin_token(&self.dir, || self.random_bytes())
    }
}

/// Parses an entity id given as TYPE and UUID arguments.
pub fn entity_id(ty: &str, uuid: &str) -> Result<crate::id::EntityId, NodeError> {
    crate::id::EntityId::parse_parts(ty, uuid).map_err(|e| NodeError::Input(e.to_string()))
}
