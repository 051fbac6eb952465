//! Rosters (docs/mapping.md §6): LCS contacts put into local users' rosters, with their
//! names, when a subscription between them is approved on either side, and the name kept
//! current; sans-IO like the other engines.
//!
//! - **XEP-0356 (Privileged Entity).** The XMPP server tells the component which privileges it
//!   has with a `<message>` from the server's domain carrying `<privilege/>` (namespace
//!   `urn:xmpp:privilege:2` from Prosody's mod_privilege, `urn:xmpp:privilege:1` from
//!   ejabberd 23.01: both are read) right after the component connects; a stream lost takes
//!   them away until the next message. With roster `set` (or `both`) access for a user's
//!   domain, the bridge writes the roster item itself: an `<iq type='set'>` from the component
//!   domain to the user's bare JID with `jabber:iq:roster` (RFC 6121 §2.3) — after reading the
//!   roster first when it also has `get` access, because a roster set replaces the item's
//!   groups and name: the bridge keeps the user's groups, adds the contact when it is missing
//!   at an approval (a rename does not bring back a contact the user removed), and writes the
//!   name only over no name, a placeholder (the JID, the LCS address) or the name it wrote
//!   before; a name the user gave the contact is left alone.
//! - **XEP-0144 (Roster Item Exchange).** Without the privilege, a suggestion to the user:
//!   `<message>` with `<x xmlns='http://jabber.org/protocol/rosterx'>`, `action='add'` with
//!   the name on approval, `action='modify'` when the name changes.
//! - `xmpp.roster` ([`RosterMode`]) picks: `auto` (the privilege where granted, else XEP-0144),
//!   `privilege` (only the privilege), `rosterx` (only XEP-0144), `none`.
//!
//! What triggers it are the presence engine's [`Fact::Roster`]s. An error answer to a roster
//! IQ is logged with its condition and text and never retried. A refused roster set (or a
//! refused get not marked `wait`) means this server grants the access but cannot use it —
//! ejabberd 23.01 answers every privileged roster set with `internal-server-error` (its issue
//! #3942, fixed in 23.10) —, so until the component connects again the roster updates for
//! that server take the fallback of the mode, beginning with the refused one; a refused get
//! marked `wait` only ends its own update. An IQ unanswered after [`IQ_TIMEOUT`] is given up. At most one roster
//! operation per (user, contact) is under way; a newer wish waits for it and replaces an
//! older waiting one. At most [`MAX_IN_FLIGHT`] operations are under way in all.
//!
//! [`NameBook`] keeps the last known display name of LCS contacts for the vCard answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::{Element, ElementBuilder};

use super::{Fact, Output, common};
use crate::core::address::AddressBook;
use crate::xmpp::NS_COMPONENT;

/// XEP-0356's namespaces: version 2 (Prosody's mod_privilege), version 1 (ejabberd 23.01).
pub const NS_PRIVILEGE: [&str; 2] = ["urn:xmpp:privilege:2", "urn:xmpp:privilege:1"];
/// RFC 6121 rosters.
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// XEP-0144.
pub const NS_ROSTERX: &str = "http://jabber.org/protocol/rosterx";
/// How long a roster IQ waits for its answer.
pub const IQ_TIMEOUT: Duration = Duration::from_secs(30);
/// Roster operations under way at most; a wish beyond is dropped with a warning.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Display names [`NameBook`] keeps at most (the least recently learned go first).
pub const MAX_KNOWN_NAMES: usize = 100_000;

/// How the bridge fills rosters (`xmpp.roster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RosterMode {
    /// XEP-0356 roster sets where the server granted roster write access, XEP-0144
    /// suggestions to the users of the others.
    #[default]
    Auto,
    /// XEP-0356 only: nothing where the server granted no roster write access.
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
}

/// What the user's roster should show.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wish {
    name: Option<String>,
    previous: Option<String>,
    approved: bool,
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

/// The roster engine. See the module documentation.
pub struct RosterEngine {
    mode: RosterMode,
    book: AddressBook,
    /// (component domain, server domain) → access.
    grants: HashMap<(String, String), Access>,
    /// Component domains a missing grant was logged for (once each).
    warned: HashSet<String>,
    /// (component domain, server domain) whose server refused a roster set although it
    /// granted the access (ejabberd before 23.10 cannot write them, its issue #3942): roster
    /// updates fall back as if nothing were granted until the component connects again.
    failing: HashSet<(String, String)>,
    in_flight: HashMap<String, InFlight>,
    /// IQ ids by deadline (all wait [`IQ_TIMEOUT`], so in order).
    deadlines: VecDeque<(Instant, String)>,
    /// Pairs with an operation under way → the wish that waits for it.
    busy: HashMap<Pair, Option<Wish>>,
    prefix: String,
    next: u64,
}

impl RosterEngine {
    /// `seed` makes this process's IQ ids its own (answers to an earlier process's IQs are
    /// not taken for ours).
    pub fn new(mode: RosterMode, book: AddressBook, seed: u64) -> RosterEngine {
        RosterEngine {
            mode,
            book,
            grants: HashMap::new(),
            warned: HashSet::new(),
            failing: HashSet::new(),
            in_flight: HashMap::new(),
            deadlines: VecDeque::new(),
            busy: HashMap::new(),
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

    /// The server's privilege message: the roster access it grants.
    fn privileges(&mut self, message: &Element) {
        let (Some(from), Some(to)) = (message.attr("from"), message.attr("to")) else {
            return;
        };
        let (Ok(from), Ok(to)) = (Jid::new(from), Jid::new(to)) else {
            return;
        };
        // Only the server itself speaks for its domain (a user could send anything).
        let server = from.domain().as_str();
        if from.node().is_some() || from.resource().is_some() || !self.book.is_local_domain(server)
        {
            debug!(from = %from, "privilege message not from a local server domain ignored");
            return;
        }
        let component = to.domain().as_str();
        if !self.book.is_component_domain(component) {
            return;
        }
        let Some(privilege) = NS_PRIVILEGE
            .iter()
            .find_map(|ns| message.get_child("privilege", *ns))
        else {
            return;
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
        self.warned.remove(component);
        self.grants
            .insert((component.to_owned(), server.to_owned()), access);
    }

    fn id(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }

    fn wish(&mut self, now: Instant, local: BareJid, contact: BareJid, wish: Wish) -> Vec<Output> {
        let mut out = Vec::new();
        if self.mode == RosterMode::None || (wish.name.is_none() && !wish.approved) {
            return out;
        }
        let component = contact.domain().to_string();
        let pair = (component.clone(), local.domain().to_string());
        let access = match self.grants.get(&pair) {
            Some(_) if self.failing.contains(&pair) => Access::default(),
            Some(a) => *a,
            None => Access::default(),
        };
        let privileged =
            matches!(self.mode, RosterMode::Auto | RosterMode::Privilege) && access.set;
        if privileged {
            let pair = (local.clone(), contact.clone());
            if let Some(waiting) = self.busy.get_mut(&pair) {
                // The newer wish wins; an approval among them still adds the contact.
                let approved = wish.approved || waiting.as_ref().is_some_and(|w| w.approved);
                *waiting = Some(Wish { approved, ..wish });
                return out;
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                warn!(user = %local, contact = %contact, "roster update dropped: too many under way");
                return out;
            }
            self.busy.insert(pair, None);
            let step = if access.get { Step::Get } else { Step::Set };
            self.send(now, local, contact, wish, step, Vec::new(), &mut out);
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
                        "xmpp.roster = \"privilege\", but this component has no working roster write access on the XMPP server (XEP-0356): rosters are not filled"
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

    /// An answer to one of our roster IQs.
    fn answer(&mut self, now: Instant, iq: &Element) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(op) = iq.attr("id").and_then(|id| self.in_flight.remove(id)) else {
            return out;
        };
        let InFlight {
            local,
            contact,
            wish,
            step,
        } = op;
        if iq.attr("type") == Some("error") {
            let payloads: Vec<Element> = iq.children().cloned().collect();
            let error = common::error_of(&payloads);
            let wait = error.is_some_and(|(_, wait)| wait);
            let condition =
                error.map_or_else(|| "undefined-condition".to_owned(), |(c, _)| c.to_string());
            let text = iq
                .children()
                .find(|c| c.name() == "error")
                .and_then(|e| e.children().find(|c| c.name() == "text"))
                .map(Element::text)
                .unwrap_or_default();
            warn!(
                user = %local,
                contact = %contact,
                ?step,
                %condition,
                %text,
                "the XMPP server refused a roster IQ (XEP-0356); not retried"
            );
            if step == Step::Set || !wait {
                // Granted but refused — a write (ejabberd 23.01 refuses every one with a
                // `wait` internal-server-error), or a read not marked as passing: this server
                // cannot do it, so the roster is left to the fallback until the component
                // connects again; this wish takes the fallback at once.
                let pair = (contact.domain().to_string(), local.domain().to_string());
                if self.failing.insert(pair) {
                    warn!(
                        component = %contact.domain(),
                        server = %local.domain(),
                        "privileged roster access does not work on this XMPP server; roster updates fall back (xmpp.roster) until the component connects again"
                    );
                }
                let approved = wish.approved;
                out.extend(self.wish(now, local.clone(), contact.clone(), wish));
                self.done(now, (local, contact), approved, &mut out);
                return out;
            }
            self.done(now, (local, contact), wish.approved, &mut out);
            return out;
        }
        match step {
            Step::Set => {
                info!(user = %local, contact = %contact, name = ?wish.name, "roster item written (XEP-0356)");
                self.done(now, (local, contact), wish.approved, &mut out);
            }
            Step::Get => {
                let item = iq
                    .get_child("query", NS_ROSTER)
                    .into_iter()
                    .flat_map(|q| q.children())
                    .find(|i| {
                        i.name() == "item"
                            && i.attr("jid")
                                .and_then(|j| BareJid::new(j).ok())
                                .is_some_and(|j| j == contact)
                    });
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
                                wish.previous.as_deref() == Some(c) || self.placeholder(c, &contact)
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
                    None => self.done(now, (local, contact), wish.approved, &mut out),
                }
            }
        }
        out
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
            out.extend(self.wish(now, local, contact, wish));
        }
    }
}

/// An attribute without a namespace (the names used here are all valid NCNames; an invalid
/// one would be skipped, never panic).
fn attr(b: ElementBuilder, name: &str, value: &str) -> ElementBuilder {
    match minidom::rxml::NcName::try_from(name) {
        Ok(n) => b.attr(n, value),
        Err(_) => b,
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

fn has_privilege(el: &Element) -> bool {
    NS_PRIVILEGE
        .iter()
        .any(|ns| el.get_child("privilege", *ns).is_some())
}

impl RosterEngine {
    /// Whether a stanza is this engine's: the server's privilege message, or the answer to one
    /// of its roster IQs.
    pub fn takes_stanza(&self, el: &Element) -> bool {
        match el.name() {
            "message" => has_privilege(el),
            "iq" => {
                matches!(el.attr("type"), Some("result" | "error"))
                    && el
                        .attr("id")
                        .is_some_and(|id| self.in_flight.contains_key(id))
            }
            _ => false,
        }
    }

    /// A stanza [`RosterEngine::takes_stanza`] took.
    pub fn on_stanza(&mut self, now: Instant, el: &Element) -> Vec<Output> {
        if el.name() == "message" {
            self.privileges(el);
            Vec::new()
        } else {
            self.answer(now, el)
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
                    previous,
                    approved,
                },
            ),
            Fact::Name { .. } => Vec::new(),
        }
    }

    /// The stream of component `domain` was lost: its grants go with it (the server advertises
    /// them again when the component connects again).
    pub fn link_lost(&mut self, domain: &str) {
        self.grants.retain(|(component, _), _| component != domain);
        self.failing.retain(|(component, _)| component != domain);
    }

    /// When the oldest roster IQ under way is given up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Gives up the roster IQs unanswered at `now`.
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
                warn!(user = %op.local, contact = %op.contact, step = ?op.step, "no answer to a roster IQ (XEP-0356); given up");
                self.done(now, (op.local, op.contact), op.wish.approved, &mut out);
            }
        }
        crate::compact::map(&mut self.in_flight);
        out
    }
}

/// The last known display names of LCS contacts, by AOR, at most [`MAX_KNOWN_NAMES`] (the least
/// recently learned go first), for the vCard answers.
#[derive(Debug, Default)]
pub struct NameBook {
    names: HashMap<String, (String, u64)>,
    order: VecDeque<(u64, String)>,
    seq: u64,
}

impl NameBook {
    pub fn learn(&mut self, aor: &str, name: &str) {
        self.seq += 1;
        self.names
            .insert(aor.to_owned(), (name.to_owned(), self.seq));
        self.order.push_back((self.seq, aor.to_owned()));
        while self.names.len() > MAX_KNOWN_NAMES {
            let Some((seq, aor)) = self.order.pop_front() else {
                break;
            };
            if self.names.get(&aor).is_some_and(|(_, s)| *s == seq) {
                self.names.remove(&aor);
            }
        }
        if self.order.len() > 2 * MAX_KNOWN_NAMES.max(self.names.len()) {
            let names = &self.names;
            self.order
                .retain(|(seq, aor)| names.get(aor).is_some_and(|(_, s)| s == seq));
        }
    }

    pub fn get(&self, aor: &str) -> Option<&str> {
        self.names.get(aor).map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)]
mod tests;
