//! systemd integration: readiness notification, the watchdog, and socket activation.
//!
//! Everything here is a no-op outside systemd: `sd_notify` does nothing without
//! `NOTIFY_SOCKET`, and no socket is inherited without `LISTEN_FDS`. Notification failures
//! are logged at debug and never stop the proxy: systemd's own timeouts report a missing
//! `READY=1` better than flexgate could.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Listeners are bound and serving.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has started; `ready` ends it. systemd wants the monotonic time with it, so that
/// it can tell this reload's READY=1 from an older one.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now, NotifyState::Status("reloading the config")]),
        Err(_) => notify(&[NotifyState::Reloading, NotifyState::Status("reloading the config")]),
    }
}

/// Shutdown has started.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A status line for `systemctl status`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// The watchdog is fed from the serving loop, so that a loop that stops turning stops feeding
/// it and systemd restarts the process.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to feed the watchdog (half its timeout, as sd_watchdog_enabled(3) advises), if
/// `WatchdogSec=` is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| (d / 2).max(Duration::from_millis(100)))
}

/// A listening socket handed over by the service manager.
#[derive(Debug)]
pub enum InheritedSocket {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix stream listener.
    Unix(std::os::unix::net::UnixListener),
}

/// The sockets passed with `LISTEN_FDS`, by their `FileDescriptorName=`.
pub struct Inherited {
    fds: listenfd::ListenFd,
    names: Vec<String>,
    taken: Vec<bool>,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited").field("names", &self.names).field("taken", &self.taken).finish()
    }
}

impl Inherited {
    /// Takes the sockets from the environment (and removes the variables, so that no child
    /// process believes they are its own). Call it before any thread starts: it changes the
    /// environment.
    pub fn from_env() -> Self {
        let names: Vec<String> =
            std::env::var("LISTEN_FDNAMES").map(|v| v.split(':').map(str::to_owned).collect()).unwrap_or_default();
        let fds = listenfd::ListenFd::from_env();
        let n = fds.len();
        Self { fds, names, taken: vec![false; n] }
    }

    /// No socket was inherited.
    pub fn none() -> Self {
        Self { fds: listenfd::ListenFd::empty(), names: Vec::new(), taken: Vec::new() }
    }

    /// How many sockets were passed.
    pub fn len(&self) -> usize {
        self.taken.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// The socket named after `listener`, if one was passed. `unix` says which kind the
    /// config expects; a socket of the other kind is an error.
    pub fn take(&mut self, listener: &str, unix: bool) -> io::Result<Option<InheritedSocket>> {
        let Some(i) = (0..self.len()).find(|&i| !self.taken[i] && self.names.get(i).is_some_and(|n| n == listener))
        else {
            return Ok(None);
        };
        let socket = if unix {
            self.fds.take_unix_listener(i)?.map(InheritedSocket::Unix)
        } else {
            self.fds.take_tcp_listener(i)?.map(InheritedSocket::Tcp)
        };
        self.taken[i] = socket.is_some();
        Ok(socket)
    }

    /// The names of the sockets no listener took.
    pub fn left_over(&self) -> Vec<String> {
        (0..self.len())
            .filter(|&i| !self.taken[i])
            .map(|i| self.names.get(i).cloned().unwrap_or_else(|| format!("fd {}", i + 3)))
            .collect()
    }
}
