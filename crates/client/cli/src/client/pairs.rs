//! Sync pairs: a saved one-way copy (or mirror) from a source to a destination, run by hand (`pair run`) or on
//! its schedule (`pair daemon`), under caps of its own so that it never overloads its source: bandwidth,
//! requests per second and files at once. When a remote pushes back (429, 503, timeouts) the run slows down
//! further and speeds up again as requests succeed (see `cloudsync_connectors::pace`).
//!
//! The pairs are in `pairs.toml` in the config directory (mode 0600; no secrets: those stay with the
//! connections, in the OS credential store). When each last ran and how it went is in `pairs-state.json` in
//! the state directory; every run is also in the transfer history. A pair never runs twice at once: a run
//! holds a lock file in the state directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cloudsync_connectors::{Caps, Limits, Pace, check_name};
use serde::{Deserialize, Serialize};

use super::config::{config_dir, load_toml, locked, state_dir, update_toml, write_private};
use super::connections::{self, Connections, Run, Tally, Target, Verb};
use super::output::{date, print_json, size, table};
use crate::args::{PairCmd, PairCreateArgs};

/// Shortest schedule.
const MIN_EVERY: u64 = 10;
/// Longest schedule (a year).
const MAX_EVERY: u64 = 366 * 86_400;
/// Most files at once.
const MAX_CONCURRENCY: usize = 64;
/// Lowest bandwidth cap, bytes per second.
const MIN_BWLIMIT: u64 = 1024;
/// Highest and lowest request-rate caps: the pace's own bounds.
const MAX_RPS: f64 = cloudsync_connectors::pace::UNCAPPED_AGAIN;
const MIN_RPS: f64 = cloudsync_connectors::pace::MIN_RATE;
/// Failed runs are tried again sooner than the schedule: after a minute, doubling per failure.
const RETRY_FIRST: i64 = 60;
/// Longest the daemon sleeps before looking at the pairs again (so that pairs added meanwhile are seen).
const DAEMON_TICK: Duration = Duration::from_secs(30);

/// A saved pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    /// Source: an absolute local path or NAME:PATH.
    pub from: String,
    /// Destination: an absolute local path or NAME:PATH.
    pub to: String,
    /// Run every this many seconds (`pair daemon`); none: only by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_seconds: Option<u64>,
    /// Bandwidth cap, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit_bytes_per_second: Option<u64>,
    /// Request-rate cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<f64>,
    /// Files transferred at once.
    pub concurrency: usize,
    /// Also delete destination files the source no longer has (a mirror).
    #[serde(default)]
    pub delete: bool,
    /// Compare same-size files by content hash where both sides give one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checksum: bool,
    /// Copy the source as it was this long before each run (a span: `1h`, `1d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Pairs {
    #[serde(default)]
    pairs: BTreeMap<String, Pair>,
}

/// How a pair last ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PairState {
    /// Unix seconds.
    last_started: Option<i64>,
    /// Unix seconds.
    last_finished: Option<i64>,
    last_ok: Option<bool>,
    last_error: Option<String>,
    /// Failed runs in a row.
    #[serde(default)]
    failures: u32,
}

fn pairs_file() -> PathBuf {
    config_dir().join("pairs.toml")
}

fn state_file() -> PathBuf {
    state_dir().join("pairs-state.json")
}

/// Loads the pairs, checked as `pair create` checks them (the file may have been edited by hand).
fn load() -> Result<Pairs> {
    let pairs: Pairs = load_toml(&pairs_file(), "pairs file")?;
    for (name, pair) in &pairs.pairs {
        check_name(name)
            .map_err(anyhow::Error::from)
            .and_then(|()| pair.check())
            .with_context(|| format!("pair {name:?} in {} is not valid", pairs_file().display()))?;
    }
    Ok(pairs)
}

impl Pair {
    /// A mirror with `--delete`, else a copy.
    fn verb(&self) -> Verb {
        if self.delete { Verb::Mirror } else { Verb::Copy }
    }

    /// Checks the caps and the schedule.
    fn check(&self) -> Result<()> {
        if let Some(every) = self.every_seconds
            && !(MIN_EVERY..=MAX_EVERY).contains(&every)
        {
            bail!("the schedule must be from {MIN_EVERY} seconds to a year");
        }
        if let Some(r) = self.max_requests_per_second
            && !(r.is_finite() && (MIN_RPS..=MAX_RPS).contains(&r))
        {
            bail!("--max-requests-per-second must be from {MIN_RPS} to {MAX_RPS} (fractions are fine: 0.5)");
        }
        if self.bwlimit_bytes_per_second.is_some_and(|b| b < MIN_BWLIMIT) {
            bail!("--bwlimit must be at least 1K");
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            bail!("--concurrency must be from 1 to {MAX_CONCURRENCY}");
        }
        if let Some(span) = &self.as_of {
            let bad = |why: String| anyhow::anyhow!("--as-of for a pair is a span back from each run (1h, 1d): {why}");
            let back = super::output::parse_span(span).map_err(|e| bad(e.to_string()))?;
            if back <= time::Duration::ZERO || back > time::Duration::days(3660) {
                return Err(bad(format!("{span:?} is not from a second to ten years")));
            }
        }
        let (a, b) = (std::path::Path::new(&self.from), std::path::Path::new(&self.to));
        if a.is_absolute() && b.is_absolute() && (a.starts_with(b) || b.starts_with(a)) {
            bail!("--from and --to overlap (one is the other or inside it); pick a destination outside the source");
        }
        Ok(())
    }
}

/// Changes the saved pairs under a lock, so that two commands changing them at once both count.
fn change_pairs<T>(change: impl FnOnce(&mut Pairs) -> Result<T>) -> Result<T> {
    update_toml(&pairs_file(), "pairs file", change)
}

fn load_state() -> Result<BTreeMap<String, PairState>> {
    let path = state_file();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Changes the pairs' state under a lock (a manual run and the daemon may finish at the same time).
fn change_states(change: impl FnOnce(&mut BTreeMap<String, PairState>)) -> Result<()> {
    locked(&state_dir().join("pairs-state.lock"), || {
        let mut all = load_state()?;
        change(&mut all);
        write_private(&state_file(), &serde_json::to_vec_pretty(&all)?)
    })
}

/// Changes one pair's state.
fn update_state(name: &str, change: impl FnOnce(&mut PairState)) -> Result<()> {
    change_states(|all| change(all.entry(name.to_owned()).or_default()))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `pair ...`.
///
/// # Errors
/// Bad settings, unknown pair, a failed run.
pub async fn run(cmd: PairCmd) -> Result<()> {
    match cmd {
        PairCmd::Create(args) => create(*args),
        PairCmd::List(j) => list(j.json),
        PairCmd::Run { name, dry_run, json } => run_by_hand(&name, dry_run, json.json).await,
        PairCmd::Remove { name } => remove(&name),
        PairCmd::Daemon { once, status_every } => daemon(once, parse_status_every(&status_every)?).await,
    }
}

/// Checks a side of a pair and returns it as saved: a local path made absolute (the daemon runs elsewhere).
fn side(spec: &str, saved: &Connections, is_source: bool) -> Result<String> {
    match Target::parse(spec, saved) {
        Target::Connection { .. } => Ok(spec.to_owned()),
        Target::Local(p) => {
            let abs = std::path::absolute(&p).with_context(|| format!("{} is not a usable path", p.display()))?;
            if is_source && !abs.exists() {
                bail!("the source {} does not exist", abs.display());
            }
            abs.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{} is not valid UTF-8; pairs need UTF-8 paths", abs.display()))
        }
        Target::Workspace(_) => bail!(
            "{spec:?} is not a saved connection (`cloudsync connection list` shows them) nor a local path{}; a pair \
             copies between local folders and connections",
            super::connections::alias_note(spec, saved)
        ),
    }
}

fn create(a: PairCreateArgs) -> Result<()> {
    check_name(&a.name).map_err(|e| anyhow::anyhow!(e.to_string().replace("connection name", "pair name")))?;
    let exists = |pairs: &Pairs| -> Result<()> {
        if pairs.pairs.contains_key(&a.name) && !a.replace {
            bail!("a pair named {:?} exists already; pick another name, or pass --replace to overwrite it", a.name);
        }
        Ok(())
    };
    exists(&load()?)?;
    let saved = Connections::load()?;
    let from = side(&a.from, &saved, true)?;
    let to = side(&a.to, &saved, false)?;
    if from == to {
        bail!("--from and --to are the same place");
    }
    if a.as_of.is_some() && !matches!(Target::parse(&from, &saved), Target::Connection { .. }) {
        bail!("--as-of reads the past of a versioned S3 bucket: the pair's source must be a connection (NAME:PATH)");
    }
    let every = a.every.as_deref().map(parse_every).transpose()?;
    let bwlimit = a.bwlimit.as_deref().map(parse_rate).transpose()?;
    let pair = Pair {
        from,
        to,
        every_seconds: every,
        bwlimit_bytes_per_second: bwlimit,
        max_requests_per_second: a.max_requests_per_second,
        concurrency: a.concurrency,
        delete: a.delete,
        checksum: a.checksum,
        as_of: a.as_of,
    };
    pair.check()?;
    let schedule = match every {
        Some(s) => format!("every {}; `cloudsync pair daemon` runs it on schedule", show_every(s)),
        None => "no schedule; run it with `cloudsync pair run`".to_owned(),
    };
    let shown = format!("Saved pair {:?}: {} -> {} ({schedule}).", a.name, pair.from, pair.to);
    let replaced = change_pairs(|pairs| {
        exists(pairs)?;
        Ok(pairs.pairs.insert(a.name.clone(), pair).is_some())
    })?;
    // A replaced pair starts afresh: its old runs say nothing about the new one.
    if replaced {
        forget_state(&a.name)?;
    }
    eprintln!("{shown}");
    Ok(())
}

/// `1h`, `30m`, `90s`, `1d`, `1h30m`, or a number of seconds.
fn parse_every(text: &str) -> Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "--every {text:?} is not a duration: write e.g. 30s, 15m, 1h, 1h30m or 1d (from {MIN_EVERY}s to a year)"
        )
    };
    let t = text.trim();
    let mut total: u64 = 0;
    if let Ok(secs) = t.parse::<u64>() {
        total = secs;
    } else {
        let mut num = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit = match c.to_ascii_lowercase() {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                _ => return Err(bad()),
            };
            let n: u64 = num.parse().map_err(|_| bad())?;
            total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
            num.clear();
        }
        if !num.is_empty() || t.is_empty() {
            return Err(bad());
        }
    }
    if !(MIN_EVERY..=MAX_EVERY).contains(&total) {
        return Err(bad());
    }
    Ok(total)
}

/// `--status-every`: a span (`30s`, `5m`, `1h`), up to a day; `0` for never.
fn parse_status_every(text: &str) -> Result<Option<Duration>> {
    let span = super::output::parse_span(text).map_err(|e| anyhow::anyhow!("--status-every: {e}"))?;
    let secs = u64::try_from(span.whole_seconds()).unwrap_or(u64::MAX);
    match secs {
        0 => Ok(None),
        s if s <= 86_400 => Ok(Some(Duration::from_secs(s))),
        _ => bail!("--status-every {text:?} is longer than a day"),
    }
}

fn show_every(secs: u64) -> String {
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut rest = secs;
    let mut out = String::new();
    for (unit, name) in units {
        if rest >= unit {
            out.push_str(&format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    out
}

/// `10M` (MiB per second, as rclone reads it), `512K`, `1G`, `2.5M`, or bytes per second.
pub(crate) fn parse_rate(text: &str) -> Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "--bwlimit {text:?} is not a rate: write bytes per second with an optional K, M or G (binary units, \
             e.g. 512K or 10M), at least 1K"
        )
    };
    let t = text.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = (n * mult as f64) as u64;
    if bytes < MIN_BWLIMIT {
        return Err(bad());
    }
    Ok(bytes)
}

/// When a pair is next due, or `None` without a schedule. Never run: now. After a failure: sooner than the
/// schedule (a minute, doubling per failure in a row, counted from when it ended), never later. A run that
/// started and never ended (the process was stopped) counts as a failure.
fn next_run(pair: &Pair, state: Option<&PairState>) -> Option<i64> {
    let every = i64::try_from(pair.every_seconds?).ok()?;
    let Some(state) = state else { return Some(0) };
    let Some(started) = state.last_started else { return Some(0) };
    if state.last_finished.is_none_or(|f| f < started) {
        return Some(started.saturating_add(RETRY_FIRST.min(every)));
    }
    if state.last_ok == Some(false) && state.failures > 0 {
        let finished = state.last_finished.unwrap_or(started);
        let retry = RETRY_FIRST.saturating_mul(1 << state.failures.saturating_sub(1).min(20));
        return Some(finished.saturating_add(retry.min(every)));
    }
    Some(started.saturating_add(every))
}

fn when(t: Option<i64>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()).map(date).unwrap_or_else(|| "-".into())
}

fn list(json: bool) -> Result<()> {
    let pairs = load()?;
    let state = load_state()?;
    if json {
        #[derive(Serialize)]
        struct Row<'a> {
            name: &'a str,
            #[serde(flatten)]
            pair: &'a Pair,
            last_started_unix: Option<i64>,
            last_finished_unix: Option<i64>,
            last_ok: Option<bool>,
            last_error: Option<&'a str>,
            next_run_unix: Option<i64>,
        }
        let rows: Vec<Row<'_>> = pairs
            .pairs
            .iter()
            .map(|(name, pair)| {
                let s = state.get(name);
                Row {
                    name,
                    pair,
                    last_started_unix: s.and_then(|s| s.last_started),
                    last_finished_unix: s.and_then(|s| s.last_finished),
                    last_ok: s.and_then(|s| s.last_ok),
                    last_error: s.and_then(|s| s.last_error.as_deref()),
                    next_run_unix: next_run(pair, s).map(|t| t.max(now())),
                }
            })
            .collect();
        return print_json(&rows);
    }
    if pairs.pairs.is_empty() {
        eprintln!("No pairs yet; add one with `cloudsync pair create NAME --from SRC --to DST [--every 1h]`.");
        return Ok(());
    }
    let rows = pairs
        .pairs
        .iter()
        .map(|(name, p)| {
            let s = state.get(name);
            let ended = s.is_none_or(|s| s.last_finished >= s.last_started);
            let last = match s.and_then(|s| s.last_ok) {
                _ if !ended => format!("{} running or stopped", when(s.and_then(|s| s.last_started))),
                Some(true) => format!("{} ok", when(s.and_then(|s| s.last_started))),
                Some(false) => format!("{} FAILED", when(s.and_then(|s| s.last_started))),
                None => "never".into(),
            };
            let mut caps = Vec::new();
            if let Some(b) = p.bwlimit_bytes_per_second {
                caps.push(format!("{}/s", size(b)));
            }
            if let Some(r) = p.max_requests_per_second {
                caps.push(format!("{r} req/s"));
            }
            caps.push(format!("{} at once", p.concurrency));
            vec![
                name.clone(),
                p.from.clone(),
                format!("{}{}", p.to, if p.delete { " (mirror)" } else { "" }),
                p.every_seconds.map_or_else(|| "by hand".into(), show_every),
                caps.join(", "),
                last,
                when(next_run(p, s).map(|t| t.max(now()))),
            ]
        })
        .collect();
    table(&["NAME", "FROM", "TO", "EVERY", "LIMITS", "LAST RUN", "NEXT RUN"], rows);
    Ok(())
}

fn remove(name: &str) -> Result<()> {
    change_pairs(|pairs| match pairs.pairs.remove(name) {
        Some(_) => Ok(()),
        None => bail!("there is no pair named {name:?}; `cloudsync pair list` shows them"),
    })?;
    forget_state(name)?;
    eprintln!("Removed pair {name:?} (its files, and its runs in the history, stay).");
    Ok(())
}

/// Drops what is known of a pair's runs.
fn forget_state(name: &str) -> Result<()> {
    if !state_file().exists() {
        return Ok(());
    }
    change_states(|all| {
        all.remove(name);
    })
}

/// Removes every pair and its state (`local clear --pairs`). Returns how many there were.
///
/// # Errors
/// The files cannot be removed.
pub fn forget_all() -> Result<usize> {
    let n = load()?.pairs.len();
    for path in [pairs_file(), state_file()] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot delete {}", path.display())),
        }
    }
    Ok(n)
}

/// Holds a pair's run lock (released when dropped, or when the process ends however it ends); `None` when
/// another process holds it.
fn lock_pair(name: &str) -> Result<Option<File>> {
    let dir = state_dir().join("pairs");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = File::create(dir.join(format!("{name}.lock"))).context("cannot create the pair's run lock")?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("cannot lock the pair"),
    }
}

/// What one run of a pair did.
struct Outcome {
    summary: cloudsync_connectors::Summary,
    from: cloudsync_connectors::Location,
    verb: Verb,
    pace: cloudsync_connectors::PaceReport,
}

/// Runs a pair once under its caps, records the run in its state and the history. The pair and its state are
/// read once its lock is held (they may have changed since the caller looked); with `only_if_due`, a pair that
/// is no longer due, or is running already, is left alone (`None`).
async fn run_pair(
    name: &str,
    dry_run: bool,
    progress: bool,
    only_if_due: bool,
    tally: Option<Arc<Tally>>,
) -> Result<Option<Outcome>> {
    let Some(_lock) = lock_pair(name)? else {
        if only_if_due {
            return Ok(None);
        }
        bail!("pair {name:?} is running already (by hand or by `cloudsync pair daemon`); wait for that run to finish");
    };
    let pair = get(name)?;
    if only_if_due && next_run(&pair, load_state()?.get(name)).is_none_or(|t| t > now()) {
        return Ok(None);
    }
    let pair = &pair;
    let started = now();
    if !dry_run {
        update_state(name, |s| s.last_started = Some(started))?;
    }
    let pace = Pace::new(Caps {
        requests_per_second: pair.max_requests_per_second,
        bytes_per_second: pair.bwlimit_bytes_per_second,
    });
    let run = Run {
        verb: pair.verb(),
        delete: pair.delete,
        dry_run,
        progress,
        // More retries than a command typed by hand: a scheduled run has time, and the pace backs off meanwhile.
        limits: Limits { concurrency: pair.concurrency, retries: 10, pace: Some(pace.clone()) },
        pair: Some(name.to_owned()),
        checksum: pair.checksum,
        tally,
        as_of: pair.as_of.clone(),
    };
    let result = async {
        let (from, to) = connections::locations(&pair.from, &pair.to, &run.limits)?;
        let summary = connections::execute(&from, &to, [&pair.from, &pair.to], &run).await?;
        Ok::<_, anyhow::Error>((summary, from))
    }
    .await;
    if !dry_run {
        let error = match &result {
            Ok((s, _)) if s.errors.is_empty() => None,
            Ok((s, _)) => Some(format!("{} file(s) failed: {}", s.errors.len(), s.errors[0].error)),
            Err(e) => Some(format!("{e:#}")),
        };
        update_state(name, |s| {
            s.last_finished = Some(now());
            s.last_ok = Some(error.is_none());
            s.failures = if error.is_some() { s.failures.saturating_add(1) } else { 0 };
            s.last_error = error.map(|e| e.chars().take(500).collect());
        })?;
    }
    let (summary, from) = result?;
    Ok(Some(Outcome { summary, from, verb: run.verb, pace: pace.report() }))
}

fn get(name: &str) -> Result<Pair> {
    load()?
        .pairs
        .remove(name)
        .with_context(|| format!("there is no pair named {name:?}; `cloudsync pair list` shows them"))
}

async fn run_by_hand(name: &str, dry_run: bool, json: bool) -> Result<()> {
    let out = run_pair(name, dry_run, !json, false, None).await?.context("the pair did not run")?;
    if json {
        #[derive(Serialize)]
        struct Doc<'a> {
            pair: &'a str,
            #[serde(flatten)]
            summary: &'a cloudsync_connectors::Summary,
            #[serde(flatten)]
            pace: cloudsync_connectors::PaceReport,
        }
        print_json(&Doc { pair: name, summary: &out.summary, pace: out.pace })?;
        return connections::problems(&out.summary, &out.from);
    }
    if out.pace.pushbacks > 0 {
        eprintln!(
            "The remote pushed back {} request(s); the run slowed down {} time(s) and went on.",
            out.pace.pushbacks, out.pace.slowdowns
        );
    }
    connections::report(&out.summary, out.verb, &out.from, false)
}

fn log(line: &str) {
    let stamp = time::OffsetDateTime::now_utc();
    eprintln!("{} {line}", date(stamp));
}

/// A line on how far a running pair is.
fn status_line(name: &str, tally: &Tally, began: std::time::Instant) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let took = began.elapsed().as_secs();
    if !tally.listed.load(Relaxed) {
        return format!("pair {name}: running for {took}s, still listing both sides");
    }
    format!(
        "pair {name}: running for {took}s, {} of {} copied so far",
        size(tally.bytes.load(Relaxed)),
        size(tally.total.load(Relaxed))
    )
}

/// `pair daemon [--once]`: runs each pair with a schedule when it is due, one at a time, until interrupted; a
/// running pair is reported every `status_every`.
async fn daemon(once: bool, status_every: Option<Duration>) -> Result<()> {
    if !once {
        log("pair daemon started; Ctrl-C stops it (a run in progress is stopped too, and is run again a minute later)");
    }
    loop {
        let mut failed = 0;
        let pairs = load()?;
        let state = load_state()?;
        let mut due: Vec<(i64, String)> = pairs
            .pairs
            .iter()
            .filter_map(|(name, p)| next_run(p, state.get(name)).map(|t| (t, name.clone())))
            .collect();
        due.sort();
        let mut next_wake = now().saturating_add(i64::try_from(DAEMON_TICK.as_secs()).unwrap_or(30));
        for (at, name) in due {
            if at > now() {
                next_wake = next_wake.min(at);
                continue;
            }
            let Some(pair) = pairs.pairs.get(&name) else { continue };
            log(&format!("pair {name}: due ({} -> {})", pair.from, pair.to));
            let tally = Arc::new(Tally::default());
            let run = run_pair(&name, false, false, true, Some(tally.clone()));
            tokio::pin!(run);
            let began = std::time::Instant::now();
            // A long run is not silent: how far it is, now and then.
            let every = status_every.unwrap_or(DAEMON_TICK);
            let mut status = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let interrupted = tokio::signal::ctrl_c();
            tokio::pin!(interrupted);
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = status.tick(), if status_every.is_some() => log(&status_line(&name, &tally, began)),
                    _ = &mut interrupted, if !once => {
                        log("pair daemon stopped");
                        return Ok(());
                    }
                }
            };
            // A NAS session (Synology) opened by the run ends with it, not when the daemon stops.
            cloudsync_connectors::sign_out().await;
            match result {
                Ok(None) => log(&format!("pair {name}: skipped (running already, or no longer due)")),
                Ok(Some(out)) => {
                    let s = &out.summary;
                    let mut line = format!(
                        "pair {name}: copied {} file(s) ({}), {} unchanged, {} deleted",
                        s.copied.len(),
                        size(s.bytes),
                        s.unchanged,
                        s.deleted.len()
                    );
                    if out.pace.pushbacks > 0 {
                        line.push_str(&format!(
                            ", {} request(s) pushed back, slowed down {} time(s)",
                            out.pace.pushbacks, out.pace.slowdowns
                        ));
                    }
                    if !s.errors.is_empty() {
                        failed += 1;
                        line.push_str(&format!(", {} FAILED (first: {})", s.errors.len(), s.errors[0].error));
                    }
                    log(&line);
                }
                Err(e) => {
                    failed += 1;
                    log(&format!("pair {name}: FAILED: {e:#}"));
                }
            }
        }
        if once {
            if failed > 0 {
                bail!("{failed} pair run(s) failed (the lines above say why)");
            }
            return Ok(());
        }
        let wait = u64::try_from(next_wake.saturating_sub(now())).unwrap_or(0).clamp(1, DAEMON_TICK.as_secs());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            _ = tokio::signal::ctrl_c() => {
                log("pair daemon stopped");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_rates_are_read_as_written() {
        assert_eq!(parse_every("1h").ok(), Some(3600));
        assert_eq!(parse_every("1h30m").ok(), Some(5400));
        assert_eq!(parse_every("90").ok(), Some(90));
        assert_eq!(parse_every("2d").ok(), Some(172_800));
        for bad in ["", "h", "5s", "1x", "1h30", "-1h", "99999999999999999999d", "400d"] {
            assert!(parse_every(bad).is_err(), "{bad:?}");
        }
        assert_eq!(show_every(5400), "1h30m");
        assert_eq!(parse_rate("10M").ok(), Some(10 << 20));
        assert_eq!(parse_rate("512K").ok(), Some(512 << 10));
        assert_eq!(parse_rate("2.5MiB/s").ok(), Some(5 << 19));
        assert_eq!(parse_rate("4096").ok(), Some(4096));
        for bad in ["", "0", "10", "-1M", "fastM", "NaNK", "infK"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        let err = parse_rate("ten").unwrap_err().to_string();
        assert!(err.contains("10M"), "{err}");
    }

    #[test]
    fn due_times_follow_the_schedule_and_retry_failures_sooner() {
        let pair = Pair {
            from: "/a".into(),
            to: "x:b".into(),
            every_seconds: Some(3600),
            bwlimit_bytes_per_second: None,
            max_requests_per_second: None,
            concurrency: 4,
            delete: false,
            checksum: false,
            as_of: None,
        };
        assert_eq!(next_run(&pair, None), Some(0), "never run: due now");
        let ok = PairState {
            last_started: Some(1000),
            last_finished: Some(1100),
            last_ok: Some(true),
            ..PairState::default()
        };
        assert_eq!(next_run(&pair, Some(&ok)), Some(4600));
        let failed = |n| PairState { last_ok: Some(false), failures: n, ..ok.clone() };
        assert_eq!(next_run(&pair, Some(&failed(1))), Some(1160));
        assert_eq!(next_run(&pair, Some(&failed(3))), Some(1340));
        assert_eq!(next_run(&pair, Some(&failed(30))), Some(4700), "never later than the schedule after it ended");
        let stopped = PairState { last_started: Some(5000), ..ok.clone() };
        assert_eq!(next_run(&pair, Some(&stopped)), Some(5060), "a run that never ended is due again soon");
        let by_hand = Pair { every_seconds: None, ..pair };
        assert_eq!(next_run(&by_hand, Some(&ok)), None);
    }
}
