//! Where a receiver's merge time goes, per document, and what a saved-document transfer would
//! cost instead: one thread, no I/O, the same Automerge calls as `store::merge`.
//!
//! ```sh
//! node ../shared/tools/workload/gen-workload.js --scenario backlog --patients 10000 --revs 10 \
//!     --seed 42 --out target/backlog-10000x10-s42.jsonl
//! cargo bench --bench merge_cost -- --workload target/backlog-10000x10-s42.jsonl
//! ```
//!
//! Each workload record becomes a `generic` document written change by change through
//! `EntityDoc::write` (the same replay of the workload as `outage` loads into the child). Then, for every document:
//! the merge a receiver runs today (decode each change, apply to an empty document, `save`,
//! and the reload check: `load` the saved bytes and compare heads), timed per step; and the
//! alternative of receiving the saved document (`load` it, rebuild its changes to check their
//! hashes). Sizes: the change bodies, the saved documents (DEFLATE columns, as stored) and the
//! uncompressed saved documents, each through one zstd level-7 stream as a session sends them.
//! It prints one JSON line. Figures: docs/benchmarks.md.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::{Automerge, Change};
use serde_json::json;
use sitesync::entity::doc::EntityDoc;
use sitesync::id::{AuthorId, Incarnation, NodeId};

mod workload;

struct Record {
    changes: Vec<Vec<u8>>,
    saved: Vec<u8>,
    saved_uncompressed: Vec<u8>,
}

fn records(path: &Path) -> Result<Vec<Record>> {
    let author = AuthorId { node: NodeId([7; 32]), incarnation: Incarnation(1) };
    let mut docs: HashMap<String, (EntityDoc, Vec<Vec<u8>>)> = HashMap::new();
    let mut order = Vec::new();
    let mut time = 0;
    workload::replay(path, |id, body| {
        let (doc, changes) = docs.entry(id.to_string()).or_insert_with(|| {
            order.push(id.to_string());
            (EntityDoc::new(), Vec::new())
        });
        time += 1;
        if let Some(change) = doc.write(&author, body, &[], time)? {
            changes.push(change.raw_bytes().to_vec());
        }
        Ok(())
    })?;
    order
        .iter()
        .map(|id| {
            let (doc, changes) = docs.remove(id).context("replayed record")?;
            let am = Automerge::load(&doc.save())?;
            Ok(Record { changes, saved: am.save(), saved_uncompressed: am.save_nocompress() })
        })
        .collect()
}

fn zstd_stream<'a>(parts: impl Iterator<Item = &'a Vec<u8>>) -> Result<(usize, usize)> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 7)?;
    let mut raw = 0;
    for p in parts {
        raw += p.len();
        enc.write_all(p)?;
    }
    Ok((raw, enc.finish()?.len()))
}

fn main() -> Result<()> {
    let Some(workload) = workload::arg("merge_cost") else { return Ok(()) };
    // Built on a thread of its own: the writing leaves its allocations in that thread's malloc
    // arena, not in the one the measurements below allocate from (they moved by a third with
    // how the setup happened to allocate).
    let recs = std::thread::spawn(move || records(Path::new(&workload)))
        .join()
        .map_err(|_| anyhow::anyhow!("building the records panicked"))??;
    let changes: usize = recs.iter().map(|r| r.changes.len()).sum();

    let mut step = [Duration::ZERO; 4];
    for r in &recs {
        let t = Instant::now();
        let decoded: Vec<Change> =
            r.changes.iter().map(|b| Change::from_bytes(b.clone())).collect::<Result<_, _>>()?;
        step[0] += t.elapsed();
        let t = Instant::now();
        let mut doc = Automerge::new();
        doc.apply_changes(decoded)?;
        step[1] += t.elapsed();
        let t = Instant::now();
        let saved = doc.save();
        step[2] += t.elapsed();
        let t = Instant::now();
        if Automerge::load(&saved)?.get_heads() != doc.get_heads() {
            bail!("a merged document did not load back");
        }
        step[3] += t.elapsed();
    }
    let t = Instant::now();
    for r in &recs {
        let doc = Automerge::load(&r.saved)?;
        let rebuilt = doc.get_changes(&[]);
        if rebuilt.len() != r.changes.len()
            || rebuilt.iter().zip(&r.changes).any(|(c, b)| c.raw_bytes() != b.as_slice())
        {
            bail!("a saved document rebuilt other changes");
        }
    }
    let load_saved = t.elapsed();

    let (bodies, bodies_z) = zstd_stream(recs.iter().flat_map(|r| r.changes.iter()))?;
    let (saved, saved_z) = zstd_stream(recs.iter().map(|r| &r.saved))?;
    let (plain, plain_z) = zstd_stream(recs.iter().map(|r| &r.saved_uncompressed))?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / recs.len() as f64;
    let merge: Duration = step.iter().sum();
    println!(
        "{}",
        json!({
            "documents": recs.len(),
            "changes": changes,
            "merge_seconds": merge.as_secs_f64(),
            "per_document_ms": {
                "decode": ms(step[0]), "apply": ms(step[1]), "save": ms(step[2]),
                "reload_check": ms(step[3]), "merge": ms(merge),
                "load_saved_and_rebuild_changes": ms(load_saved),
            },
            "bytes": {
                "change_bodies": bodies, "change_bodies_zstd7": bodies_z,
                "saved": saved, "saved_zstd7": saved_z,
                "saved_uncompressed": plain, "saved_uncompressed_zstd7": plain_z,
            },
        })
    );
    Ok(())
}
