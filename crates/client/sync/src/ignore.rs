//! What sync leaves alone: the patterns in `.cloudsyncignore` at the top of the synced folder (gitignore
//! syntax: `*.log`, `build/`, `!keep.log`, `/only-at-top`), plus the temporary and partial files editors,
//! browsers and operating systems leave behind, which are never worth syncing and often vanish mid-read.
//! The same rules apply to both sides: an ignored path is neither uploaded nor downloaded nor deleted.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::SyncError;

/// The rules file, at the top of the synced folder. It is synced itself, so every device shares the rules.
pub const IGNORE_FILE: &str = ".cloudsyncignore";

/// Skipped by default: editor swap/backup/lock files, partial downloads, OS metadata files.
const DEFAULT_PATTERNS: &[&str] = &[
    // vim swap files and its write test file
    ".*.swp",
    ".*.swo",
    ".*.swx",
    "4913",
    // emacs backups, auto-saves and locks
    "*~",
    "\\#*#",
    ".#*",
    // LibreOffice and Microsoft Office locks / owner files
    ".~lock.*#",
    "~$*",
    // partial downloads of browsers and other sync tools, and our own
    "*.part",
    "*.crdownload",
    "*.partial",
    ".cloudsync-*.part",
    // OS metadata
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    ".Trash-*/",
];

/// The compiled rules of one folder.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    defaults: Gitignore,
    user: Gitignore,
}

impl Rules {
    /// Only the built-in defaults.
    #[cfg(test)]
    pub(crate) fn defaults_only() -> Self {
        Self { defaults: defaults(Path::new("/")), user: Gitignore::empty() }
    }

    /// The defaults plus `root/.cloudsyncignore` if there is one.
    ///
    /// # Errors
    /// `InvalidLocal` with the line at fault when the file has a malformed pattern, so a typo never
    /// silently uploads what the user meant to exclude.
    pub(crate) fn load(root: &Path) -> Result<Self, SyncError> {
        let file = root.join(IGNORE_FILE);
        let user = match std::fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => {
                let mut b = GitignoreBuilder::new(root);
                if let Some(e) = b.add(&file) {
                    return Err(SyncError::InvalidLocal(format!("{}: {e}; fix or remove that line", file.display())));
                }
                b.build()
                    .map_err(|e| SyncError::InvalidLocal(format!("{}: {e}; fix or remove that line", file.display())))?
            }
            _ => Gitignore::empty(),
        };
        Ok(Self { defaults: defaults(root), user })
    }

    /// Whether the relative path `rel` ('/'-separated) is ignored, looking at each of its parent folders
    /// too (an ignored folder ignores everything in it).
    pub(crate) fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel == IGNORE_FILE {
            return false;
        }
        [&self.defaults, &self.user].iter().any(|g| g.matched_path_or_any_parents(rel, is_dir).is_ignore())
    }
}

fn defaults(root: &Path) -> Gitignore {
    let mut b = GitignoreBuilder::new(root);
    for p in DEFAULT_PATTERNS {
        // The defaults are constants covered by tests; a bad one would be a bug caught there.
        let _ = b.add_line(None, p);
    }
    b.build().unwrap_or_else(|_| Gitignore::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_skip_editor_and_partial_files() {
        let r = Rules::defaults_only();
        for name in [
            ".notes.txt.swp",
            "a/b/.x.swx",
            "draft.txt~",
            "#draft.txt#",
            ".#draft.txt",
            ".~lock.report.odt#",
            "~$report.docx",
            "movie.mkv.part",
            "setup.exe.crdownload",
            ".cloudsync-0a1b.part",
            "photos/.DS_Store",
            "Thumbs.db",
            ".Trash-1000/x",
        ] {
            assert!(r.is_ignored(name, false), "{name} should be ignored");
        }
        for name in ["notes.txt", "report.docx", "part", "a/swp", "tilde~x"] {
            assert!(!r.is_ignored(name, false), "{name} should not be ignored");
        }
    }

    #[test]
    fn user_rules_use_gitignore_syntax() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(IGNORE_FILE), "# comment\n*.log\n!keep.log\nbuild/\n/top.txt\n").expect("write");
        let r = Rules::load(dir.path()).expect("rules");
        assert!(r.is_ignored("x.log", false));
        assert!(r.is_ignored("deep/down/x.log", false));
        assert!(!r.is_ignored("keep.log", false));
        assert!(r.is_ignored("build", true));
        assert!(r.is_ignored("build/out/app.bin", false));
        assert!(r.is_ignored("top.txt", false));
        assert!(!r.is_ignored("sub/top.txt", false));
        assert!(!r.is_ignored("src/main.rs", false));
        assert!(!r.is_ignored(IGNORE_FILE, false));
        assert!(r.is_ignored("x.swp.part", false), "defaults still apply");
    }

    #[test]
    fn a_missing_rules_file_means_defaults_only() {
        let dir = tempfile::tempdir().expect("dir");
        let r = Rules::load(dir.path()).expect("rules");
        assert!(!r.is_ignored("a.log", false));
        assert!(r.is_ignored("a~", false));
    }
}
