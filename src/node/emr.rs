//! The EMR bridge of a node (`docs/emr.md`): one run reads what the EMR changed since its
//! cursor into records (`Node::emr_read`), then writes into the EMR the records it does not
//! hold as this node holds them (`Node::emr_write`). `serve` runs it every `poll_secs` per
//! `[[emr]]` link; `sitesync emr sync` runs it now.
//!
//! The pure parts are `crate::emr` (config, field-by-field comparison, overlay, search) and
//! `crate::fhir::unmap`; this file reads the store, talks HTTP through an [`EmrHttp`], and
//! makes each step durable before the next.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Node, NodeError};
use crate::emr::config::EMR_TYPES;
use crate::emr::diff::{self, Flat};
use crate::emr::search::{self, Since};
use crate::emr::{EmrLink, Profile, overlay};
use crate::entity::{self, Record, schema};
use crate::fhir::{ConceptCodes, Context, Date, Mapper, Site, Unmapped, Unmapper};
use crate::id::{EntityId, EntityType, Uid};
use crate::store::emr::{EmrBase, EmrCursor, EmrRead};

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

    // ---------------------------------------------------------------- reading ---

    /// Reads every type of the link from its cursor; each page is one transaction (records,
    /// agreed states, cursor).
    fn emr_read(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        codes: &ConceptCodes,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        self.emr_retry_reads(link, http, codes, report)?;
        for fhir_type in fhir_types(link) {
            let cursor = self.store.emr_cursor(&link.name, fhir_type).map_err(stop)?;
            let mut since = search::first_since(cursor.last_updated.as_deref(), link.overlap_secs);
            let mut last = cursor.last_updated;
            for _ in 0..EMR_PAGES_PER_RUN_MAX {
                let url = search::search_url(&link.base_url, fhir_type, &since, link.page_size);
                let page = self.emr_page(link, http, &url, report)?;
                let mut resources = page.resources;
                let full = resources.len() >= link.page_size;
                if let Since::At(t) = &since {
                    // A burst sharing one instant: read through it by its own pages.
                    let mut next = page.next;
                    let mut pages = 0;
                    while let Some(n) = next.take().filter(|_| pages < EMR_PAGES_PER_RUN_MAX) {
                        let more = self.emr_page(link, http, &n, report)?;
                        resources.extend(more.resources);
                        next = more.next;
                        pages += 1;
                    }
                    last = search::later(last, Some(t));
                    self.emr_read_page(link, fhir_type, &resources, &last, codes, report)?;
                    since = Since::After(t.clone());
                    continue;
                }
                for r in &resources {
                    last = search::later(last, search::last_updated(r));
                }
                self.emr_read_page(link, fhir_type, &resources, &last, codes, report)?;
                if !full {
                    break;
                }
                match search::after_full_page(&resources) {
                    Some(s) if s != since => since = s,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// The resources of this EMR that failed before (`EmrRecord` failures), by key.
    fn emr_standing_failures(&self, link: &EmrLink) -> Result<Vec<String>, Stop> {
        let failures = self.store.failures(self.now()).map_err(stop)?;
        let mut keys: Vec<String> = failures
            .into_iter()
            .filter_map(|f| match f.op {
                crate::store::failures::Operation::EmrRecord { emr, resource }
                    if emr == link.name =>
                {
                    Some(resource)
                }
                _ => None,
            })
            .collect();
        keys.truncate(EMR_RETRIES_PER_RUN_MAX);
        Ok(keys)
    }

    /// Reads again, one by one, the resources that failed before (what they waited for may
    /// have arrived); the cursors stay where they are. A resource gone from the EMR (404,
    /// 410) is left to the write side, which closes its failure.
    fn emr_retry_reads(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        codes: &ConceptCodes,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for key in self.emr_standing_failures(link)? {
            let reply =
                self.emr_request(http, report, |h| h.get(&format!("{}/{key}", link.base_url)))?;
            if reply.status != 200 {
                continue;
            }
            if let Ok(r) = serde_json::from_str::<Value>(&reply.body) {
                let ty = key.split('/').next().unwrap_or_default().to_string();
                by_type.entry(ty).or_default().push(r);
            }
        }
        for fhir_type in fhir_types(link) {
            let Some(resources) = by_type.remove(fhir_type) else { continue };
            let cursor = self.store.emr_cursor(&link.name, fhir_type).map_err(stop)?;
            self.emr_read_page(link, fhir_type, &resources, &cursor.last_updated, codes, report)?;
        }
        Ok(())
    }

    /// GET a search page, retrying transient failures.
    fn emr_page(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        url: &str,
        report: &mut EmrReport,
    ) -> Result<search::Page, Stop> {
        let reply = self.emr_request(http, report, |h| h.get(url))?;
        if reply.status != 200 {
            return Err(Stop(format!(
                "searching {}: HTTP {}: {}",
                link.name,
                reply.status,
                outcome_text(&reply.body)
            )));
        }
        search::parse_page(&reply.body).map_err(|e| Stop(format!("searching {}: {e}", link.name)))
    }

    /// One request with retries of 408, 429, 5xx and failures without an answer.
    fn emr_request(
        &self,
        http: &mut dyn EmrHttp,
        report: &mut EmrReport,
        mut send: impl FnMut(&mut dyn EmrHttp) -> Result<EmrReply, String>,
    ) -> Result<EmrReply, Stop> {
        let policy = crate::fhir::push::RetryPolicy::default();
        let mut last = String::new();
        for attempt in 1..=EMR_ATTEMPTS_MAX {
            report.requests += 1;
            match send(http) {
                Ok(r) if !matches!(r.status, 408 | 429 | 500..=599) => return Ok(r),
                Ok(r) => {
                    last = format!("HTTP {}: {}", r.status, outcome_text(&r.body));
                    if attempt < EMR_ATTEMPTS_MAX {
                        let wait = match r.retry_after {
                            Some(s) => Duration::from_secs(s.min(policy.cap_ms / 1000)),
                            None => policy.delay(attempt, self.random_u32()),
                        };
                        http.wait(wait);
                    }
                }
                Err(e) => {
                    last = e;
                    if attempt < EMR_ATTEMPTS_MAX {
                        http.wait(policy.delay(attempt, self.random_u32()));
                    }
                }
            }
        }
        Err(Stop(format!("after {EMR_ATTEMPTS_MAX} attempts: {last}")))
    }

    /// Turns one page into records and commits them with the cursor.
    fn emr_read_page(
        &self,
        link: &EmrLink,
        fhir_type: &str,
        resources: &[Value],
        last: &Option<String>,
        codes: &ConceptCodes,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let site = Site { node: self.id(), name: self.config.name.clone() };
        let source = |ty: EntityType, uuid: &Uid| {
            self.store.get(&EntityId::new(ty, *uuid)).ok().flatten().map(|(value, _)| value)
        };
        let settings = self.fhir_settings();
        let today = Date::from_unix(self.now());
        let ctx = Context { settings, site: &site, today, source: &source };
        let mapper = Mapper::new(ctx);
        let unmapper = Unmapper { settings, source: &source, codes, today };
        // The last version of each resource in the page (a boundary may repeat one).
        let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
        for r in resources {
            let key = format!(
                "{}/{}",
                r.get("resourceType").and_then(Value::as_str).unwrap_or("?"),
                r.get("id").and_then(Value::as_str).unwrap_or("?")
            );
            latest.insert(key, r);
        }
        report.read += latest.len() as u64;
        let mut unmapped: Vec<ReadBack> =
            latest.iter().map(|(k, r)| (k.clone(), *r, unmapper.unmap(r))).collect();
        // What a record names comes first (a visit before the encounters in it).
        let rank = |u: &Result<Option<Unmapped>, _>| match u {
            Ok(Some(u)) => EMR_TYPES.iter().position(|t| *t == u.entity.ty).unwrap_or(0),
            _ => 0,
        };
        unmapped.sort_by_key(|(_, _, u)| rank(u));
        let ids: Vec<EntityId> = unmapped
            .iter()
            .filter_map(|(_, _, u)| u.as_ref().ok()?.as_ref().map(|u| u.entity))
            .collect();
        let bases = self.store.emr_bases(&link.name, &ids).map_err(stop)?;
        let mut records: Vec<Record> = Vec::new();
        let mut agreed: Vec<(EntityId, EmrBase)> = Vec::new();
        let mut in_page: BTreeSet<EntityId> = BTreeSet::new();
        for (key, resource, result) in unmapped {
            let un = match result {
                Ok(Some(u)) if link.types.contains(&u.entity.ty) => u,
                Ok(_) => continue,
                Err(e) => {
                    self.emr_fail(link, report, &key, "read", None, e.to_string());
                    continue;
                }
            };
            let id = un.entity;
            let version = search::version_id(resource).map(str::to_string);
            let updated = search::last_updated(resource).map(str::to_string);
            let base = bases.get(&id);
            if let Some(b) = base
                && b.pending.is_none()
                && b.version.is_some()
                && b.version == version
                && b.last_updated == updated
            {
                report.unchanged += 1;
                continue;
            }
            let held_record = self.stored_record(&id).map_err(stop)?;
            let held = held_record
                .as_ref()
                .map(|r| self.projection(&mapper, &unmapper, &id, r))
                .unwrap_or_default();
            let emr = diff::flatten(id.ty, &un.fields, &un.unsaid);
            let parse = |s: &String| serde_json::from_str::<Flat>(s).ok();
            let base_flat = base.and_then(|b| parse(&b.fields));
            let pending = base.and_then(|b| b.pending.as_ref().and_then(parse));
            let edits = diff::emr_edits(id.ty, base_flat.as_ref(), pending.as_ref(), &emr, &held);
            let agreed_now = agreed_on(Some(resource), &emr);
            if edits.is_empty() {
                report.unchanged += 1;
                agreed.push((id, agreed_now));
                continue;
            }
            let mut fields = held_record.unwrap_or_default();
            diff::apply(&mut fields, &edits);
            for (k, v) in &un.defaults {
                fields.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let mut input = entity::to_output(id.ty, &fields);
            input["uuid"] = Value::from(id.uuid.to_string());
            let record = match entity::validate(id.ty, &input, id.uuid) {
                Ok(r) => r,
                Err(e) => {
                    // The path only: the problem text may quote the value.
                    let why = format!("field {} does not validate as a {} record", e.path, id.ty);
                    self.emr_fail(link, report, &key, "read", None, why);
                    continue;
                }
            };
            if let Some(missing) = self.missing_reference(&record, &in_page).map_err(stop)? {
                let why = format!("names {missing}, which this node does not hold yet");
                self.emr_fail(link, report, &key, "read", None, why);
                continue;
            }
            in_page.insert(id);
            records.push(record);
            agreed.push((id, agreed_now));
            self.emr_clear_failure(link, &key);
        }
        let cursor = EmrCursor { last_updated: last.clone() };
        let outcomes = self
            .store
            .emr_commit_read(
                &self.key,
                &records,
                self.now(),
                &EmrRead { emr: &link.name, fhir_type, cursor: &cursor, bases: &agreed },
            )
            .map_err(stop)?;
        let changed = outcomes.iter().filter(|o| o.changed).count() as u64;
        report.records_in += changed;
        report.per_type.entry(fhir_type.to_string()).or_default().0 += changed;
        Ok(())
    }

    /// The first record `record` names that this node does not hold (and that is not being
    /// written with it).
    fn missing_reference(
        &self,
        record: &Record,
        in_page: &BTreeSet<EntityId>,
    ) -> Result<Option<EntityId>, NodeError> {
        let Some(fields) = schema::fields(record.id.ty) else { return Ok(None) };
        let mut named = Vec::new();
        for f in fields {
            if let (schema::Kind::Ref(ty), Some(Value::String(u))) =
                (f.kind, record.body.get(f.name))
                && ty != EntityType::Concept
                && let Ok(uuid) = crate::id::parse_uuid(u)
            {
                named.push(EntityId::new(ty, uuid));
            }
        }
        for id in named {
            if !in_page.contains(&id) && self.store.get(&id)?.is_none() {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// The sweep that finds deletes (FHIR search never returns a deleted resource): every id
    /// the EMR holds, per type; a record agreed with the EMR before whose id is gone, and that
    /// the EMR answers 404 or 410 for, is voided (retired, for places and providers) here:
    /// records are never deleted. A type whose id list could not be read whole is left alone.
    fn emr_reconcile(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let known = self.store.emr_known(&link.name).map_err(stop)?;
        let mut gone: Vec<EntityId> = Vec::new();
        for fhir_type in fhir_types(link) {
            let mine: Vec<&EntityId> = known
                .iter()
                .filter(|e| crate::fhir::map::resource_type_of(e.ty) == Some(fhir_type))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut ids: BTreeSet<String> = BTreeSet::new();
            let mut next = Some(format!("{}/{fhir_type}?_count={}", link.base_url, link.page_size));
            let mut whole = false;
            for _ in 0..EMR_PAGES_PER_RUN_MAX * 10 {
                let Some(url) = next.take() else {
                    whole = true;
                    break;
                };
                let page = self.emr_page(link, http, &url, report)?;
                ids.extend(
                    page.resources.iter().filter_map(|r| r.get("id")?.as_str().map(str::to_string)),
                );
                next = page.next;
            }
            if !whole {
                continue;
            }
            for e in mine {
                if ids.contains(e.uuid.as_str()) {
                    continue;
                }
                let url = format!("{}/{fhir_type}/{}", link.base_url, e.uuid);
                let reply = self.emr_request(http, report, |h| h.get(&url))?;
                if matches!(reply.status, 404 | 410) {
                    gone.push(*e);
                }
            }
        }
        let mut records = Vec::new();
        for e in &gone {
            let Some(mut fields) = self.stored_record(e).map_err(stop)? else { continue };
            let flag = if matches!(e.ty, EntityType::Location | EntityType::Provider) {
                "retired"
            } else {
                "voided"
            };
            if fields.get(flag) == Some(&Value::Bool(true)) {
                continue;
            }
            fields.insert(flag.into(), Value::Bool(true));
            let mut input = entity::to_output(e.ty, &fields);
            input["uuid"] = Value::from(e.uuid.to_string());
            if let Ok(r) = entity::validate(e.ty, &input, e.uuid) {
                records.push(r);
            }
        }
        if !gone.is_empty() {
            let outcomes = self.store.put(&self.key, &records, self.now()).map_err(stop)?;
            report.records_in += outcomes.iter().filter(|o| o.changed).count() as u64;
            report.deleted += gone.len() as u64;
            let old = self.store.emr_bases(&link.name, &gone).map_err(stop)?;
            let marked: Vec<(EntityId, Option<EmrBase>)> = gone
                .iter()
                .map(|e| {
                    let base = old.get(e).cloned().unwrap_or_default();
                    (*e, Some(EmrBase { gone: true, pending: None, ..base }))
                })
                .collect();
            self.store.emr_set_bases(&link.name, &marked).map_err(stop)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- writing ---

    /// Writes into the EMR every record changed since the write side's position whose
    /// projection moved from what the EMR and this node last agreed on.
    fn emr_write(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        codes: &ConceptCodes,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let state = self.store.emr_state(&link.name).map_err(stop)?;
        let changes = self.store.fhir_changes(&state.out).map_err(stop)?;
        let mut wanted: BTreeSet<EntityId> =
            changes.entities.iter().filter(|e| link.types.contains(&e.ty)).copied().collect();
        // Records that failed before go again (a referenced record may be there now).
        for key in self.emr_standing_failures(link)? {
            let (ty, id) = key.split_once('/').unwrap_or_default();
            let Ok(uuid) = crate::id::parse_uuid(id) else { continue };
            for t in
                link.types.iter().filter(|t| crate::fhir::map::resource_type_of(**t) == Some(ty))
            {
                let e = EntityId::new(*t, uuid);
                if self.store.get(&e).map_err(stop)?.is_some() {
                    wanted.insert(e);
                }
            }
        }
        let mut todo: Vec<EntityId> = wanted.into_iter().collect();
        let rank = |ty: EntityType| EMR_TYPES.iter().position(|t| *t == ty).unwrap_or(usize::MAX);
        todo.sort_by_key(|e| (rank(e.ty), *e));
        let site = Site { node: self.id(), name: self.config.name.clone() };
        let source = |ty: EntityType, uuid: &Uid| {
            self.store.get(&EntityId::new(ty, *uuid)).ok().flatten().map(|(value, _)| value)
        };
        let settings = self.fhir_settings();
        let today = Date::from_unix(self.now());
        let ctx = Context { settings, site: &site, today, source: &source };
        let mut mapper = Mapper::new(ctx);
        for id in todo.iter().filter(|e| e.ty == EntityType::Obs) {
            if let Ok(Some((v, _))) = self.store.get(id) {
                mapper.index(id.ty, id.uuid, &v);
            }
        }
        let unmapper = Unmapper { settings, source: &source, codes, today };
        for id in &todo {
            self.emr_write_one(link, http, &mapper, &unmapper, id, report)?;
        }
        self.store
            .update_emr_state(&link.name, None, |s| s.out = changes.cursor.clone())
            .map_err(stop)?;
        Ok(())
    }

    fn emr_write_one(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        mapper: &Mapper,
        unmapper: &Unmapper,
        id: &EntityId,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let Some(record) = self.stored_record(id).map_err(stop)? else { return Ok(()) };
        let mapped = match mapper.map(id.ty, id.uuid, &Value::Object(record.clone())) {
            Ok(Some(m)) => m.resource.to_json(),
            Ok(None) => return Ok(()),
            Err(e) => {
                let key = format!(
                    "{}/{}",
                    crate::fhir::map::resource_type_of(id.ty).unwrap_or("?"),
                    id.uuid
                );
                self.emr_fail(link, report, &key, "write", None, e.to_string());
                return Ok(());
            }
        };
        let fhir_type = mapped["resourceType"].as_str().unwrap_or_default().to_string();
        let key = format!("{fhir_type}/{}", id.uuid);
        let held = self.projection(mapper, unmapper, id, &record);
        let base = self.store.emr_bases(&link.name, &[*id]).map_err(stop)?.remove(id);
        if base.as_ref().is_some_and(|b| b.gone) {
            // Deleted in the EMR: its voiding here is not written back.
            return Ok(());
        }
        let base_flat = base.as_ref().and_then(|b| serde_json::from_str::<Flat>(&b.fields).ok());
        if base_flat.as_ref() == Some(&held) {
            // What the EMR last agreed to: nothing to write (an echo of a read, or done).
            return Ok(());
        }
        let url = format!("{}/{key}", link.base_url);
        for _ in 0..=EMR_CONFLICT_RETRIES_MAX {
            let current = self.emr_request(http, report, |h| h.get(&url))?;
            let current = match current.status {
                200 => serde_json::from_str::<Value>(&current.body).ok(),
                404 | 410 if base.is_some() => {
                    // Deleted in the EMR since: the read side voids the record; not re-created.
                    return Ok(());
                }
                404 | 410 => None,
                s => {
                    let why =
                        format!("reading it before the write: {}", outcome_text(&current.body));
                    self.emr_fail(link, report, &key, "write", Some(s), why);
                    return Ok(());
                }
            };
            if current.is_none() && !link.profile.creates() {
                let why = "the EMR does not hold it, and OpenMRS FHIR2 cannot create a record under \
                           its uuid (profile openmrs-fhir2: updates only)";
                self.emr_fail(link, report, &key, "write", Some(404), why.into());
                return Ok(());
            }
            let read_back = current.as_ref().and_then(|c| unmapper.unmap(c).ok().flatten());
            let skipped = read_back.as_ref().map(|u| u.skipped.clone()).unwrap_or_default();
            let emr_now = read_back.as_ref().map(|u| diff::flatten(id.ty, &u.fields, &u.unsaid));
            if emr_now.as_ref() == Some(&held) {
                report.agreed += 1;
                let agreed = agreed_on(current.as_ref(), &held);
                self.store.emr_set_bases(&link.name, &[(*id, Some(agreed))]).map_err(stop)?;
                return Ok(());
            }
            if let (Some(now), Some(b)) = (&emr_now, &base_flat)
                && now != b
            {
                // The EMR changed the record since the last agreement and the read has not
                // taken it in yet: the next read does; writing now would overwrite it.
                return Ok(());
            }
            let body = overlay::overlay(current.as_ref(), &mapped, &skipped);
            let pending = EmrBase {
                pending: Some(serde_json::to_string(&held).unwrap_or_default()),
                ..base.clone().unwrap_or_default()
            };
            self.store.emr_set_bases(&link.name, &[(*id, Some(pending))]).map_err(stop)?;
            let if_match = match (link.profile, &current) {
                (Profile::Fhir, Some(c)) => search::version_id(c).map(|v| format!("W/\"{v}\"")),
                _ => None,
            };
            let bytes = body.to_string().into_bytes();
            let reply =
                self.emr_request(http, report, |h| h.put(&url, &bytes, if_match.as_deref()))?;
            match reply.status {
                200 | 201 => {
                    // Crash tests: the EMR holds the write, this node has not noted it.
                    crate::failpoint("emr-after-write");
                    let stored = serde_json::from_str::<Value>(&reply.body).ok();
                    let agreed = agreed_on(stored.as_ref(), &held);
                    self.store.emr_set_bases(&link.name, &[(*id, Some(agreed))]).map_err(stop)?;
                    report.written += 1;
                    report.created += u64::from(reply.status == 201);
                    report.per_type.entry(fhir_type.clone()).or_default().1 += 1;
                    self.emr_clear_failure(link, &key);
                    return Ok(());
                }
                412 => continue,
                s => {
                    self.store.emr_set_bases(&link.name, &[(*id, base.clone())]).map_err(stop)?;
                    self.emr_fail(link, report, &key, "write", Some(s), outcome_text(&reply.body));
                    return Ok(());
                }
            }
        }
        let why = format!(
            "the EMR changed it {} times while it was being written",
            EMR_CONFLICT_RETRIES_MAX + 1
        );
        self.emr_fail(link, report, &key, "write", Some(412), why);
        Ok(())
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

/// [`EmrHttp`] with ureq: rustls with webpki roots for https, plain http as configured, the
/// auth header on every request (never logged).
pub struct UreqEmr {
    agent: ureq::Agent,
    auth: Option<crate::fhir::target::Secret>,
}

impl UreqEmr {
    pub fn new(link: &EmrLink) -> UreqEmr {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(EMR_REQUEST_TIMEOUT_SECS)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("sitesync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        UreqEmr { agent, auth: link.auth_header.clone() }
    }

    fn answer(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<EmrReply, String> {
        let mut resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(EMR_RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|e| format!("reading the answer (HTTP {status}): {e}"))?;
        Ok(EmrReply { status, body, retry_after })
    }
}

impl EmrHttp for UreqEmr {
    fn get(&mut self, url: &str) -> Result<EmrReply, String> {
        let mut req = self.agent.get(url).header("Accept", "application/fhir+json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth.expose());
        }
        Self::answer(req.call())
    }

    fn put(&mut self, url: &str, body: &[u8], if_match: Option<&str>) -> Result<EmrReply, String> {
        let mut req = self
            .agent
            .put(url)
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth.expose());
        }
        if let Some(m) = if_match {
            req = req.header("If-Match", m);
        }
        Self::answer(req.send(body))
    }

    fn wait(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Starts one [`emr_loop`] per `[[emr]]` link (called by `serve`).
pub fn spawn_emr_loops(
    node: &std::sync::Arc<Node>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) {
    for l in &node.config.emr.links {
        tasks.spawn(emr_loop(node.clone(), l.name.clone(), shutdown.clone()));
    }
}

/// Runs the bridge to EMR `name` at start, then every `poll_secs`; after a run that stopped
/// early, later, with backoff. The run itself is on a blocking thread.
pub async fn emr_loop(
    node: std::sync::Arc<Node>,
    name: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(link) = node.config.emr.link(&name).cloned() else { return };
    let interval_ms = link.poll_secs.saturating_mul(1000);
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let (n, l) = (node.clone(), name.clone());
        let ok = match tokio::task::spawn_blocking(move || n.emr_now(Some(&l), false)).await {
            Ok(Ok(reports)) => reports.iter().all(|r| r.error.is_none()),
            Ok(Err(e)) => {
                tracing::error!(emr = %name, "emr bridge: {e}");
                false
            }
            Err(e) => {
                tracing::error!(emr = %name, "emr bridge task: {e}");
                false
            }
        };
        if *shutdown.borrow() {
            return;
        }
        let delay = if ok {
            failures = 0;
            interval_ms
        } else {
            failures += 1;
            super::schedule::backoff_ms(failures, interval_ms.max(1000), node.random_u32())
        };
        wait = Duration::from_millis(delay);
    }
}
