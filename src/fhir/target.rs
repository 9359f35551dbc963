//! The `[fhir]` table of `sitesync.toml`: the export settings ([`FhirSettings`]) and the push
//! targets (`[[fhir.targets]]`), parsed into a validated [`FhirConfig`]. Errors name the field
//! (`fhir.targets[1].batch_size`) and the bad value. The auth header is never printed: its
//! `Debug` is redacted and errors do not quote it.

use serde::Deserialize;

use super::export::RESOURCE_TYPES;
use super::settings::{FhirSettings, SettingsError};

/// Most entries in one transaction Bundle (Medplum refuses more than 50 updates per
/// transaction; a small Bundle also bounds what one failure resends).
pub const BATCH_SIZE_MAX: usize = 50;
/// Entries per Bundle when `batch_size` is not set.
pub const BATCH_SIZE_DEFAULT: usize = 50;
/// Seconds between continuous pushes when `interval_secs` is not set.
pub const PUSH_INTERVAL_SECS_DEFAULT: u64 = 300;
/// Shortest allowed `interval_secs`.
pub const PUSH_INTERVAL_SECS_MIN: u64 = 1;
/// Longest target name.
pub const TARGET_NAME_BYTES_MAX: usize = 64;

/// A secret header value (`auth_header`): kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One `[[fhir.targets]]` entry: a FHIR server this node pushes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    /// Unique among the targets: `[A-Za-z0-9_.-]`, 1-64 bytes.
    pub name: String,
    /// The FHIR base, `http://` or `https://`, without a trailing `/`.
    pub base_url: String,
    /// FHIR resource types pushed (`None`: all). The site Organization is always pushed
    /// when the export includes it (patients reference it).
    pub types: Option<Vec<String>>,
    /// `Authorization` header value, e.g. `Bearer xyz`.
    pub auth_header: Option<Secret>,
    /// Entries per transaction Bundle, 1..=[`BATCH_SIZE_MAX`].
    pub batch_size: usize,
    /// Whether `serve` pushes on its own every `interval_secs`.
    pub continuous: bool,
    pub interval_secs: u64,
}

impl PushTarget {
    /// Whether this target takes resources of `resource_type`.
    pub fn takes(&self, resource_type: &str) -> bool {
        resource_type == "Organization"
            || self.types.as_ref().is_none_or(|t| t.iter().any(|x| x == resource_type))
    }
}

/// The validated `[fhir]` table.
#[derive(Clone, Debug, Default)]
pub struct FhirConfig {
    pub settings: FhirSettings,
    pub targets: Vec<PushTarget>,
    /// The table as written, so a rewritten `sitesync.toml` keeps it unchanged.
    pub raw: Option<toml::Table>,
}

impl PartialEq for FhirConfig {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings && self.targets == other.targets
    }
}

impl Eq for FhirConfig {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    base_url: String,
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    auth_header: Option<String>,
    #[serde(default)]
    batch_size: Option<i64>,
    #[serde(default)]
    continuous: Option<bool>,
    #[serde(default)]
    interval_secs: Option<i64>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { field: field.into(), message: message.into() }
}

impl FhirConfig {
    /// Parses the `[fhir]` table: the settings keys and `targets`.
    pub fn from_table(table: toml::Table) -> Result<FhirConfig, SettingsError> {
        let raw = Some(table.clone());
        let mut table = table;
        let targets = match table.remove("targets") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => parse_targets(items)?,
            Some(_) => return Err(invalid("targets", "must be a list of [[fhir.targets]] tables")),
        };
        let settings: FhirSettings = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| SettingsError::Parse(e.to_string()))?;
        let settings = settings.checked()?;
        Ok(FhirConfig { settings, targets, raw })
    }

    pub fn target(&self, name: &str) -> Option<&PushTarget> {
        self.targets.iter().find(|t| t.name == name)
    }
}

fn parse_targets(items: Vec<toml::Value>) -> Result<Vec<PushTarget>, SettingsError> {
    let mut out: Vec<PushTarget> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = |f: &str| format!("targets[{i}].{f}");
        let raw: RawTarget = item.try_into().map_err(|e: toml::de::Error| {
            SettingsError::Parse(format!("targets[{i}]: {}", e.to_string().trim()))
        })?;
        let target = parse_target(raw, &at)?;
        if out.iter().any(|t| t.name == target.name) {
            return Err(invalid(
                at("name"),
                format!("{:?} is used by another target", target.name),
            ));
        }
        out.push(target);
    }
    Ok(out)
}

fn parse_target(raw: RawTarget, at: &dyn Fn(&str) -> String) -> Result<PushTarget, SettingsError> {
    let name_ok = raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if raw.name.is_empty() || raw.name.len() > TARGET_NAME_BYTES_MAX || !name_ok {
        return Err(invalid(
            at("name"),
            format!("{:?} is not a target name (1-64 letters, digits, '_', '.', '-')", raw.name),
        ));
    }
    let base_url = check_base_url(&raw.base_url).map_err(|m| invalid(at("base_url"), m))?;
    let types = match raw.types {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(invalid(at("types"), "lists no resource type (leave it out for all)"));
            }
            for t in &list {
                if !RESOURCE_TYPES.contains(&t.as_str()) {
                    return Err(invalid(
                        at("types"),
                        format!(
                            "{t:?} is not a resource type sitesync exports (one of {})",
                            RESOURCE_TYPES.join(", ")
                        ),
                    ));
                }
            }
            Some(list)
        }
    };
    let auth_header = match raw.auth_header {
        Some(h) if h.trim().is_empty() || h.contains(['\r', '\n']) || !h.is_ascii() => {
            // The value is a secret: the message does not quote it.
            return Err(invalid(at("auth_header"), "is empty or not a valid header value"));
        }
        Some(h) => Some(Secret(h)),
        None => None,
    };
    let batch_size = match raw.batch_size {
        None => BATCH_SIZE_DEFAULT,
        Some(n) if (1..=BATCH_SIZE_MAX as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                at("batch_size"),
                format!("{n} is not between 1 and {BATCH_SIZE_MAX}"),
            ));
        }
    };
    let interval_secs = match raw.interval_secs {
        None => PUSH_INTERVAL_SECS_DEFAULT,
        Some(n) if n >= PUSH_INTERVAL_SECS_MIN as i64 => n as u64,
        Some(n) => {
            return Err(invalid(
                at("interval_secs"),
                format!("{n} is below the minimum of {PUSH_INTERVAL_SECS_MIN}"),
            ));
        }
    };
    Ok(PushTarget {
        name: raw.name,
        base_url,
        types,
        auth_header,
        batch_size,
        continuous: raw.continuous.unwrap_or(false),
        interval_secs,
    })
}

/// Checks a FHIR base URL: `http(s)://host[:port][/path]`, no query, fragment, user info or
/// spaces. Returns it without a trailing `/`.
pub fn check_base_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{url:?} is not a FHIR base URL: {why}");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("it must start with http:// or https://"))?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it holds spaces"));
    }
    if url.contains(['?', '#']) {
        return Err(bad("it holds a query or a fragment"));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(bad("it names no host (or holds a user name)"));
    }
    if let Some((h, port)) = host.rsplit_once(':')
        && !h.ends_with(']')
        && (h.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(bad("its port is not a number"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FhirConfig, SettingsError> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        let fhir = table.get("fhir").and_then(|v| v.as_table()).cloned().unwrap_or_default();
        FhirConfig::from_table(fhir)
    }

    #[test]
    fn targets_parse_with_defaults() {
        let c = parse(
            "[fhir]\nutc_offset = \"+03:00\"\n[[fhir.targets]]\nname = \"shr\"\n\
             base_url = \"http://127.0.0.1:18080/fhir/R4/\"\nauth_header = \"Bearer xyz\"\n",
        )
        .expect("valid");
        let t = c.target("shr").expect("target");
        assert_eq!(t.base_url, "http://127.0.0.1:18080/fhir/R4");
        assert_eq!((t.batch_size, t.continuous, t.interval_secs), (50, false, 300));
        assert!(t.takes("Observation"));
        assert!(!format!("{t:?}").contains("xyz"), "the auth header is redacted");
        assert_eq!(c.settings.utc_offset.as_deref(), Some("+03:00"));
    }

    #[test]
    fn bad_values_are_named() {
        let base = "[[fhir.targets]]\nname = \"a\"\nbase_url = \"http://x/fhir\"\n";
        let cases = [
            ("batch_size = 0\n", "batch_size", "0"),
            ("batch_size = 51\n", "batch_size", "51"),
            ("types = [\"Patient\", \"Obsrvation\"]\n", "types", "Obsrvation"),
            ("interval_secs = 0\n", "interval_secs", "0"),
            ("auth_header = \"\"\n", "auth_header", ""),
            ("colour = 1\n", "colour", "colour"),
        ];
        for (extra, field, value) in cases {
            let e = parse(&format!("{base}{extra}")).expect_err(extra).to_string();
            assert!(e.contains(field) && e.contains(value), "{extra}: {e}");
        }
        let e = parse("[[fhir.targets]]\nname = \"a\"\nbase_url = \"ftp://x\"\n").unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
        let e = parse(&format!("{base}{base}")).unwrap_err().to_string();
        assert!(e.contains("targets[1].name") && e.contains("\"a\""), "{e}");
        for url in ["http://", "http://h:x/", "http://h/a b", "https://u@h/", "http://h/?q"] {
            assert!(check_base_url(url).is_err(), "{url}");
        }
    }
}
