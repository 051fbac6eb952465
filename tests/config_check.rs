//! `check-config`'s offline checks against real certificate files: the example configuration
//! with certificates from `tests/make-test-certs.sh`, and rcgen-made certificates for each
//! failure (misspelt key, missing certificate file, key not matching its certificate, expired
//! certificate, …), each asserting the exact problem line.

#![allow(clippy::unwrap_used)] // test fixtures: a failure to build one is a test failure
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use lcs_bridge::config::{CheckReport, check_with_env};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A time from seconds since the Unix epoch.
fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn lines(v: &[lcs_bridge::config::Problem]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

fn check(path: &Path) -> CheckReport {
    check_with_env(path, SystemTime::now(), no_env())
}

#[cfg(unix)]
fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[cfg(not(unix))]
fn private(_path: &Path) {}

/// How the edge's leaf certificate is made.
struct Leaf {
    names: Vec<&'static str>,
    cn: &'static str,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl Default for Leaf {
    fn default() -> Self {
        Leaf {
            names: vec!["sip.example.org", "example.org", "localhost"],
            cn: "sip.example.org",
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: at(1577836800), // 2020-01-01 0:00 UTC
            not_after: at(3786912000),  // 2090-01-01 0:00 UTC
        }
    }
}

/// A directory laid out like the repository: `config/` with the configuration and `certs/`,
/// `mappings/` beside it.
struct Fixture {
    dir: tempfile::TempDir,
}

const CONFIG: &str = r#"
[xmpp]
secret = "s3cret"
component_domains = ["lcs.example.org"]
local_domains = ["example.org"]

[sip]
public_fqdn = "sip.example.org"
cert_chain = "certs/edge.crt"
private_key = "certs/edge.key"
ca_bundle = "certs/ca.crt"

[storage]
path = "data"

[mappings]
path = "../mappings"
"#;

impl Fixture {
    fn new(leaf: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        std::fs::create_dir_all(f.certs()).unwrap();
        std::fs::create_dir_all(f.dir.path().join("mappings")).unwrap();

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "lcs-bridge test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = leaf.names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, leaf.cn);
        params.extended_key_usages = leaf.ekus.clone();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        let cert = params.signed_by(&key, &issuer).unwrap();

        std::fs::write(f.certs().join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(f.certs().join("edge.crt"), cert.pem()).unwrap();
        std::fs::write(f.certs().join("edge.key"), key.serialize_pem()).unwrap();
        private(&f.certs().join("edge.key"));
        f.write_config(CONFIG);
        f
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn certs(&self) -> PathBuf {
        self.config_dir().join("certs")
    }

    fn config(&self) -> PathBuf {
        self.config_dir().join("lcs-bridge.toml")
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// Runs the check and returns (problems, warnings) as lines.
    fn check(&self) -> (Vec<String>, Vec<String>) {
        let report = check(&self.config());
        (lines(&report.problems), lines(&report.warnings))
    }
}

#[test]
fn valid_configuration_passes() {
    let f = Fixture::new(&Leaf::default());
    let report = check(&f.config());
    assert_eq!(lines(&report.problems), Vec::<String>::new());
    assert_eq!(lines(&report.warnings), Vec::<String>::new());
    assert!(report.is_ok());
    let config = report.config.expect("config parsed");
    assert_eq!(config.mappings_dir(), f.config_dir().join("../mappings"));
    assert_eq!(config.sip.cert_chain, f.certs().join("edge.crt"));
}

#[test]
fn example_configuration_passes_with_certificates_from_the_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    let examples = [
        "lcs-bridge.example.toml",
        "prosody.example.toml",
        "ejabberd.example.toml",
    ];
    for name in examples {
        std::fs::copy(root.join("config").join(name), config_dir.join(name)).unwrap();
    }

    let status = Command::new("sh")
        .arg(root.join("tests/make-test-certs.sh"))
        .arg(config_dir.join("certs"))
        .status()
        .expect("run tests/make-test-certs.sh (needs sh and openssl)");
    assert!(status.success(), "make-test-certs.sh failed: {status}");

    for name in examples {
        let report = check(&config_dir.join(name));
        assert_eq!(lines(&report.problems), Vec::<String>::new(), "{name}");
        assert_eq!(lines(&report.warnings), Vec::<String>::new(), "{name}");
    }

    // Idempotent: a second run keeps the same certificate.
    let before = std::fs::read(config_dir.join("certs/edge.crt")).unwrap();
    let status = Command::new("sh")
        .arg(root.join("tests/make-test-certs.sh"))
        .arg(config_dir.join("certs"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(config_dir.join("certs/edge.crt")).unwrap(),
        before
    );
}

#[test]
fn misspelt_key() {
    let f = Fixture::new(&Leaf::default());
    f.write_config(&CONFIG.replace("secret =", "scret ="));
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        ["xmpp.scret: unknown key (did you mean \"secret\"?)"]
    );
}

#[test]
fn missing_certificate_file() {
    let f = Fixture::new(&Leaf::default());
    std::fs::remove_file(f.certs().join("edge.crt")).unwrap();
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [format!(
            "sip.cert_chain: cannot read {:?}: file not found",
            f.certs().join("edge.crt")
        )]
    );
}

#[test]
fn key_does_not_match_certificate() {
    let f = Fixture::new(&Leaf::default());
    std::fs::write(
        f.certs().join("edge.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [format!(
            "sip.private_key: key does not match certificate {:?}",
            f.certs().join("edge.crt")
        )]
    );
}

#[test]
fn expired_certificate() {
    let f = Fixture::new(&Leaf {
        not_before: at(1546300800), // 2019-01-01 0:00 UTC
        not_after: at(1577934245),  // 2020-01-02 03:04:05 UTC
        ..Leaf::default()
    });
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        ["sip.cert_chain: certificate expired on 2020-01-02 03:04:05 UTC"]
    );
}

#[test]
fn certificate_not_yet_valid() {
    let f = Fixture::new(&Leaf {
        not_before: at(3786912000), // 2090-01-01 0:00 UTC
        not_after: at(3818448000),  // 2091-01-01 0:00 UTC
        ..Leaf::default()
    });
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        ["sip.cert_chain: certificate is not valid before 2090-01-01 00:00:00 UTC"]
    );
}

#[test]
fn certificate_must_name_the_public_fqdn() {
    let f = Fixture::new(&Leaf {
        names: vec!["edge.example.net", "example.org"],
        ..Leaf::default()
    });
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            "sip.cert_chain: certificate does not name sip.public_fqdn \"sip.example.org\" (its names: edge.example.net, example.org)"
        ]
    );
}

#[test]
fn wildcard_certificate_and_cn_fallback() {
    // RFC 6125: *.example.org covers sip.example.org but not example.org (a warning: local
    // domains should be in subjectAltName).
    let f = Fixture::new(&Leaf {
        names: vec!["*.example.org"],
        ..Leaf::default()
    });
    let (problems, warnings) = f.check();
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        warnings,
        [
            "sip.cert_chain: certificate does not name local domain \"example.org\"; the federation profile wants every domain the edge serves in subjectAltName"
        ]
    );
    // No subjectAltName DNS names at all: the subject CN is used.
    let f = Fixture::new(&Leaf {
        names: vec![],
        ..Leaf::default()
    });
    let (problems, _) = f.check();
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn federation_needs_server_and_client_auth() {
    let f = Fixture::new(&Leaf {
        ekus: vec![ExtendedKeyUsagePurpose::ServerAuth],
        ..Leaf::default()
    });
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            "sip.cert_chain: certificate lacks extended key usage clientAuth (federation needs both serverAuth and clientAuth)"
        ]
    );
    let f = Fixture::new(&Leaf {
        ekus: vec![],
        ..Leaf::default()
    });
    let (problems, warnings) = f.check();
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        warnings,
        [
            "sip.cert_chain: certificate has no extendedKeyUsage extension; federation certificates should list serverAuth and clientAuth"
        ]
    );
}

#[test]
fn key_and_ca_bundle_files() {
    let f = Fixture::new(&Leaf::default());
    std::fs::write(f.certs().join("ca.crt"), "no certificates here\n").unwrap();
    std::fs::write(f.certs().join("edge.key"), "").unwrap();
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            format!(
                "sip.private_key: no PEM private key in {:?}",
                f.certs().join("edge.key")
            ),
            format!(
                "sip.ca_bundle: no PEM certificate in {:?}",
                f.certs().join("ca.crt")
            ),
        ]
    );
}

#[cfg(unix)]
#[test]
fn world_readable_key_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(&Leaf::default());
    let key = f.certs().join("edge.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (problems, warnings) = f.check();
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        warnings,
        [format!(
            "sip.private_key: {key:?} is readable by every user; restrict it (chmod 600)"
        )]
    );
}

#[test]
fn storage_and_mappings_paths() {
    let f = Fixture::new(&Leaf::default());
    f.write_config(
        &CONFIG
            .replace("path = \"data\"", "path = \"no/such/dir/data\"")
            .replace("path = \"../mappings\"", "path = \"../maps\""),
    );
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            format!(
                "storage.path: parent directory {:?} does not exist",
                f.config_dir().join("no/such/dir")
            ),
            format!(
                "mappings.path: directory {:?} does not exist",
                f.config_dir().join("../maps")
            ),
        ]
    );
}

#[test]
fn file_checks_run_even_when_other_sections_have_problems() {
    let f = Fixture::new(&Leaf::default());
    std::fs::remove_file(f.certs().join("edge.crt")).unwrap();
    f.write_config(&CONFIG.replace("[storage]", "[storage]\ncolour = 1"));
    let report = check(&f.config());
    assert!(report.config.is_none());
    assert_eq!(
        lines(&report.problems),
        [
            "storage.colour: unknown key".to_owned(),
            format!(
                "sip.cert_chain: cannot read {:?}: file not found",
                f.certs().join("edge.crt")
            ),
        ]
    );
}
