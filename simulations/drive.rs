//! One end of a connection running a real [`Session`], driven the way
//! `sitesync::node::serve::drive` drives it over QUIC: the vector and trust order read at the
//! start; `Fetch` answered by `Node::fetch_wire` and the `Batches` message encoded as soon as it
//! is fetched (the session sends fetches in order, which keeps the encoder's tables in step with
//! the peer's decoder); other messages encoded when sent; `Apply` answered by
//! `Node::apply_wire`, with the session cut when a batch fails verification; the received
//! changes merged after the session; the peer state recorded at the end. The re-send of
//! withheld bodies as `drive` does it: a child's scope checked at the start
//! (`Node::check_child_scope`), `FetchBodies` answered by `Node::fetch_bodies`, acknowledged
//! bodies forgotten by `Node::bodies_delivered`, `StoreBodies` answered by
//! `Node::receive_bodies`, each carried out before the next effect.
//!
//! Store work takes simulated time (a fetch or an apply completes later as its own event), so
//! a crash can fall between receipt and ack, or between receipt and merge.

use std::collections::VecDeque;

use sitesync::config::Scope;
use sitesync::id::{NodeId, Vector};
use sitesync::node::serve::{SessionReport, record_session};
use sitesync::node::{Env, NodeError};
use sitesync::protocol::message::{Decoder, Encoder, Message, Role, WireBatch};
use sitesync::protocol::session::{Effect, Outcome, Session};

use crate::world::{Ev, World};

/// Simulated time a store read for a fetch takes.
const FETCH_MS: u64 = 3;
/// Simulated time of an apply: fixed part and per batch.
const APPLY_MS: u64 = 4;
const APPLY_PER_BATCH_MS: u64 = 1;
/// The merge after a session runs this long after it ends.
const MERGE_DELAY_MS: u64 = 20;

pub struct End {
    pub site: usize,
    pub peer: usize,
    /// The site's life when the session started (a crash ends it).
    pub life: u32,
    pub dialer: bool,
    pub session: Session,
    pub enc: Encoder,
    pub dec: Decoder,
    /// `Batches` frames encoded at fetch time, sent in order.
    pub ready: VecDeque<Vec<u8>>,
    pub order: Vec<NodeId>,
    pub scope: Option<Scope>,
    pub fetch: Option<Vector>,
    pub apply: Option<Vec<WireBatch>>,
    /// Size of the last frame received (for the resent-bytes count).
    pub last_frame: u64,
    pub apply_frame: u64,
    pub timer_at: Option<u64>,
    pub done: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub hostile: bool,
    /// The site's restore count when the session started.
    pub restores: u32,
    /// `Batches` messages this end sent, and received ones it applied (durably received).
    pub batch_messages_sent: u64,
    pub batch_messages_applied: u64,
}

impl End {
    /// Starts a session of `site` toward `peer`, as `drive` does on a new stream.
    pub fn start(world: &World, site: usize, peer: usize, dialer: bool) -> Result<End, NodeError> {
        let node = world.node(site).ok_or_else(|| NodeError::Input("site is down".into()))?;
        let peer_id = world.sites[peer].id;
        let vector = node.store.vector()?;
        let order = node.trust_order()?;
        let entry = node
            .config
            .peer(&peer_id)
            .ok_or_else(|| NodeError::Input(format!("{peer_id} is not a configured peer")))?;
        let scope = (entry.role == Role::Child).then(|| entry.scope.clone());
        // A child whose scope changed has every withheld body checked again.
        if let Some(scope) = &scope {
            node.check_child_scope(peer_id, scope)?;
        }
        let mut session = Session::new(world.now, node.id(), entry.local_role(), peer_id, vector);
        // A child uploads its audit entries to its parent right after Hello, as `drive` does.
        if entry.local_role() == Role::Child {
            let max = sitesync::protocol::message::AUDIT_ENTRIES_PER_MESSAGE_MAX;
            let entries = node.store.audit_for_parent(&peer_id, max)?;
            session.send_audit(
                entries
                    .into_iter()
                    .map(|(n, stored)| sitesync::protocol::message::AuditEntry {
                        n,
                        stored: stored.into(),
                    })
                    .collect(),
            );
        }
        Ok(End {
            site,
            peer,
            life: world.sites[site].life,
            dialer,
            session,
            enc: Encoder::default(),
            dec: Decoder::default(),
            ready: VecDeque::new(),
            order,
            scope,
            fetch: None,
            apply: None,
            last_frame: 0,
            apply_frame: 0,
            timer_at: None,
            done: false,
            bytes_sent: 0,
            bytes_received: 0,
            hostile: world.sites[site].kind == crate::world::Kind::Relay,
            restores: world.sites[site].restore_count,
            batch_messages_sent: 0,
            batch_messages_applied: 0,
        })
    }
}

impl World {
    /// Carries out the effects of end `i` of `conn` until it has none left.
    pub fn pump(&mut self, conn: u64, i: usize) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let e = &mut c.ends[i];
            if e.done {
                return;
            }
            let Some(effect) = e.session.poll_effect() else { break };
            match effect {
                Effect::Send(m) => {
                    let frame = match m {
                        Message::Batches { .. } => match e.ready.pop_front() {
                            Some(f) => {
                                self.stats.batch_bytes_sent += f.len() as u64;
                                e.batch_messages_sent += 1;
                                f
                            }
                            None => {
                                e.session
                                    .handle_local_error("a batches message was not encoded".into());
                                continue;
                            }
                        },
                        other => e.enc.encode(&other),
                    };
                    e.bytes_sent += frame.len() as u64;
                    self.transmit(conn, i, frame);
                }
                Effect::Fetch { after } => {
                    e.fetch = Some(after);
                    self.after(FETCH_MS, Ev::Fetched { conn, end: i });
                }
                Effect::Apply { batches } => {
                    let cost = APPLY_MS + APPLY_PER_BATCH_MS * batches.len() as u64;
                    e.apply = Some(batches);
                    e.apply_frame = e.last_frame;
                    self.after(cost, Ev::Applied { conn, end: i });
                }
                Effect::StoreAudit { entries } => {
                    let (site, peer) = (e.site, e.peer);
                    let peer_id = self.sites[peer].id;
                    let entries: Vec<(u64, Vec<u8>)> =
                        entries.into_iter().map(|x| (x.n, x.stored.into_vec())).collect();
                    let time = (self.now / 1000) as i64;
                    let stored = match self.sites[site].node.as_ref() {
                        Some(n) => n
                            .store
                            .store_child_audit(&peer_id, &entries, time)
                            .map_err(|err| err.to_string()),
                        None => Err("the site is down".to_string()),
                    };
                    let now = self.now;
                    let e = &mut self.conn_mut(conn).ends[i];
                    match stored {
                        Ok(next) => e.session.handle_audit_stored(now, next),
                        Err(m) => {
                            e.session.handle_local_error(format!("storing audit entries: {m}"))
                        }
                    }
                }
                effect @ (Effect::FetchBodies
                | Effect::BodiesDelivered { .. }
                | Effect::StoreBodies { .. }) => self.bodies_effect(conn, i, effect),
                Effect::Closed(outcome) => {
                    e.done = true;
                    self.session_ended(conn, i, outcome);
                    return;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let e = &mut c.ends[i];
        if let (None, Some(t)) = (e.timer_at, e.session.poll_timeout()) {
            e.timer_at = Some(t);
            self.at(t, Ev::Timer { conn, end: i });
        }
    }

    /// Carries out an effect of the re-send of withheld bodies at once, as `drive` awaits it.
    fn bodies_effect(&mut self, conn: u64, i: usize, effect: Effect) {
        let (site, peer) = (self.conn_mut(conn).ends[i].site, self.conn_mut(conn).ends[i].peer);
        let peer_id = self.sites[peer].id;
        let scope = self.conn_mut(conn).ends[i].scope.clone();
        let now = self.now;
        let Some(node) = self.sites[site].node.as_ref() else { return };
        let result = match effect {
            Effect::FetchBodies => {
                let fetched = match &scope {
                    Some(scope) => node.fetch_bodies(peer_id, scope),
                    None => Ok(Vec::new()),
                };
                fetched.map(|bodies| {
                    self.stats.bodies_resent += bodies.len() as u64;
                    let s = &mut self.conns.get_mut(&conn).expect("live end").ends[i].session;
                    s.handle_bodies_fetched(now, bodies);
                })
            }
            Effect::BodiesDelivered { items } => node.bodies_delivered(peer_id, &items),
            Effect::StoreBodies { bodies } => node.receive_bodies(peer_id, bodies).map(|r| {
                self.stats.bodies_stored += r.stored;
                let s = &mut self.conns.get_mut(&conn).expect("live end").ends[i].session;
                s.handle_bodies_stored(now, r.hashes);
            }),
            _ => Ok(()),
        };
        if let Err(err) = result {
            let e = &mut self.conn_mut(conn).ends[i];
            e.session.handle_local_error(format!("re-sending withheld bodies: {err}"));
            self.fail(format!(
                "{}: re-sending withheld bodies failed: {err}",
                self.sites[site].name
            ));
        }
    }

    /// Whether end `i` of `conn` still runs (not closed, its site not crashed since).
    fn end_live(&self, conn: u64, i: usize) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            let e = &c.ends[i];
            !e.done && self.sites[e.site].life == e.life && self.alive(e.site)
        })
    }

    pub(crate) fn fetched(&mut self, conn: u64, i: usize) {
        if !self.end_live(conn, i) {
            return;
        }
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("live end");
        let e = &mut c.ends[i];
        let Some(node) = self.sites[e.site].node.as_ref() else { return };
        let Some(after) = e.fetch.take() else { return };
        let child = e.scope.as_ref().map(|s| (self.sites[e.peer].id, s));
        match node.fetch_wire(&e.order, &after, child) {
            Ok(batches) => {
                let batches = crate::adversary::on_fetch(self, conn, i, batches);
                let e = &mut self.conn_mut(conn).ends[i];
                let batches = if batches.is_empty() {
                    batches
                } else {
                    let m = Message::Batches { batches };
                    e.ready.push_back(e.enc.encode(&m));
                    match m {
                        Message::Batches { batches } => batches,
                        _ => Vec::new(),
                    }
                };
                e.session.handle_fetched(now, batches);
            }
            Err(err) => {
                e.session.handle_local_error(format!("reading batches: {err}"));
                let m = format!("{}: fetch_wire failed: {err}", self.sites[e.site].name);
                self.fail(m);
            }
        }
        self.pump(conn, i);
    }

    pub(crate) fn applied(&mut self, conn: u64, i: usize) {
        if !self.end_live(conn, i) {
            return;
        }
        let c = self.conns.get_mut(&conn).expect("live end");
        let e = &mut c.ends[i];
        let (site, peer, frame) = (e.site, e.peer, e.apply_frame);
        let Some(batches) = e.apply.take() else { return };
        let peer_id = self.sites[peer].id;
        if self.sites[site].crash_on_apply {
            // A crash in the middle of receiving: either the write transaction never committed,
            // or it did and the node died before sending the ack.
            self.sites[site].crash_on_apply = false;
            self.stats.mid_batch_crashes += 1;
            if self.rng.chance(0.5) {
                let node = self.sites[site].node.as_ref().expect("live end");
                match node.apply_wire(peer_id, batches) {
                    Ok(_) => self.conn_mut(conn).ends[i].batch_messages_applied += 1,
                    Err(err) => {
                        self.fail(format!("{}: apply_wire failed: {err}", self.sites[site].name))
                    }
                }
            }
            self.crash(site);
            let down = self.rng.range(crate::world::MINUTE_MS, 3 * crate::world::HOUR_MS);
            self.after(down, Ev::Restart { site });
            return;
        }
        let count = batches.len() as u64;
        let node = self.sites[site].node.as_ref().expect("live end");
        match node.apply_wire(peer_id, batches) {
            Ok((vector, report, failed)) => {
                self.stats.batches_applied += report.applied_batches;
                self.stats.batches_present += report.present;
                self.stats.resent_bytes += frame * report.present / count.max(1);
                self.stats.batch_bytes_applied += frame;
                self.stats.rejected_batches += report.rejected.len() as u64;
                let counts = [report.applied_batches, report.present, failed as u64];
                let counts: Vec<u8> = counts.iter().flat_map(|n| n.to_le_bytes()).collect();
                self.trace(b"applied", &[&conn.to_le_bytes(), &counts]);
                self.vector_moved(site, &vector);
                if self.rng.chance(self.opts.merge_eager) {
                    let life = self.sites[site].life;
                    self.after(1, Ev::Merge { site, life });
                }
                let now = self.now;
                let e = &mut self.conn_mut(conn).ends[i];
                e.batch_messages_applied += 1;
                if failed > 0 {
                    // Forged or tampered batches: the peer is cut off (what verified stays).
                    let why = report.rejected.first().map_or(String::new(), |x| x.reason.clone());
                    e.session.handle_forbidden(format!(
                        "{failed} batches failed verification (first: {why})"
                    ));
                } else {
                    e.session.handle_applied(now, vector);
                }
            }
            Err(err) => {
                let e = &mut self.conn_mut(conn).ends[i];
                e.session.handle_local_error(format!("applying batches: {err}"));
                self.fail(format!("{}: apply_wire failed: {err}", self.sites[site].name));
            }
        }
        self.pump(conn, i);
    }

    /// After a session: the stream is finished behind the last frame, received changes are
    /// merged, the peer state is recorded, and a dialler's loop schedules its next round.
    fn session_ended(&mut self, conn: u64, i: usize, outcome: Outcome) {
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("the connection of a closing end");
        let (site, peer) = (c.ends[i].site, c.ends[i].peer);
        let (latency, _) = self.links[&(site, peer)];
        let dir = &mut c.dirs[i];
        let fin_at =
            (!dir.fin && dir.broken_at.is_none()).then(|| dir.last_arrival.max(now + latency));
        dir.fin = true;
        let e = &c.ends[i];
        let (dialer, life) = (e.dialer, e.life);
        let stats = e.session.stats().clone();
        let handshaken = e.session.handshaken();
        let peer_vector = e.session.peer_vector().clone();
        let (sent, received) = (e.bytes_sent, e.bytes_received);
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
        // Where the next audit upload to the parent starts (as `drive` records it).
        if let (Some(next), Some(node)) = (stats.audit_acked, self.sites[site].node.as_ref()) {
            let parent = self.sites[peer].id;
            if let Err(err) = node.store.audit_acked(&parent, next) {
                let m =
                    format!("{}: recording the audit cursor failed: {err}", self.sites[site].name);
                self.fail(m);
            }
        }
        if stats.batches_received > 0 || stats.bodies_received > 0 {
            self.after(MERGE_DELAY_MS, Ev::Merge { site, life });
        }
        let complete = outcome == Outcome::Complete;
        let peer_id = self.sites[peer].id;
        let t = self.sites[site].env.now_secs();
        if let Some(node) = self.sites[site].node.as_ref() {
            let rep = SessionReport {
                peer: peer_id.to_string(),
                outcome: text.clone(),
                complete,
                batches_sent: stats.batches_sent,
                batches_received: stats.batches_received,
                bytes_sent: sent,
                bytes_received: received,
                millis: 0,
            };
            let vector = handshaken.then_some(peer_vector);
            let r = node.store.update_peer_state(&peer_id, |s| record_session(s, t, vector, &rep));
            if let Err(err) = r {
                self.fail(format!("{}: recording peer state: {err}", self.sites[site].name));
            }
        }
        if dialer {
            self.next_dial(site, peer, complete);
        }
        self.gc(conn);
    }

    /// Forgets a connection both of whose ends are done, after checking that a cut cost at
    /// most the one `Batches` message in flight each way (a sender waits for the ack of one
    /// message before it sends the next: no livelock, bounded retransmission).
    pub fn gc(&mut self, conn: u64) {
        let Some(c) = self.conns.get(&conn).filter(|c| c.ends.iter().all(|e| e.done)) else {
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
}
