//! Two-way sync against a real server: two devices, interleaved edits, deletes and renames; conflicts keep
//! both versions; deletions go to the trash; a no-op sync reads no file contents; deltas move only changed
//! chunks both ways.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cloudsync_sdk::Client;
use cloudsync_sync::{SyncOptions, SyncReport, sync};
use cloudsync_testkit::{TestServer, noise};
use cloudsync_types::api::CreateWorkspaceRequest;
use cloudsync_types::{WorkspaceId, WsPath};

/// One device: a local folder, its own state directory and name.
struct Device {
    client: Client,
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    name: &'static str,
    server: String,
}

impl Device {
    async fn new(srv: &TestServer, email: &str, name: &'static str) -> Self {
        Self {
            client: srv.login(email).await.expect("login"),
            dir: tempfile::tempdir().expect("dir"),
            state: tempfile::tempdir().expect("state"),
            name,
            server: srv.url.clone(),
        }
    }

    fn opts(&self, dry_run: bool) -> SyncOptions {
        SyncOptions {
            progress: false,
            device_name: self.name.into(),
            state_dir: self.state.path().to_path_buf(),
            server: self.server.clone(),
            dry_run,
            e2ee: None,
        }
    }

    async fn sync(&self, ws: WorkspaceId, remote: &str) -> SyncReport {
        let remote = WsPath::parse_prefix(remote).expect("remote");
        sync(&self.client, ws, &remote, self.dir.path(), &self.opts(false)).await.expect("sync")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{}: {rel}: {e}", self.name))
    }

    /// Every file below the folder: relative path → content.
    fn tree(&self) -> BTreeMap<String, Vec<u8>> {
        let root = self.dir.path();
        cloudsync_testkit::all_files(root)
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(root).expect("rel").to_string_lossy().replace('\\', "/");
                let content = fs::read(&p).expect("read");
                (rel, content)
            })
            .collect()
    }
}

async fn workspace(c: &Client) -> WorkspaceId {
    c.workspaces()
        .create(&CreateWorkspaceRequest { name: "Team".into(), e2e_encryption: false, e2ee: None })
        .await
        .expect("ws")
        .id
}

/// A server with one account, its first device ("laptop") and a workspace it made.
async fn team() -> (TestServer, Device, WorkspaceId) {
    let srv = TestServer::start().await;
    srv.create_user("a@example.com", false).await.expect("user");
    let a = Device::new(&srv, "a@example.com", "laptop").await;
    let ws = workspace(&a.client).await;
    (srv, a, ws)
}

/// Sleeps past the file system's timestamp granularity, so an edit always moves the mtime.
fn tick() {
    std::thread::sleep(Duration::from_millis(20));
}

/// A file recorded within the clock tick of its modification (here: a modification time in the future, so
/// the index must treat it as racy) but left alone since is checked by content: the other device's edit of
/// it arrives as a download, not as a conflict.
#[tokio::test]
async fn a_racy_index_entry_whose_content_is_unchanged_takes_the_servers_edit() {
    let (srv, a, ws) = team().await;
    let b = Device::new(&srv, "a@example.com", "desktop").await;
    a.write("notes.txt", b"v1 notes");
    let soon = std::time::SystemTime::now() + Duration::from_secs(30);
    fs::File::options().write(true).open(a.path("notes.txt")).expect("open").set_modified(soon).expect("mtime");
    a.sync(ws, "team").await;
    // B's copy gets A's modification time, so B's index records it as racy.
    assert_eq!(b.sync(ws, "team").await.summary.files_downloaded, 1);
    tick();
    a.write("notes.txt", b"v2 notes from A");
    a.sync(ws, "team").await;
    let r = b.sync(ws, "team").await;
    assert_eq!((r.summary.files_conflicted, r.summary.files_downloaded), (0, 1), "{r:?}");
    assert_eq!(b.read("notes.txt"), b"v2 notes from A");
    assert_eq!(a.tree(), b.tree());
}

#[tokio::test]
async fn two_devices_merge_interleaved_edits_deletes_and_renames_without_losing_anything() {
    let (srv, a, ws) = team().await;
    let b = Device::new(&srv, "a@example.com", "desktop").await;

    // Device A starts the folder; B's first sync brings everything down.
    a.write("notes.txt", b"v1 notes");
    a.write("docs/plan.md", b"plan v1");
    a.write("docs/old-name.txt", b"rename me");
    a.write("delete-me.txt", b"soon gone");
    a.write("both-edit.txt", b"base");
    a.write("edit-vs-delete.txt", b"base 2");
    let r = a.sync(ws, "team").await;
    assert_eq!(r.summary.files_uploaded, 6, "{r:?}");
    let r = b.sync(ws, "team").await;
    assert_eq!(r.summary.files_downloaded, 6, "{r:?}");
    assert_eq!(a.tree(), b.tree());

    // Interleaved changes on both devices.
    tick();
    a.write("notes.txt", b"v2 notes from A");
    fs::rename(a.path("docs/old-name.txt"), a.path("docs/new-name.txt")).expect("rename");
    fs::remove_file(a.path("delete-me.txt")).expect("rm");
    a.write("both-edit.txt", b"A's edit");
    fs::remove_file(a.path("edit-vs-delete.txt")).expect("rm");
    a.write("from-a.txt", b"new on A");
    b.write("both-edit.txt", b"B's edit!");
    b.write("edit-vs-delete.txt", b"B kept editing this");
    b.write("docs/plan.md", b"plan v2 by B");
    b.write("from-b/deep/file.bin", &[7u8; 5000]);

    let ra = a.sync(ws, "team").await;
    assert_eq!(ra.summary.files_renamed, 1, "a local rename costs no upload: {ra:?}");
    assert_eq!(ra.summary.files_deleted, 2, "{ra:?}");
    let rb = b.sync(ws, "team").await;
    assert_eq!(rb.summary.files_conflicted, 1, "{rb:?}");
    assert_eq!(rb.summary.files_renamed, 1, "the rename arrives as a local rename: {rb:?}");
    // A picks up B's changes (and B's conflicted copy, which B uploaded in its second round).
    a.sync(ws, "team").await;
    b.sync(ws, "team").await;
    for d in [&a, &b] {
        let again = d.sync(ws, "team").await;
        assert!(again.plan.is_empty(), "{} has converged: {again:?}", d.name);
    }

    // Both devices hold the same tree, and it is the union of everyone's work.
    let (ta, tb) = (a.tree(), b.tree());
    assert_eq!(ta, tb);
    assert_eq!(ta["notes.txt"], b"v2 notes from A");
    assert_eq!(ta["docs/plan.md"], b"plan v2 by B");
    assert_eq!(ta["docs/new-name.txt"], b"rename me");
    assert!(!ta.contains_key("docs/old-name.txt"));
    assert!(!ta.contains_key("delete-me.txt"));
    assert_eq!(ta["from-a.txt"], b"new on A");
    assert_eq!(ta["from-b/deep/file.bin"], vec![7u8; 5000]);
    // Edited on B while deleted on A: the edit survives.
    assert_eq!(ta["edit-vs-delete.txt"], b"B kept editing this");
    // Edited on both: the first to sync keeps the name, the other is kept as a conflicted copy.
    assert_eq!(ta["both-edit.txt"], b"A's edit");
    let copies: Vec<_> = ta.keys().filter(|k| k.starts_with("both-edit (conflicted copy from desktop ")).collect();
    assert_eq!(copies.len(), 1, "{:?}", ta.keys());
    assert!(copies[0].ends_with(").txt"), "{copies:?}");
    assert_eq!(ta[copies[0].as_str()], b"B's edit!");

    // Deleted files went to the trash, restorable.
    let trash = a.client.files(ws).trash().await.expect("trash");
    let trashed: Vec<&str> = trash.iter().map(|t| t.path.as_str()).collect();
    assert!(trashed.contains(&"team/delete-me.txt"), "{trashed:?}");
    assert!(trashed.contains(&"team/docs/old-name.txt"), "{trashed:?}");
    srv.stop().await;
}

#[tokio::test]
async fn a_no_op_sync_reads_no_file_contents() {
    let (srv, a, ws) = team().await;
    for i in 0..200 {
        a.write(&format!("d{}/f{i}.txt", i % 7), format!("file {i}").as_bytes());
    }
    // Old timestamps, so no entry is "racily clean" (re-hashed because it changed within the clock tick).
    let old = SystemTime::now() - Duration::from_secs(3600);
    for (rel, _) in a.tree() {
        fs::File::options().write(true).open(a.path(&rel)).expect("open").set_modified(old).expect("mtime");
    }
    let first = a.sync(ws, "").await;
    assert_eq!(first.summary.files_uploaded, 200);

    // Same size, same mtime, same inode, different bytes: only reading the file could notice. A no-op
    // sync must not (that is the point of the index), so this change stays local.
    let p = a.path("d0/f0.txt");
    let mut f = fs::File::options().write(true).open(&p).expect("open");
    std::io::Write::write_all(&mut f, b"FILE 0").expect("write");
    f.set_modified(old).expect("mtime");
    drop(f);
    let noop = a.sync(ws, "").await;
    assert!(noop.plan.is_empty(), "{noop:?}");
    assert_eq!(noop.summary.files_scanned, 200);
    assert_eq!(noop.summary.bytes_uploaded, 0);
    assert_eq!(noop.rounds, 1);

    // A real edit (new mtime) is noticed and uploaded.
    tick();
    a.write("d1/f1.txt", b"changed!");
    let r = a.sync(ws, "").await;
    assert_eq!(r.summary.files_uploaded, 1, "{r:?}");
    srv.stop().await;
}

#[tokio::test]
async fn edits_move_only_the_changed_chunks_both_ways() {
    let (srv, a, ws) = team().await;
    let b = Device::new(&srv, "a@example.com", "desktop").await;
    const SIZE: usize = 24 * 1024 * 1024;
    let mut data = noise(SIZE, 99);
    a.write("big.bin", &data);
    let first = a.sync(ws, "").await;
    assert!(first.summary.bytes_uploaded >= SIZE as u64);
    let down = b.sync(ws, "").await;
    assert_eq!(down.summary.bytes_downloaded, SIZE as u64);

    // 100 bytes inserted near the start: content-defined chunking re-synchronises after the edit.
    tick();
    data.splice(4096..4096, noise(100, 7));
    a.write("big.bin", &data);
    let up = a.sync(ws, "").await;
    assert_eq!(up.summary.files_uploaded, 1);
    // The chunk holding the insert goes as a delta against the chunk it replaces: a few KiB, not a chunk.
    assert!(up.summary.bytes_uploaded < 16 * 1024, "sent {} bytes for a 100-byte insert", up.summary.bytes_uploaded);
    assert!(up.summary.chunks_delta >= 1, "{:?}", up.summary);
    assert!(up.summary.chunks_deduplicated > 0);
    let down = b.sync(ws, "").await;
    assert_eq!(down.summary.files_downloaded, 1);
    assert!(
        down.summary.bytes_downloaded < 6 * 1024 * 1024,
        "received {} bytes for a 100-byte insert",
        down.summary.bytes_downloaded
    );
    assert_eq!(b.read("big.bin"), data);

    // 1 MiB overwritten in the middle.
    tick();
    let mid = SIZE / 2;
    data[mid..mid + 1024 * 1024].copy_from_slice(&noise(1024 * 1024, 3));
    a.write("big.bin", &data);
    let up = a.sync(ws, "").await;
    // The new bytes, plus the edges of the chunks around them as deltas.
    assert!(up.summary.bytes_uploaded < 1024 * 1024 + 256 * 1024, "sent {}", up.summary.bytes_uploaded);
    let down = b.sync(ws, "").await;
    assert!(down.summary.bytes_downloaded < 8 * 1024 * 1024, "received {}", down.summary.bytes_downloaded);
    assert_eq!(b.read("big.bin"), data);

    // A small file is one chunk: a 1 KiB edit inside it goes as a delta of about that size.
    let mut small = noise(40 * 1024, 11);
    a.write("notes/small.bin", &small);
    a.sync(ws, "").await;
    b.sync(ws, "").await;
    tick();
    small[10_000..11_024].copy_from_slice(&noise(1024, 12));
    a.write("notes/small.bin", &small);
    let up = a.sync(ws, "").await;
    assert_eq!((up.summary.files_uploaded, up.summary.chunks_delta), (1, 1), "{:?}", up.summary);
    assert!(up.summary.bytes_uploaded < 3 * 1024, "sent {} bytes for a 1 KiB edit", up.summary.bytes_uploaded);
    b.sync(ws, "").await;
    assert_eq!(b.read("notes/small.bin"), small);
    srv.stop().await;
}

#[tokio::test]
async fn dry_run_and_status_change_nothing_and_ignore_rules_apply_both_ways() {
    let (srv, a, ws) = team().await;
    a.write(".cloudsyncignore", b"*.log\nbuild/\n");
    a.write("keep.txt", b"keep");
    a.write("debug.log", b"noise");
    a.write("build/out.o", b"obj");
    a.write(".keep.txt.swp", b"vim swap");

    let remote = WsPath::root();
    let dry = sync(&a.client, ws, &remote, a.dir.path(), &a.opts(true)).await.expect("dry run");
    assert_eq!(dry.plan.upload, vec![".cloudsyncignore".to_owned(), "keep.txt".to_owned()]);
    assert!(a.client.files(ws).list_all(&remote).await.expect("ls").is_empty(), "a dry run uploads nothing");

    a.sync(ws, "").await;
    let listed: Vec<String> =
        a.client.files(ws).list_all(&remote).await.expect("ls").into_iter().map(|e| e.path.to_string()).collect();
    assert_eq!(listed, [".cloudsyncignore", "keep.txt"]);

    // Status shows a pending local edit and a pending server change without applying either.
    tick();
    a.write("keep.txt", b"edited");
    common::put_file(&a.client, ws, "from-server.txt", b"hello", None).await.expect("put");
    // Ignored names coming from the server are not downloaded either.
    common::put_file(&a.client, ws, "server.log", b"x", None).await.expect("put");
    let st = cloudsync_sync::status(&a.client, a.dir.path(), &a.opts(true)).await.expect("status");
    assert_eq!(st.pending.upload, vec!["keep.txt".to_owned()]);
    assert_eq!(st.pending.download, vec!["from-server.txt".to_owned()]);
    assert_eq!(a.read("keep.txt"), b"edited");
    assert!(!a.path("from-server.txt").exists());

    // Syncing the folder with another place is refused until its pairing is forgotten.
    let other = WsPath::parse("elsewhere").expect("path");
    let e = sync(&a.client, ws, &other, a.dir.path(), &a.opts(false)).await.expect_err("one pairing per folder");
    assert!(e.to_string().contains("already synced"), "{e}");
    assert!(cloudsync_sync::forget(a.state.path(), a.dir.path()).expect("forget"));
    srv.stop().await;
}

#[allow(dead_code, reason = "helpers shared with other test files")]
mod common;

#[tokio::test]
async fn a_tree_of_identical_files_is_committed_although_it_never_fills_a_batch() {
    let (_srv, a, ws) = team().await;
    // More files than may wait for their commit at once (4000), all made of one chunk: the batch holding it
    // never fills, so the waiting commits themselves must get it flushed.
    const FILES: usize = 4200;
    for i in 0..FILES {
        a.write(&format!("d{:02}/f{i:04}.txt", i % 42), b"the same few bytes in every file");
    }
    let up = a.sync(ws, "").await;
    assert_eq!(up.summary.files_uploaded, FILES as u64, "{:?}", up.summary);
    assert_eq!(up.summary.chunks_uploaded, 1, "{:?}", up.summary);
    assert_eq!(up.summary.chunks_deduplicated, FILES as u64 - 1, "{:?}", up.summary);
    let listed = a.client.files(ws).list_all(&WsPath::parse_prefix("").expect("root")).await.expect("list");
    assert_eq!(listed.len(), FILES);
}
