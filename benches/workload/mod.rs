//! Reading an `emr-sync-workload` v1 file (`../shared/tools/workload/gen-workload.js`), shared
//! by the benches that take `--workload FILE`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// The `--workload FILE` argument; without one, says how to pass it and returns `None`
/// (`cargo bench` runs every bench, and one without a workload has nothing to do).
pub fn arg(bench: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let file = args.iter().position(|a| a == "--workload").and_then(|i| args.get(i + 1)).cloned();
    if file.is_none() {
        eprintln!("{bench}: pass --workload FILE (see the header of benches/{bench}.rs)");
    }
    file
}

/// The record uuid of workload id `patient-0000042`.
fn uid(id: &str) -> Result<String> {
    let n: u64 =
        id.rsplit('-').next().context("workload id")?.parse().context("workload id number")?;
    Ok(format!("00000000-0000-4000-8000-{n:012}"))
}

/// Replays the workload's creates and edits in order: `each(id, body)` gets the record's whole
/// body after the op (a create's `doc` with its `uuid`; an edit's `set` merged into the body,
/// as the format says). Returns the number of ops.
pub fn replay(
    path: &Path,
    mut each: impl FnMut(&str, &Map<String, Value>) -> Result<()>,
) -> Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut docs: HashMap<String, Map<String, Value>> = HashMap::new();
    let mut ops = 0;
    for line in BufReader::new(file).lines() {
        let op: Value = serde_json::from_str(&line?).context("workload line")?;
        let id = op["id"].as_str().unwrap_or_default().to_string();
        let doc = match op["t"].as_str() {
            Some("create") => {
                let mut doc = op["doc"].as_object().cloned().context("create without doc")?;
                doc.insert("uuid".into(), Value::from(uid(&id)?));
                docs.entry(id.clone()).insert_entry(doc).into_mut()
            }
            Some("edit") => {
                let doc = docs.get_mut(&id).context("edit before create")?;
                for (k, v) in op["set"].as_object().context("edit without set")? {
                    doc.insert(k.clone(), v.clone());
                }
                doc
            }
            _ => continue,
        };
        ops += 1;
        each(&id, doc)?;
    }
    Ok(ops)
}
