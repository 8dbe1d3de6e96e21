//! Time-based one-time passwords: TOTP (RFC 6238) over HOTP (RFC 4226), as authenticator apps use them.
//!
//! Enrolment hands the user a random 160-bit secret as an `otpauth://` URI (shown as a QR code) and in
//! Base32; a login then carries the 6-digit code of the current 30-second step. [`verify`] accepts the step
//! before and after the current one (clock skew, and a code typed just as it rolled over) and only steps later
//! than the last one accepted, so a code, once used, can never be used again (the caller stores the step it
//! returns). Every candidate is computed and compared in constant time, so timing does not tell which step
//! (or how many digits) matched.

use ring::hmac;
use zeroize::Zeroizing;

use crate::ct_eq;

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Bytes of a new secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
/// Steps accepted on either side of the current one.
pub const SKEW_STEPS: u64 = 1;

/// The HMAC behind the codes. Authenticator apps assume SHA-1 unless told otherwise; the others exist for the
/// RFC's test vectors and for apps that support them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1 (the default of every authenticator app).
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl Algorithm {
    fn ring(self) -> hmac::Algorithm {
        match self {
            // SHA-1 is only as strong as HMAC-SHA-1 needs to be here: HOTP's security rests on HMAC's PRF
            // property, which collisions do not break.
            Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => hmac::HMAC_SHA256,
            Algorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

/// A new random secret.
pub fn generate_secret() -> Zeroizing<[u8; SECRET_LEN]> {
    Zeroizing::new(crate::random_bytes::<SECRET_LEN>())
}

/// The HOTP value (RFC 4226 section 5.3, dynamic truncation) of `counter`, as a number below `10^digits`.
pub fn hotp(alg: Algorithm, secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(alg.ring(), secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([mac[offset] & 0x7f, mac[offset + 1], mac[offset + 2], mac[offset + 3]]);
    bin % 10u32.pow(digits.min(9))
}

/// The step of a Unix time.
pub fn step_of(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// The code (zero-padded to `digits`) of the step holding `unix_secs`.
pub fn code_at(alg: Algorithm, secret: &[u8], unix_secs: u64, digits: u32) -> String {
    let value = hotp(alg, secret, step_of(unix_secs), digits);
    format!("{value:0width$}", width = digits as usize)
}

/// Checks a 6-digit SHA-1 code against the steps around `unix_secs` (±[`SKEW_STEPS`]), accepting only steps
/// after `last_step` (the last step accepted for this secret). Returns the step that matched: store it as the
/// new `last_step`. `None` for a wrong, malformed, stale or replayed code.
pub fn verify(secret: &[u8], code: &str, unix_secs: u64, last_step: Option<u64>) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(unix_secs);
    let mut matched = None;
    for step in now.saturating_sub(SKEW_STEPS)..=now.saturating_add(SKEW_STEPS) {
        let candidate = format!("{:06}", hotp(Algorithm::Sha1, secret, step, DIGITS));
        let fresh = last_step.is_none_or(|last| step > last);
        // Every candidate is compared, match or not, so timing says nothing about which one matched.
        if ct_eq(candidate.as_bytes(), code.as_bytes()) && fresh && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// RFC 4648 Base32 without padding (what `otpauth://` URIs and authenticator apps use).
pub fn base32_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes RFC 4648 Base32 (case-insensitive; spaces, dashes and `=` padding ignored). `None` on any other
/// character.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            b' ' | b'-' | b'=' => continue,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The `otpauth://totp/` URI authenticator apps scan: label `issuer:account`, SHA-1, 6 digits, 30 s.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> Zeroizing<String> {
    let (issuer_enc, account_enc) = (percent_encode(issuer), percent_encode(account));
    Zeroizing::new(format!(
        "otpauth://totp/{issuer_enc}:{account_enc}?secret={}&issuer={issuer_enc}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32_encode(secret)
    ))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the seed is the ASCII digits repeated to the hash's length.
    fn seed(alg: Algorithm) -> Vec<u8> {
        let len = match alg {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        };
        b"1234567890".iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn the_18_rfc_6238_appendix_b_vectors() {
        let vectors: [(u64, &str, Algorithm); 18] = [
            (59, "94287082", Algorithm::Sha1),
            (59, "46119246", Algorithm::Sha256),
            (59, "90693936", Algorithm::Sha512),
            (1_111_111_109, "07081804", Algorithm::Sha1),
            (1_111_111_109, "68084774", Algorithm::Sha256),
            (1_111_111_109, "25091201", Algorithm::Sha512),
            (1_111_111_111, "14050471", Algorithm::Sha1),
            (1_111_111_111, "67062674", Algorithm::Sha256),
            (1_111_111_111, "99943326", Algorithm::Sha512),
            (1_234_567_890, "89005924", Algorithm::Sha1),
            (1_234_567_890, "91819424", Algorithm::Sha256),
            (1_234_567_890, "93441116", Algorithm::Sha512),
            (2_000_000_000, "69279037", Algorithm::Sha1),
            (2_000_000_000, "90698825", Algorithm::Sha256),
            (2_000_000_000, "38618901", Algorithm::Sha512),
            (20_000_000_000, "65353130", Algorithm::Sha1),
            (20_000_000_000, "77737706", Algorithm::Sha256),
            (20_000_000_000, "47863826", Algorithm::Sha512),
        ];
        for (time, expected, alg) in vectors {
            assert_eq!(code_at(alg, &seed(alg), time, 8), expected, "T={time} {alg:?}");
        }
    }

    #[test]
    fn rfc_4226_appendix_d_hotp_values() {
        let expected = [755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871, 520_489];
        for (counter, want) in (0u64..).zip(expected) {
            assert_eq!(hotp(Algorithm::Sha1, b"12345678901234567890", counter, 6), want, "counter {counter}");
        }
    }

    #[test]
    fn verify_accepts_one_step_of_skew_and_each_step_once() {
        let secret = generate_secret();
        let now = 1_700_000_015;
        let code = |t: u64| code_at(Algorithm::Sha1, secret.as_slice(), t, DIGITS);
        let step = step_of(now);
        assert_eq!(verify(secret.as_slice(), &code(now), now, None), Some(step));
        assert_eq!(verify(secret.as_slice(), &code(now - 30), now, None), Some(step - 1), "previous step");
        assert_eq!(verify(secret.as_slice(), &code(now + 30), now, None), Some(step + 1), "next step");
        assert_eq!(verify(secret.as_slice(), &code(now - 60), now, None), None, "two steps old");
        assert_eq!(verify(secret.as_slice(), &code(now + 60), now, None), None, "two steps ahead");
        assert_eq!(verify(secret.as_slice(), &code(now), now, Some(step)), None, "a replay is refused");
        assert_eq!(verify(secret.as_slice(), &code(now - 30), now, Some(step)), None, "an older code too");
        assert_eq!(verify(secret.as_slice(), &code(now + 30), now, Some(step)), Some(step + 1));
        assert_eq!(verify(secret.as_slice(), &format!(" {} ", code(now)), now, None), Some(step), "spaces trimmed");
        for bad in ["", "12345", "1234567", "12a456", "１２３４５６"] {
            assert_eq!(verify(secret.as_slice(), bad, now, None), None, "{bad:?}");
        }
        let other = generate_secret();
        assert_eq!(
            verify(other.as_slice(), &code(now), now, None).is_some(),
            code(now) == code_at(Algorithm::Sha1, other.as_slice(), now, DIGITS)
        );
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(base32_decode(encoded).expect("decode"), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw 6ytb-oi======").expect("lenient"), b"foobar");
        assert_eq!(base32_decode("MZXW1"), None, "1 is not Base32");
        let secret = generate_secret();
        assert_eq!(base32_decode(&base32_encode(secret.as_slice())).expect("decode"), secret.as_slice());
    }

    #[test]
    fn otpauth_uri_form() {
        let uri = otpauth_uri("CloudSync (example.com)", "a+b@example.com", b"12345678901234567890");
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/CloudSync%20%28example.com%29:a%2Bb%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=CloudSync%20%28example.com%29&algorithm=SHA1&digits=6&period=30"
        );
    }
}
