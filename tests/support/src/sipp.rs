#![allow(clippy::unwrap_used)] // test fixture: a failure to set one up is a test failure

//! SIPp (Debian's build: TCP only), its scenarios in tests/sipp, behind socat's mutual TLS:
//! socat `OPENSSL-LISTEN` in front of a SIPp UAS for a peer the bridge calls, socat
//! `TCP-LISTEN` → `OPENSSL` for a SIPp UAC that calls the bridge; SIPp's message log parsed
//! back into [`LoggedMessage`]s for exact checks of what went over the wire.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::pki::{Pki, der_to_pem, pem};

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peer programs, or `None` when they are missing (skip, or fail with
/// `LCS_BRIDGE_REQUIRE_PEERS=1`).
pub fn peers() -> Option<(PathBuf, PathBuf)> {
    let sipp = crate::require_peer("sipp")?;
    let socat = crate::require_peer("socat")?;
    Some((sipp, socat))
}

/// Writes the peer's certificate and key (`peer.pem`) and the CA (`ca.crt`) for socat.
pub fn write_peer_files(dir: &Path, pki: &Pki, peer_names: &[&str]) {
    std::fs::write(dir.join("peer.pem"), pem(&pki.leaf(peer_names, false))).unwrap();
    std::fs::write(dir.join("ca.crt"), der_to_pem("CERTIFICATE", &pki.ca)).unwrap();
}

/// True when something listens on TCP `127.0.0.1:port` (read from /proc/net/tcp, so the check
/// opens no connection the program would have to deal with).
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && fields[3] == "0A"
            && fields[1]
                .split_once(':')
                .is_some_and(|(ip, p)| ip == "0100007F" && u16::from_str_radix(p, 16) == Ok(port))
    })
}

/// Waits (≤ 10 s) until `child` listens on `port`; panics if it exits first.
pub fn wait_listening(child: &mut Killed, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{what} exited before listening on {port}: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// socat for a peer that sends: plain TCP on `listen` → mutual TLS (the peer's client
/// certificate) to `127.0.0.1:target`.
pub fn socat_to_edge(socat: &Path, dir: &Path, listen: u16, target: u16) -> Killed {
    let mut child = Killed(
        Command::new(socat)
            .arg(format!("TCP-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!(
                "OPENSSL:127.0.0.1:{target},cert={},cafile={},verify=1",
                dir.join("peer.pem").display(),
                dir.join("ca.crt").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&mut child, listen, "socat");
    child
}

/// socat for a peer that receives: mutual TLS on `listen` (a client certificate from the CA is
/// required) → plain TCP to `127.0.0.1:target`.
pub fn socat_from_edge(socat: &Path, dir: &Path, listen: u16, target: u16) -> Killed {
    let mut child = Killed(
        Command::new(socat)
            .arg(format!(
                "OPENSSL-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,cert={},cafile={},verify=1",
                dir.join("peer.pem").display(),
                dir.join("ca.crt").display()
            ))
            .arg(format!("TCP:127.0.0.1:{target}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&mut child, listen, "socat");
    child
}

/// The scenario file `tests/sipp/<name>.xml`.
pub fn scenario(name: &str) -> PathBuf {
    crate::repo().join("tests/sipp").join(format!("{name}.xml"))
}

/// One SIPp run: its name (its logs are `dir/<name>.*`), the scenario file's name in
/// tests/sipp ([`scenario`]) and the values the scenario takes as keywords (`-key`, used as
/// `[keyword]` in its messages; SIPp reads them before the scenario).
pub struct Run<'a> {
    pub name: &'a str,
    pub scenario: &'a str,
    pub keys: &'a [(&'a str, &'a str)],
}

/// Starts SIPp over TCP on `127.0.0.1:port` with `run`'s scenario for one call, logging to
/// `dir/<run.name>.*`, giving up after `timeout` (SIPp's `-timeout`, an error). `remote` is the
/// address to call (UAC) or `None` (UAS); `extra` are more SIPp arguments.
pub fn spawn_sipp(
    sipp: &Path,
    dir: &Path,
    run: &Run<'_>,
    port: u16,
    remote: Option<u16>,
    timeout: Duration,
    extra: &[&str],
) -> Killed {
    let name = run.name;
    let file = |suffix: &str| dir.join(format!("{name}{suffix}")).display().to_string();
    let mut cmd = Command::new(sipp);
    if let Some(remote) = remote {
        cmd.arg(format!("127.0.0.1:{remote}"));
    }
    for (key, value) in run.keys {
        cmd.args(["-key", key, value]);
    }
    cmd.arg("-sf")
        .arg(scenario(run.scenario))
        .args(["-t", "t1", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-timeout_error")
        .args(["-trace_err", "-error_file", &file(".errors.log")])
        .args(["-trace_msg", "-message_file", &file(".messages.log")])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(file(".out")).unwrap())
        .stderr(std::fs::File::create(file(".err")).unwrap());
    Killed(cmd.spawn().unwrap())
}

/// Waits (at most `wait`) for SIPp to exit; its status (`None`: still running) and everything
/// it logged, for failure messages.
pub fn finish_sipp(
    sipp: &mut Killed,
    dir: &Path,
    name: &str,
    wait: Duration,
) -> (Option<ExitStatus>, String) {
    let deadline = Instant::now() + wait;
    let status = loop {
        match sipp.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    (status, sipp_logs(dir, name))
}

/// Everything SIPp run `name` logged in `dir` (the end of each file), for failure messages.
pub fn sipp_logs(dir: &Path, name: &str) -> String {
    let mut logs = String::new();
    for suffix in [".err", ".errors.log", ".messages.log", ".out"] {
        let text = std::fs::read(dir.join(format!("{name}{suffix}")))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<{e}>"));
        // The screen dumps in .out are long: keep their end.
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        logs.push_str(&format!(
            "--- sipp {name}{suffix} ---\n{}\n",
            &text[start..]
        ));
    }
    logs
}

/// One SIP message in SIPp's `-trace_msg` log.
#[derive(Debug, Clone)]
pub struct LoggedMessage {
    /// Sent by SIPp (else received).
    pub sent: bool,
    /// SIPp's wall-clock timestamp, seconds since midnight (the log has no zone).
    pub time: f64,
    /// The message as it went over the wire.
    pub raw: Vec<u8>,
}

impl LoggedMessage {
    pub fn start_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        text.lines().next().unwrap_or_default().to_owned()
    }

    /// The request method, `None` for a response.
    pub fn method(&self) -> Option<String> {
        let line = self.start_line();
        (!line.starts_with("SIP/2.0"))
            .then(|| line.split(' ').next().unwrap_or_default().to_owned())
    }

    /// The response status, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        let line = self.start_line();
        line.strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }

    /// The first header `name` (case-insensitive, full names only).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(self.head());
        text.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let (n, m) = v.split_once(' ')?;
        Some((n.trim().parse().ok()?, m.trim().to_owned()))
    }

    fn split(&self) -> usize {
        self.raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.raw.len(), |i| i + 4)
    }

    fn head(&self) -> &[u8] {
        &self.raw[..self.split()]
    }

    /// The body, exactly as sent.
    pub fn body(&self) -> &[u8] {
        &self.raw[self.split()..]
    }
}

const SEPARATOR: &[u8] = b"----------------------------------------------- ";

/// Parses SIPp's `-trace_msg` log: entries `----…-- DATE TIME`, then `TCP message received
/// [N] bytes :` or `TCP message sent (N bytes):`, a blank line and the N bytes of the message.
pub fn parse_message_log(log: &[u8]) -> Vec<LoggedMessage> {
    let mut out = Vec::new();
    let mut rest = log;
    while let Some(i) = find(rest, SEPARATOR) {
        rest = &rest[i + SEPARATOR.len()..];
        let Some(eol) = find(rest, b"\n") else { break };
        let stamp = String::from_utf8_lossy(&rest[..eol]).into_owned();
        rest = &rest[eol + 1..];
        let Some(eol) = find(rest, b"\n") else { break };
        let what = String::from_utf8_lossy(&rest[..eol]).into_owned();
        rest = &rest[eol + 1..];
        let sent = what.contains(" sent ");
        let Some(len) = what
            .split(['[', '('])
            .nth(1)
            .and_then(|s| s.split([']', ' ']).next())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // A blank line, then the message.
        let start = usize::from(rest.first() == Some(&b'\n'));
        if rest.len() < start + len {
            break; // still being written
        }
        out.push(LoggedMessage {
            sent,
            time: seconds_of_day(&stamp),
            raw: rest[start..start + len].to_vec(),
        });
        rest = &rest[start + len..];
    }
    out
}

/// `2026-11-22 07:10:00.548488` → seconds since midnight.
fn seconds_of_day(stamp: &str) -> f64 {
    let time = stamp.split_whitespace().nth(1).unwrap_or_default();
    let mut parts = time.split(':');
    let mut secs = 0.0;
    for _ in 0..3 {
        secs = secs * 60.0 + parts.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
    }
    secs
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The messages of SIPp run `name` in `dir` logged so far.
pub fn read_message_log(dir: &Path, name: &str) -> Vec<LoggedMessage> {
    std::fs::read(dir.join(format!("{name}.messages.log")))
        .map(|b| parse_message_log(&b))
        .unwrap_or_default()
}
