//! The EMR bridge (docs/emr.md) with real FHIR servers as two clinics' EMRs
//! (`../shared/tools/fhir-server`, Medplum's engine, on 127.0.0.1 with `--ref-integrity`):
//! nodes A and B beside EMRs A and B, a district D, QUIC between them, `serve` everywhere and
//! nobody running a command.
//!
//! 1. A clinician creates a patient, a visit, an encounter and an observation in EMR A (direct
//!    FHIR calls): they appear in EMR B with the same ids and content.
//! 2. While the clinics are cut off from the district, EMR A edits one field of the patient and
//!    EMR B another: after the heal both EMRs hold both edits.
//! 3. Both EMRs edit the birth date while apart: the conflict shows at the district; resolving
//!    it there writes the chosen value into both EMRs.
//! 4. Echo: once everything settled, more polls produce no batch at any node, and EMR B keeps
//!    one version of each resource.
//! 5. 250 patients created in one burst, read in pages of 20 while one of them is updated
//!    mid-crawl: none lost, none read twice, the update arrives.
//! 6. Node A killed between its write into EMR A and noting it: after the restart the write
//!    reads back as nothing (no batch), is not written again, and nothing is lost.
//! 7. Node A's clock 6 hours ahead, then 6 hours behind: nothing is lost (the cursor is the
//!    EMR's clock).
//! 8. A patient deleted in EMR A is voided everywhere and inactive in EMR B.
//! 10. Node A reading EMR A as `openmrs-fhir2` through a proxy that answers as OpenMRS FHIR2
//!     does (whole-second timestamps, pages of at most 100, 410 for a deleted record, no
//!     `_history`): 1, 5 and 8 still hold.
//! 9. EMR B refuses one record (422): it is reported with the EMR's OperationOutcome text
//!    (`failures`, `emr sync`, `emr status`, the admin view's EMR links and `/metrics`), and
//!    the others are written.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

mod admin;
mod net;

use net::fhir_server::{FhirServer, ProxyAction, ProxyRequest, proxy};
use net::*;

const SETTLE_MAX: Duration = Duration::from_secs(90);

/// One network at a time: each runs two FHIR servers (~300 MB and a core each to start).
static SERIAL: Mutex<()> = Mutex::new(());

const PATIENT: &str = "5b1f7a8e-2c44-4b9e-9d51-0a3c2e6f7b10";
const VISIT: &str = "6c2e8b9f-3d55-4cae-8e62-1b4d3f708c21";
const ENCOUNTER: &str = "7d3f9ca0-4e66-4dbf-9f73-2c5e40819d32";
const OBS: &str = "8e40adb1-5f77-4ec0-a084-3d6f51920e43";
const VISIT_TYPE: &str = "7b0f5697-27e3-40c4-8bae-f4049abfb4ed";
const ENCOUNTER_TYPE: &str = "67a71486-1a54-468f-ac3e-7091a9a79584";
const WEIGHT: &str = "5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Bridges `node` to the EMR at `base` (polled every second, pages of 20), with the FHIR
/// settings of the FHIR tests (identifier systems, contact points).
fn bridge(node: &Node, name: &str, base: &str) {
    bridge_as(node, name, base, "fhir");
}

/// [`bridge`] with an EMR profile.
fn bridge_as(node: &Node, name: &str, base: &str, profile: &str) {
    let settings = std::fs::read_to_string(root().join("tests/fixtures/fhir/settings.toml"))
        .expect("settings fixture");
    let path = node.dir.join("sitesync.toml");
    let mut text = std::fs::read_to_string(&path).expect("sitesync.toml");
    text.push_str(&format!(
        "\n[[emr]]\nname = \"{name}\"\nbase_url = \"{base}\"\nprofile = \"{profile}\"\npoll_secs = 1\npage_size = 20\noverlap_secs = 2\nreconcile_secs = 2\n\n{settings}"
    ));
    std::fs::write(&path, text).expect("write sitesync.toml");
}

/// A clinician's write: `PUT Type/id` straight into the EMR.
fn clinician_puts(emr: &FhirServer, resource: &Value) {
    let key = format!(
        "{}/{}",
        resource["resourceType"].as_str().expect("type"),
        resource["id"].as_str().expect("id")
    );
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut resp = agent
        .put(&format!("{}/{key}", emr.base))
        .header("Content-Type", "application/fhir+json")
        .send(resource.to_string().as_bytes())
        .expect("PUT");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    assert!(status == 200 || status == 201, "PUT {key}: {status} {body}");
}

fn clinic_records() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": PATIENT,
            "identifier": [{"system": "https://fhir.example.org/sid/national-id", "value": "NID-77-1"}],
            "name": [{"use": "official", "family": "Achieng", "given": ["Mary", "Atieno"]}],
            "gender": "female", "birthDate": "1990-04-01"}),
        json!({"resourceType": "Encounter", "id": VISIT, "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"coding": [{"system": "http://fhir.openmrs.org/code-system/visit-type", "code": VISIT_TYPE}]}],
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "period": {"start": "2026-12-01T09:00:00+03:00"}}),
        json!({"resourceType": "Encounter", "id": ENCOUNTER, "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"coding": [{"system": "http://fhir.openmrs.org/code-system/encounter-type", "code": ENCOUNTER_TYPE}]}],
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "partOf": {"reference": format!("Encounter/{VISIT}")},
            "period": {"start": "2026-12-01T09:10:00+03:00"}}),
        json!({"resourceType": "Observation", "id": OBS, "status": "final",
            "code": {"coding": [{"code": WEIGHT}], "text": "Weight (kg)"},
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "encounter": {"reference": format!("Encounter/{ENCOUNTER}")},
            "effectiveDateTime": "2026-12-01T09:15:00+03:00",
            "valueQuantity": {"value": 72.5, "unit": "kg"}}),
    ]
}

/// The district and two clinics, each clinic bridged to its EMR; every node serving.
struct Network {
    _tmp: tempfile::TempDir,
    emr_a: FhirServer,
    emr_b: FhirServer,
    nodes: Vec<Node>,
    serving: Vec<Option<Serve>>,
    /// The admin view of each node.
    admin_bases: Vec<String>,
}

impl Network {
    /// The district stops (the clinics are cut off from each other) or starts again.
    fn district(&mut self, up: bool) {
        self.serving[0] = up.then(|| self.nodes[0].serve());
    }

    fn status(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes[1..] {
            out.push_str(&n.ok(&["emr", "status"]));
            out.push_str(&n.ok(&["failures"]));
        }
        out
    }

    /// Waits until every resource in `keys` is in both EMRs.
    fn everywhere(&self, keys: &[String]) {
        let arrived = wait_for(SETTLE_MAX, || {
            let there = |emr: &FhirServer| keys.iter().all(|k| emr.read(k).0 == 200);
            (there(&self.emr_a) && there(&self.emr_b)).then_some(())
        });
        assert!(arrived.is_some(), "both EMRs hold {keys:?}:\n{}", self.status());
    }
}

/// A clinician's edit: read the resource from the EMR, change it, `PUT` it back.
fn clinician_edits(emr: &FhirServer, key: &str, edit: impl FnOnce(&mut Value)) {
    let (status, mut resource) = emr.read(key);
    assert_eq!(status, 200, "{key}: {resource}");
    edit(&mut resource);
    clinician_puts(emr, &resource);
}

/// Waits until node `i` holds the patient with `want` in it (read from its EMR).
fn read_in(net: &Network, i: usize, field: &str, want: &str) {
    let n = &net.nodes[i];
    let found = wait_for(SETTLE_MAX, || {
        let got: Value = serde_json::from_str(&n.ok(&["get", "patient", PATIENT])).ok()?;
        got.to_string().contains(want).then_some(())
    });
    assert!(found.is_some(), "{}: {field} read from its EMR:\n{}", n.name, net.status());
}

/// A test FHIR server with its request log under `dir/name`.
fn emr_in(dir: &std::path::Path, name: &str) -> FhirServer {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("EMR directory");
    FhirServer::start(&dir, &[])
}

/// One clinic bridged to its EMR, no network: its folder, the EMR, the node (not serving).
fn one_clinic() -> (tempfile::TempDir, FhirServer, Node) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let emr = emr_in(tmp.path(), "emr-a");
    let a = Node::init(tmp.path(), "clinic-a");
    bridge(&a, "emr-a", &emr.base);
    (tmp, emr, a)
}

fn patient_key() -> String {
    format!("Patient/{PATIENT}")
}

fn network() -> Network {
    network_with(None, None)
}

/// How a node reaches its EMR.
enum Via {
    Direct,
    /// Through a proxy applying this rule.
    Proxy(Rule),
    /// Through a proxy that answers as OpenMRS FHIR2, with the `openmrs-fhir2` profile.
    OpenmrsLike,
}

fn network_openmrs_a() -> Network {
    network_via(Via::OpenmrsLike, Via::Direct)
}

/// What a proxy in front of an EMR does to each request.
type Rule = Box<dyn Fn(&ProxyRequest) -> ProxyAction + Send>;

/// As [`network`], with node A (B) reaching its EMR through a proxy that applies `rule_a`
/// (`rule_b`).
fn network_with(rule_a: Option<Rule>, rule_b: Option<Rule>) -> Network {
    let via = |r: Option<Rule>| r.map_or(Via::Direct, Via::Proxy);
    network_via(via(rule_a), via(rule_b))
}

fn network_via(via_a: Via, via_b: Via) -> Network {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (emr_a, emr_b) = (emr_in(tmp.path(), "emr-a"), emr_in(tmp.path(), "emr-b"));
    let d = Node::init(tmp.path(), "district");
    let a = Node::init(tmp.path(), "clinic-a");
    let b = Node::init(tmp.path(), "clinic-b");
    let dp = format!("127.0.0.1:{}", free_port());
    d.network(Some(&dp), 1);
    for c in [&a, &b] {
        d.peer_add(c, "child", None);
        c.peer_add(&d, "parent", Some(&dp));
        c.network(None, 1);
    }
    let link = |n: &Node, name: &str, emr: &FhirServer, via: Via| match via {
        Via::Direct => bridge(n, name, &emr.base),
        Via::Proxy(r) => bridge(n, name, &proxy(emr.host(), r)),
        Via::OpenmrsLike => {
            bridge_as(n, name, &net::openmrs_like::openmrs_like(emr.host()), "openmrs-fhir2")
        }
    };
    link(&a, "emr-a", &emr_a, via_a);
    link(&b, "emr-b", &emr_b, via_b);
    let mut admin_bases = Vec::new();
    for n in [&d, &a, &b] {
        let listen = format!("127.0.0.1:{}", admin::free_tcp_port());
        n.ok(&["admin", "set", "--listen", &listen]);
        admin_bases.push(format!("http://{listen}"));
    }
    let serving = vec![Some(d.serve()), Some(a.serve()), Some(b.serve())];
    Network { _tmp: tmp, emr_a, emr_b, nodes: vec![d, a, b], serving, admin_bases }
}

#[test]
fn records_written_in_one_emr_appear_in_the_other_and_nothing_echoes() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let net = network();
    for r in clinic_records() {
        clinician_puts(&net.emr_a, &r);
    }
    let keys = [
        format!("Patient/{PATIENT}"),
        format!("Encounter/{VISIT}"),
        format!("Encounter/{ENCOUNTER}"),
        format!("Observation/{OBS}"),
    ];
    let arrived =
        wait_for(SETTLE_MAX, || keys.iter().all(|k| net.emr_b.read(k).0 == 200).then_some(()));
    let (a, b) = (&net.nodes[1], &net.nodes[2]);
    assert!(
        arrived.is_some(),
        "EMR B holds what the clinician wrote in EMR A:\n{}\n{}\n{}",
        a.ok(&["emr", "status"]),
        b.ok(&["emr", "status"]),
        b.ok(&["failures"])
    );
    let (_, patient) = net.emr_b.read(&keys[0]);
    assert_eq!(patient["name"][0]["family"], "Achieng");
    assert_eq!(patient["name"][0]["given"], json!(["Mary", "Atieno"]));
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1990-04-01");
    assert_eq!(patient["identifier"][0]["value"], "NID-77-1");
    let (_, encounter) = net.emr_b.read(&keys[2]);
    assert_eq!(encounter["partOf"]["reference"], format!("Encounter/{VISIT}"));
    let (_, obs) = net.emr_b.read(&keys[3]);
    assert_eq!(obs["valueQuantity"]["value"], json!(72.5));
    assert_eq!(obs["encounter"]["reference"], format!("Encounter/{ENCOUNTER}"));

    // Echo: once settled, further polls change nothing anywhere.
    let vectors =
        || -> Vec<Value> { net.nodes.iter().map(|n| n.status()["vector"].clone()).collect() };
    let settled = wait_for(SETTLE_MAX, || {
        let before = vectors();
        std::thread::sleep(Duration::from_secs(3));
        (vectors() == before).then_some(before)
    });
    let before = settled.expect("the network settles");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(vectors(), before, "polls after settling wrote batches (an echo)");
    for k in &keys {
        assert_eq!(net.emr_b.versions(k), 1, "{k}: EMR B got one version, not an echo");
        assert_eq!(net.emr_a.versions(k), 1, "{k}: EMR A was not written back");
    }
    let status: Value = serde_json::from_str(&b.ok(&["emr", "status", "--json"])).expect("json");
    assert_eq!(status[0]["failed"], 0, "{status}");
    assert!(status[0]["records_out"].as_u64() >= Some(4), "{status}");
}

#[test]
fn edits_made_apart_meet_in_both_emrs_and_a_conflict_is_settled_at_the_district() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut net = network();
    let patient = patient_key();
    clinician_puts(&net.emr_a, &clinic_records()[0]);
    net.everywhere(std::slice::from_ref(&patient));

    // Cut off: EMR A corrects the family name, EMR B the gender (different fields).
    net.district(false);
    clinician_edits(&net.emr_a, &patient, |p| p["name"][0]["family"] = json!("Achieng-Odhiambo"));
    clinician_edits(&net.emr_b, &patient, |p| p["gender"] = json!("other"));
    read_in(&net, 1, "family name", "Achieng-Odhiambo");
    read_in(&net, 2, "gender", "\"gender\":\"O\"");
    net.district(true);
    let both = wait_for(SETTLE_MAX, || {
        let (_, pa) = net.emr_a.read(&patient);
        let (_, pb) = net.emr_b.read(&patient);
        let ok = |p: &Value| p["name"][0]["family"] == "Achieng-Odhiambo" && p["gender"] == "other";
        (ok(&pa) && ok(&pb)).then_some(())
    });
    assert!(both.is_some(), "both EMRs hold both edits:\n{}", net.status());

    // Apart again: both EMRs change the birth date: a conflict for the district to settle.
    net.district(false);
    clinician_edits(&net.emr_a, &patient, |p| p["birthDate"] = json!("1990-05-01"));
    clinician_edits(&net.emr_b, &patient, |p| p["birthDate"] = json!("1991-06-02"));
    read_in(&net, 1, "birth date", "1990-05-01");
    read_in(&net, 2, "birth date", "1991-06-02");
    net.district(true);
    let d = &net.nodes[0];
    let open = wait_for(SETTLE_MAX, || {
        let list: Value = serde_json::from_str(&d.ok(&["conflicts", "--open", "--json"])).ok()?;
        let c = list.as_array()?.iter().find(|c| c["path"] == "birthdate")?.clone();
        Some(c)
    });
    let conflict =
        open.unwrap_or_else(|| panic!("the district shows the conflict:\n{}", net.status()));
    let id = conflict["id"].as_str().expect("id");
    d.ok(&["resolve", id, "--value", "\"1990-07-15\""]);
    let settled = wait_for(SETTLE_MAX, || {
        let (_, pa) = net.emr_a.read(&patient);
        let (_, pb) = net.emr_b.read(&patient);
        (pa["birthDate"] == "1990-07-15" && pb["birthDate"] == "1990-07-15").then_some(())
    });
    assert!(settled.is_some(), "the resolution reaches both EMRs:\n{}", net.status());
}

#[test]
fn a_patient_deleted_in_one_emr_is_voided_everywhere_and_inactive_in_the_other() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let net = network();
    let patient = patient_key();
    clinician_puts(&net.emr_a, &clinic_records()[0]);
    net.everywhere(std::slice::from_ref(&patient));
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let resp = agent.delete(&format!("{}/{patient}", net.emr_a.base)).call().expect("DELETE");
    assert!(resp.status().is_success(), "DELETE: {}", resp.status());
    let inactive =
        wait_for(SETTLE_MAX, || (net.emr_b.read(&patient).1["active"] == false).then_some(()));
    assert!(inactive.is_some(), "EMR B shows the patient inactive:\n{}", net.status());
    for n in &net.nodes {
        let got: Value = serde_json::from_str(&n.ok(&["get", "patient", PATIENT])).expect("json");
        let voided = wait_for(SETTLE_MAX, || {
            let got: Value = serde_json::from_str(&n.ok(&["get", "patient", PATIENT])).ok()?;
            (got["voided"] == true).then_some(())
        });
        assert!(voided.is_some(), "{}: the patient is voided: {got}", n.name);
    }
    assert_eq!(net.emr_a.read(&patient).0, 404, "not created again in EMR A");
}

/// A patient of the burst.
fn burst_patient(i: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("0b0b0b0b-0000-4000-8000-{i:012x}"),
        "identifier": [{"system": "https://fhir.example.org/sid/national-id", "value": format!("NID-B-{i}")}],
        "name": [{"family": format!("Burst{i}"), "given": ["Test"]}],
        "gender": "male", "birthDate": "1985-01-01"})
}

/// `POST base` with a transaction Bundle of `PUT` entries (the clinic's EMR importing a list).
fn clinician_imports(emr: &FhirServer, resources: &[Value]) {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let key = format!(
                "{}/{}",
                r["resourceType"].as_str().expect("type"),
                r["id"].as_str().expect("id")
            );
            json!({"resource": r, "request": {"method": "PUT", "url": key}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut resp = agent
        .post(&emr.base)
        .header("Content-Type", "application/fhir+json")
        .send(bundle.to_string().as_bytes())
        .expect("POST");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 200, "transaction: {body}");
}

#[test]
fn a_burst_read_in_pages_while_one_record_changes_loses_nothing_and_doubles_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // EMR A's proxy: at the third search page, a clinician updates patient 7 (already read or
    // not: either way it must arrive in its updated form, once).
    let searches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let (seen, up) = (searches.clone(), upstream.clone());
    let rule: Rule = Box::new(move |r: &ProxyRequest| {
        if r.method == "GET" && r.target.contains("/Patient?") {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 2
                && let Some(base) = up.lock().expect("lock").clone()
            {
                let mut p = burst_patient(7);
                p["name"][0]["family"] = json!("Updated");
                let agent =
                    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
                let _ = agent
                    .put(&format!("{base}/Patient/{}", p["id"].as_str().expect("id")))
                    .header("Content-Type", "application/fhir+json")
                    .send(p.to_string().as_bytes());
            }
        }
        ProxyAction::Forward
    });
    let net = network_with(Some(rule), None);
    *upstream.lock().expect("lock") = Some(net.emr_a.base.clone());
    let burst: Vec<Value> = (0..250).map(burst_patient).collect();
    for chunk in burst.chunks(50) {
        clinician_imports(&net.emr_a, chunk);
    }
    let (a, b) = (&net.nodes[1], &net.nodes[2]);
    let all = wait_for(SETTLE_MAX, || {
        let n = b.ok(&["list", "patient"]).lines().count();
        let in_emr = net.emr_b.counts()["Patient"].as_u64();
        let seventh = net.emr_b.read("Patient/0b0b0b0b-0000-4000-8000-000000000007").1;
        (n == 250 && in_emr == Some(250) && seventh["name"][0]["family"] == "Updated").then_some(())
    });
    assert!(all.is_some(), "all 250 at B, patient 7 updated:\n{}", net.status());
    assert!(searches.load(std::sync::atomic::Ordering::SeqCst) > 2, "the crawl took pages");
    assert_eq!(a.ok(&["list", "patient"]).lines().count(), 250, "none doubled at A");
    let status: Value = serde_json::from_str(&a.ok(&["emr", "status", "--json"])).expect("json");
    let records_in = status[0]["records_in"].as_u64().expect("records_in");
    assert!(
        (250..=251).contains(&records_in),
        "each patient read in once (and the update): {status}"
    );
    for i in (0..250).step_by(37) {
        let key = format!("Patient/0b0b0b0b-0000-4000-8000-{i:012x}");
        assert_eq!(
            net.emr_b.versions(&key),
            1 + u64::from(i == 7),
            "{key}: written once per version"
        );
    }
}

#[test]
fn a_record_the_emr_refuses_is_reported_and_the_others_are_written() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let refused = burst_patient(2)["id"].as_str().expect("id").to_string();
    let target = format!("/Patient/{refused}");
    let rule: Rule = Box::new(move |r: &ProxyRequest| {
        if r.method == "PUT" && r.target.ends_with(&target) {
            let oo = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"business-rule","diagnostics":"a patient with this national id exists already"}]}"#;
            return ProxyAction::Answer(422, oo.to_string());
        }
        ProxyAction::Forward
    });
    let net = network_with(None, Some(rule));
    let patients: Vec<Value> = (1..=3).map(burst_patient).collect();
    for p in &patients {
        clinician_puts(&net.emr_a, p);
    }
    let others =
        [1, 3].map(|i| format!("Patient/{}", burst_patient(i)["id"].as_str().expect("id")));
    let written =
        wait_for(SETTLE_MAX, || others.iter().all(|k| net.emr_b.read(k).0 == 200).then_some(()));
    assert!(written.is_some(), "the others are written:\n{}", net.status());
    let b = &net.nodes[2];
    let reported = wait_for(SETTLE_MAX, || {
        let f = b.ok(&["failures"]);
        f.contains("exists already").then_some(f)
    });
    assert!(reported.is_some(), "the refusal is listed with the EMR's text:\n{}", net.status());
    assert_eq!(net.emr_b.read(&format!("Patient/{refused}")).0, 404);
    let r = b.run(&["emr", "sync", "--emr", "emr-b"]);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(
        r.stdout.contains("HTTP 422") && r.stdout.contains("exists already"),
        "{}",
        r.describe()
    );
    let status: Value = serde_json::from_str(&b.ok(&["emr", "status", "--json"])).expect("json");
    assert_eq!(status[0]["failed"], 1, "{status}");
    // The admin view shows the link beside the peers, and /metrics counts it.
    let mut web = admin::Http::new(&net.admin_bases[2]);
    web.bearer = Some(admin::token(b));
    let overview = web.get("/").text();
    assert!(overview.contains("EMR links") && overview.contains("emr-b"), "{overview}");
    let metrics = web.get("/metrics").text();
    assert!(metrics.contains("sitesync_emr_failed{emr=\"emr-b\"} 1"), "{metrics}");
    assert!(metrics.contains("sitesync_emr_records_out_total{emr=\"emr-b\"}"), "{metrics}");
}

#[test]
fn a_node_clock_hours_ahead_or_behind_loses_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (_tmp, emr, a) = one_clinic();
    let six_hours = 6 * 3600;
    let mut n = 0;
    for offset in [six_hours, -six_hours, 0] {
        // The clinician registers patients between runs of a node whose clock is off.
        for _ in 0..7 {
            clinician_puts(&emr, &burst_patient(n));
            n += 1;
        }
        let env: std::sync::Arc<dyn sitesync::node::Env> = std::sync::Arc::new(SkewedClock(offset));
        let node = sitesync::node::Node::open_with_env(&a.dir, env).expect("open node A");
        let reports = node.emr_now(Some("emr-a"), false).expect("run");
        assert!(reports[0].error.is_none() && reports[0].failed.is_empty(), "{reports:?}");
        drop(node);
        let held = a.ok(&["list", "patient"]).lines().count();
        assert_eq!(held, n, "clock {offset:+} s: every patient the EMR holds is here");
    }
}

#[test]
fn a_node_killed_between_its_write_into_the_emr_and_noting_it_neither_echoes_nor_loses() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (_tmp, emr, a) = one_clinic();
    // A record that reaches the node otherwise than from its EMR (as one from another site).
    let patient = patient("killed", 1);
    let uuid = patient["uuid"].as_str().expect("uuid").to_string();
    a.put("patient", &patient);
    let key = format!("Patient/{uuid}");
    // serve writes it into the EMR and dies right after the EMR's answer.
    let mut dying = command(Some(&a.dir))
        .env("SITESYNC_FAILPOINT", "emr-after-write")
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let died = wait_for(SETTLE_MAX, || dying.try_wait().ok().flatten());
    if died.is_none() {
        let _ = dying.kill();
    }
    assert_eq!(died.and_then(|s| s.code()), Some(137), "serve died at the failpoint");
    assert_eq!(emr.read(&key).0, 200, "the EMR holds the write");
    let before = a.status()["vector"].clone();
    // Restarted: the next runs read the resource back and find nothing new.
    let serving = a.serve();
    let runs = wait_for(SETTLE_MAX, || {
        let s: Value = serde_json::from_str(&a.ok(&["emr", "status", "--json"])).ok()?;
        (s[0]["unchanged"].as_u64()? >= 1).then_some(s)
    });
    assert!(runs.is_some(), "the bridge read its write back:\n{}", a.ok(&["emr", "status"]));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(a.status()["vector"], before, "no batch: the write read back is not a change");
    assert_eq!(emr.versions(&key), 1, "not written again");
    let puts = emr.requests().iter().filter(|(m, u, _)| m == "PUT" && u.ends_with(&key)).count();
    assert_eq!(puts, 1, "one PUT: the restarted node did not write it again");
    let (_, held) = emr.read(&key);
    assert_eq!(held["name"][0]["family"], patient["names"][0]["familyName"], "nothing lost");
    drop(serving);
}

#[test]
fn through_an_emr_that_behaves_like_openmrs_fhir2_records_bursts_and_deletes_still_arrive() {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let net = network_openmrs_a();
    // 1. The clinician's records.
    for r in clinic_records() {
        clinician_puts(&net.emr_a, &r);
    }
    let keys = [
        format!("Patient/{PATIENT}"),
        format!("Encounter/{VISIT}"),
        format!("Encounter/{ENCOUNTER}"),
        format!("Observation/{OBS}"),
    ];
    let arrived =
        wait_for(SETTLE_MAX, || keys.iter().all(|k| net.emr_b.read(k).0 == 200).then_some(()));
    assert!(arrived.is_some(), "EMR B holds EMR A's records:\n{}", net.status());
    // 5. A burst whose timestamps share whole seconds, larger than a page.
    let burst: Vec<Value> = (0..250).map(burst_patient).collect();
    for chunk in burst.chunks(50) {
        clinician_imports(&net.emr_a, chunk);
    }
    let all = wait_for(SETTLE_MAX, || {
        (net.emr_b.counts()["Patient"].as_u64() == Some(251)).then_some(())
    });
    assert!(all.is_some(), "all 251 patients in EMR B:\n{}", net.status());
    assert_eq!(net.nodes[1].ok(&["list", "patient"]).lines().count(), 251, "none doubled at A");
    // 8. A delete (a void in OpenMRS: hidden from search, 410 on read).
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let resp = agent.delete(&format!("{}/{}", net.emr_a.base, keys[0])).call().expect("DELETE");
    assert!(resp.status().is_success(), "DELETE: {}", resp.status());
    let inactive =
        wait_for(SETTLE_MAX, || (net.emr_b.read(&keys[0]).1["active"] == false).then_some(()));
    assert!(inactive.is_some(), "EMR B shows the patient inactive:\n{}", net.status());
}
