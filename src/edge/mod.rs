//! The SIP federation edge (issue 3): mutual TLS only (the profile's "Transport and security"),
//! peer identity from certificates, request admission, transactions and OPTIONS.
//!
//! - [`tls`]: rustls configurations and handshake error reasons.
//! - [`core`]: the sans-IO request handling ([`core::EdgeCore`]), testable without sockets.
//! - [`server`]: the listener and connection tasks that feed it.
//! - [`dns`]: SRV discovery of a peer domain's edge (`_sipfederationtls._tcp`) and its
//!   addresses, through hickory's TTL-honouring cache.
//!
//! Not here yet (issue 3 continues): outbound connections with the per-peer limits, dialog
//! affinity for outbound dialogs, the rate limit for discovered partners.
//! Certificates reload on SIGHUP ([`server::EdgeHandle::reload_tls`]).

pub mod core;
pub mod dns;
pub mod server;
pub mod tls;
