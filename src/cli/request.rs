//! Commands as [`Request`]s: the arguments parsed and checked here, at the edge (files read,
//! paths made absolute, ids parsed, each error naming the bad value), then executed by the
//! running node of the directory, or in this process when none runs.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{AuditAction, Cli, CliError, Command, input, node_dir, open, parse_node_id};
use crate::id::{EntityType, Vector};
use crate::node::command::Since;
use crate::node::{Choice, Json, NodeHandle, Reply, Request, control};

/// What a command is: a request any node can execute (in this process or the running node), or
/// one that runs here only, with the node stopped or without a node. This match is the one
/// place that says which commands run inside a running node.
pub(super) enum Kind<'a> {
    Request(Request),
    Local(Local<'a>),
}

/// The commands that run in this process only.
pub(super) enum Local<'a> {
    Init { name: &'a str },
    Trust(&'a super::TrustAction),
    Peer(&'a super::PeerAction),
    Network { listen: Option<&'a str>, interval: Option<u64> },
    Reincarnate,
    Serve,
    Demo,
    Admin(&'a super::admin::AdminAction),
}

/// What `command` is, its arguments parsed and checked.
pub(super) fn of(command: &Command) -> Result<Kind<'_>, CliError> {
    Ok(Kind::Request(match command {
        Command::Id => Request::Id,
        Command::Put { ty, file } => {
            Request::Put { ty: entity_type(ty)?, records: read_json(file)? }
        }
        Command::Get { ty, uuid, conflicts } => {
            Request::Get { id: crate::node::entity_id(ty, uuid)?, conflicts: *conflicts }
        }
        Command::List { ty } => Request::List { ty: ty.as_deref().map(entity_type).transpose()? },
        Command::Export { out, peer, since } => {
            let since = match (peer, since) {
                (Some(p), _) => Since::Peer(parse_node_id(p)?),
                (None, Some(path)) => Since::Vector(read_vector_file(path)?),
                (None, None) => Since::Everything,
            };
            Request::Export { out: absolute(out)?, since }
        }
        Command::Import { file } => Request::Import { file: absolute(file)? },
        Command::Status { .. } => Request::Status,
        Command::Vector { .. } => Request::Vector,
        Command::Events { limit }
        | Command::Audit { action: AuditAction::List { limit, origin: None } } => {
            Request::Events { limit: *limit, origin: None }
        }
        Command::Audit { action: AuditAction::List { limit, origin: Some(o) } } => {
            Request::Events { limit: *limit, origin: Some(parse_node_id(o)?) }
        }
        Command::Audit { action: AuditAction::Verify } => Request::AuditVerify,
        Command::Audit { action: AuditAction::Compact { keep_entries, keep_days } } => {
            Request::AuditCompact { keep_entries: *keep_entries, keep_days: *keep_days }
        }
        Command::Conflicts { .. } => Request::Conflicts,
        Command::Resolve { conflict_id, take, value } => {
            let choice = match (take, value) {
                (Some(i), _) => Choice::Take(*i),
                (None, Some(v)) => Choice::Value(Json(
                    serde_json::from_str(v)
                        .map_err(|e| input(format!("--value: not JSON: {e}")))?,
                )),
                (None, None) => return Err(input("give --take N or --value JSON")),
            };
            Request::Resolve { id: conflict_id.clone(), choice }
        }
        Command::Failures { .. } => Request::Failures,
        Command::Sync { peer, entity } => {
            if let Some(e) = entity {
                e.parse::<crate::id::EntityId>()
                    .map_err(|err| input(format!("--entity: {err}")))?;
            }
            Request::Sync { peer: peer.as_deref().map(parse_node_id).transpose()? }
        }
        Command::Retry { id } => Request::Retry { id: id.clone() },
        Command::Fhir { action } => super::fhir::request(action)?,
        Command::Emr { action } => super::emr::request(action),
        Command::Init { name } => return Ok(Kind::Local(Local::Init { name })),
        Command::Trust { action } => return Ok(Kind::Local(Local::Trust(action))),
        Command::Peer { action } => return Ok(Kind::Local(Local::Peer(action))),
        Command::Network { listen, interval } => {
            let listen = listen.as_deref();
            return Ok(Kind::Local(Local::Network { listen, interval: *interval }));
        }
        Command::Reincarnate => return Ok(Kind::Local(Local::Reincarnate)),
        Command::Serve => return Ok(Kind::Local(Local::Serve)),
        Command::Demo => return Ok(Kind::Local(Local::Demo)),
        Command::Admin { action } => return Ok(Kind::Local(Local::Admin(action))),
    }))
}

/// Whether a node runs in `dir` (its control endpoint answers).
pub(super) fn running(dir: &Path) -> bool {
    dir.join(control::CONTROL_FILE).exists()
        && matches!(control::request(dir, &Request::Id), Ok(Some(_)))
}

/// Executes `request`: through the running node of the directory, else in this process (with
/// a progress bar for long work). A stale control file (the node was killed) counts as none.
pub(super) fn execute(cli: &Cli, request: Request) -> Result<Reply, CliError> {
    let dir = node_dir(cli)?;
    if dir.join(control::CONTROL_FILE).exists()
        && let Some(reply) = control::request(dir, &request)?
    {
        return Ok(reply);
    }
    if let Request::Retry { .. } = request {
        return Err(super::failed(format!(
            "no node is running in {}; retries run in the running node (`sitesync --dir {} serve`)",
            dir.display(),
            dir.display()
        )));
    }
    if request.needs_running_node() {
        return Err(crate::node::NodeError::NotRunning(dir.to_path_buf()).into());
    }
    let (what, unit) = match &request {
        Request::Export { .. } => ("exporting", "batches"),
        Request::Import { .. } => ("importing", "batches"),
        Request::FhirExport { .. } => ("reading records", "records"),
        _ => ("", ""),
    };
    let bar = match what.is_empty() {
        true => indicatif::ProgressBar::hidden(),
        false => super::progress_bar(what, unit),
    };
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let handle = NodeHandle::new(Arc::new(open(cli)?));
    let reply = handle.execute(request, &progress);
    bar.finish_and_clear();
    Ok(reply?)
}

fn entity_type(ty: &str) -> Result<EntityType, CliError> {
    ty.parse().map_err(|e: crate::id::IdError| input(e.to_string()))
}

/// A path as the running node must see it (its working directory is not this one).
pub(super) fn absolute(path: &Path) -> Result<std::path::PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| input(format!("{}: {e}", path.display())))
}

/// The JSON in `file` (`-`: standard input), at most `INPUT_BYTES_MAX` bytes.
fn read_json(file: &Path) -> Result<Json, CliError> {
    let mut text = String::new();
    let limit = crate::entity::INPUT_BYTES_MAX as u64;
    let read = if file == Path::new("-") {
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
    Ok(Json(value))
}

fn read_vector_file(path: &Path) -> Result<Vector, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| input(format!("{}: not valid JSON: {e}", path.display())))?;
    let vector = doc.get("vector").unwrap_or(&doc);
    Vector::from_json(vector).map_err(|e| input(format!("{}: {e}", path.display())))
}
