#![allow(clippy::unwrap_used)] // test fixtures: a failure to build one is a test failure

//! Test PKI made with rcgen: a CA and leaf certificates with both serverAuth and clientAuth
//! (federation certificates need both), optionally expired; leaves with chosen extended key
//! usages ([`Pki::leaf_with`]) and intermediate CAs, with chosen extended key usages too
//! ([`Pki::intermediate`]), as public CAs issue them from 2026 (serverAuth only).

pub use rcgen::ExtendedKeyUsagePurpose;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// serverAuth and clientAuth: a federation certificate as CAs issued them until 2026.
pub const BOTH_AUTH: &[ExtendedKeyUsagePurpose] = &[
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];
/// serverAuth only: a public CA's TLS certificate from 2026.
pub const SERVER_AUTH: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ServerAuth];
/// clientAuth only: a dedicated client certificate.
pub const CLIENT_AUTH: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ClientAuth];

pub struct Pki {
    /// The root: the trust anchor peers configure.
    pub ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The intermediates between the issuer and the root, issuer first: appended to every
    /// leaf's chain.
    intermediates: Vec<CertificateDer<'static>>,
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
            intermediates: Vec::new(),
        }
    }

    /// An intermediate CA under this one, listing `ekus` (none: no extendedKeyUsage
    /// extension); its leaves' chains carry it (and this CA's intermediates), and their trust
    /// anchor stays this PKI's root.
    pub fn intermediate(&self, name: &str, ekus: &[ExtendedKeyUsagePurpose]) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.extended_key_usages = ekus.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let mut intermediates = vec![cert];
        intermediates.extend(self.intermediates.iter().cloned());
        Pki {
            ca: self.ca.clone(),
            issuer: Issuer::new(params, key),
            intermediates,
        }
    }

    /// A leaf with serverAuth and clientAuth.
    pub fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        self.leaf_with(names, BOTH_AUTH, expired)
    }

    /// A leaf listing `ekus` (none: no extendedKeyUsage extension), its chain leaf first with
    /// this PKI's intermediates.
    pub fn leaf_with(
        &self,
        names: &[&str],
        ekus: &[ExtendedKeyUsagePurpose],
        expired: bool,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = ekus.to_vec();
        if expired {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(1_500_000_000).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(1_600_000_000).unwrap();
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// Writes `leaf` as `<name>.crt` (its whole chain, leaf first) and `<name>.key` (mode 0600)
/// into `dir`.
pub fn write_leaf_files(dir: &std::path::Path, name: &str, leaf: &Leaf) {
    let chain: String = leaf
        .0
        .iter()
        .map(|c| der_to_pem("CERTIFICATE", c))
        .collect();
    std::fs::write(dir.join(format!("{name}.crt")), chain).unwrap();
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, der_to_pem("PRIVATE KEY", leaf.1.secret_der())).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
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
