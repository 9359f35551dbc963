//! Helpers for the admin view tests (tests/web.rs, tests/browser.rs): an HTTP client for the
//! view, nodes made to conflict on a patient field, and `serve` with the view on a free
//! loopback port.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::net::{Node, Serve, WAIT_MAX, p, wait_for};

/// A TCP port on loopback that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP socket");
    l.local_addr().expect("local addr").port()
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A client of one admin view: no redirects followed, statuses returned as they are.
pub struct Http {
    pub base: String,
    agent: ureq::Agent,
    /// Sent as `Cookie` when set.
    pub cookie: Option<String>,
    /// Sent as `Authorization: Bearer` when set.
    pub bearer: Option<String>,
}

impl Http {
    pub fn new(base: &str) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Http { base: base.trim_end_matches('/').to_string(), agent, cookie: None, bearer: None }
    }

    fn auth<B>(&self, mut r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", c);
        }
        if let Some(t) = &self.bearer {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        r
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Answer {
        let mut r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let body = r
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        Answer { status: r.status().as_u16(), headers, body }
    }

    pub fn get(&self, path: &str) -> Answer {
        let url = format!("{}{path}", self.base);
        Self::answer(self.auth(self.agent.get(&url)).call(), &format!("GET {path}"))
    }

    pub fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.base);
        let r = self.auth(self.agent.post(&url)).send_form(fields.iter().copied());
        Self::answer(r, &format!("POST {path}"))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Answer {
        let url = format!("{}{path}", self.base);
        let r = self
            .auth(self.agent.post(&url))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        Self::answer(r, &format!("POST {path}"))
    }

    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Answer {
        let url = format!("{}{path}", self.base);
        let r = self
            .auth(self.agent.post(&url))
            .header("Content-Type", "application/octet-stream")
            .send(body);
        Self::answer(r, &format!("POST {path}"))
    }

    /// POST with a hand-made multipart body (one text field `csrf`, one file field `bundle`).
    pub fn post_upload(&self, path: &str, csrf: &str, file: &[u8]) -> Answer {
        let boundary = "sitesync-test-boundary-7f3a";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"b.ssb\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}{path}", self.base);
        let r = self
            .auth(self.agent.post(&url))
            .header("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
            .send(&body[..]);
        Self::answer(r, &format!("POST {path}"))
    }

    /// Logs in with `token`; keeps the cookie. Returns the login answer.
    pub fn login(&mut self, token: &str) -> Answer {
        let a = self.post_form("/login", &[("token", token)]);
        if let Some(set) = a.header("set-cookie") {
            self.cookie = set.split(';').next().map(str::to_string);
        }
        a
    }

    /// The CSRF token of the forms on `path`.
    pub fn csrf(&self, path: &str) -> String {
        let page = self.get(path).text();
        let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token");
        let rest = &page[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of the token")].to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// The name written by the conflict setup: markup that must never reach a page unescaped.
pub const HOSTILE_NAME: &str = "<script>alert(1)</script>";

pub fn trust(a: &Node, b: &Node) {
    a.ok(&["trust", "add", &b.id, "--name", &b.name]);
}

pub fn export(from: &Node, out: &Path, peer: Option<&Node>) {
    let mut args = vec!["export", "--out", p(out)];
    if let Some(peer) = peer {
        args.extend(["--peer", &peer.id]);
    }
    from.ok(&args);
}

pub fn import(into: &Node, file: &Path) {
    into.ok(&["import", p(file)]);
}

pub fn get(node: &Node, uuid: &str) -> Value {
    let text = node.ok(&["get", "patient", uuid, "--conflicts"]);
    serde_json::from_str(&text).expect("get --conflicts prints JSON")
}

/// Nodes `a` and `b` (trusting each other, exchanging bundles) that both changed the gender
/// and the birthdate of one patient while apart. Returns the patient's uuid; both nodes hold
/// both conflicts.
pub fn conflicted(tmp: &Path, a: &Node, b: &Node) -> String {
    trust(a, b);
    trust(b, a);
    let mut rec = crate::net::patient("A", 1);
    rec["names"][0]["familyName"] = json!(HOSTILE_NAME);
    rec["gender"] = json!("F");
    let uuid = rec["uuid"].as_str().expect("uuid").to_string();
    a.put("patient", &rec);
    let b0 = tmp.join("b0.ssb");
    export(a, &b0, None);
    import(b, &b0);
    let on_a = get(a, &uuid)["record"].clone();
    let mut ea = on_a.clone();
    ea["gender"] = json!("M");
    ea["birthdate"] = json!("1971-01-01");
    a.put("patient", &ea);
    let mut eb = on_a;
    eb["gender"] = json!("O");
    eb["birthdate"] = json!("1972-02-02");
    b.put("patient", &eb);
    let b1 = tmp.join("b1.ssb");
    export(b, &b1, Some(a));
    import(a, &b1);
    let b2 = tmp.join("b2.ssb");
    export(a, &b2, Some(b));
    import(b, &b2);
    for n in [a, b] {
        let c = get(n, &uuid)["conflicts"].as_array().cloned().unwrap_or_default();
        assert_eq!(c.len(), 2, "{}: gender and birthdate conflict: {c:?}", n.name);
    }
    uuid
}

/// Sets `node`'s admin view to a free loopback port, starts `serve`, and waits (bounded) until
/// the view answers. Returns the process and the view's base URL.
pub fn serve_admin(node: &Node) -> (Serve, String) {
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    node.ok(&["admin", "set", "--listen", &listen]);
    let serve = node.serve();
    let base = format!("http://{listen}");
    let http = Http::new(&base);
    let up = wait_for(WAIT_MAX, || {
        let url = format!("{base}/login");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        agent.get(&url).call().ok().map(|_| ())
    });
    assert!(up.is_some(), "the admin view of {} did not answer:\n{}", node.name, serve.log_text());
    drop(http);
    (serve, base)
}

/// The admin token `sitesync admin token` prints.
pub fn token(node: &Node) -> String {
    node.ok(&["admin", "token"]).trim().to_string()
}

/// Checks `text` against the Prometheus text format with an independent parser (Python's
/// prometheus_client, installed by scripts/test) and a strict line grammar; returns the
/// samples as (name with labels, value).
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    use std::io::Write;
    // Debian's Python, where apt installs the parser (a python3 earlier on PATH may not see it).
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
             n = sum(len(m.samples) for m in f(sys.stdin.read()))\nprint(n)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs (scripts/test installs python3-prometheus-client)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client refused the metrics (or is missing: apt-get install \
         python3-prometheus-client):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_string()), "one TYPE per family: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let name = series.split('{').next().expect("name");
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && typed.contains(name),
            "a sample of a declared family: {line}"
        );
        samples.push((series.to_string(), value.parse::<f64>().expect("a number")));
    }
    let counted: usize = String::from_utf8_lossy(&out.stdout).trim().parse().expect("count");
    assert_eq!(counted, samples.len(), "both parsers see the same samples");
    samples
}
