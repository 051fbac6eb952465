//! Which connection an outbound request takes, without I/O: the profile's connection policy
//! ("Transport and security": at most 4 connections to one peer edge server and at most 40 to
//! one peer network, reused), SRV fail-over in RFC 2782 order, and per-edge backoff after
//! failures.
//!
//! The limits count edge hosts, not domains: one edge host often serves many domains (a
//! hosting provider's edge; every Microsoft 365 tenant's SRV record names
//! `sipfed.online.lync.com`). An outbound connection to edge `E` counts toward `E`'s 4 whatever
//! domain it was opened for, and carries requests to any domain `E`'s certificate is authorized
//! for (the same rule as for inbound connections, [`PeerIdentity::covers`]: the certificate
//! names the domain, one of its SRV targets, or its configured edge). A domain's *peer
//! network* is the set of its edge hosts (its SRV targets, or its configured edge): the 40
//! count the outbound connections opened for the domain or to any of those hosts.
//!
//! The pool knows every connection of the edge: outbound ones it opened (to one `host:port`
//! edge of one peer domain) and authenticated inbound ones (whose certificate identity may
//! carry requests back to the domains it is authorized for). For a request to domain `D` it
//! picks the least-loaded usable connection; a new outbound connection is opened only when no
//! connection is usable, or every usable one has `busy_threshold` requests outstanding and the
//! limits allow another. Requests waiting for a connection stay in the pool (they are the
//! caller's, returned by [`Pool::take_waiting`], or by [`Pool::expire`] at their deadline).
//!
//! What the pool keeps per peer domain (its SRV answer, waiting requests, the discovered-partner
//! rate bucket, which of its edges back off) is dropped once the domain has had no outbound
//! connection, waiting request or lookup under way for `idle` ([`Pool::set_idle`],
//! `sip.pool_idle_secs`); a domain whose lookup failed (no SRV record, NXDOMAIN, an error) and
//! that carried no traffic sooner, when its negative answer expires and at most
//! [`MAX_NEGATIVE_KEEP`] after its last use. Each domain has one timer in a heap (its next
//! request deadline or idle check), so the next deadline is known in O(1) and a timeout costs
//! O(log n) per domain it concerns: no event walks every domain, and memory follows the domains
//! in use, not every domain ever seen.
//!
//! Time alone does not bound the entries: a peer with a fast DNS server of its own makes the
//! edge look up thousands of new domains a second. At [`MAX_DOMAINS`] entries the least
//! recently used unused ones are dropped (a quarter of the cap at once, so the walk this takes
//! is amortized over the entries made since). Domains in use (a lookup under way, waiting
//! requests, an outbound connection) are never dropped: those are bounded by
//! `sip.max_dns_lookups`, `sip.max_connections` and the requests' deadlines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::config::FederationConfig;
use crate::edge::admission::RateBucket;
use crate::edge::identity::PeerIdentity;
use crate::edge::limits::{EdgeLimits, Limit};
use crate::edge::srv::SrvTarget;
use crate::sip::transaction::ConnId;

/// Most per-domain entries kept while some are unused (see the module documentation).
pub const MAX_DOMAINS: usize = 10_000;

/// Longest a failed lookup is kept for a domain that carried no traffic, whatever its negative
/// TTL (RFC 2308 §5: a resolver may cap it); it is looked up again when next needed.
pub const MAX_NEGATIVE_KEEP: Duration = Duration::from_secs(30);

/// The profile's ceilings.
pub const MAX_PER_EDGE: usize = 4;
pub const MAX_PER_NETWORK: usize = 40;

/// Connection limits (each at most the profile's ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub per_edge: usize,
    pub per_network: usize,
    /// Outstanding client transactions on every usable connection before another connection
    /// is opened (when the limits allow).
    pub busy_threshold: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            per_edge: MAX_PER_EDGE,
            per_network: MAX_PER_NETWORK,
            busy_threshold: 16,
        }
    }
}

impl PoolLimits {
    /// Limits from configuration, clamped to the profile's ceilings.
    pub fn new(per_edge: usize, per_network: usize, busy_threshold: usize) -> PoolLimits {
        PoolLimits {
            per_edge: per_edge.clamp(1, MAX_PER_EDGE),
            per_network: per_network.clamp(1, MAX_PER_NETWORK),
            busy_threshold: busy_threshold.max(1),
        }
    }
}

/// One peer edge server: where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeAddr {
    /// Host name the certificate must match (lowercase), or an IP literal.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for EdgeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
struct Conn {
    /// Outbound: the peer domain and edge it was opened for.
    outbound: Option<(String, EdgeAddr)>,
    /// Set once TLS is up (inbound connections are registered up).
    identity: Option<PeerIdentity>,
    /// Client transactions outstanding on it.
    pending: usize,
    /// The peer answered an out-of-dialog request on it with 503: no new request on it before
    /// then.
    avoid_until: Option<Instant>,
}

/// One connection as an administrator sees it ([`Pool::connections`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSummary {
    pub conn: ConnId,
    /// Outbound: the peer domain and the edge it was opened for; inbound: `None`.
    pub outbound: Option<(String, String)>,
    /// The names of the peer's certificate (empty while an outbound handshake is under way).
    pub names: Vec<String>,
    /// Client transactions outstanding on it.
    pub pending: usize,
}

/// What is known of a domain's edges.
#[derive(Debug, Clone)]
enum Targets {
    Unknown,
    Resolving,
    Known {
        targets: Vec<EdgeAddr>,
        valid_until: Instant,
    },
    Failed {
        reason: String,
        valid_until: Instant,
    },
}

#[derive(Debug)]
struct Network<W> {
    targets: Targets,
    /// Requests waiting for a connection, with their deadlines (in order).
    waiting: VecDeque<(Instant, W)>,
    /// The discovered-partner rate limit of requests from this domain.
    bucket: Option<RateBucket>,
    /// Outbound connections (opening or up) to this domain.
    outbound: usize,
    /// Edges of this domain that failed (their backoff is dropped with the domain).
    failed_edges: Vec<EdgeAddr>,
    last_used: Instant,
    /// When this domain's entry in the pool's timer heap fires; entries in the heap at other
    /// times are stale.
    timer: Option<Instant>,
}

impl<W> Network<W> {
    /// Nothing depends on it: it may be dropped (its state is looked up or made again when
    /// next needed).
    fn unused(&self) -> bool {
        self.waiting.is_empty() && self.outbound == 0 && !matches!(self.targets, Targets::Resolving)
    }

    /// When it may be dropped, if unused by then: `idle` after its last use; a failed lookup
    /// with no traffic (no rate bucket) when its answer expires, and at most
    /// [`MAX_NEGATIVE_KEEP`] after its last use.
    fn drop_at(&self, idle: Duration) -> Instant {
        let at = self.last_used + idle;
        match &self.targets {
            Targets::Failed { valid_until, .. } if self.bucket.is_none() => {
                at.min(self.last_used + MAX_NEGATIVE_KEEP).min(*valid_until)
            }
            _ => at,
        }
    }

    fn new(now: Instant) -> Self {
        Network {
            targets: Targets::Unknown,
            waiting: VecDeque::new(),
            bucket: None,
            outbound: 0,
            failed_edges: Vec::new(),
            last_used: now,
            timer: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Failures {
    count: u32,
    retry_at: Instant,
    reason: String,
}

/// What the pool wants done for a domain; [`Pool::pump`] returns these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this waiting request (returned by `take_waiting`) on `conn`.
    Send { conn: ConnId },
    /// Look up the domain's edges (SRV) and call [`Pool::resolved`].
    Resolve { domain: String },
    /// Open outbound connection `conn` to `edge`; then [`Pool::up`] or [`Pool::failed`].
    Connect {
        conn: ConnId,
        domain: String,
        edge: EdgeAddr,
    },
    /// Every waiting request of `domain` must fail with this reason; `no_route` when DNS says
    /// there is no edge (rather than the edges failing); `limit` when a connection was needed
    /// and `sip.max_connections` allows none.
    Fail {
        reason: String,
        no_route: bool,
        limit: Option<Limit>,
    },
}

/// The edge's connections and the requests waiting for one. `W` is the caller's waiting
/// request.
#[derive(Debug)]
pub struct Pool<W> {
    limits: PoolLimits,
    backoff: Backoff,
    conns: HashMap<ConnId, Conn>,
    networks: HashMap<String, Network<W>>,
    failures: HashMap<EdgeAddr, Failures>,
    /// Edge hosts that answered 503 (RFC 3261 §21.5.4): their connections carry no new
    /// request before then (entries past their time are dropped at the next 503).
    unavailable: HashMap<EdgeAddr, Instant>,
    next_conn: ConnId,
    /// How long an unused domain is kept.
    idle: Duration,
    /// One live entry per domain (its `timer`); others are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// [`MAX_DOMAINS`] (smaller in tests).
    max_domains: usize,
    /// Entries held when unused ones are next dropped: at the cap, or (when too few were
    /// unused) once another quarter of it has been made.
    evict_at: usize,
}

/// Outbound connection ids start here; inbound ones (numbered by the listener) stay below.
pub const OUTBOUND_CONN_BASE: ConnId = 1 << 40;

impl<W> Pool<W> {
    pub fn new(limits: PoolLimits) -> Pool<W> {
        Pool {
            limits,
            backoff: Backoff::default(),
            conns: HashMap::new(),
            networks: HashMap::new(),
            failures: HashMap::new(),
            unavailable: HashMap::new(),
            next_conn: OUTBOUND_CONN_BASE,
            idle: EdgeLimits::DEFAULT.pool_idle,
            timers: BinaryHeap::new(),
            max_domains: MAX_DOMAINS,
            evict_at: MAX_DOMAINS,
        }
    }

    #[cfg(test)]
    fn set_max_domains(&mut self, max: usize) {
        self.max_domains = max;
        self.evict_at = max;
    }

    pub fn set_limits(&mut self, limits: PoolLimits) {
        self.limits = limits;
    }

    /// How long a domain with no connection, waiting request or lookup is kept unused.
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// Domains held, and entries in the timer heap (live and stale): what memory and timer
    /// work follow.
    pub fn domains_held(&self) -> (usize, usize) {
        (self.networks.len(), self.timers.len())
    }

    /// Runs `f` on `domain`'s entry, made (with its idle timer) if it has none; the domain
    /// counts as used now.
    fn with_network<R>(
        &mut self,
        domain: &str,
        now: Instant,
        f: impl FnOnce(&mut Network<W>) -> R,
    ) -> R {
        if let Some(n) = self.networks.get_mut(domain) {
            n.last_used = now;
            return f(n);
        }
        if self.networks.len() >= self.evict_at {
            self.evict();
        }
        let mut n = Network::new(now);
        let at = now + self.idle;
        n.timer = Some(at);
        let r = f(&mut n);
        self.networks.insert(domain.to_owned(), n);
        self.push_timer(at, domain);
        r
    }

    /// Drops the least recently used unused domains, down to three quarters of the cap (fewer
    /// when more are in use), and the timers they leave stale. O(n) once per quarter of the
    /// cap of new entries.
    fn evict(&mut self) {
        let keep = self.max_domains - self.max_domains / 4;
        let excess = self.networks.len().saturating_sub(keep);
        let mut unused: Vec<(Instant, &String)> = self
            .networks
            .iter()
            .filter(|(_, n)| n.unused())
            .map(|(d, n)| (n.last_used, d))
            .collect();
        if unused.len() > excess {
            unused.select_nth_unstable(excess);
            unused.truncate(excess);
        }
        let gone: Vec<String> = unused.into_iter().map(|(_, d)| d.clone()).collect();
        for domain in gone {
            self.drop_network(&domain);
        }
        self.evict_at = self
            .max_domains
            .max(self.networks.len() + (self.max_domains / 4).max(1));
        self.compact_timers();
    }

    /// Forgets `domain` and the backoff of the edges that failed for it (an edge shared with
    /// another domain starts its backoff afresh there: one more attempt, not a leak).
    fn drop_network(&mut self, domain: &str) {
        if let Some(n) = self.networks.remove(domain) {
            for e in &n.failed_edges {
                self.failures.remove(e);
            }
        }
    }

    /// Removes the stale entries of the timer heap (O(n)).
    fn compact_timers(&mut self) {
        let networks = &self.networks;
        self.timers.retain(|Reverse((at, domain))| {
            networks.get(domain).is_some_and(|n| n.timer == Some(*at))
        });
    }

    /// Adds a live timer entry; stale ones are cleared once they outnumber the live ones, so
    /// the heap stays within about twice the domains held.
    fn push_timer(&mut self, at: Instant, domain: &str) {
        self.timers.push(Reverse((at, domain.to_owned())));
        if self.timers.len() > 2 * self.networks.len() + 64 {
            self.compact_timers();
        }
    }

    /// Makes `domain`'s timer fire at `at` at the latest.
    fn arm(&mut self, domain: &str, at: Instant) {
        if let Some(n) = self.networks.get_mut(domain) {
            if n.timer.is_none_or(|t| at < t) {
                n.timer = Some(at);
                self.push_timer(at, domain);
            }
        }
    }

    /// When [`Pool::expire`] has work next.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Fires the timers due at `now`: returns the waiting requests past their deadline (with
    /// their domain), and drops the domains unused for `idle` that have no outbound
    /// connection, waiting request, lookup under way or edge still backing off.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, W)> {
        let mut expired = Vec::new();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, domain))) = self.timers.pop() else {
                break;
            };
            let Some(n) = self.networks.get_mut(&domain) else {
                continue;
            };
            if n.timer != Some(at) {
                continue;
            }
            n.timer = None;
            while n.waiting.front().is_some_and(|(d, _)| *d <= now) {
                if let Some((_, w)) = n.waiting.pop_front() {
                    expired.push((domain.clone(), w));
                }
            }
            let idle_at = n.drop_at(self.idle);
            let backing_off = n
                .failed_edges
                .iter()
                .any(|e| self.failures.get(e).is_some_and(|f| f.retry_at > now));
            let unused = n.unused() && !backing_off;
            if unused && idle_at <= now {
                self.drop_network(&domain);
                if self.networks.len() < self.max_domains {
                    self.evict_at = self.max_domains;
                }
                continue;
            }
            let check = if idle_at > now {
                idle_at
            } else {
                now + self.idle
            };
            let next = n.waiting.front().map_or(check, |(d, _)| (*d).min(check));
            self.arm(&domain, next);
        }
        expired
    }

    /// Takes a token from `domain`'s discovered-partner rate bucket (`rate` per second).
    pub fn take_token(&mut self, domain: &str, now: Instant, rate: u32) -> bool {
        self.with_network(domain, now, |n| {
            n.bucket
                .get_or_insert_with(|| RateBucket::full(now, rate))
                .take(now, rate)
        })
    }

    /// An authenticated inbound connection.
    pub fn inbound(&mut self, conn: ConnId, identity: PeerIdentity) {
        self.conns.insert(
            conn,
            Conn {
                outbound: None,
                identity: Some(identity),
                pending: 0,
                avoid_until: None,
            },
        );
    }

    /// Every connection held (up or connecting), by id.
    pub fn connections(&self) -> Vec<ConnSummary> {
        let mut all: Vec<ConnSummary> = self
            .conns
            .iter()
            .map(|(id, c)| ConnSummary {
                conn: *id,
                outbound: c
                    .outbound
                    .as_ref()
                    .map(|(domain, edge)| (domain.clone(), edge.to_string())),
                names: c
                    .identity
                    .as_ref()
                    .map(|i| i.names().to_vec())
                    .unwrap_or_default(),
                pending: c.pending,
            })
            .collect();
        all.sort_by_key(|c| c.conn);
        all
    }

    /// The identity of an up connection.
    pub fn identity(&self, conn: ConnId) -> Option<&PeerIdentity> {
        self.conns.get(&conn).and_then(|c| c.identity.as_ref())
    }

    /// Whether `conn` is up (TLS done, not closed).
    pub fn is_up(&self, conn: ConnId) -> bool {
        self.identity(conn).is_some()
    }

    /// Counts a client transaction started (+1) or ended (-1) on `conn`.
    pub fn add_pending(&mut self, conn: ConnId, delta: isize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending = c.pending.saturating_add_signed(delta);
        }
    }

    /// Outbound connections (opening or up) in `domain`'s peer network — opened for `domain`,
    /// or to one of its edge hosts `targets` whatever domain they were opened for — and to
    /// `edge` among all outbound connections, whatever domain they were opened for (the
    /// profile's limits count edge hosts, not the domains they serve).
    pub fn outbound_counts(
        &self,
        domain: &str,
        targets: &[EdgeAddr],
        edge: Option<&EdgeAddr>,
    ) -> (usize, usize) {
        let mut network = 0;
        let mut to_edge = 0;
        for (d, e) in self.conns.values().filter_map(|c| c.outbound.as_ref()) {
            if d == domain || targets.contains(e) {
                network += 1;
            }
            if Some(e) == edge {
                to_edge += 1;
            }
        }
        (network, to_edge)
    }

    /// The edge hosts known for `domain` (its SRV answer while it holds).
    fn known_targets(&self, domain: &str, now: Instant) -> Vec<EdgeAddr> {
        match self.networks.get(domain).map(|n| &n.targets) {
            Some(Targets::Known {
                targets,
                valid_until,
            }) if *valid_until > now => targets.clone(),
            _ => Vec::new(),
        }
    }

    /// Domains with requests waiting for a connection, but `except` (a connection that came
    /// up or went away may change what they can do: an edge host serves several domains).
    pub fn waiting_domains(&self, except: &str) -> Vec<String> {
        let mut domains: Vec<String> = self
            .networks
            .iter()
            .filter(|(d, n)| !n.waiting.is_empty() && d.as_str() != except)
            .map(|(d, _)| d.clone())
            .collect();
        domains.sort_unstable();
        domains
    }

    /// The SRV target names known for `domain` (for authorizing inbound certificates); the
    /// domain counts as used.
    pub fn srv_names(&mut self, domain: &str, now: Instant) -> Option<Vec<String>> {
        let n = self.networks.get_mut(domain)?;
        n.last_used = now;
        srv_of(&n.targets, now)
    }

    fn known_srv(&self, domain: &str, now: Instant) -> Option<Vec<String>> {
        srv_of(&self.networks.get(domain)?.targets, now)
    }

    /// Whether a lookup for `domain` is under way.
    pub fn resolving(&self, domain: &str) -> bool {
        matches!(
            self.networks.get(domain).map(|n| &n.targets),
            Some(Targets::Resolving)
        )
    }

    /// Starts a lookup for `domain` unless one is running; true if the caller must resolve.
    pub fn start_resolving(&mut self, domain: &str, now: Instant) -> bool {
        self.with_network(domain, now, |n| {
            if matches!(n.targets, Targets::Resolving) {
                return false;
            }
            n.targets = Targets::Resolving;
            true
        })
    }

    /// A lookup [`Action::Resolve`] asked for is not started after all (no DNS slot free):
    /// the domain's edges are unknown again.
    pub fn cancel_resolving(&mut self, domain: &str) {
        if let Some(n) = self.networks.get_mut(domain) {
            if matches!(n.targets, Targets::Resolving) {
                n.targets = Targets::Unknown;
            }
        }
    }

    /// Queues a request for `domain` until a connection can take it, or until `deadline`
    /// ([`Pool::expire`] returns it then).
    pub fn wait(&mut self, domain: &str, w: W, deadline: Instant, now: Instant) {
        self.with_network(domain, now, |n| n.waiting.push_back((deadline, w)));
        self.arm(domain, deadline);
    }

    /// The first waiting request of `domain`.
    pub fn take_waiting(&mut self, domain: &str) -> Option<W> {
        self.networks
            .get_mut(domain)?
            .waiting
            .pop_front()
            .map(|(_, w)| w)
    }

    /// The result of a lookup: targets in the order to try them (RFC 2782 order already
    /// applied), or why there are none; both are kept until `valid_until` (the DNS TTL).
    pub fn resolved(
        &mut self,
        now: Instant,
        domain: &str,
        result: Result<Vec<SrvTarget>, String>,
        valid_until: Instant,
    ) {
        let targets = match result {
            Ok(targets) if !targets.is_empty() => Targets::Known {
                targets: targets
                    .into_iter()
                    .map(|t| EdgeAddr {
                        host: t.target,
                        port: t.port,
                    })
                    .collect(),
                valid_until,
            },
            Ok(_) => Targets::Failed {
                reason: format!("no usable _sipfederationtls._tcp SRV target for {domain}"),
                valid_until,
            },
            Err(reason) => Targets::Failed {
                reason,
                valid_until,
            },
        };
        let idle = self.idle;
        let drop_at = self.with_network(domain, now, |n| {
            n.targets = targets;
            n.drop_at(idle)
        });
        // A failed lookup is dropped sooner than `idle` (if nothing else uses the domain).
        self.arm(domain, drop_at);
    }

    /// Outbound connection `conn` completed TLS with `identity`.
    pub fn up(&mut self, conn: ConnId, identity: PeerIdentity) -> Option<String> {
        let c = self.conns.get_mut(&conn)?;
        c.identity = Some(identity);
        let (domain, edge) = c.outbound.clone()?;
        // A connection up clears a connect backoff, not a 503's Retry-After.
        if !self.unavailable.contains_key(&edge) {
            self.failures.remove(&edge);
        }
        Some(domain)
    }

    /// Outbound connection `conn` could not be opened because of `reason`; its edge backs off
    /// (`jitter` in `0.0..=1.0`). Returns the domain it was for.
    pub fn failed(
        &mut self,
        now: Instant,
        conn: ConnId,
        jitter: f64,
        reason: &str,
    ) -> Option<String> {
        let c = self.conns.remove(&conn)?;
        let (domain, edge) = c.outbound?;
        if let Some(n) = self.networks.get_mut(&domain) {
            n.outbound = n.outbound.saturating_sub(1);
            n.last_used = now;
            if !n.failed_edges.contains(&edge) {
                n.failed_edges.push(edge.clone());
            }
        }
        let f = self.failures.entry(edge.clone()).or_insert(Failures {
            count: 0,
            retry_at: now,
            reason: String::new(),
        });
        f.retry_at = now + self.backoff.delay(f.count, jitter);
        f.count = f.count.saturating_add(1);
        f.reason = format!("{edge}: {reason}");
        Some(domain)
    }

    /// Whether `c` carries no new request now (its peer answered 503 with a time not over).
    fn avoided(&self, c: &Conn, now: Instant) -> bool {
        c.avoid_until.is_some_and(|t| t > now)
            || c.outbound
                .as_ref()
                .and_then(|(_, e)| self.unavailable.get(e))
                .is_some_and(|t| *t > now)
    }

    /// The peer answered an out-of-dialog request sent on `conn` with 503 (RFC 3261 §21.5.4:
    /// no other request to that server for the `Retry-After` time): for `retry_after`, or
    /// without one the edge's next backoff delay (`jitter` in `0.0..=1.0`), no new request
    /// goes on `conn`, nor on any connection to its edge host, nor opens one to it. Returns
    /// when that ends (`None` if `conn` is unknown).
    pub fn unavailable(
        &mut self,
        now: Instant,
        conn: ConnId,
        retry_after: Option<Duration>,
        jitter: f64,
        reason: &str,
    ) -> Option<Instant> {
        let outbound = self.conns.get(&conn)?.outbound.clone();
        let delay = match (&outbound, retry_after) {
            (_, Some(d)) => d,
            (Some((_, edge)), None) => {
                let count = self.failures.get(edge).map_or(0, |f| f.count);
                self.backoff.delay(count, jitter)
            }
            (None, None) => self.backoff.delay(0, jitter),
        };
        let until = now + delay;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.avoid_until = Some(c.avoid_until.map_or(until, |t| t.max(until)));
        }
        let Some((domain, edge)) = outbound else {
            return Some(until);
        };
        self.unavailable.retain(|_, t| *t > now);
        let t = self.unavailable.entry(edge.clone()).or_insert(until);
        *t = (*t).max(until);
        let f = self.failures.entry(edge.clone()).or_insert(Failures {
            count: 0,
            retry_at: now,
            reason: String::new(),
        });
        f.retry_at = f.retry_at.max(until);
        if retry_after.is_none() {
            f.count = f.count.saturating_add(1);
        }
        f.reason = format!("{edge}: {reason}");
        if let Some(n) = self.networks.get_mut(&domain) {
            if !n.failed_edges.contains(&edge) {
                n.failed_edges.push(edge);
            }
        }
        self.arm(&domain, until);
        Some(until)
    }

    /// Whether a request to `domain` could go elsewhere now: a usable connection, or one of its
    /// edges (`static_edge`, else its SRV targets) not backing off.
    pub fn has_alternative(
        &self,
        domain: &str,
        now: Instant,
        static_edge: Option<EdgeAddr>,
        federation: &FederationConfig,
    ) -> bool {
        if self
            .least_loaded(domain, now, federation, &HashMap::new())
            .is_some()
        {
            return true;
        }
        let targets = match static_edge {
            Some(e) => vec![e],
            None => self.known_targets(domain, now),
        };
        targets
            .iter()
            .any(|t| self.failures.get(t).is_none_or(|f| f.retry_at <= now))
    }

    /// A connection closed (after being up); returns the domain of an outbound one.
    pub fn closed(&mut self, now: Instant, conn: ConnId) -> Option<String> {
        let (domain, _) = self.conns.remove(&conn)?.outbound?;
        if let Some(n) = self.networks.get_mut(&domain) {
            n.outbound = n.outbound.saturating_sub(1);
            n.last_used = now;
        }
        Some(domain)
    }

    /// The least-loaded up connection that may carry requests to `domain`, counting `extra`
    /// requests already assigned: outbound ones opened for it, and any other (inbound, or
    /// outbound opened for another domain served by the same edge host) whose certificate is
    /// authorized for it (SAN = domain, SAN = an SRV target, or the partner's configured edge).
    fn least_loaded(
        &self,
        domain: &str,
        now: Instant,
        federation: &FederationConfig,
        extra: &HashMap<ConnId, usize>,
    ) -> Option<(ConnId, usize)> {
        let srv = self.known_srv(domain, now).unwrap_or_default();
        self.conns
            .iter()
            .filter(|(_, c)| !self.avoided(c, now))
            .filter(|(_, c)| match (&c.outbound, &c.identity) {
                (_, None) => false,
                (Some((d, _)), Some(id)) => d == domain || id.covers(domain, &srv, federation),
                (None, Some(id)) => id.covers(domain, &srv, federation),
            })
            .map(|(id, c)| (*id, c.pending + extra.get(id).copied().unwrap_or(0)))
            .min_by_key(|&(id, load)| (load, id))
    }

    /// Whether a connection is being opened for `domain` or to one of its edge hosts (then
    /// its requests wait for that one; [`Pool::waiting_domains`] are moved along when it is up).
    fn connecting(&self, domain: &str, now: Instant) -> bool {
        let targets = self.known_targets(domain, now);
        self.conns.values().any(|c| {
            c.identity.is_none()
                && c.outbound
                    .as_ref()
                    .is_some_and(|(d, e)| d == domain || targets.contains(e))
        })
    }

    /// The first edge, in order, that is below the per-edge limit and not backing off; or, when
    /// none is, the failure whose backoff ends first.
    fn pick_edge(
        &self,
        targets: &[EdgeAddr],
        domain: &str,
        now: Instant,
    ) -> Result<EdgeAddr, Option<&Failures>> {
        let mut earliest: Option<&Failures> = None;
        for t in targets {
            let (_, to_edge) = self.outbound_counts(domain, &[], Some(t));
            if to_edge >= self.limits.per_edge {
                continue;
            }
            match self.failures.get(t) {
                Some(f) if f.retry_at > now => {
                    if earliest.is_none_or(|e| f.retry_at < e.retry_at) {
                        earliest = Some(f);
                    }
                }
                _ => return Ok(t.clone()),
            }
        }
        Err(earliest)
    }

    /// Moves `domain`'s waiting requests along. Each goes to the least-loaded usable
    /// connection; when there is none, or all have `busy_threshold` requests outstanding, one
    /// new connection is asked for (a lookup first if the edges are not known), within the
    /// limits and at most one opening at a time per domain. Requests with no usable connection
    /// wait; when the domain cannot be reached they fail. For each [`Action::Send`] the caller
    /// takes the next waiting request with [`Pool::take_waiting`]. `static_edge` is the
    /// partner's configured route, used instead of DNS. `room`: whether `sip.max_connections`
    /// allows another connection.
    pub fn pump(
        &mut self,
        now: Instant,
        domain: &str,
        static_edge: Option<EdgeAddr>,
        federation: &FederationConfig,
        room: bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let waiting = match self.networks.get_mut(domain) {
            Some(n) => {
                n.last_used = now;
                n.waiting.len()
            }
            None => 0,
        };
        let mut extra: HashMap<ConnId, usize> = HashMap::new();
        let mut tried_open = false;
        for _ in 0..waiting {
            let best = self.least_loaded(domain, now, federation, &extra);
            let busy = best.is_none_or(|(_, load)| load >= self.limits.busy_threshold);
            if busy && !tried_open {
                tried_open = true;
                if !self.connecting(domain, now) {
                    match self.open(now, domain, static_edge.clone(), room) {
                        Ok(Some(action)) => actions.push(action),
                        Ok(None) => {}
                        Err((reason, no_route, limit)) if best.is_none() => {
                            actions.push(Action::Fail {
                                reason,
                                no_route,
                                limit,
                            });
                            return actions;
                        }
                        Err(_) => {}
                    }
                }
            }
            let Some((conn, _)) = best else { break };
            *extra.entry(conn).or_default() += 1;
            actions.push(Action::Send { conn });
        }
        actions
    }

    /// Opens a connection for `domain` if the limits and backoff allow: `Ok(Some)` the action,
    /// `Ok(None)` when a lookup was requested or nothing can be opened right now (limits),
    /// `Err((reason, no_route, limit))` when the domain is unreachable, or no connection may be
    /// opened (`sip.max_connections`, when `room` is false).
    #[allow(clippy::type_complexity)]
    fn open(
        &mut self,
        now: Instant,
        domain: &str,
        static_edge: Option<EdgeAddr>,
        room: bool,
    ) -> Result<Option<Action>, (String, bool, Option<Limit>)> {
        let (network, _) = self.outbound_counts(domain, &self.known_targets(domain, now), None);
        if network >= self.limits.per_network {
            return Ok(None);
        }
        if !room {
            return Err((
                format!(
                    "no connection to {domain}: the edge holds its most connections ({})",
                    Limit::Connections.key()
                ),
                false,
                Some(Limit::Connections),
            ));
        }
        let targets = match static_edge {
            Some(e) => vec![e],
            None => {
                let known = self.with_network(domain, now, |n| match &n.targets {
                    Targets::Known {
                        targets,
                        valid_until,
                    } if *valid_until > now => Ok(targets.clone()),
                    Targets::Failed {
                        reason,
                        valid_until,
                    } if *valid_until > now => Err(Err((reason.clone(), true, None))),
                    Targets::Resolving => Err(Ok(None)),
                    _ => {
                        n.targets = Targets::Resolving;
                        Err(Ok(Some(Action::Resolve {
                            domain: domain.to_owned(),
                        })))
                    }
                });
                match known {
                    Ok(targets) => targets,
                    Err(early) => return early,
                }
            }
        };
        // The peer network is known now (a configured edge, or the SRV answer).
        let (network, _) = self.outbound_counts(domain, &targets, None);
        if network >= self.limits.per_network {
            return Ok(None);
        }
        match self.pick_edge(&targets, domain, now) {
            Ok(edge) => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.with_network(domain, now, |n| n.outbound += 1);
                self.conns.insert(
                    conn,
                    Conn {
                        outbound: Some((domain.to_owned(), edge.clone())),
                        identity: None,
                        pending: 0,
                        avoid_until: None,
                    },
                );
                Ok(Some(Action::Connect {
                    conn,
                    domain: domain.to_owned(),
                    edge,
                }))
            }
            Err(Some(f)) => Err((
                format!(
                    "cannot reach {domain} ({}); next attempt in {} s",
                    f.reason,
                    f.retry_at.saturating_duration_since(now).as_secs().max(1)
                ),
                false,
                None,
            )),
            Err(None) => Ok(None),
        }
    }
}

/// The SRV target names in `targets` while they hold (empty for a failed lookup).
fn srv_of(targets: &Targets, now: Instant) -> Option<Vec<String>> {
    match targets {
        Targets::Known {
            targets,
            valid_until,
        } if *valid_until > now => Some(targets.iter().map(|t| t.host.clone()).collect()),
        Targets::Failed { valid_until, .. } if *valid_until > now => Some(Vec::new()),
        _ => None,
    }
}

/// How long a failed lookup is remembered when DNS gave no TTL.
pub const NEGATIVE_TTL_FLOOR: Duration = Duration::from_secs(5);

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::config::{DefaultPolicy, VerificationLevel};

    fn federation() -> FederationConfig {
        FederationConfig {
            default_policy: DefaultPolicy::Allow,
            partners: vec![],
            discovered_rate: 20,
            verification_level: VerificationLevel::Verified,
        }
    }

    fn srv(names: &[&str]) -> Vec<SrvTarget> {
        names
            .iter()
            .map(|n| SrvTarget {
                priority: 0,
                weight: 0,
                port: 5061,
                target: (*n).into(),
            })
            .collect()
    }

    /// Drives a pool like the edge does: every Connect comes up at once (unless `refuse`
    /// names the host), every Send takes a request. Returns the actions seen.
    fn drive(pool: &mut Pool<u32>, now: Instant, domain: &str, refuse: &[&str]) -> Vec<Action> {
        let fed = federation();
        let mut seen = Vec::new();
        let mut queue = pool.pump(now, domain, None, &fed, true);
        while let Some(a) = queue.pop() {
            seen.push(a.clone());
            match a {
                Action::Send { conn } => {
                    pool.take_waiting(domain).unwrap();
                    pool.add_pending(conn, 1);
                }
                Action::Connect { conn, edge, .. } => {
                    if refuse.contains(&edge.host.as_str()) {
                        pool.failed(now, conn, 0.5, "refused");
                    } else {
                        pool.up(conn, PeerIdentity::from_names([edge.host.as_str()]));
                    }
                    queue.extend(pool.pump(now, domain, None, &fed, true));
                }
                Action::Resolve { .. } | Action::Fail { .. } => {}
            }
        }
        seen
    }

    #[test]
    fn lookup_then_connect_then_send_and_reuse() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        let fed = federation();
        assert_eq!(
            pool.pump(now, "contoso.com", None, &fed, true),
            [Action::Resolve {
                domain: "contoso.com".into()
            }]
        );
        pool.resolved(
            now,
            "contoso.com",
            Ok(srv(&["a.contoso.com", "b.contoso.com"])),
            now + Duration::from_secs(60),
        );
        let seen = drive(&mut pool, now, "contoso.com", &[]);
        assert!(matches!(&seen[0], Action::Connect { edge, .. } if edge.host == "a.contoso.com"));
        assert!(matches!(seen[1], Action::Send { .. }));
        // The next request reuses the connection.
        pool.wait("contoso.com", 2, now + Duration::from_secs(32), now);
        let seen = drive(&mut pool, now, "contoso.com", &[]);
        assert!(matches!(seen[..], [Action::Send { .. }]), "{seen:?}");
    }

    #[test]
    fn fifty_busy_requests_never_open_more_than_four_connections_to_one_edge() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::new(4, 40, 1));
        pool.resolved(
            now,
            "contoso.com",
            Ok(srv(&["sip.contoso.com"])),
            now + Duration::from_secs(60),
        );
        let mut connects = 0;
        for i in 0..50 {
            pool.wait("contoso.com", i, now + Duration::from_secs(32), now);
            let seen = drive(&mut pool, now, "contoso.com", &[]);
            connects += seen
                .iter()
                .filter(|a| matches!(a, Action::Connect { .. }))
                .count();
            assert!(
                seen.iter().any(|a| matches!(a, Action::Send { .. })),
                "request {i} not sent"
            );
        }
        assert_eq!(connects, 4);
        assert_eq!(pool.outbound_counts("contoso.com", &[], None).0, 4);
    }

    /// Every domain in `domains` names the one edge host `sipfed.online.lync.com` in its SRV
    /// record (as every Microsoft 365 tenant does).
    fn hosted(pool: &mut Pool<u32>, now: Instant, domains: &[String]) {
        for d in domains {
            pool.resolved(
                now,
                d,
                Ok(srv(&["sipfed.online.lync.com"])),
                now + Duration::from_secs(60),
            );
        }
    }

    #[test]
    fn domains_served_by_one_edge_host_share_its_four_connections() {
        // Profile: "at most 4 connections to one peer edge server" — counted per edge host,
        // whatever domain a connection was opened for; a connection to the host carries
        // requests for every domain whose SRV target its certificate names.
        let now = Instant::now();
        for n in [2, 100] {
            let domains: Vec<String> = (0..n).map(|i| format!("tenant{i}.example")).collect();
            let mut pool: Pool<u32> = Pool::new(PoolLimits::new(4, 40, 1));
            hosted(&mut pool, now, &domains);
            let mut connects = 0;
            for i in 0..200u32 {
                let d = &domains[i as usize % n];
                pool.wait(d, i, now + Duration::from_secs(32), now);
                let seen = drive(&mut pool, now, d, &[]);
                connects += seen
                    .iter()
                    .filter(|a| matches!(a, Action::Connect { .. }))
                    .count();
                assert!(
                    seen.iter().any(|a| matches!(a, Action::Send { .. })),
                    "request {i} for {d} not sent ({n} domains)"
                );
            }
            assert_eq!(connects, 4, "{n} domains");
            let edge = EdgeAddr {
                host: "sipfed.online.lync.com".into(),
                port: 5061,
            };
            assert_eq!(pool.outbound_counts("other", &[], Some(&edge)).1, 4);
            // The peer network of one tenant holds the connections opened for the others.
            let targets = [edge];
            assert_eq!(pool.outbound_counts(&domains[0], &targets, None).0, 4);
        }
    }

    #[test]
    fn a_connection_opening_to_a_shared_edge_host_serves_the_other_domains_when_up() {
        let now = Instant::now();
        let domains = ["contoso.com".to_owned(), "fabrikam.com".to_owned()];
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        hosted(&mut pool, now, &domains);
        let fed = federation();
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        let [Action::Connect { conn, .. }] = pool.pump(now, "contoso.com", None, &fed, true)[..]
        else {
            panic!()
        };
        // fabrikam.com waits for the connection being opened to its edge host.
        pool.wait("fabrikam.com", 2, now + Duration::from_secs(32), now);
        assert_eq!(pool.pump(now, "fabrikam.com", None, &fed, true), []);
        pool.up(conn, PeerIdentity::from_names(["sipfed.online.lync.com"]));
        assert_eq!(pool.waiting_domains("contoso.com"), ["fabrikam.com"]);
        assert_eq!(
            pool.pump(now, "fabrikam.com", None, &fed, true),
            [Action::Send { conn }]
        );
        // A certificate that does not name the SRV target is not used for the other domain.
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        hosted(&mut pool, now, &domains);
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        let [Action::Connect { conn, .. }] = pool.pump(now, "contoso.com", None, &fed, true)[..]
        else {
            panic!()
        };
        pool.up(conn, PeerIdentity::from_names(["contoso.com"]));
        pool.wait("fabrikam.com", 2, now + Duration::from_secs(32), now);
        assert!(matches!(
            pool.pump(now, "fabrikam.com", None, &fed, true)[..],
            [Action::Connect { conn: other, .. }] if other != conn
        ));
    }

    #[test]
    fn forty_one_edges_get_at_most_forty_connections() {
        let now = Instant::now();
        let names: Vec<String> = (0..41).map(|i| format!("edge{i}.contoso.com")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::new(1, 40, 1));
        pool.resolved(
            now,
            "contoso.com",
            Ok(srv(&refs)),
            now + Duration::from_secs(60),
        );
        for i in 0..200 {
            pool.wait("contoso.com", i, now + Duration::from_secs(32), now);
            drive(&mut pool, now, "contoso.com", &[]);
        }
        assert_eq!(pool.outbound_counts("contoso.com", &[], None).0, 40);
        let last = EdgeAddr {
            host: "edge40.contoso.com".into(),
            port: 5061,
        };
        assert_eq!(pool.outbound_counts("contoso.com", &[], Some(&last)).1, 0);
    }

    #[test]
    fn a_failed_edge_is_skipped_and_when_all_fail_requests_fail_with_the_reason() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.resolved(
            now,
            "contoso.com",
            Ok(srv(&["a.contoso.com", "b.contoso.com"])),
            now + Duration::from_secs(60),
        );
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        let seen = drive(&mut pool, now, "contoso.com", &["a.contoso.com"]);
        let hosts: Vec<&str> = seen
            .iter()
            .filter_map(|a| match a {
                Action::Connect { edge, .. } => Some(edge.host.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(hosts, ["a.contoso.com", "b.contoso.com"]);
        assert!(matches!(seen.last(), Some(Action::Send { .. })));

        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.resolved(
            now,
            "contoso.com",
            Ok(srv(&["a.contoso.com", "b.contoso.com"])),
            now + Duration::from_secs(60),
        );
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        let seen = drive(
            &mut pool,
            now,
            "contoso.com",
            &["a.contoso.com", "b.contoso.com"],
        );
        match seen.last() {
            Some(Action::Fail {
                reason,
                no_route: false,
                limit: None,
            }) => {
                assert!(
                    reason.starts_with("cannot reach contoso.com (a.contoso.com:5061: refused)"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Backoff: a new request within the backoff fails at once, without a connection attempt.
        pool.wait("contoso.com", 2, now + Duration::from_secs(32), now);
        let seen = drive(
            &mut pool,
            now + Duration::from_millis(100),
            "contoso.com",
            &[],
        );
        assert!(matches!(seen[..], [Action::Fail { .. }]), "{seen:?}");
        // After it, the edge is tried again.
        pool.wait("contoso.com", 3, now + Duration::from_secs(32), now);
        let seen = drive(&mut pool, now + Duration::from_secs(2), "contoso.com", &[]);
        assert!(matches!(seen[0], Action::Connect { .. }), "{seen:?}");
    }

    #[test]
    fn no_srv_fails_with_no_route_until_the_answer_expires() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.resolved(
            now,
            "nowhere.example",
            Err("no SRV".into()),
            now + Duration::from_secs(5),
        );
        pool.wait("nowhere.example", 1, now + Duration::from_secs(32), now);
        let seen = drive(&mut pool, now, "nowhere.example", &[]);
        assert_eq!(
            seen,
            [Action::Fail {
                reason: "no SRV".into(),
                no_route: true,
                limit: None
            }]
        );
        pool.take_waiting("nowhere.example");
        pool.wait("nowhere.example", 2, now + Duration::from_secs(32), now);
        let seen = drive(
            &mut pool,
            now + Duration::from_secs(6),
            "nowhere.example",
            &[],
        );
        assert_eq!(
            seen,
            [Action::Resolve {
                domain: "nowhere.example".into()
            }]
        );
    }

    #[test]
    fn an_authorized_inbound_connection_carries_requests_back() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.inbound(7, PeerIdentity::from_names(["sip.fabrikam.com"]));
        pool.inbound(8, PeerIdentity::from_names(["contoso.com"]));
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        let seen = drive(&mut pool, now, "contoso.com", &[]);
        assert_eq!(seen, [Action::Send { conn: 8 }]);
        // Its SRV target names the other one: once known, both qualify; the idler is used.
        pool.resolved(
            now,
            "fabrikam.com",
            Ok(srv(&["sip.fabrikam.com"])),
            now + Duration::from_secs(60),
        );
        pool.wait("fabrikam.com", 2, now + Duration::from_secs(32), now);
        let seen = drive(&mut pool, now, "fabrikam.com", &[]);
        assert_eq!(seen, [Action::Send { conn: 7 }]);
    }

    #[test]
    fn idle_domains_go_with_their_backoff_and_expired_requests_come_back() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.set_idle(Duration::from_secs(10));
        pool.resolved(
            now,
            "contoso.com",
            Ok(srv(&["a.contoso.com"])),
            now + Duration::from_secs(3600),
        );
        pool.wait("contoso.com", 1, now + Duration::from_secs(32), now);
        // The edge fails: the request fails with it, the edge backs off.
        let seen = drive(&mut pool, now, "contoso.com", &["a.contoso.com"]);
        assert!(matches!(seen.last(), Some(Action::Fail { .. })), "{seen:?}");
        assert!(pool.take_waiting("contoso.com").is_some());
        assert_eq!(pool.failures.len(), 1);
        // A request that waits past its deadline comes back from `expire`, at that time.
        pool.wait("contoso.com", 2, now + Duration::from_secs(1), now);
        assert_eq!(pool.next_timer(), Some(now + Duration::from_secs(1)));
        assert!(pool.expire(now + Duration::from_millis(999)).is_empty());
        assert_eq!(
            pool.expire(now + Duration::from_secs(1)),
            [("contoso.com".to_owned(), 2)]
        );
        // Unused for the idle time and no longer backing off: the domain and its edge's
        // backoff are dropped, and nothing is left to time.
        let mut t = now;
        while let Some(at) = pool.next_timer() {
            t = at;
            assert!(pool.expire(t).is_empty());
        }
        assert!(t >= now + Duration::from_secs(10));
        assert_eq!(pool.domains_held(), (0, 0));
        assert!(pool.failures.is_empty());
    }

    /// A peer with a fast DNS server of its own makes the edge look up a new domain every
    /// millisecond for 100 s, each answered NXDOMAIN with a negative TTL of an hour, and the
    /// edge is too busy to fire timers often. The entries never exceed the cap (nor the timer
    /// heap twice the cap), a domain used now and then keeps its state (least recently used
    /// ones go first), and a domain with a waiting request is never dropped.
    #[test]
    fn a_hundred_thousand_looked_up_domains_leave_at_most_the_cap() {
        let t0 = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.wait("waiting.example", 1, t0 + Duration::from_secs(1000), t0);
        let mut most = (0, 0);
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let domain = format!("r{i}.random.example");
            assert!(pool.start_resolving(&domain, now));
            pool.resolved(
                now,
                &domain,
                Err("NXDOMAIN".into()),
                now + Duration::from_secs(3600),
            );
            if i % 1000 == 0 {
                assert!(pool.take_token("kept.example", now, 20));
            }
            if i % 5000 == 0 && pool.next_timer().is_some_and(|t| t <= now) {
                let _ = pool.expire(now);
            }
            let held = pool.domains_held();
            most = (most.0.max(held.0), most.1.max(held.1));
        }
        assert!(most.0 <= MAX_DOMAINS, "held {most:?}");
        assert!(most.1 <= 2 * MAX_DOMAINS + 65, "held {most:?}");
        assert!(pool.networks.contains_key("kept.example"));
        assert!(pool.networks["kept.example"].bucket.is_some());
        assert!(pool.networks.contains_key("waiting.example"));
        assert!(!pool.networks.contains_key("r0.random.example"));
    }

    /// A failed lookup (no SRV record, NXDOMAIN) for a domain that carried no traffic is kept
    /// until its negative answer expires, and at most `MAX_NEGATIVE_KEEP`, not for the idle
    /// time; a successful one, or one whose domain sent requests (a rate bucket), is kept for
    /// the idle time.
    #[test]
    fn a_failed_lookup_without_traffic_is_kept_only_for_its_capped_negative_ttl() {
        let t0 = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.set_idle(Duration::from_secs(300));
        let hour = t0 + Duration::from_secs(3600);
        pool.resolved(t0, "nx.example", Err("NXDOMAIN".into()), hour);
        pool.resolved(
            t0,
            "short.example",
            Err("no SRV".into()),
            t0 + Duration::from_secs(5),
        );
        pool.resolved(t0, "ok.example", Ok(srv(&["sip.ok.example"])), hour);
        assert!(pool.take_token("busy.example", t0, 20));
        pool.resolved(t0, "busy.example", Err("no SRV".into()), hour);
        let held = |pool: &Pool<u32>| {
            let mut d: Vec<String> = pool.networks.keys().cloned().collect();
            d.sort();
            d
        };
        let run = |pool: &mut Pool<u32>, until: Instant| {
            while let Some(t) = pool.next_timer().filter(|t| *t <= until) {
                assert!(pool.expire(t).is_empty());
            }
        };
        run(&mut pool, t0 + Duration::from_secs(5));
        assert_eq!(held(&pool), ["busy.example", "nx.example", "ok.example"]);
        run(&mut pool, t0 + MAX_NEGATIVE_KEEP);
        assert_eq!(held(&pool), ["busy.example", "ok.example"]);
        run(&mut pool, t0 + Duration::from_secs(300));
        assert!(pool.networks.is_empty());
        assert_eq!(pool.domains_held(), (0, 0));
    }

    /// When every entry is in use nothing is dropped, and the walk for unused ones is not
    /// repeated for each new entry.
    #[test]
    fn domains_in_use_are_never_evicted() {
        let t0 = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.set_max_domains(8);
        for i in 0..12 {
            assert!(pool.start_resolving(&format!("busy{i}.example"), t0));
        }
        // Nothing could be dropped; the next walk waits for another quarter of the cap (two
        // walks for these four entries over it, at 8 and 10).
        assert_eq!(pool.domains_held().0, 12);
        assert_eq!(pool.evict_at, 12);
        for i in 0..12 {
            pool.resolved(t0, &format!("busy{i}.example"), Err("x".into()), t0);
        }
        // Now unused: the next new entry drops them down to three quarters of the cap.
        pool.resolved(t0, "new.example", Err("x".into()), t0);
        assert_eq!(pool.domains_held().0, 7);
        assert_eq!(pool.evict_at, 8);
    }
}
