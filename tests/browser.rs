//! The admin view in a real browser: headless Chromium driven by chromedriver over WebDriver
//! (plain HTTP, W3C protocol). A parent and a child sync over QUIC on loopback and edit one
//! patient field apart; in the parent's view the test logs in with the token, sees the
//! child's lag, opens the conflict, resolves it, and checks it is gone (and, after the next
//! sync, gone on the child too). Each page is saved as a PNG under `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs them); the test fails,
//! never skips, when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

mod net;
use net::{Node, WAIT_MAX, patients_in, wait_for};

mod admin;
use admin::{Http, free_tcp_port, serve_admin, token};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver web element identifier.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(log: &Path) -> Driver {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's {package} (scripts/test does: apt-get install \
                 chromium chromium-driver)"
            );
        }
        let port = free_tcp_port();
        let log = std::fs::File::create(log).expect("chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let d = Driver { child, base };
        let http = Http::new(&d.base);
        let ready = wait_for(WAIT_MAX, || {
            let url = format!("{}/status", d.base);
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            let mut r = agent.get(&url).call().ok()?;
            let v: Value = serde_json::from_slice(&r.body_mut().read_to_vec().ok()?).ok()?;
            (v["value"]["ready"] == json!(true)).then_some(())
        });
        drop(http);
        assert!(ready.is_some(), "chromedriver did not become ready");
        d
    }

    fn session(&self, profile: &Path) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1400", "--hide-scrollbars",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let http = Http::new(&self.base);
        let r = http.post_json("/session", &caps);
        assert_eq!(r.status, 200, "new WebDriver session: {}", r.text());
        let id = r.json()["value"]["sessionId"].as_str().expect("session id").to_string();
        Browser { http, id }
    }
}

/// One WebDriver session.
struct Browser {
    http: Http,
    id: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.http.base, self.id);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let _ = agent.delete(&url).call();
    }
}

impl Browser {
    fn cmd(&self, path: &str, body: Value) -> Value {
        let r = self.http.post_json(&format!("/session/{}{path}", self.id), &body);
        assert_eq!(r.status, 200, "WebDriver {path}: {}", r.text());
        r.json()["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let r = self.http.get(&format!("/session/{}{path}", self.id));
        assert_eq!(r.status, 200, "WebDriver {path}: {}", r.text());
        r.json()["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("/url", json!({"url": url}));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd("/elements", json!({"using": "css selector", "value": css}));
        v.as_array()
            .map(|l| l.iter().filter_map(|e| e[ELEMENT].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    fn find(&self, css: &str) -> String {
        let all = self.find_all(css);
        assert!(!all.is_empty(), "no element {css} on {}:\n{}", self.url(), self.source());
        all[0].clone()
    }

    /// Waits (bounded) until an element matches `css`: a click's navigation may still run.
    fn wait(&self, css: &str) -> String {
        let found = wait_for(WAIT_MAX, || self.find_all(css).into_iter().next());
        found.unwrap_or_else(|| panic!("no element {css} on {}:\n{}", self.url(), self.source()))
    }

    fn text_of(&self, element: &str) -> String {
        self.get(&format!("/element/{element}/text")).as_str().unwrap_or_default().to_string()
    }

    fn text(&self, css: &str) -> String {
        self.text_of(&self.find(css))
    }

    fn click(&self, element: &str) {
        self.cmd(&format!("/element/{element}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(&format!("/element/{e}/value"), json!({"text": text}));
    }

    fn url(&self) -> String {
        self.get("/url").as_str().unwrap_or_default().to_string()
    }

    fn source(&self) -> String {
        self.get("/source").as_str().unwrap_or_default().to_string()
    }

    fn size(&self, width: u32, height: u32) {
        self.cmd("/window/rect", json!({"width": width, "height": height}));
    }

    fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let data = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots");
    std::fs::create_dir_all(&dir).expect("target/screenshots");
    dir
}

#[test]
fn log_in_see_the_lag_resolve_a_conflict_in_headless_chromium() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shots = screenshots_dir();
    let parent = Node::init(tmp.path(), "district");
    let child = Node::init(tmp.path(), "clinic-north");
    let quic = format!("127.0.0.1:{}", net::free_port());
    parent.network(Some(&quic), 3600);
    child.network(None, 3600);
    parent.peer_add(&child, "child", None);
    child.peer_add(&parent, "parent", Some(&quic));
    // A peer the parent dials where nothing listens: a failure to see and retry.
    let gone = Node::init(tmp.path(), "region-south");
    parent.peer_add(&gone, "peer", Some(&format!("127.0.0.1:{}", net::free_port())));

    let mut rec = net::patient("N", 1);
    rec["names"][0]["familyName"] = json!(admin::HOSTILE_NAME);
    rec["gender"] = json!("F");
    let uuid = rec["uuid"].as_str().expect("uuid").to_string();
    parent.put("patient", &rec);
    let (_parent_serve, base) = serve_admin(&parent);
    let _child_serve = child.serve();
    // The child dials its parent once at start, then every hour: it holds the patient.
    let synced = wait_for(WAIT_MAX, || (patients_in(&child.try_status()?) == 1).then_some(()));
    assert!(synced.is_some(), "the child got the patient");

    // Apart, both change the gender; the child syncs: the conflict is on both nodes.
    let mut on_parent = admin::get(&parent, &uuid)["record"].clone();
    on_parent["gender"] = json!("M");
    parent.put("patient", &on_parent);
    let mut on_child = admin::get(&child, &uuid)["record"].clone();
    on_child["gender"] = json!("O");
    child.put("patient", &on_child);
    child.ok(&["sync"]);
    for n in [&parent, &child] {
        let c = admin::get(n, &uuid)["conflicts"].clone();
        assert_eq!(c.as_array().map(Vec::len), Some(1), "{}: {c}", n.name);
    }
    // One more record on the parent: the child lags one batch behind until its next round.
    parent.put("patient", &net::patient("N", 2));

    let driver = Driver::start(&tmp.path().join("chromedriver.log"));
    let b = driver.session(&tmp.path().join("chromium-profile"));

    // Not logged in: the login page and nothing else.
    b.go(&format!("{base}/conflicts"));
    assert!(b.find_all("table").is_empty(), "no data before logging in");
    assert!(!b.source().contains(&uuid));
    b.screenshot(&shots, "01-login");
    b.type_into("input[name=token]", &token(&parent));
    b.click(&b.find("form[action='/login'] button"));

    // The overview: the child and its lag.
    let row = format!("tr[data-peer='{}']", child.id);
    b.wait(&row);
    assert_eq!(b.url(), format!("{base}/"), "logged in, on the overview");
    let to_send = b.text(&format!("{row} td[data-lag='send']"));
    assert_eq!(to_send, "1", "the child lacks the parent's last batch");
    assert!(b.text(&row).contains("clinic-north"));
    b.screenshot(&shots, "02-overview");

    // The conflict: listed, opened, both values side by side.
    b.go(&format!("{base}/conflicts"));
    assert_eq!(b.find_all("tr.conflict").len(), 1);
    b.screenshot(&shots, "03-conflicts");
    b.click(&b.find("tr.conflict a[href^='/conflicts/']"));
    b.wait("section.side");
    let sides = b.find_all("section.side");
    assert_eq!(sides.len(), 2, "two values side by side");
    let texts: Vec<String> = sides.iter().map(|s| b.text_of(s)).collect();
    let childs = texts.iter().position(|t| t.contains("\"O\"")).expect("the child's value");
    assert!(texts[childs].contains("clinic-north"), "the value names its node: {}", texts[childs]);
    assert!(texts.iter().any(|t| t.contains("\"M\"") && t.contains("district")), "{texts:?}");
    b.screenshot(&shots, "04-conflict");

    // A bad value first: a message, nothing changed.
    b.type_into("textarea[name=value]", "not json");
    b.click(&b.find("button[name=custom]"));
    assert!(b.text_of(&b.wait(".notice.error")).contains("not valid JSON"));
    b.screenshot(&shots, "05-conflict-bad-input");
    assert_eq!(admin::get(&parent, &uuid)["conflicts"].as_array().map(Vec::len), Some(1));

    // Keep the child's value.
    let sides = b.find_all("section.side");
    let button = b.find_all(&format!("section.side[data-value='{childs}'] button[name=take]"));
    assert_eq!(sides.len(), 2);
    b.click(&button[0]);
    assert!(b.text_of(&b.wait(".notice.ok")).contains("resolved gender"));
    assert!(b.find_all("tr.conflict").is_empty(), "the conflict is gone from the list");
    assert!(b.text("#no-conflicts").contains("No open conflicts"));
    b.screenshot(&shots, "06-resolved");
    let now = admin::get(&parent, &uuid);
    assert_eq!(now["conflicts"], json!([]));
    assert_eq!(now["record"]["gender"], json!("O"));

    // The child's next round carries the resolution: gone there too.
    child.ok(&["sync"]);
    let on_child = admin::get(&child, &uuid);
    assert_eq!(on_child["conflicts"], json!([]), "closed on the child: {on_child}");
    assert_eq!(on_child["record"]["gender"], json!("O"));

    // Every other page, for the record.
    for (path, name) in [
        (format!("/records/patient/{uuid}"), "07-record"),
        ("/audit".to_string(), "08-audit"),
        ("/bundles".to_string(), "10-bundles"),
        ("/records".to_string(), "11-records"),
        ("/metrics".to_string(), "12-metrics"),
        ("/".to_string(), "13-overview-after"),
    ] {
        b.go(&format!("{base}{path}"));
        assert!(!b.source().contains("<script>alert"), "{path}: markup stays escaped");
        b.screenshot(&shots, name);
    }
    b.go(&format!("{base}/records/patient/{uuid}"));
    assert!(b.text("pre.json").contains(admin::HOSTILE_NAME), "shown as text, not run");
    // The unreachable peer: its failure, with the reason, retried from the page.
    let mut api = Http::new(&base);
    api.bearer = Some(token(&parent));
    let failed = wait_for(std::time::Duration::from_secs(40), || {
        let list = api.get("/api/failures").json();
        list.as_array()
            .and_then(|l| l.iter().find(|f| f["peer"] == serde_json::json!(gone.id)))
            .and_then(|f| f["id"].as_str().map(str::to_string))
    });
    let failure_id = failed.expect("the unreachable peer shows as a failure");
    b.go(&format!("{base}/failures"));
    let row = format!("tr[data-failure='{failure_id}']");
    assert!(b.text(&row).contains("timed out"), "{}", b.text(&row));
    b.screenshot(&shots, "09-failures");
    b.click(&b.find(&format!("{row} button")));
    let note = b.text_of(&b.wait(".notice"));
    assert!(note.contains("the retry failed too") && note.contains("timed out"), "{note}");
    b.screenshot(&shots, "09-failures-retried");

    // A phone's width.
    b.size(390, 844);
    b.go(&format!("{base}/"));
    b.screenshot(&shots, "14-overview-phone");
    b.go(&format!("{base}/records/patient/{uuid}"));
    b.screenshot(&shots, "15-record-phone");
    eprintln!("screenshots in {}", shots.display());
}
