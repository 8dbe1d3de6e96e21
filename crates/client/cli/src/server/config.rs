//! Server configuration, layered: built-in defaults < TOML file < environment (`CLOUDSYNC_SECTION__KEY`) <
//! flags. The result is a plain value handed to [`super::start`]; nothing reads configuration globally.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The commented example printed by `cloudsync server default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// Whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listener and proxies.
    pub server: ServerSection,
    /// Where data lives.
    pub storage: StorageSection,
    /// Keys, certificates and limits.
    pub security: SecuritySection,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Listen address.
    pub listen: String,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Extra certificate names.
    pub public_names: Vec<String>,
    /// Trusted reverse proxies.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8443".into(), data_dir: None, public_names: Vec::new(), trusted_proxies: Vec::new() }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// `sqlite://...` (later also `postgres://...`).
    pub database_url: Option<String>,
    /// Chunk directory.
    pub chunks_dir: Option<PathBuf>,
    /// Hours between garbage collections of unreferenced chunks (0: only `cloudsync server gc`).
    pub gc_interval_hours: u64,
    /// Grace period of garbage collection, hours (at least 1).
    pub gc_grace_hours: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self { database_url: None, chunks_dir: None, gc_interval_hours: 6, gc_grace_hours: 24 }
    }
}

/// `[security]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Master key file.
    pub master_key_file: Option<PathBuf>,
    /// Certificate PEM.
    pub tls_cert: Option<PathBuf>,
    /// Key PEM.
    pub tls_key: Option<PathBuf>,
    /// Login attempts per account per window.
    pub login_attempts_per_account: u32,
    /// Login attempts per address per window.
    pub login_attempts_per_ip: u32,
    /// Window length, seconds.
    pub login_window_secs: u64,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            master_key_file: None,
            tls_cert: None,
            tls_key: None,
            login_attempts_per_account: 10,
            login_attempts_per_ip: 50,
            login_window_secs: 900,
        }
    }
}

impl ServerConfig {
    /// Loads defaults, then `file` (if given), then the environment.
    ///
    /// # Errors
    /// An unreadable or invalid file, or an invalid environment value.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut value = toml::Value::try_from(Self::default()).context("default configuration")?;
        if let Some(f) = file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("cannot read the config file {}", f.display()))?;
            let overlay: toml::Value =
                toml::from_str(&text).with_context(|| format!("{} is not valid TOML", f.display()))?;
            merge(&mut value, overlay);
        }
        for (k, v) in std::env::vars() {
            let Some(rest) = k.strip_prefix("CLOUDSYNC_") else { continue };
            let Some((section, key)) = rest.split_once("__") else { continue };
            let parsed = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v.clone()));
            let mut t = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.to_lowercase(), parsed);
            t.insert(section.to_lowercase(), toml::Value::Table(inner));
            merge(&mut value, toml::Value::Table(t));
        }
        let cfg: Self =
            value.try_into().context("invalid configuration (check the file and CLOUDSYNC_*__* variables)")?;
        if cfg.security.login_window_secs == 0 {
            bail!("security.login_window_secs must be at least 1");
        }
        if cfg.storage.gc_grace_hours == 0 {
            bail!(
                "storage.gc_grace_hours must be at least 1: a shorter grace period could delete chunks an upload in \
                 flight is about to commit"
            );
        }
        Ok(cfg)
    }

    /// The data directory (configured or the platform default).
    pub fn data_dir(&self) -> PathBuf {
        self.server
            .data_dir
            .clone()
            .unwrap_or_else(|| dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("cloudsync").join("server"))
    }
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_example_parses_and_matches_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, DEFAULT_CONFIG).expect("write");
        let cfg = ServerConfig::load(Some(&f)).expect("load");
        assert_eq!(cfg.server.listen, ServerSection::default().listen);
        assert_eq!(cfg.security.login_attempts_per_account, 10);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\nlisen = \"x\"\n").expect("write");
        let err = format!("{:#}", ServerConfig::load(Some(&f)).expect_err("typo"));
        assert!(err.contains("lisen"), "{err}");
    }
}
