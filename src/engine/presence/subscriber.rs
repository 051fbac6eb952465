//! The subscriber side (RFC 6665 §4.1, RFC 3856): an XMPP user's subscription to an LCS user,
//! carried by the bridge's outbound SUBSCRIBE dialog. The user's `subscribe`, `unsubscribe`
//! and `probe` in; SUBSCRIBE out (initial, refresh, replacement, `Expires: 0`); NOTIFY and
//! BENOTIFY in, as `subscribed`, presence and `unsubscribed`; the retry rules of RFC 6665
//! §4.1.3 with exponential backoff after failures and terminations.

use std::time::{Duration, Instant};

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::presence::{Presence, Type};

use super::{Failure, Key, PIDF_TYPE, PresenceEngine, Purpose, Side, new_name, stanza};
use crate::core::ms_presence::{self, CATEGORIES_TYPE, CATEGORY_LIST_TYPE, MSRTC_PIDF_TYPE};
use crate::core::names::NameSource;
use crate::core::pidf;
use crate::core::presence::Received;
use crate::edge::core::Route;
use crate::engine::Output;
use crate::engine::common::{self, host_of};
use crate::sip::builder::RequestSpec;
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::message::{Message, Method};
use crate::sip::status::{self, Reject};
use crate::sip::transaction::{ConnId, TxId};
use crate::store::{Approval, Direction, DisplayName};
use crate::xmpp::build;

/// An XMPP user's subscription to an LCS user.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) local_jid: BareJid,
    pub(super) remote_jid: BareJid,
    pub(super) approval: Approval,
    /// NOTIFY `active` seen on the current dialog.
    pub(super) active: bool,
    /// A 2xx to some SUBSCRIBE has been seen (errors before that go back to the user).
    pub(super) established: bool,
    /// Boxed: the maps hold many idle entries, and a B-tree node is sized by its values.
    pub(super) dialog: Option<Box<Dialog>>,
    /// When the dialog must have been replaced.
    pub(super) dialog_deadline: Option<Instant>,
    /// The SUBSCRIBE in flight, and the request when it is an initial (out-of-dialog) one.
    pub(super) pending: Option<(TxId, Option<Box<Message>>)>,
    /// Expires to ask for (raised by a 423's Min-Expires).
    pub(super) expires_secs: u32,
    pub(super) expires_at: Option<Instant>,
    /// Refresh or retry time.
    pub(super) next_at: Option<Instant>,
    /// Retries since the last NOTIFY `active`.
    pub(super) attempts: u32,
    /// The last document received (enhanced ones merged), for probes.
    pub(super) last: Option<Box<Received>>,
    /// The SUBSCRIBEs of the current attempt offer Microsoft enhanced presence
    /// ([`enhanced_accept`]); decided by the initial one.
    pub(super) enhanced: bool,
    /// The last presence sent to the watcher was available.
    pub(super) shown_available: bool,
    /// The `id` of the user's `subscribe`, for an error reply.
    pub(super) stanza_id: Option<String>,
    /// The contact's display name (docs/mapping.md §6), from its NOTIFYs.
    pub(super) name: Option<DisplayName>,
}

impl Outbound {
    /// A subscription with no dialog yet, asking for `expires_secs`.
    pub(super) fn new(
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
            enhanced: false,
            shown_available: false,
            stanza_id,
            name: None,
        }
    }

    /// When the subscription next has work (refresh, retry, replacement); none while a
    /// SUBSCRIBE is in flight.
    pub(super) fn due(&self) -> Option<Instant> {
        if self.pending.is_some() {
            None
        } else {
            self.next_at
        }
    }
}

impl PresenceEngine {
    /// The timer of outbound subscription `key`: a refresh in the dialog, or a fresh SUBSCRIBE
    /// (a retry, or a dialog too old for one more period replaced).
    pub(super) fn subscription_timer(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let Some(sub) = self.outbound.get_mut(key) else {
            return;
        };
        sub.next_at = None;
        let expires = Duration::from_secs(u64::from(sub.expires_secs));
        let replace = sub.dialog_deadline.is_some_and(|d| now + expires >= d);
        let refresh = sub.dialog.as_ref().map(|d| d.is_confirmed() && !replace);
        match refresh {
            Some(true) => self.send_refresh(key, out),
            Some(false) => {
                // Too old for one more period (LCS's 24 h): end it and start a new one.
                if let Some(mut old) = sub.dialog.take() {
                    self.out_dialogs.remove(&old.id);
                    self.unsubscribe_in_dialog(&mut old, out);
                }
                self.send_initial(now, key, out);
            }
            None => self.send_initial(now, key, out),
        }
    }

    /// The dialogs on connection `conn` are gone with it (the profile keeps a dialog on the
    /// connection it was made on, so none can go on over another): each subscription is made
    /// again with a fresh SUBSCRIBE by domain, paced at `restore_rate` with the engine's other
    /// paced requests (the first at once), so that a partner's edge that drops a connection
    /// carrying many subscriptions does not get them all back in one burst. The user keeps
    /// seeing the contact's last presence until the new dialog's first NOTIFY.
    pub(super) fn subscriptions_lost(&mut self, now: Instant, conn: ConnId, out: &mut Vec<Output>) {
        let lost: Vec<Key> = self
            .outbound
            .iter()
            .filter(|(_, s)| s.dialog.as_ref().is_some_and(|d| d.conn == conn))
            .map(|(k, _)| k.clone())
            .collect();
        for key in lost {
            let at = self.next_request_slot(now);
            if at <= now {
                self.send_initial(now, &key, out);
                continue;
            }
            let Some(sub) = self.outbound.get_mut(&key) else {
                continue;
            };
            // Nothing more goes into the dead dialog (a refresh in flight on it is dropped);
            // the timer sends the fresh SUBSCRIBE at its turn.
            let dialog = sub.dialog.take();
            let pending = sub.pending.take();
            sub.active = false;
            sub.dialog_deadline = None;
            sub.next_at = Some(at);
            if let Some(d) = dialog {
                self.out_dialogs.remove(&d.id);
            }
            if let Some((tx, initial)) = pending {
                self.purposes.remove(&tx);
                if let Some(c) = initial.as_ref().and_then(|m| m.call_id().ok()) {
                    self.early.remove(c);
                }
            }
        }
    }

    pub(super) fn xmpp_subscribe(
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
                    if let Some(p) = sub.last.as_ref().and_then(|doc| {
                        doc.presence(
                            &self.table,
                            Jid::from(sub.remote_jid.clone()),
                            Jid::from(sub.local_jid.clone()),
                        )
                    }) {
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
        let sub = Outbound::new(
            local,
            remote_jid,
            Approval::Requested,
            self.expires_secs(),
            id,
        );
        self.start_subscription(now, key, sub, out);
    }

    /// A new outbound subscription: stored, then its SUBSCRIBE.
    fn start_subscription(&mut self, now: Instant, key: Key, sub: Outbound, out: &mut Vec<Output>) {
        self.outbound.insert(key.clone(), Box::new(sub));
        self.persist_out(now, &key, out);
        self.send_initial(now, &key, out);
    }

    pub(super) fn xmpp_unsubscribe(&mut self, key: &Key, out: &mut Vec<Output>) {
        let Some(mut sub) = self.forget_outbound(key, out) else {
            return;
        };
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

    /// Removes outbound subscription `key` from the engine and (durably, first) the store.
    fn forget_outbound(&mut self, key: &Key, out: &mut Vec<Output>) -> Option<Box<Outbound>> {
        let mut sub = self.outbound.remove(key)?;
        self.drop_out_tracking(&mut sub);
        out.push(Output::Forget {
            direction: Direction::Outbound,
            local: key.local().to_owned(),
            remote: key.remote().to_owned(),
        });
        Some(sub)
    }

    /// Removes a subscription's dialog and in-flight tracking from the indexes.
    pub(super) fn drop_out_tracking(&mut self, sub: &mut Outbound) {
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
    pub(super) fn unsubscribe_in_dialog(&mut self, dialog: &mut Dialog, out: &mut Vec<Output>) {
        let branch = self.branch();
        let contact = self.contact(dialog.local_uri());
        if let Ok(mut request) =
            dialog.next_request(Method::Subscribe, &self.via(), &branch, Some(&contact))
        {
            subscribe_headers(&mut request, 0, false, "", "");
            let tx = self.ids.next();
            self.purposes.insert(tx, Purpose::Final);
            out.push(Output::Request {
                tx,
                request,
                route: Route::Connection(dialog.conn),
            });
        }
    }

    pub(super) fn xmpp_probe(
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
            let expires_secs = self.expires_secs();
            let sub = Outbound::new(local, remote_jid, Approval::Approved, expires_secs, None);
            self.start_subscription(now, key, sub, out);
            return;
        }
        let Some(sub) = self.outbound.get(&key) else {
            return;
        };
        if sub.active && sub.dialog.is_some() {
            // While the subscription is active, the last NOTIFY is the current state.
            if let Some(p) = sub
                .last
                .as_ref()
                .and_then(|doc| doc.presence(&self.table, Jid::from(sub.remote_jid.clone()), from))
            {
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

    /// A fresh out-of-dialog SUBSCRIBE for outbound subscription `key` (the old dialog, if
    /// any, is dropped from the indexes: its NOTIFYs will get 481).
    pub(super) fn send_initial(&mut self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        let enhanced = self.settings.enhanced && !self.pidf_only(now, &host_of(key.remote()));
        let call_id = format!("{}@{}", self.token(), self.settings.public_fqdn);
        let (branch, tag) = (self.branch(), self.token());
        let local_uri = self.local_uri(key.local());
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
            request_uri: key.remote(),
            via_sent_by: &via,
            branch: &branch,
            from_display: None,
            from_uri: &local_uri,
            from_tag: &tag,
            to_display: None,
            to_uri: key.remote(),
            to_tag: None,
            call_id: &call_id,
            cseq: 1,
            contact: Some(&contact),
            route: &[],
        }
        .build();
        sub.enhanced = enhanced;
        subscribe_headers(
            &mut request,
            sub.expires_secs,
            enhanced,
            &local_uri,
            key.remote(),
        );
        let tx = self.ids.next();
        sub.pending = Some((tx, Some(Box::new(request.clone()))));
        self.purposes.insert(tx, Purpose::Subscribe(key.clone()));
        self.early.insert(call_id, key.clone());
        out.push(Output::Request {
            tx,
            request,
            route: Route::Domain(host_of(key.remote())),
        });
    }

    /// An in-dialog refresh of outbound subscription `key`.
    pub(super) fn send_refresh(&mut self, key: &Key, out: &mut Vec<Output>) {
        let branch = self.branch();
        let via = self.via();
        let contact = self.contact(&self.local_uri(key.local()));
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
        let local_uri = dialog.local_uri().to_owned();
        subscribe_headers(
            &mut request,
            sub.expires_secs,
            sub.enhanced,
            &local_uri,
            key.remote(),
        );
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
    pub(super) fn retry_later(
        &mut self,
        now: Instant,
        key: &Key,
        delay: Duration,
        out: &mut Vec<Output>,
    ) {
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
    pub(super) fn refused(&mut self, key: &Key, out: &mut Vec<Output>) {
        let Some(sub) = self.forget_outbound(key, out) else {
            return;
        };
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

    pub(super) fn subscribe_outcome(
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
                                self.out_dialogs.insert(&d.id, key.clone());
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
                if initial.is_some() && sub.enhanced && refuses_enhanced(f.status) {
                    // The peer does not take the enhanced offer: PIDF only, at once, and
                    // remembered for its domain.
                    self.remember_pidf_only(now, host_of(key.remote()));
                    self.send_initial(now, key, out);
                    return;
                }
                if f.status == status::INTERVAL_TOO_BRIEF {
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
                            local: key.local().to_owned(),
                            remote: key.remote().to_owned(),
                        });
                        let mut request = Presence::subscribe()
                            .with_from(sub.local_jid.clone())
                            .with_to(sub.remote_jid.clone());
                        request.id = sub.stanza_id.clone();
                        out.push(common::bounce(
                            build::presence(request),
                            f.condition,
                            &f.text,
                        ));
                    }
                    return;
                }
                if matches!(f.status, status::FORBIDDEN | status::DECLINE) {
                    self.refused(key, out);
                    return;
                }
                let attempts = sub.attempts;
                // A peer's Retry-After (503, RFC 3261 §21.5.4) is a floor for the retry.
                let delay = self
                    .backoff(attempts)
                    .max(f.retry_after.unwrap_or_default());
                self.retry_later(now, key, delay, out);
            }
        }
    }

    /// A NOTIFY or BENOTIFY for an outbound subscription.
    pub(super) fn on_notify(
        &mut self,
        now: Instant,
        tx: TxId,
        conn: ConnId,
        request: &Message,
        benotify: bool,
        out: &mut Vec<Output>,
    ) {
        // BENOTIFY expects no response ([MS-SIP] §3.5).
        let refuse = |engine: &mut Self, out: &mut Vec<Output>, reject: Reject| {
            if !benotify {
                let response = engine.refuse(request, &reject);
                out.push(Output::Respond { tx, response });
            }
        };
        let no_subscription =
            || Reject::new(status::CALL_DOES_NOT_EXIST).reason("Subscription does not exist");
        let Some(id) = DialogId::of_incoming_request(request) else {
            return refuse(self, out, no_subscription());
        };
        let outbound = &self.outbound;
        let known = self.out_dialogs.get(&id, |k| {
            outbound
                .get(k)
                .and_then(|s| s.dialog.as_ref())
                .is_some_and(|d| d.id == id)
        });
        let key = match known {
            Some(k) => k,
            None => {
                // A NOTIFY before the SUBSCRIBE's 2xx (RFC 6665 §4.1.2.4) makes the dialog.
                let Some(key) = self.early.get(&id.call_id).cloned() else {
                    return refuse(self, out, no_subscription());
                };
                let Some(sub) = self.outbound.get_mut(&key) else {
                    return refuse(self, out, no_subscription());
                };
                let Some((_, Some(initial))) = &sub.pending else {
                    return refuse(self, out, no_subscription());
                };
                let ours = initial.from().ok().and_then(|f| f.tag().map(str::to_owned));
                if ours.as_deref() != Some(id.local_tag.as_str()) || sub.dialog.is_some() {
                    return refuse(self, out, no_subscription());
                }
                let cseq = initial.cseq().map(|c| c.number).unwrap_or(1);
                match Dialog::from_uas(request, &id.local_tag, cseq, conn, now) {
                    Ok(d) => {
                        self.out_dialogs.insert(&d.id, key.clone());
                        sub.dialog = Some(Box::new(d));
                        sub.dialog_deadline = Some(now + self.settings.dialog_max_age);
                    }
                    Err(e) => {
                        let reject = Reject::new(status::BAD_REQUEST).reason(e.to_string());
                        return refuse(self, out, reject);
                    }
                }
                key
            }
        };
        let Some(sub) = self.outbound.get_mut(&key) else {
            return refuse(self, out, no_subscription());
        };
        let early = sub.dialog.as_ref().is_some_and(|d| !d.is_confirmed());
        if let Some(d) = sub.dialog.as_mut() {
            if !early {
                if let Err(e) = d.accept_request(request) {
                    // RFC 3261 §12.2.2: a CSeq lower than the last one is answered 500.
                    let reject = Reject::new(status::SERVER_INTERNAL_ERROR).reason(e.to_string());
                    return refuse(self, out, reject);
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
            _ => {
                let reject =
                    Reject::new(status::BAD_REQUEST).reason("Missing or bad Subscription-State");
                return refuse(self, out, reject);
            }
        };
        // PIDF, and the Microsoft enhanced formats the bridge offers. A categories document
        // adds to the last one while the subscription is active (a NOTIFY after the first may
        // carry only the categories that changed); the first of a new subscription is its
        // whole state. Other and unreadable bodies are acknowledged and ignored.
        let body = request.body();
        let doc = match request.content_type() {
            Ok(Some(ct)) if !body.is_empty() => {
                if ct.is(PIDF_TYPE) {
                    pidf::parse(body).ok().map(Received::Pidf)
                } else if ct.is(CATEGORIES_TYPE) {
                    ms_presence::parse_categories(body).ok().map(|newer| {
                        let mut merged = match sub.last.as_deref() {
                            Some(Received::Ms(last)) if sub.active => last.clone(),
                            _ => ms_presence::MsPresence::default(),
                        };
                        merged.update(newer);
                        Received::Ms(merged)
                    })
                } else if ct.is(MSRTC_PIDF_TYPE) {
                    ms_presence::parse_msrtc_pidf(body).ok().map(Received::Ms)
                } else {
                    None
                }
            }
            _ => None,
        };
        let (remote_jid, local_jid) = (sub.remote_jid.clone(), sub.local_jid.clone());
        // The contact's name: its server's From display name, its own CIPID display name.
        let from_display = request
            .from()
            .ok()
            .and_then(|f| f.display_name.map(str::to_owned));
        let pidf_display = doc
            .as_ref()
            .and_then(|d| d.display_name().map(str::to_owned));
        let mut renamed: Option<Option<DisplayName>> = None;
        for (raw, source) in [
            (from_display.as_deref(), NameSource::From),
            (pidf_display.as_deref(), NameSource::Pidf),
        ] {
            if let Some(n) = new_name(&sub.name, raw, source) {
                let old = sub.name.replace(n);
                renamed.get_or_insert(old);
            }
        }
        let was_approved = sub.approval == Approval::Approved;
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
                    sub.shown_available = doc.is_available(&self.table);
                }
                if newly {
                    self.persist_out(now, &key, out);
                    out.push(stanza(
                        Presence::subscribed()
                            .with_from(remote_jid.clone())
                            .with_to(local_jid.clone()),
                    ));
                    let name = self.outbound.get(&key).and_then(|s| s.name.clone());
                    self.approved_fact(&local_jid, &remote_jid, name, out);
                }
                if let Some(p) = doc.as_ref().and_then(|doc| {
                    doc.presence(
                        &self.table,
                        Jid::from(remote_jid.clone()),
                        Jid::from(local_jid.clone()),
                    )
                }) {
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
        if let Some(old) = renamed {
            let sub = self.outbound.get(&key);
            let newly = !was_approved && sub.is_some_and(|s| s.approval == Approval::Approved);
            if let Some(new) = sub.and_then(|s| s.name.clone()) {
                // Kept with the subscription (the approval's synced write holds it already; a
                // name change is rare, and its loss in a crash costs one roster update).
                if !newly {
                    self.persist_out_lazy(now, &key, out);
                }
                // The roster follows unless the approval's fact just carried the name.
                let watcher_approved = self
                    .inbound
                    .get(&key)
                    .is_some_and(|w| w.approval == Approval::Approved);
                let follow = !newly && (was_approved || watcher_approved);
                self.renamed(
                    Side::Out,
                    &local_jid,
                    &remote_jid,
                    key.remote(),
                    old,
                    &new,
                    follow,
                    out,
                );
            }
        }
        if !benotify {
            let response = common::response(&mut self.rng, request, status::OK);
            out.push(Output::Respond { tx, response });
        }
    }

    /// RFC 6665 §4.1.3: how long to wait before subscribing again after `terminated`.
    pub(super) fn retry_delay(
        &self,
        key: &Key,
        reason: Option<&str>,
        retry_after: Option<u32>,
    ) -> Duration {
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
}

/// When to refresh a subscription granted for `secs` seconds: a minute early for long ones,
/// half-way for short ones (RFC 6665 §4.1.2.1 leaves the margin to the subscriber).
pub(super) fn refresh_after(secs: u32) -> Duration {
    let s = u64::from(secs);
    Duration::from_secs(if s > 240 { s - 60 } else { (s / 2).max(1) })
}

/// The `Accept` of a SUBSCRIBE offering Microsoft enhanced presence: a Microsoft server
/// answers in the first type it supports ([MS-PRES] §1.3.3), any other notifier in PIDF.
pub const ENHANCED_ACCEPT: &str =
    "application/msrtc-event-categories+xml, text/xml+msrtc.pidf, application/pidf+xml";

/// Statuses by which a peer refuses the enhanced offer (its `Accept` or its body): the bridge
/// then subscribes again at once with PIDF only, and remembers it for the domain.
pub(super) fn refuses_enhanced(status: u16) -> bool {
    matches!(status, 400 | 406 | 415 | 420 | 488)
}

/// Event, Accept, Expires and Supported of a presence SUBSCRIBE from `subscriber` to
/// `contact`; when `enhanced`, the enhanced `Accept` ([`ENHANCED_ACCEPT`]) and the
/// one-resource category subscription body naming `state`, `note` and `contactCard`
/// ([MS-PRES] §2.2.2.4.1), without `Require` (as pidgin-sipe's single-contact subscription,
/// `sipe_subscribe_presence_single`): a server that does not know the body type answers 415
/// and gets the PIDF-only form.
pub(super) fn subscribe_headers(
    request: &mut Message,
    expires: u32,
    enhanced: bool,
    subscriber: &str,
    contact: &str,
) {
    request.push_header("Event", "presence");
    request.push_header("Accept", if enhanced { ENHANCED_ACCEPT } else { PIDF_TYPE });
    request.push_header("Expires", &expires.to_string());
    request.push_header("Supported", "ms-benotify");
    if enhanced {
        let body = ms_presence::category_subscription(subscriber, contact);
        request.set_body(Some(CATEGORY_LIST_TYPE), body.into_bytes());
    }
}
