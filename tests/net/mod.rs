//! Helpers for the network tests: running the binary, node directories, `serve` processes that
//! are always killed, loopback ports, bounded polling, and an in-process QUIC client.

#![allow(dead_code)]

pub mod fhir_server;
pub mod openmrs_like;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_sitesync");
/// An OpenMRS identifier type uuid (metadata sitesync does not store).
pub const ID_TYPE: &str = "8d79403a-c2cc-11de-8d13-0010c6dffd0f";
/// How often wait loops poll.
pub const POLL: Duration = Duration::from_millis(100);
/// The longest any wait loop waits.
pub const WAIT_MAX: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Running the binary (as tests/replication does)
// ---------------------------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }

    pub fn panicked(&self) -> bool {
        self.stderr.contains("panicked")
    }
}

/// A command for the binary with a clean environment (no SITESYNC_DIR, no RUST_LOG).
pub fn command(dir: Option<&Path>) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("SITESYNC_DIR").env_remove("RUST_LOG");
    if let Some(d) = dir {
        c.arg("--dir").arg(d);
    }
    c
}

pub fn run_with(mut c: Command, stdin: Option<Vec<u8>>) -> Run {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().expect("spawn sitesync");
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let out = child.wait_with_output().expect("wait for sitesync");
    if let Some(w) = writer {
        let _ = w.join();
    }
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run(dir: Option<&Path>, args: &[&str]) -> Run {
    let mut c = command(dir);
    c.args(args);
    run_with(c, None)
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A patient in the shape of docs/examples/entities/patient.json, with fresh uuids. `tag` goes
/// into the identifier, so records from different nodes differ.
pub fn patient(tag: &str, n: usize) -> Value {
    const GIVEN: [&str; 6] = ["Amina", "Joseph", "Grace", "Peter", "Wanjiru", "Samuel"];
    const FAMILY: [&str; 5] = ["Okello", "Mwangi", "Achieng", "Kamau", "Otieno"];
    let gender = ["M", "F", "U", "O"][n % 4];
    json!({
        "uuid": uuid(),
        "identifiers": [
            {"uuid": uuid(), "identifier": format!("{tag}-{n:06}"), "identifierType": ID_TYPE,
             "preferred": true, "voided": false},
            {"uuid": uuid(), "identifier": format!("NID-{n:02}-{tag}"),
             "identifierType": "8cab81b7-71de-465e-8901-bbe7d5ac9506", "preferred": false,
             "voided": false}
        ],
        "names": [{"uuid": uuid(), "givenName": GIVEN[n % 6], "middleName": "Njeri",
                   "familyName": FAMILY[n % 5], "preferred": true, "voided": false}],
        "gender": gender,
        "birthdate": format!("{:04}-{:02}-{:02}", 1940 + n % 80, 1 + n % 12, 1 + n % 28),
        "birthdateEstimated": false,
        "dead": false,
        "addresses": [{"uuid": uuid(), "address1": format!("Plot {n}, Mango Lane"),
                       "cityVillage": "Mawingu", "countyDistrict": "Riverbend",
                       "stateProvince": "Lakeside", "country": "Kenya", "postalCode": "40100",
                       "preferred": true, "voided": false}],
        "attributes": [{"uuid": uuid(), "attributeType": "9cd5ed96-8db1-4620-9dc1-cb37918a0895",
                        "value": format!("Contact {tag} {n}"), "voided": false}],
        "voided": false
    })
}

pub fn patients(tag: &str, count: usize) -> Vec<Value> {
    (0..count).map(|n| patient(tag, n)).collect()
}

/// A UDP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    s.local_addr().expect("local addr").port()
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `max`.
pub fn wait_for<T>(max: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= max {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// A node directory
// ---------------------------------------------------------------------------------------------

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub id: String,
}

impl Node {
    /// `sitesync init --dir PARENT/NAME --name NAME`; checks it prints the node id.
    pub fn init(parent: &Path, name: &str) -> Node {
        let dir = parent.join(name);
        let r = run(None, &["init", "--dir", p(&dir), "--name", name]);
        assert_eq!(r.code, Some(0), "init {name}: {}", r.describe());
        let id = r.stdout.trim().to_string();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "init prints the node id (64 lowercase hex), got {:?}",
            r.stdout
        );
        Node { name: name.to_string(), dir, id }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(Some(&self.dir), args)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.code == Some(0) && !r.panicked(),
            "sitesync --dir {} {}: {}",
            self.dir.display(),
            args.join(" "),
            r.describe()
        );
        r.stdout
    }

    /// `status --json` (through the running node when it serves).
    pub fn status(&self) -> Value {
        let out = self.ok(&["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// `status --json`, or `None` if it failed (a node starting or stopping).
    pub fn try_status(&self) -> Option<Value> {
        let r = self.run(&["status", "--json"]);
        if r.code != Some(0) {
            return None;
        }
        serde_json::from_str(&r.stdout).ok()
    }

    pub fn digest(&self) -> String {
        self.status()["digest"].as_str().expect("digest").to_string()
    }

    pub fn author(&self) -> String {
        self.status()["author"].as_str().expect("author").to_string()
    }

    pub fn keypair(&self) -> sitesync::identity::Keypair {
        let text = std::fs::read_to_string(self.dir.join("node.key")).expect("read node.key");
        sitesync::identity::Keypair::from_file_text(&text).expect("node.key parses")
    }

    pub fn node_id(&self) -> sitesync::id::NodeId {
        self.id.parse().expect("node id")
    }

    /// `put TYPE -` with the JSON on standard input; must succeed.
    pub fn put(&self, ty: &str, value: &Value) -> Vec<String> {
        let mut c = command(Some(&self.dir));
        c.args(["put", ty, "-"]);
        let r = run_with(c, Some(serde_json::to_vec(value).expect("encode")));
        assert!(r.code == Some(0) && !r.panicked(), "put {ty} at {}: {}", self.name, r.describe());
        let n = value.as_array().map_or(1, Vec::len);
        assert_eq!(r.stdout.lines().count(), n, "put prints one line per record");
        r.stdout.lines().map(str::to_string).collect()
    }

    pub fn peer_add(&self, other: &Node, role: &str, addr: Option<&str>) {
        let mut args = vec!["peer", "add", &other.id, "--role", role, "--name", &other.name];
        if let Some(a) = addr {
            args.extend(["--addr", a]);
        }
        self.ok(&args);
    }

    /// `peer add ID --role ROLE [--addr A]` with a raw id (not another test node).
    pub fn peer_add_id(&self, id: &str, role: &str, addr: Option<&str>) {
        let mut args = vec!["peer", "add", id, "--role", role];
        if let Some(a) = addr {
            args.extend(["--addr", a]);
        }
        self.ok(&args);
    }

    pub fn network(&self, listen: Option<&str>, interval: u64) {
        let interval = interval.to_string();
        let mut args = vec!["network", "--interval", &interval];
        if let Some(l) = listen {
            args.extend(["--listen", l]);
        }
        self.ok(&args);
    }

    /// `sync [--peer ID]` through the running node.
    pub fn sync(&self, peer: Option<&Node>) -> Run {
        match peer {
            Some(o) => self.run(&["sync", "--peer", &o.id]),
            None => self.run(&["sync"]),
        }
    }

    /// Starts `serve` and waits (bounded) until its control endpoint answers `status`.
    pub fn serve(&self) -> Serve {
        self.serve_env(&[])
    }

    /// As [`Node::serve`], with these environment variables set for the node.
    pub fn serve_env(&self, env: &[(&str, &str)]) -> Serve {
        let log_path = self.dir.join(format!("serve-{}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open serve log");
        let mut c = command(Some(&self.dir));
        c.envs(env.iter().copied());
        c.args(["--log", "sitesync=info", "serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let child = c.spawn().expect("spawn sitesync serve");
        let mut s = Serve { child, name: self.name.clone(), log: log_path };
        let ready = wait_for(WAIT_MAX, || {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("serve of {} exited early ({status}):\n{}", self.name, s.log_text());
            }
            let control = std::fs::read_to_string(self.dir.join("control.json")).ok()?;
            let v: Value = serde_json::from_str(&control).ok()?;
            if v["pid"].as_u64() != Some(u64::from(s.child.id())) {
                return None;
            }
            self.try_status()
        });
        assert!(ready.is_some(), "serve of {} did not answer status:\n{}", self.name, s.log_text());
        s
    }
}

/// The peer entry for `id` in a status.
pub fn peer_entry<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node_id"] == json!(id)))
        .unwrap_or_else(|| panic!("no peer {id} in status {status:#}"))
}

/// The seq a status shows for any author of node `id` (0 if absent).
pub fn seq_of_node(status: &Value, id: &str) -> u64 {
    status["vector"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with(id)).filter_map(|(_, v)| v.as_u64()).sum())
        .unwrap_or(0)
}

pub fn patients_in(status: &Value) -> u64 {
    status["entities"].get("patient").map_or(0, |v| v.as_u64().expect("count"))
}

// ---------------------------------------------------------------------------------------------
// A running `serve`, always killed
// ---------------------------------------------------------------------------------------------

/// A `sitesync serve` process. Dropping it sends SIGKILL and waits.
pub struct Serve {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Serve {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL now (a crash), and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let exited = wait_for(WAIT_MAX, || self.child.try_wait().ok().flatten());
        assert!(exited.is_some(), "serve of {} did not stop on SIGTERM", self.name);
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// In-process QUIC client
// ---------------------------------------------------------------------------------------------

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A QUIC client endpoint on loopback.
pub fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint")
}

/// Dials `addr` as `key`, expecting the server to hold `server`'s key, offering `alpn`.
/// Bounded by 10 s.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    key: &sitesync::identity::Keypair,
    server: sitesync::id::NodeId,
    alpn: &[u8],
    addr: std::net::SocketAddr,
) -> Result<quinn::Connection, String> {
    let config =
        sitesync::transport::client_config(key, server, alpn).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(config, addr, sitesync::transport::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Reads messages until an `Error` arrives or the stream/connection ends (bounded by 10 s).
/// Returns the messages read and how it ended.
pub async fn read_until_end(
    recv: &mut quinn::RecvStream,
) -> (Vec<sitesync::protocol::message::Message>, String) {
    use sitesync::protocol::message::Message;
    let mut got = Vec::new();
    let mut decoder = sitesync::protocol::message::Decoder::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(
            deadline,
            sitesync::transport::read_message(recv, &mut decoder),
        )
        .await
        {
            Err(_) => return (got, "timed out waiting for the peer".into()),
            Ok(Ok((m, _))) => {
                let is_error = matches!(m, Message::Error { .. });
                got.push(m);
                if is_error {
                    return (got, "error message".into());
                }
            }
            Ok(Err(e)) => return (got, format!("ended: {e}")),
        }
    }
}

/// A node's clock moved `offset` seconds from the operating system's (entropy and the
/// monotonic clock are the system's).
pub struct SkewedClock(pub i64);

impl sitesync::node::Env for SkewedClock {
    fn now_secs(&self) -> i64 {
        sitesync::node::now_secs() + self.0
    }
    fn millis(&self) -> u64 {
        sitesync::node::OsEnv.millis()
    }
    fn fill_random(&self, out: &mut [u8]) -> Result<(), sitesync::node::NodeError> {
        sitesync::node::OsEnv.fill_random(out)
    }
}
