//! The SIP federation edge: mutual TLS only (the profile's "Transport and security"), peer
//! identity from certificates, request admission, SRV discovery, the outbound connection pool,
//! transactions and OPTIONS.
//!
//! - [`tls`]: rustls configurations and handshake error reasons.
//! - [`identity`]: a peer's certificate identity and the domains it speaks for (RFC 5922 §7),
//!   sans-IO.
//! - [`admission`]: whether a request from a peer is admitted, and with which SIP status it is
//!   refused; the discovered-partner rate bucket; sans-IO.
//! - [`srv`]: SRV target order (RFC 2782), the random source passed in, sans-IO.
//! - [`dns`]: `_sipfederationtls._tcp` SRV discovery (RFC 2782) and A/AAAA lookups (hickory).
//! - [`pool`]: which connection an outbound request takes (≤ 4 per edge, ≤ 40 per network,
//!   reuse, fail-over, backoff), sans-IO.
//! - [`limits`]: the resource limits (DNS lookups, connections per address, identity and in
//!   total, write backlog), their counters, sans-IO.
//! - [`core`]: the sans-IO request handling ([`core::EdgeCore`]), testable without sockets.
//! - [`event`]: [`event::EdgeEvent`], what the edge tells the layer above, sans-IO.
//! - [`server`]: the listener, outbound connections and connection tasks that feed it, and
//!   the [`server::EdgeHandle`] / [`event::EdgeEvent`] interface for the layer above.
//!
//! Certificates and federation policy reload on SIGHUP ([`server::EdgeHandle::reload_tls`],
//! [`server::EdgeHandle::reconfigure`]).

pub mod admission;
pub mod core;
pub mod dns;
pub mod event;
pub mod identity;
pub mod limits;
pub mod pool;
pub mod server;
pub mod srv;
pub mod tls;
