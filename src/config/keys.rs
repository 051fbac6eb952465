//! Every configuration key, declared once: its table and name, type, default, allowed range or
//! words, whether `SIGHUP` applies it, and its line in docs/configuration.md.
//!
//! The walker in `sections.rs` takes each key by its entry here (so the list of known keys, and
//! the "did you mean" hints for unknown ones, are this table), and range checks, their messages
//! and the defaults come from it. docs/configuration.md's "Keys" section is generated from it
//! ([`reference_markdown`]; a test fails when the file is stale), and a test checks that
//! `config/lcs-bridge.example.toml` shows every key with its default and range.

use crate::sip::message::Limits;

/// What a key's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// An integer (from the environment: its digits).
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A list of strings (from the environment: comma-separated).
    TextList,
    /// An array of tables (`[[…]]`).
    TableList,
}

/// A key's value when it is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// No default: the key must be set.
    Required,
    /// Unset means "none" (an optional value, or an empty array of tables).
    Absent,
    /// This string.
    Text(&'static str),
    /// This integer.
    Integer(u64),
    /// This boolean.
    Boolean(bool),
    /// An empty list.
    EmptyList,
}

/// Whether a changed value takes effect on `SIGHUP` (what `needs_restart` in `src/app.rs`
/// leaves out) or only after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// `SIGHUP` applies it.
    Sighup,
    /// It takes effect after a restart (`SIGHUP` names it in a warning).
    Restart,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The table it is in: `xmpp`, or `federation.partners[]` for each array entry.
    pub section: &'static str,
    /// Its name in that table.
    pub name: &'static str,
    /// `section.name`.
    pub path: &'static str,
    pub kind: Kind,
    pub default: DefaultValue,
    /// Appended to the default in the reference (`" (4 MiB)"`, a footnote mark).
    pub default_note: &'static str,
    /// Inclusive bounds of an integer.
    pub range: Option<(u64, u64)>,
    /// An integer key where 0 means "off" (outside `range`).
    pub zero_is_off: bool,
    /// Appended to the range in the out-of-range message: why the bounds are what they are.
    pub why: &'static str,
    /// The words a text key accepts (lowercase).
    pub choices: &'static [&'static str],
    pub reload: Reload,
    /// Its meaning and checks: one line of docs/configuration.md.
    pub doc: &'static str,
}

impl Key {
    const BASE: Key = Key {
        section: "",
        name: "",
        path: "",
        kind: Kind::Text,
        default: DefaultValue::Absent,
        default_note: "",
        range: None,
        zero_is_off: false,
        why: "",
        choices: &[],
        reload: Reload::Restart,
        doc: "",
    };

    /// The integer default (0 for a key that has none).
    pub const fn default_int(&self) -> u64 {
        match self.default {
            DefaultValue::Integer(n) => n,
            _ => 0,
        }
    }

    /// The text default (`""` for a key that has none).
    pub const fn default_text(&self) -> &'static str {
        match self.default {
            DefaultValue::Text(s) => s,
            _ => "",
        }
    }

    /// The boolean default (false for a key that has none).
    pub const fn default_bool(&self) -> bool {
        matches!(self.default, DefaultValue::Boolean(true))
    }

    /// The default as the reference shows it: `` `5347` ``, `` `"info"` ``, `required`, `none`.
    pub fn default_shown(&self) -> String {
        let shown = match self.default {
            DefaultValue::Required => "required".to_owned(),
            DefaultValue::Absent => "none".to_owned(),
            DefaultValue::Text(s) => format!("`{s:?}`"),
            DefaultValue::Integer(n) => format!("`{n}`"),
            DefaultValue::Boolean(b) => format!("`{b}`"),
            DefaultValue::EmptyList => "`[]`".to_owned(),
        };
        format!("{shown}{}", self.default_note)
    }
}

/// Declares each key as a `pub const` and lists them all, in order, in [`ALL`].
macro_rules! keys {
    ($($id:ident = $section:literal, $name:literal { $($field:ident: $value:expr),* $(,)? })*) => {
        $(
            pub const $id: Key = Key {
                section: $section,
                name: $name,
                path: concat!($section, ".", $name),
                $($field: $value,)*
                ..Key::BASE
            };
        )*
        /// Every key, table by table, each table's keys in the order the walker takes them.
        pub const ALL: &[Key] = &[$($id),*];
    };
}

use DefaultValue::{Absent, Boolean, EmptyList, Integer, Required, Text};
use Reload::{Restart, Sighup};

keys! {
    XMPP_HOST = "xmpp", "host" {
        kind: Kind::Text,
        default: Text("127.0.0.1"),
        reload: Restart,
        doc: "Host of the XMPP server's component port: IP address or host name. A public IP gives a warning: XEP-0114 is not encrypted.",
    }
    XMPP_PORT = "xmpp", "port" {
        kind: Kind::Integer,
        default: Integer(5347),
        reload: Restart,
        doc: "Component port, 1–65535.",
    }
    XMPP_SECRET = "xmpp", "secret" {
        kind: Kind::Text,
        default: Required,
        default_note: "¹",
        reload: Restart,
        doc: "Component secret. Not empty.",
    }
    XMPP_SECRET_FILE = "xmpp", "secret_file" {
        kind: Kind::Text,
        default: Required,
        default_note: "¹",
        reload: Restart,
        doc: "File holding the secret (trailing newline ignored). Must exist and not be empty.",
    }
    XMPP_COMPONENT_DOMAINS = "xmpp", "component_domains" {
        kind: Kind::TextList,
        default: Required,
        reload: Restart,
        doc: "Domains the bridge connects as; each must be configured as a component on the XMPP server. Gateway mode: exactly one. At least one; no duplicates; none may be a local domain.",
    }
    XMPP_MODE = "xmpp", "mode" {
        kind: Kind::Text,
        default: Text("gateway"),
        choices: &["gateway", "direct"],
        reload: Restart,
        doc: r#"`"gateway"`: one component domain, LCS users appear as `joe\40contoso.com@lcs.example.org` (XEP-0106). `"direct"`: one component per federated LCS domain, LCS users appear as `joe@contoso.com`."#,
    }
    XMPP_LOCAL_DOMAINS = "xmpp", "local_domains" {
        kind: Kind::TextList,
        default: Required,
        reload: Restart,
        doc: "The XMPP domains whose users federate with LCS (`alice@example.org` ⇄ `sip:alice@example.org`). At least one; no duplicates.",
    }
    XMPP_GATEWAY_NAME = "xmpp", "gateway_name" {
        kind: Kind::Text,
        default: Text("LCS gateway"),
        reload: Restart,
        doc: "Name in service discovery (XEP-0030). Not empty, ≤ 100 characters.",
    }
    XMPP_ROSTER = "xmpp", "roster" {
        kind: Kind::Text,
        default: Text("auto"),
        choices: &["auto", "privilege", "rosterx", "none"],
        reload: Restart,
        doc: r#"How LCS contacts reach local users' rosters, with their names, when a subscription is approved (docs/mapping.md §6). `"auto"`: written by the bridge where the XMPP server grants the component roster access `both` (XEP-0356, docs/xmpp-server.md), else suggested to the user (XEP-0144). `"privilege"`: XEP-0356 only. `"rosterx"`: XEP-0144 only. `"none"`: left to the users."#,
    }
    XMPP_QUEUE_CAPACITY = "xmpp", "queue_capacity" {
        kind: Kind::Integer,
        default: Integer(super::DEFAULT_QUEUE_CAPACITY as u64),
        range: Some((16, 1000000)),
        reload: Restart,
        doc: "Stanzas held per component domain while the link to the XMPP server is down, sent in order once it is back; beyond it, SIP requests that need the link are answered 503. 16–1000000.",
    }
    XMPP_STARTUP_TIMEOUT_SECS = "xmpp", "startup_timeout_secs" {
        kind: Kind::Integer,
        default: Integer(30),
        range: Some((1, 600)),
        reload: Restart,
        doc: "How long `lcs-bridge run` waits at start for the XMPP server to accept the component(s) before it exits non-zero. 1–600.",
    }
    SIP_LISTEN = "sip", "listen" {
        kind: Kind::Text,
        default: Text("0.0.0.0:5061"),
        reload: Restart,
        doc: "Socket address of the TLS listener, `IP:port` (`[::]:5061` for IPv6), port ≠ 0.",
    }
    SIP_PUBLIC_FQDN = "sip", "public_fqdn" {
        kind: Kind::Text,
        default: Required,
        reload: Restart,
        doc: "The edge's FQDN, target of `_sipfederationtls._tcp.<local domain>`. A domain name. The certificate must name it.",
    }
    SIP_CERT_CHAIN = "sip", "cert_chain" {
        kind: Kind::Text,
        default: Required,
        reload: Sighup,
        doc: "PEM certificate chain, leaf first.",
    }
    SIP_PRIVATE_KEY = "sip", "private_key" {
        kind: Kind::Text,
        default: Required,
        reload: Sighup,
        doc: "PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).",
    }
    SIP_CLIENT_CERT_CHAIN = "sip", "client_cert_chain" {
        kind: Kind::Text,
        default: Absent,
        reload: Sighup,
        doc: "PEM certificate chain, leaf first, presented on the connections the bridge opens (the TLS client role). Set with `client_private_key`, or neither: then `cert_chain` serves both roles. The leaf needs the clientAuth extended key usage (or none) and should name `public_fqdn`.",
    }
    SIP_CLIENT_PRIVATE_KEY = "sip", "client_private_key" {
        kind: Kind::Text,
        default: Absent,
        reload: Sighup,
        doc: "PEM private key of `client_cert_chain`'s leaf (PKCS#8, PKCS#1 or SEC1). Set with `client_cert_chain`, or neither.",
    }
    SIP_ACCEPT_SERVER_AUTH_ONLY_CLIENTS = "sip", "accept_server_auth_only_clients" {
        kind: Kind::Boolean,
        default: Boolean(false),
        reload: Sighup,
        doc: "Accept a connecting partner whose certificate chain carries the serverAuth extended key usage but not clientAuth (what public CAs issue from 2026). Off: such a partner's handshake is refused, and the log names this key.",
    }
    SIP_CA_BUNDLE = "sip", "ca_bundle" {
        kind: Kind::Text,
        default: Absent,
        reload: Sighup,
        doc: "PEM CA certificates trusted for peers' certificates. Required unless `use_system_roots = true`.",
    }
    SIP_USE_SYSTEM_ROOTS = "sip", "use_system_roots" {
        kind: Kind::Boolean,
        default: Boolean(false),
        reload: Sighup,
        doc: "Also trust the operating system's roots for peers.",
    }
    SIP_MAX_HEADER_BYTES = "sip", "max_header_bytes" {
        kind: Kind::Integer,
        default: Integer(Limits::DEFAULT.max_head_bytes as u64),
        range: Some((1024, 1048576)),
        reload: Restart,
        doc: "Largest SIP header section accepted, 1024–1048576.",
    }
    SIP_MAX_BODY_BYTES = "sip", "max_body_bytes" {
        kind: Kind::Integer,
        default: Integer(Limits::DEFAULT.max_body_bytes as u64),
        range: Some((1024, 16777216)),
        reload: Restart,
        doc: "Largest SIP body accepted, 1024–16777216.",
    }
    SIP_MAX_HEADERS = "sip", "max_headers" {
        kind: Kind::Integer,
        default: Integer(Limits::DEFAULT.max_headers as u64),
        range: Some((16, 1024)),
        reload: Restart,
        doc: "Most header fields in one message, 16–1024.",
    }
    SIP_MAX_CONNECTIONS_PER_EDGE = "sip", "max_connections_per_edge" {
        kind: Kind::Integer,
        default: Integer(4),
        range: Some((1, 4)),
        why: " (the federation profile allows at most 4 connections to one peer edge server)",
        reload: Sighup,
        doc: "Connections to one peer edge server, 1–4 (the profile's limit).",
    }
    SIP_MAX_CONNECTIONS_PER_NETWORK = "sip", "max_connections_per_network" {
        kind: Kind::Integer,
        default: Integer(40),
        range: Some((1, 40)),
        why: " (the federation profile allows at most 40 connections to one peer network)",
        reload: Sighup,
        doc: "Connections to one peer network, 1–40 (the profile's limit), ≥ `max_connections_per_edge`.",
    }
    SIP_DNS_SERVERS = "sip", "dns_servers" {
        kind: Kind::TextList,
        default: EmptyList,
        reload: Restart,
        doc: r#"DNS servers for the SRV lookups (`_sipfederationtls._tcp.<domain>`) that find peer edges: `"IP:port"` each (`"[2001:db8::53]:53"` for IPv6), port ≠ 0, none twice; a bare IP gets a hint with port 53. Empty: the system resolver (`/etc/resolv.conf`). From the environment: `LCS_BRIDGE__SIP__DNS_SERVERS=192.0.2.53:53,[2001:db8::53]:53`."#,
    }
    SIP_CONNECT_TIMEOUT_SECS = "sip", "connect_timeout_secs" {
        kind: Kind::Integer,
        default: Integer(10),
        range: Some((1, 120)),
        reload: Restart,
        doc: "Connecting to a peer edge, TCP connect and TLS handshake together, must finish within it. 1–120.",
    }
    SIP_HANDSHAKE_TIMEOUT_SECS = "sip", "handshake_timeout_secs" {
        kind: Kind::Integer,
        default: Integer(10),
        range: Some((1, 120)),
        reload: Restart,
        doc: "The TLS handshake of an inbound connection must finish within it. 1–120.",
    }
    SIP_IDLE_TIMEOUT_SECS = "sip", "idle_timeout_secs" {
        kind: Kind::Integer,
        default: Integer(300),
        range: Some((30, 86400)),
        reload: Restart,
        doc: "A connection with no traffic for this long is closed. 30–86400.",
    }
    SIP_KEEPALIVE_INTERVAL_SECS = "sip", "keepalive_interval_secs" {
        kind: Kind::Integer,
        default: Integer(60),
        range: Some((5, 3600)),
        zero_is_off: true,
        reload: Restart,
        doc: "On a connection idle this long, the edge sends a CRLF keep-alive ping (RFC 5626 §4.4.1 double CRLF). `0` turns it off; otherwise 5–3600 and less than `idle_timeout_secs`.",
    }
    SIP_MESSAGE_TIMEOUT_SECS = "sip", "message_timeout_secs" {
        kind: Kind::Integer,
        default: Integer(30),
        range: Some((1, 300)),
        reload: Restart,
        doc: "A SIP message that has started arriving must be complete within it (defence against slowloris: peers sending slowly to hold connections). Also: a connection whose reading is paused for its write backlog (`max_write_backlog_bytes`) and whose peer reads nothing for this long is closed. 1–300.",
    }
    SIP_MAX_DNS_LOOKUPS = "sip", "max_dns_lookups" {
        kind: Kind::Integer,
        default: Integer(64),
        range: Some((2, 10000)),
        reload: Sighup,
        doc: "DNS lookups (`_sipfederationtls._tcp` SRV) under way at once, all peers together. A peer's request whose From domain needs one more is answered `503` with `Retry-After: 1`, its reason naming the key; the bridge's own requests to a domain not yet looked up wait (up to their 32 s transaction time) for a free slot. 2–10000.",
    }
    SIP_MAX_DNS_LOOKUPS_PER_PEER = "sip", "max_dns_lookups_per_peer" {
        kind: Kind::Integer,
        default: Integer(8),
        range: Some((1, 10000)),
        reload: Sighup,
        doc: "DNS lookups under way started by the requests of one peer certificate identity (requests whose From domain the peer's certificate does not name, so the domain's SRV targets must be looked up, RFC 5922 §7), over all that peer's connections; each counts until it ends, even if the connection closes. Beyond it `503` with `Retry-After: 1`. A request for a domain already being looked up waits for that answer without taking a slot (requests waiting: at most 64 per domain, 16 × this value from one peer, 4 × `max_dns_lookups` in all; beyond them `503`). 1–10000, at most half of `max_dns_lookups` (one peer never holds every slot).",
    }
    SIP_POOL_IDLE_SECS = "sip", "pool_idle_secs" {
        kind: Kind::Integer,
        default: Integer(300),
        range: Some((1, 86400)),
        reload: Sighup,
        doc: "What the edge keeps for a peer domain (its SRV answer or the lack of one, requests waiting for a connection, the `discovered_rate` bucket, the backoff of its edges) is dropped when the domain has had no outbound connection, waiting request or lookup under way for this long, so memory and per-event work follow the domains in use, not every domain ever seen. A dropped domain is looked up again when next needed (the resolver's cache usually answers). A failed lookup (NXDOMAIN, no SRV record) for a domain that sent no request the bridge took is dropped sooner: when its negative answer expires, 30 s after its last use at most. Whatever this value, at most 10,000 domains are kept: beyond that the least recently used ones not in use are dropped. 1–86400.",
    }
    SIP_MAX_HANDSHAKES = "sip", "max_handshakes" {
        kind: Kind::Integer,
        default: Integer(100),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "Inbound connections in their TLS handshake at once. One more is closed at accept. They do not count toward `max_connections`, so connections that never authenticate (anyone can open them) cannot take the places of partners' connections or of the bridge's outbound ones; each is closed after `handshake_timeout_secs`. 1–1000000.",
    }
    SIP_MAX_CONNECTIONS_PER_ADDRESS = "sip", "max_connections_per_address" {
        kind: Kind::Integer,
        default: Integer(40),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "Inbound connections from one source, in their handshake or authenticated: an IPv4 address, or an IPv6 /64 (an IPv4-mapped IPv6 address counts as its IPv4 address). One more is closed at accept, before its TLS handshake. The default is the profile's ceiling for one peer network (40). 1–1000000, at most `max_connections`.",
    }
    SIP_MAX_CONNECTIONS_PER_IDENTITY = "sip", "max_connections_per_identity" {
        kind: Kind::Integer,
        default: Integer(40),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "Inbound connections presenting one certificate identity (the same subjectAltName DNS names, or CN). One more is closed right after its TLS handshake. 1–1000000, at most `max_connections`.",
    }
    SIP_MAX_CONNECTIONS = "sip", "max_connections" {
        kind: Kind::Integer,
        default: Integer(1000),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "Authenticated inbound connections (from the end of their TLS handshake to close) and outbound ones (opening or up) together. When it is reached a new inbound connection is closed at accept (or right after its handshake); no outbound one is opened, and requests that would need one fail at once with the reason. Keep `max_connections` + `max_handshakes` below the process's descriptor limit (`ulimit -n`). 1–1000000.",
    }
    SIP_MAX_WRITE_BACKLOG_BYTES = "sip", "max_write_backlog_bytes" {
        kind: Kind::Integer,
        default: Integer(4 * 1024 * 1024),
        default_note: " (4 MiB)",
        range: Some((65536, 268435456)),
        reload: Sighup,
        doc: "Bytes queued for one connection and not yet written (the bridge's responses and requests to that peer). Over an eighth of it (unsent bytes and the peer's requests read but not yet processed together) the edge stops reading that connection until the peer has read enough (TCP then slows a peer that sends without reading); over all of it, or when the peer reads nothing for `message_timeout_secs` while paused, the connection is closed. 65536–268435456, at least 4 × `max_header_bytes` (a response repeats its request's header section). A new value (`SIGHUP`) applies to connections made after it; the others keep theirs.",
    }
    FEDERATION_DEFAULT_POLICY = "federation", "default_policy" {
        kind: Kind::Text,
        default: Text("allow"),
        choices: &["allow", "deny"],
        reload: Sighup,
        doc: r#"For domains not listed; this key is the discovery switch. `"allow"` is **discovery on**: any domain whose edge DNS SRV (`_sipfederationtls._tcp.<domain>`) finds and whose certificate checks out may federate, besides listed partners with `policy = "allow"` (listed `"block"` ones may not). `"deny"` is **discovery off**: only listed partners with `policy = "allow"` (a warning if there are none). `FederationConfig::discovery_enabled()` in the library."#,
    }
    FEDERATION_PARTNERS = "federation", "partners" {
        kind: Kind::TableList,
        default: Absent,
        reload: Sighup,
        doc: "`[[federation.partners]]` tables, below.",
    }
    FEDERATION_DISCOVERED_RATE = "federation", "discovered_rate" {
        kind: Kind::Integer,
        default: Integer(20),
        range: Some((1, 10000)),
        why: " requests per second",
        reload: Sighup,
        doc: "Requests per second accepted from one discovered (unlisted) partner domain; beyond it the edge answers 503 with Retry-After. Listed partners are not limited; only matters with discovery on. 1–10000. The default is OCS's for discovered partners.",
    }
    FEDERATION_VERIFICATION_LEVEL = "federation", "verification_level" {
        kind: Kind::Text,
        default: Text("verified"),
        choices: &["verified", "unverified", "omit"],
        reload: Sighup,
        doc: r#"The `Ms-asserted-verification-level` header the edge puts on outbound requests from authenticated local users, for domains that are not listed or whose entry does not set it: `"verified"` (`ms-source-verification-level=verified`), `"unverified"` (`ms-source-verification-level=unverified`) or `"omit"` (no header)."#,
    }
    PARTNER_DOMAIN = "federation.partners[]", "domain" {
        kind: Kind::Text,
        default: Required,
        reload: Sighup,
        doc: "The partner's SIP domain. Not listed twice; not a local domain; in gateway mode not the component domain. In direct mode an allowed partner that is not a component domain gives a warning (XMPP users could not reach it).",
    }
    PARTNER_POLICY = "federation.partners[]", "policy" {
        kind: Kind::Text,
        default: Text("allow"),
        choices: &["allow", "block"],
        reload: Sighup,
        doc: r#"`"allow"` or `"block"`."#,
    }
    PARTNER_EDGE = "federation.partners[]", "edge" {
        kind: Kind::Text,
        default: Absent,
        reload: Sighup,
        doc: "Static route `host:port` (`[2001:db8::1]:5061` for IPv6) to the partner's edge, for hosted partners, used instead of DNS SRV. Ignored (warning) for a blocked partner.",
    }
    PARTNER_VERIFICATION_LEVEL = "federation.partners[]", "verification_level" {
        kind: Kind::Text,
        default: Absent,
        choices: &["verified", "unverified", "omit"],
        reload: Sighup,
        doc: r#"`"verified"`, `"unverified"` or `"omit"` for this partner instead of `federation.verification_level`. Ignored (warning) for a blocked partner."#,
    }
    PRESENCE_DISPLAY_NAME_SUFFIX = "presence", "display_name_suffix" {
        kind: Kind::Text,
        default: Absent,
        reload: Sighup,
        doc: r#"Text appended to local users' display names sent to LCS, e.g. `" (XMPP)"`. ≤ 64 characters, no control characters."#,
    }
    PRESENCE_ICON_URL = "presence", "icon_url" {
        kind: Kind::Text,
        default: Absent,
        reload: Sighup,
        doc: "Network-of-origin icon sent as `ci:icon`. Must be an `https://` URL with a valid host (the profile: PNG, ≤ 16×16, ≤ 8 KB — not checked offline).",
    }
    PRESENCE_NOTIFY_MIN_INTERVAL_SECS = "presence", "notify_min_interval_secs" {
        kind: Kind::Integer,
        default: Integer(5),
        range: Some((1, 300)),
        reload: Sighup,
        doc: "Least time between two NOTIFYs to one watcher; bursts are coalesced. 1–300.",
    }
    PRESENCE_SUBSCRIPTION_EXPIRES_SECS = "presence", "subscription_expires_secs" {
        kind: Kind::Integer,
        default: Integer(3600),
        range: Some((60, 86400)),
        reload: Sighup,
        doc: "Expires of presence subscriptions toward LCS. 60–86400.",
    }
    PRESENCE_RESTORE_RATE = "presence", "restore_rate" {
        kind: Kind::Integer,
        default: Integer(1000),
        range: Some((10, 100000)),
        reload: Sighup,
        doc: "The pace of the bridge's catching up, in requests (and stanzas) per second: after a start, stored subscriptions are taken up at this rate (fresh SUBSCRIBEs toward LCS and the NOTIFYs owed to LCS watchers, in one paced sequence; the probes, gateway presences and repeated requests to the XMPP server in another); after a component stream comes back, the stanzas that bring the XMPP server up to date go at this rate; after a partner's connection is lost, the fresh SUBSCRIBEs replacing the dialogs on it join the paced requests. So neither a restart nor a lost connection hits partners' edges or the XMPP server with one burst, nor holds every request in memory at once. 10–100000. With 1000, 100,000 stored subscriptions are all refreshed within 100 s.",
    }
    PRESENCE_MAX_PENDING_PER_DOMAIN = "presence", "max_pending_per_domain" {
        kind: Kind::Integer,
        default: Integer(1000),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "LCS watchers from one discovered (unlisted) domain waiting for a local user's approval. A new watcher beyond it gets `503` with `Retry-After: 600`, reason `Too many pending subscriptions from <domain> (presence.max_pending_per_domain)`, and a WARN log line. The default is OCS's contact limit for discovered partners. 1–1000000.",
    }
    PRESENCE_MAX_PENDING_PER_PARTNER = "presence", "max_pending_per_partner" {
        kind: Kind::Integer,
        default: Integer(10_000),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: r#"The same for the domain of a listed partner (`[[federation.partners]]` with `policy = "allow"`, as configured at start), named `presence.max_pending_per_partner`. 1–1000000."#,
    }
    PRESENCE_MAX_PENDING_PER_USER = "presence", "max_pending_per_user" {
        kind: Kind::Integer,
        default: Integer(100),
        range: Some((1, 100000)),
        reload: Sighup,
        doc: "LCS watchers waiting for one local user's approval; beyond it likewise `503`, naming `presence.max_pending_per_user`. 1–100000.",
    }
    PRESENCE_ENHANCED = "presence", "enhanced" {
        kind: Kind::Boolean,
        default: Boolean(true),
        reload: Sighup,
        doc: "Offer Microsoft enhanced presence on the SUBSCRIBEs to LCS users: `Accept: application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/pidf+xml` with a category subscription body (state, note, contactCard), so that XMPP users see Lync/Skype for Business availability, activities and notes (docs/mapping.md). A partner domain that refuses it (400, 406, 415, 420, 488) is asked again at once with PIDF only, and remembered for a day. `false`: PIDF only, as the federation profile.",
    }
    IM_SESSION_IDLE_SECS = "im", "session_idle_secs" {
        kind: Kind::Integer,
        default: Integer(600),
        range: Some((10, 86400)),
        reload: Sighup,
        doc: "An IM session with no message for this long is ended with BYE. 10–86400.",
    }
    IM_MAX_MESSAGE_BYTES = "im", "max_message_bytes" {
        kind: Kind::Integer,
        default: Integer(16 * 1024),
        range: Some((256, 65536)),
        reload: Sighup,
        doc: "Largest message body sent to LCS, in bytes of UTF-8; a larger XMPP message is returned to its sender with `policy-violation`. 256–65536.",
    }
    IM_MAX_QUEUED_MESSAGES = "im", "max_queued_messages" {
        kind: Kind::Integer,
        default: Integer(100),
        range: Some((1, 10000)),
        reload: Sighup,
        doc: "Messages held for one session while its INVITE is pending; beyond it the sender gets `resource-constraint`. 1–10000.",
    }
    IM_DIALOG_MAX_AGE_SECS = "im", "dialog_max_age_secs" {
        kind: Kind::Integer,
        default: Integer(crate::sip::dialog::DEFAULT_MAX_AGE.as_secs()),
        default_note: " (23 h)",
        range: Some((3600, 86340)),
        why: " (LCS signs dialog headers for 24 hours)",
        reload: Sighup,
        doc: "A session older than this is replaced by a fresh INVITE before its next message, because LCS signs dialog headers for 24 hours. 3600–86340.",
    }
    IM_MAX_SESSIONS = "im", "max_sessions" {
        kind: Kind::Integer,
        default: Integer(10_000),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "IM sessions open at once, in all (each holds a dialog, its stored record and a synced write when it opens). An INVITE from LCS beyond it gets `486 Busy Here` with a reason naming `im.max_sessions` and a WARN log line; an XMPP user's message that would open one is returned with `resource-constraint`. 1–1000000.",
    }
    IM_MAX_SESSIONS_PER_DOMAIN = "im", "max_sessions_per_domain" {
        kind: Kind::Integer,
        default: Integer(1000),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: "IM sessions with the users of one discovered (unlisted) domain, both directions; beyond it likewise, naming `im.max_sessions_per_domain`. 1–1000000.",
    }
    IM_MAX_SESSIONS_PER_PARTNER = "im", "max_sessions_per_partner" {
        kind: Kind::Integer,
        default: Integer(10_000),
        range: Some((1, 1000000)),
        reload: Sighup,
        doc: r#"The same for the domain of a listed partner (`[[federation.partners]]` with `policy = "allow"`, as configured at start), named `im.max_sessions_per_partner`. 1–1000000."#,
    }
    IM_MAX_SESSIONS_PER_USER = "im", "max_sessions_per_user" {
        kind: Kind::Integer,
        default: Integer(100),
        range: Some((1, 100000)),
        reload: Sighup,
        doc: "IM sessions of one local user, both directions; beyond it likewise, naming `im.max_sessions_per_user`. 1–100000.",
    }
    STORAGE_PATH = "storage", "path" {
        kind: Kind::Text,
        default: Text("data"),
        reload: Restart,
        doc: "Directory of the persistent store (the sled database is in its `sled/` subdirectory; docs/storage.md). Its parent must exist (`check-config`); if it exists it must be a directory. Use an absolute path such as `/var/lib/lcs-bridge` in production.",
    }
    STORAGE_BACKEND = "storage", "backend" {
        kind: Kind::Text,
        default: Text("sled"),
        choices: &["sled", "redb", "postgres"],
        reload: Restart,
        doc: r#"Which store keeps the state: `"sled"` (under `path`, in `sled/`; one machine), `"postgres"` (in the PostgreSQL database `url` names; for high availability, docs/storage.md "PostgreSQL"), or `"redb"` (under `path`, in `store.redb`; only in a build with the `redb` feature, docs/storage.md "redb")."#,
    }
    STORAGE_URL = "storage", "url" {
        kind: Kind::Text,
        default: Absent,
        reload: Restart,
        doc: r#"With `backend = "postgres"` (required then): the database, as a URL (`postgres://lcs_bridge@db1.example.org:5432/lcs_bridge`, several hosts comma-separated, `?sslmode=disable`, `options=-csearch_path%3Dlcs` and the other libpq URL parameters) or as libpq `key=value` parts (`host=db1.example.org port=5432 user=lcs_bridge dbname=lcs_bridge`). It must not hold a password (`storage.password_file`). Connections are not encrypted: keep the database on a trusted network or loopback."#,
    }
    STORAGE_PASSWORD_FILE = "storage", "password_file" {
        kind: Kind::Text,
        default: Absent,
        reload: Restart,
        doc: "With `backend = \"postgres\"`: a file holding the database password (trailing newline ignored). Must exist and not be empty; readable by every user is a warning. None: the server must not ask for one (e.g. `peer` or `trust` authentication).",
    }
    STORAGE_POOL_SIZE = "storage", "pool_size" {
        kind: Kind::Integer,
        default: Integer(8),
        range: Some((1, 100)),
        reload: Restart,
        doc: "With `backend = \"postgres\"`: connections to the database at most; concurrent writes on different connections share the server's log flushes. 1–100.",
    }
    STORAGE_CONNECT_TIMEOUT_SECS = "storage", "connect_timeout_secs" {
        kind: Kind::Integer,
        default: Integer(5),
        range: Some((1, 300)),
        reload: Restart,
        doc: "With `backend = \"postgres\"`: a connection attempt gives up after this; while the database cannot be reached, each store call fails within it (the request at hand is refused, nothing is acknowledged). 1–300.",
    }
    HA_NODE = "ha", "node" {
        kind: Kind::Text,
        default: Absent,
        default_note: " (the host name)",
        reload: Restart,
        doc: "This bridge's name in the leader lease (with a PostgreSQL store: docs/high-availability.md), shown in the other nodes' logs (`standby: waiting for the lease held by …`, `deposed: bridge … took the lease`). Give each bridge sharing one database its own. 1–64 characters, no control characters or white space.",
    }
    HA_LEASE_TTL_SECS = "ha", "lease_ttl_secs" {
        kind: Kind::Integer,
        default: Integer(6),
        range: Some((2, 60)),
        why: " (below 2 s one slow renewal costs the lease; above 60 s a failover waits too long)",
        reload: Restart,
        doc: "How long the leader lease lasts without a renewal (with a PostgreSQL store). The active bridge renews it every third of this and serves nothing once five sixths have passed since its last renewal began; a standby takes over when it has expired, so a failed active is replaced within about this time plus the standby's start-up. Every bridge sharing the database should use the same value. 2–60.",
    }
    MAPPINGS_PATH = "mappings", "path" {
        kind: Kind::Text,
        default: Text("mappings"),
        reload: Sighup,
        doc: "Directory holding `presence.toml` and `errors.toml`. Must be a directory (`check-config`).",
    }
    LOGGING_LEVEL = "logging", "level" {
        kind: Kind::Text,
        default: Text("info"),
        reload: Sighup,
        doc: "`tracing` EnvFilter directives: `info`, `warn,lcs_bridge::sip=debug`, … Must parse; a bare word that is not a level (e.g. `infoo`, which EnvFilter takes as a target name) gives a warning.",
    }
    LOGGING_FORMAT = "logging", "format" {
        kind: Kind::Text,
        default: Text("human"),
        choices: &["human", "json"],
        reload: Restart,
        doc: r#"`"human"` or `"json"`."#,
    }
    ADMIN_JIDS = "admin", "jids" {
        kind: Kind::TextList,
        default: EmptyList,
        reload: Sighup,
        doc: "Bare JIDs (`user@domain`, of a local domain) allowed to run the bridge's ad-hoc commands (XEP-0050) on the component (docs/operations.md \"Administration\"); anyone else gets `forbidden` and sees no commands. No duplicates.",
    }
    ADMIN_SOCKET = "admin", "socket" {
        kind: Kind::Text,
        default: Absent,
        default_note: "²",
        reload: Restart,
        doc: "Unix socket for `lcs-bridge admin` (created mode 0600, replaced at start; whoever can open it is an administrator). ² Unset: `admin.sock` in `storage.path`. Its directory is created (mode 0700) when missing; its parent must exist.",
    }
    ADMIN_METRICS_LISTEN = "admin", "metrics_listen" {
        kind: Kind::Text,
        default: Text("127.0.0.1:9464"),
        reload: Restart,
        doc: r#"Socket address (`IP:port`) of the operations HTTP listener: `/metrics` (Prometheus text format), `/health` and `/ready` (docs/operations.md "Metrics and health"); `""` turns it off. It has no authentication: an address that is not loopback gives a `check-config` warning."#,
    }
}

/// The key with this dotted path (`sip.max_headers`, `federation.partners[].edge`).
pub fn find(path: &str) -> Option<&'static Key> {
    ALL.iter().find(|k| k.path == path)
}

/// The known names in the table at `section` (`""` for the root: the section names), in
/// [`ALL`]'s order.
pub fn names_in(section: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in ALL {
        let name = if section.is_empty() {
            k.section.split('.').next().unwrap_or(k.section)
        } else if k.section == section {
            k.name
        } else {
            continue;
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// One part of docs/configuration.md's "Keys" section: a heading, text, a table of keys, text.
struct DocPart {
    /// `### …` line, or `""` for a table that continues the part before.
    heading: &'static str,
    intro: &'static str,
    /// The tables whose keys are rows; with more than one, rows name `section.key`.
    sections: &'static [&'static str],
    outro: &'static str,
}

const DOC_PARTS: &[DocPart] = &[
    DocPart {
        heading: "### `[xmpp]`: the component connection (XEP-0114)",
        intro: "The XMPP server's side of this connection (Prosody's `Component`, ejabberd's\n\
                `ejabberd_service` listener) is in docs/xmpp-server.md.",
        sections: &["xmpp"],
        outro: "¹ Exactly one of `secret` and `secret_file`.",
    },
    DocPart {
        heading: "### `[sip]`: the federation edge (mutual TLS)",
        intro: "",
        sections: &["sip"],
        outro: "",
    },
    DocPart {
        heading: "### `[federation]`",
        intro: "",
        sections: &["federation"],
        outro: "",
    },
    DocPart {
        heading: "",
        intro: "Each `[[federation.partners]]`:",
        sections: &["federation.partners[]"],
        outro: "",
    },
    DocPart {
        heading: "### `[presence]`",
        intro: "",
        sections: &["presence"],
        outro: "",
    },
    DocPart {
        heading: "### `[im]`: instant messaging sessions",
        intro: "The section is optional; a missing `[im]` means every default. LCS instant messaging is\n\
                session mode: an INVITE opens a session, and each message is a MESSAGE in that dialog.",
        sections: &["im"],
        outro: "",
    },
    DocPart {
        heading: "### `[ha]`: active/standby with a shared database",
        intro: "Read only with a PostgreSQL store; the section is optional (docs/high-availability.md).",
        sections: &["ha"],
        outro: "",
    },
    DocPart {
        heading: "### `[storage]`, `[mappings]`, `[logging]`",
        intro: "",
        sections: &["storage", "mappings", "logging"],
        outro: "",
    },
    DocPart {
        heading: "### `[admin]`: administering the running bridge",
        intro: "",
        sections: &["admin"],
        outro: "",
    },
];

/// docs/configuration.md's "Keys" section, from its heading up to the next `## ` heading.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "## Keys\n\n\
         `required` keys have no default. The SIGHUP column says whether a changed value takes\n\
         effect when the bridge is sent `SIGHUP` (`applied`) or only after a restart (`restart`;\n\
         `SIGHUP` names such changes in a warning). This section is generated from\n\
         `src/config/keys.rs`, where each key is declared once.\n",
    );
    for part in DOC_PARTS {
        for text in [part.heading, part.intro] {
            if !text.is_empty() {
                out.push('\n');
                out.push_str(text);
                out.push('\n');
            }
        }
        out.push_str("\n| key | default | SIGHUP | meaning and checks |\n");
        out.push_str("| --- | --- | --- | --- |\n");
        let dotted = part.sections.len() > 1;
        for key in ALL.iter().filter(|k| part.sections.contains(&k.section)) {
            let name = if dotted { key.path } else { key.name };
            let reload = match key.reload {
                Reload::Sighup => "applied",
                Reload::Restart => "restart",
            };
            out.push_str(&format!(
                "| `{name}` | {} | {reload} | {} |\n",
                key.default_shown(),
                key.doc
            ));
        }
        if !part.outro.is_empty() {
            out.push('\n');
            out.push_str(part.outro);
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
