//! Persistence: the store's [`Subscription`] record written from a subscription's state, and
//! the state built again from a stored record at start ([`PresenceEngine::restore`]).

use std::time::{Duration, Instant};

use super::{Key, PresenceEngine};
use crate::core::pidf;
use crate::core::xml_chars;
use crate::engine::Output;
use crate::sip::builder::header_text;
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::message::find_forbidden_in_value;
use crate::store::{Approval, DialogRecord, Direction, SubState, Subscription};

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

    pub(super) fn persist_out(&self, now: Instant, key: &Key, out: &mut Vec<Output>) {
        if let Some(r) = self.out_record(now, key) {
            out.push(Output::Persist(Box::new(r)));
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
}

/// A stored dialog taken up again, or `None` if it cannot be: an older version accepted
/// control characters in header values, and a Call-ID, tag, URI or route holding one could
/// not be written into a request (the watcher then waits for LCS to subscribe again, as for a
/// dialog past its age). Display names are cleaned instead — they are only shown — of what
/// neither a stanza (the watcher's nick) nor a SIP header may carry; the record is written
/// back cleaned.
pub(super) fn restored_dialog(r: &DialogRecord, now: Instant) -> Option<Dialog> {
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
