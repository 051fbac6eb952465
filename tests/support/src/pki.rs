#![allow(clippy::unwrap_used)] // test fixtures: a failure to build one is a test failure

//! Test PKI made with rcgen: a CA and leaf certificates with both serverAuth and clientAuth
//! (federation certificates need both), optionally expired.

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct Pki {
    pub ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

pub type Leaf = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().der().clone();
        Pki {
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(1_500_000_000).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(1_600_000_000).unwrap();
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// Writes the bridge's TLS files into `dir`, as [`crate::config::BridgeConfig`] names them:
/// `bridge.crt` and `bridge.key` (mode 0600) for `names`, and `ca.crt`, this CA, which the
/// bridge trusts for its peers.
pub fn write_bridge_files(dir: &std::path::Path, pki: &Pki, names: &[&str]) {
    let (chain, key) = pki.leaf(names, false);
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("bridge.crt", der_to_pem("CERTIFICATE", &chain[0]));
    write("bridge.key", der_to_pem("PRIVATE KEY", key.secret_der()));
    write("ca.crt", der_to_pem("CERTIFICATE", &pki.ca));
    std::fs::set_permissions(
        dir.join("bridge.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
}

/// PEM text of a certificate chain and key (for socat's `cert=` and `cafile=`).
pub fn pem(leaf: &Leaf) -> String {
    let mut out = String::new();
    for c in &leaf.0 {
        out.push_str(&der_to_pem("CERTIFICATE", c));
    }
    out.push_str(&der_to_pem("PRIVATE KEY", leaf.1.secret_der()));
    out
}

pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
