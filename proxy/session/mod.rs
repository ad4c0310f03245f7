//! One client connection, from accept to close, as an explicit sequence of phases.
//!
//! ```text
//! Accepted ─► Greeted ─► (TLS) ─► Identified ─► Admitted ─► Connected ─► Authenticated ─► Relaying
//!    │           │                    │             │            │              │            ▲  │
//!    │           │                    │             │            │              │            │  ▼
//!    │           │                    │             │            │              │        change-user
//!    └───────────┴────────────────────┴─────────────┴────────────┴──► refused with an ERR packet, or closed
//! ```
//! flexgate greets the client itself, from the server profile, with its own nonce and
//! connection id. The server is dialled only once the client has identified itself and the
//! admission decision has let it through, so an unauthenticated client costs the server
//! nothing. The server then receives the client's login without auth data and with a plugin
//! name no account uses, and answers with an auth switch carrying its own nonce, which is
//! relayed: the client sees exactly one switch. With `greeting = "server"` the server is
//! dialled at accept and its greeting relayed instead.
//!
//! Everything before the relay runs under one deadline (`handshake_timeout`) and reads packets
//! of bounded size. The relay follows command boundaries from the client, to translate `KILL`
//! and to pause for `COM_CHANGE_USER`, which goes through the same decision as a login.
//!
//! Files: `driver` does the I/O; `admission`, `handshake`, `policy`, `auth`, `kill` and `scan`
//! decide, without sockets.

mod admission;
mod auth;
mod driver;
mod error;
mod handshake;
mod kill;
mod policy;
mod relay;
mod scan;
mod stream;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use admission::{AuthPath, Claim, Decision, Denial, GreetingMode, Peer, Policy, Request, decide};
pub use auth::AuthRefusal;
pub use driver::probe;
pub use error::{Blame, Refusal, SessionError};

use crate::backend::Backend;
use crate::config::{ConnectionLimits, TlsVersion};
use crate::events::{ClientAddr, LoginEvents};
use crate::firewall::{IpSet, ListenerGate, Rules};
use crate::health::BackendWatch;
use crate::metrics::ListenerMetrics;
use crate::profile::ProfileCell;
use crate::registry::SessionRegistry;

/// What every session on one listener shares. Built once per listener and config: a reload
/// builds a new one, and each session keeps the one it was accepted under.
pub struct ListenerContext {
    /// The listener's configured name, for logs and events.
    pub listener: Arc<str>,
    /// Deadline for everything before the login completes (and for each change-user).
    pub handshake_timeout: Duration,
    /// Client-facing TLS, if a certificate is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The TLS floor, to explain handshake failures.
    pub min_tls: TlsVersion,
    /// Refuse clients that did not upgrade to TLS.
    pub require_secure_transport: bool,
    /// Whose greeting clients get.
    pub greeting: GreetingMode,
    /// Allow and deny lists.
    pub firewall: Rules,
    /// Connection limits, checked against `gate`'s counts.
    pub limits: ConnectionLimits,
    /// Peers that must send a PROXY protocol header, and whose headers are believed; `None`
    /// when the listener takes no headers.
    pub proxy_protocol: Option<IpSet>,
    /// The listener's counts and refusal log, kept across reloads.
    pub gate: Arc<ListenerGate>,
    /// The config generation this context was built from.
    pub generation: u64,
    /// The server.
    pub backend: Arc<Backend>,
    /// What flexgate's greeting says about the server; shared by all listeners.
    pub profile: Arc<ProfileCell>,
    /// Sessions by flexgate's connection id, for `KILL`; shared by all listeners.
    pub registry: Arc<SessionRegistry>,
    /// Where login events go.
    pub events: LoginEvents,
    /// The listener's counters.
    pub metrics: ListenerMetrics,
    /// Where every dial of the server reports (readiness, dial metrics).
    pub dials: Arc<BackendWatch>,
    /// Cancelled when flexgate starts to drain: new clients are then refused.
    pub draining: tokio_util::sync::CancellationToken,
    /// The key breaker's verdict.
    pub key: Arc<crate::breaker::KeyGate>,
    /// How clients log in on this listener.
    pub auth_mode: crate::config::AuthMode,
    /// Entra token logins, when `[auth.entra]` is configured.
    pub entra: Option<Arc<crate::auth::entra::Entra>>,
}

impl ListenerContext {
    /// The listener's rules for the admission decision.
    pub fn policy(&self) -> Policy<'_> {
        Policy {
            require_secure_transport: self.require_secure_transport,
            greeting: self.greeting,
            firewall: &self.firewall,
            draining: self.draining.is_cancelled(),
            key_unavailable_since: self.key.refusing_since(),
            auth_mode: self.auth_mode,
            entra: self.entra.as_deref(),
        }
    }
}

impl std::fmt::Debug for ListenerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContext")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("tls", &self.tls.is_some())
            .field("min_tls", &self.min_tls)
            .field("require_secure_transport", &self.require_secure_transport)
            .field("greeting", &self.greeting)
            .field("firewall", &self.firewall)
            .field("limits", &self.limits)
            .field("proxy_protocol", &self.proxy_protocol.is_some())
            .field("generation", &self.generation)
            .field("backend", &self.backend)
            .field("auth_mode", &self.auth_mode)
            .finish_non_exhaustive()
    }
}

/// Where an accepted connection came from, as the socket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The peer: the client itself, or the balancer in front of it.
    pub peer: ClientAddr,
    /// The address it connected to (for the PROXY header flexgate sends the server).
    pub local: Option<SocketAddr>,
}

/// Serves one accepted client connection to its end. Never panics on peer input; every
/// failure ends in a log line (and, where the protocol allows, an ERR packet to the client).
/// Generic over the client's transport: the server passes TCP and Unix streams, tests pipes.
pub async fn run<C>(client: C, origin: Origin, ctx: Arc<ListenerContext>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    driver::Session::new(client, origin, ctx).run().await;
}
