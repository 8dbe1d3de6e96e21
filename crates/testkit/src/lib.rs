//! Test kit: starts real CloudSync servers (the same wiring as `cloudsync server start`) on 127.0.0.1 port 0
//! in a temporary data directory, creates accounts and hands out SDK clients logged in to them. Every test gets
//! its own server, so tests run in parallel without sharing state.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cloudsync_cli::server::{self, ServerConfig};
use cloudsync_sdk::{Client, Trust};
use cloudsync_types::api::LoginRequest;
use tokio::sync::oneshot;

/// Password every test account gets.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running server.
#[derive(Debug)]
pub struct TestServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The certificate fingerprint to pin.
    pub fingerprint: [u8; 32],
    /// The configuration it runs with.
    pub config: ServerConfig,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl TestServer {
    /// Starts a server with default settings.
    ///
    /// # Panics
    /// When the server cannot start (a test setup failure).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` has adjusted its configuration.
    ///
    /// # Panics
    /// When the server cannot start.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = ServerConfig::default();
        config.server.data_dir = Some(dir.path().join("data"));
        config.server.listen = "127.0.0.1:0".into();
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let prepared = server::prepare(&config).await.expect("test server setup");
        let started = prepared.started(&listener).expect("address");
        let (url, fingerprint) = (started.url, started.fingerprint);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(prepared.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self { url, fingerprint, config, dir, stop: Some(stop), task: Some(task) }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir()
    }

    /// A scratch directory that is removed with the server.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A client with no session, pinned to this server's certificate.
    ///
    /// # Panics
    /// Never for a running server.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, Trust::Fingerprint(self.fingerprint)).expect("client")
    }

    /// Creates an account directly in the database, as `cloudsync server user create` does.
    ///
    /// # Errors
    /// When the account cannot be created.
    pub async fn create_user(&self, email: &str, admin: bool) -> Result<()> {
        server::create_user(&self.config, email, PASSWORD, admin).await.map(|_| ())
    }

    /// Creates an account and returns a client logged in to it.
    ///
    /// # Panics
    /// When the account cannot be created or logged in.
    pub async fn user(&self, email: &str) -> Client {
        self.create_user(email, false).await.expect("create account");
        self.login(email).await.expect("login")
    }

    /// Logs in as an existing account.
    ///
    /// # Errors
    /// When the login fails.
    pub async fn login(&self, email: &str) -> Result<Client> {
        let c = self.anonymous();
        let r = c
            .auth()
            .login(&LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
                device_name: "test".into(),
                totp: None,
            })
            .await
            .context("login")?;
        Ok(c.with_token(r.token))
    }

    /// Stops the server and waits for it.
    ///
    /// # Panics
    /// When the server ended with an error.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server result");
        }
    }
}

/// `len` deterministic, incompressible-looking bytes (xorshift) for `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Every file below `dir` (recursively).
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Paths of files below `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}
