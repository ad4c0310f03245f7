//! Password cryptography of the auth exchange.
//!
//! Two uses. When flexgate relays a client's login it computes nothing, except for
//! `caching_sha2_password` full authentication over a plaintext backend leg, where a client that
//! believes its (TLS) transport is secure sends its password in the clear: that password is
//! encrypted to the server's RSA key exactly as libmysqlclient does, so it never crosses the
//! network unencrypted. When flexgate logs in to the server itself, with a secret it holds (an
//! Entra principal's mapped account), it computes each plugin's response from the secret:
//! [`native_password`], [`caching_sha2_fast`] and [`ed25519_signature`]. Each formula and its
//! test vectors are in the research notes (anchors-identity §5).

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, SHA512, digest};
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

/// `mysql_native_password`: `SHA1(password) XOR SHA1(nonce || SHA1(SHA1(password)))`. An empty
/// password answers with empty auth data, as every client does.
pub fn native_password(password: &[u8], nonce: &[u8]) -> Zeroizing<Vec<u8>> {
    xor_scramble(&SHA1_FOR_LEGACY_USE_ONLY, password, nonce, NonceAt::First)
}

/// `caching_sha2_password`'s fast path: `SHA256(password) XOR SHA256(SHA256(SHA256(password))
/// || nonce)`; the digest comes first, the nonce second (the opposite of native). An empty
/// password answers with empty auth data.
pub fn caching_sha2_fast(password: &[u8], nonce: &[u8]) -> Zeroizing<Vec<u8>> {
    xor_scramble(&SHA256, password, nonce, NonceAt::Last)
}

/// Where the nonce goes in the mask's hash.
enum NonceAt {
    First,
    Last,
}

/// `H(password) XOR H(nonce, H(H(password)))`, the shape both SHA scrambles share.
fn xor_scramble(
    alg: &'static aws_lc_rs::digest::Algorithm,
    password: &[u8],
    nonce: &[u8],
    at: NonceAt,
) -> Zeroizing<Vec<u8>> {
    if password.is_empty() {
        return Zeroizing::new(Vec::new());
    }
    let stage1 = Zeroizing::new(digest(alg, password).as_ref().to_vec());
    let stage2 = digest(alg, &stage1);
    let mut ctx = aws_lc_rs::digest::Context::new(alg);
    match at {
        NonceAt::First => {
            ctx.update(nonce_of(nonce));
            ctx.update(stage2.as_ref());
        }
        NonceAt::Last => {
            ctx.update(stage2.as_ref());
            ctx.update(nonce_of(nonce));
        }
    }
    let mask = ctx.finish();
    Zeroizing::new(stage1.iter().zip(mask.as_ref()).map(|(a, b)| a ^ b).collect())
}

/// MariaDB's `client_ed25519`: an Ed25519 signature of the server's nonce, with a key derived
/// the way MariaDB's ref10 code derives it: the expanded secret key is `SHA512(password)` over
/// the whole password (not RFC 8032's hash of a 32-byte seed), clamped. That is why this uses
/// ed25519-dalek's hazmat API rather than a seed-based one.
pub fn ed25519_signature(password: &[u8], nonce: &[u8]) -> [u8; 64] {
    let expanded = ed25519_key(password);
    let public = ed25519_dalek::VerifyingKey::from(&expanded);
    ed25519_dalek::hazmat::raw_sign::<sha2::Sha512>(&expanded, nonce, &public).to_bytes()
}

/// The public key MariaDB stores for an ed25519 account (`PASSWORD()` shows it in base64):
/// what a server-side check compares against.
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    ed25519_dalek::VerifyingKey::from(&ed25519_key(password)).to_bytes()
}

fn ed25519_key(password: &[u8]) -> ed25519_dalek::hazmat::ExpandedSecretKey {
    let mut az = Zeroizing::new([0u8; 64]);
    az.copy_from_slice(digest(&SHA512, password).as_ref());
    // `from_bytes` clamps the scalar half (az[0] &= 248, az[31] &= 63, az[31] |= 64) and keeps
    // the other half as the nonce prefix, as ref10's crypto_sign does.
    ed25519_dalek::hazmat::ExpandedSecretKey::from_bytes(&az)
}

/// The nonce as a scramble uses it: the greeting's 20 bytes, without the NUL that ends them on
/// the wire.
fn nonce_of(nonce: &[u8]) -> &[u8] {
    nonce.strip_suffix(&[0]).unwrap_or(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// go-sql-driver's `TestAuthFastNativePassword` vector, and MySQL's stored form of
    /// `PASSWORD('password')`.
    #[test]
    fn native_password_matches_the_reference_vectors() {
        let nonce = [70u8, 114, 92, 94, 1, 38, 11, 116, 63, 114, 23, 101, 126, 103, 26, 95, 81, 17, 24, 21];
        let want = [53u8, 177, 140, 159, 251, 189, 127, 53, 109, 252, 172, 50, 211, 192, 240, 164, 26, 48, 207, 45];
        assert_eq!(native_password(b"secret", &nonce).as_slice(), want);
        let mut with_nul = nonce.to_vec();
        with_nul.push(0);
        assert_eq!(native_password(b"secret", &with_nul).as_slice(), want, "the wire's NUL is not part of it");
        let stored = digest(&SHA1_FOR_LEGACY_USE_ONLY, digest(&SHA1_FOR_LEGACY_USE_ONLY, b"password").as_ref());
        assert_eq!(hex(stored.as_ref()).to_uppercase(), "2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19");
        assert!(native_password(b"", &nonce).is_empty());
    }

    /// go-sql-driver's `TestAuthFastCachingSHA256PasswordCached` and `TestScrambleSHA256Pass`.
    #[test]
    fn caching_sha2_fast_matches_the_reference_vectors() {
        let nonce = [6u8, 81, 96, 114, 14, 42, 50, 30, 76, 47, 1, 95, 126, 81, 62, 94, 83, 80, 52, 85];
        let want = [
            171u8, 201, 138, 146, 89, 159, 11, 170, 0, 67, 165, 49, 175, 94, 218, 68, 177, 109, 110, 86, 34, 33, 44,
            190, 67, 240, 70, 110, 40, 139, 124, 41,
        ];
        assert_eq!(caching_sha2_fast(b"secret", &nonce).as_slice(), want);
        let nonce = [10u8, 47, 74, 111, 75, 73, 34, 48, 88, 76, 114, 74, 37, 13, 3, 80, 82, 2, 23, 21];
        assert_eq!(
            hex(&caching_sha2_fast(b"secret", &nonce)),
            "f490e76f66d9d86665ce54d98c78d0acfe2fb0b08b423da807144873d30b312c"
        );
        assert_eq!(
            hex(&caching_sha2_fast(b"secret2", &nonce)),
            "abc3934a012cf342e876071c8ee202de51785b430258a7a0138bc79c4d800bc6"
        );
        assert!(caching_sha2_fast(b"", &nonce).is_empty());
    }

    /// MariaDB's `mysql-test/suite/plugins/r/auth_ed25519.result` (stored public keys), and a
    /// signature that a standard verifier accepts.
    #[test]
    fn ed25519_matches_mariadb() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        for (pw, stored) in [
            ("foo", "vubFBzIrapbfHct1/J72dnUryz5VS7lA6XHH8sIx4TI"),
            ("foobar", "qv2mG6HWCuy32Slb5xhV4THStewNz2VINVPbgk+XAJ8"),
            ("foo bar", "Y5fV74JAVRMOK2cdnUsYS+WW9sXaaL/o+6WGKOgqnzc"),
            ("bar", "pfzkeWMzkTefY1oshXS+/kATeN51M+4jxi3/cbyTd10"),
            ("secret", "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY"),
        ] {
            assert_eq!(b64.encode(ed25519_public_key(pw.as_bytes())), stored, "{pw}");
        }
        let nonce: Vec<u8> = (0u8..32).collect();
        let sig = ed25519_signature(b"secret", &nonce);
        assert_eq!(
            hex(&sig),
            "546c3e9311d19ee389d1ae5d945821bfe459423910136f16b3bd2ae89fd7d63b\
             449e689f4be812891a85b8f999076446d92adb83d0707215aaa60b5a23220907"
        );
        let public =
            ed25519_dalek::VerifyingKey::from_bytes(&ed25519_public_key(b"secret")).unwrap_or_else(|e| panic!("{e}"));
        let signature = ed25519_dalek::Signature::from_bytes(&sig);
        assert!(public.verify_strict(&nonce, &signature).is_ok());
    }

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
