//! Output helpers: one JSON document on stdout, or aligned text tables.

use anyhow::{Result, bail};
use serde::Serialize;

/// Prints `v` as pretty JSON on stdout.
///
/// # Errors
/// When serialisation fails.
pub fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints a table with a header row.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

/// `2026-11-23 14:05` (UTC).
pub fn date(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    t.format(&f).unwrap_or_else(|_| t.to_string())
}

/// Human-readable size.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Parses a span like `30m`, `24h`, `90d`, `2w` or `0`.
///
/// # Errors
/// Any other form.
pub fn parse_span(s: &str) -> Result<time::Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(time::Duration::ZERO);
    }
    let unit = s.chars().last().unwrap_or(' ');
    let n: i64 =
        s[..s.len() - unit.len_utf8()].parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
            anyhow::anyhow!("{s:?} is not a span: give a number and a unit, like 30m, 24h, 90d or 2w")
        })?;
    Ok(match unit {
        's' => time::Duration::seconds(n),
        'm' => time::Duration::minutes(n),
        'h' => time::Duration::hours(n),
        'd' => time::Duration::days(n),
        'w' => time::Duration::weeks(n),
        _ => anyhow::bail!("{s:?}: unknown unit {unit:?}; use s, m, h, d or w (like 90d)"),
    })
}

/// Parses `2026-01-01`, an RFC 3339 time, or a span back from `now` (`30m`, `12h`, `7d`, `2w`). A bare date
/// is its midnight (UTC); with `end_of_day`, the next midnight, so `--until 2026-01-31` includes that day.
///
/// # Errors
/// Any other form.
pub fn parse_when(s: &str, now: time::OffsetDateTime, end_of_day: bool) -> Result<time::OffsetDateTime> {
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, &date_fmt) {
        let t = d.midnight().assume_utc();
        return Ok(if end_of_day { t + time::Duration::DAY } else { t });
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) && s.ends_with(|c: char| c.is_ascii_alphabetic()) {
        let span = parse_span(s)?;
        return now.checked_sub(span).ok_or_else(|| anyhow::anyhow!("{s:?} reaches back further than time goes"));
    }
    bail!(
        "{s:?} is not a time: give a date (2026-01-01), an RFC 3339 time (2026-01-01T09:30:00Z) or a span back from now (7d)"
    )
}
