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
//! → NOTIFY `terminated;reason=rejected`. A watcher sees what the XMPP server addressed to its
//! JID ([`local`]: a broadcast comes as one stanza per contact, a directed presence, a block or
//! invisibility reaches only theirs): the user's resources as last addressed to it, aggregated
//! into one tuple (highest priority, ties to the most available show), at most one NOTIFY per
//! watcher per `min_notify_interval` (RFC 3856 §4.4; the last state always goes out), one
//! NOTIFY in flight per dialog. Refreshes are answered 200 plus a
//! NOTIFY; `Expires: 0` ends with NOTIFY `terminated;reason=timeout` and `unsubscribe`. A
//! dialog reaching the age limit gets `terminated;reason=deactivated` (LCS re-subscribes in a
//! new dialog; approval is kept). After its connection is lost, a dialog's next NOTIFY is sent
//! with [`Route::Domain`] (any connection the edge has or opens for the peer's domain).
//!
//! **Persistence**: [`Output::Persist`] / [`Output::Forget`] come before the outputs that
//! acknowledge the change (202, `subscribed`, NOTIFY active/terminated, `unsubscribed`).
//! [`PresenceEngine::restore`] rebuilds the state at start; [`PresenceEngine::shutdown`]
//! gives the XEP-0100 unavailable presences.
//!
//! **Layout**, by RFC 6665 role: this module holds the engine, the dispatch of its inputs and
//! its timers; [`subscriber`] the outbound side, [`notifier`] the inbound side, [`local`] the
//! local users' aggregated presence, [`persist`] the store records written from the state and
//! the state built from them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::{Presence, Type};

use super::Fact;
use super::{Output, common};
use crate::core::address::AddressBook;
use crate::core::errors::Condition;
use crate::core::names::{self, NameSource};
use crate::core::tables::{ErrorTable, Mappings, PresenceTable};
use crate::edge::event::EdgeEvent;
use crate::random::SplitMix;
use crate::sip::dialog::DialogId;
use crate::sip::message::{Message, Method};
use crate::sip::status::{self, Reject};
use crate::sip::transaction::{ConnId, TxEvent, TxId, TxIds};
use crate::store::{Approval, Direction, DisplayName, SubState, Subscription};
use crate::xmpp::build;

mod index;
mod local;
mod notifier;
mod persist;
mod subscriber;

use index::DialogIndex;
use local::LocalUser;
use notifier::{Pending, Watcher, subscribe_request};
use subscriber::Outbound;

/// The PIDF media type.
pub const PIDF_TYPE: &str = "application/pidf+xml";
/// Shortest subscription the bridge grants (RFC 6665 §4.2.1.1 `423` with `Min-Expires`).
pub const MIN_EXPIRES_SECS: u32 = 60;
/// Expires of a SUBSCRIBE that names none (RFC 3856 §6.4 default).
pub const DEFAULT_EXPIRES_SECS: u32 = 3600;
/// Local CSeq numbers of a watcher's dialog reserved by one synced store write (see
/// `Watcher::cseq_reserved`).
pub const CSEQ_RESERVE: u32 = super::common::CSEQ_RESERVE;
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
    /// Offer Microsoft enhanced presence on SUBSCRIBEs (`presence.enhanced`).
    pub enhanced: bool,
}

/// Partner domains remembered as refusing the enhanced SUBSCRIBE, at most.
pub const PIDF_ONLY_MAX_DOMAINS: usize = 10_000;
/// How long a domain's refusal of the enhanced SUBSCRIBE is remembered (a partner that
/// upgrades its servers gets the offer again the next day).
pub const PIDF_ONLY_TTL: Duration = Duration::from_secs(24 * 3600);

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
            enhanced: true,
        }
    }
}

pub use super::common::WallClock;

/// (local bare JID, remote AOR): the store's identity. Shared: the maps, the timer heap and
/// the dialog and transaction indexes each hold one, so a copy is a reference count.
type Key = Arc<KeyText>;

fn key(local: String, remote: String) -> Key {
    Arc::new(KeyText::new(&local, &remote))
}

/// A subscription's two names in one allocation (the local JID, then the remote AOR), instead
/// of two `String`s: one allocation less per subscription. Equality, hashing and order are
/// those of the pair (`local`, `remote`): the maps iterate by local user first, and a range
/// from (`local`, "") finds a user's first subscription.
#[derive(Clone, PartialEq, Eq, Hash)]
struct KeyText {
    text: Box<str>,
    /// Where the remote AOR starts.
    split: usize,
}

impl KeyText {
    fn new(local: &str, remote: &str) -> Self {
        let mut text = String::with_capacity(local.len() + remote.len());
        text.push_str(local);
        text.push_str(remote);
        KeyText {
            text: text.into_boxed_str(),
            split: local.len(),
        }
    }

    /// The local bare JID.
    fn local(&self) -> &str {
        &self.text[..self.split]
    }

    /// The remote AOR.
    fn remote(&self) -> &str {
        &self.text[self.split..]
    }
}

impl Ord for KeyText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.local(), self.remote()).cmp(&(other.local(), other.remote()))
    }
}

impl PartialOrd for KeyText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Key")
            .field(&self.local())
            .field(&self.remote())
            .finish()
    }
}

/// A stanza a restore sends (XEP-0100 §4.5, RFC 6121 §4.3), built when its turn comes.
#[derive(Debug)]
enum Paced {
    /// The gateway's available presence to a local user with subscriptions.
    Gateway { from: BareJid, to: BareJid },
    /// A probe of a local user from an approved watcher's JID (its answer is what that
    /// watcher may see, RFC 6121 §4.3.2), if it is still approved. `resync`: after a lost
    /// component stream, what the watcher was told of its user's resources is forgotten when
    /// the probe goes, and made anew from the answers ([`PresenceEngine::settle`]).
    Probe { key: Key, resync: bool },
    /// A watcher waiting for its user: the `subscribe` asked again, if it still waits.
    Ask(Key),
    /// An LCS contact's current presence to its local user, if its subscription is active.
    Contact(Key),
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
    /// `Retry-After` of the response (capped): no retry sooner (RFC 3261 §21.5.4).
    retry_after: Option<Duration>,
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
    /// Subscription dialogs by id ([`index`]: a hash of the id and the key).
    out_dialogs: DialogIndex,
    in_dialogs: DialogIndex,
    /// Call-ID of an initial SUBSCRIBE in flight → its subscription (NOTIFY before the 2xx).
    early: HashMap<String, Key>,
    purposes: HashMap<TxId, Purpose>,
    /// Local users with LCS watchers: their nick and the views their watchers share.
    users: HashMap<String, LocalUser>,
    /// Approved and waiting watchers by a hash of the two bare JIDs the XMPP server addresses
    /// a user's presence to the watcher with ([`PresenceEngine::index_watcher`]).
    by_jids: HashMap<u64, Key>,
    index_hasher: std::collections::hash_map::RandomState,
    /// The NOTIFYs' Via host, and the Contact of the last one's local URI (made once for a
    /// run of NOTIFYs about one user).
    notify_via: String,
    notify_contact: (String, String),
    pending: Pending,
    /// New watchers refused for a pending-subscription limit since the start, by limit key.
    limit_hits: BTreeMap<&'static str, u64>,
    /// Stanzas a restore sends, paced at `restore_rate` from `paced_at` on.
    paced: VecDeque<Paced>,
    paced_at: Instant,
    /// The next free slot of the paced SIP requests (a restore's SUBSCRIBEs and NOTIFYs, the
    /// SUBSCRIBEs that replace dialogs lost with a connection): one every `1 / restore_rate`,
    /// whatever asked for it, so that two causes at once do not double the rate.
    request_slot: Instant,
    /// Watchers probed after a lost component stream, in the order the probes went, with the
    /// time their view is made anew from whatever the answers said
    /// ([`PresenceEngine::settle`]) and the component domain the probe went through.
    settling: VecDeque<(Instant, Key, String)>,
    /// Partner domains that refused the enhanced SUBSCRIBE, until when
    /// ([`PIDF_ONLY_MAX_DOMAINS`], [`PIDF_ONLY_TTL`]).
    pidf_only: HashMap<String, Instant>,
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
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
        let notify_via = common::via(&settings.public_fqdn);
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
            out_dialogs: DialogIndex::default(),
            in_dialogs: DialogIndex::default(),
            early: HashMap::new(),
            purposes: HashMap::new(),
            users: HashMap::new(),
            by_jids: HashMap::new(),
            index_hasher: std::collections::hash_map::RandomState::new(),
            notify_via,
            notify_contact: (String::new(), String::new()),
            pending: Pending::default(),
            limit_hits: BTreeMap::new(),
            paced: VecDeque::new(),
            paced_at: clock.at,
            request_slot: clock.at,
            settling: VecDeque::new(),
            pidf_only: HashMap::new(),
        }
    }

    /// A reload's settings and tables (docs/configuration.md, "Reloading"). `public_fqdn`
    /// stays as started (a restart changes it). What is already built keeps its state: a new
    /// table applies to the next document translated either way; a new `expires` to the next
    /// SUBSCRIBE sent or answered; new pending limits to the next watcher (those waiting stay,
    /// even above a lowered limit); a new `min_notify_interval` counts from each watcher's last
    /// NOTIFY, so a NOTIFY owed now is rescheduled by it.
    pub fn reconfigure(&mut self, settings: PresenceSettings, mappings: Mappings) {
        let public_fqdn = std::mem::take(&mut self.settings.public_fqdn);
        self.settings = PresenceSettings {
            public_fqdn,
            ..settings
        };
        self.table = mappings.presence;
        self.errors = mappings.errors;
        // A shorter interval makes owed NOTIFYs due before their timers: the earliest timer
        // is made exact again, and each timer run does the same for the next (a longer
        // interval finds them not due when the timer fires, and they are armed again).
        self.rearm();
    }

    /// An administrator ends the subscriptions between local user `local` (bare JID) and LCS
    /// user `remote` (AOR URI), both ways, as if the user had: the user's subscription to the
    /// contact is unsubscribed at LCS (SUBSCRIBE `Expires: 0`) and the user is sent
    /// `unsubscribed` from the contact; the contact's subscription to the user is ended with a
    /// NOTIFY `terminated;reason=rejected` and the user is sent `unsubscribe` from the contact
    /// (RFC 6121 §3.2, §3.3: the server updates the roster). Both are forgotten in the store.
    /// Returns which directions there were.
    pub fn end_by_admin(
        &mut self,
        now: Instant,
        local: &str,
        remote: &str,
    ) -> (Vec<Direction>, Vec<Output>) {
        let key = key(local.to_owned(), remote.to_owned());
        let mut out = Vec::new();
        let mut ended = Vec::new();
        let local_jid = BareJid::new(local).ok();
        if let Some(sub) = self.outbound.get(&key) {
            let (from, to) = (sub.remote_jid.clone(), sub.local_jid.clone());
            self.xmpp_unsubscribe(&key, &mut out);
            out.push(stanza(
                Presence::new(Type::Unsubscribed)
                    .with_from(from)
                    .with_to(to),
            ));
            ended.push(Direction::Outbound);
        }
        if let Some(w) = self.inbound.get(&key) {
            let from = w.remote_jid.clone();
            self.xmpp_unsubscribed(now, &key, &mut out);
            if let Some(to) = local_jid {
                out.push(stanza(
                    Presence::new(Type::Unsubscribe).with_from(from).with_to(to),
                ));
            }
            ended.push(Direction::Inbound);
        }
        self.rearm();
        (ended, out)
    }

    /// Whether SUBSCRIBEs to `domain` go with PIDF only (it refused the enhanced offer within
    /// [`PIDF_ONLY_TTL`]).
    fn pidf_only(&self, now: Instant, domain: &str) -> bool {
        self.pidf_only
            .get(&domain.to_ascii_lowercase())
            .is_some_and(|until| *until > now)
    }

    /// Remembers that `domain` refused the enhanced offer. The map is bounded: when full, the
    /// expired entries go, then the one expiring first.
    fn remember_pidf_only(&mut self, now: Instant, domain: String) {
        let domain = domain.to_ascii_lowercase();
        if self.pidf_only.len() >= PIDF_ONLY_MAX_DOMAINS && !self.pidf_only.contains_key(&domain) {
            self.pidf_only.retain(|_, until| *until > now);
            if self.pidf_only.len() >= PIDF_ONLY_MAX_DOMAINS {
                let first = self
                    .pidf_only
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(d, _)| d.clone());
                if let Some(d) = first {
                    self.pidf_only.remove(&d);
                }
            }
        }
        self.pidf_only.insert(domain, now + PIDF_ONLY_TTL);
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
        common::branch(&mut self.rng)
    }

    fn via(&self) -> String {
        common::via(&self.settings.public_fqdn)
    }

    fn contact(&self, local_uri: &str) -> String {
        common::contact_for(&self.settings.public_fqdn, local_uri)
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
        let (_, _, kind) = local::addressing(&element);
        if matches!(kind, None | Some("unavailable")) {
            // A local user's presence to one contact (a broadcast comes as one per contact).
            let available = kind.is_none();
            self.local_presence(now, element, available, &mut out);
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
        // Addressed to the gateway itself (XEP-0100 §4.1: the user's subscription to it).
        if to.node().is_none() && self.book.is_component_domain(to.domain().as_str()) {
            self.addressed_to_gateway(&p, &from, &to, &mut out);
            return out;
        }
        let remote = match self.book.jid_to_sip(&to) {
            Ok(a) if !self.book.is_local_domain(&a.host) && to.node().is_some() => a.aor(),
            _ => {
                if matches!(p.type_, Type::Subscribe | Type::Probe) {
                    out.push(common::bounce(
                        build::presence(p),
                        Condition::ItemNotFound,
                        "not an address this gateway can reach",
                    ));
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
            Type::Error => self.xmpp_error(now, &key, &from, &p, &mut out),
            _ => {}
        }
        out
    }

    /// A presence error about a local user, to an LCS contact: the XMPP server answering for
    /// the account (so from the bare JID; RFC 6121 §3.1.3, §4.3.2) that it does not exist or
    /// will not take the contact's stanzas. What depends on that user ends: an LCS watcher's
    /// subscription is terminated — `rejected` when the server refuses (`forbidden`,
    /// `not-authorized`, `not-allowed`, `policy-violation`, `registration-required`,
    /// `subscription-required`), else `noresource` (the user is not there; RFC 6665 §4.2.2) —
    /// and the user's own subscription to the contact is ended at LCS. An error the server
    /// marks `wait` (RFC 6120 §8.3.2) is passing and changes nothing, as is one from a full
    /// JID (a client's, about one resource).
    fn xmpp_error(
        &mut self,
        now: Instant,
        key: &Key,
        from: &Jid,
        p: &Presence,
        out: &mut Vec<Output>,
    ) {
        if from.resource().is_some() {
            return;
        }
        let Some((condition, wait)) = common::error_of(&p.payloads) else {
            return;
        };
        if wait {
            return;
        }
        let reason = match condition {
            Condition::Forbidden
            | Condition::NotAuthorized
            | Condition::NotAllowed
            | Condition::PolicyViolation
            | Condition::RegistrationRequired
            | Condition::SubscriptionRequired => "rejected",
            _ => "noresource",
        };
        self.end_watcher(now, key, reason, out);
        self.xmpp_unsubscribe(key, out);
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

    // ----------------------------------------------------------------- outbound requests

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
                        // With Microsoft's diagnostics, when the response has them.
                        text: common::failure_text(status, &response, "presence request"),
                        min_expires: response
                            .header("Min-Expires")
                            .and_then(|v| v.trim().parse().ok()),
                        retry_after: crate::sip::status::retry_after(
                            response.header("Retry-After"),
                        ),
                    })
                };
                self.on_final(now, tx, outcome, &mut out);
            }
            EdgeEvent::Transaction(TxEvent::Timeout { tx }) => {
                let f = Failure {
                    status: 0,
                    condition: self.errors.condition_for_timeout(),
                    text: common::NO_ANSWER.into(),
                    min_expires: None,
                    retry_after: None,
                };
                self.on_final(now, tx, Err(f), &mut out);
            }
            EdgeEvent::Transaction(TxEvent::TransportError { tx }) => {
                let f = Failure {
                    status: 0,
                    condition: Condition::RecipientUnavailable,
                    text: common::CONNECTION_LOST.into(),
                    min_expires: None,
                    retry_after: None,
                };
                self.on_final(now, tx, Err(f), &mut out);
            }
            EdgeEvent::Undeliverable { tx, why } => {
                let condition = common::undeliverable_condition(&self.errors, &why);
                let f = Failure {
                    status: 0,
                    condition,
                    text: why.to_string(),
                    min_expires: None,
                    retry_after: None,
                };
                self.on_final(now, tx, Err(f), &mut out);
            }
            EdgeEvent::ConnectionLost { conn } => self.connection_lost(now, conn, &mut out),
            EdgeEvent::Transaction(_) => {}
        }
        out
    }

    fn connection_lost(&mut self, now: Instant, conn: ConnId, out: &mut Vec<Output>) {
        self.subscriptions_lost(now, conn, out);
        self.watchers_lost(now, conn, out);
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
                // RFC 6665 §8.3.1: 489 names the packages this side takes.
                let reject = Reject::new(status::BAD_EVENT)
                    .reason("Bad Event")
                    .header("Allow-Events", "presence");
                let response = self.refuse(request, &reject);
                out.push(Output::Respond { tx, response });
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

    /// The refusal of `request` outside a dialog of ours, with a fresh To tag.
    fn refuse(&mut self, request: &Message, reject: &Reject) -> Message {
        common::refuse(&mut self.rng, request, reject)
    }

    /// Adds the subscriptions both ways, by state, to `census` (a walk over all of them).
    pub fn census(&self, census: &mut super::Census) {
        for sub in self.outbound.map.values() {
            census.outbound[usize::from(sub.active)] += 1;
        }
        for w in self.inbound.map.values() {
            let i = match w.approval {
                Approval::None => 0,
                Approval::Requested => 1,
                Approval::Approved => 2,
                Approval::Denied => 3,
            };
            census.inbound[i] += 1;
        }
    }

    /// New watchers refused since the start, per pending-subscription limit (configuration
    /// key), for logs and metrics.
    pub fn limit_hits(&self) -> &BTreeMap<&'static str, u64> {
        &self.limit_hits
    }

    // ----------------------------------------------------------------- NOTIFY out

    // ----------------------------------------------------------------- timers

    /// The next instant [`PresenceEngine::handle_timeout`] may have work (early at worst).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let paced = (!self.paced.is_empty()).then_some(self.paced_at);
        let settling = self.settling.front().map(|(at, _, _)| *at);
        [timer, paced, settling].into_iter().flatten().min()
    }

    /// The next slot for a paced SIP request: `now` when the pace allows it, else later.
    pub(super) fn next_request_slot(&mut self, now: Instant) -> Instant {
        let at = self.request_slot.max(now);
        self.request_slot = at + self.restore_spacing();
        at
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
                Paced::Probe { key, resync } => {
                    let approved = self
                        .inbound
                        .get(&key)
                        .filter(|w| w.approval == Approval::Approved);
                    let (Some(w), Ok(to)) = (approved, BareJid::new(key.local())) else {
                        continue;
                    };
                    let domain = w.remote_jid.domain().to_string();
                    let probe = Presence::probe()
                        .with_from(w.remote_jid.clone())
                        .with_to(to);
                    if resync {
                        // The answers (one per resource still available; an unavailable one
                        // or none at all when there is none) make the watcher's view anew.
                        self.mark_stale(&key);
                        let at = now + self.settings.min_notify_interval;
                        self.settling.push_back((at, key.clone(), domain));
                    }
                    // A NOTIFY owed to the watcher (a restore's) waits one interval for the
                    // answers, as after one it sent: it would say `closed` first otherwise.
                    if let Some(w) = self.inbound.get_mut(&key).filter(|w| w.dirty) {
                        w.last_notify = Some(now);
                    }
                    probe
                }
                Paced::Ask(key) => {
                    let waiting = self
                        .inbound
                        .get(&key)
                        .filter(|w| w.approval == Approval::Requested);
                    let (Some(w), Ok(to)) = (waiting, BareJid::new(key.local())) else {
                        continue;
                    };
                    let display = w.name.as_ref().map(|n| n.text.clone());
                    subscribe_request(w.remote_jid.clone(), to, display)
                }
                Paced::Contact(key) => {
                    let Some(presence) = self
                        .outbound
                        .get(&key)
                        .filter(|s| s.active && s.dialog.is_some())
                        .and_then(|s| {
                            s.last.as_deref()?.presence(
                                &self.table,
                                Jid::from(s.remote_jid.clone()),
                                Jid::from(s.local_jid.clone()),
                            )
                        })
                    else {
                        continue;
                    };
                    presence
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
        crate::compact::map(&mut self.by_jids);
        self.out_dialogs.compact();
        self.in_dialogs.compact();
        crate::compact::heap(&mut self.timers);
        for key in std::mem::take(&mut self.outbound.touched) {
            let due = self.outbound.get(&key).and_then(|s| s.due());
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
                Side::Out => self.outbound.get(key).and_then(|s| s.due()),
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
        while self.settling.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, key, _)) = self.settling.pop_front() {
                self.settle(now, &key, &mut out);
            }
        }
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
                    .is_some_and(|s| s.due().is_some_and(|n| n <= now))
            })
            .collect();
        for key in due {
            self.subscription_timer(now, &key, &mut out);
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
            self.watcher_timer(now, &key, &mut out);
        }
        self.rearm();
        out
    }

    // ----------------------------------------------------------------- store

    /// Local users with a subscription through the gateway, with the component domain(s)
    /// their contacts live on (XEP-0100 gateway presence).
    fn gateway_users(&self) -> BTreeSet<(String, String)> {
        let outs = self
            .outbound
            .iter()
            .map(|(k, s)| (k.local().to_owned(), s.remote_jid.domain().to_string()));
        let ins = self
            .inbound
            .iter()
            .map(|(k, w)| (k.local().to_owned(), w.remote_jid.domain().to_string()));
        outs.chain(ins).collect()
    }

    /// Start-up: rebuilds the state from the store. Outbound subscriptions get a fresh
    /// SUBSCRIBE (their old dialogs died with the old process's connections); inbound watchers
    /// keep their dialogs (routed by domain until the peer is reached), resumed above the
    /// stored CSeq with a fresh reservation written first (`Watcher::cseq_reserved`); approved
    /// ones get a NOTIFY with what the answer to the probe sent from each one's JID said (RFC
    /// 6121 §4.3.2: the server answers a contact with what that contact may see), once that
    /// probe has gone out and `min_notify_interval` more has passed, and the others' users are
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
            if s.state == SubState::Terminated {
                out.push(forget);
                continue;
            }
            let key = key(local.to_string(), s.remote_aor.clone());
            match s.direction {
                Direction::Outbound => {
                    let expires_secs = self.expires_secs();
                    let Some(mut sub) = Outbound::from_record(&s, local, remote_jid, expires_secs)
                    else {
                        out.push(forget);
                        continue;
                    };
                    sub.next_at = Some(self.next_request_slot(now));
                    self.outbound.insert(key, Box::new(sub));
                }
                Direction::Inbound => {
                    let max_age = self.settings.dialog_max_age;
                    let view = self.blank_view(key.local());
                    let at = (now, now_unix);
                    let Some(mut w) = Watcher::from_record(&s, remote_jid, view, at, max_age)
                    else {
                        out.push(forget);
                        continue;
                    };
                    if let Some(d) = &w.dialog {
                        self.in_dialogs.insert(&d.id, key.clone());
                        // Resumed above the stored CSeq: a fresh reservation is stored before
                        // anything is sent.
                        reserve.push(key.clone());
                        if w.approval == Approval::Approved {
                            w.retry_at = Some(self.next_request_slot(now));
                            // Its NOTIFY waits for the probe from its JID too (released with
                            // the restore's stanzas, `release_paced`), then one interval for
                            // the answers; it would say `closed` first otherwise.
                            w.last_notify = Some(now + self.settings.dialog_max_age);
                        }
                    }
                    self.inbound.insert(key.clone(), Box::new(w));
                    self.index_watcher(&key);
                }
            }
        }
        for key in reserve {
            self.persist_in(now, &key, &mut out);
        }
        // The names kept with the subscriptions, for the vCard answers.
        let outs = self
            .outbound
            .iter()
            .map(|(k, s)| (k, &s.remote_jid, &s.name));
        let ins = self
            .inbound
            .iter()
            .map(|(k, w)| (k, &w.remote_jid, &w.name));
        // One per contact: its users' subscriptions merged as names merge (a PIDF name wins).
        let mut named: BTreeMap<String, (BareJid, DisplayName)> = BTreeMap::new();
        for (k, contact, name) in outs.chain(ins) {
            let Some(n) = name else { continue };
            let now = named.get(k.remote()).map(|(_, d)| d);
            if let Some(merged) = combine(now, Some(n)) {
                named.insert(k.remote().to_owned(), (contact.clone(), merged));
            }
        }
        for (aor, (contact, name)) in named {
            out.push(Output::Fact(Fact::Name {
                contact,
                aor,
                source: source_of(&name),
                name: name.text,
                subscribed: true,
            }));
        }
        self.resync_xmpp(now, None, &mut out);
        self.rearm();
        out
    }

    /// The component link for `domain` is back after a loss. What the XMPP server sent the
    /// component meanwhile is lost (local users' presence, approvals, probes), so the stanzas
    /// of a restore go out again for the contacts in `domain`: gateway presence, a probe from
    /// each approved watcher's JID (its answers make that watcher's state anew, RFC 6121
    /// §4.3.2), watchers still waiting asked again; and each LCS contact's current presence goes
    /// to its local user (as a probe would be answered). Paced like a restore's stanzas.
    pub fn link_restored(&mut self, now: Instant, domain: &str) -> Vec<Output> {
        let mut out = Vec::new();
        self.resync_xmpp(now, Some(domain), &mut out);
        self.rearm();
        out
    }

    /// The component link for `domain` is lost (again). What is queued for it waits for the
    /// resync when it comes back, which queues it all anew; and the probes that went through
    /// it may never be answered, so the users they asked about are not made anew from their
    /// silence (that would show them offline for a lost stream): the resync probes them again.
    pub fn link_lost(&mut self, domain: &str) {
        let mut queued = std::mem::take(&mut self.paced);
        queued.retain(|p| self.paced_domain(p).is_some_and(|pd| pd != domain));
        self.paced = queued;
        self.settling.retain(|(_, _, d)| d != domain);
    }

    /// Queues the stanzas that bring the XMPP side up to date (all contacts, or those of one
    /// component domain) and sends the first of them.
    fn resync_xmpp(&mut self, now: Instant, domain: Option<&str>, out: &mut Vec<Output>) {
        let ours = |jid: &BareJid| domain.is_none_or(|d| jid.domain().as_str() == d);
        if let Some(d) = domain {
            // A stream lost again before the last resync of this domain was through: what is
            // still queued for it is queued anew below, once (a flapping link must not pile up
            // copies).
            let mut queued = std::mem::take(&mut self.paced);
            queued.retain(|p| self.paced_domain(p).is_some_and(|pd| pd != d));
            self.paced = queued;
        }
        if self.paced.is_empty() {
            self.paced_at = now;
        }
        // Paced, so that a large deployment does not overflow the link's queue to its own
        // server; each is built when its turn comes.
        for (user, gateway) in self.gateway_users() {
            if let (Ok(to), Ok(from)) = (BareJid::new(&user), BareJid::new(&gateway)) {
                if ours(&from) {
                    self.paced.push_back(Paced::Gateway { from, to });
                }
            }
        }
        // One probe per approved watcher, from its JID: the server answers each with what
        // that watcher may see (RFC 6121 §4.3.2: the presence of each available resource, or
        // unavailable; nothing to a contact the user blocks).
        let probes: Vec<Key> = self
            .inbound
            .iter()
            .filter(|(_, w)| w.approval == Approval::Approved && ours(&w.remote_jid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in probes {
            // After a loss, what the watcher was told before may be stale (a resource may
            // have gone offline unseen): forgotten when the probe goes (see `settle`).
            let resync = domain.is_some();
            self.paced.push_back(Paced::Probe { key, resync });
        }
        // Watchers still waiting for their user are asked for again: the approval may have
        // come while no bridge was connected (the server bounced it), or the request may never
        // have reached the server. A user who already approved is answered for by the server
        // (RFC 6121 §3.1.3).
        let waiting = self
            .inbound
            .iter()
            .filter(|(_, w)| w.approval == Approval::Requested && ours(&w.remote_jid))
            .map(|(k, _)| Paced::Ask(k.clone()));
        self.paced.extend(waiting);
        if domain.is_some() {
            // After a restore the NOTIFYs of the fresh SUBSCRIBEs bring this.
            let contacts = self
                .outbound
                .iter()
                .filter(|(_, s)| ours(&s.remote_jid))
                .map(|(k, _)| Paced::Contact(k.clone()));
            self.paced.extend(contacts.collect::<Vec<_>>());
        }
        self.release_paced(now, out);
    }

    /// The component domain a queued stanza is for (`None`: its subscription is gone).
    fn paced_domain<'a>(&'a self, p: &'a Paced) -> Option<&'a str> {
        match p {
            Paced::Gateway { from, .. } => Some(from.domain().as_str()),
            Paced::Probe { key, .. } | Paced::Ask(key) => self
                .inbound
                .get(key)
                .map(|w| w.remote_jid.domain().as_str()),
            Paced::Contact(key) => self
                .outbound
                .get(key)
                .map(|s| s.remote_jid.domain().as_str()),
        }
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

fn stanza(p: Presence) -> Output {
    Output::Stanza(build::presence(p))
}

/// Where a kept name came from.
fn source_of(n: &DisplayName) -> NameSource {
    if n.from_pidf {
        NameSource::Pidf
    } else {
        NameSource::From
    }
}

/// `raw` (a peer string) cleaned, as the name of a contact whose name is `current`: the new
/// name when it changes it (`core::names::merge`: a PIDF name wins over a From name).
pub(super) fn new_name(
    current: &Option<DisplayName>,
    raw: Option<&str>,
    source: NameSource,
) -> Option<DisplayName> {
    let text = names::display_name(raw?)?;
    let now = current.as_ref().map(|n| (n.text.as_str(), source_of(n)));
    names::merge(now, (&text, source)).map(|(text, s)| DisplayName {
        text,
        from_pidf: s == NameSource::Pidf,
    })
}

/// One name out of two a contact has (its two subscriptions with a user, or two users'
/// subscriptions): `first`, replaced by `then` as `core::names::merge` decides — a PIDF name
/// wins over a `From` name, and of two names from the same kind of source `then`'s.
fn combine(first: Option<&DisplayName>, then: Option<&DisplayName>) -> Option<DisplayName> {
    match (first, then) {
        (None, t) => t.cloned(),
        (f, None) => f.cloned(),
        (Some(f), Some(t)) => Some(
            names::merge(Some((&f.text, source_of(f))), (&t.text, source_of(t))).map_or_else(
                || f.clone(),
                |(text, s)| DisplayName {
                    text,
                    from_pidf: s == NameSource::Pidf,
                },
            ),
        ),
    }
}

impl PresenceEngine {
    /// The subscriptions' key of `local` and `contact`.
    fn pair_key(&self, local: &BareJid, contact: &BareJid) -> Option<Key> {
        let aor = self.book.jid_to_sip(&Jid::from(contact.clone())).ok()?;
        Some(key(local.to_string(), aor.aor().to_uri()))
    }

    /// The contact's name for its local user: one name for both directions (an LCS watcher's
    /// `From` name, the `From` and PIDF names of the user's subscription), merged as names
    /// merge — the contact's own PIDF name wins.
    fn pair_name(&self, key: &Key) -> Option<DisplayName> {
        let inbound = self.inbound.get(key).and_then(|w| w.name.as_ref());
        let outbound = self.outbound.get(key).and_then(|s| s.name.as_ref());
        combine(inbound, outbound)
    }

    /// A subscription between `local` and `contact` was just approved (either side): the
    /// roster engine puts the contact into the user's roster, with the pair's name
    /// ([`PresenceEngine::pair_name`]; `name`, the approved side's, if the pair is not found).
    pub(super) fn approved_fact(
        &self,
        local: &BareJid,
        contact: &BareJid,
        name: Option<DisplayName>,
        out: &mut Vec<Output>,
    ) {
        let name = match self.pair_key(local, contact) {
            Some(key) => self.pair_name(&key),
            None => name,
        };
        out.push(Output::Fact(Fact::Roster {
            local: local.clone(),
            contact: contact.clone(),
            name: name.map(|n| n.text),
            previous: None,
            approved: true,
        }));
    }

    /// An LCS watcher's name changed from `old` to `new` ([`PresenceEngine::renamed`] for
    /// the watcher's side); `approved`: the watcher is approved.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn renamed_facts(
        &self,
        local: &BareJid,
        contact: &BareJid,
        aor: &str,
        old: Option<DisplayName>,
        new: &DisplayName,
        approved: bool,
        out: &mut Vec<Output>,
    ) {
        let key = key(local.to_string(), aor.to_owned());
        let follow = approved
            || self
                .outbound
                .get(&key)
                .is_some_and(|s| s.approval == Approval::Approved);
        self.renamed(Side::In, local, contact, aor, old, new, follow, out);
    }

    /// The name of `contact`'s subscription on `side` with `local` changed from `old` to
    /// `new`: the vCard answers learn it, and, with `follow` (a subscription between them is
    /// approved, and the approval's own fact did not carry the name already), the user's
    /// roster follows when the pair's name ([`PresenceEngine::pair_name`]) changes — from the
    /// pair's name before, so that a name the other direction gives and a PIDF name are
    /// compared as what the roster shows.
    #[allow(clippy::too_many_arguments)]
    fn renamed(
        &self,
        side: Side,
        local: &BareJid,
        contact: &BareJid,
        aor: &str,
        old: Option<DisplayName>,
        new: &DisplayName,
        follow: bool,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Fact(Fact::Name {
            contact: contact.clone(),
            aor: aor.to_owned(),
            name: new.text.clone(),
            source: source_of(new),
            subscribed: true,
        }));
        if !follow {
            return;
        }
        let key = key(local.to_string(), aor.to_owned());
        let other = match side {
            Side::In => self.outbound.get(&key).and_then(|s| s.name.as_ref()),
            Side::Out => self.inbound.get(&key).and_then(|w| w.name.as_ref()),
        };
        let before = combine(other, old.as_ref());
        let after = combine(other, Some(new));
        let text = |n: &Option<DisplayName>| n.as_ref().map(|n| n.text.clone());
        if text(&before) == text(&after) {
            return;
        }
        out.push(Output::Fact(Fact::Roster {
            local: local.clone(),
            contact: contact.clone(),
            name: text(&after),
            previous: text(&before),
            approved: false,
        }));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read the clock
mod tests;
