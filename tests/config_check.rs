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
    issuer: Issuer<'static, KeyPair>,
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
        std::fs::create_dir_all(dir.path().join("config/certs")).unwrap();
        std::fs::create_dir_all(dir.path().join("mappings")).unwrap();

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "lcs-bridge test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let f = Fixture {
            dir,
            issuer: Issuer::new(ca, ca_key),
        };
        f.write_leaf(leaf, "edge");
        std::fs::write(f.certs().join("ca.crt"), ca_cert.pem()).unwrap();
        f.write_config(CONFIG);
        f
    }

    /// Writes `certs/<name>.crt` and `certs/<name>.key` (mode 0600) for `leaf`, issued by the
    /// fixture's CA.
    fn write_leaf(&self, leaf: &Leaf, name: &str) {
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
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let crt = self.certs().join(format!("{name}.crt"));
        let key_file = self.certs().join(format!("{name}.key"));
        std::fs::write(crt, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        private(&key_file);
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
        let path = config_dir.join(name);
        let report = check(&path);
        assert_eq!(lines(&report.problems), Vec::<String>::new(), "{name}");
        let placeholder = "xmpp.secret: is the example's placeholder \"change-me\"";
        let warnings = lines(&report.warnings);
        assert!(
            warnings.len() == 1 && warnings[0].starts_with(placeholder),
            "{name}: {warnings:?}"
        );
        // As an administrator would: a secret of one's own, and then no warning at all.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"change-me\"", "\"0ur-own\"")).unwrap();
        let report = check(&path);
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

/// The edge certificate is dialled by partners (TLS server role): without serverAuth in its
/// extendedKeyUsage it may not be used for that (RFC 5280 §4.2.1.12), a problem. Without
/// clientAuth it still serves as the server certificate, but when it is also the certificate
/// presented on the connections the bridge opens, partners that check clientAuth refuse them:
/// a warning naming the fix. Public CAs issue exactly such serverAuth-only certificates from
/// 2026 (Chrome Root Program Policy §1.3.2, "Dedicated TLS Server Authentication PKI
/// Hierarchies"; Let's Encrypt, "Ending TLS Client Authentication Certificate Support in 2026").
#[test]
fn server_certificate_extended_key_usages() {
    let f = Fixture::new(&Leaf {
        ekus: vec![ExtendedKeyUsagePurpose::ServerAuth],
        ..Leaf::default()
    });
    let (problems, warnings) = f.check();
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        warnings,
        [
            "sip.cert_chain: certificate lacks extended key usage clientAuth, and it is also presented on the connections the bridge opens: partners that check clientAuth (Lync / Skype for Business edges do) refuse them; set sip.client_cert_chain and sip.client_private_key to a certificate with clientAuth"
        ]
    );
    let f = Fixture::new(&Leaf {
        ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..Leaf::default()
    });
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            "sip.cert_chain: certificate lacks extended key usage serverAuth (partners connecting to the edge refuse it)"
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

const CLIENT_KEYS: &str =
    "client_cert_chain = \"certs/client.crt\"\nclient_private_key = \"certs/client.key\"\n";

/// `sip.client_cert_chain` + `sip.client_private_key`: a separate certificate for the
/// connections the bridge opens. With it, a serverAuth-only edge certificate is fine; the
/// client certificate needs clientAuth (RFC 5280 §4.2.1.12) and names the edge like the server
/// one; the two keys go together.
#[test]
fn separate_client_certificate() {
    let server_only = Leaf {
        ekus: vec![ExtendedKeyUsagePurpose::ServerAuth],
        ..Leaf::default()
    };
    let f = Fixture::new(&server_only);
    f.write_config(&CONFIG.replace("ca_bundle =", &format!("{CLIENT_KEYS}ca_bundle =")));
    f.write_leaf(
        &Leaf {
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ..Leaf::default()
        },
        "client",
    );
    let report = check(&f.config());
    assert_eq!(lines(&report.problems), Vec::<String>::new());
    assert_eq!(lines(&report.warnings), Vec::<String>::new());
    let client = report.config.unwrap().sip.client_cert.unwrap();
    assert_eq!(client.chain, f.certs().join("client.crt"));
    assert_eq!(client.key, f.certs().join("client.key"));

    // No extendedKeyUsage at all: any purpose, accepted without a word.
    f.write_leaf(
        &Leaf {
            ekus: vec![],
            ..Leaf::default()
        },
        "client",
    );
    assert_eq!(f.check(), (Vec::new(), Vec::new()));

    // A serverAuth-only client certificate, naming another host.
    f.write_leaf(
        &Leaf {
            names: vec!["other.example.net"],
            cn: "other.example.net",
            ..server_only
        },
        "client",
    );
    let (problems, warnings) = f.check();
    assert_eq!(
        problems,
        [
            "sip.client_cert_chain: certificate does not name sip.public_fqdn \"sip.example.org\" (its names: other.example.net)",
            "sip.client_cert_chain: certificate lacks extended key usage clientAuth; it is presented on the connections the bridge opens, and partners refuse a client certificate without it",
        ]
    );
    assert_eq!(
        warnings,
        [
            "sip.client_cert_chain: certificate does not name local domain \"example.org\"; the federation profile wants every domain the edge serves in subjectAltName"
        ]
    );

    // One key without the other.
    f.write_config(&CONFIG.replace(
        "ca_bundle =",
        "client_cert_chain = \"certs/client.crt\"\nca_bundle =",
    ));
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            "sip.client_private_key: required when sip.client_cert_chain is set (set both or neither)"
        ]
    );
    f.write_config(&CONFIG.replace(
        "ca_bundle =",
        "client_private_key = \"certs/client.key\"\nca_bundle =",
    ));
    let (problems, _) = f.check();
    assert_eq!(
        problems,
        [
            "sip.client_cert_chain: required when sip.client_private_key is set (set both or neither)"
        ]
    );
}

/// `sip.public_fqdn` outside the SIP domains: a warning, not an error. Lync / Skype for
/// Business find a partner's edge through `_sipfederationtls._tcp.<domain>`; an edge that
/// treats discovered partners as unverified, or checks that the SRV target lies in the
/// domain's namespace, refuses an edge host elsewhere. The domain itself and a host directly
/// under it pass.
#[test]
fn public_fqdn_outside_the_sip_domains_is_a_warning() {
    let f = Fixture::new(&Leaf {
        names: vec!["edge.example.net", "a.b.example.org", "example.org"],
        cn: "edge.example.net",
        ..Leaf::default()
    });
    for fqdn in ["edge.example.net", "a.b.example.org", "badexample.org"] {
        f.write_config(&CONFIG.replace(
            "public_fqdn = \"sip.example.org\"",
            &format!("public_fqdn = \"{fqdn}\""),
        ));
        let report = check(&f.config());
        let warnings: Vec<String> = lines(&report.warnings)
            .into_iter()
            .filter(|w| w.starts_with("sip.public_fqdn"))
            .collect();
        assert_eq!(
            warnings,
            [format!(
                "sip.public_fqdn: \"{fqdn}\" is neither a SIP domain served (xmpp.local_domains: example.org) nor directly under one; partners that treat discovered partners as unverified, or check that the _sipfederationtls._tcp SRV target is in the domain's namespace, may refuse such an edge (use e.g. \"sip.example.org\")"
            )],
            "{fqdn}"
        );
    }
    f.write_config(&CONFIG.replace(
        "public_fqdn = \"sip.example.org\"",
        "public_fqdn = \"example.org\"",
    ));
    let (problems, warnings) = f.check();
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(warnings, Vec::<String>::new());
}
