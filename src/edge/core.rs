//! The edge's request handling, without I/O: what to answer to each frame from a peer.
//! Admission ([`crate::policy::admit_request`]), the transaction layer
//! ([`crate::sip::transaction::Transactions`]), OPTIONS (the profile: 200 with the
//! `m=message 5060 sip/tcp *` SDP), malformed requests (400/513 naming the problem) and
//! keep-alive pongs. Requests that pass admission and need the IM/presence engine come out as
//! [`CoreOutput::Request`].

use std::collections::HashMap;
use std::time::Instant;

use crate::config::FederationConfig;
use crate::policy::{PeerIdentity, ServedDomains, admit_request};
use crate::sip::builder::name_addr;
use crate::sip::framing::{Frame, PONG};
use crate::sip::message::{Message, Method};
use crate::sip::sdp::Sdp;
use crate::sip::transaction::{ConnId, Output, Transactions, TxEvent, TxId};

/// Methods the edge answers (Allow).
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, SUBSCRIBE, NOTIFY, BENOTIFY";
/// Option tags the edge supports (Supported).
pub const SUPPORTED: &str = "ms-benotify, ms-text-format";

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreOutput {
    /// Write bytes to a connection.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// A request for the layers above (server transaction `tx`, answer with
    /// [`EdgeCore::respond`]).
    Request {
        tx: TxId,
        conn: ConnId,
        request: Message,
    },
    /// A transaction event for the layers above (responses, timeouts, ACKs, cancels).
    Event(TxEvent),
}

/// Static facts the core needs.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub served: ServedDomains,
    pub federation: FederationConfig,
    /// Host (and port) the edge puts into its Via/Contact and SDP.
    pub public_fqdn: String,
    /// Requests per second accepted from one discovered (unlisted) partner domain; beyond it,
    /// 503 with Retry-After (OCS's default for discovered partners is 20/s).
    pub discovered_rate: u32,
}

/// OCS's rate for discovered partners.
pub const DEFAULT_DISCOVERED_RATE: u32 = 20;

/// A token bucket of `rate` tokens per second, holding at most `rate`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        let rate = f64::from(rate.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The sans-IO part of the edge.
#[derive(Debug)]
pub struct EdgeCore {
    settings: CoreSettings,
    transactions: Transactions,
    identities: HashMap<ConnId, PeerIdentity>,
    buckets: HashMap<String, Bucket>,
    tag_seed: u64,
    tag_counter: u64,
}

impl EdgeCore {
    /// `tag_seed` must be random (the I/O layer draws it); tags are derived from it.
    pub fn new(settings: CoreSettings, tag_seed: u64) -> EdgeCore {
        EdgeCore {
            settings,
            transactions: Transactions::default(),
            identities: HashMap::new(),
            buckets: HashMap::new(),
            tag_seed,
            tag_counter: 0,
        }
    }

    /// A new authenticated connection.
    pub fn connected(&mut self, conn: ConnId, identity: PeerIdentity) {
        self.identities.insert(conn, identity);
    }

    /// A connection ended.
    pub fn disconnected(&mut self, now: Instant, conn: ConnId) -> Vec<CoreOutput> {
        self.identities.remove(&conn);
        self.transactions.connection_lost(conn);
        self.drain(now)
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<CoreOutput> {
        self.transactions.handle_timeout(now);
        self.drain(now)
    }

    /// A fresh To tag (RFC 3261 §19.3: unique, with at least 32 random bits): a counter mixed
    /// with the random seed the I/O layer gave [`EdgeCore::new`] (splitmix64).
    pub fn new_tag(&mut self) -> String {
        self.tag_counter += 1;
        let mut z = self
            .tag_seed
            .wrapping_add(self.tag_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        format!("{:016x}", z ^ (z >> 31))
    }

    /// Sends a response on a server transaction opened by [`CoreOutput::Request`].
    pub fn respond(&mut self, now: Instant, tx: TxId, response: Message) -> Vec<CoreOutput> {
        // Misuse (an unknown or finished transaction) is the caller's bug: nothing to send.
        let _ = self.transactions.respond(now, tx, response);
        self.drain(now)
    }

    /// A frame from connection `conn`.
    pub fn on_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) -> Vec<CoreOutput> {
        match frame {
            Frame::Ping => vec![CoreOutput::Send {
                conn,
                bytes: PONG.to_vec(),
            }],
            Frame::Pong => Vec::new(),
            Frame::Invalid { error, message } => match message {
                Some(m) if m.is_request() && m.method() != Some(&Method::Ack) => {
                    let tag = self.new_tag();
                    let resp = Message::response_to(
                        &m,
                        error.status(),
                        Some(&error.to_string()),
                        Some(&tag),
                    );
                    vec![CoreOutput::Send {
                        conn,
                        bytes: resp.to_bytes(),
                    }]
                }
                _ => Vec::new(),
            },
            Frame::Message(m) => self.on_message(now, conn, m),
        }
    }

    fn on_message(&mut self, now: Instant, conn: ConnId, m: Message) -> Vec<CoreOutput> {
        if m.is_request() {
            let identity = self.identities.get(&conn).cloned().unwrap_or_default();
            if let Err(refusal) = admit_request(
                &m,
                &identity,
                &[],
                &self.settings.served,
                &self.settings.federation,
            ) {
                if m.method() == Some(&Method::Ack) {
                    return Vec::new();
                }
                let tag = self.new_tag();
                let resp =
                    Message::response_to(&m, refusal.status, Some(&refusal.reason), Some(&tag));
                return vec![CoreOutput::Send {
                    conn,
                    bytes: resp.to_bytes(),
                }];
            }
            if let Some(resp) = self.rate_limit(now, &m) {
                return vec![CoreOutput::Send {
                    conn,
                    bytes: resp.to_bytes(),
                }];
            }
        }
        self.transactions.receive(now, conn, m);
        self.drain(now)
    }

    /// Discovered (unlisted) partners get at most `discovered_rate` requests per second per From
    /// domain; beyond it, `503` with `Retry-After: 1`. ACKs are never limited (they complete
    /// transactions already admitted).
    fn rate_limit(&mut self, now: Instant, m: &Message) -> Option<Message> {
        if m.method() == Some(&Method::Ack) {
            return None;
        }
        let domain = m
            .from()
            .ok()?
            .parsed_uri()
            .as_sip()
            .map(|u| u.host_str().to_ascii_lowercase())?;
        if self.settings.federation.partner(&domain).is_some() {
            return None;
        }
        let rate = self.settings.discovered_rate;
        let bucket = self.buckets.entry(domain).or_insert(Bucket {
            tokens: f64::from(rate.max(1)),
            last: now,
        });
        if bucket.take(now, rate) {
            return None;
        }
        let tag = self.new_tag();
        let mut resp = Message::response_to(
            m,
            503,
            Some("Rate limit for discovered partners exceeded"),
            Some(&tag),
        );
        resp.push_header("Retry-After", "1");
        Some(resp)
    }

    /// The profile's answer to OPTIONS: 200 with Allow, Supported, Accept and the session-mode
    /// IM SDP.
    pub fn options_response(&mut self, request: &Message) -> Message {
        let tag = self.new_tag();
        let mut resp = Message::response_to(request, 200, None, Some(&tag));
        resp.push_header("Allow", ALLOW);
        resp.push_header("Supported", SUPPORTED);
        resp.push_header(
            "Accept",
            "application/sdp, application/pidf+xml, text/plain",
        );
        resp.push_header(
            "Contact",
            &name_addr(
                None,
                &format!("sip:{};transport=tls", self.settings.public_fqdn),
                &[],
            ),
        );
        let sdp = Sdp::message_offer(&self.settings.public_fqdn, 0).to_string();
        resp.set_body(Some("application/sdp"), sdp.into_bytes());
        resp
    }

    fn drain(&mut self, now: Instant) -> Vec<CoreOutput> {
        let pending: Vec<Output> = std::iter::from_fn(|| self.transactions.poll_output()).collect();
        let mut out = Vec::with_capacity(pending.len());
        for o in pending {
            match o {
                Output::Transmit { conn, message } => out.push(CoreOutput::Send {
                    conn,
                    bytes: message.to_bytes(),
                }),
                Output::Event(TxEvent::Request { tx, request, .. })
                    if request.method() == Some(&Method::Options) =>
                {
                    let resp = self.options_response(&request);
                    let _ = self.transactions.respond(now, tx, resp);
                    out.extend(self.drain(now));
                }
                Output::Event(TxEvent::Request { tx, conn, request }) => {
                    out.push(CoreOutput::Request { tx, conn, request })
                }
                Output::Event(e) => out.push(CoreOutput::Event(e)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> EdgeCore {
        super::tests_support::core_with(1000, vec![])
    }

    fn req(method: &str, ruri: &str) -> Frame {
        let raw = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK{method}\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=p\r\nTo: <{ruri}>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContact: <sip:joe@192.0.2.1:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n"
        );
        Frame::Message(Message::parse(raw.as_bytes()).unwrap())
    }

    fn sent(o: &CoreOutput) -> Message {
        match o {
            CoreOutput::Send { bytes, .. } => Message::parse(bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_is_answered_by_the_core() {
        let mut c = core();
        let out = c.on_frame(Instant::now(), 1, req("OPTIONS", "sip:sip.example.org"));
        assert_eq!(out.len(), 1);
        let r = sent(&out[0]);
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.header("Supported"), Some(SUPPORTED));
        assert!(r.contact().unwrap().is_some());
        let sdp = Sdp::parse(r.body()).unwrap();
        assert!(sdp.has_message_session());
    }

    #[test]
    fn invite_gets_trying_then_goes_up_and_ping_gets_pong() {
        let mut c = core();
        let out = c.on_frame(Instant::now(), 1, req("INVITE", "sip:alice@example.org"));
        assert_eq!(sent(&out[0]).status(), Some(100));
        assert!(
            matches!(&out[1], CoreOutput::Request { conn: 1, request, .. } if request.method() == Some(&Method::Invite))
        );
        assert_eq!(
            c.on_frame(Instant::now(), 1, Frame::Ping),
            vec![CoreOutput::Send {
                conn: 1,
                bytes: PONG.to_vec()
            }]
        );
        let a = c.new_tag();
        let b = c.new_tag();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn refusals_carry_a_tag_and_the_reason() {
        let mut c = core();
        let out = c.on_frame(Instant::now(), 1, req("MESSAGE", "sip:bob@fabrikam.com"));
        let r = sent(&out[0]);
        assert_eq!(
            (r.status(), r.reason()),
            (Some(404), Some("Domain fabrikam.com is not served here"))
        );
        assert!(r.to().unwrap().tag().is_some());
        // An unknown connection has no identity: every From domain is refused.
        let out = c.on_frame(Instant::now(), 9, req("MESSAGE", "sip:alice@example.org"));
        assert_eq!(sent(&out[0]).status(), Some(403));
    }
}

#[cfg(test)]
mod rate_tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn discovered_partners_are_rate_limited_listed_ones_are_not() {
        let mut c = core_with(3, vec!["fabrikam.com"]);
        let t0 = Instant::now();
        let statuses: Vec<u16> = (0..5)
            .map(|i| {
                let out = c.on_frame(t0, 1, options_from("sip:joe@contoso.com", i));
                status_of(&out[0])
            })
            .collect();
        assert_eq!(statuses, [200, 200, 200, 503, 503]);
        // One second later the bucket is full again.
        let out = c.on_frame(
            t0 + std::time::Duration::from_secs(1),
            1,
            options_from("sip:joe@contoso.com", 9),
        );
        assert_eq!(status_of(&out[0]), 200);
        // A listed partner is not limited.
        for i in 0..10 {
            let out = c.on_frame(t0, 2, options_from("sip:ann@fabrikam.com", 100 + i));
            assert_eq!(status_of(&out[0]), 200);
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::config::{DefaultPolicy, Partner, PartnerPolicy};

    pub fn core_with(rate: u32, partners: Vec<&str>) -> EdgeCore {
        let mut c = EdgeCore::new(
            CoreSettings {
                served: ServedDomains {
                    local_domains: vec!["example.org".into()],
                    public_fqdn: "sip.example.org".into(),
                },
                federation: FederationConfig {
                    default_policy: DefaultPolicy::Allow,
                    partners: partners
                        .into_iter()
                        .map(|d| Partner {
                            domain: d.into(),
                            policy: PartnerPolicy::Allow,
                            edge: None,
                            verification_level: None,
                        })
                        .collect(),
                    discovered_rate: DEFAULT_DISCOVERED_RATE,
                    verification_level: crate::config::VerificationLevel::Verified,
                },
                public_fqdn: "sip.example.org".into(),
                discovered_rate: rate,
            },
            7,
        );
        c.connected(
            1,
            PeerIdentity::from_names(["sip.contoso.com", "contoso.com"]),
        );
        c.connected(2, PeerIdentity::from_names(["fabrikam.com"]));
        c
    }

    pub fn options_from(from: &str, n: u32) -> Frame {
        let raw = format!(
            "OPTIONS sip:sip.example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKr{n}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag=p\r\nTo: <sip:sip.example.org>\r\nCall-ID: r{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        Frame::Message(Message::parse(raw.as_bytes()).unwrap())
    }

    pub fn status_of(o: &CoreOutput) -> u16 {
        match o {
            CoreOutput::Send { bytes, .. } => Message::parse(bytes).unwrap().status().unwrap_or(0),
            other => panic!("{other:?}"),
        }
    }
}
