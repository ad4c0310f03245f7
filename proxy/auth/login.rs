//! flexgate's own login to the server, as the account an Entra principal maps to, with the
//! password flexgate holds.
//!
//! Pure: server packets in, the packets to answer with out; the session does the I/O. It
//! speaks every plugin a MySQL or MariaDB account is likely to use, and follows the server's
//! AuthSwitchRequest between them:
//! - `mysql_native_password`;
//! - `caching_sha2_password`, fast path and full authentication: the password itself over a
//!   secure leg (TLS or a Unix socket), otherwise encrypted to the server's RSA key, which is
//!   asked for (MySQL's `--get-server-public-key`);
//! - MariaDB's `client_ed25519`;
//! - `mysql_clear_password`, over a secure leg only.
//!
//! Nonces are cut to the length each plugin uses rather than stripped of a trailing NUL: an
//! ed25519 nonce is 32 raw bytes, and one in 256 of them ends in zero.

use zeroize::Zeroizing;

use super::Secret;
use crate::backend::BackendLeg;
use crate::protocol::{AuthPacket, scramble};

const NATIVE: &[u8] = b"mysql_native_password";
const SHA2: &[u8] = b"caching_sha2_password";
const ED25519: &[u8] = b"client_ed25519";
const CLEAR: &[u8] = b"mysql_clear_password";

/// Most server packets in one login: a switch, a full-auth request, a key, and the result fit
/// with room to spare. A server asking for more is not one flexgate should keep answering.
const MAX_ROUNDS: u8 = 8;

/// What to do after a server packet. `Debug` does not show what `Send` holds: it may be the
/// password itself.
#[derive(PartialEq, Eq)]
pub enum Step {
    /// Send this to the server, then read its next packet.
    Send(Zeroizing<Vec<u8>>),
    /// Read the server's next packet without answering.
    Read,
    /// The server accepted the login.
    Done,
    /// The server refused it, with this code and message.
    Refused {
        /// Its error code.
        code: u16,
        /// Its message (names the server account, never the password).
        message: String,
    },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send(p) => write!(f, "Send({} bytes)", p.len()),
            Self::Read => f.write_str("Read"),
            Self::Done => f.write_str("Done"),
            Self::Refused { code, message } => {
                f.debug_struct("Refused").field("code", code).field("message", message).finish()
            }
        }
    }
}

/// Why flexgate could not complete the login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The account uses a plugin flexgate cannot answer for.
    #[error(
        "the server account uses the auth plugin \"{0}\", which flexgate cannot log in with; use mysql_native_password, caching_sha2_password or ed25519 for mapped accounts"
    )]
    Plugin(String),
    /// A cleartext plugin over a plaintext leg.
    #[error(
        "the server asked for the password in cleartext over a plaintext connection; enable [backend.tls] or use a Unix socket"
    )]
    Cleartext,
    /// The exchange made no sense.
    #[error("unexpected packet in the login exchange: {0}")]
    Protocol(String),
    /// Full authentication over a plaintext network leg: the server's RSA key would come
    /// over the same unauthenticated connection, so whoever sits on it could send its own key
    /// and read the password.
    #[error(
        "the server asked for full caching_sha2_password authentication over an unencrypted network connection; enable [backend.tls] (or use a Unix socket) so that flexgate can send the held password safely"
    )]
    FullAuthOverNetwork,
    /// The RSA key was unusable.
    #[error("cannot encrypt the password to the server's RSA key: {0}")]
    Rsa(String),
}

/// One login exchange.
pub struct BackendLogin<'a> {
    secret: &'a Secret,
    plugin: Vec<u8>,
    nonce: Vec<u8>,
    leg: BackendLeg,
    /// Full authentication asked for the RSA key; the next packet is the key.
    awaiting_key: bool,
    rounds: u8,
}

impl std::fmt::Debug for BackendLogin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLogin")
            .field("plugin", &String::from_utf8_lossy(&self.plugin))
            .field("leg", &self.leg)
            .finish_non_exhaustive()
    }
}

/// The nonce a plugin uses, cut to its length.
fn nonce_for(plugin: &[u8], data: &[u8]) -> Vec<u8> {
    let len = if plugin == ED25519 { 32 } else { 20 };
    data.get(..len).unwrap_or(data).to_vec()
}

impl<'a> BackendLogin<'a> {
    /// Starts from the server's greeting (or, for a change-user, an empty start that the
    /// server answers with a switch). Returns the exchange, the plugin to name in the
    /// HandshakeResponse, and its auth data: computed for the greeting's plugin when flexgate
    /// speaks it, else empty under `mysql_native_password`, which the server switches from.
    pub fn start(
        secret: &'a Secret,
        greeting_plugin: &[u8],
        nonce: &[u8],
        leg: BackendLeg,
    ) -> (Self, &'static [u8], Zeroizing<Vec<u8>>) {
        let mut x = Self { secret, plugin: Vec::new(), nonce: Vec::new(), leg, awaiting_key: false, rounds: 0 };
        let plugin: &'static [u8] = match greeting_plugin {
            p if p == SHA2 => SHA2,
            _ => NATIVE,
        };
        x.plugin = plugin.to_vec();
        x.nonce = nonce_for(plugin, nonce);
        let first = if nonce.len() >= 20 { x.respond().unwrap_or_default() } else { Zeroizing::new(Vec::new()) };
        (x, plugin, first)
    }

    /// The plugin now in use.
    pub fn plugin(&self) -> &[u8] {
        &self.plugin
    }

    fn respond(&self) -> Result<Zeroizing<Vec<u8>>, LoginError> {
        let pw = self.secret.expose();
        match self.plugin.as_slice() {
            NATIVE => Ok(scramble::native_password(pw, &self.nonce)),
            SHA2 => Ok(scramble::caching_sha2_fast(pw, &self.nonce)),
            ED25519 => Ok(Zeroizing::new(scramble::ed25519_signature(pw, &self.nonce).to_vec())),
            CLEAR if self.leg == BackendLeg::Secure => Ok(with_nul(pw)),
            CLEAR => Err(LoginError::Cleartext),
            other => Err(LoginError::Plugin(String::from_utf8_lossy(other).into_owned())),
        }
    }

    /// The server's next packet.
    pub fn on_server(&mut self, payload: &[u8]) -> Result<Step, LoginError> {
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(LoginError::Protocol(format!("more than {MAX_ROUNDS} server packets")));
        }
        let packet = AuthPacket::parse(payload).map_err(|e| LoginError::Protocol(e.to_string()))?;
        if std::mem::take(&mut self.awaiting_key) {
            let AuthPacket::MoreData(pem) = packet else {
                return match packet {
                    AuthPacket::Err(e) => Ok(refused(&e)),
                    _ => Err(LoginError::Protocol("expected the server's RSA public key".into())),
                };
            };
            let ct = scramble::encrypt_password(&with_nul(self.secret.expose()), &self.nonce, pem)
                .map_err(|e| LoginError::Rsa(e.to_string()))?;
            return Ok(Step::Send(Zeroizing::new(ct)));
        }
        match packet {
            AuthPacket::Ok => Ok(Step::Done),
            AuthPacket::Err(e) => Ok(refused(&e)),
            AuthPacket::Switch { plugin, data } => {
                self.plugin = plugin.to_vec();
                self.nonce = nonce_for(plugin, data);
                self.respond().map(Step::Send)
            }
            AuthPacket::MoreData([0x03]) if self.plugin == SHA2 => Ok(Step::Read),
            AuthPacket::MoreData([0x04]) if self.plugin == SHA2 => {
                match self.leg {
                    BackendLeg::Secure => Ok(Step::Send(with_nul(self.secret.expose()))),
                    // On loopback nobody can sit between flexgate and the server.
                    BackendLeg::PlainLoopback => {
                        self.awaiting_key = true;
                        Ok(Step::Send(Zeroizing::new(vec![0x02])))
                    }
                    BackendLeg::PlainNetwork => Err(LoginError::FullAuthOverNetwork),
                }
            }
            // MariaDB sends the ed25519 nonce raw when the client already named the plugin.
            AuthPacket::Data(data) | AuthPacket::MoreData(data) if self.plugin == ED25519 && data.len() >= 32 => {
                self.nonce = nonce_for(ED25519, data);
                self.respond().map(Step::Send)
            }
            AuthPacket::MoreData(d) | AuthPacket::Data(d) => Err(LoginError::Protocol(format!(
                "{} bytes of plugin data for {}",
                d.len(),
                String::from_utf8_lossy(&self.plugin)
            ))),
        }
    }
}

fn with_nul(pw: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(pw.len() + 1));
    v.extend_from_slice(pw);
    v.push(0);
    v
}

fn refused(e: &crate::protocol::ErrPacket<'_>) -> Step {
    Step::Refused { code: e.code, message: String::from_utf8_lossy(e.message).chars().take(200).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pw: &str) -> Secret {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("s");
        std::fs::write(&p, pw).unwrap_or_else(|e| panic!("{e}"));
        Secret::from_file(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    const NONCE: [u8; 20] = *b"abcdefghijklmnopqrst";

    fn switch(plugin: &[u8], data: &[u8]) -> Vec<u8> {
        let mut p = vec![0xfe];
        p.extend_from_slice(plugin);
        p.push(0);
        p.extend_from_slice(data);
        p
    }

    #[test]
    fn native_from_the_greeting() {
        let s = secret("pw");
        let (_, plugin, first) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::PlainLoopback);
        assert_eq!(plugin, NATIVE);
        assert_eq!(first, scramble::native_password(b"pw", &NONCE));
    }

    #[test]
    fn a_switch_to_ed25519_signs_the_32_byte_nonce_even_when_it_ends_in_zero() {
        let s = secret("secret");
        let (mut x, _, _) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::PlainLoopback);
        let mut nonce = [7u8; 32];
        nonce[31] = 0;
        let step = x.on_server(&switch(ED25519, &nonce)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step, Step::Send(Zeroizing::new(scramble::ed25519_signature(b"secret", &nonce).to_vec())));
        assert_eq!(x.on_server(&[0, 0, 0, 2, 0]), Ok(Step::Done));
    }

    #[test]
    fn sha2_fast_then_ok() {
        let s = secret("pw");
        let (mut x, plugin, first) = BackendLogin::start(&s, SHA2, &NONCE, BackendLeg::PlainNetwork);
        assert_eq!(plugin, SHA2);
        assert_eq!(first, scramble::caching_sha2_fast(b"pw", &NONCE));
        assert_eq!(x.on_server(&[1, 3]), Ok(Step::Read));
        assert_eq!(x.on_server(&[0, 0, 0, 2, 0]), Ok(Step::Done));
    }

    #[test]
    fn sha2_full_auth_sends_the_password_on_a_secure_leg_and_asks_for_the_key_otherwise() {
        let s = secret("pw");
        let (mut x, _, _) = BackendLogin::start(&s, SHA2, &NONCE, BackendLeg::Secure);
        assert_eq!(x.on_server(&[1, 4]), Ok(Step::Send(Zeroizing::new(b"pw\0".to_vec()))));
        let (mut x, _, _) = BackendLogin::start(&s, SHA2, &NONCE, BackendLeg::PlainNetwork);
        assert_eq!(x.on_server(&[1, 4]), Err(LoginError::FullAuthOverNetwork));
        let (mut x, _, _) = BackendLogin::start(&s, SHA2, &NONCE, BackendLeg::PlainLoopback);
        assert_eq!(x.on_server(&[1, 4]), Ok(Step::Send(Zeroizing::new(vec![2]))));
        assert!(!format!("{:?}", Step::Send(Zeroizing::new(b"pw".to_vec()))).contains("pw"), "Debug hides the bytes");
        // A key that is not a key is an error, not a panic.
        let mut key = vec![1];
        key.extend_from_slice(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        assert!(matches!(x.on_server(&key), Err(LoginError::Rsa(_))));
    }

    #[test]
    fn sha2_full_auth_encrypts_to_the_servers_key() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
        let der = key.public_key().as_der().unwrap_or_else(|e| panic!("{e}"));
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.as_ref());
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        let s = secret("hunter2");
        let (mut x, _, _) = BackendLogin::start(&s, SHA2, &NONCE, BackendLeg::PlainLoopback);
        x.on_server(&[1, 4]).unwrap_or_else(|e| panic!("{e}"));
        let mut more = vec![1];
        more.extend_from_slice(pem.as_bytes());
        let Ok(Step::Send(ct)) = x.on_server(&more) else { panic!("no ciphertext") };
        let oaep = OaepPrivateDecryptingKey::new(key).unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0; 512];
        let plain = oaep.decrypt(&OAEP_SHA1_MGF1SHA1, &ct, &mut out, None).unwrap_or_else(|e| panic!("{e}"));
        let unmasked: Vec<u8> = plain.iter().zip(NONCE.iter().cycle()).map(|(a, b)| a ^ b).collect();
        assert_eq!(unmasked, b"hunter2\0");
    }

    #[test]
    fn cleartext_only_on_a_secure_leg_and_unknown_plugins_are_named() {
        let s = secret("pw");
        let (mut x, _, _) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::PlainNetwork);
        assert_eq!(x.on_server(&switch(CLEAR, b"")), Err(LoginError::Cleartext));
        let (mut x, _, _) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::Secure);
        assert_eq!(x.on_server(&switch(CLEAR, b"")), Ok(Step::Send(Zeroizing::new(b"pw\0".to_vec()))));
        let (mut x, _, _) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::Secure);
        assert_eq!(
            x.on_server(&switch(b"auth_gssapi_client", b"x")),
            Err(LoginError::Plugin("auth_gssapi_client".into()))
        );
    }

    #[test]
    fn a_refusal_carries_the_servers_code_and_a_server_that_never_ends_is_cut_off() {
        let s = secret("pw");
        let (mut x, _, _) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::PlainLoopback);
        let step = x.on_server(b"\xff\x15\x04#28000Access denied for user 'alice'@'localhost' (using password: YES)");
        assert!(matches!(step, Ok(Step::Refused { code: 1045, .. })), "{step:?}");
        let (mut x, _, _) = BackendLogin::start(&s, NATIVE, &NONCE, BackendLeg::PlainLoopback);
        let mut last = Ok(Step::Read);
        for _ in 0..=MAX_ROUNDS {
            last = x.on_server(&switch(NATIVE, &NONCE));
        }
        assert!(matches!(last, Err(LoginError::Protocol(_))));
    }
}
