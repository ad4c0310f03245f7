//! One client connection, from accept to close, as an explicit sequence of phases.
//!
//! ```text
//! Dial ──► Greeted ──► Login ──► Relay
//!   │         │  (SSLRequest: TLS accept, then HandshakeResponse)
//!   └─────────┴──────────┴──► refused with an ERR packet, or closed
//! ```
//! Each phase holds only what is valid in it, and a transition consumes it. Everything before
//! `Relay` runs under one deadline (`handshake_timeout`) and reads packets of bounded size; in
//! `Relay` bytes are copied in both directions without being parsed.

mod auth;
mod error;
mod policy;
mod relay;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tracing::{info, warn};
use zeroize::Zeroize;

pub use auth::AuthRefusal;
pub use error::{Blame, Refusal, SessionError};

use self::auth::{AuthExchange, ClientVerdict, REQUEST_PUBLIC_KEY, ServerVerdict, Turn};
use self::stream::{ClientStream, ReadError, read_packet};
use crate::backend::{Backend, BackendError, BackendStream};
use crate::config::TlsVersion;
use crate::metrics::{Metrics, Outcome};
use crate::protocol::{
    AuthPacket, Capabilities, ClientFirst, Greeting, HandshakeResponse, MAX_PRE_AUTH_PAYLOAD, SSL_REQUEST_LEN,
    SslRequest, parse_client_first, scramble, write_err,
};

/// What every session on one listener shares. Built once per listener.
pub struct ListenerContext {
    /// The listener's configured name, for logs.
    pub listener: String,
    /// Deadline for everything before the login completes.
    pub handshake_timeout: Duration,
    /// Client-facing TLS, if a certificate is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The TLS floor, to explain handshake failures.
    pub min_tls: TlsVersion,
    /// Refuse clients that did not upgrade to TLS.
    pub require_secure_transport: bool,
    /// The server.
    pub backend: Arc<Backend>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ListenerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContext")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("tls", &self.tls.is_some())
            .field("min_tls", &self.min_tls)
            .field("require_secure_transport", &self.require_secure_transport)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Serves one accepted client connection to its end. Never panics on peer input; every
/// failure ends in a log line (and, where the protocol allows, an ERR packet to the client).
pub async fn run(client: TcpStream, peer: SocketAddr, ctx: Arc<ListenerContext>) {
    let started = Instant::now();
    ctx.metrics.accepted();
    let _ = client.set_nodelay(true);
    let mut s = Session {
        ctx: ctx.clone(),
        client: Some(ClientStream::Plain(client)),
        client_seq: 0,
        greeted: false,
        buf: Vec::new(),
        log: SessionLog::default(),
    };
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    let result = match timeout_at(deadline, s.pre_auth()).await {
        Ok(r) => r,
        Err(_) => Err(SessionError::Timeout(ctx.handshake_timeout)),
    };
    // Pre-auth packets may hold auth data; the relay does not use this buffer.
    s.buf.zeroize();
    s.buf = Vec::new();
    let (outcome, code) = match result {
        Ok(Ended::Authenticated(backend)) => s.relay(backend).await,
        Ok(Ended::Denied { code }) => (Outcome::AuthFailed, Some(code)),
        Ok(Ended::BackendRefused { code }) => (Outcome::BackendRefused, Some(code)),
        Err(e) => {
            let code = s.refuse(&e).await;
            s.log_failure(&e, peer);
            (e.outcome(), code)
        }
    };
    ctx.metrics.ended(outcome);
    let l = &s.log;
    info!(
        listener = %ctx.listener,
        client = %peer,
        user = l.user.as_deref().unwrap_or("-"),
        tls_version = l.tls_version.unwrap_or("none"),
        cipher = l.cipher.unwrap_or("none"),
        outcome = outcome.as_str(),
        error_code = code.unwrap_or(0),
        bytes_from_client = l.bytes_in,
        bytes_to_client = l.bytes_out,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "session ended"
    );
}

/// Per-session facts for the closing log line. Holds no secret.
#[derive(Debug, Default)]
struct SessionLog {
    user: Option<String>,
    tls_version: Option<&'static str>,
    cipher: Option<&'static str>,
    bytes_in: u64,
    bytes_out: u64,
}

/// How the phases before `Relay` ended without an error of flexgate's.
enum Ended {
    /// The server accepted the login.
    Authenticated(BackendStream),
    /// The server refused the login; its ERR was relayed.
    Denied { code: u16 },
    /// The server refused the connection outright (e.g. too many connections); relayed.
    BackendRefused { code: u16 },
}

enum Phase {
    /// Accepted; the server is not connected yet.
    Dial,
    /// Greeting relayed; waiting for an SSLRequest or a HandshakeResponse.
    Greeted(Greeted),
    /// Credentials received; forwarding them and relaying the auth exchange.
    Login(Login),
    /// Done with the pre-auth phases.
    Ended(Ended),
}

struct Greeted {
    backend: BackendStream,
    backend_caps: Capabilities,
    nonce: Vec<u8>,
}

struct Login {
    backend: BackendStream,
    backend_caps: Capabilities,
    nonce: Vec<u8>,
    /// The HandshakeResponse payload; contains password-derived data, zeroed when dropped.
    response: zeroize::Zeroizing<Vec<u8>>,
}

struct Session {
    ctx: Arc<ListenerContext>,
    /// `None` only while the TLS upgrade owns the socket, or after it failed.
    client: Option<ClientStream>,
    /// Sequence id of the next packet to or from the client.
    client_seq: u8,
    /// Whether the client has our greeting (and so expects 4.1-format ERR packets).
    greeted: bool,
    buf: Vec<u8>,
    log: SessionLog,
}

impl Session {
    async fn pre_auth(&mut self) -> Result<Ended, SessionError> {
        let mut phase = Phase::Dial;
        loop {
            phase = match phase {
                Phase::Dial => self.dial().await?,
                Phase::Greeted(g) => self.on_first_packet(g).await?,
                Phase::Login(l) => self.login(l).await?,
                Phase::Ended(e) => return Ok(e),
            };
        }
    }

    /// Connects to the server and relays its greeting with flexgate's capabilities.
    async fn dial(&mut self) -> Result<Phase, SessionError> {
        let backend_cfg = self.ctx.backend.clone();
        let mut backend = backend_cfg.dial().await.map_err(|e| self.backend_error(e))?;
        // A server that accepts but never greets is as unavailable as one that refuses.
        let limit = backend_cfg.connect_timeout();
        let header = tokio::time::timeout(limit, read_packet(&mut backend, &mut self.buf, MAX_PRE_AUTH_PAYLOAD))
            .await
            .map_err(|_| self.backend_error(BackendError::Timeout(limit)))?
            .map_err(|e| self.backend_read_error(e))?;
        if header.seq != 0 {
            return Err(self.backend_protocol(format!("greeting has sequence id {}", header.seq)));
        }
        if self.buf.first() == Some(&0xff) {
            // The server refused before greeting (too many connections, host blocked): relay as is.
            let code = crate::protocol::ErrPacket::parse(&self.buf).map(|e| e.code).unwrap_or(0);
            self.relay_to_client().await?;
            return Ok(Phase::Ended(Ended::BackendRefused { code }));
        }
        let greeting = Greeting::parse(&self.buf).map_err(|e| self.backend_protocol(format!("greeting: {e}")))?;
        let backend_caps = greeting.capabilities;
        let nonce = greeting.nonce();
        let ours =
            Greeting { capabilities: policy::greeting_capabilities(backend_caps, self.ctx.tls.is_some()), ..greeting };
        let mut payload = Vec::with_capacity(self.buf.len());
        ours.write(&mut payload);
        self.write_client(&framed(0, &payload)).await?;
        self.greeted = true;
        self.client_seq = 1;
        Ok(Phase::Greeted(Greeted { backend, backend_caps, nonce }))
    }

    /// Handles the SSLRequest (and TLS) or the plaintext HandshakeResponse.
    async fn on_first_packet(&mut self, g: Greeted) -> Result<Phase, SessionError> {
        self.read_client().await?;
        let tls_requested = match parse_client_first(&self.buf).map_err(SessionError::ClientMalformed)? {
            ClientFirst::SslRequest(_) => true,
            ClientFirst::Response(_) => false,
        };
        if tls_requested {
            self.accept_tls().await?;
            self.read_client().await?;
        }
        let response = HandshakeResponse::parse(&self.buf).map_err(SessionError::ClientMalformed)?;
        self.log.user = Some(loggable_user(response.username));
        policy::check_transport(tls_requested, self.ctx.require_secure_transport)?;
        policy::check_client_capabilities(response.capabilities)?;
        let response = zeroize::Zeroizing::new(std::mem::take(&mut self.buf));
        Ok(Phase::Login(Login { backend: g.backend, backend_caps: g.backend_caps, nonce: g.nonce, response }))
    }

    async fn accept_tls(&mut self) -> Result<(), SessionError> {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return Err(SessionError::ClientUnsupported("TLS (no certificate is configured)"));
        };
        let Some(ClientStream::Plain(tcp)) = self.client.take() else {
            return Err(SessionError::ClientGone("connection already upgraded or closed".into()));
        };
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            self.ctx.metrics.tls_failed();
            SessionError::ClientTls(crate::tls::describe_handshake_failure(&e, self.ctx.min_tls))
        })?;
        let conn = tls.get_ref().1;
        self.log.tls_version = conn.protocol_version().map(crate::tls::version_name);
        self.log.cipher = conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str());
        self.client = Some(ClientStream::Tls(Box::new(tls)));
        Ok(())
    }

    /// Forwards the credentials (over TLS to the server if configured) and relays the auth
    /// exchange until the server says OK or ERR.
    async fn login(&mut self, l: Login) -> Result<Phase, SessionError> {
        let Login { mut backend, backend_caps, nonce, response } = l;
        let r = HandshakeResponse::parse(&response).map_err(SessionError::ClientMalformed)?;
        let backend_tls = self.ctx.backend.uses_tls();
        let caps = policy::backend_capabilities(r.capabilities, backend_tls);
        let mut backend_seq: u8 = 1;
        if backend_tls {
            if !backend_caps.contains(Capabilities::SSL) {
                return Err(SessionError::BackendTls {
                    backend: self.ctx.backend.label().to_owned(),
                    detail: "the server does not offer TLS (CLIENT_SSL not in its greeting)".into(),
                });
            }
            let mut request = Vec::with_capacity(SSL_REQUEST_LEN);
            SslRequest {
                capabilities: caps,
                max_packet_size: r.max_packet_size,
                charset: r.charset,
                mariadb_capabilities: r.mariadb_capabilities,
            }
            .write(&mut request);
            // (SslRequest::write drops the MariaDB word when the client does not use it.)
            self.send_backend(&mut backend, &mut backend_seq, &request).await?;
            backend = self.ctx.backend.upgrade(backend).await.map_err(|e| self.backend_error(e))?;
        }
        let plugin = r.auth_plugin.unwrap_or(b"mysql_native_password");
        let client_tls = matches!(self.client, Some(ClientStream::Tls(_)));
        let mut exchange = AuthExchange::new(plugin, r.auth_response, nonce, client_tls, backend.leg())
            .map_err(SessionError::AuthRefused)?;
        // Only CLIENT_SSL differs between the legs, and it does not change the packet's layout:
        // patching the flags in place forwards every other byte exactly as the client sent it.
        let mut forwarded = zeroize::Zeroizing::new(response.to_vec());
        if let Some(flags) = forwarded.get_mut(..4) {
            flags.copy_from_slice(&caps.0.to_le_bytes());
        }
        self.send_backend(&mut backend, &mut backend_seq, &forwarded).await?;
        drop(forwarded);

        loop {
            match exchange.turn() {
                Turn::Server => {
                    self.read_backend(&mut backend, &mut backend_seq).await?;
                    let verdict = exchange.on_server(&self.buf).map_err(|e| self.backend_protocol(e.to_string()))?;
                    self.relay_to_client().await?;
                    match verdict {
                        ServerVerdict::Success => return Ok(Phase::Ended(Ended::Authenticated(backend))),
                        ServerVerdict::Failure { code } => return Ok(Phase::Ended(Ended::Denied { code })),
                        ServerVerdict::Forward { .. } => {}
                    }
                }
                Turn::Client => {
                    self.read_client().await?;
                    match exchange.on_client(&self.buf) {
                        ClientVerdict::Forward => {
                            self.send_backend(&mut backend, &mut backend_seq, &self.buf).await?;
                        }
                        ClientVerdict::Refuse(why) => return Err(SessionError::AuthRefused(why)),
                        ClientVerdict::EncryptToServerKey => {
                            let password = zeroize::Zeroizing::new(std::mem::take(&mut self.buf));
                            if let Some(denied) =
                                self.send_encrypted(&mut backend, &mut backend_seq, &password, exchange.nonce()).await?
                            {
                                return Ok(Phase::Ended(denied));
                            }
                        }
                    }
                }
            }
        }
    }

    /// `caching_sha2_password` full authentication over a plaintext TCP leg: ask for the
    /// server's RSA key and send the password encrypted to it, as libmysqlclient does with
    /// `--get-server-public-key`. The client does not see these two extra packets.
    async fn send_encrypted(
        &mut self,
        backend: &mut BackendStream,
        backend_seq: &mut u8,
        password_nul: &[u8],
        nonce: &[u8],
    ) -> Result<Option<Ended>, SessionError> {
        self.send_backend(backend, backend_seq, &[REQUEST_PUBLIC_KEY]).await?;
        self.read_backend(backend, backend_seq).await?;
        let pem = match AuthPacket::parse(&self.buf) {
            Ok(AuthPacket::MoreData(pem)) => pem,
            Ok(AuthPacket::Err(e)) => {
                let code = e.code;
                self.relay_to_client().await?;
                return Ok(Some(Ended::Denied { code }));
            }
            _ => return Err(self.backend_protocol("expected the server's RSA public key".into())),
        };
        let ciphertext = scramble::encrypt_password(password_nul, nonce, pem).map_err(|e| {
            SessionError::PasswordProtection { backend: self.ctx.backend.label().to_owned(), detail: e.to_string() }
        })?;
        self.send_backend(backend, backend_seq, &ciphertext).await?;
        Ok(None)
    }

    /// Copies bytes both ways until both sides close; returns the outcome.
    async fn relay(&mut self, mut backend: BackendStream) -> (Outcome, Option<u16>) {
        let Some(mut client) = self.client.take() else { return (Outcome::ClientGone, None) };
        let (moved, result) = relay::relay(&mut client, &mut backend).await;
        self.log.bytes_in += moved.from_client;
        self.log.bytes_out += moved.to_client;
        match result {
            Ok(()) => (Outcome::Closed, None),
            // Clients routinely close after COM_QUIT without a TLS close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => (Outcome::Closed, None),
            Err(e) => {
                tracing::debug!(error = %e, "relay ended with an error");
                (Outcome::RelayError, None)
            }
        }
    }

    /// Sends the ERR packet for `e` if the client can still receive one; returns its code.
    async fn refuse(&mut self, e: &SessionError) -> Option<u16> {
        let r = e.refusal()?;
        let mut out = Vec::with_capacity(16 + r.message.len());
        write_err(&mut out, self.client_seq, r.code, r.sql_state, &r.message, self.greeted);
        // Best effort with a short bound: the client may be gone or not reading.
        let client = self.client.as_mut()?;
        let sent = tokio::time::timeout(Duration::from_secs(1), async {
            client.write_all(&out).await?;
            client.flush().await?;
            client.shutdown().await
        })
        .await;
        if matches!(sent, Ok(Ok(()))) {
            self.log.bytes_out += out.len() as u64;
            // Closing with unread input (the rest of an oversized packet, say) makes the kernel
            // send RST, and a client that receives RST discards the ERR it has not read yet.
            // Drain briefly and boundedly so that the client reads its error first.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut sink = [0u8; 8192];
                let mut left: usize = 1 << 20;
                while left > 0 {
                    match client.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            })
            .await;
        }
        Some(r.code)
    }

    fn log_failure(&self, e: &SessionError, peer: SocketAddr) {
        let listener = &self.ctx.listener;
        match (e, e.blame()) {
            (SessionError::ClientTls(reason), _) => {
                warn!(listener = %listener, client = %peer, reason = %reason, "client TLS handshake failed");
            }
            (_, Blame::Server) => warn!(listener = %listener, client = %peer, error = %e, "backend failure"),
            (_, Blame::Client | Blame::Policy) => {
                info!(listener = %listener, client = %peer, error = %e, "client refused");
            }
        }
    }

    /// Reads one client packet into `buf`, checking size and sequence id.
    async fn read_client(&mut self) -> Result<(), SessionError> {
        let client = self.client.as_mut().ok_or_else(|| SessionError::ClientGone("connection closed".into()))?;
        let header = read_packet(client, &mut self.buf, MAX_PRE_AUTH_PAYLOAD).await.map_err(|e| match e {
            ReadError::Closed => SessionError::ClientGone("closed the connection".into()),
            ReadError::TooLarge { error, seq } => {
                // The ERR answers the refused packet, so it carries the next sequence id.
                self.client_seq = seq.wrapping_add(1);
                SessionError::ClientTooLarge(error)
            }
            ReadError::Io(e) => SessionError::ClientGone(e.to_string()),
        })?;
        self.log.bytes_in += (header.len + 4) as u64;
        if header.seq != self.client_seq {
            let expected = self.client_seq;
            self.client_seq = header.seq.wrapping_add(1);
            return Err(SessionError::ClientOutOfOrder { expected, got: header.seq });
        }
        self.client_seq = self.client_seq.wrapping_add(1);
        Ok(())
    }

    async fn read_backend(&mut self, backend: &mut BackendStream, seq: &mut u8) -> Result<(), SessionError> {
        let header =
            read_packet(backend, &mut self.buf, MAX_PRE_AUTH_PAYLOAD).await.map_err(|e| self.backend_read_error(e))?;
        if header.seq != *seq {
            return Err(self.backend_protocol(format!("sequence id {}, expected {}", header.seq, seq)));
        }
        *seq = seq.wrapping_add(1);
        Ok(())
    }

    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let client = self.client.as_mut().ok_or_else(|| SessionError::ClientGone("connection closed".into()))?;
        write_flush(client, bytes).await.map_err(|e| SessionError::ClientGone(e.to_string()))?;
        self.log.bytes_out += bytes.len() as u64;
        Ok(())
    }

    /// Relays the server packet in `buf` to the client, as the next packet of the client's leg.
    async fn relay_to_client(&mut self) -> Result<(), SessionError> {
        let packet = framed(self.client_seq, &self.buf);
        self.client_seq = self.client_seq.wrapping_add(1);
        self.write_client(&packet).await
    }

    /// Sends `payload` as the next packet of the server's leg. The framed copy is zeroed on
    /// drop: auth packets carry password-derived bytes.
    async fn send_backend(
        &self,
        backend: &mut BackendStream,
        seq: &mut u8,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let packet = zeroize::Zeroizing::new(framed(*seq, payload));
        *seq = seq.wrapping_add(1);
        write_flush(backend, &packet).await.map_err(|e| SessionError::BackendLost {
            backend: self.ctx.backend.label().to_owned(),
            detail: e.to_string(),
        })
    }

    fn backend_error(&self, e: BackendError) -> SessionError {
        let backend = self.ctx.backend.label().to_owned();
        match e {
            BackendError::Unreachable(source) => SessionError::BackendUnreachable { backend, source },
            BackendError::Timeout(after) => SessionError::BackendTimeout { backend, after },
            BackendError::Tls(detail) => SessionError::BackendTls { backend, detail },
        }
    }

    fn backend_read_error(&self, e: ReadError) -> SessionError {
        let backend = self.ctx.backend.label().to_owned();
        match e {
            ReadError::Closed => SessionError::BackendLost { backend, detail: "connection closed".into() },
            ReadError::Io(e) => SessionError::BackendLost { backend, detail: e.to_string() },
            ReadError::TooLarge { error, .. } => SessionError::BackendProtocol { backend, detail: error.to_string() },
        }
    }

    fn backend_protocol(&self, detail: String) -> SessionError {
        SessionError::BackendProtocol { backend: self.ctx.backend.label().to_owned(), detail }
    }
}

/// The user name for logs: attacker-controlled and up to the pre-auth packet limit long, so
/// cut at 80 characters, MariaDB's own limit on user names.
fn loggable_user(name: &[u8]) -> String {
    const MAX_CHARS: usize = 80;
    let name = String::from_utf8_lossy(name);
    match name.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.into_owned(),
    }
}

/// A packet with `payload` and sequence id `seq`.
fn framed(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    crate::protocol::write_packet(&mut out, seq, payload);
    out
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}
