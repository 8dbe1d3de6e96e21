//! `cloudsync apikey create|list|rotate|revoke`.

use anyhow::{Context, Result, bail};
use cloudsync_sdk::Client;
use cloudsync_types::Role;
use cloudsync_types::api::{ApiKey, CreateApiKeyRequest, FreshProof, NewApiKey, RotateApiKeyRequest};
use time::OffsetDateTime;

use super::output::{self, print_json, table};
use super::{connect, with_fresh_proof, workspace};
use crate::args::ApikeyCmd;

/// Runs an API key command.
///
/// # Errors
/// Not logged in, bad input, or a refused request.
pub async fn run(cmd: ApikeyCmd) -> Result<()> {
    let client = connect()?;
    match cmd {
        ApikeyCmd::Create { name, role, workspaces, expires, totp, password_stdin, json } => {
            let role: Role = role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            if role == Role::Owner {
                bail!("--role: an API key is viewer, editor or admin at most (owner actions need a signed-in owner)");
            }
            let mut ids = Vec::new();
            for w in &workspaces {
                ids.push(workspace(&client, w).await?.id);
            }
            let req = CreateApiKeyRequest {
                name,
                role,
                workspaces: (!ids.is_empty()).then_some(ids),
                expires_at: parse_expiry(&expires, OffsetDateTime::now_utc()).context("--expires")?,
                proof: FreshProof::default(),
            };
            let created = with_fresh_proof(FreshProof { totp, password: None }, password_stdin, |proof| {
                let req = CreateApiKeyRequest { proof, ..req.clone() };
                let client = &client;
                async move { client.api_keys().create(&req).await }
            })
            .await?;
            show_secret(&created, json.json)?;
        }
        ApikeyCmd::List(j) => {
            let keys = client.api_keys().list().await?;
            if j.json {
                return print_json(&keys);
            }
            if keys.is_empty() {
                eprintln!("No API keys. Create one with `cloudsync apikey create NAME --role viewer`.");
                return Ok(());
            }
            let names = workspace_names(&client).await;
            table(
                &["NAME", "ID", "ROLE", "WORKSPACES", "EXPIRES", "LAST USED"],
                keys.iter().map(|k| row(k, &names)).collect(),
            );
        }
        ApikeyCmd::Rotate { name, grace, totp, password_stdin, json } => {
            let key = find(&client, &name).await?;
            let grace = output::parse_span(&grace).context("--grace")?;
            let grace_seconds = u64::try_from(grace.whole_seconds()).context("--grace must not be negative")?;
            let id = key.id.clone();
            let rotated = with_fresh_proof(FreshProof { totp, password: None }, password_stdin, |proof| {
                let req = RotateApiKeyRequest { grace_seconds, proof };
                let (client, id) = (&client, id.clone());
                async move { client.api_keys().rotate(&id, &req).await }
            })
            .await?;
            show_secret(&rotated, json.json)?;
            if !json.json {
                match rotated.key.previous_secret_valid_until {
                    Some(t) => eprintln!("The old secret keeps working until {} UTC.", output::date(t)),
                    None => eprintln!("The old secret no longer works."),
                }
            }
        }
        ApikeyCmd::Revoke { name } => {
            let key = find(&client, &name).await?;
            client.api_keys().revoke(&key.id).await?;
            eprintln!("Revoked API key {:?} ({}); it no longer works.", key.name, key.id);
        }
    }
    Ok(())
}

fn show_secret(k: &NewApiKey, json: bool) -> Result<()> {
    if json {
        return print_json(k);
    }
    println!("{}", k.secret);
    eprintln!(
        "API key {:?} ({}, {} at most). The line above is its secret: it is shown only now, so store it safely.",
        k.key.name, k.key.id, k.key.role
    );
    eprintln!("Use it as CLOUDSYNC_API_KEY=csk_... cloudsync ... (or Authorization: Bearer csk_... over HTTP).");
    Ok(())
}

async fn find(client: &Client, name: &str) -> Result<ApiKey> {
    let keys = client.api_keys().list().await?;
    keys.into_iter()
        .find(|k| k.name == name || k.id == name)
        .with_context(|| format!("you have no API key named {name:?} (see `cloudsync apikey list`)"))
}

async fn workspace_names(client: &Client) -> Vec<(cloudsync_types::WorkspaceId, String)> {
    client.workspaces().list().await.map(|l| l.into_iter().map(|w| (w.id, w.name)).collect()).unwrap_or_default()
}

fn row(k: &ApiKey, names: &[(cloudsync_types::WorkspaceId, String)]) -> Vec<String> {
    let scope = match &k.workspaces {
        None => "all".to_owned(),
        Some(list) => list
            .iter()
            .map(|id| names.iter().find(|(w, _)| w == id).map_or_else(|| id.to_string(), |(_, n)| n.clone()))
            .collect::<Vec<_>>()
            .join(", "),
    };
    vec![
        k.name.clone(),
        k.id.clone(),
        k.role.to_string(),
        scope,
        k.expires_at.map_or_else(|| "never".into(), output::date),
        k.last_used_at.map_or_else(
            || "never".into(),
            |t| format!("{} from {}", output::date(t), k.last_used_ip.as_deref().unwrap_or("?")),
        ),
    ]
}

/// `never`, a span from now (`90d`), a date (`2027-01-01`, midnight UTC) or an RFC 3339 time.
pub(crate) fn parse_expiry(s: &str, now: OffsetDateTime) -> Result<Option<OffsetDateTime>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(Some(t));
    }
    if let Ok(d) = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")) {
        return Ok(Some(d.midnight().assume_utc()));
    }
    let span = output::parse_span(s)?;
    if span.is_zero() {
        bail!("an expiry of 0 would make the key useless; give a span like 90d, a date, or never");
    }
    Ok(Some(now + span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_parse() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        assert_eq!(parse_expiry("never", now).expect("never"), None);
        assert_eq!(parse_expiry("90d", now).expect("span"), Some(now + time::Duration::days(90)));
        assert_eq!(parse_expiry("2027-01-01", now).expect("date").map(|t| t.unix_timestamp()), Some(1_798_761_600));
        assert!(parse_expiry("0", now).is_err());
        assert!(parse_expiry("soon", now).is_err());
    }
}
