//! The session's I/O driver: reads and writes packets and moves through the phases. Every
//! decision it acts on comes from a plain function: [`admission::decide`], the builders in
//! [`handshake`], and the [`AuthExchange`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;
use tracing::{debug, info, warn};
use zeroize::{Zeroize, Zeroizing};

use super::admission::{self, AuthPath, Claim, Decision, Denial, GreetingMode, Peer, Request};
use super::auth::{AuthExchange, ClientVerdict, REQUEST_PUBLIC_KEY, ServerVerdict, Turn};
use super::handshake::{self, Identity, NONCE_LEN};
use super::relay::{Relay, RelayEnd, Side};
use super::stream::{ClientStream, ReadError, read_packet};
use super::{Blame, ListenerContext, Origin, SessionError, policy};
use crate::backend::{Backend, BackendError, BackendStream};
use crate::events::{ClientAddr, LoginEvent, LoginKind, LoginOutcome, Transport, loggable};
use crate::firewall::Permit;
use crate::health::BackendWatch;
use crate::metrics::Outcome;
use crate::profile::ProfileCell;
use crate::protocol::{
    AuthPacket, Capabilities, ChangeUser, ClientFirst, ErrPacket, Greeting, HandshakeResponse, MAX_PRE_AUTH_PAYLOAD,
    MariaDbCapabilities, SSL_REQUEST_LEN, SslRequest, codes, parse_client_first, scramble, write_err,
};
use crate::proxy_protocol::{self, Header};
use crate::registry::Registered;

mod vouch;

use vouch::CLEAR_PASSWORD;

/// A server connection whose greeting has been read.
struct Live {
    stream: BackendStream,
    capabilities: Capabilities,
    mariadb_capabilities: MariaDbCapabilities,
    thread_id: u32,
    /// The greeting's nonce: what a client greeted by the server scrambles with.
    nonce: Vec<u8>,
    /// The greeting's auth plugin.
    plugin: Vec<u8>,
}

/// What dialling the server gave.
enum Dialled {
    Live(Live),
    /// The server sent ERR instead of a greeting (1040 too many connections, 1129 host
    /// blocked, ...); its payload is in the session's buffer.
    Refused {
        code: u16,
    },
}

/// The phases before the relay. Each holds only what is valid in it; a transition consumes it.
enum Phase {
    /// Accepted; the peer address is known and nothing has been sent.
    Accepted,
    /// Greeted; waiting for an SSLRequest or a HandshakeResponse.
    Greeted(Greeted),
    /// The client's HandshakeResponse, parsed once and owned.
    Identified(Identified),
    /// The admission decision let the client through.
    Admitted(Identified),
    /// The login name is an Entra principal: flexgate takes and checks its token, then logs in
    /// to the server itself.
    Vouching(Identified),
    /// The server has greeted and is about to receive the client's login.
    Connected(Connected),
    /// Done before the relay.
    Ended(Ended),
}

struct Greeted {
    /// The capabilities the client's greeting offered on the server's behalf.
    promised: Capabilities,
    /// The server, when it was dialled before the greeting (server-greeting mode, or no
    /// profile learned yet).
    backend: Option<Live>,
}

struct Identified {
    promised: Capabilities,
    backend: Option<Live>,
    identity: Identity,
    /// Server-greeting mode only: the response to forward, scrambled over the server's nonce.
    /// In flexgate mode the auth data was computed over flexgate's nonce, useless to the
    /// server, and is zeroed as soon as the response is parsed.
    raw: Option<Zeroizing<Vec<u8>>>,
    /// A cleartext password in the response itself (`mysql_clear_password`): the token, if
    /// the login name turns out to be an Entra principal.
    cleartext: Option<Zeroizing<Vec<u8>>>,
}

struct Connected {
    backend: BackendStream,
    /// The live server's capabilities.
    server_caps: Capabilities,
    identity: Identity,
    first: FirstLogin,
}

/// What the server receives first on the client's behalf, and where the auth exchange starts.
struct FirstLogin {
    forwarded: Zeroizing<Vec<u8>>,
    /// The plugin the first auth data was made with.
    plugin: Vec<u8>,
    /// The first auth data, checked for cleartext that the server leg would expose.
    first_auth: Zeroizing<Vec<u8>>,
    nonce: Vec<u8>,
}

impl FirstLogin {
    /// Server-greeting mode: the client's response byte for byte, with only CLIENT_SSL
    /// describing the server leg (the layout does not depend on that bit).
    fn relayed(raw: &[u8], nonce: Vec<u8>, backend_tls: bool) -> Result<Self, SessionError> {
        let r = HandshakeResponse::parse(raw).map_err(SessionError::ClientMalformed)?;
        let caps = policy::backend_capabilities(r.capabilities, backend_tls);
        let mut forwarded = Zeroizing::new(raw.to_vec());
        if let Some(flags) = forwarded.get_mut(..4) {
            flags.copy_from_slice(&caps.0.to_le_bytes());
        }
        Ok(Self {
            forwarded,
            plugin: r.auth_plugin.unwrap_or(b"mysql_native_password").to_vec(),
            first_auth: Zeroizing::new(r.auth_response.to_vec()),
            nonce,
        })
    }

    /// flexgate-greeting mode: no auth data, and a plugin name that makes the server switch.
    fn forced_switch(
        id: &Identity,
        promised: Capabilities,
        live: &Live,
        backend_tls: bool,
    ) -> Result<Self, handshake::Mismatch> {
        let forwarded =
            handshake::server_response(id, promised, live.capabilities, live.mariadb_capabilities, backend_tls)?;
        Ok(Self {
            forwarded: Zeroizing::new(forwarded),
            plugin: handshake::FORCE_SWITCH_PLUGIN.to_vec(),
            first_auth: Zeroizing::new(Vec::new()),
            nonce: Vec::new(),
        })
    }
}

/// How the phases before the relay ended without an error of flexgate's.
pub(super) enum Ended {
    /// The server accepted the login.
    Authenticated(BackendStream),
    /// The server refused the login; its ERR was relayed.
    Denied { code: u16 },
    /// The server refused the connection outright; its ERR was relayed.
    BackendRefused { code: u16 },
}

/// How an auth exchange (login or change-user) ended.
enum Exchanged {
    Accepted,
    Refused { code: u16 },
}

/// What logs and login events say about an account, from its login: peer-controlled text, cut
/// to a loggable length once. Holds no secret.
#[derive(Debug, Default, Clone)]
struct Who {
    user: Option<String>,
    database: Option<String>,
    program: Option<String>,
    client_version: Option<String>,
}

impl Who {
    fn of(id: &Identity) -> Self {
        let (program, client_version) = id.program();
        Self {
            user: Some(loggable(&id.user, 80)),
            database: id.database.as_deref().map(|d| loggable(d, 64)),
            program,
            client_version,
        }
    }
}

/// Per-session facts for the closing log line and the login events. Holds no secret.
#[derive(Debug, Default)]
struct SessionLog {
    /// Refused at connect (firewall, limits, PROXY header): logged rate-limited only.
    at_connect: bool,
    tls_version: Option<&'static str>,
    cipher: Option<&'static str>,
    bytes_in: u64,
    bytes_out: u64,
}

pub(super) struct Session<C> {
    ctx: Arc<ListenerContext>,
    /// The client: the socket's peer, or the address a trusted PROXY header carried.
    peer: ClientAddr,
    /// The address the client connected to, as `peer` is.
    local: Option<SocketAddr>,
    /// The socket's own peer, when a PROXY header replaced it (the balancer).
    via: Option<SocketAddr>,
    /// This connection's place in the listener's limits.
    permit: Option<Permit>,
    /// `None` only while the TLS upgrade owns the socket, or after it failed.
    client: Option<ClientStream<C>>,
    /// Sequence id of the next packet to or from the client.
    client_seq: u8,
    /// Whether the client has a greeting (and so expects 4.1-format ERR packets).
    greeted: bool,
    buf: Vec<u8>,
    /// Client bytes the relay read ahead of a change-user; read before the socket.
    input: Vec<u8>,
    log: SessionLog,
    /// flexgate's connection id for this session (flexgate-greeting mode).
    registered: Option<Registered>,
    /// The server's thread id.
    thread_id: Option<u32>,
    /// The account the session is logged in as, once identified.
    who: Who,
    /// The login the server accepted; a change-user starts from it.
    identity: Option<Identity>,
    /// The account a change-user in progress asks for; `who` once the server accepts.
    attempt: Option<Who>,
    /// The last plugin of the last exchange.
    plugin: Option<Vec<u8>>,
    /// The key breaker's trip count before the admission decision.
    key_trips: u64,
    /// The Entra side of the last login or change-user attempt, for its event.
    entra_login: Option<crate::events::EntraLogin>,
    /// `on_token_expiry = "close-session"`: the token's `exp`, and when the session closes.
    token_expiry: Option<(SystemTime, tokio::time::Instant)>,
}

impl<C: AsyncRead + AsyncWrite + Unpin + Send> Session<C> {
    pub(super) fn new(client: C, origin: Origin, ctx: Arc<ListenerContext>) -> Self {
        Self {
            ctx,
            peer: origin.peer,
            local: origin.local,
            via: None,
            permit: None,
            client: Some(ClientStream::Plain(client)),
            client_seq: 0,
            greeted: false,
            buf: Vec::new(),
            input: Vec::new(),
            log: SessionLog::default(),
            registered: None,
            thread_id: None,
            who: Who::default(),
            identity: None,
            attempt: None,
            plugin: None,
            key_trips: 0,
            entra_login: None,
            token_expiry: None,
        }
    }

    /// Serves the connection to its end.
    pub(super) async fn run(mut self) {
        let started = Instant::now();
        self.ctx.metrics.accepted();
        let deadline = tokio::time::Instant::now() + self.ctx.handshake_timeout;
        let result = match timeout_at(deadline, self.pre_auth()).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout(self.ctx.handshake_timeout)),
        };
        // Pre-auth packets may hold auth data; the relay does not use this buffer.
        self.buf.zeroize();
        self.buf = Vec::new();
        let (outcome, code) = match result {
            Ok(Ended::Authenticated(backend)) => {
                if let Some(p) = &mut self.permit {
                    p.logged_in();
                }
                self.ctx.metrics.logged_in(started.elapsed());
                self.publish(LoginKind::Connect, LoginOutcome::Ok, started.elapsed());
                self.relay(backend).await
            }
            Ok(Ended::Denied { code }) => {
                self.publish(LoginKind::Connect, LoginOutcome::ServerRefused { code }, started.elapsed());
                (Outcome::AuthFailed, Some(code))
            }
            Ok(Ended::BackendRefused { code }) => {
                self.publish(LoginKind::Connect, LoginOutcome::ServerRefused { code }, started.elapsed());
                (Outcome::BackendRefused, Some(code))
            }
            Err(e) => {
                // Counted before the ERR goes out, so that whoever reads the ERR sees the count.
                if let Some((kind, reason)) = e.refused_at_connect() {
                    self.ctx.gate.count(kind);
                    self.ctx.metrics.refused(reason);
                    self.log.at_connect = true;
                }
                let code = self.refuse(&e).await;
                self.log_failure(&e);
                self.publish(LoginKind::Connect, e.login_outcome(), started.elapsed());
                (e.outcome(), code)
            }
        };
        self.ctx.metrics.ended(outcome);
        let l = &self.log;
        if l.at_connect {
            // A flood of refused clients must not flood the log: `log_failure` said it, at
            // most once a second per listener.
            debug!(listener = %self.ctx.listener, client = %self.peer, outcome = outcome.as_str(), "session ended");
            return;
        }
        info!(
            listener = %self.ctx.listener,
            client = %self.peer,
            connection_id = self.registered.as_ref().map(Registered::id).or(self.thread_id).unwrap_or(0),
            server_thread_id = self.thread_id.unwrap_or(0),
            user = self.who.user.as_deref().unwrap_or("-"),
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

    async fn pre_auth(&mut self) -> Result<Ended, SessionError> {
        let mut phase = Phase::Accepted;
        loop {
            phase = match phase {
                Phase::Accepted => self.greet().await?,
                Phase::Greeted(g) => self.identify(g).await?,
                Phase::Identified(i) => self.admit(i)?,
                Phase::Admitted(a) => self.connect(a).await?,
                Phase::Vouching(v) => self.token_login(v).await?,
                Phase::Connected(c) => self.login(c).await?,
                Phase::Ended(e) => return Ok(e),
            };
        }
    }

    fn peer_view(&self) -> Peer<'_> {
        Peer { listener: &self.ctx.listener, addr: self.peer, tls: self.log.tls_version, now: SystemTime::now() }
    }

    /// On a listener that takes PROXY headers, reads a trusted peer's header, which then
    /// names the client. An untrusted peer's header is noticed when it arrives where the
    /// login should (see `read_client`).
    async fn read_proxy_header(&mut self) -> Result<(), SessionError> {
        let (Some(trusted), ClientAddr::Tcp(socket_peer)) = (&self.ctx.proxy_protocol, self.peer) else {
            return Ok(());
        };
        if !trusted.contains(socket_peer.ip()) {
            return Ok(());
        }
        let Some(ClientStream::Plain(plain)) = self.client.as_mut() else {
            return Err(SessionError::ClientGone("connection closed".into()));
        };
        match proxy_protocol::read_header(plain).await {
            // The header's addresses come canonical (IPv4 for a mapped address), as the
            // accept loop makes the socket's.
            Ok(Header::Proxied { source, destination }) => {
                self.via = Some(socket_peer);
                self.peer = ClientAddr::Tcp(source);
                self.local = Some(destination);
                Ok(())
            }
            // The balancer's own health check: the socket's addresses are the real ones.
            Ok(Header::Local) => Ok(()),
            // A balancer's TCP health check connects and closes: not a bad header.
            Err(proxy_protocol::HeaderError::Io(e)) => Err(SessionError::ClientGone(e.to_string())),
            Err(e) => Err(SessionError::ProxyHeader(e.to_string())),
        }
    }

    /// Accepted → Greeted: flexgate's own greeting, or the server's relayed.
    async fn greet(&mut self) -> Result<Phase, SessionError> {
        self.read_proxy_header().await?;
        self.key_trips = self.ctx.key.trips();
        match admission::decide(&self.ctx.policy(), &Request::Connect(self.peer_view())) {
            Decision::Refuse(d) => return Err(SessionError::Denied(d)),
            Decision::Greet | Decision::Authenticate(_) => {}
        }
        let permit = self.ctx.gate.quota.admit(&self.ctx.limits, self.peer.ip(), Instant::now());
        self.permit = Some(permit.map_err(|hit| SessionError::Denied(Denial::TooManyConnections(hit)))?);
        let offer_tls = self.ctx.tls.is_some();
        let early = match (self.ctx.greeting, self.ctx.profile.load()) {
            (GreetingMode::Flexgate, Some(_)) => None,
            // Server-greeting mode, or no profile yet (the server was down at startup): the
            // server must greet first.
            _ => match self.dial().await? {
                Dialled::Live(live) => Some(live),
                Dialled::Refused { code } => {
                    self.relay_to_client().await?;
                    return Ok(Phase::Ended(Ended::BackendRefused { code }));
                }
            },
        };
        match (self.ctx.greeting, early) {
            (GreetingMode::Server, Some(live)) => {
                // `dial` left the live greeting in the buffer; relay it with our capabilities.
                let g = Greeting::parse(&self.buf).map_err(|e| self.backend_protocol(format!("greeting: {e}")))?;
                let ours = Greeting { capabilities: policy::greeting_capabilities(g.capabilities, offer_tls), ..g };
                let mut out = Vec::with_capacity(self.buf.len());
                ours.write(&mut out);
                self.thread_id = Some(live.thread_id);
                self.write_greeting(&out).await?;
                Ok(Phase::Greeted(Greeted { promised: live.capabilities, backend: Some(live) }))
            }
            (GreetingMode::Server, None) => Err(self.backend_protocol("server-greeting mode without a server".into())),
            (GreetingMode::Flexgate, early) => {
                let Some(profile) = self.ctx.profile.load() else {
                    return Err(self.backend_protocol("no server profile after a greeting".into()));
                };
                if !profile.supports_own_greeting() {
                    return Err(self.backend_protocol(
                        "the server lacks pluggable authentication, which flexgate's greeting needs; \
                         set greeting = \"server\" on this listener"
                            .into(),
                    ));
                }
                let registered = self.ctx.registry.register();
                let payload = handshake::own_greeting(&profile, registered.id(), &new_nonce()?, offer_tls);
                self.registered = Some(registered);
                self.write_greeting(&payload).await?;
                Ok(Phase::Greeted(Greeted { promised: profile.capabilities, backend: early }))
            }
        }
    }

    /// Dials the server for this session, reporting to readiness and the dial metrics.
    async fn dial(&mut self) -> Result<Dialled, SessionError> {
        let ctx = self.ctx.clone();
        watched_dial(&ctx.backend, &ctx.profile, &ctx.dials, &mut self.buf, proxied(self.peer, self.local)).await
    }

    async fn write_greeting(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        self.write_client(&framed(0, payload)).await?;
        self.greeted = true;
        self.client_seq = 1;
        Ok(())
    }

    /// Greeted → Identified: the SSLRequest and TLS, then the HandshakeResponse.
    async fn identify(&mut self, g: Greeted) -> Result<Phase, SessionError> {
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
        let identity = Identity::from_response(&response);
        let cleartext = (response.auth_plugin == Some(CLEAR_PASSWORD) && !response.auth_response.is_empty())
            .then(|| Zeroizing::new(response.auth_response.to_vec()));
        self.who = Who::of(&identity);
        let raw = match self.ctx.greeting {
            GreetingMode::Server => Some(Zeroizing::new(std::mem::take(&mut self.buf))),
            GreetingMode::Flexgate => {
                // Scrambled over flexgate's nonce (or, with mysql_clear_password, the password
                // itself): of no use to the server, so never kept.
                self.buf.zeroize();
                None
            }
        };
        Ok(Phase::Identified(Identified { promised: g.promised, backend: g.backend, identity, raw, cleartext }))
    }

    async fn accept_tls(&mut self) -> Result<(), SessionError> {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return Err(SessionError::ClientUnsupported("TLS (no certificate is configured)"));
        };
        let Some(ClientStream::Plain(plain)) = self.client.take() else {
            return Err(SessionError::ClientGone("connection already upgraded or closed".into()));
        };
        let tls = acceptor.accept(plain).await.map_err(|e| {
            self.ctx.metrics.tls_failed();
            SessionError::ClientTls(crate::tls::describe_handshake_failure(&e, self.ctx.min_tls))
        })?;
        let client = ClientStream::Tls(Box::new(tls));
        (self.log.tls_version, self.log.cipher) = client.tls_info();
        self.ctx.metrics.tls(self.log.tls_version.unwrap_or("unknown"), self.log.cipher.unwrap_or("unknown"));
        self.client = Some(client);
        Ok(())
    }

    /// Identified → Admitted, by the admission decision.
    fn admit(&mut self, i: Identified) -> Result<Phase, SessionError> {
        let claim = Claim {
            kind: LoginKind::Connect,
            user: &i.identity.user,
            database: i.identity.database.as_deref(),
            capabilities: i.identity.capabilities,
        };
        match admission::decide(&self.ctx.policy(), &Request::Login(self.peer_view(), claim)) {
            Decision::Authenticate(AuthPath::Server) => Ok(Phase::Admitted(i)),
            Decision::Authenticate(AuthPath::Token) => Ok(Phase::Vouching(i)),
            Decision::Refuse(d) => Err(self.denied(d, &i.identity.user)),
            Decision::Greet => Err(self.backend_protocol("admission answered a login with a greeting".into())),
        }
    }

    /// The session's server: the one that greeted already, or a new dial, recorded as the
    /// session's. `Err(code)` if the server sent ERR instead of a greeting, which has been
    /// relayed to the client.
    async fn server(&mut self, early: Option<Live>) -> Result<Result<Live, u16>, SessionError> {
        let live = match early {
            Some(live) => live,
            None => match self.dial().await? {
                Dialled::Live(live) => live,
                Dialled::Refused { code } => {
                    self.relay_server_err().await?;
                    return Ok(Err(code));
                }
            },
        };
        self.thread_id = Some(live.thread_id);
        if let Some(r) = &self.registered {
            r.connected(live.thread_id);
        }
        Ok(Ok(live))
    }

    /// Admitted → Connected: only now is the server dialled (unless it greeted already).
    async fn connect(&mut self, a: Identified) -> Result<Phase, SessionError> {
        let live = match self.server(a.backend).await? {
            Ok(live) => live,
            Err(code) => return Ok(Phase::Ended(Ended::BackendRefused { code })),
        };
        let backend_tls = self.ctx.backend.uses_tls();
        let first = match a.raw {
            Some(raw) => FirstLogin::relayed(&raw, live.nonce, backend_tls)?,
            // `dial` has already refreshed the profile from this greeting.
            None => FirstLogin::forced_switch(&a.identity, a.promised, &live, backend_tls).map_err(|m| {
                SessionError::ServerChanged { backend: self.ctx.backend.label().to_owned(), missing: m.missing.0 }
            })?,
        };
        Ok(Phase::Connected(Connected {
            backend: live.stream,
            server_caps: live.capabilities,
            identity: a.identity,
            first,
        }))
    }

    /// Connected → Ended: the client's login goes to the server (over TLS if configured),
    /// and the auth exchange is relayed until the server says OK or ERR.
    async fn login(&mut self, c: Connected) -> Result<Phase, SessionError> {
        let Connected { mut backend, server_caps, identity, first } = c;
        let FirstLogin { forwarded, plugin, first_auth, nonce } = first;
        let client_tls = self.log.tls_version.is_some();
        let mut backend_seq: u8 = 1;
        let caps =
            Capabilities(u32::from_le_bytes(forwarded.get(..4).and_then(|b| b.try_into().ok()).unwrap_or_default()));
        backend = self.secure_backend(backend, server_caps, caps, &identity, &mut backend_seq).await?;
        let exchange = AuthExchange::new(&plugin, &first_auth, nonce, client_tls, backend.leg())
            .map_err(SessionError::AuthRefused)?;
        drop(first_auth);
        self.send_backend(&mut backend, &mut backend_seq, &forwarded).await?;
        drop(forwarded);
        Ok(Phase::Ended(match self.exchange(&mut backend, backend_seq, exchange).await? {
            Exchanged::Accepted => {
                self.identity = Some(identity);
                Ended::Authenticated(backend)
            }
            Exchanged::Refused { code } => Ended::Denied { code },
        }))
    }

    /// With backend TLS configured: the SSLRequest (with the capabilities of the login that
    /// follows) and the upgrade. Otherwise the stream as it is.
    async fn secure_backend(
        &mut self,
        mut backend: BackendStream,
        server_caps: Capabilities,
        caps: Capabilities,
        identity: &Identity,
        backend_seq: &mut u8,
    ) -> Result<BackendStream, SessionError> {
        if !self.ctx.backend.uses_tls() {
            return Ok(backend);
        }
        if !server_caps.contains(Capabilities::SSL) {
            return Err(SessionError::BackendTls {
                backend: self.ctx.backend.label().to_owned(),
                detail: "the server does not offer TLS (CLIENT_SSL not in its greeting)".into(),
            });
        }
        let mut request = Vec::with_capacity(SSL_REQUEST_LEN);
        SslRequest {
            capabilities: caps,
            max_packet_size: identity.max_packet_size,
            charset: identity.charset,
            mariadb_capabilities: identity.mariadb_capabilities,
        }
        .write(&mut request);
        self.send_backend(&mut backend, backend_seq, &request).await?;
        self.ctx.backend.upgrade(backend).await.map_err(|e| self.backend_error(e))
    }

    /// Relays an auth exchange whose first packet the server has received.
    async fn exchange(
        &mut self,
        backend: &mut BackendStream,
        mut backend_seq: u8,
        mut exchange: AuthExchange,
    ) -> Result<Exchanged, SessionError> {
        loop {
            match exchange.turn() {
                Turn::Server => {
                    self.read_backend(backend, &mut backend_seq).await?;
                    let verdict = exchange.on_server(&self.buf).map_err(|e| self.backend_protocol(e.to_string()))?;
                    if self.plugin.as_deref() != Some(exchange.plugin()) {
                        self.plugin = Some(exchange.plugin().to_vec());
                    }
                    self.relay_to_client().await?;
                    match verdict {
                        ServerVerdict::Success => return Ok(Exchanged::Accepted),
                        ServerVerdict::Failure { code } => return Ok(Exchanged::Refused { code }),
                        ServerVerdict::Forward { .. } => {}
                    }
                }
                Turn::Client => {
                    self.read_client().await?;
                    match exchange.on_client(&self.buf) {
                        ClientVerdict::Forward => {
                            let packet = std::mem::take(&mut self.buf);
                            let sent = self.send_backend(backend, &mut backend_seq, &packet).await;
                            self.buf = packet;
                            sent?;
                        }
                        ClientVerdict::Refuse(why) => return Err(SessionError::AuthRefused(why)),
                        ClientVerdict::EncryptToServerKey => {
                            let password = Zeroizing::new(std::mem::take(&mut self.buf));
                            if let Some(code) =
                                self.send_encrypted(backend, &mut backend_seq, &password, exchange.nonce()).await?
                            {
                                return Ok(Exchanged::Refused { code });
                            }
                        }
                    }
                }
            }
        }
    }

    /// `caching_sha2_password` full authentication over a plaintext TCP leg: ask for the
    /// server's RSA key and send the password encrypted to it, as libmysqlclient does with
    /// `--get-server-public-key`. The client does not see these two extra packets. Returns the
    /// server's error code if it refused instead.
    async fn send_encrypted(
        &mut self,
        backend: &mut BackendStream,
        backend_seq: &mut u8,
        password_nul: &[u8],
        nonce: &[u8],
    ) -> Result<Option<u16>, SessionError> {
        self.send_backend(backend, backend_seq, &[REQUEST_PUBLIC_KEY]).await?;
        self.read_backend(backend, backend_seq).await?;
        let pem = match AuthPacket::parse(&self.buf) {
            Ok(AuthPacket::MoreData(pem)) => pem,
            Ok(AuthPacket::Err(e)) => {
                let code = e.code;
                self.relay_to_client().await?;
                return Ok(Some(code));
            }
            _ => return Err(self.backend_protocol("expected the server's RSA public key".into())),
        };
        let ciphertext = scramble::encrypt_password(password_nul, nonce, pem).map_err(|e| {
            SessionError::PasswordProtection { backend: self.ctx.backend.label().to_owned(), detail: e.to_string() }
        })?;
        self.send_backend(backend, backend_seq, &ciphertext).await?;
        Ok(None)
    }

    /// The pass-through, with a pause at every `COM_CHANGE_USER`; returns the outcome.
    async fn relay(&mut self, mut backend: BackendStream) -> (Outcome, Option<u16>) {
        let registry = self.ctx.registry.clone();
        let lookup = move |id: u32| registry.server_id(id);
        let mut relay = Relay::new(MAX_PRE_AUTH_PAYLOAD, self.ctx.metrics.byte_counters());
        // Fires if the key breaker closes open sessions, including a trip since admission.
        let mut key_watch = self.ctx.key.watch_session(self.key_trips);
        let result = loop {
            let Some(mut client) = self.client.take() else { break (Outcome::ClientClosed, None) };
            let mut closed = key_watch.closed();
            let mut expiry = self.token_expiry.map(|(_, at)| Box::pin(tokio::time::sleep_until(at)));
            // The key breaker, or the token's expiry: whichever comes first.
            let mut interrupt = std::future::poll_fn(|cx| {
                if std::pin::Pin::new(&mut closed).poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
                match expiry.as_mut() {
                    Some(sleep) => sleep.as_mut().poll(cx),
                    None => std::task::Poll::Pending,
                }
            });
            let end = relay.run(&mut client, &mut backend, &lookup, &mut interrupt).await;
            self.client = Some(client);
            match end {
                RelayEnd::Interrupted => match self.token_expiry {
                    Some((exp, at)) if tokio::time::Instant::now() >= at => {
                        self.close_for_expiry(&mut backend, exp).await;
                        break (Outcome::ClosedTokenExpired, Some(codes::ACCESS_DENIED));
                    }
                    _ => break self.close_for_key(&mut backend).await,
                },
                RelayEnd::ChangeUser(payload) => {
                    self.input = relay.take_client_input();
                    if let Err(e) = self.change_user(&mut backend, payload).await {
                        let code = self.refuse(&e).await;
                        self.log_failure(&e);
                        break (e.outcome(), code);
                    }
                    relay.put_client_input(std::mem::take(&mut self.input));
                }
                // The server ended a session in use; what the client did next (close without
                // close_notify, a late COM_QUIT, a reset) does not change that.
                _ if relay.closed_by() == Some(Side::Server) => break (Outcome::ServerClosed, None),
                // After COM_QUIT the server closes and the client may already be gone: any
                // error on the way out is the normal end of a session.
                _ if relay.client_quit() => break (Outcome::Quit, None),
                RelayEnd::Closed => break (Outcome::ClientClosed, None),
                // TLS clients often close without close_notify; rustls reports that as EOF.
                RelayEnd::Failed(e)
                    if e.side == Side::Client && e.source.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    break (Outcome::ClientClosed, None);
                }
                RelayEnd::Failed(e) => {
                    let side = match e.side {
                        Side::Client => "client",
                        Side::Server => "server",
                    };
                    info!(listener = %self.ctx.listener, client = %self.peer, side, error = %e.source, "relay failed");
                    break (Outcome::RelayError, None);
                }
            }
        };
        let moved = relay.moved();
        self.log.bytes_in += moved.from_client;
        self.log.bytes_out += moved.to_client;
        result
    }

    /// The key breaker closes the session (`on_inaccessible = "close-existing"`): the client
    /// gets ERR 3032 with sequence id 1, the answer to the command it sends next (an idle
    /// client reads it then; one in the middle of a result reads an error either way), and
    /// the server a `COM_QUIT`.
    async fn close_for_key(&mut self, backend: &mut BackendStream) -> (Outcome, Option<u16>) {
        let since = self.ctx.key.refusing_since().unwrap_or_else(SystemTime::now);
        let message = format!(
            "flexgate closed this session: the server's data-encryption key has been unavailable since {}, and the \
             operator set key_guard.on_inaccessible = \"close-existing\". Reconnect once the key is available again",
            httpdate::fmt_http_date(since)
        );
        self.close_with(backend, codes::SERVER_OFFLINE_MODE, codes::STATE_GENERAL, &message).await;
        warn!(
            listener = %self.ctx.listener,
            client = %self.peer,
            user = self.who.user.as_deref().unwrap_or("-"),
            "session closed: the data-encryption key is inaccessible (on_inaccessible = close-existing)"
        );
        (Outcome::ClosedKeyUnavailable, Some(codes::SERVER_OFFLINE_MODE))
    }

    /// flexgate ends a logged-in session: the client gets this ERR with sequence id 1, the
    /// answer to the command it sends next (an idle client reads it then; one in the middle of
    /// a result reads an error either way), and the server a `COM_QUIT`.
    async fn close_with(&mut self, backend: &mut BackendStream, code: u16, state: &[u8; 5], message: &str) {
        let mut out = Vec::with_capacity(16 + message.len());
        write_err(&mut out, 1, code, state, message, true);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            backend.write_all(&[1, 0, 0, 0, 1]).await?;
            backend.flush().await
        })
        .await;
        self.send_last(&out).await;
    }

    /// A `COM_CHANGE_USER` in the relay: decided like a login, then sent to the server with a
    /// forced auth switch (its auth data was computed over flexgate's nonce), and the server's
    /// exchange relayed. Publishes its login event. An error ends the session.
    async fn change_user(&mut self, backend: &mut BackendStream, payload: Vec<u8>) -> Result<(), SessionError> {
        let started = Instant::now();
        let payload = Zeroizing::new(payload);
        let deadline = tokio::time::Instant::now() + self.ctx.handshake_timeout;
        let result = match timeout_at(deadline, self.change_user_exchange(backend, &payload)).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout(self.ctx.handshake_timeout)),
        };
        let outcome = match &result {
            Ok(Exchanged::Accepted) => LoginOutcome::Ok,
            Ok(Exchanged::Refused { code }) => LoginOutcome::ServerRefused { code: *code },
            Err(e) => e.login_outcome(),
        };
        self.publish(LoginKind::ChangeUser, outcome, started.elapsed());
        self.buf.zeroize();
        result.map(|_| ())
    }

    async fn change_user_exchange(
        &mut self,
        backend: &mut BackendStream,
        payload: &[u8],
    ) -> Result<Exchanged, SessionError> {
        // The command was the client's packet 0; the server's answer is its packet 1.
        self.client_seq = 1;
        let Some(login) = self.identity.clone() else {
            return Err(self.backend_protocol("change-user before login".into()));
        };
        let caps = login.capabilities;
        self.attempt = None;
        let cu = ChangeUser::parse(payload, caps).map_err(SessionError::ClientMalformed)?;
        let next = login.changed(&cu);
        self.attempt = Some(Who::of(&next));
        let claim = Claim {
            kind: LoginKind::ChangeUser,
            user: &next.user,
            database: next.database.as_deref(),
            capabilities: caps,
        };
        self.entra_login = None;
        match admission::decide(&self.ctx.policy(), &Request::Login(self.peer_view(), claim)) {
            Decision::Authenticate(AuthPath::Server) => {}
            Decision::Authenticate(AuthPath::Token) => return self.change_user_token(backend, &cu, next).await,
            Decision::Refuse(d) => return Err(self.denied(d, &next.user)),
            Decision::Greet => {
                return Err(self.backend_protocol("admission answered a change-user with a greeting".into()));
            }
        }
        let client_tls = self.log.tls_version.is_some();
        let (forwarded, exchange) = match self.ctx.greeting {
            GreetingMode::Flexgate => (
                Zeroizing::new(handshake::server_change_user(&cu, caps)),
                AuthExchange::new(handshake::FORCE_SWITCH_PLUGIN, b"", Vec::new(), client_tls, backend.leg()),
            ),
            // The client scrambled over the server's own nonce: forward as is.
            GreetingMode::Server => (
                Zeroizing::new(payload.to_vec()),
                AuthExchange::new(
                    cu.auth_plugin.unwrap_or(b"mysql_native_password"),
                    cu.auth_response,
                    Vec::new(),
                    client_tls,
                    backend.leg(),
                ),
            ),
        };
        let exchange = exchange.map_err(SessionError::AuthRefused)?;
        let mut backend_seq = 0;
        self.send_backend(backend, &mut backend_seq, &forwarded).await?;
        drop(forwarded);
        let r = self.exchange(backend, backend_seq, exchange).await?;
        if matches!(r, Exchanged::Accepted) {
            // The session line names the account the session ends as.
            if let Some(who) = self.attempt.take() {
                self.who = who;
            }
            self.identity = Some(next);
            // A password account: no token, no expiry.
            self.token_expiry = None;
        }
        Ok(r)
    }

    fn publish(&self, kind: LoginKind, outcome: LoginOutcome, duration: Duration) {
        let who = match (kind, &self.attempt) {
            (LoginKind::ChangeUser, Some(attempt)) => attempt,
            _ => &self.who,
        };
        self.ctx.events.publish(LoginEvent {
            at: SystemTime::now(),
            kind,
            listener: self.ctx.listener.clone(),
            client: self.peer,
            user: who.user.clone(),
            database: who.database.clone(),
            program: who.program.clone(),
            client_version: who.client_version.clone(),
            transport: Transport { tls_version: self.log.tls_version, cipher: self.log.cipher },
            plugin: self.plugin.as_deref().map(|p| loggable(p, 64)),
            outcome,
            duration,
            at_connect: self.log.at_connect,
            entra: self.entra_login.clone(),
        });
    }

    /// Sends the ERR packet for `e` if the client can still receive one; returns its code.
    /// Writes the session's last packet to the client and closes its side: best effort,
    /// bounded, since the client may be gone or not reading. Whether it went out.
    async fn send_last(&mut self, out: &[u8]) -> bool {
        let Some(client) = self.client.as_mut() else { return false };
        let sent = tokio::time::timeout(Duration::from_secs(1), async {
            client.write_all(out).await?;
            client.flush().await?;
            client.shutdown().await
        })
        .await;
        let ok = matches!(sent, Ok(Ok(())));
        if ok {
            self.log.bytes_out += out.len() as u64;
        }
        ok
    }

    async fn refuse(&mut self, e: &SessionError) -> Option<u16> {
        let r = e.refusal()?;
        self.client.as_ref()?;
        let mut out = Vec::with_capacity(16 + r.message.len());
        write_err(&mut out, self.client_seq, r.code, r.sql_state, &r.message, self.greeted);
        if self.send_last(&out).await {
            let client = self.client.as_mut()?;
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

    fn log_failure(&self, e: &SessionError) {
        let (listener, peer) = (&self.ctx.listener, self.peer);
        if let Some((_, reason)) = e.refused_at_connect() {
            // Refusals before the greeting are what a scan or a flood produces: counted
            // always, logged at most once a second per listener.
            if let Some(suppressed) = self.ctx.gate.may_log(Instant::now()) {
                let via = self.via.map(|v| v.to_string());
                warn!(
                    listener = %listener,
                    client = %peer,
                    via = via.as_deref().unwrap_or("-"),
                    reason,
                    error = %e,
                    suppressed,
                    refused_total = self.ctx.gate.refused(),
                    "connection refused"
                );
            }
            return;
        }
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

    /// Reads one client packet into `buf`, checking size and sequence id. Bytes the relay read
    /// ahead come first.
    async fn read_client(&mut self) -> Result<(), SessionError> {
        let client = self.client.as_mut().ok_or_else(|| SessionError::ClientGone("connection closed".into()))?;
        let read = if self.input.is_empty() {
            read_packet(client, &mut self.buf, MAX_PRE_AUTH_PAYLOAD).await
        } else {
            let ahead = std::mem::take(&mut self.input);
            let mut chained = (&ahead[..]).chain(client);
            let r = read_packet(&mut chained, &mut self.buf, MAX_PRE_AUTH_PAYLOAD).await;
            self.input = chained.into_inner().0.to_vec();
            r
        };
        let header = read.map_err(|e| match e {
            ReadError::Closed => SessionError::ClientGone("closed the connection".into()),
            ReadError::TooLarge { error, seq, raw } => {
                // The ERR answers the refused packet, so it carries the next sequence id.
                self.client_seq = seq.wrapping_add(1);
                match (self.ctx.proxy_protocol.is_some(), self.peer.ip()) {
                    // On a listener that takes headers, say why this one was not believed.
                    (true, Some(ip)) if self.via.is_none() && proxy_protocol::looks_like_header(&raw) => {
                        SessionError::Denied(Denial::UntrustedProxyHeader(ip))
                    }
                    _ => SessionError::ClientTooLarge(error),
                }
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
        let header = read_packet(backend, &mut self.buf, MAX_PRE_AUTH_PAYLOAD)
            .await
            .map_err(|e| backend_read_error(&self.ctx.backend, e))?;
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

    /// Relays the ERR a server sent instead of its greeting to a client that has sent its
    /// login: at the client's sequence id, and in the 4.1 format it expects (the server wrote
    /// it for a client it knew nothing about). SQLSTATE 08004, as MySQL Router does.
    async fn relay_server_err(&mut self) -> Result<(), SessionError> {
        let (code, state, message) = match ErrPacket::parse(&self.buf) {
            Ok(e) => {
                let mut state = *codes::STATE_AUTH_MODE;
                if let Some(s) = e.sql_state.and_then(|s| <[u8; 5]>::try_from(s).ok()) {
                    state = s;
                }
                (e.code, state, String::from_utf8_lossy(e.message).into_owned())
            }
            Err(_) => return Err(self.backend_protocol("malformed ERR instead of a greeting".into())),
        };
        let mut out = Vec::with_capacity(16 + message.len());
        write_err(&mut out, self.client_seq, code, &state, &message, true);
        self.client_seq = self.client_seq.wrapping_add(1);
        self.write_client(&out).await
    }

    /// Sends `payload` as the next packet of the server's leg. The framed copy is zeroed on
    /// drop: auth packets carry password-derived bytes.
    async fn send_backend(
        &self,
        backend: &mut BackendStream,
        seq: &mut u8,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let packet = Zeroizing::new(framed(*seq, payload));
        *seq = seq.wrapping_add(1);
        write_flush(backend, &packet).await.map_err(|e| SessionError::BackendLost {
            backend: self.ctx.backend.label().to_owned(),
            detail: e.to_string(),
        })
    }

    fn backend_error(&self, e: BackendError) -> SessionError {
        backend_error(&self.ctx.backend, e)
    }

    fn backend_protocol(&self, detail: String) -> SessionError {
        SessionError::BackendProtocol { backend: self.ctx.backend.label().to_owned(), detail }
    }
}

/// Connects to the server and reads its greeting (or the ERR it sends instead), leaving the
/// payload in `buf`. Every greeting refreshes the profile.
async fn dial(
    backend: &Backend,
    profile: &ProfileCell,
    buf: &mut Vec<u8>,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<Dialled, SessionError> {
    let mut stream = backend.dial(client).await.map_err(|e| backend_error(backend, e))?;
    // A server that accepts but never greets is as unavailable as one that refuses.
    let limit = backend.connect_timeout();
    let header = tokio::time::timeout(limit, read_packet(&mut stream, buf, MAX_PRE_AUTH_PAYLOAD))
        .await
        .map_err(|_| backend_error(backend, BackendError::Timeout(limit)))?
        .map_err(|e| backend_read_error(backend, e))?;
    let protocol = |detail: String| SessionError::BackendProtocol { backend: backend.label().to_owned(), detail };
    if header.seq != 0 {
        return Err(protocol(format!("greeting has sequence id {}", header.seq)));
    }
    if buf.first() == Some(&0xff) {
        let code = ErrPacket::parse(buf).map(|e| e.code).unwrap_or(0);
        return Ok(Dialled::Refused { code });
    }
    let g = Greeting::parse(buf).map_err(|e| protocol(format!("greeting: {e}")))?;
    if profile.observe(&g) {
        info!(
            backend = backend.label(),
            version = %String::from_utf8_lossy(g.server_version),
            capabilities = ?g.capabilities,
            "server profile learned"
        );
    }
    Ok(Dialled::Live(Live {
        stream,
        capabilities: g.capabilities,
        mariadb_capabilities: g.mariadb_capabilities,
        thread_id: g.connection_id,
        nonce: g.nonce(),
        plugin: g.auth_plugin.unwrap_or(b"mysql_native_password").to_vec(),
    }))
}

/// [`dial`], timed and reported: a greeting (or the server's own ERR, which is an answer)
/// means the server is reachable.
async fn watched_dial(
    backend: &Backend,
    profile: &ProfileCell,
    watch: &BackendWatch,
    buf: &mut Vec<u8>,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<Dialled, SessionError> {
    let started = Instant::now();
    let result = dial(backend, profile, buf, client).await;
    match &result {
        Ok(_) => watch.reached(started.elapsed()),
        Err(e) => watch.failed(&e.to_string()),
    }
    result
}

/// Learns the server profile from one connection, then closes it. The server counts it as
/// an aborted handshake from flexgate's address: this runs at startup, and again only while
/// the server is unreachable.
pub async fn probe(backend: &Backend, profile: &ProfileCell, watch: &BackendWatch) -> Result<(), SessionError> {
    let mut buf = Vec::new();
    match watched_dial(backend, profile, watch, &mut buf, None).await? {
        Dialled::Live(_) => Ok(()),
        Dialled::Refused { code } => {
            debug!(code, "server refused the profile probe");
            Err(SessionError::BackendLost {
                backend: backend.label().to_owned(),
                detail: format!("the server sent ERR {code} instead of a greeting"),
            })
        }
    }
}

/// A 20-byte nonce from the CSPRNG, each byte in 1..=127 as MySQL's own: a NUL would end
/// the greeting's nonce field early for some clients.
fn new_nonce() -> Result<[u8; NONCE_LEN], SessionError> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| SessionError::BackendProtocol {
        backend: "-".into(),
        detail: "the system CSPRNG failed".into(),
    })?;
    for b in &mut nonce {
        *b = (*b & 0x7f).max(1);
    }
    Ok(nonce)
}

fn backend_error(backend: &Backend, e: BackendError) -> SessionError {
    let backend = backend.label().to_owned();
    match e {
        BackendError::Unreachable(source) => SessionError::BackendUnreachable { backend, source },
        BackendError::Timeout(after) => SessionError::BackendTimeout { backend, after },
        BackendError::Tls(detail) => SessionError::BackendTls { backend, detail },
    }
}

fn backend_read_error(backend: &Backend, e: ReadError) -> SessionError {
    let backend = backend.label().to_owned();
    match e {
        ReadError::Closed => SessionError::BackendLost { backend, detail: "connection closed".into() },
        ReadError::Io(e) => SessionError::BackendLost { backend, detail: e.to_string() },
        ReadError::TooLarge { error, .. } => SessionError::BackendProtocol { backend, detail: error.to_string() },
    }
}

/// The client's and the listener's addresses, for the PROXY header to the server.
fn proxied(peer: ClientAddr, local: Option<SocketAddr>) -> Option<(SocketAddr, SocketAddr)> {
    match (peer, local) {
        (ClientAddr::Tcp(client), Some(local)) => Some((client, local)),
        _ => None,
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
