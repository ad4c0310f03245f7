//! The policy core with time passed in, then the refresher against a tiny DNS server on
//! loopback whose answers the tests change as they go.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::*;

const S: fn(u64) -> Duration = Duration::from_secs;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn set(ips: &[IpAddr]) -> AddressSet {
    ips.iter().copied().collect()
}

fn answer(ips: &[IpAddr], ttl: Duration) -> Outcome {
    Outcome::Answer { addresses: set(ips), ttl }
}

fn failed(e: &str) -> Outcome {
    Outcome::Failed(e.to_owned())
}

fn host(s: &str) -> Hostname {
    Hostname::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

// ---- the pure core ----

#[test]
fn answers_are_used_for_their_ttl_clamped_to_the_bounds() {
    let b = DnsBounds::default();
    let t0 = Instant::now();
    let a = [v4(10, 0, 0, 1)];
    for (ttl, used) in [(S(0), S(5)), (S(1), S(5)), (S(60), S(60)), (S(86_400), S(3600))] {
        let step = Known::default().next(answer(&a, ttl), t0, &b);
        assert_eq!(step.refresh_at, t0 + used, "ttl {ttl:?}");
        assert_eq!(step.known.stale_until, Some(t0 + used + S(300)), "ttl {ttl:?}");
        assert_eq!(*step.known.addresses, set(&a));
        assert_eq!(
            step.log,
            Some(Change::Resolved { addresses: Arc::new(set(&a)), valid_for: used, recovered: false })
        );
    }
}

#[test]
fn only_a_changed_answer_is_logged_and_published() {
    let b = DnsBounds::default();
    let t0 = Instant::now();
    let first = Known::default().next(answer(&[v4(10, 0, 0, 1)], S(60)), t0, &b).known;

    let same = first.next(answer(&[v4(10, 0, 0, 1)], S(60)), t0 + S(60), &b);
    assert_eq!(same.log, None);
    assert!(Arc::ptr_eq(&same.known.addresses, &first.addresses), "unchanged: nothing to publish");

    let moved = first.next(answer(&[v4(10, 0, 0, 2)], S(30)), t0 + S(60), &b);
    assert_eq!(
        moved.log,
        Some(Change::Resolved { addresses: Arc::new(set(&[v4(10, 0, 0, 2)])), valid_for: S(30), recovered: false })
    );
    assert_eq!(moved.refresh_at, t0 + S(90));
}

#[test]
fn addresses_are_canonical_sorted_and_unique() {
    let s = set(&[v6("2001:db8::1"), v6("::ffff:10.0.0.1"), v4(10, 0, 0, 1), v4(10, 0, 0, 0)]);
    assert_eq!(s.as_slice(), [v4(10, 0, 0, 0), v4(10, 0, 0, 1), v6("2001:db8::1")]);
    assert!(s.contains(v4(10, 0, 0, 1)));
    assert!(s.contains(v6("::ffff:10.0.0.1")), "a dual-stack listener sees IPv4 clients as mapped");
    assert!(!s.contains(v4(10, 0, 0, 2)));
    assert!(!s.contains(v6("2001:db8::2")));
    assert_eq!(s.to_string(), "10.0.0.0,10.0.0.1,2001:db8::1");
    assert_eq!(AddressSet::default().to_string(), "none");
}

#[test]
fn failures_keep_the_last_addresses_until_keep_stale_then_drop_them() {
    let b = DnsBounds::default();
    let t0 = Instant::now();
    let a = [v4(10, 0, 0, 1)];
    // Valid until t0+60; kept while failing until t0+360.
    let mut known = Known::default().next(answer(&a, S(60)), t0, &b).known;

    let mut now = t0 + S(60);
    let step = known.next(failed("timed out"), now, &b);
    assert_eq!(step.log, Some(Change::Failed { error: "timed out".into(), stale_for: Some(S(300)) }));
    assert_eq!(*step.known.addresses, set(&a));
    assert_eq!(step.refresh_at, now + S(5));
    known = step.known;

    // The same error again is quiet; the retry interval doubles up to a minute.
    for wait in [10, 20, 40, 60, 60] {
        now += known.failing.as_ref().map_or(S(0), |f| f.retry);
        let step = known.next(failed("timed out"), now, &b);
        assert_eq!(step.log, None);
        assert_eq!(step.known.failing.as_ref().map(|f| f.retry), Some(S(wait)));
        assert_eq!(step.refresh_at, now + S(wait));
        assert_eq!(*step.known.addresses, set(&a));
        known = step.known;
    }
    // now = t0+60+5+10+20+40+60 = t0+195: a different error is logged, with the time left.
    assert_eq!(now, t0 + S(195));
    let step = known.next(failed("SERVFAIL"), now, &b);
    assert_eq!(step.log, Some(Change::Failed { error: "SERVFAIL".into(), stale_for: Some(S(165)) }));
    known = step.known;

    // Retries never land after the stale deadline.
    now = t0 + S(330);
    let step = known.next(failed("SERVFAIL"), now, &b);
    assert_eq!(step.refresh_at, t0 + S(360), "60 s retry cut short at the deadline");
    assert_eq!(*step.known.addresses, set(&a));
    known = step.known;

    // The first failure at or past the deadline drops the addresses: fail closed.
    now = t0 + S(360);
    let step = known.next(failed("SERVFAIL"), now, &b);
    assert_eq!(step.log, Some(Change::Dropped { error: "SERVFAIL".into() }));
    assert!(step.known.addresses.is_empty());
    assert_eq!(step.known.stale_until, None);
    assert_eq!(step.refresh_at, now + S(60));
    known = step.known;

    // Nothing left to drop: further failures are quiet.
    let step = known.next(failed("SERVFAIL"), now + S(60), &b);
    assert_eq!(step.log, None);
    assert_eq!(step.refresh_at, now + S(120));
}

#[test]
fn a_name_that_never_resolved_backs_off_and_logs_once() {
    let b = DnsBounds::default();
    let mut now = Instant::now();
    let mut known = Known::default();
    let mut logs = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..7 {
        let step = known.next(failed("connection refused"), now, &b);
        logs.extend(step.log);
        waits.push(step.refresh_at - now);
        assert!(step.known.addresses.is_empty());
        assert!(!step.known.answered);
        now = step.refresh_at;
        known = step.known;
    }
    assert_eq!(logs, [Change::Failed { error: "connection refused".into(), stale_for: None }]);
    assert_eq!(waits, [S(5), S(10), S(20), S(40), S(60), S(60), S(60)]);
}

#[test]
fn success_after_failures_is_logged_and_resets_the_backoff() {
    let b = DnsBounds::default();
    let t0 = Instant::now();
    let a = [v4(10, 0, 0, 1)];
    let known = Known::default().next(answer(&a, S(60)), t0, &b).known;
    let known = known.next(failed("timed out"), t0 + S(60), &b).known;
    let known = known.next(failed("timed out"), t0 + S(65), &b).known;

    let step = known.next(answer(&a, S(60)), t0 + S(75), &b);
    assert_eq!(step.log, Some(Change::Resolved { addresses: Arc::new(set(&a)), valid_for: S(60), recovered: true }));
    assert_eq!(step.known.failing, None);
    assert_eq!(step.known.stale_until, Some(t0 + S(75 + 60 + 300)));

    let again = step.known.next(failed("timed out"), t0 + S(135), &b);
    assert_eq!(again.refresh_at, t0 + S(140), "backoff starts over at retry_first");
}

#[test]
fn no_records_drops_the_addresses_at_once_and_waits_the_negative_ttl() {
    let b = DnsBounds::default();
    let t0 = Instant::now();
    let known = Known::default().next(answer(&[v4(10, 0, 0, 1)], S(60)), t0, &b).known;
    for (negative_ttl, wait) in [(Some(S(30)), S(30)), (Some(S(0)), S(5)), (None, S(5)), (Some(S(86_400)), S(3600))] {
        let step = known.next(Outcome::NoRecords { negative_ttl }, t0 + S(10), &b);
        assert!(step.known.addresses.is_empty(), "authoritative, not a failure: no keep_stale");
        assert_eq!(step.known.stale_until, None);
        assert_eq!(step.refresh_at, t0 + S(10) + wait, "{negative_ttl:?}");
        assert_eq!(
            step.log,
            Some(Change::Resolved { addresses: Arc::new(AddressSet::default()), valid_for: wait, recovered: false })
        );
        let quiet = step.known.next(Outcome::NoRecords { negative_ttl }, step.refresh_at, &b);
        assert_eq!(quiet.log, None, "still none: nothing to say");
    }
}

#[test]
fn the_first_answer_is_logged_even_when_empty() {
    let step = Known::default().next(Outcome::NoRecords { negative_ttl: None }, Instant::now(), &DnsBounds::default());
    assert!(matches!(step.log, Some(Change::Resolved { .. })));
}

#[test]
fn the_stale_deadline_also_applies_while_a_lookup_is_in_flight() {
    let b = DnsBounds::default();
    let t0 = Instant::now();
    let ok = Known::default().next(answer(&[v4(10, 0, 0, 1)], S(60)), t0, &b).known;
    assert_eq!(ok.drop_deadline(), None, "a slow refresh of a good answer must not flap the set");
    assert_eq!(ok.expire(t0 + S(1000)), None);

    let failing = ok.next(failed("timed out"), t0 + S(60), &b).known;
    assert_eq!(failing.drop_deadline(), Some(t0 + S(360)));
    assert_eq!(failing.expire(t0 + S(359)), None);
    let (dropped, change) = failing.expire(t0 + S(360)).unwrap_or_else(|| panic!("deadline passed"));
    assert!(dropped.addresses.is_empty());
    assert_eq!(dropped.drop_deadline(), None);
    assert_eq!(change, Change::Dropped { error: "timed out".into() });
    assert_eq!(dropped.failing, failing.failing, "the backoff goes on where it was");
}

#[test]
fn bounds_cannot_stall_or_spin_a_refresher() {
    let zero = DnsBounds { min_ttl: S(0), max_ttl: S(0), keep_stale: S(0), retry_first: S(0), retry_max: S(0) };
    let e = zero.effective();
    assert_eq!((e.min_ttl, e.max_ttl, e.keep_stale, e.retry_first, e.retry_max), (S(1), S(1), S(0), S(1), S(1)));

    let inverted =
        DnsBounds { min_ttl: S(60), max_ttl: S(10), retry_first: S(30), retry_max: S(5), ..Default::default() };
    let e = inverted.effective();
    assert_eq!((e.min_ttl, e.max_ttl, e.retry_first, e.retry_max), (S(60), S(60), S(30), S(30)));

    let huge = DnsBounds {
        min_ttl: Duration::MAX,
        max_ttl: Duration::MAX,
        keep_stale: Duration::MAX,
        retry_first: Duration::MAX,
        retry_max: Duration::MAX,
    };
    let t0 = Instant::now();
    let step = Known::default().next(answer(&[v4(10, 0, 0, 1)], Duration::MAX), t0, &huge);
    assert_eq!(step.refresh_at, t0 + MAX_BOUND);
    let step = step.known.next(failed("x"), step.refresh_at, &huge);
    assert_eq!(step.refresh_at - t0, MAX_BOUND * 2);
}

#[test]
fn hostnames_are_normalised_and_strict() {
    assert_eq!(host("App.Example.COM.").as_str(), "app.example.com");
    assert_eq!(host("app.example.com"), host("APP.example.com."));
    for ok in ["localhost", "_svc._tcp.example.com", "xn--bcher-kva.de", "1password.com", "a.b-c.d", "db1"] {
        assert!(Hostname::parse(ok).is_ok(), "{ok}");
    }
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
    assert_eq!(long_name.len(), 253);
    assert!(Hostname::parse(&long_name).is_ok());
    let too_long = format!("{long_name}e");
    for bad in [
        "",
        ".",
        "a..b",
        ".a",
        "-a.com",
        "a-.com",
        "10.0.0.1",
        "10.0.0.300",
        "::1",
        "*.corp",
        "a b",
        "bücher.de",
        "host:3306",
        &long_label,
        &too_long,
    ] {
        let e = Hostname::parse(bad).err().unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(e.to_string().starts_with(&format!("invalid hostname {bad:?}: ")), "{e}");
    }
}

// ---- the refresher, against a DNS server on loopback ----

/// What the fake server answers to every A and AAAA query.
#[derive(Debug, Clone)]
enum Reply {
    Addresses(Vec<IpAddr>),
    ServFail,
    NxDomain,
}

struct FakeDns {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    servfails: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeDns {
    async fn start(reply: Reply, ttl: u32) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let reply = Arc::new(Mutex::new(reply));
        let servfails = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(sock, Arc::clone(&reply), Arc::clone(&servfails), ttl));
        Self { addr, reply, servfails, task }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap_or_else(PoisonError::into_inner) = reply;
    }

    fn servfails(&self) -> u64 {
        self.servfails.load(Ordering::SeqCst)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(sock: UdpSocket, reply: Arc<Mutex<Reply>>, servfails: Arc<AtomicU64>, ttl: u32) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
        let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
        let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
        resp.metadata.recursion_desired = query.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(query.queries.iter().cloned());
        let current = reply.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match current {
            Reply::Addresses(ips) => {
                for q in &query.queries {
                    for ip in &ips {
                        let data = match (ip, q.query_type()) {
                            (IpAddr::V4(a), RecordType::A) => RData::A(A(*a)),
                            (IpAddr::V6(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
                            _ => continue,
                        };
                        resp.add_answer(Record::from_rdata(q.name().clone(), ttl, data));
                    }
                }
            }
            Reply::ServFail => {
                servfails.fetch_add(1, Ordering::SeqCst);
                resp.metadata.response_code = ResponseCode::ServFail;
            }
            Reply::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
        }
        let Ok(bytes) = resp.to_vec() else { continue };
        drop(sock.send_to(&bytes, from).await);
    }
}

/// Every wait in these tests is bounded, on real time; none asserts how long something took.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Small enough that a test sees several refreshes in a few seconds.
fn fast() -> DnsBounds {
    DnsBounds { min_ttl: S(1), max_ttl: S(1), keep_stale: S(4), retry_first: S(1), retry_max: S(1) }
}

fn spawn_refresher(r: Option<impl Future<Output = ()> + Send + 'static>) -> JoinHandle<()> {
    tokio::spawn(r.unwrap_or_else(|| panic!("a new name comes with its refresher")))
}

#[tokio::test]
async fn an_entry_follows_the_answers_keeps_them_through_failures_then_fails_closed() {
    let (a1, a2, six) = (v4(192, 0, 2, 1), v4(192, 0, 2, 2), v6("2001:db8::1"));
    let dns = FakeDns::start(Reply::Addresses(vec![a1, six]), 1).await;
    let hosts = HostResolver::with_nameservers(&[dns.addr], fast()).unwrap_or_else(|e| panic!("{e}"));
    let (entry, refresher) = hosts.entry(&host("App.Flexgate.TEST."));
    let refresher = spawn_refresher(refresher);

    within("the first lookup", entry.resolved()).await;
    assert_eq!(entry.name(), "app.flexgate.test");
    assert_eq!(entry.addresses().as_slice(), [a1, six], "both A and AAAA");
    assert!(entry.contains(v6("::ffff:192.0.2.1")));
    assert!(!entry.contains(a2));

    let (same, none) = hosts.entry(&host("app.flexgate.test"));
    assert!(Arc::ptr_eq(&entry, &same), "one entry per name");
    assert!(none.is_none(), "and one refresher");

    dns.set(Reply::Addresses(vec![a2]));
    eventually("the entry follows the new answer", || entry.addresses().as_slice() == [a2]).await;

    dns.set(Reply::ServFail);
    eventually("a lookup hits SERVFAIL", || dns.servfails() > 0).await;
    // Two lookups finishing after that: the second was sent entirely after the switch.
    let seen = within("a lookup", entry.lookups_after(entry.lookups())).await;
    within("another lookup", entry.lookups_after(seen)).await;
    assert!(entry.contains(a2), "the last good addresses are kept while keep_stale lasts");
    eventually("keep_stale runs out", || entry.addresses().is_empty()).await;

    dns.set(Reply::Addresses(vec![a1]));
    eventually("the name resolves again", || entry.contains(a1)).await;

    dns.set(Reply::NxDomain);
    eventually("NXDOMAIN removes the addresses", || entry.addresses().is_empty()).await;

    within("a late resolved()", entry.resolved()).await;
    drop((entry, same));
    within("the refresher to end", refresher).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn dropping_the_last_entry_ends_its_refresher_mid_sleep() {
    let dns = FakeDns::start(Reply::Addresses(vec![v4(192, 0, 2, 1)]), 300).await;
    let hosts = HostResolver::with_nameservers(&[dns.addr], DnsBounds::default()).unwrap_or_else(|e| panic!("{e}"));
    let name = host("db.flexgate.test");
    let (entry, refresher) = hosts.entry(&name);
    let refresher = spawn_refresher(refresher);
    within("the first lookup", entry.resolved()).await;
    assert!(entry.contains(v4(192, 0, 2, 1)));

    drop(entry); // the refresher is now sleeping out a 300 s TTL
    within("the refresher to end", refresher).await.unwrap_or_else(|e| panic!("{e}"));

    let (again, refresher) = hosts.entry(&name);
    assert!(refresher.is_some(), "a name asked for again after its entry died gets a new refresher");
    assert!(again.addresses().is_empty());
}

#[tokio::test]
async fn resolved_returns_when_the_refresher_is_dropped_unspawned() {
    let hosts = HostResolver::with_nameservers(&[SocketAddr::from(([127, 0, 0, 1], 9))], DnsBounds::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (entry, refresher) = hosts.entry(&host("nowhere.flexgate.test"));
    drop(refresher);
    within("resolved()", entry.resolved()).await;
    assert!(entry.addresses().is_empty());
}

#[tokio::test]
async fn the_system_resolver_knows_localhost() {
    let hosts = HostResolver::system(DnsBounds::default()).unwrap_or_else(|e| panic!("{e}"));
    let (entry, refresher) = hosts.entry(&host("localhost"));
    let _refresher = spawn_refresher(refresher);
    within("the first lookup", entry.resolved()).await;
    assert!(entry.contains(v4(127, 0, 0, 1)), "{entry:?}");
}

/// The first name with an IPv4 address in `/etc/hosts` other than `localhost`, if any.
fn name_from_hosts_file() -> Option<(Hostname, IpAddr)> {
    let text = std::fs::read_to_string("/etc/hosts").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split('#').next()?.split_whitespace();
        let ip: Ipv4Addr = words.next()?.parse().ok()?;
        let name = words.filter(|w| !w.eq_ignore_ascii_case("localhost")).find_map(|w| Hostname::parse(w).ok())?;
        Some((name, IpAddr::V4(ip)))
    })
}

#[tokio::test]
async fn names_in_the_hosts_file_resolve_without_dns() {
    let Some((name, ip)) = name_from_hosts_file() else {
        eprintln!("skipped: /etc/hosts names nothing but localhost");
        return;
    };
    // The nameserver denies everything: the address can only come from the hosts file.
    let dns = FakeDns::start(Reply::NxDomain, 60).await;
    let hosts = HostResolver::with_nameservers(&[dns.addr], DnsBounds::default()).unwrap_or_else(|e| panic!("{e}"));
    let (entry, refresher) = hosts.entry(&name);
    let _refresher = spawn_refresher(refresher);
    within("the first lookup", entry.resolved()).await;
    assert!(entry.contains(ip), "{name} -> {ip}: {entry:?}");
}
