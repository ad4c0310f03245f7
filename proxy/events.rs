//! Login events: one typed record per login and per change-user attempt.
//!
//! Sessions publish; the log, and later metrics and threat detection, subscribe. The channel
//! is a bounded broadcast: publishing never waits, and a subscriber that falls behind loses
//! the oldest events (and learns how many) instead of slowing a login down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tracing::{debug, info, warn};

/// Events a slow subscriber may fall behind by before it loses some.
pub const CAPACITY: usize = 4096;

/// Which kind of authentication the event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    /// The connection's first login.
    Connect,
    /// `COM_CHANGE_USER` on a logged-in connection.
    ChangeUser,
}

impl LoginKind {
    /// The label used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ChangeUser => "change_user",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The server accepted the credentials.
    Ok,
    /// The server refused, with its error code (1045 for a wrong password).
    ServerRefused {
        /// The server's error code.
        code: u16,
    },
    /// flexgate refused before the server decided, with the code it sent.
    Refused {
        /// Why, as a short stable label (e.g. `insecure_transport`).
        reason: &'static str,
        /// The ERR code sent to the client.
        code: u16,
    },
    /// The attempt did not finish within `handshake_timeout`.
    Timeout,
    /// The client went away before the server decided.
    ClientGone,
    /// The client sent something that is not the protocol, or that flexgate does not offer.
    ClientError,
    /// The client's TLS handshake failed.
    TlsFailed,
    /// The server could not be reached.
    ServerUnreachable,
    /// The server broke off or broke the protocol.
    ServerError,
}

impl LoginOutcome {
    /// The label used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ServerRefused { .. } => "server_refused",
            Self::Refused { .. } => "refused",
            Self::Timeout => "timeout",
            Self::ClientGone => "client_gone",
            Self::ClientError => "client_error",
            Self::TlsFailed => "tls_failed",
            Self::ServerUnreachable => "server_unreachable",
            Self::ServerError => "server_error",
        }
    }

    /// The MySQL error code the client received, if any.
    pub const fn code(self) -> Option<u16> {
        match self {
            Self::ServerRefused { code } | Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The client's transport to flexgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// `TLSv1.3`, `TLSv1.2`, or `None` for plaintext.
    pub tls_version: Option<&'static str>,
    /// The negotiated cipher suite.
    pub cipher: Option<&'static str>,
}

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    /// A TCP client: the address it connected from, or the one its trusted PROXY protocol
    /// header carried.
    Tcp(SocketAddr),
    /// A client on a Unix-socket listener, which has no address (and is local).
    Unix,
}

impl ClientAddr {
    /// The IP address, for rules and limits that key on it.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Self::Tcp(a) => Some(a.ip()),
            Self::Unix => None,
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix => f.write_str("unix"),
        }
    }
}

/// One login or change-user attempt. Holds no secret: user names and attributes are what the
/// client announced, cut to a loggable length.
#[derive(Debug, Clone)]
pub struct LoginEvent {
    /// When the attempt ended.
    pub at: SystemTime,
    /// Login or change-user.
    pub kind: LoginKind,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client's address.
    pub client: ClientAddr,
    /// The account name the client sent, if it got that far.
    pub user: Option<String>,
    /// The initial schema.
    pub database: Option<String>,
    /// `program_name` from the connection attributes.
    pub program: Option<String>,
    /// `_client_name` and `_client_version` from the connection attributes.
    pub client_version: Option<String>,
    /// The client's transport.
    pub transport: Transport,
    /// The last auth plugin of the exchange (the server's choice after the switch).
    pub plugin: Option<String>,
    /// How it ended.
    pub outcome: LoginOutcome,
    /// From the start of the attempt (accept, or the change-user command) to its end.
    pub duration: Duration,
    /// Refused at connect by the firewall, a limit or a PROXY header check: what a scan or a
    /// flood produces, so the log subscriber keeps these out of the info log (the session
    /// logs them rate-limited instead).
    pub at_connect: bool,
    /// The Entra identity of a token login (accepted or refused), when the login name is an
    /// Entra principal.
    pub entra: Option<EntraLogin>,
}

/// What a login event says about an Entra token login. Ids only: no name from the token, and
/// never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraLogin {
    /// The principal's login name.
    pub principal: String,
    /// `user`, `group` or `app`.
    pub kind: &'static str,
    /// The server account it maps to.
    pub backend_user: String,
    /// The token's tenant, object id and client application, if its signature verified.
    pub tid: Option<String>,
    /// The token's `oid`.
    pub oid: Option<String>,
    /// The token's `appid`/`azp`.
    pub appid: Option<String>,
    /// Why it was refused (a stable label), or `None` if accepted.
    pub reason: Option<&'static str>,
}

/// Where sessions publish login events. Cloning shares the channel.
#[derive(Debug, Clone)]
pub struct LoginEvents {
    tx: broadcast::Sender<Arc<LoginEvent>>,
}

impl Default for LoginEvents {
    fn default() -> Self {
        Self { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl LoginEvents {
    /// Publishes without waiting. With no subscriber the event is dropped.
    pub fn publish(&self, e: LoginEvent) {
        let _ = self.tx.send(Arc::new(e));
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoginEvent>> {
        self.tx.subscribe()
    }
}

/// The log subscriber: one `login` line per event, until the channel closes.
pub async fn log_events(mut rx: broadcast::Receiver<Arc<LoginEvent>>) {
    loop {
        match rx.recv().await {
            Ok(e) => log(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(dropped = n, "login log fell behind; events were dropped");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn log(e: &LoginEvent) {
    if e.at_connect {
        debug!(target: "flexgate::login", listener = %e.listener, client = %e.client, outcome = e.outcome.as_str(), "login");
        return;
    }
    info!(
        target: "flexgate::login",
        kind = e.kind.as_str(),
        listener = %e.listener,
        client = %e.client,
        user = e.user.as_deref().unwrap_or("-"),
        database = e.database.as_deref().unwrap_or("-"),
        program = e.program.as_deref().unwrap_or("-"),
        client_version = e.client_version.as_deref().unwrap_or("-"),
        tls_version = e.transport.tls_version.unwrap_or("none"),
        cipher = e.transport.cipher.unwrap_or("none"),
        plugin = e.plugin.as_deref().unwrap_or("-"),
        outcome = e.outcome.as_str(),
        reason = match e.outcome { LoginOutcome::Refused { reason, .. } => reason, _ => "-" },
        error_code = e.outcome.code().unwrap_or(0),
        duration_ms = u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX),
        entra_principal = e.entra.as_ref().map_or("-", |x| x.principal.as_str()),
        entra_kind = e.entra.as_ref().map_or("-", |x| x.kind),
        backend_user = e.entra.as_ref().map_or("-", |x| x.backend_user.as_str()),
        tid = e.entra.as_ref().and_then(|x| x.tid.as_deref()).unwrap_or("-"),
        oid = e.entra.as_ref().and_then(|x| x.oid.as_deref()).unwrap_or("-"),
        appid = e.entra.as_ref().and_then(|x| x.appid.as_deref()).unwrap_or("-"),
        "login"
    );
}

/// Cuts peer-controlled text for logs and events: at most `max` characters, lossily decoded.
pub fn loggable(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u16) -> LoginEvent {
        LoginEvent {
            at: SystemTime::UNIX_EPOCH,
            kind: LoginKind::Connect,
            listener: "l".into(),
            client: ClientAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 1))),
            user: Some("u".into()),
            database: None,
            program: None,
            client_version: None,
            transport: Transport { tls_version: None, cipher: None },
            plugin: None,
            outcome: LoginOutcome::ServerRefused { code: n },
            duration: Duration::ZERO,
            at_connect: false,
            entra: None,
        }
    }

    #[test]
    fn publishing_never_blocks_and_a_slow_subscriber_loses_the_oldest() {
        let events = LoginEvents::default();
        events.publish(event(1)); // no subscriber: dropped, no error
        let mut rx = events.subscribe();
        for n in 0..(CAPACITY as u16 + 10) {
            events.publish(event(n));
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
        assert_eq!(rx.try_recv().ok().map(|e| e.outcome), Some(LoginOutcome::ServerRefused { code: 10 }));
    }

    #[test]
    fn loggable_cuts_long_names() {
        assert_eq!(loggable(b"bob", 80), "bob");
        assert_eq!(loggable(&[b'a'; 100], 80).chars().count(), 81);
    }
}
