//! A proxy that makes the test FHIR server answer as OpenMRS FHIR2 does where an incremental
//! reader notices (docs/emr.md, "Profiles"): `meta.lastUpdated` in whole seconds (and
//! `meta.versionId` that instant in milliseconds, as FHIR2 writes it), pages of at most 100,
//! `_lastUpdated` compared by whole seconds, a deleted resource read as 410, no `_history`, and
//! `If-Match` ignored.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use serde_json::Value;
use sitesync::emr::search::{format_instant, instant_ms};

use super::fhir_server::read_request;

/// Starts the proxy in front of `upstream` (host:port); returns its FHIR base URL.
pub fn openmrs_like(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("addr").to_string();
    let me = addr.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let Some((head, body)) = read_request(&mut client) else { continue };
            let answer = handle(&upstream, &me, &head, &body);
            let _ = client.write_all(&answer);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://{addr}/fhir/R4")
}

fn reply(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn outcome(text: &str) -> String {
    serde_json::json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]})
    .to_string()
}

/// Whole seconds of an instant, as OpenMRS writes them.
fn second(t: &str) -> Option<i64> {
    instant_ms(t).map(|ms| ms.div_euclid(1000) * 1000)
}

/// `_lastUpdated` with the FHIR2 meaning at whole-second precision, `_count` at most 100.
fn rewrite_query(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else { return target.to_string() };
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.replace("%2B", "+").replace("%3A", ":");
        match k {
            "_count" => {
                let n: usize = v.parse().unwrap_or(10);
                out.push(format!("_count={}", n.min(100)));
            }
            "_lastUpdated" => {
                let (prefix, t) = v.split_at(2.min(v.len()));
                let Some(s) = second(t) else {
                    out.push(pair.to_string());
                    continue;
                };
                let at = |ms: i64| format_instant(ms).replace('+', "%2B");
                match prefix {
                    "eq" => {
                        out.push(format!("_lastUpdated=ge{}", at(s)));
                        out.push(format!("_lastUpdated=lt{}", at(s + 1000)));
                    }
                    "gt" => out.push(format!("_lastUpdated=ge{}", at(s + 1000))),
                    "ge" => out.push(format!("_lastUpdated=ge{}", at(s))),
                    _ => out.push(pair.to_string()),
                }
            }
            _ => out.push(pair.to_string()),
        }
    }
    format!("{path}?{}", out.join("&"))
}

/// `meta.lastUpdated` cut to the second everywhere in a body, `versionId` made that instant
/// in ms, and links to the upstream server pointed at the proxy.
fn rewrite_body(v: &mut Value, upstream: &str, me: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(meta)) = map.get_mut("meta")
                && let Some(s) = meta.get("lastUpdated").and_then(Value::as_str).and_then(second)
            {
                let text = format_instant(s).replace(".000Z", ".000+00:00");
                meta.insert("lastUpdated".into(), Value::from(text));
                meta.insert("versionId".into(), Value::from(s.to_string()));
            }
            for x in map.values_mut() {
                rewrite_body(x, upstream, me);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| rewrite_body(x, upstream, me)),
        Value::String(s) if s.contains(upstream) => *s = s.replace(upstream, me),
        _ => {}
    }
}

fn handle(upstream: &str, me: &str, head: &str, body: &[u8]) -> Vec<u8> {
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
    if target.contains("/_history") {
        return reply(404, &outcome("FHIR2 has no _history"));
    }
    let target = rewrite_query(target);
    // `If-Match` is not enforced by FHIR2: dropped.
    let mut lines: Vec<String> = head
        .trim_end()
        .lines()
        .skip(1)
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("connection:") && !l.starts_with("if-match:")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    lines.insert(0, format!("{method} {target} HTTP/1.1\r\n"));
    lines.push("Connection: close\r\n\r\n".into());
    let mut up = TcpStream::connect(upstream).expect("connect upstream");
    up.write_all(lines.concat().as_bytes()).expect("write upstream");
    up.write_all(body).expect("write upstream");
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(answer.len());
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut rest = answer.get(split + 4..).unwrap_or_default().to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        rest = dechunk(&rest);
    }
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(502);
    // A voided record reads 410 Gone in FHIR2.
    let single = method == "GET" && !target.contains('?') && target.matches('/').count() >= 4;
    if status == 404 && single {
        return reply(410, &outcome("Resource was deleted"));
    }
    let text = match serde_json::from_slice::<Value>(&rest) {
        Ok(mut v) => {
            rewrite_body(&mut v, upstream, me);
            v.to_string()
        }
        Err(_) => String::from_utf8_lossy(&rest).to_string(),
    };
    reply(status, &text)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end]).split(';').next().unwrap_or("0").trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = data.get(start + size + 2..).unwrap_or_default();
    }
    out
}
