//! Password and robot-secret hashing with argon2 (PHC strings), and secret generation.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

/// Hashes a password (argon2id, default parameters, random salt).
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness".to_owned())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a PHC string. Constant-time in the hash comparison.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A new random secret for a robot account (32 bytes, base64url). Never starts with `-`, which
/// command lines would take for a flag (`docker login -p`, `berth-verifier --password`): such a
/// draw is made again, which costs under 0.03 bits of the 256.
pub fn new_secret() -> Result<String, String> {
    let rng = SystemRandom::new();
    loop {
        let mut b = [0u8; 32];
        rng.fill(&mut b).map_err(|_| "no randomness".to_owned())?;
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        if !s.starts_with('-') {
            return Ok(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret ", &h));
        assert!(!verify("s3cret", "not a hash"));
        assert_ne!(new_secret().unwrap(), new_secret().unwrap());
    }

    /// A secret is typed after `--password` / `-p` on command lines (docker login, berth,
    /// berth-verifier): one starting with `-` would be taken for a flag (1 in 64 did).
    #[test]
    fn secrets_never_look_like_flags() {
        for _ in 0..5000 {
            let s = new_secret().unwrap();
            assert!(!s.starts_with('-'), "{s}");
            assert_eq!(s.len(), 43);
        }
    }
}
