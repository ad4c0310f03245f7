//! The admission decision: the one place where flexgate decides whether a client may go on,
//! and how it authenticates.
//!
//! Pure: plain data in, a [`Decision`] out, tested without sockets. The session asks at each
//! point where it could refuse: when a client connects (nothing has been sent yet), and when it
//! has identified itself (a HandshakeResponse or a `COM_CHANGE_USER`). The network firewall and
//! the key breaker will decide at [`Request::Connect`]; the choice between the server's own
//! authentication and Entra tokens at [`Request::Login`]. Each becomes a new field of the
//! input and a new variant of the output, not a new code path in the session.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::events::LoginKind;
use crate::protocol::Capabilities;

pub use crate::config::GreetingMode;

/// A listener's rules, as the admission decision needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// MySQL's `require_secure_transport`.
    pub require_secure_transport: bool,
    /// Whose greeting the client got.
    pub greeting: GreetingMode,
}

/// The client as flexgate knows it when deciding.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The client's address, as accepted (later: as the PROXY protocol header says).
    pub addr: SocketAddr,
    /// The negotiated TLS version, or `None` for plaintext. A Unix socket will count as secure.
    pub tls: Option<&'static str>,
    /// Wall-clock time of the decision.
    pub now: SystemTime,
}

/// What the client said about itself.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Login or change-user.
    pub kind: LoginKind,
    /// Account name.
    pub user: &'a [u8],
    /// Initial schema.
    pub database: Option<&'a [u8]>,
    /// The client's capability flags (from its login, for a change-user too).
    pub capabilities: Capabilities,
}

/// The points at which flexgate decides.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// Accepted; nothing has been sent to the client or the server.
    Connect(Peer<'a>),
    /// The client identified itself; the server has not seen its credentials.
    Login(Peer<'a>, Claim<'a>),
}

/// How an admitted login authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPath {
    /// The server checks the client's password: flexgate relays the exchange.
    Server,
}

/// The outcome of a decision.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Greet the client (after [`Request::Connect`]).
    Greet,
    /// Authenticate this way (after [`Request::Login`]).
    Authenticate(AuthPath),
    /// Send the client this refusal and close.
    Refuse(Denial),
}

/// Why flexgate refused a client on its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Plaintext on a listener that requires TLS (ERR 3159).
    InsecureTransport,
    /// Protocol compression, which flexgate never offers (ERR 1043).
    Compression,
    /// No `CLIENT_PLUGIN_AUTH`: the client cannot follow the auth switch that flexgate's
    /// greeting depends on (ERR 1251).
    NoPluginAuth,
}

impl Denial {
    /// A short stable label for logs, events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InsecureTransport => "insecure_transport",
            Self::Compression => "compression",
            Self::NoPluginAuth => "no_plugin_auth",
        }
    }
}

/// Decides `request` under `policy`.
pub fn decide(policy: &Policy, request: &Request<'_>) -> Decision {
    match request {
        Request::Connect(_) => Decision::Greet,
        Request::Login(peer, claim) => {
            if policy.require_secure_transport && peer.tls.is_none() {
                return Decision::Refuse(Denial::InsecureTransport);
            }
            let caps = claim.capabilities;
            if caps.contains(Capabilities::COMPRESS) || caps.contains(Capabilities::ZSTD_COMPRESSION) {
                return Decision::Refuse(Denial::Compression);
            }
            if policy.greeting == GreetingMode::Flexgate && !caps.contains(Capabilities::PLUGIN_AUTH) {
                return Decision::Refuse(Denial::NoPluginAuth);
            }
            Decision::Authenticate(AuthPath::Server)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODERN: Capabilities = Capabilities(0x0000_0200 | 0x8000 | 0x0008_0000);

    fn peer(tls: bool) -> Peer<'static> {
        Peer {
            listener: "public",
            addr: SocketAddr::from(([192, 0, 2, 1], 4000)),
            tls: tls.then_some("TLSv1.3"),
            now: SystemTime::UNIX_EPOCH,
        }
    }

    fn login(caps: Capabilities) -> Claim<'static> {
        Claim { kind: LoginKind::Connect, user: b"app", database: None, capabilities: caps }
    }

    #[test]
    fn connect_is_greeted() {
        let p = Policy { require_secure_transport: true, greeting: GreetingMode::Flexgate };
        assert_eq!(decide(&p, &Request::Connect(peer(false))), Decision::Greet);
    }

    #[test]
    fn login_table() {
        use Denial::*;
        use GreetingMode::*;
        let compress = MODERN.with(Capabilities::COMPRESS);
        let zstd = MODERN.with(Capabilities::ZSTD_COMPRESSION);
        let legacy = MODERN.without(Capabilities::PLUGIN_AUTH);
        let ok = Decision::Authenticate(AuthPath::Server);
        for (require, tls, mode, caps, want) in [
            (true, true, Flexgate, MODERN, ok),
            (true, false, Flexgate, MODERN, Decision::Refuse(InsecureTransport)),
            (false, false, Flexgate, MODERN, ok),
            (false, true, Server, compress, Decision::Refuse(Compression)),
            (false, true, Flexgate, zstd, Decision::Refuse(Compression)),
            (false, true, Flexgate, legacy, Decision::Refuse(NoPluginAuth)),
            (false, true, Server, legacy, ok),
            // Transport is checked first: nothing else about a plaintext client matters.
            (true, false, Flexgate, legacy, Decision::Refuse(InsecureTransport)),
        ] {
            let policy = Policy { require_secure_transport: require, greeting: mode };
            assert_eq!(
                decide(&policy, &Request::Login(peer(tls), login(caps))),
                want,
                "{require} {tls} {mode:?} {caps:?}"
            );
        }
    }

    #[test]
    fn change_user_is_decided_like_a_login() {
        let p = Policy { require_secure_transport: true, greeting: GreetingMode::Flexgate };
        let claim = Claim { kind: LoginKind::ChangeUser, ..login(MODERN) };
        assert_eq!(decide(&p, &Request::Login(peer(false), claim)), Decision::Refuse(Denial::InsecureTransport));
        assert_eq!(decide(&p, &Request::Login(peer(true), claim)), Decision::Authenticate(AuthPath::Server));
    }
}
