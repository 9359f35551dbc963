//! Many records -> resources, written as Bulk Data NDJSON (one file per resource type) or as
//! one FHIR transaction Bundle of `PUT Type/<id>` entries.
//!
//! [`export`] is pure; the `write_*` functions only add the file writes (each file written to a
//! temporary name and renamed, so a reader never sees half a file).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::map::{Context, Mapper};
use super::model::{Bundle, BundleEntry, BundleRequest, Resource};
use super::read::is_hex_uuid;
use super::{MapError, Warning};
use crate::id::{EntityId, EntityType, Uid};

/// Every FHIR resource type an export can hold, in the order NDJSON files are listed.
pub const RESOURCE_TYPES: &[&str] = &[
    "Organization",
    "Location",
    "Practitioner",
    "Patient",
    "Person",
    "RelatedPerson",
    "Encounter",
    "Observation",
    "Condition",
    "AllergyIntolerance",
    "Appointment",
];

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FhirExportReport {
    /// Records read, per entity type.
    pub records: BTreeMap<EntityType, usize>,
    /// Resources produced, per FHIR resource type (the site Organization included).
    pub resources: BTreeMap<String, usize>,
    /// Records of types that have no FHIR resource (concept, generic, roster), per type.
    pub not_exported: BTreeMap<EntityType, usize>,
    /// Records that could not be expressed as valid FHIR, with the reason; not in the output.
    pub skipped: Vec<MapError>,
    /// Data left out of resources that were written.
    pub warnings: Vec<Warning>,
}

impl FhirExportReport {
    /// Resources written, all types.
    pub fn total(&self) -> usize {
        self.resources.values().sum()
    }
}

/// The resources of an export and its report.
#[derive(Clone, Debug)]
pub struct Export {
    /// The site Organization first (unless disabled), then one resource per exported record,
    /// in input order.
    pub resources: Vec<Resource>,
    /// The record each resource came from (`None` for the Organization).
    pub origins: Vec<Option<EntityId>>,
    pub report: FhirExportReport,
    base_url: Option<String>,
}

/// A file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct ExportError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Maps every record. Obs groups are indexed first, so a group finds its members anywhere in
/// `records`. Two records that would become the same `Type/id` (a visit and an encounter with
/// one uuid) keep the first; the second is skipped.
pub fn export<I>(records: I, ctx: Context<'_>) -> Export
where
    I: IntoIterator<Item = (EntityType, Uid, Value)>,
{
    export_indexed(records, &[], ctx)
}

/// As [`export`], for some of a node's records (an incremental export): `others` are records
/// that are not exported but may be obs group members of those that are (their groups'
/// `hasMember` needs every member).
pub fn export_indexed<I>(
    records: I,
    others: &[(EntityType, Uid, Value)],
    ctx: Context<'_>,
) -> Export
where
    I: IntoIterator<Item = (EntityType, Uid, Value)>,
{
    let records: Vec<(EntityType, Uid, Value)> = records.into_iter().collect();
    let mut mapper = Mapper::new(ctx);
    for (ty, uuid, value) in records.iter().chain(others) {
        mapper.index(*ty, *uuid, value);
    }
    let mut report = FhirExportReport::default();
    let mut resources = Vec::new();
    let mut origins = Vec::new();
    let mut seen: HashSet<(&'static str, String)> = HashSet::new();
    if ctx.settings.export_organization() {
        let org = Resource::Organization(ctx.organization());
        seen.insert((org.resource_type(), org.id().to_string()));
        resources.push(org);
        origins.push(None);
    }
    for (ty, uuid, value) in &records {
        *report.records.entry(*ty).or_default() += 1;
        let entity = EntityId::new(*ty, *uuid);
        match mapper.map(*ty, *uuid, value) {
            Ok(None) => *report.not_exported.entry(*ty).or_default() += 1,
            Ok(Some(mapped)) => {
                let key = (mapped.resource.resource_type(), mapped.resource.id().to_string());
                if !seen.insert(key.clone()) {
                    report.skipped.push(MapError {
                        entity,
                        field: "uuid".into(),
                        reason: format!(
                            "{}/{} is already produced by another record",
                            key.0, key.1
                        ),
                    });
                    continue;
                }
                report.warnings.extend(mapped.warnings);
                resources.push(mapped.resource);
                origins.push(Some(entity));
            }
            Err(e) => report.skipped.push(e),
        }
    }
    for r in &resources {
        *report.resources.entry(r.resource_type().to_string()).or_default() += 1;
    }
    Export { resources, origins, report, base_url: ctx.settings.base_url.clone() }
}

impl Export {
    /// NDJSON text per resource type: `(file name, content)`, e.g. `("Patient.ndjson", ...)`,
    /// one resource per line, in [`RESOURCE_TYPES`] order.
    pub fn ndjson(&self) -> Vec<(String, String)> {
        let mut files: BTreeMap<usize, (String, String)> = BTreeMap::new();
        for r in &self.resources {
            let rank =
                RESOURCE_TYPES.iter().position(|t| *t == r.resource_type()).unwrap_or(usize::MAX);
            let (_, text) = files
                .entry(rank)
                .or_insert_with(|| (format!("{}.ndjson", r.resource_type()), String::new()));
            text.push_str(&r.to_json().to_string());
            text.push('\n');
        }
        files.into_values().collect()
    }

    /// A transaction Bundle: one `PUT Type/<id>` entry per resource, `fullUrl`
    /// `<base_url>/Type/<id>` or `urn:uuid:<id>`. A resource whose id is not a uuid needs
    /// `base_url`; without it, its record is returned as skipped.
    pub fn transaction_bundle(&self) -> (Bundle, Vec<MapError>) {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for (r, origin) in self.resources.iter().zip(&self.origins) {
            let (ty, id) = (r.resource_type(), r.id());
            let full_url = match &self.base_url {
                Some(base) => format!("{base}/{ty}/{id}"),
                None if id.parse::<Uid>().is_ok_and(|u| is_hex_uuid(&u)) => {
                    format!("urn:uuid:{id}")
                }
                None => {
                    if let Some(entity) = origin {
                        skipped.push(MapError {
                            entity: *entity,
                            field: "uuid".into(),
                            reason: "is not an RFC 4122 uuid, so its Bundle entry needs [fhir] base_url for a fullUrl".into(),
                        });
                    }
                    continue;
                }
            };
            entries.push(BundleEntry {
                full_url,
                resource: r.clone(),
                request: BundleRequest { method: "PUT".into(), url: format!("{ty}/{id}") },
            });
        }
        (Bundle::transaction(entries), skipped)
    }
}

/// Exports `records` as NDJSON files in `dir` (created if need be). Files of resource types
/// this export does not hold are removed, so the directory holds exactly this export.
pub fn write_ndjson<I>(
    records: I,
    ctx: Context<'_>,
    dir: &Path,
) -> Result<FhirExportReport, ExportError>
where
    I: IntoIterator<Item = (EntityType, Uid, Value)>,
{
    let export = export(records, ctx);
    export.write_ndjson(dir)?;
    Ok(export.report)
}

/// Exports `records` as one transaction Bundle in `file`.
pub fn write_bundle<I>(
    records: I,
    ctx: Context<'_>,
    file: &Path,
) -> Result<FhirExportReport, ExportError>
where
    I: IntoIterator<Item = (EntityType, Uid, Value)>,
{
    let mut export = export(records, ctx);
    export.write_bundle(file)?;
    Ok(export.report)
}

impl Export {
    /// Writes [`Export::ndjson`] into `dir`; returns the paths written.
    pub fn write_ndjson(&self, dir: &Path) -> Result<Vec<PathBuf>, ExportError> {
        fn err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
            move |source| ExportError { path: path.to_path_buf(), source }
        }
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let files = self.ndjson();
        let mut written = Vec::new();
        for (name, text) in &files {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        for ty in RESOURCE_TYPES {
            let path = dir.join(format!("{ty}.ndjson"));
            if !written.contains(&path) && path.exists() {
                std::fs::remove_file(&path).map_err(err(&path))?;
            }
        }
        Ok(written)
    }

    /// Writes [`Export::transaction_bundle`] to `file`; entries it had to leave out are added
    /// to the report's skipped records (and their resources counted out).
    pub fn write_bundle(&mut self, file: &Path) -> Result<(), ExportError> {
        let (bundle, skipped) = self.transaction_bundle();
        for e in &skipped {
            if let Some(ty) = super::map::resource_type_of(e.entity.ty)
                && let Some(n) = self.report.resources.get_mut(ty)
            {
                *n = n.saturating_sub(1);
            }
        }
        self.report.resources.retain(|_, n| *n > 0);
        self.report.skipped.extend(skipped);
        let mut text = serde_json::to_string_pretty(&bundle).map_err(|e| ExportError {
            path: file.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        write_atomic(file, text.as_bytes())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let err = |source| ExportError { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
