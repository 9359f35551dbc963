//! `sitesync.toml`: the raw file becomes a validated [`Config`] (parse, don't validate), and a
//! `Config` writes back as TOML. Unknown keys are errors, so a typo never silently does nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::Trust;
use crate::id::NodeId;

/// The config format this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;
/// Longest node name.
pub const NAME_BYTES_MAX: usize = 64;

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{path}: config version {found} is not supported (this sitesync reads version {CONFIG_VERSION})"
    )]
    Version { path: String, found: u32 },
    #[error("{path}: {field}: {message}")]
    Invalid { path: String, field: String, message: String },
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    node: RawNode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<RawNetwork>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trust: Vec<RawTrust>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<RawPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit: Option<RawAudit>,
    /// `"type"` or `"type.field"` -> `"auto"` | `"review"` (src/conflict.rs).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    conflicts: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin: Option<RawAdmin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<RawFailures>,
    /// FHIR export settings and push targets (`src/fhir/target.rs`), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fhir: Option<toml::Table>,
    /// EMR bridges (`src/emr/config.rs`), kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    emr: Vec<toml::Table>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFailures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    give_up_after: Option<u32>,
}

/// Default of `[failures] give_up_after`: with the default 60 s sync interval, about 20 minutes
/// of failed attempts to a peer.
pub const GIVE_UP_AFTER_DEFAULT: u32 = 20;

/// The `[failures]` section: when a failing operation is marked as needing attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailuresConfig {
    /// Failed attempts in a row after which an operation needs attention. Syncs keep retrying
    /// after it (at the longest backoff); the mark tells an administrator to look.
    pub give_up_after: u32,
}

impl Default for FailuresConfig {
    fn default() -> Self {
        FailuresConfig { give_up_after: GIVE_UP_AFTER_DEFAULT }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_days: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_entries: Option<u64>,
}

/// How long the audit log keeps entries (`[audit]`); `None`: forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_days: Option<u64>,
    pub keep_entries: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow_remote: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sync_interval_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    node_id: String,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Children only: the entity types the child may push and receive (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    types: Option<Vec<String>>,
    /// Children only: location uuids; patient-linked records outside them are withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catchment: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// A node trusted to author changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedNode {
    pub node_id: NodeId,
    pub name: Option<String>,
}

/// Default seconds between sync rounds with each dialled peer.
pub const SYNC_INTERVAL_SECS_DEFAULT: u64 = 60;
/// Shortest allowed sync interval.
pub const SYNC_INTERVAL_SECS_MIN: u64 = 1;

/// Another node this node syncs with over the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    /// The other node's role toward this one: a `Parent` entry is this node's parent.
    pub role: crate::protocol::message::Role,
    /// Where this node dials it; `None` for children (they dial in).
    pub addr: Option<std::net::SocketAddr>,
    pub name: Option<String>,
    /// What a child may push and receive (set on `child` entries only).
    pub scope: Scope,
}

/// What a parent lets one child push and receive.
///
/// `types`: the entity types the child may push and receive (`None`: all). Rosters always
/// travel. `catchment`: location uuids (`None`: everywhere). Patient-linked records (patient,
/// the person of a patient, visit, encounter, obs, condition, allergy, appointment,
/// relationship) reach the child only when their patient has an identifier at one of these
/// locations; metadata (locations, concepts, providers, generic records) always does. Out of
/// scope, the child still receives each batch's signed manifest, without the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub types: Option<std::collections::BTreeSet<crate::id::EntityType>>,
    pub catchment: Option<std::collections::BTreeSet<crate::id::Uid>>,
}

impl Scope {
    pub fn is_everything(&self) -> bool {
        self.types.is_none() && self.catchment.is_none()
    }

    /// Whether the child may push records of type `ty` (the catchment does not limit what a
    /// clinic records: a visitor from elsewhere is still seen).
    pub fn may_push(&self, ty: crate::id::EntityType) -> bool {
        ty == crate::id::EntityType::Roster || self.types.as_ref().is_none_or(|t| t.contains(&ty))
    }

    /// Parses `--types` / `types` values.
    pub fn parse_types(
        items: &[String],
    ) -> Result<std::collections::BTreeSet<crate::id::EntityType>, String> {
        items
            .iter()
            .map(|t| t.parse().map_err(|e: crate::id::IdError| e.to_string()))
            .collect::<Result<_, _>>()
            .and_then(
                |set: std::collections::BTreeSet<_>| {
                    if set.is_empty() { Err("lists no entity type".into()) } else { Ok(set) }
                },
            )
    }

    /// Parses `--catchment` / `catchment` values (location uuids).
    pub fn parse_catchment(
        items: &[String],
    ) -> Result<std::collections::BTreeSet<crate::id::Uid>, String> {
        items
            .iter()
            .map(|u| crate::id::parse_uuid(u).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()
            .and_then(
                |set: std::collections::BTreeSet<_>| {
                    if set.is_empty() { Err("lists no location".into()) } else { Ok(set) }
                },
            )
    }

    pub fn describe(&self) -> String {
        let types = match &self.types {
            None => "all types".to_string(),
            Some(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
        };
        let places = match &self.catchment {
            None => "everywhere".to_string(),
            Some(c) if c.len() == 1 => "catchment of 1 location".to_string(),
            Some(c) => format!("catchment of {} locations", c.len()),
        };
        format!("{types}; {places}")
    }
}

impl Peer {
    /// This node's role toward the peer.
    pub fn local_role(&self) -> crate::protocol::message::Role {
        use crate::protocol::message::Role;
        match self.role {
            Role::Parent => Role::Child,
            Role::Child => Role::Parent,
            Role::Peer => Role::Peer,
        }
    }

    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", crate::id::short(&self.node_id.to_string())),
            None => crate::id::short(&self.node_id.to_string()).to_string(),
        }
    }
}

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    /// Where `serve` accepts connections (a parent, or a peer others dial).
    pub listen: Option<std::net::SocketAddr>,
    pub sync_interval_secs: u64,
    pub trust: Vec<TrustedNode>,
    pub peers: Vec<Peer>,
    /// Conflict policy rules, over the built-in defaults.
    pub conflicts: crate::conflict::PolicyRules,
    pub retention: Retention,
    pub admin: AdminConfig,
    pub failures: FailuresConfig,
    /// `[fhir]`: export settings and push targets.
    pub fhir: crate::fhir::FhirConfig,
    /// `[[emr]]`: the EMRs this node bridges to.
    pub emr: crate::emr::EmrConfig,
}

/// The `[admin]` section: where `serve` runs the admin web view and JSON API (default: enabled,
/// on 127.0.0.1:7780).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Whether `listen` may be an address other machines reach (off by default: the view is
    /// protected by a token only, over plain HTTP).
    pub allow_remote: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7780)),
            allow_remote: false,
        }
    }
}

impl AdminConfig {
    /// Checks that a non-loopback address is allowed explicitly.
    pub fn check(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "{} is not a loopback address; the admin view serves plain HTTP, so set \
                 allow_remote = true to serve it beyond this machine",
                self.listen
            ));
        }
        Ok(())
    }
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<crate::protocol::message::Role, String> {
    use crate::protocol::message::Role;
    match s {
        "parent" => Ok(Role::Parent),
        "child" => Ok(Role::Child),
        "peer" => Ok(Role::Peer),
        other => Err(format!("{other:?} is not a role (parent, child or peer)")),
    }
}

pub fn role_name(role: crate::protocol::message::Role) -> &'static str {
    use crate::protocol::message::Role;
    match role {
        Role::Parent => "parent",
        Role::Child => "child",
        Role::Peer => "peer",
    }
}

/// Parses `host:port` with a literal IP address.
pub fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an address (IP:PORT, e.g. 127.0.0.1:7700)"))
}

/// Checks a peer entry: dialled roles need an address.
pub fn check_peer(peer: &Peer) -> Result<(), String> {
    use crate::protocol::message::Role;
    if matches!(peer.role, Role::Parent) && peer.addr.is_none() {
        return Err("a parent needs addr (this node dials its parent)".into());
    }
    Ok(())
}

/// The trust set of a running node: its own key plus the configured nodes.
pub struct TrustSet {
    pub own: NodeId,
    pub others: Vec<NodeId>,
}

impl Trust for TrustSet {
    fn trusts(&self, node: &NodeId) -> bool {
        *node == self.own || self.others.contains(node)
    }
}

fn parse_admin(raw: Option<RawAdmin>) -> Result<AdminConfig, (&'static str, String)> {
    let d = AdminConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let listen = raw.listen.as_deref().map(parse_addr).transpose().map_err(|m| ("listen", m))?;
    let admin = AdminConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        listen: listen.unwrap_or(d.listen),
        allow_remote: raw.allow_remote.unwrap_or(d.allow_remote),
    };
    admin.check().map_err(|m| ("listen", m))?;
    Ok(admin)
}

/// Checks a node name: 1 to 64 bytes of letters, digits, `-`, `_`, `.` or space.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_alphanumeric() || "-_. ".contains(c));
    if name.trim().is_empty() || name.len() > NAME_BYTES_MAX || !ok_chars {
        return Err(format!(
            "{name:?} is not a name (1-64 letters, digits, '-', '_', '.', spaces)"
        ));
    }
    Ok(())
}

impl Config {
    pub fn new(name: &str) -> Result<Config, String> {
        check_name(name)?;
        Ok(Config {
            name: name.to_string(),
            listen: None,
            sync_interval_secs: SYNC_INTERVAL_SECS_DEFAULT,
            trust: Vec::new(),
            peers: Vec::new(),
            conflicts: Default::default(),
            retention: Retention::default(),
            failures: FailuresConfig::default(),
            admin: AdminConfig::default(),
            fhir: Default::default(),
            emr: Default::default(),
        })
    }

    pub fn peer(&self, node: &NodeId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.node_id == *node)
    }

    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        if raw.version != CONFIG_VERSION {
            return Err(ConfigError::Version { path: path.into(), found: raw.version });
        }
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        check_name(&raw.node.name).map_err(|m| invalid("node.name".into(), m))?;
        let mut trust = Vec::new();
        for (i, t) in raw.trust.into_iter().enumerate() {
            let node_id = t.node_id.parse().map_err(|e: crate::id::IdError| {
                invalid(format!("trust[{i}].node_id"), e.to_string())
            })?;
            if let Some(name) = &t.name {
                check_name(name).map_err(|m| invalid(format!("trust[{i}].name"), m))?;
            }
            trust.push(TrustedNode { node_id, name: t.name });
        }
        let mut peers = Vec::new();
        for (i, p) in raw.peers.into_iter().enumerate() {
            let at = |f: &str| format!("peers[{i}].{f}");
            let node_id = p
                .node_id
                .parse()
                .map_err(|e: crate::id::IdError| invalid(at("node_id"), e.to_string()))?;
            let role = parse_role(&p.role).map_err(|m| invalid(at("role"), m))?;
            let addr = p
                .addr
                .as_deref()
                .map(parse_addr)
                .transpose()
                .map_err(|m| invalid(at("addr"), m))?;
            if let Some(name) = &p.name {
                check_name(name).map_err(|m| invalid(at("name"), m))?;
            }
            let types = p
                .types
                .as_deref()
                .map(Scope::parse_types)
                .transpose()
                .map_err(|m| invalid(at("types"), m))?;
            let catchment = p
                .catchment
                .as_deref()
                .map(Scope::parse_catchment)
                .transpose()
                .map_err(|m| invalid(at("catchment"), m))?;
            let scope = Scope { types, catchment };
            if !scope.is_everything() && role != crate::protocol::message::Role::Child {
                let field = if scope.types.is_some() { "types" } else { "catchment" };
                return Err(invalid(at(field), "only a child entry may be limited".into()));
            }
            let peer = Peer { node_id, role, addr, name: p.name, scope };
            check_peer(&peer).map_err(|m| invalid(at("addr"), m))?;
            if peers.iter().any(|q: &Peer| q.node_id == node_id) {
                return Err(invalid(at("node_id"), format!("{node_id} is listed twice")));
            }
            peers.push(peer);
        }
        let network = raw.network.unwrap_or(RawNetwork { listen: None, sync_interval_secs: None });
        let listen = network
            .listen
            .as_deref()
            .map(parse_addr)
            .transpose()
            .map_err(|m| invalid("network.listen".into(), m))?;
        let sync_interval_secs = network.sync_interval_secs.unwrap_or(SYNC_INTERVAL_SECS_DEFAULT);
        if sync_interval_secs < SYNC_INTERVAL_SECS_MIN {
            let m =
                format!("{sync_interval_secs} is below the minimum of {SYNC_INTERVAL_SECS_MIN}");
            return Err(invalid("network.sync_interval_secs".into(), m));
        }
        let admin = parse_admin(raw.admin).map_err(|(f, m)| invalid(format!("admin.{f}"), m))?;
        let mut rules = Vec::new();
        for (key, policy) in &raw.conflicts {
            let at = format!("conflicts.\"{key}\"");
            let ty = key.split('.').next().unwrap_or_default();
            ty.parse::<crate::id::EntityType>().map_err(|e| invalid(at.clone(), e.to_string()))?;
            let policy: crate::conflict::Policy = policy.parse().map_err(|m| invalid(at, m))?;
            rules.push((key.clone(), policy));
        }
        let conflicts = crate::conflict::PolicyRules { rules };
        let retention = match &raw.audit {
            None => Retention::default(),
            Some(a) => {
                for (field, v) in [("keep_days", a.keep_days), ("keep_entries", a.keep_entries)] {
                    if v == Some(0) {
                        return Err(invalid(
                            format!("audit.{field}"),
                            "0 would keep nothing".into(),
                        ));
                    }
                }
                Retention { keep_days: a.keep_days, keep_entries: a.keep_entries }
            }
        };
        let failures = match raw.failures.and_then(|f| f.give_up_after) {
            None => FailuresConfig::default(),
            Some(0) => {
                let m = "0: give it at least 1 failed attempt".to_string();
                return Err(invalid("failures.give_up_after".into(), m));
            }
            Some(n) => FailuresConfig { give_up_after: n },
        };
        let fhir = match raw.fhir {
            None => Default::default(),
            Some(table) => crate::fhir::FhirConfig::from_table(table).map_err(|e| match e {
                crate::fhir::SettingsError::Invalid { field, message } => {
                    invalid(format!("fhir.{field}"), message)
                }
                crate::fhir::SettingsError::Parse(m) => invalid("fhir".into(), m),
            })?,
        };
        let emr = crate::emr::EmrConfig::from_tables(raw.emr).map_err(|e| match e {
            crate::fhir::SettingsError::Invalid { field, message } => {
                invalid(format!("emr{field}"), message)
            }
            crate::fhir::SettingsError::Parse(m) => invalid("emr".into(), m),
        })?;
        Ok(Config {
            name: raw.node.name,
            listen,
            sync_interval_secs,
            trust,
            peers,
            conflicts,
            retention,
            admin,
            failures,
            fhir,
            emr,
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: shown.clone(), source })?;
        Config::parse(&text, &shown)
    }

    pub fn to_toml(&self) -> String {
        let network = (self.listen.is_some()
            || self.sync_interval_secs != SYNC_INTERVAL_SECS_DEFAULT)
            .then(|| RawNetwork {
                listen: self.listen.map(|a| a.to_string()),
                sync_interval_secs: Some(self.sync_interval_secs),
            });
        let d = AdminConfig::default();
        let a = &self.admin;
        let admin = (*a != d).then(|| RawAdmin {
            enabled: (a.enabled != d.enabled).then_some(a.enabled),
            listen: (a.listen != d.listen).then(|| a.listen.to_string()),
            allow_remote: a.allow_remote.then_some(true),
        });
        let failures = (self.failures != FailuresConfig::default())
            .then_some(RawFailures { give_up_after: Some(self.failures.give_up_after) });
        let raw = RawConfig {
            version: CONFIG_VERSION,
            admin,
            failures,
            node: RawNode { name: self.name.clone() },
            network,
            peers: self
                .peers
                .iter()
                .map(|p| RawPeer {
                    node_id: p.node_id.to_string(),
                    role: role_name(p.role).to_string(),
                    addr: p.addr.map(|a| a.to_string()),
                    name: p.name.clone(),
                    types: p
                        .scope
                        .types
                        .as_ref()
                        .map(|t| t.iter().map(|t| t.as_str().to_string()).collect()),
                    catchment: p
                        .scope
                        .catchment
                        .as_ref()
                        .map(|c| c.iter().map(|u| u.as_str().to_string()).collect()),
                })
                .collect(),
            trust: self
                .trust
                .iter()
                .map(|t| RawTrust { node_id: t.node_id.to_string(), name: t.name.clone() })
                .collect(),
            audit: (self.retention != Retention::default()).then_some(RawAudit {
                keep_days: self.retention.keep_days,
                keep_entries: self.retention.keep_entries,
            }),
            conflicts: self
                .conflicts
                .rules
                .iter()
                .map(|(k, p)| (k.clone(), p.as_str().to_string()))
                .collect(),
            fhir: self.fhir.raw.clone(),
            emr: self.emr.raw.clone(),
        };
        let body = toml::to_string(&raw).unwrap_or_default();
        format!("# sitesync node configuration; see docs/operating.md\n{body}")
    }

    /// Writes the config atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let shown = path.display().to_string();
        let io = |source| ConfigError::Io { path: shown.clone(), source };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut tmp, self.to_toml().as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Nodes whose batches this node accepts: itself, `[[trust]]` and `[[peers]]`.
    pub fn trust_set(&self, own: NodeId) -> TrustSet {
        let trusted = self.trust.iter().map(|t| t.node_id);
        TrustSet { own, others: trusted.chain(self.peers.iter().map(|p| p.node_id)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_field() {
        let mut c = Config::new("clinic-a").expect("name");
        c.trust.push(TrustedNode { node_id: NodeId([1; 32]), name: Some("district".into()) });
        assert_eq!(Config::parse(&c.to_toml(), "x").expect("parses"), c);
        c.listen = Some("127.0.0.1:7700".parse().expect("addr"));
        c.peers.push(Peer {
            node_id: NodeId([2; 32]),
            role: crate::protocol::message::Role::Parent,
            addr: Some("10.0.0.1:7700".parse().expect("addr")),
            name: None,
            scope: Default::default(),
        });
        assert_eq!(Config::parse(&c.to_toml(), "x").expect("parses"), c);
        let e = Config::parse(
            &format!("version = 1\n[node]\nname = \"a\"\n[[peers]]\nnode_id = \"{}\"\nrole = \"parent\"\n", NodeId([3; 32])),
            "f.toml",
        )
        .expect_err("a parent without addr");
        assert!(e.to_string().contains("peers[0].addr"), "{e}");
        let e = Config::parse(
            "version = 1\n[node]\nname = \"a\"\n[[trust]]\nnode_id = \"zz\"\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("trust[0].node_id") && e.to_string().contains("zz"), "{e}");
        let e = Config::parse("version = 1\n[node]\nnam = \"a\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("nam"), "{e}");
        let e = Config::parse("version = 7\n[node]\nname = \"a\"\n", "f.toml").unwrap_err();
        assert!(matches!(e, ConfigError::Version { found: 7, .. }));
    }

    #[test]
    fn admin_section_round_trips_and_refuses_a_remote_address_unless_allowed() {
        let mut c = Config::new("clinic-a").expect("name");
        assert!(!c.to_toml().contains("[admin]"), "defaults are not written");
        c.admin.listen = "127.0.0.1:9000".parse().expect("addr");
        assert_eq!(Config::parse(&c.to_toml(), "x").expect("parses"), c);
        let text = "version = 1\n[node]\nname = \"a\"\n[admin]\nlisten = \"0.0.0.0:7780\"\n";
        let e = Config::parse(text, "f.toml").expect_err("a remote address needs allow_remote");
        assert!(e.to_string().contains("admin.listen"), "{e}");
        let c = Config::parse(&format!("{text}allow_remote = true\n"), "f.toml").expect("allowed");
        assert!(c.admin.allow_remote && c.admin.enabled);
        assert_eq!(Config::parse(&c.to_toml(), "x").expect("parses"), c);
    }
}
