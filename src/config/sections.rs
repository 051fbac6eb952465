//! The sections of the configuration: each is walked key by key, validated, and turned into its
//! typed struct; then the rules that span sections, and (for `check`) the file-system checks.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::reader::{self, Diag, Field, Reported, Table};
use super::{
    AddressMode, Config, DefaultPolicy, Edge, FederationConfig, ImConfig, LogFormat, LoggingConfig,
    MappingsConfig, Partner, PartnerPolicy, PresenceConfig, Secret, SipConfig, StorageConfig,
    VerificationLevel, XmppConfig, base_dir, checks, tls,
};

/// Default values, shared with the documentation and the example file.
pub(crate) mod defaults {
    use crate::sip::message::Limits;

    pub const XMPP_HOST: &str = "127.0.0.1";
    pub const XMPP_PORT: u16 = 5347;
    pub const GATEWAY_NAME: &str = "LCS gateway";
    pub const XMPP_QUEUE_CAPACITY: usize = crate::config::DEFAULT_QUEUE_CAPACITY;
    pub const XMPP_STARTUP_TIMEOUT_SECS: u64 = 30;
    pub const MAX_HEADER_BYTES: usize = Limits::DEFAULT.max_head_bytes;
    pub const MAX_BODY_BYTES: usize = Limits::DEFAULT.max_body_bytes;
    pub const MAX_HEADERS: usize = Limits::DEFAULT.max_headers;
    pub const MAX_CONNECTIONS_PER_EDGE: usize = 4;
    pub const MAX_CONNECTIONS_PER_NETWORK: usize = 40;
    pub const CONNECT_TIMEOUT_SECS: u64 = 10;
    pub const HANDSHAKE_TIMEOUT_SECS: u64 = 10;
    pub const IDLE_TIMEOUT_SECS: u64 = 300;
    pub const KEEPALIVE_INTERVAL_SECS: u64 = 60;
    pub const MESSAGE_TIMEOUT_SECS: u64 = 30;
    pub const MAX_DNS_LOOKUPS: usize = 64;
    pub const MAX_DNS_LOOKUPS_PER_PEER: usize = 8;
    pub const POOL_IDLE_SECS: u64 = 300;
    pub const MAX_HANDSHAKES: usize = 100;
    /// The federation profile's ceiling for one peer network.
    pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 40;
    pub const MAX_CONNECTIONS_PER_IDENTITY: usize = 40;
    pub const MAX_CONNECTIONS: usize = 1000;
    pub const MAX_WRITE_BACKLOG_BYTES: usize = 4 * 1024 * 1024;
    /// OCS's rate for discovered partners.
    pub const DISCOVERED_RATE: u32 = 20;
    pub const NOTIFY_MIN_INTERVAL_SECS: u64 = 5;
    pub const SUBSCRIPTION_EXPIRES_SECS: u64 = 3600;
    pub const RESTORE_RATE: u64 = 1000;
    /// OCS's default contact limit for discovered partners.
    pub const MAX_PENDING_PER_DOMAIN: u64 = 1000;
    pub const MAX_PENDING_PER_PARTNER: u64 = 10_000;
    pub const MAX_PENDING_PER_USER: u64 = 100;
    pub const IM_SESSION_IDLE_SECS: u64 = 600;
    pub const IM_MAX_MESSAGE_BYTES: usize = 16 * 1024;
    pub const IM_MAX_QUEUED_MESSAGES: usize = 100;
    /// 23 h: below the 24 h for which LCS signs dialog headers.
    pub const IM_DIALOG_MAX_AGE_SECS: u64 = crate::sip::dialog::DEFAULT_MAX_AGE.as_secs();
    pub const STORAGE_PATH: &str = "data";
    pub const MAPPINGS_PATH: &str = "mappings";
    pub const LOG_LEVEL: &str = "info";
}

const REQUIRED: &str = "required key is missing";

/// The sections that validated (each `None` if it had problems).
#[derive(Debug)]
pub(crate) struct Parts {
    source: PathBuf,
    xmpp: Option<XmppConfig>,
    sip: Option<SipConfig>,
    federation: Option<FederationConfig>,
    presence: Option<PresenceConfig>,
    im: Option<ImConfig>,
    storage: Option<StorageConfig>,
    mappings: Option<MappingsConfig>,
    logging: Option<LoggingConfig>,
}

impl Parts {
    /// The whole configuration, if every section validated.
    pub(crate) fn assemble(self) -> Option<Config> {
        Some(Config {
            xmpp: self.xmpp?,
            sip: self.sip?,
            federation: self.federation?,
            presence: self.presence?,
            im: self.im?,
            storage: self.storage?,
            mappings: self.mappings?,
            logging: self.logging?,
            source: self.source,
        })
    }
}

/// Loads and validates; `None` if anything is wrong (all of it reported in `diag`).
pub(crate) fn load<I>(path: &Path, env: I, diag: &mut Diag) -> Option<Config>
where
    I: IntoIterator<Item = (String, String)>,
{
    let parts = load_parts(path, env, diag);
    if diag.problem_count() > 0 {
        return None;
    }
    parts.assemble()
}

/// Walks every section, reporting all problems, and keeps what validated.
pub(crate) fn load_parts<I>(path: &Path, env: I, diag: &mut Diag) -> Parts
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut parts = Parts {
        source: path.to_path_buf(),
        xmpp: None,
        sip: None,
        federation: None,
        presence: None,
        im: None,
        storage: None,
        mappings: None,
        logging: None,
    };
    let Some(mut root) = reader::read_root(path, env, diag) else {
        return parts;
    };
    let base = base_dir(path);
    let xmpp = root.table("xmpp", diag);
    let sip = root.table("sip", diag);
    let federation = root.table("federation", diag);
    let presence = root.table("presence", diag);
    let im = root.table("im", diag);
    let storage = root.table("storage", diag);
    let mappings = root.table("mappings", diag);
    let logging = root.table("logging", diag);
    root.finish(diag);

    parts.xmpp = section(diag, "xmpp", xmpp).and_then(|t| xmpp_section(t, base, diag));
    parts.sip = section(diag, "sip", sip).and_then(|t| sip_section(t, base, diag));
    parts.federation =
        section(diag, "federation", federation).and_then(|t| federation_section(t, diag));
    parts.presence = section(diag, "presence", presence).and_then(|t| presence_section(t, diag));
    parts.im = section(diag, "im", im).and_then(|t| im_section(t, diag));
    parts.storage = section(diag, "storage", storage).and_then(|t| {
        path_section(t, base, defaults::STORAGE_PATH, diag).map(|path| StorageConfig { path })
    });
    parts.mappings = section(diag, "mappings", mappings).and_then(|t| {
        path_section(t, base, defaults::MAPPINGS_PATH, diag).map(|path| MappingsConfig { path })
    });
    parts.logging = section(diag, "logging", logging).and_then(|t| logging_section(t, diag));

    if let (Some(x), Some(f)) = (&parts.xmpp, &parts.federation) {
        if !federation_vs_xmpp(f, x, diag) {
            parts.federation = None;
        }
    }
    parts
}

/// A section's table: the one in the file, or an empty one when it is absent (so that its
/// required keys are reported), or `None` when it is broken or was reported as misspelt.
fn section(diag: &Diag, name: &str, field: Field<Table>) -> Option<Table> {
    match field {
        Ok(Some(t)) => Some(t),
        Ok(None) if diag.was_suggested(name) => None,
        Ok(None) => Some(Table::empty(name)),
        Err(Reported) => None,
    }
}

/// Applies a conversion to a present value, reporting its failure under `key`.
fn conv<T, U>(
    diag: &mut Diag,
    key: &str,
    field: Field<T>,
    f: impl FnOnce(T) -> Result<U, String>,
) -> Field<U> {
    match field {
        Ok(Some(v)) => match f(v) {
            Ok(u) => Ok(Some(u)),
            Err(reason) => {
                diag.problem(key, reason);
                Err(Reported)
            }
        },
        Ok(None) => Ok(None),
        Err(r) => Err(r),
    }
}

fn or_default<U>(field: Field<U>, default: U) -> Option<U> {
    match field {
        Ok(Some(v)) => Some(v),
        Ok(None) => Some(default),
        Err(Reported) => None,
    }
}

fn required<U>(diag: &mut Diag, key: &str, field: Field<U>) -> Option<U> {
    match field {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            diag.missing(key, REQUIRED);
            None
        }
        Err(Reported) => None,
    }
}

/// An integer within `lo..=hi`.
fn ranged(
    diag: &mut Diag,
    key: &str,
    field: Field<i64>,
    default: u64,
    lo: u64,
    hi: u64,
    why: &str,
) -> Option<u64> {
    let field = conv(diag, key, field, |n| match u64::try_from(n) {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("must be between {lo} and {hi}{why}, not {n}")),
    });
    or_default(field, default)
}

/// An integer that is 0 (off) or within `lo..=hi`; `None` inside for 0.
fn ranged_or_off(
    diag: &mut Diag,
    key: &str,
    field: Field<i64>,
    default: u64,
    lo: u64,
    hi: u64,
) -> Option<Option<u64>> {
    let field = conv(diag, key, field, |n| match u64::try_from(n) {
        Ok(0) => Ok(None),
        Ok(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
        _ => Err(format!("must be 0 (off) or between {lo} and {hi}, not {n}")),
    });
    or_default(field, (default != 0).then_some(default))
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// A path: relative ones are resolved against the configuration file's directory.
fn path_value(base: &Path, s: String) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    let p = PathBuf::from(s);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

/// One of a few lowercase words.
fn word<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let wanted = s.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(w, _)| *w == wanted)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
            let list = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} or {last}", rest.join(", "))
                }
                _ => names.join(""),
            };
            format!("must be {list}, not {s:?}")
        })
}

/// `verification_level` values.
fn verification_level(s: &str) -> Result<VerificationLevel, String> {
    word(
        s,
        &[
            ("verified", VerificationLevel::Verified),
            ("unverified", VerificationLevel::Unverified),
            ("omit", VerificationLevel::Omit),
        ],
    )
}

/// Free text shown to people: no control characters, bounded length.
fn text(s: String, max: usize) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(s)
}

/// A list of `IP:port` DNS servers: each well-formed, none twice; empty is allowed.
fn dns_server_list(
    diag: &mut Diag,
    key: &str,
    field: Field<Vec<String>>,
) -> Field<Vec<SocketAddr>> {
    let items = match field {
        Ok(Some(items)) => items,
        Ok(None) => return Ok(None),
        Err(r) => return Err(r),
    };
    // Indexed like `items` (`None` for a bad entry) so that duplicates name the right index.
    let mut out: Vec<Option<SocketAddr>> = Vec::with_capacity(items.len());
    let mut bad = false;
    for (i, item) in items.iter().enumerate() {
        match checks::dns_server(item) {
            Ok(a) => {
                if let Some(j) = out.iter().position(|o| *o == Some(a)) {
                    diag.problem(
                        format!("{key}[{i}]"),
                        format!("\"{a}\" is already listed at {key}[{j}]"),
                    );
                    bad = true;
                }
                out.push(Some(a));
            }
            Err(reason) => {
                diag.problem(format!("{key}[{i}]"), reason);
                bad = true;
                out.push(None);
            }
        }
    }
    if bad {
        Err(Reported)
    } else {
        Ok(Some(out.into_iter().flatten().collect()))
    }
}

/// A list of domains: each well-formed, none twice; `at_least_one` for required lists.
fn domain_list(diag: &mut Diag, key: &str, field: Field<Vec<String>>) -> Field<Vec<String>> {
    let Ok(Some(items)) = field else {
        return field;
    };
    if items.is_empty() {
        diag.problem(key, "must list at least one domain");
        return Err(Reported);
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    let mut bad = false;
    for (i, item) in items.iter().enumerate() {
        match checks::domain(item) {
            Ok(d) => {
                if let Some(j) = out.iter().position(|o| *o == d) {
                    diag.problem(
                        format!("{key}[{i}]"),
                        format!("{d:?} is already listed at {key}[{j}]"),
                    );
                    bad = true;
                }
                out.push(d);
            }
            Err(reason) => {
                diag.problem(format!("{key}[{i}]"), reason);
                bad = true;
                out.push(String::new());
            }
        }
    }
    if bad { Err(Reported) } else { Ok(Some(out)) }
}

fn xmpp_section(mut t: Table, base: &Path, diag: &mut Diag) -> Option<XmppConfig> {
    let host = t.string("host", diag);
    let port = t.int("port", diag);
    let secret = t.string("secret", diag);
    let secret_file = t.string("secret_file", diag);
    let component_domains = t.strings("component_domains", diag);
    let mode = t.string("mode", diag);
    let local_domains = t.strings("local_domains", diag);
    let gateway_name = t.string("gateway_name", diag);
    let queue_capacity = t.int("queue_capacity", diag);
    let startup_timeout = t.int("startup_timeout_secs", diag);
    t.finish(diag);

    let host = conv(diag, "xmpp.host", host, |h| checks::host(h.trim()));
    let host = or_default(host, defaults::XMPP_HOST.to_owned());
    if let Some(ip) = host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()) {
        if !is_private(ip) {
            diag.warning(
                "xmpp.host",
                "the component protocol (XEP-0114) is not encrypted: keep it on loopback or a private network",
            );
        }
    }
    let port = conv(diag, "xmpp.port", port, checks::port);
    let port = or_default(port, defaults::XMPP_PORT);
    let secret = xmpp_secret(secret, secret_file, base, diag);
    let component_domains = domain_list(diag, "xmpp.component_domains", component_domains);
    let component_domains = required(diag, "xmpp.component_domains", component_domains);
    let local_domains = domain_list(diag, "xmpp.local_domains", local_domains);
    let local_domains = required(diag, "xmpp.local_domains", local_domains);
    let mode = conv(diag, "xmpp.mode", mode, |m| {
        word(
            &m,
            &[
                ("gateway", AddressMode::Gateway),
                ("direct", AddressMode::Direct),
            ],
        )
    });
    let mode = or_default(mode, AddressMode::Gateway);
    let gateway_name = conv(diag, "xmpp.gateway_name", gateway_name, |s| {
        if s.trim().is_empty() {
            Err("must not be empty".to_owned())
        } else {
            text(s, 100)
        }
    });
    let gateway_name = or_default(gateway_name, defaults::GATEWAY_NAME.to_owned());
    let queue_capacity = ranged(
        diag,
        "xmpp.queue_capacity",
        queue_capacity,
        defaults::XMPP_QUEUE_CAPACITY as u64,
        16,
        1_000_000,
        "",
    );
    let startup_timeout = ranged(
        diag,
        "xmpp.startup_timeout_secs",
        startup_timeout,
        defaults::XMPP_STARTUP_TIMEOUT_SECS,
        1,
        600,
        "",
    );

    let mut ok = true;
    if let (Some(AddressMode::Gateway), Some(c)) = (mode, &component_domains) {
        if c.len() != 1 {
            diag.problem(
                "xmpp.component_domains",
                format!(
                    "gateway mode needs exactly one component domain, found {}",
                    c.len()
                ),
            );
            ok = false;
        }
    }
    if let (Some(c), Some(l)) = (&component_domains, &local_domains) {
        for (i, d) in c.iter().enumerate() {
            if l.contains(d) {
                diag.problem(
                    format!("xmpp.component_domains[{i}]"),
                    format!("{d:?} is also in xmpp.local_domains; a component domain cannot be a local domain"),
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    Some(XmppConfig {
        host: host?,
        port: port?,
        secret: secret?,
        component_domains: component_domains?,
        mode: mode?,
        local_domains: local_domains?,
        gateway_name: gateway_name?,
        queue_capacity: to_usize(queue_capacity?),
        startup_timeout: Duration::from_secs(startup_timeout?),
    })
}

/// Loopback, private (RFC 1918, RFC 4193) or link-local.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn xmpp_secret(
    secret: Field<String>,
    secret_file: Field<String>,
    base: &Path,
    diag: &mut Diag,
) -> Option<Secret> {
    match (secret, secret_file) {
        (Err(Reported), _) | (_, Err(Reported)) => None,
        (Ok(Some(_)), Ok(Some(_))) => {
            diag.problem("xmpp.secret", "set either secret or secret_file, not both");
            None
        }
        (Ok(Some(s)), Ok(None)) => {
            if s.is_empty() {
                diag.problem("xmpp.secret", "must not be empty");
                None
            } else {
                Some(Secret(s))
            }
        }
        (Ok(None), Ok(Some(file))) => {
            let path = match path_value(base, file) {
                Ok(p) => p,
                Err(reason) => {
                    diag.problem("xmpp.secret_file", reason);
                    return None;
                }
            };
            match std::fs::read_to_string(&path) {
                Ok(s) => {
                    let s = s.trim_end_matches(['\r', '\n']);
                    if s.trim().is_empty() {
                        diag.problem("xmpp.secret_file", format!("{:?} is empty", path));
                        None
                    } else {
                        Some(Secret(s.to_owned()))
                    }
                }
                Err(e) => {
                    diag.problem(
                        "xmpp.secret_file",
                        format!("cannot read {:?}: {}", path, reader::io_reason(&e)),
                    );
                    None
                }
            }
        }
        (Ok(None), Ok(None)) => {
            if !diag.was_suggested("xmpp.secret_file") {
                diag.missing(
                    "xmpp.secret",
                    "required key is missing (or set secret_file)",
                );
            }
            None
        }
    }
}

fn sip_section(mut t: Table, base: &Path, diag: &mut Diag) -> Option<SipConfig> {
    let listen = t.string("listen", diag);
    let public_fqdn = t.string("public_fqdn", diag);
    let cert_chain = t.string("cert_chain", diag);
    let private_key = t.string("private_key", diag);
    let ca_bundle = t.string("ca_bundle", diag);
    let use_system_roots = t.bool("use_system_roots", diag);
    let max_header_bytes = t.int("max_header_bytes", diag);
    let max_body_bytes = t.int("max_body_bytes", diag);
    let max_headers = t.int("max_headers", diag);
    let per_edge = t.int("max_connections_per_edge", diag);
    let per_network = t.int("max_connections_per_network", diag);
    let dns_servers = t.strings("dns_servers", diag);
    let connect_timeout = t.int("connect_timeout_secs", diag);
    let handshake_timeout = t.int("handshake_timeout_secs", diag);
    let idle_timeout = t.int("idle_timeout_secs", diag);
    let keepalive_interval = t.int("keepalive_interval_secs", diag);
    let message_timeout = t.int("message_timeout_secs", diag);
    let max_dns_lookups = t.int("max_dns_lookups", diag);
    let max_dns_lookups_per_peer = t.int("max_dns_lookups_per_peer", diag);
    let pool_idle = t.int("pool_idle_secs", diag);
    let max_handshakes = t.int("max_handshakes", diag);
    let per_address = t.int("max_connections_per_address", diag);
    let per_identity = t.int("max_connections_per_identity", diag);
    let max_connections = t.int("max_connections", diag);
    let write_backlog = t.int("max_write_backlog_bytes", diag);
    t.finish(diag);

    let listen = conv(diag, "sip.listen", listen, |s| checks::socket_addr(&s));
    let listen = or_default(listen, SocketAddr::from(([0, 0, 0, 0], 5061)));
    let public_fqdn = conv(diag, "sip.public_fqdn", public_fqdn, |s| {
        checks::domain(s.trim())
    });
    let public_fqdn = required(diag, "sip.public_fqdn", public_fqdn);
    let cert_chain = conv(diag, "sip.cert_chain", cert_chain, |s| path_value(base, s));
    let cert_chain = required(diag, "sip.cert_chain", cert_chain);
    let private_key = conv(diag, "sip.private_key", private_key, |s| {
        path_value(base, s)
    });
    let private_key = required(diag, "sip.private_key", private_key);
    let use_system_roots = or_default(use_system_roots, false);
    let ca_bundle = match conv(diag, "sip.ca_bundle", ca_bundle, |s| path_value(base, s)) {
        Ok(Some(p)) => Some(Some(p)),
        Ok(None) if use_system_roots == Some(true) => Some(None),
        Ok(None) if use_system_roots.is_none() => None,
        Ok(None) => {
            diag.missing(
                "sip.ca_bundle",
                "required unless use_system_roots = true (peers' certificates must be verified)",
            );
            None
        }
        Err(Reported) => None,
    };
    let max_header_bytes = ranged(
        diag,
        "sip.max_header_bytes",
        max_header_bytes,
        defaults::MAX_HEADER_BYTES as u64,
        1024,
        1024 * 1024,
        "",
    );
    let max_body_bytes = ranged(
        diag,
        "sip.max_body_bytes",
        max_body_bytes,
        defaults::MAX_BODY_BYTES as u64,
        1024,
        16 * 1024 * 1024,
        "",
    );
    let max_headers = ranged(
        diag,
        "sip.max_headers",
        max_headers,
        defaults::MAX_HEADERS as u64,
        16,
        1024,
        "",
    );
    let per_edge = ranged(
        diag,
        "sip.max_connections_per_edge",
        per_edge,
        defaults::MAX_CONNECTIONS_PER_EDGE as u64,
        1,
        4,
        " (the federation profile allows at most 4 connections to one peer edge server)",
    );
    let per_network = ranged(
        diag,
        "sip.max_connections_per_network",
        per_network,
        defaults::MAX_CONNECTIONS_PER_NETWORK as u64,
        1,
        40,
        " (the federation profile allows at most 40 connections to one peer network)",
    );
    let dns_servers = dns_server_list(diag, "sip.dns_servers", dns_servers);
    let dns_servers = or_default(dns_servers, Vec::new());
    let connect_timeout = ranged(
        diag,
        "sip.connect_timeout_secs",
        connect_timeout,
        defaults::CONNECT_TIMEOUT_SECS,
        1,
        120,
        "",
    );
    let handshake_timeout = ranged(
        diag,
        "sip.handshake_timeout_secs",
        handshake_timeout,
        defaults::HANDSHAKE_TIMEOUT_SECS,
        1,
        120,
        "",
    );
    let idle_timeout = ranged(
        diag,
        "sip.idle_timeout_secs",
        idle_timeout,
        defaults::IDLE_TIMEOUT_SECS,
        30,
        86_400,
        "",
    );
    let keepalive_interval = ranged_or_off(
        diag,
        "sip.keepalive_interval_secs",
        keepalive_interval,
        defaults::KEEPALIVE_INTERVAL_SECS,
        5,
        3600,
    );
    let message_timeout = ranged(
        diag,
        "sip.message_timeout_secs",
        message_timeout,
        defaults::MESSAGE_TIMEOUT_SECS,
        1,
        300,
        "",
    );
    let max_dns_lookups = ranged(
        diag,
        "sip.max_dns_lookups",
        max_dns_lookups,
        defaults::MAX_DNS_LOOKUPS as u64,
        2,
        10_000,
        "",
    );
    let max_dns_lookups_per_peer = ranged(
        diag,
        "sip.max_dns_lookups_per_peer",
        max_dns_lookups_per_peer,
        defaults::MAX_DNS_LOOKUPS_PER_PEER as u64,
        1,
        10_000,
        "",
    );
    let pool_idle = ranged(
        diag,
        "sip.pool_idle_secs",
        pool_idle,
        defaults::POOL_IDLE_SECS,
        1,
        86_400,
        "",
    );
    let max_handshakes = ranged(
        diag,
        "sip.max_handshakes",
        max_handshakes,
        defaults::MAX_HANDSHAKES as u64,
        1,
        1_000_000,
        "",
    );
    let per_address = ranged(
        diag,
        "sip.max_connections_per_address",
        per_address,
        defaults::MAX_CONNECTIONS_PER_ADDRESS as u64,
        1,
        1_000_000,
        "",
    );
    let per_identity = ranged(
        diag,
        "sip.max_connections_per_identity",
        per_identity,
        defaults::MAX_CONNECTIONS_PER_IDENTITY as u64,
        1,
        1_000_000,
        "",
    );
    let max_connections = ranged(
        diag,
        "sip.max_connections",
        max_connections,
        defaults::MAX_CONNECTIONS as u64,
        1,
        1_000_000,
        "",
    );
    let write_backlog = ranged(
        diag,
        "sip.max_write_backlog_bytes",
        write_backlog,
        defaults::MAX_WRITE_BACKLOG_BYTES as u64,
        64 * 1024,
        256 * 1024 * 1024,
        "",
    );
    let mut ok = true;
    // One peer (however many connections and certificates' names it has) must not be able to
    // hold every lookup slot.
    if let (Some(all), Some(one)) = (max_dns_lookups, max_dns_lookups_per_peer) {
        let most = all / 2;
        if one > most {
            diag.problem(
                "sip.max_dns_lookups_per_peer",
                format!("must be at most half of sip.max_dns_lookups ({most}), not {one}"),
            );
            ok = false;
        }
    }
    for (key, value) in [
        ("sip.max_connections_per_address", per_address),
        ("sip.max_connections_per_identity", per_identity),
    ] {
        if let (Some(all), Some(one)) = (max_connections, value) {
            if one > all {
                diag.problem(
                    key,
                    format!("must be at most sip.max_connections ({all}), not {one}"),
                );
                ok = false;
            }
        }
    }
    // A response repeats its request's header section (Via, From, To, Call-ID, CSeq): the
    // backlog must hold a few of the largest, or a peer sending large headers is closed as
    // "not reading" while it reads fine.
    if let (Some(backlog), Some(head)) = (write_backlog, max_header_bytes) {
        if backlog < 4 * head {
            diag.problem(
                "sip.max_write_backlog_bytes",
                format!(
                    "must be at least 4 × sip.max_header_bytes ({}), not {backlog}",
                    4 * head
                ),
            );
            ok = false;
        }
    }
    if let (Some(e), Some(n)) = (per_edge, per_network) {
        if n < e {
            diag.problem(
                "sip.max_connections_per_network",
                format!("must be at least sip.max_connections_per_edge ({e}), not {n}"),
            );
            ok = false;
        }
    }
    if let (Some(Some(k)), Some(idle)) = (keepalive_interval, idle_timeout) {
        if k >= idle {
            diag.problem(
                "sip.keepalive_interval_secs",
                format!("must be less than sip.idle_timeout_secs ({idle}) or 0 (off), not {k}"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(SipConfig {
        listen: listen?,
        public_fqdn: public_fqdn?,
        cert_chain: cert_chain?,
        private_key: private_key?,
        ca_bundle: ca_bundle?,
        use_system_roots: use_system_roots?,
        max_header_bytes: to_usize(max_header_bytes?),
        max_body_bytes: to_usize(max_body_bytes?),
        max_headers: to_usize(max_headers?),
        max_connections_per_edge: to_usize(per_edge?),
        max_connections_per_network: to_usize(per_network?),
        dns_servers: dns_servers?,
        connect_timeout: Duration::from_secs(connect_timeout?),
        handshake_timeout: Duration::from_secs(handshake_timeout?),
        idle_timeout: Duration::from_secs(idle_timeout?),
        keepalive_interval: keepalive_interval?.map(Duration::from_secs),
        message_timeout: Duration::from_secs(message_timeout?),
        max_dns_lookups: to_usize(max_dns_lookups?),
        max_dns_lookups_per_peer: to_usize(max_dns_lookups_per_peer?),
        pool_idle: Duration::from_secs(pool_idle?),
        max_handshakes: to_usize(max_handshakes?),
        max_connections_per_address: to_usize(per_address?),
        max_connections_per_identity: to_usize(per_identity?),
        max_connections: to_usize(max_connections?),
        max_write_backlog_bytes: to_usize(write_backlog?),
    })
}

fn federation_section(mut t: Table, diag: &mut Diag) -> Option<FederationConfig> {
    let default_policy = t.string("default_policy", diag);
    let partners = t.tables("partners", diag);
    let discovered_rate = t.int("discovered_rate", diag);
    let level = t.string("verification_level", diag);
    t.finish(diag);

    let default_policy = conv(diag, "federation.default_policy", default_policy, |s| {
        word(
            &s,
            &[
                ("allow", DefaultPolicy::Allow),
                ("deny", DefaultPolicy::Deny),
            ],
        )
    });
    let default_policy = or_default(default_policy, DefaultPolicy::Allow);
    let discovered_rate = ranged(
        diag,
        "federation.discovered_rate",
        discovered_rate,
        u64::from(defaults::DISCOVERED_RATE),
        1,
        10_000,
        " requests per second",
    );
    let level = conv(diag, "federation.verification_level", level, |s| {
        verification_level(&s)
    });
    let level = or_default(level, VerificationLevel::Verified);
    let partners = match partners {
        Ok(Some(tables)) => {
            let mut out: Vec<Partner> = Vec::with_capacity(tables.len());
            let mut domains: Vec<Option<String>> = Vec::with_capacity(tables.len());
            let mut ok = true;
            for (i, t) in tables.into_iter().enumerate() {
                let (domain, p) = partner(t, i, diag);
                if let Some(d) = &domain {
                    if let Some(j) = domains.iter().position(|o| o.as_ref() == Some(d)) {
                        diag.problem(
                            format!("federation.partners[{i}].domain"),
                            format!("{d:?} is already listed at federation.partners[{j}]"),
                        );
                        ok = false;
                    }
                }
                domains.push(domain);
                match p {
                    Some(p) => out.push(p),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        Ok(None) => Some(Vec::new()),
        Err(Reported) => None,
    };
    if let (Some(DefaultPolicy::Deny), Some(p)) = (default_policy, &partners) {
        if !p.iter().any(|p| p.policy == PartnerPolicy::Allow) {
            diag.warning(
                "federation.default_policy",
                "\"deny\" with no partner allowed: the bridge will federate with nobody",
            );
        }
    }
    Some(FederationConfig {
        default_policy: default_policy?,
        partners: partners?,
        discovered_rate: u32::try_from(discovered_rate?).unwrap_or(u32::MAX),
        verification_level: level?,
    })
}

/// One partner entry: its domain if that is valid (for the duplicate check), and the entry if
/// all of it is.
fn partner(mut t: Table, i: usize, diag: &mut Diag) -> (Option<String>, Option<Partner>) {
    let domain = t.string("domain", diag);
    let policy = t.string("policy", diag);
    let edge = t.string("edge", diag);
    let level = t.string("verification_level", diag);
    t.finish(diag);
    let key = |k: &str| format!("federation.partners[{i}].{k}");

    let domain = conv(diag, &key("domain"), domain, |s| checks::domain(s.trim()));
    let domain = required(diag, &key("domain"), domain);
    let policy = conv(diag, &key("policy"), policy, |s| {
        word(
            &s,
            &[
                ("allow", PartnerPolicy::Allow),
                ("block", PartnerPolicy::Block),
            ],
        )
    });
    let policy = or_default(policy, PartnerPolicy::Allow);
    let edge = conv(diag, &key("edge"), edge, |s| {
        checks::edge(s.trim()).map(|(host, port)| Edge { host, port })
    });
    let edge = edge.ok();
    let level = conv(diag, &key("verification_level"), level, |s| {
        verification_level(&s)
    });
    let level = level.ok();
    if let (Some(PartnerPolicy::Block), Some(Some(_))) = (policy, &edge) {
        diag.warning(key("edge"), "ignored: this partner is blocked");
    }
    if let (Some(PartnerPolicy::Block), Some(Some(_))) = (policy, level) {
        diag.warning(
            key("verification_level"),
            "ignored: this partner is blocked",
        );
    }
    let entry = (|| {
        Some(Partner {
            domain: domain.clone()?,
            policy: policy?,
            edge: edge?,
            verification_level: level?,
        })
    })();
    (domain, entry)
}

/// Rules between `[federation]` and `[xmpp]`; false if a problem was reported.
fn federation_vs_xmpp(f: &FederationConfig, x: &XmppConfig, diag: &mut Diag) -> bool {
    let mut ok = true;
    for (i, p) in f.partners.iter().enumerate() {
        let key = format!("federation.partners[{i}].domain");
        if x.local_domains.contains(&p.domain) {
            diag.problem(
                key,
                format!(
                    "{:?} is a local domain (xmpp.local_domains), not a federation partner",
                    p.domain
                ),
            );
            ok = false;
        } else if x.mode == AddressMode::Gateway && x.component_domains.contains(&p.domain) {
            diag.problem(
                key,
                format!(
                    "{:?} is the gateway's component domain, not a federation partner",
                    p.domain
                ),
            );
            ok = false;
        } else if x.mode == AddressMode::Direct
            && p.policy == PartnerPolicy::Allow
            && !x.component_domains.contains(&p.domain)
        {
            diag.warning(
                key,
                format!(
                    "{:?} is not in xmpp.component_domains: in direct mode XMPP users cannot reach it",
                    p.domain
                ),
            );
        }
    }
    ok
}

fn presence_section(mut t: Table, diag: &mut Diag) -> Option<PresenceConfig> {
    let suffix = t.string("display_name_suffix", diag);
    let icon_url = t.string("icon_url", diag);
    let interval = t.int("notify_min_interval_secs", diag);
    let expires = t.int("subscription_expires_secs", diag);
    let restore_rate = t.int("restore_rate", diag);
    let pending_domain = t.int("max_pending_per_domain", diag);
    let pending_partner = t.int("max_pending_per_partner", diag);
    let pending_user = t.int("max_pending_per_user", diag);
    t.finish(diag);

    let suffix = conv(diag, "presence.display_name_suffix", suffix, |s| {
        text(s, 64)
    });
    let suffix = or_default(suffix.map(|s| s.map(Some)), None);
    let icon_url = conv(diag, "presence.icon_url", icon_url, |s| {
        checks::https_url(s.trim())
    });
    let icon_url = or_default(icon_url.map(|s| s.map(Some)), None);
    let interval = ranged(
        diag,
        "presence.notify_min_interval_secs",
        interval,
        defaults::NOTIFY_MIN_INTERVAL_SECS,
        1,
        300,
        "",
    );
    let expires = ranged(
        diag,
        "presence.subscription_expires_secs",
        expires,
        defaults::SUBSCRIPTION_EXPIRES_SECS,
        60,
        86_400,
        "",
    );
    let restore_rate = ranged(
        diag,
        "presence.restore_rate",
        restore_rate,
        defaults::RESTORE_RATE,
        10,
        100_000,
        "",
    );
    let pending_domain = ranged(
        diag,
        "presence.max_pending_per_domain",
        pending_domain,
        defaults::MAX_PENDING_PER_DOMAIN,
        1,
        1_000_000,
        "",
    );
    let pending_partner = ranged(
        diag,
        "presence.max_pending_per_partner",
        pending_partner,
        defaults::MAX_PENDING_PER_PARTNER,
        1,
        1_000_000,
        "",
    );
    let pending_user = ranged(
        diag,
        "presence.max_pending_per_user",
        pending_user,
        defaults::MAX_PENDING_PER_USER,
        1,
        100_000,
        "",
    );
    Some(PresenceConfig {
        display_name_suffix: suffix?,
        icon_url: icon_url?,
        notify_min_interval: Duration::from_secs(interval?),
        subscription_expires: Duration::from_secs(expires?),
        restore_rate: u32::try_from(restore_rate?).unwrap_or(u32::MAX),
        max_pending_per_domain: usize::try_from(pending_domain?).unwrap_or(usize::MAX),
        max_pending_per_partner: usize::try_from(pending_partner?).unwrap_or(usize::MAX),
        max_pending_per_user: usize::try_from(pending_user?).unwrap_or(usize::MAX),
    })
}

fn im_section(mut t: Table, diag: &mut Diag) -> Option<ImConfig> {
    let session_idle = t.int("session_idle_secs", diag);
    let max_message_bytes = t.int("max_message_bytes", diag);
    let max_queued_messages = t.int("max_queued_messages", diag);
    let dialog_max_age = t.int("dialog_max_age_secs", diag);
    t.finish(diag);

    let session_idle = ranged(
        diag,
        "im.session_idle_secs",
        session_idle,
        defaults::IM_SESSION_IDLE_SECS,
        10,
        86_400,
        "",
    );
    let max_message_bytes = ranged(
        diag,
        "im.max_message_bytes",
        max_message_bytes,
        defaults::IM_MAX_MESSAGE_BYTES as u64,
        256,
        65_536,
        "",
    );
    let max_queued_messages = ranged(
        diag,
        "im.max_queued_messages",
        max_queued_messages,
        defaults::IM_MAX_QUEUED_MESSAGES as u64,
        1,
        10_000,
        "",
    );
    let dialog_max_age = ranged(
        diag,
        "im.dialog_max_age_secs",
        dialog_max_age,
        defaults::IM_DIALOG_MAX_AGE_SECS,
        3600,
        86_340,
        " (LCS signs dialog headers for 24 hours)",
    );
    Some(ImConfig {
        session_idle: Duration::from_secs(session_idle?),
        max_message_bytes: to_usize(max_message_bytes?),
        max_queued_messages: to_usize(max_queued_messages?),
        dialog_max_age: Duration::from_secs(dialog_max_age?),
    })
}

/// `[storage]` and `[mappings]`: one `path` key.
fn path_section(mut t: Table, base: &Path, default: &str, diag: &mut Diag) -> Option<PathBuf> {
    let path = t.string("path", diag);
    let key = t.key("path");
    t.finish(diag);
    let path = conv(diag, &key, path, |s| path_value(base, s));
    or_default(path, base.join(default))
}

fn logging_section(mut t: Table, diag: &mut Diag) -> Option<LoggingConfig> {
    let level = t.string("level", diag);
    let format = t.string("format", diag);
    t.finish(diag);

    let level = conv(diag, "logging.level", level, |s| {
        let s = s.trim().to_owned();
        if s.is_empty() {
            return Err("must not be empty".to_owned());
        }
        match tracing_subscriber::EnvFilter::try_new(&s) {
            Ok(_) => Ok(s),
            Err(e) => Err(format!("{s:?} is not a valid filter: {e}")),
        }
    });
    if let Ok(Some(level)) = &level {
        level_hints(level, diag);
    }
    let level = or_default(level, defaults::LOG_LEVEL.to_owned());
    let format = conv(diag, "logging.format", format, |s| {
        word(
            &s,
            &[("human", LogFormat::Human), ("json", LogFormat::Json)],
        )
    });
    let format = or_default(format, LogFormat::Human);
    Some(LoggingConfig {
        level: level?,
        format: format?,
    })
}

/// A bare word in a filter that is not a level is taken as a target name enabling every level:
/// valid, but most often a misspelt level.
fn level_hints(filter: &str, diag: &mut Diag) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains(['=', '[', '{', ':']) {
            continue;
        }
        if LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            continue;
        }
        let hint = reader::closest(directive, &LEVELS)
            .map(|l| format!(" (did you mean \"{l}\"?)"))
            .unwrap_or_default();
        diag.warning(
            "logging.level",
            format!(
                "{directive:?} is not a level: it enables every level for the target {directive:?}{hint}"
            ),
        );
    }
}

/// The checks that read certificate files, look at directories, or need the clock.
pub(crate) fn check_files(parts: &Parts, now: SystemTime, diag: &mut Diag) {
    let now_secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    if let Some(sip) = &parts.sip {
        let local_domains = parts
            .xmpp
            .as_ref()
            .map_or(&[][..], |x| x.local_domains.as_slice());
        tls::check_edge(sip, local_domains, now_secs, diag);
    }
    if let Some(storage) = &parts.storage {
        let p = &storage.path;
        if p.exists() && !p.is_dir() {
            diag.problem(
                "storage.path",
                format!("{p:?} exists and is not a directory"),
            );
        } else if !p.exists() {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                diag.problem(
                    "storage.path",
                    format!("parent directory {parent:?} does not exist"),
                );
            }
        }
    }
    if let Some(mappings) = &parts.mappings {
        let p = &mappings.path;
        if !p.exists() {
            diag.problem("mappings.path", format!("directory {p:?} does not exist"));
        } else if !p.is_dir() {
            diag.problem("mappings.path", format!("{p:?} is not a directory"));
        }
    }
}
