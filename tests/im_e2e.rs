//! End-to-end instant messaging through the real `lcs-bridge` binary (`lcs-bridge run --config
//! FILE`), with real peers on both sides:
//!
//! - XMPP: Prosody or ejabberd (Debian) with the bridge as its component; alice@xmpp.test is a
//!   slixmpp client (`tests/xmpp_client.py`) that prints every message stanza as a JSON line.
//! - SIP: SIPp (Debian's, TCP only) behind socat's mutual TLS, playing the LCS user
//!   bob@contoso.com (gateway mode, `bob\40contoso.com@lcs.xmpp.test` on the XMPP side) or
//!   bob@contoso.test (direct mode, the component domain is the LCS domain). The bridge reaches
//!   SIPp through the static partner route `127.0.0.1:<socat port>`; SIPp reaches the bridge
//!   through socat's `OPENSSL` client with the peer certificate.
//!
//! Flows (Prosody, gateway mode): (a) three messages from XMPP open an INVITE session with the
//! profile's m-line and arrive as in-dialog MESSAGEs in order with their bodies byte for byte,
//! then a BYE after `[im] session_idle_secs`; (b) SIPp's INVITE session and two MESSAGEs reach
//! alice from bob's JID; (c) a 480 to the INVITE comes back as `recipient-unavailable` with the
//! original body; (d) a receipt request gets `<received/>` after the MESSAGE's 200; (e) typing
//! both ways (RFC 3994 isComposing ⇄ XEP-0085). ejabberd: (a) and (b) in gateway and in direct
//! mode. A Prosody restart mid-conversation: every MESSAGE SIPp sent while the component link
//! was down is either delivered to alice after it is back or was answered with an error.
//!
//! Each test prints the bridge log, SIPp's logs, the XMPP server's log and the client's events
//! when it fails (see [`World`]'s `Drop`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::pki::{Pki, der_to_pem};
use common::sipp::{self, Killed, LoggedMessage};
use common::{COMPONENT_SECRET, Ejabberd, Prosody, XMPP_DOMAIN, XmppServer};

const BIN: &str = env!("CARGO_BIN_EXE_lcs-bridge");

/// `[im] session_idle_secs` in the bridge's configuration (the smallest value allowed).
const IDLE_SECS: u64 = 10;
/// Everything one test does must be over within this (the tests' limit is 60 s).
const TEST_BUDGET: Duration = Duration::from_secs(55);
/// The LCS side's certificate (socat, both directions): the partner names for both modes and
/// the IP literal the bridge dials.
const PEER_NAMES: &[&str] = &[
    "sip.contoso.com",
    "contoso.com",
    "sip.contoso.test",
    "contoso.test",
    "127.0.0.1",
];
const ALICE_PASSWORD: &str = "alicepw";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------ address modes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Component `lcs.xmpp.test`; LCS users as `user\40contoso.com@lcs.xmpp.test`.
    Gateway,
    /// Component `contoso.test`, the LCS domain itself; LCS users as `user@contoso.test`.
    Direct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Gateway => "gateway",
            Mode::Direct => "direct",
        }
    }

    fn component(self) -> &'static str {
        match self {
            Mode::Gateway => common::GATEWAY_COMPONENT,
            Mode::Direct => common::DIRECT_COMPONENT,
        }
    }

    /// The LCS domain of the SIP side (the partner in the bridge's configuration).
    fn lcs_domain(self) -> &'static str {
        match self {
            Mode::Gateway => "contoso.com",
            Mode::Direct => common::DIRECT_COMPONENT,
        }
    }

    /// The XMPP address of LCS user `user`.
    fn jid(self, user: &str) -> String {
        match self {
            Mode::Gateway => format!(r"{user}\40{}@{}", self.lcs_domain(), self.component()),
            Mode::Direct => format!("{user}@{}", self.lcs_domain()),
        }
    }
}

// ------------------------------------------------------------------ the bridge

/// `lcs-bridge run` as a child process, its output (the log) in a file; killed when dropped.
struct Bridge {
    child: Child,
    log: PathBuf,
    sip_port: u16,
}

impl Bridge {
    fn start(config: &Path, log: &Path, sip_port: u16) -> Bridge {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Bridge {
            child,
            log: log.to_owned(),
            sip_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<{e}>"))
    }

    fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until `needle` has appeared `count` times in the log.
    fn wait_log(&mut self, needle: &str, count: usize, deadline: Instant) {
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
    fn wait_started(&mut self, deadline: Instant) {
        self.wait_log("lcs-bridge started", 1, deadline);
        assert!(
            sipp::listening(self.sip_port),
            "the bridge says it started but nothing listens on {}",
            self.sip_port
        );
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct BridgeConfig<'a> {
    dir: &'a Path,
    mode: Mode,
    component_port: u16,
    sip_port: u16,
    partner_port: u16,
}

impl BridgeConfig<'_> {
    fn toml(&self) -> String {
        // TOML basic strings: Rust's Debug quoting is the same for these (ASCII) paths.
        let quote = |p: &Path| format!("{:?}", p.display().to_string());
        let path = |name: &str| quote(&self.dir.join(name));
        let mappings = quote(&repo().join("mappings"));
        format!(
            r#"# written by tests/im_e2e.rs
[xmpp]
host = "127.0.0.1"
port = {component_port}
secret = "{COMPONENT_SECRET}"
mode = "{mode}"
component_domains = ["{component}"]
local_domains = ["{XMPP_DOMAIN}"]

[sip]
listen = "127.0.0.1:{sip_port}"
public_fqdn = "sip.xmpp.test"
cert_chain = {cert}
private_key = {key}
ca_bundle = {ca}
# Nothing here may ask a real resolver: the discard port answers nothing.
dns_servers = ["127.0.0.1:9"]

[federation]
default_policy = "deny"

[[federation.partners]]
domain = "{partner}"
edge = "127.0.0.1:{partner_port}"

[im]
session_idle_secs = {IDLE_SECS}

[storage]
path = {storage}

[mappings]
path = {mappings}

[logging]
level = "debug"
"#,
            component_port = self.component_port,
            mode = self.mode.name(),
            component = self.mode.component(),
            sip_port = self.sip_port,
            cert = path("bridge.crt"),
            key = path("bridge.key"),
            ca = path("ca.crt"),
            partner = self.mode.lcs_domain(),
            partner_port = self.partner_port,
            storage = path("store"),
        )
    }
}

// ------------------------------------------------------------------ the XMPP client

/// `tests/xmpp_client.py` logged in as a local user: commands as JSON lines on its stdin, every
/// event it prints kept in `seen`.
struct XmppClient {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    taken: HashSet<usize>,
    stderr: PathBuf,
}

impl XmppClient {
    fn start(python: &Path, dir: &Path, c2s_port: u16, user: &str) -> Self {
        let stderr = dir.join(format!("{user}.client.log"));
        let mut cmd = Command::new(python);
        cmd.arg(repo().join("tests/xmpp_client.py"))
            .args(["--jid", &format!("{user}@{XMPP_DOMAIN}")])
            .args(["--password", ALICE_PASSWORD])
            .args(["--port", &c2s_port.to_string()])
            .args(["--timeout", &TEST_BUDGET.as_secs().to_string()]);
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

    fn command(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a chat message; `extra` holds more command fields (`id`, `receipt`, `chatstate`).
    fn send(&mut self, to: &str, body: Option<&str>, extra: Value) {
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

    fn drain(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
    }

    /// The first event not returned before that satisfies `pred`, waiting for it until
    /// `deadline`.
    fn wait_for(&mut self, what: &str, deadline: Instant, pred: impl Fn(&Value) -> bool) -> Value {
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
    fn messages_from(&mut self, from: &str) -> Vec<Value> {
        self.drain();
        self.seen
            .iter()
            .filter(|e| is_message_from(e, from))
            .cloned()
            .collect()
    }

    fn report(&mut self) -> String {
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

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

fn is_message_from(event: &Value, from: &str) -> bool {
    event["event"] == "message" && event["from"].as_str().is_some_and(|f| bare(f) == from)
}

/// Line ends as an XML parser hands them over.
fn lf(text: &str) -> String {
    text.replace("\r\n", "\n")
}

// ------------------------------------------------------------------ the test world

/// One test's world: an XMPP server with alice registered and logged in, the bridge joined to
/// it as a component, and the SIPp runs of the flows. When the test panics, its `Drop` prints
/// every log.
struct World<S: XmppServer> {
    name: &'static str,
    mode: Mode,
    deadline: Instant,
    sipp: PathBuf,
    socat: PathBuf,
    /// The partner's static edge in the bridge's configuration (socat in front of SIPp UAS).
    partner_port: u16,
    /// Names of the SIPp runs, for the logs.
    runs: Vec<String>,
    // Dropped in this order: the client, the bridge, socat, the server, the directory.
    alice: XmppClient,
    bridge: Bridge,
    peers: Vec<Killed>,
    server: S,
    dir: tempfile::TempDir,
}

impl<S: XmppServer> World<S> {
    /// Sets up the world, or `None` when a peer is missing (skip, or a failure under
    /// `LCS_BRIDGE_REQUIRE_PEERS=1`).
    fn new(name: &'static str, mode: Mode, start: impl FnOnce() -> Option<S>) -> Option<World<S>> {
        let began = Instant::now();
        let deadline = began + TEST_BUDGET;
        let (sipp, socat) = sipp::peers()?;
        let python = common::require_python_modules(&["slixmpp"])?;
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
        let sip_port = common::free_port();
        let partner_port = common::free_port();
        let config = dir.path().join("lcs-bridge.toml");
        let toml = BridgeConfig {
            dir: dir.path(),
            mode,
            component_port: server.component_port(),
            sip_port,
            partner_port,
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

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_scenario(&mut self, name: &str, scenario: &str) {
        let xml = scenario.replace("@LCS@", self.mode.lcs_domain());
        std::fs::write(self.dir().join(format!("{name}.xml")), xml).unwrap();
        self.runs.push(name.to_owned());
    }

    fn sipp_timeout(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// SIPp as the LCS user the bridge calls: SIPp UAS on TCP, socat's mutual TLS on the
    /// partner's static edge port in front of it.
    fn uas(&mut self, name: &str, scenario: &str) -> Killed {
        self.write_scenario(name, scenario);
        let port = common::free_port();
        let timeout = self.sipp_timeout();
        let mut child = sipp::spawn_sipp(&self.sipp, self.dir(), name, port, None, timeout, &[]);
        sipp::wait_listening(&mut child, port, "sipp");
        let socat = sipp::socat_from_edge(&self.socat, self.dir(), self.partner_port, port);
        self.peers.push(socat);
        child
    }

    /// SIPp as the LCS user who calls: SIPp UAC on TCP to socat, socat's mutual TLS (the peer
    /// certificate) to the bridge's SIP port. The Call-ID is `<name>-1@sipp`.
    fn uac(&mut self, name: &str, scenario: &str) -> Killed {
        self.write_scenario(name, scenario);
        let listen = common::free_port();
        let socat = sipp::socat_to_edge(&self.socat, self.dir(), listen, self.bridge.sip_port);
        self.peers.push(socat);
        let timeout = self.sipp_timeout();
        let cid = format!("{name}-%u@sipp");
        sipp::spawn_sipp(
            &self.sipp,
            self.dir(),
            name,
            common::free_port(),
            Some(listen),
            timeout,
            &["-cid_str", &cid],
        )
    }

    /// Waits for SIPp run `name` to end; panics unless its scenario succeeded. What went over
    /// the wire.
    fn finish(&mut self, child: &mut Killed, name: &str) -> Vec<LoggedMessage> {
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
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut report = format!(
            "\n===== {} ({} mode) failed: logs =====\n--- bridge log ---\n{}\n",
            self.name,
            self.mode.name(),
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

fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[start..]
}

// ------------------------------------------------------------------ SIPp scenarios

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="lcs-bridge im_e2e">
"#;
const TAIL: &str = "</scenario>\n";

/// SIPp's 200 to the request it just received (which already carries both tags).
const OK: &str = r#"  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"#;

/// A provisional response may come first; then the 200.
const RECV_OK: &str = r#"  <recv response="100" optional="true"/>
  <recv response="200"/>
"#;

/// UAS: the bridge's INVITE (the profile's m-line, from alice to bob) answered 200 with the
/// SDP answer and a TLS Contact, then its ACK.
const UAS_ACCEPT: &str = r#"  <recv request="INVITE">
    <action>
      <ereg regexp="m=message 5060 sip/tcp \*" search_in="body" check_it="true" assign_to="m"/>
      <ereg regexp="sip:alice@xmpp\.test" search_in="hdr" header="From:" check_it="true" assign_to="f"/>
      <ereg regexp="sip:bob@@LCS@" search_in="hdr" header="To:" check_it="true" assign_to="t"/>
    </action>
  </recv>
  <Reference variables="m,f,t"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]lcs[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:bob@[local_ip]:[local_port];transport=tls>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- 2 0 IN IP4 [local_ip]
      s=session
      c=IN IP4 [local_ip]
      t=0 0
      m=message 5060 sip/tcp *
      a=accept-types:text/plain
    ]]>
  </send>
  <recv request="ACK"/>
"#;

/// UAS: an in-dialog MESSAGE from the bridge, answered 200.
const UAS_MESSAGE: &str = r#"  <recv request="MESSAGE"/>
"#;

/// UAS: `n` in-dialog MESSAGEs, then a 200 to each. The bridge does not wait for one MESSAGE's
/// answer before sending the next, and SIPp aborts a call when a request arrives while it is at
/// a `<send>`: so all are received first (Via and CSeq of each kept), then answered.
fn uas_messages(n: usize) -> String {
    let mut xml = String::new();
    for i in 0..n {
        xml.push_str(&format!(
            r#"  <recv request="MESSAGE">
    <action>
      <ereg regexp="SIP/2.0/TLS [^ ]+" search_in="hdr" header="Via:" check_it="true" assign_to="via{i}"/>
      <ereg regexp="[0-9]+ MESSAGE" search_in="hdr" header="CSeq:" check_it="true" assign_to="cseq{i}"/>
    </action>
  </recv>
"#
        ));
    }
    for i in 0..n {
        xml.push_str(&format!(
            r#"  <send>
    <![CDATA[
      SIP/2.0 200 OK
      Via: [$via{i}]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: [$cseq{i}]
      Content-Length: 0

    ]]>
  </send>
"#
        ));
    }
    xml
}

/// UAC: INVITE to alice with the session-mode offer, the 200 (an SDP answer with a message
/// m-line; its To tag kept in `$totag`), ACK.
const UAC_INVITE: &str = r#"  <send>
    <![CDATA[
      INVITE sip:alice@xmpp.test SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: "Bob" <sip:bob@@LCS@>;tag=[call_number]
      To: <sip:alice@xmpp.test>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:bob@[local_ip]:[local_port];transport=tls>
      Ms-Conversation-ID: e2e[call_number]
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- 1 0 IN IP4 [local_ip]
      s=session
      c=IN IP4 [local_ip]
      t=0 0
      m=message 5060 sip/tcp *
      a=accept-types:text/plain
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="m=message" search_in="body" check_it="true" assign_to="m"/>
      <ereg regexp=";tag=[^;> ]+" search_in="hdr" header="To:" check_it="true" assign_to="totag"/>
    </action>
  </recv>
  <Reference variables="m"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: "Bob" <sip:bob@@LCS@>;tag=[call_number]
      To: <sip:alice@xmpp.test>[$totag]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>
"#;

/// UAC: an in-dialog request (CSeq from SIPp's counter, 2 after the INVITE).
fn uac_request(method: &str, content_type: Option<&str>, body: &str) -> String {
    let content_type = content_type
        .map(|t| format!("Content-Type: {t}\n      "))
        .unwrap_or_default();
    let body: String = body.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        r#"  <send>
    <![CDATA[
      {method} [next_url] SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: "Bob" <sip:bob@@LCS@>;tag=[call_number]
      To: <sip:alice@xmpp.test>[$totag]
      Call-ID: [call_id]
      CSeq: [cseq] {method}
      {content_type}Content-Length: [len]

{body}    ]]>
  </send>
"#
    )
}

const TEXT: &str = "text/plain; charset=UTF-8";
const ISCOMPOSING: &str = "application/im-iscomposing+xml";

fn iscomposing(state: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<isComposing xmlns=\"urn:ietf:params:xml:ns:im-iscomposing\">\n<state>{state}</state>\n<contenttype>text/plain</contenttype>\n</isComposing>"
    )
}

/// SIP requests SIPp received, in order.
fn requests(log: &[LoggedMessage]) -> Vec<&LoggedMessage> {
    log.iter()
        .filter(|m| !m.sent && m.method().is_some())
        .collect()
}

fn methods(msgs: &[&LoggedMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.method().unwrap_or_default())
        .collect()
}

fn body_text(m: &LoggedMessage) -> String {
    String::from_utf8(m.body().to_vec()).expect("a UTF-8 body")
}

// ------------------------------------------------------------------ the flows

/// (a) alice writes three messages: SIPp sees the INVITE with the profile's m-line, ACKs,
/// gets the three MESSAGEs in order with their bodies byte for byte, then a BYE once the
/// session has been idle for `session_idle_secs`.
fn flow_a<S: XmppServer>(w: &mut World<S>) {
    let scenario = [
        HEAD,
        UAS_ACCEPT,
        &uas_messages(3),
        "  <recv request=\"BYE\"/>\n",
        OK,
        TAIL,
    ]
    .concat();
    let mut sipp = w.uas("a", &scenario);
    let bob = w.mode.jid("bob");
    let bodies = [
        "one",
        "two & <three> \"four\" 'five'",
        "drei é 中 ✓ 🙂 <&> \\40",
    ];
    for (i, body) in bodies.iter().enumerate() {
        w.alice
            .send(&bob, Some(body), json!({"id": format!("a{i}")}));
    }
    let log = w.finish(&mut sipp, "a");
    let reqs = requests(&log);
    assert_eq!(
        methods(&reqs),
        ["INVITE", "ACK", "MESSAGE", "MESSAGE", "MESSAGE", "BYE"]
    );
    let invite = reqs[0];
    assert!(
        body_text(invite)
            .lines()
            .any(|l| l == "m=message 5060 sip/tcp *"),
        "INVITE without the profile's m-line:\n{}",
        body_text(invite)
    );
    let messages = &reqs[2..5];
    for (m, body) in messages.iter().zip(bodies) {
        assert_eq!(m.body(), body.as_bytes(), "MESSAGE body");
        assert_eq!(m.header("Content-Type").as_deref(), Some(TEXT));
    }
    let cseqs: Vec<u32> = messages.iter().map(|m| m.cseq().unwrap().0).collect();
    assert!(
        cseqs.windows(2).all(|w| w[0] < w[1]),
        "CSeq order {cseqs:?}"
    );
    let answered: Vec<u32> = log
        .iter()
        .filter(|m| m.sent && m.status() == Some(200))
        .filter_map(|m| m.cseq().filter(|(_, method)| method == "MESSAGE"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(answered, cseqs, "SIPp's 200s to the MESSAGEs");
    // The BYE comes once the session has been idle (from alice's last message) for the limit.
    let mut idle = reqs[5].time - reqs[4].time;
    if idle < 0.0 {
        idle += 86_400.0; // past midnight
    }
    assert!(
        idle >= IDLE_SECS as f64 - 1.0,
        "BYE {idle:.3} s after the last MESSAGE, before the idle timeout of {IDLE_SECS} s"
    );
    let errors: Vec<Value> = w
        .alice
        .messages_from(&bob)
        .into_iter()
        .filter(|e| e["type"] == "error")
        .collect();
    assert!(errors.is_empty(), "error stanzas: {errors:?}");
}

/// (b) SIPp starts an INVITE session and sends two MESSAGEs: alice gets both, in order, from
/// bob's JID, as chat messages of one thread, the text as it went over the wire.
fn flow_b<S: XmppServer>(w: &mut World<S>) {
    let first = "Hello from LCS";
    let second = "Zweite Nachricht: é 中 ✓ <&> \"quoted\"";
    let scenario = [
        HEAD,
        UAC_INVITE,
        &uac_request("MESSAGE", Some(TEXT), first),
        RECV_OK,
        &uac_request("MESSAGE", Some(TEXT), second),
        RECV_OK,
        &uac_request("BYE", None, ""),
        RECV_OK,
        TAIL,
    ]
    .concat();
    let mut sipp = w.uac("b", &scenario);
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    let got: Vec<Value> = (0..2)
        .map(|_| {
            w.alice.wait_for("a message from bob", deadline, |e| {
                is_message_from(e, &bob) && e["body"].is_string()
            })
        })
        .collect();
    let log = w.finish(&mut sipp, "b");
    let sent: Vec<&LoggedMessage> = log
        .iter()
        .filter(|m| m.sent && m.method().as_deref() == Some("MESSAGE"))
        .collect();
    assert_eq!(sent.len(), 2);
    let call_id = sent[0].header("Call-ID").unwrap();
    for ((event, wire), text) in got.iter().zip(&sent).zip([first, second]) {
        let wire = body_text(wire);
        assert!(wire.starts_with(text), "SIPp sent {wire:?}");
        assert_eq!(event["type"], "chat", "{event}");
        assert_eq!(event["body"].as_str().map(lf), Some(lf(&wire)), "{event}");
        assert_eq!(event["thread"].as_str(), Some(call_id.as_str()), "{event}");
    }
}

#[test]
fn prosody_a_three_messages_to_lcs_then_bye_after_idle() {
    let Some(mut w) = World::new("(a)", Mode::Gateway, Prosody::start) else {
        return;
    };
    flow_a(&mut w);
}

#[test]
fn prosody_b_lcs_session_reaches_the_xmpp_user() {
    let Some(mut w) = World::new("(b)", Mode::Gateway, Prosody::start) else {
        return;
    };
    flow_b(&mut w);
}

/// (c) SIPp answers the INVITE with 480: alice gets her message back as an error with
/// `recipient-unavailable` and its original body.
#[test]
fn prosody_c_480_returns_recipient_unavailable_with_the_body() {
    let Some(mut w) = World::new("(c)", Mode::Gateway, Prosody::start) else {
        return;
    };
    let scenario = [
        HEAD,
        r#"  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 480 Temporarily Unavailable
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]lcs[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
"#,
        TAIL,
    ]
    .concat();
    let mut sipp = w.uas("c", &scenario);
    let bob = w.mode.jid("bob");
    let body = "are you there? <&> ü";
    w.alice.send(&bob, Some(body), json!({"id": "c1"}));
    let deadline = w.deadline;
    let error = w.alice.wait_for("the error for c1", deadline, |e| {
        is_message_from(e, &bob) && e["type"] == "error"
    });
    assert_eq!(error["id"], "c1", "{error}");
    assert_eq!(
        error["error"]["condition"], "recipient-unavailable",
        "{error}"
    );
    assert_eq!(error["body"], body, "{error}");
    w.finish(&mut sipp, "c");
}

/// (d) A message with a XEP-0184 receipt request: `<received id=…/>` from bob once SIPp has
/// answered the MESSAGE 200.
#[test]
fn prosody_d_receipt_request_gets_received() {
    let Some(mut w) = World::new("(d)", Mode::Gateway, Prosody::start) else {
        return;
    };
    let scenario = [HEAD, UAS_ACCEPT, UAS_MESSAGE, OK, TAIL].concat();
    let mut sipp = w.uas("d", &scenario);
    let bob = w.mode.jid("bob");
    w.alice.send(
        &bob,
        Some("receipt, please"),
        json!({"id": "d1", "receipt": true}),
    );
    let deadline = w.deadline;
    let receipt = w.alice.wait_for("the receipt for d1", deadline, |e| {
        is_message_from(e, &bob) && !e["received"].as_array().is_none_or(Vec::is_empty)
    });
    assert_eq!(receipt["received"], json!(["d1"]), "{receipt}");
    assert_ne!(receipt["type"], "error", "{receipt}");
    let log = w.finish(&mut sipp, "d");
    let reqs = requests(&log);
    assert_eq!(methods(&reqs), ["INVITE", "ACK", "MESSAGE"]);
    assert_eq!(reqs[2].body(), b"receipt, please");
}

/// (e) Typing both ways in one session SIPp started: isComposing `active` and `idle` become
/// `<composing/>` and `<paused/>` from bob; alice's `<composing/>` becomes an isComposing
/// MESSAGE (`active`) from alice in the same dialog.
#[test]
fn prosody_e_typing_both_ways() {
    let Some(mut w) = World::new("(e)", Mode::Gateway, Prosody::start) else {
        return;
    };
    let scenario = [
        HEAD,
        UAC_INVITE,
        &uac_request("MESSAGE", Some(ISCOMPOSING), &iscomposing("active")),
        RECV_OK,
        &uac_request("MESSAGE", Some(ISCOMPOSING), &iscomposing("idle")),
        RECV_OK,
        r#"  <recv request="MESSAGE">
    <action>
      <ereg regexp="application/im-iscomposing\+xml" search_in="hdr" header="Content-Type:" check_it="true" assign_to="ct"/>
      <ereg regexp="sip:alice@xmpp\.test" search_in="hdr" header="From:" check_it="true" assign_to="f"/>
    </action>
  </recv>
  <Reference variables="ct,f"/>
"#,
        OK,
        &uac_request("BYE", None, ""),
        RECV_OK,
        TAIL,
    ]
    .concat();
    let mut sipp = w.uac("e", &scenario);
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    for state in ["composing", "paused"] {
        let e = w.alice.wait_for(state, deadline, |e| {
            is_message_from(e, &bob) && e["chatstates"].as_array().is_some_and(|s| !s.is_empty())
        });
        assert_eq!(e["chatstates"], json!([state]), "{e}");
        assert!(e["body"].is_null(), "{e}");
        assert_eq!(e["type"], "chat", "{e}");
    }
    w.alice
        .send(&bob, None, json!({"id": "e1", "chatstate": "composing"}));
    let log = w.finish(&mut sipp, "e");
    let typing = requests(&log)
        .into_iter()
        .find(|m| m.method().as_deref() == Some("MESSAGE"))
        .expect("an isComposing MESSAGE from the bridge");
    assert_eq!(typing.header("Content-Type").as_deref(), Some(ISCOMPOSING));
    assert!(
        body_text(typing).contains("<state>active</state>"),
        "{}",
        body_text(typing)
    );
}

/// ejabberd, gateway mode: flows (a) and (b).
#[test]
fn ejabberd_gateway_a_and_b() {
    let Some(mut w) = World::new("ejabberd", Mode::Gateway, Ejabberd::start) else {
        return;
    };
    flow_a(&mut w);
    flow_b(&mut w);
}

/// ejabberd, direct mode (component `contoso.test` = the LCS domain): flows (a) and (b).
#[test]
fn ejabberd_direct_a_and_b() {
    let Some(mut w) = World::new("ejabberd", Mode::Direct, Ejabberd::start) else {
        return;
    };
    flow_a(&mut w);
    flow_b(&mut w);
}

/// The restart scenario (UAC): INVITE, then numbered MESSAGEs (`msg <CSeq>`), one about every
/// 300 ms, each answered 200 or (the link's queue full) 503, until alice's MESSAGE arrives
/// (the bridge is the UAS of this dialog); then 200 to it and BYE. Alice's MESSAGE may also
/// overtake the answer to SIPp's last one.
fn restart_scenario() -> String {
    [
        HEAD,
        UAC_INVITE,
        "  <label id=\"next\"/>\n",
        &uac_request("MESSAGE", Some(TEXT), "msg [cseq]"),
        r#"  <recv response="100" optional="true"/>
  <recv response="200" optional="true" next="answered"/>
  <recv response="503" optional="true" next="answered"/>
  <recv request="MESSAGE"/>
"#,
        OK,
        r#"  <recv response="200" optional="true" next="bye"/>
  <recv response="503" next="bye"/>
  <label id="answered"/>
  <recv request="MESSAGE" timeout="300" ontimeout="next"/>
"#,
        OK,
        "  <label id=\"bye\"/>\n",
        &uac_request("BYE", None, ""),
        RECV_OK,
        TAIL,
    ]
    .concat()
}

/// MESSAGEs SIPp has sent so far.
fn sent_messages(log: &[LoggedMessage]) -> Vec<&LoggedMessage> {
    log.iter()
        .filter(|m| m.sent && m.method().as_deref() == Some("MESSAGE"))
        .collect()
}

/// The component link survives a Prosody restart mid-conversation: SIPp keeps writing to
/// alice while Prosody is down; every MESSAGE it sent is either delivered to alice once the
/// link (and her client) are back, or was answered with an error. Then alice answers in the
/// same SIP dialog.
#[test]
fn prosody_restart_mid_conversation_loses_no_message() {
    let Some(mut w) = World::new("restart", Mode::Gateway, Prosody::start) else {
        return;
    };
    let mut sipp = w.uac("r", &restart_scenario());
    let bob = w.mode.jid("bob");
    let deadline = w.deadline;
    for _ in 0..2 {
        w.alice
            .wait_for("a message from bob before the restart", deadline, |e| {
                is_message_from(e, &bob) && e["body"].is_string()
            });
    }
    let ups = w.bridge.count("XMPP component link up");
    w.server.stop();
    w.bridge.wait_log(
        "XMPP component link down",
        1,
        deadline.min(Instant::now() + Duration::from_secs(15)),
    );
    // Prosody is down and the bridge knows it: let SIPp send at least two more.
    let before = sent_messages(&sipp::read_message_log(w.dir(), "r")).len();
    while sent_messages(&sipp::read_message_log(w.dir(), "r")).len() < before + 2 {
        if let Ok(Some(status)) = sipp.0.try_wait() {
            panic!("SIPp ended ({status}) while Prosody was down");
        }
        assert!(
            Instant::now() < deadline,
            "SIPp sent nothing while Prosody was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent_while_down: Vec<String> = sent_messages(&sipp::read_message_log(w.dir(), "r"))
        [before..]
        .iter()
        .map(|m| lf(&body_text(m)))
        .collect();
    w.server.restart();
    w.bridge
        .wait_log("XMPP component link up", ups + 1, deadline);
    // Alice comes back only now: what the bridge held while Prosody was down has most likely
    // gone to her offline storage by then (either way it must reach her).
    w.alice
        .wait_for("alice's client losing its stream", deadline, |e| {
            e["event"] == "disconnected"
        });
    w.alice.command(json!({"op": "connect"}));
    w.alice
        .wait_for("alice online again", deadline, |e| e["event"] == "online");
    // Alice answers in the same dialog; SIPp stops writing and ends the session.
    w.alice
        .send(&bob, Some("back again"), json!({"id": "r-done"}));
    let log = w.finish(&mut sipp, "r");

    // Every MESSAGE SIPp sent got a final answer: 2xx ones must reach alice, the rest were
    // bounced to SIPp with an error.
    let mut delivered = Vec::new();
    let mut bounced = Vec::new();
    for m in sent_messages(&log) {
        let cseq = m.cseq().unwrap().0;
        let status = log
            .iter()
            .filter(|r| !r.sent && r.status().is_some_and(|s| s >= 200))
            .find(|r| r.cseq() == Some((cseq, "MESSAGE".into())))
            .and_then(LoggedMessage::status);
        match status {
            Some(200..=299) => delivered.push(lf(&body_text(m))),
            Some(_) => bounced.push(lf(&body_text(m))),
            None => panic!("MESSAGE {cseq} got no final answer"),
        }
    }
    assert!(
        sent_while_down
            .iter()
            .all(|b| delivered.contains(b) || bounced.contains(b)),
        "{sent_while_down:?}"
    );
    let missing = |alice: &mut XmppClient| -> Vec<String> {
        let got: Vec<String> = alice
            .messages_from(&bob)
            .iter()
            .filter_map(|e| e["body"].as_str().map(lf))
            .collect();
        delivered
            .iter()
            .filter(|b| !got.contains(b))
            .cloned()
            .collect()
    };
    while !missing(&mut w.alice).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lost = missing(&mut w.alice);
    assert!(
        lost.is_empty(),
        "answered 200 but never delivered: {lost:?} (sent while Prosody was down: {sent_while_down:?}; bounced: {bounced:?})"
    );
    let got: Vec<String> = w
        .alice
        .messages_from(&bob)
        .iter()
        .filter_map(|e| e["body"].as_str().map(lf))
        .collect();
    let unique: HashSet<&String> = got.iter().collect();
    if unique.len() != got.len() {
        common::loud(&format!(
            "restart: some messages reached alice twice: {got:?}"
        ));
    }
    let offline = w
        .alice
        .messages_from(&bob)
        .iter()
        .filter(|e| e["delay"] == true)
        .count();
    eprintln!(
        "restart: {} MESSAGEs sent, {} while Prosody was down, {} bounced, {offline} delivered \
         from offline storage",
        delivered.len() + bounced.len(),
        sent_while_down.len(),
        bounced.len()
    );
}
