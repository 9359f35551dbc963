//! Replies as people read them: one function per reply, with the command's output flags
//! (`--json`, `--open`, `--out`), and the exit code a reply that still reports trouble gives.
//! Also what `serve` shows the person who started it ([`ServeOutput`]).

use std::net::SocketAddr;

use anyhow::anyhow;
use serde_json::{Value, json};

use super::{AuditAction, CliError, Command, failed, unexpected};
use crate::id::NodeId;
use crate::node::command::Retried;
use crate::node::session_host::SessionReport;
use crate::node::{
    BundleExportReport, ConflictView, ImportReport, Reply, ServeEvents, SyncProgress,
};
use crate::say;
use crate::store::failures::FailureRecord;

/// Prints the reply to `command`; returns the exit code.
pub(super) fn reply(command: &Command, reply: Reply) -> Result<i32, CliError> {
    match (command, reply) {
        (Command::Id, Reply::Id(id)) => say!("{id}"),
        (Command::Put { .. }, Reply::Put(outcomes)) => {
            for o in outcomes {
                say!("{}{}", o.id, if o.changed { "" } else { " (unchanged)" });
            }
        }
        (Command::Get { .. }, Reply::Record { record, conflicts }) => {
            let out = match conflicts {
                Some(found) => json!({"record": record.0, "conflicts": found.0}),
                None => record.0,
            };
            say!("{}", serde_json::to_string_pretty(&out)?);
        }
        (Command::List { .. }, Reply::Ids(ids)) => {
            for id in ids {
                say!("{id}");
            }
        }
        (Command::Export { out, .. }, Reply::Exported(r)) => exported(out, &r),
        (Command::Import { .. }, Reply::Imported(r)) => return Ok(imported(&r)),
        (Command::Status { json }, Reply::Status(s)) => status(&s.0, *json)?,
        (Command::Vector { out }, Reply::Vector { node, vector }) => {
            let doc = json!({"format": "sitesync-vector", "version": 1, "node": node.to_string(),
                             "vector": vector.to_json()});
            let text = serde_json::to_string_pretty(&doc)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(path, text).map_err(|e| anyhow!("{}: {e}", path.display()))?
                }
                None => say!("{}", text.trim_end()),
            }
        }
        (Command::Events { .. } | Command::Audit { .. }, Reply::Events(events)) => {
            for (n, e) in events {
                say!("{n:>6}  {}  {}", e.time, e.kind);
            }
        }
        (Command::Conflicts { open, json }, Reply::Conflicts(views)) => {
            conflicts(&views, *open, *json)?
        }
        (Command::Resolve { .. }, Reply::Resolved(c)) => say!(
            "resolved conflict {} on {} {} (a new local change; it syncs like any change)",
            c.id,
            c.entity,
            c.path
        ),
        (Command::Audit { action: AuditAction::Verify }, Reply::AuditVerified(r)) => {
            if r.problems.is_empty() {
                say!("audit log intact: {} entries, every link and the head check out", r.entries);
            } else {
                for p in &r.problems {
                    say!("{p}");
                }
                return Err(failed(format!(
                    "the audit log was tampered with: {} problems in {} entries",
                    r.problems.len(),
                    r.entries
                )));
            }
        }
        (Command::Audit { .. }, Reply::Compacted(removed)) => {
            say!("removed {removed} audit entries; the rest verifies from a signed checkpoint")
        }
        (Command::Failures { json }, Reply::Failures(list)) => failures(&list, *json)?,
        (Command::Sync { entity, .. }, Reply::Sessions(sessions)) => {
            let entity = entity.as_deref().map(str::parse::<crate::id::EntityId>).transpose();
            synced(&sessions, entity.map_err(|e| super::input(format!("--entity: {e}")))?)?
        }
        (Command::Retry { id }, Reply::Retried(r)) => retried(id, &r)?,
        (Command::Fhir { action }, reply) => return super::fhir::print(action, reply),
        (Command::Emr { action }, reply) => return super::emr::print(action, reply),
        (_, other) => return Err(unexpected(&other)),
    }
    Ok(0)
}

fn exported(out: &std::path::Path, report: &BundleExportReport) {
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
}

/// Prints an import; exit code 1 if anything was refused or missing.
fn imported(r: &ImportReport) -> i32 {
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
    let trouble = !a.rejected.is_empty() || !r.frame_errors.is_empty() || r.truncated.is_some();
    i32::from(trouble)
}

fn status(s: &Value, as_json: bool) -> Result<(), CliError> {
    if as_json {
        say!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let now = crate::node::now_secs();
    let when = |v: &Value| match v.as_i64() {
        Some(t) if now >= t => format!("{} s ago", now - t),
        Some(t) => format!("in {} s", t - now),
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
    Ok(())
}

/// What the CLI calls a conflict's state.
fn conflict_status(v: &ConflictView) -> &'static str {
    match (v.conflict.is_open(), v.policy) {
        (false, _) => "closed",
        (true, crate::conflict::Policy::Review) => "open",
        (true, crate::conflict::Policy::Auto) => "auto",
    }
}

fn conflicts(views: &[ConflictView], only_open: bool, as_json: bool) -> Result<(), CliError> {
    let shown: Vec<_> =
        views.iter().filter(|v| !only_open || conflict_status(v) == "open").collect();
    if as_json {
        let list: Vec<Value> = shown.iter().map(|v| conflict_json(v)).collect();
        say!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if shown.is_empty() {
        say!("no conflicts{}", if only_open { " open" } else { "" });
    }
    for v in shown {
        let c = &v.conflict;
        let (status, policy) = (conflict_status(v), v.policy.as_str());
        say!("{}  {status:<6}  {} {}  ({policy} policy)", c.id, c.entity, c.path);
        for (i, x) in c.values.iter().enumerate() {
            let mut marks = Vec::new();
            if i == c.winner {
                marks.push("shown now");
            }
            if v.proposal == Some(i) {
                marks.push("latest write");
            }
            let by = x.author.as_deref().map_or("?", crate::id::short);
            let marks = match marks.is_empty() {
                true => String::new(),
                false => format!("  [{}]", marks.join(", ")),
            };
            say!("    [{i}] {}  by {by} at {}{marks}", x.json, x.time);
        }
    }
    Ok(())
}

fn conflict_json(v: &ConflictView) -> Value {
    let c = &v.conflict;
    json!({
        "id": c.id, "entity": c.entity.key(), "path": c.path,
        "status": conflict_status(v), "policy": v.policy.as_str(),
        "winner": c.winner, "proposal": v.proposal,
        "seen": c.seen, "closed": c.closed,
        "values": c.values.iter().map(|x| json!({
            "value": serde_json::from_str::<Value>(&x.json).unwrap_or(Value::Null),
            "author": x.author, "time": x.time,
        })).collect::<Vec<_>>(),
    })
}

/// `sitesync failures`: every standing failure, oldest first.
fn failures(list: &[FailureRecord], as_json: bool) -> Result<(), CliError> {
    if as_json {
        let out: Vec<Value> = list
            .iter()
            .map(|f| {
                json!({
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
    for f in list {
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

/// One line per session; true if any did not complete.
fn sessions(list: &[SessionReport]) -> bool {
    for s in list {
        say!(
            "{}: {}; sent {} batches ({} bytes), received {} batches ({} bytes) in {} ms",
            s.peer,
            s.outcome,
            s.batches_sent,
            s.bytes_sent,
            s.batches_received,
            s.bytes_received,
            s.millis
        );
    }
    list.iter().any(|s| !s.complete)
}

fn synced(list: &[SessionReport], entity: Option<crate::id::EntityId>) -> Result<(), CliError> {
    if list.is_empty() {
        say!("no peer to dial (children dial in to this node on their own schedule)");
    }
    let failed_any = sessions(list);
    if let Some(id) = entity {
        say!(
            "{id}: carried by the round above (batches travel in order, so a round carries every pending change)"
        );
    }
    if failed_any {
        return Err(failed("a sync session did not complete (see above)"));
    }
    Ok(())
}

fn retried(id: &str, r: &Retried) -> Result<(), CliError> {
    sessions(&r.sessions);
    if r.closed {
        say!("{id} ({}): retried, it works now; the failure is closed", r.what);
        return Ok(());
    }
    let reason = r.reason.as_deref().unwrap_or("unknown");
    Err(failed(format!("{id} ({}): the retry failed too: {reason}", r.what)))
}

/// What `serve` prints: where it listens, and an initial sync's progress on a terminal.
pub(super) struct ServeOutput;

impl ServeEvents for ServeOutput {
    fn started(&self, node: NodeId, listen: SocketAddr, admin: Option<Result<SocketAddr, String>>) {
        say!("serving node {node} on {listen} (Ctrl-C to stop)");
        match admin {
            Some(Ok(addr)) => say!(
                "admin view on http://{addr}/ (log in with the token `sitesync admin token` prints)"
            ),
            Some(Err(why)) => say!("admin view not started: {why}"),
            None => {}
        }
    }

    fn initial_sync(&self) -> Option<Box<dyn SyncProgress>> {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return None;
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "initial sync {bar:40} {pos}/{len} batches ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style);
        }
        Some(Box::new(Bar(bar)))
    }
}

struct Bar(indicatif::ProgressBar);

impl SyncProgress for Bar {
    fn length(&self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&self, batches: u64) {
        self.0.inc(batches);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
