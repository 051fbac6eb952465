//! A peer's certificate identity, no I/O (the profile's "To and From URI handling" and
//! "Certificate requirements", RFC 5922 §7): a connection's identity is the DNS names of its
//! certificate's subjectAltName (the subject CN only when there is no SAN); it speaks for a
//! domain D when a name equals D, or equals the target of D's `_sipfederationtls._tcp` SRV
//! record, or is the edge host configured for partner D. Wildcard names never authorize a
//! domain (RFC 5922 §7.2).

use crate::config::FederationConfig;

/// The DNS names a peer's certificate vouches for (lower-case, without a trailing dot, sorted
/// and without repeats: two certificates naming the same names are one identity, whatever
/// their order, which is what the per-identity limits count).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PeerIdentity {
    names: Vec<String>,
}

impl PeerIdentity {
    pub fn from_names<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> PeerIdentity {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.as_ref().trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort_unstable();
        names.dedup();
        PeerIdentity { names }
    }

    /// The identity of a DER certificate: its SAN dNSNames, or its subject CN when it has no
    /// SAN extension (RFC 5922 §7.1).
    pub fn from_certificate(der: &[u8]) -> Result<PeerIdentity, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("certificate subjectAltName: {e}"))?;
        let names: Vec<String> = match san {
            Some(ext) => ext
                .value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
            None => cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
        };
        Ok(PeerIdentity::from_names(names))
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The names for a log line's `domain` field: comma-separated, anything but printable
    /// ASCII shown as `?` (a certificate's names are the peer's text), `-` when there are none.
    pub fn label(&self) -> String {
        if self.names.is_empty() {
            return "-".to_owned();
        }
        self.names
            .iter()
            .map(|n| {
                n.chars()
                    .map(|c| {
                        if c.is_ascii_graphic() && c != ',' {
                            c
                        } else {
                            '?'
                        }
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn has(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.names
            .iter()
            .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(name))
    }
}

impl PeerIdentity {
    /// Whether this identity speaks for `domain` (RFC 5922 §7, the profile's certificate
    /// rules): a name equals the domain, or equals one of its SRV targets (`srv_targets`), or
    /// equals the edge host configured for the partner. Policy (allowed, blocked) is not
    /// looked at here.
    pub fn covers(
        &self,
        domain: &str,
        srv_targets: &[String],
        federation: &FederationConfig,
    ) -> bool {
        self.has(domain)
            || srv_targets.iter().any(|t| self.has(t))
            || federation
                .partner(domain)
                .and_then(|p| p.edge.as_ref())
                .is_some_and(|e| self.has(&e.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_one_printable_line() {
        assert_eq!(
            PeerIdentity::from_names(["sip.contoso.com", "contoso.com"]).label(),
            "contoso.com,sip.contoso.com"
        );
        assert_eq!(PeerIdentity::default().label(), "-");
        // A hostile name cannot break the log line or fake a second name.
        assert_eq!(
            PeerIdentity::from_names(["evil.test\nWARN forged,x", "é.test"]).label(),
            "evil.test?warn?forged?x,?.test"
        );
    }

    #[test]
    fn identity_from_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["sip.contoso.com".into(), "contoso.com".into()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_certificate(cert.der()).unwrap();
        // Sorted and without repeats: the same names in another order are the same identity.
        assert_eq!(id.names(), ["contoso.com", "sip.contoso.com"]);
        assert_eq!(
            id,
            PeerIdentity::from_names(["Contoso.com.", "sip.contoso.com", "contoso.com"])
        );
        let mut cn_only = rcgen::CertificateParams::default();
        cn_only
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Edge.Litware.com");
        let cert = cn_only.self_signed(&key).unwrap();
        assert_eq!(
            PeerIdentity::from_certificate(cert.der()).unwrap().names(),
            ["edge.litware.com"]
        );
        assert!(PeerIdentity::from_certificate(b"junk").is_err());
    }
}
