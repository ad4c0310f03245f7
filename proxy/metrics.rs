//! Counters the sessions record into: plain atomics with a fixed, bounded label set (never a
//! user name or an address), so that recording costs one relaxed add and cannot grow memory.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a session ended; the label of its closing log line and of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Logged in; the client sent COM_QUIT (then closed, with or without a TLS close_notify).
    Quit,
    /// Logged in; the client closed without COM_QUIT (MySQL's "aborted client").
    ClientClosed,
    /// Logged in; the server closed first (KILL, `wait_timeout`, shutdown).
    ServerClosed,
    /// Logged in; the relay ended with a socket error.
    RelayError,
    /// The server refused the login (its ERR was relayed).
    AuthFailed,
    /// The server refused the connection before greeting (its ERR was relayed).
    BackendRefused,
    /// The server could not be reached in time (ERR 2003).
    BackendUnavailable,
    /// The server broke off or broke the protocol during login.
    BackendError,
    /// TLS to the server failed.
    BackendTlsFailed,
    /// The password could not be encrypted to the server's key.
    PasswordProtectionFailed,
    /// The client sent a malformed or out-of-order packet.
    ProtocolError,
    /// The client sent a packet above the pre-auth limit.
    PacketTooLarge,
    /// The client's TLS handshake failed.
    TlsFailed,
    /// The client closed before the login completed.
    ClientGone,
    /// The client did not use TLS where it is required (ERR 3159).
    InsecureTransportRefused,
    /// flexgate refused a login that would expose a password (ERR 1251).
    AuthRefused,
    /// The login did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// The client cannot follow an auth switch (no CLIENT_PLUGIN_AUTH; ERR 1251).
    PluginAuthRequired,
    /// The live server no longer offered what the greeting promised.
    ServerChanged,
    /// The firewall refused the client's address (ERR 1130).
    HostNotAllowed,
    /// A connection limit refused the client (ERR 1040).
    TooManyConnections,
    /// A PROXY protocol header was missing, malformed, or from a peer not trusted to send one.
    ProxyHeaderRefused,
}

impl Outcome {
    /// Every outcome, in counter order.
    pub const ALL: [Self; 22] = [
        Self::Quit,
        Self::ClientClosed,
        Self::ServerClosed,
        Self::RelayError,
        Self::AuthFailed,
        Self::BackendRefused,
        Self::BackendUnavailable,
        Self::BackendError,
        Self::BackendTlsFailed,
        Self::PasswordProtectionFailed,
        Self::ProtocolError,
        Self::PacketTooLarge,
        Self::TlsFailed,
        Self::ClientGone,
        Self::InsecureTransportRefused,
        Self::AuthRefused,
        Self::HandshakeTimeout,
        Self::PluginAuthRequired,
        Self::ServerChanged,
        Self::HostNotAllowed,
        Self::TooManyConnections,
        Self::ProxyHeaderRefused,
    ];

    /// The label used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quit => "quit",
            Self::ClientClosed => "client_closed",
            Self::ServerClosed => "server_closed",
            Self::RelayError => "relay_error",
            Self::AuthFailed => "auth_failed",
            Self::BackendRefused => "backend_refused",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendError => "backend_error",
            Self::BackendTlsFailed => "backend_tls_failed",
            Self::PasswordProtectionFailed => "password_protection_failed",
            Self::ProtocolError => "protocol_error",
            Self::PacketTooLarge => "packet_too_large",
            Self::TlsFailed => "tls_failed",
            Self::ClientGone => "client_gone",
            Self::InsecureTransportRefused => "insecure_transport_refused",
            Self::AuthRefused => "auth_refused",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::PluginAuthRequired => "plugin_auth_required",
            Self::ServerChanged => "server_changed",
            Self::HostNotAllowed => "host_not_allowed",
            Self::TooManyConnections => "too_many_connections",
            Self::ProxyHeaderRefused => "proxy_header_refused",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Process-wide counters, shared by `Arc` (no global).
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    active: AtomicU64,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    tls_handshake_failures: AtomicU64,
}

impl Metrics {
    /// A connection was accepted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A session ended.
    pub fn ended(&self, outcome: Outcome) {
        // Counted before `active` drops, so that whoever sees a session gone sees its outcome.
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A client TLS handshake failed.
    pub fn tls_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Sessions now open.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Sessions that ended with `outcome`.
    pub fn outcome_total(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Client TLS handshakes that failed.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_outcome_in_discriminant_order() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o}");
        }
    }
}
