//! Unit tests of the session host: the writer backlog limit, the order of a session's end,
//! the idle timer while a receipt runs.

use super::*;

fn ids() -> (NodeId, NodeId) {
    (NodeId([1; 32]), NodeId([2; 32]))
}

/// A peer-to-peer session on `a` that got `b`'s Hello and fetched nothing to send.
fn handshaken_host() -> SessionHost {
    let (a, b) = ids();
    let mut host = SessionHost::new(a, b, Role::Peer, Vector::default(), 0);
    let Some(Action::Transmit { batches: false, .. }) = host.poll(0) else {
        panic!("the host sends Hello first")
    };
    let hello = Message::Hello {
        version: crate::protocol::message::PROTOCOL_VERSION,
        node: b,
        role: Role::Peer,
        vector: Vector::default(),
    };
    host.handle_message(1, hello, 40);
    let Some(Action::Run(Job { kind: JobKind::Fetch { .. }, .. })) = host.poll(1) else {
        panic!("after the peer's Hello the host fetches what the peer lacks")
    };
    host
}

#[test]
fn a_peer_that_stops_reading_is_cut_off() {
    let mut host = handshaken_host();
    // The writer wrote nothing: the Hello and 63 more frames are still queued.
    host.frames_handed = WRITE_BACKLOG_MAX as u64;
    host.complete(2, Done::Fetched(Ok((Vec::new(), Vec::new()))));
    let mut closed = None;
    while let Some(a) = host.poll(2) {
        if let Action::Closed(o) = a {
            closed = Some(o);
        }
    }
    let Some(Outcome::Refused { reason, .. }) = closed else {
        panic!("the session ends refused: {closed:?}")
    };
    assert_eq!(reason, "the peer stopped reading");
}

#[test]
fn a_peer_that_reads_is_not_cut_off() {
    let mut host = handshaken_host();
    host.frames_handed = WRITE_BACKLOG_MAX as u64;
    host.written(WRITE_BACKLOG_MAX as u64, 4_000);
    host.complete(2, Done::Fetched(Ok((Vec::new(), Vec::new()))));
    let Some(Action::Transmit { .. }) = host.poll(2) else { panic!("Done is sent") };
    assert!(host.poll(2).is_none(), "nothing more until the peer is done too");
}

/// After the session closes: the writer drains, then (nothing was received, so no merge)
/// the record job, then the end, with what was written and read.
#[test]
fn a_closed_session_is_recorded_then_ends() {
    let mut host = handshaken_host();
    host.handle_disconnect("gone".into());
    host.complete(3, Done::Fetched(Ok((Vec::new(), Vec::new()))));
    let Some(Action::Closed(Outcome::Lost { .. })) = host.poll(3) else {
        panic!("the session closes")
    };
    assert!(host.poll(3).is_none(), "nothing before the writer drained");
    host.written(1, 70);
    host.drained();
    let Some(Action::Run(Job { kind: JobKind::Record { report, vector, .. }, .. })) = host.poll(9)
    else {
        panic!("the record comes next when nothing was received")
    };
    assert_eq!((report.bytes_sent, report.bytes_received, report.millis), (70, 40, 9));
    assert!(!report.complete && report.outcome.contains("gone"), "{report:?}");
    assert_eq!(vector, Some(Vector::default()), "the peer's vector, from its Hello");
    host.complete(10, Done::Recorded(Ok(())));
    let Some(Action::Ended(ended)) = host.poll(10) else { panic!("then the end") };
    assert_eq!(ended, report, "the report recorded is the report returned");
    assert!(host.poll(10).is_none());
}

/// While a receipt runs, the peer waits for this node: the session's idle timer does not
/// run out.
#[test]
fn a_running_receipt_holds_off_the_idle_timeout() {
    let mut host = handshaken_host();
    host.waiting = true;
    let late = crate::protocol::session::SESSION_IDLE_MS * 3;
    host.handle_timeout(late);
    assert!(host.poll_timeout().is_some_and(|t| t > late), "still open");
    host.waiting = false;
    host.handle_timeout(late * 3);
    assert!(host.poll_timeout().is_none(), "idle for real: closed");
}
