//! Address mapping: XMPP JIDs ⇄ SIP addresses of record (AORs), in both deployment modes.
//!
//! No I/O, no clock; every input is untrusted and no input panics.
//!
//! # Standards
//!
//! - **XEP-0106** (JID Escaping): [`escape_node`] / [`unescape_node`] implement its ten
//!   escapes (`\20 \22 \26 \27 \2f \3a \3c \3e \40 \5c`); a backslash in the input is itself
//!   escaped (`\5c`) only when it is followed by one of those hex pairs; only those sequences
//!   unescape; `\20` may not begin or end a localpart. A gateway that escapes advertises the
//!   disco feature [`JID_ESCAPING_FEATURE`].
//! - **RFC 7247 §6** (SIP–XMPP interworking, address mapping): the XMPP localpart maps to the SIP
//!   user part and the domainpart to the host; characters a JID localpart cannot hold are escaped
//!   (XEP-0106) or the address is refused with an error; the resourcepart is not part of an AOR.
//! - **RFC 3261 §19.1.1 / §25.1**: a SIP `user` is `1*( unreserved / escaped / user-unreserved )`;
//!   [`SipAddress::to_uri`] percent-encodes (`%XX`, each UTF-8 byte, upper-case hex) everything
//!   else.
//! - **RFC 5627** (GRUU): a specific endpoint is named by the `gr` URI parameter; a remote
//!   contact's XMPP resource ⇄ the `gr` value. The `gr` value is a `pvalue`
//!   (`1*paramchar`), so it is percent-encoded, never quoted.
//! - **LCS interdomain federation profile**: To/From carry AORs (no resource, no GRUU — the
//!   engine uses [`SipAddress::aor`] for them) and LCS validates their domains; the SIPS scheme
//!   is never used (a message carrying a `sips:` URI is malformed) — [`SipAddress::to_uri`] only
//!   ever writes `sip:`, and [`check_scheme`] refuses `sips:`.
//!
//! # The two modes (docs/addresses.md)
//!
//! | mode | XMPP address of LCS user `sip:joe@contoso.com` | SIP address of XMPP user `alice@example.org` |
//! | --- | --- | --- |
//! | [`AddressMode::Direct`] (one component per LCS domain, here `contoso.com`) | `joe@contoso.com` | `sip:alice@example.org` |
//! | [`AddressMode::Gateway`] (one component, here `lcs.example.org`) | `joe\40contoso.com@lcs.example.org` (also accepted: `joe%contoso.com@lcs.example.org`) | `sip:alice@example.org` |
//!
//! Worked examples, with `local_domains = ["example.org"]`:
//!
//! | mode | input | output |
//! | --- | --- | --- |
//! | gateway | JID `joe\40contoso.com@lcs.example.org` | `sip:joe@contoso.com` |
//! | gateway | JID `joe%contoso.com@lcs.example.org` | `sip:joe@contoso.com` |
//! | gateway | JID `joe\40contoso.com@lcs.example.org/urn:uuid:1` | `sip:joe@contoso.com;gr=urn:uuid:1` |
//! | gateway | SIP `Joe.Smith` @ `Contoso.COM` | JID `joe.smith\40contoso.com@lcs.example.org` |
//! | gateway | SIP `o'hara` @ `contoso.com` | JID `o\27hara\40contoso.com@lcs.example.org` |
//! | gateway | JID `joe\40example.org@lcs.example.org` | error: loop |
//! | direct | JID `joe@contoso.com` | `sip:joe@contoso.com` |
//! | direct | SIP `joe` @ `fabrikam.com` (no component) | error: not federated |
//! | both | JID `alice@example.org/phone` | `sip:alice@example.org` (local resource dropped) |
//! | both | JID `d\27artagnan@example.org` | `sip:d'artagnan@example.org` |
//! | both | SIP `a b@c` @ `example.org` | JID `a\20b\40c@example.org`; URI `sip:a%20b%40c@example.org` |
//! | both | SIP `joe@fabrikam.com` @ `contoso.com` (an LCS user) | error: `@` in an LCS user part |
//!
//! # Decisions (see `docs/addresses.md` for the full table and reasons)
//!
//! - **Case.** JID localparts are case-folded by nodeprep; SIP user parts are case-sensitive in
//!   RFC 3261, but LCS AORs come from Active Directory and match case-insensitively. The bridge
//!   lower-cases (Unicode [`str::to_lowercase`]) the user part and the host in both directions,
//!   so one LCS user has exactly one JID and one AOR.
//! - **Reversibility.** A SIP user part is mapped only if its lower-cased, escaped form is
//!   already a nodeprep-stable localpart; if nodeprep would change it further (compatibility
//!   forms such as `ﬁ`, `ß` → `ss`, removed characters such as U+00AD) or forbids a character
//!   (controls, non-ASCII spaces, private use, bidi violations), the address is refused with
//!   [`AddressError::UnmappableUser`] rather than silently mapped to a different user.
//!   GRUUs likewise must be resourceprep-stable.
//! - **Spaces.** A user part that begins or ends with a space is refused in both directions
//!   (XEP-0106: `\20` may not begin or end a localpart). An empty user part is refused.
//! - **Lengths.** The escaped localpart and the resource are at most 1023 bytes (RFC 7622 §3.1);
//!   domains at most 253 bytes, labels at most 63.
//! - **Domains.** Well-formed means ASCII `a-z 0-9 -` labels separated by dots, no empty label,
//!   no label beginning or ending with `-`, not an IPv4 literal (last label all digits); IDNs are
//!   written in their A-label (`xn--`) form. Configured domains must already be lower-case;
//!   domains taken from traffic are lower-cased first.
//! - **GRUUs.** A remote contact's resource ⇄ `gr`; a local user's resource is dropped on the way
//!   to SIP (To/From are AORs), while a `gr` on a local user's URI (a GRUU the bridge handed
//!   out) becomes the resource on the way to XMPP. An empty `gr` value names no endpoint and
//!   maps to no resource.

use std::fmt;

use xmpp_parsers::jid::{BareJid, DomainPart, Error as JidError, Jid, NodePart, ResourcePart};

/// The XEP-0030 feature a gateway that applies XEP-0106 escaping advertises.
pub const JID_ESCAPING_FEATURE: &str = "jid\\20escaping";

/// Maximum size in bytes of a JID localpart or resourcepart (RFC 7622 §3.1).
pub const MAX_JID_PART_BYTES: usize = 1023;

/// Maximum size in bytes of a domain name (RFC 1035 §2.3.4, written form without the root dot).
pub const MAX_DOMAIN_BYTES: usize = 253;

/// At most this many characters of an offending input are quoted in an error message.
const SHOWN_CHARS: usize = 100;

/// How LCS users appear on the XMPP side (docs/addresses.md "The two modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    /// One component (e.g. `lcs.example.org`); LCS users are `joe\40contoso.com@lcs.example.org`.
    Gateway,
    /// One component per federated LCS domain (e.g. `contoso.com`); LCS users are
    /// `joe@contoso.com`.
    Direct,
}

impl fmt::Display for AddressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressMode::Gateway => "gateway",
            AddressMode::Direct => "direct",
        })
    }
}

/// Why an address cannot be mapped, or why the address configuration is invalid.
///
/// Each message is one line that names the problem and quotes the offending input (quoted as
/// a Rust string literal, at most 100 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// A domain is not well-formed; `what` says where it came from.
    #[error("{what} {domain:?} is not a well-formed domain: {reason}")]
    InvalidDomain {
        /// "local domain", "component domain", "SIP host", "gateway target domain", "domain".
        what: &'static str,
        /// The offending domain.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Gateway mode was configured with zero or several component domains.
    #[error("gateway mode needs exactly one component domain, {count} given")]
    GatewayComponentCount {
        /// How many were given.
        count: usize,
    },
    /// Direct mode was configured without component domains.
    #[error("direct mode needs at least one component domain (one per federated LCS domain)")]
    NoComponentDomain,
    /// No local XMPP domain was configured.
    #[error("at least one local XMPP domain is needed")]
    NoLocalDomain,
    /// A domain is configured both as local and as a component domain.
    #[error("{domain:?} is listed both as a local domain and as a component domain")]
    LocalAndComponent {
        /// The domain.
        domain: String,
    },
    /// A domain is listed twice.
    #[error("{domain:?} is listed twice")]
    DuplicateDomain {
        /// The domain.
        domain: String,
    },
    /// A JID without localpart names a server or component, never a user.
    #[error("JID {jid:?} has no localpart: it addresses a server or component, not a user")]
    NoLocalpart {
        /// The JID.
        jid: String,
    },
    /// The domain is neither local nor served by a component of this bridge.
    #[error("{domain:?} is not a local domain nor served by a component ({mode} mode)")]
    NotFederated {
        /// The domain.
        domain: String,
        /// The configured mode.
        mode: AddressMode,
    },
    /// A gateway-mode JID whose localpart does not name `user@domain`.
    #[error(
        "gateway JID localpart {localpart:?} names no LCS address: expected user\\40domain (XEP-0106) or user%domain"
    )]
    NoGatewayTarget {
        /// The localpart as found in the JID.
        localpart: String,
    },
    /// Addressing a local or component domain through the gateway would loop.
    #[error(
        "{domain:?} is a local or component domain: addressing it through the gateway would loop"
    )]
    Loop {
        /// The domain.
        domain: String,
    },
    /// A JID localpart that has no SIP user part.
    #[error("JID localpart {localpart:?} cannot be a SIP user part: {reason}")]
    UnmappableLocalpart {
        /// The localpart as found in the JID.
        localpart: String,
        /// Why.
        reason: String,
    },
    /// A SIP user part that has no JID localpart.
    #[error("SIP user part {user:?} cannot be a JID localpart: {reason}")]
    UnmappableUser {
        /// The (decoded) user part.
        user: String,
        /// Why.
        reason: String,
    },
    /// A GRUU `gr` value that cannot be a JID resource.
    #[error("GRUU {gruu:?} cannot be a JID resource: {reason}")]
    UnmappableGruu {
        /// The `gr` value.
        gruu: String,
        /// Why.
        reason: String,
    },
    /// A `sips:` URI (the profile treats any message carrying one as malformed).
    #[error("sips: URIs are never used with LCS (profile: SIPS scheme)")]
    SipsScheme,
    /// A URI scheme other than `sip:` where an LCS user is expected.
    #[error("URI scheme {scheme:?} cannot address an LCS user: only sip: is used")]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
    },
}

/// Shortens `s` for quoting in an error message.
pub(crate) fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn invalid_domain(what: &'static str, domain: &str, reason: impl Into<String>) -> AddressError {
    AddressError::InvalidDomain {
        what,
        domain: shown(domain),
        reason: reason.into(),
    }
}

fn unmappable_user(user: &str, reason: impl Into<String>) -> AddressError {
    AddressError::UnmappableUser {
        user: shown(user),
        reason: reason.into(),
    }
}

/// Why an LCS user part may not hold `@`: in a JID, and in what an XMPP client shows of it,
/// `sip:joe%40fabrikam.com@contoso.com` (user `joe@fabrikam.com` at partner `contoso.com`)
/// reads as a user of fabrikam.com. No directory-derived SIP address contains one, so the
/// address is refused instead of mapped to something misleading.
const SPOOFING_USER: &str =
    "an LCS user part may not contain '@' (it would read as an address of another domain)";

/// `Err` when a remote (LCS) user part holds `@` ([`SPOOFING_USER`]).
fn check_remote_user(
    user: &str,
    error: impl FnOnce(&'static str) -> AddressError,
) -> Result<(), AddressError> {
    if user.contains('@') {
        return Err(error(SPOOFING_USER));
    }
    Ok(())
}

fn unmappable_localpart(localpart: &str, reason: impl Into<String>) -> AddressError {
    AddressError::UnmappableLocalpart {
        localpart: shown(localpart),
        reason: reason.into(),
    }
}

/// Checks that `domain` is a well-formed DNS domain name as the bridge accepts it (see the
/// module documentation): ASCII LDH labels, no empty label, ≤ 63 bytes a label, ≤ 253 bytes,
/// not an IPv4 literal, and lower-case. `what` names the domain's origin in the error.
pub fn check_domain(what: &'static str, domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(invalid_domain(what, domain, "it is empty"));
    }
    if !domain.is_ascii() {
        return Err(invalid_domain(
            what,
            domain,
            "it is not ASCII (write internationalised domains in their A-label xn-- form)",
        ));
    }
    if domain.len() > MAX_DOMAIN_BYTES {
        return Err(invalid_domain(
            what,
            domain,
            format!("it is {} bytes, more than {MAX_DOMAIN_BYTES}", domain.len()),
        ));
    }
    if domain.ends_with('.') {
        return Err(invalid_domain(what, domain, "it must not end with a dot"));
    }
    let mut last = "";
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(invalid_domain(
                what,
                domain,
                "it has an empty label (leading or doubled dot)",
            ));
        }
        if label.len() > 63 {
            return Err(invalid_domain(
                what,
                domain,
                format!("label {:?} is longer than 63 bytes", shown(label)),
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(invalid_domain(
                what,
                domain,
                format!("it contains {c:?} (only letters, digits, '-' and '.' are allowed)"),
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid_domain(
                what,
                domain,
                format!("label {:?} begins or ends with '-'", shown(label)),
            ));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_domain(
            what,
            domain,
            "it is an IP address literal, not a domain name",
        ));
    }
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid_domain(
            what,
            domain,
            format!("it must be lower-case ({:?})", domain.to_ascii_lowercase()),
        ));
    }
    Ok(())
}

/// Lower-cases a domain taken from traffic and checks it.
fn normalise_domain(what: &'static str, domain: &str) -> Result<String, AddressError> {
    let lower = domain.to_ascii_lowercase();
    match check_domain(what, &lower) {
        Ok(()) => Ok(lower),
        // Report the domain as received, not lower-cased.
        Err(AddressError::InvalidDomain { what, reason, .. }) => {
            Err(invalid_domain(what, domain, reason))
        }
        Err(other) => Err(other),
    }
}

/// Checks a URI scheme for use with LCS: `sip` (any case) is accepted, `sips` is refused
/// ([`AddressError::SipsScheme`], the profile), anything else is not an LCS user's address.
pub fn check_scheme(scheme: &str) -> Result<(), AddressError> {
    if scheme.eq_ignore_ascii_case("sip") {
        Ok(())
    } else if scheme.eq_ignore_ascii_case("sips") {
        Err(AddressError::SipsScheme)
    } else {
        Err(AddressError::UnsupportedScheme {
            scheme: shown(scheme),
        })
    }
}

/// The XEP-0106 escape table: (character, hex pair).
const ESCAPES: [(char, &str); 10] = [
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

fn escape_of(c: char) -> Option<&'static str> {
    ESCAPES.iter().find(|(ch, _)| *ch == c).map(|(_, hex)| *hex)
}

/// The character for an exact (lower-case) XEP-0106 hex pair.
fn unescape_of(hex: &[u8]) -> Option<char> {
    ESCAPES
        .iter()
        .find(|(_, h)| h.as_bytes() == hex)
        .map(|(c, _)| *c)
}

/// Whether `rest` (what follows a backslash) begins with an escape sequence's hex pair, in
/// either case: a later nodeprep case-fold would turn `\2F` into the escape `\2f`.
fn starts_with_escape_code(rest: &[u8]) -> bool {
    match rest {
        [a, b, ..] => unescape_of(&[a.to_ascii_lowercase(), b.to_ascii_lowercase()]).is_some(),
        _ => false,
    }
}

/// XEP-0106 escaping of a localpart.
///
/// Space `"` `&` `'` `/` `:` `<` `>` `@` become `\20 \22 \26 \27 \2f \3a \3c \3e \40`; a
/// backslash becomes `\5c` only when followed by one of the ten hex pairs (compared without
/// regard to case, so the result stays reversible after a nodeprep case-fold); everything else
/// is copied. `unescape_node(&escape_node(x)) == x` for every `x`.
///
/// This function does not validate: a leading or trailing space yields a leading or trailing
/// `\20`, which XEP-0106 forbids; [`AddressBook`] refuses such user parts before escaping.
pub fn escape_node(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (i, c) in s.char_indices() {
        match escape_of(c) {
            Some(hex) if c != '\\' || starts_with_escape_code(&s.as_bytes()[i + 1..]) => {
                out.push('\\');
                out.push_str(hex);
            }
            _ => out.push(c),
        }
    }
    out
}

/// XEP-0106 unescaping of a localpart: exactly the ten sequences `\20 \22 \26 \27 \2f \3a \3c
/// \3e \40 \5c` (lower-case hex, as nodeprep leaves them) are replaced, in one left-to-right
/// pass; any other backslash is copied.
pub fn unescape_node(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(c) = bytes.get(i + 1..i + 3).and_then(unescape_of) {
                out.push_str(&s[copied..i]);
                out.push(c);
                i += 3;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

/// A SIP address: an AOR `sip:user@host`, or a GRUU when `gruu` is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SipAddress {
    /// The user part, decoded (no `%XX`).
    pub user: String,
    /// The host (a lower-case domain when produced by [`AddressBook`]).
    pub host: String,
    /// The GRUU `gr` parameter's value (RFC 5627), decoded; `None` for an AOR.
    pub gruu: Option<String>,
}

/// RFC 3261 §25.1 `unreserved` = alphanum / mark.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// RFC 3261 §25.1 `user-unreserved`.
fn is_user_unreserved(b: u8) -> bool {
    b"&=+$,;?/".contains(&b)
}

/// RFC 3261 §25.1 `param-unreserved`.
fn is_param_unreserved(b: u8) -> bool {
    b"[]/:&+$".contains(&b)
}

fn percent_encode(out: &mut String, s: &str, allowed: impl Fn(u8) -> bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if allowed(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

impl SipAddress {
    /// Renders `sip:user@host` (or `sip:host` when `user` is empty), the user part
    /// percent-encoded per RFC 3261 §25.1 (`%XX`, upper-case hex, for every byte outside
    /// `unreserved` / `user-unreserved`), followed by `;gr=value` (value percent-encoded outside
    /// `paramchar`; a bare `;gr` when empty) when a GRUU is set. Never `sips:`.
    pub fn to_uri(&self) -> String {
        let mut out = String::with_capacity(self.user.len() + self.host.len() + 8);
        out.push_str("sip:");
        if !self.user.is_empty() {
            percent_encode(&mut out, &self.user, |b| {
                is_unreserved(b) || is_user_unreserved(b)
            });
            out.push('@');
        }
        out.push_str(&self.host);
        if let Some(gr) = &self.gruu {
            out.push_str(";gr");
            if !gr.is_empty() {
                out.push('=');
                percent_encode(&mut out, gr, |b| is_unreserved(b) || is_param_unreserved(b));
            }
        }
        out
    }

    /// The AOR: this address without its GRUU (what To/From carry, per the profile).
    pub fn aor(&self) -> SipAddress {
        SipAddress {
            user: self.user.clone(),
            host: self.host.clone(),
            gruu: None,
        }
    }
}

impl fmt::Display for SipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// The address configuration and the mapping between JIDs and SIP addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressBook {
    mode: AddressMode,
    component_domains: Vec<String>,
    local_domains: Vec<String>,
}

fn check_list(
    what: &'static str,
    domains: &[String],
    seen: &mut Vec<String>,
) -> Result<(), AddressError> {
    for d in domains {
        check_domain(what, d)?;
        if seen.contains(d) {
            return Err(AddressError::DuplicateDomain { domain: shown(d) });
        }
        seen.push(d.clone());
    }
    Ok(())
}

impl AddressBook {
    /// Validates the configuration: every domain well-formed and lower-case (see
    /// [`check_domain`]), none listed twice, at least one local domain, exactly one component
    /// domain in gateway mode and at least one in direct mode, local and component domains
    /// disjoint.
    pub fn new(
        mode: AddressMode,
        component_domains: Vec<String>,
        local_domains: Vec<String>,
    ) -> Result<AddressBook, AddressError> {
        let mut seen = Vec::new();
        check_list("local domain", &local_domains, &mut seen)?;
        let mut seen_components = Vec::new();
        check_list("component domain", &component_domains, &mut seen_components)?;
        if let Some(d) = component_domains.iter().find(|d| local_domains.contains(d)) {
            return Err(AddressError::LocalAndComponent { domain: shown(d) });
        }
        if local_domains.is_empty() {
            return Err(AddressError::NoLocalDomain);
        }
        match mode {
            AddressMode::Gateway if component_domains.len() != 1 => {
                return Err(AddressError::GatewayComponentCount {
                    count: component_domains.len(),
                });
            }
            AddressMode::Direct if component_domains.is_empty() => {
                return Err(AddressError::NoComponentDomain);
            }
            _ => {}
        }
        Ok(AddressBook {
            mode,
            component_domains,
            local_domains,
        })
    }

    /// The configured mode.
    pub fn mode(&self) -> AddressMode {
        self.mode
    }

    /// The component domains (exactly one in gateway mode).
    pub fn component_domains(&self) -> &[String] {
        &self.component_domains
    }

    /// The local XMPP domains (what LCS peers federate with).
    pub fn local_domains(&self) -> &[String] {
        &self.local_domains
    }

    /// Whether `domain` (lower-case) is one of the local XMPP domains.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d == domain)
    }

    /// Whether `domain` (lower-case) is one of the component domains.
    pub fn is_component_domain(&self, domain: &str) -> bool {
        self.component_domains.iter().any(|d| d == domain)
    }

    /// Maps a JID to the SIP address LCS knows it by.
    ///
    /// - Domain in `local_domains`: a local user, `sip:localpart@domain` (localpart unescaped);
    ///   the resource is dropped (To/From carry AORs).
    /// - Gateway mode, domain = the component: the unescaped localpart is `user@domain` (split at
    ///   the last `@`) or, failing that, `user%domain` (split at the last `%`); the target domain
    ///   must be well-formed and neither local nor the component (no loops).
    /// - Direct mode, domain = a component domain: `sip:localpart@domain`.
    /// - A remote contact's resource becomes the GRUU `gr` value.
    pub fn jid_to_sip(&self, jid: &Jid) -> Result<SipAddress, AddressError> {
        let domain = jid.domain().as_str();
        let Some(node) = jid.node() else {
            return Err(AddressError::NoLocalpart {
                jid: shown(jid.as_str()),
            });
        };
        let localpart = node.as_str();
        let remote_gruu = || jid.resource().map(|r| r.as_str().to_owned());

        if self.is_local_domain(domain) {
            let user = localpart_to_user(localpart, &unescape_node(localpart))?;
            return Ok(SipAddress {
                user,
                host: domain.to_owned(),
                gruu: None,
            });
        }
        match self.mode {
            AddressMode::Direct if self.is_component_domain(domain) => {
                let user = localpart_to_user(localpart, &unescape_node(localpart))?;
                check_remote_user(&user, |r| unmappable_localpart(localpart, r))?;
                Ok(SipAddress {
                    user,
                    host: domain.to_owned(),
                    gruu: remote_gruu(),
                })
            }
            AddressMode::Gateway if self.is_component_domain(domain) => {
                let unescaped = unescape_node(localpart);
                let split = unescaped
                    .rsplit_once('@')
                    .or_else(|| unescaped.rsplit_once('%'));
                let Some((user, target)) = split else {
                    return Err(AddressError::NoGatewayTarget {
                        localpart: shown(localpart),
                    });
                };
                let user = localpart_to_user(localpart, user)?;
                check_remote_user(&user, |r| unmappable_localpart(localpart, r))?;
                let host = normalise_domain("gateway target domain", target)?;
                if self.is_local_domain(&host) || self.is_component_domain(&host) {
                    return Err(AddressError::Loop { domain: host });
                }
                Ok(SipAddress {
                    user,
                    host,
                    gruu: remote_gruu(),
                })
            }
            mode => Err(AddressError::NotFederated {
                domain: shown(domain),
                mode,
            }),
        }
    }

    /// Maps a `sip:` URI (as in From/To/Contact) to a JID with [`AddressBook::sip_to_jid`]:
    /// the user part is percent-decoded and a `gr` parameter becomes the resource.
    pub fn uri_to_jid(&self, input: &str) -> Result<Jid, String> {
        use crate::sip::uri::{Uri, percent_decode};
        let input = input.trim();
        let uri = match Uri::parse(input).map_err(|e| e.to_string())? {
            Uri::Sip(u) if !u.secure => u,
            _ => return Err(format!("{input:?} is not a sip: URI")),
        };
        let user = uri
            .user_decoded()
            .map_err(|e| format!("{input:?}: {e}"))?
            .ok_or_else(|| format!("{input:?} has no user part"))?;
        let gruu = uri
            .param("gr")
            .map(percent_decode)
            .transpose()
            .map_err(|e| format!("{input:?}: gr parameter: {e}"))?;
        self.sip_to_jid(&user, &uri.host_str(), gruu.as_deref())
            .map_err(|e| e.to_string())
    }

    /// Maps a SIP address (`user` already percent-decoded) to the JID XMPP users know it by.
    ///
    /// User part and host are lower-cased. Host in `local_domains`: `user@host` (escaped).
    /// Otherwise, gateway mode: `escape(user@host)@component`; direct mode:
    /// `escape(user)@host` when host is a component domain, else
    /// [`AddressError::NotFederated`]. A GRUU becomes the resource.
    pub fn sip_to_jid(
        &self,
        user: &str,
        host: &str,
        gruu: Option<&str>,
    ) -> Result<Jid, AddressError> {
        let host = normalise_domain("SIP host", host)?;
        let lower = user_to_lower(user)?;
        let (node, domain) = if self.is_local_domain(&host) {
            (escape_node(&lower), host)
        } else {
            check_remote_user(&lower, |r| unmappable_user(user, r))?;
            match self.mode {
                AddressMode::Direct if self.is_component_domain(&host) => {
                    (escape_node(&lower), host)
                }
                AddressMode::Direct => {
                    return Err(AddressError::NotFederated {
                        domain: host,
                        mode: self.mode,
                    });
                }
                AddressMode::Gateway => {
                    if self.is_component_domain(&host) {
                        return Err(AddressError::Loop { domain: host });
                    }
                    let node = escape_node(&format!("{lower}@{host}"));
                    let component = self
                        .component_domains
                        .first()
                        .cloned()
                        .ok_or(AddressError::GatewayComponentCount { count: 0 })?;
                    (node, component)
                }
            }
        };
        let bare = make_bare_jid(user, &node, &domain)?;
        match gruu {
            None | Some("") => Ok(Jid::from(bare)),
            Some(gr) => {
                let resource = gruu_to_resource(gr)?;
                Ok(Jid::from(bare.with_resource(&resource)))
            }
        }
    }
}

/// Checks a decoded SIP user part's own constraints and lower-cases it.
fn user_to_lower(user: &str) -> Result<String, AddressError> {
    if user.is_empty() {
        return Err(unmappable_user(user, "it is empty"));
    }
    if user.starts_with(' ') || user.ends_with(' ') {
        return Err(unmappable_user(
            user,
            "it begins or ends with a space (XEP-0106: \\20 may not begin or end a localpart)",
        ));
    }
    if user.len() > MAX_JID_PART_BYTES {
        return Err(unmappable_user(
            user,
            format!(
                "it is {} bytes, more than the {MAX_JID_PART_BYTES} a localpart holds",
                user.len()
            ),
        ));
    }
    Ok(user.to_lowercase())
}

/// Turns an unescaped JID localpart (or its user half, in gateway mode) into a SIP user part.
fn localpart_to_user(localpart: &str, user: &str) -> Result<String, AddressError> {
    if user.is_empty() {
        return Err(unmappable_localpart(localpart, "its user part is empty"));
    }
    if user.starts_with(' ') || user.ends_with(' ') {
        return Err(unmappable_localpart(
            localpart,
            "its user part begins or ends with a space (XEP-0106: \\20 may not begin or end a localpart)",
        ));
    }
    Ok(user.to_lowercase())
}

/// Builds `node@domain`, refusing a node that nodeprep rejects or would change.
fn make_bare_jid(user: &str, node: &str, domain: &str) -> Result<BareJid, AddressError> {
    if node.len() > MAX_JID_PART_BYTES {
        return Err(unmappable_user(
            user,
            format!(
                "its escaped localpart is {} bytes, more than {MAX_JID_PART_BYTES}",
                node.len()
            ),
        ));
    }
    let prepped = match NodePart::new(node) {
        Ok(p) => p,
        Err(JidError::NodeTooLong) => {
            return Err(unmappable_user(
                user,
                format!(
                    "nodeprep makes its escaped localpart longer than {MAX_JID_PART_BYTES} bytes"
                ),
            ));
        }
        Err(JidError::NodeEmpty) => {
            return Err(unmappable_user(
                user,
                "nodeprep removes every character of it",
            ));
        }
        Err(_) => {
            return Err(unmappable_user(
                user,
                forbidden_reason(node, Profile::Nodeprep),
            ));
        }
    };
    if prepped.as_str() != node {
        return Err(unmappable_user(
            user,
            format!(
                "nodeprep would change its escaped form {:?} to {:?}, so the mapping would not be reversible",
                shown(node),
                shown(prepped.as_str())
            ),
        ));
    }
    let domain = DomainPart::new(domain)
        .map_err(|e| invalid_domain("domain", domain, format!("it fails nameprep/IDNA ({e})")))?;
    Ok(BareJid::from_parts(Some(&*prepped), &domain))
}

#[derive(Clone, Copy)]
enum Profile {
    Nodeprep,
    Resourceprep,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Nodeprep => "nodeprep",
            Profile::Resourceprep => "resourceprep",
        })
    }
}

/// Names the first character of `s` that the stringprep profile prohibits.
fn forbidden_reason(s: &str, profile: Profile) -> String {
    let prohibited = |c: &str| match profile {
        Profile::Nodeprep => matches!(NodePart::new(c), Err(JidError::NodePrep)),
        Profile::Resourceprep => matches!(ResourcePart::new(c), Err(JidError::ResourcePrep)),
    };
    let mut buf = [0u8; 4];
    for c in s.chars() {
        if prohibited(c.encode_utf8(&mut buf)) {
            return format!(
                "it contains {c:?} (U+{:04X}), which {profile} forbids",
                u32::from(c)
            );
        }
    }
    format!("it fails {profile} (bidirectional text rules)")
}

fn gruu_to_resource(gr: &str) -> Result<ResourcePart, AddressError> {
    let err = |reason: String| AddressError::UnmappableGruu {
        gruu: shown(gr),
        reason,
    };
    if gr.len() > MAX_JID_PART_BYTES {
        return Err(err(format!(
            "it is {} bytes, more than the {MAX_JID_PART_BYTES} a resource holds",
            gr.len()
        )));
    }
    let resource = ResourcePart::new(gr).map_err(|e| match e {
        JidError::ResourceTooLong => err(format!(
            "resourceprep makes it longer than {MAX_JID_PART_BYTES} bytes"
        )),
        JidError::ResourceEmpty => err("resourceprep removes every character of it".to_owned()),
        _ => err(forbidden_reason(gr, Profile::Resourceprep)),
    })?;
    if resource.as_str() != gr {
        return Err(err(format!(
            "resourceprep would change it to {:?}, so the mapping would not be reversible",
            shown(resource.as_str())
        )));
    }
    Ok(resource.into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn gateway() -> AddressBook {
        AddressBook::new(
            AddressMode::Gateway,
            vec!["lcs.example.org".into()],
            vec!["example.org".into(), "example.net".into()],
        )
        .unwrap()
    }

    fn direct() -> AddressBook {
        AddressBook::new(
            AddressMode::Direct,
            vec!["contoso.com".into(), "fabrikam.net".into()],
            vec!["example.org".into()],
        )
        .unwrap()
    }

    fn j2s(book: &AddressBook, jid: &str) -> Result<String, String> {
        let jid = Jid::new(jid).unwrap();
        book.jid_to_sip(&jid)
            .map(|a| a.to_uri())
            .map_err(|e| e.to_string())
    }

    fn s2j(
        book: &AddressBook,
        user: &str,
        host: &str,
        gruu: Option<&str>,
    ) -> Result<String, String> {
        book.sip_to_jid(user, host, gruu)
            .map(|j| j.to_string())
            .map_err(|e| e.to_string())
    }

    /// (user, host, gruu) as given to `sip_to_jid`.
    type SipIn<'a> = (&'a str, &'a str, Option<&'a str>);

    fn ok(s: &str) -> Result<String, String> {
        Ok(s.to_owned())
    }

    fn err(s: &str) -> Result<String, String> {
        Err(s.to_owned())
    }

    #[test]
    fn jid_to_sip_gateway() {
        let book = gateway();
        let cases: &[(&str, Result<String, String>)] = &[
            (
                r"joe\40contoso.com@lcs.example.org",
                ok("sip:joe@contoso.com"),
            ),
            (
                r"Joe\40Contoso.COM@LCS.example.org",
                ok("sip:joe@contoso.com"),
            ),
            ("joe%contoso.com@lcs.example.org", ok("sip:joe@contoso.com")),
            (
                "50%off%contoso.com@lcs.example.org",
                ok("sip:50%25off@contoso.com"),
            ),
            (
                r"50%off\40contoso.com@lcs.example.org",
                ok("sip:50%25off@contoso.com"),
            ),
            (
                r"joe\20smith%contoso.com@lcs.example.org",
                ok("sip:joe%20smith@contoso.com"),
            ),
            (
                r"o\27hara\40contoso.com@lcs.example.org",
                ok("sip:o'hara@contoso.com"),
            ),
            (
                r"a\40b\40contoso.com@lcs.example.org",
                err(
                    r#"JID localpart "a\\40b\\40contoso.com" cannot be a SIP user part: an LCS user part may not contain '@' (it would read as an address of another domain)"#,
                ),
            ),
            (
                r"c\3a\5c5commas\40contoso.com@lcs.example.org",
                ok("sip:c%3A%5C5commas@contoso.com"),
            ),
            (
                r"joe\40contoso.com@lcs.example.org/urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
                ok("sip:joe@contoso.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
            ),
            (
                r"joe\40contoso.com@lcs.example.org/Work PC;1",
                ok("sip:joe@contoso.com;gr=Work%20PC%3B1"),
            ),
            ("alice@example.org", ok("sip:alice@example.org")),
            ("Alice@example.net/phone", ok("sip:alice@example.net")),
            (
                r"d\27artagnan@example.org",
                ok("sip:d'artagnan@example.org"),
            ),
            (
                r"joe\40contoso.com@example.org",
                ok("sip:joe%40contoso.com@example.org"),
            ),
            (
                "lcs.example.org",
                err(
                    r#"JID "lcs.example.org" has no localpart: it addresses a server or component, not a user"#,
                ),
            ),
            (
                "example.org/res",
                err(
                    r#"JID "example.org/res" has no localpart: it addresses a server or component, not a user"#,
                ),
            ),
            (
                "joe@lcs.example.org",
                err(
                    r#"gateway JID localpart "joe" names no LCS address: expected user\40domain (XEP-0106) or user%domain"#,
                ),
            ),
            (
                r"joe\40example.org@lcs.example.org",
                err(
                    r#""example.org" is a local or component domain: addressing it through the gateway would loop"#,
                ),
            ),
            (
                "joe%example.net@lcs.example.org",
                err(
                    r#""example.net" is a local or component domain: addressing it through the gateway would loop"#,
                ),
            ),
            (
                r"joe\40lcs.example.org@lcs.example.org",
                err(
                    r#""lcs.example.org" is a local or component domain: addressing it through the gateway would loop"#,
                ),
            ),
            (
                r"\40contoso.com@lcs.example.org",
                err(
                    r#"JID localpart "\\40contoso.com" cannot be a SIP user part: its user part is empty"#,
                ),
            ),
            (
                r"joe\20\40contoso.com@lcs.example.org",
                err(
                    r#"JID localpart "joe\\20\\40contoso.com" cannot be a SIP user part: its user part begins or ends with a space (XEP-0106: \20 may not begin or end a localpart)"#,
                ),
            ),
            (
                r"joe\40contoso_com@lcs.example.org",
                err(
                    r#"gateway target domain "contoso_com" is not a well-formed domain: it contains '_' (only letters, digits, '-' and '.' are allowed)"#,
                ),
            ),
            (
                r"joe\40@lcs.example.org",
                err(r#"gateway target domain "" is not a well-formed domain: it is empty"#),
            ),
            (
                r"joe\40contoso.com.@lcs.example.org",
                err(
                    r#"gateway target domain "contoso.com." is not a well-formed domain: it must not end with a dot"#,
                ),
            ),
            (
                r"joe\40192.168.0.1@lcs.example.org",
                err(
                    r#"gateway target domain "192.168.0.1" is not a well-formed domain: it is an IP address literal, not a domain name"#,
                ),
            ),
            (
                r"joe\40bücher.de@lcs.example.org",
                err(
                    r#"gateway target domain "bücher.de" is not a well-formed domain: it is not ASCII (write internationalised domains in their A-label xn-- form)"#,
                ),
            ),
            (
                "joe@contoso.com",
                err(
                    r#""contoso.com" is not a local domain nor served by a component (gateway mode)"#,
                ),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&j2s(&book, input), expected, "input {input}");
        }
    }

    #[test]
    fn jid_to_sip_direct() {
        let book = direct();
        let cases: &[(&str, Result<String, String>)] = &[
            ("joe@contoso.com", ok("sip:joe@contoso.com")),
            ("JOE@Contoso.com", ok("sip:joe@contoso.com")),
            (
                "joe@fabrikam.net/laptop",
                ok("sip:joe@fabrikam.net;gr=laptop"),
            ),
            (
                r"joe\40x@contoso.com",
                err(
                    r#"JID localpart "joe\\40x" cannot be a SIP user part: an LCS user part may not contain '@' (it would read as an address of another domain)"#,
                ),
            ),
            (r"o\27hara@contoso.com", ok("sip:o'hara@contoso.com")),
            ("alice@example.org/phone", ok("sip:alice@example.org")),
            (
                "joe@unknown.com",
                err(
                    r#""unknown.com" is not a local domain nor served by a component (direct mode)"#,
                ),
            ),
            (
                r"joe\40contoso.com@lcs.example.org",
                err(
                    r#""lcs.example.org" is not a local domain nor served by a component (direct mode)"#,
                ),
            ),
            (
                "contoso.com",
                err(
                    r#"JID "contoso.com" has no localpart: it addresses a server or component, not a user"#,
                ),
            ),
            (
                r"\20joe@contoso.com",
                err(
                    r#"JID localpart "\\20joe" cannot be a SIP user part: its user part begins or ends with a space (XEP-0106: \20 may not begin or end a localpart)"#,
                ),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&j2s(&book, input), expected, "input {input}");
        }
    }

    #[test]
    fn sip_to_jid_gateway() {
        let book = gateway();
        let long = "a".repeat(1024);
        let long_err = format!(
            "SIP user part {:?} cannot be a JID localpart: it is 1024 bytes, more than the 1023 a localpart holds",
            format!("{}…", "a".repeat(100))
        );
        let nearly = "a".repeat(1010);
        let nearly_err = format!(
            "SIP user part {:?} cannot be a JID localpart: its escaped localpart is 1024 bytes, more than 1023",
            format!("{}…", "a".repeat(100))
        );
        let cases: Vec<(SipIn, Result<String, String>)> = vec![
            (
                ("joe", "contoso.com", None),
                ok(r"joe\40contoso.com@lcs.example.org"),
            ),
            (
                ("Joe.Smith", "Contoso.COM", None),
                ok(r"joe.smith\40contoso.com@lcs.example.org"),
            ),
            (
                ("o'hara", "contoso.com", None),
                ok(r"o\27hara\40contoso.com@lcs.example.org"),
            ),
            (
                ("a b", "contoso.com", None),
                ok(r"a\20b\40contoso.com@lcs.example.org"),
            ),
            (
                ("joe@fabrikam.com", "contoso.com", None),
                err(
                    r#"SIP user part "joe@fabrikam.com" cannot be a JID localpart: an LCS user part may not contain '@' (it would read as an address of another domain)"#,
                ),
            ),
            (
                (r"c:\5commas", "contoso.com", None),
                ok(r"c\3a\5c5commas\40contoso.com@lcs.example.org"),
            ),
            (
                ("50%off", "contoso.com", None),
                ok(r"50%off\40contoso.com@lcs.example.org"),
            ),
            (
                ("joe", "contoso.com", Some("urn:uuid:abc")),
                ok(r"joe\40contoso.com@lcs.example.org/urn:uuid:abc"),
            ),
            (
                ("joe", "contoso.com", Some("")),
                ok(r"joe\40contoso.com@lcs.example.org"),
            ),
            (("alice", "example.org", None), ok("alice@example.org")),
            (
                ("Alice", "EXAMPLE.org", Some("g1")),
                ok("alice@example.org/g1"),
            ),
            (
                ("d'artagnan", "example.net", None),
                ok(r"d\27artagnan@example.net"),
            ),
            (
                ("émile", "contoso.com", None),
                ok(r"émile\40contoso.com@lcs.example.org"),
            ),
            (
                ("joe", "lcs.example.org", None),
                err(
                    r#""lcs.example.org" is a local or component domain: addressing it through the gateway would loop"#,
                ),
            ),
            (
                ("", "contoso.com", None),
                err(r#"SIP user part "" cannot be a JID localpart: it is empty"#),
            ),
            (
                (" joe", "contoso.com", None),
                err(
                    r#"SIP user part " joe" cannot be a JID localpart: it begins or ends with a space (XEP-0106: \20 may not begin or end a localpart)"#,
                ),
            ),
            (
                ("jo\u{7}e", "contoso.com", None),
                err(
                    r#"SIP user part "jo\u{7}e" cannot be a JID localpart: it contains '\u{7}' (U+0007), which nodeprep forbids"#,
                ),
            ),
            (
                ("jo\u{a0}e", "contoso.com", None),
                err(
                    r#"SIP user part "jo\u{a0}e" cannot be a JID localpart: it contains '\u{a0}' (U+00A0), which nodeprep forbids"#,
                ),
            ),
            (
                ("straße", "contoso.com", None),
                err(
                    r#"SIP user part "straße" cannot be a JID localpart: nodeprep would change its escaped form "straße\\40contoso.com" to "strasse\\40contoso.com", so the mapping would not be reversible"#,
                ),
            ),
            ((&long, "contoso.com", None), Err(long_err)),
            ((&nearly, "contoso.com", None), Err(nearly_err)),
            (
                ("joe", "contoso..com", None),
                err(
                    r#"SIP host "contoso..com" is not a well-formed domain: it has an empty label (leading or doubled dot)"#,
                ),
            ),
            (
                ("joe", "[::1]", None),
                err(
                    r#"SIP host "[::1]" is not a well-formed domain: it contains '[' (only letters, digits, '-' and '.' are allowed)"#,
                ),
            ),
            (
                ("joe", "10.0.0.1", None),
                err(
                    r#"SIP host "10.0.0.1" is not a well-formed domain: it is an IP address literal, not a domain name"#,
                ),
            ),
            (
                ("joe", "-contoso.com", None),
                err(
                    r#"SIP host "-contoso.com" is not a well-formed domain: label "-contoso" begins or ends with '-'"#,
                ),
            ),
            (
                ("joe", "contoso.com", Some("a\u{0}b")),
                err(
                    r#"GRUU "a\0b" cannot be a JID resource: it contains '\0' (U+0000), which resourceprep forbids"#,
                ),
            ),
            (
                ("joe", "contoso.com", Some("\u{fb01}x")),
                err(
                    "GRUU \"\u{fb01}x\" cannot be a JID resource: resourceprep would change it to \"fix\", so the mapping would not be reversible",
                ),
            ),
        ];
        for ((user, host, gruu), expected) in cases {
            assert_eq!(
                s2j(&book, user, host, gruu),
                expected,
                "input {user:?} {host:?} {gruu:?}"
            );
        }
    }

    #[test]
    fn sip_to_jid_direct() {
        let book = direct();
        let cases: &[(SipIn, Result<String, String>)] = &[
            (("Joe", "CONTOSO.com", None), ok("joe@contoso.com")),
            (
                ("joe@fabrikam.com", "contoso.com", None),
                err(
                    r#"SIP user part "joe@fabrikam.com" cannot be a JID localpart: an LCS user part may not contain '@' (it would read as an address of another domain)"#,
                ),
            ),
            (
                ("joe", "fabrikam.net", Some("laptop")),
                ok("joe@fabrikam.net/laptop"),
            ),
            (("alice", "example.org", None), ok("alice@example.org")),
            (
                ("joe", "fabrikam.com", None),
                err(
                    r#""fabrikam.com" is not a local domain nor served by a component (direct mode)"#,
                ),
            ),
        ];
        for ((user, host, gruu), expected) in cases {
            assert_eq!(
                &s2j(&book, user, host, *gruu),
                expected,
                "input {user:?} {host:?} {gruu:?}"
            );
        }
    }

    #[test]
    fn address_book_validation() {
        let s = |v: &[&str]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        let cases: &[(AddressMode, &[&str], &[&str], &str)] = &[
            (
                AddressMode::Gateway,
                &[],
                &["example.org"],
                "gateway mode needs exactly one component domain, 0 given",
            ),
            (
                AddressMode::Gateway,
                &["a.example.org", "b.example.org"],
                &["example.org"],
                "gateway mode needs exactly one component domain, 2 given",
            ),
            (
                AddressMode::Direct,
                &[],
                &["example.org"],
                "direct mode needs at least one component domain (one per federated LCS domain)",
            ),
            (
                AddressMode::Direct,
                &["contoso.com"],
                &[],
                "at least one local XMPP domain is needed",
            ),
            (
                AddressMode::Direct,
                &["contoso.com"],
                &["Example.org"],
                r#"local domain "Example.org" is not a well-formed domain: it must be lower-case ("example.org")"#,
            ),
            (
                AddressMode::Gateway,
                &["lcs.example.org."],
                &["example.org"],
                r#"component domain "lcs.example.org." is not a well-formed domain: it must not end with a dot"#,
            ),
            (
                AddressMode::Direct,
                &["bücher.de"],
                &["example.org"],
                r#"component domain "bücher.de" is not a well-formed domain: it is not ASCII (write internationalised domains in their A-label xn-- form)"#,
            ),
            (
                AddressMode::Direct,
                &["contoso.com", "example.org"],
                &["example.org"],
                r#""example.org" is listed both as a local domain and as a component domain"#,
            ),
            (
                AddressMode::Direct,
                &["contoso.com", "contoso.com"],
                &["example.org"],
                r#""contoso.com" is listed twice"#,
            ),
            (
                AddressMode::Direct,
                &["contoso.com"],
                &[""],
                r#"local domain "" is not a well-formed domain: it is empty"#,
            ),
        ];
        for (mode, components, locals, expected) in cases {
            let got = AddressBook::new(*mode, s(components), s(locals))
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                Err(expected.to_string()),
                "{mode} {components:?} {locals:?}"
            );
        }
        let label = format!("{}.com", "a".repeat(64));
        assert_eq!(
            check_domain("domain", &label).map_err(|e| e.to_string()),
            Err(format!(
                "domain {label:?} is not a well-formed domain: label {:?} is longer than 63 bytes",
                "a".repeat(64)
            ))
        );
        let long = format!("{}.com", ["abcdefghi"; 26].join("."));
        assert_eq!(
            check_domain("domain", &long).map_err(|e| e.to_string()),
            Err(format!(
                "domain {:?} is not a well-formed domain: it is 263 bytes, more than 253",
                format!("{}…", &long[..100])
            ))
        );
        for good in ["localhost", "xn--bcher-kva.de", "a-b.c0m", "1.example"] {
            assert_eq!(check_domain("domain", good), Ok(()), "{good}");
        }
        let book = direct();
        assert_eq!(book.mode(), AddressMode::Direct);
        assert_eq!(book.component_domains(), ["contoso.com", "fabrikam.net"]);
        assert_eq!(book.local_domains(), ["example.org"]);
        assert!(book.is_local_domain("example.org"));
        assert!(!book.is_component_domain("example.org"));
    }

    #[test]
    fn xep0106_examples() {
        let cases = [
            ("space cadet", r"space\20cadet"),
            (r#"call me "ishmael""#, r"call\20me\20\22ishmael\22"),
            ("at&t guy", r"at\26t\20guy"),
            ("d'artagnan", r"d\27artagnan"),
            ("/.fanboy", r"\2f.fanboy"),
            ("::foo::", r"\3a\3afoo\3a\3a"),
            ("<foo>", r"\3cfoo\3e"),
            ("user@host", r"user\40host"),
            (r"c:\net", r"c\3a\net"),
            (r"c:\\net", r"c\3a\\net"),
            (r"c:\cool stuff", r"c\3a\cool\20stuff"),
            (r"c:\5commas", r"c\3a\5c5commas"),
            (r"\2F", r"\5c2F"),
            (r"\", r"\"),
            (r"a\4", r"a\4"),
            (r"\@", r"\\40"),
            ("", ""),
        ];
        for (raw, escaped) in cases {
            assert_eq!(escape_node(raw), escaped, "escape {raw:?}");
            assert_eq!(unescape_node(escaped), raw, "unescape {escaped:?}");
        }
        // Only the ten lower-case sequences unescape.
        for kept in [r"\41", r"\2F", r"\5C", r"\", r"\2", r"x\zz", "\\\u{e9}a"] {
            assert_eq!(unescape_node(kept), kept);
        }
        assert_eq!(unescape_node(r"\5c40"), r"\40");
        assert_eq!(JID_ESCAPING_FEATURE, r"jid\20escaping");
    }

    #[test]
    fn to_uri_rendering() {
        let a = |user: &str, host: &str, gruu: Option<&str>| SipAddress {
            user: user.into(),
            host: host.into(),
            gruu: gruu.map(Into::into),
        };
        let cases = [
            (a("joe", "contoso.com", None), "sip:joe@contoso.com"),
            (
                a("a b@c;d?e/f&=+$,-_.!~*'()", "contoso.com", None),
                "sip:a%20b%40c;d?e/f&=+$,-_.!~*'()@contoso.com",
            ),
            (
                a("Ünï", "contoso.com", None),
                "sip:%C3%9Cn%C3%AF@contoso.com",
            ),
            (a("100%", "contoso.com", None), "sip:100%25@contoso.com"),
            (
                a(r#"x"<>\:"#, "contoso.com", None),
                "sip:x%22%3C%3E%5C%3A@contoso.com",
            ),
            (
                a("joe", "contoso.com", Some("urn:uuid:f81d4fae-7dec")),
                "sip:joe@contoso.com;gr=urn:uuid:f81d4fae-7dec",
            ),
            (
                a("joe", "contoso.com", Some("a;b=c d%[]/:&+$")),
                "sip:joe@contoso.com;gr=a%3Bb%3Dc%20d%25[]/:&+$",
            ),
            (a("joe", "contoso.com", Some("")), "sip:joe@contoso.com;gr"),
            (a("", "contoso.com", None), "sip:contoso.com"),
        ];
        for (addr, uri) in cases {
            assert_eq!(addr.to_uri(), uri);
            assert_eq!(addr.to_string(), uri);
        }
        let g = a("joe", "contoso.com", Some("x"));
        assert_eq!(g.aor(), a("joe", "contoso.com", None));
    }

    #[test]
    fn schemes() {
        assert_eq!(check_scheme("sip"), Ok(()));
        assert_eq!(check_scheme("SIP"), Ok(()));
        assert_eq!(
            check_scheme("SIPS").map_err(|e| e.to_string()),
            Err("sips: URIs are never used with LCS (profile: SIPS scheme)".to_owned())
        );
        assert_eq!(
            check_scheme("tel").map_err(|e| e.to_string()),
            Err(r#"URI scheme "tel" cannot address an LCS user: only sip: is used"#.to_owned())
        );
    }

    #[test]
    fn address_mode_serde() {
        #[derive(serde::Deserialize)]
        struct C {
            mode: AddressMode,
        }
        let c: C = toml::from_str("mode = \"gateway\"").unwrap();
        assert_eq!(c.mode, AddressMode::Gateway);
        let c: C = toml::from_str("mode = \"direct\"").unwrap();
        assert_eq!(c.mode, AddressMode::Direct);
        assert!(toml::from_str::<C>("mode = \"Direct\"").is_err());
    }

    // ---- properties ----

    fn user_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "@", "\\", "\"", "&", "'", "/", ":", "<", ">", " ", "%", ".", "-", "_", ";", "?",
                "+", "=", ",", "!", "~", "*", "(", ")", "[", "]", "#", "|", "^", "`", "{", "}",
            ])
            .prop_map(str::to_owned),
            2 => "\\\\(20|22|26|27|2f|2F|3a|3A|3c|3e|40|5c|5C|41)",
            8 => "[a-z]",
            2 => "[A-Z]",
            2 => "[0-9]",
            3 => any::<char>()
                .prop_filter("printable", |c| !c.is_control())
                .prop_map(String::from),
        ]
    }

    fn sip_user() -> impl Strategy<Value = String> {
        prop::collection::vec(user_fragment(), 1..16)
            .prop_map(|v| v.concat())
            .prop_filter("no leading/trailing space", |s| {
                !s.starts_with(' ') && !s.ends_with(' ')
            })
    }

    fn remote_domain() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?){0,2}\\.(com|NET|test|de|xn--p1ai)"
    }

    fn gruu() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "[a-zA-Z0-9:;=.~-]{1,24}",
            "urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}",
        ])
    }

    fn printable_ascii(s: &str) -> bool {
        s.bytes().all(|b| (0x20..0x7f).contains(&b))
    }

    fn check_round_trip(
        book: &AddressBook,
        user: &str,
        host: &str,
        gruu: Option<&str>,
        remote: bool,
    ) -> Result<(), TestCaseError> {
        match book.sip_to_jid(user, host, gruu) {
            Ok(jid) => {
                // The JID is canonical: it survives being written and parsed again.
                let reparsed = Jid::new(jid.as_str()).unwrap();
                prop_assert_eq!(&reparsed, &jid);
                let back = book.jid_to_sip(&reparsed);
                let expected = SipAddress {
                    user: user.to_lowercase(),
                    host: host.to_ascii_lowercase(),
                    gruu: if remote {
                        gruu.map(str::to_owned)
                    } else {
                        None
                    },
                };
                prop_assert_eq!(back, Ok(expected), "via {}", jid);
            }
            Err(e) => {
                // Printable ASCII always maps (but an LCS user with '@'); refusals are for what
                // nodeprep cannot hold.
                prop_assert!(
                    !printable_ascii(user) || remote && user.contains('@'),
                    "printable ASCII user {:?} refused: {}",
                    user,
                    e
                );
                prop_assert!(
                    matches!(e, AddressError::UnmappableUser { .. }),
                    "unexpected error {}",
                    e
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn escape_round_trip(s in any::<String>()) {
            let escaped = escape_node(&s);
            prop_assert_eq!(unescape_node(&escaped), s);
            prop_assert!(!escaped.contains([' ', '"', '&', '\'', '/', ':', '<', '>', '@']));
        }

        #[test]
        fn escape_round_trip_specials(s in sip_user()) {
            prop_assert_eq!(unescape_node(&escape_node(&s)), s);
        }

        #[test]
        fn gateway_round_trip(user in sip_user(), host in remote_domain(), gr in gruu()) {
            check_round_trip(&gateway(), &user, &host, gr.as_deref(), true)?;
        }

        #[test]
        fn gateway_local_round_trip(
            user in sip_user(),
            host in prop::sample::select(vec!["example.org", "EXAMPLE.net", "Example.Org"]),
            gr in gruu(),
        ) {
            check_round_trip(&gateway(), &user, host, gr.as_deref(), false)?;
        }

        #[test]
        fn direct_round_trip(
            user in sip_user(),
            host in prop::sample::select(vec!["contoso.com", "CONTOSO.com", "Fabrikam.NET"]),
            gr in gruu(),
        ) {
            check_round_trip(&direct(), &user, host, gr.as_deref(), true)?;
        }

        #[test]
        fn direct_local_round_trip(
            user in sip_user(),
            host in prop::sample::select(vec!["example.org", "EXAMPLE.ORG"]),
            gr in gruu(),
        ) {
            check_round_trip(&direct(), &user, host, gr.as_deref(), false)?;
        }

        #[test]
        fn never_panics(user in any::<String>(), host in any::<String>(), gr in prop::option::of(any::<String>())) {
            for book in [gateway(), direct()] {
                let _ = book.sip_to_jid(&user, &host, gr.as_deref());
                if let Ok(jid) = Jid::new(&format!("{user}@{host}")) {
                    let _ = book.jid_to_sip(&jid);
                }
                if let Ok(jid) = Jid::new(&format!("{}@lcs.example.org", escape_node(&user))) {
                    let _ = book.jid_to_sip(&jid);
                }
            }
        }

        #[test]
        fn to_uri_is_sip_and_escaped(
            user in any::<String>(),
            host in "[a-z0-9.-]{1,20}",
            gr in prop::option::of(any::<String>()),
        ) {
            let addr = SipAddress { user: user.clone(), host: host.clone(), gruu: gr.clone() };
            let uri = addr.to_uri();
            prop_assert!(uri.starts_with("sip:"));
            prop_assert!(!uri.starts_with("sips:"));
            let rest = &uri["sip:".len()..];
            let (encoded_user, rest) = if user.is_empty() {
                ("", rest)
            } else {
                rest.split_once('@').unwrap()
            };
            let allowed = |b: u8| is_unreserved(b) || is_user_unreserved(b) || b == b'%';
            prop_assert!(encoded_user.bytes().all(allowed), "{}", encoded_user);
            prop_assert_eq!(percent_decode(encoded_user), user);
            let (h, gr_part) = match rest.split_once(";gr") {
                Some((h, g)) => (h, Some(g)),
                None => (rest, None),
            };
            prop_assert_eq!(h, host.as_str());
            match (gr, gr_part) {
                (None, None) => {}
                (Some(g), Some(p)) => {
                    let value = p.strip_prefix('=').unwrap_or(p);
                    prop_assert!(value.bytes().all(|b| is_unreserved(b) || is_param_unreserved(b) || b == b'%'));
                    prop_assert_eq!(percent_decode(value), g);
                }
                (g, p) => prop_assert!(false, "gruu {:?} rendered as {:?}", g, p),
            }
        }
    }

    /// Strict decoder for the test: every `%` must start `%XX` with upper-case hex.
    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                assert_eq!(hex, hex.to_ascii_uppercase());
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}
