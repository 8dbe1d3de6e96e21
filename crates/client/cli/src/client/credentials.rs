//! Where the session token is kept: the OS credential store (Secret Service on Linux, Keychain on macOS,
//! Credential Manager on Windows) through the `keyring` crate. When none is reachable the command fails and
//! names the explicit opt-in file store (`CLOUDSYNC_CREDENTIAL_STORE=file`); it never falls back to a
//! plaintext file on its own.
//!
//! Each configuration folder is a profile of its own (`CLOUDSYNC_CONFIG_DIR`): secrets of a profile other than
//! the default one are kept under accounts named with a short hash of its folder, so the same connection name
//! or server in two profiles never shares, overwrites or deletes one secret. (A secret such a profile saved
//! before profiles were kept apart is not read: sign in, or add the connection, again there.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

const SERVICE: &str = "cloudsync";

/// The configured credential store.
#[derive(Debug, Clone)]
pub enum CredentialStore {
    /// The OS credential store.
    Keyring,
    /// A JSON file with mode 0600 (explicit opt-in).
    File(PathBuf),
}

impl CredentialStore {
    /// From `CLOUDSYNC_CREDENTIAL_STORE` (`keyring`, the default, or `file`).
    ///
    /// # Errors
    /// An unknown value.
    pub fn from_env() -> Result<Self> {
        match std::env::var("CLOUDSYNC_CREDENTIAL_STORE").as_deref() {
            Err(_) | Ok("") | Ok("keyring") => Ok(Self::Keyring),
            Ok("file") => Ok(Self::File(super::config::config_dir().join("credentials.json"))),
            Ok(other) => bail!("CLOUDSYNC_CREDENTIAL_STORE={other:?} is not known: use `keyring` (default) or `file`"),
        }
    }

    fn file_warning(path: &std::path::Path) {
        eprintln!(
            "warning: storing the session token in {} (CLOUDSYNC_CREDENTIAL_STORE=file); anyone who can read that file can use your session",
            path.display()
        );
    }

    /// The OS credential store's account for `account` in this profile.
    fn scoped(account: &str) -> String {
        tagged(account, profile())
    }

    /// Stores `secret` under `account`.
    ///
    /// # Errors
    /// When the store is unavailable.
    pub fn set(&self, account: &str, secret: &str) -> Result<()> {
        match self {
            Self::Keyring => {
                let account = Self::scoped(account);
                keyring::Entry::new(SERVICE, &account).and_then(|e| e.set_password(secret)).map_err(keyring_error)
            }
            Self::File(path) => {
                Self::file_warning(path);
                let mut all = read_file(path)?;
                all.insert(account.to_owned(), secret.to_owned());
                write_file(path, &all)
            }
        }
    }

    /// Reads the secret for `account`, if any.
    ///
    /// # Errors
    /// When the store is unavailable.
    pub fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>> {
        match self {
            Self::Keyring => {
                match keyring::Entry::new(SERVICE, &Self::scoped(account)).and_then(|e| e.get_password()) {
                    Ok(s) => Ok(Some(Zeroizing::new(s))),
                    Err(keyring::Error::NoEntry) => Ok(None),
                    Err(e) => Err(keyring_error(e)),
                }
            }
            Self::File(path) => Ok(read_file(path)?.remove(account).map(Zeroizing::new)),
        }
    }

    /// Deletes the secret for `account` (no error if absent).
    ///
    /// # Errors
    /// When the store is unavailable.
    pub fn delete(&self, account: &str) -> Result<()> {
        match self {
            Self::Keyring => {
                match keyring::Entry::new(SERVICE, &Self::scoped(account)).and_then(|e| e.delete_credential()) {
                    Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                    Err(e) => Err(keyring_error(e)),
                }
            }
            Self::File(path) => {
                let mut all = read_file(path)?;
                if all.remove(account).is_some() {
                    write_file(path, &all)?;
                }
                Ok(())
            }
        }
    }
}

/// The short tag of this profile, when it is not the default one: a hash of its configuration folder (worked
/// out once per run).
fn profile() -> Option<&'static str> {
    static TAG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| tag_of(&super::config::config_dir())).as_deref()
}

/// `account` as the credential store names it in the profile tagged `tag` (the default profile: untagged).
fn tagged(account: &str, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("{account}@{tag}"),
        None => account.to_owned(),
    }
}

/// A folder named the same way however it was written (a trailing slash, `..`, a link on the way), whether it
/// exists yet or not: the deepest part that exists is resolved, the rest joined to it. (A secret may be saved
/// before the folder is made.)
fn normal(dir: &std::path::Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let resolved = abs
        .ancestors()
        .find_map(|a| Some(std::fs::canonicalize(a).ok()?.join(abs.strip_prefix(a).ok()?)))
        .unwrap_or(abs);
    resolved.components().collect()
}

fn tag_of(config_dir: &std::path::Path) -> Option<String> {
    let dir = normal(config_dir);
    if normal(&super::config::default_config_dir()) == dir {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, dir.as_os_str().as_encoded_bytes());
    Some(hex::encode(&digest.as_ref()[..6]))
}

/// The OS credential store's account for `account` in the profile whose configuration folder is `config_dir`
/// (for tools and tests that look at the store from outside).
pub fn account_in(account: &str, config_dir: &std::path::Path) -> String {
    tagged(account, tag_of(config_dir).as_deref())
}

fn keyring_error(e: keyring::Error) -> anyhow::Error {
    match e {
        keyring::Error::NoStorageAccess(_) | keyring::Error::PlatformFailure(_) => anyhow::anyhow!(
            "no OS credential store is available ({e}). On Linux, run a Secret Service such as gnome-keyring in your \
             session (with D-Bus). To keep the token in a file instead, opt in with CLOUDSYNC_CREDENTIAL_STORE=file \
             (mode 0600; anyone who can read the file can use your session)"
        ),
        other => anyhow::anyhow!("the OS credential store failed: {other}"),
    }
}

fn read_file(path: &std::path::Path) -> Result<BTreeMap<String, String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a valid credential file", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_file(path: &std::path::Path, all: &BTreeMap<String, String>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = Zeroizing::new(serde_json::to_vec_pretty(all).context("serialising credentials")?);
    super::config::write_private(path, &text)
}
