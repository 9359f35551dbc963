//! The simulated world: sites (real `Node`s in a temporary directory), the event queue, the
//! simulated clock, the running trace hash, counters, and the main loop. Everything that
//! happens is an event taken from the queue in (time, insertion) order; nothing reads the wall
//! clock or the OS RNG, so one seed replays the same run.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use sitesync::config::Peer;
use sitesync::id::{NodeId, Vector};
use sitesync::node::Node;
use sitesync::protocol::message::Role;

use crate::env::{Clock, SimEnv};
use crate::net::{Conn, Transit};
use crate::rng::Rng;
use crate::scenario::{Options, Script};
use crate::workload::Oracle;

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Everything that can happen, at a simulated time.
#[derive(Debug)]
pub enum Ev {
    /// A site's EMR writes something (then schedules its next write).
    Write(usize),
    /// A site's sync loop dials a peer.
    Dial {
        site: usize,
        peer: usize,
    },
    /// The handshake of a dial finished: both ends start a session.
    Connected {
        site: usize,
        peer: usize,
    },
    /// A dial timed out.
    DialFailed {
        site: usize,
        peer: usize,
    },
    /// Something reaches end `to` of a connection.
    Arrive {
        conn: u64,
        to: usize,
        item: Transit,
    },
    /// Store work end `end` asked for is due (a fetch, a receipt, a merge).
    Job {
        conn: u64,
        end: usize,
        job: u64,
    },
    /// A frame of end `end` left the sender.
    Written {
        conn: u64,
        end: usize,
        bytes: u64,
    },
    /// A session timer of end `end`.
    Timer {
        conn: u64,
        end: usize,
    },
    /// A merge outside any session (a local write or a scope check merges too).
    Merge {
        site: usize,
        life: u32,
    },
    Restart {
        site: usize,
    },
    /// Link state: `a -> b` (and `b -> a` when `both`) goes down or up.
    Link {
        a: usize,
        b: usize,
        up: bool,
        both: bool,
    },
    /// A scenario's own action.
    Script(Script),
    /// The end of the faulty phase: every link up, every site running, writes stop.
    Heal,
    /// Is the network converged yet?
    Check,
}

/// What a site is in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Parent,
    Child,
    /// A configured peer that tampers with what it relays (the hostile relay).
    Relay,
}

/// A dialled peer's sync loop state.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    pub peer: usize,
    pub busy: bool,
    pub schedule: sitesync::node::schedule::DialSchedule,
    /// The time the next `Dial` of this loop is due (later ones are ignored).
    pub due: u64,
}

pub struct Site {
    pub name: String,
    pub dir: PathBuf,
    pub kind: Kind,
    pub id: NodeId,
    pub node: Option<Node>,
    pub env: Arc<SimEnv>,
    /// Increases at every crash: events of an earlier life are ignored.
    pub life: u32,
    /// A location uuid of this clinic.
    pub location: String,
    pub dialers: Vec<Dialer>,
    /// The vector last seen (invariant: never goes backwards, also across a crash).
    pub last_vector: Vector,
    /// Crash while the next received batches are applied (a mid-batch crash).
    pub crash_on_apply: bool,
    pub writes_on: bool,
    pub offline_ms: u64,
    /// Reopened from a restored backup: the vector may go back once.
    pub restored: bool,
    /// How many backups were restored at this site (acks sent before one are not checked).
    pub restore_count: u32,
}

/// Counters printed after a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub writes: u64,
    pub edits: u64,
    pub sessions: u64,
    pub complete: u64,
    pub forbidden: u64,
    pub protocol_errors: u64,
    pub lost_sessions: u64,
    pub dials_failed: u64,
    pub frames: u64,
    pub bytes: u64,
    pub frames_lost: u64,
    pub batches_applied: u64,
    pub batches_present: u64,
    /// Bytes of batches sent to a node that already held them (resent after a cut).
    pub resent_bytes: u64,
    /// Bytes of `Batches` frames sent, and of those the receiver applied: the difference was
    /// lost on the way (cut, crash, break) and is sent again later.
    pub batch_bytes_sent: u64,
    pub batch_bytes_applied: u64,
    pub crashes: u64,
    pub mid_batch_crashes: u64,
    pub crashes_before_merge: u64,
    pub forged: u64,
    pub corrupted: u64,
    pub replayed: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub tampered: u64,
    pub rejected_batches: u64,
    pub bundles: u64,
    pub bundle_faults: u64,
    pub events: u64,
    pub conflicts: u64,
    /// Withheld bodies a parent re-sent, and those a child stored.
    pub bodies_resent: u64,
    pub bodies_stored: u64,
}

pub struct World {
    pub opts: Options,
    pub rng: Rng,
    pub now: u64,
    pub clock: Clock,
    queue: BTreeMap<(u64, u64), Ev>,
    next_seq: u64,
    pub sites: Vec<Site>,
    /// Directed links that are down, with how many cuts hold each (overlapping partitions of
    /// two peers both cut their shared link; it comes back when both are over).
    pub down: BTreeMap<(usize, usize), u32>,
    /// Per directed link: latency (ms) and bandwidth (bytes/s).
    pub links: BTreeMap<(usize, usize), (u64, u64)>,
    pub conns: BTreeMap<u64, Conn>,
    pub next_conn: u64,
    trace: blake3::Hasher,
    pub stats: Stats,
    pub oracle: Oracle,
    pub failures: Vec<String>,
    pub heal_at: u64,
    pub healed: bool,
    pub converged_at: Option<u64>,
    /// Frames seen on the wire, for the replay adversary (bounded).
    pub captured: VecDeque<Vec<u8>>,
    pub tmp: tempfile::TempDir,
    pub offline_since: BTreeMap<usize, u64>,
    /// The top parent, and every other site (districts and clinics).
    pub parent: usize,
    pub children: Vec<usize>,
    /// Each child's parent.
    pub parent_of: BTreeMap<usize, usize>,
    /// The patient a scenario watches (five sites editing one patient).
    pub focus: Option<sitesync::id::EntityId>,
    /// Longest partition scheduled per site.
    pub partition_max: BTreeMap<usize, u64>,
    /// Bundles the courier carries.
    pub bag: Vec<crate::bundles::Carried>,
    pub bundle_seq: u64,
    /// One-way cuts waiting for the child's next session: child -> how long to hold.
    pub oneway_armed: BTreeMap<usize, u64>,
    /// The latest backup per site: the copied store file and the vector it holds.
    pub backups: BTreeMap<usize, (PathBuf, Vector, sitesync::id::AuthorId)>,
    pub restores: u64,
    pub lost_to_restore: u64,
    /// Pairs of clinics linked as peers.
    pub peer_pairs: Vec<(usize, usize)>,
    /// The parent is cut off (parent-outage): bodies applied over peer links are counted.
    pub outage: bool,
    /// `(receiver, sender)` -> bodies the receiver applied from that peer during the outage.
    pub peer_bodies: BTreeMap<(usize, usize), u64>,
}

/// Where node directories go: `SITESYNC_SIM_DIR`, else `/dev/shm` (fsync is free there),
/// else the system temporary directory.
fn scratch() -> anyhow::Result<tempfile::TempDir> {
    let base = std::env::var_os("SITESYNC_SIM_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    Ok(tempfile::Builder::new().prefix("sitesync-sim-").tempdir_in(base)?)
}

impl World {
    pub fn new(opts: Options) -> anyhow::Result<World> {
        let mut rng = Rng::new(opts.seed);
        let clock = Clock::default();
        let tmp = scratch()?;
        let mut world = World {
            rng: rng.fork(1),
            opts,
            now: 0,
            clock,
            queue: BTreeMap::new(),
            next_seq: 0,
            sites: Vec::new(),
            down: Default::default(),
            links: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            trace: blake3::Hasher::new(),
            stats: Stats::default(),
            oracle: Oracle::default(),
            failures: Vec::new(),
            heal_at: 0,
            healed: false,
            converged_at: None,
            captured: VecDeque::new(),
            tmp,
            offline_since: BTreeMap::new(),
            parent: 0,
            children: Vec::new(),
            parent_of: BTreeMap::new(),
            focus: None,
            partition_max: BTreeMap::new(),
            bag: Vec::new(),
            bundle_seq: 0,
            oneway_armed: BTreeMap::new(),
            backups: BTreeMap::new(),
            restores: 0,
            lost_to_restore: 0,
            peer_pairs: Vec::new(),
            outage: false,
            peer_bodies: BTreeMap::new(),
        };
        world.trace(b"seed", &[&world.opts.seed.to_le_bytes()]);
        Ok(world)
    }

    pub fn at(&mut self, time: u64, ev: Ev) {
        let time = time.max(self.now);
        self.queue.insert((time, self.next_seq), ev);
        self.next_seq += 1;
    }

    pub fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    /// Appends an event to the trace hash.
    pub fn trace(&mut self, what: &[u8], parts: &[&[u8]]) {
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(what);
        for p in parts {
            self.trace.update(&(p.len() as u64).to_le_bytes());
            self.trace.update(p);
        }
    }

    pub fn trace_hash(&self) -> String {
        self.trace.finalize().to_hex()[..16].to_string()
    }

    pub fn fail(&mut self, message: String) {
        if self.failures.len() < 20 {
            self.failures.push(format!("[t={}] {message}", fmt_ms(self.now)));
        }
    }

    pub fn alive(&self, site: usize) -> bool {
        self.sites[site].node.is_some()
    }

    pub fn node(&self, site: usize) -> Option<&Node> {
        self.sites[site].node.as_ref()
    }

    /// Adds a site: a real node directory with a seeded key and clock.
    pub fn add_site(&mut self, name: &str, kind: Kind) -> anyhow::Result<usize> {
        let dir = self.tmp.path().join(name);
        let skew = match self.opts.skew_max_secs {
            0 => 0,
            m => self.rng.range(0, 2 * m as u64) as i64 - m,
        };
        let env = Arc::new(SimEnv::new(self.clock.clone(), skew, self.rng.fork(0x5e7e)));
        let node = Node::init_with_env(&dir, name, env.clone())?;
        let id = node.id();
        let location = self.rng.uuid();
        self.trace(b"site", &[name.as_bytes(), &id.0]);
        self.sites.push(Site {
            name: name.to_string(),
            dir,
            kind,
            id,
            node: Some(node),
            env,
            life: 0,
            location,
            dialers: Vec::new(),
            last_vector: Vector::default(),
            crash_on_apply: false,
            writes_on: true,
            offline_ms: 0,
            restored: false,
            restore_count: 0,
        });
        Ok(self.sites.len() - 1)
    }

    /// Configures `child` as a child of `parent` (both configs, the child dials).
    pub fn link_parent(&mut self, parent: usize, child: usize) -> anyhow::Result<()> {
        let (pid, cid) = (self.sites[parent].id, self.sites[child].id);
        let addr = Some(format!("10.0.{}.{}:7700", parent / 250, parent % 250 + 1).parse()?);
        let cname = Some(self.sites[child].name.clone());
        let pname = Some(self.sites[parent].name.clone());
        if let Some(n) = self.sites[parent].node.as_mut() {
            let scope = Default::default();
            n.config.peers.push(Peer {
                node_id: cid,
                role: Role::Child,
                addr: None,
                name: cname,
                scope,
            });
        }
        if let Some(n) = self.sites[child].node.as_mut() {
            let scope = Default::default();
            n.config.peers.push(Peer {
                node_id: pid,
                role: Role::Parent,
                addr,
                name: pname,
                scope,
            });
        }
        self.sites[child].dialers.push(Dialer { peer: parent, ..Dialer::default() });
        self.parent_of.insert(child, parent);
        self.add_link(parent, child);
        Ok(())
    }

    /// Configures `a` and `b` as peers of each other (both dial).
    pub fn link_peers(&mut self, a: usize, b: usize) -> anyhow::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            let yid = self.sites[y].id;
            let addr = Some(format!("10.1.{}.{}:7700", y / 250, y % 250 + 1).parse()?);
            let name = Some(self.sites[y].name.clone());
            if let Some(n) = self.sites[x].node.as_mut() {
                let scope = Default::default();
                n.config.peers.push(Peer { node_id: yid, role: Role::Peer, addr, name, scope });
            }
            self.sites[x].dialers.push(Dialer { peer: y, ..Dialer::default() });
        }
        self.add_link(a, b);
        Ok(())
    }

    fn add_link(&mut self, a: usize, b: usize) {
        let (lo, hi) = self.opts.latency_ms;
        let latency = self.rng.range(lo, hi);
        let (blo, bhi) = self.opts.bandwidth;
        let bw = self.rng.range(blo, bhi).max(1);
        self.links.insert((a, b), (latency, bw));
        self.links.insert((b, a), (latency, bw));
    }

    /// Saves every config, publishes every roster, and starts the sync loops and workloads.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for s in &self.sites {
            if let Some(n) = &s.node {
                n.save_config()?;
                n.publish_roster()?;
            }
        }
        for site in 0..self.sites.len() {
            let v = self.sites[site].node.as_ref().map(|n| n.store.vector()).transpose()?;
            self.sites[site].last_vector = v.unwrap_or_default();
            for d in 0..self.sites[site].dialers.len() {
                let peer = self.sites[site].dialers[d].peer;
                let first = self.rng.below(self.opts.sync_interval_ms().min(10 * MINUTE_MS));
                self.sites[site].dialers[d].due = first;
                self.at(first, Ev::Dial { site, peer });
            }
            if self.opts.writes_per_day > 0 {
                let first = self.write_gap();
                self.at(first, Ev::Write(site));
            }
        }
        self.heal_at = self.opts.active_ms();
        self.at(self.heal_at, Ev::Heal);
        Ok(())
    }

    /// The gap to a site's next write (Poisson arrivals at `writes_per_day`).
    pub fn write_gap(&mut self) -> u64 {
        self.rng.exp(DAY_MS / u64::from(self.opts.writes_per_day.max(1)))
    }

    /// Runs until converged after the heal, a failure, or the liveness deadline.
    pub fn run(&mut self) {
        let deadline = self.opts.active_ms() + self.opts.liveness_bound_ms();
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > deadline {
                break;
            }
            self.now = t;
            self.clock.set(t);
            self.stats.events += 1;
            self.handle(ev);
            if self.converged_at.is_some() || !self.failures.is_empty() {
                return;
            }
        }
        if self.converged_at.is_none() && self.failures.is_empty() {
            let why = crate::check::divergence(self);
            self.fail(format!(
                "liveness: not converged {} after the last heal (bound {}): {why}",
                fmt_ms(self.now.saturating_sub(self.heal_at)),
                fmt_ms(self.opts.liveness_bound_ms())
            ));
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Write(site) => crate::workload::write(self, site),
            Ev::Dial { site, peer } => self.dial(site, peer),
            Ev::Connected { site, peer } => self.connected(site, peer),
            Ev::DialFailed { site, peer } => self.dial_failed(site, peer),
            Ev::Arrive { conn, to, item } => self.arrive(conn, to, item),
            Ev::Job { conn, end, job } => self.job_due(conn, end, job),
            Ev::Written { conn, end, bytes } => self.written(conn, end, bytes),
            Ev::Timer { conn, end } => self.timer(conn, end),
            Ev::Merge { site, life } => self.merge(site, life),
            Ev::Restart { site } => self.restart(site),
            Ev::Link { a, b, up, both } => self.set_link(a, b, up, both),
            Ev::Script(s) => crate::scenario::script(self, s),
            Ev::Heal => self.heal(),
            Ev::Check => self.check(),
        }
    }

    fn heal(&mut self) {
        self.trace(b"heal", &[]);
        self.healed = true;
        let down: Vec<(usize, usize)> = self.down.keys().copied().collect();
        for (a, b) in down {
            self.down.insert((a, b), 1);
            self.set_link(a, b, true, false);
        }
        for site in 0..self.sites.len() {
            self.sites[site].writes_on = false;
            self.sites[site].crash_on_apply = false;
            if !self.alive(site) {
                self.restart(site);
            }
        }
        crate::scenario::on_heal(self);
        self.after(MINUTE_MS, Ev::Check);
    }

    fn check(&mut self) {
        if crate::check::converged(self) {
            self.converged_at = Some(self.now);
            self.trace(b"converged", &[]);
        } else {
            self.after(5 * MINUTE_MS, Ev::Check);
        }
    }

    /// Drops a site's node as a crash does: what was committed stays, nothing else.
    pub fn crash(&mut self, site: usize) {
        let Some(node) = self.sites[site].node.take() else { return };
        match node.store.vector() {
            Ok(v) => self.sites[site].last_vector = v,
            Err(e) => self.fail(format!("{}: reading the vector: {e}", self.sites[site].name)),
        }
        if node.store.has_dirty().unwrap_or(false) {
            self.stats.crashes_before_merge += 1;
        }
        drop(node);
        self.sites[site].life += 1;
        self.stats.crashes += 1;
        let name = self.sites[site].name.clone();
        self.trace(b"crash", &[name.as_bytes()]);
        self.offline_since.entry(site).or_insert(self.now);
        crate::net::site_crashed(self, site);
    }

    /// Reopens a crashed site from its directory; it must come back with exactly its durable
    /// state.
    pub fn restart(&mut self, site: usize) {
        if self.alive(site) {
            return;
        }
        let s = &self.sites[site];
        let node = match Node::open_with_env(&s.dir, s.env.clone()) {
            Ok(n) => n,
            Err(e) => {
                let m = format!("{}: reopening after a crash: {e}", s.name);
                self.fail(m);
                return;
            }
        };
        match node.store.vector() {
            Ok(v) if v == self.sites[site].last_vector => {}
            Ok(v) if self.sites[site].restored => {
                self.sites[site].restored = false;
                self.sites[site].last_vector = v;
            }
            Ok(v) => {
                let m = format!(
                    "{}: came back from a crash with vector {:?}, but had committed {:?}",
                    self.sites[site].name,
                    v.to_json(),
                    self.sites[site].last_vector.to_json()
                );
                self.fail(m);
            }
            Err(e) => self.fail(format!("reading the vector: {e}")),
        }
        self.sites[site].node = Some(node);
        let name = self.sites[site].name.clone();
        self.trace(b"restart", &[name.as_bytes()]);
        if let Some(since) = self.offline_since.remove(&site) {
            self.sites[site].offline_ms += self.now - since;
        }
        // The sync loops start over, as `serve` does.
        for d in 0..self.sites[site].dialers.len() {
            let peer = self.sites[site].dialers[d].peer;
            self.sites[site].dialers[d].busy = false;
            self.sites[site].dialers[d].due = self.now;
            self.after(0, Ev::Dial { site, peer });
        }
    }

    fn merge(&mut self, site: usize, life: u32) {
        if self.sites[site].life != life {
            return;
        }
        let Some(node) = self.sites[site].node.as_ref() else { return };
        let merged = node.merge_received().map_err(|e| e.to_string());
        self.merged(site, merged.as_ref().map_err(String::clone));
    }

    /// A merge at `site` is done: traced, and every accepted change must have merged.
    pub fn merged(&mut self, site: usize, r: Result<&sitesync::store::MergeReport, String>) {
        let name = self.sites[site].name.clone();
        match r {
            Ok(r) => {
                let docs = r.documents.to_le_bytes();
                self.trace(b"merge", &[name.as_bytes(), &docs]);
                if !r.skipped.is_empty() {
                    let skipped = r.skipped.len();
                    let m = format!(
                        "{name}: {skipped} accepted changes could not be merged: {:?}",
                        r.skipped
                    );
                    self.fail(m);
                }
            }
            Err(e) => self.fail(format!("{name}: merging: {e}")),
        }
    }

    /// Checks that a site's vector did not go backwards, and remembers it.
    pub fn vector_moved(&mut self, site: usize, v: &Vector) {
        let last = &self.sites[site].last_vector;
        if let Some((a, s)) = last.0.iter().find(|(a, s)| v.get(a) < **s) {
            let m = format!(
                "{}: vector went backwards for {a}: {} after {s}",
                self.sites[site].name,
                v.get(a)
            );
            self.fail(m);
        }
        self.sites[site].last_vector = v.clone();
    }
}

/// `1d02h03m` style.
pub fn fmt_ms(ms: u64) -> String {
    let (d, h, m, s) =
        (ms / DAY_MS, ms % DAY_MS / HOUR_MS, ms % HOUR_MS / MINUTE_MS, ms % MINUTE_MS / 1000);
    match (d, h) {
        (0, 0) => format!("{m}m{s:02}s"),
        (0, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h{m:02}m"),
    }
}
