//! The command line: clap definitions and the commands, which call into [`crate::node`].
//! Errors carry an exit code: 2 for bad input (nothing written), 1 for everything else. The
//! network commands live in `cli/net.rs`.

mod admin;
mod fhir;
mod net;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::id::{EntityType, NodeId, Vector};
use crate::node::{self, ImportReport, Node, NodeError};

/// sitesync: offline-first replication of clinic medical records.
///
/// Every site runs a node beside its EMR. Records are Automerge documents in a local store;
/// nodes exchange signed batches of changes (as bundle files on a USB stick, or over the network)
/// and converge to identical records. Concurrent edits of one field are kept as conflicts.
#[derive(Parser, Debug)]
#[command(name = "sitesync", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Node directory (holds node.key, sitesync.toml and store.redb).
    #[arg(long, global = true, env = "SITESYNC_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Log filter (e.g. info, debug, sitesync=trace); logs go to stderr. Also RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a node: a new ed25519 key (mode 0600), sitesync.toml and the store. Prints the node id.
    Init {
        /// Human name of this node, e.g. the clinic's name.
        #[arg(long)]
        name: String,
    },
    /// Print this node's id (lowercase hex of its public key).
    Id,
    /// Validate a JSON record (or a JSON list of records) and write it as one change per record.
    ///
    /// Prints TYPE/UUID for each record; a record without "uuid" gets a new random one. A put
    /// carries the whole record: fields left out are cleared, except items of collections
    /// (names, identifiers, ...), which are kept: void an item with "voided": true.
    Put {
        /// Entity type: patient, person, location, visit, encounter, obs, condition, allergy,
        /// appointment, relationship, provider, concept or generic.
        #[arg(value_name = "TYPE")]
        ty: String,
        /// JSON file, or - for standard input.
        file: PathBuf,
    },
    /// Print a record as JSON.
    Get {
        #[arg(value_name = "TYPE")]
        ty: String,
        uuid: String,
        /// Also list fields holding concurrent values (each value, its author and time, the winner).
        #[arg(long)]
        conflicts: bool,
    },
    /// List record ids (TYPE/UUID), of one type or all.
    List {
        #[arg(value_name = "TYPE")]
        ty: Option<String>,
    },
    /// Manage the nodes whose changes this node accepts.
    Trust {
        #[command(subcommand)]
        action: TrustAction,
    },
    /// Write the signed batches another node lacks to a bundle file (the USB-stick path).
    Export {
        /// Bundle file to write (written atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Send only what this node is known to lack (learnt from its last bundle).
        #[arg(long, value_name = "NODE_ID", conflicts_with = "since")]
        peer: Option<String>,
        /// Send only what the given vector lacks (a file from `sitesync vector`).
        #[arg(long, value_name = "VECTOR_FILE")]
        since: Option<PathBuf>,
    },
    /// Verify and apply a bundle file; prints what was applied, already present and rejected.
    Import { file: PathBuf },
    /// Print node id, vector, entity counts, the state digest, and per peer: contacts, lag, next
    /// retry and last error (through the running node if it runs).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print this node's vector as JSON (give it to `export --since` on another node).
    Vector {
        /// Write to a file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show the node's audit log (writes, imports, exports, sessions, rejections), newest last.
    Events {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List conflicts: fields with concurrent values after a merge. `open` ones wait for an
    /// administrator (policy `review`); `auto` ones keep the deterministic winner; `closed` ones
    /// were superseded by a later change (a resolution here or elsewhere).
    Conflicts {
        /// Only the open ones.
        #[arg(long)]
        open: bool,
        #[arg(long)]
        json: bool,
    },
    /// Resolve a conflict with one of its values or a new one. The resolution is a new local
    /// change: it syncs like any change and closes the conflict on every node that merges it.
    Resolve {
        conflict_id: String,
        /// Keep value N (as numbered by `conflicts`).
        #[arg(long, value_name = "N", conflicts_with = "value", required_unless_present = "value")]
        take: Option<usize>,
        /// Write this JSON value instead (validated with the record).
        #[arg(long, value_name = "JSON")]
        value: Option<String>,
    },
    /// The audit log: `audit verify` checks its hash chain and names every entry that was
    /// edited, deleted or moved (exit 1 if any); `audit list` is `events`.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Move the store to a new incarnation. Run this after restoring the node from a backup.
    Reincarnate,
    /// Run the node: accept connections from configured peers, sync with parents and peers on
    /// schedule (retrying with backoff), until Ctrl-C or SIGTERM.
    Serve,
    /// Sync now, through the running node: with every dialled peer, or one. Prints what moved.
    Sync {
        /// Only this peer.
        #[arg(long, value_name = "NODE_ID")]
        peer: Option<String>,
        /// The record to sync now. Batches travel in order, so this runs a full round with the
        /// peers and then says whether the record's latest change is here.
        #[arg(long, value_name = "TYPE/UUID")]
        entity: Option<String>,
    },
    /// List failed operations: syncs with a peer, batches refused on receipt, FHIR pushes. Each
    /// keeps what is needed to run it again; `needs attention` marks those that failed
    /// `[failures] give_up_after` times in a row.
    Failures {
        #[arg(long)]
        json: bool,
    },
    /// Retry a failed operation now, through the running node (ID as listed by `failures`).
    /// Automatic retries with backoff go on regardless.
    Retry {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Manage the network peers (parent, children, peers) in sitesync.toml.
    Peer {
        #[command(subcommand)]
        action: PeerAction,
    },
    /// Set where this node listens and how often it syncs (the network section of sitesync.toml).
    Network {
        /// Address to accept connections on (IP:PORT); a parent must listen.
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,
        /// Seconds between sync rounds with each dialled peer.
        #[arg(long, value_name = "SECONDS")]
        interval: Option<u64>,
    },
    /// Run the end-to-end demo in a temporary folder.
    Demo,
    /// FHIR R4: export records, push them to a FHIR server, push status (docs/fhir-mapping.md).
    Fhir {
        #[command(subcommand)]
        action: fhir::FhirAction,
    },
    /// The admin web view that `serve` runs: its token and address.
    Admin {
        #[command(subcommand)]
        action: admin::AdminAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeerAction {
    /// Add (or update) a peer. Its changes are trusted; it may connect to this node.
    Add {
        node_id: String,
        /// The other node's role toward this one: parent (this node dials it), child (it dials
        /// this node), or peer (either dials).
        #[arg(long)]
        role: String,
        /// Where this node dials it (IP:PORT); required for a parent.
        #[arg(long, value_name = "IP:PORT")]
        addr: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A child only: the entity types it may push and receive, comma-separated (default:
        /// all). Rosters always travel.
        #[arg(long, value_delimiter = ',', value_name = "TYPE,...")]
        types: Option<Vec<String>>,
        /// A child only: its catchment, location uuids comma-separated (default: everywhere).
        /// Patient-linked records reach it only when their patient has an identifier at one of
        /// these locations; the others arrive as signed manifests without bodies.
        #[arg(long, value_delimiter = ',', value_name = "UUID,...")]
        catchment: Option<Vec<String>>,
    },
    /// Remove a peer (its changes already applied stay).
    Remove { node_id: String },
    /// List peers.
    List,
}

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Check the chain: every entry links to the one before it, and the last one to the head
    /// recorded with it.
    Verify,
    /// Show the last entries, newest last.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// A child's entries, from the copy this node keeps as its parent.
        #[arg(long, value_name = "NODE_ID")]
        origin: Option<String>,
    },
    /// Remove old entries (the `[audit]` retention, or these limits), keeping a checkpoint
    /// signed by this node so the rest still verifies.
    Compact {
        #[arg(long, value_name = "N")]
        keep_entries: Option<u64>,
        #[arg(long, value_name = "DAYS")]
        keep_days: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TrustAction {
    /// Trust changes authored by NODE_ID.
    Add {
        node_id: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop trusting NODE_ID (changes already applied stay).
    Remove { node_id: String },
    /// List trusted nodes.
    List,
}

thread_local! {
    /// Set while a running node executes a forwarded command on this thread: its open node.
    static ATTACHED: std::cell::RefCell<Option<std::sync::Arc<Node>>> =
        const { std::cell::RefCell::new(None) };
    /// Set while a forwarded command runs: its standard output, captured.
    static CAPTURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Set while a forwarded command runs: the standard input the client sent.
    static STDIN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Writes one line to standard output. A closed pipe (`sitesync list | head -1`) ends the
/// process quietly with success, as Unix tools do, where `println!` would panic.
pub fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let captured = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let out = c.as_mut()?;
        let _ = std::fmt::Write::write_fmt(out, args);
        out.push('\n');
        Some(())
    });
    if captured.is_some() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("sitesync: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that survives a closed pipe (see [`say_line`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::cli::say_line(format_args!($($arg)*)) };
}

/// An error with the exit code it should produce.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = match error.downcast_ref::<NodeError>() {
            Some(NodeError::Input(_) | NodeError::Entity(_)) => 2,
            _ => 1,
        };
        Failure { code, error }
    }
}

pub(crate) fn input(msg: impl Into<String>) -> Failure {
    Failure { code: 2, error: anyhow!(msg.into()) }
}

pub(crate) fn node_dir(cli: &Cli) -> Result<&Path, Failure> {
    cli.dir.as_deref().ok_or_else(|| input("no node directory: pass --dir DIR or set SITESYNC_DIR"))
}

/// A node opened by this process, or the running node a forwarded command executes in.
pub(crate) enum NodeRef {
    Owned(Box<Node>),
    Shared(std::sync::Arc<Node>),
}

impl std::ops::Deref for NodeRef {
    type Target = Node;
    fn deref(&self) -> &Node {
        match self {
            NodeRef::Owned(n) => n,
            NodeRef::Shared(n) => n,
        }
    }
}

impl NodeRef {
    /// For commands that edit the config: only with the node stopped (it reads its config at
    /// start).
    pub(crate) fn owned(self, dir: &Path) -> Result<Node, Failure> {
        match self {
            NodeRef::Owned(n) => Ok(*n),
            NodeRef::Shared(_) => Err(Failure {
                code: 1,
                error: anyhow!(
                    "the node in {} is running; stop it to change its configuration",
                    dir.display()
                ),
            }),
        }
    }
}

pub(crate) fn open(cli: &Cli) -> Result<NodeRef, Failure> {
    if let Some(node) = ATTACHED.with(|a| a.borrow().clone()) {
        return Ok(NodeRef::Shared(node));
    }
    let dir = node_dir(cli)?;
    match Node::open(dir).map(|n| NodeRef::Owned(Box::new(n))) {
        Err(NodeError::Store(crate::store::StoreError::Busy)) => Err(Failure {
            code: 1,
            error: anyhow!(
                "the node in {} is running (sitesync serve) and holds its store: stop it for this \
                 command (put, get, list, export, import, vector, events, status, sync and fhir work \
                 while it runs)",
                dir.display()
            ),
        }),
        other => Ok(other?),
    }
}

pub(crate) fn parse_node_id(s: &str) -> Result<NodeId, Failure> {
    s.parse().map_err(|e: crate::id::IdError| input(e.to_string()))
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    progress_bar_of(what, "batches")
}

/// A progress bar counting `unit` (hidden while a running node executes a forwarded command).
pub(crate) fn progress_bar_of(what: &str, unit: &str) -> indicatif::ProgressBar {
    if CAPTURE.with(|c| c.borrow().is_some()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"
    ));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// Commands a running node executes on behalf of the CLI (the store is open in one process
/// only, so while `serve` runs these go to it through the control endpoint).
fn forwardable(command: &Command) -> bool {
    matches!(
        command,
        Command::Id
            | Command::Put { .. }
            | Command::Get { .. }
            | Command::List { .. }
            | Command::Export { .. }
            | Command::Import { .. }
            | Command::Vector { .. }
            | Command::Events { .. }
            | Command::Audit { .. }
            | Command::Conflicts { .. }
            | Command::Resolve { .. }
            | Command::Failures { .. }
            | Command::Fhir { .. }
    )
}

pub(crate) fn absolute(path: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
    Ok(abs.to_string_lossy().into_owned())
}

/// The command's arguments with file paths made absolute (the node's working directory is not
/// the caller's), and standard input read if the command takes it.
fn forward_args(command: &Command) -> Result<(Vec<String>, Option<String>), Failure> {
    let mut stdin = None;
    let args = match command {
        Command::Id => vec!["id".into()],
        Command::Put { ty, file } => {
            let file = if file == Path::new("-") {
                let mut text = String::new();
                let limit = crate::entity::INPUT_BYTES_MAX as u64;
                std::io::stdin()
                    .take(limit + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| input(format!("standard input: {e}")))?;
                stdin = Some(text);
                "-".to_string()
            } else {
                absolute(file)?
            };
            vec!["put".into(), ty.clone(), file]
        }
        Command::Get { ty, uuid, conflicts } => {
            let mut a = vec!["get".into(), ty.clone(), uuid.clone()];
            if *conflicts {
                a.push("--conflicts".into());
            }
            a
        }
        Command::List { ty } => std::iter::once("list".to_string()).chain(ty.clone()).collect(),
        Command::Export { out, peer, since } => {
            let mut a = vec!["export".into(), "--out".into(), absolute(out)?];
            if let Some(p) = peer {
                a.extend(["--peer".into(), p.clone()]);
            }
            if let Some(f) = since {
                a.extend(["--since".into(), absolute(f)?]);
            }
            a
        }
        Command::Import { file } => vec!["import".into(), absolute(file)?],
        Command::Vector { out } => match out {
            Some(f) => vec!["vector".into(), "--out".into(), absolute(f)?],
            None => vec!["vector".into()],
        },
        Command::Events { limit } => vec!["events".into(), "--limit".into(), limit.to_string()],
        Command::Audit { action: AuditAction::Verify } => vec!["audit".into(), "verify".into()],
        Command::Conflicts { open, json } => {
            let mut a = vec!["conflicts".to_string()];
            if *open {
                a.push("--open".into());
            }
            if *json {
                a.push("--json".into());
            }
            a
        }
        Command::Resolve { conflict_id, take, value } => {
            let mut a = vec!["resolve".to_string(), conflict_id.clone()];
            if let Some(t) = take {
                a.extend(["--take".to_string(), t.to_string()]);
            }
            if let Some(v) = value {
                a.extend(["--value".to_string(), v.clone()]);
            }
            a
        }
        Command::Failures { json } => {
            let mut a = vec!["failures".to_string()];
            if *json {
                a.push("--json".into());
            }
            a
        }
        Command::Audit { action: AuditAction::List { limit, origin } } => {
            let mut a = vec!["audit".into(), "list".into(), "--limit".into(), limit.to_string()];
            if let Some(o) = origin {
                a.extend(["--origin".to_string(), o.clone()]);
            }
            a
        }
        Command::Audit { action: AuditAction::Compact { keep_entries, keep_days } } => {
            let mut a = vec!["audit".to_string(), "compact".to_string()];
            if let Some(k) = keep_entries {
                a.extend(["--keep-entries".to_string(), k.to_string()]);
            }
            if let Some(d) = keep_days {
                a.extend(["--keep-days".to_string(), d.to_string()]);
            }
            a
        }
        Command::Fhir { action } => fhir::forward_args(action)?,
        _ => Vec::new(),
    };
    Ok((args, stdin))
}

/// Executes a forwarded command inside the running node: returns (exit code, stdout, stderr).
pub fn execute_forwarded(
    node: std::sync::Arc<Node>,
    args: Vec<String>,
    stdin: Option<String>,
) -> (i32, String, String) {
    let argv = std::iter::once("sitesync".to_string()).chain(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) if forwardable(&c.command) => c,
        Ok(_) => return (2, String::new(), "this command cannot run through the node".into()),
        Err(e) => return (2, String::new(), e.to_string()),
    };
    ATTACHED.with(|a| *a.borrow_mut() = Some(node));
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    STDIN.with(|s| *s.borrow_mut() = stdin);
    let result = run(cli);
    let out = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    ATTACHED.with(|a| *a.borrow_mut() = None);
    STDIN.with(|s| *s.borrow_mut() = None);
    match result {
        Ok(code) => (code, out, String::new()),
        Err(f) => (f.code, out, f.error.to_string()),
    }
}

/// Runs one command; returns the exit code for success paths that still report trouble.
pub fn run(cli: Cli) -> Result<i32, Failure> {
    let attached = ATTACHED.with(|a| a.borrow().is_some());
    if !attached
        && forwardable(&cli.command)
        && let Some(dir) = cli.dir.as_deref()
    {
        let running = dir.join(crate::node::serve::CONTROL_FILE).exists();
        let (args, stdin) = if running { forward_args(&cli.command)? } else { (Vec::new(), None) };
        let request = crate::node::serve::ControlRequest::Exec { args, stdin: stdin.clone() };
        let reply =
            if running { crate::node::serve::control_request(dir, &request)? } else { None };
        // A stale control file (the node was killed): run here, with the input already read.
        STDIN.with(|s| *s.borrow_mut() = stdin);
        if let Some(reply) = reply {
            if let Some(out) = reply["stdout"].as_str() {
                print!("{out}");
            }
            let code = reply["code"].as_i64().unwrap_or(1) as i32;
            if let Some(err) = reply["stderr"].as_str().filter(|e| !e.is_empty()) {
                return Err(Failure { code, error: anyhow!(err.to_string()) });
            }
            return Ok(code);
        }
    }
    match &cli.command {
        Command::Init { name } => {
            let node = Node::init(node_dir(&cli)?, name)?;
            say!("{}", node.id());
        }
        Command::Id => say!("{}", open(&cli)?.id()),
        Command::Put { ty, file } => put(&cli, ty, file)?,
        Command::Get { ty, uuid, conflicts } => {
            let node = open(&cli)?;
            let id = node::entity_id(ty, uuid)?;
            let (record, found) = node.store.get(&id)?.ok_or_else(|| Failure {
                code: 1,
                error: anyhow!("no record {id} in this node"),
            })?;
            let out =
                if *conflicts { json!({"record": record, "conflicts": found}) } else { record };
            say!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::List { ty } => {
            let ty = ty
                .as_deref()
                .map(str::parse::<EntityType>)
                .transpose()
                .map_err(|e| input(e.to_string()))?;
            for id in open(&cli)?.store.list(ty)? {
                say!("{id}");
            }
        }
        Command::Trust { action } => trust(&cli, action)?,
        Command::Export { out, peer, since } => {
            export(&cli, out, peer.as_deref(), since.as_deref())?
        }
        Command::Import { file } => return import(&cli, file),
        Command::Status { json } => net::status(&cli, *json)?,
        Command::Vector { out } => {
            let node = open(&cli)?;
            let doc = json!({"format": "sitesync-vector", "version": 1, "node": node.id().to_string(),
                             "vector": node.store.vector()?.to_json()});
            let text = serde_json::to_string_pretty(&doc)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(path, text).map_err(|e| anyhow!("{}: {e}", path.display()))?
                }
                None => say!("{}", text.trim_end()),
            }
        }
        Command::Events { limit }
        | Command::Audit { action: AuditAction::List { limit, origin: None } } => {
            for (n, e) in open(&cli)?.store.events(*limit)? {
                say!("{n:>6}  {}  {}", e.time, e.kind);
            }
        }
        Command::Audit { action: AuditAction::List { limit, origin: Some(origin) } } => {
            let origin = parse_node_id(origin)?;
            for (n, e) in open(&cli)?.store.child_audit(&origin, *limit)? {
                say!("{n:>6}  {}  {}", e.time, e.kind);
            }
        }
        Command::Conflicts { open: only_open, json } => {
            let views = open(&cli)?.conflicts()?;
            let status = |v: &crate::node::ConflictView| match (v.conflict.is_open(), v.policy) {
                (false, _) => "closed",
                (true, crate::conflict::Policy::Review) => "open",
                (true, crate::conflict::Policy::Auto) => "auto",
            };
            let shown: Vec<_> =
                views.iter().filter(|v| !only_open || status(v) == "open").collect();
            if *json {
                let list: Vec<Value> = shown
                    .iter()
                    .map(|v| {
                        let c = &v.conflict;
                        json!({
                            "id": c.id, "entity": c.entity.key(), "path": c.path,
                            "status": status(v), "policy": v.policy.as_str(),
                            "winner": c.winner, "proposal": v.proposal,
                            "seen": c.seen, "closed": c.closed,
                            "values": c.values.iter().map(|x| json!({
                                "value": serde_json::from_str::<Value>(&x.json).unwrap_or(Value::Null),
                                "author": x.author, "time": x.time,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                if shown.is_empty() {
                    say!("no conflicts{}", if *only_open { " open" } else { "" });
                }
                for v in shown {
                    let c = &v.conflict;
                    say!(
                        "{}  {:<6}  {} {}  ({} policy)",
                        c.id,
                        status(v),
                        c.entity,
                        c.path,
                        v.policy.as_str()
                    );
                    for (i, x) in c.values.iter().enumerate() {
                        let mut marks = Vec::new();
                        if i == c.winner {
                            marks.push("shown now");
                        }
                        if v.proposal == Some(i) {
                            marks.push("latest write");
                        }
                        let by = x.author.as_deref().map_or("?", |a| &a[..a.len().min(12)]);
                        let marks = if marks.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", marks.join(", "))
                        };
                        say!("    [{i}] {}  by {by} at {}{marks}", x.json, x.time);
                    }
                }
            }
        }
        Command::Resolve { conflict_id, take, value } => {
            let choice = match (take, value) {
                (Some(i), _) => crate::node::Choice::Take(*i),
                (None, Some(v)) => crate::node::Choice::Value(
                    serde_json::from_str(v)
                        .map_err(|e| input(format!("--value: not JSON: {e}")))?,
                ),
                (None, None) => return Err(input("give --take N or --value JSON")),
            };
            let c = open(&cli)?.resolve(conflict_id, choice)?;
            say!(
                "resolved conflict {} on {} {} (a new local change; it syncs like any change)",
                c.id,
                c.entity,
                c.path
            );
        }
        Command::Audit { action: AuditAction::Compact { keep_entries, keep_days } } => {
            if *keep_entries == Some(0) || *keep_days == Some(0) {
                return Err(input("--keep-entries / --keep-days: 0 would keep nothing"));
            }
            let node = open(&cli)?;
            if keep_entries.is_none()
                && keep_days.is_none()
                && node.config.retention == crate::config::Retention::default()
            {
                return Err(input(
                    "no retention: set [audit] keep_days / keep_entries in the config, or give \
                     --keep-entries / --keep-days",
                ));
            }
            let removed = node.compact_audit(*keep_entries, *keep_days)?;
            say!("removed {removed} audit entries; the rest verifies from a signed checkpoint");
        }
        Command::Audit { action: AuditAction::Verify } => {
            let r = open(&cli)?.store.verify_audit()?;
            if r.problems.is_empty() {
                say!("audit log intact: {} entries, every link and the head check out", r.entries);
            } else {
                for p in &r.problems {
                    say!("{p}");
                }
                return Err(Failure {
                    code: 1,
                    error: anyhow!(
                        "the audit log was tampered with: {} problems in {} entries",
                        r.problems.len(),
                        r.entries
                    ),
                });
            }
        }
        Command::Reincarnate => {
            let inc =
                open(&cli)?.reincarnate("requested by the operator (sitesync reincarnate)")?;
            say!("new incarnation {inc}");
        }
        Command::Serve => {
            let node = open(&cli)?.owned(node_dir(&cli)?)?;
            crate::node::serve::serve(node)?;
        }
        Command::Sync { peer, entity } => net::sync(&cli, peer.as_deref(), entity.as_deref())?,
        Command::Retry { id } => net::retry(&cli, id)?,
        Command::Failures { json } => net::failures(&*open(&cli)?, *json)?,
        Command::Peer { action } => net::peer(&cli, action)?,
        Command::Network { listen, interval } => {
            let mut node = open(&cli)?.owned(node_dir(&cli)?)?;
            if let Some(l) = listen {
                node.config.listen = Some(
                    crate::config::parse_addr(l).map_err(|m| input(format!("--listen: {m}")))?,
                );
            }
            if let Some(i) = interval {
                if *i < crate::config::SYNC_INTERVAL_SECS_MIN {
                    return Err(input(format!("--interval: {i} is below the minimum of 1 second")));
                }
                node.config.sync_interval_secs = *i;
            }
            node.save_config()?;
            node.config_changed(format!(
                "network: listen {}, sync every {} s",
                node.config.listen.map_or("(none)".into(), |a| a.to_string()),
                node.config.sync_interval_secs
            ))?;
            say!(
                "listen {}, sync every {} s",
                node.config.listen.map_or("(none)".into(), |a| a.to_string()),
                node.config.sync_interval_secs
            );
        }
        Command::Demo => crate::demo::run()?,
        Command::Fhir { action } => return fhir::run(&cli, action),
        Command::Admin { action } => admin::run(&cli, action)?,
    }
    Ok(0)
}

fn put(cli: &Cli, ty: &str, file: &Path) -> Result<(), Failure> {
    let ty: EntityType = ty.parse().map_err(|e: crate::id::IdError| input(e.to_string()))?;
    let mut text = String::new();
    let limit = crate::entity::INPUT_BYTES_MAX as u64;
    let forwarded = STDIN.with(|s| s.borrow_mut().take());
    let read = if let Some(sent) = forwarded.filter(|_| file == Path::new("-")) {
        text = sent;
        Ok(text.len())
    } else if file == Path::new("-") {
        std::io::stdin().take(limit + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit + 1).read_to_string(&mut text))
    };
    read.map_err(|e| input(format!("{}: {e}", file.display())))?;
    if text.len() as u64 > limit {
        return Err(input(format!("{}: input exceeds {limit} bytes", file.display())));
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| input(format!("{}: not valid JSON: {e}", file.display())))?;
    let node = open(cli)?;
    for outcome in node.put(ty, &value)? {
        let note = if outcome.changed { "" } else { " (unchanged)" };
        say!("{}{note}", outcome.id);
    }
    Ok(())
}

fn trust(cli: &Cli, action: &TrustAction) -> Result<(), Failure> {
    let mut node = open(cli)?.owned(node_dir(cli)?)?;
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

fn export(cli: &Cli, out: &Path, peer: Option<&str>, since: Option<&Path>) -> Result<(), Failure> {
    let node = open(cli)?;
    let peer = peer.map(parse_node_id).transpose()?;
    let since_vector = match (peer, since) {
        (Some(p), _) => node.store.peer_vector(&p)?.ok_or_else(|| {
            input(format!("nothing is known about what {p} holds yet: import a bundle from it first, or use --since"))
        })?,
        (None, Some(path)) => read_vector_file(path)?,
        (None, None) => Vector::default(),
    };
    let bar = progress_bar("exporting");
    let report = node.export(out, &since_vector, peer, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    say!(
        "exported {} batches ({} changes, {} bytes) to {}",
        report.batches,
        report.changes,
        report.bytes,
        out.display()
    );
    if report.withheld_batches > 0 {
        say!(
            "left out {} batches held here without their bodies (outside this node's scope); \
             the receiver gets them from a node that holds them",
            report.withheld_batches
        );
    }
    Ok(())
}

fn read_vector_file(path: &Path) -> Result<Vector, Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| input(format!("{}: not valid JSON: {e}", path.display())))?;
    let vector = doc.get("vector").unwrap_or(&doc);
    Vector::from_json(vector).map_err(|e| input(format!("{}: {e}", path.display())))
}

fn import(cli: &Cli, file: &Path) -> Result<i32, Failure> {
    let node = open(cli)?;
    let bar = progress_bar("importing");
    let report = node.import(file, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    print_import(&report);
    let a = &report.applied;
    let trouble =
        !a.rejected.is_empty() || !report.frame_errors.is_empty() || report.truncated.is_some();
    Ok(if trouble { 1 } else { 0 })
}

fn print_import(r: &ImportReport) {
    let a = &r.applied;
    let from = r.exporter.map_or("?".to_string(), |n| n.to_string());
    say!("bundle from {from}: {} batches read", r.frames);
    if a.released > 0 {
        say!(
            "applied: {} batches ({} changes), {} of them received earlier and waiting until now",
            a.applied_batches,
            a.applied_changes,
            a.released
        );
    } else {
        say!("applied: {} batches ({} changes)", a.applied_batches, a.applied_changes);
    }
    say!("already present: {} batches", a.present);
    if a.waiting > 0 {
        say!("waiting for earlier batches: {}", a.waiting);
    }
    say!("rejected: {} batches", a.rejected.len() + r.frame_errors.len());
    for rej in &a.rejected {
        say!("  rejected {} #{}: {}", rej.author, rej.seq, rej.reason);
    }
    for e in &r.frame_errors {
        say!("  rejected {e}");
    }
    for (entity, reason) in &a.unmergeable {
        say!("  could not merge into {entity}: {reason}");
    }
    if let Some((have, declared)) = r.truncated {
        say!(
            "bundle is truncated ({have} of {declared} bytes): applied the whole batches before the cut; \
             {} batches are missing, export again to get them",
            r.missing_frames
        );
    }
    if let Some(author) = a.reincarnated {
        say!(
            "note: this node's own log was ahead of its store (restored backup?); now writing as {author}"
        );
    }
    if a.applied_batches == 0 && a.rejected.is_empty() && a.present > 0 {
        say!("nothing new: every batch was already present");
    }
}
