//! The [`Client`] handle and the plumbing every endpoint shares: URL building, the bearer token, sending,
//! and turning answers into typed values or [`Error`]s. Endpoint groups ([`crate::Auth`], [`crate::Files`],
//! ...) are thin borrowed views over a `Client`, so the whole API surface reads `client.files(ws).list(..)`
//! while connection pooling and the token live in one place.

use std::fmt;
use std::sync::Arc;

use cloudsync_types::WorkspaceId;
use cloudsync_types::api::Health;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind};
use crate::mapping;
use crate::tls::{CONNECT_TIMEOUT, Trust};
use crate::{ApiKeys, Audit, Auth, Devices, Files, Members, Users, Workspaces};

/// Largest JSON answer read (a manifest of a very large file is tens of MB).
const MAX_JSON_BYTES: usize = 256 * 1024 * 1024;
/// Largest error body read; anything longer is not a CloudSync error body.
const MAX_ERROR_BYTES: usize = 64 * 1024;
const USER_AGENT: &str = concat!("cloudsync/", env!("CARGO_PKG_VERSION"));

/// The `Authorization` header, built once when the token is set (marked sensitive, so it is never printed),
/// or `Err` when the token is not valid header text.
type AuthHeader = Result<HeaderValue, ()>;

/// A validated base URL: `url` for host/port, `text` without a trailing slash.
pub(crate) struct BaseUrl {
    pub(crate) url: reqwest::Url,
    pub(crate) text: String,
}

/// Validates a server base URL: `https://host[:port][/prefix]`, no credentials, query or fragment. A
/// trailing `/api/v1` is dropped so both forms work.
pub(crate) fn parse_base_url(input: &str) -> Result<BaseUrl, Error> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::BadRequest,
            format!("{input:?} is not a usable server address: {why}; give it like https://cloud.example.org:8443"),
        )
    };
    let url = reqwest::Url::parse(input.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("CloudSync only talks HTTPS, so it must start with https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not contain credentials, '?' or '#'"));
    }
    let text = url.as_str().trim_end_matches('/');
    let text = text.strip_suffix("/api/v1").unwrap_or(text).trim_end_matches('/').to_owned();
    Ok(BaseUrl { url, text })
}

fn http_client(trust: &Trust, local: Option<std::net::IpAddr>) -> Result<reqwest::Client, Error> {
    let config = crate::tls::client_config(trust)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .user_agent(USER_AGENT)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .local_address(local)
        .build()
        .map_err(|e| Error::new(ErrorKind::Tls, format!("could not set up the HTTP client: {e}")).with_source(e))
}

#[derive(Clone)]
struct Inner {
    http: reqwest::Client,
    base: String,
    api: String,
    token: Option<AuthHeader>,
    trust: Trust,
}

/// A typed client for one CloudSync server. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base)
            .field("trust", &self.inner.trust)
            .field("token", &self.inner.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url` (like `https://127.0.0.1:8443`, without `/api/v1`), trusting
    /// its certificate as `trust` says. No connection is made yet.
    ///
    /// # Errors
    /// [`ErrorKind::BadRequest`] for a URL that is not `https://...`; [`ErrorKind::Tls`] when the trust
    /// roots cannot be loaded.
    pub fn new(base_url: &str, trust: Trust) -> Result<Self, Error> {
        let base = parse_base_url(base_url)?;
        let http = http_client(&trust, None)?;
        let api = format!("{}/api/v1", base.text);
        Ok(Self { inner: Arc::new(Inner { http, base: base.text, api, token: None, trust }) })
    }

    /// The same client, making its connections from the local address `addr` (a machine with several
    /// addresses, or a test acting as another client on the loopback network).
    ///
    /// # Errors
    /// [`ErrorKind::Tls`] when the HTTP client cannot be rebuilt.
    pub fn bound_to(self, addr: std::net::IpAddr) -> Result<Self, Error> {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.http = http_client(&inner.trust, Some(addr))?;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The same client, sending `token` as `Authorization: Bearer ...` on every request.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        let token = Zeroizing::new(token.into());
        let header = Zeroizing::new(format!("Bearer {}", token.as_str()));
        inner.token = Some(
            HeaderValue::from_str(&header)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(drop),
        );
        Self { inner: Arc::new(inner) }
    }

    /// The server's base URL, normalised (no trailing `/`, no `/api/v1`).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// `GET /api/v1/health`: checks that the server answers (and that TLS trust works).
    ///
    /// # Errors
    /// Any transport or TLS failure, e.g. [`ErrorKind::CertificateMismatch`] or [`ErrorKind::Network`].
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(self.request(Method::GET, "/health")?).await
    }

    /// Login, logout, who am I.
    pub fn auth(&self) -> Auth<'_> {
        Auth { client: self }
    }

    /// The caller's login sessions (devices).
    pub fn devices(&self) -> Devices<'_> {
        Devices { client: self }
    }

    /// Account administration.
    pub fn users(&self) -> Users<'_> {
        Users { client: self }
    }

    /// Workspaces the caller is a member of.
    pub fn workspaces(&self) -> Workspaces<'_> {
        Workspaces { client: self }
    }

    /// Members of workspace `ws`.
    pub fn members(&self, ws: WorkspaceId) -> Members<'_> {
        Members { client: self, ws }
    }

    /// The caller's API keys.
    pub fn api_keys(&self) -> ApiKeys<'_> {
        ApiKeys { client: self }
    }

    /// The audit log of a workspace or of account events.
    pub fn audit(&self) -> Audit<'_> {
        Audit { client: self }
    }

    /// Files, chunks, versions, trash and changes of workspace `ws`.
    pub fn files(&self, ws: WorkspaceId) -> Files<'_> {
        Files { client: self, ws }
    }

    /// A request to `/api/v1{path}` with the bearer token, if any.
    pub(crate) fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, Error> {
        let rb = self.inner.http.request(method, format!("{}{path}", self.inner.api));
        match &self.inner.token {
            None => Ok(rb),
            Some(Ok(value)) => Ok(rb.header(AUTHORIZATION, value.clone())),
            Some(Err(())) => Err(Error::new(
                ErrorKind::Unauthenticated,
                "the stored token contains invalid characters; log in again",
            )),
        }
    }

    /// Maps a transport failure to an [`Error`].
    pub(crate) fn transport_error(&self, err: reqwest::Error) -> Error {
        let pin = match &self.inner.trust {
            Trust::Fingerprint(fp) => Some(fp),
            _ => None,
        };
        mapping::from_transport(err, &self.inner.base, pin)
    }

    /// Sends a request; any non-2xx answer becomes an [`Error`].
    pub(crate) async fn send(&self, rb: RequestBuilder) -> Result<Response, Error> {
        let mut resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let header = |name| resp.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
        let retry_after = header(RETRY_AFTER);
        let request_id = header(reqwest::header::HeaderName::from_static("x-request-id"));
        // A body that breaks off or is too long is not a CloudSync error body: map by status alone.
        let body = self.read_limited(&mut resp, MAX_ERROR_BYTES).await.unwrap_or_default();
        Err(mapping::from_http(status.as_u16(), &body, retry_after.as_deref(), request_id.as_deref()))
    }

    /// Reads a whole body, refusing more than `limit` bytes.
    pub(crate) async fn read_limited(&self, resp: &mut Response, limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
            if out.len() + chunk.len() > limit {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("the answer of {} is larger than {limit} bytes", self.inner.base),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Sends a request and decodes a JSON answer.
    pub(crate) async fn call<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, Error> {
        let mut resp = self.send(rb).await?;
        let body = self.read_limited(&mut resp, MAX_JSON_BYTES).await?;
        serde_json::from_slice(&body).map_err(|e| {
            let what = format!("{} {}", resp.url().path(), resp.status());
            Error::new(
                ErrorKind::Decode,
                format!(
                    "the server's answer ({what}) could not be read: {e}; the server may run a different \
                     CloudSync version"
                ),
            )
            .with_source(e)
        })
    }

    /// Sends a request whose answer has no body (204).
    pub(crate) async fn call_empty(&self, rb: RequestBuilder) -> Result<(), Error> {
        let mut resp = self.send(rb).await?;
        self.read_limited(&mut resp, MAX_ERROR_BYTES).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_and_checked() {
        for (input, want) in [
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
            ("https://cloud.example.org/", "https://cloud.example.org"),
            ("https://h:1/api/v1/", "https://h:1"),
            ("https://h/sync", "https://h/sync"),
            ("https://[::1]:8443", "https://[::1]:8443"),
        ] {
            assert_eq!(parse_base_url(input).expect(input).text, want);
        }
        for bad in ["http://h", "h:8443", "https://u:p@h", "https://h/?x=1", "file:///etc"] {
            assert_eq!(parse_base_url(bad).err().map(|e| e.kind()), Some(ErrorKind::BadRequest), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let client = Client::new("https://h", Trust::Fingerprint([1; 32])).expect("client").with_token("s3cret");
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert_eq!(client.base_url(), "https://h");
    }
}
