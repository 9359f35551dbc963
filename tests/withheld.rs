//! A body a parent withheld from a child because it could not read the record yet (an edit
//! merged before its creation) is re-sent once the parent can, whichever way the creation
//! reaches the child: here the child gets it from another clinic directly, so no change of the
//! record ever travels from the parent to the child again. (Before, such a body waited until
//! the record changed once more or the child's scope changed: found by the `parent-outage`
//! simulation, where peers carry most records.)
//!
//! In-process nodes, batches carried by the node calls a session makes (`fetch_wire`,
//! `apply_wire`, `fetch_bodies`, `receive_bodies`), so the order of arrival is exact.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sitesync::config::{Peer, Scope};
use sitesync::id::{EntityType, NodeId, parse_uuid};
use sitesync::node::{Node, Receiver};
use sitesync::protocol::message::Role;

const CLINIC_B: &str = "6b3a1c1e-0d5e-4d0e-9a43-2f1b7c0d0b0b";
const PATIENT: &str = "00000000-0000-4000-8000-000000000001";
const OBS: &str = "00000000-0000-4000-8000-0000000000aa";

fn peer(node_id: NodeId, role: Role, scope: Scope) -> Peer {
    Peer { node_id, role, addr: None, name: None, scope }
}

/// `district` becomes the parent of `child`, with `scope` (both configs and rosters).
fn link(district: &mut Node, child: &mut Node, scope: Scope) {
    district.config.peers.push(peer(child.id(), Role::Child, scope));
    district.save_config().expect("save");
    district.publish_roster().expect("roster");
    child.config.peers.push(peer(district.id(), Role::Parent, Scope::default()));
    child.save_config().expect("save");
    child.publish_roster().expect("roster");
}

/// What `from` sends `to` in a session (the batches of `authors` only, when given).
fn carry(from: &Node, to: &Node, authors: Option<&[NodeId]>) {
    let order = match authors {
        Some(a) => a.to_vec(),
        None => from.trust_order().expect("order"),
    };
    let receiver = from.receiver(to.id()).expect("receiver");
    let after = to.store.vector().expect("vector");
    let batches = from.fetch_wire(&order, &after, to.id(), &receiver).expect("fetch");
    let (_, report, failed) = to.apply_wire(from.id(), batches).expect("apply");
    assert_eq!(
        (failed, report.rejected.len()),
        (0, 0),
        "{} -> {}",
        from.config.name,
        to.config.name
    );
    to.merge_received().expect("merge");
}

fn obs_comment(n: &Node) -> Option<Value> {
    let id = sitesync::id::EntityId::new(EntityType::Obs, parse_uuid(OBS).expect("uuid"));
    n.store.get(&id).expect("get").map(|(json, _)| json["comment"].clone())
}

/// A patient `uuid` with one identifier `identifier`, issued at `location`.
fn patient_at(uuid: &str, identifier: &str, location: &str) -> Value {
    json!({"uuid": uuid,
           "identifiers": [{"uuid": uuid.replacen("00000000-", "00000001-", 1),
                            "identifier": identifier,
                            "identifierType": "05a29f94-c0ed-11e2-94be-8c13b969e334",
                            "location": location}],
           "names": [{"uuid": uuid.replacen("00000000-", "00000002-", 1), "givenName": "Grace"}],
           "gender": "F"})
}

/// Clinic A registers `patient` and an observation of it; clinic C gets both from A (a peer
/// link) and edits the observation. The district hears from C first, with C's batches only:
/// it holds the edit, not the observation it edits, so it cannot tell whose it is and
/// withholds it from clinic B. Then B gets A's records from A directly, and the district gets
/// them too: from here on, no change of the observation travels from the district to B.
fn edit_arrives_before_its_creation(
    district: &Node,
    a: &Node,
    b: &Node,
    c: &Node,
    patient: &Value,
) {
    a.put(EntityType::Patient, patient).expect("put patient");
    let mut obs = json!({"uuid": OBS, "person": PATIENT,
                         "concept": "e376a8ae-b11e-4d53-a00d-1bf68b98fdd7",
                         "obsDatetime": "2024-03-05T08:55:00.000+0300", "valueNumeric": 61.5,
                         "comment": "created at A", "status": "FINAL", "voided": false});
    a.put(EntityType::Obs, &obs).expect("put obs");
    carry(a, c, Some(&[a.id()]));
    obs["comment"] = json!("edited at C");
    c.put(EntityType::Obs, &obs).expect("edit obs");
    carry(c, district, Some(&[c.id()]));
    assert_eq!(obs_comment(district), None, "the district cannot read the observation yet");
    carry(district, b, None);
    carry(a, b, Some(&[a.id()]));
    carry(a, district, Some(&[a.id()]));
}

#[test]
fn a_body_withheld_while_its_record_was_unreadable_is_resent_once_it_is_readable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mk = |n: &str| Node::init(&tmp.path().join(n), n).expect("init");
    let (mut district, mut a, mut b, mut c) = (mk("district"), mk("a"), mk("b"), mk("c"));
    let catchment: BTreeSet<_> = [parse_uuid(CLINIC_B).expect("uuid")].into_iter().collect();
    let b_scope = Scope { types: None, catchment: Some(catchment) };
    link(&mut district, &mut a, Scope::default());
    link(&mut district, &mut b, b_scope.clone());
    link(&mut district, &mut c, Scope::default());
    // Everyone holds the district's roster, so every clinic trusts the others.
    for n in [&a, &b, &c] {
        carry(&district, n, None);
    }

    // Clinic A registers a patient of clinic B's area.
    let patient = patient_at(PATIENT, "B-1", CLINIC_B);
    edit_arrives_before_its_creation(&district, &a, &b, &c, &patient);
    assert_eq!(obs_comment(&district), Some(json!("edited at C")));
    assert_eq!(obs_comment(&b), Some(json!("created at A")), "B lacks C's edit");
    let receiver = district.receiver(b.id()).expect("receiver");
    assert_eq!(receiver, Receiver::Child(b_scope.clone()));
    let more = district
        .fetch_wire(
            &district.trust_order().expect("order"),
            &b.store.vector().expect("v"),
            b.id(),
            &receiver,
        )
        .expect("fetch");
    assert!(more.is_empty(), "B holds every batch");

    // The end of the district's next round with B: the edit is inside B's scope now.
    let bodies = district.fetch_bodies(b.id(), &b_scope).expect("fetch bodies");
    assert_eq!(bodies.len(), 1, "the withheld edit is re-sent");
    let report = b
        .receive_bodies(district.id(), bodies.iter().map(|r| r.body.clone()).collect())
        .expect("receive bodies");
    assert_eq!((report.stored, report.refused), (1, 0));
    district.bodies_delivered(b.id(), &bodies).expect("delivered");
    b.merge_received().expect("merge");
    assert_eq!(obs_comment(&b), Some(json!("edited at C")), "B reads what the district reads");
    assert!(district.fetch_bodies(b.id(), &b_scope).expect("fetch").is_empty(), "sent once");
}

/// Peers leave bodies out for a clinic only when its parent takes over the holes the clinic
/// reports: a parent of this version marks each child so in its signed roster (`holes`). A
/// parent of an older version publishes no mark: its children's peers send them whole batches,
/// as before, and its children report nothing it could not read.
#[test]
fn peers_leave_bodies_out_only_for_a_clinic_whose_parent_takes_over_holes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mk = |n: &str| Node::init(&tmp.path().join(n), n).expect("init");
    let (mut district, mut a, mut b) = (mk("district"), mk("a"), mk("b"));
    let catchment: BTreeSet<_> = [parse_uuid(CLINIC_B).expect("uuid")].into_iter().collect();
    let b_scope = Scope { types: None, catchment: Some(catchment) };
    link(&mut district, &mut a, Scope::default());
    link(&mut district, &mut b, b_scope.clone());
    a.config.peers.push(peer(b.id(), Role::Peer, Scope::default()));
    a.save_config().expect("save");
    carry(&district, &a, None);
    carry(&district, &b, None);
    assert_eq!(a.receiver(b.id()).expect("receiver"), Receiver::ScopedPeer(b_scope.clone()));
    assert!(b.parent_takes_over_holes().expect("roster"), "B reports its holes");

    // The district's roster as an older version wrote it: the same members, no `holes` mark.
    let roster_id =
        sitesync::id::EntityId::new(EntityType::Roster, sitesync::id::Uid::of_node(&district.id()));
    let (mut roster, _) = district.store.get(&roster_id).expect("get").expect("roster");
    for (_, member) in roster["members"].as_object_mut().expect("members").iter_mut() {
        member.as_object_mut().expect("member").remove("holes");
    }
    let key_text = std::fs::read_to_string(tmp.path().join("district").join("node.key"))
        .expect("district key");
    let key = sitesync::identity::Keypair::from_file_text(&key_text).expect("key");
    let body = roster.as_object().expect("object").clone();
    let older = sitesync::entity::Record { id: roster_id, body };
    district.store.put(&key, &[older], 0).expect("older roster");
    carry(&district, &a, None);
    assert_eq!(a.receiver(b.id()).expect("receiver"), Receiver::Whole, "whole batches");
    carry(&district, &b, None);
    assert!(!b.parent_takes_over_holes().expect("roster"), "no holes reported");
}

/// A child cannot get a body outside its scope by naming it as a hole of a record inside: the
/// parent takes over only holes whose body is a change of the record named, and checks again
/// before it re-sends. (Each hash is one the child holds from a signed manifest, so a false
/// report would otherwise pass the child's own check.)
#[test]
fn a_false_hole_report_gets_a_child_nothing_outside_its_scope() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mk = |n: &str| Node::init(&tmp.path().join(n), n).expect("init");
    let (mut district, mut a, mut b) = (mk("district"), mk("a"), mk("b"));
    let catchment: BTreeSet<_> = [parse_uuid(CLINIC_B).expect("uuid")].into_iter().collect();
    let b_scope = Scope { types: None, catchment: Some(catchment) };
    link(&mut district, &mut a, Scope::default());
    link(&mut district, &mut b, b_scope.clone());
    carry(&district, &a, None);
    // Clinic A registers a patient of clinic B's area and one of its own.
    let inside = "00000000-0000-4000-8000-000000000011";
    let outside = "00000000-0000-4000-8000-000000000022";
    let both = json!([patient_at(inside, "I-1", CLINIC_B), patient_at(outside, "O-1", OBS)]);
    a.put(EntityType::Patient, &both).expect("put");
    carry(&a, &district, Some(&[a.id()]));

    // The district sends B its batches: the outside patient's body withheld.
    let receiver = district.receiver(b.id()).expect("receiver");
    let order = district.trust_order().expect("order");
    let batches = district
        .fetch_wire(&order, &b.store.vector().expect("v"), b.id(), &receiver)
        .expect("fetch");
    let id = |u: &str| sitesync::id::EntityId::new(EntityType::Patient, parse_uuid(u).expect("u"));
    let hash_of = |uuid: &str| {
        batches
            .iter()
            .flat_map(|w| w.clone().into_parts().0.batch.changes)
            .find(|c| c.entity == id(uuid))
            .expect("listed")
            .body
    };
    let (inside_hash, outside_hash) = (hash_of(inside), hash_of(outside));
    b.apply_wire(district.id(), batches).expect("apply");
    assert!(b.store.get(&id(outside)).expect("get").is_none(), "withheld from B");

    // B claims the outside patient's body is a hole of the inside patient.
    let taken = district
        .take_over_holes(b.id(), &[(id(inside), outside_hash), (id(inside), inside_hash)])
        .expect("take over");
    assert_eq!(taken, 1, "only the true report is taken over");
    let bodies = district.fetch_bodies(b.id(), &b_scope).expect("fetch bodies");
    assert!(
        bodies.iter().all(|r| r.hash != outside_hash),
        "the outside patient's body is not re-sent"
    );
    let report = b
        .receive_bodies(district.id(), bodies.iter().map(|r| r.body.clone()).collect())
        .expect("receive");
    assert_eq!(report.stored, 0, "B holds the inside patient already");
    b.merge_received().expect("merge");
    assert!(b.store.get(&id(outside)).expect("get").is_none(), "still withheld from B");
}

/// A body remembered under its own record (unreadable when withheld) whose record turns out to
/// belong to a patient outside the child's scope is remembered under that patient from then
/// on: when the patient is transferred into the child's catchment, the body is re-sent.
#[test]
fn a_body_first_unreadable_follows_its_patient_into_the_childs_scope() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mk = |n: &str| Node::init(&tmp.path().join(n), n).expect("init");
    let (mut district, mut a, mut b, mut c) = (mk("district"), mk("a"), mk("b"), mk("c"));
    let catchment: BTreeSet<_> = [parse_uuid(CLINIC_B).expect("uuid")].into_iter().collect();
    let b_scope = Scope { types: None, catchment: Some(catchment) };
    link(&mut district, &mut a, Scope::default());
    link(&mut district, &mut b, b_scope.clone());
    link(&mut district, &mut c, Scope::default());
    for n in [&a, &b, &c] {
        carry(&district, n, None);
    }
    // As in the first test, but the patient is registered elsewhere (outside B's catchment).
    let elsewhere = "0f0f0f0f-0d5e-4d0e-9a43-2f1b7c0d0b0b";
    let mut patient = patient_at(PATIENT, "X-1", elsewhere);
    edit_arrives_before_its_creation(&district, &a, &b, &c, &patient);
    // The district can read the observation now: its patient is outside B's catchment.
    assert!(district.fetch_bodies(b.id(), &b_scope).expect("fetch").is_empty(), "outside");
    assert_eq!(obs_comment(&b), Some(json!("created at A")));

    // The district registers the patient at clinic B too (a transfer).
    patient["identifiers"].as_array_mut().expect("identifiers").push(
        json!({"uuid": "00000001-0000-4000-8000-000000000002", "identifier": "B-1",
                     "identifierType": "05a29f94-c0ed-11e2-94be-8c13b969e334",
                     "location": CLINIC_B}),
    );
    district.put(EntityType::Patient, &patient).expect("transfer");
    carry(&district, &b, None);
    let bodies = district.fetch_bodies(b.id(), &b_scope).expect("fetch bodies");
    assert_eq!(bodies.len(), 1, "C's edit is re-sent with the patient");
    b.receive_bodies(district.id(), bodies.iter().map(|r| r.body.clone()).collect())
        .expect("receive");
    b.merge_received().expect("merge");
    assert_eq!(obs_comment(&b), Some(json!("edited at C")));
}
