//! The client commands. Each talks to the server only through the SDK. `--json` prints one JSON document on
//! stdout; human output goes to stdout as text, and messages and progress to stderr.

pub mod apikey;
pub mod audit;
pub mod config;
pub mod connections;
pub mod credentials;
mod e2ee;
mod files;
pub mod history;
pub mod keys;
pub mod mfa;
pub(crate) mod output;
pub mod pairs;
pub mod share;
mod sync;

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use cloudsync_sdk::{Client, ErrorKind, Trust, format_fingerprint, parse_fingerprint, probe_fingerprint};
use cloudsync_types::api::{
    AddMemberRequest, CreateWorkspaceRequest, FreshProof, LoginRequest, Member, UpdateSettings, Workspace,
};
use cloudsync_types::{ErrorCode, Role, SessionId};
use zeroize::Zeroizing;

use crate::args::{DevicesCmd, LoginArgs, MembersCmd, WorkspaceCmd};
use config::ClientConfig;
use credentials::CredentialStore;
pub use files::{ls, pull, push, restore, rm, trash, versions};
use output::{print_json, table};
pub use sync::{status, sync};

/// Reads one line of standard input (a password or passphrase), without the newline.
///
/// # Errors
/// Empty input or a read failure.
pub fn read_stdin_line(what: &str) -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    if trimmed.is_empty() {
        bail!("standard input was empty; pipe the {what} in, e.g. `printf '%s\\n' \"$PASSWORD\" | cloudsync ...`");
    }
    Ok(trimmed)
}

/// Sends a request that needs a fresh proof of the account's owner (minting an API key or end-to-end keys,
/// changing an allowlist), answering the server's demand: a code from the authenticator app (given with
/// --totp, or asked for on a terminal), or, on a login older than 15 minutes, the password (read from
/// standard input with `password_stdin`, or asked for on a terminal). `send` makes the request with the proof.
pub(crate) async fn with_fresh_proof<T, F, Fut>(mut proof: FreshProof, password_stdin: bool, mut send: F) -> Result<T>
where
    F: FnMut(FreshProof) -> Fut,
    Fut: std::future::Future<Output = Result<T, cloudsync_sdk::Error>>,
{
    loop {
        match send(proof.clone()).await {
            Err(e) if e.kind() == ErrorKind::MfaRequired && proof.totp.is_none() => {
                if !std::io::stdin().is_terminal() {
                    bail!("{e}: pass --totp CODE");
                }
                proof.totp = Some(mfa::prompt_code("Code from your authenticator app: ")?.to_string());
            }
            Err(e) if e.code() == Some(ErrorCode::ReauthenticationRequired) && proof.password.is_none() => {
                let pw = if password_stdin {
                    read_stdin_line("password")?
                } else if std::io::stdin().is_terminal() {
                    Zeroizing::new(
                        rpassword::prompt_password("Your login is older than 15 minutes; password: ")
                            .context("cannot read the password")?,
                    )
                } else {
                    bail!(
                        "{e}: pass --password-stdin, or log in again (`cloudsync login`) and repeat within 15 minutes"
                    );
                };
                proof.password = Some(pw.to_string());
            }
            other => return Ok(other?),
        }
    }
}

/// Asks a yes/no question on the terminal.
fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("cannot read the answer")?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

fn trust_of(cfg: &ClientConfig) -> Result<Trust> {
    if let Some(ca) = &cfg.ca_cert {
        return Ok(Trust::CaFile(ca.clone()));
    }
    if cfg.system_roots {
        return Ok(Trust::System);
    }
    let fp = cfg.fingerprint.as_deref().context("the saved login has no certificate fingerprint; log in again")?;
    Ok(Trust::Fingerprint(parse_fingerprint(fp)?))
}

/// A client for the saved login, or for the API key in `CLOUDSYNC_API_KEY` when that is set (with the server
/// from `CLOUDSYNC_SERVER` or the saved login, and its certificate pinned by `CLOUDSYNC_SERVER_FINGERPRINT`,
/// the saved login's trust for the same server, or else the system roots).
///
/// # Errors
/// No saved login, or an unavailable credential store.
pub fn connect() -> Result<Client> {
    let cfg = ClientConfig::load()?;
    let env = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(key) = env("CLOUDSYNC_API_KEY").map(Zeroizing::new) {
        let server = env("CLOUDSYNC_SERVER").or_else(|| cfg.server.clone()).context(
            "CLOUDSYNC_API_KEY is set but no server is known: set CLOUDSYNC_SERVER=https://HOST:PORT (and CLOUDSYNC_SERVER_FINGERPRINT to the fingerprint the server printed)",
        )?;
        let trust = match env("CLOUDSYNC_SERVER_FINGERPRINT") {
            Some(fp) => Trust::Fingerprint(parse_fingerprint(&fp).context("CLOUDSYNC_SERVER_FINGERPRINT")?),
            None if cfg.server.as_deref().map(|s| s.trim_end_matches('/')) == Some(server.trim_end_matches('/')) => {
                trust_of(&cfg)?
            }
            None => Trust::System,
        };
        if !key.starts_with(cloudsync_types::api::API_KEY_PREFIX) {
            bail!("CLOUDSYNC_API_KEY does not hold a CloudSync API key (they start with csk_)");
        }
        return Ok(Client::new(&server, trust)?.with_token(key.as_str()));
    }
    let server =
        cfg.server.clone().context("not logged in: run `cloudsync login --server https://HOST:PORT --email EMAIL`")?;
    let token = CredentialStore::from_env()?
        .get(&server)?
        .context("no session token for this server in the credential store; run `cloudsync login` again")?;
    Ok(Client::new(&server, trust_of(&cfg)?)?.with_token(token.as_str()))
}

/// Resolves a workspace by name or id among the caller's workspaces.
///
/// # Errors
/// None or several match.
pub async fn workspace(client: &Client, name: &str) -> Result<Workspace> {
    Ok(client.workspaces().find_by_name(name).await?)
}

/// `cloudsync login`.
///
/// # Errors
/// Bad credentials, an unconfirmed or changed certificate, or no credential store.
pub async fn login(args: LoginArgs) -> Result<()> {
    let server = args.server.trim_end_matches('/').to_owned();
    if !server.starts_with("https://") {
        bail!("the server URL must start with https:// (CloudSync speaks TLS 1.3 only), e.g. https://127.0.0.1:8443");
    }
    let store = CredentialStore::from_env()?;
    let old = ClientConfig::load()?;
    let mut cfg =
        ClientConfig { server: Some(server.clone()), email: Some(args.email.clone()), ..ClientConfig::default() };
    let trust = if let Some(ca) = &args.ca_cert {
        cfg.ca_cert = Some(ca.clone());
        Trust::CaFile(ca.clone())
    } else if args.system_roots {
        cfg.system_roots = true;
        Trust::System
    } else {
        let fp = match (&args.fingerprint, old.server.as_deref() == Some(server.as_str())) {
            (Some(given), _) => parse_fingerprint(given)?,
            (None, true) if old.fingerprint.is_some() => {
                parse_fingerprint(old.fingerprint.as_deref().unwrap_or_default())?
            }
            (None, _) => {
                let seen = probe_fingerprint(&server).await?;
                eprintln!(
                    "The server presented a certificate with SHA-256 fingerprint\n  {}",
                    format_fingerprint(&seen)
                );
                eprintln!("Compare it with the fingerprint printed by `cloudsync server start` on the server.");
                if !std::io::stdin().is_terminal() || args.password_stdin {
                    bail!(
                        "cannot confirm the server's certificate without a terminal; pass --fingerprint {} if it matches the one the server printed",
                        format_fingerprint(&seen)
                    );
                }
                if !confirm("Trust this certificate?")? {
                    bail!("certificate not trusted; nothing was saved");
                }
                seen
            }
        };
        cfg.fingerprint = Some(hex::encode(fp));
        Trust::Fingerprint(fp)
    };
    let password = if args.password_stdin {
        read_stdin_line("password")?
    } else {
        Zeroizing::new(
            rpassword::prompt_password(format!("Password for {}: ", args.email)).context("cannot read the password")?,
        )
    };
    let device = args.device_name.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let client = Client::new(&server, trust)?;
    let mut req = LoginRequest {
        email: args.email.clone(),
        password: password.to_string(),
        device_name: device,
        totp: args.totp,
    };
    let resp = match client.auth().login(&req).await {
        Err(e) if e.kind() == ErrorKind::MfaRequired && req.totp.is_none() => {
            if !std::io::stdin().is_terminal() || args.password_stdin {
                bail!("{e}: pass --totp CODE");
            }
            req.totp = Some(mfa::prompt_code("Code from your authenticator app (or a recovery code): ")?.to_string());
            client.auth().login(&req).await?
        }
        other => other?,
    };
    store.set(&server, &resp.token)?;
    cfg.save()?;
    if args.json.json {
        print_json(&serde_json::json!({"server": server, "user": resp.user, "session_id": resp.session_id}))?;
    } else {
        eprintln!("Logged in to {server} as {}.", resp.user.email);
    }
    Ok(())
}

/// `cloudsync logout`.
///
/// # Errors
/// When the local token cannot be removed.
pub async fn logout() -> Result<()> {
    let cfg = ClientConfig::load()?;
    let Some(server) = cfg.server.clone() else {
        eprintln!("Not logged in.");
        return Ok(());
    };
    match connect() {
        Ok(client) => match client.auth().logout().await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Unauthenticated => {}
            Err(e) => {
                eprintln!("warning: the server did not confirm the logout ({e}); the local token is removed anyway")
            }
        },
        Err(e) => eprintln!("warning: {e:#}"),
    }
    CredentialStore::from_env()?.delete(&server)?;
    if let Some(email) = &cfg.email
        && let Err(e) = keys::forget_unlocked(&server, email)
    {
        // Unlocked end-to-end keys live as long as the login.
        eprintln!("warning: could not forget the unlocked end-to-end keys: {e:#}; run `cloudsync keys lock`");
    }
    eprintln!("Logged out of {server}.");
    Ok(())
}

/// `cloudsync whoami`.
///
/// # Errors
/// Not logged in or a server error.
pub async fn whoami(json: bool) -> Result<()> {
    let client = connect()?;
    let me = client.auth().whoami().await?;
    if json {
        return print_json(
            &serde_json::json!({"server": client.base_url(), "user": me.user, "session_id": me.session_id}),
        );
    }
    println!(
        "{} on {}{}",
        me.user.email,
        client.base_url(),
        if me.user.is_admin { " (server administrator)" } else { "" }
    );
    Ok(())
}

/// `cloudsync devices ...`.
///
/// # Errors
/// Not logged in or a server error.
pub async fn devices(cmd: DevicesCmd) -> Result<()> {
    let client = connect()?;
    match cmd {
        DevicesCmd::List(j) => {
            let list = client.devices().list().await?;
            if j.json {
                return print_json(&list);
            }
            let rows = list
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        format!("{}{}", d.name, if d.current { " (this device)" } else { "" }),
                        output::date(d.last_seen_at),
                        d.last_ip.clone(),
                    ]
                })
                .collect();
            table(&["ID", "DEVICE", "LAST SEEN", "ADDRESS"], rows);
        }
        DevicesCmd::Revoke { id } => {
            let id: SessionId =
                id.parse().map_err(|_| anyhow::anyhow!("{id:?} is not a device id; see `cloudsync devices list`"))?;
            client.devices().revoke(id).await?;
            eprintln!("Revoked device {id}; its token no longer works.");
        }
    }
    Ok(())
}

fn parse_role(s: &str) -> Result<Role> {
    s.parse::<Role>().map_err(|e| anyhow::anyhow!("{e}"))
}

/// `cloudsync workspace ...`.
///
/// # Errors
/// Not logged in or a server error.
pub async fn workspace_cmd(cmd: WorkspaceCmd) -> Result<()> {
    let client = connect()?;
    match cmd {
        WorkspaceCmd::Create { name, e2e_encryption, passphrase, yes, json } => {
            let w = if e2e_encryption {
                eprintln!(
                    "An end-to-end encrypted workspace: the server never sees its contents or names, so it cannot help if you lose your keys. If you lose both your passphrase and your recovery key, the data in it is unrecoverable, by you, the server's operator or anyone else."
                );
                // Standard input carries the passphrase with --passphrase-stdin, so there is no answer to read.
                let ask = !yes && !passphrase.passphrase_stdin && std::io::stdin().is_terminal();
                if ask && !confirm("Create it?")? {
                    bail!("nothing was created");
                }
                e2ee::create_e2ee_workspace(&client, &name, passphrase.passphrase_stdin).await?
            } else {
                client.workspaces().create(&CreateWorkspaceRequest { name, e2e_encryption, e2ee: None }).await?
            };
            if json.json {
                return print_json(&w);
            }
            eprintln!("Created workspace {:?} ({}).", w.name, w.id);
        }
        WorkspaceCmd::List(j) => {
            let list = client.workspaces().list().await?;
            if j.json {
                return print_json(&list);
            }
            let rows = list
                .iter()
                .map(|w| {
                    vec![
                        w.name.clone(),
                        w.role.to_string(),
                        if w.e2e_encryption { "e2ee" } else { "at rest" }.into(),
                        w.id.to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "ROLE", "ENCRYPTION", "ID"], rows);
        }
        WorkspaceCmd::Delete { name, yes } => {
            let w = workspace(&client, &name).await?;
            if !yes
                && std::io::stdin().is_terminal()
                && !confirm(&format!(
                    "Delete workspace {:?} and destroy its key? Its files cannot be recovered.",
                    w.name
                ))?
            {
                bail!("not deleted");
            }
            client.workspaces().delete(w.id).await?;
            eprintln!("Deleted workspace {:?}; its key is destroyed.", w.name);
        }
        WorkspaceCmd::Settings { name, require_mfa, ip_allowlist, clear_ip_allowlist, force, totp, json } => {
            let mut w = workspace(&client, &name).await?;
            let ip_allowlist = if clear_ip_allowlist {
                Some(Vec::new())
            } else {
                ip_allowlist.map(|l| l.into_iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect())
            };
            if require_mfa.is_some() || ip_allowlist.is_some() {
                let req = UpdateSettings { require_mfa, ip_allowlist, force, totp: None };
                let proof = FreshProof { totp, password: None };
                let ws = w.id;
                w = with_fresh_proof(proof, false, |p| {
                    let req = UpdateSettings { totp: p.totp, ..req.clone() };
                    let client = &client;
                    async move { client.workspaces().update_settings(ws, req).await }
                })
                .await?;
            }
            if json.json {
                return print_json(&serde_json::json!({
                    "workspace": w.name, "id": w.id, "require_mfa": w.require_mfa, "ip_allowlist": w.ip_allowlist,
                }));
            }
            println!(
                "{}: two-factor authentication {}",
                w.name,
                if w.require_mfa { "required of every member" } else { "not required" }
            );
            if w.ip_allowlist.is_empty() {
                println!("{}: reachable from any address (no IP allowlist)", w.name);
            } else {
                println!("{}: reachable only from {}", w.name, w.ip_allowlist.join(", "));
            }
        }
        WorkspaceCmd::Members(m) => members(&client, m).await?,
    }
    Ok(())
}

async fn members(client: &Client, cmd: MembersCmd) -> Result<()> {
    match cmd {
        MembersCmd::List { workspace: name, json } => {
            let w = workspace(client, &name).await?;
            let list = client.members(w.id).list().await?;
            if json.json {
                return print_json(&list);
            }
            table(
                &["EMAIL", "ROLE", "ADDED"],
                list.iter().map(|m| vec![m.email.clone(), m.role.to_string(), output::date(m.added_at)]).collect(),
            );
        }
        MembersCmd::Add { workspace: name, email, role, passphrase, yes, json } => {
            let (w, role) = (workspace(client, &name).await?, parse_role(&role)?);
            let m = if w.e2e_encryption {
                e2ee::add_member(client, &w, &email, role, passphrase.passphrase_stdin, yes).await?;
                member(client, &w, &email).await?
            } else {
                client.members(w.id).add(&AddMemberRequest { email, role }).await?
            };
            if json.json {
                return print_json(&m);
            }
            eprintln!("Added {} to {:?} as {}.", m.email, w.name, m.role);
        }
        MembersCmd::SetRole { workspace: name, email, role, passphrase, json } => {
            let (w, role) = (workspace(client, &name).await?, parse_role(&role)?);
            let m = if w.e2e_encryption {
                e2ee::set_role(client, &w, &email, role, passphrase.passphrase_stdin).await?;
                member(client, &w, &email).await?
            } else {
                let user = member(client, &w, &email).await?.user_id;
                client.members(w.id).set_role(user, role).await?
            };
            if json.json {
                return print_json(&m);
            }
            eprintln!("{} is now {} in {:?}.", m.email, m.role, w.name);
        }
        MembersCmd::Remove { workspace: name, email, passphrase } => {
            let w = workspace(client, &name).await?;
            if w.e2e_encryption {
                let epoch = e2ee::remove_member(client, &w, &email, passphrase.passphrase_stdin).await?;
                eprintln!("Removed {email} from {:?}; the workspace key was rotated (key epoch {epoch}).", w.name);
                return Ok(());
            }
            let user = member(client, &w, &email).await?.user_id;
            client.members(w.id).remove(user).await?;
            eprintln!("Removed {email} from {:?}.", w.name);
        }
    }
    Ok(())
}

async fn member(client: &Client, w: &Workspace, email: &str) -> Result<Member> {
    let list = client.members(w.id).list().await?;
    list.into_iter()
        .find(|m| m.email.eq_ignore_ascii_case(email.trim()))
        .with_context(|| format!("{email} is not a member of {:?} (see `cloudsync workspace members list`)", w.name))
}
