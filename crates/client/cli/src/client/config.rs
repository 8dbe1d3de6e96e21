//! The client's configuration file: which server, how its certificate is trusted, which account. It holds no
//! secret — the session token lives in the OS credential store. Location: `$CLOUDSYNC_CONFIG_DIR` or the
//! platform config directory (`~/.config/cloudsync`), file `client.toml`, mode 0600.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Saved login.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Server URL.
    pub server: Option<String>,
    /// Pinned certificate fingerprint (hex).
    pub fingerprint: Option<String>,
    /// CA file to trust instead of a pin.
    pub ca_cert: Option<PathBuf>,
    /// Trust the OS roots instead of a pin.
    #[serde(default)]
    pub system_roots: bool,
    /// Account email.
    pub email: Option<String>,
}

/// A folder named by the environment variable `name`; an empty one counts as unset.
fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// The configuration directory used when `CLOUDSYNC_CONFIG_DIR` is not set (the default profile's).
pub fn default_config_dir() -> PathBuf {
    dirs::config_dir().unwrap_or_else(|| PathBuf::from(".")).join("cloudsync")
}

/// The configuration directory.
pub fn config_dir() -> PathBuf {
    env_dir("CLOUDSYNC_CONFIG_DIR").unwrap_or_else(default_config_dir)
}

/// The state directory (sync indexes): `$CLOUDSYNC_STATE_DIR`, else `state` in `$CLOUDSYNC_CONFIG_DIR` when
/// that is set, else the platform's local data directory (`~/.local/share/cloudsync`).
pub fn state_dir() -> PathBuf {
    if let Some(dir) = env_dir("CLOUDSYNC_STATE_DIR") {
        return dir;
    }
    if let Some(dir) = env_dir("CLOUDSYNC_CONFIG_DIR") {
        return dir.join("state");
    }
    dirs::data_local_dir().unwrap_or_else(|| PathBuf::from(".")).join("cloudsync")
}

fn path() -> PathBuf {
    config_dir().join("client.toml")
}

impl ClientConfig {
    /// Loads the file, or an empty configuration when there is none.
    ///
    /// # Errors
    /// An unreadable or invalid file.
    pub fn load() -> Result<Self> {
        load_toml(&path(), "client configuration")
    }

    /// Writes the file atomically with mode 0600.
    ///
    /// # Errors
    /// When the directory or file cannot be written.
    pub fn save(&self) -> Result<()> {
        save_toml(&path(), self, "client configuration")
    }
}

/// Reads a TOML file of the config directory, or the default when there is none.
///
/// # Errors
/// An unreadable or invalid file.
pub fn load_toml<T: serde::de::DeserializeOwned + Default>(p: &std::path::Path, what: &str) -> Result<T> {
    match std::fs::read_to_string(p) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{} is not a valid {what}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Writes a TOML file of the config directory atomically with mode 0600.
///
/// # Errors
/// When the directory or file cannot be written.
pub fn save_toml<T: Serialize>(p: &std::path::Path, value: &T, what: &str) -> Result<()> {
    let dir = config_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string_pretty(value).with_context(|| format!("serialising the {what}"))?;
    write_private(p, text.as_bytes())
}

/// Runs `f` holding an exclusive lock on `lock` (a file created when missing, with its folder), so that
/// commands changing the same saved file at once take turns instead of losing each other's changes.
///
/// # Errors
/// The lock cannot be taken, or `f` fails.
pub fn locked<T>(lock: &std::path::Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::File::create(lock).with_context(|| format!("cannot create the lock {}", lock.display()))?;
    file.lock().with_context(|| format!("cannot lock {}", lock.display()))?;
    f()
}

/// Loads the TOML file `p`, changes it and saves it again, under the lock `p` with `.lock` for extension.
///
/// # Errors
/// As [`locked`], [`load_toml`] and [`save_toml`], or `change` fails (and nothing is saved).
pub fn update_toml<T, R>(p: &std::path::Path, what: &str, change: impl FnOnce(&mut T) -> Result<R>) -> Result<R>
where
    T: serde::de::DeserializeOwned + Default + Serialize,
{
    locked(&p.with_extension("lock"), || {
        let mut value: T = load_toml(p, what)?;
        let out = change(&mut value)?;
        save_toml(p, &value, what)?;
        Ok(out)
    })
}

/// Writes `bytes` to `path` through a temporary file with mode 0600 and a rename.
///
/// # Errors
/// Any I/O failure.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}
