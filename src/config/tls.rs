//! The edge's TLS material: reading PEM files (also used by the edge when it builds its rustls
//! configuration) and the offline checks of `check-config` — certificate chain and key present
//! and matching, validity dates, names (RFC 6125 §6.4 against `sip.public_fqdn`; RFC 5922
//! domain certificates), and the extended key usages federation needs (the certificate is
//! presented as a server *and* as a client).

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

/// All the offline checks of `[sip]`'s files, reported under their keys.
pub(crate) fn check_edge(sip: &SipConfig, local_domains: &[String], now: i64, diag: &mut Diag) {
    let chain = match read_certificates(&sip.cert_chain) {
        Ok(chain) => {
            check_chain(&chain, sip, local_domains, now, diag);
            Some(chain)
        }
        Err(reason) => {
            diag.problem("sip.cert_chain", reason);
            None
        }
    };
    check_key(sip, chain, diag);
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

fn check_key(sip: &SipConfig, chain: Option<Vec<CertificateDer<'static>>>, diag: &mut Diag) {
    let key = match read_private_key(&sip.private_key) {
        Ok(key) => key,
        Err(reason) => {
            diag.problem("sip.private_key", reason);
            return;
        }
    };
    world_readable_warning(&sip.private_key, diag);
    let provider = rustls::crypto::ring::default_provider();
    let Some(chain) = chain else {
        if let Err(e) = provider.key_provider.load_private_key(key) {
            diag.problem(
                "sip.private_key",
                format!("{:?}: unusable private key: {e}", sip.private_key),
            );
        }
        return;
    };
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            diag.problem(
                "sip.private_key",
                format!("key does not match certificate {:?}", sip.cert_chain),
            );
        }
        Err(e) => diag.problem(
            "sip.private_key",
            format!("{:?}: unusable private key: {e}", sip.private_key),
        ),
    }
}

#[cfg(unix)]
fn world_readable_warning(path: &Path, diag: &mut Diag) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            diag.warning(
                "sip.private_key",
                format!("{path:?} is readable by every user; restrict it (chmod 600)"),
            );
        }
    }
}

#[cfg(not(unix))]
fn world_readable_warning(_path: &Path, _diag: &mut Diag) {}

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
    chain: &[CertificateDer<'static>],
    sip: &SipConfig,
    local_domains: &[String],
    now: i64,
    diag: &mut Diag,
) {
    for (i, der) in chain.iter().enumerate() {
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => cert,
            Err(e) => {
                diag.problem(
                    "sip.cert_chain",
                    format!(
                        "certificate {} in {:?} is not valid X.509: {e}",
                        i + 1,
                        sip.cert_chain
                    ),
                );
                continue;
            }
        };
        if i == 0 {
            if let Some(why) = validity_problem(&cert, now) {
                diag.problem("sip.cert_chain", format!("certificate {why}"));
            }
            check_leaf(&cert, sip, local_domains, diag);
        } else if let Some(why) = validity_problem(&cert, now) {
            diag.problem(
                "sip.cert_chain",
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
    cert: &X509Certificate<'_>,
    sip: &SipConfig,
    local_domains: &[String],
    diag: &mut Diag,
) {
    let names = dns_names(cert);
    if !names.iter().any(|n| dns_name_matches(n, &sip.public_fqdn)) {
        let listed = if names.is_empty() {
            "it has no DNS name".to_owned()
        } else {
            format!("its names: {}", names.join(", "))
        };
        diag.problem(
            "sip.cert_chain",
            format!(
                "certificate does not name sip.public_fqdn {:?} ({listed})",
                sip.public_fqdn
            ),
        );
    }
    for d in local_domains {
        if !names.iter().any(|n| dns_name_matches(n, d)) {
            diag.warning(
                "sip.cert_chain",
                format!(
                    "certificate does not name local domain {d:?}; the federation profile wants every domain the edge serves in subjectAltName"
                ),
            );
        }
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let eku = eku.value;
            if !eku.any {
                let missing: Vec<&str> = [
                    (!eku.server_auth).then_some("serverAuth"),
                    (!eku.client_auth).then_some("clientAuth"),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !missing.is_empty() {
                    diag.problem(
                        "sip.cert_chain",
                        format!(
                            "certificate lacks extended key usage {} (federation needs both serverAuth and clientAuth)",
                            missing.join(" and ")
                        ),
                    );
                }
            }
        }
        Ok(None) => diag.warning(
            "sip.cert_chain",
            "certificate has no extendedKeyUsage extension; federation certificates should list serverAuth and clientAuth",
        ),
        Err(e) => diag.problem(
            "sip.cert_chain",
            format!("certificate has a malformed extendedKeyUsage extension: {e}"),
        ),
    }
}
