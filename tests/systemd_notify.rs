#![allow(clippy::unwrap_used)] // test fixtures: a failure to set one up is a test failure
#![allow(clippy::disallowed_methods)] // a test of timing: it reads the clock

//! The service manager's notifications (docs/operations.md "Running under systemd"), as the
//! real `lcs-bridge run` sends them to a `NOTIFY_SOCKET` the test binds (a Unix datagram
//! socket, as systemd's): `READY=1` once the SIP edge listens and the component stream is up,
//! `WATCHDOG=1` at half the `WATCHDOG_USEC` interval and not without one, `RELOADING=1` (with
//! `MONOTONIC_USEC`) then `READY=1` around SIGHUP, `STOPPING=1` on SIGTERM. The XMPP server and
//! the partner are the scripted ends of `lcs_test_support::e2e::scripted_partner`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use lcs_test_support::e2e::scripted_partner_with;
use lcs_test_support::send_signal;

/// The test's end of the notification socket: every datagram with the time it came.
struct NotifySocket {
    socket: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until `until`.
    fn read_until(&mut self, until: Instant) {
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), text));
            }
        }
    }

    /// Reads until a datagram from the `from`th on has a line `line`, or panics at `deadline`
    /// with what came; returns its index.
    fn wait_for(&mut self, line: &str, from: usize, deadline: Instant) -> usize {
        loop {
            if let Some(i) = self.seen[from..]
                .iter()
                .position(|(_, t)| t.lines().any(|l| l == line))
            {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} on NOTIFY_SOCKET; got {:?}",
                self.texts()
            );
            self.read_until(Instant::now() + Duration::from_millis(100));
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, t)| t.as_str()).collect()
    }

    /// When each `WATCHDOG=1` came, from datagram `from` on.
    fn watchdog_times(&self, from: usize) -> Vec<Instant> {
        self.seen[from..]
            .iter()
            .filter(|(_, t)| t.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| *at)
            .collect()
    }
}

/// Ready after start, watchdog pings at half of a 1 s interval, reload and stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_reload_and_stop_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&path);
    let socket = path.display().to_string();
    let mut p = scripted_partner_with(
        "lcsb-notify-",
        "",
        &[
            ("NOTIFY_SOCKET", Some(&socket)),
            ("WATCHDOG_USEC", Some("1000000")),
        ],
    )
    .await;
    let pid = p.bridge.child.id();
    tokio::task::block_in_place(|| {
        // The bridge has said it started (edge listening, component stream accepted).
        let ready = notify.wait_for("READY=1", 0, Instant::now() + Duration::from_secs(10));
        let status = &notify.seen[ready].1;
        assert!(
            status.contains(&format!("STATUS=SIP edge on 127.0.0.1:{}", p.sip_port)),
            "{status:?}"
        );
        // Nothing but watchdog pings came before READY=1.
        for (_, t) in &notify.seen[..ready] {
            assert_eq!(t.trim(), "WATCHDOG=1", "before READY=1: {t:?}");
        }

        // The interval is honoured: a ping every 0.5 s, so about 6 in 3.2 s (4 to 8 on a busy
        // machine), and never a whole interval apart.
        let from = notify.seen.len();
        notify.read_until(Instant::now() + Duration::from_millis(3200));
        let pings = notify.watchdog_times(from);
        assert!(
            (4..=8).contains(&pings.len()),
            "{} WATCHDOG=1 in 3.2 s with WATCHDOG_USEC=1000000: {:?}",
            pings.len(),
            notify.texts()
        );
        let longest = pings
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        assert!(
            longest < Duration::from_millis(1000),
            "WATCHDOG=1 pings {longest:?} apart, over WATCHDOG_USEC"
        );

        // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
        let from = notify.seen.len();
        send_signal(pid, "HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        let reloading = notify.wait_for("RELOADING=1", from, deadline);
        assert!(
            notify.seen[reloading]
                .1
                .lines()
                .any(|l| l.starts_with("MONOTONIC_USEC=")),
            "{:?}",
            notify.seen[reloading].1
        );
        notify.wait_for("READY=1", reloading + 1, deadline);

        // SIGTERM: STOPPING=1, then the process ends.
        let from = notify.seen.len();
        send_signal(pid, "TERM");
        notify.wait_for("STOPPING=1", from, Instant::now() + Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = p.bridge.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        assert!(status.success(), "exit after SIGTERM: {status}");
    });
}

/// Without `WATCHDOG_USEC` the bridge says it is ready and sends no pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_without_a_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&path);
    let socket = path.display().to_string();
    let _p = scripted_partner_with("lcsb-notify-", "", &[("NOTIFY_SOCKET", Some(&socket))]).await;
    tokio::task::block_in_place(|| {
        notify.wait_for("READY=1", 0, Instant::now() + Duration::from_secs(10));
        notify.read_until(Instant::now() + Duration::from_millis(1500));
        assert!(
            notify.watchdog_times(0).is_empty(),
            "WATCHDOG=1 without WATCHDOG_USEC: {:?}",
            notify.texts()
        );
    });
}
