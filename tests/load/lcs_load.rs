//! `lcs-load`: the bridge's load generator and benchmark suite (docs/benchmarks.md
//! "End to end"). It runs the real `lcs-bridge` binary pinned to one core and plays both of
//! its neighbours from the other: the XMPP server (an XEP-0114 listener the bridge connects
//! to, so that no XMPP server is the bottleneck) and the LCS edge (mutual TLS both ways).
//! `im-prosody` puts a real Prosody in the XMPP server's place, with the generator's users
//! logged in to it as XMPP clients.
//!
//! ```sh
//! cargo run --release --example lcs-load -- all            # every scenario, full size
//! cargo run --release --example lcs-load -- --smoke all    # seconds each (the test suite)
//! cargo run --release --example lcs-load -- im-outbound --rates 10000,20000,max
//! ```
//!
//! Results: a table per scenario on stdout, and JSON lines appended to `--json`.

#![allow(clippy::unwrap_used)] // a benchmark tool: a broken fixture is a failed run
#![allow(clippy::disallowed_methods)] // the load generator measures time

mod driver;
mod scenarios;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use lcs_bridge::store::{
    Approval, DialogRecord, Direction, SledStore, Store, SubState, Subscription, sled_dir,
};
use serde_json::json;

use driver::{COMPONENT, Gateway, Load, Options, Step, World, XmppSide};
use lcs_test_support::net;
use lcs_test_support::{COMPONENT_SECRET, Prosody, XmppServer as _};
use scenarios::{Fanout, ImInbound, ImOutbound, Inbound};

#[derive(Parser)]
#[command(
    name = "lcs-load",
    about = "Load generator and benchmarks for lcs-bridge"
)]
struct Cli {
    /// Scenarios: im-outbound, im-setup, im-inbound, presence-fanout, presence-inbound,
    /// scale, reconnect-storm, im-prosody, or all.
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// The bridge binary (default: target/release/lcs-bridge, built first when run by cargo).
    #[arg(long)]
    bridge: Option<PathBuf>,
    /// CPU to pin the bridge to; `none` to leave it free.
    #[arg(long, default_value = "0")]
    bridge_cpu: String,
    /// CPU to pin Prosody to (im-prosody); `auto`: the one after the bridge's when the bridge
    /// is pinned, else none; `none` to leave it free.
    #[arg(long, default_value = "auto")]
    prosody_cpu: String,
    /// im-prosody: TCP_NODELAY on Prosody's sockets (`network_settings = { nagle = false }`);
    /// by default Prosody, as shipped, leaves Nagle's algorithm on.
    #[arg(long)]
    prosody_nodelay: bool,
    /// Offered loads per step (items/s, or `max` for a closed loop), comma-separated;
    /// each scenario has its own default.
    #[arg(long)]
    rates: Option<String>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Tiny sizes and short steps: proves every scenario works (the test suite runs this).
    #[arg(long)]
    smoke: bool,
    /// Local users (im-*, presence-*).
    #[arg(long)]
    users: Option<u64>,
    /// LCS contacts per local user (im-*, presence-inbound) or watchers per user
    /// (presence-fanout).
    #[arg(long)]
    peers: Option<u64>,
    /// Persisted subscriptions (scale).
    #[arg(long)]
    subs: Option<u64>,
    /// The bridge's `presence.restore_rate` (scale): requests per second taking up the store
    /// (the product's default, 1,000/s, would take 17 minutes for 1,000,000).
    #[arg(long, default_value_t = 20_000)]
    restore_rate: u32,
    /// JSON lines output (appended).
    #[arg(long, default_value = "target/lcs-load/results.jsonl")]
    json: PathBuf,
    /// Keep the working directories.
    #[arg(long)]
    keep: bool,
    /// The gateway under load: `bridge` (lcs-bridge) or `kamailio` (Kamailio's xmpp module in
    /// its place, im-inbound only: docs/benchmarks.md "Kamailio side by side").
    #[arg(long, default_value = "bridge")]
    gateway: String,
    /// Kamailio's memory allocator: `default` or `tlsf` (`-x tlsf`).
    #[arg(long, default_value = "default")]
    kamailio_allocator: String,
    /// The kamailio binary.
    #[arg(long, default_value = "kamailio")]
    kamailio_bin: PathBuf,
    /// The fixed xmpp module (default: where tests/load/kamailio/setup.sh builds it).
    #[arg(long)]
    kamailio_module: Option<PathBuf>,
    /// Kamailio's module directory (default: Debian's).
    #[arg(long)]
    kamailio_mpath: Option<PathBuf>,
}

/// The scenarios Kamailio's xmpp module can run in the bridge's place (docs/benchmarks.md
/// "Kamailio side by side" says why the others are not).
const KAMAILIO_SCENARIOS: &[&str] = &["im-inbound"];

const ALL: &[&str] = &[
    "im-outbound",
    "im-setup",
    "im-inbound",
    "presence-fanout",
    "presence-inbound",
    "scale",
    "reconnect-storm",
    "im-prosody",
];

fn main() {
    let cli = Cli::parse();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gateway = match cli.gateway.as_str() {
        "bridge" => Gateway::Bridge,
        "kamailio" => Gateway::Kamailio(kamailio(&cli, repo)),
        g => panic!("--gateway {g:?}: bridge or kamailio"),
    };
    let bridge = cli.bridge.clone().unwrap_or_else(|| {
        if let Gateway::Kamailio(_) = gateway {
            // Not run.
            return PathBuf::new();
        }
        if let Some(cargo) = std::env::var_os("CARGO") {
            let ok = std::process::Command::new(cargo)
                .args(["build", "--release", "--bin", "lcs-bridge"])
                .current_dir(repo)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cargo build --release --bin lcs-bridge failed");
        }
        repo.join("target/release/lcs-bridge")
    });
    assert!(
        bridge.exists() || matches!(gateway, Gateway::Kamailio(_)),
        "no bridge binary at {}",
        bridge.display()
    );
    let opts = Options {
        bridge,
        bridge_cpu: (cli.bridge_cpu != "none")
            .then(|| cli.bridge_cpu.parse().expect("--bridge-cpu")),
        keep: cli.keep,
        gateway,
    };
    let names: Vec<String> = if cli.scenarios.iter().any(|s| s == "all") {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        cli.scenarios.clone()
    };
    for n in &names {
        assert!(
            ALL.contains(&n.as_str()),
            "unknown scenario {n:?}; known: {ALL:?} or all"
        );
        assert!(
            matches!(opts.gateway, Gateway::Bridge) || KAMAILIO_SCENARIOS.contains(&n.as_str()),
            "--gateway kamailio runs {KAMAILIO_SCENARIOS:?} only, not {n:?} \
             (docs/benchmarks.md \"Kamailio side by side\")"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(repo.join(dir)).ok();
    }
    let json_path = if cli.json.is_absolute() {
        cli.json.clone()
    } else {
        repo.join(&cli.json)
    };
    let mut failed = false;
    for name in names {
        let started = Instant::now();
        let report = runtime.block_on(run(&name, &cli, &opts));
        println!("\n== {name} ({:.1} s)", started.elapsed().as_secs_f64());
        print_report(&report);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&json_path)
            .unwrap();
        writeln!(f, "{report}").unwrap();
        if report["ok"] != true {
            failed = true;
        }
    }
    println!("\nJSON lines appended to {}", json_path.display());
    if failed {
        eprintln!("some scenario failed (see `ok` and `problem` above)");
        std::process::exit(1);
    }
}

/// Kamailio in the bridge's place: the options, with the module tests/load/kamailio/setup.sh
/// built (which this does not run: it installs packages).
fn kamailio(cli: &Cli, repo: &Path) -> driver::Kamailio {
    let tlsf = match cli.kamailio_allocator.as_str() {
        "default" => false,
        "tlsf" => true,
        a => panic!("--kamailio-allocator {a:?}: default or tlsf"),
    };
    let setup = repo.join("tests/load/kamailio/setup.sh");
    let module = cli.kamailio_module.clone().unwrap_or_else(|| {
        let out = std::process::Command::new("bash")
            .arg(&setup)
            .arg("--path")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", setup.display()));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !path.is_empty(),
            "Kamailio's fixed xmpp module is not built{}: run {} first",
            if path.is_empty() {
                String::new()
            } else {
                format!(" (expected at {path})")
            },
            setup.display()
        );
        PathBuf::from(path)
    });
    assert!(module.exists(), "no xmpp module at {}", module.display());
    let mpath = cli.kamailio_mpath.clone().unwrap_or_else(|| {
        let arch = std::process::Command::new("dpkg-architecture")
            .arg("-qDEB_HOST_MULTIARCH")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH));
        PathBuf::from(format!("/usr/lib/{arch}/kamailio/modules"))
    });
    assert!(
        mpath.join("tls.so").exists(),
        "no Kamailio TLS module in {}: run {} first",
        mpath.display(),
        setup.display()
    );
    driver::Kamailio {
        bin: cli.kamailio_bin.clone(),
        module,
        mpath,
        tlsf,
    }
}

/// `kamailio -v`'s first line.
fn kamailio_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .next()
        .map(|l| l.trim_start_matches("version:").trim().to_owned())
}

fn rates(cli: &Cli, full: &str, smoke: &str) -> Vec<Load> {
    let text = cli
        .rates
        .clone()
        .unwrap_or_else(|| if cli.smoke { smoke } else { full }.to_owned());
    text.split(',')
        .map(|r| match r.trim() {
            "max" => Load::Window(if cli.smoke { 200 } else { 4000 }),
            n => Load::Rate(n.parse().expect("--rates: numbers or max")),
        })
        .collect()
}

fn secs(cli: &Cli) -> f64 {
    if cli.smoke { 1.0 } else { cli.secs }
}

fn size(v: Option<u64>, full: u64, smoke: u64, cli: &Cli) -> u64 {
    v.unwrap_or(if cli.smoke { smoke } else { full })
}

async fn run(name: &str, cli: &Cli, opts: &Options) -> serde_json::Value {
    let mut report = json!({
        "scenario": name,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        "bridge_cpu": opts.bridge_cpu,
        "smoke": cli.smoke,
        "gateway": cli.gateway,
    });
    if let Gateway::Kamailio(k) = &opts.gateway {
        report["kamailio_allocator"] = json!(if k.tlsf { "tlsf" } else { "default" });
        report["kamailio_version"] = json!(kamailio_version(&k.bin));
    }
    let result = match name {
        "im-outbound" | "im-setup" => im_outbound(name == "im-setup", cli, opts, &mut report).await,
        "im-inbound" => im_inbound(cli, opts, &mut report).await,
        "presence-fanout" => fanout(cli, opts, &mut report).await,
        "presence-inbound" => presence_inbound(cli, opts, &mut report).await,
        "scale" => scale(cli, opts, &mut report).await,
        "reconnect-storm" => storm(cli, opts, &mut report).await,
        "im-prosody" => im_prosody(cli, opts, &mut report).await,
        _ => unreachable!(),
    };
    match result {
        Ok(()) => report["ok"] = json!(true),
        Err(problem) => {
            report["ok"] = json!(false);
            report["problem"] = json!(problem);
        }
    }
    report
}

/// Runs the steps and checks each delivered everything without errors.
async fn steps<H: driver::Handler>(
    world: &mut World,
    h: &mut H,
    loads: &[Load],
    secs: f64,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    steps_of(world, h, loads, 1, secs, report).await
}

/// [`steps`] where one load item is delivered `fanout` times: offered loads are shown in
/// deliveries per second.
async fn steps_of<H: driver::Handler>(
    world: &mut World,
    h: &mut H,
    loads: &[Load],
    fanout: u64,
    secs: f64,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    let mut out = Vec::new();
    let mut problem = None;
    for &load in loads {
        let mut step = world.measure(h, load, secs).await;
        if let Load::Rate(r) = load {
            step.offered = format!("{:.0}/s", r * fanout as f64);
        }
        eprintln!("  {step:?}");
        if problem.is_none() && (step.errors > 0 || step.delivered < step.expected) {
            problem = Some(format!(
                "at {}: {} of {} delivered, {} errors (first: {:?})",
                step.offered, step.delivered, step.expected, step.errors, world.ctx.first_error
            ));
        }
        out.push(step);
    }
    report["steps"] = json!(out);
    problem.map_or(Ok(()), Err)
}

async fn settle<H: driver::Handler>(
    world: &mut World,
    h: &mut H,
    what: &str,
    limit: Duration,
    done: impl FnMut(&driver::Ctx) -> bool,
) -> Result<Duration, String> {
    let t = Instant::now();
    if world.pump(h, None, limit, done).await {
        Ok(t.elapsed())
    } else {
        Err(format!(
            "{what}: not done in {limit:?} (errors: {}, first: {:?})",
            world.ctx.errors, world.ctx.first_error
        ))
    }
}

/// Handles events until `cond` holds for the handler (checked every 20 ms); false after
/// `limit`.
async fn until<H: driver::Handler>(
    world: &mut World,
    h: &mut H,
    limit: Duration,
    cond: impl Fn(&H) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while !cond(h) {
        if Instant::now() > deadline {
            return false;
        }
        world
            .pump(h, None, Duration::from_millis(20), |_| false)
            .await;
    }
    true
}

/// Sets up `total` subscriptions 2,000 at a time (`send` sends a range of them, `done` counts
/// those set up); the seconds it took.
async fn in_chunks<H: driver::Handler>(
    world: &mut World,
    h: &mut H,
    total: u64,
    send: impl Fn(&mut H, &mut driver::Ctx, std::ops::Range<u64>),
    done: impl Fn(&H) -> u64,
) -> Result<f64, String> {
    let t = Instant::now();
    let mut start = 0;
    while start < total {
        let end = (start + 2000).min(total);
        send(h, &mut world.ctx, start..end);
        if !until(world, h, Duration::from_secs(60), |h| done(h) >= end).await {
            return Err(format!("{} of {end} subscriptions set up in 60 s", done(h)));
        }
        start = end;
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn im_outbound(
    fresh: bool,
    cli: &Cli,
    opts: &Options,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    let mut world = World::start(opts, "", |_| {}).await;
    let mut h = ImOutbound {
        users: size(cli.users, 100, 10, cli),
        contacts: size(cli.peers, 10, 2, cli),
        fresh,
        clients: false,
        invites: 0,
    };
    im_outbound_steps(&mut world, &mut h, cli, report).await
}

/// The im-outbound workload on a started world: warm-up (unless `h.fresh`), then the steps.
async fn im_outbound_steps(
    world: &mut World,
    h: &mut ImOutbound,
    cli: &Cli,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    let fresh = h.fresh;
    report["users"] = json!(h.users);
    if !fresh {
        // Warm: one message per pair sets every session up.
        report["sessions"] = json!(h.pairs());
        let now = Instant::now();
        for _ in 0..h.pairs() {
            driver::Handler::send_one(h, &mut world.ctx, now);
        }
        let pairs = h.pairs();
        let took = settle(world, h, "warm-up", Duration::from_secs(120), |cx| {
            cx.delivered >= pairs
        })
        .await?;
        report["warmup_s"] = json!(took.as_secs_f64());
    }
    let loads = if fresh {
        rates(cli, "1000,2000,4000,max", "200,max")
    } else if h.clients {
        rates(cli, "1000,2000,5000,10000,max", "500,max")
    } else {
        rates(cli, "5000,10000,20000,40000,max", "500,max")
    };
    let r = steps(world, h, &loads, secs(cli), report).await;
    report["invites"] = json!(h.invites);
    r
}

const CLIENT_PASSWORD: &str = "load";

/// `im-prosody`: im-outbound's workload through a real Prosody (docs/benchmarks.md "Side by
/// side with Prosody"): the users log in to it as XMPP clients (c2s, SASL PLAIN) and send from
/// there; the bridge is its component (gateway mode); the generator is still the LCS edge.
/// Prosody logs at `info` (debug logging would be most of its work), is pinned to
/// `--prosody-cpu`, and keeps its default network settings unless `--prosody-nodelay`.
async fn im_prosody(
    cli: &Cli,
    opts: &Options,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    let global = if cli.prosody_nodelay {
        "network_settings = { nagle = false }"
    } else {
        ""
    };
    let Some(prosody) = Prosody::start_with("info", global) else {
        // The harness printed why (or panicked, when peers are required).
        report["skipped"] = json!("prosody is not installed");
        return Ok(());
    };
    let cpu = match cli.prosody_cpu.as_str() {
        "none" => None,
        "auto" => opts.bridge_cpu.and_then(|b| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (n > 1).then_some((b + 1) % n)
        }),
        c => Some(c.parse().expect("--prosody-cpu")),
    };
    if let Some(c) = cpu {
        pin(prosody.pid(), c)?;
    }
    report["prosody_cpu"] = json!(cpu);
    report["prosody_nodelay"] = json!(cli.prosody_nodelay);
    let mut h = ImOutbound {
        users: size(cli.users, 100, 10, cli),
        contacts: size(cli.peers, 10, 2, cli),
        fresh: false,
        clients: true,
        invites: 0,
    };
    for u in 0..h.users {
        prosody.write_account(&format!("u{u}"), CLIENT_PASSWORD);
    }
    let server = XmppSide::Server {
        port: prosody.component_port(),
        secret: COMPONENT_SECRET,
    };
    let mut world = World::start_with(opts, server, "", |_| {}).await;
    world.server_pid = Some(prosody.pid());
    let with_log = |e: String| {
        let log = prosody.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{e}\n--- prosody log (end) ---\n{}", tail.join("\n"))
    };
    let t = Instant::now();
    let c2s = SocketAddr::from(([127, 0, 0, 1], prosody.c2s_port()));
    world
        .login(c2s, "u", h.users as usize, CLIENT_PASSWORD)
        .await
        .map_err(|e| with_log(format!("login: {e}")))?;
    report["login_s"] = json!(t.elapsed().as_secs_f64());
    let up = component_up(&mut world).await.map_err(with_log)?;
    report["component_up_s"] = json!(up.as_secs_f64());
    im_outbound_steps(&mut world, &mut h, cli, report)
        .await
        .map_err(with_log)
}

/// Pins process `pid` (all its threads) to `cpu`.
fn pin(pid: u32, cpu: usize) -> Result<(), String> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {cpu} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Waits until the bridge's component answers through the XMPP server: client 0 asks the
/// component domain for disco#info, again while the server answers for it with an error (not
/// connected yet). How long it took.
async fn component_up(world: &mut World) -> Result<Duration, String> {
    let t = Instant::now();
    let mut probe = Probe::default();
    for n in 0.. {
        probe.id = format!("up{n}");
        probe.answer = None;
        world.ctx.client_send(
            0,
            format!(
                "<iq type='get' to='{COMPONENT}' id='up{n}'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ),
        );
        until(world, &mut probe, Duration::from_secs(5), |p| {
            p.answer.is_some()
        })
        .await;
        if probe.answer == Some(true) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the bridge's component did not answer through the server in 60 s (last: {})",
                probe.last
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Notes the answer to the iq `id` sent by client 0.
#[derive(Default)]
struct Probe {
    id: String,
    answer: Option<bool>,
    last: String,
}

impl driver::Handler for Probe {
    fn stanza(&mut self, _: &mut driver::Ctx, _: &[u8], _: Instant) {}
    fn sip(
        &mut self,
        _: &mut driver::Ctx,
        _: usize,
        _: lcs_bridge::sip::message::Message,
        _: Instant,
    ) {
    }
    fn client(&mut self, _: &mut driver::Ctx, _: usize, s: &[u8], _: Instant) {
        if s.starts_with(b"<iq") && net::attr(s, "id") == Some(self.id.as_bytes()) {
            self.answer = Some(net::attr(s, "type") == Some(b"result"));
            self.last = String::from_utf8_lossy(s).into_owned();
        }
    }
}

async fn im_inbound(
    cli: &Cli,
    opts: &Options,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    let mut world = World::start(opts, "", |_| {}).await;
    let conns = world.connect(4).await;
    let mut h = ImInbound::new(
        size(cli.users, 100, 10, cli),
        size(cli.peers, 10, 2, cli),
        conns,
    );
    h.kamailio_addressing = matches!(opts.gateway, Gateway::Kamailio(_));
    let pairs = h.users * h.contacts;
    report["sessions"] = json!(pairs);
    h.invite_all(&mut world.ctx);
    let t = Instant::now();
    if !until(&mut world, &mut h, Duration::from_secs(120), |h| {
        h.established >= pairs
    })
    .await
    {
        return Err(format!(
            "{} of {pairs} sessions set up in 120 s",
            h.established
        ));
    }
    report["setup_s"] = json!(t.elapsed().as_secs_f64());
    let loads = rates(cli, "5000,10000,20000,40000,max", "500,max");
    steps(&mut world, &mut h, &loads, secs(cli), report).await
}

async fn fanout(cli: &Cli, opts: &Options, report: &mut serde_json::Value) -> Result<(), String> {
    let mut world = World::start(opts, "[presence]\nnotify_min_interval_secs = 1\n", |_| {}).await;
    let conns = world.connect(4).await;
    let mut h = Fanout::new(
        size(cli.users, 2000, 20, cli),
        size(cli.peers, 50, 5, cli),
        conns,
    );
    let total = h.users * h.watchers;
    report["subscriptions"] = json!(total);
    report["watchers_per_user"] = json!(h.watchers);
    let took = in_chunks(&mut world, &mut h, total, Fanout::subscribe, |h| h.active).await?;
    report["setup_s"] = json!(took);
    report["setup_per_second"] = json!(total as f64 / took);
    // The setup's own NOTIFYs started each watcher's coalescing interval.
    world
        .pump(&mut h, None, Duration::from_millis(1100), |_| false)
        .await;
    // Loads are in NOTIFYs per second; one item is one user's change (watchers NOTIFYs).
    let loads: Vec<Load> = rates(cli, "10000,20000,40000,60000,max", "50,max")
        .into_iter()
        .map(|l| match l {
            Load::Rate(r) => Load::Rate(r / h.watchers as f64),
            w => w,
        })
        .collect();
    // Each user changes at most once per 1.1 s (faster changes would be coalesced by the
    // bridge, by design), which bounds the offered NOTIFY rate.
    report["max_offered_rate"] = json!(total as f64 / 1.1);
    let watchers = h.watchers;
    steps_of(&mut world, &mut h, &loads, watchers, secs(cli), report).await
}

async fn presence_inbound(
    cli: &Cli,
    opts: &Options,
    report: &mut serde_json::Value,
) -> Result<(), String> {
    let mut world = World::start(opts, "", |_| {}).await;
    let mut h = Inbound::new(size(cli.users, 100, 10, cli), size(cli.peers, 100, 5, cli));
    let total = h.users * h.contacts;
    report["subscriptions"] = json!(total);
    let took = in_chunks(&mut world, &mut h, total, Inbound::subscribe, |h| {
        h.subscribed
    })
    .await?;
    report["setup_s"] = json!(took);
    let loads = rates(cli, "10000,20000,40000,max", "500,max");
    steps(&mut world, &mut h, &loads, secs(cli), report).await
}

/// Subscriptions as the bridge stores them, for local users `u…@xmpp.test` (40 each) and
/// LCS users `c…@contoso.com`, alternately watched and watching.
fn fill_store(dir: &Path, n: u64) -> Result<(), String> {
    let store = SledStore::open(&sled_dir(&dir.join("store"))).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let (user, contact) = (i / 40, i % 40 + (i / 40) * 40);
        let local = format!("u{user}@xmpp.test");
        let remote = format!("sip:c{contact}@contoso.com");
        let inbound = i % 2 == 1;
        batch.push(Subscription {
            direction: if inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            local_jid: local.clone(),
            remote_aor: remote.clone(),
            dialog: inbound.then(|| DialogRecord {
                call_id: format!("sub{i}@contoso.com"),
                local_tag: format!("b{i}"),
                remote_tag: format!("w{i}"),
                local_uri: format!("sip:{local}"),
                local_display: None,
                remote_uri: remote.clone(),
                remote_display: None,
                remote_target: format!("sip:c{contact}@127.0.0.1:5061;transport=tls"),
                route_set: Vec::new(),
                local_cseq: 2,
                remote_cseq: Some(1),
                created_unix: now,
            }),
            expires_unix: now + 3600,
            state: SubState::Active,
            approval: Approval::Approved,
            last_sent: None,
            last_received: None,
            display_name: None,
            updated_unix: now,
        });
        if batch.len() == 10_000 {
            store.put_subscriptions(&batch).map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    store.put_subscriptions(&batch).map_err(|e| e.to_string())?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            total += if md.is_dir() {
                dir_bytes(&e.path())
            } else {
                std::os::unix::fs::MetadataExt::blocks(&md) * 512
            };
        }
    }
    total
}

/// `scale`: N persisted subscriptions; the bridge starts on them (a restart): time to its
/// component stream, to answering OPTIONS, RSS and disk per subscription.
async fn scale(cli: &Cli, opts: &Options, report: &mut serde_json::Value) -> Result<(), String> {
    let n = size(cli.subs, 1_000_000, 2_000, cli);
    report["subscriptions"] = json!(n);
    let settle = Duration::from_secs(if cli.smoke { 1 } else { 5 });
    // The same bridge on an empty store: the baseline for memory.
    let (base_rss, _) = {
        let mut world = World::start(opts, "", |_| {}).await;
        let mut h = Restore::default();
        serving(&mut world, &mut h).await?;
        world.pump(&mut h, None, settle, |_| false).await;
        driver::rss_kib(world.pid)
    };
    report["baseline_rss_kib"] = json!(base_rss);
    let mut fill_err = None;
    let t = Instant::now();
    // Taken up at `--restore-rate`, then measured: the memory of the subscriptions, not of a
    // burst of requests in flight.
    let extra = format!("[presence]\nrestore_rate = {}\n", cli.restore_rate);
    report["restore_rate"] = json!(cli.restore_rate);
    let mut world = World::start(opts, &extra, |dir| {
        fill_err = fill_store(dir, n).err();
    })
    .await;
    if let Some(e) = fill_err {
        return Err(format!("filling the store: {e}"));
    }
    let component_up = world.spawned.elapsed();
    report["fill_s"] = json!((t.elapsed() - component_up).as_secs_f64());
    report["start_to_component_s"] = json!(component_up.as_secs_f64());
    let mut h = Restore::default();
    let serving_at = serving(&mut world, &mut h).await?;
    report["start_to_serving_s"] = json!(serving_at.as_secs_f64());
    // Every outbound subscription SUBSCRIBEs again (fill_store: even i) and gets a NOTIFY with a
    // document; every watcher (odd i) gets a NOTIFY.
    let (outbound, watchers) = (n.div_ceil(2), n / 2);
    let limit = Duration::from_secs(60 + n / u64::from(cli.restore_rate.max(1)) * 2);
    let drained = until(&mut world, &mut h, limit, |h| {
        h.subscribes >= outbound && h.notifies >= watchers
    })
    .await;
    report["restore_subscribes"] = json!(h.subscribes);
    report["restore_notifies"] = json!(h.notifies);
    if !drained {
        return Err(format!(
            "restore not done in {limit:?}: {} of {outbound} SUBSCRIBEs, {} of {watchers} NOTIFYs",
            h.subscribes, h.notifies
        ));
    }
    report["start_to_restored_s"] = json!(world.spawned.elapsed().as_secs_f64());
    world.pump(&mut h, None, settle, |_| false).await;
    let (rss, peak) = driver::rss_kib(world.pid);
    let disk = dir_bytes(&world.dir().join("store"));
    report["rss_kib"] = json!(rss);
    report["peak_rss_kib"] = json!(peak);
    report["rss_bytes_per_subscription"] =
        json!(rss.saturating_sub(base_rss) as f64 * 1024.0 / n as f64);
    report["peak_rss_bytes_per_subscription"] =
        json!(peak.saturating_sub(base_rss) as f64 * 1024.0 / n as f64);
    report["disk_bytes"] = json!(disk);
    report["disk_bytes_per_subscription"] = json!(disk as f64 / n as f64);
    Ok(())
}

/// Sends OPTIONS on a new LCS connection; the time from the bridge's start to the 200.
async fn serving(world: &mut World, h: &mut Restore) -> Result<Duration, String> {
    let conns = world.connect(1).await;
    let options = "OPTIONS sip:xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKopt\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:probe@contoso.com>;tag=o\r\nTo: <sip:xmpp.test>\r\n\
                   Call-ID: options@contoso.com\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    world.ctx.sip_raw(conns[0], options.as_bytes().to_vec());
    if !until(world, h, Duration::from_secs(60), |h| h.at.is_some()).await {
        return Err("no 200 to OPTIONS in 60 s".into());
    }
    Ok(h.at.unwrap().duration_since(world.spawned))
}

/// The LCS edge and the XMPP server while the bridge takes up its store: SUBSCRIBEs accepted
/// with a NOTIFY carrying a document (as `presence-inbound`'s edge does), watchers' NOTIFYs
/// answered and counted, probes of local users answered; notes the first 200 to OPTIONS.
struct Restore {
    at: Option<Instant>,
    edge: Inbound,
    subscribes: u64,
    notifies: u64,
}

impl Default for Restore {
    fn default() -> Self {
        Restore {
            at: None,
            edge: Inbound::new(0, 0),
            subscribes: 0,
            notifies: 0,
        }
    }
}

impl driver::Handler for Restore {
    fn stanza(&mut self, cx: &mut driver::Ctx, s: &[u8], _: Instant) {
        // Probes of local users: say they are online, as the server would.
        if s.starts_with(b"<presence") && net::attr(s, "type") == Some(b"probe") {
            let (from, to) = (
                net::attr(s, "from").unwrap_or_default(),
                net::attr(s, "to").unwrap_or_default(),
            );
            cx.stanza(format!(
                "<presence from='{}/load' to='{}'/>",
                String::from_utf8_lossy(to),
                String::from_utf8_lossy(from)
            ));
        }
    }

    fn sip(
        &mut self,
        cx: &mut driver::Ctx,
        conn: usize,
        m: lcs_bridge::sip::message::Message,
        at: Instant,
    ) {
        if m.status() == Some(200) && m.cseq().is_ok_and(|c| c.method.as_str() == "OPTIONS") {
            self.at.get_or_insert(at);
            return;
        }
        match m.method().map(|m| m.as_str()) {
            Some("NOTIFY") if m.is_request() => self.notifies += 1,
            Some("SUBSCRIBE") if m.is_request() => self.subscribes += 1,
            _ => {}
        }
        self.edge.sip(cx, conn, m, at);
    }
}

/// `reconnect-storm`: (1) handshakes per second: many LCS edge connections at once; (2) a
/// peer network dropping every connection under IM load: time until MESSAGEs flow again.
async fn storm(cli: &Cli, opts: &Options, report: &mut serde_json::Value) -> Result<(), String> {
    let mut world = World::start(opts, "", |_| {}).await;
    let n = if cli.smoke { 20 } else { 400 };
    let cpu0 = driver::cpu_ticks(world.pid);
    let t = Instant::now();
    world.connect_many(n).await?;
    let took = t.elapsed().as_secs_f64();
    report["handshakes"] = json!(n);
    report["handshakes_per_second"] = json!(n as f64 / took);
    report["handshake_bridge_cpu_pct"] = json!((driver::cpu_ticks(world.pid) - cpu0) as f64 / took);
    drop(world);
    // (2) IM load over the bridge's own connections to the partner (a fresh bridge: no
    // connections from the partner it could use instead), then the partner drops them all.
    let mut world = World::start(opts, "", |_| {}).await;
    let mut h = ImOutbound {
        users: 10,
        contacts: 10,
        fresh: false,
        clients: false,
        invites: 0,
    };
    let rate = if cli.smoke { 200.0 } else { 5000.0 };
    let before = world.measure(&mut h, Load::Rate(rate), 2.0).await;
    let dropped_at = Instant::now();
    let dropped = world.close_accepted();
    let delivered0 = world.ctx.delivered;
    let mut first = None;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && first.is_none() {
        world
            .pump(
                &mut h,
                Some(Load::Rate(rate)),
                Duration::from_millis(5),
                |_| false,
            )
            .await;
        if world.ctx.delivered > delivered0 {
            first = world.ctx.last_delivery;
        }
    }
    let errors_during = world.ctx.errors;
    let after = world.measure(&mut h, Load::Rate(rate), 2.0).await;
    report["im_before"] = json!(before);
    report["connections_dropped"] = json!(dropped);
    report["recovery_ms"] = json!(first.map(|f| (f - dropped_at).as_secs_f64() * 1000.0));
    report["bounced_during_recovery"] = json!(errors_during);
    report["first_error"] = json!(world.ctx.first_error);
    report["im_after"] = json!(after);
    report["reconnections"] = json!(world.ctx.accepted);
    match first {
        None => Err("no MESSAGE delivered within 10 s of the drop".into()),
        Some(_) if after.delivered < after.expected => Err(format!(
            "after recovery: {} of {} delivered",
            after.delivered, after.expected
        )),
        Some(_) => Ok(()),
    }
}

fn print_report(r: &serde_json::Value) {
    if let Some(steps) = r["steps"].as_array() {
        let steps: Vec<Step> = steps
            .iter()
            .map(|s| serde_json::from_value(s.clone()).unwrap())
            .collect();
        // With an XMPP server in the path: its CPU and peak RSS too.
        let server = steps.iter().any(|s| s.server_cpu_pct.is_some());
        print!(
            "{:>18} {:>9} {:>9} {:>7} {:>11} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>7}",
            "offered",
            "sent",
            "delivered",
            "errors",
            "per second",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "CPU %",
            "µs/item",
            "peak MiB",
            "gen %"
        );
        if server {
            print!(" {:>9} {:>9}", "XMPP CPU%", "XMPP MiB");
        }
        println!();
        for s in steps {
            print!(
                "{:>18} {:>9} {:>9} {:>7} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>7.0} {:>7.1} {:>9.1} {:>7.0}",
                s.offered,
                s.sent,
                s.delivered,
                s.errors,
                s.per_second,
                s.p50_us,
                s.p99_us,
                s.p999_us,
                s.max_us,
                s.bridge_cpu_pct,
                s.cpu_us_per_item,
                s.bridge_peak_rss_kib as f64 / 1024.0,
                s.generator_cpu_pct
            );
            if server {
                print!(
                    " {:>9.0} {:>9.1}",
                    s.server_cpu_pct.unwrap_or(0.0),
                    s.server_peak_rss_kib.unwrap_or(0) as f64 / 1024.0
                );
            }
            println!();
        }
    }
    let mut rest = r.clone();
    if let Some(o) = rest.as_object_mut() {
        o.remove("steps");
    }
    println!("{rest}");
}
