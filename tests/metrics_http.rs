//! The operations HTTP listener of the real `lcs-bridge run` binary (docs/operations.md
//! "Metrics and health"): `/metrics` after SIP and XMPP traffic shows the series that traffic
//! moved (exact label sets, values checked), `/health` answers, and `/ready` is 200 while the
//! component link is up, 503 naming the link while it is down, and 200 again once the bridge
//! has reconnected. The test plays both neighbours (`lcs_test_support::e2e::scripted_partner`):
//! the XMPP server's component port and the partner `contoso.com`'s mutual-TLS edge.
//!
//! Also checks that docs/grafana-dashboard.json parses and only queries series the bridge
//! exports.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lcs_test_support::e2e::{Bridge, Mode};
use lcs_test_support::net::{self, Event};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const EDGE_CONN: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// `GET path` on the operations listener: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, body.to_owned())
}

/// The value of the series written exactly `series` (name and labels as rendered), if any.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A series as rendered (name and labels) and what its value must satisfy.
type Check<'a> = (&'a str, fn(f64) -> bool);

/// Scrapes until every check holds, or panics with the last scrape, the failing checks and the
/// bridge's log.
async fn scrape_until(addr: SocketAddr, bridge: &Bridge, checks: &[Check<'_>]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let failing: Vec<String> = checks
            .iter()
            .filter(|(series, ok)| !value(&body, series).is_some_and(ok))
            .map(|(series, _)| format!("{series} = {:?}", value(&body, series)))
            .collect();
        if failing.is_empty() {
            return body;
        }
        if Instant::now() > deadline {
            panic!(
                "failing: {failing:#?}\n--- /metrics ---\n{body}\n--- bridge log ---\n{}",
                bridge.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the first event `f` picks; the writers of SIP connections that come up meanwhile
/// are kept in `keep` (dropping one closes its connection).
async fn wait_event<T>(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    keep: &mut Vec<net::Writer>,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("event in time")
            .expect("events open");
        if let Event::SipUp(_, w) = &ev {
            keep.push(w.clone());
        }
        if let Some(t) = f(&ev) {
            return t;
        }
    }
}

#[test]
fn metrics_move_with_traffic_and_ready_follows_the_link() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let port = lcs_test_support::free_port();
            let ops: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let extra = format!("[admin]\nmetrics_listen = \"{ops}\"\n");
            let mut p = lcs_test_support::e2e::scripted_partner("lcsb-metrics-", &extra).await;
            let component = Mode::Gateway.component();
            let mut keep = Vec::new();

            // Up: health, readiness, build info.
            assert_eq!(get(ops, "/health").await, (200, "ok\n".to_owned()));
            assert_eq!(get(ops, "/ready").await, (200, "ready\n".to_owned()));
            assert_eq!(get(ops, "/nothing").await.0, 404);

            // The XMPP server: a query nobody answers (the bridge returns service-unavailable)
            // and a subscription to an LCS contact (stored, synced, then a SUBSCRIBE on a
            // connection the bridge opens to the partner).
            let joe = Mode::Gateway.jid("joe");
            let send_xmpp = |xml: String| p.xmpp.send(xml.into_bytes()).unwrap();
            send_xmpp(format!(
                "<iq type='get' id='q1' from='alice@xmpp.test/r' to='{component}'><query xmlns='urn:example:nothing'/></iq>"
            ));
            send_xmpp(format!(
                "<presence type='subscribe' from='alice@xmpp.test' to='{joe}'/>"
            ));
            wait_event(&mut p.events, &mut keep, |e| match e {
                Event::Sip(_, m, _) if m.method().is_some_and(|x| x.as_str() == "SUBSCRIBE") => {
                    Some(())
                }
                _ => None,
            })
            .await;

            // The partner's edge connects and sends a page-mode MESSAGE.
            let sip: SocketAddr = format!("127.0.0.1:{}", p.sip_port).parse().unwrap();
            net::connect_sip(sip, p.tls.connector.clone(), EDGE_CONN, p.events_tx.clone())
                .await
                .unwrap();
            let edge = wait_event(&mut p.events, &mut keep, |e| match e {
                Event::SipUp(EDGE_CONN, w) => Some(w.clone()),
                _ => None,
            })
            .await;
            let text = "metrics-hello";
            edge.send(format!(
                "MESSAGE sip:alice@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKm1\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=m1\r\nTo: <sip:alice@xmpp.test>\r\nCall-ID: metrics-1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            ).into_bytes())
            .unwrap();
            let status = wait_event(&mut p.events, &mut keep, |e| match e {
                Event::Sip(EDGE_CONN, m, _) if m.call_id().ok() == Some("metrics-1") => m.status(),
                _ => None,
            })
            .await;
            assert_eq!(status, 200);

            // A peer that does not speak TLS.
            let mut junk = tokio::net::TcpStream::connect(sip).await.unwrap();
            junk.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n").await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(WAIT, junk.read_to_end(&mut sink)).await;

            let body = scrape_until(
                ops,
                &p.bridge,
                &[
                    (
                        r#"lcs_bridge_sip_requests_total{direction="in",method="MESSAGE"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_sip_responses_total{direction="out",method="MESSAGE",class="2xx"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_sip_requests_total{direction="out",method="SUBSCRIBE"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_sip_connections{domain="contoso.com",direction="in"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_sip_connections{domain="contoso.com",direction="out"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_sip_handshake_failures_total{domain="unknown",direction="in",reason="not_tls"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_xmpp_stanzas_total{direction="out",kind="message"}"#,
                        |v| v >= 1.0,
                    ),
                    (
                        r#"lcs_bridge_xmpp_stanzas_total{direction="in",kind="iq"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_xmpp_stanzas_total{direction="in",kind="presence"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_translation_errors_total{side="xmpp",condition="service-unavailable"}"#,
                        |v| v == 1.0,
                    ),
                    (
                        r#"lcs_bridge_store_write_seconds_count{kind="durable"}"#,
                        |v| v >= 1.0,
                    ),
                    (
                        r#"lcs_bridge_subscriptions{direction="xmpp_to_sip",state="pending"}"#,
                        |v| v == 1.0,
                    ),
                    (r#"lcs_bridge_im_sessions"#, |v| v == 0.0),
                    (r#"lcs_bridge_xmpp_link_up{domain="lcs.xmpp.test"}"#, |v| v == 1.0),
                    (
                        r#"lcs_bridge_xmpp_link_queue_capacity{domain="lcs.xmpp.test"}"#,
                        |v| v > 0.0,
                    ),
                    (r#"lcs_bridge_sip_pending_requests_limit"#, |v| v > 0.0),
                    (
                        &format!(
                            r#"lcs_bridge_build_info{{version="{}",git_rev="{}"}}"#,
                            env!("CARGO_PKG_VERSION"),
                            option_env!("LCS_BRIDGE_GIT_REV").unwrap_or("unknown")
                        ),
                        |v| v == 1.0,
                    ),
                ],
            )
            .await;
            // Peer-chosen strings never become labels.
            assert!(!body.contains("metrics-hello") && !body.contains("urn:example"));

            // The component stream goes: not ready, naming the link.
            drop(p.xmpp);
            let deadline = Instant::now() + WAIT;
            let reason = loop {
                let (status, body) = get(ops, "/ready").await;
                if status == 503 {
                    break body;
                }
                assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(reason, format!("xmpp: component link {component} is down\n"));
            assert_eq!(get(ops, "/health").await.0, 200);
            scrape_until(
                ops,
                &p.bridge,
                &[(r#"lcs_bridge_xmpp_link_up{domain="lcs.xmpp.test"}"#, |v| v == 0.0)],
            )
            .await;

            // The bridge reconnects: ready again.
            let _xmpp = tokio::time::timeout(
                WAIT,
                net::accept_component(
                    &p.component,
                    component,
                    lcs_test_support::COMPONENT_SECRET,
                    2,
                    p.events_tx.clone(),
                ),
            )
            .await
            .expect("the bridge reconnects")
            .unwrap();
            let deadline = Instant::now() + WAIT;
            loop {
                let (status, body) = get(ops, "/ready").await;
                if status == 200 {
                    assert_eq!(body, "ready\n");
                    break;
                }
                assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            scrape_until(
                ops,
                &p.bridge,
                &[(r#"lcs_bridge_xmpp_link_up{domain="lcs.xmpp.test"}"#, |v| v == 1.0)],
            )
            .await;
            p.bridge.terminate(Instant::now() + WAIT);
        });
}

/// The dashboard is JSON, and every `lcs_bridge_*` name its queries use is one the bridge
/// exports (docs/operations.md lists them).
#[test]
fn grafana_dashboard_parses_and_uses_exported_series() {
    let root = lcs_test_support::repo();
    let text = std::fs::read_to_string(root.join("docs/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let telemetry = std::fs::read_to_string(root.join("src/telemetry.rs")).unwrap();
    let ops_doc = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut names = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("lcs_bridge_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    telemetry.contains(&format!("\"{base}\"")),
                    "{name}: not exported (src/telemetry.rs)"
                );
                assert!(
                    ops_doc.contains(&format!("`{base}`")),
                    "{name}: not described in docs/operations.md"
                );
                names += 1;
            }
        }
    }
    assert!(names >= 10, "{names} series used");
}
