//! Certificate fingerprints: SHA-256 of the end-entity certificate's DER. A self-hosted server usually has a
//! self-signed certificate, so instead of a CA the client pins this value on first login (after the user
//! compared it with what the server printed at start-up). People copy it between terminals, so parsing is
//! lenient about the form (`AB:CD:..`, plain hex, `sha256:` prefix, any case) but strict about the length.

use crate::error::{Error, ErrorKind};

/// SHA-256 of a certificate's DER encoding.
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    cloudsync_crypto::sha256(der)
}

/// Upper-case hex pairs separated by `:` (`AB:CD:...`), the form servers and browsers show.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Parses a fingerprint as printed by [`format_fingerprint`], or as 64 plain hex digits, optionally with a
/// `sha256:` prefix; case-insensitive, surrounding whitespace ignored.
///
/// # Errors
/// [`ErrorKind::BadRequest`] when the text is not 32 bytes of hex in one of those forms.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], Error> {
    let bad = || {
        Error::new(
            ErrorKind::BadRequest,
            "a certificate fingerprint is a SHA-256 in hex: 64 hex digits, optionally as pairs separated by ':' \
             (AB:CD:...) and prefixed with 'sha256:'",
        )
    };
    let t = text.trim();
    let t = match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
        _ => t,
    };
    let digits: String = if t.contains(':') {
        let pairs: Vec<&str> = t.split(':').collect();
        if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        pairs.concat()
    } else {
        t.to_owned()
    };
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out).map_err(|_| bad())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_accepted_form() {
        let fp: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(5));
        let shown = format_fingerprint(&fp);
        assert_eq!(shown.len(), 95);
        assert_eq!(shown, shown.to_uppercase());
        assert!(shown.starts_with("05:2A:"), "{shown}");
        let plain = hex::encode(fp);
        for form in [
            shown.clone(),
            shown.to_lowercase(),
            plain.clone(),
            plain.to_uppercase(),
            format!("sha256:{plain}"),
            format!("SHA256:{shown}"),
            format!("  Sha256:{shown}\n"),
        ] {
            assert_eq!(parse_fingerprint(&form).expect(&form), fp, "{form}");
        }
    }

    #[test]
    fn refuses_malformed_fingerprints() {
        let plain = "ab".repeat(32);
        for bad in [
            String::new(),
            "sha256:".to_owned(),
            "ab".repeat(31),
            "ab".repeat(33),
            format!("{}zz", "ab".repeat(31)),
            format!("md5:{plain}"),
            format!("{plain}:"),
            "A:BC".repeat(16),
            format!("ABC{}", ":AB".repeat(31)),
            "ab:".repeat(31) + "ab:ab",
        ] {
            let e = parse_fingerprint(&bad).expect_err(&bad);
            assert_eq!(e.kind(), ErrorKind::BadRequest);
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        assert_eq!(
            hex::encode(certificate_fingerprint(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
