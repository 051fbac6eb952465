//! Reloading the running bridge (`SIGHUP`): the configuration file, the mapping tables it
//! names, the certificates and the logging level are all read and checked first; only when
//! every one of them is good is anything applied, all together — the edge's federation policy,
//! limits and certificates, the engines' settings and tables (one sans-IO
//! [`Input::Reconfigure`](crate::engine::bridge::Input::Reconfigure) to the bridge, through the
//! runner), the log filter. A refused reload logs each problem and keeps everything as it was;
//! an applied one logs one line naming what changed, and a warning naming the changed settings
//! that wait for a restart. docs/configuration.md "Reloading" describes it for operators.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tracing::{info, warn};
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{self, Config};
use crate::core::tables::Mappings;
use crate::edge::core::CoreSettings;
use crate::edge::server::EdgeHandle;
use crate::edge::tls::TlsConfigs;
use crate::engine::bridge::Reconfigure;

/// The log filter's handle, set once by [`reloadable_filter`].
static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `filter` as a layer whose filter a reload can replace (the first call's is kept).
pub fn reloadable_filter(filter: EnvFilter) -> reload::Layer<EnvFilter, Registry> {
    let (layer, handle) = reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    layer
}

/// `RUST_LOG`, when set, overrides `logging.level` (at start and on reload).
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty())
}

/// Everything a reload read and checked, ready to apply.
pub struct Loaded {
    pub cfg: Config,
    pub mappings: Mappings,
    tls: TlsConfigs,
    /// The new log filter; `None` while `RUST_LOG` overrides `logging.level`.
    filter: Option<EnvFilter>,
}

/// Reads and checks the configuration at `path` (as `check-config` does, at `now`) and,
/// when it loads, the mapping tables, certificates and logging level it names: every problem
/// found, one line each, or everything ready to apply.
pub fn load(path: &Path, now: SystemTime) -> Result<Loaded, Vec<String>> {
    let report = config::check(path, now);
    let mut problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let Some(cfg) = report.config else {
        if problems.is_empty() {
            problems.push(format!("{}: configuration did not load", path.display()));
        }
        return Err(problems);
    };
    let mappings = Mappings::load(cfg.mappings_dir())
        .map_err(|ps| problems.extend(ps.iter().map(|p| format!("mapping tables: {p}"))))
        .ok();
    let tls = TlsConfigs::load(&cfg.sip)
        .map_err(|e| problems.push(format!("sip TLS: {e}")))
        .ok();
    let filter = match rust_log() {
        Some(_) => Some(None),
        None => EnvFilter::try_new(&cfg.logging.level)
            .map(Some)
            .map_err(|e| problems.push(format!("logging.level: {e}")))
            .ok(),
    };
    match (mappings, tls, filter) {
        (Some(mappings), Some(tls), Some(filter)) if problems.is_empty() => Ok(Loaded {
            cfg,
            mappings,
            tls,
            filter,
        }),
        _ => Err(problems),
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: what changed since the last applied configuration, and the changed settings
    /// (since the start) that wait for a restart.
    Applied {
        changed: Vec<&'static str>,
        restart: Vec<&'static str>,
    },
    /// Nothing applied: every problem found.
    Refused(Vec<String>),
}

/// The running configuration and reloads of it.
pub struct Reloader {
    path: PathBuf,
    /// As the bridge started: what only a restart changes is compared with this.
    started: Config,
    /// The last configuration and tables applied.
    applied: Config,
    mappings: Mappings,
}

impl Reloader {
    pub fn new(path: &Path, started: Config, mappings: Mappings) -> Reloader {
        Reloader {
            path: path.to_owned(),
            applied: started.clone(),
            started,
            mappings,
        }
    }

    /// The configuration applied last.
    pub fn applied(&self) -> &Config {
        &self.applied
    }

    /// Reloads from the configuration file (`why`: what asked, for the log): see the module
    /// documentation. `engines` carries the engines' new settings to the runner; `blocks` (the
    /// runtime blocks) stay on top of the new federation policy.
    pub async fn reload(
        &mut self,
        why: &str,
        edge: &EdgeHandle,
        engines: &mpsc::Sender<Box<Reconfigure>>,
        blocks: &BTreeSet<String>,
    ) -> Outcome {
        let loaded = match load(&self.path, SystemTime::now()) {
            Ok(loaded) => loaded,
            Err(problems) => {
                for problem in &problems {
                    warn!(source = why, %problem, "reload: problem in the new configuration");
                }
                warn!(
                    source = why,
                    problems = problems.len(),
                    "reload refused: the running configuration stays"
                );
                return Outcome::Refused(problems);
            }
        };
        let Loaded {
            cfg,
            mappings,
            tls,
            filter,
        } = loaded;
        let changed = changes(&cfg, &mappings, &self.applied, &self.mappings);
        let restart = needs_restart(&cfg, &self.started);
        if let (Some(filter), Some(handle)) = (filter, LOG_FILTER.get()) {
            if let Err(e) = handle.reload(filter) {
                warn!(reason = %e, "reload: the logging level stays");
            }
        }
        edge.reload_tls(tls);
        edge.reconfigure(with_blocks(super::core_settings(&cfg), blocks))
            .await;
        let settings = Reconfigure {
            presence: super::presence_settings(&cfg),
            im: super::im_settings(&cfg),
            mappings: mappings.clone(),
            admins: cfg.admin.jids.clone(),
        };
        if engines.send(Box::new(settings)).await.is_err() {
            warn!("reload: the engines have stopped; their settings were not changed");
        }
        let shown = if changed.is_empty() {
            "nothing (certificates re-read)".to_owned()
        } else {
            format!("{} (certificates re-read)", changed.join(", "))
        };
        info!(source = why, changed = %shown, "configuration reloaded");
        if !restart.is_empty() {
            warn!(
                source = why,
                settings = %restart.join(", "),
                "reload: these changes take effect after a restart"
            );
        }
        if rust_log().is_some() && cfg.logging.level != self.applied.logging.level {
            warn!("reload: RUST_LOG is set and overrides logging.level");
        }
        self.applied = cfg;
        self.mappings = mappings;
        Outcome::Applied { changed, restart }
    }
}

/// `settings` with the runtime blocks on top: a blocked domain's configured entry says block,
/// or a block entry is added.
pub fn with_blocks(mut settings: CoreSettings, blocks: &BTreeSet<String>) -> CoreSettings {
    for domain in blocks {
        match settings
            .federation
            .partners
            .iter_mut()
            .find(|p| &p.domain == domain)
        {
            Some(p) => p.policy = config::PartnerPolicy::Block,
            None => settings.federation.partners.push(config::Partner {
                domain: domain.clone(),
                policy: config::PartnerPolicy::Block,
                edge: None,
                verification_level: None,
            }),
        }
    }
    settings
}

/// What a reload applies that differs between `new` and the last applied configuration.
pub fn changes(
    new: &Config,
    new_tables: &Mappings,
    applied: &Config,
    applied_tables: &Mappings,
) -> Vec<&'static str> {
    let (a, b) = (&new.sip, &applied.sip);
    let limits = |s: &config::SipConfig| {
        (
            s.edge,
            s.max_connections_per_edge,
            s.max_connections_per_network,
        )
    };
    let tls = |s: &config::SipConfig| {
        (
            s.cert_chain.clone(),
            s.private_key.clone(),
            s.client_cert.clone(),
            s.ca_bundle.clone(),
            s.use_system_roots,
            s.accept_server_auth_only_clients,
        )
    };
    [
        ("[federation]", new.federation != applied.federation),
        ("the [sip] connection limits", limits(a) != limits(b)),
        ("the [sip] certificate files", tls(a) != tls(b)),
        ("[presence]", new.presence != applied.presence),
        ("[im]", new.im != applied.im),
        ("the mapping tables", new_tables != applied_tables),
        ("logging.level", new.logging.level != applied.logging.level),
        ("admin.jids", new.admin.jids != applied.admin.jids),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// The settings changed from `running` (as started) to `new` that a reload does not apply:
/// the listener, the addressing, the component connection, the store and the rest of `[sip]`
/// and `[logging]` (docs/configuration.md, the SIGHUP column). `sip.public_fqdn` is named
/// although the edge takes the new value: the engines keep the one they started with (their
/// Via, Contact and SDP), so the two would disagree until a restart.
pub fn needs_restart(new: &Config, running: &Config) -> Vec<&'static str> {
    let (a, b) = (&new.sip, &running.sip);
    let timeouts = |s: &config::SipConfig| {
        (
            s.connect_timeout,
            s.handshake_timeout,
            s.idle_timeout,
            s.keepalive_interval,
            s.message_timeout,
        )
    };
    [
        ("sip.public_fqdn", a.public_fqdn != b.public_fqdn),
        ("sip.listen", a.listen != b.listen),
        ("sip.dns_servers", a.dns_servers != b.dns_servers),
        ("the [sip] message size limits", a.limits() != b.limits()),
        ("the [sip] timeouts", timeouts(a) != timeouts(b)),
        ("[xmpp]", new.xmpp != running.xmpp),
        ("[storage]", new.storage != running.storage),
        ("[ha]", new.ha != running.ha),
        (
            "logging.format",
            new.logging.format != running.logging.format,
        ),
        (
            "admin.metrics_listen",
            new.admin.metrics_listen != running.admin.metrics_listen,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a minimal configuration with `extra` appended to `[sip]`, from `dir` (paths in
    /// it are resolved against it, so all loads from one directory compare equal there).
    fn load_cfg(dir: &Path, extra: &str) -> Config {
        load_as(dir, "sip.example.org", extra)
    }

    /// [`load_cfg`] with this `sip.public_fqdn`.
    fn load_as(dir: &Path, public_fqdn: &str, extra: &str) -> Config {
        let path = dir.join("c.toml");
        let text = format!(
            "[xmpp]\nsecret = \"s3cret\"\ncomponent_domains = [\"lcs.example.org\"]\n\
             local_domains = [\"example.org\"]\n\n[sip]\npublic_fqdn = \"{public_fqdn}\"\n\
             cert_chain = \"edge.crt\"\nprivate_key = \"edge.key\"\nca_bundle = \"ca.crt\"\n{extra}"
        );
        std::fs::write(&path, text).expect("write");
        config::load_with_env(&path, Vec::<(String, String)>::new()).expect("config")
    }

    /// What a reload applies (limits, federation, presence, IM, tables, level) is not named
    /// as waiting for a restart; what it does not apply is, by section or key.
    #[test]
    fn reload_names_what_needs_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let load = |extra: &str| load_cfg(dir.path(), extra);
        let running = load("");
        assert!(needs_restart(&running, &running).is_empty());
        let reloadable = load(
            "max_connections = 100\nmax_dns_lookups = 32\n\n[federation]\ndefault_policy = \"deny\"\n\n\
             [presence]\nmax_pending_per_user = 5\n\n[im]\nsession_idle_secs = 60\n\n\
             [logging]\nlevel = \"debug\"\n",
        );
        assert!(needs_restart(&reloadable, &running).is_empty());
        let changed =
            load("message_timeout_secs = 5\nmax_headers = 64\n\n[logging]\nformat = \"json\"\n");
        assert_eq!(
            needs_restart(&changed, &running),
            [
                "the [sip] message size limits",
                "the [sip] timeouts",
                "logging.format"
            ]
        );
        // The edge would take it, the engines would not.
        let renamed = load_as(dir.path(), "edge.example.org", "");
        assert_eq!(needs_restart(&renamed, &running), ["sip.public_fqdn"]);
    }

    /// The log line of an applied reload names each part that changed, the tables by content.
    #[test]
    fn changes_name_each_reloaded_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let load = |extra: &str| load_cfg(dir.path(), extra);
        let running = load("");
        let tables = Mappings::builtin();
        assert!(changes(&running, &tables, &running, &tables).is_empty());
        let new = load(
            "max_connections = 100\n\n[federation]\ndefault_policy = \"deny\"\n\n\
             [presence]\nnotify_min_interval_secs = 1\n\n[im]\nmax_message_bytes = 300\n\n\
             [logging]\nlevel = \"debug\"\n",
        );
        assert_eq!(
            changes(&new, &tables, &running, &tables),
            [
                "[federation]",
                "the [sip] connection limits",
                "[presence]",
                "[im]",
                "logging.level"
            ]
        );
        let edited = load("").mappings.path.join("elsewhere");
        let mut moved = running.clone();
        moved.mappings.path = edited;
        // A new path alone is no change of the tables: only their content counts.
        assert!(changes(&moved, &tables, &running, &tables).is_empty());
    }

    /// A configuration with problems, or tables that do not load, are refused with every
    /// problem named.
    #[test]
    fn load_reports_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[xmpp]\nport = \"x\"\n[im]\nmax_message_bytes = 1\n")
            .expect("write");
        let problems = load(&path, SystemTime::now()).err().expect("refused");
        assert!(problems.len() >= 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("xmpp.port")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("im.max_message_bytes")),
            "{problems:?}"
        );
    }
}
