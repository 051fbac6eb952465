//! A private Prosody for the tests and the load generator (tests/load).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::base::{
    COMPONENT_SECRET, DIRECT_COMPONENT, GATEWAY_COMPONENT, XMPP_DOMAIN, XmppServer, free_port,
    is_root, read_lossy, require_peer, run_with_timeout, self_signed_pem, terminate_child,
    wait_for_port,
};

/// A private Prosody on free loopback ports; stopped (SIGTERM, then SIGKILL) on drop.
///
/// Everything (config, pidfile, data, log, certificates) lives in a temp dir. Like the
/// ejabberd below (and Prosody's own default configuration) it keeps messages for offline users
/// (`mod_offline`), so a message for a user who is not connected waits instead of bouncing.
pub struct Prosody {
    dir: TempDir,
    config: PathBuf,
    prosody: PathBuf,
    prosodyctl: PathBuf,
    c2s_port: u16,
    component_port: u16,
    child: Child,
}

const PROSODY_START_TIMEOUT: Duration = Duration::from_secs(15);

impl Prosody {
    /// Starts Prosody logging at debug level, or returns `None` (after a SKIP line) when it
    /// is not installed and peers are not required.
    pub fn start() -> Option<Prosody> {
        Self::start_with("debug", "")
    }

    /// [`Prosody::start`] with the least level logged (`debug`, `info`, `warn`, `error`:
    /// under load, debug logging, several lines per stanza, would be most of its work) and
    /// `global`, Lua appended to the global section of its configuration (e.g.
    /// `network_settings = { nagle = false }`).
    pub fn start_with(min_level: &str, global: &str) -> Option<Prosody> {
        Self::start_inner(min_level, global, None)
    }

    /// [`Prosody::start`] with XEP-0356 (mod_privilege from Debian's `prosody-modules`)
    /// granting both components `roster` access (`none`, `get`, `set`, `both`), as
    /// docs/xmpp-server.md shows.
    pub fn start_privileged(roster: &str) -> Option<Prosody> {
        Self::start_inner("debug", "", Some(roster))
    }

    fn start_inner(min_level: &str, global: &str, privilege: Option<&str>) -> Option<Prosody> {
        let prosody = require_peer("prosody")?;
        let prosodyctl = require_peer("prosodyctl")?;
        let dir = tempfile::Builder::new()
            .prefix("lcsb-prosody-")
            .tempdir()
            .expect("temp dir for prosody");
        let base = dir.path();
        fs::create_dir_all(base.join("data")).expect("create data dir");
        fs::create_dir_all(base.join("certs")).expect("create certs dir");
        let (cert, key) = self_signed_pem(&[XMPP_DOMAIN]);
        fs::write(base.join("certs/xmpp.test.crt"), cert).expect("write cert");
        fs::write(base.join("certs/xmpp.test.key"), key).expect("write key");

        let c2s_port = free_port();
        let component_port = free_port();
        let config = base.join("prosody.cfg.lua");
        fs::write(
            &config,
            prosody_config(
                base,
                c2s_port,
                component_port,
                is_root(),
                (min_level, global),
                privilege,
            ),
        )
        .expect("write prosody config");

        let mut child = spawn_prosody(&prosody, &config, base);
        let deadline = Instant::now() + PROSODY_START_TIMEOUT;
        let ready = wait_for_port(&mut child, component_port, deadline)
            .and_then(|()| wait_for_port(&mut child, c2s_port, deadline));
        let server = Prosody {
            dir,
            config,
            prosody,
            prosodyctl,
            c2s_port,
            component_port,
            child,
        };
        if let Err(why) = ready {
            panic!(
                "prosody did not start: {why}\n--- prosody.log ---\n{}",
                server.log()
            );
        }
        Some(server)
    }

    /// Stops the server (SIGTERM, then SIGKILL) and waits until it has exited; its ports
    /// stay reserved for [`Prosody::restart`].
    pub fn stop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(3));
    }

    /// SIGKILL, and waits until the process has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again, stopped or not, with the same configuration and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_prosody(&self.prosody, &self.config, self.dir.path());
        let deadline = Instant::now() + PROSODY_START_TIMEOUT;
        let ready = wait_for_port(&mut self.child, self.component_port, deadline)
            .and_then(|()| wait_for_port(&mut self.child, self.c2s_port, deadline));
        if let Err(why) = ready {
            panic!(
                "prosody did not restart: {why}\n--- prosody.log ---\n{}",
                self.log()
            );
        }
    }

    /// The temp dir holding config, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file (for `prosodyctl --config`).
    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates account `user@xmpp.test` with `password` by writing the file Prosody's
    /// `internal_plain` store reads (`data/xmpp%2etest/accounts/USER.dat`, a Lua table) instead
    /// of running `prosodyctl` (a second each): thousands per second, usable at once, running
    /// or not (the store reads the file at each login). `user` must be a plain lowercase
    /// ASCII name (letters, digits, `_`): others would need the store's encoding.
    pub fn write_account(&self, user: &str, password: &str) {
        assert!(
            !user.is_empty()
                && user
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "write_account: {user:?} is not a plain name"
        );
        let dir = self
            .dir
            .path()
            .join("data")
            .join(datamanager_encode(XMPP_DOMAIN))
            .join("accounts");
        fs::create_dir_all(&dir).expect("create the accounts dir");
        fs::write(
            dir.join(format!("{user}.dat")),
            format!(
                "return {{\n\t[\"password\"] = {};\n}};\n",
                lua_string(password)
            ),
        )
        .expect("write an account file");
    }
}

/// Spawns `prosody --config CONFIG -F` in `base`, output appended to `base/stdout.log`.
fn spawn_prosody(prosody: &Path, config: &Path, base: &Path) -> Child {
    let stdout = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("stdout.log"))
        .expect("open stdout.log");
    let stderr = stdout.try_clone().expect("dup stdout.log");
    Command::new(prosody)
        .arg("--config")
        .arg(config)
        .arg("-F")
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", prosody.display()))
}

fn prosody_config(
    base: &Path,
    c2s_port: u16,
    component_port: u16,
    root: bool,
    (min_level, global): (&str, &str),
    privilege: Option<&str>,
) -> String {
    let b = lua_string(&base.display().to_string());
    let level = lua_string(min_level);
    // XEP-0356: the module on the user's host (global modules load there) and on each
    // component (its `component-authenticated` event tells the user's host); the grants in
    // the host's section.
    let (host_module, host_grants, component_modules) = match privilege {
        Some(roster) => (
            "; \"privilege\"",
            format!(
                "    privileged_entities = {{\n        [\"{GATEWAY_COMPONENT}\"] = {{ roster = {r} }};\n        [\"{DIRECT_COMPONENT}\"] = {{ roster = {r} }};\n    }}\n",
                r = lua_string(roster)
            ),
            "    modules_enabled = { \"privilege\" }\n",
        ),
        None => ("", String::new(), ""),
    };
    format!(
        r#"-- generated by tests/support/src/prosody.rs
pidfile = {b} .. "/prosody.pid"
data_path = {b} .. "/data"
certificates = {b} .. "/certs"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {component_port} }}
component_interfaces = {{ "127.0.0.1" }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix"; "offline"; "blocklist"{host_module} }}
modules_disabled = {{ "s2s" }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
run_as_root = {root}
log = {{ {{ levels = {{ min = {level} }}, to = "file", filename = {b} .. "/prosody.log" }} }}
{global}

VirtualHost "{XMPP_DOMAIN}"
{host_grants}
Component "{GATEWAY_COMPONENT}"
    component_secret = "{COMPONENT_SECRET}"
{component_modules}
Component "{DIRECT_COMPONENT}"
    component_secret = "{COMPONENT_SECRET}"
{component_modules}"#
    )
}

/// Prosody's file store names: every byte that is not a letter or digit as `%xx`.
fn datamanager_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                (c as char).to_string()
            } else {
                format!("%{c:02x}")
            }
        })
        .collect()
}

fn lua_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl XmppServer for Prosody {
    fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    fn component_port(&self) -> u16 {
        self.component_port
    }

    fn components(&self) -> &'static [&'static str] {
        &[GATEWAY_COMPONENT, DIRECT_COMPONENT]
    }

    fn register(&self, user: &str, password: &str) {
        let out = run_with_timeout(
            Command::new(&self.prosodyctl)
                .arg("--config")
                .arg(&self.config)
                .args(["register", user, XMPP_DOMAIN, password])
                .current_dir(self.dir.path()),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "prosodyctl register {user}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log(&self) -> String {
        format!(
            "{}\n--- stdout/stderr ---\n{}",
            read_lossy(&self.dir.path().join("prosody.log")),
            read_lossy(&self.dir.path().join("stdout.log"))
        )
    }

    fn kill(&mut self) {
        Prosody::kill(self);
    }

    fn restart(&mut self) {
        Prosody::restart(self);
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(3));
    }
}
