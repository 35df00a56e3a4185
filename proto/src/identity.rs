//! The identity rule: a remote cluster is who its verified client certificate says it is, through the URI
//! SAN `spiffe://<trust-domain>/cluster/<name>`. Never what the peer claims in a message.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("client certificate could not be parsed: {0}")]
    Parse(String),
    #[error(
        "client certificate has no URI SAN spiffe://{0}/cluster/<name>; mint it with `tether-hub join`"
    )]
    Missing(String),
    #[error(
        "client certificate names cluster {0:?}, which is not a valid cluster name (DNS-1123 label)"
    )]
    InvalidName(String),
}

/// The URI SAN a cluster's certificate carries.
pub fn spiffe_uri(trust_domain: &str, cluster: &str) -> String {
    format!("spiffe://{trust_domain}/cluster/{cluster}")
}

/// A hub replica's identity when it forwards istiod's requests to another replica (API access).
pub fn hub_peer_uri(trust_domain: &str, replica: &str) -> String {
    format!("spiffe://{trust_domain}/hub-peer/{replica}")
}

/// The hub replica a certificate names with [`hub_peer_uri`], if it names one.
pub fn hub_peer_from_cert(der: &[u8], trust_domain: &str) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let prefix = format!("spiffe://{trust_domain}/hub-peer/");
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => uri.strip_prefix(&prefix).map(str::to_string),
        _ => None,
    })
}

/// When a DER certificate expires (Unix seconds); `None` if it cannot be parsed.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The cluster named by a DER certificate within `trust_domain`.
pub fn cluster_from_cert(der: &[u8], trust_domain: &str) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let prefix = format!("spiffe://{trust_domain}/cluster/");
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let uris = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    for uri in uris {
        if let Some(name) = uri.strip_prefix(&prefix) {
            return if is_dns_label(name) {
                Ok(name.to_string())
            } else {
                Err(IdentityError::InvalidName(name.into()))
            };
        }
    }
    Err(IdentityError::Missing(trust_domain.to_string()))
}

/// RFC 1123 label: what Kubernetes accepts as a namespace or object name segment.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*u).unwrap(),
            ));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn cluster_name_comes_from_the_spiffe_uri_san() {
        let der = cert_with_uris(&[
            "https://example.com",
            "spiffe://mesh.local/cluster/remote-1",
        ]);
        assert_eq!(cluster_from_cert(&der, "mesh.local").unwrap(), "remote-1");
    }

    #[test]
    fn other_trust_domain_is_not_an_identity() {
        let der = cert_with_uris(&["spiffe://other.local/cluster/remote-1"]);
        assert_eq!(
            cluster_from_cert(&der, "mesh.local"),
            Err(IdentityError::Missing("mesh.local".into()))
        );
    }

    #[test]
    fn invalid_cluster_name_is_refused() {
        let der = cert_with_uris(&["spiffe://mesh.local/cluster/Remote_1"]);
        assert!(matches!(
            cluster_from_cert(&der, "mesh.local"),
            Err(IdentityError::InvalidName(_))
        ));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("remote-1"));
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
