//! Listeners, accept loops and shutdown. The only module that spawns long-lived tasks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::backend::Backend;
use crate::config::{Config, DisplayPath};
use crate::events::{self, LoginEvents};
use crate::metrics::Metrics;
use crate::profile::ProfileCell;
use crate::registry::SessionRegistry;
use crate::session::{self, ListenerContext};
use crate::tls::{self, TlsSetupError};

/// Why flexgate could not start serving.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A certificate, key or CA named in the config could not be used.
    #[error("{file}: {source}")]
    Tls {
        /// The config file.
        file: DisplayPath,
        /// What was wrong.
        source: TlsSetupError,
    },
    /// A listening socket could not be opened.
    #[error("listener \"{listener}\": cannot listen on {address}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        address: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// What the running proxy owns and every listener shares.
#[derive(Debug, Clone)]
struct Shared {
    backend: Arc<Backend>,
    profile: Arc<ProfileCell>,
    registry: Arc<SessionRegistry>,
    events: LoginEvents,
    metrics: Arc<Metrics>,
}

/// Everything built from a config, ready to bind. Building it is the whole of `check-config`
/// beyond parsing: certificates and keys are loaded and matched here.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<(SocketAddr, Arc<ListenerContext>)>,
    shared: Shared,
}

impl Proxy {
    /// Loads TLS material and assembles per-listener contexts.
    pub fn build(cfg: &Config) -> Result<Self, SetupError> {
        let file = || DisplayPath(cfg.source.clone());
        let server_tls = tls::server_config(&cfg.tls).map_err(|source| SetupError::Tls { file: file(), source })?;
        let backend_tls =
            tls::backend_config(&cfg.backend).map_err(|source| SetupError::Tls { file: file(), source })?;
        let shared = Shared {
            backend: Arc::new(Backend::new(&cfg.backend, backend_tls)),
            profile: Arc::default(),
            registry: Arc::default(),
            events: LoginEvents::default(),
            metrics: Arc::default(),
        };
        let acceptor = server_tls.map(tokio_rustls::TlsAcceptor::from);
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| {
                let ctx = ListenerContext {
                    listener: l.name.as_str().into(),
                    handshake_timeout: l.handshake_timeout,
                    tls: acceptor.clone(),
                    min_tls: cfg.tls.min_version,
                    require_secure_transport: cfg.tls.require_secure_transport,
                    greeting: l.greeting,
                    backend: shared.backend.clone(),
                    profile: shared.profile.clone(),
                    registry: shared.registry.clone(),
                    events: shared.events.clone(),
                    metrics: shared.metrics.clone(),
                };
                (l.address, Arc::new(ctx))
            })
            .collect();
        Ok(Self { listeners, shared })
    }

    /// Opens every listening socket, or none.
    pub async fn bind(self) -> Result<Bound, SetupError> {
        let mut bound = Vec::with_capacity(self.listeners.len());
        for (address, ctx) in self.listeners {
            let l = TcpListener::bind(address).await.map_err(|source| SetupError::Bind {
                listener: ctx.listener.to_string(),
                address,
                source,
            })?;
            bound.push((l, ctx));
        }
        Ok(Bound { listeners: bound, shared: self.shared })
    }
}

/// Listening sockets, ready to serve.
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<(TcpListener, Arc<ListenerContext>)>,
    shared: Shared,
}

impl Bound {
    /// Each listener's name and actual address (useful when the config asked for port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, ctx)| l.local_addr().ok().map(|a| (ctx.listener.to_string(), a)))
            .collect()
    }

    /// Counters shared by all sessions.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The login events of all sessions.
    pub fn events(&self) -> LoginEvents {
        self.shared.events.clone()
    }

    /// The server profile flexgate greets with.
    pub fn profile(&self) -> Arc<ProfileCell> {
        self.shared.profile.clone()
    }

    /// The live sessions by connection id.
    pub fn registry(&self) -> Arc<SessionRegistry> {
        self.shared.registry.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and gives open sessions
    /// `grace` to finish before returning (their tasks are then dropped, closing the sockets).
    ///
    /// Before the first client, one connection to the server learns the profile that
    /// flexgate's greeting is built from; if the server is down, the first client's session
    /// learns it instead.
    pub async fn serve(self, shutdown: CancellationToken, grace: Duration) {
        let tasks = TaskTracker::new();
        let log = tokio::spawn(events::log_events(self.shared.events.subscribe()));
        let (backend, profile) = (self.shared.backend.clone(), self.shared.profile.clone());
        tasks.spawn(async move {
            if let Err(e) = session::probe(&backend, &profile).await {
                warn!(error = %e, "cannot learn the server profile yet; the first client will wait for the server");
            }
        });
        for (listener, ctx) in self.listeners {
            tasks.spawn(accept_loop(listener, ctx, shutdown.clone(), tasks.clone()));
        }
        shutdown.cancelled().await;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            warn!(grace = ?grace, open = self.shared.metrics.active(), "sessions still open after the grace period; closing them");
        }
        log.abort();
    }
}

/// Pause after a failed accept. EMFILE and ENFILE do not clear by retrying at once: the
/// pending connection stays in the backlog and `accept` fails again immediately.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "accept failed" line per listener in this period; the rest are counted.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(listener = %ctx.listener, address = %addr, greeting = ?ctx.greeting, "listening");
    }
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut suppressed: u64 = 0;
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and aborted handshakes are transient: back off,
                    // keep serving, and say so without flooding the log.
                    let now = tokio::time::Instant::now();
                    if last_log.is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY) {
                        error!(listener = %ctx.listener, error = %e, suppressed, "accept failed; backing off");
                        last_log = Some(now);
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = shutdown.cancelled() => return,
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = sock.set_nodelay(true);
        // Sessions outlive the accept loop by the grace period only: `serve` stops waiting for
        // them then, and dropping the runtime closes what is left.
        tasks.spawn(session::run(sock, peer, ctx.clone()));
    }
}
