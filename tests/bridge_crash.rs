//! Crash safety of the bridge itself (docs/storage.md "The bridge under
//! SIGKILL"): the real `lcs-bridge run` binary, joined to a real Prosody as its component,
//! under a steady presence workload, killed with SIGKILL at random moments and started again on
//! the same store, at least 20 times.
//!
//! The world:
//! - Prosody with alice, bob and carol, each logged in with slixmpp (tests/xmpp_client.py):
//!   alice's and bob's clients approve every subscription request at once (`--approve`), Carol
//!   approves hers when the test tells her to, in batches;
//! - this test as the LCS edge contoso.com over mutual TLS (`lcs_test_support::net`): two connections
//!   to the bridge's SIP port per bridge run, and the partner's listener the bridge dials.
//!   It answers as a SIP user agent must: a NOTIFY whose CSeq is not above the last one in its
//!   dialog gets 500 (RFC 3261 §12.2.2; pjsip answers `<=` so), one in no dialog it knows 481.
//!
//! The workload, 50 steps a second: a new LCS watcher `w<i>@contoso.com` subscribes to a local
//! user (acknowledged by the 202: the bridge stores before it answers); every fifth step a
//! watcher, picked at random among the acknowledged ones (restored ones too), unsubscribes with
//! `Expires: 0` in its dialog (acknowledged by the 200); every eighth step a local user
//! subscribes to a new LCS contact `o<k>@contoso.com` from its XMPP client (the bridge stores,
//! then SUBSCRIBEs; the edge answers 202 and a NOTIFY `active`, whose 200 acknowledges the
//! approval).
//!
//! Each round runs it for 0.2–1.5 s, then kills the bridge at a moment of one of four kinds,
//! picked at random: anywhere in the steady workload, or in a burst of new watchers, of Carol's
//! approvals or of unsubscriptions, right after the k-th of them was acknowledged or up to 10
//! ms later (where a change acknowledged before it was stored would be lost).
//!
//! After each kill the test opens the store itself (the bridge is dead, the lock is free) and
//! checks that:
//! - it opens, and every record decodes;
//! - every watcher whose 202 reached the edge is stored: inbound, for its user, unexpired, with
//!   the dialog the edge knows (Call-ID, both tags, URIs, its Contact, its CSeq, a local CSeq
//!   at or above every NOTIFY it got), and approved if its NOTIFY `active` reached the edge;
//! - every watcher whose unsubscription was answered 200 is gone (one unanswered at the kill may
//!   or may not have happened: that watcher is not checked any more);
//! - every contact whose SUBSCRIBE reached the edge is stored, outbound, approved if the edge's
//!   NOTIFY `active` was answered 200;
//! - nothing else is stored.
//!
//! In one round in four the restarted bridge is killed again 0–600 ms after it was started
//! (opening the store, restoring, or joining Prosody) and the store checked again. Then, once
//! the bridge is up, the test checks that presence flows both ways:
//! - every acknowledged watcher whose user has approved gets a NOTIFY `active` from the new
//!   process in its old dialog (approved ones their restored state; the others once their
//!   user's approval, lost while no bridge was connected, is asked for again), and the
//!   watchers of the user who now changes its presence one carrying the change;
//! - every approved contact, subscribed again by the new process, shows its user the note of
//!   the edge's NOTIFY to that process.
//!
//! And throughout: no NOTIFY repeats a CSeq, none comes from a later process for a removed
//! watcher, no process sends more than 6 NOTIFYs in one dialog (a storm).
//!
//! IM sessions (chats) ride along: every sixth step a chat opens, in turn by the edge (LCS user
//! `i<n>` INVITEs a local user, with a first message) or by a local user's client (a message
//! to LCS user `x<n>`, which the bridge turns into an INVITE the edge answers 200); every
//! fourth step one message goes in an open chat, either way. A chat is acknowledged when the
//! edge got the 200 to its INVITE, or the bridge's ACK to the edge's 200 (the bridge stores the
//! dialog, synced, before either). One kill kind in five comes in a burst of new chats. After
//! each kill the store must hold every acknowledged chat that was not ended (with the dialog
//! the edge knows and a local CSeq at or above every request the edge got in it) and no chat
//! the workload did not open. After each restart, in every such chat, the edge's MESSAGE is
//! answered 200 (not 481) and reaches the user's client in the chat's thread (the Call-ID),
//! and the user's message reaches the edge in the old dialog (no new INVITE) with a CSeq above
//! every earlier one (the edge answers 500 otherwise, as a user agent must); then the edge
//! ends about a third of the chats with BYE. The bridge's idle limit is an hour here, so no
//! chat ends by itself.
//!
//! A failure prints the seed and the end of the bridge's log. `LCS_BRIDGE_CRASH_SEED=<n>`
//! replays the kill schedule (the processes' timing still varies); `LCS_BRIDGE_CRASH_KILLS=<n>`
//! runs `n` rounds instead of 20; `LCS_BRIDGE_CRASH_KEEP=1` keeps the working directory (the
//! bridge's log and store, and on failure Prosody's log and the clients' events).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use lcs_test_support::{net, pki};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lcs_bridge::random::SplitMix;
use lcs_bridge::sip::message::{Message, Method};
use lcs_bridge::store::{
    Approval, Direction, ImDialog, SledStore, Store, SubState, Subscription, sled_dir,
};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use lcs_test_support::config::BridgeConfig;
use lcs_test_support::e2e::{ALICE_PASSWORD, Bridge, Mode, XmppClient, bare, tail};
use lcs_test_support::{GATEWAY_COMPONENT, Prosody, XMPP_DOMAIN, XmppServer};
use net::{Event, Tls, Writer};
use pki::{Pki, write_bridge_files};

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// The user who approves by the test's command, in batches (the others approve at once).
const CAROL: usize = 2;
const LCS_DOMAIN: &str = "contoso.com";
/// Rounds (each ends with a kill in the workload); `LCS_BRIDGE_CRASH_KILLS` sets another number.
const ROUNDS: u32 = 20;
/// Workload steps per second.
const RATE: f64 = 50.0;
/// The edge's Contact host (what the bridge stores as the watchers' remote target).
const EDGE_HOST: &str = "127.0.0.1:5061";
/// Connection ids: the bridge's connections to the partner listener count up from 0, the
/// edge's connections to the bridge from here.
const FIRST_CLIENT_CONN: usize = 1 << 20;
/// NOTIFYs one bridge process may send in one dialog here: pending and active for a new
/// watcher, the one after a restart, one per change of the user (once per round), with room.
const MAX_NOTIFIES: u32 = 6;
/// What the bridge logs once it has opened the store, restored, joined Prosody and listens.
const STARTED: &str = "lcs-bridge started";
/// The SDP an LCS edge offers and answers for a session-mode IM session.
const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n";

fn jid(user: usize) -> String {
    format!("{}@{XMPP_DOMAIN}", USERS[user])
}

/// The bridge's JID for LCS user `name` (gateway mode, XEP-0106).
fn lcs_jid(name: &str) -> String {
    format!("{name}\\40{LCS_DOMAIN}@{GATEWAY_COMPONENT}")
}

/// The number in the JID of LCS user `<prefix><n>` (the inverse of [`lcs_jid`]).
fn lcs_number(jid: &str, prefix: char) -> Option<usize> {
    bare(jid)
        .strip_prefix(prefix)?
        .strip_suffix(&lcs_jid(""))?
        .parse()
        .ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The URI inside `<…>` of a header value.
fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The number in `sip:<prefix><n>@contoso.com`.
fn number_in(aor: &str, prefix: &str) -> Option<usize> {
    aor.strip_prefix("sip:")?
        .strip_prefix(prefix)?
        .strip_suffix(&format!("@{LCS_DOMAIN}"))?
        .parse()
        .ok()
}

/// An LCS watcher of a local user: a subscription the edge made.
#[derive(Default)]
struct Watcher {
    user: usize,
    call_id: String,
    /// The bridge's tag and Contact (from its 202, or the tag from a NOTIFY that came first).
    tag: Option<String>,
    target: String,
    /// The 202 reached the edge.
    acked: bool,
    /// A NOTIFY `active` reached the edge: the user approved, and the bridge had stored it.
    approved: bool,
    /// (Carol's watchers) she has sent `subscribed`.
    asked: bool,
    /// Its `Expires: 0` went out; `removed` when answered 200. One unanswered at a kill may or
    /// may not have happened: `unknown`, out of the checks from then on.
    leaving: bool,
    removed: bool,
    /// The bridge process that answered the unsubscription.
    removed_in: u32,
    unknown: bool,
    /// The bridge process it was sent to.
    sent_in: u32,
    /// CSeq of the last NOTIFY accepted in its dialog.
    cseq: Option<u32>,
    /// The bridge process of the last NOTIFY accepted, and how many that process sent.
    notified_by: (u32, u32),
    /// The bridge process of the last NOTIFY `active`.
    active_by: u32,
    /// The notes of the NOTIFYs accepted, in order.
    notes: Vec<String>,
}

/// An LCS contact a local user subscribed to.
struct Contact {
    user: usize,
    /// The bridge's SUBSCRIBE reached the edge (the bridge stores before it sends it).
    seen: bool,
    /// The edge's NOTIFY `active` was answered 200 (the bridge stores the approval first).
    approved: bool,
    /// Statuses the user's XMPP client has shown for the contact.
    shown: Vec<String>,
}

/// An IM session between a local user and LCS user `i<n>` (the edge opened it) or `x<n>` (the
/// user did), as the edge sees it.
#[derive(Default)]
struct Chat {
    user: usize,
    /// The edge opened it (`i<n>`), or the user's client (`x<n>`).
    by_edge: bool,
    call_id: String,
    /// The edge's tag, and the bridge's once known.
    edge_tag: String,
    bridge_tag: Option<String>,
    /// Where the edge's requests go: the bridge's Contact.
    bridge_target: String,
    /// CSeq of the edge's last request in it, and of the bridge's last one.
    edge_cseq: u32,
    bridge_cseq: u32,
    /// The dialog exists for both sides: the edge got the 200 to its INVITE, or the bridge's
    /// ACK to the edge's 200 (the bridge stores the dialog, synced, before either).
    acked: bool,
    /// The edge sent BYE; `ended` when it was answered 200. One unanswered at a kill may or
    /// may not have happened: `unknown`, out of the checks from then on.
    ending: bool,
    ended: bool,
    unknown: bool,
    /// The bridge process it was opened in.
    opened_in: u32,
    /// The bodies of the user's messages that reached the edge in this dialog.
    from_user: Vec<String>,
    /// What the user's client was shown from the LCS user: (body, thread).
    shown: Vec<(String, String)>,
    /// Answers to the edge's MESSAGEs: (CSeq, status).
    answers: Vec<(u32, u16)>,
}

impl Chat {
    fn live(&self) -> bool {
        self.acked && !self.ending && !self.unknown
    }

    /// The LCS user's name (`i<n>` or `x<n>`).
    fn name(&self, n: usize) -> String {
        format!("{}{n}", if self.by_edge { 'i' } else { 'x' })
    }
}

#[derive(Default)]
struct Tally {
    kills: u32,
    early_kills: u32,
    /// The rounds' kills by moment.
    moments: BTreeMap<&'static str, u32>,
    /// SUBSCRIBEs still unanswered (no 202) at the kills, summed.
    unanswered: usize,
    /// Sums over the kills.
    acked_checked: usize,
    removed_checked: usize,
    outbound_checked: usize,
    /// After the restarts: watchers that got presence, contacts whose new note was shown.
    notified: usize,
    shown: usize,
    slowest_start: Duration,
    /// Longest wait, after a start, until presence had flowed everywhere.
    slowest_flow: Duration,
    /// Acknowledged live chats checked in the store after the kills, and chats in which
    /// messages flowed both ways after a restart (sums).
    chats_stored: usize,
    chats_flowed: usize,
    /// The chats' longest wait after a start.
    slowest_chats: Duration,
}

struct Crash {
    /// `LCS_BRIDGE_CRASH_KEEP`: keep the working directory, with Prosody's log and the
    /// clients' events, for a post-mortem.
    keep: bool,
    prosody_log: PathBuf,
    rng: SplitMix,
    seed: u64,
    dir: PathBuf,
    config: PathBuf,
    sip_port: u16,
    bridge: Bridge,
    /// Bridge processes started so far (the current one's number).
    run: u32,
    /// Start-up lines in the bridge's log before the current process was started.
    started_lines: usize,
    clients: Vec<XmppClient>,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    tls: Tls,
    sip: HashMap<usize, Writer>,
    /// The edge's connections to the current bridge process.
    conns: Vec<usize>,
    next_conn: usize,
    watchers: Vec<Watcher>,
    by_call: HashMap<String, usize>,
    contacts: Vec<Contact>,
    /// Carol's subscription requests not answered yet (watcher numbers).
    carol_pending: Vec<usize>,
    /// The dialogs the bridge's SUBSCRIBEs made: Call-ID → contact.
    out_dialogs: HashMap<String, usize>,
    /// Dialogs the edge has accepted (for unique tags and branches).
    accepted: u64,
    chats: Vec<Chat>,
    chat_by_call: HashMap<String, usize>,
    steps: u64,
    notifies: u64,
    errors: Vec<String>,
    tally: Tally,
}

impl Crash {
    /// Panics with the seed, the errors seen and the end of the bridge's log.
    fn fail(&self, why: &str) -> ! {
        if self.keep {
            // Next to the bridge's log, store and the clients' stderr.
            let _ = std::fs::copy(&self.prosody_log, self.dir.join("prosody.log"));
            for (user, c) in USERS.iter().zip(&self.clients) {
                let events: Vec<String> = c.seen.iter().map(|v| v.to_string()).collect();
                let _ = std::fs::write(self.dir.join(format!("{user}.events")), events.join("\n"));
            }
            eprintln!("bridge_crash: kept {}", self.dir.display());
        }
        let log = self.bridge.log();
        let tail: Vec<&str> = tail(&log, 20_000).lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{why}\nseed {} (LCS_BRIDGE_CRASH_SEED={} replays the kill schedule)\nerrors: {:?}\n\
             --- bridge log (end) ---\n{}",
            self.seed,
            self.seed,
            &self.errors[..self.errors.len().min(20)],
            tail.join("\n")
        );
    }

    fn error(&mut self, what: String) {
        if self.errors.len() < 1000 {
            self.errors.push(what);
        }
    }

    // ------------------------------------------------------------------ the event loop

    /// Handles events (and runs the workload at `rate` steps a second) until `done` or until
    /// `limit` has passed; whether `done`.
    async fn pump(
        &mut self,
        limit: Duration,
        rate: Option<f64>,
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let start = Instant::now();
        let mut steps = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if done(self) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::select! {
                biased;
                ev = self.events.recv() => {
                    self.handle(ev.unwrap());
                    while let Ok(ev) = self.events.try_recv() {
                        self.handle(ev);
                    }
                }
                _ = tick.tick() => {
                    self.drain_clients();
                    if let Some(r) = rate {
                        let due = (start.elapsed().as_secs_f64() * r) as u64;
                        while steps < due {
                            self.step();
                            steps += 1;
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::SipUp(conn, w) => {
                self.sip.insert(conn, w);
            }
            Event::SipClosed(conn, _) => {
                self.sip.remove(&conn);
            }
            Event::Sip(conn, m, _) if m.is_request() => self.request(conn, &m),
            Event::Sip(conn, m, _) => self.response(conn, &m),
            Event::Stanza(..)
            | Event::XmppClosed(..)
            | Event::Client(..)
            | Event::ClientClosed(..) => {}
        }
    }

    /// The XMPP clients' events: what the users were shown of their LCS contacts.
    fn drain_clients(&mut self) {
        for (u, c) in self.clients.iter_mut().enumerate() {
            while let Ok(e) = c.rx.try_recv() {
                let from = e["from"].as_str().unwrap_or_default();
                if u == CAROL && e["event"] == "presence" && e["type"] == "subscribe" {
                    let i = lcs_number(from, 'w');
                    if let Some(i) = i.filter(|i| !self.carol_pending.contains(i)) {
                        self.carol_pending.push(i);
                    }
                }
                if e["event"] == "message" && e["type"] == "chat" {
                    let chat = lcs_number(from, 'i')
                        .or_else(|| lcs_number(from, 'x'))
                        .filter(|&n| {
                            self.chats
                                .get(n)
                                .is_some_and(|c| bare(from) == lcs_jid(&c.name(n)) && c.user == u)
                        });
                    if let (Some(n), Some(body)) = (chat, e["body"].as_str()) {
                        let thread = e["thread"].as_str().unwrap_or_default().to_owned();
                        self.chats[n].shown.push((body.to_owned(), thread));
                    }
                }
                if e["event"] == "presence" && e["type"] == "available" {
                    let k = lcs_number(from, 'o');
                    if let (Some(k), Some(status)) = (k, e["status"].as_str()) {
                        if let Some(contact) = self.contacts.get_mut(k) {
                            contact.shown.push(status.to_owned());
                        }
                    }
                }
                c.seen.push(e);
            }
        }
    }

    fn send(&mut self, conn: usize, bytes: Vec<u8>) {
        match self.sip.get(&conn) {
            Some(w) => {
                let _ = w.send(bytes);
            }
            None => self.error(format!("connection {conn} is gone")),
        }
    }

    fn respond(&mut self, conn: usize, m: &Message, status: u16, reason: Option<&str>) {
        let r = Message::response_to(m, status, reason, Some("edge"));
        self.send(conn, r.to_bytes());
    }

    // ------------------------------------------------------------------ the workload

    fn step(&mut self) {
        let n = self.steps;
        self.steps += 1;
        if n % 5 == 4 {
            self.unsubscribe();
        }
        if n % 8 == 7 {
            self.subscribe_out();
        }
        if n % 6 == 5 {
            self.open_chat();
        }
        if n % 4 == 2 {
            self.chat_message();
        }
        self.subscribe_in();
    }

    /// A new chat, opened in turn by the edge and by a user's client; its number.
    fn open_chat(&mut self) -> Option<usize> {
        let n = self.chats.len();
        let user = n % USERS.len();
        let by_edge = n % 2 == 0;
        if by_edge && self.conns.is_empty() {
            return None;
        }
        let mut chat = Chat {
            user,
            by_edge,
            opened_in: self.run,
            ..Chat::default()
        };
        let name = chat.name(n);
        if by_edge {
            use base64::Engine as _;
            let call_id = format!("crash-{name}@{LCS_DOMAIN}");
            let first = base64::engine::general_purpose::STANDARD.encode(format!("{name} first"));
            let raw = format!(
                "INVITE sip:{u} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bK{name}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{name}@{LCS_DOMAIN}>;tag={name}\r\nTo: <sip:{u}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{name}@{EDGE_HOST};transport=tls>\r\n\
                 ms-text-format: text/plain; charset=UTF-8;ms-body={first}\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{SDP}",
                u = jid(user),
                len = SDP.len()
            );
            chat.call_id = call_id.clone();
            chat.edge_tag = name.clone();
            chat.edge_cseq = 1;
            self.chat_by_call.insert(call_id, n);
            self.chats.push(chat);
            let conn = self.conns[n % self.conns.len()];
            self.send(conn, raw.into_bytes());
        } else {
            self.chats.push(chat);
            let to = lcs_jid(&name);
            self.clients[user].command(
                json!({"op": "send", "to": to, "body": format!("{name} opens"), "id": name}),
            );
        }
        Some(n)
    }

    /// One message in a live chat picked at random, from the edge or from the user.
    fn chat_message(&mut self) {
        let live: Vec<usize> = (0..self.chats.len())
            .filter(|&n| self.chats[n].live())
            .collect();
        if live.is_empty() || self.conns.is_empty() {
            return;
        }
        let n = live[self.rng.up_to(live.len() as u32 - 1) as usize];
        let body = format!("w{}", self.steps);
        if self.rng.up_to(1) == 0 {
            self.edge_says(n, &body);
        } else {
            self.user_says(n, &body);
        }
    }

    /// The edge's in-dialog request `method` in chat `n`, on one of its connections.
    fn edge_request(&mut self, n: usize, method: &str, body: &str) {
        if self.conns.is_empty() {
            return;
        }
        let conn = self.conns[self.rng.up_to(self.conns.len() as u32 - 1) as usize];
        let c = &mut self.chats[n];
        c.edge_cseq += 1;
        let name = c.name(n);
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: text/plain; charset=UTF-8\r\n".into()
        };
        let raw = format!(
            "{method} {t} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bK{name}c{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{name}@{LCS_DOMAIN}>;tag={etag}\r\n\
             To: <sip:{u}>;tag={btag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{ct}\
             Content-Length: {len}\r\n\r\n{body}",
            t = c.bridge_target,
            etag = c.edge_tag,
            u = jid(c.user),
            btag = c.bridge_tag.as_deref().unwrap_or_default(),
            cid = c.call_id,
            cseq = c.edge_cseq,
            len = body.len()
        );
        self.send(conn, raw.into_bytes());
    }

    fn edge_says(&mut self, n: usize, body: &str) {
        self.edge_request(n, "MESSAGE", body);
    }

    fn user_says(&mut self, n: usize, body: &str) {
        let c = &self.chats[n];
        let to = lcs_jid(&c.name(n));
        let user = c.user;
        self.clients[user].command(json!({"op": "send", "to": to, "body": body, "id": body}));
    }

    /// The edge ends chat `n` with BYE.
    fn end_chat(&mut self, n: usize) {
        self.chats[n].ending = true;
        self.edge_request(n, "BYE", "");
    }

    /// A new watcher subscribes; its number.
    fn subscribe_in(&mut self) -> Option<usize> {
        let &conn = self
            .conns
            .get(self.watchers.len() % self.conns.len().max(1))?;
        let i = self.watchers.len();
        let user = i % USERS.len();
        let call_id = format!("crash-w{i}@{LCS_DOMAIN}");
        let raw = format!(
            "SUBSCRIBE sip:{u} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKw{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:w{i}@{LCS_DOMAIN}>;tag=w{i}\r\nTo: <sip:{u}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{i}@{EDGE_HOST};transport=tls>\r\n\
             Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
            u = jid(user)
        );
        self.by_call.insert(call_id.clone(), i);
        self.watchers.push(Watcher {
            user,
            call_id,
            sent_in: self.run,
            ..Watcher::default()
        });
        self.send(conn, raw.into_bytes());
        Some(i)
    }

    /// A watcher picked at random among the acknowledged ones unsubscribes, in its dialog;
    /// its number.
    fn unsubscribe(&mut self) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.watchers.len())
            .filter(|&i| {
                let w = &self.watchers[i];
                w.acked && !w.leaving && !w.unknown && w.tag.is_some()
            })
            .collect();
        if candidates.is_empty() || self.conns.is_empty() {
            return None;
        }
        let i = candidates[self.rng.up_to(candidates.len() as u32 - 1) as usize];
        let conn = self.conns[self.rng.up_to(self.conns.len() as u32 - 1) as usize];
        let w = &mut self.watchers[i];
        w.leaving = true;
        let raw = format!(
            "SUBSCRIBE {t} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKx{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:w{i}@{LCS_DOMAIN}>;tag=w{i}\r\nTo: <sip:{u}>;tag={tag}\r\n\
             Call-ID: {cid}\r\nCSeq: 2 SUBSCRIBE\r\nContact: <sip:w{i}@{EDGE_HOST};transport=tls>\r\n\
             Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
            t = w.target,
            u = jid(w.user),
            tag = w.tag.as_deref().unwrap_or_default(),
            cid = w.call_id
        );
        self.send(conn, raw.into_bytes());
        Some(i)
    }

    /// A local user subscribes to a new LCS contact, from its XMPP client.
    fn subscribe_out(&mut self) {
        let k = self.contacts.len();
        let user = k % USERS.len();
        self.contacts.push(Contact {
            user,
            seen: false,
            approved: false,
            shown: Vec::new(),
        });
        let to = lcs_jid(&format!("o{k}"));
        self.clients[user].command(json!({"op": "presence", "to": to, "type": "subscribe"}));
    }

    /// Carol answers every request she has, at once; the watchers answered.
    fn carol_approves(&mut self) -> Vec<usize> {
        let batch = std::mem::take(&mut self.carol_pending);
        for &i in &batch {
            if let Some(w) = self.watchers.get_mut(i) {
                w.asked = true;
            }
            let to = lcs_jid(&format!("w{i}"));
            self.clients[CAROL].command(json!({"op": "presence", "to": to, "type": "subscribed"}));
        }
        batch
    }

    // ------------------------------------------------------------------ the edge's answers

    fn request(&mut self, conn: usize, m: &Message) {
        match m.method() {
            Some(Method::Notify) => self.notify(conn, m),
            Some(Method::Subscribe) => self.bridge_subscribe(conn, m),
            Some(Method::Invite) => self.bridge_invite(conn, m),
            Some(Method::Message | Method::Bye) => self.chat_request(conn, m),
            Some(Method::Ack) => {
                if let Some(&n) = self.chat_by_call.get(m.call_id().unwrap_or_default()) {
                    self.chats[n].acked = true;
                }
            }
            Some(other) if other.as_str() == "BENOTIFY" => {}
            _ => self.respond(conn, m, 200, None),
        }
    }

    /// A NOTIFY to a watcher, checked as the watcher's user agent would.
    fn notify(&mut self, conn: usize, m: &Message) {
        self.notifies += 1;
        let call_id = m.call_id().unwrap_or_default();
        let Some(&i) = self.by_call.get(call_id) else {
            return self.respond(conn, m, 481, None);
        };
        let w = &self.watchers[i];
        let state = m
            .header("Subscription-State")
            .unwrap_or_default()
            .to_owned();
        let terminated = state.starts_with("terminated");
        if w.removed || w.unknown {
            // The edge ended that dialog. A NOTIFY sent before the unsubscription may still
            // arrive after its 200, on another connection; one from a later bridge process
            // is a removed subscription brought back.
            if !terminated && w.removed && w.removed_in != self.run {
                let what = format!(
                    "w{i}: NOTIFY {state:?} from bridge run {} after its unsubscription was \
                     answered 200 by run {}",
                    self.run, w.removed_in
                );
                self.error(what);
            }
            let status = if terminated { 200 } else { 481 };
            return self.respond(conn, m, status, None);
        }
        let from_tag = m.from().ok().and_then(|f| f.tag().map(str::to_owned));
        let to_tag = m.to().ok().and_then(|t| t.tag().map(str::to_owned));
        if to_tag.as_deref() != Some(&format!("w{i}")) || from_tag.is_none() {
            let what = format!("w{i}: NOTIFY with tags {from_tag:?}/{to_tag:?}");
            self.error(what);
            return self.respond(conn, m, 481, None);
        }
        if w.tag.is_some() && w.tag != from_tag {
            let what = format!(
                "w{i}: NOTIFY in another dialog: tag {from_tag:?}, the 202 had {:?}",
                w.tag
            );
            self.error(what);
            return self.respond(conn, m, 481, None);
        }
        let cseq = m.cseq().map(|c| c.number).unwrap_or(0);
        if let Some(last) = w.cseq.filter(|&last| cseq <= last) {
            let what = format!(
                "w{i}: NOTIFY with CSeq {cseq} after CSeq {last} in the same dialog (bridge run {})",
                self.run
            );
            self.error(what);
            return self.respond(conn, m, 500, Some("Invalid CSeq"));
        }
        let note = net::child_text(m.body(), "note")
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let run = self.run;
        let w = &mut self.watchers[i];
        w.tag = from_tag;
        w.cseq = Some(cseq);
        w.notes.push(note);
        w.notified_by = match w.notified_by {
            (r, n) if r == run => (r, n + 1),
            _ => (run, 1),
        };
        if state.starts_with("active") {
            w.approved = true;
            w.active_by = run;
        }
        let count = w.notified_by.1;
        if count > MAX_NOTIFIES {
            self.error(format!(
                "w{i}: {count} NOTIFYs from bridge run {run} (a storm?)"
            ));
        }
        self.respond(conn, m, 200, None);
    }

    /// The bridge subscribes to an LCS contact: 202, then a NOTIFY `active` with a note naming
    /// the bridge process, so that what the user is shown can be told apart per run.
    fn bridge_subscribe(&mut self, conn: usize, m: &Message) {
        let call_id = m.call_id().unwrap_or_default().to_owned();
        if m.to().is_ok_and(|t| t.tag().is_some()) {
            // A refresh, or `Expires: 0` ending it.
            if m.expires().ok().flatten() == Some(0) {
                self.out_dialogs.remove(&call_id);
            }
            return self.respond(conn, m, 200, None);
        }
        let to = m.header("To").unwrap_or_default().to_owned();
        let Some(k) = number_in(uri_of(&to), "o").filter(|&k| k < self.contacts.len()) else {
            let what = format!("SUBSCRIBE to an unexpected contact {to:?}");
            self.error(what);
            return self.respond(conn, m, 404, None);
        };
        self.contacts[k].seen = true;
        self.accepted += 1;
        let n = self.accepted;
        let mut r = Message::response_to(m, 202, None, Some(&format!("o{n}")));
        r.push_header("Contact", &format!("<sip:o{k}@{EDGE_HOST};transport=tls>"));
        r.push_header("Expires", m.header("Expires").unwrap_or("3600"));
        self.send(conn, r.to_bytes());
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
             entity=\"sip:o{k}@{LCS_DOMAIN}\"><tuple id=\"0\"><status><basic>open</basic></status>\
             <note>o{k} run {run}</note></tuple></presence>",
            run = self.run
        );
        // In the new dialog: From is the SUBSCRIBE's To with our tag, To its From.
        let raw = format!(
            "NOTIFY {t} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bKo{n}\r\n\
             Max-Forwards: 70\r\nFrom: {to};tag=o{n}\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 NOTIFY\r\nContact: <sip:o{k}@{EDGE_HOST};transport=tls>\r\nEvent: presence\r\n\
             Subscription-State: active;expires=3600\r\nContent-Type: application/pidf+xml\r\n\
             Content-Length: {len}\r\n\r\n{body}",
            t = uri_of(m.header("Contact").unwrap_or_default()),
            from = m.header("From").unwrap_or_default(),
            len = body.len()
        );
        self.out_dialogs.insert(call_id, k);
        self.send(conn, raw.into_bytes());
    }

    /// The bridge opens a chat for a user's message to `x<n>`: 200 with the SDP answer.
    fn bridge_invite(&mut self, conn: usize, m: &Message) {
        let call_id = m.call_id().unwrap_or_default().to_owned();
        let to = m.header("To").unwrap_or_default().to_owned();
        let Some(n) = number_in(uri_of(&to), "x").filter(|&n| n < self.chats.len()) else {
            let what = format!("INVITE to an unexpected user {to:?}");
            self.error(what);
            return self.respond(conn, m, 404, None);
        };
        let c = &self.chats[n];
        if c.by_edge || m.to().is_ok_and(|t| t.tag().is_some()) {
            let what = format!("x{n}: an unexpected INVITE {to:?}");
            self.error(what);
            return self.respond(conn, m, 488, None);
        }
        if c.live() {
            // The stored dialog should have been used.
            let what = format!(
                "x{n}: a new INVITE from bridge run {} for an acknowledged chat (opened in run {})",
                self.run, c.opened_in
            );
            self.error(what);
        }
        self.accepted += 1;
        let tag = format!("x{n}t{}", self.accepted);
        let mut r = Message::response_to(m, 200, None, Some(&tag));
        r.push_header("Contact", &format!("<sip:x{n}@{EDGE_HOST};transport=tls>"));
        r.set_body(Some("application/sdp"), SDP.as_bytes().to_vec());
        let c = &mut self.chats[n];
        if !c.call_id.is_empty() {
            self.chat_by_call.remove(&c.call_id);
        }
        c.call_id = call_id.clone();
        c.edge_tag = tag;
        c.bridge_tag = m.from().ok().and_then(|f| f.tag().map(str::to_owned));
        c.bridge_target = uri_of(m.header("Contact").unwrap_or_default()).to_owned();
        c.edge_cseq = 0;
        c.bridge_cseq = m.cseq().map(|c| c.number).unwrap_or(0);
        c.opened_in = self.run;
        self.chat_by_call.insert(call_id, n);
        self.send(conn, r.to_bytes());
    }

    /// A MESSAGE or BYE from the bridge in a chat, checked as the LCS user's agent would: its
    /// dialog must be one the edge has open, its CSeq above the last one (RFC 3261 §12.2.2).
    fn chat_request(&mut self, conn: usize, m: &Message) {
        let call_id = m.call_id().unwrap_or_default();
        let method = m.method().cloned();
        let Some(&n) = self.chat_by_call.get(call_id) else {
            let what = format!("{method:?} in no chat the edge knows: {call_id}");
            self.error(what);
            return self.respond(conn, m, 481, None);
        };
        let run = self.run;
        let c = &self.chats[n];
        let name = c.name(n);
        let cseq = m.cseq().map(|c| c.number).unwrap_or(0);
        let from_tag = m.from().ok().and_then(|f| f.tag().map(str::to_owned));
        let to_tag = m.to().ok().and_then(|t| t.tag().map(str::to_owned));
        if c.ended || c.unknown {
            if method == Some(Method::Message) && c.ended {
                let what = format!("{name}: MESSAGE from bridge run {run} after the edge's BYE");
                self.error(what);
            }
            return self.respond(conn, m, 481, None);
        }
        if to_tag.as_deref() != Some(&c.edge_tag) || from_tag != c.bridge_tag {
            let what = format!(
                "{name}: {method:?} with tags {from_tag:?}/{to_tag:?}, the dialog's are {:?}/{:?}",
                c.bridge_tag, c.edge_tag
            );
            self.error(what);
            return self.respond(conn, m, 481, None);
        }
        if cseq <= c.bridge_cseq {
            let what = format!(
                "{name}: {method:?} with CSeq {cseq} after CSeq {} in the same dialog (bridge run {run})",
                c.bridge_cseq
            );
            self.error(what);
            return self.respond(conn, m, 500, Some("Invalid CSeq"));
        }
        let c = &mut self.chats[n];
        c.bridge_cseq = cseq;
        if method == Some(Method::Bye) {
            // The bridge ends chats only for a failure or after an hour idle: neither here.
            c.ended = true;
            let what = format!("{name}: BYE from bridge run {run}");
            self.error(what);
        } else {
            c.from_user
                .push(String::from_utf8_lossy(m.body()).into_owned());
        }
        self.respond(conn, m, 200, None);
    }

    /// The bridge's answer to the edge's INVITE, MESSAGE or BYE in chat `n`.
    fn chat_response(
        &mut self,
        conn: usize,
        n: usize,
        m: &Message,
        status: u16,
        cseq: u32,
        method: &Method,
    ) {
        if status < 200 {
            return;
        }
        let name = self.chats[n].name(n);
        match (method, status) {
            (Method::Invite, 200) => {
                let c = &mut self.chats[n];
                c.bridge_tag = m.to().ok().and_then(|t| t.tag().map(str::to_owned));
                c.bridge_target = uri_of(m.header("Contact").unwrap_or_default()).to_owned();
                c.acked = true;
                let raw = format!(
                    "ACK {t} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE_HOST};branch=z9hG4bK{name}a\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:{name}@{LCS_DOMAIN}>;tag={etag}\r\n\
                     To: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                    t = c.bridge_target,
                    etag = c.edge_tag,
                    to = m.header("To").unwrap_or_default(),
                    cid = c.call_id
                );
                self.send(conn, raw.into_bytes());
            }
            (Method::Message, 200) => self.chats[n].answers.push((cseq, status)),
            (Method::Bye, 200) => self.chats[n].ended = true,
            _ => {
                let what = format!(
                    "{name}: {status} {} to the edge's {method} (bridge run {})",
                    m.reason().unwrap_or_default(),
                    self.run
                );
                self.error(what);
            }
        }
    }

    fn response(&mut self, conn: usize, m: &Message) {
        let call_id = m.call_id().unwrap_or_default();
        let (status, cseq) = (m.status().unwrap_or(0), m.cseq().ok());
        let Some(cseq) = cseq else {
            return self.error(format!("a response without CSeq: {status}"));
        };
        if let Some(&n) = self.chat_by_call.get(call_id) {
            return self.chat_response(conn, n, m, status, cseq.number, &cseq.method);
        }
        if cseq.method == Method::Notify {
            let Some(&k) = self.out_dialogs.get(call_id) else {
                return;
            };
            if status == 200 {
                self.contacts[k].approved = true;
            } else {
                self.error(format!("o{k}: {status} to the edge's NOTIFY"));
            }
            return;
        }
        let Some(&i) = self.by_call.get(call_id) else {
            return self.error(format!(
                "a response in no dialog of the edge: {status} {call_id}"
            ));
        };
        let run = self.run;
        let w = &mut self.watchers[i];
        match (status, cseq.number) {
            (202, 1) => {
                let tag = m.to().ok().and_then(|t| t.tag().map(str::to_owned));
                if w.tag.is_some() && w.tag != tag {
                    let what = format!(
                        "w{i}: the 202's tag {tag:?} is not the NOTIFY's {:?}",
                        w.tag
                    );
                    return self.error(what);
                }
                w.tag = tag;
                w.target = uri_of(m.header("Contact").unwrap_or_default()).to_owned();
                w.acked = true;
            }
            (200, 2) => {
                w.removed = true;
                w.removed_in = run;
            }
            _ => {
                let what = format!(
                    "w{i}: {status} {} to SUBSCRIBE (CSeq {})",
                    m.reason().unwrap_or_default(),
                    cseq.number
                );
                self.error(what);
            }
        }
    }

    // ------------------------------------------------------------------ the bridge's life

    /// Kills the bridge at a moment of one of four kinds, picked at random: anywhere in the
    /// steady workload, or in a burst of new watchers, of Carol's approvals, of
    /// unsubscriptions or of new chats, right after the k-th of them was acknowledged (k at random) or up to
    /// 10 ms later, while the bridge is busy with the others: where a change acknowledged
    /// before it was stored would be lost. The kind.
    async fn kill_at_random(&mut self) -> &'static str {
        let kind = self.rng.up_to(4);
        let mut burst = Vec::new();
        match kind {
            1 => {
                for _ in 0..10 + self.rng.up_to(30) {
                    burst.extend(self.subscribe_in());
                }
            }
            2 => burst = self.carol_approves(),
            3 => {
                for _ in 0..10 {
                    burst.extend(self.unsubscribe());
                }
            }
            4 => {
                for _ in 0..6 + self.rng.up_to(10) {
                    burst.extend(self.open_chat());
                }
            }
            _ => {}
        }
        if !burst.is_empty() {
            let k = 1 + self.rng.up_to(burst.len() as u32 - 1) as usize;
            let acknowledged = |c: &Crash| {
                let done = burst.iter().filter(|&&i| {
                    if kind == 4 {
                        return c.chats[i].acked;
                    }
                    let w = &c.watchers[i];
                    [w.acked, w.approved, w.removed][kind as usize - 1]
                });
                done.count() >= k
            };
            self.pump(Duration::from_secs(5), None, acknowledged).await;
            if self.rng.up_to(1) == 0 {
                let later = Duration::from_micros(u64::from(self.rng.up_to(10_000)));
                self.pump(later, None, |_| false).await;
            }
        }
        self.kill().await;
        match (kind, burst.is_empty()) {
            (0, _) | (_, true) => "in the steady workload",
            (1, _) => "in a burst of subscriptions",
            (2, _) => "in a burst of approvals",
            (3, _) => "in a burst of unsubscriptions",
            _ => "in a burst of chats",
        }
    }

    /// Starts a bridge process on the same configuration and store; returns at once.
    fn spawn(&mut self) -> Instant {
        self.run += 1;
        // (A process killed early may not have logged its start-up line.)
        self.started_lines = self.bridge.count(STARTED);
        let log = self.dir.join("bridge.log");
        self.bridge = Bridge::start(&self.config, &log, self.sip_port);
        Instant::now()
    }

    /// Waits until the current process logs its start-up line (store open, restored, component
    /// link up, SIP edge listening), then connects the edge to it.
    async fn wait_started(&mut self, spawned: Instant) {
        let limit = Duration::from_secs(60);
        loop {
            let step = Duration::from_millis(100);
            if self
                .pump(step, None, |c| c.bridge.count(STARTED) > c.started_lines)
                .await
            {
                break;
            }
            if let Ok(Some(status)) = self.bridge.child.try_wait() {
                self.fail(&format!(
                    "bridge run {} exited by itself: {status}",
                    self.run
                ));
            }
            if spawned.elapsed() > limit {
                self.fail(&format!(
                    "bridge run {} did not start in {limit:?}",
                    self.run
                ));
            }
        }
        self.tally.slowest_start = self.tally.slowest_start.max(spawned.elapsed());
        self.conns.clear();
        for _ in 0..2 {
            let conn = self.next_conn;
            self.next_conn += 1;
            if let Err(e) = net::connect_sip(
                self.sip_addr(),
                self.tls.connector.clone(),
                conn,
                self.events_tx.clone(),
            )
            .await
            {
                self.fail(&format!("the edge cannot connect to the bridge: {e}"));
            }
            self.conns.push(conn);
        }
        let conns = self.conns.clone();
        if !self
            .pump(Duration::from_secs(10), None, |c| {
                conns.iter().all(|id| c.sip.contains_key(id))
            })
            .await
        {
            self.fail("the edge's TLS connections to the bridge did not come up");
        }
    }

    fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    /// SIGKILL, then everything the dead process had written to its connections is read (it
    /// was sent before the kill: it counts).
    async fn kill(&mut self) {
        self.bridge.child.kill().unwrap(); // SIGKILL
        let status = self.bridge.child.wait().unwrap();
        if std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
            self.fail(&format!(
                "bridge run {} ended with {status}, not by SIGKILL",
                self.run
            ));
        }
        self.tally.kills += 1;
        self.conns.clear();
        self.pump(Duration::from_secs(5), None, |c| c.sip.is_empty())
            .await;
        self.sip.clear();
        let run = self.run;
        self.tally.unanswered += self
            .watchers
            .iter()
            .filter(|w| w.sent_in == run && !w.acked)
            .count();
        // An unsubscription unanswered at the kill may or may not have happened.
        for w in &mut self.watchers {
            if w.leaving && !w.removed {
                w.unknown = true;
            }
        }
        for c in &mut self.chats {
            if c.ending && !c.ended {
                c.unknown = true;
            }
        }
    }

    // ------------------------------------------------------------------ the checks

    /// Opens the dead bridge's store and checks every acknowledged change.
    fn check_store(&mut self) {
        let path = sled_dir(&self.dir.join("store"));
        let store = match SledStore::open(&path) {
            Ok(s) => s,
            Err(e) => self.fail(&format!(
                "kill {}: the store does not open: {e}",
                self.tally.kills
            )),
        };
        let mut stored: BTreeMap<(Direction, String, String), Subscription> = BTreeMap::new();
        for r in store.subscriptions() {
            match r {
                Ok(s) => {
                    stored.insert((s.direction, s.local_jid.clone(), s.remote_aor.clone()), s);
                }
                Err(e) => self.fail(&format!(
                    "kill {}: a record does not decode: {e}",
                    self.tally.kills
                )),
            }
        }
        let mut chats_stored: BTreeMap<(String, String), ImDialog> = BTreeMap::new();
        for r in store.im_dialogs() {
            match r {
                Ok(d) => {
                    chats_stored.insert((d.local_jid.clone(), d.remote_aor.clone()), d);
                }
                Err(e) => self.fail(&format!(
                    "kill {}: an IM dialog does not decode: {e}",
                    self.tally.kills
                )),
            }
        }
        let corrupt = store.stats().map(|s| s.corrupt);
        if !matches!(corrupt, Ok(0)) {
            self.fail(&format!(
                "kill {}: store stats: corrupt {corrupt:?}",
                self.tally.kills
            ));
        }
        drop(store);
        let now = unix_now();
        let mut problems = Vec::new();
        for (i, w) in self.watchers.iter().enumerate() {
            if !w.acked || w.unknown {
                continue;
            }
            let remote = format!("sip:w{i}@{LCS_DOMAIN}");
            let got = stored.get(&(Direction::Inbound, jid(w.user), remote.clone()));
            if w.removed {
                self.tally.removed_checked += 1;
                if got.is_some() {
                    problems.push(format!("w{i}: unsubscribed (200) but stored"));
                }
                continue;
            }
            self.tally.acked_checked += 1;
            let Some(s) = got else {
                problems.push(format!(
                    "w{i} (of {}): acknowledged (202) but not stored",
                    jid(w.user)
                ));
                continue;
            };
            let Some(d) = &s.dialog else {
                problems.push(format!("w{i}: stored without its dialog"));
                continue;
            };
            let want = (
                w.call_id.as_str(),
                w.tag.as_deref().unwrap_or_default(),
                format!("w{i}"),
                remote.as_str(),
                format!("sip:w{i}@{EDGE_HOST};transport=tls"),
                format!("sip:{}", jid(w.user)),
            );
            let got = (
                d.call_id.as_str(),
                d.local_tag.as_str(),
                d.remote_tag.clone(),
                d.remote_uri.as_str(),
                d.remote_target.clone(),
                d.local_uri.clone(),
            );
            if got != want {
                problems.push(format!(
                    "w{i}: stored dialog {got:?}, the edge's is {want:?}"
                ));
            }
            // The edge sent CSeq 1 only; the stored local CSeq covers every NOTIFY it got.
            let seen = w.cseq.unwrap_or(0);
            if d.remote_cseq != Some(1) || d.local_cseq < seen {
                problems.push(format!(
                    "w{i}: stored CSeqs {:?}/{}, the edge sent 1 and got NOTIFYs up to {seen}",
                    d.remote_cseq, d.local_cseq
                ));
            }
            if s.expires_unix <= now {
                problems.push(format!(
                    "w{i}: stored as expired ({} <= {now})",
                    s.expires_unix
                ));
            }
            if w.approved && (s.approval != Approval::Approved || s.state != SubState::Active) {
                problems.push(format!(
                    "w{i}: its NOTIFY active reached the edge but it is stored {:?}/{:?}",
                    s.approval, s.state
                ));
            }
        }
        for (k, c) in self.contacts.iter().enumerate() {
            if !c.seen {
                continue;
            }
            self.tally.outbound_checked += 1;
            let key = (
                Direction::Outbound,
                jid(c.user),
                format!("sip:o{k}@{LCS_DOMAIN}"),
            );
            match stored.get(&key) {
                None => problems.push(format!(
                    "o{k}: its SUBSCRIBE reached the edge but it is not stored"
                )),
                Some(s) if c.approved && s.approval != Approval::Approved => {
                    problems.push(format!(
                        "o{k}: the edge's NOTIFY active was answered 200 but it is stored {:?}",
                        s.approval
                    ))
                }
                Some(_) => {}
            }
        }
        // Every acknowledged chat not ended: stored with the edge's dialog and a local CSeq at
        // or above every request the edge got in it.
        for (n, c) in self.chats.iter().enumerate() {
            if !c.live() {
                continue;
            }
            self.tally.chats_stored += 1;
            let name = c.name(n);
            let key = (jid(c.user), format!("sip:{name}@{LCS_DOMAIN}"));
            let Some(d) = chats_stored.get(&key).map(|r| &r.dialog) else {
                problems.push(format!(
                    "{name} (with {}): acknowledged chat not stored",
                    jid(c.user)
                ));
                continue;
            };
            let want = (
                c.call_id.as_str(),
                c.bridge_tag.as_deref().unwrap_or_default(),
                c.edge_tag.as_str(),
                format!("sip:{}", jid(c.user)),
                key.1.clone(),
                format!("sip:{name}@{EDGE_HOST};transport=tls"),
            );
            let got = (
                d.call_id.as_str(),
                d.local_tag.as_str(),
                d.remote_tag.as_str(),
                d.local_uri.clone(),
                d.remote_uri.clone(),
                d.remote_target.clone(),
            );
            if got != want {
                problems.push(format!(
                    "{name}: stored dialog {got:?}, the edge's is {want:?}"
                ));
            }
            if d.local_cseq < c.bridge_cseq {
                problems.push(format!(
                    "{name}: stored local CSeq {}, the edge got requests up to {}",
                    d.local_cseq, c.bridge_cseq
                ));
            }
        }
        for ((local, remote), d) in &chats_stored {
            let ok = self
                .chat_by_call
                .get(&d.dialog.call_id)
                .map(|&n| (n, &self.chats[n]))
                .is_some_and(|(n, c)| {
                    jid(c.user) == *local && *remote == format!("sip:{}@{LCS_DOMAIN}", c.name(n))
                });
            if !ok {
                problems.push(format!(
                    "IM dialog stored but never opened: {local} {remote} {}",
                    d.dialog.call_id
                ));
            }
        }
        // Nothing the workload did not ask for.
        for (direction, local, remote) in stored.keys() {
            let ok = match direction {
                Direction::Inbound => number_in(remote, "w")
                    .and_then(|i| self.watchers.get(i))
                    .is_some_and(|w| jid(w.user) == *local),
                Direction::Outbound => number_in(remote, "o")
                    .and_then(|k| self.contacts.get(k))
                    .is_some_and(|c| jid(c.user) == *local),
            };
            if !ok {
                problems.push(format!(
                    "stored but never asked for: {direction:?} {local} {remote}"
                ));
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            problems.truncate(20);
            self.fail(&format!(
                "kill {}: {n} problems in the store:\n{}",
                self.tally.kills,
                problems.join("\n")
            ));
        }
    }

    /// After a restart, presence flows: every approved watcher gets a NOTIFY from the new
    /// process in its old dialog (the restored state), the watchers of user `u` one carrying
    /// the change `u` now makes, and every approved contact, subscribed again by the new
    /// process, shows its user the note of the edge's NOTIFY to that process.
    async fn check_presence_flows(&mut self, u: usize) {
        let note = format!("after kill {}", self.tally.kills);
        self.clients[u].command(json!({"op": "presence", "show": "away", "status": note}));
        let run = self.run;
        // Approved or not before the kill: alice and bob approve every request, Carol those she
        // has answered (and, from now on, every request at once).
        let watchers: Vec<usize> = (0..self.watchers.len())
            .filter(|&i| {
                let w = &self.watchers[i];
                let answered = w.user != CAROL || w.asked || w.approved;
                w.acked && !w.leaving && !w.unknown && answered
            })
            .collect();
        let contacts: Vec<usize> = (0..self.contacts.len())
            .filter(|&k| self.contacts[k].approved)
            .collect();
        // What has not flowed yet.
        let missing = |c: &Crash| -> Vec<String> {
            let watchers = watchers.iter().filter_map(|&i| {
                let w = &c.watchers[i];
                let restored = w.active_by == run;
                let changed = w.user != u || w.notes.contains(&note);
                (!restored || !changed)
                    .then(|| format!("w{i} of {} (notes {:?})", jid(w.user), w.notes))
            });
            let contacts = contacts.iter().filter_map(|&k| {
                let want = format!("o{k} run {run}");
                let shown = &c.contacts[k].shown;
                (!shown.contains(&want)).then(|| format!("o{k} (shown {shown:?})"))
            });
            watchers.chain(contacts).collect()
        };
        let limit = Duration::from_secs(30);
        let began = Instant::now();
        let flowed = loop {
            let step = Duration::from_millis(50);
            if self
                .pump(step, None, |c| {
                    !c.errors.is_empty() || missing(c).is_empty()
                })
                .await
            {
                break true;
            }
            if began.elapsed() > limit {
                break false;
            }
            // The restarted bridge asks Carol again for the requests she had not answered.
            self.carol_approves();
        };
        let kills = self.tally.kills;
        if !self.errors.is_empty() {
            self.fail(&format!("after kill {kills}: the edge saw errors"));
        }
        if !flowed {
            let mut gone = missing(self);
            let n = gone.len();
            gone.truncate(10);
            self.fail(&format!(
                "after kill {kills}: presence does not flow in {limit:?} ({} acknowledged watchers \
                 and {} approved contacts; {} changed to {note:?}), {n} missing:\n{}",
                watchers.len(),
                contacts.len(),
                jid(u),
                gone.join("\n")
            ));
        }
        self.tally.notified += watchers.len();
        self.tally.shown += contacts.len();
    }
}

impl Crash {
    /// After a restart, in every acknowledged chat not ended: the edge's MESSAGE is answered
    /// 200 and reaches the user in the chat's thread, the user's message reaches the edge in
    /// the old dialog (`chat_request` checks dialog and CSeq). Then the edge ends about a
    /// third of them with BYE.
    async fn check_chats_flow(&mut self) {
        let kill = self.tally.kills;
        let chats: Vec<usize> = (0..self.chats.len())
            .filter(|&n| self.chats[n].live())
            .collect();
        let mut wanted = Vec::new();
        for &n in &chats {
            let (to_user, to_edge) = (format!("e{n}k{kill}"), format!("u{n}k{kill}"));
            self.edge_says(n, &to_user);
            let cseq = self.chats[n].edge_cseq;
            self.user_says(n, &to_edge);
            wanted.push((n, cseq, to_user, to_edge));
        }
        let missing = |c: &Crash| -> Vec<String> {
            wanted
                .iter()
                .filter_map(|(n, cseq, to_user, to_edge)| {
                    let chat = &c.chats[*n];
                    let answered = chat.answers.iter().any(|(s, _)| s == cseq);
                    let shown = chat
                        .shown
                        .iter()
                        .any(|(b, thread)| b == to_user && *thread == chat.call_id);
                    let reached = chat.from_user.contains(to_edge);
                    (!answered || !shown || !reached).then(|| {
                        format!(
                            "{} of {}: 200 to the edge's MESSAGE {answered}, shown to the user in \
                             its thread {shown}, the user's reached the edge {reached} (shown {:?})",
                            chat.name(*n),
                            jid(chat.user),
                            chat.shown.iter().rev().take(3).collect::<Vec<_>>()
                        )
                    })
                })
                .collect()
        };
        let limit = Duration::from_secs(30);
        let began = Instant::now();
        let flowed = loop {
            if self
                .pump(Duration::from_millis(50), None, |c| {
                    !c.errors.is_empty() || missing(c).is_empty()
                })
                .await
            {
                break true;
            }
            if began.elapsed() > limit {
                break false;
            }
        };
        if !self.errors.is_empty() {
            self.fail(&format!(
                "after kill {kill}: the edge saw errors in the chats"
            ));
        }
        if !flowed {
            let mut gone = missing(self);
            let n = gone.len();
            gone.truncate(10);
            self.fail(&format!(
                "after kill {kill}: chats do not flow in {limit:?} ({} live), {n} missing:\n{}",
                chats.len(),
                gone.join("\n")
            ));
        }
        self.tally.chats_flowed += chats.len();
        self.tally.slowest_chats = self.tally.slowest_chats.max(began.elapsed());
        for n in chats {
            if self.rng.up_to(2) == 0 {
                self.end_chat(n);
            }
        }
    }
}

#[test]
fn acknowledged_subscriptions_survive_sigkill() {
    let Some(python) = lcs_test_support::require_python_modules(&["slixmpp"]) else {
        return;
    };
    let Some(server) = Prosody::start() else {
        return;
    };
    let seed = std::env::var("LCS_BRIDGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(lcs_bridge::random::seed);
    let rounds: u32 = std::env::var("LCS_BRIDGE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    eprintln!("bridge_crash: seed {seed} (LCS_BRIDGE_CRASH_SEED={seed} replays the kill schedule)");
    let started = Instant::now();
    for user in USERS {
        server.register(user, ALICE_PASSWORD);
    }
    let tmp = tempfile::Builder::new()
        .prefix("lcsb-crash-")
        .tempdir()
        .unwrap();
    let keep = std::env::var_os("LCS_BRIDGE_CRASH_KEEP").is_some();
    let (dir, _cleanup) = if keep {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_owned(), Some(tmp))
    };

    let pki = Pki::new("Crash test CA");
    write_bridge_files(&dir, &pki, &["sip.xmpp.test", XMPP_DOMAIN, "127.0.0.1"]);
    let edge_leaf = pki.leaf(&["sip.contoso.com", LCS_DOMAIN, "127.0.0.1"], false);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = Tls::new(&edge_leaf, &pki.ca);
        let (partner_port, events_tx, events) = net::sip_partner(tls.acceptor.clone()).await;
        let sip_port = lcs_test_support::free_port();
        let config = dir.join("lcs-bridge.toml");
        let toml = BridgeConfig {
            extra: "[presence]\nnotify_min_interval_secs = 1\n",
            // No chat ends by itself while the test runs.
            im: "[im]\nsession_idle_secs = 3600\n".into(),
            // sled's debug lines would drown the bridge's own.
            log_level: "info,lcs_bridge=debug",
            ..BridgeConfig::new(
                &dir,
                Mode::Gateway,
                server.component_port(),
                sip_port,
                partner_port,
            )
        }
        .toml();
        std::fs::write(&config, toml).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut clients = Vec::new();
        for (u, user) in USERS.into_iter().enumerate() {
            let approve = if u == CAROL { None } else { Some("--approve") };
            let args: Vec<&str> = ["--timeout", "3600"].into_iter().chain(approve).collect();
            clients.push(XmppClient::start_with(&python, &dir, server.c2s_port(), user, &args));
        }
        for c in &mut clients {
            c.wait_for("online (logged in)", deadline, |e| e["event"] == "online");
        }
        let spawned = Instant::now();
        let bridge = Bridge::start(&config, &dir.join("bridge.log"), sip_port);
        let mut t = Crash {
            keep,
            prosody_log: server.dir().join("prosody.log"),
            rng: SplitMix::new(seed),
            seed,
            dir: dir.clone(),
            config,
            sip_port,
            bridge,
            run: 1,
            started_lines: 0,
            clients,
            events,
            events_tx,
            tls,
            sip: HashMap::new(),
            conns: Vec::new(),
            next_conn: FIRST_CLIENT_CONN,
            watchers: Vec::new(),
            by_call: HashMap::new(),
            contacts: Vec::new(),
            carol_pending: Vec::new(),
            out_dialogs: HashMap::new(),
            accepted: 0,
            chats: Vec::new(),
            chat_by_call: HashMap::new(),
            steps: 0,
            notifies: 0,
            errors: Vec::new(),
            tally: Tally::default(),
        };
        t.wait_started(spawned).await;
        for round in 1..=rounds {
            let run_for = Duration::from_millis(200 + u64::from(t.rng.up_to(1300)));
            t.pump(run_for, Some(RATE), |_| false).await;
            let moment = t.kill_at_random().await;
            *t.tally.moments.entry(moment).or_default() += 1;
            t.check_store();
            let mut spawned = t.spawn();
            if t.rng.up_to(3) == 0 {
                // Killed again while starting: opening the store, restoring, joining Prosody.
                let early = Duration::from_millis(u64::from(t.rng.up_to(600)));
                t.pump(early, None, |_| false).await;
                t.kill().await;
                t.tally.early_kills += 1;
                t.check_store();
                spawned = t.spawn();
            }
            t.wait_started(spawned).await;
            let check = Instant::now();
            t.check_presence_flows(round as usize % USERS.len()).await;
            t.tally.slowest_flow = t.tally.slowest_flow.max(check.elapsed());
            t.check_chats_flow().await;
            let live = t.watchers.iter().filter(|w| w.acked && !w.removed && !w.unknown).count();
            eprintln!(
                "round {round}: killed {moment} after {run_for:?}; {} watchers sent, {live} acknowledged and \
                 live, {} removed, {} contacts, {} chats ({} live); {} kills so far; presence and \
                 chats flowed {:?} after the start",
                t.watchers.len(),
                t.watchers.iter().filter(|w| w.removed).count(),
                t.contacts.iter().filter(|c| c.seen).count(),
                t.chats.len(),
                t.chats.iter().filter(|c| c.live()).count(),
                t.tally.kills,
                check.elapsed()
            );
        }
        let tally = &t.tally;
        eprintln!(
            "bridge_crash: seed {seed}: {} SIGKILLs ({} while starting; {:?}; {} SUBSCRIBEs \
             unanswered at the kills) in {:.1} s; checked after the kills: {} acknowledged subscriptions, {} \
             acknowledged removals, {} outbound subscriptions; after each restart, presence \
             flowed to {} watchers and {} contacts' users; {} NOTIFYs in all; slowest start {:?}, \
             slowest flow {:?}; chats: {} opened, {} acknowledged live ones checked in the store, \
             {} flowed both ways after a restart, slowest {:?}",
            tally.kills,
            tally.early_kills,
            tally.moments,
            tally.unanswered,
            started.elapsed().as_secs_f64(),
            tally.acked_checked,
            tally.removed_checked,
            tally.outbound_checked,
            tally.notified,
            tally.shown,
            t.notifies,
            tally.slowest_start,
            tally.slowest_flow,
            t.chats.len(),
            tally.chats_stored,
            tally.chats_flowed,
            tally.slowest_chats,
        );
        assert!(tally.kills >= rounds, "{} kills", tally.kills);
        assert!(
            rounds < ROUNDS
                || tally.acked_checked > 1000
                    && tally.removed_checked > 100
                    && tally.outbound_checked > 100
                    && tally.chats_stored > 100
                    && tally.chats_flowed > 100,
            "too little work between the kills"
        );
    });
}
