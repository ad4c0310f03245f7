//! Readiness: whether an orchestrator should send flexgate traffic now.
//!
//! Readiness is a latch of named conditions. Any part of the running proxy holds a
//! [`Condition`] handle and sets it; flexgate is ready when every condition holds. The
//! listeners, the server's reachability and draining hold one each; the key breaker holds its
//! own. Dropping a handle removes its condition, so a part that goes away cannot leave
//! flexgate unready for ever.
//!
//! Liveness (`/healthz`) is not here: it is that the admin task answers at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::Metrics;

/// The readiness latch. Shared by `Arc`.
#[derive(Debug)]
pub struct Readiness {
    conditions: Mutex<BTreeMap<&'static str, State>>,
    metrics: Arc<Metrics>,
}

/// One condition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Whether it holds.
    pub ok: bool,
    /// Why not, or what holds (for `/readyz` and `/status`).
    pub detail: String,
    /// When it last changed.
    pub since: SystemTime,
}

/// The latch's verdict, with each condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every condition holds.
    pub ready: bool,
    /// Each condition, by name.
    pub conditions: BTreeMap<&'static str, State>,
}

impl Readiness {
    /// An empty latch (ready: no condition fails), publishing to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { conditions: Mutex::default(), metrics })
    }

    /// Adds a condition, starting as `ok`. A second handle with the same name replaces the
    /// first's state; names are fixed strings chosen by the code, not the config.
    pub fn condition(self: &Arc<Self>, name: &'static str, ok: bool, detail: impl Into<String>) -> Condition {
        self.update(name, Some(State { ok, detail: detail.into(), since: SystemTime::now() }));
        Condition { name, latch: self.clone() }
    }

    /// Whether flexgate is ready, and why (not).
    pub fn check(&self) -> Verdict {
        let conditions = self.conditions.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Verdict { ready: conditions.values().all(|s| s.ok), conditions }
    }

    fn update(&self, name: &'static str, state: Option<State>) {
        let mut map = self.conditions.lock().unwrap_or_else(PoisonError::into_inner);
        match state {
            // An unchanged verdict keeps its `since`.
            Some(s) => match map.get_mut(name) {
                Some(old) if old.ok == s.ok => old.detail = s.detail,
                _ => {
                    map.insert(name, s);
                }
            },
            None => {
                map.remove(name);
            }
        }
        let flags: Vec<(&'static str, bool)> = map.iter().map(|(n, s)| (*n, s.ok)).collect();
        drop(map);
        self.metrics.set_readiness(flags.iter().all(|(_, ok)| *ok), &flags);
    }
}

/// A handle on one readiness condition.
#[derive(Debug)]
pub struct Condition {
    name: &'static str,
    latch: Arc<Readiness>,
}

impl Condition {
    /// Sets whether the condition holds, and why.
    pub fn set(&self, ok: bool, detail: impl Into<String>) {
        self.latch.update(self.name, Some(State { ok, detail: detail.into(), since: SystemTime::now() }));
    }

    /// Whether it holds now.
    pub fn is_ok(&self) -> bool {
        let map = self.latch.conditions.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(self.name).is_some_and(|s| s.ok)
    }
}

impl Drop for Condition {
    fn drop(&mut self) {
        self.latch.update(self.name, None);
    }
}

/// Whether the server answered recently: the outcome of the latest dial, by a session or by
/// flexgate's own probe.
///
/// flexgate does not dial a healthy idle server to check on it: each such dial costs the
/// server an aborted connection and, from a remote host, a step towards `max_connect_errors`,
/// which blocks flexgate's address. It probes only while the latest dial failed, until one
/// succeeds.
#[derive(Debug)]
pub struct BackendHealth {
    condition: Condition,
}

impl BackendHealth {
    /// Unknown until the first dial: not ready.
    pub fn new(readiness: &Arc<Readiness>) -> Self {
        Self { condition: readiness.condition("backend", false, "not contacted yet") }
    }

    /// A dial succeeded.
    pub fn reached(&self) {
        self.condition.set(true, "the latest dial succeeded");
    }

    /// A dial failed; `why` must not hold secrets (dial errors hold addresses and OS errors).
    pub fn failed(&self, why: &str) {
        self.condition.set(false, format!("the latest dial failed: {why}"));
    }

    /// Whether the latest dial succeeded.
    pub fn is_reachable(&self) -> bool {
        self.condition.is_ok()
    }
}

/// What every dial of the server reports to: readiness and the dial metrics.
#[derive(Debug)]
pub struct BackendWatch {
    health: BackendHealth,
    latency: Histogram,
    failures: Counter,
}

impl Default for BackendWatch {
    /// Reporting to a latch and metrics of its own: for tests that build a context by hand.
    fn default() -> Self {
        let metrics = Metrics::new();
        Self::new(&Readiness::new(Arc::new(Metrics::new())), &metrics)
    }
}

impl BackendWatch {
    /// Reports to `readiness` and `metrics`.
    pub fn new(readiness: &Arc<Readiness>, metrics: &Metrics) -> Self {
        let (latency, failures) = metrics.backend_dials();
        Self { health: BackendHealth::new(readiness), latency, failures }
    }

    /// A dial (connect and greeting) succeeded after `took`.
    pub fn reached(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
        self.health.reached();
    }

    /// A dial failed.
    pub fn failed(&self, why: &str) {
        self.failures.inc();
        self.health.failed(why);
    }

    /// Whether the latest dial succeeded.
    pub fn is_reachable(&self) -> bool {
        self.health.is_reachable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds_and_dropped_conditions_go() {
        let metrics = Arc::new(Metrics::new());
        let r = Readiness::new(metrics.clone());
        assert!(r.check().ready, "no conditions: ready");
        let listeners = r.condition("listeners", false, "binding");
        let key = r.condition("key", true, "available");
        assert!(!r.check().ready);
        listeners.set(true, "2 listening");
        assert!(r.check().ready);
        key.set(false, "inaccessible since 10:00");
        let v = r.check();
        assert!(!v.ready);
        assert_eq!(v.conditions["key"].detail, "inaccessible since 10:00");
        let text = metrics.encode().unwrap_or_default();
        assert!(text.contains("flexgate_ready 0"), "{text}");
        assert!(text.contains("flexgate_readiness_condition{condition=\"key\"} 0"), "{text}");
        drop(key);
        assert!(r.check().ready, "a dropped condition no longer counts");
    }

    #[test]
    fn since_moves_only_when_the_verdict_changes() {
        let r = Readiness::new(Arc::new(Metrics::new()));
        let c = r.condition("backend", true, "a");
        let first = r.check().conditions["backend"].since;
        std::thread::sleep(std::time::Duration::from_millis(5));
        c.set(true, "b");
        assert_eq!(r.check().conditions["backend"].since, first);
        c.set(false, "c");
        assert_ne!(r.check().conditions["backend"].since, first);
    }

    #[test]
    fn backend_starts_unknown_and_follows_dials() {
        let r = Readiness::new(Arc::new(Metrics::new()));
        let b = BackendHealth::new(&r);
        assert!(!r.check().ready);
        b.reached();
        assert!(r.check().ready && b.is_reachable());
        b.failed("connection refused");
        assert!(!r.check().ready);
        assert!(r.check().conditions["backend"].detail.contains("connection refused"));
    }
}
