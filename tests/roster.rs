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
        scope: Default::default(),
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
            scope: Default::default(),
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
    let relayed = dir.join("d3");
    district.export(&relayed, &Vector::default(), None, |_, _| {}).expect("export");
    let got = sitesync::bundle::scan(&relayed).expect("scan");
    let authors: Vec<_> = sitesync::bundle::frames(&relayed, &got)
        .expect("frames")
        .map(|f| f.expect("frame").0.author().node)
        .collect();
    assert!(!authors.contains(&b.id()), "a removed node's batches are not relayed");
}

/// Makes `child` a child of `parent` (both configs and rosters).
fn link(parent: &mut Node, child: &mut Node) {
    parent.config.peers.push(Peer {
        node_id: child.id(),
        role: Role::Child,
        addr: None,
        name: None,
        scope: Default::default(),
    });
    parent.save_config().expect("save");
    parent.publish_roster().expect("roster");
    child.config.peers.push(child_of(parent));
    child.save_config().expect("save");
    child.publish_roster().expect("roster");
}

#[test]
fn data_crosses_three_tiers_in_one_carry_per_hop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mk = |n: &str| Node::init(&dir.join(n), n).expect("init");
    let (mut national, mut d1, mut d2, mut c1, mut c2) =
        (mk("n"), mk("d1"), mk("d2"), mk("c1"), mk("c2"));
    link(&mut national, &mut d1);
    link(&mut national, &mut d2);
    link(&mut d1, &mut c1);
    link(&mut d2, &mut c2);
    c2.put(EntityType::Patient, &patient(7)).expect("put");
    // Upward: each parent already knows its children; rosters of the districts are carried up
    // with the data.
    for (from, to, name) in [(&c2, &d2, "1"), (&d2, &national, "2")] {
        let (_, rejected) = carry(from, to, dir, name);
        assert_eq!(rejected, 0, "hop {name}");
    }
    // Downward: national -> d1 -> c1, one carry each, no rejection on the way.
    for (from, to, name) in [(&national, &d1, "3"), (&d1, &c1, "4")] {
        let (_, rejected) = carry(from, to, dir, name);
        assert_eq!(rejected, 0, "hop {name}: rosters vouch level by level in one pass");
    }
    assert!(
        c1.store
            .get(&"patient/00000000-0000-4000-8000-000000000007".parse().expect("id"))
            .expect("get")
            .is_some()
    );
}
