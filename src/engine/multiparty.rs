//! Lync's multiparty IM and conference escalation, recognised so they are refused rather than
//! taken for a one-to-one chat (docs/mapping.md, "Multiparty conversations").
//!
//! A Lync/OCS client that adds a third person to a conversation invites every participant
//! into one session whose INVITEs carry `Require: com.microsoft.rtc-multiparty` (refused with
//! `420` by the edge's Require check, [`crate::edge::admission::check_require`]), and also
//! headers that say "multiparty" without any `Require`: `EndPoints` listing every participant,
//! `Roster-Manager` naming the one who keeps the roster, `TriggeredInvite: TRUE` (pidgin-sipe
//! `sipe-incoming.c` `process_incoming_invite` takes more than two EndPoints or
//! `TriggeredInvite: TRUE` as multiparty). Lync 2010 and later escalate to a conference with
//! an INVITE whose body is `application/ms-conf-invite+xml`. The bridge answers each of these
//! `488 Not Acceptable Here` with a `Warning` (RFC 3261 §20.43, code 399) saying why; nothing
//! of the conversation reaches the XMPP user. Inside an existing one-to-one session such a
//! re-INVITE is refused the same way and the session goes on as it was.

use crate::sip::message::Message;
use crate::sip::params::split_comma;
use crate::sip::status::{self, Reject};

/// Content type of Lync's roster-manager election INFO (`<RequestRM>`, `<SetRM>`).
pub(crate) const MIM_TYPE: &str = "application/x-ms-mim";

/// Content type of Lync's conference-escalation INVITE body.
pub(crate) const CONF_INVITE_TYPE: &str = "application/ms-conf-invite+xml";

/// The text of the `Warning` on every multiparty refusal.
pub(crate) const WARNING_TEXT: &str = "multiparty conversations are not supported by this gateway";

/// What made an INVITE multiparty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// An `EndPoints` header naming this many (more than two) parties.
    EndPoints(usize),
    /// A `Roster-Manager` header.
    RosterManager,
    /// `TriggeredInvite: TRUE`.
    TriggeredInvite,
    /// A body of type `application/ms-conf-invite+xml` (conference escalation).
    ConferenceInvite,
}

impl Signal {
    /// For the logs.
    pub(crate) fn describe(self) -> String {
        match self {
            Signal::EndPoints(n) => format!("EndPoints naming {n} parties"),
            Signal::RosterManager => "a Roster-Manager header".to_owned(),
            Signal::TriggeredInvite => "TriggeredInvite: TRUE".to_owned(),
            Signal::ConferenceInvite => format!("a {CONF_INVITE_TYPE} body"),
        }
    }
}

/// The essence of a Content-Type value (before any parameter), lower case; `""` when absent.
pub(crate) fn essence(request: &Message) -> String {
    request
        .header("Content-Type")
        .or_else(|| request.header("c"))
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether an INVITE (initial or re-INVITE) belongs to a multiparty conversation or a
/// conference, and by which sign. `None`: an ordinary one-to-one INVITE (an `EndPoints` of
/// the two parties alone is what Lync puts on those too).
pub(crate) fn signal(invite: &Message) -> Option<Signal> {
    if essence(invite) == CONF_INVITE_TYPE {
        return Some(Signal::ConferenceInvite);
    }
    let parties: usize = invite
        .header_all("EndPoints")
        .map(|v| split_comma(v).count())
        .sum();
    if parties > 2 {
        return Some(Signal::EndPoints(parties));
    }
    if invite.header("Roster-Manager").is_some() {
        return Some(Signal::RosterManager);
    }
    if invite
        .header_all("TriggeredInvite")
        .any(|v| v.trim().eq_ignore_ascii_case("TRUE"))
    {
        return Some(Signal::TriggeredInvite);
    }
    None
}

/// `488 Not Acceptable Here` with `Warning: 399 <public_fqdn> "<WARNING_TEXT>"` (RFC 3261
/// §20.43: warn-code, warn-agent, quoted warn-text; 399 is the miscellaneous warning).
pub(crate) fn refusal(public_fqdn: &str) -> Reject {
    Reject::new(status::NOT_ACCEPTABLE_HERE).header("Warning", warning(public_fqdn))
}

/// The `Warning` value of a multiparty refusal, this edge (`public_fqdn`) as warn-agent.
pub(crate) fn warning(public_fqdn: &str) -> String {
    format!("399 {public_fqdn} \"{WARNING_TEXT}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(extra: &str, content_type: &str) -> Message {
        let raw = format!(
            "INVITE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=1\r\nTo: <sip:alice@example.org>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Type: {content_type}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn multiparty_signs_are_recognised_and_a_two_party_endpoints_is_not_one() {
        let sdp = "application/sdp";
        assert_eq!(signal(&invite("", sdp)), None);
        // Lync puts EndPoints on one-to-one INVITEs too: the two parties.
        let two = "EndPoints: <sip:bob@contoso.com>, <sip:alice@example.org>\r\n";
        assert_eq!(signal(&invite(two, sdp)), None);
        // pidgin-sipe sipmsg.c's example, display names with commas kept whole.
        let three = "EndPoints: \"alice, alisson\" <sip:alice@atlanta.local>, <sip:bob@atlanta.local>;epid=ebca82d94d, <sip:carol@atlanta.local>\r\n";
        assert_eq!(signal(&invite(three, sdp)), Some(Signal::EndPoints(3)));
        assert_eq!(
            signal(&invite("Roster-Manager: sip:bob@contoso.com\r\n", sdp)),
            Some(Signal::RosterManager)
        );
        assert_eq!(
            signal(&invite("TriggeredInvite: true\r\n", sdp)),
            Some(Signal::TriggeredInvite)
        );
        assert_eq!(signal(&invite("TriggeredInvite: FALSE\r\n", sdp)), None);
        assert_eq!(
            signal(&invite("", "application/ms-conf-invite+xml; charset=utf-8")),
            Some(Signal::ConferenceInvite)
        );
        let r = refusal("sip.example.org").response_to(&invite("", sdp), Some("t"));
        assert_eq!(r.status(), Some(488));
        assert_eq!(
            r.header("Warning"),
            Some(
                "399 sip.example.org \"multiparty conversations are not supported by this gateway\""
            )
        );
    }
}
