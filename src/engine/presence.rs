//! Presence federation between XMPP and LCS (docs/mapping.md §5, the profile's "Presence
//! Documents"), sans-IO: presence stanzas and SIP edge events in; stanzas, SIP requests and
//! responses and store writes out, in the order they must happen; timers through
//! [`PresenceEngine::poll_timeout`].
//!
//! **Outbound** (an XMPP user watches an LCS user; RFC 6665 subscriber, RFC 3856):
//! `subscribe` → SUBSCRIBE (`Event: presence`, `Accept: application/pidf+xml`, Expires) by
//! domain; NOTIFY/BENOTIFY `active` → `subscribed` once, then the first tuple of each PIDF as
//! `<presence/>` (through `mappings/presence.toml`); `pending` → nothing; `terminated;reason=
//! rejected` → `unsubscribed`; other reasons → a fresh SUBSCRIBE under RFC 6665 §4.1.3's retry
//! rules with exponential backoff. Refresh before expiry, in the dialog; a dialog near the age
//! limit (LCS's 24 h header signatures) is replaced by a fresh SUBSCRIBE. `unsubscribe` →
//! SUBSCRIBE `Expires: 0`. A `probe` is answered from the last NOTIFY while the subscription is
//! active. NOTIFYs for dialogs the bridge does not know get 481, which ends them at the
//! notifier (RFC 6665 §4.1.3 / §4.2.2); BENOTIFY is never answered.
//!
//! **Inbound** (an LCS user watches an XMPP user; notifier): SUBSCRIBE → store, 202, NOTIFY
//! `pending` and `subscribe` (with a XEP-0172 nick from the From display name) to the local
//! user; `subscribed` → NOTIFY `active` with the profile's single-tuple PIDF; `unsubscribed`
//! → NOTIFY `terminated;reason=rejected`. The local user's resources are aggregated into one
//! tuple (highest priority, ties to the most available show) and sent to every approved
//! watcher, at most one NOTIFY per watcher per `min_notify_interval` (RFC 3856 §4.4; the last
//! state always goes out), one NOTIFY in flight per dialog. Refreshes are answered 200 plus a
//! NOTIFY; `Expires: 0` ends with NOTIFY `terminated;reason=timeout` and `unsubscribe`. A
//! dialog reaching the age limit gets `terminated;reason=deactivated` (LCS re-subscribes in a
//! new dialog; approval is kept). After its connection is lost, a dialog's next NOTIFY is sent
//! with [`Route::Domain`] (any connection the edge has or opens for the peer's domain).
//!
//! **Persistence**: [`Output::Persist`] / [`Output::Forget`] come before the outputs that
//! acknowledge the change (202, `subscribed`, NOTIFY active/terminated, `unsubscribed`).
//! [`PresenceEngine::restore`] rebuilds the state at start; [`PresenceEngine::shutdown`]
//! gives the XEP-0100 unavailable presences.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::presence::{Presence, Type};

use super::Output;
use super::host_of;
use crate::core::address::AddressBook;
use crate::core::errors::Condition;
use crate::core::pidf::{self, PidfDocument};
use crate::core::presence::{pidf_for_presence, presence_from_pidf, show_for_presence};
use crate::core::tables::{ErrorTable, Mappings, PresenceTable, Show};
use crate::core::xml_chars;
use crate::edge::core::{Route, Undeliverable};
use crate::edge::event::EdgeEvent;
use crate::random::SplitMix;
use crate::sip::builder::{RequestSpec, header_text, name_addr};
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::message::{Message, Method, find_forbidden_in_value};
use crate::sip::transaction::{ConnId, TxEvent, TxId, TxIds};
use crate::store::{Approval, DialogRecord, Direction, SubState, Subscription};
use crate::xmpp::gateway::error_reply;

/// The PIDF media type.
pub const PIDF_TYPE: &str = "application/pidf+xml";
/// Shortest subscription the bridge grants (RFC 6665 §4.2.1.1 `423` with `Min-Expires`).
pub const MIN_EXPIRES_SECS: u32 = 60;
/// Expires of a SUBSCRIBE that names none (RFC 3856 §6.4 default).
pub const DEFAULT_EXPIRES_SECS: u32 = 3600;
/// Local CSeq numbers of a watcher's dialog reserved by one synced store write (see
/// `Watcher::cseq_reserved`).
pub const CSEQ_RESERVE: u32 = 1000;
/// `Retry-After` of the `503` to a watcher over a pending-subscription limit: the limit frees
/// up as local users answer the requests waiting for them.
pub const PENDING_RETRY_AFTER_SECS: u32 = 600;
/// Stanzas a late timer call sends at once while restoring (the rest wait for their time).
pub(crate) const RESTORE_STANZA_BURST: usize = 64;

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct PresenceSettings {
    /// The edge's FQDN: Via sent-by and Contact host.
    pub public_fqdn: String,
    /// Expires asked for on SUBSCRIBEs to LCS, and the most granted to LCS's SUBSCRIBEs.
    pub expires: Duration,
    /// Least time between two NOTIFYs to one watcher (RFC 3856 §4.4 suggests 5 s).
    pub min_notify_interval: Duration,
    /// Subscription dialogs are replaced before this age (LCS's 24 h signatures).
    pub dialog_max_age: Duration,
    /// Appended to local users' display names sent to LCS (`presence.display_name_suffix`).
    pub nick_suffix: Option<String>,
    /// `ci:icon` sent to LCS (`presence.icon_url`; only `https:` is written).
    pub icon_url: Option<String>,
    /// First retry delay after a failed or terminated outbound subscription; doubles per
    /// failure up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay (also used for `noresource`/`invariant`, which RFC 6665 says not
    /// to retry soon).
    pub retry_max: Duration,
    /// Requests per second that take up stored subscriptions after a start (`restore`), and
    /// stanzas per second it sends to the XMPP server.
    pub restore_rate: u32,
    /// LCS watchers waiting for approval, at most, per discovered remote domain, per listed
    /// partner domain (`partners`) and per local user; a new one beyond any gets `503` with
    /// `Retry-After` ([`PENDING_RETRY_AFTER_SECS`]).
    pub max_pending_per_domain: usize,
    pub max_pending_per_partner: usize,
    pub max_pending_per_user: usize,
    /// The listed partners' domains (lowercase), as configured at start.
    pub partners: std::collections::HashSet<String>,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            public_fqdn: "localhost".into(),
            expires: Duration::from_secs(u64::from(DEFAULT_EXPIRES_SECS)),
            min_notify_interval: Duration::from_secs(5),
            dialog_max_age: crate::sip::dialog::DEFAULT_MAX_AGE,
            nick_suffix: None,
            icon_url: None,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(1800),
            restore_rate: 1000,
            max_pending_per_domain: 1000,
            max_pending_per_partner: 10_000,
            max_pending_per_user: 100,
            partners: std::collections::HashSet::new(),
        }
    }
}

/// The wall clock at one instant, so that the engine can write and read the store's Unix
/// times without reading a clock itself.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub at: Instant,
    /// Unix seconds at `at`.
    pub unix: u64,
}

impl WallClock {
    /// Unix seconds at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix.saturating_add(d.as_secs()),
            None => self
                .unix
                .saturating_sub(self.at.duration_since(now).as_secs()),
        }
    }
}

/// (local bare JID, remote AOR), both as strings: the store's identity. Shared: the maps,
/// the timer heap and the dialog and transaction indexes each hold one, so a copy is a
/// reference count, not two allocations.
type Key = Arc<(String, String)>;

fn key(local: String, remote: String) -> Key {
    Arc::new((local, remote))
}

/// A stanza a restore sends (XEP-0100 §4.5, RFC 6121 §4.3), built when its turn comes.
#[derive(Debug)]
enum Paced {
    /// The gateway's available presence to a local user with subscriptions.
    Gateway { from: BareJid, to: BareJid },
    /// A probe of a local user with approved watchers, from one of them.
    Probe { from: BareJid, to: BareJid },
    /// A watcher waiting for its user: the `subscribe` asked again, if it still waits.
    Ask(Key),
}

/// The LCS watchers waiting for their local user's approval, counted per remote domain and per
/// local user, for the pending-subscription limits. Kept in step with the watchers from the
/// keys each call touched ([`PresenceEngine::rearm`]), so no path that changes an approval
/// can forget it.
#[derive(Debug, Default)]
struct Pending {
    keys: std::collections::HashSet<Key>,
    by_domain: HashMap<String, usize>,
    by_user: HashMap<String, usize>,
}

impl Pending {
    /// The remote domain of a key (the AOR's host).
    fn domain(key: &Key) -> &str {
        key.1.rsplit_once('@').map_or("", |(_, host)| host)
    }

    fn set(&mut self, key: &Key, pending: bool) {
        let changed = if pending {
            self.keys.insert(key.clone())
        } else {
            self.keys.remove(key)
        };
        if !changed {
            return;
        }
        for (map, name) in [
            (&mut self.by_domain, Self::domain(key)),
            (&mut self.by_user, key.0.as_str()),
        ] {
            if pending {
                *map.entry(name.to_owned()).or_default() += 1;
            } else if let Some(n) = map.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    map.remove(name);
                }
            }
        }
    }

    fn of_domain(&self, key: &Key) -> usize {
        self.by_domain.get(Self::domain(key)).copied().unwrap_or(0)
    }

    fn of_user(&self, key: &Key) -> usize {
        self.by_user.get(&key.0).copied().unwrap_or(0)
    }
}

/// An XMPP user's subscription to an LCS user.
#[derive(Debug)]
struct Outbound {
    local_jid: BareJid,
    remote_jid: BareJid,
    approval: Approval,
    /// NOTIFY `active` seen on the current dialog.
    active: bool,
    /// A 2xx to some SUBSCRIBE has been seen (errors before that go back to the user).
    established: bool,
    /// Boxed: the maps hold many idle entries, and a B-tree node is sized by its values.
    dialog: Option<Box<Dialog>>,
    /// When the dialog must have been replaced.
    dialog_deadline: Option<Instant>,
    /// The SUBSCRIBE in flight, and the request when it is an initial (out-of-dialog) one.
    pending: Option<(TxId, Option<Box<Message>>)>,
    /// Expires to ask for (raised by a 423's Min-Expires).
    expires_secs: u32,
    expires_at: Option<Instant>,
    /// Refresh or retry time.
    next_at: Option<Instant>,
    /// Retries since the last NOTIFY `active`.
    attempts: u32,
    /// The last document received, for probes.
    last: Option<Box<PidfDocument>>,
    /// The last presence sent to the watcher was available.
    shown_available: bool,
    /// The `id` of the user's `subscribe`, for an error reply.
    stanza_id: Option<String>,
}

impl Outbound {
    /// A subscription with no dialog yet, asking for `expires_secs`.
    fn new(
        local_jid: BareJid,
        remote_jid: BareJid,
        approval: Approval,
        expires_secs: u32,
        stanza_id: Option<String>,
    ) -> Outbound {
        Outbound {
            local_jid,
            remote_jid,
            approval,
            active: false,
            established: false,
            dialog: None,
            dialog_deadline: None,
            pending: None,
            expires_secs,
            expires_at: None,
            next_at: None,
            attempts: 0,
            last: None,
            shown_available: false,
            stanza_id,
        }
    }
}

/// An LCS user watching an XMPP user.
#[derive(Debug)]
struct Watcher {
    remote_jid: BareJid,
    approval: Approval,
    dialog: Option<Box<Dialog>>,
    /// The dialog's connection is gone: route NOTIFYs by domain.
    detached: bool,
    expires_at: Instant,
    dialog_deadline: Instant,
    last_notify: Option<Instant>,
    /// A NOTIFY with the current state is owed.
    dirty: bool,
    in_flight: Option<TxId>,
    retry_at: Option<Instant>,
    failures: u32,
    /// The last PIDF sent (identical states are not sent twice); shared with the user's
    /// `doc` it was.
    last_body: Option<Arc<str>>,
    /// The last `active` NOTIFY was sent before the local user's presence was known (an
    /// approval right after login, before the server's presence to the contact arrived): the
    /// first known state goes out at once instead of after the interval.
    blind: bool,
    /// The dialog's local CSeq the store holds (the record's `local_cseq`): no NOTIFY goes out
    /// with a CSeq above it. When the next one would, a synced write first raises it by
    /// [`CSEQ_RESERVE`]. A restarted bridge resumes the dialog from the stored value, so it
    /// never repeats a CSeq the watcher has seen (RFC 3261 §12.2.2: a request whose CSeq is
    /// not above the last one is rejected with 500), however many NOTIFYs went out unstored.
    cseq_reserved: u32,
}

/// Which map a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Side {
    Out,
    In,
}

/// A map that notes the keys written through it, so that the engine re-arms the timers of
/// what an event touched. Reads go through `Deref`.
#[derive(Debug)]
struct Tracked<V> {
    map: BTreeMap<Key, V>,
    touched: Vec<Key>,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked {
            map: BTreeMap::new(),
            touched: Vec::new(),
        }
    }
}

impl<V> std::ops::Deref for Tracked<V> {
    type Target = BTreeMap<Key, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<V> Tracked<V> {
    fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        let v = self.map.get_mut(key)?;
        self.touched.push(key.clone());
        Some(v)
    }

    fn insert(&mut self, key: Key, value: V) -> Option<V> {
        self.touched.push(key.clone());
        self.map.insert(key, value)
    }

    fn entry(&mut self, key: Key) -> std::collections::btree_map::Entry<'_, Key, V> {
        self.touched.push(key.clone());
        self.map.entry(key)
    }

    fn remove(&mut self, key: &Key) -> Option<V> {
        self.touched.push(key.clone());
        self.map.remove(key)
    }

    /// For changes that move no timer and change no approval (the pending-subscription index
    /// follows approvals through the touched keys).
    fn values_mut_untracked(&mut self) -> std::collections::btree_map::ValuesMut<'_, Key, V> {
        self.map.values_mut()
    }
}

/// One local user's presence as the XMPP server sent it to the component.
#[derive(Debug, Default)]
struct LocalUser {
    /// Resource → its last available presence.
    resources: BTreeMap<String, Presence>,
    /// XEP-0172 nick, from any of its presences.
    nick: Option<String>,
    /// Some presence of the user has come (else `doc` is the closed document).
    known: bool,
    /// The aggregate as the PIDF document sent to watchers ([`PresenceEngine::rendered`]);
    /// every watcher's `last_body` shares it.
    doc: Arc<str>,
}

/// What a client transaction was for.
#[derive(Debug)]
enum Purpose {
    /// An outbound SUBSCRIBE (initial or refresh) of the subscription `key`.
    Subscribe(Key),
    /// A NOTIFY to the watcher `key`.
    Notify(Key),
    /// A last request (SUBSCRIBE Expires 0, NOTIFY terminated): the outcome changes nothing.
    Final,
}

/// Why an outbound request failed.
#[derive(Debug, Clone)]
struct Failure {
    /// The SIP status, 0 for local failures (timeout, transport, undeliverable).
    status: u16,
    condition: Condition,
    text: String,
    /// `Min-Expires` of a 423.
    min_expires: Option<u32>,
}

/// Subscription-State of an outgoing NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotifyState {
    Pending,
    Active,
    Terminated(&'static str),
}

/// The presence engine.
#[derive(Debug)]
pub struct PresenceEngine {
    settings: PresenceSettings,
    book: AddressBook,
    table: PresenceTable,
    errors: ErrorTable,
    ids: TxIds,
    clock: WallClock,
    rng: SplitMix,
    /// Values boxed: a B-tree node holds up to 11 of them and is half empty after ordered
    /// inserts (the restore), so inline values would double their size.
    outbound: Tracked<Box<Outbound>>,
    inbound: Tracked<Box<Watcher>>,
    /// Next due times, earliest first; an entry counts only while `armed` holds the same
    /// time for its key (a later arm for an earlier time supersedes it). Every public call
    /// re-arms the entries it touched, so the next timer is O(1) to find and a timer run
    /// visits only what is due, however many subscriptions there are.
    timers: BinaryHeap<Reverse<(Instant, Side, Key)>>,
    armed: HashMap<(Side, Key), Instant>,
    out_dialogs: HashMap<DialogId, Key>,
    in_dialogs: HashMap<DialogId, Key>,
    /// Call-ID of an initial SUBSCRIBE in flight → its subscription (NOTIFY before the 2xx).
    early: HashMap<String, Key>,
    purposes: HashMap<TxId, Purpose>,
    users: HashMap<String, LocalUser>,
    /// Full JID → the last available presence taken from it, as received, until it goes
    /// unavailable ([`PresenceEngine::repeated`]).
    last_raw: BTreeMap<String, Element>,
    pending: Pending,
    /// New watchers refused for a pending-subscription limit since the start, by limit key.
    limit_hits: BTreeMap<&'static str, u64>,
    /// Stanzas a restore sends, paced at `restore_rate` from `paced_at` on.
    paced: VecDeque<Paced>,
    paced_at: Instant,
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// How much of the Accept header allows PIDF (absent: RFC 3856 §6.7 default is PIDF).
fn accepts_pidf(request: &Message) -> bool {
    let mut any = false;
    for value in request.header_all("Accept") {
        for item in value.split(',') {
            let essence = item.split(';').next().unwrap_or("").trim();
            if essence.is_empty() {
                continue;
            }
            any = true;
            let e = essence.to_ascii_lowercase();
            if e == PIDF_TYPE || e == "*/*" || e == "application/*" {
                return true;
            }
        }
    }
    !any
}

impl PresenceEngine {
    /// `ids` must be the edge's; `seed` random; `clock` relates `now` to Unix time (store).
    pub fn new(
        settings: PresenceSettings,
        book: AddressBook,
        mappings: Mappings,
        ids: TxIds,
        seed: u64,
        clock: WallClock,
    ) -> PresenceEngine {
        PresenceEngine {
            settings,
            book,
            table: mappings.presence,
            errors: mappings.errors,
            ids,
            clock,
            rng: SplitMix::new(seed),
            outbound: Tracked::default(),
            inbound: Tracked::default(),
            timers: BinaryHeap::new(),
            armed: HashMap::new(),
            out_dialogs: HashMap::new(),
            in_dialogs: HashMap::new(),
            early: HashMap::new(),
            purposes: HashMap::new(),
            users: HashMap::new(),
            last_raw: BTreeMap::new(),
            pending: Pending::default(),
            limit_hits: BTreeMap::new(),
            paced: VecDeque::new(),
            paced_at: clock.at,
        }
    }

    /// Whether client transaction `tx` is this engine's.
    pub fn owns(&self, tx: TxId) -> bool {
        self.purposes.contains_key(&tx)
    }

    /// (outbound subscriptions, inbound watchers), for tests and stats.
    pub fn counts(&self) -> (usize, usize) {
        (self.outbound.len(), self.inbound.len())
    }

    /// Whether the engine handles this SIP method (the runner's dispatch).
    pub fn handles(method: &Method) -> bool {
        matches!(
            method,
            Method::Subscribe | Method::Notify | Method::Benotify
        )
    }

    fn token(&mut self) -> String {
        self.rng.token()
    }

    /// The Expires the bridge asks for (configured, at least the minimum).
    fn expires_secs(&self) -> u32 {
        secs(self.settings.expires).max(MIN_EXPIRES_SECS)
    }

    fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.token())
    }

    fn via(&self) -> String {
        format!("{}:5061", self.settings.public_fqdn)
    }

    fn contact(&self, local_uri: &str) -> String {
        super::contact_for(&self.settings.public_fqdn, local_uri)
    }

    fn local_uri(&self, local: &str) -> String {
        Jid::new(local)
            .ok()
            .and_then(|j| self.book.jid_to_sip(&j).ok())
            .map(|a| a.aor().to_uri())
            .unwrap_or_default()
    }

    fn unix(&self, at: Instant) -> u64 {
        self.clock.unix(at)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
        self.settings
            .retry_base
            .saturating_mul(factor)
            .min(self.settings.retry_max)
    }

    // ----------------------------------------------------------------- stanzas in

    /// A stanza from the component link; only `<presence/>` is taken.
    pub fn on_stanza(&mut self, now: Instant, element: Element) -> Vec<Output> {
        let out = self.stanza_in(now, element);
        self.rearm();
        out
    }

    fn stanza_in(&mut self, now: Instant, element: Element) -> Vec<Output> {
        let mut out = Vec::new();
        if !element.is("presence", crate::xmpp::NS_COMPONENT) {
            return out;
        }
        if self.repeated(&element) {
            return out;
        }
        let Ok(p) = Presence::try_from(element) else {
            return out;
        };
        let (Some(from), Some(to)) = (p.from.clone(), p.to.clone()) else {
            return out;
        };
        if !self.book.is_local_domain(from.domain().as_str()) {
            return out;
        }
        let local = from.to_bare();
        if matches!(p.type_, Type::None | Type::Unavailable) {
            self.local_presence(now, &from, &p, &mut out);
            return out;
        }
        // Addressed to the gateway itself (XEP-0100 §4.1: the user's subscription to it).
        if to.node().is_none() && self.book.is_component_domain(to.domain().as_str()) {
            self.addressed_to_gateway(&p, &from, &to, &mut out);
            return out;
        }
        if p.type_ == Type::Error {
            return out;
        }
        let remote = match self.book.jid_to_sip(&to) {
            Ok(a) if !self.book.is_local_domain(&a.host) && to.node().is_some() => a.aor(),
            _ => {
                if matches!(p.type_, Type::Subscribe | Type::Probe) {
                    out.push(Output::Stanza(error_reply(
                        &Element::from(p),
                        Condition::ItemNotFound,
                        Some("not an address this gateway can reach"),
                    )));
                }
                return out;
            }
        };
        let key = key(local.to_string(), remote.to_uri());
        let remote_jid = to.to_bare();
        match p.type_ {
            Type::Subscribe => self.xmpp_subscribe(now, key, local, remote_jid, p.id, &mut out),
            Type::Unsubscribe => self.xmpp_unsubscribe(&key, &mut out),
            Type::Subscribed => self.xmpp_subscribed(now, &key, &mut out),
            Type::Unsubscribed => self.xmpp_unsubscribed(now, &key, &mut out),
            Type::Probe => self.xmpp_probe(now, key, local, remote_jid, from, &mut out),
            _ => {}
        }
        out
    }

    /// Subscription and probes addressed to the gateway's own JID: it approves and is online.
    fn addressed_to_gateway(&mut self, p: &Presence, from: &Jid, to: &Jid, out: &mut Vec<Output>) {
        let bare = Jid::from(from.to_bare());
        let gw = to.clone();
        match p.type_ {
            Type::Subscribe => {
                out.push(stanza(
                    Presence::subscribed()
                        .with_from(gw.clone())
                        .with_to(bare.clone()),
                ));
                out.push(stanza(Presence::available().with_from(gw).with_to(bare)));
            }
            Type::Probe => out.push(stanza(
                Presence::available().with_from(gw).with_to(from.clone()),
            )),
            _ => {}
        }
    }

    fn xmpp_subscribe(
        &mut self,
        now: Instant,
        key: Key,
        local: BareJid,
        remote_jid: BareJid,
        id: Option<String>,
        out: &mut Vec<Output>,
    ) {
        if let Some(sub) = self.outbound.get_mut(&key) {
            if sub.approval == Approval::Approved {
                // RFC 6121 §3.1.3: already approved → answer `subscribed` again.
                out.push(stanza(
                    Presence::subscribed()
                        .with_from(sub.remote_jid.clone())
                        .with_to(sub.local_jid.clone()),
                ));
                if sub.active {
                    if let Some(doc) = &sub.last {
                        let p = presence_from_pidf(
                            doc,
                            &self.table,
                            Jid::from(sub.remote_jid.clone()),
                            Jid::from(sub.local_jid.clone()),
                        );
                        out.push(stanza(p));
                    }
                }
                return;
            }
            sub.stanza_id = id;
            if sub.pending.is_none() && sub.dialog.is_none() {
                self.send_initial(now, &key, out);
            }
            return;
        }
        self.outbound.insert(
            key.clone(),
            Box::new(Outbound::new(
                local,
                remote_jid,
                Approval::Requested,
                self.expires_secs(),
                id,
            )),
        );
        self.persist_out(now, &key, out);
        self.send_initial(now, &key, out);
    }

    fn xmpp_unsubscribe(&mut self, key: &Key, out: &mut Vec<Output>) {
        let Some(mut sub) = self.outbound.remove(key) else {
            return;
        };
        self.drop_out_tracking(&mut sub);
        out.push(Output::Forget {
            direction: Direction::Outbound,
            local: key.0.clone(),
            remote: key.1.clone(),
        });
        if sub.shown_available {
            // RFC 6121 §3.3.3: the contact's presence is no longer known to the user.
            out.push(stanza(
                Presence::unavailable()
                    .with_from(sub.remote_jid.clone())
                    .with_to(sub.local_jid.clone()),
            ));
        }
        if let Some(dialog) = sub.dialog.as_mut() {
            self.unsubscribe_in_dialog(dialog, out);
        }
        // A SUBSCRIBE still in flight: its NOTIFYs get 481, which ends it at LCS.
    }

    /// Removes a subscription's dialog and in-flight tracking from the indexes.
    fn drop_out_tracking(&mut self, sub: &mut Outbound) {
        if let Some(d) = &sub.dialog {
            self.out_dialogs.remove(&d.id);
        }
        if let Some((tx, initial)) = sub.pending.take() {
            self.purposes.remove(&tx);
            if let Some(call_id) = initial.as_ref().and_then(|m| m.call_id().ok()) {
                self.early.remove(call_id);
            }
        }
    }

    /// SUBSCRIBE `Expires: 0` in `dialog` (fire and forget).
    fn unsubscribe_in_dialog(&mut self, dialog: &mut Dialog, out: &mut Vec<Output>) {
        let branch = self.branch();
        let contact = self.contact(&dialog.local_uri.clone());
        if let Ok(mut request) =
            dialog.next_request(Method::Subscribe, &self.via(), &branch, Some(&contact))
        {
            subscribe_headers(&mut request, 0);
            let tx = self.ids.next();
            self.purposes.insert(tx, Purpose::Final);
            out.push(Output::Request {
                tx,
                request,
                route: Route::Connection(dialog.conn),
            });
        }
    }

    fn xmpp_subscribed(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        if w.approval == Approval::Approved {
            return;
        }
        w.approval = Approval::Approved;
        self.persist_in(now, key, out);
        self.send_notify(now, key, NotifyState::Active, out);
    }

    fn xmpp_unsubscribed(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if !self.inbound.contains_key(key) {
            return;
        }
        out.push(Output::Forget {
            direction: Direction::Inbound,
            local: key.0.clone(),
            remote: key.1.clone(),
        });
        self.send_notify(now, key, NotifyState::Terminated("rejected"), out);
        self.remove_watcher(key);
    }

    fn xmpp_probe(
        &mut self,
        now: Instant,
        key: Key,
        local: BareJid,
        remote_jid: BareJid,
        from: Jid,
        out: &mut Vec<Output>,
    ) {
        if !self.outbound.contains_key(&key) {
            // The server probes contacts the user is subscribed to: the bridge has lost this
            // one (new store, or dropped after failures). Re-establish it.
            self.outbound.insert(
                key.clone(),
                Box::new(Outbound::new(
                    local,
                    remote_jid,
                    Approval::Approved,
                    self.expires_secs(),
                    None,
                )),
            );
            self.persist_out(now, &key, out);
            self.send_initial(now, &key, out);
            return;
        }
        let Some(sub) = self.outbound.get(&key) else {
            return;
        };
        if sub.active && sub.dialog.is_some() {
            // While the subscription is active, the last NOTIFY is the current state.
            if let Some(doc) = &sub.last {
                let p =
                    presence_from_pidf(doc, &self.table, Jid::from(sub.remote_jid.clone()), from);
                out.push(stanza(p));
            }
            return;
        }
        // Pending at LCS, or being (re-)established: the NOTIFY will come by itself.
        if sub.pending.is_some() || sub.dialog.is_some() || sub.next_at.is_some() {
            return;
        }
        self.send_initial(now, &key, out);
    }

    /// Whether `element` is an available presence equal (but for `to` and `id`) to the last
    /// one taken from the same full JID; if not, it becomes the last one (an unavailable one
    /// forgets it). The server sends a user's presence once per subscribed contact, so 49 of a change's
    /// 50 stanzas to 50 watchers are repeats: this skips their parsing and rendering (the
    /// outcome is the same: an unchanged document sends nothing).
    fn repeated(&mut self, element: &Element) -> bool {
        let (None | Some("unavailable")) = element.attr("type") else {
            return false;
        };
        let Some(from) = element.attr("from") else {
            return false;
        };
        fn relevant(e: &Element) -> impl Iterator<Item = impl PartialEq + '_> + '_ {
            e.attrs()
                .iter()
                .filter(|((ns, name), _)| !(ns.is_none() && matches!(name.as_str(), "to" | "id")))
        }
        if let Some(last) = self.last_raw.get(from) {
            if relevant(last).eq(relevant(element)) && last.nodes().eq(element.nodes()) {
                return true;
            }
        }
        if element.attr("type").is_none() {
            self.last_raw.insert(from.to_owned(), element.clone());
            return false;
        }
        // Unavailable: the resource is gone (clients often log in under a new resource each
        // time, so it is not kept); from the bare JID, every resource is.
        self.last_raw.remove(from);
        if !from.contains('/') {
            let prefix = format!("{from}/");
            let ended: Vec<String> = self
                .last_raw
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in ended {
                self.last_raw.remove(&k);
            }
        }
        false
    }

    /// An available or unavailable presence of a local user (to a contact, or broadcast).
    fn local_presence(&mut self, now: Instant, from: &Jid, p: &Presence, out: &mut Vec<Output>) {
        let bare = from.to_bare().to_string();
        let resource = from
            .resource()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        let user = self.users.entry(bare.clone()).or_default();
        let known = std::mem::replace(&mut user.known, true);
        if let Some(nick) = p
            .payloads
            .iter()
            .find_map(|e| Nick::try_from(e.clone()).ok())
        {
            user.nick = Some(nick.0).filter(|n| !n.trim().is_empty());
        }
        if show_for_presence(p) == Show::Unavailable {
            if resource.is_empty() {
                user.resources.clear();
            } else {
                user.resources.remove(&resource);
            }
        } else {
            user.resources.insert(resource, p.clone());
        }
        // The server sends one presence per subscribed contact: only the first of a burst
        // changes the aggregate; the others cost a render and a comparison.
        let doc = pidf::render(&self.current_doc(&bare));
        let Some(user) = self.users.get_mut(&bare) else {
            return;
        };
        if known && *user.doc == *doc {
            return;
        }
        user.doc = doc.into();
        let keys: Vec<Key> = self
            .inbound
            .range((bare.clone(), String::new())..)
            .take_while(|(k, _)| k.0 == bare)
            .filter(|(_, w)| w.approval == Approval::Approved)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(w) = self.inbound.get_mut(&key) {
                w.dirty = true;
            }
            self.maybe_flush(now, &key, out);
        }
    }

    /// The local user's current document, rendered (kept per user as their presence comes;
    /// for a user whose presence never came, the closed document is kept too, so that all
    /// their watchers share one).
    fn rendered(&mut self, local: &str) -> Arc<str> {
        if let Some(u) = self.users.get(local) {
            return u.doc.clone();
        }
        let doc: Arc<str> = pidf::render(&self.current_doc(local)).into();
        let user = LocalUser {
            doc: doc.clone(),
            ..LocalUser::default()
        };
        self.users.insert(local.to_owned(), user);
        doc
    }

    /// The local user's aggregated presence as the profile's document: the available resource
    /// with the highest priority (ties: the most available show, then the resource name);
    /// none available → closed.
    fn current_doc(&self, local: &str) -> PidfDocument {
        let entity = self.local_uri(local);
        let user = self.users.get(local);
        let best = user.and_then(|u| {
            u.resources
                .values()
                .min_by_key(|p| (std::cmp::Reverse(p.priority.0), show_for_presence(p)))
        });
        let unavailable = Presence::unavailable();
        let p = best.unwrap_or(&unavailable);
        let base = user
            .and_then(|u| u.nick.clone())
            .unwrap_or_else(|| local.split('@').next().unwrap_or(local).to_owned());
        let display = match &self.settings.nick_suffix {
            Some(s) => format!("{base}{s}"),
            None => base,
        };
        pidf_for_presence(
            p,
            &entity,
            Some(&display),
            self.settings.icon_url.as_deref(),
            &self.table,
        )
    }

    // ----------------------------------------------------------------- outbound requests

    /// A fresh out-of-dialog SUBSCRIBE for outbound subscription `key` (the old dialog, if
    /// any, is dropped from the indexes: its NOTIFYs will get 481).
    fn send_initial(&mut self, _now: Instant, key: &Key, out: &mut Vec<Output>) {
        let call_id = format!("{}@{}", self.token(), self.settings.public_fqdn);
        let (branch, tag) = (self.branch(), self.token());
        let local_uri = self.local_uri(&key.0);
        let contact = self.contact(&local_uri);
        let via = self.via();
        let Some(sub) = self.outbound.get_mut(key) else {
            return;
        };
        if let Some(d) = sub.dialog.take() {
            self.out_dialogs.remove(&d.id);
        }
        sub.active = false;
        sub.dialog_deadline = None;
        sub.next_at = None;
        if let Some((tx, initial)) = sub.pending.take() {
            self.purposes.remove(&tx);
            if let Some(c) = initial.as_ref().and_then(|m| m.call_id().ok()) {
                self.early.remove(c);
            }
        }
        let mut request = RequestSpec {
            method: Method::Subscribe,
            request_uri: &key.1,
            via_sent_by: &via,
            branch: &branch,
            from_display: None,
            from_uri: &local_uri,
            from_tag: &tag,
            to_display: None,
            to_uri: &key.1,
            to_tag: None,
            call_id: &call_id,
            cseq: 1,
            contact: Some(&contact),
            route: &[],
        }
        .build();
        subscribe_headers(&mut request, sub.expires_secs);
        let tx = self.ids.next();
        sub.pending = Some((tx, Some(Box::new(request.clone()))));
        self.purposes.insert(tx, Purpose::Subscribe(key.clone()));
        self.early.insert(call_id, key.clone());
        out.push(Output::Request {
            tx,
            request,
            route: Route::Domain(host_of(&key.1)),
        });
    }

    /// An in-dialog refresh of outbound subscription `key`.
    fn send_refresh(&mut self, key: &Key, out: &mut Vec<Output>) {
        let branch = self.branch();
        let via = self.via();
        let contact = self.contact(&self.local_uri(&key.0));
        let Some(sub) = self.outbound.get_mut(key) else {
            return;
        };
        let Some(dialog) = sub.dialog.as_mut() else {
            return;
        };
        let Ok(mut request) = dialog.next_request(Method::Subscribe, &via, &branch, Some(&contact))
        else {
            return;
        };
        subscribe_headers(&mut request, sub.expires_secs);
        let tx = self.ids.next();
        sub.pending = Some((tx, None));
        sub.next_at = None;
        self.purposes.insert(tx, Purpose::Subscribe(key.clone()));
        out.push(Output::Request {
            tx,
            request,
            route: Route::Connection(dialog.conn),
        });
    }

    /// Schedules the next attempt of outbound subscription `key` after `delay` (now when
    /// zero); the watcher sees the contact unavailable while it waits.
    fn retry_later(&mut self, now: Instant, key: &Key, delay: Duration, out: &mut Vec<Output>) {
        let Some(sub) = self.outbound.get_mut(key) else {
            return;
        };
        if let Some(d) = sub.dialog.take() {
            self.out_dialogs.remove(&d.id);
        }
        sub.active = false;
        sub.attempts = sub.attempts.saturating_add(1);
        if delay.is_zero() {
            self.send_initial(now, key, out);
            return;
        }
        if sub.shown_available {
            sub.shown_available = false;
            out.push(stanza(
                Presence::unavailable()
                    .with_from(sub.remote_jid.clone())
                    .with_to(sub.local_jid.clone()),
            ));
        }
        sub.next_at = Some(now + delay);
    }

    /// Ends outbound subscription `key` as refused by LCS: `unsubscribed` (RFC 6121 §3.2).
    fn refused(&mut self, key: &Key, out: &mut Vec<Output>) {
        let Some(mut sub) = self.outbound.remove(key) else {
            return;
        };
        self.drop_out_tracking(&mut sub);
        out.push(Output::Forget {
            direction: Direction::Outbound,
            local: key.0.clone(),
            remote: key.1.clone(),
        });
        out.push(stanza(
            Presence::new(Type::Unsubscribed)
                .with_from(sub.remote_jid.clone())
                .with_to(sub.local_jid.clone()),
        ));
        if sub.shown_available {
            out.push(stanza(
                Presence::unavailable()
                    .with_from(sub.remote_jid)
                    .with_to(sub.local_jid),
            ));
        }
    }

    // ----------------------------------------------------------------- edge events

    /// An event from the SIP edge. Transaction events for transactions this engine did not
    /// start are ignored.
    pub fn on_edge(&mut self, now: Instant, event: EdgeEvent) -> Vec<Output> {
        let out = self.edge_in(now, event);
        self.rearm();
        out
    }

    fn edge_in(&mut self, now: Instant, event: EdgeEvent) -> Vec<Output> {
        let mut out = Vec::new();
        match event {
            EdgeEvent::Request {
                tx, conn, request, ..
            } => self.on_request(now, tx, conn, &request, &mut out),
            EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn,
                response,
                is_final: true,
            }) => {
                let status = response.status().unwrap_or(0);
                let outcome = if (200..300).contains(&status) {
                    Ok((conn, response))
                } else {
                    Err(Failure {
                        status,
                        condition: self.errors.condition_for_status(status),
                        text: format!("{} {}", status, response.reason().unwrap_or_default()),
                        min_expires: response
                            .header("Min-Expires")
                            .and_then(|v| v.trim().parse().ok()),
                    })
                };
                self.on_final(now, tx, outcome, &mut out);
            }
            EdgeEvent::Transaction(TxEvent::Timeout { tx }) => {
                let f = Failure {
                    status: 0,
                    condition: self.errors.condition_for_timeout(),
                    text: "no answer from the LCS side".into(),
                    min_expires: None,
                };
                self.on_final(now, tx, Err(f), &mut out);
            }
            EdgeEvent::Transaction(TxEvent::TransportError { tx }) => {
                let f = Failure {
                    status: 0,
                    condition: Condition::RecipientUnavailable,
                    text: "the connection to the LCS side was lost".into(),
                    min_expires: None,
                };
                self.on_final(now, tx, Err(f), &mut out);
            }
            EdgeEvent::Undeliverable { tx, why } => {
                let condition = match &why {
                    Undeliverable::NoRoute { .. } => self.errors.condition_for_no_route(),
                    Undeliverable::Unreachable { .. } => self.errors.condition_for_timeout(),
                    Undeliverable::Blocked { .. } | Undeliverable::Local { .. } => {
                        Condition::Forbidden
                    }
                    Undeliverable::ConnectionGone { .. } => Condition::RecipientUnavailable,
                    Undeliverable::Invalid { .. } => Condition::InternalServerError,
                };
                let f = Failure {
                    status: 0,
                    condition,
                    text: why.to_string(),
                    min_expires: None,
                };
                self.on_final(now, tx, Err(f), &mut out);
            }
            EdgeEvent::ConnectionLost { conn } => self.connection_lost(now, conn, &mut out),
            EdgeEvent::Transaction(_) => {}
        }
        out
    }

    fn connection_lost(&mut self, now: Instant, conn: ConnId, out: &mut Vec<Output>) {
        // Outbound: the dialog is gone with its connection; subscribe again at once.
        let lost: Vec<Key> = self
            .outbound
            .iter()
            .filter(|(_, s)| s.dialog.as_ref().is_some_and(|d| d.conn == conn))
            .map(|(k, _)| k.clone())
            .collect();
        for key in lost {
            self.send_initial(now, &key, out);
        }
        // Inbound: LCS owns those dialogs; keep them and reach the peer by domain.
        for w in self.inbound.values_mut_untracked() {
            if w.dialog.as_ref().is_some_and(|d| d.conn == conn) {
                w.detached = true;
            }
        }
    }

    fn on_final(
        &mut self,
        now: Instant,
        tx: TxId,
        outcome: Result<(ConnId, Message), Failure>,
        out: &mut Vec<Output>,
    ) {
        let Some(purpose) = self.purposes.remove(&tx) else {
            return;
        };
        match purpose {
            Purpose::Final => {}
            Purpose::Subscribe(key) => self.subscribe_outcome(now, tx, &key, outcome, out),
            Purpose::Notify(key) => self.notify_outcome(now, tx, &key, outcome, out),
        }
    }

    fn subscribe_outcome(
        &mut self,
        now: Instant,
        tx: TxId,
        key: &Key,
        outcome: Result<(ConnId, Message), Failure>,
        out: &mut Vec<Output>,
    ) {
        let max_age = self.settings.dialog_max_age;
        let Some(sub) = self.outbound.get_mut(key) else {
            return;
        };
        let initial = match sub.pending.take() {
            Some((t, initial)) if t == tx => initial,
            other => {
                sub.pending = other;
                return;
            }
        };
        if let Some(c) = initial.as_ref().and_then(|m| m.call_id().ok()) {
            self.early.remove(c);
        }
        match outcome {
            Ok((conn, response)) => {
                let granted = response
                    .expires()
                    .ok()
                    .flatten()
                    .filter(|e| *e > 0)
                    .unwrap_or(sub.expires_secs);
                if let Some(request) = &initial {
                    let early = sub.dialog.as_ref().is_some_and(|d| {
                        DialogId::of_incoming_response(&response).as_ref() == Some(&d.id)
                    });
                    if early {
                        // A NOTIFY came first and made the dialog; the 2xx completes it.
                        if let Some(d) = sub.dialog.as_mut() {
                            d.confirm();
                        }
                    } else {
                        match Dialog::from_uac(request, &response, conn, now) {
                            Ok(d) => {
                                if let Some(old) = sub.dialog.take() {
                                    self.out_dialogs.remove(&old.id);
                                }
                                self.out_dialogs.insert(d.id.clone(), key.clone());
                                sub.dialog = Some(Box::new(d));
                            }
                            Err(_) => {
                                let attempts = sub.attempts;
                                let delay = self.backoff(attempts);
                                self.retry_later(now, key, delay, out);
                                return;
                            }
                        }
                    }
                    sub.dialog_deadline = Some(now + max_age);
                }
                sub.established = true;
                sub.expires_at = Some(now + Duration::from_secs(u64::from(granted)));
                sub.next_at = Some(now + refresh_after(granted));
            }
            Err(f) => {
                if f.status == 423 {
                    if let Some(min) = f.min_expires {
                        if min > sub.expires_secs && min <= 86_400 {
                            sub.expires_secs = min;
                            if initial.is_some() || sub.dialog.is_none() {
                                self.send_initial(now, key, out);
                            } else {
                                self.send_refresh(key, out);
                            }
                            return;
                        }
                    }
                }
                if !sub.established && sub.approval == Approval::Requested {
                    // The user's request failed: tell them (presence error, RFC 6121 §3.1.3).
                    let sub = self.outbound.remove(key);
                    if let Some(mut sub) = sub {
                        self.drop_out_tracking(&mut sub);
                        out.push(Output::Forget {
                            direction: Direction::Outbound,
                            local: key.0.clone(),
                            remote: key.1.clone(),
                        });
                        let mut request = Presence::subscribe()
                            .with_from(sub.local_jid.clone())
                            .with_to(sub.remote_jid.clone());
                        request.id = sub.stanza_id.clone();
                        out.push(Output::Stanza(error_reply(
                            &Element::from(request),
                            f.condition,
                            Some(&f.text),
                        )));
                    }
                    return;
                }
                if matches!(f.status, 403 | 603) {
                    self.refused(key, out);
                    return;
                }
                let attempts = sub.attempts;
                let delay = self.backoff(attempts);
                self.retry_later(now, key, delay, out);
            }
        }
    }

    fn notify_outcome(
        &mut self,
        now: Instant,
        tx: TxId,
        key: &Key,
        outcome: Result<(ConnId, Message), Failure>,
        out: &mut Vec<Output>,
    ) {
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        if w.in_flight != Some(tx) {
            return;
        }
        w.in_flight = None;
        match outcome {
            Ok((conn, _)) => {
                w.failures = 0;
                w.retry_at = None;
                if w.detached {
                    // Reached again: the dialog lives on this connection now.
                    w.detached = false;
                    if let Some(d) = w.dialog.as_mut() {
                        d.conn = conn;
                    }
                }
            }
            Err(f) if f.status == 481 => {
                // RFC 6665 §4.2.2: the subscriber no longer has it.
                out.push(Output::Forget {
                    direction: Direction::Inbound,
                    local: key.0.clone(),
                    remote: key.1.clone(),
                });
                self.remove_watcher(key);
                return;
            }
            Err(_) => {
                w.failures = w.failures.saturating_add(1);
                w.detached = true;
                w.dirty = true;
                let failures = w.failures;
                let delay = self.backoff(failures.saturating_sub(1));
                if let Some(w) = self.inbound.get_mut(key) {
                    w.retry_at = Some(now + delay);
                }
            }
        }
        self.maybe_flush(now, key, out);
    }

    // ----------------------------------------------------------------- requests from LCS

    fn on_request(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: &Message,
        out: &mut Vec<Output>,
    ) {
        let benotify = request.method() == Some(&Method::Benotify);
        let is_presence = matches!(
            request.event(),
            Ok(Some(e)) if e.package.eq_ignore_ascii_case("presence")
        );
        if !is_presence {
            if matches!(request.method(), Some(Method::Subscribe | Method::Notify)) {
                let mut r = self.reply(request, 489, Some("Bad Event"));
                r.push_header("Allow-Events", "presence");
                out.push(Output::Respond { tx, response: r });
            }
            return;
        }
        match request.method() {
            Some(Method::Subscribe) => match DialogId::of_incoming_request(request) {
                None => self.new_watcher(now, tx, conn, request, out),
                Some(id) => self.watcher_refresh(now, tx, conn, &id, request, out),
            },
            Some(Method::Notify) | Some(Method::Benotify) => {
                self.on_notify(now, tx, conn, request, benotify, out)
            }
            _ => {}
        }
    }

    fn reply(&mut self, request: &Message, status: u16, reason: Option<&str>) -> Message {
        let tag = self.token();
        Message::response_to(request, status, reason, Some(&tag))
    }

    /// A NOTIFY or BENOTIFY for an outbound subscription.
    fn on_notify(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: &Message,
        benotify: bool,
        out: &mut Vec<Output>,
    ) {
        let respond = |engine: &mut Self, out: &mut Vec<Output>, status: u16, reason: &str| {
            if !benotify {
                let response = engine.reply(request, status, Some(reason));
                out.push(Output::Respond { tx, response });
            }
        };
        let Some(id) = DialogId::of_incoming_request(request) else {
            return respond(self, out, 481, "Subscription does not exist");
        };
        let key = match self.out_dialogs.get(&id) {
            Some(k) => k.clone(),
            None => {
                // A NOTIFY before the SUBSCRIBE's 2xx (RFC 6665 §4.1.2.4) makes the dialog.
                let Some(key) = self.early.get(&id.call_id).cloned() else {
                    return respond(self, out, 481, "Subscription does not exist");
                };
                let Some(sub) = self.outbound.get_mut(&key) else {
                    return respond(self, out, 481, "Subscription does not exist");
                };
                let Some((_, Some(initial))) = &sub.pending else {
                    return respond(self, out, 481, "Subscription does not exist");
                };
                let ours = initial.from().ok().and_then(|f| f.tag().map(str::to_owned));
                if ours.as_deref() != Some(id.local_tag.as_str()) || sub.dialog.is_some() {
                    return respond(self, out, 481, "Subscription does not exist");
                }
                let cseq = initial.cseq().map(|c| c.number).unwrap_or(1);
                match Dialog::from_uas(request, &id.local_tag, cseq, conn, now) {
                    Ok(d) => {
                        self.out_dialogs.insert(d.id.clone(), key.clone());
                        sub.dialog = Some(Box::new(d));
                        sub.dialog_deadline = Some(now + self.settings.dialog_max_age);
                    }
                    Err(e) => return respond(self, out, 400, &e.to_string()),
                }
                key
            }
        };
        let Some(sub) = self.outbound.get_mut(&key) else {
            return respond(self, out, 481, "Subscription does not exist");
        };
        let early = sub.dialog.as_ref().is_some_and(|d| !d.is_confirmed());
        if let Some(d) = sub.dialog.as_mut() {
            if !early {
                if let Err(e) = d.accept_request(request) {
                    return respond(self, out, 500, &e.to_string());
                }
            }
        }
        let (state, reason, expires, retry_after) = match request.subscription_state() {
            Ok(Some(s)) => (
                s.state.to_ascii_lowercase(),
                s.reason().map(str::to_ascii_lowercase),
                s.expires(),
                s.retry_after(),
            ),
            _ => return respond(self, out, 400, "Missing or bad Subscription-State"),
        };
        // Bodies other than PIDF (e.g. msrtc-event-categories) are acknowledged and ignored.
        let doc = match request.content_type() {
            Ok(Some(ct)) if ct.is(PIDF_TYPE) && !request.body().is_empty() => {
                pidf::parse(request.body()).ok()
            }
            _ => None,
        };
        let (remote_jid, local_jid) = (sub.remote_jid.clone(), sub.local_jid.clone());
        match state.as_str() {
            "terminated" => {
                if let Some(d) = sub.dialog.take() {
                    self.out_dialogs.remove(&d.id);
                }
                sub.active = false;
                if reason.as_deref() == Some("rejected") {
                    self.refused(&key, out);
                } else {
                    let delay = self.retry_delay(&key, reason.as_deref(), retry_after);
                    // A SUBSCRIBE still in flight (refresh) belongs to the ended dialog.
                    if let Some(sub) = self.outbound.get_mut(&key) {
                        if let Some((t, None)) = sub.pending {
                            sub.pending = None;
                            self.purposes.remove(&t);
                        }
                    }
                    let busy = self.outbound.get(&key).is_some_and(|s| s.pending.is_some());
                    if !busy {
                        self.retry_later(now, &key, delay, out);
                    }
                }
            }
            "active" => {
                sub.active = true;
                sub.attempts = 0;
                if let Some(e) = expires.filter(|e| *e > 0) {
                    let at = now + Duration::from_secs(u64::from(e));
                    sub.expires_at = Some(at);
                    let refresh = now + refresh_after(e);
                    if sub.pending.is_none() && sub.next_at.is_none_or(|n| n > refresh) {
                        sub.next_at = Some(refresh);
                    }
                }
                let newly = sub.approval != Approval::Approved;
                sub.approval = Approval::Approved;
                if let Some(doc) = &doc {
                    sub.last = Some(Box::new(doc.clone()));
                    sub.shown_available = doc.basic != Some(pidf::Basic::Closed);
                }
                if newly {
                    self.persist_out(now, &key, out);
                    out.push(stanza(
                        Presence::subscribed()
                            .with_from(remote_jid.clone())
                            .with_to(local_jid.clone()),
                    ));
                }
                if let Some(doc) = &doc {
                    let p = presence_from_pidf(
                        doc,
                        &self.table,
                        Jid::from(remote_jid),
                        Jid::from(local_jid),
                    );
                    out.push(stanza(p));
                }
            }
            // `pending` and unknown states (RFC 6665 §4.1.3: treat as pending): wait.
            _ => {
                if let Some(e) = expires.filter(|e| *e > 0) {
                    sub.expires_at = Some(now + Duration::from_secs(u64::from(e)));
                }
            }
        }
        respond(self, out, 200, "OK");
    }

    /// RFC 6665 §4.1.3: how long to wait before subscribing again after `terminated`.
    fn retry_delay(&self, key: &Key, reason: Option<&str>, retry_after: Option<u32>) -> Duration {
        let attempts = self.outbound.get(key).map_or(0, |s| s.attempts);
        if let Some(r) = retry_after {
            return Duration::from_secs(u64::from(r)).max(Duration::from_secs(1));
        }
        match reason {
            // "SHOULD re-subscribe immediately" — once; repeated ones back off.
            Some("deactivated") | Some("timeout") if attempts == 0 => Duration::ZERO,
            // "SHOULD NOT re-subscribe": XMPP subscriptions are long-lived, so the bridge
            // tries again, but only after the longest delay.
            Some("noresource") | Some("invariant") => self.settings.retry_max,
            _ => self.backoff(attempts),
        }
    }

    /// An out-of-dialog SUBSCRIBE from LCS: a new watcher, or a known one in a new dialog.
    fn new_watcher(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: &Message,
        out: &mut Vec<Output>,
    ) {
        let tag = self.token();
        let reply = |status: u16, reason: &str| Output::Respond {
            tx,
            response: Message::response_to(request, status, Some(reason), Some(&tag)),
        };
        if !accepts_pidf(request) {
            let mut r = Message::response_to(request, 406, None, Some(&tag));
            r.push_header("Accept", PIDF_TYPE);
            return out.push(Output::Respond { tx, response: r });
        }
        let (local, remote_jid, remote_aor, display) = match super::parties(&self.book, request) {
            Ok(p) => (p.local, p.remote, p.remote_aor, p.display),
            Err((status, reason)) => return out.push(reply(status, &reason)),
        };
        let expires = match request.expires() {
            Ok(e) => e.unwrap_or(DEFAULT_EXPIRES_SECS),
            Err(e) => return out.push(reply(400, &e.to_string())),
        };
        if expires != 0 && expires < MIN_EXPIRES_SECS {
            let mut r = Message::response_to(request, 423, None, Some(&tag));
            r.push_header("Min-Expires", &MIN_EXPIRES_SECS.to_string());
            return out.push(Output::Respond { tx, response: r });
        }
        let mut dialog = match Dialog::from_uas(request, &tag, 0, conn, now) {
            Ok(d) => d,
            Err(e) => return out.push(reply(400, &e.to_string())),
        };
        let local_uri = dialog.local_uri.clone();
        let contact = self.contact(&local_uri);
        let key = key(local.to_string(), remote_aor);
        if expires == 0 {
            // A fetch (RFC 6665 §4.4.3): the state now, then terminated. Stored nothing.
            let mut r = Message::response_to(request, 202, None, Some(&tag));
            r.push_header("Expires", "0");
            r.push_header("Contact", &name_addr(None, &contact, &[]));
            out.push(Output::Respond { tx, response: r });
            dialog.confirm();
            let approved = self
                .inbound
                .get(&key)
                .is_some_and(|w| w.approval == Approval::Approved);
            let body = approved.then(|| self.rendered(&key.0));
            let state = "terminated;reason=timeout";
            if let Some(t) = self.notify_request(&mut dialog, false, state, body, out) {
                self.purposes.insert(t, Purpose::Final);
            }
            return;
        }
        if !self.inbound.contains_key(&key) {
            if let Some(limit) = self.pending_limit(&key) {
                *self.limit_hits.entry(limit).or_default() += 1;
                warn!(
                    watcher = %key.1,
                    user = %key.0,
                    limit,
                    "presence subscription refused: pending-subscription limit reached"
                );
                let reason = match limit {
                    "presence.max_pending_per_user" => {
                        format!("Too many pending subscriptions for this user ({limit})")
                    }
                    _ => format!(
                        "Too many pending subscriptions from {} ({limit})",
                        Pending::domain(&key)
                    ),
                };
                let mut r = Message::response_to(request, 503, Some(&reason), Some(&tag));
                r.push_header("Retry-After", &PENDING_RETRY_AFTER_SECS.to_string());
                return out.push(Output::Respond { tx, response: r });
            }
        }
        let granted = expires.min(secs(self.settings.expires).max(MIN_EXPIRES_SECS));
        let deadline = now + self.settings.dialog_max_age;
        let approval = match self.inbound.get_mut(&key) {
            Some(w) => {
                // LCS subscribes again (after a lost connection, a restart, a deactivation):
                // same watcher, new dialog.
                if let Some(old) = w.dialog.take() {
                    self.in_dialogs.remove(&old.id);
                }
                w.approval
            }
            None => Approval::Requested,
        };
        self.in_dialogs.insert(dialog.id.clone(), key.clone());
        dialog.confirm();
        let w = self.inbound.entry(key.clone()).or_insert(Box::new(Watcher {
            remote_jid: remote_jid.clone(),
            approval,
            dialog: None,
            detached: false,
            expires_at: now,
            dialog_deadline: deadline,
            last_notify: None,
            dirty: false,
            in_flight: None,
            retry_at: None,
            failures: 0,
            last_body: None,
            blind: false,
            cseq_reserved: 0,
        }));
        w.cseq_reserved = dialog.local_cseq().saturating_add(CSEQ_RESERVE);
        w.dialog = Some(Box::new(dialog));
        w.detached = false;
        w.expires_at = now + Duration::from_secs(u64::from(granted));
        w.dialog_deadline = deadline;
        w.in_flight = None;
        w.retry_at = None;
        w.failures = 0;
        w.last_body = None;
        self.persist_in(now, &key, out);
        if approval != Approval::Approved {
            // XEP-0100: the gateway asks on the legacy user's behalf (RFC 6121 §3.1.3: the
            // server answers by itself when the user already approved).
            out.push(stanza(subscribe_request(
                remote_jid,
                local.clone(),
                display,
            )));
        }
        let mut r = Message::response_to(request, 202, None, Some(&tag));
        r.push_header("Expires", &granted.to_string());
        r.push_header("Contact", &name_addr(None, &contact, &[]));
        out.push(Output::Respond { tx, response: r });
        let state = if approval == Approval::Approved {
            NotifyState::Active
        } else {
            NotifyState::Pending
        };
        self.send_notify(now, &key, state, out);
    }

    /// A SUBSCRIBE inside a watcher's dialog: refresh, or `Expires: 0` to end it.
    fn watcher_refresh(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        id: &DialogId,
        request: &Message,
        out: &mut Vec<Output>,
    ) {
        let Some(key) = self.in_dialogs.get(id).cloned() else {
            let response = self.reply(request, 481, Some("Subscription does not exist"));
            return out.push(Output::Respond { tx, response });
        };
        let expires = request
            .expires()
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_EXPIRES_SECS);
        let max = secs(self.settings.expires).max(MIN_EXPIRES_SECS);
        let contact = self.contact(&self.local_uri(&key.0));
        let Some(w) = self.inbound.get_mut(&key) else {
            return;
        };
        let Some(dialog) = w.dialog.as_mut() else {
            return;
        };
        if let Err(e) = dialog.accept_request(request) {
            let response = Message::response_to(request, 500, Some(&e.to_string()), None);
            return out.push(Output::Respond { tx, response });
        }
        if w.detached {
            w.detached = false;
            dialog.conn = conn;
        }
        if expires != 0 && expires < MIN_EXPIRES_SECS {
            let mut r = Message::response_to(request, 423, None, None);
            r.push_header("Min-Expires", &MIN_EXPIRES_SECS.to_string());
            return out.push(Output::Respond { tx, response: r });
        }
        if expires == 0 {
            let remote_jid = w.remote_jid.clone();
            out.push(Output::Forget {
                direction: Direction::Inbound,
                local: key.0.clone(),
                remote: key.1.clone(),
            });
            if let Ok(local) = BareJid::new(&key.0) {
                out.push(stanza(
                    Presence::new(Type::Unsubscribe)
                        .with_from(remote_jid)
                        .with_to(local),
                ));
            }
            let mut r = Message::response_to(request, 200, None, None);
            r.push_header("Expires", "0");
            r.push_header("Contact", &name_addr(None, &contact, &[]));
            out.push(Output::Respond { tx, response: r });
            self.send_notify(now, &key, NotifyState::Terminated("timeout"), out);
            self.remove_watcher(&key);
            return;
        }
        let granted = expires.min(max);
        w.expires_at = now + Duration::from_secs(u64::from(granted));
        let state = if w.approval == Approval::Approved {
            NotifyState::Active
        } else {
            NotifyState::Pending
        };
        self.persist_in_lazy(now, &key, out);
        let mut r = Message::response_to(request, 200, None, None);
        r.push_header("Expires", &granted.to_string());
        r.push_header("Contact", &name_addr(None, &contact, &[]));
        out.push(Output::Respond { tx, response: r });
        // RFC 6665 §4.2.1.2: a refresh is followed by a NOTIFY with the current state.
        self.send_notify(now, &key, state, out);
    }

    /// New watchers refused since the start, per pending-subscription limit (configuration
    /// key), for logs and metrics.
    pub fn limit_hits(&self) -> &BTreeMap<&'static str, u64> {
        &self.limit_hits
    }

    /// The configuration key of the pending-subscription limit a new watcher `key` would go
    /// beyond, if any.
    fn pending_limit(&self, key: &Key) -> Option<&'static str> {
        let (limit, name) = if self.settings.partners.contains(Pending::domain(key)) {
            (
                self.settings.max_pending_per_partner,
                "presence.max_pending_per_partner",
            )
        } else {
            (
                self.settings.max_pending_per_domain,
                "presence.max_pending_per_domain",
            )
        };
        if self.pending.of_domain(key) >= limit {
            Some(name)
        } else if self.pending.of_user(key) >= self.settings.max_pending_per_user {
            Some("presence.max_pending_per_user")
        } else {
            None
        }
    }

    fn remove_watcher(&mut self, key: &Key) {
        if let Some(w) = self.inbound.remove(key) {
            if let Some(d) = w.dialog {
                self.in_dialogs.remove(&d.id);
            }
            if let Some(tx) = w.in_flight {
                self.purposes.remove(&tx);
            }
        }
    }

    // ----------------------------------------------------------------- NOTIFY out

    /// Builds and sends a NOTIFY in `dialog` with this Subscription-State and body.
    /// Returns the transaction.
    fn notify_request(
        &mut self,
        dialog: &mut Dialog,
        detached: bool,
        state: &str,
        body: Option<Arc<str>>,
        out: &mut Vec<Output>,
    ) -> Option<TxId> {
        let branch = self.branch();
        let contact = self.contact(&dialog.local_uri.clone());
        let mut request = dialog
            .next_request(Method::Notify, &self.via(), &branch, Some(&contact))
            .ok()?;
        request.push_header("Event", "presence");
        request.push_header("Subscription-State", state);
        if let Some(b) = body {
            request.set_body(Some(PIDF_TYPE), b.as_bytes().to_vec());
        }
        let route = if detached {
            // The dialog's connection is gone: the edge reuses or opens one for the domain.
            Route::Domain(host_of(&dialog.remote_uri))
        } else {
            Route::Connection(dialog.conn)
        };
        let tx = self.ids.next();
        out.push(Output::Request { tx, request, route });
        Some(tx)
    }

    /// A NOTIFY to watcher `key` (Active carries the current document).
    fn send_notify(&mut self, now: Instant, key: &Key, state: NotifyState, out: &mut Vec<Output>) {
        let body = (state == NotifyState::Active).then(|| self.rendered(&key.0));
        let known = self.users.get(&key.0).is_some_and(|u| u.known);
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        // A NOTIFY that ends the dialog needs no reservation (and the watcher may be being
        // forgotten: a write now would bring it back).
        let needs = |d: &Dialog| d.local_cseq() >= w.cseq_reserved;
        if !matches!(state, NotifyState::Terminated(_)) && w.dialog.as_deref().is_some_and(needs) {
            let next = w.dialog.as_deref().map_or(0, Dialog::local_cseq);
            w.cseq_reserved = next.saturating_add(CSEQ_RESERVE);
            self.persist_in(now, key, out);
        }
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        let remaining = w.expires_at.saturating_duration_since(now).as_secs();
        let header = match state {
            NotifyState::Pending => format!("pending;expires={remaining}"),
            NotifyState::Active => format!("active;expires={remaining}"),
            NotifyState::Terminated(reason) => format!("terminated;reason={reason}"),
        };
        let Some(mut dialog) = w.dialog.take() else {
            return;
        };
        let detached = w.detached;
        let tx = self.notify_request(&mut dialog, detached, &header, body.clone(), out);
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        w.dialog = Some(dialog);
        let Some(tx) = tx else {
            return;
        };
        if let NotifyState::Terminated(_) = state {
            self.purposes.insert(tx, Purpose::Final);
            return;
        }
        if let Some(old) = w.in_flight.replace(tx) {
            self.purposes.remove(&old);
        }
        self.purposes.insert(tx, Purpose::Notify(key.clone()));
        w.last_notify = Some(now);
        if state == NotifyState::Active {
            w.last_body = body;
            w.dirty = false;
            w.blind = !known;
        }
    }

    /// Sends the owed NOTIFY of watcher `key` if the interval allows it now.
    fn maybe_flush(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let interval = self.settings.min_notify_interval;
        let Some(w) = self.inbound.get(key) else {
            return;
        };
        let due = w.dirty
            && w.approval == Approval::Approved
            && w.dialog.is_some()
            && w.in_flight.is_none()
            && w.retry_at.is_none_or(|r| r <= now)
            && (w.blind || w.last_notify.is_none_or(|t| t + interval <= now));
        if !due {
            return;
        }
        let body = self.rendered(&key.0);
        let Some(w) = self.inbound.get(key) else {
            return;
        };
        if w.last_body.as_deref() == Some(&*body) {
            if let Some(w) = self.inbound.get_mut(key) {
                w.dirty = false;
            }
            return;
        }
        self.send_notify(now, key, NotifyState::Active, out);
    }

    /// When watcher `w` next has work: expiry, dialog replacement, or an owed NOTIFY.
    fn watcher_due(&self, w: &Watcher) -> Option<Instant> {
        let mut t = w.expires_at;
        if w.dialog.is_some() {
            t = t.min(w.dialog_deadline);
            if w.dirty && w.approval == Approval::Approved && w.in_flight.is_none() {
                let mut at = match w.last_notify {
                    Some(l) if w.blind => l,
                    Some(l) => l + self.settings.min_notify_interval,
                    None => t,
                };
                if let Some(r) = w.retry_at {
                    at = at.max(r);
                }
                t = t.min(at);
            }
        }
        Some(t)
    }

    // ----------------------------------------------------------------- timers

    /// The next instant [`PresenceEngine::handle_timeout`] may have work (early at worst).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let paced = (!self.paced.is_empty()).then_some(self.paced_at);
        match (timer, paced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time between two paced requests or stanzas of a restore.
    fn restore_spacing(&self) -> Duration {
        Duration::from_secs(1) / self.settings.restore_rate.max(1)
    }

    /// The restore's stanzas due at `now`, at most [`RESTORE_STANZA_BURST`] at once. A watcher
    /// that is no longer waiting for its user (answered, or gone, since the restore) is not
    /// asked again, and takes no turn.
    fn release_paced(&mut self, now: Instant, out: &mut Vec<Output>) {
        let spacing = self.restore_spacing();
        let mut sent = 0;
        while self.paced_at <= now && sent < RESTORE_STANZA_BURST {
            let Some(next) = self.paced.pop_front() else {
                break;
            };
            let presence = match next {
                Paced::Gateway { from, to } => Presence::available().with_from(from).with_to(to),
                Paced::Probe { from, to } => Presence::probe().with_from(from).with_to(to),
                Paced::Ask(key) => {
                    let waiting = self
                        .inbound
                        .get(&key)
                        .filter(|w| w.approval == Approval::Requested);
                    let (Some(w), Ok(to)) = (waiting, BareJid::new(&key.0)) else {
                        continue;
                    };
                    let display = w.dialog.as_ref().and_then(|d| d.remote_display.clone());
                    subscribe_request(w.remote_jid.clone(), to, display)
                }
            };
            out.push(stanza(presence));
            self.paced_at += spacing;
            sent += 1;
        }
        if sent == RESTORE_STANZA_BURST {
            // Called late: the rest keeps its pace from now instead of bursting.
            self.paced_at = self.paced_at.max(now + spacing);
        }
    }

    /// Notes `key`'s next due time `at` unless an earlier one is armed.
    fn arm(&mut self, side: Side, key: Key, at: Instant) {
        let slot = (side, key);
        if self.armed.get(&slot).is_some_and(|a| *a <= at) {
            return;
        }
        self.timers.push(Reverse((at, side, slot.1.clone())));
        self.armed.insert(slot, at);
    }

    /// Arms the timers of every entry written since the last call.
    fn rearm(&mut self) {
        crate::compact::map(&mut self.purposes);
        crate::compact::map(&mut self.early);
        crate::compact::map(&mut self.armed);
        crate::compact::heap(&mut self.timers);
        for key in std::mem::take(&mut self.outbound.touched) {
            let due = self
                .outbound
                .get(&key)
                .and_then(|s| if s.pending.is_some() { None } else { s.next_at });
            if let Some(at) = due {
                self.arm(Side::Out, key, at);
            }
        }
        for key in std::mem::take(&mut self.inbound.touched) {
            let watcher = self.inbound.get(&key);
            self.pending.set(
                &key,
                watcher.is_some_and(|w| w.approval == Approval::Requested),
            );
            if let Some(at) = watcher.and_then(|w| self.watcher_due(w)) {
                self.arm(Side::In, key, at);
            }
        }
        // The earliest entry is exact (for `poll_timeout`): superseded ones go, early ones
        // move to their key's real time.
        while let Some(Reverse((at, side, key))) = self.timers.peek() {
            let slot = (*side, key.clone());
            let real = match side {
                Side::Out => self
                    .outbound
                    .get(key)
                    .and_then(|s| if s.pending.is_some() { None } else { s.next_at }),
                Side::In => self.inbound.get(key).and_then(|w| self.watcher_due(w)),
            };
            if self.armed.get(&slot) == Some(at) && real == Some(*at) {
                break;
            }
            let superseded = self.armed.get(&slot) != Some(at);
            self.timers.pop();
            if !superseded {
                self.armed.remove(&slot);
                if let Some(real) = real {
                    self.arm(slot.0, slot.1, real);
                }
            }
        }
    }

    /// Refreshes, retries, replacements, expiries and coalesced NOTIFYs due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.release_paced(now, &mut out);
        let (mut due_out, mut due_in) = (Vec::new(), Vec::new());
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, side, key))) = self.timers.pop() else {
                break;
            };
            let slot = (side, key);
            if self.armed.get(&slot) != Some(&at) {
                continue; // superseded
            }
            self.armed.remove(&slot);
            match slot.0 {
                Side::Out => due_out.push(slot.1),
                Side::In => due_in.push(slot.1),
            }
        }
        // Visited even when not due after all (an early entry): re-armed at the real time.
        self.outbound.touched.extend(due_out.iter().cloned());
        self.inbound.touched.extend(due_in.iter().cloned());
        let due: Vec<Key> = due_out
            .into_iter()
            .filter(|k| {
                self.outbound
                    .get(k)
                    .is_some_and(|s| s.pending.is_none() && s.next_at.is_some_and(|n| n <= now))
            })
            .collect();
        for key in due {
            let Some(sub) = self.outbound.get_mut(&key) else {
                continue;
            };
            sub.next_at = None;
            let expires = Duration::from_secs(u64::from(sub.expires_secs));
            let replace = sub.dialog_deadline.is_some_and(|d| now + expires >= d);
            let refresh = sub.dialog.as_ref().map(|d| d.is_confirmed() && !replace);
            match refresh {
                Some(true) => self.send_refresh(&key, &mut out),
                Some(false) => {
                    // Too old for one more period (LCS's 24 h): end it and start a new one.
                    if let Some(mut old) = sub.dialog.take() {
                        self.out_dialogs.remove(&old.id);
                        self.unsubscribe_in_dialog(&mut old, &mut out);
                    }
                    self.send_initial(now, &key, &mut out);
                }
                None => self.send_initial(now, &key, &mut out),
            }
        }
        let keys: Vec<Key> = due_in
            .into_iter()
            .filter(|k| {
                self.inbound
                    .get(k)
                    .is_some_and(|w| self.watcher_due(w).is_some_and(|t| t <= now))
            })
            .collect();
        for key in keys {
            let Some(w) = self.inbound.get(&key) else {
                continue;
            };
            if w.expires_at <= now {
                // Not refreshed in time (RFC 6665 §4.2.2).
                out.push(Output::Forget {
                    direction: Direction::Inbound,
                    local: key.0.clone(),
                    remote: key.1.clone(),
                });
                self.send_notify(now, &key, NotifyState::Terminated("timeout"), &mut out);
                self.remove_watcher(&key);
                continue;
            }
            if w.dialog.is_some() && w.dialog_deadline <= now {
                // LCS re-subscribes in a new dialog (RFC 6665 "deactivated"); approval kept.
                self.send_notify(now, &key, NotifyState::Terminated("deactivated"), &mut out);
                if let Some(w) = self.inbound.get_mut(&key) {
                    if let Some(d) = w.dialog.take() {
                        self.in_dialogs.remove(&d.id);
                    }
                    if let Some(tx) = w.in_flight.take() {
                        self.purposes.remove(&tx);
                    }
                }
                self.persist_in_lazy(now, &key, &mut out);
                continue;
            }
            self.maybe_flush(now, &key, &mut out);
        }
        self.rearm();
        out
    }

    // ----------------------------------------------------------------- store

    fn out_record(&self, now: Instant, key: &Key) -> Option<Subscription> {
        let sub = self.outbound.get(key)?;
        let now_unix = self.unix(now);
        let dialog = sub.dialog.as_ref().map(|d| {
            let left = sub
                .dialog_deadline
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            let age = self.settings.dialog_max_age.saturating_sub(left).as_secs();
            DialogRecord::from_dialog(d, now_unix.saturating_sub(age))
        });
        Some(Subscription {
            direction: Direction::Outbound,
            local_jid: key.0.clone(),
            remote_aor: key.1.clone(),
            dialog,
            expires_unix: sub
                .expires_at
                .map_or_else(|| now_unix + u64::from(sub.expires_secs), |t| self.unix(t)),
            state: if sub.active {
                SubState::Active
            } else {
                SubState::Pending
            },
            approval: sub.approval,
            last_sent: None,
            last_received: sub.last.as_ref().map(|d| pidf::render(d).into_bytes()),
            updated_unix: now_unix,
        })
    }

    fn in_record(&self, now: Instant, key: &Key) -> Option<Subscription> {
        let w = self.inbound.get(key)?;
        let now_unix = self.unix(now);
        let dialog = w.dialog.as_ref().map(|d| {
            let left = w.dialog_deadline.saturating_duration_since(now);
            let age = self.settings.dialog_max_age.saturating_sub(left).as_secs();
            let mut r = DialogRecord::from_dialog(d, now_unix.saturating_sub(age));
            r.local_cseq = r.local_cseq.max(w.cseq_reserved);
            r
        });
        Some(Subscription {
            direction: Direction::Inbound,
            local_jid: key.0.clone(),
            remote_aor: key.1.clone(),
            dialog,
            expires_unix: self.unix(w.expires_at),
            state: if w.approval == Approval::Approved {
                SubState::Active
            } else {
                SubState::Pending
            },
            approval: w.approval,
            last_sent: w.last_body.as_ref().map(|b| b.as_bytes().to_vec()),
            last_received: None,
            updated_unix: now_unix,
        })
    }

    fn persist_out(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.out_record(now, key) {
            out.push(Output::Persist(Box::new(r)));
        }
    }

    fn persist_in(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.in_record(now, key) {
            out.push(Output::Persist(Box::new(r)));
        }
    }

    /// [`Output::PersistLazy`] of watcher `key`: refreshes and dialog replacements, which LCS
    /// repeats anyway.
    fn persist_in_lazy(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.in_record(now, key) {
            out.push(Output::PersistLazy(Box::new(r)));
        }
    }

    /// Local users with a subscription through the gateway, with the component domain(s)
    /// their contacts live on (XEP-0100 gateway presence).
    fn gateway_users(&self) -> BTreeSet<(String, String)> {
        let outs = self
            .outbound
            .iter()
            .map(|(k, s)| (k.0.clone(), s.remote_jid.domain().to_string()));
        let ins = self
            .inbound
            .iter()
            .map(|(k, w)| (k.0.clone(), w.remote_jid.domain().to_string()));
        outs.chain(ins).collect()
    }

    /// Start-up: rebuilds the state from the store. Outbound subscriptions get a fresh
    /// SUBSCRIBE (their old dialogs died with the old process's connections); inbound watchers
    /// keep their dialogs (routed by domain until the peer is reached), resumed above the
    /// stored CSeq with a fresh reservation written first (`Watcher::cseq_reserved`); approved
    /// ones get a NOTIFY with the current state after `min_notify_interval`, by which time the
    /// answers to the probes sent to their local users have arrived, and the others' users are
    /// asked again; gateway presence goes to every local user with a subscription. The fresh
    /// SUBSCRIBEs and the NOTIFYs are paced at `restore_rate` in one sequence (a timer each),
    /// so that a restart neither floods the partners' edges nor holds every request in memory
    /// at once. Records that are expired, terminated or unreadable are forgotten.
    pub fn restore(
        &mut self,
        now: Instant,
        subs: impl Iterator<Item = Subscription>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let mut reserve = Vec::new();
        // The SUBSCRIBEs and NOTIFYs restoring brings go out at `restore_rate`, in store order;
        // its stanzas likewise, in a sequence of their own.
        let spacing = self.restore_spacing();
        let mut paced = (0..).map(|k| now + spacing * k);
        let now_unix = self.unix(now);
        for s in subs {
            let forget = Output::Forget {
                direction: s.direction,
                local: s.local_jid.clone(),
                remote: s.remote_aor.clone(),
            };
            let local = BareJid::new(&s.local_jid).ok();
            let remote = self
                .book
                .uri_to_jid(&s.remote_aor)
                .ok()
                .map(|j| j.to_bare());
            let (Some(local), Some(remote_jid)) = (local, remote) else {
                out.push(forget);
                continue;
            };
            if s.state == SubState::Terminated
                || matches!(s.approval, Approval::Denied | Approval::None)
                    && s.direction == Direction::Outbound
            {
                out.push(forget);
                continue;
            }
            let key = key(local.to_string(), s.remote_aor.clone());
            match s.direction {
                Direction::Outbound => {
                    self.outbound.insert(
                        key.clone(),
                        Box::new(Outbound {
                            established: s.approval == Approval::Approved,
                            last: s
                                .last_received
                                .as_deref()
                                .and_then(|b| pidf::parse(b).ok())
                                .map(Box::new),
                            next_at: paced.next(),
                            ..Outbound::new(
                                local,
                                remote_jid,
                                s.approval,
                                self.expires_secs(),
                                None,
                            )
                        }),
                    );
                }
                Direction::Inbound => {
                    if s.expires_unix <= now_unix || s.approval == Approval::Denied {
                        out.push(forget);
                        continue;
                    }
                    let left = Duration::from_secs(s.expires_unix - now_unix);
                    let (dialog, deadline) = match &s.dialog {
                        Some(r) => {
                            let age = Duration::from_secs(now_unix.saturating_sub(r.created_unix));
                            match self.settings.dialog_max_age.checked_sub(age) {
                                Some(rest) if !rest.is_zero() => match restored_dialog(r, now) {
                                    Some(d) => (Some(Box::new(d)), now + rest),
                                    None => (None, now),
                                },
                                _ => (None, now),
                            }
                        }
                        None => (None, now),
                    };
                    // The stored CSeq is above every one the last process used in the dialog:
                    // resume from it, with a fresh reservation stored before anything is sent.
                    let stored_cseq = s.dialog.as_ref().map_or(0, |r| r.local_cseq);
                    if let Some(d) = &dialog {
                        self.in_dialogs.insert(d.id.clone(), key.clone());
                        reserve.push(key.clone());
                    }
                    let approved = s.approval == Approval::Approved;
                    let notify_at = if approved && dialog.is_some() {
                        paced.next()
                    } else {
                        None
                    };
                    self.inbound.insert(
                        key,
                        Box::new(Watcher {
                            remote_jid,
                            approval: s.approval,
                            dialog,
                            detached: true,
                            expires_at: now + left,
                            dialog_deadline: deadline,
                            last_notify: Some(now),
                            dirty: approved,
                            in_flight: None,
                            retry_at: notify_at,
                            failures: 0,
                            last_body: None,
                            blind: false,
                            cseq_reserved: stored_cseq.saturating_add(CSEQ_RESERVE),
                        }),
                    );
                }
            }
        }
        for key in reserve {
            self.persist_in(now, &key, &mut out);
        }
        // Paced, so that a large deployment does not overflow the link's queue to its own
        // server; each is built when its turn comes.
        for (user, domain) in self.gateway_users() {
            if let (Ok(to), Ok(from)) = (BareJid::new(&user), BareJid::new(&domain)) {
                self.paced.push_back(Paced::Gateway { from, to });
            }
        }
        // One probe per local user with approved watchers; its answer updates all of them.
        let mut probed = BTreeSet::new();
        let probes: Vec<(String, BareJid)> = self
            .inbound
            .iter()
            .filter(|(_, w)| w.approval == Approval::Approved)
            .filter(|(k, _)| probed.insert(k.0.clone()))
            .map(|(k, w)| (k.0.clone(), w.remote_jid.clone()))
            .collect();
        for (user, from) in probes {
            if let Ok(to) = BareJid::new(&user) {
                self.paced.push_back(Paced::Probe { from, to });
            }
        }
        // Watchers still waiting for their user are asked for again: the approval may have
        // come while no bridge was connected (the server bounced it), or the request may never
        // have reached the server. A user who already approved is answered for by the server
        // (RFC 6121 §3.1.3).
        let waiting = self
            .inbound
            .iter()
            .filter(|(_, w)| w.approval == Approval::Requested)
            .map(|(k, _)| Paced::Ask(k.clone()));
        self.paced.extend(waiting);
        self.paced_at = now;
        self.release_paced(now, &mut out);
        self.rearm();
        out
    }

    /// Shutdown (XEP-0100): unavailable from every LCS contact last shown available, and from
    /// the gateway to every local user with a subscription. Nothing is sent to LCS: the
    /// subscriptions stay in the store and [`PresenceEngine::restore`] takes them up again.
    pub fn shutdown(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        for sub in self.outbound.values_mut_untracked() {
            if std::mem::take(&mut sub.shown_available) {
                out.push(stanza(
                    Presence::unavailable()
                        .with_from(sub.remote_jid.clone())
                        .with_to(sub.local_jid.clone()),
                ));
            }
        }
        for (user, domain) in self.gateway_users() {
            if let (Ok(to), Ok(from)) = (BareJid::new(&user), BareJid::new(&domain)) {
                out.push(stanza(Presence::unavailable().with_from(from).with_to(to)));
            }
        }
        out
    }
}

/// When to refresh a subscription granted for `secs` seconds: a minute early for long ones,
/// half-way for short ones (RFC 6665 §4.1.2.1 leaves the margin to the subscriber).
fn refresh_after(secs: u32) -> Duration {
    let s = u64::from(secs);
    Duration::from_secs(if s > 240 { s - 60 } else { (s / 2).max(1) })
}

/// Event, Accept, Expires and Supported of a presence SUBSCRIBE.
fn subscribe_headers(request: &mut Message, expires: u32) {
    request.push_header("Event", "presence");
    request.push_header("Accept", PIDF_TYPE);
    request.push_header("Expires", &expires.to_string());
    request.push_header("Supported", "ms-benotify");
}

fn stanza(p: Presence) -> Output {
    Output::Stanza(Element::from(p))
}

/// The `subscribe` the gateway sends on an LCS watcher's behalf, with the watcher's display
/// name as a XEP-0172 nick.
fn subscribe_request(from: BareJid, to: BareJid, display: Option<String>) -> Presence {
    let mut p = Presence::subscribe().with_from(from).with_to(to);
    if let Some(name) = display.filter(|d| !d.trim().is_empty()) {
        p.payloads.push(Element::from(Nick(name)));
    }
    p
}

/// A stored dialog taken up again, or `None` if it cannot be: an older version accepted
/// control characters in header values, and a Call-ID, tag, URI or route holding one could
/// not be written into a request (the watcher then waits for LCS to subscribe again, as for a
/// dialog past its age). Display names are cleaned instead — they are only shown — of what
/// neither a stanza (the watcher's nick) nor a SIP header may carry; the record is written
/// back cleaned.
fn restored_dialog(r: &DialogRecord, now: Instant) -> Option<Dialog> {
    let fields = [
        &r.call_id,
        &r.local_tag,
        &r.remote_tag,
        &r.local_uri,
        &r.remote_uri,
        &r.remote_target,
    ];
    if fields
        .into_iter()
        .chain(&r.route_set)
        .any(|f| find_forbidden_in_value(f).is_some())
    {
        return None;
    }
    let clean = |display: &Option<String>| {
        display
            .as_deref()
            .map(|d| xml_chars::clean(&header_text(d, usize::MAX)).into_owned())
    };
    Some(Dialog::restored(
        DialogId {
            call_id: r.call_id.clone(),
            local_tag: r.local_tag.clone(),
            remote_tag: r.remote_tag.clone(),
        },
        (r.local_uri.clone(), clean(&r.local_display)),
        (r.remote_uri.clone(), clean(&r.remote_display)),
        r.remote_target.clone(),
        r.route_set.clone(),
        (r.local_cseq, r.remote_cseq),
        0,
        now,
    ))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
#[path = "presence_tests.rs"]
mod tests;
