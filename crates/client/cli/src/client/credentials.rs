//! Where the session token is kept: the OS credential store (Secret Service on Linux, Keychain on macOS,
//! Credential Manager on Windows) through the `keyring` crate. When none is reachable the command fails and
//! names the explicit opt-in file store (`CLOUDSYNC_CREDENTIAL_STORE=file`); it never falls back to a
//! plaintext file on its own.

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

    /// Stores `secret` under `account`.
    ///
    /// # Errors
    /// When the store is unavailable.
    pub fn set(&self, account: &str, secret: &str) -> Result<()> {
        match self {
            Self::Keyring => {
                keyring::Entry::new(SERVICE, account).and_then(|e| e.set_password(secret)).map_err(keyring_error)
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
            Self::Keyring => match keyring::Entry::new(SERVICE, account).and_then(|e| e.get_password()) {
                Ok(s) => Ok(Some(Zeroizing::new(s))),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(keyring_error(e)),
            },
            Self::File(path) => Ok(read_file(path)?.remove(account).map(Zeroizing::new)),
        }
    }

    /// Deletes the secret for `account` (no error if absent).
    ///
    /// # Errors
    /// When the store is unavailable.
    pub fn delete(&self, account: &str) -> Result<()> {
        match self {
            Self::Keyring => match keyring::Entry::new(SERVICE, account).and_then(|e| e.delete_credential()) {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(keyring_error(e)),
            },
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
