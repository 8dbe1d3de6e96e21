//! The HTTP face of the server: an axum router over the core services, served over TLS 1.3.
//!
//! Request flow: TLS (rustls, 1.3 only) -> request id + security headers + access log -> extractors that
//! authenticate (`Principal`) and authorise (`WorkspaceAccess<Role>`) before the body is read -> handler ->
//! core service. [`serve`] takes an already bound listener and a shutdown future, so tests run real servers on
//! port 0.

mod error;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use cloudsync_server_core::Core;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use error::{ApiError, REQUEST_ID, request_id};

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The services.
    pub core: Core,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<IpAddr>>,
}

/// The application: API routes plus middleware.
pub fn app(state: AppState) -> Router {
    routes::api()
        .fallback(|| async {
            ApiError::new(cloudsync_types::ErrorCode::NotFound, "no such API route; see /api/v1/openapi.json")
        })
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// Gives each request an id (in the response's `x-request-id` and in every error body), logs it without
/// credentials or query strings, and adds security headers.
async fn request_context(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "-".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    tracing::info!(request_id = %id, %method, %route, status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=63072000"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then lets open requests finish (up to 30 s).
///
/// # Errors
/// Only if accepting connections fails fatally.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(15), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still open after 30 s and were closed");
    }
    Ok(())
}
