#![allow(clippy::unwrap_used)] // test fixtures: a failure to set one up is a test failure
#![allow(clippy::disallowed_methods)] // a test reads the clock

//! The bridge's log as docs/operations.md "Logs" describes it, from the real `lcs-bridge run`
//! between the scripted partner edge and component port:
//!
//! - `[logging] format = "json"`: every line one JSON object with `timestamp`, `level`,
//!   `target` and `fields` (`message` and the line's fields); the lines about a partner's
//!   connection carry `conn` and `domain` (the names of the partner's certificate), a failed
//!   handshake `conn` and `domain = "-"`.
//! - the human format written to a file (not a terminal) has no colour escapes, even without
//!   `NO_COLOR`, and its partner lines read `conn=N domain=…`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lcs_test_support::e2e::{ScriptedPartner, scripted_partner_with};
use lcs_test_support::net::{self, Event};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// The DNS names of the scripted partner's certificate, as the bridge's `domain` field shows them.
const PARTNER: &str = "contoso.com,sip.contoso.com";

/// Connects to the bridge as the partner with its certificate, then closes; and once with a
/// handshake that fails (not TLS). Waits until the bridge has logged both.
async fn partner_comes_and_goes(p: &mut ScriptedPartner) {
    let addr: SocketAddr = format!("127.0.0.1:{}", p.sip_port).parse().unwrap();
    net::connect_sip(addr, p.tls.connector.clone(), 7, p.events_tx.clone())
        .await
        .unwrap();
    let writer = loop {
        match tokio::time::timeout(Duration::from_secs(10), p.events.recv()).await {
            Ok(Some(Event::SipUp(7, w))) => break w,
            Ok(Some(_)) => {}
            other => panic!("no SIP connection to the bridge: {:?}", other.is_ok()),
        }
    };
    drop(writer); // the connection closes
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    tokio::task::block_in_place(|| {
        p.bridge.wait_log("peer closed the connection", 1, deadline);
        p.bridge.wait_log("TLS handshake failed", 1, deadline);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_about_a_partner_carry_its_domain_and_connection() {
    let mut p = scripted_partner_with("lcsb-logs-json-", "format = \"json\"\n", &[]).await;
    partner_comes_and_goes(&mut p).await;
    let log = p.bridge.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    for v in &lines {
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key:?} in {v}");
        }
        assert!(v["fields"]["message"].is_string(), "no message in {v}");
    }
    let find = |message: &str| -> &Value {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    let connected = &find("peer connected")["fields"];
    let conn = connected["conn"]
        .as_u64()
        .unwrap_or_else(|| panic!("peer connected without a numeric conn: {connected}"));
    assert_eq!(connected["domain"], PARTNER, "{connected}");
    let closed = &find("peer closed the connection")["fields"];
    assert_eq!(closed["conn"].as_u64(), Some(conn), "{closed}");
    assert_eq!(closed["domain"], PARTNER, "{closed}");
    let failed = &find("TLS handshake failed")["fields"];
    assert!(
        failed["conn"].as_u64().is_some_and(|c| c != conn),
        "{failed}"
    );
    assert_eq!(failed["domain"], "-", "{failed}");
    assert!(
        failed["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_lines_in_a_file_have_no_colours_and_name_the_partner() {
    let mut p = scripted_partner_with("lcsb-logs-human-", "", &[("NO_COLOR", None)]).await;
    partner_comes_and_goes(&mut p).await;
    let log = p.bridge.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in a log written to a file:\n{log}"
    );
    let connected = log
        .lines()
        .find(|l| l.contains("peer connected"))
        .unwrap_or_else(|| panic!("no peer connected line:\n{log}"));
    assert!(
        connected.contains(&format!("domain={PARTNER}")) && connected.contains(" conn="),
        "{connected}"
    );
}
