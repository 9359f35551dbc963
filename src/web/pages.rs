//! The HTML pages. Each handler reads through [`AdminData`](super::data::AdminData), escapes
//! every value ([`super::html`]) and answers a whole page; actions (POST) answer the page with
//! what happened, and bad input answers the same page with a message and changes nothing.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Form, Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::data::*;
use super::html::{esc, json_inline, json_pre, layout, notice, seg, short_id, utc, when};
use super::{AUDIT_PAGE_DEFAULT, AppState, RECORDS_PAGE_DEFAULT, status_of};
use crate::id::{EntityId, EntityType, NodeId};

mod bundles;
mod conflicts;

pub use bundles::{bundles, export, import};
pub use conflicts::{conflict, conflicts, resolve};

type Params = HashMap<String, String>;

fn page(s: &AppState, title: &str, active: &str, body: &str) -> Html<String> {
    Html(layout(&s.node_name, title, active, s.keys.csrf(), body))
}

fn error_page(s: &AppState, title: &str, active: &str, e: &DataError) -> Response {
    (status_of(e), page(s, title, active, &notice(false, &e.to_string()))).into_response()
}

fn csrf_field(s: &AppState) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(s.keys.csrf()))
}

/// The refusal page when a form does not carry the CSRF token.
fn csrf_refusal(s: &AppState, form: &Params) -> Option<Response> {
    match form.get("csrf") {
        Some(t) if s.keys.csrf_ok(t) => None,
        _ => Some(
            (
                StatusCode::FORBIDDEN,
                page(
                    s,
                    "Refused",
                    "",
                    &notice(
                        false,
                        "the form is stale or came from elsewhere; reload the page and try again",
                    ),
                ),
            )
                .into_response(),
        ),
    }
}

fn label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{} {}", esc(n), short_id(id)),
        None => short_id(id),
    }
}

fn conflict_list(b: &mut String, list: &[ConflictSummary], with_record: bool) {
    b.push_str("<div class=\"scroll\"><table><tr>");
    if with_record {
        b.push_str("<th>Record</th>");
    }
    b.push_str("<th>Field</th><th>Values</th><th class=\"hide-narrow\">Authors</th><th>Latest</th><th></th></tr>");
    for c in list {
        let authors: Vec<String> =
            c.authors.iter().map(|a| a.as_deref().map_or("?".into(), short_id)).collect();
        b.push_str("<tr class=\"conflict\">");
        if with_record {
            let _ = write!(
                b,
                "<td><a href=\"/records/{}\">{}</a></td>",
                record_href(&c.entity),
                esc(&c.entity)
            );
        }
        let _ = write!(
            b,
            "<td><code>{}</code></td><td class=\"num\">{}</td><td class=\"hide-narrow\">{}</td><td>{}</td>\
             <td><a href=\"/conflicts/{}\">Open</a></td></tr>",
            esc(&c.path),
            c.values,
            authors.join(", "),
            utc(c.time),
            seg(&c.id)
        );
    }
    b.push_str("</table></div>");
}

/// `type/uuid` as a path: each part encoded.
fn record_href(entity: &str) -> String {
    match entity.split_once('/') {
        Some((t, u)) => format!("{}/{}", seg(t), seg(u)),
        None => seg(entity),
    }
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

/// The login page (also the body of every 401 answer: it shows no data).
pub fn login_page(_s: &AppState, error: Option<&str>) -> Html<String> {
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&notice(false, e));
    }
    body.push_str(
        "<form method=\"post\" action=\"/login\"><label>Admin token \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required \
         autofocus></label><p class=\"muted\">Print it on the node with \
         <code>sitesync admin token</code>.</p><button>Log in</button></form>",
    );
    Html(super::html::bare("Log in", &body))
}

pub async fn login_form(State(s): State<AppState>) -> Response {
    login_page(&s, None).into_response()
}

pub async fn login(State(s): State<AppState>, Form(form): Form<Params>) -> Response {
    let given = form.get("token").map(String::as_str).unwrap_or_default();
    if !s.keys.token_ok(given) {
        let body = login_page(&s, Some("That is not this node's admin token."));
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    ([(header::SET_COOKIE, s.keys.login_cookie())], Redirect::to("/")).into_response()
}

pub async fn logout(State(s): State<AppState>, Form(form): Form<Params>) -> Response {
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let cookie = super::auth::Keys::logout_cookie();
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

// ---------------------------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------------------------

pub async fn overview(State(s): State<AppState>) -> Response {
    overview_with(&s, None).await
}

pub async fn sync_all(State(s): State<AppState>, Form(form): Form<Params>) -> Response {
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let done = s.call(|d| d.sync_now(None)).await;
    let note = match done {
        Ok(r) => notice(r.ok, &r.message),
        Err(e) => notice(false, &e.to_string()),
    };
    overview_with(&s, Some(note)).await
}

async fn overview_with(s: &AppState, note: Option<String>) -> Response {
    let o = match s.call(|d| d.overview()).await {
        Ok(o) => o,
        Err(e) => return error_page(s, "Overview", "/", &e),
    };
    let mut b = note.unwrap_or_default();
    let records: u64 = o.node.entities.values().sum();
    let failing = o.peers.iter().filter(|p| p.last_error.is_some()).count();
    let lagging: u64 = o.peers.iter().map(|p| p.batches_to_send + p.batches_to_receive).sum();
    b.push_str("<div class=\"cards\">");
    for (n, l, href) in [
        (records, "records", "/records"),
        (o.node.batches, "batches held", "/audit"),
        (o.node.pending_batches, "batches waiting (backlog)", "/audit"),
        (lagging, "batches of lag, all peers", "#peers"),
        (failing as u64, "failing peers", "/failures"),
        (o.failures_needing_attention, "failures needing attention", "/failures"),
        (o.open_conflicts, "open conflicts", "/conflicts"),
    ] {
        let _ = write!(
            b,
            "<a class=\"card\" href=\"{href}\"><div class=\"n\">{n}</div><div class=\"l\">{l}</div></a>"
        );
    }
    b.push_str("</div>");
    let _ = write!(
        b,
        "<h2>This node</h2><div class=\"scroll\"><table><tr><th>Name</th><td>{}</td></tr>\
         <tr><th>Node id</th><td><code>{}</code></td></tr><tr><th>Author</th><td><code>{}</code></td></tr>\
         <tr><th>State digest</th><td><code>{}</code></td></tr></table></div>",
        esc(&o.node.name),
        esc(&o.node.node_id),
        esc(&o.node.author),
        esc(&o.node.digest)
    );
    peers_table(&mut b, s, &o);
    emr_table(&mut b, &o);
    network_table(&mut b, &o);
    b.push_str("<h2>Records by type</h2><div class=\"scroll\"><table><tr><th>Type</th><th>Records</th></tr>");
    for (ty, n) in &o.node.entities {
        let _ = write!(
            b,
            "<tr><td><a href=\"/records?type={}\">{}</a></td><td class=\"num\">{n}</td></tr>",
            seg(ty),
            esc(ty)
        );
    }
    b.push_str("</table></div>");
    page(s, "Overview", "/", &b).into_response()
}

fn peers_table(b: &mut String, s: &AppState, o: &Overview) {
    let _ = write!(b, "<h2 id=\"peers\">Peers</h2>");
    if o.peers.is_empty() {
        b.push_str("<p class=\"muted\">No network peers are configured (bundles only).</p>");
        return;
    }
    b.push_str(
        "<div class=\"scroll\"><table><tr><th>Peer</th><th>Role</th><th>To send</th>\
         <th>To receive</th><th>Last success</th><th class=\"hide-narrow\">Last contact</th>\
         <th class=\"hide-narrow\">Next retry</th><th>Last error</th></tr>",
    );
    for p in &o.peers {
        let lag =
            |n: u64| if n > 0 { format!("<span class=\"lag\">{n}</span>") } else { "0".into() };
        let err = match &p.last_error {
            Some(e) => {
                format!("<span class=\"tag bad\">failing ×{}</span> {}", p.failures.max(1), esc(e))
            }
            None => "<span class=\"tag good\">ok</span>".into(),
        };
        let _ = write!(
            b,
            "<tr data-peer=\"{id}\"><td>{}</td><td>{}</td><td class=\"num\" data-lag=\"send\">{}</td>\
             <td class=\"num\" data-lag=\"receive\">{}</td><td>{}</td><td class=\"hide-narrow\">{}</td>\
             <td class=\"hide-narrow\">{}</td><td>{err}</td></tr>",
            label(&p.node_id, p.name.as_deref()),
            esc(&p.role),
            lag(p.batches_to_send),
            lag(p.batches_to_receive),
            when(p.last_success, o.time),
            when(p.last_contact, o.time),
            if p.addr.is_some() { when(p.next_retry, o.time) } else { "dials in".into() },
            id = esc(&p.node_id),
        );
    }
    b.push_str("</table></div>");
    if o.peers.iter().any(|p| p.addr.is_some()) {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/sync\">{}<p><button>Sync now with every dialled peer</button></p></form>",
            csrf_field(s)
        );
    }
}

fn emr_table(b: &mut String, o: &Overview) {
    if o.emr.is_empty() {
        return;
    }
    b.push_str(
        "<h2 id=\"emr\">EMR links</h2><div class=\"scroll\"><table><tr><th>EMR</th>\
         <th>Profile</th><th>Direction</th><th>Records in</th><th>Records out</th>\
         <th>Failed</th><th>Last success</th><th>Last error</th></tr>",
    );
    for e in &o.emr {
        let err = match &e.last_error {
            Some(x) => format!(
                "<span class=\"tag bad\">failing ×{}</span> {}",
                e.consecutive_failures.max(1),
                esc(x)
            ),
            None => "<span class=\"tag good\">ok</span>".into(),
        };
        let failed = if e.failed > 0 {
            format!("<a href=\"/failures\"><span class=\"lag\">{}</span></a>", e.failed)
        } else {
            "0".into()
        };
        let _ = write!(
            b,
            "<tr data-emr=\"{name}\"><td>{name}<br><small class=\"muted\">{}</small></td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{failed}</td>\
             <td>{}</td><td>{err}</td></tr>",
            esc(&e.base_url),
            esc(&e.profile),
            esc(&e.direction),
            e.records_in,
            e.records_out,
            when((e.last_success > 0).then_some(e.last_success), o.time),
            name = esc(&e.name),
        );
    }
    b.push_str("</table></div>");
}

fn network_table(b: &mut String, o: &Overview) {
    b.push_str("<h2>Network</h2>");
    if o.network.is_empty() {
        b.push_str("<p class=\"muted\">This node accepts changes from itself only.</p>");
        return;
    }
    b.push_str(
        "<div class=\"scroll\"><table><tr><th>Node</th><th>Role</th><th>Listed by</th>\
         <th>Batches held</th><th>Newest data here</th></tr>",
    );
    for n in &o.network {
        let by = if n.listed_by.len() == 64 { short_id(&n.listed_by) } else { esc(&n.listed_by) };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{by}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            label(&n.node_id, n.name.as_deref()),
            esc(&n.role),
            n.batches_held,
            when(n.newest_change, o.time)
        );
    }
    b.push_str("</table></div>");
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

/// Reads the audit filters of a query; a message for the first bad one.
pub fn audit_filter(q: &Params) -> Result<AuditFilter, String> {
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let time = |k: &str, label: &str| {
        get(k)
            .map(|v| {
                v.parse::<i64>().ok().or_else(|| super::html::parse_utc(v)).ok_or_else(|| {
                    format!("{label}: {v:?} is not a time (YYYY-MM-DD, YYYY-MM-DDTHH:MM, or Unix seconds)")
                })
            })
            .transpose()
    };
    let origin = get("origin")
        .map(|v| {
            v.parse::<NodeId>()
                .map_err(|_| format!("origin: {v:?} is not a node id (64 hex digits)"))
        })
        .transpose()?;
    let number = |k: &str| {
        get(k)
            .map(|v| v.parse::<u64>().map_err(|_| format!("{k}: {v:?} is not a whole number")))
            .transpose()
    };
    let filter = AuditFilter {
        origin,
        kind: get("kind").map(str::to_string),
        outcome: get("outcome").map(str::to_string),
        since: time("since", "from")?,
        until: time("until", "to")?,
        before: number("before")?,
        limit: number("limit")?.map_or(AUDIT_PAGE_DEFAULT, |n| n as usize),
    };
    if let (Some(a), Some(b)) = (filter.since, filter.until)
        && a > b
    {
        return Err("from: the time range ends before it starts".into());
    }
    Ok(filter)
}

pub async fn audit(State(s): State<AppState>, Query(q): Query<Params>) -> Response {
    let filter = audit_filter(&q);
    let f2 = filter.clone().unwrap_or_default();
    let page_data = match &filter {
        Ok(f) => {
            let f = f.clone();
            Some(s.call(move |d| d.audit(&f)).await)
        }
        Err(_) => None,
    };
    let choices = s.call(|d| d.audit(&AuditFilter { limit: 1, ..Default::default() })).await;
    let (kinds, outcomes, origins) =
        choices.map(|p| (p.kinds, p.outcomes, p.origins)).unwrap_or_default();
    let mut b = filter_form(&q, &kinds, &outcomes, &origins);
    let status = match (&filter, page_data) {
        (Err(m), _) => {
            b.push_str(&notice(false, m));
            StatusCode::UNPROCESSABLE_ENTITY
        }
        (Ok(_), Some(Ok(p))) => {
            audit_table(&mut b, &p, &q, f2.before.is_some());
            StatusCode::OK
        }
        (Ok(_), Some(Err(e))) => {
            b.push_str(&notice(false, &e.to_string()));
            status_of(&e)
        }
        (Ok(_), None) => StatusCode::OK,
    };
    (status, page(&s, "Audit log", "/audit", &b)).into_response()
}

fn filter_form(q: &Params, kinds: &[String], outcomes: &[String], origins: &[String]) -> String {
    let v = |k: &str| esc(q.get(k).map(String::as_str).unwrap_or_default());
    let select = |name: &str, options: &[String]| {
        let chosen = q.get(name).map(String::as_str).unwrap_or_default();
        let mut out = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for o in options {
            let sel = if o == chosen { " selected" } else { "" };
            let _ = write!(out, "<option{sel}>{}</option>", esc(o));
        }
        out + "</select>"
    };
    format!(
        "<form method=\"get\" action=\"/audit\" class=\"filters\">\
         <label>Origin node{}</label>\
         <label>Kind{}</label><label>Outcome{}</label>\
         <label>From (UTC)<input name=\"since\" value=\"{}\" placeholder=\"YYYY-MM-DD\" size=\"16\"></label>\
         <label>To (UTC)<input name=\"until\" value=\"{}\" placeholder=\"YYYY-MM-DDTHH:MM\" size=\"16\"></label>\
         <label>Per page<input name=\"limit\" value=\"{}\" size=\"4\"></label>\
         <button>Filter</button> <a href=\"/audit\">Clear</a></form>",
        origin_select(q.get("origin").map(String::as_str).unwrap_or_default(), origins),
        select("kind", kinds),
        select("outcome", outcomes),
        v("since"),
        v("until"),
        v("limit"),
    )
}

/// This node (the default) and every child whose audit entries this node keeps.
fn origin_select(chosen: &str, origins: &[String]) -> String {
    let mut out = String::from("<select name=\"origin\"><option value=\"\">this node</option>");
    for (i, o) in origins.iter().enumerate().skip(1) {
        let sel = if o == chosen { " selected" } else { "" };
        let _ =
            write!(out, "<option value=\"{}\"{sel}>child {} ({i})</option>", esc(o), short_id(o));
    }
    if !chosen.is_empty() && !origins.iter().any(|o| o == chosen) {
        let _ =
            write!(out, "<option value=\"{}\" selected>{}</option>", esc(chosen), short_id(chosen));
    }
    out + "</select>"
}

fn audit_table(b: &mut String, p: &AuditPage, q: &Params, paged: bool) {
    if p.entries.is_empty() {
        b.push_str("<p class=\"muted\">No entries match.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table><tr><th>#</th><th>Time (UTC)</th><th class=\"hide-narrow\">Origin</th>\
             <th>Kind</th><th>Outcome</th><th>Peer</th><th>What</th></tr>",
        );
        for e in &p.entries {
            let tag = match e.outcome.as_str() {
                "ok" => "tag good",
                _ => "tag bad",
            };
            let _ = write!(
                b,
                "<tr><td class=\"num\">{}</td><td class=\"nowrap\">{}</td><td class=\"hide-narrow\">{}</td>\
                 <td>{}</td><td><span class=\"{tag}\">{}</span></td><td>{}</td><td class=\"wrap\">{}</td></tr>",
                e.id,
                utc(e.time),
                short_id(&e.origin),
                esc(&e.kind),
                esc(&e.outcome),
                e.peer.as_deref().map(short_id).unwrap_or_default(),
                esc(&e.summary)
            );
        }
        b.push_str("</table></div>");
    }
    let mut links = Vec::new();
    let keep: Vec<(String, String)> = q
        .iter()
        .filter(|(k, v)| k.as_str() != "before" && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let query = |extra: Option<u64>| {
        let mut parts: Vec<String> =
            keep.iter().map(|(k, v)| format!("{}={}", seg(k), seg(v))).collect();
        parts.sort();
        if let Some(n) = extra {
            parts.push(format!("before={n}"));
        }
        parts.join("&")
    };
    if paged {
        links.push(format!("<a href=\"/audit?{}\">Newest</a>", esc(&query(None))));
    }
    if let Some(n) = p.next_before {
        links.push(format!(
            "<a href=\"/audit?{}\" rel=\"next\">Older entries</a>",
            esc(&query(Some(n)))
        ));
    }
    let _ = write!(b, "<div class=\"pager\">{}</div>", links.join(""));
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

pub async fn failures(State(s): State<AppState>) -> Response {
    failures_with(&s, None, StatusCode::OK).await
}

pub async fn retry(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<Params>,
) -> Response {
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let (note, status) = match s.call(move |d| d.retry(&id)).await {
        Ok(r) => (notice(r.ok, &r.message), StatusCode::OK),
        Err(e) => (notice(false, &e.to_string()), status_of(&e)),
    };
    failures_with(&s, Some(note), status).await
}

async fn failures_with(s: &AppState, note: Option<String>, status: StatusCode) -> Response {
    let list = match s.call(|d| d.failures()).await {
        Ok(l) => l,
        Err(e) => return error_page(s, "Failures", "/failures", &e),
    };
    let now = super::now_secs();
    let mut b = note.unwrap_or_default();
    if list.is_empty() {
        b.push_str("<p class=\"muted\">Nothing is failing.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table><tr><th>Operation</th><th>Reason</th><th>Attempts</th>\
             <th>Last success</th><th>Next automatic retry</th><th></th></tr>",
        );
        for f in &list {
            let action = if f.retryable {
                format!(
                    "<form method=\"post\" action=\"/failures/{}/retry\" class=\"inline\">{}<button>Retry now</button></form>",
                    seg(&f.id),
                    csrf_field(s)
                )
            } else {
                "<span class=\"muted\">dials in; retries on its own schedule</span>".into()
            };
            let attention = if f.needs_attention {
                " <span class=\"tag bad\">needs attention</span>"
            } else {
                ""
            };
            let _ = write!(
                b,
                "<tr data-failure=\"{}\"><td>{}{attention}<br><span class=\"muted\">{} · failing since {}</span></td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                esc(&f.id),
                esc(&f.operation),
                esc(&f.id),
                when(Some(f.first_failed), now),
                esc(&f.reason),
                f.attempts,
                when(f.last_success, now),
                if f.retryable { when(f.next_retry, now) } else { "-".into() },
            );
        }
        b.push_str("</table></div>");
    }
    (status, page(s, "Failures", "/failures", &b)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

pub async fn records(State(s): State<AppState>, Query(q): Query<Params>) -> Response {
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let ty = match get("type").map(str::parse::<EntityType>).transpose() {
        Ok(t) => t,
        Err(e) => return error_page(&s, "Records", "/records", &DataError::Input(e.to_string())),
    };
    let after = match get("after").map(str::parse::<EntityId>).transpose() {
        Ok(a) => a,
        Err(e) => return error_page(&s, "Records", "/records", &DataError::Input(e.to_string())),
    };
    let p = match s.call(move |d| d.records(ty, after.as_ref(), RECORDS_PAGE_DEFAULT)).await {
        Ok(p) => p,
        Err(e) => return error_page(&s, "Records", "/records", &e),
    };
    let mut b = String::from(
        "<form method=\"get\" action=\"/records\" class=\"filters\"><label>Type<select name=\"type\"><option value=\"\">all</option>",
    );
    for t in EntityType::ALL {
        let sel = if Some(*t) == ty { " selected" } else { "" };
        let _ = write!(b, "<option{sel}>{}</option>", esc(t.as_str()));
    }
    b.push_str("</select></label><button>Show</button></form>");
    if p.records.is_empty() {
        b.push_str("<p class=\"muted\">No records.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>Record</th></tr>");
        for r in &p.records {
            let _ = write!(
                b,
                "<tr><td><a href=\"/records/{}\">{}</a></td></tr>",
                record_href(r),
                esc(r)
            );
        }
        b.push_str("</table></div>");
    }
    if let Some(next) = &p.next_after {
        let ty_q = ty.map(|t| format!("type={}&", t.as_str())).unwrap_or_default();
        let _ = write!(
            b,
            "<div class=\"pager\"><a href=\"/records?{}after={}\">Next page</a></div>",
            esc(&ty_q),
            seg(next)
        );
    }
    page(&s, "Records", "/records", &b).into_response()
}

fn entity_of(ty: &str, uuid: &str) -> Result<EntityId, DataError> {
    EntityId::parse_parts(ty, uuid).map_err(|e| DataError::NotFound(e.to_string()))
}

pub async fn record(
    State(s): State<AppState>,
    Path((ty, uuid)): Path<(String, String)>,
) -> Response {
    match entity_of(&ty, &uuid) {
        Ok(id) => record_with(&s, id, None).await,
        Err(e) => error_page(&s, "Record", "/records", &e),
    }
}

pub async fn record_sync(
    State(s): State<AppState>,
    Path((ty, uuid)): Path<(String, String)>,
    Form(form): Form<Params>,
) -> Response {
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let id = match entity_of(&ty, &uuid) {
        Ok(id) => id,
        Err(e) => return error_page(&s, "Record", "/records", &e),
    };
    let note = match s.call(move |d| d.sync_now(Some(&id))).await {
        Ok(r) => notice(r.ok, &r.message),
        Err(e) => notice(false, &e.to_string()),
    };
    record_with(&s, id, Some(note)).await
}

async fn record_with(s: &AppState, id: EntityId, note: Option<String>) -> Response {
    let r = match s.call(move |d| d.record(&id)).await {
        Ok(r) => r,
        Err(e) => return error_page(s, "Record", "/records", &e),
    };
    let mut b = note.unwrap_or_default();
    let _ = write!(
        b,
        "<p><code>{}</code></p><form method=\"post\" action=\"/records/{}/sync\">{}\
         <button>Sync now</button> <span class=\"muted\">runs a round with every dialled peer</span></form>",
        esc(&r.id),
        record_href(&r.id),
        csrf_field(s)
    );
    if !r.conflicts.is_empty() {
        b.push_str("<h2>Open conflicts</h2>");
        conflict_list(&mut b, &r.conflicts, false);
    }
    let _ = write!(b, "<h2>Current content</h2>{}", json_pre(&r.record));
    b.push_str("<h2>History</h2>");
    if r.history_truncated {
        let _ = write!(
            b,
            "<p class=\"muted\">The latest {} changes; older ones are left out.</p>",
            r.history.len()
        );
    }
    b.push_str("<div class=\"scroll\"><table><tr><th>Time (UTC)</th><th>By</th><th>Changed</th><th class=\"hide-narrow\">Change</th></tr>");
    for h in r.history.iter().rev() {
        let mut edits = String::new();
        for e in &h.edits {
            let value = e
                .value
                .as_ref()
                .map(|v| format!(" = <code>{}</code>", json_inline(v)))
                .unwrap_or_default();
            let _ =
                write!(edits, "<div>{} <code>{}</code>{value}</div>", esc(&e.action), esc(&e.path));
        }
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{edits}</td><td class=\"hide-narrow\">{}</td></tr>",
            utc(h.time),
            h.node.as_deref().map_or("?".into(), |n| label(n, h.node_name.as_deref())),
            short_id(&h.hash)
        );
    }
    b.push_str("</table></div>");
    page(s, "Record", "/records", &b).into_response()
}
