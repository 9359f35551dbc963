//! Reading an EMR into the node: the keyset search per FHIR type, each page one transaction
//! (records, agreed states, cursor), resources that failed before read again, and the sweep of
//! ids that finds deletes (docs/emr.md, "Reading" and "Deletes").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::{
    EMR_ATTEMPTS_MAX, EMR_PAGES_PER_RUN_MAX, EMR_RETRIES_PER_RUN_MAX, EmrHttp, EmrReply, EmrReport,
    ReadBack, Stop, agreed_on, fhir_types, outcome_text, rank, stop,
};
use crate::emr::EmrLink;
use crate::emr::diff::{self, Flat};
use crate::emr::search::{self, Since};
use crate::entity::{self, Record, schema};
use crate::fhir::ConceptCodes;
use crate::id::{EntityId, EntityType};
use crate::node::{Node, NodeError};
use crate::store::emr::{EmrBase, EmrCursor, EmrRead};

impl Node {
    // ---------------------------------------------------------------- reading ---

    /// Reads every type of the link from its cursor; each page is one transaction (records,
    /// agreed states, cursor).
    pub(super) fn emr_read(
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
    pub(super) fn emr_standing_failures(&self, link: &EmrLink) -> Result<Vec<String>, Stop> {
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
    pub(super) fn emr_page(
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
    pub(super) fn emr_request(
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
        self.with_mapping(codes, |mapper, unmapper| {
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
            unmapped.sort_by_key(|(_, _, u)| match u {
                Ok(Some(u)) => rank(u.entity.ty),
                _ => 0,
            });
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
                    .map(|r| self.projection(mapper, unmapper, &id, r))
                    .unwrap_or_default();
                let emr = diff::flatten(id.ty, &un.fields, &un.unsaid);
                let parse = |s: &String| serde_json::from_str::<Flat>(s).ok();
                let base_flat = base.and_then(|b| parse(&b.fields));
                let pending = base.and_then(|b| b.pending.as_ref().and_then(parse));
                let edits =
                    diff::emr_edits(id.ty, base_flat.as_ref(), pending.as_ref(), &emr, &held);
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
                        let why =
                            format!("field {} does not validate as a {} record", e.path, id.ty);
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
        })
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
    pub(super) fn emr_reconcile(
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
}
