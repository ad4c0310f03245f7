//! The admission decision: the one place where flexgate decides whether a client may go on,
//! and how it authenticates.
//!
//! Pure: plain data in, a [`Decision`] out, tested without sockets. The session asks at each
//! point where it could refuse: when a client connects (nothing has been sent yet), and when it
//! has identified itself (a HandshakeResponse or a `COM_CHANGE_USER`). The network firewall
//! and the key breaker decide at [`Request::Connect`]; the choice between the server's
//! own authentication and Entra tokens at [`Request::Login`]. Each is a field of the input and
//! a variant of the output, not a new code path in the session.
//!
//! Connection limits are not here: they are counts that change with every connection, kept
//! by [`crate::firewall::Quota`], whose own check is pure in the same way.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::auth::entra::Entra;
use crate::config::AuthMode;
use crate::events::{ClientAddr, LoginKind};
use crate::firewall::{LimitHit, Rules, Verdict};
use crate::protocol::Capabilities;

pub use crate::config::GreetingMode;

/// A listener's rules, as the admission decision needs them.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// MySQL's `require_secure_transport`.
    pub require_secure_transport: bool,
    /// Whose greeting the client got.
    pub greeting: GreetingMode,
    /// The listener's allow and deny lists.
    pub firewall: &'a Rules,
    /// flexgate is shutting down: it takes no new sessions.
    pub draining: bool,
    /// The key breaker is inaccessible: since when the data-encryption key is unavailable.
    pub key_unavailable_since: Option<SystemTime>,
    /// How clients log in on this listener.
    pub auth_mode: AuthMode,
    /// The Entra principal catalog, when `[auth.entra]` is configured.
    pub entra: Option<&'a Entra>,
}

/// The client as flexgate knows it when deciding.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The client's address: as accepted, or as a trusted PROXY protocol header carried it.
    pub addr: ClientAddr,
    /// The negotiated TLS version, or `None` for plaintext.
    pub tls: Option<&'static str>,
    /// Wall-clock time of the decision.
    pub now: SystemTime,
}

impl Peer<'_> {
    /// TLS, or a Unix socket, which MySQL also counts as secure: it never leaves the host.
    pub fn secure_transport(&self) -> bool {
        self.tls.is_some() || self.addr == ClientAddr::Unix
    }
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
    /// The login name is an Entra principal: flexgate takes a token from the client,
    /// validates it, and logs in to the server as the mapped account itself.
    Token,
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
    /// The address is not on the listener's allow list, or is on its deny list (ERR 1130).
    HostNotAllowed(IpAddr),
    /// A connection limit (ERR 1040).
    TooManyConnections(LimitHit),
    /// A PROXY protocol header from a peer that is not in `proxy_protocol.trusted` (ERR 1130:
    /// the header claims an address the peer may not vouch for).
    UntrustedProxyHeader(IpAddr),
    /// flexgate is draining before it stops (ERR 1053, as MySQL during shutdown).
    ShuttingDown,
    /// The key breaker is inaccessible: the server's data-encryption key has been unavailable
    /// since this time, past the grace period (ERR 3032).
    KeyUnavailable(SystemTime),
    /// An Entra principal on a plaintext TCP connection: its token would travel in the clear
    /// (ERR 1045).
    TokenNeedsTls,
    /// A login name that is not an Entra principal, in `entra` mode (ERR 1045).
    PasswordDisabled,
}

impl Denial {
    /// A short stable label for logs, events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InsecureTransport => "insecure_transport",
            Self::Compression => "compression",
            Self::NoPluginAuth => "no_plugin_auth",
            Self::HostNotAllowed(_) => "host_not_allowed",
            Self::TooManyConnections(hit) => hit.key(),
            Self::UntrustedProxyHeader(_) => "untrusted_proxy_header",
            Self::ShuttingDown => "shutting_down",
            Self::KeyUnavailable(_) => "key_unavailable",
            Self::TokenNeedsTls => "token_needs_tls",
            Self::PasswordDisabled => "password_disabled",
        }
    }
}

/// Decides `request` under `policy`.
pub fn decide(policy: &Policy<'_>, request: &Request<'_>) -> Decision {
    match request {
        // A Unix socket's permissions are its access control; IP rules do not apply.
        Request::Connect(peer) => {
            if let ClientAddr::Tcp(a) = peer.addr
                && matches!(policy.firewall.check(a.ip()), Verdict::Denied | Verdict::NotAllowed)
            {
                return Decision::Refuse(Denial::HostNotAllowed(crate::firewall::canonical(a.ip())));
            }
            // After the firewall: a host that may not connect learns nothing else.
            if policy.draining {
                return Decision::Refuse(Denial::ShuttingDown);
            }
            // Before the greeting, so that no server connection is made for a client that
            // would only be refused.
            if let Some(since) = policy.key_unavailable_since {
                return Decision::Refuse(Denial::KeyUnavailable(since));
            }
            Decision::Greet
        }
        Request::Login(peer, claim) => {
            if policy.require_secure_transport && !peer.secure_transport() {
                return Decision::Refuse(Denial::InsecureTransport);
            }
            let caps = claim.capabilities;
            if caps.contains(Capabilities::COMPRESS) || caps.contains(Capabilities::ZSTD_COMPRESSION) {
                return Decision::Refuse(Denial::Compression);
            }
            if policy.greeting == GreetingMode::Flexgate && !caps.contains(Capabilities::PLUGIN_AUTH) {
                return Decision::Refuse(Denial::NoPluginAuth);
            }
            // The auth step: flexgate's catalog decides, never the plugin the client names.
            let principal = policy.entra.is_some_and(|e| e.principal(claim.user).is_some());
            match (policy.auth_mode, principal) {
                (AuthMode::Password, _) | (AuthMode::Both, false) => Decision::Authenticate(AuthPath::Server),
                // On plaintext every name gets the same answer in `entra` mode, so that the
                // refusal does not tell which names are principals.
                (AuthMode::Entra, _) | (_, true) if !peer.secure_transport() => Decision::Refuse(Denial::TokenNeedsTls),
                (AuthMode::Entra, false) => Decision::Refuse(Denial::PasswordDisabled),
                // The token is asked for with an auth switch.
                (_, true) if !caps.contains(Capabilities::PLUGIN_AUTH) => Decision::Refuse(Denial::NoPluginAuth),
                (_, true) => Decision::Authenticate(AuthPath::Token),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODERN: Capabilities = Capabilities(0x0000_0200 | 0x8000 | 0x0008_0000);

    use std::net::SocketAddr;

    use crate::config::SourceRule;

    fn peer(tls: bool) -> Peer<'static> {
        at(SocketAddr::from(([192, 0, 2, 1], 4000)), tls)
    }

    fn at(addr: SocketAddr, tls: bool) -> Peer<'static> {
        Peer {
            listener: "public",
            addr: ClientAddr::Tcp(addr),
            tls: tls.then_some("TLSv1.3"),
            now: SystemTime::UNIX_EPOCH,
        }
    }

    fn open() -> Rules {
        let all = |s: &str| SourceRule::Net(s.parse().unwrap_or_else(|e| panic!("{e}")));
        Rules::compile(&[all("0.0.0.0/0"), all("::/0")], &[], &Default::default(), &mut |_| panic!("no hosts"))
    }

    fn policy(rules: &Rules, require_secure_transport: bool, greeting: GreetingMode) -> Policy<'_> {
        Policy {
            require_secure_transport,
            greeting,
            firewall: rules,
            draining: false,
            key_unavailable_since: None,
            auth_mode: AuthMode::Password,
            entra: None,
        }
    }

    fn login(caps: Capabilities) -> Claim<'static> {
        Claim { kind: LoginKind::Connect, user: b"app", database: None, capabilities: caps }
    }

    #[test]
    fn connect_is_decided_by_the_firewall() {
        let rules = open();
        let p = policy(&rules, true, GreetingMode::Flexgate);
        assert_eq!(decide(&p, &Request::Connect(peer(false))), Decision::Greet);
        let closed = Rules::default();
        let p = policy(&closed, true, GreetingMode::Flexgate);
        let mapped = SocketAddr::from((std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(), 4000));
        // The refusal names the address as MySQL would: the IPv4 form of a mapped address.
        assert_eq!(
            decide(&p, &Request::Connect(at(mapped, false))),
            Decision::Refuse(Denial::HostNotAllowed(IpAddr::from([192, 0, 2, 1])))
        );
        // IP rules do not apply to a Unix socket.
        let unix = Peer { addr: ClientAddr::Unix, ..peer(false) };
        assert_eq!(decide(&p, &Request::Connect(unix)), Decision::Greet);
    }

    #[test]
    fn draining_refuses_new_clients_after_the_firewall() {
        let rules = open();
        let p = Policy { draining: true, ..policy(&rules, true, GreetingMode::Flexgate) };
        assert_eq!(decide(&p, &Request::Connect(peer(false))), Decision::Refuse(Denial::ShuttingDown));
        let unix = Peer { addr: ClientAddr::Unix, ..peer(false) };
        assert_eq!(decide(&p, &Request::Connect(unix)), Decision::Refuse(Denial::ShuttingDown));
        let closed = Rules::default();
        let p = Policy { draining: true, ..policy(&closed, true, GreetingMode::Flexgate) };
        assert_eq!(
            decide(&p, &Request::Connect(peer(false))),
            Decision::Refuse(Denial::HostNotAllowed(IpAddr::from([192, 0, 2, 1])))
        );
    }

    #[test]
    fn an_inaccessible_key_refuses_new_clients_after_the_firewall_and_the_drain() {
        let rules = open();
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let p = Policy { key_unavailable_since: Some(since), ..policy(&rules, true, GreetingMode::Flexgate) };
        assert_eq!(decide(&p, &Request::Connect(peer(true))), Decision::Refuse(Denial::KeyUnavailable(since)));
        let unix = Peer { addr: ClientAddr::Unix, ..peer(false) };
        assert_eq!(decide(&p, &Request::Connect(unix)), Decision::Refuse(Denial::KeyUnavailable(since)));
        let draining = Policy { draining: true, ..p };
        assert_eq!(decide(&draining, &Request::Connect(peer(true))), Decision::Refuse(Denial::ShuttingDown));
        let closed = Rules::default();
        let p = Policy { key_unavailable_since: Some(since), ..policy(&closed, true, GreetingMode::Flexgate) };
        assert_eq!(
            decide(&p, &Request::Connect(peer(false))),
            Decision::Refuse(Denial::HostNotAllowed(IpAddr::from([192, 0, 2, 1])))
        );
        // A session that is already past its greeting is not the admission's to end.
        assert_eq!(decide(&p, &Request::Login(peer(true), login(MODERN))), Decision::Authenticate(AuthPath::Server));
    }

    #[test]
    fn a_unix_socket_is_secure_transport() {
        let rules = open();
        let p = policy(&rules, true, GreetingMode::Flexgate);
        let unix = Peer { addr: ClientAddr::Unix, ..peer(false) };
        assert_eq!(decide(&p, &Request::Login(unix, login(MODERN))), Decision::Authenticate(AuthPath::Server));
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
            let rules = open();
            let policy = policy(&rules, require, mode);
            assert_eq!(
                decide(&policy, &Request::Login(peer(tls), login(caps))),
                want,
                "{require} {tls} {mode:?} {caps:?}"
            );
        }
    }

    #[test]
    fn change_user_is_decided_like_a_login() {
        let rules = open();
        let p = policy(&rules, true, GreetingMode::Flexgate);
        let claim = Claim { kind: LoginKind::ChangeUser, ..login(MODERN) };
        assert_eq!(decide(&p, &Request::Login(peer(false), claim)), Decision::Refuse(Denial::InsecureTransport));
        assert_eq!(decide(&p, &Request::Login(peer(true), claim)), Decision::Authenticate(AuthPath::Server));
    }
}
