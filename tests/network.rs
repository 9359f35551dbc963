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
        assert_eq!(got["identifiers"], rec["identifiers"], "C3's record {uuid} at C1");
        assert_eq!(got["names"], rec["names"]);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Unknown keys are refused in the handshake
// ---------------------------------------------------------------------------------------------

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

    // (a) The unknown node's sync fails and says why.
    let r = unknown.sync(None);
    eprintln!("unknown node's sync: {}", r.describe());
    assert_eq!(r.code, Some(1), "sync with a parent that does not know us fails: {}", r.describe());
    assert!(r.stdout.contains(&parent.id) && !r.stdout.contains("complete"), "{}", r.describe());
    let s = unknown.status();
    let err = peer_entry(&s, &parent.id)["last_error"].as_str().unwrap_or("").to_string();
    eprintln!("unknown node's last_error: {err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("connect") && (lower.contains("handshake") || lower.contains("certificate")),
        "last_error names the connection/handshake failure: {err:?}"
    );
    assert!(!has_author_of(&s, &parent.node_id()), "nothing came from the parent: {s:#}");

    // (b) The misled child's sync fails in the handshake; nothing is exchanged either way.
    let r = misled.sync(None);
    eprintln!("misled child's sync: {}", r.describe());
    assert_eq!(r.code, Some(1), "{}", r.describe());
    let s = misled.status();
    let err = peer_entry(&s, &other.id)["last_error"].as_str().unwrap_or("").to_string();
    eprintln!("misled child's last_error: {err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("connect") && (lower.contains("handshake") || lower.contains("certificate")),
        "last_error names the connection/handshake failure: {err:?}"
    );
    assert!(!has_author_of(&s, &parent.node_id()), "nothing came from the parent: {s:#}");

    // In-process: an unknown key dialling P, and a known key expecting another server key.
    let rt = runtime();
    let p_addr = pp.parse().expect("addr");
    let (unknown_result, wrong_server_result) = rt.block_on(async {
        let ep = client_endpoint();
        let stranger = stranger_key();
        let a = dial(&ep, &stranger, parent.node_id(), ALPN, p_addr).await;
        let misled_key = misled.keypair();
        let b = dial(&ep, &misled_key, other.node_id(), ALPN, p_addr).await;
        let a = match a {
            Err(e) => Err(e),
            // TLS 1.3: a client may finish its side before the server has checked its key;
            // then nothing at all may work on the connection.
            Ok(conn) => {
                let r = async {
                    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    send.write_all(&message::encode(&Message::Done))
                        .await
                        .map_err(|e| e.to_string())?;
                    let (m, _) = sitesync::transport::read_message(&mut recv)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(format!("{m:?}"))
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(m)) => Ok(format!("connected and the server answered {m}")),
                    Ok(Err(e)) => Ok(format!("connected, then failed: {e}")),
                    Err(_) => Ok("connected, then nothing".into()),
                }
            }
        };
        ep.close(0u32.into(), b"done");
        (a, b.map(|_| "connected"))
    });
    eprintln!("unknown key dialling P: {unknown_result:?}");
    eprintln!("known key expecting another server: {wrong_server_result:?}");
    assert!(
        unknown_result.is_err(),
        "an unknown key's connection attempt must fail in the handshake: {unknown_result:?}"
    );
    assert!(wrong_server_result.is_err(), "a server with the wrong key must be refused");

    // P gained nothing from anyone, and still serves.
    assert!(p_srv.alive(), "the parent still runs");
    let after = parent.status();
    assert_eq!(after["vector"], before["vector"], "the parent's store gained nothing");
    assert_eq!(after["digest"], before["digest"]);
    assert!(!has_author_of(&after, &unknown.node_id()));
    assert!(!has_author_of(&after, &misled.node_id()));
}

// ---------------------------------------------------------------------------------------------
// 3. A transfer cut by kill -9 resumes, resending at most one batch
// ---------------------------------------------------------------------------------------------

#[test]
fn a_transfer_cut_by_kill_9_resumes_and_resends_at_most_one_batch() {
    const BATCHES: u64 = 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "parent");
    let child = Node::init(tmp.path(), "child");
    let pp = addr(free_port());
    parent.network(Some(&pp), 1);
    parent.peer_add(&child, "child", None);
    child.peer_add(&parent, "parent", Some(&pp));
    child.network(None, 1);
    // 20 puts of 1,000 patients: 20 batches of about 1 MB of change bodies each, above
    // MESSAGE_BODY_BYTES_TARGET, so every Batches message carries exactly one batch.
    let setup = Instant::now();
    for i in 0..BATCHES {
        child.put("patient", &Value::Array(patients(&format!("b{i}"), 1000)));
    }
    let cs = child.status();
    assert_eq!(cs["batches"], json!(BATCHES));
    eprintln!("backlog written in {:?}", setup.elapsed());

    let p_srv = parent.serve();
    let _c_srv = child.serve();
    // Kill the parent mid-transfer: poll as fast as status answers (bounded).
    let held = wait_for(WAIT_MAX, || {
        let b = parent.try_status()?["batches"].as_u64()?;
        (b > 0).then_some(b)
    });
    let held =
        held.unwrap_or_else(|| panic!("no batch arrived:\n{}", statuses(&[&parent, &child])));
    assert!(held < BATCHES, "the transfer finished ({held} batches) before the kill could cut it");
    p_srv.kill9();
    eprintln!("killed the parent holding {held} batches");

    let p_srv = parent.serve();
    let after_restart = parent.status()["batches"].as_u64().expect("batches");
    assert!(after_restart >= held, "what was applied stayed: {after_restart} < {held}");
    // The child's cut session ends when QUIC's idle timeout (30 s) notices the dead peer; then
    // its next round resumes from the parent's durable vector.
    let max = Duration::from_millis(u64::from(sitesync::transport::IDLE_TIMEOUT_MS)) + WAIT_MAX;
    let done = wait_for(max, || {
        let s = parent.try_status()?;
        (s["batches"].as_u64()? == BATCHES).then_some(())
    });
    assert!(done.is_some(), "the transfer did not resume:\n{}", statuses(&[&parent, &child]));
    let ok = wait_converged(&[&parent, &child], WAIT_MAX);
    assert!(ok.is_some(), "digests differ:\n{}", statuses(&[&parent, &child]));

    // What the child sent, over all sessions: 20 batches plus what was sent again. The cut
    // session's count includes the message that was in flight when the parent died.
    let s = child.status();
    let entry = peer_entry(&s, &parent.id);
    eprintln!("child's view of the parent: {entry:#}");
    let sent = entry["batches_sent"].as_u64().expect("batches_sent");
    assert!(sent >= BATCHES, "the child counted {sent} batches sent, fewer than it holds");
    let resent = sent - BATCHES;
    assert!(resent <= 1, "the child sent {resent} batches again after the cut (at most 1)");
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
        let r = dial(&ep, &key, parent.node_id(), b"sitesync/2", p_addr).await;
        ep.close(0u32.into(), b"done");
        r.map(|_| ())
    });
    eprintln!("ALPN sitesync/2: {result:?}");
    let err = result.expect_err("a sitesync/2 client must not connect to a sitesync/1 node");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("application protocol") || lower.contains("alpn"),
        "the error names the application protocol: {err}"
    );
    assert!(p_srv.alive());
}
