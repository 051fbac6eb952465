//! Active/standby for the runner (docs/high-availability.md): with a shared PostgreSQL store,
//! `app::run` waits here for the leader lease before it restores anything, connects the
//! component or listens for SIP, and then watches the lease while it serves. The decisions
//! are `store::lease`'s (sans-IO); the row's SQL and the renewal task are `store::pg_lease`'s;
//! this module only names the node, logs what the lease task reports, and tells the runner
//! when to stop.

use tracing::{error, info, warn};

use crate::config;
use crate::store::lease::{LeaseEvent, LeaseSettings};
use crate::store::pg_lease::{self, LeaseConfig, LeaseHandle, PgConfig};

/// This node's name in the lease row: `ha.node`, else the host name, else `lcs-bridge`.
pub fn node_name(cfg: &config::HaConfig) -> String {
    if let Some(node) = &cfg.node {
        return node.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .take(64)
        .collect();
    if host.is_empty() {
        "lcs-bridge".to_owned()
    } else {
        host
    }
}

/// Starts the lease task for this configuration against the store's database.
pub fn start(cfg: &config::Config, pg: PgConfig) -> LeaseHandle {
    pg_lease::start(LeaseConfig {
        pg,
        node: node_name(&cfg.ha),
        settings: LeaseSettings::from_ttl(cfg.ha.lease_ttl),
    })
}

/// Waits as a standby until the lease is this node's; returns its epoch. Logs who holds it
/// meanwhile (once per holder and epoch).
pub async fn acquire(lease: &mut LeaseHandle) -> anyhow::Result<i64> {
    let mut announced = false;
    loop {
        match lease.events.recv().await {
            Some(LeaseEvent::Acquired { epoch }) => {
                info!(epoch, "lease taken: this bridge is the active one");
                return Ok(epoch);
            }
            Some(LeaseEvent::Waiting { holder, epoch }) => {
                let holder = holder.as_deref().unwrap_or("(unnamed)");
                info!(
                    holder,
                    epoch, "standby: waiting for the lease held by {holder}"
                );
                announced = true;
            }
            Some(other) => warn!(event = ?other, announced, "lease: unexpected while standby"),
            None => return Err(anyhow::anyhow!("lease task ended")),
        }
    }
}

/// Follows the lease while this node serves: logs a suspension (the lease not renewed in
/// time: nothing is served) and the return; returns the message to stop with when another
/// node has taken the lease.
pub async fn until_deposed(lease: &mut LeaseHandle) -> String {
    loop {
        match lease.events.recv().await {
            Some(LeaseEvent::Suspended { epoch, reason }) => {
                warn!(epoch, %reason, "lease not renewed in time: serving nothing until it is");
            }
            Some(LeaseEvent::Resumed { epoch }) => {
                info!(epoch, "lease renewed: serving again");
            }
            Some(LeaseEvent::Deposed {
                mine,
                epoch,
                holder,
            }) => {
                let holder = holder.as_deref().unwrap_or("(unnamed)");
                let message = format!(
                    "deposed: bridge {holder} took the lease, epoch {epoch} (this bridge held epoch {mine})"
                );
                error!(holder, epoch, mine, "{message}");
                return message;
            }
            Some(other) => warn!(event = ?other, "lease: unexpected while active"),
            None => return "lease task ended".to_owned(),
        }
    }
}

/// The message to stop with when the store refused a write because another node's epoch is
/// in force (the store found out before the lease task did).
pub fn fenced(reason: &str) -> String {
    let message = format!("deposed: {reason}");
    error!("{message}");
    message
}
