//! Connecting to the server: TCP or Unix socket, then optionally TLS after the SSLRequest.

use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use crate::config::{BackendAddress, BackendConfig};
use crate::session::{BackendStream, SessionError};
use crate::tls::BackendTls;

/// How to reach the server; built once from config and shared by every session.
#[derive(Debug)]
pub struct Backend {
    address: BackendAddress,
    label: String,
    connect_timeout: Duration,
    tls: Option<BackendTls>,
}

impl Backend {
    /// Assembles a backend from validated config and its (optional) TLS connector.
    pub fn new(cfg: &BackendConfig, tls: Option<BackendTls>) -> Self {
        Self { address: cfg.address.clone(), label: cfg.address.to_string(), connect_timeout: cfg.connect_timeout, tls }
    }

    /// The address as operators wrote it, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Bound on connecting and on waiting for the server's greeting.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Whether the server leg is upgraded to TLS after the greeting.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens the transport within `backend.connect_timeout`. Every attempt resolves and connects
    /// afresh, so a server that comes back is served again without a restart.
    pub(crate) async fn dial(&self) -> Result<BackendStream, SessionError> {
        let attempt = async {
            match &self.address {
                BackendAddress::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Ok(BackendStream::Tcp(s))
                }
                BackendAddress::Unix(path) => UnixStream::connect(path).await.map(BackendStream::Unix),
            }
        };
        match timeout(self.connect_timeout, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(SessionError::BackendUnreachable { backend: self.label.clone(), source }),
            Err(_) => Err(SessionError::BackendTimeout { backend: self.label.clone(), after: self.connect_timeout }),
        }
    }

    /// Runs the TLS handshake on a TCP leg whose SSLRequest has been sent.
    pub(crate) async fn upgrade(&self, stream: BackendStream) -> Result<BackendStream, SessionError> {
        let tls_err = |detail: String| SessionError::BackendTls { backend: self.label.clone(), detail };
        let (Some(tls), BackendStream::Tcp(tcp)) = (&self.tls, stream) else {
            return Err(tls_err("TLS is only supported over TCP".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let s = connector.connect(tls.server_name.clone(), tcp).await.map_err(|e| tls_err(e.to_string()))?;
        Ok(BackendStream::Tls(Box::new(s)))
    }
}
