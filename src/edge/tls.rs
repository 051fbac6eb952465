//! Mutual TLS for the federation edge (the profile: "All SIP traffic MUST be carried over
//! mutually authenticated TLS"), on rustls with the ring provider, TLS 1.2 and 1.3.
//!
//! The listener requires a client certificate that chains to the configured CA bundle
//! ([`PartnerCertVerifier`]); outbound connections present the bridge's client chain (its
//! server chain unless `sip.client_cert_chain` is set) and verify the peer against the name
//! dialled. [`describe_handshake_error`] and [`describe_accept_error`] turn a failed handshake
//! into the reason an administrator needs (no client certificate, unknown CA, expired, name
//! mismatch, a missing extended key usage, a peer that only speaks TLS 1.0 — LCS 2005/OCS 2007
//! on Windows Server 2003/2008, which rustls cannot serve).

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    OtherError, PeerIncompatible, RootCertStore, ServerConfig, SignatureScheme,
};
use tracing::warn;

use super::identity::PeerIdentity;
use crate::config::SipConfig;
use crate::config::tls::{read_certificates, read_private_key};

/// The configuration key that lets partners connect with serverAuth-only certificates.
pub const ACCEPT_SERVER_AUTH_ONLY_KEY: &str = "sip.accept_server_auth_only_clients";

/// The server and client TLS configurations of the edge.
#[derive(Clone)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// `sip.accept_server_auth_only_clients` as these configurations were built with (the
    /// accept path's log names the key when it is off).
    pub accept_server_auth_only_clients: bool,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs")
    }
}

/// A certificate chain (leaf first) and the leaf's private key.
pub type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What the edge's two TLS configurations are built from.
pub struct TlsMaterial {
    /// Presented to connecting partners (`sip.cert_chain`, `sip.private_key`).
    pub server: CertAndKey,
    /// Presented on the connections the bridge opens (`sip.client_cert_chain`,
    /// `sip.client_private_key`); `None`: the server chain serves both roles.
    pub client: Option<CertAndKey>,
    /// Trust anchors for partners' certificates.
    pub cas: Vec<CertificateDer<'static>>,
    /// `sip.accept_server_auth_only_clients`.
    pub accept_server_auth_only_clients: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfigs {
    /// Reads `[sip]`'s certificate chains, keys and CA bundle (PEM) and builds both
    /// configurations; with `use_system_roots`, the operating system's trusted CAs are added
    /// to the bundle's.
    pub fn load(sip: &SipConfig) -> Result<TlsConfigs, String> {
        let server = (
            read_certificates(&sip.cert_chain)?,
            read_private_key(&sip.private_key)?,
        );
        let client = match &sip.client_cert {
            Some(c) => Some((read_certificates(&c.chain)?, read_private_key(&c.key)?)),
            None => None,
        };
        let cas = load_cas(sip.ca_bundle.as_deref(), sip.use_system_roots)?;
        TlsConfigs::build(TlsMaterial {
            server,
            client,
            cas,
            accept_server_auth_only_clients: sip.accept_server_auth_only_clients,
        })
    }

    /// Builds both configurations from DER material: one chain for both roles, partners'
    /// certificates must carry clientAuth.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cas: Vec<CertificateDer<'static>>,
    ) -> Result<TlsConfigs, String> {
        TlsConfigs::build(TlsMaterial {
            server: (chain, key),
            client: None,
            cas,
            accept_server_auth_only_clients: false,
        })
    }

    /// Builds both configurations.
    pub fn build(material: TlsMaterial) -> Result<TlsConfigs, String> {
        let TlsMaterial {
            server: (chain, key),
            client: client_cert,
            cas,
            accept_server_auth_only_clients,
        } = material;
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
        let verifier = PartnerCertVerifier::new(roots.clone(), accept_server_auth_only_clients)?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("edge certificate and key: {e}"))?;
        let (client_chain, client_key, what) = match client_cert {
            Some((chain, key)) => (chain, key, "client certificate and key"),
            None => (chain, key, "edge certificate and key"),
        };
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(client_chain, client_key)
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
            accept_server_auth_only_clients,
        })
    }
}

/// The CA bundle's certificates, and the operating system's with `system_roots`.
fn load_cas(
    ca_bundle: Option<&Path>,
    system_roots: bool,
) -> Result<Vec<CertificateDer<'static>>, String> {
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
    Ok(cas)
}

/// Identities remembered for the once-per-identity warning; past this many the memory starts
/// over (the warning then repeats), so partners cannot grow it without bound.
const MAX_WARNED_IDENTITIES: usize = 1024;

/// The verifier of connecting partners' certificates: rustls's WebPKI client verifier (the
/// chain must lead to a configured trust anchor, be valid now, carry clientAuth — RFC 5280
/// §4.2.1.12 — on the leaf and on every intermediate when they list extended key usages), and,
/// when `sip.accept_server_auth_only_clients` allows it, a second chance for a chain refused
/// only for its extended key usage: the same path validation (rustls-webpki, the same trust
/// anchors, signature algorithms and time, no revocation lists, as the first) with clientAuth
/// *or* serverAuth accepted on every certificate of the path. Public CAs issue TLS
/// certificates with serverAuth only from 2026 (the Chrome Root Program's policy, which every
/// large CA follows), leaves and intermediates alike.
pub struct PartnerCertVerifier {
    strict: Arc<dyn ClientCertVerifier>,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    accept_server_auth_only: bool,
    /// Identities (certificate names) already warned about.
    warned: Mutex<HashSet<PeerIdentity>>,
}

impl std::fmt::Debug for PartnerCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerCertVerifier")
            .field("accept_server_auth_only", &self.accept_server_auth_only)
            .finish_non_exhaustive()
    }
}

impl PartnerCertVerifier {
    /// A verifier trusting `roots`; `accept_server_auth_only`:
    /// `sip.accept_server_auth_only_clients`.
    pub fn new(
        roots: Arc<RootCertStore>,
        accept_server_auth_only: bool,
    ) -> Result<PartnerCertVerifier, String> {
        let provider = provider();
        let strict = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("client certificate verifier: {e}"))?;
        Ok(PartnerCertVerifier {
            strict,
            roots,
            algorithms: provider.signature_verification_algorithms,
            accept_server_auth_only,
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// The path validation with clientAuth or serverAuth accepted.
    fn verify_either_auth(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            ClientOrServerAuth,
            None,
            None,
        )
        .map(|_| ())
        .map_err(webpki_error)
    }

    /// One WARN per certificate identity (until [`MAX_WARNED_IDENTITIES`] were seen, or the
    /// configuration is reloaded).
    fn warn_once(&self, end_entity: &CertificateDer<'_>) {
        let identity = PeerIdentity::from_certificate(end_entity).unwrap_or_default();
        let mut warned = match self.warned.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if warned.contains(&identity) {
            return;
        }
        if warned.len() >= MAX_WARNED_IDENTITIES {
            warned.clear();
        }
        // During the handshake: the connection has no number in the log yet.
        warn!(
            domain = %identity.label(),
            names = ?identity.names(),
            key = ACCEPT_SERVER_AUTH_ONLY_KEY,
            "accepted a partner certificate without the clientAuth extended key usage (serverAuth only), as the key allows"
        );
        warned.insert(identity);
    }
}

impl ClientCertVerifier for PartnerCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.strict.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.strict.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        match self
            .strict
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(e) if self.accept_server_auth_only && is_purpose_error(&e) => {
                self.verify_either_auth(end_entity, intermediates, now)?;
                self.warn_once(end_entity);
                Ok(ClientCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.strict.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.strict.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.strict.supported_verify_schemes()
    }
}

fn is_purpose_error(e: &TlsError) -> bool {
    matches!(
        e,
        TlsError::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        )
    )
}

/// DER contents of the id-kp-serverAuth and id-kp-clientAuth OIDs (RFC 5280 §4.2.1.12:
/// 1.3.6.1.5.5.7.3.1 and .2).
const SERVER_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const CLIENT_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// An extended key usage check that passes a certificate listing clientAuth or serverAuth, or
/// listing none (no extension: any purpose, RFC 5280 §4.2.1.12).
struct ClientOrServerAuth;

impl webpki::ExtendedKeyUsageValidator for ClientOrServerAuth {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let client = webpki::KeyPurposeId::new(CLIENT_AUTH_OID);
        let server = webpki::KeyPurposeId::new(SERVER_AUTH_OID);
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if id == client || id == server {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::client_auth(),
                present,
            },
        ))
    }
}

/// A rustls error for a webpki one, as rustls maps them for its own verifiers.
fn webpki_error(e: webpki::Error) -> TlsError {
    use webpki::Error as W;
    let c = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        #[allow(deprecated)]
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    TlsError::InvalidCertificate(c)
}

/// A failed handshake as one word, for the handshake-failure counter's `reason` label (a
/// closed list: what a peer sends cannot make a new one): `closed`, `not_tls`,
/// `no_certificate`, `unknown_ca`, `expired`, `not_valid_yet`, `wrong_name`, `wrong_purpose`,
/// `bad_certificate` (any other certificate problem), `tls` (anything else, alerts and
/// versions included).
pub fn handshake_reason(e: &io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "closed",
            io::ErrorKind::InvalidData => "not_tls",
            _ => "tls",
        };
    };
    match tls {
        TlsError::NoCertificatesPresented => "no_certificate",
        TlsError::InvalidMessage(_) => "not_tls",
        TlsError::InvalidCertificate(c) => {
            match c {
                CertificateError::UnknownIssuer => "unknown_ca",
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not_valid_yet"
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "wrong_name",
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => "wrong_purpose",
                _ => "bad_certificate",
            }
        }
        _ => "tls",
    }
}

/// A one-line reason for a failed handshake of a connection a partner opened: as
/// [`describe_handshake_error`], and a certificate refused for its extended key usage is named
/// as such, with the key that lets the edge accept serverAuth-only certificates when it is off.
pub fn describe_accept_error(e: &io::Error, accept_server_auth_only: bool) -> String {
    let purpose = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
        .is_some_and(is_purpose_error);
    match (purpose, accept_server_auth_only) {
        (true, false) => format!(
            "peer certificate lacks the clientAuth extended key usage (in its leaf or an \
             intermediate certificate; RFC 5280 §4.2.1.12); set {ACCEPT_SERVER_AUTH_ONLY_KEY} \
             = true to accept partner certificates that carry serverAuth only"
        ),
        (true, true) => "peer certificate lacks both the clientAuth and the serverAuth \
                         extended key usage (in its leaf or an intermediate certificate)"
            .into(),
        (false, _) => describe_handshake_error(e),
    }
}

/// A one-line reason for a failed TLS handshake (on a connection the bridge opened, a missing
/// extended key usage is the peer's serverAuth).
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
                "peer certificate lacks the serverAuth extended key usage".into()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Each failure gets its word from the closed list, whatever text the error carries.
    #[test]
    fn handshake_reasons() {
        let cases = [
            (tls(TlsError::NoCertificatesPresented), "no_certificate"),
            (
                tls(TlsError::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                "not_tls",
            ),
            (
                tls(TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                "unknown_ca",
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::Expired)),
                "expired",
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::NotValidYet)),
                "not_valid_yet",
            ),
            (
                tls(TlsError::InvalidCertificate(
                    CertificateError::NotValidForName,
                )),
                "wrong_name",
            ),
            (
                tls(TlsError::InvalidCertificate(
                    CertificateError::InvalidPurpose,
                )),
                "wrong_purpose",
            ),
            (
                tls(TlsError::InvalidCertificate(CertificateError::BadSignature)),
                "bad_certificate",
            ),
            (tls(TlsError::General("anything a peer says".into())), "tls"),
            (io::Error::from(io::ErrorKind::UnexpectedEof), "closed"),
            (io::Error::from(io::ErrorKind::ConnectionReset), "closed"),
            (
                io::Error::new(io::ErrorKind::InvalidData, "junk"),
                "not_tls",
            ),
            (io::Error::from(io::ErrorKind::TimedOut), "tls"),
        ];
        for (e, want) in cases {
            assert_eq!(handshake_reason(&e), want, "{e:?}");
        }
    }
}
