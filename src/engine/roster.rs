//! Rosters (docs/mapping.md §6): LCS contacts put into local users' rosters, with their
//! names, when a subscription between them is approved on either side, and the name kept
//! current; sans-IO like the other engines.
//!
//! - **XEP-0356 (Privileged Entity).** The XMPP server tells the component which privileges it
//!   has with a `<message>` from the server's domain carrying `<privilege/>` (namespace
//!   `urn:xmpp:privilege:2` from Prosody's mod_privilege, `urn:xmpp:privilege:1` from
//!   ejabberd 23.01: both are read) right after the component connects; a stream lost takes
//!   them away until the next message. Such a message from anyone else is no privilege message
//!   and goes on as an ordinary message. With roster `both` access for a user's domain, the
//!   bridge writes the roster item itself: it reads the user's roster (`<iq type='get'>` from
//!   the component domain to the user's bare JID, `jabber:iq:roster`), then sets the item
//!   (RFC 6121 §2.3) — keeping the user's groups, adding the contact when it is missing at an
//!   approval (a rename does not bring back a contact the user removed), and writing the name
//!   only over no name, a placeholder (the JID, the LCS address), a name the bridge wrote (or
//!   tried to write) into that item, or the name the contact had before the change; a name the
//!   user gave the contact is left alone. `set` access without `get` is no usable grant: a set
//!   replaces the whole item, and without reading it first the bridge would overwrite the
//!   user's own names and groups and bring back contacts the user removed; one WARN, and the
//!   fallback.
//! - **Read, then write.** Between the bridge's get and its set the user's client may change the
//!   item; the set then undoes that change (RFC 6121 has no conditional roster set). The window
//!   is one round trip to the server, and a rename goes at most once per
//!   [`RENAME_DEBOUNCE`] per item.
//! - **XEP-0144 (Roster Item Exchange).** Without the privilege, a suggestion to the user:
//!   `<message>` with `<x xmlns='http://jabber.org/protocol/rosterx'>`, `action='add'` with
//!   the name on approval, `action='modify'` when the name changes.
//! - `xmpp.roster` ([`RosterMode`]) picks: `auto` (the privilege where granted, else XEP-0144),
//!   `privilege` (only the privilege), `rosterx` (only XEP-0144), `none`.
//!
//! What triggers it are the presence engine's [`Fact::Roster`]s.
//!
//! - **No grant yet.** Until the server's privilege message for a (component, server) pair has
//!   arrived since the component's stream came up, a wish waits (while the stream is down, and
//!   at most [`GRANT_GRACE`] after it came up); the message, or the end of the grace period,
//!   decides. At most [`MAX_IN_FLIGHT`] wishes wait so.
//! - **Renames** of one roster item go at most once per [`RENAME_DEBOUNCE`]: a newer name
//!   waits out the rest of the period, and the latest one then goes (an approval never waits).
//! - **Errors.** An error answer to a roster IQ is logged with its condition and text and not
//!   retried. A refusal that says the server cannot do it — `internal-server-error`,
//!   `feature-not-implemented`, `forbidden`, `not-allowed` (ejabberd 23.01 answers every
//!   privileged roster set with `internal-server-error`, its issue #3942, fixed in 23.10) —, or
//!   refusals for two different users with no success in between, mark the server failing:
//!   its roster updates take the fallback of the mode, beginning with the refused one, for
//!   [`PRIVILEGE_RETRY`] or until the component connects again; then the privilege is tried
//!   again. Any other refusal ends only its own update. An IQ unanswered after [`IQ_TIMEOUT`]
//!   is given up. Answers are taken by id and only from the user's bare JID (RFC 6120
//!   §8.1.2.1); a get result without a roster is a refusal.
//! - **Roster pushes** (RFC 6121 §2.1.6) the server sends the component as an entity with
//!   roster access are acknowledged with an empty result.
//! - At most one roster operation per (user, contact) is under way; a newer wish waits for it
//!   and replaces an older waiting one. At most [`MAX_IN_FLIGHT`] operations are under way in
//!   all.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;

use super::{Fact, Output, common};
use crate::core::address::AddressBook;
use crate::core::errors::Condition;
use crate::xmpp::gateway::result_reply;
use crate::xmpp::{NS_COMPONENT, attr};

/// XEP-0356's namespaces: version 2 (Prosody's mod_privilege), version 1 (ejabberd 23.01).
pub const NS_PRIVILEGE: [&str; 2] = ["urn:xmpp:privilege:2", "urn:xmpp:privilege:1"];
/// RFC 6121 rosters.
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// XEP-0144.
pub const NS_ROSTERX: &str = "http://jabber.org/protocol/rosterx";
/// How long a roster IQ waits for its answer.
pub const IQ_TIMEOUT: Duration = Duration::from_secs(30);
/// Roster operations under way at most, and wishes waiting for a grant at most, and renames
/// waiting for their turn at most; a wish beyond is dropped with a warning.
pub const MAX_IN_FLIGHT: usize = 4096;
/// How long after the component's stream came up a wish waits for the server's privilege
/// message (servers send it right after the handshake) before the bridge takes it that none
/// comes.
pub const GRANT_GRACE: Duration = Duration::from_secs(5);
/// At most one rename of a roster item per this long (a name that flaps does not make the
/// user's clients redraw the roster on every change).
pub const RENAME_DEBOUNCE: Duration = Duration::from_secs(5 * 60);
/// How long a server whose privileged roster access failed gets the fallback before the
/// privilege is tried again.
pub const PRIVILEGE_RETRY: Duration = Duration::from_secs(3600);
/// Roster items whose names the bridge remembers writing, at most (the least recently written
/// are forgotten: their next rename compares with the contact's previous name alone).
pub const MAX_WRITTEN: usize = 100_000;
/// Names remembered per roster item, the latest ones.
const WRITTEN_PER_ITEM: usize = 4;
/// Earlier names a waiting wish remembers, the latest ones.
const KNOWN_PER_WISH: usize = 8;
/// Recent renames remembered for the debounce, at most (the oldest are forgotten).
const MAX_RENAMED: usize = 65_536;

/// How the bridge fills rosters (`xmpp.roster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RosterMode {
    /// XEP-0356 roster sets where the server granted roster access, XEP-0144 suggestions to
    /// the users of the others.
    #[default]
    Auto,
    /// XEP-0356 only: nothing where the server granted no roster access.
    Privilege,
    /// XEP-0144 suggestions only.
    RosterX,
    /// Rosters are left to the users.
    None,
}

/// Roster access the server granted a component for the users of one of its domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Access {
    get: bool,
    set: bool,
}

impl Access {
    fn parse(type_: &str) -> Access {
        match type_ {
            "both" => Access {
                get: true,
                set: true,
            },
            "get" => Access {
                get: true,
                set: false,
            },
            "set" => Access {
                get: false,
                set: true,
            },
            _ => Access::default(),
        }
    }

    fn name(self) -> &'static str {
        match (self.get, self.set) {
            (true, true) => "both",
            (true, false) => "get",
            (false, true) => "set",
            (false, false) => "none",
        }
    }

    /// Whether the bridge can write rosters with it: it reads an item before it sets it.
    fn usable(self) -> bool {
        self.get && self.set
    }
}

/// What the user's roster should show.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wish {
    name: Option<String>,
    /// Names the contact had before (the latest [`KNOWN_PER_WISH`]): a roster item showing one
    /// of them was named by the bridge.
    known: Vec<String>,
    approved: bool,
}

impl Wish {
    /// `newer` in place of `self`, keeping what both knew and an approval either carried.
    fn then(self, newer: Wish) -> Wish {
        let mut known = self.known;
        for n in newer.known {
            if !known.contains(&n) {
                known.push(n);
            }
        }
        let excess = known.len().saturating_sub(KNOWN_PER_WISH);
        known.drain(..excess);
        Wish {
            name: newer.name,
            known,
            approved: self.approved || newer.approved,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Get,
    Set,
}

/// A roster IQ under way.
#[derive(Debug)]
struct InFlight {
    local: BareJid,
    contact: BareJid,
    wish: Wish,
    step: Step,
}

type Pair = (BareJid, BareJid);
/// (component domain, server domain).
type Servers = (String, String);

/// A component domain's stream, as the grant decision needs it.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Lost, not back yet: grants are unknown.
    Down,
    /// Up since `since`; `settled` once [`GRANT_GRACE`] has passed.
    Up { since: Instant, settled: bool },
}

/// Names the bridge wrote (or tried to write) into roster items, by (user, contact), bounded.
#[derive(Debug, Default)]
struct Written {
    names: HashMap<Pair, (Vec<String>, u64)>,
    order: VecDeque<(u64, Pair)>,
    seq: u64,
}

impl Written {
    fn record(&mut self, pair: &Pair, name: &str) {
        self.seq += 1;
        let seq = self.seq;
        let entry = self
            .names
            .entry(pair.clone())
            .or_insert_with(|| (Vec::new(), 0));
        entry.0.retain(|n| n != name);
        entry.0.push(name.to_owned());
        let excess = entry.0.len().saturating_sub(WRITTEN_PER_ITEM);
        entry.0.drain(..excess);
        entry.1 = seq;
        self.order.push_back((seq, pair.clone()));
        while self.names.len() > MAX_WRITTEN {
            let Some((seq, pair)) = self.order.pop_front() else {
                break;
            };
            if self.names.get(&pair).is_some_and(|(_, s)| *s == seq) {
                self.names.remove(&pair);
            }
        }
        if self.order.len() > 2 * self.names.len() + 1024 {
            let names = &self.names;
            self.order
                .retain(|(seq, pair)| names.get(pair).is_some_and(|(_, s)| s == seq));
        }
    }

    fn contains(&self, pair: &Pair, name: &str) -> bool {
        self.names
            .get(pair)
            .is_some_and(|(names, _)| names.iter().any(|n| n == name))
    }
}

/// The roster engine. See the module documentation.
pub struct RosterEngine {
    mode: RosterMode,
    book: AddressBook,
    /// (component domain, server domain) → access, from the server's last privilege message.
    grants: HashMap<Servers, Access>,
    /// Component domains' streams, as far as the engine saw them (none yet: up since the first
    /// wish that asked).
    links: HashMap<String, Link>,
    /// Component domains a missing grant was logged for (once each).
    warned: HashSet<String>,
    /// Servers whose privileged roster access failed → until when they get the fallback.
    failing: HashMap<Servers, Instant>,
    /// Users a server refused a roster IQ for since its last success (two different ones make
    /// it failing).
    refused: HashMap<Servers, BareJid>,
    in_flight: HashMap<String, InFlight>,
    /// IQ ids by deadline (all wait [`IQ_TIMEOUT`], so in order).
    deadlines: VecDeque<(Instant, String)>,
    /// Pairs with an operation under way → the wish that waits for it.
    busy: HashMap<Pair, Option<Wish>>,
    /// Wishes waiting for their server's grant (see [`Link`]).
    parked: HashMap<Pair, Wish>,
    /// Renames waiting for [`RENAME_DEBOUNCE`]: the wish and when it goes; the heap holds the
    /// times (an entry whose time the map no longer holds is stale).
    delayed: HashMap<Pair, (Instant, Wish)>,
    delay_heap: BinaryHeap<Reverse<(Instant, Pair)>>,
    /// When each pair's last rename went, oldest first.
    renamed: HashMap<Pair, Instant>,
    renamed_order: VecDeque<(Instant, Pair)>,
    written: Written,
    /// Wishes dropped, logged at most once a minute per cause.
    dropped: [DropLog; 4],
    prefix: String,
    next: u64,
}

/// Why a wish was dropped: a limit, or its IQ unanswered ([`RosterEngine::dropped`]).
#[derive(Clone, Copy)]
enum Dropped {
    Rename = 0,
    Parked = 1,
    InFlight = 2,
    Unanswered = 3,
}

impl Dropped {
    fn what(self) -> &'static str {
        match self {
            Dropped::Rename => "roster rename dropped: too many waiting",
            Dropped::Parked => {
                "roster update dropped: too many waiting for the XMPP server's privileges"
            }
            Dropped::InFlight => "roster update dropped: too many under way",
            Dropped::Unanswered => "no answer to a roster IQ (XEP-0356); given up",
        }
    }
}

/// Drops for one cause: the first is logged at once, later ones at most once a minute with
/// how many there were (a burst of approvals, or a server that stopped answering, must not
/// flood the log).
#[derive(Debug, Default)]
struct DropLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl RosterEngine {
    /// `seed` makes this process's IQ ids its own (answers to an earlier process's IQs are
    /// not taken for ours).
    pub fn new(mode: RosterMode, book: AddressBook, seed: u64) -> RosterEngine {
        RosterEngine {
            mode,
            book,
            grants: HashMap::new(),
            links: HashMap::new(),
            warned: HashSet::new(),
            failing: HashMap::new(),
            refused: HashMap::new(),
            in_flight: HashMap::new(),
            deadlines: VecDeque::new(),
            busy: HashMap::new(),
            parked: HashMap::new(),
            delayed: HashMap::new(),
            delay_heap: BinaryHeap::new(),
            renamed: HashMap::new(),
            renamed_order: VecDeque::new(),
            written: Written::default(),
            dropped: Default::default(),
            prefix: format!("roster-{:08x}-", seed & 0xffff_ffff),
            next: 0,
        }
    }

    /// The roster access granted to `component` for the users of `server`, as XEP-0356 names
    /// it (`none`, `get`, `set`, `both`).
    pub fn access(&self, component: &str, server: &str) -> &'static str {
        self.grants
            .get(&(component.to_owned(), server.to_owned()))
            .copied()
            .unwrap_or_default()
            .name()
    }

    /// The local server domain that sent `el` (a domain JID itself: no user, no resource).
    fn sending_server(&self, el: &Element) -> Option<String> {
        let from = Jid::new(el.attr("from")?).ok()?;
        let server = from.domain().as_str();
        (from.node().is_none() && from.resource().is_none() && self.book.is_local_domain(server))
            .then(|| server.to_owned())
    }

    /// The server's privilege message: the roster access it grants; the wishes that waited
    /// for it are decided.
    fn privileges(&mut self, now: Instant, message: &Element) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(server) = self.sending_server(message) else {
            return out;
        };
        let Some(to) = message.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return out;
        };
        let component = to.domain().as_str().to_owned();
        if !self.book.is_component_domain(&component) {
            return out;
        }
        let Some(privilege) = NS_PRIVILEGE
            .iter()
            .find_map(|ns| message.get_child("privilege", *ns))
        else {
            return out;
        };
        let access = privilege
            .children()
            .filter(|p| p.name() == "perm" && p.attr("access") == Some("roster"))
            .map(|p| Access::parse(p.attr("type").unwrap_or("")))
            .next()
            .unwrap_or_default();
        info!(
            component,
            server,
            roster = access.name(),
            namespace = %privilege.ns(),
            "XEP-0356 privileges received"
        );
        if access.set && !access.get && self.privileged_mode() {
            warn!(
                component,
                server,
                "the XMPP server grants this component roster access \"set\" without \"get\": the bridge reads an item before it writes it (a blind roster set would overwrite the user's own names and groups and bring back removed contacts), so it takes the fallback of xmpp.roster; grant \"both\""
            );
        }
        self.warned.remove(&component);
        let servers = (component.clone(), server);
        self.grants.insert(servers.clone(), access);
        self.links.entry(component).or_insert(Link::Up {
            since: now,
            settled: true,
        });
        out.extend(self.release_parked(now, |(l, c)| {
            c.domain().as_str() == servers.0 && l.domain().as_str() == servers.1
        }));
        out
    }

    fn privileged_mode(&self) -> bool {
        matches!(self.mode, RosterMode::Auto | RosterMode::Privilege)
    }

    fn id(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }

    /// A wish from a fact: a rename waits for its pair's debounce, then it is dispatched.
    fn wish(&mut self, now: Instant, local: BareJid, contact: BareJid, wish: Wish) -> Vec<Output> {
        if self.mode == RosterMode::None || (wish.name.is_none() && !wish.approved) {
            return Vec::new();
        }
        self.prune_renamed(now);
        let pair = (local, contact);
        if wish.approved {
            // The approval carries the latest name: a rename that waits is part of it.
            let wish = match self.delayed.remove(&pair) {
                Some((_, older)) => older.then(wish),
                None => wish,
            };
            return self.dispatch(now, pair.0, pair.1, wish);
        }
        if let Some((_, waiting)) = self.delayed.get_mut(&pair) {
            *waiting = waiting.clone().then(wish);
            return Vec::new();
        }
        if let Some(at) = self.renamed.get(&pair).map(|t| *t + RENAME_DEBOUNCE) {
            if at > now {
                if self.delayed.len() >= MAX_IN_FLIGHT {
                    self.drop_wish(now, Dropped::Rename, &pair.0, &pair.1);
                    return Vec::new();
                }
                debug!(user = %pair.0, contact = %pair.1, "roster rename waits for the last one's period");
                self.delay_heap.push(Reverse((at, pair.clone())));
                self.delayed.insert(pair, (at, wish));
                return Vec::new();
            }
        }
        self.renamed.insert(pair.clone(), now);
        self.renamed_order.push_back((now, pair.clone()));
        self.dispatch(now, pair.0, pair.1, wish)
    }

    /// Forgets the renames older than the debounce period (and the oldest beyond
    /// [`MAX_RENAMED`]).
    fn prune_renamed(&mut self, now: Instant) {
        while let Some((at, _)) = self.renamed_order.front() {
            let old = *at + RENAME_DEBOUNCE <= now || self.renamed_order.len() > MAX_RENAMED;
            if !old {
                break;
            }
            if let Some((at, pair)) = self.renamed_order.pop_front() {
                if self.renamed.get(&pair) == Some(&at) {
                    self.renamed.remove(&pair);
                }
            }
        }
    }

    /// The access usable for `servers` now: `None` while undecided (the grant may still come).
    fn usable_access(&mut self, now: Instant, servers: &Servers) -> Option<bool> {
        if let Some(until) = self.failing.get(servers).copied() {
            if until > now {
                return Some(false);
            }
            self.failing.remove(servers);
            info!(
                component = %servers.0,
                server = %servers.1,
                "privileged roster access tried again"
            );
        }
        if let Some(access) = self.grants.get(servers) {
            return Some(access.usable());
        }
        match self.links.entry(servers.0.clone()).or_insert(Link::Up {
            since: now,
            settled: false,
        }) {
            Link::Down | Link::Up { settled: false, .. } => None,
            Link::Up { settled: true, .. } => Some(false),
        }
    }

    /// A wish past the debounce: the privilege, the fallback, or a wait for the grant.
    /// Dispatches the parked wishes whose pair `which` picks (their grant came, or its wait
    /// ended).
    fn release_parked(&mut self, now: Instant, which: impl Fn(&Pair) -> bool) -> Vec<Output> {
        let waiting: Vec<Pair> = self.parked.keys().filter(|p| which(p)).cloned().collect();
        let mut out = Vec::new();
        for pair in waiting {
            if let Some(wish) = self.parked.remove(&pair) {
                out.extend(self.dispatch(now, pair.0, pair.1, wish));
            }
        }
        out
    }

    /// A wish dropped for `why`: logged at once if none was in the last minute, else counted
    /// into the next log line.
    fn drop_wish(&mut self, now: Instant, why: Dropped, user: &BareJid, contact: &BareJid) {
        let log = &mut self.dropped[why as usize];
        log.unlogged += 1;
        if log
            .logged_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        warn!(%user, %contact, dropped = log.unlogged, "{}", why.what());
        log.logged_at = Some(now);
        log.unlogged = 0;
    }

    fn dispatch(
        &mut self,
        now: Instant,
        local: BareJid,
        contact: BareJid,
        wish: Wish,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let component = contact.domain().to_string();
        let servers = (component.clone(), local.domain().to_string());
        let privileged = if self.privileged_mode() {
            match self.usable_access(now, &servers) {
                Some(p) => p,
                None => {
                    let pair = (local, contact);
                    if let Some(waiting) = self.parked.remove(&pair) {
                        self.parked.insert(pair, waiting.then(wish));
                    } else if self.parked.len() >= MAX_IN_FLIGHT {
                        self.drop_wish(now, Dropped::Parked, &pair.0, &pair.1);
                    } else {
                        self.parked.insert(pair, wish);
                    }
                    return out;
                }
            }
        } else {
            false
        };
        if privileged {
            let pair = (local.clone(), contact.clone());
            if let Some(waiting) = self.busy.get_mut(&pair) {
                // The newer wish wins; an approval among them still adds the contact.
                *waiting = Some(match waiting.take() {
                    Some(w) => w.then(wish),
                    None => wish,
                });
                return out;
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.drop_wish(now, Dropped::InFlight, &local, &contact);
                return out;
            }
            self.busy.insert(pair, None);
            self.send(now, local, contact, wish, Step::Get, Vec::new(), &mut out);
            return out;
        }
        match self.mode {
            RosterMode::Auto | RosterMode::RosterX => {
                out.push(Output::Stanza(rosterx(&local, &contact, &wish)));
            }
            RosterMode::Privilege => {
                if self.warned.insert(component.clone()) {
                    warn!(
                        component = %component,
                        server = %local.domain(),
                        "xmpp.roster = \"privilege\", but this component has no working roster access (\"both\") on the XMPP server (XEP-0356): rosters are not filled"
                    );
                }
            }
            RosterMode::None => {}
        }
        out
    }

    /// Sends the roster IQ of `step` (a set keeps `groups`).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: Instant,
        local: BareJid,
        contact: BareJid,
        wish: Wish,
        step: Step,
        groups: Vec<String>,
        out: &mut Vec<Output>,
    ) {
        let id = self.id();
        let query = match step {
            Step::Get => Element::builder("query", NS_ROSTER).build(),
            Step::Set => {
                let mut item = attr(Element::builder("item", NS_ROSTER), "jid", contact.as_str());
                if let Some(name) = &wish.name {
                    item = attr(item, "name", name);
                    // Remembered as the bridge's before the answer: a set refused or
                    // unanswered may still have been applied.
                    self.written.record(&(local.clone(), contact.clone()), name);
                }
                for g in &groups {
                    item = item.append(Element::builder("group", NS_ROSTER).append(g.as_str()));
                }
                Element::builder("query", NS_ROSTER).append(item).build()
            }
        };
        let mut iq = Element::builder("iq", NS_COMPONENT);
        for (name, value) in [
            ("type", if step == Step::Get { "get" } else { "set" }),
            ("id", id.as_str()),
            ("from", contact.domain().as_str()),
            ("to", local.as_str()),
        ] {
            iq = attr(iq, name, value);
        }
        let iq = iq.append(query).build();
        debug!(user = %local, contact = %contact, ?step, name = ?wish.name, "roster IQ (XEP-0356)");
        out.push(Output::Stanza(iq));
        self.deadlines.push_back((now + IQ_TIMEOUT, id.clone()));
        self.in_flight.insert(
            id,
            InFlight {
                local,
                contact,
                wish,
                step,
            },
        );
    }

    /// Whether `iq` answers one of our roster IQs: its id, from the user's bare JID.
    fn is_answer(&self, iq: &Element) -> bool {
        let Some(op) = iq.attr("id").and_then(|id| self.in_flight.get(id)) else {
            return false;
        };
        bare_jid(iq.attr("from")).is_some_and(|from| from == op.local)
    }

    /// An answer to one of our roster IQs.
    fn answer(&mut self, now: Instant, iq: &Element) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.is_answer(iq) {
            return out;
        }
        let Some(op) = iq.attr("id").and_then(|id| self.in_flight.remove(id)) else {
            return out;
        };
        let InFlight {
            local,
            contact,
            wish,
            step,
        } = op;
        let roster = iq.get_child("query", NS_ROSTER);
        let refusal = if iq.attr("type") == Some("error") {
            let payloads: Vec<Element> = iq.children().cloned().collect();
            let condition = common::error_of(&payloads).map(|(c, _)| c);
            let text = iq
                .children()
                .find(|c| c.name() == "error")
                .and_then(|e| e.children().find(|c| c.name() == "text"))
                .map(Element::text)
                .unwrap_or_default();
            Some((condition, text))
        } else if step == Step::Get && roster.is_none() {
            // RFC 6121 §2.1.3: the result carries the roster (no versioning was asked for).
            Some((
                None,
                "a roster get result without <query xmlns='jabber:iq:roster'>".to_owned(),
            ))
        } else {
            None
        };
        let servers = (contact.domain().to_string(), local.domain().to_string());
        if let Some((condition, text)) = refusal {
            let name = condition.map_or("undefined-condition", Condition::as_str);
            warn!(
                user = %local,
                contact = %contact,
                ?step,
                condition = %name,
                %text,
                "the XMPP server refused a roster IQ (XEP-0356); not retried"
            );
            if self.refusal(now, &servers, &local, condition) {
                // This wish takes the fallback at once.
                let approved = wish.approved;
                out.extend(self.dispatch(now, local.clone(), contact.clone(), wish));
                self.done(now, (local, contact), approved, &mut out);
                return out;
            }
            self.done(now, (local, contact), wish.approved, &mut out);
            return out;
        }
        self.refused.remove(&servers);
        match step {
            Step::Set => {
                info!(user = %local, contact = %contact, name = ?wish.name, "roster item written (XEP-0356)");
                self.done(now, (local, contact), wish.approved, &mut out);
            }
            Step::Get => {
                let item = roster.into_iter().flat_map(|q| q.children()).find(|i| {
                    i.name() == "item"
                        && i.attr("jid")
                            .and_then(|j| BareJid::new(j).ok())
                            .is_some_and(|j| j == contact)
                });
                let pair = (local.clone(), contact.clone());
                let write = match item {
                    // Added on approval; a rename does not bring back a contact the user
                    // removed.
                    None if wish.approved => Some(Vec::new()),
                    None => None,
                    Some(item) => {
                        let current = item.attr("name").filter(|n| !n.is_empty());
                        let groups: Vec<String> = item
                            .children()
                            .filter(|g| g.name() == "group")
                            .map(Element::text)
                            .collect();
                        let ours = match (current, &wish.name) {
                            (_, None) => false,
                            (Some(c), Some(n)) if c == n => false,
                            (None, Some(_)) => true,
                            (Some(c), Some(_)) => {
                                self.written.contains(&pair, c)
                                    || wish.known.iter().any(|k| k == c)
                                    || self.placeholder(c, &contact)
                            }
                        };
                        if !ours && current.is_some() && current != wish.name.as_deref() {
                            debug!(user = %local, contact = %contact, "roster name given by the user kept");
                        }
                        ours.then_some(groups)
                    }
                };
                match write {
                    Some(groups) => {
                        self.send(now, local, contact, wish, Step::Set, groups, &mut out)
                    }
                    None => self.done(now, pair, wish.approved, &mut out),
                }
            }
        }
        out
    }

    /// A refusal from `servers` for `user`: whether it makes the server failing (see the
    /// module documentation).
    fn refusal(
        &mut self,
        now: Instant,
        servers: &Servers,
        user: &BareJid,
        condition: Option<Condition>,
    ) -> bool {
        let server_level = matches!(
            condition,
            Some(
                Condition::InternalServerError
                    | Condition::FeatureNotImplemented
                    | Condition::Forbidden
                    | Condition::NotAllowed
            )
        );
        let why = if server_level {
            "a refusal that concerns the server, not the user"
        } else {
            match self.refused.get(servers) {
                Some(other) if other != user => "refusals for two different users",
                _ => {
                    self.refused.insert(servers.clone(), user.clone());
                    return false;
                }
            }
        };
        self.refused.remove(servers);
        if self
            .failing
            .insert(servers.clone(), now + PRIVILEGE_RETRY)
            .is_none()
        {
            warn!(
                component = %servers.0,
                server = %servers.1,
                why,
                retry_secs = PRIVILEGE_RETRY.as_secs(),
                "privileged roster access does not work on this XMPP server; roster updates fall back (xmpp.roster) until the privilege is tried again or the component connects again"
            );
        }
        true
    }

    /// Whether a roster name is only a stand-in for the contact's address: the JID, its local
    /// part, the LCS address with or without `sip:`.
    fn placeholder(&self, name: &str, contact: &BareJid) -> bool {
        let aor = self
            .book
            .jid_to_sip(&Jid::from(contact.clone()))
            .map(|a| a.aor().to_uri())
            .unwrap_or_default();
        let lower = name.trim().to_lowercase();
        lower == contact.as_str().to_lowercase()
            || contact
                .node()
                .is_some_and(|n| lower == n.as_str().to_lowercase())
            || (!aor.is_empty()
                && (lower == aor.to_lowercase()
                    || Some(lower.as_str()) == aor.to_lowercase().strip_prefix("sip:")))
    }

    /// The operation on `pair` is over: the wish that waited for it goes next (an approval
    /// the ended one carried goes with it: adding a contact that is there already changes
    /// nothing).
    fn done(&mut self, now: Instant, pair: Pair, approved: bool, out: &mut Vec<Output>) {
        if let Some(Some(mut wish)) = self.busy.remove(&pair) {
            wish.approved |= approved;
            let (local, contact) = pair;
            out.extend(self.dispatch(now, local, contact, wish));
        }
    }
}

/// A XEP-0144 suggestion to the local user.
fn rosterx(local: &BareJid, contact: &BareJid, wish: &Wish) -> Element {
    let action = if wish.approved { "add" } else { "modify" };
    let mut item = attr(Element::builder("item", NS_ROSTERX), "action", action);
    item = attr(item, "jid", contact.as_str());
    if let Some(name) = &wish.name {
        item = attr(item, "name", name);
    }
    let message = attr(
        Element::builder("message", NS_COMPONENT),
        "from",
        contact.domain().as_str(),
    );
    attr(message, "to", local.as_str())
        .append(Element::builder("x", NS_ROSTERX).append(item))
        .build()
}

/// An attribute that is a bare JID (no resource).
fn bare_jid(value: Option<&str>) -> Option<BareJid> {
    Jid::new(value?)
        .ok()
        .filter(|j| j.resource().is_none())
        .map(|j| j.to_bare())
}

fn has_privilege(el: &Element) -> bool {
    NS_PRIVILEGE
        .iter()
        .any(|ns| el.get_child("privilege", *ns).is_some())
}

impl RosterEngine {
    /// Whether a roster push (RFC 6121 §2.1.6) is for the component: a set with a roster
    /// query from a local user's bare JID (or a local server domain) to a component domain.
    fn is_push(&self, el: &Element) -> bool {
        let from_local = bare_jid(el.attr("from"))
            .is_some_and(|f| self.book.is_local_domain(f.domain().as_str()));
        let to_component = el
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .is_some_and(|t| {
                t.node().is_none() && self.book.is_component_domain(t.domain().as_str())
            });
        el.attr("type") == Some("set")
            && el.get_child("query", NS_ROSTER).is_some()
            && from_local
            && to_component
    }

    /// Whether a stanza is this engine's: the server's privilege message, an answer to one of
    /// its roster IQs, a roster push.
    pub fn takes_stanza(&self, el: &Element) -> bool {
        match el.name() {
            "message" => has_privilege(el) && self.sending_server(el).is_some(),
            "iq" => match el.attr("type") {
                Some("result" | "error") => self.is_answer(el),
                Some("set") => self.is_push(el),
                _ => false,
            },
            _ => false,
        }
    }

    /// A stanza [`RosterEngine::takes_stanza`] took.
    pub fn on_stanza(&mut self, now: Instant, el: &Element) -> Vec<Output> {
        match (el.name(), el.attr("type")) {
            ("message", _) => self.privileges(now, el),
            ("iq", Some("set")) if self.is_push(el) => {
                // The component keeps no roster of its own: acknowledged, nothing else.
                vec![Output::Stanza(result_reply(el, None))]
            }
            _ => self.answer(now, el),
        }
    }

    /// A [`Fact::Roster`]: what the user's roster should show.
    pub fn on_fact(&mut self, now: Instant, fact: Fact) -> Vec<Output> {
        match fact {
            Fact::Roster {
                local,
                contact,
                name,
                previous,
                approved,
            } => self.wish(
                now,
                local,
                contact,
                Wish {
                    name,
                    known: previous.into_iter().collect(),
                    approved,
                },
            ),
            Fact::Name { .. } | Fact::EndSubscription { .. } | Fact::AdminDone { .. } => Vec::new(),
        }
    }

    /// The stream of component `domain` came back after a loss: its grants come again in the
    /// server's next privilege message, or, after [`GRANT_GRACE`], not at all.
    pub fn link_restored(&mut self, now: Instant, domain: &str) {
        self.links.insert(
            domain.to_owned(),
            Link::Up {
                since: now,
                settled: false,
            },
        );
    }

    /// The stream of component `domain` was lost: its grants go with it (the server advertises
    /// them again when the component connects again), and so does a failing mark.
    pub fn link_lost(&mut self, domain: &str) {
        self.grants.retain(|(component, _), _| component != domain);
        self.failing.retain(|(component, _), _| component != domain);
        self.refused.retain(|(component, _), _| component != domain);
        self.links.insert(domain.to_owned(), Link::Down);
    }

    /// When the grace period of a component domain with wishes waiting for it ends.
    fn grace_deadline(&self) -> Option<Instant> {
        if self.parked.is_empty() {
            return None;
        }
        self.links
            .values()
            .filter_map(|l| match l {
                Link::Up {
                    since,
                    settled: false,
                } => Some(*since + GRANT_GRACE),
                _ => None,
            })
            .min()
    }

    /// The engine's next deadline: a roster IQ given up, a rename's turn, a grace period's end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.deadlines.front().map(|(at, _)| *at),
            self.delay_heap.peek().map(|Reverse((at, _))| *at),
            self.grace_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due at `now`: roster IQs unanswered given up, renames whose turn came, wishes
    /// whose grace period ended without a grant.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            let Some((_, id)) = self.deadlines.pop_front() else {
                break;
            };
            if let Some(op) = self.in_flight.remove(&id) {
                self.drop_wish(now, Dropped::Unanswered, &op.local, &op.contact);
                self.done(now, (op.local, op.contact), op.wish.approved, &mut out);
            }
        }
        crate::compact::map(&mut self.in_flight);
        self.prune_renamed(now);
        while let Some(Reverse((at, _))) = self.delay_heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, pair))) = self.delay_heap.pop() else {
                break;
            };
            if self.delayed.get(&pair).is_some_and(|(due, _)| *due == at) {
                if let Some((_, wish)) = self.delayed.remove(&pair) {
                    self.renamed.insert(pair.clone(), now);
                    self.renamed_order.push_back((now, pair.clone()));
                    out.extend(self.dispatch(now, pair.0, pair.1, wish));
                }
            }
        }
        let mut ended = Vec::new();
        for (domain, link) in &mut self.links {
            if let Link::Up { since, settled } = link {
                if !*settled && *since + GRANT_GRACE <= now {
                    *settled = true;
                    ended.push(domain.clone());
                }
            }
        }
        if !ended.is_empty() {
            out.extend(
                self.release_parked(now, |(_, c)| ended.iter().any(|d| d == c.domain().as_str())),
            );
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)]
mod tests;
