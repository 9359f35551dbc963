//! The JSON API under `/api/`: the same data and actions as the pages, documented route by
//! route in `docs/api.md`. Bodies are the [`super::data`] types as JSON; every error is
//! `{"error": "..."}` with 400 (malformed request), 401, 404, 422 (refused input, nothing
//! changed), 503 (sync loops not running) or 500.

use std::collections::HashMap;
use std::path::Path;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::data::{DataError, ExportedBundle, Resolution};
use super::{AppState, RECORDS_PAGE_DEFAULT, UPLOAD_BYTES_MAX, status_of};
use crate::id::{EntityId, EntityType, NodeId};

type Params = HashMap<String, String>;

/// Bytes read from a bundle file per chunk of a download.
pub const DOWNLOAD_CHUNK_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/audit", get(audit))
        .route("/api/failures", get(failures))
        .route("/api/failures/{id}/retry", post(retry))
        .route("/api/conflicts", get(conflicts))
        .route("/api/conflicts/{id}", get(conflict))
        .route("/api/conflicts/{id}/resolve", post(resolve))
        .route("/api/records", get(records))
        .route("/api/records/{ty}/{uuid}", get(record))
        .route("/api/records/{ty}/{uuid}/sync", post(record_sync))
        .route("/api/sync", post(sync))
        .route("/api/export", post(export))
        // The body streams to a file, bounded by UPLOAD_BYTES_MAX there.
        .route("/api/import", post(import).layer(DefaultBodyLimit::disable()))
}

fn reply<T: Serialize>(r: Result<T, DataError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

async fn overview(State(s): State<AppState>) -> Response {
    reply(s.call(|d| d.overview()).await)
}

async fn audit(State(s): State<AppState>, Query(q): Query<Params>) -> Response {
    match super::pages::audit_filter(&q) {
        Ok(f) => reply(s.call(move |d| d.audit(&f)).await),
        Err(m) => bad_request(&m),
    }
}

async fn failures(State(s): State<AppState>) -> Response {
    reply(s.call(|d| d.failures()).await)
}

async fn retry(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    reply(s.call(move |d| d.retry(&id)).await)
}

async fn conflicts(State(s): State<AppState>) -> Response {
    reply(s.call(|d| d.conflicts()).await)
}

async fn conflict(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    reply(s.call(move |d| d.conflict(&id)).await)
}

/// `{"take": N}` or `{"value": JSON}`.
fn parse_resolution(body: &[u8]) -> Result<Resolution, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    match (v.get("take"), v.get("value")) {
        (Some(t), None) => t
            .as_u64()
            .map(|n| Resolution::Take(n as usize))
            .ok_or_else(|| format!("take: {t} is not a value number")),
        (None, Some(value)) => Ok(Resolution::Value(value.clone())),
        _ => Err("send {\"take\": N} or {\"value\": JSON}".into()),
    }
}

async fn resolve(State(s): State<AppState>, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    match parse_resolution(&body) {
        Ok(how) => reply(s.call(move |d| d.resolve(&id, &how)).await),
        Err(m) => bad_request(&m),
    }
}

async fn records(State(s): State<AppState>, Query(q): Query<Params>) -> Response {
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let ty = match get("type").map(str::parse::<EntityType>).transpose() {
        Ok(t) => t,
        Err(e) => return bad_request(&format!("type: {e}")),
    };
    let after = match get("after").map(str::parse::<EntityId>).transpose() {
        Ok(a) => a,
        Err(e) => return bad_request(&format!("after: {e}")),
    };
    let limit = match get("limit").map(str::parse::<usize>).transpose() {
        Ok(l) => l.unwrap_or(RECORDS_PAGE_DEFAULT),
        Err(_) => return bad_request("limit: not a whole number"),
    };
    reply(s.call(move |d| d.records(ty, after.as_ref(), limit)).await)
}

fn entity(ty: &str, uuid: &str) -> Result<EntityId, DataError> {
    EntityId::parse_parts(ty, uuid).map_err(|e| DataError::NotFound(e.to_string()))
}

async fn record(
    State(s): State<AppState>,
    UrlPath((ty, uuid)): UrlPath<(String, String)>,
) -> Response {
    match entity(&ty, &uuid) {
        Ok(id) => reply(s.call(move |d| d.record(&id)).await),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

async fn record_sync(
    State(s): State<AppState>,
    UrlPath((ty, uuid)): UrlPath<(String, String)>,
) -> Response {
    match entity(&ty, &uuid) {
        Ok(id) => reply(s.call(move |d| d.sync_now(Some(&id))).await),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

async fn sync(State(s): State<AppState>) -> Response {
    reply(s.call(|d| d.sync_now(None)).await)
}

async fn export(State(s): State<AppState>, Query(q): Query<Params>) -> Response {
    let peer = match q.get("peer").map(|p| p.trim()).filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => match p.parse::<NodeId>() {
            Ok(p) => Some(p),
            Err(_) => return bad_request(&format!("peer: {p:?} is not a node id")),
        },
    };
    match s.call(move |d| d.export_bundle(peer)).await {
        Ok(b) => download(b).await,
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

async fn import(State(s): State<AppState>, body: Body) -> Response {
    let mut sink = match UploadSink::new(&s.scratch).await {
        Ok(f) => f,
        Err(e) => return error(status_of(&e), &e.to_string()),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let written = match chunk {
            Ok(bytes) => sink.write(&bytes).await,
            Err(e) => return bad_request(&format!("the upload broke off: {e}")),
        };
        if let Err(e) = written {
            return error(status_of(&e), &e.to_string());
        }
    }
    if sink.bytes == 0 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "the body is empty: send the bundle file");
    }
    let path = match sink.finish().await {
        Ok(p) => p,
        Err(e) => return error(status_of(&e), &e.to_string()),
    };
    reply(s.call(move |d| d.import_bundle(&path)).await)
}

/// Streams an exported bundle as an attachment; the file is removed when the stream ends.
pub async fn download(bundle: ExportedBundle) -> Response {
    let file = match tokio::fs::File::open(&bundle.file).await {
        Ok(f) => f,
        Err(e) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("reading the bundle: {e}"));
        }
    };
    let length = file.metadata().await.map(|m| m.len()).unwrap_or(bundle.bytes);
    let name = bundle.name.clone();
    let counts = format!("{} batches, {} changes", bundle.batches, bundle.changes);
    let stream = futures_util::stream::unfold(Some((file, bundle)), |state| async move {
        let (mut file, bundle) = state?;
        let mut buf = vec![0u8; DOWNLOAD_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some((file, bundle))))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let disposition = format!("attachment; filename=\"{name}\"");
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, length.to_string()),
            (header::HeaderName::from_static("x-sitesync-bundle"), counts),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// An upload on its way to a temporary file in the node directory, bounded by
/// `UPLOAD_BYTES_MAX`; the file is removed when the path is dropped.
pub struct UploadSink {
    file: tokio::fs::File,
    path: tempfile::TempPath,
    pub bytes: u64,
}

impl UploadSink {
    pub async fn new(dir: &Path) -> Result<UploadSink, DataError> {
        let dir = dir.to_path_buf();
        let made = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new().prefix(".admin-upload-").suffix(".ssb").tempfile_in(dir)
        })
        .await;
        let tmp = match made {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(DataError::Internal(format!("a file for the upload: {e}"))),
            Err(e) => return Err(DataError::Internal(e.to_string())),
        };
        let (file, path) = tmp.into_parts();
        Ok(UploadSink { file: tokio::fs::File::from_std(file), path, bytes: 0 })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        self.bytes += bytes.len() as u64;
        if self.bytes > UPLOAD_BYTES_MAX as u64 {
            return Err(DataError::Input(format!(
                "the bundle is larger than {} MiB; import it with `sitesync import` on the node",
                UPLOAD_BYTES_MAX >> 20
            )));
        }
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| DataError::Internal(format!("storing the upload: {e}")))
    }

    pub async fn finish(mut self) -> Result<tempfile::TempPath, DataError> {
        self.file
            .flush()
            .await
            .map_err(|e| DataError::Internal(format!("storing the upload: {e}")))?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse_or_say_what_is_wrong() {
        assert_eq!(parse_resolution(br#"{"take": 1}"#), Ok(Resolution::Take(1)));
        assert_eq!(parse_resolution(br#"{"value": "F"}"#), Ok(Resolution::Value(json!("F"))));
        assert!(parse_resolution(br#"{"take": -1}"#).is_err());
        assert!(parse_resolution(br#"{"take": 1, "value": 2}"#).is_err());
        assert!(parse_resolution(b"{").is_err());
    }
}
