//! Saved connections to storage accounts the user controls, and `ls`/`copy`/`sync`/`move`/`delete` on them.
//!
//! The settings (type, host, bucket, …) are in `connections.toml` in the config directory (mode 0600); the
//! secret of each (password, secret key) is in the OS credential store under `connection:NAME` (per profile: see
//! `credentials`), never in the file. `NAME:PATH` names a path on a saved connection; a local path is written as
//! it is.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cloudsync_connectors::transfer::{self, Location, Options, Summary};
use cloudsync_connectors::{Connection, Kind, Limits, check_name, oauth};
use cloudsync_sync::progress;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::config::{config_dir, load_toml, update_toml};
use super::credentials::CredentialStore;
use super::history;
use super::output::{print_json, size, table};
use crate::args::{ConnectionAddArgs, ConnectionCmd};

/// The saved connections.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Connections {
    /// By name.
    #[serde(default)]
    pub connections: BTreeMap<String, Connection>,
}

fn file() -> PathBuf {
    config_dir().join("connections.toml")
}

fn secret_account(name: &str) -> String {
    format!("connection:{name}")
}

impl Connections {
    /// Loads the file, or none when there is no file.
    ///
    /// # Errors
    /// An unreadable or invalid file.
    pub fn load() -> Result<Self> {
        load_toml(&file(), "connections file")
    }

    /// Changes the saved connections under a lock, so that two commands changing them at once both count.
    fn change<T>(change: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        update_toml(&file(), "connections file", change)
    }

    fn get(&self, name: &str) -> Result<&Connection> {
        self.connections.get(name).with_context(|| {
            format!("there is no connection named {name:?}; `cloudsync connection list` shows the saved ones")
        })
    }

    /// The operator for a saved connection, with its secret from the credential store.
    fn operator(&self, name: &str, limits: &Limits) -> Result<opendal::Operator> {
        let conn = self.get(name)?;
        let secret = match conn.secret_name() {
            Some(what) => {
                let secret = CredentialStore::from_env()?.get(&secret_account(name))?;
                if secret.is_none() {
                    bail!(
                        "the {what} of connection {name:?} is not in the credential store; add the connection again \
                         (`cloudsync connection remove {name}` then `cloudsync connection add {name} ...`)"
                    );
                }
                secret
            }
            None => None,
        };
        // A provider that rotates refresh tokens (Microsoft) hands out a new one now and then: keep the newest.
        let account = secret_account(name);
        let label = name.to_owned();
        let keep: oauth::SecretSink = Arc::new(move |new: &str| {
            if let Err(e) = CredentialStore::from_env().and_then(|store| store.set(&account, new)) {
                eprintln!(
                    "warning: the provider renewed the sign-in of connection {label:?}, but the new refresh token \
                     could not be kept in the credential store ({e:#}); if a later command is refused, add the \
                     connection again"
                );
            }
        });
        Ok(conn.operator_keeping(secret.as_deref().map(String::as_str), limits, Some(keep))?)
    }
}

/// One side of a `copy`, `sync`, `move` or `ls`.
#[derive(Debug)]
pub enum Target {
    /// A local path.
    Local(PathBuf),
    /// `NAME:PATH` on a saved connection.
    Connection {
        /// Connection name.
        name: String,
        /// Path on it.
        path: String,
    },
    /// Anything else with a colon: a workspace (`WORKSPACE[:PATH]`).
    Workspace(String),
}

impl Target {
    /// Reads `NAME:PATH` (a saved connection), `WORKSPACE[:PATH]` (a name and a colon, not a connection) or a
    /// local path (anything starting with `/`, `.` or `~`, a single-letter drive, or without a colon).
    pub fn parse(spec: &str, saved: &Connections) -> Self {
        let local = spec.starts_with(['/', '.', '~']) || Path::new(spec).exists();
        match spec.split_once(':') {
            Some((name, path)) if !local && !name.contains(['/', '\\']) && name.len() > 1 => {
                match saved.connections.get(name) {
                    // A `cloudsync` connection is another name for a workspace.
                    Some(c) if c.kind == Kind::Cloudsync => {
                        Self::Workspace(format!("{}:{path}", c.workspace.as_deref().unwrap_or_default()))
                    }
                    Some(_) => Self::Connection { name: name.to_owned(), path: path.to_owned() },
                    None => Self::Workspace(spec.to_owned()),
                }
            }
            _ => Self::Local(PathBuf::from(spec)),
        }
    }

    fn location(&self, saved: &Connections, limits: &Limits) -> Result<Location> {
        Ok(match self {
            Self::Local(p) => Location::Local(p.clone()),
            Self::Connection { name, path } => {
                check_remote_path(path)?;
                Location::Remote {
                    op: saved.operator(name, limits)?,
                    path: path.trim_start_matches('/').to_owned(),
                    label: format!("{name}:{path}"),
                }
            }
            Self::Workspace(spec) => {
                bail!("{spec:?} is not on a saved connection (`cloudsync connection list` shows them) nor a local path")
            }
        })
    }
}

impl Target {
    /// How the user wrote it (a workspace as `WORKSPACE:PATH`).
    fn label(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Connection { name, path } => format!("{name}:{path}"),
            Self::Workspace(spec) => spec.clone(),
        }
    }
}

fn check_remote_path(path: &str) -> Result<()> {
    if path.len() > 4096 || path.contains('\0') || path.split('/').any(|p| p == "..") {
        bail!("{path:?} is not a valid remote path: it must not contain '..' or NUL (and at most 4096 bytes)");
    }
    Ok(())
}

/// Why `spec`, when it starts with a `cloudsync` connection's name, is not taken where a storage connection
/// is needed: that name stands for a workspace. Empty otherwise.
pub fn alias_note(spec: &str, saved: &Connections) -> String {
    let name = spec.split_once(':').map_or("", |(n, _)| n);
    match saved.connections.get(name) {
        Some(c) if c.kind == Kind::Cloudsync => format!(
            " ({name:?} is a cloudsync connection: another name for the workspace {:?}, not storage of its own)",
            c.workspace.as_deref().unwrap_or_default()
        ),
        _ => String::new(),
    }
}

/// `spec` with a `cloudsync` connection's name replaced by its workspace (`team:docs` -> `Team Docs:docs`);
/// anything else as it is.
///
/// # Errors
/// An unreadable connections file.
pub fn workspace_alias(spec: &str) -> Result<String> {
    let saved = Connections::load()?;
    Ok(match Target::parse(spec, &saved) {
        Target::Workspace(ws) => ws,
        _ => spec.to_owned(),
    })
}

/// Whether any of `specs` names a saved connection (`NAME:PATH`).
///
/// # Errors
/// An unreadable connections file.
pub fn any_connection(specs: &[&str]) -> Result<bool> {
    let saved = Connections::load()?;
    Ok(specs.iter().any(|spec| matches!(Target::parse(spec, &saved), Target::Connection { .. })))
}

/// `connection ...`.
///
/// # Errors
/// Bad settings, an unavailable credential store, a failed test.
pub async fn run(cmd: ConnectionCmd) -> Result<()> {
    match cmd {
        ConnectionCmd::Add(args) => add(*args).await,
        ConnectionCmd::List(j) => list(j.json),
        ConnectionCmd::Show { name, json } => show(&name, json.json),
        ConnectionCmd::Test { name, json } => test(&name, json.json).await,
        ConnectionCmd::Remove { name } => remove(&name),
    }
}

async fn add(a: ConnectionAddArgs) -> Result<()> {
    check_name(&a.name)?;
    let saved = Connections::load()?;
    if saved.connections.contains_key(&a.name) && !a.replace {
        bail!("a connection named {:?} exists already; pick another name, or pass --replace to overwrite it", a.name);
    }
    let mut conn = Connection::new(a.kind);
    conn.endpoint = a.endpoint;
    conn.region = a.region;
    conn.bucket = a.bucket;
    conn.account_id = a.account_id;
    conn.access_key_id = a.access_key_id;
    conn.host = a.host;
    conn.port = a.port;
    conn.user = a.user;
    conn.key_file = a.key_file.map(|p| std::path::absolute(&p).unwrap_or(p));
    conn.root = a.root;
    conn.workspace = a.workspace;
    conn.client_id = a.client_id;
    conn.auth_endpoint = a.auth_endpoint;
    conn.allow_insecure = a.allow_insecure;
    conn.ca_cert = a.ca_cert.map(|p| std::path::absolute(&p).unwrap_or(p));
    conn.validate()?;
    if let Some(code) = &a.otp_code {
        anyhow::ensure!(conn.kind == Kind::Synology, "--otp-code is for synology connections");
        anyhow::ensure!(
            (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()),
            "--otp-code takes the 6-digit code the authenticator app shows (some apps show 8 digits)"
        );
    }
    if let Some(key) = &conn.key_file {
        anyhow::ensure!(key.is_file(), "the key file {} does not exist", key.display());
        // A key sealed with a passphrase needs it at each sign-in (unless ssh-agent holds the key): it goes to the
        // credential store.
        conn.key_passphrase = cloudsync_connectors::key_needs_passphrase(key).await.map_err(anyhow::Error::msg)?;
    }
    if let Some(ca) = &conn.ca_cert {
        anyhow::ensure!(ca.is_file(), "the CA file {} does not exist", ca.display());
    }
    let needs_secret = conn.secret_name();
    let store = CredentialStore::from_env()?;
    let oauth = oauth::is_oauth(conn.kind);
    anyhow::ensure!(!a.device_code || conn.kind == Kind::Onedrive, "--device-code is offered by onedrive only");
    anyhow::ensure!(
        !a.client_secret_stdin || conn.kind == Kind::Pcloud,
        "--client-secret-stdin is for pcloud only (dropbox and onedrive sign in without a client secret)"
    );
    if let Some(what) = needs_secret {
        let secret = if oauth && !a.secret_stdin {
            let grant = if a.device_code {
                oauth::sign_in_with_device_code(&conn, &SignInPrompt { browser: false }).await?
            } else {
                let client_secret = if a.client_secret_stdin {
                    Some(super::read_stdin_line("client secret")?)
                } else if conn.kind == Kind::Pcloud && std::io::stdin().is_terminal() {
                    Some(Zeroizing::new(rpassword::prompt_password("pCloud app client secret: ")?))
                } else {
                    None
                };
                let prompt = SignInPrompt { browser: !a.no_browser };
                oauth::sign_in(&conn, a.oauth_port, client_secret.as_deref().map(String::as_str), &prompt).await?
            };
            if let Some(host) = grant.api_host
                && conn.endpoint.is_none()
            {
                conn.endpoint = Some(format!("https://{host}"));
            }
            match &grant.account {
                Some(account) => {
                    eprintln!("Signed in as {account}. If that is not your account, remove the connection.")
                }
                None => eprintln!("Signed in (the service did not say to which account)."),
            }
            conn.account = grant.account;
            grant.secret
        } else if a.secret_stdin {
            super::read_stdin_line(what)?
        } else if std::io::stdin().is_terminal() {
            let s = Zeroizing::new(rpassword::prompt_password(format!("{} for {}: ", capitalise(what), a.name))?);
            anyhow::ensure!(!s.is_empty(), "the {what} was empty; nothing was saved");
            s
        } else {
            bail!("this connection needs its {what}: pass --secret-stdin and pipe it in, or run on a terminal");
        };
        if conn.key_passphrase
            && let Some(key) = &conn.key_file
        {
            cloudsync_connectors::check_passphrase(key, &secret).map_err(anyhow::Error::msg)?;
        }
        let secret = match &a.otp_code {
            Some(code) => enrol(&conn, &secret, code).await?,
            None => secret,
        };
        // The secret first: if the credential store is unavailable, nothing is saved.
        store.set(&secret_account(&a.name), &secret)?;
    } else {
        store.delete(&secret_account(&a.name))?;
    }
    Connections::change(|saved| {
        if saved.connections.contains_key(&a.name) && !a.replace {
            bail!("a connection named {:?} was saved meanwhile; pass --replace to overwrite it", a.name);
        }
        saved.connections.insert(a.name.clone(), conn);
        Ok(())
    })?;
    eprintln!(
        "Saved connection {:?}{}. Check it with `cloudsync connection test {}`.",
        a.name,
        if needs_secret.is_some() { " (its secret is in the OS credential store)" } else { "" },
        a.name
    );
    Ok(())
}

/// Signs in to a Synology NAS with a 2-step verification code, which enrols this device: the secret to keep is
/// the password, then the device token the NAS issued, on a second line.
///
/// # Errors
/// The NAS refused the password or the code, or issued no token.
async fn enrol(conn: &Connection, password: &str, code: &str) -> Result<Zeroizing<String>> {
    anyhow::ensure!(!password.contains('\n'), "the password has a line break, which this client cannot keep");
    let mut signing_in = conn.clone();
    signing_in.otp_code = Some(code.to_owned());
    let issued: Arc<std::sync::Mutex<Option<Zeroizing<String>>>> = Arc::default();
    let keep = issued.clone();
    let sink: oauth::SecretSink = Arc::new(move |did: &str| {
        *keep.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Zeroizing::new(did.to_owned()));
    });
    let op = signing_in.operator_keeping(Some(password), &Limits { retries: 0, ..Limits::default() }, Some(sink))?;
    op.check().await.map_err(|e| anyhow::anyhow!("signing in with the 2-step verification code failed: {e}"))?;
    cloudsync_connectors::sign_out().await;
    let did = issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let did = did.context("the NAS took the code but issued no device token")?;
    eprintln!("This device is now trusted by the NAS (DSM: Personal > Security > Trusted devices: {DEVICE}).");
    Ok(Zeroizing::new(format!("{password}\n{}", did.as_str())))
}

/// The name this client's device goes by on the NAS.
const DEVICE: &str = "cloudsync";

/// Shows the sign-in address (on standard error, so `--json` output stays clean) and opens a browser: the
/// command in `$BROWSER`, else the desktop's opener.
#[derive(Debug)]
struct SignInPrompt {
    browser: bool,
}

impl oauth::Prompt for SignInPrompt {
    fn open(&self, url: &str) {
        eprintln!("Sign in by opening this address in a browser (waiting up to 5 minutes):\n\n  {url}\n");
        if !self.browser {
            return;
        }
        let opener = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open"
            } else if cfg!(windows) {
                "explorer"
            } else {
                "xdg-open"
            }
            .into()
        });
        let started = std::process::Command::new(&opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if started.is_err() {
            eprintln!("(could not start a browser with {opener:?}; open the address by hand)");
        }
    }

    fn device(&self, message: &str) {
        eprintln!("{message}");
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn place(c: &Connection) -> String {
    match c.kind {
        Kind::S3 | Kind::R2 => {
            format!(
                "{} ({})",
                c.bucket.as_deref().unwrap_or_default(),
                c.endpoint_url().unwrap_or_else(|| "AWS".into())
            )
        }
        Kind::Webdav => c.endpoint.clone().unwrap_or_default(),
        Kind::Synology => {
            format!("{} at {}", c.user.as_deref().unwrap_or_default(), c.endpoint_url().unwrap_or_default())
        }
        Kind::Cloudsync => format!("workspace {:?}", c.workspace.as_deref().unwrap_or_default()),
        Kind::Dropbox | Kind::Onedrive | Kind::Pcloud => {
            c.endpoint.clone().unwrap_or_else(|| format!("{} (app {})", c.kind, c.client_id.as_deref().unwrap_or("?")))
        }
        _ => {
            let user = c.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
            let port = c.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{user}{}{port}", c.host.as_deref().unwrap_or_default())
        }
    }
}

fn list(json: bool) -> Result<()> {
    let saved = Connections::load()?;
    if json {
        #[derive(Serialize)]
        struct Row<'a> {
            name: &'a str,
            #[serde(flatten)]
            settings: &'a Connection,
        }
        let rows: Vec<Row<'_>> = saved.connections.iter().map(|(name, settings)| Row { name, settings }).collect();
        return print_json(&rows);
    }
    if saved.connections.is_empty() {
        eprintln!("No connections yet; add one with `cloudsync connection add NAME --type TYPE ...`.");
        return Ok(());
    }
    let rows = saved.connections.iter().map(|(n, c)| vec![n.clone(), c.kind.to_string(), place(c)]).collect();
    table(&["NAME", "TYPE", "WHERE"], rows);
    Ok(())
}

fn show(name: &str, json: bool) -> Result<()> {
    let saved = Connections::load()?;
    let conn = saved.get(name)?;
    let secret = match conn.secret_name() {
        Some(what) => Some((what, CredentialStore::from_env()?.get(&secret_account(name))?.is_some())),
        None => None,
    };
    if json {
        let mut map: BTreeMap<&str, String> = conn.settings().into_iter().collect();
        map.insert("name", name.to_owned());
        if let Some((_, held)) = secret {
            map.insert("secret", if held { "stored" } else { "missing" }.to_owned());
        }
        return print_json(&map);
    }
    println!("name: {name}");
    for (k, v) in conn.settings() {
        println!("{k}: {v}");
    }
    if let Some((what, held)) = secret {
        let state = if held { "******** (in the OS credential store)" } else { "missing" };
        println!("{}: {state}", what.replace(' ', "_"));
    }
    Ok(())
}

async fn test(name: &str, json: bool) -> Result<()> {
    let saved = Connections::load()?;
    let started = std::time::Instant::now();
    let conn = saved.get(name)?;
    let result = if conn.kind == Kind::Cloudsync {
        let ws = conn.workspace.as_deref().unwrap_or_default();
        super::files::resolve(&format!("{ws}:"))
            .await
            .with_context(|| format!("connection {name:?} failed its test"))?;
        Ok(())
    } else {
        saved.operator(name, &Limits { retries: 1, ..Limits::default() })?.check().await
    };
    let ms = started.elapsed().as_millis();
    match result {
        Ok(()) => {
            if json {
                print_json(&serde_json::json!({"name": name, "ok": true, "millis": ms}))?;
            } else {
                println!("{name}: OK ({ms} ms)");
            }
            Ok(())
        }
        Err(e) => Err(cloudsync_connectors::Error::backend(format!("connection {name:?} failed its test"), e).into()),
    }
}

fn remove(name: &str) -> Result<()> {
    Connections::change(|saved| {
        saved.get(name)?;
        CredentialStore::from_env()?.delete(&secret_account(name))?;
        saved.connections.remove(name);
        Ok(())
    })?;
    eprintln!("Removed connection {name:?} and its secret.");
    Ok(())
}

/// Removes every saved connection and its secret (`local clear --connections`). Returns how many there were.
///
/// # Errors
/// The credential store or the file cannot be changed; connections whose secret could not be deleted stay.
pub fn forget_all() -> Result<usize> {
    let store = CredentialStore::from_env()?;
    Connections::change(|saved| {
        let names: Vec<String> = saved.connections.keys().cloned().collect();
        // A connection whose secret could not be deleted stays, so it can be removed again later.
        let mut result = Ok(names.len());
        for name in names {
            if let Err(e) = store.delete(&secret_account(&name)) {
                result = Err(e);
                break;
            }
            saved.connections.remove(&name);
        }
        Ok(result)
    })?
}

/// `ls NAME:PATH [-R]`.
///
/// # Errors
/// Unknown connection, listing failure.
pub async fn ls(spec: &str, recursive: bool, json: bool) -> Result<()> {
    let saved = Connections::load()?;
    let loc = Target::parse(spec, &saved).location(&saved, &Limits::default())?;
    let spinner = progress::spinner(!json, &format!("listing {}…", loc.label()));
    let listing = async {
        let mut listing = transfer::list(&loc, recursive).await?;
        // Nothing listed: a folder that is empty, a file, or nothing at all (a mistyped path is an error).
        if listing.entries.is_empty() && listing.refused.is_empty() {
            match transfer::stat(&loc).await? {
                None => bail!("{} does not exist; check the path (`cloudsync ls NAME:` lists the top)", loc.label()),
                Some(file) if !file.is_dir => listing.entries.push(file),
                Some(_) => {}
            }
        }
        Ok(listing)
    }
    .await;
    spinner.finish_and_clear();
    let listing = listing?;
    for r in &listing.refused {
        eprintln!("warning: skipped the name {:?} that {} listed: {}", r.name, loc.label(), r.reason);
    }
    if json {
        return print_json(&listing);
    }
    let rows = listing
        .entries
        .iter()
        .map(|e| {
            let when = e.modified.map(time::OffsetDateTime::from).map(super::output::date).unwrap_or_default();
            let name = if e.is_dir { format!("{}/", e.path) } else { e.path.clone() };
            vec![if e.is_dir { "-".into() } else { size(e.size) }, when, name]
        })
        .collect();
    table(&["SIZE", "MODIFIED", "PATH"], rows);
    Ok(())
}

/// What `copy`, `sync` and `move` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Copy new and changed files.
    Copy,
    /// Copy, then delete destination files the source lacks (with `--delete`).
    Mirror,
    /// Copy, then delete the source files.
    Move,
}

/// How a transfer runs: what it does and under which limits.
#[derive(Debug, Clone)]
pub struct Run {
    /// Copy, mirror or move.
    pub verb: Verb,
    /// Mirror: delete destination files the source lacks.
    pub delete: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Show progress bars and spinners (on a terminal).
    pub progress: bool,
    /// Concurrency, retries and the pace.
    pub limits: Limits,
    /// The sync pair this run belongs to, for the history.
    pub pair: Option<String>,
    /// Compare same-size files by content hash where both sides give one.
    pub checksum: bool,
    /// Counts what the run has copied as it goes, for status lines (`pair daemon`).
    pub tally: Option<Arc<Tally>>,
    /// Copy the source as it was then (`--as-of`, as typed: a span counts back from the run's start).
    pub as_of: Option<String>,
}

/// What a run has done so far.
#[derive(Debug, Default)]
pub struct Tally {
    /// Bytes copied.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Bytes to copy, once both sides are listed.
    pub total: std::sync::atomic::AtomicU64,
    /// Whether both sides are listed.
    pub listed: std::sync::atomic::AtomicBool,
}

/// How a `copy`, `sync` or `move` goes.
#[derive(Debug, Clone, Default)]
pub struct How {
    /// Mirror: delete destination files the source lacks.
    pub delete: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Compare same-size files by content hash where both sides give one.
    pub checksum: bool,
    /// Copy the source as it was then.
    pub as_of: Option<String>,
    /// Bandwidth cap (`--bwlimit`, as typed).
    pub bwlimit: Option<String>,
}

/// `copy`, one-way `sync` and `move` between local paths and connections.
///
/// # Errors
/// Unknown connection, listing failure, or files that failed (listed first).
pub async fn transfer(src: &str, dst: &str, verb: Verb, how: How, json: bool) -> Result<()> {
    let How { delete, dry_run, checksum, as_of, bwlimit } = how;
    let saved = Connections::load()?;
    let (from, to) = (Target::parse(src, &saved), Target::parse(dst, &saved));
    if matches!(from, Target::Workspace(_)) || matches!(to, Target::Workspace(_)) {
        anyhow::ensure!(as_of.is_none(), "--as-of reads a versioned S3 bucket, not a workspace");
        anyhow::ensure!(
            bwlimit.is_none(),
            "--bwlimit is for copies between local folders and saved connections, not with a workspace"
        );
        anyhow::ensure!(
            !checksum,
            "--checksum is for copies between local folders and saved connections; a workspace compares content \
             by chunk hashes already"
        );
        return with_workspace(from, to, verb, delete || dry_run, json, &saved).await;
    }
    let pace = match bwlimit.as_deref() {
        Some(rate) => Some(cloudsync_connectors::Pace::new(cloudsync_connectors::Caps {
            requests_per_second: None,
            bytes_per_second: Some(super::pairs::parse_rate(rate)?),
        })),
        None => None,
    };
    let limits = Limits { pace, ..Limits::default() };
    let run = Run { verb, delete, dry_run, progress: !json, limits, pair: None, checksum, tally: None, as_of };
    let from = from.location(&saved, &run.limits)?;
    let to = to.location(&saved, &run.limits)?;
    let summary = execute(&from, &to, [src, dst], &run).await?;
    report(&summary, verb, &from, json)
}

/// The locations `src` and `dst` name (local paths or `NAME:PATH`), with `limits` on their connections.
///
/// # Errors
/// An unknown connection or a workspace (use [`transfer`] for those), a missing secret.
pub fn locations(src: &str, dst: &str, limits: &Limits) -> Result<(Location, Location)> {
    let saved = Connections::load()?;
    Ok((Target::parse(src, &saved).location(&saved, limits)?, Target::parse(dst, &saved).location(&saved, limits)?))
}

/// A copy with a workspace on one side (or both): local to workspace is a push, workspace to local a pull,
/// and between a workspace and a connection (or two workspaces) the files go through a private staging folder
/// in the state directory, removed afterwards. The workspace side keeps its versions and trash.
async fn with_workspace(
    from: Target,
    to: Target,
    verb: Verb,
    mirror_or_plan: bool,
    json: bool,
    saved: &Connections,
) -> Result<()> {
    if verb == Verb::Move {
        bail!(
            "move to or from a workspace is not available: copy, then delete the source (a workspace's files go \
             to its trash with `cloudsync rm WORKSPACE:PATH`)"
        );
    }
    if mirror_or_plan {
        bail!(
            "--delete and --dry-run are not available with a workspace on one side; the two-way `cloudsync sync \
             LOCAL_DIR WORKSPACE` sends deletions to the trash, and `cloudsync status LOCAL_DIR` shows what it would do"
        );
    }
    match (&from, &to) {
        (Target::Local(p), Target::Workspace(ws)) => return super::files::push(p, ws, false, json).await,
        (Target::Workspace(ws), Target::Local(p)) => return super::files::pull(ws, p, false, json).await,
        _ => {}
    }
    let staging = super::config::state_dir().join("staging");
    std::fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    // Mode 0700, removed when dropped.
    let stage = tempfile::Builder::new()
        .prefix("copy-")
        .tempdir_in(&staging)
        .with_context(|| format!("cannot create a staging folder in {}", staging.display()))?;
    let staged = Location::Local(stage.path().to_path_buf());
    // The one step with a connection in it (if any) is the run the history records, under what the user typed.
    let run = Run {
        verb: Verb::Copy,
        delete: false,
        dry_run: false,
        progress: !json,
        limits: Limits::default(),
        pair: None,
        checksum: false,
        tally: None,
        as_of: None,
    };
    let labels = [from.label(), to.label()];
    let labels = [labels[0].as_str(), labels[1].as_str()];
    match &from {
        Target::Workspace(ws) => {
            let pulled = super::files::pull_summary(ws, stage.path(), false).await?;
            if pulled.files_skipped > 0 {
                eprintln!(
                    "warning: {} file(s) of {ws} could not be staged here (see the warnings above) and are left out \
                     of the copy",
                    pulled.files_skipped
                );
            }
        }
        other => {
            let src = other.location(saved, &run.limits)?;
            let s = execute(&src, &staged, labels, &run).await?;
            problems(&s, &src)?;
        }
    }
    match &to {
        Target::Workspace(ws) => super::files::push(stage.path(), ws, false, json).await,
        other => {
            let dst = other.location(saved, &run.limits)?;
            let s = execute(&staged, &dst, labels, &run).await?;
            report(&s, Verb::Copy, &staged, json)
        }
    }
}

/// Runs a transfer, with progress while it goes, and records it in the history under `labels` (source and
/// destination as the user wrote them).
///
/// # Errors
/// A listing failure (failed files are in the summary).
pub async fn execute(from: &Location, to: &Location, labels: [&str; 2], run: &Run) -> Result<Summary> {
    let limits = &run.limits;
    let bar = progress::bar(run.progress, 0);
    bar.set_message("copying");
    let tick = bar.clone();
    let tally = run.tally.clone();
    let counted = tally.clone();
    let opts = Options {
        delete: run.verb == Verb::Mirror && run.delete,
        dry_run: run.dry_run,
        remove_source: run.verb == Verb::Move,
        concurrency: limits.concurrency,
        progress: Some(Arc::new(move |n| {
            tick.inc(n);
            if let Some(t) = &counted {
                t.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        })),
        pace: limits.pace.clone(),
        checksum: run.checksum,
        as_of: run
            .as_of
            .as_deref()
            .map(|t| super::output::parse_when(t, time::OffsetDateTime::now_utc(), false).context("--as-of"))
            .transpose()?
            .map(std::time::SystemTime::from),
        state_dir: (!run.dry_run).then(super::config::state_dir),
    };
    let command = match (&run.pair, run.verb) {
        (Some(_), _) => "pair",
        (None, Verb::Copy) => "copy",
        (None, Verb::Mirror) => "sync",
        (None, Verb::Move) => "move",
    };
    let (mut record, began) = history::Run::start(command, labels[0], labels[1]);
    record.dry_run = run.dry_run;
    record.pair.clone_from(&run.pair);
    // Listing both sides of a big tree takes a while: a spinner until the bytes to copy are known.
    let listing = progress::spinner(run.progress, &format!("listing {} and {}…", from.label(), to.label()));
    let result = transfer::copy(from, to, &opts, |bytes| {
        listing.finish_and_clear();
        bar.set_length(bytes);
        if let Some(t) = &tally {
            t.total.store(bytes, std::sync::atomic::Ordering::Relaxed);
            t.listed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;
    listing.finish_and_clear();
    progress::end(&bar, &result);
    match &result {
        Ok(s) => record.absorb(s),
        Err(e) => record.fail(e.to_string()),
    }
    if let Some(pace) = &limits.pace {
        record.slowdowns = pace.report().slowdowns;
    }
    history::record(record, began);
    Ok(result?)
}

/// Prints a transfer's skipped names and failed files on stderr, and fails when files failed.
///
/// # Errors
/// Some files failed.
pub fn problems(s: &Summary, from: &Location) -> Result<()> {
    for r in &s.refused {
        eprintln!("warning: skipped the name {:?} that {} listed: {}", r.name, from.label(), r.reason);
    }
    for f in &s.errors {
        eprintln!("error: {}{}", if f.path.is_empty() { String::new() } else { format!("{}: ", f.path) }, f.error);
    }
    if !s.errors.is_empty() {
        bail!("{} file(s) failed; run the command again to retry them", s.errors.len());
    }
    Ok(())
}

/// Prints what a transfer did, then its [`problems`].
///
/// # Errors
/// Some files failed.
pub fn report(s: &Summary, verb: Verb, from: &Location, json: bool) -> Result<()> {
    if json {
        print_json(s)?;
    } else {
        let would = if s.dry_run {
            "Would copy"
        } else if verb == Verb::Move {
            "Moved"
        } else {
            "Copied"
        };
        let mut line = format!("{would} {} file(s) ({}), {} unchanged", s.copied.len(), size(s.bytes), s.unchanged);
        if verb == Verb::Mirror {
            line.push_str(&format!(", {} {}", s.deleted.len(), if s.dry_run { "to delete" } else { "deleted" }));
        }
        if s.resumed > 0 {
            line.push_str(&format!(
                "; {} resumed where an earlier copy was cut off ({} already there)",
                s.resumed,
                size(s.resumed_bytes)
            ));
        }
        if s.hashed > 0 {
            line.push_str(&format!("; {} of the same size compared by content hash", s.hashed));
        }
        if s.unhashed > 0 {
            line.push_str(&format!(
                "; {} of the same size by size and time only (no hash to compare on one side)",
                s.unhashed
            ));
        }
        if s.dry_run {
            for p in &s.copied {
                println!("copy {p}");
            }
            for p in &s.deleted {
                println!("delete {p}");
            }
        }
        println!("{line}.");
    }
    problems(s, from)
}

/// `delete NAME:PATH [--recursive]`.
///
/// # Errors
/// Unknown connection, nothing there, a folder without `--recursive`.
pub async fn delete(spec: &str, recursive: bool, json: bool) -> Result<()> {
    let saved = Connections::load()?;
    let target = Target::parse(spec, &saved);
    if !matches!(target, Target::Connection { .. }) {
        bail!(
            "{spec:?} is not on a saved connection{}; `delete` takes NAME:PATH (workspace files go to the trash \
             with `cloudsync rm WORKSPACE:PATH`)",
            alias_note(spec, &saved)
        );
    }
    let loc = target.location(&saved, &Limits::default())?;
    let (mut run, began) = history::Run::start("delete", spec, "");
    let spinner = progress::spinner(!json, &format!("deleting {spec}…"));
    let result = transfer::delete(&loc, recursive).await;
    spinner.finish_and_clear();
    match &result {
        Ok(n) => run.copied = *n,
        Err(e) => run.fail(e.to_string()),
    }
    history::record(run, began);
    let n = result?;
    if json {
        print_json(&serde_json::json!({"deleted": n}))
    } else {
        println!("Deleted {n} file(s) from {spec}.");
        Ok(())
    }
}
