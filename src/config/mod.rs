//! Configuration: loading and offline validation (`lcs-bridge check-config`).
//!
//! The configuration is one TOML file read through the `config` crate, with environment
//! overrides `LCS_BRIDGE__SECTION__KEY` (e.g. `LCS_BRIDGE__XMPP__SECRET`,
//! `LCS_BRIDGE__SIP__LISTEN`; list keys take a comma-separated value). An environment variable
//! wins over the file. Relative paths, wherever they come from, are resolved against the
//! directory of the configuration file. Every key is declared once, in [`keys`] (type, default,
//! range, whether `SIGHUP` applies it, its line of reference); `docs/configuration.md`'s key
//! tables are generated from it and `config/lcs-bridge.example.toml` is checked against it.
//!
//! Two entry points:
//!
//! - [`load`] (and [`load_with_env`]): parse and validate every value (syntax, unknown keys,
//!   types, required keys, ports, addresses, domains, cross-key rules) and read the XMPP
//!   component secret file. This is what `run` needs.
//! - [`check`] (and [`check_with_env`]): everything [`load`] does, plus what needs the file
//!   system and a clock (given as an argument): certificate chain, private key and their match,
//!   validity dates, subjectAltName against `sip.public_fqdn` (RFC 6125 wildcards), extended key
//!   usage (serverAuth and clientAuth, needed for federation), CA bundle, storage and mappings
//!   paths.
//!
//! Both collect *all* problems rather than stopping at the first one. Each [`Problem`] names the
//! dotted key (`xmpp.secret`, `federation.partners[2].edge`; the file path for file-level
//! problems) and prints as one line `key: reason`.
//!
//! Why a hand-written walker over the `config` crate's value tree instead of
//! `#[derive(Deserialize)]` with `deny_unknown_fields`: serde stops at the first error, so a file
//! with a misspelt key and a bad port would be reported one problem per run. The walker takes
//! each known key out of its table (converting it with the `config` crate's own lenient
//! conversions, so `"5061"` from the environment is a number), reports every type error with its
//! key, and reports every key left over as unknown, with a "did you mean" hint.

mod checks;
pub mod keys;
mod reader;
mod sections;
pub mod tls;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub(crate) use checks::format_utc;
use reader::Diag;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LCS_BRIDGE";

/// Default of `xmpp.queue_capacity`: stanzas held per component domain while the link to the
/// XMPP server is down (also the component link's own default).
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// One thing wrong with the configuration: the dotted key (or file) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key such as `sip.cert_chain` or `federation.partners[1].edge`; the configuration
    /// file's path for problems with the file itself.
    pub key: String,
    /// What is wrong, one line.
    pub reason: String,
}

impl Problem {
    /// A problem; line breaks in `reason` are folded so that it prints as one line.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        let reason: String = reason.into();
        let reason = if reason.contains(['\n', '\r']) {
            reason
                .split(['\n', '\r'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            reason
        };
        Problem {
            key: key.into(),
            reason,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for Problem {}

/// What [`check`] found.
#[derive(Debug)]
pub struct CheckReport {
    /// The parsed configuration, present when every value parsed and validated (i.e. [`load`]
    /// would have succeeded), even if file checks (certificates, paths) then found problems, so
    /// that the caller can go on to validate the mapping tables in [`Config::mappings_dir`].
    pub config: Option<Config>,
    /// Errors: the configuration must not be used while this is non-empty.
    pub problems: Vec<Problem>,
    /// Non-fatal findings worth an administrator's attention.
    pub warnings: Vec<Problem>,
}

impl CheckReport {
    /// True when there are no problems (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The whole, validated configuration. Paths are already resolved against the configuration
/// file's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[xmpp]`: the XEP-0114 component connection and addressing.
    pub xmpp: XmppConfig,
    /// `[sip]`: the federation edge (mutual TLS).
    pub sip: SipConfig,
    /// `[federation]`: which LCS domains may federate, and static routes.
    pub federation: FederationConfig,
    /// `[presence]`: presence translation knobs.
    pub presence: PresenceConfig,
    /// `[im]`: instant messaging sessions.
    pub im: ImConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[ha]`.
    pub ha: HaConfig,
    /// `[mappings]`.
    pub mappings: MappingsConfig,
    /// `[logging]`.
    pub logging: LoggingConfig,
    /// `[admin]`: who may administer the running bridge, and the operations interfaces.
    pub admin: AdminConfig,
    /// The file this was loaded from.
    pub source: PathBuf,
}

impl Config {
    /// The address book for the configured mode and domains (docs/addresses.md).
    pub fn address_book(
        &self,
    ) -> Result<crate::core::address::AddressBook, crate::core::address::AddressError> {
        crate::core::address::AddressBook::new(
            self.xmpp.mode,
            self.xmpp.component_domains.clone(),
            self.xmpp.local_domains.clone(),
        )
    }

    /// Directory holding `presence.toml` and `errors.toml` (resolved `mappings.path`).
    pub fn mappings_dir(&self) -> &Path {
        &self.mappings.path
    }

    /// Resolved `storage.path` (the store's directory).
    pub fn storage_path(&self) -> &Path {
        &self.storage.path
    }

    /// Directory of the configuration file, against which relative paths were resolved.
    pub fn config_dir(&self) -> &Path {
        base_dir(&self.source)
    }
}

/// `[xmpp]`: how the bridge connects to the XMPP server as an external component (XEP-0114).
#[derive(Debug, Clone, PartialEq)]
pub struct XmppConfig {
    /// Host of the XMPP server's component port (`xmpp.host`, default `127.0.0.1`).
    pub host: String,
    /// Component port (`xmpp.port`, default 5347).
    pub port: u16,
    /// Component secret, from `xmpp.secret` or read from `xmpp.secret_file`.
    pub secret: Secret,
    /// Component domains the bridge connects as (lowercase).
    pub component_domains: Vec<String>,
    /// Address mode (docs/addresses.md "The two modes").
    pub mode: AddressMode,
    /// Local XMPP domains that LCS peers federate with (lowercase), e.g. `example.org`.
    pub local_domains: Vec<String>,
    /// Name the gateway gives itself in disco (XEP-0030 identity), default `LCS gateway`.
    pub gateway_name: String,
    /// How LCS contacts reach local users' rosters (`xmpp.roster`, default `auto`).
    pub roster: RosterFill,
    /// Stanzas held per component domain while the link to the XMPP server is down; beyond it
    /// SIP requests get 503 (`xmpp.queue_capacity`, 16–1000000, default 1024).
    pub queue_capacity: usize,
    /// How long `lcs-bridge run` waits for the XMPP server at start before exiting non-zero
    /// (`xmpp.startup_timeout_secs`, 1–600, default 30 s).
    pub startup_timeout: Duration,
}

/// How LCS users are addressed on the XMPP side (docs/addresses.md "The two modes").
pub use crate::core::address::AddressMode;

/// `xmpp.roster`: how LCS contacts reach local users' rosters (docs/mapping.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterFill {
    /// XEP-0356 roster sets where the server grants roster access, else XEP-0144.
    Auto,
    /// XEP-0356 only.
    Privilege,
    /// XEP-0144 suggestions only.
    RosterX,
    /// Nothing.
    None,
}

/// A secret that does not print itself in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself; use only where it is needed (the component handshake).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl SipConfig {
    /// The framing and parsing limits for SIP input from peers.
    pub fn limits(&self) -> crate::sip::message::Limits {
        crate::sip::message::Limits {
            max_head_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            max_headers: self.max_headers,
        }
    }
}

/// `[sip]`: the federation edge.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// Where the TLS listener binds (default `0.0.0.0:5061`).
    pub listen: SocketAddr,
    /// The edge's FQDN: what `_sipfederationtls._tcp.<local domain>` points at; must be in the
    /// certificate (lowercase).
    pub public_fqdn: String,
    /// PEM certificate chain, leaf first.
    pub cert_chain: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// A separate chain and key for the connections the bridge opens (the TLS client role):
    /// `sip.client_cert_chain` and `sip.client_private_key`, both or neither; `None`: the
    /// server chain serves both roles.
    pub client_cert: Option<ClientCert>,
    /// Accept a connecting partner whose certificate chain carries serverAuth but not
    /// clientAuth (`sip.accept_server_auth_only_clients`, default false).
    pub accept_server_auth_only_clients: bool,
    /// PEM CA certificates trusted for peers' certificates.
    pub ca_bundle: Option<PathBuf>,
    /// Also trust the operating system's roots for peers.
    pub use_system_roots: bool,
    /// Largest SIP header section accepted on a stream, bytes (default 16384).
    pub max_header_bytes: usize,
    /// Largest SIP body accepted, bytes (default 65536).
    pub max_body_bytes: usize,
    /// Most header fields accepted in one message (default 128).
    pub max_headers: usize,
    /// Connections to one peer edge server, at most 4 (profile).
    pub max_connections_per_edge: usize,
    /// Connections to one peer network, at most 40 (profile).
    pub max_connections_per_network: usize,
    /// DNS servers asked for the SRV records that find peer edges
    /// (`_sipfederationtls._tcp.<domain>`); empty (the default) means the system resolver
    /// (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// Limit for connecting to a peer edge: TCP connect and TLS handshake together
    /// (`sip.connect_timeout_secs`, default 10 s).
    pub connect_timeout: Duration,
    /// Limit for the TLS handshake of an inbound connection (`sip.handshake_timeout_secs`,
    /// default 10 s).
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed (`sip.idle_timeout_secs`, default
    /// 300 s).
    pub idle_timeout: Duration,
    /// On a connection idle this long the edge sends a CRLF keep-alive ping (RFC 5626 §4.4.1
    /// double CRLF); `None` when off (`sip.keepalive_interval_secs = 0`). Always less than
    /// `idle_timeout` (default 60 s).
    pub keepalive_interval: Option<Duration>,
    /// A SIP message that has started arriving must be complete within this
    /// (`sip.message_timeout_secs`, default 30 s): the slowloris defence.
    pub message_timeout: Duration,
    /// The edge's resource limits (`sip.max_dns_lookups` … `sip.max_write_backlog_bytes`),
    /// applied again on SIGHUP.
    pub edge: EdgeLimits,
}

/// `sip.client_cert_chain` and `sip.client_private_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    /// PEM certificate chain, leaf first.
    pub chain: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// The edge's resource limits, as `[sip]` sets them (docs/security.md). The edge reads them
/// as `edge::limits::EdgeLimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// DNS lookups under way at once, all peers together (`sip.max_dns_lookups`, default 64);
    /// a request that needs one more is answered 503.
    pub max_dns_lookups: usize,
    /// DNS lookups under way started by the requests of one peer certificate identity, over
    /// all its connections and until each lookup ends (`sip.max_dns_lookups_per_peer`,
    /// default 8, at most half of `max_dns_lookups`).
    pub max_dns_lookups_per_peer: usize,
    /// Per-domain state with no connection, no waiting request and no lookup under way is
    /// dropped after this long unused (`sip.pool_idle_secs`, default 300 s).
    pub pool_idle: Duration,
    /// Inbound connections in their TLS handshake (`sip.max_handshakes`, default 100); they
    /// do not count toward `max_connections`.
    pub max_handshakes: usize,
    /// Inbound connections from one source address, an IPv6 /64 counted as one (`sip.max_connections_per_address`,
    /// default 40, the profile's ceiling for one peer network).
    pub max_connections_per_address: usize,
    /// Inbound connections with one certificate identity
    /// (`sip.max_connections_per_identity`, default 40).
    pub max_connections_per_identity: usize,
    /// Authenticated inbound connections and outbound ones together (`sip.max_connections`,
    /// default 1000).
    pub max_connections: usize,
    /// Bytes queued unsent to one connection (`sip.max_write_backlog_bytes`, default 4 MiB):
    /// reading that peer pauses at an eighth of it, and the connection is closed beyond it.
    pub max_write_backlog_bytes: usize,
}

impl EdgeLimits {
    /// The defaults of `[sip]`'s limit keys (`config::keys`; a test checks they agree).
    pub const DEFAULT: EdgeLimits = EdgeLimits {
        max_dns_lookups: 64,
        max_dns_lookups_per_peer: 8,
        pool_idle: Duration::from_secs(300),
        max_handshakes: 100,
        // The profile's ceiling for one peer network.
        max_connections_per_address: 40,
        max_connections_per_identity: 40,
        max_connections: 1000,
        max_write_backlog_bytes: 4 * 1024 * 1024,
    };
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits::DEFAULT
    }
}

/// `[federation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// What happens to a domain that is not listed in `partners`: `Allow` is discovery mode.
    pub default_policy: DefaultPolicy,
    /// Listed partner domains.
    pub partners: Vec<Partner>,
    /// Requests per second accepted from one discovered (unlisted) partner domain; beyond it
    /// the edge answers 503 with Retry-After (`federation.discovered_rate`, 1–10000, default
    /// 20 like OCS's discovered partners). Listed partners are not limited.
    pub discovered_rate: u32,
    /// The `Ms-asserted-verification-level` the edge puts on outbound requests from
    /// authenticated local users, for domains that are not listed or whose entry does not set
    /// one (`federation.verification_level`, default verified).
    pub verification_level: VerificationLevel,
}

impl FederationConfig {
    /// The partner entry for `domain` (ASCII case-insensitive), if listed.
    pub fn partner(&self, domain: &str) -> Option<&Partner> {
        self.partners
            .iter()
            .find(|p| p.domain.eq_ignore_ascii_case(domain))
    }

    /// Whether discovery is on (`default_policy = "allow"`): any domain whose edge DNS SRV
    /// finds and whose certificate checks out may federate, not only listed partners.
    pub fn discovery_enabled(&self) -> bool {
        self.default_policy == DefaultPolicy::Allow
    }

    /// The verification level asserted toward `domain`: the listed partner's own setting,
    /// otherwise the section's.
    pub fn verification_level(&self, domain: &str) -> VerificationLevel {
        self.partner(domain)
            .and_then(|p| p.verification_level)
            .unwrap_or(self.verification_level)
    }

    /// Whether federation with `domain` is permitted: a listed partner's policy, otherwise the
    /// default policy.
    pub fn is_allowed(&self, domain: &str) -> bool {
        match self.partner(domain) {
            Some(p) => p.policy == PartnerPolicy::Allow,
            None => self.default_policy == DefaultPolicy::Allow,
        }
    }
}

/// `federation.default_policy`: whether discovery is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Discovery on: any domain whose edge is found by DNS SRV (`_sipfederationtls._tcp`) and
    /// whose certificate checks out, besides partners listed with `policy = "allow"`.
    Allow,
    /// Discovery off: only partners listed with `policy = "allow"`.
    Deny,
}

/// `federation.verification_level` and `federation.partners[].verification_level`: what the
/// edge asserts, in an `Ms-asserted-verification-level` header, about the local user sending an
/// outbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationLevel {
    /// `ms-source-verification-level=verified`: the sender was authenticated by its server.
    Verified,
    /// `ms-source-verification-level=unverified`.
    Unverified,
    /// No header.
    Omit,
}

impl VerificationLevel {
    /// The `Ms-asserted-verification-level` header value, `None` for [`VerificationLevel::Omit`].
    pub fn header_value(&self) -> Option<&'static str> {
        match self {
            VerificationLevel::Verified => Some("ms-source-verification-level=verified"),
            VerificationLevel::Unverified => Some("ms-source-verification-level=unverified"),
            VerificationLevel::Omit => None,
        }
    }
}

/// One `[[federation.partners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// The partner's SIP domain (lowercase).
    pub domain: String,
    /// Allow or block.
    pub policy: PartnerPolicy,
    /// Static route to the partner's edge (hosted partners), instead of DNS SRV.
    pub edge: Option<Edge>,
    /// Verification level asserted toward this partner; `None`: the section's
    /// ([`FederationConfig::verification_level`]).
    pub verification_level: Option<VerificationLevel>,
}

/// `federation.partners[].policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerPolicy {
    /// Federate with this domain.
    Allow,
    /// Refuse this domain.
    Block,
}

/// A static `host:port` edge route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Host name (lowercase) or IP address literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[presence]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// Appended to local users' display names sent to LCS (e.g. `" (XMPP)"`).
    pub display_name_suffix: Option<String>,
    /// HTTPS URL of the network-of-origin icon sent as `ci:icon` (profile: PNG, ≤ 16×16, ≤ 8 KB).
    pub icon_url: Option<String>,
    /// Least time between two NOTIFYs to one watcher (bursts are coalesced).
    pub notify_min_interval: Duration,
    /// Expires requested for presence subscriptions toward LCS.
    pub subscription_expires: Duration,
    /// Requests per second the bridge sends to take up stored subscriptions after a start
    /// (fresh SUBSCRIBEs and watchers' NOTIFYs; `presence.restore_rate`, 10–100000,
    /// default 1000).
    pub restore_rate: u32,
    /// LCS watchers a discovered (unlisted) remote domain may have waiting for local users'
    /// approval (`presence.max_pending_per_domain`, default 1000).
    pub max_pending_per_domain: usize,
    /// The same for a listed partner (`presence.max_pending_per_partner`, default 10000).
    pub max_pending_per_partner: usize,
    /// LCS watchers one local user may have waiting for approval
    /// (`presence.max_pending_per_user`, default 100).
    pub max_pending_per_user: usize,
    /// Offer Microsoft enhanced presence on SUBSCRIBEs (`presence.enhanced`, default true).
    pub enhanced: bool,
}

/// `[im]`: instant messaging sessions (INVITE sessions carrying MESSAGEs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImConfig {
    /// An IM session with no message for this long ends with BYE (`im.session_idle_secs`,
    /// 10–86400, default 600 s).
    pub session_idle: Duration,
    /// Largest message body sent to LCS, bytes; larger XMPP messages are returned with
    /// `policy-violation` (`im.max_message_bytes`, 256–65536, default 16384).
    pub max_message_bytes: usize,
    /// Messages held for one session while its INVITE is pending; beyond it the sender gets
    /// `resource-constraint` (`im.max_queued_messages`, 1–10000, default 100).
    pub max_queued_messages: usize,
    /// A session older than this is replaced by a fresh INVITE before the next message, since
    /// LCS signs headers for 24 h (`im.dialog_max_age_secs`, 3600–86340, default 82800 s = 23 h).
    pub dialog_max_age: Duration,
    /// Sessions open at once (`im.max_sessions`, default 10000).
    pub max_sessions: usize,
    /// Sessions with one discovered domain (`im.max_sessions_per_domain`, default 1000).
    pub max_sessions_per_domain: usize,
    /// Sessions with one listed partner's domain (`im.max_sessions_per_partner`, default 10000).
    pub max_sessions_per_partner: usize,
    /// Sessions of one local user (`im.max_sessions_per_user`, default 100).
    pub max_sessions_per_user: usize,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Directory of the persistent store.
    pub path: PathBuf,
    /// Which store (`storage.backend`).
    pub backend: StoreBackend,
    /// With [`StoreBackend::Postgres`]: where and how to connect.
    pub postgres: Option<PostgresConfig>,
}

/// `[storage]` keys of the PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `storage.url` (checked: parses, no password in it).
    pub url: String,
    /// Read from `storage.password_file`.
    pub password: Option<Secret>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

/// `storage.backend`: which implementation of the store keeps the bridge's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    /// sled, in `<storage.path>/sled` (the default).
    Sled,
    /// redb, in `<storage.path>/store.redb`; needs a build with the `redb` feature.
    Redb,
    /// PostgreSQL, in the database `storage.url` names.
    Postgres,
}

/// `[ha]`: the leader lease, used with a PostgreSQL store (docs/high-availability.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// This node's name in the lease row (`ha.node`); `None`: the host name.
    pub node: Option<String>,
    /// How long the lease lasts without a renewal (`ha.lease_ttl_secs`, default 6 s).
    pub lease_ttl: Duration,
}

/// `[mappings]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingsConfig {
    /// Directory with `presence.toml` and `errors.toml`.
    pub path: PathBuf,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `tracing_subscriber::EnvFilter` directives, e.g. `info` or `info,lcs_bridge::sip=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Bare JIDs allowed to run the ad-hoc commands (lowercase domain).
    pub jids: Vec<String>,
    /// The `lcs-bridge admin` socket (resolved; `admin.sock` in `storage.path` when unset).
    pub socket: PathBuf,
    /// `admin.metrics_listen`: where `/metrics`, `/health` and `/ready` are served; `None`
    /// (the key set to `""`): not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Loads and validates the configuration file at `path`, with overrides from the process
/// environment (`LCS_BRIDGE__…`). Returns every problem found. Does not look at certificates,
/// the store or the mappings directory: see [`check`].
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    load_with_env(path, process_env())
}

/// [`load`] with an explicit environment instead of the process's (variables without the
/// `LCS_BRIDGE__` prefix are ignored).
pub fn load_with_env<I>(path: &Path, env: I) -> Result<Config, Vec<Problem>>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut diag = Diag::default();
    let config = sections::load(path, env, &mut diag);
    let (problems, _warnings) = diag.finish();
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems),
    }
}

/// Validates everything that can be checked offline, at time `now`, with overrides from the
/// process environment. Collects all problems.
pub fn check(path: &Path, now: SystemTime) -> CheckReport {
    check_with_env(path, now, process_env())
}

/// [`check`] with an explicit environment instead of the process's.
pub fn check_with_env<I>(path: &Path, now: SystemTime, env: I) -> CheckReport
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut diag = Diag::default();
    let loaded = sections::load_parts(path, env, &mut diag);
    let load_ok = diag.problem_count() == 0;
    sections::check_files(&loaded, now, &mut diag);
    let config = if load_ok { loaded.assemble() } else { None };
    let (problems, warnings) = diag.finish();
    CheckReport {
        config,
        problems,
        warnings,
    }
}

/// The directory relative paths in `config_file` are resolved against.
fn base_dir(config_file: &Path) -> &Path {
    match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The process environment's `LCS_BRIDGE__…` variables (non-Unicode ones are skipped).
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| reader::is_ours(k))
        .collect()
}

#[cfg(test)]
mod tests;
