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
use subtle::ConstantTimeEq;
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
    /// The account signed in to (its e-mail address or user name), for the user to check that it is theirs;
    /// `None` when the service would not say.
    pub account: Option<String>,
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
async fn token_call(
    client: &reqwest::Client,
    url: &str,
    body: Zeroizing<String>,
    who: &str,
) -> Result<TokenResponse, Error> {
    let resp = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .map_err(|e| Error::Invalid(format!("cannot reach {who}'s sign-in service at {url}: {}", short(e))))?;
    let status = resp.status();
    let bytes = capped(resp, who).await?;
    let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
        Error::Invalid(format!("{who}'s sign-in service answered {status} with something that is not a token"))
    })?;
    Ok(parsed)
}

/// Reads an answer of the sign-in service, refusing one larger than a token answer can be.
async fn capped(mut resp: reqwest::Response, who: &str) -> Result<Vec<u8>, Error> {
    let too_large = || Error::Invalid(format!("{who}'s sign-in service sent an answer too large to be a token"));
    if resp.content_length().is_some_and(|n| n > MAX_TOKEN_RESPONSE as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| Error::Invalid(format!("{who}'s sign-in service: {}", short(e))))?
    {
        if out.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Text from a remote, fit for a terminal: control characters (escape sequences) dropped, length capped.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(1000).collect()
}

/// A reqwest error and its causes, without the URL.
pub(crate) fn short(e: reqwest::Error) -> String {
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
    Error::Invalid(printable(&format!("{who} refused the sign-in: {what}{why}")))
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
        token_call(&client, &conn.token_url()?, Zeroizing::new(form(&fields)), p.name).await?
    } else {
        let secret = client_secret.unwrap_or_default();
        let fields = [("client_id", client_id.as_str()), ("client_secret", secret), ("code", answer.code.as_str())];
        // pCloud keeps an account in one region and names its API host in the redirect: the code is swapped
        // there (unless --endpoint says where).
        let url = match answer.hostname.as_deref().filter(|h| known_pcloud_host(h)) {
            Some(host) if conn.endpoint.is_none() => format!("https://{host}{}", p.token.1),
            _ => conn.token_url()?,
        };
        token_call(&client, &url, Zeroizing::new(form(&fields)), p.name).await?
    };
    let secret = if p.pkce { token.refresh_token.clone() } else { token.access_token.clone() };
    match secret {
        Some(s) if token.result.unwrap_or(0) == 0 && !s.is_empty() => {
            let api_host = answer.hostname.filter(|h| known_pcloud_host(h));
            let api = match &api_host {
                Some(host) if conn.endpoint.is_none() => format!("https://{host}"),
                _ => conn.api_base()?,
            };
            let access = Zeroizing::new(token.access_token.clone().unwrap_or_default());
            let account = account(&client, conn.kind, &api, &access).await;
            Ok(Grant { secret: Zeroizing::new(s), api_host, account })
        }
        _ => Err(refused(p.name, &token)),
    }
}

/// Which account a fresh access token belongs to (Dropbox `users/get_current_account`, Graph `/me`, pCloud
/// `userinfo`), so that a sign-in completed by someone else's consent is noticed.
async fn account(client: &reqwest::Client, kind: Kind, api: &str, access: &str) -> Option<String> {
    if access.is_empty() {
        return None;
    }
    let req = match kind {
        Kind::Dropbox => client
            .post(format!("{api}/2/users/get_current_account"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body("null"),
        Kind::Onedrive => client.get(format!("{api}/v1.0/me?$select=userPrincipalName,mail")),
        Kind::Pcloud => client.get(format!("{api}/userinfo")),
        _ => return None,
    };
    let resp = req.bearer_auth(access).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&capped(resp, "the service").await.ok()?).ok()?;
    let found = match kind {
        Kind::Onedrive => body.get("userPrincipalName").or_else(|| body.get("mail")),
        _ => body.get("email"),
    };
    found.and_then(serde_json::Value::as_str).map(|a| printable(a).chars().take(320).collect())
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
        // The request line and headers; a browser sends them at once. One deadline for the whole request, so
        // a local process that trickles bytes cannot hold the address.
        let deadline = Instant::now() + Duration::from_secs(3);
        while len < buf.len() {
            let n = match tokio::time::timeout_at(deadline, sock.read(&mut buf[len..])).await {
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
        let state_ok = get("state").is_some_and(|s| bool::from(s.as_bytes().ct_eq(state.as_bytes())));
        if !state_ok {
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
    let bytes = capped(resp, p.name).await?;
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
    prompt.device(&printable(&device.message.clone().unwrap_or_else(|| {
        format!("To sign in, open {} and enter the code {}", device.verification_uri, device.user_code)
    })));
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
        let t = token_call(&client, &token_url, Zeroizing::new(form(&fields)), p.name).await?;
        match (t.error.as_deref(), &t.refresh_token) {
            (None, Some(refresh)) if !refresh.is_empty() => {
                let access = Zeroizing::new(t.access_token.clone().unwrap_or_default());
                let account = account(&client, conn.kind, &conn.api_base()?, &access).await;
                return Ok(Grant { secret: Zeroizing::new(refresh.clone()), api_host: None, account });
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
    /// The API bases requests are signed for (the connection's, and the service's own ones not sent there).
    api: Vec<String>,
    client: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: Option<&'static str>,
    tokens: tokio::sync::Mutex<Tokens>,
    rotated: Option<SecretSink>,
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
    pub(crate) fn new(inner: T, conn: &Connection, secret: &str, rotated: Option<SecretSink>) -> Result<Self, Error> {
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
            api: std::iter::once(api.clone()).chain(p.api_origins.iter().map(|o| (*o).to_owned())).collect(),
            client: conn.http_client()?,
            token_url: conn.token_url()?,
            client_id: conn.client_id()?.to_owned(),
            scope: p.scope,
            tokens: tokio::sync::Mutex::new(Tokens { secret: Zeroizing::new(secret.to_owned()), access: None }),
            rotated,
        })
    }

    /// A valid access token: the one held, or a new one from the refresh token. `failed`: a token the service
    /// refused (401), replaced unless another request has replaced it already.
    async fn access_token(&self, failed: Option<&str>) -> opendal::Result<Zeroizing<String>> {
        let mut tokens = self.tokens.lock().await;
        if self.kind == Kind::Pcloud {
            return Ok(tokens.secret.clone());
        }
        if let Some((token, until)) = &tokens.access
            && Instant::now() < *until
            && failed.is_none_or(|f| f != token.as_str())
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
        let t = token_call(&self.client, &self.token_url, Zeroizing::new(form(&fields)), who)
            .await
            .map_err(|e| opendal::Error::new(opendal::ErrorKind::Unexpected, e.to_string()).set_temporary())?;
        let Some(access) = t.access_token.clone().filter(|a| !a.is_empty() && t.error.is_none()) else {
            if matches!(t.error.as_deref(), Some("invalid_grant" | "invalid_client" | "unauthorized_client")) {
                return Err(opendal::Error::new(
                    opendal::ErrorKind::PermissionDenied,
                    format!(
                        "{}; the saved sign-in was revoked or has expired: sign in again by running the same \
                         `cloudsync connection add NAME --type {} ...` with --replace",
                        refused(who, &t),
                        self.kind
                    ),
                ));
            }
            return Err(
                opendal::Error::new(opendal::ErrorKind::Unexpected, refused(who, &t).to_string()).set_temporary()
            );
        };
        // A day at most: a token claimed to live longer is renewed anyway (and the sum cannot overflow).
        let life = Duration::from_secs(t.expires_in.unwrap_or(3600).min(86_400));
        let until = Instant::now() + life.saturating_sub(EARLY.min(life / 4));
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

/// Dropbox: the JSON of a `Dropbox-API-Arg` header must be ASCII, with other characters escaped as `\uXXXX`;
/// OpenDAL sends them raw (a name like "Ünï" would be garbled or refused).
fn ascii_api_arg(req: &mut http::Request<Buffer>) {
    let Some(arg) = req.headers().get("Dropbox-API-Arg").and_then(|v| std::str::from_utf8(v.as_bytes()).ok()) else {
        return;
    };
    if arg.is_ascii() {
        return;
    }
    let mut out = String::with_capacity(arg.len() + 16);
    for c in arg.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(&out) {
        req.headers_mut().insert("Dropbox-API-Arg", v);
    }
}

/// Largest pCloud API answer read to look for a refused sign-in (its answers are small JSON documents).
const MAX_PCLOUD_ANSWER: usize = 16 << 20;

/// pCloud answers a refused token with HTTP 200 and `result` 1000, 2000 or 2094, which OpenDAL would show as an
/// unexplained error: such an answer becomes one that says to sign in again.
async fn refused_pcloud_login(resp: http::Response<HttpBody>) -> opendal::Result<http::Response<HttpBody>> {
    // Only API calls are signed (never download links), and their answers are JSON.
    if resp.status() != http::StatusCode::OK {
        return Ok(resp);
    }
    let (parts, answer) = read_whole(resp, MAX_PCLOUD_ANSWER, "a pCloud answer").await?;
    #[derive(Deserialize)]
    struct Result {
        result: Option<u64>,
        error: Option<String>,
    }
    if let Ok(Result { result: Some(code @ (1000 | 2000 | 2094)), error }) = serde_json::from_slice(&answer) {
        return Err(opendal::Error::new(
            opendal::ErrorKind::PermissionDenied,
            printable(&format!(
                "pCloud refused the saved sign-in (result {code}: {}); sign in again by running the same \
                 `cloudsync connection add NAME --type pcloud ...` with --replace",
                error.unwrap_or_default()
            )),
        ));
    }
    Ok(with_body(parts, answer))
}

/// Reads a small answer whole (at most `max` bytes, `what` naming it in the error), to look into it.
async fn read_whole(
    resp: http::Response<HttpBody>,
    max: usize,
    what: &str,
) -> opendal::Result<(http::response::Parts, bytes::Bytes)> {
    let too_large = || opendal::Error::new(opendal::ErrorKind::Unexpected, format!("{what} was too large"));
    let (parts, mut body) = resp.into_parts();
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let bytes = body.to_buffer().await?.to_bytes();
    if bytes.len() > max {
        return Err(too_large());
    }
    Ok((parts, bytes))
}

/// An answer with `bytes` as its body (read by [`read_whole`], perhaps changed).
fn with_body(mut parts: http::response::Parts, bytes: bytes::Bytes) -> http::Response<HttpBody> {
    let len = bytes.len() as u64;
    parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    let stream = futures_util::stream::iter([Ok(Buffer::from(bytes))]);
    http::Response::from_parts(parts, HttpBody::new(stream, Some(len)))
}

fn add_query(req: &mut http::Request<Buffer>, param: &str) {
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    if let Ok(u) = format!("{uri}{sep}{param}").parse() {
        *req.uri_mut() = u;
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

impl<T: HttpTransport> HttpTransport for AuthTransport<T> {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let listing =
            self.kind == Kind::Onedrive && req.method() == http::Method::GET && req.uri().path().ends_with("/children");
        // (Upload sessions are onedrive.rs's, which takes both 200 and 201 as a session's end.)
        let resp = self.signed(req).await?;
        if listing && resp.status() == http::StatusCode::OK { decoded_parents(resp).await } else { Ok(resp) }
    }
}

impl<T: HttpTransport> AuthTransport<T> {
    /// Sends one request with the access token in place of the placeholder.
    async fn signed(&self, mut req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        self.rewrite(&mut req);
        let url = req.uri().to_string();
        let signed = if !self.api.iter().any(|a| url.starts_with(&format!("{a}/"))) {
            false // never a token to another host
        } else if self.kind == Kind::Pcloud {
            // Uploads that break off leave nothing behind (pCloud would keep the part under the final name).
            if req.uri().path().ends_with("/uploadfile") {
                add_query(&mut req, "nopartial=1");
            }
            strip_pcloud_login(&mut req)
        } else {
            if self.kind == Kind::Dropbox {
                ascii_api_arg(&mut req);
            }
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
        let token = self.access_token(None).await?;
        req.headers_mut().insert(http::header::AUTHORIZATION, bearer(&token)?);
        let resp = self.inner.fetch(req.clone()).await?;
        if self.kind == Kind::Pcloud {
            return refused_pcloud_login(resp).await;
        }
        if resp.status() != http::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        // Revoked or expired early: one new token, one more try.
        drop(resp);
        let token = self.access_token(Some(&token)).await?;
        req.headers_mut().insert(http::header::AUTHORIZATION, bearer(&token)?);
        self.inner.fetch(req).await
    }
}

/// Largest page of a OneDrive folder listing read (Graph sends at most a few hundred items a page).
const MAX_LISTING_PAGE: usize = 16 << 20;

/// OneDrive: Graph sends an item's `parentReference.path` percent-encoded (`/drive/root:/My%20Files`), and
/// OpenDAL's OneDrive lister builds entry paths from it as it is, so a folder with a space or a non-ASCII letter
/// in its name (or in the connection's root) would give wrong paths. The page is decoded here before OpenDAL
/// reads it.
async fn decoded_parents(resp: http::Response<HttpBody>) -> opendal::Result<http::Response<HttpBody>> {
    let (parts, page) = read_whole(resp, MAX_LISTING_PAGE, "a page of a OneDrive folder listing").await?;
    let bad =
        |why: &str| opendal::Error::new(opendal::ErrorKind::Unexpected, format!("a OneDrive folder listing {why}"));
    let mut json: serde_json::Value = serde_json::from_slice(&page).map_err(|_| bad("is not JSON"))?;
    if let Some(items) = json.get_mut("value").and_then(serde_json::Value::as_array_mut) {
        for item in items {
            if let Some(serde_json::Value::String(path)) = item.pointer_mut("/parentReference/path") {
                *path = percent_decode(path);
            }
        }
    }
    let bytes = bytes::Bytes::from(serde_json::to_vec(&json).map_err(|_| bad("cannot be written again"))?);
    Ok(with_body(parts, bytes))
}

/// Decodes `%XX` escapes; a string whose escapes do not make UTF-8 is kept as it was.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn browse(port: u16, request: &[u8]) -> String {
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        sock.write_all(request).await.expect("send");
        let mut answer = String::new();
        let _ = sock.read_to_string(&mut answer).await;
        answer
    }

    #[tokio::test]
    async fn the_redirect_listener_takes_only_its_own_sign_in() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let waiting = tokio::spawn(async move { redirected(&listener, "the-state").await.map(|r| r.code) });
        // A client that sends half a request and stalls holds the address for a few seconds at most.
        let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        stalled.write_all(b"GET /?code=x").await.expect("send");
        let started = Instant::now();
        let wrong_path = browse(port, b"GET /favicon.ico HTTP/1.1\r\n\r\n").await;
        assert!(started.elapsed() < Duration::from_secs(10), "the stalled client let go");
        assert!(wrong_path.starts_with("HTTP/1.1 404"), "{wrong_path}");
        let forged = browse(port, b"GET /?code=evil&state=other HTTP/1.1\r\n\r\n").await;
        assert!(forged.starts_with("HTTP/1.1 400"), "another sign-in's answer is refused: {forged}");
        let real = browse(port, b"GET /?code=good&state=the-state HTTP/1.1\r\n\r\n").await;
        assert!(real.starts_with("HTTP/1.1 200") && real.contains("Signed in"), "{real}");
        assert_eq!(waiting.await.expect("join").expect("code"), "good");
    }

    #[test]
    fn dropbox_api_args_are_ascii() {
        let mut req = http::Request::post("https://content.dropboxapi.com/2/files/upload")
            .header("Dropbox-API-Arg", http::HeaderValue::from_bytes("{\"path\":\"/ü 😀\"}".as_bytes()).expect("v"))
            .body(Buffer::new())
            .expect("request");
        ascii_api_arg(&mut req);
        let arg = req.headers()["Dropbox-API-Arg"].to_str().expect("ascii");
        assert_eq!(arg, r#"{"path":"/\u00fc \ud83d\ude00"}"#);
        let back: serde_json::Value = serde_json::from_str(arg).expect("json");
        assert_eq!(back["path"], "/ü 😀");
    }

    #[test]
    fn graph_parent_paths_are_decoded() {
        assert_eq!(percent_decode("/drive/root:/My%20Files/%C3%BC%25x"), "/drive/root:/My Files/ü%x");
        assert_eq!(percent_decode("/a%2"), "/a%2", "a cut escape is kept");
        assert_eq!(percent_decode("/%FF"), "/%FF", "escapes that are not UTF-8 are kept");
    }

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
