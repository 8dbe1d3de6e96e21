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
use cloudsync_types::api::{FreshProof, UploadUserKeys};
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
    if let KeysCmd::Lock = cmd {
        // No server needed: locking forgets what this device holds.
        let cfg = super::config::ClientConfig::load()?;
        let (Some(server), Some(email)) = (cfg.server, cfg.email) else {
            eprintln!("Not logged in; nothing is unlocked.");
            return Ok(());
        };
        forget_unlocked(&server, &email)?;
        eprintln!("Your end-to-end keys are locked on this device.");
        return Ok(());
    }
    let client = connect()?;
    match cmd {
        KeysCmd::Init { passphrase_stdin, totp, json } => init(&client, passphrase_stdin, totp, json.json).await,
        KeysCmd::Unlock { passphrase_stdin } => {
            let (user_id, email) = account(&client).await?;
            let (identity, mine) = own_identity(&client, &user_id, &email).await?;
            let keys = open_keys(&mine, passphrase_stdin, &user_id, &identity)?;
            cache(&client, &email, &keys)?;
            eprintln!("Your end-to-end keys are unlocked on this device (fingerprint {}).", identity.fingerprint());
            Ok(())
        }
        KeysCmd::Lock => Ok(()),
        KeysCmd::Fingerprint { email, yes, json } => fingerprint(&client, email.as_deref(), yes, json.json).await,
        KeysCmd::Recover { passphrase_stdin, totp } => recover(&client, passphrase_stdin, totp).await,
    }
}

/// The signed-in account's id, email, secret keys and identity: the keys unlocked on this device, else
/// opened with the passphrase (asked for, or the first line of standard input).
pub(crate) async fn my_keys(
    client: &Client,
    passphrase_stdin: bool,
) -> Result<([u8; 16], String, UserKeys, PublicIdentity)> {
    // The account and its stored keys in one round trip's time; the credential store is read once.
    let keys = client.keys();
    let (who, mine) = tokio::join!(account(client), keys.me());
    let (user_id, email) = who?;
    let cached = unlocked(client, &email)?;
    let (identity, mine) = checked_identity(client, &user_id, &email, mine, cached.as_ref())?;
    let keys = match cached {
        Some(keys) => keys,
        None => open_keys(&mine, passphrase_stdin, &user_id, &identity)?,
    };
    Ok((user_id, email, keys, identity))
}

/// Opens the account's sealed keys with the passphrase (asked for, or the first line of standard input).
fn open_keys(
    mine: &cloudsync_types::api::MyUserKeys,
    passphrase_stdin: bool,
    user_id: &[u8; 16],
    identity: &PublicIdentity,
) -> Result<UserKeys> {
    let passphrase = if passphrase_stdin {
        super::read_stdin_line("passphrase")?
    } else {
        prompt("Passphrase for your end-to-end keys: ")?
    };
    let sealed = B64.decode(&mine.sealed_by_passphrase).context("the server sent a malformed sealed key")?;
    e2ee::open_with_passphrase(&sealed, &passphrase, user_id, identity)
        .map_err(|_| anyhow::anyhow!("that passphrase does not open your keys (forgot it? `cloudsync keys recover`)"))
}

/// Forgets the unlocked keys of `email` on `server` (also on logout).
///
/// # Errors
/// An unavailable credential store.
pub fn forget_unlocked(server: &str, email: &str) -> Result<()> {
    CredentialStore::from_env()?.delete(&cache_account(server, email))
}

/// The signed-in account's id and email, as the server states them; the email must be the one this device
/// logged in with, so the server cannot have keys made for another account.
async fn account(client: &Client) -> Result<([u8; 16], String)> {
    let me = client.auth().whoami().await?;
    if let Some(mine) = super::config::ClientConfig::load()?.email
        && mine.trim().to_lowercase() != me.user.email.to_lowercase()
    {
        bail!("the server says this session is {}, but this device logged in as {mine}: refusing", me.user.email);
    }
    Ok((*me.user.id.as_uuid().as_bytes(), me.user.email))
}

/// The caller's stored identity, checked to be signed for this account.
async fn own_identity(
    client: &Client,
    user_id: &[u8; 16],
    email: &str,
) -> Result<(PublicIdentity, cloudsync_types::api::MyUserKeys)> {
    let mine = client.keys().me().await;
    checked_identity(client, user_id, email, mine, unlocked(client, email)?.as_ref())
}

/// [`own_identity`] on an answer already fetched, with the keys unlocked on this device (if any).
fn checked_identity(
    client: &Client,
    user_id: &[u8; 16],
    email: &str,
    mine: Result<cloudsync_types::api::MyUserKeys, cloudsync_sdk::Error>,
    unlocked: Option<&UserKeys>,
) -> Result<(PublicIdentity, cloudsync_types::api::MyUserKeys)> {
    let mine = match mine {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("you have no end-to-end keys yet: run `cloudsync keys init`")
        }
        other => other?,
    };
    let identity = PublicIdentity::from_bytes(&B64.decode(&mine.identity).context("malformed identity")?)?;
    identity
        .verify(user_id, email)
        .map_err(|_| anyhow::anyhow!("the server sent keys that are not signed for your account: refusing them"))?;
    // The server could make a key pair and sign it for you as well as for anyone: what this device made or
    // unlocked before is the reference.
    let fp = identity.fingerprint();
    if let Some(before) = known()?.get(&known_key(client, email)).filter(|b| **b != fp) {
        bail!(
            "the server now shows different end-to-end keys for your own account: this device knew {before}, the \
             server sends {fp}. Someone may be substituting them; do not use them"
        );
    }
    if let Some(unlocked) = unlocked
        && !unlocked.matches(&identity)
    {
        bail!(
            "the server sends end-to-end keys for your account that are not the ones unlocked on this device: refusing them"
        );
    }
    Ok((identity, mine))
}

fn cache_account(server: &str, email: &str) -> String {
    format!("{}#e2ee#{}", server.trim_end_matches('/'), email.to_lowercase())
}

fn cache(client: &Client, email: &str, keys: &UserKeys) -> Result<()> {
    let secret = Zeroizing::new(hex::encode(keys.to_secret_bytes().as_ref()));
    CredentialStore::from_env()?.set(&cache_account(client.base_url(), email), &secret)
}

/// The keys unlocked on this device for `email`, if any.
fn unlocked(client: &Client, email: &str) -> Result<Option<UserKeys>> {
    let Some(hexed) = CredentialStore::from_env()?.get(&cache_account(client.base_url(), email))? else {
        return Ok(None);
    };
    let raw = Zeroizing::new(hex::decode(hexed.as_str()).context("the unlocked keys on this device are damaged")?);
    Ok(Some(UserKeys::from_secret_bytes(&raw)?))
}

/// Uploads keys, answering the server's demand for a fresh proof (a code, or the password on an old login).
async fn upload(client: &Client, req: UploadUserKeys) -> Result<()> {
    let proof = req.proof.clone();
    super::with_fresh_proof(proof, false, |proof| {
        let req = UploadUserKeys { proof, ..req.clone() };
        async move { client.keys().upload(&req).await }
    })
    .await?;
    Ok(())
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

async fn init(client: &Client, passphrase_stdin: bool, totp: Option<String>, json: bool) -> Result<()> {
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
    let req = UploadUserKeys {
        identity: B64.encode(identity.to_bytes()),
        sealed_by_passphrase: B64.encode(&sealed_pass),
        sealed_by_recovery: B64.encode(&sealed_rec),
        proof: FreshProof { totp, password: None },
    };
    upload(client, req).await?;
    // The recovery key first: whatever fails on this device afterwards, it must not be lost.
    let shown = recovery.to_display();
    if json {
        print_json(&serde_json::json!({"fingerprint": identity.fingerprint(), "recovery_key": shown.as_str()}))?;
    } else {
        println!("{}", shown.as_str());
        eprintln!("The line above is your recovery key. It is shown only now: write it down and keep it apart from");
        eprintln!("your passphrase. If you lose both, your end-to-end encrypted files cannot be recovered by anyone.");
    }
    if let Err(e) = remember(&known_key(client, &email), &identity.fingerprint()) {
        eprintln!("warning: cannot record your fingerprint on this device: {e:#}");
    }
    match cache(client, &email, &keys) {
        Ok(()) => eprintln!("Your keys are made and unlocked on this device; fingerprint {}.", identity.fingerprint()),
        Err(e) => eprintln!(
            "warning: your keys are made but not unlocked on this device ({e:#}); run `cloudsync keys unlock`"
        ),
    }
    Ok(())
}

async fn recover(client: &Client, passphrase_stdin: bool, totp: Option<String>) -> Result<()> {
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
    let req = UploadUserKeys {
        identity: mine.identity.clone(),
        sealed_by_passphrase: B64.encode(&sealed_pass),
        sealed_by_recovery: mine.sealed_by_recovery.clone(),
        proof: FreshProof { totp, password: None },
    };
    upload(client, req).await?;
    cache(client, &email, &keys)?;
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

/// Fingerprints are remembered per server and account: the same email on another server is another person's
/// keys as far as this device knows.
fn known_key(client: &Client, email: &str) -> String {
    format!("{} {}", client.base_url(), email.trim().to_lowercase())
}

fn remember(key: &str, fingerprint: &str) -> Result<()> {
    let mut all = known()?;
    all.insert(key.to_owned(), fingerprint.to_owned());
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
    let (theirs, identity, status) = checked_public(client, email, yes).await?;
    let fp = identity.fingerprint();
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

/// Another account's public identity: self-signed for that account, and compared with the fingerprint this
/// device saw first (remembered then); a changed one is refused unless `yes`. Also says which it was.
///
/// # Errors
/// No keys, keys not signed for the account, an answer for another email, or a changed fingerprint.
pub(crate) async fn checked_public(
    client: &Client,
    email: &str,
    yes: bool,
) -> Result<(cloudsync_types::api::PublicUserKeys, PublicIdentity, &'static str)> {
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
    if theirs.email.to_lowercase() != email.trim().to_lowercase() {
        bail!("the server answered for {} when asked for {email}: refusing", theirs.email);
    }
    let fp = identity.fingerprint();
    let key = known_key(client, &theirs.email);
    let before = known()?.get(&key).cloned();
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
        remember(&key, &fp)?;
    }
    Ok((theirs, identity, status))
}
