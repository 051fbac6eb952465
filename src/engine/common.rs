//! What both engines build the same way: the parties of a request from LCS, this edge's Via
//! and Contact, fresh branches and To tags, the failure of a request that got no response, and
//! the error bounce of a stanza, stored dialogs taken up again and the wall clock the store's
//! times are read on.

use std::time::Instant;

use xmpp_parsers::jid::BareJid;
use xmpp_parsers::minidom::Element;

use super::Output;
use crate::core::address::AddressBook;
use crate::core::errors::Condition;
use crate::core::tables::ErrorTable;
use crate::core::xml_chars;
use crate::edge::core::Undeliverable;
use crate::random::SplitMix;
use crate::sip::builder::header_text;
use crate::sip::diagnostics::{self, Diagnostics};
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::message::{Message, find_forbidden_in_value};
use crate::sip::status::{self, Reject};
use crate::sip::uri::Uri;
use crate::store::DialogRecord;
use crate::xmpp::gateway::error_reply;

/// Text of the failure of a request that got no response in time (RFC 3261 §17.1 Timer B/F).
pub(crate) const NO_ANSWER: &str = "no answer from the LCS side";
/// Text of the failure of an INVITE that got a provisional response but no final one in time,
/// and was cancelled (RFC 3261 §9.1).
pub(crate) const INVITE_CANCELLED: &str =
    "the LCS side did not accept the chat session in time; the invitation was cancelled";
/// Text of the failure of a request whose connection was lost.
pub(crate) const CONNECTION_LOST: &str = "the connection to the LCS side was lost";

/// This edge's Via sent-by (TLS, port 5061).
pub(crate) fn via(public_fqdn: &str) -> String {
    format!("{public_fqdn}:5061")
}

/// A fresh Via branch with the RFC 3261 §8.1.1.7 magic cookie.
pub(crate) fn branch(rng: &mut SplitMix) -> String {
    // `z9hG4bK` and `SplitMix::token`'s 16 hex digits, in one allocation.
    use std::fmt::Write as _;
    let mut b = String::with_capacity(23);
    let _ = write!(b, "z9hG4bK{:016x}", rng.next());
    b
}

/// A response to `request` with a fresh To tag (RFC 3261 §8.2.6.2).
pub(crate) fn response(rng: &mut SplitMix, request: &Message, status: u16) -> Message {
    let tag = rng.token();
    Message::response_to(request, status, None, Some(&tag))
}

/// The refusal of `request` with a fresh To tag (RFC 3261 §8.2.6.2).
pub(crate) fn refuse(rng: &mut SplitMix, request: &Message, reject: &Reject) -> Message {
    let tag = rng.token();
    reject.response_to(request, Some(&tag))
}

/// The refusal for an XMPP-side stanza error `condition`, with the status `errors.toml`'s
/// `xmpp_to_sip` table gives it (RFC 7247 §7.1).
pub(crate) fn refuse_for(errors: &ErrorTable, condition: Condition) -> Reject {
    Reject::new(errors.status_for_condition(condition))
}

/// The XMPP condition for a request the edge could not send.
pub(crate) fn undeliverable_condition(errors: &ErrorTable, why: &Undeliverable) -> Condition {
    match why {
        Undeliverable::NoRoute { .. } => errors.condition_for_no_route(),
        Undeliverable::Unreachable { .. } => errors.condition_for_timeout(),
        Undeliverable::Blocked { .. } | Undeliverable::Local { .. } => Condition::Forbidden,
        Undeliverable::ConnectionGone { .. } => Condition::RecipientUnavailable,
        Undeliverable::Invalid { .. } => Condition::InternalServerError,
    }
}

/// The error reply to `stanza` (RFC 6120 §8.3) with this condition and text.
/// The condition of an error stanza's `<error/>` (RFC 6120 §8.3) and whether the sender said
/// it is worth waiting for (`type='wait'`); `None` when it names no defined condition.
pub(crate) fn error_of(payloads: &[Element]) -> Option<(Condition, bool)> {
    let error = payloads.iter().find(|p| p.name() == "error")?;
    let condition = error
        .children()
        .filter(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        .find_map(|c| c.name().parse::<Condition>().ok())?;
    Some((condition, error.attr("type") == Some("wait")))
}

pub(crate) fn bounce(stanza: Element, condition: Condition, text: &str) -> Output {
    Output::Stanza(error_reply(&stanza, condition, Some(text)))
}

/// The host of a `sip:` URI (lowercase), for `Route::Domain`.
pub(crate) fn host_of(uri: &str) -> String {
    match Uri::parse(uri) {
        Ok(Uri::Sip(u)) => u.host_str().to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The distinct hosts of some `sip:` AORs, sorted and comma-separated: the `domain` field of a
/// log line about several partners' dialogs (e.g. those a lost connection ended).
pub(crate) fn domains_of<'a>(aors: impl Iterator<Item = &'a str>) -> String {
    let mut hosts: Vec<String> = aors.map(host_of).filter(|h| !h.is_empty()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts.join(",")
}

/// This edge's Contact for a local user (`sip:user@public_fqdn;transport=tls`, the profile's
/// TLS-only rule), so in-dialog requests come back to the edge.
pub(crate) fn contact_for(public_fqdn: &str, local_uri: &str) -> String {
    let user = match Uri::parse(local_uri) {
        Ok(Uri::Sip(u)) => u.user.unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    if user.is_empty() {
        format!("sip:{public_fqdn};transport=tls")
    } else {
        format!("sip:{user}@{public_fqdn};transport=tls")
    }
}

/// The parties of a request from LCS: To must be a local user, From a federated address.
pub(crate) struct Parties {
    /// The local user (To).
    pub local: BareJid,
    /// The To URI as written (its user part goes into our Contact).
    pub local_uri: String,
    /// The LCS user's JID (From).
    pub remote: BareJid,
    /// The LCS user's AOR as the bridge writes it (the key both engines use).
    pub remote_aor: String,
    /// From's display name.
    pub display: Option<String>,
}

/// Maps To and From of a request from LCS through the address book; `Err` is the refusal to
/// answer with: `400` for a malformed To or From; a To that is no local user is
/// `item-not-found` and a From in a local domain `forbidden`, answered with `errors.toml`'s
/// `xmpp_to_sip` statuses (404 and 403 as shipped); `403` for a From that is no federated
/// address.
pub(crate) fn parties(
    book: &AddressBook,
    errors: &ErrorTable,
    request: &Message,
) -> Result<Parties, Reject> {
    let malformed =
        |e: crate::sip::error::ParseError| Reject::new(status::BAD_REQUEST).reason(e.to_string());
    let not_federated = |e: String| Reject::new(status::FORBIDDEN).reason(e);
    let to = request.to().map_err(malformed)?;
    let from = request.from().map_err(malformed)?;
    let local = book.uri_to_jid(to.uri).map_err(|e| {
        refuse_for(errors, Condition::ItemNotFound).reason(format!("No such user: {e}"))
    })?;
    if !book.is_local_domain(local.domain().as_str()) {
        return Err(refuse_for(errors, Condition::ItemNotFound)
            .reason(format!("{} is not a user here", to.uri)));
    }
    let remote = book
        .uri_to_jid(from.uri)
        .map_err(|e| not_federated(format!("Not a federated address: {e}")))?;
    if book.is_local_domain(remote.domain().as_str()) {
        return Err(
            refuse_for(errors, Condition::Forbidden).reason("Forbidden: From is a local address")
        );
    }
    let remote_aor = book
        .jid_to_sip(&remote)
        .map_err(|e| not_federated(e.to_string()))?
        .aor()
        .to_uri();
    Ok(Parties {
        local: local.to_bare(),
        local_uri: to.uri.to_owned(),
        remote: remote.to_bare(),
        remote_aor,
        display: from.display_name.map(str::to_owned),
    })
}

/// Local CSeq numbers one synced store write reserves in a stored dialog (both engines): no
/// request goes out with a CSeq above the stored one, and a synced write raises it by this
/// much before one would (one sync per this many requests in a dialog). A restarted bridge
/// continues above the stored value, so it never repeats a CSeq the peer has seen (RFC 3261
/// §12.2.2: the peer answers 500).
pub const CSEQ_RESERVE: u32 = 1000;

/// Highest local CSeq a stored dialog may hold to be taken up: its next reservation and the
/// requests under it stay below 2³¹ (RFC 3261 §8.1.1.5). A record above it was not written by
/// this bridge (a dialog gains about [`CSEQ_RESERVE`] per restart).
pub(crate) const MAX_STORED_CSEQ: u32 = (1 << 31) - 1 - CSEQ_RESERVE;

/// A stored dialog taken up again (after a restart), created at `created`, on no connection
/// (conn 0: the caller routes by domain until the peer is reached again), or `None` if it
/// cannot be written into a request: a Call-ID, tag, URI or route holding what a SIP header may
/// not carry (an older version accepted control characters in header values), one of them
/// empty (a dialog the bridge makes always has them: RFC 3261 §12.1 requires both tags and a
/// Contact), or a local CSeq above [`MAX_STORED_CSEQ`]. Display names are cleaned instead — they
/// are only shown — of what neither a stanza nor a SIP header may carry.
pub(crate) fn dialog_from_record(r: &DialogRecord, created: Instant) -> Option<Dialog> {
    let fields = [
        &r.call_id,
        &r.local_tag,
        &r.remote_tag,
        &r.local_uri,
        &r.remote_uri,
        &r.remote_target,
    ];
    if r.local_cseq > MAX_STORED_CSEQ
        || fields.iter().any(|f| f.is_empty())
        || fields
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
        created,
    ))
}

/// The wall clock at one instant, so that an engine can write and read the store's Unix times
/// without reading a clock itself.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub at: Instant,
    /// Unix seconds at `at`.
    pub unix: u64,
}

impl WallClock {
    /// Unix seconds at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix.saturating_add(d.as_secs()),
            None => self
                .unix
                .saturating_sub(self.at.duration_since(now).as_secs()),
        }
    }
}

/// The text of a failure response to one of the bridge's requests, for the error stanza its
/// XMPP sender gets: `"{status} {reason phrase}"`, and when the response carries Microsoft's
/// diagnostics ([MS-OCER] §2.2.1.1, §2.2.1.2) `": {reason} ({header} {code})"`, e.g.
/// `403 Forbidden: User disabled (ms-diagnostics-public 4141)`. Every part is peer text: cleaned
/// of what XML forbids and capped ([`diagnostics::MAX_TEXT_CHARS`] characters each). The
/// diagnostics are logged with the response (code, reason, source).
pub(crate) fn failure_text(status: u16, response: &Message, what: &str) -> String {
    let phrase = capped(response.reason().unwrap_or_default());
    let mut text = format!("{status} {phrase}");
    if let Some(d) = Diagnostics::of(response) {
        tracing::info!(
            status,
            request = what,
            header = d.header,
            code = d.code,
            reason = d.reason.as_deref().unwrap_or(""),
            source = d.source.as_deref().unwrap_or(""),
            "failure response with Microsoft diagnostics"
        );
        let reason = d.reason.as_deref().map(capped).unwrap_or_default();
        let reason = reason.trim();
        if reason.is_empty() {
            text.push_str(&format!(" ({} {})", d.header, d.code));
        } else {
            text.push_str(&format!(": {reason} ({} {})", d.header, d.code));
        }
    }
    text
}

/// Peer text on one line without what XML forbids, at most [`diagnostics::MAX_TEXT_CHARS`].
fn capped(s: &str) -> String {
    let cleaned = xml_chars::clean(s);
    let mut out: String = cleaned
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(diagnostics::MAX_TEXT_CHARS)
        .collect();
    if cleaned.chars().nth(diagnostics::MAX_TEXT_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod log_field_tests {
    use super::domains_of;

    #[test]
    fn domains_of_lists_each_partner_once() {
        let aors = [
            "sip:joe@contoso.com",
            "sip:ann@Fabrikam.com",
            "sip:bob@contoso.com",
            "not a uri",
        ];
        assert_eq!(domains_of(aors.into_iter()), "contoso.com,fabrikam.com");
        assert_eq!(domains_of(std::iter::empty()), "");
    }
}
