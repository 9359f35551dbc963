//! Unit tests of the session state machine: two sessions run against each other over toy
//! stores, with links cut, peers that refuse, and idle timeouts.
//!
//! A room of its own so `session.rs` reads as the state machine alone. The tests drive a
//! session only through its public calls, as a driver would; the toy store stands in for redb
//! and must stay a toy (no real store, no I/O).

use super::*;
use crate::batch::{BATCH_VERSION, Batch, ChangeRef};
use crate::id::{AuthorId, BodyHash, EntityId, EntityType, Incarnation, Uid};
use crate::identity::Keypair;
use std::collections::BTreeMap;

/// A toy store: the batches held per author (contiguous), with their wire form.
#[derive(Default)]
struct Toy {
    held: BTreeMap<AuthorId, Vec<WireBatch>>,
    audit: Vec<AuditEntry>,
    /// Parent: bodies to re-send (one per message); child: bodies received.
    resend: Vec<Vec<u8>>,
    delivered: Vec<BodyHash>,
    bodies: Vec<Vec<u8>>,
    /// Parent: bodies it holds that a child may report as holes; child: holes reported.
    known: Vec<Vec<u8>>,
    holes: Vec<(EntityId, BodyHash)>,
}

impl Toy {
    fn vector(&self) -> Vector {
        Vector(self.held.iter().map(|(a, v)| (*a, v.len() as u64)).collect())
    }
    fn fetch(&self, after: &Vector, max: usize) -> Vec<WireBatch> {
        let mut out = Vec::new();
        for (a, list) in &self.held {
            for b in list.iter().skip(after.get(a) as usize) {
                if out.len() < max {
                    out.push(b.clone());
                }
            }
        }
        out
    }
    fn apply(&mut self, batches: Vec<WireBatch>) {
        for b in batches {
            let list = self.held.entry(b.author()).or_default();
            if b.seq() == list.len() as u64 + 1 {
                list.push(b);
            }
        }
    }
}

fn batches(key: &Keypair, n: u64) -> Vec<WireBatch> {
    let author = AuthorId { node: key.node_id(), incarnation: Incarnation(1) };
    let entity = EntityId::new(EntityType::Generic, Uid::from_random([1; 16]));
    (1..=n)
        .map(|seq| {
            let body = vec![seq as u8];
            let changes = vec![ChangeRef { entity, body: BodyHash::of(&body) }];
            let prev = (seq > 1).then_some(crate::batch::BatchHash([0; 32]));
            let batch = Batch { version: BATCH_VERSION, author, seq, prev, changes };
            WireBatch::new(batch.sign(key), vec![body])
        })
        .collect()
}

/// Runs two sessions against each other until both close; `cut` drops every message after
/// that many have been delivered (a broken link).
fn run(
    a: &mut (Session, Toy),
    b: &mut (Session, Toy),
    cut: Option<usize>,
) -> (Outcome, Outcome, usize) {
    let mut delivered = 0;
    let mut outcomes = [None, None];
    for _ in 0..10_000 {
        let mut progressed = false;
        for (side, slot) in outcomes.iter_mut().enumerate() {
            let (me, other) = if side == 0 { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
            while let Some(effect) = me.0.poll_effect() {
                progressed = true;
                match effect {
                    Effect::Send(m) => {
                        if cut.is_none_or(|c| delivered < c) {
                            delivered += 1;
                            let bytes = super::super::message::encode(&m);
                            let m = super::super::message::decode(&bytes[4..]).expect("decode");
                            other.0.handle_message(0, m);
                        }
                    }
                    Effect::Fetch { after } => {
                        let got = me.1.fetch(&after, 2);
                        me.0.handle_fetched(0, got);
                    }
                    Effect::Apply { batches } => {
                        me.1.apply(batches);
                        let v = me.1.vector();
                        me.0.handle_applied(0, v);
                    }
                    Effect::StoreAudit { entries } => {
                        me.1.audit.extend(entries);
                        let next = me.1.audit.len() as u64;
                        me.0.handle_audit_stored(0, next);
                    }
                    Effect::FetchBodies => {
                        let acked = &me.1.delivered;
                        let next = me.1.resend.iter().find(|b| !acked.contains(&BodyHash::of(b)));
                        let items: Vec<ResendBody> = next
                            .map(|b| ResendBody {
                                anchor: "patient/x".into(),
                                hash: BodyHash::of(b),
                                body: b.clone(),
                            })
                            .into_iter()
                            .collect();
                        me.0.handle_bodies_fetched(0, items);
                    }
                    Effect::BodiesDelivered { items } => {
                        me.1.delivered.extend(items.iter().map(|b| b.hash));
                    }
                    Effect::StoreHoles { items } => {
                        // Taken over: the parent re-sends the bodies it holds.
                        for (_, hash) in &items {
                            if let Some(b) = me.1.known.iter().find(|b| BodyHash::of(b) == *hash) {
                                me.1.resend.push(b.clone());
                            }
                        }
                        me.1.holes.extend(items.iter().copied());
                        me.0.handle_holes_stored(0);
                    }
                    Effect::StoreBodies { bodies } => {
                        let hashes = bodies.iter().map(|b| BodyHash::of(b)).collect();
                        me.1.bodies.extend(bodies);
                        me.0.handle_bodies_stored(0, hashes);
                    }
                    Effect::Closed(o) => *slot = Some(o),
                }
            }
        }
        if !progressed {
            break;
        }
    }
    let [x, y] = outcomes;
    (x.unwrap_or(Outcome::TimedOut), y.unwrap_or(Outcome::TimedOut), delivered)
}

fn pair(ka: &Keypair, kb: &Keypair, ta: Toy, tb: Toy) -> ((Session, Toy), (Session, Toy)) {
    let a = Session::new(0, ka.node_id(), Role::Child, kb.node_id(), ta.vector());
    let b = Session::new(0, kb.node_id(), Role::Parent, ka.node_id(), tb.vector());
    ((a, ta), (b, tb))
}

#[test]
fn both_sides_get_what_they_lack() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut ta = Toy::default();
    ta.apply(batches(&ka, 5));
    let mut tb = Toy::default();
    tb.apply(batches(&kb, 3));
    let (mut a, mut b) = pair(&ka, &kb, ta, tb);
    let (oa, ob, _) = run(&mut a, &mut b, None);
    assert_eq!((oa, ob), (Outcome::Complete, Outcome::Complete));
    assert_eq!(a.1.vector(), b.1.vector());
    assert_eq!(a.0.stats().batches_sent, 5);
    assert_eq!(b.0.stats().batches_sent, 3);
}

#[test]
fn a_parent_resends_withheld_bodies_after_its_batches_one_message_at_a_time() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let (mut ta, mut tb) = (Toy::default(), Toy::default());
    ta.apply(batches(&ka, 2));
    tb.apply(batches(&kb, 3));
    tb.resend = vec![vec![1, 2, 3], vec![4, 5]];
    // A child never re-sends.
    ta.resend = vec![vec![9]];
    let (mut a, mut b) = pair(&ka, &kb, ta, tb);
    let (oa, ob, _) = run(&mut a, &mut b, None);
    assert_eq!((oa, ob), (Outcome::Complete, Outcome::Complete));
    assert_eq!(a.1.bodies, vec![vec![1, 2, 3], vec![4, 5]], "the child got both, in order");
    assert_eq!(b.1.delivered.len(), 2, "the parent forgot both once acked");
    assert!(b.1.bodies.is_empty() && a.1.delivered.is_empty());
    assert_eq!((b.0.stats().bodies_sent, a.0.stats().bodies_received), (2, 2));
    assert_eq!(a.1.vector(), b.1.vector());
}

#[test]
fn bodies_from_a_child_or_an_unexpected_ack_end_the_session() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let hello =
        |node: NodeId, role| Message::Hello { version: 1, node, role, vector: Vector::default() };
    let mut parent = Session::new(0, ka.node_id(), Role::Parent, kb.node_id(), Vector::default());
    parent.handle_message(1, hello(kb.node_id(), Role::Child));
    parent.handle_message(2, Message::Bodies { bodies: vec![ByteBuf::from(vec![1])] });
    assert!(parent.is_closed(), "a parent takes no bodies");
    let mut child = Session::new(0, ka.node_id(), Role::Child, kb.node_id(), Vector::default());
    child.handle_message(1, hello(kb.node_id(), Role::Parent));
    child.handle_message(2, Message::BodiesAck { hashes: Vec::new() });
    assert!(child.is_closed(), "a child sent no bodies");
}

#[test]
fn a_child_sends_its_audit_entries_and_learns_where_the_next_upload_starts() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut ta = Toy::default();
    ta.apply(batches(&ka, 2));
    let (mut a, mut b) = pair(&ka, &kb, ta, Toy::default());
    let entries: Vec<AuditEntry> =
        (0..3).map(|n| AuditEntry { n, stored: vec![n as u8; 40].into() }).collect();
    a.0.send_audit(entries.clone());
    // A parent never uploads its log to its child.
    b.0.send_audit(entries.clone());
    let (oa, ob, _) = run(&mut a, &mut b, None);
    assert_eq!((oa, ob), (Outcome::Complete, Outcome::Complete));
    assert_eq!(b.1.audit, entries, "the parent stored the child's entries");
    assert!(a.1.audit.is_empty());
    assert_eq!(a.0.stats().audit_acked, Some(3));
    assert_eq!(a.0.stats().audit_sent, 3);
}

/// A child reports the holes peers left in its batches after its own batches and before its
/// `Done`; the parent records them first, so its re-send at the end of the same round already
/// carries the bodies it holds. A parent never reports holes.
#[test]
fn a_child_reports_peer_holes_and_gets_the_bodies_in_the_same_round() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let (mut ta, mut tb) = (Toy::default(), Toy::default());
    ta.apply(batches(&ka, 2));
    tb.apply(batches(&kb, 1));
    let (held, missing) = (vec![7u8, 7, 7], vec![8u8]);
    tb.known = vec![held.clone()];
    let e = |n| EntityId::new(EntityType::Patient, Uid::from_random([n; 16]));
    let holes = vec![(e(1), BodyHash::of(&held)), (e(2), BodyHash::of(&missing))];
    let (mut a, mut b) = pair(&ka, &kb, ta, tb);
    a.0.send_holes(holes.clone());
    b.0.send_holes(holes.clone());
    let (oa, ob, _) = run(&mut a, &mut b, None);
    assert_eq!((oa, ob), (Outcome::Complete, Outcome::Complete));
    assert_eq!(b.1.holes, holes, "the parent took over both holes");
    assert!(a.1.holes.is_empty(), "a parent reports none");
    assert_eq!(a.0.stats().holes_acked, Some(2));
    assert_eq!(a.1.bodies, vec![held], "the body the parent holds came in the same round");
    assert_eq!(a.1.vector(), b.1.vector());
}

#[test]
fn a_cut_transfer_resumes_sending_at_most_the_message_in_flight() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut ta = Toy::default();
    ta.apply(batches(&ka, 9));
    let (mut a, mut b) = pair(&ka, &kb, ta, Toy::default());
    run(&mut a, &mut b, Some(5));
    let held_after_cut = b.1.vector().get(&a.1.held.keys().next().copied().expect("author"));
    assert!(held_after_cut > 0 && held_after_cut < 9, "{held_after_cut}");
    let sent_before = a.0.stats().batches_sent;
    // Reconnect: new sessions start from the durable vectors.
    let (ta, tb) = (std::mem::take(&mut a.1), std::mem::take(&mut b.1));
    let (mut a2, mut b2) = pair(&ka, &kb, ta, tb);
    let (oa, ob, _) = run(&mut a2, &mut b2, None);
    assert_eq!((oa, ob), (Outcome::Complete, Outcome::Complete));
    let total = sent_before + a2.0.stats().batches_sent;
    assert!(total - 9 <= 2, "resent {} batches (one message of at most 2)", total - 9);
    assert_eq!(a2.1.vector(), b2.1.vector());
}

#[test]
fn version_role_and_identity_mismatches_are_refused_explicitly() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut s = Session::new(0, ka.node_id(), Role::Child, kb.node_id(), Vector::default());
    s.poll_effect();
    s.handle_message(
        1,
        Message::Hello {
            version: 2,
            node: kb.node_id(),
            role: Role::Parent,
            vector: Vector::default(),
        },
    );
    let Some(Effect::Send(Message::Error { code: ErrorCode::Version, message })) = s.poll_effect()
    else {
        panic!("no version error")
    };
    assert!(message.contains("version 2") && message.contains("version 1"), "{message}");
    assert!(matches!(
        s.poll_effect(),
        Some(Effect::Closed(Outcome::Refused { code: ErrorCode::Version, .. }))
    ));

    let mut s = Session::new(0, ka.node_id(), Role::Child, kb.node_id(), Vector::default());
    s.poll_effect();
    s.handle_message(
        1,
        Message::Hello {
            version: 1,
            node: kb.node_id(),
            role: Role::Child,
            vector: Vector::default(),
        },
    );
    assert!(matches!(
        s.poll_effect(),
        Some(Effect::Send(Message::Error { code: ErrorCode::Forbidden, .. }))
    ));

    let mut s = Session::new(0, ka.node_id(), Role::Peer, kb.node_id(), Vector::default());
    s.poll_effect();
    s.handle_message(
        1,
        Message::Hello {
            version: 1,
            node: ka.node_id(),
            role: Role::Peer,
            vector: Vector::default(),
        },
    );
    assert!(matches!(
        s.poll_effect(),
        Some(Effect::Send(Message::Error { code: ErrorCode::Forbidden, .. }))
    ));
}

#[test]
fn bytes_still_moving_keep_a_slow_session_alive() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut s = Session::new(0, ka.node_id(), Role::Peer, kb.node_id(), Vector::default());
    s.poll_effect();
    s.handle_activity(SESSION_IDLE_MS - 1);
    s.handle_timeout(SESSION_IDLE_MS);
    assert!(!s.is_closed(), "part of a message arrived recently");
    s.handle_timeout(2 * SESSION_IDLE_MS);
    assert!(s.is_closed());
}

#[test]
fn out_of_order_messages_and_silence_end_the_session() {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut s = Session::new(0, ka.node_id(), Role::Peer, kb.node_id(), Vector::default());
    s.poll_effect();
    s.handle_message(1, Message::Ack { vector: Vector::default() });
    assert!(matches!(
        s.poll_effect(),
        Some(Effect::Send(Message::Error { code: ErrorCode::Protocol, .. }))
    ));

    let mut s = Session::new(0, ka.node_id(), Role::Peer, kb.node_id(), Vector::default());
    assert_eq!(s.poll_timeout(), Some(SESSION_IDLE_MS));
    s.handle_timeout(SESSION_IDLE_MS);
    s.poll_effect();
    assert!(matches!(s.poll_effect(), Some(Effect::Closed(Outcome::TimedOut))));
}
