//! Turning failures into [`Error`]s. The server already writes actionable messages, so for API errors we
//! show its message verbatim (minus control characters: a hostile server must not be able to drive the
//! user's terminal) and classify by its machine-readable code, falling back to the HTTP status for answers
//! from proxies. Transport and TLS failures get messages written here that name the server and the likely
//! fix; a pin mismatch is recognised by the tagged rustls error our verifier fails the handshake with.

use std::fmt;
use std::time::Duration;

use cloudsync_types::{ApiErrorBody, ErrorCode};

use crate::error::{Error, ErrorKind};
/// The kind an API error code stands for.
fn kind_of_code(code: ErrorCode) -> ErrorKind {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidPath => ErrorKind::BadRequest,
        ErrorCode::Unauthenticated => ErrorKind::Unauthenticated,
        ErrorCode::MfaRequired => ErrorKind::MfaRequired,
        ErrorCode::Forbidden | ErrorCode::ReauthenticationRequired => ErrorKind::Forbidden,
        ErrorCode::NotFound => ErrorKind::NotFound,
        ErrorCode::Conflict | ErrorCode::MissingChunks => ErrorKind::Conflict,
        ErrorCode::RateLimited => ErrorKind::RateLimited,
        ErrorCode::PayloadTooLarge => ErrorKind::TooLarge,
        ErrorCode::NotSupported => ErrorKind::NotSupported,
        ErrorCode::Internal | ErrorCode::Unavailable => ErrorKind::Server,
    }
}

/// The kind and a generic message for a status that came without a CloudSync error body (typically from a
/// reverse proxy in front of the server).
fn fallback_for_status(status: u16) -> (ErrorKind, String) {
    match status {
        401 => (ErrorKind::Unauthenticated, "the server refused the credentials; log in again".to_owned()),
        403 => (ErrorKind::Forbidden, "the server refused the request (HTTP 403)".to_owned()),
        404 => (
            ErrorKind::NotFound,
            "the server answered 404 without a CloudSync error; check that the URL points at a CloudSync server"
                .to_owned(),
        ),
        409 | 412 => (ErrorKind::Conflict, format!("the request conflicts with the server's state (HTTP {status})")),
        413 => (
            ErrorKind::TooLarge,
            "the request was too large for the server or a proxy in front of it (HTTP 413)".to_owned(),
        ),
        429 => (ErrorKind::RateLimited, "too many requests (HTTP 429); wait and retry".to_owned()),
        405 | 501 => (
            ErrorKind::NotSupported,
            format!("the server does not support this request (HTTP {status}); it may run an older version"),
        ),
        502..=504 => (
            ErrorKind::Server,
            format!("the server or a proxy in front of it is unavailable (HTTP {status}); retry in a moment"),
        ),
        500..=599 => (ErrorKind::Server, format!("the server failed (HTTP {status}); see the server log")),
        _ => (ErrorKind::BadRequest, format!("the server refused the request (HTTP {status})")),
    }
}

/// Replaces control characters (terminal escape sequences, newlines) in text that came from the server.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Maps a non-2xx answer to an [`Error`]: by the body's `code` when the body is an [`ApiErrorBody`], else
/// by status. `retry_after` is the raw `Retry-After` header; only the delay-seconds form is understood.
pub(crate) fn from_http(status: u16, body: &[u8], retry_after: Option<&str>, header_request_id: Option<&str>) -> Error {
    let retry_after = retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    let (kind, message, code, request_id) = match serde_json::from_slice::<ApiErrorBody>(body) {
        Ok(b) => (kind_of_code(b.code), sanitize(&b.message), Some(b.code), Some(sanitize(&b.request_id))),
        Err(_) => {
            let (kind, message) = fallback_for_status(status);
            (kind, message, None, header_request_id.map(sanitize))
        }
    };
    Error {
        kind,
        message,
        status: Some(status),
        request_id,
        code,
        retry_after: if kind == ErrorKind::RateLimited || status == 503 { retry_after } else { None },
        source: None,
    }
}

/// A pinned certificate did not match.
pub(crate) fn pin_mismatch(presented: &str, pinned: Option<&[u8; 32]>) -> Error {
    let presented = match crate::fingerprint::parse_fingerprint(presented) {
        Ok(fp) => crate::fingerprint::format_fingerprint(&fp),
        Err(_) => sanitize(presented),
    };
    let pinned = pinned.map_or_else(|| "another fingerprint".to_owned(), crate::fingerprint::format_fingerprint);
    Error::new(
        ErrorKind::CertificateMismatch,
        format!(
            "the server's certificate fingerprint is {presented}, but {pinned} was pinned at first login; if the \
             server's certificate was legitimately replaced, log in again with --fingerprint {presented}, \
             otherwise someone may be intercepting the connection"
        ),
    )
}

/// A TLS failure talking to `base`.
pub(crate) fn tls(base: &str, err: &rustls::Error) -> Error {
    use rustls::{AlertDescription as A, Error as E};
    let message = match err {
        E::AlertReceived(A::ProtocolVersion | A::HandshakeFailure) | E::PeerIncompatible(_) => {
            format!(
                "could not establish TLS 1.3 with {base} ({err}); CloudSync requires TLS 1.3, so the server (or a \
             proxy in front of it) must support it"
            )
        }
        E::InvalidCertificate(_) => format!(
            "the certificate of {base} is not trusted ({err}); for a self-signed server log in with its \
             fingerprint, or give the file of the CA that signed it"
        ),
        _ => format!("TLS with {base} failed: {err}"),
    };
    Error::new(ErrorKind::Tls, message).with_source(err.clone())
}

/// The server could not be reached.
pub(crate) fn unreachable(base: &str, cause: &dyn fmt::Display) -> Error {
    Error::new(
        ErrorKind::Network,
        format!(
            "could not connect to {base}: {cause}; check that the server is running and that the address and \
             port are right"
        ),
    )
}

const PIN_MISMATCH_TAG: &str = crate::tls::PIN_MISMATCH_TAG;

/// Looks through an error's source chain for a rustls error. `io::Error::source` skips the error it wraps,
/// so io errors are opened with `get_ref`.
fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(r) = find_rustls(inner)
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// Maps a transport-level failure (anything before an HTTP status, or a broken body) to an [`Error`].
pub(crate) fn from_transport(err: reqwest::Error, base: &str, pinned: Option<&[u8; 32]>) -> Error {
    let rustls_err = find_rustls(&err).cloned();
    if let Some(rustls::Error::General(msg)) = &rustls_err
        && let Some(presented) = msg.strip_prefix(PIN_MISMATCH_TAG)
    {
        return pin_mismatch(presented, pinned).with_source(err);
    }
    if let Some(r) = rustls_err {
        return tls(base, &r).with_source(err);
    }
    let root = root_cause(&err);
    let e = if err.is_timeout() {
        Error::new(ErrorKind::Network, format!("{base} did not answer in time ({root}); retry later"))
    } else if err.is_connect() {
        unreachable(base, &root)
    } else if err.is_decode() {
        Error::new(ErrorKind::Decode, format!("the answer of {base} could not be read: {root}"))
    } else {
        Error::new(ErrorKind::Network, format!("the connection to {base} failed: {root}; retry later"))
    };
    e.with_source(err)
}

/// The innermost message of an error chain (the useful part, e.g. "Connection refused").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> Vec<u8> {
        format!(r#"{{"code":"{code}","message":"{message}","request_id":"req-1"}}"#).into_bytes()
    }

    #[test]
    fn maps_api_bodies_by_code() {
        let cases = [
            ("missing_chunks", 409, ErrorKind::Conflict, ErrorCode::MissingChunks),
            ("invalid_path", 400, ErrorKind::BadRequest, ErrorCode::InvalidPath),
            ("payload_too_large", 413, ErrorKind::TooLarge, ErrorCode::PayloadTooLarge),
            ("unauthenticated", 401, ErrorKind::Unauthenticated, ErrorCode::Unauthenticated),
            ("mfa_required", 401, ErrorKind::MfaRequired, ErrorCode::MfaRequired),
            ("reauthentication_required", 403, ErrorKind::Forbidden, ErrorCode::ReauthenticationRequired),
            ("forbidden", 403, ErrorKind::Forbidden, ErrorCode::Forbidden),
            ("not_found", 404, ErrorKind::NotFound, ErrorCode::NotFound),
            ("not_supported", 501, ErrorKind::NotSupported, ErrorCode::NotSupported),
            ("unavailable", 503, ErrorKind::Server, ErrorCode::Unavailable),
        ];
        for (code, status, kind, want_code) in cases {
            let e = from_http(status, &body(code, "do this"), None, None);
            assert_eq!(e.kind(), kind, "{code}");
            assert_eq!(e.code(), Some(want_code));
            assert_eq!(e.status(), Some(status));
            assert_eq!(e.request_id(), Some("req-1"));
            assert_eq!(e.message(), "do this");
        }
    }

    #[test]
    fn display_adds_request_id_only_for_server_errors() {
        let e = from_http(500, &body("internal", "something broke"), None, None);
        assert_eq!(e.to_string(), "something broke (request id req-1)");
        assert!(!e.is_retryable());
        let e = from_http(409, &body("conflict", "pull first"), None, None);
        assert_eq!(e.to_string(), "pull first");
    }

    #[test]
    fn rate_limit_reads_retry_after() {
        let e = from_http(429, &body("rate_limited", "slow down"), Some("17"), None);
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));
        assert!(e.is_retryable());
        let e = from_http(429, b"", Some("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn falls_back_to_status_without_a_body() {
        let e = from_http(502, b"<html>Bad Gateway</html>", None, Some("abc"));
        assert_eq!(e.kind(), ErrorKind::Server);
        assert!(e.is_retryable());
        assert_eq!(e.code(), None);
        assert_eq!(e.request_id(), Some("abc"));
        assert!(e.to_string().ends_with("(request id abc)"));
        assert_eq!(from_http(401, b"", None, None).kind(), ErrorKind::Unauthenticated);
        assert_eq!(from_http(413, b"nope", None, None).kind(), ErrorKind::TooLarge);
        assert_eq!(from_http(418, b"", None, None).kind(), ErrorKind::BadRequest);
        assert!(!from_http(500, b"", None, None).is_retryable());
    }

    #[test]
    fn server_text_cannot_carry_control_characters() {
        let e = from_http(400, &body("bad_request", "a\\u001b[31mred\\nline"), None, None);
        assert_eq!(e.message(), "a [31mred line");
    }

    #[test]
    fn pin_mismatch_names_both_fingerprints() {
        let e = pin_mismatch(&"ab".repeat(32), Some(&[0xcd; 32]));
        assert_eq!(e.kind(), ErrorKind::CertificateMismatch);
        let shown = format!("AB{}", ":AB".repeat(31));
        assert!(e.message().contains(&format!("fingerprint is {shown}")), "{e}");
        assert!(e.message().contains(&format!("--fingerprint {shown}")), "{e}");
        assert!(e.message().contains(&format!("CD{}", ":CD".repeat(31))), "{e}");
    }
}
