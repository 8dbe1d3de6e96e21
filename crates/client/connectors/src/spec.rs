//! A saved connection: its type and non-secret settings (what the config file holds), checks on them, and the
//! OpenDAL operator built from them with the connection's secret, which the caller fetches from the OS
//! credential store and never stores here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opendal::Operator;
use opendal::layers::{ConcurrentLimitLayer, LoggingLayer, RetryLayer, TimeoutLayer};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::oauth::{AuthTransport, PLACEHOLDER, SecretSink};
use crate::pace::{Pace, PacedTransport};

/// Longest accepted connection name.
pub const MAX_NAME_LEN: usize = 64;

/// The kinds of storage a connection can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Amazon S3 or any S3-compatible store.
    S3,
    /// Cloudflare R2 (S3 with its own endpoint form and region `auto`).
    R2,
    /// SFTP over OpenSSH.
    Sftp,
    /// Plain FTP (needs `--allow-insecure`).
    Ftp,
    /// FTP over explicit TLS.
    Ftps,
    /// WebDAV over HTTPS.
    Webdav,
    /// Synology DSM File Station.
    Synology,
    /// Dropbox.
    Dropbox,
    /// Microsoft OneDrive.
    Onedrive,
    /// pCloud.
    Pcloud,
    /// A workspace of the logged-in CloudSync account.
    Cloudsync,
}

impl Kind {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S3 => "s3",
            Self::R2 => "r2",
            Self::Sftp => "sftp",
            Self::Ftp => "ftp",
            Self::Ftps => "ftps",
            Self::Webdav => "webdav",
            Self::Synology => "synology",
            Self::Dropbox => "dropbox",
            Self::Onedrive => "onedrive",
            Self::Pcloud => "pcloud",
            Self::Cloudsync => "cloudsync",
        }
    }
}

impl Kind {
    /// Every kind, in the order the help lists them.
    pub const ALL: [Self; 11] = [
        Self::S3,
        Self::R2,
        Self::Sftp,
        Self::Ftp,
        Self::Ftps,
        Self::Webdav,
        Self::Synology,
        Self::Dropbox,
        Self::Onedrive,
        Self::Pcloud,
        Self::Cloudsync,
    ];
}

impl std::str::FromStr for Kind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let all: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
            Error::Invalid(format!("{s:?} is not a connection type; use one of {}", all.join(", ")))
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection's non-secret settings, as saved in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The storage kind.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Service URL (S3, WebDAV; R2's is derived from the account id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3/R2 bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Cloudflare account id (R2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// S3/R2 access key id (not a secret on its own; the secret key is in the credential store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Host name (SFTP, FTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port (SFTP, FTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SSH private key file (SFTP); without one, SFTP signs in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The key file is sealed with a passphrase (kept in the credential store).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_passphrase: bool,
    /// Folder on the remote that `NAME:` means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Workspace name (type `cloudsync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// OAuth client id of the app the user registered (Dropbox, OneDrive, pCloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Sign-in service URL, when not the provider's own (Dropbox, OneDrive, pCloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_endpoint: Option<String>,
    /// The account signed in to, as the provider named it (Dropbox, OneDrive, pCloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A one-time 2-step verification code (Synology), used once while the connection is added; never saved.
    #[serde(skip)]
    pub otp_code: Option<String>,
    /// Accept plain FTP or an `http://` endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,
    /// PEM file of a private CA to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Limits applied to every request of an operator.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Files transferred at once (each with up to two requests in flight).
    pub concurrency: usize,
    /// How often a failed request is retried (with exponential back-off and jitter).
    pub retries: usize,
    /// The run's pace (request rate and bandwidth caps, slowing down when pushed back), when it has one. For
    /// HTTP services every request is paced here; bytes and FTP/SFTP operations are paced by the copy.
    pub pace: Option<Pace>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { concurrency: 4, retries: 5, pace: None }
    }
}

/// Checks a connection name: letters, digits, `-`, `_`, `.`; not a single letter (that reads as a Windows
/// drive in `C:path`).
///
/// # Errors
/// [`Error::Invalid`] saying what to change.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || name.starts_with('.') {
        return Err(Error::Invalid(format!(
            "{name:?} is not a valid connection name: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.' (not \
             starting with '.')"
        )));
    }
    if name.len() == 1 {
        return Err(Error::Invalid(format!(
            "{name:?} is too short for a connection name: one letter reads as a Windows drive (C:path); use two or more"
        )));
    }
    Ok(())
}

fn need<'a>(value: Option<&'a str>, flag: &str, kind: Kind) -> Result<&'a str, Error> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(Error::Invalid(format!("a {kind} connection needs {flag}"))),
    }
}

fn insecure(why: &str) -> Error {
    Error::Insecure(format!(
        "{why}: passwords, keys and file contents would cross the network unencrypted, where anyone on the path \
         can read or change them. Use an encrypted endpoint, or pass --allow-insecure if this network is trusted"
    ))
}

impl Connection {
    /// An empty connection of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            endpoint: None,
            region: None,
            bucket: None,
            account_id: None,
            access_key_id: None,
            host: None,
            port: None,
            user: None,
            key_file: None,
            key_passphrase: false,
            otp_code: None,
            root: None,
            workspace: None,
            client_id: None,
            auth_endpoint: None,
            account: None,
            allow_insecure: false,
            ca_cert: None,
        }
    }

    /// Checks that the settings the kind needs are there and that the transport is encrypted (unless
    /// `allow_insecure`).
    ///
    /// # Errors
    /// [`Error::Invalid`], [`Error::Insecure`] or [`Error::Unsupported`] with what to change.
    pub fn validate(&self) -> Result<(), Error> {
        let kind = self.kind;
        match kind {
            Kind::S3 | Kind::R2 => {
                if kind == Kind::R2 {
                    let account = need(self.account_id.as_deref(), "--account-id", kind)?;
                    if !account.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(Error::Invalid(format!(
                            "{account:?} is not a Cloudflare account id (it is a hex string from the R2 dashboard)"
                        )));
                    }
                }
                need(self.bucket.as_deref(), "--bucket", kind)?;
                need(self.access_key_id.as_deref(), "--access-key-id", kind)?;
                if let Some(endpoint) = &self.endpoint {
                    self.check_url(endpoint)?;
                }
            }
            Kind::Webdav => {
                let endpoint = need(self.endpoint.as_deref(), "--endpoint URL", kind)?;
                self.check_url(endpoint)?;
            }
            Kind::Ftp | Kind::Ftps => {
                check_host(need(self.host.as_deref(), "--host", kind)?)?;
                if kind == Kind::Ftp && !self.allow_insecure {
                    return Err(insecure("plain FTP sends the password and every file in the clear"));
                }
            }
            Kind::Sftp => {
                check_host(need(self.host.as_deref(), "--host", kind)?)?;
                need(self.user.as_deref(), "--user", kind)?;
                if self.key_passphrase && self.key_file.is_none() {
                    return Err(Error::Invalid("a key passphrase is set, but no --key-file".into()));
                }
            }
            Kind::Cloudsync => {
                let ws = need(self.workspace.as_deref(), "--workspace NAME", kind)?;
                if ws.contains(':') || ws.len() > 255 {
                    return Err(Error::Invalid(format!("{ws:?} is not a workspace name (no ':', at most 255 bytes)")));
                }
            }
            Kind::Dropbox | Kind::Onedrive | Kind::Pcloud => {
                let id = need(self.client_id.as_deref(), "--client-id (the id of an app you registered", kind)
                    .map_err(|e| Error::Invalid(format!("{e} at {})", crate::oauth::register_hint(kind))))?;
                if id.len() > 256 || !id.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(Error::Invalid(format!("{id:?} is not an OAuth client id")));
                }
                for url in [&self.endpoint, &self.auth_endpoint].into_iter().flatten() {
                    self.check_url(url)?;
                }
                if kind == Kind::Onedrive && self.root.as_deref().is_none_or(|r| r.trim_matches('/').is_empty()) {
                    // OpenDAL's OneDrive service needs the parent of every folder it lists, and the drive's top
                    // has none.
                    return Err(Error::Invalid(
                        "a onedrive connection needs --root FOLDER, a folder of the drive such as /Documents or \
                         /CloudSync: this version cannot list the drive's top level itself"
                            .into(),
                    ));
                }
            }
            Kind::Synology => {
                match (&self.endpoint, &self.host) {
                    (Some(endpoint), _) => self.check_url(endpoint)?,
                    (None, Some(host)) => check_host(host)?,
                    (None, None) => {
                        return Err(Error::Invalid(
                            "a synology connection needs --endpoint https://NAS:5001 (DSM's HTTPS address), or \
                             --host NAS (port 5001 unless --port says otherwise)"
                                .into(),
                        ));
                    }
                }
                need(self.user.as_deref(), "--user (a DSM account allowed File Station)", kind)?;
            }
        }
        if let Some(root) = &self.root
            && (root.contains('\0') || root.split('/').any(|p| p == ".."))
        {
            return Err(Error::Invalid(format!("--root {root:?} must not contain '..' or NUL")));
        }
        Ok(())
    }

    fn check_url(&self, url: &str) -> Result<(), Error> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") {
            if !self.allow_insecure {
                return Err(insecure(&format!("{url} is plain HTTP")));
            }
        } else if !lower.starts_with("https://") {
            return Err(Error::Invalid(format!("{url:?} is not a URL: give one starting with https://")));
        }
        let authority = url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
        if authority.contains('@') {
            return Err(Error::Invalid(
                "the endpoint URL carries a user name or password, which would be saved in the config file; give \
                 the URL without it, the user with --user, and the password when asked (or with --secret-stdin)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What this connection's secret is, if it needs one: WebDAV and FTP without a user are anonymous.
    pub fn secret_name(&self) -> Option<&'static str> {
        match self.kind {
            Kind::S3 | Kind::R2 => Some("secret access key"),
            Kind::Ftp | Kind::Ftps | Kind::Webdav if self.user.is_none() => None,
            Kind::Ftp | Kind::Ftps | Kind::Webdav | Kind::Synology => Some("password"),
            Kind::Dropbox | Kind::Onedrive => Some("OAuth refresh token"),
            Kind::Pcloud => Some("OAuth access token"),
            Kind::Sftp if self.key_file.is_none() => Some("password"),
            Kind::Sftp if self.key_passphrase => Some("key passphrase"),
            Kind::Sftp | Kind::Cloudsync => None,
        }
    }

    /// The settings shown by `connection show` (nothing secret is held here to begin with).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("type", self.kind.to_string())];
        let mut add = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        add("endpoint", self.endpoint_url());
        add("region", self.region.clone());
        add("bucket", self.bucket.clone());
        add("account_id", self.account_id.clone());
        add("access_key_id", self.access_key_id.clone());
        add("host", self.host.clone());
        add("port", self.port.map(|p| p.to_string()));
        add("user", self.user.clone());
        add("key_file", self.key_file.as_ref().map(|p| p.display().to_string()));
        add(
            "sign_in",
            (self.kind == Kind::Sftp).then(|| {
                match (&self.key_file, self.key_passphrase) {
                    (None, _) => "password",
                    (Some(_), true) => "key file sealed with a passphrase",
                    (Some(_), false) => "key file (or ssh-agent)",
                }
                .to_owned()
            }),
        );
        add("root", self.root.clone());
        add("workspace", self.workspace.clone());
        add("client_id", self.client_id.clone());
        add("auth_endpoint", self.auth_endpoint.clone());
        add("account", self.account.clone());
        add("ca_cert", self.ca_cert.as_ref().map(|p| p.display().to_string()));
        if self.allow_insecure {
            out.push(("allow_insecure", "true".into()));
        }
        out
    }

    /// The service URL: the one given, for R2 the account's (`https://ACCOUNT.r2.cloudflarestorage.com`), for
    /// Synology DSM's HTTPS address on the host (`https://HOST:5001`).
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.clone().or_else(|| match self.kind {
            Kind::R2 => self.account_id.as_ref().map(|a| format!("https://{a}.r2.cloudflarestorage.com")),
            Kind::Synology => self.host.as_ref().map(|h| format!("https://{h}:{}", self.port.unwrap_or(5001))),
            _ => None,
        })
    }

    /// The OpenDAL operator for this connection, with retry (exponential back-off with jitter), concurrency,
    /// timeout and logging layers, and for HTTP services the pace of `limits` in the transport.
    ///
    /// # Errors
    /// Invalid settings, a missing secret, an unreadable CA file.
    pub fn operator(&self, secret: Option<&str>, limits: &Limits) -> Result<Operator, Error> {
        self.operator_keeping(secret, limits, None)
    }

    /// [`Connection::operator`], with `rotated` told each new refresh token the provider hands out (Microsoft
    /// rotates them), for the caller to keep instead of the old one.
    ///
    /// # Errors
    /// As [`Connection::operator`].
    pub fn operator_keeping(
        &self,
        secret: Option<&str>,
        limits: &Limits,
        rotated: Option<SecretSink>,
    ) -> Result<Operator, Error> {
        self.validate()?;
        let secret_for = |what: &str| -> Result<String, Error> {
            secret.map(str::to_owned).ok_or_else(|| {
                Error::Invalid(format!("the {what} of this connection is missing; add the connection again"))
            })
        };
        let root = self.root.clone().unwrap_or_else(|| "/".into());
        let http = self.kind.is_http().then(|| self.http_client()).transpose()?;
        let op = match self.kind {
            Kind::S3 | Kind::R2 => {
                let secret = zeroize::Zeroizing::new(secret_for("secret access key")?);
                let mut b = opendal::services::S3::default()
                    .root(&root)
                    .bucket(self.bucket.as_deref().unwrap_or_default())
                    .access_key_id(self.access_key_id.as_deref().unwrap_or_default())
                    .secret_access_key(&secret)
                    .disable_config_load();
                let region = if self.kind == Kind::R2 { "auto" } else { self.region.as_deref().unwrap_or("us-east-1") };
                b = b.region(region);
                let configured = self.endpoint_url();
                if let Some(e) = &configured {
                    b = b.endpoint(e);
                }
                let bucket = self.bucket.as_deref().unwrap_or_default();
                let endpoint = crate::s3resume::endpoint_for(configured.as_deref(), bucket, region);
                // Multipart uploads that a later run takes up where this one stopped (s3resume.rs).
                Operator::new(b)?.layer(crate::s3resume::layer(crate::s3resume::Settings {
                    endpoint,
                    region: region.to_owned(),
                    bucket: self.bucket.clone().unwrap_or_default(),
                    root: root.clone(),
                    access_key_id: self.access_key_id.clone().unwrap_or_default(),
                    secret_access_key: secret,
                }))
            }
            Kind::Webdav => {
                let mut b = opendal::services::Webdav::default()
                    .endpoint(self.endpoint.as_deref().unwrap_or_default())
                    .root(&root);
                let mut user = None;
                if let Some(name) = &self.user {
                    let password = zeroize::Zeroizing::new(secret_for("password")?);
                    b = b.username(name).password(&password);
                    user = Some((name.clone(), password));
                }
                // Uploads stream in one request (webdav.rs) instead of being held whole in memory.
                Operator::new(b)?.layer(crate::webdav::layer(crate::webdav::Settings {
                    endpoint: self.endpoint.clone().unwrap_or_default(),
                    root: root.clone(),
                    user,
                }))
            }
            // FTP through a service of our own (ftp.rs): OpenDAL's loses the end of uploads over TLS.
            Kind::Ftp | Kind::Ftps => crate::ftp::operator(crate::ftp::Settings {
                host: self.host.clone().unwrap_or_default(),
                port: self.port.unwrap_or(21),
                user: self.user.clone().unwrap_or_else(|| "anonymous".into()),
                password: zeroize::Zeroizing::new(match &self.user {
                    Some(_) => secret_for("password")?,
                    None => "anonymous@".into(),
                }),
                tls: (self.kind == Kind::Ftps).then(|| self.tls_config()).transpose()?,
                // Paths start from the folder the server puts the user in, unless a root says otherwise.
                root: self.root.clone().unwrap_or_default(),
            }),
            // A password or a key passphrase cannot be given to OpenSSH in batch mode: those sign in through
            // an SSH client of our own (sftp.rs).
            Kind::Sftp if self.key_file.is_none() || self.key_passphrase => {
                let auth = match &self.key_file {
                    None => crate::sftp::Auth::Password(zeroize::Zeroizing::new(secret_for("password")?)),
                    Some(file) => crate::sftp::Auth::Key {
                        file: file.clone(),
                        passphrase: zeroize::Zeroizing::new(secret_for("key passphrase")?),
                    },
                };
                let known_hosts = crate::sftp::default_known_hosts().ok_or_else(|| {
                    Error::Invalid(
                        "there is no home folder to keep pinned SSH host keys in (~/.ssh/known_hosts); set HOME".into(),
                    )
                })?;
                crate::sftp::operator(crate::sftp::Settings {
                    host: self.host.clone().unwrap_or_default(),
                    port: self.port.unwrap_or(22),
                    user: self.user.clone().unwrap_or_default(),
                    auth,
                    root: root.clone(),
                    known_hosts,
                })
            }
            Kind::Sftp => {
                let host = self.host.as_deref().unwrap_or_default();
                let endpoint =
                    format!("ssh://{}@{host}:{}", self.user.as_deref().unwrap_or_default(), self.port.unwrap_or(22));
                let key = self.key_file.as_deref().map(Path::to_string_lossy).unwrap_or_default();
                // "add" is OpenSSH's accept-new: a host key seen for the first time is pinned in known_hosts,
                // a changed one is refused.
                let b = opendal::services::Sftp::default()
                    .endpoint(&endpoint)
                    .user(self.user.as_deref().unwrap_or_default())
                    .key(&key)
                    .root(&root)
                    .known_hosts_strategy("add");
                Operator::new(b)?
            }
            Kind::Cloudsync => {
                return Err(Error::Invalid(
                    "a cloudsync connection names a workspace of the logged-in account; it is used through copy, \
                     sync and ls, not as storage of its own"
                        .into(),
                ));
            }
            // The real token is put in by the transport (oauth.rs); OpenDAL sees only a placeholder.
            // Files past one piece go in upload sessions (dropbox.rs), not one request held in memory.
            Kind::Dropbox => {
                Operator::new(opendal::services::Dropbox::default().root(&root).access_token(PLACEHOLDER))?
                    .layer(crate::dropbox::layer(&root, self.account.as_deref().unwrap_or_default()))
            }
            // Files over 4 MiB go in upload sessions fed as they are read (onedrive.rs), not from one buffer.
            Kind::Onedrive => {
                Operator::new(opendal::services::Onedrive::default().root(&root).access_token(PLACEHOLDER))?
                    .layer(crate::onedrive::layer(&root))
            }
            // Uploads stream in one request (pcloud.rs) instead of being held whole in memory.
            Kind::Pcloud => Operator::new(
                opendal::services::Pcloud::default()
                    .root(&root)
                    .endpoint(&self.api_base()?)
                    .username(PLACEHOLDER)
                    .password(PLACEHOLDER),
            )?
            .layer(crate::pcloud::layer(&self.api_base()?, &root)),
            // A connection enrolled with 2-step verification keeps the NAS's device token after the password, on a
            // second line of its secret.
            Kind::Synology => {
                let secret = zeroize::Zeroizing::new(secret_for("password")?);
                let (password, device) = secret.split_once('\n').unwrap_or((secret.as_str(), ""));
                crate::synology::operator(crate::synology::Settings {
                    base: self.endpoint_url().unwrap_or_default().trim_end_matches('/').to_owned(),
                    root: root.clone(),
                    user: self.user.clone().unwrap_or_default(),
                    password: zeroize::Zeroizing::new(password.to_owned()),
                    two_step: crate::synology::TwoStep {
                        device: (!device.is_empty()).then(|| zeroize::Zeroizing::new(device.to_owned())),
                        code: self.otp_code.clone().map(zeroize::Zeroizing::new),
                        enrolled: rotated.clone(),
                    },
                })
            }
        };
        let op = match http {
            Some(client) => {
                // Streamed uploads (streamed.rs: WebDAV, pCloud, File Station) go through a client without a read
                // timeout.
                let streams = matches!(self.kind, Kind::Webdav | Kind::Pcloud | Kind::Synology);
                let unhurried = streams.then(|| self.http_client_with(None)).transpose()?;
                let transport = crate::streamed::StreamingTransport::new(client, unhurried);
                let transporter = if crate::oauth::is_oauth(self.kind) {
                    // OpenDAL's OneDrive and pCloud services take a 429 as final: these always go through a pace
                    // (uncapped unless the run has caps), which waits as told, sends again and slows down.
                    let pace = limits.pace.clone().unwrap_or_else(|| Pace::new(crate::Caps::default()));
                    let auth = AuthTransport::new(transport, self, &secret_for("OAuth token")?, rotated)?;
                    opendal::HttpTransporter::new(PacedTransport::new(auth, pace))
                } else {
                    match &limits.pace {
                        Some(pace) => opendal::HttpTransporter::new(PacedTransport::new(transport, pace.clone())),
                        None => opendal::HttpTransporter::new(transport),
                    }
                };
                op.with_context(opendal::OperationContext::new().with_http_transport(transporter))
            }
            None => op,
        };
        // Where an upload goes in one request (WebDAV, pCloud and File Station, streamed; Dropbox's and
        // OneDrive's small files) or in big pieces (S3's parts), a step may take long, so it gets room for a
        // large file or piece on a slow line.
        let one_piece = matches!(
            self.kind,
            Kind::Webdav | Kind::Synology | Kind::Dropbox | Kind::Onedrive | Kind::Pcloud | Kind::S3 | Kind::R2
        );
        let (op_timeout, io_timeout) = match limits.pace {
            Some(_) => (Duration::from_secs(6 * 3600), Duration::from_secs(1800)),
            None if one_piece => (Duration::from_secs(1800), Duration::from_secs(1800)),
            None => (Duration::from_secs(120), Duration::from_secs(60)),
        };
        Ok(op
            // A paced operation may wait long for its slots (at the slowest pace, minutes), and each HTTP request
            // is timed in the transport instead, so paced operations get a far limit here.
            .layer(TimeoutLayer::new().with_timeout(op_timeout).with_io_timeout(io_timeout))
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_max_times(limits.retries)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(30)),
            )
            // Files in flight are capped by the caller (`Limits::concurrency`); each holds a reader and a writer
            // and may stat or rename, so the operation cap leaves room for that and can never deadlock them.
            .layer(ConcurrentLimitLayer::new(limits.concurrency.max(1) * 4))
            .layer(LoggingLayer::default()))
    }

    /// The HTTP client for HTTP-based kinds: certificates verified against the system's roots, or only the
    /// connection's CA when `ca_cert` is set.
    pub(crate) fn http_client(&self) -> Result<reqwest::Client, Error> {
        self.http_client_with(Some(Duration::from_secs(60)))
    }

    /// The HTTP client, with `read_timeout` (none for streamed uploads, whose answer comes only after the
    /// whole body).
    pub(crate) fn http_client_with(&self, read_timeout: Option<Duration>) -> Result<reqwest::Client, Error> {
        let tls = Arc::unwrap_or_clone(self.tls_config()?);
        // The File Station sign-in sends the password in a POST body, which a 307 or 308 redirect would send on
        // (to wherever it points): DSM is not followed anywhere.
        // A streamed body (no read timeout) cannot be sent again to a redirect's target: not followed either.
        let redirects = if self.kind == Kind::Synology || read_timeout.is_none() {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::default()
        };
        let mut builder = reqwest::Client::builder()
            .redirect(redirects)
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(15));
        if let Some(t) = read_timeout {
            builder = builder.read_timeout(t);
        }
        builder.build().map_err(|e| Error::Invalid(format!("could not set up the HTTP client: {e}")))
    }
}

impl Connection {
    /// TLS settings (1.2 or 1.3): certificates verified against the system's roots, or only the connection's CA
    /// when `ca_cert` is set.
    pub(crate) fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.ca_cert {
            Some(path) => cloudsync_sdk::ca_roots(path).map_err(|e| Error::Invalid(e.to_string()))?,
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                roots
            }
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("could not set up TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(tls))
    }
}

impl Kind {
    fn is_http(self) -> bool {
        matches!(
            self,
            Self::S3 | Self::R2 | Self::Webdav | Self::Synology | Self::Dropbox | Self::Onedrive | Self::Pcloud
        )
    }
}

fn check_host(host: &str) -> Result<(), Error> {
    let ok = host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'))
        && !host.starts_with('-');
    if ok { Ok(()) } else { Err(Error::Invalid(format!("{host:?} is not a host name or IP address"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_transports_need_an_explicit_opt_in() {
        let mut ftp = Connection::new(Kind::Ftp);
        ftp.host = Some("127.0.0.1".into());
        let err = ftp.validate().unwrap_err();
        assert!(matches!(err, Error::Insecure(_)), "{err}");
        assert!(err.to_string().contains("--allow-insecure"), "{err}");
        ftp.allow_insecure = true;
        ftp.validate().expect("opted in");

        let mut dav = Connection::new(Kind::Webdav);
        dav.endpoint = Some("http://127.0.0.1:8080/dav".into());
        assert!(matches!(dav.validate(), Err(Error::Insecure(_))));
        dav.endpoint = Some("https://dav.example.com/".into());
        dav.validate().expect("https");
        dav.endpoint = Some("dav.example.com".into());
        assert!(matches!(dav.validate(), Err(Error::Invalid(_))));
        dav.endpoint = Some("https://alice:hunter2@dav.example.com/x".into());
        let err = dav.validate().unwrap_err().to_string();
        assert!(err.contains("--user") && !err.contains("hunter2"), "{err}");
        dav.endpoint = Some("https://dav.example.com/a@b".into());
        dav.validate().expect("an @ in the path is fine");
    }

    #[test]
    fn names_and_required_settings_are_checked() {
        for bad in ["", "a", ".x", "has space", "a/b", "x:y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("nas-1.backup_2").expect("valid");
        let s3 = Connection::new(Kind::S3);
        assert!(s3.validate().unwrap_err().to_string().contains("--bucket"));
        let mut r2 = Connection::new(Kind::R2);
        r2.account_id = Some("abc123".into());
        r2.bucket = Some("b".into());
        r2.access_key_id = Some("k".into());
        r2.validate().expect("r2");
        assert!(r2.settings().contains(&("endpoint", "https://abc123.r2.cloudflarestorage.com".into())));
        let mut sftp = Connection::new(Kind::Sftp);
        sftp.host = Some("-oProxyCommand=x".into());
        sftp.user = Some("u".into());
        sftp.key_file = Some("/k".into());
        assert!(sftp.validate().is_err(), "an option smuggled in as a host");
    }
}
