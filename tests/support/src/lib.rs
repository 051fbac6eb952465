//! `lcs-test-support`: what lcs-bridge's integration tests (tests/*.rs) and its load generator
//! (the `lcs-load` example, tests/load) share. A path dev-dependency of lcs-bridge; use it with
//! `use lcs_test_support::…`. What it gives:
//!
//! - [`free_port`] / [`free_port_pair`]: free TCP+UDP ports on 127.0.0.1.
//! - [`require_peer`] / [`require_python_modules`]: find a peer program; when it is
//!   missing, either skip loudly (plain `cargo test`) or panic when
//!   `LCS_BRIDGE_REQUIRE_PEERS=1` (what `tests/run-all.sh` and CI set).
//! - [`Prosody`] and [`Ejabberd`]: start a private XMPP server on free loopback ports,
//!   with the external components [`GATEWAY_COMPONENT`] and [`DIRECT_COMPONENT`]
//!   (XEP-0114, secret [`COMPONENT_SECRET`]); stopped when dropped.
//! - [`component_handshake`]: a minimal XEP-0114 client, for smoke tests.
//! - [`run_with_timeout`]: run a command with a hard deadline.
//! - [`pki`]: a test CA and its leaf certificates (rcgen).
//! - [`config::BridgeConfig`]: the bridge's configuration file for a test.
//! - [`dns::TestDns`]: an in-process authoritative DNS server on loopback, zones built in code.
//! - [`sipp`]: SIPp (scenarios in tests/sipp) behind socat's mutual TLS in both directions, and
//!   SIPp's message log parsed.
//! - [`sip_peer::SipPeer`]: a mutual-TLS SIP peer in-process; [`net`]: the load generator's
//!   XEP-0114 listener, c2s clients and mutual-TLS SIP connections.
//! - [`postgres::Postgres`]: a private PostgreSQL server (initdb + pg_ctl) on a free loopback
//!   port, with stop, kill (a crash) and restart.
//! - [`e2e`]: the end-to-end world (the `lcs-bridge` binary, an XMPP server, slixmpp, SIPp);
//!   [`edge`]: settings and helpers for tests of the SIP edge alone.
//!
//! Nothing here ever talks to a non-loopback address. See docs/testing.md.

#![allow(clippy::disallowed_methods)] // test harness: processes, sockets and deadlines read the clock

mod base;
mod component;
mod ejabberd;
mod prosody;

pub mod config;
pub mod dns;
pub mod e2e;
pub mod edge;
pub mod net;
pub mod pki;
pub mod postgres;
pub mod sip_peer;
pub mod sipp;

pub use base::*;
pub use component::{Handshake, component_handshake, handshake_digest};
pub use ejabberd::Ejabberd;
pub use prosody::Prosody;
