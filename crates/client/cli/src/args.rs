//! Command-line arguments. The command forms here are a contract that docs and scripts rely on: add options,
//! never rename or drop one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// CloudSync: encrypted file sync for teams.
#[derive(Debug, Parser)]
#[command(name = "cloudsync", version, about)]
pub struct Cli {
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run and administer a CloudSync server.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Log in to a server and remember the session in the OS credential store.
    Login(LoginArgs),
    /// End this device's session and forget its token.
    Logout,
    /// Show the logged-in account.
    Whoami(JsonFlag),
    /// List or revoke your sessions (devices).
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Two-factor authentication with an authenticator app (TOTP), and recovery codes.
    #[command(subcommand)]
    Mfa(MfaCmd),
    /// Create, list and delete workspaces, and manage their members.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Upload a local folder (or file) to WORKSPACE[:PATH]. Only changed files are sent.
    Push {
        /// Local folder or file.
        local: PathBuf,
        /// Destination: WORKSPACE or WORKSPACE:PATH.
        remote: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Download WORKSPACE[:PATH] into a local folder.
    Pull {
        /// Source: WORKSPACE or WORKSPACE:PATH.
        remote: String,
        /// Local folder (created if missing).
        local: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Two-way sync of a local folder with WORKSPACE[:PATH]: changes on either side flow to the other,
    /// deletions go to the server's trash, and a file changed on both sides keeps both versions
    /// ("NAME (conflicted copy from DEVICE DATE).EXT"). Patterns in LOCAL_DIR/.cloudsyncignore are skipped.
    /// With a saved connection on either side (`sync SRC DST`): a one-way mirror of SRC into DST.
    Sync {
        /// Local folder (must exist); for a mirror, SRC: a local path or NAME:PATH.
        local: PathBuf,
        /// WORKSPACE or WORKSPACE:PATH; for a mirror, DST: a local path or NAME:PATH.
        remote: String,
        /// Keep running: sync again on local changes and when the server's change journal moves.
        #[arg(long)]
        watch: bool,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// One-way mirror (when either side is a saved connection, `sync SRC DST`): also delete files in DST
        /// that SRC does not have.
        #[arg(long)]
        delete: bool,
        /// Compare files of the same size by content hash, whatever their times, where both sides give one
        /// (local files are read; S3 gives MD5 entity tags); elsewhere by size and time.
        #[arg(long)]
        checksum: bool,
        /// Copy SRC as it was at this time (a versioned S3 bucket: each file's version then, without those
        /// created or deleted since): an RFC 3339 time, a date, or a span back from now (24h, 7d).
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Bandwidth cap in bytes per second, reading and writing: 512K, 10M, 1G (binary units).
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show what a sync of LOCAL_DIR would change now, including conflicts.
    Status {
        /// A folder synced before with `cloudsync sync`.
        local: PathBuf,
        /// Forget the folder's pairing (its sync index) so it can be synced elsewhere; files are untouched.
        #[arg(long)]
        forget: bool,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List files in WORKSPACE[:PATH], or in a folder of a saved connection (NAME:PATH).
    Ls {
        /// WORKSPACE, WORKSPACE:PATH or NAME:PATH.
        remote: String,
        /// On a connection: list everything below the folder, not just its entries.
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Move a file or folder to the workspace trash (restorable).
    Rm {
        /// WORKSPACE:PATH.
        remote: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List a file's versions.
    Versions {
        /// WORKSPACE:PATH.
        remote: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Restore a file from the trash, or make an older version current again.
    Restore {
        /// WORKSPACE:PATH.
        remote: String,
        /// Version number to restore (default: from the trash, the latest; otherwise the previous version).
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the trash.
    #[command(subcommand)]
    Trash(TrashCmd),
    /// Storage accounts you control (S3, R2, SFTP, FTP/FTPS, WebDAV, Dropbox, OneDrive, pCloud): add, list,
    /// show, test, remove. Settings go to the config file, secrets to the OS credential store.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Copy new and changed files from SRC to DST: local paths, NAME:PATH on saved connections, and
    /// WORKSPACE:PATH (local to workspace is a push, workspace to local a pull; between a workspace and a
    /// connection through a staging folder). A folder's contents go into DST; files DST already has (same size,
    /// not older) are skipped.
    Copy {
        /// Source: a local path or NAME:PATH.
        src: String,
        /// Destination: a local path or NAME:PATH.
        dst: String,
        /// Show what would be copied, copy nothing.
        #[arg(long)]
        dry_run: bool,
        /// Compare files of the same size by content hash, whatever their times, where both sides give one
        /// (local files are read; S3 gives MD5 entity tags); elsewhere by size and time.
        #[arg(long)]
        checksum: bool,
        /// Copy SRC as it was at this time (a versioned S3 bucket: each file's version then, without those
        /// created or deleted since): an RFC 3339 time, a date, or a span back from now (24h, 7d).
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Bandwidth cap in bytes per second, reading and writing: 512K, 10M, 1G (binary units).
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Move files from SRC to DST: copy, then delete each source file once it is at the destination.
    Move {
        /// Source: a local path or NAME:PATH.
        src: String,
        /// Destination: a local path or NAME:PATH.
        dst: String,
        /// Bandwidth cap in bytes per second, reading and writing: 512K, 10M, 1G (binary units).
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The local record of copies, syncs, moves and deletes with connections, newest first.
    History {
        /// Show at most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Erase what this device keeps for the file manager.
    #[command(subcommand)]
    Local(LocalCmd),
    /// Sync pairs: a saved one-way copy (or mirror) from SRC to DST, run by hand or on a schedule, with caps
    /// of its own (bandwidth, requests per second, files at once) so that it never overloads its source.
    #[command(subcommand)]
    Pair(PairCmd),
    /// Delete a file (or, with --recursive, a folder) on a saved connection. This is not a workspace's trash:
    /// it is gone from the remote.
    Delete {
        /// NAME:PATH.
        remote: String,
        /// Delete a folder and everything in it.
        #[arg(short, long)]
        recursive: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// End-to-end encryption keys: make them, unlock and lock them, compare fingerprints, recover them.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// API keys for scripts and services: `CLOUDSYNC_API_KEY=csk_... cloudsync ...` runs any command with one.
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// Share links: a file anyone with the link can download (no account needed).
    #[command(subcommand)]
    Share(ShareCmd),
    /// Read, export and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

/// `keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Make your end-to-end encryption keys: asks for a passphrase (twice) and prints a recovery key once.
    /// Keep the recovery key apart from the passphrase: with neither, end-to-end encrypted data is lost.
    Init {
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
        /// Your authenticator app's current code, when two-factor authentication is on (asked for on a
        /// terminal when missing).
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Open your keys with the passphrase and keep them in the OS credential store until `keys lock`.
    Unlock {
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Forget the unlocked keys on this device.
    Lock,
    /// Show a fingerprint to compare in person or by phone: yours, or another account's. Another account's is
    /// remembered the first time; a changed one is refused unless confirmed.
    Fingerprint {
        /// Whose (default: yours).
        email: Option<String>,
        /// Accept a fingerprint that changed since it was first seen (after checking it with its owner).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Set a new passphrase with the recovery key. With --passphrase-stdin, standard input holds two lines:
    /// the recovery key, then the new passphrase.
    Recover {
        /// Read the recovery key and the new passphrase from standard input (two lines).
        #[arg(long)]
        passphrase_stdin: bool,
        /// Your authenticator app's current code, when two-factor authentication is on.
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
    },
}

/// `apikey ...`.
#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Create a key; its secret (csk_...) is printed once. Asks for an authenticator code when two-factor
    /// authentication is on.
    Create {
        /// A name for the key, unique among yours.
        name: String,
        /// The highest role it acts with (in each workspace, the lower of this and your own role).
        #[arg(long, value_name = "viewer|editor|admin")]
        role: String,
        /// Limit it to this workspace (name or id; repeat for more). Default: all of yours.
        #[arg(long = "workspace", value_name = "NAME")]
        workspaces: Vec<String>,
        /// When it stops working: a span (90d, 12h, 2w), a date (2027-01-01) or `never`.
        #[arg(long, value_name = "WHEN", default_value = "90d")]
        expires: String,
        /// The authenticator app's current code (asked for on a terminal when needed).
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
        /// Read the account password from standard input (asked for when the login is older than 15 minutes
        /// and two-factor authentication is off).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List your keys (never their secrets).
    List(JsonFlag),
    /// Give a key a new secret (printed once); the old one keeps working for --grace only.
    Rotate {
        /// The key's name (or id).
        name: String,
        /// How long the old secret keeps working: 0 (default), 30m, 24h, up to 30d.
        #[arg(long, value_name = "SPAN", default_value = "0")]
        grace: String,
        /// The authenticator app's current code (asked for on a terminal when needed).
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
        /// Read the account password from standard input (asked for when the login is older than 15 minutes
        /// and two-factor authentication is off).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key's name (or id).
        name: String,
    },
}

/// `share ...`.
#[derive(Debug, Subcommand)]
pub enum ShareCmd {
    /// Make a link to WORKSPACE:PATH and print its URL (shown once). Downloads: `curl -OJ URL`, or with a
    /// password `curl -d password=... -OJ URL`; a browser gets a password form.
    Create {
        /// WORKSPACE:PATH of a file.
        remote: String,
        /// Protect the link with a password read from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// When the link stops working: a span (7d, 12h), a date (2027-01-01) or `never`.
        #[arg(long, value_name = "WHEN", default_value = "7d")]
        expires: String,
        /// Stop after this many downloads.
        #[arg(long, value_name = "N")]
        max_downloads: Option<u64>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List live links: of one workspace, or of every workspace where you can make them.
    List {
        /// Workspace name or id.
        workspace: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke a link at once (yours, or any as a workspace admin).
    Revoke {
        /// The link's id (from `share list`).
        id: String,
        /// The workspace (default: searched among yours).
        #[arg(long)]
        workspace: Option<String>,
    },
}

/// `audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit rows, newest first: a workspace's (its Admins and Owners), or without --workspace your
    /// account's events (logins, devices, MFA, API keys; every account's for a server administrator).
    /// --json prints JSON Lines and --csv CSV, for export; both read every matching row unless --limit says
    /// otherwise.
    List {
        /// Workspace name or id.
        #[arg(long)]
        workspace: Option<String>,
        /// From this time: 2026-01-01, 2026-01-01T09:30:00Z, or a span back from now (30m, 12h, 7d).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Up to this time (a date alone includes that whole day, UTC); same forms as --since.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Comma-separated events, e.g. auth.login,file.access,settings.changed; file.* matches a group.
        #[arg(long, value_name = "EVENTS")]
        events: Option<String>,
        /// Only rows by this account.
        #[arg(long, value_name = "EMAIL")]
        actor: Option<String>,
        /// At most this many rows (default: 100 as a table; all with --json or --csv).
        #[arg(long)]
        limit: Option<u64>,
        /// JSON Lines: one JSON object per row.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV with a header row.
        #[arg(long)]
        csv: bool,
    },
    /// Re-hash the audit chain and name the first broken row (exit status 1 when one is broken). Without
    /// --workspace: every workspace you administer, and the account chain if you are a server administrator.
    Verify {
        /// Workspace name or id.
        #[arg(long)]
        workspace: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `--json`.
#[derive(Debug, Clone, Copy, Args)]
pub struct JsonFlag {
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--passphrase-stdin` of the commands that use end-to-end keys in passing (creating an end-to-end
/// encrypted workspace, changing its members).
#[derive(Debug, Clone, Copy, Args)]
pub struct PassphraseFlag {
    /// End-to-end encrypted workspace: read your keys' passphrase from the first line of standard input
    /// (when they are locked on this device).
    #[arg(long)]
    pub passphrase_stdin: bool,
}

/// `cloudsync server ...`.
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// Start the server (creates its data directory, database, master key and certificate on first run).
    Start(ServerStartArgs),
    /// Print a commented example configuration.
    DefaultConfig,
    /// Manage accounts directly in the server's database (run on the server host).
    #[command(subcommand)]
    User(ServerUserCmd),
    /// Workspace break-glass tools for the operator (run on the server host).
    #[command(subcommand)]
    Workspace(ServerWorkspaceCmd),
    /// Give back the space of chunks no file version names, now (the server also does it every
    /// `storage.gc_interval_hours`). Safe while the server runs.
    Gc(ServerGcArgs),
}

/// `server gc`.
#[derive(Debug, Clone, Args)]
pub struct ServerGcArgs {
    #[command(flatten)]
    pub common: ServerCommon,
    /// Grace period in hours (default: `storage.gc_grace_hours`, 24): unreferenced chunks are condemned once
    /// they are this old, and deleted when they are still unreferenced this long after.
    #[arg(long)]
    pub grace_hours: Option<u64>,
    /// Count what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `server workspace ...`.
#[derive(Debug, Subcommand)]
pub enum ServerWorkspaceCmd {
    /// Remove a workspace's IP allowlist, for owners who locked themselves out (audited).
    ClearAllowlist {
        /// Workspace name, or id when several share the name.
        name: String,
        #[command(flatten)]
        common: ServerCommon,
    },
}

/// Options shared by server commands.
#[derive(Debug, Clone, Args)]
pub struct ServerCommon {
    /// Data directory (database, chunks, master key, certificate).
    #[arg(long, env = "CLOUDSYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (TOML; see `cloudsync server default-config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `server start`.
#[derive(Debug, Clone, Args)]
pub struct ServerStartArgs {
    #[command(flatten)]
    pub common: ServerCommon,
    /// Address to listen on, e.g. 127.0.0.1:8443 (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<String>,
}

/// `server user ...`.
#[derive(Debug, Subcommand)]
pub enum ServerUserCmd {
    /// Create an account.
    Create {
        /// Email address.
        email: String,
        /// Make the account a server administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        common: ServerCommon,
    },
    /// Turn two-factor authentication off for an account that lost its authenticator and its recovery codes
    /// (audited). The user logs in with the password and can enable it again.
    ResetMfa {
        /// Email address.
        email: String,
        #[command(flatten)]
        common: ServerCommon,
    },
}

/// `login`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Server URL, e.g. https://files.example.com:8443.
    #[arg(long, env = "CLOUDSYNC_SERVER")]
    pub server: String,
    /// Account email.
    #[arg(long)]
    pub email: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Expected SHA-256 fingerprint of the server's certificate (as printed by `cloudsync server start`).
    #[arg(long, env = "CLOUDSYNC_SERVER_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Trust certificates issued by this CA (PEM) instead of pinning a fingerprint.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Trust the operating system's root certificates instead of pinning.
    #[arg(long, conflicts_with_all = ["fingerprint", "ca_cert"])]
    pub system_roots: bool,
    /// Name of this device in the device list (default: the host name).
    #[arg(long)]
    pub device_name: Option<String>,
    /// The code from your authenticator app (or a recovery code), for an account with two-factor
    /// authentication on. Asked for on a terminal when needed.
    #[arg(long, value_name = "CODE")]
    pub totp: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `mfa ...`.
#[derive(Debug, Subcommand)]
pub enum MfaCmd {
    /// Turn two-factor authentication on: shows a QR code and the otpauth URI for your authenticator app, asks
    /// for its first code, and prints your recovery codes once. With --json: prints the URI and secret and
    /// returns; finish with `cloudsync mfa confirm CODE`. On a login older than 15 minutes the password is
    /// asked for (or read with --password-stdin).
    Enable {
        /// Read the account password from the first line of standard input (needed on an older login).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Finish turning two-factor authentication on with the app's first code; prints the recovery codes once.
    Confirm {
        /// The 6-digit code the app shows.
        code: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Turn two-factor authentication off (needs a current code or a recovery code).
    Disable {
        /// The app's current code or a recovery code (asked for on a terminal when missing).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// How many recovery codes are left; with --regenerate, replace them all (needs a current code).
    RecoveryCodes {
        /// Make new codes; the old ones stop working.
        #[arg(long)]
        regenerate: bool,
        /// The app's current code or a recovery code (asked for on a terminal when missing).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Whether two-factor authentication is on.
    Status(JsonFlag),
}

/// `devices ...`.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// List your sessions.
    List(JsonFlag),
    /// Revoke a session at once.
    Revoke {
        /// Session id (from `devices list`).
        id: String,
    },
}

/// `workspace ...`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCmd {
    /// Create a workspace you own.
    Create {
        /// Name.
        name: String,
        /// End-to-end encryption (the server never sees contents or names). Needs your end-to-end keys
        /// (`cloudsync keys init`); asks for their passphrase unless they are unlocked.
        #[arg(long)]
        e2e_encryption: bool,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List your workspaces.
    List(JsonFlag),
    /// Delete a workspace and destroy its key (Owner). Asks for confirmation on a terminal.
    Delete {
        /// Name or id.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Show a workspace's settings, or change them (Owner).
    Settings {
        /// Name or id.
        name: String,
        /// Require two-factor authentication of every member (yours must be on first).
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        require_mfa: Option<bool>,
        /// Accept requests (sessions, API keys, share links) only from these networks, comma-separated, e.g.
        /// 192.168.1.0/24,10.0.0.0/8,2001:db8::/32. Replaces the current list.
        #[arg(long, value_name = "CIDR,...", value_delimiter = ',', conflicts_with = "clear_ip_allowlist")]
        ip_allowlist: Option<Vec<String>>,
        /// Remove the IP allowlist: every address may reach the workspace again.
        #[arg(long)]
        clear_ip_allowlist: bool,
        /// Apply an allowlist even though it leaves out your own address (you lose access with this request).
        #[arg(long)]
        force: bool,
        /// Your authenticator app's current code: changing the allowlist asks for one when two-factor
        /// authentication is on (asked for on a terminal when missing).
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Manage members.
    #[command(subcommand)]
    Members(MembersCmd),
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(format!("{other:?}: say on or off")),
    }
}

/// `workspace members ...`.
#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// List members.
    List {
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add an existing account.
    Add {
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
        /// Account email.
        email: String,
        /// Role to give.
        #[arg(long, default_value = "viewer")]
        role: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        /// End-to-end encrypted workspace: accept the member's keys although their fingerprint changed since
        /// this device first saw it.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Change a member's role.
    SetRole {
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
        /// Member email.
        email: String,
        /// New role.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a member. In an end-to-end encrypted workspace this also rotates the workspace key, so the
    /// removed member cannot read what is written afterwards.
    Remove {
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
        /// Member email.
        email: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
    },
}

/// `trash ...`.
#[derive(Debug, Subcommand)]
pub enum TrashCmd {
    /// List deleted files.
    List {
        /// Workspace name or id.
        workspace: String,
        #[command(flatten)]
        passphrase: PassphraseFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `connection ...`.
#[derive(Debug, Subcommand)]
pub enum ConnectionCmd {
    /// Save a connection. Its secret (password or secret key) is asked for, or read with --secret-stdin, and
    /// kept in the OS credential store; dropbox, onedrive and pcloud sign in through a browser (or onedrive's
    /// --device-code) and keep the token they get there.
    Add(Box<ConnectionAddArgs>),
    /// List the saved connections.
    List(JsonFlag),
    /// Show a connection's settings (its secret is masked).
    Show {
        /// Connection name.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Connect and list the connection's root, to check settings and credentials.
    Test {
        /// Connection name.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Forget a connection and delete its secret from the credential store.
    Remove {
        /// Connection name.
        name: String,
    },
}

/// `connection add`.
#[derive(Debug, Args)]
pub struct ConnectionAddArgs {
    /// Name used as NAME:PATH (letters, digits, '-', '_', '.').
    pub name: String,
    /// Storage type: s3, r2, sftp, ftp, ftps, webdav, synology (DSM's File Station), dropbox, onedrive,
    /// pcloud, or cloudsync (a workspace of the logged-in account).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_kind)]
    pub kind: cloudsync_connectors::Kind,
    /// s3, webdav: service URL (https://...). synology: DSM's address (https://NAS:5001). dropbox, onedrive, pcloud: API URL when not the provider's
    /// own (a national cloud, pCloud's EU host https://eapi.pcloud.com, or a compatible test server).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// s3: region (default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// s3, r2: bucket.
    #[arg(long)]
    pub bucket: Option<String>,
    /// r2: Cloudflare account id.
    #[arg(long)]
    pub account_id: Option<String>,
    /// s3, r2: access key id (the secret key is asked for, or read with --secret-stdin).
    #[arg(long)]
    pub access_key_id: Option<String>,
    /// sftp, ftp, ftps: host name or address. synology: the NAS, instead of --endpoint (https://HOST:5001).
    #[arg(long)]
    pub host: Option<String>,
    /// sftp, ftp, ftps, synology: port (default 22, 21 or 5001).
    #[arg(long)]
    pub port: Option<u16>,
    /// sftp, ftp, ftps, webdav, synology: user name (synology: a DSM account allowed File Station).
    #[arg(long)]
    pub user: Option<String>,
    /// sftp: SSH private key file; its passphrase, if it has one, is asked for (or read with --secret-stdin)
    /// and kept in the credential store. Without --key-file, sftp signs in with a password. The server's host
    /// key is pinned on first use (OpenSSH known_hosts) and a changed key is refused.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// synology: the 2-step verification code the account's authenticator app shows now. The NAS is signed in
    /// to at once and enrols this device, whose token then goes with the password to the credential store, so
    /// later sign-ins need no code.
    #[arg(long, value_name = "CODE")]
    pub otp_code: Option<String>,
    /// Folder on the remote that NAME: means (default: its root; for FTP, the folder the server signs the user in to).
    #[arg(long)]
    pub root: Option<String>,
    /// cloudsync: workspace name.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Read the secret (password, secret key or key passphrase) from the first line of standard input. dropbox, onedrive,
    /// pcloud: a refresh token (pCloud: an access token) obtained elsewhere, instead of signing in here.
    #[arg(long)]
    pub secret_stdin: bool,
    /// dropbox, onedrive, pcloud: OAuth client id of the app you registered with the provider (redirect URI
    /// http://127.0.0.1:53682/, or the port of --oauth-port).
    #[arg(long)]
    pub client_id: Option<String>,
    /// pcloud: read the app's client secret from standard input (asked for on a terminal otherwise); it is used
    /// once to finish the sign-in and is not kept.
    #[arg(long, conflicts_with = "secret_stdin")]
    pub client_secret_stdin: bool,
    /// dropbox, onedrive, pcloud: URL of the sign-in pages (and, for onedrive, of the token service) when not
    /// the provider's own; dropbox's and pcloud's token service is on the --endpoint host.
    #[arg(long, value_name = "URL")]
    pub auth_endpoint: Option<String>,
    /// onedrive: sign in with a code entered on another device, instead of a browser on this one.
    #[arg(long)]
    pub device_code: bool,
    /// dropbox, onedrive, pcloud: print the sign-in address instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// dropbox, onedrive, pcloud: loopback port the browser returns to after signing in (0: any free port,
    /// for providers that accept any port on 127.0.0.1).
    #[arg(long, value_name = "PORT", default_value_t = cloudsync_connectors::oauth::DEFAULT_PORT)]
    pub oauth_port: u16,
    /// Accept plain FTP or an http:// endpoint (passwords and files cross the network unencrypted).
    #[arg(long)]
    pub allow_insecure: bool,
    /// Trust the CA in this PEM file (for a server with a private CA) instead of the system's roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Overwrite a saved connection of the same name.
    #[arg(long)]
    pub replace: bool,
}

fn parse_kind(s: &str) -> Result<cloudsync_connectors::Kind, String> {
    s.parse().map_err(|e: cloudsync_connectors::Error| e.to_string())
}

/// `pair ...`.
#[derive(Debug, Subcommand)]
pub enum PairCmd {
    /// Save a pair. It copies new and changed files from --from to --to (with --delete, a mirror).
    Create(Box<PairCreateArgs>),
    /// List the pairs, with when each last ran and runs next.
    List(JsonFlag),
    /// Run a pair now (whatever its schedule), under its caps.
    Run {
        /// Pair name.
        name: String,
        /// Show what would be copied (and deleted), change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Forget a pair (files already copied stay).
    Remove {
        /// Pair name.
        name: String,
    },
    /// Run each pair that has a schedule when it is due, one at a time, until stopped (Ctrl-C). A failed run is
    /// tried again sooner (after a minute, doubling each time), never later than its schedule.
    Daemon {
        /// Run the pairs that are due now, then exit (for cron or a systemd timer).
        #[arg(long)]
        once: bool,
        /// While a pair runs, log how far it is this often: 30s, 5m, 1h (0 for never).
        #[arg(long, value_name = "DURATION", default_value = "1m")]
        status_every: String,
    },
}

/// `pair create`.
#[derive(Debug, Args)]
pub struct PairCreateArgs {
    /// Name of the pair (letters, digits, '-', '_', '.').
    pub name: String,
    /// Source: a local folder or NAME:PATH on a saved connection.
    #[arg(long)]
    pub from: String,
    /// Destination: a local folder or NAME:PATH on a saved connection.
    #[arg(long)]
    pub to: String,
    /// Run on this schedule under `cloudsync pair daemon`: 30s, 15m, 1h, 1h30m, 1d (none: only by hand).
    #[arg(long, value_name = "DURATION")]
    pub every: Option<String>,
    /// Bandwidth cap in bytes per second, reading and writing: 512K, 10M, 1G (binary units).
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// Requests per second at most (HTTP requests for S3, R2 and WebDAV; files copied or deleted for FTP and
    /// SFTP). The run also slows down below it when a remote answers 429 or 503 or times out.
    #[arg(long, value_name = "N")]
    pub max_requests_per_second: Option<f64>,
    /// Files transferred at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Also delete files in the destination that the source no longer has (a one-way mirror).
    #[arg(long)]
    pub delete: bool,
    /// Compare files of the same size by content hash where both sides give one (see `copy --checksum`).
    #[arg(long)]
    pub checksum: bool,
    /// Copy the source as it was this long ago at each run (a versioned S3 bucket; see `copy --as-of`):
    /// a span such as 1h or 1d, so that a change or a deletion reaches the destination only after it.
    #[arg(long, value_name = "SPAN")]
    pub as_of: Option<String>,
    /// Overwrite a pair of the same name.
    #[arg(long)]
    pub replace: bool,
}

/// `local ...`.
#[derive(Debug, Subcommand)]
pub enum LocalCmd {
    /// Erase the transfer history, the saved connections (with their secrets in the OS credential store), the
    /// sync pairs, what is kept of cut-off uploads, or all of them.
    Clear {
        /// The transfer history.
        #[arg(long)]
        history: bool,
        /// Saved connections, and their secrets in the OS credential store.
        #[arg(long)]
        connections: bool,
        /// Saved sync pairs and when they last ran.
        #[arg(long)]
        pairs: bool,
        /// What is kept of uploads cut off (S3 multipart uploads, Dropbox upload sessions) for a later copy to
        /// take up: the next copy of such a file sends it whole.
        #[arg(long)]
        uploads: bool,
        /// All of these.
        #[arg(long)]
        all: bool,
    },
}
