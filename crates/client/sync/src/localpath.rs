//! Where a pulled file may be written. Paths come from the server, which a client must not trust with its
//! file system: every component is validated again (no `..`, no absolute or backslash names, no control
//! characters), the result must stay inside the target folder, and no existing symlink on the way is ever
//! followed, so a hostile server or a planted link cannot make a pull write outside the folder.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use cloudsync_types::path::validate_component;

/// The local path for `rel` (a `/`-separated path relative to the pulled folder) below `root`, or why it
/// is refused. Pure: does not look at the disk.
pub(crate) fn local_path(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    if rel.starts_with('/') || rel.starts_with('\\') {
        return Err("the path is absolute".into());
    }
    let mut out = root.to_path_buf();
    for comp in rel.split('/') {
        validate_component(comp).map_err(|e| format!("unsafe name {comp:?}: {e}"))?;
        if cfg!(windows) && comp.contains(':') {
            return Err(format!("unsafe name {comp:?}: ':' is not allowed in Windows names"));
        }
        // Belt and braces: the component must be one plain name for this platform's path rules.
        let mut parts = Path::new(comp).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => out.push(comp),
            _ => return Err(format!("unsafe name {comp:?}")),
        }
    }
    if !out.starts_with(root) || out == root {
        return Err("the path does not stay inside the target folder".into());
    }
    Ok(out)
}

/// What is on disk at a target path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Nothing yet.
    Missing,
    /// A regular file of this size.
    File(u64),
}

/// Creates the folders between `root` and `target` (exclusive) one at a time, refusing to pass through a
/// symlink or a non-folder, then reports what is at `target` itself. `Ok(Err(reason))` means "skip this
/// file"; `Err` is an I/O failure with the path it happened at.
pub(crate) fn prepare(root: &Path, target: &Path) -> Result<Result<Existing, String>, (PathBuf, io::Error)> {
    let Ok(rel) = target.strip_prefix(root) else {
        return Ok(Err("the path does not stay inside the target folder".into()));
    };
    let comps: Vec<_> = rel.components().collect();
    let Some((_, parents)) = comps.split_last() else {
        return Ok(Err("the path is empty".into()));
    };
    let mut dir = root.to_path_buf();
    for comp in parents {
        dir.push(comp);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => {
                return Ok(Err(format!("{} is a symbolic link, which is never followed", dir.display())));
            }
            Ok(_) => return Ok(Err(format!("{} is in the way (not a folder)", dir.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err((dir, e)),
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // Someone created it meanwhile: check again what it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Ok(Err(format!("{} is in the way (not a folder)", dir.display()))),
                Err(e) => return Err((dir, e)),
            },
            Err(e) => return Err((dir, e)),
        }
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_file() => Ok(Ok(Existing::File(m.len()))),
        Ok(m) if m.file_type().is_symlink() => {
            Ok(Err(format!("{} is a symbolic link, which is never followed or replaced", target.display())))
        }
        Ok(_) => Ok(Err(format!("{} is in the way (not a regular file)", target.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ok(Existing::Missing)),
        Err(e) => Err((target.to_path_buf(), e)),
    }
}

/// Remembers paths by their lower-case form, to notice two that would be the same file on a
/// case-insensitive file system (Windows, macOS by default).
#[derive(Debug, Default)]
pub(crate) struct CaseFold {
    seen: std::collections::HashMap<String, String>,
}

impl CaseFold {
    /// The earlier path whose lower-case form equals `path`'s, or `None` (and `path` is remembered).
    pub(crate) fn first_with_same_name(&mut self, path: &str) -> Option<String> {
        match self.seen.entry(path.to_lowercase()) {
            std::collections::hash_map::Entry::Occupied(first) => Some(first.get().clone()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(path.to_owned());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differing_only_in_case_are_noticed() {
        let mut names = CaseFold::default();
        assert_eq!(names.first_with_same_name("docs/Report.pdf"), None);
        assert_eq!(names.first_with_same_name("docs/report.pdf"), Some("docs/Report.pdf".to_owned()));
        assert_eq!(names.first_with_same_name("DOCS/REPORT.PDF"), Some("docs/Report.pdf".to_owned()));
        assert_eq!(names.first_with_same_name("docs/report.pdf.bak"), None);
        assert_eq!(names.first_with_same_name("Ünïcode/Ä"), None);
        assert_eq!(names.first_with_same_name("ünïcode/ä"), Some("Ünïcode/Ä".to_owned()));
    }

    #[test]
    fn maps_relative_paths_below_the_root() {
        let root = Path::new("/data/pulled");
        assert_eq!(local_path(root, "a/b.txt").expect("ok"), root.join("a").join("b.txt"));
        assert_eq!(local_path(root, ".hidden").expect("ok"), root.join(".hidden"));
    }

    #[test]
    fn refuses_escaping_absolute_and_backslash_names() {
        let root = Path::new("/data/pulled");
        for bad in [
            "..",
            "../x",
            "a/../../etc/passwd",
            "a/./b",
            "/etc/passwd",
            "\\\\server\\share",
            "a\\..\\..\\b",
            "..\\x",
            "a//b",
            "a/",
            "",
            "nul\0byte",
            "con.txt",
        ] {
            assert!(local_path(root, bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn creates_parents_and_reports_what_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let target = local_path(root, "x/y/z.txt").expect("path");
        assert_eq!(prepare(root, &target).expect("io"), Ok(Existing::Missing));
        assert!(root.join("x/y").is_dir());
        fs::write(&target, b"1234").expect("write");
        assert_eq!(prepare(root, &target).expect("io"), Ok(Existing::File(4)));
        fs::create_dir(root.join("x/y/dir")).expect("mkdir");
        assert!(prepare(root, &root.join("x/y/dir")).expect("io").is_err());
        fs::write(root.join("file"), b"").expect("write");
        assert!(prepare(root, &root.join("file/below.txt")).expect("io").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn never_follows_symlinks() {
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        let root = dir.path();
        symlink(outside.path(), root.join("link")).expect("symlink");
        let target = local_path(root, "link/evil.txt").expect("path");
        let why = prepare(root, &target).expect("io").expect_err("must refuse");
        assert!(why.contains("symbolic link"), "{why}");
        symlink(outside.path().join("f"), root.join("f")).expect("symlink");
        assert!(prepare(root, &root.join("f")).expect("io").is_err());
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }
}
