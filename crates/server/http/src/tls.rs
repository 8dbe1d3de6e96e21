//! TLS 1.3 only, via rustls. On first start the server makes a self-signed certificate and keeps it in its
//! data directory; its SHA-256 fingerprint is what clients pin on first login.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server TLS configuration and the fingerprint of its certificate.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// rustls configuration (TLS 1.3 only, ALPN h2 and http/1.1).
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the end-entity certificate (DER).
    pub fingerprint: [u8; 32],
}

/// Loads `cert.pem` and `key.pem` from `dir`, creating a self-signed pair for `names` (plus localhost and the
/// loopback addresses) when absent. The key file is written with mode 0600.
///
/// # Errors
/// Unreadable or invalid files, or a failure to write new ones.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<TlsMaterial, String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut all = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        all.extend(names.iter().cloned());
        all.dedup();
        let ck = rcgen::generate_simple_self_signed(all).map_err(|e| format!("cannot generate a certificate: {e}"))?;
        write_private(&key_path, ck.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, ck.cert.pem()).map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    }
    from_files(&cert_path, &key_path)
}

/// Loads a certificate chain and key from PEM files.
///
/// # Errors
/// Unreadable or invalid files.
pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<TlsMaterial, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid certificate in {}: {e}", cert_path.display()))?;
    let first = certs.first().ok_or_else(|| format!("no certificate in {}", cert_path.display()))?;
    let fingerprint = cloudsync_crypto::sha256(first.as_ref());
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("invalid key in {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsMaterial { config: Arc::new(config), fingerprint })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
