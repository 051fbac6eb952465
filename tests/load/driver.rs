//! The world a scenario runs in — the real `lcs-bridge` binary as a child process (pinned to
//! its own core), the XEP-0114 server it connects to (or a real XMPP server's component port,
//! with XMPP clients logged in to that server), the LCS edge's SIP connections — and the
//! measuring loop: offered load, latencies from a stanza or request leaving here to its
//! translation arriving here, the CPU time and RSS of the bridge (and of the XMPP server, and
//! of this generator) from /proc.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lcs_bridge::sip::message::Message;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use lcs_test_support::config::BridgeConfig;
use lcs_test_support::e2e::Mode;
use lcs_test_support::free_port;
use lcs_test_support::net::{self, Event, Tls, Writer};
use lcs_test_support::pki::{Pki, write_bridge_files};

pub const COMPONENT: &str = "lcs.xmpp.test";
pub const XMPP_DOMAIN: &str = "xmpp.test";
pub const LCS_DOMAIN: &str = "contoso.com";
const SECRET: &str = "load-secret";

/// How to run the bridge.
#[derive(Clone)]
pub struct Options {
    pub bridge: PathBuf,
    /// CPU the bridge is pinned to (`taskset`); the generator takes the others.
    pub bridge_cpu: Option<usize>,
    /// Keep the working directory (printed) instead of deleting it.
    pub keep: bool,
    /// What stands between the two neighbours the generator plays.
    pub gateway: Gateway,
}

/// The gateway under load: lcs-bridge, or Kamailio's `xmpp` module in its place
/// (docs/benchmarks.md "Kamailio side by side").
#[derive(Clone, Debug)]
pub enum Gateway {
    Bridge,
    Kamailio(Kamailio),
}

#[derive(Clone, Debug)]
pub struct Kamailio {
    /// The `kamailio` binary.
    pub bin: PathBuf,
    /// The xmpp module built by tests/load/kamailio/setup.sh.
    pub module: PathBuf,
    /// Debian's module directory (tm, sl, pv, textops, tls).
    pub mpath: PathBuf,
    /// `-x tlsf` (Kamailio's TLSF allocator for its private and shared memory) instead of its
    /// default one.
    pub tlsf: bool,
}

/// The template lcs-load fills in for Kamailio.
const KAMAILIO_CFG: &str = include_str!("kamailio/kamailio.cfg.in");

impl Kamailio {
    /// kamailio.cfg for a world in `dir` (certificates written there), listening for SIP over
    /// TLS on `sip_port`, its component connecting to `component_port`.
    fn config(&self, dir: &Path, sip_port: u16, component_port: u16, secret: &str) -> String {
        // Kamailio's levels: 0 warning, 1 notice, 2 info, 3 debug.
        let debug = match std::env::var("LCS_LOAD_LOG").as_deref() {
            Ok("debug" | "trace") => "3",
            Ok("info") => "2",
            _ => "0",
        };
        KAMAILIO_CFG
            .replace("@DEBUG@", debug)
            .replace("@SIP_PORT@", &sip_port.to_string())
            .replace("@MPATH@", &self.mpath.display().to_string())
            .replace("@XMPP_MODULE@", &self.module.display().to_string())
            .replace("@DIR@", &dir.display().to_string())
            .replace("@COMPONENT@", COMPONENT)
            .replace("@XMPP_PORT@", &component_port.to_string())
            .replace("@SECRET@", secret)
    }
}

/// The bridge's JID for LCS user `user` (gateway mode, XEP-0106).
pub fn contact_jid(user: &str) -> String {
    format!("{user}\\40{LCS_DOMAIN}@{COMPONENT}")
}

/// What the bridge's component connects to.
pub enum XmppSide<'a> {
    /// The generator's own XEP-0114 listener (no XMPP server in the way).
    Generator,
    /// A real XMPP server's component port for [`COMPONENT`], with its secret.
    Server { port: u16, secret: &'a str },
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub bridge: Child,
    pub pid: u32,
    /// When the bridge process was started.
    pub spawned: Instant,
    pub sip_addr: SocketAddr,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    pub ctx: Ctx,
    tls: Tls,
    next_client: usize,
    /// Component streams accepted so far (the current one's number).
    streams: u64,
    /// The XEP-0114 listener ([`XmppSide::Generator`]).
    component: Option<TcpListener>,
    /// A real XMPP server's process, measured like the bridge ([`XmppSide::Server`]).
    pub server_pid: Option<u32>,
    opts: Options,
}

/// What handlers write with and record into.
pub struct Ctx {
    pub xmpp: Option<Writer>,
    /// XMPP clients logged in to a real server ([`World::login`]), by number.
    pub clients: Vec<Writer>,
    pub sip: HashMap<usize, Writer>,
    /// Connections the bridge opened to the partner's listener (ids below 1<<20).
    pub accepted: usize,
    pub sent_at: Vec<Instant>,
    /// Deliveries expected for what was sent (an item may fan out).
    pub expected: u64,
    pub delivered: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub last_delivery: Option<Instant>,
    pub hist: Histogram<u64>,
    pub record: bool,
}

impl Ctx {
    /// Marks the next item sent now, to be delivered `fanout` times; its sequence number.
    pub fn sent(&mut self, now: Instant, fanout: u64) -> u64 {
        self.sent_at.push(now);
        self.expected += fanout;
        (self.sent_at.len() - 1) as u64
    }

    /// Item `seq` arrived translated at `at`.
    pub fn delivered(&mut self, seq: u64, at: Instant) {
        let Some(sent) = self.sent_at.get(seq as usize) else {
            return self.error(format!("delivery of unknown item {seq}"));
        };
        self.delivered += 1;
        self.last_delivery = Some(at);
        if self.record {
            let us = at.saturating_duration_since(*sent).as_micros() as u64;
            self.hist.saturating_record(us.max(1));
        }
    }

    pub fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    pub fn stanza(&self, s: String) {
        if let Some(x) = &self.xmpp {
            let _ = x.send(s.into_bytes());
        }
    }

    /// Sends `s` on XMPP client `client`'s stream.
    pub fn client_send(&mut self, client: usize, s: String) {
        match self.clients.get(client) {
            Some(w) => {
                let _ = w.send(s.into_bytes());
            }
            None => self.error(format!("no XMPP client {client}")),
        }
    }

    pub fn sip_send(&mut self, conn: usize, m: &Message) {
        match self.sip.get(&conn) {
            Some(w) => {
                let _ = w.send(m.to_bytes());
            }
            None => self.error(format!("connection {conn} is gone")),
        }
    }

    pub fn sip_raw(&mut self, conn: usize, bytes: Vec<u8>) {
        match self.sip.get(&conn) {
            Some(w) => {
                let _ = w.send(bytes);
            }
            None => self.error(format!("connection {conn} is gone")),
        }
    }

    pub fn outstanding(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

/// A scenario's reactions.
pub trait Handler {
    fn stanza(&mut self, cx: &mut Ctx, stanza: &[u8], at: Instant);
    fn sip(&mut self, cx: &mut Ctx, conn: usize, msg: Message, at: Instant);
    /// Sends one load item (calls `cx.sent`); false when none can go now.
    fn send_one(&mut self, _cx: &mut Ctx, _now: Instant) -> bool {
        false
    }
    fn closed(&mut self, cx: &mut Ctx, conn: usize, why: &str) {
        cx.sip.remove(&conn);
        let _ = why;
    }
    /// A stanza to XMPP client `client` (iq requests are answered and message or presence
    /// errors counted before this).
    fn client(&mut self, _cx: &mut Ctx, _client: usize, _stanza: &[u8], _at: Instant) {}
}

/// Offered load: items per second, or a closed loop keeping `window` items outstanding.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    Rate(f64),
    Window(u64),
}

/// One measured step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub offered: String,
    pub seconds: f64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The bridge's CPU time over the step, in % of one core.
    pub bridge_cpu_pct: f64,
    pub bridge_rss_kib: u64,
    pub bridge_peak_rss_kib: u64,
    /// The gateway's CPU time per delivered item, µs (what one message costs it).
    #[serde(default)]
    pub cpu_us_per_item: f64,
    /// The generator's own CPU time (all its threads), in % of one core.
    #[serde(default)]
    pub generator_cpu_pct: f64,
    /// A real XMPP server's CPU time ([`XmppSide::Server`]), in % of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_kib: Option<u64>,
}

impl World {
    /// Starts everything: PKI, the XEP-0114 listener, the partner's SIP listener, the bridge
    /// with `extra` TOML appended to its configuration; `prepare` runs on the working directory
    /// first (e.g. to fill the store). Returns when the component stream is up.
    pub async fn start(opts: &Options, extra: &str, prepare: impl FnOnce(&Path)) -> World {
        Self::start_with(opts, XmppSide::Generator, extra, prepare).await
    }

    /// [`World::start`] with the bridge's component connecting to `xmpp`. With a real server,
    /// returns once the bridge is started: whether its component is up is for the scenario to
    /// find out (through the server).
    pub async fn start_with(
        opts: &Options,
        xmpp: XmppSide<'_>,
        extra: &str,
        prepare: impl FnOnce(&Path),
    ) -> World {
        let dir = tempfile::Builder::new()
            .prefix("lcs-load-")
            .tempdir()
            .expect("a temporary directory");
        let pki = Pki::new("Load CA");
        write_bridge_files(
            dir.path(),
            &pki,
            &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
        );
        let peer_leaf = pki.leaf(&["sip.contoso.com", LCS_DOMAIN, "127.0.0.1"], false);
        let tls = Tls::new(&peer_leaf, &pki.ca);
        let (component, component_port, secret) = match xmpp {
            XmppSide::Generator => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = l.local_addr().unwrap().port();
                (Some(l), port, SECRET)
            }
            XmppSide::Server { port, secret } => (None, port, secret),
        };
        let partner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sip_port = free_port();
        let config = dir.path().join("lcs-bridge.toml");
        let log_level = std::env::var("LCS_LOAD_LOG").unwrap_or_else(|_| "warn".into());
        let toml = BridgeConfig {
            secret,
            xmpp: "queue_capacity = 100000\n",
            // Rates are measured, not limits: im-setup opens a session per message (far beyond
            // the per-user default), im-outbound queues deep behind a pending INVITE.
            im: "[im]\nmax_queued_messages = 10000\nmax_sessions = 1000000\n\
                 max_sessions_per_domain = 1000000\nmax_sessions_per_partner = 1000000\n\
                 max_sessions_per_user = 100000\n"
                .into(),
            log_level: &log_level,
            // Metrics recorded as in production (the default listener is on), so that the
            // benchmarks include their cost; `LCS_LOAD_NO_ADMIN=1` leaves the table out, for
            // an A/B against a build older than it.
            admin: if std::env::var_os("LCS_LOAD_NO_ADMIN").is_some() {
                String::new()
            } else {
                format!("[admin]\nmetrics_listen = \"127.0.0.1:{}\"\n", free_port())
            },
            extra,
            ..BridgeConfig::new(
                dir.path(),
                Mode::Gateway,
                component_port,
                sip_port,
                partner.local_addr().unwrap().port(),
            )
        }
        .toml();
        std::fs::write(&config, toml).unwrap();
        prepare(dir.path());
        let (events_tx, events) = unbounded_channel();
        net::accept_sip(partner, tls.acceptor.clone(), 0, events_tx.clone());
        let spawned = Instant::now();
        let log = dir.path().join("bridge.log");
        let bridge = match &opts.gateway {
            Gateway::Bridge => spawn_bridge(opts, &config, &log),
            Gateway::Kamailio(k) => {
                let cfg = dir.path().join("kamailio.cfg");
                std::fs::write(&cfg, k.config(dir.path(), sip_port, component_port, secret))
                    .unwrap();
                spawn_kamailio(opts, k, &cfg, &log)
            }
        };
        let pid = bridge.id();
        let mut world = World {
            sip_addr: SocketAddr::from(([127, 0, 0, 1], sip_port)),
            bridge,
            pid,
            spawned,
            events,
            events_tx,
            ctx: Ctx {
                xmpp: None,
                clients: Vec::new(),
                sip: HashMap::new(),
                accepted: 0,
                sent_at: Vec::new(),
                expected: 0,
                delivered: 0,
                errors: 0,
                first_error: None,
                last_delivery: None,
                hist: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
                record: false,
            },
            tls,
            next_client: 1 << 20,
            streams: 0,
            component,
            server_pid: None,
            opts: opts.clone(),
            dir,
        };
        if world.component.is_some() {
            world.accept_component().await;
        }
        world
    }

    /// Logs users `{prefix}0…` (password `password`) in to the XMPP server's c2s port, all at
    /// once; they become clients 0… of [`Ctx::clients`].
    pub async fn login(
        &mut self,
        c2s: SocketAddr,
        prefix: &str,
        n: usize,
        password: &str,
    ) -> Result<(), String> {
        let first = self.ctx.clients.len();
        let names: Vec<String> = (first..first + n).map(|i| format!("{prefix}{i}")).collect();
        let logins = futures::future::join_all(names.iter().enumerate().map(|(k, name)| {
            net::c2s_login(
                c2s,
                XMPP_DOMAIN,
                name,
                password,
                first + k,
                self.events_tx.clone(),
            )
        }))
        .await;
        for login in logins {
            let (w, _jid) = login?;
            self.ctx.clients.push(w);
        }
        Ok(())
    }

    async fn accept_component(&mut self) {
        self.streams += 1;
        let accept = net::accept_component(
            self.component
                .as_ref()
                .expect("the generator's XEP-0114 listener"),
            COMPONENT,
            SECRET,
            self.streams,
            self.events_tx.clone(),
        );
        let result = tokio::time::timeout(Duration::from_secs(120), accept).await;
        match result {
            Ok(Ok(w)) => self.ctx.xmpp = Some(w),
            Ok(Err(e)) => self.fail(&format!("component stream: {e}")),
            Err(_) => self.fail("the bridge did not connect its component in 120 s"),
        }
    }

    /// Panics with the bridge's log.
    pub fn fail(&self, why: &str) -> ! {
        let log = std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{why}\n--- bridge log (end) ---\n{tail}");
    }

    /// Opens `n` connections to the bridge as the LCS edge (retrying while it starts);
    /// their ids.
    pub async fn connect(&mut self, n: usize) -> Vec<usize> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = self.next_client;
            self.next_client += 1;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match net::connect_sip(
                    self.sip_addr,
                    self.tls.connector.clone(),
                    id,
                    self.events_tx.clone(),
                )
                .await
                {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => self.fail(&format!("connect: {e}")),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            ids.push(id);
        }
        // Their SipUp events.
        let want: Vec<usize> = ids.clone();
        self.pump(&mut NoHandler, None, Duration::from_secs(10), |cx| {
            want.iter().all(|id| cx.sip.contains_key(id))
        })
        .await;
        ids
    }

    /// Opens `n` connections to the bridge at once and waits for every handshake.
    pub async fn connect_many(&mut self, n: usize) -> Result<(), String> {
        let ids: Vec<usize> = (0..n).map(|i| self.next_client + i).collect();
        self.next_client += n;
        let results = futures::future::join_all(ids.iter().map(|&id| {
            net::connect_sip(
                self.sip_addr,
                self.tls.connector.clone(),
                id,
                self.events_tx.clone(),
            )
        }))
        .await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(format!("connect: {e}"));
        }
        let ok = self
            .pump(&mut NoHandler, None, Duration::from_secs(30), |cx| {
                ids.iter().all(|id| cx.sip.contains_key(id))
            })
            .await;
        if ok {
            Ok(())
        } else {
            Err("handshakes not done in 30 s".into())
        }
    }

    /// Closes every connection the bridge opened to the partner; how many.
    pub fn close_accepted(&mut self) -> usize {
        let before = self.ctx.sip.len();
        self.ctx.sip.retain(|id, _| *id >= 1 << 20);
        before - self.ctx.sip.len()
    }

    /// Handles events (and offers `load`) until `done` or `limit` has passed; whether `done`.
    pub async fn pump<H: Handler>(
        &mut self,
        h: &mut H,
        load: Option<Load>,
        limit: Duration,
        mut done: impl FnMut(&Ctx) -> bool,
    ) -> bool {
        let start = Instant::now();
        let deadline = start + limit;
        let base = self.ctx.sent_at.len() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if done(&self.ctx) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                biased;
                ev = self.events.recv() => {
                    let Some(ev) = ev else { self.fail("events ended") };
                    self.handle(h, ev);
                    // Whatever else is queued, without going back to the timer.
                    for _ in 0..4096 {
                        match self.events.try_recv() {
                            Ok(ev) => self.handle(h, ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let sent = self.ctx.sent_at.len() as u64 - base;
                    let due = match load {
                        None => 0,
                        Some(Load::Rate(r)) => {
                            (((now - start).as_secs_f64() * r) as u64).saturating_sub(sent)
                        }
                        Some(Load::Window(w)) => w.saturating_sub(self.ctx.outstanding()),
                    };
                    for _ in 0..due {
                        if !h.send_one(&mut self.ctx, now) {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn handle<H: Handler>(&mut self, h: &mut H, ev: Event) {
        match ev {
            Event::Stanza(s, at) => {
                if s.starts_with(b"<iq") && net::attr(&s, "type") == Some(b"get") {
                    // The link's keep-alive ping: answer it.
                    let (to, from, id) = (
                        net::attr(&s, "to").unwrap_or_default(),
                        net::attr(&s, "from").unwrap_or_default(),
                        net::attr(&s, "id").unwrap_or_default(),
                    );
                    self.ctx.stanza(format!(
                        "<iq type='result' from='{}' to='{}' id='{}'/>",
                        String::from_utf8_lossy(to),
                        String::from_utf8_lossy(from),
                        String::from_utf8_lossy(id)
                    ));
                    return;
                }
                if net::attr(&s, "type") == Some(b"error") {
                    self.ctx
                        .error(format!("error stanza: {}", String::from_utf8_lossy(&s)));
                }
                h.stanza(&mut self.ctx, &s, at)
            }
            // An earlier bridge process's stream (killed on purpose) is of no interest.
            Event::XmppClosed(stream, why) if stream == self.streams => {
                self.fail(&format!("component stream: {why}"))
            }
            Event::XmppClosed(..) => {}
            Event::Sip(conn, m, at) => {
                if let Some(status) = m.status().filter(|s| *s >= 300) {
                    self.ctx.error(format!(
                        "{status} {} to {}",
                        m.reason().unwrap_or_default(),
                        m.cseq()
                            .map(|c| c.method.as_str().to_owned())
                            .unwrap_or_default()
                    ));
                }
                h.sip(&mut self.ctx, conn, m, at)
            }
            Event::SipUp(conn, w) => {
                if conn < 1 << 20 {
                    self.ctx.accepted += 1;
                }
                self.ctx.sip.insert(conn, w);
            }
            Event::SipClosed(conn, why) => h.closed(&mut self.ctx, conn, &why),
            Event::Client(client, s, at) => {
                let kind = net::attr(&s, "type");
                if s.starts_with(b"<iq") && matches!(kind, Some(b"get" | b"set")) {
                    // The server's or the bridge's request (a ping): answer as a client does.
                    let (from, id) = (
                        net::attr(&s, "from").unwrap_or_default(),
                        net::attr(&s, "id").unwrap_or_default(),
                    );
                    let (from, id) = (String::from_utf8_lossy(from), String::from_utf8_lossy(id));
                    self.ctx.client_send(
                        client,
                        if memchr::memmem::find(&s, b"urn:xmpp:ping").is_some() {
                            format!("<iq type='result' to='{from}' id='{id}'/>")
                        } else {
                            format!(
                                "<iq type='error' to='{from}' id='{id}'><error type='cancel'>\
                                 <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                                 </error></iq>"
                            )
                        },
                    );
                    return;
                }
                if kind == Some(b"error") && !s.starts_with(b"<iq") {
                    self.ctx.error(format!(
                        "error stanza to client {client}: {}",
                        String::from_utf8_lossy(&s)
                    ));
                }
                h.client(&mut self.ctx, client, &s, at)
            }
            Event::ClientClosed(client, why) => self
                .ctx
                .error(format!("XMPP client {client}'s stream ended: {why}")),
        }
    }

    /// Offers `load` for `secs`, then waits (at most 5 s) for what is outstanding; the step's
    /// figures.
    pub async fn measure<H: Handler>(&mut self, h: &mut H, load: Load, secs: f64) -> Step {
        self.ctx.hist.reset();
        self.ctx.record = true;
        let (sent0, expected0, delivered0, errors0) = (
            self.ctx.sent_at.len() as u64,
            self.ctx.expected,
            self.ctx.delivered,
            self.ctx.errors,
        );
        let cpu0 = tree_cpu_ticks(self.pid);
        let me = std::process::id();
        let gen0 = cpu_ticks(me);
        let server0 = self.server_pid.map(cpu_ticks);
        let t0 = Instant::now();
        self.pump(h, Some(load), Duration::from_secs_f64(secs), |_| false)
            .await;
        let sent = self.ctx.sent_at.len() as u64 - sent0;
        let expected = self.ctx.expected - expected0;
        self.pump(h, None, Duration::from_secs(5), |cx| {
            cx.delivered - delivered0 >= expected
        })
        .await;
        let end = self
            .ctx
            .last_delivery
            .unwrap_or(t0)
            .max(t0 + Duration::from_millis(1));
        let wall = (end - t0).as_secs_f64();
        let cpu = tree_cpu_ticks(self.pid).saturating_sub(cpu0) as f64 / 100.0;
        let gen_cpu = (cpu_ticks(me) - gen0) as f64 / 100.0;
        let server_cpu = self
            .server_pid
            .zip(server0)
            .map(|(pid, c0)| cpu_ticks(pid).saturating_sub(c0) as f64 / 100.0);
        self.ctx.record = false;
        let (rss, peak) = match self.opts.gateway {
            Gateway::Bridge => rss_kib(self.pid),
            // Its processes share the shared-memory pool: their proportional sizes, summed.
            Gateway::Kamailio(_) => {
                let pss = tree_pss_kib(self.pid);
                (pss, pss)
            }
        };
        let delivered = self.ctx.delivered - delivered0;
        let hist = &self.ctx.hist;
        Step {
            offered: match load {
                Load::Rate(r) => format!("{r:.0}/s"),
                Load::Window(w) => format!("max (window {w})"),
            },
            seconds: wall,
            sent,
            expected,
            delivered,
            errors: self.ctx.errors - errors0,
            per_second: delivered as f64 / wall,
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            bridge_cpu_pct: 100.0 * cpu / wall,
            bridge_rss_kib: rss,
            bridge_peak_rss_kib: peak,
            cpu_us_per_item: if delivered > 0 {
                cpu * 1e6 / delivered as f64
            } else {
                0.0
            },
            generator_cpu_pct: 100.0 * gen_cpu / wall,
            server_cpu_pct: server_cpu.map(|c| 100.0 * c / wall),
            server_peak_rss_kib: self.server_pid.map(|pid| rss_kib(pid).1),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Gateway::Kamailio(_) = self.opts.gateway {
            // Kamailio's main process stops its children on SIGTERM; whatever is left of its
            // process group (its own, see spawn_kamailio) is killed after a second.
            let group = format!("-{}", self.pid);
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && matches!(self.bridge.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
        if self.opts.keep {
            let path = self.dir.path().to_owned();
            eprintln!("kept {}", path.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temporary directory"),
            ));
        }
    }
}

/// The gateway's log file, opened for appending.
fn append_to(log: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap()
}

/// A command running `bin`, pinned to the gateway's CPU (`taskset`) when one is set.
fn pinned(opts: &Options, bin: &Path) -> Command {
    match opts.bridge_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The `GLIBC_TUNABLES` the packaged unit sets (docs/operations.md, "CPU: glibc's memcmp"),
/// read from the unit so the two cannot differ.
fn unit_glibc_tunables() -> Option<&'static str> {
    include_str!("../../config/systemd/lcs-bridge.service")
        .lines()
        .find_map(|l| l.trim().strip_prefix("Environment=GLIBC_TUNABLES="))
}

fn spawn_bridge(opts: &Options, config: &Path, log: &Path) -> Child {
    let log = append_to(log);
    let mut cmd = pinned(opts, &opts.bridge);
    // The bridge runs as the unit runs it; a GLIBC_TUNABLES of the caller's wins (set it empty
    // to measure without).
    if let (None, Some(t)) = (std::env::var_os("GLIBC_TUNABLES"), unit_glibc_tunables()) {
        cmd.env("GLIBC_TUNABLES", t);
    }
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", opts.bridge.display()))
}

/// Kamailio pinned like the bridge (its children inherit the affinity), in the foreground
/// (`-DD`), logging to stderr (`-E`), in a process group of its own so that none of its
/// processes outlives the world. Shared memory 256 MiB, private 32 MiB per process, for both
/// allocators.
fn spawn_kamailio(opts: &Options, k: &Kamailio, cfg: &Path, log: &Path) -> Child {
    use std::os::unix::process::CommandExt as _;
    let log = append_to(log);
    let mut cmd = pinned(opts, &k.bin);
    cmd.arg("-f")
        .arg(cfg)
        .args(["-DD", "-E", "-m", "256", "-M", "32"]);
    if k.tlsf {
        cmd.args(["-x", "tlsf"]);
    }
    if let Some(dir) = cfg.parent() {
        cmd.arg("-w").arg(dir).arg("-Y").arg(dir);
    }
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", k.bin.display()))
}

struct NoHandler;

impl Handler for NoHandler {
    fn stanza(&mut self, _: &mut Ctx, _: &[u8], _: Instant) {}
    fn sip(&mut self, _: &mut Ctx, _: usize, _: Message, _: Instant) {}
}

/// utime + stime of process `pid` and its threads, in clock ticks (USER_HZ = 100 on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the ')'.
    n(11) + n(12)
}

/// `pid` and every process descended from it.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The field after the state, after the command in parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let at = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == at).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// [`cpu_ticks`] of `pid` and its descendants (the bridge has none; Kamailio's work is done
/// by its children).
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(cpu_ticks).sum()
}

/// The proportional set sizes (`Pss` of /proc/<pid>/smaps_rollup) of `pid` and its
/// descendants, KiB: memory they share counted once.
pub fn tree_pss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// (VmRSS, VmHWM) of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
