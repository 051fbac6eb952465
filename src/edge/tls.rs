//! Mutual TLS for the federation edge (the profile: "All SIP traffic MUST be carried over
//! mutually authenticated TLS"), on rustls with the ring provider, TLS 1.2 and 1.3.
//!
//! The listener requires a client certificate that chains to the configured CA bundle; outbound
//! connections present the bridge's chain and verify the peer against the name dialled.
//! [`describe_handshake_error`] turns a failed handshake into the reason an administrator needs
//! (no client certificate, unknown CA, expired, name mismatch, a peer that only speaks TLS 1.0 —
//! LCS 2005/OCS 2007 on Windows Server 2003/2008, which rustls cannot serve).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, Error as TlsError, PeerIncompatible, RootCertStore,
    ServerConfig,
};

use crate::config::tls::{read_certificates, read_private_key};

/// The server and client TLS configurations of the edge.
#[derive(Clone)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfigs {
    /// Reads the certificate chain, key and CA bundle (PEM) and builds both configurations;
    /// with `system_roots`, the operating system's trusted CAs are added to the bundle's.
    pub fn load(
        chain: &Path,
        key: &Path,
        ca_bundle: Option<&Path>,
        system_roots: bool,
    ) -> Result<TlsConfigs, String> {
        let chain = read_certificates(chain)?;
        let key = read_private_key(key)?;
        let mut cas = match ca_bundle {
            Some(path) => read_certificates(path)?,
            None => Vec::new(),
        };
        if system_roots {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "no system CA certificates found ({})",
                    why.join("; ")
                ));
            }
            cas.extend(found.certs);
        }
        if cas.is_empty() {
            return Err("no CA to verify peers with: set sip.ca_bundle or use_system_roots".into());
        }
        TlsConfigs::from_der(chain, key, cas)
    }

    /// Builds both configurations from DER material.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cas: Vec<CertificateDer<'static>>,
    ) -> Result<TlsConfigs, String> {
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(format!(
                "CA bundle: no certificate usable as a trust anchor ({ignored} unusable)"
            ));
        }
        let roots = Arc::new(roots);
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("client certificate verifier: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("edge certificate and key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("edge certificate and key: {e}"))?;
        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A one-line reason for a failed TLS handshake.
pub fn describe_handshake_error(e: &io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "peer closed the connection during the handshake".into()
            }
            io::ErrorKind::InvalidData => format!("not TLS: {e}"),
            _ => e.to_string(),
        };
    };
    match tls {
        TlsError::NoCertificatesPresented => "peer presented no client certificate".into(),
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "peer certificate is not issued by a trusted CA (unknown CA)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "peer certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "peer certificate is not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "peer certificate is not valid for the name dialled".into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "peer certificate lacks the needed extended key usage (serverAuth and clientAuth)"
                    .into()
            }
            CertificateError::BadSignature => {
                "peer certificate signature does not verify against the trusted CA".into()
            }
            other => format!("peer certificate rejected: {other:?}"),
        },
        TlsError::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            // A TLS 1.0/1.1 ClientHello has no signature_algorithms extension (RFC 5246
            // §7.4.1.4.1 added it); that is how rustls sees such a client.
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ) => "peer offers only TLS 1.0/1.1 (LCS 2005 / OCS 2007 on Windows Server 2003/2008); \
              rustls needs TLS 1.2 or 1.3"
            .into(),
        TlsError::PeerIncompatible(p) => format!("peer incompatible: {p:?}"),
        TlsError::AlertReceived(a) => format!("peer sent TLS alert {a:?}"),
        other => other.to_string(),
    }
}
