//! `lcs-bridge doctor` against local peers (docs/operations.md "Checking a deployment:
//! doctor"): the in-process DNS server (`lcs_test_support::dns::TestDns`) serving the local
//! domain's and the partners' `_sipfederationtls._tcp` SRV records, an XEP-0114 component port
//! (scripted here, and Prosody's where it is installed), and scripted mutual-TLS partner edges
//! (`lcs_test_support::sip_peer::SipPeer`). The binary runs as an administrator would run it;
//! the system's roots are the test CA through `SSL_CERT_FILE`. A good deployment passes every
//! check; each broken part fails with its fix: an SRV record naming another host, a wrong
//! component secret, a partner whose certificate names another host, a partner that refuses
//! the bridge's client certificate, a partner that does not answer OPTIONS.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lcs_bridge::sip::message::Method;
use lcs_bridge::xmpp::link::{self, DEFAULT_BACKOFF, LinkEvent, LinkSettings};
use lcs_test_support::config::BridgeConfig;
use lcs_test_support::dns::{TestDns, srv};
use lcs_test_support::e2e::Mode;
use lcs_test_support::pki::{Pki, write_bridge_files};
use lcs_test_support::sip_peer::SipPeer;
use lcs_test_support::{
    COMPONENT_SECRET, GATEWAY_COMPONENT, Prosody, XmppServer, bridge_bin, handshake_digest,
    run_with_timeout,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// An XEP-0114 component port that accepts `secret` and answers anything else as Prosody does:
/// a `not-authorized` stream error.
async fn component_server(secret: &'static str) -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            n += 1;
            let id = format!("doctor{n}");
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if !read_until(&mut tcp, &mut buf, "<stream:stream").await
                    || !read_until(&mut tcp, &mut buf, ">").await
                {
                    return;
                }
                buf.clear();
                let header = format!(
                    "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
                     xmlns='jabber:component:accept' from='{GATEWAY_COMPONENT}' id='{id}'>"
                );
                if tcp.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                if !read_until(&mut tcp, &mut buf, "</handshake>").await {
                    return;
                }
                let sent = String::from_utf8_lossy(&buf).into_owned();
                let answer = if sent.contains(&handshake_digest(&id, secret)) {
                    "<handshake/>".to_owned()
                } else {
                    "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
                     </stream:error></stream:stream>"
                        .to_owned()
                };
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.read(&mut [0u8; 1024]).await;
            });
        }
    });
    port
}

/// Reads from `tcp` into `buf` until it holds `what`; false when the stream ends first.
async fn read_until(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, what: &str) -> bool {
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(buf).contains(what) {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    true
}

/// Writes the bridge's configuration: gateway mode, local domain `xmpp.test`, edge
/// `sip.xmpp.test` on `sip_port`, DNS from `dns`, `contoso.test`, `fabrikam.test` and
/// `northwind.test` listed partners found through SRV, 2 s connect timeout.
fn write_config(dir: &Path, dns: &TestDns, component_port: u16, secret: &str) -> PathBuf {
    let sip = format!(
        "dns_servers = [\"{}\"]\nconnect_timeout_secs = 2\nuse_system_roots = true\n",
        dns.addr
    );
    let mut cfg = BridgeConfig::new(dir, Mode::Gateway, component_port, 15061, 0);
    cfg.sip = &sip;
    cfg.secret = secret;
    cfg.federation = "default_policy = \"deny\"\n\n\
                      [[federation.partners]]\ndomain = \"contoso.test\"\n\n\
                      [[federation.partners]]\ndomain = \"fabrikam.test\"\n\n\
                      [[federation.partners]]\ndomain = \"northwind.test\"\n"
        .to_owned();
    cfg.log_level = "warn";
    let path = dir.join("lcs-bridge.toml");
    std::fs::write(&path, cfg.toml()).unwrap();
    path
}

/// Runs `lcs-bridge doctor` with the test CA as the system's roots.
async fn doctor(dir: &Path, config: &Path, partners: &[&str]) -> Output {
    let mut cmd = Command::new(bridge_bin());
    cmd.arg("doctor").arg("--config").arg(config);
    for p in partners {
        cmd.arg("--partner").arg(p);
    }
    cmd.env("SSL_CERT_FILE", dir.join("ca.crt"))
        .env_remove("SSL_CERT_DIR");
    tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, Duration::from_secs(60)))
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The report's line starting with `mark` and containing `what`, with its fix line if any.
fn line<'a>(report: &'a str, mark: &str, what: &str) -> Option<(&'a str, Option<&'a str>)> {
    let lines: Vec<&str> = report.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with(mark) && l.contains(what))?;
    let fix = lines
        .get(i + 1)
        .filter(|l| l.trim_start().starts_with("fix:"))
        .copied();
    Some((lines[i], fix))
}

#[track_caller]
fn expect(report: &str, mark: &str, what: &str, detail: &str, fix: Option<&str>) {
    let Some((l, f)) = line(report, mark, what) else {
        panic!("no {mark} line about {what:?} in:\n{report}");
    };
    assert!(l.contains(detail), "{l:?} lacks {detail:?}\n{report}");
    if let Some(fix) = fix {
        let f = f.unwrap_or_else(|| panic!("no fix after {l:?}\n{report}"));
        assert!(f.contains(fix), "{f:?} lacks {fix:?}\n{report}");
    }
}

async fn zones() -> TestDns {
    let dns = TestDns::start(&[
        "xmpp.test",
        "contoso.test",
        "fabrikam.test",
        "northwind.test",
    ])
    .await;
    dns.set_a("sip.xmpp.test", &[LOCALHOST], 60).await;
    dns
}

async fn partner_at(dns: &TestDns, domain: &str, peer: &SipPeer) {
    let host = format!("sip.{domain}");
    dns.set_srv(domain, &[srv(10, 0, peer.addr.port(), &host)], 60)
        .await;
    dns.set_a(&host, &[LOCALHOST], 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_deployment_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Doctor Test CA");
    write_bridge_files(dir.path(), &pki, &["sip.xmpp.test"]);
    let dns = zones().await;
    dns.set_srv("xmpp.test", &[srv(10, 0, 15061, "sip.xmpp.test")], 60)
        .await;
    let peer = SipPeer::start(pki.leaf(&["sip.contoso.test"], false), &pki.ca, false).await;
    partner_at(&dns, "contoso.test", &peer).await;
    let component_port = component_server(COMPONENT_SECRET).await;
    let config = write_config(dir.path(), &dns, component_port, COMPONENT_SECRET);

    let out = doctor(dir.path(), &config, &["contoso.test"]).await;
    let report = stdout(&out);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!report.contains('✗') && !report.contains('⚠'), "{report}");
    expect(
        &report,
        "✓",
        "SRV _sipfederationtls._tcp.xmpp.test",
        "sip.xmpp.test:15061",
        None,
    );
    expect(
        &report,
        "✓",
        "address of sip.xmpp.test",
        "127.0.0.1: this host",
        None,
    );
    expect(
        &report,
        "✓",
        "sip.cert_chain: serverAuth, sip.xmpp.test), system roots",
        "validates",
        None,
    );
    expect(
        &report,
        "✓",
        "(sip.cert_chain: clientAuth), system roots",
        "validates",
        None,
    );
    expect(
        &report,
        "✓",
        "sip.cert_chain: serverAuth, sip.xmpp.test), sip.ca_bundle",
        "validates",
        None,
    );
    expect(&report, "✓", "sip.cert_chain expiry", "expires on", None);
    expect(
        &report,
        "✓",
        "component lcs.xmpp.test",
        "handshake accepted",
        None,
    );
    expect(
        &report,
        "✓",
        "partner contoso.test: edge",
        "sip.contoso.test:",
        None,
    );
    expect(
        &report,
        "✓",
        "mutual TLS",
        "certificate names sip.contoso.test",
        None,
    );
    expect(
        &report,
        "✓",
        "certificate identity",
        "speaks for contoso.test",
        None,
    );
    expect(&report, "✓", "OPTIONS", "200", None);
    // One line per check: no line without its mark.
    assert!(
        report
            .lines()
            .all(|l| l.starts_with('✓') || l.starts_with("    fix:")),
        "{report}"
    );

    // The partner saw the bridge's OPTIONS, from the local domain through this edge.
    let requests = peer.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let options = &requests[0].1;
    assert_eq!(options.method(), Some(&Method::Options));
    assert_eq!(options.request_uri(), Some("sip:contoso.test"));
    assert_eq!(options.from().unwrap().uri, "sip:xmpp.test");
    assert!(
        options
            .header("Via")
            .unwrap()
            .contains("sip.xmpp.test:15061")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_part_fails_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Doctor Test CA");
    write_bridge_files(dir.path(), &pki, &["sip.xmpp.test"]);
    let dns = zones().await;
    // The local domain's SRV names another host.
    dns.set_srv("xmpp.test", &[srv(10, 0, 15061, "sip.elsewhere.test")], 60)
        .await;
    // contoso.test's edge presents a certificate for another name.
    let wrong_name = SipPeer::start(pki.leaf(&["edge.other.test"], false), &pki.ca, false).await;
    partner_at(&dns, "contoso.test", &wrong_name).await;
    // fabrikam.test's edge completes the handshake but never answers.
    let silent = SipPeer::start(pki.leaf(&["sip.fabrikam.test"], false), &pki.ca, true).await;
    partner_at(&dns, "fabrikam.test", &silent).await;
    // northwind.test's edge trusts another CA: it refuses the bridge's client certificate.
    let other_ca = Pki::new("Another CA");
    let refusing = SipPeer::start(
        pki.leaf(&["sip.northwind.test"], false),
        &other_ca.ca,
        false,
    )
    .await;
    partner_at(&dns, "northwind.test", &refusing).await;
    // The component port wants another secret.
    let component_port = component_server(COMPONENT_SECRET).await;
    let config = write_config(dir.path(), &dns, component_port, "not-the-secret");

    let out = doctor(
        dir.path(),
        &config,
        &[
            "contoso.test",
            "fabrikam.test",
            "northwind.test",
            "unlisted.test",
        ],
    )
    .await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    expect(
        &report,
        "✗",
        "SRV _sipfederationtls._tcp.xmpp.test",
        "points at sip.elsewhere.test:15061 (priority 10), not at sip.public_fqdn sip.xmpp.test",
        Some("_sipfederationtls._tcp.xmpp.test. IN SRV 10 0 15061 sip.xmpp.test."),
    );
    expect(
        &report,
        "✗",
        "component lcs.xmpp.test",
        "handshake refused: not-authorized: wrong secret",
        Some("xmpp.secret"),
    );
    expect(
        &report,
        "✗",
        "partner contoso.test at sip.contoso.test",
        "not valid for the name dialled",
        Some("name the edge dialled"),
    );
    expect(
        &report,
        "✗",
        "partner fabrikam.test at sip.fabrikam.test",
        "OPTIONS: no answer within 2 s",
        Some("fabrikam.test"),
    );
    expect(
        &report,
        "✗",
        "partner northwind.test at sip.northwind.test",
        "the partner ended the session",
        Some("client certificate"),
    );
    expect(
        &report,
        "✗",
        "partner unlisted.test",
        "refused by the [federation] policy",
        Some("domain = \"unlisted.test\""),
    );
    // What still works is still said to work.
    expect(&report, "✓", "address of sip.xmpp.test", "this host", None);
    expect(
        &report,
        "✓",
        "partner fabrikam.test at sip.fabrikam.test",
        "mutual TLS: certificate names sip.fabrikam.test",
        None,
    );
    assert_eq!(silent.request_count(), 1, "{report}");
    assert_eq!(wrong_name.request_count(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_check_against_prosody() {
    let Some(prosody) = Prosody::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Doctor Test CA");
    write_bridge_files(dir.path(), &pki, &["sip.xmpp.test"]);
    let dns = zones().await;
    dns.set_srv("xmpp.test", &[srv(10, 0, 15061, "sip.xmpp.test")], 60)
        .await;
    let good = write_config(dir.path(), &dns, prosody.component_port(), COMPONENT_SECRET);
    let out = doctor(dir.path(), &good, &[]).await;
    let report = stdout(&out);
    assert!(out.status.success(), "{report}\n{}", prosody.log());
    expect(
        &report,
        "✓",
        "component lcs.xmpp.test",
        "handshake accepted",
        None,
    );

    // While the bridge (here its component link) holds the domain, Prosody answers conflict
    // after checking the secret: a warning, and the link keeps its stream.
    let settings = LinkSettings {
        host: "127.0.0.1".into(),
        port: prosody.component_port(),
        secret: COMPONENT_SECRET.into(),
        domains: vec![GATEWAY_COMPONENT.into()],
        queue_capacity: 16,
        backoff: DEFAULT_BACKOFF,
        keepalive: Duration::from_secs(60),
    };
    let (link, mut events) = link::start(settings, Duration::from_secs(10))
        .await
        .unwrap();
    let out = doctor(dir.path(), &good, &[]).await;
    let report = stdout(&out);
    assert!(out.status.success(), "{report}\n{}", prosody.log());
    expect(
        &report,
        "⚠",
        "component lcs.xmpp.test",
        "conflict",
        Some("nothing to do while the bridge runs"),
    );
    assert!(link.is_up(GATEWAY_COMPONENT));
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok()).any(|e| matches!(e, LinkEvent::Down { .. })),
        "the running link lost its stream"
    );
    drop(events);

    let bad = write_config(dir.path(), &dns, prosody.component_port(), "wrong");
    let out = doctor(dir.path(), &bad, &[]).await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    expect(
        &report,
        "✗",
        "component lcs.xmpp.test",
        "not-authorized",
        Some("xmpp.secret"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_problems_stop_doctor_first() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start(&["xmpp.test"]).await;
    // No certificate files at all.
    let config = write_config(dir.path(), &dns, 9, COMPONENT_SECRET);
    let out = doctor(dir.path(), &config, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sip.cert_chain"), "{stderr}");
    assert!(stderr.contains("fix the configuration first"), "{stderr}");
    assert_eq!(stdout(&out), "");
    assert_eq!(dns.query_count(), 0);
}
