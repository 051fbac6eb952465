//! Tests of loading and value validation (no certificates needed; those are in
//! `tests/config_check.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[xmpp]
secret = "s3cret"
component_domains = ["lcs.example.org"]
local_domains = ["example.org"]

[sip]
public_fqdn = "sip.example.org"
cert_chain = "certs/edge.crt"
private_key = "certs/edge.key"
ca_bundle = "certs/ca.crt"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads `text` (from a file in a fresh directory) and returns the problem lines.
fn problems_with_env(text: &str, env: Vec<(String, String)>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "c.toml", text);
    match load_with_env(&path, env) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

fn problems(text: &str) -> Vec<String> {
    problems_with_env(text, no_env())
}

/// MINIMAL with `extra` appended to the `[section]` (sections are re-opened with dotted keys).
fn minimal_plus(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}\n")
}

fn load_ok(text: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "c.toml", text);
    match load_with_env(&path, no_env()) {
        Ok(c) => c,
        Err(p) => panic!("unexpected problems: {p:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "c.toml", MINIMAL);
    let c = load_with_env(&path, no_env()).expect("loads");
    assert_eq!(c.xmpp.host, "127.0.0.1");
    assert_eq!(c.xmpp.port, 5347);
    assert_eq!(c.xmpp.secret.expose(), "s3cret");
    assert_eq!(format!("{:?}", c.xmpp.secret), "Secret(***)");
    assert_eq!(c.xmpp.mode, AddressMode::Gateway);
    assert_eq!(c.xmpp.gateway_name, "LCS gateway");
    assert_eq!(c.xmpp.queue_capacity, 1024);
    assert_eq!(c.xmpp.startup_timeout, Duration::from_secs(30));
    assert_eq!(c.sip.listen.to_string(), "0.0.0.0:5061");
    assert_eq!(c.sip.cert_chain, dir.path().join("certs/edge.crt"));
    assert_eq!(c.sip.ca_bundle, Some(dir.path().join("certs/ca.crt")));
    assert!(!c.sip.use_system_roots);
    assert_eq!(
        (
            c.sip.max_header_bytes,
            c.sip.max_body_bytes,
            c.sip.max_headers
        ),
        (16384, 65536, 128)
    );
    assert_eq!(
        (
            c.sip.max_connections_per_edge,
            c.sip.max_connections_per_network
        ),
        (4, 40)
    );
    assert!(c.sip.dns_servers.is_empty());
    assert_eq!(
        (
            c.sip.connect_timeout,
            c.sip.handshake_timeout,
            c.sip.idle_timeout,
            c.sip.keepalive_interval,
            c.sip.message_timeout
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(10),
            Duration::from_secs(300),
            Some(Duration::from_secs(60)),
            Duration::from_secs(30)
        )
    );
    assert_eq!(
        (
            c.sip.edge.max_dns_lookups,
            c.sip.edge.max_dns_lookups_per_peer,
            c.sip.edge.pool_idle,
            c.sip.edge.max_handshakes,
            c.sip.edge.max_connections_per_address,
            c.sip.edge.max_connections_per_identity,
            c.sip.edge.max_connections,
            c.sip.edge.max_write_backlog_bytes
        ),
        (
            64,
            8,
            Duration::from_secs(300),
            100,
            40,
            40,
            1000,
            4 * 1024 * 1024
        )
    );
    assert_eq!(c.federation.default_policy, DefaultPolicy::Allow);
    assert!(c.federation.partners.is_empty());
    assert!(c.federation.discovery_enabled());
    assert_eq!(c.federation.discovered_rate, 20);
    assert_eq!(c.federation.verification_level, VerificationLevel::Verified);
    assert_eq!(
        c.federation.verification_level("contoso.com"),
        VerificationLevel::Verified
    );
    assert_eq!(c.presence.notify_min_interval, Duration::from_secs(5));
    assert_eq!(c.presence.restore_rate, 1000);
    assert_eq!(c.presence.max_pending_per_domain, 1000);
    assert_eq!(c.presence.max_pending_per_partner, 10_000);
    assert_eq!(c.presence.max_pending_per_user, 100);
    assert_eq!(c.presence.subscription_expires, Duration::from_secs(3600));
    assert_eq!(c.presence.icon_url, None);
    assert_eq!(
        c.im,
        ImConfig {
            session_idle: Duration::from_secs(600),
            max_message_bytes: 16384,
            max_queued_messages: 100,
            dialog_max_age: Duration::from_secs(23 * 3600),
            max_sessions: 10_000,
            max_sessions_per_domain: 1000,
            max_sessions_per_partner: 10_000,
            max_sessions_per_user: 100,
        }
    );
    assert_eq!(c.storage_path(), dir.path().join("data"));
    assert_eq!(c.storage.backend, crate::config::StoreBackend::Sled);
    assert_eq!(c.mappings_dir(), dir.path().join("mappings"));
    assert_eq!(c.config_dir(), dir.path());
    assert_eq!(c.logging.level, "info");
    assert_eq!(c.logging.format, LogFormat::Human);
}

/// `storage.backend` names a store this build has.
#[test]
fn the_store_backend_is_one_this_build_has() {
    let with =
        |backend: &str| problems(&format!("{MINIMAL}\n[storage]\nbackend = \"{backend}\"\n"));
    assert!(with("sled").is_empty());
    assert_eq!(
        with("mysql"),
        ["storage.backend: must be \"sled\", \"redb\" or \"postgres\", not \"mysql\""]
    );
    assert_eq!(
        with("postgres"),
        ["storage.url: required with backend = \"postgres\""]
    );
    if cfg!(feature = "redb") {
        assert!(with("redb").is_empty());
    } else {
        assert_eq!(
            with("redb"),
            [
                "storage.backend: \"redb\" needs a build with the redb feature (cargo build --features redb)"
            ]
        );
    }
}

/// `backend = "postgres"`: the URL (or its parts) without a password, the password from its
/// file, the pool's size and connect timeout.
#[test]
fn the_postgres_store_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = write(dir.path(), "db-password", "hunter2\n");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let storage = |keys: &str| {
        format!("{MINIMAL}\n[storage]\nbackend = \"postgres\"\n{keys}\n")
            .replace("PW", &pw.display().to_string())
    };
    let c = load_ok(&storage(
        "url = \"postgres://lcs@db1.example.org:5433/lcs\"\npassword_file = \"PW\"\npool_size = 3",
    ));
    assert_eq!(c.storage.backend, crate::config::StoreBackend::Postgres);
    let pg = c.storage.postgres.expect("postgres settings");
    assert_eq!(pg.url, "postgres://lcs@db1.example.org:5433/lcs");
    assert_eq!(pg.password.as_ref().map(Secret::expose), Some("hunter2"));
    assert!(!format!("{pg:?}").contains("hunter2"));
    assert_eq!(
        (pg.pool_size, pg.connect_timeout),
        (3, Duration::from_secs(5))
    );
    // Its parts, and no password file.
    let c = load_ok(&storage("url = \"host=db1 port=5433 user=lcs dbname=lcs\""));
    assert_eq!(c.storage.postgres.expect("postgres").password, None);
    assert_eq!(
        problems(&storage("url = \"postgres://lcs:hunter2@db1/lcs\"")),
        ["storage.url: holds a password: put it in storage.password_file instead"]
    );
    assert_eq!(
        problems(&storage("url = \"host=db1 password=hunter2\"")),
        ["storage.url: holds a password: put it in storage.password_file instead"]
    );
    assert!(
        problems(&storage("url = \"mysql://db1/lcs\""))[0]
            .starts_with("storage.url: not a PostgreSQL connection string: ")
    );
    assert!(
        problems(&storage(
            "url = \"postgres://db1/lcs\"\npassword_file = \"nope\""
        ))[0]
            .starts_with("storage.password_file: cannot read ")
    );
    let empty = write(dir.path(), "empty", "\n");
    assert_eq!(
        problems(&storage(&format!(
            "url = \"postgres://db1/lcs\"\npassword_file = \"{}\"",
            empty.display()
        ))),
        [format!("storage.password_file: {empty:?} is empty")]
    );
    assert_eq!(
        problems(&storage("url = \"postgres://db1/lcs\"\npool_size = 0")),
        ["storage.pool_size: must be between 1 and 100, not 0"]
    );
}

#[test]
fn relative_config_path_resolves_against_its_directory() {
    let c = load_ok(MINIMAL);
    assert!(c.sip.private_key.ends_with("certs/edge.key"));
    // A bare file name has the current directory as its base.
    assert_eq!(base_dir(Path::new("c.toml")), Path::new("."));
    assert_eq!(base_dir(Path::new("config/c.toml")), Path::new("config"));
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lcs-bridge.example.toml")
}

#[test]
fn example_file_loads() {
    let c = load_with_env(&example_path(), no_env()).expect("example loads");
    assert_eq!(c.sip.public_fqdn, "sip.example.org");
    assert_eq!(c.xmpp.component_domains, ["lcs.example.org"]);
    assert_eq!(c.xmpp.local_domains, ["example.org"]);
    assert!(c.mappings_dir().ends_with("config/../mappings"));
    assert!(c.storage_path().ends_with("config/data"));
}

#[test]
fn xmpp_server_example_files_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["prosody.example.toml", "ejabberd.example.toml"] {
        let c = load_with_env(&dir.join(name), no_env()).expect(name);
        assert_eq!(c.xmpp.mode, AddressMode::Gateway, "{name}");
        assert_eq!(c.xmpp.component_domains, ["lcs.example.org"], "{name}");
        assert_eq!(c.xmpp.local_domains, ["example.org"], "{name}");
        assert_eq!((c.xmpp.host.as_str(), c.xmpp.port), ("127.0.0.1", 5347));
        assert_eq!(c.sip.public_fqdn, "sip.example.org", "{name}");
        assert!(c.mappings_dir().ends_with("config/../mappings"), "{name}");
    }
}

#[test]
fn example_file_documents_every_key() {
    let text = std::fs::read_to_string(example_path()).expect("read example");
    let mut diag = Diag::default();
    let _ = sections::load_parts(&example_path(), no_env(), &mut diag);
    assert!(diag.known.len() > 30, "{:?}", diag.known);
    for key in &diag.known {
        let (section, name) = match key.rsplit_once('.') {
            Some((s, n)) => (s.trim_end_matches("[]"), n),
            None => ("", key.as_str()),
        };
        if section.is_empty() {
            assert!(text.contains(&format!("[{name}]")), "section [{name}]");
        } else if text.contains(&format!("[[{key}]]")) {
            // An array of tables, shown commented out.
        } else if key.contains("[]") {
            // Array-of-tables members are documented in a comment block.
            assert!(text.contains(&format!("#   {name} ")), "{key}");
        } else {
            let written = format!("\n{name} = ");
            let commented = format!("\n# {name} = ");
            assert!(
                text.contains(&written) || text.contains(&commented),
                "{key} is not in the example file"
            );
        }
    }
}

#[test]
fn environment_overrides_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "c.toml",
        &minimal_plus("[logging]\nlevel = \"info\""),
    );
    let env = env(&[
        ("LCS_BRIDGE__XMPP__SECRET", "from-env"),
        ("LCS_BRIDGE__SIP__LISTEN", "127.0.0.1:15061"),
        ("LCS_BRIDGE__SIP__MAX_HEADERS", "256"),
        ("LCS_BRIDGE__SIP__USE_SYSTEM_ROOTS", "true"),
        ("LCS_BRIDGE__XMPP__LOCAL_DOMAINS", "a.example, b.example"),
        ("LCS_BRIDGE__LOGGING__LEVEL", "debug"),
        ("LCS_BRIDGE__STORAGE__PATH", "state"),
        ("OTHER__XMPP__SECRET", "ignored"),
    ]);
    let c = load_with_env(&path, env).expect("loads");
    assert_eq!(c.xmpp.secret.expose(), "from-env");
    assert_eq!(c.sip.listen.to_string(), "127.0.0.1:15061");
    assert_eq!(c.sip.max_headers, 256);
    assert!(c.sip.use_system_roots);
    assert_eq!(c.xmpp.local_domains, ["a.example", "b.example"]);
    assert_eq!(c.logging.level, "debug");
    // Relative paths from the environment are resolved against the file's directory too.
    assert_eq!(c.storage_path(), dir.path().join("state"));
    // Without the environment the file's values stand.
    let c = load_with_env(&path, no_env()).expect("loads");
    assert_eq!(c.xmpp.secret.expose(), "s3cret");
}

#[test]
fn environment_problems_name_the_variable() {
    let got = problems_with_env(
        MINIMAL,
        env(&[
            ("LCS_BRIDGE__XMPP__PORT", "abc"),
            ("LCS_BRIDGE__XMPP__SCRET", "x"),
        ]),
    );
    assert_eq!(
        got,
        [
            "xmpp.port: expected an integer, found string \"abc\" (set by LCS_BRIDGE__XMPP__PORT)",
            "xmpp.scret: unknown key (did you mean \"secret\"?) (set by LCS_BRIDGE__XMPP__SCRET)",
        ]
    );
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.toml");
    let got = load_with_env(&path, no_env()).expect_err("fails");
    assert_eq!(
        got,
        [Problem::new(
            path.display().to_string(),
            "cannot read: file not found"
        )]
    );
}

#[test]
fn toml_syntax_error_names_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "c.toml", "[xmpp]\nhost = \"a\"\nport = = 5\n");
    let got = load_with_env(&path, no_env()).expect_err("fails");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, path.display().to_string());
    assert!(
        got[0]
            .reason
            .starts_with("TOML syntax error at line 3, column 8: "),
        "{}",
        got[0]
    );
    assert!(!got[0].to_string().contains('\n'));
}

#[test]
fn misspelt_keys_are_each_reported_once() {
    // The misspelt required key is not reported a second time as missing.
    let text = MINIMAL
        .replace("secret =", "scret =")
        .replace("public_fqdn", "public_fdqn");
    let got = problems(&format!(
        "{text}\n[logging]\nlevle = \"debug\"\ncolour = 1\n"
    ));
    assert_eq!(
        got,
        [
            "xmpp.scret: unknown key (did you mean \"secret\"?)",
            "sip.public_fdqn: unknown key (did you mean \"public_fqdn\"?)",
            "logging.colour: unknown key",
            "logging.levle: unknown key (did you mean \"level\"?)",
        ]
    );
}

#[test]
fn unknown_and_misspelt_sections() {
    let got = problems(&minimal_plus("[xmp]\nport = 1\n[metrics]\nport = 9100"));
    assert_eq!(
        got,
        [
            "metrics: unknown key",
            "xmp: unknown key (did you mean \"xmpp\"?)",
        ]
    );
    let text = MINIMAL.replace("[xmpp]", "[xmp]");
    assert_eq!(
        problems(&text),
        ["xmp: unknown key (did you mean \"xmpp\"?)"]
    );
}

#[test]
fn all_problems_are_collected() {
    let text = r#"
[xmpp]
port = 70000
component_domains = ["lcs.example.org", "other.example.org"]
local_domains = ["example.org", "127.0.0.1", "example.org"]
mode = "gatway"

[sip]
listen = "localhost:5061"
public_fqdn = "sip.example.org."
cert_chain = "certs/edge.crt"
private_key = 5
max_connections_per_edge = 5
max_connections_per_network = 41
max_headers = "many"

[federation]
default_policy = "maybe"
[[federation.partners]]
domain = "contoso.com"
edge = "sip.contoso.com"
[[federation.partners]]
domain = "Contoso.com"
policy = "allow"
[[federation.partners]]
policy = "block"
extra = 1

[presence]
icon_url = "http://example.org/i.png"
notify_min_interval_secs = 0
restore_rate = 5

[logging]
level = "info,foo=verbose"
format = "xml"
"#;
    assert_eq!(
        problems(text),
        [
            "xmpp.port: port must be 1–65535, not 70000",
            "xmpp.secret: required key is missing (or set secret_file)",
            "xmpp.local_domains[1]: \"127.0.0.1\" is an IP address; a domain name is needed here",
            "xmpp.local_domains[2]: \"example.org\" is already listed at xmpp.local_domains[0]",
            "xmpp.mode: must be \"gateway\" or \"direct\", not \"gatway\"",
            "sip.private_key: expected a string, found integer 5",
            "sip.max_headers: expected an integer, found string \"many\"",
            "sip.listen: \"localhost:5061\" is not a socket address (IP:port, e.g. \"0.0.0.0:5061\" or \"[::]:5061\")",
            "sip.public_fqdn: \"sip.example.org.\" is not a valid domain name: it must not end with a dot",
            "sip.ca_bundle: required unless use_system_roots = true (peers' certificates must be verified)",
            "sip.max_connections_per_edge: must be between 1 and 4 (the federation profile allows at most 4 connections to one peer edge server), not 5",
            "sip.max_connections_per_network: must be between 1 and 40 (the federation profile allows at most 40 connections to one peer network), not 41",
            "federation.default_policy: must be \"allow\" or \"deny\", not \"maybe\"",
            "federation.partners[0].edge: \"sip.contoso.com\" is not host:port (e.g. \"sip.contoso.com:5061\" or \"[2001:db8::1]:5061\")",
            "federation.partners[1].domain: \"contoso.com\" is already listed at federation.partners[0]",
            "federation.partners[2].extra: unknown key",
            "federation.partners[2].domain: required key is missing",
            "presence.icon_url: must be an https:// URL, not \"http://example.org/i.png\"",
            "presence.notify_min_interval_secs: must be between 1 and 300, not 0",
            "presence.restore_rate: must be between 10 and 100000, not 5",
            "logging.level: \"info,foo=verbose\" is not a valid filter: error parsing level filter: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5",
            "logging.format: must be \"human\" or \"json\", not \"xml\"",
        ]
    );
}

#[test]
fn gateway_mode_needs_one_component_domain_disjoint_from_local_domains() {
    let text = MINIMAL.replace(
        "component_domains = [\"lcs.example.org\"]",
        "component_domains = [\"lcs.example.org\", \"example.org\"]",
    );
    assert_eq!(
        problems(&text),
        [
            "xmpp.component_domains: gateway mode needs exactly one component domain, found 2",
            "xmpp.component_domains[1]: \"example.org\" is also in xmpp.local_domains; a component domain cannot be a local domain",
        ]
    );
    let direct = MINIMAL.replace(
        "component_domains = [\"lcs.example.org\"]",
        "mode = \"direct\"\ncomponent_domains = [\"contoso.com\", \"Fabrikam.com\"]",
    );
    let c = load_ok(&direct);
    assert_eq!(c.xmpp.mode, AddressMode::Direct);
    assert_eq!(c.xmpp.component_domains, ["contoso.com", "fabrikam.com"]);
    let empty = MINIMAL.replace("[\"lcs.example.org\"]", "[]");
    assert_eq!(
        problems(&empty),
        ["xmpp.component_domains: must list at least one domain"]
    );
}

#[test]
fn secret_and_secret_file() {
    let both = MINIMAL.replace("secret = \"s3cret\"", "secret = \"a\"\nsecret_file = \"s\"");
    assert_eq!(
        problems(&both),
        ["xmpp.secret: set either secret or secret_file, not both"]
    );
    let empty = MINIMAL.replace("secret = \"s3cret\"", "secret = \"\"");
    assert_eq!(problems(&empty), ["xmpp.secret: must not be empty"]);

    let dir = tempfile::tempdir().expect("tempdir");
    let text = MINIMAL.replace("secret = \"s3cret\"", "secret_file = \"secret.txt\"");
    let path = write(dir.path(), "c.toml", &text);
    let secret_path = dir.path().join("secret.txt");
    let got = load_with_env(&path, no_env()).expect_err("no secret file");
    assert_eq!(
        got[0].to_string(),
        format!("xmpp.secret_file: cannot read {secret_path:?}: file not found")
    );
    write(dir.path(), "secret.txt", "\n");
    let got = load_with_env(&path, no_env()).expect_err("empty secret file");
    assert_eq!(
        got[0].to_string(),
        format!("xmpp.secret_file: {secret_path:?} is empty")
    );
    write(dir.path(), "secret.txt", "from file\n");
    let c = load_with_env(&path, no_env()).expect("loads");
    assert_eq!(c.xmpp.secret.expose(), "from file");
}

#[test]
fn federation_partners() {
    let text = minimal_plus(
        r#"
[federation]
default_policy = "deny"
[[federation.partners]]
domain = "Contoso.com"
edge = "SIP.contoso.com:5061"
[[federation.partners]]
domain = "fabrikam.com"
policy = "block"
"#,
    );
    let c = load_ok(&text);
    let f = &c.federation;
    assert_eq!(f.default_policy, DefaultPolicy::Deny);
    assert!(!f.discovery_enabled());
    assert_eq!(f.partners[0].domain, "contoso.com");
    assert_eq!(
        f.partners[0]
            .edge
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("sip.contoso.com:5061")
    );
    assert!(f.is_allowed("CONTOSO.com"));
    assert!(!f.is_allowed("fabrikam.com"));
    assert!(!f.is_allowed("other.com"));
    assert_eq!(f.partners[1].policy, PartnerPolicy::Block);

    let text = minimal_plus(
        r#"
[[federation.partners]]
domain = "contoso.com"
[[federation.partners]]
domain = "CONTOSO.COM"
[[federation.partners]]
domain = "example.org"
[[federation.partners]]
domain = "lcs.example.org"
"#,
    );
    assert_eq!(
        problems(&text),
        [
            "federation.partners[1].domain: \"contoso.com\" is already listed at federation.partners[0]",
        ]
    );
    let text = minimal_plus(
        r#"
[[federation.partners]]
domain = "example.org"
[[federation.partners]]
domain = "lcs.example.org"
"#,
    );
    assert_eq!(
        problems(&text),
        [
            "federation.partners[0].domain: \"example.org\" is a local domain (xmpp.local_domains), not a federation partner",
            "federation.partners[1].domain: \"lcs.example.org\" is the gateway's component domain, not a federation partner",
        ]
    );
}

#[test]
fn sip_dns_servers() {
    let text = MINIMAL.replace(
        "[sip]\n",
        "[sip]\ndns_servers = [\"192.0.2.53:53\", \" [2001:db8::53]:5353 \"]\n",
    );
    let c = load_ok(&text);
    let got: Vec<String> = c.sip.dns_servers.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["192.0.2.53:53", "[2001:db8::53]:5353"]);

    // A comma-separated list from the environment, and an empty one (the system resolver).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "c.toml", MINIMAL);
    let c = load_with_env(
        &path,
        env(&[("LCS_BRIDGE__SIP__DNS_SERVERS", "9.9.9.9:53, [::1]:5353")]),
    )
    .expect("loads");
    let got: Vec<String> = c.sip.dns_servers.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["9.9.9.9:53", "[::1]:5353"]);
    let path = write(dir.path(), "d.toml", &text);
    let c = load_with_env(&path, env(&[("LCS_BRIDGE__SIP__DNS_SERVERS", "")])).expect("loads");
    assert!(c.sip.dns_servers.is_empty());

    let bad = MINIMAL.replace(
        "[sip]\n",
        "[sip]\ndns_servers = [\"192.0.2.53:0\", \"192.0.2.53\", \"ns.example.org:53\", \"[::1]:53\", \"[::1]:53\", 53]\n",
    );
    assert_eq!(
        problems(&bad),
        ["sip.dns_servers[5]: expected a string, found integer 53"]
    );
    let bad = bad.replace(", 53]", "]");
    assert_eq!(
        problems(&bad),
        [
            "sip.dns_servers[0]: port must be 1–65535, not 0 in \"192.0.2.53:0\"",
            "sip.dns_servers[1]: \"192.0.2.53\" has no port (did you mean \"192.0.2.53:53\"?)",
            "sip.dns_servers[2]: \"ns.example.org:53\" is not a DNS server address (IP:port, e.g. \"192.0.2.53:53\" or \"[2001:db8::53]:53\")",
            "sip.dns_servers[4]: \"[::1]:53\" is already listed at sip.dns_servers[3]",
        ]
    );
    assert_eq!(
        problems_with_env(MINIMAL, env(&[("LCS_BRIDGE__SIP__DNS_SERVERS", "::1")])),
        [
            "sip.dns_servers[0]: \"::1\" has no port (did you mean \"[::1]:53\"?) (set by LCS_BRIDGE__SIP__DNS_SERVERS)"
        ]
    );
}

/// MINIMAL with `keys` at the start of `[sip]`.
fn sip_plus(keys: &str) -> String {
    MINIMAL.replace("[sip]\n", &format!("[sip]\n{keys}\n"))
}

#[test]
fn sip_timeouts() {
    let c = load_ok(&sip_plus(
        "connect_timeout_secs = 1\nhandshake_timeout_secs = 120\nidle_timeout_secs = 86400\nkeepalive_interval_secs = 3600\nmessage_timeout_secs = 300",
    ));
    assert_eq!(c.sip.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.sip.handshake_timeout, Duration::from_secs(120));
    assert_eq!(c.sip.idle_timeout, Duration::from_secs(86_400));
    assert_eq!(c.sip.keepalive_interval, Some(Duration::from_secs(3600)));
    assert_eq!(c.sip.message_timeout, Duration::from_secs(300));
    // 0 turns the keep-alive off, whatever the idle timeout.
    let c = load_ok(&sip_plus(
        "keepalive_interval_secs = 0\nidle_timeout_secs = 30",
    ));
    assert_eq!(c.sip.keepalive_interval, None);
    assert_eq!(c.sip.idle_timeout, Duration::from_secs(30));

    assert_eq!(
        problems(&sip_plus(
            "connect_timeout_secs = 0\nhandshake_timeout_secs = 121\nidle_timeout_secs = 29\nkeepalive_interval_secs = 4\nmessage_timeout_secs = -1"
        )),
        [
            "sip.connect_timeout_secs: must be between 1 and 120, not 0",
            "sip.handshake_timeout_secs: must be between 1 and 120, not 121",
            "sip.idle_timeout_secs: must be between 30 and 86400, not 29",
            "sip.keepalive_interval_secs: must be 0 (off) or between 5 and 3600, not 4",
            "sip.message_timeout_secs: must be between 1 and 300, not -1",
        ]
    );
    assert_eq!(
        problems(&sip_plus("keepalive_interval_secs = 3601")),
        ["sip.keepalive_interval_secs: must be 0 (off) or between 5 and 3600, not 3601"]
    );
    assert_eq!(
        problems(&sip_plus(
            "idle_timeout_secs = 86401\nmessage_timeout_secs = \"soon\""
        )),
        [
            "sip.message_timeout_secs: expected an integer, found string \"soon\"",
            "sip.idle_timeout_secs: must be between 30 and 86400, not 86401",
        ]
    );
}

#[test]
fn keepalive_interval_must_be_less_than_idle_timeout() {
    let rule = "sip.keepalive_interval_secs: must be less than sip.idle_timeout_secs (60) or 0 (off), not 60";
    assert_eq!(problems(&sip_plus("idle_timeout_secs = 60")), [rule]);
    assert_eq!(
        problems(&sip_plus(
            "idle_timeout_secs = 60\nkeepalive_interval_secs = 600"
        )),
        [
            "sip.keepalive_interval_secs: must be less than sip.idle_timeout_secs (60) or 0 (off), not 600"
        ]
    );
    assert_eq!(
        problems(&sip_plus(
            "idle_timeout_secs = 60\nkeepalive_interval_secs = 59"
        )),
        Vec::<String>::new()
    );
    // From the environment, the problem names the variable that set the value it is about.
    assert_eq!(
        problems_with_env(
            MINIMAL,
            env(&[
                ("LCS_BRIDGE__SIP__IDLE_TIMEOUT_SECS", "45"),
                ("LCS_BRIDGE__SIP__KEEPALIVE_INTERVAL_SECS", "45"),
            ])
        ),
        [
            "sip.keepalive_interval_secs: must be less than sip.idle_timeout_secs (45) or 0 (off), not 45 (set by LCS_BRIDGE__SIP__KEEPALIVE_INTERVAL_SECS)"
        ]
    );
    // Not checked against an idle timeout that is itself wrong (one problem, not two).
    assert_eq!(
        problems(&sip_plus(
            "idle_timeout_secs = 10\nkeepalive_interval_secs = 20"
        )),
        ["sip.idle_timeout_secs: must be between 30 and 86400, not 10"]
    );
    // This rule and the other [sip] rule are both reported in one run.
    assert_eq!(
        problems(&sip_plus(
            "idle_timeout_secs = 60\nmax_connections_per_edge = 4\nmax_connections_per_network = 3"
        )),
        [
            "sip.max_connections_per_network: must be at least sip.max_connections_per_edge (4), not 3",
            rule,
        ]
    );
}

#[test]
fn federation_discovered_rate() {
    let c = load_ok(&minimal_plus("[federation]\ndiscovered_rate = 10000"));
    assert_eq!(c.federation.discovered_rate, 10_000);
    let c = load_ok(&minimal_plus("[federation]\ndiscovered_rate = 1"));
    assert_eq!(c.federation.discovered_rate, 1);
    assert_eq!(
        problems(&minimal_plus("[federation]\ndiscovered_rate = 0")),
        ["federation.discovered_rate: must be between 1 and 10000 requests per second, not 0"]
    );
    assert_eq!(
        problems_with_env(
            MINIMAL,
            env(&[("LCS_BRIDGE__FEDERATION__DISCOVERED_RATE", "10001")])
        ),
        [
            "federation.discovered_rate: must be between 1 and 10000 requests per second, not 10001 (set by LCS_BRIDGE__FEDERATION__DISCOVERED_RATE)"
        ]
    );
    assert_eq!(
        problems(&minimal_plus("[federation]\ndiscovered_rate = 2.5")),
        ["federation.discovered_rate: expected an integer, found float 2.5"]
    );
}

#[test]
fn federation_verification_level() {
    let text = minimal_plus(
        r#"
[federation]
verification_level = "Unverified"
[[federation.partners]]
domain = "contoso.com"
verification_level = "verified"
[[federation.partners]]
domain = "fabrikam.com"
verification_level = "omit"
[[federation.partners]]
domain = "litware.com"
"#,
    );
    let c = load_ok(&text);
    let f = &c.federation;
    assert_eq!(f.verification_level, VerificationLevel::Unverified);
    assert_eq!(
        f.partners[0].verification_level,
        Some(VerificationLevel::Verified)
    );
    assert_eq!(f.partners[2].verification_level, None);
    assert_eq!(
        f.verification_level("Contoso.COM"),
        VerificationLevel::Verified
    );
    assert_eq!(
        f.verification_level("fabrikam.com"),
        VerificationLevel::Omit
    );
    // Listed without a level, and not listed: the section's.
    assert_eq!(
        f.verification_level("litware.com"),
        VerificationLevel::Unverified
    );
    assert_eq!(
        f.verification_level("other.example"),
        VerificationLevel::Unverified
    );

    assert_eq!(
        VerificationLevel::Verified.header_value(),
        Some("ms-source-verification-level=verified")
    );
    assert_eq!(
        VerificationLevel::Unverified.header_value(),
        Some("ms-source-verification-level=unverified")
    );
    assert_eq!(VerificationLevel::Omit.header_value(), None);

    let text = minimal_plus(
        r#"
[federation]
verification_level = "trusted"
[[federation.partners]]
domain = "contoso.com"
verification_level = "none"
[[federation.partners]]
domain = "fabrikam.com"
verification_levle = "omit"
"#,
    );
    assert_eq!(
        problems(&text),
        [
            "federation.verification_level: must be \"verified\", \"unverified\" or \"omit\", not \"trusted\"",
            "federation.partners[0].verification_level: must be \"verified\", \"unverified\" or \"omit\", not \"none\"",
            "federation.partners[1].verification_levle: unknown key (did you mean \"verification_level\"?)",
        ]
    );
    assert_eq!(
        problems_with_env(
            MINIMAL,
            env(&[("LCS_BRIDGE__FEDERATION__VERIFICATION_LEVEL", "yes")])
        ),
        [
            "federation.verification_level: must be \"verified\", \"unverified\" or \"omit\", not \"yes\" (set by LCS_BRIDGE__FEDERATION__VERIFICATION_LEVEL)"
        ]
    );
}

/// The examples' placeholder secret loads, with a warning naming the key; any other does not warn.
#[test]
fn example_placeholder_secret_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (secret, warned) in [("change-me", true), ("s3cr3t-of-our-own", false)] {
        let text = MINIMAL.replacen("secret = \"s3cret\"", &format!("secret = {secret:?}"), 1);
        let path = write(dir.path(), "c.toml", &text);
        let mut diag = Diag::default();
        let parts = sections::load_parts(&path, no_env(), &mut diag);
        assert!(parts.assemble().is_some(), "{secret}");
        let (problems, warnings) = diag.finish();
        assert!(problems.is_empty(), "{problems:?}");
        let on_secret: Vec<String> = warnings
            .iter()
            .map(ToString::to_string)
            .filter(|w| w.starts_with("xmpp.secret: is the example's placeholder"))
            .collect();
        assert_eq!(
            on_secret.len(),
            usize::from(warned),
            "{secret}: {warnings:?}"
        );
    }
}

#[test]
fn warnings_do_not_fail_loading() {
    let text = minimal_plus(
        r#"
[federation]
default_policy = "deny"
[[federation.partners]]
domain = "spam.example"
policy = "block"
edge = "192.0.2.1:5061"
verification_level = "omit"
[logging]
level = "infoo"
"#,
    )
    .replace("[xmpp]", "[xmpp]\nhost = \"192.0.2.7\"");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "c.toml", &text);
    let mut diag = Diag::default();
    let parts = sections::load_parts(&path, no_env(), &mut diag);
    assert!(parts.assemble().is_some());
    let (problems, warnings) = diag.finish();
    assert!(problems.is_empty(), "{problems:?}");
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "xmpp.host: the component protocol (XEP-0114) is not encrypted: keep it on loopback or a private network",
            "federation.partners[0].edge: ignored: this partner is blocked",
            "federation.partners[0].verification_level: ignored: this partner is blocked",
            "federation.default_policy: \"deny\" with no partner allowed: the bridge will federate with nobody",
            "logging.level: \"infoo\" is not a level: it enables every level for the target \"infoo\" (did you mean \"info\"?)",
        ]
    );
}

#[test]
fn presence_and_logging_values() {
    let text = minimal_plus(
        r#"
[presence]
display_name_suffix = " (XMPP)"
icon_url = "https://example.org/brand16.png"
notify_min_interval_secs = 10
subscription_expires_secs = 600
restore_rate = 20000
[logging]
level = "warn,lcs_bridge::sip=debug"
format = "JSON"
"#,
    );
    let c = load_ok(&text);
    assert_eq!(c.presence.display_name_suffix.as_deref(), Some(" (XMPP)"));
    assert_eq!(
        c.presence.icon_url.as_deref(),
        Some("https://example.org/brand16.png")
    );
    assert_eq!(c.presence.notify_min_interval, Duration::from_secs(10));
    assert_eq!(c.presence.subscription_expires, Duration::from_secs(600));
    assert_eq!(c.presence.restore_rate, 20_000);
    assert_eq!(c.logging.format, LogFormat::Json);
}

#[test]
fn xmpp_queue_capacity_and_startup_timeout() {
    let text = MINIMAL.replace(
        "[xmpp]\n",
        "[xmpp]\nqueue_capacity = 1000000\nstartup_timeout_secs = 600\n",
    );
    let c = load_ok(&text);
    assert_eq!(c.xmpp.queue_capacity, 1_000_000);
    assert_eq!(c.xmpp.startup_timeout, Duration::from_secs(600));
    assert_eq!(
        crate::xmpp::link::LinkSettings::from_config(&c.xmpp).queue_capacity,
        1_000_000
    );
    let text = MINIMAL.replace(
        "[xmpp]\n",
        "[xmpp]\nqueue_capacity = 16\nstartup_timeout_secs = 1\n",
    );
    let c = load_ok(&text);
    assert_eq!(c.xmpp.queue_capacity, 16);
    assert_eq!(c.xmpp.startup_timeout, Duration::from_secs(1));

    let text = MINIMAL.replace(
        "[xmpp]\n",
        "[xmpp]\nqueue_capacity = 15\nstartup_timeout_secs = 0\n",
    );
    assert_eq!(
        problems(&text),
        [
            "xmpp.queue_capacity: must be between 16 and 1000000, not 15",
            "xmpp.startup_timeout_secs: must be between 1 and 600, not 0",
        ]
    );
    assert_eq!(
        problems_with_env(
            MINIMAL,
            env(&[
                ("LCS_BRIDGE__XMPP__QUEUE_CAPACITY", "1000001"),
                ("LCS_BRIDGE__XMPP__STARTUP_TIMEOUT_SECS", "601"),
            ])
        ),
        [
            "xmpp.queue_capacity: must be between 16 and 1000000, not 1000001 (set by LCS_BRIDGE__XMPP__QUEUE_CAPACITY)",
            "xmpp.startup_timeout_secs: must be between 1 and 600, not 601 (set by LCS_BRIDGE__XMPP__STARTUP_TIMEOUT_SECS)",
        ]
    );
    let text = MINIMAL.replace("[xmpp]\n", "[xmpp]\nqueue_capacty = 64\n");
    assert_eq!(
        problems(&text),
        ["xmpp.queue_capacty: unknown key (did you mean \"queue_capacity\"?)"]
    );
}

#[test]
fn im_values() {
    let c = load_ok(&minimal_plus(
        "[im]\nsession_idle_secs = 10\nmax_message_bytes = 65536\nmax_queued_messages = 10000\ndialog_max_age_secs = 86340\nmax_sessions = 1000000\nmax_sessions_per_domain = 1000000\nmax_sessions_per_partner = 1000000\nmax_sessions_per_user = 100000",
    ));
    assert_eq!(
        c.im,
        ImConfig {
            session_idle: Duration::from_secs(10),
            max_message_bytes: 65536,
            max_queued_messages: 10_000,
            dialog_max_age: Duration::from_secs(86_340),
            max_sessions: 1_000_000,
            max_sessions_per_domain: 1_000_000,
            max_sessions_per_partner: 1_000_000,
            max_sessions_per_user: 100_000,
        }
    );
    let c = load_ok(&minimal_plus(
        "[im]\nsession_idle_secs = 86400\nmax_message_bytes = 256\nmax_queued_messages = 1\ndialog_max_age_secs = 3600\nmax_sessions = 1\nmax_sessions_per_domain = 1\nmax_sessions_per_partner = 1\nmax_sessions_per_user = 1",
    ));
    assert_eq!(
        c.im,
        ImConfig {
            session_idle: Duration::from_secs(86_400),
            max_message_bytes: 256,
            max_queued_messages: 1,
            dialog_max_age: Duration::from_secs(3600),
            max_sessions: 1,
            max_sessions_per_domain: 1,
            max_sessions_per_partner: 1,
            max_sessions_per_user: 1,
        }
    );
    // An empty [im] section is all defaults, like a missing one.
    assert_eq!(load_ok(&minimal_plus("[im]")).im, load_ok(MINIMAL).im);

    assert_eq!(
        problems(&minimal_plus(
            "[im]\nsession_idle_secs = 9\nmax_message_bytes = 255\nmax_queued_messages = 0\ndialog_max_age_secs = 3599\nmax_sessions = 0\nmax_sessions_per_domain = 0\nmax_sessions_per_partner = 0\nmax_sessions_per_user = 0",
        )),
        [
            "im.session_idle_secs: must be between 10 and 86400, not 9",
            "im.max_message_bytes: must be between 256 and 65536, not 255",
            "im.max_queued_messages: must be between 1 and 10000, not 0",
            "im.dialog_max_age_secs: must be between 3600 and 86340 (LCS signs dialog headers for 24 hours), not 3599",
            "im.max_sessions: must be between 1 and 1000000, not 0",
            "im.max_sessions_per_domain: must be between 1 and 1000000, not 0",
            "im.max_sessions_per_partner: must be between 1 and 1000000, not 0",
            "im.max_sessions_per_user: must be between 1 and 100000, not 0",
        ]
    );
    assert_eq!(
        problems(&minimal_plus(
            "[im]\nsession_idle_secs = 86401\nmax_message_bytes = 65537\nmax_queued_messages = 10001\ndialog_max_age_secs = 86400\nmax_sessions = 1000001\nmax_sessions_per_user = 100001",
        )),
        [
            "im.session_idle_secs: must be between 10 and 86400, not 86401",
            "im.max_message_bytes: must be between 256 and 65536, not 65537",
            "im.max_queued_messages: must be between 1 and 10000, not 10001",
            "im.dialog_max_age_secs: must be between 3600 and 86340 (LCS signs dialog headers for 24 hours), not 86400",
            "im.max_sessions: must be between 1 and 1000000, not 1000001",
            "im.max_sessions_per_user: must be between 1 and 100000, not 100001",
        ]
    );
    assert_eq!(
        problems_with_env(
            MINIMAL,
            env(&[("LCS_BRIDGE__IM__DIALOG_MAX_AGE_SECS", "86400")])
        ),
        [
            "im.dialog_max_age_secs: must be between 3600 and 86340 (LCS signs dialog headers for 24 hours), not 86400 (set by LCS_BRIDGE__IM__DIALOG_MAX_AGE_SECS)"
        ]
    );
    assert_eq!(
        problems(&minimal_plus(
            "[im]\nsesion_idle_secs = 60\nmax_message_bytes = \"16k\""
        )),
        [
            "im.max_message_bytes: expected an integer, found string \"16k\"",
            "im.sesion_idle_secs: unknown key (did you mean \"session_idle_secs\"?)",
        ]
    );
    assert_eq!(
        problems(&minimal_plus("[IM]\nsession_idle_secs = 60")),
        ["IM: unknown key (did you mean \"im\"?)"]
    );
    assert_eq!(
        problems(&format!("im = 3\n{MINIMAL}")),
        ["im: expected a table, found integer 3"]
    );
}

#[test]
fn type_errors_name_the_key_and_list_items() {
    let text = MINIMAL.replace("[\"example.org\"]", "[\"example.org\", 7]")
        + "\n[storage]\npath = []\n[presence]\nsubscription_expires_secs = 1.5\n";
    assert_eq!(
        problems(&text),
        [
            "xmpp.local_domains[1]: expected a string, found integer 7",
            "presence.subscription_expires_secs: expected an integer, found float 1.5",
            "storage.path: expected a string, found an array",
        ]
    );
    let text = format!("federation = 3\n{MINIMAL}");
    assert_eq!(
        problems(&text),
        ["federation: expected a table, found integer 3"]
    );
}

#[test]
fn problem_prints_on_one_line() {
    let p = Problem::new("a.b", "first\nsecond\r\n third");
    assert_eq!(p.to_string(), "a.b: first second third");
}

#[test]
fn sip_resource_limits() {
    let c = load_ok(&sip_plus(
        "max_dns_lookups = 10000\nmax_dns_lookups_per_peer = 1\npool_idle_secs = 1\nmax_handshakes = 7\nmax_connections_per_address = 1\nmax_connections_per_identity = 2\nmax_connections = 3\nmax_write_backlog_bytes = 65536",
    ));
    assert_eq!(
        (
            c.sip.edge.max_dns_lookups,
            c.sip.edge.max_dns_lookups_per_peer,
            c.sip.edge.pool_idle,
            c.sip.edge.max_handshakes,
            c.sip.edge.max_connections_per_address,
            c.sip.edge.max_connections_per_identity,
            c.sip.edge.max_connections,
            c.sip.edge.max_write_backlog_bytes
        ),
        (10_000, 1, Duration::from_secs(1), 7, 1, 2, 3, 65536)
    );
    // The key it replaced before any release is unknown.
    assert_eq!(
        problems(&sip_plus("max_dns_lookups_per_connection = 8")),
        ["sip.max_dns_lookups_per_connection: unknown key"]
    );
    assert_eq!(
        problems(&sip_plus(
            "max_dns_lookups = 0\nmax_dns_lookups_per_peer = 10001\npool_idle_secs = 86401\nmax_handshakes = 0\nmax_connections_per_address = 0\nmax_connections_per_identity = -1\nmax_connections = 1000001\nmax_write_backlog_bytes = 65535"
        )),
        [
            "sip.max_dns_lookups: must be between 2 and 10000, not 0",
            "sip.max_dns_lookups_per_peer: must be between 1 and 10000, not 10001",
            "sip.pool_idle_secs: must be between 1 and 86400, not 86401",
            "sip.max_handshakes: must be between 1 and 1000000, not 0",
            "sip.max_connections_per_address: must be between 1 and 1000000, not 0",
            "sip.max_connections_per_identity: must be between 1 and 1000000, not -1",
            "sip.max_connections: must be between 1 and 1000000, not 1000001",
            "sip.max_write_backlog_bytes: must be between 65536 and 268435456, not 65535",
        ]
    );
    // The rules between them.
    assert_eq!(
        problems(&sip_plus(
            "max_dns_lookups = 5\nmax_dns_lookups_per_peer = 4\nmax_connections = 10\nmax_connections_per_address = 11\nmax_connections_per_identity = 12\nmax_header_bytes = 32768\nmax_write_backlog_bytes = 131071"
        )),
        [
            "sip.max_dns_lookups_per_peer: must be at most half of sip.max_dns_lookups (2), not 4",
            "sip.max_connections_per_address: must be at most sip.max_connections (10), not 11",
            "sip.max_connections_per_identity: must be at most sip.max_connections (10), not 12",
            "sip.max_write_backlog_bytes: must be at least 4 × sip.max_header_bytes (131072), not 131071",
        ]
    );
    // From the environment, named as such.
    assert_eq!(
        problems_with_env(
            MINIMAL,
            vec![("LCS_BRIDGE__SIP__MAX_CONNECTIONS".into(), "0".into())]
        ),
        [
            "sip.max_connections: must be between 1 and 1000000, not 0 (set by LCS_BRIDGE__SIP__MAX_CONNECTIONS)"
        ]
    );
}

#[test]
fn admin_metrics_listen() {
    // Default: loopback, port 9464.
    let c = load_ok(MINIMAL);
    assert_eq!(
        c.admin.metrics_listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    // "" turns it off.
    let c = load_ok(&minimal_plus("[admin]\nmetrics_listen = \"\"\n"));
    assert_eq!(c.admin.metrics_listen, None);
    let c = load_ok(&minimal_plus("[admin]\nmetrics_listen = \"[::1]:9000\"\n"));
    assert_eq!(
        c.admin.metrics_listen,
        Some("[::1]:9000".parse().expect("addr"))
    );
    assert_eq!(
        problems(&minimal_plus(
            "[admin]\nmetrics_listen = \"localhost:9464\"\nport = 1\n"
        )),
        [
            "admin.port: unknown key",
            "admin.metrics_listen: \"localhost:9464\" is not a socket address (IP:port, e.g. \"0.0.0.0:5061\" or \"[::]:5061\")",
        ]
    );
    // Not loopback: a warning (no authentication on the listener).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "c.toml",
        &minimal_plus("[admin]\nmetrics_listen = \"0.0.0.0:9464\"\n"),
    );
    let mut diag = Diag::default();
    let parts = sections::load_parts(&path, no_env(), &mut diag);
    assert!(parts.assemble().is_some());
    let (problems, warnings) = diag.finish();
    assert!(problems.is_empty(), "{problems:?}");
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "admin.metrics_listen: 0.0.0.0:9464 is not a loopback address: /metrics, /health and /ready have no authentication, so anyone who reaches it reads the partner domains and traffic counts (firewall it, or use 127.0.0.1)"
        ]
    );
}

/// `[admin]`: bare JIDs of local domains, once each (lowercase domains); the socket defaults
/// to `admin.sock` in `storage.path` and must fit a Unix socket address.
#[test]
fn admin_jids_and_socket() {
    let cfg = load_ok(&minimal_plus(
        "\n[admin]\njids = [\"boss@Example.ORG\", \"ops@example.org\"]\n",
    ));
    assert_eq!(cfg.admin.jids, ["boss@example.org", "ops@example.org"]);
    assert_eq!(cfg.admin.socket, cfg.storage.path.join("admin.sock"));
    let cfg = load_ok(&minimal_plus(
        "\n[admin]\nsocket = \"/run/lcs-bridge/admin.sock\"\n",
    ));
    assert_eq!(cfg.admin.socket, Path::new("/run/lcs-bridge/admin.sock"));
    assert!(load_ok(MINIMAL).admin.jids.is_empty());
    for (jids, reason) in [
        ("[\"example.org\"]", "is not a bare JID"),
        ("[\"boss@example.org/pc\"]", "is not a bare JID"),
        (
            "[\"boss@elsewhere.net\"]",
            "is not one of xmpp.local_domains",
        ),
        (
            "[\"boss@example.org\", \"boss@EXAMPLE.org\"]",
            "is listed twice",
        ),
    ] {
        let p = problems(&minimal_plus(&format!("\n[admin]\njids = {jids}\n")));
        assert!(
            p.iter()
                .any(|l| l.starts_with("admin.jids: ") && l.contains(reason)),
            "{jids}: {p:?}"
        );
    }
    let long = format!("/{}/admin.sock", "d".repeat(120));
    let p = problems(&minimal_plus(&format!("\n[admin]\nsocket = \"{long}\"\n")));
    assert!(
        p.iter()
            .any(|l| l.starts_with("admin.socket: ") && l.contains("107 bytes")),
        "{p:?}"
    );
    let p = problems(&minimal_plus("\n[admin]\njid = []\n"));
    assert!(p.iter().any(|l| l.contains("admin.jid")), "{p:?}");
}

/// `[ha]`: optional; the node's name (default: none, the host name at run time) is one
/// printable word; the lease's time to live is 2–60 s.
#[test]
fn the_ha_section_names_the_node_and_bounds_the_lease() {
    let cfg = load_ok(&minimal_plus(""));
    assert_eq!(cfg.ha.node, None);
    assert_eq!(cfg.ha.lease_ttl, std::time::Duration::from_secs(6));
    let cfg = load_ok(&minimal_plus(
        "[ha]\nnode = \"bridge-a\"\nlease_ttl_secs = 10\n",
    ));
    assert_eq!(cfg.ha.node.as_deref(), Some("bridge-a"));
    assert_eq!(cfg.ha.lease_ttl, std::time::Duration::from_secs(10));
    for bad in ["\"\"", "\"two words\"", "\"a\\u0007b\""] {
        let p = problems(&minimal_plus(&format!("[ha]\nnode = {bad}\n")));
        assert!(
            p.len() == 1 && p[0].contains("ha.node") && p[0].contains("1-64 characters"),
            "{bad}: {p:?}"
        );
    }
    // With the embedded store there is no lease: the keys are named in a warning.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "c.toml",
        &minimal_plus("[ha]\nnode = \"bridge-a\"\n"),
    );
    let report = crate::config::check(
        &path,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.key == "ha.node" && w.reason.contains("backend = \"postgres\"")),
        "{:?}",
        report.warnings
    );
    let p = problems(&minimal_plus("[ha]\nlease_ttl_secs = 1\n"));
    assert!(
        p.len() == 1 && p[0].contains("ha.lease_ttl_secs") && p[0].contains("2"),
        "{p:?}"
    );
}
