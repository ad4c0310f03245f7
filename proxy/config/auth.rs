//! `[auth]`: how clients log in. `password` passes the server's own authentication through;
//! `entra` and `both` add Microsoft Entra ID access tokens, validated by flexgate and mapped by
//! object id to server accounts whose secrets flexgate holds.
//!
//! Secrets are named here (a file or an environment variable), never held: `Config` is cloned,
//! compared and printed, so the secret is read into [`crate::auth::Secret`] when a snapshot is
//! built. A secret file must exist when the config loads, so that check-config catches it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Locator, duration_or, existing_file};

/// `auth.mode`, and a listener's `auth_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// MySQL accounts and passwords, checked by the server (the default).
    #[default]
    Password,
    /// Entra tokens only: no database password works through flexgate.
    Entra,
    /// A login name that is an Entra principal takes the token path; any other, the password.
    Both,
}

impl AuthMode {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Entra => "entra",
            Self::Both => "both",
        }
    }

    pub(super) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "password" => Ok(Self::Password),
            "entra" => Ok(Self::Entra),
            "both" => Ok(Self::Both),
            _ => Err(format!("\"{s}\" is not an auth mode; use \"password\", \"entra\" or \"both\"")),
        }
    }
}

/// The whole `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthConfig {
    /// The mode of every listener that does not set its own.
    pub mode: AuthMode,
    /// `[auth.entra]`; required when any listener's mode is not `password`.
    pub entra: Option<EntraConfig>,
}

/// `[auth.entra]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraConfig {
    /// The directory (tenant) id, lower-case: tokens must be issued by it.
    pub tenant_id: String,
    /// Accepted `aud` values, each also accepted with or without a trailing slash.
    pub audiences: Vec<String>,
    /// Where the token signing keys come from.
    pub jwks: JwksSource,
    /// Allowed difference between flexgate's clock and the issuer's, for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// What happens to a session when its token expires.
    pub on_token_expiry: OnTokenExpiry,
    /// The principal catalog: login name → Entra identity → server account.
    pub principals: Vec<PrincipalConfig>,
    /// Microsoft Graph, for group membership that a token does not carry.
    pub graph: Option<GraphConfig>,
}

/// The Azure audience of Azure Database for MySQL tokens (`az account get-access-token
/// --resource-type oss-rdbms`).
pub const DEFAULT_AUDIENCE: &str = "https://ossrdbms-aad.database.windows.net";
/// Microsoft's v2.0 key endpoint; `{tenant}` is replaced by `tenant_id`.
pub const DEFAULT_JWKS: &str = "https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys";
/// Default `auth.entra.clock_skew`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Default `auth.entra.graph.authority`.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Default `auth.entra.graph.endpoint`.
pub const DEFAULT_GRAPH: &str = "https://graph.microsoft.com";
/// Default `auth.entra.graph.cache_ttl`: a membership removed in Entra stops working through
/// flexgate within this long.
pub const DEFAULT_GRAPH_CACHE: Duration = Duration::from_secs(300);

/// Where the JSON Web Key Set is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTPS and cached.
    Https {
        /// The URL, `{tenant}` already replaced.
        url: String,
        /// A CA bundle that replaces the system roots (a private mirror, or tests).
        ca: Option<PathBuf>,
    },
    /// A file, re-read on reload (air-gapped hosts, or a key set managed out of band).
    File(PathBuf),
}

/// `auth.entra.on_token_expiry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTokenExpiry {
    /// The session outlives its token, as in Azure and AWS: the token is checked at login.
    #[default]
    KeepSession,
    /// The session is closed at `exp` plus the clock skew, with an ERR that says why.
    CloseSession,
}

impl OnTokenExpiry {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeepSession => "keep-session",
            Self::CloseSession => "close-session",
        }
    }
}

/// What an Entra principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// One user: the token's `oid` must be `object_id`.
    User,
    /// A security group: the token's `oid` must be a member of the group `object_id`.
    Group,
    /// A service principal or managed identity: an app-only token (`idtyp = app`) whose
    /// `appid`/`azp` is `object_id` (the application's client id).
    App,
}

impl PrincipalKind {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
            Self::App => "app",
        }
    }
}

/// One `[[auth.entra.principal]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalConfig {
    /// The user name a client sends to log in as this principal.
    pub login: String,
    /// What `object_id` identifies.
    pub kind: PrincipalKind,
    /// The Entra object id (user, group) or application id (app), lower-case.
    pub object_id: String,
    /// The server account flexgate logs in as.
    pub backend_user: String,
    /// Where that account's password is.
    pub backend_password: SecretSource,
    /// The Entra administrator (at most one principal).
    pub admin: bool,
}

/// Where a held secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (its content, one trailing newline dropped).
    File(PathBuf),
    /// An environment variable of flexgate's process.
    Env(String),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// `[auth.entra.graph]`: an app registration with `GroupMember.Read.All`, used only for
/// group logins whose token carries no `groups` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphConfig {
    /// The app registration's client id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: SecretSource,
    /// The token endpoint's host (sovereign clouds differ).
    pub authority: String,
    /// Microsoft Graph's base URL (sovereign clouds differ).
    pub endpoint: String,
    /// A CA bundle that replaces the system roots for both.
    pub ca: Option<PathBuf>,
    /// How long a membership answer is reused.
    pub cache_ttl: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    mode: Option<String>,
    entra: Option<RawEntra>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntra {
    tenant_id: String,
    audiences: Option<Vec<String>>,
    jwks: Option<String>,
    jwks_ca: Option<PathBuf>,
    clock_skew: Option<String>,
    on_token_expiry: Option<String>,
    #[serde(default)]
    principal: Vec<RawPrincipal>,
    graph: Option<RawGraph>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    login: String,
    kind: String,
    object_id: String,
    backend_user: String,
    backend_password_file: Option<PathBuf>,
    backend_password_env: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGraph {
    client_id: String,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    authority: Option<String>,
    endpoint: Option<String>,
    ca: Option<PathBuf>,
    cache_ttl: Option<String>,
}

/// A GUID as Entra writes it (8-4-4-4-12 hex digits), lower-cased: tokens carry them in lower
/// case, and comparing lower-case strings is exact.
fn guid(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let groups: Vec<&str> = lower.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    if shape && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(lower)
    } else {
        Err(format!(
            "\"{s}\" is not an Entra object id; use the GUID that the Azure portal or `az ad ... show --query id` \
             prints, such as \"7f3c2a10-0b6e-4d5c-9a1e-2f4b8c6d0e13\""
        ))
    }
}

fn secret_source(
    file: Option<PathBuf>,
    env: Option<String>,
    base: &Path,
    key: &str,
    at: &Locator<'_>,
) -> Result<SecretSource, ConfigError> {
    match (file, env) {
        (Some(f), None) => {
            existing_file(base, f).map(SecretSource::File).map_err(|p| at.err(&format!("{key}_file"), p))
        }
        (None, Some(v)) if !v.is_empty() => Ok(SecretSource::Env(v)),
        (None, Some(_)) => Err(at.err(&format!("{key}_env"), "is empty; name an environment variable".into())),
        (Some(_), Some(_)) => Err(at.err(key, format!("set {key}_file or {key}_env, not both"))),
        (None, None) => Err(at.err(key, format!("is required: set {key}_file (a file holding it) or {key}_env"))),
    }
}

fn https_url(s: &str, key: &str, at: &Locator<'_>) -> Result<String, ConfigError> {
    let s = s.trim_end_matches('/');
    if s.starts_with("https://") && s.len() > "https://".len() {
        Ok(s.to_owned())
    } else {
        Err(at.err(key, format!("\"{s}\" must be an https:// URL: tokens and group answers are only trusted over TLS")))
    }
}

pub(super) fn auth(raw: RawAuth, at: &Locator<'_>, base: &Path) -> Result<AuthConfig, ConfigError> {
    let mode =
        raw.mode.as_deref().map_or(Ok(AuthMode::Password), AuthMode::parse).map_err(|p| at.err("auth.mode", p))?;
    let entra = raw.entra.map(|e| entra(e, at, base)).transpose()?;
    if mode != AuthMode::Password && entra.is_none() {
        return Err(at.err(
            "auth.mode",
            format!("\"{}\" needs an [auth.entra] section (tenant_id and at least one principal)", mode.as_str()),
        ));
    }
    Ok(AuthConfig { mode, entra })
}

fn entra(raw: RawEntra, at: &Locator<'_>, base: &Path) -> Result<EntraConfig, ConfigError> {
    let tenant_id = guid(&raw.tenant_id).map_err(|p| at.err("auth.entra.tenant_id", p))?;
    let audiences = raw.audiences.unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
    if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(at.err("auth.entra.audiences", "must list at least one non-empty audience".into()));
    }
    let audiences = audiences.into_iter().map(|a| a.trim().trim_end_matches('/').to_owned()).collect();
    let jwks = match raw.jwks.as_deref() {
        Some(f) if f.starts_with("file:") => {
            if raw.jwks_ca.is_some() {
                return Err(at.err("auth.entra.jwks_ca", "applies to an https:// jwks only".into()));
            }
            let p =
                existing_file(base, PathBuf::from(&f["file:".len()..])).map_err(|p| at.err("auth.entra.jwks", p))?;
            JwksSource::File(p)
        }
        url => {
            let url = url.unwrap_or(DEFAULT_JWKS).replace("{tenant}", &tenant_id);
            let ca =
                raw.jwks_ca.map(|c| existing_file(base, c).map_err(|p| at.err("auth.entra.jwks_ca", p))).transpose()?;
            JwksSource::Https { url: https_url(&url, "auth.entra.jwks", at)?, ca }
        }
    };
    let clock_skew =
        duration_or(raw.clock_skew.as_deref(), DEFAULT_CLOCK_SKEW).map_err(|p| at.err("auth.entra.clock_skew", p))?;
    if clock_skew > Duration::from_secs(3600) {
        return Err(at.err("auth.entra.clock_skew", "must be at most 1h: tokens themselves live about an hour".into()));
    }
    let on_token_expiry = match raw.on_token_expiry.as_deref() {
        None | Some("keep-session") => OnTokenExpiry::KeepSession,
        Some("close-session") => OnTokenExpiry::CloseSession,
        Some(o) => {
            return Err(at.err(
                "auth.entra.on_token_expiry",
                format!("\"{o}\" is not a choice; use \"keep-session\" or \"close-session\""),
            ));
        }
    };
    let mut principals: Vec<PrincipalConfig> = Vec::with_capacity(raw.principal.len());
    for (i, p) in raw.principal.into_iter().enumerate() {
        let key = |k: &str| format!("auth.entra.principal[{i}].{k}");
        let kind = match p.kind.as_str() {
            "user" => PrincipalKind::User,
            "group" => PrincipalKind::Group,
            "app" => PrincipalKind::App,
            k => return Err(at.err(&key("kind"), format!("\"{k}\" is not a kind; use \"user\", \"group\" or \"app\""))),
        };
        if p.login.is_empty() || p.login.len() > 80 {
            return Err(at.err(&key("login"), "must be 1 to 80 bytes: it is the user name clients send".into()));
        }
        if p.backend_user.is_empty() || p.backend_user.len() > 80 {
            return Err(at.err(&key("backend_user"), "must be 1 to 80 bytes (a server account name)".into()));
        }
        if let Some(other) = principals.iter().position(|o| o.login == p.login) {
            return Err(at.err(&key("login"), format!("\"{}\" is also principal[{other}]'s login", p.login)));
        }
        let object_id = guid(&p.object_id).map_err(|e| at.err(&key("object_id"), e))?;
        let backend_password =
            secret_source(p.backend_password_file, p.backend_password_env, base, &key("backend_password"), at)?;
        if p.admin
            && let Some(other) = principals.iter().position(|o| o.admin)
        {
            return Err(at.err(
                &key("admin"),
                format!(
                    "principal[{other}] (\"{}\") is already the Entra administrator; at most one principal may be",
                    principals[other].login
                ),
            ));
        }
        principals.push(PrincipalConfig {
            login: p.login,
            kind,
            object_id,
            backend_user: p.backend_user,
            backend_password,
            admin: p.admin,
        });
    }
    if principals.is_empty() {
        return Err(at.err(
            "auth.entra.principal",
            "at least one [[auth.entra.principal]] is required: it maps an Entra identity to a server account".into(),
        ));
    }
    let graph = raw.graph.map(|g| graph(g, at, base)).transpose()?;
    Ok(EntraConfig { tenant_id, audiences, jwks, clock_skew, on_token_expiry, principals, graph })
}

fn graph(raw: RawGraph, at: &Locator<'_>, base: &Path) -> Result<GraphConfig, ConfigError> {
    let client_id = guid(&raw.client_id).map_err(|p| at.err("auth.entra.graph.client_id", p))?;
    let client_secret =
        secret_source(raw.client_secret_file, raw.client_secret_env, base, "auth.entra.graph.client_secret", at)?;
    let authority = https_url(raw.authority.as_deref().unwrap_or(DEFAULT_AUTHORITY), "auth.entra.graph.authority", at)?;
    let endpoint = https_url(raw.endpoint.as_deref().unwrap_or(DEFAULT_GRAPH), "auth.entra.graph.endpoint", at)?;
    let ca = raw.ca.map(|c| existing_file(base, c).map_err(|p| at.err("auth.entra.graph.ca", p))).transpose()?;
    let cache_ttl = duration_or(raw.cache_ttl.as_deref(), DEFAULT_GRAPH_CACHE)
        .map_err(|p| at.err("auth.entra.graph.cache_ttl", p))?;
    Ok(GraphConfig { client_id, client_secret, authority, endpoint, ca, cache_ttl })
}

/// Checks each listener's mode against `[auth]`: an Entra listener needs `[auth.entra]`.
pub(super) fn listener_mode(
    raw: Option<&str>,
    auth: &AuthConfig,
    key: &str,
    at: &Locator<'_>,
) -> Result<Option<AuthMode>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let mode = AuthMode::parse(raw).map_err(|p| at.err(key, p))?;
    if mode != AuthMode::Password && auth.entra.is_none() {
        return Err(at.err(key, format!("\"{raw}\" needs an [auth.entra] section")));
    }
    Ok(Some(mode))
}
