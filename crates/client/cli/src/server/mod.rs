//! `cloudsync server ...`: the embedded server. This is the one place that picks the store backend (by URL
//! scheme) and the chunk backend (by configuration), loads the master key, and wires the services together.

pub mod config;
mod master_key;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cloudsync_blob::BlobStore;
use cloudsync_server_core::{Core, GcOptions, GcReport, LoginLimits, SystemClock};
use cloudsync_server_http::{AppState, tls};
use cloudsync_store::Store;
use tokio::net::TcpListener;

pub use config::{DEFAULT_CONFIG, ServerConfig};

/// Opens the metadata store named by the configuration, with the audit key derived from the server's master
/// key (for operators' tools and tests; the server itself uses [`build_core`]).
///
/// # Errors
/// An unknown scheme, an unusable master key, or a database that cannot be opened.
pub async fn open_store(cfg: &ServerConfig, data_dir: &Path) -> Result<Arc<dyn Store>> {
    let master = master_key::load_or_create(cfg, data_dir)?;
    open_store_keyed(cfg, data_dir, cloudsync_server_core::audit_key(&master)).await
}

/// The key of the audit chain's hashes on this server (for tools that check a chain themselves).
///
/// # Errors
/// An unusable master key.
pub fn audit_key(cfg: &ServerConfig) -> Result<cloudsync_store::AuditKey> {
    Ok(cloudsync_server_core::audit_key(&master_key::load_or_create(cfg, &cfg.data_dir())?))
}

async fn open_store_keyed(
    cfg: &ServerConfig,
    data_dir: &Path,
    audit_key: cloudsync_store::AuditKey,
) -> Result<Arc<dyn Store>> {
    let url =
        cfg.storage.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("meta.db").display()));
    if url.starts_with("sqlite:") {
        let store = cloudsync_store_sqlite::SqliteStore::connect(&url, audit_key)
            .await
            .with_context(|| format!("cannot open the database {url}"))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        bail!("PostgreSQL support is not in this build yet; use the embedded sqlite:// database")
    } else {
        bail!("unknown database URL scheme in {url:?}: use sqlite://PATH")
    }
}

/// Builds the services from configuration (creating the data directory and master key on first run).
///
/// # Errors
/// Unusable directories, master key, or database.
pub async fn build_core(cfg: &ServerConfig) -> Result<Core> {
    let data_dir = cfg.data_dir();
    create_private_dir(&data_dir)?;
    let master = master_key::load_or_create(cfg, &data_dir)?;
    let store = open_store_keyed(cfg, &data_dir, cloudsync_server_core::audit_key(&master)).await?;
    let chunks_dir = cfg.storage.chunks_dir.clone().unwrap_or_else(|| data_dir.join("chunks"));
    let blobs = BlobStore::local(&chunks_dir)
        .with_context(|| format!("cannot use the chunk directory {}", chunks_dir.display()))?;
    let limits = LoginLimits {
        per_account: cfg.security.login_attempts_per_account,
        per_ip: cfg.security.login_attempts_per_ip,
        window_ms: i64::try_from(cfg.security.login_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
    };
    Ok(Core::new(store, blobs, master, Arc::new(SystemClock)).with_login_limits(limits))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    Ok(())
}

/// A server that is listening.
#[derive(Debug)]
pub struct Started {
    /// `https://host:port`.
    pub url: String,
    /// Certificate fingerprint.
    pub fingerprint: [u8; 32],
}

/// A server ready to serve: services built, certificate loaded.
#[derive(Debug)]
pub struct Prepared {
    state: AppState,
    /// Garbage collection every this often (`None`: never by itself) with this grace period.
    gc: Option<(Duration, GcOptions)>,
    tls: Arc<rustls::ServerConfig>,
    /// Certificate fingerprint.
    pub fingerprint: [u8; 32],
}

/// Builds everything a server needs from configuration. Kept apart from [`Prepared::serve`] so that the serving
/// half can run on any runtime thread.
///
/// # Errors
/// Setup failures (directories, key, database, certificate).
pub async fn prepare(cfg: &ServerConfig) -> Result<Prepared> {
    let core = build_core(cfg).await?;
    let data_dir = cfg.data_dir();
    let material = match (&cfg.security.tls_cert, &cfg.security.tls_key) {
        (Some(c), Some(k)) => tls::from_files(c, k),
        (None, None) => tls::load_or_create(&data_dir.join("tls"), &cfg.server.public_names),
        _ => bail!("set both security.tls_cert and security.tls_key, or neither"),
    }
    .map_err(anyhow::Error::msg)?;
    let state = AppState { core, trusted_proxies: Arc::new(cfg.server.trusted_proxies.clone()) };
    let gc = (cfg.storage.gc_interval_hours > 0).then(|| {
        (
            Duration::from_secs(cfg.storage.gc_interval_hours.saturating_mul(3600)),
            gc_options(cfg.storage.gc_grace_hours, false),
        )
    });
    Ok(Prepared { state, gc, tls: material.config, fingerprint: material.fingerprint })
}

impl Prepared {
    /// What clients see at `listener`.
    ///
    /// # Errors
    /// When the listener has no address.
    pub fn started(&self, listener: &TcpListener) -> Result<Started> {
        let addr = listener.local_addr().context("listener address")?;
        let host = if addr.ip().is_unspecified() {
            "localhost".to_owned()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        Ok(Started { url: format!("https://{host}:{}", addr.port()), fingerprint: self.fingerprint })
    }

    /// Serves until `shutdown`.
    ///
    /// # Errors
    /// A fatal listener failure.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let gc = self.gc.map(|(every, opts)| tokio::spawn(collect_now_and_then(self.state.core.clone(), every, opts)));
        let served = cloudsync_server_http::serve(listener, self.tls, cloudsync_server_http::app(self.state), shutdown)
            .await
            .context("the server stopped with an error");
        if let Some(task) = gc {
            task.abort();
        }
        served
    }
}

/// The first collection waits this long after start (a server restarted often still collects).
const FIRST_GC_AFTER: Duration = Duration::from_secs(600);

/// Collects garbage [`FIRST_GC_AFTER`] start, then every `every`; failures are logged and the next round
/// goes on.
async fn collect_now_and_then(core: Core, every: Duration, opts: GcOptions) {
    tokio::time::sleep(FIRST_GC_AFTER.min(every)).await;
    loop {
        match core.collect_garbage(opts).await {
            Ok(r) => tracing::info!(
                condemned = r.chunks_condemned,
                deleted = r.chunks_deleted,
                bytes_freed = r.bytes_freed,
                skipped = r.skipped.len(),
                "garbage collection done"
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed; it runs again later"),
        }
        tokio::time::sleep(every).await;
    }
}

fn gc_options(grace_hours: u64, dry_run: bool) -> GcOptions {
    GcOptions { grace_ms: i64::try_from(grace_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX), dry_run }
}

/// `cloudsync server gc`: one collection now (safe while the server runs).
///
/// # Errors
/// A grace period under an hour, an unusable data directory, or a store failure.
pub async fn collect_garbage(cfg: &ServerConfig, grace_hours: u64, dry_run: bool) -> Result<GcReport> {
    if grace_hours == 0 {
        bail!(
            "--grace-hours must be at least 1: a shorter grace period could delete chunks an upload in flight is \
             about to commit"
        );
    }
    let core = build_core(cfg).await?;
    // Reading every manifest of a large server takes a while: a spinner on a terminal says where it is.
    let spinner = cloudsync_sync::progress::spinner(true, "Collecting garbage…");
    let report = core
        .collect_garbage_reporting(gc_options(grace_hours, dry_run), |n, total| {
            spinner.set_message(format!("Collecting garbage: workspace {n} of {total}"));
        })
        .await;
    cloudsync_sync::progress::end(&spinner, &report);
    Ok(report?)
}

/// A collection's report in words.
pub fn describe_gc(r: &GcReport) -> String {
    let verb = if r.dry_run { "Would free" } else { "Freed" };
    let mut out = format!(
        "{verb} {} in {} workspace(s): {} chunk(s) of {} are named by no file version; {} condemned now, {} deleted \
         ({} pack(s), {} pack(s) never recorded, {} single object(s) removed), {} spared.",
        crate::client::output::size(r.bytes_freed),
        r.workspaces,
        r.chunks - r.chunks_referenced,
        r.chunks,
        r.chunks_condemned,
        r.chunks_deleted,
        r.packs_deleted,
        r.unrecorded_packs_deleted,
        r.objects_deleted,
        r.chunks_spared,
    );
    if r.dead_bytes_in_live_packs > 0 {
        out.push_str(&format!(
            "\n{} of deleted chunks stay inside packs that still hold live chunks.",
            crate::client::output::size(r.dead_bytes_in_live_packs)
        ));
    }
    for s in &r.skipped {
        out.push_str(&format!("\nskipped workspace {s}"));
    }
    out
}

/// Prepares and serves on `listener` until `shutdown`; `on_ready` is told the URL and fingerprint first.
///
/// # Errors
/// Setup failures (directories, key, database, certificate).
pub async fn run(
    cfg: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Started),
) -> Result<()> {
    let prepared = prepare(&cfg).await?;
    on_ready(&prepared.started(&listener)?);
    prepared.serve(listener, shutdown).await
}

/// Creates an account directly in the server's database (for the operator on the host; works while the server
/// runs).
///
/// # Errors
/// Invalid input, an existing account, or an unusable data directory.
pub async fn create_user(
    cfg: &ServerConfig,
    email: &str,
    password: &str,
    admin: bool,
) -> Result<cloudsync_store::UserRecord> {
    let core = build_core(cfg).await?;
    Ok(core.create_user(email, password, admin, None).await?)
}
