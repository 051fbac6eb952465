//! What the rest of the harness builds on: the test world's names, the trait every test XMPP
//! server implements, free loopback ports, peer programs (skip loudly or fail when missing), and
//! child processes with deadlines.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The env var that turns a missing peer from a skip into a failure.
pub const REQUIRE_PEERS_ENV: &str = "LCS_BRIDGE_REQUIRE_PEERS";
/// The local XMPP domain every test server serves.
pub const XMPP_DOMAIN: &str = "xmpp.test";
/// Component in gateway-subdomain mode.
pub const GATEWAY_COMPONENT: &str = "lcs.xmpp.test";
/// Component in direct-domain mode (one per federated LCS domain).
pub const DIRECT_COMPONENT: &str = "contoso.test";
/// XEP-0114 shared secret of both components.
pub const COMPONENT_SECRET: &str = "s3cret";

pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

// ------------------------------------------------------------------ ports

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Ports are picked at random below Linux's ephemeral range (32768–60999), so that
/// outgoing connections of this or other processes do not grab them between the
/// pick and the server's bind.
const PORT_LO: u32 = 20_000;
const PORT_HI: u32 = 32_000;

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((LOOPBACK, port)).is_ok() && UdpSocket::bind((LOOPBACK, port)).is_ok()
}

fn pick_ports(count: u16) -> u16 {
    let mut state = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let taken = guard.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let span = PORT_HI - PORT_LO - u32::from(count);
        let base = (PORT_LO + (next_random(&mut state) % u64::from(span)) as u32) as u16;
        let ports: Vec<u16> = (base..base + count).collect();
        if ports.iter().all(|p| !taken.contains(p) && port_is_free(*p)) {
            taken.extend(ports);
            return base;
        }
    }
    panic!("no free loopback port found in {PORT_LO}..{PORT_HI}");
}

/// A TCP and UDP port on 127.0.0.1 that is free now and not handed out before by
/// this test process.
pub fn free_port() -> u16 {
    pick_ports(1)
}

/// Two consecutive free ports `p` and `p + 1` (baresip listens for TLS on p + 1);
/// returns `p`.
pub fn free_port_pair() -> u16 {
    pick_ports(2)
}

// ------------------------------------------------------------------ peers

/// True when `LCS_BRIDGE_REQUIRE_PEERS=1` (or `true`): missing peers fail the test.
pub fn peers_required() -> bool {
    matches!(
        std::env::var(REQUIRE_PEERS_ENV).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Panics when peers are required, else prints a loud SKIP line. Returns `None`
/// so callers can `let Some(x) = … else { return };`.
pub fn skip_or_fail<T>(what: &str) -> Option<T> {
    if peers_required() {
        panic!("{what}; {REQUIRE_PEERS_ENV}=1 is set: install peers with tests/install-peers.sh");
    }
    loud(&format!(
        "SKIP: {what} — install peers with tests/install-peers.sh \
         (set {REQUIRE_PEERS_ENV}=1 to make this a failure)"
    ));
    None
}

/// Writes a banner line straight to the process's stderr. Unlike `eprintln!`,
/// this is not captured by the test harness, so a skip shows even for a passing test.
pub fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\n!!!!! {msg} !!!!!\n");
}

/// Finds `binary` on PATH (and in the sbin directories, where ejabberdctl lives).
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of peer program `binary`; if it is missing: panic when
/// `LCS_BRIDGE_REQUIRE_PEERS=1`, otherwise print a loud SKIP line and return `None`.
pub fn require_peer(binary: &str) -> Option<PathBuf> {
    match find_binary(binary) {
        Some(p) => Some(p),
        None => skip_or_fail(&format!("peer program `{binary}` not found")),
    }
}

/// `python3` if it can import every module in `modules`; same missing-peer rules
/// as [`require_peer`].
pub fn require_python_modules(modules: &[&str]) -> Option<PathBuf> {
    let python = require_peer("python3")?;
    let code = format!("import {}", modules.join(", "));
    let out = run_with_timeout(
        Command::new(&python).args(["-c", &code]),
        Duration::from_secs(60),
    );
    if out.status.success() {
        Some(python)
    } else {
        skip_or_fail(&format!(
            "python modules {modules:?} not importable by {}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True when this process runs as root (uid 0).
pub fn is_root() -> bool {
    // /proc/self/status: "Uid:\t<real>\t<effective>\t..."
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

// ------------------------------------------------------------------ processes

/// Runs `cmd` (stdin closed) and collects its output; kills it and panics if it
/// has not finished within `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    // The shell builtin `kill`: no libc dependency, no procps needed.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -s {signal} {pid} 2>/dev/null")])
        .stdin(Stdio::null())
        .status();
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; treat "Z" as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
pub fn terminate_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `127.0.0.1:port` accepts a TCP connection. Returns an error string
/// when `deadline` passes or when `child` exits first.
pub fn wait_for_port(child: &mut Child, port: u16, deadline: Instant) -> Result<(), String> {
    let addr = SocketAddr::from((LOOPBACK, port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("process exited early with {status}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("port {port} not accepting connections in time"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn read_lossy(p: &Path) -> String {
    match fs::read(p) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", p.display()),
    }
}

/// A self-signed certificate and key (PEM) for `names`, made with rcgen.
pub fn self_signed_pem(names: &[&str]) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("rcgen self-signed certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

// ------------------------------------------------------------------ XMPP servers

/// What every test XMPP server offers.
pub trait XmppServer {
    /// Client-to-server port (plain TCP, STARTTLS offered; 127.0.0.1).
    fn c2s_port(&self) -> u16;
    /// XEP-0114 component port (127.0.0.1).
    fn component_port(&self) -> u16;
    /// Component domains configured, all with secret [`COMPONENT_SECRET`].
    fn components(&self) -> &'static [&'static str];
    /// Registers `user@xmpp.test` with `password`.
    fn register(&self, user: &str, password: &str);
    /// The server's log so far (for panic messages).
    fn log(&self) -> String;
    /// Kills the server with SIGKILL (no clean shutdown: clients and components see their
    /// connections drop, nothing is flushed) and waits until it is gone; its ports, data and
    /// configuration stay for [`XmppServer::restart`].
    fn kill(&mut self);
    /// Starts the server again, stopped or not, with the same configuration, ports and data;
    /// returns once both ports accept connections.
    fn restart(&mut self);
}

// ------------------------------------------------------------------ the repository

/// The repository's root directory (tests/support is two levels below it).
pub fn repo() -> &'static Path {
    let support = Path::new(env!("CARGO_MANIFEST_DIR"));
    support
        .parent()
        .and_then(Path::parent)
        .expect("tests/support lies two levels below the repository")
}

/// The `lcs-bridge` binary cargo built for the running integration test or example: in the
/// profile's directory (`target/<profile>/lcs-bridge`), where the test runs from `deps/` (or the
/// example from `examples/`) below it. `CARGO_BIN_EXE_lcs-bridge` only exists while the test
/// itself compiles, not here. `LCS_BRIDGE_BIN=<path>` names another build instead (to show that
/// a test fails without the change it covers, or to run it against a release build).
pub fn bridge_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LCS_BRIDGE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's directory");
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir = dir.parent().expect("the profile's directory");
    }
    let bin = dir.join(format!("lcs-bridge{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: run the tests through cargo, which builds it",
        bin.display()
    );
    bin
}

/// `lcs-bridge run --config <config>` ([`bridge_bin`]) as a child process, without `RUST_LOG`
/// and colours, its output appended to `log`.
pub fn spawn_bridge(config: &Path, log: &Path) -> std::process::Child {
    spawn_bridge_with(config, log, &[])
}

/// [`spawn_bridge`] with changes to its environment: `(name, Some(value))` sets a variable,
/// `(name, None)` removes it (e.g. `NOTIFY_SOCKET` and `WATCHDOG_USEC` for the systemd tests,
/// or `NO_COLOR` removed).
pub fn spawn_bridge_with(
    config: &Path,
    log: &Path,
    env: &[(&str, Option<&str>)],
) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the bridge's log file");
    let mut cmd = std::process::Command::new(bridge_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("NO_COLOR", "1");
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("the bridge's log file"))
        .stderr(out)
        .spawn()
        .expect("lcs-bridge started")
}
