//! SFTP over an SSH client in Rust (russh, russh-sftp), as an OpenDAL service of our own, for the sign-ins
//! OpenDAL's SFTP service cannot make: a password, or a key file sealed with a passphrase. (OpenDAL's service
//! runs OpenSSH's `ssh` in batch mode, where nothing can answer a prompt; connections with a plain key file, or
//! one loaded in ssh-agent, still go through it.)
//!
//! - **Host keys** are pinned in OpenSSH's `known_hosts` file (`~/.ssh/known_hosts`), the one the other SFTP
//!   path pins in, in the same format: a host seen for the first time has its key written there; a host whose
//!   key differs from every key pinned for it is refused with the reason. The pinned algorithms are asked for
//!   first, so a server with several host keys shows the pinned one; one offering another kind of key only is
//!   refused (accepting it would let a man in the middle pin a second key of a new kind).
//! - **Sign-in:** the password goes to SSH's `password` method and, where the server asks that way (PAM), to
//!   `keyboard-interactive`; a key file is opened with its passphrase. Neither is logged, and both are wiped
//!   from memory with the connection.
//! - **One SSH connection** serves every request, with two SFTP channels: one for files, read and written with
//!   pipelined requests, and one for names (stat, listings, folders, renames, deletes). A connection that died
//!   is opened again by the next request.
//! - **Renames replace** the destination in one step with OpenSSH's `posix-rename@openssh.com`. A server
//!   without it gets the old file moved aside first and removed after, and put back if the rename fails, so no
//!   step loses a file.
//! - **Listings** read a folder a page at a time and stop at [`crate::transfer::MAX_ENTRIES`], so a hostile
//!   server cannot fill memory.

use std::fmt::{self, Debug};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use opendal::raw::oio;
use opendal::raw::{
    OpCopy, OpCreateDir, OpDelete, OpList, OpPresign, OpRead, OpRename, OpStat, OpWrite, RpCreateDir, RpPresign,
    RpRead, RpRename, RpStat, Service, ServiceInfo, Timestamp,
};
use opendal::{Buffer, BytesRange, Capability, EntryMode, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::fs::File;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{FileAttributes, FileType, OpenFlags, Packet, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

/// The scheme the operator reports: the same as OpenDAL's SFTP service, since both behave alike to a copy.
pub(crate) const SCHEME: &str = "sftp";
/// Longest wait for the TCP connection, the SSH handshake and the sign-in together.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for one SFTP answer.
const REQUEST_LIMIT_SECS: u64 = 60;
/// Size of the pieces a file is read in.
const READ_PIECE: usize = 1 << 20;
/// The OpenSSH extension that renames over an existing file in one step.
const POSIX_RENAME: &str = "posix-rename@openssh.com";

type Result<T> = opendal::Result<T>;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

/// How the connection signs in.
pub(crate) enum Auth {
    /// SSH's password method (and keyboard-interactive, answered with the password).
    Password(Zeroizing<String>),
    /// A private key file, sealed with this passphrase.
    Key { file: PathBuf, passphrase: Zeroizing<String> },
}

/// What the service needs.
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: Auth,
    /// Absolute folder on the server that paths start from.
    pub root: String,
    /// OpenSSH `known_hosts` file the host key is pinned in.
    pub known_hosts: PathBuf,
}

/// The `known_hosts` file OpenSSH reads by default, which this client pins in too.
pub(crate) fn default_known_hosts() -> Option<PathBuf> {
    std::env::home_dir().map(|home| home.join(".ssh").join("known_hosts"))
}

/// Whether a private key file is sealed with a passphrase that this client must ask for: not when ssh-agent
/// holds the key already (OpenSSH signs with it there), nor for a kind of key this client cannot read (left to
/// OpenSSH, as before).
///
/// # Errors
/// An unreadable file.
pub async fn key_needs_passphrase(file: &std::path::Path) -> std::result::Result<bool, String> {
    let text = read_key(file)?;
    match russh::keys::decode_secret_key(&text, None) {
        Err(russh::keys::Error::KeyIsEncrypted) => Ok(!agent_holds(&text).await),
        _ => Ok(false),
    }
}

/// Whether the ssh-agent of this session (`SSH_AUTH_SOCK`) holds the key whose sealed file is `text` (its public
/// half is readable without the passphrase).
async fn agent_holds(text: &str) -> bool {
    let Ok(public) = russh::keys::PrivateKey::from_openssh(text).map(|k| k.public_key().clone()) else {
        return false;
    };
    #[cfg(unix)]
    {
        let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await else { return false };
        let Ok(held) = agent.request_identities().await else { return false };
        held.iter().any(|id| match id {
            russh::keys::agent::AgentIdentity::PublicKey { key, .. } => key.key_data() == public.key_data(),
            _ => false,
        })
    }
    #[cfg(not(unix))]
    {
        let _ = public;
        false
    }
}

/// Opens a sealed private key file with its passphrase, to tell a wrong passphrase when the connection is added.
///
/// # Errors
/// A wrong passphrase, an unreadable file.
pub fn check_passphrase(file: &std::path::Path, passphrase: &str) -> std::result::Result<(), String> {
    open_key(file, passphrase).map(drop)
}

fn read_key(file: &std::path::Path) -> std::result::Result<Zeroizing<String>, String> {
    // A private key is a few KiB; anything far larger is not one.
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read the key file {}: {e}", file.display()))?;
    if meta.len() > 64 << 10 {
        return Err(format!("{} is too large to be an SSH private key", file.display()));
    }
    std::fs::read_to_string(file)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read the key file {}: {e}", file.display()))
}

fn open_key(file: &std::path::Path, passphrase: &str) -> std::result::Result<russh::keys::PrivateKey, String> {
    let text = read_key(file)?;
    // A wrong passphrase shows as a failed decryption or a garbled key: both are told as the passphrase.
    russh::keys::decode_secret_key(&text, Some(passphrase))
        .map_err(|e| format!("the passphrase does not open the key file {} ({e})", file.display()))
}

pub(crate) struct Sftp {
    core: Arc<Core>,
}

struct Core {
    settings: Settings,
    /// The live connection, opened by the first request that needs one.
    conn: Mutex<Option<Arc<Conn>>>,
}

impl Debug for Sftp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No secret here: the sign-in is named, not shown.
        let s = &self.core.settings;
        f.debug_struct("Sftp").field("host", &s.host).field("port", &s.port).field("root", &s.root).finish()
    }
}

/// One SSH connection and its SFTP channels.
struct Conn {
    handle: client::Handle<Checker>,
    files: SftpSession,
    names: RawSftpSession,
    posix_rename: bool,
    /// A channel stopped answering or answered out of turn: the next request opens another connection.
    broken: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.handle.is_closed() && !self.broken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Passes an answer on, marking the connection broken when the error is the connection's, not the file's.
    fn note<T>(&self, answer: std::result::Result<T, SftpError>) -> std::result::Result<T, SftpError> {
        if let Err(e) = &answer
            && !matches!(e, SftpError::Status(_) | SftpError::Limited(_))
        {
            self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        answer
    }
}

/// Why a connection failed: SSH's own error, or a host key that is not the pinned one.
#[derive(Debug)]
enum Failure {
    Ssh(russh::Error),
    HostKey(String),
}

impl From<russh::Error> for Failure {
    fn from(e: russh::Error) -> Self {
        Self::Ssh(e)
    }
}

/// Checks the server's host key against the pins.
struct Checker {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

impl client::Handler for Checker {
    type Error = Failure;

    async fn check_server_key(&mut self, offered: &PublicKeyOrCertificate) -> std::result::Result<bool, Self::Error> {
        let where_ = self.known_hosts.display().to_string();
        let name = host_port(&self.host, self.port);
        // Certificates are not asked for, so a server that shows one anyway is not trusted on that basis.
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            return Err(Failure::HostKey(format!(
                "{name} showed an SSH host certificate, which this client does not check; nothing was sent"
            )));
        };
        let mut pins = Pins::default();
        for file in &known_hosts_files(&self.known_hosts) {
            match std::fs::read_to_string(file) {
                Ok(text) => pins.read(&text, &file.display().to_string(), &name, key),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Failure::HostKey(format!(
                        "cannot read the pinned host keys in {}: {e}",
                        file.display()
                    )));
                }
            }
        }
        if let Some(line) = pins.revoked {
            return Err(Failure::HostKey(format!(
                "the SSH host key of {name} is marked revoked ({line}); nothing was sent"
            )));
        }
        if pins.matched {
            return Ok(true);
        }
        if !pins.other.is_empty() {
            return Err(Failure::HostKey(format!(
                "the SSH host key of {name} is not the one pinned for it ({}): the server was reinstalled, or \
                 someone may intercept the connection. Nothing was sent. If you know why the key changed, remove \
                 the old one with `ssh-keygen -R '{name}'` and try again",
                pins.other.join("; ")
            )));
        }
        // First use: pinned from now on (in a folder of the user's own, as OpenSSH makes it).
        if let Some(dir) = self.known_hosts.parent()
            && !dir.exists()
        {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir).map_err(|e| Failure::HostKey(format!("cannot create {}: {e}", dir.display())))?;
        }
        russh::keys::known_hosts::learn_known_hosts_path(&self.host, self.port, key, &self.known_hosts)
            .map_err(|e| Failure::HostKey(format!("cannot pin the host key in {where_}: {e}")))?;
        Ok(true)
    }
}

/// Host keys every user's OpenSSH trusts as well, read (never written) after the user's own file.
const SYSTEM_KNOWN_HOSTS: &[&str] = &["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// The user's `known_hosts` file, then the system's.
fn known_hosts_files(user: &std::path::Path) -> Vec<PathBuf> {
    std::iter::once(user.to_path_buf()).chain(SYSTEM_KNOWN_HOSTS.iter().map(PathBuf::from)).collect()
}

/// A host key algorithm's kind: its name, but one for all RSA signature hashes.
fn kind_of(a: &russh::keys::Algorithm) -> String {
    if a.clone().is_rsa() { "ssh-rsa".into() } else { a.as_str().to_owned() }
}

/// The kinds of key pinned for `name` (unmarked lines only).
fn pinned_kinds(files: &[PathBuf], name: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(patterns), Some(kind)) = (fields.next(), fields.next()) else { continue };
            if patterns.starts_with(['#', '@']) || !hosts_match(patterns, name) {
                continue;
            }
            if let Ok(a) = kind.parse::<russh::keys::Algorithm>() {
                kinds.push(kind_of(&a));
            }
        }
    }
    kinds
}

/// What the `known_hosts` lines naming one host say of the key it showed.
#[derive(Default)]
struct Pins {
    /// A line pins this very key.
    matched: bool,
    /// A `@revoked` line names this key: where.
    revoked: Option<String>,
    /// Lines that name the host with another key, a key this client cannot read, or a certificate authority
    /// (whose certificates are not checked here): where. Any of them means the shown key is not trusted on
    /// first use.
    other: Vec<String>,
}

impl Pins {
    /// Reads one file the way OpenSSH does: `[@marker] patterns keytype base64 [comment]`, fields separated by
    /// any white space; patterns a comma list of names (`*` and `?` wildcards, `!` negation) or hashed names
    /// (`|1|salt|hmac`); `name` is `host` or `[host]:port`, lower case.
    fn read(&mut self, text: &str, file: &str, name: &str, shown: &PublicKey) {
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(mut first) = fields.next() else { continue };
            if first.starts_with('#') {
                continue;
            }
            let marker = first.starts_with('@').then_some(first);
            if marker.is_some() {
                match fields.next() {
                    Some(f) => first = f,
                    None => continue,
                }
            }
            if !hosts_match(first, name) {
                continue;
            }
            let at = format!("{file}, line {}", n + 1);
            let key = fields.next().and(fields.next()).and_then(|b64| russh::keys::parse_public_key_base64(b64).ok());
            match (marker, key) {
                (Some("@revoked"), Some(k)) if k.key_data() == shown.key_data() => self.revoked = Some(at),
                (Some("@revoked"), _) => {}
                (None, Some(k)) if k.key_data() == shown.key_data() => self.matched = true,
                _ => self.other.push(at),
            }
        }
    }
}

/// Whether a `known_hosts` pattern list names `name`: some pattern matches and no negated one does.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut hit = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(&negated.to_ascii_lowercase(), name) {
                return false;
            }
        } else if let Some(hashed) = pattern.strip_prefix("|1|") {
            hit |= hashed_match(hashed, name);
        } else {
            hit |= wildcard(&pattern.to_ascii_lowercase(), name);
        }
    }
    hit
}

/// OpenSSH's hashed names: `|1|` base64(salt) `|` base64(HMAC-SHA1 keyed by the salt, of the name).
fn hashed_match(hashed: &str, name: &str) -> bool {
    use base64::Engine as _;
    let Some((salt, mac)) = hashed.split_once('|') else { return false };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(mac)) = (b64.decode(salt), b64.decode(mac)) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &mac).is_ok()
}

/// `*` (any run) and `?` (any one character) against the whole name.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// How `known_hosts` names a host: `host`, or `[host]:port` off port 22.
fn host_port(host: &str, port: u16) -> String {
    if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") }
}

impl Sftp {
    pub(crate) fn new(mut settings: Settings) -> Self {
        // Host names are told apart without letter case, and pinned in lower case, as OpenSSH does.
        settings.host = settings.host.to_ascii_lowercase();
        let root = format!("/{}/", settings.root.trim_matches('/'));
        settings.root = if root == "//" { "/".into() } else { root };
        Self { core: Arc::new(Core { settings, conn: Mutex::new(None) }) }
    }
}

/// An SFTP error as OpenDAL's, with what was being done. A lost connection may be retried.
fn sftp_error(e: SftpError, doing: &str) -> opendal::Error {
    match e {
        SftpError::Status(s) => {
            let kind = match s.status_code {
                StatusCode::NoSuchFile => ErrorKind::NotFound,
                StatusCode::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Unexpected,
            };
            let said = if s.error_message.is_empty() { s.status_code.to_string() } else { s.error_message };
            err(kind, format!("{doing}: the SFTP server said {said:?}"))
        }
        SftpError::Timeout => {
            err(ErrorKind::Unexpected, format!("{doing}: the SFTP server did not answer")).set_temporary()
        }
        SftpError::Limited(_) => err(ErrorKind::Unexpected, format!("{doing}: {e}")),
        // The connection's failure, not the file's: the next try opens another connection.
        e => err(ErrorKind::Unexpected, format!("{doing}: {e}")).set_temporary(),
    }
}

fn not_found(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

impl Core {
    fn abs(&self, path: &str) -> String {
        let rel = path.trim_matches('/');
        if rel.is_empty() { self.settings.root.clone() } else { format!("{}{rel}", self.settings.root) }
    }

    /// The live connection, opened when there is none or it died.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.alive()) {
            return Ok(c.clone());
        }
        *slot = None;
        let conn = tokio::time::timeout(CONNECT_LIMIT, self.connect()).await.map_err(|_| {
            err(ErrorKind::Unexpected, format!("{}: no SSH session within 30 s", self.name())).set_temporary()
        })??;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn name(&self) -> String {
        format!("{}@{}", self.settings.user, host_port(&self.settings.host, self.settings.port))
    }

    async fn connect(&self) -> Result<Conn> {
        let s = &self.settings;
        let mut config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        // The pinned kinds of host key first, so a server with several shows the pinned one. RSA counts as one
        // kind, whose signatures keep their order (SHA-2 before SHA-1).
        let pinned = pinned_kinds(&known_hosts_files(&s.known_hosts), &host_port(&s.host, s.port));
        if !pinned.is_empty() {
            let mut order = config.preferred.key.to_vec();
            order.sort_by_key(|a| !pinned.contains(&kind_of(a)));
            config.preferred.key = order.into();
        }
        let checker = Checker { host: s.host.clone(), port: s.port, known_hosts: s.known_hosts.clone() };
        let mut handle =
            client::connect(Arc::new(config), (s.host.as_str(), s.port), checker).await.map_err(|e| match e {
                Failure::HostKey(why) => err(ErrorKind::PermissionDenied, why),
                Failure::Ssh(e) => {
                    err(ErrorKind::Unexpected, format!("cannot open an SSH session with {}: {e}", self.name()))
                        .set_temporary()
                }
            })?;
        let signed_in = match &s.auth {
            Auth::Password(password) => self.sign_in_with_password(&mut handle, password).await?,
            Auth::Key { file, passphrase } => {
                // Opening a sealed key is slow on purpose (bcrypt): off the async threads.
                let (file, passphrase) = (file.clone(), passphrase.clone());
                let key = tokio::task::spawn_blocking(move || open_key(&file, &passphrase))
                    .await
                    .map_err(|e| err(ErrorKind::Unexpected, format!("opening the key file failed: {e}")))?
                    .map_err(|why| err(ErrorKind::ConfigInvalid, why))?;
                let hash = handle.best_supported_rsa_hash().await.map_err(|e| self.ssh_error(&e)).ok().flatten();
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash.flatten());
                handle.authenticate_publickey(s.user.clone(), key).await.map_err(|e| self.ssh_error(&e))?.success()
            }
        };
        if !signed_in {
            let what = match s.auth {
                Auth::Password(_) => "password",
                Auth::Key { .. } => "key",
            };
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "{} refused the {what} of user {:?}; check it, then add the connection again with --replace",
                    host_port(&s.host, s.port),
                    s.user
                ),
            ));
        }
        let files = SftpSession::new_with_config(self.channel(&handle).await?, sftp_config())
            .await
            .map_err(|e| sftp_error(e, "cannot start SFTP"))?;
        let names = RawSftpSession::new_with_config(self.channel(&handle).await?, sftp_config());
        let version = names.init().await.map_err(|e| sftp_error(e, "cannot start SFTP"))?;
        let posix_rename = version.extensions.get(POSIX_RENAME).is_some_and(|v| v == "1");
        Ok(Conn { handle, files, names, posix_rename, broken: false.into() })
    }

    fn ssh_error(&self, e: &russh::Error) -> opendal::Error {
        err(ErrorKind::Unexpected, format!("SSH session with {}: {e}", self.name())).set_temporary()
    }

    async fn channel(&self, handle: &client::Handle<Checker>) -> Result<russh::ChannelStream<client::Msg>> {
        let channel = handle.channel_open_session().await.map_err(|e| self.ssh_error(&e))?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| self.ssh_error(&e))?;
        Ok(channel.into_stream())
    }

    /// SSH's `password` method, then `keyboard-interactive` answered with the password where the server asks
    /// that way (PAM): every hidden prompt gets the password, once.
    async fn sign_in_with_password(&self, handle: &mut client::Handle<Checker>, password: &str) -> Result<bool> {
        let user = self.settings.user.clone();
        let answer = handle.authenticate_password(user.clone(), password).await.map_err(|e| self.ssh_error(&e))?;
        let remaining = match answer {
            russh::client::AuthResult::Success => return Ok(true),
            russh::client::AuthResult::Failure { remaining_methods, .. } => remaining_methods,
        };
        if !remaining.contains(&russh::MethodKind::KeyboardInteractive) {
            return Ok(false);
        }
        let mut reply =
            handle.authenticate_keyboard_interactive_start(user, None).await.map_err(|e| self.ssh_error(&e))?;
        let mut answered = false;
        loop {
            match reply {
                russh::client::KeyboardInteractiveAuthResponse::Success => return Ok(true),
                russh::client::KeyboardInteractiveAuthResponse::Failure { .. } => return Ok(false),
                russh::client::KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                    // A prompt shown in the clear (a one-time code, a question) cannot be answered here.
                    if prompts.iter().any(|p| p.echo) || (answered && !prompts.is_empty()) {
                        return Ok(false);
                    }
                    answered |= !prompts.is_empty();
                    let responses = prompts.iter().map(|_| password.to_owned()).collect();
                    reply = handle
                        .authenticate_keyboard_interactive_respond(responses)
                        .await
                        .map_err(|e| self.ssh_error(&e))?;
                }
            }
        }
    }

    async fn stat(&self, abs: &str) -> Result<Option<FileAttributes>> {
        let conn = self.conn().await?;
        match conn.note(conn.names.stat(abs).await) {
            Ok(a) => Ok(Some(a.attrs)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(sftp_error(e, &format!("cannot look up {abs}"))),
        }
    }

    /// Creates a folder under the root and the folders between, keeping those that exist.
    async fn create_dirs(&self, abs: &str) -> Result<()> {
        let conn = self.conn().await?;
        let root = self.settings.root.trim_end_matches('/');
        let Some(rel) = abs.strip_prefix(root).filter(|r| r.is_empty() || r.starts_with('/')) else {
            return Err(err(ErrorKind::Unexpected, format!("{abs} is outside the connection's root {root}/")));
        };
        let mut at = root.to_owned();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            at = format!("{at}/{part}");
            if let Err(e) = conn.note(conn.names.mkdir(at.as_str(), FileAttributes::empty()).await) {
                match conn.note(conn.names.stat(at.as_str()).await) {
                    Ok(a) if a.attrs.is_dir() => {}
                    _ => return Err(sftp_error(e, &format!("cannot create the folder {at}"))),
                }
            }
        }
        Ok(())
    }

    async fn remove(&self, abs: &str, dir: bool) -> Result<()> {
        let conn = self.conn().await?;
        let answer = if dir { conn.names.rmdir(abs).await } else { conn.names.remove(abs).await };
        match conn.note(answer) {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(sftp_error(e, &format!("cannot delete {abs}"))),
        }
    }

    /// Renames `from` to `to`, replacing `to` if it exists, without a moment where neither holds the file.
    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (parent, _) = to.rsplit_once('/').unwrap_or(("", to));
        self.create_dirs(parent).await?;
        let conn = self.conn().await?;
        let doing = format!("cannot rename {from} to {to}");
        if conn.posix_rename {
            let data: Vec<u8> =
                russh_sftp::extensions::HardlinkExtension { oldpath: from.to_owned(), newpath: to.to_owned() }
                    .try_into()
                    .map_err(|e| err(ErrorKind::Unexpected, format!("{doing}: {e}")))?;
            return match conn.note(conn.names.extended(POSIX_RENAME, data).await) {
                Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
                Ok(Packet::Status(s)) => Err(sftp_error(SftpError::Status(s), &doing)),
                Ok(_) => Err(err(ErrorKind::Unexpected, format!("{doing}: the SFTP server answered out of turn"))),
                Err(e) => Err(sftp_error(e, &doing)),
            };
        }
        // SFTP's own rename refuses an existing destination: it is moved aside first (under a name listings skip
        // as a partial file) and removed after, or put back if the rename fails.
        let aside = match conn.note(conn.names.stat(to).await) {
            Ok(_) => {
                let aside = format!("{parent}/{}", crate::transfer::partial_name());
                conn.note(conn.names.rename(to, aside.as_str()).await).map_err(|e| sftp_error(e, &doing))?;
                Some(aside)
            }
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(sftp_error(e, &doing)),
        };
        match conn.note(conn.names.rename(from, to).await) {
            Ok(_) => {
                if let Some(aside) = aside {
                    let _ = conn.note(conn.names.remove(aside).await);
                }
                Ok(())
            }
            Err(e) => {
                if let Some(aside) = aside {
                    let _ = conn.note(conn.names.rename(aside, to).await);
                }
                Err(sftp_error(e, &doing))
            }
        }
    }
}

fn sftp_config() -> russh_sftp::client::Config {
    russh_sftp::client::Config { request_timeout_secs: REQUEST_LIMIT_SECS, ..Default::default() }
}

fn metadata(attrs: &FileAttributes) -> Result<Metadata> {
    let mut md = if attrs.is_dir() { MetadataBuilder::dir() } else { MetadataBuilder::file(attrs.len()) };
    if let Some(mtime) = attrs.mtime {
        md.last_modified(Timestamp::from_second(i64::from(mtime))?);
    }
    Ok(md.build())
}

impl Service for Sftp {
    type Reader = oio::StreamReader<Reader>;
    type Writer = Writer;
    type Lister = oio::PageLister<Lister>;
    type Deleter = oio::OneShotDeleter<Deleter>;
    type Copier = ();
    type Composer = ();

    fn info(&self) -> ServiceInfo {
        ServiceInfo::new(SCHEME, &self.core.settings.root, "")
    }

    fn capability(&self) -> Capability {
        Capability {
            stat: true,
            read: true,
            write: true,
            write_can_multi: true,
            write_can_empty: true,
            create_dir: true,
            delete: true,
            list: true,
            rename: true,
            shared: true,
            ..Default::default()
        }
    }

    async fn create_dir(&self, _: &OperationContext, path: &str, _: OpCreateDir) -> Result<RpCreateDir> {
        self.core.create_dirs(&self.core.abs(path)).await?;
        Ok(RpCreateDir::default())
    }

    async fn stat(&self, _: &OperationContext, path: &str, _: OpStat) -> Result<RpStat> {
        let abs = self.core.abs(path);
        match self.core.stat(&abs).await? {
            Some(a) if path.ends_with('/') && !a.is_dir() => Err(err(ErrorKind::NotFound, "not a folder")),
            Some(a) => Ok(RpStat::new(metadata(&a)?)),
            None => Err(err(ErrorKind::NotFound, format!("no such file or folder: {abs}"))),
        }
    }

    fn read(&self, _: &OperationContext, path: &str, _: OpRead) -> Result<Self::Reader> {
        Ok(oio::StreamReader::new(Reader { core: self.core.clone(), abs: self.core.abs(path) }))
    }

    fn write(&self, _: &OperationContext, path: &str, _: OpWrite) -> Result<Self::Writer> {
        Ok(Writer { core: self.core.clone(), abs: self.core.abs(path), file: None, failed: false })
    }

    fn delete(&self, _: &OperationContext) -> Result<Self::Deleter> {
        Ok(oio::OneShotDeleter::new(Deleter { core: self.core.clone() }))
    }

    fn list(&self, _: &OperationContext, path: &str, _: OpList) -> Result<Self::Lister> {
        let (dir, prefix) = crate::folder_and_prefix(path);
        let abs = self.core.abs(&dir);
        Ok(oio::PageLister::new(Lister { core: self.core.clone(), dir, prefix, abs, state: Mutex::default() }))
    }

    fn copy(&self, _: &OperationContext, _: &str, _: &str, _: OpCopy) -> Result<Self::Copier> {
        Err(err(ErrorKind::Unsupported, "server-side copy is not offered over SFTP"))
    }

    async fn rename(&self, _: &OperationContext, from: &str, to: &str, _: OpRename) -> Result<RpRename> {
        self.core.rename(&self.core.abs(from), &self.core.abs(to)).await?;
        Ok(RpRename::default())
    }

    async fn presign(&self, _: &OperationContext, _: &str, _: OpPresign) -> Result<RpPresign> {
        Err(err(ErrorKind::Unsupported, "presigned addresses are not offered over SFTP"))
    }
}

pub(crate) struct Reader {
    core: Arc<Core>,
    abs: String,
}

impl oio::StreamRead for Reader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        let doing = format!("cannot read {}", self.abs);
        let conn = self.core.conn().await?;
        let mut file = conn
            .note(conn.files.open_with_flags(self.abs.as_str(), OpenFlags::READ).await)
            .map_err(|e| sftp_error(e, &doing))?;
        let attrs = conn.note(file.metadata().await).map_err(|e| sftp_error(e, &doing))?;
        if attrs.is_dir() {
            return Err(err(ErrorKind::IsADirectory, format!("{} is a folder", self.abs)));
        }
        if range.offset() > 0 {
            file.seek(std::io::SeekFrom::Start(range.offset()))
                .await
                .map_err(|e| err(ErrorKind::Unexpected, format!("{doing}: {e}")))?;
        }
        let left = range.size().unwrap_or_else(|| attrs.len().saturating_sub(range.offset()));
        let stream = Pieces { file, left, doing, busy: false };
        Ok((RpRead::new(metadata(&attrs)?), Box::new(stream)))
    }
}

/// A file's bytes, a piece at a time, up to the end of the range read.
struct Pieces {
    file: File,
    left: u64,
    doing: String,
    /// A read is under way: found set on entry, the last one was cut off (a timeout) after taking bytes off
    /// the file that never arrived, so the stream cannot go on.
    busy: bool,
}

impl oio::ReadStream for Pieces {
    async fn read(&mut self) -> Result<Buffer> {
        if self.busy {
            return Err(err(ErrorKind::Unexpected, format!("{}: an earlier read was cut off", self.doing)));
        }
        if self.left == 0 {
            return Ok(Buffer::new());
        }
        self.busy = true;
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(READ_PIECE);
        let mut buf = BytesMut::zeroed(want);
        let mut got = 0;
        while got < want {
            let n = self.file.read(&mut buf[got..]).await.map_err(|e| {
                // The stream is done for; the read may start again (OpenDAL opens the rest of the range anew).
                err(ErrorKind::Unexpected, format!("{}: {e}", self.doing)).set_temporary()
            })?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        self.left = if got == 0 { 0 } else { self.left - got as u64 };
        self.busy = false;
        Ok(Buffer::from(buf.freeze()))
    }
}

/// Writes a file through one open handle; the folders above it are made first.
pub(crate) struct Writer {
    core: Arc<Core>,
    abs: String,
    file: Option<File>,
    /// Set before each step and cleared after it: found set, a step failed or was cut off (a timeout), the
    /// file's content is unknown, and nothing more is written through this writer.
    failed: bool,
}

impl Writer {
    async fn file(&mut self) -> Result<&mut File> {
        if self.file.is_none() {
            let (parent, _) = self.abs.rsplit_once('/').unwrap_or(("", &self.abs));
            self.core.create_dirs(parent).await?;
            let conn = self.core.conn().await?;
            let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
            let opened = conn.note(conn.files.open_with_flags(self.abs.as_str(), flags).await);
            self.file = Some(opened.map_err(|e| sftp_error(e, &format!("cannot write {}", self.abs)))?);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn refuse_after_failure(&self) -> Result<()> {
        if self.failed {
            return Err(err(ErrorKind::Unexpected, format!("an earlier write to {} failed", self.abs)));
        }
        Ok(())
    }
}

impl oio::Write for Writer {
    async fn write(&mut self, mut bs: Buffer) -> Result<()> {
        self.refuse_after_failure()?;
        self.failed = true;
        let abs = self.abs.clone();
        let file = self.file().await?;
        while bs.has_remaining() {
            let piece = bs.chunk();
            file.write_all(piece).await.map_err(|e| err(ErrorKind::Unexpected, format!("cannot write {abs}: {e}")))?;
            let n = piece.len();
            bs.advance(n);
        }
        self.failed = false;
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.refuse_after_failure()?;
        self.failed = true;
        let abs = self.abs.clone();
        let file = self.file().await?;
        file.flush().await.map_err(|e| err(ErrorKind::Unexpected, format!("cannot finish writing {abs}: {e}")))?;
        file.shutdown().await.map_err(|e| err(ErrorKind::Unexpected, format!("cannot finish writing {abs}: {e}")))?;
        self.file = None;
        self.failed = false;
        Ok(MetadataBuilder::unknown().build())
    }

    async fn abort(&mut self) -> Result<()> {
        // The caller removes what was written; the handle is let go.
        self.failed = true;
        if let Some(mut file) = self.file.take() {
            let _ = file.shutdown().await;
        }
        Ok(())
    }
}

pub(crate) struct Deleter {
    core: Arc<Core>,
}

impl oio::OneShotDelete for Deleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        self.core.remove(&self.core.abs(&path), path.ends_with('/')).await
    }
}

pub(crate) struct Lister {
    core: Arc<Core>,
    /// The folder listed, relative to the root (`""` or `a/b/`).
    dir: String,
    /// Only names starting with this.
    prefix: String,
    abs: String,
    state: Mutex<Listing>,
}

/// Where a listing is.
#[derive(Default)]
struct Listing {
    /// The open folder handle, between pages.
    open: Option<(Arc<Conn>, String)>,
    /// Entries listed so far.
    listed: usize,
    /// A page is being read: found set on entry, the last one was cut off (a timeout) after the server moved
    /// past entries that never arrived, so the listing cannot go on (it would look complete without them).
    busy: bool,
}

impl Drop for Listing {
    fn drop(&mut self) {
        // A listing left before its end lets its folder handle go.
        if let Some((conn, handle)) = self.open.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = conn.names.close(handle).await;
            });
        }
    }
}

impl oio::PageList for Lister {
    async fn next_page(&self, page: &mut oio::PageContext) -> Result<()> {
        let doing = format!("cannot list {}", self.abs);
        let mut state = self.state.lock().await;
        if state.busy {
            return Err(err(ErrorKind::Unexpected, format!("{doing}: an earlier page was cut off")));
        }
        state.busy = true;
        if state.open.is_none() {
            let conn = self.core.conn().await?;
            match conn.note(conn.names.opendir(self.abs.as_str()).await) {
                Ok(h) => state.open = Some((conn, h.handle)),
                Err(e) if not_found(&e) => {
                    state.busy = false;
                    page.done = true;
                    return Ok(());
                }
                Err(e) => return Err(sftp_error(e, &doing)),
            }
        }
        let (conn, handle) = state.open.clone().expect("opened above");
        let name = match conn.note(conn.names.readdir(handle.as_str()).await) {
            Ok(name) => name,
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => {
                state.open = None;
                let _ = conn.names.close(handle.as_str()).await;
                state.busy = false;
                page.done = true;
                return Ok(());
            }
            Err(e) => return Err(sftp_error(e, &doing)),
        };
        state.listed += name.files.len();
        if state.listed > crate::transfer::MAX_ENTRIES {
            return Err(err(
                ErrorKind::Unexpected,
                format!("{doing}: it holds over {} entries", crate::transfer::MAX_ENTRIES),
            ));
        }
        let mut entries = Vec::with_capacity(name.files.len());
        let folder = self.abs.trim_end_matches('/');
        for f in name.files {
            let n = f.filename;
            if n.is_empty() || n.contains('/') || n == "." || n == ".." || !n.starts_with(&self.prefix) {
                continue;
            }
            let attrs = match f.attrs.file_type() {
                FileType::Dir | FileType::File => f.attrs,
                // A link to a file is listed as the file; a link to a folder is not followed (it may loop).
                FileType::Symlink => match conn.note(conn.names.stat(format!("{folder}/{n}")).await) {
                    Ok(a) if a.attrs.file_type() == FileType::File => a.attrs,
                    Ok(_) => continue,
                    Err(e) if not_found(&e) => continue,
                    Err(e) => return Err(sftp_error(e, &doing)),
                },
                FileType::Other => continue,
            };
            let md = metadata(&attrs)?;
            let rel =
                if md.mode() == EntryMode::DIR { format!("{}{n}/", self.dir) } else { format!("{}{n}", self.dir) };
            entries.push(oio::Entry::new(&rel, md));
        }
        // The page goes in whole or not at all.
        page.entries.extend(entries);
        state.busy = false;
        Ok(())
    }
}

/// The operator for a password or passphrase SFTP connection.
pub(crate) fn operator(settings: Settings) -> opendal::Operator {
    crate::own_operator(Sftp::new(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooted(root: &str) -> Sftp {
        Sftp::new(Settings {
            host: "h".into(),
            port: 22,
            user: "u".into(),
            auth: Auth::Password(Zeroizing::new("p".into())),
            root: root.into(),
            known_hosts: PathBuf::from("/nonexistent"),
        })
    }

    #[test]
    fn paths_start_at_the_root() {
        let s = rooted("/srv/data");
        assert_eq!(s.core.abs(""), "/srv/data/");
        assert_eq!(s.core.abs("a/b.txt"), "/srv/data/a/b.txt");
        assert_eq!(s.core.abs("a/"), "/srv/data/a");
        assert_eq!(rooted("/").core.abs("x"), "/x");
        assert_eq!(rooted("").core.abs(""), "/");
    }

    #[test]
    fn known_hosts_names_hosts_as_openssh_does() {
        assert_eq!(host_port("example.org", 22), "example.org");
        assert_eq!(host_port("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).expect("key")
    }

    const ED_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn pins(text: &str, name: &str, shown: &str) -> Pins {
        let mut p = Pins::default();
        p.read(text, "kh", name, &key(shown));
        p
    }

    #[test]
    fn known_hosts_lines_are_read_as_openssh_reads_them() {
        let name = "[nas.example.com]:2222";
        // Fields apart by tabs or several spaces; a pattern list with wildcards; letter case in the pattern.
        let p = pins(&format!("other,[NAS.example.com]:2222\tssh-ed25519   {ED_A} comment\n"), name, ED_A);
        assert!(p.matched && p.other.is_empty() && p.revoked.is_none());
        assert!(pins(&format!("[*.example.com]:2222 ssh-ed25519 {ED_A}\n"), name, ED_A).matched);
        assert!(pins(&format!("[nas.example.co?]:2222 ssh-ed25519 {ED_A}\n"), name, ED_A).matched);
        // A negated pattern takes the line away from the host.
        let p = pins(&format!("*.example.com,!nas.example.com ssh-ed25519 {ED_B}\n"), "nas.example.com", ED_A);
        assert!(!p.matched && p.other.is_empty());
        // Another key for the host, a certificate authority, or a key this client cannot read: not first use.
        assert_eq!(pins(&format!("{name} ssh-ed25519 {ED_B}\n"), name, ED_A).other, ["kh, line 1"]);
        assert_eq!(pins(&format!("@cert-authority {name} ssh-ed25519 {ED_B}\n"), name, ED_A).other.len(), 1);
        assert_eq!(pins(&format!("# c\n\n{name} ssh-ed25519 garbage\n"), name, ED_A).other, ["kh, line 3"]);
        // A revoked key is refused even where it is also pinned.
        let p = pins(&format!("{name} ssh-ed25519 {ED_A}\n@revoked * ssh-ed25519 {ED_A}\n"), name, ED_A);
        assert!(p.matched && p.revoked.as_deref() == Some("kh, line 2"));
        // Lines for other hosts or ports say nothing.
        let p =
            pins(&format!("nas.example.com ssh-ed25519 {ED_B}\n[nas.example.com]:22 ssh-ed25519 {ED_B}\n"), name, ED_A);
        assert!(!p.matched && p.other.is_empty());
    }

    #[test]
    fn hashed_names_match_as_openssh_writes_them() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = [7u8; 20];
        let mac =
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt), b"[h]:2222");
        let pattern = format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.as_ref()));
        assert!(hosts_match(&pattern, "[h]:2222"));
        assert!(!hosts_match(&pattern, "[h]:2223"));
        assert!(!hosts_match("|1|garbage", "[h]:2222"));
    }

    #[test]
    fn wildcards_cover_the_whole_name() {
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*c", "abbbc") && wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac") && !wildcard("a*c", "abcd") && !wildcard("abc", "ab"));
        assert!(wildcard("*.*", "a.b") && !wildcard("*.*", "ab"));
    }

    #[test]
    fn pinned_rsa_keeps_sha2_signatures_first() {
        let rsa = russh::keys::Algorithm::Rsa { hash: None };
        assert_eq!(kind_of(&rsa), "ssh-rsa");
        assert_eq!(kind_of(&russh::keys::Algorithm::Rsa { hash: Some(russh::keys::HashAlg::Sha512) }), "ssh-rsa");
        let dir = tempfile::tempdir().expect("tempdir");
        let kh = dir.path().join("known_hosts");
        std::fs::write(&kh, "[h]:2222 ssh-rsa AAAA\n@revoked [h]:2222 ssh-ed25519 AAAA\n").expect("write");
        assert_eq!(pinned_kinds(&[kh], "[h]:2222"), ["ssh-rsa"]);
        let mut order = client::Config::default().preferred.key.to_vec();
        order.sort_by_key(|a| !["ssh-rsa".to_owned()].contains(&kind_of(a)));
        let names: Vec<&str> = order.iter().map(russh::keys::Algorithm::as_str).collect();
        let rsa_at = |n: &str| names.iter().position(|x| *x == n).expect("offered");
        assert!(rsa_at("rsa-sha2-512") < rsa_at("ssh-rsa") && rsa_at("rsa-sha2-256") < rsa_at("ssh-rsa"), "{names:?}");
        assert!(names[0].starts_with("rsa-sha2"), "{names:?}");
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        let shown = format!("{:?}", rooted("/r"));
        assert!(!shown.contains("\"p\"") && shown.contains("\"h\""), "{shown}");
    }
}
