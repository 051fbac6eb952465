//! Persistence: the store's [`Subscription`] record written from a subscription's state, and
//! the state built again from a stored record at start ([`PresenceEngine::restore`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use xmpp_parsers::jid::BareJid;

use super::local::View;
use super::notifier::Watcher;
use super::subscriber::Outbound;
use super::{CSEQ_RESERVE, Key, PresenceEngine};
use crate::core::names;
use crate::core::presence::Received;
use crate::engine::{Output, common};
use crate::sip::message::Message;
use crate::sip::transaction::TxId;
use crate::store::{Approval, DialogRecord, Direction, DisplayName, SubState, Subscription};

impl PresenceEngine {
    pub(super) fn out_record(&self, now: Instant, key: &Key) -> Option<Subscription> {
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
            local_jid: key.local().to_owned(),
            remote_aor: key.remote().to_owned(),
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
            last_received: sub.last.as_ref().map(|d| d.to_bytes()),
            display_name: sub.name.clone(),
            updated_unix: now_unix,
        })
    }

    pub(super) fn in_record(&self, now: Instant, key: &Key) -> Option<Subscription> {
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
            local_jid: key.local().to_owned(),
            remote_aor: key.remote().to_owned(),
            dialog,
            expires_unix: self.unix(w.expires_at),
            state: if w.approval == Approval::Approved {
                SubState::Active
            } else {
                SubState::Pending
            },
            approval: w.approval,
            last_sent: w.sent.as_ref().map(|v| v.doc.as_bytes().to_vec()),
            last_received: None,
            display_name: w.name.clone(),
            updated_unix: now_unix,
        })
    }

    pub(super) fn persist_out(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.out_record(now, key) {
            out.push(Output::Persist(Box::new(r)));
        }
    }

    /// [`Output::PersistLazy`] of outbound subscription `key`: a new display name.
    pub(super) fn persist_out_lazy(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.out_record(now, key) {
            out.push(Output::PersistLazy(Box::new(r)));
        }
    }

    pub(super) fn persist_in(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.in_record(now, key) {
            out.push(Output::Persist(Box::new(r)));
        }
    }

    /// [`Output::PersistLazy`] of watcher `key`: refreshes and dialog replacements, which LCS
    /// repeats anyway.
    pub(super) fn persist_in_lazy(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.in_record(now, key) {
            out.push(Output::PersistLazy(Box::new(r)));
        }
    }

    /// The runner could not write these records (`failed`; `queued`: this engine's requests
    /// not sent yet). A watcher's NOTIFY never goes out on the strength of a write of its
    /// dialog that failed: the store may still hold a lower CSeq reservation (a restarted
    /// bridge would repeat the NOTIFY's CSeq, RFC 3261 §12.2.2), or not the state the NOTIFY
    /// announces. Such a NOTIFY still waiting is withdrawn (its transactions returned) and owed
    /// again after the backoff, and the next NOTIFY writes a reservation first.
    pub fn store_failed(
        &mut self,
        now: Instant,
        failed: &[Output],
        queued: &[(TxId, &Message)],
    ) -> Vec<TxId> {
        let mut withdrawn = Vec::new();
        for output in failed {
            let Output::Persist(sub) = output else {
                continue;
            };
            let Some(record) = sub
                .dialog
                .as_ref()
                .filter(|_| sub.direction == Direction::Inbound)
            else {
                continue;
            };
            let key = super::key(sub.local_jid.clone(), sub.remote_aor.clone());
            let Some(w) = self.inbound.get_mut(&key) else {
                continue;
            };
            let same = w.dialog.as_ref().is_some_and(|d| {
                d.id.call_id == record.call_id && d.id.local_tag == record.local_tag
            });
            if !same {
                continue;
            }
            // Unknown what the store holds: the next NOTIFY reserves again first.
            w.cseq_reserved = 0;
            let Some(tx) = w.in_flight.filter(|tx| queued.iter().any(|(q, _)| q == tx)) else {
                continue;
            };
            w.in_flight = None;
            w.dirty = true;
            w.failures = w.failures.saturating_add(1);
            let failures = w.failures;
            let delay = self.backoff(failures.saturating_sub(1));
            if let Some(w) = self.inbound.get_mut(&key) {
                w.retry_at = Some(now + delay);
            }
            self.purposes.remove(&tx);
            withdrawn.push(tx);
        }
        self.rearm();
        withdrawn
    }
}

impl Outbound {
    /// An outbound subscription taken up from its stored record, or `None` if the record is
    /// no subscription to take up (its approval was denied or never asked for). It has no
    /// dialog (the old one died with the old process's connections) and asks for
    /// `expires_secs`; the caller schedules its fresh SUBSCRIBE (`next_at`).
    pub(super) fn from_record(
        s: &Subscription,
        local: BareJid,
        remote_jid: BareJid,
        expires_secs: u32,
    ) -> Option<Outbound> {
        if matches!(s.approval, Approval::Denied | Approval::None) {
            return None;
        }
        Some(Outbound {
            established: s.approval == Approval::Approved,
            last: s
                .last_received
                .as_deref()
                .and_then(Received::from_bytes)
                .map(Box::new),
            name: restored_name(s),
            ..Outbound::new(local, remote_jid, s.approval, expires_secs, None)
        })
    }
}

impl Watcher {
    /// A watcher taken up from its stored record at `now` (`now_unix`), or `None` if the
    /// record has expired or was denied. Its dialog is kept unless it is past `max_age` or
    /// cannot be written into a request (`common::dialog_from_record`: the watcher then waits for
    /// LCS to subscribe again, as for a dialog past its age; display names are cleaned, and the
    /// record written back cleaned), and detached (its NOTIFYs go by
    /// domain until the first connection that carries one or a request of LCS in the dialog
    /// binds it: the old process's connection died with it); its local CSeq resumes above the stored one, which
    /// is above every one the last process used in the dialog, with a fresh reservation
    /// (`Watcher::cseq_reserved`) the caller stores before anything is sent. An approved one
    /// owes a NOTIFY with the current state; the caller schedules it (`retry_at`). Its `view`
    /// is the user's blank one: what the server tells this watcher comes again, as the answer
    /// to a probe from its own JID (the stored `last_sent` is that watcher's own last
    /// document, not read back).
    pub(super) fn from_record(
        s: &Subscription,
        remote_jid: BareJid,
        view: Arc<View>,
        (now, now_unix): (Instant, u64),
        max_age: Duration,
    ) -> Option<Watcher> {
        if s.expires_unix <= now_unix || s.approval == Approval::Denied {
            return None;
        }
        let left = Duration::from_secs(s.expires_unix - now_unix);
        let (dialog, deadline) = match &s.dialog {
            Some(r) => {
                let age = Duration::from_secs(now_unix.saturating_sub(r.created_unix));
                match max_age.checked_sub(age) {
                    Some(rest) if !rest.is_zero() => match common::dialog_from_record(r, now) {
                        Some(d) => (Some(Box::new(d)), now + rest),
                        None => (None, now),
                    },
                    _ => (None, now),
                }
            }
            None => (None, now),
        };
        let stored_cseq = s.dialog.as_ref().map_or(0, |r| r.local_cseq);
        Some(Watcher {
            remote_jid,
            approval: s.approval,
            dialog,
            detached: true,
            expires_at: now + left,
            dialog_deadline: deadline,
            last_notify: Some(now),
            dirty: s.approval == Approval::Approved,
            in_flight: None,
            retry_at: None,
            failures: 0,
            sent: None,
            view,
            blind: false,
            cseq_reserved: stored_cseq.saturating_add(CSEQ_RESERVE),
            // Records written before names were kept: the SUBSCRIBE's From display name.
            name: restored_name(s).or_else(|| {
                let raw = s.dialog.as_ref()?.remote_display.as_deref()?;
                Some(DisplayName {
                    text: names::display_name(raw)?,
                    from_pidf: false,
                })
            }),
        })
    }
}

/// A stored display name, cleaned again (`core::names`): a store is read as peer input.
fn restored_name(s: &Subscription) -> Option<DisplayName> {
    let n = s.display_name.as_ref()?;
    Some(DisplayName {
        text: names::display_name(&n.text)?,
        from_pidf: n.from_pidf,
    })
}
