//! `[ipsets.NAME]` and `[dns]`: what the listeners' rules refer to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Locator, duration_or, existing_file};
use crate::firewall::IpSetFormat;

/// A named set of prefixes loaded from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSetConfig {
    /// The name that rules write as `@name`.
    pub name: String,
    /// The file, re-read on every reload.
    pub file: PathBuf,
    /// How the file is written.
    pub format: IpSetFormat,
    /// For Service Tags files: the tags whose prefixes are taken.
    pub tags: Vec<String>,
}

/// How hostnames in rules are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`, and `/etc/hosts`).
    pub nameservers: Vec<SocketAddr>,
    /// Shortest time an answer is trusted, whatever its TTL.
    pub min_ttl: Duration,
    /// Longest time an answer is trusted, whatever its TTL.
    pub max_ttl: Duration,
    /// How long the last good addresses survive failed lookups before they stop matching.
    pub keep_stale: Duration,
}

/// Default `dns.min_ttl`.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(5);
/// Default `dns.max_ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
/// Default `dns.keep_stale`.
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpSet {
    file: PathBuf,
    format: Option<String>,
    tags: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    nameservers: Option<Vec<String>>,
    min_ttl: Option<String>,
    max_ttl: Option<String>,
    keep_stale: Option<String>,
}

pub(super) fn ipsets(
    raw: BTreeMap<String, RawIpSet>,
    at: &Locator<'_>,
    base: &Path,
) -> Result<BTreeMap<String, IpSetConfig>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        let key = |k: &str| format!("ipsets.{name}.{k}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(at.err(&format!("ipsets.{name}"), "names are letters, digits, '-' and '_'".into()));
        }
        let file = existing_file(base, r.file).map_err(|p| at.err(&key("file"), p))?;
        let format = match r.format.as_deref() {
            None => IpSetFormat::CidrList,
            Some(f) => IpSetFormat::parse(f).ok_or_else(|| {
                at.err(&key("format"), format!("\"{f}\" is not accepted; use \"cidr-list\" or \"azure-service-tags\""))
            })?,
        };
        let tags = r.tags.unwrap_or_default();
        match format {
            IpSetFormat::AzureServiceTags if tags.is_empty() => {
                return Err(at.err(
                    &key("tags"),
                    "required for azure-service-tags: the tags to take, such as [\"AzureCloud\"] or \
                     [\"Sql.WestEurope\"]"
                        .into(),
                ));
            }
            IpSetFormat::CidrList if !tags.is_empty() => {
                return Err(at.err(&key("tags"), "only applies to format = \"azure-service-tags\"".into()));
            }
            _ => {}
        }
        out.insert(name.clone(), IpSetConfig { name, file, format, tags });
    }
    Ok(out)
}

pub(super) fn dns(raw: RawDns, at: &Locator<'_>) -> Result<DnsConfig, ConfigError> {
    let nameservers = raw
        .nameservers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| at.err(&format!("dns.nameservers[{i}]"), format!("\"{s}\" is not an IP or IP:port")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let d = |k: &str, v: Option<String>, default| {
        duration_or(v.as_deref(), default).map_err(|p| at.err(&format!("dns.{k}"), p))
    };
    let min_ttl = d("min_ttl", raw.min_ttl, DEFAULT_MIN_TTL)?;
    let max_ttl = d("max_ttl", raw.max_ttl, DEFAULT_MAX_TTL)?;
    let keep_stale = d("keep_stale", raw.keep_stale, DEFAULT_KEEP_STALE)?;
    if min_ttl > max_ttl {
        return Err(at.err("dns.min_ttl", format!("{min_ttl:?} is longer than dns.max_ttl ({max_ttl:?})")));
    }
    Ok(DnsConfig { nameservers, min_ttl, max_ttl, keep_stale })
}
