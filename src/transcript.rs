//! One readable line per translation: what came in (a stanza, a SIP request or response, a
//! timer) and what the bridge made of it (stanzas, SIP requests and responses), e.g.
//!
//! ```text
//! XMPP→SIP  message alice@localhost → joe@contoso.test "hi"  ⇒  INVITE alice@localhost → joe@contoso.test
//! ```
//!
//! The runner emits these as `debug` events under [`TARGET`] only when that target is enabled
//! (`lcs-bridge demo` turns it on; `RUST_LOG=lcs_bridge::transcript=debug` anywhere else), so
//! the line costs nothing otherwise. Sans-IO: it only describes values. Peer text is shown
//! cut short and on one line (`{:?}` quoting escapes control characters).

use std::ops::Range;

use minidom::Element;

use crate::core::im_text;
use crate::core::names;
use crate::core::pidf::{self, Basic};
use crate::edge::event::EdgeEvent;
use crate::engine::bridge::{Action, Input};
use crate::sip::message::Message;
use crate::sip::transaction::TxEvent;

/// The tracing target of transcript lines.
pub const TARGET: &str = "lcs_bridge::transcript";

/// Longest piece of peer text (a body, a status) a line shows, in characters.
const TEXT_CHARS: usize = 60;

/// Which side a described item is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Xmpp,
    Sip,
    /// The bridge's own timers.
    Timer,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Xmpp => "XMPP",
            Side::Sip => "SIP",
            Side::Timer => "timer",
        }
    }
}

/// One described input or action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub side: Side,
    pub text: String,
    /// A request or stanza (not a response, ACK or link event): worth a line even when
    /// nothing came of it.
    pub notable: bool,
}

/// An input to the bridge, or `None` for one the transcript leaves out (store restores,
/// facts, new settings, administration commands).
pub fn input(input: &Input) -> Option<Item> {
    let (side, text, notable) = match input {
        // A presence the bridge has nothing to do with (e.g. a directed one it already
        // has from the broadcast) is not worth a line; a message always is.
        Input::Stanza(el) => (Side::Xmpp, stanza(el), el.name() == "message"),
        Input::Edge(EdgeEvent::Request { request, .. }) => (Side::Sip, sip(request), true),
        Input::Edge(EdgeEvent::Transaction(tx)) => match tx {
            TxEvent::Request { request, .. } => (Side::Sip, sip(request), true),
            // A failure is worth a line even when nothing came of it.
            TxEvent::Response { response, .. } | TxEvent::StrayResponse { response, .. } => (
                Side::Sip,
                sip(response),
                response.status().is_some_and(|s| s >= 300),
            ),
            TxEvent::Ack { .. } => (Side::Sip, "ACK".to_owned(), false),
            TxEvent::Timeout { .. } | TxEvent::GaveUp { .. } | TxEvent::AckTimeout { .. } => {
                (Side::Sip, "no answer (timeout)".to_owned(), true)
            }
            TxEvent::TransportError { .. } => (Side::Sip, "transport error".to_owned(), true),
            TxEvent::Cancelled { .. } => (Side::Sip, "CANCEL".to_owned(), true),
        },
        Input::Edge(EdgeEvent::Undeliverable { why, .. }) => {
            (Side::Sip, format!("not delivered: {why:?}"), true)
        }
        Input::Edge(EdgeEvent::ConnectionLost { conn }) => {
            (Side::Sip, format!("connection {conn} lost"), false)
        }
        Input::LinkUp { domain } => (Side::Xmpp, format!("component {domain} up"), false),
        Input::LinkDown { domain, .. } => (Side::Xmpp, format!("component {domain} down"), true),
        Input::Restore(_)
        | Input::RestoreIm(_)
        | Input::Fact(_)
        | Input::Reconfigure(_)
        | Input::Admin { .. }
        | Input::AdminDone { .. } => return None,
    };
    Some(Item {
        side,
        text,
        notable,
    })
}

/// The inputs since the last actions ran, each with the bridge's output batches it made, and
/// the actions paired with them (see `Bridge::next_batch`).
#[derive(Debug, Default)]
pub struct Lines {
    heard: Vec<(Item, Range<u64>, Vec<Item>)>,
}

impl Lines {
    /// An input, which made the bridge's output batches `batches`.
    pub fn heard(&mut self, item: Option<Item>, batches: Range<u64>) {
        if let Some(item) = item {
            self.heard.push((item, batches, Vec::new()));
        }
    }

    /// An action from output batch `batch`.
    pub fn said(&mut self, batch: u64, item: Option<Item>) {
        let Some(item) = item else {
            return;
        };
        if let Some((_, _, said)) = self.heard.iter_mut().find(|(_, b, _)| b.contains(&batch)) {
            said.push(item);
        }
    }

    /// The lines worth showing, in order; starts afresh.
    pub fn take(&mut self) -> Vec<String> {
        self.heard
            .drain(..)
            .filter_map(|(item, _, said)| line(&[item], &said))
            .collect()
    }
}

/// The input of the bridge's timers.
pub fn timer() -> Item {
    Item {
        side: Side::Timer,
        text: "timer".to_owned(),
        notable: false,
    }
}

/// An action of the bridge, or `None` for one the transcript leaves out (store writes,
/// administration commands).
pub fn action(action: &Action) -> Option<Item> {
    let (side, text) = match action {
        Action::Stanza(el) => (Side::Xmpp, stanza(el)),
        Action::Request { request, .. } => (Side::Sip, sip(request)),
        Action::Respond { response, .. } => (Side::Sip, sip(response)),
        Action::Ack { .. } => (Side::Sip, "ACK".to_owned()),
        Action::Write { .. }
        | Action::Forget { .. }
        | Action::WriteIm { .. }
        | Action::ForgetIm { .. }
        | Action::Admin { .. }
        | Action::AdminReply { .. } => return None,
    };
    Some(Item {
        side,
        text,
        notable: true,
    })
}

/// The line for what came in and what went out, or `None` when it is not worth one (a
/// response or a timer that made nothing).
pub fn line(inputs: &[Item], outputs: &[Item]) -> Option<String> {
    if outputs.is_empty() && !inputs.iter().any(|i| i.notable) {
        return None;
    }
    let from = inputs.first().map_or(Side::Timer, |i| i.side);
    // Where the translation went (a stanza out of a SIP request is SIP→XMPP, its response
    // beside it).
    let to = if outputs.iter().any(|o| o.side == Side::Xmpp) {
        "XMPP"
    } else if outputs.iter().any(|o| o.side == Side::Sip) {
        "SIP"
    } else {
        "-"
    };
    let ins: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
    let outs: Vec<&str> = outputs.iter().map(|o| o.text.as_str()).collect();
    let outs = if outs.is_empty() {
        "nothing".to_owned()
    } else {
        outs.join("; ")
    };
    Some(format!(
        "{:<9} {}  ⇒  {outs}",
        format!("{}→{to}", from.name()),
        ins.join("; ")
    ))
}

/// `kind from → to detail` of a stanza.
fn stanza(el: &Element) -> String {
    let from = el.attr("from").unwrap_or("?");
    let to = el.attr("to").unwrap_or("?");
    let child_text = |name: &str| {
        el.children()
            .find(|c| c.name() == name)
            .map(|c| short(&c.text()))
    };
    let kind = el.name();
    let detail = match kind {
        "message" => {
            let mut d = match child_text("body") {
                Some(b) => format!("{b:?}"),
                None => el.children().next().map_or_else(
                    || "(empty)".to_owned(),
                    |c| format!("({} {})", c.name(), c.ns()),
                ),
            };
            if el.attr("type") == Some("error") {
                d = format!("error {d}");
            }
            d
        }
        "presence" => {
            let mut d = el.attr("type").unwrap_or("available").to_owned();
            if let Some(show) = child_text("show") {
                d = format!("{d}/{show}");
            }
            if let Some(status) = child_text("status") {
                d = format!("{d} {status:?}");
            }
            d
        }
        "iq" => {
            let query = el.children().next().map(|c| c.ns()).unwrap_or_default();
            format!("{} {query}", el.attr("type").unwrap_or("?"))
        }
        _ => String::new(),
    };
    format!("{kind} {} → {} {detail}", short(from), short(to))
}

/// `METHOD from → to detail` of a request, `STATUS reason (METHOD)` of a response.
fn sip(m: &Message) -> String {
    let Some(method) = m.method() else {
        let method = m.cseq().map(|c| c.method.to_string()).unwrap_or_default();
        return format!(
            "{} {} ({method})",
            m.status().unwrap_or(0),
            short(m.reason().unwrap_or(""))
        );
    };
    let addr = |r: Result<crate::sip::header::NameAddr<'_>, _>| {
        r.map(|a| short(a.uri.strip_prefix("sip:").unwrap_or(a.uri)))
            .unwrap_or_default()
    };
    let ct = m.header("Content-Type").unwrap_or("");
    let detail = if m.body().is_empty() {
        String::new()
    } else if ct.starts_with("application/pidf+xml") {
        match pidf::parse(m.body()) {
            Ok(doc) => {
                let mut d = match (doc.basic, doc.activity.as_deref()) {
                    (Some(Basic::Closed), _) => "offline".to_owned(),
                    (_, Some(a)) => short(a),
                    _ => "online".to_owned(),
                };
                if let Some(n) = doc.notes.first() {
                    d = format!("{d} {:?}", short(&n.text));
                }
                format!("PIDF {d}")
            }
            Err(_) => "PIDF (unreadable)".to_owned(),
        }
    } else if ct.starts_with("text/") {
        match im_text::plain_text(ct, m.body()) {
            Ok(t) => format!("{:?}", short(&t)),
            Err(_) => short(ct),
        }
    } else {
        short(ct.split(';').next().unwrap_or(""))
    };
    format!("{method} {} → {} {detail}", addr(m.from()), addr(m.to()))
        .trim_end()
        .to_owned()
}

/// A peer's text on one line through the one cleaning of one-line texts
/// (`core::names::one_line`: controls folded to spaces, format characters such as bidi
/// overrides dropped, white space collapsed), at most [`TEXT_CHARS`] characters, `…` when cut.
fn short(s: &str) -> String {
    let mut out = names::one_line(s, TEXT_CHARS).unwrap_or_default();
    if out.chars().count() >= TEXT_CHARS && s.chars().count() > TEXT_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn a_chat_message_becomes_one_line() {
        let i = input(&Input::Stanza(el(
            "<message xmlns='jabber:component:accept' from='alice@localhost/x' to='joe\\40contoso.test@lcs.localhost' type='chat'><body>hi\nthere</body></message>",
        )))
        .unwrap();
        let invite = Message::parse(
            b"INVITE sip:joe@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\nFrom: <sip:alice@localhost>;tag=1\r\nTo: <sip:joe@contoso.test>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let o = Item {
            side: Side::Sip,
            text: sip(&invite),
            notable: true,
        };
        assert_eq!(
            line(&[i], &[o]).unwrap(),
            "XMPP→SIP  message alice@localhost/x → joe\\40contoso.test@lcs.localhost \"hi there\"  ⇒  INVITE alice@localhost → joe@contoso.test"
        );
    }

    #[test]
    fn responses_that_made_nothing_are_left_out() {
        let ok = Message::parse(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\nFrom: <sip:alice@localhost>;tag=1\r\nTo: <sip:joe@contoso.test>;tag=2\r\nCall-ID: c\r\nCSeq: 2 NOTIFY\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let i = Item {
            side: Side::Sip,
            text: sip(&ok),
            notable: false,
        };
        assert_eq!(i.text, "200 OK (NOTIFY)");
        assert_eq!(line(&[i], &[]), None);
        assert_eq!(line(&[timer()], &[]), None);
        // A failure is shown even when nothing came of it.
        let refused = Message::parse(
            b"SIP/2.0 415 Unsupported Media Type\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\nFrom: <sip:alice@localhost>;tag=1\r\nTo: <sip:joe@contoso.test>;tag=2\r\nCall-ID: c\r\nCSeq: 3 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let tx = crate::sip::transaction::TxIds::default().next();
        let i = input(&Input::Edge(EdgeEvent::Transaction(TxEvent::Response {
            tx,
            conn: 1,
            response: refused,
            is_final: true,
        })))
        .unwrap();
        assert_eq!(
            line(&[i], &[]).unwrap(),
            "SIP→-     415 Unsupported Media Type (MESSAGE)  ⇒  nothing"
        );
    }

    #[test]
    fn long_and_hostile_text_is_cut_and_kept_on_one_line() {
        let text = format!("a\r\n\u{1b}[2Jb\u{202e}c{}", "x".repeat(100));
        let s = short(&text);
        assert!(s.starts_with("a [2Jbc"), "{s:?}");
        assert!(s.ends_with('…'));
        assert_eq!(s.chars().count(), TEXT_CHARS + 1);
        assert!(!s.chars().any(char::is_control));
        assert_eq!(short("hi"), "hi");
    }
}
