//! Real TLS against a tiny in-process HTTPS server (tokio-rustls + an rcgen self-signed certificate): the
//! pinning, CA-file and TLS-1.3-only rules are security properties, so they are checked on actual
//! handshakes rather than by inspecting configuration.

use std::sync::Arc;

use bytes::Bytes;
use cloudsync_sdk::types::{ChunkId, WorkspaceId};
use cloudsync_sdk::{Client, ErrorKind, Trust, certificate_fingerprint, probe_fingerprint};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct TestServer {
    url: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

/// Starts a server that answers `GET /api/v1/health` over HTTP/1.1 and 404 to anything else. It lives as
/// long as the test's runtime.
async fn start_server(versions: &[&'static SupportedProtocolVersion]) -> TestServer {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("generate certificate");
    let cert_der = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Handshake failures are what some tests provoke; the client side reports them.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = answer(tls).await;
                }
            });
        }
    });
    TestServer { url, cert_der, cert_pem: certified.cert.pem() }
}

async fn answer(mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let head_len = request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&request[..head_len]).to_lowercase();
    let (status, body) = if head.starts_with("get /api/v1/health ") {
        ("200 OK", r#"{"status":"ok","version":"x"}"#.to_owned())
    } else if head.starts_with("post /api/v1/workspaces/") && head.contains("content-type: application/octet-stream") {
        // A chunk upload: read exactly Content-Length bytes and count the frames in them.
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = request[head_len..].to_vec();
        while body.len() < len {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let frames = count_frames(&body).filter(|_| body.len() == len);
        let stored = frames.map_or(-1, i64::from);
        ("200 OK", format!(r#"{{"stored":{stored},"already_present":0}}"#))
    } else {
        let e = r#"{"code":"not_found","message":"no such route","request_id":"r1"}"#;
        ("404 Not Found", e.to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(response.as_bytes()).await?;
    tls.shutdown().await
}

/// The number of `id | u32 BE length | payload` frames in an upload body, if it is exactly a sequence of them.
fn count_frames(body: &[u8]) -> Option<u32> {
    let (mut frames, mut at) = (0, 0);
    while at < body.len() {
        let len = body.get(at + 32..at + 36)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 36 + len;
        frames += 1;
    }
    (at == body.len()).then_some(frames)
}

fn temp_pem(name: &str, pem: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("cloudsync-sdk-test-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, pem).expect("write pem");
    path
}

#[tokio::test]
async fn probe_reports_the_certificate_fingerprint_and_the_pin_is_enforced() {
    let server = start_server(&[&rustls::version::TLS13]).await;
    let want = certificate_fingerprint(&server.cert_der);

    assert_eq!(probe_fingerprint(&server.url).await.expect("probe"), want);

    let client = Client::new(&server.url, Trust::Fingerprint(want)).expect("client").with_token("t0ken");
    let health = client.health().await.expect("health with the right pin");
    assert_eq!((health.status.as_str(), health.version.as_str()), ("ok", "x"));

    let mut wrong = want;
    wrong[0] ^= 0xff;
    let err = Client::new(&server.url, Trust::Fingerprint(wrong)).expect("client").health().await.expect_err("pin");
    assert_eq!(err.kind(), ErrorKind::CertificateMismatch, "{err}");
    let shown = cloudsync_sdk::format_fingerprint(&want);
    assert!(err.message().contains(&format!("--fingerprint {shown}")), "{err}");
    assert!(err.message().contains(&cloudsync_sdk::format_fingerprint(&wrong)), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn api_errors_are_mapped_and_uploads_are_framed() {
    let server = start_server(&[&rustls::version::TLS13]).await;
    let client =
        Client::new(&server.url, Trust::Fingerprint(certificate_fingerprint(&server.cert_der))).expect("client");
    let err = client.auth().whoami().await.expect_err("404");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.request_id(), Some("r1"));
    assert_eq!(err.to_string(), "no such route");

    let frames =
        vec![(ChunkId([1; 32]), Bytes::from(vec![7u8; 100_000])), (ChunkId([2; 32]), Bytes::from_static(b"tail"))];
    let uploaded = client.files(WorkspaceId::new()).upload_chunks(frames).await.expect("upload");
    assert_eq!(uploaded.stored, 2, "two whole frames, exactly Content-Length bytes");
}

#[tokio::test]
async fn ca_file_trust_uses_webpki_verification() {
    let server = start_server(&[&rustls::version::TLS13]).await;
    let own = temp_pem("own", &server.cert_pem);
    let client = Client::new(&server.url, Trust::CaFile(own.clone())).expect("client");
    let ok = client.health().await;
    let other = start_server(&[&rustls::version::TLS13]).await;
    let foreign = temp_pem("foreign", &other.cert_pem);
    let err = Client::new(&server.url, Trust::CaFile(foreign.clone())).expect("client").health().await;
    let _ = (std::fs::remove_file(own), std::fs::remove_file(foreign));
    ok.expect("health with the server's own certificate as CA");
    let err = err.expect_err("a certificate from another CA");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");

    let missing = std::env::temp_dir().join("cloudsync-sdk-test-no-such-file.pem");
    let err = Client::new(&server.url, Trust::CaFile(missing)).expect_err("missing CA file");
    assert_eq!(err.kind(), ErrorKind::Tls);
}

#[tokio::test]
async fn a_tls12_only_server_is_refused() {
    let server = start_server(&[&rustls::version::TLS12]).await;
    let pin = certificate_fingerprint(&server.cert_der);
    let err = Client::new(&server.url, Trust::Fingerprint(pin)).expect("client").health().await.expect_err("1.2");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.message().contains("TLS 1.3"), "{err}");
    let err = probe_fingerprint(&server.url).await.expect_err("probe over 1.2");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_network_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let err = Client::new(&url, Trust::Fingerprint([0; 32])).expect("client").health().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    assert!(err.is_retryable());
    assert!(err.message().contains(&url) && err.message().contains("server is running"), "{err}");
    let err = probe_fingerprint(&url).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
}
