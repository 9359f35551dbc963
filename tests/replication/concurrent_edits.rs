//! Edits made apart at two sites: edits of different fields merge, concurrent edits of one
//! field conflict the same way on every node, and items added concurrently to a keyed
//! collection both survive.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{Node, assert_imported, exported_batches, p, patient, seeded, uuid, uuid_of};

fn conflicts_of(node: &Node, uuid: &str) -> (String, Value) {
    let text = node.ok(&["get", "patient", uuid, "--conflicts"]);
    let v: Value = serde_json::from_str(&text).expect("get --conflicts prints JSON");
    (text, v)
}

#[test]
fn concurrent_edits_merge_and_same_field_conflicts_agree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("concurrent_edits_merge_and_same_field_conflicts_agree");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    a.trust(&b);
    b.trust(&a);
    let (author_a, author_b) = (a.author(), b.author());

    let mut rec = patient(&mut rng, 7);
    rec["gender"] = json!("F");
    let id = uuid_of(&rec).to_string();
    a.put("patient", &rec);
    let b0 = tmp.path().join("b0.ssb");
    a.export(&b0, &[]);
    assert_imported(&b.import(&b0), 1, 0);
    assert_eq!(b.get("patient", &id), rec);

    // Apart: A adds an address, B changes the birthdate.
    let mut on_a = a.get("patient", &id);
    let address = json!({"uuid": uuid(&mut rng), "address1": "Plot 12", "cityVillage": "Gulu"});
    on_a["addresses"] = json!([address]);
    a.put("patient", &on_a);
    let mut on_b = b.get("patient", &id);
    on_b["birthdate"] = json!("1977-07-07");
    b.put("patient", &on_b);

    // B -> A with --peer (B learnt A's vector from b0), then A -> B with --peer (A learnt B's
    // from b1).
    let b1 = tmp.path().join("b1.ssb");
    assert_eq!(exported_batches(&b.export(&b1, &["--peer", &a.id])), 1, "only B's edit");
    assert_imported(&a.import(&b1), 1, 0);
    let b2 = tmp.path().join("b2.ssb");
    assert_eq!(exported_batches(&a.export(&b2, &["--peer", &b.id])), 1, "only A's edit");
    assert_imported(&b.import(&b2), 1, 0);

    let (ga, gb) = (a.get_text("patient", &id), b.get_text("patient", &id));
    assert_eq!(ga, gb, "both nodes show the same record");
    let merged: Value = serde_json::from_str(&ga).expect("JSON");
    assert_eq!(merged["birthdate"], json!("1977-07-07"), "B's edit is on both nodes");
    assert_eq!(merged["addresses"], json!([address]), "A's edit is on both nodes");
    assert_eq!(merged["gender"], json!("F"));
    assert_eq!(a.digest(), b.digest());
    for node in [&a, &b] {
        assert_eq!(conflicts_of(node, &id).1["conflicts"], json!([]), "different fields merge");
    }

    // Apart again: both change the gender, differently.
    let mut on_a = a.get("patient", &id);
    on_a["gender"] = json!("M");
    a.put("patient", &on_a);
    let mut on_b = b.get("patient", &id);
    on_b["gender"] = json!("O");
    b.put("patient", &on_b);

    // B -> A with `vector` + `export --since`, A -> B with --peer.
    let va = tmp.path().join("a.vector.json");
    a.ok(&["vector", "--out", p(&va)]);
    let b3 = tmp.path().join("b3.ssb");
    assert_eq!(exported_batches(&b.export(&b3, &["--since", p(&va)])), 1, "only B's edit");
    assert_imported(&a.import(&b3), 1, 0);
    let b4 = tmp.path().join("b4.ssb");
    assert_eq!(exported_batches(&a.export(&b4, &["--peer", &b.id])), 1, "only A's edit");
    assert_imported(&b.import(&b4), 1, 0);

    assert_eq!(a.digest(), b.digest());
    let (ga, gb) = (a.get_text("patient", &id), b.get_text("patient", &id));
    assert_eq!(ga, gb, "both nodes show the same winner");
    let (ca_text, ca) = conflicts_of(&a, &id);
    let (cb_text, _) = conflicts_of(&b, &id);
    assert_eq!(ca_text, cb_text, "both nodes list the same conflicts");
    let conflicts = ca["conflicts"].as_array().expect("conflicts list");
    assert_eq!(conflicts.len(), 1, "only the gender conflicts: {ca_text}");
    let c = &conflicts[0];
    assert_eq!(c["path"], json!("gender"));
    let values = c["values"].as_array().expect("values");
    let shown: BTreeSet<&str> = values.iter().filter_map(|v| v["value"].as_str()).collect();
    assert_eq!(shown, BTreeSet::from(["M", "O"]), "both values are kept: {ca_text}");
    let authors: BTreeSet<&str> = values.iter().filter_map(|v| v["author"].as_str()).collect();
    assert_eq!(authors, BTreeSet::from([author_a.as_str(), author_b.as_str()]));
    let winner = c["winner"].as_u64().expect("winner") as usize;
    assert!(winner < values.len());
    assert_eq!(ca["record"]["gender"], values[winner]["value"], "get shows the listed winner");
    assert_eq!(ca["record"]["birthdate"], json!("1977-07-07"));
    assert_eq!(ca["record"]["addresses"], json!([address]));
}

#[test]
fn concurrent_first_items_of_a_keyed_collection_both_survive() {
    // names, identifiers, addresses and attributes are stored keyed by item uuid "so that items
    // added at two sites both survive a merge" (src/entity/schema.rs).
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("concurrent_first_items_of_a_keyed_collection_both_survive");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    a.trust(&b);
    b.trust(&a);
    let rec = patient(&mut rng, 3);
    let id = uuid_of(&rec).to_string();
    a.put("patient", &rec);
    let b0 = tmp.path().join("b0.ssb");
    a.export(&b0, &[]);
    assert_imported(&b.import(&b0), 1, 0);

    let exchange = |round: &str| {
        let ab = tmp.path().join(format!("{round}-a.ssb"));
        let ba = tmp.path().join(format!("{round}-b.ssb"));
        a.export(&ab, &[]);
        b.export(&ba, &[]);
        let (ra, rb) = (a.import(&ba), b.import(&ab));
        assert!(ra.code == Some(0) && rb.code == Some(0), "{}\n{}", ra.describe(), rb.describe());
        assert_eq!(a.digest(), b.digest());
        let (ga, gb) = (a.get("patient", &id), b.get("patient", &id));
        assert_eq!(ga, gb);
        ga
    };

    // Both sites add a name to the existing collection: both survive.
    let name_a = json!({"uuid": uuid(&mut rng), "givenName": "Akello"});
    let name_b = json!({"uuid": uuid(&mut rng), "givenName": "Bosco"});
    let mut on_a = rec.clone();
    on_a["names"] = json!([name_a]);
    a.put("patient", &on_a);
    let mut on_b = rec.clone();
    on_b["names"] = json!([name_b]);
    b.put("patient", &on_b);
    let merged = exchange("names");
    let names: BTreeSet<&str> = merged["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n["givenName"].as_str())
        .collect();
    assert!(names.contains("Akello") && names.contains("Bosco"), "both names kept: {merged}");

    // Both sites add the patient's first address: both must survive too.
    let addr_a = json!({"uuid": uuid(&mut rng), "cityVillage": "Arua"});
    let addr_b = json!({"uuid": uuid(&mut rng), "cityVillage": "Mbale"});
    let mut on_a = a.get("patient", &id);
    on_a["addresses"] = json!([addr_a]);
    a.put("patient", &on_a);
    let mut on_b = b.get("patient", &id);
    on_b["addresses"] = json!([addr_b]);
    b.put("patient", &on_b);
    let merged = exchange("addresses");
    let cities: BTreeSet<&str> = merged["addresses"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["cityVillage"].as_str()).collect())
        .unwrap_or_default();
    let (_, c) = conflicts_of(&a, &id);
    assert_eq!(
        cities,
        BTreeSet::from(["Arua", "Mbale"]),
        "addresses added concurrently at two sites must both survive the merge; got {} with \
         conflicts {}",
        merged["addresses"],
        c["conflicts"]
    );
}
