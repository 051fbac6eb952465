//! The edge's TLS material: reading PEM files (also used by the edge when it builds its rustls
//! configuration) and the offline checks of `check-config` — certificate chain and key present
//! and matching, validity dates, names (RFC 6125 §6.4 against `sip.public_fqdn`; RFC 5922
//! domain certificates), and the extended key usages federation needs (the server certificate
//! is presented as a server, and as a client too unless a separate client certificate is
//! configured).

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::SipConfig;
use super::checks::{dns_name_matches, format_utc};
use super::reader::{Diag, io_reason};

/// Reads every PEM `CERTIFICATE` in `path` (other PEM sections are skipped). Fails when the
/// file cannot be read, is not valid PEM, or holds no certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {}", io_reason(&e)))?;
    let certs: Result<Vec<_>, pem::Error> = CertificateDer::pem_slice_iter(&bytes).collect();
    let certs = certs.map_err(|e| format!("{path:?} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {path:?}"));
    }
    Ok(certs)
}

/// Reads the first PEM private key (PKCS#8, PKCS#1 or SEC1) in `path`.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {}", io_reason(&e)))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("no PEM private key in {path:?}"),
        e => format!("{path:?} is not valid PEM: {e}"),
    })
}

/// Which of the edge's two certificates is checked: `sip.cert_chain` (presented to
/// connecting partners, and on outbound connections too unless `sip.client_cert_chain` is set) or
/// `sip.client_cert_chain` (presented on outbound connections only).
#[derive(Clone, Copy)]
enum Role {
    Server { separate_client: bool },
    Client,
}

impl Role {
    fn chain_key(self) -> &'static str {
        match self {
            Role::Server { .. } => "sip.cert_chain",
            Role::Client => "sip.client_cert_chain",
        }
    }

    fn key_key(self) -> &'static str {
        match self {
            Role::Server { .. } => "sip.private_key",
            Role::Client => "sip.client_private_key",
        }
    }
}

/// All the offline checks of `[sip]`'s files, reported under their keys.
pub(crate) fn check_edge(sip: &SipConfig, local_domains: &[String], now: i64, diag: &mut Diag) {
    let server = Role::Server {
        separate_client: sip.client_cert.is_some(),
    };
    check_pair(
        server,
        &sip.cert_chain,
        &sip.private_key,
        sip,
        local_domains,
        now,
        diag,
    );
    if let Some(client) = &sip.client_cert {
        let role = Role::Client;
        check_pair(
            role,
            &client.chain,
            &client.key,
            sip,
            local_domains,
            now,
            diag,
        );
    }
    if let Some(bundle) = &sip.ca_bundle {
        match read_certificates(bundle) {
            Ok(certs) => {
                for (i, der) in certs.iter().enumerate() {
                    match x509_parser::parse_x509_certificate(der) {
                        Ok((_, cert)) => {
                            if let Some(why) = validity_problem(&cert, now) {
                                diag.warning(
                                    "sip.ca_bundle",
                                    format!("certificate {} ({}) {why}", i + 1, cert.subject()),
                                );
                            }
                        }
                        Err(e) => diag.problem(
                            "sip.ca_bundle",
                            format!(
                                "certificate {} in {bundle:?} is not valid X.509: {e}",
                                i + 1
                            ),
                        ),
                    }
                }
            }
            Err(reason) => diag.problem("sip.ca_bundle", reason),
        }
    }
}

/// A certificate chain and its key: readable, valid, naming the edge, the extended key usages
/// its role needs, and the key matching the leaf.
fn check_pair(
    role: Role,
    chain_path: &Path,
    key_path: &Path,
    sip: &SipConfig,
    local_domains: &[String],
    now: i64,
    diag: &mut Diag,
) {
    let chain = match read_certificates(chain_path) {
        Ok(chain) => {
            check_chain(role, &chain, chain_path, sip, local_domains, now, diag);
            Some(chain)
        }
        Err(reason) => {
            diag.problem(role.chain_key(), reason);
            None
        }
    };
    check_key(role, key_path, chain_path, chain, diag);
}

fn check_key(
    role: Role,
    key_path: &Path,
    chain_path: &Path,
    chain: Option<Vec<CertificateDer<'static>>>,
    diag: &mut Diag,
) {
    let name = role.key_key();
    let key = match read_private_key(key_path) {
        Ok(key) => key,
        Err(reason) => {
            diag.problem(name, reason);
            return;
        }
    };
    world_readable_warning(name, key_path, diag);
    let provider = rustls::crypto::ring::default_provider();
    let Some(chain) = chain else {
        if let Err(e) = provider.key_provider.load_private_key(key) {
            diag.problem(name, format!("{key_path:?}: unusable private key: {e}"));
        }
        return;
    };
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            diag.problem(
                name,
                format!("key does not match certificate {chain_path:?}"),
            );
        }
        Err(e) => diag.problem(name, format!("{key_path:?}: unusable private key: {e}")),
    }
}

#[cfg(unix)]
fn world_readable_warning(key: &str, path: &Path, diag: &mut Diag) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            diag.warning(
                key,
                format!("{path:?} is readable by every user; restrict it (chmod 600)"),
            );
        }
    }
}

#[cfg(not(unix))]
fn world_readable_warning(_key: &str, _path: &Path, _diag: &mut Diag) {}

/// `Some(reason)` when `now` is outside the certificate's validity period.
fn validity_problem(cert: &X509Certificate<'_>, now: i64) -> Option<String> {
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now > not_after {
        Some(format!("expired on {}", format_utc(not_after)))
    } else if now < not_before {
        Some(format!("is not valid before {}", format_utc(not_before)))
    } else {
        None
    }
}

fn check_chain(
    role: Role,
    chain: &[CertificateDer<'static>],
    chain_path: &Path,
    sip: &SipConfig,
    local_domains: &[String],
    now: i64,
    diag: &mut Diag,
) {
    let key = role.chain_key();
    for (i, der) in chain.iter().enumerate() {
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => cert,
            Err(e) => {
                diag.problem(
                    key,
                    format!(
                        "certificate {} in {chain_path:?} is not valid X.509: {e}",
                        i + 1,
                    ),
                );
                continue;
            }
        };
        if i == 0 {
            if let Some(why) = validity_problem(&cert, now) {
                diag.problem(key, format!("certificate {why}"));
            }
            check_leaf(role, &cert, sip, local_domains, diag);
        } else if let Some(why) = validity_problem(&cert, now) {
            diag.problem(
                key,
                format!(
                    "certificate {} in the chain ({}) {why}",
                    i + 1,
                    cert.subject()
                ),
            );
        }
    }
}

/// The names a certificate presents for RFC 6125 DNS-ID matching: its subjectAltName DNS
/// names, or its subject CNs when it has none.
pub(crate) fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let san: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !san.is_empty() {
        return san;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect()
}

fn check_leaf(
    role: Role,
    cert: &X509Certificate<'_>,
    sip: &SipConfig,
    local_domains: &[String],
    diag: &mut Diag,
) {
    let key = role.chain_key();
    let names = dns_names(cert);
    if !names.iter().any(|n| dns_name_matches(n, &sip.public_fqdn)) {
        let listed = if names.is_empty() {
            "it has no DNS name".to_owned()
        } else {
            format!("its names: {}", names.join(", "))
        };
        diag.problem(
            key,
            format!(
                "certificate does not name sip.public_fqdn {:?} ({listed})",
                sip.public_fqdn
            ),
        );
    }
    for d in local_domains {
        if !names.iter().any(|n| dns_name_matches(n, d)) {
            diag.warning(
                key,
                format!(
                    "certificate does not name local domain {d:?}; the federation profile wants every domain the edge serves in subjectAltName"
                ),
            );
        }
    }
    let eku = match cert.extended_key_usage() {
        Ok(Some(eku)) => eku.value,
        Ok(None) => {
            if let Role::Server { .. } = role {
                diag.warning(
                    key,
                    "certificate has no extendedKeyUsage extension; federation certificates should list serverAuth and clientAuth",
                );
            }
            return;
        }
        Err(e) => {
            diag.problem(
                key,
                format!("certificate has a malformed extendedKeyUsage extension: {e}"),
            );
            return;
        }
    };
    if eku.any {
        return;
    }
    // RFC 5280 §4.2.1.12: with the extension present, the key may be used only for the
    // purposes listed. The server certificate needs serverAuth (partners dial it); whichever
    // certificate the bridge presents on the connections it opens needs clientAuth.
    match role {
        Role::Server { separate_client } => {
            if !eku.server_auth {
                diag.problem(
                    key,
                    "certificate lacks extended key usage serverAuth (partners connecting to the edge refuse it)",
                );
            }
            if !eku.client_auth && !separate_client {
                diag.warning(
                    key,
                    "certificate lacks extended key usage clientAuth, and it is also presented on the connections the bridge opens: partners that check clientAuth (Lync / Skype for Business edges do) refuse them; set sip.client_cert_chain and sip.client_private_key to a certificate with clientAuth",
                );
            }
        }
        Role::Client => {
            if !eku.client_auth {
                diag.problem(
                    key,
                    "certificate lacks extended key usage clientAuth; it is presented on the connections the bridge opens, and partners refuse a client certificate without it",
                );
            }
        }
    }
}
