//! lcs-bridge: federates an XMPP server (as an XEP-0114 external component) with Microsoft
//! Live Communications Server 2005 SP1 and its successors over the LCS interdomain federation
//! profile.
//!
//! Module map (see `docs/ARCHITECTURE.md` for the flow of a message):
//!
//! | module | I/O? | what |
//! | --- | --- | --- |
//! | [`sip`] | none | SIP message codec (RFC 3261 §7, §20, §25), URIs (§19), stream framing (§18.3, RFC 5626 §4.4.1), builders, SDP for session-mode IM |
//! | [`core`] | none | addresses (XEP-0106, RFC 7247 §6), PIDF/RPID/CIPID codec (RFC 3863/4480/4482), presence translation, mapping tables, error conditions |
//! | [`xmpp`] | none, except [`xmpp::link`] | XMPP stanza helpers on top of xmpp-parsers; the gateway's IQ answers and stanza error replies; the XEP-0114 component link |
//! | [`edge`] | sockets, DNS, clock (core and pool none) | the SIP federation edge: mutual TLS, admission, discovery, connection pool, transactions |
//! | [`engine`] | none | the translation: `Bridge` (routing, output order, failure answers) over the presence engine, the IM engine and the component's IQ answers |
//! | [`compact`] | none | shrinking hash maps and heaps a burst left large |
//! | [`random`] | none | SplitMix64 for tags, branches, jitter and SRV weights |
//! | [`config`] | reads files | configuration loading and offline validation (`check-config`) |
//! | [`inspect`] | none | the administrator's `inspect` views of wire data |
//! | [`backoff`] | none | reconnect backoff with jitter (the edge's pool and the XMPP link) |
//! | [`store`] | disk, database | persistent subscriptions and IM dialogs behind the `Store` trait (sled, PostgreSQL, or redb with the feature); the leader lease (`store::lease` sans-IO, `store::pg_lease` its PostgreSQL row) |
//! | [`ha`] | database, clock | active/standby for `lcs-bridge run`: waits for the leader lease, follows it while serving |
//! | [`store`] | disk, database | persistent subscriptions and IM dialogs behind the `Store` trait (sled, PostgreSQL, or redb with the feature) |
//! | [`telemetry`] | none (records) | the operations metrics' names and handles (`metrics` facade); only the I/O modules record |
//! | [`ops`] | sockets | the operations HTTP listener: `/metrics`, `/health`, `/ready` |
//! | [`systemd`] | environment, Unix socket | the service manager's notifications: readiness, watchdog, reload, stopping |
//! | [`app`] | sockets, signals, clock | wires everything together for `lcs-bridge run` |
//! | [`doctor`] | DNS, sockets, clock ([`doctor::probe`]) | `lcs-bridge doctor`: the online checks of a deployment, judged without I/O, probed with the edge's and the link's own parts |
//!
//! Rule: `sip`, `core`, `engine` and `xmpp` (but its `link`) never touch sockets or the clock and read no files, with one
//! exception: [`core::tables::Mappings::load`] reads the two table files once at start-up.
//! Time is an argument.

pub mod app;
pub mod backoff;
pub mod compact;
pub mod config;
pub mod core;
pub mod demo;
pub mod doctor;
pub mod edge;
pub mod engine;
pub mod ha;
pub mod inspect;
pub mod ops;
pub mod random;
pub mod sip;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod transcript;
pub mod xmpp;
