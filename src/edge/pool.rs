//! Which connection an outbound request takes, without I/O: the profile's connection policy
//! ("Transport and security": at most 4 connections to one peer edge server and at most 40 to
//! one peer network, reused), SRV fail-over in RFC 2782 order, and per-edge backoff after
//! failures.
//!
//! The pool knows every connection of the edge: outbound ones it opened (to one `host:port`
//! edge of one peer domain) and authenticated inbound ones (whose certificate identity may
//! carry requests back to the domains it is authorized for). For a request to domain `D` it
//! picks the least-loaded usable connection; a new outbound connection is opened only when no
//! connection is usable, or every usable one has `busy_threshold` requests outstanding and the
//! limits allow another. Requests waiting for a connection stay in the pool (they are the
//! caller's, returned by [`Pool::take_waiting`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::FederationConfig;
use crate::policy::{Backoff, PeerIdentity, SrvTarget};
use crate::sip::transaction::ConnId;

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
    waiting: VecDeque<W>,
}

impl<W> Default for Network<W> {
    fn default() -> Self {
        Network {
            targets: Targets::Unknown,
            waiting: VecDeque::new(),
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
    /// there is no edge (rather than the edges failing).
    Fail { reason: String, no_route: bool },
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
    next_conn: ConnId,
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
            next_conn: OUTBOUND_CONN_BASE,
        }
    }

    pub fn set_limits(&mut self, limits: PoolLimits) {
        self.limits = limits;
    }

    /// An authenticated inbound connection.
    pub fn inbound(&mut self, conn: ConnId, identity: PeerIdentity) {
        self.conns.insert(
            conn,
            Conn {
                outbound: None,
                identity: Some(identity),
                pending: 0,
            },
        );
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

    /// Outbound connections (opening or up) to `domain`, and to `edge` among them.
    pub fn outbound_counts(&self, domain: &str, edge: Option<&EdgeAddr>) -> (usize, usize) {
        let mut network = 0;
        let mut to_edge = 0;
        for (d, e) in self.conns.values().filter_map(|c| c.outbound.as_ref()) {
            if d == domain {
                network += 1;
                if Some(e) == edge {
                    to_edge += 1;
                }
            }
        }
        (network, to_edge)
    }

    /// The SRV target names known for `domain` (for authorizing inbound certificates).
    pub fn srv_names(&self, domain: &str, now: Instant) -> Option<Vec<String>> {
        match &self.networks.get(domain)?.targets {
            Targets::Known {
                targets,
                valid_until,
            } if *valid_until > now => Some(targets.iter().map(|t| t.host.clone()).collect()),
            Targets::Failed { valid_until, .. } if *valid_until > now => Some(Vec::new()),
            _ => None,
        }
    }

    /// Whether a lookup for `domain` is under way.
    pub fn resolving(&self, domain: &str) -> bool {
        matches!(
            self.networks.get(domain).map(|n| &n.targets),
            Some(Targets::Resolving)
        )
    }

    /// Starts a lookup for `domain` unless one is running; true if the caller must resolve.
    pub fn start_resolving(&mut self, domain: &str) -> bool {
        let n = self.networks.entry(domain.to_owned()).or_default();
        if matches!(n.targets, Targets::Resolving) {
            return false;
        }
        n.targets = Targets::Resolving;
        true
    }

    /// Queues a request for `domain` until a connection can take it.
    pub fn wait(&mut self, domain: &str, w: W) {
        self.networks
            .entry(domain.to_owned())
            .or_default()
            .waiting
            .push_back(w);
    }

    /// Waiting requests of every domain, for deadline checks.
    pub fn waiting_mut(&mut self) -> impl Iterator<Item = (&str, &mut VecDeque<W>)> {
        self.networks
            .iter_mut()
            .map(|(d, n)| (d.as_str(), &mut n.waiting))
    }

    /// The first waiting request of `domain`.
    pub fn take_waiting(&mut self, domain: &str) -> Option<W> {
        self.networks.get_mut(domain)?.waiting.pop_front()
    }

    /// The result of a lookup: targets in the order to try them (RFC 2782 order already
    /// applied), or why there are none; both are kept until `valid_until` (the DNS TTL).
    pub fn resolved(
        &mut self,
        domain: &str,
        result: Result<Vec<SrvTarget>, String>,
        valid_until: Instant,
    ) {
        let n = self.networks.entry(domain.to_owned()).or_default();
        n.targets = match result {
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
    }

    /// Outbound connection `conn` completed TLS with `identity`.
    pub fn up(&mut self, conn: ConnId, identity: PeerIdentity) -> Option<String> {
        let c = self.conns.get_mut(&conn)?;
        c.identity = Some(identity);
        let (domain, edge) = c.outbound.clone()?;
        self.failures.remove(&edge);
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

    /// A connection closed (after being up); returns the domain of an outbound one.
    pub fn closed(&mut self, conn: ConnId) -> Option<String> {
        self.conns
            .remove(&conn)
            .and_then(|c| c.outbound)
            .map(|(d, _)| d)
    }

    /// The least-loaded up connection that may carry requests to `domain`, counting `extra`
    /// requests already assigned: outbound ones opened for it, and inbound ones whose
    /// certificate is authorized for it (SAN = domain, SAN = an SRV target, or the partner's
    /// configured edge).
    fn least_loaded(
        &self,
        domain: &str,
        now: Instant,
        federation: &FederationConfig,
        extra: &HashMap<ConnId, usize>,
    ) -> Option<(ConnId, usize)> {
        let srv = self.srv_names(domain, now).unwrap_or_default();
        self.conns
            .iter()
            .filter(|(_, c)| match (&c.outbound, &c.identity) {
                (_, None) => false,
                (Some((d, _)), Some(_)) => d == domain,
                (None, Some(id)) => id.covers(domain, &srv, federation),
            })
            .map(|(id, c)| (*id, c.pending + extra.get(id).copied().unwrap_or(0)))
            .min_by_key(|&(id, load)| (load, id))
    }

    fn connecting(&self, domain: &str) -> bool {
        self.conns
            .values()
            .any(|c| c.identity.is_none() && c.outbound.as_ref().is_some_and(|(d, _)| d == domain))
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
            let (_, to_edge) = self.outbound_counts(domain, Some(t));
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
    /// partner's configured route, used instead of DNS.
    pub fn pump(
        &mut self,
        now: Instant,
        domain: &str,
        static_edge: Option<EdgeAddr>,
        federation: &FederationConfig,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let waiting = self.networks.get(domain).map_or(0, |n| n.waiting.len());
        let mut extra: HashMap<ConnId, usize> = HashMap::new();
        let mut tried_open = false;
        for _ in 0..waiting {
            let best = self.least_loaded(domain, now, federation, &extra);
            let busy = best.is_none_or(|(_, load)| load >= self.limits.busy_threshold);
            if busy && !tried_open {
                tried_open = true;
                if !self.connecting(domain) {
                    match self.open(now, domain, static_edge.clone()) {
                        Ok(Some(action)) => actions.push(action),
                        Ok(None) => {}
                        Err((reason, no_route)) if best.is_none() => {
                            actions.push(Action::Fail { reason, no_route });
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
    /// `Err((reason, no_route))` when the domain is unreachable.
    fn open(
        &mut self,
        now: Instant,
        domain: &str,
        static_edge: Option<EdgeAddr>,
    ) -> Result<Option<Action>, (String, bool)> {
        let (network, _) = self.outbound_counts(domain, None);
        if network >= self.limits.per_network {
            return Ok(None);
        }
        let targets = match static_edge {
            Some(e) => vec![e],
            None => {
                let n = self.networks.entry(domain.to_owned()).or_default();
                match &n.targets {
                    Targets::Known {
                        targets,
                        valid_until,
                    } if *valid_until > now => targets.clone(),
                    Targets::Failed {
                        reason,
                        valid_until,
                    } if *valid_until > now => return Err((reason.clone(), true)),
                    Targets::Resolving => return Ok(None),
                    _ => {
                        n.targets = Targets::Resolving;
                        return Ok(Some(Action::Resolve {
                            domain: domain.to_owned(),
                        }));
                    }
                }
            }
        };
        match self.pick_edge(&targets, domain, now) {
            Ok(edge) => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(
                    conn,
                    Conn {
                        outbound: Some((domain.to_owned(), edge.clone())),
                        identity: None,
                        pending: 0,
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
            )),
            Err(None) => Ok(None),
        }
    }
}

/// How long a failed lookup is remembered when DNS gave no TTL.
pub const NEGATIVE_TTL_FLOOR: Duration = Duration::from_secs(5);

#[cfg(test)]
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
        let mut queue = pool.pump(now, domain, None, &fed);
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
                    queue.extend(pool.pump(now, domain, None, &fed));
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
        pool.wait("contoso.com", 1);
        let fed = federation();
        assert_eq!(
            pool.pump(now, "contoso.com", None, &fed),
            [Action::Resolve {
                domain: "contoso.com".into()
            }]
        );
        pool.resolved(
            "contoso.com",
            Ok(srv(&["a.contoso.com", "b.contoso.com"])),
            now + Duration::from_secs(60),
        );
        let seen = drive(&mut pool, now, "contoso.com", &[]);
        assert!(matches!(&seen[0], Action::Connect { edge, .. } if edge.host == "a.contoso.com"));
        assert!(matches!(seen[1], Action::Send { .. }));
        // The next request reuses the connection.
        pool.wait("contoso.com", 2);
        let seen = drive(&mut pool, now, "contoso.com", &[]);
        assert!(matches!(seen[..], [Action::Send { .. }]), "{seen:?}");
    }

    #[test]
    fn fifty_busy_requests_never_open_more_than_four_connections_to_one_edge() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::new(4, 40, 1));
        pool.resolved(
            "contoso.com",
            Ok(srv(&["sip.contoso.com"])),
            now + Duration::from_secs(60),
        );
        let mut connects = 0;
        for i in 0..50 {
            pool.wait("contoso.com", i);
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
        assert_eq!(pool.outbound_counts("contoso.com", None).0, 4);
    }

    #[test]
    fn forty_one_edges_get_at_most_forty_connections() {
        let now = Instant::now();
        let names: Vec<String> = (0..41).map(|i| format!("edge{i}.contoso.com")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::new(1, 40, 1));
        pool.resolved("contoso.com", Ok(srv(&refs)), now + Duration::from_secs(60));
        for i in 0..200 {
            pool.wait("contoso.com", i);
            drive(&mut pool, now, "contoso.com", &[]);
        }
        assert_eq!(pool.outbound_counts("contoso.com", None).0, 40);
        let last = EdgeAddr {
            host: "edge40.contoso.com".into(),
            port: 5061,
        };
        assert_eq!(pool.outbound_counts("contoso.com", Some(&last)).1, 0);
    }

    #[test]
    fn a_failed_edge_is_skipped_and_when_all_fail_requests_fail_with_the_reason() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.resolved(
            "contoso.com",
            Ok(srv(&["a.contoso.com", "b.contoso.com"])),
            now + Duration::from_secs(60),
        );
        pool.wait("contoso.com", 1);
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
            "contoso.com",
            Ok(srv(&["a.contoso.com", "b.contoso.com"])),
            now + Duration::from_secs(60),
        );
        pool.wait("contoso.com", 1);
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
            }) => {
                assert!(
                    reason.starts_with("cannot reach contoso.com (a.contoso.com:5061: refused)"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Backoff: a new request within the backoff fails at once, without a connection attempt.
        pool.wait("contoso.com", 2);
        let seen = drive(
            &mut pool,
            now + Duration::from_millis(100),
            "contoso.com",
            &[],
        );
        assert!(matches!(seen[..], [Action::Fail { .. }]), "{seen:?}");
        // After it, the edge is tried again.
        pool.wait("contoso.com", 3);
        let seen = drive(&mut pool, now + Duration::from_secs(2), "contoso.com", &[]);
        assert!(matches!(seen[0], Action::Connect { .. }), "{seen:?}");
    }

    #[test]
    fn no_srv_fails_with_no_route_until_the_answer_expires() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(PoolLimits::default());
        pool.resolved(
            "nowhere.example",
            Err("no SRV".into()),
            now + Duration::from_secs(5),
        );
        pool.wait("nowhere.example", 1);
        let seen = drive(&mut pool, now, "nowhere.example", &[]);
        assert_eq!(
            seen,
            [Action::Fail {
                reason: "no SRV".into(),
                no_route: true
            }]
        );
        pool.take_waiting("nowhere.example");
        pool.wait("nowhere.example", 2);
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
        pool.wait("contoso.com", 1);
        let seen = drive(&mut pool, now, "contoso.com", &[]);
        assert_eq!(seen, [Action::Send { conn: 8 }]);
        // Its SRV target names the other one: once known, both qualify; the idler is used.
        pool.resolved(
            "fabrikam.com",
            Ok(srv(&["sip.fabrikam.com"])),
            now + Duration::from_secs(60),
        );
        pool.wait("fabrikam.com", 2);
        let seen = drive(&mut pool, now, "fabrikam.com", &[]);
        assert_eq!(seen, [Action::Send { conn: 7 }]);
    }
}
