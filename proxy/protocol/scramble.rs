//! Password cryptography of the auth exchange.
//!
//! flexgate relays scrambles it does not compute; the one place it must encrypt is
//! `caching_sha2_password` full authentication over a plaintext backend leg, where a client that
//! believes its (TLS) transport is secure sends its password in the clear. That password is
//! then encrypted to the server's RSA key exactly as libmysqlclient does, so it never crosses
//! the network unencrypted.

use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use zeroize::Zeroizing;

/// Why the password could not be encrypted to the server's key.
#[derive(Debug, Error)]
pub enum RsaError {
    /// The server's reply was not a PEM `PUBLIC KEY`.
    #[error("server public key is not a PEM SubjectPublicKeyInfo: {0}")]
    BadKey(String),
    /// The password is too long for the key size (OAEP needs 42 bytes of room).
    #[error("password too long for the server's {bits}-bit RSA key")]
    TooLong {
        /// Key size.
        bits: usize,
    },
}

/// `RSA-OAEP(SHA-1, MGF1-SHA-1)` of `(password || NUL) XOR nonce`, as `caching_sha2_password`
/// and `sha256_password` servers decrypt it.
///
/// `password_nul` is the password with its terminating NUL, as the client sent it.
pub fn encrypt_password(password_nul: &[u8], nonce: &[u8], server_pem: &[u8]) -> Result<Vec<u8>, RsaError> {
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(server_pem).map_err(|e| RsaError::BadKey(e.to_string()))?;
    let key = PublicEncryptingKey::from_der(spki.as_ref()).map_err(|e| RsaError::BadKey(e.to_string()))?;
    let key = OaepPublicEncryptingKey::new(key).map_err(|e| RsaError::BadKey(e.to_string()))?;
    let mut plain = Zeroizing::new(password_nul.to_vec());
    if !nonce.is_empty() {
        for (b, n) in plain.iter_mut().zip(nonce.iter().cycle()) {
            *b ^= n;
        }
    }
    let bits = key.key_size_bits();
    if plain.len() > key.max_plaintext_size(&OAEP_SHA1_MGF1SHA1) {
        return Err(RsaError::TooLong { bits });
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let written = key.encrypt(&OAEP_SHA1_MGF1SHA1, &plain, &mut out, None).map_err(|_| RsaError::TooLong { bits })?;
    let n = written.len();
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plaintext before encryption matches the documented vector (anchors-identity §5.3):
    /// password `secret`, nonce below → `753403006b5e32`.
    #[test]
    fn xor_matches_reference_vector() {
        let nonce = [6u8, 81, 96, 114, 14, 42, 50, 30, 76, 47, 1, 95, 126, 81, 62, 94, 83, 80, 52, 85];
        let xored: Vec<u8> = b"secret\0".iter().zip(nonce.iter().cycle()).map(|(a, b)| a ^ b).collect();
        assert_eq!(xored, [0x75, 0x34, 0x03, 0x00, 0x6b, 0x5e, 0x32]);
    }

    #[test]
    fn refuses_garbage_key() {
        assert!(matches!(encrypt_password(b"pw\0", &[1; 20], b"not a key"), Err(RsaError::BadKey(_))));
    }
}
