//! Connecting to the server: TCP or Unix socket, then optionally TLS after the SSLRequest.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use crate::config::{BackendAddress, BackendConfig};
use crate::tls::BackendTls;

/// The server connection.
pub(crate) enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

delegate_async_io!(BackendStream { Tcp, Unix, Tls });

/// How the flexgate → server leg is protected, as MySQL's `is_secure_transport()` sees it,
/// plus whether a plaintext leg stays on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendLeg {
    /// TLS or a Unix socket.
    Secure,
    /// Plaintext TCP to a loopback address: not secure to the server, but never on a wire.
    PlainLoopback,
    /// Plaintext TCP across the network.
    PlainNetwork,
}

impl BackendStream {
    /// Together with the client's leg, decides whether a cleartext password may cross this one.
    pub(crate) fn leg(&self) -> BackendLeg {
        match self {
            Self::Tcp(s) if s.peer_addr().is_ok_and(|a| a.ip().is_loopback()) => BackendLeg::PlainLoopback,
            Self::Tcp(_) => BackendLeg::PlainNetwork,
            Self::Unix(_) | Self::Tls(_) => BackendLeg::Secure,
        }
    }
}

/// Why the server could not be reached or secured.
#[derive(Debug, Error)]
pub enum BackendError {
    /// Connecting failed.
    #[error("{0}")]
    Unreachable(#[source] io::Error),
    /// Connecting (or the greeting) took longer than `backend.connect_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake with the server failed.
    #[error("{0}")]
    Tls(String),
}

/// How to reach the server; built once from config and shared by every session.
#[derive(Debug)]
pub struct Backend {
    address: BackendAddress,
    label: String,
    connect_timeout: Duration,
    tls: Option<BackendTls>,
    proxy_protocol: Option<crate::proxy_protocol::Version>,
}

impl Backend {
    /// Assembles a backend from validated config and its (optional) TLS connector.
    pub fn new(cfg: &BackendConfig, tls: Option<BackendTls>) -> Self {
        Self {
            address: cfg.address.clone(),
            label: cfg.address.to_string(),
            connect_timeout: cfg.connect_timeout,
            tls,
            proxy_protocol: cfg.proxy_protocol,
        }
    }

    /// The address as operators wrote it, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Bound on connecting and on waiting for the server's greeting.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Whether each connection starts with a PROXY header naming the client.
    pub fn sends_proxy_header(&self) -> bool {
        self.proxy_protocol.is_some()
    }

    /// Whether the server leg is upgraded to TLS after the greeting.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens the transport within `backend.connect_timeout`. Every attempt resolves and connects
    /// afresh, so a server that comes back is served again without a restart.
    ///
    /// With `backend.proxy_protocol`, the PROXY header goes first, naming `client` (the real
    /// client and the address it connected to), or none for flexgate's own connections.
    pub(crate) async fn dial(&self, client: Option<(SocketAddr, SocketAddr)>) -> Result<BackendStream, BackendError> {
        let attempt = async {
            match &self.address {
                BackendAddress::Tcp { host, port } => {
                    let mut s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    if let Some(version) = self.proxy_protocol {
                        let header = crate::proxy_protocol::encode(version, client.map(|c| c.0), client.map(|c| c.1));
                        s.write_all(&header).await?;
                    }
                    Ok(BackendStream::Tcp(s))
                }
                BackendAddress::Unix(path) => UnixStream::connect(path).await.map(BackendStream::Unix),
            }
        };
        match timeout(self.connect_timeout, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(BackendError::Unreachable(source)),
            Err(_) => Err(BackendError::Timeout(self.connect_timeout)),
        }
    }

    /// Runs the TLS handshake on a TCP leg whose SSLRequest has been sent.
    pub(crate) async fn upgrade(&self, stream: BackendStream) -> Result<BackendStream, BackendError> {
        let (Some(tls), BackendStream::Tcp(tcp)) = (&self.tls, stream) else {
            return Err(BackendError::Tls("TLS is only supported over TCP".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let s = connector.connect(tls.server_name.clone(), tcp).await.map_err(|e| BackendError::Tls(e.to_string()))?;
        Ok(BackendStream::Tls(Box::new(s)))
    }
}
