//! The QUIC driver of a [`SessionHost`]: it only moves bytes and runs jobs. A reader task
//! decodes frames from the stream (so a timer never cancels a half-read frame), a writer task
//! writes frames (so both sides can send at once), and store jobs run on tokio's blocking pool;
//! everything the session means for the node is the host's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::super::session_host::{Action, Done, JobKind, SessionHost, SessionReport};
use super::super::{Node, SyncProgress};
use crate::id::NodeId;
use crate::protocol::message::{self, Message, Role};
use crate::transport::{self, ReadError};

/// Socket reads and writes are done in pieces of this size, each counting as activity.
pub const IO_CHUNK_BYTES: usize = 64 * 1024;
/// How long a finished session waits for its last messages to be written.
pub const WRITER_DRAIN_MS: u64 = 10_000;

/// What the writer task has written so far, and when bytes last moved either way
/// (milliseconds since the session started).
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    activity: AtomicU64,
}

/// Runs one session over an open bidirectional stream until it ends and is recorded.
pub async fn drive(
    node: Arc<Node>,
    conn: &quinn::Connection,
    peer: NodeId,
    role: Role,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    progress: Option<Box<dyn SyncProgress>>,
) -> SessionReport {
    let started = Instant::now();
    let now = move || transport::millis_since(started);
    let n = node.clone();
    let mut host = match tokio::task::spawn_blocking(move || SessionHost::start(&n, peer, 0)).await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => SessionHost::failed_start(node.id(), peer, role, now(), e.to_string()),
        Err(e) => SessionHost::failed_start(node.id(), peer, role, now(), e.to_string()),
    };
    let counters = Arc::new(Counters::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let w = counters.clone();
    let writer = tokio::spawn(async move {
        'frames: while let Some(bytes) = rx.recv().await {
            for chunk in bytes.chunks(IO_CHUNK_BYTES) {
                if send.write_all(chunk).await.is_err() {
                    break 'frames;
                }
                w.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                w.activity.store(transport::millis_since(started), Ordering::Relaxed);
            }
            w.frames.fetch_add(1, Ordering::Relaxed);
        }
        let _ = send.finish();
        // Wait until the peer has read everything (or a short grace), so closing the
        // connection right after cannot cut our last message.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    });
    let (rtx, mut rrx) = mpsc::channel::<Result<(Message, usize), ReadError>>(1);
    let r = counters.clone();
    let reader = tokio::spawn(async move {
        let mut decoder = message::Decoder::default();
        loop {
            let read = transport::read_message_with(&mut recv, &mut decoder, &mut || {
                r.activity.store(transport::millis_since(started), Ordering::Relaxed);
            })
            .await;
            let stop = read.is_err();
            if rtx.send(read).await.is_err() || stop {
                break;
            }
        }
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let (mut writer, mut sized) = (Some(writer), false);
    let mut tx = Some(tx);
    // The reader stops after the stream ends or breaks; its channel then answers at once, so
    // it is not polled again (a receipt may still be running).
    let mut reading = true;
    loop {
        host.written(
            counters.frames.load(Ordering::Relaxed),
            counters.bytes.load(Ordering::Relaxed),
        );
        while let Some(action) = host.poll(now()) {
            match action {
                Action::Transmit { frame, .. } => {
                    if let Some(tx) = &tx {
                        let _ = tx.send(frame);
                    }
                }
                Action::Run(job) => {
                    if let (Some(p), JobKind::Apply { batches }) = (&progress, &job.kind) {
                        p.advance(batches.len() as u64);
                    }
                    let (n, done_tx) = (node.clone(), done_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = done_tx.send(job.run_caught(&n));
                    });
                }
                Action::Closed(_) => {
                    reader.abort();
                    tx = None;
                    drain(conn, writer.take()).await;
                    let (frames, bytes) = (&counters.frames, &counters.bytes);
                    host.written(frames.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
                    host.drained();
                    if let Some(p) = &progress {
                        p.finish();
                    }
                }
                Action::Ended(report) => return report,
            }
        }
        let closing = tx.is_none();
        let wait = match host.poll_timeout() {
            Some(deadline) => Duration::from_millis(deadline.saturating_sub(now())),
            None => Duration::MAX,
        };
        tokio::select! {
            Some(done) = done_rx.recv() => host.complete(now(), done),
            read = rrx.recv(), if !closing && reading => match read {
                Some(Ok((m, bytes))) => {
                    host.handle_message(now(), m, bytes as u64);
                    if let Some(p) = progress.as_ref().filter(|_| !sized && host.handshaken()) {
                        p.length(host.batches_to_receive());
                        sized = true;
                    }
                }
                Some(Err(ReadError::Codec(e))) => {
                    reading = false;
                    host.handle_malformed(e.to_string(), 0)
                }
                Some(Err(e)) => {
                    reading = false;
                    let why = conn.close_reason().map_or_else(|| e.to_string(), |r| describe_close(&r));
                    host.handle_disconnect(why)
                }
                None => {
                    reading = false;
                    host.handle_disconnect("the reader stopped".into())
                }
            },
            _ = tokio::time::sleep(wait), if !closing => {
                host.handle_activity(counters.activity.load(Ordering::Relaxed));
                host.handle_timeout(now());
            }
        }
    }
}

/// Lets the writer finish the last messages. A peer that stopped reading must not hold the
/// session: the writer gets a deadline, then the connection is closed under it.
async fn drain(conn: &quinn::Connection, writer: Option<tokio::task::JoinHandle<()>>) {
    let Some(writer) = writer else { return };
    if tokio::time::timeout(Duration::from_millis(WRITER_DRAIN_MS), writer).await.is_err() {
        conn.close(2u32.into(), b"peer stopped reading");
    }
}

/// Says why a connection closed, in an operator's words where the cause is known.
pub fn describe_close(reason: &quinn::ConnectionError) -> String {
    let raw = reason.to_string();
    // TLS alert 120 (no_application_protocol): the ALPN, i.e. the protocol version, differs.
    if raw.contains("known protocol") || raw.contains("error 120") {
        format!(
            "the peer speaks another protocol version (this node offers ALPN {}): {raw}",
            String::from_utf8_lossy(transport::ALPN)
        )
    } else if raw.contains("cryptographic handshake") || raw.contains("certificate") {
        format!(
            "the peer refused this node's key in the TLS handshake (is this node configured as \
             its peer?): {raw}"
        )
    } else {
        format!("connection closed: {raw}")
    }
}
