//! Keeping a local edit when a pull brings a different version. Pull has no record of what the local copy
//! was based on, so a local file that differs from the server's may hold work that exists nowhere else.
//! Instead of overwriting it, the existing file is renamed beside itself to
//! `NAME (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).EXT` (the time in UTC) before the download takes
//! its name, the way Dropbox and Seafile users expect; the user merges the two and deletes the copy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use time::OffsetDateTime;

/// Longest device name kept in a copy's name, in bytes.
const MAX_DEVICE_BYTES: usize = 48;
/// Longest extension kept apart from the name, in bytes; a longer "extension" is treated as part of it.
const MAX_EXTENSION_BYTES: usize = 32;
/// Longest file name written, in bytes (the common local file-system limit, and the workspace's).
const MAX_NAME_BYTES: usize = 255;
/// Numbered alternatives tried when the copy's name is taken.
const MAX_ALTERNATIVES: u32 = 1000;

/// `device` made safe to use inside a file name on any platform: no separators, reserved punctuation or
/// control characters, no leading or trailing dots or spaces, and not too long.
pub(crate) fn sanitize_device(device: &str) -> String {
    let replaced: String =
        device
            .chars()
            .map(|c| {
                if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                    '-'
                } else {
                    c
                }
            })
            .collect();
    let mut out = String::new();
    for c in replaced.trim_matches(|c: char| c == '.' || c.is_whitespace()).chars() {
        if out.len() + c.len_utf8() > MAX_DEVICE_BYTES {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    if out.is_empty() { "unknown device".to_owned() } else { out.to_owned() }
}

/// The name of the conflicted copy of `file_name`: `NAME (conflicted copy from DEVICE YYYY-MM-DD
/// HHMMSS).EXT`, with ` N` after the parenthesis when `n > 1`. `device` must already be sanitised. The
/// extension is what follows the last dot (a leading dot, as in `.bashrc`, starts no extension). The name
/// part is shortened when the result would be longer than a file name may be.
pub(crate) fn copy_name(file_name: &str, device: &str, when: OffsetDateTime, n: u32) -> String {
    let (stem, ext) = match file_name.rfind('.') {
        Some(i) if i > 0 && file_name.len() - i <= MAX_EXTENSION_BYTES => file_name.split_at(i),
        _ => (file_name, ""),
    };
    let counter = if n > 1 { format!(" {n}") } else { String::new() };
    let tag = format!(" (conflicted copy from {device} {}){counter}", stamp(when));
    let room = MAX_NAME_BYTES.saturating_sub(tag.len() + ext.len());
    let mut end = stem.len().min(room);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{tag}{ext}", &stem[..end])
}

/// `YYYY-MM-DD HHMMSS` of `when` (UTC), as names made by sync carry it.
pub(crate) fn stamp(when: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}{:02}{:02}",
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second()
    )
}

/// The first of `name(1)`, `name(2)`, … up to [`MAX_ALTERNATIVES`] at which nothing exists (a symlink counts
/// as something).
pub(crate) fn first_free(name: impl Fn(u32) -> PathBuf, what: &str) -> io::Result<PathBuf> {
    for n in 1..=MAX_ALTERNATIVES {
        let path = name(n);
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("every name for {what} is taken")))
}

/// `path` itself for `n` = 1, else `path` with ` N` after its name.
pub(crate) fn numbered(path: &Path, n: u32) -> PathBuf {
    if n == 1 {
        return path.to_path_buf();
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(" {n}"));
    path.with_file_name(name)
}

/// Renames whatever is at `target` to a free conflicted-copy name in the same folder and returns the new
/// path. Renaming never follows a symlink, so a link is moved as the link itself.
pub(crate) fn move_aside(target: &Path, device: &str, when: SystemTime) -> io::Result<PathBuf> {
    let dir = target.parent().ok_or_else(|| io::Error::other("the file has no parent folder"))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("the file name is not valid UTF-8"))?;
    let (device, when) = (sanitize_device(device), OffsetDateTime::from(when));
    let copy = first_free(|n| dir.join(copy_name(name, &device, when, n)), "a conflicted copy")?;
    fs::rename(target, &copy)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use cloudsync_types::path::validate_component;
    use time::macros::datetime;

    use super::*;

    const WHEN: OffsetDateTime = datetime!(2024-03-05 07:08:09 UTC);

    #[test]
    fn copy_names_keep_the_extension() {
        assert_eq!(
            copy_name("report.pdf", "laptop", WHEN, 1),
            "report (conflicted copy from laptop 2024-03-05 070809).pdf"
        );
        assert_eq!(
            copy_name("archive.tar.gz", "laptop", WHEN, 1),
            "archive.tar (conflicted copy from laptop 2024-03-05 070809).gz"
        );
        assert_eq!(copy_name("Makefile", "pc", WHEN, 1), "Makefile (conflicted copy from pc 2024-03-05 070809)");
        assert_eq!(copy_name(".bashrc", "pc", WHEN, 1), ".bashrc (conflicted copy from pc 2024-03-05 070809)");
        assert_eq!(copy_name("a.txt", "pc", WHEN, 3), "a (conflicted copy from pc 2024-03-05 070809) 3.txt");
        let long = format!("{}.txt", "é".repeat(200));
        let name = copy_name(&long, "pc", WHEN, 12);
        assert!(name.len() <= MAX_NAME_BYTES && name.ends_with(") 12.txt"), "{name}");
        validate_component(&name).expect("valid");
    }

    #[test]
    fn device_names_are_made_safe() {
        assert_eq!(sanitize_device("Alice's MacBook Pro"), "Alice's MacBook Pro");
        assert_eq!(sanitize_device("host/name:with\\bad*chars?\n"), "host-name-with-bad-chars--");
        assert_eq!(sanitize_device(" ..laptop.. "), "laptop");
        assert_eq!(sanitize_device(""), "unknown device");
        assert_eq!(sanitize_device("..."), "unknown device");
        assert!(sanitize_device(&"x".repeat(300)).len() <= MAX_DEVICE_BYTES);
        for device in ["a/b", "..", "con", "\u{0}", "x\\y"] {
            let name = copy_name("notes.txt", &sanitize_device(device), WHEN, 1);
            validate_component(&name).expect("valid");
        }
    }

    #[test]
    fn moves_the_existing_file_to_a_free_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("notes.txt");
        let when = SystemTime::from(WHEN);
        fs::write(&target, b"first local edit").expect("write");
        let first = move_aside(&target, "my laptop", when).expect("move");
        assert_eq!(
            first.file_name().and_then(|n| n.to_str()),
            Some("notes (conflicted copy from my laptop 2024-03-05 070809).txt")
        );
        assert!(!target.exists());
        fs::write(&target, b"second local edit").expect("write");
        let second = move_aside(&target, "my laptop", when).expect("move");
        assert_eq!(
            second.file_name().and_then(|n| n.to_str()),
            Some("notes (conflicted copy from my laptop 2024-03-05 070809) 2.txt")
        );
        assert_eq!(fs::read(&first).expect("read"), b"first local edit");
        assert_eq!(fs::read(&second).expect("read"), b"second local edit");
    }

    #[test]
    fn a_taken_name_gets_the_next_number_and_a_dangling_link_counts_as_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.pdf");
        assert_eq!(first_free(|n| numbered(&path, n), "a test file").expect("free"), path);
        fs::write(&path, b"one").expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("report.pdf 2")).expect("link");
        #[cfg(not(unix))]
        fs::write(dir.path().join("report.pdf 2"), b"two").expect("write");
        assert_eq!(first_free(|n| numbered(&path, n), "a test file").expect("free"), dir.path().join("report.pdf 3"));
    }
}
