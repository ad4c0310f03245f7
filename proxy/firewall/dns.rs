//! Hostnames in allow and deny lists, resolved in the background so the accept path never waits
//! on DNS.
//!
//! A rule naming `app.example.com` holds a shared [`HostEntry`]; checking a client costs one
//! lock-free load and a binary search over a handful of addresses. One refresher per name (a
//! future the server spawns) keeps the entry current: it looks the name up again when the answer's
//! TTL runs out, clamped to [`DnsBounds`], so a short TTL cannot make us hammer the resolver and a
//! long one cannot pin an address for days.
//!
//! When lookups fail, the last good addresses are kept for [`DnsBounds::keep_stale`] past their
//! TTL, so a resolver hiccup does not lock every client out; after that they are dropped and the
//! name matches nothing (fail closed) until a lookup succeeds. An answer saying the name has no
//! addresses is authoritative and takes effect at once.
//!
//! The decisions live in `Known::next`, a pure function of the previous state, the lookup
//! outcome and the time; the refresher only performs the lookup, sleeps and publishes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::rr::Name;
use hickory_resolver::{Resolver, ResolverBuilder, TokioResolver};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

/// Longest hostname in presentation form, without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Shortest wait between two lookups of one name, whatever the bounds say: a zero in the config
/// must not turn a refresher into a busy loop against the resolver.
const MIN_DELAY: Duration = Duration::from_secs(1);
/// Longest any bound may be. Keeps `Instant + bound` arithmetic far from overflow, and nothing
/// about a firewall rule should be trusted for longer than a week without asking again.
const MAX_BOUND: Duration = Duration::from_secs(7 * 24 * 3600);
/// Per-query timeout handed to hickory for `with_nameservers` (the system config brings its own
/// from `resolv.conf`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries hickory makes after a failed query, for `with_nameservers`.
const QUERY_ATTEMPTS: usize = 2;
/// Outer bound on one lookup (A and AAAA together, all attempts and servers). Only a guard
/// against a lookup that never returns: hickory's own timeouts normally end it much earlier, and
/// cutting it short would lose a partial answer (an A record served from the hosts file while the
/// AAAA query is still timing out against a dead server).
const LOOKUP_BUDGET: Duration = Duration::from_secs(30);
/// The tracing target of every line this module logs, so operators can filter firewall changes.
const LOG_TARGET: &str = "flexgate::firewall";

/// Why hostname resolution could not be set up, or why a name cannot be used.
#[derive(Debug, Error)]
pub enum DnsError {
    /// `/etc/resolv.conf` (or the platform's equivalent) could not be read or parsed.
    #[error("cannot read system resolver config: {0}")]
    SystemConfig(#[source] NetError),
    /// `[dns] nameservers` was given but empty: there would be nobody to ask.
    #[error("no nameservers configured")]
    NoNameservers,
    /// hickory refused the resolver configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Build(#[source] NetError),
    /// The text is not a hostname we are willing to look up.
    #[error("invalid hostname {name:?}: {reason}")]
    InvalidHostname {
        /// The text as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Bounds on how long answers are trusted.
///
/// Fields are public so the config and tests can pick their own; out-of-range values are pulled
/// back in (every wait at least 1 s, every bound at most a week, `max_ttl >= min_ttl`,
/// `retry_max >= retry_first`) rather than rejected, so no combination can stall or spin a
/// refresher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsBounds {
    /// Shortest time an answer is used before asking again, whatever its TTL. Default 5 s.
    pub min_ttl: Duration,
    /// Longest time an answer is used before asking again, whatever its TTL. Default 1 h.
    pub max_ttl: Duration,
    /// How long the last good addresses survive failing lookups after their TTL ran out, before
    /// they are dropped and the name matches nothing (fail closed). Default 5 min.
    pub keep_stale: Duration,
    /// Wait before the first retry after a failed lookup; each further failure doubles it.
    /// Default 5 s.
    pub retry_first: Duration,
    /// Longest wait between retries. Default 60 s.
    pub retry_max: Duration,
}

impl Default for DnsBounds {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            keep_stale: Duration::from_secs(300),
            retry_first: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl DnsBounds {
    /// The bounds actually applied: see the type's documentation.
    fn effective(&self) -> Self {
        let wait = |d: Duration| d.clamp(MIN_DELAY, MAX_BOUND);
        let min_ttl = wait(self.min_ttl);
        let retry_first = wait(self.retry_first);
        Self {
            min_ttl,
            max_ttl: wait(self.max_ttl).max(min_ttl),
            keep_stale: self.keep_stale.min(MAX_BOUND),
            retry_first,
            retry_max: wait(self.retry_max).max(retry_first),
        }
    }

    /// How long an answer with this TTL is used.
    fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl)
    }
}

/// A hostname as written in an allow or deny list, normalised so that `App.Example.com.` and
/// `app.example.com` are one entry with one refresher.
///
/// Parsing is strict on purpose: a typo'd IP address (`10.0.0.300`) or a pattern (`*.corp`) must
/// be a config error, not a silent DNS lookup. The name is always looked up as absolute (no
/// `search` domains from `resolv.conf`), so an allow-list means the same hosts on every machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(Arc<str>);

impl Hostname {
    /// Lower-cases `text` and drops one trailing dot. Accepts ASCII letters, digits, `-` and `_`
    /// in labels of 1 to 63 characters, 253 in all; internationalised names must be given in
    /// their `xn--` form. The last label may not be all digits, which rules out IPv4 literals.
    pub fn parse(text: &str) -> Result<Self, DnsError> {
        let invalid = |reason| DnsError::InvalidHostname { name: text.to_owned(), reason };
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("longer than 253 characters"));
        }
        if !name.is_ascii() {
            return Err(invalid("not ASCII: write internationalised names in their xn-- form"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(invalid("empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(invalid("label longer than 63 characters"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(invalid("only letters, digits, '-' and '_' are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a label cannot start or end with '-'"));
            }
        }
        if name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
            return Err(invalid("looks like an IP address, not a hostname"));
        }
        Ok(Self(name.to_ascii_lowercase().into()))
    }

    /// The normalised name: lower case, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The absolute DNS name to query. `parse` already checked the syntax, so hickory refusing
    /// it is not expected; the caller still treats that as a failed lookup rather than panicking.
    fn fqdn(&self) -> Result<Name, String> {
        Name::from_ascii(format!("{}.", self.0)).map_err(|e| format!("not a DNS name: {e}"))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Hostname {
    type Err = DnsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The addresses one hostname resolved to: sorted, without duplicates, IPv4-mapped IPv6
/// addresses stored as IPv4, so a client reaching a dual-stack listener as `::ffff:10.0.0.5`
/// matches an A record for `10.0.0.5`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet(Box<[IpAddr]>);

impl AddressSet {
    /// Whether `ip` (canonicalised the same way) is one of the addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.binary_search(&ip.to_canonical()).is_ok()
    }

    /// The addresses, sorted.
    pub fn as_slice(&self) -> &[IpAddr] {
        &self.0
    }

    /// True when the name currently matches no client at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<IpAddr> for AddressSet {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        let mut v: Vec<IpAddr> = iter.into_iter().map(|ip| ip.to_canonical()).collect();
        v.sort_unstable();
        v.dedup();
        Self(v.into_boxed_slice())
    }
}

/// Comma-separated, for log lines; `none` when empty so the field is never blank.
impl fmt::Display for AddressSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, ip) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{ip}")?;
        }
        Ok(())
    }
}

/// One hostname's current addresses, shared by every listener rule naming it.
///
/// Reads are lock-free (one `ArcSwap` load), so the accept path can check a client against it
/// at no cost beyond a binary search. Dropping the last `Arc` stops the name's refresher.
pub struct HostEntry {
    name: Hostname,
    addresses: ArcSwap<AddressSet>,
    /// Lookups finished so far, and whether the refresher has ended: what `resolved` waits on.
    progress: watch::Sender<Progress>,
    /// Cancels the refresher when the entry goes away, instead of letting it sleep out a TTL
    /// of up to `max_ttl` holding a resolver.
    _stop: DropGuard,
}

/// What `HostEntry::resolved` waits for.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    lookups: u64,
    refresher_ended: bool,
}

impl HostEntry {
    /// The normalised hostname.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Whether `ip` is currently one of the name's addresses. Never does DNS.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addresses.load().contains(ip)
    }

    /// A snapshot of the current addresses, for diagnostics.
    pub fn addresses(&self) -> Arc<AddressSet> {
        self.addresses.load_full()
    }

    /// Returns once the first lookup attempt has finished, whether it found addresses or not, so
    /// that listeners do not open with every hostname still empty. Also returns if the refresher
    /// ended (or was dropped unspawned) before finishing one, rather than hanging. A late caller
    /// returns at once. Callers bound the wait with their own timeout.
    pub async fn resolved(&self) {
        let mut rx = self.progress.subscribe();
        // The sender lives in `self`, so waiting can only end by the condition holding.
        drop(rx.wait_for(|p| p.lookups > 0 || p.refresher_ended).await);
    }

    /// Lookups finished so far.
    #[cfg(test)]
    fn lookups(&self) -> u64 {
        self.progress.borrow().lookups
    }

    /// Waits until more than `seen` lookups have finished and returns the new count. For tests
    /// that must know a lookup happened before asserting on its effect.
    #[cfg(test)]
    async fn lookups_after(&self, seen: u64) -> u64 {
        let mut rx = self.progress.subscribe();
        let n = rx.wait_for(|p| p.lookups > seen || p.refresher_ended).await.map(|p| p.lookups);
        n.unwrap_or(seen)
    }
}

impl fmt::Debug for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostEntry")
            .field("name", &self.name.as_str())
            .field("addresses", &format_args!("{}", self.addresses.load()))
            .finish_non_exhaustive()
    }
}

/// Owns the resolver and the entries by name. Lives for the whole process, across config
/// reloads: a name kept by a reload gets the same entry back, with its addresses and its single
/// refresher, instead of starting empty.
pub struct HostResolver {
    resolver: TokioResolver,
    bounds: DnsBounds,
    /// Weak, so that an entry (and its refresher) goes away with the last rule naming it; dead
    /// slots are pruned whenever an entry is asked for.
    entries: Mutex<HashMap<Hostname, Weak<HostEntry>>>,
}

impl HostResolver {
    /// Resolves with the system's configuration: nameservers and options from
    /// `/etc/resolv.conf`, names from `/etc/hosts` first. The hosts file is read once, here.
    pub fn system(bounds: DnsBounds) -> Result<Self, DnsError> {
        let builder = TokioResolver::builder_tokio().map_err(DnsError::SystemConfig)?;
        Self::build(builder, bounds, None)
    }

    /// Resolves by asking exactly `servers` (UDP, falling back to TCP for truncated answers),
    /// for a `[dns] nameservers` setting and for tests. `/etc/hosts` is still consulted first,
    /// so `localhost` and container names behave as with [`HostResolver::system`].
    pub fn with_nameservers(servers: &[SocketAddr], bounds: DnsBounds) -> Result<Self, DnsError> {
        if servers.is_empty() {
            return Err(DnsError::NoNameservers);
        }
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self::build(builder, bounds, Some((QUERY_TIMEOUT, QUERY_ATTEMPTS)))
    }

    fn build(
        mut builder: ResolverBuilder<TokioRuntimeProvider>,
        bounds: DnsBounds,
        timeout: Option<(Duration, usize)>,
    ) -> Result<Self, DnsError> {
        let bounds = bounds.effective();
        let opts = builder.options_mut();
        // hickory's cache must never hand back an answer we would already have refreshed: our
        // refresh time is the TTL clamped the same way, and errors are not cached.
        opts.positive_min_ttl = Some(bounds.min_ttl);
        opts.positive_max_ttl = Some(bounds.max_ttl);
        opts.negative_max_ttl = Some(bounds.max_ttl);
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Always;
        if let Some((t, attempts)) = timeout {
            opts.timeout = t;
            opts.attempts = attempts;
        }
        let resolver = builder.build().map_err(DnsError::Build)?;
        Ok(Self { resolver, bounds, entries: Mutex::new(HashMap::new()) })
    }

    /// The shared entry for `name`. If no live entry existed, also returns its refresher, which
    /// the caller spawns (only the server module spawns long-lived tasks). The refresher looks
    /// the name up at once, holds only a `Weak` to the entry, and ends as soon as the last `Arc`
    /// of the entry is dropped (say, after a reload removed the name and the last session using
    /// the old rules ended).
    #[must_use = "spawn the refresher, or the entry never gets any address"]
    pub fn entry(&self, name: &Hostname) -> (Arc<HostEntry>, Option<impl Future<Output = ()> + Send + 'static>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = entries.get(name).and_then(Weak::upgrade) {
            return (live, None);
        }
        entries.retain(|_, e| e.strong_count() > 0);
        let stop = CancellationToken::new();
        let entry = Arc::new(HostEntry {
            name: name.clone(),
            addresses: ArcSwap::default(),
            progress: watch::Sender::new(Progress::default()),
            _stop: stop.clone().drop_guard(),
        });
        entries.insert(name.clone(), Arc::downgrade(&entry));
        let refresher = refresh(Arc::downgrade(&entry), name.clone(), self.resolver.clone(), stop, self.bounds);
        (entry, Some(refresher))
    }
}

impl fmt::Debug for HostResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.entries.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("HostResolver").field("bounds", &self.bounds).field("names", &names).finish_non_exhaustive()
    }
}

/// What one lookup of a name said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The name has these addresses (possibly none), valid for `ttl`.
    Answer { addresses: AddressSet, ttl: Duration },
    /// The resolver answered that the name has no A/AAAA records, or does not exist. Authoritative:
    /// the addresses go at once. `negative_ttl` comes from the SOA, when the answer had one.
    NoRecords { negative_ttl: Option<Duration> },
    /// No usable answer (timeout, SERVFAIL, network): says nothing about the name.
    Failed(String),
}

/// Everything the refresher knows about one name between lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Known {
    addresses: Arc<AddressSet>,
    /// When the addresses must go if lookups keep failing: the last answer's TTL plus
    /// `keep_stale`. `Some` exactly when `addresses` is not empty.
    stale_until: Option<Instant>,
    /// At least one lookup produced an answer (as opposed to only failures).
    answered: bool,
    /// The current run of failed lookups, if the last lookup failed.
    failing: Option<Failing>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failing {
    error: String,
    /// The wait before the next retry; doubles with each failure.
    retry: Duration,
}

/// What follows from a lookup outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    known: Known,
    /// When to look the name up again.
    refresh_at: Instant,
    /// What to tell the operator, if anything changed.
    log: Option<Change>,
}

/// A change worth a log line. Repeated identical failures produce none.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// A lookup answered with a different set than before, or it is the first answer, or the
    /// first answer after failures.
    Resolved { addresses: Arc<AddressSet>, valid_for: Duration, recovered: bool },
    /// A lookup failed for the first time, or with a different error than the last one.
    /// `stale_for`: how long the last good addresses are still used (`None`: there are none).
    Failed { error: String, stale_for: Option<Duration> },
    /// Lookups kept failing past `keep_stale`: the name now matches nothing.
    Dropped { error: String },
}

impl Known {
    /// Pure: the state, refresh time and log line that follow `outcome` at `now`.
    fn next(&self, outcome: Outcome, now: Instant, bounds: &DnsBounds) -> Step {
        let bounds = bounds.effective();
        match outcome {
            Outcome::Answer { addresses, ttl } => self.answered(addresses, ttl, now, &bounds),
            // Without an SOA there is no negative TTL; `min_ttl` then means "ask again soon",
            // which suits a name that is missing because its host is not up yet.
            Outcome::NoRecords { negative_ttl } => {
                self.answered(AddressSet::default(), negative_ttl.unwrap_or_default(), now, &bounds)
            }
            Outcome::Failed(error) => self.failed(error, now, &bounds),
        }
    }

    fn answered(&self, addresses: AddressSet, ttl: Duration, now: Instant, bounds: &DnsBounds) -> Step {
        let valid_for = bounds.clamp_ttl(ttl);
        let recovered = self.failing.is_some();
        let changed = *self.addresses != addresses;
        // Keep the same `Arc` when nothing changed, so the refresher publishes nothing.
        let addresses = if changed { Arc::new(addresses) } else { Arc::clone(&self.addresses) };
        let log = (changed || !self.answered || recovered).then(|| Change::Resolved {
            addresses: Arc::clone(&addresses),
            valid_for,
            recovered,
        });
        let stale_until = (!addresses.is_empty()).then(|| now + valid_for + bounds.keep_stale);
        Step {
            known: Known { addresses, stale_until, answered: true, failing: None },
            refresh_at: now + valid_for,
            log,
        }
    }

    fn failed(&self, error: String, now: Instant, bounds: &DnsBounds) -> Step {
        let retry = match &self.failing {
            None => bounds.retry_first,
            Some(f) => f.retry.saturating_mul(2).min(bounds.retry_max),
        };
        let expired = self.stale_until.is_some_and(|t| now >= t);
        let (addresses, stale_until) =
            if expired { (Arc::default(), None) } else { (Arc::clone(&self.addresses), self.stale_until) };
        let repeated = self.failing.as_ref().is_some_and(|f| f.error == error);
        let log = if expired {
            Some(Change::Dropped { error: error.clone() })
        } else if repeated {
            None
        } else {
            Some(Change::Failed {
                error: error.clone(),
                stale_for: stale_until.map(|t| t.saturating_duration_since(now)),
            })
        };
        // Never retry later than the stale deadline: a lookup that succeeds just before it keeps
        // the name working, one that fails just after it drops the addresses on time.
        let refresh_at = stale_until.map_or(now + retry, |t| t.min(now + retry));
        Step {
            known: Known { addresses, stale_until, answered: self.answered, failing: Some(Failing { error, retry }) },
            refresh_at,
            log,
        }
    }

    /// When the addresses must be dropped even if the lookup in flight has not returned yet:
    /// only while failing, so a slow but successful refresh at TTL expiry never flaps the set.
    fn drop_deadline(&self) -> Option<Instant> {
        self.failing.as_ref().and(self.stale_until)
    }

    /// Pure: the state once the stale deadline passed with a lookup still in flight, if that
    /// changes anything.
    fn expire(&self, now: Instant) -> Option<(Known, Change)> {
        let failing = self.failing.as_ref()?;
        let deadline = self.stale_until?;
        (now >= deadline).then(|| {
            let known = Known { addresses: Arc::default(), stale_until: None, ..self.clone() };
            (known, Change::Dropped { error: failing.error.clone() })
        })
    }
}

/// Marks the refresher as ended when it is dropped, however that happens (returned, cancelled,
/// dropped unspawned, runtime shut down), so `HostEntry::resolved` cannot hang on a dead name.
struct RefresherEnded(Weak<HostEntry>);

impl Drop for RefresherEnded {
    fn drop(&mut self) {
        if let Some(entry) = self.0.upgrade() {
            entry.progress.send_modify(|p| p.refresher_ended = true);
        }
    }
}

/// The refresher of one name: look up, publish, sleep until the refresh time, again, until
/// `stop` fires (the entry was dropped). The end marker is made outside the `async` block so
/// that it is dropped, and waiters released, even if the future is never polled.
fn refresh(
    entry: Weak<HostEntry>,
    name: Hostname,
    resolver: TokioResolver,
    stop: CancellationToken,
    bounds: DnsBounds,
) -> impl Future<Output = ()> + Send + 'static {
    let ended = RefresherEnded(entry.clone());
    async move {
        let _ended = ended;
        run(entry, name, resolver, stop, bounds).await;
    }
}

async fn run(
    entry: Weak<HostEntry>,
    name: Hostname,
    resolver: TokioResolver,
    stop: CancellationToken,
    bounds: DnsBounds,
) {
    let fqdn = name.fqdn();
    let mut known = Known::default();
    loop {
        let lookup = lookup(&resolver, &fqdn);
        tokio::pin!(lookup);
        let outcome = loop {
            let deadline = known.drop_deadline();
            tokio::select! {
                () = stop.cancelled() => return,
                outcome = &mut lookup => break outcome,
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if let Some((next, change)) = known.expire(Instant::now()) {
                        if !publish(&entry, &name, &known, &next, Some(&change), false) {
                            return;
                        }
                        known = next;
                    }
                }
            }
        };
        let step = known.next(outcome, Instant::now(), &bounds);
        if !publish(&entry, &name, &known, &step.known, step.log.as_ref(), true) {
            return;
        }
        known = step.known;
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep_until(step.refresh_at) => {}
        }
    }
}

/// Logs `change`, stores the new addresses if they changed, and counts a finished lookup.
/// Returns false when the entry is gone and the refresher should end.
fn publish(
    entry: &Weak<HostEntry>,
    name: &Hostname,
    old: &Known,
    new: &Known,
    change: Option<&Change>,
    lookup_done: bool,
) -> bool {
    let Some(entry) = entry.upgrade() else { return false };
    if let Some(change) = change {
        report(name, change);
    }
    if !Arc::ptr_eq(&old.addresses, &new.addresses) {
        entry.addresses.store(Arc::clone(&new.addresses));
    }
    if lookup_done {
        entry.progress.send_modify(|p| p.lookups += 1);
    }
    true
}

/// One lookup of A and AAAA, reduced to what the policy needs.
async fn lookup(resolver: &TokioResolver, fqdn: &Result<Name, String>) -> Outcome {
    let fqdn = match fqdn {
        Ok(n) => n.clone(),
        Err(e) => return Outcome::Failed(e.clone()),
    };
    match tokio::time::timeout(LOOKUP_BUDGET, resolver.lookup_ip(fqdn)).await {
        Err(_) => Outcome::Failed(format!("no answer within {LOOKUP_BUDGET:?}")),
        Ok(Ok(found)) => Outcome::Answer {
            addresses: found.iter().collect(),
            // hickory reports an absolute deadline on std's clock; only the remaining time
            // crosses over to tokio's.
            ttl: found.valid_until().saturating_duration_since(std::time::Instant::now()),
        },
        Ok(Err(NetError::Dns(HickoryDnsError::NoRecordsFound(none)))) => {
            Outcome::NoRecords { negative_ttl: none.negative_ttl.map(|s| Duration::from_secs(u64::from(s))) }
        }
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
    }
}

fn report(name: &Hostname, change: &Change) {
    match change {
        Change::Resolved { addresses, valid_for, recovered } if addresses.is_empty() => warn!(
            target: LOG_TARGET,
            hostname = %name,
            addresses = %addresses,
            valid_for = ?valid_for,
            recovered,
            "{name} has no addresses; allowing no address for it",
        ),
        Change::Resolved { addresses, valid_for, recovered } => info!(
            target: LOG_TARGET,
            hostname = %name,
            addresses = %addresses,
            valid_for = ?valid_for,
            recovered,
            "{name} resolved",
        ),
        Change::Failed { error, stale_for: Some(stale_for) } => {
            // Whole seconds, rounded up: the sub-second part is only the lookup's own latency.
            let stale_for = Duration::from_secs(stale_for.as_secs() + u64::from(stale_for.subsec_nanos() > 0));
            warn!(
                target: LOG_TARGET,
                hostname = %name,
                error = %error,
                stale_for = ?stale_for,
                "cannot resolve {name}; keeping its last addresses for {stale_for:?}",
            )
        }
        Change::Failed { error, stale_for: None } => warn!(
            target: LOG_TARGET,
            hostname = %name,
            error = %error,
            "cannot resolve {name}; allowing no address for it until it resolves",
        ),
        Change::Dropped { error } => warn!(
            target: LOG_TARGET,
            hostname = %name,
            error = %error,
            "no longer allowing any address for {name}",
        ),
    }
}

#[cfg(test)]
mod tests;
