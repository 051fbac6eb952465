//! The judgements of doctor's checks, without I/O.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::{DefaultPolicy, VerificationLevel};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

fn target(priority: u16, port: u16, host: &str) -> SrvTarget {
    SrvTarget {
        priority,
        weight: 0,
        port,
        target: host.into(),
    }
}

#[test]
fn the_local_srv_record_must_name_the_edge_and_its_port() {
    let ok = local_srv(
        "example.org",
        Ok(&[target(10, 5061, "sip.example.org")]),
        "sip.example.org",
        5061,
    );
    assert_eq!(ok.status, Status::Ok, "{ok}");
    assert!(ok.detail.contains("sip.example.org:5061"));

    let elsewhere = local_srv(
        "example.org",
        Ok(&[target(10, 5061, "old-edge.example.org")]),
        "sip.example.org",
        5061,
    );
    assert_eq!(elsewhere.status, Status::Fail);
    assert!(elsewhere.detail.contains("old-edge.example.org:5061"));
    assert!(
        elsewhere
            .fix
            .unwrap()
            .contains("_sipfederationtls._tcp.example.org. IN SRV 10 0 5061 sip.example.org.")
    );

    // Another port: partners will use it; only a port forward makes that work.
    let port = local_srv(
        "example.org",
        Ok(&[target(10, 5062, "sip.example.org")]),
        "sip.example.org",
        5061,
    );
    assert_eq!(port.status, Status::Warn);
    assert!(
        port.detail.contains("partners will connect to port 5062"),
        "{port}"
    );

    // A backup target besides ours is fine.
    let backup = local_srv(
        "example.org",
        Ok(&[
            target(10, 5061, "sip.example.org"),
            target(20, 5061, "backup.example.org"),
        ]),
        "sip.example.org",
        5061,
    );
    assert_eq!(backup.status, Status::Ok);
    // The edge published on two ports, one of them the listen port: fine.
    let two = local_srv(
        "example.org",
        Ok(&[
            target(10, 443, "sip.example.org"),
            target(20, 5061, "sip.example.org"),
        ]),
        "sip.example.org",
        5061,
    );
    assert_eq!(two.status, Status::Ok, "{two}");

    let missing = local_srv(
        "example.org",
        Err("no _sipfederationtls._tcp SRV record for example.org".into()),
        "sip.example.org",
        5061,
    );
    assert_eq!(missing.status, Status::Fail);
    assert!(
        missing
            .fix
            .unwrap()
            .starts_with("publish _sipfederationtls._tcp.example.org.")
    );
}

#[test]
fn the_edge_name_must_lead_to_this_host() {
    let any: IpAddr = "0.0.0.0".parse().unwrap();
    let public: IpAddr = "198.51.100.7".parse().unwrap();
    let local = [(public, Locality::Local)];
    let c = public_fqdn_address("sip.example.org", Ok(&local), any);
    assert_eq!(c.status, Status::Ok, "{c}");

    // Listening on one address only: the name must lead there.
    let listen: IpAddr = "198.51.100.8".parse().unwrap();
    let c = public_fqdn_address("sip.example.org", Ok(&local), listen);
    assert_eq!(c.status, Status::Fail, "{c}");
    assert!(c.detail.contains("listens only on 198.51.100.8"));

    // Behind NAT (this host's own address is private): cannot be proven, a warning.
    let nat = [(
        public,
        Locality::Remote {
            source: Some("10.0.0.5".parse().unwrap()),
        },
    )];
    let c = public_fqdn_address("sip.example.org", Ok(&nat), any);
    assert_eq!(c.status, Status::Warn, "{c}");
    assert!(c.detail.contains("behind NAT"), "{c}");

    // This host has a public address of its own, and the name leads elsewhere.
    let wrong = [(
        public,
        Locality::Remote {
            source: Some("93.184.216.34".parse().unwrap()),
        },
    )];
    let c = public_fqdn_address("sip.example.org", Ok(&wrong), any);
    assert_eq!(c.status, Status::Fail, "{c}");
    assert!(c.detail.contains("its own address is 93.184.216.34"), "{c}");

    // Some addresses this host's, some not.
    let mixed = [
        (public, Locality::Local),
        (
            "192.0.2.1".parse().unwrap(),
            Locality::Remote { source: None },
        ),
    ];
    let c = public_fqdn_address("sip.example.org", Ok(&mixed), any);
    assert_eq!(c.status, Status::Warn, "{c}");

    let c = public_fqdn_address("sip.example.org", Err("no address".into()), any);
    assert_eq!(c.status, Status::Fail);
}

#[test]
fn global_addresses() {
    for private in [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "fd00::1",
        "fe80::1",
        "::1",
    ] {
        assert!(!is_global(private.parse().unwrap()), "{private}");
    }
    for public in ["8.8.8.8", "100.128.0.1", "2a00:1450::1"] {
        assert!(is_global(public.parse().unwrap()), "{public}");
    }
}

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names` with `ekus`, valid until `not_after` (Unix seconds).
fn leaf(
    ca: &Ca,
    names: &[&str],
    ekus: &[ExtendedKeyUsagePurpose],
    not_after: i64,
) -> Vec<CertificateDer<'static>> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = ekus.to_vec();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 86_400).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let key = KeyPair::generate().unwrap();
    vec![params.signed_by(&key, &ca.issuer).unwrap().der().clone()]
}

const NOW: i64 = 1_800_000_000;
const YEAR: i64 = 365 * 86_400;
const BOTH: &[ExtendedKeyUsagePurpose] = &[
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(NOW as u64))
}

fn anchors(system: &Ca, bundle: Option<&Ca>, use_system_roots: bool) -> Anchors {
    Anchors {
        system: Ok(vec![system.der.clone()]),
        ca_bundle: bundle.map(|b| vec![b.der.clone()]),
        use_system_roots,
    }
}

fn statuses(checks: &[Check]) -> Vec<(Status, &str)> {
    checks.iter().map(|c| (c.status, c.what.as_str())).collect()
}

#[test]
fn a_good_certificate_validates_as_partners_validate_it() {
    let public = ca("Public CA");
    let chain = leaf(&public, &["sip.example.org"], BOTH, NOW + YEAR);
    let certs = EdgeCertificates {
        server: &chain,
        client: None,
        public_fqdn: "sip.example.org",
    };
    let checks = certificates(&certs, &anchors(&public, Some(&public), true), now());
    assert!(
        checks.iter().all(|c| c.status == Status::Ok),
        "{:?}",
        statuses(&checks)
    );
    // Two roles × (system roots, CA bundle), and the expiry.
    assert_eq!(checks.len(), 5, "{:?}", statuses(&checks));
    assert!(checks[4].detail.contains("in 365 days"), "{}", checks[4]);
}

#[test]
fn certificate_problems_are_named() {
    let public = ca("Public CA");
    // Another name than the edge's.
    let chain = leaf(&public, &["other.example.org"], BOTH, NOW + YEAR);
    let certs = EdgeCertificates {
        server: &chain,
        client: None,
        public_fqdn: "sip.example.org",
    };
    let checks = certificates(&certs, &anchors(&public, None, true), now());
    assert_eq!(checks[0].status, Status::Fail, "{}", checks[0]);
    assert!(
        checks[0].detail.contains("does not name sip.public_fqdn"),
        "{}",
        checks[0]
    );
    assert_eq!(checks[1].status, Status::Ok, "{}", checks[1]);

    // serverAuth only (a public CA's certificate from 2026) and no client certificate.
    let chain = leaf(
        &public,
        &["sip.example.org"],
        &[ExtendedKeyUsagePurpose::ServerAuth],
        NOW + YEAR,
    );
    let certs = EdgeCertificates {
        server: &chain,
        client: None,
        public_fqdn: "sip.example.org",
    };
    let checks = certificates(&certs, &anchors(&public, None, true), now());
    assert_eq!(checks[0].status, Status::Ok, "{}", checks[0]);
    assert_eq!(checks[1].status, Status::Fail, "{}", checks[1]);
    assert!(
        checks[1].detail.contains("extended key usage"),
        "{}",
        checks[1]
    );
    // With a separate clientAuth certificate, both roles pass.
    let client = leaf(
        &public,
        &["sip.example.org"],
        &[ExtendedKeyUsagePurpose::ClientAuth],
        NOW + YEAR,
    );
    let certs = EdgeCertificates {
        server: &chain,
        client: Some(&client),
        public_fqdn: "sip.example.org",
    };
    let checks = certificates(&certs, &anchors(&public, None, true), now());
    assert!(
        checks.iter().all(|c| c.status == Status::Ok),
        "{:?}",
        statuses(&checks)
    );
    assert!(checks[1].what.contains("sip.client_cert_chain"));
    assert_eq!(checks.len(), 4, "two roles and two expiries");

    // Expiring within 30 days: a warning; expired: a failure.
    let soon = leaf(&public, &["sip.example.org"], BOTH, NOW + 10 * 86_400);
    let certs = EdgeCertificates {
        server: &soon,
        client: None,
        public_fqdn: "sip.example.org",
    };
    let checks = certificates(&certs, &anchors(&public, None, true), now());
    let expiry = checks.last().unwrap();
    assert_eq!(expiry.status, Status::Warn, "{expiry}");
    assert!(expiry.detail.contains("in 10 days"), "{expiry}");
    let old = leaf(&public, &["sip.example.org"], BOTH, NOW - 86_400);
    let certs = EdgeCertificates {
        server: &old,
        client: None,
        public_fqdn: "sip.example.org",
    };
    let checks = certificates(&certs, &anchors(&public, None, true), now());
    assert_eq!(checks[0].status, Status::Fail);
    assert!(checks[0].detail.contains("expired"));
    assert_eq!(checks.last().unwrap().status, Status::Fail);
}

#[test]
fn a_private_ca_is_named_as_such() {
    let public = ca("Public CA");
    let private = ca("Private CA");
    let chain = leaf(&private, &["sip.example.org"], BOTH, NOW + YEAR);
    let certs = EdgeCertificates {
        server: &chain,
        client: None,
        public_fqdn: "sip.example.org",
    };
    // Trusting public roots: a failure against them, the bundle's line passes.
    let checks = certificates(&certs, &anchors(&public, Some(&private), true), now());
    assert_eq!(checks[0].status, Status::Fail, "{}", checks[0]);
    assert!(checks[0].detail.contains("unknown CA"), "{}", checks[0]);
    assert_eq!(checks[1].status, Status::Ok, "{}", checks[1]);
    assert!(checks[1].what.ends_with("sip.ca_bundle"));
    // A private federation (no system roots, the bundle validates it): a warning.
    let checks = certificates(&certs, &anchors(&public, Some(&private), false), now());
    assert_eq!(checks[0].status, Status::Warn, "{}", checks[0]);
    // No system roots to read: a warning that says so.
    let none = Anchors {
        system: Err("no system CA certificates found".into()),
        ca_bundle: None,
        use_system_roots: true,
    };
    let checks = certificates(&certs, &none, now());
    assert_eq!(checks[0].status, Status::Warn);
    assert!(checks[0].fix.as_ref().unwrap().contains("SSL_CERT_FILE"));
}

#[test]
fn component_outcomes() {
    let c = component("lcs.example.org", "127.0.0.1:5347", &Handshake::Accepted);
    assert_eq!(c.status, Status::Ok);
    let c = component(
        "lcs.example.org",
        "127.0.0.1:5347",
        &Handshake::Refused("not-authorized: wrong secret".into()),
    );
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("not-authorized"));
    assert!(c.fix.unwrap().contains("xmpp.secret"));
    let c = component(
        "lcs.example.org",
        "127.0.0.1:5347",
        &Handshake::Refused(
            "conflict: another component is already connected for this domain".into(),
        ),
    );
    assert_eq!(c.status, Status::Warn, "{c}");
    let c = component(
        "lcs.example.org",
        "127.0.0.1:5347",
        &Handshake::Unreachable("Connection refused (os error 111)".into()),
    );
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.unwrap().contains("xmpp.port"));
}

fn federation() -> FederationConfig {
    FederationConfig {
        default_policy: DefaultPolicy::Deny,
        partners: Vec::new(),
        discovered_rate: 20,
        verification_level: VerificationLevel::Verified,
    }
}

fn response(raw: &str) -> Message {
    Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap()
}

#[test]
fn partner_outcomes() {
    let fed = federation();
    let identity = PeerIdentity::from_names(["sip.contoso.com"]);
    let ok = response(
        "SIP/2.0 200 OK\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKa\nFrom: <sip:example.org>;tag=a\nTo: <sip:contoso.com>;tag=b\nCall-ID: c\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
    );
    let checks = partner_edge(
        "contoso.com",
        "sip.contoso.com:5061",
        &["sip.contoso.com".into()],
        &fed,
        &Reached::Answered {
            identity: identity.clone(),
            response: ok,
        },
    );
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:?}");

    // Refused, with Microsoft's diagnostics (the peer's text cleaned of controls).
    let refused = response(
        "SIP/2.0 403 Forbidden\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKa\nFrom: <sip:example.org>;tag=a\nTo: <sip:contoso.com>;tag=b\nCall-ID: c\nCSeq: 1 OPTIONS\nms-diagnostics: 1034;reason=\"Previous hop federated peer did not report diagnostic information\";source=\"sip.contoso.com\"\nContent-Length: 0\n\n",
    );
    let checks = partner_edge(
        "contoso.com",
        "sip.contoso.com:5061",
        &["sip.contoso.com".into()],
        &fed,
        &Reached::Answered {
            identity: identity.clone(),
            response: refused,
        },
    );
    let options = &checks[2];
    assert_eq!(options.status, Status::Fail);
    assert!(
        options
            .detail
            .contains("403 Forbidden; ms-diagnostics 1034 \"Previous hop federated peer"),
        "{options}"
    );
    assert!(options.detail.contains("from sip.contoso.com"), "{options}");

    // A certificate that speaks for another domain.
    let checks = partner_edge(
        "contoso.com",
        "127.0.0.1:5061",
        &[],
        &fed,
        &Reached::NoAnswer {
            identity: PeerIdentity::from_names(["edge.fabrikam.com"]),
            waited_secs: 10,
        },
    );
    assert_eq!(checks[0].status, Status::Ok);
    assert_eq!(checks[1].status, Status::Fail, "{}", checks[1]);
    assert!(checks[1].detail.contains("edge.fabrikam.com"));
    assert_eq!(checks[2].status, Status::Fail);
    assert!(checks[2].detail.contains("no answer within 10 s"));

    // Failures before a session: one line.
    let checks = partner_edge(
        "contoso.com",
        "sip.contoso.com:5061",
        &[],
        &fed,
        &Reached::Unreachable("connect to 192.0.2.1:5061: timed out\u{1b}[31m".into()),
    );
    assert_eq!(checks.len(), 1);
    assert!(!checks[0].detail.contains('\u{1b}'), "peer text is cleaned");

    let c = partner_discovery("contoso.com", Ok(&[]), Some("10.1.2.3:5061"));
    assert_eq!(c.status, Status::Ok);
    assert!(c.detail.contains("static"));
    let c = partner_discovery(
        "contoso.com",
        Err("no _sipfederationtls._tcp SRV record for contoso.com".into()),
        None,
    );
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.unwrap().contains("edge = \"host:5061\""));

    assert!(partner_policy("contoso.com", &fed).is_some());
    let open = FederationConfig {
        default_policy: DefaultPolicy::Allow,
        ..federation()
    };
    assert!(partner_policy("contoso.com", &open).is_none());
}

#[test]
fn the_options_request_is_well_formed() {
    let m = options_request(
        "example.org",
        "contoso.com",
        "sip.example.org",
        5061,
        &RequestIds {
            branch: "abc",
            tag: "t1",
            call_id: "c1@sip.example.org",
        },
    );
    let parsed = Message::parse(&m.to_bytes()).unwrap();
    parsed.validate().unwrap();
    assert_eq!(parsed.method(), Some(&Method::Options));
    assert_eq!(parsed.request_uri(), Some("sip:contoso.com"));
    assert_eq!(parsed.top_via().unwrap().branch(), Some("z9hG4bKabc"));
    assert_eq!(parsed.from().unwrap().uri, "sip:example.org");
    assert_eq!(parsed.to().unwrap().uri, "sip:contoso.com");
    assert_eq!(
        parsed.header("Contact"),
        Some("<sip:sip.example.org:5061;transport=tls>")
    );
}

#[test]
fn report_lines() {
    let c = Check::fail("component x", "refused", "fix it");
    assert_eq!(c.to_string(), "✗ component x: refused\n    fix: fix it");
    assert_eq!(Check::ok("a", "b").to_string(), "✓ a: b");
    assert!(failed(&[Check::ok("a", "b"), c]));
    assert!(!failed(&[Check::warn("a", "b", "c")]));
}
