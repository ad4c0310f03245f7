//! The running proxy's state, built from a config: what a reload replaces, and what it keeps.
//!
//! A [`Snapshot`] is everything one config generation decides: each listener's context (rules,
//! IP sets, limits, TLS acceptor), built aside and failing as a whole. [`Shared`] is what lives
//! as long as the process: the backend, the server profile, the session registry, events,
//! counters, the hostname resolver, and each listener's [`ListenerGate`] (its counts), keyed
//! by name so that counts survive a reload. Sessions hold the context they were accepted
//! under; a reload never touches a running session.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::config::{BackendConfig, Config, ConfigError, DisplayPath, DnsConfig, ListenAddress, ListenerConfig};
use crate::events::LoginEvents;
use crate::firewall::dns::{DnsBounds, DnsError, HostEntry, HostResolver, Hostname};
use crate::firewall::{FeedError, IpSet, ListenerGate, Rules};
use crate::health::{BackendWatch, Readiness};
use crate::metrics::Metrics;
use crate::profile::ProfileCell;
use crate::registry::SessionRegistry;
use crate::session::ListenerContext;
use crate::tls::{self, TlsSetupError};

/// Why a config could not be turned into running state.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The file itself is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key or CA named in the config could not be used.
    #[error("{file}: {scope}{source}")]
    Tls {
        /// The config file.
        file: DisplayPath,
        /// Which listener's TLS (its own `[listener.tls]`, or `[tls]` it inherits), or empty
        /// for the backend's.
        scope: String,
        /// What was wrong (boxed: errors stay small on the happy path).
        source: Box<TlsSetupError>,
    },
    /// A named IP set's file could not be loaded.
    #[error("{file}: ipsets.{name}: {source}")]
    IpSet {
        /// The config file.
        file: DisplayPath,
        /// The set's name.
        name: String,
        /// What was wrong with its file (boxed: errors stay small on the happy path).
        source: Box<FeedError>,
    },
    /// A key breaker provider could not be built (its CA, say).
    #[error("{file}: {source}")]
    KeyGuard {
        /// The config file.
        file: DisplayPath,
        /// Cause.
        source: Box<crate::breaker::ProviderError>,
    },
    /// `[auth.entra]` could not be built (a secret, the key set, the Graph client).
    #[error("{file}: {source}")]
    Entra {
        /// The config file.
        file: DisplayPath,
        /// Cause.
        source: Box<crate::auth::entra::EntraSetupError>,
    },
    /// The resolver for hostnames in rules could not be set up.
    #[error("{file}: dns: {source}")]
    Dns {
        /// The config file.
        file: DisplayPath,
        /// Cause.
        source: DnsError,
    },
}

/// A hostname refresher, for the server to spawn.
pub type Refresher = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What lives for the whole process, whatever the config generation.
#[derive(Debug)]
pub struct Shared {
    /// The server. Fixed at startup: a reload that changes `[backend]` says it needs a restart.
    pub backend: Arc<Backend>,
    /// What flexgate's greeting says about the server.
    pub profile: Arc<ProfileCell>,
    /// Sessions by connection id.
    pub registry: Arc<SessionRegistry>,
    /// Login events.
    pub events: LoginEvents,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The readiness latch.
    pub readiness: Arc<Readiness>,
    /// Where server dials report.
    pub dials: Arc<BackendWatch>,
    /// Cancelled when a stop signal starts the drain.
    pub draining: tokio_util::sync::CancellationToken,
    /// Resolves hostnames in rules; fixed at startup, like `[backend]`.
    pub resolver: Arc<HostResolver>,
    /// The key breaker's verdict, which every session consults.
    pub key: Arc<crate::breaker::KeyGate>,
    /// The key breaker's metrics.
    pub key_metrics: crate::breaker::KeyMetrics,
    /// Hands each config generation's `[key_guard]` to the breaker's task.
    pub key_plans: tokio::sync::watch::Sender<Option<Arc<crate::breaker::KeyPlan>>>,
    /// The Entra path's metrics.
    pub entra_metrics: crate::auth::entra::EntraMetrics,
    /// The HTTPS key set, kept across reloads that name the same source.
    jwks: Mutex<Option<Arc<crate::auth::entra::JwksStore>>>,
    gates: Mutex<HashMap<String, Arc<ListenerGate>>>,
    /// The sections fixed at startup, to tell a reload that changes them needs a restart.
    fixed: (BackendConfig, DnsConfig),
}

impl Shared {
    /// Builds the process-wide parts from the first config.
    pub fn new(cfg: &Config) -> Result<Self, BuildError> {
        let file = || DisplayPath(cfg.source.clone());
        let backend_tls = tls::backend_config(&cfg.backend).map_err(|source| BuildError::Tls {
            file: file(),
            scope: String::new(),
            source: Box::new(source),
        })?;
        let bounds = DnsBounds {
            min_ttl: cfg.dns.min_ttl,
            max_ttl: cfg.dns.max_ttl,
            keep_stale: cfg.dns.keep_stale,
            ..DnsBounds::default()
        };
        let resolver = if cfg.dns.nameservers.is_empty() {
            HostResolver::system(bounds)
        } else {
            HostResolver::with_nameservers(&cfg.dns.nameservers, bounds)
        }
        .map_err(|source| BuildError::Dns { file: file(), source })?;
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(metrics.clone());
        let dials = Arc::new(BackendWatch::new(&readiness, &metrics));
        let key_metrics = crate::breaker::KeyMetrics::register(&metrics);
        let entra_metrics = crate::auth::entra::EntraMetrics::register(&metrics);
        Ok(Self {
            backend: Arc::new(Backend::new(&cfg.backend, backend_tls)),
            profile: Arc::default(),
            registry: Arc::default(),
            events: LoginEvents::default(),
            metrics,
            readiness,
            dials,
            draining: tokio_util::sync::CancellationToken::new(),
            resolver: Arc::new(resolver),
            key: Arc::default(),
            key_metrics,
            key_plans: tokio::sync::watch::Sender::new(None),
            entra_metrics,
            jwks: Mutex::default(),
            gates: Mutex::default(),
            fixed: (cfg.backend.clone(), cfg.dns.clone()),
        })
    }

    /// The listener's gate, created on first use and kept for the process's life.
    pub fn gate(&self, listener: &str) -> Arc<ListenerGate> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        gates.entry(listener.to_owned()).or_default().clone()
    }

    /// The key store for `source`: the running one if it serves the same HTTPS source with the
    /// system roots (its cache survives the reload), else a new one, with `true`. A file source
    /// is re-read, and a source with its own CA gets a client built from the CA file as it is
    /// now: a reload may be that file's rotation.
    fn jwks_store(
        &self,
        source: &crate::config::JwksSource,
    ) -> Result<(Arc<crate::auth::entra::JwksStore>, bool), crate::auth::entra::JwksError> {
        let mut held = self.jwks.lock().unwrap_or_else(PoisonError::into_inner);
        let reusable = matches!(source, crate::config::JwksSource::Https { ca: None, .. });
        if let Some(store) = held.as_ref().filter(|s| reusable && s.source() == source) {
            return Ok((store.clone(), false));
        }
        let store = Arc::new(crate::auth::entra::JwksStore::new(source, self.entra_metrics.clone())?);
        *held = Some(store.clone());
        Ok((store, true))
    }

    /// What a new config changes that only a restart applies.
    pub fn needs_restart(&self, next: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if next.backend != self.fixed.0 {
            keys.push("backend");
        }
        if next.dns != self.fixed.1 {
            keys.push("dns");
        }
        keys
    }
}

/// One listener of a snapshot.
#[derive(Debug)]
pub struct ListenerPlan {
    /// Its settings.
    pub config: ListenerConfig,
    /// What its sessions get.
    pub context: Arc<ListenerContext>,
}

/// Everything one config generation decides, ready to swap in.
pub struct Snapshot {
    /// Counts reloads that took effect; the first config is generation 1.
    pub generation: u64,
    /// The config.
    pub config: Config,
    /// Listeners by name.
    pub listeners: BTreeMap<String, ListenerPlan>,
    /// Refreshers of hostnames that this snapshot is the first to name.
    pub refreshers: Vec<Refresher>,
    /// Merged range counts of the loaded IP sets, for the log.
    pub ipsets: BTreeMap<String, usize>,
    /// Each TLS listener's certificate expiry.
    pub certificates: BTreeMap<String, std::time::SystemTime>,
    /// `[key_guard]` with its providers built.
    pub key_plan: Option<Arc<crate::breaker::KeyPlan>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("listeners", &self.listeners)
            .field("ipsets", &self.ipsets)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Loads every file the config names and builds each listener's context. Fails as a
    /// whole; nothing running is touched.
    pub fn build(cfg: Config, shared: &Shared, generation: u64) -> Result<Self, BuildError> {
        let file = || DisplayPath(cfg.source.clone());
        let key_plan = cfg
            .key_guard
            .as_ref()
            .map(|k| crate::breaker::KeyPlan::build(k).map(Arc::new))
            .transpose()
            .map_err(|e| BuildError::KeyGuard { file: file(), source: Box::new(e) })?;
        let mut sets = BTreeMap::new();
        let mut ipsets = BTreeMap::new();
        for (name, s) in &cfg.ipsets {
            let set = crate::firewall::feeds::load(&s.file, s.format, &s.tags).map_err(|source| BuildError::IpSet {
                file: file(),
                name: name.clone(),
                source: Box::new(source),
            })?;
            ipsets.insert(name.clone(), set.len());
            sets.insert(name.clone(), Arc::new(set));
        }
        let mut refreshers: Vec<Refresher> = Vec::new();
        let entra_err =
            |e: crate::auth::entra::EntraSetupError| BuildError::Entra { file: file(), source: Box::new(e) };
        let entra = match &cfg.auth.entra {
            Some(e) => {
                let (store, new) = shared.jwks_store(&e.jwks).map_err(|j| entra_err(j.into()))?;
                if new {
                    refreshers.push(Box::pin(store.clone().prefetch()));
                }
                Some(Arc::new(
                    crate::auth::entra::Entra::build(e, store, shared.entra_metrics.clone()).map_err(entra_err)?,
                ))
            }
            None => None,
        };
        let mut listeners = BTreeMap::new();
        let mut certificates = BTreeMap::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let server_tls = tls::server_config(&l.tls).map_err(|e| BuildError::Tls {
                file: file(),
                scope: format!("listener[{i}] \"{}\": ", l.name),
                source: Box::new(e),
            })?;
            if let Some(t) = server_tls.as_ref().and_then(|t| t.not_after) {
                certificates.insert(l.name.clone(), t);
            }
            let mut host = |name: &Hostname| {
                let (entry, refresher) = shared.resolver.entry(name);
                if let Some(r) = refresher {
                    refreshers.push(Box::pin(r));
                }
                entry
            };
            let firewall = Rules::compile(&l.allow, &l.deny, &sets, &mut host);
            let context = ListenerContext {
                listener: l.name.as_str().into(),
                handshake_timeout: l.handshake_timeout,
                tls: server_tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config)),
                min_tls: l.tls.min_version,
                require_secure_transport: l.tls.require_secure_transport,
                greeting: l.greeting,
                firewall,
                limits: l.limits,
                proxy_protocol: l.proxy_protocol.as_ref().map(|p| IpSet::from_nets(p.trusted.iter().copied())),
                gate: shared.gate(&l.name),
                generation,
                backend: shared.backend.clone(),
                profile: shared.profile.clone(),
                registry: shared.registry.clone(),
                events: shared.events.clone(),
                metrics: shared.metrics.listener(&l.name),
                dials: shared.dials.clone(),
                draining: shared.draining.clone(),
                key: shared.key.clone(),
                auth_mode: l.auth_mode,
                entra: entra.clone(),
            };
            listeners.insert(l.name.clone(), ListenerPlan { config: l.clone(), context: Arc::new(context) });
        }
        Ok(Self { generation, config: cfg, listeners, refreshers, ipsets, certificates, key_plan })
    }

    /// The hostnames its listeners' rules name.
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<HostEntry>> {
        self.listeners.values().flat_map(|l| l.context.firewall.hosts())
    }

    /// At startup: what each listener will do with its rules, and what looks wrong.
    pub fn log_rules(&self) {
        for (name, l) in &self.listeners {
            if matches!(l.config.address, ListenAddress::Unix { .. }) {
                info!(listener = %name, address = %l.config.address, "Unix socket: IP rules do not apply; its file permissions decide who may connect");
            } else if !l.context.firewall.allows_nobody() {
                info!(listener = %name, rules = %l.context.firewall.summary(), limits = ?l.context.limits, "firewall");
            }
        }
        for (name, n) in &self.ipsets {
            info!(ipset = %name, ranges = n, "IP set loaded");
        }
        self.log_warnings();
    }

    /// What looks wrong; at startup, and again on every reload (whose own line says the rest).
    pub fn log_warnings(&self) {
        for (name, l) in &self.listeners {
            if !matches!(l.config.address, ListenAddress::Unix { .. }) && l.context.firewall.allows_nobody() {
                warn!(
                    listener = %name,
                    address = %l.config.address,
                    "no allow entries: this listener refuses every connection (deny by default); add allow = [...] \
                     (\"0.0.0.0/0\" and \"::/0\" open it to everyone)"
                );
            }
            let wide = l.config.proxy_protocol.iter().flat_map(|p| &p.trusted).find(|n| n.prefix_len() < 8);
            if let Some(net) = wide {
                warn!(
                    listener = %name,
                    trusted = %net,
                    "proxy_protocol.trusted is very wide: any host in it may claim any client address and so pass \
                     the allow-list; list only the balancers"
                );
            }
        }
    }
}

/// SHA-256 over each file's path and contents (a missing file counts as empty).
pub fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        ctx.update(f.as_os_str().as_encoded_bytes());
        ctx.update(&[0]);
        let contents = std::fs::read(f).unwrap_or_default();
        ctx.update(&(contents.len() as u64).to_le_bytes());
        ctx.update(&contents);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What changed between two snapshots, for the reload's log line.
pub fn describe_changes(old: &Snapshot, new: &Snapshot) -> String {
    let mut parts = Vec::new();
    for name in new.listeners.keys().filter(|n| !old.listeners.contains_key(*n)) {
        parts.push(format!("+listener {name}"));
    }
    for name in old.listeners.keys().filter(|n| !new.listeners.contains_key(*n)) {
        parts.push(format!("-listener {name}"));
    }
    for (name, l) in &new.listeners {
        let Some(o) = old.listeners.get(name) else { continue };
        let (a, b) = (&o.config, &l.config);
        let mut what = Vec::new();
        if a.address != b.address {
            what.push("address");
        }
        if a.allow != b.allow || a.deny != b.deny {
            what.push("rules");
        }
        if a.limits != b.limits {
            what.push("limits");
        }
        if a.tls != b.tls {
            what.push("tls");
        }
        if a.proxy_protocol != b.proxy_protocol {
            what.push("proxy_protocol");
        }
        if a.handshake_timeout != b.handshake_timeout || a.greeting != b.greeting {
            what.push("handshake");
        }
        if a.auth_mode != b.auth_mode {
            what.push("auth_mode");
        }
        if !what.is_empty() {
            parts.push(format!("~listener {name} ({})", what.join(", ")));
        }
    }
    if old.config.auth != new.config.auth {
        parts.push("auth".into());
    }
    for (name, n) in &new.ipsets {
        if old.ipsets.get(name) != Some(n) || old.config.ipsets.get(name) != new.config.ipsets.get(name) {
            parts.push(format!("ipset {name}: {n} ranges"));
        }
    }
    if parts.is_empty() {
        // Same settings: a file they name changed (a rotated certificate, a refreshed feed).
        parts.push("referenced files changed (certificates or IP sets reloaded)".into());
    }
    parts.join("; ")
}
