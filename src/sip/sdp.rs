//! SDP (RFC 4566) for the profile's session-mode instant messaging: the offer/answer of
//! draft-ietf-simple-im-sdp-00 with the m-line `m=message 5060 sip/tcp *`, answered per
//! RFC 3264 §6 (every m-line the answerer does not take gets port 0).
//!
//! Microsoft endpoints also send `m=message <port> sip null` and (older servers)
//! `m=x-ms-message 5060 sip null` (docs/sip.md "Microsoft extensions"); all are accepted as a
//! message session.
//! Lines are kept as written so nothing the peer sent is lost; only the m-line port is edited.
//! (The `sdp-types` crate parses these m-lines too, but the bridge needs only this lossless
//! line view and three operations, so it is written here.)

use std::fmt::Write as _;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("SDP line {line} is not of the form x=value: {text:?}")]
    BadLine { line: usize, text: String },
    #[error("SDP does not start with v=0")]
    NoVersion,
    #[error("SDP m-line {0:?} is malformed")]
    BadMediaLine(String),
    #[error("SDP is larger than {0} bytes")]
    TooLarge(usize),
}

/// One `x=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub kind: char,
    pub value: String,
}

/// A media section: its m-line and the lines after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub media: String,
    pub port: u16,
    /// `/count` after the port, kept as written.
    pub port_count: Option<String>,
    pub proto: String,
    pub formats: Vec<String>,
    pub lines: Vec<Line>,
}

impl Media {
    /// `true` for the m-lines that mean a SIP message session (the profile's, and Microsoft's).
    pub fn is_message_session(&self) -> bool {
        let proto_ok = self.proto.eq_ignore_ascii_case("sip/tcp")
            || self.proto.eq_ignore_ascii_case("sip")
            || self.proto.eq_ignore_ascii_case("sip/tls");
        self.port != 0
            && ((self.media.eq_ignore_ascii_case("message") && proto_ok)
                || self.media.eq_ignore_ascii_case("x-ms-message"))
    }

    /// The media types of `a=accept-types:` (space separated).
    pub fn accept_types(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.kind == 'a')
            .filter_map(|l| l.value.strip_prefix("accept-types:"))
            .flat_map(str::split_ascii_whitespace)
            .collect()
    }

    /// The m-line as written (`message 5060 sip/tcp *`).
    pub fn m_line(&self) -> String {
        let mut s = format!("{} {}", self.media, self.port);
        if let Some(c) = &self.port_count {
            let _ = write!(s, "/{c}");
        }
        let _ = write!(s, " {}", self.proto);
        for f in &self.formats {
            let _ = write!(s, " {f}");
        }
        s
    }
}

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level lines, `v=` first.
    pub session: Vec<Line>,
    pub media: Vec<Media>,
}

/// Largest SDP body accepted.
pub const MAX_SDP_BYTES: usize = 16 * 1024;

/// The accept-types the bridge offers and answers with.
pub const ACCEPT_TYPES: &str = "text/plain text/html application/im-iscomposing+xml";

impl Sdp {
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        if body.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge(MAX_SDP_BYTES));
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let mut sdp = Sdp {
            session: Vec::new(),
            media: Vec::new(),
        };
        for (n, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            let mut chars = line.chars();
            let (Some(kind), Some('=')) = (chars.next(), chars.next()) else {
                return Err(SdpError::BadLine {
                    line: n + 1,
                    text: line.chars().take(80).collect(),
                });
            };
            if !kind.is_ascii_lowercase() {
                return Err(SdpError::BadLine {
                    line: n + 1,
                    text: line.chars().take(80).collect(),
                });
            }
            let value = &line[2..];
            if sdp.session.is_empty() && !(kind == 'v' && value.trim() == "0") {
                return Err(SdpError::NoVersion);
            }
            if kind == 'm' {
                sdp.media.push(parse_m(value)?);
            } else {
                let l = Line {
                    kind,
                    value: value.to_owned(),
                };
                match sdp.media.last_mut() {
                    Some(m) => m.lines.push(l),
                    None => sdp.session.push(l),
                }
            }
        }
        if sdp.session.is_empty() {
            return Err(SdpError::NoVersion);
        }
        Ok(sdp)
    }

    /// `true` if some m-line is a message session.
    pub fn has_message_session(&self) -> bool {
        self.media.iter().any(Media::is_message_session)
    }

    /// The profile's offer (and the body of OPTIONS answers and 488 responses):
    /// `m=message 5060 sip/tcp *` with the accept-types the bridge handles. `address` goes into
    /// `o=` and `c=` (the edge's FQDN or IP).
    pub fn message_offer(address: &str, session_id: u64) -> Sdp {
        let addr_type = if address.contains(':') { "IP6" } else { "IP4" };
        let line = |kind, value: String| Line { kind, value };
        Sdp {
            session: vec![
                line('v', "0".into()),
                line('o', format!("- {session_id} 0 IN {addr_type} {address}")),
                line('s', "session".into()),
                line('c', format!("IN {addr_type} {address}")),
                line('t', "0 0".into()),
            ],
            media: vec![Media {
                media: "message".into(),
                port: 5060,
                port_count: None,
                proto: "sip/tcp".into(),
                formats: vec!["*".into()],
                lines: vec![line('a', format!("accept-types:{ACCEPT_TYPES}"))],
            }],
        }
    }

    /// The answer to `offer` (RFC 3264 §6): the first message m-line is accepted and answered
    /// with the same media token, protocol and formats (so `x-ms-message … sip null` peers
    /// recognise it) and port 5060; every other m-line is kept with port 0. `None` when the offer has
    /// no message m-line (answer 488 with [`Sdp::message_offer`]).
    pub fn message_answer(offer: &Sdp, address: &str, session_id: u64) -> Option<Sdp> {
        let chosen = offer.media.iter().position(Media::is_message_session)?;
        let mut answer = Sdp::message_offer(address, session_id);
        let template = answer.media.pop()?;
        answer.media = offer
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if i == chosen {
                    Media {
                        media: m.media.clone(),
                        proto: m.proto.clone(),
                        formats: m.formats.clone(),
                        ..template.clone()
                    }
                } else {
                    Media {
                        port: 0,
                        lines: Vec::new(),
                        ..m.clone()
                    }
                }
            })
            .collect();
        Some(answer)
    }
}

fn parse_m(value: &str) -> Result<Media, SdpError> {
    let bad = || SdpError::BadMediaLine(value.chars().take(80).collect());
    let mut parts = value.split_ascii_whitespace();
    let (Some(media), Some(port), Some(proto)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (port, port_count) = match port.split_once('/') {
        Some((p, c)) => (p, Some(c.to_owned())),
        None => (port, None),
    };
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok(Media {
        media: media.to_owned(),
        port,
        port_count,
        proto: proto.to_owned(),
        formats: parts.map(str::to_owned).collect(),
        lines: Vec::new(),
    })
}

impl std::fmt::Display for Sdp {
    /// CRLF-terminated lines (RFC 4566 §5).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.session {
            write!(f, "{}={}\r\n", l.kind, l.value)?;
        }
        for m in &self.media {
            write!(f, "m={}\r\n", m.m_line())?;
            for l in &m.lines {
                write!(f, "{}={}\r\n", l.kind, l.value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_is_the_profiles() {
        let o = Sdp::message_offer("sip.example.org", 42).to_string();
        assert_eq!(
            o,
            "v=0\r\no=- 42 0 IN IP4 sip.example.org\r\ns=session\r\nc=IN IP4 sip.example.org\r\nt=0 0\r\nm=message 5060 sip/tcp *\r\na=accept-types:text/plain text/html application/im-iscomposing+xml\r\n"
        );
        assert!(Sdp::parse(o.as_bytes()).unwrap().has_message_session());
    }

    #[test]
    fn accepts_microsoft_variants() {
        for m in [
            "m=message 5060 sip/tcp *",
            "m=message 5061 sip null",
            "m=x-ms-message 5060 sip null",
            "m=MESSAGE 5060 SIP/TCP *",
        ] {
            let body = format!(
                "v=0\r\no=- 0 0 IN IP4 10.0.0.1\r\ns=session\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n{m}\r\na=accept-types:text/plain text/rtf multipart/alternative\r\n"
            );
            let sdp = Sdp::parse(body.as_bytes()).unwrap();
            assert!(sdp.has_message_session(), "{m}");
            assert_eq!(
                sdp.media[0].accept_types(),
                ["text/plain", "text/rtf", "multipart/alternative"]
            );
        }
        let audio =
            Sdp::parse(b"v=0\no=- 0 0 IN IP4 h\ns=-\nt=0 0\nm=audio 49170 RTP/AVP 0\n").unwrap();
        assert!(!audio.has_message_session());
        assert_eq!(Sdp::message_answer(&audio, "h", 1), None);
    }

    #[test]
    fn answer_keeps_message_and_rejects_the_rest() {
        let offer = Sdp::parse(
            b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=session\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\nm=x-ms-message 5060 sip null\r\nm=video 51372/2 RTP/AVP 31\r\n",
        )
        .unwrap();
        let answer = Sdp::message_answer(&offer, "192.0.2.7", 9)
            .unwrap()
            .to_string();
        assert_eq!(
            answer,
            "v=0\r\no=- 9 0 IN IP4 192.0.2.7\r\ns=session\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 0 RTP/AVP 0 8\r\nm=x-ms-message 5060 sip null\r\na=accept-types:text/plain text/html application/im-iscomposing+xml\r\nm=video 0/2 RTP/AVP 31\r\n"
        );
    }

    #[test]
    fn errors() {
        assert_eq!(Sdp::parse(b"o=x\r\n").unwrap_err(), SdpError::NoVersion);
        assert_eq!(
            Sdp::parse(b"v=0\r\nm=message x sip/tcp *\r\n")
                .unwrap_err()
                .to_string(),
            "SDP m-line \"message x sip/tcp *\" is malformed"
        );
        assert_eq!(
            Sdp::parse(b"v=0\r\nhello\r\n").unwrap_err().to_string(),
            "SDP line 2 is not of the form x=value: \"hello\""
        );
        assert_eq!(Sdp::parse(&[0xff]).unwrap_err(), SdpError::NotUtf8);
    }
}
