//! Per-listener connection limits, counted on the real client address.
//!
//! The counts live in a [`Quota`] that belongs to the listener's name, not to one config: a
//! reload changes the limits for new connections while the connections already counted stay
//! counted. The checks themselves are a pure function of the limits, the counts and the time.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{ConnectRate, ConnectionLimits};

/// Which limit refused a connection, with its configured value for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_connections` on the listener.
    Listener(u32),
    /// `max_connections_per_ip`.
    PerIp(u32),
    /// `max_preauth_per_ip`: too many connections from this address still logging in.
    PreauthPerIp(u32),
    /// `connect_rate_per_ip`.
    Rate(ConnectRate),
}

impl LimitHit {
    /// The config key, as labels and messages name it.
    pub const fn key(self) -> &'static str {
        match self {
            Self::Listener(_) => "max_connections",
            Self::PerIp(_) => "max_connections_per_ip",
            Self::PreauthPerIp(_) => "max_preauth_per_ip",
            Self::Rate(_) => "connect_rate_per_ip",
        }
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Listener(n) => write!(f, "this listener allows {n} open connections (max_connections)"),
            Self::PerIp(n) => write!(f, "one address may hold {n} open connections (max_connections_per_ip)"),
            Self::PreauthPerIp(n) => {
                write!(f, "one address may have {n} connections still logging in (max_preauth_per_ip)")
            }
            Self::Rate(r) => write!(f, "one address may open {r} new connections (connect_rate_per_ip)"),
        }
    }
}

/// One address's counts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PerIp {
    open: u32,
    preauth: u32,
    /// Tokens left in the rate bucket, and when it was last topped up.
    tokens: f64,
    refilled: Instant,
}

impl PerIp {
    fn new(now: Instant, rate: Option<ConnectRate>) -> Self {
        Self { open: 0, preauth: 0, tokens: rate.map_or(0.0, |r| f64::from(r.count)), refilled: now }
    }

    /// Whether forgetting this entry loses nothing: no connection open, and a full bucket.
    fn idle(&self, now: Instant, rate: Option<ConnectRate>) -> bool {
        self.open == 0 && rate.is_none_or(|r| refill(self.tokens, self.refilled, now, r) >= f64::from(r.count))
    }
}

fn refill(tokens: f64, since: Instant, now: Instant, r: ConnectRate) -> f64 {
    let per = r.per.as_secs_f64().max(f64::MIN_POSITIVE);
    let earned = now.saturating_duration_since(since).as_secs_f64() * f64::from(r.count) / per;
    (tokens + earned).min(f64::from(r.count))
}

/// The pure check: may one more connection from an address with `entry` counts open, given
/// `total` open on the listener? On success the entry is updated (token spent, counts up).
fn admit_one(limits: &ConnectionLimits, total: u32, entry: Option<&mut PerIp>, now: Instant) -> Result<(), LimitHit> {
    if total >= limits.max_connections {
        return Err(LimitHit::Listener(limits.max_connections));
    }
    let Some(e) = entry else { return Ok(()) };
    if let Some(max) = limits.max_connections_per_ip
        && e.open >= max
    {
        return Err(LimitHit::PerIp(max));
    }
    if e.preauth >= limits.max_preauth_per_ip {
        return Err(LimitHit::PreauthPerIp(limits.max_preauth_per_ip));
    }
    if let Some(r) = limits.connect_rate_per_ip {
        let tokens = refill(e.tokens, e.refilled, now, r);
        if tokens < 1.0 {
            // Refused attempts do not spend tokens, but the refill clock moves on.
            e.tokens = tokens;
            e.refilled = now;
            return Err(LimitHit::Rate(r));
        }
        e.tokens = tokens - 1.0;
        e.refilled = now;
    }
    e.open += 1;
    e.preauth += 1;
    Ok(())
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_ip: HashMap<IpAddr, PerIp>,
    /// Sweep idle entries when the map reaches this size; doubles with the live size, so
    /// sweeps cost amortised O(1) per connection and the map stays bounded by the addresses
    /// active within one refill period.
    sweep_at: usize,
}

const FIRST_SWEEP: usize = 1024;

/// The address that per-address limits count under: IPv4 as is, IPv6 by its /64. One IPv6
/// host usually holds a whole /64 and can pick any address in it, so counting per /128 would
/// give it 2^64 budgets (and the map as many entries).
fn limit_key(ip: IpAddr) -> IpAddr {
    match super::canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// A listener's connection counts. Shared by its sessions and kept across reloads.
#[derive(Debug, Default)]
pub struct Quota {
    counts: Mutex<Counts>,
}

impl Quota {
    /// Counts a new connection from `ip` (`None` for a Unix-socket client, which only the
    /// listener-wide limit applies to), or says which limit it would break.
    pub fn admit(
        self: &Arc<Self>,
        limits: &ConnectionLimits,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Permit, LimitHit> {
        let ip = ip.map(limit_key);
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let total = c.total;
        let rate = limits.connect_rate_per_ip;
        match ip {
            None => admit_one(limits, total, None, now)?,
            Some(ip) => {
                if c.per_ip.len() >= c.sweep_at.max(FIRST_SWEEP) {
                    c.per_ip.retain(|_, e| !e.idle(now, rate));
                    c.sweep_at = (c.per_ip.len() * 2).max(FIRST_SWEEP);
                }
                let e = c.per_ip.entry(ip).or_insert_with(|| PerIp::new(now, rate));
                admit_one(limits, total, Some(e), now)?;
            }
        }
        c.total += 1;
        Ok(Permit { quota: self.clone(), ip, preauth: ip.is_some(), rate })
    }

    /// Open connections on the listener.
    pub fn open(&self) -> u32 {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }

    fn release(&self, ip: Option<IpAddr>, preauth: bool, close: bool, rate: Option<ConnectRate>) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if close {
            c.total = c.total.saturating_sub(1);
        }
        let Some(ip) = ip else { return };
        let now = Instant::now();
        if let Some(e) = c.per_ip.get_mut(&ip) {
            if preauth {
                e.preauth = e.preauth.saturating_sub(1);
            }
            if close {
                e.open = e.open.saturating_sub(1);
            }
            if close && e.idle(now, rate) {
                c.per_ip.remove(&ip);
            }
        }
    }
}

/// One counted connection. Dropping it uncounts it.
#[derive(Debug)]
pub struct Permit {
    quota: Arc<Quota>,
    ip: Option<IpAddr>,
    preauth: bool,
    rate: Option<ConnectRate>,
}

impl Permit {
    /// The client has logged in: it no longer counts against `max_preauth_per_ip`.
    pub fn logged_in(&mut self) {
        if std::mem::take(&mut self.preauth) {
            self.quota.release(self.ip, true, false, self.rate);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.quota.release(self.ip, self.preauth, true, self.rate);
    }
}

/// How long the rate bucket of `r` takes to refill one token; for messages.
pub fn token_interval(r: ConnectRate) -> Duration {
    r.per / r.count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 3,
            max_connections_per_ip: Some(2),
            max_preauth_per_ip: 2,
            connect_rate_per_ip: None,
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn each_limit_trips_and_frees() {
        let q = Arc::new(Quota::default());
        let now = Instant::now();
        let l = ConnectionLimits { max_connections_per_ip: None, ..limits() };
        let a = q.admit(&l, ip(1), now).unwrap_or_else(|e| panic!("{e}"));
        let mut b = q.admit(&l, ip(1), now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.admit(&l, ip(1), now).err(), Some(LimitHit::PreauthPerIp(2)));
        b.logged_in();
        let c = q.admit(&l, ip(1), now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.admit(&l, ip(2), now).err(), Some(LimitHit::Listener(3)));
        assert_eq!(q.open(), 3);
        drop((a, b, c));
        assert_eq!(q.open(), 0);
        assert!(q.admit(&l, ip(2), now).is_ok());
    }

    #[test]
    fn per_ip_counts_logged_in_connections_too() {
        let q = Arc::new(Quota::default());
        let now = Instant::now();
        let l = ConnectionLimits { max_connections: 100, ..limits() };
        let mut a = q.admit(&l, ip(1), now).unwrap_or_else(|e| panic!("{e}"));
        a.logged_in();
        let mut b = q.admit(&l, ip(1), now).unwrap_or_else(|e| panic!("{e}"));
        b.logged_in();
        assert_eq!(q.admit(&l, ip(1), now).err(), Some(LimitHit::PerIp(2)));
        assert!(q.admit(&l, ip(2), now).is_ok(), "another address is not affected");
        // Unix-socket clients have no address: only the listener-wide limit applies.
        assert!(q.admit(&l, None, now).is_ok());
    }

    #[test]
    fn rate_is_a_token_bucket() {
        let q = Arc::new(Quota::default());
        let t0 = Instant::now();
        let rate = ConnectRate { count: 2, per: Duration::from_secs(1) };
        let l = ConnectionLimits {
            max_connections: 100,
            max_connections_per_ip: None,
            max_preauth_per_ip: 100,
            connect_rate_per_ip: Some(rate),
        };
        let held: Vec<_> = (0..2).map(|_| q.admit(&l, ip(1), t0).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(q.admit(&l, ip(1), t0).err(), Some(LimitHit::Rate(rate)));
        // Closing does not give tokens back: the rate counts new connections.
        drop(held);
        assert_eq!(q.admit(&l, ip(1), t0 + Duration::from_millis(100)).err(), Some(LimitHit::Rate(rate)));
        // Half a second earns one token.
        let p = q.admit(&l, ip(1), t0 + Duration::from_millis(600));
        assert!(p.is_ok());
        assert_eq!(q.admit(&l, ip(1), t0 + Duration::from_millis(650)).err(), Some(LimitHit::Rate(rate)));
        assert_eq!(token_interval(rate), Duration::from_millis(500));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let q = Arc::new(Quota::default());
        let now = Instant::now();
        let l = ConnectionLimits { max_connections: 100, max_connections_per_ip: Some(1), ..limits() };
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}")));
        let _held = q.admit(&l, v6("2001:db8:1:2::1"), now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.admit(&l, v6("2001:db8:1:2:ffff::9"), now).err(), Some(LimitHit::PerIp(1)));
        assert!(q.admit(&l, v6("2001:db8:1:3::1"), now).is_ok(), "another /64");
        // A mapped IPv4 address counts as that IPv4 address.
        let _v4 = q.admit(&l, ip(1), now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.admit(&l, v6("::ffff:192.0.2.1"), now).err(), Some(LimitHit::PerIp(1)));
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let q = Arc::new(Quota::default());
        let now = Instant::now();
        let l = ConnectionLimits { max_connections: 100_000, ..limits() };
        for i in 0..5000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            drop(q.admit(&l, Some(addr), now).unwrap_or_else(|e| panic!("{e}")));
        }
        let c = q.counts.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(c.per_ip.is_empty(), "{} entries kept", c.per_ip.len());
        assert_eq!(c.total, 0);
    }
}
