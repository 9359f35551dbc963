//! Records carried between nodes in bundle files: a large bundle of creates and edits, a bundle
//! imported twice, and bundles whose authors the receiver does not trust.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::{Node, assert_imported, exported_batches, has_line, p, patient, patients_in, seeded};
use crate::{uuid, uuid_of};

#[test]
fn bundle_replicates_1000_patients_and_100_edits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bundle_replicates_1000_patients_and_100_edits");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    a.trust(&b);
    b.trust(&a);

    let mut patients: Vec<Value> = (0..1000).map(|n| patient(&mut rng, n)).collect();
    // One put of the whole list, from a file.
    let file = tmp.path().join("patients.json");
    std::fs::write(&file, serde_json::to_vec(&patients).expect("encode")).expect("write");
    let out = a.ok(&["put", "patient", p(&file)]);
    let expected: Vec<String> =
        patients.iter().map(|r| format!("patient/{}", uuid_of(r))).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "put prints TYPE/UUID per record");

    // 100 edits in 4 puts: 50 new birthdates, 50 added addresses.
    let mut order: Vec<usize> = (0..patients.len()).collect();
    order.shuffle(&mut rng);
    let edited: Vec<usize> = order[..100].to_vec();
    for (k, chunk) in edited.chunks(25).enumerate() {
        let mut list = Vec::new();
        for &i in chunk {
            let rec = &mut patients[i];
            if k < 2 {
                rec["birthdate"] = json!(format!("{}-06-{:02}", 2020 + i % 5, 1 + i % 28));
            } else {
                rec["addresses"] = json!([{
                    "uuid": uuid(&mut rng),
                    "address1": format!("Plot {i}"),
                    "cityVillage": "Kisumu",
                    "country": "Kenya",
                }]);
            }
            list.push(rec.clone());
        }
        a.put("patient", &Value::Array(list));
    }
    let sa = a.status();
    assert_eq!(patients_in(&sa), 1000);
    assert_eq!(sa["batches"], json!(5), "one batch per put");

    let bundle = tmp.path().join("a-to-b.ssb");
    let out = a.export(&bundle, &[]);
    assert!(out.starts_with("exported 5 batches (1100 changes, "), "{out}");
    let r = b.import(&bundle);
    assert_imported(&r, 5, 0);
    assert!(r.stdout.contains("applied: 5 batches (1100 changes)"), "{}", r.stdout);

    let sb = b.status();
    assert_eq!(sb["digest"], sa["digest"], "A and B hold the same state");
    assert_eq!(sb["vector"], sa["vector"]);
    assert_eq!(sb["entities"], sa["entities"]);
    assert_eq!(sb["batches"], sa["batches"]);
    assert_eq!(sb["pending_batches"], json!(0));

    let (la, lb) = (a.list("patient"), b.list("patient"));
    assert_eq!(la, lb, "both nodes list the same records");
    let want: BTreeSet<String> = expected.iter().cloned().collect();
    assert_eq!(la.iter().cloned().collect::<BTreeSet<_>>(), want);

    // Every record, on both nodes at once (one process per `get`: a few seconds in release).
    let sample: Vec<usize> = (0..patients.len()).collect();
    let uuids: Vec<&str> = sample.iter().map(|&i| uuid_of(&patients[i])).collect();
    let (got_a, got_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| uuids.iter().map(|u| a.get_text("patient", u)).collect::<Vec<_>>());
        let tb = s.spawn(|| uuids.iter().map(|u| b.get_text("patient", u)).collect::<Vec<_>>());
        (ta.join().expect("thread A"), tb.join().expect("thread B"))
    });
    for (k, &i) in sample.iter().enumerate() {
        assert_eq!(got_a[k], got_b[k], "get {} differs between A and B", uuids[k]);
        let got: Value = serde_json::from_str(&got_a[k]).expect("JSON");
        assert_eq!(got, patients[i], "get {} returns what was last put", uuids[k]);
    }
}

#[test]
fn importing_the_same_bundle_twice_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("importing_the_same_bundle_twice_changes_nothing");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    b.trust(&a);
    for k in 0..3 {
        let list: Vec<Value> = (0..4).map(|i| patient(&mut rng, k * 10 + i)).collect();
        a.put("patient", &Value::Array(list));
    }
    let bundle = tmp.path().join("a.ssb");
    assert_eq!(exported_batches(&a.export(&bundle, &[])), 3);

    assert_imported(&b.import(&bundle), 3, 0);
    let first = b.status();
    assert_eq!(first["digest"], a.status()["digest"]);

    let r = b.import(&bundle);
    assert_imported(&r, 0, 3);
    assert!(r.stdout.contains("already present: 3 batches"), "{}", r.stdout);
    assert!(r.stdout.contains("nothing new"), "{}", r.stdout);
    let second = b.status();
    assert_eq!(second["digest"], first["digest"], "a second import changes nothing");
    assert_eq!(second["batches"], first["batches"]);
    assert_eq!(second["vector"], first["vector"]);
    assert_eq!(second["entities"], first["entities"]);
}

#[test]
fn bundles_from_untrusted_authors_are_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bundles_from_untrusted_authors_are_rejected");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    let c = Node::init(tmp.path(), "site-c");
    for k in 0..2 {
        a.put("patient", &json!([patient(&mut rng, 2 * k), patient(&mut rng, 2 * k + 1)]));
    }
    let bundle = tmp.path().join("a.ssb");
    a.export(&bundle, &[]);
    let before = b.digest();

    let r = b.import(&bundle);
    assert_eq!(r.code, Some(1), "rejections exit 1: {}", r.describe());
    assert!(!r.panicked());
    assert!(has_line(&r.stdout, "applied: 0 batches"), "{}", r.describe());
    assert!(has_line(&r.stdout, "rejected: 2 batches"), "{}", r.describe());
    let rejections: Vec<&str> = r.stdout.lines().filter(|l| l.contains("not trusted")).collect();
    assert_eq!(rejections.len(), 2, "each batch is listed as not trusted: {}", r.stdout);
    assert!(rejections.iter().all(|l| l.contains(&a.id)), "names the author: {}", r.stdout);
    let s = b.status();
    assert_eq!(s["digest"], json!(before), "nothing applied");
    assert_eq!(s["batches"], json!(0));

    // Trusting A makes the same bundle apply.
    b.trust(&a);
    assert_imported(&b.import(&bundle), 2, 0);
    assert_eq!(b.digest(), a.digest());

    // B relays A's batches along with its own; C trusts only B: B's apply, A's are rejected.
    let own = patient(&mut rng, 99);
    b.put("patient", &own);
    let relay = tmp.path().join("b.ssb");
    assert_eq!(exported_batches(&b.export(&relay, &[])), 3);
    c.trust(&b);
    let r = c.import(&relay);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(has_line(&r.stdout, "applied: 1 batches"), "{}", r.describe());
    assert!(has_line(&r.stdout, "rejected: 2 batches"), "{}", r.describe());
    assert_eq!(r.stdout.lines().filter(|l| l.contains("not trusted")).count(), 2, "{}", r.stdout);
    assert_eq!(c.list("patient"), vec![format!("patient/{}", uuid_of(&own))]);
}
