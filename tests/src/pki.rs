//! Certificates for the loopback control planes (rcgen): one CA per cluster signs the API server's
//! serving certificate and every client identity the tests need.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that keeps its key in memory only.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for loopback (`127.0.0.1`, `::1`, `localhost`) plus `extra_dns`.
    pub fn server(&self, common_name: &str, extra_dns: &[&str]) -> anyhow::Result<CertKey> {
        let mut params = CertificateParams::new(
            ["localhost"]
                .iter()
                .chain(extra_dns)
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params.distinguished_name = dn(common_name, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A serving (and client) certificate for `dns` names and `ips` only: a real node's API server
    /// (its node address, the `kubernetes` Service's ClusterIP).
    pub fn server_for(
        &self,
        common_name: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
    ) -> anyhow::Result<CertKey> {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.distinguished_name = dn(common_name, None);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A client certificate; Kubernetes reads the user from CN and the group from O
    /// (rcgen holds one value per attribute type, so one group at most).
    pub fn client(&self, user: &str, group: Option<&str>) -> anyhow::Result<CertKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate with URI SANs (Tether agents: `spiffe://<domain>/cluster/<name>`).
    /// `expired` makes one whose validity ended in 2021.
    pub fn client_with_uris(
        &self,
        common_name: &str,
        uris: &[&str],
        expired: bool,
    ) -> anyhow::Result<CertKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(rcgen::string::Ia5String::try_from(*uri)?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(params)
    }

    /// Writes `tls.crt`, `tls.key` and this CA as `ca.crt` into `dir` (a TLS Secret volume's layout).
    pub fn write_tls_dir(&self, dir: &std::path::Path, cert: &CertKey) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("tls.crt"), &cert.cert_pem)?;
        std::fs::write(dir.join("tls.key"), &cert.key_pem)?;
        std::fs::write(dir.join("ca.crt"), &self.cert_pem)?;
        Ok(())
    }

    fn sign(&self, mut params: CertificateParams) -> anyhow::Result<CertKey> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A fresh ECDSA P-256 key pair as (PKCS#8 private key PEM, SPKI public key PEM): the API server's
/// service-account signing key and the key it verifies tokens with.
pub fn key_pair_pem() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
