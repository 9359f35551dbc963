//! HTML building blocks: escaping, the page layout, times, and URL path segments. Every
//! dynamic value reaches a page through [`esc`] (text and attribute values) or [`seg`] (URL
//! path segments); nothing else is trusted.

use std::fmt::Write;

/// The stylesheet, served at `/style.css` (no external assets).
pub const STYLE: &str = include_str!("style.css");

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a URL path segment or query value (everything but unreserved characters).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A node id shortened for display, with the whole id as its tooltip.
pub fn short_id(id: &str) -> String {
    let short = crate::id::short(id);
    format!("<code title=\"{}\">{}…</code>", esc(id), esc(short))
}

/// Pretty JSON, escaped, in a `<pre>`.
pub fn json_pre(v: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    format!("<pre class=\"json\">{}</pre>", esc(&text))
}

/// Compact JSON, escaped.
pub fn json_inline(v: &serde_json::Value) -> String {
    esc(&v.to_string())
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
pub fn utc(secs: i64) -> String {
    let d = crate::fhir::time::Date::from_unix(secs);
    let t = secs.rem_euclid(86_400);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        d.year,
        d.month,
        d.day,
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (UTC, as a browser's
/// date and datetime-local inputs send them) into a Unix time.
pub fn parse_utc(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00"));
    if !crate::entity::is_date(date) {
        return None;
    }
    let num = |r: std::ops::Range<usize>, from: &str| from.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4, date)?, num(5..7, date)?, num(8..10, date)?);
    let hh = num(0..2, time).filter(|h| *h < 24)?;
    let mm = num(3..5, time).filter(|m| *m < 60)?;
    let ss = match time.len() {
        5 => 0,
        8 => num(6..8, time).filter(|s| *s < 60)?,
        _ => return None,
    };
    if time.get(2..3) != Some(":") {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// A time with how long ago (or ahead) it is: `2026-11-28 13:21:05 (5 s ago)`.
pub fn when(t: Option<i64>, now: i64) -> String {
    let Some(t) = t.filter(|t| *t > 0) else { return "never".into() };
    let d = now - t;
    let (n, ahead) = (d.unsigned_abs(), d < 0);
    let span = match n {
        0..120 => format!("{n} s"),
        120..7_200 => format!("{} min", n / 60),
        7_200..172_800 => format!("{} h", n / 3600),
        _ => format!("{} days", n / 86_400),
    };
    let rel = if ahead { format!("in {span}") } else { format!("{span} ago") };
    format!("<time title=\"{} UTC\">{}</time>", utc(t), esc(&rel))
}

/// A notice box: `ok` (green) or not (red).
pub fn notice(ok: bool, message: &str) -> String {
    let class = if ok { "notice ok" } else { "notice error" };
    let role = if ok { "status" } else { "alert" };
    format!("<p class=\"{class}\" role=\"{role}\">{}</p>", esc(message))
}

/// The navigation entries: (path, label).
const NAV: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/audit", "Audit log"),
    ("/failures", "Failures"),
    ("/conflicts", "Conflicts"),
    ("/records", "Records"),
    ("/bundles", "Bundles"),
    ("/metrics", "Metrics"),
];

/// A whole page: head, navigation (with `active` marked), logout, and `body`.
pub fn layout(node_name: &str, title: &str, active: &str, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, label) in NAV {
        let current = if href == active { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · {node} · sitesync</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><header><span class=\"brand\">sitesync <b>{node}</b></span><nav>{nav}</nav>\
         <form method=\"post\" action=\"/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{csrf}\"><button>Log out</button></form></header>\
         <main><h1>{title}</h1>{body}</main></body></html>\n",
        title = esc(title),
        node = esc(node_name),
        csrf = esc(csrf),
    )
}

/// A page outside the logged-in layout (the login page).
pub fn bare(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · sitesync</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><main class=\"narrow\"><h1>{title}</h1>{body}</main></body></html>\n",
        title = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_encodes_segments() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(seg("patient:ab-1:names.x y/z"), "patient%3Aab-1%3Anames.x%20y%2Fz");
    }

    #[test]
    fn times_round_trip() {
        let t = 1_764_336_065; // 2025-11-28 13:21:05 UTC
        assert_eq!(utc(t), "2025-11-28 13:21:05");
        assert_eq!(parse_utc("2025-11-28T13:21:05"), Some(t));
        assert_eq!(parse_utc("2025-11-28T13:21"), Some(t - 5));
        assert_eq!(parse_utc("2025-11-28"), Some(t - 13 * 3600 - 21 * 60 - 5));
        assert_eq!(parse_utc("1970-01-01"), Some(0));
        for bad in ["", "2025-13-01", "2025-11-28T25:00", "yesterday", "2025-11-28T13:2"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
