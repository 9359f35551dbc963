//! `sitesync fhir export`: the node's records as FHIR R4, as Bulk Data NDJSON files (one per
//! resource type) and optionally one transaction Bundle. The mapping is `crate::fhir`.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Subcommand;

use super::{Cli, Failure, input, open};
use crate::fhir::{self, Context, Date, FhirSettings, Site};
use crate::id::{EntityId, EntityType, Uid};
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
        /// FHIR settings (TOML: a [fhir] table, see docs/fhir-mapping.md); defaults without it.
        #[arg(long, value_name = "FILE")]
        settings: Option<PathBuf>,
    },
}

pub(crate) fn run(cli: &Cli, action: &FhirAction) -> Result<i32, Failure> {
    match action {
        FhirAction::Export { out, types, bundle, settings } => {
            export(cli, out, types, bundle.as_deref(), settings.as_deref())
        }
    }
}

fn read_settings(path: Option<&Path>) -> Result<FhirSettings, Failure> {
    let Some(path) = path else { return Ok(FhirSettings::default()) };
    let text =
        std::fs::read_to_string(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
    FhirSettings::from_toml(&text).map_err(|e| input(format!("{}: {e}", path.display())))
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
) -> Result<i32, Failure> {
    let settings = read_settings(settings)?;
    let types = selected_types(types)?;
    let node = open(cli)?;
    let mut records = Vec::new();
    for ty in types {
        for id in node.store.list(Some(ty))? {
            // A record whose changes are all still queued (dependencies missing) reads as none.
            if let Some((value, _conflicts)) = node.store.get(&id)? {
                records.push((id.ty, id.uuid, value));
            }
        }
    }
    let site = Site { node: node.id(), name: node.config.name.clone() };
    let source = |ty: EntityType, uuid: &Uid| {
        node.store.get(&EntityId::new(ty, *uuid)).ok().flatten().map(|(value, _)| value)
    };
    let ctx = Context {
        settings: &settings,
        site: &site,
        today: Date::from_unix(crate::node::now_secs()),
        source: &source,
    };
    let mut export = fhir::export(records, ctx);
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
    if report.skipped.is_empty() {
        return Ok(0);
    }
    say!("skipped {} record(s) that cannot be valid FHIR:", report.skipped.len());
    for e in &report.skipped {
        say!("  {e}");
    }
    Ok(1)
}
