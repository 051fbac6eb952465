//! SIP dialogs (RFC 3261 §12; RFC 6665 §4.1.2 and §4.2 for subscription dialogs), sans-IO.
//!
//! A [`Dialog`] is created on the UAC side from the request sent and the response that carried a
//! To tag (§12.1.2), or on the UAS side from the request received and the tag this side puts in
//! its response (§12.1.1). It keeps the dialog id, both CSeq counters, the route set
//! (Record-Route, reversed for the UAC), the remote target (Contact) and the connection the
//! dialog lives on, since the profile sends every message of a dialog over one connection
//! ("Connection affinity").
//!
//! Profile rules kept here:
//! - LCS puts no Record-Route on NOTIFY, so nothing may be sent inside a dialog before the
//!   initial transaction's final response has completed: a UAS dialog refuses
//!   [`Dialog::next_request`] until [`Dialog::confirm`] is called after the 2xx went out.
//! - LCS rejects messages in dialogs older than 24 h (header signatures): [`Dialog::replace_at`]
//!   gives the instant by which the layer above must replace the dialog (default age 23 h).

use std::time::{Duration, Instant};

use thiserror::Error;

use super::header::{Contact, HeaderKind, NameAddr};
use super::message::{Message, Method, itoa_buf};
use super::transaction::ConnId;
use super::uri::Uri;

/// Dialogs are replaced after this age unless configured otherwise (LCS: 24 h signatures).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(23 * 3600);

/// Call-ID plus the two tags, from this side's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogId {
    /// The id of the dialog an incoming request belongs to (its To tag is ours).
    pub fn of_incoming_request(m: &Message) -> Option<DialogId> {
        Some(DialogId {
            call_id: m.call_id().ok()?.to_owned(),
            local_tag: m.to().ok()?.tag()?.to_owned(),
            remote_tag: m.from().ok()?.tag()?.to_owned(),
        })
    }

    /// Whether `m` is an incoming request of this dialog: the same answer as comparing
    /// [`DialogId::of_incoming_request`] with `self`, without copying the three strings.
    pub fn is_of_incoming_request(&self, m: &Message) -> bool {
        let same = || -> Option<bool> {
            Some(
                m.call_id().ok()? == self.call_id
                    && m.to().ok()?.tag()? == self.local_tag
                    && m.from().ok()?.tag()? == self.remote_tag,
            )
        };
        same() == Some(true)
    }

    /// The id of the dialog an incoming response belongs to (its From tag is ours).
    pub fn of_incoming_response(m: &Message) -> Option<DialogId> {
        Some(DialogId {
            call_id: m.call_id().ok()?.to_owned(),
            local_tag: m.from().ok()?.tag()?.to_owned(),
            remote_tag: m.to().ok()?.tag()?.to_owned(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DialogError {
    #[error("no To tag in the response: it creates no dialog")]
    NoRemoteTag,
    #[error("no From tag in the request")]
    NoFromTag,
    #[error("no Contact: the remote target is unknown")]
    NoContact,
    #[error("{0}")]
    Malformed(String),
    #[error(
        "the initial transaction has not completed yet (profile: no mid-dialog request before it)"
    )]
    InitialTransactionPending,
    #[error("CSeq {got} is not above {last}: out of order")]
    CSeqOutOfOrder { got: u32, last: u32 },
    #[error("request does not belong to this dialog")]
    WrongDialog,
    #[error("no CSeq left in this dialog (they must stay below 2^31)")]
    CSeqExhausted,
}

/// CSeq numbers must stay below 2³¹ (RFC 3261 §8.1.1.5).
pub const MAX_CSEQ: u32 = (1 << 31) - 1;

/// One dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub id: DialogId,
    /// Both addresses (AOR and display name, as in From and To of the initial request) and
    /// the remote target, in one allocation: [`Dialog::local_uri`] and the others.
    addresses: Addresses,
    /// Route set, each entry a `<uri>` value, in the order Route headers are written.
    pub route_set: Vec<String>,
    /// The connection this dialog lives on.
    pub conn: ConnId,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    created: Instant,
    confirmed: bool,
}

/// A dialog's five address strings in one allocation (a subscription dialog lives for hours
/// and a bridge holds millions: five allocations each would cost more than their text). The
/// text is the five parts one after the other; `ends` are where each part ends; a display
/// name's bit in `displays` says it is present (an empty one is not an absent one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addresses {
    text: Box<str>,
    ends: [u32; 5],
    displays: u8,
}

const LOCAL_URI: usize = 0;
const LOCAL_DISPLAY: usize = 1;
const REMOTE_URI: usize = 2;
const REMOTE_DISPLAY: usize = 3;
const REMOTE_TARGET: usize = 4;

impl Addresses {
    fn new(
        local: (&str, Option<&str>),
        remote: (&str, Option<&str>),
        remote_target: &str,
    ) -> Addresses {
        let parts = [
            local.0,
            local.1.unwrap_or(""),
            remote.0,
            remote.1.unwrap_or(""),
            remote_target,
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; 5];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            // The edge bounds a message far below 4 GiB, so every offset fits.
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Addresses {
            text: text.into_boxed_str(),
            ends,
            displays: u8::from(local.1.is_some()) | u8::from(remote.1.is_some()) << 1,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    fn display(&self, i: usize, bit: u8) -> Option<&str> {
        (self.displays & bit != 0).then(|| self.part(i))
    }
}

fn malformed(e: impl ToString) -> DialogError {
    DialogError::Malformed(e.to_string())
}

fn first_contact(m: &Message) -> Result<String, DialogError> {
    match m.contact().map_err(malformed)? {
        Some(Contact::Addresses(list)) => list
            .first()
            .map(|c| c.uri.to_owned())
            .ok_or(DialogError::NoContact),
        _ => Err(DialogError::NoContact),
    }
}

fn routes(m: &Message) -> Result<Vec<String>, DialogError> {
    Ok(m.record_route()
        .map_err(malformed)?
        .iter()
        .map(|r| format!("<{}>", r.uri))
        .collect())
}

impl Dialog {
    /// UAC side (§12.1.2): from the request this side sent and a response with a To tag.
    pub fn from_uac(
        request: &Message,
        response: &Message,
        conn: ConnId,
        now: Instant,
    ) -> Result<Dialog, DialogError> {
        let from = request.from().map_err(malformed)?;
        let to = response.to().map_err(malformed)?;
        let mut route_set = routes(response)?;
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: request.call_id().map_err(malformed)?.to_owned(),
                local_tag: from.tag().ok_or(DialogError::NoFromTag)?.to_owned(),
                remote_tag: to.tag().ok_or(DialogError::NoRemoteTag)?.to_owned(),
            },
            addresses: Addresses::new(
                (from.uri, from.display_name),
                (to.uri, to.display_name),
                &first_contact(response)?,
            ),
            route_set,
            conn,
            local_cseq: request.cseq().map_err(malformed)?.number,
            remote_cseq: None,
            created: now,
            // A UAC dialog exists once the response arrived: the initial transaction is done.
            confirmed: true,
        })
    }

    /// UAS side (§12.1.1): from the request received and the tag this side adds to To in its
    /// response. `local_cseq` is where this side's CSeq numbering starts.
    pub fn from_uas(
        request: &Message,
        local_tag: &str,
        local_cseq: u32,
        conn: ConnId,
        now: Instant,
    ) -> Result<Dialog, DialogError> {
        let from = request.from().map_err(malformed)?;
        let to = request.to().map_err(malformed)?;
        Ok(Dialog {
            id: DialogId {
                call_id: request.call_id().map_err(malformed)?.to_owned(),
                local_tag: local_tag.to_owned(),
                remote_tag: from.tag().ok_or(DialogError::NoFromTag)?.to_owned(),
            },
            addresses: Addresses::new(
                (to.uri, to.display_name),
                (from.uri, from.display_name),
                &first_contact(request)?,
            ),
            route_set: routes(request)?,
            conn,
            local_cseq,
            remote_cseq: Some(request.cseq().map_err(malformed)?.number),
            created: now,
            confirmed: false,
        })
    }

    /// A dialog kept elsewhere (the store) brought back: both CSeq counters as they were, on
    /// `conn` (the connection it lived on is gone after a restart: pass the one to use, the
    /// caller routes by domain until the peer is reached again). It counts as confirmed.
    #[allow(clippy::too_many_arguments)]
    pub fn restored(
        id: DialogId,
        local: (String, Option<String>),
        remote: (String, Option<String>),
        remote_target: String,
        route_set: Vec<String>,
        cseqs: (u32, Option<u32>),
        conn: ConnId,
        created: Instant,
    ) -> Dialog {
        Dialog {
            id,
            addresses: Addresses::new(
                (&local.0, local.1.as_deref()),
                (&remote.0, remote.1.as_deref()),
                &remote_target,
            ),
            route_set,
            conn,
            local_cseq: cseqs.0,
            remote_cseq: cseqs.1,
            created,
            confirmed: true,
        }
    }

    /// The initial transaction's final response has been sent (UAS): in-dialog requests may
    /// now go out.
    /// Our address (AOR), as in From (UAC) or To (UAS) of the initial request.
    pub fn local_uri(&self) -> &str {
        self.addresses.part(LOCAL_URI)
    }

    /// Our display name in the initial request.
    pub fn local_display(&self) -> Option<&str> {
        self.addresses.display(LOCAL_DISPLAY, 1)
    }

    /// The peer's address (AOR).
    pub fn remote_uri(&self) -> &str {
        self.addresses.part(REMOTE_URI)
    }

    /// The peer's display name in the initial request.
    pub fn remote_display(&self) -> Option<&str> {
        self.addresses.display(REMOTE_DISPLAY, 2)
    }

    /// Where in-dialog requests go (the peer's Contact).
    pub fn remote_target(&self) -> &str {
        self.addresses.part(REMOTE_TARGET)
    }

    fn set_remote_target(&mut self, target: &str) {
        self.addresses = Addresses::new(
            (self.local_uri(), self.local_display()),
            (self.remote_uri(), self.remote_display()),
            target,
        );
    }

    pub fn confirm(&mut self) {
        self.confirmed = true;
    }

    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// When the layer above must have replaced this dialog (`created + max_age`).
    pub fn replace_at(&self, max_age: Duration) -> Instant {
        self.created + max_age
    }

    /// The CSeq number of the last request this side sent.
    pub fn local_cseq(&self) -> u32 {
        self.local_cseq
    }

    /// The CSeq number of the last request the peer sent (none yet on a UAC dialog).
    pub fn remote_cseq(&self) -> Option<u32> {
        self.remote_cseq
    }

    /// Builds the next request in this dialog (§12.2.1.1): To/From with both tags, the next
    /// CSeq ([`DialogError::CSeqExhausted`] past [`MAX_CSEQ`]), the route set and the Request-URI for loose or strict routing. `via_sent_by` and
    /// `branch` make the Via (`SIP/2.0/TLS`); `contact` is this side's Contact URI.
    pub fn next_request(
        &mut self,
        method: Method,
        via_sent_by: &str,
        branch: &str,
        contact: Option<&str>,
    ) -> Result<Message, DialogError> {
        self.next_request_with(method, via_sent_by, branch, contact, &[], None)
    }

    /// [`Dialog::next_request`] with more header lines and a body, built in one pass: the
    /// same message, byte for byte, as `next_request` followed by
    /// [`Message::push_header`] for each of `headers` (a value given in parts is their
    /// concatenation) and [`Message::set_body`] with `body` (its Content-Type, then the bytes).
    /// The dialog's own lines are written straight into the message's text, with no value
    /// formatted on its own first (the NOTIFY fan-out's hot path, docs/benchmarks.md).
    /// `headers` must not hold Content-Length or Content-Type (the body's).
    pub fn next_request_with(
        &mut self,
        method: Method,
        via_sent_by: &str,
        branch: &str,
        contact: Option<&str>,
        headers: &[(&str, &[&str])],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Message, DialogError> {
        if !self.confirmed {
            return Err(DialogError::InitialTransactionPending);
        }
        let cseq = if method == Method::Ack {
            self.local_cseq
        } else {
            // A restored dialog's counter comes from the store: never past the limit.
            let next = self
                .local_cseq
                .checked_add(1)
                .filter(|n| *n <= MAX_CSEQ)
                .ok_or(DialogError::CSeqExhausted)?;
            self.local_cseq = next;
            next
        };
        // Loose routing when the first route has `lr` (RFC 3261 §12.2.1.1); strict otherwise:
        // the first route becomes the Request-URI and the remote target the last route.
        let strict = self.route_set.first().is_some_and(|r| {
            NameAddr::parse(r, "Route")
                .ok()
                .and_then(|n| n.parsed_uri().as_sip().map(|u| !u.params.has("lr")))
                .unwrap_or(false)
        });
        let (request_uri, routes): (&str, &[String]) = if strict {
            let first = NameAddr::parse(&self.route_set[0], "Route")
                .map(|n| n.uri)
                .map_err(malformed)?;
            (first, &self.route_set[1..])
        } else {
            (self.remote_target(), &self.route_set)
        };
        let quoted = |d: Option<&str>| d.filter(|d| !d.is_empty()).map(super::params::quote);
        let (local_display, remote_display) =
            (quoted(self.local_display()), quoted(self.remote_display()));
        let cseq = itoa_buf(cseq as usize);
        let body_len = body.as_ref().map(|(_, b)| itoa_buf(b.len()));

        // Sizes first, so that the text is allocated once.
        let display = |d: &Option<String>| d.as_ref().map_or(0, |d| d.len() + 1);
        let mut text = request_uri.len()
            + "Via".len()
            + "SIP/2.0/TLS ;branch=".len()
            + via_sent_by.len()
            + branch.len()
            + "Max-Forwards".len()
            + 2
            + "From".len()
            + display(&local_display)
            + self.local_uri().len()
            + 8
            + self.id.local_tag.len()
            + "To".len()
            + display(&remote_display)
            + self.remote_uri().len()
            + 8
            + self.id.remote_tag.len()
            + "Call-ID".len()
            + self.id.call_id.len()
            + "CSeq".len()
            + 1
            + cseq.as_str().len()
            + method.as_str().len()
            + "Content-Length".len()
            + 6;
        let mut lines = 8 + routes.len() + usize::from(strict) + headers.len();
        text += routes
            .iter()
            .map(|r| "Route".len() + r.len())
            .sum::<usize>();
        if strict {
            text += "Route".len() + self.remote_target().len() + 2;
        }
        if let Some(c) = contact {
            text += "Contact".len() + c.len() + 2;
            lines += 1;
        }
        for (name, parts) in headers {
            debug_assert!(!matches!(
                HeaderKind::of(name),
                HeaderKind::ContentLength | HeaderKind::ContentType
            ));
            text += name.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        }
        if let Some((content_type, _)) = &body {
            text += "Content-Type".len() + content_type.len();
            lines += 1;
        }

        let mut m = Message::new_request(method.clone(), request_uri);
        m.reserve(text, lines);
        m.push_known(
            HeaderKind::Via,
            &["SIP/2.0/TLS ", via_sent_by, ";branch=", branch],
        );
        m.push_known(HeaderKind::MaxForwards, &["70"]);
        // `"display" <uri>;tag=…` (RFC 3261 §20.20, §20.39), as `builder::name_addr` writes it.
        for (kind, display, uri, tag) in [
            (
                HeaderKind::From,
                &local_display,
                self.local_uri(),
                &self.id.local_tag,
            ),
            (
                HeaderKind::To,
                &remote_display,
                self.remote_uri(),
                &self.id.remote_tag,
            ),
        ] {
            // An empty tag is written bare (`;tag`), as `builder::name_addr` writes it.
            let eq = if tag.is_empty() { "" } else { "=" };
            match display {
                Some(d) => m.push_known(kind, &[d, " <", uri, ">;tag", eq, tag]),
                None => m.push_known(kind, &["<", uri, ">;tag", eq, tag]),
            }
        }
        m.push_known(HeaderKind::CallId, &[&self.id.call_id]);
        m.push_known(HeaderKind::CSeq, &[cseq.as_str(), " ", method.as_str()]);
        for r in routes {
            m.push_known(HeaderKind::Route, &[r]);
        }
        if strict {
            m.push_known(HeaderKind::Route, &["<", self.remote_target(), ">"]);
        }
        if let Some(c) = contact {
            m.push_known(HeaderKind::Contact, &["<", c, ">"]);
        }
        m.push_known(
            HeaderKind::ContentLength,
            &[body_len.as_ref().map_or("0", |l| l.as_str())],
        );
        for (name, parts) in headers {
            m.push_header_parts(name, parts);
        }
        if let Some((content_type, bytes)) = body {
            m.push_known(HeaderKind::ContentType, &[content_type]);
            m.set_body_after_headers(bytes);
        }
        Ok(m)
    }

    /// Checks an incoming in-dialog request (§12.2.2): it must carry this dialog's id and a CSeq
    /// above the last one (else answer 500); a target-refresh request (INVITE, UPDATE,
    /// SUBSCRIBE, NOTIFY) with a Contact moves the remote target.
    pub fn accept_request(&mut self, request: &Message) -> Result<(), DialogError> {
        self.accept_request_retargets(request).map(|_| ())
    }

    /// [`Dialog::accept_request`], saying whether the remote target changed (so a caller
    /// keeping it elsewhere need not copy it to compare).
    pub fn accept_request_retargets(&mut self, request: &Message) -> Result<bool, DialogError> {
        if !self.id.is_of_incoming_request(request) {
            return Err(DialogError::WrongDialog);
        }
        let cseq = request.cseq().map_err(malformed)?;
        if cseq.method != Method::Ack && cseq.method != Method::Cancel {
            if let Some(last) = self.remote_cseq {
                if cseq.number <= last {
                    return Err(DialogError::CSeqOutOfOrder {
                        got: cseq.number,
                        last,
                    });
                }
            }
            self.remote_cseq = Some(cseq.number);
        }
        let refresh = matches!(
            cseq.method,
            Method::Invite | Method::Update | Method::Subscribe | Method::Notify
        );
        let mut retargeted = false;
        if refresh {
            if let Ok(target) = first_contact(request) {
                if Uri::parse(&target).is_ok() && target != self.remote_target() {
                    self.set_remote_target(&target);
                    retargeted = true;
                }
            }
        }
        Ok(retargeted)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:joe@contoso.com SIP/2.0\r\n\
Via: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.org>;tag=a1\r\n\
To: <sip:joe@contoso.com>\r\n\
Call-ID: call-1\r\n\
CSeq: 7 INVITE\r\n\
Contact: <sip:alice@sip.example.org:5061;transport=tls>\r\n\
Content-Length: 0\r\n\r\n";

    fn ok_response(invite: &Message) -> Message {
        let mut r = Message::response_to(invite, 200, None, Some("j1"));
        r.push_header("Record-Route", "<sip:edge2.contoso.com;transport=tls;lr>");
        r.push_header("Record-Route", "<sip:edge1.contoso.com;transport=tls;lr>");
        r.push_header("Contact", "<sip:joe@10.0.0.5:5061;transport=tls>");
        r
    }

    #[test]
    fn uac_dialog_routes_and_numbers_requests() {
        let now = Instant::now();
        let invite = Message::parse(INVITE.as_bytes()).unwrap();
        let mut d = Dialog::from_uac(&invite, &ok_response(&invite), 9, now).unwrap();
        assert_eq!(
            d.id,
            DialogId {
                call_id: "call-1".into(),
                local_tag: "a1".into(),
                remote_tag: "j1".into()
            }
        );
        assert_eq!(d.conn, 9);
        assert_eq!(
            d.replace_at(DEFAULT_MAX_AGE),
            now + Duration::from_secs(23 * 3600)
        );
        let ack = d
            .next_request(Method::Ack, "sip.example.org:5061", "z9hG4bK2", None)
            .unwrap();
        assert_eq!(ack.cseq().unwrap().number, 7);
        let m = d
            .next_request(
                Method::Message,
                "sip.example.org:5061",
                "z9hG4bK3",
                Some("sip:alice@sip.example.org:5061;transport=tls"),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            "MESSAGE sip:joe@10.0.0.5:5061;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bK3\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.org>;tag=a1\r\n\
To: <sip:joe@contoso.com>;tag=j1\r\n\
Call-ID: call-1\r\n\
CSeq: 8 MESSAGE\r\n\
Route: <sip:edge1.contoso.com;transport=tls;lr>\r\n\
Route: <sip:edge2.contoso.com;transport=tls;lr>\r\n\
Contact: <sip:alice@sip.example.org:5061;transport=tls>\r\n\
Content-Length: 0\r\n\r\n"
        );
        assert_eq!(
            DialogId::of_incoming_response(&ok_response(&invite)),
            Some(d.id.clone())
        );
    }

    #[test]
    fn strict_route_puts_the_first_route_in_the_request_uri() {
        let invite = Message::parse(INVITE.as_bytes()).unwrap();
        let mut r = Message::response_to(&invite, 200, None, Some("j1"));
        r.push_header("Record-Route", "<sip:strict.contoso.com>");
        r.push_header("Contact", "<sip:joe@10.0.0.5>");
        let mut d = Dialog::from_uac(&invite, &r, 1, Instant::now()).unwrap();
        let bye = d.next_request(Method::Bye, "h", "z9hG4bK4", None).unwrap();
        assert_eq!(bye.request_uri(), Some("sip:strict.contoso.com"));
        assert_eq!(
            bye.header_all("Route").collect::<Vec<_>>(),
            ["<sip:joe@10.0.0.5>"]
        );
    }

    #[test]
    fn uas_dialog_waits_for_its_final_response_and_checks_cseq() {
        let now = Instant::now();
        let subscribe = Message::parse(
            INVITE
                .replace(
                    "INVITE sip:joe@contoso.com",
                    "SUBSCRIBE sip:joe@contoso.com",
                )
                .replace("7 INVITE", "7 SUBSCRIBE")
                .as_bytes(),
        )
        .unwrap();
        let mut d = Dialog::from_uas(&subscribe, "j1", 1, 3, now).unwrap();
        assert_eq!(d.local_uri(), "sip:joe@contoso.com");
        assert_eq!(
            d.remote_target(),
            "sip:alice@sip.example.org:5061;transport=tls"
        );
        assert_eq!(
            d.next_request(Method::Notify, "h", "z9hG4bK5", None),
            Err(DialogError::InitialTransactionPending)
        );
        d.confirm();
        let notify = d
            .next_request(Method::Notify, "h", "z9hG4bK5", None)
            .unwrap();
        assert_eq!(notify.cseq().unwrap().number, 2);
        assert_eq!(notify.to().unwrap().tag(), Some("a1"));
        assert_eq!(notify.from().unwrap().tag(), Some("j1"));

        // A refresh from the peer: same dialog, higher CSeq, new Contact.
        let refresh = INVITE
            .replace(
                "INVITE sip:joe@contoso.com",
                "SUBSCRIBE sip:joe@contoso.com",
            )
            .replace("7 INVITE", "8 SUBSCRIBE")
            .replace(
                "To: <sip:joe@contoso.com>",
                "To: <sip:joe@contoso.com>;tag=j1",
            )
            .replace("sip:alice@sip.example.org:5061", "sip:alice@10.1.1.1:5061");
        let again = Message::parse(refresh.replace("8 SUBSCRIBE", "9 SUBSCRIBE").as_bytes());
        let refresh = Message::parse(refresh.as_bytes()).unwrap();
        assert!(d.id.is_of_incoming_request(&refresh));
        assert_eq!(
            DialogId::of_incoming_request(&refresh).as_ref(),
            Some(&d.id)
        );
        assert_eq!(d.accept_request_retargets(&refresh), Ok(true));
        assert_eq!(d.remote_target(), "sip:alice@10.1.1.1:5061;transport=tls");
        assert_eq!(
            d.accept_request(&refresh),
            Err(DialogError::CSeqOutOfOrder { got: 8, last: 8 })
        );
        // The same Contact again: a refresh that moves nothing.
        assert_eq!(d.accept_request_retargets(&again.unwrap()), Ok(false));
        let other = Message::parse(INVITE.as_bytes()).unwrap();
        assert!(!d.id.is_of_incoming_request(&other));
        assert_eq!(d.accept_request(&other), Err(DialogError::WrongDialog));
        let mut wrong_tag = d.id.clone();
        wrong_tag.remote_tag.push('x');
        assert!(!wrong_tag.is_of_incoming_request(&refresh));
        let mut wrong_call = d.id.clone();
        wrong_call.call_id.push('x');
        assert!(!wrong_call.is_of_incoming_request(&refresh));
    }

    #[test]
    fn no_dialog_without_tags_or_contact() {
        let invite = Message::parse(INVITE.as_bytes()).unwrap();
        let untagged = Message::response_to(&invite, 200, None, None);
        assert_eq!(
            Dialog::from_uac(&invite, &untagged, 1, Instant::now()),
            Err(DialogError::NoRemoteTag)
        );
        let no_contact = Message::response_to(&invite, 200, None, Some("t"));
        assert_eq!(
            Dialog::from_uac(&invite, &no_contact, 1, Instant::now()),
            Err(DialogError::NoContact)
        );
    }

    /// The general builder as it was before `next_request_with`: each header formatted on its
    /// own and pushed, then the extra lines and `set_body`. The one-pass builder must give the
    /// same bytes.
    fn reference_request(
        d: &mut Dialog,
        method: Method,
        via_sent_by: &str,
        branch: &str,
        contact: Option<&str>,
        headers: &[(&str, &[&str])],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Message, DialogError> {
        use crate::sip::builder::name_addr;
        if !d.confirmed {
            return Err(DialogError::InitialTransactionPending);
        }
        let cseq = if method == Method::Ack {
            d.local_cseq
        } else {
            let next = d
                .local_cseq
                .checked_add(1)
                .filter(|n| *n <= MAX_CSEQ)
                .ok_or(DialogError::CSeqExhausted)?;
            d.local_cseq = next;
            next
        };
        let strict = d.route_set.first().is_some_and(|r| {
            NameAddr::parse(r, "Route")
                .ok()
                .and_then(|n| n.parsed_uri().as_sip().map(|u| !u.params.has("lr")))
                .unwrap_or(false)
        });
        let (request_uri, route): (String, Vec<String>) = if strict {
            let first = NameAddr::parse(&d.route_set[0], "Route")
                .map(|n| n.uri.to_owned())
                .map_err(malformed)?;
            let mut rest = d.route_set[1..].to_vec();
            rest.push(format!("<{}>", d.remote_target()));
            (first, rest)
        } else {
            (d.remote_target().to_owned(), d.route_set.clone())
        };
        let mut m = Message::new_request(method.clone(), &request_uri);
        m.push_header("Via", &format!("SIP/2.0/TLS {via_sent_by};branch={branch}"));
        m.push_header("Max-Forwards", "70");
        m.push_header(
            "From",
            &name_addr(
                d.local_display(),
                d.local_uri(),
                &[("tag", &d.id.local_tag)],
            ),
        );
        m.push_header(
            "To",
            &name_addr(
                d.remote_display(),
                d.remote_uri(),
                &[("tag", &d.id.remote_tag)],
            ),
        );
        m.push_header("Call-ID", &d.id.call_id);
        m.push_header("CSeq", &format!("{cseq} {method}"));
        for r in &route {
            m.push_header("Route", r);
        }
        if let Some(c) = contact {
            m.push_header("Contact", &format!("<{c}>"));
        }
        m.push_header("Content-Length", "0");
        for (name, parts) in headers {
            m.push_header(name, &parts.concat());
        }
        if let Some((content_type, bytes)) = body {
            m.set_body(Some(content_type), bytes);
        }
        Ok(m)
    }

    fn wire(m: &Result<Message, DialogError>) -> Result<(String, Option<String>), DialogError> {
        m.as_ref()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.to_bytes()).into_owned(),
                    m.header_error().map(|e| e.to_string()),
                )
            })
            .map_err(Clone::clone)
    }

    /// A NOTIFY as the notifier sends it, byte for byte (one-pass builder).
    #[test]
    fn a_notify_in_one_pass_is_the_expected_message() {
        let mut d = Dialog::restored(
            DialogId {
                call_id: "sub7@contoso.com".into(),
                local_tag: "j1".into(),
                remote_tag: "w7".into(),
            },
            ("sip:u1@example.org".into(), Some("Ann \"A\"".into())),
            ("sip:w7@contoso.com".into(), None),
            "sip:w7@[2001:db8::7]:5061;transport=tls".into(),
            vec!["<sips:edge.contoso.com;lr>".into()],
            (4, Some(1)),
            3,
            Instant::now(),
        );
        let m = d
            .next_request_with(
                Method::Notify,
                "sip.example.org:5061",
                "z9hG4bKab",
                Some("sip:u1@sip.example.org:5061;transport=tls"),
                &[
                    ("Event", &["presence"]),
                    ("Subscription-State", &["active;expires=", "3599"]),
                ],
                Some(("application/pidf+xml", b"<presence/>".to_vec())),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            "NOTIFY sip:w7@[2001:db8::7]:5061;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKab\r\n\
Max-Forwards: 70\r\n\
From: \"Ann \\\"A\\\"\" <sip:u1@example.org>;tag=j1\r\n\
To: <sip:w7@contoso.com>;tag=w7\r\n\
Call-ID: sub7@contoso.com\r\n\
CSeq: 5 NOTIFY\r\n\
Route: <sips:edge.contoso.com;lr>\r\n\
Contact: <sip:u1@sip.example.org:5061;transport=tls>\r\n\
Content-Length: 11\r\n\
Event: presence\r\n\
Subscription-State: active;expires=3599\r\n\
Content-Type: application/pidf+xml\r\n\
\r\n\
<presence/>"
        );
        assert_eq!(m.header_error(), None);
        assert_eq!(d.local_cseq(), 5);
    }

    mod one_pass {
        use super::*;
        use proptest::prelude::*;

        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
                Just("192.0.2.7".to_owned()),
                Just("[2001:db8::1]".to_owned()),
                Just("[::1]".to_owned()),
            ]
        }

        fn uri() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just("sip"), Just("sips")],
                proptest::option::of("[a-z0-9._%-]{1,10}"),
                host(),
                proptest::option::of(5000u16..5100),
                proptest::option::of(prop_oneof![
                    Just(";transport=tls"),
                    Just(";lr"),
                    Just(";transport=tls;lr"),
                    Just(";maddr=10.0.0.1"),
                ]),
            )
                .prop_map(|(scheme, user, host, port, params)| {
                    let user = user.map(|u| format!("{u}@")).unwrap_or_default();
                    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                    format!("{scheme}:{user}{host}{port}{}", params.unwrap_or(""))
                })
        }

        fn dialog() -> impl Strategy<Value = Dialog> {
            (
                (
                    "[!-~]{1,20}",
                    "[a-zA-Z0-9.~-]{0,12}",
                    "[a-zA-Z0-9.~-]{0,12}",
                ),
                (
                    uri(),
                    proptest::option::of("[ -~\t\u{e9}\u{4e2d}\u{1}]{0,12}"),
                ),
                (uri(), proptest::option::of("[ -~\u{e9}]{0,12}")),
                uri(),
                proptest::collection::vec(uri(), 0..3),
                prop_oneof![0u32..1000, Just(MAX_CSEQ - 1), Just(MAX_CSEQ)],
            )
                .prop_map(|(id, local, remote, target, routes, cseq)| {
                    Dialog::restored(
                        DialogId {
                            call_id: id.0,
                            local_tag: id.1,
                            remote_tag: id.2,
                        },
                        local,
                        remote,
                        target,
                        routes.into_iter().map(|r| format!("<{r}>")).collect(),
                        (cseq, None),
                        1,
                        Instant::now(),
                    )
                })
        }

        fn method() -> impl Strategy<Value = Method> {
            prop_oneof![
                Just(Method::Notify),
                Just(Method::Message),
                Just(Method::Subscribe),
                Just(Method::Bye),
                Just(Method::Ack),
                Just(Method::Info),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// The one-pass builder and the general one agree byte for byte (and in what
            /// they refuse): dialogs with and without route sets (loose and strict), sip and
            /// sips URIs, IPv6 hosts, display names that need quoting or hold controls.
            #[test]
            fn one_pass_requests_equal_the_general_builders(
                d in dialog(),
                method in method(),
                via in "[a-z.]{1,20}:50[0-9]{2}",
                branch in "z9hG4bK[0-9a-f]{1,16}",
                contact in proptest::option::of(uri()),
                state in proptest::option::of(("(active|pending);expires=", 0u32..100_000)),
                event in proptest::option::of("[ -~\r]{0,10}"),
                body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            ) {
                let expires = state.as_ref().map(|(_, n)| n.to_string());
                let mut headers: Vec<(&str, Vec<&str>)> = Vec::new();
                if let Some(e) = &event {
                    headers.push(("Event", vec![e.as_str()]));
                }
                if let (Some((s, _)), Some(n)) = (&state, &expires) {
                    headers.push(("Subscription-State", vec![s.as_str(), n.as_str()]));
                }
                let headers: Vec<(&str, &[&str])> =
                    headers.iter().map(|(n, p)| (*n, p.as_slice())).collect();
                let body = body.map(|b| ("application/pidf+xml", b));
                let (mut fast, mut general) = (d.clone(), d);
                for _ in 0..2 {
                    let a = fast.next_request_with(
                        method.clone(), &via, &branch, contact.as_deref(), &headers, body.clone(),
                    );
                    let b = reference_request(
                        &mut general, method.clone(), &via, &branch, contact.as_deref(),
                        &headers, body.clone(),
                    );
                    prop_assert_eq!(wire(&a), wire(&b));
                    prop_assert_eq!(&a, &b);
                    prop_assert_eq!(fast.local_cseq(), general.local_cseq());
                }
            }
        }
    }

    /// A restored dialog's counter at the top of the CSeq space (a record this bridge did not
    /// write) refuses the next request instead of overflowing.
    #[test]
    fn a_counter_at_the_limit_refuses_the_next_request() {
        let now = Instant::now();
        for start in [MAX_CSEQ, u32::MAX] {
            let mut d = Dialog::restored(
                DialogId {
                    call_id: "c".into(),
                    local_tag: "a".into(),
                    remote_tag: "b".into(),
                },
                ("sip:a@example.org".into(), None),
                ("sip:b@contoso.com".into(), None),
                "sip:b@192.0.2.5".into(),
                vec![],
                (start, None),
                0,
                now,
            );
            assert_eq!(
                d.next_request(Method::Message, "h:5061", "z9hG4bK1", None),
                Err(DialogError::CSeqExhausted)
            );
            assert_eq!(d.local_cseq(), start);
        }
    }

    /// A subscription dialog lives for hours and a bridge holds millions: its five address
    /// strings share one allocation, and a target refresh keeps the others.
    #[test]
    fn addresses_are_one_allocation_and_survive_a_target_refresh() {
        assert!(
            std::mem::size_of::<Dialog>() <= 176,
            "{}",
            std::mem::size_of::<Dialog>()
        );
        let now = Instant::now();
        let invite = Message::parse(INVITE.as_bytes()).unwrap();
        let mut d = Dialog::from_uac(&invite, &ok_response(&invite), 9, now).unwrap();
        assert_eq!(d.local_uri(), "sip:alice@example.org");
        assert_eq!(d.local_display(), Some("Alice"));
        assert_eq!(d.remote_uri(), "sip:joe@contoso.com");
        assert_eq!(d.remote_display(), None);
        assert_eq!(d.remote_target(), "sip:joe@10.0.0.5:5061;transport=tls");
        d.set_remote_target("sip:joe@10.0.0.6:5061;transport=tls");
        assert_eq!(d.local_uri(), "sip:alice@example.org");
        assert_eq!(d.local_display(), Some("Alice"));
        assert_eq!(d.remote_uri(), "sip:joe@contoso.com");
        assert_eq!(d.remote_target(), "sip:joe@10.0.0.6:5061;transport=tls");
        // An empty display name is not an absent one.
        let restored = Dialog::restored(
            d.id.clone(),
            ("sip:a@x".into(), Some(String::new())),
            ("sip:b@y".into(), None),
            "sip:b@192.0.2.1".into(),
            vec![],
            (1, None),
            9,
            now,
        );
        assert_eq!(restored.local_display(), Some(""));
        assert_eq!(restored.remote_display(), None);
        assert_eq!(restored.remote_target(), "sip:b@192.0.2.1");
    }
}
