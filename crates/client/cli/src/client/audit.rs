//! `cloudsync audit list|verify`.

use std::io::Write;

use anyhow::{Context, Result, bail};
use cloudsync_sdk::{AuditQuery, Client};
use cloudsync_types::Role;
use cloudsync_types::api::{AuditEntry, AuditVerifyReport};
use time::OffsetDateTime;

use super::output::{print_json, table};
use super::{connect, output, workspace};
use crate::args::AuditCmd;

/// Rows shown as a table when no --limit is given.
const TABLE_ROWS: u64 = 100;
/// Rows asked for per request.
const PAGE: u64 = 1000;

/// Runs an audit command.
///
/// # Errors
/// Not logged in, a refused request, a bad time, or (for verify) a broken chain.
pub async fn run(cmd: AuditCmd) -> Result<()> {
    let client = connect()?;
    match cmd {
        AuditCmd::List { workspace: name, since, until, events, actor, limit, json, csv } => {
            let now = OffsetDateTime::now_utc();
            let mut q = AuditQuery {
                workspace: match name {
                    Some(n) => Some(workspace(&client, &n).await?.id),
                    None => None,
                },
                start_date: since
                    .as_deref()
                    .map(|s| output::parse_when(s, now, false))
                    .transpose()
                    .context("--since")?,
                end_date: until.as_deref().map(|s| output::parse_when(s, now, true)).transpose().context("--until")?,
                events: events
                    .map(|e| e.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                    .unwrap_or_default(),
                actor,
                ..AuditQuery::default()
            };
            let want = limit.unwrap_or(if json || csv { u64::MAX } else { TABLE_ROWS });
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            if csv {
                writeln!(out, "{}", CSV_HEADER.join(","))?;
            }
            let mut rows = Vec::new();
            let mut seen = 0u64;
            while seen < want {
                q.limit = Some(u32::try_from((want - seen).min(PAGE)).unwrap_or(1000));
                let page = client.audit().list(&q).await?;
                for e in &page.entries {
                    if json {
                        writeln!(out, "{}", serde_json::to_string(e)?)?;
                    } else if csv {
                        writeln!(out, "{}", csv_row(e))?;
                    } else {
                        rows.push(table_row(e));
                    }
                }
                seen += page.entries.len() as u64;
                match page.next_before {
                    Some(b) => q.before = Some(b),
                    None => break,
                }
            }
            out.flush()?;
            drop(out);
            if !json && !csv {
                if rows.is_empty() {
                    eprintln!("No audit rows match.");
                } else {
                    table(&["TIME", "EVENT", "OUTCOME", "ACTOR", "ADDRESS", "TARGET", "DETAILS"], rows);
                }
            }
        }
        AuditCmd::Verify { workspace: name, json } => {
            let reports = verify_all(&client, name.as_deref()).await?;
            if json.json {
                print_json(&reports)?;
            } else {
                for (label, r) in &reports {
                    match &r.first_broken {
                        None => println!("OK      {label}: {} rows, head {}", r.rows, &r.head_hash[..16]),
                        Some(b) => println!(
                            "BROKEN  {label}: at row {}{}: {}",
                            b.seq,
                            b.id.map(|i| format!(" (id {i})")).unwrap_or_default(),
                            b.reason
                        ),
                    }
                }
            }
            let broken: Vec<&str> = reports.iter().filter(|(_, r)| !r.ok).map(|(l, _)| l.as_str()).collect();
            if !broken.is_empty() {
                bail!("the audit chain of {} is broken: rows were edited, deleted or reordered", broken.join(", "));
            }
        }
    }
    Ok(())
}

async fn verify_all(client: &Client, name: Option<&str>) -> Result<Vec<(String, AuditVerifyReport)>> {
    if let Some(n) = name {
        let w = workspace(client, n).await?;
        return Ok(vec![(w.name.clone(), client.audit().verify(Some(w.id)).await?)]);
    }
    let mut out = Vec::new();
    for w in client.workspaces().list().await? {
        if w.role >= Role::Admin {
            out.push((w.name.clone(), client.audit().verify(Some(w.id)).await?));
        }
    }
    if client.auth().whoami().await?.user.is_admin {
        out.push(("account events".to_owned(), client.audit().verify(None).await?));
    }
    if out.is_empty() {
        bail!("you administer no workspace, so there is no audit chain for you to verify");
    }
    Ok(out)
}

fn table_row(e: &AuditEntry) -> Vec<String> {
    vec![
        output::date(e.at),
        e.event.to_string(),
        e.outcome.as_str().to_owned(),
        e.actor_email.clone().or_else(|| e.actor_id.map(|a| a.to_string())).unwrap_or_else(|| "-".into()),
        e.ip.clone().unwrap_or_else(|| "-".into()),
        e.target.clone().unwrap_or_else(|| "-".into()),
        compact_details(&e.details),
    ]
}

fn compact_details(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

const CSV_HEADER: [&str; 14] = [
    "id",
    "chain",
    "seq",
    "at",
    "event",
    "outcome",
    "actor_id",
    "actor_email",
    "workspace_id",
    "ip",
    "target",
    "details",
    "prev_hash",
    "hash",
];

fn csv_row(e: &AuditEntry) -> String {
    let at = e.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let cells = [
        e.id.to_string(),
        e.chain.clone(),
        e.seq.to_string(),
        at,
        e.event.to_string(),
        e.outcome.as_str().to_owned(),
        e.actor_id.map(|a| a.to_string()).unwrap_or_default(),
        e.actor_email.clone().unwrap_or_default(),
        e.workspace_id.map(|w| w.to_string()).unwrap_or_default(),
        e.ip.clone().unwrap_or_default(),
        e.target.clone().unwrap_or_default(),
        e.details.to_string(),
        e.prev_hash.clone(),
        e.hash.clone(),
    ];
    cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",")
}

/// One CSV cell (RFC 4180 quoting). A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab,
/// carriage return first) gets a leading `'`, as OWASP advises against CSV injection: a file path or device
/// name in the log is user-chosen text.
fn csv_cell(c: &str) -> String {
    let guarded = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{c}") } else { c.to_owned() };
    if guarded.contains([',', '"', '\n', '\r']) { format!("\"{}\"", guarded.replace('"', "\"\"")) } else { guarded }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form() {
        let now =
            OffsetDateTime::parse("2026-03-10T12:00:00Z", &time::format_description::well_known::Rfc3339).expect("now");
        let day = output::parse_when("2026-01-31", now, false).expect("date");
        assert_eq!(day.unix_timestamp(), 1_769_817_600);
        assert_eq!(output::parse_when("2026-01-31", now, true).expect("end").unix_timestamp(), 1_769_817_600 + 86_400);
        assert_eq!(output::parse_when("7d", now, false).expect("span"), now - time::Duration::days(7));
        assert_eq!(output::parse_when("90m", now, false).expect("span"), now - time::Duration::minutes(90));
        assert_eq!(
            output::parse_when("2026-03-01T08:00:00+01:00", now, false).expect("rfc").unix_timestamp(),
            1_772_348_400
        );
        assert!(output::parse_when("yesterday", now, false).is_err());
        assert!(output::parse_when("7y", now, false).is_err());
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
    }
}
