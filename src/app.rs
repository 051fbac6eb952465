//! `lcs-bridge run`: loads and validates the configuration, sets up logging, loads the mapping
//! tables and the address book, opens the store (and holds its lock until exit), starts the SIP federation edge and the XMPP component link,
//! runs the translation engine between them, and runs until SIGINT or SIGTERM. This is the
//! only module that owns the runtime, signals and the clock for the engine.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, anyhow};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use tokio::sync::mpsc;

use crate::config::{self, LogFormat};
use crate::core::address::AddressBook;
use crate::core::tables::Mappings;
use crate::edge::dns::Discovery;
use crate::edge::pool::PoolLimits;
use crate::edge::server::EdgeEvent;
use crate::edge::server::{EdgeHandle, EdgeSettings};
use crate::edge::{self, core::CoreSettings, tls::TlsConfigs};
use crate::engine::im::{ImEngine, ImSettings, Output};
use crate::policy::ServedDomains;
use crate::sip::message::Message;
use crate::store::{self, SledStore, Store as _};
use crate::xmpp::gateway::{self, GatewayInfo};
use crate::xmpp::link::{self, LinkEvent, LinkHandle, LinkSettings};

/// Sets up tracing from `[logging]`; `RUST_LOG`, when set, overrides the level.
pub fn init_logging(cfg: &config::LoggingConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).context("RUST_LOG")?,
        _ => EnvFilter::try_new(&cfg.level).context("logging.level")?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow!("cannot initialise logging: {e}"))
}

/// Runs the bridge until a termination signal.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let report = config::check(config_path, SystemTime::now());
    if !report.problems.is_empty() {
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        return Err(anyhow!(
            "{} has {} problem(s):\n{}",
            config_path.display(),
            lines.len(),
            lines.join("\n")
        ));
    }
    let cfg = report
        .config
        .ok_or_else(|| anyhow!("{}: configuration did not load", config_path.display()))?;
    init_logging(&cfg.logging)?;
    for w in &report.warnings {
        warn!(key = %w.key, "{}", w.reason);
    }
    let mappings = Mappings::load(cfg.mappings_dir()).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow!("mapping tables: {}", lines.join("; "))
    })?;
    let book = cfg.address_book().context("xmpp")?;
    // Opened before anything is served, and held (with sled's lock) until the end of `run`.
    let opened = Instant::now();
    let store = SledStore::open(&store::sled_dir(cfg.storage_path())).context("storage.path")?;
    info!(
        path = %store.path().display(),
        schema_version = store.schema_version(),
        open_ms = opened.elapsed().as_millis() as u64,
        "store opened"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let tls = load_tls(&cfg.sip).map_err(|e| anyhow!("sip TLS: {e}"))?;
    let edge_settings = edge_settings(&cfg, tls);
    runtime.block_on(async {
        // Handlers first, so a signal that arrives right after the start-up line is caught.
        let mut signals = Signals::install()?;
        let discovery =
            Discovery::new(&cfg.sip.dns_servers).map_err(|e| anyhow!("sip.dns_servers: {e}"))?;
        let (edge, events) = edge::server::start(edge_settings, Arc::new(discovery))
            .await
            .with_context(|| format!("sip.listen: cannot listen on {}", cfg.sip.listen))?;
        let edge = Arc::new(edge);
        let (link, link_events) = link::start(
            LinkSettings::from_config(&cfg.xmpp),
            cfg.xmpp.startup_timeout,
        )
        .await
        .map_err(|e| anyhow!("xmpp: {e}"))?;
        let engine = ImEngine::new(
            im_settings(&cfg),
            book.clone(),
            mappings.errors.clone(),
            edge.tx_ids(),
            crate::random::seed(),
        );
        let info = GatewayInfo::new(cfg.xmpp.gateway_name.clone());
        tokio::spawn(run_engine(
            engine,
            edge.clone(),
            events,
            link,
            link_events,
            book.clone(),
            info,
        ));
        info!(
            config = %config_path.display(),
            mode = %book.mode(),
            components = ?book.component_domains(),
            local_domains = ?book.local_domains(),
            sip_listen = %edge.local_addr,
            public_fqdn = %cfg.sip.public_fqdn,
            xmpp = %format!("{}:{}", cfg.xmpp.host, cfg.xmpp.port),
            "lcs-bridge started: SIP edge listening, component link up"
        );
        let signal = loop {
            match signals.next().await {
                "SIGHUP" => reload(&edge, config_path, &cfg).await,
                other => break other,
            }
        };
        info!(signal, "shutting down");
        edge.shutdown();
        Ok::<(), anyhow::Error>(())
    })?;
    store.flush().context("storage.path")?;
    drop(store);
    info!("stopped");
    Ok(())
}

fn load_tls(sip: &config::SipConfig) -> Result<TlsConfigs, String> {
    TlsConfigs::load(
        &sip.cert_chain,
        &sip.private_key,
        sip.ca_bundle.as_deref(),
        sip.use_system_roots,
    )
}

fn im_settings(cfg: &config::Config) -> ImSettings {
    ImSettings {
        public_fqdn: cfg.sip.public_fqdn.clone(),
        idle_timeout: cfg.im.session_idle,
        dialog_max_age: cfg.im.dialog_max_age,
        max_body_bytes: cfg.im.max_message_bytes,
        max_queued: cfg.im.max_queued_messages,
    }
}

/// The engine's task: edge events, component stanzas and the engine's timer in; the engine's
/// outputs to the edge and the link. When the link's queue is full, a 200 the engine gave for
/// a request whose stanza could not be queued becomes 503 (Retry-After), so nothing is lost
/// silently.
async fn run_engine(
    mut engine: ImEngine,
    edge: Arc<EdgeHandle>,
    mut edge_events: mpsc::UnboundedReceiver<EdgeEvent>,
    link: LinkHandle,
    mut link_events: mpsc::Receiver<LinkEvent>,
    book: AddressBook,
    info: GatewayInfo,
) {
    loop {
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let outputs = tokio::select! {
            e = edge_events.recv() => match e {
                Some(e) => engine.on_edge(Instant::now(), e),
                None => return,
            },
            l = link_events.recv() => match l {
                Some(LinkEvent::Stanza(el)) if el.name() == "iq" => {
                    if let Some(reply) = gateway::handle_iq(&el, &book, &info) {
                        send_stanza(&link, reply);
                    }
                    continue;
                }
                Some(LinkEvent::Stanza(el)) => engine.on_stanza(Instant::now(), el),
                Some(LinkEvent::Up { domain }) => {
                    info!(%domain, "component link up");
                    continue;
                }
                Some(LinkEvent::Down { domain, reason }) => {
                    warn!(%domain, %reason, "component link down; stanzas are queued");
                    continue;
                }
                None => return,
            },
            _ = sleep => engine.handle_timeout(Instant::now()),
        };
        // Stanzas first: if one cannot be queued, the SIP answer that goes with it says so.
        let mut refused = false;
        let mut rest = Vec::with_capacity(outputs.len());
        for o in outputs {
            match o {
                Output::Stanza(el) => refused |= !send_stanza(&link, el),
                other => rest.push(other),
            }
        }
        for o in rest {
            match o {
                Output::Request { tx, request, route } => {
                    edge.send_request_as(tx, request, route).await
                }
                Output::Respond { tx, mut response } => {
                    if refused && response.status() == Some(200) {
                        response = overloaded(&response);
                    }
                    edge.respond(tx, response).await
                }
                Output::Ack { conn, ack } => edge.send_ack(conn, ack).await,
                // The IM engine writes nothing to the store.
                Output::Stanza(_)
                | Output::Persist(_)
                | Output::PersistLazy(_)
                | Output::Forget { .. } => {}
            }
        }
    }
}

/// Queues a stanza on the link; false (and a log line) when it cannot be.
fn send_stanza(link: &LinkHandle, stanza: xmpp_parsers::minidom::Element) -> bool {
    match link.send(stanza) {
        Ok(()) => true,
        Err(e) => {
            warn!(reason = %e, "stanza not sent to the XMPP server");
            false
        }
    }
}

/// A 503 in place of a 200 the XMPP side could not take (the link's queue is full).
fn overloaded(ok: &Message) -> Message {
    let mut r = Message::new_response(503, "Service Unavailable: XMPP server unreachable");
    for (name, value) in ok.headers() {
        if !matches!(
            name.to_ascii_lowercase().as_str(),
            "content-type" | "content-length" | "contact" | "c" | "l" | "m"
        ) {
            r.push_header(name, value);
        }
    }
    r.push_header("Retry-After", "5");
    r
}

/// The edge's settings from the configuration.
fn core_settings(cfg: &config::Config) -> CoreSettings {
    CoreSettings {
        served: ServedDomains::of(cfg),
        federation: cfg.federation.clone(),
        public_fqdn: cfg.sip.public_fqdn.clone(),
        pool: PoolLimits::new(
            cfg.sip.max_connections_per_edge,
            cfg.sip.max_connections_per_network,
            PoolLimits::default().busy_threshold,
        ),
    }
}

fn edge_settings(cfg: &config::Config, tls: TlsConfigs) -> EdgeSettings {
    let sip = &cfg.sip;
    EdgeSettings {
        handshake_timeout: sip.handshake_timeout,
        connect_timeout: sip.connect_timeout,
        idle_timeout: sip.idle_timeout,
        keepalive_interval: sip.keepalive_interval,
        message_timeout: sip.message_timeout,
        ..EdgeSettings::new(sip.listen, tls, core_settings(cfg), sip.limits())
    }
}

/// SIGHUP: re-reads the configuration; the federation policy and connection limits apply at
/// once, certificates to new connections. On any problem everything in use stays. Settings
/// that need a restart (listen address, XMPP link, storage) are named in a warning.
async fn reload(edge: &EdgeHandle, config_path: &Path, running: &config::Config) {
    let report = config::check(config_path, SystemTime::now());
    let Some(cfg) = report.config.filter(|_| report.problems.is_empty()) else {
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        warn!(problems = %lines.join("; "), "SIGHUP: configuration has problems; nothing reloaded");
        return;
    };
    match load_tls(&cfg.sip) {
        Ok(tls) => edge.reload_tls(tls),
        Err(e) => {
            warn!(reason = %e, "SIGHUP: TLS reload failed; nothing reloaded");
            return;
        }
    }
    edge.reconfigure(core_settings(&cfg)).await;
    if cfg.sip.listen != running.sip.listen
        || cfg.xmpp != running.xmpp
        || cfg.storage != running.storage
    {
        warn!("SIGHUP: changes to sip.listen, [xmpp] or [storage] take effect after a restart");
    }
}

/// SIGINT, SIGTERM and SIGHUP handlers, installed before the bridge says it has started.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
                hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the first signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.hangup.recv() => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
