//! TLS for the client. CloudSync is self-hosted, so most servers have no publicly trusted certificate; the
//! default is to pin the server's certificate fingerprint on first login ([`Trust::Fingerprint`]) — the pin
//! replaces name and chain checks, but the handshake signature is still verified, which proves the server
//! holds the pinned certificate's key. Servers behind a private or public CA use [`Trust::CaFile`] or
//! [`Trust::System`] with normal WebPKI checks. Every connection is TLS 1.3 only, with the ring provider
//! chosen explicitly so nothing depends on a process-wide default provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, ErrorKind};
use crate::fingerprint::certificate_fingerprint;
use crate::mapping;

/// Prefix of the `rustls::Error::General` a pin mismatch fails the handshake with; the presented
/// fingerprint (hex) follows. The error mapping looks for it in the transport error's source chain.
pub(crate) const PIN_MISMATCH_TAG: &str = "cloudsync-pin-mismatch:";

/// How long connecting and the TLS handshake may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Which server certificates the client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Accept exactly the end-entity certificate with this SHA-256 (of its DER); no name or chain checks.
    Fingerprint([u8; 32]),
    /// Accept certificates that chain to a CA in this PEM file and match the host name.
    CaFile(PathBuf),
    /// Accept certificates that chain to the operating system's trusted roots and match the host name.
    System,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls13_builder(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, Error> {
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::new(ErrorKind::Tls, format!("could not set up TLS 1.3: {e}")).with_source(e))
}

/// The client configuration for `trust`: TLS 1.3 only, ALPN h2 and http/1.1.
///
/// # Errors
/// [`ErrorKind::Tls`] when the CA file cannot be read or holds no certificate, or no system roots exist.
pub(crate) fn client_config(trust: &Trust) -> Result<ClientConfig, Error> {
    let provider = provider();
    let mut config = match trust {
        Trust::Fingerprint(pin) => {
            let verifier = PinVerifier { pin: *pin, algs: provider.signature_verification_algorithms };
            tls13_builder(provider)?.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        }
        Trust::CaFile(path) => tls13_builder(provider)?.with_root_certificates(roots_from_file(path)?),
        Trust::System => tls13_builder(provider)?.with_root_certificates(system_roots()?),
    }
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates of a PEM file, as trust roots.
///
/// # Errors
/// [`ErrorKind::Tls`] when the file cannot be read, is not PEM, or holds no usable certificate.
pub fn roots_from_file(path: &std::path::Path) -> Result<RootCertStore, Error> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| Error::new(ErrorKind::Tls, format!("could not read the CA file {shown}: {e}")).with_source(e))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            Error::new(ErrorKind::Tls, format!("the CA file {shown} is not valid PEM: {e}")).with_source(e)
        })?;
        roots.add(cert).map_err(|e| {
            Error::new(ErrorKind::Tls, format!("the CA file {shown} holds an unusable certificate: {e}")).with_source(e)
        })?;
    }
    if roots.is_empty() {
        return Err(Error::new(
            ErrorKind::Tls,
            format!("the CA file {shown} holds no certificate; give a PEM file with '-----BEGIN CERTIFICATE-----'"),
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Tls,
            format!(
                "no trusted root certificates were found on this system{why}; give the server's CA file or its \
                 certificate fingerprint instead"
            ),
        ));
    }
    Ok(roots)
}

/// Accepts exactly the pinned end-entity certificate and verifies handshake signatures with it.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = certificate_fingerprint(end_entity);
        if cloudsync_crypto::ct_eq(&presented, &self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("{PIN_MISMATCH_TAG}{}", hex::encode(presented))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Accepts any certificate (used only to read it for the user to confirm) but still verifies the handshake
/// signature, so the fingerprint shown belongs to a key the server really holds.
#[derive(Debug)]
struct ProbeVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ProbeVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Connects once to the server at `url` (a base URL such as `https://127.0.0.1:8443`) and returns the
/// SHA-256 fingerprint of the certificate it presents, without trusting it. `cloudsync login` shows it so
/// the user can compare it with the one the server printed, and pins it when they agree. The connection is
/// direct (no proxy) and TLS 1.3 only.
///
/// # Errors
/// [`ErrorKind::BadRequest`] for a URL that is not `https://host[:port]`, [`ErrorKind::Network`] when the
/// server cannot be reached, [`ErrorKind::Tls`] when no TLS 1.3 handshake is possible.
pub async fn probe_fingerprint(url: &str) -> Result<[u8; 32], Error> {
    let base = crate::client::parse_base_url(url)?;
    let host = base.url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = base.url.port_or_known_default().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| Error::new(ErrorKind::BadRequest, format!("{host:?} is not a valid host name: {e}")))?;

    let provider = provider();
    let verifier = ProbeVerifier { algs: provider.signature_verification_algorithms };
    let config =
        tls13_builder(provider)?.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let timed_out = || Error::new(ErrorKind::Network, format!("{} did not answer in time; retry later", base.text));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| mapping::unreachable(&base.text, &e).with_source(e))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(r) => mapping::tls(&base.text, r),
            None => Error::new(ErrorKind::Network, format!("the TLS handshake with {} failed: {e}", base.text))
                .with_source(e),
        })?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| certificate_fingerprint(cert))
        .ok_or_else(|| Error::new(ErrorKind::Tls, format!("{} presented no certificate", base.text)))
}
