//! `[key_guard]`: where the data-encryption key is, and how long flexgate serves without it.
//!
//! The key's file need not exist when the config loads: a missing key at startup is a state of
//! the breaker (inaccessible), not a config error. Everything that is configuration (the
//! program to run, the CA, the token file) must exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Locator, duration_or, existing_file};

/// The key breaker's settings and providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGuardConfig {
    /// Time between checks.
    pub check_interval: Duration,
    /// Bound on one provider's check (a provider may set its own).
    pub timeout: Duration,
    /// How long checks may fail before new connections are refused.
    pub grace: Duration,
    /// Consecutive good checks that end `degraded` or `inaccessible`.
    pub recover_after: u32,
    /// What happens to open sessions when the key becomes inaccessible.
    pub on_inaccessible: OnInaccessible,
    /// Every one must report the key available.
    pub providers: Vec<ProviderConfig>,
}

/// Default `key_guard.check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Default `key_guard.timeout`.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default and largest `key_guard.grace`: the reference (Azure Database for MySQL) denies
/// connections within 10 minutes of losing its key.
pub const MAX_GRACE: Duration = Duration::from_secs(600);
/// Default `key_guard.recover_after`.
pub const DEFAULT_RECOVER_AFTER: u32 = 2;

/// `key_guard.on_inaccessible`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInaccessible {
    /// Refuse new connections; open sessions go on (the default).
    RefuseNew,
    /// Also close open sessions, each with an ERR that says why.
    CloseExisting,
}

impl OnInaccessible {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RefuseNew => "refuse-new",
            Self::CloseExisting => "close-existing",
        }
    }
}

/// One way of asking whether the key is available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Unique among the providers; a metric label and the name in `/status`.
    pub name: String,
    /// Its own check timeout, if it has one.
    pub timeout: Option<Duration>,
    /// What it checks.
    pub kind: ProviderKind,
}

/// The provider kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// A key file: it exists, is readable and is not empty.
    File {
        /// The key file (need not exist yet).
        path: PathBuf,
        /// Parse it, and require `key_ids`.
        format: Option<KeyFileFormat>,
        /// Key ids that must be present (with `format`).
        key_ids: Vec<u32>,
        /// Pinned SHA-256 of the file's bytes: any other content, a rotated key too, fails.
        sha256: Option<[u8; 32]>,
    },
    /// A program, run without a shell; exit status 0 means available.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// An HTTPS GET: a 2xx status, and optionally a JSON value at a pointer.
    Http {
        /// The URL (https only).
        url: String,
        /// A file whose first line is sent as `Authorization: Bearer`, re-read at each check
        /// (short-lived tokens are rotated in place).
        bearer_token_file: Option<PathBuf>,
        /// CA bundle that replaces the system's roots.
        ca: Option<PathBuf>,
        /// A condition on the JSON body.
        expect: Option<Expect>,
    },
}

impl ProviderKind {
    /// The `kind` spelling.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Command { .. } => "command",
            Self::Http { .. } => "http",
        }
    }
}

/// `format` of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileFormat {
    /// MariaDB's `file_key_management`: `id;hex-key` lines, `#` comments.
    MariadbFileKeyManagement,
}

/// `expect = { pointer = "/attributes/enabled", equals = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// An RFC 6901 JSON pointer.
    pub pointer: String,
    /// The value that must be there.
    pub equals: JsonValue,
}

/// A JSON value from the config. JSON has no NaN, so equality is an equivalence.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonValue(pub serde_json::Value);

impl Eq for JsonValue {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyGuard {
    check_interval: Option<String>,
    timeout: Option<String>,
    grace: Option<String>,
    recover_after: Option<u32>,
    on_inaccessible: Option<String>,
    #[serde(default)]
    provider: Vec<RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: Option<String>,
    kind: String,
    timeout: Option<String>,
    path: Option<PathBuf>,
    format: Option<String>,
    key_ids: Option<Vec<u32>>,
    sha256: Option<String>,
    command: Option<Vec<String>>,
    url: Option<String>,
    bearer_token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    expect: Option<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    pointer: String,
    equals: toml::Value,
}

pub(super) fn key_guard(
    raw: Option<RawKeyGuard>,
    at: &Locator<'_>,
    base: &Path,
) -> Result<Option<KeyGuardConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let check_interval = duration_or(raw.check_interval.as_deref(), DEFAULT_CHECK_INTERVAL)
        .map_err(|e| at.err("key_guard.check_interval", e))?;
    let timeout =
        duration_or(raw.timeout.as_deref(), DEFAULT_CHECK_TIMEOUT).map_err(|e| at.err("key_guard.timeout", e))?;
    let grace = duration_or(raw.grace.as_deref(), MAX_GRACE).map_err(|e| at.err("key_guard.grace", e))?;
    if grace > MAX_GRACE {
        return Err(at.err(
            "key_guard.grace",
            format!(
                "{grace:?} is longer than the 10m limit: a managed server denies connections within 10 minutes of \
                 losing its key, and flexgate keeps to that window"
            ),
        ));
    }
    let recover_after = raw.recover_after.unwrap_or(DEFAULT_RECOVER_AFTER);
    if recover_after == 0 {
        return Err(at.err("key_guard.recover_after", "must be at least 1".into()));
    }
    let on_inaccessible = match raw.on_inaccessible.as_deref() {
        None | Some("refuse-new") => OnInaccessible::RefuseNew,
        Some("close-existing") => OnInaccessible::CloseExisting,
        Some(other) => {
            return Err(at.err(
                "key_guard.on_inaccessible",
                format!("\"{other}\" is not accepted; use \"refuse-new\" or \"close-existing\""),
            ));
        }
    };
    if raw.provider.is_empty() {
        return Err(at.err(
            "key_guard.provider",
            "at least one [[key_guard.provider]] is required (kind = \"file\", \"command\" or \"http\")".into(),
        ));
    }
    let mut providers: Vec<ProviderConfig> = Vec::with_capacity(raw.provider.len());
    for (i, p) in raw.provider.into_iter().enumerate() {
        let p = provider(p, i, at, base)?;
        if providers.iter().any(|o| o.name == p.name) {
            return Err(at.err(
                &format!("key_guard.provider[{i}].name"),
                format!("\"{}\" is used twice; give each provider its own name", p.name),
            ));
        }
        providers.push(p);
    }
    Ok(Some(KeyGuardConfig { check_interval, timeout, grace, recover_after, on_inaccessible, providers }))
}

fn provider(raw: RawProvider, i: usize, at: &Locator<'_>, base: &Path) -> Result<ProviderConfig, ConfigError> {
    let key = |k: &str| format!("key_guard.provider[{i}].{k}");
    let timeout =
        raw.timeout.as_deref().map(super::parse_duration).transpose().map_err(|e| at.err(&key("timeout"), e))?;
    // Each kind's own keys; any other key set is a mistake worth naming.
    let given: [(&str, bool); 8] = [
        ("path", raw.path.is_some()),
        ("format", raw.format.is_some()),
        ("key_ids", raw.key_ids.is_some()),
        ("sha256", raw.sha256.is_some()),
        ("command", raw.command.is_some()),
        ("url", raw.url.is_some()),
        ("bearer_token_file", raw.bearer_token_file.is_some()),
        ("ca", raw.ca.is_some()),
    ];
    let own: &[&str] = match raw.kind.as_str() {
        "file" => &["path", "format", "key_ids", "sha256"],
        "command" => &["command"],
        "http" => &["url", "bearer_token_file", "ca"],
        other => {
            return Err(at.err(
                &key("kind"),
                format!("\"{other}\" is not a provider kind; use \"file\", \"command\" or \"http\""),
            ));
        }
    };
    if let Some((k, _)) = given.iter().find(|(k, set)| *set && !own.contains(k)) {
        return Err(at.err(&key(k), format!("does not apply to kind = \"{}\"", raw.kind)));
    }
    if raw.expect.is_some() && raw.kind != "http" {
        return Err(at.err(&key("expect"), format!("does not apply to kind = \"{}\"", raw.kind)));
    }
    let kind = match raw.kind.as_str() {
        "file" => {
            let path = base.join(raw.path.ok_or_else(|| at.err(&key("path"), "required for kind = \"file\"".into()))?);
            let format = match raw.format.as_deref() {
                None => None,
                Some("mariadb-file-key-management") => Some(KeyFileFormat::MariadbFileKeyManagement),
                Some(other) => {
                    return Err(at.err(
                        &key("format"),
                        format!("\"{other}\" is not a key file format; accepted: \"mariadb-file-key-management\""),
                    ));
                }
            };
            let key_ids = raw.key_ids.unwrap_or_default();
            if !key_ids.is_empty() && format.is_none() {
                return Err(at.err(
                    &key("key_ids"),
                    "needs format = \"mariadb-file-key-management\" (key ids are read from the parsed file)".into(),
                ));
            }
            let sha256 = raw.sha256.as_deref().map(parse_sha256).transpose().map_err(|e| at.err(&key("sha256"), e))?;
            ProviderKind::File { path, format, key_ids, sha256 }
        }
        "command" => {
            let argv = raw.command.unwrap_or_default();
            let Some(program) = argv.first() else {
                return Err(at.err(
                    &key("command"),
                    "required: the program and its arguments, such as [\"/usr/local/bin/check-key\", \"--id\", \"1\"]"
                        .into(),
                ));
            };
            if program.contains('/') {
                existing_file(base, PathBuf::from(program)).map_err(|e| at.err(&key("command"), e))?;
            }
            ProviderKind::Command { argv }
        }
        _ => {
            let url = raw.url.ok_or_else(|| at.err(&key("url"), "required for kind = \"http\"".into()))?;
            let parsed = reqwest::Url::parse(&url).map_err(|e| at.err(&key("url"), format!("\"{url}\": {e}")))?;
            if parsed.scheme() != "https" {
                return Err(at.err(
                    &key("url"),
                    format!("\"{url}\" must be https: a key service's answer decides whether the server serves"),
                ));
            }
            let bearer_token_file = raw
                .bearer_token_file
                .map(|p| existing_file(base, p))
                .transpose()
                .map_err(|e| at.err(&key("bearer_token_file"), e))?;
            let ca = raw.ca.map(|p| existing_file(base, p)).transpose().map_err(|e| at.err(&key("ca"), e))?;
            let expect = raw.expect.map(|e| expect(e, &key("expect"), at)).transpose()?;
            ProviderKind::Http { url, bearer_token_file, ca, expect }
        }
    };
    let name = raw.name.unwrap_or_else(|| format!("{}-{i}", kind.as_str()));
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(at.err(&key("name"), format!("\"{name}\" must be 1 to 64 of A-Z, a-z, 0-9, '-', '_' and '.'")));
    }
    Ok(ProviderConfig { name, timeout, kind })
}

fn expect(raw: RawExpect, key: &str, at: &Locator<'_>) -> Result<Expect, ConfigError> {
    if !(raw.pointer.is_empty() || raw.pointer.starts_with('/')) {
        return Err(at.err(
            &format!("{key}.pointer"),
            format!("\"{}\" is not a JSON pointer; it starts with '/', such as \"/attributes/enabled\"", raw.pointer),
        ));
    }
    let equals = serde_json::to_value(&raw.equals)
        .map_err(|e| at.err(&format!("{key}.equals"), format!("cannot be a JSON value: {e}")))?;
    Ok(Expect { pointer: raw.pointer, equals: JsonValue(equals) })
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let bad = || format!("\"{s}\" is not a SHA-256 in hex (64 digits; sha256sum prints it)");
    let s = s.trim();
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}
