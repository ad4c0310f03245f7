//! `[admin]` and `[shutdown]`: how flexgate is watched and stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Locator, duration_or, existing_file};

/// The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens. Loopback by default: the metrics name listeners and the status lists
    /// sessions, which is for operators only.
    pub address: SocketAddr,
    /// A file holding the bearer token that `/metrics` and `/status` require. The probes stay
    /// open: an orchestrator's probe carries no secret, and they reveal nothing.
    pub token_file: Option<PathBuf>,
    /// While the server's last contact failed, how often flexgate dials it to see it back.
    pub backend_retry: Duration,
}

/// Default `admin.address`.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9308";
/// Default `admin.backend_retry`.
pub const DEFAULT_BACKEND_RETRY: Duration = Duration::from_secs(5);

/// What SIGTERM and SIGINT do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// How long open sessions may go on after the signal before they are closed.
    pub drain_timeout: Duration,
}

/// Default `shutdown.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_timeout: DEFAULT_DRAIN_TIMEOUT }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    address: Option<String>,
    token_file: Option<PathBuf>,
    backend_retry: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    drain_timeout: Option<String>,
}

pub(super) fn admin(raw: Option<RawAdmin>, at: &Locator<'_>, base: &Path) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.address.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS);
    let address: SocketAddr = text.parse().map_err(|_| {
        at.err(
            "admin.address",
            format!("\"{text}\" is not an IP address and port, such as \"{DEFAULT_ADMIN_ADDRESS}\""),
        )
    })?;
    let token_file = match raw.token_file {
        Some(p) => {
            let p = existing_file(base, p).map_err(|e| at.err("admin.token_file", e))?;
            read_token(&p).map_err(|e| at.err("admin.token_file", e))?;
            Some(p)
        }
        None => None,
    };
    let backend_retry = duration_or(raw.backend_retry.as_deref(), DEFAULT_BACKEND_RETRY)
        .map_err(|e| at.err("admin.backend_retry", e))?;
    Ok(Some(AdminConfig { address, token_file, backend_retry }))
}

pub(super) fn shutdown(raw: RawShutdown, at: &Locator<'_>) -> Result<ShutdownConfig, ConfigError> {
    let drain_timeout = duration_or(raw.drain_timeout.as_deref(), DEFAULT_DRAIN_TIMEOUT)
        .map_err(|e| at.err("shutdown.drain_timeout", e))?;
    Ok(ShutdownConfig { drain_timeout })
}

/// The token in a token file: its first line, which must not be empty. Short tokens are refused:
/// a guessable bearer token protects nothing.
pub fn read_token(path: &Path) -> Result<zeroize::Zeroizing<String>, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 {
        return Err(format!(
            "{}: the token must be at least 16 characters on the first line (e.g. openssl rand -hex 32)",
            path.display()
        ));
    }
    Ok(zeroize::Zeroizing::new(token.to_owned()))
}
