//! Everything that can end a session before login, each with exactly one reaction on the wire.

use std::io;
use std::time::Duration;

use thiserror::Error;

use super::admission::Denial;
use super::auth::AuthRefusal;
use crate::events::LoginOutcome;
use crate::firewall::GateRefusal;
use crate::metrics::Outcome;
use crate::protocol::{WireError, codes};

/// Who caused a failure: picks the log level and the outcome label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client (bad packets, wrong TLS, went away).
    Client,
    /// The server (unreachable, refused, broke the protocol).
    Server,
    /// flexgate's own policy refused the client.
    Policy,
}

/// Why a session ended before its login completed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The server could not be connected to.
    #[error("cannot connect to backend {backend}: {source}")]
    BackendUnreachable {
        /// Backend address.
        backend: String,
        /// The connect error.
        source: io::Error,
    },
    /// Connecting took longer than `backend.connect_timeout`.
    #[error("cannot connect to backend {backend}: no answer within {after:?}")]
    BackendTimeout {
        /// Backend address.
        backend: String,
        /// The timeout.
        after: Duration,
    },
    /// The server sent something that is not the protocol.
    #[error("backend {backend} broke the protocol: {detail}")]
    BackendProtocol {
        /// Backend address.
        backend: String,
        /// What it sent.
        detail: String,
    },
    /// The server closed or failed mid-handshake.
    #[error("backend {backend} closed the connection during login: {detail}")]
    BackendLost {
        /// Backend address.
        backend: String,
        /// Cause.
        detail: String,
    },
    /// TLS to the server failed (no TLS offered, bad certificate, ...).
    #[error("TLS to backend {backend} failed: {detail}")]
    BackendTls {
        /// Backend address.
        backend: String,
        /// Cause.
        detail: String,
    },
    /// The client's packet is not valid.
    #[error("malformed client packet: {0}")]
    ClientMalformed(WireError),
    /// The client's packet is larger than pre-auth packets may be.
    #[error("client packet too large before login: {0}")]
    ClientTooLarge(WireError),
    /// The client's packet carried the wrong sequence id.
    #[error("client packet out of order: sequence id {got}, expected {expected}")]
    ClientOutOfOrder {
        /// Expected id.
        expected: u8,
        /// Received id.
        got: u8,
    },
    /// The client asked for something flexgate does not offer.
    #[error("client asked for {0}, which flexgate did not offer")]
    ClientUnsupported(&'static str),
    /// The TLS handshake with the client failed.
    #[error("client TLS handshake failed: {0}")]
    ClientTls(String),
    /// The client closed or failed the connection.
    #[error("client went away: {0}")]
    ClientGone(String),
    /// The admission decision refused the client.
    #[error("refused by flexgate: {}", .0.as_str())]
    Denied(Denial),
    /// The live server no longer offers capabilities that flexgate's greeting promised and
    /// the client uses (it was upgraded, downgraded or reconfigured).
    #[error("backend {backend} no longer offers capabilities {missing:#010x} that the client uses")]
    ServerChanged {
        /// Backend address.
        backend: String,
        /// The missing capability bits.
        missing: u32,
    },
    /// Encrypting the password to the server's key failed.
    #[error("cannot protect the password for backend {backend}: {detail}")]
    PasswordProtection {
        /// Backend address.
        backend: String,
        /// Cause.
        detail: String,
    },
    /// flexgate ended the auth exchange: relaying it would expose the password or fail.
    #[error("login refused by flexgate: {0:?}")]
    AuthRefused(AuthRefusal),
    /// The handshake deadline passed.
    #[error("login not completed within {0:?}")]
    Timeout(Duration),
    /// A trusted peer's PROXY protocol header was missing or malformed.
    #[error("bad PROXY protocol header from a trusted peer: {0}")]
    ProxyHeader(String),
    /// flexgate refused an Entra login (or a password login in `entra` mode) for `user`.
    #[error("Entra login refused for user {user}: {}", refused.reason)]
    Entra {
        /// The login name, loggable.
        user: String,
        /// Why, and whom the token named.
        refused: Box<crate::auth::entra::Refused>,
    },
    /// flexgate's own login to the server as the mapped account failed.
    #[error("login to backend {backend} as the mapped account {backend_user} failed: {detail}")]
    MappedLogin {
        /// The login name, loggable.
        user: String,
        /// The server account.
        backend_user: String,
        /// The server.
        backend: String,
        /// The server's error code, if it refused.
        code: Option<u16>,
        /// What happened.
        detail: String,
    },
}

/// An ERR packet flexgate sends on its own behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// MySQL error code.
    pub code: u16,
    /// SQLSTATE.
    pub sql_state: &'static [u8; 5],
    /// Message for the user: what happened and what to do.
    pub message: String,
}

impl SessionError {
    /// The ERR packet to send, if the protocol still allows one and the client is still there.
    pub fn refusal(&self) -> Option<Refusal> {
        let r = |code, sql_state, message: String| Some(Refusal { code, sql_state, message });
        match self {
            Self::BackendUnreachable { backend, source } => r(
                codes::CONN_HOST_ERROR,
                codes::STATE_GENERAL,
                format!(
                    "flexgate cannot connect to the database server {backend} ({source}); try again later or tell the operator"
                ),
            ),
            Self::BackendTimeout { backend, after } => r(
                codes::CONN_HOST_ERROR,
                codes::STATE_GENERAL,
                format!(
                    "flexgate cannot connect to the database server {backend} (no answer within {after:?}); try again later or tell the operator"
                ),
            ),
            Self::BackendProtocol { backend, .. } | Self::BackendLost { backend, .. } => r(
                codes::UNKNOWN_ERROR,
                codes::STATE_GENERAL,
                format!(
                    "Lost connection to the database server {backend} during login; try again, and tell the operator if it persists"
                ),
            ),
            Self::BackendTls { backend, .. } => r(
                codes::UNKNOWN_ERROR,
                codes::STATE_GENERAL,
                format!("flexgate could not establish TLS to the database server {backend}; tell the operator"),
            ),
            Self::PasswordProtection { backend, .. } => r(
                codes::ACCESS_DENIED,
                codes::STATE_ACCESS,
                format!("flexgate could not encrypt the password for the database server {backend}; tell the operator"),
            ),
            Self::ClientMalformed(e) => r(
                codes::HANDSHAKE_ERROR,
                codes::STATE_COMM,
                format!("Bad handshake: {e}; use a MySQL or MariaDB client"),
            ),
            Self::ClientTooLarge(_) => r(
                codes::PACKET_TOO_LARGE,
                codes::STATE_COMM,
                format!(
                    "Got a packet bigger than {} bytes before login; use smaller connection attributes",
                    crate::protocol::MAX_PRE_AUTH_PAYLOAD
                ),
            ),
            Self::ClientOutOfOrder { .. } => {
                r(codes::PACKETS_OUT_OF_ORDER, codes::STATE_COMM, "Got packets out of order".into())
            }
            Self::ClientUnsupported(what) => r(
                codes::HANDSHAKE_ERROR,
                codes::STATE_COMM,
                format!("Bad handshake: flexgate does not support {what}; connect without it"),
            ),
            Self::AuthRefused(AuthRefusal::CleartextOverNetwork) => r(
                codes::NOT_SUPPORTED_AUTH_MODE,
                codes::STATE_AUTH_MODE,
                "flexgate will not send this account's cleartext password to the database server over an \
                 unencrypted network connection; the operator must enable backend TLS (backend.tls.mode)"
                    .into(),
            ),
            Self::AuthRefused(AuthRefusal::FullAuthNeedsTls) => r(
                codes::NOT_SUPPORTED_AUTH_MODE,
                codes::STATE_AUTH_MODE,
                "this account's password must travel over a secure connection; connect to flexgate with TLS".into(),
            ),
            Self::Denied(Denial::InsecureTransport) => r(
                codes::SECURE_TRANSPORT_REQUIRED,
                codes::STATE_GENERAL,
                "Connections using insecure transport are prohibited while --require_secure_transport=ON.".into(),
            ),
            Self::Denied(Denial::Compression) => r(
                codes::HANDSHAKE_ERROR,
                codes::STATE_COMM,
                "Bad handshake: flexgate does not support protocol compression (--compress); connect without it".into(),
            ),
            Self::Denied(Denial::NoPluginAuth) => r(
                codes::NOT_SUPPORTED_AUTH_MODE,
                codes::STATE_AUTH_MODE,
                "Client does not support authentication protocol requested by server: flexgate needs a client \
                 with pluggable authentication (CLIENT_PLUGIN_AUTH, MySQL 5.5 or later); upgrade the client, or \
                 ask the operator for a listener with greeting = \"server\""
                    .into(),
            ),
            Self::ServerChanged { backend, .. } => r(
                codes::HANDSHAKE_ERROR,
                codes::STATE_COMM,
                format!(
                    "The database server {backend} changed (upgraded or reconfigured) while you logged in; connect again"
                ),
            ),
            Self::Denied(Denial::HostNotAllowed(ip)) => r(
                codes::HOST_NOT_PRIVILEGED,
                codes::STATE_GENERAL,
                format!("Host '{ip}' is not allowed to connect to this MySQL server"),
            ),
            Self::Denied(Denial::UntrustedProxyHeader(ip)) => r(
                codes::HOST_NOT_PRIVILEGED,
                codes::STATE_GENERAL,
                format!(
                    "Host '{ip}' sent a PROXY protocol header but is not a trusted proxy; the operator must add it to \
                     proxy_protocol.trusted, or the client must connect without the header"
                ),
            ),
            Self::Denied(Denial::ShuttingDown) => r(
                codes::SERVER_SHUTDOWN,
                codes::STATE_COMM,
                "flexgate is shutting down and takes no new connections; connect again (a restarted or other \
                 instance will answer)"
                    .into(),
            ),
            Self::Denied(Denial::KeyUnavailable(since)) => r(
                codes::SERVER_OFFLINE_MODE,
                codes::STATE_GENERAL,
                format!(
                    "The server is inaccessible: its data-encryption key has been unavailable since {}, and flexgate \
                     refuses new connections until the key is available again. Ask the operator to restore access to \
                     the key (flexgate status shows the failing check)",
                    httpdate::fmt_http_date(*since)
                ),
            ),
            Self::Denied(d @ (Denial::TokenNeedsTls | Denial::PasswordDisabled)) => r(
                codes::ACCESS_DENIED,
                codes::STATE_ACCESS,
                format!(
                    "Access denied: {}",
                    match d {
                        Denial::TokenNeedsTls => crate::auth::entra::EntraRefusal::NeedsTls,
                        _ => crate::auth::entra::EntraRefusal::PasswordDisabled,
                    }
                ),
            ),
            Self::Denied(Denial::TooManyConnections(hit)) => r(
                codes::CON_COUNT_ERROR,
                codes::STATE_AUTH_MODE,
                format!("Too many connections: {hit}; try again later"),
            ),
            Self::ProxyHeader(detail) => {
                r(codes::HANDSHAKE_ERROR, codes::STATE_COMM, format!("Bad handshake: {detail}"))
            }
            Self::Entra { user, refused } => r(
                codes::ACCESS_DENIED,
                codes::STATE_ACCESS,
                format!("Access denied for user '{user}': {}", refused.reason),
            ),
            // The mapped account's own refusals that the user can act on (an unknown or
            // forbidden database, a resource limit) pass through with the server's message.
            Self::MappedLogin { code: Some(code), detail, .. } if *code != codes::ACCESS_DENIED => {
                r(*code, codes::STATE_GENERAL, detail.clone())
            }
            Self::MappedLogin { user, .. } => r(
                codes::ACCESS_DENIED,
                codes::STATE_ACCESS,
                format!(
                    "Access denied for user '{user}': your token is valid, but flexgate could not log in to the \
                     database server as the account it maps to; tell the operator (flexgate's log has the server's \
                     answer)"
                ),
            ),
            Self::ClientTls(_) | Self::ClientGone(_) | Self::Timeout(_) => None,
        }
    }

    /// Who is at fault.
    pub fn blame(&self) -> Blame {
        match self {
            Self::BackendUnreachable { .. }
            | Self::BackendTimeout { .. }
            | Self::BackendProtocol { .. }
            | Self::BackendLost { .. }
            | Self::BackendTls { .. }
            | Self::PasswordProtection { .. }
            | Self::ServerChanged { .. }
            | Self::MappedLogin { .. } => Blame::Server,
            Self::Denied(_) | Self::AuthRefused(_) | Self::Entra { .. } => Blame::Policy,
            Self::ClientMalformed(_)
            | Self::ClientTooLarge(_)
            | Self::ClientOutOfOrder { .. }
            | Self::ClientUnsupported(_)
            | Self::ClientTls(_)
            | Self::ClientGone(_)
            | Self::ProxyHeader(_)
            | Self::Timeout(_) => Blame::Client,
        }
    }

    /// The outcome it gives the session.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::BackendUnreachable { .. } | Self::BackendTimeout { .. } => Outcome::BackendUnavailable,
            Self::BackendProtocol { .. } | Self::BackendLost { .. } => Outcome::BackendError,
            Self::BackendTls { .. } => Outcome::BackendTlsFailed,
            Self::PasswordProtection { .. } => Outcome::PasswordProtectionFailed,
            Self::ClientMalformed(_) | Self::ClientOutOfOrder { .. } | Self::ClientUnsupported(_) => {
                Outcome::ProtocolError
            }
            Self::ClientTooLarge(_) => Outcome::PacketTooLarge,
            Self::ClientTls(_) => Outcome::TlsFailed,
            Self::ClientGone(_) => Outcome::ClientGone,
            Self::Denied(Denial::InsecureTransport) => Outcome::InsecureTransportRefused,
            Self::Denied(Denial::Compression) => Outcome::ProtocolError,
            Self::Denied(Denial::NoPluginAuth) => Outcome::PluginAuthRequired,
            Self::Denied(Denial::HostNotAllowed(_)) => Outcome::HostNotAllowed,
            Self::Denied(Denial::TooManyConnections(_)) => Outcome::TooManyConnections,
            Self::Denied(Denial::UntrustedProxyHeader(_)) | Self::ProxyHeader(_) => Outcome::ProxyHeaderRefused,
            Self::Denied(Denial::ShuttingDown) => Outcome::ShuttingDown,
            Self::Denied(Denial::KeyUnavailable(_)) => Outcome::KeyUnavailable,
            Self::Denied(Denial::TokenNeedsTls | Denial::PasswordDisabled) => Outcome::EntraRefused,
            Self::ServerChanged { .. } => Outcome::ServerChanged,
            Self::AuthRefused(_) => Outcome::AuthRefused,
            Self::Timeout(_) => Outcome::HandshakeTimeout,
            Self::Entra { .. } => Outcome::EntraRefused,
            Self::MappedLogin { .. } => Outcome::MappedLoginFailed,
        }
    }
}

impl SessionError {
    /// Which of the gate's refusals this is (and its label), if it is one: those are counted
    /// per listener and logged rate-limited.
    pub fn refused_at_connect(&self) -> Option<(GateRefusal, &'static str)> {
        match self {
            Self::Denied(d @ Denial::HostNotAllowed(_)) => Some((GateRefusal::Firewall, d.as_str())),
            Self::Denied(d @ Denial::TooManyConnections(_)) => Some((GateRefusal::Limit, d.as_str())),
            Self::Denied(d @ Denial::UntrustedProxyHeader(_)) => Some((GateRefusal::ProxyHeader, d.as_str())),
            Self::Denied(d @ Denial::ShuttingDown) => Some((GateRefusal::Draining, d.as_str())),
            Self::Denied(d @ Denial::KeyUnavailable(_)) => Some((GateRefusal::KeyUnavailable, d.as_str())),
            Self::ProxyHeader(_) => Some((GateRefusal::ProxyHeader, "bad_proxy_header")),
            _ => None,
        }
    }

    /// How the login attempt it ended is recorded.
    pub fn login_outcome(&self) -> LoginOutcome {
        match self {
            Self::BackendUnreachable { .. } | Self::BackendTimeout { .. } => LoginOutcome::ServerUnreachable,
            Self::BackendProtocol { .. }
            | Self::BackendLost { .. }
            | Self::BackendTls { .. }
            | Self::PasswordProtection { .. }
            | Self::ServerChanged { .. } => LoginOutcome::ServerError,
            Self::Denied(d) => LoginOutcome::Refused { reason: d.as_str(), code: self.code() },
            Self::AuthRefused(r) => LoginOutcome::Refused { reason: r.as_str(), code: self.code() },
            Self::Timeout(_) => LoginOutcome::Timeout,
            Self::ClientMalformed(_)
            | Self::ClientTooLarge(_)
            | Self::ClientOutOfOrder { .. }
            | Self::ClientUnsupported(_)
            | Self::ProxyHeader(_) => LoginOutcome::ClientError,
            Self::ClientTls(_) => LoginOutcome::TlsFailed,
            Self::ClientGone(_) => LoginOutcome::ClientGone,
            Self::Entra { refused, .. } => LoginOutcome::Refused { reason: refused.reason.as_str(), code: self.code() },
            Self::MappedLogin { code: Some(code), .. } => LoginOutcome::ServerRefused { code: *code },
            Self::MappedLogin { code: None, .. } => LoginOutcome::ServerError,
        }
    }

    fn code(&self) -> u16 {
        self.refusal().map_or(0, |r| r.code)
    }
}
