//! `[[emr]]` tables of `sitesync.toml`: the EMRs a node bridges to, validated into
//! [`EmrLink`]s. Every bad value is named with its field (`emr[0].page_size`) and, except for
//! the auth header, quoted.

use serde::Deserialize;

use crate::fhir::settings::SettingsError;
use crate::fhir::target::{Secret, check_base_url};
use crate::id::EntityType;

/// Longest EMR name.
pub const EMR_NAME_BYTES_MAX: usize = 64;
/// Seconds between polls when `poll_secs` is not set.
pub const POLL_SECS_DEFAULT: u64 = 30;
/// Shortest `poll_secs`.
pub const POLL_SECS_MIN: u64 = 1;
/// Resources per search page when `page_size` is not set.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// Largest `page_size` (OpenMRS FHIR2 caps pages at 100; the profile `openmrs-fhir2` refuses
/// more).
pub const PAGE_SIZE_MAX: usize = 1_000;
/// Largest page OpenMRS FHIR2 serves (`fhir2.paging.maximum`).
pub const OPENMRS_PAGE_SIZE_MAX: usize = 100;
/// Seconds re-read behind the cursor on every poll when `overlap_secs` is not set: a record
/// stamped earlier than a later commit still comes in.
pub const OVERLAP_SECS_DEFAULT: u64 = 10;
/// Longest overlap window.
pub const OVERLAP_SECS_MAX: u64 = 3_600;
/// Seconds between reconciliation sweeps (all ids per type, to find deletes) by default.
pub const RECONCILE_SECS_DEFAULT: u64 = 3_600;

/// The entity types a bridge reads and writes, in reference order (what a record names comes
/// first).
pub const EMR_TYPES: &[EntityType] = &[
    EntityType::Location,
    EntityType::Provider,
    EntityType::Patient,
    EntityType::Person,
    EntityType::Relationship,
    EntityType::Visit,
    EntityType::Encounter,
    EntityType::Obs,
    EntityType::Condition,
    EntityType::Allergy,
    EntityType::Appointment,
];

/// Which way records move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// EMR -> node only.
    Read,
    /// node -> EMR only.
    Write,
    Both,
}

impl Direction {
    pub fn reads(self) -> bool {
        matches!(self, Direction::Read | Direction::Both)
    }

    pub fn writes(self) -> bool {
        matches!(self, Direction::Write | Direction::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
            Direction::Both => "both",
        }
    }
}

/// What the EMR's FHIR API can do (`docs/emr.md`, "Profiles").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Any FHIR R4 server that creates a resource on `PUT Type/id` and honours `If-Match`.
    Fhir,
    /// OpenMRS with its FHIR2 module: whole-second timestamps, pages of at most 100, no
    /// `_history`, deleted records hidden (410 on read), `If-Match` not enforced, and no
    /// creation under a client id (writes are updates of resources the EMR holds).
    OpenmrsFhir2,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Fhir => "fhir",
            Profile::OpenmrsFhir2 => "openmrs-fhir2",
        }
    }

    /// Whether a `PUT` may create a resource the EMR does not hold.
    pub fn creates(self) -> bool {
        self == Profile::Fhir
    }
}

/// One `[[emr]]` table, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmrLink {
    /// Unique among the EMRs: `[A-Za-z0-9_.-]`, 1-64 bytes.
    pub name: String,
    /// The FHIR base, without a trailing `/`.
    pub base_url: String,
    /// `Authorization` header value; never printed or logged.
    pub auth_header: Option<Secret>,
    /// Entity types bridged, in [`EMR_TYPES`] order.
    pub types: Vec<EntityType>,
    pub direction: Direction,
    pub poll_secs: u64,
    pub page_size: usize,
    pub overlap_secs: u64,
    pub reconcile_secs: u64,
    pub profile: Profile,
}

/// The validated `[[emr]]` tables.
#[derive(Clone, Debug, Default)]
pub struct EmrConfig {
    pub links: Vec<EmrLink>,
    /// The tables as written, so a rewritten `sitesync.toml` keeps them unchanged.
    pub raw: Vec<toml::Table>,
}

impl PartialEq for EmrConfig {
    fn eq(&self, other: &Self) -> bool {
        self.links == other.links
    }
}

impl Eq for EmrConfig {}

impl EmrConfig {
    /// Parses the `[[emr]]` tables (field names in errors are relative to `emr`).
    pub fn from_tables(tables: Vec<toml::Table>) -> Result<EmrConfig, SettingsError> {
        let links = parse(tables.iter().cloned().map(toml::Value::Table).collect())?;
        Ok(EmrConfig { links, raw: tables })
    }

    pub fn link(&self, name: &str) -> Option<&EmrLink> {
        self.links.iter().find(|l| l.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmr {
    name: String,
    base_url: String,
    #[serde(default)]
    auth_header: Option<String>,
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    poll_secs: Option<i64>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    overlap_secs: Option<i64>,
    #[serde(default)]
    reconcile_secs: Option<i64>,
    #[serde(default)]
    profile: Option<String>,
}

fn invalid(field: String, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { field, message: message.into() }
}

/// Parses the `[[emr]]` tables (field names in errors are relative to `emr`).
pub fn parse(items: Vec<toml::Value>) -> Result<Vec<EmrLink>, SettingsError> {
    let mut out: Vec<EmrLink> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = |f: &str| format!("[{i}].{f}");
        let raw: RawEmr = item.try_into().map_err(|e: toml::de::Error| {
            SettingsError::Parse(format!("[{i}]: {}", e.to_string().trim()))
        })?;
        let link = parse_one(raw, &at)?;
        if out.iter().any(|l| l.name == link.name) {
            return Err(invalid(at("name"), format!("{:?} names another EMR too", link.name)));
        }
        out.push(link);
    }
    Ok(out)
}

fn number(
    value: Option<i64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    field: String,
) -> Result<u64, SettingsError> {
    match value {
        None => Ok(default),
        Some(n) if n >= 0 && range.contains(&(n as u64)) => Ok(n as u64),
        Some(n) => {
            Err(invalid(field, format!("{n} is not between {} and {}", range.start(), range.end())))
        }
    }
}

fn parse_one(raw: RawEmr, at: &dyn Fn(&str) -> String) -> Result<EmrLink, SettingsError> {
    let name_ok = raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if raw.name.is_empty() || raw.name.len() > EMR_NAME_BYTES_MAX || !name_ok {
        return Err(invalid(
            at("name"),
            format!("{:?} is not an EMR name (1-64 letters, digits, '_', '.', '-')", raw.name),
        ));
    }
    let base_url = check_base_url(&raw.base_url).map_err(|m| invalid(at("base_url"), m))?;
    let auth_header = match raw.auth_header {
        Some(h) if h.trim().is_empty() || h.contains(['\r', '\n']) || !h.is_ascii() => {
            // A secret: the message does not quote it.
            return Err(invalid(at("auth_header"), "is empty or not a valid header value"));
        }
        Some(h) => Some(Secret::new(h)),
        None => None,
    };
    let profile = match raw.profile.as_deref() {
        None | Some("fhir") => Profile::Fhir,
        Some("openmrs-fhir2") => Profile::OpenmrsFhir2,
        Some(other) => {
            return Err(invalid(
                at("profile"),
                format!("{other:?} is not a profile (fhir or openmrs-fhir2)"),
            ));
        }
    };
    let direction = match raw.direction.as_deref() {
        None | Some("both") => Direction::Both,
        Some("read") => Direction::Read,
        Some("write") => Direction::Write,
        Some(other) => {
            return Err(invalid(
                at("direction"),
                format!("{other:?} is not a direction (read, write or both)"),
            ));
        }
    };
    let types = match raw.types {
        None => EMR_TYPES.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(invalid(at("types"), "lists no type (leave it out for all)"));
        }
        Some(list) => {
            let mut types = Vec::new();
            for t in &list {
                let ty = t.parse::<EntityType>().ok().filter(|ty| EMR_TYPES.contains(ty));
                let Some(ty) = ty else {
                    let names: Vec<&str> = EMR_TYPES.iter().map(|t| t.as_str()).collect();
                    return Err(invalid(
                        at("types"),
                        format!(
                            "{t:?} is not a type the bridge carries (one of {})",
                            names.join(", ")
                        ),
                    ));
                };
                types.push(ty);
            }
            EMR_TYPES.iter().copied().filter(|t| types.contains(t)).collect()
        }
    };
    let page_max = match profile {
        Profile::Fhir => PAGE_SIZE_MAX,
        Profile::OpenmrsFhir2 => OPENMRS_PAGE_SIZE_MAX,
    };
    let page_size =
        number(raw.page_size, PAGE_SIZE_DEFAULT as u64, 1..=page_max as u64, at("page_size"))?
            as usize;
    let poll_secs =
        number(raw.poll_secs, POLL_SECS_DEFAULT, POLL_SECS_MIN..=86_400, at("poll_secs"))?;
    let overlap_secs =
        number(raw.overlap_secs, OVERLAP_SECS_DEFAULT, 0..=OVERLAP_SECS_MAX, at("overlap_secs"))?;
    if profile == Profile::OpenmrsFhir2 && overlap_secs < 2 {
        return Err(invalid(
            at("overlap_secs"),
            format!(
                "{overlap_secs} is too short for OpenMRS FHIR2, whose timestamps are whole seconds (at least 2)"
            ),
        ));
    }
    let reconcile_secs =
        number(raw.reconcile_secs, RECONCILE_SECS_DEFAULT, 1..=7 * 86_400, at("reconcile_secs"))?;
    Ok(EmrLink {
        name: raw.name,
        base_url,
        auth_header,
        types,
        direction,
        poll_secs,
        page_size,
        overlap_secs,
        reconcile_secs,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Vec<EmrLink>, SettingsError> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        match table.get("emr") {
            Some(toml::Value::Array(items)) => parse(items.clone()),
            _ => panic!("no [[emr]]"),
        }
    }

    #[test]
    fn defaults_and_every_bad_value_named() {
        let links =
            one("[[emr]]\nname = \"openmrs\"\nbase_url = \"http://127.0.0.1:8080/fhir/\"\n")
                .expect("valid");
        let l = &links[0];
        assert_eq!(l.base_url, "http://127.0.0.1:8080/fhir");
        assert_eq!((l.direction, l.profile, l.page_size), (Direction::Both, Profile::Fhir, 100));
        assert_eq!(l.types, EMR_TYPES.to_vec());
        let bad = [
            ("name = \"a b\"", "[0].name"),
            ("page_size = 0", "[0].page_size"),
            ("direction = \"sideways\"", "[0].direction"),
            ("profile = \"hapi\"", "[0].profile"),
            ("types = [\"concept\"]", "[0].types"),
            ("poll_secs = 0", "[0].poll_secs"),
        ];
        for (line, field) in bad {
            let text = format!("[[emr]]\nname = \"x\"\nbase_url = \"http://h/fhir\"\n{line}\n");
            let text = text.replacen("name = \"x\"\n", "", usize::from(line.starts_with("name")));
            match one(&text) {
                Err(SettingsError::Invalid { field: f, .. }) => assert_eq!(f, field, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let openmrs = "[[emr]]\nname = \"o\"\nbase_url = \"http://h/ws/fhir2/R4\"\nprofile = \"openmrs-fhir2\"\npage_size = 200\n";
        match one(openmrs) {
            Err(SettingsError::Invalid { field, message }) => {
                assert_eq!(field, "[0].page_size");
                assert!(message.contains("200"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let secret =
            "[[emr]]\nname = \"o\"\nbase_url = \"http://h/fhir\"\nauth_header = \"Basic \\nx\"\n";
        match one(secret) {
            Err(SettingsError::Invalid { field, message }) => {
                assert_eq!(field, "[0].auth_header");
                assert!(!message.contains("Basic"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
