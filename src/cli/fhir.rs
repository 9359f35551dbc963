//! `sitesync fhir export`: the node's records as FHIR R4, as Bulk Data NDJSON files (one per
//! resource type) and optionally one transaction Bundle, all or those changed since a cursor.
//! `sitesync fhir push` / `fhir status`: the `[[fhir.targets]]` of the config. The mapping is
//! `crate::fhir`; pushing is `crate::node::push`.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Subcommand;

use super::{Cli, Failure, absolute, input, open};
use crate::fhir::{self, Cursor, FhirSettings};
use crate::id::EntityType;
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

/// The arguments that run `action` inside a running node (file paths made absolute).
pub(crate) fn forward_args(action: &FhirAction) -> Result<Vec<String>, Failure> {
    let mut a = vec!["fhir".to_string()];
    match action {
        FhirAction::Export { out, types, bundle, settings, since } => {
            a.extend(["export".into(), "--out".into(), absolute(out)?]);
            for t in types {
                a.extend(["--type".into(), t.clone()]);
            }
            if let Some(b) = bundle {
                a.extend(["--bundle".into(), absolute(b)?]);
            }
            if let Some(s) = settings {
                a.extend(["--settings".into(), absolute(s)?]);
            }
            if let Some(c) = since {
                a.extend(["--since".into(), c.clone()]);
            }
        }
        FhirAction::Push { target, full, json } => {
            a.extend(["push".into(), "--target".into(), target.clone()]);
            if *full {
                a.push("--full".into());
            }
            if *json {
                a.push("--json".into());
            }
        }
        FhirAction::Status { json } => {
            a.push("status".into());
            if *json {
                a.push("--json".into());
            }
        }
    }
    Ok(a)
}

pub(crate) fn run(cli: &Cli, action: &FhirAction) -> Result<i32, Failure> {
    match action {
        FhirAction::Export { out, types, bundle, settings, since } => {
            let since = since
                .as_deref()
                .map(|c| c.parse::<Cursor>().map_err(|e| input(format!("--since: {e}"))))
                .transpose()?;
            export(cli, out, types, bundle.as_deref(), settings.as_deref(), since.as_ref())
        }
        FhirAction::Push { target, full, json } => push(cli, target, *full, *json),
        FhirAction::Status { json } => status(cli, *json),
    }
}

fn read_settings(path: Option<&Path>) -> Result<Option<FhirSettings>, Failure> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
    FhirSettings::from_toml(&text).map(Some).map_err(|e| input(format!("{}: {e}", path.display())))
}

fn selected_types(types: &[String]) -> Result<Vec<EntityType>, Failure> {
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

fn export(
    cli: &Cli,
    out: &Path,
    types: &[String],
    bundle: Option<&Path>,
    settings: Option<&Path>,
    since: Option<&Cursor>,
) -> Result<i32, Failure> {
    let settings = read_settings(settings)?;
    let types = selected_types(types)?;
    let node = open(cli)?;
    let settings = settings.as_ref().unwrap_or(node.fhir_settings());
    let bar = crate::cli::progress_bar_of("reading records", "records");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let done = node.fhir_export(settings, &types, since, &Default::default(), &progress)?;
    bar.finish_and_clear();
    let mut export = done.export;
    let written = export.write_ndjson(out).map_err(|e| anyhow!(e))?;
    if let Some(file) = bundle {
        export.write_bundle(file).map_err(|e| anyhow!(e))?;
    }
    let report = &export.report;
    let counts: Vec<String> = report.resources.iter().map(|(t, n)| format!("{t} {n}")).collect();
    say!(
        "wrote {} resources in {} NDJSON files to {}: {}",
        export.resources.len(),
        written.len(),
        out.display(),
        counts.join(", ")
    );
    if let Some(file) = bundle {
        say!("wrote a transaction Bundle of {} entries to {}", report.total(), file.display());
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
    Ok(code)
}

fn push(cli: &Cli, target: &str, full: bool, json: bool) -> Result<i32, Failure> {
    let node = open(cli)?;
    let opts = crate::node::push::PushOptions { retry_failed: true, full, ..Default::default() };
    let r = node.push_run(target, opts)?;
    let code = if r.is_clean() { 0 } else { 1 };
    if json {
        say!("{}", serde_json::to_string_pretty(&r).map_err(|e| anyhow!(e))?);
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

fn status(cli: &Cli, json: bool) -> Result<i32, Failure> {
    let node = open(cli)?;
    let targets = node.push_status()?;
    if json {
        say!("{}", serde_json::to_string_pretty(&targets).map_err(|e| anyhow!(e))?);
        return Ok(0);
    }
    if targets.is_empty() {
        say!("no FHIR push targets ([[fhir.targets]] in sitesync.toml)");
    }
    let when = |t: i64| if t == 0 { "never".to_string() } else { t.to_string() };
    for t in &targets {
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
