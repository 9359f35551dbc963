//! Reading an EMR's changes with FHIR search, the portable way (`docs/emr.md`, "Reading"):
//! `Type?_lastUpdated=ge<cursor − overlap>&_sort=_lastUpdated&_count=N`, re-queried from the
//! last instant seen instead of following opaque `next` links (a server that pages by live
//! offset skips a record updated mid-crawl), with an overlap window behind the cursor (a
//! record stamped before a later commit still comes in) and the cursor taken only from server
//! timestamps. A page whose resources all share one instant is read through that instant by
//! itself, so a burst larger than a page comes in whole.
//!
//! Pure: URLs in, Bundles out; the HTTP client is the node's.

use serde_json::Value;

/// A page of search results.
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    pub resources: Vec<Value>,
    /// The `next` link, if the server gave one.
    pub next: Option<String>,
}

/// Reads a `searchset` Bundle: its entries' resources (entries without one, e.g.
/// OperationOutcomes of mode `outcome`, are left out) and its `next` link.
pub fn parse_page(body: &str) -> Result<Page, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("the answer is not a Bundle".into());
    }
    let mut page = Page::default();
    for e in v.get("entry").and_then(Value::as_array).into_iter().flatten() {
        let is_match = e
            .get("search")
            .and_then(|s| s.get("mode"))
            .and_then(Value::as_str)
            .is_none_or(|m| m == "match");
        if let Some(r) = e.get("resource").filter(|_| is_match)
            && r.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome")
        {
            page.resources.push(r.clone());
        }
    }
    page.next = v
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        .and_then(|l| l.get("url")?.as_str())
        .map(str::to_string);
    Ok(page)
}

/// `meta.lastUpdated` of a resource.
pub fn last_updated(resource: &Value) -> Option<&str> {
    resource.get("meta")?.get("lastUpdated")?.as_str()
}

/// `meta.versionId` of a resource.
pub fn version_id(resource: &Value) -> Option<&str> {
    resource.get("meta")?.get("versionId")?.as_str()
}

/// Which instants a search asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    /// Everything (no cursor yet).
    All,
    /// At or after this instant (`ge`).
    From(String),
    /// Strictly after this instant (`gt`): the instant itself was read through.
    After(String),
    /// Exactly this instant (`eq`): a burst larger than a page.
    At(String),
}

/// A search URL: `base/Type?_lastUpdated=..&_sort=_lastUpdated&_count=N` (and a tag filter,
/// e.g. visits apart from encounters on OpenMRS).
pub fn search_url(base: &str, fhir_type: &str, since: &Since, count: usize) -> String {
    let mut url = format!("{base}/{fhir_type}?_sort=_lastUpdated&_count={count}");
    let (prefix, at) = match since {
        Since::All => return url,
        Since::From(t) => ("ge", t),
        Since::After(t) => ("gt", t),
        Since::At(t) => ("eq", t),
    };
    url.push_str(&format!("&_lastUpdated={prefix}{}", encode_instant(at)));
    url
}

/// An instant in a query string (`+` of an offset would read as a space).
fn encode_instant(t: &str) -> String {
    t.replace('+', "%2B")
}

/// Milliseconds since the Unix epoch of a FHIR instant (`2024-03-05T08:55:00.123+03:00`,
/// `...Z`, whole seconds or fractions).
pub fn instant_ms(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let d = crate::fhir::time::Date::parse(date)?;
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':');
    let (h, m, sec): (i64, i64, i64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next().unwrap_or("0").parse().ok()?,
    );
    let ms: i64 = if frac.is_empty() {
        0
    } else {
        let mut digits: String = frac.chars().take(3).collect();
        while digits.len() < 3 {
            digits.push('0');
        }
        digits.parse().ok()?
    };
    let offset_min = match zone {
        "" | "Z" => 0,
        z => {
            let norm = crate::fhir::time::parse_offset(z)?;
            let sign = if norm.starts_with('-') { -1 } else { 1 };
            let (oh, om) = norm[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?)
        }
    };
    let days = days_from_civil(i64::from(d.year), i64::from(d.month), i64::from(d.day));
    Some(((days * 86_400 + h * 3_600 + m * 60 + sec) - offset_min * 60) * 1_000 + ms)
}

/// An instant in UTC with milliseconds, e.g. `2024-03-05T05:55:00.123Z`.
pub fn format_instant(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let d = crate::fhir::time::Date::from_unix(secs);
    let s = secs.rem_euclid(86_400);
    format!("{d}T{:02}:{:02}:{:02}.{:03}Z", s / 3_600, (s / 60) % 60, s % 60, ms.rem_euclid(1_000))
}

/// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first query of a poll: from `overlap_secs` behind the cursor (everything without one).
pub fn first_since(cursor: Option<&str>, overlap_secs: u64) -> Since {
    match cursor.and_then(instant_ms) {
        None => Since::All,
        Some(ms) => Since::From(format_instant(ms - (overlap_secs as i64) * 1_000)),
    }
}

/// What to ask next after a full page (`count` resources): the rest of its last instant and
/// beyond (`ge` that instant), or, when the whole page shares one instant, that instant by
/// itself first ([`Since::At`], then [`Since::After`]).
pub fn after_full_page(resources: &[Value]) -> Option<Since> {
    let instants: Vec<i64> =
        resources.iter().filter_map(|r| last_updated(r).and_then(instant_ms)).collect();
    let (lo, hi) = (*instants.iter().min()?, *instants.iter().max()?);
    let last = resources.iter().filter_map(last_updated).find(|t| instant_ms(t) == Some(hi))?;
    Some(if lo == hi { Since::At(last.to_string()) } else { Since::From(last.to_string()) })
}

/// The greater of two server instants (as written by the server).
pub fn later(a: Option<String>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (None, b) => b.map(str::to_string),
        (Some(a), None) => Some(a),
        (Some(a), Some(b)) => match (instant_ms(&a), instant_ms(b)) {
            (Some(x), Some(y)) if y > x => Some(b.to_string()),
            _ => Some(a),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instants_parse_and_print() {
        assert_eq!(instant_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(instant_ms("1970-01-01T03:00:01.5+03:00"), Some(1_500));
        assert_eq!(
            instant_ms("2024-03-05T08:55:00.123Z").map(format_instant).as_deref(),
            Some("2024-03-05T08:55:00.123Z")
        );
        assert_eq!(instant_ms("2024-03-05"), None);
        assert_eq!(format_instant(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn queries_step_from_the_last_instant_and_read_a_burst_by_itself() {
        let base = "http://h/fhir";
        assert_eq!(
            search_url(base, "Patient", &Since::All, 20),
            "http://h/fhir/Patient?_sort=_lastUpdated&_count=20"
        );
        assert_eq!(
            search_url(base, "Patient", &Since::From("2024-03-05T08:55:00+03:00".into()), 20),
            "http://h/fhir/Patient?_sort=_lastUpdated&_count=20&_lastUpdated=ge2024-03-05T08:55:00%2B03:00"
        );
        assert_eq!(
            first_since(Some("2024-03-05T08:55:10.000Z"), 10),
            Since::From("2024-03-05T08:55:00.000Z".into())
        );
        let r = |t: &str| json!({"resourceType": "Patient", "meta": {"lastUpdated": t}});
        let mixed = [r("2024-03-05T08:55:00Z"), r("2024-03-05T08:55:01Z")];
        assert_eq!(after_full_page(&mixed), Some(Since::From("2024-03-05T08:55:01Z".into())));
        let burst = [r("2024-03-05T08:55:01Z"), r("2024-03-05T08:55:01Z")];
        assert_eq!(after_full_page(&burst), Some(Since::At("2024-03-05T08:55:01Z".into())));
    }

    #[test]
    fn pages_keep_matches_and_the_next_link() {
        let body = json!({"resourceType": "Bundle", "type": "searchset",
            "link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}],
            "entry": [{"resource": {"resourceType": "Patient", "id": "x"}, "search": {"mode": "match"}},
                      {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}]});
        let page = parse_page(&body.to_string()).expect("page");
        assert_eq!(page.resources.len(), 1);
        assert_eq!(page.next.as_deref(), Some("b"));
        assert!(parse_page("{}").is_err());
    }
}
