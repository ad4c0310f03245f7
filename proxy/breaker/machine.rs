//! The breaker's state machine: check results and the time in, the state and its transitions
//! out. No clock, no I/O: every test passes the time it wants.
//!
//! The grace period runs from the first failed check, not from the last good one: flexgate
//! does not know when between two checks the key went away, and a server that refuses work
//! on a guess would be worse than one that keeps the promised window.

use std::time::{Duration, Instant, SystemTime};

/// The key's state, as the reference (Azure Database for MySQL) names the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Every provider reports the key available.
    Available,
    /// Checks fail; flexgate still serves until the grace period runs out.
    Degraded,
    /// New connections are refused.
    Inaccessible,
}

impl State {
    /// Every state, for metrics that give each its own series.
    pub const ALL: [Self; 3] = [Self::Available, Self::Degraded, Self::Inaccessible];

    /// A short stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Degraded => "degraded",
            Self::Inaccessible => "inaccessible",
        }
    }
}

/// The settings the machine needs; they may change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long checks may fail before the state becomes `inaccessible`.
    pub grace: Duration,
    /// Consecutive good checks that end `degraded` or `inaccessible`.
    pub recover_after: u32,
}

/// A change of state, with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// When (wall clock, for logs and `/status`).
    pub at: SystemTime,
    /// Why, for the log line.
    pub cause: String,
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: Settings,
    state: State,
    /// When the current state began.
    since: SystemTime,
    /// The first failed check of the current failing run: the grace period's start.
    failing_since: Option<(Instant, SystemTime)>,
    /// Good checks in a row while not `available`.
    good: u32,
    /// Whether any check has completed; before that the state is `inaccessible` (fail closed).
    checked: bool,
    /// The last failure's cause (or, before any check, why the state is what it is).
    cause: String,
}

impl Breaker {
    /// A breaker before its first check: `inaccessible`, because nothing has shown the key is
    /// there. The first good check makes it `available` at once; after that, recovery takes
    /// `recover_after` good checks.
    pub fn new(settings: Settings, wall: SystemTime) -> Self {
        Self {
            settings,
            state: State::Inaccessible,
            since: wall,
            failing_since: None,
            good: 0,
            checked: false,
            cause: "no key check has passed yet".into(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// Why the key counts as unavailable (the last failure), if it does.
    pub fn cause(&self) -> Option<&str> {
        (self.state != State::Available).then_some(self.cause.as_str())
    }

    /// Whether any check has completed.
    pub fn checked(&self) -> bool {
        self.checked
    }

    /// When the current run of failures began (wall clock).
    pub fn failing_since(&self) -> Option<SystemTime> {
        self.failing_since.map(|(_, w)| w)
    }

    /// While `degraded`: when the grace period ends.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.state, self.failing_since) {
            (State::Degraded, Some((start, _))) => Some(start + self.settings.grace),
            _ => None,
        }
    }

    /// While `degraded`: how much of the grace period is left at `now`.
    pub fn grace_left(&self, now: Instant) -> Option<Duration> {
        self.deadline().map(|d| d.saturating_duration_since(now))
    }

    /// New settings (a reload). A shorter grace period takes effect at the next
    /// [`Breaker::poll`]; the current run of failures keeps its start.
    pub fn reconfigure(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// One round of checks: `Ok` if every provider said the key is available, else the first
    /// failure's cause.
    pub fn observe(&mut self, result: Result<(), String>, now: Instant, wall: SystemTime) -> Option<Transition> {
        let first = !self.checked;
        self.checked = true;
        match result {
            Ok(()) => {
                if self.state == State::Available {
                    return None;
                }
                self.good += 1;
                if first || self.good >= self.settings.recover_after {
                    let cause = if first {
                        "the first key check passed".to_owned()
                    } else {
                        format!("{} good key check(s) in a row", self.good)
                    };
                    self.failing_since = None;
                    return Some(self.enter(State::Available, wall, cause));
                }
                None
            }
            Err(cause) => {
                self.good = 0;
                self.cause = cause.clone();
                let (start, _) = *self.failing_since.get_or_insert((now, wall));
                match self.state {
                    State::Available => {
                        let t = self.enter(State::Degraded, wall, cause);
                        // A grace period shorter than the check interval ends at once.
                        Some(self.poll(now, wall).unwrap_or(t))
                    }
                    State::Degraded if now.saturating_duration_since(start) >= self.settings.grace => {
                        let cause = format!("grace period of {:?} over: {cause}", self.settings.grace);
                        Some(self.enter(State::Inaccessible, wall, cause))
                    }
                    State::Degraded | State::Inaccessible => None,
                }
            }
        }
    }

    /// The passing of time: `degraded` becomes `inaccessible` when the grace period is over.
    pub fn poll(&mut self, now: Instant, wall: SystemTime) -> Option<Transition> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let cause = format!("grace period of {:?} over: {}", self.settings.grace, self.cause);
        Some(self.enter(State::Inaccessible, wall, cause))
    }

    fn enter(&mut self, to: State, wall: SystemTime, cause: String) -> Transition {
        let from = self.state;
        self.state = to;
        self.since = wall;
        self.good = 0;
        Transition { from, to, at: wall, cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);

    struct Clock {
        start: Instant,
    }

    impl Clock {
        fn at(&self, secs: u64) -> (Instant, SystemTime) {
            (self.start + Duration::from_secs(secs), SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        }
    }

    fn breaker(recover_after: u32) -> (Breaker, Clock) {
        let clock = Clock { start: Instant::now() };
        (Breaker::new(Settings { grace: GRACE, recover_after }, SystemTime::UNIX_EPOCH), clock)
    }

    fn fail(b: &mut Breaker, c: &Clock, secs: u64) -> Option<Transition> {
        let (m, w) = c.at(secs);
        b.observe(Err("key file missing".into()), m, w)
    }

    fn ok(b: &mut Breaker, c: &Clock, secs: u64) -> Option<Transition> {
        let (m, w) = c.at(secs);
        b.observe(Ok(()), m, w)
    }

    fn to(t: Option<Transition>) -> Option<State> {
        t.map(|t| t.to)
    }

    #[test]
    fn starts_inaccessible_and_one_good_check_opens() {
        let (mut b, c) = breaker(2);
        assert_eq!(b.state(), State::Inaccessible);
        assert!(!b.checked());
        assert_eq!(to(ok(&mut b, &c, 0)), Some(State::Available));
        assert_eq!(b.cause(), None);
    }

    #[test]
    fn a_failed_first_check_stays_inaccessible_and_recovery_needs_recover_after() {
        let (mut b, c) = breaker(2);
        assert_eq!(fail(&mut b, &c, 0), None);
        assert_eq!(b.state(), State::Inaccessible);
        assert_eq!(b.cause(), Some("key file missing"));
        assert_eq!(ok(&mut b, &c, 30), None, "one good check is not enough");
        assert_eq!(fail(&mut b, &c, 60), None);
        assert_eq!(ok(&mut b, &c, 90), None, "the streak restarted");
        assert_eq!(to(ok(&mut b, &c, 120)), Some(State::Available));
    }

    #[test]
    fn failing_checks_degrade_then_trip_when_the_grace_period_ends() {
        let (mut b, c) = breaker(2);
        ok(&mut b, &c, 0);
        let t = fail(&mut b, &c, 30).unwrap_or_else(|| panic!("no transition"));
        assert_eq!((t.from, t.to), (State::Available, State::Degraded));
        assert_eq!(b.grace_left(c.at(30).0), Some(GRACE));
        assert_eq!(fail(&mut b, &c, 60), None);
        let (m, w) = c.at(629);
        assert_eq!(b.poll(m, w), None, "one second left");
        assert_eq!(b.state(), State::Degraded);
        let (m, w) = c.at(630);
        let t = b.poll(m, w).unwrap_or_else(|| panic!("no trip"));
        assert_eq!((t.from, t.to), (State::Degraded, State::Inaccessible));
        assert!(t.cause.contains("key file missing"), "{}", t.cause);
        assert_eq!(b.since(), w);
        assert_eq!(b.failing_since(), Some(c.at(30).1));
    }

    #[test]
    fn a_failed_check_past_the_deadline_trips_without_a_poll() {
        let (mut b, c) = breaker(2);
        ok(&mut b, &c, 0);
        fail(&mut b, &c, 30);
        assert_eq!(to(fail(&mut b, &c, 700)), Some(State::Inaccessible));
    }

    #[test]
    fn a_grace_shorter_than_the_interval_trips_on_the_first_failure_after_it() {
        let clock = Clock { start: Instant::now() };
        let mut b =
            Breaker::new(Settings { grace: Duration::from_millis(1), recover_after: 1 }, SystemTime::UNIX_EPOCH);
        ok(&mut b, &clock, 0);
        assert_eq!(to(fail(&mut b, &clock, 1)), Some(State::Degraded));
        assert_eq!(to(fail(&mut b, &clock, 2)), Some(State::Inaccessible));
    }

    #[test]
    fn recovery_from_degraded_needs_recover_after_and_keeps_the_grace_start() {
        let (mut b, c) = breaker(2);
        ok(&mut b, &c, 0);
        fail(&mut b, &c, 30);
        assert_eq!(ok(&mut b, &c, 60), None, "one good check does not end a failing run");
        fail(&mut b, &c, 90);
        // The flapping key does not restart the grace period.
        let (m, w) = c.at(630);
        assert_eq!(to(b.poll(m, w)), Some(State::Inaccessible));
    }

    #[test]
    fn degraded_recovers_and_the_next_failure_starts_a_new_grace_period() {
        let (mut b, c) = breaker(2);
        ok(&mut b, &c, 0);
        fail(&mut b, &c, 30);
        ok(&mut b, &c, 60);
        assert_eq!(to(ok(&mut b, &c, 90)), Some(State::Available));
        assert_eq!(b.deadline(), None);
        fail(&mut b, &c, 500);
        let (m, w) = c.at(1000);
        assert_eq!(b.poll(m, w), None, "the grace period restarted at 500 s");
        let (m, w) = c.at(1100);
        assert_eq!(to(b.poll(m, w)), Some(State::Inaccessible));
    }

    #[test]
    fn inaccessible_recovers_after_recover_after_good_checks() {
        let (mut b, c) = breaker(3);
        ok(&mut b, &c, 0);
        fail(&mut b, &c, 30);
        fail(&mut b, &c, 700);
        assert_eq!(b.state(), State::Inaccessible);
        assert_eq!(ok(&mut b, &c, 730), None);
        assert_eq!(ok(&mut b, &c, 760), None);
        let t = ok(&mut b, &c, 790).unwrap_or_else(|| panic!("no recovery"));
        assert_eq!((t.from, t.to), (State::Inaccessible, State::Available));
        assert!(t.cause.contains('3'), "{}", t.cause);
    }

    #[test]
    fn a_shorter_grace_on_reload_applies_to_the_current_run() {
        let (mut b, c) = breaker(2);
        ok(&mut b, &c, 0);
        fail(&mut b, &c, 30);
        b.reconfigure(Settings { grace: Duration::from_secs(60), recover_after: 2 });
        let (m, w) = c.at(90);
        assert_eq!(to(b.poll(m, w)), Some(State::Inaccessible));
    }

    #[test]
    fn poll_does_nothing_unless_degraded() {
        let (mut b, c) = breaker(2);
        let (m, w) = c.at(10_000);
        assert_eq!(b.poll(m, w), None);
        ok(&mut b, &c, 0);
        assert_eq!(b.poll(m, w), None);
    }
}
