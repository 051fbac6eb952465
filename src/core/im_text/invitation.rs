//! `text/x-msmsgsinvite`: the MSN Messenger invitation format that Microsoft's SIP clients use
//! to offer a file in an IM session (Windows Messenger, Communicator 2005/2007, and the Lync
//! clients towards peers that do not speak the later `application/ms-filetransfer+xml`). The body
//! is `Name: value` lines (CRLF; a bare LF is accepted):
//!
//! ```text
//! Application-Name: File Transfer
//! Application-GUID: {5D3E02AB-6190-11d3-BBBB-00C04F795683}
//! Invitation-Command: INVITE
//! Invitation-Cookie: 28796
//! Application-File: report.pdf
//! Application-FileSize: 1048576
//! Encryption: R
//! ```
//!
//! The recipient declines with `Invitation-Command: CANCEL`, the offer's cookie and
//! `Cancel-Code: REJECT` in a MESSAGE of the same type in the same session (pidgin-sipe
//! `sipe-ft.c` `ft_request_denied`; its `sipe_process_incoming_x_msmsgsinvite` dispatches on
//! `Invitation-Command`: `INVITE`, `CANCEL`, `ACCEPT`). The bridge transfers no files: it
//! declines every offer that way and tells the XMPP user (docs/mapping.md §4 "File transfer").

use super::BodyError::{self, Malformed};
use crate::core::xml_chars;

/// The content type (essence).
pub const MSMSGSINVITE_TYPE: &str = "text/x-msmsgsinvite";

/// Largest invitation body read, in bytes (real ones are a few hundred).
pub const MAX_INVITATION_BYTES: usize = 8 * 1024;
/// Most characters of a file name shown to the XMPP user.
pub const MAX_FILE_NAME_CHARS: usize = 200;
/// Longest cookie echoed back (real ones are a few digits).
const MAX_COOKIE_BYTES: usize = 64;

/// A file offered by the LCS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOffer {
    /// `Invitation-Cookie`: printable ASCII, no space, at most 64 bytes (it goes back to LCS in
    /// the decline).
    pub cookie: String,
    /// `Application-File`, cleaned (no character XML forbids, no control character) and at
    /// most [`MAX_FILE_NAME_CHARS`] characters (`…` marks a cut); `None` when absent or empty.
    pub name: Option<String>,
    /// `Application-FileSize` in bytes, when a number.
    pub size: Option<u64>,
}

/// What an invitation body asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invitation {
    /// `Invitation-Command: INVITE` with `Application-Name: File Transfer` (or no name).
    FileOffer(FileOffer),
    /// `CANCEL`, `ACCEPT`, or an `INVITE` for another application: nothing to do (the bridge
    /// never offers, and an offer it declined needs no more).
    Other(String),
}

/// Reads an invitation body; `Err` ([`Malformed`]) when it is too large, not UTF-8, has no
/// `Invitation-Command`, or an offer has no usable cookie.
pub fn parse_invitation(body: &[u8]) -> Result<Invitation, BodyError> {
    if body.len() > MAX_INVITATION_BYTES {
        return Err(Malformed(format!(
            "invitation is {} bytes, larger than the limit of {MAX_INVITATION_BYTES} bytes",
            body.len()
        )));
    }
    let text =
        std::str::from_utf8(body).map_err(|_| Malformed("invitation is not UTF-8".to_owned()))?;
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let command = field("Invitation-Command")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Malformed("invitation without Invitation-Command".to_owned()))?;
    let application = field("Application-Name").unwrap_or("File Transfer");
    if !command.eq_ignore_ascii_case("INVITE") || !application.eq_ignore_ascii_case("File Transfer")
    {
        let what = format!("{command} {application}");
        return Ok(Invitation::Other(clean_line(&what, 64)));
    }
    let cookie = field("Invitation-Cookie")
        .filter(|c| {
            !c.is_empty() && c.len() <= MAX_COOKIE_BYTES && c.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| Malformed("file offer without a usable Invitation-Cookie".to_owned()))?;
    let name = field("Application-File")
        .map(|n| clean_line(n, MAX_FILE_NAME_CHARS))
        .filter(|n| !n.trim().is_empty());
    let size = field("Application-FileSize").and_then(|s| s.parse().ok());
    Ok(Invitation::FileOffer(FileOffer {
        cookie: cookie.to_owned(),
        name,
        size,
    }))
}

/// The content type of a Lync file offer's description.
pub const FILETRANSFER_TYPE: &str = "application/ms-filetransfer+xml";
/// Its namespace.
const NS_FILETRANSFER: &str = "http://schemas.microsoft.com/rtc/2009/05/filetransfer";

/// The file a Lync (2010 and later) client offers in an INVITE of its own: a `multipart/mixed`
/// body holding the SDP of the file's media session and an `application/ms-filetransfer+xml`
/// part, `<request requestId="…"><publishFile><fileInfo><id/><name/><size/></fileInfo>
/// </publishFile></request>` (pidgin-sipe `sipe-ft-lync.c`, `process_incoming_invite_ft_lync`
/// and `append_publish_file_invite`). `None` when the body is no such offer (or one the
/// hardened XML reader refuses). The offer's `cookie` is its `requestId`.
pub fn lync_file_offer(content_type: &str, body: &[u8]) -> Option<FileOffer> {
    let mt = super::media_type(content_type).ok()?;
    if !mt.mtype.eq_ignore_ascii_case("multipart") {
        return None;
    }
    let parts = super::multipart::decoded_parts(&mt, body).ok()?;
    let (_, xml) = parts.iter().find(|(ct, _)| {
        super::media_type(ct).is_ok_and(|m| super::essence(&m) == FILETRANSFER_TYPE)
    })?;
    publish_file(xml)
}

/// The `publishFile` request of an `application/ms-filetransfer+xml` document.
fn publish_file(xml: &[u8]) -> Option<FileOffer> {
    use crate::core::xml::{Namespaces, XmlEvent, XmlLimits, XmlReader, split_qname};
    let mut reader = XmlReader::new(xml, &XmlLimits::DEFAULT).ok()?;
    let mut scopes = Namespaces::default();
    // The local names of the open elements in the file-transfer namespace, root first.
    let mut path: Vec<String> = Vec::new();
    let (mut request_id, mut name, mut size) = (None, String::new(), String::new());
    while let Some(event) = reader.next_event().ok()? {
        match event {
            XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                let depth = path.len() + 1;
                scopes.declare(&reader, e, depth).ok()?;
                let qname = e.name();
                let (prefix, local) = split_qname(qname.as_ref());
                let ours = scopes.resolve(prefix) == Some(NS_FILETRANSFER);
                if path.is_empty() {
                    if !(ours && local == "request") {
                        return None;
                    }
                    request_id = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == "requestId")
                        .and_then(|a| {
                            crate::core::xml::attribute_value(&a, reader.position())
                                .ok()
                                .map(|v| v.into_owned())
                        });
                }
                path.push(if ours {
                    local.to_owned()
                } else {
                    String::new()
                });
                if matches!(event, XmlEvent::Empty(_)) {
                    path.pop();
                    scopes.pop_to(path.len());
                }
            }
            XmlEvent::End => {
                path.pop();
                scopes.pop_to(path.len());
            }
            ref text => {
                let field = match path.as_slice() {
                    [_, p, f, n] if p == "publishFile" && f == "fileInfo" => n.as_str(),
                    _ => continue,
                };
                match field {
                    "name" if name.len() < 4 * MAX_FILE_NAME_CHARS => text.push_text(&mut name),
                    "size" if size.len() < 32 => text.push_text(&mut size),
                    _ => {}
                }
            }
        }
    }
    let cookie = request_id
        .filter(|c| !c.is_empty() && c.len() <= MAX_COOKIE_BYTES)
        .filter(|c| c.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_default();
    let name = Some(clean_line(&name, MAX_FILE_NAME_CHARS)).filter(|n| !n.trim().is_empty())?;
    Some(FileOffer {
        cookie,
        name: Some(name),
        size: size.trim().parse().ok(),
    })
}

/// The decline of `offer` (body of a `text/x-msmsgsinvite; charset=UTF-8` MESSAGE).
pub fn decline_body(offer: &FileOffer) -> Vec<u8> {
    format!(
        "Invitation-Command: CANCEL\r\nInvitation-Cookie: {}\r\nCancel-Code: REJECT\r\n",
        offer.cookie
    )
    .into_bytes()
}

/// What the XMPP user is told of `offer` (the one place this text is written).
pub fn offer_notice(offer: &FileOffer) -> String {
    let name = offer.name.as_deref().unwrap_or("(no name)");
    let size = offer
        .size
        .map(human_size)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    format!(
        "[Offered you the file \"{name}\"{size}. This gateway does not transfer files, so the offer \
         was declined; ask for it another way (for example a link or e-mail).]"
    )
}

/// `n` bytes for people: `512 bytes`, `1.5 KB`, `20.0 MB` (units of 1024, as Windows shows).
fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `s` without what XML forbids and without control characters, at most `max` characters.
fn clean_line(s: &str, max: usize) -> String {
    let cleaned = xml_chars::clean(s);
    let mut out: String = cleaned
        .chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect();
    if cleaned
        .chars()
        .filter(|c| !c.is_control())
        .nth(max)
        .is_some()
    {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The offer pidgin-sipe sends (`sipe-ft.c` `sipe_ft_outgoing_init`).
    const SIPE_OFFER: &str = "Application-Name: File Transfer\r\nApplication-GUID: {5D3E02AB-6190-11d3-BBBB-00C04F795683}\r\nInvitation-Command: INVITE\r\nInvitation-Cookie: 28796\r\nApplication-File: report.pdf\r\nApplication-FileSize: 1572864\r\nConnectivity: N\r\nEncryption: R\r\n";

    #[test]
    fn an_offer_is_read_declined_and_described() {
        let Invitation::FileOffer(offer) = parse_invitation(SIPE_OFFER.as_bytes()).unwrap() else {
            panic!("not an offer");
        };
        assert_eq!(
            offer,
            FileOffer {
                cookie: "28796".into(),
                name: Some("report.pdf".into()),
                size: Some(1_572_864)
            }
        );
        assert_eq!(
            decline_body(&offer),
            b"Invitation-Command: CANCEL\r\nInvitation-Cookie: 28796\r\nCancel-Code: REJECT\r\n"
        );
        assert_eq!(
            offer_notice(&offer),
            "[Offered you the file \"report.pdf\" (1.5 MB). This gateway does not transfer files, so \
             the offer was declined; ask for it another way (for example a link or e-mail).]"
        );
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(2048), "2.0 KB");
    }

    #[test]
    fn other_commands_and_bad_bodies() {
        assert_eq!(
            parse_invitation(
                b"Invitation-Command: CANCEL\nInvitation-Cookie: 1\nCancel-Code: TIMEOUT\n"
            ),
            Ok(Invitation::Other("CANCEL File Transfer".into()))
        );
        assert!(matches!(
            parse_invitation(b"Application-Name: File Transfer\r\n"),
            Err(Malformed(_))
        ));
        for cookie in ["", "a b", "x\u{1}", &"9".repeat(65)] {
            let body = format!("Invitation-Command: INVITE\r\nInvitation-Cookie: {cookie}\r\n");
            assert!(
                matches!(parse_invitation(body.as_bytes()), Err(Malformed(_))),
                "{cookie:?}"
            );
        }
        assert!(matches!(parse_invitation(&[0xff, 0xfe]), Err(Malformed(_))));
        let big = vec![b'a'; MAX_INVITATION_BYTES + 1];
        assert!(matches!(parse_invitation(&big), Err(Malformed(_))));
    }

    #[test]
    fn hostile_names_are_cleaned_and_capped() {
        let body = format!(
            "Invitation-Command: INVITE\r\nInvitation-Cookie: 7\r\nApplication-File: a\u{0}b\u{1b}[31m{}\r\nApplication-FileSize: lots\r\n",
            "é".repeat(500)
        );
        let Invitation::FileOffer(offer) = parse_invitation(body.as_bytes()).unwrap() else {
            panic!("not an offer");
        };
        let name = offer.name.unwrap();
        assert!(name.starts_with("ab[31mé"), "{name}");
        assert_eq!(name.chars().count(), MAX_FILE_NAME_CHARS + 1);
        assert!(name.ends_with('…'));
        assert_eq!(offer.size, None);
        let unnamed = parse_invitation(b"Invitation-Command: INVITE\r\nInvitation-Cookie: 7\r\n");
        let Ok(Invitation::FileOffer(unnamed)) = unnamed else {
            panic!("not an offer");
        };
        assert!(offer_notice(&unnamed).starts_with("[Offered you the file \"(no name)\". "));
    }

    /// pidgin-sipe's Lync file offer (`sipe-ft-lync.c` `append_publish_file_invite`), inside a
    /// `multipart/mixed` body beside the SDP; other multiparts and hostile XML are no offer.
    #[test]
    fn a_lync_file_offer_is_read_from_its_multipart_invite() {
        let publish = "<request xmlns=\"http://schemas.microsoft.com/rtc/2009/05/filetransfer\" requestId=\"7\"><publishFile><fileInfo><id>{6244F934}</id><name>a&#x9;b.txt</name><size>2048</size></fileInfo></publishFile></request>";
        let body = |xml: &str, ct: &str| {
            format!(
                "--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b\r\nContent-Type: {ct}\r\n\r\n{xml}\r\n--b--\r\n"
            )
        };
        let offer = lync_file_offer(
            "multipart/mixed; boundary=b",
            body(publish, FILETRANSFER_TYPE).as_bytes(),
        )
        .unwrap();
        assert_eq!(offer.cookie, "7");
        assert_eq!(
            offer.name.as_deref(),
            Some("ab.txt"),
            "control characters removed"
        );
        assert_eq!(offer.size, Some(2048));
        assert!(offer_notice(&offer).contains("\"ab.txt\" (2.0 KB)"));
        // Not an offer: another part type, another namespace, no name, a DTD, not multipart.
        let other_ns = publish.replace("rtc/2009/05/filetransfer", "other");
        let no_name = publish.replace("<name>a&#x9;b.txt</name>", "");
        let dtd = format!("<!DOCTYPE r [<!ENTITY x \"y\">]>{publish}");
        for (xml, ct) in [
            (publish, "application/xml"),
            (other_ns.as_str(), FILETRANSFER_TYPE),
            (no_name.as_str(), FILETRANSFER_TYPE),
            (dtd.as_str(), FILETRANSFER_TYPE),
        ] {
            assert!(
                lync_file_offer("multipart/mixed; boundary=b", body(xml, ct).as_bytes()).is_none(),
                "{xml} {ct}"
            );
        }
        assert!(lync_file_offer("application/sdp", b"v=0").is_none());
        assert!(lync_file_offer("multipart/mixed", b"no boundary").is_none());
    }
}
