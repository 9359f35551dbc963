//! Rosters: a clinic that trusts only its district accepts the clinics the district vouches
//! for, and a clinic removed from the district's roster is refused everywhere afterwards.

use std::path::Path;

use serde_json::json;
use sitesync::config::Peer;
use sitesync::id::{EntityType, Vector};
use sitesync::node::Node;
use sitesync::protocol::message::Role;

fn patient(n: u32) -> serde_json::Value {
    json!({
        "uuid": format!("00000000-0000-4000-8000-{n:012}"),
        "identifiers": [{"uuid": format!("00000001-0000-4000-8000-{n:012}"), "identifier": format!("ID-{n}"),
                         "identifierType": "05a29f94-c0ed-11e2-94be-8c13b969e334"}],
        "names": [{"uuid": format!("00000002-0000-4000-8000-{n:012}"), "givenName": "Grace"}],
        "gender": "F"
    })
}

/// Carries what `to` lacks from `from` in a bundle; returns (applied, rejected) batch counts.
fn carry(from: &Node, to: &Node, dir: &Path, name: &str) -> (u64, usize) {
    let path = dir.join(name);
    from.export(&path, &to.store.vector().expect("vector"), None, |_, _| {}).expect("export");
    let r = to.import(&path, |_, _| {}).expect("import");
    (r.applied.applied_batches, r.applied.rejected.len())
}

fn child_of(district: &Node) -> Peer {
    Peer {
        node_id: district.id(),
        role: Role::Parent,
        addr: Some("127.0.0.1:9".parse().expect("addr")),
        name: None,
    }
}

#[test]
fn the_district_roster_vouches_for_its_clinics_until_one_is_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut district = Node::init(&dir.join("d"), "district").expect("init");
    let mut a = Node::init(&dir.join("a"), "clinic-a").expect("init");
    let mut b = Node::init(&dir.join("b"), "clinic-b").expect("init");
    for c in [&a, &b] {
        district.config.peers.push(Peer {
            node_id: c.id(),
            role: Role::Child,
            addr: None,
            name: None,
        });
    }
    district.save_config().expect("save");
    district.publish_roster().expect("roster");
    for c in [&mut a, &mut b] {
        c.config.peers.push(child_of(&district));
        c.save_config().expect("save");
        c.publish_roster().expect("roster");
    }
    assert!(!a.trust_set().expect("trust").others.contains(&b.id()), "before the roster arrives");

    b.put(EntityType::Patient, &patient(1)).expect("put");
    carry(&b, &district, dir, "b1");
    let (applied, rejected) = carry(&district, &a, dir, "d1");
    assert_eq!(rejected, 0, "the district's roster comes first and vouches for clinic-b");
    assert!(applied >= 3, "district roster, clinic-b roster and patient: {applied}");
    assert!(
        a.store
            .get(&"patient/00000000-0000-4000-8000-000000000001".parse().expect("id"))
            .expect("get")
            .is_some()
    );

    // The district removes clinic-b and re-signs its roster.
    district.config.peers.retain(|p| p.node_id != b.id());
    district.save_config().expect("save");
    district.publish_roster().expect("roster");
    carry(&district, &a, dir, "d2");
    assert!(!a.trust_set().expect("trust").others.contains(&b.id()), "removed from the roster");

    // clinic-b's new batches are refused by the district and by clinic-a, even hand-carried.
    b.put(EntityType::Patient, &patient(2)).expect("put");
    let (applied, rejected) = carry(&b, &district, dir, "b2");
    assert_eq!((applied, rejected), (0, 1), "clinic-b's new batch is refused");
    let path = dir.join("b-to-a");
    b.export(&path, &a.store.vector().expect("vector"), None, |_, _| {}).expect("export");
    let r = a.import(&path, |_, _| {}).expect("import");
    assert_eq!(r.applied.applied_batches, 0);
    assert!(
        r.applied.rejected.iter().all(|x| x.reason.contains("not trusted")),
        "{:?}",
        r.applied.rejected
    );
    // And the district no longer relays clinic-b's old batches to anyone.
    let fresh = Node::init(&dir.join("e"), "clinic-e").expect("init");
    let relayed = dir.join("d3");
    district.export(&relayed, &Vector::default(), None, |_, _| {}).expect("export");
    let got = sitesync::bundle::scan(&relayed).expect("scan");
    let authors: Vec<_> = sitesync::bundle::frames(&relayed, &got)
        .expect("frames")
        .map(|f| f.expect("frame").0.author().node)
        .collect();
    assert!(!authors.contains(&b.id()), "a removed node's batches are not relayed");
    drop(fresh);
}
