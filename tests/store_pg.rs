//! The PostgreSQL store as an administrator meets it, through the `lcs-bridge` binary and a
//! real PostgreSQL server (lcs-test-support's `Postgres`): `store stats` and `store export` on
//! a database the bridge's store wrote (and on one it never touched, which they leave empty),
//! with the password from `storage.password_file`; `lcs-bridge run` against a test Prosody
//! creating its tables in the database, and refusing to start while the database cannot be
//! reached; a database that cannot be reached. The store's own behaviour
//! against a real server is in `src/store/pg_tests.rs`. Without PostgreSQL installed these
//! skip loudly (or fail under `LCS_BRIDGE_REQUIRE_PEERS=1`).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lcs_bridge::store::{
    Approval, Direction, PgOptions, PgStore, Store as _, StoreError, SubState, Subscription,
};
use lcs_test_support::postgres::Postgres;

const BIN: &str = env!("CARGO_BIN_EXE_lcs-bridge");

/// The example configuration, in `dir`, with `[storage]` pointing at `pg`'s database `db`.
fn config_for(dir: &Path, pg: &Postgres, db: &str) -> PathBuf {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lcs-bridge.example.toml"),
    )
    .unwrap();
    let text = example.replace("backend = \"sled\"", &pg.bridge_storage(db));
    assert_ne!(text, example);
    let file = dir.join("lcs-bridge.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn run(args: &[&str], file: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(file)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sub(direction: Direction, jid: &str, state: SubState) -> Subscription {
    Subscription {
        direction,
        local_jid: jid.into(),
        remote_aor: "sip:joe@contoso.com".into(),
        dialog: None,
        expires_unix: 1_790_003_600,
        state,
        approval: Approval::Approved,
        last_sent: None,
        last_received: None,
        display_name: None,
        updated_unix: 1_790_000_000,
    }
}

#[test]
fn store_commands_with_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = config_for(dir.path(), &pg, Postgres::DATABASE);
    // Nothing there yet: refused, and nothing created.
    let out = run(&["store", "stats"], &file);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "no lcs-bridge store in database 127.0.0.1:{}/lcs",
            pg.port()
        )),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(pg.psql("SELECT to_regclass('lcs_schema') IS NULL"), "t");

    // The writer stays open while the commands read: no lock, unlike sled.
    let store = PgStore::open(&PgOptions::new(&pg.url(), Some(pg.password().into()))).unwrap();
    store
        .put_subscriptions(&[
            sub(Direction::Outbound, "alice@example.org", SubState::Active),
            sub(Direction::Inbound, "alice@example.org", SubState::Pending),
        ])
        .unwrap();
    let out = run(&["store", "stats"], &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats = text(&out.stdout);
    assert!(
        stats.contains("subscription   outbound   active               1"),
        "{stats}"
    );
    assert!(
        stats.contains("subscription   inbound    pending              1"),
        "{stats}"
    );
    let out = run(&["store", "export"], &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["direction"], "inbound");
    assert_eq!(lines[1]["state"], "active");
    drop(store);

    // The wrong password: the server's refusal, named.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let text_cfg = std::fs::read_to_string(&file).unwrap().replace(
        &pg.password_file().display().to_string(),
        &wrong.display().to_string(),
    );
    std::fs::write(&file, text_cfg).unwrap();
    let out = run(&["store", "stats"], &file);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("password authentication failed"),
        "{}",
        text(&out.stderr)
    );
}

/// A database that cannot be reached: the store commands fail within the connect timeout,
/// naming it, and a store call is an `Unavailable` error.
#[test]
fn unreachable_database_is_a_clear_error() {
    let Some(pg) = Postgres::start() else { return };
    let options = PgOptions {
        connect_timeout: std::time::Duration::from_secs(2),
        ..PgOptions::new(&pg.url(), Some(pg.password().into()))
    };
    pg.stop();
    let err = PgStore::open(&options).err().unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "store unavailable: 127.0.0.1:{}/lcs: cannot connect: ",
            pg.port()
        )),
        "{err}"
    );
}

/// A copy of `config/` and `mappings/` in a temporary directory, with fresh test certificates
/// (as tests/cli.rs makes it).
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::copy(
        repo.join("config/lcs-bridge.example.toml"),
        config_dir.join("lcs-bridge.toml"),
    )
    .unwrap();
    let mappings = dir.path().join("mappings");
    std::fs::create_dir_all(&mappings).unwrap();
    for f in ["presence.toml", "errors.toml"] {
        std::fs::copy(repo.join("mappings").join(f), mappings.join(f)).unwrap();
    }
    let status = Command::new("sh")
        .arg(repo.join("tests/make-test-certs.sh"))
        .arg(config_dir.join("certs"))
        .status()
        .unwrap();
    assert!(status.success(), "make-test-certs.sh failed");
    let file = config_dir.join("lcs-bridge.toml");
    (dir, file)
}

/// `lcs-bridge run` with the example configuration, its component pointed at `prosody` and its
/// store in `pg`'s database (through the environment's overrides).
fn run_bridge(prosody: &lcs_test_support::Prosody, pg: &Postgres, file: &Path) -> Command {
    use lcs_test_support::XmppServer as _;
    let sip = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config", file.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("LCS_BRIDGE__SIP__LISTEN", sip.to_string())
        .env(
            "LCS_BRIDGE__XMPP__PORT",
            prosody.component_port().to_string(),
        )
        .env(
            "LCS_BRIDGE__XMPP__SECRET",
            lcs_test_support::COMPONENT_SECRET,
        )
        .env(
            "LCS_BRIDGE__XMPP__COMPONENT_DOMAINS",
            lcs_test_support::GATEWAY_COMPONENT,
        )
        .env(
            "LCS_BRIDGE__XMPP__LOCAL_DOMAINS",
            lcs_test_support::XMPP_DOMAIN,
        )
        .env("LCS_BRIDGE__STORAGE__BACKEND", "postgres")
        .env("LCS_BRIDGE__STORAGE__URL", pg.url())
        .env("LCS_BRIDGE__STORAGE__PASSWORD_FILE", pg.password_file())
        .env("LCS_BRIDGE__STORAGE__CONNECT_TIMEOUT_SECS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// The bridge runs on PostgreSQL: it creates its tables (leader row at epoch 0) and takes the
/// leader lease (epoch 1) before it serves, says which database it opened, reads its state from it and stops cleanly; with the
/// database away it does not start, and says why.
#[test]
fn run_keeps_its_state_in_postgres() {
    use std::io::BufRead as _;
    let Some(prosody) = lcs_test_support::Prosody::start() else {
        return;
    };
    let Some(pg) = Postgres::start() else { return };
    let (_dir, file) = workspace();
    let mut child = run_bridge(&prosody, &pg, &file).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let before_start: Vec<String> = lines
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("lcs-bridge started"))
        .collect();
    assert!(
        before_start
            .iter()
            .any(|l| l.contains("store opened (PostgreSQL)")
                && l.contains(&format!("127.0.0.1:{}/lcs", pg.port()))),
        "{before_start:#?}"
    );
    assert!(
        before_start
            .iter()
            .any(|l| l.contains("restored from the store") && l.contains("subscriptions")),
        "{before_start:#?}"
    );
    assert_eq!(pg.psql("SELECT version FROM lcs_schema"), "2");
    // The bridge took the leader lease (docs/high-availability.md): the first epoch.
    assert_eq!(pg.psql("SELECT epoch FROM lcs_leader"), "1");
    assert!(
        !before_start.iter().any(|l| l.contains(pg.password())),
        "the password was logged"
    );
    let kill = Command::new("kill")
        .args(["-TERM".to_owned(), child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    lines.map_while(Result::ok).for_each(drop);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {before_start:#?}");

    pg.stop();
    let started = std::time::Instant::now();
    let out = lcs_test_support::run_with_timeout(
        &mut run_bridge(&prosody, &pg, &file),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("storage.url")
            && err.contains("store unavailable")
            && err.contains("cannot connect"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
