//! `/metrics`: the node's counters and gauges in the Prometheus text exposition format
//! (version 0.0.4): `# HELP` and `# TYPE` lines, then one sample per line.

use std::fmt::Write;

use super::data::{MetricFamily, Overview};

fn family(name: &str, kind: &str, help: &str) -> MetricFamily {
    MetricFamily { name: name.into(), help: help.into(), kind: kind.into(), samples: Vec::new() }
}

/// The metric families of an overview.
pub fn from_overview(o: &Overview) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let one = |name: &str, kind: &str, help: &str, v: f64| {
        let mut f = family(name, kind, help);
        f.samples.push((Vec::new(), v));
        f
    };
    out.push(one("sitesync_batches", "gauge", "Signed batches held.", o.node.batches as f64));
    out.push(one(
        "sitesync_batches_pending",
        "gauge",
        "Batches received that wait for earlier batches of their author.",
        o.node.pending_batches as f64,
    ));
    let mut entities = family("sitesync_entities", "gauge", "Records held, per entity type.");
    for (ty, n) in &o.node.entities {
        entities.samples.push((vec![("type".into(), ty.clone())], *n as f64));
    }
    out.push(entities);
    out.push(one(
        "sitesync_conflicts_open",
        "gauge",
        "Fields holding concurrent values that are not resolved.",
        o.open_conflicts as f64,
    ));
    out.push(one(
        "sitesync_failures",
        "gauge",
        "Operations whose last attempt failed (syncs, refused batches, FHIR pushes).",
        o.failures as f64,
    ));
    out.push(one(
        "sitesync_failures_needing_attention",
        "gauge",
        "Failures that reached the give-up threshold ([failures] give_up_after).",
        o.failures_needing_attention as f64,
    ));
    out.push(one(
        "sitesync_network_nodes",
        "gauge",
        "Nodes this node accepts changes from (itself excluded).",
        o.network.len() as f64,
    ));
    type Get = fn(&super::data::PeerView) -> f64;
    let per_peer: [(&str, &str, &str, Get); 10] = [
        (
            "sitesync_peer_batches_to_send",
            "gauge",
            "Batches this node holds that the peer lacks (lag).",
            |p| p.batches_to_send as f64,
        ),
        (
            "sitesync_peer_batches_to_receive",
            "gauge",
            "Batches the peer holds that this node lacks (lag).",
            |p| p.batches_to_receive as f64,
        ),
        ("sitesync_peer_sessions_total", "counter", "Sync sessions with the peer.", |p| {
            p.sessions as f64
        }),
        ("sitesync_peer_batches_sent_total", "counter", "Batches sent to the peer.", |p| {
            p.batches_sent as f64
        }),
        (
            "sitesync_peer_batches_received_total",
            "counter",
            "Batches received from the peer.",
            |p| p.batches_received as f64,
        ),
        ("sitesync_peer_bytes_sent_total", "counter", "Bytes sent to the peer.", |p| {
            p.bytes_sent as f64
        }),
        ("sitesync_peer_bytes_received_total", "counter", "Bytes received from the peer.", |p| {
            p.bytes_received as f64
        }),
        ("sitesync_peer_failures", "gauge", "Failed sessions in a row with the peer.", |p| {
            f64::from(p.failures)
        }),
        (
            "sitesync_peer_last_success_timestamp_seconds",
            "gauge",
            "Time of the last complete session (0: never).",
            |p| p.last_success.unwrap_or(0) as f64,
        ),
        ("sitesync_peer_up", "gauge", "1 if the last session with the peer completed.", |p| {
            if p.last_error.is_none() && p.last_success.is_some() { 1.0 } else { 0.0 }
        }),
    ];
    type GetEmr = fn(&super::data::EmrView) -> f64;
    let per_emr: [(&str, &str, &str, GetEmr); 6] = [
        (
            "sitesync_emr_records_in_total",
            "counter",
            "Records changed in this node by what the EMR changed.",
            |e| e.records_in as f64,
        ),
        ("sitesync_emr_records_out_total", "counter", "Resources written into the EMR.", |e| {
            e.records_out as f64
        }),
        (
            "sitesync_emr_unchanged_total",
            "counter",
            "Resources read from the EMR that changed nothing (agreed, or echoes).",
            |e| e.unchanged as f64,
        ),
        ("sitesync_emr_failed", "gauge", "Resources standing failed with the EMR.", |e| {
            e.failed as f64
        }),
        (
            "sitesync_emr_last_success_timestamp_seconds",
            "gauge",
            "Time of the last bridge run that went through (0: never).",
            |e| e.last_success as f64,
        ),
        ("sitesync_emr_up", "gauge", "1 if the last bridge run went through.", |e| {
            if e.last_error.is_none() && e.last_success > 0 { 1.0 } else { 0.0 }
        }),
    ];
    for (name, kind, help, get) in per_emr {
        let mut f = family(name, kind, help);
        for e in &o.emr {
            f.samples.push((vec![("emr".into(), e.name.clone())], get(e)));
        }
        out.push(f);
    }
    for (name, kind, help, get) in per_peer {
        let mut f = family(name, kind, help);
        for p in &o.peers {
            let labels = vec![
                ("peer".into(), p.node_id.clone()),
                ("name".into(), p.name.clone().unwrap_or_default()),
                ("role".into(), p.role.clone()),
            ];
            f.samples.push((labels, get(p)));
        }
        out.push(f);
    }
    out
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn help_text(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Renders families in the text format. Families without samples keep their HELP and TYPE.
pub fn render(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, help_text(&f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in &f.samples {
            let _ = write!(out, "{}", f.name);
            if !labels.is_empty() {
                let inner: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label_value(v))).collect();
                let _ = write!(out, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(out, " {}", number(*v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_labels_and_escapes() {
        let mut f = family("sitesync_x", "gauge", "Line\none.");
        f.samples.push((vec![("name".into(), "a\"b\\c\nd".into())], 2.0));
        f.samples.push((Vec::new(), 0.5));
        let text = render(&[f]);
        assert_eq!(
            text,
            "# HELP sitesync_x Line\\none.\n# TYPE sitesync_x gauge\n\
             sitesync_x{name=\"a\\\"b\\\\c\\nd\"} 2\nsitesync_x 0.5\n"
        );
    }
}
