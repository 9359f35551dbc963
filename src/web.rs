//! The admin web view and JSON API, served by `sitesync serve` with axum on a loopback address
//! (`[admin] listen`, default 127.0.0.1:7780) and protected by the admin token.
//!
//! - [`data`]: the [`data::AdminData`] trait, the only way pages and API reach the node (the
//!   node implements it; this module knows nothing of the node beyond it);
//! - `auth`: the token file, login cookie, bearer tokens and cross-site guards;
//! - `pages`: server-rendered HTML (no JavaScript), `html`: escaping and layout;
//! - `api`: the JSON API under `/api/` (see `docs/api.md`); `metrics`: `/metrics`.
//!
//! Handlers never touch the store: they call [`data::AdminData`] on tokio's blocking pool. No
//! record content is logged.

pub mod data;

mod api;
mod auth;
mod html;
mod metrics;
mod pages;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

pub use auth::TOKEN_BYTES_MAX;
pub use data::{AUDIT_PAGE_MAX, HISTORY_CHANGES_MAX, RECORDS_PAGE_MAX};
use data::{AdminData, DataError};

/// Largest bundle accepted by an upload, in bytes.
pub const UPLOAD_BYTES_MAX: usize = 1 << 30;
/// Largest form or JSON request body, in bytes (a resolution carries one record's value).
pub const FORM_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Audit entries per page unless asked otherwise.
pub const AUDIT_PAGE_DEFAULT: usize = 50;
/// Record ids per page unless asked otherwise.
pub const RECORDS_PAGE_DEFAULT: usize = 100;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    data: Arc<dyn AdminData>,
    keys: Arc<auth::Keys>,
    node_name: Arc<str>,
    /// Where uploads wait while they are imported.
    scratch: Arc<Path>,
}

impl AppState {
    /// Runs a data call on the blocking pool.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn AdminData) -> Result<T, DataError> + Send + 'static,
    ) -> Result<T, DataError> {
        let data = self.data.clone();
        match tokio::task::spawn_blocking(move || f(&*data)).await {
            Ok(r) => r,
            Err(e) => Err(DataError::Internal(format!("the request failed: {e}"))),
        }
    }
}

/// The HTTP status of a data error.
fn status_of(e: &DataError) -> StatusCode {
    match e {
        DataError::NotFound(_) => StatusCode::NOT_FOUND,
        DataError::Input(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DataError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DataError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The admin view's routes over `data`, guarded by `token`. `scratch` is a private directory
/// for uploads.
pub fn router(data: Arc<dyn AdminData>, token: &str, node_name: &str, scratch: PathBuf) -> Router {
    let state = AppState {
        data,
        keys: Arc::new(auth::Keys::new(token)),
        node_name: node_name.into(),
        scratch: scratch.into(),
    };
    let protected = Router::new()
        .route("/", get(pages::overview))
        .route("/sync", post(pages::sync_all))
        .route("/audit", get(pages::audit))
        .route("/failures", get(pages::failures))
        .route("/failures/{id}/retry", post(pages::retry))
        .route("/conflicts", get(pages::conflicts))
        .route("/conflicts/{id}", get(pages::conflict))
        .route("/conflicts/{id}/resolve", post(pages::resolve))
        .route("/records", get(pages::records))
        .route("/records/{ty}/{uuid}", get(pages::record))
        .route("/records/{ty}/{uuid}/sync", post(pages::record_sync))
        .route("/bundles", get(pages::bundles))
        .route("/bundles/export", post(pages::export))
        .route(
            "/bundles/import",
            post(pages::import).layer(DefaultBodyLimit::max(UPLOAD_BYTES_MAX)),
        )
        .route("/logout", post(pages::logout))
        .route("/metrics", get(metrics_text))
        .merge(api::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/style.css", get(style))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(FORM_BYTES_MAX))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], html::STYLE).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

async fn metrics_text(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    match s.call(|d| d.metrics()).await {
        Ok(families) => {
            let ct = "text/plain; version=0.0.4; charset=utf-8";
            ([(header::CONTENT_TYPE, ct)], metrics::render(&families)).into_response()
        }
        Err(e) => (status_of(&e), format!("# error: {e}\n")).into_response(),
    }
}

/// Headers on every answer: no caching, no framing, no external anything, no referrer beyond
/// this view. (`no-referrer` would make browsers send `Origin: null` with this view's own
/// forms, which the cross-site guard refuses.)
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let csp = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
               frame-ancestors 'none'; base-uri 'none'";
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Seconds since the Unix epoch (for "x s ago" on the pages).
fn now_secs() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Serves `app` on `listener` until `shutdown` changes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!("admin view: {e}");
    }
}
