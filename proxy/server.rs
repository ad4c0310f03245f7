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
use crate::metrics::Metrics;
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

/// Everything built from a config, ready to bind. Building it is the whole of `check-config`
/// beyond parsing: certificates and keys are loaded and matched here.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<(SocketAddr, Arc<ListenerContext>)>,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// Loads TLS material and assembles per-listener contexts.
    pub fn build(cfg: &Config) -> Result<Self, SetupError> {
        let file = || DisplayPath(cfg.source.clone());
        let server_tls = tls::server_config(&cfg.tls).map_err(|source| SetupError::Tls { file: file(), source })?;
        let backend_tls =
            tls::backend_config(&cfg.backend).map_err(|source| SetupError::Tls { file: file(), source })?;
        let backend = Arc::new(Backend::new(&cfg.backend, backend_tls));
        let metrics = Arc::new(Metrics::default());
        let acceptor = server_tls.map(tokio_rustls::TlsAcceptor::from);
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| {
                let ctx = ListenerContext {
                    listener: l.name.clone(),
                    handshake_timeout: l.handshake_timeout,
                    tls: acceptor.clone(),
                    min_tls: cfg.tls.min_version,
                    require_secure_transport: cfg.tls.require_secure_transport,
                    backend: backend.clone(),
                    metrics: metrics.clone(),
                };
                (l.address, Arc::new(ctx))
            })
            .collect();
        Ok(Self { listeners, metrics })
    }

    /// Opens every listening socket, or none.
    pub async fn bind(self) -> Result<Bound, SetupError> {
        let mut bound = Vec::with_capacity(self.listeners.len());
        for (address, ctx) in self.listeners {
            let l = TcpListener::bind(address).await.map_err(|source| SetupError::Bind {
                listener: ctx.listener.clone(),
                address,
                source,
            })?;
            bound.push((l, ctx));
        }
        Ok(Bound { listeners: bound, metrics: self.metrics })
    }
}

/// Listening sockets, ready to serve.
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<(TcpListener, Arc<ListenerContext>)>,
    metrics: Arc<Metrics>,
}

impl Bound {
    /// Each listener's name and actual address (useful when the config asked for port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.iter().filter_map(|(l, ctx)| l.local_addr().ok().map(|a| (ctx.listener.clone(), a))).collect()
    }

    /// Counters shared by all sessions.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and gives open sessions
    /// `grace` to finish before returning (their tasks are then dropped, closing the sockets).
    pub async fn serve(self, shutdown: CancellationToken, grace: Duration) {
        let tasks = TaskTracker::new();
        for (listener, ctx) in self.listeners {
            tasks.spawn(accept_loop(listener, ctx, shutdown.clone(), tasks.clone()));
        }
        shutdown.cancelled().await;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            warn!(grace = ?grace, open = self.metrics.active(), "sessions still open after the grace period; closing them");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(listener = %ctx.listener, address = %addr, "listening");
    }
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and aborted handshakes are transient: back off, keep serving.
                    error!(listener = %ctx.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // Sessions outlive the accept loop by the grace period only: `serve` stops waiting for
        // them then, and dropping the runtime closes what is left.
        tasks.spawn(session::run(sock, peer, ctx.clone()));
    }
}
