//! FHIR from a node: incremental exports ([`Node::fhir_export`]), push runs to the
//! `[[fhir.targets]]` of the config ([`Node::push_now`], [`Node::push_run`]), their status
//! ([`Node::push_status`]), the HTTP client (ureq, blocking), and the loop `serve` runs for
//! continuous targets ([`spawn_push_loops`]).
//!
//! A run: the records changed since the target's cursor (`Store::fhir_changes`) and the
//! resources that failed before are mapped; resources whose version the target already
//! acknowledged are left out; the rest go in Bundles (`fhir::push`), and each accepted Bundle is
//! recorded in the store before the next is sent. The cursor moves only when the run did not stop
//! early. One audit entry per run that sent or failed anything. `docs/fhir-mapping.md`, "Pushing
//! to a FHIR server", gives the reasoning.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::{Node, NodeError};
use crate::event::{Event, EventKind};
use crate::fhir::push::{
    self, Delivery, FailedResource, HttpReply, Outgoing, Pusher, RetryPolicy, Transport,
};
use crate::fhir::{
    Context, Cursor, Date, Export, FhirSettings, PushReport, PushState, PushTarget,
    PushTargetStatus, Site,
};
use crate::id::{EntityId, EntityType, Uid, Vector};

/// Longest time one HTTP request may take, connection included.
pub const PUSH_REQUEST_TIMEOUT_SECS: u64 = 120;
/// Largest response body read (a transaction-response echoes every resource).
pub const PUSH_RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Slice of the retry waits, so a shutdown is noticed quickly.
const STOP_POLL_MS: u64 = 100;

type Rec = (EntityType, Uid, Value);

/// How a push run behaves beyond the target's configuration.
#[derive(Clone, Default)]
pub struct PushOptions {
    /// Also resend resources that failed before and did not change (by hand).
    pub retry_failed: bool,
    /// Map every record, not only those changed since the cursor (resources the target holds in
    /// the same version are still not resent).
    pub full: bool,
    /// Retries of transient failures (default: [`RetryPolicy::default`]).
    pub policy: Option<RetryPolicy>,
    /// Set when the run must stop (shutdown); checked between attempts and Bundles.
    pub stop: Option<watch::Receiver<bool>>,
}

/// A lock per (node directory, target name).
type TargetLocks = BTreeMap<(PathBuf, String), Arc<Mutex<()>>>;

/// One run per target at a time, across the serve loop, the admin view and the CLI.
fn target_lock(dir: &std::path::Path, name: &str) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<TargetLocks> = Mutex::new(BTreeMap::new());
    let mut locks = LOCKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry((dir.to_path_buf(), name.to_string())).or_default().clone()
}

/// An incremental export: the resources and the cursor to pass next time.
pub struct FhirExport {
    pub export: Export,
    pub cursor: Cursor,
}

impl Node {
    /// The FHIR settings in force: `[fhir]` of the config.
    pub fn fhir_settings(&self) -> &FhirSettings {
        &self.config.fhir.settings
    }

    /// Exports the records of `types` changed since `since` (all with `None`), plus the
    /// records in `extra`, with `settings`. A bad cursor (ahead of this store) is an input
    /// error naming it.
    pub fn fhir_export(
        &self,
        settings: &FhirSettings,
        types: &[EntityType],
        since: Option<&Cursor>,
        extra: &BTreeSet<EntityId>,
        progress: &dyn Fn(u64, u64),
    ) -> Result<FhirExport, NodeError> {
        let start = Vector::default();
        let changes =
            self.store.fhir_changes(since.map_or(&start, |c| &c.0)).map_err(|e| match e {
                crate::store::StoreError::Invalid(m) => NodeError::Input(m),
                other => other.into(),
            })?;
        let wanted: BTreeSet<EntityId> = match since {
            Some(_) => changes.entities.iter().chain(extra).copied().collect(),
            None => {
                let mut all = BTreeSet::new();
                for ty in types {
                    all.extend(self.store.list(Some(*ty))?);
                }
                all.extend(extra);
                all
            }
        };
        let (records, others) = self.load_for_export(wanted, types, since.is_none(), progress)?;
        let site = Site { node: self.id(), name: self.config.name.clone() };
        let source = |ty: EntityType, uuid: &Uid| {
            self.store.get(&EntityId::new(ty, *uuid)).ok().flatten().map(|(value, _)| value)
        };
        let ctx =
            Context { settings, site: &site, today: Date::from_unix(self.now()), source: &source };
        let export = crate::fhir::export_indexed(records, &others, ctx);
        Ok(FhirExport { export, cursor: Cursor(changes.cursor) })
    }

    /// Exports records as FHIR R4 into files: `out/<ResourceType>.ndjson`, and a transaction
    /// Bundle when asked. `types` empty means every type that has a resource.
    pub fn fhir_export_files(
        &self,
        req: super::command::FhirExportRequest,
        progress: &dyn Fn(u64, u64),
    ) -> Result<super::command::FhirExported, NodeError> {
        let mut types = req.types;
        if types.is_empty() {
            types = EntityType::ALL
                .iter()
                .copied()
                .filter(|t| crate::fhir::map::resource_type_of(*t).is_some())
                .collect();
        }
        let settings = req.settings.as_ref().unwrap_or(self.fhir_settings());
        let since = req.since.as_ref();
        let done = self.fhir_export(settings, &types, since, &Default::default(), progress)?;
        let mut export = done.export;
        let failed = |e: crate::fhir::ExportError| NodeError::Io { path: e.path, source: e.source };
        let files = export.write_ndjson(&req.out).map_err(failed)?.len();
        let bundle_entries = match &req.bundle {
            Some(file) => {
                export.write_bundle(file).map_err(failed)?;
                Some(export.report.total())
            }
            None => None,
        };
        Ok(super::command::FhirExported {
            files,
            resources: export.resources.len(),
            bundle_entries,
            report: export.report,
            cursor: done.cursor,
        })
    }

    /// Reads the records to export (of `types`, in key order) and, when some are obs and not
    /// all records are exported, every other obs (a group's `hasMember` lists all its members).
    /// The group of a changed member is exported too.
    fn load_for_export(
        &self,
        mut wanted: BTreeSet<EntityId>,
        types: &[EntityType],
        everything: bool,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(Vec<Rec>, Vec<Rec>), NodeError> {
        wanted.retain(|id| types.contains(&id.ty));
        let mut loaded: BTreeMap<EntityId, Value> = BTreeMap::new();
        let mut queue: Vec<EntityId> = wanted.iter().copied().collect();
        let mut total = queue.len() as u64;
        let mut done = 0u64;
        while let Some(id) = queue.pop() {
            if loaded.contains_key(&id) {
                continue;
            }
            done += 1;
            if done.is_multiple_of(256) {
                progress(done, total.max(done));
            }
            // A record whose changes are all still queued (dependencies missing) reads as none.
            let Some((value, _)) = self.store.get(&id)? else { continue };
            if id.ty == EntityType::Obs
                && let Some(group) = value.get("obsGroup").and_then(Value::as_str)
                && let Ok(uuid) = crate::id::parse_uuid(group)
            {
                let g = EntityId::new(EntityType::Obs, uuid);
                if !loaded.contains_key(&g) {
                    queue.push(g);
                    total += 1;
                }
            }
            loaded.insert(id, value);
        }
        let mut others = Vec::new();
        if !everything && loaded.keys().any(|id| id.ty == EntityType::Obs) {
            for id in self.store.list(Some(EntityType::Obs))? {
                if !loaded.contains_key(&id)
                    && let Some((value, _)) = self.store.get(&id)?
                {
                    others.push((id.ty, id.uuid, value));
                }
            }
        }
        progress(done, done);
        let records = loaded.into_iter().map(|(id, v)| (id.ty, id.uuid, v)).collect();
        Ok((records, others))
    }

    fn push_target(&self, name: &str) -> Result<PushTarget, NodeError> {
        self.config.fhir.target(name).cloned().ok_or_else(|| {
            let names: Vec<&str> =
                self.config.fhir.targets.iter().map(|t| t.name.as_str()).collect();
            NodeError::Input(format!(
                "no FHIR push target named {name:?} in sitesync.toml (configured: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ))
        })
    }

    /// Pushes to target `name` now, resending resources that failed before (the admin view's
    /// and the CLI's "retry").
    pub fn push_now(&self, name: &str) -> Result<PushReport, NodeError> {
        self.push_run(name, PushOptions { retry_failed: true, ..PushOptions::default() })
    }

    /// Every configured target with its state, in config order.
    pub fn push_status(&self) -> Result<Vec<PushTargetStatus>, NodeError> {
        let mut out = Vec::new();
        for t in &self.config.fhir.targets {
            let s = self.store.push_state(&t.name)?.unwrap_or_default();
            out.push(PushTargetStatus {
                name: t.name.clone(),
                base_url: t.base_url.clone(),
                continuous: t.continuous,
                interval_secs: t.interval_secs,
                cursor: s.cursor,
                last_attempt: s.last_attempt,
                last_success: s.last_success,
                consecutive_failures: s.consecutive_failures,
                last_error: s.last_error,
                next_retry: s.next_retry,
                failed: s.failed,
            });
        }
        Ok(out)
    }

    /// One push run to target `name` (see the module doc). Blocking: call it from a blocking
    /// thread in async code.
    pub fn push_run(&self, name: &str, opts: PushOptions) -> Result<PushReport, NodeError> {
        let target = self.push_target(name)?;
        let lock = target_lock(&self.dir, name);
        let _one_run = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.now();
        let mut state = self.store.push_state(name)?.unwrap_or_default();
        if !state.base_url.is_empty() && state.base_url != target.base_url {
            // Another server: what the old one acknowledged says nothing about this one.
            self.store.push_forget(name)?;
            state = PushState::default();
        }
        let fingerprint = fingerprint(self.fhir_settings(), &target);
        let since = match state.cursor.parse::<Cursor>() {
            Ok(c) if !opts.full && state.fingerprint == fingerprint => c,
            _ => Cursor::start(),
        };
        let types: Vec<EntityType> = EntityType::ALL
            .iter()
            .copied()
            .filter(|t| crate::fhir::map::resource_type_of(*t).is_some_and(|r| target.takes(r)))
            .collect();
        let retry: BTreeSet<EntityId> =
            state.failed.iter().filter_map(|f| f.record.as_deref()?.parse().ok()).collect();
        let FhirExport { export, cursor } =
            self.fhir_export(self.fhir_settings(), &types, Some(&since), &retry, &|_, _| {})?;
        let mut report = PushReport { target: name.to_string(), ..PushReport::default() };
        let mut resolved: HashSet<String> = HashSet::new();
        let mut origin: HashMap<String, String> = HashMap::new();
        for e in &export.report.skipped {
            report.failed.push(FailedResource {
                key: e.entity.to_string(),
                record: Some(e.entity.to_string()),
                status: None,
                reason: format!("cannot be valid FHIR: field {}: {}", e.field, e.reason),
                hash: None,
                since: now,
            });
        }
        let mut candidates = Vec::new();
        for (r, from) in export.resources.iter().zip(&export.origins) {
            if !target.takes(r.resource_type()) {
                continue;
            }
            if let Some(from) = from {
                resolved.insert(from.to_string());
            }
            let o = Outgoing::new(r.to_json());
            origin.extend(from.map(|f| (o.key.clone(), f.to_string())));
            candidates.push(o);
        }
        let keys: Vec<&str> = candidates.iter().map(|o| o.key.as_str()).collect();
        let delivered = self.store.push_delivered(name, &keys)?;
        let mut to_send = Vec::new();
        let mut held_back = Vec::new();
        for o in candidates {
            report.considered += 1;
            if delivered.get(&o.key) == Some(&o.hash) {
                report.unchanged += 1;
                resolved.insert(o.key.clone());
                continue;
            }
            let failed_before = state
                .failed
                .iter()
                .any(|f| f.key == o.key && f.hash.as_deref() == Some(hex::encode(o.hash).as_str()));
            if failed_before && !opts.retry_failed {
                held_back.push(o);
                continue;
            }
            to_send.push(o);
        }
        let to_send = push::order(push::dedup(to_send));
        let mut delivery = self.deliver(name, &target, &to_send, &opts);
        resolved.extend(delivered_keys(&to_send, &delivery));
        // Resources refused before in this same version are tried again only when this run
        // delivered something: it may be what they were missing (a referenced resource).
        if delivery.error.is_none() && delivery.delivered > 0 && !held_back.is_empty() {
            let retried = push::order(push::dedup(std::mem::take(&mut held_back)));
            let second = self.deliver(name, &target, &retried, &opts);
            resolved.extend(delivered_keys(&retried, &second));
            delivery.delivered += second.delivered;
            delivery.created += second.created;
            delivery.updated += second.updated;
            delivery.requests += second.requests;
            delivery.refused.extend(second.refused.iter().cloned());
            delivery.error = second.error.clone();
            delivery.last_status = second.last_status.or(delivery.last_status);
        }
        report.still_failed = held_back.len() as u64;
        for r in &delivery.refused {
            report.failed.push(FailedResource {
                key: r.key.clone(),
                record: origin.get(&r.key).cloned(),
                status: r.error.status,
                reason: r.error.text.clone(),
                hash: Some(hex::encode(r.hash)),
                since: now,
            });
        }
        report.sent = delivery.delivered;
        report.created = delivery.created;
        report.updated = delivery.updated;
        report.requests = delivery.requests;
        report.last_status = delivery.last_status;
        report.error = delivery.error.clone();
        report.cursor_advanced = report.error.is_none();
        report.cursor = if report.cursor_advanced { cursor.to_string() } else { since.to_string() };
        self.finish_run(name, &target, state, fingerprint, &report, &resolved, now)?;
        Ok(report)
    }

    fn deliver(
        &self,
        name: &str,
        target: &PushTarget,
        items: &[Outgoing],
        opts: &PushOptions,
    ) -> Delivery {
        if items.is_empty() {
            return Delivery::default();
        }
        let mut transport = HttpTransport::new(target);
        let stopped =
            |stop: &Option<watch::Receiver<bool>>| stop.as_ref().is_some_and(|s| *s.borrow());
        let mut sleep = |d: Duration| {
            let end = self.millis() + d.as_millis() as u64;
            while self.millis() < end {
                if stopped(&opts.stop) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(STOP_POLL_MS).min(d));
            }
            !stopped(&opts.stop)
        };
        let mut jitter = || self.random_u32();
        let mut on_ack = |group: &[Outgoing]| {
            let acked: Vec<(&str, [u8; 32])> =
                group.iter().map(|o| (o.key.as_str(), o.hash)).collect();
            self.store.push_acked(name, &acked).map_err(|e| e.to_string())?;
            if stopped(&opts.stop) {
                return Err("stopped (shutdown)".into());
            }
            Ok(())
        };
        let mut pusher = Pusher {
            transport: &mut transport,
            base_url: &target.base_url,
            batch_size: target.batch_size,
            policy: opts.policy.unwrap_or_default(),
            sleep: &mut sleep,
            jitter: &mut jitter,
            on_ack: &mut on_ack,
        };
        let d = push::deliver(&mut pusher, items);
        tracing::info!(
            target = name,
            sent = d.delivered,
            refused = d.refused.len(),
            requests = d.requests,
            error = d.error.as_ref().map(|e| e.to_string()),
            "fhir push"
        );
        d
    }

    /// Writes the target's new state and the run's audit entry in one transaction.
    #[allow(clippy::too_many_arguments)]
    fn finish_run(
        &self,
        name: &str,
        target: &PushTarget,
        old: PushState,
        fingerprint: String,
        report: &PushReport,
        resolved: &HashSet<String>,
        now: i64,
    ) -> Result<(), NodeError> {
        let fresh: HashSet<&str> = report.failed.iter().map(|f| f.key.as_str()).collect();
        let mut failed: Vec<FailedResource> = old
            .failed
            .iter()
            .filter(|f| !resolved.contains(&f.key) && !fresh.contains(f.key.as_str()))
            .cloned()
            .collect();
        for f in &report.failed {
            let mut f = f.clone();
            if let Some(prev) = old.failed.iter().find(|p| p.key == f.key && p.reason == f.reason) {
                f.since = prev.since;
            }
            failed.push(f);
        }
        let event =
            (report.sent > 0 || !report.failed.is_empty() || report.error.is_some()).then(|| {
                Event {
                    time: now,
                    kind: EventKind::FhirPush {
                        target: name.to_string(),
                        sent: report.sent,
                        created: report.created,
                        updated: report.updated,
                        failed: report.failed.len() as u64,
                        status: report.last_status,
                        outcome_text: report.outcome_text(),
                    },
                }
            });
        let last_error = report.error.clone().or_else(|| {
            report.failed.first().map(|f| push::PushError {
                status: f.status,
                text: format!("{}: {}", f.key, f.reason),
            })
        });
        self.store.update_push_state(name, event, |s| {
            s.cursor = report.cursor.clone();
            s.fingerprint = fingerprint;
            s.base_url = target.base_url.clone();
            s.last_attempt = now;
            if report.error.is_none() {
                s.last_success = now;
                s.consecutive_failures = 0;
            } else {
                s.consecutive_failures = old.consecutive_failures.saturating_add(1);
            }
            s.last_error = last_error.clone();
            s.failed = failed.clone();
        })?;
        // The target in the failure registry: failing while the run stopped early or any
        // resource stands refused; closed by a run that delivered everything.
        let op = crate::store::failures::Operation::FhirPush { target: name.to_string() };
        let reason = match (&report.error, failed.first()) {
            (Some(e), _) => Some(match e.status {
                Some(code) => format!("HTTP {code}: {}", e.text),
                None => e.text.clone(),
            }),
            (None, Some(f)) => {
                Some(format!("{} resources refused, e.g. {}: {}", failed.len(), f.key, f.reason))
            }
            (None, None) => None,
        };
        self.store.record_attempt(&crate::store::failures::Attempt {
            op: &op,
            result: reason.as_deref().map_or(Ok(()), Err),
            time: now,
            next_retry: None,
            give_up_after: self.config.failures.give_up_after,
        })?;
        Ok(())
    }
}

/// The keys of `items` in Bundles the server accepted.
fn delivered_keys(items: &[Outgoing], d: &Delivery) -> Vec<String> {
    let refused: HashSet<&str> = d.refused.iter().map(|r| r.key.as_str()).collect();
    // Delivery stops at the first Bundle it could not deliver; `delivered` counts resources
    // in accepted Bundles, which are a prefix of `items` minus the refused ones.
    let mut out = Vec::new();
    let mut left = d.delivered;
    for o in items {
        if left == 0 {
            break;
        }
        if !refused.contains(o.key.as_str()) {
            out.push(o.key.clone());
            left -= 1;
        }
    }
    out
}

/// What a target's resources depend on besides the records: the settings and its types.
fn fingerprint(settings: &FhirSettings, target: &PushTarget) -> String {
    let text = format!("{settings:?}|{:?}", target.types);
    hex::encode(&blake3::hash(text.as_bytes()).as_bytes()[..16])
}

/// `POST <base>` with ureq: rustls with webpki roots for https, plain http as configured.
struct HttpTransport {
    agent: ureq::Agent,
    url: String,
    auth: Option<crate::fhir::target::Secret>,
}

impl HttpTransport {
    fn new(target: &PushTarget) -> HttpTransport {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(PUSH_REQUEST_TIMEOUT_SECS)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("sitesync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        HttpTransport { agent, url: target.base_url.clone(), auth: target.auth_header.clone() }
    }
}

impl Transport for HttpTransport {
    fn post(&mut self, body: &[u8]) -> Result<HttpReply, String> {
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth.expose());
        }
        let mut resp = req.send(body).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // A body cut short is a dropped connection: retried like one (a PUT is idempotent).
        let body = resp
            .body_mut()
            .with_config()
            .limit(PUSH_RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|e| format!("reading the answer (HTTP {status}): {e}"))?;
        Ok(HttpReply { status, body })
    }
}

/// Starts one [`push_loop`] per continuous target (called by `serve`).
pub fn spawn_push_loops(
    node: &Arc<Node>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) {
    for t in node.config.fhir.targets.iter().filter(|t| t.continuous) {
        tasks.spawn(push_loop(node.clone(), t.name.clone(), shutdown.clone()));
    }
}

/// Pushes target `name` at start, then every `interval_secs`; after a run that stopped early,
/// sooner, with backoff (`schedule::backoff_ms`). The run itself is on a blocking thread.
pub async fn push_loop(node: Arc<Node>, name: String, mut shutdown: watch::Receiver<bool>) {
    let Some(target) = node.config.fhir.target(&name).cloned() else { return };
    let interval_ms = target.interval_secs.saturating_mul(1000);
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let (n, t) = (node.clone(), name.clone());
        let opts = PushOptions { stop: Some(shutdown.clone()), ..PushOptions::default() };
        let ok = match tokio::task::spawn_blocking(move || n.push_run(&t, opts)).await {
            Ok(Ok(report)) => report.error.is_none(),
            Ok(Err(e)) => {
                tracing::error!(target = %name, "fhir push: {e}");
                false
            }
            Err(e) => {
                tracing::error!(target = %name, "fhir push task: {e}");
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
            let jitter = node.random_u32();
            super::schedule::backoff_ms(failures, interval_ms.max(1000), jitter)
        };
        let next = node.now() + (delay / 1000) as i64;
        let (n, t) = (node.clone(), name.clone());
        let _ = tokio::task::spawn_blocking(move || {
            n.store.update_push_state(&t, None, |s| s.next_retry = next)?;
            let op = crate::store::failures::Operation::FhirPush { target: t };
            n.store.set_failure_next_retry(&op.id(), Some(next))
        })
        .await;
        wait = Duration::from_millis(delay);
    }
}
