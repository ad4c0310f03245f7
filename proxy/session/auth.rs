//! Who speaks next in the authentication exchange, and what flexgate must do with each packet.
//!
//! Pure: packets in, verdicts out. The session does the I/O. flexgate relays the exchange
//! without computing scrambles, but it must know when the exchange ends (OK or ERR), when the
//! server sends a packet that needs no reply (`caching_sha2_password` fast-auth success), and
//! when a cleartext password is about to cross an insecure backend leg.

use crate::protocol::{AuthPacket, WireError, plugins};

/// Whose packet is expected next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    Server,
    Client,
}

/// What to do with a server packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerVerdict {
    /// Relay it; then wait for `next`.
    Forward { next: Turn },
    /// Relay it: the login succeeded.
    Success,
    /// Relay it: the login failed with this code.
    Failure { code: u16 },
}

/// What to do with a client packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientVerdict {
    /// Relay it, then wait for the server.
    Forward,
    /// Do not relay it: it is a cleartext password and the backend leg is not secure. Fetch the
    /// server's RSA key, send the password encrypted to it, then wait for the server.
    EncryptToServerKey,
}

/// `caching_sha2_password` AuthMoreData statuses.
const FAST_AUTH_SUCCESS: &[u8] = &[0x03];
const PERFORM_FULL_AUTH: &[u8] = &[0x04];
/// A client's request for the server's RSA public key (`caching_sha2_password`).
pub(crate) const REQUEST_PUBLIC_KEY: u8 = 0x02;

/// State of one authentication exchange.
#[derive(Debug)]
pub(crate) struct AuthExchange {
    plugin: Vec<u8>,
    nonce: Vec<u8>,
    turn: Turn,
    /// The server asked for full authentication and the client has not answered yet.
    full_auth_pending: bool,
    backend_secure: bool,
}

impl AuthExchange {
    /// Starts after the HandshakeResponse was forwarded: the server speaks next.
    pub(crate) fn new(client_plugin: &[u8], nonce: Vec<u8>, backend_secure: bool) -> Self {
        Self { plugin: client_plugin.to_vec(), nonce, turn: Turn::Server, full_auth_pending: false, backend_secure }
    }

    pub(crate) fn turn(&self) -> Turn {
        self.turn
    }

    /// The nonce of the plugin now in use (the greeting's, or the last AuthSwitchRequest's).
    pub(crate) fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    pub(crate) fn on_server(&mut self, payload: &[u8]) -> Result<ServerVerdict, WireError> {
        debug_assert_eq!(self.turn, Turn::Server);
        let verdict = match AuthPacket::parse(payload)? {
            AuthPacket::Ok => ServerVerdict::Success,
            AuthPacket::Err(e) => ServerVerdict::Failure { code: e.code },
            AuthPacket::Switch { plugin, data } => {
                self.plugin = plugin.to_vec();
                self.nonce = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
                ServerVerdict::Forward { next: Turn::Client }
            }
            AuthPacket::MoreData(data) if self.plugin == plugins::CACHING_SHA2 && data == FAST_AUTH_SUCCESS => {
                // The OK follows without a client reply.
                ServerVerdict::Forward { next: Turn::Server }
            }
            AuthPacket::MoreData(data) => {
                self.full_auth_pending = self.plugin == plugins::CACHING_SHA2 && data == PERFORM_FULL_AUTH;
                ServerVerdict::Forward { next: Turn::Client }
            }
        };
        if let ServerVerdict::Forward { next } = verdict {
            self.turn = next;
        }
        Ok(verdict)
    }

    pub(crate) fn on_client(&mut self, payload: &[u8]) -> ClientVerdict {
        debug_assert_eq!(self.turn, Turn::Client);
        self.turn = Turn::Server;
        let full_auth = std::mem::take(&mut self.full_auth_pending);
        // After "perform full authentication" a client either asks for the key (0x02, and then
        // encrypts itself) or sends its password with a NUL, which it does when it believes
        // its transport is secure. Its transport is the TLS leg to flexgate; ours may not be.
        if full_auth && !self.backend_secure && payload != [REQUEST_PUBLIC_KEY] {
            ClientVerdict::EncryptToServerKey
        } else {
            ClientVerdict::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha2(secure: bool) -> AuthExchange {
        AuthExchange::new(plugins::CACHING_SHA2, vec![7; 20], secure)
    }

    #[test]
    fn native_password_ok() {
        let mut x = AuthExchange::new(b"mysql_native_password", vec![1; 20], false);
        assert_eq!(x.on_server(&[0, 0, 0, 2, 0]), Ok(ServerVerdict::Success));
    }

    #[test]
    fn error_ends_the_exchange_with_its_code() {
        let mut x = AuthExchange::new(b"mysql_native_password", vec![1; 20], false);
        assert_eq!(x.on_server(b"\xff\x15\x04#28000Access denied"), Ok(ServerVerdict::Failure { code: 1045 }));
    }

    #[test]
    fn switch_takes_the_new_nonce_and_waits_for_the_client() {
        let mut x = AuthExchange::new(b"mysql_native_password", vec![1; 20], false);
        assert_eq!(
            x.on_server(b"\xfeclient_ed25519\0abcdefghijklmnopqrstuvwxyz012345\0"),
            Ok(ServerVerdict::Forward { next: Turn::Client })
        );
        assert_eq!(x.nonce(), b"abcdefghijklmnopqrstuvwxyz012345");
        assert_eq!(x.on_client(&[9; 64]), ClientVerdict::Forward);
        assert_eq!(x.turn(), Turn::Server);
    }

    #[test]
    fn sha2_fast_auth_success_needs_no_client_reply() {
        let mut x = sha2(false);
        assert_eq!(x.on_server(&[1, 3]), Ok(ServerVerdict::Forward { next: Turn::Server }));
        assert_eq!(x.on_server(&[0, 0, 0, 2, 0]), Ok(ServerVerdict::Success));
    }

    #[test]
    fn sha2_full_auth_over_plain_backend_is_encrypted_by_flexgate() {
        let mut x = sha2(false);
        assert_eq!(x.on_server(&[1, 4]), Ok(ServerVerdict::Forward { next: Turn::Client }));
        assert_eq!(x.on_client(b"secret\0"), ClientVerdict::EncryptToServerKey);
    }

    #[test]
    fn sha2_full_auth_key_request_from_client_is_relayed() {
        let mut x = sha2(false);
        x.on_server(&[1, 4]).ok();
        assert_eq!(x.on_client(&[REQUEST_PUBLIC_KEY]), ClientVerdict::Forward);
        assert_eq!(x.on_server(b"\x01-----BEGIN PUBLIC KEY-----"), Ok(ServerVerdict::Forward { next: Turn::Client }));
        assert_eq!(x.on_client(&[0xaa; 256]), ClientVerdict::Forward);
    }

    #[test]
    fn sha2_full_auth_over_secure_backend_is_relayed() {
        let mut x = sha2(true);
        x.on_server(&[1, 4]).ok();
        assert_eq!(x.on_client(b"secret\0"), ClientVerdict::Forward);
    }

    #[test]
    fn garbage_from_server_is_an_error() {
        assert!(sha2(false).on_server(&[0x42]).is_err());
        assert!(sha2(false).on_server(&[]).is_err());
    }
}
