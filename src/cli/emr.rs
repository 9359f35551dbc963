//! `sitesync emr`: the bridge to the EMRs of `[[emr]]` in sitesync.toml (docs/emr.md): each
//! link's state, and a run now (through the running node when `serve` runs).

use clap::Subcommand;

use super::{CliError, unexpected};
use crate::node::emr::{EmrLinkStatus, EmrReport};
use crate::node::{Reply, Request};
use crate::say;

#[derive(Subcommand, Debug)]
pub enum EmrAction {
    /// Each EMR link: per FHIR type the cursor (the EMR's own clock) and counts, the last run
    /// and the last that went through, the lag, records in and out, failures and the last
    /// error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run the bridge now: read what the EMR changed (and sweep its ids for deletes), then write
    /// what it lacks. Exit code 1 if anything failed.
    Sync {
        /// Only this EMR (its name in sitesync.toml); all when left out.
        #[arg(long, value_name = "NAME")]
        emr: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn request(action: &EmrAction) -> Request {
    match action {
        EmrAction::Status { .. } => Request::EmrStatus,
        EmrAction::Sync { emr, .. } => Request::EmrSync { emr: emr.clone() },
    }
}

pub(super) fn print(action: &EmrAction, reply: Reply) -> Result<i32, CliError> {
    match (action, reply) {
        (EmrAction::Status { json }, Reply::EmrStatus(links)) => Ok(status(&links.0, *json)),
        (EmrAction::Sync { json, .. }, Reply::EmrRuns(runs)) => Ok(runs_done(&runs.0, *json)),
        (_, other) => Err(unexpected(&other)),
    }
}

fn status(links: &[EmrLinkStatus], json: bool) -> i32 {
    if json {
        say!("{}", serde_json::to_string_pretty(links).unwrap_or_default());
        return 0;
    }
    if links.is_empty() {
        say!("no [[emr]] configured (docs/emr.md)");
    }
    for l in links {
        let lag = l.lag_secs.map_or("never synced".to_string(), |s| format!("lag {s} s"));
        say!(
            "{} ({}, {}, {}, every {} s): {lag}; {} records in, {} out, {} unchanged, {} failed",
            l.name,
            l.base_url,
            l.profile,
            l.direction,
            l.poll_secs,
            l.records_in,
            l.records_out,
            l.unchanged,
            l.failed
        );
        if let Some(e) = &l.last_error {
            say!("  last error: {e}");
        }
        for t in &l.types {
            say!(
                "  {:<18} cursor {:<30} {} in, {} out",
                t.fhir_type,
                t.cursor.as_deref().unwrap_or("-"),
                t.records_in,
                t.records_out
            );
        }
    }
    0
}

fn runs_done(runs: &[EmrReport], json: bool) -> i32 {
    let bad = runs.iter().any(|r| r.error.is_some() || !r.failed.is_empty());
    if json {
        say!("{}", serde_json::to_string_pretty(runs).unwrap_or_default());
        return i32::from(bad);
    }
    for r in runs {
        say!(
            "{}: read {} resources, {} records changed here ({} unchanged, {} deleted in the EMR); \
             wrote {} into the EMR ({} created, {} already agreed); {} requests",
            r.emr,
            r.read,
            r.records_in,
            r.unchanged,
            r.deleted,
            r.written,
            r.created,
            r.agreed,
            r.requests
        );
        for f in &r.failed {
            let status = f.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
            say!("  failed ({}) {}: {status}{}", f.way, f.resource, f.reason);
        }
        if let Some(e) = &r.error {
            say!("  stopped: {e}");
        }
    }
    i32::from(bad)
}
