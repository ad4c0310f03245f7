//! What flexgate counts, and the Prometheus registry it is exposed from.
//!
//! Every label set is bounded: listener names come from the config, everything else from a
//! fixed list (outcomes, reasons, TLS versions and cipher suites, auth plugins). No user name
//! or address is ever a label, so a scan or a dictionary attack cannot grow memory.
//!
//! Sessions record through a [`ListenerMetrics`] built once per listener, which holds its
//! counters directly: recording is one relaxed atomic add, with no lookup or lock on the
//! session's path. Parts of the proxy that come later (the key breaker, JWKS) register their
//! own metrics with [`Metrics::register`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// How a session ended; the label of its closing log line and of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Logged in; the client sent COM_QUIT (then closed, with or without a TLS close_notify).
    Quit,
    /// Logged in; the client closed without COM_QUIT (MySQL's "aborted client").
    ClientClosed,
    /// Logged in; the server closed first (KILL, `wait_timeout`, shutdown).
    ServerClosed,
    /// Logged in; the relay ended with a socket error.
    RelayError,
    /// The server refused the login (its ERR was relayed).
    AuthFailed,
    /// The server refused the connection before greeting (its ERR was relayed).
    BackendRefused,
    /// The server could not be reached in time (ERR 2003).
    BackendUnavailable,
    /// The server broke off or broke the protocol during login.
    BackendError,
    /// TLS to the server failed.
    BackendTlsFailed,
    /// The password could not be encrypted to the server's key.
    PasswordProtectionFailed,
    /// The client sent a malformed or out-of-order packet.
    ProtocolError,
    /// The client sent a packet above the pre-auth limit.
    PacketTooLarge,
    /// The client's TLS handshake failed.
    TlsFailed,
    /// The client closed before the login completed.
    ClientGone,
    /// The client did not use TLS where it is required (ERR 3159).
    InsecureTransportRefused,
    /// flexgate refused a login that would expose a password (ERR 1251).
    AuthRefused,
    /// The login did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// The client cannot follow an auth switch (no CLIENT_PLUGIN_AUTH; ERR 1251).
    PluginAuthRequired,
    /// The live server no longer offered what the greeting promised.
    ServerChanged,
    /// The firewall refused the client's address (ERR 1130).
    HostNotAllowed,
    /// A connection limit refused the client (ERR 1040).
    TooManyConnections,
    /// A PROXY protocol header was missing, malformed, or from a peer not trusted to send one.
    ProxyHeaderRefused,
    /// flexgate was draining before it stops (ERR 1053).
    ShuttingDown,
    /// The key breaker was inaccessible: refused in place of the greeting (ERR 3032).
    KeyUnavailable,
    /// Logged in; closed by the key breaker (`on_inaccessible = "close-existing"`, ERR 3032).
    ClosedKeyUnavailable,
    /// flexgate refused an Entra login or a password login where only Entra is allowed
    /// (ERR 1045 with the reason).
    EntraRefused,
    /// flexgate could not log in to the server as the account an Entra principal maps to.
    MappedLoginFailed,
    /// Logged in with a token; closed at its expiry (`on_token_expiry = "close-session"`).
    ClosedTokenExpired,
}

impl Outcome {
    /// Every outcome, in counter order.
    pub const ALL: [Self; 28] = [
        Self::Quit,
        Self::ClientClosed,
        Self::ServerClosed,
        Self::RelayError,
        Self::AuthFailed,
        Self::BackendRefused,
        Self::BackendUnavailable,
        Self::BackendError,
        Self::BackendTlsFailed,
        Self::PasswordProtectionFailed,
        Self::ProtocolError,
        Self::PacketTooLarge,
        Self::TlsFailed,
        Self::ClientGone,
        Self::InsecureTransportRefused,
        Self::AuthRefused,
        Self::HandshakeTimeout,
        Self::PluginAuthRequired,
        Self::ServerChanged,
        Self::HostNotAllowed,
        Self::TooManyConnections,
        Self::ProxyHeaderRefused,
        Self::ShuttingDown,
        Self::KeyUnavailable,
        Self::ClosedKeyUnavailable,
        Self::EntraRefused,
        Self::MappedLoginFailed,
        Self::ClosedTokenExpired,
    ];

    /// The label used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quit => "quit",
            Self::ClientClosed => "client_closed",
            Self::ServerClosed => "server_closed",
            Self::RelayError => "relay_error",
            Self::AuthFailed => "auth_failed",
            Self::BackendRefused => "backend_refused",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendError => "backend_error",
            Self::BackendTlsFailed => "backend_tls_failed",
            Self::PasswordProtectionFailed => "password_protection_failed",
            Self::ProtocolError => "protocol_error",
            Self::PacketTooLarge => "packet_too_large",
            Self::TlsFailed => "tls_failed",
            Self::ClientGone => "client_gone",
            Self::InsecureTransportRefused => "insecure_transport_refused",
            Self::AuthRefused => "auth_refused",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::PluginAuthRequired => "plugin_auth_required",
            Self::ServerChanged => "server_changed",
            Self::HostNotAllowed => "host_not_allowed",
            Self::TooManyConnections => "too_many_connections",
            Self::ProxyHeaderRefused => "proxy_header_refused",
            Self::ShuttingDown => "shutting_down",
            Self::KeyUnavailable => "key_unavailable",
            Self::ClosedKeyUnavailable => "closed_key_unavailable",
            Self::EntraRefused => "entra_refused",
            Self::MappedLoginFailed => "mapped_login_failed",
            Self::ClosedTokenExpired => "closed_token_expired",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Process-wide totals, kept beside the registry for tests, logs and `/status`.
#[derive(Debug, Default)]
struct Totals {
    accepted: AtomicU64,
    active: AtomicU64,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    tls_handshake_failures: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    listener: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    listener: String,
    version: &'static str,
    cipher: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    listener: String,
    kind: &'static str,
    plugin: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabel {
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Handshake and login latencies: from half a millisecond (a local login) to the longest
/// `handshake_timeout` anyone should set.
fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// The auth plugins a login label may name; anything else is `other`, so that a client
/// cannot make up label values.
const PLUGINS: [&str; 7] = [
    "mysql_native_password",
    "caching_sha2_password",
    "sha256_password",
    "client_ed25519",
    "mysql_clear_password",
    "auth_gssapi_client",
    "dialog",
];

/// The plugin label for a plugin name a client or server sent.
pub fn plugin_label(name: Option<&str>) -> &'static str {
    match name {
        None => "none",
        Some(n) => PLUGINS.iter().find(|p| **p == n).copied().unwrap_or("other"),
    }
}

/// All of flexgate's metrics, shared by `Arc` (no global).
pub struct Metrics {
    registry: Mutex<Registry>,
    totals: Arc<Totals>,
    accepted: Family<ListenerLabel, Counter>,
    refused: Family<RefusedLabels, Counter>,
    active: Family<ListenerLabel, Gauge>,
    ended: Family<OutcomeLabels, Counter>,
    handshake: Histograms<ListenerLabel>,
    backend_connect: Histogram,
    backend_connect_failures: Counter,
    tls: Family<TlsLabels, Counter>,
    tls_failures: Family<ListenerLabel, Counter>,
    logins: Family<LoginLabels, Counter>,
    login_events_lost: Counter,
    bytes: Family<DirectionLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    generation: Gauge,
    cert_expiry: Family<ListenerLabel, Gauge>,
    /// Each listener's certificate `notAfter`, as Unix seconds: the gauge is the time left,
    /// computed at each scrape.
    cert_not_after: Mutex<BTreeMap<String, i64>>,
    ready: Gauge,
    readiness: Family<ConditionLabel, Gauge>,
    draining: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("totals", &self.totals).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds the registry with every metric flexgate's own parts record.
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("flexgate")),
            totals: Arc::default(),
            accepted: Family::default(),
            refused: Family::default(),
            active: Family::default(),
            ended: Family::default(),
            handshake: Family::new_with_constructor(latency_histogram),
            backend_connect: latency_histogram(),
            backend_connect_failures: Counter::default(),
            tls: Family::default(),
            tls_failures: Family::default(),
            logins: Family::default(),
            login_events_lost: Counter::default(),
            bytes: Family::default(),
            reloads: Family::default(),
            generation: Gauge::default(),
            cert_expiry: Family::default(),
            cert_not_after: Mutex::default(),
            ready: Gauge::default(),
            readiness: Family::default(),
            draining: Gauge::default(),
        };
        let build: Family<VersionLabel, Gauge> = Family::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        let started = Gauge::<i64, AtomicI64>::default();
        started.set(unix_seconds(SystemTime::now()));
        m.register("build_info", "flexgate's version (the value is always 1)", build);
        m.register("start_time_seconds", "When the process started, in Unix seconds", started);
        m.register("connections_accepted", "Client connections accepted, by listener", m.accepted.clone());
        m.register(
            "connections_refused",
            "Client connections refused before the greeting, by listener and reason",
            m.refused.clone(),
        );
        m.register("sessions_active", "Client connections open now, by listener", m.active.clone());
        m.register("sessions_ended", "Client connections ended, by listener and outcome", m.ended.clone());
        m.register(
            "handshake_duration_seconds",
            "From accept to the server's OK, for logins that succeeded, by listener",
            m.handshake.clone(),
        );
        m.register(
            "backend_connect_duration_seconds",
            "Dialling the server and reading its greeting",
            m.backend_connect.clone(),
        );
        m.register(
            "backend_connect_failures",
            "Server dials that failed or timed out",
            m.backend_connect_failures.clone(),
        );
        m.register("tls_handshakes", "Client TLS handshakes completed, by version and cipher suite", m.tls.clone());
        m.register("tls_handshake_failures", "Client TLS handshakes that failed, by listener", m.tls_failures.clone());
        m.register(
            "logins",
            "Login and change-user attempts, by listener, kind, auth plugin and outcome",
            m.logins.clone(),
        );
        m.register(
            "login_events_lost",
            "Login events the metrics fell too far behind to count",
            m.login_events_lost.clone(),
        );
        m.register("bytes", "Bytes relayed after login, by listener and direction", m.bytes.clone());
        m.register("config_reloads", "Config reload attempts, by result", m.reloads.clone());
        m.register(
            "config_generation",
            "The config generation in force (1 is the startup config)",
            m.generation.clone(),
        );
        m.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the listener's certificate expires (negative once expired)",
            m.cert_expiry.clone(),
        );
        m.register("ready", "1 when /readyz answers 200", m.ready.clone());
        m.register("readiness_condition", "1 for each readiness condition that holds", m.readiness.clone());
        m.register("draining", "1 once a stop signal has been received", m.draining.clone());
        m.generation.set(1);
        m
    }

    /// Adds a metric to the registry, under the `flexgate_` prefix; for parts of the proxy
    /// that own their metrics.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner).register(name, help, metric);
    }

    /// The handles a listener's sessions record through. The same name gives the same
    /// counters, so they survive reloads.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let label = ListenerLabel { listener: name.to_owned() };
        let ended = Outcome::ALL
            .map(|o| self.ended.get_or_create_owned(&OutcomeLabels { listener: name.to_owned(), outcome: o.as_str() }));
        let direction =
            |d| self.bytes.get_or_create_owned(&DirectionLabels { listener: name.to_owned(), direction: d });
        ListenerMetrics {
            name: name.to_owned(),
            totals: self.totals.clone(),
            accepted: self.accepted.get_or_create_owned(&label),
            active: self.active.get_or_create_owned(&label),
            ended: Arc::new(ended),
            handshake: self.handshake.get_or_create_owned(&label),
            tls_failures: self.tls_failures.get_or_create_owned(&label),
            bytes_from_client: direction("from_client"),
            bytes_to_client: direction("to_client"),
            refused: self.refused.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The server dials' latency histogram and failure counter.
    pub fn backend_dials(&self) -> (Histogram, Counter) {
        (self.backend_connect.clone(), self.backend_connect_failures.clone())
    }

    /// Counts one login event.
    pub fn login(&self, listener: &str, kind: &'static str, plugin: &'static str, outcome: &'static str) {
        self.logins.get_or_create(&LoginLabels { listener: listener.to_owned(), kind, plugin, outcome }).inc();
    }

    /// Counts login events lost to a lagging subscriber.
    pub fn login_events_lost(&self, n: u64) {
        self.login_events_lost.inc_by(n);
    }

    /// Records a reload attempt and the generation in force after it.
    pub fn reloaded(&self, ok: bool, generation: u64) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "failed" } }).inc();
        self.generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Replaces the listeners' certificate expiry times (at startup and each reload).
    pub fn set_certificates(&self, not_after: BTreeMap<String, SystemTime>) {
        let mut map = self.cert_not_after.lock().unwrap_or_else(PoisonError::into_inner);
        *map = not_after.into_iter().map(|(l, t)| (l, unix_seconds(t))).collect();
        self.cert_expiry.clear();
    }

    /// Each listener's certificate expiry time.
    pub fn certificates(&self) -> BTreeMap<String, SystemTime> {
        let map = self.cert_not_after.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(l, t)| (l.clone(), from_unix_seconds(*t))).collect()
    }

    /// Publishes the readiness verdict and each condition's state.
    pub fn set_readiness(&self, ready: bool, conditions: &[(&'static str, bool)]) {
        self.ready.set(i64::from(ready));
        for (c, ok) in conditions {
            self.readiness.get_or_create(&ConditionLabel { condition: c }).set(i64::from(*ok));
        }
    }

    /// A stop signal was received.
    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let now = unix_seconds(SystemTime::now());
        for (listener, t) in self.cert_not_after.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            self.cert_expiry.get_or_create(&ListenerLabel { listener: listener.clone() }).set(t - now);
        }
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().unwrap_or_else(PoisonError::into_inner),
        )?;
        Ok(out)
    }

    /// Sessions accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.totals.accepted.load(Ordering::Relaxed)
    }

    /// Sessions now open.
    pub fn active(&self) -> u64 {
        self.totals.active.load(Ordering::Relaxed)
    }

    /// Sessions that ended with `outcome`.
    pub fn outcome_total(&self, outcome: Outcome) -> u64 {
        self.totals.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Client TLS handshakes that failed.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.totals.tls_handshake_failures.load(Ordering::Relaxed)
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_unix_seconds(s: i64) -> SystemTime {
    let d = Duration::from_secs(s.unsigned_abs());
    if s >= 0 { SystemTime::UNIX_EPOCH + d } else { SystemTime::UNIX_EPOCH - d }
}

/// One listener's counters, as its sessions record them. Cloning shares them.
#[derive(Clone)]
pub struct ListenerMetrics {
    name: String,
    totals: Arc<Totals>,
    accepted: Counter,
    active: Gauge,
    ended: Arc<[Counter; Outcome::ALL.len()]>,
    handshake: Histogram,
    tls_failures: Counter,
    bytes_from_client: Counter,
    bytes_to_client: Counter,
    refused: Family<RefusedLabels, Counter>,
    tls: Family<TlsLabels, Counter>,
}

impl std::fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerMetrics").field("listener", &self.name).finish_non_exhaustive()
    }
}

impl Default for ListenerMetrics {
    /// Counters that no registry exposes: for tests that build a context by hand.
    fn default() -> Self {
        Metrics::new().listener("test")
    }
}

impl ListenerMetrics {
    /// A connection was accepted.
    pub fn accepted(&self) {
        self.totals.accepted.fetch_add(1, Ordering::Relaxed);
        self.totals.active.fetch_add(1, Ordering::Relaxed);
        self.accepted.inc();
        self.active.inc();
    }

    /// A session ended.
    pub fn ended(&self, outcome: Outcome) {
        // Counted before `active` drops, so that whoever sees a session gone sees its outcome.
        self.totals.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.ended[outcome as usize].inc();
        self.totals.active.fetch_sub(1, Ordering::Relaxed);
        self.active.dec();
    }

    /// A client was refused before the greeting (`reason` is the denial's label).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { listener: self.name.clone(), reason }).inc();
    }

    /// A login succeeded this long after the accept.
    pub fn logged_in(&self, after: Duration) {
        self.handshake.observe(after.as_secs_f64());
    }

    /// A client TLS handshake completed.
    pub fn tls(&self, version: &'static str, cipher: &'static str) {
        self.tls.get_or_create(&TlsLabels { listener: self.name.clone(), version, cipher }).inc();
    }

    /// A client TLS handshake failed.
    pub fn tls_failed(&self) {
        self.totals.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
        self.tls_failures.inc();
    }

    /// Connections this listener accepted.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.get()
    }

    /// This listener's open connections.
    pub fn active_count(&self) -> i64 {
        self.active.get()
    }

    /// Sessions (of every listener) that ended with `outcome`.
    pub fn outcome_total(&self, outcome: Outcome) -> u64 {
        self.totals.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// The counters the relay adds to as bytes pass: from the client, and to it.
    pub fn byte_counters(&self) -> (Counter, Counter) {
        (self.bytes_from_client.clone(), self.bytes_to_client.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_outcome_in_discriminant_order() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o}");
        }
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn listener_handles_survive_a_rebuild_and_show_in_the_exposition() {
        let m = Metrics::new();
        let a = m.listener("public");
        a.accepted();
        a.ended(Outcome::Quit);
        // A reload builds the handles again; they must be the same counters.
        let b = m.listener("public");
        b.accepted();
        b.refused("host_not_allowed");
        b.tls("TLSv1.3", "TLS13_AES_256_GCM_SHA384");
        let text = m.encode().unwrap_or_default();
        assert!(text.contains("flexgate_connections_accepted_total{listener=\"public\"} 2"), "{text}");
        assert!(text.contains("flexgate_sessions_active{listener=\"public\"} 1"), "{text}");
        assert!(text.contains("flexgate_sessions_ended_total{listener=\"public\",outcome=\"quit\"} 1"), "{text}");
        assert!(
            text.contains("flexgate_connections_refused_total{listener=\"public\",reason=\"host_not_allowed\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.accepted_total(), 2);
        assert_eq!(m.active(), 1);
    }

    #[test]
    fn certificate_expiry_is_computed_at_scrape() {
        let m = Metrics::new();
        let soon = SystemTime::now() + Duration::from_secs(3600);
        m.set_certificates(BTreeMap::from([("public".to_owned(), soon)]));
        let text = m.encode().unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("flexgate_tls_certificate_expiry_seconds{")).unwrap_or("");
        let secs: i64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!((3590..=3600).contains(&secs), "{line}");
    }

    #[test]
    fn plugin_labels_are_bounded() {
        assert_eq!(plugin_label(Some("client_ed25519")), "client_ed25519");
        assert_eq!(plugin_label(Some("x".repeat(100).as_str())), "other");
        assert_eq!(plugin_label(None), "none");
    }
}
