//! Pushing resources to a FHIR server as transaction Bundles: ordering so references resolve,
//! chunking, retries with backoff, and finding the resources a server refuses.
//!
//! Sans-IO: the HTTP request goes through a [`Transport`], waiting through a sleep function and
//! jitter from a function, so this file holds no socket, clock or RNG (`node/push.rs` supplies
//! them, and the unit tests script a server). What was delivered is reported through `on_ack`
//! after every Bundle a server accepted, so the caller can make it durable before the next one.
//!
//! Outcomes of a Bundle (`docs/fhir-mapping.md`, "Pushing to a FHIR server"):
//! - 2xx: every entry is delivered (a transaction is all-or-nothing).
//! - 408, 429, 5xx, a timeout or a dropped connection: retried with exponential backoff and
//!   jitter, at most [`RetryPolicy::attempts`] times; then the run stops (the rest is sent next
//!   run).
//! - 400, 409, 412, 413, 422: something in the Bundle is refused. The Bundle is split in two and
//!   each half sent (in order, so referenced resources still go first), down to single
//!   resources; a single refused resource is failed with the server's OperationOutcome text.
//! - any other status (401, 403, 404, 3xx, ...): the target is misconfigured; the run stops.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::export::RESOURCE_TYPES;

/// Longest OperationOutcome text kept (audit log, status), in characters.
pub const OUTCOME_TEXT_MAX: usize = 1_000;
/// Attempts per Bundle on transient failures, per run.
pub const PUSH_ATTEMPTS_MAX: u32 = 5;
/// First retry delay; doubles per attempt.
pub const PUSH_RETRY_BASE_MS: u64 = 500;
/// Longest retry delay within a run.
pub const PUSH_RETRY_CAP_MS: u64 = 30_000;

/// One resource to push.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// `Type/id`.
    pub key: String,
    /// `blake3` of the resource JSON: the version of the resource that is delivered.
    pub hash: [u8; 32],
    pub resource: Value,
}

impl Outgoing {
    pub fn new(resource: Value) -> Outgoing {
        let ty = resource["resourceType"].as_str().unwrap_or_default();
        let id = resource["id"].as_str().unwrap_or_default();
        Outgoing { key: format!("{ty}/{id}"), hash: content_hash(&resource), resource }
    }

    fn resource_type(&self) -> &str {
        self.key.split('/').next().unwrap_or_default()
    }
}

/// The hash that identifies a resource version (its JSON text; the mapping writes keys in a
/// fixed order).
pub fn content_hash(resource: &Value) -> [u8; 32] {
    *blake3::hash(resource.to_string().as_bytes()).as_bytes()
}

/// Every `Type/id` reference in a resource.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "reference"
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_string());
                } else {
                    references(x, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

/// Orders resources so that every resource comes after the resources it references (when they
/// are pushed too): by type (Organization, Location, Practitioner, Patient, ... as in
/// [`RESOURCE_TYPES`]), and within that, referenced first (a visit before its encounters, obs
/// group members before the group, a parent location before its children). References in a
/// cycle keep the type order; a server that checks references at commit time accepts them in
/// one Bundle.
pub fn order(mut items: Vec<Outgoing>) -> Vec<Outgoing> {
    let rank = |o: &Outgoing| {
        RESOURCE_TYPES.iter().position(|t| *t == o.resource_type()).unwrap_or(usize::MAX)
    };
    items.sort_by_key(rank);
    let index: HashMap<String, usize> =
        items.iter().enumerate().map(|(i, o)| (o.key.clone(), i)).collect();
    let refs: Vec<Vec<usize>> = items
        .iter()
        .map(|o| {
            let mut r = Vec::new();
            references(&o.resource, &mut r);
            r.iter().filter_map(|k| index.get(k).copied()).collect()
        })
        .collect();
    let mut done = vec![false; items.len()];
    let mut on_path = vec![false; items.len()];
    let mut out = Vec::with_capacity(items.len());
    fn visit(
        i: usize,
        refs: &[Vec<usize>],
        done: &mut [bool],
        on_path: &mut [bool],
        out: &mut Vec<usize>,
    ) {
        if done[i] || on_path[i] {
            return;
        }
        on_path[i] = true;
        for &j in &refs[i] {
            visit(j, refs, done, on_path, out);
        }
        on_path[i] = false;
        done[i] = true;
        out.push(i);
    }
    for i in 0..items.len() {
        visit(i, &refs, &mut done, &mut on_path, &mut out);
    }
    let mut slots: Vec<Option<Outgoing>> = items.into_iter().map(Some).collect();
    out.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// A transaction Bundle of `PUT Type/id` entries, `fullUrl` = `<base>/Type/id`.
pub fn bundle(base_url: &str, items: &[Outgoing]) -> Vec<u8> {
    let entries: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "fullUrl": format!("{base_url}/{}", o.key),
                "resource": o.resource,
                "request": {"method": "PUT", "url": o.key},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        .to_string()
        .into_bytes()
}

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// How a Bundle reaches the server: `POST <base>` with `application/fhir+json`. An `Err` is a
/// failure without an HTTP answer (connection refused or dropped, timeout, TLS): retried.
pub trait Transport {
    fn post(&mut self, body: &[u8]) -> Result<HttpReply, String>;
}

/// A failure with its HTTP status (none: no answer) and the server's OperationOutcome text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushError {
    pub status: Option<u16>,
    pub text: String,
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// Retries of transient failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_ms: u64,
    pub cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: PUSH_ATTEMPTS_MAX,
            base_ms: PUSH_RETRY_BASE_MS,
            cap_ms: PUSH_RETRY_CAP_MS,
        }
    }
}

impl RetryPolicy {
    /// Delay before retry `n` (1-based): doubling, capped, minus up to a quarter of jitter.
    pub fn delay(&self, n: u32, jitter: u32) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << n.saturating_sub(1).min(20));
        let base = exp.min(self.cap_ms);
        Duration::from_millis(base - u64::from(jitter) % (base / 4 + 1))
    }
}

enum Class {
    Ok,
    Transient,
    Refused,
    Target,
}

fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Ok,
        408 | 429 | 500..=599 => Class::Transient,
        400 | 409 | 412 | 413 | 422 => Class::Refused,
        _ => Class::Target,
    }
}

/// The text of an OperationOutcome (each issue's diagnostics or details, with its expression),
/// or the start of any other body; at most [`OUTCOME_TEXT_MAX`] characters.
pub fn outcome_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let text = match parsed {
        Some(v) if v["resourceType"] == "OperationOutcome" => {
            let issues = v["issue"].as_array().cloned().unwrap_or_default();
            let parts: Vec<String> = issues
                .iter()
                .map(|i| {
                    let what = i["diagnostics"]
                        .as_str()
                        .or_else(|| i["details"]["text"].as_str())
                        .or_else(|| i["code"].as_str())
                        .unwrap_or("no diagnostics");
                    match i["expression"].as_array().and_then(|e| e.first()).and_then(Value::as_str)
                    {
                        Some(path) if !what.contains(path) => format!("{what} ({path})"),
                        _ => what.to_string(),
                    }
                })
                .collect();
            if parts.is_empty() {
                "OperationOutcome without issues".into()
            } else {
                parts.join("; ")
            }
        }
        _ if body.trim().is_empty() => "no response body".into(),
        _ => body.trim().to_string(),
    };
    truncate(&text, OUTCOME_TEXT_MAX)
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut t: String = text.chars().take(max).collect();
    t.push_str("...");
    t
}

/// A resource the server refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub hash: [u8; 32],
    pub error: PushError,
}

/// What [`deliver`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Resources in Bundles the server accepted.
    pub delivered: u64,
    /// Of those, answered `201` (a new resource) / `200` (an update, or identical content).
    pub created: u64,
    pub updated: u64,
    /// Bundles posted (every attempt counts).
    pub requests: u64,
    pub refused: Vec<Refusal>,
    /// Why the run stopped early (retries exhausted, a target error, stopped); the resources
    /// not delivered are sent again next run.
    pub error: Option<PushError>,
    /// The status of the last answer that was not 2xx, if any.
    pub last_status: Option<u16>,
}

/// Everything [`deliver`] needs besides the resources.
pub struct Pusher<'a> {
    pub transport: &'a mut dyn Transport,
    pub base_url: &'a str,
    pub batch_size: usize,
    pub policy: RetryPolicy,
    /// Waits; returns `false` if the push must stop (shutdown).
    pub sleep: &'a mut dyn FnMut(Duration) -> bool,
    pub jitter: &'a mut dyn FnMut() -> u32,
    /// Called with the resources of every accepted Bundle, before the next is sent; an error
    /// stops the run.
    pub on_ack: &'a mut dyn FnMut(&[Outgoing]) -> Result<(), String>,
}

/// Pushes `items` (in [`order`]) in Bundles of `batch_size`, stopping at the first Bundle that
/// could not be delivered for a reason other than its content.
pub fn deliver(p: &mut Pusher<'_>, items: &[Outgoing]) -> Delivery {
    let mut d = Delivery::default();
    for chunk in items.chunks(p.batch_size.max(1)) {
        if !send_group(p, chunk, &mut d) {
            break;
        }
    }
    d
}

/// Sends one group, splitting it when the server refuses its content. `false`: stop the run.
fn send_group(p: &mut Pusher<'_>, group: &[Outgoing], d: &mut Delivery) -> bool {
    let reply = match post_with_retries(p, group, d) {
        Ok(r) => r,
        Err(e) => {
            d.error = Some(e);
            return false;
        }
    };
    if (200..300).contains(&reply.status) {
        if let Err(e) = (p.on_ack)(group) {
            d.error =
                Some(PushError { status: None, text: format!("recording the delivery: {e}") });
            return false;
        }
        let (created, updated) = count_statuses(&reply.body, group.len());
        d.delivered += group.len() as u64;
        d.created += created;
        d.updated += updated;
        return true;
    }
    if group.len() == 1 {
        let error = PushError { status: Some(reply.status), text: outcome_text(&reply.body) };
        d.refused.push(Refusal { key: group[0].key.clone(), hash: group[0].hash, error });
        return true;
    }
    let (left, right) = group.split_at(group.len() / 2);
    send_group(p, left, d) && send_group(p, right, d)
}

/// Posts one Bundle until it gets an answer that is not transient. `Ok`: 2xx or a refusal of
/// the content; `Err`: give up this run.
fn post_with_retries(
    p: &mut Pusher<'_>,
    group: &[Outgoing],
    d: &mut Delivery,
) -> Result<HttpReply, PushError> {
    let body = bundle(p.base_url, group);
    let mut attempt = 0;
    loop {
        attempt += 1;
        d.requests += 1;
        let error = match p.transport.post(&body) {
            Ok(reply) => {
                if !(200..300).contains(&reply.status) {
                    d.last_status = Some(reply.status);
                }
                match classify(reply.status) {
                    Class::Ok | Class::Refused => return Ok(reply),
                    Class::Target => {
                        return Err(PushError {
                            status: Some(reply.status),
                            text: outcome_text(&reply.body),
                        });
                    }
                    Class::Transient => {
                        PushError { status: Some(reply.status), text: outcome_text(&reply.body) }
                    }
                }
            }
            Err(message) => PushError { status: None, text: truncate(&message, OUTCOME_TEXT_MAX) },
        };
        if attempt >= p.policy.attempts {
            let text = format!("gave up after {attempt} attempts: {}", error.text);
            return Err(PushError { status: error.status, text });
        }
        let jitter = (p.jitter)();
        if !(p.sleep)(p.policy.delay(attempt, jitter)) {
            return Err(PushError { status: None, text: "stopped (shutdown)".into() });
        }
    }
}

/// Created and updated entries of a `transaction-response` (`201 ...` / `200 ...`); a response
/// without entries counts every resource as updated.
fn count_statuses(body: &str, n: usize) -> (u64, u64) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(entries) = v["entry"].as_array() else { return (0, n as u64) };
    let mut created = 0;
    for e in entries {
        if e["response"]["status"].as_str().is_some_and(|s| s.starts_with("201")) {
            created += 1;
        }
    }
    (created, n as u64 - created.min(n as u64))
}

/// The resources of `items` whose keys are unique, first kept: a Bundle may not name one
/// resource twice.
pub fn dedup(items: Vec<Outgoing>) -> Vec<Outgoing> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|o| seen.insert(o.key.clone())).collect()
}

/// A resource that was not delivered and is not retried until its content changes (or by hand:
/// `sitesync fhir push`, `Node::push_now`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedResource {
    /// `Type/id`; for a record that has no valid resource, `type/uuid` of the record.
    pub key: String,
    /// The record it comes from (`type/uuid`; none for the site Organization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The HTTP status of the refusal; `None`: never sent (the record cannot be valid FHIR).
    pub status: Option<u16>,
    /// The server's OperationOutcome text, or why the record cannot be expressed.
    pub reason: String,
    /// Hex of the refused version's [`content_hash`] (`None` for records never sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When it first failed with this reason (seconds since the Unix epoch).
    pub since: i64,
}

/// What a node keeps per push target (`fhir-push-1` in the store).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushState {
    /// Text of the [`super::Cursor`] up to which every changed record was handled.
    pub cursor: String,
    /// What the resources depend on besides the records (settings, types); when it changes,
    /// the cursor starts over (unchanged resources are still not resent).
    pub fingerprint: String,
    /// The base URL the delivered versions went to; another server starts from nothing.
    pub base_url: String,
    /// Seconds since the Unix epoch; 0 = never.
    pub last_attempt: i64,
    pub last_success: i64,
    /// Runs in a row that stopped early (no answer, 5xx, 429, a target error).
    pub consecutive_failures: u32,
    pub last_error: Option<PushError>,
    /// When `serve` tries next (0 = not scheduled).
    pub next_retry: i64,
    pub failed: Vec<FailedResource>,
}

/// What one push run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    pub target: String,
    /// Resources considered (changed records, retried failures, the Organization).
    pub considered: u64,
    /// Of those, already delivered in this version (not sent).
    pub unchanged: u64,
    /// Resources delivered in accepted Bundles.
    pub sent: u64,
    pub created: u64,
    pub updated: u64,
    /// HTTP requests made (every attempt).
    pub requests: u64,
    /// Resources refused by the server in this run, and records that cannot be valid FHIR.
    pub failed: Vec<FailedResource>,
    /// Resources still failed from earlier runs and not retried (content unchanged).
    pub still_failed: u64,
    /// Why the run stopped early, if it did.
    pub error: Option<PushError>,
    /// The status of the last answer that was not 2xx.
    pub last_status: Option<u16>,
    /// The cursor after the run (advanced only if the run did not stop early).
    pub cursor: String,
    pub cursor_advanced: bool,
}

impl PushReport {
    /// Whether everything considered was delivered.
    pub fn is_clean(&self) -> bool {
        self.error.is_none() && self.failed.is_empty() && self.still_failed == 0
    }

    /// The audit text: the run error, then the first failures with their reasons.
    pub fn outcome_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.error {
            parts.push(format!("stopped: {e}"));
        }
        for f in self.failed.iter().take(5) {
            match f.status {
                Some(s) => parts.push(format!("{} refused (HTTP {s}): {}", f.key, f.reason)),
                None => parts.push(format!("{} not sent: {}", f.key, f.reason)),
            }
        }
        if self.failed.len() > 5 {
            parts.push(format!("and {} more failed", self.failed.len() - 5));
        }
        if parts.is_empty() {
            return "ok".into();
        }
        truncate(&parts.join("; "), 2 * OUTCOME_TEXT_MAX)
    }
}

/// A push target's configuration and state, for `sitesync fhir status` and the admin view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTargetStatus {
    pub name: String,
    pub base_url: String,
    pub continuous: bool,
    pub interval_secs: u64,
    pub cursor: String,
    pub last_attempt: i64,
    pub last_success: i64,
    pub consecutive_failures: u32,
    pub last_error: Option<PushError>,
    pub next_retry: i64,
    pub failed: Vec<FailedResource>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(ty: &str, id: &str, refs: &[&str]) -> Outgoing {
        let refs: Vec<Value> = refs.iter().map(|r| json!({"reference": r})).collect();
        Outgoing::new(json!({"resourceType": ty, "id": id, "x": refs}))
    }

    #[test]
    fn referenced_resources_come_first() {
        let items = vec![
            res("Observation", "g", &["Observation/m", "Patient/p"]),
            res("Encounter", "e", &["Encounter/v", "Patient/p", "Location/l"]),
            res("Observation", "m", &["Encounter/e"]),
            res("Encounter", "v", &["Patient/p"]),
            res("Patient", "p", &["Organization/o"]),
            res("Location", "l", &["Location/root"]),
            res("Location", "root", &[]),
            res("Organization", "o", &[]),
        ];
        let keys: Vec<String> = order(items).into_iter().map(|o| o.key).collect();
        let pos = |k: &str| keys.iter().position(|x| x == k).expect(k);
        for (a, b) in [
            ("Organization/o", "Patient/p"),
            ("Location/root", "Location/l"),
            ("Patient/p", "Encounter/v"),
            ("Encounter/v", "Encounter/e"),
            ("Encounter/e", "Observation/m"),
            ("Observation/m", "Observation/g"),
        ] {
            assert!(pos(a) < pos(b), "{a} before {b}: {keys:?}");
        }
    }

    /// A scripted server: answers in turn, then 200.
    struct Script {
        answers: Vec<Result<HttpReply, String>>,
        posted: Vec<Vec<String>>,
        refuse: Option<String>,
    }

    impl Transport for Script {
        fn post(&mut self, body: &[u8]) -> Result<HttpReply, String> {
            let v: Value = serde_json::from_slice(body).expect("json");
            let keys: Vec<String> = v["entry"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["request"]["url"].as_str().expect("url").to_string())
                .collect();
            self.posted.push(keys.clone());
            if !self.answers.is_empty() {
                return self.answers.remove(0);
            }
            if let Some(bad) = &self.refuse
                && keys.contains(bad)
            {
                let body = json!({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "invalid", "diagnostics": format!("bad {bad}"),
                     "expression": ["Patient.gender"]}]});
                return Ok(HttpReply { status: 400, body: body.to_string() });
            }
            let entries: Vec<Value> =
                keys.iter().map(|_| json!({"response": {"status": "201 Created"}})).collect();
            Ok(HttpReply { status: 200, body: json!({"entry": entries}).to_string() })
        }
    }

    fn run(script: &mut Script, items: &[Outgoing], batch: usize) -> (Delivery, Vec<String>) {
        let mut acked = Vec::new();
        let mut slept = Vec::new();
        let d = {
            let mut sleep = |d: Duration| {
                slept.push(d);
                true
            };
            let mut jitter = || 7u32;
            let mut on_ack = |g: &[Outgoing]| {
                acked.extend(g.iter().map(|o| o.key.clone()));
                Ok(())
            };
            let mut p = Pusher {
                transport: script,
                base_url: "http://h/fhir",
                batch_size: batch,
                policy: RetryPolicy::default(),
                sleep: &mut sleep,
                jitter: &mut jitter,
                on_ack: &mut on_ack,
            };
            deliver(&mut p, items)
        };
        (d, acked)
    }

    #[test]
    fn transient_failures_are_retried_and_refusals_isolated() {
        let items: Vec<Outgoing> = (0..5).map(|i| res("Patient", &format!("p{i}"), &[])).collect();
        let mut s = Script {
            answers: vec![
                Ok(HttpReply { status: 503, body: String::new() }),
                Err("connection reset".into()),
            ],
            posted: Vec::new(),
            refuse: Some("Patient/p3".into()),
        };
        let (d, acked) = run(&mut s, &items, 2);
        assert_eq!(acked, ["Patient/p0", "Patient/p1", "Patient/p2", "Patient/p4"]);
        assert_eq!(d.refused.len(), 1);
        assert_eq!(d.refused[0].key, "Patient/p3");
        assert_eq!(d.refused[0].error.status, Some(400));
        assert!(d.refused[0].error.text.contains("bad Patient/p3 (Patient.gender)"));
        assert_eq!((d.delivered, d.created, d.error), (4, 4, None));
        // p0,p1 three times (503, reset, ok); p2,p3 refused, then p2 and p3 alone; p4.
        assert_eq!(s.posted.len(), 7, "{:?}", s.posted);
    }

    #[test]
    fn retries_are_bounded_and_target_errors_stop_the_run() {
        let items: Vec<Outgoing> = (0..3).map(|i| res("Patient", &format!("p{i}"), &[])).collect();
        let down: Vec<_> =
            (0..9).map(|_| Ok(HttpReply { status: 500, body: "oops".into() })).collect();
        let mut s = Script { answers: down, posted: Vec::new(), refuse: None };
        let (d, acked) = run(&mut s, &items, 2);
        assert!(acked.is_empty());
        assert_eq!(s.posted.len(), PUSH_ATTEMPTS_MAX as usize);
        let e = d.error.expect("gave up");
        assert_eq!(e.status, Some(500));
        assert!(e.text.contains("gave up after 5 attempts: oops"), "{}", e.text);
        let auth = vec![Ok(HttpReply { status: 401, body: String::new() })];
        let mut s = Script { answers: auth, posted: Vec::new(), refuse: None };
        let (d, _) = run(&mut s, &items, 2);
        assert_eq!((s.posted.len(), d.error.and_then(|e| e.status)), (1, Some(401)));
    }

    #[test]
    fn delays_double_and_are_capped() {
        let p = RetryPolicy::default();
        assert!((375..=500).contains(&p.delay(1, 0).as_millis()));
        assert!((750..=1000).contains(&p.delay(2, 99).as_millis()));
        assert!(p.delay(30, 5).as_millis() <= 30_000);
    }
}
