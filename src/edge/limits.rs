//! Bounds on what peers can make the edge hold, without I/O: concurrent DNS lookups, idle
//! per-domain state, TLS handshakes in progress, connections per source address, per
//! certificate identity and in total, and each connection's unsent bytes. Every peer is
//! hostile, an authenticated federation partner included: none of these may grow with what a
//! peer sends. Anyone who can reach the port gets a TLS handshake and nothing else: handshakes
//! in progress have their own bound (`sip.max_handshakes`), and only authenticated and outbound
//! connections count toward `sip.max_connections`, so connections that never authenticate can
//! take neither an authenticated partner's place nor the bridge's own outbound ones.
//!
//! The decisions are here and in [`crate::edge::core::EdgeCore`] (which limit applies, what
//! to answer); `server.rs` only carries them out, logs each over-limit event once with
//! `limit = "<config key>"`, and counts it in [`LimitCounters`].
//!
//! The connection ceilings follow the federation profile ("Transport and security": at most 4
//! connections to one peer edge server and 40 to one peer network); the answer to a request
//! the edge cannot take now is 503 with Retry-After (RFC 3261 §21.5.4).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::edge::identity::PeerIdentity;
use crate::sip::transaction::ConnId;

/// One of the edge's resource limits; [`Limit::key`] is its configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// DNS lookups under way, all peers together (`sip.max_dns_lookups`).
    DnsLookups,
    /// DNS lookups under way started by the requests of one peer certificate identity, over
    /// all its connections, until each lookup ends (`sip.max_dns_lookups_per_peer`).
    DnsLookupsPerPeer,
    /// Inbound connections in their TLS handshake (`sip.max_handshakes`).
    Handshakes,
    /// Inbound connections from one source: an IPv4 address or an IPv6 /64
    /// (`sip.max_connections_per_address`).
    ConnectionsPerAddress,
    /// Inbound connections with one certificate identity (`sip.max_connections_per_identity`).
    ConnectionsPerIdentity,
    /// Authenticated inbound connections and outbound ones (`sip.max_connections`).
    Connections,
    /// Bytes queued unsent to one connection (`sip.max_write_backlog_bytes`).
    WriteBacklog,
}

impl Limit {
    pub const ALL: [Limit; 7] = [
        Limit::DnsLookups,
        Limit::DnsLookupsPerPeer,
        Limit::Handshakes,
        Limit::ConnectionsPerAddress,
        Limit::ConnectionsPerIdentity,
        Limit::Connections,
        Limit::WriteBacklog,
    ];

    /// The configuration key that sets it (what logs and 503 reasons name).
    pub fn key(self) -> &'static str {
        match self {
            Limit::DnsLookups => "sip.max_dns_lookups",
            Limit::DnsLookupsPerPeer => "sip.max_dns_lookups_per_peer",
            Limit::Handshakes => "sip.max_handshakes",
            Limit::ConnectionsPerAddress => "sip.max_connections_per_address",
            Limit::ConnectionsPerIdentity => "sip.max_connections_per_identity",
            Limit::Connections => "sip.max_connections",
            Limit::WriteBacklog => "sip.max_write_backlog_bytes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// The limits' values (`[sip]` in the configuration, which defines them).
pub use crate::config::EdgeLimits;

/// How many times each limit was hit since the start: one place for a metrics endpoint to
/// read, and logged when the edge shuts down. Shared by the edge's tasks (relaxed atomics;
/// only counts).
#[derive(Debug, Default)]
pub struct LimitCounters {
    hits: [AtomicU64; Limit::ALL.len()],
}

impl LimitCounters {
    pub fn hit(&self, limit: Limit) {
        self.hits[limit.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.hits[limit.index()].load(Ordering::Relaxed)
    }

    /// Every limit's key and count, in [`Limit::ALL`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Limit::ALL.iter().map(|l| (l.key(), self.get(*l))).collect()
    }

    /// The limits hit so far as `key=count` (the others left out), or `none`: for the log
    /// line at shutdown.
    pub fn summary(&self) -> String {
        summary(self.snapshot())
    }
}

/// Limits hit as `key=count` (those never hit left out), or `none`.
pub fn summary<'a>(hits: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let hits: Vec<String> = hits
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(key, n)| format!("{key}={n}"))
        .collect();
    if hits.is_empty() {
        "none".to_owned()
    } else {
        hits.join(" ")
    }
}

/// An over-limit event: which limit, and about what (for the one log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub limit: Limit,
    /// The connection concerned, if any.
    pub conn: Option<ConnId>,
    /// What was refused, for the log: a domain, an address, an identity.
    pub detail: String,
    /// What the edge does about it, for the log.
    pub action: &'static str,
}

/// What a source address counts as for `sip.max_connections_per_address`: an IPv4 address,
/// or an IPv6 /64. An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, RFC 4291 §2.5.5.2, what a
/// dual-stack listener reports for IPv4 peers) is its IPv4 address. An IPv6 /64 is one
/// subnet (RFC 4291 §2.5.1: 64-bit interface identifiers), which one host usually holds
/// whole, so counting each /128 would give it 2^64 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The edge's connections as the limits see them: inbound ones in their TLS handshake (by
/// source), authenticated inbound ones (by source and certificate identity), and outbound
/// ones. Handshakes in progress are bounded by `sip.max_handshakes` and do not count toward
/// `sip.max_connections`: a flood of connections that never authenticate fills only the
/// handshake slots, never the room of authenticated partners or of the bridge's own outbound
/// connections.
#[derive(Debug, Default)]
pub struct Connections {
    handshaking: HashMap<ConnId, Source>,
    inbound: HashMap<ConnId, (Source, PeerIdentity)>,
    outbound: HashSet<ConnId>,
    by_source: HashMap<Source, usize>,
    by_identity: HashMap<PeerIdentity, usize>,
}

impl Connections {
    /// Connections counted by `sip.max_connections`: authenticated inbound ones and outbound
    /// ones (opening or up).
    pub fn total(&self) -> usize {
        self.inbound.len() + self.outbound.len()
    }

    /// Inbound connections in their TLS handshake.
    pub fn handshakes(&self) -> usize {
        self.handshaking.len()
    }

    /// Whether another connection (of either direction) fits under `sip.max_connections`.
    pub fn room(&self, limits: &EdgeLimits) -> bool {
        self.total() < limits.max_connections
    }

    /// A TCP connection from `ip` was accepted as `conn`: its handshake may start, or the limit
    /// it is over (the connection must then be closed before its handshake): handshakes in
    /// progress, connections in total (it could not be kept after its handshake), connections
    /// from its source.
    pub fn accept(&mut self, conn: ConnId, ip: IpAddr, limits: &EdgeLimits) -> Result<(), Limit> {
        if self.handshaking.len() >= limits.max_handshakes {
            return Err(Limit::Handshakes);
        }
        if !self.room(limits) {
            return Err(Limit::Connections);
        }
        let source = Source::of(ip);
        let n = self.by_source.get(&source).copied().unwrap_or(0);
        if n >= limits.max_connections_per_address {
            return Err(Limit::ConnectionsPerAddress);
        }
        self.by_source.insert(source, n + 1);
        self.handshaking.insert(conn, source);
        Ok(())
    }

    /// Inbound `conn` completed its handshake with `identity`: it now counts as a connection,
    /// or is over the identity's limit or the total (the connection must then be closed; it
    /// stays counted as a handshake until [`Self::release`]). A `conn` not accepted here is
    /// left alone.
    pub fn identified(
        &mut self,
        conn: ConnId,
        identity: &PeerIdentity,
        limits: &EdgeLimits,
    ) -> Result<(), Limit> {
        let Some(source) = self.handshaking.get(&conn).copied() else {
            return Ok(());
        };
        let n = self.by_identity.get(identity).copied().unwrap_or(0);
        if n >= limits.max_connections_per_identity {
            return Err(Limit::ConnectionsPerIdentity);
        }
        if !self.room(limits) {
            return Err(Limit::Connections);
        }
        self.handshaking.remove(&conn);
        self.inbound.insert(conn, (source, identity.clone()));
        self.by_identity.insert(identity.clone(), n + 1);
        Ok(())
    }

    /// An outbound connection is being opened.
    pub fn outbound(&mut self, conn: ConnId) {
        self.outbound.insert(conn);
    }

    /// `conn` is gone (closed, refused, or its handshake or connect failed). Idempotent.
    pub fn release(&mut self, conn: ConnId) {
        if self.outbound.remove(&conn) {
            return;
        }
        if let Some(source) = self.handshaking.remove(&conn) {
            decrement(&mut self.by_source, &source);
        } else if let Some((source, identity)) = self.inbound.remove(&conn) {
            decrement(&mut self.by_source, &source);
            decrement(&mut self.by_identity, &identity);
        }
    }

    /// Inbound connections from `ip`'s source, and with `identity`.
    #[cfg(test)]
    pub fn counts(&self, ip: IpAddr, identity: &PeerIdentity) -> (usize, usize) {
        (
            self.by_source.get(&Source::of(ip)).copied().unwrap_or(0),
            self.by_identity.get(identity).copied().unwrap_or(0),
        )
    }
}

/// Counts one less for `key`, dropping its entry at zero.
pub(crate) fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// Where a connection's write backlog stands after queueing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// At most an eighth of the limit: read on.
    Ok,
    /// Over an eighth of the limit: stop reading the peer until it has read enough of what it
    /// was sent (TCP then slows a peer that sends without reading). The rest of the limit is
    /// room for bursts of the bridge's own requests (a presence change notified to hundreds of
    /// watchers on one connection) while a peer that reads takes them.
    Pause,
    /// Over the limit: the peer does not read; close the connection.
    Full,
}

/// The state of a backlog of `queued` bytes under a limit of `max`.
pub fn backlog(queued: usize, max: usize) -> Backlog {
    if queued > max {
        Backlog::Full
    } else if queued > max / 8 {
        Backlog::Pause
    } else {
        Backlog::Ok
    }
}

/// After reading was paused for `sip.message_timeout_secs`: whether the peer is the cause
/// (over an eighth of the limit still unsent: it reads nothing) and the connection must be
/// closed, rather than the edge's core being behind on the frames already read.
pub fn not_reading(unsent: usize, max: usize) -> bool {
    backlog(unsent, max) != Backlog::Ok
}

/// One connection's backlog as its reader, writer and the edge's core task share it: bytes
/// queued unsent (`sip.max_write_backlog_bytes` bounds them, counted in bytes, not messages: a
/// burst of the bridge's own requests can queue thousands of small messages to a peer that
/// reads fine) and bytes of frames read and not yet processed by the core (they count toward
/// pausing: the core's input queue is shared and bounded only in messages).
///
/// The writer and the core bring the backlog down concurrently, each decrementing its own
/// counter. Whether a paused reader must be woken is decided from fresh loads of both counters
/// after the decrement and from the reader's `paused` flag, never from a "before" value: each
/// side's "before" may already include the other's decrement, and then neither would see the
/// backlog cross half the limit. The reader sets `paused` before it checks the backlog, and
/// every decrement checks `paused` after it (sequentially consistent), so at least one of them
/// sees the other: the reader does not wait, or it is woken.
#[derive(Debug)]
pub struct BacklogCounters {
    queued: AtomicUsize,
    inflight: AtomicUsize,
    paused: AtomicBool,
    /// `sip.max_write_backlog_bytes` when the connection was made.
    max: usize,
}

impl BacklogCounters {
    pub fn new(max: usize) -> BacklogCounters {
        BacklogCounters {
            queued: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes queued unsent.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Unsent bytes and frames not yet processed together, against the limit: whether to read
    /// on.
    pub fn state(&self) -> Backlog {
        backlog(
            self.queued.load(Ordering::SeqCst) + self.inflight.load(Ordering::SeqCst),
            self.max,
        )
    }

    /// Counts `len` bytes queued for the writer: false, and nothing counted, when the unsent
    /// bytes would be over the limit (the peer does not read).
    pub fn try_queue(&self, len: usize) -> bool {
        let queued = self
            .queued
            .fetch_add(len, Ordering::SeqCst)
            .saturating_add(len);
        if backlog(queued, self.max) == Backlog::Full {
            self.sub(&self.queued, len);
            return false;
        }
        true
    }

    /// A frame of `size` bytes was read and handed to the core.
    pub fn read(&self, size: usize) {
        self.inflight.fetch_add(size, Ordering::SeqCst);
    }

    /// The writer wrote `len` queued bytes: true when a paused reader must be woken.
    pub fn written(&self, len: usize) -> bool {
        self.sub(&self.queued, len);
        self.wake()
    }

    /// The core processed a frame of `size` bytes: true when a paused reader must be woken.
    pub fn processed(&self, size: usize) -> bool {
        self.sub(&self.inflight, size);
        self.wake()
    }

    /// The reader is about to wait for the backlog to come down: marks it paused, then returns
    /// the state (wait only while it is not [`Backlog::Ok`]).
    pub fn pause(&self) -> Backlog {
        self.paused.store(true, Ordering::SeqCst);
        self.state()
    }

    /// The reader reads again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// The decision after a decrement: the reader is paused and the backlog, as it is now, is
    /// at or below half the limit.
    fn wake(&self) -> bool {
        self.paused.load(Ordering::SeqCst) && self.state() == Backlog::Ok
    }

    fn sub(&self, counter: &AtomicUsize, n: usize) {
        let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EdgeLimits {
        EdgeLimits {
            max_handshakes: 3,
            max_connections_per_address: 2,
            max_connections_per_identity: 2,
            max_connections: 4,
            ..EdgeLimits::DEFAULT
        }
    }

    #[test]
    fn keys_are_the_configuration_keys() {
        let keys: Vec<&str> = Limit::ALL.iter().map(|l| l.key()).collect();
        assert_eq!(
            keys,
            [
                "sip.max_dns_lookups",
                "sip.max_dns_lookups_per_peer",
                "sip.max_handshakes",
                "sip.max_connections_per_address",
                "sip.max_connections_per_identity",
                "sip.max_connections",
                "sip.max_write_backlog_bytes",
            ]
        );
        let c = LimitCounters::default();
        assert_eq!(c.summary(), "none");
        c.hit(Limit::Connections);
        c.hit(Limit::Connections);
        c.hit(Limit::WriteBacklog);
        assert_eq!(c.get(Limit::Connections), 2);
        assert_eq!(c.snapshot()[6], ("sip.max_write_backlog_bytes", 1));
        assert_eq!(
            c.summary(),
            "sip.max_connections=2 sip.max_write_backlog_bytes=1"
        );
    }

    #[test]
    fn per_address_per_identity_and_total() {
        let l = limits();
        let mut c = Connections::default();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let id = PeerIdentity::from_names(["sip.contoso.com"]);
        let other = PeerIdentity::from_names(["sip.fabrikam.com"]);
        assert_eq!(c.accept(1, a, &l), Ok(()));
        assert_eq!(c.accept(2, a, &l), Ok(()));
        assert_eq!(c.accept(3, a, &l), Err(Limit::ConnectionsPerAddress));
        assert_eq!(c.accept(3, b, &l), Ok(()));
        assert_eq!(c.identified(1, &id, &l), Ok(()));
        assert_eq!(c.identified(2, &id, &l), Ok(()));
        assert_eq!(c.identified(3, &id, &l), Err(Limit::ConnectionsPerIdentity));
        assert_eq!(c.counts(a, &id), (2, 2));
        // Authenticated and outbound connections count in the total: with 4, a connection
        // that completes its handshake is refused, and no new one is accepted.
        assert_eq!(c.identified(3, &other, &l), Ok(()));
        c.outbound(1 << 40);
        assert_eq!(c.total(), 4);
        assert!(!c.room(&l));
        assert_eq!(c.accept(4, b, &l), Err(Limit::Connections));
        // Releasing frees every count, once.
        c.release(1);
        c.release(1);
        c.release(3);
        assert_eq!(c.counts(a, &id), (1, 1));
        assert_eq!(c.accept(4, b, &l), Ok(()));
        c.release(1 << 40);
        c.release(2);
        c.release(4);
        assert_eq!((c.total(), c.handshakes()), (0, 0));
        assert!(c.by_source.is_empty() && c.by_identity.is_empty());
    }

    /// Connections that never finish their handshake (anyone can open them, with no
    /// certificate) fill only `sip.max_handshakes`: authenticated partners and the bridge's
    /// outbound connections keep all of `sip.max_connections`.
    #[test]
    fn handshakes_in_progress_have_their_own_bound() {
        let l = EdgeLimits {
            max_handshakes: 3,
            max_connections_per_address: 10,
            max_connections: 2,
            ..EdgeLimits::DEFAULT
        };
        let mut c = Connections::default();
        let flood: IpAddr = [198, 51, 100, 7].into();
        let partner: IpAddr = [192, 0, 2, 1].into();
        assert_eq!(c.accept(1, flood, &l), Ok(()));
        assert_eq!(c.accept(2, flood, &l), Ok(()));
        // More handshakes than `max_connections` are under way, and none of them counts there.
        assert_eq!(c.total(), 0);
        assert!(c.room(&l));
        // The bridge can still connect out.
        c.outbound(1 << 40);
        assert!(c.room(&l));
        // A partner's connection takes the last handshake slot, and keeps its place once
        // authenticated.
        assert_eq!(c.accept(3, partner, &l), Ok(()));
        assert_eq!(c.accept(4, flood, &l), Err(Limit::Handshakes));
        assert_eq!(
            c.identified(3, &PeerIdentity::from_names(["sip.contoso.com"]), &l),
            Ok(())
        );
        assert_eq!((c.total(), c.handshakes()), (2, 2));
        // Now the total is reached: a new connection is refused at accept (it could not be
        // kept), one already in its handshake after it.
        assert_eq!(c.accept(4, flood, &l), Err(Limit::Connections));
        assert_eq!(
            c.identified(1, &PeerIdentity::from_names(["x.example"]), &l),
            Err(Limit::Connections)
        );
        c.release(1);
        c.release(2);
        assert_eq!(c.handshakes(), 0);
        assert_eq!(c.counts(flood, &PeerIdentity::default()).0, 0);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let l = limits();
        let mut c = Connections::default();
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        // Two addresses of one /64 are one source.
        assert_eq!(c.accept(1, v6("2001:db8:1:2::1"), &l), Ok(()));
        assert_eq!(c.accept(2, v6("2001:db8:1:2:ffff::9"), &l), Ok(()));
        assert_eq!(
            c.accept(3, v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), &l),
            Err(Limit::ConnectionsPerAddress)
        );
        // Another /64 is another source.
        assert_eq!(c.accept(3, v6("2001:db8:1:3::1"), &l), Ok(()));
        c.release(1);
        c.release(2);
        c.release(3);
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(c.accept(4, v6("::ffff:192.0.2.1"), &l), Ok(()));
        assert_eq!(c.accept(5, [192, 0, 2, 1].into(), &l), Ok(()));
        assert_eq!(
            c.accept(6, v6("::ffff:192.0.2.1"), &l),
            Err(Limit::ConnectionsPerAddress)
        );
        assert_eq!(Source::of(v6("::ffff:192.0.2.1")).to_string(), "192.0.2.1");
        assert_eq!(
            Source::of(v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn backlog_pauses_at_an_eighth_and_is_full_over_the_limit() {
        assert_eq!(backlog(0, 1000), Backlog::Ok);
        assert_eq!(backlog(125, 1000), Backlog::Ok);
        assert_eq!(backlog(126, 1000), Backlog::Pause);
        assert_eq!(backlog(1000, 1000), Backlog::Pause);
        assert_eq!(backlog(1001, 1000), Backlog::Full);
        assert!(!not_reading(125, 1000));
        assert!(not_reading(126, 1000));
        let b = BacklogCounters::new(1000);
        assert!(b.try_queue(1000));
        assert!(!b.try_queue(1));
        assert_eq!(b.queued(), 1000);
        assert_eq!(b.state(), Backlog::Pause);
    }

    /// The writer and the core bring a paused connection's backlog down at the same time, each
    /// its own counter. Here the core's decrement lands just before the writer's, and the core
    /// decides after the writer: each side's decision sees the other's decrement already
    /// applied. Deciding from "before → after" (the backlog crossed an eighth of the limit
    /// with this decrement), neither saw a crossing (before 400 + 100 = 500 for the writer,
    /// 100 + 400 for the core: already at an eighth of 4,000) and the reader slept until
    /// `sip.message_timeout_secs`.
    /// Deciding from the state after the decrement while the reader is paused, both wake it.
    #[test]
    fn a_paused_reader_is_woken_whichever_side_brings_the_backlog_down() {
        let b = BacklogCounters::new(4000);
        assert!(b.try_queue(400));
        b.read(400);
        assert_eq!(b.pause(), Backlog::Pause);
        // The core's decrement, its decision still to come.
        b.sub(&b.inflight, 300);
        // The writer's whole step: decrement, then decide.
        assert!(b.written(300));
        // The core's decision.
        assert!(b.wake());
        // Whole steps one after the other wake it too.
        for writer_first in [true, false] {
            let b = BacklogCounters::new(4000);
            assert!(b.try_queue(400));
            b.read(400);
            assert_eq!(b.pause(), Backlog::Pause);
            let (first, second) = if writer_first {
                (b.written(300), b.processed(300))
            } else {
                (b.processed(300), b.written(300))
            };
            // The first crosses an eighth of the limit (800 → 500); the second, while the
            // reader has not run yet, wakes it again (one stored permit; the reader re-checks the state).
            assert!(first && second, "{writer_first}");
        }
        // Not paused: nothing to wake; paused but still over an eighth: not yet.
        let b = BacklogCounters::new(4000);
        assert!(b.try_queue(900));
        assert!(!b.written(600));
        assert!(b.try_queue(600));
        assert_eq!(b.pause(), Backlog::Pause);
        assert!(!b.written(100));
        assert!(b.written(400));
        b.resume();
        assert!(!b.written(100));
    }
}
