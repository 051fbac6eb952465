//! Local users' presence as the XMPP server sends it to the component, per watcher.
//!
//! The server sends a user's presence to each subscribed contact separately, addressed to that
//! contact (RFC 6121 §4.2.2, §4.4.2), and to a contact alone when the user directs it there
//! (§4.6), blocks it (XEP-0191 §3.3), goes invisible (XEP-0186) or a privacy list says so
//! (XEP-0016): so an LCS watcher sees what the server addressed to *its* JID, nothing else.
//! Each watcher holds a [`View`]: the available resources' presences addressed to it,
//! aggregated into the profile's single-tuple PIDF document. Views are shared: a change the
//! server sends to N watchers makes one view (and one document) that all N point to, and
//! the N copies cost one parse ([`Entry`], recognised before parsing).

use std::sync::{Arc, Weak};
use std::time::Instant;

use xmpp_parsers::jid::Jid;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::presence::Presence;

use super::{Key, PresenceEngine, key};
use crate::core::pidf::{self, PidfDocument};
use crate::core::presence::{pidf_for_presence, show_for_presence};
use crate::engine::Output;

/// Views a user's watchers lately moved to, kept to be shared by the next watcher whose view
/// becomes the same (a change the server sends to every contact, one stanza each).
const RECENT_VIEWS: usize = 4;

/// One resource's available presence as the server sent it, parsed once and shared by every
/// view holding it.
#[derive(Debug)]
pub(super) struct Entry {
    /// The resource (empty for a presence from the bare JID).
    pub(super) resource: Box<str>,
    /// The stanza as received: the next copy is recognised by comparing all but `to` and `id`.
    raw: Element,
    pub(super) presence: Presence,
}

impl Entry {
    /// Whether `element` is the same presence (all but `to` and `id`).
    fn same_stanza(&self, element: &Element) -> bool {
        fn relevant(e: &Element) -> impl Iterator<Item = impl PartialEq + '_> + '_ {
            e.attrs()
                .iter()
                .filter(|((ns, name), _)| !(ns.is_none() && matches!(name.as_str(), "to" | "id")))
        }
        relevant(&self.raw).eq(relevant(element)) && self.raw.nodes().eq(element.nodes())
    }

    fn same(a: &Arc<Entry>, b: &Arc<Entry>) -> bool {
        Arc::ptr_eq(a, b) || (a.resource == b.resource && a.same_stanza(&b.raw))
    }
}

/// What one watcher has been told of a local user: the presence of each available resource
/// as last addressed to the watcher, and their aggregate as the document it gets.
#[derive(Debug)]
pub(super) struct View {
    /// Some presence was addressed to the watcher (else nothing is known: the document is
    /// `closed`, and the first known state goes out at once).
    pub(super) known: bool,
    /// The available resources' presences, by resource.
    pub(super) resources: Vec<Arc<Entry>>,
    /// The aggregate as the PIDF document sent.
    pub(super) doc: Arc<str>,
}

impl View {
    /// Whether the two views' documents are the same.
    pub(super) fn same_doc(&self, other: &View) -> bool {
        std::ptr::eq(self, other) || Arc::ptr_eq(&self.doc, &other.doc) || self.doc == other.doc
    }

    /// Whether this is the known view `change` makes of `base` (compared without building
    /// that one).
    fn is_after(&self, base: &[Arc<Entry>], change: &Change) -> bool {
        if !self.known {
            return false;
        }
        let mut mine = self.resources.iter();
        let mut next_is = |e: &Arc<Entry>| mine.next().is_some_and(|m| Entry::same(m, e));
        match change {
            Change::Available(entry) => {
                let mut placed = false;
                for b in base {
                    if !placed && b.resource >= entry.resource {
                        placed = true;
                        if !next_is(entry) {
                            return false;
                        }
                        if b.resource == entry.resource {
                            continue;
                        }
                    }
                    if !next_is(b) {
                        return false;
                    }
                }
                if !placed && !next_is(entry) {
                    return false;
                }
            }
            Change::Unavailable(resource) => {
                for b in base {
                    if !resource.is_empty() && b.resource != *resource && !next_is(b) {
                        return false;
                    }
                }
            }
        }
        mine.next().is_none()
    }
}

/// One local user with LCS watchers.
#[derive(Debug)]
pub(super) struct LocalUser {
    /// XEP-0172 nick, from the last of the user's presences that carried one.
    nick: Option<String>,
    /// The view of a watcher nothing has been addressed to yet, while one holds it.
    blank: Weak<View>,
    /// Views made lately, newest last (at most [`RECENT_VIEWS`]), while watchers hold them:
    /// a view no watcher holds any more is freed (its document and presences with it).
    recent: Vec<Weak<View>>,
    /// The last available presence taken from each resource, parsed, until it goes
    /// unavailable: the copies the server sends to the user's other contacts are not parsed
    /// again.
    pub(super) parsed: Vec<Arc<Entry>>,
}

/// What a presence stanza does to the view of the watcher it is addressed to.
enum Change {
    /// A resource's available presence.
    Available(Arc<Entry>),
    /// A resource went unavailable (from the bare JID: every resource).
    Unavailable(Box<str>),
}

impl PresenceEngine {
    /// An available or unavailable presence from a local user's (full or bare) JID, as the
    /// XMPP server sent it to the component. Addressed to an LCS watcher of the user, it
    /// changes that watcher's view, and only that one; addressed to anything else (the
    /// gateway, a contact that does not watch the user) it changes nothing. A copy of the
    /// last available presence taken from the same full JID (all but `to` and `id` equal) is
    /// not parsed again, and the watcher is found without parsing either JID
    /// ([`PresenceEngine::index_watcher`]).
    pub(super) fn local_presence(
        &mut self,
        now: Instant,
        element: Element,
        available: bool,
        out: &mut Vec<Output>,
    ) {
        let (Some(from_attr), Some(to_attr), _) = addressing(&element) else {
            return;
        };
        let (user, resource) = from_attr.split_once('/').unwrap_or((from_attr, ""));
        let contact = to_attr.split_once('/').map_or(to_attr, |(bare, _)| bare);
        // By the index: the user is certain (the key names it), the watcher is checked when
        // the change is applied (a hash collision: through the address book then).
        let indexed = self
            .by_jids
            .get(&self.index_hash(user, contact))
            .filter(|k| k.local() == user)
            .cloned();
        let (key, check) = match indexed {
            Some(key) => (key, Some(contact)),
            None => match self.watcher_by_address(from_attr, to_attr) {
                Some(key) => (key, None),
                None => return,
            },
        };
        let change = if available {
            let cached = self.users.get(key.local()).and_then(|u| {
                u.parsed
                    .iter()
                    .find(|e| *e.resource == *resource && e.same_stanza(&element))
                    .cloned()
            });
            match cached {
                Some(entry) => Change::Available(entry),
                None => {
                    let resource: Box<str> = resource.into();
                    let Ok(presence) = Presence::try_from(element.clone()) else {
                        return;
                    };
                    let nick = nick_of(&presence.payloads);
                    // Cloned, not moved: the JIDs above are still needed (the index's check).
                    let entry = Arc::new(Entry {
                        resource,
                        raw: element.clone(),
                        presence,
                    });
                    let user = self.user(key.local());
                    if nick.is_some() {
                        user.nick = nick.filter(|n| !n.trim().is_empty());
                    }
                    user.parsed.retain(|e| e.resource != entry.resource);
                    user.parsed.push(entry.clone());
                    Change::Available(entry)
                }
            }
        } else {
            let resource: Box<str> = resource.into();
            let nick = element
                .get_child("nick", xmpp_parsers::ns::NICK)
                .map(Element::text);
            let user = self.user(key.local());
            if let Some(nick) = nick {
                user.nick = Some(nick).filter(|n| !n.trim().is_empty());
            }
            // The parsed presence of a resource that is gone for this watcher is kept no longer
            // (clients often come back under a new resource; a copy to another watcher is
            // parsed once again).
            user.parsed
                .retain(|e| !resource.is_empty() && e.resource != resource);
            Change::Unavailable(resource)
        };
        if let Err(change) = self.apply(now, &key, change, check, out) {
            if let Some(key) = self.watcher_by_address(from_attr, to_attr) {
                let _ = self.apply(now, &key, change, None, out);
            }
        }
    }

    /// The watcher a presence from `from` to `to` (JIDs as the server wrote them) is for, if
    /// `from` is a local user and `to` the JID of an LCS user who watches that user, through
    /// the address book.
    fn watcher_by_address(&self, from: &str, to: &str) -> Option<Key> {
        let (Ok(from), Ok(to)) = (Jid::new(from), Jid::new(to)) else {
            return None;
        };
        if !self.book.is_local_domain(from.domain().as_str()) {
            return None;
        }
        to.node()?;
        let aor = self.book.jid_to_sip(&to).ok()?;
        if self.book.is_local_domain(&aor.host) {
            return None;
        }
        let key = key(from.to_bare().into_inner(), aor.aor().to_uri());
        self.inbound.contains_key(&key).then_some(key)
    }

    /// The hash of a (local user, LCS watcher) pair of bare JIDs.
    pub(super) fn index_hash(&self, user: &str, contact: &str) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.index_hasher.build_hasher();
        h.write(user.as_bytes());
        h.write_u8(0xff);
        h.write(contact.as_bytes());
        h.finish()
    }

    /// Indexes watcher `key` by the bare JIDs the XMPP server addresses its user's presence
    /// with (a new watcher, or one restored), so that each such presence finds it without
    /// parsing them; unless another holds the slot (a hash collision: that one is then found
    /// through the address book).
    pub(super) fn index_watcher(&mut self, key: &Key) {
        let Some(w) = self.inbound.get(key) else {
            return;
        };
        let hash = self.index_hash(key.local(), w.remote_jid.as_str());
        self.by_jids.entry(hash).or_insert_with(|| key.clone());
    }

    /// Takes watcher `key` (JID `contact`) out of the index.
    pub(super) fn unindex_watcher(&mut self, key: &Key, contact: &str) {
        let hash = self.index_hash(key.local(), contact);
        if self.by_jids.get(&hash) == Some(key) {
            self.by_jids.remove(&hash);
        }
    }

    /// Watcher `key`'s view after `change`; a NOTIFY is owed if its document changed. With
    /// `check`, the change is given back unless the watcher's JID is that one.
    fn apply(
        &mut self,
        now: Instant,
        key: &Key,
        change: Change,
        check: Option<&str>,
        out: &mut Vec<Output>,
    ) -> Result<(), Change> {
        let Some(w) = self.inbound.get(key) else {
            return Ok(());
        };
        if check.is_some_and(|jid| w.remote_jid.as_str() != jid) {
            return Err(change);
        }
        let base: &[Arc<Entry>] = &w.view.resources;
        // The copies of one change to the user's watchers: the view the first made.
        let shared = self.users.get(key.local()).and_then(|u| {
            u.recent
                .iter()
                .rev()
                .filter_map(Weak::upgrade)
                .find(|v| v.is_after(base, &change))
        });
        let view = match shared {
            Some(v) => v,
            None => {
                let mut resources = base.to_vec();
                match change {
                    Change::Available(entry) => {
                        match resources.binary_search_by(|e| e.resource.cmp(&entry.resource)) {
                            Ok(i) => resources[i] = entry,
                            Err(i) => resources.insert(i, entry),
                        }
                    }
                    Change::Unavailable(resource) if resource.is_empty() => resources.clear(),
                    Change::Unavailable(resource) => resources.retain(|e| e.resource != resource),
                }
                self.new_view(key.local(), resources)
            }
        };
        let Some(w) = self.inbound.get_mut(key) else {
            return Ok(());
        };
        let changed = !w.sent.as_ref().is_some_and(|s| s.same_doc(&view));
        w.view = view;
        if changed {
            w.dirty = true;
            self.maybe_flush(now, key, out);
        }
        Ok(())
    }

    /// A new known view of `local` with these resources, rendered once, then shared by the
    /// watchers whose views become the same (kept among the user's recent ones).
    fn new_view(&mut self, local: &str, resources: Vec<Arc<Entry>>) -> Arc<View> {
        let doc = pidf::render(&self.document(local, &resources)).into();
        let view = Arc::new(View {
            known: true,
            resources,
            doc,
        });
        let user = self.user(local);
        user.recent.retain(|v| v.strong_count() > 0);
        if user.recent.len() == RECENT_VIEWS {
            user.recent.remove(0);
        }
        user.recent.push(Arc::downgrade(&view));
        view
    }

    /// The state of local user `local` (made on first use).
    fn user(&mut self, local: &str) -> &mut LocalUser {
        if !self.users.contains_key(local) {
            let user = LocalUser {
                nick: None,
                blank: Weak::new(),
                recent: Vec::new(),
                parsed: Vec::new(),
            };
            self.users.insert(local.to_owned(), user);
        }
        self.users.get_mut(local).expect("inserted above")
    }

    /// The view of a new watcher of `local`: nothing addressed to it yet (closed), shared by
    /// every such watcher of the user.
    pub(super) fn blank_view(&mut self, local: &str) -> Arc<View> {
        if let Some(blank) = self.users.get(local).and_then(|u| u.blank.upgrade()) {
            return blank;
        }
        let doc = pidf::render(&self.document(local, &[])).into();
        let blank = Arc::new(View {
            known: false,
            resources: Vec::new(),
            doc,
        });
        self.user(local).blank = Arc::downgrade(&blank);
        blank
    }

    /// Forgets a local user once no watcher is left.
    pub(super) fn user_gone(&mut self, local: &str) {
        let watched = self
            .inbound
            .range(key(local.to_owned(), String::new())..)
            .next()
            .is_some_and(|(k, _)| k.local() == local);
        if !watched {
            self.users.remove(local);
        }
    }

    /// What watcher `key` was told of its user's resources may be out of date (a presence
    /// may have been lost while the component's stream was down): its view is replaced by one
    /// with the same document but no resources, so that the next presence addressed to it (a
    /// probe's answers, RFC 6121 §4.3.2) starts it anew; its document stays until then. The
    /// user's parsed presences are forgotten too.
    pub(super) fn mark_stale(&mut self, key: &Key) {
        if let Some(w) = self.inbound.get_mut(key) {
            if !w.view.resources.is_empty() {
                w.view = Arc::new(View {
                    known: w.view.known,
                    resources: Vec::new(),
                    doc: w.view.doc.clone(),
                });
            }
        }
        if let Some(user) = self.users.get_mut(key.local()) {
            user.parsed.clear();
        }
    }

    /// A watcher probed after a lost component stream, `min_notify_interval` after the probe
    /// went: its view is made anew from what the answers said, and if none came (its view is
    /// still the stale one, with no resources) it is the user's `closed` one. Prosody answers a
    /// probe of a user with no available resource with `unavailable`; ejabberd does not answer
    /// it at all (RFC 6121 §4.3.2 allows either), so without this a user who went offline
    /// while the stream was down would stay online for that watcher. Its NOTIFY follows the
    /// usual interval; an unchanged document sends nothing.
    pub(super) fn settle(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let stale = self
            .inbound
            .get(key)
            .is_some_and(|w| w.view.resources.is_empty());
        if stale {
            let _ = self.apply(now, key, Change::Unavailable("".into()), None, out);
        }
    }

    /// The profile's document for local user `local` with these available resources: the
    /// one with the highest priority (ties: the most available show, then the resource
    /// name); none → closed. Display name: the user's XEP-0172 nick (else the JID's
    /// localpart) with the configured suffix.
    fn document(&self, local: &str, resources: &[Arc<Entry>]) -> PidfDocument {
        let entity = self.local_uri(local);
        let best = resources.iter().min_by_key(|e| {
            (
                std::cmp::Reverse(e.presence.priority.0),
                show_for_presence(&e.presence),
            )
        });
        let unavailable = Presence::unavailable();
        let p = best.map_or(&unavailable, |e| &e.presence);
        let base = self
            .users
            .get(local)
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
}

/// The `from`, `to` and `type` of a stanza, in one pass over its attributes.
pub(super) fn addressing(e: &Element) -> (Option<&str>, Option<&str>, Option<&str>) {
    let (mut from, mut to, mut kind) = (None, None, None);
    for ((ns, name), value) in e.attrs().iter() {
        if ns.is_none() {
            match name.as_str() {
                "from" => from = Some(value.as_str()),
                "to" => to = Some(value.as_str()),
                "type" => kind = Some(value.as_str()),
                _ => {}
            }
        }
    }
    (from, to, kind)
}

/// The XEP-0172 nick among a presence's payloads.
fn nick_of(payloads: &[Element]) -> Option<String> {
    payloads
        .iter()
        .find(|e| e.is("nick", xmpp_parsers::ns::NICK))
        .and_then(|e| Nick::try_from(e.clone()).ok())
        .map(|n| n.0)
}
