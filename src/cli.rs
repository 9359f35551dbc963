//! The command line: clap definitions, and how each command runs. A command that reads or
//! writes the node's records becomes a `Request` (`cli/request.rs`), executed by the running
//! node when `serve` runs, else in this process; its `Reply` is printed for people
//! (`cli/print.rs`). Commands that change the configuration or the store file run here with the
//! node stopped (`cli/config.rs`, `cli/admin.rs`). Errors carry an exit code: 2 for bad input
//! (nothing written), 1 for everything else.

mod admin;
mod config;
mod emr;
mod fhir;
mod print;
mod request;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use clap::{Parser, Subcommand};

use crate::id::NodeId;
use crate::node::{Node, NodeError, Reply};
use request::Local;

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
    /// The bridge to the clinic's EMR (`[[emr]]` in sitesync.toml, docs/emr.md): its state, or a
    /// run now.
    Emr {
        #[command(subcommand)]
        action: emr::EmrAction,
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

/// Writes one line to standard output. A closed pipe (`sitesync list | head -1`) ends the
/// process quietly with success, as Unix tools do, where `println!` would panic.
pub fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
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

/// A failed command with the exit code it should produce.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = match error.downcast_ref::<NodeError>() {
            Some(e) if e.is_input() => 2,
            _ => 1,
        };
        CliError { code, error }
    }
}

/// Bad input (exit code 2).
pub(crate) fn input(msg: impl Into<String>) -> CliError {
    CliError { code: 2, error: anyhow!(msg.into()) }
}

/// Any other failure (exit code 1).
pub(crate) fn failed(msg: impl Into<String>) -> CliError {
    CliError { code: 1, error: anyhow!(msg.into()) }
}

pub(crate) fn node_dir(cli: &Cli) -> Result<&Path, CliError> {
    cli.dir.as_deref().ok_or_else(|| input("no node directory: pass --dir DIR or set SITESYNC_DIR"))
}

/// Opens the node in this process: for requests when no node runs, and (mutable) for the
/// commands that change its configuration, which need it stopped.
pub(crate) fn open(cli: &Cli) -> Result<Node, CliError> {
    let dir = node_dir(cli)?;
    match Node::open(dir) {
        Err(NodeError::Store(crate::store::StoreError::Busy)) => Err(failed(format!(
            "the node in {} is open in another process (sitesync serve, or another command \
             still running); this command needs its store to itself: stop that process first",
            dir.display()
        ))),
        other => Ok(other?),
    }
}

/// Opens the node for a configuration change: refused while `serve` runs (it reads its config
/// at start).
pub(crate) fn open_stopped(cli: &Cli) -> Result<Node, CliError> {
    let dir = node_dir(cli)?;
    if request::running(dir) {
        return Err(failed(format!(
            "the node in {} is running; stop it to change its configuration",
            dir.display()
        )));
    }
    open(cli)
}

pub(crate) fn parse_node_id(s: &str) -> Result<NodeId, CliError> {
    s.parse().map_err(|e: crate::id::IdError| input(e.to_string()))
}

/// A progress bar counting `unit`.
pub(crate) fn progress_bar(what: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"
    ));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// Runs one command; returns the exit code for success paths that still report trouble.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    let local = match request::of(&cli.command)? {
        request::Kind::Request(request) => {
            let reply = request::execute(&cli, request)?;
            return print::reply(&cli.command, reply);
        }
        request::Kind::Local(local) => local,
    };
    match local {
        Local::Init { name } => {
            let node = Node::init(node_dir(&cli)?, name)?;
            say!("{}", node.id());
        }
        Local::Trust(action) => config::trust(&cli, action)?,
        Local::Peer(action) => config::peer(&cli, action)?,
        Local::Network { listen, interval } => config::network(&cli, listen, interval)?,
        Local::Reincarnate => {
            let inc =
                open(&cli)?.reincarnate("requested by the operator (sitesync reincarnate)")?;
            say!("new incarnation {inc}");
        }
        Local::Serve => {
            let node = open(&cli)?;
            crate::node::serve::serve(node, Arc::new(print::ServeOutput))?;
        }
        Local::Demo => crate::demo::run()?,
        Local::Admin(action) => admin::run(&cli, action)?,
    }
    Ok(0)
}

/// The reply of a request, or an error naming the reply that came instead.
pub(crate) fn unexpected(reply: &Reply) -> CliError {
    failed(format!("the node answered with an unexpected reply: {reply:?}"))
}
