//! Connections against real servers on 127.0.0.1: s3s-fs and moto (S3 with SigV4 checked), wsgidav (WebDAV
//! over HTTPS with a private CA) and rclone (WebDAV), pyftpdlib and vsftpd (FTPS, TLS required on control and
//! data; vsftpd also requires TLS session reuse) and OpenSSH's sshd (SFTP);
//! and, where no real server can be had offline (Dropbox, OneDrive, pCloud), `tests/peers/clouds.py`, a fake
//! of exactly the endpoints used. One behaviour suite runs on every connector; secrets go to the real Secret
//! Service that `scripts/test` starts. Each peer is missing only if `scripts/test` could not install it, and
//! then the test fails.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{noise, write};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cloudsync");
const PEER_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py");
const CLOUDS_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/clouds.py");
const SYNOLOGY_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/synology.py");

struct Peer {
    child: Child,
    info: Value,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().expect("wait").is_none(), "{what} exited before it served");
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A peer from `tests/peers/peer.py`, once it has written its `peer.json`.
fn python_peer(kind: &str, args: &[&Path]) -> Peer {
    python_script(PEER_PY, kind, args)
}

/// A peer started by a script of `tests/peers`, once it has written its `peer.json`.
fn python_script(script: &str, kind: &str, args: &[&Path]) -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(kind)
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
        .spawn()
        .expect("python3 runs (scripts/test installs the peers)");
    let info_path = dir.path().join("peer.json");
    let start = Instant::now();
    while !info_path.exists() {
        if child.try_wait().expect("wait").is_some() || start.elapsed() > Duration::from_secs(90) {
            let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
            panic!("the {kind} peer did not start (scripts/test installs wsgidav, cheroot, pyftpdlib): {log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let info: Value = serde_json::from_slice(&std::fs::read(&info_path).expect("peer.json")).expect("json");
    let port = u16::try_from(info["port"].as_u64().expect("port")).expect("port");
    Peer { child, info, port, dir }
}

fn s3s_fs(root: &Path) -> Peer {
    s3s_fs_on(root, free_port())
}

fn s3s_fs_on(root: &Path, port: u16) -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let spawn = || {
        Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "AKTEST", "--secret-key"])
            .arg("s3s secret key 1")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs runs (scripts/test installs it with cargo install)")
    };
    let mut child = spawn();
    // Started again on the port it had (a test that stops its server midway): the port may not be free again
    // at once (connections of the old server closing), so a start that exits at once is tried again.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        if child.try_wait().expect("wait").is_none() {
            break;
        }
        child = spawn();
    }
    wait_port(port, &mut child, "s3s-fs");
    let info = serde_json::json!({"port": port, "access_key_id": "AKTEST", "secret": "s3s secret key 1"});
    Peer { child, info, port, dir }
}

/// OpenSSH's sshd on a free port, accepting `user_key` for the current user.
fn sshd(user_pub: &Path) -> Peer {
    sshd_with(&format!("AuthorizedKeysFile {}\nPasswordAuthentication no\n", user_pub.display()))
}

/// OpenSSH's sshd on a free port, with the given sign-in settings (and an ed25519 host key).
fn sshd_with(sign_in: &str) -> Peer {
    sshd_keyed(sign_in, "ed25519")
}

/// OpenSSH's sshd on a free port, with the given sign-in settings and a host key of type `key_type`.
fn sshd_keyed(sign_in: &str, key_type: &str) -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let host_key = dir.path().join("host_key");
    keygen_typed(&host_key, key_type, "");
    let port = free_port();
    let cfg = dir.path().join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\n{sign_in}KbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPidFile {}\n\
             Subsystem sftp internal-sftp\n",
            host_key.display(),
            dir.path().join("sshd.pid").display()
        ),
    )
    .expect("config");
    std::fs::create_dir_all("/run/sshd").ok();
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("OpenSSH's sshd is installed (scripts/test installs openssh-server)");
    let mut child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
        .spawn()
        .expect("sshd");
    wait_port(port, &mut child, "sshd");
    Peer { child, info: Value::Null, port, dir }
}

fn keygen(path: &Path) {
    keygen_sealed(path, "");
}

/// A key pair whose private key is sealed with `passphrase` (none when empty).
fn keygen_sealed(path: &Path, passphrase: &str) {
    keygen_typed(path, "ed25519", passphrase);
}

fn keygen_typed(path: &Path, key_type: &str, passphrase: &str) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// The key part (`TYPE BASE64`) of the key pinned for `[127.0.0.1]:port` in a known_hosts file.
fn pinned(known_hosts: &Path, port: &str) -> Option<String> {
    let found = Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{port}"), "-f"])
        .arg(known_hosts)
        .output()
        .expect("ssh-keygen -F");
    let found = String::from_utf8(found.stdout).expect("utf8");
    found
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" "))
}

/// A test CA and a certificate for 127.0.0.1 it signed, as PEM files in `dir`: (ca, cert, key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "CloudSync test CA");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    leaf_params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).expect("leaf");
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).expect("ca");
    std::fs::write(&paths.1, leaf.pem()).expect("cert");
    std::fs::write(&paths.2, leaf_key.serialize_pem()).expect("key");
    paths
}

/// wsgidav over HTTPS with a private CA, serving the client's `davroot` folder as user alice; `extra` goes to
/// peer.py after the certificate (a request-rate limit).
struct Dav {
    peer: Peer,
    served: PathBuf,
    ca: PathBuf,
    endpoint: String,
}

fn dav(c: &Client, extra: &[&Path]) -> Dav {
    let (ca, cert, key) = test_ca(c.root.path());
    let served = c.path("davroot");
    std::fs::create_dir_all(&served).expect("dav root");
    let args: Vec<&Path> = [served.as_path(), &cert, &key].into_iter().chain(extra.iter().copied()).collect();
    let peer = python_peer("webdav", &args);
    let endpoint = format!("https://127.0.0.1:{}/dav", peer.port);
    Dav { peer, served, ca, endpoint }
}

/// A client with its own config directory and home (for ssh's known_hosts).
struct Client {
    root: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Client {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("home")).expect("home");
        Self { root, env: Vec::new() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self.spawn(args);
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            writeln!(input, "{text}").expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("cloudsync output")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(Command::new(BIN), args).spawn().expect("spawn cloudsync")
    }

    /// Runs the client under a Python wrapper that reports its peak memory (the maximum resident set of that
    /// one child, in KiB); fails the test if the client failed.
    fn ok_peak_kib(&self, args: &[&str]) -> (String, u64) {
        let mut wrapper = Command::new("python3");
        wrapper.args([
            "-c",
            "import resource, subprocess, sys\n\
             r = subprocess.run(sys.argv[1:])\n\
             sys.stderr.write('peak-kib %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             sys.exit(r.returncode)",
            BIN,
        ]);
        // A backtrace asked for by the environment would be resolved when an error is logged, which costs far
        // more memory than the copy (debug information is read).
        let mut cmd = self.command(wrapper, args);
        cmd.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
        let out = cmd.output().expect("run cloudsync under python3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "cloudsync {args:?} failed: {stderr}");
        let peak = stderr
            .lines()
            .find_map(|l| l.strip_prefix("peak-kib "))
            .and_then(|n| n.trim().parse().ok())
            .expect("the wrapper reports the peak");
        (String::from_utf8_lossy(&out.stdout).into_owned(), peak)
    }

    fn command(&self, mut cmd: Command, args: &[&str]) -> Command {
        cmd.args(args)
            .env("CLOUDSYNC_CONFIG_DIR", self.path("config"))
            .env("CLOUDSYNC_STATE_DIR", self.path("state"))
            .env("HOME", self.path("home"))
            .env("XDG_STATE_HOME", self.path("home/.local/state"))
            .env_remove("CLOUDSYNC_CREDENTIAL_STORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(out.status.success(), "cloudsync {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all, None)).expect("json output")
    }

    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(!out.status.success(), "cloudsync {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().expect("array").iter().map(|s| s.as_str().expect("str").to_owned()).collect();
    out.sort();
    out
}

fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("rel").to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// What a connector can do, for the parts of the behaviour suite that depend on it.
#[derive(Clone, Copy)]
struct Caps {
    /// Creates empty files (OpenDAL's SFTP service does not).
    empty_files: bool,
    /// Largest upload to try.
    big: usize,
}

const FULL: Caps = Caps { empty_files: true, big: 12 << 20 };

/// The behaviour every connector must show: copy up, skip what is there, copy changes, copy down
/// byte-identical, mirror a deletion (planned first with --dry-run), move, and delete a folder.
fn behaviour(c: &Client, name: &str, caps: Caps) {
    let src = c.path(&format!("{name}-src"));
    write(&src.join("sub/a.txt"), b"first version");
    write(&src.join("sub/deeper/c.txt"), b"deep");
    write(&src.join("gone.txt"), b"deleted later");
    if caps.empty_files {
        write(&src.join("empty"), b"");
    }
    // Larger than one 8 MiB part: a multipart upload on S3, several writes elsewhere.
    write(&src.join("big.bin"), &noise(caps.big, 7));
    let remote = format!("{name}:t");
    let src_s = src.to_str().expect("utf8");
    let mut all: Vec<(String, u64)> = vec![
        ("big.bin".into(), caps.big as u64),
        ("gone.txt".into(), 13),
        ("sub/a.txt".into(), 13),
        ("sub/deeper/c.txt".into(), 4),
    ];
    if caps.empty_files {
        all.insert(1, ("empty".into(), 0));
    }
    let names: Vec<String> = all.iter().map(|(p, _)| p.clone()).collect();

    let up = c.json(&["copy", src_s, &remote]);
    assert_eq!(strings(&up["copied"]), names, "{up}");
    assert_eq!(up["bytes"], all.iter().map(|(_, n)| n).sum::<u64>());

    let listing = c.json(&["ls", &remote, "-R"]);
    let files: Vec<(String, u64)> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["is_dir"] == false)
        .map(|e| (e["path"].as_str().expect("path").to_owned(), e["size"].as_u64().expect("size")))
        .collect();
    assert_eq!(files, all, "{listing}");
    let top = c.json(&["ls", &remote]);
    assert!(
        top["entries"].as_array().expect("entries").iter().all(|e| !e["path"].as_str().expect("p").contains('/')),
        "without -R only the folder's own entries: {top}"
    );

    let again = c.json(&["copy", src_s, &remote]);
    assert_eq!(again["copied"].as_array().expect("copied").len(), 0, "nothing changed: {again}");
    assert_eq!(again["unchanged"], all.len());

    write(&src.join("sub/a.txt"), b"second, longer version");
    let changed = c.json(&["copy", src_s, &remote]);
    assert_eq!(strings(&changed["copied"]), ["sub/a.txt"], "{changed}");

    let down = c.path(&format!("{name}-down"));
    let down_s = down.to_str().expect("utf8");
    c.json(&["copy", &remote, down_s]);
    assert_eq!(files_under(&down), files_under(&src), "downloaded tree differs");
    let again = c.json(&["copy", &remote, down_s]);
    assert_eq!(again["unchanged"], all.len(), "a download gets the remote's time, so it is not copied again: {again}");

    // One file to a new name.
    c.json(&["copy", &src.join("sub/deeper/c.txt").to_string_lossy(), &format!("{remote}/single.txt")]);
    assert!(c.json(&["ls", &remote]).to_string().contains("single.txt"));

    std::fs::remove_file(src.join("gone.txt")).expect("rm");
    let plan = c.json(&["sync", src_s, &remote, "--delete", "--dry-run"]);
    assert_eq!(strings(&plan["deleted"]), ["gone.txt", "single.txt"], "{plan}");
    assert_eq!(plan["dry_run"], true);
    let still = c.json(&["ls", &remote]);
    assert!(still.to_string().contains("\"gone.txt\""), "a dry run deletes nothing: {still}");
    let mirrored = c.json(&["sync", src_s, &remote, "--delete"]);
    assert_eq!(strings(&mirrored["deleted"]), ["gone.txt", "single.txt"], "{mirrored}");
    let after = c.json(&["ls", &remote, "-R"]);
    assert!(!after.to_string().contains("gone.txt"), "{after}");

    let moved = c.path(&format!("{name}-moved"));
    c.json(&["move", &format!("{remote}/sub/deeper"), moved.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(moved.join("c.txt")).expect("moved"), b"deep");
    assert!(!c.json(&["ls", &remote, "-R"]).to_string().contains("c.txt"), "moved away");

    let err = c.fails(&["delete", &remote], None);
    assert!(err.contains("--recursive"), "{err}");
    let gone = c.json(&["delete", &remote, "--recursive"]);
    assert_eq!(gone["deleted"], all.len() - 2, "{gone}");
    let out = c.run(&["ls", &remote, "-R", "--json"], None);
    let empty = out.status.success()
        && serde_json::from_slice::<Value>(&out.stdout).expect("json")["entries"].as_array().is_some_and(Vec::is_empty);
    assert!(empty || !out.status.success(), "the folder is gone: {}", String::from_utf8_lossy(&out.stdout));
    assert!(files_under(&c.path("")).iter().all(|(p, _)| !is_partial_name(p)), "no partial file is left behind");
}

/// Secrets are in the credential store only: never in the config file, never shown.
fn secret_is_kept_out_of_files(c: &Client, name: &str, secret: &str) {
    let config = std::fs::read_to_string(c.path("config/connections.toml")).expect("connections.toml");
    assert!(config.contains(&format!("[connections.{name}]")), "{config}");
    assert!(!config.contains(secret), "the secret is not in the config file");
    assert!(!c.path("config/credentials.json").exists(), "no plaintext credential file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.path("config/connections.toml")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let shown = c.ok(&["connection", "show", name], None);
    assert!(!shown.contains(secret) && shown.contains("********"), "{shown}");
}

fn dbus() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "no D-Bus session: run the suite with scripts/test, which starts gnome-keyring on a private bus"
    );
}

#[test]
fn s3_connector_against_s3s_fs() {
    dbus();
    let c = Client::new();
    std::fs::create_dir_all(c.path("s3root/backup")).expect("bucket dir");
    let peer = s3s_fs(&c.path("s3root"));
    let endpoint = format!("http://127.0.0.1:{}", peer.port);
    let secret = peer.info["secret"].as_str().expect("secret");
    let add = ["connection", "add", "s3t", "--type", "s3", "--endpoint", &endpoint, "--bucket", "backup"];
    let add: Vec<&str> = add.into_iter().chain(["--access-key-id", "AKTEST", "--secret-stdin"]).collect();
    let err = c.fails(&add, Some(secret));
    assert!(err.contains("plain HTTP") && err.contains("--allow-insecure"), "{err}");
    let mut insecure = add.clone();
    insecure.push("--allow-insecure");
    c.ok(&insecure, Some(secret));
    secret_is_kept_out_of_files(&c, "s3t", secret);
    let err = c.fails(&insecure, Some(secret));
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(c.json(&["connection", "test", "s3t"])["ok"], true);
    let listed = c.json(&["connection", "list"]);
    assert_eq!(listed[0]["name"], "s3t");
    assert_eq!(listed[0]["bucket"], "backup");

    // A wrong secret key is refused by the server's signature check.
    let mut wrong = insecure.clone();
    wrong[2] = "s3bad";
    c.ok(&wrong, Some("not the secret key"));
    let err = c.fails(&["connection", "test", "s3bad"], None);
    assert!(err.contains("SignatureDoesNotMatch") || err.contains("denied"), "{err}");

    behaviour(&c, "s3t", FULL);

    c.ok(&["connection", "remove", "s3t"], None);
    let err = c.fails(&["connection", "show", "s3t"], None);
    assert!(err.contains("no connection named"), "{err}");
}

/// The partial files a download has left in `dir` to resume from.
fn partials(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| is_partial_name(&e.file_name().to_string_lossy()))
        .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
        .collect()
}

/// Waits until a download into `dir` has left at least `bytes` in a partial file.
fn wait_partial(dir: &Path, bytes: u64, child: &mut Child) {
    let start = Instant::now();
    while !partials(dir).iter().any(|(_, n)| *n >= bytes) {
        assert!(child.try_wait().expect("wait").is_none(), "the copy ended before it was cut off");
        assert!(start.elapsed() < Duration::from_secs(60), "no partial file of {bytes} bytes: {:?}", partials(dir));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `path` names a file a copy writes before it has its final name (`.cloudsync-….partial`).
fn is_partial_name(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.starts_with(".cloudsync-") && base.ends_with(".partial")
}

/// Starts `copy SRC DST --bwlimit 2M` into the folder `dst` (made if missing) and waits until it has left at
/// least `bytes` in a partial file there; returns the copy, still running.
fn start_slow_copy(c: &Client, src: &str, dst: &Path, bytes: u64) -> Child {
    std::fs::create_dir_all(dst).expect("mkdir");
    let mut running = c.spawn(&["copy", src, dst.to_str().expect("utf8"), "--bwlimit", "2M", "--json"]);
    wait_partial(dst, bytes, &mut running);
    running
}

/// A slow copy of `src` into `dst`, killed (SIGKILL: nothing is cleaned up) once `bytes` have arrived.
fn cut_off_copy(c: &Client, src: &str, dst: &Path, bytes: u64) {
    let mut running = start_slow_copy(c, src, dst, bytes);
    running.kill().expect("kill");
    running.wait().expect("wait");
}

/// moto (S3 with SigV4 enforced) on a free port, the arguments that add a connection NAME to its bucket
/// `backup` (the secret read from standard input), and the secret.
fn moto_connection(name: &str) -> (Peer, Vec<String>, String) {
    let peer = python_peer("moto", &[]);
    let endpoint = format!("http://127.0.0.1:{}", peer.port);
    let key_id = peer.info["access_key_id"].as_str().expect("key id").to_owned();
    let secret = peer.info["secret"].as_str().expect("secret").to_owned();
    let add = ["connection", "add", name, "--type", "s3", "--endpoint", &endpoint, "--bucket", "backup"];
    let add = add.into_iter().chain(["--access-key-id", &key_id, "--secret-stdin", "--allow-insecure"]);
    (peer, add.map(str::to_owned).collect(), secret)
}

/// Writes `file` anew: each new content gets a time clearly after the copy it replaces (copies compare size and
/// time), a minute apart.
fn rewriter(file: &Path) -> impl Fn(&[u8]) + '_ {
    let rewrites = std::cell::Cell::new(0u64);
    move |data: &[u8]| {
        write(file, data);
        rewrites.set(rewrites.get() + 1);
        let later = std::time::SystemTime::now() + Duration::from_secs(60 * rewrites.get());
        std::fs::File::options().write(true).open(file).expect("open").set_modified(later).expect("touch");
    }
}

/// The parts an S3 upload's state (a log: a head line, then a line a part sent) records.
fn s3_parts(state: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(state).ok()?;
    text.lines().next()?.contains("upload_id").then(|| text.lines().skip(1).count())
}

/// The pieces a Dropbox upload's state (a log: a head line, then a line a step) records as taken.
fn dropbox_pieces(state: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(state).ok()?;
    text.lines().next()?.contains("session_id").then(|| text.lines().filter(|l| *l == "\"took\"").count())
}

/// A slow upload of `file` to `dst`, killed once the state the client keeps of it (in `uploads`) records two
/// pieces sent (8 MiB each), as `sent` reads it.
fn cut_off_upload(c: &Client, file: &str, dst: &str, uploads: &Path, sent: fn(&[u8]) -> Option<usize>) {
    let mut running = slow_upload(c, file, dst, uploads, sent);
    running.kill().expect("kill");
    running.wait().expect("wait");
}

/// A slow upload of `file` to `dst`, still running once its state records two pieces sent.
fn slow_upload(c: &Client, file: &str, dst: &str, uploads: &Path, sent: fn(&[u8]) -> Option<usize>) -> Child {
    let mut running = c.spawn(&["copy", file, dst, "--bwlimit", "4M", "--json"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = std::fs::read_dir(uploads)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .find_map(|e| sent(&std::fs::read(e.path()).ok()?));
        if sent.is_some_and(|n| n >= 2) {
            break;
        }
        if running.try_wait().expect("wait").is_some() {
            let out = running.wait_with_output().expect("output");
            panic!(
                "the upload ended before it was cut off: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "two pieces were not sent within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

/// An upload to S3 cut off (the process killed) carries on from the parts already on the server at the next
/// run (moto, with SigV4 enforced, so the requests this client signs itself are checked): only the parts whose
/// bytes differ are sent, so a file changed meanwhile is never patched with stale parts; the object appears
/// only once whole, and a cut-off upload leaves the object there before untouched.
#[test]
fn an_interrupted_upload_to_s3_resumes_where_it_stopped() {
    dbus();
    let c = Client::new();
    let (_peer, add, secret) = moto_connection("s3u");
    c.ok(&strs(&add), Some(&secret));
    let file = c.path("up/big.bin");
    let file_s = file.to_str().expect("utf8");
    let uploads = c.path("state/uploads");
    let rewrite = rewriter(&file);
    let back = c.path("back.bin");
    let stored = || {
        let _ = std::fs::remove_file(&back);
        c.json(&["copy", "s3u:big.bin", back.to_str().expect("utf8")]);
        std::fs::read(&back).expect("read back")
    };
    let cut_off = || cut_off_upload(&c, file_s, "s3u:big.bin", &uploads, s3_parts);

    // 1. Killed midway: nothing at the key; the next run sends only what is missing.
    let big = noise(40 << 20, 21);
    write(&file, &big);
    cut_off();
    let listed = c.json(&["ls", "s3u:"]);
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(0), "the object does not appear half-sent: {listed}");
    let run = c.json(&["copy", file_s, "s3u:big.bin"]);
    assert_eq!(run["resumed"], 1, "{run}");
    let reused = run["resumed_bytes"].as_u64().expect("n");
    assert!((16 << 20..40 << 20).contains(&reused), "{run}");
    assert!(stored() == big, "the object is the file, whole");
    assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 0, "the finished upload's state is gone");

    // 2. The file's first part changes after the cut: that part is sent again, the others are taken up.
    let mut edited = noise(40 << 20, 24);
    rewrite(&edited);
    cut_off();
    assert!(stored() == big, "a cut-off upload leaves the object as it was");
    edited[100] ^= 0xff;
    rewrite(&edited);
    let run = c.json(&["copy", file_s, "s3u:big.bin"]);
    assert_eq!(run["resumed"], 1, "{run}");
    let reused = run["resumed_bytes"].as_u64().expect("n");
    assert!((8 << 20..40 << 20).contains(&reused), "{run}");
    assert!(stored() == edited, "the object is the edited file");

    // 3. The whole file changes after the cut: no part of the old bytes is used.
    rewrite(&noise(40 << 20, 26));
    cut_off();
    let newer = noise(40 << 20, 28);
    rewrite(&newer);
    let run = c.json(&["copy", file_s, "s3u:big.bin"]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert!(stored() == newer, "the object is the new file");

    // 4. A key with spaces, non-ASCII letters and characters the signature encodes, in a folder (on s3s-fs,
    // which checks signatures too; moto refuses OpenDAL's own requests for such keys): it lands where listings
    // show it.
    std::fs::create_dir_all(c.path("s3root/data")).expect("bucket dir");
    let other = s3s_fs(&c.path("s3root"));
    let endpoint = format!("http://127.0.0.1:{}", other.port);
    let add = ["connection", "add", "s3o", "--type", "s3", "--endpoint", &endpoint, "--bucket", "data"];
    let secret = other.info["secret"].as_str().expect("secret");
    c.ok(&[&add[..], &["--access-key-id", "AKTEST", "--secret-stdin", "--allow-insecure"]].concat(), Some(secret));
    let odd = c.path("odd/ü+x=~%.bin");
    let data = noise(12 << 20, 30);
    write(&odd, &data);
    c.json(&["copy", odd.to_str().expect("utf8"), "s3o:a dir/ü+x=~%.bin"]);
    let listed = c.json(&["ls", "s3o:a dir"]);
    assert!(listed.to_string().contains("ü+x=~%.bin"), "{listed}");
    assert!(std::fs::read(c.path("s3root/data/a dir/ü+x=~%.bin")).expect("stored") == data, "stored whole");
}

/// A download cut off (the process killed; the server gone) carries on from where it stopped at the next run,
/// as long as the source is the same: a changed source starts afresh (and the stale partial file goes), a
/// resumed file is checked against the source's hash, and the file never appears half-written.
#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    dbus();
    let c = Client::new();
    std::fs::create_dir_all(c.path("s3root/data")).expect("bucket dir");
    let port = free_port();
    let mut peer = s3s_fs_on(&c.path("s3root"), port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let secret = peer.info["secret"].as_str().expect("secret").to_owned();
    let add = ["connection", "add", "s3r", "--type", "s3", "--endpoint", &endpoint, "--bucket", "data"];
    c.ok(&[&add[..], &["--access-key-id", "AKTEST", "--secret-stdin", "--allow-insecure"]].concat(), Some(&secret));
    let src = c.path("src");
    // Large enough that the copy is still reading (OpenDAL reads 8 MiB pieces, two ahead) when it is cut off.
    let big = noise(40 << 20, 11);
    write(&src.join("big.bin"), &big);
    write(&src.join("small.txt"), b"small");
    c.json(&["copy", src.to_str().expect("utf8"), "s3r:"]);

    // 1. The copy is killed halfway (SIGKILL: nothing is cleaned up).
    let dst = c.path("dst");
    let dst_s = dst.to_str().expect("utf8");
    cut_off_copy(&c, "s3r:", &dst, 6 << 20);
    assert!(!dst.join("big.bin").exists(), "never visible half-written");
    let left = partials(&dst);
    assert_eq!(left.len(), 1, "{left:?}");
    let had = left[0].1;
    let run = c.json(&["copy", "s3r:", dst_s]);
    assert_eq!(run["resumed"], 1, "{run}");
    assert!(run["resumed_bytes"].as_u64().expect("n") >= 6 << 20, "{run}");
    assert!(run["resumed_bytes"].as_u64().expect("n") <= had, "{run}");
    assert_eq!(files_under(&dst), files_under(&src), "byte-identical after resuming");
    assert!(partials(&dst).is_empty(), "{:?}", partials(&dst));

    // 2. The server goes away midway: the copy fails after its retries and keeps what arrived; with the server
    // back, the next run resumes.
    let dst2 = c.path("dst2");
    let dst2_s = dst2.to_str().expect("utf8");
    let running = start_slow_copy(&c, "s3r:big.bin", &dst2, 4 << 20);
    drop(peer);
    let out = running.wait_with_output().expect("copy");
    assert!(!out.status.success(), "the copy failed with its server gone");
    let kept = partials(&dst2);
    assert_eq!(kept.len(), 1, "what arrived is kept: {kept:?}");
    // Tried again with the server still gone: fails, and what was kept is still there, whole.
    let err = c.fails(&["copy", "s3r:big.bin", dst2_s], None);
    assert!(err.contains("s3r"), "{err}");
    assert_eq!(partials(&dst2), kept, "a failed resume keeps the partial file");
    peer = s3s_fs_on(&c.path("s3root"), port);
    let run = c.json(&["copy", "s3r:big.bin", dst2_s]);
    assert_eq!(run["resumed"], 1, "{run}");
    assert_eq!(std::fs::read(dst2.join("big.bin")).expect("big"), big);
    assert!(partials(&dst2).is_empty());

    // 3. A partial file that does not hold what the source held (damaged on disk): the resumed whole fails the
    // source's hash and is removed, not installed; the next run copies it afresh.
    let dst3 = c.path("dst3");
    let dst3_s = dst3.to_str().expect("utf8");
    cut_off_copy(&c, "s3r:big.bin", &dst3, 4 << 20);
    let (partial, _) = partials(&dst3).pop().expect("partial");
    let mut damaged = std::fs::read(&partial).expect("read");
    damaged[1000] ^= 0xff;
    std::fs::write(&partial, &damaged).expect("damage");
    let err = c.fails(&["copy", "s3r:big.bin", dst3_s], None);
    assert!(err.contains("does not match the source's hash"), "{err}");
    assert!(!dst3.join("big.bin").exists() && partials(&dst3).is_empty(), "{:?}", partials(&dst3));
    let run = c.json(&["copy", "s3r:big.bin", dst3_s]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert_eq!(std::fs::read(dst3.join("big.bin")).expect("big"), big);

    // 4. The source changes after the cut: nothing of the old partial file is used, and it is swept away.
    let dst4 = c.path("dst4");
    let dst4_s = dst4.to_str().expect("utf8");
    cut_off_copy(&c, "s3r:big.bin", &dst4, 4 << 20);
    let newer = noise(40 << 20, 12);
    write(&src.join("big.bin"), &newer);
    c.json(&["copy", src.to_str().expect("utf8"), "s3r:"]);
    let run = c.json(&["copy", "s3r:big.bin", dst4_s]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert_eq!(std::fs::read(dst4.join("big.bin")).expect("big"), newer);
    assert!(partials(&dst4).is_empty(), "the stale partial file was swept: {:?}", partials(&dst4));

    // 5. Local to local: the same.
    let dst5 = c.path("dst5");
    let dst5_s = dst5.to_str().expect("utf8");
    cut_off_copy(&c, src.to_str().expect("utf8"), &dst5, 4 << 20);
    let run = c.json(&["copy", src.to_str().expect("utf8"), dst5_s]);
    assert_eq!(run["resumed"], 1, "{run}");
    assert_eq!(files_under(&dst5), files_under(&src));
    drop(peer);
}

/// The S3 connector against moto with its IAM authentication on, so every request's SigV4 signature is checked
/// against a key moto issued (without it moto takes any credentials): the behaviour suite, multipart upload
/// included, and a wrong secret key refused.
#[test]
fn s3_connector_against_moto_with_sigv4_enforced() {
    dbus();
    let c = Client::new();
    let (peer, add, secret) = moto_connection("moto");
    let (add, secret) = (strs(&add), secret.as_str());
    let mut wrong = add.clone();
    wrong[2] = "motobad";
    c.ok(&wrong, Some("not the secret key"));
    let err = c.fails(&["connection", "test", "motobad"], None);
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");

    c.ok(&add, Some(secret));
    secret_is_kept_out_of_files(&c, "moto", secret);
    assert_eq!(c.json(&["connection", "test", "moto"])["ok"], true);
    behaviour(&c, "moto", FULL);
    let log = std::fs::read_to_string(peer.dir.path().join("log")).expect("moto log");
    assert!(log.contains("?uploads") || log.contains("uploadId="), "the 12 MiB file went as a multipart upload: {log}");

    // --checksum: a file changed without a change of size or time is found by its MD5 against S3's entity tag
    // (multipart tags included, as this client splits), where size and time say it is the same.
    let cs = c.path("checksummed");
    write(&cs.join("big.bin"), &noise(12 << 20, 3));
    write(&cs.join("small.txt"), b"version one");
    let cs_s = cs.to_str().expect("utf8");
    c.json(&["copy", cs_s, "moto:cs"]);
    let when = std::fs::metadata(cs.join("small.txt")).expect("meta").modified().expect("mtime");
    write(&cs.join("small.txt"), b"version two");
    std::fs::File::options().write(true).open(cs.join("small.txt")).expect("open").set_modified(when).expect("touch");
    let by_time = c.json(&["copy", cs_s, "moto:cs"]);
    assert_eq!(by_time["unchanged"], 2, "size and time cannot tell: {by_time}");
    let by_hash = c.json(&["copy", cs_s, "moto:cs", "--checksum"]);
    assert_eq!(strings(&by_hash["copied"]), ["small.txt"], "{by_hash}");
    assert_eq!((by_hash["hashed"].as_u64(), by_hash["unhashed"].as_u64()), (Some(2), Some(0)), "{by_hash}");
    let again = c.json(&["copy", cs_s, "moto:cs", "--checksum"]);
    assert_eq!((again["unchanged"].as_u64(), again["hashed"].as_u64()), (Some(2), Some(2)), "{again}");
    // Downloads too: the local copy is hashed against the object's tag.
    let back = c.path("checksummed-back");
    c.json(&["copy", "moto:cs", back.to_str().expect("utf8")]);
    let down = c.json(&["copy", "moto:cs", back.to_str().expect("utf8"), "--checksum"]);
    assert_eq!((down["unchanged"].as_u64(), down["hashed"].as_u64()), (Some(2), Some(2)), "{down}");

    // --as-of: a versioned bucket copied as it was, before a change, a deletion and a new file.
    let mut history = add.clone();
    history[2] = "mh";
    history[8] = "history";
    c.ok(&history, Some(secret));
    let hist = c.path("hist");
    let hist_s = hist.to_str().expect("utf8");
    write(&hist.join("a.txt"), b"one");
    write(&hist.join("sub/b.txt"), b"bee");
    write(&hist.join("gone.txt"), b"deleted before");
    c.json(&["copy", hist_s, "mh:h"]);
    c.json(&["delete", "mh:h/gone.txt"]);
    std::fs::remove_file(hist.join("gone.txt")).expect("rm");
    // S3 lists versions' times to the second.
    std::thread::sleep(Duration::from_millis(1500));
    let then = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("time");
    let then = then.format(&time::format_description::well_known::Rfc3339).expect("format");
    std::thread::sleep(Duration::from_millis(1500));
    write(&hist.join("a.txt"), b"two");
    std::fs::remove_file(hist.join("sub/b.txt")).expect("rm");
    write(&hist.join("c.txt"), b"sea");
    let mirrored = c.json(&["sync", hist_s, "mh:h", "--delete"]);
    assert_eq!(strings(&mirrored["deleted"]), ["sub/b.txt"], "{mirrored}");
    let past = c.path("past");
    c.json(&["copy", "mh:h", past.to_str().expect("utf8"), "--as-of", &then]);
    assert_eq!(files_under(&past), [("a.txt".into(), b"one".to_vec()), ("sub/b.txt".into(), b"bee".to_vec())]);
    let now = c.path("now");
    c.json(&["copy", "mh:h", now.to_str().expect("utf8")]);
    assert_eq!(files_under(&now), [("a.txt".into(), b"two".to_vec()), ("c.txt".into(), b"sea".to_vec())]);
    // The past again over a newer copy of the same size: its older time does not hide the difference.
    let (now_s, past_s) = (now.to_str().expect("utf8"), past.to_str().expect("utf8"));
    let back = c.json(&["copy", "mh:h", now_s, "--as-of", &then]);
    assert_eq!(strings(&back["copied"]), ["a.txt", "sub/b.txt"], "{back}");
    assert_eq!(std::fs::read(now.join("a.txt")).expect("a"), b"one");
    let steady = c.json(&["copy", "mh:h", past_s, "--as-of", &then]);
    assert_eq!(steady["copied"].as_array().map(Vec::len), Some(0), "nothing changed since: {steady}");
    // Before the first version there was nothing; a local source has no versions to read.
    let err = c.fails(&["copy", "mh:h", past.to_str().expect("utf8"), "--as-of", "2001-01-01"], None);
    assert!(err.contains("held no files at that time"), "{err}");
    let err = c.fails(&["copy", hist_s, "mh:elsewhere", "--as-of", "1h"], None);
    assert!(err.contains("snapshot"), "{err}");

    // A bucket without versioning: a file overwritten since cannot be read as it was, so it is refused (and a
    // mirror keeps the destination's copy), not left out.
    std::thread::sleep(Duration::from_millis(1500));
    let t3 = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("time");
    let t3 = t3.format(&time::format_description::well_known::Rfc3339).expect("format");
    std::thread::sleep(Duration::from_millis(1500));
    write(&cs.join("small.txt"), b"version three, longer");
    c.json(&["copy", cs_s, "moto:cs"]);
    let out = c.path("unversioned");
    write(&out.join("small.txt"), b"the destination's copy");
    let run = c.json(&["sync", "moto:cs", out.to_str().expect("utf8"), "--as-of", &t3, "--delete"]);
    assert_eq!(strings(&run["copied"]), ["big.bin"], "{run}");
    assert!(run["refused"].to_string().contains("small.txt") && run["refused"].to_string().contains("versioning"));
    assert_eq!(std::fs::read(out.join("small.txt")).expect("kept"), b"the destination's copy");

    // A pair keeps a span, worked out at each run; its source must be a connection.
    let lag_dst = c.path("lagging");
    let lag = ["pair", "create", "lag", "--from", "mh:h", "--to", lag_dst.to_str().expect("utf8"), "--as-of"];
    let err = c.fails(&[&lag[..], &["0"]].concat(), None);
    assert!(err.contains("--as-of"), "{err}");
    c.ok(&[&lag[..], &["1h"]].concat(), None);
    let err = c.fails(&["pair", "run", "lag"], None);
    assert!(err.contains("held no files at that time"), "an hour ago the bucket was empty: {err}");
    let err = c.fails(&["pair", "create", "lag2", "--from", hist_s, "--to", "mh:x", "--as-of", "1h"], None);
    assert!(err.contains("must be a connection"), "{err}");
}

#[test]
fn webdav_connector_over_https_with_a_private_ca_and_hostile_names() {
    dbus();
    let c = Client::new();
    let Dav { peer, served, ca, endpoint } = dav(&c, &[]);
    let secret = peer.info["secret"].as_str().expect("secret");
    let ca_s = ca.to_str().expect("utf8");
    let add = ["connection", "add", "dav", "--type", "webdav", "--endpoint", &endpoint, "--user", "alice"];
    let mut add: Vec<&str> = add.into_iter().chain(["--secret-stdin"]).collect();

    // Certificates are verified by default: the private CA is not trusted until --ca-cert names it.
    c.ok(&add, Some(secret));
    let err = c.fails(&["connection", "test", "dav"], None);
    assert!(err.to_lowercase().contains("certificate") || err.contains("dav"), "{err}");
    add.extend(["--ca-cert", ca_s, "--replace"]);
    c.ok(&add, Some(secret));
    c.ok(&["connection", "test", "dav"], None);
    secret_is_kept_out_of_files(&c, "dav", secret);

    behaviour(&c, "dav", FULL);
    // Uploads stream in one request with its length (servers behind PHP-FPM store nothing for a chunked body),
    // under a temporary name renamed into place: the 12 MiB file of the suite went so.
    let puts: Vec<Value> = std::fs::read_to_string(peer.dir.path().join("puts.jsonl"))
        .expect("PUT record")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let big = (12u64 << 20).to_string();
    let big_put = puts.iter().find(|p| p["content_length"] == big.as_str()).unwrap_or_else(|| panic!("{puts:?}"));
    assert!(big_put["path"].as_str().is_some_and(|p| p.contains(".cloudsync-")), "{big_put}");
    assert!(puts.iter().all(|p| p["transfer_encoding"].is_null()), "never chunked: {puts:?}");
    // An upload the server fails (503 after the whole body) is sent again whole, and arrives.
    std::fs::write(peer.dir.path().join("fail-next-put"), b"").expect("trigger");
    let again = c.path("dav-again/again.bin");
    write(&again, &noise(3 << 20, 8));
    c.json(&["copy", again.to_str().expect("utf8"), "dav:again/again.bin"]);
    assert!(!peer.dir.path().join("fail-next-put").exists(), "the failure happened");
    assert_eq!(std::fs::read(served.join("again/again.bin")).expect("arrived"), noise(3 << 20, 8));
    let sent = std::fs::read_to_string(peer.dir.path().join("puts.jsonl")).expect("PUT record");
    let tries = sent.lines().filter(|l| l.contains(&format!("\"{}\"", 3 << 20))).count();
    assert_eq!(tries, 2, "sent twice: {sent}");

    // Names a hostile (or merely foreign) server can list are reported and skipped; nothing is written
    // outside the destination, not even through a symbolic link planted in it.
    write(&served.join("hostile/fine.txt"), b"fine");
    write(&served.join("hostile/back\\slash.txt"), b"x");
    write(&served.join("hostile/esc\u{1b}[31m.txt"), b"x");
    write(&served.join("hostile/CON"), b"x");
    let out_dir = c.path("hostile-out");
    let report = c.json(&["copy", "dav:hostile", out_dir.to_str().expect("utf8")]);
    assert_eq!(strings(&report["copied"]), ["fine.txt"], "{report}");
    assert_eq!(report["refused"].as_array().expect("refused").len(), 3, "{report}");
    assert_eq!(files_under(&out_dir), [("fine.txt".to_owned(), b"fine".to_vec())]);

    // Mistakes that must not lose data: a move onto itself, a mirror from a mistyped folder, a move over a
    // different file of the same size (it is copied, not taken as already there).
    write(&served.join("keep/a.txt"), b"precious");
    let err = c.fails(&["move", "dav:keep/a.txt", "dav:keep/"], None);
    assert!(err.contains("overlap"), "{err}");
    assert_eq!(std::fs::read(served.join("keep/a.txt")).expect("still there"), b"precious");
    let mirror_dst = c.path("mirror-dst");
    write(&mirror_dst.join("mine.txt"), b"mine");
    let err = c.fails(&["sync", "dav:kepp/", mirror_dst.to_str().expect("utf8"), "--delete"], None);
    assert!(err.contains("does not exist"), "{err}");
    assert!(mirror_dst.join("mine.txt").exists(), "nothing deleted after a mistyped source");
    let same_size = c.path("same-size");
    write(&same_size.join("a.txt"), b"imposter");
    c.json(&["move", "dav:keep", same_size.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(same_size.join("a.txt")).expect("moved"), b"precious");
    assert!(!served.join("keep/a.txt").exists());
    let err = c.fails(
        &["connection", "add", "leak", "--type", "webdav", "--endpoint", "https://u:pw@127.0.0.1/x", "--secret-stdin"],
        Some("x"),
    );
    assert!(err.contains("--user"), "{err}");

    write(&served.join("linked/sub/payload.txt"), b"payload");
    let elsewhere = c.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    let dest = c.path("linked-out");
    std::fs::create_dir_all(&dest).expect("dest");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&elsewhere, dest.join("sub")).expect("symlink");
    let out = c.run(&["copy", "dav:linked", dest.to_str().expect("utf8"), "--json"], None);
    assert!(!out.status.success(), "writing through a link fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert!(files_under(&elsewhere).is_empty(), "nothing was written through the link");

    // Every run is in the local history, newest first, failures with their reason.
    let runs = c.json(&["history"]);
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs[0]["command"], "copy");
    assert_eq!(runs[0]["src"], "dav:linked");
    assert_eq!(runs[0]["failed"], 1);
    assert!(runs[0]["errors"][0].as_str().expect("error").contains("symbolic link"), "{}", runs[0]);
    assert!(runs.iter().any(|r| r["command"] == "sync" && r["dry_run"] == true), "dry runs are recorded as such");
    assert!(runs.iter().any(|r| r["command"] == "move" && r["copied"] == 1));
    assert!(runs.iter().any(|r| r["command"] == "delete" && r["src"] == "dav:t" && r["copied"] == 3));
    assert!(!serde_json::to_string(runs).expect("json").contains(secret), "no secret in the history");

    // `local clear`: nothing without saying what; --connections also deletes the secrets from the keychain.
    let store = cloudsync_cli::client::credentials::CredentialStore::Keyring;
    // The account of this profile (the test's configuration folder).
    let account = cloudsync_cli::client::credentials::account_in("connection:dav", &c.path("config"));
    assert!(store.get(&account).expect("keyring").is_some());
    let err = c.fails(&["local", "clear"], None);
    assert!(err.contains("--history") && err.contains("--connections"), "{err}");
    c.ok(&["local", "clear", "--connections"], None);
    assert!(store.get(&account).expect("keyring").is_none(), "the secret left the keychain");
    assert_eq!(c.json(&["connection", "list"]), serde_json::json!([]));
    assert!(!c.json(&["history"]).as_array().expect("runs").is_empty(), "the history stays");
    c.ok(&["local", "clear", "--history"], None);
    assert_eq!(c.json(&["history"]), serde_json::json!([]));
}

#[test]
fn ftp_and_ftps_connectors_against_pyftpdlib() {
    dbus();
    let c = Client::new();
    let (ca, cert, key) = test_ca(c.root.path());
    let served = c.path("ftproot");
    std::fs::create_dir_all(&served).expect("ftp root");
    let tls = python_peer("ftps", &[&served, &cert, &key]);
    let plain = python_peer("ftp", &[&served]);
    let secret = tls.info["secret"].as_str().expect("secret");
    let add = |name: &'static str, kind: &'static str, port: u16| -> Vec<String> {
        ["connection", "add", name, "--type", kind, "--host", "127.0.0.1", "--port", &port.to_string()]
            .into_iter()
            .map(str::to_owned)
            .chain(["--user", "bob", "--secret-stdin"].map(str::to_owned))
            .collect()
    };
    let run_ok = |c: &Client, v: Vec<String>| c.ok(&strs(&v), Some(secret));

    // Plain FTP needs the explicit opt-in, with the reason.
    let plain_args = add("ftpx", "ftp", plain.port);
    let err = c.fails(&strs(&plain_args), Some(secret));
    assert!(err.contains("--allow-insecure") && err.contains("plain FTP"), "{err}");
    let mut opted = plain_args.clone();
    opted.push("--allow-insecure".into());
    run_ok(&c, opted);
    secret_is_kept_out_of_files(&c, "ftpx", secret);
    behaviour(&c, "ftpx", FULL);

    // FTPS: TLS on control and data connections, the certificate checked against the system's roots, or the
    // connection's own CA with --ca-cert.
    run_ok(&c, add("ftpsx", "ftps", tls.port));
    let err = c.fails(&["connection", "test", "ftpsx"], None);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let mut with_ca = add("ftpsx", "ftps", tls.port);
    with_ca.extend(["--ca-cert".into(), ca.to_string_lossy().into_owned(), "--replace".into()]);
    run_ok(&c, with_ca);
    c.ok(&["connection", "test", "ftpsx"], None);
    behaviour(&c, "ftpsx", FULL);
    // Between two connections (remote to remote, streamed through this machine).
    write(&served.join("r2r/one.txt"), b"one");
    write(&served.join("r2r/deep/two.bin"), &noise(40 << 10, 9));
    let both = c.json(&["copy", "ftpx:r2r", "ftpsx:r2r-copy"]);
    assert_eq!(strings(&both["copied"]), ["deep/two.bin", "one.txt"], "{both}");
    assert_eq!(files_under(&served.join("r2r-copy")), files_under(&served.join("r2r")));
    // Large files both ways over TLS are whole: uploads end with TLS's goodbye and the server's side read to its
    // end, so that closing the socket never resets it under bytes the server has not read.
    write(&served.join("large/big.bin"), &noise(12 << 20, 3));
    let down = c.path("ftps-large");
    c.json(&["copy", "ftpsx:large", down.to_str().expect("utf8")]);
    assert_eq!(files_under(&down), [("big.bin".to_owned(), noise(12 << 20, 3))]);
    let big_src = c.path("ftps-up/big.bin");
    write(&big_src, &noise(20 << 20, 5));
    c.json(&["copy", big_src.to_str().expect("utf8"), "ftpsx:up/big.bin"]);
    assert_eq!(std::fs::read(served.join("up/big.bin")).expect("uploaded"), noise(20 << 20, 5));
    // An empty file is a file.
    write(&c.path("empty-src/empty"), b"");
    c.json(&["copy", &c.path("empty-src").to_string_lossy(), "ftpsx:e"]);
    assert_eq!(std::fs::read(served.join("e/empty")).expect("empty file").len(), 0);
}

/// A folder `name` another (test) user can be given: in a temporary folder under /tmp open to others, as every
/// folder above it must be. The temporary folder goes when the first value is dropped.
fn open_folder(prefix: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let outer = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let inner = outer.path().join(name);
    std::fs::create_dir(&inner).expect("folder");
    (outer, inner)
}

/// The user `name`, made if missing (with `home` as its home), with a fresh random password; needs root.
fn system_user(name: &str, home: Option<&Path>) -> String {
    let root = Command::new("id").arg("-u").output().expect("id").stdout;
    assert_eq!(String::from_utf8_lossy(&root).trim(), "0", "this test makes a system user: run as root");
    let known = Command::new("id").arg(name).output().expect("id").status.success();
    if !known {
        let made = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd");
        // Another test run may have made it meanwhile.
        assert!(made.success() || Command::new("id").arg(name).status().expect("id").success(), "useradd failed");
    }
    if let Some(home) = home {
        let moved = Command::new("usermod").arg("--home").arg(home).arg(name).status().expect("usermod");
        assert!(moved.success(), "usermod failed");
    }
    let password = format!("pw-{:016x}-{}", rand_u64(), std::process::id());
    let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
    writeln!(chpasswd.stdin.take().expect("stdin"), "{name}:{password}").expect("write");
    assert!(chpasswd.wait().expect("chpasswd").success(), "chpasswd failed");
    password
}

/// vsftpd as strict as FTPS gets: TLS required for the sign-in and every data connection, and each data
/// connection must resume the control connection's TLS session (`require_ssl_reuse`, which breaks many FTPS
/// clients). Signs in as a system user through PAM; paths start in the user's home folder, as the server puts
/// them there. The behaviour suite (large files included), hidden files, a missing folder told from an empty
/// one, and a download resumed with REST.
#[test]
fn ftps_connector_against_vsftpd_with_tls_session_reuse_required() {
    dbus();
    let c = Client::new();
    // A home the user can write in: every folder above it must be open to others.
    let (_outer, home) = open_folder("cloudsync-ftp-", "home");
    const USER: &str = "cloudsync-ftp-test";
    let password = system_user(USER, Some(&home));
    let _lock = LockPassword(USER.to_owned());
    assert!(Command::new("chown").arg(USER).arg(&home).status().expect("chown").success());
    // vsftpd signs in through PAM: a service of its own checks the password only (Debian's vsftpd service also
    // wants the user's shell listed in /etc/shells).
    let pam = Path::new("/etc/pam.d/cloudsync-ftp-test");
    if !pam.exists() {
        std::fs::write(
            pam,
            "auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_permit.so\n",
        )
        .expect("PAM service");
    }
    let (ca, cert, key) = test_ca(c.root.path());
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("vsftpd.conf");
    let log = dir.path().join("vsftpd.log");
    std::fs::write(
        &cfg,
        format!(
            "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\nanonymous_enable=NO\n\
             local_enable=YES\nwrite_enable=YES\nlocal_umask=022\npam_service_name=cloudsync-ftp-test\n\
             ssl_enable=YES\nallow_anon_ssl=NO\nforce_local_logins_ssl=YES\nforce_local_data_ssl=YES\n\
             require_ssl_reuse=YES\nrsa_cert_file={}\nrsa_private_key_file={}\nseccomp_sandbox=NO\n\
             pasv_enable=YES\npasv_address=127.0.0.1\nxferlog_enable=YES\nvsftpd_log_file={}\n\
             dual_log_enable=YES\nlog_ftp_protocol=YES\nsecure_chroot_dir=/var/run/vsftpd/empty\n",
            cert.display(),
            key.display(),
            log.display()
        ),
    )
    .expect("config");
    std::fs::create_dir_all("/var/run/vsftpd/empty").expect("vsftpd's empty folder");
    let vsftpd = ["/usr/sbin/vsftpd", "/usr/bin/vsftpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("vsftpd is installed (scripts/test installs it)");
    // vsftpd writes its start-up errors to file descriptor 0.
    let errors = dir.path().join("errors");
    let mut child = Command::new(vsftpd)
        .arg(&cfg)
        .stdin(std::fs::OpenOptions::new().create(true).append(true).read(true).open(&errors).expect("errors"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vsftpd");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let failed = child.try_wait().expect("wait").is_some() || start.elapsed() > Duration::from_secs(30);
        assert!(!failed, "vsftpd did not start: {}", std::fs::read_to_string(&errors).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    let peer = Peer { child, info: Value::Null, port, dir };
    let port_s = port.to_string();
    let add = ["connection", "add", "vsx", "--type", "ftps", "--host", "127.0.0.1", "--port", &port_s, "--user", USER];
    c.ok(&[&add[..], &["--secret-stdin", "--ca-cert", ca.to_str().expect("utf8")]].concat(), Some(&password));
    secret_is_kept_out_of_files(&c, "vsx", &password);
    assert_eq!(c.json(&["connection", "test", "vsx"])["ok"], true);

    behaviour(&c, "vsx", FULL);
    let text = std::fs::read_to_string(peer.dir.path().join("vsftpd.log")).expect("vsftpd log");
    assert!(text.contains("OK UPLOAD"), "{text}");
    assert!(!text.contains("FAIL UPLOAD"), "every upload arrived whole: {text}");

    // Paths start in the home folder; hidden files are listed (LIST -a: vsftpd hides them otherwise).
    write(&home.join(".hidden"), b"dot");
    assert!(Command::new("chown").arg("-R").arg(USER).arg(&home).status().expect("chown").success());
    let top = c.json(&["ls", "vsx:"]);
    assert!(top["entries"].to_string().contains(".hidden"), "{top}");
    // vsftpd answers a listing of a missing folder with an empty one: it is still found missing.
    std::fs::create_dir(home.join("empty")).expect("empty folder");
    assert!(Command::new("chown").arg(USER).arg(home.join("empty")).status().expect("chown").success());
    assert_eq!(c.json(&["ls", "vsx:empty"])["entries"], serde_json::json!([]));
    let err = c.fails(&["ls", "vsx:no-such-folder"], None);
    assert!(err.contains("does not exist") || err.contains("not found"), "{err}");
    let mirror = c.path("mirror");
    write(&mirror.join("keep.txt"), b"keep");
    let err = c.fails(&["sync", "vsx:no-such-folder", mirror.to_str().expect("utf8"), "--delete"], None);
    assert!(err.contains("does not exist"), "{err}");
    assert!(mirror.join("keep.txt").exists());

    // A download cut off resumes with REST.
    write(&home.join("resume/big.bin"), &noise(16 << 20, 21));
    assert!(Command::new("chown").arg("-R").arg(USER).arg(&home).status().expect("chown").success());
    let dst = c.path("ftp-resume");
    let dst_s = dst.to_str().expect("utf8");
    cut_off_copy(&c, "vsx:resume", &dst, 4 << 20);
    let run = c.json(&["copy", "vsx:resume", dst_s]);
    assert_eq!(run["resumed"], 1, "{run}");
    assert_eq!(std::fs::read(dst.join("big.bin")).expect("big"), noise(16 << 20, 21));
    let text = std::fs::read_to_string(peer.dir.path().join("vsftpd.log")).expect("vsftpd log");
    assert!(text.contains("\"REST "), "the download resumed with REST: {text}");
}

/// rclone's WebDAV server, a second WebDAV peer (plain HTTP on loopback, so with --allow-insecure).
#[test]
fn webdav_connector_against_rclone_serve_webdav() {
    dbus();
    let c = Client::new();
    let served = c.path("rclone-root");
    std::fs::create_dir_all(&served).expect("root");
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let password = format!("rc-{:016x}", rand_u64());
    let mut child = Command::new("rclone")
        .args(["serve", "webdav"])
        .arg(&served)
        .args(["--addr", &format!("127.0.0.1:{port}"), "--user", "carol", "--pass", &password])
        .env("RCLONE_CONFIG", dir.path().join("rclone.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
        .spawn()
        .expect("rclone runs (scripts/test installs it)");
    wait_port(port, &mut child, "rclone serve webdav");
    let _peer = Peer { child, info: Value::Null, port, dir };
    let endpoint = format!("http://127.0.0.1:{port}/");
    let add = ["connection", "add", "rc", "--type", "webdav", "--endpoint", &endpoint, "--user", "carol"];
    let err = c.fails(&[&add[..], &["--secret-stdin"]].concat(), Some(&password));
    assert!(err.contains("--allow-insecure"), "{err}");
    c.ok(&[&add[..], &["--secret-stdin", "--allow-insecure"]].concat(), Some(&password));
    assert_eq!(c.json(&["connection", "test", "rc"])["ok"], true);
    behaviour(&c, "rc", FULL);
    let mut wrong = add.to_vec();
    wrong[2] = "rcbad";
    c.ok(&[&wrong[..], &["--secret-stdin", "--allow-insecure"]].concat(), Some("not the password"));
    let err = c.fails(&["connection", "test", "rcbad"], None);
    assert!(err.contains("refused the sign-in (401 Unauthorized)") && err.contains("--replace"), "{err}");
}

fn passwd_home() -> PathBuf {
    let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout).expect("utf8");
    let entry =
        String::from_utf8(Command::new("getent").args(["passwd", user.trim()]).output().expect("getent").stdout)
            .expect("utf8");
    PathBuf::from(entry.trim().split(':').nth(5).expect("home field"))
}

/// Forgets the test's host keys again: they are in the user's real known_hosts.
struct ForgetHostKeys(Vec<String>);

impl Drop for ForgetHostKeys {
    fn drop(&mut self) {
        for port in &self.0 {
            let _ = Command::new("ssh-keygen").args(["-R", &format!("[127.0.0.1]:{port}")]).output();
        }
    }
}

#[test]
fn sftp_connector_against_openssh_with_the_host_key_pinned() {
    dbus();
    let c = Client::new();
    let user_key = c.path("id_ed25519");
    keygen(&user_key);
    let peer = sshd(&c.path("id_ed25519.pub"));
    let port = peer.port.to_string();
    let mut forget = ForgetHostKeys(vec![port.clone()]);
    let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout).expect("utf8");
    let key_s = user_key.to_str().expect("utf8");
    let root = c.path("sftproot");
    std::fs::create_dir_all(&root).expect("root");
    let root_s = root.to_str().expect("utf8");
    let add = |port: &str| -> Vec<String> {
        ["connection", "add", "sf", "--type", "sftp", "--host", "127.0.0.1", "--port", port, "--user", user.trim()]
            .into_iter()
            .chain(["--key-file", key_s, "--root", root_s, "--replace"])
            .map(str::to_owned)
            .collect()
    };
    let args = add(&port);
    c.ok(&strs(&args), None);
    c.ok(&["connection", "test", "sf"], None);
    let known_hosts = passwd_home().join(".ssh/known_hosts");
    let found = Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{port}"), "-f"])
        .arg(&known_hosts)
        .output()
        .expect("ssh-keygen -F");
    let found = String::from_utf8(found.stdout).expect("utf8");
    let pinned_key = found
        .lines()
        .find(|l| !l.starts_with('#') && l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("the host key was pinned on first use: {found:?}"));
    let key_part: Vec<&str> = pinned_key.split_whitespace().skip(1).take(2).collect();
    behaviour(&c, "sf", Caps { empty_files: false, ..FULL });

    // Another server answers on a pinned address (a reinstalled host, or someone in the middle): its key is
    // not the pinned one, and the connection is refused with the reason.
    let other = sshd(&c.path("id_ed25519.pub"));
    let other_port = other.port.to_string();
    forget.0.push(other_port.clone());
    let mut all = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    all.push_str(&format!("[127.0.0.1]:{other_port} {}\n", key_part.join(" ")));
    std::fs::write(&known_hosts, all).expect("pin the first server's key for the second address");
    let args = add(&other_port);
    c.ok(&strs(&args), None);
    let err = c.fails(&["connection", "test", "sf"], None);
    assert!(err.contains("host key") && err.contains("intercept"), "{err}");
}

fn current_user() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout).expect("utf8").trim().to_owned()
}

/// A key file sealed with a passphrase (OpenDAL's SFTP service cannot ask for one): the passphrase is checked
/// when the connection is added and kept in the credential store; the behaviour suite runs over the SSH client
/// of our own, which pins the host key in the user's known_hosts as OpenSSH does and refuses a changed one.
#[test]
fn sftp_connector_with_a_key_sealed_by_a_passphrase() {
    dbus();
    let c = Client::new();
    let user_key = c.path("id_sealed");
    keygen_sealed(&user_key, "correct horse battery");
    let peer = sshd(&c.path("id_sealed.pub"));
    let port = peer.port.to_string();
    let user = current_user();
    let key_s = user_key.to_str().expect("utf8");
    let root = c.path("sealedroot");
    std::fs::create_dir_all(&root).expect("root");
    let root_s = root.to_str().expect("utf8");
    let add = |port: &str| -> Vec<String> {
        ["connection", "add", "sk", "--type", "sftp", "--host", "127.0.0.1", "--port", port, "--user", &user]
            .into_iter()
            .chain(["--key-file", key_s, "--root", root_s, "--replace", "--secret-stdin"])
            .map(str::to_owned)
            .collect()
    };
    let err = c.fails(&strs(&add(&port)), Some("not the passphrase"));
    assert!(err.contains("passphrase does not open the key file"), "{err}");
    let err = c.fails(&["connection", "show", "sk"], None);
    assert!(err.contains("no connection named"), "a refused passphrase saves nothing: {err}");

    c.ok(&strs(&add(&port)), Some("correct horse battery"));
    secret_is_kept_out_of_files(&c, "sk", "correct horse battery");
    let shown = c.json(&["connection", "show", "sk"]);
    assert_eq!(shown["sign_in"], "key file sealed with a passphrase", "{shown}");
    let known_hosts = c.path("home/.ssh/known_hosts");
    assert!(pinned(&known_hosts, &port).is_none(), "nothing is pinned before the first connection");
    c.ok(&["connection", "test", "sk"], None);
    let host_key = std::fs::read_to_string(peer.dir.path().join("host_key.pub")).expect("host key");
    let host_key: String = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(pinned(&known_hosts, &port).as_deref(), Some(host_key.as_str()), "pinned on first use, as OpenSSH does");
    behaviour(&c, "sk", FULL);
    // A file at the top of the root: no folder is made for it.
    c.json(&["copy", &c.path("id_sealed.pub").to_string_lossy(), "sk:top.pub"]);
    let top: Vec<String> = std::fs::read_dir(&root)
        .expect("root")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["top.pub"], "only the file is at the top of the root");

    // Another server on an address pinned with the first one's key, showing a key of another kind (ECDSA): refused
    // before signing in, with the reason (a key of a kind not pinned is not trusted on first use either).
    let other = sshd_keyed(
        &format!("AuthorizedKeysFile {}\nPasswordAuthentication no\n", c.path("id_sealed.pub").display()),
        "ecdsa",
    );
    let other_port = other.port.to_string();
    let mut all = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    all.push_str(&format!("[127.0.0.1]:{other_port} {host_key}\n"));
    std::fs::write(&known_hosts, &all).expect("pin the first server's key for the second address");
    c.ok(&strs(&add(&other_port)), Some("correct horse battery"));
    let err = c.fails(&["connection", "test", "sk"], None);
    assert!(err.contains("host key") && err.contains("intercept") && err.contains("ssh-keygen -R"), "{err}");
    assert_eq!(std::fs::read_to_string(&known_hosts).expect("known_hosts"), all, "a refused key is not pinned");
    let log = std::fs::read_to_string(other.dir.path().join("log")).expect("sshd log");
    assert!(
        !log.contains("Accepted") && !log.contains("Failed") && !log.contains("user"),
        "no sign-in was tried: {log}"
    );
}

/// A sealed key that ssh-agent holds already is used from there through OpenSSH, as before the SSH client of our
/// own: no passphrase is asked for or kept.
#[test]
fn sftp_connector_uses_a_sealed_key_held_by_ssh_agent_without_its_passphrase() {
    dbus();
    let mut c = Client::new();
    let user_key = c.path("id_agent");
    keygen_sealed(&user_key, "agent passphrase");
    let peer = sshd(&c.path("id_agent.pub"));
    let port = peer.port.to_string();
    let _forget = ForgetHostKeys(vec![port.clone()]);
    let socket = c.path("agent.sock");
    let mut agent =
        Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).stdout(Stdio::null()).spawn().expect("ssh-agent");
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let askpass = c.path("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\necho 'agent passphrase'\n").expect("askpass");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let added = Command::new("ssh-add")
        .arg(&user_key)
        .env("SSH_AUTH_SOCK", &socket)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", "none")
        .stdin(Stdio::null())
        .output()
        .expect("ssh-add");
    assert!(added.status.success(), "ssh-add: {}", String::from_utf8_lossy(&added.stderr));
    c.env.push(("SSH_AUTH_SOCK".into(), socket.to_str().expect("utf8").to_owned()));
    let root = c.path("agentroot");
    std::fs::create_dir_all(&root).expect("root");
    let user = current_user();
    let add = ["connection", "add", "ag", "--type", "sftp", "--host", "127.0.0.1", "--port", &port, "--user", &user];
    let key_s = user_key.to_str().expect("utf8").to_owned();
    let root_s = root.to_str().expect("utf8").to_owned();
    let add: Vec<&str> = add.into_iter().chain(["--key-file", &key_s, "--root", &root_s]).collect();
    c.ok(&add, None);
    let shown = c.json(&["connection", "show", "ag"]);
    assert_eq!(shown["sign_in"], "key file (or ssh-agent)", "{shown}");
    assert!(shown.get("secret").is_none(), "no passphrase is kept: {shown}");
    c.ok(&["connection", "test", "ag"], None);
    let _ = agent.kill();
    let _ = agent.wait();
}

/// The user that password sign-in is tested with, made with a fresh random password (sshd checks passwords
/// against the system's accounts; this needs root, which CI has).
fn password_user() -> (String, String) {
    const NAME: &str = "cloudsync-sftp-test";
    (NAME.to_owned(), system_user(NAME, None))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_nanos());
    h.finish()
}

/// Password sign-in, which OpenDAL's SFTP service cannot make: against OpenSSH's sshd checking the system's
/// password of a user of its own, a wrong password is refused with the reason, the right one runs the
/// behaviour suite, and the files land as that user's.
#[test]
fn sftp_connector_signs_in_with_a_password() {
    dbus();
    let (user, password) = password_user();
    let _lock = LockPassword(user.clone());
    let c = Client::new();
    let peer = sshd_with(&format!("AuthorizedKeysFile none\nPasswordAuthentication yes\nAllowUsers {user}\n"));
    let port = peer.port.to_string();
    // A folder the test user can write in: every folder above it must be open to others.
    let (_outer, root) = open_folder("cloudsync-sftp-", "root");
    assert!(Command::new("chown").arg(&user).arg(&root).status().expect("chown").success());
    let root_s = root.to_str().expect("utf8");
    let add = ["connection", "add", "pw", "--type", "sftp", "--host", "127.0.0.1", "--port", &port, "--user", &user]
        .into_iter()
        .chain(["--root", root_s, "--replace", "--secret-stdin"])
        .collect::<Vec<_>>();

    c.ok(&add, Some("not the password"));
    let err = c.fails(&["connection", "test", "pw"], None);
    assert!(err.contains("refused the password") && err.contains(&user), "{err}");
    assert!(!err.contains("not the password"), "the password is never shown: {err}");

    c.ok(&add, Some(&password));
    secret_is_kept_out_of_files(&c, "pw", &password);
    assert_eq!(c.json(&["connection", "show", "pw"])["sign_in"], "password");
    c.ok(&["connection", "test", "pw"], None);
    behaviour(&c, "pw", FULL);
    let log = std::fs::read_to_string(peer.dir.path().join("log")).expect("sshd log");
    assert!(log.contains(&format!("Accepted password for {user}")), "{log}");

    // A server that asks for the password through PAM's keyboard-interactive prompts (the password method off).
    let pam = sshd_with(&format!(
        "AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication yes\nUsePAM yes\n\
         AllowUsers {user}\n"
    ));
    let pam_port = pam.port.to_string();
    let on_port = |p: &str| -> Vec<String> {
        add.iter().map(|a| if *a == port.as_str() { p.to_owned() } else { (*a).to_owned() }).collect()
    };
    c.ok(&strs(&on_port(&pam_port)), Some(&password));
    write(&c.path("pam/seen.txt"), b"through PAM");
    c.json(&["copy", &c.path("pam").to_string_lossy(), "pw:pam"]);
    assert_eq!(std::fs::read(root.join("pam/seen.txt")).expect("uploaded through PAM"), b"through PAM");
    let log = std::fs::read_to_string(pam.dir.path().join("log")).expect("sshd log");
    assert!(log.contains(&format!("Accepted keyboard-interactive/pam for {user}")), "{log}");

    // A server on an address pinned with another server's key never gets the password.
    let known_hosts = c.path("home/.ssh/known_hosts");
    let first_key = pinned(&known_hosts, &port).expect("the first server's key was pinned");
    let other = sshd_with(&format!("AuthorizedKeysFile none\nPasswordAuthentication yes\nAllowUsers {user}\n"));
    let other_port = other.port.to_string();
    let mut all = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    all.push_str(&format!("[127.0.0.1]:{other_port} {first_key}\n"));
    std::fs::write(&known_hosts, all).expect("pin");
    c.ok(&strs(&on_port(&other_port)), Some(&password));
    let err = c.fails(&["connection", "test", "pw"], None);
    assert!(err.contains("host key") && err.contains("intercept"), "{err}");
    let log = std::fs::read_to_string(other.dir.path().join("log")).expect("sshd log");
    assert!(!log.contains("password") && !log.contains("Accepted") && !log.contains("Failed"), "{log}");
    c.ok(&add, Some(&password));

    // What the suite left is the test user's, written through its own sign-in.
    write(&c.path("one/f.txt"), b"owned");
    c.json(&["copy", &c.path("one").to_string_lossy(), "pw:owned"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = String::from_utf8(Command::new("id").args(["-u", &user]).output().expect("id").stdout)
            .expect("utf8")
            .trim()
            .parse::<u32>()
            .expect("uid");
        assert_eq!(std::fs::metadata(root.join("owned/f.txt")).expect("uploaded").uid(), uid);
    }
}

/// Locks the test user's password again when the test ends, however it ends.
struct LockPassword(String);

impl Drop for LockPassword {
    fn drop(&mut self) {
        let _ = Command::new("passwd").args(["-l", &self.0]).output();
    }
}

/// Synology with 2-step verification: without a code the error says how to give one; a wrong code is refused
/// and nothing saved; the right one enrols this device, whose token is kept with the password in the credential
/// store only, and later sign-ins use it instead of a code.
#[test]
fn synology_connector_with_2_step_verification() {
    dbus();
    let c = Client::new();
    let (ca, cert, key) = test_ca(c.root.path());
    let served = c.path("nas2-root");
    std::fs::create_dir_all(served.join("home")).expect("a shared folder");
    let args: Vec<&Path> = vec![&served, &cert, &key, Path::new("--otp"), Path::new("246810")];
    let peer = python_script(SYNOLOGY_PY, "synology", &args);
    let stats = || -> Value {
        serde_json::from_slice(&std::fs::read(peer.dir.path().join("stats.json")).expect("stats")).expect("json")
    };
    let password = peer.info["password"].as_str().expect("password").to_owned();
    let endpoint = format!("https://127.0.0.1:{}", peer.port);
    let ca = ca.to_str().expect("utf8");
    let add = |extra: &[&str]| -> Vec<String> {
        let base = ["connection", "add", "nas2", "--type", "synology", "--endpoint", &endpoint, "--ca-cert", ca];
        base.iter()
            .chain(["--user", "alice", "--root", "/home", "--secret-stdin", "--replace"].iter())
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    c.ok(&strs(&add(&[])), Some(&password));
    let err = c.fails(&["connection", "test", "nas2"], None);
    assert!(err.contains("--otp-code") && err.contains("2-step"), "{err}");
    c.ok(&["connection", "remove", "nas2"], None);

    let err = c.fails(&strs(&add(&["--otp-code", "135791"])), Some(&password));
    assert!(err.contains("refused the 2-step verification code"), "{err}");
    let err = c.fails(&["connection", "show", "nas2"], None);
    assert!(err.contains("no connection named"), "a refused code saves nothing: {err}");
    let err = c.fails(&strs(&add(&["--otp-code", "12ab"])), Some(&password));
    assert!(err.contains("6-digit"), "{err}");

    let out = c.run(&strs(&add(&["--otp-code", "246810"])), Some(&password));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("now trusted by the NAS"));
    assert_eq!(stats()["otp_logins"], 1);
    secret_is_kept_out_of_files(&c, "nas2", &password);
    let config = std::fs::read_to_string(c.path("config/connections.toml")).expect("config");
    assert!(!config.contains("246810"), "the one-time code is not saved: {config}");

    // Later commands sign in with the device token: no code asked for, none sent.
    c.ok(&["connection", "test", "nas2"], None);
    write(&c.path("two-step/f.txt"), b"trusted device");
    c.json(&["copy", &c.path("two-step").to_string_lossy(), "nas2:up"]);
    assert_eq!(std::fs::read(served.join("home/up/f.txt")).expect("uploaded"), b"trusted device");
    assert_eq!(stats()["otp_logins"], 1, "{}", stats());
    assert!(stats()["device_logins"].as_u64().expect("n") >= 2, "{}", stats());
}

/// Sync pairs against a WebDAV server that protects itself (429 with Retry-After past 20 requests in a second):
/// a pair capped at 12 is never refused and every request it makes is paced; a pair without a cap is
/// refused, slows down and still copies everything. Also: the bandwidth cap, the run lock, the schedule
/// (`pair daemon --once`), a failed pair retried sooner, the history, and bad input. (The connection has a name
/// of its own: the tests share one credential store.)
#[test]
fn pairs_pace_themselves_against_a_server_that_rate_limits() {
    dbus();
    let c = Client::new();
    let Dav { peer, served, ca, endpoint } = dav(&c, &[Path::new("20")]);
    let stats = || -> Value {
        serde_json::from_slice(&std::fs::read(peer.dir.path().join("stats.json")).expect("stats")).expect("json")
    };
    let secret = peer.info["secret"].as_str().expect("secret");
    let ca_s = ca.to_str().expect("utf8");
    let add = ["connection", "add", "rl", "--type", "webdav", "--endpoint", &endpoint, "--user", "alice"];
    c.ok(&[&add[..], &["--secret-stdin", "--ca-cert", ca_s]].concat(), Some(secret));

    let src = c.path("src");
    for i in 0..24_u8 {
        write(&src.join(format!("d{}/f{i}.txt", i % 3)), &noise(2000 + usize::from(i), u64::from(i)));
    }
    let src_s = src.to_str().expect("utf8");
    let count = |v: &Value, key: &str| v[key].as_array().map_or(0, Vec::len);

    // Capped below the server's limit: never refused, and every request was paced (the server admitted
    // exactly as many as the pace let through).
    c.ok(&["pair", "create", "calm", "--from", src_s, "--to", "rl:calm", "--max-requests-per-second", "12"], None);
    let before = stats();
    let calm = c.json(&["pair", "run", "calm"]);
    let after = stats();
    assert_eq!(count(&calm, "copied"), 24, "{calm}");
    assert_eq!(calm["slowdowns"], 0, "{calm}");
    assert_eq!(after["refused"], before["refused"], "the capped pair was never refused: {after}");
    let admitted = after["admitted"].as_u64().expect("n") - before["admitted"].as_u64().expect("n");
    assert_eq!(calm["requests"].as_u64(), Some(admitted), "every request went through the pace: {calm}");
    assert_eq!(files_under(&served.join("calm")), files_under(&src));

    // No cap: the server pushes back, the run slows down, and everything still arrives.
    c.ok(&["pair", "create", "eager", "--from", src_s, "--to", "rl:eager"], None);
    let eager = c.json(&["pair", "run", "eager"]);
    assert_eq!(count(&eager, "copied"), 24, "{eager}");
    assert_eq!(count(&eager, "errors"), 0, "{eager}");
    assert!(eager["pushbacks"].as_u64().expect("n") > 0, "the server refused some requests: {eager}");
    assert!(eager["slowdowns"].as_u64().expect("n") > 0, "and the run slowed down: {eager}");
    assert!(stats()["refused"].as_u64() > after["refused"].as_u64(), "{}", stats());
    assert_eq!(files_under(&served.join("eager")), files_under(&src));

    // The bandwidth cap (768 KiB at 256 KiB/s: at least 3 s, since bytes are paid for before they go), and
    // the run lock: a pair never runs twice at once.
    let big = c.path("big");
    write(&big.join("one.bin"), &noise(384 << 10, 1));
    write(&big.join("two.bin"), &noise(384 << 10, 2));
    let slow_dst = c.path("slow-dst");
    let big_s = big.to_str().expect("utf8");
    let slow_s = slow_dst.to_str().expect("utf8");
    c.ok(&["pair", "create", "slow", "--from", big_s, "--to", slow_s, "--bwlimit", "256K"], None);
    let started = Instant::now();
    let running = c.spawn(&["pair", "run", "slow", "--json"]);
    while !std::fs::read_to_string(c.path("state/pairs-state.json")).unwrap_or_default().contains("\"slow\"") {
        assert!(started.elapsed() < Duration::from_secs(60), "the slow pair did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = c.fails(&["pair", "run", "slow"], None);
    assert!(err.contains("running already"), "{err}");
    let out = running.wait_with_output().expect("slow run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() >= Duration::from_secs(3), "768 KiB at 256 KiB/s took {:?}", started.elapsed());
    assert_eq!(files_under(&slow_dst), files_under(&big));

    // The schedule: a pair with --every is due at once, runs under `pair daemon --once`, and is then not due
    // for an hour; pairs without a schedule run only by hand.
    let sched_dst = c.path("sched-dst");
    c.ok(
        &["pair", "create", "sched", "--from", src_s, "--to", sched_dst.to_str().expect("utf8"), "--every", "1h"],
        None,
    );
    let runs_of = |name: &str| {
        c.json(&["history", "--limit", "1000"]).as_array().expect("runs").iter().filter(|r| r["pair"] == name).count()
    };
    let log = String::from_utf8(c.run(&["pair", "daemon", "--once"], None).stderr).expect("utf8");
    assert!(log.contains("pair sched: copied 24 file(s)"), "{log}");
    assert!(!log.contains("pair calm") && !log.contains("pair slow"), "pairs without a schedule wait: {log}");
    assert_eq!(files_under(&sched_dst), files_under(&src));
    let pairs = c.json(&["pair", "list"]);
    let find = |name: &str| pairs.as_array().expect("pairs").iter().find(|p| p["name"] == name).expect("pair").clone();
    let sched = find("sched");
    assert_eq!(sched["last_ok"], true, "{sched}");
    assert_eq!(sched["every_seconds"], 3600);
    let last = sched["last_started_unix"].as_i64().expect("started");
    assert_eq!(sched["next_run_unix"].as_i64(), Some(last + 3600), "{sched}");
    assert_eq!(find("calm")["next_run_unix"], Value::Null);
    c.ok(&["pair", "daemon", "--once"], None);
    assert_eq!(runs_of("sched"), 1, "not due again within the hour");
    assert_eq!(runs_of("calm"), 1);

    // A long run under the daemon says how far it is (768 KiB at 256 KiB/s: about three seconds).
    let slow2 = c.path("slow2-dst");
    c.ok(
        &["pair", "create", "slow2", "--from", big_s, "--to", slow2.to_str().expect("utf8"), "--bwlimit", "256K"]
            .into_iter()
            .chain(["--every", "1h"])
            .collect::<Vec<_>>(),
        None,
    );
    let log =
        String::from_utf8(c.run(&["pair", "daemon", "--once", "--status-every", "1s"], None).stderr).expect("utf8");
    let status: Vec<&str> = log.lines().filter(|l| l.contains("pair slow2: running for")).collect();
    assert!(status.len() >= 2, "status lines while it runs: {log}");
    assert!(status.iter().any(|l| l.contains(" of 768.0 KiB copied so far")), "{log}");
    assert!(log.contains("pair slow2: copied 2 file(s)"), "{log}");
    let err = c.fails(&["pair", "daemon", "--once", "--status-every", "soon"], None);
    assert!(err.contains("--status-every") && err.contains("30m"), "{err}");

    // A failed scheduled run is recorded and tried again sooner than its schedule (after a minute).
    let vanishing = c.path("vanishing");
    std::fs::create_dir_all(&vanishing).expect("mkdir");
    let vanishing_s = vanishing.to_str().expect("utf8");
    c.ok(&["pair", "create", "broken", "--from", vanishing_s, "--to", "rl:broken", "--every", "1d"], None);
    std::fs::remove_dir(&vanishing).expect("rmdir");
    let log = String::from_utf8(c.run(&["pair", "daemon", "--once"], None).stderr).expect("utf8");
    assert!(log.contains("pair broken: FAILED") && log.contains("does not exist"), "{log}");
    assert!(log.contains("1 pair run(s) failed"), "cron sees the failure in the exit status: {log}");
    let broken = c.json(&["pair", "list"]).as_array().expect("pairs").iter().find(|p| p["name"] == "broken").cloned();
    let broken = broken.expect("broken");
    assert_eq!(broken["last_ok"], false, "{broken}");
    assert!(broken["last_error"].as_str().expect("error").contains("does not exist"), "{broken}");
    let finished = broken["last_finished_unix"].as_i64().expect("finished");
    assert_eq!(broken["next_run_unix"].as_i64(), Some(finished + 60), "{broken}");

    // The history has each run with its pair and how often it was pushed back.
    let history = c.json(&["history"]);
    let eager_run = history.as_array().expect("runs").iter().find(|r| r["pair"] == "eager").expect("eager run");
    assert_eq!(eager_run["command"], "pair");
    assert!(eager_run["slowdowns"].as_u64().expect("n") > 0, "{eager_run}");
    let shown = c.ok(&["history"], None);
    assert!(shown.contains("pair eager"), "{shown}");

    // The pairs file holds no secret and is private.
    let saved = std::fs::read_to_string(c.path("config/pairs.toml")).expect("pairs.toml");
    assert!(saved.contains("[pairs.calm]") && !saved.contains(secret), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.path("config/pairs.toml")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Bad input is refused with what to change.
    let inner = format!("{src_s}/inner");
    for (args, says) in [
        (vec!["pair", "create", "x1", "--from", src_s, "--to", "rl:x", "--every", "5s"], "--every"),
        (vec!["pair", "create", "x2", "--from", src_s, "--to", "nas:x"], "not a saved connection"),
        (vec!["pair", "create", "x3", "--from", src_s, "--to", "rl:x", "--bwlimit", "fast"], "--bwlimit"),
        (
            vec!["pair", "create", "x4", "--from", src_s, "--to", "rl:x", "--max-requests-per-second", "1e-30"],
            "from 0.2",
        ),
        (vec!["pair", "create", "x7", "--from", src_s, "--to", &inner], "overlap"),
        (vec!["pair", "create", "x5", "--from", src_s, "--to", "rl:x", "--concurrency", "0"], "--concurrency"),
        (vec!["pair", "create", "calm", "--from", src_s, "--to", "rl:x"], "--replace"),
        (
            vec!["pair", "create", "x6", "--from", &c.path("nowhere").to_string_lossy(), "--to", "rl:x"],
            "does not exist",
        ),
        (vec!["pair", "run", "nope"], "no pair named"),
    ] {
        let err = c.fails(&args, None);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // Removing one, then clearing them all.
    c.ok(&["pair", "remove", "calm"], None);
    assert!(c.fails(&["pair", "run", "calm"], None).contains("no pair named"));
    assert_eq!(files_under(&served.join("calm")).len(), 24, "the copied files stay");
    c.ok(&["local", "clear", "--pairs"], None);
    assert_eq!(c.json(&["pair", "list"]), serde_json::json!([]));
    drop(peer);
}

/// A fake of a cloud provider's HTTP API (`tests/peers/clouds.py`: exactly the endpoints OpenDAL's service and
/// the sign-in use) over HTTPS with a private CA, keeping files in the client's `PROVIDER-root` folder. A
/// "browser" for the sign-in is installed as `$BROWSER`: it follows the consent page's redirect back to the
/// CLI's loopback address, as a user's browser does once they approve.
struct Cloud {
    peer: Peer,
    served: PathBuf,
    ca: String,
    base: String,
}

impl Cloud {
    fn stats(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.peer.dir.path().join("stats.json")).expect("stats")).expect("json")
    }

    fn count(&self, key: &str) -> u64 {
        self.stats()[key].as_u64().unwrap_or_else(|| panic!("no {key} in the fake's stats"))
    }

    fn client_id(&self) -> &str {
        self.peer.info["client_id"].as_str().expect("client_id")
    }

    /// `connection add NAME --type PROVIDER` against this fake, signing in through the browser.
    fn add_args(&self, name: &str, kind: &str) -> Vec<String> {
        let args = ["connection", "add", name, "--type", kind, "--client-id", self.client_id()];
        let args = args.into_iter().chain(["--endpoint", &self.base, "--auth-endpoint", &self.base]);
        args.chain(["--ca-cert", &self.ca, "--oauth-port", "0"]).map(str::to_owned).collect()
    }
}

fn cloud(c: &mut Client, provider: &str, options: &[&str]) -> Cloud {
    let (ca, cert, key) = test_ca(c.root.path());
    let served = c.path(&format!("{provider}-root"));
    std::fs::create_dir_all(&served).expect("root");
    let args: Vec<&Path> = [served.as_path(), &cert, &key].into_iter().chain(options.iter().map(Path::new)).collect();
    let peer = python_script(CLOUDS_PY, provider, &args);
    let base = format!("https://127.0.0.1:{}", peer.port);
    let ca = ca.to_str().expect("utf8").to_owned();
    let browser = c.path("browser.sh");
    std::fs::write(&browser, format!("#!/bin/sh\nexec curl -fsS --cacert '{ca}' -L -o /dev/null \"$1\"\n"))
        .expect("browser");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    c.env.push(("BROWSER".into(), browser.to_str().expect("utf8").to_owned()));
    Cloud { peer, served, ca, base }
}

/// Folders and files with spaces and non-ASCII letters keep their names both ways (Graph percent-encodes the
/// parents of listed items; Dropbox takes its header arguments ASCII-escaped).
fn odd_names(c: &Client, name: &str, served: &Path) {
    let odd = c.path(&format!("{name}-odd"));
    write(&odd.join("My Files/ünï code 😀.txt"), b"odd names");
    let odd_s = odd.to_str().expect("utf8");
    c.json(&["copy", odd_s, &format!("{name}:odd")]);
    let listed = c.json(&["ls", &format!("{name}:odd"), "-R"]);
    assert!(listed.to_string().contains("\"My Files/ünï code 😀.txt\""), "{listed}");
    assert_eq!(std::fs::read(served.join("odd/My Files/ünï code 😀.txt")).expect("stored"), b"odd names");
    assert_eq!(c.json(&["copy", odd_s, &format!("{name}:odd")])["unchanged"], 1);
    let back = c.path(&format!("{name}-odd-back"));
    c.json(&["copy", &format!("{name}:odd"), back.to_str().expect("utf8")]);
    assert_eq!(files_under(&back), files_under(&odd));
}

/// Dropbox: sign-in through the browser (authorization code with PKCE, to a loopback address), the refresh
/// token in the credential store only, access tokens that expire every two seconds (refreshed, and once more
/// on a 401), every ninth API request refused with 429 (retried after Retry-After), cursors when listing, upload
/// sessions for files past one request, and the behaviour suite; a revoked refresh token gives an error that
/// says to sign in again.
#[test]
fn dropbox_connector_against_a_fake_of_its_api() {
    dbus();
    let mut c = Client::new();
    // Files up to 9 MiB in one request, so the suite's 12 MiB file must go in an upload session; the answer to
    // its first append is lost (the piece kept), so the piece is sent again and recognised by its offset.
    let fake = cloud(
        &mut c,
        "dropbox",
        &[
            "--token-ttl",
            "2",
            "--rate-limit",
            "9",
            "--max-upload",
            "9437184",
            "--drop-session-answers",
            "1",
            "--drop-finish-answers",
            "1",
        ],
    );
    let add = fake.add_args("dbx", "dropbox");
    let no_id: Vec<&str> = strs(&add).into_iter().filter(|a| *a != "--client-id" && *a != fake.client_id()).collect();
    let err = c.fails(&no_id, None);
    assert!(err.contains("--client-id") && err.contains("dropbox.com/developers"), "{err}");
    let out = c.run(&strs(&add), None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("/oauth2/authorize?") && said.contains("code_challenge_method=S256"), "{said}");
    assert!(said.contains("Signed in as alice@example.com"), "the account is named: {said}");
    assert_eq!(c.json(&["connection", "show", "dbx"])["account"], "alice@example.com");
    assert_eq!(fake.count("code_exchanges"), 1);
    let token =
        fake.stats()["refresh_tokens"][0].as_str().expect("the fake lists the refresh tokens it issued").to_owned();
    secret_is_kept_out_of_files(&c, "dbx", &token);
    assert_eq!(c.json(&["connection", "test", "dbx"])["ok"], true);

    behaviour(&c, "dbx", FULL);
    assert!(fake.count("rate_limited") > 0, "the fake refused some requests: {}", fake.stats());
    assert!(fake.count("upload_sessions") >= 1, "the large file went in an upload session: {}", fake.stats());
    assert_eq!(fake.count("session_answers_dropped"), 1, "{}", fake.stats());
    // The lost answer to a finish: sent again, told the session is gone, the file found with this upload's hash.
    assert_eq!(fake.count("finish_answers_dropped"), 1, "{}", fake.stats());
    // Each piece named its content hash, which the fake checked against the bytes of that request.
    assert!(fake.count("content_hashes_checked") >= 2, "{}", fake.stats());
    assert_eq!(fake.count("content_hash_mismatches"), 0, "{}", fake.stats());
    // Several appends, each at its offset.
    let multi = c.path("dbx-multi");
    write(&multi.join("m.bin"), &noise(20 << 20, 9));
    let sessions = fake.count("upload_sessions");
    let up = c.json(&["copy", multi.to_str().expect("utf8"), "dbx:multi"]);
    assert_eq!(strings(&up["copied"]), ["m.bin"], "{up}");
    assert_eq!(fake.count("upload_sessions"), sessions + 1);
    assert!(std::fs::read(fake.served.join("multi/m.bin")).expect("uploaded") == noise(20 << 20, 9));
    assert!(fake.count("refreshes") > 1, "expired access tokens were refreshed: {}", fake.stats());
    odd_names(&c, "dbx", &fake.served);

    // Dropbox takes names that differ only in letter case for one file: the second is refused rather than
    // copied over the first, and a mirror takes a destination file in another case for the source's (the fake
    // tells case apart, so it shows what was sent).
    let twins = c.path("twins");
    write(&twins.join("Case.txt"), b"upper");
    write(&twins.join("case.txt"), b"lower");
    let twins_s = twins.to_str().expect("utf8");
    let up = c.json(&["copy", twins_s, "dbx:twins"]);
    assert_eq!(strings(&up["copied"]), ["Case.txt"], "{up}");
    assert!(up["refused"].to_string().contains("only in letter case"), "{up}");
    assert!(!fake.served.join("twins/case.txt").exists(), "the twin was not sent");
    std::fs::remove_file(twins.join("case.txt")).expect("rm");
    std::fs::rename(twins.join("Case.txt"), twins.join("CASE.txt")).expect("rename");
    let mirrored = c.json(&["sync", twins_s, "dbx:twins", "--delete"]);
    assert_eq!(mirrored["deleted"].as_array().map_or(0, Vec::len), 0, "nothing deleted: {mirrored}");
    assert_eq!(mirrored["unchanged"], 1, "{mirrored}");
    assert!(fake.served.join("twins/Case.txt").exists(), "the file is still there");

    // A refresh token the provider no longer honours: the error says what to do.
    let mut revoked = add.clone();
    revoked[2] = "dbx-revoked".into();
    revoked.push("--secret-stdin".into());
    c.ok(&strs(&revoked), Some("not-a-refresh-token"));
    let err = c.fails(&["ls", "dbx-revoked:"], None);
    assert!(err.contains("invalid_grant") && err.contains("sign in again"), "{err}");
}

/// An upload to Dropbox cut off (the process killed) carries on in the same upload session at the next run:
/// the pieces Dropbox took whose bytes are still the file's are not sent again, every request names the content
/// hash of the bytes it carries (checked by the fake as Dropbox checks it), and the file appears only at the
/// session's end. A file changed meanwhile is never finished with stale pieces: a changed first piece starts a
/// new session at once, a later one sends the file again in a new session.
#[test]
fn an_interrupted_upload_to_dropbox_resumes_where_it_stopped() {
    dbus();
    let mut c = Client::new();
    let fake = cloud(&mut c, "dropbox", &[]);
    c.ok(&strs(&fake.add_args("dbu", "dropbox")), None);
    let file = c.path("up/big.bin");
    let file_s = file.to_str().expect("utf8");
    let uploads = c.path("state/uploads");
    let rewrite = rewriter(&file);
    let stored = || std::fs::read(fake.served.join("big.bin")).expect("uploaded");
    let cut_off = || cut_off_upload(&c, file_s, "dbu:big.bin", &uploads, dropbox_pieces);
    let (whole, piece) = (40u64 << 20, 8u64 << 20);

    // 1. Killed midway: nothing at the name; the next run sends only what follows the pieces Dropbox took.
    let big = noise(40 << 20, 41);
    rewrite(&big);
    cut_off();
    assert!(!fake.served.join("big.bin").exists(), "the file does not appear half-sent");
    let (received, sessions) = (fake.count("session_bytes_received"), fake.count("upload_sessions"));
    let run = c.json(&["copy", file_s, "dbu:big.bin"]);
    assert_eq!(run["resumed"], 1, "{run}");
    let reused = run["resumed_bytes"].as_u64().expect("n");
    assert!((2 * piece..whole).contains(&reused), "{run}");
    let sent = fake.count("session_bytes_received") - received;
    assert!(sent + reused <= whole, "only what Dropbox lacked was sent: {sent} + {reused}");
    assert_eq!(fake.count("upload_sessions"), sessions, "the session was taken up, not started anew");
    assert!(stored() == big, "the file is whole");
    assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 0, "the finished upload's state is gone");
    assert_eq!(fake.count("content_hash_mismatches"), 0, "{}", fake.stats());
    assert!(fake.count("content_hashes_checked") >= 5, "each piece named its hash: {}", fake.stats());

    // 2. The first piece changes after the cut: a new session from the start, the old one left to lapse.
    rewrite(&noise(40 << 20, 42));
    cut_off();
    assert!(stored() == big, "a cut-off upload leaves the file as it was");
    let mut edited = noise(40 << 20, 42);
    edited[100] ^= 0xff;
    rewrite(&edited);
    let sessions = fake.count("upload_sessions");
    let run = c.json(&["copy", file_s, "dbu:big.bin"]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert_eq!(fake.count("upload_sessions"), sessions + 1, "one new session");
    assert!(stored() == edited, "the file is the edited one");

    // 3. The second piece changes after the cut: found only after the first was passed over, so the file is
    // sent again whole, in a new session.
    rewrite(&noise(40 << 20, 43));
    cut_off();
    let mut edited = noise(40 << 20, 43);
    edited[(piece + 100) as usize] ^= 0xff;
    rewrite(&edited);
    let run = c.json(&["copy", file_s, "dbu:big.bin"]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert!(stored() == edited, "the file is the edited one");
    assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 0, "no state is left");
    assert_eq!(fake.count("content_hash_mismatches"), 0, "{}", fake.stats());

    // 4. `local clear --uploads` leaves alone an upload under way, and forgets a cut-off one: the next copy
    // sends the file whole.
    let newest = noise(40 << 20, 44);
    rewrite(&newest);
    let mut running = slow_upload(&c, file_s, "dbu:big.bin", &uploads, dropbox_pieces);
    let out = c.run(&["local", "clear", "--uploads"], None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("1 upload(s) in progress were left alone"), "{said}");
    running.kill().expect("kill");
    running.wait().expect("wait");
    assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 2, "the state and its lock stay");
    let out = c.run(&["local", "clear", "--uploads"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Forgot 1 cut-off upload"), "{out:?}");
    assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 0, "nothing kept");
    let run = c.json(&["copy", file_s, "dbu:big.bin"]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert!(stored() == newest, "the file is the newest one");

    // 5. Dropbox took a third piece whose answer was lost (the log ends with that piece being sent): the next
    // run, finding the file unchanged, takes Dropbox's `incorrect_offset` for it as the piece taken, and goes on.
    let lost = |content: &[u8]| {
        rewrite(content);
        cut_off_upload(&c, file_s, "dbu:big.bin", &uploads, |s| dropbox_pieces(s).map(|n| n.saturating_sub(1)));
        lose_last_answer(&uploads, 3);
    };
    let fifth = noise(40 << 20, 45);
    lost(&fifth);
    let (received, sessions) = (fake.count("session_bytes_received"), fake.count("upload_sessions"));
    let run = c.json(&["copy", file_s, "dbu:big.bin"]);
    assert_eq!(run["resumed"], 1, "{run}");
    assert_eq!(fake.count("upload_sessions"), sessions, "the session was taken up");
    assert_eq!(fake.count("session_bytes_received") - received, whole - 3 * piece, "the last two pieces were sent");
    assert!(stored() == fifth, "the file is whole");

    // 6. The same, but the third piece changed meanwhile: Dropbox may hold either, so the file is sent again,
    // whole, in a new session.
    let mut sixth = noise(40 << 20, 46);
    lost(&sixth);
    sixth[(2 * piece + 100) as usize] ^= 0xff;
    rewrite(&sixth);
    let sessions = fake.count("upload_sessions");
    let run = c.json(&["copy", file_s, "dbu:big.bin"]);
    assert_eq!(run["resumed"], 0, "{run}");
    assert_eq!(fake.count("upload_sessions"), sessions + 1, "one new session");
    assert!(stored() == sixth, "the file is the edited one");
    assert_eq!(fake.count("content_hash_mismatches"), 0, "{}", fake.stats());
}

/// Cuts the Dropbox upload log in `uploads` back to just after the step that began sending piece `n`: as if
/// Dropbox took that piece and its answer never came (what is logged after it, dropped).
fn lose_last_answer(uploads: &Path, n: usize) {
    let log = std::fs::read_dir(uploads)
        .expect("uploads")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("an upload log");
    let text = std::fs::read_to_string(&log).expect("log");
    let mut kept = Vec::new();
    let mut took = 0;
    for line in text.lines() {
        if line == "\"took\"" {
            took += 1;
            if took == n {
                break;
            }
        }
        kept.push(line);
    }
    assert_eq!(took, n, "the log records {n} pieces taken: {text}");
    // As the client writes it: a line after the head begins with its newline, and the last ends the file.
    std::fs::write(&log, kept.join("\n")).expect("cut the log");
}

/// OneDrive (Microsoft Graph): sign-in with a device code, and through the browser; the fake accepts each
/// refresh token once (it rotates them), so every command after the first works only if the rotated token
/// was kept; files over 4 MiB go up in an upload session of 320 KiB-multiple fragments; listing follows
/// `@odata.nextLink`; downloads follow Graph's redirect to a pre-authenticated address.
#[test]
fn onedrive_connector_against_a_fake_of_graph() {
    dbus();
    let mut c = Client::new();
    let fake = cloud(
        &mut c,
        "onedrive",
        &[
            "--token-ttl",
            "2",
            "--rate-limit",
            "11",
            "--single-use-refresh",
            "--drop-session-answers",
            "1",
            "--drop-finish-answers",
            "1",
        ],
    );
    let mut add = fake.add_args("od", "onedrive");
    let err = c.fails(&strs(&add), None);
    assert!(err.contains("--root"), "the drive's top level is refused: {err}");
    // A root with a space: Graph percent-encodes the parents of the items it lists.
    std::fs::create_dir_all(fake.served.join("Cloud Sync")).expect("a folder of the drive");
    add.extend(["--root".into(), "/Cloud Sync".into(), "--device-code".into()]);
    let mut child = c.spawn(&strs(&add));
    drop(child.stdin.take());
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut said = String::new();
    let code = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).expect("read") > 0, "no device code: {said}");
        said.push_str(&line);
        if let Some(at) = line.find("enter the code ") {
            break line[at + 15..].split_whitespace().next().expect("code").to_owned();
        }
    };
    let approved = Command::new("curl")
        .args(["-fsS", "--cacert", &fake.ca, "-o", "/dev/null"])
        .arg(format!("{}/devicelogin?otc={code}", fake.base))
        .status()
        .expect("curl");
    assert!(approved.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "device-code sign-in failed: {said}");
    assert!(fake.count("device_polls") >= 1);
    assert_eq!(c.json(&["connection", "show", "od"])["account"], "alice@example.com");
    assert_eq!(c.json(&["connection", "test", "od"])["ok"], true);

    behaviour(&c, "od", FULL);
    let stats = fake.stats();
    // The suite's 12 MiB file went in a session: 5 MiB fragments, then the rest, one answer of each lost (the
    // fragment is recognised as received by the session's status; the file is found in place after its last).
    assert!(fake.count("upload_sessions") >= 1 && fake.count("upload_fragments") >= 2, "{stats}");
    assert_eq!((fake.count("session_answers_dropped"), fake.count("finish_answers_dropped")), (1, 1), "{stats}");

    // A file over 4 MiB replaced: the second upload session overwrites the first copy.
    let big = c.path("od-big");
    let big_s = big.to_str().expect("utf8");
    write(&big.join("v.bin"), &noise(5 << 20, 1));
    c.json(&["copy", big_s, "od:big"]);
    let sessions = fake.count("upload_sessions");
    write(&big.join("v.bin"), &noise((5 << 20) + 1, 2));
    let again = c.json(&["copy", big_s, "od:big"]);
    assert_eq!(strings(&again["copied"]), ["v.bin"], "{again}");
    assert_eq!(fake.count("upload_sessions"), sessions + 1);
    let served = std::fs::read(fake.served.join("Cloud Sync/big/v.bin")).expect("replaced");
    assert!(served == noise((5 << 20) + 1, 2), "the second version replaced the first");
    // A larger file streams through its session in 5 MiB fragments (a multiple of 320 KiB), each sent as the
    // file is read, not cut from a copy of the whole file held in memory.
    let fragments = fake.count("upload_fragments");
    write(&big.join("large.bin"), &noise((23 << 20) + 7, 3));
    c.json(&["copy", big.join("large.bin").to_str().expect("utf8"), "od:big/large.bin"]);
    assert_eq!(fake.count("upload_fragments"), fragments + 5, "{}", fake.stats());
    assert_eq!(fake.count("largest_fragment"), 5 << 20, "{}", fake.stats());
    let served = std::fs::read(fake.served.join("Cloud Sync/big/large.bin")).expect("uploaded");
    assert!(served == noise((23 << 20) + 7, 3), "the streamed file arrived whole");

    odd_names(&c, "od", &fake.served.join("Cloud Sync"));
    assert!(fake.count("rate_limited") > 0 && fake.count("refreshes") > 2, "{stats}");

    // The browser sign-in; a client secret is never sent (Microsoft refuses one from a public client).
    c.ok(&strs(&[&fake.add_args("od2", "onedrive")[..], &["--root".into(), "/Cloud Sync".into()]].concat()), None);
    assert_eq!(c.json(&["connection", "test", "od2"])["ok"], true);
    assert_eq!(fake.count("client_secret_refused"), 0);
    let od3 = [&fake.add_args("od3", "onedrive")[..], &["--root".into(), "/x".into(), "--client-secret-stdin".into()]];
    let err = c.fails(&strs(&od3.concat()), None);
    assert!(err.contains("pcloud only"), "{err}");
}

/// pCloud: sign-in through the browser with the app's client secret (read from standard input, used once and
/// not kept), the access token sent as a bearer header (the fake refuses a username or password in the URL,
/// which OpenDAL's pCloud service would put there), download links, and the behaviour suite.
#[test]
fn pcloud_connector_against_a_fake_of_its_api() {
    dbus();
    let mut c = Client::new();
    let fake = cloud(&mut c, "pcloud", &["--rate-limit", "13"]);
    let secret = fake.peer.info["client_secret"].as_str().expect("client_secret").to_owned();
    let mut add = fake.add_args("pc", "pcloud");
    let err = c.fails(&strs(&add), None);
    assert!(err.contains("client secret"), "{err}");
    add.push("--client-secret-stdin".into());
    c.ok(&strs(&add), Some(&secret));
    assert_eq!(c.json(&["connection", "show", "pc"])["account"], "alice@example.com");
    secret_is_kept_out_of_files(&c, "pc", &secret);
    let token = fake.stats()["access_tokens"][0].as_str().expect("the fake lists the tokens it issued").to_owned();
    secret_is_kept_out_of_files(&c, "pc", &token);
    assert_eq!(c.json(&["connection", "test", "pc"])["ok"], true);

    behaviour(&c, "pc", FULL);
    odd_names(&c, "pc", &fake.served);
    assert_eq!(fake.count("password_in_url"), 0, "{}", fake.stats());
    assert_eq!(fake.count("uploads_keeping_partial"), 0, "every upload asks pCloud to drop a broken-off part");

    // A token pCloud no longer honours (it answers HTTP 200 with a result code): the error says what to do.
    let mut revoked = fake.add_args("pc-revoked", "pcloud");
    revoked.push("--secret-stdin".into());
    c.ok(&strs(&revoked), Some("not-a-token"));
    let err = c.fails(&["ls", "pc-revoked:"], None);
    assert!(err.contains("refused the saved sign-in") && err.contains("sign in again"), "{err}");
    assert!(fake.count("rate_limited") > 0, "{}", fake.stats());
}

/// Uploads to pCloud and to File Station stream (streamed.rs): the client's peak memory sending a 128 MiB file
/// stays far below the file's size (such uploads used to be held whole in memory), the file arrives whole, and a
/// big upload pCloud refused with an internal error (a result code 5000, once, on demand) is sent again whole.
#[test]
fn uploads_to_pcloud_and_file_station_stream_in_bounded_memory() {
    dbus();
    let mut c = Client::new();
    let big = c.path("big/big.bin");
    let data = noise(128 << 20, 5);
    write(&big, &data);
    let big_s = big.to_str().expect("utf8");
    // A copy streaming the file holds a few 8 MiB pieces (about 45 MiB at the peak); one holding the file
    // would pass 128 MiB.
    let bound = 96 << 10;

    let fake = cloud(&mut c, "pcloud", &["--fail-uploads", "1"]);
    let secret = fake.peer.info["client_secret"].as_str().expect("client_secret").to_owned();
    let mut add = fake.add_args("pc", "pcloud");
    add.push("--client-secret-stdin".into());
    c.ok(&strs(&add), Some(&secret));
    let (out, peak) = c.ok_peak_kib(&["copy", big_s, "pc:up/big.bin", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["copied"], serde_json::json!(["big.bin"]), "{out}");
    assert!(std::fs::read(fake.served.join("up/big.bin")).expect("stored") == data, "pCloud got the file whole");
    eprintln!("peak memory uploading 128 MiB to pCloud: {peak} KiB");
    assert!(peak < bound, "peak memory uploading 128 MiB to pCloud: {peak} KiB");
    assert_eq!(fake.count("uploads_failed_on_demand"), 1, "{}", fake.stats());
    assert!(fake.count("uploads") >= 2, "the refused upload was sent again: {}", fake.stats());
    assert_eq!(fake.count("uploads_without_length"), 0, "uploads carry their length: {}", fake.stats());

    let (ca, cert, key) = test_ca(c.root.path());
    let served = c.path("nas-root");
    std::fs::create_dir_all(served.join("home")).expect("a shared folder");
    let peer = python_script(SYNOLOGY_PY, "synology", &[&served, &cert, &key]);
    let password = peer.info["password"].as_str().expect("password").to_owned();
    let endpoint = format!("https://127.0.0.1:{}", peer.port);
    let add = ["connection", "add", "nas", "--type", "synology", "--endpoint", &endpoint, "--ca-cert"];
    let add: Vec<&str> =
        add.into_iter().chain([ca.to_str().expect("utf8"), "--user", "alice", "--secret-stdin"]).collect();
    c.ok(&add, Some(&password));
    let (out, peak) = c.ok_peak_kib(&["copy", big_s, "nas:home/up/big.bin", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["copied"], serde_json::json!(["big.bin"]), "{out}");
    assert!(std::fs::read(served.join("home/up/big.bin")).expect("stored") == data, "the NAS got the file whole");
    eprintln!("peak memory uploading 128 MiB to File Station: {peak} KiB");
    assert!(peak < bound, "peak memory uploading 128 MiB to File Station: {peak} KiB");
}

/// Synology File Station (`tests/peers/synology.py`, a fake of the calls used, from Synology's API guide): the
/// password sent in a POST body and the session id in a cookie, never in an address; sessions the NAS ends
/// (after only 6 calls here, while several requests are in flight) renewed; "too busy" answers (every 7th call) retried; listings in pages; every upload put
/// in a staging folder and moved over its destination in one step, never written at its final name; names
/// the upload's multipart header cannot carry renamed into place; the behaviour suite; the shared folders at
/// the top; and errors that say what to do.
#[test]
fn synology_connector_against_a_fake_of_file_station() {
    dbus();
    let c = Client::new();
    let (ca, cert, key) = test_ca(c.root.path());
    let served = c.path("nas-root");
    std::fs::create_dir_all(served.join("home")).expect("a shared folder");
    std::fs::create_dir_all(served.join("photo")).expect("another");
    let args: Vec<&Path> =
        vec![&served, &cert, &key, Path::new("--session-calls"), Path::new("6"), Path::new("--busy"), Path::new("7")];
    let peer = python_script(SYNOLOGY_PY, "synology", &args);
    let stats = || -> Value {
        serde_json::from_slice(&std::fs::read(peer.dir.path().join("stats.json")).expect("stats")).expect("json")
    };
    let password = peer.info["password"].as_str().expect("password").to_owned();
    let endpoint = format!("https://127.0.0.1:{}", peer.port);
    let ca = ca.to_str().expect("utf8");
    let add = |name: &str, extra: &[&str]| -> Vec<String> {
        let base = ["connection", "add", name, "--type", "synology", "--endpoint", &endpoint, "--ca-cert", ca];
        base.iter().chain(extra).map(|s| (*s).to_owned()).collect()
    };

    let err = c.fails(&strs(&add("nas", &["--secret-stdin"])), Some(&password));
    assert!(err.contains("--user"), "{err}");
    let err = c.fails(&["connection", "add", "nas", "--type", "synology", "--user", "alice"], None);
    assert!(err.contains("--endpoint") && err.contains("--host"), "{err}");
    let plain = format!("http://127.0.0.1:{}", peer.port);
    let err =
        c.fails(&["connection", "add", "nas", "--type", "synology", "--endpoint", &plain, "--user", "alice"], None);
    assert!(err.contains("--allow-insecure"), "{err}");

    // Staging folders an upload cut off left behind: one from two days ago (swept at the next upload into the
    // shared folder) and one from now (perhaps an upload in progress elsewhere: kept).
    let abandoned = served.join("home/.cloudsync-00000000000000aa.partial");
    let recent = served.join("home/.cloudsync-00000000000000bb.partial");
    write(&abandoned.join("cut-off.bin"), b"half");
    write(&recent.join("in-flight.bin"), b"half");
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::open(&abandoned).expect("open").set_modified(two_days_ago).expect("age it");

    c.ok(&strs(&add("nas", &["--user", "alice", "--root", "/home/sync", "--secret-stdin"])), Some(&password));
    secret_is_kept_out_of_files(&c, "nas", &password);
    assert_eq!(c.json(&["connection", "test", "nas"])["ok"], true);

    behaviour(&c, "nas", FULL);
    assert!(!abandoned.exists(), "the abandoned staging folder was swept");
    assert!(recent.exists(), "a recent one is kept");
    std::fs::remove_dir_all(&recent).expect("rm");
    let home = served.join("home/sync");
    odd_names(&c, "nas", &home);
    // A name with a double quote and a backslash goes up under a plain name and is renamed in the staging
    // folder, since the multipart header would carry it ambiguously.
    // A folder with a comma: File Station takes a raw parameter with commas for several values, so paths go
    // as JSON strings.
    let quoted = c.path("quoted");
    write(&quoted.join("Smith, John/say \"hi\" \\ now.txt"), b"quoted");
    c.json(&["copy", quoted.to_str().expect("utf8"), "nas:quoted"]);
    assert_eq!(std::fs::read(home.join("quoted/Smith, John/say \"hi\" \\ now.txt")).expect("stored"), b"quoted");
    let listed = c.json(&["ls", "nas:quoted", "-R"]);
    assert!(listed.to_string().contains("Smith, John/say"), "{listed}");
    // Sixteen files: listing pages (the fake gives at most seven entries a page) are all read.
    let many = c.path("many");
    for i in 0..16 {
        write(&many.join(format!("f{i:02}.txt")), format!("file {i}").as_bytes());
    }
    assert_eq!(
        c.json(&["copy", many.to_str().expect("utf8"), "nas:many"])["copied"].as_array().map(Vec::len),
        Some(16)
    );
    let listed = c.json(&["ls", "nas:many"]);
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(16), "{listed}");
    assert_eq!(c.json(&["copy", many.to_str().expect("utf8"), "nas:many"])["unchanged"], 16, "{listed}");

    let s = stats();
    assert_eq!(s["password_in_url"], 0, "{s}");
    assert_eq!(s["sid_in_url"], 0, "{s}");
    assert_eq!(s["direct_uploads"], 0, "every upload went to a staging folder: {s}");
    // An upload whose move was refused as "too busy" is sent again, so uploads may outnumber moves.
    assert!(s["moves"].as_u64() > Some(16) && s["uploads"].as_u64() >= s["moves"].as_u64(), "{s}");
    assert!(s["move_polls"].as_u64() > s["moves"].as_u64(), "moves were waited for: {s}");
    assert!(s["renames"].as_u64() >= Some(1), "{s}");
    assert!(s["busy"].as_u64() > Some(0) && s["sessions_expired"].as_u64() > Some(0), "{s}");
    assert!(s["logins"].as_u64() > Some(1), "sessions were renewed: {s}");
    assert!(s["logouts"].as_u64() > Some(1), "sessions are ended by the command that opened them: {s}");
    let log = std::fs::read_to_string(peer.dir.path().join("log")).unwrap_or_default();
    assert!(staging_folders(&served).is_empty(), "no staging folder is left: {:?}\n{log}", staging_folders(&served));

    // The top of a connection without a root lists the shared folders; a file cannot be put there.
    c.ok(&strs(&add("nas-top", &["--user", "alice", "--secret-stdin"])), Some(&password));
    let top = c.json(&["ls", "nas-top:"]);
    let names: Vec<&str> =
        top["entries"].as_array().expect("entries").iter().map(|e| e["path"].as_str().expect("p")).collect();
    assert_eq!(names, ["home", "photo"], "{top}");
    let one = c.path("one.txt");
    write(&one, b"x");
    let err = c.fails(&["copy", one.to_str().expect("utf8"), "nas-top:one.txt"], None);
    assert!(err.contains("shared folder"), "{err}");

    // A wrong password: the error says so and what to do.
    c.ok(&strs(&add("nas-bad", &["--user", "alice", "--secret-stdin"])), Some("wrong password"));
    let err = c.fails(&["ls", "nas-bad:"], None);
    assert!(err.contains("user name or password") && err.contains("--replace"), "{err}");
    // An address that is not DSM's (here a path the NAS answers 404): an error, not an empty folder.
    let wrong = format!("{endpoint}/not-dsm");
    let args = ["connection", "add", "nas-wrong", "--type", "synology", "--endpoint", &wrong, "--ca-cert", ca];
    c.ok(&[&args[..], &["--user", "alice", "--secret-stdin"]].concat(), Some(&password));
    let err = c.fails(&["ls", "nas-wrong:"], None);
    assert!(err.contains("did not answer as a Synology NAS"), "{err}");
    assert!(c.fails(&["connection", "test", "nas-wrong"], None).contains("Synology"));

    // A move the NAS reports finished without doing it: the upload is checked in place before the staging
    // folder goes, so the copy fails, the destination keeps its file, and the upload is left staged.
    write(&many.join("f00.txt"), b"file X"); // the same size as before: a size check alone would not see it
    let broke = Command::new("curl")
        .args(["-fsS", "--cacert", ca, "-o", "/dev/null"])
        .arg(format!("{endpoint}/fake/break-next-move"))
        .status()
        .expect("curl");
    assert!(broke.success());
    let err = c.fails(&["copy", many.to_str().expect("utf8"), "nas:many"], None);
    assert!(err.contains("f00.txt") && err.contains("still in"), "{err}");
    assert_eq!(std::fs::read(home.join("many/f00.txt")).expect("kept"), b"file 0", "the destination is unchanged");
    assert_eq!(stats()["broken_moves"], 1);
    assert_eq!(staging_folders(&served).len(), 1, "the upload that did not move is kept");
    c.json(&["copy", many.to_str().expect("utf8"), "nas:many"]);
    assert_eq!(std::fs::read(home.join("many/f00.txt")).expect("copied"), b"file X");
    drop(peer);
}

/// The File Station staging folders (`.cloudsync-*`) under `root`, empty or not.
fn staging_folders(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".cloudsync-")) {
                    found.push(p.clone());
                }
                stack.push(p);
            }
        }
    }
    found
}

/// Pairs and connections saved at the same moment by separate commands are all kept: each change of the saved
/// pairs or connections happens under a lock, so none overwrites another's.
#[test]
fn pairs_and_connections_saved_at_once_are_all_kept() {
    let c = Client::new();
    let src = c.path("src");
    write(&src.join("a.txt"), b"a");
    let src_s = src.to_str().expect("utf8");
    let children: Vec<Child> = (0..16)
        .map(|i| {
            let dst = c.path(&format!("dst{i}"));
            c.spawn(&["pair", "create", &format!("p{i}"), "--from", src_s, "--to", dst.to_str().expect("utf8")])
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let listed = c.json(&["pair", "list"]);
    let names = listed.as_array().map_or(0, Vec::len);
    assert_eq!(names, 16, "every pair was kept: {listed}");

    // The same for connections (anonymous WebDAV ones: no secret to keep).
    dbus();
    let children: Vec<Child> = (0..16)
        .map(|i| {
            let name = format!("anon-dav-{i}");
            c.spawn(&["connection", "add", &name, "--type", "webdav", "--endpoint", "https://127.0.0.1:9/dav"])
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let listed = c.json(&["connection", "list"]);
    assert_eq!(listed.as_array().map_or(0, Vec::len), 16, "every connection was kept: {listed}");
}

/// Two profiles (configuration folders) on one credential store: a connection of the same name in each keeps
/// its own secret; adding it in one profile never replaces the other's.
#[test]
fn profiles_keep_their_own_secrets() {
    dbus();
    let a = Client::new();
    let b = Client::new();
    let Dav { peer, served: _, ca, endpoint } = dav(&a, &[]);
    let secret = peer.info["secret"].as_str().expect("secret");
    let ca_s = ca.to_str().expect("utf8");
    let add = ["connection", "add", "same", "--type", "webdav", "--endpoint", &endpoint, "--user", "alice"];
    let add: Vec<&str> = add.into_iter().chain(["--secret-stdin", "--ca-cert", ca_s]).collect();
    a.ok(&add, Some(secret));
    assert_eq!(a.json(&["connection", "test", "same"])["ok"], true);
    b.ok(&add, Some("the other profile's password"));
    assert_eq!(a.json(&["connection", "test", "same"])["ok"], true, "profile a still has its own secret");
    let err = b.fails(&["connection", "test", "same"], None);
    assert!(err.contains("denied") || err.contains("401"), "profile b uses its own (wrong) secret: {err}");
    // Removing it in one profile leaves the other's.
    b.ok(&["connection", "remove", "same"], None);
    assert_eq!(a.json(&["connection", "test", "same"])["ok"], true);

    // The same with the default profile (no CLOUDSYNC_CONFIG_DIR: the configuration folder in the home).
    let mut d = Client::new();
    d.env.push(("CLOUDSYNC_CONFIG_DIR".into(), String::new()));
    let add_d: Vec<&str> = add.iter().map(|a| if *a == "same" { "same-default" } else { a }).collect();
    d.ok(&add_d, Some(secret));
    assert!(d.path("home/.config/cloudsync/connections.toml").exists(), "the default profile's folder is used");
    let mut add_b = add_d.clone();
    add_b.push("--replace");
    b.ok(&add_b, Some("the other profile's password"));
    b.ok(&["connection", "remove", "same-default"], None);
    assert_eq!(d.json(&["connection", "test", "same-default"])["ok"], true, "the default profile's secret stays");
    d.ok(&["connection", "remove", "same-default"], None);
}
