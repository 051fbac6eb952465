//! Active/standby with real processes (docs/high-availability.md): a real PostgreSQL
//! (lcs_test_support::postgres), two `lcs-bridge run` processes sharing it — bridge-a on
//! 127.0.0.1, bridge-b on 127.0.0.2, the same SIP port — Prosody as the XMPP server (both
//! configured as the same component, `component_conflict_resolve = "kick_old"`), alice logged
//! in with slixmpp (approving every subscription), and this test as the LCS edge contoso.com,
//! reaching the bridges through `_sipfederationtls._tcp.xmpp.test` with both targets (an
//! in-process DNS server; the bridge's own resolver orders the targets, and the test connects
//! to the first that accepts, as RFC 3263 has a partner do).
//!
//! One test, in phases sharing the processes:
//! 1. bridge-a takes the lease, bridge-b waits as standby (it logs the holder and does not
//!    listen). The edge subscribes watchers to alice (each acknowledged by its 202) and opens
//!    IM sessions (acknowledged by the 200), messages flowing. Under a (test) service manager
//!    the standby says `READY=1` with a standby status and feeds the watchdog.
//! 2. PostgreSQL stopped under bridge-a: while it is away a new SUBSCRIBE gets `503` with
//!    `Retry-After` (nothing acknowledged that was not written); past the lease's local
//!    deadline bridge-a is suspended (`503` "does not hold the lease", it stays up); once
//!    PostgreSQL is back it renews under its own epoch and serves again: the same request gets
//!    its 202.
//! 3. SIGKILL to bridge-a: the edge probes with OPTIONS through the SRV record every 100 ms;
//!    the time to the first answer from bridge-b is printed and must be ≤ 10 s. Every
//!    acknowledged watcher and session is in the database; bridge-b NOTIFYs the watchers in
//!    their old dialogs, the edge's MESSAGE in an old session reaches alice, and alice's answer
//!    reaches the edge in that dialog.
//! 4. Split brain: bridge-a started again (standby), then bridge-b stopped (SIGSTOP) with a
//!    connection of the edge open to it, until bridge-a has taken over; SIGCONT: the request the
//!    edge sends on that connection gets `503`, nothing of it reaches alice, and bridge-b exits
//!    non-zero saying "deposed", its listener closed.
//! 5. Fencing by the store: another epoch written into the row behind the active's back; its
//!    next write is refused (no 202) and it exits non-zero saying "deposed".

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lcs_bridge::edge::dns::Discovery;
use lcs_bridge::sip::message::{Message, Method};
use lcs_test_support::config::BridgeConfig;
use lcs_test_support::dns::{TestDns, srv};
use lcs_test_support::e2e::{ALICE_PASSWORD, Bridge, Mode, XmppClient};
use lcs_test_support::net::{self, Event, Tls, Writer};
use lcs_test_support::pki::{Pki, write_bridge_files};
use lcs_test_support::postgres::Postgres;
use lcs_test_support::{Prosody, XMPP_DOMAIN, XmppServer};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

const LCS: &str = "contoso.com";
const ALICE: &str = "alice@xmpp.test";
const EDGE_HOST: &str = "127.0.0.1:5061";
const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n";
/// The failover target (docs/high-availability.md "Failover time").
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// `lcs-bridge store export` of this configuration: its JSON lines.
fn export(config: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_lcs-bridge"))
        .args(["store", "export", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "store export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The LCS edge contoso.com, as this test plays it.
struct Edge {
    tls: Tls,
    events: UnboundedReceiver<Event>,
    events_tx: tokio::sync::mpsc::UnboundedSender<Event>,
    writers: HashMap<usize, Writer>,
    next_conn: usize,
    discovery: Discovery,
    /// Responses by Call-ID, in order.
    responses: HashMap<String, Vec<Message>>,
    /// Requests the bridges sent, in order.
    requests: Vec<Message>,
}

impl Edge {
    /// Resolves the bridges' SRV record and connects to the first target that accepts; the
    /// connection's number.
    async fn connect(&mut self) -> Option<usize> {
        let targets = self.discovery.edge_targets(XMPP_DOMAIN).await.ok()?;
        for t in targets.targets {
            let Ok(addrs) = self.discovery.addresses(&t.target, t.port).await else {
                continue;
            };
            for addr in addrs {
                let conn = self.next_conn;
                self.next_conn += 1;
                let connect = net::connect_sip(
                    addr,
                    self.tls.connector.clone(),
                    conn,
                    self.events_tx.clone(),
                );
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                    if self
                        .pump_until(Instant::now() + Duration::from_secs(2), |e| {
                            e.writers.contains_key(&conn)
                        })
                        .await
                    {
                        return Some(conn);
                    }
                }
            }
        }
        None
    }

    fn send(&self, conn: usize, raw: String) {
        if let Some(w) = self.writers.get(&conn) {
            let _ = w.send(raw.into_bytes());
        }
    }

    /// Handles events until `done` or the deadline; answers the bridges' requests as a user
    /// agent would (NOTIFY 200, SUBSCRIBE 202, the rest 200).
    async fn pump_until(&mut self, deadline: Instant, done: impl Fn(&Edge) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let Ok(Some(event)) = tokio::time::timeout(left, self.events.recv()).await else {
                return done(self);
            };
            match event {
                Event::SipUp(conn, w) => {
                    self.writers.insert(conn, w);
                }
                Event::SipClosed(conn, _) => {
                    self.writers.remove(&conn);
                }
                Event::Sip(conn, m, _) => {
                    if m.is_request() {
                        let status = match m.method() {
                            Some(Method::Ack) => 0,
                            Some(Method::Subscribe) => 202,
                            _ => 200,
                        };
                        if status != 0 {
                            let r = Message::response_to(&m, status, None, Some("edge"));
                            if let Some(w) = self.writers.get(&conn) {
                                let _ = w.send(r.to_bytes());
                            }
                        }
                        self.requests.push(m);
                    } else {
                        let call = m.call_id().unwrap_or_default().to_owned();
                        self.responses.entry(call).or_default().push(m);
                    }
                }
                _ => {}
            }
        }
    }

    /// The final response to the request with this Call-ID and CSeq method, waiting for it.
    async fn final_response(
        &mut self,
        call: &str,
        method: &str,
        within: Duration,
    ) -> Option<Message> {
        let deadline = Instant::now() + within;
        let found = |e: &Edge| {
            e.responses.get(call).and_then(|rs| {
                rs.iter()
                    .find(|r| {
                        r.status().is_some_and(|s| s >= 200)
                            && r.header("CSeq").is_some_and(|c| c.ends_with(method))
                    })
                    .cloned()
            })
        };
        self.pump_until(deadline, |e| found(e).is_some()).await;
        let r = found(self);
        if let Some(rs) = self.responses.get_mut(call) {
            rs.clear();
        }
        r
    }
}

fn subscribe(i: usize, call: &str) -> String {
    format!(
        "SUBSCRIBE sip:{ALICE} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKs{call}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:w{i}@{LCS}>;tag=w{i}\r\nTo: <sip:{ALICE}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{i}@{EDGE_HOST};transport=tls>\r\n\
         Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    )
}

fn invite(n: usize, call: &str) -> String {
    use base64::Engine as _;
    let first = base64::engine::general_purpose::STANDARD.encode(format!("i{n} first"));
    format!(
        "INVITE sip:{ALICE} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKi{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:i{n}@{LCS}>;tag=i{n}\r\nTo: <sip:{ALICE}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:i{n}@{EDGE_HOST};transport=tls>\r\n\
         ms-text-format: text/plain; charset=UTF-8;ms-body={first}\r\n\
         Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{SDP}",
        len = SDP.len()
    )
}

fn ack(n: usize, call: &str, ok: &Message) -> String {
    let to = ok.header("To").unwrap_or_default();
    format!(
        "ACK sip:{ALICE} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKa{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:i{n}@{LCS}>;tag=i{n}\r\nTo: {to}\r\n\
         Call-ID: {call}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

fn in_session(n: usize, call: &str, ok: &Message, cseq: u32, text: &str) -> String {
    let to = ok.header("To").unwrap_or_default();
    let target = ok
        .header("Contact")
        .and_then(|c| c.split('<').nth(1))
        .and_then(|c| c.split('>').next())
        .unwrap_or("sip:alice@xmpp.test")
        .to_owned();
    format!(
        "MESSAGE {target} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKm{n}c{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:i{n}@{LCS}>;tag=i{n}\r\nTo: {to}\r\n\
         Call-ID: {call}\r\nCSeq: {cseq} MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\n\
         Content-Length: {len}\r\n\r\n{text}",
        len = text.len()
    )
}

fn options(k: usize) -> (String, String) {
    let call = format!("probe-{k}@{LCS}");
    let raw = format!(
        "OPTIONS sip:{XMPP_DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKo{k}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{LCS}>;tag=o{k}\r\nTo: <sip:{XMPP_DOMAIN}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    (call, raw)
}

/// One bridge's configuration: the shared database, its node name, its listen address.
fn bridge_config(
    dir: &Path,
    pg: &Postgres,
    node: &str,
    ip: &str,
    prosody: &Prosody,
    sip_port: u16,
    partner_port: u16,
) -> PathBuf {
    // Each node its own admin socket (two hosts in production; one directory here).
    let socket = dir.join(format!("{node}.admin.sock"));
    let extra = format!(
        "\n[ha]\nnode = \"{node}\"\n\n[presence]\nnotify_min_interval_secs = 1\n\n[admin]\nsocket = {:?}\n",
        socket.display().to_string()
    );
    let toml = BridgeConfig {
        extra: &extra,
        im: "[im]\nsession_idle_secs = 3600\n".into(),
        log_level: "info,lcs_bridge=debug",
        ..BridgeConfig::new(
            dir,
            Mode::Gateway,
            prosody.component_port(),
            sip_port,
            partner_port,
        )
    }
    .toml();
    let storage = format!(
        "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = {:?}\n",
        pg.url(),
        pg.password_file().display().to_string()
    );
    let toml = toml
        .replace(
            &format!("listen = \"127.0.0.1:{sip_port}\""),
            &format!("listen = \"{ip}:{sip_port}\""),
        )
        .replace("[storage]\n", &storage);
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn failover_split_brain_and_database_restart() {
    let Some(python) = lcs_test_support::require_python_modules(&["slixmpp"]) else {
        return;
    };
    let Some(pg) = Postgres::start() else { return };
    let Some(prosody) = Prosody::start_with("info", "component_conflict_resolve = \"kick_old\"\n")
    else {
        return;
    };
    prosody.register("alice", ALICE_PASSWORD);
    let dir = tempfile::Builder::new()
        .prefix("lcsb-ha-")
        .tempdir()
        .unwrap();
    let dir = dir.path();
    let pki = Pki::new("HA test CA");
    write_bridge_files(
        dir,
        &pki,
        &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1", "127.0.0.2"],
    );
    let edge_leaf = pki.leaf(&["sip.contoso.com", LCS, "127.0.0.1"], false);
    let deadline = || Instant::now() + Duration::from_secs(30);
    let mut alice = XmppClient::start_with(
        &python,
        dir,
        prosody.c2s_port(),
        "alice",
        &["--approve", "--timeout", "600"],
    );
    alice.wait_for("online", deadline(), |e| e["event"] == "online");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = Tls::new(&edge_leaf, &pki.ca);
        let (partner_port, events_tx, events) = net::sip_partner(tls.acceptor.clone()).await;
        let sip_port = lcs_test_support::free_port();
        let dns = TestDns::start(&[XMPP_DOMAIN]).await;
        dns.set_srv(
            XMPP_DOMAIN,
            &[
                srv(10, 50, sip_port, "sip1.xmpp.test"),
                srv(10, 50, sip_port, "sip2.xmpp.test"),
            ],
            1,
        )
        .await;
        dns.set_a("sip1.xmpp.test", &[Ipv4Addr::new(127, 0, 0, 1)], 60)
            .await;
        dns.set_a("sip2.xmpp.test", &[Ipv4Addr::new(127, 0, 0, 2)], 60)
            .await;
        let mut edge = Edge {
            tls,
            events,
            events_tx,
            writers: HashMap::new(),
            next_conn: 1 << 20,
            discovery: Discovery::new(&[dns.addr]).unwrap(),
            responses: HashMap::new(),
            requests: Vec::new(),
        };
        let a_config = bridge_config(
            dir,
            &pg,
            "bridge-a",
            "127.0.0.1",
            &prosody,
            sip_port,
            partner_port,
        );
        let b_config = bridge_config(
            dir,
            &pg,
            "bridge-b",
            "127.0.0.2",
            &prosody,
            sip_port,
            partner_port,
        );
        let a_addr: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
        let b_addr: SocketAddr = format!("127.0.0.2:{sip_port}").parse().unwrap();

        // ---- 1. a active, b standby; the workload on a.
        let mut a = Bridge::start(&a_config, &dir.join("a.log"), sip_port);
        a.wait_started(deadline());
        // b under a (test) service manager: a standby is a started service that feeds its
        // watchdog, or systemd would kill it after its start-up timeout.
        let notify_path = dir.join("b.notify");
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        let notify_socket = notify_path.display().to_string();
        let mut b = Bridge::start_with(
            &b_config,
            &dir.join("b.log"),
            sip_port,
            &[
                ("NOTIFY_SOCKET", Some(&notify_socket)),
                ("WATCHDOG_USEC", Some("1000000")),
                ("WATCHDOG_PID", None),
            ],
        );
        b.wait_log(
            "standby: waiting for the lease held by bridge-a",
            1,
            deadline(),
        );
        assert!(!listening(b_addr), "a standby does not listen");
        // Read for as long as b runs, as a service manager does (a full datagram queue
        // would block b's notifications).
        let (notes_tx, notes_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                if let Ok(n) = notify.recv(&mut buf) {
                    let note = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if notes_tx.send(note).is_err() {
                        return;
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_secs(3));
        let notes: Vec<String> = notes_rx.try_iter().collect();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("READY=1") && n.contains("STATUS=standby")),
            "{notes:?}"
        );
        assert!(
            notes.iter().filter(|n| n.contains("WATCHDOG=1")).count() >= 3,
            "{notes:?}"
        );
        let conn = edge
            .connect()
            .await
            .expect("a connection through the SRV record");
        let mut acked_watchers = Vec::new();
        for i in 0..10 {
            let call = format!("ha-w{i}@{LCS}");
            edge.send(conn, subscribe(i, &call));
            let r = edge
                .final_response(&call, "SUBSCRIBE", Duration::from_secs(10))
                .await;
            assert_eq!(
                r.as_ref().and_then(Message::status),
                Some(202),
                "w{i}: {r:?}"
            );
            acked_watchers.push(call);
        }
        let mut sessions = Vec::new();
        for n in 0..3 {
            let call = format!("ha-i{n}@{LCS}");
            edge.send(conn, invite(n, &call));
            let ok = edge
                .final_response(&call, "INVITE", Duration::from_secs(10))
                .await
                .expect("an answer to INVITE");
            assert_eq!(ok.status(), Some(200), "i{n}: {ok:?}");
            edge.send(conn, ack(n, &call, &ok));
            alice.wait_for("the first message", deadline(), |e| {
                e["event"] == "message" && e["body"] == format!("i{n} first")
            });
            sessions.push((n, call, ok));
        }

        // ---- 2. PostgreSQL restarts under a. b is held stopped meanwhile: once the database
        // is back after more than a lease, either node may take the lease (both correct); this
        // phase shows a resuming under its own epoch.
        send_signal(b.child.id(), "STOP");
        pg.stop();
        let call = format!("ha-w10@{LCS}");
        edge.send(conn, subscribe(10, &call));
        let r = edge
            .final_response(&call, "SUBSCRIBE", Duration::from_secs(15))
            .await
            .expect("an answer while the database is away");
        assert_eq!(r.status(), Some(503), "{r:?}");
        assert!(r.header("Retry-After").is_some(), "{r:?}");
        eprintln!("ha_failover: with the database away: {:?}", r.reason());
        // Away for longer than the lease: a is suspended (serves nothing, does not exit).
        a.wait_log("lease not renewed in time", 1, deadline());
        let call = format!("ha-w12@{LCS}");
        edge.send(conn, subscribe(12, &call));
        let r = edge
            .final_response(&call, "SUBSCRIBE", Duration::from_secs(5))
            .await
            .expect("an answer while suspended");
        assert_eq!(r.status(), Some(503), "{r:?}");
        assert_eq!(
            r.reason(),
            Some("Service Unavailable: this bridge does not hold the lease")
        );
        assert!(
            a.child.try_wait().unwrap().is_none(),
            "a suspended bridge stays"
        );
        pg.start_again();
        // The epoch in the row is still a's: it renews and serves again.
        a.wait_log("lease renewed: serving again", 1, deadline());
        send_signal(b.child.id(), "CONT");
        let call = format!("ha-w11@{LCS}");
        let mut served = None;
        for _ in 0..20 {
            edge.send(conn, subscribe(11, &call));
            let r = edge
                .final_response(&call, "SUBSCRIBE", Duration::from_secs(5))
                .await;
            if r.as_ref().and_then(Message::status) == Some(202) {
                served = r;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            served.is_some(),
            "no 202 after the database came back:\n{}",
            a.log()
        );
        acked_watchers.push(call);
        assert!(
            a.child.try_wait().unwrap().is_none(),
            "a rode the restart out"
        );
        assert_eq!(a.count("deposed"), 0);

        // ---- 3. SIGKILL a: b serves.
        // NOTIFYs from here on are the new active's (a sends nothing once killed).
        let mark = edge.requests.len();
        let killed = Instant::now();
        send_signal(a.child.id(), "KILL");
        let _ = a.child.wait();
        let mut k = 0;
        let failover = loop {
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no answer from bridge-b 30 s after the kill:\n{}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(c) = edge.connect().await else {
                continue;
            };
            k += 1;
            let (call, raw) = options(k);
            edge.send(c, raw);
            if let Some(r) = edge
                .final_response(&call, "OPTIONS", Duration::from_millis(500))
                .await
            {
                if r.status() == Some(200) {
                    break (killed.elapsed(), c);
                }
            }
        };
        let (took, conn_b) = failover;
        eprintln!(
            "ha_failover: SIGKILL to the first answered request: {} ms",
            took.as_millis()
        );
        assert!(took <= FAILOVER_BOUND, "failover took {took:?}");
        assert!(b.count("lease taken") >= 1);
        // Everything acknowledged is in the database.
        let stored = export(&b_config);
        for call in &acked_watchers {
            assert!(
                stored.iter().any(|r| r["kind"] == "subscription"
                    && r["dialog"]["call_id"] == call.as_str()),
                "{call} not stored"
            );
        }
        for (_, call, _) in &sessions {
            assert!(
                stored
                    .iter()
                    .any(|r| r["kind"] == "im_dialog" && r["dialog"]["call_id"] == call.as_str()),
                "{call} not stored"
            );
        }
        // Presence flows: b NOTIFYs every watcher in its old dialog.
        let notified = |e: &Edge, call: &str| {
            e.requests[mark..]
                .iter()
                .any(|m| m.method() == Some(&Method::Notify) && m.call_id().ok() == Some(call))
        };
        let all = edge
            .pump_until(deadline(), |e| {
                acked_watchers.iter().all(|c| notified(e, c))
            })
            .await;
        assert!(all, "not every watcher NOTIFYed by bridge-b:\n{}", b.log());
        // Chat flows in an old session.
        let (n, call, ok) = &sessions[0];
        edge.send(conn_b, in_session(*n, call, ok, 2, "after the failover"));
        let r = edge
            .final_response(call, "MESSAGE", Duration::from_secs(10))
            .await;
        assert_eq!(r.as_ref().and_then(Message::status), Some(200), "{r:?}");
        alice.wait_for("the message after the failover", deadline(), |e| {
            e["event"] == "message" && e["body"] == "after the failover"
        });
        // And the other way, in the same session: alice answers, the edge gets it in the old
        // dialog (no new INVITE).
        alice.command(serde_json::json!({
            "op": "send",
            "to": Mode::Gateway.jid(&format!("i{n}")),
            "body": "alice after the failover",
        }));
        let answered = edge
            .pump_until(deadline(), |e| {
                e.requests.iter().any(|m| {
                    m.method() == Some(&Method::Message)
                        && String::from_utf8_lossy(m.body()).contains("alice after the failover")
                })
            })
            .await;
        assert!(
            answered,
            "alice's message did not reach the edge:\n{}",
            b.log()
        );
        let m = edge
            .requests
            .iter()
            .find(|m| String::from_utf8_lossy(m.body()).contains("alice after the failover"))
            .unwrap();
        assert_eq!(m.call_id().ok(), Some(call.as_str()), "in the old dialog");

        // ---- 4. Split brain: b stopped until a (restarted) has taken over.
        let mut a = Bridge::start(&a_config, &dir.join("a2.log"), sip_port);
        a.wait_log(
            "standby: waiting for the lease held by bridge-b",
            1,
            deadline(),
        );
        send_signal(b.child.id(), "STOP");
        a.wait_started(deadline());
        send_signal(b.child.id(), "CONT");
        let call = format!("ha-w20@{LCS}");
        edge.send(conn_b, subscribe(20, &call));
        let r = edge
            .final_response(&call, "SUBSCRIBE", Duration::from_secs(5))
            .await;
        // Answered 503 because its deadline passed (before any write the store would refuse
        // as fenced), or not at all (it closed first): never 202.
        if let Some(r) = &r {
            assert_eq!(r.status(), Some(503), "{r:?}");
            assert_eq!(
                r.reason(),
                Some("Service Unavailable: this bridge does not hold the lease"),
                "{r:?}"
            );
        }
        eprintln!(
            "ha_failover: the stopped bridge, woken: {:?}",
            r.as_ref().map(|r| r.reason())
        );
        let stop_by = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = b.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < stop_by,
                "the deposed bridge did not exit:\n{}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!status.success(), "a deposed bridge exits non-zero");
        // Nothing of the request reached the XMPP side.
        alice.drain();
        assert!(
            !alice.seen.iter().any(|e| e.to_string().contains("w20")),
            "the deposed bridge passed w20 on"
        );
        assert!(
            b.log().contains("deposed: bridge bridge-a took the lease"),
            "{}",
            b.log()
        );
        assert!(!listening(b_addr));
        assert!(listening(a_addr));
        let stored = export(&a_config);
        assert!(
            !stored
                .iter()
                .any(|r| r["dialog"]["call_id"] == call.as_str()),
            "the deposed bridge wrote {call}"
        );

        // ---- 5. Fencing by the store: another epoch written into the row behind a's back
        // (as a node whose take a has not yet seen); a's next write is refused as fenced and
        // a stops as deposed (whichever finds out first: the write or the next renewal).
        let conn_a = edge.connect().await.expect("a connection to bridge-a");
        pg.psql(
            "UPDATE lcs_leader SET epoch = epoch + 1, holder = 'intruder', \
             expires_at = now() + interval '1 hour' WHERE id = 1",
        );
        let call = format!("ha-w30@{LCS}");
        edge.send(conn_a, subscribe(30, &call));
        let r = edge
            .final_response(&call, "SUBSCRIBE", Duration::from_secs(5))
            .await;
        assert_ne!(r.as_ref().and_then(Message::status), Some(202), "{r:?}");
        let stop_by = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = a.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < stop_by,
                "the fenced bridge did not exit:\n{}",
                a.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!status.success());
        let log = a.log();
        assert!(log.contains("deposed: "), "{log}");
        eprintln!(
            "ha_failover: fenced: {}",
            if log.contains("deposed: write refused") {
                "the store refused the write first"
            } else {
                "the renewal found the new epoch first"
            }
        );
        drop(dns);
    });
}
