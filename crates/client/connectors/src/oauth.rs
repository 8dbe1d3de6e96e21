//! OAuth 2.0 for Dropbox, OneDrive (Microsoft Graph) and pCloud: signing in (authorization code with PKCE
//! through a loopback redirect, or Microsoft's device code), and the HTTP transport that carries a
//! connection's token on every request OpenDAL sends.
//!
//! OpenDAL's services are given a placeholder token; [`AuthTransport`] puts the real access token in its
//! place, refreshes it before it expires (and once more when the service answers 401), and saves a rotated
//! refresh token through the caller's callback. One sign-in code for the three services means: no client
//! secret sent by a public client (Microsoft refuses one, even empty), no pCloud password in a URL (the
//! OpenDAL pCloud service would put one there), and refresh tokens that Microsoft rotates are kept.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use opendal::{Buffer, HttpBody, HttpTransport};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::spec::{Connection, Kind};

/// The token OpenDAL's services are built with; the transport replaces it.
pub(crate) const PLACEHOLDER: &str = "cloudsync-oauth-placeholder";
/// The loopback port the sign-in listens on by default (register `http://127.0.0.1:53682/` as the app's
/// redirect URI).
pub const DEFAULT_PORT: u16 = 53682;
/// How long the sign-in waits for the browser.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);
/// An access token is refreshed this long before it expires.
const EARLY: Duration = Duration::from_secs(120);
/// Largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Called with a new refresh token when the provider rotates it, so the caller can keep it.
pub type SecretSink = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Api,
    Auth,
}

/// What differs between the providers.
#[derive(Debug)]
struct Provider {
    name: &'static str,
    /// The service's own origins, sent to the connection's endpoint instead when it has one.
    api_origins: &'static [&'static str],
    default_api: &'static str,
    /// Where a user signs in (a browser page) and Microsoft's token endpoint live.
    default_auth: &'static str,
    authorize_path: &'static str,
    token: (Base, &'static str),
    device_path: Option<&'static str>,
    scope: Option<&'static str>,
    /// Public client with PKCE (no client secret); pCloud needs its client secret to swap the code.
    pkce: bool,
    extra: &'static [(&'static str, &'static str)],
    /// Where to register an app and its redirect URI.
    register: &'static str,
}

const DROPBOX: Provider = Provider {
    name: "Dropbox",
    api_origins: &["https://api.dropboxapi.com", "https://content.dropboxapi.com"],
    default_api: "https://api.dropboxapi.com",
    default_auth: "https://www.dropbox.com",
    authorize_path: "/oauth2/authorize",
    token: (Base::Api, "/oauth2/token"),
    device_path: None,
    scope: None,
    pkce: true,
    extra: &[("token_access_type", "offline")],
    register: "https://www.dropbox.com/developers/apps",
};

const ONEDRIVE: Provider = Provider {
    name: "Microsoft",
    api_origins: &["https://graph.microsoft.com"],
    default_api: "https://graph.microsoft.com",
    default_auth: "https://login.microsoftonline.com",
    authorize_path: "/common/oauth2/v2.0/authorize",
    token: (Base::Auth, "/common/oauth2/v2.0/token"),
    device_path: Some("/common/oauth2/v2.0/devicecode"),
    scope: Some("Files.ReadWrite offline_access"),
    pkce: true,
    extra: &[],
    register: "https://entra.microsoft.com (App registrations, a public client)",
};

const PCLOUD: Provider = Provider {
    name: "pCloud",
    api_origins: &[],
    default_api: "https://api.pcloud.com",
    default_auth: "https://my.pcloud.com",
    authorize_path: "/oauth2/authorize",
    token: (Base::Api, "/oauth2_token"),
    device_path: None,
    scope: None,
    pkce: false,
    extra: &[],
    register: "https://docs.pcloud.com (My applications)",
};

fn provider(kind: Kind) -> Result<&'static Provider, Error> {
    match kind {
        Kind::Dropbox => Ok(&DROPBOX),
        Kind::Onedrive => Ok(&ONEDRIVE),
        Kind::Pcloud => Ok(&PCLOUD),
        other => Err(Error::Invalid(format!("{other} connections do not sign in with OAuth"))),
    }
}

/// Whether `kind` signs in with OAuth.
pub fn is_oauth(kind: Kind) -> bool {
    provider(kind).is_ok()
}

/// Where to register an app for `kind`, for error messages and help.
pub fn register_hint(kind: Kind) -> &'static str {
    provider(kind).map_or("", |p| p.register)
}

fn trim(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

impl Connection {
    /// The API base URL: the connection's endpoint, else the provider's.
    pub(crate) fn api_base(&self) -> Result<String, Error> {
        let p = provider(self.kind)?;
        Ok(trim(self.endpoint.as_deref().unwrap_or(p.default_api)))
    }

    fn auth_base(&self) -> Result<String, Error> {
        let p = provider(self.kind)?;
        Ok(trim(self.auth_endpoint.as_deref().unwrap_or(p.default_auth)))
    }

    fn token_url(&self) -> Result<String, Error> {
        let p = provider(self.kind)?;
        let base = if p.token.0 == Base::Api { self.api_base()? } else { self.auth_base()? };
        Ok(format!("{base}{}", p.token.1))
    }

    fn client_id(&self) -> Result<&str, Error> {
        self.client_id.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
            Error::Invalid(format!(
                "a {} connection needs --client-id: the id of an app you registered at {}",
                self.kind,
                register_hint(self.kind)
            ))
        })
    }
}

/// A finished sign-in.
#[derive(Debug)]
pub struct Grant {
    /// What to keep in the credential store: the refresh token (Dropbox, OneDrive) or pCloud's access token,
    /// which does not expire.
    pub secret: Zeroizing<String>,
    /// pCloud: the API host of the account's region (`api.pcloud.com` or `eapi.pcloud.com`).
    pub api_host: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
    /// pCloud: 0 on success.
    result: Option<u64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse").field("error", &self.error).finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()))
}

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("strings encode")
}

/// Posts a form to a token endpoint and reads the answer, turning a refusal into a clear error.
async fn token_call(client: &reqwest::Client, url: &str, body: String, who: &str) -> Result<TokenResponse, Error> {
    let resp = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Error::Invalid(format!("cannot reach {who}'s sign-in service at {url}: {}", short(e))))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| Error::Invalid(format!("{who}'s sign-in service: {}", short(e))))?;
    if bytes.len() > MAX_TOKEN_RESPONSE {
        return Err(Error::Invalid(format!("{who}'s sign-in service sent an answer too large to be a token")));
    }
    let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
        Error::Invalid(format!("{who}'s sign-in service answered {status} with something that is not a token"))
    })?;
    Ok(parsed)
}

/// A reqwest error and its causes, without the URL.
fn short(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

fn refused(who: &str, t: &TokenResponse) -> Error {
    let what = t.error.as_deref().unwrap_or("no token in the answer");
    let why =
        t.error_description.as_deref().map(|d| format!(" ({})", d.lines().next().unwrap_or(d))).unwrap_or_default();
    Error::Invalid(format!("{who} refused the sign-in: {what}{why}"))
}

/// How the sign-in reaches the user: the address to open, shown and handed to a browser.
pub trait Prompt {
    /// Shows the address to open (and opens a browser where it can).
    fn open(&self, url: &str);
    /// Shows a device-code instruction.
    fn device(&self, message: &str);
}

/// Signs in through the browser: listens on `127.0.0.1:port` (0: any free port), sends the user to the
/// provider's consent page, and swaps the code that comes back for tokens. `client_secret` is needed by pCloud
/// only.
///
/// # Errors
/// The port is taken, the user refused, the browser never came back, or the provider refused the code.
pub async fn sign_in(
    conn: &Connection,
    port: u16,
    client_secret: Option<&str>,
    prompt: &dyn Prompt,
) -> Result<Grant, Error> {
    let p = provider(conn.kind)?;
    let client_id = conn.client_id()?.to_owned();
    if !p.pkce && client_secret.is_none_or(str::is_empty) {
        return Err(Error::Invalid(format!(
            "signing in to {} needs the app's client secret as well (--client-secret-stdin)",
            p.name
        )));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        Error::Invalid(format!(
            "cannot listen on 127.0.0.1:{port} for the sign-in redirect ({e}); pick a free port with --oauth-port \
             (and register http://127.0.0.1:PORT/ with the app), or sign in with --device-code where offered"
        ))
    })?;
    let port = listener.local_addr().map_err(|e| Error::io("reading the sign-in port", e))?.port();
    let redirect = format!("http://127.0.0.1:{port}/");
    let state = random_token();
    let verifier = Zeroizing::new(random_token());
    let mut query: Vec<(&str, String)> = vec![
        ("client_id", client_id.clone()),
        ("response_type", "code".into()),
        ("redirect_uri", redirect.clone()),
        ("state", state.clone()),
    ];
    if let Some(scope) = p.scope {
        query.push(("scope", scope.into()));
    }
    if p.pkce {
        query.push(("code_challenge", challenge(&verifier)));
        query.push(("code_challenge_method", "S256".into()));
    }
    query.extend(p.extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let url = format!(
        "{}{}?{}",
        conn.auth_base()?,
        p.authorize_path,
        serde_urlencoded::to_string(&query).expect("strings encode")
    );
    prompt.open(&url);
    let answer = tokio::time::timeout(SIGN_IN_TIMEOUT, redirected(&listener, &state)).await.map_err(|_| {
        Error::Invalid(format!(
            "the browser did not come back within {} minutes; run the command again",
            SIGN_IN_TIMEOUT.as_secs() / 60
        ))
    })??;
    let client = conn.http_client()?;
    let token = if p.pkce {
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("code", answer.code.as_str()),
            ("code_verifier", verifier.as_str()),
            ("client_id", client_id.as_str()),
            ("redirect_uri", redirect.as_str()),
        ];
        if let Some(scope) = p.scope {
            fields.push(("scope", scope));
        }
        token_call(&client, &conn.token_url()?, form(&fields), p.name).await?
    } else {
        let secret = client_secret.unwrap_or_default();
        let fields = [("client_id", client_id.as_str()), ("client_secret", secret), ("code", answer.code.as_str())];
        token_call(&client, &conn.token_url()?, form(&fields), p.name).await?
    };
    let secret = if p.pkce { token.refresh_token.clone() } else { token.access_token.clone() };
    match secret {
        Some(s) if token.result.unwrap_or(0) == 0 && !s.is_empty() => {
            Ok(Grant { secret: Zeroizing::new(s), api_host: answer.hostname.filter(|h| known_pcloud_host(h)) })
        }
        _ => Err(refused(p.name, &token)),
    }
}

fn known_pcloud_host(host: &str) -> bool {
    matches!(host, "api.pcloud.com" | "eapi.pcloud.com")
}

struct Redirect {
    code: String,
    hostname: Option<String>,
}

/// Waits for the browser's request to the loopback address, answers it, and returns the code.
async fn redirected(listener: &tokio::net::TcpListener, state: &str) -> Result<Redirect, Error> {
    loop {
        let (mut sock, _) = listener.accept().await.map_err(|e| Error::io("waiting for the browser", e))?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        // The request line and headers; a browser sends them at once.
        while len < buf.len() {
            let n = match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf[len..])).await {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]);
        let target = head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != "/" {
            let _ = reply(&mut sock, "404 Not Found", "Not the sign-in address.").await;
            continue;
        }
        let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("state").as_deref() != Some(state) {
            // Not our sign-in (a stale tab, or a forged request): keep waiting for the real one.
            let _ =
                reply(&mut sock, "400 Bad Request", "This sign-in link is not the one CloudSync is waiting for.").await;
            continue;
        }
        if let Some(error) = get("error") {
            let why = get("error_description").unwrap_or_default();
            let _ = reply(&mut sock, "200 OK", "Sign-in was not completed. You can close this tab.").await;
            return Err(Error::Invalid(format!("the sign-in was not completed: {error} {why}")));
        }
        let Some(code) = get("code") else {
            let _ = reply(&mut sock, "400 Bad Request", "The sign-in answer carried no code.").await;
            continue;
        };
        let _ = reply(&mut sock, "200 OK", "Signed in to CloudSync. You can close this tab.").await;
        return Ok(Redirect { code, hostname: get("hostname") });
    }
}

async fn reply(sock: &mut tokio::net::TcpStream, status: &str, text: &str) -> std::io::Result<()> {
    let body = format!("<!doctype html><meta charset=utf-8><title>CloudSync</title><p>{text}</p>");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: \
         close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

#[derive(Deserialize)]
struct DeviceCode {
    device_code: String,
    user_code: String,
    verification_uri: String,
    interval: Option<u64>,
    expires_in: Option<u64>,
    message: Option<String>,
}

/// Signs in with a device code (Microsoft only): shows a code to enter on another device, then waits.
///
/// # Errors
/// The provider has no device code, refused, or the code expired.
pub async fn sign_in_with_device_code(conn: &Connection, prompt: &dyn Prompt) -> Result<Grant, Error> {
    let p = provider(conn.kind)?;
    let Some(path) = p.device_path else {
        return Err(Error::Invalid(format!(
            "{} does not offer device-code sign-in; sign in through the browser (without --device-code)",
            p.name
        )));
    };
    let client_id = conn.client_id()?;
    let client = conn.http_client()?;
    let url = format!("{}{path}", conn.auth_base()?);
    let scope = p.scope.unwrap_or_default();
    let resp = client
        .post(&url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("client_id", client_id), ("scope", scope)]))
        .send()
        .await
        .map_err(|e| Error::Invalid(format!("cannot reach {}'s sign-in service: {}", p.name, short(e))))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| Error::Invalid(short(e)))?;
    let device: DeviceCode = match serde_json::from_slice(&bytes) {
        Ok(d) if status.is_success() => d,
        _ => {
            let t: Option<TokenResponse> = serde_json::from_slice(&bytes).ok();
            return Err(t.map_or_else(
                || Error::Invalid(format!("{} answered {status} to the device-code request", p.name)),
                |t| refused(p.name, &t),
            ));
        }
    };
    prompt.device(&device.message.clone().unwrap_or_else(|| {
        format!("To sign in, open {} and enter the code {}", device.verification_uri, device.user_code)
    }));
    let mut interval = Duration::from_secs(device.interval.unwrap_or(5).clamp(1, 60));
    let deadline = Instant::now() + Duration::from_secs(device.expires_in.unwrap_or(900).min(3600));
    let token_url = conn.token_url()?;
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() > deadline {
            return Err(Error::Invalid("the device code expired before the sign-in; run the command again".into()));
        }
        let fields = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", client_id),
            ("device_code", device.device_code.as_str()),
        ];
        let t = token_call(&client, &token_url, form(&fields), p.name).await?;
        match (t.error.as_deref(), &t.refresh_token) {
            (None, Some(refresh)) if !refresh.is_empty() => {
                return Ok(Grant { secret: Zeroizing::new(refresh.clone()), api_host: None });
            }
            (Some("authorization_pending"), _) => {}
            (Some("slow_down"), _) => interval += Duration::from_secs(5),
            _ => return Err(refused(p.name, &t)),
        }
    }
}

/// A connection's token, as the transport holds it.
struct Tokens {
    /// The refresh token (or pCloud's access token).
    secret: Zeroizing<String>,
    access: Option<(Zeroizing<String>, Instant)>,
}

/// The HTTP transport of an OAuth connection: sends the service's requests to the connection's endpoint and
/// carries the access token, refreshing it as needed.
pub struct AuthTransport<T> {
    inner: T,
    kind: Kind,
    rewrites: Vec<(&'static str, String)>,
    client: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: Option<&'static str>,
    tokens: tokio::sync::Mutex<Tokens>,
    rotated: Option<SecretSink>,
    /// Send a request again after a 429 (or a 503 to an idempotent one), waiting as told: OpenDAL's services
    /// for these providers take both as final errors. Off when a pace does this (it also slows down).
    resend_pushbacks: bool,
}

impl<T> std::fmt::Debug for AuthTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthTransport").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl<T> AuthTransport<T> {
    /// Wraps `inner` for `conn`, whose saved secret is `secret`.
    ///
    /// # Errors
    /// The connection is not an OAuth one, or its HTTP client cannot be built.
    pub(crate) fn new(
        inner: T,
        conn: &Connection,
        secret: &str,
        rotated: Option<SecretSink>,
        resend_pushbacks: bool,
    ) -> Result<Self, Error> {
        let p = provider(conn.kind)?;
        let api = conn.api_base()?;
        let rewrites = p.api_origins.iter().map(|o| (*o, api.clone())).chain(
            // Microsoft's token endpoint, which OpenDAL would call itself, also goes where the sign-in went.
            (p.token.0 == Base::Auth).then(|| (p.default_auth, conn.auth_base().unwrap_or_default())),
        );
        Ok(Self {
            inner,
            kind: conn.kind,
            rewrites: rewrites.filter(|(from, to)| from != to).collect(),
            client: conn.http_client()?,
            token_url: conn.token_url()?,
            client_id: conn.client_id()?.to_owned(),
            scope: p.scope,
            tokens: tokio::sync::Mutex::new(Tokens { secret: Zeroizing::new(secret.to_owned()), access: None }),
            rotated,
            resend_pushbacks,
        })
    }

    /// A valid access token: the one held, or a new one from the refresh token (`fresh`: a new one in any case).
    async fn access_token(&self, fresh: bool) -> opendal::Result<Zeroizing<String>> {
        let mut tokens = self.tokens.lock().await;
        if self.kind == Kind::Pcloud {
            return Ok(tokens.secret.clone());
        }
        if !fresh
            && let Some((token, until)) = &tokens.access
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut fields = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens.secret.as_str()),
            ("client_id", &self.client_id),
        ];
        if let Some(scope) = self.scope {
            fields.push(("scope", scope));
        }
        let who = provider(self.kind).map_or("the service", |p| p.name);
        let t = token_call(&self.client, &self.token_url, form(&fields), who)
            .await
            .map_err(|e| opendal::Error::new(opendal::ErrorKind::Unexpected, e.to_string()).set_temporary())?;
        let Some(access) = t.access_token.clone().filter(|a| !a.is_empty() && t.error.is_none()) else {
            return Err(opendal::Error::new(
                opendal::ErrorKind::PermissionDenied,
                format!(
                    "{}; the saved sign-in may have been revoked or expired: sign in again with `cloudsync connection \
                     add NAME --type {} --client-id ID --replace`",
                    refused(who, &t),
                    self.kind
                ),
            ));
        };
        let life = Duration::from_secs(t.expires_in.unwrap_or(3600));
        let until = Instant::now() + life.saturating_sub(EARLY).max(Duration::from_secs(life.as_secs().min(30)));
        tokens.access = Some((Zeroizing::new(access.clone()), until));
        if let Some(new) = t.refresh_token.filter(|r| !r.is_empty() && r.as_str() != tokens.secret.as_str()) {
            tokens.secret = Zeroizing::new(new);
            if let Some(save) = &self.rotated {
                save(&tokens.secret);
            }
        }
        Ok(Zeroizing::new(access))
    }

    fn rewrite(&self, req: &mut http::Request<Buffer>) {
        let url = req.uri().to_string();
        for (from, to) in &self.rewrites {
            if let Some(rest) = url.strip_prefix(from)
                && (rest.is_empty() || rest.starts_with('/'))
                && let Ok(uri) = format!("{to}{rest}").parse()
            {
                *req.uri_mut() = uri;
                return;
            }
        }
    }
}

/// pCloud: takes OpenDAL's `username`/`password` parameters (placeholders) out of the query; whether they were
/// there (the request is an API call that needs the token).
fn strip_pcloud_login(req: &mut http::Request<Buffer>) -> bool {
    let Some(query) = req.uri().query() else { return false };
    let kept: Vec<&str> =
        query.split('&').filter(|p| !p.starts_with("username=") && !p.starts_with("password=")).collect();
    if kept.len() == query.split('&').count() {
        return false;
    }
    let uri = req.uri().to_string();
    let base = uri.split_once('?').map_or(uri.as_str(), |(b, _)| b);
    let new = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    if let Ok(u) = new.parse() {
        *req.uri_mut() = u;
    }
    true
}

/// Times a pushed-back request is sent again, and the longest wait between.
const PUSHBACK_RESENDS: u32 = 5;
const MAX_PUSHBACK_WAIT: Duration = Duration::from_secs(60);

impl<T: HttpTransport> HttpTransport for AuthTransport<T> {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let mut resent = 0;
        loop {
            let resp = self.signed(req.clone()).await?;
            let status = resp.status().as_u16();
            let again = status == 429 || (status == 503 && matches!(req.method().as_str(), "GET" | "HEAD" | "PUT"));
            if !self.resend_pushbacks || !again || resent == PUSHBACK_RESENDS {
                return Ok(resp);
            }
            resent += 1;
            let wait = crate::pace::retry_after(resp.headers())
                .unwrap_or(Duration::from_secs(1 << resent.min(5)))
                .min(MAX_PUSHBACK_WAIT);
            drop(resp);
            tokio::time::sleep(wait).await;
        }
    }
}

impl<T: HttpTransport> AuthTransport<T> {
    /// Sends one request with the access token in place of the placeholder.
    async fn signed(&self, mut req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        self.rewrite(&mut req);
        let signed = if self.kind == Kind::Pcloud {
            strip_pcloud_login(&mut req)
        } else {
            req.headers()
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes().ends_with(PLACEHOLDER.as_bytes()))
        };
        if !signed {
            // Pre-authenticated addresses (upload sessions, download links) and anything else go as they are.
            return self.inner.fetch(req).await;
        }
        let bearer = |token: &str| {
            http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| {
                    opendal::Error::new(opendal::ErrorKind::Unexpected, "the access token is not a header value")
                })
        };
        let token = self.access_token(false).await?;
        req.headers_mut().insert(http::header::AUTHORIZATION, bearer(&token)?);
        let resp = self.inner.fetch(req.clone()).await?;
        if resp.status() != http::StatusCode::UNAUTHORIZED || self.kind == Kind::Pcloud {
            return Ok(resp);
        }
        // Revoked or expired early: one new token, one more try.
        drop(resp);
        let token = self.access_token(true).await?;
        req.headers_mut().insert(http::header::AUTHORIZATION, bearer(&token)?);
        self.inner.fetch(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc7636_s256() {
        // The example of RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn pcloud_login_parameters_leave_the_url() {
        let mut req = http::Request::get(format!(
            "https://api.pcloud.com/stat?path=/a%20b&username={PLACEHOLDER}&password={PLACEHOLDER}"
        ))
        .body(Buffer::new())
        .expect("request");
        assert!(strip_pcloud_login(&mut req));
        assert_eq!(req.uri().to_string(), "https://api.pcloud.com/stat?path=/a%20b");
        let mut link = http::Request::get("https://p-def1.pcloud.com/cBZ/file.txt").body(Buffer::new()).expect("req");
        assert!(!strip_pcloud_login(&mut link), "a download link carries no login");
    }
}
