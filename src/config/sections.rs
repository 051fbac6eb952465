//! The sections of the configuration: each is walked key by key, validated, and turned into its
//! typed struct; then the rules that span sections, and (for `check`) the file-system checks.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::keys::{self as k, Key};
use super::reader::{self, Diag, Field, Reported, Table};
use super::values::{
    LEVELS, choice, conv, default_word, dns_server_list, domain_list, or_default, or_parsed,
    path_value, pick, ranged, ranged_or_off, required, text, to_usize,
};
use super::{
    AddressMode, AdminConfig, ClientCert, Config, DefaultPolicy, Edge, EdgeLimits,
    FederationConfig, HaConfig, ImConfig, LogFormat, LoggingConfig, MappingsConfig, Partner,
    PartnerPolicy, PostgresConfig, PresenceConfig, RosterFill, Secret, SipConfig, StorageConfig,
    StoreBackend, XmppConfig, base_dir, checks, tls,
};

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
    ha: Option<HaConfig>,
    mappings: Option<MappingsConfig>,
    logging: Option<LoggingConfig>,
    admin: Option<AdminConfig>,
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
            ha: self.ha?,
            mappings: self.mappings?,
            logging: self.logging?,
            admin: self.admin?,
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
        ha: None,
        mappings: None,
        logging: None,
        admin: None,
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
    let ha = root.table("ha", diag);
    let mappings = root.table("mappings", diag);
    let logging = root.table("logging", diag);
    let admin = root.table("admin", diag);
    root.finish(diag);

    parts.xmpp = section(diag, "xmpp", xmpp).and_then(|t| xmpp_section(t, base, diag));
    parts.sip = section(diag, "sip", sip).and_then(|t| sip_section(t, base, diag));
    parts.federation =
        section(diag, "federation", federation).and_then(|t| federation_section(t, diag));
    parts.presence = section(diag, "presence", presence).and_then(|t| presence_section(t, diag));
    parts.im = section(diag, "im", im).and_then(|t| im_section(t, diag));
    parts.storage = section(diag, "storage", storage).and_then(|t| storage_section(t, base, diag));
    parts.ha = section(diag, "ha", ha).and_then(|t| ha_section(t, diag));
    parts.mappings = section(diag, "mappings", mappings).and_then(|t| {
        path_section(t, base, &k::MAPPINGS_PATH, diag).map(|path| MappingsConfig { path })
    });
    parts.logging = section(diag, "logging", logging).and_then(|t| logging_section(t, diag));
    if let (Some(x), Some(st)) = (&parts.xmpp, &parts.storage) {
        parts.admin = section(diag, "admin", admin)
            .and_then(|t| admin_section(t, base, &x.local_domains, &st.path, diag));
    }

    if let (Some(x), Some(f)) = (&parts.xmpp, &parts.federation) {
        if !federation_vs_xmpp(f, x, diag) {
            parts.federation = None;
        }
    }
    if let (Some(st), Some(ha)) = (&parts.storage, &parts.ha) {
        ha_vs_storage(ha, st, diag);
    }
    if let (Some(x), Some(s)) = (&parts.xmpp, &parts.sip) {
        sip_vs_xmpp(s, x, diag);
    }
    parts
}

/// Rules between `[sip]` and `[xmpp]` (warnings only). The edge's FQDN should be one of the
/// SIP domains served or directly under one: Lync / Skype for Business edges that treat
/// discovered partners as unverified, or check that the `_sipfederationtls._tcp.<domain>` SRV
/// target is in the domain's namespace, refuse a partner whose edge sits elsewhere.
fn sip_vs_xmpp(s: &SipConfig, x: &XmppConfig, diag: &mut Diag) {
    let fqdn = s.public_fqdn.as_str();
    let inside = x.local_domains.iter().any(|d| {
        fqdn == d
            || fqdn
                .strip_suffix(d.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    });
    if !inside {
        diag.warning(
            k::SIP_PUBLIC_FQDN.path,
            format!(
                "{fqdn:?} is neither a SIP domain served (xmpp.local_domains: {}) nor directly under one; \
                 partners that treat discovered partners as unverified, or check that the \
                 _sipfederationtls._tcp SRV target is in the domain's namespace, may refuse such an edge \
                 (use e.g. \"sip.{}\")",
                x.local_domains.join(", "),
                x.local_domains.first().map_or("<domain>", String::as_str),
            ),
        );
    }
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

fn xmpp_section(mut t: Table, base: &Path, diag: &mut Diag) -> Option<XmppConfig> {
    let host = t.string(&k::XMPP_HOST, diag);
    let port = t.int(&k::XMPP_PORT, diag);
    let secret = t.string(&k::XMPP_SECRET, diag);
    let secret_file = t.string(&k::XMPP_SECRET_FILE, diag);
    let component_domains = t.strings(&k::XMPP_COMPONENT_DOMAINS, diag);
    let mode = t.string(&k::XMPP_MODE, diag);
    let local_domains = t.strings(&k::XMPP_LOCAL_DOMAINS, diag);
    let gateway_name = t.string(&k::XMPP_GATEWAY_NAME, diag);
    let roster = t.string(&k::XMPP_ROSTER, diag);
    let queue_capacity = t.int(&k::XMPP_QUEUE_CAPACITY, diag);
    let startup_timeout = t.int(&k::XMPP_STARTUP_TIMEOUT_SECS, diag);
    t.finish(diag);

    let host = conv(diag, k::XMPP_HOST.path, host, |h| checks::host(h.trim()));
    let host = or_default(host, k::XMPP_HOST.default_text().to_owned());
    if let Some(ip) = host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()) {
        if !is_private(ip) {
            diag.warning(
                k::XMPP_HOST.path,
                "the component protocol (XEP-0114) is not encrypted: keep it on loopback or a private network",
            );
        }
    }
    let port = conv(diag, k::XMPP_PORT.path, port, checks::port);
    let port = or_default(port, k::XMPP_PORT.default_int() as u16);
    let secret = xmpp_secret(secret, secret_file, base, diag);
    if secret.as_ref().is_some_and(|s| s.0 == EXAMPLE_SECRET) {
        diag.warning(
            k::XMPP_SECRET.path,
            format!(
                "is the example's placeholder {EXAMPLE_SECRET:?}: anyone who reaches the XMPP \
                 server's component port could act as this component; set a secret of your own \
                 here and in the XMPP server's component configuration"
            ),
        );
    }
    let component_domains = domain_list(diag, k::XMPP_COMPONENT_DOMAINS.path, component_domains);
    let component_domains = required(diag, k::XMPP_COMPONENT_DOMAINS.path, component_domains);
    let local_domains = domain_list(diag, k::XMPP_LOCAL_DOMAINS.path, local_domains);
    let local_domains = required(diag, k::XMPP_LOCAL_DOMAINS.path, local_domains);
    let modes = [
        ("gateway", AddressMode::Gateway),
        ("direct", AddressMode::Direct),
    ];
    let mode = choice(diag, &k::XMPP_MODE, mode, &modes);
    let gateway_name = conv(diag, k::XMPP_GATEWAY_NAME.path, gateway_name, |s| {
        if s.trim().is_empty() {
            Err("must not be empty".to_owned())
        } else {
            text(s, 100)
        }
    });
    let gateway_name = or_default(gateway_name, k::XMPP_GATEWAY_NAME.default_text().to_owned());
    let rosters = [
        ("auto", RosterFill::Auto),
        ("privilege", RosterFill::Privilege),
        ("rosterx", RosterFill::RosterX),
        ("none", RosterFill::None),
    ];
    let roster = choice(diag, &k::XMPP_ROSTER, roster, &rosters);
    let queue_capacity = ranged(diag, &k::XMPP_QUEUE_CAPACITY, queue_capacity);
    let startup_timeout = ranged(diag, &k::XMPP_STARTUP_TIMEOUT_SECS, startup_timeout);

    let mut ok = true;
    if let (Some(AddressMode::Gateway), Some(c)) = (mode, &component_domains) {
        if c.len() != 1 {
            diag.problem(
                k::XMPP_COMPONENT_DOMAINS.path,
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
        roster: roster?,
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

/// The component secret the example configurations ship with.
const EXAMPLE_SECRET: &str = "change-me";

fn xmpp_secret(
    secret: Field<String>,
    secret_file: Field<String>,
    base: &Path,
    diag: &mut Diag,
) -> Option<Secret> {
    match (secret, secret_file) {
        (Err(Reported), _) | (_, Err(Reported)) => None,
        (Ok(Some(_)), Ok(Some(_))) => {
            diag.problem(
                k::XMPP_SECRET.path,
                "set either secret or secret_file, not both",
            );
            None
        }
        (Ok(Some(s)), Ok(None)) => {
            if s.is_empty() {
                diag.problem(k::XMPP_SECRET.path, "must not be empty");
                None
            } else {
                Some(Secret(s))
            }
        }
        (Ok(None), Ok(Some(file))) => {
            let path = match path_value(base, file) {
                Ok(p) => p,
                Err(reason) => {
                    diag.problem(k::XMPP_SECRET_FILE.path, reason);
                    return None;
                }
            };
            match std::fs::read_to_string(&path) {
                Ok(s) => {
                    let s = s.trim_end_matches(['\r', '\n']);
                    if s.trim().is_empty() {
                        diag.problem(k::XMPP_SECRET_FILE.path, format!("{:?} is empty", path));
                        None
                    } else {
                        Some(Secret(s.to_owned()))
                    }
                }
                Err(e) => {
                    diag.problem(
                        k::XMPP_SECRET_FILE.path,
                        format!("cannot read {:?}: {}", path, reader::io_reason(&e)),
                    );
                    None
                }
            }
        }
        (Ok(None), Ok(None)) => {
            if !diag.was_suggested(k::XMPP_SECRET_FILE.path) {
                diag.missing(
                    k::XMPP_SECRET.path,
                    "required key is missing (or set secret_file)",
                );
            }
            None
        }
    }
}

fn sip_section(mut t: Table, base: &Path, diag: &mut Diag) -> Option<SipConfig> {
    let listen = t.string(&k::SIP_LISTEN, diag);
    let public_fqdn = t.string(&k::SIP_PUBLIC_FQDN, diag);
    let cert_chain = t.string(&k::SIP_CERT_CHAIN, diag);
    let private_key = t.string(&k::SIP_PRIVATE_KEY, diag);
    let client_chain = t.string(&k::SIP_CLIENT_CERT_CHAIN, diag);
    let client_key = t.string(&k::SIP_CLIENT_PRIVATE_KEY, diag);
    let accept_server_auth_only = t.bool(&k::SIP_ACCEPT_SERVER_AUTH_ONLY_CLIENTS, diag);
    let ca_bundle = t.string(&k::SIP_CA_BUNDLE, diag);
    let use_system_roots = t.bool(&k::SIP_USE_SYSTEM_ROOTS, diag);
    let max_header_bytes = t.int(&k::SIP_MAX_HEADER_BYTES, diag);
    let max_body_bytes = t.int(&k::SIP_MAX_BODY_BYTES, diag);
    let max_headers = t.int(&k::SIP_MAX_HEADERS, diag);
    let per_edge = t.int(&k::SIP_MAX_CONNECTIONS_PER_EDGE, diag);
    let per_network = t.int(&k::SIP_MAX_CONNECTIONS_PER_NETWORK, diag);
    let dns_servers = t.strings(&k::SIP_DNS_SERVERS, diag);
    let connect_timeout = t.int(&k::SIP_CONNECT_TIMEOUT_SECS, diag);
    let handshake_timeout = t.int(&k::SIP_HANDSHAKE_TIMEOUT_SECS, diag);
    let idle_timeout = t.int(&k::SIP_IDLE_TIMEOUT_SECS, diag);
    let keepalive_interval = t.int(&k::SIP_KEEPALIVE_INTERVAL_SECS, diag);
    let message_timeout = t.int(&k::SIP_MESSAGE_TIMEOUT_SECS, diag);
    let max_dns_lookups = t.int(&k::SIP_MAX_DNS_LOOKUPS, diag);
    let max_dns_lookups_per_peer = t.int(&k::SIP_MAX_DNS_LOOKUPS_PER_PEER, diag);
    let pool_idle = t.int(&k::SIP_POOL_IDLE_SECS, diag);
    let max_handshakes = t.int(&k::SIP_MAX_HANDSHAKES, diag);
    let per_address = t.int(&k::SIP_MAX_CONNECTIONS_PER_ADDRESS, diag);
    let per_identity = t.int(&k::SIP_MAX_CONNECTIONS_PER_IDENTITY, diag);
    let max_connections = t.int(&k::SIP_MAX_CONNECTIONS, diag);
    let write_backlog = t.int(&k::SIP_MAX_WRITE_BACKLOG_BYTES, diag);
    t.finish(diag);

    let listen = conv(diag, k::SIP_LISTEN.path, listen, |s| {
        checks::socket_addr(&s)
    });
    let listen = or_parsed(
        listen,
        checks::socket_addr(k::SIP_LISTEN.default_text()).ok(),
    );
    let public_fqdn = conv(diag, k::SIP_PUBLIC_FQDN.path, public_fqdn, |s| {
        checks::domain(s.trim())
    });
    let public_fqdn = required(diag, k::SIP_PUBLIC_FQDN.path, public_fqdn);
    let cert_chain = conv(diag, k::SIP_CERT_CHAIN.path, cert_chain, |s| {
        path_value(base, s)
    });
    let cert_chain = required(diag, k::SIP_CERT_CHAIN.path, cert_chain);
    let private_key = conv(diag, k::SIP_PRIVATE_KEY.path, private_key, |s| {
        path_value(base, s)
    });
    let private_key = required(diag, k::SIP_PRIVATE_KEY.path, private_key);
    let client_chain = conv(diag, k::SIP_CLIENT_CERT_CHAIN.path, client_chain, |s| {
        path_value(base, s)
    });
    let client_key = conv(diag, k::SIP_CLIENT_PRIVATE_KEY.path, client_key, |s| {
        path_value(base, s)
    });
    let client_cert = match (client_chain, client_key) {
        (Ok(Some(chain)), Ok(Some(key))) => Some(Some(ClientCert { chain, key })),
        (Ok(None), Ok(None)) => Some(None),
        (Ok(Some(_)), Ok(None)) => {
            diag.problem(
                k::SIP_CLIENT_PRIVATE_KEY.path,
                "required when sip.client_cert_chain is set (set both or neither)",
            );
            None
        }
        (Ok(None), Ok(Some(_))) => {
            diag.problem(
                k::SIP_CLIENT_CERT_CHAIN.path,
                "required when sip.client_private_key is set (set both or neither)",
            );
            None
        }
        _ => None,
    };
    let accept_server_auth_only = or_default(
        accept_server_auth_only,
        k::SIP_ACCEPT_SERVER_AUTH_ONLY_CLIENTS.default_bool(),
    );
    let use_system_roots = or_default(use_system_roots, k::SIP_USE_SYSTEM_ROOTS.default_bool());
    let ca_bundle = match conv(diag, k::SIP_CA_BUNDLE.path, ca_bundle, |s| {
        path_value(base, s)
    }) {
        Ok(Some(p)) => Some(Some(p)),
        Ok(None) if use_system_roots == Some(true) => Some(None),
        Ok(None) if use_system_roots.is_none() => None,
        Ok(None) => {
            diag.missing(
                k::SIP_CA_BUNDLE.path,
                "required unless use_system_roots = true (peers' certificates must be verified)",
            );
            None
        }
        Err(Reported) => None,
    };
    let max_header_bytes = ranged(diag, &k::SIP_MAX_HEADER_BYTES, max_header_bytes);
    let max_body_bytes = ranged(diag, &k::SIP_MAX_BODY_BYTES, max_body_bytes);
    let max_headers = ranged(diag, &k::SIP_MAX_HEADERS, max_headers);
    let per_edge = ranged(diag, &k::SIP_MAX_CONNECTIONS_PER_EDGE, per_edge);
    let per_network = ranged(diag, &k::SIP_MAX_CONNECTIONS_PER_NETWORK, per_network);
    let dns_servers = dns_server_list(diag, k::SIP_DNS_SERVERS.path, dns_servers);
    let dns_servers = or_default(dns_servers, Vec::new());
    let connect_timeout = ranged(diag, &k::SIP_CONNECT_TIMEOUT_SECS, connect_timeout);
    let handshake_timeout = ranged(diag, &k::SIP_HANDSHAKE_TIMEOUT_SECS, handshake_timeout);
    let idle_timeout = ranged(diag, &k::SIP_IDLE_TIMEOUT_SECS, idle_timeout);
    let keepalive_interval =
        ranged_or_off(diag, &k::SIP_KEEPALIVE_INTERVAL_SECS, keepalive_interval);
    let message_timeout = ranged(diag, &k::SIP_MESSAGE_TIMEOUT_SECS, message_timeout);
    let max_dns_lookups = ranged(diag, &k::SIP_MAX_DNS_LOOKUPS, max_dns_lookups);
    let max_dns_lookups_per_peer = ranged(
        diag,
        &k::SIP_MAX_DNS_LOOKUPS_PER_PEER,
        max_dns_lookups_per_peer,
    );
    let pool_idle = ranged(diag, &k::SIP_POOL_IDLE_SECS, pool_idle);
    let max_handshakes = ranged(diag, &k::SIP_MAX_HANDSHAKES, max_handshakes);
    let per_address = ranged(diag, &k::SIP_MAX_CONNECTIONS_PER_ADDRESS, per_address);
    let per_identity = ranged(diag, &k::SIP_MAX_CONNECTIONS_PER_IDENTITY, per_identity);
    let max_connections = ranged(diag, &k::SIP_MAX_CONNECTIONS, max_connections);
    let write_backlog = ranged(diag, &k::SIP_MAX_WRITE_BACKLOG_BYTES, write_backlog);
    let mut ok = true;
    // One peer (however many connections and certificates' names it has) must not be able to
    // hold every lookup slot.
    if let (Some(all), Some(one)) = (max_dns_lookups, max_dns_lookups_per_peer) {
        let most = all / 2;
        if one > most {
            diag.problem(
                k::SIP_MAX_DNS_LOOKUPS_PER_PEER.path,
                format!("must be at most half of sip.max_dns_lookups ({most}), not {one}"),
            );
            ok = false;
        }
    }
    for (key, value) in [
        (k::SIP_MAX_CONNECTIONS_PER_ADDRESS.path, per_address),
        (k::SIP_MAX_CONNECTIONS_PER_IDENTITY.path, per_identity),
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
                k::SIP_MAX_WRITE_BACKLOG_BYTES.path,
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
                k::SIP_MAX_CONNECTIONS_PER_NETWORK.path,
                format!("must be at least sip.max_connections_per_edge ({e}), not {n}"),
            );
            ok = false;
        }
    }
    if let (Some(Some(k)), Some(idle)) = (keepalive_interval, idle_timeout) {
        if k >= idle {
            diag.problem(
                k::SIP_KEEPALIVE_INTERVAL_SECS.path,
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
        client_cert: client_cert?,
        accept_server_auth_only_clients: accept_server_auth_only?,
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
        edge: EdgeLimits {
            max_dns_lookups: to_usize(max_dns_lookups?),
            max_dns_lookups_per_peer: to_usize(max_dns_lookups_per_peer?),
            pool_idle: Duration::from_secs(pool_idle?),
            max_handshakes: to_usize(max_handshakes?),
            max_connections_per_address: to_usize(per_address?),
            max_connections_per_identity: to_usize(per_identity?),
            max_connections: to_usize(max_connections?),
            max_write_backlog_bytes: to_usize(write_backlog?),
        },
    })
}

fn federation_section(mut t: Table, diag: &mut Diag) -> Option<FederationConfig> {
    let default_policy = t.string(&k::FEDERATION_DEFAULT_POLICY, diag);
    let partners = t.tables(&k::FEDERATION_PARTNERS, diag);
    let discovered_rate = t.int(&k::FEDERATION_DISCOVERED_RATE, diag);
    let level = t.string(&k::FEDERATION_VERIFICATION_LEVEL, diag);
    t.finish(diag);

    let policies = [
        ("allow", DefaultPolicy::Allow),
        ("deny", DefaultPolicy::Deny),
    ];
    let default_policy = choice(
        diag,
        &k::FEDERATION_DEFAULT_POLICY,
        default_policy,
        &policies,
    );
    let discovered_rate = ranged(diag, &k::FEDERATION_DISCOVERED_RATE, discovered_rate);
    let level = choice(diag, &k::FEDERATION_VERIFICATION_LEVEL, level, LEVELS);
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
                k::FEDERATION_DEFAULT_POLICY.path,
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
    let domain = t.string(&k::PARTNER_DOMAIN, diag);
    let policy = t.string(&k::PARTNER_POLICY, diag);
    let edge = t.string(&k::PARTNER_EDGE, diag);
    let level = t.string(&k::PARTNER_VERIFICATION_LEVEL, diag);
    t.finish(diag);
    let key = |k: &str| format!("federation.partners[{i}].{k}");

    let domain = conv(diag, &key("domain"), domain, |s| checks::domain(s.trim()));
    let domain = required(diag, &key("domain"), domain);
    let policies = [
        ("allow", PartnerPolicy::Allow),
        ("block", PartnerPolicy::Block),
    ];
    let policy = pick(diag, &key("policy"), &k::PARTNER_POLICY, policy, &policies);
    let policy = or_parsed(policy, default_word(&k::PARTNER_POLICY, &policies));
    let edge = conv(diag, &key("edge"), edge, |s| {
        checks::edge(s.trim()).map(|(host, port)| Edge { host, port })
    });
    let edge = edge.ok();
    let level = pick(
        diag,
        &key("verification_level"),
        &k::PARTNER_VERIFICATION_LEVEL,
        level,
        LEVELS,
    );
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
    let suffix = t.string(&k::PRESENCE_DISPLAY_NAME_SUFFIX, diag);
    let icon_url = t.string(&k::PRESENCE_ICON_URL, diag);
    let interval = t.int(&k::PRESENCE_NOTIFY_MIN_INTERVAL_SECS, diag);
    let expires = t.int(&k::PRESENCE_SUBSCRIPTION_EXPIRES_SECS, diag);
    let restore_rate = t.int(&k::PRESENCE_RESTORE_RATE, diag);
    let pending_domain = t.int(&k::PRESENCE_MAX_PENDING_PER_DOMAIN, diag);
    let pending_partner = t.int(&k::PRESENCE_MAX_PENDING_PER_PARTNER, diag);
    let pending_user = t.int(&k::PRESENCE_MAX_PENDING_PER_USER, diag);
    let enhanced = t.bool(&k::PRESENCE_ENHANCED, diag);
    t.finish(diag);
    let enhanced = or_default(enhanced, k::PRESENCE_ENHANCED.default_bool());

    let suffix = conv(diag, k::PRESENCE_DISPLAY_NAME_SUFFIX.path, suffix, |s| {
        text(s, 64)
    });
    let suffix = or_default(suffix.map(|s| s.map(Some)), None);
    let icon_url = conv(diag, k::PRESENCE_ICON_URL.path, icon_url, |s| {
        checks::https_url(s.trim())
    });
    let icon_url = or_default(icon_url.map(|s| s.map(Some)), None);
    let interval = ranged(diag, &k::PRESENCE_NOTIFY_MIN_INTERVAL_SECS, interval);
    let expires = ranged(diag, &k::PRESENCE_SUBSCRIPTION_EXPIRES_SECS, expires);
    let restore_rate = ranged(diag, &k::PRESENCE_RESTORE_RATE, restore_rate);
    let pending_domain = ranged(diag, &k::PRESENCE_MAX_PENDING_PER_DOMAIN, pending_domain);
    let pending_partner = ranged(diag, &k::PRESENCE_MAX_PENDING_PER_PARTNER, pending_partner);
    let pending_user = ranged(diag, &k::PRESENCE_MAX_PENDING_PER_USER, pending_user);
    Some(PresenceConfig {
        display_name_suffix: suffix?,
        icon_url: icon_url?,
        notify_min_interval: Duration::from_secs(interval?),
        subscription_expires: Duration::from_secs(expires?),
        restore_rate: u32::try_from(restore_rate?).unwrap_or(u32::MAX),
        max_pending_per_domain: usize::try_from(pending_domain?).unwrap_or(usize::MAX),
        max_pending_per_partner: usize::try_from(pending_partner?).unwrap_or(usize::MAX),
        max_pending_per_user: usize::try_from(pending_user?).unwrap_or(usize::MAX),
        enhanced: enhanced?,
    })
}

fn im_section(mut t: Table, diag: &mut Diag) -> Option<ImConfig> {
    let session_idle = t.int(&k::IM_SESSION_IDLE_SECS, diag);
    let max_message_bytes = t.int(&k::IM_MAX_MESSAGE_BYTES, diag);
    let max_queued_messages = t.int(&k::IM_MAX_QUEUED_MESSAGES, diag);
    let dialog_max_age = t.int(&k::IM_DIALOG_MAX_AGE_SECS, diag);
    let max_sessions = t.int(&k::IM_MAX_SESSIONS, diag);
    let per_domain = t.int(&k::IM_MAX_SESSIONS_PER_DOMAIN, diag);
    let per_partner = t.int(&k::IM_MAX_SESSIONS_PER_PARTNER, diag);
    let per_user = t.int(&k::IM_MAX_SESSIONS_PER_USER, diag);
    t.finish(diag);

    let session_idle = ranged(diag, &k::IM_SESSION_IDLE_SECS, session_idle);
    let max_message_bytes = ranged(diag, &k::IM_MAX_MESSAGE_BYTES, max_message_bytes);
    let max_queued_messages = ranged(diag, &k::IM_MAX_QUEUED_MESSAGES, max_queued_messages);
    let dialog_max_age = ranged(diag, &k::IM_DIALOG_MAX_AGE_SECS, dialog_max_age);
    let max_sessions = ranged(diag, &k::IM_MAX_SESSIONS, max_sessions);
    let per_domain = ranged(diag, &k::IM_MAX_SESSIONS_PER_DOMAIN, per_domain);
    let per_partner = ranged(diag, &k::IM_MAX_SESSIONS_PER_PARTNER, per_partner);
    let per_user = ranged(diag, &k::IM_MAX_SESSIONS_PER_USER, per_user);
    Some(ImConfig {
        session_idle: Duration::from_secs(session_idle?),
        max_message_bytes: to_usize(max_message_bytes?),
        max_queued_messages: to_usize(max_queued_messages?),
        dialog_max_age: Duration::from_secs(dialog_max_age?),
        max_sessions: to_usize(max_sessions?),
        max_sessions_per_domain: to_usize(per_domain?),
        max_sessions_per_partner: to_usize(per_partner?),
        max_sessions_per_user: to_usize(per_user?),
    })
}

/// `[storage]`: the directory and the store kept in it, or the PostgreSQL database.
fn storage_section(mut t: Table, base: &Path, diag: &mut Diag) -> Option<StorageConfig> {
    let path = t.string(&k::STORAGE_PATH, diag);
    let backend = t.string(&k::STORAGE_BACKEND, diag);
    let url = t.string(&k::STORAGE_URL, diag);
    let password_file = t.string(&k::STORAGE_PASSWORD_FILE, diag);
    let pool_size = t.int(&k::STORAGE_POOL_SIZE, diag);
    let connect_timeout = t.int(&k::STORAGE_CONNECT_TIMEOUT_SECS, diag);
    t.finish(diag);
    let path = conv(diag, k::STORAGE_PATH.path, path, |s| path_value(base, s));
    let path = or_default(path, base.join(k::STORAGE_PATH.default_text()));
    let backends = [
        ("sled", StoreBackend::Sled),
        ("redb", StoreBackend::Redb),
        ("postgres", StoreBackend::Postgres),
    ];
    let backend = choice(diag, &k::STORAGE_BACKEND, backend, &backends);
    if backend == Some(StoreBackend::Redb) && !cfg!(feature = "redb") {
        diag.problem(
            k::STORAGE_BACKEND.path,
            "\"redb\" needs a build with the redb feature (cargo build --features redb)",
        );
        return None;
    }
    let pool_size = ranged(diag, &k::STORAGE_POOL_SIZE, pool_size);
    let connect_timeout = ranged(diag, &k::STORAGE_CONNECT_TIMEOUT_SECS, connect_timeout);
    let postgres = if backend == Some(StoreBackend::Postgres) {
        let url = match url {
            Ok(Some(u)) => match check_pg_url(&u) {
                Ok(_) => Some(u),
                Err(reason) => {
                    diag.problem(k::STORAGE_URL.path, reason);
                    None
                }
            },
            Ok(None) => {
                diag.missing(k::STORAGE_URL.path, "required with backend = \"postgres\"");
                None
            }
            Err(Reported) => None,
        };
        let password = match password_file {
            Ok(Some(file)) => Some(read_password_file(base, file, diag)?),
            Ok(None) => None,
            Err(Reported) => return None,
        };
        Some(PostgresConfig {
            url: url?,
            password,
            pool_size: to_usize(pool_size?),
            connect_timeout: Duration::from_secs(connect_timeout?),
        })
    } else {
        for (key, set) in [
            (&k::STORAGE_URL, matches!(url, Ok(Some(_)))),
            (
                &k::STORAGE_PASSWORD_FILE,
                matches!(password_file, Ok(Some(_))),
            ),
        ] {
            if set {
                diag.warning(key.path, "only used with backend = \"postgres\"");
            }
        }
        None
    };
    Some(StorageConfig {
        path: path?,
        backend: backend?,
        postgres,
    })
}

/// `[ha]` set with a store of one machine: nothing to share, so no lease (a warning).
fn ha_vs_storage(ha: &HaConfig, st: &StorageConfig, diag: &mut Diag) {
    if st.backend == StoreBackend::Postgres {
        return;
    }
    let default_ttl = Duration::from_secs(match k::HA_LEASE_TTL_SECS.default {
        super::keys::DefaultValue::Integer(n) => n,
        _ => 0,
    });
    for (key, set) in [
        (&k::HA_NODE, ha.node.is_some()),
        (&k::HA_LEASE_TTL_SECS, ha.lease_ttl != default_ttl),
    ] {
        if set {
            diag.warning(key.path, "only used with storage.backend = \"postgres\"");
        }
    }
}

/// `[ha]`: the node's name and the lease's time to live.
fn ha_section(mut t: Table, diag: &mut Diag) -> Option<HaConfig> {
    let node = t.string(&k::HA_NODE, diag);
    let ttl = t.int(&k::HA_LEASE_TTL_SECS, diag);
    t.finish(diag);
    let node = conv(diag, k::HA_NODE.path, node, |s| {
        let ok = !s.is_empty()
            && s.chars().count() <= 64
            && !s.chars().any(|c| c.is_control() || c.is_whitespace());
        if ok {
            Ok(s)
        } else {
            Err("must be 1-64 characters, without control characters or white space".to_owned())
        }
    });
    let node = or_default(node.map(|s| s.map(Some)), None);
    let ttl = ranged(diag, &k::HA_LEASE_TTL_SECS, ttl);
    Some(HaConfig {
        node: node?,
        lease_ttl: Duration::from_secs(ttl?),
    })
}

/// `storage.url`: parses (as a URL or `key=value` string), names a host, and holds no password
/// (that belongs in `storage.password_file`).
fn check_pg_url(url: &str) -> Result<(), String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a PostgreSQL connection string: {e}"))?;
    if config.get_password().is_some() {
        return Err("holds a password: put it in storage.password_file instead".into());
    }
    if config.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    Ok(())
}

/// `storage.password_file`: the password, trailing newline dropped; a file every user can
/// read is a warning.
fn read_password_file(base: &Path, file: String, diag: &mut Diag) -> Option<Secret> {
    let key = k::STORAGE_PASSWORD_FILE.path;
    let path = match path_value(base, file) {
        Ok(p) => p,
        Err(reason) => {
            diag.problem(key, reason);
            return None;
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim_end_matches(['\r', '\n']);
            if s.is_empty() {
                diag.problem(key, format!("{path:?} is empty"));
                return None;
            }
            use std::os::unix::fs::PermissionsExt as _;
            if std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                diag.warning(
                    key,
                    format!("{path:?} is readable by every user; restrict it (chmod 600)"),
                );
            }
            Some(Secret::new(s))
        }
        Err(e) => {
            diag.problem(
                key,
                format!("cannot read {:?}: {}", path, reader::io_reason(&e)),
            );
            None
        }
    }
}

/// `[mappings]`: one `path` key.
fn path_section(mut t: Table, base: &Path, key: &Key, diag: &mut Diag) -> Option<PathBuf> {
    let path = t.string(key, diag);
    t.finish(diag);
    let path = conv(diag, key.path, path, |s| path_value(base, s));
    or_default(path, base.join(key.default_text()))
}

fn logging_section(mut t: Table, diag: &mut Diag) -> Option<LoggingConfig> {
    let level = t.string(&k::LOGGING_LEVEL, diag);
    let format = t.string(&k::LOGGING_FORMAT, diag);
    t.finish(diag);

    let level = conv(diag, k::LOGGING_LEVEL.path, level, |s| {
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
    let level = or_default(level, k::LOGGING_LEVEL.default_text().to_owned());
    let formats = [("human", LogFormat::Human), ("json", LogFormat::Json)];
    let format = choice(diag, &k::LOGGING_FORMAT, format, &formats);
    Some(LoggingConfig {
        level: level?,
        format: format?,
    })
}

/// `[admin]`: the administrators' bare JIDs (each of a local domain) and the socket path.
fn admin_section(
    mut t: Table,
    base: &Path,
    local_domains: &[String],
    storage: &Path,
    diag: &mut Diag,
) -> Option<AdminConfig> {
    let jids = t.strings(&k::ADMIN_JIDS, diag);
    let socket = t.string(&k::ADMIN_SOCKET, diag);
    let listen = t.string(&k::ADMIN_METRICS_LISTEN, diag);
    t.finish(diag);
    let metrics_listen = metrics_listen(listen, diag);
    let key = k::ADMIN_JIDS.path;
    let jids = conv(diag, key, jids, |items| {
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let (node, domain) = item
                .trim()
                .split_once('@')
                .filter(|(n, d)| !n.is_empty() && !d.contains(['@', '/']) && !n.contains('/'))
                .ok_or_else(|| format!("[{i}]: {item:?} is not a bare JID (user@domain)"))?;
            let domain = checks::domain(domain).map_err(|e| format!("[{i}]: {e}"))?;
            if !local_domains.contains(&domain) {
                return Err(format!(
                    "[{i}]: {domain:?} is not one of xmpp.local_domains"
                ));
            }
            let jid = format!("{node}@{domain}");
            if out.contains(&jid) {
                return Err(format!("[{i}]: {jid:?} is listed twice"));
            }
            out.push(jid);
        }
        Ok(out)
    });
    let socket = conv(diag, k::ADMIN_SOCKET.path, socket, |s| path_value(base, s));
    let socket = or_default(socket, storage.join("admin.sock"))?;
    // sockaddr_un holds 108 bytes with the terminating NUL.
    if socket.as_os_str().len() > 107 {
        diag.problem(
            k::ADMIN_SOCKET.path,
            format!(
                "{} is longer than the 107 bytes a Unix socket path may have; set a shorter admin.socket",
                socket.display()
            ),
        );
        return None;
    }
    Some(AdminConfig {
        jids: or_default(jids, Vec::new())?,
        socket,
        metrics_listen: metrics_listen?,
    })
}

/// `admin.metrics_listen` (`""`: off; not loopback: a warning, since the listener has no
/// authentication).
fn metrics_listen(listen: Field<String>, diag: &mut Diag) -> Option<Option<SocketAddr>> {
    let listen = conv(diag, k::ADMIN_METRICS_LISTEN.path, listen, |s| {
        if s.trim().is_empty() {
            Ok(None)
        } else {
            checks::socket_addr(&s).map(Some)
        }
    });
    let default = checks::socket_addr(k::ADMIN_METRICS_LISTEN.default_text()).ok();
    let metrics_listen = or_parsed(listen, Some(default))?;
    if let Some(addr) = metrics_listen {
        if !addr.ip().is_loopback() {
            diag.warning(
                k::ADMIN_METRICS_LISTEN.path,
                format!(
                    "{addr} is not a loopback address: /metrics, /health and /ready have no \
                     authentication, so anyone who reaches it reads the partner domains and \
                     traffic counts (firewall it, or use 127.0.0.1)"
                ),
            );
        }
    }
    Some(metrics_listen)
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
            k::LOGGING_LEVEL.path,
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
                k::STORAGE_PATH.path,
                format!("{p:?} exists and is not a directory"),
            );
        } else if !p.exists() {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                diag.problem(
                    k::STORAGE_PATH.path,
                    format!("parent directory {parent:?} does not exist"),
                );
            }
        }
    }
    if let Some(mappings) = &parts.mappings {
        let p = &mappings.path;
        if !p.exists() {
            diag.problem(
                k::MAPPINGS_PATH.path,
                format!("directory {p:?} does not exist"),
            );
        } else if !p.is_dir() {
            diag.problem(k::MAPPINGS_PATH.path, format!("{p:?} is not a directory"));
        }
    }
}
