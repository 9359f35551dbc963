//! A real FHIR R4 server for tests (`../shared/tools/fhir-server`, Medplum's engine), on
//! 127.0.0.1 only, killed by its PID when dropped. It needs Node >= 20.19 and its npm packages
//! (`scripts/test` installs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The server's start script: `shared/tools/fhir-server/start.sh` beside the project, or
/// `$FHIR_SERVER_START`.
pub fn start_script() -> PathBuf {
    if let Some(p) = std::env::var_os("FHIR_SERVER_START") {
        return PathBuf::from(p);
    }
    root()
        .ancestors()
        .map(|a| a.join("shared/tools/fhir-server/start.sh"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "shared/tools/fhir-server/start.sh was not found beside {} or any parent \
                 directory; set FHIR_SERVER_START=/path/to/start.sh",
                root().display()
            )
        })
}

/// A running FHIR server, killed (by its PID) when dropped, even on a panic.
pub struct FhirServer {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl FhirServer {
    pub fn start(dir: &Path, options: &[&str]) -> FhirServer {
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.as_ref().is_ok_and(|o| o.status.success()),
            "`node` is not installed: the FHIR push tests need Node >= 20.19 and npm for \
             ../shared/tools/fhir-server (CI installs them)"
        );
        let log = dir.join("requests.jsonl");
        let mut child = Command::new("bash")
            .arg(start_script())
            .arg("0")
            .args(["--ref-integrity", "--quiet", "--request-log"])
            .arg(&log)
            .args(options)
            .current_dir(root())
            .env("FHIR_SERVER_WORKDIR", root().join("target/fhir-server"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the FHIR server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = String::new();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("ready ") {
                        break url.trim().to_string();
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                _ => {
                    let _ = child.kill();
                    panic!("the FHIR server stopped before it was ready:\n{seen}");
                }
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        FhirServer { child, base, log }
    }

    pub fn origin(&self) -> String {
        self.base.trim_end_matches("/fhir/R4").to_string()
    }

    pub fn get(&self, url: &str) -> (u16, Value) {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut resp = agent.get(url).call().expect("GET");
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn read(&self, key: &str) -> (u16, Value) {
        self.get(&format!("{}/{key}", self.base))
    }

    /// Resources held, per type.
    pub fn counts(&self) -> Value {
        self.get(&format!("{}/_admin/stats", self.origin())).1["counts"].clone()
    }

    /// The versions the server keeps of `key`.
    pub fn versions(&self, key: &str) -> u64 {
        let (status, history) = self.read(&format!("{key}/_history"));
        assert_eq!(status, 200, "{key}/_history: {history}");
        history["entry"].as_array().map_or(0, |e| e.len() as u64)
    }

    /// Requests logged so far: (method, url, request body).
    pub fn requests(&self) -> Vec<(String, String, Value)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                let body = match &v["request"] {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                    other => other.clone(),
                };
                (
                    v["method"].as_str().unwrap_or_default().to_string(),
                    v["url"].as_str().unwrap_or_default().to_string(),
                    body,
                )
            })
            .collect()
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------- proxy ---

/// One request as a proxy sees it.
pub struct ProxyRequest {
    pub method: String,
    /// The path and query, e.g. `/fhir/R4/Patient?_count=20`.
    pub target: String,
    pub body: Vec<u8>,
}

/// What a proxy does with a request.
pub enum ProxyAction {
    Forward,
    /// Answer this status and FHIR JSON body without forwarding.
    Answer(u16, String),
}

/// An HTTP proxy on 127.0.0.1 in front of a FHIR server (`upstream` host:port), one request
/// per connection, each request decided by `rule`. Returns the proxy's FHIR base URL.
pub fn proxy(
    upstream: String,
    rule: impl Fn(&ProxyRequest) -> ProxyAction + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let Some((head, body)) = read_request(&mut client) else { continue };
            let mut first = head.lines().next().unwrap_or_default().split_whitespace();
            let req = ProxyRequest {
                method: first.next().unwrap_or_default().to_string(),
                target: first.next().unwrap_or_default().to_string(),
                body: body.clone(),
            };
            match rule(&req) {
                ProxyAction::Forward => {
                    let _ = client.write_all(&forward(&upstream, &head, &body));
                }
                ProxyAction::Answer(status, text) => {
                    let _ = write!(
                        client,
                        "HTTP/1.1 {status} Refused\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                }
            }
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://{addr}/fhir/R4")
}

impl FhirServer {
    /// `host:port` of the server.
    pub fn host(&self) -> String {
        self.origin().trim_start_matches("http://").to_string()
    }
}

/// Reads one HTTP/1.1 request (head and body) from a connection.
pub fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).ok()?;
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Sends the request upstream with `Connection: close` and returns the whole answer.
pub fn forward(upstream: &str, head: &str, body: &[u8]) -> Vec<u8> {
    let mut up = TcpStream::connect(upstream).expect("connect upstream");
    let mut head: String = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).expect("write upstream");
    up.write_all(body).expect("write upstream");
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    answer
}
