//! `cloudsync share create|list|revoke`.

use anyhow::{Context, Result, bail};
use cloudsync_sdk::Client;
use cloudsync_types::api::{CreateShareRequest, ShareLink};
use cloudsync_types::{Role, ShareId};
use time::OffsetDateTime;

use super::apikey::parse_expiry;
use super::files::parse_remote;
use super::output::{self, print_json, table};
use super::{connect, read_stdin_line, workspace};
use crate::args::ShareCmd;

/// Runs a share command.
///
/// # Errors
/// Not logged in, bad input, or a refused request.
pub async fn run(cmd: ShareCmd) -> Result<()> {
    let client = connect()?;
    match cmd {
        ShareCmd::Create { remote, password_stdin, expires, max_downloads, json } => {
            let (name, path) = parse_remote(&remote)?;
            if path.is_root() {
                bail!("{remote:?} names a whole workspace; a share link is for one file: write WORKSPACE:PATH");
            }
            let w = workspace(&client, &name).await?;
            if w.e2e_encryption {
                bail!(
                    "{name:?} is end-to-end encrypted: the server cannot read its files, so it cannot serve a share \
                     link; share the file another way"
                );
            }
            let password = if password_stdin { Some(read_stdin_line("link password")?) } else { None };
            let req = CreateShareRequest {
                path,
                password: password.as_ref().map(|p| p.to_string()),
                expires_at: parse_expiry(&expires, OffsetDateTime::now_utc()).context("--expires")?,
                max_downloads,
            };
            let link = client.shares(w.id).create(&req).await?;
            let url = client.share_url(&link);
            if json.json {
                return print_json(&serde_json::json!({"url": url, "link": link.link}));
            }
            println!("{url}");
            let mut terms = Vec::new();
            if let Some(t) = link.link.expires_at {
                terms.push(format!("until {} UTC", output::date(t)));
            }
            if let Some(m) = link.link.max_downloads {
                terms.push(format!("for {m} download{}", if m == 1 { "" } else { "s" }));
            }
            if link.link.has_password {
                terms.push("with its password".into());
            }
            eprintln!(
                "Anyone with this link can download {} {}. It is shown only now; revoke it with `cloudsync share revoke {}`.",
                link.link.path,
                if terms.is_empty() { "for ever".to_owned() } else { terms.join(", ") },
                link.link.id
            );
        }
        ShareCmd::List { workspace: name, json } => {
            let mut all = Vec::new();
            for (wname, id) in targets(&client, name.as_deref()).await? {
                for l in client.shares(id).list().await? {
                    all.push((wname.clone(), l));
                }
            }
            if json.json {
                return print_json(&all.iter().map(|(_, l)| l).collect::<Vec<&ShareLink>>());
            }
            if all.is_empty() {
                eprintln!("No live share links.");
                return Ok(());
            }
            table(
                &["ID", "WORKSPACE", "PATH", "BY", "EXPIRES", "DOWNLOADS", "PASSWORD"],
                all.iter()
                    .map(|(w, l)| {
                        vec![
                            l.id.to_string(),
                            w.clone(),
                            l.path.to_string(),
                            l.created_by.clone().unwrap_or_default(),
                            l.expires_at.map_or_else(|| "never".into(), output::date),
                            match l.max_downloads {
                                Some(m) => format!("{}/{m}", l.downloads),
                                None => l.downloads.to_string(),
                            },
                            if l.has_password { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect(),
            );
        }
        ShareCmd::Revoke { id, workspace: name } => {
            let sid: ShareId =
                id.parse().map_err(|_| anyhow::anyhow!("{id:?} is not a share link id; see `cloudsync share list`"))?;
            for (wname, wid) in targets(&client, name.as_deref()).await? {
                if client.shares(wid).list().await?.iter().any(|l| l.id == sid) {
                    client.shares(wid).revoke(sid).await?;
                    eprintln!("Revoked share link {sid} in {wname:?}; it no longer works.");
                    return Ok(());
                }
            }
            bail!("no live share link {sid} that you can see; see `cloudsync share list`");
        }
    }
    Ok(())
}

/// The workspaces to look in: the one named, or every one where the caller can make links.
async fn targets(client: &Client, name: Option<&str>) -> Result<Vec<(String, cloudsync_types::WorkspaceId)>> {
    if let Some(n) = name {
        let w = workspace(client, n).await?;
        return Ok(vec![(w.name, w.id)]);
    }
    Ok(client
        .workspaces()
        .list()
        .await?
        .into_iter()
        .filter(|w| w.role >= Role::Editor)
        .map(|w| (w.name, w.id))
        .collect())
}
