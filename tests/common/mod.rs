//! Shared harness for integration tests that run against real peers.
//!
//! Use it from an integration test with `mod common;`. What it gives:
//!
//! - [`free_port`] / [`free_port_pair`]: free TCP+UDP ports on 127.0.0.1.
//! - [`require_peer`] / [`require_python_modules`]: find a peer program; when it is
//!   missing, either skip loudly (plain `cargo test`) or panic when
//!   `LCS_BRIDGE_REQUIRE_PEERS=1` (what `tests/run-all.sh` and CI set).
//! - [`Prosody`] and [`Ejabberd`]: start a private XMPP server on free loopback ports,
//!   with the external components [`GATEWAY_COMPONENT`] and [`DIRECT_COMPONENT`]
//!   (XEP-0114, secret [`COMPONENT_SECRET`]); stopped when dropped.
//! - [`component_handshake`]: a minimal XEP-0114 client, for smoke tests.
//! - [`run_with_timeout`]: run a command with a hard deadline.
//! - [`dns::TestDns`]: an in-process authoritative DNS server on loopback, zones built in code.
//! - [`sipp`]: SIPp behind socat's mutual TLS in both directions, and SIPp's message log parsed.
//!
//! Nothing here ever talks to a non-loopback address. See docs/testing.md.
#![allow(dead_code)]

pub mod dns;
pub mod edge;
pub mod pki;

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

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

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

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

fn send_signal(pid: u32, signal: &str) {
    // The shell builtin `kill`: no libc dependency, no procps needed.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -s {signal} {pid} 2>/dev/null")])
        .stdin(Stdio::null())
        .status();
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; treat "Z" as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
fn terminate_child(child: &mut Child, grace: Duration) {
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
fn wait_for_port(child: &mut Child, port: u16, deadline: Instant) -> Result<(), String> {
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

fn read_lossy(p: &Path) -> String {
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
}

/// A private Prosody on free loopback ports; stopped (SIGTERM, then SIGKILL) on drop.
///
/// Everything (config, pidfile, data, log, certificates) lives in a temp dir. Like the
/// ejabberd below (and Prosody's own default configuration) it keeps messages for offline users
/// (`mod_offline`), so a message for a user who is not connected waits instead of bouncing.
pub struct Prosody {
    dir: TempDir,
    config: PathBuf,
    prosody: PathBuf,
    prosodyctl: PathBuf,
    c2s_port: u16,
    component_port: u16,
    child: Child,
}

const PROSODY_START_TIMEOUT: Duration = Duration::from_secs(15);

impl Prosody {
    /// Starts Prosody, or returns `None` (after a SKIP line) when it is not
    /// installed and peers are not required.
    pub fn start() -> Option<Prosody> {
        let prosody = require_peer("prosody")?;
        let prosodyctl = require_peer("prosodyctl")?;
        let dir = tempfile::Builder::new()
            .prefix("lcsb-prosody-")
            .tempdir()
            .expect("temp dir for prosody");
        let base = dir.path();
        fs::create_dir_all(base.join("data")).expect("create data dir");
        fs::create_dir_all(base.join("certs")).expect("create certs dir");
        let (cert, key) = self_signed_pem(&[XMPP_DOMAIN]);
        fs::write(base.join("certs/xmpp.test.crt"), cert).expect("write cert");
        fs::write(base.join("certs/xmpp.test.key"), key).expect("write key");

        let c2s_port = free_port();
        let component_port = free_port();
        let config = base.join("prosody.cfg.lua");
        fs::write(
            &config,
            prosody_config(base, c2s_port, component_port, is_root()),
        )
        .expect("write prosody config");

        let mut child = spawn_prosody(&prosody, &config, base);
        let deadline = Instant::now() + PROSODY_START_TIMEOUT;
        let ready = wait_for_port(&mut child, component_port, deadline)
            .and_then(|()| wait_for_port(&mut child, c2s_port, deadline));
        let server = Prosody {
            dir,
            config,
            prosody,
            prosodyctl,
            c2s_port,
            component_port,
            child,
        };
        if let Err(why) = ready {
            panic!(
                "prosody did not start: {why}\n--- prosody.log ---\n{}",
                server.log()
            );
        }
        Some(server)
    }

    /// Stops the server (SIGTERM, then SIGKILL) and waits until it has exited; its ports
    /// stay reserved for [`Prosody::restart`].
    pub fn stop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(3));
    }

    /// Starts the server again, stopped or not, with the same configuration and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_prosody(&self.prosody, &self.config, self.dir.path());
        let deadline = Instant::now() + PROSODY_START_TIMEOUT;
        let ready = wait_for_port(&mut self.child, self.component_port, deadline)
            .and_then(|()| wait_for_port(&mut self.child, self.c2s_port, deadline));
        if let Err(why) = ready {
            panic!(
                "prosody did not restart: {why}\n--- prosody.log ---\n{}",
                self.log()
            );
        }
    }

    /// The temp dir holding config, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file (for `prosodyctl --config`).
    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Spawns `prosody --config CONFIG -F` in `base`, output appended to `base/stdout.log`.
fn spawn_prosody(prosody: &Path, config: &Path, base: &Path) -> Child {
    let stdout = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("stdout.log"))
        .expect("open stdout.log");
    let stderr = stdout.try_clone().expect("dup stdout.log");
    Command::new(prosody)
        .arg("--config")
        .arg(config)
        .arg("-F")
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", prosody.display()))
}

fn prosody_config(base: &Path, c2s_port: u16, component_port: u16, root: bool) -> String {
    let b = lua_string(&base.display().to_string());
    format!(
        r#"-- generated by tests/common/mod.rs
pidfile = {b} .. "/prosody.pid"
data_path = {b} .. "/data"
certificates = {b} .. "/certs"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {component_port} }}
component_interfaces = {{ "127.0.0.1" }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix"; "offline" }}
modules_disabled = {{ "s2s" }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
run_as_root = {root}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = {b} .. "/prosody.log" }} }}

VirtualHost "{XMPP_DOMAIN}"

Component "{GATEWAY_COMPONENT}"
    component_secret = "{COMPONENT_SECRET}"

Component "{DIRECT_COMPONENT}"
    component_secret = "{COMPONENT_SECRET}"
"#
    )
}

fn lua_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl XmppServer for Prosody {
    fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    fn component_port(&self) -> u16 {
        self.component_port
    }

    fn components(&self) -> &'static [&'static str] {
        &[GATEWAY_COMPONENT, DIRECT_COMPONENT]
    }

    fn register(&self, user: &str, password: &str) {
        let out = run_with_timeout(
            Command::new(&self.prosodyctl)
                .arg("--config")
                .arg(&self.config)
                .args(["register", user, XMPP_DOMAIN, password])
                .current_dir(self.dir.path()),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "prosodyctl register {user}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log(&self) -> String {
        format!(
            "{}\n--- stdout/stderr ---\n{}",
            read_lossy(&self.dir.path().join("prosody.log")),
            read_lossy(&self.dir.path().join("stdout.log"))
        )
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(3));
    }
}

/// A private ejabberd on free loopback ports; stopped on drop.
///
/// Follows shared/design/peers.md: `ejabberdctl … foreground` with its own
/// ctl-config (`ERLANG_NODE`, `ERL_DIST_PORT`, `INET_DIST_INTERFACE=127.0.0.1`, so
/// no epmd and nothing on 0.0.0.0). Debian's ejabberdctl only runs as root (it then
/// switches to the `ejabberd` user, via `su`, in a new session) or as `ejabberd`;
/// for other users [`Ejabberd::start`] skips. Because `su` puts the Erlang VM in
/// its own session, it is stopped through the pid ejabberd writes to
/// `EJABBERD_PID_PATH`, not through the spawned child.
pub struct Ejabberd {
    dir: TempDir,
    ejabberdctl: PathBuf,
    node: String,
    c2s_port: u16,
    component_port: u16,
    child: Child,
}

const EJABBERD_START_TIMEOUT: Duration = Duration::from_secs(45);

impl Ejabberd {
    /// Starts ejabberd, or returns `None` (after a SKIP line) when it is not
    /// installed and peers are not required, or when not running as root.
    pub fn start() -> Option<Ejabberd> {
        let ejabberdctl = require_peer("ejabberdctl")?;
        if !is_root() {
            loud(
                "SKIP: ejabberd tests need root (Debian's ejabberdctl runs only \
                 as root or as user ejabberd)",
            );
            return None;
        }
        let Some((uid, gid)) = system_user_ids("ejabberd") else {
            return skip_or_fail(
                "system user `ejabberd` not found (package ejabberd not installed?)",
            );
        };
        // The dir must be reachable by the `ejabberd` user: keep it in /tmp.
        let dir = tempfile::Builder::new()
            .prefix("lcsb-ejabberd-")
            .tempdir_in("/tmp")
            .expect("temp dir for ejabberd");
        let base = dir.path();
        for sub in ["spool", "logs"] {
            fs::create_dir_all(base.join(sub)).expect("create ejabberd dir");
        }
        let (cert, key) = self_signed_pem(&[XMPP_DOMAIN]);
        fs::write(base.join("xmpp.test.pem"), format!("{cert}{key}")).expect("write pem");

        let c2s_port = free_port();
        let component_port = free_port();
        let dist_port = free_port();
        let node = format!("lcsb{dist_port}@localhost");
        fs::write(
            base.join("ejabberd.yml"),
            ejabberd_config(base, c2s_port, component_port),
        )
        .expect("write ejabberd.yml");
        fs::write(
            base.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE={node}\nERL_DIST_PORT={dist_port}\nINET_DIST_INTERFACE=127.0.0.1\n\
                 EJABBERD_PID_PATH={}/ejabberd.pid\nERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n",
                base.display()
            ),
        )
        .expect("write ejabberdctl.cfg");
        fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod ejabberd dir");
        chown_recursive(base, uid, gid)
            .unwrap_or_else(|e| panic!("chown -R ejabberd {}: {e}", base.display()));

        let stdout = fs::File::create(base.join("stdout.log")).expect("create stdout.log");
        let stderr = stdout.try_clone().expect("dup stdout.log");
        let mut child = Command::new(&ejabberdctl)
            .args(ctl_args(base))
            .arg("foreground")
            .current_dir(base)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", ejabberdctl.display()));

        let deadline = Instant::now() + EJABBERD_START_TIMEOUT;
        let ready = wait_for_port(&mut child, component_port, deadline)
            .and_then(|()| wait_for_port(&mut child, c2s_port, deadline));
        let server = Ejabberd {
            dir,
            ejabberdctl,
            node,
            c2s_port,
            component_port,
            child,
        };
        if let Err(why) = ready {
            panic!(
                "ejabberd did not start: {why}\n--- ejabberd.log ---\n{}",
                server.log()
            );
        }
        Some(server)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Erlang node name (`lcsb<dist port>@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `ejabberdctl <args>` against this node; panics on failure or timeout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = run_with_timeout(
            Command::new(&self.ejabberdctl)
                .args(ctl_args(self.dir.path()))
                .args(args)
                .current_dir(self.dir.path()),
            Duration::from_secs(60),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "ejabberdctl {args:?}: {}\n{text}",
            out.status
        );
        text
    }

    fn vm_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.path().join("ejabberd.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

fn ctl_args(base: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    for (flag, p) in [
        ("--config", base.join("ejabberd.yml")),
        ("--ctl-config", base.join("ejabberdctl.cfg")),
        ("--logs", base.join("logs")),
        ("--spool", base.join("spool")),
    ] {
        v.push(flag.into());
        v.push(p.into_os_string());
    }
    v
}

fn ejabberd_config(base: &Path, c2s_port: u16, component_port: u16) -> String {
    format!(
        r#"# generated by tests/common/mod.rs
hosts: [{XMPP_DOMAIN}]
loglevel: info
certfiles: [ "{base}/xmpp.test.pem" ]
acme: {{ auto: false }}
auth_method: internal
auth_password_format: plain
listen:
  - {{ port: {c2s_port}, ip: "127.0.0.1", module: ejabberd_c2s, starttls: true }}
  - port: {component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      "{GATEWAY_COMPONENT}": {{ password: "{COMPONENT_SECRET}" }}
      "{DIRECT_COMPONENT}": {{ password: "{COMPONENT_SECRET}" }}
modules: {{ mod_roster: {{}}, mod_disco: {{}}, mod_ping: {{}}, mod_offline: {{}} }}
"#,
        base = base.display()
    )
}

impl XmppServer for Ejabberd {
    fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    fn component_port(&self) -> u16 {
        self.component_port
    }

    fn components(&self) -> &'static [&'static str] {
        &[GATEWAY_COMPONENT, DIRECT_COMPONENT]
    }

    /// ejabberd opens its ports before mnesia has created the `passwd` table; `register` in
    /// that window fails with `no_exists`, so it is retried for up to 15 s.
    fn register(&self, user: &str, password: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = run_with_timeout(
                Command::new(&self.ejabberdctl)
                    .args(ctl_args(self.dir.path()))
                    .args(["register", user, XMPP_DOMAIN, password])
                    .current_dir(self.dir.path()),
                Duration::from_secs(60),
            );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                return;
            }
            assert!(
                text.contains("no_exists") && Instant::now() < deadline,
                "ejabberdctl register {user}: {}\n{text}",
                out.status
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        format!(
            "{}\n--- stdout/stderr ---\n{}",
            read_lossy(&self.dir.path().join("logs/ejabberd.log")),
            read_lossy(&self.dir.path().join("stdout.log"))
        )
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        // The VM runs under `su` in its own session: signal it by its pid file.
        if let Some(pid) = self.vm_pid() {
            send_signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(4);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            if pid_alive(pid) {
                send_signal(pid, "KILL");
            }
        }
        // `su` exits once the VM is gone; make sure ejabberdctl does too.
        terminate_child(&mut self.child, Duration::from_secs(3));
    }
}

/// uid and gid of a system user, from /etc/passwd.
fn system_user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ XEP-0114

/// Outcome of [`component_handshake`].
#[derive(Debug)]
pub enum Handshake {
    /// The server answered `<handshake/>`.
    Accepted { stream_id: String },
    /// The server refused; `transcript` is everything it sent.
    Refused { transcript: String },
}

/// Lowercase hex SHA-1 of `stream_id + secret` (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to `127.0.0.1:port` as component `domain` and performs the XEP-0114
/// handshake with `secret`. Every read is bounded; panics on I/O trouble or after
/// `timeout` without an answer.
pub fn component_handshake(port: u16, domain: &str, secret: &str, timeout: Duration) -> Handshake {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((LOOPBACK, port));
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("set_read_timeout");
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set_write_timeout");
    write!(
        sock,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    )
    .expect("send stream header");

    let mut buf = String::new();
    let header_done = |b: &str| {
        b.find("<stream:stream")
            .is_some_and(|i| b[i..].contains('>'))
            || b.contains("</stream:stream>")
            || b.contains("<stream:error")
    };
    read_until(&mut sock, &mut buf, deadline, header_done);
    let Some(stream_id) = stream_header_id(&buf) else {
        return Handshake::Refused { transcript: buf };
    };
    write!(
        sock,
        "<handshake>{}</handshake>",
        handshake_digest(&stream_id, secret)
    )
    .expect("send handshake");
    let answered = |b: &str| {
        b.contains("<handshake/>")
            || b.contains("<handshake></handshake>")
            || b.contains("</stream:stream>")
            || b.contains("</stream:error>")
    };
    read_until(&mut sock, &mut buf, deadline, answered);
    if buf.contains("<handshake/>") || buf.contains("<handshake></handshake>") {
        let _ = sock.write_all(b"</stream:stream>");
        Handshake::Accepted { stream_id }
    } else {
        Handshake::Refused { transcript: buf }
    }
}

fn read_until(
    sock: &mut TcpStream,
    buf: &mut String,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) {
    let mut chunk = [0u8; 4096];
    while !done(buf) {
        if Instant::now() >= deadline {
            panic!("no complete answer from the XMPP server in time; got so far: {buf:?}");
        }
        match sock.read(&mut chunk) {
            Ok(0) => return, // closed
            Ok(n) => buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("read from XMPP server: {e}; got so far: {buf:?}"),
        }
    }
}

/// The `id` attribute of the first `<stream:stream …>` tag in `buf`.
fn stream_header_id(buf: &str) -> Option<String> {
    let start = buf.find("<stream:stream")?;
    let tag = &buf[start..start + buf[start..].find('>')?];
    let mut rest = tag;
    while let Some(i) = rest.find("id=") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 3..];
        if before.is_some_and(char::is_whitespace) {
            let quote = after.chars().next()?;
            if quote == '\'' || quote == '"' {
                let value = &after[1..];
                return Some(value[..value.find(quote)?].to_string());
            }
        }
        rest = after;
    }
    None
}
pub mod e2e;
pub mod sip_peer;
pub mod sipp;
