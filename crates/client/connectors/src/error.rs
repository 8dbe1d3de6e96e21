//! The connectors' error type: what went wrong, in words a user can act on, with [`Error::is_retryable`] for
//! the callers that back off.

/// A connector error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings or input; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// An unencrypted transport without `--allow-insecure`.
    #[error("{0}")]
    Insecure(String),
    /// A connection type this version cannot reach yet.
    #[error("{0}")]
    Unsupported(String),
    /// The remote refused or failed an operation.
    #[error("{what}: {message}")]
    Backend {
        /// What was being done.
        what: String,
        /// The remote's error, shortened.
        message: String,
        /// The OpenDAL error (boxed: it is large).
        #[source]
        source: Box<opendal::Error>,
    },
    /// A local file-system error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed (the remote was busy, slow or unreachable).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Backend { source, .. } => {
                source.is_temporary() || matches!(source.kind(), opendal::ErrorKind::RateLimited)
            }
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            Self::Invalid(_) | Self::Insecure(_) | Self::Unsupported(_) => false,
        }
    }

    /// Wraps an OpenDAL error with what was being done, in a shorter form than OpenDAL's own text.
    pub fn backend(what: impl Into<String>, source: opendal::Error) -> Self {
        let message = match source.kind() {
            opendal::ErrorKind::NotFound => "not found".to_owned(),
            opendal::ErrorKind::PermissionDenied => format!(
                "permission denied (check the user, key and the account's rights; `cloudsync connection add NAME \
                 ... --replace` changes what the connection signs in with): {}",
                short(&source)
            ),
            opendal::ErrorKind::RateLimited => "the remote asked us to slow down (rate limited)".to_owned(),
            opendal::ErrorKind::AlreadyExists => "it already exists".to_owned(),
            _ if host_key_changed(&source) => "the server's SSH host key is not the one pinned when this connection \
                was first used (in ~/.ssh/known_hosts): someone may be intercepting the connection. If the server \
                was reinstalled, check its new key with its administrator, then forget the old one with \
                `ssh-keygen -R '[HOST]:PORT'`"
                .to_owned(),
            // (Services whose errors OpenDAL does not map from a 401, such as WebDAV.)
            _ if status_of(&source) == Some(401) => {
                let said = short(&source);
                format!(
                    "the server refused the sign-in (401 Unauthorized): check the user name and password (a \
                     Dropbox, OneDrive or pCloud connection: sign in again); `cloudsync connection add NAME ... \
                     --replace` changes them{}{said}",
                    if said.trim().is_empty() { "" } else { ": " }
                )
            }
            _ => short(&source),
        };
        Self::Backend { what: what.into(), message, source: Box::new(source) }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}

/// The HTTP status of the answer an OpenDAL error was made of, if it names one (in its `response` context, the
/// answer's head; the message before it may be the answer's body, which says anything).
fn status_of(source: &opendal::Error) -> Option<u16> {
    let text = format!("{source:?}");
    // Its context is listed after the message (which may say anything), and before any source error.
    let message = source.message();
    let after = if message.is_empty() { 0 } else { text.find(message).map_or(0, |at| at + message.len()) };
    let context = &text[after..];
    let context = &context[context.find("\nContext:\n")?..];
    let context = context.find("\nSource:\n").map_or(context, |end| &context[..end]);
    let (_, rest) = context.rsplit_once("   response: Parts { status: ")?;
    rest.get(..3)?.parse().ok().filter(|_| rest.as_bytes().get(3).is_none_or(|b| !b.is_ascii_digit()))
}

fn host_key_changed(source: &opendal::Error) -> bool {
    let text = format!("{source:?}");
    text.contains("Host key verification failed") || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
}

/// The remote's own words, without OpenDAL's request dump: `CODE: message` from an S3-style error body, else
/// the first 300 characters.
fn short(source: &opendal::Error) -> String {
    let m = source.message();
    let field = |name: &str| {
        m.split_once(&format!("{name}: \"")).and_then(|(_, rest)| rest.split_once('"')).map(|(v, _)| v.to_owned())
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => m.chars().take(300).collect(),
    }
}

impl From<opendal::Error> for Error {
    fn from(source: opendal::Error) -> Self {
        Self::backend("setting up the connection", source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_sign_in_says_what_to_check() {
        let answer = "Parts { status: 401, version: HTTP/1.1, headers: {\"www-authenticate\": \"Basic\"} }";
        // The body (the message) may say anything, a status too.
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "status: 500").with_context("response", answer);
        let said = Error::backend("cannot list dav:", e).to_string();
        assert!(said.contains("401 Unauthorized") && said.contains("password") && said.contains("--replace"), "{said}");
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "").with_context("response", answer);
        assert!(Error::backend("x", e).to_string().ends_with("changes them"));
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "response: Parts { status: 401 }")
            .with_context("response", "Parts { status: 403, version: HTTP/1.1 }");
        assert!(!Error::backend("x", e).to_string().contains("sign-in"));
        let forged = "\nContext:\n   response: Parts { status: 401 }\nSource:\n";
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, forged)
            .with_context("response", "Parts { status: 403, version: HTTP/1.1 }");
        assert!(!Error::backend("x", e).to_string().contains("sign-in"), "a body that looks like a context");
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "gone")
            .with_context("response", "Parts { status: 4010 }");
        assert_eq!(Error::backend("x", e).to_string(), "x: gone");
        let e = opendal::Error::new(opendal::ErrorKind::PermissionDenied, "SignatureDoesNotMatch");
        assert!(Error::backend("x", e).to_string().contains("--replace"));
    }
}
