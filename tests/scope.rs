//! A parent's per-child scope, end to end with real `serve` processes on loopback: each child
//! receives only the records of its catchment (metadata always), the withheld ones still
//! advance its vector (manifests flow), and a child cannot push types outside its scope.

mod net;

mod admin;

use std::time::Duration;

use net::*;
use serde_json::{Value, json};

const WAIT_MAX: Duration = Duration::from_secs(60);
const VISIT_TYPE: &str = "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466";

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn location(name: &str) -> Value {
    json!({"uuid": uuid(), "name": name, "retired": false})
}

/// A patient whose identifiers were issued at `locations`.
fn patient_at(tag: &str, locations: &[&str]) -> Value {
    let mut p = patient(tag, 1);
    let ids: Vec<Value> = locations
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({"uuid": uuid(), "identifier": format!("{tag}-{i}"),
                   "identifierType": "8d79403a-c2cc-11de-8d13-0010c6dffd0f",
                   "location": l, "preferred": i == 0, "voided": false})
        })
        .collect();
    p["identifiers"] = Value::Array(ids);
    p
}

fn visit_of(patient: &Value, location: &str) -> Value {
    json!({"uuid": uuid(), "patient": patient["uuid"], "visitType": VISIT_TYPE,
           "startDatetime": "2024-03-05T08:42:00.000+0300", "location": location,
           "voided": false})
}

fn holds(n: &Node, ty: &str, record: &Value) -> bool {
    let uuid = record["uuid"].as_str().expect("uuid");
    n.run(&["get", ty, uuid]).code == Some(0)
}

/// Batches per author, from `status --json`.
fn vector(n: &Node) -> Value {
    n.status()["vector"].clone()
}

/// A district listening on loopback and two clinics as its children, each limited to its own
/// location (the locations are returned, not yet written anywhere).
fn district_and_two_clinics(dir: &std::path::Path) -> (Node, Node, Node, String, Value, Value) {
    let parent = Node::init(dir, "district");
    let a = Node::init(dir, "clinic-a");
    let b = Node::init(dir, "clinic-b");
    let pp = addr(free_port());
    parent.network(Some(&pp), 1);
    let (loc_a, loc_b) = (location("Clinic A"), location("Clinic B"));
    for (n, loc) in [(&a, &loc_a), (&b, &loc_b)] {
        let l = loc["uuid"].as_str().expect("uuid");
        parent.ok(&["peer", "add", &n.id, "--role", "child", "--name", &n.name, "--catchment", l]);
        n.peer_add(&parent, "parent", Some(&pp));
        n.network(None, 1);
    }
    (parent, a, b, pp, loc_a, loc_b)
}

#[test]
fn children_receive_their_catchment_and_push_only_their_types() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (parent, a, b, pp, loc_a, loc_b) = district_and_two_clinics(tmp.path());
    let c = Node::init(tmp.path(), "lab");
    let (la, lb) = (loc_a["uuid"].as_str().expect("a"), loc_b["uuid"].as_str().expect("b"));
    parent.ok(&["peer", "add", &c.id, "--role", "child", "--types", "patient,location"]);
    let listed = parent.ok(&["peer", "list"]);
    assert!(
        listed.contains("scope: all types; catchment of 1 location"),
        "peer list shows scopes: {listed}"
    );
    assert!(listed.contains("scope: patient,location; everywhere"), "{listed}");
    c.peer_add(&parent, "parent", Some(&pp));
    c.network(None, 1);
    // Bad scope input is refused with the value named, and nothing changes.
    let r = parent.run(&["peer", "add", &c.id, "--role", "peer", "--types", "patient"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("child"), "{}", r.describe());
    let r = parent.run(&["peer", "add", &c.id, "--role", "child", "--types", "patient,nurse"]);
    assert!(r.code == Some(2) && r.stderr.contains("nurse"), "{}", r.describe());
    assert_eq!(parent.ok(&["peer", "list"]), listed, "a refused edit changes nothing");

    // Metadata and a patient registered at both clinics, at the district.
    parent.put("location", &json!([loc_a, loc_b]));
    let shared = patient_at("shared", &[la, lb]);
    parent.put("patient", &shared);
    // Each clinic registers a patient and a visit.
    let (pa, pb) = (patient_at("a", &[la]), patient_at("b", &[lb]));
    let (va, vb) = (visit_of(&pa, la), visit_of(&pb, lb));
    a.put("patient", &pa);
    a.put("visit", &va);
    b.put("patient", &pb);
    b.put("visit", &vb);
    // The lab may push patients and locations only: its patient arrives, its visit does not.
    let pc = patient_at("lab", &[la]);
    c.put("patient", &pc);
    c.put("visit", &visit_of(&pc, la));

    let _servers: Vec<Serve> = [&parent, &a, &b, &c].iter().map(|n| n.serve()).collect();
    // Done when both clinics hold the other clinic's batches (as manifests) and every record
    // they should hold.
    let done = wait_for(WAIT_MAX, || {
        let ready = holds(&a, "patient", &shared)
            && holds(&b, "patient", &shared)
            && holds(&a, "patient", &pc)
            && holds(&parent, "visit", &va)
            && holds(&parent, "visit", &vb)
            && vector(&a) == vector(&parent)
            && vector(&b) == vector(&parent);
        ready.then_some(())
    });
    assert!(
        done.is_some(),
        "scoped sync did not settle:\nparent {}\na {}\nb {}",
        parent.status(),
        a.status(),
        b.status()
    );

    for (clinic, own, other) in [(&a, (&pa, &va), (&pb, &vb)), (&b, (&pb, &vb), (&pa, &va))] {
        assert!(holds(clinic, "patient", own.0) && holds(clinic, "visit", own.1));
        assert!(holds(clinic, "location", &loc_a) && holds(clinic, "location", &loc_b), "metadata");
        assert!(holds(clinic, "patient", &shared), "a patient of both catchments");
        assert!(
            !holds(clinic, "patient", other.0) && !holds(clinic, "visit", other.1),
            "{}: the other clinic's patient and visit are withheld",
            clinic.name
        );
    }
    // The manifests flowed: each clinic's vector equals the district's, authors included.
    assert!(vector(&a).as_object().is_some_and(|v| v.len() >= 4), "{}", vector(&a));

    // The lab's visit was held back by the parent, with the reason in its failures and log.
    assert!(!holds(&parent, "visit", &visit_of(&pc, la)));
    let lab_visits = parent.ok(&["list", "visit"]);
    assert_eq!(lab_visits.lines().count(), 2, "only the clinics' visits: {lab_visits}");
    let failures = parent.ok(&["failures"]);
    assert!(
        failures.contains("held back") && failures.contains("a visit record, outside"),
        "{failures}"
    );
    let events = parent.ok(&["audit", "list", "--limit", "100000"]);
    assert!(events.contains("held back"), "the parent logged it: {events}");
    // The audit log also holds the scope configuration and every session.
    assert!(events.contains("config: peer") && events.contains("catchment of 1 location"));
    assert!(events.contains("session with"), "{events}");
    assert!(parent.ok(&["audit", "verify"]).contains("intact"));
    // Each child's audit entries reach the parent's copy of its log.
    let copied = wait_for(WAIT_MAX, || {
        let l = parent.ok(&["audit", "list", "--origin", &a.id, "--limit", "1000"]);
        (l.contains("local write") && l.contains("session with")).then_some(l)
    });
    assert!(copied.is_some(), "clinic A's log at the district");

    // A bundle exported by a clinic leaves out what it holds without bodies, and says so.
    let out = tmp.path().join("a.ssb");
    let said = a.ok(&["export", "--out", p(&out)]);
    assert!(said.contains("left out"), "{said}");
}

fn get(n: &Node, ty: &str, record: &Value) -> Option<Value> {
    let r = n.run(&["get", ty, record["uuid"].as_str().expect("uuid")]);
    (r.code == Some(0)).then(|| serde_json::from_str(&r.stdout).expect("get prints JSON"))
}

/// A transfer: a patient registered at clinic A (withheld at clinic B, manifests only) is
/// registered at clinic B's location by the district. Clinic B then holds the patient's whole
/// history (every earlier change, its visit and observation) exactly as the district does, and
/// nothing waits there; a patient still outside B's catchment stays withheld.
#[test]
fn a_patient_transferred_into_a_catchment_arrives_with_its_whole_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (parent, a, b, _pp, loc_a, loc_b) = district_and_two_clinics(tmp.path());
    let (la, lb) = (loc_a["uuid"].as_str().expect("a"), loc_b["uuid"].as_str().expect("b"));
    parent.put("location", &json!([loc_a, loc_b]));
    // Clinic A registers a patient, records a visit and an observation, then edits the patient:
    // several changes, by clinic A, all outside clinic B's catchment.
    let mut moved = patient_at("moved", &[la]);
    let stays = patient_at("stays", &[la]);
    a.put("patient", &json!([moved, stays]));
    let visit = visit_of(&moved, la);
    a.put("visit", &visit);
    let obs = json!({"uuid": uuid(), "person": moved["uuid"],
                     "concept": "e376a8ae-b11e-4d53-a00d-1bf68b98fdd7",
                     "obsDatetime": "2024-03-05T08:55:00.000+0300", "location": la,
                     "valueNumeric": 61.5, "status": "FINAL", "voided": false});
    a.put("obs", &obs);
    moved["names"][0]["familyName"] = json!("Transferred");
    a.put("patient", &moved);

    let _servers: Vec<Serve> = [&parent, &a, &b].iter().map(|n| n.serve()).collect();
    let withheld = wait_for(WAIT_MAX, || {
        let ready = get(&parent, "patient", &moved)
            .is_some_and(|p| p["names"][0]["familyName"] == "Transferred")
            && holds(&parent, "obs", &obs)
            && vector(&b) == vector(&parent);
        ready.then_some(())
    });
    assert!(withheld.is_some(), "did not settle:\nparent {}\nb {}", parent.status(), b.status());
    assert!(!holds(&b, "patient", &moved) && !holds(&b, "visit", &visit), "withheld at B");

    // The transfer: the district registers the patient at clinic B's location too.
    let mut record = get(&parent, "patient", &moved).expect("held at the district");
    let ids = record["identifiers"].as_array_mut().expect("identifiers");
    ids.push(json!({"uuid": uuid(), "identifier": "moved-b", "identifierType": ID_TYPE,
                    "location": lb, "preferred": false, "voided": false}));
    parent.put("patient", &record);
    let want = get(&parent, "patient", &moved).expect("transferred");

    let arrived = wait_for(WAIT_MAX, || {
        let same = get(&b, "patient", &moved).as_ref() == Some(&want)
            && get(&b, "visit", &visit) == get(&parent, "visit", &visit)
            && get(&b, "obs", &obs) == get(&parent, "obs", &obs)
            && vector(&b) == vector(&parent);
        same.then_some(())
    });
    assert!(
        arrived.is_some(),
        "clinic B did not get the transferred patient's history:\nparent {}\nb {}\nb's patient: \
         {:?}\nb's log: {}",
        parent.status(),
        b.status(),
        get(&b, "patient", &moved),
        b.ok(&["audit", "list", "--limit", "50"])
    );
    assert_eq!(get(&b, "patient", &moved).as_ref(), Some(&want), "the same content");
    assert!(get(&b, "visit", &visit).is_some() && get(&b, "obs", &obs).is_some());
    assert_eq!(b.status()["pending_batches"], 0, "nothing waits at B");
    // The scope still holds for everything else.
    assert!(!holds(&b, "patient", &stays), "a patient still outside B's catchment");
    // Both sides logged the re-send (counts only).
    let log = b.ok(&["audit", "list", "--limit", "100000"]);
    assert!(log.contains("received withheld bodies from") && log.contains("0 refused"), "{log}");
    let log = parent.ok(&["audit", "list", "--limit", "100000"]);
    assert!(log.contains("withheld bodies to"), "{log}");
    // Clinic A is unaffected: it holds its patient as the district does.
    assert_eq!(get(&a, "patient", &moved).as_ref().map(|p| &p["uuid"]), Some(&moved["uuid"]));
}

/// A record outside what a child may push does not stall the child: the parent holds it back
/// (applies its batch without that record's body), lists it in its failures and its audit log
/// with the reason, and the child's later records arrive in the same session, which completes;
/// the batch travels on without that body to the parent's own parent, which checks the hole
/// against the limit the district's signed roster publishes. (Before, the parent refused the
/// whole batch, the session ended Forbidden, and every later batch of the child waited behind
/// the gap for good.)
#[test]
fn a_record_outside_a_childs_types_is_held_back_and_the_rest_arrives() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let national = Node::init(tmp.path(), "national");
    let parent = Node::init(tmp.path(), "district");
    let child = Node::init(tmp.path(), "registration-desk");
    let (np, pp) = (addr(free_port()), addr(free_port()));
    national.network(Some(&np), 1);
    national.peer_add(&parent, "child", None);
    parent.peer_add(&national, "parent", Some(&np));
    parent.network(Some(&pp), 1);
    parent.ok(&["peer", "add", &child.id, "--role", "child", "--types", "patient"]);
    child.peer_add(&parent, "parent", Some(&pp));
    // One round only (at start): the child's next scheduled round is an hour away.
    child.network(None, 3600);
    let loc = location("Desk");
    let first = patient_at("desk", &[loc["uuid"].as_str().expect("uuid")]);
    child.put("visit", &visit_of(&first, loc["uuid"].as_str().expect("uuid")));
    let later: Vec<Value> = (0..5).map(|i| patient_at(&format!("p{i}"), &[])).collect();
    for p in &later {
        child.put("patient", p);
    }
    // The district (with its admin view) holds the national roster before the child's round.
    let national_serve = national.serve();
    let (parent_serve, base) = admin::serve_admin(&parent);
    let ready =
        wait_for(WAIT_MAX, || (seq_of_node(&parent.status(), &national.id) > 0).then_some(()));
    assert!(ready.is_some(), "the district syncs with national:\n{}", parent.status());
    let _servers = [national_serve, parent_serve, child.serve()];
    let arrived =
        wait_for(WAIT_MAX, || later.iter().all(|p| holds(&parent, "patient", p)).then_some(()));
    assert!(arrived.is_some(), "the 5 patients reach the parent:\n{}", parent.status());
    let relayed = wait_for(WAIT_MAX, || {
        let all = later.iter().all(|p| holds(&national, "patient", p));
        let (n, c) = (national.status(), child.status());
        (all && seq_of_node(&n, &child.id) == seq_of_node(&c, &child.id)).then_some(())
    });
    assert!(relayed.is_some(), "and its parent:\n{}\n{}", national.status(), parent.status());
    assert_eq!(national.ok(&["list", "visit"]), "", "the visit travels nowhere");
    let s = child.status();
    let entry = peer_entry(&s, &parent.id);
    assert_eq!(entry["sessions"], json!(1), "one session: {entry}");
    assert!(entry["last_error"].is_null() && !entry["last_success"].is_null(), "{entry}");
    assert_eq!(vector(&parent), vector(&child), "vectors stay contiguous");
    assert_eq!(parent.ok(&["list", "visit"]), "", "the visit stays with the child");
    let failures: Value = serde_json::from_str(&parent.ok(&["failures", "--json"])).expect("json");
    let held = failures.as_array().expect("list").iter().find(|f| {
        f["what"].as_str().is_some_and(|w| w.contains("held back") && w.contains("visit/"))
    });
    let held = held.unwrap_or_else(|| panic!("the held-back visit is a failure: {failures:#}"));
    assert!(held["reason"].as_str().is_some_and(|r| r.contains("outside")), "{held}");
    let log = parent.ok(&["audit", "list", "--limit", "1000"]);
    assert!(log.contains("held back") && log.contains("visit/"), "{log}");
    // And in the web view, with the reason.
    let mut web = admin::Http::new(&base);
    web.login(&admin::token(&parent));
    let page = web.get("/failures").text();
    assert!(
        page.contains("held back") && page.contains("outside what this node may push"),
        "{page}"
    );
    let id = held["id"].as_str().expect("id");
    let r = parent.run(&["retry", id]);
    assert_eq!(r.code, Some(2), "nothing to retry: {}", r.describe());
    assert!(r.stderr.contains("nothing to retry"), "{}", r.describe());
}

/// Clinics under catchments that are also peers exchange what both may hold, during an outage
/// of their parent too. Clinic A leaves out of what it sends clinic B the bodies outside B's
/// catchment (as the district's signed roster publishes it) and the bodies A does not hold;
/// B accepts the batches (no session ends refused), and reports what was left out to the
/// district once it is back, which re-sends what B may hold. (Before, B refused every batch
/// of A that lacked a body, and the peer link carried nothing once catchments were set.)
#[test]
fn peers_under_catchments_exchange_what_both_may_hold() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (parent, a, b, pp, loc_a, loc_b) = district_and_two_clinics(tmp.path());
    let c = Node::init(tmp.path(), "clinic-c");
    let loc_c = location("Clinic C");
    let (la, lb, lc) = (
        loc_a["uuid"].as_str().expect("a"),
        loc_b["uuid"].as_str().expect("b"),
        loc_c["uuid"].as_str().expect("c"),
    );
    parent.ok(&["peer", "add", &c.id, "--role", "child", "--name", "clinic-c", "--catchment", lc]);
    c.peer_add(&parent, "parent", Some(&pp));
    c.network(None, 1);
    // The peer link: B listens, A dials it.
    let bp = addr(free_port());
    b.network(Some(&bp), 1);
    a.peer_add(&b, "peer", Some(&bp));
    b.peer_add(&a, "peer", None);
    parent.put("location", &json!([loc_a, loc_b, loc_c]));
    // Clinic C registers a visitor from B's area: outside A's catchment, inside B's.
    let visitor = patient_at("visitor", &[lc, lb]);
    c.put("patient", &visitor);

    // A and C sync with the district (B is off): A holds C's batch without the visitor.
    let mut district = Some(parent.serve());
    let (srv_a, srv_c) = (a.serve(), c.serve());
    let synced = wait_for(WAIT_MAX, || {
        let s = a.status();
        (seq_of_node(&s, &c.id) > 0 && seq_of_node(&s, &parent.id) > 0).then_some(())
    });
    assert!(synced.is_some(), "A holds C's batch:\n{}", a.status());
    assert!(!holds(&a, "patient", &visitor), "outside A's catchment");
    drop(srv_c);

    // The district goes down; A writes a patient of both catchments and one of its own.
    drop(district.take());
    let shared = patient_at("shared", &[la, lb]);
    let own = patient_at("own", &[la]);
    a.put("patient", &json!([shared, own]));
    let shared_visit = visit_of(&shared, la);
    a.put("visit", &shared_visit);

    // B comes up; only the peer link works.
    let srv_b = b.serve();
    let exchanged = wait_for(WAIT_MAX, || {
        (holds(&b, "patient", &shared) && holds(&b, "visit", &shared_visit)).then_some(())
    });
    assert!(exchanged.is_some(), "B holds A's shared records:\n{}\n{}", b.status(), a.status());
    assert!(!holds(&b, "patient", &own), "A left out what is outside B's catchment");
    assert!(!holds(&b, "patient", &visitor), "A does not hold the visitor's body");
    let s = a.status();
    let link = peer_entry(&s, &b.id);
    assert!(link["last_error"].is_null() && !link["last_success"].is_null(), "{link}");

    // The district is back: B reports the holes, the district re-sends what B may hold.
    let _district = parent.serve();
    let repaired = wait_for(WAIT_MAX, || {
        (holds(&b, "patient", &visitor) && vector(&b) == vector(&parent)).then_some(())
    });
    assert!(
        repaired.is_some(),
        "B gets the visitor from the district:\n{}\n{}\n{}",
        b.status(),
        parent.status(),
        b.ok(&["audit", "list", "--limit", "40"])
    );
    assert!(!holds(&b, "patient", &own), "still outside B's catchment");
    for n in [&a, &b] {
        let s = n.status();
        for p in s["peers"].as_array().expect("peers") {
            let e = p["last_error"].as_str().unwrap_or("");
            assert!(!e.contains("Forbidden"), "{}: {p}", n.name);
        }
    }
    drop((srv_a, srv_b));
}

/// Two clinics that have never reached their district meet as peers first: neither knows yet
/// what the other may hold, so neither sends the other a record (before, each sent whole
/// batches and a patient outside the other's catchment stayed there for good). Once the
/// district's roster arrives, what both may hold flows and the rest stays out.
#[test]
fn a_clinic_that_has_not_heard_from_its_parent_sends_its_peer_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (parent, a, b, _pp, loc_a, loc_b) = district_and_two_clinics(tmp.path());
    let (la, lb) = (loc_a["uuid"].as_str().expect("a"), loc_b["uuid"].as_str().expect("b"));
    let bp = addr(free_port());
    b.network(Some(&bp), 1);
    a.peer_add(&b, "peer", Some(&bp));
    b.peer_add(&a, "peer", None);
    let own = patient_at("own", &[la]);
    let shared = patient_at("shared", &[la, lb]);
    a.put("patient", &json!([own, shared]));

    // The district has never run: the peers meet, and nothing of A's reaches B.
    let (srv_a, srv_b) = (a.serve(), b.serve());
    let met = wait_for(WAIT_MAX, || {
        let s = a.status();
        let link = peer_entry(&s, &b.id);
        (!link["last_success"].is_null()).then_some(())
    });
    assert!(met.is_some(), "A and B had a session:\n{}", a.status());
    assert!(!holds(&b, "patient", &own), "A sent B a patient outside B's catchment");
    assert!(!holds(&b, "patient", &shared), "A sent B a record before knowing B's scope");

    // The district comes up: the shared patient reaches B, A's own never does.
    parent.put("location", &json!([loc_a, loc_b]));
    let _district = parent.serve();
    let arrived = wait_for(WAIT_MAX, || holds(&b, "patient", &shared).then_some(()));
    assert!(arrived.is_some(), "B gets the shared patient:\n{}\n{}", b.status(), a.status());
    let settled = wait_for(WAIT_MAX, || (vector(&b) == vector(&parent)).then_some(()));
    assert!(settled.is_some(), "B caught up:\n{}\n{}", b.status(), parent.status());
    assert!(!holds(&b, "patient", &own), "still outside B's catchment");
    for n in [&a, &b] {
        let s = n.status();
        for p in s["peers"].as_array().expect("peers") {
            let e = p["last_error"].as_str().unwrap_or("");
            assert!(!e.contains("Forbidden"), "{}: {p}", n.name);
        }
    }
    drop((srv_a, srv_b));
}
