//! A private ejabberd for the tests (Debian's `ejabberdctl`, root only).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::base::{
    COMPONENT_SECRET, DIRECT_COMPONENT, GATEWAY_COMPONENT, XMPP_DOMAIN, XmppServer, free_port,
    is_root, loud, pid_alive, read_lossy, require_peer, run_with_timeout, self_signed_pem,
    send_signal, skip_or_fail, terminate_child, wait_for_port,
};
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
        Self::start_inner(None)
    }

    /// [`Ejabberd::start`] with XEP-0356 (the built-in mod_privilege) granting both components
    /// `roster` access (`get`, `set`, `both`) through an access rule that matches only them,
    /// as docs/xmpp-server.md shows.
    pub fn start_privileged(roster: &str) -> Option<Ejabberd> {
        Self::start_inner(Some(roster))
    }

    fn start_inner(privilege: Option<&str>) -> Option<Ejabberd> {
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
            ejabberd_config(base, c2s_port, component_port, privilege),
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

        let mut child = spawn_ejabberd(&ejabberdctl, base);
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

/// `ejabberdctl … foreground` in `base`, its output appended to `base/stdout.log`.
fn spawn_ejabberd(ejabberdctl: &Path, base: &Path) -> Child {
    let stdout = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("stdout.log"))
        .expect("open stdout.log");
    let stderr = stdout.try_clone().expect("dup stdout.log");
    Command::new(ejabberdctl)
        .args(ctl_args(base))
        .arg("foreground")
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", ejabberdctl.display()))
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

fn ejabberd_config(
    base: &Path,
    c2s_port: u16,
    component_port: u16,
    privilege: Option<&str>,
) -> String {
    let (rules, module) = match privilege {
        Some(roster) => (
            format!(
                "acl:\n  lcs_bridge:\n    server: [\"{GATEWAY_COMPONENT}\", \"{DIRECT_COMPONENT}\"]\naccess_rules:\n  lcs_bridge:\n    allow: lcs_bridge\n"
            ),
            format!(", mod_privilege: {{ roster: {{ {roster}: lcs_bridge }} }}"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"# generated by tests/support/src/ejabberd.rs
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
{rules}modules: {{ mod_roster: {{}}, mod_disco: {{}}, mod_ping: {{}}, mod_offline: {{}}, mod_privacy: {{}}, mod_blocking: {{}}{module} }}
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

    /// ejabberd opens its ports before mnesia has created the `passwd` table and before its
    /// commands are registered; `register` in that window fails with `no_exists`, or (seen on
    /// a loaded machine) `unknown command 'register'`, so it is retried for up to 15 s.
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
                (text.contains("no_exists") || text.contains("unknown command"))
                    && Instant::now() < deadline,
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

    /// SIGKILL to the Erlang VM (by its pid file: `su` runs it in a session of its own), then
    /// waits for it and for `ejabberdctl` to be gone.
    fn kill(&mut self) {
        if let Some(pid) = self.vm_pid() {
            send_signal(pid, "KILL");
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!pid_alive(pid), "ejabberd's VM {pid} survived SIGKILL");
        }
        terminate_child(&mut self.child, Duration::from_secs(3));
        let _ = fs::remove_file(self.dir.path().join("ejabberd.pid"));
    }

    /// A new `ejabberdctl … foreground` on the same spool (mnesia keeps the accounts and
    /// rosters), configuration and ports.
    fn restart(&mut self) {
        if self.vm_pid().is_some_and(pid_alive) {
            self.stop_vm();
        }
        terminate_child(&mut self.child, Duration::from_secs(3));
        self.child = spawn_ejabberd(&self.ejabberdctl, self.dir.path());
        let deadline = Instant::now() + EJABBERD_START_TIMEOUT;
        let ready = wait_for_port(&mut self.child, self.component_port, deadline)
            .and_then(|()| wait_for_port(&mut self.child, self.c2s_port, deadline));
        if let Err(why) = ready {
            panic!(
                "ejabberd did not restart: {why}\n--- ejabberd.log ---\n{}",
                self.log()
            );
        }
    }
}

impl Ejabberd {
    /// SIGTERM to the VM (SIGKILL after 4 s), by its pid file.
    fn stop_vm(&self) {
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
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        self.stop_vm();
        // `su` exits once the VM is gone; make sure ejabberdctl does too.
        terminate_child(&mut self.child, Duration::from_secs(3));
    }
}

/// uid and gid of a system user, from /etc/passwd.
pub(crate) fn system_user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

pub(crate) fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
