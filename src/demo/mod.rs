//! `lcs-bridge demo`: the whole federation on loopback in one command (docs/demo.md). In a
//! temporary directory it starts a private Prosody (accounts `alice` and `bob` on `localhost`,
//! the component `lcs.localhost`), a simulated Lync partner `contoso.test` inside this process
//! (`partner`: its users' decisions, sans-IO; `partner_io`: its mutual-TLS edge), certificates
//! for both edges from a CA made in process, and the bridge itself ([`app::run_with`]) in
//! gateway mode with the partner as a static route. It prints the credentials and a live
//! transcript (the runner's `lcs_bridge::transcript` lines and the partner's notes) until
//! SIGINT or SIGTERM; then, and on any failure on the way, Prosody is killed and the directory
//! removed.

#![allow(clippy::disallowed_methods)] // the demo's runner reads the clock (start-up deadlines)

pub mod output;
pub mod partner;
pub mod partner_io;
pub mod prosody;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::app;
use crate::random::SplitMix;
use partner::{Partner, Settings, User};
use partner_io::PartnerTls;
use prosody::Prosody;

/// The XMPP domain of the demo's Prosody.
pub const XMPP_DOMAIN: &str = "localhost";
/// The bridge's component (gateway mode: `joe\40contoso.test@lcs.localhost`).
pub const COMPONENT: &str = "lcs.localhost";
/// The simulated partner's SIP domain.
pub const PARTNER: &str = "contoso.test";
/// The bridge's SIP name.
const PUBLIC_FQDN: &str = "sip.localhost";
/// The XMPP accounts made, all with the one printed password.
pub const ACCOUNTS: &[&str] = &["alice", "bob"];
/// The partner's users: (name, display name).
const PARTNER_USERS: &[(&str, &str)] = &[("joe", "Joe Lync"), ("ann", "Ann Skype")];
/// The c2s port used when it is free.
const C2S_PORT: u16 = 5222;
/// How often the demo checks that Prosody still runs.
const PROSODY_CHECK: Duration = Duration::from_millis(500);
/// How long the bridge may take to stop after the signal.
const STOP_GRACE: Duration = Duration::from_secs(8);

/// What `lcs-bridge demo` can be told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prosody's c2s port; `None`: 5222 when free, else a free one.
    pub c2s_port: Option<u16>,
    /// How often the partner's users change availability.
    pub presence_every: Duration,
}

/// Runs the demo until SIGINT or SIGTERM. Everything it started is stopped and its directory
/// removed before it returns, whether it failed or not.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = output::init()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The handlers first: a Ctrl-C from here on stops the demo through the cleanup below.
    let (mut sigint, mut sigterm) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    runtime.spawn({
        let stopped = stopped.clone();
        async move {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
            stopped.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = stop_tx.send(true);
        }
    });

    let dir = tempfile::Builder::new()
        .prefix("lcs-bridge-demo-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let result = demo(options, dir.path(), &runtime, stop, &stopped, started);
    // Prosody is down (its guard dropped inside `demo`); the partner's tasks end with the
    // runtime, the directory with `dir`.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let path = dir.path().to_owned();
    dir.close()
        .with_context(|| format!("cannot remove {}", path.display()))?;
    info!(target: output::BANNER, "demo stopped: Prosody ended, {} removed", path.display());
    result
}

fn demo(
    options: &Options,
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stopped: &Arc<std::sync::atomic::AtomicBool>,
    started: std::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let binary = prosody::find_or_install()?;
    let rng = SplitMix::seeded();
    let password = password(&rng);
    let secret = rng.token();

    let pki = Pki::new()?;
    let bridge_leaf = pki.leaf(&[PUBLIC_FQDN, XMPP_DOMAIN, "127.0.0.1"])?;
    let partner_leaf = pki.leaf(&[&format!("sip.{PARTNER}"), PARTNER, "127.0.0.1"])?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).context("certs directory")?;
    write_pem(&certs.join("ca.crt"), &pki.ca_pem)?;
    write_pem(&certs.join("bridge.crt"), &bridge_leaf.cert_pem)?;
    write_key(&certs.join("bridge.key"), &bridge_leaf.key_pem)?;
    let xmpp_leaf = pki.leaf(&[XMPP_DOMAIN])?;
    write_pem(&certs.join("localhost.crt"), &xmpp_leaf.cert_pem)?;
    write_key(&certs.join("localhost.key"), &xmpp_leaf.key_pem)?;

    let c2s_port = match options.c2s_port {
        // Taken, Prosody would start without it and a client would reach whatever has it.
        Some(p) if StdListener::bind(("127.0.0.1", p)).is_err() => {
            return Err(anyhow!("--c2s-port {p}: 127.0.0.1:{p} is in use"));
        }
        Some(p) => p,
        None if StdListener::bind(("127.0.0.1", C2S_PORT)).is_ok() => C2S_PORT,
        None => free_port()?,
    };
    let component_port = free_port()?;
    let sip_port = free_port()?;
    let partner_listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("partner edge: cannot listen")?;
    let partner_port = partner_listener.local_addr()?.port();

    // Prosody: killed when `server` is dropped, on every way out of this function.
    let server = match Prosody::start(
        &binary,
        &dir.join("prosody"),
        (XMPP_DOMAIN, COMPONENT),
        &certs,
        c2s_port,
        component_port,
        &secret,
        stopped,
    ) {
        Ok(server) => server,
        // Ctrl-C while Prosody was starting: a stop, not a failure.
        Err(_) if stopped.load(std::sync::atomic::Ordering::SeqCst) => return Ok(()),
        Err(e) => return Err(e),
    };
    for user in ACCOUNTS {
        server.write_account(user, &password)?;
    }

    let settings = Settings {
        domain: PARTNER.into(),
        sent_by: format!("127.0.0.1:{partner_port}"),
        users: PARTNER_USERS
            .iter()
            .map(|(name, display)| User {
                name: (*name).into(),
                display: (*display).into(),
            })
            .collect(),
        change_every: options.presence_every,
        seed: rng.next(),
    };
    let tls = PartnerTls::new(
        partner_leaf.chain.clone(),
        partner_leaf.key.clone_key(),
        pki.ca_der.clone(),
    )?;
    let bridge_addr: SocketAddr = ([127, 0, 0, 1], sip_port).into();
    let partner = Partner::new(settings, Instant::now());
    runtime.spawn(partner_io::run(partner, partner_listener, tls, bridge_addr));

    let config = dir.join("lcs-bridge.toml");
    write_mappings(&dir.join("mappings"))?;
    std::fs::write(
        &config,
        bridge_config(dir, component_port, &secret, sip_port, partner_port),
    )
    .context("bridge configuration")?;
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let (stop_bridge, bridge_stop) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bridge".into())
        .spawn(move || {
            let _ = done_tx.send(app::run_with(&config, false, Some(bridge_stop)));
        })
        .context("cannot start the bridge's thread")?;
    let banner = banner(
        dir,
        c2s_port,
        &password,
        (partner_port, options.presence_every),
    );
    let printer = std::thread::spawn(move || {
        // After the bridge's start-up line (or never, if it fails).
        if started.recv_timeout(Duration::from_secs(60)).is_ok() {
            info!(target: output::BANNER, "{banner}");
        }
    });
    let result = runtime.block_on(async {
        let mut server = server;
        let mut watch = tokio::time::interval(PROSODY_CHECK);
        let failure = loop {
            tokio::select! {
                r = &mut done_rx => {
                    let r = r.map_err(|_| anyhow!("the bridge's thread ended"))?;
                    return r.map(|()| server);
                }
                _ = stop.wait_for(|s| *s) => break None,
                _ = watch.tick() => {
                    if let Some(why) = server.exited() {
                        break Some(why);
                    }
                }
            }
        };
        // The bridge's shutdown presences go before Prosody is killed.
        let _ = stop_bridge.send(());
        let stopped = match tokio::time::timeout(STOP_GRACE, done_rx).await {
            Ok(Ok(r)) => r,
            _ => Err(anyhow!("the bridge did not stop within {STOP_GRACE:?}")),
        };
        match failure {
            Some(why) => Err(anyhow!("{why}")),
            None => stopped.map(|()| server),
        }
    });
    drop(printer);
    // Prosody is killed with its guard, here or (on an error) already.
    result.map(drop)
}

fn banner(
    dir: &Path,
    c2s_port: u16,
    password: &str,
    (partner_port, every): (u16, Duration),
) -> String {
    let accounts: Vec<String> = ACCOUNTS
        .iter()
        .map(|u| format!("{u}@{XMPP_DOMAIN}"))
        .collect();
    let contacts: Vec<String> = PARTNER_USERS
        .iter()
        .map(|(u, _)| format!("{u}\\40{PARTNER}@{COMPONENT}"))
        .collect();
    format!(
        "\n\
         lcs-bridge demo: XMPP ⇄ Lync federation on loopback (files in {dir})\n\
         \n  XMPP server   Prosody, domain {XMPP_DOMAIN}, c2s on 127.0.0.1:{c2s_port}\n\
         \x20 accounts      {accounts} (password: {password})\n\
         \x20 gateway       {COMPONENT}, the bridge as Prosody's component\n\
         \x20 Lync partner  {PARTNER}, simulated in this process, mutual TLS on 127.0.0.1:{partner_port}\n\
         \x20 Lync users    {contacts}\n\
         \n  Log in to 127.0.0.1:{c2s_port} as {first} with any XMPP client (STARTTLS with a\n\
         \x20 self-signed certificate; plain authentication allowed), add {contact} to your\n\
         \x20 contacts and send it a message. Its availability changes every {every} s;\n\
         \x20 it adds you back and answers every message. Ctrl-C stops everything.\n",
        dir = dir.display(),
        accounts = accounts.join(", "),
        first = accounts[0],
        contacts = contacts.join(", "),
        contact = contacts[0],
        every = every.as_secs(),
    )
}

fn bridge_config(
    dir: &Path,
    component_port: u16,
    secret: &str,
    sip_port: u16,
    partner_port: u16,
) -> String {
    let q = |p: PathBuf| toml::Value::String(p.display().to_string()).to_string();
    format!(
        r#"# Written by `lcs-bridge demo` (docs/demo.md).
[xmpp]
host = "127.0.0.1"
port = {component_port}
secret = "{secret}"
mode = "gateway"
component_domains = ["{COMPONENT}"]
local_domains = ["{XMPP_DOMAIN}"]
gateway_name = "Lync gateway (demo)"

[sip]
listen = "127.0.0.1:{sip_port}"
public_fqdn = "{PUBLIC_FQDN}"
cert_chain = {cert}
private_key = {key}
ca_bundle = {ca}
# Nothing is looked up: the partner is a static route.
dns_servers = ["127.0.0.1:9"]

[federation]
default_policy = "deny"

[[federation.partners]]
domain = "{PARTNER}"
edge = "127.0.0.1:{partner_port}"

[presence]
notify_min_interval_secs = 1

[storage]
path = {store}

[mappings]
path = {mappings}

[logging]
level = "warn"

[admin]
# No operations listener: the demo must start beside a bridge that has the default port.
metrics_listen = ""
"#,
        cert = q(dir.join("certs/bridge.crt")),
        key = q(dir.join("certs/bridge.key")),
        ca = q(dir.join("certs/ca.crt")),
        store = q(dir.join("store")),
        mappings = q(dir.join("mappings")),
    )
}

/// The shipped mapping tables, written where the configuration names them.
fn write_mappings(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).context("mappings directory")?;
    std::fs::write(
        dir.join("presence.toml"),
        include_str!("../../mappings/presence.toml"),
    )?;
    std::fs::write(
        dir.join("errors.toml"),
        include_str!("../../mappings/errors.toml"),
    )?;
    Ok(())
}

/// 12 letters and digits.
fn password(rng: &SplitMix) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789";
    (0..12)
        .map(|_| ALPHABET[rng.up_to(ALPHABET.len() as u32 - 1) as usize] as char)
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")
        .context("cannot find a free port")?
        .local_addr()?
        .port())
}

fn write_pem(path: &Path, pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, pem).with_context(|| format!("cannot write {}", path.display()))
}

fn write_key(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The demo's certificate authority, made in process.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lcs-bridge demo CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `names` with serverAuth and clientAuth (federation edges need both).
    fn leaf(&self, names: &[&str]) -> anyhow::Result<Leaf> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_written_configuration_passes_check_config() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new().unwrap();
        let leaf = pki.leaf(&[PUBLIC_FQDN, XMPP_DOMAIN, "127.0.0.1"]).unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        write_pem(&certs.join("ca.crt"), &pki.ca_pem).unwrap();
        write_pem(&certs.join("bridge.crt"), &leaf.cert_pem).unwrap();
        write_key(&certs.join("bridge.key"), &leaf.key_pem).unwrap();
        write_mappings(&dir.path().join("mappings")).unwrap();
        let config = dir.path().join("lcs-bridge.toml");
        std::fs::write(
            &config,
            bridge_config(dir.path(), 5347, "s3cret", 5061, 5062),
        )
        .unwrap();
        let report = crate::config::check(&config, std::time::SystemTime::now());
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let cfg = report.config.unwrap();
        assert_eq!(cfg.xmpp.component_domains, [COMPONENT]);
        let partner = cfg.federation.partner(PARTNER).unwrap();
        assert_eq!(partner.edge.as_ref().unwrap().host, "127.0.0.1");
    }

    #[test]
    fn passwords_are_twelve_unambiguous_characters() {
        let rng = SplitMix::new(1);
        let a = password(&rng);
        assert_eq!(a.len(), 12);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() && !"0O1lI".contains(c))
        );
        assert_ne!(a, password(&rng));
    }
}
