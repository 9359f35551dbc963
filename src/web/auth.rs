//! Access to the admin view: the admin token (a file in the node directory), the login cookie,
//! bearer tokens for the API, and the guard against cross-site requests.
//!
//! - The token is 32 random bytes (64 hex digits) in the node directory's `admin-token`, mode
//!   0600 (the node reads it and hands it to [`super::router`]).
//! - A browser logs in by pasting the token; it gets a cookie holding a value derived from the
//!   token (not the token itself), HttpOnly and SameSite=Strict. Changing the token file logs
//!   every browser out at the next start.
//! - The API also takes `Authorization: Bearer TOKEN`.
//! - Every comparison is between blake3 hashes, whose equality is constant-time.
//! - Cross-site requests: the cookie is SameSite=Strict (a browser never sends it from another
//!   site), a state-changing request that carries an `Origin` header must come from this
//!   view's own origin, and every HTML form carries a CSRF token derived from the admin token,
//!   checked by the handler.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Name of the login cookie.
pub const COOKIE: &str = "sitesync_admin";
/// Longest token accepted from a client, in bytes (longer input is refused unread).
pub const TOKEN_BYTES_MAX: usize = 256;

/// The secrets derived from the admin token.
pub struct Keys {
    token: blake3::Hash,
    cookie: String,
    csrf: String,
}

impl Keys {
    pub fn new(token: &str) -> Keys {
        let token = token.trim();
        let derive = |context: &str| blake3::derive_key(context, token.as_bytes());
        Keys {
            token: blake3::hash(token.as_bytes()),
            cookie: hex::encode(derive("sitesync admin cookie v1")),
            csrf: hex::encode(derive("sitesync admin csrf v1")),
        }
    }

    /// Whether `given` is the admin token (constant-time).
    pub fn token_ok(&self, given: &str) -> bool {
        let given = given.trim();
        given.len() <= TOKEN_BYTES_MAX && blake3::hash(given.as_bytes()) == self.token
    }

    fn cookie_ok(&self, given: &str) -> bool {
        blake3::hash(given.as_bytes()) == blake3::hash(self.cookie.as_bytes())
    }

    /// Whether `given` is the CSRF token forms carry (constant-time).
    pub fn csrf_ok(&self, given: &str) -> bool {
        blake3::hash(given.as_bytes()) == blake3::hash(self.csrf.as_bytes())
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The `Set-Cookie` value that logs a browser in.
    pub fn login_cookie(&self) -> String {
        format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", self.cookie)
    }

    /// The `Set-Cookie` value that logs a browser out.
    pub fn logout_cookie() -> String {
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }

    /// Whether the request carries the login cookie or a bearer token.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|t| self.token_ok(t));
        bearer || cookies(headers).any(|(k, v)| k == COOKIE && self.cookie_ok(v))
    }
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
}

/// Whether a state-changing request's `Origin` (if any) is this view's own.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.strip_prefix("http://").is_some_and(|o| !host.is_empty() && o == host)
}

/// Lets authorized requests through; answers 401 with no data otherwise (the login form for
/// pages, a JSON error for the API and metrics).
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !state.keys.authorized(headers) {
        return unauthorized(request.uri().path(), &state);
    }
    if request.method() != Method::GET && !same_origin(headers) {
        let body = "cross-site request refused";
        return (StatusCode::FORBIDDEN, body).into_response();
    }
    next.run(request).await
}

/// The 401 answer: nothing but a way to log in.
pub fn unauthorized(path: &str, state: &AppState) -> Response {
    if path.starts_with("/api/") || path == "/metrics" {
        let body = axum::Json(
            serde_json::json!({"error": "unauthorized: log in or send Authorization: Bearer TOKEN"}),
        );
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body)
            .into_response();
    }
    let page = super::pages::login_page(state, None);
    (StatusCode::UNAUTHORIZED, page).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cookies_and_csrf_are_checked() {
        let keys = Keys::new("a".repeat(64).as_str());
        assert!(keys.token_ok(&"a".repeat(64)));
        assert!(!keys.token_ok(&"a".repeat(63)) && !keys.token_ok(""));
        let mut h = HeaderMap::new();
        assert!(!keys.authorized(&h));
        h.insert(header::COOKIE, format!("x=1; {COOKIE}={}", keys.cookie).parse().expect("hv"));
        assert!(keys.authorized(&h));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {}", "a".repeat(64)).parse().expect("hv"));
        assert!(keys.authorized(&h));
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().expect("hv"));
        assert!(!keys.authorized(&h));
        assert!(keys.csrf_ok(&keys.csrf.clone()) && !keys.csrf_ok("x"));
        assert_ne!(keys.csrf, keys.cookie);
    }

    #[test]
    fn foreign_origins_are_refused() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no Origin: not a browser's cross-site request");
        h.insert(header::HOST, "127.0.0.1:7780".parse().expect("hv"));
        h.insert(header::ORIGIN, "http://127.0.0.1:7780".parse().expect("hv"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().expect("hv"));
        assert!(!same_origin(&h));
    }
}
