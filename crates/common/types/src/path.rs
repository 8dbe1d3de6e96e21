//! Workspace paths. A path inside a workspace is relative, `/`-separated and normalised; it is metadata only —
//! the server never uses it as a storage path, and the client validates every path it receives before it
//! touches the local file system. The same rules run on both sides so both give the same answer.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Maximum bytes in a whole path.
pub const MAX_PATH_BYTES: usize = 4096;
/// Maximum bytes in one path component (what common file systems allow).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Maximum number of components.
pub const MAX_DEPTH: usize = 64;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is absolute; give it relative to the workspace root (no leading '/')")]
    Absolute,
    #[error("the path contains '..' or '.'; give the path without relative components")]
    DotComponent,
    #[error("the path contains a NUL or control character")]
    ControlChar,
    #[error("the path contains a backslash; use '/' to separate folders")]
    Backslash,
    #[error("the path has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("a path component is longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    #[error("the path is nested deeper than {MAX_DEPTH} folders")]
    TooDeep,
    #[error("the path is empty; name a file")]
    Empty,
    #[error("the name {0:?} is reserved on Windows and cannot be synced")]
    Reserved(String),
}

/// A validated, normalised workspace path (`folder/sub/file.txt`). The empty path is the workspace root and is
/// only valid where a prefix is expected ([`WsPath::root`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WsPath(String);

const WINDOWS_RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

impl WsPath {
    /// The workspace root (an empty prefix).
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Validates a file path: non-empty and every rule in [`PathError`].
    ///
    /// # Errors
    /// The first rule the path breaks.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        Self::parse_prefix(s)
    }

    /// Validates a path that may be empty (the root), as used for listing prefixes. A single trailing `/` is
    /// accepted and dropped.
    ///
    /// # Errors
    /// The first rule the path breaks.
    pub fn parse_prefix(s: &str) -> Result<Self, PathError> {
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let s = s.strip_suffix('/').unwrap_or(s);
        if s.is_empty() {
            return Ok(Self::root());
        }
        let mut depth = 0;
        for comp in s.split('/') {
            depth += 1;
            validate_component(comp)?;
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        Ok(Self(s.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The last component (the file name), or "" for the root.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// `self/child`, validated.
    ///
    /// # Errors
    /// When the result breaks a rule.
    pub fn join(&self, child: &str) -> Result<Self, PathError> {
        if self.is_root() { Self::parse(child) } else { Self::parse(&format!("{}/{}", self.0, child)) }
    }

    /// True when `self` is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &WsPath) -> bool {
        prefix.is_root()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0) && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }

    /// The path relative to `prefix` (which it must start with), or None.
    pub fn strip_prefix(&self, prefix: &WsPath) -> Option<&str> {
        if prefix.is_root() {
            return Some(&self.0);
        }
        if self.0 == prefix.0 {
            return Some("");
        }
        self.0.strip_prefix(&prefix.0).and_then(|rest| rest.strip_prefix('/'))
    }
}

/// Validates one path component (a file or folder name).
///
/// # Errors
/// The rule the component breaks.
pub fn validate_component(comp: &str) -> Result<(), PathError> {
    if comp.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if comp == "." || comp == ".." {
        return Err(PathError::DotComponent);
    }
    if comp.len() > MAX_COMPONENT_BYTES {
        return Err(PathError::ComponentTooLong);
    }
    if comp.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlChar);
    }
    if comp.contains('\\') {
        return Err(PathError::Backslash);
    }
    let stem = comp.split('.').next().unwrap_or(comp).trim_end();
    if WINDOWS_RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return Err(PathError::Reserved(comp.to_owned()));
    }
    Ok(())
}

impl fmt::Display for WsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WsPath({:?})", self.0)
    }
}

impl Serialize for WsPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        WsPath::parse_prefix(&s).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for WsPath {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("Relative '/'-separated path inside the workspace; no '..', NUL or leading '/'"))
            .max_length(Some(MAX_PATH_BYTES))
            .into()
    }
}

impl utoipa::ToSchema for WsPath {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "a/b.txt", "Photos/2026/IMG 0001.JPG", "ünïcødé/файл", ".hidden/x"] {
            assert_eq!(WsPath::parse(ok).expect(ok).as_str(), ok);
        }
        assert_eq!(WsPath::parse_prefix("docs/").expect("prefix").as_str(), "docs");
        assert!(WsPath::parse_prefix("").expect("root").is_root());
    }

    #[test]
    fn refuses_hostile_paths() {
        let cases: [(&str, PathError); 11] = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotComponent),
            ("a/../../x", PathError::DotComponent),
            ("a/./b", PathError::DotComponent),
            ("a\0b", PathError::ControlChar),
            ("a\nb", PathError::ControlChar),
            ("a\\..\\b", PathError::Backslash),
            ("a//b", PathError::EmptyComponent),
            ("con.txt", PathError::Reserved("con.txt".into())),
            ("x/LPT1", PathError::Reserved("LPT1".into())),
        ];
        for (input, want) in cases {
            assert_eq!(WsPath::parse(input).expect_err(input), want, "{input:?}");
        }
        assert_eq!(WsPath::parse(&"a".repeat(256)).expect_err("long"), PathError::ComponentTooLong);
        assert_eq!(WsPath::parse(&"a/".repeat(2100)).expect_err("long"), PathError::TooLong);
        assert_eq!(WsPath::parse(&vec!["a"; 65].join("/")).expect_err("deep"), PathError::TooDeep);
    }

    #[test]
    fn prefix_matching_respects_component_boundaries() {
        let p = WsPath::parse("docs/a.txt").expect("p");
        assert!(p.starts_with(&WsPath::parse("docs").expect("d")));
        assert!(!p.starts_with(&WsPath::parse("doc").expect("d")));
        assert!(p.starts_with(&WsPath::root()));
        assert_eq!(p.strip_prefix(&WsPath::parse("docs").expect("d")), Some("a.txt"));
        assert_eq!(p.strip_prefix(&WsPath::parse("doc").expect("d")), None);
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<WsPath>("\"../x\"").is_err());
        assert_eq!(serde_json::from_str::<WsPath>("\"a/b\"").expect("ok").as_str(), "a/b");
    }
}
