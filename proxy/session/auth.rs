//! Who speaks next in the authentication exchange, and what flexgate must do with each packet.
//!
//! Pure: packets in, verdicts out. The session does the I/O. flexgate relays the exchange
//! without computing scrambles, but it must know when the exchange ends (OK or ERR), when the
//! server sends a packet that needs no reply (`caching_sha2_password` fast-auth success), and
//! when a cleartext password is about to cross an insecure backend leg.

pub(crate) use crate::backend::BackendLeg;
use crate::protocol::{AuthPacket, WireError, plugins};

/// Whose packet is expected next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    Server,
    Client,
}

/// What to do with a server packet.
#[must_use]
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
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientVerdict {
    /// Relay it, then wait for the server.
    Forward,
    /// Do not relay it: it is a cleartext password and the backend leg is not secure. Fetch the
    /// server's RSA key, send the password encrypted to it, then wait for the server.
    EncryptToServerKey,
    /// Do not relay it, and end the login: relaying would expose the password or cannot work.
    Refuse(AuthRefusal),
}

/// Why flexgate ended a login the server had not decided yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// A cleartext-password plugin on a TLS client over a plaintext network leg to the server.
    CleartextOverNetwork,
    /// `caching_sha2_password` full authentication from a plaintext client to a server that
    /// expects the password in the clear (its leg to flexgate is secure).
    FullAuthNeedsTls,
}

impl AuthRefusal {
    /// A short stable label for logs, events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CleartextOverNetwork => "cleartext_over_network",
            Self::FullAuthNeedsTls => "full_auth_needs_tls",
        }
    }
}

/// `caching_sha2_password` AuthMoreData statuses.
const FAST_AUTH_SUCCESS: &[u8] = &[0x03];
const PERFORM_FULL_AUTH: &[u8] = &[0x04];
/// A client's request for the server's RSA public key (`caching_sha2_password`).
pub(crate) const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// The same request in `sha256_password`.
const SHA256_REQUEST_PUBLIC_KEY: u8 = 0x01;

/// Plugins whose client packets carry the password itself when the client's transport is
/// secure (as its TLS leg to flexgate is).
fn sends_cleartext(plugin: &[u8]) -> bool {
    matches!(plugin, b"mysql_clear_password" | b"dialog" | b"sha256_password")
}

/// State of one authentication exchange.
#[derive(Debug)]
pub(crate) struct AuthExchange {
    plugin: Vec<u8>,
    nonce: Vec<u8>,
    turn: Turn,
    /// The server asked for full authentication and the client has not answered yet.
    full_auth_pending: bool,
    client_tls: bool,
    backend: BackendLeg,
}

impl AuthExchange {
    /// Starts after the HandshakeResponse: `client_plugin` and `auth_response` are its fields.
    /// Refuses before anything is forwarded if the response itself carries a cleartext password
    /// that the backend leg would expose.
    pub(crate) fn new(
        client_plugin: &[u8],
        auth_response: &[u8],
        nonce: Vec<u8>,
        client_tls: bool,
        backend: BackendLeg,
    ) -> Result<Self, AuthRefusal> {
        let x = Self {
            plugin: client_plugin.to_vec(),
            nonce,
            turn: Turn::Server,
            full_auth_pending: false,
            client_tls,
            backend,
        };
        match x.check_cleartext(auth_response) {
            ClientVerdict::Refuse(r) => Err(r),
            _ => Ok(x),
        }
    }

    pub(crate) fn turn(&self) -> Turn {
        self.turn
    }

    /// The plugin now in use: the client's first, then the server's after a switch.
    pub(crate) fn plugin(&self) -> &[u8] {
        &self.plugin
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
            AuthPacket::Data(_) => ServerVerdict::Forward { next: Turn::Client },
        };
        if let ServerVerdict::Forward { next } = verdict {
            self.turn = next;
        }
        Ok(verdict)
    }

    pub(crate) fn on_client(&mut self, payload: &[u8]) -> ClientVerdict {
        debug_assert_eq!(self.turn, Turn::Client);
        self.turn = Turn::Server;
        if std::mem::take(&mut self.full_auth_pending) {
            // After "perform full authentication" a client either asks for the key (0x02) and
            // encrypts itself, or sends its password with a NUL because it believes its
            // transport is secure. Its transport is its leg to flexgate; ours may differ.
            let key_request = payload == [REQUEST_PUBLIC_KEY];
            return match (self.client_tls, self.backend, key_request) {
                (true, BackendLeg::PlainLoopback | BackendLeg::PlainNetwork, false) => {
                    ClientVerdict::EncryptToServerKey
                }
                // A server on a secure leg reads the next packet as the password itself.
                (false, BackendLeg::Secure, true) => ClientVerdict::Refuse(AuthRefusal::FullAuthNeedsTls),
                _ => ClientVerdict::Forward,
            };
        }
        self.check_cleartext(payload)
    }

    /// A TLS client answering a cleartext plugin sends its password as is; over a plaintext
    /// network leg that would undo the client's TLS.
    fn check_cleartext(&self, payload: &[u8]) -> ClientVerdict {
        let is_key_request = self.plugin == b"sha256_password" && payload == [SHA256_REQUEST_PUBLIC_KEY];
        if self.client_tls
            && self.backend == BackendLeg::PlainNetwork
            && sends_cleartext(&self.plugin)
            && !payload.is_empty()
            && !is_key_request
        {
            ClientVerdict::Refuse(AuthRefusal::CleartextOverNetwork)
        } else {
            ClientVerdict::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(plugin: &[u8], client_tls: bool, backend: BackendLeg) -> AuthExchange {
        AuthExchange::new(plugin, b"", vec![7; 20], client_tls, backend).unwrap_or_else(|r| panic!("{r:?}"))
    }

    fn sha2(secure: bool) -> AuthExchange {
        exchange(plugins::CACHING_SHA2, true, if secure { BackendLeg::Secure } else { BackendLeg::PlainLoopback })
    }

    fn native() -> AuthExchange {
        exchange(b"mysql_native_password", true, BackendLeg::PlainNetwork)
    }

    #[test]
    fn native_password_ok() {
        let mut x = native();
        assert_eq!(x.on_server(&[0, 0, 0, 2, 0]), Ok(ServerVerdict::Success));
    }

    #[test]
    fn error_ends_the_exchange_with_its_code() {
        let mut x = native();
        assert_eq!(x.on_server(b"\xff\x15\x04#28000Access denied"), Ok(ServerVerdict::Failure { code: 1045 }));
    }

    #[test]
    fn switch_takes_the_new_nonce_and_waits_for_the_client() {
        let mut x = native();
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
        assert!(sha2(false).on_server(&[]).is_err());
    }

    #[test]
    fn unprefixed_plugin_data_goes_to_the_client() {
        // MariaDB sends an ed25519 nonce or a PAM prompt without the 0x01 marker.
        let mut x = exchange(b"client_ed25519", true, BackendLeg::PlainLoopback);
        assert_eq!(x.on_server(&[0x42; 32]), Ok(ServerVerdict::Forward { next: Turn::Client }));
        assert_eq!(x.on_client(&[9; 64]), ClientVerdict::Forward);
    }

    #[test]
    fn cleartext_plugins_are_not_relayed_from_tls_clients_over_the_network() {
        for plugin in ["mysql_clear_password", "dialog", "sha256_password"] {
            let mut switch = b"\xfe".to_vec();
            switch.extend_from_slice(plugin.as_bytes());
            switch.push(0);
            for (client_tls, leg, refused) in [
                (true, BackendLeg::PlainNetwork, true),
                (true, BackendLeg::PlainLoopback, false),
                (true, BackendLeg::Secure, false),
                (false, BackendLeg::PlainNetwork, false),
            ] {
                let mut x = exchange(b"mysql_native_password", client_tls, leg);
                assert_eq!(x.on_server(&switch), Ok(ServerVerdict::Forward { next: Turn::Client }));
                let v = x.on_client(b"secret\0");
                assert_eq!(
                    v == ClientVerdict::Refuse(AuthRefusal::CleartextOverNetwork),
                    refused,
                    "{plugin} tls={client_tls} {leg:?}: {v:?}"
                );
            }
        }
        // The same rule applies to a cleartext password in the HandshakeResponse itself.
        assert_eq!(
            AuthExchange::new(b"mysql_clear_password", b"secret\0", vec![], true, BackendLeg::PlainNetwork).err(),
            Some(AuthRefusal::CleartextOverNetwork)
        );
        // sha256_password's key request carries no password.
        let mut x = exchange(b"sha256_password", true, BackendLeg::PlainNetwork);
        x.on_server(&[1, 4]).ok();
        assert_eq!(x.on_client(&[1]), ClientVerdict::Forward);
    }

    #[test]
    fn sha2_full_auth_by_leg() {
        use BackendLeg::*;
        for (client_tls, leg, packet, want) in [
            (true, PlainNetwork, &b"pw\0"[..], ClientVerdict::EncryptToServerKey),
            (true, PlainLoopback, b"pw\0", ClientVerdict::EncryptToServerKey),
            (true, Secure, b"pw\0", ClientVerdict::Forward),
            (true, PlainNetwork, &[REQUEST_PUBLIC_KEY], ClientVerdict::Forward),
            // A plaintext client that holds the key sends ciphertext: relay it untouched.
            (false, PlainNetwork, &[0xaa; 256], ClientVerdict::Forward),
            (false, PlainNetwork, &[REQUEST_PUBLIC_KEY], ClientVerdict::Forward),
            (false, Secure, &[REQUEST_PUBLIC_KEY], ClientVerdict::Refuse(AuthRefusal::FullAuthNeedsTls)),
        ] {
            let mut x = exchange(plugins::CACHING_SHA2, client_tls, leg);
            x.on_server(&[1, 4]).ok();
            assert_eq!(x.on_client(packet), want, "tls={client_tls} {leg:?}");
        }
    }
}
