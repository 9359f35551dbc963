//! Conflicts end to end with the real binary: two children edit the same patient field while
//! apart, their changes meet at the parent (bundles carried both ways), the conflict shows on
//! all three nodes with both values; resolving it at the parent closes it everywhere.

mod net;

use net::*;
use serde_json::Value;

/// Everything `from` holds, carried to `to` as a bundle.
fn carry(from: &Node, to: &Node, dir: &std::path::Path) {
    let bundle = dir.join(format!("{}-to-{}.ssb", from.name, to.name));
    from.ok(&["export", "--out", p(&bundle)]);
    to.ok(&["import", p(&bundle)]);
}

fn conflicts(n: &Node, open_only: bool) -> Vec<Value> {
    let mut args = vec!["conflicts", "--json"];
    if open_only {
        args.push("--open");
    }
    serde_json::from_str::<Value>(&n.ok(&args))
        .expect("JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_conflict_shows_everywhere_and_one_resolution_closes_it_everywhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "district");
    let a = Node::init(tmp.path(), "clinic-a");
    let b = Node::init(tmp.path(), "clinic-b");
    for (x, y) in [(&parent, &a), (&parent, &b), (&a, &b)] {
        x.ok(&["trust", "add", &y.id]);
        y.ok(&["trust", "add", &x.id]);
    }
    // The district registers a patient; both clinics get it.
    let mut patient = patient("p", 3);
    let uuid = patient["uuid"].as_str().expect("uuid").to_string();
    parent.put("patient", &patient);
    carry(&parent, &a, tmp.path());
    carry(&parent, &b, tmp.path());

    // Offline: both clinics correct the birthdate differently; B also records death (another
    // field: merges, no conflict).
    patient["birthdate"] = "1980-02-02".into();
    a.put("patient", &patient);
    let mut at_b = patient.clone();
    at_b["birthdate"] = "1981-03-03".into();
    at_b["dead"] = true.into();
    b.put("patient", &at_b);

    // Through the parent, both ways.
    carry(&a, &parent, tmp.path());
    carry(&b, &parent, tmp.path());
    carry(&parent, &a, tmp.path());
    carry(&parent, &b, tmp.path());

    let mut ids = Vec::new();
    for n in [&parent, &a, &b] {
        let open = conflicts(n, true);
        assert_eq!(open.len(), 1, "{}: one open conflict: {open:#?}", n.name);
        let c = &open[0];
        assert_eq!(c["entity"], format!("patient/{uuid}"));
        assert_eq!(c["path"], "birthdate");
        assert_eq!(c["policy"], "review", "birthdate is a clinical value");
        let mut values: Vec<String> = c["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v["value"].to_string())
            .collect();
        values.sort();
        assert_eq!(values, ["\"1980-02-02\"", "\"1981-03-03\""], "{}: both values", n.name);
        for v in c["values"].as_array().expect("values") {
            assert!(v["author"].is_string() && v["time"].as_i64().unwrap_or(0) > 0, "{v}");
        }
        ids.push(c["id"].as_str().expect("id").to_string());
        // The other field merged.
        let got: Value = serde_json::from_str(&n.ok(&["get", "patient", &uuid])).expect("JSON");
        assert_eq!(got["dead"], true, "{}: B's death record merged", n.name);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "the same conflict id everywhere: {ids:?}");
    let id = &ids[0];
    let audit = parent.ok(&["audit", "list", "--limit", "1000"]);
    assert!(audit.contains(&format!("conflict {id} on patient/{uuid} birthdate")), "{audit}");
    assert!(!audit.contains("1980-02-02"), "no patient data in the audit log");

    // Bad input: refused with the reason, nothing written.
    let before = parent.status()["digest"].clone();
    let r = parent.run(&["resolve", id, "--take", "7"]);
    assert!(r.code == Some(2) && r.stderr.contains("has 2 values"), "{}", r.describe());
    let r = parent.run(&["resolve", id, "--value", "\"not a date\""]);
    assert!(r.code == Some(2) && r.stderr.contains("birthdate"), "{}", r.describe());
    let r = parent.run(&["resolve", id, "--value", "{oops"]);
    assert!(r.code == Some(2) && r.stderr.contains("not JSON"), "{}", r.describe());
    let r = parent.run(&["resolve", "0000000000000000", "--take", "0"]);
    assert!(r.code == Some(2) && r.stderr.contains("no conflict"), "{}", r.describe());
    assert_eq!(parent.status()["digest"], before, "refused resolutions wrote nothing");

    // The district resolves it by taking one value: closed here at once.
    let first = conflicts(&parent, true)[0]["values"][0]["value"].clone();
    parent.ok(&["resolve", id, "--take", "0"]);
    assert!(conflicts(&parent, true).is_empty(), "closed at the parent");
    let closed = conflicts(&parent, false);
    assert!(closed.iter().any(|c| c["id"] == *id && c["status"] == "closed"), "{closed:#?}");

    // The resolution travels like any change and closes it at both clinics.
    carry(&parent, &a, tmp.path());
    carry(&parent, &b, tmp.path());
    for n in [&parent, &a, &b] {
        assert!(conflicts(n, true).is_empty(), "{}: no open conflict", n.name);
        let got: Value = serde_json::from_str(&n.ok(&["get", "patient", &uuid])).expect("JSON");
        assert_eq!(got["birthdate"], first, "{}: the chosen value", n.name);
        let (_, field_conflicts) = {
            let v: Value = serde_json::from_str(&n.ok(&["get", "patient", &uuid, "--conflicts"]))
                .expect("JSON");
            ((), v["conflicts"].clone())
        };
        assert!(
            field_conflicts.as_array().is_none_or(|a| a.is_empty()),
            "{}: the document holds one value again: {field_conflicts}",
            n.name
        );
    }
    let digests: Vec<Value> =
        [&parent, &a, &b].iter().map(|n| n.status()["digest"].clone()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "converged: {digests:?}");
}
