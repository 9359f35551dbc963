//! The control endpoint: how a CLI process reaches the running node of a directory. `serve`
//! listens on a loopback TCP port and writes its address, a random token and its pid to
//! `control.json` (mode 0600) in the node directory; a client reads that file, connects, and
//! sends one [`Request`]; the node executes it through its [`NodeHandle`] and answers with one
//! [`Reply`] or an error.
//!
//! The exchange (versioned; both sides are the same binary, but an old `serve` may still run
//! after an upgrade):
//!
//! ```text
//! request:  version u8 = 2 | token length u8 | token | body length u32 BE | postcard(Request)
//! answer:   version u8 = 2 | body length u32 BE | postcard(Result<Reply, RemoteError>)
//! ```
//!
//! The token is read and checked before the body, and the body is bounded by
//! [`CONTROL_REQUEST_BYTES_MAX`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::command::{Reply, Request};
use super::{NodeError, NodeHandle};

/// File in the node directory with the control endpoint's address and token (mode 0600).
pub const CONTROL_FILE: &str = "control.json";
/// Version of the exchange on the control endpoint (1 was a JSON line per request).
pub const CONTROL_VERSION: u8 = 2;
/// Largest request body, in bytes (a `put` carries at most `INPUT_BYTES_MAX` of records).
pub const CONTROL_REQUEST_BYTES_MAX: usize = crate::entity::INPUT_BYTES_MAX * 2 + 64 * 1024;
/// Largest answer a client reads, in bytes (a record listing of a large store).
pub const CONTROL_REPLY_BYTES_MAX: usize = 1 << 30;
/// Longest control token, in bytes.
const TOKEN_BYTES_MAX: usize = 255;

/// What `control.json` holds.
#[derive(Serialize, Deserialize)]
struct ControlFile {
    addr: std::net::SocketAddr,
    token: String,
    pid: u32,
}

/// A failed request as the running node reports it: `input` marks bad input (exit code 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub input: bool,
    pub message: String,
}

impl From<NodeError> for RemoteError {
    fn from(e: NodeError) -> Self {
        RemoteError { input: e.is_input(), message: e.to_string() }
    }
}

impl From<RemoteError> for NodeError {
    fn from(e: RemoteError) -> Self {
        match e.input {
            true => NodeError::Input(e.message),
            false => NodeError::Remote(e.message),
        }
    }
}

/// The request bytes for `token` and `request`.
pub fn encode_request(token: &str, request: &Request) -> Result<Vec<u8>, NodeError> {
    let body = postcard::to_stdvec(request).map_err(|e| NodeError::Remote(e.to_string()))?;
    let token = token.as_bytes();
    if token.len() > TOKEN_BYTES_MAX {
        return Err(NodeError::Input("the control token is too long".into()));
    }
    let mut out = Vec::with_capacity(6 + token.len() + body.len());
    out.push(CONTROL_VERSION);
    out.push(token.len() as u8);
    out.extend_from_slice(token);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a request body (after the version and token were checked).
pub fn decode_request(body: &[u8]) -> Result<Request, RemoteError> {
    postcard::from_bytes(body)
        .map_err(|e| RemoteError { input: true, message: format!("bad control request: {e}") })
}

fn encode_answer(answer: &Result<Reply, RemoteError>) -> Vec<u8> {
    let body = postcard::to_stdvec(answer).unwrap_or_else(|e| {
        let failed: Result<Reply, RemoteError> =
            Err(RemoteError { input: false, message: format!("encoding the answer: {e}") });
        postcard::to_stdvec(&failed).unwrap_or_default()
    });
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(CONTROL_VERSION);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Sends `request` to the running node of `dir`. `Ok(None)` if no node is running there (no
/// control file, or nothing answers at its address: a node that was killed).
pub fn request(dir: &Path, request: &Request) -> Result<Option<Reply>, NodeError> {
    use std::io::{Read, Write};
    let path = dir.join(CONTROL_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let file: ControlFile = serde_json::from_str(&text)
        .map_err(|e| NodeError::Input(format!("{}: {e}", path.display())))?;
    let Ok(mut stream) = std::net::TcpStream::connect(file.addr) else { return Ok(None) };
    let io = |e| NodeError::Io { path: path.clone(), source: e };
    // The end of the request is the end of this side of the stream: a node of control version
    // 1 reads a line, and answers once it sees the end. A node that refused the request early
    // (its version, the token) may have stopped reading: its answer still says why.
    let written = stream.write_all(&encode_request(&file.token, request)?);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut head = [0u8; 5];
    if let Err(e) = stream.read_exact(&mut head) {
        return Err(io(written.err().unwrap_or(e)));
    }
    if head[0] == b'{' {
        return Err(NodeError::Remote(
            "the running node speaks control version 1 (an older sitesync): restart it with \
             this sitesync"
                .into(),
        ));
    }
    if head[0] != CONTROL_VERSION {
        return Err(NodeError::Remote(format!(
            "the running node speaks control version {} (this sitesync: {CONTROL_VERSION}); \
             restart it with this sitesync",
            head[0]
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > CONTROL_REPLY_BYTES_MAX {
        return Err(NodeError::Remote(format!("the running node answered {len} bytes")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(io)?;
    let answer: Result<Reply, RemoteError> = postcard::from_bytes(&body)
        .map_err(|e| NodeError::Remote(format!("the running node answered badly: {e}")))?;
    Ok(Some(answer?))
}

/// Listens for control requests on loopback and writes the control file with `token`; returns
/// the file's path (removed by [`remove_file`] at shutdown) and the listener for [`serve`].
pub(crate) async fn bind(
    dir: &Path,
    token: &str,
) -> Result<(PathBuf, tokio::net::TcpListener), NodeError> {
    let io = |e: std::io::Error| NodeError::Io { path: "control endpoint".into(), source: e };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
    let path = write_file(dir, listener.local_addr().map_err(io)?, token)?;
    Ok((path, listener))
}

/// Answers control requests until `shutdown` changes.
pub(crate) async fn serve(
    handle: NodeHandle,
    listener: tokio::net::TcpListener,
    token: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (handle, token) = (handle.clone(), token.clone());
        tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let answer = match read_request(&mut read, &token).await {
                None => return,
                Some(Read::Older) => {
                    // What a client of control version 1 reads: one JSON line.
                    let text = serde_json::json!({ "error": older_client() }).to_string();
                    let _ = write.write_all(format!("{text}\n").as_bytes()).await;
                    return;
                }
                Some(Read::Refused(e)) => Err(e),
                Some(Read::Request(request)) => execute(handle, request).await,
            };
            let _ = write.write_all(&encode_answer(&answer)).await;
        });
    }
}

/// What one connection asked.
enum Read {
    Request(Request),
    /// Refused before the body was read (the version, the token, the size).
    Refused(RemoteError),
    /// A client of control version 1 (a JSON line): it is answered in its own format.
    Older,
}

/// What this node tells a client of an older control version.
fn older_client() -> String {
    format!(
        "the running node speaks control version {CONTROL_VERSION}, this sitesync an older one: \
         use the sitesync that runs `serve`"
    )
}

/// Reads one request: `None` when the connection breaks off; a refusal for a wrong version or
/// token or a body over the limit (checked before the body is read).
async fn read_request(read: &mut (impl AsyncReadExt + Unpin), token: &str) -> Option<Read> {
    let refuse = |message: String| Some(Read::Refused(RemoteError { input: true, message }));
    let mut head = [0u8; 2];
    read.read_exact(&mut head).await.ok()?;
    if head[0] == b'{' {
        return Some(Read::Older);
    }
    if head[0] != CONTROL_VERSION {
        return refuse(format!(
            "this node speaks control version {CONTROL_VERSION}, the request came in version {}: \
             use the sitesync that runs `serve`",
            head[0]
        ));
    }
    let mut given = vec![0u8; usize::from(head[1])];
    read.read_exact(&mut given).await.ok()?;
    if given != token.as_bytes() {
        return refuse("wrong control token".into());
    }
    let mut len = [0u8; 4];
    read.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > CONTROL_REQUEST_BYTES_MAX {
        return refuse(format!("the request is {len} bytes (limit {CONTROL_REQUEST_BYTES_MAX})"));
    }
    let mut body = vec![0u8; len];
    read.read_exact(&mut body).await.ok()?;
    Some(match decode_request(&body) {
        Ok(request) => Read::Request(request),
        Err(e) => Read::Refused(e),
    })
}

async fn execute(handle: NodeHandle, request: Request) -> Result<Reply, RemoteError> {
    match tokio::task::spawn_blocking(move || handle.execute(request, &|_, _| {})).await {
        Ok(r) => r.map_err(RemoteError::from),
        Err(e) => Err(RemoteError { input: false, message: format!("the request failed: {e}") }),
    }
}

fn write_file(dir: &Path, addr: std::net::SocketAddr, token: &str) -> Result<PathBuf, NodeError> {
    let path = dir.join(CONTROL_FILE);
    let _ = std::fs::remove_file(&path);
    let file = ControlFile { addr, token: token.to_string(), pid: std::process::id() };
    let body = serde_json::to_string(&file).unwrap_or_default();
    super::files::create_private(&path, body.as_bytes())?;
    Ok(path)
}

/// Removes the control file at shutdown.
pub(crate) fn remove_file(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::push::FailedResource;
    use crate::node::command::{FhirExported, JsonOf, Retried};
    use crate::node::session_host::SessionReport;

    fn decode_answer(bytes: &[u8]) -> Result<Reply, RemoteError> {
        assert_eq!(bytes[0], CONTROL_VERSION);
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        postcard::from_bytes(&bytes[5..]).expect("the answer decodes")
    }

    /// A failed resource with every optional field absent (JSON-only serde attributes skip
    /// them), and a report holding it.
    fn failed() -> FailedResource {
        FailedResource {
            key: "Observation/x".into(),
            record: None,
            status: None,
            reason: "cannot be valid FHIR".into(),
            hash: None,
            since: 1_767_571_200,
        }
    }

    /// Every reply that carries optional or JSON-shaped data crosses the endpoint and comes back
    /// equal (postcard is not self-describing: a field skipped when absent would shift every
    /// byte after it).
    #[test]
    fn replies_round_trip() {
        let report = crate::fhir::PushReport { failed: vec![failed()], ..Default::default() };
        let status = crate::fhir::PushTargetStatus {
            name: "shr".into(),
            base_url: "http://127.0.0.1:1/fhir".into(),
            continuous: false,
            interval_secs: 60,
            cursor: String::new(),
            last_attempt: 1,
            last_success: 0,
            consecutive_failures: 2,
            last_error: None,
            next_retry: 0,
            failed: vec![failed()],
        };
        let session = SessionReport::failed(crate::id::NodeId([3; 32]), "timed out".into(), 7);
        let replies = vec![
            Reply::Pushed(JsonOf(report.clone())),
            Reply::PushStatus(JsonOf(vec![status])),
            Reply::Retried(Retried {
                id: "push-shr".into(),
                what: "FHIR push to shr".into(),
                closed: false,
                reason: Some("HTTP 500".into()),
                sessions: vec![session.clone()],
                push: Some(JsonOf(report)),
            }),
            Reply::Sessions(vec![session]),
            Reply::Record {
                record: super::super::Json(serde_json::json!({"a": [1, null]})),
                conflicts: None,
            },
            Reply::Imported(Default::default()),
            Reply::FhirExported(FhirExported {
                files: 1,
                resources: 2,
                bundle_entries: None,
                report: Default::default(),
                cursor: crate::fhir::Cursor::start(),
            }),
            Reply::Status(super::super::Json(serde_json::json!({"peers": []}))),
        ];
        for reply in replies {
            let back = decode_answer(&encode_answer(&Ok(reply.clone())));
            assert_eq!(back, Ok(reply));
        }
        let refused = RemoteError { input: true, message: "no".into() };
        assert_eq!(decode_answer(&encode_answer(&Err(refused.clone()))), Err(refused));
    }
}
