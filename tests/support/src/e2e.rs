#![allow(clippy::unwrap_used)] // test fixture: a failure to set one up is a test failure

//! The end-to-end world shared by tests/im_e2e.rs and tests/presence_e2e.rs: the real
//! `lcs-bridge run --config FILE` binary joined as a component to Prosody or ejabberd, alice as
//! a slixmpp client (`tests/xmpp_client.py`, events as JSON lines), SIPp UAS/UAC behind socat's
//! mutual TLS, and a failure report (bridge log, SIPp logs, XMPP server log, client events)
//! when a test panics.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::BridgeConfig;
use crate::net::{Event, Tls, Writer};
use crate::pki::{Pki, der_to_pem};
use crate::sipp::{self, Killed, LoggedMessage};
use crate::{XMPP_DOMAIN, XmppServer, repo};

/// `[im] session_idle_secs` in the bridge's configuration (the smallest value allowed).
pub const IDLE_SECS: u64 = 10;
/// Everything one test does must be over within this (the tests' limit is 60 s).
pub const TEST_BUDGET: Duration = Duration::from_secs(55);
/// The LCS side's certificate (socat, both directions): the partner names for both modes and
/// the IP literal the bridge dials.
pub const PEER_NAMES: &[&str] = &[
    "sip.contoso.com",
    "contoso.com",
    "sip.contoso.test",
    "contoso.test",
    "127.0.0.1",
];
pub const ALICE_PASSWORD: &str = "alicepw";

// ------------------------------------------------------------------ address modes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Component `lcs.xmpp.test`; LCS users as `user\40contoso.com@lcs.xmpp.test`.
    Gateway,
    /// Component `contoso.test`, the LCS domain itself; LCS users as `user@contoso.test`.
    Direct,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Gateway => "gateway",
            Mode::Direct => "direct",
        }
    }

    pub fn component(self) -> &'static str {
        match self {
            Mode::Gateway => crate::GATEWAY_COMPONENT,
            Mode::Direct => crate::DIRECT_COMPONENT,
        }
    }

    /// The LCS domain of the SIP side (the partner in the bridge's configuration).
    pub fn lcs_domain(self) -> &'static str {
        match self {
            Mode::Gateway => "contoso.com",
            Mode::Direct => crate::DIRECT_COMPONENT,
        }
    }

    /// The XMPP address of LCS user `user`.
    pub fn jid(self, user: &str) -> String {
        match self {
            Mode::Gateway => format!(r"{user}\40{}@{}", self.lcs_domain(), self.component()),
            Mode::Direct => format!("{user}@{}", self.lcs_domain()),
        }
    }
}

// ------------------------------------------------------------------ the bridge

/// `lcs-bridge run` as a child process, its output (the log) in a file; killed when dropped.
pub struct Bridge {
    pub child: Child,
    pub log: PathBuf,
    pub sip_port: u16,
}

impl Bridge {
    /// Starts the bridge; its output is appended to `log` (a restart keeps the earlier run's).
    pub fn start(config: &Path, log: &Path, sip_port: u16) -> Bridge {
        Self::start_with(config, log, sip_port, &[])
    }

    /// [`Bridge::start`] with changes to its environment ([`crate::spawn_bridge_with`]).
    pub fn start_with(
        config: &Path,
        log: &Path,
        sip_port: u16,
        env: &[(&str, Option<&str>)],
    ) -> Bridge {
        let child = crate::spawn_bridge_with(config, log, env);
        Bridge {
            child,
            log: log.to_owned(),
            sip_port,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<{e}>"))
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until `needle` has appeared `count` times in the log.
    pub fn wait_log(&mut self, needle: &str, count: usize, deadline: Instant) {
        while self.count(needle) < count {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the bridge exited ({status}) while we waited for {needle:?} in its log");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} (×{count}) in the bridge's log in time"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for the start-up line (edge listening, component link up) and the SIP port.
    pub fn wait_started(&mut self, deadline: Instant) {
        self.wait_log("lcs-bridge started", 1, deadline);
        assert!(
            sipp::listening(self.sip_port),
            "the bridge says it started but nothing listens on {}",
            self.sip_port
        );
    }
}

impl Bridge {
    /// SIGTERM (a clean stop), then waits for the process to exit.
    pub fn terminate(&mut self, deadline: Instant) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}: {status}");
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ the XMPP client

/// `tests/xmpp_client.py` logged in as a local user: commands as JSON lines on its stdin, every
/// event it prints kept in `seen`.
pub struct XmppClient {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub rx: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    pub taken: HashSet<usize>,
    pub stderr: PathBuf,
}

impl XmppClient {
    pub fn start(python: &Path, dir: &Path, c2s_port: u16, user: &str) -> Self {
        Self::start_with(python, dir, c2s_port, user, &[])
    }

    /// [`XmppClient::start`] with more options for tests/xmpp_client.py (`--approve`; a later
    /// `--timeout` overrides the test budget).
    pub fn start_with(python: &Path, dir: &Path, c2s_port: u16, user: &str, args: &[&str]) -> Self {
        let stderr = dir.join(format!("{user}.client.log"));
        let mut cmd = Command::new(python);
        cmd.arg(repo().join("tests/xmpp_client.py"))
            .args(["--jid", &format!("{user}@{XMPP_DOMAIN}")])
            .args(["--password", ALICE_PASSWORD])
            .args(["--port", &c2s_port.to_string()])
            .args(["--timeout", &TEST_BUDGET.as_secs().to_string()])
            .args(args);
        Self::spawn(cmd, stderr)
    }

    /// Any driver that takes JSON-line commands on stdin and prints JSON-line events (e.g.
    /// tests/pjsua_peer.py); its stderr goes to `stderr`.
    pub fn spawn(mut cmd: Command, stderr: PathBuf) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "unparsed", "line": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        XmppClient {
            stdin: child.stdin.take(),
            child,
            rx,
            seen: Vec::new(),
            taken: HashSet::new(),
            stderr,
        }
    }

    pub fn command(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a chat message; `extra` holds more command fields (`id`, `receipt`, `chatstate`).
    pub fn send(&mut self, to: &str, body: Option<&str>, extra: Value) {
        let mut cmd = json!({"op": "send", "to": to, "type": "chat"});
        if let Some(b) = body {
            cmd["body"] = json!(b);
        }
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                cmd[k] = v;
            }
        }
        self.command(cmd);
    }

    pub fn drain(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
    }

    /// The first event not returned before that satisfies `pred`, waiting for it until
    /// `deadline`.
    pub fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut i = 0;
        loop {
            while i < self.seen.len() {
                if !self.taken.contains(&i) && pred(&self.seen[i]) {
                    self.taken.insert(i);
                    return self.seen[i].clone();
                }
                i += 1;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                if self.seen.len() == i {
                    panic!("the XMPP client exited ({status}) while we waited for {what}");
                }
                continue;
            }
            let now = Instant::now();
            assert!(now < deadline, "the XMPP client saw no {what} in time");
            let step = (deadline - now).min(Duration::from_millis(200));
            if let Ok(v) = self.rx.recv_timeout(step) {
                self.seen.push(v);
            }
        }
    }

    /// Message events received so far from bare JID `from`.
    pub fn messages_from(&mut self, from: &str) -> Vec<Value> {
        self.drain();
        self.seen
            .iter()
            .filter(|e| is_message_from(e, from))
            .cloned()
            .collect()
    }

    pub fn report(&mut self) -> String {
        self.drain();
        let events: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        format!(
            "{}\n--- client stderr ---\n{}",
            events.join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for XmppClient {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", json!({"op": "quit"}));
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

pub fn is_message_from(event: &Value, from: &str) -> bool {
    event["event"] == "message" && event["from"].as_str().is_some_and(|f| bare(f) == from)
}

/// Line ends as an XML parser hands them over.
pub fn lf(text: &str) -> String {
    text.replace("\r\n", "\n")
}

// ------------------------------------------------------------------ the test world

/// One test's world: an XMPP server with alice registered and logged in, the bridge joined to
/// it as a component, and the SIPp runs of the flows. When the test panics, its `Drop` prints
/// every log.
pub struct World<S: XmppServer> {
    pub name: &'static str,
    pub mode: Mode,
    pub deadline: Instant,
    pub sipp: PathBuf,
    pub socat: PathBuf,
    /// The partner's static edge in the bridge's configuration (socat in front of SIPp UAS).
    pub partner_port: u16,
    /// Names of the SIPp runs, for the logs.
    pub runs: Vec<String>,
    // Dropped in this order: the client, the bridge, socat, the server, the directory.
    pub alice: XmppClient,
    pub bridge: Bridge,
    pub peers: Vec<Killed>,
    pub server: S,
    pub dir: tempfile::TempDir,
}

impl<S: XmppServer> World<S> {
    /// Sets up the world, or `None` when a peer is missing (skip, or a failure under
    /// `LCS_BRIDGE_REQUIRE_PEERS=1`).
    pub fn new(
        name: &'static str,
        mode: Mode,
        start: impl FnOnce() -> Option<S>,
    ) -> Option<World<S>> {
        Self::with_config(name, mode, "", start)
    }

    /// [`World::new`] with `extra` appended to the bridge's configuration.
    pub fn with_config(
        name: &'static str,
        mode: Mode,
        extra: &str,
        start: impl FnOnce() -> Option<S>,
    ) -> Option<World<S>> {
        let began = Instant::now();
        let deadline = began + TEST_BUDGET;
        let (sipp, socat) = sipp::peers()?;
        let python = crate::require_python_modules(&["slixmpp"])?;
        let server = start()?;
        server.register("alice", ALICE_PASSWORD);
        let dir = tempfile::Builder::new()
            .prefix("lcsb-e2e-")
            .tempdir()
            .unwrap();
        let alice = XmppClient::start(&python, dir.path(), server.c2s_port(), "alice");

        let pki = Pki::new("E2E federation CA");
        sipp::write_peer_files(dir.path(), &pki, PEER_NAMES);
        let (chain, key) = pki.leaf(&["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"], false);
        std::fs::write(
            dir.path().join("bridge.crt"),
            der_to_pem("CERTIFICATE", &chain[0]),
        )
        .unwrap();
        let key_file = dir.path().join("bridge.key");
        std::fs::write(&key_file, der_to_pem("PRIVATE KEY", key.secret_der())).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let sip_port = crate::free_port();
        let partner_port = crate::free_port();
        let config = dir.path().join("lcs-bridge.toml");
        let toml = BridgeConfig {
            extra,
            ..BridgeConfig::new(
                dir.path(),
                mode,
                server.component_port(),
                sip_port,
                partner_port,
            )
        }
        .toml();
        std::fs::write(&config, toml).unwrap();
        let bridge = Bridge::start(&config, &dir.path().join("bridge.log"), sip_port);
        let mut world = World {
            name,
            mode,
            deadline,
            sipp,
            socat,
            partner_port,
            runs: Vec::new(),
            alice,
            bridge,
            peers: Vec::new(),
            server,
            dir,
        };
        world.bridge.wait_started(deadline);
        world
            .alice
            .wait_for("online (logged in)", deadline, |e| e["event"] == "online");
        eprintln!("{name}: set up in {:?}", began.elapsed());
        Some(world)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIPp run `name` of scenario tests/sipp/`scenario`.xml, noted for the logs, with the
    /// keywords `keys` and `lcs`, the mode's LCS domain.
    fn run<'k>(&mut self, name: &str, keys: &[(&'k str, &'k str)]) -> Vec<(&'k str, &'k str)> {
        self.runs.push(name.to_owned());
        let mut all = vec![("lcs", self.mode.lcs_domain())];
        all.extend_from_slice(keys);
        all
    }

    pub fn sipp_timeout(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// SIPp as the LCS user the bridge calls, with scenario tests/sipp/`scenario`.xml: SIPp UAS
    /// on TCP, socat's mutual TLS on the partner's static edge port in front of it.
    pub fn uas(&mut self, name: &str, scenario: &str) -> Killed {
        self.uas_calls(name, scenario, 1)
    }

    /// [`World::uas`] for `calls` calls (SIPp ends after that many; each new Call-ID the
    /// bridge sends starts the scenario again, `[call_number]` counting from 1).
    pub fn uas_calls(&mut self, name: &str, scenario: &str, calls: u32) -> Killed {
        let keys = self.run(name, &[]);
        let port = crate::free_port();
        let timeout = self.sipp_timeout();
        let calls = calls.to_string();
        let run = sipp::Run {
            name,
            scenario,
            keys: &keys,
        };
        let mut child = sipp::spawn_sipp(
            &self.sipp,
            self.dir(),
            &run,
            port,
            None,
            timeout,
            &["-m", &calls],
        );
        sipp::wait_listening(&mut child, port, "sipp");
        let socat = sipp::socat_from_edge(&self.socat, self.dir(), self.partner_port, port);
        self.peers.push(socat);
        child
    }

    /// Stops the bridge with SIGTERM and starts it again with the same configuration (and so
    /// the same store); waits until the new process has started.
    pub fn restart_bridge(&mut self) {
        self.bridge.terminate(self.deadline);
        let started = self.bridge.count("lcs-bridge started");
        let config = self.dir().join("lcs-bridge.toml");
        let log = self.bridge.log.clone();
        self.bridge = Bridge::start(&config, &log, self.bridge.sip_port);
        self.bridge
            .wait_log("lcs-bridge started", started + 1, self.deadline);
        assert!(
            sipp::listening(self.bridge.sip_port),
            "the restarted bridge does not listen"
        );
    }

    /// SIPp as the LCS user who calls, with scenario tests/sipp/`scenario`.xml: SIPp UAC on TCP
    /// to socat, socat's mutual TLS (the peer certificate) to the bridge's SIP port. The
    /// Call-ID is `<name>-1@sipp`.
    pub fn uac(&mut self, name: &str, scenario: &str) -> Killed {
        self.uac_with(name, scenario, &[], false)
    }

    /// [`World::uac`] with more SIPp keywords `keys`; `sticky`: SIPp's TCP connection goes
    /// through [`sticky_relay`], so it survives the bridge's restart (the relay opens a new TLS
    /// connection through socat, as an LCS edge would reconnect to its partner).
    pub fn uac_with(
        &mut self,
        name: &str,
        scenario: &str,
        keys: &[(&str, &str)],
        sticky: bool,
    ) -> Killed {
        let keys = self.run(name, keys);
        let listen = crate::free_port();
        let socat = sipp::socat_to_edge(&self.socat, self.dir(), listen, self.bridge.sip_port);
        self.peers.push(socat);
        let remote = if sticky { sticky_relay(listen) } else { listen };
        let timeout = self.sipp_timeout();
        let cid = format!("{name}-%u@sipp");
        let run = sipp::Run {
            name,
            scenario,
            keys: &keys,
        };
        sipp::spawn_sipp(
            &self.sipp,
            self.dir(),
            &run,
            crate::free_port(),
            Some(remote),
            timeout,
            &["-cid_str", &cid],
        )
    }

    /// Waits for SIPp run `name` to end; panics unless its scenario succeeded. What went over
    /// the wire.
    pub fn finish(&mut self, child: &mut Killed, name: &str) -> Vec<LoggedMessage> {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        let (status, _) = sipp::finish_sipp(child, self.dir(), name, wait);
        assert!(
            status.is_some_and(|s| s.success()),
            "SIPp scenario {name} failed ({status:?})"
        );
        sipp::read_message_log(self.dir(), name)
    }
}

impl<S: XmppServer> Drop for World<S> {
    /// Prints every log when the test fails, or always with `LCS_BRIDGE_E2E_LOGS=1`.
    fn drop(&mut self) {
        let wanted = std::env::var_os("LCS_BRIDGE_E2E_LOGS").is_some_and(|v| v == "1");
        if !std::thread::panicking() && !wanted {
            return;
        }
        let mut report = format!(
            "\n===== {} ({} mode) {}: logs =====\n--- bridge log ---\n{}\n",
            self.name,
            self.mode.name(),
            if std::thread::panicking() {
                "failed"
            } else {
                "ended"
            },
            tail(&self.bridge.log(), 400_000)
        );
        for run in &self.runs {
            report.push_str(&sipp::sipp_logs(self.dir.path(), run));
        }
        report.push_str(&format!(
            "--- XMPP server log ---\n{}\n--- alice's client events ---\n{}\n",
            tail(&self.server.log(), 200_000),
            self.alice.report()
        ));
        eprintln!("{report}");
    }
}

/// A TCP relay on a free loopback port for one client (SIPp): everything goes to
/// `127.0.0.1:upstream`, and when that connection ends the relay opens a new one (every 50 ms
/// until it stays up) while the client's connection stays open. Bytes written into an
/// upstream connection that is about to end are lost: use it only where nothing is in flight
/// then. Ends when the client closes.
pub fn sticky_relay(upstream: u16) -> u16 {
    use std::io::Read as _;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        let up: Arc<Mutex<Option<TcpStream>>> = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        // upstream → client, reconnecting.
        {
            let up = Arc::clone(&up);
            let done = Arc::clone(&done);
            let mut to_client = client.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while !done.load(Ordering::SeqCst) {
                    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    *up.lock().unwrap() = Some(stream.try_clone().unwrap());
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to_client.write_all(&buf[..n]).is_err() {
                                    done.store(true, Ordering::SeqCst);
                                    break;
                                }
                            }
                        }
                    }
                    *up.lock().unwrap() = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        // client → the current upstream (waiting up to 10 s for one).
        let mut buf = [0u8; 16384];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sent = up
                    .lock()
                    .unwrap()
                    .as_mut()
                    .is_some_and(|s| s.write_all(&buf[..n]).is_ok());
                if sent || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        done.store(true, Ordering::SeqCst);
        if let Some(s) = up.lock().unwrap().take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    });
    port
}

pub fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[start..]
}

// ------------------------------------------------------------------ SIPp logs

/// SIP requests SIPp received, in order.
pub fn requests(log: &[LoggedMessage]) -> Vec<&LoggedMessage> {
    log.iter()
        .filter(|m| !m.sent && m.method().is_some())
        .collect()
}

pub fn methods(msgs: &[&LoggedMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.method().unwrap_or_default())
        .collect()
}

pub fn body_text(m: &LoggedMessage) -> String {
    String::from_utf8(m.body().to_vec()).expect("a UTF-8 body")
}

// ------------------------------------------------------------------ a scripted partner

/// The real bridge between two ends the test plays: the partner `contoso.com`'s mutual-TLS
/// edge (listening for the bridge's connections, its certificate also for the ones it opens)
/// and the XMPP server's component port (gateway mode), as [`scripted_partner`] starts it.
pub struct ScriptedPartner {
    pub dir: tempfile::TempDir,
    pub bridge: Bridge,
    /// Both ends' events: SIP connections (the bridge's own from 0) and the component stream.
    pub events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    pub events_tx: tokio::sync::mpsc::UnboundedSender<Event>,
    pub tls: Tls,
    pub sip_port: u16,
    /// The component stream, accepted.
    pub xmpp: Writer,
    /// The component port's listener (the bridge reconnects here after a lost stream).
    pub component: tokio::net::TcpListener,
}

/// Starts the bridge (log level `info,lcs_bridge=debug`, `extra` configuration appended) in a
/// temporary directory named with `prefix`, with a test PKI, the partner's edge listening and
/// the component stream accepted; returns once the bridge says it started. Panics with the
/// bridge's log if the component stream does not come.
pub async fn scripted_partner(prefix: &str, extra: &str) -> ScriptedPartner {
    scripted_partner_with(prefix, extra, &[]).await
}

/// [`scripted_partner`] with changes to the bridge's environment ([`crate::spawn_bridge_with`]).
pub async fn scripted_partner_with(
    prefix: &str,
    extra: &str,
    env: &[(&str, Option<&str>)],
) -> ScriptedPartner {
    use crate::net::{accept_component, accept_sip};
    use tokio::net::TcpListener;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let pki = Pki::new("MS conformance test CA");
    crate::pki::write_bridge_files(
        dir.path(),
        &pki,
        &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
    );
    let edge_leaf = pki.leaf(&["sip.contoso.com", "contoso.com", "127.0.0.1"], false);
    let tls = Tls::new(&edge_leaf, &pki.ca);
    let partner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let partner_port = partner.local_addr().unwrap().port();
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    accept_sip(partner, tls.acceptor.clone(), 0, events_tx.clone());
    let component = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sip_port = crate::free_port();
    let config = dir.path().join("lcs-bridge.toml");
    let toml = BridgeConfig {
        log_level: "info,lcs_bridge=debug",
        extra,
        ..BridgeConfig::new(
            dir.path(),
            Mode::Gateway,
            component.local_addr().unwrap().port(),
            sip_port,
            partner_port,
        )
    }
    .toml();
    std::fs::write(&config, toml).unwrap();
    let mut bridge = Bridge::start_with(&config, &dir.path().join("bridge.log"), sip_port, env);
    let accept = accept_component(
        &component,
        crate::GATEWAY_COMPONENT,
        crate::COMPONENT_SECRET,
        1,
        events_tx.clone(),
    );
    let xmpp = match tokio::time::timeout(Duration::from_secs(30), accept).await {
        Ok(Ok(w)) => w,
        other => panic!(
            "no component stream ({:?}); bridge log:\n{}",
            other.err(),
            bridge.log()
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    tokio::task::block_in_place(|| bridge.wait_started(deadline));
    ScriptedPartner {
        dir,
        bridge,
        events,
        events_tx,
        tls,
        sip_port,
        xmpp,
        component,
    }
}
