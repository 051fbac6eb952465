//! `lcs-bridge run`: loads and validates the configuration, sets up logging, loads the mapping
//! tables and the address book, opens the store `[storage]` names (and holds its lock until
//! exit), starts the SIP federation edge and the XMPP component link, and drives the sans-IO
//! [`Bridge`] between them — its inputs with the time, its actions executed in order, what
//! failed reported back — from the stored subscriptions and IM sessions on, until SIGINT or
//! SIGTERM (then the
//! XEP-0100 unavailable presences go out). This module owns the runtime, the signals, the store
//! and the clock for the engines, and makes no protocol decision.

#![allow(clippy::disallowed_methods)] // the runner reads the clock and feeds `now` to the sans-IO parts

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use tracing::{debug, error, info, warn};
use tracing_subscriber::EnvFilter;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{self, LogFormat, StoreBackend};
use crate::core::tables::Mappings;
use crate::edge::admission::ServedDomains;
use crate::edge::dns::Discovery;
use crate::edge::pool::PoolLimits;
use crate::edge::server::EdgeEvents;
use crate::edge::server::{EdgeHandle, EdgeSettings};
use crate::edge::{self, core::CoreSettings, tls::TlsConfigs};
use crate::engine::admin::{AdminEngine, Outcome as AdminOutcome};
use crate::engine::bridge::{Action, Bridge, Failure, Input, IqEngine, Reconfigure};
use crate::engine::im::{ImEngine, ImSettings};
use crate::engine::presence::{PresenceEngine, PresenceSettings};
use crate::engine::roster::{RosterEngine, RosterMode};
use crate::engine::{Census, WallClock};
use crate::ha;
use crate::ops::{self, Readiness};
use crate::store::pg_lease::{LeaseHandle, PgConfig};
use crate::store::{self, ImDialog, Records, SledStore, Store, StoreError, Subscription};
use crate::systemd::Notifier;
use crate::telemetry;
use crate::transcript;
use crate::xmpp::gateway::GatewayInfo;
use crate::xmpp::link::{self, LinkEvent, LinkHandle, LinkSettings};

pub mod admin;
mod reload;

/// Sets up tracing from `[logging]`; `RUST_LOG`, when set, overrides the level. The level can
/// be changed while running ([`reload`]).
pub fn init_logging(cfg: &config::LoggingConfig) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).context("RUST_LOG")?,
        _ => EnvFilter::try_new(&cfg.level).context("logging.level")?,
    };
    let registry = tracing_subscriber::registry().with(reload::reloadable_filter(filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colours_wanted())
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Human => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
    result.map_err(|e| anyhow!("cannot initialise logging: {e}"))
}

/// Colours (ANSI escapes) in the human format only when stderr is a terminal and `NO_COLOR`
/// is not set (<https://no-color.org>): never in a file, a pipe or the journal.
fn colours_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the bridge until a termination signal.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    run_with(config_path, true, None)
}

/// [`run`]; `init_logging` false: the caller has set up tracing already; `stop_asked`: the caller
/// can stop the bridge as a termination signal does (`lcs-bridge demo`).
pub fn run_with(
    config_path: &Path,
    init_logging: bool,
    mut stop_asked: Option<oneshot::Receiver<()>>,
) -> anyhow::Result<()> {
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
    if init_logging {
        self::init_logging(&cfg.logging)?;
    }
    for w in &report.warnings {
        warn!(key = %w.key, "{}", w.reason);
    }
    let mappings = Mappings::load(cfg.mappings_dir()).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow!("mapping tables: {}", lines.join("; "))
    })?;
    let book = cfg.address_book().context("xmpp")?;
    // Opened before anything is served, and held (with its lock) until the end of `run`.
    let store = open_store(&cfg.storage, false)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let tls = load_tls(&cfg.sip).map_err(|e| anyhow!("sip TLS: {e}"))?;
    let edge_settings = edge_settings(&cfg, tls);
    // Before the edge and the link start: /ready answers 503 while they come up.
    let ready = Arc::new(Readiness::new(book.component_domains().to_vec()));
    ready.set_store_open(true);
    let metrics = match cfg.admin.metrics_listen {
        Some(addr) => Some((addr, ops::install_recorder()?)),
        None => None,
    };
    let notifier = Notifier::from_env();
    runtime.block_on(async {
        // Handlers first, so a signal that arrives right after the start-up line is caught.
        let mut signals = Signals::install()?;
        // With a shared database: a standby until the lease is this node's; nothing is
        // restored, connected or listened on before (docs/high-availability.md).
        let mut lease = match lease_database(&cfg)? {
            Some(pg) => match standby(&cfg, pg, &mut signals, store.as_ref(), &notifier).await? {
                Some(lease) => Some(lease),
                None => return Ok(()),
            },
            None => None,
        };
        // A write the store refused as fenced: another bridge leads.
        let (fenced_tx, mut fenced) = mpsc::unbounded_channel();
        if let Some((addr, handle)) = metrics {
            ops::serve(addr, handle, ready.clone()).await?;
            telemetry::build_info(unix_now());
        }
        let discovery =
            Discovery::new(&cfg.sip.dns_servers).map_err(|e| anyhow!("sip.dns_servers: {e}"))?;
        let (edge, events) = edge::server::start(edge_settings, Arc::new(discovery))
            .await
            .with_context(|| format!("sip.listen: cannot listen on {}", cfg.sip.listen))?;
        let edge = Arc::new(edge);
        ready.set_sip_listening(true);
        let (link, link_events) = link::start_gated(
            LinkSettings::from_config(&cfg.xmpp),
            cfg.xmpp.startup_timeout,
            lease.as_ref().map(|l| link_gate(l.serving_until.clone())),
        )
        .await
        .map_err(|e| anyhow!("xmpp: {e}"))?;
        ready.set_link(link.clone());
        let clock = WallClock {
            at: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let im = ImEngine::new(
            im_settings(&cfg),
            book.clone(),
            mappings.errors.clone(),
            edge.tx_ids(),
            crate::random::seed(),
            clock,
        );
        let presence = PresenceEngine::new(
            presence_settings(&cfg),
            book.clone(),
            mappings.clone(),
            edge.tx_ids(),
            crate::random::seed(),
            clock,
        );
        let iq = IqEngine::new(
            book.clone(),
            GatewayInfo::new(cfg.xmpp.gateway_name.clone()),
        );
        let roster = RosterEngine::new(
            roster_mode(cfg.xmpp.roster),
            book.clone(),
            crate::random::seed(),
        );
        let restored = (
            stored(store.subscriptions(), "subscriptions"),
            stored(store.im_dialogs(), "IM sessions"),
        );
        let (stop, stop_rx) = mpsc::channel(1);
        let (reconfigure, reconfigure_rx) = mpsc::channel(1);
        let reloader = reload::Reloader::new(config_path, cfg.clone(), mappings.clone());
        let (admin_jobs, mut admin_rx) = mpsc::channel::<admin::AdminJob>(admin::QUEUE);
        let (engine_jobs, engine_jobs_rx) = mpsc::channel::<admin::EngineJob>(admin::QUEUE);
        let _socket = admin::serve(&cfg.admin.socket, admin_jobs.clone())?;
        let mut executor = admin::Executor::new(
            reloader,
            edge.clone(),
            store.clone(),
            reconfigure,
            engine_jobs,
        );
        let runner = Runner {
            bridge: Bridge::standard(
                presence,
                roster,
                im,
                iq,
                AdminEngine::new(book.component_domains().to_vec(), cfg.admin.jids.clone()),
                mappings.errors.clone(),
            ),
            admin: admin_jobs.clone(),
            admin_done: mpsc::channel(admin::QUEUE),
            engine_jobs: engine_jobs_rx,
            waiting: std::collections::HashMap::new(),
            next_job: 1,
            edge: edge.clone(),
            link,
            store: store.clone(),
            lease: lease.as_ref().map(|l| l.serving_until.clone()),
            fenced: fenced_tx,
            queue_capacity: cfg.xmpp.queue_capacity,
            heard: transcript::Lines::default(),
            notifier: notifier.clone(),
        };
        tokio::spawn(runner.run(restored, events, link_events, reconfigure_rx, stop_rx));
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
        if notifier.enabled() {
            info!(
                watchdog_ms = notifier.watchdog_interval().map(|d| d.as_millis() as u64),
                "systemd: ready"
            );
        }
        let status = format!("SIP edge on {}, component link up", edge.local_addr);
        notifier.ready(&status);
        // Signals, the caller's stop (`demo`), and the administration commands (XEP-0050 and
        // the socket), one at a time.
        let signal = loop {
            let asked = async {
                match stop_asked.as_mut() {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signal = signals.next() => match signal {
                    "SIGHUP" => {
                        notifier.reloading();
                        executor.reload("SIGHUP").await;
                        notifier.ready(&status);
                    }
                    other => break other,
                },
                () = asked => break "stop",
                message = deposed(&mut lease) => {
                    // Another bridge serves now: stop at once, say nothing more to either
                    // side (its component and its listener are the ones in use).
                    edge.shutdown();
                    return Err(anyhow!(message));
                }
                Some(reason) = fenced.recv() => {
                    edge.shutdown();
                    return Err(anyhow!(ha::fenced(&reason)));
                }
                Some(job) = admin_rx.recv() => {
                    let outcome = executor.execute(job.command).await;
                    let _ = job.reply.send(outcome);
                }
            }
        };
        notifier.stopping();
        info!(signal, "shutting down");
        // XEP-0100: unavailable presence from contacts and the gateway before the link goes.
        let (done, done_rx) = oneshot::channel();
        if stop.send(done).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), done_rx).await;
        }
        ready.set_sip_listening(false);
        edge.shutdown();
        if let Some(lease) = lease {
            // A clean stop hands over at once.
            lease.release().await;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    ready.set_store_open(false);
    store.flush().context("storage.path")?;
    drop(store);
    info!("stopped");
    Ok(())
}

/// The database the leader lease lives in: the store's, with a shared (PostgreSQL) store;
/// none with an embedded one (one machine, nothing to share).
fn lease_database(cfg: &config::Config) -> anyhow::Result<Option<PgConfig>> {
    let pg = match (cfg.storage.backend, &cfg.storage.postgres) {
        (StoreBackend::Postgres, Some(pg)) => pg,
        _ => return Ok(None),
    };
    let mut config: PgConfig = pg.url.parse().context("storage.url")?;
    if let Some(password) = &pg.password {
        config.password(password.expose());
    }
    config.connect_timeout(pg.connect_timeout);
    Ok(Some(config))
}

/// Waits as a standby for the lease (SIGHUP ignored meanwhile); `None` when SIGINT or SIGTERM
/// came first.
///
/// Under systemd a standby is a started service (`READY=1`, its status saying it waits) that
/// keeps the watchdog fed: it may wait for hours, longer than any start-up timeout.
async fn standby(
    cfg: &config::Config,
    pg: PgConfig,
    signals: &mut Signals,
    store: &dyn Store,
    notifier: &Notifier,
) -> anyhow::Result<Option<LeaseHandle>> {
    let mut lease = ha::start(cfg, pg);
    notifier.ready("standby: waiting for the leader lease");
    let mut watchdog = notifier.watchdog_period().map(tokio::time::interval);
    let epoch = loop {
        tokio::select! {
            epoch = ha::acquire(&mut lease) => break epoch?,
            signal = signals.next() => if signal != "SIGHUP" {
                info!(signal, "stopped while standby");
                notifier.stopping();
                lease.release().await;
                return Ok(None);
            },
            _ = next_tick(&mut watchdog) => notifier.watchdog(),
        }
    };
    // Every write from now on carries the epoch: refused once another bridge has taken over.
    store.fence(u64::try_from(epoch).unwrap_or_default());
    info!(epoch, "active: restoring the state, connecting, listening");
    Ok(Some(lease))
}

/// Under a lease, the component connects only while this node may serve (a node woken past
/// its deadline must not replace the active node's connection).
fn link_gate(serving_until: watch::Receiver<Option<Instant>>) -> link::ConnectGate {
    Arc::new(move || serving_until.borrow().is_some_and(|u| Instant::now() < u))
}

/// Until the lease is lost (never without one).
async fn deposed(lease: &mut Option<LeaseHandle>) -> String {
    match lease {
        Some(lease) => ha::until_deposed(lease).await,
        None => std::future::pending().await,
    }
}

/// Opens the store `[storage]` names (`backend` in `path`), holding its lock until dropped.
/// `read_only` (the `store` commands): it must be there already and is not migrated; else
/// (`run`) it is created when missing and an older schema is migrated, with a WARN line, since
/// an older build then refuses it (docs/storage.md "Schema version and migration").
pub fn open_store(cfg: &config::StorageConfig, read_only: bool) -> anyhow::Result<Arc<dyn Store>> {
    let opened = Instant::now();
    let migrated = |from: Option<u32>| {
        if let Some(from) = from {
            warn!(
                path = %cfg.path.display(),
                from,
                to = store::CURRENT_SCHEMA_VERSION,
                "store schema {from}→{}; older builds refuse this store",
                store::CURRENT_SCHEMA_VERSION
            );
        }
    };
    let store: Arc<dyn Store> = match cfg.backend {
        StoreBackend::Sled => {
            let dir = store::sled_dir(&cfg.path);
            let store = if read_only {
                SledStore::open_read_only(&dir)
            } else {
                SledStore::open(&dir)
            }
            .context("storage.path")?;
            migrated(store.migrated_from());
            info!(
                path = %store.path().display(),
                schema_version = store.schema_version(),
                open_ms = opened.elapsed().as_millis() as u64,
                "store opened"
            );
            Arc::new(store)
        }
        #[cfg(feature = "redb")]
        StoreBackend::Redb => {
            let store = if read_only {
                store::RedbStore::open_read_only(&cfg.path)
            } else {
                store::RedbStore::open(&cfg.path)
            }
            .context("storage.path")?;
            migrated(store.migrated_from());
            info!(
                path = %store.path().display(),
                schema_version = store.schema_version(),
                open_ms = opened.elapsed().as_millis() as u64,
                "store opened (redb)"
            );
            Arc::new(store)
        }
        StoreBackend::Postgres => {
            let pg = cfg
                .postgres
                .as_ref()
                .ok_or_else(|| anyhow!("storage.url: required with backend = \"postgres\""))?;
            let options = store::PgOptions {
                pool_size: pg.pool_size,
                connect_timeout: pg.connect_timeout,
                ..store::PgOptions::new(
                    &pg.url,
                    pg.password.as_ref().map(|p| p.expose().to_owned()),
                )
            };
            let store = if read_only {
                store::PgStore::open_read_only(&options)
            } else {
                store::PgStore::open(&options)
            }
            .context("storage.url")?;
            if let Some(from) = store.migrated_from() {
                warn!(
                    database = %store.target(),
                    from,
                    to = store::CURRENT_SCHEMA_VERSION,
                    "store schema {from}→{}; older builds refuse this store",
                    store::CURRENT_SCHEMA_VERSION
                );
            }
            info!(
                database = %store.target(),
                schema_version = store.schema_version(),
                open_ms = opened.elapsed().as_millis() as u64,
                "store opened (PostgreSQL)"
            );
            Arc::new(store)
        }
        #[cfg(not(feature = "redb"))]
        StoreBackend::Redb => {
            return Err(anyhow!(
                "storage.backend: \"redb\" needs a build with the redb feature (cargo build --features redb)"
            ));
        }
    };
    Ok(store)
}

fn load_tls(sip: &config::SipConfig) -> Result<TlsConfigs, String> {
    TlsConfigs::load(sip)
}

fn im_settings(cfg: &config::Config) -> ImSettings {
    ImSettings {
        public_fqdn: cfg.sip.public_fqdn.clone(),
        idle_timeout: cfg.im.session_idle,
        dialog_max_age: cfg.im.dialog_max_age,
        max_body_bytes: cfg.im.max_message_bytes,
        max_queued: cfg.im.max_queued_messages,
        max_sessions: cfg.im.max_sessions,
        max_sessions_per_domain: cfg.im.max_sessions_per_domain,
        max_sessions_per_partner: cfg.im.max_sessions_per_partner,
        max_sessions_per_user: cfg.im.max_sessions_per_user,
        partners: allowed_partners(cfg),
    }
}

/// The listed partners' domains (`policy = "allow"`, lowercase): their own pending and session
/// limits apply.
fn allowed_partners(cfg: &config::Config) -> std::collections::HashSet<String> {
    cfg.federation
        .partners
        .iter()
        .filter(|p| p.policy == config::PartnerPolicy::Allow)
        .map(|p| p.domain.to_ascii_lowercase())
        .collect()
}

fn roster_mode(fill: config::RosterFill) -> RosterMode {
    match fill {
        config::RosterFill::Auto => RosterMode::Auto,
        config::RosterFill::Privilege => RosterMode::Privilege,
        config::RosterFill::RosterX => RosterMode::RosterX,
        config::RosterFill::None => RosterMode::None,
    }
}

fn presence_settings(cfg: &config::Config) -> PresenceSettings {
    PresenceSettings {
        public_fqdn: cfg.sip.public_fqdn.clone(),
        expires: cfg.presence.subscription_expires,
        min_notify_interval: cfg.presence.notify_min_interval,
        // The same LCS limit (24 h header signatures) as IM sessions.
        dialog_max_age: cfg.im.dialog_max_age,
        nick_suffix: cfg.presence.display_name_suffix.clone(),
        icon_url: cfg.presence.icon_url.clone(),
        restore_rate: cfg.presence.restore_rate,
        max_pending_per_domain: cfg.presence.max_pending_per_domain,
        max_pending_per_partner: cfg.presence.max_pending_per_partner,
        partners: allowed_partners(cfg),
        max_pending_per_user: cfg.presence.max_pending_per_user,
        enhanced: cfg.presence.enhanced,
        ..PresenceSettings::default()
    }
}

/// Every readable record `records` gives (`what`: their name in the log); unreadable ones are
/// logged and skipped (they stay for `lcs-bridge store export` to show), and a failing read
/// ends the scan.
fn stored<T>(records: Records<'_, T>, what: &str) -> Vec<T> {
    let mut all = Vec::new();
    for r in records {
        match r {
            Ok(t) => all.push(t),
            Err(e @ StoreError::Corrupt { .. }) => warn!(reason = %e, what, "record not restored"),
            Err(e) => {
                error!(reason = %e, what, "store: reading stopped");
                break;
            }
        }
    }
    info!(count = all.len(), what, "restored from the store");
    all
}

/// Whether transcript lines are wanted (a cached check on the target's interest: nothing
/// is described when it is off).
fn transcript_on() -> bool {
    tracing::enabled!(target: "lcs_bridge::transcript", tracing::Level::DEBUG)
}

/// Most edge events the runner hands the bridge before it runs the actions they caused.
const EDGE_EVENTS_AT_ONCE: usize = 64;

/// The engines' task: edge events, component stanzas and the engines' timers into the
/// [`Bridge`]; its actions to the store, the edge and the link. Every protocol decision is the
/// bridge's; this task only does what it is told and reports what failed.
struct Runner {
    bridge: Bridge,
    edge: Arc<EdgeHandle>,
    link: LinkHandle,
    store: Arc<dyn Store>,
    /// With a leader lease: its local deadline while this node may serve (`ha`).
    lease: Option<watch::Receiver<Option<Instant>>>,
    /// Where a write refused as fenced (another bridge's epoch) is told.
    fenced: mpsc::UnboundedSender<String>,
    /// What came in since the last actions, for the transcript (empty when it is off).
    heard: transcript::Lines,
    /// `WATCHDOG=1` goes from this task's loop, so a stuck engine stops it.
    notifier: Notifier,
    /// The administration commands' executor, and the way their outcomes come back.
    admin: mpsc::Sender<admin::AdminJob>,
    admin_done: (mpsc::Sender<AdminDone>, mpsc::Receiver<AdminDone>),
    /// Commands the engines carry out (from the socket), those waiting for their outcome by
    /// id, and the next id.
    engine_jobs: mpsc::Receiver<admin::EngineJob>,
    waiting: std::collections::HashMap<u64, oneshot::Sender<AdminOutcome>>,
    next_job: u64,
    /// `xmpp.queue_capacity`, for the queue gauges.
    queue_capacity: usize,
}

/// How often the runner samples the engines' census and the queues into gauges.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch (0 before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An administration command's id and outcome, on its way back to the bridge.
type AdminDone = (u64, AdminOutcome);

impl Runner {
    /// Runs until the edge or the link ends, or `stop` asks for the shutdown presences (the
    /// task answers on the channel it is given when they are queued on the link).
    async fn run(
        mut self,
        restored: (Vec<Subscription>, Vec<ImDialog>),
        mut edge_events: EdgeEvents,
        mut link_events: mpsc::Receiver<LinkEvent>,
        mut reconfigure: mpsc::Receiver<Box<Reconfigure>>,
        mut stop: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let started = Instant::now();
        self.sync_lease();
        let (subscriptions, im_dialogs) = restored;
        self.bridge.handle(started, Input::Restore(subscriptions));
        self.bridge.handle(started, Input::RestoreIm(im_dialogs));
        let actions = self.execute().await;
        info!(
            actions,
            ms = started.elapsed().as_millis() as u64,
            "stored subscriptions taken up (and IM sessions)"
        );
        for domain in self.link.domains() {
            telemetry::link_up(&domain, self.link.is_up(&domain));
        }
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = self.notifier.watchdog_period().map(|period| {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let deadline = self.bridge.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = lease_changed(&mut self.lease) => {
                    if changed.is_err() {
                        // The lease task ended: serve nothing more.
                        self.lease = None;
                        self.bridge.set_serving_until(None);
                    }
                }
                e = edge_events.recv() => match e {
                    Some(e) => {
                        // The events that came meanwhile too (while the last actions ran, e.g.
                        // a synced write): their IM writes then share one sync.
                        self.give(Input::Edge(e));
                        for _ in 1..EDGE_EVENTS_AT_ONCE {
                            let Some(e) = edge_events.try_recv() else {
                                break;
                            };
                            self.give(Input::Edge(e));
                        }
                    }
                    None => return,
                },
                l = link_events.recv() => match l {
                    Some(LinkEvent::Stanza(el)) => {
                        telemetry::stanza(telemetry::Direction::In, el.name());
                        self.give(Input::Stanza(el))
                    }
                    Some(LinkEvent::Up { domain }) => {
                        telemetry::link_up(&domain, true);
                        self.give(Input::LinkUp { domain })
                    }
                    Some(LinkEvent::Down { domain, reason }) => {
                        telemetry::link_up(&domain, false);
                        self.give(Input::LinkDown { domain, reason })
                    }
                    None => return,
                },
                Some((command, reply)) = self.engine_jobs.recv() => {
                    let id = self.next_job;
                    self.next_job += 1;
                    self.waiting.insert(id, reply);
                    self.bridge.handle(Instant::now(), Input::Admin { id, command });
                }
                Some((id, outcome)) = self.admin_done.1.recv() => {
                    self.bridge.handle(Instant::now(), Input::AdminDone { id, outcome });
                }
                Some(settings) = reconfigure.recv() => {
                    self.bridge.handle(Instant::now(), Input::Reconfigure(settings));
                }
                done = stop.recv() => {
                    self.bridge.shutdown();
                    self.execute().await;
                    self.drain_link().await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                _ = sleep => {
                    self.sync_lease();
                    let before = self.bridge.next_batch();
                    self.bridge.handle_timeout(Instant::now());
                    if transcript_on() {
                        let made = before..self.bridge.next_batch();
                        self.heard.heard(Some(transcript::timer()), made);
                    }
                }
                _ = next_tick(&mut watchdog) => {
                    self.notifier.watchdog();
                    continue;
                }
                _ = sample.tick() => {
                    self.sample(edge_events.pending());
                    continue;
                }
            }
            self.sync_lease();
            self.execute().await;
        }
    }

    /// A write the store refused because another bridge's epoch is in force: told to `run`,
    /// which stops.
    fn note_fenced<T>(&self, r: &Result<Result<T, StoreError>, tokio::task::JoinError>) {
        if let Ok(Err(e @ StoreError::Fenced { .. })) = r {
            let _ = self.fenced.send(e.to_string());
        }
    }

    /// Gives the bridge the lease's newest deadline (before each input, so that an input is
    /// never judged against an older one).
    fn sync_lease(&mut self) {
        if let Some(rx) = &mut self.lease {
            let until = *rx.borrow_and_update();
            self.bridge.set_serving_until(until);
        }
    }

    /// Sets the gauges of what the engines hold and what waits in the queues.
    fn sample(&self, edge_pending: usize) {
        let census = self.bridge.census();
        for (state, n) in Census::OUTBOUND_STATES.iter().zip(census.outbound) {
            telemetry::subscriptions("xmpp_to_sip", state, n);
        }
        for (state, n) in Census::INBOUND_STATES.iter().zip(census.inbound) {
            telemetry::subscriptions("sip_to_xmpp", state, n);
        }
        telemetry::im_sessions(census.im_sessions);
        for domain in self.link.domains() {
            telemetry::link_queue(&domain, self.link.queued(&domain), self.queue_capacity);
        }
        telemetry::edge_pending(edge_pending, crate::edge::server::MAX_PENDING_REQUESTS);
        for (key, hits) in self.edge.limit_counters().snapshot() {
            telemetry::limit_hits(key, hits);
        }
    }

    /// Hands the bridge one input (with the lease's newest deadline first), described for the
    /// transcript when that is on.
    fn give(&mut self, input: Input) {
        self.sync_lease();
        if !transcript_on() {
            self.bridge.handle(Instant::now(), input);
            return;
        }
        let item = transcript::input(&input);
        let before = self.bridge.next_batch();
        self.bridge.handle(Instant::now(), input);
        self.heard.heard(item, before..self.bridge.next_batch());
    }

    /// Runs the bridge's actions in order, each store write done (durable ones synced) before
    /// the next; what failed is reported back. Returns how many actions ran.
    async fn execute(&mut self) -> usize {
        let mut n = 0;
        let on = transcript_on();
        while let Some(action) = self.bridge.poll_action() {
            n += 1;
            if on {
                let batch = self.bridge.action_batch();
                self.heard.said(batch, transcript::action(&action));
            }
            let done = match action {
                Action::Stanza(el) => {
                    count_stanza_out(&el);
                    match self.link.send(el) {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(reason = %e, "stanza not sent to the XMPP server");
                            self.bridge.report(Instant::now(), Failure::StanzaRefused);
                            continue;
                        }
                    }
                }
                Action::Request { tx, request, route } => {
                    self.edge.send_request_as(tx, request, route).await;
                    true
                }
                Action::Respond { tx, response } => {
                    if let Some(status) = response.status() {
                        telemetry::sip_error(status);
                    }
                    self.edge.respond(tx, response).await;
                    true
                }
                Action::Ack { conn, ack } => {
                    self.edge.send_ack(conn, ack).await;
                    true
                }
                Action::Write { subs, durable } => self.write(subs, durable).await,
                Action::WriteIm { dialogs, durable } => {
                    let store = self.store.clone();
                    let started = Instant::now();
                    let r = tokio::task::spawn_blocking(move || {
                        dialogs.iter().try_for_each(|d| store.put_im_dialog(d))?;
                        if durable { store.flush() } else { Ok(()) }
                    })
                    .await;
                    self.note_fenced(&r);
                    telemetry::store_write(durable, started.elapsed().as_secs_f64());
                    let ok = matches!(r, Ok(Ok(())));
                    if !ok {
                        error!(result = ?r, "store: IM dialog not written");
                    }
                    ok
                }
                Action::ForgetIm { local, remote } => {
                    let store = self.store.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        store.remove_im_dialog(&local, &remote)
                    })
                    .await;
                    self.note_fenced(&r);
                    let ok = matches!(r, Ok(Ok(_)));
                    if !ok {
                        error!(result = ?r, "store: IM dialog not removed");
                    }
                    ok
                }
                Action::Admin { id, command } => {
                    // Run by the executor while the bridge goes on; the outcome comes back.
                    let (jobs, done) = (self.admin.clone(), self.admin_done.0.clone());
                    tokio::spawn(async move {
                        let (reply, rx) = oneshot::channel();
                        if jobs.send(admin::AdminJob { command, reply }).await.is_ok() {
                            if let Ok(outcome) = rx.await {
                                let _ = done.send((id, outcome)).await;
                            }
                        }
                    });
                    true
                }
                Action::AdminReply { id, outcome } => {
                    if let Some(reply) = self.waiting.remove(&id) {
                        let _ = reply.send(outcome);
                    }
                    true
                }
                Action::Forget {
                    direction,
                    local,
                    remote,
                } => {
                    let store = self.store.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        store.remove_subscription(direction, &local, &remote)
                    })
                    .await;
                    self.note_fenced(&r);
                    let ok = matches!(r, Ok(Ok(_)));
                    if !ok {
                        error!(result = ?r, "store: subscription not removed");
                    }
                    ok
                }
            };
            if !done {
                self.bridge.report(Instant::now(), Failure::StoreFailed);
            }
        }
        if on {
            for line in self.heard.take() {
                debug!(target: transcript::TARGET, "{line}");
            }
        }
        n
    }

    /// Writes subscriptions off the async threads (a synced write waits for the disk); more
    /// than one synced: one atomic batch, one sync.
    async fn write(&self, subs: Vec<Subscription>, durable: bool) -> bool {
        let store = self.store.clone();
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || match (durable, subs.as_slice()) {
            (true, [sub]) => store.put_subscription(sub),
            (true, _) => store.put_subscriptions(&subs),
            (false, _) => subs.iter().try_for_each(|s| store.put_subscription_lazy(s)),
        })
        .await;
        telemetry::store_write(durable, started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(())) => true,
            other => {
                self.note_fenced(&other);
                error!(result = ?other, "store: subscription not written");
                false
            }
        }
    }

    /// Waits (at most 2 s) until the link's queues are empty, so that the shutdown presences
    /// reach the XMPP server.
    async fn drain_link(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && self
                .link
                .domains()
                .iter()
                .any(|d| self.link.is_up(d) && self.link.queued(d) > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the lease's deadline changes (forever without a lease).
async fn lease_changed(
    lease: &mut Option<watch::Receiver<Option<Instant>>>,
) -> Result<(), watch::error::RecvError> {
    match lease {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Counts a stanza going to the XMPP server, and an error stanza by its condition (RFC 6120
/// §8.3.3: the first child of `<error/>` in the stanzas namespace).
fn count_stanza_out(el: &minidom::Element) {
    telemetry::stanza(telemetry::Direction::Out, el.name());
    if el.attr("type") != Some("error") {
        return;
    }
    let condition = el
        .children()
        .find(|c| c.name() == "error")
        .and_then(|e| {
            e.children()
                .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        })
        .map_or("other", |c| c.name());
    telemetry::stanza_error(condition);
}

/// The next tick of the watchdog's interval; never without one.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
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
        limits: cfg.sip.edge,
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
