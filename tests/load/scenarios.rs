//! The workloads (docs/benchmarks.md "End to end"). Each plays both neighbours
//! of the bridge as the federation profile describes them, marks every load item with a
//! sequence number (`m…` message bodies, `s…`/`n…` presence notes, `i…` LCS message bodies)
//! and counts an item delivered when its translation arrives on the other side.

use std::collections::HashMap;
use std::time::Instant;

use lcs_bridge::sip::message::{Message, Method};

use crate::driver::{COMPONENT, Ctx, Handler, LCS_DOMAIN, XMPP_DOMAIN, contact_jid};
use lcs_test_support::net::{attr, child_text, seq_after};

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip/tcp *\r\n";
const VIA: &str = "SIP/2.0/TLS 127.0.0.1:5061";

fn pidf(entity: &str, activity: Option<&str>, note: &str) -> String {
    let act = activity.map_or(String::new(), |a| {
        format!("<ep:activities><ep:activity>{a}</ep:activity></ep:activities>")
    });
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:ep=\"urn:ietf:params:xml:ns:pidf:status:rpid-status\" entity=\"{entity}\">\
         <tuple id=\"0\"><status><basic>open</basic>{act}</status><note>{note}</note></tuple></presence>"
    )
}

/// The URI inside `<…>` of a header value (or the value).
fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The answers an LCS edge gives to what the bridge sends it: 200 with the profile's SDP
/// answer to INVITE, 202 to SUBSCRIBE, 200 to anything else, nothing to ACK and BENOTIFY.
pub fn answer(cx: &mut Ctx, conn: usize, m: &Message, tag: &str) {
    let Some(method) = m.method() else {
        return;
    };
    if *method == Method::Ack || method.as_str() == "BENOTIFY" {
        return;
    }
    let contact = "<sip:edge@127.0.0.1:5061;transport=tls>";
    let resp = match method {
        Method::Invite => {
            let mut r = Message::response_to(m, 200, None, Some(tag));
            r.push_header("Contact", contact);
            r.set_body(Some("application/sdp"), SDP.as_bytes().to_vec());
            r
        }
        Method::Subscribe => {
            let mut r = Message::response_to(m, 202, None, Some(tag));
            r.push_header("Contact", contact);
            r.push_header("Expires", m.header("Expires").unwrap_or("3600"));
            r
        }
        _ => Message::response_to(m, 200, None, Some(tag)),
    };
    cx.sip_send(conn, &resp);
}

// ------------------------------------------------------------------ IM, XMPP → LCS

/// `im-outbound` (warm sessions; pairs reused round-robin) and `im-setup` (every message to a
/// contact never written to before: a new INVITE session each). With `clients`
/// (`im-prosody`), user `u…` sends from its XMPP client logged in to a real server (client
/// number = user number), which stamps the `from`; else the generator's component stream
/// sends as the server would.
pub struct ImOutbound {
    pub users: u64,
    pub contacts: u64,
    pub fresh: bool,
    pub clients: bool,
    /// INVITEs seen (sessions set up).
    pub invites: u64,
}

impl ImOutbound {
    pub fn pairs(&self) -> u64 {
        self.users * self.contacts
    }
}

impl Handler for ImOutbound {
    fn stanza(&mut self, _: &mut Ctx, _: &[u8], _: Instant) {}

    fn sip(&mut self, cx: &mut Ctx, conn: usize, m: Message, at: Instant) {
        match m.method() {
            Some(Method::Message) => match seq_after(m.body(), b'm') {
                Some(seq) => cx.delivered(seq, at),
                None => cx.error(format!(
                    "MESSAGE without a load marker: {}",
                    String::from_utf8_lossy(m.body())
                )),
            },
            Some(Method::Invite) => self.invites += 1,
            _ => {}
        }
        let tag = format!("e{}", cx.delivered);
        answer(cx, conn, &m, &tag);
    }

    fn send_one(&mut self, cx: &mut Ctx, now: Instant) -> bool {
        let seq = cx.sent(now, 1);
        let (user, contact) = if self.fresh {
            (seq % self.users, seq)
        } else {
            let pair = seq % self.pairs();
            (pair / self.contacts, pair % self.contacts)
        };
        let to = contact_jid(&format!("c{contact}"));
        if self.clients {
            cx.client_send(
                user as usize,
                format!("<message to='{to}' type='chat' id='{seq}'><body>m{seq}</body></message>"),
            );
        } else {
            cx.stanza(format!(
                "<message from='u{user}@{XMPP_DOMAIN}/load' to='{to}' type='chat' id='{seq}'><body>m{seq}</body></message>",
            ));
        }
        true
    }
}

// ------------------------------------------------------------------ IM, LCS → XMPP

struct LcsDialog {
    conn: usize,
    call_id: String,
    from: String,
    to: String,
    target: String,
    cseq: u32,
}

/// `im-inbound`: INVITE sessions from LCS users (`c…@contoso.com` to `u…@xmpp.test`), then
/// in-dialog MESSAGEs round-robin.
pub struct ImInbound {
    pub users: u64,
    pub contacts: u64,
    pub conns: Vec<usize>,
    /// How the gateway names LCS user c0@contoso.com in the stanza's `from`: the bridge as
    /// `c0\40contoso.com@lcs.xmpp.test` (XEP-0106), Kamailio's xmpp module as
    /// `c0*contoso.com@lcs.xmpp.test` (its domain separator).
    pub kamailio_addressing: bool,
    dialogs: Vec<Option<LcsDialog>>,
    pending: HashMap<String, usize>,
    pub established: u64,
    branch: u64,
}

impl ImInbound {
    pub fn new(users: u64, contacts: u64, conns: Vec<usize>) -> Self {
        let n = (users * contacts) as usize;
        ImInbound {
            users,
            contacts,
            conns,
            kamailio_addressing: false,
            dialogs: (0..n).map(|_| None).collect(),
            pending: HashMap::new(),
            established: 0,
            branch: 0,
        }
    }

    fn branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bKload{}", self.branch)
    }

    /// Sends the INVITE of every pair.
    pub fn invite_all(&mut self, cx: &mut Ctx) {
        for pair in 0..self.dialogs.len() {
            let (user, contact) = (pair as u64 / self.contacts, pair as u64 % self.contacts);
            let conn = self.conns[pair % self.conns.len()];
            let call_id = format!("im{pair}@{LCS_DOMAIN}");
            let branch = self.branch();
            let raw = format!(
                "INVITE sip:u{user}@{XMPP_DOMAIN} SIP/2.0\r\nVia: {VIA};branch={branch}\r\nMax-Forwards: 70\r\n\
                 From: <sip:c{contact}@{LCS_DOMAIN}>;tag=lcs{pair}\r\nTo: <sip:u{user}@{XMPP_DOMAIN}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:c{contact}@127.0.0.1:5061;transport=tls>\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
                SDP.len()
            );
            self.pending.insert(call_id, pair);
            cx.sip_raw(conn, raw.into_bytes());
        }
    }
}

impl Handler for ImInbound {
    fn stanza(&mut self, cx: &mut Ctx, s: &[u8], at: Instant) {
        if !s.starts_with(b"<message") {
            return;
        }
        let Some(seq) = child_text(s, "body").and_then(|b| seq_after(b, b'i')) else {
            return;
        };
        // Sent on pair seq % pairs (send_one): user u… got it from contact c….
        let pair = seq % self.dialogs.len().max(1) as u64;
        let (user, contact) = (pair / self.contacts, pair % self.contacts);
        let to = format!("u{user}@{XMPP_DOMAIN}");
        let from = if self.kamailio_addressing {
            format!("c{contact}*{LCS_DOMAIN}@{COMPONENT}")
        } else {
            contact_jid(&format!("c{contact}"))
        };
        let (got_to, got_from) = (attr(s, "to"), attr(s, "from"));
        if got_to == Some(to.as_bytes()) && got_from == Some(from.as_bytes()) {
            cx.delivered(seq, at);
        } else {
            cx.error(format!(
                "item {seq}: expected from {from} to {to}, got {}",
                String::from_utf8_lossy(s)
            ));
        }
    }

    fn sip(&mut self, cx: &mut Ctx, conn: usize, m: Message, _: Instant) {
        if m.is_request() {
            answer(cx, conn, &m, "x");
            return;
        }
        let Ok(cseq) = m.cseq() else { return };
        if cseq.method != Method::Invite || m.status() != Some(200) {
            return;
        }
        let Some(pair) = m.call_id().ok().and_then(|c| self.pending.remove(c)) else {
            return;
        };
        let d = LcsDialog {
            conn,
            call_id: m.call_id().unwrap_or_default().to_owned(),
            from: m.header("From").unwrap_or_default().to_owned(),
            to: m.header("To").unwrap_or_default().to_owned(),
            target: uri_of(m.header("Contact").unwrap_or_default()).to_owned(),
            cseq: 1,
        };
        let branch = self.branch();
        let ack = format!(
            "ACK {} SIP/2.0\r\nVia: {VIA};branch={branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            d.target, d.from, d.to, d.call_id
        );
        cx.sip_raw(conn, ack.into_bytes());
        self.dialogs[pair] = Some(d);
        self.established += 1;
    }

    fn send_one(&mut self, cx: &mut Ctx, now: Instant) -> bool {
        let seq = cx.sent(now, 1);
        let pair = (seq % self.dialogs.len() as u64) as usize;
        let branch = self.branch();
        let Some(d) = self.dialogs[pair].as_mut() else {
            cx.error(format!("pair {pair} has no session"));
            return false;
        };
        d.cseq += 1;
        let body = format!("i{seq}");
        let raw = format!(
            "MESSAGE {} SIP/2.0\r\nVia: {VIA};branch={branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\n\
             Content-Length: {}\r\n\r\n{body}",
            d.target,
            d.from,
            d.to,
            d.call_id,
            d.cseq,
            body.len()
        );
        let conn = d.conn;
        cx.sip_raw(conn, raw.into_bytes());
        true
    }
}

// ------------------------------------------------------------------ presence, XMPP → LCS

/// `presence-fanout`: `watchers` LCS users (`w…`) watch each of `users` local users; the
/// local users' changes become NOTIFYs to every watcher. One load item is one change of one
/// user, sent as the XMPP server sends it: one directed presence per subscribed contact.
pub struct Fanout {
    pub users: u64,
    pub watchers: u64,
    pub conns: Vec<usize>,
    /// Subscriptions whose NOTIFY `active` arrived.
    pub active: u64,
    seen_active: std::collections::HashSet<String>,
    branch: u64,
    state: Vec<UserState>,
    seq_user: HashMap<u64, usize>,
    cursor: usize,
}

/// A local user's last change: NOTIFYs still owed for it, and when it was made.
#[derive(Clone, Default)]
struct UserState {
    owed: u64,
    changed: Option<Instant>,
}

/// Least time between two changes of one user: the bridge's 1 s interval with a margin.
const GAP: std::time::Duration = std::time::Duration::from_millis(1100);

impl Fanout {
    pub fn new(users: u64, watchers: u64, conns: Vec<usize>) -> Self {
        Fanout {
            users,
            watchers,
            conns,
            active: 0,
            seen_active: Default::default(),
            branch: 0,
            state: vec![UserState::default(); users as usize],
            seq_user: HashMap::new(),
            cursor: 0,
        }
    }

    /// SUBSCRIBEs for subscriptions `range` (index = user × watchers + watcher).
    pub fn subscribe(&mut self, cx: &mut Ctx, range: std::ops::Range<u64>) {
        for i in range {
            let (user, watcher) = (i / self.watchers, i % self.watchers);
            let conn = self.conns[(i as usize) % self.conns.len()];
            self.branch += 1;
            let raw = format!(
                "SUBSCRIBE sip:u{user}@{XMPP_DOMAIN} SIP/2.0\r\nVia: {VIA};branch=z9hG4bKs{}\r\nMax-Forwards: 70\r\n\
                 From: <sip:w{watcher}@{LCS_DOMAIN}>;tag=w{i}\r\nTo: <sip:u{user}@{XMPP_DOMAIN}>\r\n\
                 Call-ID: sub{i}@{LCS_DOMAIN}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{watcher}@127.0.0.1:5061;transport=tls>\r\n\
                 Event: presence\r\nAccept: application/pidf+xml\r\nSupported: ms-benotify\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
                self.branch
            );
            cx.sip_raw(conn, raw.into_bytes());
        }
    }
}

impl Handler for Fanout {
    fn stanza(&mut self, cx: &mut Ctx, s: &[u8], _: Instant) {
        // The bridge asks the local user (`subscribe` from the watcher's JID): approve, and
        // say where the user is, as the server would.
        if s.starts_with(b"<presence") && attr(s, "type") == Some(b"subscribe") {
            let (Some(from), Some(to)) = (attr(s, "from"), attr(s, "to")) else {
                return;
            };
            let (from, to) = (String::from_utf8_lossy(from), String::from_utf8_lossy(to));
            cx.stanza(format!(
                "<presence type='subscribed' from='{to}' to='{from}'/><presence from='{to}/load' to='{from}'/>"
            ));
        }
    }

    fn sip(&mut self, cx: &mut Ctx, conn: usize, m: Message, at: Instant) {
        if m.method() == Some(&Method::Notify) {
            let active = m
                .header("Subscription-State")
                .is_some_and(|s| s.starts_with("active"));
            if active {
                if let Some(seq) = child_text(m.body(), "note").and_then(|n| seq_after(n, b's')) {
                    cx.delivered(seq, at);
                    if let Some(&u) = self.seq_user.get(&seq) {
                        let s = &mut self.state[u];
                        s.owed = s.owed.saturating_sub(1);
                        if s.owed == 0 {
                            self.seq_user.remove(&seq);
                        }
                    }
                } else if self
                    .seen_active
                    .insert(m.call_id().unwrap_or_default().to_owned())
                {
                    self.active += 1;
                }
            }
        }
        answer(cx, conn, &m, "x");
    }

    /// The next user whose last change is fully delivered and older than the bridge's
    /// coalescing interval (a faster change would be coalesced, by design).
    fn send_one(&mut self, cx: &mut Ctx, now: Instant) -> bool {
        let users = self.users as usize;
        let mut pick = None;
        for k in 0..users {
            let u = (self.cursor + k) % users;
            let s = &self.state[u];
            if s.owed == 0 && s.changed.is_none_or(|t| now - t >= GAP) {
                pick = Some(u);
                break;
            }
        }
        let Some(user) = pick else {
            return false;
        };
        self.cursor = (user + 1) % users;
        let seq = cx.sent(now, self.watchers);
        self.seq_user.insert(seq, user);
        self.state[user] = UserState {
            owed: self.watchers,
            changed: Some(now),
        };
        let show = if seq % 2 == 0 { "away" } else { "dnd" };
        let mut out = String::with_capacity(200 * self.watchers as usize);
        for w in 0..self.watchers {
            out.push_str(&format!(
                "<presence from='u{user}@{XMPP_DOMAIN}/load' to='{}'><show>{show}</show><status>s{seq}</status></presence>",
                contact_jid(&format!("w{w}"))
            ));
        }
        cx.stanza(out);
        true
    }
}

// ------------------------------------------------------------------ presence, LCS → XMPP

struct OutSub {
    conn: usize,
    call_id: String,
    /// The bridge's From (with its tag): our To.
    bridge: String,
    /// The bridge's To plus our tag: our From.
    us: String,
    target: String,
    entity: String,
    cseq: u32,
}

/// `presence-inbound`: each of `users` local users subscribes to `contacts` LCS users; the
/// LCS edge accepts and then sends NOTIFYs in those dialogs.
pub struct Inbound {
    pub users: u64,
    pub contacts: u64,
    subs: Vec<OutSub>,
    pub subscribed: u64,
    branch: u64,
}

impl Inbound {
    pub fn new(users: u64, contacts: u64) -> Self {
        Inbound {
            users,
            contacts,
            subs: Vec::new(),
            subscribed: 0,
            branch: 0,
        }
    }

    pub fn subscribe(&mut self, cx: &mut Ctx, range: std::ops::Range<u64>) {
        let mut out = String::new();
        for i in range {
            let (user, contact) = (i / self.contacts, i % self.contacts);
            out.push_str(&format!(
                "<presence type='subscribe' from='u{user}@{XMPP_DOMAIN}' to='{}'/>",
                contact_jid(&format!("c{contact}"))
            ));
        }
        cx.stanza(out);
    }

    fn notify(&mut self, cx: &mut Ctx, i: usize, note: &str) {
        self.branch += 1;
        let branch = self.branch;
        let s = &mut self.subs[i];
        s.cseq += 1;
        let body = pidf(&s.entity, Some("busy"), note);
        let raw = format!(
            "NOTIFY {} SIP/2.0\r\nVia: {VIA};branch=z9hG4bKn{branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} NOTIFY\r\nContact: <sip:edge@127.0.0.1:5061;transport=tls>\r\nEvent: presence\r\n\
             Subscription-State: active;expires=3600\r\nContent-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
            s.target,
            s.us,
            s.bridge,
            s.call_id,
            s.cseq,
            body.len()
        );
        let conn = s.conn;
        cx.sip_raw(conn, raw.into_bytes());
    }
}

impl Handler for Inbound {
    fn stanza(&mut self, cx: &mut Ctx, s: &[u8], at: Instant) {
        if !s.starts_with(b"<presence") {
            return;
        }
        match attr(s, "type") {
            Some(b"subscribed") => self.subscribed += 1,
            None => {
                if let Some(seq) = child_text(s, "status").and_then(|t| seq_after(t, b'n')) {
                    cx.delivered(seq, at);
                }
            }
            _ => {}
        }
    }

    fn sip(&mut self, cx: &mut Ctx, conn: usize, m: Message, _: Instant) {
        if m.method() == Some(&Method::Subscribe)
            && m.to().is_ok_and(|t| t.tag().is_none())
            && m.expires().ok().flatten() != Some(0)
        {
            let tag = format!("lcs{}", self.subs.len());
            answer(cx, conn, &m, &tag);
            let to = m.header("To").unwrap_or_default();
            let entity = uri_of(to).to_owned();
            self.subs.push(OutSub {
                conn,
                call_id: m.call_id().unwrap_or_default().to_owned(),
                bridge: m.header("From").unwrap_or_default().to_owned(),
                us: format!("{to};tag={tag}"),
                target: uri_of(m.header("Contact").unwrap_or_default()).to_owned(),
                entity,
                cseq: 0,
            });
            let i = self.subs.len() - 1;
            self.notify(cx, i, "online");
            return;
        }
        answer(cx, conn, &m, "x");
    }

    fn send_one(&mut self, cx: &mut Ctx, now: Instant) -> bool {
        if self.subs.is_empty() {
            cx.error("no subscriptions".into());
            return false;
        }
        let seq = cx.sent(now, 1);
        let i = (seq % self.subs.len() as u64) as usize;
        self.notify(cx, i, &format!("n{seq}"));
        true
    }
}
