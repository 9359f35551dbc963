//! The deterministic simulator: whole sitesync networks (real nodes, real sessions, real
//! stores) under a seeded, simulated clock and network. See `docs/simulation.md`.
//!
//! `cargo test --release --test sim` runs the smoke: every scenario on fixed seeds, and one
//! seed twice to check that a run is reproducible. Sweeps and replays take options:
//!
//! ```text
//! cargo test --release --test sim -- --scenario long-partitions --seeds 0..1000
//! cargo test --release --test sim -- --scenario long-partitions --seed 17 --children 25 --days 14
//! ```
//!
//! One line per run; a failing run prints its failures, the options it derived and the command
//! that replays it, and the process exits non-zero.

mod adversary;
mod backup;
mod bundles;
mod check;
mod drive;
mod env;
mod net;
mod rng;
mod scenario;
mod workload;
mod world;

use std::time::Instant;

use scenario::{ALL, Options, Scenario};

/// Seeds of the smoke run (two per scenario; one in a debug build, which is about ten times
/// slower).
const SMOKE_SEEDS: &[u64] = if cfg!(debug_assertions) { &[1] } else { &[1, 2] };

#[derive(Default)]
struct Args {
    scenarios: Vec<Scenario>,
    seeds: Option<(u64, u64)>,
    children: Option<usize>,
    days: Option<f64>,
    writes: Option<u32>,
    interval: Option<u64>,
    smoke: bool,
    jobs: usize,
    keep: bool,
    /// A positional filter from `cargo test FILTER` that names nothing here: run nothing.
    filtered_out: bool,
    list: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args { jobs: 1, ..Args::default() };
    let mut it = std::env::args().skip(1);
    let mut explicit = false;
    while let Some(arg) = it.next() {
        let mut value =
            |name: &str| it.next().ok_or_else(|| anyhow::anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--scenario" => {
                let v = value("--scenario")?;
                explicit = true;
                if v == "all" {
                    a.scenarios = ALL.to_vec();
                } else {
                    let s = Scenario::parse(&v).ok_or_else(|| {
                        let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
                        anyhow::anyhow!("unknown scenario {v:?} (known: {})", names.join(", "))
                    })?;
                    a.scenarios.push(s);
                }
            }
            "--seed" => {
                let n: u64 = value("--seed")?.parse()?;
                a.seeds = Some((n, n + 1));
                explicit = true;
            }
            "--seeds" => {
                let v = value("--seeds")?;
                let (lo, hi) = v
                    .split_once("..")
                    .ok_or_else(|| anyhow::anyhow!("--seeds takes A..B, got {v:?}"))?;
                a.seeds = Some((lo.parse()?, hi.parse()?));
                explicit = true;
            }
            "--children" => a.children = Some(value("--children")?.parse()?),
            "--days" => a.days = Some(value("--days")?.parse()?),
            "--writes" => a.writes = Some(value("--writes")?.parse()?),
            "--interval" => a.interval = Some(value("--interval")?.parse()?),
            "--jobs" => a.jobs = value("--jobs")?.parse::<usize>()?.max(1),
            "--smoke" => a.smoke = true,
            "--keep" => a.keep = true,
            "--list" => a.list = true,
            // libtest's flags, passed by `cargo test -- ...`: ignored.
            s if s.starts_with('-') => {}
            // `cargo test FILTER`: this target answers to its own name and scenario names.
            s => {
                if let Some(sc) = Scenario::parse(s) {
                    a.scenarios.push(sc);
                    explicit = true;
                } else if !"sim".contains(s) {
                    a.filtered_out = true;
                }
            }
        }
    }
    if !explicit {
        a.smoke = true;
    }
    if a.scenarios.is_empty() {
        a.scenarios = ALL.to_vec();
    }
    Ok(a)
}

/// The result of one run.
struct RunResult {
    line: String,
    failures: Vec<String>,
    opts: Options,
    trace: String,
    wall_secs: f64,
}

fn options(args: &Args, scenario: Scenario, seed: u64) -> Options {
    let mut o = Options::new(scenario, seed, args.smoke);
    if let Some(c) = args.children {
        o.children = c;
    }
    if let Some(d) = args.days {
        o.days = d;
    }
    if let Some(w) = args.writes {
        o.writes_per_day = w;
    }
    if let Some(i) = args.interval {
        o.sync_interval_secs = i;
    }
    o
}

/// Builds and runs one world, then checks it.
fn run_one(opts: Options, keep: bool) -> RunResult {
    let started = Instant::now();
    let scenario = opts.scenario;
    let seed = opts.seed;
    let mut failures = Vec::new();
    let mut line = String::new();
    let mut trace = String::new();
    match world::World::new(opts.clone()) {
        Err(e) => failures.push(format!("setting up: {e:#}")),
        Ok(mut w) => {
            if let Err(e) = scenario::build(&mut w) {
                w.failures.push(format!("building the scenario: {e:#}"));
            }
            if w.failures.is_empty() {
                w.run();
            }
            if w.failures.is_empty() {
                check::after_run(&mut w);
                scenario::after_run(&mut w);
            } else if w.failures.iter().all(|f| f.contains("liveness:")) {
                // Not converged: the other checks say what is missing or extra, and where.
                check::after_run(&mut w);
            } else {
                check::forgeries(&mut w);
            }
            trace = w.trace_hash();
            line = summary(&w, started.elapsed().as_secs_f64());
            failures = std::mem::take(&mut w.failures);
            if keep {
                w.tmp.disable_cleanup(true);
                eprintln!("kept {}", w.tmp.path().display());
            }
        }
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let status = if failures.is_empty() { "ok  " } else { "FAIL" };
    let line = format!("{status} {:<18} seed={seed:<5} {line}", scenario.name());
    RunResult { line, failures, opts, trace, wall_secs }
}

fn summary(w: &world::World, wall: f64) -> String {
    let s = &w.stats;
    let simulated = w.now as f64 / world::DAY_MS as f64;
    let conv = w.converged_at.map_or("never".to_string(), |t| {
        format!("+{}", world::fmt_ms(t.saturating_sub(w.heal_at)))
    });
    let mut extra = String::new();
    if s.crashes > 0 {
        extra += &format!(
            " crashes={} (mid-batch {}, before merge {})",
            s.crashes, s.mid_batch_crashes, s.crashes_before_merge
        );
    }
    if s.forged + s.tampered + s.corrupted + s.replayed + s.duplicated + s.reordered > 0 {
        extra += &format!(
            " adversary: forged={} tampered={} corrupt={} replay={} dup={} reorder={} rejected={}",
            s.forged,
            s.tampered,
            s.corrupted,
            s.replayed,
            s.duplicated,
            s.reordered,
            s.rejected_batches
        );
    }
    if w.restores > 0 {
        extra += &format!(" restores={} (writes lost with them {})", w.restores, w.lost_to_restore);
    }
    if s.bundles > 0 {
        extra += &format!(" bundles={} damaged={}", s.bundles, s.bundle_faults);
    }
    if s.bodies_resent > 0 {
        extra += &format!(" bodies_resent={} stored={}", s.bodies_resent, s.bodies_stored);
    }
    format!(
        "trace={} sim={simulated:.1}d wall={wall:.1}s ({:.1} d/s) sites={} writes={} edits={} \
         conflicts={} sessions={} (ok {}, lost {}, forbidden {}, protocol {}) dials_failed={} \
         frames={} lost={} MB={:.1} resent_KB={} unapplied_KB={} converged={conv}{extra}",
        w.trace_hash(),
        simulated / wall.max(1e-9),
        w.sites.len(),
        s.writes,
        s.edits,
        s.conflicts,
        s.sessions,
        s.complete / 2,
        s.lost_sessions,
        s.forbidden,
        s.protocol_errors,
        s.dials_failed,
        s.frames,
        s.frames_lost,
        s.bytes as f64 / 1e6,
        s.resent_bytes / 1000,
        s.batch_bytes_sent.saturating_sub(s.batch_bytes_applied) / 1000,
    )
}

fn report(r: &RunResult) -> bool {
    println!("{}", r.line);
    if r.failures.is_empty() {
        return true;
    }
    for f in &r.failures {
        println!("    {f}");
    }
    println!("    options: {:?}", r.opts);
    println!("    replay:  {}", r.opts.command());
    false
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}");
            std::process::exit(2);
        }
    };
    if args.list || args.filtered_out {
        return;
    }
    let started = Instant::now();
    let seeds: Vec<u64> = match args.seeds {
        Some((lo, hi)) => (lo..hi).collect(),
        None => SMOKE_SEEDS.to_vec(),
    };
    let mut plan: Vec<Options> = Vec::new();
    for &s in &args.scenarios {
        for &seed in &seeds {
            plan.push(options(&args, s, seed));
        }
    }
    let results = run_all(plan, args.jobs, args.keep);
    let mut ok = results.iter().filter(|r| r.failures.is_empty()).count();
    let total_runs = results.len();
    if args.smoke && args.seeds.is_none() {
        // The same seed twice must give the same trace: a small network, and one large enough
        // that nodes merge hundreds of documents at once (on several worker threads).
        let checks = [(Scenario::Baseline, 7), (Scenario::LongPartitions, 3)];
        for (scenario, seed) in checks {
            let o = options(&args, scenario, seed);
            let (a, b) = (run_one(o.clone(), false), run_one(o, false));
            let same = a.trace == b.trace && a.failures.is_empty() && b.failures.is_empty();
            println!(
                "{} determinism        {} seed={seed:<5} trace={} then {}",
                if same { "ok  " } else { "FAIL" },
                scenario.name(),
                a.trace,
                b.trace
            );
            if same {
                ok += 1;
            }
        }
        let failed = total_runs + checks.len() - ok;
        finish(started, total_runs + checks.len(), failed, &results);
    } else {
        finish(started, total_runs, total_runs - ok, &results);
    }
}

fn finish(started: Instant, runs: usize, failed: usize, results: &[RunResult]) {
    let wall = started.elapsed().as_secs_f64();
    let per = results.iter().map(|r| r.wall_secs).sum::<f64>() / results.len().max(1) as f64;
    let days: f64 = results.iter().map(|r| r.opts.days).sum();
    let busy: f64 = results.iter().map(|r| r.wall_secs).sum();
    println!(
        "sim: {runs} runs, {failed} failed, {wall:.1}s wall, {per:.2}s per run, \
         {:.1} simulated days per wall second",
        days / busy.max(1e-9)
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Runs the plan on `jobs` threads (each run is independent), printing lines as runs finish.
fn run_all(plan: Vec<Options>, jobs: usize, keep: bool) -> Vec<RunResult> {
    let queue = std::sync::Mutex::new(plan.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let next = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(_) => None,
                    };
                    let Some(o) = next else { break };
                    let r = run_one(o, keep);
                    report(&r);
                    if let Ok(mut all) = results.lock() {
                        all.push(r);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}
