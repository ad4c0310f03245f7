//! Listeners, accept loops, reload and shutdown. The only module that spawns long-lived tasks.
//!
//! Each listener's accept loop holds its context in an [`ArcSwap`]: a reload stores a new one,
//! and every session keeps the `Arc` it was accepted with. Reloads run on the serving task, one
//! at a time, so two reloads never race; a request from [`Reloader`] (SIGHUP, tests) and a
//! change seen by the file watcher take the same path.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ListenAddress};
use crate::events::{self, ClientAddr, LoginEvents};
use crate::firewall::dns::HostEntry;
use crate::metrics::Metrics;
use crate::profile::ProfileCell;
use crate::registry::SessionRegistry;
use crate::runtime::{BuildError, Shared, Snapshot, describe_changes, fingerprint};
use crate::session::{self, ListenerContext, Origin};
use crate::systemd::{self, Inherited, InheritedSocket};
use crate::watch::FileWatcher;

/// Why flexgate could not start serving (or a reload could not take effect).
#[derive(Debug, Error)]
pub enum SetupError {
    /// The config, or a file it names, is unusable.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listening socket could not be opened.
    #[error("listener \"{listener}\": cannot listen on {address}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        address: String,
        /// The OS error.
        source: io::Error,
    },
    /// A socket passed by the service manager cannot be used.
    #[error("socket activation: {0}")]
    Inherited(String),
    /// The admin listener could not be opened.
    #[error("admin.address: cannot listen on {address}: {source}")]
    Admin {
        /// Address.
        address: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// How serving ends: `drain` starts the drain (the first SIGTERM or SIGINT), `now` cuts it
/// short (the second).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stop taking sessions and drain the open ones for `shutdown.drain_timeout`.
    pub drain: CancellationToken,
    /// Close what remains at once.
    pub now: CancellationToken,
}

/// How long startup and reloads wait for the first answer for new hostnames in rules, so that
/// a listener does not open with them matching nothing. A lookup that takes longer goes on in
/// the background.
const FIRST_RESOLUTION: Duration = Duration::from_secs(5);

/// Everything built from a config, ready to bind. Building it is the whole of `check-config`
/// beyond parsing: certificates, keys and IP sets are loaded and checked here.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    snapshot: Snapshot,
    /// The digest of the files as they were built from: a change before the watcher starts
    /// is then still seen.
    loaded: [u8; 32],
}

impl Proxy {
    /// Loads every file the config names and assembles per-listener contexts.
    pub fn build(cfg: &Config) -> Result<Self, SetupError> {
        let shared = Arc::new(Shared::new(cfg)?);
        let snapshot = Snapshot::build(cfg.clone(), &shared, 1)?;
        snapshot.log_rules();
        let loaded = fingerprint(&cfg.referenced_files());
        Ok(Self { shared, snapshot, loaded })
    }

    /// Opens every listening socket, or none.
    pub async fn bind(self) -> Result<Bound, SetupError> {
        self.bind_with(Inherited::none()).await
    }

    /// Opens every listening socket, or none, taking a listener's socket from `inherited`
    /// (socket activation) when one is named after it.
    ///
    /// With `[key_guard]`, the key is checked first: the listeners open with the breaker's
    /// state known, `inaccessible` (fail closed) unless every provider passed.
    pub async fn bind_with(self, mut inherited: Inherited) -> Result<Bound, SetupError> {
        let shared = &self.shared;
        let plan = self.snapshot.key_plan.clone();
        shared.key_plans.send_replace(plan.clone());
        let mut guard =
            crate::breaker::Guard::new(shared.key.clone(), shared.key_metrics.clone(), &shared.readiness, plan);
        guard.first_check().await;
        let mut sockets = BTreeMap::new();
        for (name, l) in &self.snapshot.listeners {
            let unix = matches!(l.config.address, ListenAddress::Unix { .. });
            let taken = inherited.take(name, unix).map_err(|e| {
                SetupError::Inherited(format!(
                    "the socket named \"{name}\" is not a listening {} socket: {e}",
                    if unix { "Unix stream" } else { "TCP" }
                ))
            })?;
            let socket = match taken {
                Some(s) => {
                    let s = Socket::inherit(name, s)?;
                    info!(listener = %name, address = %s.describe(), configured = %l.config.address, "using the socket passed by systemd");
                    (s, true)
                }
                None => (Socket::bind(name, &l.config.address).await?, false),
            };
            sockets.insert(name.clone(), socket);
        }
        let left = inherited.left_over();
        if !left.is_empty() {
            return Err(SetupError::Inherited(format!(
                "no [[listener]] is named {}; each FileDescriptorName= must be a listener's name",
                left.join(", ")
            )));
        }
        let admin = match &self.snapshot.config.admin {
            Some(a) => Some(
                TcpListener::bind(a.address)
                    .await
                    .map_err(|source| SetupError::Admin { address: a.address, source })?,
            ),
            None => None,
        };
        let (requests, reload_rx) = mpsc::channel(4);
        let (status, _) = watch::channel(ReloadStatus::first(&self.snapshot, &self.loaded, &sockets));
        Ok(Bound {
            shared: self.shared,
            snapshot: self.snapshot,
            loaded: self.loaded,
            sockets,
            admin,
            requests,
            reload_rx,
            status,
            watch: false,
            guard,
        })
    }
}

/// A bound listening socket.
#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    /// The path is removed when the listener stops, unless the socket was inherited: then
    /// the service manager owns it.
    Unix(UnixListener, Option<PathBuf>),
}

impl Socket {
    fn inherit(name: &str, s: InheritedSocket) -> Result<Self, SetupError> {
        let err = |e: io::Error| SetupError::Inherited(format!("listener \"{name}\": {e}"));
        match s {
            InheritedSocket::Tcp(l) => {
                l.set_nonblocking(true).map_err(err)?;
                TcpListener::from_std(l).map(Socket::Tcp).map_err(err)
            }
            InheritedSocket::Unix(l) => {
                l.set_nonblocking(true).map_err(err)?;
                UnixListener::from_std(l).map(|l| Socket::Unix(l, None)).map_err(err)
            }
        }
    }

    async fn bind(name: &str, address: &ListenAddress) -> Result<Self, SetupError> {
        let err = |source| SetupError::Bind { listener: name.to_owned(), address: address.to_string(), source };
        match address {
            ListenAddress::Tcp(a) => TcpListener::bind(a).await.map(Socket::Tcp).map_err(err),
            ListenAddress::Unix { path, mode } => {
                refuse_live_socket(path).map_err(err)?;
                // Bound under a temporary name, given its mode, then renamed into place: the
                // socket is never reachable with the umask's permissions.
                let mut staging = path.clone().into_os_string();
                staging.push(format!(".flexgate-{}", std::process::id()));
                let staging = PathBuf::from(staging);
                let _ = std::fs::remove_file(&staging);
                let l = UnixListener::bind(&staging).map_err(err)?;
                let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(*mode))
                    .and_then(|()| std::fs::rename(&staging, path));
                if let Err(e) = placed {
                    let _ = std::fs::remove_file(&staging);
                    return Err(err(e));
                }
                Ok(Socket::Unix(l, Some(path.clone())))
            }
        }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(..) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
            Self::Unix(_, Some(p)) => format!("unix:{}", p.display()),
            Self::Unix(l, None) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:(inherited)".into()),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Self::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by a flexgate that did not stop cleanly is replaced; one that something
/// still listens on is not, and neither is a file that is not a socket.
fn refuse_live_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening on this socket")),
            Err(_) => Ok(()),
        },
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket; not replacing it")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The outcome of the latest reload, and where the listeners are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// The generation in force (1 is the startup config).
    pub generation: u64,
    /// Reload attempts so far, successful or not.
    pub attempts: u64,
    /// What the last attempt changed, or why it was rejected.
    pub last: Result<String, String>,
    /// Each listener's name and bound address (`unix:/path` for a Unix socket).
    pub listeners: Vec<(String, String)>,
    /// The config file.
    pub file: String,
    /// SHA-256 (hex) over the config file and every file it names, as the running
    /// generation was built from them.
    pub hash: String,
}

impl ReloadStatus {
    fn first(snapshot: &Snapshot, digest: &[u8; 32], sockets: &BTreeMap<String, (Socket, bool)>) -> Self {
        Self {
            generation: 1,
            attempts: 0,
            last: Ok("started".into()),
            listeners: sockets.iter().map(|(n, (s, _))| (n.clone(), s.describe())).collect(),
            file: snapshot.config.source.display().to_string(),
            hash: hex(digest),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks the serving task to reload its config file. Cloneable; SIGHUP and tests use it.
#[derive(Debug, Clone)]
pub struct Reloader {
    requests: mpsc::Sender<oneshot::Sender<ReloadStatus>>,
    status: watch::Receiver<ReloadStatus>,
}

impl Reloader {
    /// Reloads now and returns the result; `None` if the proxy has stopped.
    pub async fn reload(&self) -> Option<ReloadStatus> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Follows every reload, including those the file watcher starts.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }
}

/// Listening sockets, ready to serve.
#[derive(Debug)]
pub struct Bound {
    shared: Arc<Shared>,
    snapshot: Snapshot,
    loaded: [u8; 32],
    sockets: BTreeMap<String, (Socket, bool)>,
    admin: Option<TcpListener>,
    requests: mpsc::Sender<oneshot::Sender<ReloadStatus>>,
    reload_rx: mpsc::Receiver<oneshot::Sender<ReloadStatus>>,
    status: watch::Sender<ReloadStatus>,
    watch: bool,
    guard: crate::breaker::Guard,
}

impl Bound {
    /// Each TCP listener's name and actual address (useful when the config asked for port 0),
    /// in config order.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let names = self.snapshot.config.listeners.iter().map(|l| &l.name);
        names.filter_map(|n| self.sockets.get(n).and_then(|(s, _)| s.local_addr()).map(|a| (n.clone(), a))).collect()
    }

    /// Where the admin API listens, if `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The readiness latch, for parts that add a condition.
    pub fn readiness(&self) -> Arc<crate::health::Readiness> {
        self.shared.readiness.clone()
    }

    /// Reload also when the config file or a file it names changes.
    pub fn watch_files(mut self) -> Self {
        self.watch = true;
        self
    }

    /// A handle to reload the config.
    pub fn reloader(&self) -> Reloader {
        Reloader { requests: self.requests.clone(), status: self.status.subscribe() }
    }

    /// Counters shared by all sessions.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The login events of all sessions.
    pub fn events(&self) -> LoginEvents {
        self.shared.events.clone()
    }

    /// The server profile flexgate greets with.
    pub fn profile(&self) -> Arc<ProfileCell> {
        self.shared.profile.clone()
    }

    /// The live sessions by connection id.
    pub fn registry(&self) -> Arc<SessionRegistry> {
        self.shared.registry.clone()
    }

    /// A listener's counts and refusal counters, which survive reloads.
    pub fn gate(&self, listener: &str) -> Arc<crate::firewall::ListenerGate> {
        self.shared.gate(listener)
    }

    /// Serves until `stop.drain` is cancelled, then drains: readiness fails, new clients get
    /// ERR 1053 on flexgate's own sockets (an inherited socket stops being accepted from, so
    /// that its backlog waits for the next process), and open sessions have
    /// `shutdown.drain_timeout` to finish before the rest are closed. `stop.now` ends the
    /// drain at once. Returns when serving has stopped; sessions still open are closed when
    /// their tasks are dropped with the runtime.
    ///
    /// Before the first client, one connection to the server learns the profile that
    /// flexgate's greeting is built from; if the server is down, the first client's session
    /// learns it instead, and flexgate dials again every `admin.backend_retry` until the
    /// server answers.
    pub async fn serve(self, stop: Stop) {
        let Self { shared, snapshot, loaded, sockets, admin, requests: _, mut reload_rx, status, watch, guard } = self;
        let sessions = TaskTracker::new();
        let background = CancellationToken::new();
        let log = tokio::spawn(events::log_events(shared.events.subscribe()));
        let counting = tokio::spawn(count_logins(shared.events.subscribe(), shared.metrics.clone()));
        let listening = shared.readiness.condition("listeners", false, "opening the listeners");
        let not_draining = shared.readiness.condition("draining", true, "serving");
        let _config = shared.readiness.condition("config", true, format!("generation {}", snapshot.generation));
        let retry = snapshot.config.admin.as_ref().map_or(crate::config::DEFAULT_BACKEND_RETRY, |a| a.backend_retry);
        tokio::spawn(watch_backend(shared.clone(), retry, background.clone()));
        tokio::spawn(guard.run(shared.key_plans.subscribe(), background.clone()));
        if let Some(l) = admin {
            let state = crate::admin::AdminState::new(
                shared.clone(),
                status.subscribe(),
                snapshot.config.admin.as_ref().and_then(|a| a.token_file.clone()),
            );
            tokio::spawn(crate::admin::serve(l, state, background.clone()));
        }
        shared.metrics.set_certificates(snapshot.certificates.clone());
        let drain_timeout = snapshot.config.shutdown.drain_timeout;
        let watched = snapshot.config.referenced_files();
        let last_seen = Some(loaded);
        let mut server = Serving {
            shared,
            snapshot,
            live: BTreeMap::new(),
            sessions: sessions.clone(),
            accepting: CancellationToken::new(),
            watched,
            last_seen,
            attempted: Vec::new(),
        };
        server.start_refreshers();
        wait_resolved(server.snapshot.hosts()).await;
        for (name, (socket, inherited)) in sockets {
            if let Some(plan) = server.snapshot.listeners.get(&name) {
                let ctx = plan.context.clone();
                server.spawn_listener(name, socket, inherited, plan.config.address.clone(), ctx);
            }
        }
        listening.set(true, format!("{} listening", server.live.len()));
        systemd::ready(&serving_line(&server));
        let (changed_tx, mut changed_rx) = mpsc::channel(1);
        let mut watcher = if watch {
            match FileWatcher::new(changed_tx.clone()) {
                Ok(mut w) => {
                    w.watch(&server.watched);
                    // A change between loading the config and watching it has no event of its
                    // own: look once, now that the watch is in place.
                    let files = server.watched.clone();
                    if tokio::task::spawn_blocking(move || fingerprint(&files)).await.ok() != Some(loaded) {
                        let _ = changed_tx.try_send(());
                    }
                    Some(w)
                }
                Err(e) => {
                    warn!(error = %e, "cannot watch config files; SIGHUP still reloads");
                    None
                }
            }
        } else {
            drop(changed_tx);
            None
        };
        let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
        let mut attempts = 0u64;
        loop {
            let tick = async {
                match &mut watchdog {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let (reply, forced) = tokio::select! {
                () = stop.drain.cancelled() => break,
                () = stop.now.cancelled() => break,
                () = tick => {
                    systemd::watchdog();
                    continue;
                }
                Some(reply) = reload_rx.recv() => (Some(reply), true),
                Some(()) = changed_rx.recv() => (None, false),
            };
            if forced {
                systemd::reloading();
            }
            // `None`: the watcher saw a change to nothing flexgate reads.
            let Some(last) = server.reload(forced).await else { continue };
            attempts += 1;
            server.shared.metrics.reloaded(last.is_ok(), server.snapshot.generation);
            if last.is_ok() {
                server.shared.metrics.set_certificates(server.snapshot.certificates.clone());
            }
            if let Some(w) = &mut watcher {
                w.watch(&server.watched);
            }
            let mut st = status.borrow().clone();
            st.generation = server.snapshot.generation;
            st.attempts = attempts;
            st.listeners = server.live.iter().map(|(n, l)| (n.clone(), l.described.clone())).collect();
            if last.is_ok() {
                st.hash = hex(&server.last_seen.unwrap_or_default());
            }
            st.last = last;
            status.send_replace(st.clone());
            systemd::ready(&serving_line(&server));
            if let Some(reply) = reply {
                let _ = reply.send(st);
            }
        }
        drop(watcher);
        // Draining: the latch fails first, so that an orchestrator stops routing before the
        // refusals begin.
        not_draining.set(false, "draining before shutdown");
        server.shared.metrics.set_draining();
        server.shared.draining.cancel();
        let open = server.shared.metrics.active();
        systemd::stopping(&format!("draining {open} session(s) for up to {drain_timeout:?}"));
        info!(sessions = open, drain_timeout = ?drain_timeout, "draining: new clients are refused; open sessions may finish");
        for l in server.live.values().filter(|l| l.inherited) {
            // Leave new connections in the inherited socket's backlog for the next process.
            l.stop.cancel();
        }
        sessions.close();
        tokio::select! {
            () = sessions.wait() => info!("drained: every session has ended"),
            () = tokio::time::sleep(drain_timeout) => warn!(
                drain_timeout = ?drain_timeout,
                open = server.shared.metrics.active(),
                "sessions still open after the drain timeout; closing them"
            ),
            () = stop.now.cancelled() => warn!(
                open = server.shared.metrics.active(),
                "second stop signal: closing open sessions now"
            ),
        }
        server.accepting.cancel();
        background.cancel();
        log.abort();
        counting.abort();
    }
}

/// The `STATUS=` line for systemd.
fn serving_line(server: &Serving) -> String {
    format!("serving {} listener(s), config generation {}", server.live.len(), server.snapshot.generation)
}

/// Counts login events into the metrics: the sessions publish them anyway, so the count costs
/// their path nothing.
async fn count_logins(mut rx: tokio::sync::broadcast::Receiver<Arc<events::LoginEvent>>, metrics: Arc<Metrics>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(e) => metrics.login(
                &e.listener,
                e.kind.as_str(),
                crate::metrics::plugin_label(e.plugin.as_deref()),
                e.outcome.as_str(),
            ),
            Err(RecvError::Lagged(n)) => metrics.login_events_lost(n),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Learns the server profile at startup, then, while the latest dial failed, dials again
/// every `retry` so that readiness returns when the server does. A healthy server is never
/// dialled for this (see [`crate::health::BackendHealth`]).
async fn watch_backend(shared: Arc<Shared>, retry: Duration, stop: CancellationToken) {
    let mut first = true;
    loop {
        if first || !shared.dials.is_reachable() {
            if let Err(e) = session::probe(&shared.backend, &shared.profile, &shared.dials).await {
                if first {
                    warn!(error = %e, "cannot reach the server yet; the first client will wait for it");
                } else {
                    debug!(error = %e, "server still unreachable");
                }
            } else if !first {
                info!(backend = shared.backend.label(), "server reachable again");
            }
            first = false;
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Waits (bounded) for the first answer of every hostname in rules. One after another: they
/// all resolve concurrently in their refreshers, so the wait is the slowest one's.
async fn wait_resolved<'a>(hosts: impl Iterator<Item = &'a Arc<HostEntry>>) {
    let all = async {
        for h in hosts {
            h.resolved().await;
        }
    };
    if tokio::time::timeout(FIRST_RESOLUTION, all).await.is_err() {
        warn!("some hostnames in rules are not resolved yet; they allow nothing until they are");
    }
}

/// One running listener.
struct Live {
    context: Arc<ArcSwap<ListenerContext>>,
    address: ListenAddress,
    described: String,
    stop: CancellationToken,
    /// Passed by systemd: during the drain it stops being accepted from, rather than
    /// refusing, so that its backlog goes to the next process.
    inherited: bool,
}

/// The serving task's state.
struct Serving {
    shared: Arc<Shared>,
    snapshot: Snapshot,
    live: BTreeMap<String, Live>,
    /// The sessions, which the drain waits for.
    sessions: TaskTracker,
    /// Cancelled when serving ends: every accept loop stops.
    accepting: CancellationToken,
    /// The files whose change may mean a reload: the running config's and the last
    /// attempted one's.
    watched: Vec<PathBuf>,
    /// Their digest when they were last read for a reload.
    last_seen: Option<[u8; 32]>,
    /// The files the last attempted config names (it may have been rejected).
    attempted: Vec<PathBuf>,
}

impl Serving {
    fn start_refreshers(&mut self) {
        for r in self.snapshot.refreshers.drain(..) {
            // Refreshers end on their own when no rule names their host any more.
            tokio::spawn(r);
        }
    }

    fn spawn_listener(
        &mut self,
        name: String,
        socket: Socket,
        inherited: bool,
        address: ListenAddress,
        ctx: Arc<ListenerContext>,
    ) {
        let context = Arc::new(ArcSwap::new(ctx));
        let stop = self.accepting.child_token();
        let described = socket.describe();
        tokio::spawn(accept_loop(socket, context.clone(), stop.clone(), self.sessions.clone()));
        self.live.insert(name, Live { context, address, described, stop, inherited });
    }

    /// Loads the config file again and, if it is valid and every new socket binds, swaps it in.
    /// `None` when nothing flexgate reads changed (a watcher event for another file).
    async fn reload(&mut self, forced: bool) -> Option<Result<String, String>> {
        // The digest is taken before anything is read for the attempt: a file that changes
        // while the reload runs differs from it, so its own event reloads again.
        let files = self.watched.clone();
        let seen = tokio::task::spawn_blocking(move || fingerprint(&files)).await.ok();
        if !forced && seen.is_some() && seen == self.last_seen {
            return None;
        }
        self.last_seen = seen;
        let generation = self.snapshot.generation + 1;
        let result = self.try_reload(generation).await;
        match &result {
            Ok(changes) => info!(generation, changes = %changes, "config reloaded"),
            Err(e) => error!(
                generation = self.snapshot.generation,
                error = %e,
                "config reload rejected; the running config stays in force"
            ),
        }
        // Watch what runs and what was attempted: a rejected config that names a file not yet
        // there is retried when the file appears. A rejected attempt is not retried until
        // something it reads changes.
        let mut watched = self.snapshot.config.referenced_files();
        watched.append(&mut self.attempted);
        watched.sort();
        watched.dedup();
        if watched != self.watched {
            self.watched = watched;
            self.last_seen = None;
        }
        Some(result)
    }

    async fn try_reload(&mut self, generation: u64) -> Result<String, String> {
        let path = self.snapshot.config.source.clone();
        // Reading and building parse files (a Service Tags file is megabytes of JSON): off the
        // runtime's worker threads.
        let shared = self.shared.clone();
        let built = tokio::task::spawn_blocking(move || {
            let cfg = Config::load(&path).map_err(|e| (e.to_string(), Vec::new()))?;
            let files = cfg.referenced_files();
            let restart = shared.needs_restart(&cfg);
            Snapshot::build(cfg, &shared, generation).map(|s| (s, restart)).map_err(|e| (e.to_string(), files))
        })
        .await
        .map_err(|e| format!("building the new config failed unexpectedly ({e}); this is a bug"))?;
        let (mut next, restart) = built.map_err(|(e, files)| {
            self.attempted = files;
            e
        })?;
        self.attempted = next.config.referenced_files();
        // Bind every new or moved listener before changing anything, so that a port in use
        // rejects the reload as a whole.
        let mut new_sockets = BTreeMap::new();
        for (name, plan) in &next.listeners {
            let address = &plan.config.address;
            if self.live.get(name).is_some_and(|l| l.address.same_socket(address)) {
                continue;
            }
            let conflict = self.live.iter().find(|(n, l)| *n != name && l.address.same_socket(address));
            if let Some((other, _)) = conflict.filter(|_| !address.is_ephemeral()) {
                return Err(format!(
                    "listener \"{name}\": {address} is held by listener \"{other}\" of the running config; renaming \
                     or swapping listeners on one address needs a restart"
                ));
            }
            let socket = Socket::bind(name, address).await.map_err(|e| e.to_string())?;
            new_sockets.insert(name.clone(), socket);
        }
        next.log_warnings();
        for r in next.refreshers.drain(..) {
            tokio::spawn(r);
        }
        tokio::select! {
            () = wait_resolved(next.hosts()) => {}
            () = self.shared.draining.cancelled() => return Err("shutting down".into()),
        }
        let mut changes = describe_changes(&self.snapshot, &next);
        for (name, plan) in &next.listeners {
            if new_sockets.contains_key(name) {
                continue;
            }
            if let Some(l) = self.live.get_mut(name) {
                if let (ListenAddress::Unix { path, mode }, ListenAddress::Unix { mode: old, .. }) =
                    (&plan.config.address, &l.address)
                    && mode != old
                {
                    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)) {
                        warn!(listener = %name, error = %e, "cannot change the socket's mode");
                    }
                    l.address = plan.config.address.clone();
                }
                l.context.store(plan.context.clone());
            }
        }
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(n, l)| next.listeners.get(*n).is_none_or(|p| !p.config.address.same_socket(&l.address)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(l) = self.live.remove(&name) {
                // Stops accepting; its sessions go on under the context they started with.
                l.stop.cancel();
            }
        }
        for (name, socket) in new_sockets {
            if let Some(plan) = next.listeners.get(&name) {
                let (address, ctx) = (plan.config.address.clone(), plan.context.clone());
                self.spawn_listener(name, socket, false, address, ctx);
            }
        }
        if !restart.is_empty() {
            changes.push_str(&format!("; changes to [{}] apply only after a restart", restart.join("], [")));
        }
        // The breaker's task takes the new providers and settings, and checks at once.
        self.shared.key_plans.send_replace(next.key_plan.clone());
        self.snapshot = next;
        Ok(changes)
    }
}

/// Pause after a failed accept. EMFILE and ENFILE do not clear by retrying at once: the
/// pending connection stays in the backlog and `accept` fails again immediately.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "accept failed" line per listener in this period; the rest are counted.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// An accepted connection of either kind.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept_one(socket: &Socket) -> io::Result<Accepted> {
    match socket {
        Socket::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Socket::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

async fn accept_loop(
    socket: Socket,
    context: Arc<ArcSwap<ListenerContext>>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let name = context.load().listener.clone();
    info!(listener = %name, address = %socket.describe(), greeting = ?context.load().greeting, "listening");
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut suppressed: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = accept_one(&socket) => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and aborted handshakes are transient: back off,
                    // keep serving, and say so without flooding the log.
                    let now = tokio::time::Instant::now();
                    if last_log.is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY) {
                        error!(listener = %name, error = %e, suppressed, "accept failed; backing off");
                        last_log = Some(now);
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = stop.cancelled() => break,
                    }
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Each session keeps the context current at its accept, whatever reloads follow.
        let ctx = context.load_full();
        // Sessions outlive the accept loop by the grace period only: `serve` stops waiting for
        // them then, and dropping the runtime closes what is left.
        match accepted {
            Accepted::Tcp(sock, peer) => {
                let _ = sock.set_nodelay(true);
                // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; logs, events and
                // limits use the IPv4 form, as they do for a PROXY header's address.
                let peer = SocketAddr::new(crate::firewall::canonical(peer.ip()), peer.port());
                // The address the client connected to matters only to the PROXY header for the
                // server (or comes from the client's own header): one system call saved per
                // connection otherwise.
                let local = if ctx.backend.sends_proxy_header() { sock.local_addr().ok() } else { None };
                let origin = Origin { peer: ClientAddr::Tcp(peer), local };
                tasks.spawn(session::run(sock, origin, ctx));
            }
            Accepted::Unix(sock) => {
                tasks.spawn(session::run(sock, Origin { peer: ClientAddr::Unix, local: None }, ctx));
            }
        }
    }
    // Dropping the socket closes it (and removes a Unix socket's file).
    info!(listener = %name, "stopped listening");
}
