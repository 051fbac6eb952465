//! The demo's private Prosody: found on `PATH` (or installed from the distribution when
//! missing and running as root, as tests/install-peers.sh does), configured in the demo's
//! directory on loopback ports, started in its own process group (a terminal's Ctrl-C reaches
//! the demo, which stops the bridge first) and killed when dropped, or with the demo's
//! process if that is killed outright.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use std::os::unix::process::CommandExt as _;

/// How long Prosody may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What installs Prosody on Debian and Ubuntu without starting the system's service: the
/// package scripts are kept from starting it (`policy-rc.d`, exit 101), and it is stopped
/// and disabled if it started anyway. The demo runs it when Prosody is missing and it runs
/// as root, and prints it otherwise.
const INSTALL: &str = "created=0; \
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created=1; fi; \
    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prosody; \
    status=$?; \
    if [ $created = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
    if [ -d /run/systemd/system ]; then systemctl disable --now prosody.service >/dev/null 2>&1 || true; fi; \
    exit $status";

/// The `prosody` binary: on `PATH`, or installed now (root), or an error with the command.
pub fn find_or_install() -> anyhow::Result<PathBuf> {
    if let Some(p) = on_path("prosody") {
        return Ok(p);
    }
    if !is_root() {
        bail!(
            "Prosody is not installed. Install it (Debian, Ubuntu) with:\n\n    \
             sudo apt-get install --no-install-recommends prosody\n\n\
             (the system service it adds is not needed: the demo starts its own Prosody)"
        );
    }
    say("Prosody is not installed: installing it with apt-get (as root) …");
    let status = Command::new("sh")
        .arg("-c")
        .arg(INSTALL)
        .stdin(Stdio::null())
        .status()
        .context("cannot run sh to install Prosody")?;
    if !status.success() {
        bail!("installing Prosody failed ({status}); install the `prosody` package by hand");
    }
    on_path("prosody").ok_or_else(|| anyhow!("prosody is still not on PATH after installing it"))
}

/// A line on the demo's output before the transcript starts (the output layer prints it).
fn say(line: &str) {
    tracing::info!(target: super::output::BANNER, "{line}");
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A running private Prosody; killed (and waited for) on drop.
pub struct Prosody {
    dir: PathBuf,
    domain: String,
    child: Child,
}

impl Prosody {
    /// Writes the configuration into `dir` and starts Prosody serving `domain` with the
    /// component `component`; returns once both ports listen. `stopped`: a signal came
    /// meanwhile (the wait ends early).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        binary: &Path,
        dir: &Path,
        (domain, component): (&str, &str),
        certs: &Path,
        c2s_port: u16,
        component_port: u16,
        secret: &str,
        stopped: &AtomicBool,
    ) -> anyhow::Result<Prosody> {
        std::fs::create_dir_all(dir.join("data")).context("prosody directory")?;
        let config = dir.join("prosody.cfg.lua");
        std::fs::write(
            &config,
            config_text(
                dir,
                certs,
                (domain, component),
                (c2s_port, component_port),
                secret,
            ),
        )
        .context("prosody configuration")?;
        let log = std::fs::File::create(dir.join("stdout.log")).context("prosody log")?;
        // Killed with the demo even when the demo cannot clean up (SIGKILL): util-linux's
        // setpriv sets the parent-death signal and runs Prosody (this crate has no unsafe
        // code to call prctl itself). The demo's main thread spawns it and lives to the end.
        let mut command = match on_path("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("-F")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Prosody {
            dir: dir.to_owned(),
            domain: domain.to_owned(),
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        for port in [component_port, c2s_port] {
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    bail!("Prosody exited ({status}):\n{}", server.log_tail());
                }
                if stopped.load(Ordering::SeqCst) {
                    bail!("stopped while Prosody was starting");
                }
                if Instant::now() > deadline {
                    bail!(
                        "Prosody did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{}",
                        server.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(server)
    }

    /// Makes account `user@domain` by writing the file Prosody's `internal_plain` store
    /// reads (`data/DOMAIN/accounts/USER.dat`). `user` and the domain are plain names of the
    /// demo's (letters only: the store's file names need no escaping).
    pub fn write_account(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let dir = self.dir.join("data").join(&self.domain).join("accounts");
        std::fs::create_dir_all(&dir).context("prosody accounts")?;
        std::fs::write(
            dir.join(format!("{user}.dat")),
            format!("return {{\n\t[\"password\"] = {};\n}};\n", lua(password)),
        )
        .context("prosody account")
    }

    /// Why Prosody is no longer running (with the end of its log), or `None` while it runs.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!("Prosody exited ({status}):\n{}", self.log_tail())),
            Err(e) => Some(format!("cannot watch Prosody: {e}")),
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["prosody.log", "stdout.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(name)) {
                let lines: Vec<&str> = t.lines().collect();
                let from = lines.len().saturating_sub(20);
                text.push_str(&lines[from..].join("\n"));
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lua(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn config_text(
    dir: &Path,
    certs: &Path,
    (domain, component): (&str, &str),
    (c2s_port, component_port): (u16, u16),
    secret: &str,
) -> String {
    let d = lua(&dir.display().to_string());
    let c = lua(&certs.display().to_string());
    let root = is_root();
    let secret = lua(secret);
    let (domain, component) = (lua(domain), lua(component));
    format!(
        r#"-- Written by `lcs-bridge demo` (docs/demo.md).
pidfile = {d} .. "/prosody.pid"
data_path = {d} .. "/data"
certificates = {c}
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
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix"; "offline"; "blocklist"; "vcard" }}
modules_disabled = {{ "s2s" }}
authentication = "internal_plain"
-- A loopback demo: clients may log in without TLS (STARTTLS is offered).
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
run_as_root = {root}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = {d} .. "/prosody.log" }} }}

VirtualHost {domain}

Component {component}
    component_secret = {secret}
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_install_script_parses() {
        // `sh -n` reads the script without running anything.
        let out = Command::new("sh")
            .args(["-n", "-c", INSTALL])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_configuration_names_loopback_ports_the_component_and_quotes_paths() {
        let text = config_text(
            Path::new("/tmp/a \"b\""),
            Path::new("/tmp/certs"),
            ("localhost", "lcs.localhost"),
            (5222, 40000),
            "s\"ecret",
        );
        assert!(text.contains("c2s_ports = { 5222 }"));
        assert!(text.contains("component_ports = { 40000 }"));
        assert!(text.contains("interfaces = { \"127.0.0.1\" }"));
        assert!(text.contains("s2s_ports = { }"));
        assert!(text.contains("VirtualHost \"localhost\""));
        assert!(
            text.contains("Component \"lcs.localhost\"\n    component_secret = \"s\\\"ecret\"")
        );
        assert!(text.contains("pidfile = \"/tmp/a \\\"b\\\"\" .. \"/prosody.pid\""));
    }
}
