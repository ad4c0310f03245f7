//! `[[listener]]`: one access path, with its address, rules, limits and TLS.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::firewall::dns::Hostname;

use super::{
    AuthConfig, AuthMode, ClientTlsConfig, ConfigError, DEFAULT_HANDSHAKE_TIMEOUT, GreetingMode, IpSetConfig, Locator,
    RawTls, client_tls, duration_or, parse_duration,
};

/// Default `listener.max_connections`: far below the descriptor limit flexgate raises itself
/// to, and far above what one MySQL server serves.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default `listener.max_preauth_per_ip`: enough for a connection pool opening at once, too
/// few for one host to hold the listener's handshake slots.
pub const DEFAULT_MAX_PREAUTH_PER_IP: u32 = 16;

/// One listening socket: an access path of the managed server it stands in for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Operator's name for it, used in logs, events and metrics.
    pub name: String,
    /// Where to listen.
    pub address: ListenAddress,
    /// Deadline for everything before the login completes.
    pub handshake_timeout: Duration,
    /// Whose greeting clients get.
    pub greeting: GreetingMode,
    /// Client-facing TLS: the listener's own `[listener.tls]` over `[tls]`.
    pub tls: ClientTlsConfig,
    /// Clients that may connect. Empty: nobody may (deny by default).
    pub allow: Vec<SourceRule>,
    /// Clients that may not, even if `allow` lists them.
    pub deny: Vec<SourceRule>,
    /// Bounds on connections, counted on the real client address.
    pub limits: ConnectionLimits,
    /// Peers whose PROXY protocol headers are believed.
    pub proxy_protocol: Option<ProxyProtocolIn>,
    /// How clients log in here: the listener's `auth_mode`, or `auth.mode`.
    pub auth_mode: AuthMode,
}

/// A listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// TCP on one interface address, or all of them (`0.0.0.0`, `[::]`).
    Tcp(SocketAddr),
    /// A Unix domain socket; the file's permissions decide who may connect.
    Unix {
        /// The socket file.
        path: PathBuf,
        /// Permission bits given to it after binding.
        mode: u32,
    },
}

impl ListenAddress {
    /// Whether both name the same socket (a Unix socket's mode is not part of its identity: a
    /// reload changes it in place).
    pub fn same_socket(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tcp(a), Self::Tcp(b)) => a == b,
            (Self::Unix { path: a, .. }, Self::Unix { path: b, .. }) => a == b,
            _ => false,
        }
    }

    /// Whether the OS picks the address (TCP port 0), so two listeners may both ask for it.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, Self::Tcp(a) if a.port() == 0)
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `allow` or `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRule {
    /// An address (as a /32 or /128) or a CIDR range.
    Net(IpNet),
    /// `@name`: a named IP set from `[ipsets.name]`.
    Set(String),
    /// A hostname, matched against the addresses it resolves to.
    Host(Hostname),
}

impl fmt::Display for SourceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(n) => n.fmt(f),
            Self::Set(s) => write!(f, "@{s}"),
            Self::Host(h) => h.fmt(f),
        }
    }
}

/// Per-listener bounds. Per-address limits do not apply to Unix-socket clients, which have
/// no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open client connections on this listener.
    pub max_connections: u32,
    /// Open connections from one client address.
    pub max_connections_per_ip: Option<u32>,
    /// Connections from one address that have not finished logging in.
    pub max_preauth_per_ip: u32,
    /// New connections from one address, as a token bucket.
    pub connect_rate_per_ip: Option<ConnectRate>,
}

/// `"N/s"` or `"N/m"`: at most `count` new connections per `per`, with bursts of up to
/// `count` (a token bucket of that size, refilled evenly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRate {
    /// Connections per period, and the burst size.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl fmt::Display for ConnectRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_millis() {
            1000 => write!(f, "{}/s", self.count),
            60_000 => write!(f, "{}/m", self.count),
            ms if ms % 1000 == 0 => write!(f, "{}/{}s", self.count, ms / 1000),
            ms => write!(f, "{}/{ms}ms", self.count),
        }
    }
}

/// `proxy_protocol = { trusted = [...] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolIn {
    /// Peers that must send a header, and whose headers are believed. A header from any
    /// other peer is refused.
    pub trusted: Vec<IpNet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    name: String,
    address: String,
    socket_mode: Option<String>,
    handshake_timeout: Option<String>,
    greeting: Option<String>,
    tls: Option<RawTls>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
    max_preauth_per_ip: Option<u32>,
    connect_rate_per_ip: Option<String>,
    proxy_protocol: Option<RawProxyProtocol>,
    auth_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyProtocol {
    trusted: Vec<String>,
}

/// What a listener's parse needs from the rest of the file.
pub(super) struct Context<'a> {
    pub(super) at: &'a Locator<'a>,
    pub(super) base: &'a Path,
    pub(super) index: usize,
    pub(super) tls: &'a RawTls,
    pub(super) ipsets: &'a BTreeMap<String, IpSetConfig>,
    pub(super) auth: &'a AuthConfig,
}

pub(super) fn listener(raw: RawListener, cx: &Context<'_>) -> Result<ListenerConfig, ConfigError> {
    let i = cx.index;
    let key = |k: &str| format!("listener[{i}].{k}");
    let err = |k: &str, p: String| cx.at.err(&key(k), p);
    if raw.name.trim().is_empty() {
        return Err(err("name", "must not be empty".into()));
    }
    let address = listen_address(&raw.address, raw.socket_mode.as_deref(), cx.base).map_err(|(k, p)| err(k, p))?;
    let handshake_timeout = duration_or(raw.handshake_timeout.as_deref(), DEFAULT_HANDSHAKE_TIMEOUT)
        .map_err(|p| err("handshake_timeout", p))?;
    let greeting = match raw.greeting.as_deref() {
        None | Some("flexgate") => GreetingMode::Flexgate,
        Some("server") => GreetingMode::Server,
        Some(other) => {
            return Err(err("greeting", format!("\"{other}\" is not accepted; use \"flexgate\" or \"server\"")));
        }
    };
    let tls = match raw.tls {
        None => client_tls(cx.tls.clone(), cx.at, cx.base, "tls")?,
        Some(own) => {
            // Each key the listener leaves out comes from [tls]; a certificate comes with its key.
            let (cert, k) = match (own.cert, own.key) {
                (None, None) => (cx.tls.cert.clone(), cx.tls.key.clone()),
                pair => pair,
            };
            let merged = RawTls {
                cert,
                key: k,
                min_version: own.min_version.or_else(|| cx.tls.min_version.clone()),
                require_secure_transport: own.require_secure_transport.or(cx.tls.require_secure_transport),
            };
            client_tls(merged, cx.at, cx.base, &key("tls"))?
        }
    };
    let is_unix = matches!(address, ListenAddress::Unix { .. });
    let rules = |k: &str, entries: Option<Vec<String>>| -> Result<Vec<SourceRule>, ConfigError> {
        let entries = entries.unwrap_or_default();
        if is_unix && !entries.is_empty() {
            return Err(err(
                k,
                "IP rules do not apply to a Unix socket; its file permissions (socket_mode, and the directory's) \
                 decide who may connect"
                    .into(),
            ));
        }
        entries
            .iter()
            .enumerate()
            .map(|(j, e)| source_rule(e, cx.ipsets).map_err(|p| err(&format!("{k}[{j}]"), p)))
            .collect()
    };
    let allow = rules("allow", raw.allow)?;
    let deny = rules("deny", raw.deny)?;
    if let Some(j) = deny.iter().position(|r| matches!(r, SourceRule::Host(_))) {
        // An allowed name that fails to resolve admits nobody: fail closed. A denied name that
        // fails to resolve would deny nobody: fail open. So deny takes addresses only.
        return Err(err(
            &format!("deny[{j}]"),
            "hostnames are not accepted in deny: when the name fails to resolve it would deny nobody; \
             list its addresses or an @ipset instead"
                .into(),
        ));
    }
    let positive = |k: &str, v: Option<u32>| match v {
        Some(0) => Err(err(k, "must be at least 1; leave it out for the default".into())),
        v => Ok(v),
    };
    let limits = ConnectionLimits {
        max_connections: positive("max_connections", raw.max_connections)?.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_connections_per_ip: positive("max_connections_per_ip", raw.max_connections_per_ip)?,
        max_preauth_per_ip: positive("max_preauth_per_ip", raw.max_preauth_per_ip)?
            .unwrap_or(DEFAULT_MAX_PREAUTH_PER_IP),
        connect_rate_per_ip: raw
            .connect_rate_per_ip
            .as_deref()
            .map(connect_rate)
            .transpose()
            .map_err(|p| err("connect_rate_per_ip", p))?,
    };
    let proxy_protocol = match raw.proxy_protocol {
        None => None,
        Some(_) if is_unix => {
            return Err(err(
                "proxy_protocol",
                "not supported on a Unix-socket listener: there is no peer address to trust".into(),
            ));
        }
        Some(p) if p.trusted.is_empty() => {
            return Err(err(
                "proxy_protocol.trusted",
                "must list the balancers' addresses or ranges; a header from anyone else is refused".into(),
            ));
        }
        Some(p) => Some(ProxyProtocolIn {
            trusted: p
                .trusted
                .iter()
                .enumerate()
                .map(|(j, t)| match source_rule(t, cx.ipsets) {
                    Ok(SourceRule::Net(n)) => Ok(n),
                    _ => Err(err(
                        &format!("proxy_protocol.trusted[{j}]"),
                        format!("\"{t}\" is not an IP address or CIDR range"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        }),
    };
    let auth_mode = super::auth::listener_mode(raw.auth_mode.as_deref(), cx.auth, &key("auth_mode"), cx.at)?
        .unwrap_or(cx.auth.mode);
    Ok(ListenerConfig {
        name: raw.name,
        address,
        handshake_timeout,
        greeting,
        tls,
        allow,
        deny,
        limits,
        proxy_protocol,
        auth_mode,
    })
}

fn listen_address(s: &str, mode: Option<&str>, base: &Path) -> Result<ListenAddress, (&'static str, String)> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(("address", "\"unix:\" needs a socket path, such as \"unix:/run/flexgate/mysql.sock\"".into()));
        }
        let mode = match mode {
            None => 0o660,
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or(("socket_mode", format!("\"{m}\" is not octal permission bits such as \"0660\"")))?,
        };
        return Ok(ListenAddress::Unix { path: base.join(path), mode });
    }
    if mode.is_some() {
        return Err(("socket_mode", "only applies to a Unix-socket address (\"unix:/path\")".into()));
    }
    s.parse().map(ListenAddress::Tcp).map_err(|_| {
        (
            "address",
            format!(
                "\"{s}\" is not an IP:port such as \"0.0.0.0:3306\" or \"[::]:3306\", nor \"unix:/path/to/socket\""
            ),
        )
    })
}

/// Addresses, CIDRs, `@set` references and hostnames, told apart by their syntax.
fn source_rule(s: &str, ipsets: &BTreeMap<String, IpSetConfig>) -> Result<SourceRule, String> {
    let s = s.trim();
    if let Some(name) = s.strip_prefix('@') {
        return if ipsets.contains_key(name) {
            Ok(SourceRule::Set(name.to_owned()))
        } else {
            let known: Vec<&str> = ipsets.keys().map(String::as_str).collect();
            Err(format!(
                "no [ipsets.{name}] is defined (defined: {})",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            ))
        };
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SourceRule::Net(IpNet::from(ip)));
    }
    if s.contains('/') {
        return s
            .parse::<IpNet>()
            .map(|n| SourceRule::Net(n.trunc()))
            .map_err(|_| format!("\"{s}\" is not a CIDR range such as \"203.0.113.0/24\" or \"2001:db8::/48\""));
    }
    if let Ok(h) = Hostname::parse(s) {
        return Ok(SourceRule::Host(h));
    }
    Err(format!(
        "\"{s}\" is not an IP address, a CIDR range, a hostname or an @ipset reference; to allow everyone, write \
         \"0.0.0.0/0\" and \"::/0\""
    ))
}

fn connect_rate(s: &str) -> Result<ConnectRate, String> {
    let bad = || format!("\"{s}\" is not a rate such as \"20/s\" or \"300/m\"");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        other => parse_duration(other).map_err(|_| bad())?,
    };
    if count == 0 {
        return Err(format!("\"{s}\": the count must be at least 1"));
    }
    Ok(ConnectRate { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_told_apart_by_syntax() {
        let mut sets = BTreeMap::new();
        sets.insert(
            "azure".to_owned(),
            IpSetConfig {
                name: "azure".into(),
                file: "x".into(),
                format: crate::firewall::IpSetFormat::CidrList,
                tags: vec![],
            },
        );
        let net = |s: &str| SourceRule::Net(s.parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(source_rule("198.51.100.7", &sets), Ok(net("198.51.100.7/32")));
        assert_eq!(source_rule("2001:db8::1", &sets), Ok(net("2001:db8::1/128")));
        assert_eq!(source_rule("10.1.2.3/8", &sets), Ok(net("10.0.0.0/8")));
        assert_eq!(source_rule("@azure", &sets), Ok(SourceRule::Set("azure".into())));
        let host = Hostname::parse("app.example.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(source_rule("App.Example.com.", &sets), Ok(SourceRule::Host(host)));
        assert!(source_rule("@nope", &sets).is_err_and(|e| e.contains("defined: azure")));
        for bad in ["10.0.0.300", "10.0.0.0/33", "*", "*.corp", "", "-x.com"] {
            assert!(source_rule(bad, &sets).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(connect_rate("20/s"), Ok(ConnectRate { count: 20, per: Duration::from_secs(1) }));
        assert_eq!(connect_rate("300/m"), Ok(ConnectRate { count: 300, per: Duration::from_secs(60) }));
        assert_eq!(connect_rate("5/10s"), Ok(ConnectRate { count: 5, per: Duration::from_secs(10) }));
        for text in ["20/s", "300/m", "5/10s", "7/500ms"] {
            assert_eq!(connect_rate(text).map(|r| r.to_string()).as_deref(), Ok(text));
        }
        for bad in ["0/s", "x/s", "20", "20/y"] {
            assert!(connect_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_addresses() {
        let base = Path::new("/etc/flexgate");
        assert_eq!(
            listen_address("unix:/run/f.sock", Some("0600"), base),
            Ok(ListenAddress::Unix { path: "/run/f.sock".into(), mode: 0o600 })
        );
        assert_eq!(
            listen_address("unix:/run/f.sock", None, base),
            Ok(ListenAddress::Unix { path: "/run/f.sock".into(), mode: 0o660 })
        );
        assert!(listen_address("unix:/run/f.sock", Some("999"), base).is_err());
        assert!(listen_address("127.0.0.1:1", Some("0600"), base).is_err_and(|(k, _)| k == "socket_mode"));
    }
}
