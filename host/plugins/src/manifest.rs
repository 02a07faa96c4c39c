//! A plugin's manifest: what it is, which world it implements, which capabilities it is
//! granted and the limits every call runs under. Sent with the component on upload.

use serde::{Deserialize, Serialize};

/// The world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Policy,
    Integration,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Policy => "policy",
            World::Integration => "integration",
        }
    }
}

/// Whether an instance may serve more than one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// An instance that finished a call cleanly serves later calls (up to 1,000), possibly
    /// for other principals: fast, but globals persist between calls. Any failure retires it.
    #[default]
    Reuse,
    /// A fresh instance for every call: nothing survives a call.
    PerCall,
}

/// The largest memory any plugin may ask for; also the size of a pooling-allocator slot.
pub const MAX_MEMORY_MIB: u32 = 256;
/// The longest deadline a policy may ask for: it runs on a request's path.
pub const MAX_POLICY_TIMEOUT_MS: u64 = 1_000;
/// The longest deadline an integration call may ask for.
pub const MAX_INTEGRATION_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, in milliseconds.
    pub timeout_ms: u64,
    /// Largest linear memory of one call, in MiB.
    pub memory_mib: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// The plugin author's version label, e.g. `1.2.0`.
    pub version: String,
    pub world: World,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The language the component was written in, if the author says (shown to operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `host:port` pairs an integration may reach with `http.send`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Whether an integration gets its key-value store.
    #[serde(default)]
    pub key_value: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Deliveries of one event before it goes to the dead-letter list (integrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `reuse` (default) or `per-call`.
    #[serde(default, skip_serializing_if = "is_default_isolation")]
    pub isolation: Isolation,
}

fn is_default_isolation(isolation: &Isolation) -> bool {
    *isolation == Isolation::Reuse
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid plugin manifest: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Parses a manifest from JSON or TOML text (JSON if it starts with `{`).
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| ManifestError(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| ManifestError(e.message().to_owned()))?
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks names, limits and that capabilities fit the world.
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |message: String| Err(ManifestError(message));
        if !is_plugin_name(&self.name) {
            return bad(format!("name {:?} must be 1-64 of a-z, 0-9 and '-', starting with a letter", self.name));
        }
        if self.version.trim().is_empty() || self.version.len() > 64 {
            return bad("version must be 1-64 characters, e.g. \"1.0.0\"".into());
        }
        let limits = self.limits();
        let max_timeout = match self.world {
            World::Policy => MAX_POLICY_TIMEOUT_MS,
            World::Integration => MAX_INTEGRATION_TIMEOUT_MS,
        };
        if limits.timeout_ms == 0 || limits.timeout_ms > max_timeout {
            return bad(format!("limits.timeout_ms must be 1 to {max_timeout} for a {} plugin", self.world.as_str()));
        }
        if limits.memory_mib == 0 || limits.memory_mib > MAX_MEMORY_MIB {
            return bad(format!("limits.memory_mib must be 1 to {MAX_MEMORY_MIB}"));
        }
        if self.world == World::Policy && (!self.allowed_hosts.is_empty() || self.key_value) {
            return bad(
                "a policy plugin cannot be granted network or key-value access (integration plugins can)".into()
            );
        }
        for host in &self.allowed_hosts {
            let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
                !name.is_empty() && !name.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return bad(format!("allowed_hosts entry {host:?} must be host:port, e.g. \"hooks.example.org:443\""));
            }
        }
        if self.max_attempts == Some(0) {
            return bad("max_attempts must be at least 1".into());
        }
        Ok(())
    }

    /// The limits in force: the manifest's, or the world's defaults.
    pub fn limits(&self) -> Limits {
        self.limits.clone().unwrap_or(match self.world {
            World::Policy => Limits { timeout_ms: 50, memory_mib: 64 },
            World::Integration => Limits { timeout_ms: 5_000, memory_mib: 64 },
        })
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(8)
    }

    /// Whether `host:port` is on the allowlist (host names compare case-insensitively).
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts.iter().any(|entry| {
            entry.rsplit_once(':').is_some_and(|(name, p)| {
                name.trim_matches(['[', ']']).eq_ignore_ascii_case(host.trim_matches(['[', ']']))
                    && p.parse() == Ok(port)
            })
        })
    }
}

pub fn is_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_and_json_and_applies_defaults() {
        let toml = "name = \"consent\"\nversion = \"1.0.0\"\nworld = \"policy\"\n";
        let manifest = Manifest::parse(toml).unwrap();
        assert_eq!(manifest.limits(), Limits { timeout_ms: 50, memory_mib: 64 });
        let json = r#"{"name":"notify","version":"2","world":"integration","allowed_hosts":["127.0.0.1:9000"]}"#;
        let manifest = Manifest::parse(json).unwrap();
        assert!(manifest.allows_host("127.0.0.1", 9000));
        assert!(!manifest.allows_host("127.0.0.1", 9001));
        assert!(!manifest.allows_host("localhost", 9000));
        assert_eq!(manifest.max_attempts(), 8);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let cases = [
            r#"{"name":"Bad Name","version":"1","world":"policy"}"#,
            r#"{"name":"p","version":"1","world":"policy","allowed_hosts":["x:1"]}"#,
            r#"{"name":"p","version":"1","world":"policy","limits":{"timeout_ms":5000,"memory_mib":8}}"#,
            r#"{"name":"p","version":"1","world":"policy","limits":{"timeout_ms":5,"memory_mib":4096}}"#,
            r#"{"name":"i","version":"1","world":"integration","allowed_hosts":["no-port"]}"#,
            r#"{"name":"p","version":"1","world":"other"}"#,
            r#"{"name":"p","version":"1","world":"policy","surprise":true}"#,
        ];
        for case in cases {
            assert!(Manifest::parse(case).is_err(), "{case}");
        }
    }
}
