//! `kill -9` at random moments of a large import: the store always opens consistent (whole
//! batches with their records) and importing the bundle again completes it.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use rand::Rng;
use serde_json::{Value, json};

use crate::{Node, assert_imported, command, p, patient, patients_in, run_with, seeded, seq_of};

#[test]
fn import_killed_at_random_moments_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("import_killed_at_random_moments_leaves_a_consistent_store");
    let a = Node::init(tmp.path(), "big-site");
    let (puts, per_put) = (20, 1000);
    for k in 0..puts {
        let list: Vec<Value> = (0..per_put).map(|i| patient(&mut rng, k * per_put + i)).collect();
        let r = a.put_run("patient", &Value::Array(list));
        assert_eq!(r.code, Some(0), "{}", r.describe());
    }
    let author = a.author();
    let sa = a.status();
    assert_eq!(sa["batches"], json!(puts));
    assert_eq!(patients_in(&sa), (puts * per_put) as u64);
    let bundle = tmp.path().join("big.ssb");
    a.export(&bundle, &[]);

    // One uninterrupted import, to know its duration and the digest it reaches.
    // One apply transaction per batch, so kills can land between commits and leave a store
    // that holds some of the batches (the real default groups 50,000 changes per transaction).
    let chunked = |dir: &Path| {
        let mut c = command(Some(dir));
        c.env(sitesync::node::IMPORT_CHUNK_ENV, per_put.to_string());
        c.args(["import", p(&bundle)]);
        c
    };
    let reference = Node::init(tmp.path(), "reference");
    reference.trust(&a);
    let started = Instant::now();
    let r = run_with(chunked(&reference.dir), None);
    let full = started.elapsed();
    assert_imported(&r, puts as u64, 0);
    let want = reference.digest();
    assert_eq!(want, sa["digest"].as_str().expect("digest"));
    eprintln!("uninterrupted import: {full:?}");

    let tries = 5;
    let mut killed_midway = 0;
    let mut partially_applied = 0;
    for t in 0..tries {
        let b = Node::init(tmp.path(), &format!("victim-{t}"));
        b.trust(&a);
        // Spread the kills over the first half of the import: receipt (one transaction per
        // batch here) comes first, merging the documents after it.
        let delay = full.mul_f64(0.5 * (t as f64 + rng.random::<f64>()) / tries as f64);
        let mut c = chunked(&b.dir);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        let mut child = c.stderr(Stdio::piped()).spawn().expect("spawn import");
        std::thread::sleep(delay);
        let running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("kill"); // SIGKILL
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "try {t}: {stderr}");
        if running {
            killed_midway += 1;
        }
        let partial = |held: u64| held > 0 && held < puts as u64;

        // The store opens, and what it holds is consistent: whole batches with their records.
        let s = b.status();
        let held = s["batches"].as_u64().expect("batches");
        assert_eq!(seq_of(&s, &author), held, "try {t}: vector matches the batches held");
        assert_eq!(patients_in(&s), held * per_put as u64, "try {t}: records of held batches");
        assert_eq!(s["pending_batches"], json!(0), "try {t}");
        if partial(held) {
            partially_applied += 1;
        }
        eprintln!(
            "try {t}: killed after {delay:?} (still running: {running}), {held} batches held"
        );

        assert_imported(&b.import(&bundle), puts as u64 - held, held);
        assert_eq!(b.digest(), want, "try {t}: the re-import reaches the uninterrupted digest");
    }
    assert!(killed_midway >= 1, "no try killed the import while it was running");
    assert!(partially_applied >= 1, "no kill landed between two committed transactions");
}
