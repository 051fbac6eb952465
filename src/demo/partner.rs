//! The demo's simulated Lync partner (`contoso.test`): what its edge and its users decide,
//! sans-IO. It takes `(now, connection, message)` and the clock's ticks and returns the SIP
//! messages to send and one-line notes of what its users saw; `demo::partner_io` carries them
//! over mutual TLS.
//!
//! Its users accept every presence subscription (200, then a PIDF NOTIFY, RFC 6665 §4.2.1,
//! RFC 3863) and subscribe back to the watcher as a Lync user adding a contact would; they
//! change availability on a timer (a NOTIFY to every watcher); they accept chat INVITEs with
//! the profile's SDP answer (`m=message … sip/tcp *`) and answer every MESSAGE with a reply in
//! the same session. Requests in a dialog go on the dialog's connection (the profile's
//! connection affinity); new requests on any connection to the bridge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::core::im_text;
use crate::core::names;
use crate::core::pidf::{self, Basic, Note, PidfDocument};
use crate::sip::builder::RequestSpec;
use crate::sip::message::{Message, Method};
use crate::sip::sdp::Sdp;
use crate::sip::transaction::ConnId;

/// One of the partner's users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user part of the address (`joe` → `sip:joe@contoso.test`).
    pub name: String,
    /// The display name in PIDF and From.
    pub display: String,
}

/// What the partner is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The partner's SIP domain (`contoso.test`).
    pub domain: String,
    /// The Via sent-by and Contact host:port of its edge.
    pub sent_by: String,
    pub users: Vec<User>,
    /// How often the users' availability changes.
    pub change_every: Duration,
    /// Makes tags, branches and Call-IDs unique per run.
    pub seed: u64,
}

/// What the partner does.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A response, or a request in a dialog: on this connection.
    Send { conn: ConnId, message: Message },
    /// A request outside any dialog: on any connection to the bridge (a new one if none).
    ToBridge(Message),
    /// One line of what a user saw or did (e.g. `joe got "hi" from alice@localhost`).
    Note(String),
}

/// The availability cycle: (RFC 4480 activity, note, what the transcript calls it).
const STATES: &[(Option<&str>, Option<&str>, &str)] = &[
    (None, None, "Available"),
    (Some("away"), Some("Be right back"), "Away"),
    (Some("meeting"), None, "In a meeting"),
    (Some("busy"), Some("Writing the quarterly report"), "Busy"),
];

/// Longest text a reply quotes.
const QUOTE_CHARS: usize = 200;
/// Most dialogs of each kind kept (watchers, subscriptions, chat sessions).
const MAX_DIALOGS: usize = 1000;
/// What the partner grants a subscription and asks for its own.
const EXPIRES: u32 = 3600;

/// One dialog the partner is in.
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    local_tag: String,
    /// Unknown on the partner's own SUBSCRIBE until the answer (or the first NOTIFY).
    remote_tag: Option<String>,
    /// The partner user (index into `users`).
    user: usize,
    /// The other side's address (an XMPP user as the bridge names it).
    remote_uri: String,
    remote_target: String,
    /// The partner's last CSeq in the dialog.
    cseq: u32,
    conn: Option<ConnId>,
    /// The partner's own subscription: when to refresh it (90 % of what was granted).
    refresh_at: Option<Instant>,
}

/// The partner's edge and users.
pub struct Partner {
    settings: Settings,
    /// Each user's place in [`STATES`].
    state: Vec<usize>,
    next_change: Instant,
    /// The bridge's subscriptions to the partner's users, by Call-ID.
    watchers: BTreeMap<String, Dialog>,
    /// The partner's users' subscriptions to XMPP users, by Call-ID.
    watching: BTreeMap<String, Dialog>,
    /// Chat sessions, by Call-ID.
    sessions: BTreeMap<String, Dialog>,
    seq: u64,
}

impl Partner {
    pub fn new(settings: Settings, now: Instant) -> Partner {
        let state = (0..settings.users.len())
            .map(|i| i % STATES.len())
            .collect();
        Partner {
            next_change: now + settings.change_every,
            settings,
            state,
            watchers: BTreeMap::new(),
            watching: BTreeMap::new(),
            sessions: BTreeMap::new(),
            seq: 0,
        }
    }

    /// When [`Partner::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Instant {
        self.watching
            .values()
            .filter_map(|d| d.refresh_at)
            .fold(self.next_change, Instant::min)
    }

    /// The partner's own subscriptions refreshed when due; the users' availability moves on,
    /// told to every watcher.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Out> {
        let mut out = self.refresh(now);
        if now < self.next_change {
            return out;
        }
        self.next_change = now + self.settings.change_every;
        for user in 0..self.settings.users.len() {
            self.state[user] = (self.state[user] + 1) % STATES.len();
            let watchers: Vec<String> = self
                .watchers
                .values()
                .filter(|d| d.user == user)
                .map(|d| d.call_id.clone())
                .collect();
            if watchers.is_empty() {
                continue;
            }
            out.push(Out::Note(format!(
                "{} is now {}",
                self.aor_of(user),
                self.describe(user)
            )));
            for call_id in watchers {
                if let Some(n) = self.notify(&call_id, "active", EXPIRES) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// A message from the bridge on connection `conn`.
    pub fn handle(&mut self, now: Instant, conn: ConnId, m: &Message) -> Vec<Out> {
        if m.is_request() {
            self.request(conn, m)
        } else {
            self.response(now, conn, m)
        }
    }

    /// An in-dialog SUBSCRIBE for each of the partner's subscriptions due for a refresh.
    fn refresh(&mut self, now: Instant) -> Vec<Out> {
        let due: Vec<String> = self
            .watching
            .values()
            .filter(|d| d.refresh_at.is_some_and(|t| t <= now))
            .map(|d| d.call_id.clone())
            .collect();
        let mut out = Vec::new();
        for call_id in due {
            let branch = format!("z9hG4bK{}", self.next_id("b"));
            let Some(d) = self.watching.get_mut(&call_id) else {
                continue;
            };
            d.refresh_at = None;
            d.cseq += 1;
            let d = d.clone();
            let (Some(conn), Some(mut m)) =
                (d.conn, self.in_dialog(&d, Method::Subscribe, &branch))
            else {
                continue;
            };
            m.push_header("Event", "presence");
            m.push_header("Accept", "application/pidf+xml");
            m.push_header("Expires", &EXPIRES.to_string());
            out.push(Out::Send { conn, message: m });
        }
        out
    }

    /// The bridge's connection `conn` is gone: its dialogs are over (connection affinity).
    pub fn connection_lost(&mut self, conn: ConnId) {
        for map in [&mut self.watchers, &mut self.watching, &mut self.sessions] {
            map.retain(|_, d| d.conn != Some(conn));
        }
    }

    fn aor_of(&self, user: usize) -> String {
        format!(
            "{}@{}",
            self.settings.users[user].name, self.settings.domain
        )
    }

    fn uri_of(&self, user: usize) -> String {
        format!("sip:{}", self.aor_of(user))
    }

    fn contact_of(&self, user: usize) -> String {
        format!(
            "sip:{}@{};transport=tls",
            self.settings.users[user].name, self.settings.sent_by
        )
    }

    fn describe(&self, user: usize) -> String {
        let (_, note, name) = STATES[self.state[user]];
        match note {
            Some(n) => format!("{name} ({n})"),
            None => name.to_owned(),
        }
    }

    fn next_id(&mut self, kind: &str) -> String {
        self.seq += 1;
        format!("{kind}{:x}x{}", self.settings.seed, self.seq)
    }

    /// The user a Request-URI or To names: `Err(404)` for another domain or an unknown user.
    fn user_of(&self, uri: &str) -> Option<usize> {
        let (user, host) = aor_parts(uri)?;
        if !host.eq_ignore_ascii_case(&self.settings.domain) {
            return None;
        }
        self.settings
            .users
            .iter()
            .position(|u| u.name.eq_ignore_ascii_case(user))
    }

    fn reply(&self, conn: ConnId, m: &Message, status: u16, to_tag: Option<&str>) -> Out {
        Out::Send {
            conn,
            message: Message::response_to(m, status, None, to_tag),
        }
    }

    fn request(&mut self, conn: ConnId, m: &Message) -> Vec<Out> {
        let Some(method) = m.method().cloned() else {
            return Vec::new();
        };
        let call_id = m.call_id().unwrap_or("").to_owned();
        let in_dialog = m.to().ok().and_then(|t| t.tag().map(str::to_owned));
        match method {
            Method::Ack => Vec::new(),
            Method::Options => vec![self.reply(conn, m, 200, None)],
            Method::Subscribe => self.subscribe(conn, m, call_id, in_dialog),
            Method::Invite if in_dialog.is_none() => self.invite(conn, m, call_id),
            Method::Message => self.message(conn, m, &call_id),
            Method::Notify => self.notified(conn, m, &call_id),
            Method::Bye => {
                let ended = self.sessions.remove(&call_id);
                let mut out =
                    vec![self.reply(conn, m, if ended.is_some() { 200 } else { 481 }, None)];
                if let Some(d) = ended {
                    out.push(Out::Note(format!(
                        "{}'s chat with {} ended",
                        self.aor_of(d.user),
                        bare(&d.remote_uri)
                    )));
                }
                out
            }
            Method::Info => vec![self.reply(conn, m, 200, None)],
            _ => vec![self.reply(conn, m, 501, None)],
        }
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        m: &Message,
        call_id: String,
        in_dialog: Option<String>,
    ) -> Vec<Out> {
        let expires = m.expires().ok().flatten().unwrap_or(EXPIRES).min(EXPIRES);
        if let Some(tag) = in_dialog {
            // A refresh or an unsubscription in a watcher dialog.
            let known = self
                .watchers
                .get(&call_id)
                .is_some_and(|d| d.local_tag == tag && d.conn == Some(conn));
            if !known {
                return vec![self.reply(conn, m, 481, None)];
            }
            let mut response = Message::response_to(m, 200, None, None);
            response.push_header("Expires", &expires.to_string());
            let mut out = vec![Out::Send {
                conn,
                message: response,
            }];
            if expires == 0 {
                out.extend(self.notify(&call_id, "terminated", 0));
                if let Some(d) = self.watchers.remove(&call_id) {
                    out.push(Out::Note(format!(
                        "{} no longer watched by {}",
                        self.aor_of(d.user),
                        bare(&d.remote_uri)
                    )));
                }
            } else {
                out.extend(self.notify(&call_id, "active", expires));
            }
            return out;
        }
        let target = m.request_uri().unwrap_or("");
        let Some(user) = self.user_of(target) else {
            return vec![self.reply(conn, m, 404, None)];
        };
        let presence =
            matches!(m.event(), Ok(Some(e)) if e.package.eq_ignore_ascii_case("presence"));
        if !presence {
            return vec![self.reply(conn, m, 489, None)];
        }
        let (Ok(from), Some(contact)) = (m.from(), first_contact(m)) else {
            return vec![self.reply(conn, m, 400, None)];
        };
        let Some(remote_tag) = from.tag().map(str::to_owned) else {
            return vec![self.reply(conn, m, 400, None)];
        };
        if self.watchers.len() >= MAX_DIALOGS {
            return vec![self.reply(conn, m, 503, None)];
        }
        let remote_uri = from.uri.to_owned();
        let local_tag = self.next_id("t");
        let mut response = Message::response_to(m, 200, None, Some(&local_tag));
        response.push_header("Contact", &format!("<{}>", self.contact_of(user)));
        response.push_header("Expires", &expires.to_string());
        self.watchers.insert(
            call_id.clone(),
            Dialog {
                call_id: call_id.clone(),
                local_tag,
                remote_tag: Some(remote_tag),
                user,
                remote_uri: remote_uri.clone(),
                remote_target: contact,
                cseq: 0,
                conn: Some(conn),
                refresh_at: None,
            },
        );
        let mut out = vec![
            Out::Send {
                conn,
                message: response,
            },
            Out::Note(format!(
                "{} accepts {}'s subscription ({})",
                self.aor_of(user),
                bare(&remote_uri),
                self.describe(user)
            )),
        ];
        out.extend(self.notify(&call_id, "active", expires));
        // A Lync user adds the contact who added them.
        let watched = self
            .watching
            .values()
            .any(|d| d.user == user && d.remote_uri == remote_uri);
        if !watched && self.watching.len() < MAX_DIALOGS {
            out.push(self.subscribe_to(user, &remote_uri));
        }
        out
    }

    /// The partner user's own SUBSCRIBE to `remote_uri`.
    fn subscribe_to(&mut self, user: usize, remote_uri: &str) -> Out {
        let call_id = self.next_id("sub");
        let local_tag = self.next_id("t");
        let branch = format!("z9hG4bK{}", self.next_id("b"));
        let (from_uri, contact) = (self.uri_of(user), self.contact_of(user));
        let display = self.settings.users[user].display.clone();
        let mut m = RequestSpec {
            method: Method::Subscribe,
            request_uri: remote_uri,
            via_sent_by: &self.settings.sent_by,
            branch: &branch,
            from_display: Some(&display),
            from_uri: &from_uri,
            from_tag: &local_tag,
            to_display: None,
            to_uri: remote_uri,
            to_tag: None,
            call_id: &call_id,
            cseq: 1,
            contact: Some(&contact),
            route: &[],
        }
        .build();
        m.push_header("Event", "presence");
        m.push_header("Accept", "application/pidf+xml");
        m.push_header("Expires", &EXPIRES.to_string());
        self.watching.insert(
            call_id.clone(),
            Dialog {
                call_id,
                local_tag,
                remote_tag: None,
                user,
                remote_uri: remote_uri.to_owned(),
                remote_target: remote_uri.to_owned(),
                cseq: 1,
                conn: None,
                refresh_at: None,
            },
        );
        Out::ToBridge(m)
    }

    /// A NOTIFY in watcher dialog `call_id` with the user's current presence.
    fn notify(&mut self, call_id: &str, state: &str, expires: u32) -> Option<Out> {
        let branch = format!("z9hG4bK{}", self.next_id("b"));
        let d = self.watchers.get_mut(call_id)?;
        d.cseq += 1;
        let d = d.clone();
        let user = d.user;
        let (activity, note, _) = STATES[self.state[user]];
        let doc = PidfDocument {
            entity: self.uri_of(user),
            basic: Some(Basic::Open),
            activity: activity.map(str::to_owned),
            notes: note
                .map(|n| Note {
                    lang: None,
                    text: n.to_owned(),
                })
                .into_iter()
                .collect(),
            display_name: Some(self.settings.users[user].display.clone()),
            icon: None,
        };
        let mut m = self.in_dialog(&d, Method::Notify, &branch)?;
        m.push_header("Event", "presence");
        let state = if state == "terminated" {
            "terminated;reason=timeout".to_owned()
        } else {
            format!("{state};expires={expires}")
        };
        m.push_header("Subscription-State", &state);
        m.set_body(
            Some("application/pidf+xml"),
            pidf::render(&doc).into_bytes(),
        );
        Some(Out::Send {
            conn: d.conn?,
            message: m,
        })
    }

    fn in_dialog(&self, d: &Dialog, method: Method, branch: &str) -> Option<Message> {
        let from_uri = self.uri_of(d.user);
        let contact = self.contact_of(d.user);
        let display = &self.settings.users[d.user].display;
        Some(
            RequestSpec {
                method,
                request_uri: &d.remote_target,
                via_sent_by: &self.settings.sent_by,
                branch,
                from_display: Some(display),
                from_uri: &from_uri,
                from_tag: &d.local_tag,
                to_display: None,
                to_uri: &d.remote_uri,
                to_tag: Some(d.remote_tag.as_deref()?),
                call_id: &d.call_id,
                cseq: d.cseq,
                contact: Some(&contact),
                route: &[],
            }
            .build(),
        )
    }

    fn invite(&mut self, conn: ConnId, m: &Message, call_id: String) -> Vec<Out> {
        let Some(user) = m.request_uri().and_then(|u| self.user_of(u)) else {
            return vec![self.reply(conn, m, 404, None)];
        };
        let answer = Sdp::parse(m.body())
            .ok()
            .and_then(|offer| Sdp::message_answer(&offer, "127.0.0.1", self.seq + 1));
        let (Some(answer), Ok(from), Some(contact)) = (answer, m.from(), first_contact(m)) else {
            return vec![self.reply(conn, m, 488, None)];
        };
        let Some(remote_tag) = from.tag().map(str::to_owned) else {
            return vec![self.reply(conn, m, 400, None)];
        };
        if self.sessions.len() >= MAX_DIALOGS {
            return vec![self.reply(conn, m, 486, None)];
        }
        let remote_uri = from.uri.to_owned();
        let local_tag = self.next_id("t");
        let mut response = Message::response_to(m, 200, None, Some(&local_tag));
        response.push_header("Contact", &format!("<{}>", self.contact_of(user)));
        response.set_body(Some("application/sdp"), answer.to_string().into_bytes());
        self.sessions.insert(
            call_id.clone(),
            Dialog {
                call_id,
                local_tag,
                remote_tag: Some(remote_tag),
                user,
                remote_uri: remote_uri.clone(),
                remote_target: contact,
                cseq: 0,
                conn: Some(conn),
                refresh_at: None,
            },
        );
        vec![
            Out::Send {
                conn,
                message: response,
            },
            Out::Note(format!(
                "{} accepts a chat with {}",
                self.aor_of(user),
                bare(&remote_uri)
            )),
        ]
    }

    fn message(&mut self, conn: ConnId, m: &Message, call_id: &str) -> Vec<Out> {
        let content_type = m.header("Content-Type").unwrap_or("").trim();
        if content_type
            .get(..im_text::ISCOMPOSING_TYPE.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(im_text::ISCOMPOSING_TYPE))
        {
            return self.typing(conn, m, call_id);
        }
        let text = m
            .header("Content-Type")
            .map(|ct| im_text::plain_text(ct, m.body()));
        let text = match text {
            Some(Ok(t)) => t,
            Some(Err(_)) | None => return vec![self.reply(conn, m, 415, None)],
        };
        let Some(d) = self.sessions.get(call_id).cloned() else {
            // Page mode: taken, not answered.
            let from = m.from().map(|f| bare(f.uri)).unwrap_or_default();
            return vec![
                self.reply(conn, m, 200, None),
                Out::Note(format!("got {:?} from {from} (page mode)", quote(&text))),
            ];
        };
        if d.conn != Some(conn) {
            return vec![self.reply(conn, m, 481, None)];
        }
        let mut out = vec![
            self.reply(conn, m, 200, None),
            Out::Note(format!(
                "{} got {:?} from {}",
                self.aor_of(d.user),
                quote(&text),
                bare(&d.remote_uri)
            )),
        ];
        let branch = format!("z9hG4bK{}", self.next_id("b"));
        let first = self.settings.users[d.user]
            .display
            .split(' ')
            .next()
            .unwrap_or("")
            .to_owned();
        let answer = format!(
            "{first} here (Lync, contoso.test). You said: {}",
            quote(&text)
        );
        if let Some(s) = self.sessions.get_mut(call_id) {
            s.cseq += 1;
        }
        let Some(d) = self.sessions.get(call_id).cloned() else {
            return out;
        };
        if let Some(mut reply) = self.in_dialog(&d, Method::Message, &branch) {
            reply.set_body(
                Some("text/plain; charset=UTF-8"),
                answer.clone().into_bytes(),
            );
            out.push(Out::Send {
                conn,
                message: reply,
            });
            out.push(Out::Note(format!(
                "{} answers {:?}",
                self.aor_of(d.user),
                answer
            )));
        }
        out
    }

    /// An RFC 3994 isComposing MESSAGE in a session: taken (200), and what it says noted.
    fn typing(&self, conn: ConnId, m: &Message, call_id: &str) -> Vec<Out> {
        let Some(d) = self.sessions.get(call_id).filter(|d| d.conn == Some(conn)) else {
            return vec![self.reply(conn, m, 481, None)];
        };
        let what = match im_text::parse_iscomposing(m.body()) {
            Ok(im_text::Typing::Composing) => "is typing",
            Ok(_) => "stopped typing",
            Err(_) => return vec![self.reply(conn, m, 400, None)],
        };
        vec![
            self.reply(conn, m, 200, None),
            Out::Note(format!(
                "{} sees that {} {what}",
                self.aor_of(d.user),
                bare(&d.remote_uri)
            )),
        ]
    }

    fn notified(&mut self, conn: ConnId, m: &Message, call_id: &str) -> Vec<Out> {
        let Some(d) = self.watching.get_mut(call_id) else {
            return vec![self.reply(conn, m, 481, None)];
        };
        if d.remote_tag.is_none() {
            d.remote_tag = m.from().ok().and_then(|f| f.tag().map(str::to_owned));
        }
        if d.conn.is_none() {
            d.conn = Some(conn);
        }
        if let Some(c) = first_contact(m) {
            d.remote_target = c;
        }
        let d = d.clone();
        let state = m
            .subscription_state()
            .ok()
            .flatten()
            .map(|s| s.state.to_ascii_lowercase())
            .unwrap_or_default();
        let mut out = vec![self.reply(conn, m, 200, None)];
        let who = self.aor_of(d.user);
        let whom = bare(&d.remote_uri);
        if state == "terminated" {
            self.watching.remove(call_id);
            out.push(Out::Note(format!("{who}'s subscription to {whom} ended")));
            return out;
        }
        if m.body().is_empty() {
            if state == "pending" {
                out.push(Out::Note(format!("{who} waits for {whom}'s approval")));
            }
            return out;
        }
        let seen = match pidf::parse(m.body()) {
            Ok(doc) => describe_pidf(&doc),
            Err(e) => format!("an unreadable document ({e})"),
        };
        out.push(Out::Note(format!("{who} sees {whom}: {seen}")));
        out
    }

    fn response(&mut self, now: Instant, conn: ConnId, m: &Message) -> Vec<Out> {
        let Ok(cseq) = m.cseq() else {
            return Vec::new();
        };
        let call_id = m.call_id().unwrap_or("");
        let status = m.status().unwrap_or(0);
        let mut out = Vec::new();
        if cseq.method == Method::Subscribe {
            if let Some(d) = self.watching.get_mut(call_id) {
                if (200..300).contains(&status) {
                    d.conn.get_or_insert(conn);
                    let granted = m
                        .expires()
                        .ok()
                        .flatten()
                        .unwrap_or(EXPIRES)
                        .clamp(10, EXPIRES);
                    d.refresh_at = Some(now + Duration::from_secs(u64::from(granted) * 9 / 10));
                    if d.remote_tag.is_none() {
                        d.remote_tag = m.to().ok().and_then(|t| t.tag().map(str::to_owned));
                    }
                    if let Some(c) = first_contact(m) {
                        d.remote_target = c;
                    }
                } else if status >= 300 {
                    let d = d.clone();
                    self.watching.remove(call_id);
                    out.push(Out::Note(format!(
                        "{}'s subscription to {} refused: {status}",
                        self.aor_of(d.user),
                        bare(&d.remote_uri)
                    )));
                }
            }
        } else if status >= 300 {
            out.push(Out::Note(format!("{} answered {status}", cseq.method)));
        }
        out
    }
}

/// `user@host` of a URI.
fn bare(uri: &str) -> String {
    match aor_parts(uri) {
        Some((u, h)) => format!("{u}@{h}"),
        None => uri.to_owned(),
    }
}

/// The user and host of a `sip:` URI (no port or parameters).
fn aor_parts(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("sip:")?;
    let rest = rest.split([';', '?', '>']).next()?;
    let (user, host) = rest.split_once('@')?;
    let host = host.split(':').next()?;
    Some((user, host))
}

fn first_contact(m: &Message) -> Option<String> {
    match m.contact().ok()? {
        Some(crate::sip::header::Contact::Addresses(list)) => {
            list.first().map(|c| c.uri.to_owned())
        }
        _ => None,
    }
}

/// A peer's text on one line (the one cleaning of one-line texts, `core::names::one_line`),
/// at most [`QUOTE_CHARS`] characters.
fn quote(text: &str) -> String {
    names::one_line(text, QUOTE_CHARS).unwrap_or_default()
}

fn describe_pidf(doc: &PidfDocument) -> String {
    let mut s = match (doc.basic, doc.activity.as_deref()) {
        (Some(Basic::Closed), _) => "offline".to_owned(),
        (_, Some(a)) => a.to_owned(),
        _ => "online".to_owned(),
    };
    if let Some(n) = doc.notes.first() {
        s.push_str(&format!(" ({})", quote(&n.text)));
    }
    s
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)] // the tests start their clock at a real instant
mod tests {
    use super::*;

    fn partner(now: Instant) -> Partner {
        Partner::new(
            Settings {
                domain: "contoso.test".into(),
                sent_by: "127.0.0.1:5061".into(),
                users: vec![
                    User {
                        name: "joe".into(),
                        display: "Joe Lync".into(),
                    },
                    User {
                        name: "ann".into(),
                        display: "Ann Skype".into(),
                    },
                ],
                change_every: Duration::from_secs(10),
                seed: 7,
            },
            now,
        )
    }

    fn sip(text: &str, body: &str) -> Message {
        let raw = format!(
            "{}Content-Length: {}\r\n\r\n{body}",
            text.replace('\n', "\r\n"),
            body.len()
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    const SUBSCRIBE: &str = "SUBSCRIBE sip:joe@contoso.test SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKs1\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=b1\nTo: <sip:joe@contoso.test>\nCall-ID: sub-1\nCSeq: 1 SUBSCRIBE\nContact: <sip:alice@sip.localhost;transport=tls>\nEvent: presence\nExpires: 7200\n";

    fn sends(out: &[Out]) -> Vec<&Message> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send { message, .. } | Out::ToBridge(message) => Some(message),
                Out::Note(_) => None,
            })
            .collect()
    }

    fn notes(out: &[Out]) -> Vec<&str> {
        out.iter()
            .filter_map(|o| match o {
                Out::Note(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_subscription_is_accepted_notified_and_returned() {
        let now = Instant::now();
        let mut p = partner(now);
        let out = p.handle(now, 3, &sip(SUBSCRIBE, ""));
        let m = sends(&out);
        assert_eq!(m.len(), 3, "{out:?}");
        assert_eq!(m[0].status(), Some(200));
        assert_eq!(m[0].header("Expires"), Some("3600"));
        let tag = m[0].to().unwrap().tag().unwrap().to_owned();
        assert_eq!(m[1].method(), Some(&Method::Notify));
        assert_eq!(
            m[1].header("Subscription-State"),
            Some("active;expires=3600")
        );
        assert_eq!(m[1].from().unwrap().tag(), Some(tag.as_str()));
        assert_eq!(
            m[1].request_uri(),
            Some("sip:alice@sip.localhost;transport=tls")
        );
        let doc = pidf::parse(m[1].body()).unwrap();
        assert_eq!(doc.basic, Some(Basic::Open));
        assert_eq!(doc.display_name.as_deref(), Some("Joe Lync"));
        assert!(
            matches!(&out[3], Out::ToBridge(s) if s.method() == Some(&Method::Subscribe)
            && s.request_uri() == Some("sip:alice@localhost"))
        );
        assert_eq!(
            notes(&out),
            ["joe@contoso.test accepts alice@localhost's subscription (Available)"]
        );
        // The NOTIFY went on the SUBSCRIBE's connection.
        assert!(matches!(&out[2], Out::Send { conn: 3, .. }));
    }

    #[test]
    fn availability_changes_on_the_timer_for_watchers_only() {
        let now = Instant::now();
        let mut p = partner(now);
        assert!(p.handle_timeout(now + Duration::from_secs(5)).is_empty());
        p.handle(now, 3, &sip(SUBSCRIBE, ""));
        let later = p.poll_timeout();
        assert_eq!(later, now + Duration::from_secs(10));
        let out = p.handle_timeout(later);
        assert_eq!(
            notes(&out),
            ["joe@contoso.test is now Away (Be right back)"]
        );
        let m = sends(&out);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].cseq().unwrap().number, 2);
        let doc = pidf::parse(m[0].body()).unwrap();
        assert_eq!(doc.activity.as_deref(), Some("away"));
        assert_eq!(doc.notes[0].text, "Be right back");
        assert_eq!(p.poll_timeout(), later + Duration::from_secs(10));
    }

    #[test]
    fn unknown_users_and_domains_get_404() {
        let now = Instant::now();
        let mut p = partner(now);
        for uri in ["sip:bob@contoso.test", "sip:joe@fabrikam.test"] {
            let out = p.handle(
                now,
                1,
                &sip(&SUBSCRIBE.replacen("sip:joe@contoso.test", uri, 1), ""),
            );
            assert_eq!(sends(&out)[0].status(), Some(404));
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn an_unsubscription_ends_the_watcher() {
        let now = Instant::now();
        let mut p = partner(now);
        let out = p.handle(now, 3, &sip(SUBSCRIBE, ""));
        let tag = sends(&out)[0].to().unwrap().tag().unwrap().to_owned();
        let unsub = SUBSCRIBE
            .replace(
                "To: <sip:joe@contoso.test>",
                &format!("To: <sip:joe@contoso.test>;tag={tag}"),
            )
            .replace("CSeq: 1", "CSeq: 2")
            .replace("Expires: 7200", "Expires: 0");
        let out = p.handle(now, 3, &sip(&unsub, ""));
        let m = sends(&out);
        assert_eq!(m[0].status(), Some(200));
        assert!(
            m[1].header("Subscription-State")
                .unwrap()
                .starts_with("terminated")
        );
        assert!(p.handle_timeout(p.poll_timeout()).is_empty());
        // The same refresh on another connection: 481 (connection affinity).
        let out = p.handle(now, 4, &sip(&unsub, ""));
        assert_eq!(sends(&out)[0].status(), Some(481));
    }

    #[test]
    fn a_chat_is_accepted_and_every_message_answered_in_it() {
        let now = Instant::now();
        let mut p = partner(now);
        let offer = Sdp::message_offer("sip.localhost", 1).to_string();
        let invite = sip(
            "INVITE sip:ann@contoso.test SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKi1\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=b2\nTo: <sip:ann@contoso.test>\nCall-ID: im-1\nCSeq: 1 INVITE\nContact: <sip:alice@sip.localhost;transport=tls>\nContent-Type: application/sdp\n",
            &offer,
        );
        let out = p.handle(now, 5, &invite);
        let ok = sends(&out)[0];
        assert_eq!(ok.status(), Some(200));
        assert!(Sdp::parse(ok.body()).unwrap().has_message_session());
        let tag = ok.to().unwrap().tag().unwrap().to_owned();
        let message = sip(
            &format!(
                "MESSAGE sip:ann@127.0.0.1:5061;transport=tls SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKm1\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=b2\nTo: <sip:ann@contoso.test>;tag={tag}\nCall-ID: im-1\nCSeq: 2 MESSAGE\nContent-Type: text/plain; charset=UTF-8\n"
            ),
            "hi\u{1}",
        );
        let out = p.handle(now, 5, &message);
        let m = sends(&out);
        assert_eq!(m[0].status(), Some(200));
        assert_eq!(m[1].method(), Some(&Method::Message));
        assert_eq!(m[1].call_id().unwrap(), "im-1");
        assert_eq!(m[1].to().unwrap().tag(), Some("b2"));
        assert_eq!(m[1].from().unwrap().tag(), Some(tag.as_str()));
        assert_eq!(m[1].cseq().unwrap().number, 1);
        assert_eq!(
            std::str::from_utf8(m[1].body()).unwrap(),
            "Ann here (Lync, contoso.test). You said: hi"
        );
        assert_eq!(
            notes(&out)[0],
            "ann@contoso.test got \"hi\" from alice@localhost"
        );
        // Typing in the session is taken and told, not answered.
        let typing = sip(
            &format!(
                "MESSAGE sip:ann@127.0.0.1:5061;transport=tls SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKt1\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=b2\nTo: <sip:ann@contoso.test>;tag={tag}\nCall-ID: im-1\nCSeq: 3 MESSAGE\nContent-Type: Application/IM-isComposing+XML\n"
            ),
            std::str::from_utf8(&im_text::iscomposing_body(im_text::Typing::Composing)).unwrap(),
        );
        let out = p.handle(now, 5, &typing);
        assert_eq!(sends(&out).len(), 1);
        assert_eq!(sends(&out)[0].status(), Some(200));
        assert_eq!(
            notes(&out),
            ["ann@contoso.test sees that alice@localhost is typing"]
        );
        // The next reply counts on.
        let again = sip(
            &format!(
                "MESSAGE sip:ann@127.0.0.1:5061;transport=tls SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKm2\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=b2\nTo: <sip:ann@contoso.test>;tag={tag}\nCall-ID: im-1\nCSeq: 3 MESSAGE\nContent-Type: text/plain\n"
            ),
            "more",
        );
        let out = p.handle(now, 5, &again);
        assert_eq!(sends(&out)[1].cseq().unwrap().number, 2);
        // BYE ends it; a MESSAGE after it is page mode.
        let bye = sip(
            &format!(
                "BYE sip:ann@127.0.0.1:5061;transport=tls SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKb1\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=b2\nTo: <sip:ann@contoso.test>;tag={tag}\nCall-ID: im-1\nCSeq: 4 BYE\n"
            ),
            "",
        );
        assert_eq!(sends(&p.handle(now, 5, &bye))[0].status(), Some(200));
        assert_eq!(sends(&p.handle(now, 5, &bye))[0].status(), Some(481));
    }

    #[test]
    fn the_partners_own_subscription_reads_the_bridges_notifies() {
        let now = Instant::now();
        let mut p = partner(now);
        let out = p.handle(now, 3, &sip(SUBSCRIBE, ""));
        let Some(Out::ToBridge(sub)) = out.last() else {
            panic!("{out:?}")
        };
        let call_id = sub.call_id().unwrap().to_owned();
        let mut accepted = Message::response_to(sub, 202, None, Some("x1"));
        accepted.push_header("Contact", "<sip:alice@sip.localhost;transport=tls>");
        assert!(p.handle(now, 3, &accepted).is_empty());
        let from_tag = sub.from().unwrap().tag().unwrap().to_owned();
        let notify = |state: &str, body: &str| {
            sip(
                &format!(
                    "NOTIFY sip:joe@127.0.0.1:5061;transport=tls SIP/2.0\nVia: SIP/2.0/TLS sip.localhost:5061;branch=z9hG4bKn{}\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=x1\nTo: <sip:joe@contoso.test>;tag={from_tag}\nCall-ID: {call_id}\nCSeq: 1 NOTIFY\nEvent: presence\nSubscription-State: {state}\nContent-Type: application/pidf+xml\n",
                    body.len()
                ),
                body,
            )
        };
        let doc = r#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:alice@localhost"><tuple id="0"><status><basic>open</basic><ep:activities><ep:activity>away</ep:activity></ep:activities></status><note>lunch</note></tuple></presence>"#;
        let out = p.handle(now, 3, &notify("active;expires=3600", doc));
        assert_eq!(sends(&out)[0].status(), Some(200));
        assert_eq!(
            notes(&out),
            ["joe@contoso.test sees alice@localhost: away (lunch)"]
        );
        // The subscription is refreshed at 90 % of what was granted, in the dialog.
        let mut refreshed = Message::response_to(sub, 202, None, Some("x1"));
        refreshed.push_header("Expires", "100");
        p.handle(now, 3, &refreshed);
        assert_eq!(p.poll_timeout(), now + Duration::from_secs(10));
        let due = now + Duration::from_secs(90);
        let out = p.handle_timeout(due);
        let refresh = sends(&out)
            .into_iter()
            .find(|m| m.method() == Some(&Method::Subscribe))
            .unwrap();
        assert_eq!(refresh.call_id().unwrap(), call_id);
        assert_eq!(refresh.to().unwrap().tag(), Some("x1"));
        assert_eq!(refresh.cseq().unwrap().number, 2);
        assert_eq!(
            refresh.request_uri(),
            Some("sip:alice@sip.localhost;transport=tls")
        );
        assert!(p.poll_timeout() > due);
        let out = p.handle(now, 3, &notify("terminated", ""));
        assert_eq!(
            notes(&out),
            ["joe@contoso.test's subscription to alice@localhost ended"]
        );
        assert_eq!(
            sends(&p.handle(now, 3, &notify("active", "")))[0].status(),
            Some(481)
        );
    }
}
