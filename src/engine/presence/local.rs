//! Local users' presence as the XMPP server sends it to the component: each user's available
//! resources aggregated into the profile's single-tuple PIDF document that watchers get.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use xmpp_parsers::jid::Jid;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::presence::Presence;

use super::{Key, PresenceEngine};
use crate::core::pidf::{self, PidfDocument};
use crate::core::presence::{pidf_for_presence, show_for_presence};
use crate::core::tables::Show;
use crate::engine::Output;
use crate::store::Approval;

/// One local user's presence as the XMPP server sent it to the component.
#[derive(Debug, Default)]
pub(super) struct LocalUser {
    /// Resource → its last available presence.
    pub(super) resources: BTreeMap<String, Presence>,
    /// XEP-0172 nick, from any of its presences.
    pub(super) nick: Option<String>,
    /// Some presence of the user has come (else `doc` is the closed document).
    pub(super) known: bool,
    /// The aggregate as the PIDF document sent to watchers ([`PresenceEngine::rendered`]);
    /// every watcher's `last_body` shares it.
    pub(super) doc: Arc<str>,
}

impl PresenceEngine {
    /// Whether `element` is an available presence equal (but for `to` and `id`) to the last
    /// one taken from the same full JID; if not, it becomes the last one (an unavailable one
    /// forgets it). The server sends a user's presence once per subscribed contact, so 49 of a change's
    /// 50 stanzas to 50 watchers are repeats: this skips their parsing and rendering (the
    /// outcome is the same: an unchanged document sends nothing).
    pub(super) fn repeated(&mut self, element: &Element) -> bool {
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

    /// Forgets what a local user's resources last said (before a probe whose answers tell it
    /// anew); the document sent to watchers stays until those answers come.
    pub(super) fn forget_resources(&mut self, bare: &str) {
        if let Some(user) = self.users.get_mut(bare) {
            user.resources.clear();
        }
        self.last_raw.remove(bare);
        let prefix = format!("{bare}/");
        let stale: Vec<String> = self
            .last_raw
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.last_raw.remove(&k);
        }
    }

    /// An available or unavailable presence of a local user (to a contact, or broadcast).
    pub(super) fn local_presence(
        &mut self,
        now: Instant,
        from: &Jid,
        p: &Presence,
        out: &mut Vec<Output>,
    ) {
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
    pub(super) fn rendered(&mut self, local: &str) -> Arc<str> {
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
    pub(super) fn current_doc(&self, local: &str) -> PidfDocument {
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
}
