//! One end of a connection running a real [`SessionHost`], the piece `serve` runs over QUIC:
//! the same effects (durable receipt and acks, merges during and after the session, the writer
//! backlog limit, the re-send of withheld bodies, the child's audit upload, the session's
//! record: peer state, audit cursor, audit entry). Only the clock, the network and the time
//! store work takes are the simulator's: a fetch, a receipt or a merge completes later as an
//! event of its own, so a crash can fall between receipt and ack, or between receipt and merge.
//!
//! After each session ends, the check that `serve` leaves an audit entry runs: the site's
//! newest entry must be this session's.

use std::collections::BTreeMap;

use sitesync::event::EventKind;
use sitesync::node::NodeError;
use sitesync::node::session_host::{
    Action, Done, Job, JobKind, MERGE_DURING_SESSION_MS, SessionHost, SessionReport,
};
use sitesync::protocol::message::Decoder;
use sitesync::protocol::session::Outcome;

use crate::world::{Ev, World};

/// Simulated time a store read for a fetch takes.
const FETCH_MS: u64 = 3;
/// Simulated time of an apply: fixed part and per batch.
const APPLY_MS: u64 = 4;
const APPLY_PER_BATCH_MS: u64 = 1;
/// A merge (during or after a session) runs this long after it was asked for.
const MERGE_DELAY_MS: u64 = 20;

pub struct End {
    pub site: usize,
    pub peer: usize,
    /// The site's life when the session started (a crash ends it).
    pub life: u32,
    pub dialer: bool,
    pub host: SessionHost,
    pub dec: Decoder,
    /// Store jobs waiting for their simulated time, by id, with the size of the frame that
    /// brought a receipt's batches and how many batches it carried.
    pub jobs: BTreeMap<u64, (Job, u64, u64)>,
    pub next_job: u64,
    /// Size of the last frame received (for the resent-bytes count).
    pub last_frame: u64,
    pub timer_at: Option<u64>,
    /// The session is closed on the wire (its record may still be running).
    pub done: bool,
    /// The session is recorded (or its site crashed): nothing more happens at this end.
    pub ended: bool,
    /// Frames and bytes that left this end so far.
    pub frames_written: u64,
    pub bytes_written: u64,
    pub hostile: bool,
    /// The site's restore count when the session started.
    pub restores: u32,
    /// `Batches` messages this end sent, and received ones it applied (durably received).
    pub batch_messages_sent: u64,
    pub batch_messages_applied: u64,
}

impl End {
    /// Starts a session of `site` toward `peer`, as `serve` does on a new stream.
    pub fn start(world: &World, site: usize, peer: usize, dialer: bool) -> Result<End, NodeError> {
        let node = world.node(site).ok_or_else(|| NodeError::Input("site is down".into()))?;
        // The default merge interval, whatever the environment says: a seed replays the same.
        let host = SessionHost::start(node, world.sites[peer].id, world.now)?
            .merging_every(MERGE_DURING_SESSION_MS);
        Ok(End {
            site,
            peer,
            life: world.sites[site].life,
            dialer,
            host,
            dec: Decoder::default(),
            jobs: BTreeMap::new(),
            next_job: 0,
            last_frame: 0,
            timer_at: None,
            done: false,
            ended: false,
            frames_written: 0,
            bytes_written: 0,
            hostile: world.sites[site].kind == crate::world::Kind::Relay,
            restores: world.sites[site].restore_count,
            batch_messages_sent: 0,
            batch_messages_applied: 0,
        })
    }
}

impl World {
    /// Carries out the actions of end `i` of `conn` until it has none left.
    pub fn pump(&mut self, conn: u64, i: usize) {
        loop {
            let now = self.now;
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let e = &mut c.ends[i];
            if e.ended {
                return;
            }
            let Some(action) = e.host.poll(now) else { break };
            match action {
                Action::Transmit { frame, batches } => {
                    if batches {
                        e.batch_messages_sent += 1;
                        self.stats.batch_bytes_sent += frame.len() as u64;
                    }
                    self.transmit(conn, i, frame);
                }
                Action::Run(job) => self.run_job(conn, i, job),
                Action::Closed(outcome) => {
                    self.session_closed(conn, i, outcome);
                    self.conn_mut(conn).ends[i].host.drained();
                }
                Action::Ended(report) => {
                    self.session_ended(conn, i, &report);
                    return;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let e = &mut c.ends[i];
        if e.done {
            return;
        }
        if let (None, Some(t)) = (e.timer_at, e.host.poll_timeout()) {
            e.timer_at = Some(t);
            self.at(t, Ev::Timer { conn, end: i });
        }
    }

    /// A job: store work that takes simulated time is scheduled; the re-send and audit steps
    /// and the session's record run at once, as `serve` awaits them.
    fn run_job(&mut self, conn: u64, i: usize, job: Job) {
        let delay = match &job.kind {
            JobKind::Fetch { .. } => Some(FETCH_MS),
            JobKind::Apply { batches } => {
                Some(APPLY_MS + APPLY_PER_BATCH_MS * batches.len() as u64)
            }
            JobKind::MergeSome | JobKind::MergeAll => Some(MERGE_DELAY_MS),
            _ => None,
        };
        let count = match &job.kind {
            JobKind::Apply { batches } => batches.len() as u64,
            _ => 0,
        };
        if let JobKind::Apply { batches } = &job.kind {
            self.count_peer_bodies(conn, i, batches);
        }
        let e = &mut self.conn_mut(conn).ends[i];
        match delay {
            Some(ms) => {
                let id = e.next_job;
                e.next_job += 1;
                e.jobs.insert(id, (job, e.last_frame, count));
                self.after(ms, Ev::Job { conn, end: i, job: id });
            }
            None => self.finish_job(conn, i, job, (0, 0)),
        }
    }

    /// During a parent's outage, the bodies a clinic receives from its peer (parent-outage).
    fn count_peer_bodies(
        &mut self,
        conn: u64,
        i: usize,
        batches: &[sitesync::protocol::message::WireBatch],
    ) {
        let e = &self.conn_mut(conn).ends[i];
        let (site, peer) = (e.site, e.peer);
        let related =
            self.parent_of.get(&site) == Some(&peer) || self.parent_of.get(&peer) == Some(&site);
        if !self.outage || related {
            return;
        }
        let bodies: usize = batches.iter().map(|b| b.entities_len() - b.withheld()).sum();
        *self.peer_bodies.entry((site, peer)).or_insert(0) += bodies as u64;
    }

    /// Whether end `i` of `conn` still has work (not ended, its site not crashed since).
    fn end_working(&self, conn: u64, i: usize) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            let e = &c.ends[i];
            !e.ended && self.sites[e.site].life == e.life && self.alive(e.site)
        })
    }

    /// A scheduled job is due.
    pub(crate) fn job_due(&mut self, conn: u64, i: usize, id: u64) {
        if !self.end_working(conn, i) {
            return;
        }
        let Some((job, frame, count)) = self.conn_mut(conn).ends[i].jobs.remove(&id) else {
            return;
        };
        let site = self.conn_mut(conn).ends[i].site;
        if matches!(job.kind, JobKind::Apply { .. }) && self.sites[site].crash_on_apply {
            return self.crash_in_receipt(conn, i, job);
        }
        self.finish_job(conn, i, job, (frame, count));
    }

    /// A crash in the middle of receiving: either the write transaction never committed, or it
    /// did and the node died before sending the ack.
    fn crash_in_receipt(&mut self, conn: u64, i: usize, job: Job) {
        let site = self.conn_mut(conn).ends[i].site;
        self.sites[site].crash_on_apply = false;
        self.stats.mid_batch_crashes += 1;
        if self.rng.chance(0.5) {
            let node = self.sites[site].node.as_ref().expect("a working end's site is up");
            match job.run(node) {
                Done::Applied(Ok(_)) => self.conn_mut(conn).ends[i].batch_messages_applied += 1,
                Done::Applied(Err(err)) => {
                    self.fail(format!("{}: apply_wire failed: {err}", self.sites[site].name))
                }
                _ => {}
            }
        }
        self.crash(site);
        let down = self.rng.range(crate::world::MINUTE_MS, 3 * crate::world::HOUR_MS);
        self.after(down, Ev::Restart { site });
    }

    /// Runs `job` on the end's node now, checks what the simulator checks of its result, and
    /// hands the result to the host.
    /// `frame` is the size and batch count of the frame that brought a receipt's batches.
    fn finish_job(&mut self, conn: u64, i: usize, job: Job, frame: (u64, u64)) {
        let site = self.conn_mut(conn).ends[i].site;
        let Some(node) = self.sites[site].node.as_ref() else { return };
        let done = match &job.kind {
            JobKind::Fetch { .. } => {
                let fetched = job.fetch(node);
                let fetched = match fetched {
                    Ok(batches) => Ok(crate::adversary::on_fetch(self, conn, i, batches)),
                    Err(err) => {
                        self.fail(format!("{}: fetch_wire failed: {err}", self.sites[site].name));
                        Err(err)
                    }
                };
                job.encoded(fetched)
            }
            _ => job.run(node),
        };
        self.observe(conn, i, &done, frame);
        let now = self.now;
        self.conn_mut(conn).ends[i].host.complete(now, done);
        self.pump(conn, i);
    }

    /// What the simulator counts and checks of a job's result.
    fn observe(&mut self, conn: u64, i: usize, done: &Done, (frame, count): (u64, u64)) {
        let site = self.conn_mut(conn).ends[i].site;
        let name = self.sites[site].name.clone();
        match done {
            Done::Applied(Ok((vector, report, failed))) => {
                self.stats.batches_applied += report.applied_batches;
                self.stats.batches_present += report.present;
                self.stats.resent_bytes += frame * report.present / count.max(1);
                self.stats.batch_bytes_applied += frame;
                self.stats.rejected_batches += report.rejected.len() as u64;
                let counts = [report.applied_batches, report.present, *failed as u64];
                let counts: Vec<u8> = counts.iter().flat_map(|n| n.to_le_bytes()).collect();
                self.trace(b"applied", &[&conn.to_le_bytes(), &counts]);
                self.vector_moved(site, vector);
                if self.rng.chance(self.opts.merge_eager) {
                    let life = self.sites[site].life;
                    self.after(1, Ev::Merge { site, life });
                }
                self.conn_mut(conn).ends[i].batch_messages_applied += 1;
            }
            Done::Applied(Err(err)) => self.fail(format!("{name}: apply_wire failed: {err}")),
            Done::BodiesFetched(Ok(bodies)) => self.stats.bodies_resent += bodies.len() as u64,
            Done::BodiesStored(Ok(r)) => self.stats.bodies_stored += r.stored,
            Done::BodiesFetched(Err(err))
            | Done::BodiesDelivered(Err(err))
            | Done::BodiesStored(Err(err)) => {
                self.fail(format!("{name}: re-sending withheld bodies failed: {err}"))
            }
            Done::Merged(r) => self.merged(site, r.as_ref().map_err(String::clone)),
            Done::Recorded(Err(err)) => self.fail(format!("{name}: recording a session: {err}")),
            _ => {}
        }
    }

    /// The session closed on the wire: the stream is finished behind the last frame and the
    /// outcome counted. Its merge and record follow as jobs.
    fn session_closed(&mut self, conn: u64, i: usize, outcome: Outcome) {
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("the connection of a closing end");
        c.ends[i].done = true;
        let (site, peer) = (c.ends[i].site, c.ends[i].peer);
        let (latency, _) = self.links[&(site, peer)];
        let dir = &mut c.dirs[i];
        let fin_at =
            (!dir.fin && dir.broken_at.is_none()).then(|| dir.last_arrival.max(now + latency));
        dir.fin = true;
        if let Some(t) = fin_at {
            self.at(t, Ev::Arrive { conn, to: 1 - i, item: crate::net::Transit::Fin });
        }
        match &outcome {
            Outcome::Complete => self.stats.complete += 1,
            Outcome::Refused { code, .. } | Outcome::Remote { code, .. } => match code {
                sitesync::protocol::message::ErrorCode::Forbidden => self.stats.forbidden += 1,
                _ => self.stats.protocol_errors += 1,
            },
            Outcome::TimedOut | Outcome::Lost { .. } => self.stats.lost_sessions += 1,
        }
        let text = outcome.to_string();
        self.trace(b"session-end", &[&conn.to_le_bytes(), &[i as u8], text.as_bytes()]);
    }

    /// The session is recorded: check its audit entry, and a dialler's loop schedules its next
    /// round.
    fn session_ended(&mut self, conn: u64, i: usize, report: &SessionReport) {
        let e = &mut self.conn_mut(conn).ends[i];
        e.ended = true;
        let (site, peer, dialer) = (e.site, e.peer, e.dialer);
        self.check_session_entry(site, peer);
        if dialer {
            self.round_done(site, peer, report);
        }
        self.gc(conn);
    }

    /// The site's newest audit entry must be the record of the session with `peer` that just
    /// ended: `serve` writes one for every session.
    fn check_session_entry(&mut self, site: usize, peer: usize) {
        let Some(node) = self.node(site) else { return };
        let peer_id = self.sites[peer].id;
        let newest = node.store.events(1);
        let ok = matches!(&newest, Ok(list) if list.last().is_some_and(|(_, e)| {
            matches!(&e.kind, EventKind::Session { peer, .. } if *peer == peer_id)
        }));
        if !ok {
            let name = self.sites[site].name.clone();
            let other = self.sites[peer].name.clone();
            self.fail(format!("{name}: the session with {other} left no audit entry"));
        }
    }

    /// Forgets a connection both of whose ends are over, after checking that a cut cost at
    /// most the one `Batches` message in flight each way (a sender waits for the ack of one
    /// message before it sends the next: no livelock, bounded retransmission).
    pub fn gc(&mut self, conn: u64) {
        let Some(c) = self.conns.get(&conn).filter(|c| c.ends.iter().all(|e| e.ended)) else {
            return;
        };
        let mut problems = Vec::new();
        for i in 0..2 {
            let (sent, applied) =
                (c.ends[i].batch_messages_sent, c.ends[1 - i].batch_messages_applied);
            if sent > applied + 1 {
                let (from, to) =
                    (&self.sites[c.ends[i].site].name, &self.sites[c.ends[1 - i].site].name);
                problems.push(format!(
                    "session {conn}: {from} sent {sent} batches messages to {to}, which applied \
                     {applied}: more than the one in flight was lost"
                ));
            }
        }
        self.conns.remove(&conn);
        for m in problems {
            self.fail(m);
        }
    }

    /// A frame of end `i` left the sender (its writer wrote it).
    pub(crate) fn written(&mut self, conn: u64, i: usize, bytes: u64) {
        if !self.end_working(conn, i) {
            return;
        }
        let e = &mut self.conn_mut(conn).ends[i];
        e.frames_written += 1;
        e.bytes_written += bytes;
        let (frames, bytes) = (e.frames_written, e.bytes_written);
        e.host.written(frames, bytes);
        self.pump(conn, i);
    }
}
