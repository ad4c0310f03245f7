//! Network access control: which client addresses may reach a listener, and how many.
//!
//! The firewall is the admission decision's first step. It runs on the client's address (as
//! accepted, or as a trusted PROXY header carried it) before flexgate greets, so a refused
//! client never reaches the server. Everything here is built when the config is loaded and
//! immutable afterwards, except the counts in [`Quota`] and the hostnames' addresses, which
//! their refreshers update off the accept path.
//!
//! - [`ipset`]: prefix sets with logarithmic lookup;
//! - [`feeds`]: named IP sets from files (CIDR lists, Azure Service Tags);
//! - [`dns`]: hostnames, re-resolved by their TTLs;
//! - [`rules`]: a listener's compiled allow and deny lists;
//! - [`quota`]: connection limits.

pub mod dns;
pub mod feeds;
pub mod ipset;
pub mod quota;
pub mod rules;

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use feeds::{FeedError, IpSetFormat};
pub use ipset::{IpSet, canonical};
pub use quota::{LimitHit, Permit, Quota};
pub use rules::{Rules, Verdict};

/// At most one refusal line per listener in this period; the others are counted and the
/// count is given in the next line.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// What a listener keeps across reloads: its connection counts, its refusal counters and its
/// refusal log's rate limit. Keyed by the listener's name.
#[derive(Debug, Default)]
pub struct ListenerGate {
    /// Connection counts; an `Arc` because every session's permit gives its place back here.
    pub quota: std::sync::Arc<Quota>,
    /// Clients refused by the allow and deny lists.
    pub refused_firewall: AtomicU64,
    /// Clients refused by a connection limit.
    pub refused_limit: AtomicU64,
    /// Clients refused for a PROXY header (missing from a trusted peer, bad, or from a peer
    /// that is not trusted).
    pub refused_proxy: AtomicU64,
    /// Clients refused while flexgate drained before stopping.
    pub refused_draining: AtomicU64,
    /// Clients refused while the key breaker was inaccessible.
    pub refused_key: AtomicU64,
    log: RefusalLog,
}

/// The kinds of refusal a listener's gate counts: what a scan or a flood produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRefusal {
    /// The allow and deny lists.
    Firewall,
    /// A connection limit.
    Limit,
    /// A PROXY header: missing or bad from a trusted peer, or sent by an untrusted one.
    ProxyHeader,
    /// flexgate is draining before it stops.
    Draining,
    /// The key breaker is inaccessible.
    KeyUnavailable,
}

impl ListenerGate {
    /// Counts one refusal.
    pub fn count(&self, kind: GateRefusal) {
        let counter = match kind {
            GateRefusal::Firewall => &self.refused_firewall,
            GateRefusal::Limit => &self.refused_limit,
            GateRefusal::ProxyHeader => &self.refused_proxy,
            GateRefusal::Draining => &self.refused_draining,
            GateRefusal::KeyUnavailable => &self.refused_key,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a refusal may be logged now; `Some(n)` gives the refusals left unlogged since
    /// the last line. A flood of refused clients costs one line per second.
    pub fn may_log(&self, now: Instant) -> Option<u64> {
        self.log.may_log(now)
    }

    /// Refusals so far, of all kinds.
    pub fn refused(&self) -> u64 {
        self.refused_firewall.load(Ordering::Relaxed)
            + self.refused_limit.load(Ordering::Relaxed)
            + self.refused_proxy.load(Ordering::Relaxed)
            + self.refused_draining.load(Ordering::Relaxed)
            + self.refused_key.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct RefusalLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RefusalLog {
    fn may_log(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_EVERY) {
            *last = Some(now);
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_log_is_rate_limited_and_counts_the_rest() {
        let gate = ListenerGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.may_log(t0), Some(0));
        for i in 0..1000 {
            assert_eq!(gate.may_log(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(gate.may_log(t0 + REFUSAL_LOG_EVERY), Some(1000));
        assert_eq!(gate.may_log(t0 + REFUSAL_LOG_EVERY), None);
    }
}
