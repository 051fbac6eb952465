//! The edge against a real third-party SIP stack: Debian's SIPp over TCP behind socat's mutual
//! TLS (lcs_test_support::sipp, scenarios in tests/sipp). The test plays the layer above the edge (it reads [`EdgeEvent`]s and uses
//! [`EdgeHandle`]), SIPp plays the LCS peer at `contoso.com`.
//!
//! - OPTIONS and a refusal: SIPp sends OPTIONS and expects the profile's 200 with
//!   `m=message 5060 sip/tcp *`; then a MESSAGE whose From domain the peer certificate does not
//!   cover, and expects 403.
//! - SIPp calls the edge: SIPp (UAC) → socat `TCP-LISTEN` → `OPENSSL` with the peer's client
//!   certificate → the edge. INVITE with the session-mode IM offer, the test answers 200 with
//!   the SDP answer and a `transport=tls` Contact (SIPp checks both), SIPp ACKs and then sends
//!   BYE; the test sees INVITE, the ACK (as [`TxEvent::Ack`]) and BYE, in that order, on one
//!   connection, and checks the ACK and BYE against its [`Dialog`].
//! - The edge calls SIPp: the edge opens a mutual-TLS connection to socat `OPENSSL-LISTEN`
//!   (→ SIPp UAS over TCP) through a static partner route `127.0.0.1:port` for `contoso.com`
//!   (the peer certificate carries the IP SAN 127.0.0.1, the name dialled); INVITE (SIPp checks
//!   the `Ms-asserted-verification-level: ms-source-verification-level=verified` the edge
//!   added), 200, then the ACK and BYE built by the UAC [`Dialog`] on the connection the 200
//!   came in on ([`TxEvent::Response`]'s `conn`). Once SIPp has quit and the connection is
//!   gone, a request routed to that connection is [`Undeliverable::ConnectionGone`].

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lcs_bridge::config::{Edge, Partner, PartnerPolicy};
use lcs_bridge::edge::core::{CoreSettings, Route, Undeliverable};
use lcs_bridge::edge::event::EdgeEvent;
use lcs_bridge::edge::server::{EdgeEvents, EdgeHandle, EdgeSettings};
use lcs_bridge::edge::tls::TlsConfigs;
use lcs_bridge::sip::builder::RequestSpec;
use lcs_bridge::sip::dialog::Dialog;
use lcs_bridge::sip::message::{Limits, Message, Method};
use lcs_bridge::sip::sdp::Sdp;
use lcs_bridge::sip::transaction::{ConnId, TxEvent, TxId};
use lcs_test_support::pki::Pki;
use lcs_test_support::sipp::{
    Killed, Run, finish_sipp, peers, socat_from_edge, socat_to_edge, spawn_sipp, wait_listening,
    write_peer_files,
};

/// How long SIPp may run (its `-timeout`), and how long the test side waits for the peer.
const SIPP_TIMEOUT_SECS: u64 = 15;

// ------------------------------------------------------------------ set-up helpers

/// SIPp with scenario tests/sipp/`scenario`.xml, its logs `dir/<name>.*`, and `-timeout`
/// [`SIPP_TIMEOUT_SECS`].
fn start_sipp(
    sipp: &Path,
    dir: &Path,
    (name, scenario): (&str, &str),
    port: u16,
    remote: Option<u16>,
) -> Killed {
    let timeout = Duration::from_secs(SIPP_TIMEOUT_SECS);
    let run = Run {
        name,
        scenario,
        keys: &[],
    };
    spawn_sipp(sipp, dir, &run, port, remote, timeout, &[])
}

/// Waits a little longer than SIPp's own timeout for it to exit.
fn finish(child: &mut Killed, dir: &Path, name: &str) -> (Option<ExitStatus>, String) {
    finish_sipp(child, dir, name, Duration::from_secs(SIPP_TIMEOUT_SECS + 3))
}

/// The edge on an ephemeral 127.0.0.1 port with a serverAuth + clientAuth certificate for
/// `sip.example.org` (and 127.0.0.1, which socat's client checks as the name it dialled).
fn edge_settings(pki: &Pki, core: CoreSettings) -> EdgeSettings {
    let (chain, key) = pki.leaf(&["sip.example.org", "localhost", "127.0.0.1"], false);
    EdgeSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        TlsConfigs::from_der(chain, key, vec![pki.ca.clone()]).unwrap(),
        core,
        Limits::default(),
    )
}

/// The next edge event, or an error after `deadline`.
async fn next_event(
    events: &mut EdgeEvents,
    deadline: tokio::time::Instant,
) -> Result<EdgeEvent, String> {
    match tokio::time::timeout_at(deadline, events.recv()).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err("edge stopped".into()),
        Err(_) => Err("no edge event in time".into()),
    }
}

fn test_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(SIPP_TIMEOUT_SECS)
}

// ------------------------------------------------------------------ tests

#[test]
fn sipp_behind_socat_gets_options_and_403() {
    let Some((sipp, socat)) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test federation CA");
    write_peer_files(dir.path(), &pki, &["sip.contoso.com", "contoso.com"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = edge_settings(&pki, lcs_test_support::edge::core_settings());
    let edge = runtime.block_on(lcs_test_support::edge::start_answering(settings));

    let socat_port = lcs_test_support::free_port();
    let _socat = socat_to_edge(&socat, dir.path(), socat_port, edge.local_addr.port());
    let mut uac = start_sipp(
        &sipp,
        dir.path(),
        ("options", "edge_options"),
        lcs_test_support::free_port(),
        Some(socat_port),
    );
    let (status, logs) = finish(&mut uac, dir.path(), "options");
    assert!(
        status.is_some_and(|s| s.success()),
        "sipp failed ({status:?}):\n{logs}"
    );
    edge.shutdown();
}

/// The layer above for an incoming call: answers the INVITE with 200 (SDP answer, TLS Contact,
/// To tag), takes the ACK and answers the BYE; returns what it saw, in order, with the
/// connection of each.
async fn answer_one_call(
    edge: Arc<EdgeHandle>,
    mut events: EdgeEvents,
) -> Result<Vec<(&'static str, ConnId)>, String> {
    let deadline = test_deadline();
    let mut seen = Vec::new();
    let mut dialog: Option<Dialog> = None;
    loop {
        match next_event(&mut events, deadline).await? {
            EdgeEvent::Request {
                tx, conn, request, ..
            } => match request.method() {
                Some(Method::Invite) => {
                    seen.push(("INVITE", conn));
                    let offer = Sdp::parse(request.body()).map_err(|e| format!("offer: {e}"))?;
                    let answer = Sdp::message_answer(&offer, "sip.example.org", 1)
                        .ok_or("offer without a message m-line")?;
                    let tag = "edge-uas-1";
                    let mut ok = Message::response_to(&request, 200, None, Some(tag));
                    ok.push_header("Contact", "<sip:alice@sip.example.org;transport=tls>");
                    ok.set_body(Some("application/sdp"), answer.to_string().into_bytes());
                    let mut d = Dialog::from_uas(&request, tag, 1, conn, Instant::now())
                        .map_err(|e| format!("UAS dialog: {e}"))?;
                    edge.respond(tx, ok).await;
                    d.confirm();
                    dialog = Some(d);
                }
                Some(Method::Bye) => {
                    seen.push(("BYE", conn));
                    let d = dialog.as_mut().ok_or("BYE before any INVITE")?;
                    let checked = d.accept_request(&request);
                    let status = if checked.is_ok() { 200 } else { 481 };
                    edge.respond(tx, Message::response_to(&request, status, None, None))
                        .await;
                    checked.map_err(|e| format!("BYE not in the dialog: {e}"))?;
                    return Ok(seen);
                }
                other => {
                    edge.respond(tx, Message::response_to(&request, 501, None, Some("x")))
                        .await;
                    return Err(format!("unexpected request {other:?} after {seen:?}"));
                }
            },
            EdgeEvent::Transaction(TxEvent::Ack { conn, request }) => {
                seen.push(("ACK", conn));
                dialog
                    .as_mut()
                    .ok_or("ACK before any INVITE")?
                    .accept_request(&request)
                    .map_err(|e| format!("ACK not in the dialog: {e}"))?;
            }
            EdgeEvent::ConnectionLost { conn } => {
                return Err(format!("connection {conn} lost after {seen:?}"));
            }
            _ => {}
        }
    }
}

#[test]
fn sipp_calls_the_edge_invite_ack_bye() {
    let Some((sipp, socat)) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test federation CA");
    write_peer_files(dir.path(), &pki, &["sip.contoso.com", "contoso.com"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = edge_settings(&pki, lcs_test_support::edge::core_settings());
    let (edge, events) = runtime.block_on(lcs_test_support::edge::start_edge(settings));
    let layer = runtime.spawn(answer_one_call(edge.clone(), events));

    let socat_port = lcs_test_support::free_port();
    let _socat = socat_to_edge(&socat, dir.path(), socat_port, edge.local_addr.port());
    let mut uac = start_sipp(
        &sipp,
        dir.path(),
        ("uac", "edge_uac_call"),
        lcs_test_support::free_port(),
        Some(socat_port),
    );
    let (status, logs) = finish(&mut uac, dir.path(), "uac");
    let seen = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(3), layer).await })
        .map_err(|_| "the test's layer did not finish".to_string())
        .and_then(|joined| joined.map_err(|e| e.to_string()))
        .and_then(|r| r);
    assert!(
        status.is_some_and(|s| s.success()),
        "sipp failed ({status:?}); edge side: {seen:?}\n{logs}"
    );
    let seen = seen.unwrap_or_else(|e| panic!("edge side: {e}\n{logs}"));
    let conn = seen[0].1;
    assert_eq!(seen, [("INVITE", conn), ("ACK", conn), ("BYE", conn)]);
    edge.shutdown();
}

/// The final response to client transaction `tx` (skipping provisional ones and other events),
/// with the connection it came in on.
async fn final_response(
    events: &mut EdgeEvents,
    tx: TxId,
    deadline: tokio::time::Instant,
) -> Result<(ConnId, Message), String> {
    loop {
        match next_event(events, deadline).await? {
            EdgeEvent::Transaction(TxEvent::Response {
                tx: t,
                conn,
                response,
                is_final: true,
            }) if t == tx => return Ok((conn, response)),
            EdgeEvent::Transaction(TxEvent::Timeout { tx: t })
            | EdgeEvent::Transaction(TxEvent::TransportError { tx: t })
                if t == tx =>
            {
                return Err(format!(
                    "no final response to {tx:?}: timeout or transport error"
                ));
            }
            EdgeEvent::Undeliverable { tx: t, why } if t == tx => {
                return Err(format!("{tx:?} undeliverable: {why}"));
            }
            _ => {}
        }
    }
}

/// The layer above placing a call to bob@contoso.com: INVITE by the domain's static route, the
/// dialog from the 200, ACK and BYE on the dialog's connection. Returns that connection.
async fn call_bob(edge: &EdgeHandle, events: &mut EdgeEvents) -> Result<ConnId, String> {
    let deadline = test_deadline();
    let contact = "sip:alice@sip.example.org;transport=tls";
    let mut invite = RequestSpec {
        method: Method::Invite,
        request_uri: "sip:bob@contoso.com",
        via_sent_by: "sip.example.org:5061",
        branch: "z9hG4bK-edge-invite-1",
        from_display: None,
        from_uri: "sip:alice@example.org",
        from_tag: "alice-1",
        to_display: None,
        to_uri: "sip:bob@contoso.com",
        to_tag: None,
        call_id: "edge-call-1@sip.example.org",
        cseq: 1,
        contact: Some(contact),
        route: &[],
    }
    .build();
    invite.set_body(
        Some("application/sdp"),
        Sdp::message_offer("sip.example.org", 1)
            .to_string()
            .into_bytes(),
    );
    let tx = edge
        .send_request(invite.clone(), Route::Domain("contoso.com".into()))
        .await;
    let (conn, ok) = final_response(events, tx, deadline).await?;
    if ok.status() != Some(200) {
        return Err(format!("INVITE answered {:?}", ok.status()));
    }
    let answer = Sdp::parse(ok.body()).map_err(|e| format!("answer: {e}"))?;
    if !answer.has_message_session() {
        return Err(format!("answer without a message session: {answer}"));
    }
    let mut dialog = Dialog::from_uac(&invite, &ok, conn, Instant::now())
        .map_err(|e| format!("UAC dialog: {e}"))?;
    let ack = dialog
        .next_request(
            Method::Ack,
            "sip.example.org:5061",
            "z9hG4bK-edge-ack-1",
            Some(contact),
        )
        .map_err(|e| e.to_string())?;
    edge.send_ack(dialog.conn, ack).await;
    let bye = dialog
        .next_request(
            Method::Bye,
            "sip.example.org:5061",
            "z9hG4bK-edge-bye-1",
            None,
        )
        .map_err(|e| e.to_string())?;
    let tx = edge.send_request(bye, Route::Connection(dialog.conn)).await;
    let (bye_conn, ok) = final_response(events, tx, deadline).await?;
    if ok.status() != Some(200) || bye_conn != conn {
        return Err(format!(
            "BYE answered {:?} on connection {bye_conn} (dialog on {conn})",
            ok.status()
        ));
    }
    Ok(conn)
}

/// After the dialog's connection closed: a request routed to it is not rerouted.
async fn connection_gone(
    edge: &EdgeHandle,
    events: &mut EdgeEvents,
    conn: ConnId,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let EdgeEvent::ConnectionLost { conn: c } = next_event(events, deadline).await? {
            if c == conn {
                break;
            }
        }
    }
    let message = RequestSpec {
        method: Method::Message,
        request_uri: "sip:bob@contoso.com",
        via_sent_by: "sip.example.org:5061",
        branch: "z9hG4bK-edge-message-1",
        from_display: None,
        from_uri: "sip:alice@example.org",
        from_tag: "alice-2",
        to_display: None,
        to_uri: "sip:bob@contoso.com",
        to_tag: None,
        call_id: "edge-call-2@sip.example.org",
        cseq: 1,
        contact: None,
        route: &[],
    }
    .build();
    let tx = edge.send_request(message, Route::Connection(conn)).await;
    loop {
        match next_event(events, deadline).await? {
            EdgeEvent::Undeliverable { tx: t, why } if t == tx => {
                return if why == (Undeliverable::ConnectionGone { conn }) {
                    Ok(())
                } else {
                    Err(format!("undeliverable for another reason: {why:?}"))
                };
            }
            EdgeEvent::Transaction(e) => return Err(format!("request went out: {e:?}")),
            _ => {}
        }
    }
}

#[test]
fn edge_calls_sipp_invite_ack_bye() {
    let Some((sipp, socat)) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test federation CA");
    // The edge dials the IP literal of the static route: the certificate must name it.
    write_peer_files(
        dir.path(),
        &pki,
        &["sip.contoso.com", "contoso.com", "127.0.0.1"],
    );

    let sipp_port = lcs_test_support::free_port();
    let tls_port = lcs_test_support::free_port();
    let mut uas = start_sipp(&sipp, dir.path(), ("uas", "edge_uas_call"), sipp_port, None);
    wait_listening(&mut uas, sipp_port, "sipp");
    let _socat = socat_from_edge(&socat, dir.path(), tls_port, sipp_port);

    let mut core = lcs_test_support::edge::core_settings();
    core.federation.partners.push(Partner {
        domain: "contoso.com".into(),
        policy: PartnerPolicy::Allow,
        edge: Some(Edge {
            host: "127.0.0.1".into(),
            port: tls_port,
        }),
        verification_level: None,
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (edge, mut events) = runtime.block_on(lcs_test_support::edge::start_edge(edge_settings(
        &pki, core,
    )));
    let called = runtime.block_on(call_bob(&edge, &mut events));
    let (status, logs) = finish(&mut uas, dir.path(), "uas");
    let conn = called.unwrap_or_else(|e| panic!("edge side: {e}\nsipp {status:?}\n{logs}"));
    assert!(
        status.is_some_and(|s| s.success()),
        "sipp failed ({status:?}):\n{logs}"
    );
    runtime
        .block_on(connection_gone(&edge, &mut events, conn))
        .unwrap();
    edge.shutdown();
}
