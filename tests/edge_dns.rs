//! SRV discovery of a peer's federation edge against an in-process authoritative DNS server
//! (`lcs_test_support::dns::TestDns`, hickory-server on loopback; never a real resolver): RFC 2782
//! priority order and weighted choice, negative answers (NXDOMAIN, no SRV, target "."),
//! positive and negative caching within the TTL, and A/AAAA lookups.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_server::proto::rr::RecordType;
use lcs_bridge::edge::dns::{Discovery, DiscoveryError};
use lcs_bridge::edge::srv::SrvTarget;
use lcs_test_support::dns::{NEGATIVE_TTL, TestDns, srv};

const SRV_CONTOSO: &str = "_sipfederationtls._tcp.contoso.test";

fn targets(resolution: &[SrvTarget]) -> Vec<&str> {
    resolution.iter().map(|t| t.target.as_str()).collect()
}

/// Sleeps until just after `instant`, when hickory's cache entry has expired.
async fn sleep_past(instant: Instant) {
    tokio::time::sleep_until((instant + Duration::from_millis(100)).into()).await;
}

#[tokio::test]
async fn targets_come_in_priority_order() {
    let dns = TestDns::start(&["contoso.test"]).await;
    dns.set_srv(
        "contoso.test",
        &[
            srv(30, 0, 5063, "backup.contoso.test"),
            srv(10, 0, 5061, "SIP.Contoso.TEST"),
            srv(20, 0, 5062, "second.contoso.test"),
        ],
        300,
    )
    .await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    let before = Instant::now();
    let found = discovery.edge_targets("Contoso.TEST.").await.unwrap();
    assert_eq!(
        found.targets,
        vec![
            SrvTarget {
                priority: 10,
                weight: 0,
                port: 5061,
                target: "sip.contoso.test".into(),
            },
            SrvTarget {
                priority: 20,
                weight: 0,
                port: 5062,
                target: "second.contoso.test".into(),
            },
            SrvTarget {
                priority: 30,
                weight: 0,
                port: 5063,
                target: "backup.contoso.test".into(),
            },
        ]
    );
    // valid_until is now + the records' TTL.
    let ttl = found.valid_until - before;
    assert!(
        ttl > Duration::from_secs(299) && ttl <= Duration::from_secs(301),
        "{ttl:?}"
    );
    assert_eq!(dns.queries(SRV_CONTOSO, RecordType::SRV), 1);
}

#[tokio::test]
async fn zero_weight_target_is_rarely_first() {
    let dns = TestDns::start(&["contoso.test"]).await;
    dns.set_srv(
        "contoso.test",
        &[
            srv(10, 0, 5061, "light.contoso.test"),
            srv(10, 100, 5061, "heavy.contoso.test"),
        ],
        300,
    )
    .await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    let mut heavy_first = 0;
    for _ in 0..200 {
        let found = discovery.edge_targets("contoso.test").await.unwrap();
        let mut order = targets(&found.targets);
        if order[0] == "heavy.contoso.test" {
            heavy_first += 1;
        }
        order.sort_unstable();
        assert_eq!(order, ["heavy.contoso.test", "light.contoso.test"]);
    }
    // The zero-weight record is first only when the draw is 0 of 0..=100 (p = 1/101, so about
    // twice in 200); 180 allows 20, which does not happen in practice.
    assert!(heavy_first >= 180, "heavy first {heavy_first} of 200");
    // Every lookup after the first was answered from the cache, each one ordered afresh.
    assert_eq!(dns.queries(SRV_CONTOSO, RecordType::SRV), 1);
}

#[tokio::test]
async fn first_target_follows_the_weights() {
    let dns = TestDns::start(&["contoso.test"]).await;
    dns.set_srv(
        "contoso.test",
        &[
            srv(10, 60, 5061, "a.contoso.test"),
            srv(10, 30, 5061, "b.contoso.test"),
            srv(10, 10, 5061, "c.contoso.test"),
            srv(20, 100, 5061, "later.contoso.test"),
        ],
        300,
    )
    .await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    const LOOKUPS: u32 = 2000;
    let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
    for _ in 0..LOOKUPS {
        let found = discovery.edge_targets("contoso.test").await.unwrap();
        let order = targets(&found.targets);
        assert_eq!(order.len(), 4);
        assert_eq!(order[3], "later.contoso.test"); // a lower priority is never mixed in
        match order[0] {
            "a.contoso.test" => a += 1,
            "b.contoso.test" => b += 1,
            "c.contoso.test" => c += 1,
            other => panic!("{other} first"),
        }
    }
    // Expected shares 0.6 / 0.3 / 0.1; the bands are more than 5 standard deviations wide.
    let share = |n: u32| f64::from(n) / f64::from(LOOKUPS);
    assert!((0.53..=0.67).contains(&share(a)), "a first {a}");
    assert!((0.24..=0.36).contains(&share(b)), "b first {b}");
    assert!((0.06..=0.14).contains(&share(c)), "c first {c}");
}

#[tokio::test]
async fn missing_srv_is_a_negative_answer_valid_for_the_soa_minimum() {
    let dns = TestDns::start(&["contoso.test", "fabrikam.test"]).await;
    // fabrikam.test: the SRV name exists, with a TXT record only (NODATA).
    dns.set_txt("_sipfederationtls._tcp.fabrikam.test", "no sip here", 300)
        .await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    for domain in ["nowhere.contoso.test", "fabrikam.test"] {
        let before = Instant::now();
        match discovery.edge_targets(domain).await {
            Err(DiscoveryError::NoSrv {
                domain: d,
                valid_until,
            }) => {
                assert_eq!(d, domain);
                assert!(valid_until > Instant::now(), "{domain}: already expired");
                // The SOA minimum (1 s), not the SOA record's TTL (1 h).
                assert!(
                    valid_until <= before + Duration::from_secs(u64::from(NEGATIVE_TTL) + 1),
                    "{domain}: negative TTL too long"
                );
            }
            other => panic!("{domain}: {other:?}"),
        }
    }
    // A zone's own domain with no SRV record at all.
    assert!(matches!(
        discovery.edge_targets("contoso.test").await,
        Err(DiscoveryError::NoSrv { .. })
    ));
}

#[tokio::test]
async fn a_dot_target_means_no_service() {
    let dns = TestDns::start(&["contoso.test"]).await;
    dns.set_srv("contoso.test", &[srv(0, 0, 0, ".")], 300).await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    match discovery.edge_targets("contoso.test").await {
        Err(DiscoveryError::NoSrv { valid_until, .. }) => {
            assert!(valid_until > Instant::now() + Duration::from_secs(290));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl() {
    let dns = TestDns::start(&["contoso.test"]).await;
    dns.set_srv("contoso.test", &[srv(10, 0, 5061, "old.contoso.test")], 1)
        .await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    let first = discovery.edge_targets("contoso.test").await.unwrap();
    assert_eq!(targets(&first.targets), ["old.contoso.test"]);
    assert!(first.valid_until <= Instant::now() + Duration::from_secs(1));

    dns.set_srv("contoso.test", &[srv(10, 0, 5061, "new.contoso.test")], 1)
        .await;
    let cached = discovery.edge_targets("contoso.test").await.unwrap();
    assert_eq!(targets(&cached.targets), ["old.contoso.test"]);
    assert_eq!(dns.queries(SRV_CONTOSO, RecordType::SRV), 1);

    sleep_past(first.valid_until).await;
    let fresh = discovery.edge_targets("contoso.test").await.unwrap();
    assert_eq!(targets(&fresh.targets), ["new.contoso.test"]);
    assert_eq!(dns.queries(SRV_CONTOSO, RecordType::SRV), 2);
}

#[tokio::test]
async fn negative_answers_are_cached_for_the_negative_ttl() {
    let dns = TestDns::start(&["contoso.test"]).await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    let Err(DiscoveryError::NoSrv { valid_until, .. }) =
        discovery.edge_targets("contoso.test").await
    else {
        panic!("expected NoSrv");
    };

    dns.set_srv("contoso.test", &[srv(10, 0, 5061, "sip.contoso.test")], 60)
        .await;
    assert!(matches!(
        discovery.edge_targets("contoso.test").await,
        Err(DiscoveryError::NoSrv { .. })
    ));
    assert_eq!(dns.queries(SRV_CONTOSO, RecordType::SRV), 1);

    sleep_past(valid_until).await;
    let found = discovery.edge_targets("contoso.test").await.unwrap();
    assert_eq!(targets(&found.targets), ["sip.contoso.test"]);
    assert_eq!(dns.queries(SRV_CONTOSO, RecordType::SRV), 2);
}

#[tokio::test]
async fn addresses_of_a_target() {
    let dns = TestDns::start(&["contoso.test"]).await;
    dns.set_a(
        "sip.contoso.test",
        &[Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(192, 0, 2, 8)],
        300,
    )
    .await;
    dns.set_aaaa("sip.contoso.test", &["2001:db8::7".parse().unwrap()], 300)
        .await;
    dns.set_a("v4only.contoso.test", &[Ipv4Addr::new(192, 0, 2, 9)], 300)
        .await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();

    let mut addrs = discovery
        .addresses("SIP.contoso.test.", 5061)
        .await
        .unwrap();
    addrs.sort();
    let expected: Vec<SocketAddr> = vec![
        "192.0.2.7:5061".parse().unwrap(),
        "192.0.2.8:5061".parse().unwrap(),
        "[2001:db8::7]:5061".parse().unwrap(),
    ];
    assert_eq!(addrs, expected);

    assert_eq!(
        discovery.addresses("v4only.contoso.test", 5062).await,
        Ok(vec!["192.0.2.9:5062".parse().unwrap()])
    );

    assert_eq!(
        discovery.addresses("missing.contoso.test", 5061).await,
        Err(DiscoveryError::NoAddress {
            host: "missing.contoso.test".into()
        })
    );

    // IP literals are not looked up.
    let queries = dns.query_count();
    assert_eq!(
        discovery.addresses("127.0.0.1", 5061).await,
        Ok(vec!["127.0.0.1:5061".parse().unwrap()])
    );
    let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 5061);
    assert_eq!(discovery.addresses("[::1]", 5061).await, Ok(vec![v6]));
    assert_eq!(dns.query_count(), queries);
}

#[tokio::test]
async fn a_server_that_refuses_is_a_failure_not_a_negative_answer() {
    // The test server is not authoritative for example.net and answers REFUSED.
    let dns = TestDns::start(&["contoso.test"]).await;
    let discovery = Discovery::new(&[dns.addr]).unwrap();
    let started = Instant::now();
    match discovery.edge_targets("example.net").await {
        Err(DiscoveryError::Failed { name, reason }) => {
            assert_eq!(name, "_sipfederationtls._tcp.example.net");
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
