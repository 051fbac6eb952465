//! Microsoft conformance, instant messaging: what Lync / Skype for Business clients and servers
//! do in a federated IM session, against the real `lcs-bridge run` binary joined to a real
//! Prosody. The test is the partner's mutual-TLS edge `contoso.com` (`lcs_test_support::net`):
//! it dials the bridge's SIP port and listens for the bridge's connections; alice is logged in
//! to Prosody over c2s. Each case quotes the document or client behaviour it reproduces and
//! asserts the exact answer (docs/microsoft.md "Instant messaging details").

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::{net, pki};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lcs_bridge::sip::message::Message;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use lcs_test_support::config::BridgeConfig;
use lcs_test_support::e2e::{ALICE_PASSWORD, Bridge, Mode};
use lcs_test_support::{GATEWAY_COMPONENT, Prosody, XMPP_DOMAIN, XmppServer};
use net::{Event, Tls, Writer};
use pki::{Pki, write_bridge_files};

const LCS_DOMAIN: &str = "contoso.com";
/// The test's connection to the bridge (the bridge's own connections to the partner
/// listener count from 0).
const EDGE_CONN: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// The JID of LCS user `name` (gateway mode, XEP-0106).
fn lcs_jid(name: &str) -> String {
    format!("{name}\\40{LCS_DOMAIN}@{GATEWAY_COMPONENT}")
}

struct World {
    server: Prosody,
    _dir: tempfile::TempDir,
    bridge: Bridge,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    tls: Tls,
    sip_port: u16,
    sip: HashMap<usize, Writer>,
    alice: Writer,
    /// What the waits so far did not take, in order.
    backlog: Vec<Event>,
}

impl World {
    /// Prosody with alice, the bridge, the edge connected, alice logged in and available.
    /// `None` when Prosody is missing (and peers are not required).
    async fn start() -> Option<World> {
        let server = Prosody::start()?;
        server.register("alice", ALICE_PASSWORD);
        let dir = tempfile::Builder::new()
            .prefix("lcsb-ms-im-")
            .tempdir()
            .unwrap();
        let pki = Pki::new("Microsoft IM test CA");
        write_bridge_files(
            dir.path(),
            &pki,
            &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"],
        );
        let edge_leaf = pki.leaf(&["sip.contoso.com", LCS_DOMAIN, "127.0.0.1"], false);
        let tls = Tls::new(&edge_leaf, &pki.ca);
        let (partner_port, events_tx, events) = net::sip_partner(tls.acceptor.clone()).await;
        let sip_port = lcs_test_support::free_port();
        let config = dir.path().join("lcs-bridge.toml");
        let toml = BridgeConfig {
            log_level: "info,lcs_bridge=debug",
            ..BridgeConfig::new(
                dir.path(),
                Mode::Gateway,
                server.component_port(),
                sip_port,
                partner_port,
            )
        }
        .toml();
        std::fs::write(&config, toml).unwrap();
        let mut bridge = Bridge::start(&config, &dir.path().join("bridge.log"), sip_port);
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| bridge.wait_started(deadline));
        let c2s: SocketAddr = format!("127.0.0.1:{}", server.c2s_port()).parse().unwrap();
        let (alice, _jid) = net::c2s_login(
            c2s,
            XMPP_DOMAIN,
            "alice",
            ALICE_PASSWORD,
            0,
            events_tx.clone(),
        )
        .await
        .unwrap();
        alice
            .send(
                b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/>"
                    .to_vec(),
            )
            .unwrap();
        let mut world = World {
            server,
            _dir: dir,
            bridge,
            events,
            events_tx,
            tls,
            sip_port,
            sip: HashMap::new(),
            alice,
            backlog: Vec::new(),
        };
        let addr: SocketAddr = format!("127.0.0.1:{}", world.sip_port).parse().unwrap();
        net::connect_sip(
            addr,
            world.tls.connector.clone(),
            EDGE_CONN,
            world.events_tx.clone(),
        )
        .await
        .unwrap();
        world
            .wait(|_, e| matches!(e, Event::SipUp(EDGE_CONN, _)).then_some(()))
            .await;
        Some(world)
    }

    /// Panics with what was seen and the end of the bridge's log.
    fn fail(&self, why: &str) -> ! {
        let log = self.bridge.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let prosody =
            std::fs::read_to_string(self.server.dir().join("prosody.log")).unwrap_or_default();
        let prosody: Vec<&str> = prosody.lines().rev().take(20).collect();
        let prosody: Vec<&str> = prosody.into_iter().rev().collect();
        panic!(
            "{why}\n--- seen ---\n{}\n--- bridge log (end) ---\n{}\n--- Prosody log (end) ---\n{}",
            self.backlog
                .iter()
                .rev()
                .take(40)
                .rev()
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n"),
            tail.join("\n"),
            prosody.join("\n")
        );
    }

    /// Handles events until `f` picks one (SIP connections are registered on the way).
    async fn wait<T>(&mut self, mut f: impl FnMut(&mut Self, &Event) -> Option<T>) -> T {
        self.wait_for(WAIT, &mut f)
            .await
            .unwrap_or_else(|| self.fail("nothing awaited came in time"))
    }

    /// Like [`World::wait`], but `None` after `limit`.
    async fn wait_for<T>(
        &mut self,
        limit: Duration,
        f: &mut impl FnMut(&mut Self, &Event) -> Option<T>,
    ) -> Option<T> {
        for i in 0..self.backlog.len() {
            let ev = std::mem::replace(&mut self.backlog[i], Event::SipClosed(0, String::new()));
            if let Some(t) = f(self, &ev) {
                self.backlog.remove(i);
                return Some(t);
            }
            self.backlog[i] = ev;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if let Event::SipUp(conn, w) = &ev {
                self.sip.insert(*conn, w.clone());
            }
            if let Some(t) = f(self, &ev) {
                return Some(t);
            }
            self.backlog.push(ev);
        }
    }

    fn send_sip(&self, conn: usize, bytes: impl Into<Vec<u8>>) {
        self.sip[&conn].send(bytes.into()).unwrap();
    }

    fn send_xmpp(&self, xml: &str) {
        self.alice.send(xml.as_bytes().to_vec()).unwrap();
    }

    /// Alice sends `text` to joe.
    fn alice_says(&self, id: &str, text: &str) {
        self.send_xmpp(&format!(
            "<message to='{}' type='chat' id='{id}'><body>{text}</body></message>",
            lcs_jid("joe")
        ));
    }

    /// The next final SIP response on the edge's connection whose Call-ID is `call_id`.
    async fn response(&mut self, call_id: &str) -> Message {
        self.wait(|_, e| match e {
            Event::Sip(EDGE_CONN, m, _)
                if !m.is_request()
                    && m.call_id().ok() == Some(call_id)
                    && m.status().is_some_and(|s| s >= 200) =>
            {
                Some(m.clone())
            }
            _ => None,
        })
        .await
    }

    /// The next request the bridge sends (on any connection) with this method.
    async fn request(&mut self, method: &str) -> (usize, Message) {
        self.wait(|_, e| match e {
            Event::Sip(conn, m, _) if m.method().is_some_and(|x| x.as_str() == method) => {
                Some((*conn, m.clone()))
            }
            _ => None,
        })
        .await
    }

    /// The next stanza to alice containing every one of `needles`.
    async fn stanza(&mut self, needles: &[&str]) -> String {
        self.wait(|_, e| match e {
            Event::Client(0, s, _) => {
                let s = String::from_utf8_lossy(s).into_owned();
                needles.iter().all(|n| s.contains(n)).then_some(s)
            }
            _ => None,
        })
        .await
    }

    /// How many stanzas to alice seen so far (taken or not) contain `needle`, after waiting
    /// `settle` for more.
    async fn count_stanzas(&mut self, needle: &str, settle: Duration) -> usize {
        let _: Option<()> = self.wait_for(settle, &mut |_, _| None).await;
        self.backlog
            .iter()
            .filter(|e| matches!(e, Event::Client(0, s, _) if String::from_utf8_lossy(s).contains(needle)))
            .count()
    }

    /// The test closes SIP connection `conn` (its writer dropped: the connection's task shuts
    /// the TLS stream down).
    fn drop_sip(&mut self, conn: usize) {
        self.sip.remove(&conn);
        self.backlog
            .retain(|e| !matches!(e, Event::SipUp(c, _) if *c == conn));
    }

    /// Answers `request` on `conn` (a To tag, the edge's Contact), with `extra` header lines.
    fn answer(&self, conn: usize, request: &Message, status: u16, extra: &[(&str, &str)]) {
        let mut r = Message::response_to(request, status, None, Some("edge"));
        r.push_header("Contact", "<sip:joe@127.0.0.1;transport=tls>");
        for (name, value) in extra {
            r.push_header(name, value);
        }
        if request.method().is_some_and(|m| m.as_str() == "INVITE") && status == 200 {
            r.set_body(Some("application/sdp"), SDP.as_bytes().to_vec());
        }
        self.send_sip(conn, r.to_bytes());
    }

    /// Joe's Lync client opens a session (`call_id`) with alice; `ms_text_format` is the
    /// first message header's value, if any. Returns the bridge's final answer (ACKed when
    /// 2xx).
    async fn lync_invites(&mut self, call_id: &str, ms_text_format: Option<&str>) -> Message {
        self.send_sip(EDGE_CONN, lync_invite(call_id, ms_text_format));
        let r = self.response(call_id).await;
        if r.status() == Some(200) {
            let ack = format!(
                "ACK sip:alice@sip.xmpp.test;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKack{call_id}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                r.header("From").unwrap(),
                r.header("To").unwrap(),
            );
            self.send_sip(EDGE_CONN, ack);
        }
        r
    }

    /// The bridge opens a session with joe for alice's message `text`: the INVITE is answered
    /// 200 on its connection, the MESSAGE too. Returns (connection, INVITE, MESSAGE).
    async fn alice_opens_session(&mut self, id: &str, text: &str) -> (usize, Message, Message) {
        self.alice_says(id, text);
        let (conn, invite) = self.request("INVITE").await;
        self.answer(conn, &invite, 200, &[]);
        let (mconn, message) = self.request("MESSAGE").await;
        assert_eq!(mconn, conn, "in the dialog's connection");
        assert_eq!(String::from_utf8_lossy(message.body()), text);
        self.answer(conn, &message, 200, &[]);
        (conn, invite, message)
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Sip(conn, m, _) => format!(
            "sip {conn}: {} {}",
            m.method()
                .map_or_else(|| m.status().unwrap_or(0).to_string(), |x| x.to_string()),
            m.call_id().unwrap_or_default()
        ),
        Event::Client(i, s, _) => format!("client {i}: {}", String::from_utf8_lossy(s)),
        Event::SipClosed(c, why) => format!("sip {c} closed: {why}"),
        Event::ClientClosed(c, why) => format!("client {c} closed: {why}"),
        _ => "other".into(),
    }
}

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\na=accept-types:text/plain multipart/alternative image/gif text/rtf text/html application/x-ms-ink application/ms-imdn+xml text/x-msmsgsinvite\r\n";

/// An INVITE as a Lync 2013 client sends it through its edge (the headers of
/// tests/golden/sip/lcs_invite_im.sip, addressed to alice), with `ms-text-format` if given.
fn lync_invite(call_id: &str, ms_text_format: Option<&str>) -> Vec<u8> {
    let first = ms_text_format
        .map(|v| format!("ms-text-format: {v}\r\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:alice@{XMPP_DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{call_id};branched=FALSE;ms-received-port=5061;ms-received-cid=2B00\r\n\
         Max-Forwards: 68\r\n\
         From: \"Joe at Contoso\" <sip:joe@{LCS_DOMAIN}>;tag=c8f1e2d3a4;epid=ab12cd34ef\r\n\
         To: <sip:alice@{XMPP_DOMAIN}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:joe@127.0.0.1;transport=tls>;proxy=replace\r\n\
         User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)\r\n\
         Supported: ms-dialog-route-set-update\r\n\
         Ms-Conversation-ID: AdHxZ3+0m1o2p3q4r5s6t7u8v9w0x==\r\n\
         {first}\
         Supported: timer\r\n\
         Supported: ms-sender\r\n\
         Supported: ms-conf-invite\r\n\
         Ms-Keep-Alive: UAC;hop-hop=yes\r\n\
         Allow: INVITE, BYE, ACK, CANCEL, INFO, UPDATE, REFER, NOTIFY, BENOTIFY, OPTIONS\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
    .into_bytes()
}

/// A request from joe in the session the 200 `ok` made (`content_type`, `body`).
fn lync_in_dialog(
    ok: &Message,
    method: &str,
    cseq: u32,
    content_type: &str,
    body: &str,
) -> Vec<u8> {
    let ct = if content_type.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\n")
    };
    format!(
        "{method} sip:alice@sip.xmpp.test;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKm{cseq}{}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        ok.call_id().unwrap(),
        ok.header("From").unwrap(),
        ok.header("To").unwrap(),
        ok.header("Call-ID").unwrap(),
        body.len()
    )
    .into_bytes()
}

/// The values of every `Supported` line.
fn supported(m: &Message) -> Vec<String> {
    m.header_all("Supported").map(str::to_owned).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The first message of a conversation rides in the INVITE's `ms-text-format` header (the
/// Lync form of tests/golden/sip/lcs_invite_im.sip: `text/plain; charset=UTF-8;msgr=…;
/// ms-body=<base64>`). pidgin-sipe `sipe-incoming.c` `process_incoming_invite` shows it and
/// adds `Supported: ms-text-format` ("accepts received message"); its sender side,
/// `sipe-im.c` `process_invite_response`, drops its queued copy only when the 200 lists the
/// tag and sends it as a MESSAGE otherwise. So: taken → delivered once and said in the 200;
/// absent or unreadable → not said, and the MESSAGE that follows is delivered once.
#[test]
fn ms_text_format_is_taken_exactly_when_the_200_says_so() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        // 1. Taken: "Hello from Lync!" once, `Supported: ms-text-format` in the 200.
        let value = "text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkAOwAgAEUARgA9ADsAIABDAE8APQAwADsAIABDAFMAPQAwADsAIABQAEYAPQAwAA0ACgANAAoADQA;ms-body=SGVsbG8gZnJvbSBMeW5jIQ==";
        let ok = w.lync_invites("mstf-taken", Some(value)).await;
        assert_eq!(ok.status(), Some(200), "{ok}");
        assert_eq!(supported(&ok), ["ms-text-format"], "{ok}");
        let s = w.stanza(&["<body>Hello from Lync!</body>"]).await;
        assert!(s.contains(">Joe at Contoso</nick>"), "{s}");
        // A later message in the session, then no second copy of the first.
        w.send_sip(EDGE_CONN, lync_in_dialog(&ok, "MESSAGE", 2, "text/plain; charset=UTF-8", "next"));
        assert_eq!(w.response("mstf-taken").await.status(), Some(200));
        w.stanza(&["<body>next</body>"]).await;
        assert_eq!(
            w.count_stanzas("Hello from Lync!", Duration::from_millis(500)).await,
            0,
            "delivered once"
        );

        // 2. No header; 3. bad base64; 4. a type the bridge does not read (text/rtf): not
        //    said, nothing delivered from the INVITE; the client's MESSAGE is delivered once.
        for (call, value, text) in [
            ("mstf-none", None, "resent one"),
            ("mstf-bad", Some("text/plain; charset=UTF-8;ms-body=%%not*base64"), "resent two"),
            ("mstf-rtf", Some("text/rtf; charset=UTF-8;ms-body=e1xydGYxIEhpfQ=="), "resent three"),
        ] {
            let ok = w.lync_invites(call, value).await;
            assert_eq!(ok.status(), Some(200), "{ok}");
            assert!(supported(&ok).is_empty(), "{call}: {ok}");
            w.send_sip(EDGE_CONN, lync_in_dialog(&ok, "MESSAGE", 2, "text/plain; charset=UTF-8", text));
            assert_eq!(w.response(call).await.status(), Some(200));
            w.stanza(&[&format!("<body>{text}</body>")]).await;
            assert_eq!(w.count_stanzas(text, Duration::from_millis(300)).await, 0, "{call}: once");
        }
        let bodies = w.count_stanzas("<body>", Duration::from_millis(300)).await;
        assert_eq!(bodies, 0, "nothing else reached alice");
    });
}

/// A file offer (`text/x-msmsgsinvite`, the MSN invitation format): pidgin-sipe sends it as
/// `sipe-ft.c` `sipe_ft_outgoing_init` writes it (Application-Name, Application-GUID,
/// Invitation-Command: INVITE, Invitation-Cookie, Application-File, Application-FileSize),
/// in a MESSAGE or in the INVITE's `ms-text-format`, and a recipient declines it with a
/// MESSAGE of the same type `Invitation-Command: CANCEL`, the cookie, `Cancel-Code: REJECT`
/// (`ft_request_denied`), which the sender shows as declined. The bridge transfers no files:
/// it answers 200, declines so, and tells alice in one chat message from joe. Delivery
/// notifications (`application/ms-imdn+xml`, which our SDP's `a=accept-types` does not list)
/// get 415 with `Accept` (RFC 3261 §21.4.13).
#[test]
fn a_file_offer_is_declined_in_the_clients_terms_and_told_to_the_xmpp_user() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        let offer = "Application-Name: File Transfer\r\nApplication-GUID: {5D3E02AB-6190-11d3-BBBB-00C04F795683}\r\nInvitation-Command: INVITE\r\nInvitation-Cookie: 28796\r\nApplication-File: Q3 report.pdf\r\nApplication-FileSize: 1572864\r\nConnectivity: N\r\nEncryption: R\r\n";
        let notice = "[Offered you the file \"Q3 report.pdf\" (1.5 MB). This gateway does not transfer files, so the offer was declined; ask for it another way (for example a link or e-mail).]";
        let decline = "Invitation-Command: CANCEL\r\nInvitation-Cookie: 28796\r\nCancel-Code: REJECT\r\n";

        // 1. In a MESSAGE of an open session.
        let ok = w.lync_invites("ft-msg", None).await;
        w.send_sip(
            EDGE_CONN,
            lync_in_dialog(&ok, "MESSAGE", 2, "text/x-msmsgsinvite; charset=UTF-8", offer),
        );
        assert_eq!(w.response("ft-msg").await.status(), Some(200));
        let s = w.stanza(&["Q3 report.pdf"]).await;
        let body = format!("<body>{}</body>", notice.replace('"', "&quot;"));
        assert!(s.contains(&body), "{s}");
        assert!(s.contains(&format!("from='{}", lcs_jid("joe"))), "{s}");
        let (conn, m) = w.request("MESSAGE").await;
        assert_eq!(conn, EDGE_CONN, "in the dialog's connection");
        assert_eq!(m.call_id().unwrap(), "ft-msg");
        assert_eq!(m.header("Content-Type"), Some("text/x-msmsgsinvite; charset=UTF-8"));
        assert_eq!(String::from_utf8_lossy(m.body()), decline);
        w.answer(conn, &m, 200, &[]);

        // 2. In the INVITE's ms-text-format: taken (Supported), declined, told.
        let b64 = base64::engine::general_purpose::STANDARD.encode(offer);
        let ok2 = w
            .lync_invites("ft-invite", Some(&format!("text/x-msmsgsinvite; charset=UTF-8;ms-body={b64}")))
            .await;
        assert_eq!(supported(&ok2), ["ms-text-format"], "{ok2}");
        let s = w.stanza(&["Q3 report.pdf", "<thread>ft-invite</thread>"]).await;
        let body = format!("<body>{}</body>", notice.replace('"', "&quot;"));
        assert!(s.contains(&body), "{s}");
        let (conn, m) = w.request("MESSAGE").await;
        assert_eq!((conn, m.call_id().unwrap()), (EDGE_CONN, "ft-invite"));
        assert_eq!(String::from_utf8_lossy(m.body()), decline);
        w.answer(conn, &m, 200, &[]);

        // 3. A delivery notification (in the second session: joe's new INVITE replaced the
        //    first): 415 with what the bridge reads.
        let imdn = "<?xml version=\"1.0\"?><imdn><message-id>1</message-id><recipient uri=\"sip:alice@xmpp.test\"><status>delivered</status></recipient></imdn>";
        w.send_sip(EDGE_CONN, lync_in_dialog(&ok2, "MESSAGE", 2, "application/ms-imdn+xml", imdn));
        let r = w.response("ft-invite").await;
        assert_eq!(r.status(), Some(415), "{r}");
        assert_eq!(
            r.header("Accept"),
            Some("text/plain, text/html, multipart/alternative, multipart/related, application/im-iscomposing+xml")
        );
        assert_eq!(w.count_stanzas("imdn", Duration::from_millis(300)).await, 0);
    });
}

/// A Lync 2010 (and later) client offers a file in an INVITE of its own: a `multipart/mixed`
/// body with the SDP of the file's media session and an `application/ms-filetransfer+xml`
/// part, `<request requestId><publishFile><fileInfo><id/><name/><size/>` (pidgin-sipe
/// `sipe-ft-lync.c` `append_publish_file_invite`; its receiving side,
/// `process_incoming_invite_ft_lync`, reads name, id and size from it). The bridge carries no
/// media: `488` with a `Warning` saying file transfer is not supported (RFC 3261 §20.43), no
/// session, and alice is told of the offer in one chat message from joe.
#[test]
fn a_lync_file_transfer_invite_is_refused_and_told_to_the_xmpp_user() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        let boundary = "----=_NextPart_000_001E_01D0";
        let publish = "<request xmlns=\"http://schemas.microsoft.com/rtc/2009/05/filetransfer\" requestId=\"1\"><publishFile><fileInfo><id>{6244F934-2EB1-443F-8E2C-48BA64AF463D}</id><name>budget &amp; plan.xlsx</name><size>20480</size></fileInfo></publishFile></request>";
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=data 20000 RTP/SAVP 127\r\na=rtpmap:127 x-data/90000\r\n";
        let body = format!(
            "--{boundary}\r\nContent-Type: application/sdp\r\nContent-Transfer-Encoding: 7bit\r\nContent-Disposition: session; handling=optional; ms-proxy-2007fallback\r\n\r\n{sdp}\r\n--{boundary}\r\nContent-Type: application/ms-filetransfer+xml\r\nContent-Transfer-Encoding: 7bit\r\nContent-Disposition: render; handling=optional\r\n\r\n{publish}\r\n--{boundary}--\r\n"
        );
        let invite = String::from_utf8(lync_invite("ft-lync", None)).unwrap();
        let head = invite.split("Content-Type: application/sdp").next().unwrap();
        let invite = format!(
            "{head}Content-Type: multipart/mixed;boundary=\"{boundary}\"\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        w.send_sip(EDGE_CONN, invite);
        let r = w.response("ft-lync").await;
        assert_eq!(r.status(), Some(488), "{r}");
        assert_eq!(
            r.header("Warning"),
            Some("399 sip.xmpp.test \"file transfer is not supported by this gateway\"")
        );
        let s = w.stanza(&["budget &amp; plan.xlsx"]).await;
        let notice = "[Offered you the file &quot;budget &amp; plan.xlsx&quot; (20.0 KB). This gateway does not transfer files, so the offer was declined; ask for it another way (for example a link or e-mail).]";
        assert!(s.contains(&format!("<body>{notice}</body>")), "{s}");
        assert!(s.contains(&format!("from='{}", lcs_jid("joe"))), "{s}");
        assert_eq!(w.count_stanzas("<body>", Duration::from_millis(300)).await, 0);
    });
}

/// The profile, "Header signature verification": Microsoft's edge signs dialog headers and
/// refuses a dialog older than 24 hours, so the bridge replaces its sessions before
/// `im.dialog_max_age_secs` (23 h) and ends the old dialog with BYE. A session stored by a
/// bridge that was stopped and finds it past that age when it starts again is ended so: BYE in
/// its stored dialog (to the partner's edge: its connection died with the old process), and
/// forgotten.
#[test]
fn a_stored_session_past_the_dialog_age_limit_is_ended_with_bye() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        let ok = w.lync_invites("aged", None).await;
        assert_eq!(ok.status(), Some(200), "{ok}");
        let dir = w._dir.path().to_owned();
        tokio::task::block_in_place(|| w.bridge.terminate(Instant::now() + WAIT));
        let path = lcs_bridge::store::sled_dir(&dir.join("store"));
        {
            use lcs_bridge::store::{SledStore, Store};
            let store = SledStore::open(&path).unwrap();
            let dialogs: Vec<_> = store.im_dialogs().map(Result::unwrap).collect();
            assert_eq!(dialogs.len(), 1, "the session was stored");
            for mut d in dialogs {
                d.dialog.created_unix -= 24 * 3600;
                store.put_im_dialog(&d).unwrap();
            }
            store.flush().unwrap();
        }
        w.bridge = Bridge::start(
            &dir.join("lcs-bridge.toml"),
            &dir.join("bridge.log"),
            w.sip_port,
        );
        let deadline = Instant::now() + WAIT;
        // The log is appended to: the second start-up line.
        tokio::task::block_in_place(|| w.bridge.wait_log("lcs-bridge started", 2, deadline));
        let (conn, bye) = w.request("BYE").await;
        assert_ne!(conn, EDGE_CONN, "a connection of the new process");
        assert_eq!(bye.call_id().unwrap(), "aged");
        assert_eq!(
            bye.to().unwrap().tag(),
            ok.from().unwrap().tag(),
            "LCS's side of the stored dialog"
        );
        w.answer(conn, &bye, 200, &[]);
        tokio::task::block_in_place(|| w.bridge.terminate(Instant::now() + WAIT));
        let store = lcs_bridge::store::SledStore::open(&path).unwrap();
        assert_eq!(
            lcs_bridge::store::Store::im_dialogs(&store).count(),
            0,
            "forgotten"
        );
    });
}

/// [MS-OCER] §2.2.1.1 / §2.2.1.2: a Microsoft server says why it refused in `ms-diagnostics`
/// (`ErrorId;reason="…";source="…"`) or, across an enterprise boundary, `ms-diagnostics-public`
/// (pidgin-sipe `sipmsg.c` `sipmsg_get_ms_diagnostics_reason` reads the `reason`). A 403 to
/// the bridge's INVITE with both: alice's message comes back as an error whose text carries
/// the status, the reason and the number; the bridge's log has code, reason and source.
#[test]
fn a_refusal_with_ms_diagnostics_reaches_the_sender_with_its_reason() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        w.alice_says("d1", "are you there?");
        let (conn, invite) = w.request("INVITE").await;
        w.answer(
            conn,
            &invite,
            403,
            &[
                (
                    "ms-diagnostics-public",
                    "1034;reason=\"Previous hop federated peer did not report diagnostic information\";Domain=\"xmpp.test\";PeerServer=\"sip.xmpp.test\"",
                ),
                (
                    "ms-diagnostics",
                    "1034;reason=\"Previous hop federated peer did not report diagnostic information\";source=\"sip.contoso.com\"",
                ),
            ],
        );
        let s = w.stanza(&["type='error'", "are you there?"]).await;
        assert!(s.contains("<forbidden"), "{s}");
        assert!(
            s.contains(">403 Forbidden: Previous hop federated peer did not report diagnostic information (ms-diagnostics 1034)</text>"),
            "{s}"
        );
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| {
            w.bridge
                .wait_log("failure response with Microsoft diagnostics", 1, deadline)
        });
        let log = w.bridge.log();
        let line = log
            .lines()
            .find(|l| l.contains("failure response with Microsoft diagnostics"))
            .unwrap();
        for part in ["status=403", "code=1034", "sip.contoso.com", "INVITE"] {
            assert!(line.contains(part), "{part}: {line}");
        }
    });
}

/// Skype for Business ends an IM session after about 10 idle minutes with BYE (RFC 3261 §15:
/// either side may end a session). The next message from the XMPP side opens a fresh INVITE
/// session (the profile, "INVITE/MESSAGE": session-mode IM; a new Call-ID and a new
/// `Ms-Conversation-ID`, which Microsoft servers require for a new conversation) and is
/// delivered; nothing bounces.
#[test]
fn after_an_idle_bye_the_next_message_goes_in_a_new_invite() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        let (conn, invite, message) = w.alice_opens_session("i1", "hello").await;
        // The edge ends the session (its idle timer).
        let bye = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\nFrom: {};tag=edge\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            invite.header("Contact").and_then(|c| c.split(['<', '>']).nth(1)).unwrap(),
            invite.header("To").unwrap(),
            invite.header("From").unwrap(),
            invite.call_id().unwrap(),
        );
        w.send_sip(conn, bye);
        let r = w
            .wait(|_, e| match e {
                Event::Sip(c, m, _)
                    if *c == conn
                        && !m.is_request()
                        && m.call_id().ok() == invite.call_id().ok()
                        && m.cseq().is_ok_and(|s| s.method.as_str() == "BYE") =>
                {
                    Some(m.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(r.status(), Some(200), "{r}");
        w.alice_says("i2", "still there?");
        let (conn2, invite2) = w.request("INVITE").await;
        assert_ne!(invite2.call_id().unwrap(), invite.call_id().unwrap());
        assert_ne!(
            invite2.header("Ms-Conversation-ID"),
            invite.header("Ms-Conversation-ID")
        );
        w.answer(conn2, &invite2, 200, &[]);
        let (_, m2) = w.request("MESSAGE").await;
        assert_eq!(m2.call_id().unwrap(), invite2.call_id().unwrap());
        assert_eq!(String::from_utf8_lossy(m2.body()), "still there?");
        assert_ne!(m2.call_id().unwrap(), message.call_id().unwrap());
        w.answer(conn2, &m2, 200, &[]);
        assert_eq!(w.count_stanzas("type='error'", Duration::from_millis(500)).await, 0);
    });
}

/// A request from joe in the session the bridge's INVITE `invite` made (its To tag "edge", as
/// [`World::answer`] gives it).
fn edge_in_dialog(invite: &Message, method: &str, cseq: u32, body: &str) -> Vec<u8> {
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: text/plain; charset=UTF-8\r\n"
    };
    format!(
        "{method} {} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{method}{cseq}\r\nMax-Forwards: 70\r\nFrom: {};tag=edge\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        invite.header("Contact").and_then(|c| c.split(['<', '>']).nth(1)).unwrap(),
        invite.header("To").unwrap(),
        invite.header("From").unwrap(),
        invite.call_id().unwrap(),
        body.len()
    )
    .into_bytes()
}

/// The profile, "Connection affinity": "All messages within a given SIP dialog must be sent
/// over the exact same connection." The connection of a live session (here the one the edge
/// opened, which carries the bridge's requests too) is closed by the peer:
/// the bridge ends the session locally; alice's next message opens a NEW INVITE session (new
/// Call-ID, on a new connection), never an in-dialog MESSAGE on another connection; a request
/// the edge still sends in the old dialog (here on its own connection) gets 481, so the LCS
/// side starts anew as well.
#[test]
fn a_lost_connection_ends_the_session_and_the_next_message_goes_in_a_new_invite() {
    runtime().block_on(async {
        let Some(mut w) = World::start().await else {
            return;
        };
        let (conn, invite, _) = w.alice_opens_session("c1", "before").await;
        // (The bridge sends on the connection the edge opened: the profile lets a peer's
        // connection carry requests both ways.)
        w.drop_sip(conn);
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| {
            w.bridge.wait_log(
                "IM sessions on a lost connection ended locally",
                1,
                deadline,
            )
        });
        w.alice_says("c2", "after");
        // The first request (ACKs aside) the bridge sends after the loss is an INVITE, out of
        // any dialog.
        let (conn2, first) = w
            .wait(|_, e| match e {
                Event::Sip(c, m, _)
                    if m.is_request() && m.method().is_some_and(|x| x.as_str() != "ACK") =>
                {
                    Some((*c, m.clone()))
                }
                _ => None,
            })
            .await;
        assert_eq!(
            first.method().map(|m| m.as_str().to_owned()).as_deref(),
            Some("INVITE"),
            "{first}"
        );
        assert!(first.to().unwrap().tag().is_none(), "{first}");
        assert_ne!(first.call_id().unwrap(), invite.call_id().unwrap());
        assert_ne!(conn2, conn);
        w.answer(conn2, &first, 200, &[]);
        let (mconn, m) = w.request("MESSAGE").await;
        assert_eq!(
            (mconn, m.call_id().unwrap()),
            (conn2, first.call_id().unwrap())
        );
        assert_eq!(String::from_utf8_lossy(m.body()), "after");
        w.answer(conn2, &m, 200, &[]);
        // The old dialog is gone: a MESSAGE in it (on the connection that is left) gets 481,
        // and alice gets nothing of it.
        w.send_sip(conn2, edge_in_dialog(&invite, "MESSAGE", 2, "late"));
        let old = invite.call_id().unwrap().to_owned();
        let r = w
            .wait(|_, e| match e {
                Event::Sip(c, m, _)
                    if *c == conn2 && !m.is_request() && m.call_id().ok() == Some(old.as_str()) =>
                {
                    Some(m.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(r.status(), Some(481), "{r}");
        assert_eq!(w.count_stanzas("late", Duration::from_millis(500)).await, 0);
        assert_eq!(
            w.count_stanzas("type='error'", Duration::from_millis(10))
                .await,
            0
        );
    });
}
