//! The signing keys: fetched over HTTPS (or read from a file), cached, refreshed.
//!
//! The policy follows Microsoft's own `ConfigurationManager`: a routine refresh every 12 hours
//! plus up to 12 hours of jitter (so that a fleet does not fetch at once), a forced refresh
//! when a token names an unknown `kid` (key rotation) at most every 5 minutes, and "stale
//! metadata is better than no metadata": a failed fetch keeps the last good set. Until a
//! first set is in, a forced fetch may run every 10 seconds, so that a login soon after an
//! outage at startup does not wait 5 minutes.
//!
//! The routine refresh runs in the background of a login that finds the set due; the forced
//! one inside the login that needs it, under its handshake deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::token::KeySet;
use crate::config::JwksSource;

/// Least time between routine refreshes.
pub const REFRESH_BASE: Duration = Duration::from_secs(12 * 3600);
/// Most jitter added to [`REFRESH_BASE`].
pub const REFRESH_JITTER: Duration = Duration::from_secs(12 * 3600);
/// Least time between forced refreshes once a key set is in.
pub const FORCED_MIN: Duration = Duration::from_secs(300);
/// Least time between forced refreshes while no key set is in.
pub const BOOTSTRAP_MIN: Duration = Duration::from_secs(10);
/// Bound on one fetch.
/// Below the default `handshake_timeout` (10 s), so that the login waiting for a forced fetch
/// can still be told the outcome.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted (Microsoft's is about 10 KiB).
pub const MAX_JWKS: usize = 1 << 20;

struct Loaded {
    keys: Arc<KeySet>,
    /// When the routine refresh is due.
    due: Instant,
}

/// Where an HTTPS key set is fetched from.
struct Remote {
    url: String,
    client: reqwest::Client,
}

/// The cached key set and how to refresh it. Shared by the sessions of every snapshot that
/// names the same source.
pub struct JwksStore {
    source: JwksSource,
    /// `None` for a file source, which only a reload (a new store) re-reads.
    remote: Option<Remote>,
    loaded: ArcSwap<Loaded>,
    /// The last forced fetch; also serialises fetches, so that a burst of logins with a new
    /// `kid` makes one request.
    forced: tokio::sync::Mutex<Option<Instant>>,
    routine: std::sync::atomic::AtomicBool,
    metrics: super::EntraMetrics,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksStore").field("source", &self.source).field("keys", &self.loaded.load().keys).finish()
    }
}

/// Why a key set could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    /// The HTTPS client (its CA bundle, `jwks_ca`).
    #[error("auth.entra.jwks_ca {0}")]
    Client(crate::https::ClientError),
    /// Fetching or reading it.
    #[error("{source_name}: {detail}")]
    Fetch {
        /// The URL or file.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
}

impl JwksStore {
    /// A store for `source`. A file is read now, so that a bad file fails the config (and the
    /// reload) that names it; an HTTPS source starts empty and is fetched by [`Self::prefetch`]
    /// or the first login.
    pub fn new(source: &JwksSource, metrics: super::EntraMetrics) -> Result<Self, JwksError> {
        let (remote, keys) = match source {
            JwksSource::Https { url, ca } => {
                let client = crate::https::client(ca.as_deref(), Duration::from_secs(5), "entra jwks")
                    .map_err(JwksError::Client)?;
                (Some(Remote { url: url.clone(), client }), KeySet::default())
            }
            JwksSource::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| JwksError::Fetch { source_name: path.display().to_string(), detail: e.to_string() })?;
                let keys = KeySet::parse(&bytes)
                    .map_err(|detail| JwksError::Fetch { source_name: path.display().to_string(), detail })?;
                (None, keys)
            }
        };
        metrics.jwks_keys(keys.len());
        Ok(Self {
            source: source.clone(),
            remote,
            loaded: ArcSwap::from_pointee(Loaded { keys: Arc::new(keys), due: Instant::now() }),
            forced: tokio::sync::Mutex::new(None),
            routine: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    /// Which source it serves.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys now held.
    pub fn keys(&self) -> Arc<KeySet> {
        self.loaded.load().keys.clone()
    }

    /// Fetches at startup, so that the first login does not wait for it.
    pub async fn prefetch(self: Arc<Self>) {
        if self.remote.is_some() && self.keys().is_empty() {
            // Under the lock, so that a login meanwhile waits for this fetch rather than
            // making its own; not counted as a forced refresh, so a rotation right after
            // startup is still fetched.
            let _last = self.forced.lock().await;
            self.fetch_and_store().await;
        }
    }

    /// The keys for a login: the current set, with a routine refresh started in the
    /// background if it is due.
    pub fn current(self: &Arc<Self>) -> Arc<KeySet> {
        let loaded = self.loaded.load();
        // An empty set is the forced refresh's to fill (a login needs it now).
        if Instant::now() >= loaded.due
            && !loaded.keys.is_empty()
            && self.remote.is_some()
            && !self.routine.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let this = self.clone();
            tokio::spawn(async move {
                this.fetch_and_store().await;
                this.routine.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        loaded.keys.clone()
    }

    /// A token named `kid`, which the set lacks: fetch now, unless a forced fetch ran too
    /// recently. Returns the set to retry with.
    pub async fn forced_refresh(self: &Arc<Self>, kid: &str) -> Arc<KeySet> {
        if self.remote.is_none() {
            return self.keys();
        }
        let mut last = self.forced.lock().await;
        // Another login's fetch (or the startup one) may have brought it while this one waited.
        if self.keys().contains(kid) {
            return self.keys();
        }
        let min = if self.keys().is_empty() { BOOTSTRAP_MIN } else { FORCED_MIN };
        if last.is_some_and(|t| t.elapsed() < min) {
            self.metrics.jwks_fetch("throttled");
            return self.keys();
        }
        *last = Some(Instant::now());
        // In a task of its own: a login that times out while waiting must not cancel the fetch
        // that its throttle slot paid for.
        let this = self.clone();
        let _ = tokio::spawn(async move { this.fetch_and_store().await }).await;
        self.keys()
    }

    /// Fetches the set; on failure keeps the one held and logs why.
    async fn fetch_and_store(&self) {
        let Some(Remote { url, client }) = &self.remote else { return };
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, fetch(client, url)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        match fetched.and_then(|body| KeySet::parse(&body)) {
            Ok(keys) => {
                let before = self.keys();
                if before.len() != keys.len() || before.is_empty() {
                    info!(url = %url, keys = keys.len(), "Entra signing keys loaded");
                }
                self.metrics.jwks_fetch("ok");
                self.metrics.jwks_keys(keys.len());
                self.loaded.store(Arc::new(Loaded { keys: Arc::new(keys), due: Instant::now() + next_interval() }));
            }
            Err(detail) => {
                self.metrics.jwks_fetch("error");
                let keys = self.keys();
                warn!(url = %url, error = %detail, keys_kept = keys.len(), "Entra signing keys could not be fetched; the last good set stays in use");
                // Try again at the next login after a short pause rather than in 12 hours.
                self.loaded.store(Arc::new(Loaded { keys, due: Instant::now() + FORCED_MIN }));
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| crate::https::error_chain(&e))?;
    crate::https::body(resp, MAX_JWKS).await
}

/// 12 hours plus a random share of 12 more.
fn next_interval() -> Duration {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 4];
    let r = SystemRandom::new().fill(&mut b).map(|()| u32::from_le_bytes(b)).unwrap_or(0);
    REFRESH_BASE + REFRESH_JITTER.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routine_interval_is_12_to_24_hours() {
        for _ in 0..100 {
            let d = next_interval();
            assert!(d >= REFRESH_BASE && d <= REFRESH_BASE + REFRESH_JITTER, "{d:?}");
        }
    }
}
