//! The administrator's views of wire data (`lcs-bridge inspect …`): a SIP message, a PIDF
//! document or an XMPP presence captured from a real peer, shown as the bridge understands it.
//! No I/O: the CLI reads the input and prints the result.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::core::address::{AddressBook, AddressError, SipAddress, check_scheme, unescape_node};
use crate::core::ms_presence;
use crate::core::pidf::{self, Basic, PidfDocument};
use crate::core::presence::{pidf_for_presence, xmpp_view_of_pidf};
use crate::core::tables::Mappings;
use crate::sip::header::{Contact, MediaType, NameAddr};
use crate::sip::message::Message;
use crate::sip::sdp::Sdp;
use crate::sip::uri::Uri;

/// Captures saved by text tools often have bare LF line ends; SIP needs CRLF. A capture that
/// contains no CR at all is converted (Content-Length then counts the converted body).
pub fn normalize_line_ends(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if input.contains(&b'\r') {
        return input.into();
    }
    let mut out = Vec::with_capacity(input.len() + input.len() / 16);
    for &b in input {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out.into()
}

fn addr_json(n: &NameAddr<'_>) -> Value {
    json!({
        "uri": n.uri,
        "display_name": n.display_name,
        "tag": n.tag(),
        "epid": n.epid(),
    })
}

/// The JSON view of one SIP message (`inspect sip`). Fails with the parse error that names the
/// problem.
pub fn sip(input: &[u8], mappings: &Mappings) -> Result<Value, String> {
    let input = normalize_line_ends(input);
    let m = Message::parse(&input).map_err(|e| e.to_string())?;
    let e = |err: crate::sip::error::ParseError| err.to_string();
    let mut out = serde_json::Map::new();
    match (m.method(), m.status()) {
        (Some(method), _) => {
            out.insert("method".into(), json!(method.as_str()));
            out.insert("request_uri".into(), json!(m.request_uri()));
        }
        (None, Some(status)) => {
            out.insert("status".into(), json!(status));
            out.insert("reason".into(), json!(m.reason()));
        }
        (None, None) => {}
    }
    let cseq = m.cseq().map_err(e)?;
    out.insert("call_id".into(), json!(m.call_id().map_err(e)?));
    out.insert(
        "cseq".into(),
        json!({"number": cseq.number, "method": cseq.method.as_str()}),
    );
    out.insert("from".into(), addr_json(&m.from().map_err(e)?));
    out.insert("to".into(), addr_json(&m.to().map_err(e)?));
    let vias: Vec<Value> = m
        .via()
        .map_err(e)?
        .iter()
        .map(|v| {
            json!({
                "transport": v.transport,
                "host": v.host,
                "port": v.port,
                "branch": v.branch(),
                "received": v.received(),
                "rport": v.rport().map(|p| p.map_or(json!(true), |p| json!(p))),
                "ms_received_port": v.ms_received_port(),
            })
        })
        .collect();
    out.insert("via".into(), Value::Array(vias));
    let contact = match m.contact().map_err(e)? {
        None => Value::Null,
        Some(Contact::Star) => json!("*"),
        Some(Contact::Addresses(list)) => list
            .iter()
            .map(|c| {
                json!({
                    "uri": c.uri,
                    "display_name": c.display_name,
                    "expires": c.expires(),
                    "sip_instance": c.sip_instance(),
                    "proxy_replace": c.proxy_replace(),
                })
            })
            .collect(),
    };
    out.insert("contact".into(), contact);
    let uris = |list: Vec<NameAddr<'_>>| list.iter().map(|r| r.uri.to_owned()).collect::<Vec<_>>();
    out.insert("route".into(), json!(uris(m.route().map_err(e)?)));
    out.insert(
        "record_route".into(),
        json!(uris(m.record_route().map_err(e)?)),
    );
    out.insert("max_forwards".into(), json!(m.max_forwards().map_err(e)?));
    out.insert("expires".into(), json!(m.expires().map_err(e)?));
    out.insert(
        "event".into(),
        json!(m.event().map_err(e)?.map(|ev| ev.package)),
    );
    out.insert(
        "subscription_state".into(),
        m.subscription_state().map_err(e)?.map_or(
            Value::Null,
            |s| json!({"state": s.state, "reason": s.reason(), "expires": s.expires()}),
        ),
    );
    let content_type = m.content_type().map_err(e)?;
    out.insert(
        "content_type".into(),
        json!(content_type.map(|c| format!("{}/{}", c.mtype, c.subtype))),
    );
    out.insert(
        "content_length".into(),
        json!(m.content_length().map_err(e)?),
    );
    out.insert("allow".into(), json!(m.allow().collect::<Vec<_>>()));
    out.insert("supported".into(), json!(m.supported().collect::<Vec<_>>()));
    out.insert("require".into(), json!(m.require().collect::<Vec<_>>()));
    out.insert("has_sips_uri".into(), json!(m.find_sips_uri().is_some()));
    if let Some((place, _)) = m.find_sips_uri() {
        out.insert("sips_uri_in".into(), json!(place));
    }
    if let Some(v) = m.header("ms-text-format") {
        out.insert("ms_text_format".into(), ms_text_format(v));
    }
    out.insert("header_count".into(), json!(m.header_count()));
    if let Some(ct) = content_type {
        if let Some(body) = body_json(&ct, m.body(), mappings)? {
            out.extend(body);
        }
    }
    Ok(Value::Object(out))
}

/// Microsoft's first-message-in-INVITE header: `text/plain; charset=UTF-8;ms-body=<base64>`
/// (docs/mapping.md §4).
fn ms_text_format(value: &str) -> Value {
    let Ok(ct) = MediaType::parse(value) else {
        return json!({"error": "not a media type"});
    };
    let text = ct.params.value("ms-body").map(|b| {
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| format!("ms-body is not base64: {e}"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    });
    json!({
        "content_type": format!("{}/{}", ct.mtype, ct.subtype),
        "text": text.as_ref().map(|t| t.as_ref().ok()),
        "error": text.and_then(Result::err),
    })
}

fn body_json(
    ct: &MediaType<'_>,
    body: &[u8],
    mappings: &Mappings,
) -> Result<Option<serde_json::Map<String, Value>>, String> {
    let mut out = serde_json::Map::new();
    if ct.is("application/pidf+xml") {
        let doc = pidf::parse(body).map_err(|e| format!("PIDF body: {e}"))?;
        out.insert("presence".into(), presence_json(&doc, mappings));
    } else if ct.is(ms_presence::CATEGORIES_TYPE) || ct.is(ms_presence::MSRTC_PIDF_TYPE) {
        let doc = if ct.is(ms_presence::CATEGORIES_TYPE) {
            ms_presence::parse_categories(body)
        } else {
            ms_presence::parse_msrtc_pidf(body)
        }
        .map_err(|e| format!("enhanced presence body: {e}"))?;
        out.insert(
            "enhanced_presence".into(),
            enhanced_presence_json(&doc, mappings),
        );
    } else if ct.is("application/sdp") {
        let sdp = Sdp::parse(body).map_err(|e| format!("SDP body: {e}"))?;
        out.insert(
            "sdp".into(),
            json!({
                "message_session": sdp.has_message_session(),
                "m_lines": sdp.media.iter().map(|m| m.m_line()).collect::<Vec<_>>(),
                "accept_types": sdp.media.iter().find(|m| m.is_message_session()).map(|m| m.accept_types()),
            }),
        );
    } else if ct.mtype.eq_ignore_ascii_case("text") {
        out.insert("text".into(), json!(String::from_utf8_lossy(body)));
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

/// The `presence` object shared by `inspect sip` and `inspect pidf`.
pub fn presence_json(doc: &PidfDocument, mappings: &Mappings) -> Value {
    let view = xmpp_view_of_pidf(doc, &mappings.presence);
    json!({
        "entity": doc.entity,
        "basic": doc.basic.map(|b| match b { Basic::Open => "open", Basic::Closed => "closed" }),
        "activity": doc.activity,
        "note": doc.notes.first().map(|n| &n.text),
        "note_lang": doc.notes.first().and_then(|n| n.lang.as_ref()),
        "display_name": doc.display_name,
        "icon": doc.icon,
        "xmpp_show": view.show.as_str(),
        "xmpp_status": view.status,
    })
}

/// The `enhanced_presence` object of `inspect sip`: what a Microsoft categories or msrtc.pidf
/// body says and what the bridge shows for it (docs/mapping.md §2; a document that is only
/// part of a contact's state shows what it alone gives).
fn enhanced_presence_json(doc: &ms_presence::MsPresence, mappings: &Mappings) -> Value {
    let view = crate::core::presence::xmpp_view_of_ms(doc, &mappings.presence);
    json!({
        "uri": doc.uri,
        "availability": doc.state.as_ref().map(|s| s.availability),
        "activity": doc.state.as_ref().and_then(|s| s.activity.as_ref()),
        "custom": doc.state.as_ref().and_then(|s| s.custom.as_ref()),
        "note": doc.note.as_ref().map(|n| &n.text),
        "note_kind": doc.note.as_ref().map(|n| match n.kind {
            ms_presence::NoteKind::Personal => "personal",
            ms_presence::NoteKind::OutOfOffice => "OOF",
        }),
        "display_name": doc.display_name,
        "xmpp_show": view.as_ref().map(|v| v.show.as_str()),
        "xmpp_status": view.and_then(|v| v.status),
    })
}

/// `inspect pidf`: the presence object of a bare PIDF document.
pub fn pidf(input: &[u8], mappings: &Mappings) -> Result<Value, String> {
    let doc = pidf::parse(input).map_err(|e| e.to_string())?;
    Ok(presence_json(&doc, mappings))
}

/// `inspect presence`: the PIDF document the bridge sends for an XMPP `<presence/>`. The
/// entity is the sender's bare JID as a SIP AOR unless `entity` is given.
pub fn presence(
    xml: &str,
    entity: Option<&str>,
    icon: Option<&str>,
    mappings: &Mappings,
) -> Result<String, String> {
    let p = crate::xmpp::parse_presence(xml).map_err(|e| e.to_string())?;
    let entity = match (entity, &p.from) {
        (Some(e), _) => e.to_owned(),
        // A local user: the bare JID's localpart (XEP-0106-unescaped) at its domain.
        (None, Some(from)) => SipAddress {
            user: from
                .node()
                .map(|n| unescape_node(n.as_str()))
                .unwrap_or_default(),
            host: from.domain().to_string(),
            gruu: None,
        }
        .to_uri(),
        (None, None) => {
            return Err(
                "the presence has no 'from' attribute: pass --entity sip:user@domain".into(),
            );
        }
    };
    match Uri::parse(&entity) {
        Ok(u) if u.is_sips() => return Err(AddressError::SipsScheme.to_string()),
        Ok(Uri::Sip(_)) => {}
        Ok(_) => return Err(format!("entity {entity:?} is not a sip: URI")),
        Err(e) => return Err(format!("entity: {e}")),
    }
    let nick = p
        .payloads
        .iter()
        .find(|el| el.is("nick", "http://jabber.org/protocol/nick"))
        .map(|el| el.text());
    let doc = pidf_for_presence(&p, &entity, nick.as_deref(), icon, &mappings.presence);
    Ok(pidf::render(&doc))
}

/// `inspect address`: a JID becomes a SIP URI and a `sip:` URI becomes a JID, in the
/// configured mode.
pub fn address(book: &AddressBook, input: &str) -> Result<String, String> {
    let input = input.trim();
    let scheme = input.split_once(':').map(|(s, _)| s).unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        // Not a SIP URI: a JID (':' cannot occur in a localpart, only in a resource).
        let jid = xmpp_parsers::jid::Jid::new(input)
            .map_err(|e| format!("{input:?} is not a JID: {e}"))?;
        return book
            .jid_to_sip(&jid)
            .map(|a| a.to_uri())
            .map_err(|e| e.to_string());
    }
    check_scheme(&scheme.to_ascii_lowercase()).map_err(|e| e.to_string())?;
    book.uri_to_jid(input).map(|j| j.to_string())
}
