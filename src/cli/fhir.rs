//! `sitesync fhir`: export records as FHIR R4 (Bulk Data NDJSON, one file per resource type,
//! and optionally one transaction Bundle), all or those changed since a cursor; push them to
//! the `[[fhir.targets]]` of the config; show each target's push state. The mapping is
//! `crate::fhir`; exporting to files and pushing are the node's (`crate::node::push`).

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Subcommand;

use super::request::absolute;
use super::{CliError, input, unexpected};
use crate::fhir::{self, Cursor, FhirSettings};
use crate::id::EntityType;
use crate::node::command::FhirExported;
use crate::node::{Reply, Request};
use crate::say;

/// Most warnings listed one by one; the rest are counted.
const WARNINGS_SHOWN: usize = 20;

#[derive(Subcommand, Debug)]
pub enum FhirAction {
    /// Write the records as FHIR R4: DIR/<ResourceType>.ndjson (Bulk Data style), and with
    /// --bundle a transaction Bundle of PUT entries. Records that cannot be valid FHIR are
    /// skipped and listed (exit code 1); concept, generic and roster records have no resource.
    Export {
        /// Directory for the NDJSON files (created if need be; NDJSON files of resource types
        /// this export does not hold are removed).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only records of this entity type (repeatable): patient, person, provider, location,
        /// visit, encounter, obs, condition, allergy, appointment, relationship.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Also write one transaction Bundle of all resources to FILE.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// FHIR settings (TOML: a [fhir] table, see docs/fhir-mapping.md); without it, the
        /// [fhir] table of sitesync.toml.
        #[arg(long, value_name = "FILE")]
        settings: Option<PathBuf>,
        /// Only records changed since this cursor (printed by the previous export as
        /// `cursor c1.…`). Every export prints the cursor to pass next time.
        #[arg(long, value_name = "CURSOR")]
        since: Option<String>,
    },
    /// Push records changed since the last successful push to a [[fhir.targets]] entry of
    /// sitesync.toml, as transaction Bundles. Resources refused before are sent again. Exit
    /// code 1 if anything failed.
    Push {
        /// The target's name.
        #[arg(long, value_name = "NAME")]
        target: String,
        /// Map every record, not only those changed since the cursor (resources the target
        /// already holds in the same version are still not sent).
        #[arg(long)]
        full: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Each push target: cursor, last attempt and success, failures, last error, next
    /// automatic try, and the resources that failed with the server's reason.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// The request `action` makes (settings read and checked, paths made absolute).
pub(super) fn request(action: &FhirAction) -> Result<Request, CliError> {
    Ok(match action {
        FhirAction::Export { out, types, bundle, settings, since } => {
            let since = since
                .as_deref()
                .map(|c| c.parse::<Cursor>().map_err(|e| input(format!("--since: {e}"))))
                .transpose()?;
            Request::FhirExport {
                out: absolute(out)?,
                types: selected_types(types)?,
                bundle: bundle.as_deref().map(absolute).transpose()?,
                settings: settings.as_deref().map(read_settings).transpose()?,
                since,
            }
        }
        FhirAction::Push { target, full, .. } => {
            Request::FhirPush { target: target.clone(), full: *full }
        }
        FhirAction::Status { .. } => Request::FhirStatus,
    })
}

/// Prints the reply to `action`; returns the exit code.
pub(super) fn print(action: &FhirAction, reply: Reply) -> Result<i32, CliError> {
    match (action, reply) {
        (FhirAction::Export { out, bundle, .. }, Reply::FhirExported(done)) => {
            Ok(exported(out, bundle.as_deref(), &done))
        }
        (FhirAction::Push { target, json, .. }, Reply::Pushed(r)) => pushed(target, *json, &r.0),
        (FhirAction::Status { json }, Reply::PushStatus(targets)) => status(&targets.0, *json),
        (_, other) => Err(unexpected(&other)),
    }
}

/// The settings file's text, checked here so its errors name the file.
fn read_settings(path: &Path) -> Result<String, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
    FhirSettings::from_toml(&text).map_err(|e| input(format!("{}: {e}", path.display())))?;
    Ok(text)
}

fn selected_types(types: &[String]) -> Result<Vec<EntityType>, CliError> {
    let exported: Vec<EntityType> = EntityType::ALL
        .iter()
        .copied()
        .filter(|t| fhir::map::resource_type_of(*t).is_some())
        .collect();
    if types.is_empty() {
        return Ok(exported);
    }
    let mut out = Vec::new();
    for t in types {
        let ty: EntityType = t.parse().map_err(|e: crate::id::IdError| input(e.to_string()))?;
        if !exported.contains(&ty) {
            return Err(input(format!(
                "--type {ty}: {ty} records have no FHIR resource (concepts become codings inside \
                 the resources that use them)"
            )));
        }
        if !out.contains(&ty) {
            out.push(ty);
        }
    }
    Ok(out)
}

fn exported(out: &Path, bundle: Option<&Path>, done: &FhirExported) -> i32 {
    let report = &done.report;
    let counts: Vec<String> = report.resources.iter().map(|(t, n)| format!("{t} {n}")).collect();
    say!(
        "wrote {} resources in {} NDJSON files to {}: {}",
        done.resources,
        done.files,
        out.display(),
        counts.join(", ")
    );
    if let (Some(file), Some(entries)) = (bundle, done.bundle_entries) {
        say!("wrote a transaction Bundle of {entries} entries to {}", file.display());
    }
    if !report.warnings.is_empty() {
        say!("{} warnings (data left out of resources that were written):", report.warnings.len());
        for w in report.warnings.iter().take(WARNINGS_SHOWN) {
            say!("  {w}");
        }
        if report.warnings.len() > WARNINGS_SHOWN {
            say!("  ... and {} more", report.warnings.len() - WARNINGS_SHOWN);
        }
    }
    let code = if report.skipped.is_empty() {
        0
    } else {
        say!("skipped {} record(s) that cannot be valid FHIR:", report.skipped.len());
        for e in &report.skipped {
            say!("  {e}");
        }
        1
    };
    // Last, on a line of its own, for scripts: `--since` takes it next time.
    say!("cursor {}", done.cursor);
    code
}

fn pushed(target: &str, json: bool, r: &fhir::PushReport) -> Result<i32, CliError> {
    let code = if r.is_clean() { 0 } else { 1 };
    if json {
        say!("{}", serde_json::to_string_pretty(r).map_err(|e| anyhow!(e))?);
        return Ok(code);
    }
    say!(
        "pushed to {target}: {} resources considered, {} already delivered, {} sent ({} created, \
         {} updated) in {} requests",
        r.considered,
        r.unchanged,
        r.sent,
        r.created,
        r.updated,
        r.requests
    );
    for f in &r.failed {
        match f.status {
            Some(s) => say!("  failed {} (HTTP {s}): {}", f.key, f.reason),
            None => say!("  not sent {}: {}", f.key, f.reason),
        }
    }
    if let Some(e) = &r.error {
        say!("stopped early: {e}; the rest is sent next time");
    }
    say!("cursor {}{}", r.cursor, if r.cursor_advanced { "" } else { " (not advanced)" });
    Ok(code)
}

fn status(targets: &[fhir::PushTargetStatus], json: bool) -> Result<i32, CliError> {
    if json {
        say!("{}", serde_json::to_string_pretty(targets).map_err(|e| anyhow!(e))?);
        return Ok(0);
    }
    if targets.is_empty() {
        say!("no FHIR push targets ([[fhir.targets]] in sitesync.toml)");
    }
    let when = |t: i64| if t == 0 { "never".to_string() } else { t.to_string() };
    for t in targets {
        say!(
            "{} -> {}{}",
            t.name,
            t.base_url,
            if t.continuous { format!(" (every {} s)", t.interval_secs) } else { String::new() }
        );
        say!("  last attempt {}, last success {}", when(t.last_attempt), when(t.last_success));
        say!("  consecutive failures {}, next try {}", t.consecutive_failures, when(t.next_retry));
        if let Some(e) = &t.last_error {
            say!("  last error: {e}");
        }
        say!("  failed resources: {}", t.failed.len());
        for f in &t.failed {
            match f.status {
                Some(s) => say!("    {} (HTTP {s}): {}", f.key, f.reason),
                None => say!("    {} (not sent): {}", f.key, f.reason),
            }
        }
        say!("  cursor {}", if t.cursor.is_empty() { "none" } else { &t.cursor });
    }
    Ok(0)
}
