//! Shared harness for integration tests that run against real peers.
//!
//! Use it from an integration test with `mod common;`. What it gives:
//!
//! - [`free_port`] / [`free_port_pair`]: free TCP+UDP ports on 127.0.0.1.
//! - [`require_peer`] / [`require_python_modules`]: find a peer program; when it is
//!   missing, either skip loudly (plain `cargo test`) or panic when
//!   `LCS_BRIDGE_REQUIRE_PEERS=1` (what `tests/run-all.sh` and CI set).
//! - [`Prosody`] and [`Ejabberd`]: start a private XMPP server on free loopback ports,
//!   with the external components [`GATEWAY_COMPONENT`] and [`DIRECT_COMPONENT`]
//!   (XEP-0114, secret [`COMPONENT_SECRET`]); stopped when dropped.
//! - [`component_handshake`]: a minimal XEP-0114 client, for smoke tests.
//! - [`run_with_timeout`]: run a command with a hard deadline.
//! - [`dns::TestDns`]: an in-process authoritative DNS server on loopback, zones built in code.
//! - [`sipp`]: SIPp behind socat's mutual TLS in both directions, and SIPp's message log parsed.
//!
//! `base.rs` (names, ports, peers, processes) and `prosody.rs` stand on their own so that the
//! load generator (tests/load) can use them through `#[path]`.
//!
//! Nothing here ever talks to a non-loopback address. See docs/testing.md.
#![allow(dead_code)]

pub mod dns;
pub mod edge;
pub mod pki;

mod base;
mod prosody;

pub use base::*;
#[allow(unused_imports)] // not every test starts a Prosody
pub use prosody::Prosody;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A private ejabberd on free loopback ports; stopped on drop.
///
/// Runs `ejabberdctl … foreground` with its own
/// ctl-config (`ERLANG_NODE`, `ERL_DIST_PORT`, `INET_DIST_INTERFACE=127.0.0.1`, so
/// no epmd and nothing on 0.0.0.0). Debian's ejabberdctl only runs as root (it then
/// switches to the `ejabberd` user, via `su`, in a new session) or as `ejabberd`;
/// for other users [`Ejabberd::start`] skips. Because `su` puts the Erlang VM in
/// its own session, it is stopped through the pid ejabberd writes to
/// `EJABBERD_PID_PATH`, not through the spawned child.
pub struct Ejabberd {
    dir: TempDir,
    ejabberdctl: PathBuf,
    node: String,
    c2s_port: u16,
    component_port: u16,
    child: Child,
}

const EJABBERD_START_TIMEOUT: Duration = Duration::from_secs(45);

impl Ejabberd {
    /// Starts ejabberd, or returns `None` (after a SKIP line) when it is not
    /// installed and peers are not required, or when not running as root.
    pub fn start() -> Option<Ejabberd> {
        let ejabberdctl = require_peer("ejabberdctl")?;
        if !is_root() {
            loud(
                "SKIP: ejabberd tests need root (Debian's ejabberdctl runs only \
                 as root or as user ejabberd)",
            );
            return None;
        }
        let Some((uid, gid)) = system_user_ids("ejabberd") else {
            return skip_or_fail(
                "system user `ejabberd` not found (package ejabberd not installed?)",
            );
        };
        // The dir must be reachable by the `ejabberd` user: keep it in /tmp.
        let dir = tempfile::Builder::new()
            .prefix("lcsb-ejabberd-")
            .tempdir_in("/tmp")
            .expect("temp dir for ejabberd");
        let base = dir.path();
        for sub in ["spool", "logs"] {
            fs::create_dir_all(base.join(sub)).expect("create ejabberd dir");
        }
        let (cert, key) = self_signed_pem(&[XMPP_DOMAIN]);
        fs::write(base.join("xmpp.test.pem"), format!("{cert}{key}")).expect("write pem");

        let c2s_port = free_port();
        let component_port = free_port();
        let dist_port = free_port();
        let node = format!("lcsb{dist_port}@localhost");
        fs::write(
            base.join("ejabberd.yml"),
            ejabberd_config(base, c2s_port, component_port),
        )
        .expect("write ejabberd.yml");
        fs::write(
            base.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE={node}\nERL_DIST_PORT={dist_port}\nINET_DIST_INTERFACE=127.0.0.1\n\
                 EJABBERD_PID_PATH={}/ejabberd.pid\nERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n",
                base.display()
            ),
        )
        .expect("write ejabberdctl.cfg");
        fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod ejabberd dir");
        chown_recursive(base, uid, gid)
            .unwrap_or_else(|e| panic!("chown -R ejabberd {}: {e}", base.display()));

        let stdout = fs::File::create(base.join("stdout.log")).expect("create stdout.log");
        let stderr = stdout.try_clone().expect("dup stdout.log");
        let mut child = Command::new(&ejabberdctl)
            .args(ctl_args(base))
            .arg("foreground")
            .current_dir(base)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", ejabberdctl.display()));

        let deadline = Instant::now() + EJABBERD_START_TIMEOUT;
        let ready = wait_for_port(&mut child, component_port, deadline)
            .and_then(|()| wait_for_port(&mut child, c2s_port, deadline));
        let server = Ejabberd {
            dir,
            ejabberdctl,
            node,
            c2s_port,
            component_port,
            child,
        };
        if let Err(why) = ready {
            panic!(
                "ejabberd did not start: {why}\n--- ejabberd.log ---\n{}",
                server.log()
            );
        }
        Some(server)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Erlang node name (`lcsb<dist port>@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `ejabberdctl <args>` against this node; panics on failure or timeout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = run_with_timeout(
            Command::new(&self.ejabberdctl)
                .args(ctl_args(self.dir.path()))
                .args(args)
                .current_dir(self.dir.path()),
            Duration::from_secs(60),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "ejabberdctl {args:?}: {}\n{text}",
            out.status
        );
        text
    }

    fn vm_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.path().join("ejabberd.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

fn ctl_args(base: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    for (flag, p) in [
        ("--config", base.join("ejabberd.yml")),
        ("--ctl-config", base.join("ejabberdctl.cfg")),
        ("--logs", base.join("logs")),
        ("--spool", base.join("spool")),
    ] {
        v.push(flag.into());
        v.push(p.into_os_string());
    }
    v
}

fn ejabberd_config(base: &Path, c2s_port: u16, component_port: u16) -> String {
    format!(
        r#"# generated by tests/common/mod.rs
hosts: [{XMPP_DOMAIN}]
loglevel: info
certfiles: [ "{base}/xmpp.test.pem" ]
acme: {{ auto: false }}
auth_method: internal
auth_password_format: plain
listen:
  - {{ port: {c2s_port}, ip: "127.0.0.1", module: ejabberd_c2s, starttls: true }}
  - port: {component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      "{GATEWAY_COMPONENT}": {{ password: "{COMPONENT_SECRET}" }}
      "{DIRECT_COMPONENT}": {{ password: "{COMPONENT_SECRET}" }}
modules: {{ mod_roster: {{}}, mod_disco: {{}}, mod_ping: {{}}, mod_offline: {{}} }}
"#,
        base = base.display()
    )
}

impl XmppServer for Ejabberd {
    fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    fn component_port(&self) -> u16 {
        self.component_port
    }

    fn components(&self) -> &'static [&'static str] {
        &[GATEWAY_COMPONENT, DIRECT_COMPONENT]
    }

    /// ejabberd opens its ports before mnesia has created the `passwd` table; `register` in
    /// that window fails with `no_exists`, so it is retried for up to 15 s.
    fn register(&self, user: &str, password: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = run_with_timeout(
                Command::new(&self.ejabberdctl)
                    .args(ctl_args(self.dir.path()))
                    .args(["register", user, XMPP_DOMAIN, password])
                    .current_dir(self.dir.path()),
                Duration::from_secs(60),
            );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                return;
            }
            assert!(
                text.contains("no_exists") && Instant::now() < deadline,
                "ejabberdctl register {user}: {}\n{text}",
                out.status
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        format!(
            "{}\n--- stdout/stderr ---\n{}",
            read_lossy(&self.dir.path().join("logs/ejabberd.log")),
            read_lossy(&self.dir.path().join("stdout.log"))
        )
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        // The VM runs under `su` in its own session: signal it by its pid file.
        if let Some(pid) = self.vm_pid() {
            send_signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(4);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            if pid_alive(pid) {
                send_signal(pid, "KILL");
            }
        }
        // `su` exits once the VM is gone; make sure ejabberdctl does too.
        terminate_child(&mut self.child, Duration::from_secs(3));
    }
}

/// uid and gid of a system user, from /etc/passwd.
fn system_user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ XEP-0114

/// Outcome of [`component_handshake`].
#[derive(Debug)]
pub enum Handshake {
    /// The server answered `<handshake/>`.
    Accepted { stream_id: String },
    /// The server refused; `transcript` is everything it sent.
    Refused { transcript: String },
}

/// Lowercase hex SHA-1 of `stream_id + secret` (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to `127.0.0.1:port` as component `domain` and performs the XEP-0114
/// handshake with `secret`. Every read is bounded; panics on I/O trouble or after
/// `timeout` without an answer.
pub fn component_handshake(port: u16, domain: &str, secret: &str, timeout: Duration) -> Handshake {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((LOOPBACK, port));
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("set_read_timeout");
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set_write_timeout");
    write!(
        sock,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    )
    .expect("send stream header");

    let mut buf = String::new();
    let header_done = |b: &str| {
        b.find("<stream:stream")
            .is_some_and(|i| b[i..].contains('>'))
            || b.contains("</stream:stream>")
            || b.contains("<stream:error")
    };
    read_until(&mut sock, &mut buf, deadline, header_done);
    let Some(stream_id) = stream_header_id(&buf) else {
        return Handshake::Refused { transcript: buf };
    };
    write!(
        sock,
        "<handshake>{}</handshake>",
        handshake_digest(&stream_id, secret)
    )
    .expect("send handshake");
    let answered = |b: &str| {
        b.contains("<handshake/>")
            || b.contains("<handshake></handshake>")
            || b.contains("</stream:stream>")
            || b.contains("</stream:error>")
    };
    read_until(&mut sock, &mut buf, deadline, answered);
    if buf.contains("<handshake/>") || buf.contains("<handshake></handshake>") {
        let _ = sock.write_all(b"</stream:stream>");
        Handshake::Accepted { stream_id }
    } else {
        Handshake::Refused { transcript: buf }
    }
}

fn read_until(
    sock: &mut TcpStream,
    buf: &mut String,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) {
    let mut chunk = [0u8; 4096];
    while !done(buf) {
        if Instant::now() >= deadline {
            panic!("no complete answer from the XMPP server in time; got so far: {buf:?}");
        }
        match sock.read(&mut chunk) {
            Ok(0) => return, // closed
            Ok(n) => buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("read from XMPP server: {e}; got so far: {buf:?}"),
        }
    }
}

/// The `id` attribute of the first `<stream:stream …>` tag in `buf`.
fn stream_header_id(buf: &str) -> Option<String> {
    let start = buf.find("<stream:stream")?;
    let tag = &buf[start..start + buf[start..].find('>')?];
    let mut rest = tag;
    while let Some(i) = rest.find("id=") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 3..];
        if before.is_some_and(char::is_whitespace) {
            let quote = after.chars().next()?;
            if quote == '\'' || quote == '"' {
                let value = &after[1..];
                return Some(value[..value.find(quote)?].to_string());
            }
        }
        rest = after;
    }
    None
}
pub mod e2e;
pub mod sip_peer;
pub mod sipp;
