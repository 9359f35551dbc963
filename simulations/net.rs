//! The simulated network: links with latency and bandwidth that partitions cut one way or both,
//! and connections. A connection is what a QUIC stream is to the driver: one ordered, reliable
//! byte stream each way that can break. A lost frame, a link cut or a crashed peer breaks it:
//! nothing after the break arrives, and both ends see the connection close when QUIC's idle
//! timeout expires. The adversary (see `adversary.rs`) sits on the wire.

use sitesync::node::schedule::CONNECT_TIMEOUT_MS;
use sitesync::protocol::message;
use sitesync::transport::IDLE_TIMEOUT_MS;

use sitesync::node::session_host::SessionReport;

use crate::drive::End;
use crate::world::{Ev, World};

/// What travels to one end of a connection.
#[derive(Debug)]
pub enum Transit {
    /// A frame (length prefix included); `sent` is when its last byte left the sender;
    /// `genuine` unless the adversary made or changed it.
    Frame { bytes: Vec<u8>, sent: u64, genuine: bool },
    /// The sender finished its stream after its last frame.
    Fin,
    /// The connection is gone (idle timeout after a break).
    Reset(String),
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Dir {
    /// The sender's link is busy until then (frames are serialized at the link's bandwidth).
    pub busy_until: u64,
    /// Arrival time of the last frame (a stream delivers in order).
    pub last_arrival: u64,
    /// Broken at this time: frames sent after it never arrive.
    pub broken_at: Option<u64>,
    pub fin: bool,
}

pub struct Conn {
    pub id: u64,
    /// `ends[0]` dialled, `ends[1]` accepted.
    pub ends: [End; 2],
    /// `dirs[i]` carries frames from `ends[i]` to the other end.
    pub dirs: [Dir; 2],
    pub reset_scheduled: bool,
}

impl World {
    pub fn link_up(&self, a: usize, b: usize) -> bool {
        !self.down.contains_key(&(a, b))
    }

    pub(crate) fn dial(&mut self, site: usize, peer: usize) {
        let Some(d) = self.sites[site].dialers.iter().position(|d| d.peer == peer) else { return };
        let dialer = &self.sites[site].dialers[d];
        if !self.alive(site) || dialer.busy || self.now < dialer.due {
            return;
        }
        self.sites[site].dialers[d].busy = true;
        let name = format!("{}>{}", self.sites[site].name, self.sites[peer].name);
        self.trace(b"dial", &[name.as_bytes()]);
        if self.alive(peer) && self.link_up(site, peer) && self.link_up(peer, site) {
            let (latency, _) = self.links[&(site, peer)];
            // QUIC's handshake: one round trip (TLS 1.3, no 0-RTT).
            self.after(2 * latency + 1, Ev::Connected { site, peer });
        } else {
            self.after(CONNECT_TIMEOUT_MS, Ev::DialFailed { site, peer });
        }
    }

    pub(crate) fn connected(&mut self, site: usize, peer: usize) {
        let up = self.link_up(site, peer) && self.link_up(peer, site);
        if !(self.alive(site) && self.alive(peer) && up) {
            // Cut or crashed during the handshake.
            return self.dial_failed(site, peer);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let (a, b) = match (End::start(self, site, peer, true), End::start(self, peer, site, false))
        {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                self.fail(format!("starting a session: {e}"));
                return;
            }
        };
        let conn = Conn {
            id,
            ends: [a, b],
            dirs: [Dir::default(), Dir::default()],
            reset_scheduled: false,
        };
        self.conns.insert(id, conn);
        self.stats.sessions += 1;
        self.trace(b"connected", &[&id.to_le_bytes()]);
        self.pump(id, 0);
        self.pump(id, 1);
        for child in [site, peer] {
            if let Some(hold) = self.oneway_armed.remove(&child) {
                // Somewhere inside the session: its first messages are a few round trips.
                let (latency, _) = self.links[&(site, peer)];
                let at = self.rng.range(0, 6 * latency + 500);
                let p = self.parent;
                let (a, b) = if self.rng.chance(0.5) { (child, p) } else { (p, child) };
                self.after(at, Ev::Link { a, b, up: false, both: false });
                self.after(at + hold, Ev::Link { a, b, up: true, both: false });
                self.partition_max.insert(child, hold);
            }
        }
    }

    pub(crate) fn dial_failed(&mut self, site: usize, peer: usize) {
        self.stats.dials_failed += 1;
        self.trace(b"dial-failed", &[&(site as u64).to_le_bytes(), &(peer as u64).to_le_bytes()]);
        let Some(node) = self.node(site) else { return };
        let why = format!("connecting to {}: timed out", self.sites[peer].name);
        let report = sitesync::node::schedule::dial_failed(node, self.sites[peer].id, why, 0);
        self.round_done(site, peer, &report);
    }

    /// Schedules a sync loop's next round (the real loop's [`DialSchedule`], drawing its jitter
    /// from the node's seeded entropy), after recording the round as `serve` does.
    ///
    /// [`DialSchedule`]: sitesync::node::schedule::DialSchedule
    pub fn round_done(&mut self, site: usize, peer: usize, report: &SessionReport) {
        let interval = self.opts.sync_interval_ms();
        let peer_id = self.sites[peer].id;
        let Some(d) = self.sites[site].dialers.iter().position(|d| d.peer == peer) else { return };
        let s = &mut self.sites[site];
        let Some(node) = s.node.as_ref() else { return };
        let dialer = &mut s.dialers[d];
        let delay = dialer.schedule.round_done(node, peer_id, report, interval);
        dialer.busy = false;
        dialer.due = self.now + delay;
        self.after(delay, Ev::Dial { site, peer });
    }

    /// Puts a frame on the wire from end `from` of `conn`.
    pub fn transmit(&mut self, conn: u64, from: usize, bytes: Vec<u8>) {
        // Every write fits the wire: no frame a node encodes is over the limit its peers read.
        if bytes.len().saturating_sub(4) > message::FRAME_BYTES_MAX {
            let site = self.conns.get(&conn).map_or(0, |c| c.ends[from].site);
            let m = format!(
                "{} encoded a frame of {} bytes, over FRAME_BYTES_MAX ({})",
                self.sites[site].name,
                bytes.len() - 4,
                message::FRAME_BYTES_MAX
            );
            self.fail(m);
        }
        let Some(c) = self.conns.get(&conn) else { return };
        let (src, dst) = (c.ends[from].site, c.ends[1 - from].site);
        let dir = &c.dirs[from];
        if dir.fin || dir.broken_at.is_some() {
            return;
        }
        let (latency, bandwidth) = self.links[&(src, dst)];
        // The writer has written the frame once its last byte left (lost on the way or not).
        let departs = self.now.max(dir.busy_until) + bytes.len() as u64 * 1000 / bandwidth;
        let written = Ev::Written { conn, end: from, bytes: bytes.len() as u64 };
        self.at(departs, written);
        self.stats.frames += 1;
        self.stats.bytes += bytes.len() as u64;
        self.trace(b"frame", &[&conn.to_le_bytes(), &[from as u8], &bytes]);
        if self.captured.len() < 64 && self.rng.chance(0.05) {
            self.captured.push_back(bytes.clone());
        }
        // Lost on the way: the stream breaks here (QUIC gives up after its idle timeout).
        if self.rng.chance(self.opts.loss) {
            self.stats.frames_lost += 1;
            self.break_dir(conn, from, "a frame was lost");
            return;
        }
        let frames = crate::adversary::on_wire(self, conn, from, bytes);
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let dir = &mut c.dirs[from];
        let mut arrivals = Vec::with_capacity(frames.len());
        for (bytes, extra_delay, genuine) in frames {
            let start = now.max(dir.busy_until);
            let sent = start + bytes.len() as u64 * 1000 / bandwidth;
            dir.busy_until = sent;
            let mut arrival = (sent + latency).max(dir.last_arrival);
            if extra_delay == 0 {
                dir.last_arrival = arrival;
            } else {
                arrival += extra_delay;
            }
            arrivals.push((arrival, Transit::Frame { bytes, sent, genuine }));
        }
        for (arrival, item) in arrivals {
            self.queue_arrival(arrival, conn, 1 - from, item);
        }
    }

    fn queue_arrival(&mut self, time: u64, conn: u64, to: usize, item: Transit) {
        self.at(time, Ev::Arrive { conn, to, item });
    }

    /// Breaks one direction of a connection now; both ends learn it at QUIC's idle timeout.
    pub fn break_dir(&mut self, conn: u64, from: usize, why: &str) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.dirs[from].broken_at.is_none() {
            c.dirs[from].broken_at = Some(now);
        }
        if !c.reset_scheduled {
            c.reset_scheduled = true;
            let reason = format!("timed out ({why})");
            for to in 0..2 {
                let item = Transit::Reset(reason.clone());
                self.at(now + u64::from(IDLE_TIMEOUT_MS), Ev::Arrive { conn, to, item });
            }
        }
    }

    pub(crate) fn arrive(&mut self, conn: u64, to: usize, item: Transit) {
        let Some(c) = self.conns.get(&conn) else { return };
        let end = &c.ends[to];
        if end.done || self.sites[end.site].life != end.life {
            return;
        }
        match item {
            Transit::Frame { bytes, sent, genuine } => {
                let broken = c.dirs[1 - to].broken_at;
                // Sent after the break, or still in flight on a link that is down now.
                if broken.is_some_and(|b| sent > b) || !self.link_up(c.ends[1 - to].site, end.site)
                {
                    return;
                }
                self.trace(b"arrive", &[&conn.to_le_bytes(), &[to as u8]]);
                self.deliver(conn, to, bytes, genuine);
            }
            Transit::Fin => {
                let end = &mut self.conn_mut(conn).ends[to];
                end.host.handle_disconnect("the peer finished the stream".into());
                self.pump(conn, to);
            }
            Transit::Reset(reason) => {
                self.conn_mut(conn).ends[to].host.handle_disconnect(reason);
                self.pump(conn, to);
            }
        }
    }

    /// A frame reaches a session: decoded with the end's stateful decoder, as the QUIC
    /// reader does.
    fn deliver(&mut self, conn: u64, to: usize, bytes: Vec<u8>, genuine: bool) {
        let now = self.now;
        // Acks the adversary made or changed are not the node's word.
        let check_ack = genuine;
        let c = self.conn_mut(conn);
        let peer_site = c.ends[1 - to].site;
        let peer_restores = c.ends[1 - to].restores;
        let end = &mut c.ends[to];
        let size = bytes.len() as u64;
        end.last_frame = size;
        let decoded = match bytes.get(..4).map(<[u8; 4]>::try_from) {
            Some(Ok(prefix)) => match message::frame_len(prefix) {
                Ok(n) if n == bytes.len() - 4 => end.dec.decode(&bytes[4..]),
                Ok(n) => Err(message::CodecError::Decode(format!(
                    "length prefix says {n} bytes, {} arrived",
                    bytes.len() - 4
                ))),
                Err(e) => Err(e),
            },
            _ => Err(message::CodecError::Empty),
        };
        match decoded {
            Ok(m) => {
                if let (true, message::MessageOf::Ack { vector }) = (check_ack, &m) {
                    let vector = vector.clone();
                    end.host.handle_message(now, m, size);
                    if self.sites[peer_site].restore_count == peer_restores {
                        self.check_ack(peer_site, &vector);
                    }
                } else {
                    end.host.handle_message(now, m, size);
                }
            }
            Err(e) => end.host.handle_malformed(e.to_string(), size),
        }
        self.pump(conn, to);
    }

    /// A node acks only what it holds durably.
    fn check_ack(&mut self, site: usize, acked: &sitesync::id::Vector) {
        let held = match self.node(site).map(|n| n.store.vector()) {
            Some(Ok(v)) => v,
            Some(Err(_)) => return,
            None => self.sites[site].last_vector.clone(),
        };
        if let Some((a, s)) = acked.0.iter().find(|(a, s)| held.get(a) < **s) {
            let m = format!(
                "{} acked {a} #{s} but holds only #{} durably",
                self.sites[site].name,
                held.get(a)
            );
            self.fail(m);
        }
    }

    pub fn conn_mut(&mut self, conn: u64) -> &mut Conn {
        self.conns.get_mut(&conn).expect("the connection exists while its events run")
    }

    /// Sets a link's state; cutting it breaks the connections over it.
    pub(crate) fn set_link(&mut self, a: usize, b: usize, up: bool, both: bool) {
        let pairs: Vec<(usize, usize)> = if both { vec![(a, b), (b, a)] } else { vec![(a, b)] };
        for (x, y) in pairs {
            let was_down = self.down.contains_key(&(x, y));
            if up {
                if let Some(n) = self.down.get_mut(&(x, y)) {
                    *n -= 1;
                    if *n == 0 {
                        self.down.remove(&(x, y));
                    }
                }
            } else {
                *self.down.entry((x, y)).or_insert(0) += 1;
            }
            if was_down == self.down.contains_key(&(x, y)) {
                continue;
            }
            let what = if up { b"link-up".as_slice() } else { b"link-down".as_slice() };
            self.trace(what, &[&(x as u64).to_le_bytes(), &(y as u64).to_le_bytes()]);
            if up {
                continue;
            }
            let hit: Vec<(u64, usize)> = self
                .conns
                .values()
                .flat_map(|c| {
                    (0..2)
                        .filter(move |&i| c.ends[i].site == x && c.ends[1 - i].site == y)
                        .map(move |i| (c.id, i))
                })
                .collect();
            for (conn, from) in hit {
                self.break_dir(conn, from, "the link was cut");
            }
        }
    }

    pub(crate) fn timer(&mut self, conn: u64, end: usize) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        // Bytes still moving either way count as activity (the driver's byte-level clock).
        let moving = c.dirs.iter().any(|d| d.busy_until > now && d.broken_at.is_none())
            || c.dirs.iter().any(|d| d.last_arrival > now && d.broken_at.is_none());
        let e = &mut c.ends[end];
        if e.done || e.timer_at != Some(now) {
            return;
        }
        e.timer_at = None;
        if moving {
            e.host.handle_activity(now);
        }
        e.host.handle_timeout(now);
        self.pump(conn, end);
    }
}

/// A site crashed: its ends die at once; what it had fully sent still arrives; its peers see
/// the connections close at the idle timeout.
pub fn site_crashed(world: &mut World, site: usize) {
    let hit: Vec<(u64, usize)> = world
        .conns
        .values()
        .flat_map(|c| (0..2).filter(move |&i| c.ends[i].site == site).map(move |i| (c.id, i)))
        .collect();
    for (conn, i) in hit {
        if let Some(c) = world.conns.get_mut(&conn) {
            c.ends[i].done = true;
            c.ends[i].ended = true;
        }
        world.break_dir(conn, i, "the peer crashed");
        world.gc(conn);
    }
    for d in &mut world.sites[site].dialers {
        d.busy = false;
    }
}
