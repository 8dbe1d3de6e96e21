//! Password hashing with Argon2id.
//!
//! Parameters follow the OWASP Password Storage Cheat Sheet minimum for
//! Argon2id (m = 19 MiB, t = 2, p = 1): memory-hard enough to make GPU
//! cracking of a leaked database expensive while keeping a login well under
//! a tenth of a second on a server core. Hashes are stored as PHC strings,
//! which carry their own parameters and salt, so the cost can be raised later
//! without breaking existing accounts.
//!
//! Login flows must call [`dummy_verify`] when the account does not exist,
//! so "unknown user" and "wrong password" take the same time and usernames
//! cannot be enumerated by timing.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Params, Version};

use crate::CryptoError;
use crate::random::random_bytes;

/// Longest accepted password, in bytes. Bounds the work an attacker can
/// force per request; far above any real passphrase.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Argon2 memory cost in KiB (19 MiB).
const M_COST_KIB: u32 = 19_456;
/// Argon2 iterations.
const T_COST: u32 = 2;
/// Argon2 lanes.
const P_COST: u32 = 1;
/// Salt length in bytes (the PHC recommendation).
const SALT_LEN: usize = 16;

/// A valid hash with exactly the parameters above (of a random, discarded
/// password), used by [`dummy_verify`]. A test checks that its parameters
/// track the constants above.
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$p5VNiigAjA1Fo3SuwMAbgw$nrr/KthWBiprmzX+imSGOYX6uh1b8Bws9sZOGdTNoFM";

fn argon2() -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).map_err(|e| CryptoError::PasswordHash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with a fresh random salt and returns a PHC string such
/// as `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
///
/// # Panics
///
/// Only if the OS random number generator fails.
pub fn hash(password: &str) -> Result<String, CryptoError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(CryptoError::PasswordTooLong);
    }
    let salt =
        SaltString::encode_b64(&random_bytes::<SALT_LEN>()).map_err(|e| CryptoError::PasswordHash(e.to_string()))?;
    let phc =
        argon2()?.hash_password(password.as_bytes(), &salt).map_err(|e| CryptoError::PasswordHash(e.to_string()))?;
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string produced by [`hash`].
///
/// Returns `false` for a wrong password, an over-long password, a malformed
/// hash, or a hash that is not Argon2id (no silent downgrade to weaker
/// variants). The comparison of the final digests is constant time.
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != ARGON2ID_IDENT {
        return false;
    }
    // Parameters, salt and version come from the PHC string itself.
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Burns the same time as [`verify`] against a real hash. Call it when the
/// requested account does not exist, then report the same error as for a
/// wrong password.
pub fn dummy_verify(password: &str) {
    let _ = std::hint::black_box(verify(password, DUMMY_PHC));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_is_valid_and_uses_current_params() {
        let parsed = PasswordHash::new(DUMMY_PHC).unwrap();
        assert_eq!(parsed.algorithm, ARGON2ID_IDENT);
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(params.m_cost(), M_COST_KIB);
        assert_eq!(params.t_cost(), T_COST);
        assert_eq!(params.p_cost(), P_COST);
        assert_eq!(parsed.version, Some(u32::from(Version::V0x13)));
        assert_eq!(parsed.salt.map(|s| s.len()), Some(SaltString::encode_b64(&[0; SALT_LEN]).unwrap().len()));
    }
}
