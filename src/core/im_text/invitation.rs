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
}
