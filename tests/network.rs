//! Network sync end to end: real `sitesync serve` processes on loopback QUIC, driven through
//! the CLI (`peer add`, `network`, `serve`, `sync`, `status --json`), plus an in-process QUIC
//! client (the crate's own `transport::client_config`) that plays unknown, hostile and
//! wrong-version peers.
//!
//! Every `serve` is held by a guard that SIGKILLs it on drop; every wait is bounded.

mod net;

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT};
use net::*;
use serde_json::{Value, json};
use sitesync::batch::{BATCH_VERSION, Batch, ChangeRef};
use sitesync::id::{AuthorId, BodyHash, EntityId, Incarnation, NodeId, Vector};
use sitesync::identity::Keypair;
use sitesync::protocol::message::{self, ErrorCode, FRAME_BYTES_MAX, Message, Role, WireBatch};
use sitesync::transport::ALPN;

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A key no node was configured with.
fn stranger_key() -> Keypair {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("random");
    Keypair::from_secret(secret)
}

/// Status of every node, for failure messages.
fn statuses(nodes: &[&Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let s = n.try_status().unwrap_or(Value::Null);
        let peers: Vec<Value> = s["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                json!({"peer": p["name"], "role": p["role"], "last_error": p["last_error"],
                       "last_success": p["last_success"], "sessions": p["sessions"],
                       "sent": p["batches_sent"], "received": p["batches_received"]})
            })
            .collect();
        out += &format!(
            "{}: digest {} batches {} entities {} vector {}\n  peers {}\n",
            n.name,
            s["digest"],
            s["batches"],
            s["entities"],
            s["vector"],
            json!(peers)
        );
    }
    out
}

/// Waits (bounded) until every node reports the same digest; returns it.
fn wait_converged(nodes: &[&Node], max: Duration) -> Option<String> {
    wait_for(max, || {
        let digests: Vec<String> = nodes
            .iter()
            .map(|n| n.try_status().and_then(|s| s["digest"].as_str().map(str::to_string)))
            .collect::<Option<_>>()?;
        digests.windows(2).all(|w| w[0] == w[1]).then(|| digests[0].clone())
    })
}

fn has_author_of(status: &Value, node: &NodeId) -> bool {
    let prefix = node.to_string();
    status["vector"].as_object().is_some_and(|m| m.keys().any(|k| k.starts_with(&prefix)))
}

// ---------------------------------------------------------------------------------------------
// 1. A parent, three children and a peer link converge
// ---------------------------------------------------------------------------------------------

#[test]
fn parent_three_children_and_a_peer_link_converge() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "parent");
    let c1 = Node::init(tmp.path(), "child-1");
    let c2 = Node::init(tmp.path(), "child-2");
    let c3 = Node::init(tmp.path(), "child-3");
    let (pp, c2p) = (addr(free_port()), addr(free_port()));

    parent.network(Some(&pp), 1);
    for c in [&c1, &c2, &c3] {
        parent.peer_add(c, "child", None);
        c.peer_add(&parent, "parent", Some(&pp));
    }
    c1.network(None, 1);
    c2.network(Some(&c2p), 1);
    c3.network(None, 1);
    // The peer link: C2 listens, C1 dials it.
    c1.peer_add(&c2, "peer", Some(&c2p));
    c2.peer_add(&c1, "peer", None);

    let mut written: Vec<(String, Vec<Value>)> = Vec::new();
    for n in [&parent, &c1, &c2, &c3] {
        let list = patients(&n.name, 5);
        n.put("patient", &Value::Array(list.clone()));
        written.push((n.name.clone(), list));
    }
    let total = 20;

    let started = Instant::now();
    let servers: Vec<Serve> = [&parent, &c1, &c2, &c3].iter().map(|n| n.serve()).collect();
    let all = [&parent, &c1, &c2, &c3];
    let converged = wait_converged(&all, WAIT_MAX);
    assert!(
        converged.is_some(),
        "the four nodes did not converge within {WAIT_MAX:?}:\n{}",
        statuses(&all)
    );
    eprintln!("converged in {:?}", started.elapsed());
    for n in all {
        let s = n.status();
        assert_eq!(patients_in(&s), total, "{} holds every patient:\n{}", n.name, statuses(&all));
        for author in [&parent, &c1, &c2, &c3] {
            assert!(
                has_author_of(&s, &author.node_id()),
                "{} holds batches of {}: {s:#}",
                n.name,
                author.name
            );
        }
    }

    // Every configured link, including the peer link both ways, has completed a session.
    let links = [
        (&parent, &c1),
        (&parent, &c2),
        (&parent, &c3),
        (&c1, &parent),
        (&c2, &parent),
        (&c3, &parent),
        (&c1, &c2),
        (&c2, &c1),
    ];
    let linked = wait_for(WAIT_MAX, || {
        links
            .iter()
            .all(|(a, b)| {
                a.try_status().is_some_and(|s| peer_entry(&s, &b.id)["last_success"].is_i64())
            })
            .then_some(())
    });
    assert!(linked.is_some(), "a link never completed a session:\n{}", statuses(&all));

    // A child syncs with its parent on demand: one line naming the parent, "complete".
    let r = c3.sync(Some(&parent));
    assert!(r.code == Some(0) && !r.panicked(), "sync --peer parent: {}", r.describe());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line per session: {}", r.stdout);
    assert!(
        lines[0].contains(&parent.id) && lines[0].contains("complete"),
        "the line names the peer and says complete: {}",
        r.stdout
    );
    let s = c3.status();
    let entry = peer_entry(&s, &parent.id);
    assert!(entry["last_success"].is_i64(), "{entry:#}");
    assert!(entry["last_error"].is_null(), "{entry:#}");

    // Stop every node (SIGTERM) and read a record written at C3 back at C1: it travelled
    // C3 -> parent -> C1 (and possibly C3 -> parent -> C2 -> C1).
    for s in servers {
        s.stop();
    }
    for n in all {
        assert!(!n.dir.join("control.json").exists(), "{}: control.json removed on exit", n.name);
    }
    let (_, from_c3) = written.iter().find(|(name, _)| name == "child-3").expect("c3 records");
    for rec in from_c3 {
        let uuid = rec["uuid"].as_str().expect("uuid");
        let got: Value = serde_json::from_str(&c1.ok(&["get", "patient", uuid])).expect("JSON");
        assert_eq!(normalized(&got), normalized(rec), "C3's record {uuid} at C1");
    }
}

/// A record with the items of its collections sorted by uuid (`get` lists keyed collections
/// in uuid order, not in the order they were put).
fn normalized(record: &Value) -> Value {
    let mut out = record.clone();
    if let Some(obj) = out.as_object_mut() {
        for v in obj.values_mut() {
            if let Some(items) = v.as_array_mut() {
                items.sort_by(|a, b| a["uuid"].as_str().cmp(&b["uuid"].as_str()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 2. Unknown keys are refused in the handshake
// ---------------------------------------------------------------------------------------------

/// How an in-process dial as an unknown key ended.
#[derive(Debug)]
enum Refusal {
    /// The connection attempt itself failed.
    Dial(String),
    /// The client's side of the handshake completed (TLS 1.3 lets the client finish before the
    /// server has checked its key), then the server closed the connection with this reason
    /// before any stream was opened.
    ClosedBeforeStreams(String),
    /// The connection stayed usable: the refusal did not happen.
    Open,
}

/// Dials P as `key`; if the dial returns a connection, waits (bounded) for the server to close
/// it without opening any stream.
async fn dial_refused(key: &Keypair, server: NodeId, at: std::net::SocketAddr) -> Refusal {
    let ep = client_endpoint();
    let r = match dial(&ep, key, server, ALPN, at).await {
        Err(e) => Refusal::Dial(e),
        Ok(conn) => match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
            Ok(reason) => Refusal::ClosedBeforeStreams(reason.to_string()),
            Err(_) => Refusal::Open,
        },
    };
    ep.close(0u32.into(), b"done");
    r
}

#[test]
fn unknown_keys_are_refused_in_the_handshake() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "parent");
    let unknown = Node::init(tmp.path(), "unknown");
    let misled = Node::init(tmp.path(), "misled");
    let other = Node::init(tmp.path(), "other");
    let pp = addr(free_port());
    parent.network(Some(&pp), 1);
    parent.peer_add(&misled, "child", None);
    // The unknown node thinks P is its parent; P does not list it.
    unknown.peer_add(&parent, "parent", Some(&pp));
    unknown.network(None, 1);
    // The misled child has the right address but the wrong parent id (another node's).
    misled.peer_add_id(&other.id, "parent", Some(&pp));
    misled.network(None, 1);
    parent.put("patient", &Value::Array(patients("parent", 3)));
    unknown.put("patient", &Value::Array(patients("unknown", 3)));
    misled.put("patient", &Value::Array(patients("misled", 3)));

    let mut p_srv = parent.serve();
    let before = parent.status();
    let _u_srv = unknown.serve();
    let _m_srv = misled.serve();
    // Every check runs; the failures are reported together.
    let mut problems: Vec<String> = Vec::new();
    let names_handshake = |err: &str| {
        let lower = err.to_lowercase();
        lower.contains("handshake") || lower.contains("certificate")
    };

    // (a) The unknown node's sync fails and says why.
    let r = unknown.sync(None);
    eprintln!("unknown node's sync: {}", r.describe());
    if r.code != Some(1) || !r.stdout.contains(&parent.id) || r.stdout.contains("complete") {
        problems.push(format!("(a) sync must fail naming the parent: {}", r.describe()));
    }
    let s = unknown.status();
    let err = peer_entry(&s, &parent.id)["last_error"].as_str().unwrap_or("").to_string();
    eprintln!("(a) unknown node's last_error: {err}");
    if !names_handshake(&err) {
        problems.push(format!(
            "(a) the unknown node's last_error does not name the handshake refusal: {err:?}"
        ));
    }
    if has_author_of(&s, &parent.node_id()) {
        problems.push(format!("(a) the unknown node received the parent's batches: {s:#}"));
    }

    // (b) The misled child's sync fails in the handshake; nothing is exchanged either way.
    let r = misled.sync(None);
    eprintln!("misled child's sync: {}", r.describe());
    if r.code != Some(1) || !r.stdout.contains(&other.id) || r.stdout.contains("complete") {
        problems.push(format!("(b) sync must fail naming the configured parent: {}", r.describe()));
    }
    let s = misled.status();
    let err = peer_entry(&s, &other.id)["last_error"].as_str().unwrap_or("").to_string();
    eprintln!("(b) misled child's last_error: {err}");
    if !(err.to_lowercase().contains("connect") && names_handshake(&err)) {
        problems.push(format!("(b) last_error does not name the handshake failure: {err:?}"));
    }
    if has_author_of(&s, &parent.node_id()) {
        problems.push(format!("(b) the misled child received the parent's batches: {s:#}"));
    }

    // In-process: an unknown key dialling P (with P's right id), and a configured key that
    // expects another server key.
    let rt = runtime();
    let p_addr = pp.parse().expect("addr");
    let stranger = stranger_key();
    let unknown_key = rt.block_on(dial_refused(&stranger, parent.node_id(), p_addr));
    eprintln!("in-process, unknown key dialling P: {unknown_key:?}");
    match &unknown_key {
        Refusal::Dial(e) | Refusal::ClosedBeforeStreams(e) if names_handshake(e) => {}
        other => problems.push(format!(
            "in-process: an unknown key must be refused in the handshake, got {other:?}"
        )),
    }
    let wrong_server = rt.block_on(dial_refused(&misled.keypair(), other.node_id(), p_addr));
    eprintln!("in-process, expecting another server key: {wrong_server:?}");
    match &wrong_server {
        Refusal::Dial(e) if names_handshake(e) => {}
        other => problems.push(format!(
            "in-process: a server holding another key must fail the dial, got {other:?}"
        )),
    }

    // P gained nothing from anyone, and still serves.
    if !p_srv.alive() {
        problems.push("the parent died".into());
    }
    let after = parent.status();
    if after["vector"] != before["vector"] || after["digest"] != before["digest"] {
        problems.push(format!("the parent's store changed: {before:#} -> {after:#}"));
    }
    if has_author_of(&after, &unknown.node_id()) || has_author_of(&after, &misled.node_id()) {
        problems.push(format!("the parent holds batches of a refused node: {after:#}"));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. A transfer cut by kill -9 resumes, resending at most one batch
// ---------------------------------------------------------------------------------------------

#[test]
fn a_transfer_cut_by_kill_9_resumes_and_resends_at_most_one_batch() {
    const PUTS: u64 = 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "parent");
    let child = Node::init(tmp.path(), "child");
    let pp = addr(free_port());
    parent.network(Some(&pp), 1);
    parent.peer_add(&child, "child", None);
    child.peer_add(&parent, "parent", Some(&pp));
    child.network(None, 1);
    // 20 puts of 1,000 patients: 20 batches of about 1 MB of change bodies each, above
    // MESSAGE_BODY_BYTES_TARGET, so every Batches message carries exactly one of them.
    let setup = Instant::now();
    for i in 0..PUTS {
        child.put("patient", &Value::Array(patients(&format!("b{i}"), 1000)));
    }
    // What the parent lacks: every batch the child holds (its 20 puts and its roster).
    let backlog = child.status()["batches"].as_u64().expect("batches");
    assert!(backlog >= PUTS, "{backlog}");
    let p_own = parent.status()["batches"].as_u64().expect("batches");
    eprintln!("backlog of {backlog} batches written in {:?}", setup.elapsed());

    let p_srv = parent.serve();
    let _c_srv = child.serve();
    // Kill the parent mid-transfer: poll as fast as status answers (bounded).
    let held = wait_for(WAIT_MAX, || {
        let b = parent.try_status()?["batches"].as_u64()?;
        (b > p_own + 1).then_some(b - p_own)
    });
    let held =
        held.unwrap_or_else(|| panic!("no batch arrived:\n{}", statuses(&[&parent, &child])));
    assert!(held < backlog, "the transfer finished ({held} batches) before the kill could cut it");
    p_srv.kill9();
    eprintln!("killed the parent holding {held} of the child's {backlog} batches");

    let restarted = Instant::now();
    // Restarted merging after every message, while the resumed transfer goes on (the default
    // is every 30 s of a long session).
    let p_srv = parent.serve_env(&[(sitesync::node::session_host::MERGE_EVERY_ENV, "0")]);
    let after_restart = parent.status()["batches"].as_u64().expect("batches") - p_own;
    assert!(after_restart >= held, "what was applied stayed: {after_restart} < {held}");
    // The child's cut session ends when QUIC's idle timeout (30 s) notices the dead peer; then
    // its next round resumes from the parent's durable vector.
    let max = Duration::from_millis(u64::from(sitesync::transport::IDLE_TIMEOUT_MS))
        + Duration::from_secs(40);
    let done = wait_for(max, || {
        let s = parent.try_status()?;
        (s["batches"].as_u64()? == p_own + backlog).then_some(())
    });
    assert!(done.is_some(), "the transfer did not resume:\n{}", statuses(&[&parent, &child]));
    eprintln!("resumed and finished {:?} after the restart", restarted.elapsed());
    let ok = wait_converged(&[&parent, &child], WAIT_MAX);
    assert!(ok.is_some(), "digests differ:\n{}", statuses(&[&parent, &child]));

    // What the child sent, summed over its sessions with the parent: the backlog plus what was
    // sent again. The cut session's count includes the message in flight when the parent died
    // (batches_sent counts batches put into Batches messages, acknowledged or not).
    let s = child.status();
    let entry = peer_entry(&s, &parent.id);
    eprintln!("child's view of the parent: {entry:#}");
    let sent = entry["batches_sent"].as_u64().expect("batches_sent");
    assert!(entry["sessions"].as_u64().unwrap_or(0) >= 2, "a cut session and a resumed one");
    assert!(
        sent >= backlog,
        "the child counted {sent} batches sent, fewer than the {backlog} the parent lacked"
    );
    let resent = sent - backlog;
    assert!(resent <= 1, "the child sent {resent} batches again after the cut (at most 1)");
    // The resumed session merged while it received, and the digests still converged (above).
    // Its log line comes after the closing exchange and the final merge: wait for it.
    let during = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("session ended"))
            .filter_map(|l| {
                l.split("merged_during=").nth(1)?.split(' ').next()?.parse::<u64>().ok()
            })
            .sum()
    };
    let merged = wait_for(WAIT_MAX, || (during(&p_srv.log_text()) >= 1).then_some(()));
    let log = p_srv.log_text();
    assert!(merged.is_some(), "no merge during the resumed session:\n{log}");
    assert!(!log.contains("merging during the session:"), "a merge during it failed:\n{log}");
    drop(p_srv);
}

// ---------------------------------------------------------------------------------------------
// 4. A hostile peer is cut off and the node keeps serving
// ---------------------------------------------------------------------------------------------

/// A signed one-change batch by `key` (an Automerge change whose actor is its author).
fn foreign_batch(key: &Keypair) -> WireBatch {
    let author = AuthorId { node: key.node_id(), incarnation: Incarnation(7) };
    let mut d = Automerge::new();
    d.set_actor(ActorId::from(author.actor_bytes()));
    let mut tx = d.transaction();
    tx.put(ROOT, "planted", 1).expect("put");
    tx.commit();
    let body = d.get_changes(&[]).into_iter().next().expect("a change").raw_bytes().to_vec();
    let entity: EntityId = format!("generic/{}", uuid()).parse().expect("entity id");
    let changes = vec![ChangeRef { entity, body: BodyHash::of(&body) }];
    let batch = Batch { version: BATCH_VERSION, author, seq: 1, prev: None, changes };
    WireBatch::new(batch.sign(key), vec![body])
}

/// Opens a connection and a stream as `key`, writes `frames`, and reads what P answers.
async fn attack(
    key: &Keypair,
    server: NodeId,
    at: std::net::SocketAddr,
    frames: &[Vec<u8>],
) -> (Vec<Message>, String) {
    let ep = client_endpoint();
    let conn = dial(&ep, key, server, ALPN, at).await.expect("a configured child connects");
    let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
    for f in frames {
        if let Err(e) = send.write_all(f).await {
            return (vec![], format!("write failed: {e}"));
        }
    }
    let out = read_until_end(&mut recv).await;
    conn.close(0u32.into(), b"done");
    ep.close(0u32.into(), b"done");
    out
}

fn error_of(messages: &[Message]) -> Option<(ErrorCode, String)> {
    messages.iter().find_map(|m| match m {
        Message::Error { code, message } => Some((*code, message.clone())),
        _ => None,
    })
}

#[test]
fn a_hostile_peer_is_cut_off_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "parent");
    let hostile = Node::init(tmp.path(), "hostile");
    let good = Node::init(tmp.path(), "good");
    let pp = addr(free_port());
    parent.network(Some(&pp), 1);
    parent.peer_add(&hostile, "child", None);
    parent.peer_add(&good, "child", None);
    good.peer_add(&parent, "parent", Some(&pp));
    good.network(None, 1);
    parent.put("patient", &Value::Array(patients("parent", 3)));
    good.put("patient", &Value::Array(patients("good", 4)));

    let mut p_srv = parent.serve();
    let h_key = hostile.keypair();
    let stranger = stranger_key();
    let p_addr: std::net::SocketAddr = pp.parse().expect("addr");
    let p_id = parent.node_id();

    let hello = message::encode(&Message::Hello {
        version: 1,
        node: h_key.node_id(),
        role: Role::Child,
        vector: Vector::default(),
    });
    // (a) garbage: a small frame whose flags and payload are nonsense.
    let mut garbage = 13u32.to_le_bytes().to_vec();
    garbage.extend([0u8, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8, 0x81, 0x82, 0x83, 0x84]);
    // (b) a length prefix above FRAME_BYTES_MAX (and a few bytes after it).
    let mut huge = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
    huge.extend([0u8; 64]);
    // (c) a valid hello, then a batch signed by a key P does not know.
    let forged = message::encode(&Message::Batches { batches: vec![foreign_batch(&stranger)] });

    let rt = runtime();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("garbage", vec![garbage]),
        ("oversized frame", vec![huge]),
        ("stranger's batch", vec![hello, forged]),
    ];
    for (what, frames) in cases {
        let (messages, end) = rt.block_on(attack(&h_key, p_id, p_addr, &frames));
        let kinds: Vec<&str> = messages.iter().map(Message::kind).collect();
        let err = error_of(&messages);
        eprintln!("{what}: P sent {kinds:?}, {end}; error {err:?}");
        assert!(
            err.is_some() || end.starts_with("ended"),
            "{what}: P must answer with an Error or close the stream, got {kinds:?}, {end}"
        );
        if let Some((code, text)) = &err {
            let want =
                if what == "stranger's batch" { ErrorCode::Forbidden } else { ErrorCode::Protocol };
            assert_eq!(*code, want, "{what}: {text}");
        }
        assert!(p_srv.alive(), "P survived the {what}");
        assert!(parent.try_status().is_some(), "P answers status after the {what}");
    }

    let s = parent.status();
    assert!(!has_author_of(&s, &stranger.node_id()), "nothing of the stranger is held: {s:#}");
    let last_error = peer_entry(&s, &hostile.id)["last_error"].clone();
    eprintln!("P's last_error for the hostile child: {last_error}");
    assert!(last_error.is_string(), "P recorded the hostile session's failure: {s:#}");

    // The good child still syncs, and its data reaches P.
    let _g_srv = good.serve();
    let r = good.sync(Some(&parent));
    assert!(
        r.code == Some(0) && r.stdout.contains("complete"),
        "good child's sync: {}",
        r.describe()
    );
    let s = parent.status();
    assert!(has_author_of(&s, &good.node_id()), "the good child's batches reached P: {s:#}");
    assert_eq!(patients_in(&s), 7, "{s:#}");
    assert!(!has_author_of(&s, &stranger.node_id()));
    assert!(p_srv.alive());
}

// ---------------------------------------------------------------------------------------------
// 5. Mixed protocol versions refuse explicitly
// ---------------------------------------------------------------------------------------------

#[test]
fn mixed_protocol_versions_refuse_explicitly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "parent");
    let kid = Node::init(tmp.path(), "kid");
    let pp = addr(free_port());
    parent.network(Some(&pp), 1);
    parent.peer_add(&kid, "child", None);
    parent.put("patient", &Value::Array(patients("parent", 2)));
    let mut p_srv = parent.serve();
    let key = kid.keypair();
    let p_addr: std::net::SocketAddr = pp.parse().expect("addr");
    let rt = runtime();

    // A version-2 Hello over sitesync/1.
    let hello2 = message::encode(&Message::Hello {
        version: 2,
        node: key.node_id(),
        role: Role::Child,
        vector: Vector::default(),
    });
    let (messages, end) = rt.block_on(attack(&key, parent.node_id(), p_addr, &[hello2]));
    let kinds: Vec<&str> = messages.iter().map(Message::kind).collect();
    eprintln!("version 2 hello: P sent {kinds:?}, {end}");
    let (code, text) = error_of(&messages).unwrap_or_else(|| {
        panic!("P must answer a version-2 hello with an Error: {kinds:?}, {end}")
    });
    eprintln!("P's error: {code:?}: {text}");
    assert_eq!(code, ErrorCode::Version);
    assert!(
        text.contains("version 2") && text.contains("version 1"),
        "names both versions: {text}"
    );

    let recorded = wait_for(WAIT_MAX, || {
        let s = parent.try_status()?;
        let e = peer_entry(&s, &kid.id)["last_error"].as_str()?.to_string();
        e.contains("version").then_some(e)
    });
    assert!(
        recorded.is_some(),
        "P's status shows the version refusal for the child:\n{}",
        statuses(&[&parent])
    );
    eprintln!("P's last_error for the child: {}", recorded.unwrap_or_default());

    // A client offering only ALPN sitesync/2 fails the handshake.
    let result = rt.block_on(async {
        let ep = client_endpoint();
        let config = sitesync::transport::client_config(&key, parent.node_id(), b"sitesync/2")
            .expect("client config");
        let connecting = ep
            .connect_with(config, p_addr, sitesync::transport::SERVER_NAME)
            .expect("start connecting");
        let r = tokio::time::timeout(Duration::from_secs(10), connecting).await;
        ep.close(0u32.into(), b"done");
        r
    });
    let err = match result {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => panic!("a sitesync/2 client must not connect to a sitesync/1 node"),
        Err(_) => panic!("the sitesync/2 handshake neither failed nor completed in 10 s"),
    };
    let text = err.to_string();
    eprintln!("ALPN sitesync/2, the handshake error: {text}");
    // TLS alert 120 is no_application_protocol; rustls words it "peer doesn't support any
    // known protocol".
    let lower = text.to_lowercase();
    assert!(
        lower.contains("protocol") && (lower.contains("120") || lower.contains("application")),
        "the error names the application protocol: {text}"
    );
    // What a dialling node records for this error (docs/protocol.md: "the peer speaks another
    // protocol version"), not the refused-key diagnosis.
    let described = sitesync::node::serve::describe_close(&err);
    eprintln!("ALPN sitesync/2, as a node describes it: {described}");
    assert!(
        described.contains("another protocol version")
            && !described.contains("refused this node's key"),
        "an ALPN mismatch is described as a protocol version mismatch: {described}"
    );
    assert!(p_srv.alive());
}

/// The control endpoint answers only its own version and token, with a reason a person can act
/// on, and keeps serving: a CLI of control version 1 (it sent a JSON line and reads one) is
/// told, in its own format, to use the sitesync that runs `serve`; another version byte and a
/// wrong token are refused before the request is read.
#[test]
fn the_control_endpoint_refuses_other_versions_and_wrong_tokens() {
    use sitesync::node::control::{CONTROL_VERSION, RemoteError, encode_request};
    use sitesync::node::{Reply, Request};
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::init(tmp.path(), "solo");
    let _srv = node.serve();
    let control: Value = serde_json::from_str(
        &std::fs::read_to_string(node.dir.join("control.json")).expect("control file"),
    )
    .expect("control json");
    let addr = control["addr"].as_str().expect("addr").to_string();
    let raw = |bytes: &[u8]| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.write_all(bytes).expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read");
        answer
    };
    let ask = |bytes: &[u8]| -> Result<Reply, RemoteError> {
        let answer = raw(bytes);
        assert_eq!(answer[0], CONTROL_VERSION, "the answer names the node's version");
        postcard::from_bytes(&answer[5..]).expect("an answer")
    };
    let v1 = format!("{{\"op\":\"status\",\"token\":{}}}\n", control["token"]);
    let line = String::from_utf8(raw(v1.as_bytes())).expect("a v1 client gets text");
    let line: Value = serde_json::from_str(line.trim_end()).expect("one JSON line, as v1 reads");
    let text = line["error"].as_str().expect("an error, as v1 reports it");
    assert!(text.contains("control version 2") && text.contains("runs `serve`"), "{text}");
    let mut v7 = encode_request("x", &Request::Id).expect("encode");
    v7[0] = 7;
    let refused = ask(&v7).expect_err("another version is refused");
    assert!(refused.message.contains("version 7"), "{refused:?}");
    let wrong = encode_request("not-the-token", &Request::Id).expect("encode");
    let refused = ask(&wrong).expect_err("a wrong token is refused");
    assert_eq!(refused.message, "wrong control token");
    let token = control["token"].as_str().expect("token");
    let right = encode_request(token, &Request::Id).expect("encode");
    let reply = ask(&right).expect("the right token and version are served");
    assert_eq!(reply, Reply::Id(node.id.parse().expect("node id")));
}

/// A `serve` of control version 1 still running after an upgrade (it read one JSON line, up to
/// its end, and answered one): this CLI ends its request, so the old node answers instead of
/// waiting for a newline, and the person is told to restart the node, with exit code 1.
#[test]
fn a_cli_against_an_older_running_node_says_so_instead_of_hanging() {
    use std::io::{BufRead, Write};
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::init(tmp.path(), "upgraded");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let old = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let _ = reader.read_line(&mut line);
        let mut stream = stream;
        let _ = stream.write_all(b"{\"error\": \"the request is not JSON\"}\n");
    });
    let control = json!({"addr": addr.to_string(), "token": "t".repeat(32), "pid": 1});
    std::fs::write(node.dir.join("control.json"), control.to_string()).expect("control file");
    let r = node.run(&["status"]);
    old.join().expect("the old node answered");
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("control version 1") && r.stderr.contains("restart it"),
        "{}",
        r.describe()
    );
}

/// `len` characters of base64, as an attached scan or photo arrives in an obs: it compresses
/// by a quarter at most.
fn attachment(seed: u64, len: usize) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            B64[(x % 64) as usize] as char
        })
        .collect()
}

/// Every write fits the wire: a record over `RECORD_BYTES_MAX` is refused at `put` (exit 2,
/// naming the limit and the size, nothing written); 4,096 obs of ~60 KiB each (attachments, which
/// do not compress) are sealed by bytes as well as by count, into batches that all travel, over
/// QUIC to a parent and in a bundle to another node. Sealed by count alone, they made batches of
/// about 50 MB that no network frame carries (16 MiB), and the clinic's later changes never
/// left it.
#[test]
fn every_write_fits_the_wire() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clinic = Node::init(tmp.path(), "clinic");
    let district = Node::init(tmp.path(), "district");
    let usb = Node::init(tmp.path(), "usb");

    let parts: Vec<String> = (0..420).map(|i| attachment(i, 50_000)).collect();
    let big = json!({"uuid": uuid(), "kind": "scan", "parts": parts});
    let file = tmp.path().join("big.json");
    std::fs::write(&file, big.to_string()).expect("write");
    let r = clinic.run(&["put", "generic", p(&file)]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let limit = sitesync::entity::RECORD_BYTES_MAX.to_string();
    assert!(r.stderr.contains("RECORD_BYTES_MAX") && r.stderr.contains(&limit), "{}", r.stderr);
    assert!(r.stderr.contains(" bytes, more than the "), "names the size: {}", r.stderr);
    assert_eq!(clinic.ok(&["list"]), "", "nothing was written");

    let (person, concept) = (uuid(), uuid());
    let mut written = 0;
    for part in 0..5 {
        let obs: Vec<Value> = (0..820)
            .take(4_096 - written)
            .map(|i| {
                json!({"uuid": uuid(), "person": person, "concept": concept,
                       "obsDatetime": "2026-03-05T08:55:00.000+0300", "status": "FINAL",
                       "comment": attachment((part * 1_000 + i) as u64, 60_000)})
            })
            .collect();
        written += obs.len();
        clinic.put("obs", &Value::Array(obs));
    }
    assert_eq!(written, 4_096);
    let batches = clinic.status()["batches"].as_u64().expect("batches");
    assert!(batches >= 30, "sealed by bytes: {batches} batches for ~240 MiB of changes");

    let pp = addr(free_port());
    district.network(Some(&pp), 1);
    district.peer_add(&clinic, "child", None);
    clinic.peer_add(&district, "parent", Some(&pp));
    let _servers = [district.serve(), clinic.serve()];
    let digest = |n: &Node| n.try_status().map(|s| s["digest"].clone());
    let arrived = wait_for(Duration::from_secs(240), || {
        let (d, c) = (digest(&district)?, digest(&clinic)?);
        (d == c).then_some(d)
    });
    assert!(
        arrived.is_some(),
        "every batch reached the district:\n{}",
        statuses(&[&district, &clinic])
    );
    assert_eq!(district.status()["entities"]["obs"], json!(4_096));

    let bundle = tmp.path().join("all.ssb");
    clinic.ok(&["export", "--out", p(&bundle)]);
    usb.ok(&["trust", "add", &clinic.id, "--name", "clinic"]);
    let imported = usb.ok(&["import", p(&bundle)]);
    assert!(imported.contains("rejected: 0 batches"), "{imported}");
    assert_eq!(usb.status()["entities"]["obs"], json!(4_096), "{imported}");
    assert_eq!(usb.status()["digest"], clinic.status()["digest"]);
}
