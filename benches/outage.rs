//! Long-outage benchmark: a child that was offline pushes its whole backlog to an empty parent
//! over QUIC on loopback.
//!
//! ```sh
//! node ../shared/tools/workload/gen-workload.js --scenario backlog --patients 10000 --revs 10 \
//!     --seed 42 --out target/backlog-10000x10-s42.jsonl
//! cargo bench --bench outage -- --workload target/backlog-10000x10-s42.jsonl
//! ```
//!
//! The workload (`emr-sync-workload` v1) is loaded into the child as local writes (each create
//! and edit becomes one change of a `generic` record; edits merge `set` into the document as
//! the format says). Then a real `sitesync serve` runs for each side; the child dials the parent
//! at start. Wall time runs from starting the child until the parent's digest equals the
//! child's (every batch durably received and every document merged; the parent's status is
//! read through the running node each time it logs a merge, and every 500 ms). It prints one
//! JSON line: wall seconds, the session's own seconds (durable receipt of everything), the
//! parent's merge seconds, bytes on the wire each way (protocol frames, from the child's session
//! log line), peak RSS of each process, and whether both digests are equal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use sitesync::config::Peer;
use sitesync::id::EntityType;
use sitesync::node::Node;
use sitesync::protocol::message::Role;

mod workload;

/// Records per local write transaction while loading the workload.
const LOAD_RECORDS_PER_PUT: usize = 5_000;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Loads the workload into `child` as local writes; returns (ops, changes written).
fn load(child: &Node, path: &Path) -> Result<(u64, u64)> {
    let mut pending: Vec<Value> = Vec::new();
    let mut changes = 0u64;
    let mut flush = |pending: &mut Vec<Value>| -> Result<()> {
        let out = child.put(EntityType::Generic, &Value::Array(std::mem::take(pending)))?;
        changes += out.iter().filter(|o| o.changed).count() as u64;
        Ok(())
    };
    let ops = workload::replay(path, |_, doc| {
        pending.push(Value::Object(doc.clone()));
        if pending.len() >= LOAD_RECORDS_PER_PUT {
            flush(&mut pending)?;
        }
        Ok(())
    })?;
    if !pending.is_empty() {
        flush(&mut pending)?;
    }
    Ok((ops, changes))
}

fn serve(bin: &str, dir: &Path) -> Result<(Proc, PathBuf)> {
    let log = dir.join("serve.log");
    let err = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .args(["--log", "sitesync=info", "--dir"])
        .arg(dir)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()?;
    Ok((Proc(child), log))
}

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn status(bin: &str, dir: &Path) -> Result<Value> {
    let out = Command::new(bin).arg("--dir").arg(dir).args(["status", "--json"]).output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> Result<()> {
    let Some(workload) = workload::arg("outage") else { return Ok(()) };
    let bin = env!("CARGO_BIN_EXE_sitesync");
    let tmp = tempfile::tempdir()?;
    let (pdir, cdir) = (tmp.path().join("parent"), tmp.path().join("child"));
    let mut parent = Node::init(&pdir, "parent")?;
    let mut child = Node::init(&cdir, "child")?;
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    parent.config.listen = Some(addr);
    parent.config.peers.push(Peer {
        node_id: child.id(),
        role: Role::Child,
        addr: None,
        name: None,
        scope: Default::default(),
    });
    parent.save_config()?;
    child.config.peers.push(Peer {
        node_id: parent.id(),
        role: Role::Parent,
        addr: Some(addr),
        name: None,
        scope: Default::default(),
    });
    child.config.sync_interval_secs = 3_600;
    child.save_config()?;
    let loading = Instant::now();
    let (ops, changes) = load(&child, Path::new(&workload))?;
    let load_s = loading.elapsed().as_secs_f64();
    let batches = child.summary()?.batches;
    drop((parent, child));

    let (p, plog) = serve(bin, &pdir)?;
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (c, clog) = serve(bin, &cdir)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let line = loop {
        let text = std::fs::read_to_string(&clog).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("session ended")) {
            break l.to_string();
        }
        if Instant::now() > deadline {
            bail!("no session ended within 600 s; child log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !line.contains("outcome=complete") {
        bail!("the session did not complete: {line}");
    }
    // The parent merges what it received once the session ends: done when its digest matches.
    // The child's digest is final once its session ended (it publishes its roster at start).
    let child_digest = status(bin, &cdir)?["digest"].clone();
    // Polling `status` spawns a process and reads every document's heads: done every 25 ms it
    // takes CPU from the merge it measures. So the digest is compared when the parent logs a
    // merge, and otherwise every 500 ms.
    let merges = || {
        let text = std::fs::read_to_string(&plog).unwrap_or_default();
        text.lines().filter(|l| l.contains(" merged")).count()
    };
    let (mut seen, mut checked) = (usize::MAX, Instant::now());
    let converged = loop {
        let now_seen = merges();
        if now_seen != seen || checked.elapsed() >= Duration::from_millis(500) {
            let at = started.elapsed().as_secs_f64();
            if status(bin, &pdir)?["digest"] == child_digest {
                break at;
            }
            (seen, checked) = (now_seen, Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the parent did not converge within 600 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let merge_ms: u64 = std::fs::read_to_string(&plog)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" merged"))
        .filter_map(|l| field(l, "millis"))
        .sum();
    let (ps, cs) = (status(bin, &pdir)?, status(bin, &cdir)?);
    let out = json!({
        "bench": "outage",
        "workload": workload,
        "ops": ops,
        "changes": changes,
        "batches": batches,
        "load_seconds": (load_s * 100.0).round() / 100.0,
        "wall_seconds": (converged * 1000.0).round() / 1000.0,
        "session_seconds": field(&line, "ms").map(|ms| ms as f64 / 1000.0),
        "parent_merge_seconds": merge_ms as f64 / 1000.0,
        "bytes_child_to_parent": field(&line, "bytes_out"),
        "bytes_parent_to_child": field(&line, "bytes_in"),
        "peak_rss_kb_child": peak_rss_kb(c.0.id()),
        "peak_rss_kb_parent": peak_rss_kb(p.0.id()),
        "digests_equal": ps["digest"] == cs["digest"],
    });
    println!("{out}");
    Ok(())
}
