//! The apply hot path: verify + store + merge a bundle of 100,000 changes from 10,000
//! patients (one create and nine edits each), imported into an empty node.
//!
//! `cargo bench --bench apply` (throughput is reported in changes/s). Set
//! `SITESYNC_BENCH_PATIENTS` to change the size (default 10,000). Figures: docs/benchmarks.md.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sitesync::id::EntityType;
use sitesync::node::Node;

const EDITS: usize = 9;

fn uuid(tag: u32, n: usize) -> String {
    format!("{tag:08x}-0000-4000-8000-{n:012x}")
}

fn patient(n: usize) -> Value {
    json!({
        "uuid": uuid(1, n),
        "identifiers": [{"uuid": uuid(2, n), "identifier": format!("MRN-{n:07}"),
                         "identifierType": "05a29f94-c0ed-11e2-94be-8c13b969e334", "preferred": true}],
        "names": [{"uuid": uuid(3, n), "givenName": "Amina", "middleName": "N",
                   "familyName": format!("Okello{}", n % 97), "preferred": true}],
        "gender": if n.is_multiple_of(2) { "F" } else { "M" },
        "birthdate": format!("19{:02}-0{}-1{}", 50 + n % 50, 1 + n % 9, n % 10),
        "birthdateEstimated": false,
        "addresses": [{"uuid": uuid(4, n), "address1": "Plot 12", "cityVillage": "Gulu",
                       "countyDistrict": "Gulu", "country": "Uganda", "preferred": true}],
        "voided": false,
    })
}

/// Edit `round` (1..=9) of one patient: 1-3 fields, as a clinic would change them.
fn edit(p: &mut Value, n: usize, round: usize) {
    match round {
        1 => p["birthdate"] = json!(format!("19{:02}-0{}-2{}", 50 + n % 50, 1 + n % 9, n % 9)),
        2 => p["names"][0]["familyName"] = json!(format!("Okello-{n}")),
        3 => p["addresses"][0]["cityVillage"] = json!("Lira"),
        4 => {
            p["attributes"] = json!([{"uuid": uuid(5, n), "attributeType":
                "14d4f066-15f5-102d-96e4-000c29c2a5d7", "value": format!("+256 7{n:08}")}])
        }
        5 => p["birthdateEstimated"] = json!(true),
        6 => {
            p["addresses"][0]["address1"] = json!("Plot 40");
            p["addresses"][0]["postalCode"] = json!("256");
        }
        7 => p["attributes"][0]["value"] = json!(format!("+256 78{n:07}")),
        8 => p["names"][0]["middleName"] = json!("Nakato"),
        _ => p["voidReason"] = json!("duplicate record under review"),
    }
}

/// Writes the source node and exports its whole log; returns (node dir, bundle path).
fn build_source(dir: &Path, patients: usize) -> (Node, std::path::PathBuf) {
    let started = Instant::now();
    let source = Node::init(&dir.join("source"), "source").expect("init source");
    let mut records: Vec<Value> = (0..patients).map(patient).collect();
    source.put(EntityType::Patient, &Value::Array(records.clone())).expect("create");
    for round in 1..=EDITS {
        for (n, p) in records.iter_mut().enumerate() {
            edit(p, n, round);
        }
        source.put(EntityType::Patient, &Value::Array(records.clone())).expect("edit");
    }
    let bundle = dir.join("all.ssb");
    let out = source.export(&bundle, &Default::default(), None, |_, _| {}).expect("export");
    eprintln!(
        "source: {patients} patients, {} changes in {} batches, bundle {} bytes, built in {:.1} s",
        out.changes,
        out.batches,
        out.bytes,
        started.elapsed().as_secs_f64()
    );
    (source, bundle)
}

fn bench_apply(c: &mut Criterion) {
    let patients: usize = std::env::var("SITESYNC_BENCH_PATIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let work = tempfile::tempdir().expect("tempdir");
    let (source, bundle) = build_source(work.path(), patients);
    let changes = (patients * (EDITS + 1)) as u64;

    let mut group = c.benchmark_group("apply");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(changes));
    group.bench_function(format!("import_{changes}_changes_into_empty_node"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let dir = work.path().join(format!("sink-{i}-{}", rand_suffix()));
                let mut sink = Node::init(&dir, "sink").expect("init sink");
                sink.trust_add(source.id(), None).expect("trust");
                let started = Instant::now();
                let report = sink.import(&bundle, |_, _| {}).expect("import");
                total += started.elapsed();
                assert_eq!(report.applied.applied_changes, changes);
                drop(sink);
                let _ = std::fs::remove_dir_all(&dir);
            }
            total
        })
    });
    group.finish();
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
