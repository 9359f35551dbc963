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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trust: Vec<RawTrust>,
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

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub trust: Vec<TrustedNode>,
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
        Ok(Config { name: name.to_string(), trust: Vec::new() })
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
        Ok(Config { name: raw.node.name, trust })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: shown.clone(), source })?;
        Config::parse(&text, &shown)
    }

    pub fn to_toml(&self) -> String {
        let raw = RawConfig {
            version: CONFIG_VERSION,
            node: RawNode { name: self.name.clone() },
            trust: self
                .trust
                .iter()
                .map(|t| RawTrust { node_id: t.node_id.to_string(), name: t.name.clone() })
                .collect(),
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

    pub fn trust_set(&self, own: NodeId) -> TrustSet {
        TrustSet { own, others: self.trust.iter().map(|t| t.node_id).collect() }
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
}
