//! What the CLI test binaries share: a real server started with `cloudsync server start` on port 0, accounts
//! made with `cloudsync server user create`, client "machines" with their own home, and direct access to the
//! server's database for tests that play a server gone bad.
#![allow(dead_code, reason = "each test binary uses a part of these helpers")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_cloudsync");
pub const PASSWORD: &str = "a long enough password";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub fingerprint: String,
    pub data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(data: &Path) -> Server {
    start_server_logging(data, None)
}

/// Starts a server; with `log`, its debug log (`-vv`) goes to that file.
pub fn start_server_logging(data: &Path, log: Option<&Path>) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "start", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data).stdout(Stdio::piped());
    match log {
        Some(path) => cmd.arg("-vv").stderr(std::fs::File::create(path).expect("log file")),
        None => cmd.stderr(Stdio::null()),
    };
    let mut child = cmd.spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut fingerprint) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(u) = line.strip_prefix("CloudSync server listening on ") {
            url = u.trim().to_owned();
        }
        if let Some(f) = line.strip_prefix("TLS certificate SHA-256 fingerprint: ") {
            fingerprint = f.trim().to_owned();
            break;
        }
    }
    assert!(
        url.starts_with("https://127.0.0.1:") && fingerprint.len() == 95,
        "server did not start: {url} {fingerprint}"
    );
    std::thread::spawn(move || for _ in lines {});
    Server { child, url, fingerprint, data: data.to_path_buf() }
}

/// A client "machine": its own config directory and file credential store.
pub struct Client {
    pub home: PathBuf,
}

impl Client {
    pub fn new(root: &Path, name: &str) -> Self {
        let home = root.join(name);
        std::fs::create_dir_all(&home).expect("home");
        Self { home }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CLOUDSYNC_CONFIG_DIR", self.home.join("config"))
            .env("CLOUDSYNC_CREDENTIAL_STORE", "file")
            .env("HOME", &self.home)
            .env_remove("CLOUDSYNC_SERVER")
            .env_remove("CLOUDSYNC_SERVER_FINGERPRINT")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cloudsync")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "cloudsync {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "cloudsync {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child =
            self.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        // A command that refuses before reading its input closes stdin early: that is an answer, not a test failure.
        match child.stdin.take().expect("stdin").write_all(input.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
            _ => {}
        }
        child.wait_with_output().expect("wait")
    }

    pub fn login(&self, srv: &Server, email: &str) {
        let out = self.with_stdin(&login_args(srv, email, &srv.fingerprint), &format!("{PASSWORD}\n"));
        assert!(out.status.success(), "login failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A fresh server with one account (named after the email's local part) logged in and owning `workspace`.
pub fn signed_in(root: &Path, email: &str, admin: bool, workspace: &str) -> (Server, Client) {
    let srv = start_server(&root.join("server"));
    create_user(&srv, email, admin);
    let client = Client::new(root, email.split('@').next().unwrap_or(email));
    client.login(&srv, email);
    client.ok(&["workspace", "create", workspace]);
    (srv, client)
}

/// `cloudsync login` for scripts: password on stdin, certificate pinned by `fingerprint`.
pub fn login_args<'a>(srv: &'a Server, email: &'a str, fingerprint: &'a str) -> [&'a str; 8] {
    ["login", "--server", &srv.url, "--email", email, "--password-stdin", "--fingerprint", fingerprint]
}

pub fn create_user(srv: &Server, email: &str, admin: bool) {
    let mut args = vec!["server", "user", "create", email, "--password-stdin", "--data-dir"];
    let data = srv.data.to_str().expect("utf8 path");
    args.push(data);
    if admin {
        args.push("--admin");
    }
    let mut child = Command::new(BIN).args(&args).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("{PASSWORD}\n").as_bytes()).expect("stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "user create: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not one JSON document ({e}): {s}"))
}

pub fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, bytes).expect("write");
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

/// Runs one SQL statement on the server's database, as someone with write access to the host might.
pub fn tamper(srv: &Server, sql: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", srv.data.join("meta.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open database");
        sqlx::query(sql).execute(&mut c).await.expect("tamper");
    });
}

/// One number from the server's database.
pub fn count(srv: &Server, sql: &str) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}", srv.data.join("meta.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open database");
        sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("count")
    })
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
