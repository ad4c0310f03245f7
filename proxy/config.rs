//! Configuration: TOML in, validated values out.
//!
//! The file is read into `Raw*` structs that mirror its syntax, then turned into typed values in
//! one pass. Holding a [`Config`] means every value was checked; there is no `validate()` to
//! forget. Every error names the file and the key, so that an operator can fix it without
//! reading our source.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

mod auth;
mod keyguard;
mod listener;
mod network;
mod ops;
mod print;

pub use auth::{
    AuthConfig, AuthMode, DEFAULT_AUDIENCE, DEFAULT_AUTHORITY, DEFAULT_CLOCK_SKEW, DEFAULT_GRAPH, DEFAULT_GRAPH_CACHE,
    DEFAULT_JWKS, EntraConfig, GraphConfig, JwksSource, OnTokenExpiry, PrincipalConfig, PrincipalKind, SecretSource,
};
pub use keyguard::{
    DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_RECOVER_AFTER, Expect, JsonValue, KeyFileFormat,
    KeyGuardConfig, MAX_GRACE, OnInaccessible, ProviderConfig, ProviderKind,
};
pub use listener::{
    ConnectRate, ConnectionLimits, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PREAUTH_PER_IP, ListenAddress, ListenerConfig,
    ProxyProtocolIn, SourceRule,
};
pub use network::{DEFAULT_KEEP_STALE, DEFAULT_MAX_TTL, DEFAULT_MIN_TTL, DnsConfig, IpSetConfig};
pub use ops::{
    AdminConfig, DEFAULT_ADMIN_ADDRESS, DEFAULT_BACKEND_RETRY, DEFAULT_DRAIN_TIMEOUT, ShutdownConfig, read_token,
};

/// A configuration problem, located by file and key.
#[derive(Debug, Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The config file.
    pub file: DisplayPath,
    /// Dotted key path, such as `listener[1].address`.
    pub key: String,
    /// What is wrong and, where possible, what is accepted.
    pub problem: String,
}

/// A path that displays as itself (std's `Path::display` is not `Debug`-friendly in messages).
#[derive(Debug, Clone)]
pub struct DisplayPath(pub PathBuf);

impl fmt::Display for DisplayPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where it was loaded from; relative paths inside it were resolved against its directory.
    pub source: PathBuf,
    /// The server behind flexgate.
    pub backend: BackendConfig,
    /// Client-facing TLS, the default of every listener.
    pub tls: ClientTlsConfig,
    /// Listening sockets, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// Named IP sets that `allow` and `deny` refer to as `@name`.
    pub ipsets: BTreeMap<String, IpSetConfig>,
    /// How hostnames in `allow` and `deny` are resolved.
    pub dns: DnsConfig,
    /// The admin HTTP listener, if `[admin]` is present.
    pub admin: Option<AdminConfig>,
    /// What a stop signal does.
    pub shutdown: ShutdownConfig,
    /// The key breaker, if `[key_guard]` is present.
    pub key_guard: Option<KeyGuardConfig>,
    /// How clients log in.
    pub auth: AuthConfig,
}

impl Config {
    /// The effective config, every default filled in, as TOML with secrets redacted (what
    /// `check-config --print` shows).
    pub fn effective_toml(&self) -> String {
        toml::to_string(&print::effective(self)).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }

    /// The config file and every file of it that a reload re-reads (certificates, keys, IP
    /// sets): reload watches their directories. The backend's CA is read at startup only, like
    /// the rest of `[backend]`.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.source.clone()];
        let mut tls = |t: &ClientTlsConfig| {
            if let Some(id) = &t.identity {
                files.push(id.cert.clone());
                files.push(id.key.clone());
            }
        };
        tls(&self.tls);
        for l in &self.listeners {
            tls(&l.tls);
        }
        files.extend(self.ipsets.values().map(|s| s.file.clone()));
        files.extend(self.admin.iter().flat_map(|a| a.token_file.clone()));
        // A provider's CA is configuration; the key file and token file are what it watches,
        // read at every check, and a change to them is no reason to reload.
        for p in self.key_guard.iter().flat_map(|k| &k.providers) {
            if let ProviderKind::Http { ca: Some(ca), .. } = &p.kind {
                files.push(ca.clone());
            }
        }
        // Held secrets and a file key set are re-read on reload: a rotated secret takes effect
        // without a restart.
        if let Some(e) = &self.auth.entra {
            match &e.jwks {
                JwksSource::File(p) | JwksSource::Https { ca: Some(p), .. } => files.push(p.clone()),
                JwksSource::Https { ca: None, .. } => {}
            }
            let secrets = e.principals.iter().map(|p| &p.backend_password);
            for s in secrets.chain(e.graph.iter().map(|g| &g.client_secret)) {
                if let SecretSource::File(p) = s {
                    files.push(p.clone());
                }
            }
            files.extend(e.graph.iter().flat_map(|g| g.ca.clone()));
        }
        files.sort();
        files.dedup();
        files
    }
}

/// How to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// TCP `host:port` or a Unix socket path.
    pub address: BackendAddress,
    /// Bound on establishing the connection (TCP or Unix, not TLS or login).
    pub connect_timeout: Duration,
    /// TLS on the flexgate → server leg.
    pub tls: BackendTlsConfig,
    /// Send the client's address to the server in a PROXY protocol header, so that its
    /// host-based grants and logs see the real client (MariaDB's `proxy_protocol_networks`).
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddress {
    /// `host:port`, resolved at each connect so that DNS changes are followed.
    Tcp {
        /// Host name or IP literal (without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How much the flexgate → server leg is protected, named as MySQL's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plaintext (or a Unix socket).
    Disabled,
    /// Encrypted, but the server's certificate is not checked.
    Required,
    /// Encrypted; the certificate must chain to `ca`.
    VerifyCa,
    /// Encrypted; the certificate must chain to `ca` and name `server_name`.
    VerifyIdentity,
}

/// Settings for TLS to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// Protection level.
    pub mode: BackendTlsMode,
    /// CA bundle for the verify modes.
    pub ca: Option<PathBuf>,
    /// Name expected in the server's certificate (default: the host of `backend.address`).
    pub server_name: Option<String>,
}

/// Lowest TLS version accepted from clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        })
    }
}

/// Client-facing TLS: `[tls]`, or a listener's own `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// Certificate chain and key; without them flexgate does not offer TLS.
    pub identity: Option<TlsIdentity>,
    /// The floor.
    pub min_version: TlsVersion,
    /// Refuse clients that did not upgrade to TLS (ERR 3159), as MySQL's option of that name.
    pub require_secure_transport: bool,
}

/// PEM files of a certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Who greets a client: flexgate itself, or the server (dialled at accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreetingMode {
    /// flexgate's own greeting; the server is dialled once the client is admitted, so a
    /// client that never logs in costs the server nothing. The default.
    Flexgate,
    /// The server's greeting, relayed, as a plain TCP proxy would: each client holds a server
    /// connection from accept on. For clients without pluggable authentication, and for
    /// applications that need the greeting's connection id to be the server's thread id.
    Server,
}

/// Default `backend.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `listener.handshake_timeout`, the same as MySQL's `connect_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    backend: RawBackend,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    listener: Vec<listener::RawListener>,
    #[serde(default)]
    ipsets: BTreeMap<String, network::RawIpSet>,
    #[serde(default)]
    dns: network::RawDns,
    admin: Option<ops::RawAdmin>,
    #[serde(default)]
    shutdown: ops::RawShutdown,
    key_guard: Option<keyguard::RawKeyGuard>,
    #[serde(default)]
    auth: auth::RawAuth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    connect_timeout: Option<String>,
    tls: Option<RawBackendTls>,
    proxy_protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    mode: Option<String>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    min_version: Option<String>,
    require_secure_transport: Option<bool>,
}

impl Config {
    /// Reads and validates a config file. File references inside it are checked for existence
    /// only; [`crate::tls`] loads them.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let at = Locator { file: path };
        let text = std::fs::read_to_string(path).map_err(|e| at.err("(file)", format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Validates config text as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let at = Locator { file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| at.toml(text, &e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let backend = backend(raw.backend, &at, base)?;
        let tls = client_tls(raw.tls.clone(), &at, base, "tls")?;
        let ipsets = network::ipsets(raw.ipsets, &at, base)?;
        let dns = network::dns(raw.dns, &at)?;
        let admin = ops::admin(raw.admin, &at, base)?;
        let shutdown = ops::shutdown(raw.shutdown, &at)?;
        let key_guard = keyguard::key_guard(raw.key_guard, &at, base)?;
        let auth = auth::auth(raw.auth, &at, base)?;
        if raw.listener.is_empty() {
            return Err(at.err("listener", "at least one [[listener]] is required".into()));
        }
        let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(raw.listener.len());
        for (i, l) in raw.listener.into_iter().enumerate() {
            let l = listener::listener(
                l,
                &listener::Context { at: &at, base, index: i, tls: &raw.tls, ipsets: &ipsets, auth: &auth },
            )?;
            if let Some(other) = listeners.iter().find(|o| o.name == l.name) {
                return Err(at.err(&format!("listener[{i}].name"), format!("\"{}\" is used twice", other.name)));
            }
            if !l.address.is_ephemeral() && listeners.iter().any(|o| o.address == l.address) {
                return Err(at.err(&format!("listener[{i}].address"), format!("{} is used twice", l.address)));
            }
            if backend.connect_timeout >= l.handshake_timeout {
                return Err(at.err(
                    "backend.connect_timeout",
                    format!(
                        "{:?} must be shorter than listener[{i}].handshake_timeout ({:?}), or clients time out \
                         before they can be told the server is unreachable",
                        backend.connect_timeout, l.handshake_timeout
                    ),
                ));
            }
            listeners.push(l);
        }
        Ok(Self { source: path.to_path_buf(), backend, tls, listeners, ipsets, dns, admin, shutdown, key_guard, auth })
    }
}

struct Locator<'a> {
    file: &'a Path,
}

impl Locator<'_> {
    fn err(&self, key: &str, problem: String) -> ConfigError {
        ConfigError { file: DisplayPath(self.file.to_path_buf()), key: key.to_owned(), problem }
    }

    /// toml reports a byte span, not a key; the key is recovered from the line the span is on.
    fn toml(&self, text: &str, e: &toml::de::Error) -> ConfigError {
        let start = e.span().map_or(0, |s| s.start).min(text.len());
        let line_no = text[..start].matches('\n').count() + 1;
        let line = text.lines().nth(line_no - 1).unwrap_or_default();
        let key = match line.split_once('=') {
            Some((k, _)) => k.trim().to_owned(),
            None => line.trim().to_owned(),
        };
        let problem = e.message().to_owned();
        self.err(&format!("{key} (line {line_no})"), problem)
    }
}

fn backend(raw: RawBackend, at: &Locator<'_>, base: &Path) -> Result<BackendConfig, ConfigError> {
    let address = backend_address(&raw.address, base).map_err(|p| at.err("backend.address", p))?;
    let connect_timeout = duration_or(raw.connect_timeout.as_deref(), DEFAULT_CONNECT_TIMEOUT)
        .map_err(|p| at.err("backend.connect_timeout", p))?;
    let tls = match raw.tls {
        None => BackendTlsConfig { mode: BackendTlsMode::Disabled, ca: None, server_name: None },
        Some(t) => {
            let mode = match t.mode.as_deref() {
                None | Some("disabled") => BackendTlsMode::Disabled,
                Some("required") => BackendTlsMode::Required,
                Some("verify-ca") => BackendTlsMode::VerifyCa,
                Some("verify-identity") => BackendTlsMode::VerifyIdentity,
                Some(other) => {
                    return Err(at.err(
                        "backend.tls.mode",
                        format!(
                            "\"{other}\" is not a mode; accepted: \"disabled\", \"required\", \"verify-ca\", \"verify-identity\""
                        ),
                    ));
                }
            };
            let ca = t.ca.map(|p| existing_file(base, p)).transpose().map_err(|p| at.err("backend.tls.ca", p))?;
            if matches!(mode, BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity) && ca.is_none() {
                return Err(
                    at.err("backend.tls.ca", "required when mode is \"verify-ca\" or \"verify-identity\"".into())
                );
            }
            if let Some(name) = &t.server_name {
                rustls_pki_types::ServerName::try_from(name.as_str()).map_err(|e| {
                    at.err("backend.tls.server_name", format!("\"{name}\" is not a DNS name or IP: {e}"))
                })?;
            }
            BackendTlsConfig { mode, ca, server_name: t.server_name }
        }
    };
    if tls.mode != BackendTlsMode::Disabled && matches!(address, BackendAddress::Unix(_)) {
        return Err(at.err(
            "backend.tls.mode",
            "TLS over a Unix socket is not supported (the socket is already local); use mode = \"disabled\"".into(),
        ));
    }
    let proxy_protocol = match raw.proxy_protocol.as_deref() {
        None | Some("none") => None,
        Some(v) => Some(crate::proxy_protocol::Version::parse(v).ok_or_else(|| {
            at.err("backend.proxy_protocol", format!("\"{v}\" is not accepted; use \"v1\", \"v2\" or \"none\""))
        })?),
    };
    if proxy_protocol.is_some() && matches!(address, BackendAddress::Unix(_)) {
        return Err(at.err(
            "backend.proxy_protocol",
            "needs a TCP backend: over a Unix socket MariaDB would need \"localhost\" in \
             proxy_protocol_networks, which lets every local process claim any address"
                .into(),
        ));
    }
    Ok(BackendConfig { address, connect_timeout, tls, proxy_protocol })
}

fn client_tls(raw: RawTls, at: &Locator<'_>, base: &Path, section: &str) -> Result<ClientTlsConfig, ConfigError> {
    let key = |k: &str| format!("{section}.{k}");
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(v @ ("1.0" | "1.1")) => {
            return Err(at.err(
                &key("min_version"),
                format!("TLS {v} is insecure and not supported; accepted values: \"1.2\", \"1.3\""),
            ));
        }
        Some(v) => {
            return Err(at.err(&key("min_version"), format!("\"{v}\" is not accepted; use \"1.2\" or \"1.3\"")));
        }
    };
    let identity = match (raw.cert, raw.key) {
        (Some(cert), Some(k)) => Some(TlsIdentity {
            cert: existing_file(base, cert).map_err(|p| at.err(&key("cert"), p))?,
            key: existing_file(base, k).map_err(|p| at.err(&key("key"), p))?,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(at.err(&key("key"), format!("missing: {section}.cert needs its private key")));
        }
        (None, Some(_)) => return Err(at.err(&key("cert"), format!("missing: {section}.key needs its certificate"))),
    };
    let require_secure_transport = raw.require_secure_transport.unwrap_or(true);
    if require_secure_transport && identity.is_none() {
        return Err(at.err(
            &key("cert"),
            format!(
                "required while {section}.require_secure_transport = true (the default); give {section}.cert and \
                 {section}.key, or allow plaintext with require_secure_transport = false"
            ),
        ));
    }
    Ok(ClientTlsConfig { identity, min_version, require_secure_transport })
}

fn backend_address(s: &str, base: &Path) -> Result<BackendAddress, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("\"unix:\" needs a socket path, such as \"unix:/run/mysqld/mysqld.sock\"".into());
        }
        return Ok(BackendAddress::Unix(base.join(path)));
    }
    let bad = || format!("\"{s}\" is not \"host:port\", \"[ipv6]:port\" or \"unix:/path/to/socket\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?.to_string(),
        None if host.contains(':') || host.is_empty() => return Err(bad()),
        None => host.to_owned(),
    };
    if port == 0 {
        return Err(format!("\"{s}\": port 0 cannot be connected to"));
    }
    Ok(BackendAddress::Tcp { host, port })
}

fn existing_file(base: &Path, p: PathBuf) -> Result<PathBuf, String> {
    let full = base.join(&p);
    match std::fs::metadata(&full) {
        Ok(m) if m.is_file() => Ok(full),
        Ok(_) => Err(format!("{} is not a file", full.display())),
        Err(e) => Err(format!("cannot read {}: {e}", full.display())),
    }
}

fn duration_or(s: Option<&str>, default: Duration) -> Result<Duration, String> {
    s.map_or(Ok(default), parse_duration)
}

/// Parses `"500ms"`, `"10s"`, `"5m"` or `"1h"`. Zero is refused: every duration here is a bound.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("\"{s}\" is not a duration; use a whole number with ms, s, m or h, such as \"500ms\" or \"10s\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("\"{s}\" must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
