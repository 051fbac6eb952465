//! The leader lease's decisions, sans-IO (docs/high-availability.md): when to try to take the
//! lease, when to renew it, until when the holder may serve, and when it has lost it.
//!
//! The lease is one row in the shared database (`store::pg_lease` does its SQL): an epoch, the
//! holder's name and an expiry in the database's clock. Taking it raises the epoch (the fencing
//! token every write is checked against); renewing it moves the expiry and succeeds only while
//! the epoch is still the holder's. Besides the row, the holder keeps a *local* deadline on the
//! monotonic clock: the start of its last successful renewal (or take) plus the lease's time to
//! live minus a margin. The database's expiry is set after that start, so the local deadline
//! always comes first: once it passes, another node may take the lease, and this one serves
//! nothing until a renewal succeeds. A process that was stopped (SIGSTOP, a paused VM) sees on
//! waking that its deadline has passed, since the monotonic clock kept counting, before it has
//! heard anything from the database.
//!
//! The I/O side asks [`Lease::poll_attempt`] what to try, runs it against the database, and
//! reports what the database said with [`Lease::outcome`]; [`Lease::handle_timeout`] at
//! [`Lease::poll_timeout`]. Each returns the [`LeaseEvent`] that the runner acts on (start
//! serving, stop serving, step down).

use std::time::{Duration, Instant};

/// The lease's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a take or renewal holds the lease in the database (`expires_at = now() + ttl`).
    pub ttl: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How much earlier than `ttl` after a renewal's start the holder stops serving.
    pub margin: Duration,
    /// Longest wait between a standby's attempts to take the lease.
    pub standby_poll: Duration,
    /// Wait before trying again after the database failed (unreachable, an error, a timeout).
    pub retry: Duration,
}

impl LeaseSettings {
    /// The settings for a time to live: renewal every third of it (two renewals may fail
    /// before the lease is at risk), a margin of a sixth, a standby checking at least every
    /// second (and exactly when the row says the lease expires), a retry after a database
    /// failure every quarter second up to a renewal period.
    pub fn from_ttl(ttl: Duration) -> LeaseSettings {
        LeaseSettings {
            ttl,
            renew_every: ttl / 3,
            margin: ttl / 6,
            standby_poll: Duration::from_secs(1).min(ttl / 3),
            retry: Duration::from_millis(250).min(ttl / 3),
        }
    }

    /// The longest one attempt may take before the I/O side gives up on it and reports a
    /// failure: a renewal period, so that a hung connection costs at most one renewal.
    pub fn attempt_timeout(&self) -> Duration {
        self.renew_every
    }
}

/// What the I/O side should try now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Take the lease if it has expired (or was never held): raises the epoch.
    Take,
    /// Renew the lease held under this epoch.
    Renew { epoch: i64 },
}

/// What the database answered to the last attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Take: the lease is this node's, under this new epoch.
    Taken { epoch: i64 },
    /// Take: another node holds it; `remaining` is how long until it expires by the
    /// database's clock (none: unknown, or it expired and another node was quicker).
    Held {
        holder: Option<String>,
        epoch: i64,
        remaining: Option<Duration>,
    },
    /// Renew: done, the lease is still this node's.
    Renewed,
    /// Renew: the row has another epoch: another node took the lease.
    Lost { epoch: i64, holder: Option<String> },
    /// The database could not be asked, or failed, or did not answer in time.
    Failed(String),
}

/// Where this node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waiting to take the lease; serves nothing.
    Standby,
    /// Holds the lease and its local deadline has not passed: serves.
    Active,
    /// Held the lease under its epoch but could not renew it before its local deadline:
    /// serves nothing, keeps renewing; resumes if the epoch is still its own.
    Suspended,
    /// Another node took the lease: this one must stop at once.
    Deposed,
}

/// A change the runner acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Still standby: the lease is held by `holder` (reported once per holder and epoch).
    Waiting { holder: Option<String>, epoch: i64 },
    /// The lease is this node's: fence the store with `epoch`, restore, connect, listen.
    Acquired { epoch: i64 },
    /// The local deadline passed without a renewal: serve nothing until one succeeds.
    Suspended { epoch: i64, reason: String },
    /// A renewal succeeded after a suspension: serve again.
    Resumed { epoch: i64 },
    /// Another node took the lease (`epoch` is now the row's): stop and exit.
    Deposed {
        mine: i64,
        epoch: i64,
        holder: Option<String>,
    },
}

/// The lease's state machine. See the module documentation.
#[derive(Debug)]
pub struct Lease {
    settings: LeaseSettings,
    role: Role,
    epoch: Option<i64>,
    /// Serve only before this (set while Active or Suspended).
    deadline: Option<Instant>,
    /// When the next attempt is due (none in flight).
    next: Instant,
    /// The attempt under way and when it started.
    in_flight: Option<(Attempt, Instant)>,
    /// The last failure, for the suspension's reason.
    last_failure: Option<String>,
    /// The holder last reported to a standby.
    seen: Option<(Option<String>, i64)>,
}

impl Lease {
    /// A standby that tries to take the lease at once.
    pub fn new(settings: LeaseSettings, now: Instant) -> Lease {
        Lease {
            settings,
            role: Role::Standby,
            epoch: None,
            deadline: None,
            next: now,
            in_flight: None,
            last_failure: None,
            seen: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The epoch this node holds (or held, when suspended or deposed).
    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    /// The local deadline: serving is allowed strictly before it.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether this node may serve at `now`: it holds the lease and its local deadline has not
    /// passed (whether or not [`Lease::handle_timeout`] has run yet).
    pub fn serving(&self, now: Instant) -> bool {
        self.role == Role::Active && self.deadline.is_some_and(|d| now < d)
    }

    /// The attempt due at `now`, if any; it is then in flight until [`Lease::outcome`].
    pub fn poll_attempt(&mut self, now: Instant) -> Option<Attempt> {
        if self.in_flight.is_some() || self.role == Role::Deposed || now < self.next {
            return None;
        }
        let attempt = match (self.role, self.epoch) {
            (Role::Active | Role::Suspended, Some(epoch)) => Attempt::Renew { epoch },
            _ => Attempt::Take,
        };
        self.in_flight = Some((attempt, now));
        Some(attempt)
    }

    /// The next instant something is due: an attempt (none while one is in flight) or the
    /// local deadline while active.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.role == Role::Deposed {
            return None;
        }
        let attempt = self.in_flight.is_none().then_some(self.next);
        let deadline = self.deadline.filter(|_| self.role == Role::Active);
        match (attempt, deadline) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
    }

    /// The local deadline: past it, an active holder is suspended.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<LeaseEvent> {
        let passed = self.deadline.is_some_and(|d| now >= d);
        if self.role != Role::Active || !passed {
            return None;
        }
        self.role = Role::Suspended;
        let reason = match &self.last_failure {
            Some(f) => format!("lease not renewed in time: {f}"),
            None => "lease not renewed in time".to_owned(),
        };
        Some(LeaseEvent::Suspended {
            epoch: self.epoch.unwrap_or_default(),
            reason,
        })
    }

    /// What the database answered to the attempt in flight, at `now`. An outcome with no
    /// attempt in flight, or one that does not fit it, is ignored.
    pub fn outcome(&mut self, now: Instant, outcome: Outcome) -> Option<LeaseEvent> {
        let (attempt, started) = self.in_flight.take()?;
        let s = self.settings;
        match (attempt, outcome) {
            (_, Outcome::Failed(reason)) => {
                self.next = now + s.retry.min(s.standby_poll);
                if self.role == Role::Standby {
                    self.next = now + s.standby_poll;
                }
                self.last_failure = Some(reason);
                // A renewal that failed past the deadline suspends at once.
                self.handle_timeout(now)
            }
            (Attempt::Take, Outcome::Taken { epoch }) => {
                self.role = Role::Active;
                self.epoch = Some(epoch);
                self.hold_from(started);
                self.seen = None;
                Some(LeaseEvent::Acquired { epoch })
            }
            (
                Attempt::Take,
                Outcome::Held {
                    holder,
                    epoch,
                    remaining,
                },
            ) => {
                self.last_failure = None;
                // Try again when the row says it expires (and at least every standby_poll,
                // as a renewal moves it), a little after so that the database agrees.
                let wait = remaining
                    .map_or(s.standby_poll, |r| r + Duration::from_millis(20))
                    .min(s.standby_poll);
                self.next = now + wait;
                let key = (holder.clone(), epoch);
                if self.seen.as_ref() == Some(&key) {
                    return None;
                }
                self.seen = Some(key);
                Some(LeaseEvent::Waiting { holder, epoch })
            }
            (Attempt::Renew { epoch }, Outcome::Renewed) => {
                self.last_failure = None;
                self.hold_from(started);
                let was = self.role;
                if self.deadline.is_some_and(|d| now >= d) {
                    // The renewal took so long that its own deadline has passed already.
                    self.role = Role::Suspended;
                    self.next = now;
                    return (was == Role::Active).then(|| LeaseEvent::Suspended {
                        epoch,
                        reason: "lease renewal answered too late".to_owned(),
                    });
                }
                self.role = Role::Active;
                (was == Role::Suspended).then_some(LeaseEvent::Resumed { epoch })
            }
            (Attempt::Renew { epoch: mine }, Outcome::Lost { epoch, holder }) => {
                self.role = Role::Deposed;
                self.deadline = None;
                Some(LeaseEvent::Deposed {
                    mine,
                    epoch,
                    holder,
                })
            }
            (attempt, other) => {
                // Not an answer to this attempt: treat as a failure of it.
                self.next = now + s.retry;
                self.last_failure = Some(format!("unexpected answer {other:?} to {attempt:?}"));
                self.handle_timeout(now)
            }
        }
    }

    /// A take or renewal that started at `started` succeeded: the local deadline and the next
    /// renewal count from that start.
    fn hold_from(&mut self, started: Instant) {
        let s = self.settings;
        self.deadline = Some(started + s.ttl.saturating_sub(s.margin));
        self.next = started + s.renew_every;
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start their virtual clock at Instant::now()
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// ttl 6 s: renew every 2 s, margin 1 s, standby polls every second.
    fn settings() -> LeaseSettings {
        LeaseSettings::from_ttl(secs(6))
    }

    /// A lease taken at `t0` under epoch 7.
    fn active(t0: Instant) -> Lease {
        let mut lease = Lease::new(settings(), t0);
        assert_eq!(lease.poll_attempt(t0), Some(Attempt::Take));
        assert_eq!(
            lease.outcome(t0 + ms(30), Outcome::Taken { epoch: 7 }),
            Some(LeaseEvent::Acquired { epoch: 7 })
        );
        lease
    }

    #[test]
    fn settings_from_ttl() {
        let s = settings();
        assert_eq!(s.renew_every, secs(2));
        assert_eq!(s.margin, secs(1));
        assert_eq!(s.standby_poll, secs(1));
        assert_eq!(s.retry, ms(250));
        assert_eq!(s.attempt_timeout(), secs(2));
    }

    /// The local deadline counts from the attempt's start, not from its answer: the database
    /// set its expiry after the start, so the holder stops serving before the row expires.
    #[test]
    fn deadline_counts_from_the_start_of_the_take_and_each_renewal() {
        let t0 = Instant::now();
        let mut lease = active(t0);
        assert_eq!(lease.role(), Role::Active);
        assert_eq!(lease.epoch(), Some(7));
        assert_eq!(lease.deadline(), Some(t0 + secs(5)));
        assert!(lease.serving(t0 + ms(4999)));
        assert!(!lease.serving(t0 + secs(5)));
        // Next: the renewal at t0 + 2 s (also from the start).
        assert_eq!(lease.poll_timeout(), Some(t0 + secs(2)));
        assert_eq!(lease.poll_attempt(t0 + ms(1999)), None);
        let t1 = t0 + secs(2);
        assert_eq!(lease.poll_attempt(t1), Some(Attempt::Renew { epoch: 7 }));
        // In flight: nothing else is tried; the deadline is still due.
        assert_eq!(lease.poll_attempt(t1 + ms(10)), None);
        assert_eq!(lease.poll_timeout(), Some(t0 + secs(5)));
        assert_eq!(lease.outcome(t1 + ms(800), Outcome::Renewed), None);
        assert_eq!(lease.deadline(), Some(t1 + secs(5)));
        assert_eq!(lease.poll_timeout(), Some(t1 + secs(2)));
    }

    /// A standby that finds the lease held tries again when the row expires (by the
    /// database's clock), at the latest after its poll interval, and reports the holder once.
    #[test]
    fn standby_waits_for_the_holder_and_tries_when_the_row_expires() {
        let t0 = Instant::now();
        let mut lease = Lease::new(settings(), t0);
        assert_eq!(lease.poll_timeout(), Some(t0));
        assert!(!lease.serving(t0));
        assert_eq!(lease.poll_attempt(t0), Some(Attempt::Take));
        let held = |remaining| Outcome::Held {
            holder: Some("a".into()),
            epoch: 3,
            remaining,
        };
        assert_eq!(
            lease.outcome(t0 + ms(5), held(Some(ms(300)))),
            Some(LeaseEvent::Waiting {
                holder: Some("a".into()),
                epoch: 3
            })
        );
        assert_eq!(lease.poll_timeout(), Some(t0 + ms(325)));
        let t1 = t0 + ms(325);
        assert_eq!(lease.poll_attempt(t1), Some(Attempt::Take));
        // The same holder again (it renewed): not reported again; the wait is capped.
        assert_eq!(lease.outcome(t1, held(Some(secs(6)))), None);
        assert_eq!(lease.poll_timeout(), Some(t1 + secs(1)));
        assert_eq!(lease.role(), Role::Standby);
        // The database away: a standby keeps polling at its interval.
        assert_eq!(lease.poll_attempt(t1 + secs(1)), Some(Attempt::Take));
        assert_eq!(
            lease.outcome(t1 + secs(1), Outcome::Failed("refused".into())),
            None
        );
        assert_eq!(lease.poll_timeout(), Some(t1 + secs(2)));
        assert_eq!(lease.role(), Role::Standby);
        let t2 = t1 + secs(2);
        assert_eq!(lease.poll_attempt(t2), Some(Attempt::Take));
        assert_eq!(
            lease.outcome(t2, Outcome::Taken { epoch: 4 }),
            Some(LeaseEvent::Acquired { epoch: 4 })
        );
        assert!(lease.serving(t2));
    }

    /// The database away: renewals keep being tried; past the local deadline the holder is
    /// suspended (serves nothing); a renewal that then succeeds (the epoch still its own)
    /// resumes it.
    #[test]
    fn database_away_suspends_at_the_deadline_and_a_later_renewal_resumes() {
        let t0 = Instant::now();
        let mut lease = active(t0);
        let mut now = t0 + secs(2);
        // Renewals fail from t0 + 2 s on, retried every 250 ms.
        while now < t0 + secs(5) {
            assert_eq!(lease.poll_attempt(now), Some(Attempt::Renew { epoch: 7 }));
            assert_eq!(
                lease.outcome(now + ms(10), Outcome::Failed("connection refused".into())),
                None
            );
            assert_eq!(lease.role(), Role::Active);
            now = lease.poll_timeout().expect("due");
        }
        // The deadline is due before the next retry.
        assert_eq!(now, t0 + secs(5));
        assert!(!lease.serving(now));
        assert_eq!(
            lease.handle_timeout(now),
            Some(LeaseEvent::Suspended {
                epoch: 7,
                reason: "lease not renewed in time: connection refused".into()
            })
        );
        assert_eq!(lease.handle_timeout(now), None);
        assert_eq!(lease.role(), Role::Suspended);
        // Still renewing, not taking: the epoch may still be its own.
        let t = lease.poll_timeout().expect("retry due");
        assert!(t <= now + ms(250));
        assert_eq!(lease.poll_attempt(t), Some(Attempt::Renew { epoch: 7 }));
        assert_eq!(lease.outcome(t, Outcome::Failed("timeout".into())), None);
        let t = t + secs(20);
        assert_eq!(lease.poll_attempt(t), Some(Attempt::Renew { epoch: 7 }));
        assert_eq!(
            lease.outcome(t + ms(40), Outcome::Renewed),
            Some(LeaseEvent::Resumed { epoch: 7 })
        );
        assert!(lease.serving(t + ms(40)));
        assert_eq!(lease.deadline(), Some(t + secs(5)));
    }

    /// A renewal that finds another epoch deposes the holder for good: no more attempts, no
    /// deadline, never serving again.
    #[test]
    fn another_epoch_deposes() {
        let t0 = Instant::now();
        let mut lease = active(t0);
        let t1 = t0 + secs(2);
        assert_eq!(lease.poll_attempt(t1), Some(Attempt::Renew { epoch: 7 }));
        assert_eq!(
            lease.outcome(
                t1,
                Outcome::Lost {
                    epoch: 8,
                    holder: Some("b".into())
                }
            ),
            Some(LeaseEvent::Deposed {
                mine: 7,
                epoch: 8,
                holder: Some("b".into())
            })
        );
        assert_eq!(lease.role(), Role::Deposed);
        assert!(!lease.serving(t1));
        assert_eq!(lease.poll_timeout(), None);
        assert_eq!(lease.poll_attempt(t1 + secs(60)), None);
    }

    /// A process stopped for longer than the lease (SIGSTOP): on waking, before any answer
    /// from the database, it is past its deadline and serves nothing; its renewal then finds
    /// the new holder's epoch.
    #[test]
    fn a_stopped_holder_serves_nothing_on_waking() {
        let t0 = Instant::now();
        let mut lease = active(t0);
        let woke = t0 + secs(30);
        assert!(!lease.serving(woke));
        assert_eq!(lease.poll_timeout(), Some(t0 + secs(2)));
        assert_eq!(lease.poll_attempt(woke), Some(Attempt::Renew { epoch: 7 }));
        assert!(matches!(
            lease.handle_timeout(woke),
            Some(LeaseEvent::Suspended { epoch: 7, .. })
        ));
        assert!(matches!(
            lease.outcome(
                woke + ms(3),
                Outcome::Lost {
                    epoch: 8,
                    holder: None
                }
            ),
            Some(LeaseEvent::Deposed {
                mine: 7,
                epoch: 8,
                ..
            })
        ));
    }

    /// A renewal answered after its own deadline does not let the holder serve: it stays
    /// (or becomes) suspended and renews again at once.
    #[test]
    fn a_renewal_answered_too_late_suspends() {
        let t0 = Instant::now();
        let mut lease = active(t0);
        let t1 = t0 + secs(2);
        assert_eq!(lease.poll_attempt(t1), Some(Attempt::Renew { epoch: 7 }));
        let late = t1 + secs(6);
        assert!(matches!(
            lease.outcome(late, Outcome::Renewed),
            Some(LeaseEvent::Suspended { epoch: 7, .. })
        ));
        assert!(!lease.serving(late));
        assert_eq!(lease.poll_attempt(late), Some(Attempt::Renew { epoch: 7 }));
        assert_eq!(
            lease.outcome(late + ms(5), Outcome::Renewed),
            Some(LeaseEvent::Resumed { epoch: 7 })
        );
    }

    /// An outcome with nothing in flight, or one that answers another attempt, changes
    /// nothing it should not.
    #[test]
    fn stray_outcomes_are_ignored_or_count_as_failures() {
        let t0 = Instant::now();
        let mut lease = Lease::new(settings(), t0);
        assert_eq!(lease.outcome(t0, Outcome::Taken { epoch: 1 }), None);
        assert_eq!(lease.role(), Role::Standby);
        assert_eq!(lease.poll_attempt(t0), Some(Attempt::Take));
        assert_eq!(lease.outcome(t0, Outcome::Renewed), None);
        assert_eq!(lease.role(), Role::Standby);
        assert!(lease.poll_timeout().is_some());
    }
}
