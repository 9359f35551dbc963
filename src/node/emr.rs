//! The EMR bridge of a node (`docs/emr.md`): one run reads what the EMR changed since its
//! cursor into records (`Node::emr_read`), then writes into the EMR the records it does not
//! hold as this node holds them (`Node::emr_write`). `serve` runs it every `poll_secs` per
//! `[[emr]]` link; `sitesync emr sync` runs it now.
//!
//! The pure parts are `crate::emr` (config, field-by-field comparison, overlay, search) and
//! `crate::fhir::unmap`; this file reads the store, talks HTTP through an [`EmrHttp`], and
//! makes each step durable before the next.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Node, NodeError};
use crate::emr::EmrLink;
use crate::emr::config::EMR_TYPES;
use crate::emr::diff::{self, Flat};
use crate::emr::search;
use crate::entity;
use crate::fhir::{ConceptCodes, Context, Date, Mapper, Site, Unmapped, Unmapper};
use crate::id::{EntityId, EntityType, Uid};
use crate::store::emr::EmrBase;

mod http;
mod read;
mod write;

pub use http::{UreqEmr, emr_loop, spawn_emr_loops};

/// Longest time one HTTP request to an EMR may take.
pub const EMR_REQUEST_TIMEOUT_SECS: u64 = 60;
/// Largest answer read from an EMR.
pub const EMR_RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Pages read per FHIR type in one run (the rest comes next run: a run always ends).
pub const EMR_PAGES_PER_RUN_MAX: usize = 1_000;
/// Attempts of one request on transient failures (408, 429, 5xx, no answer).
pub const EMR_ATTEMPTS_MAX: u32 = 4;
/// Re-reads of a resource that moved between our read and our write (412), per write.
pub const EMR_CONFLICT_RETRIES_MAX: u32 = 3;
/// Resources that failed before tried again per run (read and write).
pub const EMR_RETRIES_PER_RUN_MAX: usize = 500;

/// An HTTP answer from an EMR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmrReply {
    pub status: u16,
    pub body: String,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<u64>,
}

/// How the bridge reaches an EMR (ureq in a running node, a script in tests). An `Err` is a
/// failure without an answer (refused, dropped, timed out): retried.
pub trait EmrHttp {
    fn get(&mut self, url: &str) -> Result<EmrReply, String>;
    /// `PUT url` with a FHIR JSON body and, when given, `If-Match`.
    fn put(&mut self, url: &str, body: &[u8], if_match: Option<&str>) -> Result<EmrReply, String>;
    /// Waits before a retry (tests do not).
    fn wait(&mut self, d: Duration);
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmrReport {
    pub emr: String,
    /// Resources read from the EMR.
    pub read: u64,
    /// Records changed in this node by what the EMR changed.
    pub records_in: u64,
    /// Resources read that changed nothing (already agreed, echoes of the bridge's writes).
    pub unchanged: u64,
    /// Resources written into the EMR (created and updated).
    pub written: u64,
    pub created: u64,
    /// Records the EMR already held as this node does (nothing written).
    pub agreed: u64,
    /// Records deleted in the EMR, voided (or retired) here.
    pub deleted: u64,
    /// Records that could not be read or written, and why (ids and reasons, never values).
    pub failed: Vec<EmrFailure>,
    /// Why the run stopped early, if it did (the EMR unreachable, a bad answer).
    pub error: Option<String>,
    pub requests: u64,
    pub per_type: BTreeMap<String, (u64, u64)>,
}

/// One resource the bridge could not carry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmrFailure {
    /// `Type/id`.
    pub resource: String,
    /// `read` (EMR -> node) or `write`.
    pub way: String,
    pub status: Option<u16>,
    pub reason: String,
}

/// A resource of a page, its key and what it reads as.
type ReadBack<'r> = (String, &'r Value, Result<Option<Unmapped>, crate::fhir::UnmapError>);

/// A run that cannot go on (the EMR unreachable, a bad answer to a search).
struct Stop(String);

/// The FHIR resource types of a link's entity types, in reference order.
fn fhir_types(link: &EmrLink) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for ty in EMR_TYPES.iter().filter(|t| link.types.contains(t)) {
        if let Some(r) = crate::fhir::map::resource_type_of(*ty)
            && !out.contains(&r)
        {
            out.push(r);
        }
    }
    out
}

impl Node {
    fn emr_link(&self, name: &str) -> Result<EmrLink, NodeError> {
        self.config.emr.link(name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.config.emr.links.iter().map(|l| l.name.as_str()).collect();
            NodeError::Input(format!(
                "no [[emr]] named {name:?} in sitesync.toml (configured: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ))
        })
    }

    /// One run of the bridge to EMR `name`: read, then write, as its direction allows.
    /// With `reconcile`, also the sweep that finds records deleted in the EMR (otherwise it
    /// runs every `reconcile_secs`).
    pub fn emr_run(
        &self,
        name: &str,
        http: &mut dyn EmrHttp,
        reconcile: bool,
    ) -> Result<EmrReport, NodeError> {
        let link = self.emr_link(name)?;
        if self.store.has_dirty()? {
            self.merge_received()?;
        }
        let mut report = EmrReport { emr: link.name.clone(), ..EmrReport::default() };
        let codes = self.concept_codes()?;
        let mut stopped = None;
        if link.direction.reads()
            && let Err(Stop(why)) = self.emr_read(&link, http, &codes, &mut report)
        {
            stopped = Some(why);
        }
        let (last, now) = (self.store.emr_state(&link.name)?.last_reconcile, self.now());
        // A clock set back makes the sweep due too, rather than hours late.
        let due = reconcile || now < last || now - last >= link.reconcile_secs as i64;
        if stopped.is_none() && link.direction.reads() && due {
            match self.emr_reconcile(&link, http, &mut report) {
                Ok(()) => {
                    let now = self.now();
                    self.store.update_emr_state(&link.name, None, |s| s.last_reconcile = now)?;
                }
                Err(Stop(why)) => stopped = Some(why),
            }
        }
        if stopped.is_none()
            && link.direction.writes()
            && let Err(Stop(why)) = self.emr_write(&link, http, &codes, &mut report)
        {
            stopped = Some(why);
        }
        report.error = stopped;
        self.emr_record_run(&link, &report)?;
        Ok(report)
    }

    /// Held concepts by their mapped codes, for codes an EMR sends without our uuids.
    fn concept_codes(&self) -> Result<ConceptCodes, NodeError> {
        let mut concepts = Vec::new();
        for id in self.store.list(Some(EntityType::Concept))? {
            if let Some((v, _)) = self.store.get(&id)? {
                concepts.push((id.uuid, v));
            }
        }
        Ok(ConceptCodes::build(self.fhir_settings(), concepts.iter().map(|(u, v)| (*u, v))))
    }

    /// A record as this node holds it, in stored form (`None`: not held).
    fn stored_record(&self, id: &EntityId) -> Result<Option<Map<String, Value>>, NodeError> {
        let Some((output, _)) = self.store.get(id)? else { return Ok(None) };
        match entity::validate(id.ty, &output, id.uuid) {
            Ok(r) => Ok(Some(r.body)),
            // A record that no longer validates (a newer node wrote a field this one does
            // not know): compared as empty, so only what the EMR says is touched.
            Err(_) => Ok(Some(Map::new())),
        }
    }

    /// The export mapping and its inverse as this node runs them (its settings, its site,
    /// today, its records as the source), for `f`.
    fn with_mapping<T>(
        &self,
        codes: &ConceptCodes,
        f: impl FnOnce(&mut Mapper, &Unmapper) -> T,
    ) -> T {
        let site = Site { node: self.id(), name: self.config.name.clone() };
        let source = |ty: EntityType, uuid: &Uid| {
            self.store.get(&EntityId::new(ty, *uuid)).ok().flatten().map(|(value, _)| value)
        };
        let settings = self.fhir_settings();
        let today = Date::from_unix(self.now());
        let ctx = Context { settings, site: &site, today, source: &source };
        let mut mapper = Mapper::new(ctx);
        let unmapper = Unmapper { settings, source: &source, codes, today };
        f(&mut mapper, &unmapper)
    }

    /// `unmap(map(record))`, flattened: the record as the EMR would give it back.
    fn projection(
        &self,
        mapper: &Mapper,
        unmapper: &Unmapper,
        id: &EntityId,
        record: &Map<String, Value>,
    ) -> Flat {
        let value = Value::Object(record.clone());
        let Ok(Some(mapped)) = mapper.map(id.ty, id.uuid, &value) else { return Flat::new() };
        match unmapper.unmap(&mapped.resource.to_json()) {
            Ok(Some(u)) => diff::flatten(id.ty, &u.fields, &u.unsaid),
            _ => Flat::new(),
        }
    }

    // ------------------------------------------------------------- reporting ---

    fn emr_fail(
        &self,
        link: &EmrLink,
        report: &mut EmrReport,
        resource: &str,
        way: &str,
        status: Option<u16>,
        reason: String,
    ) {
        tracing::warn!(emr = %link.name, resource, way, ?status, "emr: {reason}");
        let op = crate::store::failures::Operation::EmrRecord {
            emr: link.name.clone(),
            resource: resource.to_string(),
        };
        let _ = self.store.record_attempt(&crate::store::failures::Attempt {
            op: &op,
            result: Err(&reason),
            time: self.now(),
            next_retry: None,
            give_up_after: self.config.failures.give_up_after,
        });
        report.failed.push(EmrFailure {
            resource: resource.to_string(),
            way: way.to_string(),
            status,
            reason,
        });
    }

    fn emr_clear_failure(&self, link: &EmrLink, resource: &str) {
        let op = crate::store::failures::Operation::EmrRecord {
            emr: link.name.clone(),
            resource: resource.to_string(),
        };
        if self.store.failure(&op.id()).ok().flatten().is_some() {
            let _ = self.store.record_attempt(&crate::store::failures::Attempt {
                op: &op,
                result: Ok(()),
                time: self.now(),
                next_retry: None,
                give_up_after: self.config.failures.give_up_after,
            });
        }
    }

    /// The run's audit entry (counts only), the link's state and its failure record.
    fn emr_record_run(&self, link: &EmrLink, report: &EmrReport) -> Result<(), NodeError> {
        let now = self.now();
        let worth_an_entry = report.records_in + report.written > 0
            || report.error.is_some()
            || !report.failed.is_empty();
        let event = worth_an_entry.then(|| crate::event::Event {
            time: now,
            kind: crate::event::EventKind::EmrRun {
                emr: link.name.clone(),
                read: report.read,
                records_in: report.records_in,
                written: report.written,
                failed: report.failed.len() as u64,
                error: report.error.clone(),
            },
        });
        self.store.update_emr_state(&link.name, event, |s| {
            s.last_run = now;
            s.records_in += report.records_in;
            s.records_out += report.written;
            s.unchanged += report.unchanged;
            s.last_error = report.error.clone();
            if report.error.is_none() {
                s.last_success = now;
                s.consecutive_failures = 0;
            } else {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            }
            for (ty, (i, o)) in &report.per_type {
                let t = s.types.entry(ty.clone()).or_default();
                t.records_in += i;
                t.records_out += o;
                t.last_read = now;
            }
        })?;
        let op = crate::store::failures::Operation::EmrLink { emr: link.name.clone() };
        self.store.record_attempt(&crate::store::failures::Attempt {
            op: &op,
            result: report.error.as_deref().map_or(Ok(()), Err),
            time: now,
            next_retry: None,
            give_up_after: self.config.failures.give_up_after,
        })?;
        Ok(())
    }
}

/// The state both sides agree on: `fields`, as the resource version `resource` holds them.
fn agreed_on(resource: Option<&Value>, fields: &Flat) -> EmrBase {
    EmrBase {
        version: resource.and_then(search::version_id).map(str::to_string),
        last_updated: resource.and_then(search::last_updated).map(str::to_string),
        fields: serde_json::to_string(fields).unwrap_or_default(),
        pending: None,
        gone: false,
    }
}

/// Where a type stands in reference order: what a record names comes first.
fn rank(ty: EntityType) -> usize {
    EMR_TYPES.iter().position(|t| *t == ty).unwrap_or(usize::MAX)
}

fn stop(e: impl std::fmt::Display) -> Stop {
    Stop(e.to_string())
}

/// The diagnostics of an OperationOutcome, or the start of the body.
fn outcome_text(body: &str) -> String {
    let text = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let issues = v.get("issue")?.as_array()?.clone();
            let parts: Vec<String> = issues
                .iter()
                .filter_map(|i| {
                    i.get("diagnostics")
                        .or_else(|| i.get("details").and_then(|d| d.get("text")))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    text.chars().take(crate::fhir::push::OUTCOME_TEXT_MAX).collect()
}

/// One EMR link as `sitesync emr status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmrLinkStatus {
    pub name: String,
    pub base_url: String,
    pub profile: String,
    pub direction: String,
    pub poll_secs: u64,
    pub last_run: i64,
    pub last_success: i64,
    /// Seconds since the last run that went through (`None`: never).
    pub lag_secs: Option<i64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub records_in: u64,
    pub records_out: u64,
    pub unchanged: u64,
    /// Resources standing failed (read or write).
    pub failed: u64,
    pub types: Vec<EmrTypeStatus>,
}

/// One FHIR type of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmrTypeStatus {
    pub fhir_type: String,
    /// The greatest `meta.lastUpdated` read (the EMR's clock).
    pub cursor: Option<String>,
    pub records_in: u64,
    pub records_out: u64,
    pub last_read: i64,
}

/// A lock per (node directory, EMR name): one run at a time, across the serve loop, the
/// admin view and the CLI.
fn emr_lock(dir: &std::path::Path, name: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
    type Locks = BTreeMap<(std::path::PathBuf, String), std::sync::Arc<std::sync::Mutex<()>>>;
    static LOCKS: std::sync::Mutex<Locks> = std::sync::Mutex::new(BTreeMap::new());
    let mut locks = LOCKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry((dir.to_path_buf(), name.to_string())).or_default().clone()
}

impl Node {
    /// Runs the bridge now: to EMR `name`, or to every configured EMR; with `reconcile`, the
    /// sweep for deletes too.
    pub fn emr_now(
        &self,
        name: Option<&str>,
        reconcile: bool,
    ) -> Result<Vec<EmrReport>, NodeError> {
        let names: Vec<String> = match name {
            Some(n) => vec![self.emr_link(n)?.name],
            None => self.config.emr.links.iter().map(|l| l.name.clone()).collect(),
        };
        if names.is_empty() {
            return Err(NodeError::Input(
                "no [[emr]] in sitesync.toml: nothing to sync (docs/emr.md says how to add one)"
                    .into(),
            ));
        }
        let mut out = Vec::new();
        for n in names {
            let link = self.emr_link(&n)?;
            let lock = emr_lock(&self.dir, &n);
            let _guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut http = UreqEmr::new(&link);
            out.push(self.emr_run(&n, &mut http, reconcile)?);
        }
        Ok(out)
    }

    /// Every configured EMR link with its state.
    pub fn emr_status(&self) -> Result<Vec<EmrLinkStatus>, NodeError> {
        let now = self.now();
        let failures = self.store.failures(now)?;
        let mut out = Vec::new();
        for link in &self.config.emr.links {
            let s = self.store.emr_state(&link.name)?;
            let failed = failures
                .iter()
                .filter(|f| {
                    matches!(&f.op, crate::store::failures::Operation::EmrRecord { emr, .. } if *emr == link.name)
                })
                .count() as u64;
            let mut types = Vec::new();
            for t in fhir_types(link) {
                let c = self.store.emr_cursor(&link.name, t)?;
                let counts = s.types.get(t).cloned().unwrap_or_default();
                types.push(EmrTypeStatus {
                    fhir_type: t.to_string(),
                    cursor: c.last_updated,
                    records_in: counts.records_in,
                    records_out: counts.records_out,
                    last_read: counts.last_read,
                });
            }
            out.push(EmrLinkStatus {
                name: link.name.clone(),
                base_url: link.base_url.clone(),
                profile: link.profile.as_str().into(),
                direction: link.direction.as_str().into(),
                poll_secs: link.poll_secs,
                last_run: s.last_run,
                last_success: s.last_success,
                lag_secs: (s.last_success > 0).then(|| now - s.last_success),
                consecutive_failures: s.consecutive_failures,
                last_error: s.last_error,
                records_in: s.records_in,
                records_out: s.records_out,
                unchanged: s.unchanged,
                failed,
                types,
            });
        }
        Ok(out)
    }
}
