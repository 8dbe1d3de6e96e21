//! `cloudsync`: the client and, under `cloudsync server`, the server.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use cloudsync_cli::args::{
    Cli, Command, LocalCmd, ServerCmd, ServerCommon, ServerUserCmd, ServerWorkspaceCmd, TrashCmd,
};
use cloudsync_cli::client;
use cloudsync_cli::client::connections::Verb;
use cloudsync_cli::server::{self, DEFAULT_CONFIG, ServerConfig};
use zeroize::Zeroizing;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, matches!(cli.command, Command::Server(ServerCmd::Start(_))));
    // OpenDAL and reqwest can both pull in rustls providers; pick one explicitly, once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The server serves many clients at once: a worker per core. A client command's async side is network
    // I/O (hashing, chunking and file writes run on threads of their own), and one thread does it with fewer
    // cross-thread wake-ups, which leaves more of a small machine to the rest (measured: about 10% less
    // client CPU on a sync of 10,000 small files, the same speed on a 512 MiB file).
    let mut builder = if matches!(cli.command, Command::Server(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let result = run(cli).await;
        // Sessions opened on a NAS (Synology) are ended rather than left to expire there.
        cloudsync_connectors::sign_out().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, server: bool) {
    let default = match (verbose, server) {
        (0, false) => "warn",
        (0, true) => "info",
        (1, _) => "info,cloudsync=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOUDSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn load_config(common: &ServerCommon) -> Result<ServerConfig> {
    let mut cfg = ServerConfig::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        cfg.server.data_dir = Some(d.clone());
    }
    Ok(cfg)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server(cmd) => server_cmd(cmd).await,
        Command::Login(args) => client::login(args).await,
        Command::Logout => client::logout().await,
        Command::Whoami(j) => client::whoami(j.json).await,
        Command::Devices(cmd) => client::devices(cmd).await,
        Command::Mfa(cmd) => client::mfa::run(cmd).await,
        Command::Workspace(cmd) => client::workspace_cmd(cmd).await,
        Command::Push { local, remote, passphrase, json } => {
            let remote = client::connections::workspace_alias(&remote)?;
            client::push(&local, &remote, passphrase.passphrase_stdin, json.json).await
        }
        Command::Pull { remote, local, passphrase, json } => {
            let remote = client::connections::workspace_alias(&remote)?;
            client::pull(&remote, &local, passphrase.passphrase_stdin, json.json).await
        }
        Command::Sync { local, remote, watch, dry_run, delete, checksum, as_of, bwlimit, passphrase, json } => {
            let src = local.to_string_lossy();
            if client::connections::any_connection(&[&src, &remote])? {
                anyhow::ensure!(!watch, "--watch is for a folder synced with a workspace; use a pair for a schedule");
                let how = client::connections::How { delete, dry_run, checksum, as_of, bwlimit };
                client::connections::transfer(&src, &remote, Verb::Mirror, how, json.json).await
            } else {
                anyhow::ensure!(
                    !checksum && as_of.is_none() && bwlimit.is_none(),
                    "--checksum, --as-of and --bwlimit are for copies and mirrors with a saved connection"
                );
                anyhow::ensure!(
                    !delete,
                    "--delete is for one-way mirrors with a saved connection (`sync SRC DST`); a two-way sync with a \
                     workspace already sends deletions to the server's trash"
                );
                let remote = client::connections::workspace_alias(&remote)?;
                client::sync(&local, &remote, watch, dry_run, passphrase.passphrase_stdin, json.json).await
            }
        }
        Command::Status { local, forget, passphrase, json } => {
            client::status(&local, forget, passphrase.passphrase_stdin, json.json).await
        }
        Command::Ls { remote, recursive, passphrase, json } => {
            if client::connections::any_connection(&[&remote])? {
                client::connections::ls(&remote, recursive, json.json).await
            } else {
                let remote = client::connections::workspace_alias(&remote)?;
                client::ls(&remote, passphrase.passphrase_stdin, json.json).await
            }
        }
        Command::Connection(cmd) => client::connections::run(cmd).await,
        Command::Copy { src, dst, dry_run, checksum, as_of, bwlimit, json } => {
            let how = client::connections::How { delete: false, dry_run, checksum, as_of, bwlimit };
            client::connections::transfer(&src, &dst, Verb::Copy, how, json.json).await
        }
        Command::Move { src, dst, bwlimit, json } => {
            let how = client::connections::How { bwlimit, ..client::connections::How::default() };
            client::connections::transfer(&src, &dst, Verb::Move, how, json.json).await
        }
        Command::Delete { remote, recursive, json } => client::connections::delete(&remote, recursive, json.json).await,
        Command::History { limit, json } => client::history::show(limit, json.json),
        Command::Local(LocalCmd::Clear { history, connections, pairs, uploads, all }) => {
            client::history::clear(client::history::Clear { history, connections, pairs, uploads, all })
        }
        Command::Pair(cmd) => client::pairs::run(cmd).await,
        // A `cloudsync` connection names a workspace wherever a workspace path is taken.
        Command::Rm { remote, passphrase, json } => {
            let remote = client::connections::workspace_alias(&remote)?;
            client::rm(&remote, passphrase.passphrase_stdin, json.json).await
        }
        Command::Versions { remote, passphrase, json } => {
            let remote = client::connections::workspace_alias(&remote)?;
            client::versions(&remote, passphrase.passphrase_stdin, json.json).await
        }
        Command::Restore { remote, version, passphrase, json } => {
            let remote = client::connections::workspace_alias(&remote)?;
            client::restore(&remote, version, passphrase.passphrase_stdin, json.json).await
        }
        Command::Trash(TrashCmd::List { workspace, passphrase, json }) => {
            client::trash(&workspace, passphrase.passphrase_stdin, json.json).await
        }
        Command::Audit(cmd) => client::audit::run(cmd).await,
        Command::Apikey(cmd) => client::apikey::run(cmd).await,
        Command::Keys(cmd) => client::keys::run(cmd).await,
        Command::Share(cmd) => client::share::run(cmd).await,
    }
}

async fn server_cmd(cmd: ServerCmd) -> Result<()> {
    match cmd {
        ServerCmd::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        ServerCmd::Start(args) => {
            let mut cfg = load_config(&args.common)?;
            if let Some(l) = args.listen {
                cfg.server.listen = l;
            }
            let listener = tokio::net::TcpListener::bind(&cfg.server.listen).await.with_context(|| {
                format!(
                    "cannot listen on {} (is another server running there? pick another with --listen)",
                    cfg.server.listen
                )
            })?;
            let data_dir = cfg.data_dir();
            server::run(cfg, listener, shutdown_signal(), |s| {
                println!("CloudSync server listening on {}", s.url);
                println!("TLS certificate SHA-256 fingerprint: {}", cloudsync_sdk::format_fingerprint(&s.fingerprint));
                println!("Data directory: {}", data_dir.display());
                println!(
                    "Create an account: cloudsync server user create EMAIL --admin --data-dir {}",
                    data_dir.display()
                );
                let _ = std::io::stdout().flush();
            })
            .await
        }
        ServerCmd::User(ServerUserCmd::Create { email, admin, password_stdin, common }) => {
            let cfg = load_config(&common)?;
            let password = if password_stdin {
                client::read_stdin_line("password")?
            } else {
                let a = Zeroizing::new(
                    rpassword::prompt_password(format!("New password for {email}: "))
                        .context("cannot read the password")?,
                );
                let b = Zeroizing::new(rpassword::prompt_password("Repeat it: ").context("cannot read the password")?);
                anyhow::ensure!(*a == *b, "the two passwords differ; nothing was created");
                a
            };
            let user = server::create_user(&cfg, &email, &password, admin).await?;
            eprintln!(
                "Created account {} ({}){}.",
                user.email,
                user.id,
                if admin { ", server administrator" } else { "" }
            );
            Ok(())
        }
        ServerCmd::Gc(args) => {
            let cfg = load_config(&args.common)?;
            let grace = args.grace_hours.unwrap_or(cfg.storage.gc_grace_hours);
            let report = server::collect_garbage(&cfg, grace, args.dry_run).await?;
            if args.json.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", server::describe_gc(&report));
            }
            Ok(())
        }
        ServerCmd::Workspace(ServerWorkspaceCmd::ClearAllowlist { name, common }) => {
            let cfg = load_config(&common)?;
            let ws = server::build_core(&cfg).await?.operator_clear_allowlist(&name).await?;
            eprintln!(
                "Workspace {:?} ({}) has no IP allowlist now: every address can reach it. Its owners can set a new one with `cloudsync workspace settings`.",
                ws.name, ws.id
            );
            Ok(())
        }
        ServerCmd::User(ServerUserCmd::ResetMfa { email, common }) => {
            let cfg = load_config(&common)?;
            if server::build_core(&cfg).await?.operator_reset_mfa(&email).await? {
                eprintln!(
                    "Two-factor authentication is off for {email}; they log in with the password and can enable it again."
                );
            } else {
                eprintln!("Two-factor authentication was not on for {email}; nothing changed.");
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down; letting open requests finish");
}
