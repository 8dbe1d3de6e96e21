//! The server master key: 32 random bytes that wrap every workspace's keys. It comes from
//! `CLOUDSYNC_MASTER_KEY` (hex) or a file (created mode 0600 on first start, refused when group- or
//! world-readable), never from the database, so a stolen database or bucket alone reveals nothing.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cloudsync_crypto::SecretKey;
use zeroize::Zeroizing;

use super::ServerConfig;

pub(super) fn load_or_create(cfg: &ServerConfig, data_dir: &Path) -> Result<SecretKey> {
    if let Ok(hex) = std::env::var("CLOUDSYNC_MASTER_KEY") {
        let hex = Zeroizing::new(hex);
        return SecretKey::from_hex(hex.trim()).map_err(|_| {
            anyhow::anyhow!("CLOUDSYNC_MASTER_KEY must be 64 hexadecimal characters (32 bytes); generate one with `openssl rand -hex 32`")
        });
    }
    let path = cfg.security.master_key_file.clone().unwrap_or_else(|| data_dir.join("master.key"));
    if path.exists() {
        check_private(&path)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(&path).with_context(|| format!("cannot read the master key {}", path.display()))?,
        );
        return SecretKey::from_hex(text.trim())
            .map_err(|_| anyhow::anyhow!("{} does not hold a master key (64 hexadecimal characters)", path.display()));
    }
    let key = SecretKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path).with_context(|| format!("cannot create the master key file {}", path.display()))?;
    f.write_all(key.to_hex().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "Created a new master key in {} — back it up apart from the data: without it nothing can be decrypted.",
        path.display()
    );
    Ok(key)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "the master key file {} is readable by other users (mode {:o}); run `chmod 600 {}` and start again",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<()> {
    Ok(())
}
