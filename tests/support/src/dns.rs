#![allow(clippy::unwrap_used)] // test fixture: a failure to set it up is a test failure

//! An in-process authoritative DNS server for tests (hickory-server on 127.0.0.1, UDP and TCP on
//! the same free port), so no test ever asks a real resolver.
//!
//! Zones are built in code: each has an SOA whose MINIMUM is [`NEGATIVE_TTL`] seconds (the SOA
//! record's own TTL is an hour, so negative answers prove that the minimum is what counts),
//! and records are added, replaced and removed while the server runs ([`TestDns::set_srv`],
//! [`TestDns::set_a`], [`TestDns::remove`], …). Every query that reaches the server is logged,
//! so a test can prove that a lookup was answered from the resolver's cache
//! ([`TestDns::queries`]).
//!
//! ```ignore
//! let dns = TestDns::start(&["contoso.test"]).await;
//! dns.set_srv("contoso.test", &[srv(10, 0, 5061, "sip.contoso.test")], 60).await;
//! dns.set_a("sip.contoso.test", &[Ipv4Addr::new(192, 0, 2, 7)], 60).await;
//! let discovery = Discovery::new(&[dns.addr]).unwrap();
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// The SOA MINIMUM of every zone: the negative TTL, in seconds.
pub const NEGATIVE_TTL: u32 = 1;
/// TTL of the SOA record itself (larger than the minimum on purpose).
const SOA_TTL: u32 = 3600;

/// One SRV record: priority, weight, port, target host.
#[derive(Debug, Clone, Copy)]
pub struct Srv<'a> {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: &'a str,
}

pub fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv<'_> {
    Srv {
        priority,
        weight,
        port,
        target,
    }
}

type QueryLog = Arc<Mutex<Vec<(String, RecordType)>>>;

pub struct TestDns {
    /// UDP and TCP, both on this address.
    pub addr: SocketAddr,
    zones: Vec<(Name, Arc<InMemoryZoneHandler>)>,
    log: QueryLog,
    serial: AtomicU32,
    /// Dropping the server stops its tasks.
    _server: Server<Logging>,
}

impl TestDns {
    /// Serves the zones named (e.g. `"contoso.test"`), each with only its SOA at first.
    pub async fn start(zones: &[&str]) -> TestDns {
        Self::start_with(zones, bind_same_port().await).await
    }

    /// [`TestDns::start`] on port 53 of the first free loopback address from 127.0.0.100 up,
    /// for resolvers that cannot be told a port (pjsip); needs root.
    pub async fn start_on_port_53(zones: &[&str]) -> TestDns {
        for last in 100..=250u8 {
            let ip = Ipv4Addr::new(127, 0, 0, last);
            let Ok(udp) = UdpSocket::bind((ip, 53)).await else {
                continue;
            };
            if let Ok(tcp) = TcpListener::bind((ip, 53)).await {
                return Self::start_with(zones, (udp, tcp)).await;
            }
        }
        panic!("no loopback address with port 53 free (root needed)");
    }

    async fn start_with(zones: &[&str], (udp, tcp): (UdpSocket, TcpListener)) -> TestDns {
        let mut catalog = Catalog::new();
        let mut handlers = Vec::new();
        for zone in zones {
            let origin = fqdn(zone);
            let mut handler =
                InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
            let soa = SOA::new(
                fqdn(&format!("ns.{zone}")),
                fqdn(&format!("hostmaster.{zone}")),
                1,
                3600,
                600,
                86400,
                NEGATIVE_TTL,
            );
            assert!(handler.upsert_mut(
                Record::from_rdata(origin.clone(), SOA_TTL, RData::SOA(soa)),
                1
            ));
            let handler = Arc::new(handler);
            let as_dyn: Arc<dyn ZoneHandler> = handler.clone();
            catalog.upsert(LowerName::new(&origin), vec![as_dyn]);
            handlers.push((origin, handler));
        }
        let log = QueryLog::default();
        let mut server = Server::new(Logging {
            catalog,
            log: log.clone(),
        });
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 32);
        TestDns {
            addr,
            zones: handlers,
            log,
            serial: AtomicU32::new(1),
            _server: server,
        }
    }

    /// Replaces the SRV records of `_sipfederationtls._tcp.<domain>` (one TTL for the set, as
    /// RFC 2181 §5.2 requires); an empty list removes them.
    pub async fn set_srv(&self, domain: &str, records: &[Srv<'_>], ttl: u32) {
        self.set_srv_at(&format!("_sipfederationtls._tcp.{domain}"), records, ttl)
            .await;
    }

    /// Replaces the SRV records at `name` (e.g. `_sips._tcp.sip.example.org`).
    pub async fn set_srv_at(&self, name: &str, records: &[Srv<'_>], ttl: u32) {
        let data = records
            .iter()
            .map(|r| RData::SRV(SRV::new(r.priority, r.weight, r.port, fqdn(r.target))))
            .collect::<Vec<_>>();
        self.replace(name, RecordType::SRV, data, ttl).await;
    }

    /// Replaces the A records of `host`.
    pub async fn set_a(&self, host: &str, ips: &[Ipv4Addr], ttl: u32) {
        let data = ips.iter().map(|ip| RData::A(A(*ip))).collect();
        self.replace(host, RecordType::A, data, ttl).await;
    }

    /// Replaces the AAAA records of `host`.
    pub async fn set_aaaa(&self, host: &str, ips: &[Ipv6Addr], ttl: u32) {
        let data = ips.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect();
        self.replace(host, RecordType::AAAA, data, ttl).await;
    }

    /// Replaces the TXT record of `name` (a way to make a name exist without SRV records).
    pub async fn set_txt(&self, name: &str, text: &str, ttl: u32) {
        let data = vec![RData::TXT(TXT::new(vec![text.to_owned()]))];
        self.replace(name, RecordType::TXT, data, ttl).await;
    }

    /// Removes the records of type `rtype` at `name`.
    pub async fn remove(&self, name: &str, rtype: RecordType) {
        self.replace(name, rtype, Vec::new(), 0).await;
    }

    /// Removes the SRV records of `_sipfederationtls._tcp.<domain>`.
    pub async fn remove_srv(&self, domain: &str) {
        self.set_srv(domain, &[], 0).await;
    }

    /// How many queries for `name` (no trailing dot, any case) and `rtype` reached the server.
    pub fn queries(&self, name: &str, rtype: RecordType) -> usize {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(n, t)| *n == name && *t == rtype)
            .count()
    }

    /// How many queries of any kind reached the server.
    pub fn query_count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Replaces the `rtype` records at `name` in one step (no moment without them).
    async fn replace(&self, name: &str, rtype: RecordType, data: Vec<RData>, ttl: u32) {
        let name = fqdn(name);
        let zone = self.zone_of(&name);
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        let key = RrKey::new(LowerName::new(&name), rtype);
        let mut records = zone.records_mut().await;
        if data.is_empty() {
            records.remove(&key);
            return;
        }
        let mut set = RecordSet::new(name.clone(), rtype, serial);
        for rdata in data {
            assert!(set.insert(Record::from_rdata(name.clone(), ttl, rdata), serial));
        }
        records.insert(key, Arc::new(set));
    }

    /// The zone `name` belongs to (the longest origin that contains it).
    fn zone_of(&self, name: &Name) -> &InMemoryZoneHandler {
        self.zones
            .iter()
            .filter(|(origin, _)| origin.zone_of(name))
            .max_by_key(|(origin, _)| origin.num_labels())
            .map(|(_, zone)| zone.as_ref())
            .unwrap_or_else(|| panic!("{name} is in no zone of this test server"))
    }
}

fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).unwrap();
    name.set_fqdn(true);
    name
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
async fn bind_same_port() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// The catalog, with every query logged first.
struct Logging {
    catalog: Catalog,
    log: QueryLog,
}

#[async_trait::async_trait]
impl RequestHandler for Logging {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if let Ok(info) = request.request_info() {
            let name = info.query.name().to_string();
            let entry = (
                name.trim_end_matches('.').to_ascii_lowercase(),
                info.query.query_type(),
            );
            self.log.lock().unwrap().push(entry);
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
