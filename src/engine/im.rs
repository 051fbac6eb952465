//! Session-mode instant messaging between XMPP and LCS (the profile's "INVITE/MESSAGE",
//! docs/mapping.md §4), sans-IO: stanzas and edge events in, stanzas, SIP requests/responses
//! and store writes out, timers through [`ImEngine::poll_timeout`].
//!
//! XMPP → LCS: a `<message type='chat'|'normal'>` with a body opens (or reuses) one INVITE
//! session per (local bare JID, remote AOR) — SDP `m=message 5060 sip/tcp *`, Contact with
//! `;transport=tls`, a fresh `Ms-Conversation-ID` — and each body becomes an in-dialog MESSAGE
//! (`text/plain; charset=UTF-8`), in order. XEP-0085 chat states become RFC 3994 `isComposing`
//! MESSAGEs in an open session. A XEP-0184 receipt request is answered by the 200 to its
//! MESSAGE. Any failure returns each undelivered message to its sender as a
//! `<message type='error'>` (condition from `mappings/errors.toml`, original body included);
//! a 481 to a message sends it once more in a fresh session (the LCS side no longer knows the
//! dialog). Idle sessions end with BYE; a session older than the dialog age limit is replaced
//! before the next message (LCS's 24 h header signatures). Sessions are limited in all, per
//! local user and per remote domain (`ImSettings::max_sessions*`): beyond, an INVITE gets 486
//! and an XMPP message that would open one `resource-constraint`.
//!
//! LCS → XMPP: an INVITE with a message m-line (`sip/tcp *`, `sip null`, `x-ms-message`) is
//! answered 200 with the SDP answer; its `ms-text-format` first message is delivered (and the
//! 200 says `Supported: ms-text-format` exactly then); a `text/x-msmsgsinvite` file offer, there
//! or in a MESSAGE, is declined with the client's CANCEL and told to the XMPP user; each
//! in-dialog MESSAGE becomes a chat message (HTML and multipart turned into plain text) with a
//! `<thread/>` tied to the dialog; `isComposing` and Microsoft's INFO `<KeyboardActivity>` become
//! chat states; BYE ends the session; a MESSAGE for an unknown dialog gets 481; an INVITE without
//! a message m-line gets 488 with the profile's SDP. Every stanza sent carries an id naming its
//! dialog, so that a `<message type='error'>` the XMPP server returns for it is traced to its
//! session: the LCS sender is told in that session (rate-limited), and a recipient the server
//! says cannot be reached ends it with BYE (docs/mapping.md §3 "Errors from the XMPP side").
//!
//! Persistence (docs/storage.md, docs/mapping.md §4 "Sessions across a restart"): every
//! session's dialog is written to the store when it is established, synced before the 200 or
//! the ACK that makes it exist for LCS ([`Output::PersistIm`]), and removed, lazily, when it ends
//! ([`Output::ForgetIm`]). Its stored local CSeq is a reservation: no request goes out above it,
//! and a synced write raises it by [`CSEQ_RESERVE`] first; when that write fails
//! ([`ImEngine::store_failed`]) the requests above the old reservation are withdrawn and go in
//! a fresh session. [`ImEngine::restore`] takes the stored sessions up at start; their dialogs
//! have no connection, so their requests go by domain (`Route::Domain`) until an answer or a
//! request from LCS binds them to the connection that carried it.
//!
//! Connection affinity (the profile: "All messages within a given SIP dialog must be sent over
//! the exact same connection"): a live session whose connection is lost ends locally, without
//! BYE; a message in flight on it, and the next one, go in a new INVITE session by domain; a
//! request LCS still sends in the ended dialog gets 481.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message as Stanza, MessageType, Thread};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::receipts::{Received, Request as ReceiptRequest};

use super::Fact;
use super::common::{self, Parties, WallClock, host_of, parties};
use super::multiparty;
use crate::core::address::AddressBook;
use crate::core::errors::Condition;
use crate::core::im_text::{self, Typing};
use crate::core::lang::language_tag;
use crate::core::names;
use crate::core::tables::ErrorTable;
use crate::edge::core::{ALLOW, Route, Undeliverable};
use crate::edge::event::EdgeEvent;
use crate::random::SplitMix;
use crate::sip::builder::{RequestSpec, header_text, name_addr, reason_phrase};
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::message::{Message, Method};
use crate::sip::sdp::Sdp;
use crate::sip::status::{self, Reject};
use crate::sip::transaction::{ConnId, TxEvent, TxId, TxIds};
use crate::store::{DialogRecord, ImDialog};
use crate::xmpp::build;

/// Longest `Subject` header sent, in bytes: an XMPP `<subject/>` is one line of at most this
/// (far below the header-section limits SIP peers apply, 16 KiB here and at most proxies).
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// What an INFO in a session may carry (the `Accept` of its `415`): Microsoft's
/// `KeyboardActivity` document.
const INFO_ACCEPT: &str = "application/xml, text/xml";

pub use super::common::CSEQ_RESERVE;

/// Delivery failures told to an LCS sender at once in one session; beyond them, one per
/// [`NOTICE_INTERVAL`], the others counted into the next notice (an error storm from the XMPP
/// side cannot flood LCS).
pub const NOTICE_BURST: u32 = 3;
/// See [`NOTICE_BURST`].
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(10);
/// Most characters of the undelivered text quoted in a notice.
const NOTICE_QUOTE_CHARS: usize = 200;

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct ImSettings {
    /// The edge's FQDN: Via sent-by, Contact host, SDP address.
    pub public_fqdn: String,
    /// A session with no message for this long ends with BYE.
    pub idle_timeout: Duration,
    /// A dialog older than this is replaced before the next message (below LCS's 24 h).
    pub dialog_max_age: Duration,
    /// Largest message body sent to LCS, in bytes; larger ones get `policy-violation`.
    pub max_body_bytes: usize,
    /// Most messages queued for one session while its INVITE is pending.
    pub max_queued: usize,
    /// Most sessions at once, in all (`im.max_sessions`).
    pub max_sessions: usize,
    /// Most sessions with the users of one discovered (unlisted) domain
    /// (`im.max_sessions_per_domain`).
    pub max_sessions_per_domain: usize,
    /// The same for a listed partner's domain (`im.max_sessions_per_partner`).
    pub max_sessions_per_partner: usize,
    /// Most sessions of one local user (`im.max_sessions_per_user`).
    pub max_sessions_per_user: usize,
    /// The listed partners' domains (lowercase): `max_sessions_per_partner` applies.
    pub partners: HashSet<String>,
}

impl Default for ImSettings {
    fn default() -> Self {
        ImSettings {
            public_fqdn: "localhost".into(),
            idle_timeout: Duration::from_secs(600),
            dialog_max_age: crate::sip::dialog::DEFAULT_MAX_AGE,
            max_body_bytes: 16 * 1024,
            max_queued: 100,
            max_sessions: 10_000,
            max_sessions_per_domain: 1000,
            max_sessions_per_partner: 10_000,
            max_sessions_per_user: 100,
            partners: HashSet::new(),
        }
    }
}

/// The sessions by key, with how many each local user and each remote domain has (for the
/// limits). Reads go through `Deref`.
#[derive(Debug, Default)]
struct Sessions {
    map: HashMap<Key, Session>,
    per_user: HashMap<BareJid, usize>,
    per_domain: HashMap<String, usize>,
}

impl std::ops::Deref for Sessions {
    type Target = HashMap<Key, Session>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Sessions {
    fn get_mut(&mut self, key: &Key) -> Option<&mut Session> {
        self.map.get_mut(key)
    }

    fn insert(&mut self, key: Key, session: Session) {
        let domain = host_of(&key.1);
        if self.map.insert(key.clone(), session).is_none() {
            *self.per_user.entry(key.0).or_default() += 1;
            *self.per_domain.entry(domain).or_default() += 1;
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Session> {
        let session = self.map.remove(key)?;
        fn down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, k: &K) {
            if let Some(n) = counts.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
        down(&mut self.per_user, &key.0);
        down(&mut self.per_domain, &host_of(&key.1));
        Some(session)
    }

    fn of_user(&self, user: &BareJid) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    fn of_domain(&self, domain: &str) -> usize {
        self.per_domain.get(domain).copied().unwrap_or(0)
    }
}

pub use super::Output;

/// One message waiting for, or travelling in, a MESSAGE request.
#[derive(Debug, Clone)]
enum Item {
    Body {
        text: String,
        subject: Option<String>,
        lang: Option<String>,
        /// The stanza as received, for the error bounce and the receipt.
        stanza: Box<Stanza>,
        /// Already sent once more (in a fresh session after a 481 or a refused CSeq, or by
        /// domain after its connection was lost): it is not sent a third time.
        retried: bool,
    },
    Typing(Typing),
    /// A delivery failure reported by the XMPP server for a message from LCS: told to the LCS
    /// sender as text (the MESSAGE was already answered 200); its own failure bounces nothing.
    Notice(String),
    /// The decline of a file offered by the LCS user (a `text/x-msmsgsinvite` body,
    /// [`im_text::decline_body`]); its own failure bounces nothing.
    Decline(Vec<u8>),
}

#[derive(Debug)]
enum State {
    /// INVITE sent (this Call-ID); items wait.
    Inviting { call_id: String },
    /// Dialog up.
    Up { dialog: Box<Dialog> },
}

/// (local bare JID, remote AOR URI).
type Key = (BareJid, String);

/// What a stanza sent to an XMPP user carried (its id says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StanzaKind {
    /// A message body.
    Body,
    /// A chat state only.
    Typing,
}

/// The dialog's local tag and the kind an id of [`ImEngine::stanza_id`] names
/// (`tag.process.kind number`, or `tag.kind number` as versions before the process part wrote
/// it); `None` for any other id.
fn parse_stanza_id(id: &str) -> Option<(&str, StanzaKind)> {
    let (head, rest) = id.rsplit_once('.')?;
    let tag = match head.split_once('.') {
        Some((tag, process))
            if !process.is_empty() && process.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            tag
        }
        Some(_) => return None,
        None => head,
    };
    let mut chars = rest.chars();
    let kind = match chars.next()? {
        'm' => StanzaKind::Body,
        't' => StanzaKind::Typing,
        _ => return None,
    };
    let digits = chars.as_str();
    if tag.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((tag, kind))
}

#[derive(Debug)]
struct Session {
    /// The remote party's JID (bare), as XMPP users know it.
    remote_jid: Jid,
    state: State,
    queue: VecDeque<Item>,
    last_activity: Instant,
    /// The `<thread/>` of messages in this session (Call-ID).
    thread: String,
    /// Up, taken up from the store: the dialog's connection died with the previous process;
    /// its requests go by domain until an answer or a request from LCS binds it to the
    /// connection that carried it. (A live session whose connection is lost ends instead.)
    detached: bool,
    /// Up: the highest local CSeq the stored record allows (see [`CSEQ_RESERVE`]).
    reserved: u32,
    /// Up: the local CSeq the store's record of this dialog holds, as far as the engine knows
    /// (writes not reported failed); `None` while none was written.
    stored: Option<u32>,
    /// Taken up from the store, and no request of this process answered with a 2xx in it yet:
    /// a `500` may mean a CSeq the previous process used (a reservation the store lost).
    restored: bool,
    /// Delivery-failure notices this session may still send (see [`NOTICE_BURST`]).
    notices: Notices,
}

impl Session {
    fn new(remote_jid: Jid, state: State, now: Instant, thread: String) -> Session {
        Session {
            remote_jid,
            state,
            queue: VecDeque::new(),
            last_activity: now,
            thread,
            detached: false,
            reserved: 0,
            stored: None,
            restored: false,
            notices: Notices::new(now),
        }
    }
}

/// A session's budget of delivery-failure notices: [`NOTICE_BURST`] at once, one more per
/// [`NOTICE_INTERVAL`]; what was held back is counted.
#[derive(Debug)]
struct Notices {
    left: u32,
    /// When the next one is earned (while fewer than the burst are left).
    refilled: Instant,
    /// Failures not told since the last notice.
    held: u32,
}

impl Notices {
    fn new(now: Instant) -> Notices {
        Notices {
            left: NOTICE_BURST,
            refilled: now,
            held: 0,
        }
    }

    /// Whether a notice may go at `now` (and spends it).
    fn take(&mut self, now: Instant) -> bool {
        while self.left < NOTICE_BURST && self.refilled + NOTICE_INTERVAL <= now {
            self.left += 1;
            self.refilled += NOTICE_INTERVAL;
        }
        if self.left == NOTICE_BURST {
            self.refilled = now;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// What a client transaction was for.
#[derive(Debug)]
enum Purpose {
    /// The INVITE that opens the session of `key` (kept to build the dialog from its 2xx).
    Invite {
        key: Key,
        invite: Box<Message>,
    },
    /// A MESSAGE in dialog `dialog` of the session of `key`.
    Message {
        key: Key,
        dialog: DialogId,
        item: Item,
    },
    Bye,
}

impl Purpose {
    /// The method of the request (for logs).
    fn method(&self) -> &'static str {
        match self {
            Purpose::Invite { .. } => "INVITE",
            Purpose::Message { .. } => "MESSAGE",
            Purpose::Bye => "BYE",
        }
    }
}

/// The IM translation engine.
#[derive(Debug)]
pub struct ImEngine {
    settings: ImSettings,
    book: AddressBook,
    errors: ErrorTable,
    ids: TxIds,
    /// Relates `now` to the store's Unix times (a dialog's creation).
    clock: WallClock,
    sessions: Sessions,
    /// Dialog → session, for in-dialog requests.
    dialogs: HashMap<DialogId, Key>,
    purposes: HashMap<TxId, Purpose>,
    /// Idle deadlines, earliest first: one entry per session that went up, at most as late as
    /// its real deadline (activity only moves that later; [`ImEngine::handle_timeout`] pushes
    /// a stale entry back at the real time). Keeps [`ImEngine::poll_timeout`] O(1), which the
    /// runner asks after every event.
    idle: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Numbers the stanzas sent to XMPP users (their ids).
    stanzas: u64,
    /// This process's part of those ids (random): a restarted bridge numbers from 1 again in
    /// the same sessions, and clients drop a message whose id they have seen in a thread.
    process: String,
    rng: SplitMix,
    /// Sessions refused by each limit since the start (its configuration key).
    limit_hits: BTreeMap<&'static str, u64>,
}

/// Why an XMPP message could not be taken.
fn bounce(stanza: &Stanza, condition: Condition, text: &str) -> Output {
    common::bounce(build::message(stanza.clone()), condition, text)
}

/// The store's removal of the session of `key`.
fn forget(key: &Key) -> Output {
    Output::ForgetIm {
        local: key.0.to_string(),
        remote: key.1.clone(),
    }
}

impl ImEngine {
    /// `ids` must be the edge's ([`crate::edge::server::EdgeHandle::tx_ids`]); `seed` random;
    /// `clock` relates `now` to Unix time (the store's dialog creation times).
    pub fn new(
        settings: ImSettings,
        book: AddressBook,
        errors: ErrorTable,
        ids: TxIds,
        seed: u64,
        clock: WallClock,
    ) -> ImEngine {
        let rng = SplitMix::new(seed);
        let process = rng.token()[..8].to_owned();
        ImEngine {
            settings,
            book,
            errors,
            ids,
            clock,
            sessions: Sessions::default(),
            dialogs: HashMap::new(),
            purposes: HashMap::new(),
            idle: BinaryHeap::new(),
            stanzas: 0,
            process,
            rng,
            limit_hits: BTreeMap::new(),
        }
    }

    /// A reload's settings and error table (docs/configuration.md, "Reloading").
    /// `public_fqdn` stays as started (a restart changes it). Sessions already open stay
    /// open, even above lowered limits (the limits apply to the next new session); a new
    /// `idle_timeout` counts from each open session's last message (the deadlines are made
    /// anew, so a shorter one ends sessions idle longer than it at the next timer); a new
    /// `dialog_max_age` applies at each session's next message; new size and queue limits to
    /// the next message.
    pub fn reconfigure(&mut self, settings: ImSettings, errors: ErrorTable) {
        let public_fqdn = std::mem::take(&mut self.settings.public_fqdn);
        self.settings = ImSettings {
            public_fqdn,
            ..settings
        };
        self.errors = errors;
        self.rebuild_idle();
    }

    /// Whether client transaction `tx` is this engine's (the runner shares the edge's events
    /// between the engines).
    pub fn owns(&self, tx: TxId) -> bool {
        self.purposes.contains_key(&tx)
    }

    /// Live sessions (for tests and stats).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions refused by each limit since the start, by configuration key.
    pub fn limit_hits(&self) -> &BTreeMap<&'static str, u64> {
        &self.limit_hits
    }

    /// The configuration key of the session limit a new session `key` would go beyond, if
    /// any (counted, and logged): the local user's, the remote domain's (a listed partner's
    /// has its own), the overall one.
    fn session_limit(&mut self, key: &Key) -> Option<&'static str> {
        let domain = host_of(&key.1);
        let (per_domain, domain_key) = if self.settings.partners.contains(&domain) {
            (
                self.settings.max_sessions_per_partner,
                "im.max_sessions_per_partner",
            )
        } else {
            (
                self.settings.max_sessions_per_domain,
                "im.max_sessions_per_domain",
            )
        };
        let limit = if self.sessions.of_user(&key.0) >= self.settings.max_sessions_per_user {
            "im.max_sessions_per_user"
        } else if self.sessions.of_domain(&domain) >= per_domain {
            domain_key
        } else if self.sessions.len() >= self.settings.max_sessions {
            "im.max_sessions"
        } else {
            return None;
        };
        *self.limit_hits.entry(limit).or_default() += 1;
        warn!(
            user = %key.0,
            remote = %key.1,
            limit,
            "IM session refused: session limit reached"
        );
        Some(limit)
    }

    fn token(&mut self) -> String {
        self.rng.token()
    }

    fn branch(&mut self) -> String {
        common::branch(&mut self.rng)
    }

    fn contact(&self, local_uri: &str) -> String {
        common::contact_for(&self.settings.public_fqdn, local_uri)
    }

    fn via(&self) -> String {
        common::via(&self.settings.public_fqdn)
    }

    // ------------------------------------------------------------------ the store

    /// The store's record of the session of `key` (an established one), with the local CSeq
    /// reserved so far.
    fn record(&self, key: &Key) -> Option<ImDialog> {
        let session = self.sessions.get(key)?;
        let State::Up { dialog } = &session.state else {
            return None;
        };
        let created = self.clock.unix(dialog.replace_at(Duration::ZERO));
        let mut record = DialogRecord::from_dialog(dialog, created);
        record.local_cseq = record.local_cseq.max(session.reserved);
        Some(ImDialog {
            local_jid: key.0.to_string(),
            remote_aor: key.1.clone(),
            dialog: record,
        })
    }

    /// Writes the session of `key` to the store: `durable`, synced with a fresh reservation
    /// above its local CSeq (before what makes or extends the dialog for LCS), else lazily as
    /// it is.
    fn persist(&mut self, key: &Key, durable: bool, out: &mut Vec<Output>) {
        if durable {
            if let Some(session) = self.sessions.get_mut(key) {
                if let State::Up { dialog } = &session.state {
                    session.reserved = dialog.local_cseq().saturating_add(CSEQ_RESERVE);
                }
            }
        }
        let Some(dialog) = self.record(key) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let before = session.stored.replace(dialog.dialog.local_cseq);
        out.push(Output::PersistIm {
            dialog: Box::new(dialog),
            durable,
            before,
        });
    }

    /// The next request of `method` in the session of `key` (which must be up) and its route:
    /// the dialog's connection, or its domain while detached (taken up from the store). With
    /// `reserve`, a request above the stored reservation is preceded by the synced write that
    /// raises it; without (a BYE: the record is removed before it, and a CSeq above the stored
    /// one is harmless in a dialog the BYE ends — LCS answers a later request in it `481`,
    /// never `500`), it is not.
    fn in_dialog_request(
        &mut self,
        key: &Key,
        method: Method,
        reserve: bool,
        out: &mut Vec<Output>,
    ) -> Option<(Message, Route, DialogId)> {
        let session = self.sessions.get(key)?;
        let State::Up { dialog } = &session.state else {
            return None;
        };
        if reserve && dialog.local_cseq() >= session.reserved {
            self.persist(key, true, out);
        }
        let (via, branch) = (self.via(), self.branch());
        let session = self.sessions.get_mut(key)?;
        let State::Up { dialog } = &mut session.state else {
            return None;
        };
        let request = dialog.next_request(method, &via, &branch, None).ok()?;
        let route = if session.detached {
            // Taken up from the store: the edge reuses or opens a connection for the domain.
            Route::Domain(host_of(dialog.remote_uri()))
        } else {
            Route::Connection(dialog.conn)
        };
        Some((request, route, dialog.id.clone()))
    }

    /// The session of `key` is reached on `conn` (an answer to a request sent by domain, or
    /// a request from LCS in the dialog): a detached (restored) dialog lives there now; a
    /// bound one keeps its connection.
    fn attach(&mut self, key: &Key, conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(key) {
            if let State::Up { dialog } = &mut session.state {
                if session.detached {
                    session.detached = false;
                    dialog.conn = conn;
                }
            }
        }
    }

    /// Removes the session of `key` (no BYE) and, if it was up, its dialog and stored record.
    fn drop_session(&mut self, key: &Key, out: &mut Vec<Output>) -> Option<Session> {
        let session = self.sessions.remove(key)?;
        if let State::Up { dialog } = &session.state {
            self.dialogs.remove(&dialog.id);
            out.push(forget(key));
        }
        Some(session)
    }

    /// The IM sessions' dialogs read from the store at start (`now` is the start): each one
    /// that can be taken up is a session again, detached (its requests go by domain until LCS
    /// is reached again), with its idle time starting now and its local CSeq continuing above
    /// the stored reservation (so its first request writes a new one, synced). A dialog past
    /// `dialog_max_age` is removed and ended with BYE (LCS would refuse it soon), with no synced
    /// write; a record that names no local user or no federated address, whose dialog cannot be
    /// written into a request (`common::dialog_from_record`), or that repeats a session already
    /// taken up, is removed.
    pub fn restore(&mut self, now: Instant, dialogs: Vec<ImDialog>) -> Vec<Output> {
        let mut out = Vec::new();
        let now_unix = self.clock.unix(now);
        for d in dialogs {
            let local = BareJid::new(&d.local_jid)
                .ok()
                .filter(|j| self.book.is_local_domain(j.domain().as_str()));
            let remote = self
                .book
                .uri_to_jid(&d.remote_aor)
                .ok()
                .filter(|j| !self.book.is_local_domain(j.domain().as_str()));
            let age = Duration::from_secs(now_unix.saturating_sub(d.dialog.created_unix));
            let created = now.checked_sub(age).unwrap_or(now);
            let dialog = common::dialog_from_record(&d.dialog, created);
            let (Some(local), Some(remote), Some(dialog)) = (local, remote, dialog) else {
                out.push(Output::ForgetIm {
                    local: d.local_jid,
                    remote: d.remote_aor,
                });
                continue;
            };
            let key: Key = (local, d.remote_aor);
            if self.sessions.contains_key(&key) || self.dialogs.contains_key(&dialog.id) {
                // A second record of a session already taken up (the same pair written
                // another way, or the same dialog under another pair): removed, unless it is
                // the very key the live session writes to.
                if !(self.sessions.contains_key(&key) && d.local_jid == key.0.as_str()) {
                    out.push(Output::ForgetIm {
                        local: d.local_jid,
                        remote: key.1,
                    });
                }
                continue;
            }
            let thread = dialog.id.call_id.clone();
            let expired = age >= self.settings.dialog_max_age;
            self.dialogs.insert(dialog.id.clone(), key.clone());
            let reserved = dialog.local_cseq();
            let mut session = Session::new(
                Jid::from(remote.to_bare()),
                State::Up {
                    dialog: Box::new(dialog),
                },
                now,
                thread,
            );
            session.detached = true;
            session.reserved = reserved;
            session.stored = Some(reserved);
            session.restored = true;
            self.sessions.insert(key.clone(), session);
            if expired {
                self.end_session(&key, None, &mut out);
            } else {
                self.arm_idle(now, key);
            }
        }
        out
    }

    // ------------------------------------------------------------------ XMPP → LCS

    /// A stanza from the component link.
    pub fn on_stanza(&mut self, now: Instant, element: Element) -> Vec<Output> {
        let mut out = Vec::new();
        if !element.is("message", crate::xmpp::NS_COMPONENT) {
            return out;
        }
        let Ok(stanza) = Stanza::try_from(element) else {
            return out;
        };
        let (Some(from), Some(to)) = (stanza.from.clone(), stanza.to.clone()) else {
            return out;
        };
        if stanza.type_ == MessageType::Error {
            self.delivery_failed(now, &stanza, from, to, &mut out);
            return out;
        }
        if !matches!(stanza.type_, MessageType::Chat | MessageType::Normal) {
            return out;
        }
        let remote = match self.book.jid_to_sip(&to) {
            Ok(a) if !self.book.is_local_domain(&a.host) => a.aor(),
            Ok(_) | Err(_) => {
                out.push(bounce(
                    &stanza,
                    Condition::ItemNotFound,
                    "not an address this gateway can reach",
                ));
                return out;
            }
        };
        let local = match self.book.jid_to_sip(&Jid::from(from.to_bare())) {
            Ok(a) if self.book.is_local_domain(&a.host) => a,
            _ => {
                out.push(bounce(
                    &stanza,
                    Condition::Forbidden,
                    "only users of the local domains may use this gateway",
                ));
                return out;
            }
        };
        let item = if let Some((lang, text)) = stanza.get_best_body_cloned(vec![]) {
            if text.len() > self.settings.max_body_bytes {
                out.push(bounce(
                    &stanza,
                    Condition::PolicyViolation,
                    &format!("message larger than {} bytes", self.settings.max_body_bytes),
                ));
                return out;
            }
            let subject = stanza.get_best_subject_cloned(vec![]).map(|(_, s)| s);
            Item::Body {
                text,
                subject,
                lang: language_tag(&lang.0).map(str::to_owned),
                stanza: Box::new(stanza),
                retried: false,
            }
        } else {
            match stanza
                .payloads
                .iter()
                .find_map(|p| ChatState::try_from(p.clone()).ok())
            {
                Some(ChatState::Composing) => Item::Typing(Typing::Composing),
                Some(ChatState::Paused) => Item::Typing(Typing::Paused),
                Some(ChatState::Active) => Item::Typing(Typing::Active),
                _ => return out,
            }
        };
        let key: Key = (from.to_bare(), remote.to_uri());
        let remote_jid = Jid::from(to.to_bare());
        // Typing alone never opens a session.
        if matches!(item, Item::Typing(_)) && !self.sessions.contains_key(&key) {
            return out;
        }
        self.enqueue(now, key, remote_jid, local.to_uri(), item, &mut out);
        out
    }

    /// A `<message type='error'>` for a stanza this engine sent: the XMPP server (or the
    /// user's client) could not deliver a message from LCS (RFC 6120 §8.3: the error goes back
    /// to the `from` we gave, the LCS user's JID, with our id). The SIP MESSAGE was answered
    /// 200 when the stanza was queued (XMPP has no positive acknowledgement to wait for), so
    /// the LCS sender is told in the session the stanza's id names — if it is still up: no
    /// SIP request can carry it otherwise — as a text MESSAGE: the condition with the status
    /// `errors.toml` gives it, and the start of the text. Errors for chat states tell nothing;
    /// notices are rate-limited per session ([`NOTICE_BURST`]). When the server says the
    /// recipient cannot be reached (`item-not-found`, `service-unavailable` or `gone` from the
    /// bare JID, not marked `wait`: no such account, RFC 6121 §8.5.1; no resource online and no
    /// offline storage, §8.5.2.2.1; or the user blocks the sender, XEP-0191) the session ends
    /// with BYE and a `Reason` (RFC 3326) with that status, so that LCS's next message starts a
    /// session of its own rather than being lost in this one.
    fn delivery_failed(
        &mut self,
        now: Instant,
        stanza: &Stanza,
        local: Jid,
        remote: Jid,
        out: &mut Vec<Output>,
    ) {
        let Some((tag, kind)) = stanza.id.as_ref().and_then(|id| parse_stanza_id(&id.0)) else {
            return;
        };
        let Ok(remote_addr) = self.book.jid_to_sip(&remote) else {
            return;
        };
        let key: Key = (local.to_bare(), remote_addr.aor().to_uri());
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let State::Up { dialog } = &session.state else {
            return;
        };
        if dialog.id.local_tag != tag || kind == StanzaKind::Typing {
            return;
        }
        let (condition, wait) =
            common::error_of(&stanza.payloads).unwrap_or((Condition::UndefinedCondition, false));
        let status = self.errors.status_for_condition(condition);
        let unreachable = !wait
            && local.resource().is_none()
            && matches!(
                condition,
                Condition::ItemNotFound | Condition::ServiceUnavailable | Condition::Gone
            );
        // The last notice of a session that ends goes whatever the budget.
        if !session.notices.take(now) && !unreachable {
            session.notices.held = session.notices.held.saturating_add(1);
            return;
        }
        let held = std::mem::take(&mut session.notices.held);
        let mut text = format!(
            "Message not delivered to {} ({status} {}, {})",
            local.to_bare(),
            reason_phrase(status),
            condition.as_str()
        );
        if let Some((_, body)) = stanza.get_best_body(vec![]) {
            text.push_str(": ");
            text.extend(body.chars().take(NOTICE_QUOTE_CHARS));
            if body.chars().nth(NOTICE_QUOTE_CHARS).is_some() {
                text.push('…');
            }
        }
        if held > 0 {
            text.push_str(&format!(" [and {held} more not delivered]"));
        }
        if unreachable {
            text.push_str(&format!(
                "\n{} is not reachable (no account, offline, or blocking); this conversation \
                 has ended.",
                local.to_bare()
            ));
        }
        self.send_item(key.clone(), Item::Notice(text), out);
        if unreachable {
            let reason = format!("SIP;cause={status};text=\"{}\"", reason_phrase(status));
            self.end_session(&key, Some(&reason), out);
        }
    }

    /// The id of a stanza sent to an XMPP user from the session of `key`: its dialog's local
    /// tag, this process's part, the kind and a number (`3f…a1.9c04e2b7.m12`).
    fn stanza_id(&mut self, key: &Key, kind: StanzaKind) -> Option<String> {
        let Some(Session {
            state: State::Up { dialog },
            ..
        }) = self.sessions.get(key)
        else {
            return None;
        };
        self.stanzas += 1;
        let letter = match kind {
            StanzaKind::Body => 'm',
            StanzaKind::Typing => 't',
        };
        Some(format!(
            "{}.{}.{letter}{}",
            dialog.id.local_tag, self.process, self.stanzas
        ))
    }

    /// `stanza` with the id [`ImEngine::stanza_id`] gives it, as it goes to the link.
    fn with_id(&mut self, key: &Key, kind: StanzaKind, mut stanza: Stanza) -> Element {
        stanza.id = self.stanza_id(key, kind).map(Id);
        build::message(stanza)
    }

    /// Queues an item on the session for `key`, opening or replacing the session as needed.
    fn enqueue(
        &mut self,
        now: Instant,
        key: Key,
        remote_jid: Jid,
        local_uri: String,
        item: Item,
        out: &mut Vec<Output>,
    ) {
        let expired = match self.sessions.get(&key).map(|s| &s.state) {
            Some(State::Up { dialog }) => dialog.replace_at(self.settings.dialog_max_age) <= now,
            _ => false,
        };
        if expired {
            // Profile: LCS's header signatures last 24 h; a fresh INVITE replaces the dialog.
            self.end_session(&key, None, out);
        }
        if !self.sessions.contains_key(&key) {
            let Item::Body { stanza, .. } = &item else {
                return;
            };
            if let Some(limit) = self.session_limit(&key) {
                let text = match limit {
                    "im.max_sessions_per_user" => {
                        format!("too many chat sessions open for {} ({limit})", key.0)
                    }
                    "im.max_sessions" => format!("too many chat sessions open here ({limit})"),
                    _ => format!(
                        "too many chat sessions open with {} ({limit})",
                        host_of(&key.1)
                    ),
                };
                out.push(bounce(stanza, Condition::ResourceConstraint, &text));
                return;
            }
            self.invite(now, key.clone(), remote_jid, local_uri, out);
        }
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        session.last_activity = now;
        match &session.state {
            State::Inviting { .. } => {
                if session.queue.len() >= self.settings.max_queued {
                    if let Item::Body { stanza, .. } = &item {
                        out.push(bounce(
                            stanza,
                            Condition::ResourceConstraint,
                            "too many messages waiting for the session to open",
                        ));
                    }
                    return;
                }
                session.queue.push_back(item);
            }
            State::Up { .. } => self.send_item(key, item, out),
        }
    }

    /// Queues `item` (a message whose dialog LCS no longer knows) again, for a fresh session.
    fn requeue(&mut self, now: Instant, key: Key, item: Item, out: &mut Vec<Output>) {
        let Item::Body { stanza, .. } = &item else {
            return;
        };
        let remote_jid = stanza.to.as_ref().map(|j| Jid::from(j.to_bare()));
        let local_uri = stanza
            .from
            .as_ref()
            .and_then(|j| self.book.jid_to_sip(&Jid::from(j.to_bare())).ok())
            .map(|a| a.to_uri());
        if let (Some(remote_jid), Some(local_uri)) = (remote_jid, local_uri) {
            self.enqueue(now, key, remote_jid, local_uri, item, out);
        }
    }

    fn invite(
        &mut self,
        now: Instant,
        key: Key,
        remote_jid: Jid,
        local_uri: String,
        out: &mut Vec<Output>,
    ) {
        let call_id = format!("{}@{}", self.token(), self.settings.public_fqdn);
        let (branch, tag, conversation) = (self.branch(), self.token(), self.token());
        let contact = self.contact(&local_uri);
        let remote_uri = key.1.clone();
        let mut invite = RequestSpec {
            method: Method::Invite,
            request_uri: &remote_uri,
            via_sent_by: &self.via(),
            branch: &branch,
            from_display: None,
            from_uri: &local_uri,
            from_tag: &tag,
            to_display: None,
            to_uri: &remote_uri,
            to_tag: None,
            call_id: &call_id,
            cseq: 1,
            contact: Some(&contact),
            route: &[],
        }
        .build();
        invite.push_header("Ms-Conversation-ID", &conversation);
        invite.push_header("Supported", "ms-text-format");
        let session_id = self.rng.next() >> 1;
        let sdp = Sdp::message_offer(&self.settings.public_fqdn, session_id).to_string();
        invite.set_body(Some("application/sdp"), sdp.into_bytes());
        let tx = self.ids.next();
        let domain = host_of(&remote_uri);
        self.purposes.insert(
            tx,
            Purpose::Invite {
                key: key.clone(),
                invite: Box::new(invite.clone()),
            },
        );
        let state = State::Inviting {
            call_id: call_id.clone(),
        };
        self.sessions
            .insert(key, Session::new(remote_jid, state, now, call_id));
        out.push(Output::Request {
            tx,
            request: invite,
            route: Route::Domain(domain),
        });
    }

    /// Sends one item as an in-dialog MESSAGE (the session must be up).
    fn send_item(&mut self, key: Key, item: Item, out: &mut Vec<Output>) {
        let Some((mut request, route, dialog)) =
            self.in_dialog_request(&key, Method::Message, true, out)
        else {
            return;
        };
        match &item {
            Item::Body {
                text,
                subject,
                lang,
                ..
            } => {
                if let Some(s) = subject {
                    request.push_header("Subject", &header_text(s, MAX_SUBJECT_BYTES));
                }
                if let Some(l) = lang {
                    request.push_header("Content-Language", l);
                }
                request.set_body(Some("text/plain; charset=UTF-8"), text.clone().into_bytes());
            }
            Item::Notice(text) => {
                request.set_body(Some("text/plain; charset=UTF-8"), text.clone().into_bytes());
            }
            Item::Decline(body) => {
                request.set_body(Some("text/x-msmsgsinvite; charset=UTF-8"), body.clone());
            }
            Item::Typing(t) => {
                request.set_body(
                    Some(im_text::ISCOMPOSING_TYPE),
                    im_text::iscomposing_body(*t),
                );
            }
        }
        let tx = self.ids.next();
        self.purposes
            .insert(tx, Purpose::Message { key, dialog, item });
        out.push(Output::Request { tx, request, route });
    }

    /// Ends a session: BYE (with this `Reason` header value, if any) if its dialog is up, and
    /// its record removed; queued bodies are returned to their senders.
    fn end_session(&mut self, key: &Key, reason: Option<&str>, out: &mut Vec<Output>) {
        let mut bye = self.in_dialog_request(key, Method::Bye, false, out);
        if let (Some((request, _, _)), Some(reason)) = (bye.as_mut(), reason) {
            request.push_header("Reason", reason);
        }
        let Some(session) = self.drop_session(key, out) else {
            return;
        };
        for item in session.queue {
            if let Item::Body { stanza, .. } = item {
                out.push(bounce(
                    &stanza,
                    Condition::RecipientUnavailable,
                    "the chat session ended before the message could be sent",
                ));
            }
        }
        if let Some((request, route, _)) = bye {
            let tx = self.ids.next();
            self.purposes.insert(tx, Purpose::Bye);
            out.push(Output::Request { tx, request, route });
        }
    }

    /// An event from the SIP edge.
    pub fn on_edge(&mut self, now: Instant, event: EdgeEvent) -> Vec<Output> {
        let mut out = Vec::new();
        match event {
            EdgeEvent::Request {
                tx, conn, request, ..
            } => self.on_request(now, tx, conn, request, &mut out),
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn,
                response,
                is_final: true,
            }) => self.on_final(now, tx, Ok((conn, response)), &mut out),
            EdgeEvent::Transaction(TxEvent::Timeout { tx }) => {
                let c = self.errors.condition_for_timeout();
                self.on_final(now, tx, Err((c, common::NO_ANSWER.into(), true)), &mut out)
            }
            EdgeEvent::Transaction(TxEvent::GaveUp { tx }) => {
                // The INVITE rang (a provisional response) but was not answered in time: the
                // edge cancelled it (RFC 3261 §9.1); what waited for the session comes back.
                let c = self.errors.condition_for_timeout();
                let text = common::INVITE_CANCELLED.into();
                self.on_final(now, tx, Err((c, text, true)), &mut out)
            }
            EdgeEvent::Transaction(TxEvent::TransportError { tx }) => {
                if !self.resend_fresh(now, tx, &mut out) {
                    let lost = (
                        Condition::RecipientUnavailable,
                        common::CONNECTION_LOST.into(),
                        true,
                    );
                    self.on_final(now, tx, Err(lost), &mut out)
                }
            }
            EdgeEvent::Undeliverable { tx, why } => {
                let gone = matches!(why, Undeliverable::ConnectionGone { .. });
                if !(gone && self.resend_fresh(now, tx, &mut out)) {
                    let condition = common::undeliverable_condition(&self.errors, &why);
                    self.on_final(now, tx, Err((condition, why.to_string(), true)), &mut out)
                }
            }
            EdgeEvent::ConnectionLost { conn } => {
                // The profile's connection affinity: a dialog's requests never go on another
                // connection. The sessions whose dialogs lived on it end here, locally (no
                // request can carry even a BYE; their records are removed): the next message
                // opens a new INVITE session by domain, a request LCS still sends in one of
                // them gets 481. Their MESSAGEs in flight fail through TransportError and go
                // once more, in a new session (`resend_fresh`). A session taken up from the
                // store and not yet carried by a connection is not on this one.
                let lost: Vec<Key> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| {
                        !s.detached
                            && matches!(&s.state, State::Up { dialog } if dialog.conn == conn)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                if !lost.is_empty() {
                    info!(
                        conn,
                        domain = %common::domains_of(lost.iter().map(|k| k.1.as_str())),
                        sessions = lost.len(),
                        "IM sessions on a lost connection ended locally"
                    );
                }
                for key in lost {
                    if let Some(s) = self.drop_session(&key, &mut out) {
                        for item in s.queue {
                            self.requeue(now, key.clone(), item, &mut out);
                        }
                    }
                }
            }
            EdgeEvent::Transaction(_) => {}
        }
        out
    }

    /// Message `tx` was lost with its connection (a transport error, or the connection gone
    /// before it could be sent): the dialog it was sent in cannot be used any more (its
    /// requests never go on another connection), so its session, if still current, ends
    /// locally (no BYE: nothing could carry it), and a body sent only once goes once more in
    /// a new INVITE session, by domain. Returns whether it did; if not, the failure is handled
    /// as any other (the body returned to its sender).
    fn resend_fresh(&mut self, now: Instant, tx: TxId, out: &mut Vec<Output>) -> bool {
        if matches!(self.purposes.get(&tx), Some(Purpose::Invite { .. })) {
            return self.invite_again(now, tx, out);
        }
        let Some(Purpose::Message {
            key,
            dialog,
            item: Item::Body { retried: false, .. },
        }) = self.purposes.get(&tx)
        else {
            return false;
        };
        let key = key.clone();
        let current = matches!(
            self.sessions.get(&key).map(|s| &s.state),
            Some(State::Up { dialog: d }) if d.id == *dialog
        );
        if current {
            if let Some(s) = self.drop_session(&key, out) {
                for item in s.queue {
                    self.requeue(now, key.clone(), item, out);
                }
            }
        }
        let Some(Purpose::Message {
            item:
                Item::Body {
                    text,
                    subject,
                    lang,
                    stanza,
                    ..
                },
            ..
        }) = self.purposes.remove(&tx)
        else {
            return false;
        };
        let item = Item::Body {
            text,
            subject,
            lang,
            stanza,
            retried: true,
        };
        self.requeue(now, key, item, out);
        true
    }

    /// The INVITE `tx` was lost with its connection before any answer: if its session still
    /// waits for it and none of the messages waiting was sent once more already, a new INVITE
    /// (new Call-ID, by domain) takes them, each marked as sent once more (lost again, they
    /// return to their senders). Returns whether it did.
    fn invite_again(&mut self, now: Instant, tx: TxId, out: &mut Vec<Output>) -> bool {
        let Some(Purpose::Invite { key, invite }) = self.purposes.get(&tx) else {
            return false;
        };
        let key = key.clone();
        let ours = match self.sessions.get(&key) {
            Some(Session {
                state: State::Inviting { call_id },
                queue,
                ..
            }) => {
                invite.call_id().ok() == Some(call_id.as_str())
                    && !queue
                        .iter()
                        .any(|i| matches!(i, Item::Body { retried: true, .. }))
            }
            _ => false,
        };
        if !ours {
            return false;
        }
        self.purposes.remove(&tx);
        let Some(session) = self.sessions.remove(&key) else {
            return false;
        };
        for item in session.queue {
            if let Item::Body {
                text,
                subject,
                lang,
                stanza,
                ..
            } = item
            {
                let item = Item::Body {
                    text,
                    subject,
                    lang,
                    stanza,
                    retried: true,
                };
                self.requeue(now, key.clone(), item, out);
            }
        }
        true
    }

    /// The final outcome of client transaction `tx`: the response and its connection, or
    /// (condition, text, tear the session down).
    fn on_final(
        &mut self,
        now: Instant,
        tx: TxId,
        outcome: Result<(ConnId, Message), (Condition, String, bool)>,
        out: &mut Vec<Output>,
    ) {
        let Some(purpose) = self.purposes.remove(&tx) else {
            return;
        };
        let status = outcome
            .as_ref()
            .ok()
            .and_then(|(_, r)| r.status())
            .unwrap_or(0);
        let failure = match &outcome {
            Ok((_, r)) if status::is_failure(status) => Some((
                self.errors.condition_for_status(status),
                common::failure_text(status, r, purpose.method()),
                matches!(
                    status,
                    status::REQUEST_TIMEOUT
                        | status::TEMPORARILY_UNAVAILABLE
                        | status::CALL_DOES_NOT_EXIST
                ),
            )),
            Ok(_) => None,
            Err(e) => Some(e.clone()),
        };
        match purpose {
            Purpose::Bye => {}
            Purpose::Invite { key, invite } => match (failure, outcome) {
                (None, Ok((conn, response))) => {
                    self.established(now, key, &invite, conn, response, out)
                }
                (Some((condition, text, _)), _) => {
                    let ours = matches!(
                        self.sessions.get(&key).map(|s| &s.state),
                        Some(State::Inviting { call_id }) if invite.call_id().ok() == Some(call_id)
                    );
                    if let Some(s) = ours.then(|| self.sessions.remove(&key)).flatten() {
                        for item in s.queue {
                            if let Item::Body { stanza, .. } = item {
                                out.push(bounce(&stanza, condition, &text));
                            }
                        }
                    }
                }
                (None, Err(_)) => {}
            },
            Purpose::Message { key, dialog, item } => {
                let current = matches!(
                    self.sessions.get(&key).map(|s| &s.state),
                    Some(State::Up { dialog: d }) if d.id == dialog
                );
                // A 500 in a session taken up from the store, before any request of this
                // process in it was answered 2xx: most likely a CSeq the previous process used
                // (a reservation the store lost; RFC 3261 §12.2.2), which LCS refuses however
                // often it is sent. Handled as a 481, with a BYE (LCS still has the dialog).
                let collided = current
                    && status == status::SERVER_INTERNAL_ERROR
                    && self.sessions.get(&key).is_some_and(|s| s.restored);
                match failure {
                    None => {
                        if let (true, Ok((conn, _))) = (current, &outcome) {
                            self.attach(&key, *conn);
                            if let Some(s) = self.sessions.get_mut(&key) {
                                s.restored = false;
                            }
                        }
                        if let Item::Body { stanza, .. } = item {
                            if let Some(r) = receipt(&stanza) {
                                out.push(Output::Stanza(r));
                            }
                        }
                    }
                    Some((condition, text, teardown)) => {
                        // 408/480/481 (also to a typing notification), timeouts, lost
                        // connections: the next message starts a fresh session.
                        if collided {
                            self.end_session(&key, None, out);
                        } else if teardown && current {
                            self.drop_session(&key, out);
                        }
                        match item {
                            // LCS no longer knows the dialog (it restarted, or a stored
                            // session outlived its end), or refuses its CSeqs: the message goes
                            // once more, in a fresh session.
                            Item::Body {
                                text: body,
                                subject,
                                lang,
                                stanza,
                                retried: false,
                            } if status == status::CALL_DOES_NOT_EXIST || collided => {
                                let item = Item::Body {
                                    text: body,
                                    subject,
                                    lang,
                                    stanza,
                                    retried: true,
                                };
                                self.requeue(now, key, item, out);
                            }
                            Item::Body { stanza, .. } => {
                                out.push(bounce(&stanza, condition, &text))
                            }
                            Item::Typing(_) | Item::Notice(_) | Item::Decline(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// The key of the session whose current dialog `record` is, if it is still up.
    fn session_of(&self, record: &ImDialog) -> Option<Key> {
        let local = BareJid::new(&record.local_jid).ok()?;
        let key: Key = (local, record.remote_aor.clone());
        match &self.sessions.get(&key)?.state {
            State::Up { dialog }
                if dialog.id.call_id == record.dialog.call_id
                    && dialog.id.local_tag == record.dialog.local_tag =>
            {
                Some(key)
            }
            _ => None,
        }
    }

    /// The runner could not do these store writes (`failed`; `queued`: this engine's requests
    /// not sent yet; [`crate::engine::bridge::Engine::store_failed`]). No answer changes. A
    /// session whose first record was not written goes on (a restart would end it: LCS's next
    /// message in it would get `481`). A raised reservation that was not written leaves the
    /// store's lower one in force: the session's MESSAGEs above it still waiting are withdrawn
    /// (a restarted bridge would repeat their CSeqs, and LCS answer `500`), the session ends
    /// (its record removed, BYE) and each withdrawn message goes once more in a fresh session,
    /// whose INVITE needs no reservation. Returns the withdrawn transactions and what to do
    /// first.
    pub fn store_failed(
        &mut self,
        now: Instant,
        failed: &[Output],
        queued: &[(TxId, &Message)],
    ) -> (Vec<TxId>, Vec<Output>) {
        let (mut withdrawn, mut out) = (Vec::new(), Vec::new());
        for output in failed {
            let (record, before) = match output {
                Output::PersistIm {
                    dialog,
                    durable: true,
                    before,
                } => (dialog, *before),
                Output::PersistIm { dialog, .. } => {
                    info!(local = %dialog.local_jid, remote = %dialog.remote_aor, "IM session record not updated");
                    continue;
                }
                Output::ForgetIm { local, remote } => {
                    // A record left behind is taken up at the next start; its dialog has ended,
                    // so its first message gets 481 and goes in a fresh session.
                    warn!(%local, %remote, "IM session record not removed");
                    continue;
                }
                _ => continue,
            };
            let Some(key) = self.session_of(record) else {
                continue;
            };
            let Some(before) = before else {
                warn!(local = %record.local_jid, remote = %record.remote_aor,
                    "IM session record not stored; a restart now ends that session");
                if let Some(s) = self.sessions.get_mut(&key) {
                    s.stored = None;
                }
                continue;
            };
            warn!(local = %record.local_jid, remote = %record.remote_aor,
                "IM session CSeq reservation not stored; the session ends and its waiting messages go in a fresh one");
            let mine: Vec<TxId> = queued
                .iter()
                .filter(|(tx, m)| {
                    matches!(self.purposes.get(tx), Some(Purpose::Message { key: k, .. }) if *k == key)
                        && m.call_id().is_ok_and(|c| c == record.dialog.call_id)
                        && m.cseq().is_ok_and(|c| c.number > before)
                })
                .map(|(tx, _)| *tx)
                .collect();
            let mut items = Vec::new();
            for tx in mine {
                if let Some(Purpose::Message { item, .. }) = self.purposes.remove(&tx) {
                    withdrawn.push(tx);
                    items.push(item);
                }
            }
            self.end_session(&key, None, &mut out);
            for item in items {
                self.requeue(now, key.clone(), item, &mut out);
            }
        }
        (withdrawn, out)
    }

    /// The INVITE's 2xx: build the dialog, store it (synced, before the ACK makes it exist
    /// for LCS), ACK it, send what waited. A 2xx to an INVITE whose session has meanwhile
    /// been replaced (LCS invited at the same time) is ACKed and its dialog ended with BYE.
    fn established(
        &mut self,
        now: Instant,
        key: Key,
        invite: &Message,
        conn: ConnId,
        response: Message,
        out: &mut Vec<Output>,
    ) {
        let ours = matches!(
            self.sessions.get(&key).map(|s| &s.state),
            Some(State::Inviting { call_id }) if invite.call_id().ok() == Some(call_id)
        );
        let mut dialog = match Dialog::from_uac(invite, &response, conn, now) {
            Ok(d) => d,
            Err(e) => {
                if let Some(s) = ours.then(|| self.sessions.remove(&key)).flatten() {
                    for item in s.queue {
                        if let Item::Body { stanza, .. } = item {
                            out.push(bounce(
                                &stanza,
                                Condition::ServiceUnavailable,
                                &format!("the LCS side accepted the session wrongly: {e}"),
                            ));
                        }
                    }
                }
                return;
            }
        };
        let branch = self.branch();
        let ack = dialog
            .next_request(Method::Ack, &self.via(), &branch, None)
            .ok();
        if !ours {
            out.extend(ack.map(|ack| Output::Ack { conn, ack }));
            let branch = self.branch();
            if let Ok(bye) = dialog.next_request(Method::Bye, &self.via(), &branch, None) {
                let tx = self.ids.next();
                self.purposes.insert(tx, Purpose::Bye);
                out.push(Output::Request {
                    tx,
                    request: bye,
                    route: Route::Connection(conn),
                });
            }
            return;
        }
        self.dialogs.insert(dialog.id.clone(), key.clone());
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        session.state = State::Up {
            dialog: Box::new(dialog),
        };
        session.last_activity = now;
        self.persist(&key, true, out);
        out.extend(ack.map(|ack| Output::Ack { conn, ack }));
        self.arm_idle(now, key.clone());
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let queue = std::mem::take(&mut session.queue);
        for item in queue {
            self.send_item(key.clone(), item, out);
        }
    }

    // ------------------------------------------------------------------ LCS → XMPP

    /// A request from LCS.
    fn on_request(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: Message,
        out: &mut Vec<Output>,
    ) {
        let refuse = |engine: &mut ImEngine, reject: Reject| Output::Respond {
            tx,
            response: common::refuse(&mut engine.rng, &request, &reject),
        };
        match request.method().cloned() {
            Some(Method::Invite) if DialogId::of_incoming_request(&request).is_none() => {
                self.on_invite(now, tx, conn, &request, out)
            }
            Some(Method::Message)
            | Some(Method::Info)
            | Some(Method::Bye)
            | Some(Method::Invite) => {
                let id = DialogId::of_incoming_request(&request);
                if id.is_none() && request.method() == Some(&Method::Message) {
                    // Page mode (no To tag, no dialog): be liberal and deliver it.
                    return self.page_mode(tx, &request, out);
                }
                let Some(key) = id.and_then(|id| self.dialogs.get(&id).cloned()) else {
                    let reject = Reject::new(status::CALL_DOES_NOT_EXIST)
                        .reason("Call/Transaction Does Not Exist");
                    out.push(refuse(self, reject));
                    return;
                };
                if request.method() == Some(&Method::Invite) {
                    if let Some(signal) = multiparty::signal(&request) {
                        // The one-to-one session goes on as it was (RFC 3261 §14.1: a
                        // non-2xx to a re-INVITE changes nothing).
                        debug!(local = %key.0, remote = %key.1, sign = %signal.describe(),
                            "multiparty re-INVITE refused, the session goes on");
                        let reject = multiparty::refusal(&self.settings.public_fqdn);
                        out.push(refuse(self, reject));
                        return;
                    }
                }
                self.in_dialog(now, tx, conn, key, &request, out);
            }
            Some(Method::Ack) => {}
            _ => {
                // REFER (Lync adding a third person), UPDATE, PRACK, …: RFC 3261 §21.5.2, with
                // the methods this gateway does take.
                let reject = Reject::new(status::NOT_IMPLEMENTED)
                    .reason("Not Implemented by this gateway yet")
                    .header("Allow", ALLOW);
                out.push(refuse(self, reject))
            }
        }
    }

    fn on_invite(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: &Message,
        out: &mut Vec<Output>,
    ) {
        let tag = self.token();
        let refuse = |reject: Reject| Output::Respond {
            tx,
            response: reject.response_to(request, Some(&tag)),
        };
        if let Some(signal) = multiparty::signal(request) {
            // Before anything is made of it: no session, no first message to XMPP.
            debug!(from = %request.header("From").unwrap_or(""), sign = %signal.describe(),
                "multiparty INVITE refused");
            return out.push(refuse(multiparty::refusal(&self.settings.public_fqdn)));
        }
        let Parties {
            local,
            local_uri,
            remote,
            remote_aor,
            display,
        } = match parties(&self.book, &self.errors, request) {
            Ok(p) => p,
            Err(reject) => return out.push(refuse(reject)),
        };
        // A Lync file offer: an INVITE of its own whose body describes the file beside the SDP
        // of the file's media session (pidgin-sipe `sipe-ft-lync.c`). Declined with 488 and a
        // Warning saying why, and the XMPP user told, as for an offer inside a chat session.
        let ft_offer = request
            .header("Content-Type")
            .and_then(|ct| im_text::lync_file_offer(ct, request.body()));
        if let Some(offer) = ft_offer {
            let thread = request.call_id().unwrap_or_default();
            let notice = im_text::offer_notice(&offer);
            let from = Jid::from(remote.to_bare());
            let el = chat(&from, &Jid::from(local), thread, Some(notice), None);
            out.push(Output::Stanza(build::message(el)));
            let warning = format!("399 {} \"{FT_WARNING}\"", self.settings.public_fqdn);
            let reject = Reject::new(status::NOT_ACCEPTABLE_HERE).header("Warning", warning);
            return out.push(refuse(reject));
        }
        // A new session beyond a limit: 486 (this INVITE only; a 503 would tell LCS's edge to
        // send the bridge nothing for a while, RFC 3261 §21.5.4).
        let new_key: Key = (local.clone(), remote_aor.clone());
        if !self.sessions.contains_key(&new_key) {
            if let Some(limit) = self.session_limit(&new_key) {
                let reason = match limit {
                    "im.max_sessions_per_user" => {
                        format!("Busy Here: too many chat sessions for this user ({limit})")
                    }
                    "im.max_sessions" => format!("Busy Here: too many chat sessions ({limit})"),
                    _ => format!(
                        "Busy Here: too many chat sessions with {} ({limit})",
                        host_of(&remote_aor)
                    ),
                };
                return out.push(refuse(Reject::new(status::BUSY_HERE).reason(reason)));
            }
        }
        let name = display.as_deref().and_then(names::display_name);
        let offer = Sdp::parse(request.body()).ok();
        let answer = offer
            .as_ref()
            .and_then(|o| Sdp::message_answer(o, &self.settings.public_fqdn, self.rng.next() >> 1));
        let Some(answer) = answer else {
            // RFC 3261 §21.4.26: the body says what would be accepted (our offer).
            let sdp = Sdp::message_offer(&self.settings.public_fqdn, 0).to_string();
            let reject = Reject::new(status::NOT_ACCEPTABLE_HERE)
                .reason("Not Acceptable Here: only session-mode IM (m=message)")
                .body("application/sdp", sdp.into_bytes());
            return out.push(refuse(reject));
        };
        let mut dialog = match Dialog::from_uas(request, &tag, 1, conn, now) {
            Ok(d) => d,
            Err(e) => {
                return out.push(refuse(
                    Reject::new(status::BAD_REQUEST).reason(e.to_string()),
                ));
            }
        };
        dialog.confirm();
        let contact = self.contact(&local_uri);
        let mut response = Message::response_to(request, status::OK, None, Some(&tag));
        response.push_header("Contact", &name_addr(None, &contact, &[]));
        // The first message in `ms-text-format` is taken exactly when it can be read, and the
        // 200 says so with `Supported: ms-text-format` (as pidgin-sipe's `process_incoming_invite`
        // does; a Microsoft client whose first message was not taken sends it again as a
        // MESSAGE). Text becomes a chat message, a file offer is declined and told.
        let first = match request
            .header("ms-text-format")
            .map(im_text::ms_text_format_message)
        {
            Some(Ok(first)) => first,
            Some(Err(e)) => {
                info!(error = %e, "ms-text-format of an INVITE not read: left for the MESSAGE that follows");
                None
            }
            None => None,
        };
        if first.is_some() {
            response.push_header("Supported", "ms-text-format");
        }
        response.set_body(Some("application/sdp"), answer.to_string().into_bytes());

        let local = Jid::from(local);
        let key: Key = (local.to_bare(), remote_aor);
        let thread = dialog.id.call_id.clone();
        // A new INVITE from the same party replaces the session we had with them; what waited
        // for our own INVITE (LCS invited at the same time) goes in this one.
        let mut queue = VecDeque::new();
        if let Some(old) = self.sessions.remove(&key) {
            if let State::Up { dialog } = &old.state {
                self.dialogs.remove(&dialog.id);
            }
            queue = old.queue;
        }
        self.dialogs.insert(dialog.id.clone(), key.clone());
        let remote_jid = Jid::from(remote.to_bare());
        let state = State::Up {
            dialog: Box::new(dialog),
        };
        let session = Session::new(remote_jid.clone(), state, now, thread.clone());
        self.sessions.insert(key.clone(), session);
        self.arm_idle(now, key.clone());
        // Stored (synced) before the 200 makes the dialog exist for LCS.
        self.persist(&key, true, out);
        out.push(Output::Respond { tx, response });
        let (first, decline) = match first {
            Some(im_text::FirstMessage::Text(text)) => (Some(text), None),
            Some(im_text::FirstMessage::Invitation(im_text::Invitation::FileOffer(offer))) => (
                Some(im_text::offer_notice(&offer)),
                Some(im_text::decline_body(&offer)),
            ),
            Some(im_text::FirstMessage::Invitation(im_text::Invitation::Other(_))) | None => {
                (None, None)
            }
        };
        if let Some(first) = first {
            // XEP-0172 §4.2: the sender's nick in the first message of a conversation.
            let mut el = chat(&remote_jid, &local, &thread, Some(first), None);
            if let Some(n) = &name {
                el.payloads.push(Nick(n.clone()).into());
            }
            out.push(Output::Stanza(self.with_id(&key, StanzaKind::Body, el)));
        }
        if let Some(body) = decline {
            self.send_item(key.clone(), Item::Decline(body), out);
        }
        if let Some(name) = name {
            out.push(Output::Fact(Fact::Name {
                contact: remote.to_bare(),
                aor: key.1.clone(),
                name,
                source: crate::core::names::NameSource::From,
                subscribed: false,
            }));
        }
        for item in queue {
            self.send_item(key.clone(), item, out);
        }
    }

    fn page_mode(&mut self, tx: TxId, request: &Message, out: &mut Vec<Output>) {
        let tag = self.token();
        let stanza = parties(&self.book, &self.errors, request).and_then(
            |Parties { local, remote, .. }| {
                let ct = content_type(request);
                match im_text::plain_text(ct, request.body()) {
                    Ok(text) => Ok(build::message(chat(
                        &Jid::from(remote.to_bare()),
                        &Jid::from(local),
                        "",
                        Some(text),
                        None,
                    ))),
                    Err(e) => Err(body_error(&self.errors, &e)),
                }
            },
        );
        let response = match &stanza {
            Ok(_) => Message::response_to(request, status::OK, None, Some(&tag)),
            Err(reject) => reject.response_to(request, Some(&tag)),
        };
        out.push(Output::Respond { tx, response });
        out.extend(stanza.ok().map(Output::Stanza));
    }

    fn in_dialog(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        key: Key,
        request: &Message,
        out: &mut Vec<Output>,
    ) {
        let tag = self.token();
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let mut retargeted = false;
        if let State::Up { dialog } = &mut session.state {
            match dialog.accept_request_retargets(request) {
                Ok(changed) => retargeted = changed,
                Err(e) => {
                    // RFC 3261 §12.2.2: a CSeq lower than the last one is answered 500.
                    let reject = Reject::new(status::SERVER_INTERNAL_ERROR).reason(e.to_string());
                    out.push(Output::Respond {
                        tx,
                        response: reject.response_to(request, Some(&tag)),
                    });
                    return;
                }
            }
        }
        session.last_activity = now;
        if retargeted {
            // A target refresh (re-INVITE with a new Contact, RFC 3261 §12.2.2): kept for a
            // restart, lazily (a lost one costs the old target's 481 and a fresh session).
            self.persist(&key, false, out);
        }
        self.attach(&key, conn);
        let Some(session) = self.sessions.get(&key) else {
            return;
        };
        let local = Jid::from(key.0.clone());
        // The stanza the request becomes (none: acknowledged only), or its refusal.
        let mut kind = StanzaKind::Typing;
        let mut decline = None;
        let stanza: Result<Option<Stanza>, Reject> = match request.method().cloned() {
            Some(Method::Bye) => Ok(None),
            // A re-INVITE (refresh): keep the session, answer with our SDP.
            Some(Method::Invite) => Ok(None),
            // INFO by Content-Type: Microsoft's KeyboardActivity (XML that is not one is
            // acknowledged and ignored), a bodiless INFO acknowledged; anything else, such as
            // the multiparty roster-manager election (application/x-ms-mim), 415 with what
            // INFO takes. The session goes on either way.
            Some(Method::Info) => match multiparty::essence(request).as_str() {
                _ if request.body().is_empty() => Ok(None),
                im_text::KEYBOARD_ACTIVITY_TYPE | "text/xml" => {
                    Ok(im_text::parse_keyboard_activity(request.body())
                        .ok()
                        .map(|t| typing(&session.remote_jid, &local, &session.thread, t)))
                }
                other => {
                    let reject = Reject::new(status::UNSUPPORTED_MEDIA_TYPE)
                        .reason(match other {
                            "" => "Unsupported Media Type (no Content-Type)".to_owned(),
                            t => format!("Unsupported Media Type {}", header_text(t, 100)),
                        })
                        .header("Accept", INFO_ACCEPT);
                    Err(if other == multiparty::MIM_TYPE {
                        let warning = multiparty::warning(&self.settings.public_fqdn);
                        reject.header("Warning", warning)
                    } else {
                        reject
                    })
                }
            },
            _ => {
                let ct = content_type(request);
                if starts_with_ignore_case(ct, im_text::MSMSGSINVITE_TYPE) {
                    // A file offer (pidgin-sipe `sipe-ft.c`): taken (200), declined with the
                    // client's own CANCEL in this session, and told to the XMPP user. Other
                    // invitation commands need nothing.
                    kind = StanzaKind::Body;
                    match im_text::parse_invitation(request.body()) {
                        Ok(im_text::Invitation::FileOffer(offer)) => {
                            decline = Some(im_text::decline_body(&offer));
                            Ok(Some(chat(
                                &session.remote_jid,
                                &local,
                                &session.thread,
                                Some(im_text::offer_notice(&offer)),
                                None,
                            )))
                        }
                        Ok(im_text::Invitation::Other(_)) => Ok(None),
                        Err(e) => Err(body_error(&self.errors, &e)),
                    }
                } else if starts_with_ignore_case(ct, im_text::ISCOMPOSING_TYPE) {
                    match im_text::parse_iscomposing(request.body()) {
                        Ok(t) => Ok(Some(typing(
                            &session.remote_jid,
                            &local,
                            &session.thread,
                            t,
                        ))),
                        Err(e) => Err(body_error(&self.errors, &e)),
                    }
                } else {
                    kind = StanzaKind::Body;
                    match im_text::plain_text(ct, request.body()) {
                        Ok(text) => Ok(Some(chat(
                            &session.remote_jid,
                            &local,
                            &session.thread,
                            Some(text),
                            subject(request),
                        ))),
                        Err(e) => Err(body_error(&self.errors, &e)),
                    }
                }
            }
        };
        let response = match &stanza {
            Ok(_) => {
                let mut response = Message::response_to(request, status::OK, None, Some(&tag));
                if request.method() == Some(&Method::Invite) {
                    if let Ok(offer) = Sdp::parse(request.body()) {
                        let public_fqdn = &self.settings.public_fqdn;
                        if let Some(answer) = Sdp::message_answer(&offer, public_fqdn, 1) {
                            let sdp = answer.to_string().into_bytes();
                            response.set_body(Some("application/sdp"), sdp);
                        }
                    }
                }
                response
            }
            Err(reject) => reject.response_to(request, Some(&tag)),
        };
        out.push(Output::Respond { tx, response });
        if let Ok(Some(el)) = stanza {
            out.push(Output::Stanza(self.with_id(&key, kind, el)));
        }
        if let Some(body) = decline {
            self.send_item(key.clone(), Item::Decline(body), out);
        }
        if request.method() == Some(&Method::Bye) {
            if let Some(s) = self.drop_session(&key, out) {
                for item in s.queue {
                    if let Item::Body { stanza, .. } = item {
                        out.push(bounce(
                            &stanza,
                            Condition::RecipientUnavailable,
                            "the LCS user ended the chat session",
                        ));
                    }
                }
            }
        }
    }

    /// The idle deadline of the session of `key`, which went up at `now`. When entries of
    /// ended sessions (which stay until their time) outnumber the live ones, the heap is built
    /// anew from the live sessions: a peer opening and ending sessions fast cannot grow it
    /// (amortized O(1) per session).
    fn arm_idle(&mut self, now: Instant, key: Key) {
        self.idle
            .push(Reverse((now + self.settings.idle_timeout, key)));
        if self.idle.len() > 2 * self.sessions.len() + 1024 {
            self.rebuild_idle();
        }
    }

    /// The idle deadlines made anew from the live sessions: each up session's last activity
    /// plus the idle timeout.
    fn rebuild_idle(&mut self) {
        let timeout = self.settings.idle_timeout;
        self.idle = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s.state, State::Up { .. }))
            .map(|(k, s)| Reverse((s.last_activity + timeout, k.clone())))
            .collect();
    }

    /// The number of idle deadlines held (for tests).
    #[cfg(test)]
    fn idle_entries(&self) -> usize {
        self.idle.len()
    }

    /// When the next idle session must end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.idle.peek().map(|Reverse((at, _))| *at)
    }

    /// Ends sessions idle for `idle_timeout` with BYE.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.idle.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.idle.pop() else {
                break;
            };
            // Ended, or not up (it is armed again when it comes up).
            let Some(s) = self.sessions.get(&key) else {
                continue;
            };
            if !matches!(s.state, State::Up { .. }) {
                continue;
            }
            let due = s.last_activity + self.settings.idle_timeout;
            if due <= now {
                self.end_session(&key, None, &mut out);
            } else {
                self.idle.push(Reverse((due, key)));
            }
        }
        out
    }
}

fn content_type(request: &Message) -> &str {
    request
        .header("Content-Type")
        .or_else(|| request.header("c"))
        .unwrap_or("text/plain")
}

/// `s` starts with `prefix`, ASCII letters compared without case (media types, RFC 2045 §5.1).
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn subject(request: &Message) -> Option<&str> {
    request.header("Subject").or_else(|| request.header("s"))
}

/// The refusal of a body the engine cannot make a stanza of: `415` with `Accept` for a type
/// it does not read (RFC 3261 §21.4.13); a malformed body is `bad-request`, answered with
/// `errors.toml`'s `xmpp_to_sip` status (400 as shipped).
fn body_error(errors: &ErrorTable, e: &im_text::BodyError) -> Reject {
    match e {
        im_text::BodyError::UnsupportedType(t) => Reject::new(status::UNSUPPORTED_MEDIA_TYPE)
            .reason(format!("Unsupported Media Type {t}"))
            .header("Accept", im_text::ACCEPT),
        other => common::refuse_for(errors, Condition::BadRequest).reason(other.to_string()),
    }
}

/// The `Warning` text of the 488 to a Lync file offer's INVITE.
const FT_WARNING: &str = "file transfer is not supported by this gateway";

/// A chat message from an LCS user to a local user (the body moved in, not copied).
fn chat(from: &Jid, to: &Jid, thread: &str, body: Option<String>, subject: Option<&str>) -> Stanza {
    let mut m = Stanza::chat(Some(to.clone()));
    m.from = Some(from.clone());
    // Characters XML forbids are removed from every stanza by the component link.
    if let Some(b) = body {
        m.bodies.insert(Lang(String::new()), b);
    }
    if let Some(s) = subject {
        m.subjects.insert(Lang(String::new()), s.to_owned());
    }
    if !thread.is_empty() {
        m.thread = Some(Thread {
            parent: None,
            id: thread.to_owned(),
        });
    }
    m.payloads.push(build::chat_state(ChatState::Active));
    m
}

/// A chat state notification (XEP-0085) from an LCS user.
fn typing(from: &Jid, to: &Jid, thread: &str, state: Typing) -> Stanza {
    let mut m = Stanza::chat(Some(to.clone()));
    m.from = Some(from.clone());
    m.thread = Some(Thread {
        parent: None,
        id: thread.to_owned(),
    });
    let s = match state {
        Typing::Composing => ChatState::Composing,
        Typing::Paused => ChatState::Paused,
        Typing::Active => ChatState::Active,
    };
    m.payloads.push(build::chat_state(s));
    m
}

/// The XEP-0184 receipt for a delivered message that asked for one.
fn receipt(stanza: &Stanza) -> Option<Element> {
    let id = stanza.id.as_ref()?.0.clone();
    if !stanza
        .payloads
        .iter()
        .any(|p| ReceiptRequest::try_from(p.clone()).is_ok())
    {
        return None;
    }
    let mut m = Stanza::new(stanza.from.clone());
    m.type_ = stanza.type_.clone();
    m.from = stanza.to.clone();
    m.payloads.push(Received { id }.into());
    Some(build::message(m))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::core::address::AddressMode;
    use crate::core::tables::Mappings;

    const LOCAL: &str = "alice@example.org/phone";
    const REMOTE: &str = r"bob\40contoso.com@lcs.example.org";

    fn engine() -> ImEngine {
        engine_seeded(7)
    }

    fn engine_seeded(seed: u64) -> ImEngine {
        let book = AddressBook::new(
            AddressMode::Gateway,
            vec!["lcs.example.org".into()],
            vec!["example.org".into()],
        )
        .unwrap();
        let settings = ImSettings {
            public_fqdn: "sip.example.org".into(),
            idle_timeout: Duration::from_secs(60),
            dialog_max_age: Duration::from_secs(3600),
            max_body_bytes: 1000,
            max_queued: 3,
            ..ImSettings::default()
        };
        ImEngine::new(
            settings,
            book,
            Mappings::builtin().errors,
            TxIds::default(),
            seed,
            WallClock {
                at: Instant::now(),
                unix: 1_700_000_000,
            },
        )
    }

    fn message(body: Option<&str>, extra: &str) -> Element {
        let body = body
            .map(|b| format!("<body>{b}</body>"))
            .unwrap_or_default();
        format!(
            "<message xmlns='jabber:component:accept' from='{LOCAL}' to='{REMOTE}' type='chat' id='m1'>{body}{extra}</message>"
        )
        .parse()
        .unwrap()
    }

    fn requests(out: &[Output]) -> Vec<(TxId, Message, Route)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Request { tx, request, route } => {
                    Some((*tx, request.clone(), route.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn stanzas(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Stanza(e) => Some(String::from(e)),
                _ => None,
            })
            .collect()
    }

    /// The peer's answer to `request`, with a To tag and a Contact.
    fn answer(request: &Message, status: u16) -> Message {
        let mut r = Message::response_to(request, status, None, Some("remote"));
        r.push_header("Contact", "<sip:bob@192.0.2.5:5061;transport=tls>");
        r
    }

    fn final_event(tx: TxId, response: Message) -> EdgeEvent {
        EdgeEvent::Transaction(TxEvent::Response {
            tx,
            conn: 9,
            response,
            is_final: true,
        })
    }

    /// Opens a session with one message and completes the INVITE: returns the MESSAGE sent.
    fn open(e: &mut ImEngine, now: Instant) -> (TxId, Message) {
        let out = e.on_stanza(now, message(Some("hello"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        let (tx, msg, _) = requests(&out).remove(0);
        (tx, msg)
    }

    #[test]
    fn xmpp_messages_open_an_invite_session_and_go_out_in_order() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, message(Some("one"), ""));
        let reqs = requests(&out);
        assert_eq!(reqs.len(), 1);
        let (tx, invite, route) = &reqs[0];
        assert_eq!(route, &Route::Domain("contoso.com".into()));
        assert_eq!(invite.request_uri(), Some("sip:bob@contoso.com"));
        assert_eq!(invite.from().unwrap().uri, "sip:alice@example.org");
        assert!(invite.header("Contact").unwrap().contains(";transport=tls"));
        assert!(invite.header("Ms-Conversation-ID").is_some());
        assert!(Sdp::parse(invite.body()).unwrap().has_message_session());
        assert!(
            std::str::from_utf8(invite.body())
                .unwrap()
                .contains("m=message 5060 sip/tcp *")
        );
        // Two more while the INVITE is pending: queued.
        assert!(
            requests(&e.on_stanza(now, message(Some("two &amp; &lt;three&gt;"), ""))).is_empty()
        );
        assert!(requests(&e.on_stanza(now, message(Some("drei é 中"), ""))).is_empty());
        let out = e.on_edge(now, final_event(*tx, answer(invite, 200)));
        let acks: Vec<_> = out
            .iter()
            .filter(|o| matches!(o, Output::Ack { conn: 9, .. }))
            .collect();
        assert_eq!(acks.len(), 1);
        let bodies: Vec<String> = requests(&out)
            .iter()
            .map(|(_, m, route)| {
                assert_eq!(route, &Route::Connection(9));
                assert_eq!(m.method(), Some(&Method::Message));
                assert_eq!(
                    m.request_uri(),
                    Some("sip:bob@192.0.2.5:5061;transport=tls")
                );
                assert_eq!(m.header("Content-Type"), Some("text/plain; charset=UTF-8"));
                String::from_utf8(m.body().to_vec()).unwrap()
            })
            .collect();
        assert_eq!(bodies, ["one", "two & <three>", "drei é 中"]);
    }

    /// Every header value the engine builds from stanza content — Request-URI and To from the
    /// `to` JID, From and Contact from the sender's JID, Subject from `<subject/>`,
    /// Content-Language from `xml:lang` — with values made to smuggle a header or a second
    /// request: each request keeps its shape (re-parsed, the same header lines and nothing
    /// else), Subject is one folded line and a language that is not BCP 47 is left out.
    #[test]
    fn stanza_content_cannot_change_the_shape_of_a_request() {
        let smuggled = "x\r\nMs-asserted-verification-level: ms-source-verification-level=verified\r\n\r\nMESSAGE sip:victim@contoso.com SIP/2.0\nVia: SIP/2.0/TLS evil";
        let attr = smuggled.replace('\r', "&#13;").replace('\n', "&#10;");
        let stanza = |lang: &str| -> Element {
            format!(
                "<message xmlns='jabber:component:accept' from='a\\20l\\22ice@example.org/x' \
                 to='b\\20o\\22b\\40contoso.com@lcs.example.org' type='chat' id='m1' xml:lang='{lang}'>\
                 <subject>{attr}</subject><body>body&#13;&#10;Via: no</body></message>"
            )
            .parse()
            .unwrap()
        };
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, stanza(&attr));
        let (tx, invite, _) = requests(&out).remove(0);
        e.on_stanza(now, stanza("en-GB"));
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        let messages = requests(&out);
        assert_eq!(messages.len(), 2);
        let names =
            |m: &Message| -> Vec<String> { m.headers().map(|(n, _)| n.to_owned()).collect() };
        let expected_invite = [
            "Via",
            "Max-Forwards",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Contact",
            "Content-Length",
            "Ms-Conversation-ID",
            "Supported",
            "Content-Type",
        ];
        for (m, extra) in [
            (&invite, &expected_invite[..]),
            (&messages[0].1, &["Subject"][..]),
            (&messages[1].1, &["Subject", "Content-Language"][..]),
        ] {
            assert_eq!(m.header_error(), None);
            let wire = m.to_bytes();
            let again = Message::parse(&wire).unwrap();
            assert_eq!(&again, m, "{}", String::from_utf8_lossy(&wire));
            if m.method() == Some(&Method::Message) {
                let mut want = vec!["Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq"];
                want.extend(["Content-Length"]);
                want.extend(extra);
                want.push("Content-Type");
                let mut got = names(m);
                got.sort();
                want.sort();
                assert_eq!(got, want, "{}", String::from_utf8_lossy(&wire));
                assert_eq!(again.body(), b"body\r\nVia: no");
            } else {
                assert_eq!(names(m), extra);
            }
            assert!(
                again
                    .header(crate::edge::core::VERIFICATION_HEADER)
                    .is_none()
            );
            assert!(!again.request_uri().unwrap().contains(' '));
            assert_eq!(again.to().unwrap().uri, "sip:b%20o%22b@contoso.com");
            assert_eq!(again.from().unwrap().uri, "sip:a%20l%22ice@example.org");
        }
        assert_eq!(
            subject(&messages[0].1),
            Some(
                "x Ms-asserted-verification-level: ms-source-verification-level=verified  \
                 MESSAGE sip:victim@contoso.com SIP/2.0 Via: SIP/2.0/TLS evil"
            )
        );
        assert_eq!(messages[1].1.header("Content-Language"), Some("en-GB"));
    }

    #[test]
    fn a_refused_invite_returns_every_queued_message_with_the_mapped_condition() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, message(Some("first"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        e.on_stanza(now, message(Some("second"), ""));
        let out = e.on_edge(now, final_event(tx, answer(&invite, 480)));
        let errors = stanzas(&out);
        assert_eq!(errors.len(), 2);
        for (s, body) in errors.iter().zip(["first", "second"]) {
            assert!(
                s.contains("type=\"error\"") || s.contains("type='error'"),
                "{s}"
            );
            assert!(s.contains("recipient-unavailable"), "{s}");
            assert!(s.contains(&format!("<body>{body}</body>")), "{s}");
        }
        assert_eq!(e.session_count(), 0);
        // Undeliverable (no SRV) maps to remote-server-not-found.
        let out = e.on_stanza(now, message(Some("again"), ""));
        let (tx, _, _) = requests(&out).remove(0);
        let out = e.on_edge(
            now,
            EdgeEvent::Undeliverable {
                tx,
                why: Undeliverable::NoRoute {
                    domain: "contoso.com".into(),
                    reason: "no SRV".into(),
                },
            },
        );
        assert!(stanzas(&out)[0].contains("remote-server-not-found"));
    }

    /// [MS-OCER] §2.2.1.1: a Microsoft server says why it refused in `ms-diagnostics` (or
    /// `ms-diagnostics-public` across an enterprise boundary, §2.2.1.2); the XMPP sender's
    /// error stanza carries its reason and number, cleaned and capped.
    #[test]
    fn ms_diagnostics_reach_the_error_stanza_text() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, message(Some("first"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let mut refusal = answer(&invite, 403);
        refusal.push_header(
            "ms-diagnostics-public",
            "1034;reason=\"Previous hop federated peer did not report diagnostic information\";Domain=\"example.org\"",
        );
        refusal.push_header(
            "ms-diagnostics",
            "4141;reason=\"User \\\"bob\\\" disabled\";source=\"sip.contoso.com\"",
        );
        let out = e.on_edge(now, final_event(tx, refusal));
        let errors = stanzas(&out);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("forbidden"), "{}", errors[0]);
        assert!(
            errors[0]
                .contains(">403 Forbidden: User \"bob\" disabled (ms-diagnostics 4141)</text>"),
            "{}",
            errors[0]
        );
        // Only the public header, with a reason of thousands of characters: capped.
        let out = e.on_stanza(now, message(Some("second"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let mut refusal = answer(&invite, 404);
        refusal.push_header(
            "ms-diagnostics-public",
            &format!("4005;reason=\"{}\"", "x".repeat(5000)),
        );
        let out = e.on_edge(now, final_event(tx, refusal));
        let text = stanzas(&out).remove(0);
        let expected = format!(
            "404 Not Found: {}… (ms-diagnostics-public 4005)",
            "x".repeat(200)
        );
        assert!(text.contains(&expected), "{text}");
        // Without the headers the text is the status line, as before.
        let out = e.on_stanza(now, message(Some("third"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, answer(&invite, 480)));
        assert!(stanzas(&out)[0].contains(">480 Temporarily Unavailable</text>"));
    }

    #[test]
    fn an_invite_the_edge_cancelled_bounces_what_waited_with_its_own_text() {
        // RFC 3261 §9.1: the edge cancelled an INVITE that rang (180) but was not answered
        // within 64·T1; the messages queued for the session come back to their sender.
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, message(Some("first"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        assert_eq!(invite.method(), Some(&Method::Invite));
        e.on_stanza(now, message(Some("second"), ""));
        let out = e.on_edge(now, EdgeEvent::Transaction(TxEvent::GaveUp { tx }));
        let s = stanzas(&out);
        assert_eq!(s.len(), 2, "{s:?}");
        for (stanza, body) in s.iter().zip(["first", "second"]) {
            assert!(stanza.contains("type='error'"), "{stanza}");
            assert!(stanza.contains("remote-server-timeout"), "{stanza}");
            assert!(stanza.contains(common::INVITE_CANCELLED), "{stanza}");
            assert!(stanza.contains(&format!("<body>{body}</body>")), "{stanza}");
        }
        assert_eq!(e.session_count(), 0);
    }

    #[test]
    fn receipts_follow_the_200_and_failures_bounce() {
        let mut e = engine();
        let now = Instant::now();
        let (tx, _) = open(&mut e, now);
        let out = e.on_edge(now, EdgeEvent::Transaction(TxEvent::Timeout { tx }));
        assert!(stanzas(&out)[0].contains("remote-server-timeout"));
        // The timeout ended the session: the next message opens a new one, with a receipt.
        let out = e.on_stanza(
            now,
            message(Some("r"), "<request xmlns='urn:xmpp:receipts'/>"),
        );
        let (tx, invite, _) = requests(&out).remove(0);
        assert_eq!(invite.method(), Some(&Method::Invite));
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        let (tx, msg, _) = requests(&out).remove(0);
        let out = e.on_edge(
            now,
            final_event(tx, Message::response_to(&msg, 200, None, None)),
        );
        let s = stanzas(&out);
        assert_eq!(s.len(), 1);
        assert!(
            s[0].contains("urn:xmpp:receipts") && s[0].contains("id='m1'"),
            "{}",
            s[0]
        );
        assert!(s[0].contains(&format!("to='{LOCAL}'")), "{}", s[0]);
    }

    #[test]
    fn oversized_bodies_are_refused_with_policy_violation() {
        let mut e = engine();
        let big = "x".repeat(1001);
        let out = e.on_stanza(Instant::now(), message(Some(&big), ""));
        assert!(requests(&out).is_empty());
        assert!(stanzas(&out)[0].contains("policy-violation"));
    }

    #[test]
    fn typing_goes_out_as_iscomposing_and_a_481_to_it_ends_the_session() {
        let mut e = engine();
        let now = Instant::now();
        // Typing alone opens nothing.
        let composing = "<composing xmlns='http://jabber.org/protocol/chatstates'/>";
        assert!(e.on_stanza(now, message(None, composing)).is_empty());
        let (tx, msg) = open(&mut e, now);
        e.on_edge(
            now,
            final_event(tx, Message::response_to(&msg, 200, None, None)),
        );
        let out = e.on_stanza(now, message(None, composing));
        let (tx, typing, _) = requests(&out).remove(0);
        assert_eq!(
            typing.header("Content-Type"),
            Some(im_text::ISCOMPOSING_TYPE)
        );
        e.on_edge(
            now,
            final_event(tx, Message::response_to(&typing, 481, None, None)),
        );
        assert_eq!(e.session_count(), 0);
    }

    #[test]
    fn idle_sessions_end_with_bye_and_old_dialogs_are_replaced() {
        let mut e = engine();
        let now = Instant::now();
        open(&mut e, now);
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(60)));
        let out = e.handle_timeout(now + Duration::from_secs(61));
        let (_, bye, route) = requests(&out).remove(0);
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert_eq!(route, Route::Connection(9));
        assert_eq!(e.session_count(), 0);

        // A dialog past its age limit: BYE, and a fresh INVITE carries the next message.
        open(&mut e, now);
        let later = now + Duration::from_secs(3601);
        let out = e.on_stanza(later, message(Some("late"), ""));
        let methods: Vec<Method> = requests(&out)
            .iter()
            .map(|(_, m, _)| m.method().cloned().unwrap())
            .collect();
        assert_eq!(methods, [Method::Bye, Method::Invite]);
    }

    fn inbound(raw: &str) -> EdgeEvent {
        EdgeEvent::Request {
            tx: TxIds::default().next(),
            conn: 4,
            request: Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap(),
            asserted: None,
        }
    }

    fn invite_from_lcs(sdp: &str) -> String {
        format!(
            "INVITE sip:alice@example.org SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKi1\nMax-Forwards: 70\nFrom: \"Bob\" <sip:bob@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>\nCall-ID: call-1\nCSeq: 1 INVITE\nContact: <sip:bob@192.0.2.5:5061;transport=tls>\nms-text-format: text/plain; charset=UTF-8;ms-body=aGkgdGhlcmU=\nContent-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
            sdp.len()
        )
    }

    const OFFER: &str = "v=0\no=- 0 0 IN IP4 192.0.2.5\ns=session\nc=IN IP4 192.0.2.5\nt=0 0\nm=message 5060 sip null\n";

    fn responses(out: &[Output]) -> Vec<Message> {
        out.iter()
            .filter_map(|o| match o {
                Output::Respond { response, .. } => Some(response.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lcs_invites_and_messages_reach_the_local_user() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let r = &responses(&out)[0];
        assert_eq!(r.status(), Some(200));
        assert!(r.header("Contact").unwrap().contains("transport=tls"));
        assert!(std::str::from_utf8(r.body()).unwrap().contains("m=message"));
        let local_tag = r.to().unwrap().tag().unwrap().to_owned();
        // The ms-text-format first message is delivered.
        let s = stanzas(&out);
        assert!(s[0].contains("<body>hi there</body>"), "{}", s[0]);
        assert!(
            s[0].contains(r"from='bob\40contoso.com@lcs.example.org'"),
            "{}",
            s[0]
        );
        assert!(s[0].contains("to='alice@example.org'"), "{}", s[0]);

        let msg = format!(
            "MESSAGE sip:alice@sip.example.org;transport=tls SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKm2\nMax-Forwards: 70\nFrom: <sip:bob@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>;tag={local_tag}\nCall-ID: call-1\nCSeq: 2 MESSAGE\nContent-Type: text/html\nContent-Length: 22\n\n<b>bold</b> &amp; more"
        );
        let out = e.on_edge(now, inbound(&msg));
        assert_eq!(responses(&out)[0].status(), Some(200));
        let s = stanzas(&out);
        assert!(s[0].contains("<body>bold &amp; more</body>"), "{}", s[0]);
        assert!(s[0].contains("<thread>call-1</thread>"), "{}", s[0]);

        // Unknown dialog: 481.
        let stray = msg.replace("call-1", "call-9");
        assert_eq!(
            responses(&e.on_edge(now, inbound(&stray)))[0].status(),
            Some(481)
        );

        // BYE ends it.
        let bye = format!(
            "BYE sip:alice@sip.example.org;transport=tls SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKb3\nMax-Forwards: 70\nFrom: <sip:bob@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>;tag={local_tag}\nCall-ID: call-1\nCSeq: 3 BYE\nContent-Length: 0\n\n"
        );
        assert_eq!(
            responses(&e.on_edge(now, inbound(&bye)))[0].status(),
            Some(200)
        );
        assert_eq!(e.session_count(), 0);
    }

    /// RFC 7247 §7.1 through `errors.toml`: a To that is no local user is `item-not-found`, a
    /// From in a local domain `forbidden`, a body no stanza can be made of `bad-request`, each
    /// answered with the table's status.
    #[test]
    fn xmpp_side_refusals_take_their_status_from_the_error_table() {
        let page = |to: &str, content_type: &str| {
            format!(
                "MESSAGE {to} SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKp1\nMax-Forwards: 70\nFrom: <sip:bob@contoso.com>;tag=lcs1\nTo: <{to}>\nCall-ID: page-1\nCSeq: 1 MESSAGE\nContent-Type: {content_type}\nContent-Length: 2\n\nhi"
            )
        };
        let unknown = page("sip:carol@fabrikam.com", "text/plain");
        let bad_charset = page("sip:alice@example.org", "text/plain; charset=koi8-r");
        let unsupported = page("sip:alice@example.org", "text/rtf");
        let local_from = page("sip:alice@example.org", "text/plain")
            .replace("sip:bob@contoso.com", "sip:eve@example.org");
        let local_invite = invite_from_lcs(&OFFER.replace('\n', "\r\n"))
            .replace("sip:bob@contoso.com", "sip:eve@example.org");
        let status_of = |e: &mut ImEngine, raw: &str| {
            let r = &responses(&e.on_edge(Instant::now(), inbound(raw)))[0];
            (r.status().unwrap(), r.header("Accept").is_some())
        };
        let mut shipped = engine();
        assert_eq!(status_of(&mut shipped, &unknown), (404, false));
        assert_eq!(status_of(&mut shipped, &bad_charset), (400, false));
        assert_eq!(status_of(&mut shipped, &unsupported), (415, true));
        assert_eq!(status_of(&mut shipped, &local_from), (403, false));
        assert_eq!(status_of(&mut shipped, &local_invite), (403, false));
        let errors = include_str!("../../mappings/errors.toml")
            .replace("item-not-found = 404", "item-not-found = 480")
            .replace("\nbad-request = 400", "\nbad-request = 406")
            .replace("\nforbidden = 403", "\nforbidden = 405");
        let presence = include_str!("../../mappings/presence.toml");
        let mut e = engine();
        e.errors = Mappings::from_strs(presence, &errors).unwrap().errors;
        assert_eq!(status_of(&mut e, &unknown), (480, false));
        assert_eq!(status_of(&mut e, &bad_charset), (406, false));
        assert_eq!(status_of(&mut e, &local_from), (405, false));
        assert_eq!(status_of(&mut e, &local_invite), (405, false));
        // An unsupported type is about SIP content negotiation: 415 whatever the table says.
        assert_eq!(status_of(&mut e, &unsupported), (415, true));
    }

    /// The id of the (first) stanza in `out`.
    fn stanza_id_in(out: &[Output]) -> String {
        out.iter()
            .find_map(|o| match o {
                Output::Stanza(e) => e.attr("id").map(str::to_owned),
                _ => None,
            })
            .expect("a stanza with an id")
    }

    /// The XMPP server's (or a client's) error for stanza `id`, from `from`.
    fn error_for(id: &str, from: &str, kind: &str, condition: &str, body: &str) -> Element {
        let body = if body.is_empty() {
            String::new()
        } else {
            format!("<body>{body}</body>")
        };
        format!(
            "<message xmlns='jabber:component:accept' from='{from}' to='{REMOTE}' type='error' id='{id}'>{body}<error type='{kind}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn an_error_for_a_delivered_message_is_told_to_its_sender_in_its_session() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
        let id = stanza_id_in(&out);
        assert!(id.starts_with(&format!("{tag}.{}.m", e.process)), "{id}");
        // A client (a full JID) refuses it; the server quotes the body.
        let error = error_for(&id, LOCAL, "wait", "recipient-unavailable", "hi there");
        let out = e.on_stanza(now, error);
        assert_eq!(kinds(&out), ["MESSAGE"]);
        let (tx, m, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Connection(4));
        assert_eq!(m.call_id().unwrap(), "call-1");
        assert_eq!(
            String::from_utf8_lossy(m.body()),
            "Message not delivered to alice@example.org (480 Temporarily Unavailable, \
             recipient-unavailable): hi there"
        );
        // Its own failure bounces nothing back to XMPP.
        let out = e.on_edge(
            now,
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn: 4,
                response: Message::response_to(&m, 481, None, None),
                is_final: true,
            }),
        );
        assert!(stanzas(&out).is_empty());

        // Errors that name no stanza of a live session, or a chat state, tell nobody.
        let mut e = engine();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
        let id = stanza_id_in(&out);
        let doc = "<isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><state>active</state></isComposing>";
        let composing = lcs_message(&tag, 2, doc).replace(
            "Content-Type: text/plain",
            "Content-Type: application/im-iscomposing+xml",
        );
        let out = e.on_edge(now, inbound(&composing));
        assert_eq!(kinds(&out), ["200", "stanza"]);
        let typing_id = stanza_id_in(&out);
        assert!(
            typing_id.starts_with(&format!("{tag}.{}.t", e.process)),
            "{typing_id}"
        );
        for error in [
            error_for(&typing_id, "alice@example.org", "cancel", "service-unavailable", ""),
            error_for("m1", "alice@example.org", "cancel", "service-unavailable", "hi"),
            error_for(&id.replace(&tag, "othertag"), "alice@example.org", "cancel", "service-unavailable", ""),
            format!(
                "<message xmlns='jabber:component:accept' from='alice@example.org' to='{REMOTE}' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            )
            .parse()
            .unwrap(),
        ] {
            assert!(e.on_stanza(now, error).is_empty());
        }
        assert_eq!(e.session_count(), 1);
        // A session that ended (LCS opened a new one): its stanzas' errors tell nobody.
        let again = invite_from_lcs(&OFFER.replace('\n', "\r\n")).replace("call-1", "call-2");
        e.on_edge(now, inbound(&again));
        let error = error_for(&id, "alice@example.org", "wait", "resource-constraint", "");
        assert!(e.on_stanza(now, error).is_empty());
    }

    #[test]
    fn an_unreachable_recipient_ends_the_session_with_bye_and_its_status() {
        for (condition, table, status, phrase) in [
            ("service-unavailable", "", 503, "Service Unavailable"),
            ("item-not-found", "", 404, "Not Found"),
            ("item-not-found", "480", 480, "Temporarily Unavailable"),
            ("gone", "", 410, "Gone"),
        ] {
            let mut e = engine();
            if !table.is_empty() {
                let errors = include_str!("../../mappings/errors.toml")
                    .replace("item-not-found = 404", &format!("item-not-found = {table}"));
                let presence = include_str!("../../mappings/presence.toml");
                e.errors = Mappings::from_strs(presence, &errors).unwrap().errors;
            }
            let now = Instant::now();
            let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
            let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
            let id = stanza_id_in(&out);
            // The XMPP server answers for the account (its bare JID): not reachable.
            let out = e.on_stanza(
                now,
                error_for(&id, "alice@example.org", "cancel", condition, ""),
            );
            assert_eq!(kinds(&out), ["MESSAGE", "forget", "BYE"], "{condition}");
            let reqs = requests(&out);
            assert_eq!(
                String::from_utf8_lossy(reqs[0].1.body()),
                format!(
                    "Message not delivered to alice@example.org ({status} {phrase}, {condition})\n\
                     alice@example.org is not reachable (no account, offline, or blocking); \
                     this conversation has ended."
                )
            );
            assert_eq!(
                reqs[1].1.header("Reason"),
                Some(format!("SIP;cause={status};text=\"{phrase}\"").as_str())
            );
            assert_eq!(reqs[1].1.call_id().unwrap(), "call-1");
            assert_eq!(e.session_count(), 0);
            // LCS's next message in it: 481, so its client starts a session of its own.
            let out = e.on_edge(now, inbound(&lcs_message(&tag, 2, "hello?")));
            assert_eq!(responses(&out)[0].status(), Some(481));
        }
        // The same condition marked `wait`, or from one client: told, the session stays.
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let id = stanza_id_in(&out);
        let out = e.on_stanza(
            now,
            error_for(&id, "alice@example.org", "wait", "service-unavailable", ""),
        );
        assert_eq!(kinds(&out), ["MESSAGE"]);
        let out = e.on_stanza(
            now,
            error_for(&id, LOCAL, "cancel", "service-unavailable", ""),
        );
        assert_eq!(kinds(&out), ["MESSAGE"]);
        assert_eq!(e.session_count(), 1);
    }

    /// Mallory, another local user, forges an error with the id of a stanza sent to Alice
    /// (ids are not secret: a client may show them): errors are traced within the sender's
    /// own sessions, so Alice's session is neither told nor ended — whether Mallory has a
    /// session with the same LCS user or not.
    #[test]
    fn an_error_forged_with_another_users_stanza_id_tells_nobody() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
        let id = stanza_id_in(&out);
        let forged = || {
            error_for(
                &id,
                "mallory@example.org",
                "cancel",
                "service-unavailable",
                "x",
            )
        };
        assert!(e.on_stanza(now, forged()).is_empty());
        e.on_edge(
            now,
            invite_between("sip:bob@contoso.com", "sip:mallory@example.org", "call-m"),
        );
        assert_eq!(e.session_count(), 2);
        for _ in 0..5 {
            assert!(e.on_stanza(now, forged()).is_empty());
        }
        assert_eq!(e.session_count(), 2);
        let out = e.on_edge(now, inbound(&lcs_message(&tag, 2, "still there?")));
        assert_eq!(kinds(&out), ["200", "stanza"]);
    }

    #[test]
    fn notices_are_rate_limited_per_session_and_count_what_they_held_back() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let id = stanza_id_in(&out);
        let storm = |e: &mut ImEngine, at: Instant, n: usize| -> Vec<String> {
            (0..n)
                .flat_map(|_| {
                    let error = error_for(&id, LOCAL, "wait", "resource-constraint", "");
                    requests(&e.on_stanza(at, error))
                })
                .map(|(_, m, _)| String::from_utf8_lossy(m.body()).into_owned())
                .collect()
        };
        let told = storm(&mut e, now, 50);
        assert_eq!(told.len(), NOTICE_BURST as usize);
        assert!(
            told.iter().all(|t| !t.contains("more not delivered")),
            "{told:?}"
        );
        // One more per interval, with the count of those held back.
        let told = storm(&mut e, now + NOTICE_INTERVAL, 5);
        assert_eq!(told.len(), 1);
        assert!(
            told[0].ends_with(" [and 47 more not delivered]"),
            "{}",
            told[0]
        );
        assert_eq!(storm(&mut e, now + NOTICE_INTERVAL, 5).len(), 0);
        // After a quiet spell, a burst again (never more than NOTICE_BURST).
        let told = storm(&mut e, now + NOTICE_INTERVAL * 20, 10);
        assert_eq!(told.len(), NOTICE_BURST as usize);
        assert!(
            told[0].ends_with(" [and 9 more not delivered]"),
            "{}",
            told[0]
        );
        // A long body is quoted only in part.
        let mut e = engine();
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let id = stanza_id_in(&out);
        let long = "é".repeat(1000);
        let out = e.on_stanza(
            now,
            error_for(&id, LOCAL, "wait", "resource-constraint", &long),
        );
        let text = String::from_utf8_lossy(requests(&out)[0].1.body()).into_owned();
        assert!(
            text.ends_with(&format!(": {}…", "é".repeat(NOTICE_QUOTE_CHARS))),
            "{text}"
        );
    }

    #[test]
    fn characters_xml_forbids_are_dropped_from_delivered_text() {
        // Peer strings reach the stanza as sent; the link's cleaning (which every stanza
        // passes before it is queued) drops what XML forbids.
        let mut e = Element::from(chat(
            &Jid::new("a@b").unwrap(),
            &Jid::new("c@d").unwrap(),
            "call\u{FFFE}-1",
            Some("a\u{0}b\u{1b}c".to_owned()),
            Some("s\u{1}ubject"),
        ));
        assert_eq!(crate::xmpp::clean_stanza(&mut e), Ok(3));
        let xml = String::from(&e);
        assert!(xml.contains("<body>abc</body>"), "{xml}");
        assert!(xml.contains("<subject>subject</subject>"), "{xml}");
        assert!(xml.contains("<thread>call-1</thread>"), "{xml}");
    }

    #[test]
    fn a_reply_to_an_lcs_session_goes_in_that_session() {
        let mut e = engine();
        let now = Instant::now();
        e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let out = e.on_stanza(now, message(Some("reply"), ""));
        let (_, m, route) = requests(&out).remove(0);
        assert_eq!(m.method(), Some(&Method::Message));
        assert_eq!(route, Route::Connection(4));
        assert_eq!(m.call_id().unwrap(), "call-1");
        assert_eq!(e.session_count(), 1);
    }

    #[test]
    fn an_invite_without_a_message_session_gets_488_with_the_profile_sdp() {
        let mut e = engine();
        let audio = "v=0\r\no=- 0 0 IN IP4 192.0.2.5\r\ns=s\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
        let out = e.on_edge(Instant::now(), inbound(&invite_from_lcs(audio)));
        let r = &responses(&out)[0];
        assert_eq!(r.status(), Some(488));
        assert!(
            std::str::from_utf8(r.body())
                .unwrap()
                .contains("m=message 5060 sip/tcp *")
        );
    }

    // ------------------------------------------------------------------ persistence

    /// What each output is, in order (store writes with their durability).
    /// The outputs' kinds in order (facts for the other engines left out: no action).
    fn kinds(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter(|o| !matches!(o, Output::Fact(_)))
            .map(|o| match o {
                Output::Stanza(_) => "stanza".into(),
                Output::Request { request, .. } => request.method().unwrap().to_string(),
                Output::Respond { response, .. } => response.status().unwrap().to_string(),
                Output::Ack { .. } => "ACK".into(),
                Output::PersistIm { durable: true, .. } => "store".into(),
                Output::PersistIm { durable: false, .. } => "store-lazy".into(),
                Output::ForgetIm { .. } => "forget".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn stored(out: &[Output]) -> Vec<ImDialog> {
        out.iter()
            .filter_map(|o| match o {
                Output::PersistIm { dialog, .. } => Some((**dialog).clone()),
                _ => None,
            })
            .collect()
    }

    fn lcs_message(local_tag: &str, cseq: u32, body: &str) -> String {
        format!(
            "MESSAGE sip:alice@sip.example.org;transport=tls SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKm{cseq}\nMax-Forwards: 70\nFrom: <sip:bob@contoso.com>;tag=lcs1\nTo: <sip:alice@example.org>;tag={local_tag}\nCall-ID: call-1\nCSeq: {cseq} MESSAGE\nContent-Type: text/plain\nContent-Length: {}\n\n{body}",
            body.len()
        )
    }

    /// The stored record of a session LCS opened (`call-1`), and its local tag.
    fn lcs_session(e: &mut ImEngine, now: Instant) -> (ImDialog, String) {
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
        (stored(&out).remove(0), tag)
    }

    #[test]
    fn a_session_is_stored_synced_before_it_exists_for_lcs_and_forgotten_when_it_ends() {
        let mut e = engine();
        let now = Instant::now();
        // Ours: stored before the ACK, with the CSeq reserved above the INVITE's.
        let out = e.on_stanza(now, message(Some("hello"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        assert_eq!(kinds(&out), ["store", "ACK", "MESSAGE"]);
        let r = stored(&out).remove(0);
        assert_eq!(
            (r.local_jid.as_str(), r.remote_aor.as_str()),
            ("alice@example.org", "sip:bob@contoso.com")
        );
        assert_eq!(r.dialog.call_id, invite.call_id().unwrap());
        assert_eq!(r.dialog.remote_tag, "remote");
        assert_eq!(
            r.dialog.remote_target,
            "sip:bob@192.0.2.5:5061;transport=tls"
        );
        assert_eq!(r.dialog.local_cseq, 1 + CSEQ_RESERVE);
        assert_eq!(r.dialog.created_unix, 1_700_000_000);
        // The idle BYE forgets it.
        let out = e.handle_timeout(now + Duration::from_secs(61));
        assert_eq!(kinds(&out), ["forget", "BYE"]);

        // LCS's: stored before the 200; its BYE forgets it.
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        assert_eq!(kinds(&out), ["store", "200", "stanza"]);
        let r = stored(&out).remove(0);
        assert_eq!(r.dialog.call_id, "call-1");
        assert_eq!(r.dialog.remote_cseq, Some(1));
        assert_eq!(r.dialog.local_cseq, 1 + CSEQ_RESERVE);
        let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
        let bye = lcs_message(&tag, 2, "").replace("MESSAGE", "BYE");
        let out = e.on_edge(now, inbound(&bye));
        assert_eq!(kinds(&out), ["200", "forget"]);

        // A failure that ends the session forgets it; so does the replacement at the age limit.
        let (tx, msg) = open(&mut e, now);
        let out = e.on_edge(
            now,
            final_event(tx, Message::response_to(&msg, 408, None, None)),
        );
        assert_eq!(kinds(&out), ["forget", "stanza"]);
        open(&mut e, now);
        let out = e.on_stanza(now + Duration::from_secs(3601), message(Some("late"), ""));
        assert_eq!(kinds(&out), ["forget", "BYE", "INVITE"]);
    }

    #[test]
    fn the_stored_local_cseq_is_a_reservation_raised_before_it_is_passed() {
        let mut e = engine();
        let now = Instant::now();
        let (_, first) = open(&mut e, now);
        assert_eq!(first.cseq().unwrap().number, 2);
        // CSeq 3 ..= 1001 are within the reservation: no write.
        for n in 3..=1 + CSEQ_RESERVE {
            let out = e.on_stanza(now, message(Some("m"), ""));
            assert_eq!(kinds(&out), ["MESSAGE"], "CSeq {n}");
            assert_eq!(requests(&out)[0].1.cseq().unwrap().number, n);
        }
        let out = e.on_stanza(now, message(Some("m"), ""));
        assert_eq!(kinds(&out), ["store", "MESSAGE"]);
        assert_eq!(stored(&out)[0].dialog.local_cseq, 2 * CSEQ_RESERVE + 1);
        assert_eq!(requests(&out)[0].1.cseq().unwrap().number, CSEQ_RESERVE + 2);
    }

    /// A second engine (a restarted bridge) takes the first one's stored sessions up.
    fn restarted(records: Vec<ImDialog>, now: Instant) -> (ImEngine, Vec<Output>) {
        let mut e = engine_seeded(99);
        let out = e.restore(now, records);
        (e, out)
    }

    #[test]
    fn a_restored_session_continues_its_dialog_above_every_cseq_sent_before() {
        let now = Instant::now();
        let mut first = engine();
        let out = first.on_stanza(now, message(Some("hello"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let out = first.on_edge(now, final_event(tx, answer(&invite, 200)));
        let record = stored(&out).remove(0);
        for _ in 0..5 {
            first.on_stanza(now, message(Some("more"), ""));
        }
        let later = now + Duration::from_secs(30);
        let (mut e, out) = restarted(vec![record.clone()], later);
        assert!(out.is_empty(), "{:?}", kinds(&out));
        assert_eq!(e.session_count(), 1);
        // Alice writes again: in the stored dialog, by domain (no connection yet), above the
        // reservation, which is raised first.
        let out = e.on_stanza(later, message(Some("after"), ""));
        assert_eq!(kinds(&out), ["store", "MESSAGE"]);
        let (tx, m, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap());
        assert_eq!(m.to().unwrap().tag(), Some("remote"));
        assert_eq!(m.cseq().unwrap().number, 1 + CSEQ_RESERVE + 1);
        assert_eq!(
            m.request_uri(),
            Some("sip:bob@192.0.2.5:5061;transport=tls")
        );
        assert_eq!(stored(&out)[0].dialog.local_cseq, 1 + 2 * CSEQ_RESERVE);
        assert_eq!(
            stored(&out)[0].dialog.created_unix,
            record.dialog.created_unix
        );
        // The answer shows the connection: the dialog lives there from now on.
        e.on_edge(
            later,
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn: 5,
                response: Message::response_to(&m, 200, None, None),
                is_final: true,
            }),
        );
        let out = e.on_stanza(later, message(Some("again"), ""));
        assert_eq!(requests(&out)[0].2, Route::Connection(5));

        // LCS's session, restored: its next MESSAGE reaches alice in the same thread.
        let mut lcs = engine();
        let (record, tag) = lcs_session(&mut lcs, now);
        let (mut e, _) = restarted(vec![record], later);
        let out = e.on_edge(later, inbound(&lcs_message(&tag, 2, "still there?")));
        assert_eq!(kinds(&out), ["200", "stanza"]);
        let s = &stanzas(&out)[0];
        assert!(s.contains("<body>still there?</body>"), "{s}");
        assert!(s.contains("<thread>call-1</thread>"), "{s}");
        assert!(
            s.contains(r"from='bob\40contoso.com@lcs.example.org'"),
            "{s}"
        );
        // The reply goes back on the connection LCS's request came on.
        let out = e.on_stanza(later, message(Some("yes"), ""));
        let (_, m, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Connection(4));
        assert_eq!(m.call_id().unwrap(), "call-1");
        assert_eq!(m.cseq().unwrap().number, 1 + CSEQ_RESERVE + 1);
    }

    /// A re-INVITE that moves the remote target is written (lazily), so that a restarted
    /// bridge sends to the new target.
    #[test]
    fn a_target_refresh_is_stored() {
        let mut e = engine();
        let now = Instant::now();
        let (_, tag) = lcs_session(&mut e, now);
        let reinvite = |cseq: u32, contact: &str| {
            let raw = invite_from_lcs(&OFFER.replace('\n', "\r\n"))
                .replace(
                    "To: <sip:alice@example.org>",
                    &format!("To: <sip:alice@example.org>;tag={tag}"),
                )
                .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
                .replace("<sip:bob@192.0.2.5:5061;transport=tls>", contact);
            inbound(&raw)
        };
        // The same Contact: nothing to write.
        let out = e.on_edge(now, reinvite(2, "<sip:bob@192.0.2.5:5061;transport=tls>"));
        assert_eq!(kinds(&out), ["200"]);
        let out = e.on_edge(now, reinvite(3, "<sip:bob@192.0.2.9:5061;transport=tls>"));
        assert_eq!(kinds(&out), ["store-lazy", "200"]);
        let record = stored(&out).remove(0);
        assert_eq!(
            record.dialog.remote_target,
            "sip:bob@192.0.2.9:5061;transport=tls"
        );
        assert_eq!(record.dialog.local_cseq, 1 + CSEQ_RESERVE);
        let (mut e, _) = restarted(vec![record], now);
        let out = e.on_stanza(now, message(Some("after"), ""));
        let (_, m, _) = requests(&out).remove(0);
        assert_eq!(
            m.request_uri(),
            Some("sip:bob@192.0.2.9:5061;transport=tls")
        );
    }

    /// A restarted bridge numbers its stanzas from 1 again, in the same sessions and threads:
    /// the process part keeps their ids apart (clients drop a message whose id they have seen),
    /// and an error for a stanza of the old process is still traced to its session.
    #[test]
    fn stanza_ids_do_not_repeat_after_a_restart() {
        let now = Instant::now();
        let mut lcs = engine();
        let out = lcs.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
        let (record, before) = (stored(&out).remove(0), stanza_id_in(&out));
        let (mut e, _) = restarted(vec![record], now);
        let out = e.on_edge(now, inbound(&lcs_message(&tag, 2, "again")));
        let after = stanza_id_in(&out);
        assert_ne!(before, after);
        for id in [&before, &after] {
            assert!(
                id.starts_with(&format!("{tag}.")) && id.ends_with(".m1"),
                "{id}"
            );
        }
        let out = e.on_stanza(
            now,
            error_for(&before, LOCAL, "wait", "resource-constraint", ""),
        );
        assert_eq!(kinds(&out), ["store", "MESSAGE"]);
        // Ids written before the process part are still read; nothing else is.
        assert_eq!(
            parse_stanza_id(&format!("{tag}.t7")),
            Some((tag.as_str(), StanzaKind::Typing))
        );
        for other in ["a.b.c.m1", "a..m1", "a.b-c.m1", ".b.m1", "a.b.x1", "a.b.m"] {
            assert_eq!(parse_stanza_id(other), None, "{other}");
        }
    }

    #[test]
    fn restore_ends_dialogs_past_their_age_and_forgets_unusable_records() {
        let now = Instant::now();
        let mut lcs = engine();
        let (good, _) = lcs_session(&mut lcs, now);
        let mut old = good.clone();
        old.remote_aor = "sip:carol@contoso.com".into();
        old.dialog.call_id = "call-old".into();
        old.dialog.created_unix = 1_700_000_000 - 3600;
        let mut no_user = good.clone();
        no_user.local_jid = "alice@elsewhere.net".into();
        let mut local_remote = good.clone();
        local_remote.remote_aor = "sip:bob@example.org".into();
        let mut smuggled = good.clone();
        smuggled.remote_aor = "sip:dave@contoso.com".into();
        smuggled.dialog.call_id = "x\r\nVia: evil".into();
        // A local CSeq no reservation can follow (not written by this bridge).
        let mut exhausted = good.clone();
        exhausted.remote_aor = "sip:erin@contoso.com".into();
        exhausted.dialog.call_id = "call-max".into();
        exhausted.dialog.local_cseq = u32::MAX - 5;
        // The same pair written another way, and the same dialog under another pair.
        let mut same_pair = good.clone();
        same_pair.local_jid = "Alice@Example.org".into();
        same_pair.dialog.call_id = "call-other".into();
        let mut same_dialog = good.clone();
        same_dialog.remote_aor = "sip:frank@contoso.com".into();
        let (e, out) = restarted(
            vec![
                good.clone(),
                old,
                no_user,
                local_remote,
                smuggled,
                exhausted,
                same_pair,
                same_dialog,
                good,
            ],
            now,
        );
        assert_eq!(e.session_count(), 1);
        // The expired dialog's record is removed first, so its BYE needs no new reservation
        // (no synced write per expired dialog at a start).
        assert_eq!(
            kinds(&out),
            [
                "forget", "BYE", "forget", "forget", "forget", "forget", "forget", "forget"
            ]
        );
        let (_, bye, route) = requests(&out).remove(0);
        assert_eq!(bye.call_id().unwrap(), "call-old");
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_eq!(bye.cseq().unwrap().number, 2 + CSEQ_RESERVE);
        let forgotten: Vec<(String, String)> = out
            .iter()
            .filter_map(|o| match o {
                Output::ForgetIm { local, remote } => Some((local.clone(), remote.clone())),
                _ => None,
            })
            .collect();
        let pair = |l: &str, r: &str| (l.to_owned(), r.to_owned());
        assert_eq!(
            forgotten[4..],
            [
                pair("alice@example.org", "sip:erin@contoso.com"),
                pair("Alice@Example.org", "sip:bob@contoso.com"),
                pair("alice@example.org", "sip:frank@contoso.com"),
            ]
        );
    }

    #[test]
    fn a_481_sends_the_message_again_once_in_a_fresh_session() {
        let now = Instant::now();
        let mut first = engine();
        open(&mut first, now);
        let record = {
            let out = first.on_stanza(now, message(Some("x"), ""));
            assert_eq!(kinds(&out), ["MESSAGE"]);
            first.record(&(
                BareJid::new("alice@example.org").unwrap(),
                "sip:bob@contoso.com".into(),
            ))
        }
        .unwrap();
        let (mut e, _) = restarted(vec![record], now);
        // LCS no longer knows the dialog (it restarted too).
        let out = e.on_stanza(now, message(Some("after the restart"), ""));
        let (tx, m, _) = requests(&out).remove(0);
        let out = e.on_edge(
            now,
            final_event(tx, Message::response_to(&m, 481, None, None)),
        );
        assert_eq!(kinds(&out), ["forget", "INVITE"]);
        assert!(stanzas(&out).is_empty(), "no bounce");
        let (tx, invite, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        assert_eq!(kinds(&out), ["store", "ACK", "MESSAGE"]);
        let (tx, m, _) = requests(&out).remove(0);
        assert_eq!(m.body(), b"after the restart");
        assert_eq!(m.call_id().unwrap(), invite.call_id().unwrap());
        // Not a third time: a second 481 bounces it.
        let out = e.on_edge(
            now,
            final_event(tx, Message::response_to(&m, 481, None, None)),
        );
        assert_eq!(kinds(&out), ["forget", "stanza"]);
        assert!(stanzas(&out)[0].contains("item-not-found"));
    }

    /// An INVITE from `from` to `to` in dialog `call`, as LCS sends it.
    fn invite_between(from: &str, to: &str, call: &str) -> EdgeEvent {
        inbound(
            &invite_from_lcs(&OFFER.replace('\n', "\r\n"))
                .replace("sip:bob@contoso.com", from)
                .replace("sip:alice@example.org", to)
                .replace("call-1", call),
        )
    }

    #[test]
    fn sessions_beyond_a_limit_are_refused_both_ways() {
        let mut e = engine();
        e.settings.max_sessions_per_user = 2;
        e.settings.max_sessions_per_domain = 3;
        e.settings.max_sessions_per_partner = 4;
        e.settings.max_sessions = 5;
        e.settings.partners.insert("fabrikam.com".into());
        let now = Instant::now();
        let status = |e: &mut ImEngine, from: &str, to: &str, call: &str| {
            let r = responses(&e.on_edge(now, invite_between(from, to, call))).remove(0);
            (r.status().unwrap(), r.reason().unwrap_or("").to_owned())
        };
        let ok = (200, "OK".to_owned());
        let alice = "sip:alice@example.org";
        assert_eq!(status(&mut e, "sip:bob@contoso.com", alice, "c1"), ok);
        assert_eq!(status(&mut e, "sip:carol@contoso.com", alice, "c2"), ok);
        // Alice has two: a third is refused, this INVITE only (486, not 503).
        let busy = |why: &str| (486, format!("Busy Here: too many chat sessions {why}"));
        assert_eq!(
            status(&mut e, "sip:dave@contoso.com", alice, "c3"),
            busy("for this user (im.max_sessions_per_user)")
        );
        // The same party in a new dialog replaces its session: not one more.
        assert_eq!(status(&mut e, "sip:bob@contoso.com", alice, "c4"), ok);
        // Her own message that would open a third: returned with resource-constraint.
        let to_erin = message(Some("hi erin"), "").to_owned();
        let to_erin: Element = String::from(&to_erin)
            .replace(r"bob\40contoso.com", r"erin\40contoso.com")
            .parse()
            .unwrap();
        let out = e.on_stanza(now, to_erin);
        assert!(requests(&out).is_empty());
        let s = &stanzas(&out)[0];
        assert!(s.contains("resource-constraint"), "{s}");
        assert!(
            s.contains(
                "too many chat sessions open for alice@example.org (im.max_sessions_per_user)"
            ),
            "{s}"
        );
        // contoso.com, a discovered domain, has three at most.
        assert_eq!(
            status(&mut e, "sip:frank@contoso.com", "sip:zoe@example.org", "c5"),
            ok
        );
        assert_eq!(
            status(&mut e, "sip:gina@contoso.com", "sip:zoe@example.org", "c6"),
            busy("with contoso.com (im.max_sessions_per_domain)")
        );
        // A listed partner counts apart, up to the overall limit.
        assert_eq!(
            status(&mut e, "sip:h@fabrikam.com", "sip:yan@example.org", "c7"),
            ok
        );
        assert_eq!(
            status(&mut e, "sip:i@fabrikam.com", "sip:yan@example.org", "c8"),
            ok
        );
        assert_eq!(
            status(&mut e, "sip:j@fabrikam.com", "sip:xi@example.org", "c9"),
            busy("(im.max_sessions)")
        );
        assert_eq!(e.session_count(), 5);
        assert_eq!(
            e.limit_hits()
                .iter()
                .map(|(k, n)| (*k, *n))
                .collect::<Vec<_>>(),
            [
                ("im.max_sessions", 1),
                ("im.max_sessions_per_domain", 1),
                ("im.max_sessions_per_user", 2)
            ]
        );
        // A session that ends frees its place.
        let tag = {
            let out = e.on_edge(now, invite_between("sip:bob@contoso.com", alice, "c10"));
            responses(&out)[0].to().unwrap().tag().unwrap().to_owned()
        };
        let bye = lcs_message(&tag, 2, "")
            .replace("MESSAGE", "BYE")
            .replace("call-1", "c10");
        e.on_edge(now, inbound(&bye));
        assert_eq!(e.session_count(), 4);
        assert_eq!(status(&mut e, "sip:dave@contoso.com", alice, "c11"), ok);
    }

    /// Sessions opened and ended fast leave no more idle deadlines than a bounded multiple of
    /// the live sessions.
    #[test]
    fn the_idle_heap_does_not_grow_with_ended_sessions() {
        let mut e = engine();
        let now = Instant::now();
        for n in 0..3000 {
            let call = format!("churn-{n}");
            let out = e.on_edge(
                now,
                invite_between("sip:bob@contoso.com", "sip:alice@example.org", &call),
            );
            let tag = responses(&out)[0].to().unwrap().tag().unwrap().to_owned();
            let bye = lcs_message(&tag, 2, "")
                .replace("MESSAGE", "BYE")
                .replace("call-1", &call);
            e.on_edge(now, inbound(&bye));
        }
        assert_eq!(e.session_count(), 0);
        assert!(e.idle_entries() <= 1025, "{}", e.idle_entries());
        // A live session still idles out.
        open(&mut e, now);
        let out = e.handle_timeout(now + Duration::from_secs(61));
        assert_eq!(kinds(&out), ["forget", "BYE"]);
    }

    /// The durable write outputs in `out` (what the runner reports failed).
    fn writes(out: &[Output]) -> Vec<Output> {
        out.iter()
            .filter(|o| matches!(o, Output::PersistIm { durable: true, .. }))
            .cloned()
            .collect()
    }

    #[test]
    fn a_reservation_the_store_did_not_take_withdraws_what_would_pass_it() {
        let mut e = engine();
        let now = Instant::now();
        open(&mut e, now);
        for _ in 3..=1 + CSEQ_RESERVE {
            e.on_stanza(now, message(Some("m"), ""));
        }
        let out = e.on_stanza(now, message(Some("over"), ""));
        assert_eq!(kinds(&out), ["store", "MESSAGE"]);
        let failed = writes(&out);
        assert!(
            matches!(failed[0], Output::PersistIm { before: Some(b), .. } if b == 1 + CSEQ_RESERVE)
        );
        let (tx, m, _) = requests(&out).remove(0);
        assert_eq!(m.cseq().unwrap().number, 2 + CSEQ_RESERVE);
        // The write fails: the store still holds 1 + CSEQ_RESERVE, so the MESSAGE above it
        // must not go; the session ends and the message goes in a fresh one, unbounced.
        let (withdrawn, first) = e.store_failed(now, &failed, &[(tx, &m)]);
        assert_eq!(withdrawn, [tx]);
        assert_eq!(kinds(&first), ["forget", "BYE", "INVITE"]);
        let reqs = requests(&first);
        assert_eq!(reqs[0].1.call_id().unwrap(), m.call_id().unwrap());
        let (tx, invite, _) = reqs[1].clone();
        assert_ne!(invite.call_id().unwrap(), m.call_id().unwrap());
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        assert_eq!(kinds(&out), ["store", "ACK", "MESSAGE"]);
        let (tx, m, _) = requests(&out).remove(0);
        assert_eq!(m.body(), b"over");
        // The fresh session's first record fails too: nothing is withdrawn (no record of the
        // dialog can hold a lower CSeq) and the session goes on.
        let (withdrawn, first) = e.store_failed(now, &writes(&out), &[(tx, &m)]);
        assert!(withdrawn.is_empty() && first.is_empty());
        let out = e.on_stanza(now, message(Some("next"), ""));
        assert_eq!(kinds(&out), ["MESSAGE"]);
        assert_eq!(e.session_count(), 1);
    }

    #[test]
    fn a_500_in_a_restored_session_sends_the_message_again_in_a_fresh_one() {
        let now = Instant::now();
        let mut first = engine();
        open(&mut first, now);
        let key = (
            BareJid::new("alice@example.org").unwrap(),
            "sip:bob@contoso.com".to_owned(),
        );
        let record = first.record(&key).unwrap();
        let (mut e, _) = restarted(vec![record.clone()], now);
        let out = e.on_stanza(now, message(Some("after the restart"), ""));
        let (tx, m, _) = requests(&out).remove(0);
        // LCS has seen this CSeq (the old process's reservation was lost).
        let out = e.on_edge(
            now,
            final_event(tx, Message::response_to(&m, 500, None, None)),
        );
        assert_eq!(kinds(&out), ["forget", "BYE", "INVITE"]);
        assert!(stanzas(&out).is_empty(), "no bounce");
        let (tx, invite, _) = requests(&out).remove(1);
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        let (_, m, _) = requests(&out).remove(0);
        assert_eq!(m.body(), b"after the restart");

        // Once a request of this process was answered 2xx in it, a 500 is the server's own
        // failure: the message is returned to its sender, the session stays.
        let (mut e, _) = restarted(vec![record], now);
        let out = e.on_stanza(now, message(Some("one"), ""));
        let (tx, m, _) = requests(&out).remove(0);
        e.on_edge(
            now,
            final_event(tx, Message::response_to(&m, 200, None, None)),
        );
        let out = e.on_stanza(now, message(Some("two"), ""));
        let (tx, m, _) = requests(&out).remove(0);
        let out = e.on_edge(
            now,
            final_event(tx, Message::response_to(&m, 500, None, None)),
        );
        assert_eq!(kinds(&out), ["stanza"]);
        assert!(stanzas(&out)[0].contains("type='error'"));
        assert_eq!(e.session_count(), 1);
    }

    /// The profile, "Connection affinity": "All messages within a given SIP dialog must be sent
    /// over the exact same connection." A live session whose connection is lost ends locally
    /// (no BYE can go anywhere; its record is removed); the next message opens a new INVITE
    /// session by domain; LCS's request in the ended dialog gets 481.
    #[test]
    fn a_lost_connection_ends_its_sessions_and_the_next_message_opens_a_new_one() {
        let mut e = engine();
        let now = Instant::now();
        let (_, m) = open(&mut e, now);
        let out = e.on_edge(now, EdgeEvent::ConnectionLost { conn: 9 });
        assert_eq!(kinds(&out), ["forget"], "no BYE");
        assert_eq!(e.session_count(), 0);
        // Another connection's loss ends nothing.
        let (_, m2) = open(&mut e, now);
        assert_ne!(m2.call_id().unwrap(), m.call_id().unwrap());
        assert!(
            e.on_edge(now, EdgeEvent::ConnectionLost { conn: 3 })
                .is_empty()
        );
        assert_eq!(e.session_count(), 1);
        e.on_edge(now, EdgeEvent::ConnectionLost { conn: 9 });
        let out = e.on_stanza(now, message(Some("still here"), ""));
        let (_, invite, route) = requests(&out).remove(0);
        assert_eq!(invite.method(), Some(&Method::Invite));
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_ne!(invite.call_id().unwrap(), m2.call_id().unwrap());
        // An LCS session the same: ended; LCS's next MESSAGE in it gets 481.
        let mut e = engine();
        let (_, tag) = lcs_session(&mut e, now);
        e.on_edge(now, EdgeEvent::ConnectionLost { conn: 4 });
        assert_eq!(e.session_count(), 0);
        let out = e.on_edge(now, inbound(&lcs_message(&tag, 2, "late")));
        assert_eq!(responses(&out)[0].status(), Some(481));
        assert!(stanzas(&out).is_empty());
    }

    /// A message lost with its connection (a transport error, or the connection gone before it
    /// could be sent) goes once more in a new INVITE session by domain, never in its dialog on
    /// another connection; lost again, it returns to its sender.
    #[test]
    fn a_message_lost_with_its_connection_goes_once_more_in_a_new_session() {
        let mut e = engine();
        let now = Instant::now();
        let lost = |tx| EdgeEvent::Transaction(TxEvent::TransportError { tx });
        // The transport error before the connection's loss is reported, and after it.
        for lost_first in [false, true] {
            let (tx, m) = open(&mut e, now);
            if lost_first {
                e.on_edge(now, EdgeEvent::ConnectionLost { conn: 9 });
            }
            let out = e.on_edge(now, lost(tx));
            let expected: &[&str] = if lost_first {
                &["INVITE"]
            } else {
                &["forget", "INVITE"]
            };
            assert_eq!(kinds(&out), expected, "lost first: {lost_first}");
            let (itx, invite, route) = requests(&out).remove(0);
            assert_eq!(route, Route::Domain("contoso.com".into()));
            assert_ne!(invite.call_id().unwrap(), m.call_id().unwrap());
            let out = e.on_edge(now, final_event(itx, answer(&invite, 200)));
            let (tx, again, route) = requests(&out).remove(0);
            assert_eq!(again.call_id().unwrap(), invite.call_id().unwrap());
            assert_eq!(route, Route::Connection(9));
            assert_eq!(again.body(), m.body());
            // Lost again: returned, the session ended.
            let out = e.on_edge(now, lost(tx));
            assert_eq!(kinds(&out), ["forget", "stanza"]);
            assert!(stanzas(&out)[0].contains("recipient-unavailable"));
            assert_eq!(e.session_count(), 0);
        }
        // The connection gone before the MESSAGE could go: the same.
        let (tx, m) = open(&mut e, now);
        let out = e.on_edge(
            now,
            EdgeEvent::Undeliverable {
                tx,
                why: Undeliverable::ConnectionGone { conn: 9 },
            },
        );
        assert_eq!(kinds(&out), ["forget", "INVITE"]);
        let (_, invite, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_ne!(invite.call_id().unwrap(), m.call_id().unwrap());
    }

    /// An INVITE lost with its connection before any answer goes again, once, as a new INVITE
    /// by domain, with the messages that waited for it; lost again, they return to their
    /// senders.
    #[test]
    fn an_invite_lost_with_its_connection_goes_once_more() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, message(Some("first"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let lost = |tx| EdgeEvent::Transaction(TxEvent::TransportError { tx });
        let out = e.on_edge(now, lost(tx));
        assert_eq!(kinds(&out), ["INVITE"]);
        let (tx, again, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_ne!(again.call_id().unwrap(), invite.call_id().unwrap());
        let out = e.on_edge(now, lost(tx));
        assert_eq!(kinds(&out), ["stanza"]);
        assert!(stanzas(&out)[0].contains("recipient-unavailable"));
        assert_eq!(e.session_count(), 0);
        // Answered after the first loss: the message goes in the new session.
        let out = e.on_stanza(now, message(Some("second"), ""));
        let (tx, _, _) = requests(&out).remove(0);
        let out = e.on_edge(
            now,
            EdgeEvent::Undeliverable {
                tx,
                why: Undeliverable::ConnectionGone { conn: 9 },
            },
        );
        let (tx, again, _) = requests(&out).remove(0);
        let out = e.on_edge(now, final_event(tx, answer(&again, 200)));
        let (_, m, _) = requests(&out).remove(0);
        assert_eq!(m.body(), b"second");
        assert_eq!(m.call_id().unwrap(), again.call_id().unwrap());
    }

    /// Sessions taken up from the store continue their stored dialog: the old connection died
    /// with the old process, so the first connection that carries them binds them, and a loss
    /// of some other connection before that does not end them.
    #[test]
    fn a_restored_session_is_bound_by_the_first_connection_that_carries_it() {
        let now = Instant::now();
        let mut e = engine();
        let (_, m) = open(&mut e, now);
        let record = e
            .record(&(
                BareJid::new("alice@example.org").unwrap(),
                "sip:bob@contoso.com".into(),
            ))
            .unwrap();
        let (mut e, _) = restarted(vec![record], now);
        assert!(
            e.on_edge(now, EdgeEvent::ConnectionLost { conn: 9 })
                .is_empty()
        );
        let out = e.on_stanza(now, message(Some("after the restart"), ""));
        let (tx, again, route) = requests(&out).remove(0);
        assert_eq!(route, Route::Domain("contoso.com".into()));
        assert_eq!(again.call_id().unwrap(), m.call_id().unwrap());
        let ok = answer(&again, 200);
        e.on_edge(
            now,
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn: 12,
                response: ok,
                is_final: true,
            }),
        );
        let out = e.on_stanza(now, message(Some("bound"), ""));
        assert_eq!(requests(&out)[0].2, Route::Connection(12));
        // Now bound: the loss of that connection ends it.
        e.on_edge(now, EdgeEvent::ConnectionLost { conn: 12 });
        assert_eq!(e.session_count(), 0);
    }

    #[test]
    fn an_invite_from_lcs_while_ours_is_pending_carries_what_waited_and_ours_is_ended() {
        let mut e = engine();
        let now = Instant::now();
        let out = e.on_stanza(now, message(Some("crossing"), ""));
        let (tx, invite, _) = requests(&out).remove(0);
        let out = e.on_edge(now, inbound(&invite_from_lcs(&OFFER.replace('\n', "\r\n"))));
        assert_eq!(kinds(&out), ["store", "200", "stanza", "MESSAGE"]);
        let m = &requests(&out)[0].1;
        assert_eq!(
            (m.call_id().unwrap(), m.body()),
            ("call-1", &b"crossing"[..])
        );
        // Our INVITE's 200 arrives after all: ACKed and ended, the session stays LCS's.
        let out = e.on_edge(now, final_event(tx, answer(&invite, 200)));
        assert_eq!(kinds(&out), ["ACK", "BYE"]);
        assert_eq!(
            requests(&out)[0].1.call_id().unwrap(),
            invite.call_id().unwrap()
        );
        let out = e.on_stanza(now, message(Some("next"), ""));
        assert_eq!(requests(&out)[0].1.call_id().unwrap(), "call-1");
    }

    /// An LCS INVITE whose `ms-text-format` header is `value` (none when `None`).
    fn invite_with_first(value: Option<&str>) -> EdgeEvent {
        let raw = invite_from_lcs(&OFFER.replace('\n', "\r\n"));
        let line = "ms-text-format: text/plain; charset=UTF-8;ms-body=aGkgdGhlcmU=\n";
        inbound(&match value {
            Some(v) => raw.replace(line, &format!("ms-text-format: {v}\n")),
            None => raw.replace(line, ""),
        })
    }

    fn supported(r: &Message) -> Vec<String> {
        r.header_all("Supported").map(str::to_owned).collect()
    }

    /// pidgin-sipe `sipe-incoming.c` `process_incoming_invite` adds `Supported: ms-text-format`
    /// only when it displayed the first message ("accepts received message"); as a sender
    /// (`sipe-im.c` `process_invite_response`) it drops its queued copy only when the 200 lists
    /// it, else sends it as a MESSAGE. So the 200 says it exactly when the message was taken.
    #[test]
    fn supported_ms_text_format_exactly_when_the_first_message_was_taken() {
        let now = Instant::now();
        // Taken: delivered once, and said.
        let mut e = engine();
        let out = e.on_edge(
            now,
            invite_with_first(Some(
                "text/plain; charset=UTF-8;msgr=WAAt;ms-body=aGkgdGhlcmU=",
            )),
        );
        assert_eq!(supported(&responses(&out)[0]), ["ms-text-format"]);
        let s = stanzas(&out);
        assert_eq!(s.len(), 1);
        assert!(s[0].contains("<body>hi there</body>"), "{}", s[0]);
        // Absent, empty, undecodable (bad base64, a type not read, bad charset): nothing
        // delivered, not said; the MESSAGE that follows is delivered once.
        for value in [
            None,
            Some("text/plain; charset=UTF-8;ms-body="),
            Some("text/plain; charset=UTF-8;ms-body=%%%not-base64"),
            Some("text/rtf;ms-body=e1xydGYxIEhpfQ=="),
            Some("text/plain; charset=koi8-r;ms-body=aGk="),
        ] {
            let mut e = engine();
            let out = e.on_edge(now, invite_with_first(value));
            let r = &responses(&out)[0];
            assert_eq!(r.status(), Some(200), "{value:?}");
            assert!(supported(r).is_empty(), "{value:?}: {:?}", supported(r));
            assert!(stanzas(&out).is_empty(), "{value:?}");
            let tag = r.to().unwrap().tag().unwrap().to_owned();
            let out = e.on_edge(now, inbound(&lcs_message(&tag, 2, "hi there")));
            assert_eq!(responses(&out)[0].status(), Some(200));
            let s = stanzas(&out);
            assert_eq!(s.len(), 1, "{value:?}");
            assert!(s[0].contains("<body>hi there</body>"), "{}", s[0]);
        }
    }

    /// The file offer pidgin-sipe sends (`sipe-ft.c` `sipe_ft_outgoing_init`).
    const FT_OFFER: &str = "Application-Name: File Transfer\r\nApplication-GUID: {5D3E02AB-6190-11d3-BBBB-00C04F795683}\r\nInvitation-Command: INVITE\r\nInvitation-Cookie: 28796\r\nApplication-File: report.pdf\r\nApplication-FileSize: 1572864\r\nEncryption: R\r\n";
    const FT_NOTICE: &str = "[Offered you the file \"report.pdf\" (1.5 MB). This gateway does not transfer files, so the offer was declined; ask for it another way (for example a link or e-mail).]";
    const FT_DECLINE: &str =
        "Invitation-Command: CANCEL\r\nInvitation-Cookie: 28796\r\nCancel-Code: REJECT\r\n";

    /// The decline: a MESSAGE in the session on its connection, as pidgin-sipe's
    /// `ft_request_denied` sends it.
    fn assert_declined(out: &[Output]) {
        let reqs = requests(out);
        assert_eq!(reqs.len(), 1);
        let (_, m, route) = &reqs[0];
        assert_eq!(m.method(), Some(&Method::Message));
        assert_eq!(m.call_id().unwrap(), "call-1");
        assert_eq!(
            m.header("Content-Type"),
            Some("text/x-msmsgsinvite; charset=UTF-8")
        );
        assert_eq!(std::str::from_utf8(m.body()).unwrap(), FT_DECLINE);
        assert_eq!(*route, Route::Connection(4));
    }

    /// A file offered in the INVITE (`ms-text-format: text/x-msmsgsinvite…`) is taken: the
    /// XMPP user is told, LCS gets the decline in the new session.
    #[test]
    fn a_file_offered_in_the_invite_is_declined_and_told() {
        use base64::Engine as _;
        let now = Instant::now();
        let mut e = engine();
        let b64 = base64::engine::general_purpose::STANDARD.encode(FT_OFFER);
        let out = e.on_edge(
            now,
            invite_with_first(Some(&format!(
                "text/x-msmsgsinvite; charset=UTF-8;ms-body={b64}"
            ))),
        );
        assert_eq!(supported(&responses(&out)[0]), ["ms-text-format"]);
        let s = stanzas(&out);
        assert_eq!(s.len(), 1);
        assert!(
            s[0].contains(&format!("<body>{FT_NOTICE}</body>")),
            "{}",
            s[0]
        );
        assert_declined(&out);
    }

    /// A file offered in the session (pidgin-sipe `process_incoming_message` →
    /// `sipe_process_incoming_x_msmsgsinvite`): 200, declined, told; other commands are
    /// acknowledged only; a malformed one is 400. `application/ms-imdn+xml` (delivery
    /// notifications, not offered in our `a=accept-types`) is 415 with `Accept`.
    #[test]
    fn a_file_offered_in_the_session_is_declined_and_told() {
        let now = Instant::now();
        let mut e = engine();
        let (_, tag) = lcs_session(&mut e, now);
        let offer = lcs_message(&tag, 2, FT_OFFER).replace(
            "Content-Type: text/plain",
            "Content-Type: text/x-msmsgsinvite; charset=UTF-8",
        );
        let out = e.on_edge(now, inbound(&offer));
        assert_eq!(responses(&out)[0].status(), Some(200));
        let s = stanzas(&out);
        assert_eq!(s.len(), 1);
        assert!(
            s[0].contains("report.pdf") && s[0].contains("does not transfer files"),
            "{}",
            s[0]
        );
        assert!(s[0].contains("<thread>call-1</thread>"), "{}", s[0]);
        assert_declined(&out);

        let cancel =
            "Invitation-Command: CANCEL\r\nInvitation-Cookie: 28796\r\nCancel-Code: TIMEOUT\r\n";
        let msg = lcs_message(&tag, 3, cancel).replace(
            "Content-Type: text/plain",
            "Content-Type: text/x-msmsgsinvite; charset=UTF-8",
        );
        let out = e.on_edge(now, inbound(&msg));
        assert_eq!(responses(&out)[0].status(), Some(200));
        assert!(stanzas(&out).is_empty() && requests(&out).is_empty());

        let junk = lcs_message(&tag, 4, "Application-File: x\r\n").replace(
            "Content-Type: text/plain",
            "Content-Type: text/x-msmsgsinvite",
        );
        let out = e.on_edge(now, inbound(&junk));
        assert_eq!(responses(&out)[0].status(), Some(400));
        assert!(stanzas(&out).is_empty() && requests(&out).is_empty());

        let imdn = "<?xml version=\"1.0\"?><imdn><message-id>1</message-id><recipient uri=\"sip:alice@example.org\"><status>delivered</status></recipient></imdn>";
        let msg = lcs_message(&tag, 5, imdn).replace(
            "Content-Type: text/plain",
            "Content-Type: application/ms-imdn+xml",
        );
        let out = e.on_edge(now, inbound(&msg));
        let r = &responses(&out)[0];
        assert_eq!(r.status(), Some(415));
        assert_eq!(r.header("Accept"), Some(im_text::ACCEPT));
        assert!(stanzas(&out).is_empty());
    }
}
