//! Batches that arrive before the batches they follow: they wait (`pending_batches`), show
//! nothing, and apply when the gap fills, in bounded transactions, even when a crash cuts the
//! filling short.

use std::path::PathBuf;

use serde_json::json;

use crate::seeded;
use crate::{Node, Run, command, exported_batches, has_line, p, patient, patients_in, run_with};

#[test]
fn bundles_imported_out_of_order_wait_then_complete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bundles_imported_out_of_order_wait_then_complete");
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    b.trust(&a);
    for k in 0..3 {
        a.put("patient", &json!([patient(&mut rng, k)]));
    }
    // A bundle of batches 2 and 3 only (for a node said to hold batch 1), arriving first.
    let vector = tmp.path().join("claims-1.json");
    let claim = json!({"vector": {a.author(): 1}});
    std::fs::write(&vector, claim.to_string()).expect("write");
    let late = tmp.path().join("late.ssb");
    assert_eq!(exported_batches(&a.export(&late, &["--since", p(&vector)])), 2);
    let r = b.import(&late);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("waiting for earlier batches: 2"), "{}", r.describe());
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(0), Some(2)));
    assert_eq!(patients_in(&s), 0, "nothing shows before the gap fills");

    let all = tmp.path().join("all.ssb");
    a.export(&all, &[]);
    let r = b.import(&all);
    assert!(r.code == Some(0) && has_line(&r.stdout, "applied: 3 batches"), "{}", r.describe());
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(3), Some(0)));
    assert_eq!(s["digest"], a.status()["digest"]);
}

/// Site `a` with six one-patient batches; site `b`, trusting it, holds batches 2–6 waiting for
/// the first; and a bundle of all six, to fill the gap.
struct GapOfFive {
    /// Holds both node directories for the test's length.
    _tmp: tempfile::TempDir,
    a: Node,
    b: Node,
    all: PathBuf,
}

fn gap_of_five(test: &str) -> GapOfFive {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded(test);
    let a = Node::init(tmp.path(), "site-a");
    let b = Node::init(tmp.path(), "site-b");
    b.trust(&a);
    for k in 0..6 {
        a.put("patient", &json!([patient(&mut rng, k)]));
    }
    let vector = tmp.path().join("claims-1.json");
    std::fs::write(&vector, json!({"vector": {a.author(): 1}}).to_string()).expect("write");
    let late = tmp.path().join("late.ssb");
    assert_eq!(exported_batches(&a.export(&late, &["--since", p(&vector)])), 5);
    let r = b.import(&late);
    assert!(r.stdout.contains("waiting for earlier batches: 5"), "{}", r.describe());
    let all = tmp.path().join("all.ssb");
    a.export(&all, &[]);
    GapOfFive { _tmp: tmp, a, b, all }
}

impl GapOfFive {
    /// `import` of the whole bundle into `b`, one change per transaction, with `env` set.
    fn fill(&self, env: &[(&str, &str)]) -> Run {
        let mut c = command(Some(&self.b.dir));
        c.env(sitesync::node::IMPORT_CHUNK_ENV, "1").envs(env.iter().copied());
        c.args(["import", p(&self.all)]);
        run_with(c, None)
    }
}

#[test]
fn a_long_gap_fills_in_bounded_transactions() {
    let gap = gap_of_five("a_long_gap_fills_in_bounded_transactions");
    let (a, b) = (&gap.a, &gap.b);
    // Batch 1 fills the gap; with one change per transaction, each waiting batch is taken out
    // of waiting in a transaction of its own.
    let r = gap.fill(&[]);
    assert!(r.code == Some(0) && has_line(&r.stdout, "applied: 6 batches"), "{}", r.describe());
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(6), Some(0)));
    assert_eq!(s["digest"], a.status()["digest"]);
    let listed = b.ok(&["audit", "list", "--limit", "100"]);
    let applied: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split("received from ").nth(1)?.split(": applied ").nth(1))
        .filter(|rest| !rest.starts_with("0 batches"))
        .collect();
    // Batch 1 with batch 2 in one transaction, then batches 3..6 one per transaction.
    assert_eq!(applied.len(), 5, "one receipt per transaction expected:\n{listed}");
    assert!(applied.iter().filter(|r| r.starts_with("1 batches")).count() >= 4, "{listed}");
}

#[test]
fn a_crash_between_the_transactions_of_a_filled_gap_is_finished_at_open() {
    let gap = gap_of_five("a_crash_between_the_transactions_of_a_filled_gap_is_finished_at_open");
    let (a, b) = (&gap.a, &gap.b);
    // The import dies right after the first transaction that continues the gap's promotion.
    let r = gap.fill(&[(sitesync::FAILPOINT_ENV, "promotion-step")]);
    assert_eq!(r.code, Some(137), "the import must have been cut: {}", r.describe());
    // Opening the node finishes what the crash cut short.
    let s = b.status();
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(6), Some(0)));
    assert_eq!(s["digest"], a.status()["digest"]);
}
