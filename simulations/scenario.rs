//! The named scenarios: each one is a topology, options (sizes, network, adversary rates) and a
//! schedule of faults. `Options` are derived from the scenario, the seed and the command line,
//! and are printed with a failing seed so that it replays exactly.

use sitesync::node::schedule::BACKOFF_MAX_MS;

use crate::world::{DAY_MS, Ev, HOUR_MS, Kind, MINUTE_MS, World};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Baseline,
    LongPartitions,
    SwizzleClog,
    OneWay,
    DupReorderReplay,
    CrashStorm,
    FiveSites,
    UsbBundles,
    HostileRelay,
    Catchment,
    CatchmentTransfer,
    ParentOutage,
}

/// Every scenario the smoke and `--scenario all` run (see `KNOWN_FAILING` for the others).
pub const ALL: [Scenario; 12] = [
    Scenario::Baseline,
    Scenario::LongPartitions,
    Scenario::SwizzleClog,
    Scenario::OneWay,
    Scenario::DupReorderReplay,
    Scenario::CrashStorm,
    Scenario::FiveSites,
    Scenario::UsbBundles,
    Scenario::HostileRelay,
    Scenario::Catchment,
    Scenario::CatchmentTransfer,
    Scenario::ParentOutage,
];

/// Scenarios that fail on a known sitesync bug (see docs/simulation.md): run by name only.
/// None at present (`catchment-transfer` was, until withheld bodies were re-sent).
pub const KNOWN_FAILING: [Scenario; 0] = [];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::LongPartitions => "long-partitions",
            Scenario::SwizzleClog => "swizzle-clog",
            Scenario::OneWay => "one-way",
            Scenario::DupReorderReplay => "dup-reorder-replay",
            Scenario::CrashStorm => "crash-storm",
            Scenario::FiveSites => "five-sites",
            Scenario::UsbBundles => "usb-bundles",
            Scenario::HostileRelay => "hostile-relay",
            Scenario::Catchment => "catchment",
            Scenario::CatchmentTransfer => "catchment-transfer",
            Scenario::ParentOutage => "parent-outage",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        ALL.into_iter().chain(KNOWN_FAILING).find(|x| x.name() == s)
    }
}

/// Everything a run depends on besides the code: printed with a failing seed.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenario: Scenario,
    pub seed: u64,
    pub children: usize,
    /// Length of the faulty phase (writes and faults), in simulated days.
    pub days: f64,
    /// Writes per site per simulated day (each a `put`; a visit writes three or more records).
    pub writes_per_day: u32,
    pub sync_interval_secs: u64,
    /// Probability that a frame is lost (the connection breaks).
    pub loss: f64,
    pub latency_ms: (u64, u64),
    /// Link bandwidth range, bytes per second.
    pub bandwidth: (u64, u64),
    /// Largest clock skew of a site, either way, in seconds.
    pub skew_max_secs: i64,
    pub corrupt: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub replay: f64,
    pub forge: f64,
    /// Patients created at the parent before the faults, edited by every site.
    pub hot: usize,
    /// Probability that a node merges right after a receipt, in the middle of a session (a
    /// background merge), instead of only after the session: changes whose dependencies are
    /// still on the way then wait in their document.
    pub merge_eager: f64,
    /// The parent limits each child to its own clinic's patients (a catchment).
    pub catchment: bool,
    /// Three tiers: a national parent, two districts, the clinics under them.
    pub tiers: bool,
    /// The parent registers patients of one clinic at another (transfers) during the run.
    pub transfers: u32,
}

/// `(children, days, writes per day, sync interval s)`.
type Size = (usize, f64, u32, u64);

/// Sizes for a full run and a smoke run.
fn sizes(s: Scenario) -> (Size, Size) {
    match s {
        Scenario::Baseline => ((8, 2.0, 24, 600), (3, 0.5, 24, 600)),
        Scenario::LongPartitions => ((25, 14.0, 8, 3600), (10, 6.0, 8, 3600)),
        Scenario::SwizzleClog => ((8, 2.0, 24, 600), (4, 1.0, 24, 600)),
        Scenario::OneWay => ((6, 4.0, 24, 600), (3, 2.5, 12, 600)),
        Scenario::DupReorderReplay => ((6, 2.0, 24, 600), (3, 0.5, 24, 600)),
        Scenario::CrashStorm => ((6, 2.0, 24, 300), (3, 0.5, 24, 300)),
        Scenario::FiveSites => ((5, 2.0, 12, 600), (5, 1.5, 6, 600)),
        Scenario::UsbBundles => ((4, 7.0, 24, 600), (3, 3.0, 12, 600)),
        Scenario::HostileRelay => ((4, 2.0, 24, 600), (3, 0.5, 24, 600)),
        Scenario::Catchment | Scenario::CatchmentTransfer => ((5, 3.0, 24, 600), (3, 1.0, 24, 600)),
        Scenario::ParentOutage => ((25, 22.0, 8, 3600), (10, 3.0, 12, 1800)),
    }
}

impl Options {
    pub fn new(scenario: Scenario, seed: u64, smoke: bool) -> Options {
        let (full, small) = sizes(scenario);
        let (children, days, writes_per_day, sync_interval_secs) = if smoke { small } else { full };
        let mut o = Options {
            scenario,
            seed,
            children,
            days,
            writes_per_day,
            sync_interval_secs,
            loss: 0.0,
            latency_ms: (20, 400),
            bandwidth: (16_000, 250_000),
            skew_max_secs: 0,
            corrupt: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            replay: 0.0,
            forge: 0.0,
            hot: 3,
            merge_eager: 0.3,
            catchment: false,
            transfers: 0,
            tiers: false,
        };
        match scenario {
            Scenario::Baseline => o.tiers = true,
            Scenario::LongPartitions => {
                o.loss = 0.01;
                o.skew_max_secs = 2 * 3600;
            }
            Scenario::SwizzleClog => {
                o.loss = 0.002;
                o.tiers = true;
            }
            Scenario::OneWay => o.loss = 0.002,
            Scenario::DupReorderReplay => {
                o.duplicate = 0.03;
                o.reorder = 0.03;
                o.replay = 0.02;
            }
            Scenario::CrashStorm => o.skew_max_secs = 600,
            Scenario::FiveSites => {
                o.skew_max_secs = 3 * 86_400;
                o.hot = 0;
            }
            Scenario::UsbBundles => o.skew_max_secs = 3600,
            Scenario::HostileRelay => {
                o.corrupt = 0.02;
                o.forge = 0.05;
            }
            Scenario::Catchment => o.catchment = true,
            Scenario::CatchmentTransfer => {
                o.catchment = true;
                o.transfers = 4;
            }
            Scenario::ParentOutage => o.catchment = true,
        }
        o
    }

    pub fn active_ms(&self) -> u64 {
        (self.days * DAY_MS as f64) as u64
    }

    pub fn sync_interval_ms(&self) -> u64 {
        self.sync_interval_secs * 1000
    }

    /// How long after the last heal the network must have converged: a sync round per hop to
    /// carry a write up to the top parent and down to every clinic (two hops, four with
    /// districts), one more round and four longest backoffs for sessions broken by loss, and
    /// an hour for transfers on slow links.
    pub fn liveness_bound_ms(&self) -> u64 {
        let hops = if self.tiers { 4 } else { 2 };
        (hops + 1) * self.sync_interval_ms() + 4 * BACKOFF_MAX_MS + HOUR_MS
    }

    /// The command that replays this run.
    pub fn command(&self) -> String {
        format!(
            "cargo test --release --test sim -- --scenario {} --seed {} --children {} --days {} \
             --writes {} --interval {}",
            self.scenario.name(),
            self.seed,
            self.children,
            self.days,
            self.writes_per_day,
            self.sync_interval_secs
        )
    }
}

/// A scenario's own scheduled actions.
#[derive(Debug)]
pub enum Script {
    /// Crash a site with a session running during its next apply (retry later if none runs).
    CrashIntent {
        tries: u32,
    },
    /// Crash a site now and restart it after `down_ms`.
    CrashNow {
        site: usize,
        down_ms: u64,
    },
    /// Crash storm: crash a random site, then schedule the next storm crash.
    Storm,
    /// Cut one direction of a child's link for `hold_ms`, in the middle of its next session.
    OneWayCut {
        child: usize,
        hold_ms: u64,
    },
    /// Edit the focus patient at `site` (a field by path, or the shared one).
    EditFocus {
        site: usize,
        path: Option<String>,
    },
    /// The USB courier's next stop.
    Courier,
    /// Back up a site's store.
    Backup {
        site: usize,
    },
    /// Crash a site and put its last backup back (as a new file, or in place + reincarnate).
    Restore {
        site: usize,
        in_place: bool,
    },
    Install {
        site: usize,
        in_place: bool,
    },
    /// The parent registers a patient of another clinic at `clinic` too.
    Transfer {
        clinic: usize,
    },
    /// The parent's outage starts or ends (what peers exchange meanwhile is counted).
    Outage {
        on: bool,
    },
}

/// Builds the scenario's world: sites, topology, data before the faults, and the fault
/// schedule; then starts the sync loops and the workload.
pub fn build(world: &mut World) -> anyhow::Result<()> {
    let o = world.opts.clone();
    let (parent, children) = topology(world)?;
    configure(world, parent, &children)?;
    world.start()?;
    crate::workload::hot_patients(world, parent, o.hot);
    schedule(world, parent, &children);
    Ok(())
}

/// The sites and who syncs with whom: a parent and children (with tiers, clinics under two
/// districts); some neighbouring clinics as peers; the hostile relay.
fn topology(world: &mut World) -> anyhow::Result<(usize, Vec<usize>)> {
    let o = world.opts.clone();
    let parent = world.add_site("parent", Kind::Parent)?;
    let mut children = Vec::new();
    let mut districts = Vec::new();
    if o.tiers {
        for d in 0..2 {
            let district = world.add_site(&format!("d{d}"), Kind::Child)?;
            world.link_parent(parent, district)?;
            districts.push(district);
            children.push(district);
        }
    }
    for i in 0..o.children {
        let c = world.add_site(&format!("c{i:02}"), Kind::Child)?;
        let up = if districts.is_empty() { parent } else { districts[i % districts.len()] };
        world.link_parent(up, c)?;
        children.push(c);
    }
    world.parent = parent;
    world.children = children.clone();
    if o.scenario == Scenario::HostileRelay {
        let relay = world.add_site("relay", Kind::Relay)?;
        for &c in children.iter().take(2) {
            world.link_peers(relay, c)?;
        }
    }
    if matches!(o.scenario, Scenario::LongPartitions | Scenario::ParentOutage) {
        // Some neighbouring clinics also sync with each other (peers): a second path, and a
        // peer sends its own batches first, so a node may get an edit before what it edits.
        let mut order = children.clone();
        world.rng.shuffle(&mut order);
        for pair in order.chunks(2).take((children.len() / 5).max(1)) {
            if let [a, b] = pair {
                world.link_peers(*a, *b)?;
                world.peer_pairs.push((*a, *b));
            }
        }
    }
    Ok((parent, children))
}

/// Scopes and transport: catchments on the parent's child entries; no network for the USB
/// scenario.
fn configure(world: &mut World, parent: usize, children: &[usize]) -> anyhow::Result<()> {
    if world.opts.catchment {
        // The parent sends each clinic the bodies of its own patients only.
        for &c in children {
            let (cid, loc) = (world.sites[c].id, world.sites[c].location.clone());
            let uid = sitesync::id::parse_uuid(&loc)?;
            if let Some(node) = world.sites[parent].node.as_mut()
                && let Some(p) = node.config.peers.iter_mut().find(|p| p.node_id == cid)
            {
                p.scope.catchment = Some(std::iter::once(uid).collect());
            }
        }
    }
    if world.opts.scenario == Scenario::UsbBundles {
        // No network at all: the courier carries everything.
        for s in &mut world.sites {
            s.dialers.clear();
        }
    }
    Ok(())
}

/// The scenario's faults and scripted actions.
fn schedule(world: &mut World, parent: usize, children: &[usize]) {
    let o = world.opts.clone();
    let active = o.active_ms();
    match o.scenario {
        Scenario::Baseline => {}
        Scenario::LongPartitions => long_partitions(world, children),
        Scenario::SwizzleClog => swizzle(world, children),
        Scenario::OneWay => {
            let hold = (2 * DAY_MS).min(active / 2);
            for &c in children {
                let at = world.rng.range(HOUR_MS, active.saturating_sub(hold).max(HOUR_MS + 1));
                let ev = Ev::Script(Script::OneWayCut { child: c, hold_ms: hold });
                world.at(at, ev);
            }
        }
        Scenario::DupReorderReplay | Scenario::HostileRelay => short_partitions(world, children),
        Scenario::CrashStorm => {
            let first = world.rng.exp(20 * MINUTE_MS);
            world.at(first, Ev::Script(Script::Storm));
            backups(world);
        }
        Scenario::FiveSites => five_sites(world, parent, children),
        Scenario::UsbBundles => {
            let first = world.rng.range(HOUR_MS, 6 * HOUR_MS);
            world.at(first, Ev::Script(Script::Courier));
        }
        Scenario::ParentOutage => {
            // The parent is cut off from every clinic for the whole faulty phase but its first
            // and last hours; the clinics keep writing, and only the peer links carry anything.
            let (start, end) = (HOUR_MS, active.saturating_sub(HOUR_MS));
            for &c in children {
                world.at(start, Ev::Link { a: c, b: parent, up: false, both: true });
                world.at(end, Ev::Link { a: c, b: parent, up: true, both: true });
            }
            world.at(start, Ev::Script(Script::Outage { on: true }));
            world.at(end, Ev::Script(Script::Outage { on: false }));
        }
        Scenario::Catchment | Scenario::CatchmentTransfer => {
            short_partitions(world, children);
            for _ in 0..o.transfers {
                let at = world.rng.range(HOUR_MS, active - HOUR_MS);
                let clinic = children[world.rng.index(children.len())];
                world.at(at, Ev::Script(Script::Transfer { clinic }));
            }
        }
    }
}

/// Children cut off from 1 hour to 10 days (scaled down to the run's length), at least three of
/// them for 7 days or more; crashes in the middle of receiving; a few plain crashes.
fn long_partitions(world: &mut World, children: &[usize]) {
    let active = world.opts.active_ms();
    let max_off = (10 * DAY_MS).min(active * 7 / 10);
    let long_min = (7 * DAY_MS).min(active / 2);
    let long_max = (10 * DAY_MS).min(active * 3 / 4).max(long_min);
    let mut order = children.to_vec();
    world.rng.shuffle(&mut order);
    for (k, &c) in order.iter().enumerate() {
        let mut periods = Vec::new();
        if k < 3 {
            let len = world.rng.range(long_min, long_max);
            let start = world.rng.range(0, active - len);
            periods.push((start, len));
        } else {
            let mut t = world.rng.range(0, 12 * HOUR_MS);
            while t < active {
                let span = (HOUR_MS as f64).ln()
                    + (world.rng.below(1_000_000) as f64 / 1e6)
                        * ((max_off as f64).ln() - (HOUR_MS as f64).ln());
                let len = (span.exp() as u64).min(active - t);
                periods.push((t, len));
                t += len + world.rng.exp(DAY_MS + DAY_MS / 2);
            }
        }
        let links: Vec<usize> =
            world.links.keys().filter(|(a, _)| *a == c).map(|(_, b)| *b).collect();
        for (start, len) in periods {
            world.partition_max.entry(c).and_modify(|m| *m = (*m).max(len)).or_insert(len);
            // Cut off: every link of the child, to its parent and to its neighbours.
            for &b in &links {
                world.at(start, Ev::Link { a: c, b, up: false, both: true });
                world.at(start + len, Ev::Link { a: c, b, up: true, both: true });
            }
        }
    }
    for _ in 0..(children.len() / 3).max(8) {
        let at = world.rng.range(HOUR_MS, active.saturating_sub(HOUR_MS));
        world.at(at, Ev::Script(Script::CrashIntent { tries: 0 }));
    }
    for _ in 0..3 {
        let at = world.rng.range(0, active);
        let site = world.rng.index(world.sites.len());
        let down_ms = world.rng.range(MINUTE_MS, 6 * HOUR_MS);
        world.at(at, Ev::Script(Script::CrashNow { site, down_ms }));
    }
}

/// Cut the children's links one by one, hold, heal them in another random order; twice.
fn swizzle(world: &mut World, children: &[usize]) {
    let active = world.opts.active_ms();
    let mut t = world.rng.range(30 * MINUTE_MS, 3 * HOUR_MS);
    for _ in 0..2 {
        let mut order = children.to_vec();
        world.rng.shuffle(&mut order);
        for &c in &order {
            let up = world.parent_of[&c];
            world.at(t, Ev::Link { a: c, b: up, up: false, both: true });
            t += world.rng.range(MINUTE_MS, 20 * MINUTE_MS);
        }
        t += world.rng.range(HOUR_MS, 6 * HOUR_MS);
        world.rng.shuffle(&mut order);
        for &c in &order {
            let up = world.parent_of[&c];
            world.at(t, Ev::Link { a: c, b: up, up: true, both: true });
            t += world.rng.range(MINUTE_MS, 20 * MINUTE_MS);
        }
        t += world.rng.range(HOUR_MS, 4 * HOUR_MS);
        if t > active {
            break;
        }
    }
}

/// Random cuts of an hour to half a day for every child, both ways.
fn short_partitions(world: &mut World, children: &[usize]) {
    let active = world.opts.active_ms();
    for &c in children {
        let mut t = world.rng.exp(6 * HOUR_MS);
        while t < active {
            let len = world.rng.range(HOUR_MS, 12 * HOUR_MS).min(active - t);
            world.at(t, Ev::Link { a: c, b: world.parent, up: false, both: true });
            world.at(t + len, Ev::Link { a: c, b: world.parent, up: true, both: true });
            t += len + world.rng.exp(12 * HOUR_MS);
        }
    }
}

/// Backups of random sites every few hours; a few of them restored later (some in place).
fn backups(world: &mut World) {
    let active = world.opts.active_ms();
    let mut t = world.rng.range(HOUR_MS, 3 * HOUR_MS);
    let mut restores = 0;
    while t + HOUR_MS < active {
        let site = world.rng.index(world.sites.len());
        world.at(t, Ev::Script(Script::Backup { site }));
        if restores < 3 && world.rng.chance(0.5) {
            let later = t + world.rng.range(10 * MINUTE_MS, 4 * HOUR_MS);
            let in_place = world.rng.chance(0.5);
            world.at(
                later.min(active - 30 * MINUTE_MS),
                Ev::Script(Script::Restore { site, in_place }),
            );
            restores += 1;
        }
        t += world.rng.range(HOUR_MS, 4 * HOUR_MS);
    }
}

/// One patient, five clinics cut off for a day, each editing it: the same field at every site,
/// and a field of its own that some share.
fn five_sites(world: &mut World, parent: usize, children: &[usize]) {
    let Some(id) = crate::workload::new_patient(world, parent) else { return };
    world.focus = Some(id);
    // Only the five clinics edit it (the background workload leaves it alone).
    world.oracle.patients.retain(|p| *p != id);
    let start = 2 * HOUR_MS;
    let len = DAY_MS.min(world.opts.active_ms() - start - HOUR_MS);
    let paths: Vec<String> = world.oracle.records[&id].fields.keys().cloned().collect();
    let shared = paths.iter().find(|p| p.ends_with("middleName")).cloned();
    for (k, &c) in children.iter().enumerate() {
        world.at(start, Ev::Link { a: c, b: parent, up: false, both: true });
        world.at(start + len, Ev::Link { a: c, b: parent, up: true, both: true });
        let own = paths.iter().filter(|p| !p.ends_with("middleName")).nth(k % 3).cloned();
        for n in 0..6 {
            let at = start + MINUTE_MS + world.rng.below(len - 2 * MINUTE_MS);
            // The first edit of every site is of the shared field (so all five stand).
            let path = if n == 0 || world.rng.chance(0.4) { shared.clone() } else { own.clone() };
            let at = if n == 0 { start + MINUTE_MS * (k as u64 + 1) } else { at };
            world.at(at, Ev::Script(Script::EditFocus { site: c, path }));
        }
    }
}

/// Runs a scripted action.
pub fn script(world: &mut World, s: Script) {
    match s {
        Script::CrashIntent { tries } => {
            // A running site, reachable now, that is not armed yet: it crashes in the middle of
            // its next receipt (see `World::applied`).
            let p = world.parent;
            let ready: Vec<usize> = (0..world.sites.len())
                .filter(|&s| world.alive(s) && !world.sites[s].crash_on_apply)
                .filter(|&s| s == p || world.link_up(s, p))
                .collect();
            if ready.is_empty() {
                if tries < 200 && !world.healed {
                    let ev = Ev::Script(Script::CrashIntent { tries: tries + 1 });
                    world.after(5 * MINUTE_MS, ev);
                }
                return;
            }
            let site = ready[world.rng.index(ready.len())];
            world.sites[site].crash_on_apply = true;
        }
        Script::CrashNow { site, down_ms } => {
            if !world.healed && world.alive(site) {
                world.crash(site);
                world.after(down_ms, Ev::Restart { site });
            }
        }
        Script::Storm => {
            if world.healed {
                return;
            }
            let site = world.rng.index(world.sites.len());
            if world.alive(site) {
                if world.rng.chance(0.5) {
                    world.sites[site].crash_on_apply = true;
                } else {
                    world.crash(site);
                    let down = world.rng.range(10_000, 20 * MINUTE_MS);
                    world.after(down, Ev::Restart { site });
                }
            }
            let next = world.rng.exp(20 * MINUTE_MS);
            world.after(next, Ev::Script(Script::Storm));
        }
        Script::OneWayCut { child, hold_ms } => {
            // Armed: the cut falls inside the child's next session (see `World::connected`).
            if !world.healed {
                world.oneway_armed.insert(child, hold_ms);
            }
        }
        Script::EditFocus { site, path } => {
            if let (Some(id), true) = (world.focus, world.alive(site)) {
                crate::workload::edit(world, site, id, path.as_deref());
            }
        }
        Script::Courier => crate::bundles::courier(world),
        Script::Backup { site } => {
            if !world.healed {
                world.backup(site);
            }
        }
        Script::Restore { site, in_place } => world.restore(site, in_place),
        Script::Install { site, in_place } => world.install(site, in_place),
        Script::Transfer { clinic } => {
            if !world.healed {
                crate::workload::transfer(world, clinic);
            }
        }
        Script::Outage { on } => world.outage = on,
    }
}

/// What a scenario does at the heal beyond healing links and restarting sites.
pub fn on_heal(world: &mut World) {
    if world.opts.scenario == Scenario::UsbBundles {
        crate::bundles::final_rounds(world);
    }
}

/// Checks that the scenario did what it claims (and its own expectations).
pub fn after_run(world: &mut World) {
    let o = world.opts.clone();
    let s = world.stats.clone();
    let mut want = |ok: bool, what: String| {
        if !ok {
            world.failures.push(format!("scenario: {what}"));
        }
    };
    match o.scenario {
        Scenario::LongPartitions => {
            want(
                s.mid_batch_crashes >= 5,
                format!("{} mid-batch crashes (< 5)", s.mid_batch_crashes),
            );
            let long_min = (7 * DAY_MS).min(o.active_ms() / 2);
            let long = world.partition_max.values().filter(|&&m| m >= long_min).count();
            want(
                long >= 3,
                format!("{long} children offline >= {} (< 3)", crate::world::fmt_ms(long_min)),
            );
        }
        Scenario::DupReorderReplay => want(
            s.duplicated > 0 && s.reordered > 0 && s.replayed > 0,
            "no dup/reorder/replay".into(),
        ),
        Scenario::HostileRelay => {
            want(s.tampered > 0, "the relay tampered with nothing".into());
            want(s.forbidden > 0, "no session was cut for forged batches".into());
        }
        Scenario::UsbBundles => want(s.bundle_faults > 0, "no bundle was damaged".into()),
        Scenario::FiveSites => five_sites_check(world),
        Scenario::ParentOutage => {
            want(s.forbidden == 0, format!("{} sessions ended Forbidden", s.forbidden));
            let pairs = world.peer_pairs.clone();
            for (a, b) in pairs {
                let both =
                    [(a, b), (b, a)].map(|k| world.peer_bodies.get(&k).copied().unwrap_or(0));
                let names = (world.sites[a].name.clone(), world.sites[b].name.clone());
                want(
                    both.iter().any(|&n| n > 0),
                    format!(
                        "peers {} and {} exchanged no body during the outage",
                        names.0, names.1
                    ),
                );
            }
        }
        _ => {}
    }
}

/// Every node shows the five concurrent values of the shared field of the focus patient.
fn five_sites_check(world: &mut World) {
    let Some(id) = world.focus else { return };
    let path = world.oracle.records[&id].fields.keys().find(|p| p.ends_with("middleName")).cloned();
    let Some(path) = path else { return };
    let standing = world.oracle.standing(&id, &path).len();
    let mut problems = Vec::new();
    if standing != world.opts.children {
        problems.push(format!("{standing} values of {path} stand, expected one per site"));
    }
    for s in &world.sites {
        let Some(node) = s.node.as_ref() else { continue };
        let shown = match node.store.get(&id) {
            Ok(Some((_, c))) => c.iter().find(|c| c.path == path).map_or(1, |c| c.values.len()),
            _ => 0,
        };
        if shown != standing {
            problems.push(format!("{} shows {shown} values of {path}, not {standing}", s.name));
        }
    }
    for p in problems {
        world.failures.push(format!("scenario: {p}"));
    }
}
