//! The key-availability circuit breaker.
//!
//! A self-hosted MariaDB reads its key file once, at startup, and keeps serving after the key
//! is revoked or deleted; a managed server with a customer-managed key begins to deny
//! connections within 10 minutes. flexgate closes that gap by watching the key itself.
//!
//! Three parts, each with one job:
//! - [`machine`]: the pure state machine (results and time in, transitions out);
//! - [`provider`]: the checks (a file, a program, an HTTPS endpoint);
//! - this module: the [`Guard`] task that runs the checks on a timer and publishes the state
//!   to the [`KeyGate`], which sessions read with one atomic load, and to readiness, metrics
//!   and `/status`. A check that hangs holds up only the guard, never an accept loop or a
//!   session.

pub mod machine;
pub mod provider;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atomic_waker::AtomicWaker;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use machine::{Breaker, Settings, State, Transition};
pub use provider::{Checked, Provider, ProviderError};

use crate::config::{KeyGuardConfig, OnInaccessible};
use crate::health::{Condition, Readiness};
use crate::metrics::Metrics;

/// How many transitions `/status` keeps.
const HISTORY: usize = 32;

/// What sessions consult. Process-wide; the guard writes it, sessions read it.
#[derive(Debug)]
pub struct KeyGate {
    /// While inaccessible: since when the key is unavailable, in Unix milliseconds; 0 while
    /// new connections are admitted.
    refusing_since_ms: AtomicU64,
    /// One signal per open session, raised to close it (`close-existing`). The relay looks
    /// at it on every wake, so it is one atomic load and a waker comparison there; a shared
    /// `CancellationToken` would take two contended locks per wake, a oneshot about 130
    /// instructions (measured with callgrind).
    closers: Mutex<Closers>,
    /// Counts `close_existing` calls; see [`KeyGate::trips`].
    trips: AtomicU64,
    report: Mutex<Report>,
}

#[derive(Debug, Default)]
struct Closers {
    next: u64,
    open: HashMap<u64, Arc<CloseSignal>>,
}

/// A session's close signal: raised once, never lowered.
#[derive(Debug, Default)]
struct CloseSignal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl CloseSignal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Default for KeyGate {
    fn default() -> Self {
        Self {
            refusing_since_ms: AtomicU64::new(0),
            closers: Mutex::default(),
            trips: AtomicU64::new(0),
            report: Mutex::new(Report::default()),
        }
    }
}

/// A session's end of the close signal; leaving it unregisters the session.
#[derive(Debug)]
pub struct SessionWatch {
    signal: Arc<CloseSignal>,
    /// The waker last registered with the signal: while the task's waker stays the same (it
    /// does for a tokio task), polling does not register again.
    registered: Option<Waker>,
    id: u64,
    gate: Arc<KeyGate>,
}

impl SessionWatch {
    /// Resolves when the breaker closes open sessions; never otherwise.
    pub fn closed(&mut self) -> Closed<'_> {
        Closed(self)
    }
}

/// The future of [`SessionWatch::closed`].
#[derive(Debug)]
pub struct Closed<'a>(&'a mut SessionWatch);

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let w = &mut *self.get_mut().0;
        if w.signal.raised.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !w.registered.as_ref().is_some_and(|r| r.will_wake(cx.waker())) {
            w.signal.waker.register(cx.waker());
            w.registered = Some(cx.waker().clone());
            // Raised between the first look and the registration: its wake found no waker.
            if w.signal.raised.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        self.gate.closers.lock().unwrap_or_else(PoisonError::into_inner).open.remove(&self.id);
    }
}

impl KeyGate {
    /// While the breaker is inaccessible: since when the key has been unavailable.
    pub fn refusing_since(&self) -> Option<SystemTime> {
        match self.refusing_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// How many times open sessions have been closed. A session notes it before its
    /// admission decision (one atomic load: a refused client costs nothing more) and hands it
    /// to [`KeyGate::watch_session`] once logged in, so that a trip in between is not missed.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Acquire)
    }

    /// What a logged-in session watches to learn that the breaker closes it; `seen` is what
    /// [`KeyGate::trips`] said before its admission. Already raised if a trip came since.
    pub fn watch_session(self: &Arc<Self>, seen: u64) -> SessionWatch {
        let signal = Arc::new(CloseSignal::default());
        let id = {
            let mut closers = self.closers.lock().unwrap_or_else(PoisonError::into_inner);
            let id = closers.next;
            closers.next += 1;
            closers.open.insert(id, signal.clone());
            id
        };
        // A trip counts before it takes the map: registered before it, the session is raised
        // by it; registered after, it sees the count move.
        if self.trips() != seen {
            signal.raised.store(true, Ordering::Release);
        }
        SessionWatch { signal, registered: None, id, gate: self.clone() }
    }

    /// The state as `/status` shows it.
    pub fn report(&self) -> Report {
        self.report.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_refusing(&self, since: Option<SystemTime>) {
        let ms = since.map_or(0, |t| {
            let ms = t.duration_since(UNIX_EPOCH).map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            ms.max(1)
        });
        self.refusing_since_ms.store(ms, Ordering::Release);
    }

    /// Closes every open session; returns how many were told.
    fn close_existing(&self) -> usize {
        self.trips.fetch_add(1, Ordering::AcqRel);
        let open = std::mem::take(&mut self.closers.lock().unwrap_or_else(PoisonError::into_inner).open);
        for signal in open.values() {
            signal.raise();
        }
        open.len()
    }

    fn publish(&self, report: Report) {
        *self.report.lock().unwrap_or_else(PoisonError::into_inner) = report;
    }
}

/// The breaker as an operator sees it (`/status`).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `[key_guard]` is configured.
    pub configured: bool,
    /// The state, once configured.
    pub state: Option<State>,
    /// Since when.
    pub since: Option<SystemTime>,
    /// Why the key counts as unavailable, if it does.
    pub cause: Option<String>,
    /// When the current run of failed checks began.
    pub failing_since: Option<SystemTime>,
    /// While degraded: when new connections will be refused.
    pub refuse_at: Option<SystemTime>,
    /// `on_inaccessible`.
    pub on_inaccessible: Option<OnInaccessible>,
    /// Each provider's last check.
    pub providers: Vec<ProviderReport>,
    /// The latest transitions, oldest first.
    pub history: Vec<Transition>,
}

/// A provider's last check.
#[derive(Debug, Clone)]
pub struct ProviderReport {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// When it last ran.
    pub checked_at: Option<SystemTime>,
    /// What it said: `Ok` with what it saw, or the failure.
    pub result: Option<Result<String, String>>,
    /// How long it took.
    pub took: Option<Duration>,
}

impl Report {
    /// The JSON of `/status`'s `breaker` field.
    pub fn to_json(&self) -> serde_json::Value {
        use crate::admin::unix;
        use serde_json::json;
        if !self.configured {
            return json!({ "configured": false, "state": "disabled" });
        }
        let providers: Vec<_> = self
            .providers
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "kind": p.kind,
                    "checked_at_unix": p.checked_at.map(unix),
                    "ok": p.result.as_ref().map(Result::is_ok),
                    "detail": p.result.as_ref().map(|r| match r { Ok(d) | Err(d) => d.clone() }),
                    "took_ms": p.took.map(|d| d.as_secs_f64() * 1000.0),
                })
            })
            .collect();
        let history: Vec<_> = self
            .history
            .iter()
            .map(|t| json!({ "from": t.from.as_str(), "to": t.to.as_str(), "at_unix": unix(t.at), "cause": t.cause }))
            .collect();
        json!({
            "configured": true,
            "state": self.state.map(State::as_str),
            "since_unix": self.since.map(unix),
            "cause": self.cause,
            "failing_since_unix": self.failing_since.map(unix),
            "refuse_at_unix": self.refuse_at.map(unix),
            "on_inaccessible": self.on_inaccessible.map(OnInaccessible::as_str),
            "providers": providers,
            "history": history,
        })
    }
}

/// A validated `[key_guard]` with its providers built (HTTP clients, CAs): what a reload
/// hands the guard. Built with the rest of the config, so a bad CA rejects the reload.
#[derive(Debug)]
pub struct KeyPlan {
    /// The settings.
    pub config: KeyGuardConfig,
    /// The providers, in config order.
    pub providers: Vec<Arc<Provider>>,
}

impl KeyPlan {
    /// Builds every provider.
    pub fn build(config: &KeyGuardConfig) -> Result<Self, ProviderError> {
        let providers = config
            .providers
            .iter()
            .map(|p| Provider::build(p, config.timeout).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { config: config.clone(), providers })
    }

    fn settings(&self) -> Settings {
        Settings { grace: self.config.grace, recover_after: self.config.recover_after }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    provider: String,
    result: &'static str,
}

/// The breaker's metrics, registered once per process.
#[derive(Debug, Clone)]
pub struct KeyMetrics {
    state: Family<StateLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    checks: Family<CheckLabels, Counter>,
    closed: Counter,
}

impl KeyMetrics {
    /// Registers them in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            state: Family::default(),
            transitions: Family::default(),
            checks: Family::default(),
            closed: Counter::default(),
        };
        metrics.register(
            "key_state",
            "The key breaker's state: 1 for the current one (all 0 without [key_guard])",
            m.state.clone(),
        );
        metrics.register("key_transitions", "Key breaker state changes, by from and to", m.transitions.clone());
        metrics.register("key_checks", "Key provider checks, by provider and result", m.checks.clone());
        metrics.register(
            "key_sessions_closed",
            "Open sessions closed because the key became inaccessible (on_inaccessible = close-existing)",
            m.closed.clone(),
        );
        m
    }

    fn set_state(&self, current: Option<State>) {
        for s in State::ALL {
            self.state.get_or_create(&StateLabel { state: s.as_str() }).set(i64::from(Some(s) == current));
        }
    }
}

/// The task that runs the checks and publishes the state.
#[derive(Debug)]
pub struct Guard {
    gate: Arc<KeyGate>,
    metrics: KeyMetrics,
    ready: Condition,
    plan: Option<Arc<KeyPlan>>,
    breaker: Option<Breaker>,
    providers: Vec<ProviderReport>,
    history: VecDeque<Transition>,
    /// Each key file's last content digest, to log rotation.
    digests: HashMap<String, [u8; 32]>,
    /// When the last round of checks began.
    last_round: Option<Instant>,
}

impl Guard {
    /// A guard for `plan` (none without `[key_guard]`). Nothing runs until
    /// [`Guard::first_check`] or [`Guard::run`].
    pub fn new(
        gate: Arc<KeyGate>,
        metrics: KeyMetrics,
        readiness: &Arc<Readiness>,
        plan: Option<Arc<KeyPlan>>,
    ) -> Self {
        let ready = readiness.condition("key", true, "no [key_guard]");
        let mut g = Self {
            gate,
            metrics,
            ready,
            plan: None,
            breaker: None,
            providers: Vec::new(),
            history: VecDeque::new(),
            digests: HashMap::new(),
            last_round: None,
        };
        g.adopt(plan);
        g
    }

    /// Runs the first round of checks, so that the listeners open with the state known:
    /// `available` if every provider passed, else `inaccessible` (fail closed).
    pub async fn first_check(&mut self) {
        if self.plan.is_some() {
            self.round().await;
        }
    }

    /// Checks every `check_interval`, and at once when a reload brings a new plan, until
    /// `stop`.
    pub async fn run(mut self, mut plans: watch::Receiver<Option<Arc<KeyPlan>>>, stop: CancellationToken) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                () = stop.cancelled() => return,
                () = sleep_until(wake) => {
                    if self.round_due() {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = self.round() => {}
                        }
                    } else {
                        self.tick();
                    }
                }
                changed = plans.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let plan = plans.borrow_and_update().clone();
                    let same = match (&plan, &self.plan) {
                        (Some(a), Some(b)) => a.config == b.config,
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        self.adopt(plan);
                        if self.plan.is_some() {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = self.round() => {}
                            }
                        }
                    }
                }
            }
        }
    }

    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let plan = self.plan.as_ref()?;
        let next = self.last_round.map_or_else(Instant::now, |t| t + plan.config.check_interval);
        let at = match self.breaker.as_ref().and_then(Breaker::deadline) {
            Some(deadline) => next.min(deadline),
            None => next,
        };
        Some(tokio::time::Instant::from_std(at))
    }

    fn round_due(&self) -> bool {
        match (&self.plan, self.last_round) {
            (Some(plan), Some(t)) => t.elapsed() >= plan.config.check_interval,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// A new plan (or none): settings apply to the running breaker; a breaker that did not
    /// exist starts inaccessible until its first round.
    fn adopt(&mut self, plan: Option<Arc<KeyPlan>>) {
        let Some(plan) = plan else {
            if self.plan.take().is_some() {
                info!("key_guard removed: the key breaker no longer refuses connections");
            }
            self.breaker = None;
            self.providers.clear();
            self.gate.set_refusing(None);
            self.ready.set(true, "no [key_guard]");
            self.metrics.set_state(None);
            self.publish();
            return;
        };
        let wall = SystemTime::now();
        match &mut self.breaker {
            Some(b) => {
                b.reconfigure(plan.settings());
                let was = self.plan.as_ref().map(|p| p.config.on_inaccessible);
                if b.state() == State::Inaccessible
                    && plan.config.on_inaccessible == OnInaccessible::CloseExisting
                    && was != Some(OnInaccessible::CloseExisting)
                {
                    let n = self.gate.close_existing();
                    self.metrics.closed.inc_by(n as u64);
                    warn!(
                        sessions = n,
                        "on_inaccessible is now close-existing and the key is inaccessible: closing open sessions"
                    );
                }
            }
            None => self.breaker = Some(Breaker::new(plan.settings(), wall)),
        }
        // Providers keep their last report if they keep their name and config.
        let old = std::mem::take(&mut self.providers);
        self.providers = plan
            .providers
            .iter()
            .map(|p| {
                old.iter().find(|o| o.name == p.name && o.kind == p.kind()).cloned().unwrap_or(ProviderReport {
                    name: p.name.clone(),
                    kind: p.kind(),
                    checked_at: None,
                    result: None,
                    took: None,
                })
            })
            .collect();
        self.last_round = None;
        self.plan = Some(plan);
    }

    /// One round: every provider, concurrently; the key is available if all pass.
    async fn round(&mut self) {
        let Some(plan) = self.plan.clone() else { return };
        self.last_round = Some(Instant::now());
        let mut set = tokio::task::JoinSet::new();
        for (i, p) in plan.providers.iter().enumerate() {
            let p = p.clone();
            set.spawn(async move { (i, p.check().await) });
        }
        let mut results: Vec<Option<Checked>> = vec![None; plan.providers.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, c)) = joined
                && let Some(slot) = results.get_mut(i)
            {
                *slot = Some(c);
            }
        }
        let wall = SystemTime::now();
        let mut failures = Vec::new();
        for (i, p) in plan.providers.iter().enumerate() {
            let checked = results.get_mut(i).and_then(Option::take).unwrap_or_else(|| Checked {
                result: Err("the check ended unexpectedly (this is a bug)".into()),
                took: Duration::ZERO,
                digest: None,
            });
            let ok = checked.result.is_ok();
            self.metrics
                .checks
                .get_or_create(&CheckLabels { provider: p.name.clone(), result: if ok { "ok" } else { "failed" } })
                .inc();
            if let Err(e) = &checked.result {
                failures.push(format!("provider \"{}\": {e}", p.name));
            }
            if let Some(d) = checked.digest {
                match self.digests.insert(p.name.clone(), d) {
                    Some(before) if before != d && ok => info!(
                        provider = %p.name,
                        "the key file's content changed (a rotation?); it still passes, so the key stays available"
                    ),
                    _ => {}
                }
            }
            if let Some(r) = self.providers.iter_mut().find(|r| r.name == p.name) {
                r.checked_at = Some(wall);
                r.took = Some(checked.took);
                r.result = Some(checked.result);
            }
        }
        let result = if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) };
        let Some(breaker) = &mut self.breaker else { return };
        let transition = breaker.observe(result.clone(), Instant::now(), wall);
        match (&result, breaker.state()) {
            (Err(cause), State::Degraded) if transition.is_none() => {
                let left = breaker.grace_left(Instant::now()).unwrap_or_default();
                warn!(cause = %cause, refuse_in = ?round_secs(left), "key still unavailable; new connections will be refused when the grace period ends");
            }
            (Err(cause), State::Inaccessible) if transition.is_none() => {
                warn!(cause = %cause, "key still unavailable; new connections are refused");
            }
            _ => {}
        }
        self.apply(transition);
    }

    /// The passing of time, between rounds.
    fn tick(&mut self) {
        let Some(breaker) = &mut self.breaker else { return };
        let t = breaker.poll(Instant::now(), SystemTime::now());
        self.apply(t);
    }

    fn apply(&mut self, transition: Option<Transition>) {
        let Some(breaker) = &self.breaker else { return };
        let tripped = transition.as_ref().is_some_and(|t| t.to == State::Inaccessible);
        if let Some(t) = transition {
            self.metrics
                .transitions
                .get_or_create(&TransitionLabels { from: t.from.as_str(), to: t.to.as_str() })
                .inc();
            match t.to {
                State::Available => info!(from = t.from.as_str(), cause = %t.cause, "key breaker: available"),
                State::Degraded => {
                    let left = breaker.grace_left(Instant::now()).unwrap_or_default();
                    error!(
                        cause = %t.cause,
                        refuse_in = ?round_secs(left),
                        "key breaker: degraded; the data-encryption key is unavailable. flexgate still serves, and \
                         refuses new connections when the grace period ends unless the key returns"
                    );
                }
                State::Inaccessible => {
                    let close =
                        self.plan.as_ref().is_some_and(|p| p.config.on_inaccessible == OnInaccessible::CloseExisting);
                    error!(
                        from = t.from.as_str(),
                        cause = %t.cause,
                        open_sessions = if close { "closed" } else { "kept" },
                        "key breaker: inaccessible; new connections are refused with ERR 3032"
                    );
                }
            }
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(t.clone());
        }
        let state = breaker.state();
        let unavailable_since = breaker.failing_since().unwrap_or_else(|| breaker.since());
        self.gate.set_refusing((state == State::Inaccessible).then_some(unavailable_since));
        if tripped && self.plan.as_ref().is_some_and(|p| p.config.on_inaccessible == OnInaccessible::CloseExisting) {
            let n = self.gate.close_existing();
            self.metrics.closed.inc_by(n as u64);
            warn!(sessions = n, "key breaker: closing open sessions (on_inaccessible = close-existing)");
        }
        let detail = match state {
            State::Available => "the data-encryption key is available".to_owned(),
            State::Degraded => format!("degraded: {}", breaker.cause().unwrap_or("checks fail")),
            State::Inaccessible => format!("inaccessible: {}", breaker.cause().unwrap_or("the key is unavailable")),
        };
        self.ready.set(state != State::Inaccessible, detail);
        self.metrics.set_state(Some(state));
        self.publish();
    }

    fn publish(&mut self) {
        let report = match (&self.plan, &self.breaker) {
            (Some(plan), Some(b)) => {
                let now = Instant::now();
                Report {
                    configured: true,
                    state: Some(b.state()),
                    since: Some(b.since()),
                    cause: b.cause().map(str::to_owned),
                    failing_since: b.failing_since(),
                    refuse_at: b.grace_left(now).map(|left| SystemTime::now() + left),
                    on_inaccessible: Some(plan.config.on_inaccessible),
                    providers: self.providers.clone(),
                    history: self.history.iter().cloned().collect(),
                }
            }
            _ => Report { history: self.history.iter().cloned().collect(), ..Report::default() },
        };
        self.gate.publish(report);
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
