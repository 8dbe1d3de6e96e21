//! Walking the local folder for a push. Symlinks are never followed (a link to `/etc` or to a parent folder
//! must not upload things the user did not put in the folder, nor loop forever), special files (sockets,
//! FIFOs, devices) are not content, and names the workspace refuses are reported rather than silently
//! mangled. Every one of these shows up as a warning so the user knows what was left out.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cloudsync_types::WsPath;
use indicatif::ProgressBar;

use crate::SyncError;
use crate::fetch::{PART_PREFIX, PART_SUFFIX};
use crate::ignore::Rules;
use crate::index::Stat;

/// Files found between two updates of the scanning spinner.
const SPINNER_EVERY: usize = 256;

/// A regular file to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalFile {
    /// Where it is on disk.
    pub(crate) abs: PathBuf,
    /// Where it goes in the workspace.
    pub(crate) ws: WsPath,
    /// Its path relative to the scanned folder ('/'-separated; the file name for a single file).
    pub(crate) rel: String,
    /// Size, mtime and inode when scanned (compared with the sync index).
    pub(crate) stat: Stat,
    /// The sync index saw this very stat (the file is read only to confirm it, see `index::Entry::racy`), so
    /// it most likely equals its server copy.
    pub(crate) likely_unchanged: bool,
    /// Identity when scanned, to notice the file being swapped (e.g. for a symlink) before it is opened.
    pub(crate) identity: Option<(u64, u64)>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Files to push, in path order.
    pub(crate) files: Vec<LocalFile>,
    /// One line per entry left out.
    pub(crate) skipped: Vec<String>,
}

/// Device and inode on Unix (None elsewhere): what the file *is*, independent of its name.
pub(crate) fn identity(meta: &fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Scans a single file given directly (`cloudsync push file.txt remote/`): it goes to `remote/<name>`.
pub(crate) fn scan_single(path: &Path, meta: &fs::Metadata, remote: &WsPath) -> Result<Scan, SyncError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| SyncError::InvalidLocal(format!("{}: the file name is not valid UTF-8", path.display())))?;
    let ws =
        remote.join(name).map_err(|e| SyncError::InvalidLocal(format!("{}: cannot be pushed: {e}", path.display())))?;
    Ok(Scan {
        files: vec![LocalFile {
            abs: path.to_path_buf(),
            ws,
            rel: name.to_owned(),
            stat: Stat::of(meta),
            likely_unchanged: false,
            identity: identity(meta),
        }],
        skipped: Vec::new(),
    })
}

/// Walks `root` recursively (without following symlinks) and maps every regular file to a path below
/// `remote`, leaving out what `rules` ignore and counting the files found on `spinner`. Fails only when
/// `root` itself cannot be read; problems below it become warnings.
pub(crate) fn scan_dir(root: &Path, remote: &WsPath, rules: &Rules, spinner: &ProgressBar) -> Result<Scan, SyncError> {
    let mut scan = Scan::default();
    let mut stack: Vec<Dir> = Vec::new();
    let top = Dir { abs: root.to_path_buf(), ws: remote.clone(), rel: String::new() };
    read_dir_into(&top, rules, &mut scan, &mut stack).map_err(|e| SyncError::io(root, e))?;
    let mut shown = 0;
    while let Some(dir) = stack.pop() {
        if let Err(e) = read_dir_into(&dir, rules, &mut scan, &mut stack) {
            scan.skipped.push(format!("{}: folder skipped, cannot read it: {e}", dir.abs.display()));
        }
        if scan.files.len() >= shown + SPINNER_EVERY {
            shown = scan.files.len();
            spinner.set_message(format!("scanning… {shown} files"));
        }
    }
    spinner.set_message(format!("scanning… {} files", scan.files.len()));
    scan.files.sort_by(|a, b| a.ws.cmp(&b.ws));
    Ok(scan)
}

/// A folder still to read.
struct Dir {
    abs: PathBuf,
    ws: WsPath,
    /// Relative to the scanned folder ("" for the folder itself).
    rel: String,
}

/// Reads one directory: files go to `scan`, sub-directories onto `stack`.
fn read_dir_into(dir: &Dir, rules: &Rules, scan: &mut Scan, stack: &mut Vec<Dir>) -> io::Result<()> {
    let mut entries = fs::read_dir(&dir.abs)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let shown = path.display();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            scan.skipped.push(format!("{shown}: skipped, the name is not valid UTF-8"));
            continue;
        };
        // Like `symlink_metadata`, `DirEntry::metadata` describes the entry itself, never a symlink's target.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                scan.skipped.push(format!("{shown}: skipped, cannot read it: {e}"));
                continue;
            }
        };
        let kind = meta.file_type();
        let rel = if dir.rel.is_empty() { name.clone() } else { format!("{}/{name}", dir.rel) };
        if rules.is_ignored(&rel, kind.is_dir()) {
            continue;
        }
        if kind.is_symlink() {
            scan.skipped.push(format!("{shown}: skipped, symbolic links are not followed"));
            continue;
        }
        if !kind.is_dir() && !kind.is_file() {
            scan.skipped.push(format!("{shown}: skipped, not a regular file or folder"));
            continue;
        }
        if kind.is_file() && name.starts_with(PART_PREFIX) && name.ends_with(PART_SUFFIX) {
            scan.skipped.push(format!("{shown}: skipped, a partial download left by an interrupted pull"));
            continue;
        }
        // `join` validates the new component (and the whole path) with the workspace's rules.
        let ws = match dir.ws.join(&name) {
            Ok(ws) => ws,
            Err(e) => {
                let what = if kind.is_dir() { "folder" } else { "file" };
                scan.skipped.push(format!("{shown}: {what} skipped, the name cannot be synced: {e}"));
                continue;
            }
        };
        if kind.is_dir() {
            stack.push(Dir { abs: path, ws, rel });
        } else {
            let (stat, identity) = (Stat::of(&meta), identity(&meta));
            scan.files.push(LocalFile { abs: path, ws, rel, stat, likely_unchanged: false, identity });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, content: &[u8]) {
        fs::write(path, content).expect("write");
    }

    fn ws_paths(scan: &Scan) -> Vec<&str> {
        scan.files.iter().map(|f| f.ws.as_str()).collect()
    }

    #[test]
    fn maps_paths_below_the_remote_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
        touch(&root.join("a.txt"), b"a");
        touch(&root.join("sub/b.txt"), b"bb");
        touch(&root.join("sub/deeper/c.txt"), b"ccc");
        touch(&root.join(".hidden"), b"");

        let remote = WsPath::parse("backup/laptop").expect("remote");
        let scan = scan_dir(root, &remote, &Rules::defaults_only(), &ProgressBar::hidden()).expect("scan");
        assert_eq!(
            ws_paths(&scan),
            [
                "backup/laptop/.hidden",
                "backup/laptop/a.txt",
                "backup/laptop/sub/b.txt",
                "backup/laptop/sub/deeper/c.txt"
            ]
        );
        assert_eq!(scan.files[2].abs, root.join("sub/b.txt"));
        assert_eq!(scan.files[2].stat.size, 2);
        assert!(scan.skipped.is_empty(), "{:?}", scan.skipped);

        let at_root = scan_dir(root, &WsPath::root(), &Rules::defaults_only(), &ProgressBar::hidden()).expect("scan");
        assert_eq!(ws_paths(&at_root)[1], "a.txt");
    }

    #[cfg(unix)]
    #[test]
    fn skips_symlinks_special_files_and_invalid_names() {
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        touch(&outside.path().join("secret.txt"), b"do not upload");
        let root = dir.path();
        touch(&root.join("ok.txt"), b"ok");
        symlink(root.join("ok.txt"), root.join("link-to-file")).expect("symlink");
        symlink(outside.path(), root.join("link-to-dir")).expect("symlink");
        let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket");
        touch(&root.join("con.txt"), b"reserved on Windows");
        touch(&root.join("back\\slash"), b"x");
        touch(&root.join("new\nline"), b"x");
        fs::create_dir(root.join("LPT1")).expect("mkdir");
        touch(&root.join("LPT1/inside.txt"), b"x");
        touch(&root.join(".cloudsync-0123abcd.part"), b"partial");

        let scan =
            scan_dir(root, &WsPath::parse("r").expect("remote"), &Rules::defaults_only(), &ProgressBar::hidden())
                .expect("scan");
        assert_eq!(ws_paths(&scan), ["r/ok.txt"]);
        // The partial download is ignored silently (a default ignore rule); the rest are reported.
        assert_eq!(scan.skipped.len(), 7, "{:#?}", scan.skipped);
        let all = scan.skipped.join("\n");
        for needle in ["link-to-file", "link-to-dir", "sock", "con.txt", "slash", "LPT1"] {
            assert!(all.contains(needle), "{needle} not reported in {all}");
        }
        assert!(!all.contains("secret"));
    }

    #[test]
    fn ignore_rules_leave_out_files_and_whole_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("build/deep")).expect("mkdir");
        fs::create_dir_all(root.join("src")).expect("mkdir");
        touch(&root.join(crate::ignore::IGNORE_FILE), b"build/\n*.log\n");
        touch(&root.join("build/deep/out.bin"), b"x");
        touch(&root.join("src/main.rs"), b"fn main() {}");
        touch(&root.join("src/debug.log"), b"x");
        touch(&root.join("src/.main.rs.swp"), b"x");
        let rules = Rules::load(root).expect("rules");
        let scan = scan_dir(root, &WsPath::root(), &rules, &ProgressBar::hidden()).expect("scan");
        assert_eq!(ws_paths(&scan), [crate::ignore::IGNORE_FILE, "src/main.rs"]);
        assert_eq!(scan.files[1].rel, "src/main.rs");
        assert!(scan.skipped.is_empty(), "{:?}", scan.skipped);
    }

    #[test]
    fn single_file_goes_below_the_remote_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("report.pdf");
        touch(&file, b"pdf");
        let meta = fs::metadata(&file).expect("meta");
        let scan = scan_single(&file, &meta, &WsPath::parse("docs").expect("remote")).expect("scan");
        assert_eq!(ws_paths(&scan), ["docs/report.pdf"]);
        let bad = dir.path().join("aux.txt");
        touch(&bad, b"x");
        let meta = fs::metadata(&bad).expect("meta");
        assert!(matches!(scan_single(&bad, &meta, &WsPath::root()), Err(SyncError::InvalidLocal(_))));
    }

    #[test]
    fn unreadable_root_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        assert!(matches!(
            scan_dir(&missing, &WsPath::root(), &Rules::defaults_only(), &ProgressBar::hidden()),
            Err(SyncError::Io { .. })
        ));
    }
}
