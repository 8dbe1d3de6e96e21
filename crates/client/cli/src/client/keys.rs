//! `cloudsync keys init|unlock|lock|fingerprint|recover`: a user's end-to-end encryption keys. They are
//! made, sealed and opened here, on the client; the server stores only the public identity and the sealed
//! blobs. Unlocked keys stay in the OS credential store until `keys lock`. Other accounts' fingerprints are
//! remembered on first sight (trust on first use) in `known_keys.json` in the state directory.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_crypto::e2ee::{self, PublicIdentity, RecoveryKey, UserKeys};
use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_types::api::UploadUserKeys;
use zeroize::Zeroizing;

use super::config::{state_dir, write_private};
use super::connect;
use super::credentials::CredentialStore;
use super::output::print_json;
use crate::args::KeysCmd;

/// Shortest passphrase accepted.
const MIN_PASSPHRASE: usize = 10;

/// Runs a keys command.
///
/// # Errors
/// Not logged in, a wrong passphrase or recovery key, keys the server altered, or a refused request.
pub async fn run(cmd: KeysCmd) -> Result<()> {
    let client = connect()?;
    match cmd {
        KeysCmd::Init { passphrase_stdin, json } => init(&client, passphrase_stdin, json.json).await,
        KeysCmd::Unlock { passphrase_stdin } => {
            let (user_id, email) = account(&client).await?;
            let (identity, mine) = own_identity(&client, &user_id, &email).await?;
            let passphrase = if passphrase_stdin {
                super::read_stdin_line("passphrase")?
            } else {
                prompt("Passphrase for your end-to-end keys: ")?
            };
            let sealed = B64.decode(&mine.sealed_by_passphrase).context("the server sent a malformed sealed key")?;
            let keys = e2ee::open_with_passphrase(&sealed, &passphrase, &user_id, &identity).map_err(|_| {
                anyhow::anyhow!("that passphrase does not open your keys (forgot it? `cloudsync keys recover`)")
            })?;
            cache(&client, &keys)?;
            eprintln!("Your end-to-end keys are unlocked on this device (fingerprint {}).", identity.fingerprint());
            Ok(())
        }
        KeysCmd::Lock => {
            CredentialStore::from_env()?.delete(&cache_account(&client))?;
            eprintln!("Your end-to-end keys are locked on this device.");
            Ok(())
        }
        KeysCmd::Fingerprint { email, yes, json } => fingerprint(&client, email.as_deref(), yes, json.json).await,
        KeysCmd::Recover { passphrase_stdin } => recover(&client, passphrase_stdin).await,
    }
}

async fn account(client: &Client) -> Result<([u8; 16], String)> {
    let me = client.auth().whoami().await?;
    Ok((*me.user.id.as_uuid().as_bytes(), me.user.email))
}

/// The caller's stored identity, checked to be signed for this account.
async fn own_identity(
    client: &Client,
    user_id: &[u8; 16],
    email: &str,
) -> Result<(PublicIdentity, cloudsync_types::api::MyUserKeys)> {
    let mine = match client.keys().me().await {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("you have no end-to-end keys yet: run `cloudsync keys init`")
        }
        other => other?,
    };
    let identity = PublicIdentity::from_bytes(&B64.decode(&mine.identity).context("malformed identity")?)?;
    identity
        .verify(user_id, email)
        .map_err(|_| anyhow::anyhow!("the server sent keys that are not signed for your account: refusing them"))?;
    Ok((identity, mine))
}

fn cache_account(client: &Client) -> String {
    format!("{}#e2ee", client.base_url())
}

fn cache(client: &Client, keys: &UserKeys) -> Result<()> {
    let secret = Zeroizing::new(hex::encode(keys.to_secret_bytes().as_ref()));
    CredentialStore::from_env()?.set(&cache_account(client), &secret)
}

fn prompt(question: &str) -> Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask on: pass --passphrase-stdin");
    }
    Ok(Zeroizing::new(rpassword::prompt_password(question).context("cannot read the passphrase")?))
}

fn new_passphrase(from_stdin: Option<Zeroizing<String>>) -> Result<Zeroizing<String>> {
    let p = match from_stdin {
        Some(p) => p,
        None => {
            let a = prompt("New passphrase for your end-to-end keys: ")?;
            let b = prompt("Repeat it: ")?;
            if *a != *b {
                bail!("the two passphrases differ; nothing was changed");
            }
            a
        }
    };
    if p.chars().count() < MIN_PASSPHRASE {
        bail!("the passphrase must have at least {MIN_PASSPHRASE} characters (a few words are easy to remember)");
    }
    Ok(p)
}

async fn init(client: &Client, passphrase_stdin: bool, json: bool) -> Result<()> {
    let (user_id, email) = account(client).await?;
    match client.keys().me().await {
        Ok(mine) => bail!(
            "you already have end-to-end keys (fingerprint {}); unlock them with `cloudsync keys unlock`",
            mine.fingerprint
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let passphrase = new_passphrase(if passphrase_stdin { Some(super::read_stdin_line("passphrase")?) } else { None })?;
    let keys = UserKeys::generate();
    let identity = keys.identity(&user_id, &email);
    let recovery = RecoveryKey::generate();
    let sealed_pass = e2ee::seal_with_passphrase(&keys, &passphrase, &user_id, &identity)?;
    let sealed_rec = e2ee::seal_with_recovery(&keys, &recovery, &user_id, &identity);
    client
        .keys()
        .upload(&UploadUserKeys {
            identity: B64.encode(identity.to_bytes()),
            sealed_by_passphrase: B64.encode(&sealed_pass),
            sealed_by_recovery: B64.encode(&sealed_rec),
        })
        .await?;
    cache(client, &keys)?;
    remember(&email, &identity.fingerprint())?;
    let shown = recovery.to_display();
    if json {
        return print_json(&serde_json::json!({"fingerprint": identity.fingerprint(), "recovery_key": shown.as_str()}));
    }
    println!("{}", shown.as_str());
    eprintln!("The line above is your recovery key. It is shown only now: write it down and keep it apart from");
    eprintln!("your passphrase. If you lose both, your end-to-end encrypted files cannot be recovered by anyone.");
    eprintln!("Your keys are made and unlocked on this device; fingerprint {}.", identity.fingerprint());
    Ok(())
}

async fn recover(client: &Client, passphrase_stdin: bool) -> Result<()> {
    let (user_id, email) = account(client).await?;
    let (identity, mine) = own_identity(client, &user_id, &email).await?;
    let (typed, new) = if passphrase_stdin {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = |what: &str| -> Result<Zeroizing<String>> {
            let line =
                Zeroizing::new(lines.next().with_context(|| format!("standard input ended before the {what}"))??);
            Ok(Zeroizing::new(line.trim().to_owned()))
        };
        let typed = next("recovery key")?;
        let pass = next("new passphrase")?;
        (typed, new_passphrase(Some(pass))?)
    } else {
        (prompt("Recovery key: ")?, new_passphrase(None)?)
    };
    let recovery = RecoveryKey::parse(&typed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sealed = B64.decode(&mine.sealed_by_recovery).context("the server sent a malformed sealed key")?;
    let keys = e2ee::open_with_recovery(&sealed, &recovery, &user_id, &identity)
        .map_err(|_| anyhow::anyhow!("that recovery key does not open your keys"))?;
    let sealed_pass = e2ee::seal_with_passphrase(&keys, &new, &user_id, &identity)?;
    client
        .keys()
        .upload(&UploadUserKeys {
            identity: mine.identity.clone(),
            sealed_by_passphrase: B64.encode(&sealed_pass),
            sealed_by_recovery: mine.sealed_by_recovery.clone(),
        })
        .await?;
    cache(client, &keys)?;
    eprintln!("Your keys have a new passphrase and are unlocked on this device; the recovery key still works.");
    Ok(())
}

fn known_path() -> std::path::PathBuf {
    state_dir().join("known_keys.json")
}

fn known() -> Result<BTreeMap<String, String>> {
    match std::fs::read(known_path()) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is not valid", known_path().display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", known_path().display())),
    }
}

fn remember(email: &str, fingerprint: &str) -> Result<()> {
    let mut all = known()?;
    all.insert(email.to_lowercase(), fingerprint.to_owned());
    std::fs::create_dir_all(state_dir()).with_context(|| format!("cannot create {}", state_dir().display()))?;
    write_private(&known_path(), &serde_json::to_vec_pretty(&all)?)
}

async fn fingerprint(client: &Client, email: Option<&str>, yes: bool, json: bool) -> Result<()> {
    let Some(email) = email else {
        let (user_id, me) = account(client).await?;
        let (identity, _) = own_identity(client, &user_id, &me).await?;
        let fp = identity.fingerprint();
        if json {
            return print_json(&serde_json::json!({"email": me, "fingerprint": fp}));
        }
        println!("{fp}");
        return Ok(());
    };
    let theirs = match client.keys().public(email).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("{email} has no end-to-end keys yet (they run `cloudsync keys init`)")
        }
        other => other?,
    };
    let identity = PublicIdentity::from_bytes(&B64.decode(&theirs.identity).context("malformed identity")?)?;
    identity
        .verify(theirs.user_id.as_uuid().as_bytes(), &theirs.email)
        .map_err(|_| anyhow::anyhow!("the server sent keys for {email} that {email} did not sign: refusing them"))?;
    if !theirs.email.eq_ignore_ascii_case(email.trim()) {
        bail!("the server answered for {} when asked for {email}: refusing", theirs.email);
    }
    let fp = identity.fingerprint();
    let before = known()?.get(&theirs.email.to_lowercase()).cloned();
    let status = match before.as_deref() {
        None => "first seen",
        Some(b) if b == fp => "unchanged",
        Some(b) if yes => {
            eprintln!("Accepting the new fingerprint of {email} (it was {b}).");
            "changed, accepted"
        }
        Some(b) => bail!(
            "the end-to-end keys of {email} CHANGED: they were {b} and are now {fp}. Either {email} made new keys, or \
             someone (the server) is substituting them. Check with {email} in person or by phone, then run again with --yes"
        ),
    };
    if status != "unchanged" {
        remember(&theirs.email, &fp)?;
    }
    if json {
        return print_json(&serde_json::json!({"email": theirs.email, "fingerprint": fp, "status": status}));
    }
    println!("{fp}");
    if status == "first seen" {
        eprintln!(
            "First time this device sees {email}'s keys: compare the fingerprint with {email} in person or by phone."
        );
    }
    Ok(())
}
