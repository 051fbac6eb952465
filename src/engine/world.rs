//! A test world for the whole bridge on a virtual clock: the [`Bridge`] wired to an in-memory
//! XMPP server stand-in and an in-memory LCS edge stand-in, with a [`MemStore`]. Everything that
//! crosses between them takes [`LATENCY`] of virtual time; [`World::settle`] delivers until
//! nothing is in flight, [`World::run_for`] also runs the bridge's timers over a stretch of
//! time. Nothing sleeps: a test of an hour of protocol runs in milliseconds.
//!
//! The stand-ins answer the way the real peers do, and no more:
//! - the XMPP server keeps what each local user last said (presence) and which contacts the
//!   user approved (the roster's `from` subscriptions); it sends a user's broadcast presence to
//!   each such contact, one stanza addressed to each (RFC 6121 §4.2.2, §4.4.2), a directed
//!   presence to its target alone (§4.6), and nothing but `unavailable` to a contact the user
//!   blocks (XEP-0191 §3.3) or is invisible to (XEP-0186); it sends the user's presence to a
//!   contact the user approves (§3.1.5), answers a probe from a contact with the presence of
//!   each available resource or `unavailable` (§4.3.2; nothing with `silent_probes`, as
//!   ejabberd; nothing to a blocked contact, as Prosody's mod_blocklist), and while a
//!   component's stream is down holds what the bridge
//!   sends (as the link's queue does) and loses what its users send to the component;
//! - the LCS edge answers INVITE with 200 and an SDP answer, MESSAGE/INFO/BYE/NOTIFY with 200,
//!   SUBSCRIBE with 200 and then a NOTIFY in the new dialog (`active`, the user's PIDF, or
//!   `terminated` for `Expires: 0`), as an LCS 2005 edge does for a federated partner; a
//!   MESSAGE, BYE or NOTIFY whose CSeq is not above the last one in its dialog gets 500 (RFC
//!   3261 §12.2.2), a MESSAGE or BYE in a session the edge has ended (or never had) 481. Its
//!   dialogs outlive the bridge's connections, as LCS's do.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xmpp_parsers::minidom::Element;

use super::WallClock;
use super::admin::{self, AdminEngine, Command};
use super::bridge::{Action, Bridge, Failure, Input, IqEngine, Reconfigure};
use super::im::{ImEngine, ImSettings};
use super::presence::{PresenceEngine, PresenceSettings};
use super::roster::{RosterEngine, RosterMode};
use crate::core::address::{AddressBook, AddressMode};
use crate::core::tables::Mappings;
use crate::edge::core::Route;
use crate::edge::event::EdgeEvent;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ConnId, TxEvent, TxId, TxIds};
use crate::store::{MemStore, Store, Subscription};
use crate::xmpp::gateway::GatewayInfo;

/// The SDP an LCS edge offers and answers for a session-mode IM session.
pub const SDP: &str = "v=0\r\no=- 0 0 IN IP4 192.0.2.5\r\ns=session\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=message 5060 sip null\r\n";

/// One way across, for every message in the world.
pub const LATENCY: Duration = Duration::from_millis(20);

/// The component domain, the local XMPP domain and the LCS partner's domain.
pub const COMPONENT: &str = "lcs.example.org";
pub const LOCAL: &str = "example.org";
pub const PUBLIC_FQDN: &str = "sip.example.org";
/// The administrator (`[admin] jids`).
pub const ADMIN: &str = "admin@example.org";

/// The LCS user `user@contoso.com` as a JID of the component (XEP-0106).
pub fn contact_jid(user: &str) -> String {
    format!(r"{user}\40contoso.com@{COMPONENT}")
}

/// The PIDF an LCS edge sends for a user with this activity (the profile's single tuple).
pub fn pidf(aor: &str, activity: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="{aor}"><tuple id="0"><status><basic>open</basic><ep:activities><ep:activity>{activity}</ep:activity></ep:activities></status></tuple></presence>"#
    )
}

/// [`pidf`] with an RFC 4482 display name.
pub fn pidf_named(aor: &str, activity: &str, name: &str) -> String {
    pidf(aor, activity).replace(
        "</presence>",
        &format!(r#"<ci:display-name xmlns:ci="urn:ietf:params:xml:ns:pidf:cipid">{name}</ci:display-name></presence>"#),
    )
}

/// A stanza in the component namespace.
pub fn stanza(xml: &str) -> Element {
    let el = xml.replacen(' ', " xmlns='jabber:component:accept' ", 1);
    el.parse().expect("test stanza")
}

/// A user's roster in the XMPP server stand-in: contact JID → (name, groups).
pub type Roster = BTreeMap<String, (Option<String>, Vec<String>)>;

/// The XMPP server as the component sees it.
#[derive(Default)]
pub struct XmppServer {
    /// Every stanza the bridge delivered, in order.
    pub delivered: Vec<Element>,
    /// The link's queue is full: the bridge's stanzas are refused.
    pub refuse: bool,
    /// Component domains whose stream is down, and what the link holds for them meanwhile.
    down: BTreeSet<String>,
    held: Vec<Element>,
    /// Local users with no account: the server answers a presence to them with an error
    /// (RFC 6121 §3.1.3: `item-not-found`), a chat message with `service-unavailable` (§8.5.1).
    pub no_account: BTreeSet<String>,
    /// Each local user's available resources: bare JID → full JID → the presence's content.
    presence: BTreeMap<String, BTreeMap<String, String>>,
    /// Each local user's contacts subscribed to the user's presence (approved): bare JID →
    /// the contacts' JIDs.
    pub subscribers: BTreeMap<String, BTreeSet<String>>,
    /// Contacts each local user blocks (XEP-0191): bare JID → the contacts' JIDs.
    pub blocked: BTreeMap<String, BTreeSet<String>>,
    /// Full JIDs of the resources that are invisible (XEP-0186).
    pub invisible: BTreeSet<String>,
    /// The roster access the server granted the component (XEP-0356: `none`, `get`, `set`,
    /// `both`); it answers roster IQs from the component accordingly.
    pub roster_access: &'static str,
    /// Each local user's roster: bare JID → contact → (name, groups).
    pub rosters: BTreeMap<String, Roster>,
    /// Roster IQs the server refuses with this error (type, condition), as a failing server
    /// would.
    pub roster_error: Option<(&'static str, &'static str)>,
    /// Roster sets alone the server refuses with this error.
    pub roster_set_error: Option<(&'static str, &'static str)>,
    /// A probe of a user with no available resource goes unanswered, as ejabberd 23.01 does
    /// (RFC 6121 §4.3.2 allows it); otherwise it is answered `unavailable`, as Prosody does.
    pub silent_probes: bool,
}

impl XmppServer {
    /// Whether local user `bare` blocks `contact`.
    fn blocks(&self, bare: &str, contact: &str) -> bool {
        self.blocked.get(bare).is_some_and(|b| b.contains(contact))
    }

    /// The contacts local user `bare` approved and does not block: a broadcast goes to each.
    fn unblocked_contacts(&self, bare: &str) -> Vec<String> {
        self.subscribers
            .get(bare)
            .into_iter()
            .flatten()
            .filter(|c| !self.blocks(bare, c))
            .cloned()
            .collect()
    }

    /// What the server answers a probe from `contact` for local user `bare` with, or sends
    /// the contact once it may see the user again: the presence of each available resource
    /// the contact may see (visible ones), else `unavailable` from the bare JID; nothing to a
    /// contact the user blocks.
    fn presence_for(&self, bare: &str, contact: &str) -> Vec<String> {
        if self.blocks(bare, contact) {
            return Vec::new();
        }
        let visible: Vec<String> = self
            .presence
            .get(bare)
            .into_iter()
            .flatten()
            .filter(|(full, _)| !self.invisible.contains(*full))
            .map(|(full, inner)| {
                format!("<presence from='{full}' to='{contact}'>{inner}</presence>")
            })
            .collect();
        if !visible.is_empty() {
            visible
        } else if self.silent_probes {
            Vec::new()
        } else {
            vec![format!(
                "<presence from='{bare}' to='{contact}' type='unavailable'/>"
            )]
        }
    }

    /// The delivered stanzas, serialised, addressed to this bare JID.
    pub fn to(&self, bare: &str) -> Vec<String> {
        self.delivered
            .iter()
            .filter(|e| {
                e.attr("to")
                    .is_some_and(|t| t.split('/').next() == Some(bare))
            })
            .map(String::from)
            .collect()
    }
}

/// What an LCS user's edge remembers of a dialog.
#[derive(Clone)]
struct LcsDialog {
    call_id: String,
    /// The bridge's tag and URI, and LCS's.
    bridge_tag: String,
    bridge_uri: String,
    lcs_tag: String,
    lcs_uri: String,
    cseq: u32,
    conn: ConnId,
}

/// The LCS edge and its users.
pub struct LcsEdge {
    /// Every request the bridge sent, in order.
    pub received: Vec<Message>,
    /// The bridge's answers to LCS's requests, by transaction.
    pub answers: Vec<(TxId, Message)>,
    /// ACKs the bridge sent.
    pub acks: Vec<Message>,
    /// The edge's answers to the bridge's requests: (method, status).
    pub replied: Vec<(Method, u16)>,
    /// Each LCS user's presence document (AOR → PIDF, or a Microsoft categories document)
    /// sent in NOTIFYs.
    pub documents: BTreeMap<String, String>,
    /// The edge refuses SUBSCRIBEs with a body (a server that does not take the enhanced
    /// presence offer) with `415`.
    pub refuses_bodies: bool,
    /// Dialogs by (LCS AOR, method that made them).
    dialogs: BTreeMap<(String, &'static str), LcsDialog>,
    /// Dialogs that lived on a lost connection, by the same key (for a stale request).
    lost: BTreeMap<(String, &'static str), LcsDialog>,
    /// IM sessions (INVITE dialogs) by Call-ID: the CSeq of the bridge's last request in it,
    /// and whether the session is still open.
    sessions: BTreeMap<String, (u32, bool)>,
    /// The CSeq of the bridge's last NOTIFY in each watcher dialog, by Call-ID.
    notified: BTreeMap<String, u32>,
    next_conn: ConnId,
    /// The connection to the bridge (one, as far as these tests go).
    conn: Option<ConnId>,
    seq: u32,
}

impl LcsEdge {
    fn new() -> LcsEdge {
        LcsEdge {
            received: Vec::new(),
            answers: Vec::new(),
            acks: Vec::new(),
            replied: Vec::new(),
            documents: BTreeMap::new(),
            refuses_bodies: false,
            dialogs: BTreeMap::new(),
            lost: BTreeMap::new(),
            sessions: BTreeMap::new(),
            notified: BTreeMap::new(),
            next_conn: 7,
            conn: None,
            seq: 0,
        }
    }

    /// The requests of this method the bridge sent.
    pub fn requests(&self, method: &Method) -> Vec<&Message> {
        self.received
            .iter()
            .filter(|m| m.method() == Some(method))
            .collect()
    }

    /// The statuses the bridge answered LCS requests of this method with.
    pub fn statuses(&self, method: Method) -> Vec<u16> {
        self.answers
            .iter()
            .filter(|(_, r)| r.cseq().is_ok_and(|c| c.method == method))
            .filter_map(|(_, r)| r.status())
            .collect()
    }

    fn conn(&mut self) -> ConnId {
        *self.conn.get_or_insert_with(|| {
            self.next_conn += 1;
            self.next_conn
        })
    }

    fn tag(&mut self) -> String {
        self.seq += 1;
        format!("lcs{}", self.seq)
    }
}

/// Parses a request or response written with `\n` line ends and a body.
/// A request of `method` from the LCS side in dialog `d` (its CSeq as it is), with these extra
/// header lines (`\n`-ended) and body; `branch` makes its Via branch unique beside the tag and
/// CSeq.
fn in_dialog(d: &LcsDialog, method: &str, branch: &str, extra: &str, body: &str) -> Message {
    sip(
        &format!(
            "{method} {} SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{branch}{}{}\nMax-Forwards: 70\nFrom: <{}>;tag={}\nTo: <{}>;tag={}\nCall-ID: {}\nCSeq: {} {method}\nContact: <{};transport=tls>\n{extra}",
            d.bridge_uri,
            d.lcs_tag,
            d.cseq,
            d.lcs_uri,
            d.lcs_tag,
            d.bridge_uri,
            d.bridge_tag,
            d.call_id,
            d.cseq,
            d.lcs_uri
        ),
        body,
    )
}

fn sip(head: &str, body: &str) -> Message {
    let mut bytes = format!("{head}Content-Length: {}\n\n", body.len())
        .replace('\n', "\r\n")
        .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    Message::parse(&bytes).expect("test SIP message")
}

/// The whole bridge between the two stand-ins.
pub struct World {
    pub now: Instant,
    pub bridge: Bridge,
    pub store: Arc<MemStore>,
    pub xmpp: XmppServer,
    pub lcs: LcsEdge,
    ids: TxIds,
    /// What is in flight to the bridge, due in order (one latency for everything).
    wire: VecDeque<(Instant, Input)>,
    start: Instant,
    seed: u64,
    /// The administration commands the runner was given, in order, and the domains blocked at
    /// runtime (the runner's executor, played with the world's store).
    pub admin_commands: Vec<Command>,
    pub blocked: std::collections::BTreeSet<String>,
    /// The outcomes of the commands given as `Input::Admin` (the socket's), by id.
    pub admin_replies: Vec<(u64, admin::Outcome)>,
    /// The engines' settings and tables (kept for a restart, changed by [`World::reload`]).
    presence: PresenceSettings,
    im: ImSettings,
    mappings: Mappings,
}

impl World {
    pub fn new() -> World {
        World::with_presence(|_| {})
    }

    /// A world whose presence engine has the settings `change` makes of the usual ones.
    pub fn with_presence(change: impl FnOnce(&mut PresenceSettings)) -> World {
        let now = Instant::now();
        let store = Arc::new(MemStore::new());
        let ids = TxIds::default();
        let mut presence = PresenceSettings {
            public_fqdn: PUBLIC_FQDN.into(),
            expires: Duration::from_secs(3600),
            min_notify_interval: Duration::from_secs(5),
            dialog_max_age: Duration::from_secs(20 * 3600),
            ..PresenceSettings::default()
        };
        change(&mut presence);
        let im = ImSettings {
            public_fqdn: PUBLIC_FQDN.into(),
            idle_timeout: Duration::from_secs(600),
            dialog_max_age: Duration::from_secs(20 * 3600),
            max_body_bytes: 16 * 1024,
            max_queued: 64,
            ..ImSettings::default()
        };
        let mappings = Mappings::builtin();
        let bridge = Self::bridge(now, now, &ids, 1, (&presence, &im, &mappings));
        World {
            now,
            bridge,
            store,
            xmpp: XmppServer::default(),
            lcs: LcsEdge::new(),
            ids,
            wire: VecDeque::new(),
            start: now,
            seed: 1,
            admin_commands: Vec::new(),
            admin_replies: Vec::new(),
            blocked: std::collections::BTreeSet::new(),
            presence,
            im,
            mappings,
        }
    }

    fn book() -> AddressBook {
        AddressBook::new(
            AddressMode::Gateway,
            vec![COMPONENT.into()],
            vec![LOCAL.into()],
        )
        .expect("address book")
    }

    /// A bridge as `app.rs` builds it, on the world's clock (`start` is Unix 1.7e9).
    fn bridge(
        start: Instant,
        now: Instant,
        ids: &TxIds,
        seed: u64,
        (settings, im, mappings): (&PresenceSettings, &ImSettings, &Mappings),
    ) -> Bridge {
        let clock = WallClock {
            at: now,
            unix: 1_700_000_000 + now.duration_since(start).as_secs(),
        };
        let presence = PresenceEngine::new(
            settings.clone(),
            Self::book(),
            mappings.clone(),
            ids.clone(),
            seed,
            clock,
        );
        let im = ImEngine::new(
            im.clone(),
            Self::book(),
            mappings.errors.clone(),
            ids.clone(),
            seed + 1,
            clock,
        );
        let iq = IqEngine::new(Self::book(), GatewayInfo::new("LCS gateway"));
        let roster = RosterEngine::new(RosterMode::Auto, Self::book(), seed + 2);
        let admin = AdminEngine::new(vec![COMPONENT.into()], [ADMIN.to_owned()]);
        Bridge::standard(presence, roster, im, iq, admin, mappings.errors.clone())
    }

    /// The runner gives the bridge a command from the local socket.
    pub fn admin_from_socket(&mut self, id: u64, command: Command) {
        self.send(Input::Admin { id, command });
    }

    /// A reload whose `[admin] jids` are `admins` (the rest unchanged).
    pub fn reload_admins(&mut self, admins: Vec<String>) {
        let settings = Reconfigure {
            presence: self.presence.clone(),
            im: self.im.clone(),
            mappings: self.mappings.clone(),
            admins,
        };
        self.bridge
            .handle(self.now, Input::Reconfigure(Box::new(settings)));
        self.flush();
    }

    /// A reload (SIGHUP) at the current time: the settings `presence` and `im` make of the
    /// current ones, and these tables, given to the bridge as the runner does.
    pub fn reload(
        &mut self,
        presence: impl FnOnce(&mut PresenceSettings),
        im: impl FnOnce(&mut ImSettings),
        mappings: Mappings,
    ) {
        presence(&mut self.presence);
        im(&mut self.im);
        self.mappings = mappings;
        let settings = Reconfigure {
            presence: self.presence.clone(),
            im: self.im.clone(),
            mappings: self.mappings.clone(),
            admins: vec![ADMIN.to_owned()],
        };
        self.bridge
            .handle(self.now, Input::Reconfigure(Box::new(settings)));
        self.flush();
    }

    /// The LCS edge's connection to the bridge breaks: the bridge is told, and the edge's
    /// next request or answer goes over a new connection. The profile keeps every dialog on
    /// the connection it was made on, so the dialogs on the old one are dead for LCS too: its
    /// NOTIFYs in them are not sent (until it has a dialog again) and its watchers must
    /// subscribe again ([`World::lcs_subscribes`]).
    pub fn lcs_connection_lost(&mut self) {
        let Some(conn) = self.lcs.conn.take() else {
            return;
        };
        let (lost, kept) = std::mem::take(&mut self.lcs.dialogs)
            .into_iter()
            .partition(|(_, d)| d.conn == conn);
        self.lcs.dialogs = kept;
        self.lcs.lost = lost;
        self.send(Input::Edge(EdgeEvent::ConnectionLost { conn }));
    }

    /// The bridge process ends (its connections with it) and a new one starts from the store.
    pub fn restart(&mut self) {
        self.bridge.shutdown();
        self.flush();
        self.wire.clear();
        self.seed += 10;
        self.bridge = Self::bridge(
            self.start,
            self.now,
            &self.ids,
            self.seed,
            (&self.presence, &self.im, &self.mappings),
        );
        // The old process's connections are gone; LCS connects anew when it has to.
        if let Some(conn) = self.lcs.conn.take() {
            for d in self.lcs.dialogs.values_mut() {
                if d.conn == conn {
                    d.conn = 0;
                }
            }
        }
        let subs: Vec<Subscription> = self
            .store
            .subscriptions()
            .collect::<Result<_, _>>()
            .expect("store readable");
        self.bridge.handle(self.now, Input::Restore(subs));
        let dialogs = self
            .store
            .im_dialogs()
            .collect::<Result<_, _>>()
            .expect("store readable");
        self.bridge.handle(self.now, Input::RestoreIm(dialogs));
    }

    // ------------------------------------------------------------------ the XMPP side

    /// A local user's client sends a stanza through the XMPP server to the component. The
    /// server notes the user's answers to subscription requests in the roster: approving a
    /// contact (`subscribed`) also sends the contact the user's presence (RFC 6121 §3.1.5).
    pub fn xmpp_sends(&mut self, xml: &str) {
        let el = stanza(xml);
        if self.xmpp.down.contains(COMPONENT) {
            return; // the server cannot reach the component: lost (bounced to the user)
        }
        // A subscription request or approval puts the contact into the user's roster
        // (RFC 6121 §3.1.2, §3.1.5), without a name.
        if el.name() == "presence" && matches!(el.attr("type"), Some("subscribe" | "subscribed")) {
            let user = el
                .attr("from")
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("");
            let contact = el.attr("to").unwrap_or("").to_owned();
            self.xmpp
                .rosters
                .entry(user.to_owned())
                .or_default()
                .entry(contact)
                .or_insert((None, Vec::new()));
        }
        let kind = el.attr("type").map(str::to_owned);
        let bare = |a: Option<&str>| a.unwrap_or("").split('/').next().unwrap_or("").to_owned();
        let (from, to) = (bare(el.attr("from")), bare(el.attr("to")));
        self.send(Input::Stanza(el));
        match kind.as_deref() {
            Some("subscribed") => {
                self.xmpp
                    .subscribers
                    .entry(from.clone())
                    .or_default()
                    .insert(to.clone());
                for p in self.xmpp.presence_for(&from, &to) {
                    self.xmpp_sends(&p);
                }
            }
            Some("unsubscribed") => {
                if let Some(r) = self.xmpp.subscribers.get_mut(&from) {
                    r.remove(&to);
                }
            }
            _ => {}
        }
    }

    /// A local user's resource sends broadcast presence (`inner`: its content), or goes
    /// offline (`None`): the server sends it to each approved contact, one stanza addressed
    /// to each, but to none the user blocks, and while the resource is invisible to none.
    pub fn xmpp_broadcast(&mut self, from_full: &str, inner: Option<&str>) {
        let bare = from_full.split('/').next().unwrap_or(from_full).to_owned();
        let contacts = self.xmpp.unblocked_contacts(&bare);
        let to: Vec<&str> = if self.xmpp.invisible.contains(from_full) {
            Vec::new()
        } else {
            contacts.iter().map(String::as_str).collect()
        };
        self.xmpp_presence(from_full, inner, &to);
    }

    /// A local user's resource sends directed presence (RFC 6121 §4.6) to `to` alone:
    /// available with `inner`, or unavailable (`None`). The resource's broadcast presence
    /// (what probes are answered with) does not change.
    pub fn xmpp_directed(&mut self, from_full: &str, to: &str, inner: Option<&str>) {
        let xml = match inner {
            Some(inner) => format!("<presence from='{from_full}' to='{to}'>{inner}</presence>"),
            None => format!("<presence from='{from_full}' to='{to}' type='unavailable'/>"),
        };
        self.xmpp_sends(&xml);
    }

    /// Local user `bare` blocks `contact` (XEP-0191 §3.3): the server sends the contact
    /// `unavailable` from each available resource, and nothing more until unblocked.
    pub fn xmpp_block(&mut self, bare: &str, contact: &str) {
        let resources: Vec<String> = self
            .xmpp
            .presence
            .get(bare)
            .into_iter()
            .flatten()
            .map(|(full, _)| full.clone())
            .collect();
        self.xmpp
            .blocked
            .entry(bare.to_owned())
            .or_default()
            .insert(contact.to_owned());
        for full in resources {
            self.xmpp_directed(&full, contact, None);
        }
    }

    /// Local user `bare` unblocks `contact` (XEP-0191 §3.4): the contact, if approved, gets
    /// the user's presence again (Prosody probes on its behalf).
    pub fn xmpp_unblock(&mut self, bare: &str, contact: &str) {
        if let Some(b) = self.xmpp.blocked.get_mut(bare) {
            b.remove(contact);
        }
        if self
            .xmpp
            .subscribers
            .get(bare)
            .is_some_and(|r| r.contains(contact))
        {
            for p in self.xmpp.presence_for(bare, contact) {
                self.xmpp_sends(&p);
            }
        }
    }

    /// A resource goes invisible (XEP-0186 §3.1: `unavailable` to every contact that saw
    /// it) or visible again (its presence broadcast).
    pub fn xmpp_invisible(&mut self, from_full: &str, invisible: bool) {
        let bare = from_full.split('/').next().unwrap_or(from_full).to_owned();
        let current = self
            .xmpp
            .presence
            .get(&bare)
            .and_then(|r| r.get(from_full))
            .cloned();
        if invisible {
            let contacts = self.xmpp.unblocked_contacts(&bare);
            if current.is_some() {
                for c in contacts {
                    self.xmpp_directed(from_full, &c, None);
                }
            }
            self.xmpp.invisible.insert(from_full.to_owned());
        } else {
            self.xmpp.invisible.remove(from_full);
            if let Some(inner) = current {
                self.xmpp_broadcast(from_full, Some(&inner));
            }
        }
    }

    /// A local user's resource comes online or changes (`inner`: the presence's content), or
    /// goes offline (`inner` = `None`); the server sends it to each contact of the component
    /// that `subscribers` names.
    pub fn xmpp_presence(&mut self, from_full: &str, inner: Option<&str>, subscribers: &[&str]) {
        let bare = from_full.split('/').next().unwrap_or(from_full).to_owned();
        let resources = self.xmpp.presence.entry(bare).or_default();
        match inner {
            Some(inner) => resources.insert(from_full.to_owned(), inner.to_owned()),
            None => resources.remove(from_full),
        };
        let kind = if inner.is_some() {
            ""
        } else {
            " type='unavailable'"
        };
        for to in subscribers {
            self.xmpp_sends(&format!(
                "<presence from='{from_full}' to='{to}'{kind}>{}</presence>",
                inner.unwrap_or("")
            ));
        }
    }

    pub fn link_down(&mut self) {
        self.xmpp.down.insert(COMPONENT.into());
        self.send(Input::LinkDown {
            domain: COMPONENT.into(),
            reason: "test".into(),
        });
    }

    pub fn link_up(&mut self) {
        self.xmpp.down.remove(COMPONENT);
        let held = std::mem::take(&mut self.xmpp.held);
        for el in held {
            self.deliver_stanza(el);
        }
        self.send(Input::LinkUp {
            domain: COMPONENT.into(),
        });
    }

    fn deliver_stanza(&mut self, el: Element) {
        if self.xmpp.down.contains(COMPONENT) {
            self.xmpp.held.push(el);
            return;
        }
        let to = el.attr("to").unwrap_or("").to_owned();
        if el.name() == "presence"
            && el.attr("type") != Some("error")
            && self.xmpp.no_account.contains(&to)
        {
            let from = el.attr("from").unwrap_or("");
            let error = format!(
                "<presence from='{to}' to='{from}' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
            );
            self.send(Input::Stanza(stanza(&error)));
        }
        if el.name() == "iq" && el.get_child("query", "jabber:iq:roster").is_some() {
            let answer = self.roster_iq(&el);
            self.xmpp.delivered.push(el);
            self.send(Input::Stanza(stanza(&answer)));
            return;
        }
        // A chat message to no account: `service-unavailable` (RFC 6121 §8.5.1), with its id;
        // no body (Prosody's error reply carries none).
        let bare_to = to.split('/').next().unwrap_or("");
        if el.name() == "message"
            && matches!(el.attr("type"), Some("chat") | Some("normal") | None)
            && self.xmpp.no_account.contains(bare_to)
        {
            let from = el.attr("from").unwrap_or("");
            let id = el.attr("id").unwrap_or("");
            let error = format!(
                "<message from='{bare_to}' to='{from}' type='error' id='{id}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            );
            self.send(Input::Stanza(stanza(&error)));
        }
        // The server answers a probe with the presence of each available resource, or with
        // unavailable presence when there is none (RFC 6121 §4.3.2); a blocked contact's
        // probe goes unanswered.
        if el.attr("type") == Some("probe") {
            let to = el.attr("to").unwrap_or("").to_owned();
            let from = el.attr("from").unwrap_or("").to_owned();
            for answer in self.xmpp.presence_for(&to, &from) {
                self.send(Input::Stanza(stanza(&answer)));
            }
        }
        // A contact's `unsubscribe` ends its subscription to the user's presence.
        if el.attr("type") == Some("unsubscribe") {
            let from = el.attr("from").unwrap_or("").to_owned();
            if let Some(r) = self.xmpp.subscribers.get_mut(&to) {
                r.remove(&from);
            }
        }
        self.xmpp.delivered.push(el);
    }

    /// The server grants the component roster access (XEP-0356), as Prosody's mod_privilege
    /// says it right after the component connects.
    pub fn grant_roster(&mut self, access: &'static str) {
        self.xmpp.roster_access = access;
        self.send(Input::Stanza(stanza(&format!(
            "<message from='{LOCAL}' to='{COMPONENT}'><privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='{access}'/></privilege></message>"
        ))));
    }

    /// How the server answers a roster IQ from the component (RFC 6121 §2, XEP-0356 §4.2).
    fn roster_iq(&mut self, el: &Element) -> String {
        let (id, user, from) = (
            el.attr("id").unwrap_or(""),
            el.attr("to").unwrap_or("").to_owned(),
            el.attr("from").unwrap_or(""),
        );
        let get = el.attr("type") == Some("get");
        let allowed = match self.xmpp.roster_access {
            "both" => true,
            "get" => get,
            "set" => !get,
            _ => false,
        };
        let error = |(type_, condition): (&str, &str)| {
            format!(
                "<iq from='{user}' to='{from}' id='{id}' type='error'><error type='{type_}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>refused by the test server</text></error></iq>"
            )
        };
        if !allowed {
            return error(("auth", "forbidden"));
        }
        if let Some(e) = self.xmpp.roster_error {
            return error(e);
        }
        if let Some(e) = self.xmpp.roster_set_error.filter(|_| !get) {
            return error(e);
        }
        let roster = self.xmpp.rosters.entry(user.clone()).or_default();
        if get {
            let items: String = roster
                .iter()
                .map(|(jid, (name, groups))| {
                    let name = name
                        .as_ref()
                        .map(|n| format!(" name='{}'", xml_escape(n)))
                        .unwrap_or_default();
                    let groups: String = groups
                        .iter()
                        .map(|g| format!("<group>{g}</group>"))
                        .collect();
                    format!("<item jid='{jid}' subscription='both'{name}>{groups}</item>")
                })
                .collect();
            return format!(
                "<iq from='{user}' to='{from}' id='{id}' type='result'><query xmlns='jabber:iq:roster'>{items}</query></iq>"
            );
        }
        for item in el
            .get_child("query", "jabber:iq:roster")
            .into_iter()
            .flat_map(|q| q.children())
        {
            let groups = item.children().map(Element::text).collect();
            roster.insert(
                item.attr("jid").unwrap_or("").to_owned(),
                (item.attr("name").map(str::to_owned), groups),
            );
        }
        format!("<iq from='{user}' to='{from}' id='{id}' type='result'/>")
    }

    // ------------------------------------------------------------------- the LCS side

    /// An LCS user sends an INVITE carrying its first message (`ms-text-format`).
    pub fn lcs_invites(&mut self, from: &str, to: &str, text: &str) {
        self.lcs_invites_as(from, None, to, text);
    }

    /// [`World::lcs_invites`] with a display name in From.
    pub fn lcs_invites_as(&mut self, from: &str, display: Option<&str>, to: &str, text: &str) {
        let (tag, call_id) = self.start_dialog("INVITE", from, to);
        let b64 = base64_of(text);
        let display = display.map(|d| format!("\"{d}\" ")).unwrap_or_default();
        let invite = sip(
            &format!(
                "INVITE {to} SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{tag}\nMax-Forwards: 70\nFrom: {display}<{from}>;tag={tag}\nTo: <{to}>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContact: <{from};transport=tls>\nms-text-format: text/plain; charset=UTF-8;ms-body={b64}\nContent-Type: application/sdp\n"
            ),
            SDP,
        );
        self.lcs_request(invite);
    }

    /// An LCS user sends an INVITE with these extra header lines (`\n`-ended, e.g. Lync's
    /// multiparty `EndPoints` and `Roster-Manager`, or an `ms-text-format`) and this body (its
    /// Content-Type and text).
    pub fn lcs_invites_with_headers(
        &mut self,
        from: &str,
        to: &str,
        extra: &str,
        (content_type, body): (&str, &str),
    ) {
        let (tag, call_id) = self.start_dialog("INVITE", from, to);
        let invite = sip(
            &format!(
                "INVITE {to} SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{tag}\nMax-Forwards: 70\nFrom: <{from}>;tag={tag}\nTo: <{to}>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContact: <{from};transport=tls>\n{extra}Content-Type: {content_type}\n"
            ),
            body,
        );
        self.lcs_request(invite);
    }

    /// The `ms-text-format` header line (`\n`-ended) carrying `text` as a first message.
    pub fn ms_text_format_line(text: &str) -> String {
        format!(
            "ms-text-format: text/plain; charset=UTF-8;ms-body={}\n",
            base64_of(text)
        )
    }

    /// An LCS user sends a request of `method` in the session its INVITE made, with these extra
    /// header lines (`\n`-ended) and body.
    pub fn lcs_sends_in_session(&mut self, from: &str, method: &str, extra: &str, body: &str) {
        self.lcs_sends_in_dialog(from, "INVITE", method, extra, body);
    }

    /// An LCS user sends a request of `method` in its dialog of `kind` (as `dialog` names
    /// them), with these extra header lines (`\n`-ended) and body.
    fn lcs_sends_in_dialog(
        &mut self,
        from: &str,
        kind: &'static str,
        method: &str,
        extra: &str,
        body: &str,
    ) {
        let mut d = self.dialog(from, kind);
        d.cseq += 1;
        self.lcs.dialogs.insert((from.to_owned(), kind), d.clone());
        let request = in_dialog(&d, method, method, extra, body);
        self.lcs_request(request);
    }

    /// The bridge's last answer to an LCS request of `method`.
    pub fn last_answer_to(&self, method: Method) -> Option<&Message> {
        self.lcs
            .answers
            .iter()
            .rev()
            .map(|(_, r)| r)
            .find(|r| r.cseq().is_ok_and(|c| c.method == method))
    }

    /// An LCS user sends a MESSAGE in the session its INVITE made.
    pub fn lcs_messages(&mut self, from: &str, text: &str) {
        self.lcs_messages_in(from, "INVITE", text);
    }

    /// An LCS user sends a MESSAGE in the session the bridge's INVITE made.
    pub fn lcs_replies(&mut self, from: &str, text: &str) {
        self.lcs_messages_in(from, "INVITE-out", text);
    }

    /// An LCS user's side still writes, on a new connection, in the session its INVITE made
    /// that lived on the connection [`World::lcs_connection_lost`] broke (a stale request).
    pub fn lcs_messages_in_lost(&mut self, from: &str, text: &str) {
        let d = self
            .lcs
            .lost
            .get(&(from.to_owned(), "INVITE"))
            .cloned()
            .expect("a lost LCS dialog");
        self.lcs.dialogs.insert((from.to_owned(), "INVITE"), d);
        self.lcs_messages_in(from, "INVITE", text);
    }

    fn lcs_messages_in(&mut self, from: &str, kind: &'static str, text: &str) {
        let headers = "Content-Type: text/plain; charset=UTF-8\n";
        self.lcs_sends_in_dialog(from, kind, "MESSAGE", headers, text);
    }

    /// An LCS user's side ends an IM session with BYE (Skype for Business does after 10 idle
    /// minutes): `kind` is `"INVITE"` (the session LCS opened) or `"INVITE-out"` (the bridge's).
    pub fn lcs_ends_session(&mut self, from: &str, kind: &'static str) {
        let key = (from.to_owned(), kind);
        let mut d = self.dialog(from, kind);
        d.cseq += 1;
        self.lcs.dialogs.remove(&key);
        if let Some(s) = self.lcs.sessions.get_mut(&d.call_id) {
            s.1 = false;
        }
        let request = in_dialog(&d, "BYE", "b", "", "");
        self.lcs_request(request);
    }

    /// An LCS user subscribes to a local user's presence.
    pub fn lcs_subscribes(&mut self, from: &str, to: &str) {
        self.lcs_subscribes_as(from, None, to);
    }

    /// [`World::lcs_subscribes`] with a display name in From.
    pub fn lcs_subscribes_as(&mut self, from: &str, display: Option<&str>, to: &str) {
        let (tag, call_id) = self.start_dialog("SUBSCRIBE-in", from, to);
        let display = display.map(|d| format!("\"{d}\" ")).unwrap_or_default();
        let request = sip(
            &format!(
                "SUBSCRIBE {to} SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{tag}\nMax-Forwards: 70\nFrom: {display}<{from}>;tag={tag}\nTo: <{to}>\nCall-ID: {call_id}\nCSeq: 1 SUBSCRIBE\nContact: <{from};transport=tls>\nEvent: presence\nAccept: application/pidf+xml\nExpires: 3600\n"
            ),
            "",
        );
        self.lcs_request(request);
    }

    /// An LCS watcher refreshes its subscription to a local user (in-dialog SUBSCRIBE).
    pub fn lcs_refreshes(&mut self, from: &str) {
        let headers = "Event: presence\nAccept: application/pidf+xml\nExpires: 3600\n";
        self.lcs_sends_in_dialog(from, "SUBSCRIBE-in", "SUBSCRIBE", headers, "");
    }

    /// An LCS watcher's side still refreshes, on a new connection, the subscription whose
    /// dialog lived on the connection [`World::lcs_connection_lost`] broke (a stale request).
    pub fn lcs_refreshes_in_lost(&mut self, from: &str) {
        let d = self
            .lcs
            .lost
            .get(&(from.to_owned(), "SUBSCRIBE-in"))
            .cloned()
            .expect("a lost LCS dialog");
        self.lcs
            .dialogs
            .insert((from.to_owned(), "SUBSCRIBE-in"), d);
        self.lcs_refreshes(from);
    }

    /// A dialog an LCS user starts (`kind`: the request that makes it): its tag and Call-ID.
    fn start_dialog(&mut self, kind: &'static str, from: &str, to: &str) -> (String, String) {
        let tag = self.lcs.tag();
        let call_id = format!("{kind}-{tag}");
        let conn = self.lcs.conn();
        let dialog = LcsDialog {
            call_id: call_id.clone(),
            bridge_tag: String::new(),
            bridge_uri: to.to_owned(),
            lcs_tag: tag.clone(),
            lcs_uri: from.to_owned(),
            cseq: 1,
            conn,
        };
        self.lcs.dialogs.insert((from.to_owned(), kind), dialog);
        if kind == "INVITE" {
            self.lcs.sessions.insert(call_id.clone(), (0, true));
        }
        (tag, call_id)
    }

    /// An LCS user's presence changes: a NOTIFY in the dialog of the bridge's subscription.
    pub fn lcs_notifies(&mut self, aor: &str, activity: &str) {
        self.lcs_notifies_doc(aor, pidf(aor, activity));
    }

    /// [`World::lcs_notifies`] with this document (also what later NOTIFYs carry).
    pub fn lcs_notifies_doc(&mut self, aor: &str, doc: String) {
        self.lcs.documents.insert(aor.into(), doc.clone());
        let key = (aor.to_owned(), "SUBSCRIBE-out");
        let Some(mut d) = self.lcs.dialogs.get(&key).cloned() else {
            return;
        };
        d.cseq += 1;
        self.lcs.dialogs.insert(key, d.clone());
        let notify = self.notify(&d, "active;expires=3600", Some(&doc));
        self.lcs_request(notify);
    }

    fn dialog(&self, aor: &str, kind: &'static str) -> LcsDialog {
        self.lcs
            .dialogs
            .get(&(aor.to_owned(), kind))
            .cloned()
            .expect("an LCS dialog")
    }

    fn notify(&self, d: &LcsDialog, state: &str, body: Option<&str>) -> Message {
        let ct = match body {
            Some(b) if b.starts_with("<categories") => {
                "Content-Type: application/msrtc-event-categories+xml\n"
            }
            Some(_) => "Content-Type: application/pidf+xml\n",
            None => "",
        };
        let headers = format!("Event: presence\nSubscription-State: {state}\n{ct}");
        in_dialog(d, "NOTIFY", "n", &headers, body.unwrap_or(""))
    }

    fn lcs_request(&mut self, request: Message) {
        let conn = self.lcs.conn();
        let tx = self.ids.next();
        self.send(Input::Edge(EdgeEvent::Request {
            tx,
            conn,
            request,
            asserted: None,
        }));
    }

    /// LCS answers a request the bridge sent, as its users would.
    fn lcs_answers(&mut self, tx: TxId, request: Message, route: Route) {
        let conn = match route {
            Route::Connection(c) if Some(c) != self.lcs.conn => {
                self.send(Input::Edge(EdgeEvent::Undeliverable {
                    tx,
                    why: crate::edge::core::Undeliverable::ConnectionGone { conn: c },
                }));
                return;
            }
            _ => self.lcs.conn(),
        };
        let method = request.method().cloned();
        let to = request.to().expect("To").uri.to_owned();
        let in_dialog = request.to().expect("To").tag().is_some();
        let to_tag = match request.to().expect("To").tag() {
            Some(t) => t.to_owned(),
            None => self.lcs.tag(),
        };
        let call_id = request.call_id().expect("Call-ID").to_owned();
        let cseq = request.cseq().expect("CSeq").number;
        let mut status = 200;
        if in_dialog && matches!(method, Some(Method::Message | Method::Bye)) {
            // A user agent's checks on an in-dialog request (RFC 3261 §12.2.2).
            status = match self.lcs.sessions.get_mut(&call_id) {
                Some((_, false)) | None => 481,
                Some((last, _)) if cseq <= *last => 500,
                Some((last, open)) => {
                    *last = cseq;
                    *open = method != Some(Method::Bye);
                    200
                }
            };
        }
        if method == Some(Method::Notify) {
            let last = self.lcs.notified.entry(call_id.clone()).or_insert(0);
            if cseq <= *last {
                status = 500;
            } else {
                *last = cseq;
            }
        }
        if method == Some(Method::Subscribe)
            && self.lcs.refuses_bodies
            && !request.body().is_empty()
        {
            status = 415;
        }
        if let Some(m) = &method {
            self.lcs.replied.push((m.clone(), status));
        }
        let mut response = Message::response_to(&request, status, None, Some(&to_tag));
        response.push_header("Contact", &format!("<{to};transport=tls>"));
        let new_dialog = |world: &mut World| LcsDialog {
            call_id: request.call_id().expect("Call-ID").to_owned(),
            bridge_tag: request.from().expect("From").tag().unwrap_or("").to_owned(),
            bridge_uri: request.from().expect("From").uri.to_owned(),
            lcs_tag: to_tag.clone(),
            lcs_uri: to.clone(),
            cseq: 0,
            conn: world.lcs.conn(),
        };
        let mut then = None;
        match method {
            Some(Method::Invite) => {
                response.set_body(Some("application/sdp"), SDP.as_bytes().to_vec());
                if !in_dialog {
                    let d = new_dialog(self);
                    self.lcs.dialogs.insert((to.clone(), "INVITE-out"), d);
                    self.lcs.sessions.insert(call_id.clone(), (cseq, true));
                }
            }
            Some(Method::Subscribe) if status == 415 => {
                response.push_header("Accept", "application/pidf+xml");
            }
            Some(Method::Subscribe) => {
                let expires = request
                    .header("Expires")
                    .and_then(|e| e.trim().parse::<u32>().ok())
                    .unwrap_or(3600);
                response.push_header("Expires", &expires.to_string());
                let mut d = new_dialog(self);
                let key = (to.clone(), "SUBSCRIBE-out");
                if let Some(old) = self
                    .lcs
                    .dialogs
                    .get(&key)
                    .filter(|o| o.call_id == d.call_id)
                {
                    d.cseq = old.cseq;
                }
                d.cseq += 1;
                self.lcs.dialogs.insert(key, d.clone());
                then = Some(if expires == 0 {
                    self.notify(&d, "terminated;reason=timeout", None)
                } else {
                    let doc = self
                        .lcs
                        .documents
                        .get(&to)
                        .cloned()
                        .unwrap_or_else(|| pidf(&to, "online"));
                    self.notify(&d, "active;expires=3600", Some(&doc))
                });
            }
            _ => {}
        }
        self.send(Input::Edge(EdgeEvent::Transaction(TxEvent::Response {
            tx,
            conn,
            response,
            is_final: true,
        })));
        if let Some(notify) = then {
            self.lcs_request(notify);
        }
    }

    /// The bridge answered an LCS request: remember the dialog's tag; ACK a 2xx to INVITE.
    fn lcs_takes_answer(&mut self, tx: TxId, response: Message) {
        let ok = response.status().is_some_and(|s| (200..300).contains(&s));
        if ok {
            let tag = response.to().ok().and_then(|t| t.tag()).map(str::to_owned);
            let from = response
                .from()
                .map(|f| f.uri.to_owned())
                .unwrap_or_default();
            let kind = match response.cseq().map(|c| c.method) {
                Ok(Method::Invite) => Some("INVITE"),
                Ok(Method::Subscribe) => Some("SUBSCRIBE-in"),
                _ => None,
            };
            if let (Some(kind), Some(tag)) = (kind, tag) {
                if let Some(d) = self.lcs.dialogs.get_mut(&(from, kind)) {
                    d.bridge_tag = tag;
                    d.cseq += 1;
                }
            }
            if kind == Some("INVITE") {
                let conn = self.lcs.conn();
                let ack = sip(
                    &format!(
                        "ACK {} SIP/2.0\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bKack{}\nMax-Forwards: 70\nFrom: {}\nTo: {}\nCall-ID: {}\nCSeq: 1 ACK\n",
                        response.to().map(|t| t.uri.to_owned()).unwrap_or_default(),
                        self.lcs.seq,
                        response.header("From").unwrap_or(""),
                        response.header("To").unwrap_or(""),
                        response.call_id().unwrap_or("")
                    ),
                    "",
                );
                self.send(Input::Edge(EdgeEvent::Transaction(TxEvent::Ack {
                    conn,
                    request: ack,
                })));
            }
        }
        self.lcs.answers.push((tx, response));
    }

    // ------------------------------------------------------------------------ time

    fn send(&mut self, input: Input) {
        self.wire.push_back((self.now + LATENCY, input));
    }

    /// The runner's executor of administration commands, on the world's store.
    fn execute(&mut self, command: &Command) -> admin::Outcome {
        match command {
            Command::Partners => admin::partners(
                &[("contoso.com".to_owned(), "allow")],
                &self.blocked,
                "allow",
                &[],
            ),
            Command::Subscriptions { user } => {
                let all: Vec<Subscription> = self
                    .store
                    .subscriptions()
                    .collect::<Result<_, _>>()
                    .expect("store readable");
                admin::subscriptions(user, &all)
            }
            Command::Block { domain } => {
                let already = !self.blocked.insert(domain.clone());
                admin::blocked(domain, already)
            }
            Command::Unblock { domain } => {
                let was = self.blocked.remove(domain);
                admin::unblocked(domain, was, false)
            }
            Command::Reload => admin::Outcome::ok("configuration reloaded", Vec::new()),
            Command::EndSubscription { .. } => {
                admin::Outcome::failed("the engines carry this out", Vec::new())
            }
        }
    }

    /// Runs every action the bridge has ready, handing each to the stand-in it is for.
    fn flush(&mut self) {
        while let Some(action) = self.bridge.poll_action() {
            match action {
                Action::Stanza(el) if self.xmpp.refuse => {
                    drop(el);
                    self.bridge.report(self.now, Failure::StanzaRefused);
                }
                Action::Stanza(el) => self.deliver_stanza(el),
                Action::Request { tx, request, route } => {
                    self.lcs.received.push(request.clone());
                    self.lcs_answers(tx, request, route);
                }
                Action::Respond { tx, response } => self.lcs_takes_answer(tx, response),
                Action::Ack { ack, .. } => self.lcs.acks.push(ack),
                Action::Write { subs, durable } => {
                    let r = if durable {
                        self.store.put_subscriptions(&subs)
                    } else {
                        subs.iter()
                            .try_for_each(|s| self.store.put_subscription_lazy(s))
                    };
                    if r.is_err() {
                        self.bridge.report(self.now, Failure::StoreFailed);
                    }
                }
                Action::Forget {
                    direction,
                    local,
                    remote,
                } => {
                    if self
                        .store
                        .remove_subscription(direction, &local, &remote)
                        .is_err()
                    {
                        self.bridge.report(self.now, Failure::StoreFailed);
                    }
                }
                Action::WriteIm { dialogs, durable } => {
                    let r = dialogs
                        .iter()
                        .try_for_each(|d| self.store.put_im_dialog(d))
                        .and_then(|()| if durable { self.store.flush() } else { Ok(()) });
                    if r.is_err() {
                        self.bridge.report(self.now, Failure::StoreFailed);
                    }
                }
                Action::ForgetIm { local, remote } => {
                    if self.store.remove_im_dialog(&local, &remote).is_err() {
                        self.bridge.report(self.now, Failure::StoreFailed);
                    }
                }
                Action::Admin { id, command } => {
                    let outcome = self.execute(&command);
                    self.admin_commands.push(command);
                    self.send(Input::AdminDone { id, outcome });
                }
                Action::AdminReply { id, outcome } => self.admin_replies.push((id, outcome)),
            }
        }
    }

    /// One step: runs what is ready, then moves the clock to the next thing due no later than
    /// `limit` and delivers it. False when nothing is due by then.
    fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let wire = self.wire.front().map(|(at, _)| *at);
        let timer = self.bridge.poll_timeout();
        let next = match (wire, timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        if next > limit {
            return false;
        }
        self.now = self.now.max(next);
        while self.wire.front().is_some_and(|(at, _)| *at <= self.now) {
            if let Some((_, input)) = self.wire.pop_front() {
                self.bridge.handle(self.now, input);
                self.flush();
            }
        }
        if self.bridge.poll_timeout().is_some_and(|t| t <= self.now) {
            self.bridge.handle_timeout(self.now);
        }
        true
    }

    /// Delivers until nothing is in flight (timers due meanwhile run too).
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some(&(at, _)) = self.wire.front() else {
                self.flush();
                if self.wire.is_empty() {
                    return;
                }
                continue;
            };
            self.step(at);
        }
        panic!("the world does not settle");
    }

    /// Runs everything due in the next `d`, timers included, and leaves the clock at its end.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..1_000_000 {
            if !self.step(end) {
                self.now = end;
                return;
            }
        }
        panic!("the world does not stop within {d:?}");
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
