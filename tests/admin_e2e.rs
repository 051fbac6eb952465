//! The administration commands against the real `lcs-bridge run` binary (docs/operations.md
//! "Administration"):
//!
//! - `lcs-bridge admin` over the local socket, the test playing the component port and the
//!   partner `contoso.com`'s mutual-TLS edge (`lcs_test_support::e2e::scripted_partner`): the
//!   socket is private (0600); `partners` shows the configured partner and the partner's
//!   connection; `block contoso.com` says it is runtime only and the partner's next request is
//!   refused with 403; a `reload` keeps the block; `unblock` lifts it; `end-subscription` of
//!   a pair with none goes through the engines and says so; a bad command exits 1 with the
//!   reason;
//! - XEP-0050 over c2s on a real Prosody: an administrator (`[admin] jids`) logged in as an
//!   ordinary client sees the commands in disco#items and runs `partners`, `block` (form,
//!   then submit) and `reload`; another user sees no commands and gets `forbidden`.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use lcs_test_support::net::{self, Event, Writer};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_lcs-bridge");

fn admin(config: &std::path::Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(BIN)
            .arg("admin")
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap()
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An OPTIONS from the partner's edge.
fn options(branch: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:sip.xmpp.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=p1\r\nTo: <sip:sip.xmpp.test>\r\n\
         Call-ID: {branch}@contoso.com\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The partner opens connection `conn` and sends an OPTIONS on it: the status, or `None` when
/// the connection is refused or closed first. The connection stays open while `kept` holds
/// its writer.
async fn ask_options(
    p: &mut lcs_test_support::e2e::ScriptedPartner,
    conn: usize,
    kept: &mut Vec<Writer>,
) -> Option<u16> {
    let addr: SocketAddr = format!("127.0.0.1:{}", p.sip_port).parse().unwrap();
    if net::connect_sip(addr, p.tls.connector.clone(), conn, p.events_tx.clone())
        .await
        .is_err()
    {
        return None;
    }
    let writer: Writer = wait(&mut p.events, |e| match e {
        Event::SipUp(c, w) if *c == conn => Some(Some(w.clone())),
        Event::SipClosed(c, _) if *c == conn => Some(None),
        _ => None,
    })
    .await?;
    writer.send(options(&format!("b{conn}"))).ok()?;
    kept.push(writer);
    wait(&mut p.events, |e| match e {
        Event::Sip(c, m, _) if *c == conn => Some(m.status()),
        Event::SipClosed(c, _) if *c == conn => Some(None),
        _ => None,
    })
    .await
}

async fn wait<T>(
    events: &mut UnboundedReceiver<Event>,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = f(&e) {
                    return t;
                }
            }
            _ => panic!("the awaited event did not come"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_lists_blocks_reloads_and_unblocks_through_the_socket() {
    let mut p = lcs_test_support::e2e::scripted_partner("lcsb-admin-", "").await;
    let config = p.dir.path().join("lcs-bridge.toml");
    let socket = p.dir.path().join("store").join("admin.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is private");

    let mut kept = Vec::new();
    assert_eq!(ask_options(&mut p, 1 << 20, &mut kept).await, Some(200));
    let out = admin(&config, &["partners"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&out);
    assert!(listed.contains("partner contoso.com: allow"), "{listed}");
    assert!(
        listed.contains("inbound, certificate") && listed.contains("sip.contoso.com"),
        "{listed}"
    );

    let out = admin(&config, &["block", "Contoso.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("contoso.com blocked"), "{}", text(&out));
    assert!(
        text(&out).contains(
            "runtime only: add [[federation.partners]] domain = \"contoso.com\" policy = \"block\""
        ),
        "{}",
        text(&out)
    );
    let refused = ask_options(&mut p, (1 << 20) + 1, &mut kept).await;
    assert_eq!(refused, Some(403), "a blocked partner is refused");

    let out = admin(&config, &["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("runtime blocks kept: contoso.com"),
        "{}",
        text(&out)
    );
    assert_eq!(
        ask_options(&mut p, (1 << 20) + 2, &mut kept).await,
        refused,
        "the block survives the reload"
    );

    let out = admin(&config, &["unblock", "contoso.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ask_options(&mut p, (1 << 20) + 3, &mut kept).await,
        Some(200)
    );

    let out = admin(&config, &["block", "not a domain"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not a domain name"),
        "{}",
        text(&out)
    );
    // Carried out by the engines (socket → runner → bridge → presence engine → back).
    let out = admin(
        &config,
        &["end-subscription", "alice@xmpp.test", "sip:bob@contoso.com"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no subscription between alice@xmpp.test and sip:bob@contoso.com"),
        "{}",
        text(&out)
    );
    let out = admin(&config, &["shutdown"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unknown command"), "{}", text(&out));
    drop(kept);
}

/// The next stanza XMPP client `client` receives whose id is `id`.
async fn reply_to(events: &mut UnboundedReceiver<Event>, client: usize, id: &str) -> String {
    let needle = format!("id='{id}'");
    wait(events, |e| match e {
        Event::Client(c, s, _) if *c == client => {
            let s = String::from_utf8_lossy(s).replace('"', "'");
            s.contains(&needle).then_some(s)
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_runs_ad_hoc_commands_over_c2s_on_prosody() {
    use lcs_test_support::config::BridgeConfig;
    use lcs_test_support::e2e::ALICE_PASSWORD;
    use lcs_test_support::e2e::{Bridge, Mode};
    use lcs_test_support::{GATEWAY_COMPONENT, XMPP_DOMAIN, XmppServer as _};
    let Some(server) = lcs_test_support::Prosody::start() else {
        return;
    };
    server.register("boss", ALICE_PASSWORD);
    server.register("eve", ALICE_PASSWORD);
    let dir = tempfile::Builder::new()
        .prefix("lcsb-admin-c2s-")
        .tempdir()
        .unwrap();
    let pki = lcs_test_support::pki::Pki::new("admin test CA");
    lcs_test_support::pki::write_bridge_files(
        dir.path(),
        &pki,
        &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
    );
    let sip_port = lcs_test_support::free_port();
    let config = dir.path().join("lcs-bridge.toml");
    let extra = format!("\n[admin]\njids = [\"boss@{XMPP_DOMAIN}\"]\n");
    let toml = BridgeConfig {
        extra: &extra,
        ..BridgeConfig::new(
            dir.path(),
            Mode::Gateway,
            server.component_port(),
            sip_port,
            lcs_test_support::free_port(),
        )
    }
    .toml();
    std::fs::write(&config, toml).unwrap();
    let mut bridge = Bridge::start(&config, &dir.path().join("bridge.log"), sip_port);
    let deadline = std::time::Instant::now() + WAIT;
    tokio::task::block_in_place(|| bridge.wait_started(deadline));

    let c2s: SocketAddr = format!("127.0.0.1:{}", server.c2s_port()).parse().unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (boss, _) = net::c2s_login(
        c2s,
        XMPP_DOMAIN,
        "boss",
        ALICE_PASSWORD,
        0,
        events_tx.clone(),
    )
    .await
    .unwrap();
    let (eve, _) = net::c2s_login(
        c2s,
        XMPP_DOMAIN,
        "eve",
        ALICE_PASSWORD,
        1,
        events_tx.clone(),
    )
    .await
    .unwrap();
    let ns = "http://jabber.org/protocol/commands";
    let items = format!(
        "<iq type='get' to='{GATEWAY_COMPONENT}' id='i1'><query xmlns='http://jabber.org/protocol/disco#items' node='{ns}'/></iq>"
    );

    // Eve: no commands, and forbidden.
    eve.send(items.clone().into_bytes()).unwrap();
    let listed = reply_to(&mut events, 1, "i1").await;
    assert!(
        listed.contains("type='result'") && !listed.contains("<item"),
        "{listed}"
    );
    eve.send(
        format!("<iq type='set' to='{GATEWAY_COMPONENT}' id='e1'><command xmlns='{ns}' node='partners' action='execute'/></iq>")
            .into_bytes(),
    )
    .unwrap();
    let refused = reply_to(&mut events, 1, "e1").await;
    assert!(refused.contains("<forbidden"), "{refused}");

    // The administrator: the list, partners at once, block through its form.
    boss.send(items.into_bytes()).unwrap();
    let listed = reply_to(&mut events, 0, "i1").await;
    for node in [
        "partners",
        "subscriptions",
        "block",
        "unblock",
        "end-subscription",
        "reload",
    ] {
        assert!(
            listed.contains(&format!("node='{node}'")),
            "{node}: {listed}"
        );
    }
    boss.send(
        format!("<iq type='set' to='{GATEWAY_COMPONENT}' id='p1'><command xmlns='{ns}' node='partners' action='execute'/></iq>")
            .into_bytes(),
    )
    .unwrap();
    let done = reply_to(&mut events, 0, "p1").await;
    assert!(
        done.contains("status='completed'") && done.contains("partner contoso.com: allow"),
        "{done}"
    );
    boss.send(
        format!("<iq type='set' to='{GATEWAY_COMPONENT}' id='b1'><command xmlns='{ns}' node='block' action='execute'/></iq>")
            .into_bytes(),
    )
    .unwrap();
    let form = reply_to(&mut events, 0, "b1").await;
    assert!(
        form.contains("status='executing'") && form.contains("var='domain'"),
        "{form}"
    );
    let at = form.find("sessionid='").unwrap() + "sessionid='".len();
    let sid = form[at..].split('\'').next().unwrap().to_owned();
    boss.send(
        format!(
            "<iq type='set' to='{GATEWAY_COMPONENT}' id='b2'><command xmlns='{ns}' node='block' sessionid='{sid}' action='complete'>\
             <x xmlns='jabber:x:data' type='submit'><field var='domain'><value>fabrikam.com</value></field></x></command></iq>"
        )
        .into_bytes(),
    )
    .unwrap();
    let done = reply_to(&mut events, 0, "b2").await;
    assert!(
        done.contains("status='completed'") && done.contains("fabrikam.com blocked"),
        "{done}"
    );
    assert!(done.contains("runtime only"), "{done}");
    // The same block seen through the socket.
    let out = admin(&config, &["partners"]);
    assert!(
        text(&out).contains("blocked at runtime: fabrikam.com"),
        "{}",
        text(&out)
    );
    // A reload from the client: applied, the block kept.
    boss.send(
        format!("<iq type='set' to='{GATEWAY_COMPONENT}' id='r1'><command xmlns='{ns}' node='reload' action='execute'/></iq>")
            .into_bytes(),
    )
    .unwrap();
    let done = reply_to(&mut events, 0, "r1").await;
    assert!(
        done.contains("status='completed'") && done.contains("configuration reloaded"),
        "{done}"
    );
    assert!(done.contains("runtime blocks kept: fabrikam.com"), "{done}");
}
