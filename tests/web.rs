//! The admin web view and JSON API of a real `sitesync serve`, over HTTP on loopback: access
//! control, every page, metrics, bad input, conflict resolution, bundles, failures and retry.

use serde_json::{Value, json};

mod net;
use net::{Node, p};

mod admin;
use admin::{Http, conflicted, get, serve_admin, token};

/// Every GET route of the view, with a path that exists once `uuid` and `conflict` are known.
fn pages(uuid: &str, conflict: &str) -> Vec<String> {
    vec![
        "/".into(),
        "/audit".into(),
        "/audit?kind=local_write&limit=1".into(),
        "/failures".into(),
        "/conflicts".into(),
        format!("/conflicts/{conflict}"),
        "/records".into(),
        "/records?type=patient".into(),
        format!("/records/patient/{uuid}"),
        "/bundles".into(),
        "/metrics".into(),
    ]
}

fn api_routes(uuid: &str, conflict: &str) -> Vec<String> {
    vec![
        "/api/overview".into(),
        "/api/audit".into(),
        "/api/failures".into(),
        "/api/conflicts".into(),
        format!("/api/conflicts/{conflict}"),
        "/api/records".into(),
        format!("/api/records/patient/{uuid}"),
    ]
}

fn conflict_id(uuid: &str, path: &str) -> String {
    format!("patient%3A{uuid}%3A{path}")
}

/// Nothing of the node or its records in a refused answer.
fn assert_no_data(a: &admin::Answer, node: &Node, uuid: &str, what: &str) {
    let body = a.text();
    for secret in [node.id.as_str(), uuid, "Okello", "script>alert", node.name.as_str()] {
        assert!(!body.contains(secret), "{what}: the 401 body shows {secret:?}:\n{body}");
    }
}

#[test]
fn without_the_token_everything_is_401_and_shows_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let b = Node::init(tmp.path(), "clinic-b");
    let uuid = conflicted(tmp.path(), &a, &b);
    let (_serve, base) = serve_admin(&a);
    let conflict = conflict_id(&uuid, "gender");
    let digest = a.digest();

    let anonymous = Http::new(&base);
    let mut wrong = Http::new(&base);
    wrong.bearer = Some("0".repeat(64));
    let mut wrong_cookie = Http::new(&base);
    wrong_cookie.cookie = Some(format!("sitesync_admin={}", "0".repeat(64)));
    for client in [&anonymous, &wrong, &wrong_cookie] {
        for path in pages(&uuid, &conflict).iter().chain(&api_routes(&uuid, &conflict)) {
            let r = client.get(path);
            assert_eq!(r.status, 401, "GET {path}: {}", r.text());
            assert_no_data(&r, &a, &uuid, path);
        }
        for (path, body) in [
            (format!("/conflicts/{conflict}/resolve"), vec![("take", "0"), ("csrf", "x")]),
            ("/sync".to_string(), vec![("csrf", "x")]),
            ("/bundles/export".to_string(), vec![("csrf", "x")]),
        ] {
            let r = client.post_form(&path, &body);
            assert_eq!(r.status, 401, "POST {path}");
            assert_no_data(&r, &a, &uuid, &path);
        }
        let r =
            client.post_json(&format!("/api/conflicts/{conflict}/resolve"), &json!({"take": 0}));
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = anonymous.post_form("/login", &[("token", &"f".repeat(64))]);
    assert_eq!(r.status, 401, "a wrong token does not log in");
    assert!(r.header("set-cookie").is_none());
    assert!(r.text().contains("not this node&#39;s admin token"), "{}", r.text());
    assert_no_data(&r, &a, &uuid, "wrong login");
    assert_eq!(a.digest(), digest, "nothing changed");
    assert_eq!(get(&a, &uuid)["conflicts"].as_array().map(Vec::len), Some(2));
}

#[test]
fn the_token_logs_in_and_every_page_and_route_answers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let b = Node::init(tmp.path(), "clinic-b");
    let uuid = conflicted(tmp.path(), &a, &b);
    let (_serve, base) = serve_admin(&a);
    let token = token(&a);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(a.dir.join("admin-token")).expect("token file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let conflict = conflict_id(&uuid, "gender");

    let mut web = Http::new(&base);
    let login = web.login(&token);
    assert_eq!(login.status, 303, "{}", login.text());
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").expect("a cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(&token), "the cookie is not the token itself");

    for path in pages(&uuid, &conflict) {
        let r = web.get(&path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let body = r.text();
        if path != "/metrics" {
            assert!(body.contains("clinic-a"), "{path} names the node");
            assert!(!body.contains("<script"), "{path} carries no unescaped markup:\n{body}");
            let csp = r.header("content-security-policy").unwrap_or_default();
            assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        }
    }
    let overview = web.get("/").text();
    assert!(overview.contains(&a.id) && overview.contains("open conflicts"), "{overview}");
    assert!(overview.contains("clinic-b"), "the trusted node is in the network table");
    let list = web.get("/conflicts").text();
    assert!(
        list.contains(&format!("patient/{uuid}"))
            && list.contains("gender")
            && list.contains("birthdate")
    );
    let page = web.get(&format!("/conflicts/{conflict}")).text();
    for shown in
        ["&quot;M&quot;", "&quot;O&quot;", "clinic-a", "clinic-b", "Keep value 0", "Keep value 1"]
    {
        assert!(page.contains(shown), "the conflict page shows {shown}:\n{page}");
    }
    let record = web.get(&format!("/records/patient/{uuid}")).text();
    assert!(record.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the name is escaped");
    assert!(record.contains("History") && record.contains("gender"), "{record}");
    assert!(record.contains("clinic-b"), "history names the nodes that changed the record");
    let audit = web.get("/audit?kind=local_write&limit=1").text();
    assert!(audit.contains("local write") && audit.contains("Older entries"), "{audit}");
    let bad = web.get("/audit?since=yesterday");
    assert_eq!(bad.status, 422);
    assert!(bad.text().contains("is not a time"), "{}", bad.text());
    let none = web.get(&format!("/audit?origin={}", b.id)).text();
    assert!(none.contains("No entries match"), "entries are this node's own");

    // The JSON API, with the cookie and with a bearer token.
    let mut api = Http::new(&base);
    api.bearer = Some(token.clone());
    for client in [&web, &api] {
        for path in api_routes(&uuid, &conflict) {
            let r = client.get(&path);
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
            r.json();
        }
    }
    let o = api.get("/api/overview").json();
    assert_eq!(o["node"]["node_id"], json!(a.id));
    assert_eq!(o["open_conflicts"], json!(2));
    let c = api.get(&format!("/api/conflicts/{conflict}")).json();
    let values: Vec<&Value> =
        c["values"].as_array().expect("values").iter().map(|v| &v["value"]).collect();
    assert!(values.contains(&&json!("M")) && values.contains(&&json!("O")), "{c}");
    let page1 = api.get("/api/audit?limit=2").json();
    let before = page1["next_before"].as_u64().expect("a next page");
    let page2 = api.get(&format!("/api/audit?limit=2&before={before}")).json();
    let ids = |p: &Value| {
        p["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["id"].as_u64())
            .collect::<Vec<_>>()
    };
    assert!(ids(&page2).iter().all(|i| i.expect("id") < before), "older entries");
    assert_eq!(api.get("/api/audit?until=nope").status, 400);
    assert_eq!(api.get("/api/conflicts/patient%3Anope%3Agender").status, 404);
    assert_eq!(api.get("/api/records/patient/not-a-uuid").status, 404);

    // Metrics: an independent parser accepts them, and they say what the node holds.
    let metrics = api.get("/metrics");
    assert!(
        metrics.header("content-type").unwrap_or_default().starts_with("text/plain; version=0.0.4")
    );
    let samples = admin::parse_prometheus(&metrics.text());
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert_eq!(value("sitesync_conflicts_open"), Some(2.0));
    assert_eq!(value("sitesync_entities{type=\"patient\"}"), Some(1.0));
    assert!(value("sitesync_batches").is_some_and(|n| n >= 3.0));

    // Logging out ends the cookie.
    let csrf = web.csrf("/");
    let out = web.post_form("/logout", &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
}

#[test]
fn bad_resolutions_change_nothing_and_a_resolution_closes_the_conflict_everywhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let b = Node::init(tmp.path(), "clinic-b");
    let uuid = conflicted(tmp.path(), &a, &b);
    let (_serve, base) = serve_admin(&a);
    let mut web = Http::new(&base);
    web.login(&token(&a));
    let gender = conflict_id(&uuid, "gender");
    let path = format!("/conflicts/{gender}/resolve");
    let csrf = web.csrf(&format!("/conflicts/{gender}"));
    let digest = a.digest();

    for (fields, message) in [
        (vec![("value", "{not json"), ("custom", "1")], "not valid JSON"),
        (vec![("value", "F"), ("custom", "1")], "not valid JSON"),
        (vec![("take", "7")], "there is no value 7"),
        (vec![("take", "x")], "is not a value number"),
        (vec![("value", "\"Z\""), ("custom", "1")], "does not fit the record"),
        (vec![("value", "null"), ("custom", "1")], "null is not a value"),
        (vec![("value", ""), ("custom", "1")], "Pick one of the values"),
    ] {
        let mut all = fields.clone();
        all.push(("csrf", &csrf));
        let r = web.post_form(&path, &all);
        assert_eq!(r.status, 422, "{fields:?}: {}", r.text());
        let body = r.text();
        assert!(body.contains(message) && body.contains("role=\"alert\""), "{fields:?}:\n{body}");
        assert_eq!(a.digest(), digest, "{fields:?} changed nothing");
    }
    let typed =
        web.post_form(&path, &[("value", "<b>\"x"), ("custom", "1"), ("csrf", &csrf)]).text();
    assert!(typed.contains("&lt;b&gt;&quot;x"), "the typed value comes back, escaped");
    let r = web.post_form(&path, &[("take", "0")]);
    assert_eq!(r.status, 403, "a form without the CSRF token is refused");
    let r = web.post_form(&path, &[("take", "0"), ("csrf", &"0".repeat(64))]);
    assert_eq!(r.status, 403);
    assert_eq!(a.digest(), digest, "nothing changed");

    // Keep the value reads show now: a plain put would see nothing to change; the view still
    // writes it, so the conflict closes.
    let c = web.get(&format!("/api/conflicts/{gender}")).json();
    let winner = c["winner"].as_u64().expect("winner");
    let shown = c["values"][winner as usize]["value"].clone();
    let r = web.post_form(&path, &[("take", &winner.to_string()), ("csrf", &csrf)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("resolved gender"), "{}", r.text());
    let now = get(&a, &uuid);
    assert_eq!(now["record"]["gender"], shown);
    let paths: Vec<&str> = now["conflicts"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert_eq!(paths, ["birthdate"], "only the birthdate is still open");
    assert_eq!(web.get(&format!("/conflicts/{gender}")).status, 404, "the conflict is closed");

    // The API: a value the schema refuses changes nothing; a good one closes the conflict.
    let birthdate = conflict_id(&uuid, "birthdate");
    let api_path = format!("/api/conflicts/{birthdate}/resolve");
    let digest = a.digest();
    let r = web.post_json(&api_path, &json!({"value": "not a date"}));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("birthdate")));
    assert_eq!(web.post_json(&api_path, &json!({"take": 2})).status, 422);
    assert_eq!(web.post_json(&api_path, &json!({"nothing": 1})).status, 400);
    assert_eq!(a.digest(), digest);
    let r = web.post_json(&api_path, &json!({"value": "1970-06-15"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], json!(true));
    let now = get(&a, &uuid);
    assert_eq!(now["record"]["birthdate"], json!("1970-06-15"));
    assert_eq!(now["conflicts"], json!([]));
    assert!(web.get("/conflicts").text().contains("No open conflicts"));

    // The resolutions are changes like any other: they close the conflicts on B too.
    let out = tmp.path().join("resolved.ssb");
    a.ok(&["export", "--out", p(&out), "--peer", &b.id]);
    admin::import(&b, &out);
    let on_b = get(&b, &uuid);
    assert_eq!(on_b["conflicts"], json!([]), "closed on B: {on_b}");
    assert_eq!(on_b["record"], now["record"]);
}

#[test]
fn bundles_download_and_upload_through_the_view() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let b = Node::init(tmp.path(), "clinic-b");
    let uuid = conflicted(tmp.path(), &a, &b);
    let c = Node::init(tmp.path(), "clinic-c");
    admin::trust(&a, &c);
    let (_serve, base) = serve_admin(&a);
    let mut web = Http::new(&base);
    web.login(&token(&a));
    let csrf = web.csrf("/bundles");

    // A bundle for a node that has everything carries nothing new to it.
    let r = web.post_form("/bundles/export", &[("csrf", &csrf), ("peer", "")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-disposition").is_some_and(|d| d.starts_with("attachment")));
    let bundle = tmp.path().join("download.ssb");
    std::fs::write(&bundle, &r.body).expect("write");
    admin::trust(&c, &a);
    admin::trust(&c, &b);
    admin::import(&c, &bundle);
    assert_eq!(get(&c, &uuid)["conflicts"].as_array().map(Vec::len), Some(2), "C holds it all");
    let r = web.post_form("/bundles/export", &[("csrf", &csrf), ("peer", "zz")]);
    assert_eq!(r.status, 422);
    assert!(r.text().contains("is not a node id"));

    // Uploads: garbage is refused and changes nothing; C's new write arrives.
    let digest = a.digest();
    let r = web.post_upload("/bundles/import", &csrf, b"not a bundle at all");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("Nothing was changed"), "{}", r.text());
    let r = web.post_bytes("/api/import", b"");
    assert_eq!(r.status, 422);
    assert_eq!(a.digest(), digest);
    let mut rec = get(&c, &uuid)["record"].clone();
    rec["birthdateEstimated"] = json!(true);
    c.put("patient", &rec);
    let from_c = tmp.path().join("from-c.ssb");
    c.ok(&["export", "--out", p(&from_c)]);
    let bytes = std::fs::read(&from_c).expect("read");
    let r = web.post_upload("/bundles/import", &csrf, &bytes);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("1 batches applied"), "{}", r.text());
    assert_eq!(get(&a, &uuid)["record"]["birthdateEstimated"], json!(true));
    let r = web.post_bytes("/api/import", &bytes);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied_batches"], json!(0), "already present: {}", r.text());
}

#[test]
fn a_failing_peer_shows_with_its_reason_and_retries_from_the_page() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let gone = Node::init(tmp.path(), "district");
    let port = net::free_port().to_string();
    a.peer_add(&gone, "parent", Some(&format!("127.0.0.1:{port}")));
    a.put("patient", &net::patient("A", 1));
    let (_serve, base) = serve_admin(&a);
    let mut web = Http::new(&base);
    web.login(&token(&a));

    // The first dial times out (nothing listens there).
    let failing = net::wait_for(std::time::Duration::from_secs(40), || {
        let f = web.get("/api/failures").json();
        f.as_array().filter(|l| !l.is_empty()).cloned()
    })
    .expect("the failure shows up");
    assert_eq!(failing[0]["peer"], json!(gone.id));
    let id = failing[0]["id"].as_str().expect("failure id").to_string();
    assert!(id.starts_with("sync-"), "{failing:?}");
    assert!(failing[0]["reason"].as_str().is_some_and(|r| r.contains("timed out")), "{failing:?}");
    assert_eq!(failing[0]["retryable"], json!(true));
    assert_eq!(failing[0]["needs_attention"], json!(false), "one attempt of the default 20");
    let page = web.get("/failures").text();
    assert!(page.contains("sync with parent district") && page.contains("Retry now"), "{page}");
    let overview = web.get("/").text();
    assert!(overview.contains("failing"), "{overview}");
    let metrics = web.get("/metrics").text();
    assert!(metrics.lines().any(|l| l == "sitesync_failures 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "sitesync_failures_needing_attention 0"), "{metrics}");

    let csrf = web.csrf("/failures");
    let r = web.post_form(&format!("/failures/{id}/retry"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("the retry failed too"), "{}", r.text());
    let status = a.status();
    let peer = net::peer_entry(&status, &gone.id);
    assert!(peer["failures"].as_u64().is_some_and(|n| n >= 2), "the retry counted: {peer}");
    let after = web.get("/api/failures").json();
    assert_eq!(after[0]["manual_retries"], json!(1), "{after}");
    assert!(after[0]["attempts"].as_u64().is_some_and(|n| n >= 2), "{after}");
    let audit = web.get("/api/audit?kind=failure").json();
    assert!(
        audit.to_string().contains("retried by hand"),
        "the retry is in the audit log: {audit}"
    );
    let r = web.post_json(&format!("/api/failures/{}/retry", "0".repeat(64)), &json!({}));
    assert_eq!(r.status, 404);
}

#[test]
fn the_admin_address_must_be_loopback_unless_allowed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let r = a.run(&["admin", "set", "--listen", "0.0.0.0:7780"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("allow_remote"), "{}", r.stderr);
    a.ok(&["admin", "set", "--listen", "0.0.0.0:7781", "--allow-remote", "true"]);
    let toml = std::fs::read_to_string(a.dir.join("sitesync.toml")).expect("config");
    assert!(toml.contains("[admin]") && toml.contains("allow_remote = true"), "{toml}");
    let t = token(&a);
    assert_eq!(t.len(), 64);
    assert_eq!(token(&a), t, "the token stays");
}

#[test]
fn a_parent_filters_the_audit_log_by_child_origin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = Node::init(tmp.path(), "district");
    let child = Node::init(tmp.path(), "clinic-c");
    let addr = format!("127.0.0.1:{}", net::free_port());
    parent.network(Some(&addr), 60);
    parent.peer_add(&child, "child", None);
    child.peer_add(&parent, "parent", Some(&addr));
    child.put("patient", &net::patient("C", 1));
    let (_parent_serve, base) = serve_admin(&parent);
    let (_child_serve, _) = serve_admin(&child);
    let r = child.sync(None);
    assert_eq!(r.code, Some(0), "{}", r.describe());

    let mut web = Http::new(&base);
    web.login(&token(&parent));
    // The child's entries, as the parent keeps them: their origin is the child.
    let page = web.get(&format!("/api/audit?origin={}&kind=local_write", child.id)).json();
    let entries = page["entries"].as_array().cloned().unwrap_or_default();
    assert!(!entries.is_empty(), "the child's local write is in the parent's copy: {page}");
    assert!(entries.iter().all(|e| e["origin"] == json!(child.id) && e["kind"] == "local_write"));
    assert!(page["origins"].as_array().is_some_and(|o| o.contains(&json!(child.id))), "{page}");
    // Without an origin, the parent's own log (its roster is its only local write).
    let own = web.get("/api/audit?kind=local_write").json();
    let own = own["entries"].as_array().cloned().unwrap_or_default();
    assert!(own.iter().all(|e| e["origin"] == json!(parent.id)), "{own:?}");
    let html = web.get(&format!("/audit?origin={}", child.id)).text();
    assert!(html.contains("local write") && html.contains("selected"), "{html}");
    // The overview's network table says how current each node's data is here.
    let overview = web.get("/api/overview").json();
    let entry = overview["network"]
        .as_array()
        .and_then(|n| n.iter().find(|e| e["node_id"] == json!(child.id)))
        .cloned()
        .unwrap_or_else(|| panic!("the child is in the network table: {overview}"));
    let newest = entry["newest_change"].as_i64().expect("newest change time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    assert!((now - 600..=now + 5).contains(&newest), "written just now: {entry}");
    assert!(web.get("/").text().contains("Newest data here"));
}
