//! Smoke tests for the real peers: they are installed, and the XMPP servers start
//! on loopback with the bridge's components configured and accept (or refuse) a
//! real XEP-0114 handshake. Missing peers skip, or fail under
//! `LCS_BRIDGE_REQUIRE_PEERS=1` (see docs/testing.md).

#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::process::Command;
use std::time::{Duration, Instant};

use lcs_test_support::postgres::Postgres;
use lcs_test_support::{
    COMPONENT_SECRET, Ejabberd, Handshake, Prosody, XmppServer, component_handshake, require_peer,
    require_python_modules, run_with_timeout,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn assert_components_accept(server: &dyn XmppServer, name: &str) {
    for domain in server.components() {
        match component_handshake(
            server.component_port(),
            domain,
            COMPONENT_SECRET,
            HANDSHAKE_TIMEOUT,
        ) {
            Handshake::Accepted { stream_id } => {
                assert!(!stream_id.is_empty(), "{name}: empty stream id")
            }
            Handshake::Refused { transcript } => panic!(
                "{name} refused component {domain} with the right secret: {transcript}\n--- log ---\n{}",
                server.log()
            ),
        }
    }
}

fn assert_wrong_secret_refused(server: &dyn XmppServer, name: &str) {
    let domain = server.components()[0];
    match component_handshake(
        server.component_port(),
        domain,
        "not-the-secret",
        HANDSHAKE_TIMEOUT,
    ) {
        Handshake::Accepted { .. } => {
            panic!("{name} accepted component {domain} with a wrong secret")
        }
        Handshake::Refused { transcript } => assert!(
            transcript.contains("<stream:error") && transcript.contains("not-authorized"),
            "{name}: expected a not-authorized stream error, got: {transcript}"
        ),
    }
}

#[test]
fn handshake_digest_is_lowercase_hex_sha1() {
    // SHA-1("abc") from FIPS 180-1.
    assert_eq!(
        lcs_test_support::handshake_digest("a", "bc"),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| lcs_test_support::free_port()).collect();
    let unique: std::collections::HashSet<_> = ports.iter().collect();
    assert_eq!(unique.len(), ports.len(), "duplicate ports: {ports:?}");
    for p in ports {
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("port handed out is bindable");
    }
    let p = lcs_test_support::free_port_pair();
    std::net::TcpListener::bind(("127.0.0.1", p)).expect("pair, first");
    std::net::TcpListener::bind(("127.0.0.1", p + 1)).expect("pair, second");
}

#[test]
fn prosody_component_handshake() {
    let started = Instant::now();
    let Some(prosody) = Prosody::start() else {
        return;
    };
    eprintln!("prosody up in {:?}", started.elapsed());
    assert_components_accept(&prosody, "prosody");
    assert_wrong_secret_refused(&prosody, "prosody");
    prosody.register("alice", "alicepw");
    assert!(
        prosody
            .dir()
            .join("data/xmpp%2etest/accounts/alice.dat")
            .exists(),
        "prosodyctl register left no account file"
    );
}

#[test]
fn two_prosodys_side_by_side() {
    let Some(a) = Prosody::start() else { return };
    let Some(b) = Prosody::start() else { return };
    assert_ne!(a.component_port(), b.component_port());
    assert_components_accept(&a, "prosody a");
    assert_components_accept(&b, "prosody b");
    let pid = a.pid();
    drop(a);
    // Drop reaps the child, so its /proc entry is gone.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "prosody {pid} still running after drop"
    );
}

#[test]
fn ejabberd_component_handshake() {
    let started = Instant::now();
    let Some(ejabberd) = Ejabberd::start() else {
        return;
    };
    eprintln!("ejabberd up in {:?}", started.elapsed());
    assert_components_accept(&ejabberd, "ejabberd");
    assert_wrong_secret_refused(&ejabberd, "ejabberd");
    ejabberd.register("alice", "alicepw");
    let users = ejabberd.ctl(&["registered_users", lcs_test_support::XMPP_DOMAIN]);
    assert!(users.lines().any(|l| l.trim() == "alice"), "users: {users}");
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn peers_present() {
    let t = Duration::from_secs(30);
    // SIPp: `-v` prints the version (and exits 99).
    if let Some(sipp) = require_peer("sipp") {
        let out = run_with_timeout(Command::new(sipp).arg("-v"), t);
        assert!(
            output_text(&out).contains("SIPp"),
            "sipp -v: {}",
            output_text(&out)
        );
    }
    if let Some(socat) = require_peer("socat") {
        let out = run_with_timeout(Command::new(socat).arg("-V"), t);
        assert!(out.status.success(), "socat -V: {}", output_text(&out));
        assert!(output_text(&out).contains("socat version"));
    }
    // baresip: `-h` prints version and usage (exit status is not 0 by design).
    if let Some(baresip) = require_peer("baresip") {
        let out = run_with_timeout(Command::new(baresip).arg("-h"), t);
        let text = output_text(&out);
        assert!(
            text.contains("baresip v") && text.contains("Usage"),
            "baresip -h: {text}"
        );
    }
    // PostgreSQL: found as lcs_test_support::postgres finds it (not on Debian's PATH).
    if let Some(pg) = Postgres::start() {
        assert!(pg.psql("SELECT version()").starts_with("PostgreSQL "));
    }
    for bin in ["prosody", "prosodyctl", "ejabberdctl", "openssl"] {
        require_peer(bin);
    }
    require_python_modules(&["slixmpp", "pjsua2"]);
}

/// The harness's PostgreSQL: it starts on loopback, a committed row survives a clean restart
/// and a crash (SIGKILL of every server process), and while it is down clients are refused.
#[test]
fn postgres_starts_survives_kill_and_restarts() {
    let Some(pg) = Postgres::start() else { return };
    let started = Instant::now();
    pg.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    pg.restart();
    assert_eq!(pg.psql("SELECT v FROM t"), "1");
    pg.psql("INSERT INTO t VALUES (2)");
    let pid = pg.pid().expect("running");
    pg.kill();
    assert!(
        !pg.is_running(),
        "postmaster {pid} still running after kill"
    );
    assert!(
        pg.try_psql(Postgres::DATABASE, "SELECT 1").is_err(),
        "a killed server answered"
    );
    pg.start_again();
    assert_eq!(pg.psql("SELECT v FROM t ORDER BY v"), "1\n2");
    assert_ne!(pg.pid(), Some(pid));
    // Over TCP the password is required (SCRAM), and it works.
    let tcp_psql = |password: Option<&str>| {
        let mut cmd = Command::new(pg.bin().join("psql"));
        cmd.args(["-X", "-A", "-t", "-w", "-c", "SELECT 7", &pg.url()]);
        cmd.env_remove("PGPASSWORD");
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        run_with_timeout(&mut cmd, Duration::from_secs(30))
    };
    let refused = tcp_psql(None);
    assert!(!refused.status.success(), "TCP without a password accepted");
    let ok = tcp_psql(Some(pg.password()));
    assert!(
        ok.status.success(),
        "TCP with the password: {}",
        output_text(&ok)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "7");
    eprintln!("postgres harness round trip: {:?}", started.elapsed());
}
