//! The bridge's configuration file for a test (docs/configuration.md): one template, used by
//! the end-to-end world ([`crate::e2e`]), the tests that start the `lcs-bridge` binary on
//! their own, and the load generator. Paths are those [`crate::pki::write_bridge_files`]
//! writes into `dir`, the store is `dir/store`, the mappings the repository's.

use std::path::Path;

use crate::e2e::{IDLE_SECS, Mode};
use crate::{COMPONENT_SECRET, XMPP_DOMAIN, repo};

/// `[sip] dns_servers` of every test by default: nothing may ask a real resolver, and the
/// discard port answers nothing.
pub const NO_DNS: &str = "# Nothing here may ask a real resolver: the discard port answers nothing.\n\
                          dns_servers = [\"127.0.0.1:9\"]\n";

pub struct BridgeConfig<'a> {
    /// Where the TLS files are and the store goes.
    pub dir: &'a Path,
    pub mode: Mode,
    /// The XMPP server's XEP-0114 port (127.0.0.1).
    pub component_port: u16,
    /// `xmpp.secret`.
    pub secret: &'a str,
    /// More lines of the `[xmpp]` table (e.g. `queue_capacity = 100000`).
    pub xmpp: &'a str,
    /// `sip.listen` is `127.0.0.1:sip_port`.
    pub sip_port: u16,
    /// More lines of the `[sip]` table; [`NO_DNS`] by default.
    pub sip: &'a str,
    /// The body of the `[federation]` table; by default [`BridgeConfig::partner`]'s.
    pub federation: String,
    /// The `[im]` table (`session_idle_secs` [`IDLE_SECS`] by default), or nothing.
    pub im: String,
    /// More lines of the `[storage]` table (e.g. `backend = "postgres"`, `url` and
    /// `password_file` of a [`crate::postgres::Postgres`]); `path` is always `dir/store`.
    pub storage: String,
    /// The `[admin]` table: by default the operations listener off (`metrics_listen = ""`), so
    /// that bridges started at once do not race for its default port; left out when `extra`
    /// has an `[admin]` table of its own.
    pub admin: String,
    /// More TOML, appended after `[logging]`'s level (so it may add `[logging]` keys, or
    /// tables such as `[presence]`); the `[admin]` table comes after it.
    pub extra: &'a str,
    /// `logging.level` (EnvFilter directives).
    pub log_level: &'a str,
}

impl<'a> BridgeConfig<'a> {
    /// The end-to-end tests' configuration: deny by default, the mode's LCS domain as the
    /// partner with its static edge at `127.0.0.1:partner_port`, no resolver, `[im]
    /// session_idle_secs` [`IDLE_SECS`], debug logging.
    pub fn new(
        dir: &'a Path,
        mode: Mode,
        component_port: u16,
        sip_port: u16,
        partner_port: u16,
    ) -> Self {
        BridgeConfig {
            dir,
            mode,
            component_port,
            secret: COMPONENT_SECRET,
            xmpp: "",
            sip_port,
            sip: NO_DNS,
            federation: Self::partner(mode.lcs_domain(), partner_port),
            im: format!("[im]\nsession_idle_secs = {IDLE_SECS}\n"),
            storage: String::new(),
            admin: "[admin]\nmetrics_listen = \"\"\n".to_owned(),
            extra: "",
            log_level: "debug",
        }
    }

    /// A `[federation]` body: default policy deny, `domain` the one partner, its static edge
    /// at `127.0.0.1:port`.
    pub fn partner(domain: &str, port: u16) -> String {
        format!(
            "default_policy = \"deny\"\n\n[[federation.partners]]\ndomain = \"{domain}\"\n\
             edge = \"127.0.0.1:{port}\"\n"
        )
    }

    pub fn toml(&self) -> String {
        // TOML basic strings: Rust's Debug quoting is the same for these (ASCII) paths.
        let quote = |p: &Path| format!("{:?}", p.display().to_string());
        let path = |name: &str| quote(&self.dir.join(name));
        let mappings = quote(&repo().join("mappings"));
        format!(
            r#"# written by tests/support/src/config.rs
[xmpp]
host = "127.0.0.1"
port = {component_port}
secret = "{secret}"
mode = "{mode}"
component_domains = ["{component}"]
local_domains = ["{XMPP_DOMAIN}"]
{xmpp}
[sip]
listen = "127.0.0.1:{sip_port}"
public_fqdn = "sip.xmpp.test"
cert_chain = {cert}
private_key = {key}
ca_bundle = {ca}
{sip}
[federation]
{federation}
{im}
[storage]
path = {storage}
{storage_more}

[mappings]
path = {mappings}

[logging]
level = "{log_level}"
{extra}
{admin}"#,
            component_port = self.component_port,
            secret = self.secret,
            mode = self.mode.name(),
            component = self.mode.component(),
            xmpp = self.xmpp,
            sip_port = self.sip_port,
            cert = path("bridge.crt"),
            key = path("bridge.key"),
            ca = path("ca.crt"),
            sip = self.sip,
            federation = self.federation,
            im = self.im,
            storage = path("store"),
            storage_more = self.storage,
            // An `extra` with its own `[admin]` table replaces the default one, the listener
            // turned off there too unless it says otherwise.
            admin = if self.extra.contains("[admin]") {
                ""
            } else {
                self.admin.as_str()
            },
            extra = if self.extra.contains("[admin]") && !self.extra.contains("metrics_listen") {
                std::borrow::Cow::Owned(self.extra.replacen(
                    "[admin]\n",
                    "[admin]\nmetrics_listen = \"\"\n",
                    1,
                ))
            } else {
                std::borrow::Cow::Borrowed(self.extra)
            },
            log_level = self.log_level,
        )
    }
}
