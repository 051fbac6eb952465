//! TEMPORARY stub with the agreed API; replaced by the dns branch.
use std::net::SocketAddr;
use std::time::Instant;

use crate::policy::SrvTarget;

pub struct Discovery;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub targets: Vec<SrvTarget>,
    pub valid_until: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no _sipfederationtls._tcp SRV record for {domain}")]
    NoSrv {
        domain: String,
        valid_until: Instant,
    },
    #[error("{host} has no A/AAAA address")]
    NoAddress { host: String },
    #[error("DNS lookup for {name} failed: {reason}")]
    Failed { name: String, reason: String },
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

impl Discovery {
    pub fn new(_nameservers: &[SocketAddr]) -> Result<Discovery, DiscoveryError> {
        Ok(Discovery)
    }
    pub async fn edge_targets(&self, domain: &str) -> Result<Resolution, DiscoveryError> {
        Err(DiscoveryError::NoSrv {
            domain: domain.into(),
            valid_until: Instant::now(),
        })
    }
    pub async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, DiscoveryError> {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
            Err(_) => Err(DiscoveryError::NoAddress { host: host.into() }),
        }
    }
}
