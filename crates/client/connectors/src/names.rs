//! Remote names are untrusted: a server can list `../../.bashrc`, `C:\x`, a name with a NUL or an escape
//! sequence. Every name a remote lists is checked here before it is joined to a local folder; a name that
//! fails is reported and skipped, never "cleaned" into something else (two hostile names could clean into the
//! same local file).

use std::fmt;
use std::path::PathBuf;

/// Longest accepted relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (the usual file-system limit).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a remote name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    /// Empty, `.` or `..` component, or an empty name.
    Traversal,
    /// Starts with `/` or a drive letter.
    Absolute,
    /// Contains a backslash (a path separator on Windows).
    Backslash,
    /// Contains NUL or another control character.
    Control,
    /// A name Windows reserves (`CON`, `NUL`, `COM1`, …) or one ending in a dot or space.
    Reserved,
    /// Longer than the limits above.
    TooLong,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Traversal => "it is empty or has a `.` or `..` component",
            Self::Absolute => "it is an absolute path",
            Self::Backslash => "it contains a backslash",
            Self::Control => "it contains a NUL or control character",
            Self::Reserved => "it is a name Windows reserves (or ends in a dot or space)",
            Self::TooLong => "it is too long",
        })
    }
}

const RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Checks one `/`-separated relative name (no leading or trailing slash) and returns it as a relative local
/// path.
///
/// # Errors
/// The reason the name cannot be written locally.
pub fn local_relative(name: &str) -> Result<PathBuf, Unsafe> {
    if name.len() > MAX_PATH_BYTES {
        return Err(Unsafe::TooLong);
    }
    if name.starts_with('/') {
        return Err(Unsafe::Absolute);
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(Unsafe::Absolute);
    }
    if name.contains('\\') {
        return Err(Unsafe::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(Unsafe::Control);
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(Unsafe::Traversal);
        }
        if part.len() > MAX_COMPONENT_BYTES {
            return Err(Unsafe::TooLong);
        }
        if part.contains(':') || part.ends_with('.') || part.ends_with(' ') {
            return Err(Unsafe::Reserved);
        }
        let stem = part.split('.').next().unwrap_or(part);
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem.trim_end())) {
            return Err(Unsafe::Reserved);
        }
        out.push(part);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused_and_plain_ones_kept() {
        for (name, why) in [
            ("../x", Unsafe::Traversal),
            ("a/../../x", Unsafe::Traversal),
            ("a//b", Unsafe::Traversal),
            ("./a", Unsafe::Traversal),
            ("", Unsafe::Traversal),
            ("/etc/passwd", Unsafe::Absolute),
            ("C:/Windows", Unsafe::Absolute),
            ("a\\..\\b", Unsafe::Backslash),
            ("a\0b", Unsafe::Control),
            ("bad\x1b[31m", Unsafe::Control),
            ("new\nline", Unsafe::Control),
            ("CON", Unsafe::Reserved),
            ("dir/nul.txt", Unsafe::Reserved),
            ("Com1.log", Unsafe::Reserved),
            ("trailing.", Unsafe::Reserved),
            ("trailing ", Unsafe::Reserved),
            ("stream:ads", Unsafe::Reserved),
        ] {
            assert_eq!(local_relative(name), Err(why), "{name:?}");
        }
        assert_eq!(local_relative(&"a".repeat(256)), Err(Unsafe::TooLong));
        assert_eq!(local_relative(&"a/".repeat(3000)), Err(Unsafe::TooLong));
        assert_eq!(local_relative("docs/Report 2026.pdf"), Ok(PathBuf::from("docs").join("Report 2026.pdf")));
        assert_eq!(local_relative(".hidden/conf.d/x"), Ok(PathBuf::from(".hidden/conf.d/x")));
        assert_eq!(local_relative("CONSOLE.txt"), Ok(PathBuf::from("CONSOLE.txt")));
        assert_eq!(local_relative("наш файл.txt"), Ok(PathBuf::from("наш файл.txt")));
    }
}
