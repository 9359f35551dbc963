//! The EMR bridge's HTTP client (ureq) and the loop `serve` runs per `[[emr]]` link.

use std::time::Duration;

use super::{EMR_REQUEST_TIMEOUT_SECS, EMR_RESPONSE_BYTES_MAX, EmrHttp, EmrReply};
use crate::emr::EmrLink;
use crate::node::Node;

/// [`EmrHttp`] with ureq: rustls with webpki roots for https, plain http as configured, the
/// auth header on every request (never logged).
pub struct UreqEmr {
    agent: ureq::Agent,
    auth: Option<crate::fhir::target::Secret>,
}

impl UreqEmr {
    pub fn new(link: &EmrLink) -> UreqEmr {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(EMR_REQUEST_TIMEOUT_SECS)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("sitesync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        UreqEmr { agent, auth: link.auth_header.clone() }
    }

    fn answer(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<EmrReply, String> {
        let mut resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(EMR_RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|e| format!("reading the answer (HTTP {status}): {e}"))?;
        Ok(EmrReply { status, body, retry_after })
    }
}

impl EmrHttp for UreqEmr {
    fn get(&mut self, url: &str) -> Result<EmrReply, String> {
        let mut req = self.agent.get(url).header("Accept", "application/fhir+json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth.expose());
        }
        Self::answer(req.call())
    }

    fn put(&mut self, url: &str, body: &[u8], if_match: Option<&str>) -> Result<EmrReply, String> {
        let mut req = self
            .agent
            .put(url)
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth.expose());
        }
        if let Some(m) = if_match {
            req = req.header("If-Match", m);
        }
        Self::answer(req.send(body))
    }

    fn wait(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Starts one [`emr_loop`] per `[[emr]]` link (called by `serve`).
pub fn spawn_emr_loops(
    node: &std::sync::Arc<Node>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) {
    for l in &node.config.emr.links {
        tasks.spawn(emr_loop(node.clone(), l.name.clone(), shutdown.clone()));
    }
}

/// Runs the bridge to EMR `name` at start, then every `poll_secs`; after a run that stopped
/// early, later, with backoff. The run itself is on a blocking thread.
pub async fn emr_loop(
    node: std::sync::Arc<Node>,
    name: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(link) = node.config.emr.link(&name).cloned() else { return };
    let interval_ms = link.poll_secs.saturating_mul(1000);
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let (n, l) = (node.clone(), name.clone());
        let ok = match tokio::task::spawn_blocking(move || n.emr_now(Some(&l), false)).await {
            Ok(Ok(reports)) => reports.iter().all(|r| r.error.is_none()),
            Ok(Err(e)) => {
                tracing::error!(emr = %name, "emr bridge: {e}");
                false
            }
            Err(e) => {
                tracing::error!(emr = %name, "emr bridge task: {e}");
                false
            }
        };
        if *shutdown.borrow() {
            return;
        }
        let delay = if ok {
            failures = 0;
            interval_ms
        } else {
            failures += 1;
            crate::node::schedule::backoff_ms(failures, interval_ms.max(1000), node.random_u32())
        };
        wait = Duration::from_millis(delay);
    }
}
