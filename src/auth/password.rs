//! Password hashes as RabbitMQ stores them, so definitions exported from RabbitMQ import with
//! working passwords: `base64(salt ++ H(salt ++ password))` with a 4-byte random salt, where
//! H is SHA-256 (`rabbit_password_hashing_sha256`, RabbitMQ's default since 3.6) or SHA-512.

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

/// RabbitMQ's name of the hashing module Hare writes.
pub const SHA256: &str = "rabbit_password_hashing_sha256";
/// The other hashing module read (RabbitMQ can be configured to use it).
pub const SHA512: &str = "rabbit_password_hashing_sha512";

/// The salted SHA-256 hash of `password`, base64-encoded, with a fresh random salt.
pub fn hash(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    encode(&salt, &Sha256::digest([&salt[..], password.as_bytes()].concat()))
}

fn encode(salt: &[u8], digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode([salt, digest].concat())
}

/// Whether `algorithm` is a hashing module whose hashes [`verify`] can check.
pub fn known_algorithm(algorithm: &str) -> bool {
    algorithm == SHA256 || algorithm == SHA512
}

/// Whether `password` matches `stored` (as [`hash`] makes it, or SHA-512 of the same shape).
/// An empty or malformed hash matches nothing: such a user logs in only by EXTERNAL.
pub fn verify(stored: &str, algorithm: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(stored) else {
        return false;
    };
    if raw.len() < 5 {
        return false;
    }
    let (salt, expected) = raw.split_at(4);
    let input = [salt, password.as_bytes()].concat();
    let actual: Vec<u8> = match algorithm {
        SHA512 => Sha512::digest(&input).to_vec(),
        SHA256 | "" => Sha256::digest(&input).to_vec(),
        _ => return false,
    };
    // Compared in time independent of where they differ.
    actual.len() == expected.len() && actual.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("s3cret");
        assert!(verify(&h, SHA256, "s3cret"));
        assert!(!verify(&h, SHA256, "s3cret "));
        assert!(!verify(&h, SHA256, ""));
        // Salted: the same password hashes differently each time.
        assert_ne!(h, hash("s3cret"));
    }

    #[test]
    fn reads_a_hash_made_by_rabbitmq() {
        // Salt 908dc60a and SHA-256 of salt ++ "guest", computed apart (Python's hashlib).
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let made = encode(&salt, &Sha256::digest([&salt[..], b"guest"].concat()));
        assert_eq!(made, "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe");
        assert!(verify(&made, SHA256, "guest"));
    }

    #[test]
    fn malformed_hashes_match_nothing() {
        for bad in ["", "!!!", "AAAA", "kI3GCqW5"] {
            assert!(!verify(bad, SHA256, ""), "{bad}");
        }
        assert!(!verify(&hash("x"), "rabbit_password_hashing_md5", "x"));
    }
}
