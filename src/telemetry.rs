//! The bridge's operations metrics (docs/operations.md "Metrics and health"): every series is
//! named here once, with its labels from fixed word lists, so that what a peer sends can never
//! create a new series (a method the list does not know counts as `other`, a partner domain not
//! configured as `other`).
//!
//! Recording goes through the `metrics` facade to whatever recorder the process installed (the
//! runner installs the Prometheus one, `ops::install_recorder`); without one every handle is a
//! no-op. Hot-path handles (SIP messages, stanzas) are resolved once, on first use, into static
//! cells, so recording one is an index into an array and an atomic add: no allocation, no
//! formatting, no lookup. Rare events (a connection up or down, a handshake failure) resolve
//! their handle through the registry each time.
//!
//! Only I/O code records (the edge's server task and the runner): the sans-IO engines never call
//! this module (tests/layering.rs holds that rule); what they hold is sampled through
//! `Bridge::census` instead.

use std::sync::{OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram};

/// Which way a message or connection goes, seen from the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the peer to the bridge (a connection the peer opened).
    In,
    /// From the bridge to the peer (a connection the bridge opened).
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }
}

/// The SIP methods counted by name (RFC 3261 §7.1, RFC 6665, Microsoft's BENOTIFY and
/// SERVICE); anything else is `other`.
pub const METHODS: [&str; 17] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "MESSAGE",
    "SUBSCRIBE",
    "NOTIFY",
    "INFO",
    "BENOTIFY",
    "SERVICE",
    "REFER",
    "PRACK",
    "UPDATE",
    "PUBLISH",
    "other",
];

/// The index in [`METHODS`] of a method name (case-sensitive, as RFC 3261 §7.1 says).
pub fn method_index(name: &[u8]) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| m.as_bytes() == name)
        .unwrap_or(METHODS.len() - 1)
}

/// Status classes; a status outside 100–699 is not counted.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

const N_METHODS: usize = METHODS.len();

static SIP_REQUESTS: [OnceLock<Counter>; 2 * N_METHODS] =
    [const { OnceLock::new() }; 2 * N_METHODS];
static SIP_RESPONSES: [OnceLock<Counter>; 2 * N_METHODS * 6] =
    [const { OnceLock::new() }; 2 * N_METHODS * 6];
static SIP_MALFORMED: OnceLock<Counter> = OnceLock::new();

/// A SIP request sent or received.
pub fn sip_request(dir: Direction, method: usize) {
    let method = method.min(N_METHODS - 1);
    SIP_REQUESTS[dir.index() * N_METHODS + method]
        .get_or_init(|| {
            metrics::counter!("lcs_bridge_sip_requests_total",
                "direction" => dir.as_str(), "method" => METHODS[method])
        })
        .increment(1);
}

/// A SIP response sent or received, by its request's method (CSeq) and status class.
pub fn sip_response(dir: Direction, method: usize, status: u16) {
    if !(100..700).contains(&status) {
        return;
    }
    let method = method.min(N_METHODS - 1);
    let class = usize::from(status / 100 - 1);
    SIP_RESPONSES[(dir.index() * N_METHODS + method) * 6 + class]
        .get_or_init(|| {
            metrics::counter!("lcs_bridge_sip_responses_total",
                "direction" => dir.as_str(), "method" => METHODS[method], "class" => CLASSES[class])
        })
        .increment(1);
}

/// A SIP message received that did not parse (the edge answered 400/513 or closed).
pub fn sip_malformed() {
    SIP_MALFORMED
        .get_or_init(|| metrics::counter!("lcs_bridge_sip_malformed_total"))
        .increment(1);
}

/// Counts a serialised SIP message about to be written: its start line gives the method or
/// status, its CSeq header a response's method. Reads the header section only, once.
pub fn sip_wire_out(bytes: &[u8]) {
    match classify(bytes) {
        Some(Wire::Request(m)) => sip_request(Direction::Out, m),
        Some(Wire::Response { method, status }) => sip_response(Direction::Out, method, status),
        None => {}
    }
}

/// What [`classify`] read from a serialised message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Request(usize),
    Response { method: usize, status: u16 },
}

/// The start line (and for a response the CSeq method) of a serialised SIP message.
fn classify(bytes: &[u8]) -> Option<Wire> {
    let line_end = bytes.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = &bytes[..line_end];
    if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        let code = rest.get(..3)?;
        if !code.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let rest = &bytes[line_end..];
        let rest = rest.strip_prefix(b"\r").unwrap_or(rest);
        let rest = rest.strip_prefix(b"\n").unwrap_or(rest);
        return Some(Wire::Response {
            method: cseq_method(rest),
            status,
        });
    }
    let space = line.iter().position(|&b| b == b' ')?;
    Some(Wire::Request(method_index(&line[..space])))
}

/// The method of the CSeq header in a header section (`other` without one).
fn cseq_method(headers: &[u8]) -> usize {
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].trim_ascii().eq_ignore_ascii_case(b"cseq") {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        let method = value
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .nth(1)
            .unwrap_or_default();
        return method_index(method);
    }
    N_METHODS - 1
}

/// Stanza kinds counted by name; anything else is `other`.
const STANZA_KINDS: [&str; 4] = ["message", "presence", "iq", "other"];

static STANZAS: [OnceLock<Counter>; 8] = [const { OnceLock::new() }; 8];

/// A stanza from the XMPP server (`In`) or to it (`Out`), by its element name.
pub fn stanza(dir: Direction, name: &str) {
    let kind = match name {
        "message" => 0,
        "presence" => 1,
        "iq" => 2,
        _ => 3,
    };
    STANZAS[dir.index() * 4 + kind]
        .get_or_init(|| {
            metrics::counter!("lcs_bridge_xmpp_stanzas_total",
                "direction" => dir.as_str(), "kind" => STANZA_KINDS[kind])
        })
        .increment(1);
}

/// The stanza error conditions of RFC 6120 §8.3.3; anything else is `other`.
pub const CONDITIONS: [&str; 23] = [
    "bad-request",
    "conflict",
    "feature-not-implemented",
    "forbidden",
    "gone",
    "internal-server-error",
    "item-not-found",
    "jid-malformed",
    "not-acceptable",
    "not-allowed",
    "not-authorized",
    "policy-violation",
    "recipient-unavailable",
    "redirect",
    "registration-required",
    "remote-server-not-found",
    "remote-server-timeout",
    "resource-constraint",
    "service-unavailable",
    "subscription-required",
    "undefined-condition",
    "unexpected-request",
    "other",
];

static STANZA_ERRORS: [OnceLock<Counter>; CONDITIONS.len()] =
    [const { OnceLock::new() }; CONDITIONS.len()];
/// SIP error statuses 300–699, each its own cell.
static SIP_ERRORS: [OnceLock<Counter>; 400] = [const { OnceLock::new() }; 400];

/// An error stanza the bridge sent to the XMPP side, by its defined condition.
pub fn stanza_error(condition: &str) {
    let i = CONDITIONS[..CONDITIONS.len() - 1]
        .iter()
        .position(|c| *c == condition)
        .unwrap_or(CONDITIONS.len() - 1);
    STANZA_ERRORS[i]
        .get_or_init(|| {
            metrics::counter!("lcs_bridge_translation_errors_total",
                "side" => "xmpp", "condition" => CONDITIONS[i])
        })
        .increment(1);
}

/// A SIP error response (300–699) the bridge's engines sent to a partner, by status.
pub fn sip_error(status: u16) {
    if !(300..700).contains(&status) {
        return;
    }
    SIP_ERRORS[usize::from(status - 300)]
        .get_or_init(|| {
            metrics::counter!("lcs_bridge_translation_errors_total",
                "side" => "sip", "condition" => status.to_string())
        })
        .increment(1);
}

static STORE_WRITES: [OnceLock<Histogram>; 2] = [const { OnceLock::new() }; 2];

/// A store write's time: `durable` (synced before the bridge answers) or lazy.
pub fn store_write(durable: bool, seconds: f64) {
    let (i, kind) = if durable { (0, "durable") } else { (1, "lazy") };
    STORE_WRITES[i]
        .get_or_init(|| metrics::histogram!(STORE_WRITE_SECONDS, "kind" => kind))
        .record(seconds);
}

/// The store write latency histogram's name (its buckets are set where the recorder is made).
pub const STORE_WRITE_SECONDS: &str = "lcs_bridge_store_write_seconds";

/// The label of peers that are not configured partners (discovered domains, or a certificate
/// that names none of them), so that their number cannot grow the series.
pub const OTHER: &str = "other";

/// A configured partner, as connection labels need it.
struct PartnerName {
    domain: String,
    /// The host of its configured `edge`, if any.
    edge_host: Option<String>,
}

static PARTNERS: RwLock<Vec<PartnerName>> = RwLock::new(Vec::new());

/// Sets the configured partners (`[[federation.partners]]`: domain and optional edge host),
/// at start and on reload; lowercase.
pub fn set_partners<'a>(partners: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) {
    let list = partners
        .into_iter()
        .map(|(d, e)| PartnerName {
            domain: d.to_ascii_lowercase(),
            edge_host: e.map(str::to_ascii_lowercase),
        })
        .collect();
    match PARTNERS.write() {
        Ok(mut p) => *p = list,
        Err(poisoned) => *poisoned.into_inner() = list,
    }
}

/// The domain label of a connection: for one the bridge opened to `domain`, that domain if it
/// is a configured partner; for one a peer opened, the configured partner whose domain one of
/// its certificate's names equals or is under, or whose configured edge host it names.
/// Else [`OTHER`].
pub fn partner_label<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let partners = match PARTNERS.read() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    for name in names {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        for p in partners.iter() {
            let under = name
                .strip_suffix(p.domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'));
            if name == p.domain || under || p.edge_host.as_deref() == Some(name.as_str()) {
                return p.domain.clone();
            }
        }
    }
    OTHER.to_owned()
}

/// The open-connections gauge of a partner label and direction: incremented when a connection
/// is up (TLS done and admitted), decremented when it ends.
pub fn connections(domain: &str, dir: Direction) -> Gauge {
    metrics::gauge!("lcs_bridge_sip_connections",
        "domain" => domain.to_owned(), "direction" => dir.as_str())
}

/// Handshake failure reasons: a TLS or connection failure as one word (docs/operations.md).
pub const HANDSHAKE_REASONS: [&str; 12] = [
    "timeout",
    "closed",
    "not_tls",
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_valid_yet",
    "wrong_name",
    "wrong_purpose",
    "bad_certificate",
    "tls",
    "connect",
];

/// A connection that failed before it was up (TLS, its certificate, or for outbound ones the
/// TCP connect), by partner label (`unknown` for an inbound one, whose peer is not known
/// before its certificate), direction and reason (one of [`HANDSHAKE_REASONS`]).
pub fn handshake_failure(domain: &str, dir: Direction, reason: &'static str) {
    metrics::counter!("lcs_bridge_sip_handshake_failures_total",
        "domain" => domain.to_owned(), "direction" => dir.as_str(), "reason" => reason)
    .increment(1);
}

/// The component link's state per component domain (1 up, 0 down).
pub fn link_up(domain: &str, up: bool) {
    metrics::gauge!("lcs_bridge_xmpp_link_up", "domain" => domain.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Samples of what queues and engines hold, set every few seconds by the runner.
pub fn link_queue(domain: &str, depth: usize, capacity: usize) {
    metrics::gauge!("lcs_bridge_xmpp_link_queue_depth", "domain" => domain.to_owned())
        .set(depth as f64);
    metrics::gauge!("lcs_bridge_xmpp_link_queue_capacity", "domain" => domain.to_owned())
        .set(capacity as f64);
}

/// The edge's requests handed up and not yet taken, and the limit beyond which it sheds.
pub fn edge_pending(pending: usize, limit: usize) {
    metrics::gauge!("lcs_bridge_sip_pending_requests").set(pending as f64);
    metrics::gauge!("lcs_bridge_sip_pending_requests_limit").set(limit as f64);
}

/// Subscriptions by direction (`xmpp_to_sip`: an XMPP user watches an LCS contact;
/// `sip_to_xmpp`: an LCS user watches a local user) and state.
pub fn subscriptions(direction: &'static str, state: &'static str, n: usize) {
    metrics::gauge!("lcs_bridge_subscriptions", "direction" => direction, "state" => state)
        .set(n as f64);
}

/// Open IM sessions.
pub fn im_sessions(n: usize) {
    metrics::gauge!("lcs_bridge_im_sessions").set(n as f64);
}

/// The edge's resource limits hit since the start, by configuration key.
pub fn limit_hits(key: &'static str, hits: u64) {
    metrics::counter!("lcs_bridge_sip_limit_hits_total", "limit" => key).absolute(hits);
}

/// `lcs_bridge_build_info{version, git_rev}` = 1 (`git_rev`: `LCS_BRIDGE_GIT_REV` in the
/// build's environment, e.g. set by a package build; `unknown` without it), and the start time.
pub fn build_info(started_unix: u64) {
    let git_rev = option_env!("LCS_BRIDGE_GIT_REV").unwrap_or("unknown");
    metrics::gauge!("lcs_bridge_build_info",
        "version" => env!("CARGO_PKG_VERSION"), "git_rev" => git_rev)
    .set(1.0);
    metrics::gauge!("lcs_bridge_start_time_seconds").set(started_unix as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_start_lines() {
        assert_eq!(
            classify(b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\n"),
            Some(Wire::Request(6))
        );
        assert_eq!(
            classify(b"FOO sip:a@b SIP/2.0\r\n\r\n"),
            Some(Wire::Request(N_METHODS - 1))
        );
        assert_eq!(
            classify(b"SIP/2.0 404 Not Found\r\nVia: x\r\ncseq:  7   SUBSCRIBE\r\n\r\nCSeq: 1 BYE"),
            Some(Wire::Response {
                method: 7,
                status: 404
            })
        );
        // No CSeq before the end of the headers: other.
        assert_eq!(
            classify(b"SIP/2.0 200 OK\r\n\r\nCSeq: 1 BYE\r\n"),
            Some(Wire::Response {
                method: N_METHODS - 1,
                status: 200
            })
        );
        assert_eq!(classify(b"SIP/2.0 2x0 OK\r\n\r\n"), None);
        assert_eq!(classify(b"\r\n\r\n"), None);
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn methods_are_a_closed_list() {
        assert_eq!(METHODS[method_index(b"BENOTIFY")], "BENOTIFY");
        assert_eq!(METHODS[method_index(b"invite")], "other");
        assert_eq!(METHODS[method_index(b"X-ANYTHING")], "other");
    }

    #[test]
    fn partner_labels() {
        set_partners([
            ("Contoso.com", Some("edge.fabrikam-hosting.net")),
            ("example.net", None),
        ]);
        assert_eq!(partner_label(["sip.contoso.com"]), "contoso.com");
        assert_eq!(partner_label(["contoso.com."]), "contoso.com");
        assert_eq!(partner_label(["EDGE.fabrikam-hosting.net"]), "contoso.com");
        assert_eq!(partner_label(["evilcontoso.com"]), OTHER);
        assert_eq!(
            partner_label(["x.example.org", "a.example.net"]),
            "example.net"
        );
        assert_eq!(partner_label(["discovered.org"]), OTHER);
        assert_eq!(partner_label(std::iter::empty()), OTHER);
    }
}
