//! Counters the sessions record into: plain atomics with a fixed, bounded label set (never a
//! user name or an address), so that recording costs one relaxed add and cannot grow memory.

use std::sync::atomic::{AtomicU64, Ordering};

/// Session outcomes, as logged. Fixed so that the counter array is fixed.
pub const OUTCOMES: &[&str] = &[
    "closed",
    "relay_error",
    "auth_failed",
    "backend_refused",
    "backend_unavailable",
    "backend_error",
    "backend_tls_failed",
    "password_protection_failed",
    "protocol_error",
    "packet_too_large",
    "tls_failed",
    "client_gone",
    "insecure_transport_refused",
    "auth_refused",
    "handshake_timeout",
];

/// Process-wide counters, shared by `Arc` (no global).
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    active: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES.len()],
    tls_handshake_failures: AtomicU64,
}

impl Metrics {
    /// A connection was accepted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A session ended with `outcome` (one of [`OUTCOMES`]).
    pub fn ended(&self, outcome: &str) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client TLS handshake failed.
    pub fn tls_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Sessions now open.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Sessions that ended with `outcome`.
    pub fn outcome_total(&self, outcome: &str) -> u64 {
        OUTCOMES.iter().position(|o| *o == outcome).map_or(0, |i| self.outcomes[i].load(Ordering::Relaxed))
    }

    /// Client TLS handshakes that failed.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.load(Ordering::Relaxed)
    }
}
