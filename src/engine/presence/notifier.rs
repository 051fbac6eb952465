//! The notifier side (RFC 6665 §4.2, RFC 3856): an LCS user watching an XMPP user, through a
//! SUBSCRIBE dialog LCS opened. SUBSCRIBE in (new watcher, refresh, `Expires: 0`, fetch), the
//! pending-subscription limits, approval from the local user's `subscribed`/`unsubscribed`,
//! and NOTIFY out, at most one per watcher per `min_notify_interval` (RFC 3856 §4.4) and one
//! in flight per dialog.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use xmpp_parsers::jid::BareJid;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::presence::{Presence, Type};

use super::local::View;
use super::{
    CSEQ_RESERVE, DEFAULT_EXPIRES_SECS, Failure, Key, MIN_EXPIRES_SECS, PENDING_RETRY_AFTER_SECS,
    PIDF_TYPE, PresenceEngine, Purpose, key, new_name, secs, stanza,
};
use crate::core::names::NameSource;
use crate::edge::core::Route;
use crate::engine::Output;
use crate::engine::common::{self, host_of};
use crate::sip::builder::name_addr;
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::message::{Message, Method};
use crate::sip::params::split_comma;
use crate::sip::status::{self, Reject};
use crate::sip::transaction::{ConnId, TxId};
use crate::store::{Approval, Direction, DisplayName};

/// The LCS watchers waiting for their local user's approval, counted per remote domain and per
/// local user, for the pending-subscription limits. Kept in step with the watchers from the
/// keys each call touched ([`PresenceEngine::rearm`]), so no path that changes an approval
/// can forget it.
#[derive(Debug, Default)]
pub(super) struct Pending {
    keys: std::collections::HashSet<Key>,
    by_domain: HashMap<String, usize>,
    by_user: HashMap<String, usize>,
}

impl Pending {
    /// The remote domain of a key (the AOR's host).
    pub(super) fn domain(key: &Key) -> &str {
        key.remote().rsplit_once('@').map_or("", |(_, host)| host)
    }

    pub(super) fn set(&mut self, key: &Key, pending: bool) {
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
            (&mut self.by_user, key.local()),
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

    pub(super) fn of_domain(&self, key: &Key) -> usize {
        self.by_domain.get(Self::domain(key)).copied().unwrap_or(0)
    }

    pub(super) fn of_user(&self, key: &Key) -> usize {
        self.by_user.get(key.local()).copied().unwrap_or(0)
    }
}

/// An LCS user watching an XMPP user.
#[derive(Debug)]
pub(super) struct Watcher {
    pub(super) remote_jid: BareJid,
    pub(super) approval: Approval,
    pub(super) dialog: Option<Box<Dialog>>,
    /// Taken up from the store and not yet carried by a connection (the old process's died
    /// with it): its NOTIFYs go by domain, and the first connection that carries an answer to
    /// one, or a request of LCS in the dialog, binds the dialog. A bound dialog never moves:
    /// when its connection is lost it ends ([`PresenceEngine::watchers_lost`]).
    pub(super) detached: bool,
    pub(super) expires_at: Instant,
    pub(super) dialog_deadline: Instant,
    pub(super) last_notify: Option<Instant>,
    /// A NOTIFY with the current state is owed.
    pub(super) dirty: bool,
    pub(super) in_flight: Option<TxId>,
    pub(super) retry_at: Option<Instant>,
    pub(super) failures: u32,
    /// The view whose document the last `active` NOTIFY carried (an identical document is
    /// not sent twice; the store's `last_sent`).
    pub(super) sent: Option<Arc<View>>,
    /// What the XMPP server has addressed to this watcher of the user's presence, aggregated
    /// (shared with every watcher told the same).
    pub(super) view: Arc<View>,
    /// The last `active` NOTIFY was sent before the local user's presence was known (an
    /// approval right after login, before the server's presence to the contact arrived): the
    /// first known state goes out at once instead of after the interval.
    pub(super) blind: bool,
    /// The dialog's local CSeq the store holds (the record's `local_cseq`): no NOTIFY goes out
    /// with a CSeq above it. When the next one would, a synced write first raises it by
    /// [`CSEQ_RESERVE`]. A restarted bridge resumes the dialog from the stored value, so it
    /// never repeats a CSeq the watcher has seen (RFC 3261 §12.2.2: a request whose CSeq is
    /// not above the last one is rejected with 500), however many NOTIFYs went out unstored.
    pub(super) cseq_reserved: u32,
    /// The watcher's display name (docs/mapping.md §6), from its SUBSCRIBEs' From.
    pub(super) name: Option<DisplayName>,
}

/// Subscription-State of an outgoing NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotifyState {
    Pending,
    Active,
    Terminated(&'static str),
}

/// Whether the SUBSCRIBE's `Accept` allows PIDF, the one format the bridge serves:
/// - no `Accept` header at all: yes (RFC 3856 §6.7, PIDF is the default);
/// - `Accept` present but empty: no (RFC 3261 §20.1: "An empty Accept header field means that
///   no formats are acceptable");
/// - otherwise the most specific range covering PIDF decides (`application/pidf+xml`, then
///   `application/*`, then `*/*`, RFC 7231 §5.3.2), and a range with `q=0` excludes it (RFC
///   7231 §5.3.1: "not acceptable"). Where PIDF stands in the list does not matter: Lync and
///   pidgin-sipe list `application/msrtc-event-categories+xml`, `text/xml+msrtc.pidf`,
///   `application/xpidf+xml` before it ([MS-PRES] §1.3.3 preference order).
pub(super) fn accepts_pidf(request: &Message) -> bool {
    let mut present = false;
    // (specificity, acceptable) of the most specific range covering PIDF so far.
    let mut best: Option<(u8, bool)> = None;
    for value in request.header_all("Accept") {
        present = true;
        for item in split_comma(value) {
            let mut parts = item.split(';');
            let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let specificity = match essence.as_str() {
                PIDF_TYPE => 3,
                "application/*" => 2,
                "*/*" => 1,
                _ => continue,
            };
            let refused = parts.any(|p| match p.split_once('=') {
                Some((k, v)) => {
                    k.trim().eq_ignore_ascii_case("q")
                        && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                }
                None => false,
            });
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, !refused));
            }
        }
    }
    !present || best.is_some_and(|(_, acceptable)| acceptable)
}

impl PresenceEngine {
    /// The timer of watcher `key`: expiry, dialog replacement, or an owed NOTIFY.
    pub(super) fn watcher_timer(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let Some(w) = self.inbound.get(key) else {
            return;
        };
        if w.expires_at <= now {
            // Not refreshed in time (RFC 6665 §4.2.2).
            out.push(Output::Forget {
                direction: Direction::Inbound,
                local: key.local().to_owned(),
                remote: key.remote().to_owned(),
            });
            self.send_notify(now, key, NotifyState::Terminated("timeout"), out);
            self.remove_watcher(key);
            return;
        }
        if w.dialog.is_some() && w.dialog_deadline <= now {
            // LCS re-subscribes in a new dialog (RFC 6665 "deactivated"); approval kept.
            self.send_notify(now, key, NotifyState::Terminated("deactivated"), out);
            if let Some(w) = self.inbound.get_mut(key) {
                if let Some(d) = w.dialog.take() {
                    self.in_dialogs.remove(&d.id);
                }
                if let Some(tx) = w.in_flight.take() {
                    self.purposes.remove(&tx);
                }
            }
            self.persist_in_lazy(now, key, out);
            return;
        }
        self.maybe_flush(now, key, out);
    }

    /// Connection `conn` is lost. The profile's connection affinity ("All messages within a
    /// given SIP dialog must be sent over the exact same connection") leaves the watchers'
    /// dialogs on it nothing to carry their NOTIFYs: each one ends here, locally (no NOTIFY,
    /// not even a final one, can reach LCS in it; a NOTIFY in flight is forgotten, and a
    /// request LCS still sends in the dialog gets 481). The watcher itself, and its user's
    /// approval, are kept until its expiry, with the stored record rewritten without the dialog:
    /// when LCS subscribes again, in a new dialog, it is answered and told the current state at
    /// once, without asking the user again. A watcher taken up from the store and not yet bound
    /// to a connection is not on this one.
    pub(super) fn watchers_lost(&mut self, now: Instant, conn: ConnId, out: &mut Vec<Output>) {
        let lost: Vec<Key> = self
            .inbound
            .iter()
            .filter(|(_, w)| !w.detached && w.dialog.as_ref().is_some_and(|d| d.conn == conn))
            .map(|(k, _)| k.clone())
            .collect();
        if !lost.is_empty() {
            info!(
                conn,
                domain = %crate::engine::common::domains_of(lost.iter().map(|k| k.remote())),
                watchers = lost.len(),
                "presence watchers' dialogs on a lost connection ended locally"
            );
        }
        for key in lost {
            self.end_dialog_locally(now, &key, out);
        }
    }

    /// Ends the dialog of watcher `key` without a request (no connection may carry one): the
    /// watcher and its approval stay until its expiry, waiting for a new SUBSCRIBE, and its
    /// record is rewritten without the dialog.
    fn end_dialog_locally(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        let Some(d) = w.dialog.take() else {
            return;
        };
        let in_flight = w.in_flight.take();
        w.retry_at = None;
        w.failures = 0;
        self.in_dialogs.remove(&d.id);
        if let Some(tx) = in_flight {
            self.purposes.remove(&tx);
        }
        self.persist_in_lazy(now, key, out);
    }

    pub(super) fn xmpp_subscribed(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        if w.approval == Approval::Approved {
            return;
        }
        w.approval = Approval::Approved;
        let probe = (!w.view.known).then(|| w.remote_jid.clone());
        let (name, contact) = (w.name.clone(), w.remote_jid.clone());
        self.persist_in(now, key, out);
        self.send_notify(now, key, NotifyState::Active, out);
        if let Ok(local) = BareJid::new(key.local()) {
            self.approved_fact(&local, &contact, name, out);
        }
        // Nothing addressed to this watcher yet: the server sends the user's presence to a
        // contact it approves (RFC 6121 §3.1.5), but not always when it answered for the user
        // (an approval given before, §3.1.3). A probe from the watcher's JID is answered with
        // what this watcher may see (§4.3.2); a repeat changes nothing.
        if let (Some(from), Ok(to)) = (probe, BareJid::new(key.local())) {
            out.push(stanza(Presence::probe().with_from(from).with_to(to)));
        }
    }

    pub(super) fn xmpp_unsubscribed(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        self.end_watcher(now, key, "rejected", out);
    }

    /// Ends LCS watcher `key`: forgotten, and a NOTIFY `terminated` with `reason` (RFC 6665
    /// §4.2.2).
    pub(super) fn end_watcher(
        &mut self,
        now: Instant,
        key: &Key,
        reason: &'static str,
        out: &mut Vec<Output>,
    ) {
        if !self.inbound.contains_key(key) {
            return;
        }
        out.push(Output::Forget {
            direction: Direction::Inbound,
            local: key.local().to_owned(),
            remote: key.remote().to_owned(),
        });
        self.send_notify(now, key, NotifyState::Terminated(reason), out);
        self.remove_watcher(key);
    }

    pub(super) fn notify_outcome(
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
            Err(f) if f.status == status::CALL_DOES_NOT_EXIST => {
                // RFC 6665 §4.2.2: the subscriber no longer has it.
                out.push(Output::Forget {
                    direction: Direction::Inbound,
                    local: key.local().to_owned(),
                    remote: key.remote().to_owned(),
                });
                self.remove_watcher(key);
                return;
            }
            Err(_) => {
                // Tried again after the backoff on the same route: a bound dialog stays on its
                // connection (its loss ends it, `watchers_lost`).
                w.failures = w.failures.saturating_add(1);
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

    /// An out-of-dialog SUBSCRIBE from LCS: a new watcher, or a known one in a new dialog.
    pub(super) fn new_watcher(
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
        let malformed = |e: &dyn std::fmt::Display| {
            refuse(Reject::new(status::BAD_REQUEST).reason(e.to_string()))
        };
        if !accepts_pidf(request) {
            // RFC 6665 §3.1.3, RFC 3261 §21.4.7: 406 says what we can send.
            return out.push(refuse(
                Reject::new(status::NOT_ACCEPTABLE).header("Accept", PIDF_TYPE),
            ));
        }
        let parties = common::parties(&self.book, &self.errors, request);
        let (local, remote_jid, remote_aor, display) = match parties {
            Ok(p) => (p.local, p.remote, p.remote_aor, p.display),
            Err(reject) => return out.push(refuse(reject)),
        };
        let expires = match request.expires() {
            Ok(e) => e.unwrap_or(DEFAULT_EXPIRES_SECS),
            Err(e) => return out.push(malformed(&e)),
        };
        if expires != 0 && expires < MIN_EXPIRES_SECS {
            return out.push(refuse(too_brief()));
        }
        let mut dialog = match Dialog::from_uas(request, &tag, 0, conn, now) {
            Ok(d) => d,
            Err(e) => return out.push(malformed(&e)),
        };
        let local_uri = dialog.local_uri().to_owned();
        let contact = self.contact(&local_uri);
        let key = key(local.to_string(), remote_aor);
        if expires == 0 {
            // A fetch (RFC 6665 §4.4.3): the state now, then terminated. Stored nothing.
            let mut r = Message::response_to(request, status::ACCEPTED, None, Some(&tag));
            r.push_header("Expires", "0");
            r.push_header("Contact", &name_addr(None, &contact, &[]));
            out.push(Output::Respond { tx, response: r });
            dialog.confirm();
            let body = self
                .inbound
                .get(&key)
                .filter(|w| w.approval == Approval::Approved)
                .map(|w| w.view.doc.clone());
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
                    watcher = %key.remote(),
                    user = %key.local(),
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
                return out.push(refuse(
                    Reject::new(status::SERVICE_UNAVAILABLE)
                        .reason(reason)
                        .retry_after(PENDING_RETRY_AFTER_SECS),
                ));
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
        self.in_dialogs.insert(&dialog.id, key.clone());
        dialog.confirm();
        let view = self.blank_view(key.local());
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
            sent: None,
            view,
            blind: false,
            cseq_reserved: 0,
            name: None,
        }));
        w.cseq_reserved = dialog.local_cseq().saturating_add(CSEQ_RESERVE);
        w.dialog = Some(Box::new(dialog));
        self.index_watcher(&key);
        let Some(w) = self.inbound.get_mut(&key) else {
            return;
        };
        w.detached = false;
        w.expires_at = now + Duration::from_secs(u64::from(granted));
        w.dialog_deadline = deadline;
        w.in_flight = None;
        w.retry_at = None;
        w.failures = 0;
        w.sent = None;
        let renamed =
            new_name(&w.name, display.as_deref(), NameSource::From).map(|n| w.name.replace(n));
        let name = w.name.clone();
        self.persist_in(now, &key, out);
        if approval != Approval::Approved {
            // XEP-0100: the gateway asks on the legacy user's behalf (RFC 6121 §3.1.3: the
            // server answers by itself when the user already approved).
            out.push(stanza(subscribe_request(
                remote_jid.clone(),
                local.clone(),
                name.as_ref().map(|n| n.text.clone()),
            )));
        }
        if let (Some(old), Some(new)) = (renamed, &name) {
            let approved = approval == Approval::Approved;
            self.renamed_facts(&local, &remote_jid, key.remote(), old, new, approved, out);
        }
        let mut r = Message::response_to(request, status::ACCEPTED, None, Some(&tag));
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
    pub(super) fn watcher_refresh(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        id: &DialogId,
        request: &Message,
        out: &mut Vec<Output>,
    ) {
        let inbound = &self.inbound;
        let known = self.in_dialogs.get(id, |k| {
            inbound
                .get(k)
                .and_then(|w| w.dialog.as_ref())
                .is_some_and(|d| d.id == *id)
        });
        let Some(key) = known else {
            let reject =
                Reject::new(status::CALL_DOES_NOT_EXIST).reason("Subscription does not exist");
            let response = self.refuse(request, &reject);
            return out.push(Output::Respond { tx, response });
        };
        let expires = request
            .expires()
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_EXPIRES_SECS);
        let max = secs(self.settings.expires).max(MIN_EXPIRES_SECS);
        let contact = self.contact(&self.local_uri(key.local()));
        let Some(w) = self.inbound.get_mut(&key) else {
            return;
        };
        let Some(dialog) = w.dialog.as_mut() else {
            return;
        };
        // In the dialog: the request's To tag is ours already.
        let refuse = |reject: Reject| Output::Respond {
            tx,
            response: reject.response_to(request, None),
        };
        if !w.detached && dialog.conn != conn && expires != 0 {
            // A refresh on another connection than its dialog's: the dialog cannot follow it
            // (the profile's connection affinity), so it ends here, and the 481 makes LCS
            // subscribe anew (RFC 6665 §4.1.2.2), in a dialog of that connection; the approval
            // is kept. (An unsubscribe is taken wherever it comes: it ends the watcher.)
            out.push(refuse(
                Reject::new(status::CALL_DOES_NOT_EXIST).reason("Subscription does not exist"),
            ));
            self.end_dialog_locally(now, &key, out);
            return;
        }
        if let Err(e) = dialog.accept_request(request) {
            // RFC 3261 §12.2.2: a CSeq lower than the last one is answered 500.
            let reject = Reject::new(status::SERVER_INTERNAL_ERROR).reason(e.to_string());
            return out.push(refuse(reject));
        }
        if w.detached {
            // Taken up from the store: the dialog lives on this connection now.
            w.detached = false;
            dialog.conn = conn;
        }
        if expires != 0 && expires < MIN_EXPIRES_SECS {
            return out.push(refuse(too_brief()));
        }
        if expires == 0 {
            let remote_jid = w.remote_jid.clone();
            out.push(Output::Forget {
                direction: Direction::Inbound,
                local: key.local().to_owned(),
                remote: key.remote().to_owned(),
            });
            if let Ok(local) = BareJid::new(key.local()) {
                out.push(stanza(
                    Presence::new(Type::Unsubscribe)
                        .with_from(remote_jid)
                        .with_to(local),
                ));
            }
            let mut r = Message::response_to(request, status::OK, None, None);
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
        let display = request.from().ok().and_then(|f| f.display_name);
        let renamed = new_name(&w.name, display, NameSource::From).map(|n| w.name.replace(n));
        let (name, remote_jid) = (w.name.clone(), w.remote_jid.clone());
        self.persist_in_lazy(now, &key, out);
        if let (Some(old), Some(new), Ok(local)) = (renamed, &name, BareJid::new(key.local())) {
            let approved = state == NotifyState::Active;
            self.renamed_facts(&local, &remote_jid, key.remote(), old, new, approved, out);
        }
        let mut r = Message::response_to(request, status::OK, None, None);
        r.push_header("Expires", &granted.to_string());
        r.push_header("Contact", &name_addr(None, &contact, &[]));
        out.push(Output::Respond { tx, response: r });
        // RFC 6665 §4.2.1.2: a refresh is followed by a NOTIFY with the current state.
        self.send_notify(now, &key, state, out);
    }

    /// The configuration key of the pending-subscription limit a new watcher `key` would go
    /// beyond, if any.
    pub(super) fn pending_limit(&self, key: &Key) -> Option<&'static str> {
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

    pub(super) fn remove_watcher(&mut self, key: &Key) {
        if let Some(w) = self.inbound.remove(key) {
            if let Some(d) = w.dialog {
                self.in_dialogs.remove(&d.id);
            }
            if let Some(tx) = w.in_flight {
                self.purposes.remove(&tx);
            }
            self.unindex_watcher(key, w.remote_jid.as_str());
            self.user_gone(key.local());
        }
    }

    /// Builds and sends a NOTIFY in `dialog` with this Subscription-State and body.
    /// Returns the transaction.
    pub(super) fn notify_request(
        &mut self,
        dialog: &mut Dialog,
        detached: bool,
        state: &str,
        body: Option<Arc<str>>,
        out: &mut Vec<Output>,
    ) -> Option<TxId> {
        let branch = self.branch();
        // A user's change goes to all their watchers in a row: the Contact made once for them.
        if self.notify_contact.0 != dialog.local_uri() {
            let contact = self.contact(dialog.local_uri());
            self.notify_contact = (dialog.local_uri().to_owned(), contact);
        }
        let (via, contact) = (&*self.notify_via, &*self.notify_contact.1);
        let mut request = dialog
            .next_request(Method::Notify, via, &branch, Some(contact))
            .ok()?;
        request.push_header("Event", "presence");
        request.push_header("Subscription-State", state);
        if let Some(b) = body {
            request.set_body(Some(PIDF_TYPE), b.as_bytes().to_vec());
        }
        let route = if detached {
            // The dialog's connection is gone: the edge reuses or opens one for the domain.
            Route::Domain(host_of(dialog.remote_uri()))
        } else {
            Route::Connection(dialog.conn)
        };
        let tx = self.ids.next();
        out.push(Output::Request { tx, request, route });
        Some(tx)
    }

    /// A NOTIFY to watcher `key` (Active carries the current document).
    pub(super) fn send_notify(
        &mut self,
        now: Instant,
        key: &Key,
        state: NotifyState,
        out: &mut Vec<Output>,
    ) {
        let Some(w) = self.inbound.get_mut(key) else {
            return;
        };
        let sent = (state == NotifyState::Active).then(|| w.view.clone());
        let body = sent.as_ref().map(|v| v.doc.clone());
        let known = w.view.known;
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
        let tx = self.notify_request(&mut dialog, detached, &header, body, out);
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
            w.sent = sent;
            w.dirty = false;
            w.blind = !known;
        }
    }

    /// Sends the owed NOTIFY of watcher `key` if the interval allows it now.
    pub(super) fn maybe_flush(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
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
        if w.sent.as_ref().is_some_and(|s| s.same_doc(&w.view)) {
            if let Some(w) = self.inbound.get_mut(key) {
                w.dirty = false;
            }
            return;
        }
        self.send_notify(now, key, NotifyState::Active, out);
    }

    /// When watcher `w` next has work: expiry, dialog replacement, or an owed NOTIFY.
    pub(super) fn watcher_due(&self, w: &Watcher) -> Option<Instant> {
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
}

/// The `subscribe` the gateway sends on an LCS watcher's behalf, with the watcher's display
/// name (cleaned, `core::names`) as a XEP-0172 nick (§4.1: a subscription request is where a
/// nick belongs; never in presence broadcasts).
pub(super) fn subscribe_request(from: BareJid, to: BareJid, display: Option<String>) -> Presence {
    let mut p = Presence::subscribe().with_from(from).with_to(to);
    if let Some(name) = display.filter(|d| !d.trim().is_empty()) {
        p.payloads.push(Element::from(Nick(name)));
    }
    p
}

/// `423` with `Min-Expires` (RFC 6665 §4.2.1.1, RFC 3261 §21.4.17): an expiry below
/// [`MIN_EXPIRES_SECS`].
fn too_brief() -> Reject {
    Reject::new(status::INTERVAL_TOO_BRIEF).header("Min-Expires", MIN_EXPIRES_SECS.to_string())
}
