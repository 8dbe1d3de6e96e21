//! Files in end-to-end encrypted workspaces, through the `cloudsync` binary against a real server: members
//! push and pull, the server's storage, database and log hold none of the names or contents, and a server
//! that rewrites what it stores (injects a file, moves one, rolls one back, replaces a wrapped key) is caught
//! by the reading client, which then writes nothing. Versions and the trash work on such a workspace too: an
//! old version is restored by signing it again on the member's device. Two-way sync works on such a workspace
//! as on any other: edits, deletions, renames and conflicts on two members' devices all arrive, and nothing
//! is lost.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use common::*;

const SECRET: &str = "Secret Project";

/// Random bytes (not reproducible; a test's files differ on every run).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let state = RandomState::new();
    let mut i = 0u64;
    while out.len() < len {
        let mut h = state.build_hasher();
        h.write_u64(i);
        out.extend_from_slice(&h.finish().to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn random_name(prefix: &str) -> String {
    let hex: String = random_bytes(8).iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

fn init_keys(who: &Client, passphrase: &str) {
    let out = who.with_stdin(&["keys", "init", "--passphrase-stdin"], &format!("{passphrase}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every regular file below `dir`, by path relative to it.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).expect("below").to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(&p).expect("read");
            (rel, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Alice (owner) and Bob (editor) in an end-to-end encrypted workspace.
fn two_members(root: &Path, log: Option<&Path>) -> (Server, Client, Client) {
    let srv = start_server_logging(&root.join("server"), log);
    create_user(&srv, "alice@example.org", false);
    create_user(&srv, "bob@example.org", false);
    let alice = Client::new(root, "alice");
    alice.login(&srv, "alice@example.org");
    let bob = Client::new(root, "bob");
    bob.login(&srv, "bob@example.org");
    init_keys(&alice, "alice's long passphrase");
    init_keys(&bob, "bob's long passphrase");
    alice.ok(&["workspace", "create", SECRET, "--e2e-encryption", "--yes"]);
    alice.ok(&["workspace", "members", "add", "--workspace", SECRET, "bob@example.org", "--role", "editor"]);
    (srv, alice, bob)
}

#[test]
fn members_push_and_pull_and_the_server_never_sees_names_or_contents() {
    let root = tempfile::tempdir().expect("tempdir");
    let log = root.path().join("server.log");
    let (srv, alice, bob) = two_members(root.path(), Some(&log));

    // Random names and contents: one file of several chunks (over the 4 MiB maximum), one in a folder, an empty one.
    let folder = random_name("folder-");
    let names = [random_name("report-") + ".pdf", format!("{folder}/{}", random_name("notes-")), random_name("empty-")];
    let contents = [random_bytes(6 * 1024 * 1024 + 12_345), random_bytes(20_000), Vec::new()];
    let src = root.path().join("alice-files");
    for (n, c) in names.iter().zip(&contents) {
        write(&src.join(n), c);
    }
    let pushed = json(&alice.ok(&["push", src.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!(pushed["files_uploaded"], 3, "{pushed}");
    let again = json(&alice.ok(&["push", src.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!((again["files_uploaded"].as_u64(), again["files_unchanged"].as_u64()), (Some(0), Some(3)), "{again}");

    let listed = json(&alice.ok(&["ls", SECRET, "--json"]));
    let mut paths: Vec<&str> =
        listed.as_array().expect("list").iter().map(|f| f["path"].as_str().expect("path")).collect();
    paths.sort_unstable();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(paths, expected);

    // Bob pulls exactly what Alice pushed.
    let dst = root.path().join("bob-files");
    let pulled = json(&bob.ok(&["pull", SECRET, dst.to_str().expect("utf8"), "--json"]));
    assert_eq!(pulled["files_downloaded"], 3, "{pulled}");
    assert_eq!(tree(&dst), tree(&src));

    // Bob edits one file (only its changed chunks travel); Alice's pull replaces her copy, which held content
    // she had seen on the server, without a conflicted copy.
    let mut edited = contents[0].clone();
    edited[100..200].copy_from_slice(&random_bytes(100));
    write(&dst.join(&names[0]), &edited);
    let sent = json(&bob.ok(&["push", dst.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!(sent["files_uploaded"], 1, "{sent}");
    // A file over the 4 MiB chunk maximum has at least two chunks; the edit touches only the first.
    assert!(sent["chunks_deduplicated"].as_u64().expect("n") >= 1, "unchanged chunks are not sent again: {sent}");
    assert!(sent["bytes_uploaded"].as_u64().expect("n") < edited.len() as u64, "{sent}");
    let back = json(&alice.ok(&["pull", SECRET, src.to_str().expect("utf8"), "--json"]));
    assert_eq!((back["files_downloaded"].as_u64(), back["files_conflicted"].as_u64()), (Some(1), Some(0)), "{back}");
    assert_eq!(std::fs::read(src.join(&names[0])).expect("read"), edited);

    // Versions and deletion go by path id; what needs the server to read content is refused, naming why.
    let versions = json(&alice.ok(&["versions", &format!("{SECRET}:{}", names[0]), "--json"]));
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{versions}");
    let err = alice.fail(&["share", "create", &format!("{SECRET}:{}", names[0])]);
    assert!(err.contains("end-to-end encrypted"), "{err}");
    let removed = json(&alice.ok(&["rm", &format!("{SECRET}:{folder}"), "--json"]));
    assert_eq!(removed["deleted"], 1, "{removed}");
    let left = json(&bob.ok(&["ls", SECRET, "--json"]));
    assert_eq!(left.as_array().map(Vec::len), Some(2), "{left}");

    // The audit log names the files by their path ids only.
    let audit = alice.ok(&["audit", "list", "--workspace", SECRET, "--json"]);
    for n in &names {
        let base = n.rsplit('/').next().expect("name");
        assert!(!audit.contains(base), "{base} is in the audit log");
    }

    // Nothing the server keeps (database, chunk store, temporary files, its debug log) holds a name or a piece
    // of content.
    drop(srv);
    let mut stored: Vec<(String, Vec<u8>)> = walk(&root.path().join("server"))
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
        .collect();
    stored.push(("server log".into(), std::fs::read(&log).expect("log")));
    assert!(stored.iter().any(|(n, _)| n.ends_with("meta.db")), "the database is scanned");
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for n in &names {
        needles.extend(n.split('/').map(|part| part.as_bytes().to_vec()));
    }
    for c in contents.iter().chain([&edited]).filter(|c| !c.is_empty()) {
        for at in [0, c.len() / 2, c.len() - 32] {
            needles.push(c[at..at + 32].to_vec());
        }
    }
    for needle in &needles {
        for (name, bytes) in &stored {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_slice()), "{name} holds a name or content");
        }
    }
}

#[test]
fn a_server_that_rewrites_e2ee_files_is_caught_and_nothing_is_written() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice, bob) = two_members(root.path(), None);
    let src = root.path().join("alice-files");
    write(&src.join("plans/a.txt"), b"first version of a");
    write(&src.join("minutes/b.txt"), b"the only version of b");
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    write(&src.join("plans/a.txt"), b"second version of a, longer");
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    let dst = root.path().join("bob-files");
    bob.ok(&["pull", SECRET, dst.to_str().expect("utf8")]);
    let server_paths = |srv: &Server| -> Vec<String> {
        let n = count(srv, "SELECT count(*) FROM files WHERE deleted_ms IS NULL");
        (0..n)
            .map(|i| {
                let sql = format!("SELECT path FROM files WHERE deleted_ms IS NULL ORDER BY path LIMIT 1 OFFSET {i}");
                text(srv, &sql)
            })
            .collect()
    };
    let paths = server_paths(&srv);
    assert_eq!(paths.len(), 2);
    assert!(paths.iter().all(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())), "{paths:?}");
    let a = text(&srv, "SELECT f.path FROM files f JOIN versions v ON v.file_id = f.id WHERE v.version = 2");
    let b = paths.iter().find(|p| **p != a).expect("b").clone();

    let pull_fails = |who: &Client, what: &str, expect: &str| {
        let fresh = root.path().join(format!("pull-{}", random_name("")));
        let err = who.fail(&["pull", SECRET, fresh.to_str().expect("utf8")]);
        assert!(err.contains(expect), "{what}: {err}");
        let written = if fresh.exists() { walk(&fresh) } else { Vec::new() };
        assert!(written.is_empty(), "{what}: {written:?} written");
    };

    // A file injected by the server (a copy of a's record under a new path id).
    let fake = "ab".repeat(32);
    tamper(
        &srv,
        &format!(
            "INSERT INTO files SELECT x'00112233445566778899aabbccddeeff', workspace_id, '{fake}', current_version, current_version_id, NULL FROM files WHERE path = '{a}'"
        ),
    );
    tamper(
        &srv,
        &format!(
            "INSERT INTO versions SELECT randomblob(16), x'00112233445566778899aabbccddeeff', workspace_id, version, size, content_hash, manifest, mtime_ms, created_by, created_ms FROM versions WHERE file_id = (SELECT id FROM files WHERE path = '{a}')"
        ),
    );
    pull_fails(&bob, "injected", "does not check out");
    tamper(&srv, "DELETE FROM versions WHERE file_id = x'00112233445566778899aabbccddeeff'");
    tamper(&srv, "DELETE FROM files WHERE id = x'00112233445566778899aabbccddeeff'");
    bob.ok(&["ls", SECRET]);

    // Files moved between folders (their records swapped).
    let swap = |srv: &Server| {
        tamper(srv, &format!("UPDATE files SET path = 'tmp' WHERE path = '{a}'"));
        tamper(srv, &format!("UPDATE files SET path = '{a}' WHERE path = '{b}'"));
        tamper(srv, &format!("UPDATE files SET path = '{b}' WHERE path = 'tmp'"));
    };
    swap(&srv);
    pull_fails(&bob, "moved", "does not check out");
    swap(&srv);
    bob.ok(&["ls", SECRET]);

    // The chunk list the server keeps for a file: reordered, cut short, or holding another file's chunk.
    let big = random_bytes(9 * 1024 * 1024);
    write(&src.join("plans/big.bin"), &big);
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    let big_path = server_paths(&srv).into_iter().find(|p| *p != a && *p != b).expect("big");
    let original = chunk_list(&srv, &big_path);
    assert!(original.len() >= 3, "the test needs a manifest and two content chunks: {}", original.len());
    // a is small: its content is inside its manifest, its only stored object.
    let other = chunk_list(&srv, &a);
    assert_eq!(other.len(), 1, "a small file is stored as its manifest alone");
    let mut reordered = original.clone();
    reordered.swap(1, 2);
    let truncated = original[..original.len() - 1].to_vec();
    let mut swapped = original.clone();
    swapped[1] = other[0];
    for (what, list) in [("reordered", reordered), ("truncated", truncated), ("swapped", swapped)] {
        set_chunk_list(&srv, &big_path, &list);
        pull_fails(&bob, what, "differs from its signed manifest");
        set_chunk_list(&srv, &big_path, &original);
    }
    bob.ok(&["ls", SECRET]);

    // A file rolled back to its first version: Alice, who wrote the second, refuses it.
    tamper(
        &srv,
        "UPDATE versions SET manifest = (SELECT o.manifest FROM versions o WHERE o.file_id = versions.file_id AND o.version = 1) WHERE version = 2",
    );
    pull_fails(&alice, "rolled back", "rolled the file back");

    // A wrapped key replaced by another member's: Alice refuses it.
    tamper(
        &srv,
        "UPDATE e2ee_wrapped_keys SET record = (SELECT k.record FROM e2ee_wrapped_keys k WHERE k.recipient_id != e2ee_wrapped_keys.recipient_id) WHERE recipient_id = (SELECT id FROM users WHERE email = 'alice@example.org')",
    );
    let err = alice.fail(&["ls", SECRET]);
    assert!(err.contains("does not check out") || err.contains("another identity"), "{err}");
}

/// The chunk list (id, stored size) of the current version of the file the server keeps at `path`, decoded
/// from the server's manifest encoding (magic, size, content hash, chunk count, chunks).
fn chunk_list(srv: &Server, path: &str) -> Vec<([u8; 32], u32)> {
    let sql = format!(
        "SELECT hex(v.manifest) FROM versions v JOIN files f ON f.current_version_id = v.id WHERE f.path = '{path}'"
    );
    let raw = hex_decode(&text(srv, &sql));
    let hash_len = u32::from_le_bytes(raw[12..16].try_into().expect("4")) as usize;
    let at = 16 + hash_len + 4;
    raw[at..]
        .chunks(36)
        .map(|c| (c[..32].try_into().expect("32"), u32::from_le_bytes(c[32..].try_into().expect("4"))))
        .collect()
}

/// Rewrites that chunk list (and the size it sums to), as a malicious server could.
fn set_chunk_list(srv: &Server, path: &str, chunks: &[([u8; 32], u32)]) {
    let sql = format!(
        "SELECT hex(v.manifest) FROM versions v JOIN files f ON f.current_version_id = v.id WHERE f.path = '{path}'"
    );
    let raw = hex_decode(&text(srv, &sql));
    let hash_len = u32::from_le_bytes(raw[12..16].try_into().expect("4")) as usize;
    let mut out = raw[..4].to_vec();
    out.extend_from_slice(&chunks.iter().map(|c| u64::from(c.1)).sum::<u64>().to_le_bytes());
    out.extend_from_slice(&raw[12..16 + hash_len]);
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for (id, size) in chunks {
        out.extend_from_slice(id);
        out.extend_from_slice(&size.to_le_bytes());
    }
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    tamper(
        srv,
        &format!(
            "UPDATE versions SET manifest = x'{hex}' WHERE id = (SELECT current_version_id FROM files WHERE path = '{path}')"
        ),
    );
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// One text value from the server's database.
fn text(srv: &Server, sql: &str) -> String {
    use sqlx::Connection;
    let url = format!("sqlite://{}", srv.data.join("meta.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open database");
        sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("query")
    })
}

#[test]
fn versions_restore_and_trash_work_with_real_names_across_a_key_rotation() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_srv, alice, bob) = two_members(root.path(), None);
    let src = root.path().join("alice-files");
    let spec = format!("{SECRET}:notes/a.txt");
    write(&src.join("notes/a.txt"), b"one: the first words");
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    // The first version is small (inline in its manifest), the second is stored as chunks.
    let two = random_bytes(200 * 1024);
    write(&src.join("notes/a.txt"), &two);
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    let read_back = |who: &Client| -> Vec<u8> {
        let dir = root.path().join(format!("read-{}", random_name("")));
        who.ok(&["pull", SECRET, dir.to_str().expect("utf8")]);
        std::fs::read(dir.join("notes/a.txt")).expect("pulled")
    };

    // An editor may not restore (it is an admin's action, as on any workspace).
    let err = bob.fail(&["restore", &spec]);
    assert!(err.contains("admin"), "{err}");

    // The previous version comes back as a new one, signed by Alice; in the same key epoch its chunks are
    // the stored ones (here none: its content is inside its manifest), so only the new manifest is sent.
    let r = json(&alice.ok(&["restore", &spec, "--json"]));
    assert_eq!((r["restored_version"].as_u64(), r["version"].as_u64()), (Some(1), Some(3)), "{r}");
    assert_eq!((r["chunks_uploaded"].as_u64(), r["from_trash"].as_bool()), (Some(0), Some(false)), "{r}");
    assert_eq!(read_back(&bob), b"one: the first words");
    // The restore counts as newer than what every member saw: no one takes it for a rollback.
    bob.ok(&["ls", SECRET]);

    // Removing Bob starts a new key epoch: version 2 (sealed in epoch 0) is sealed again in epoch 1.
    alice.ok(&["workspace", "members", "remove", "--workspace", SECRET, "bob@example.org"]);
    let r = json(&alice.ok(&["restore", &spec, "--version", "2", "--json"]));
    assert_eq!(r["version"].as_u64(), Some(4), "{r}");
    assert!(r["chunks_uploaded"].as_u64() >= Some(1), "re-sealed in the new epoch: {r}");
    let listed = json(&alice.ok(&["ls", SECRET, "--json"]));
    assert_eq!(listed[0]["epoch"].as_u64(), Some(1), "{listed}");
    assert_eq!(read_back(&alice), two);

    // The trash shows real names; a file comes back from it as deleted, or at an older version.
    alice.ok(&["rm", &spec]);
    let trash = json(&alice.ok(&["trash", "list", SECRET, "--json"]));
    assert_eq!(trash[0]["path"].as_str(), Some("notes/a.txt"), "{trash}");
    assert_eq!(trash[0]["version"].as_u64(), Some(4), "{trash}");
    assert!(alice.ok(&["trash", "list", SECRET]).contains("notes/a.txt"));
    let r = json(&alice.ok(&["restore", &spec, "--json"]));
    assert_eq!((r["from_trash"].as_bool(), r["version"].as_u64()), (Some(true), Some(4)), "{r}");
    assert_eq!(read_back(&alice), two);
    alice.ok(&["rm", &spec]);
    let r = json(&alice.ok(&["restore", &spec, "--version", "1", "--json"]));
    assert_eq!((r["from_trash"].as_bool(), r["version"].as_u64()), (Some(true), Some(5)), "{r}");
    assert_eq!(read_back(&alice), b"one: the first words");

    // Nothing to restore is said plainly.
    let err = alice.fail(&["restore", &format!("{SECRET}:notes/never.txt")]);
    assert!(err.contains("neither a file nor in the trash"), "{err}");
    let err = alice.fail(&["restore", &spec, "--version", "9"]);
    assert!(err.contains("no version 9"), "{err}");
}

/// `sync` output as JSON, with its counts.
fn synced(who: &Client, dir: &Path) -> serde_json::Value {
    json(&who.ok(&["sync", dir.to_str().expect("utf8"), SECRET, "--json"]))
}

fn count_of(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn members_sync_an_e2ee_folder_both_ways_and_nothing_is_lost() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice, bob) = two_members(root.path(), None);
    let (a, b) = (root.path().join("alice-sync"), root.path().join("bob-sync"));
    std::fs::create_dir_all(&b).expect("mkdir");
    let folder = random_name("folder-");
    let plan = format!("{folder}/{}.txt", random_name("plan-"));
    let keep = random_name("keep-") + ".txt";
    let big_name = random_name("big-") + ".bin";
    let moved = format!("{}/{big_name}", random_name("archive-"));
    let fresh = random_name("fresh-") + ".txt";
    let big = random_bytes(6 * 1024 * 1024 + 777);
    write(&a.join(&plan), b"plan, first draft");
    write(&a.join(&keep), b"a file Alice deletes");
    write(&a.join(&big_name), &big);

    // Alice's folder goes up; Bob's empty folder comes down to the same files; a second sync does nothing.
    let up = synced(&alice, &a);
    assert_eq!(count_of(&up, "files_uploaded"), 3, "{up}");
    let down = synced(&bob, &b);
    assert_eq!(count_of(&down, "files_downloaded"), 3, "{down}");
    assert_eq!(tree(&a), tree(&b));
    let noop = synced(&bob, &b);
    assert_eq!((count_of(&noop, "files_uploaded"), count_of(&noop, "files_downloaded")), (0, 0), "{noop}");

    // Interleaved: Alice (owner) deletes one file and renames the big one into a new folder; Bob (editor)
    // edits one and creates one.
    std::fs::remove_file(a.join(&keep)).expect("rm");
    std::fs::create_dir_all(a.join(&moved).parent().expect("parent")).expect("mkdir");
    std::fs::rename(a.join(&big_name), a.join(&moved)).expect("mv");
    write(&b.join(&plan), b"plan, second draft by Bob");
    write(&b.join(&fresh), b"new from Bob");
    let alice_up = synced(&alice, &a);
    assert_eq!(count_of(&alice_up, "files_renamed"), 1, "{alice_up}");
    assert_eq!(count_of(&alice_up, "files_deleted"), 1, "{alice_up}");
    assert_eq!(count_of(&alice_up, "files_uploaded"), 0, "{alice_up}");
    // A rename sends a new manifest, not the file's chunks again.
    assert!(count_of(&alice_up, "bytes_uploaded") < 64 * 1024, "{alice_up}");
    let bob_sync = synced(&bob, &b);
    assert_eq!(count_of(&bob_sync, "files_uploaded"), 2, "{bob_sync}");
    assert_eq!(count_of(&bob_sync, "files_renamed"), 1, "the rename arrives as a rename: {bob_sync}");
    assert_eq!(count_of(&bob_sync, "files_deleted"), 1, "{bob_sync}");
    // Deletions are not signed yet, so Bob's copy of the deleted file is set aside, not erased.
    let aside: Vec<_> =
        walk(&bob.home).into_iter().filter(|p| p.ends_with(&keep) && p.to_string_lossy().contains("deleted")).collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).expect("read"), b"a file Alice deletes");
    assert!(bob_sync["warnings"].to_string().contains("not erased"), "the sync says where it went: {bob_sync}");
    let alice_down = synced(&alice, &a);
    assert_eq!(count_of(&alice_down, "files_downloaded"), 2, "{alice_down}");
    assert_eq!(tree(&a), tree(&b));
    let mut names: Vec<String> = tree(&a).into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut expected = vec![plan.clone(), moved.clone(), fresh.clone()];
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(std::fs::read(a.join(&plan)).expect("read"), b"plan, second draft by Bob");
    assert_eq!(std::fs::read(b.join(&moved)).expect("read"), big);

    // The same file changed on both devices: both versions survive, on both devices.
    write(&a.join(&plan), b"third draft, Alice's");
    write(&b.join(&plan), b"third draft, Bob's");
    synced(&alice, &a);
    let clash = synced(&bob, &b);
    assert_eq!(count_of(&clash, "files_conflicted"), 1, "{clash}");
    synced(&alice, &a);
    assert_eq!(tree(&a), tree(&b));
    let contents: Vec<Vec<u8>> = tree(&a).into_iter().map(|(_, c)| c).collect();
    for v in [&b"third draft, Alice's"[..], &b"third draft, Bob's"[..]] {
        assert!(contents.iter().any(|c| c == v), "{} was lost", String::from_utf8_lossy(v));
    }
    assert!(tree(&a).iter().any(|(n, _)| n.contains("conflicted copy")), "{:?}", tree(&a));
    let st = json(&bob.ok(&["status", b.to_str().expect("utf8"), "--json"]));
    assert_eq!(st["pending"]["upload"].as_array().map(Vec::len), Some(0), "{st}");

    // Alice's deletion went to the trash, under its real name for members.
    let trash = alice.ok(&["trash", "list", SECRET, "--json"]);
    assert!(trash.contains(&keep), "{trash}");

    // Bob's role cannot delete on the server: his sync says so and goes on; the file stays for everyone.
    std::fs::remove_file(b.join(&fresh)).expect("rm");
    let out = bob.run(&["sync", b.to_str().expect("utf8"), SECRET]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches("admin role").count(), 1, "said once, not tried again in the same sync: {said}");
    synced(&alice, &a);
    assert!(a.join(&fresh).exists(), "a deletion the server refused is not applied elsewhere");

    // A file the server injects is caught by the next sync that lists, and nothing new is written.
    let victim = text(&srv, "SELECT path FROM files WHERE deleted_ms IS NULL ORDER BY path LIMIT 1");
    let fake = "cd".repeat(32);
    tamper(
        &srv,
        &format!(
            "INSERT INTO files SELECT x'00112233445566778899aabbccddeeff', workspace_id, '{fake}', current_version, current_version_id, NULL FROM files WHERE path = '{victim}'"
        ),
    );
    tamper(
        &srv,
        &format!(
            "INSERT INTO versions SELECT randomblob(16), x'00112233445566778899aabbccddeeff', workspace_id, version, size, content_hash, manifest, mtime_ms, created_by, created_ms FROM versions WHERE file_id = (SELECT id FROM files WHERE path = '{victim}')"
        ),
    );
    let later = random_name("later-") + ".txt";
    write(&a.join(&later), b"written after the injection");
    synced(&alice, &a);
    let err = bob.fail(&["sync", b.to_str().expect("utf8"), SECRET]);
    assert!(err.contains("does not check out"), "{err}");
    assert!(!b.join(&later).exists(), "nothing is written from a listing that does not check out");

    // None of the names synced is on the server.
    drop(srv);
    let stored: Vec<(String, Vec<u8>)> = walk(&root.path().join("server"))
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
        .collect();
    for name in [&folder, &keep, &big_name, &fresh, &later] {
        let needle = name.as_bytes();
        for (file, bytes) in &stored {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{file} holds {name}");
        }
    }
}

/// Many small files (sealed a window at a time on every core, opened a slice at a time), with a larger one and
/// an empty one among them, go up and down whole and in place.
#[test]
fn many_small_files_go_both_ways_in_an_e2ee_workspace() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_srv, alice, bob) = two_members(root.path(), None);
    let src = root.path().join("many");
    for i in 0..150_usize {
        write(&src.join(format!("d{}/f{i:03}.bin", i % 4)), &random_bytes(1 + i * 97));
    }
    write(&src.join("d1/large.bin"), &random_bytes(300_000));
    write(&src.join("d2/empty"), b"");
    let pushed = json(&alice.ok(&["push", src.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!(pushed["files_uploaded"], 152, "{pushed}");
    let dst = root.path().join("bob-many");
    let pulled = json(&bob.ok(&["pull", SECRET, dst.to_str().expect("utf8"), "--json"]));
    assert_eq!(pulled["files_downloaded"], 152, "{pulled}");
    assert_eq!(tree(&dst), tree(&src));
    let again = json(&alice.ok(&["push", src.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!(again["files_unchanged"], 152, "{again}");
}
