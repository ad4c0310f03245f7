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
use crate::config::TlsVersion;
use crate::events::LoginEvents;
use crate::metrics::Metrics;
use crate::profile::ProfileCell;
use crate::registry::SessionRegistry;

/// What every session on one listener shares. Built once per listener.
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
    /// The server.
    pub backend: Arc<Backend>,
    /// What flexgate's greeting says about the server; shared by all listeners.
    pub profile: Arc<ProfileCell>,
    /// Sessions by flexgate's connection id, for `KILL`; shared by all listeners.
    pub registry: Arc<SessionRegistry>,
    /// Where login events go.
    pub events: LoginEvents,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl ListenerContext {
    /// The listener's rules for the admission decision.
    pub fn policy(&self) -> Policy {
        Policy { require_secure_transport: self.require_secure_transport, greeting: self.greeting }
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
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Serves one accepted client connection to its end. Never panics on peer input; every
/// failure ends in a log line (and, where the protocol allows, an ERR packet to the client).
/// Generic over the client's transport: the server passes TCP streams, tests pass pipes.
pub async fn run<C>(client: C, peer: SocketAddr, ctx: Arc<ListenerContext>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    driver::Session::new(client, peer, ctx).run().await;
}
