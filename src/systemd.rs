//! The service manager's notification protocol (`sd_notify(3)`): `READY=1` once the SIP edge
//! listens and every component link is up, `WATCHDOG=1` from the runner's loop,
//! `RELOADING=1`/`READY=1` around a SIGHUP reload, `STOPPING=1` at shutdown, and a `STATUS=`
//! line with each. Outside systemd (no `NOTIFY_SOCKET` in the environment) every call does
//! nothing. I/O: it reads the environment and writes datagrams to the manager's socket, so only
//! the runner uses it (docs/operations.md "Running under systemd").

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// The service manager's socket and watchdog, as the environment gave them at start.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set: notifications go out.
    enabled: bool,
    /// `WATCHDOG_USEC` (for this process, when `WATCHDOG_PID` names one): the manager kills
    /// the service when no `WATCHDOG=1` comes within it.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A watchdog without a socket
    /// to ping is ignored; so is a zero interval.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| enabled && !d.is_zero());
        Notifier { enabled, watchdog }
    }

    /// Whether the process runs under a service manager that listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often to send `WATCHDOG=1`: half the manager's interval (as `sd_watchdog_enabled(3)`
    /// advises), so that one late turn of the loop is not yet fatal. `None` without a watchdog.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// The manager's watchdog interval itself (for the start-up log line).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1` with a status line: start-up done, or a reload finished.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` (with `MONOTONIC_USEC`, which systemd 253 and later require with it)
    /// before a reload; [`Notifier::ready`] must follow.
    pub fn reloading(&self) {
        if !self.enabled {
            return;
        }
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ];
        match NotifyState::monotonic_usec_now() {
            Ok(now) => states.push(now),
            Err(e) => debug!(error = %e, "systemd: no monotonic clock for MONOTONIC_USEC"),
        }
        self.send(&states);
    }

    /// `STOPPING=1`: the shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    }

    /// `WATCHDOG=1`: the runner's loop is turning.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            // The manager went away or the socket is unusable: nothing to do but say so.
            warn!(error = %e, "systemd notification not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_socket_nothing_is_enabled() {
        let n = Notifier::default();
        assert!(!n.enabled());
        assert_eq!(n.watchdog_period(), None);
        // No socket: these do nothing (and do not fail).
        n.ready("x");
        n.reloading();
        n.stopping();
        n.watchdog();
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_interval() {
        let n = Notifier {
            enabled: true,
            watchdog: Some(Duration::from_secs(30)),
        };
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(15)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(30)));
    }
}
