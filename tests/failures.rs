//! Failures as records (issue 5): a failing operation is listed with its reason and attempts,
//! retries by itself with backoff, is marked as needing attention after `[failures]
//! give_up_after` attempts, can be retried by hand (`sitesync retry ID`), and closes on the
//! first success — every step in the audit log.

mod net;

use std::time::Duration;

use net::*;
use serde_json::Value;

fn failures(n: &Node) -> Vec<Value> {
    let out = n.ok(&["failures", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("failures --json: {e}: {out}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn give_up_after(n: &Node, attempts: u32) {
    let path = n.dir.join("sitesync.toml");
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(&format!("\n[failures]\ngive_up_after = {attempts}\n"));
    std::fs::write(&path, text).expect("write config");
}

#[test]
fn an_unreachable_parent_is_a_failure_that_retries_needs_attention_and_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "district");
    let child = Node::init(tmp.path(), "clinic");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    parent.network(Some(&addr), 1);
    parent.peer_add(&child, "child", None);
    child.peer_add(&parent, "parent", Some(&addr));
    child.network(None, 1);
    give_up_after(&child, 2);
    child.put("patient", &Value::Array(patients("F", 3)));

    let serve = child.serve();
    // Nothing listens yet: the dials time out, and the loop retries with backoff.
    let standing = wait_for(Duration::from_secs(90), || {
        failures(&child).into_iter().find(|f| f["attempts"].as_u64().is_some_and(|a| a >= 2))
    })
    .expect("the failing sync is listed after two attempts");
    let id = standing["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("sync-"), "{standing}");
    assert_eq!(standing["peer"], Value::String(parent.id.clone()));
    assert!(standing["reason"].as_str().is_some_and(|r| r.contains("timed out")), "{standing}");
    assert_eq!(standing["needs_attention"], Value::Bool(true), "two attempts reach the threshold");
    assert!(standing["next_retry"].as_i64().is_some(), "an automatic retry is scheduled");
    let listed = child.ok(&["failures"]);
    assert!(listed.contains(&id) && listed.contains("NEEDS ATTENTION"), "{listed}");

    // A retry by hand while the parent is still away fails, says why, and is counted.
    let r = child.run(&["retry", &id]);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("the retry failed too") && r.stderr.contains("timed out"),
        "{}",
        r.describe()
    );
    let again = failures(&child);
    assert_eq!(again[0]["manual_retries"], Value::from(1), "{again:?}");
    // An unknown id is named.
    let r = child.run(&["retry", "sync-0000"]);
    assert_eq!(r.code, Some(2), "bad input: {}", r.describe());
    assert!(r.stderr.contains("no failure \"sync-0000\""), "{}", r.describe());

    // The parent comes up: a retry by hand works and closes the failure.
    let _parent_serve = parent.serve();
    let r = child.run(&["retry", &id]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("the failure is closed"), "{}", r.describe());
    assert!(failures(&child).is_empty(), "closed");
    assert_eq!(
        child.digest(),
        wait_for(Duration::from_secs(30), || Some(parent.digest())).expect("digest"),
        "the retried sync moved the records"
    );

    let audit = child.ok(&["audit", "list", "--limit", "200"]);
    for expected in [
        format!("failure {id} (sync with"),
        "failed: attempt 1".to_string(),
        "needs attention: attempt 2".to_string(),
        "retried by hand".to_string(),
        "recovered after".to_string(),
    ] {
        assert!(audit.contains(&expected), "audit lacks {expected:?}:\n{audit}");
    }
    assert!(
        child.ok(&["audit", "verify"]).contains("audit log intact"),
        "the chain holds with the failure entries"
    );
    serve.stop();
}

#[test]
fn a_refused_batch_stands_as_a_failure_until_it_is_held() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stranger = Node::init(tmp.path(), "stranger");
    let clinic = Node::init(tmp.path(), "clinic");
    stranger.put("patient", &Value::Array(patients("S", 2)));
    let bundle = tmp.path().join("stranger.ssb");
    stranger.ok(&["export", "--out", p(&bundle)]);

    // The clinic does not trust the stranger: its batch is refused and kept as a failure.
    let r = clinic.run(&["import", p(&bundle)]);
    assert!(r.stdout.contains("rejected") || r.stderr.contains("rejected"), "{}", r.describe());
    let list = failures(&clinic);
    assert_eq!(list.len(), 1, "{list:?}");
    let f = &list[0];
    assert!(f["id"].as_str().is_some_and(|i| i.starts_with("batch-")), "{f}");
    let from = format!("#1 from {}", &stranger.id[..16]);
    assert!(f["what"].as_str().is_some_and(|w| w.contains(&from)), "{f}");
    assert!(f["reason"].as_str().is_some_and(|r| r.contains("trust")), "{f}");
    let id = f["id"].as_str().expect("id").to_string();
    // The same batch refused again is the same failure, one more attempt.
    clinic.run(&["import", p(&bundle)]);
    let list = failures(&clinic);
    assert_eq!((list.len(), list[0]["attempts"].as_u64()), (1, Some(2)), "{list:?}");

    // Once trusted and imported again, the batch is held and the failure closes.
    clinic.ok(&["trust", "add", &stranger.id, "--name", "stranger"]);
    clinic.ok(&["import", p(&bundle)]);
    assert!(failures(&clinic).is_empty(), "closed once held");
    let audit = clinic.ok(&["audit", "list", "--limit", "100"]);
    assert!(audit.contains(&format!("failure {id}")) && audit.contains("recovered"), "{audit}");
}
