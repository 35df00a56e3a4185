//! Certificates (rcgen): `tether-hub certs init` makes the hub CA and the hub's serving certificate;
//! `tether-hub join` mints each agent's client certificate from that CA. The CA key stays where
//! `certs init` wrote it, on the operator's side of the central cluster; it is never put in a values file.
//!
//! ```text
//!  <dir>/ca.crt, <dir>/ca.key (0600)          the hub CA
//!  <dir>/hub/{tls.crt,tls.key,ca.crt}          the hub's serving certificate (a TLS Secret's layout)
//!  agent: tls.crt (URI SAN spiffe://<domain>/cluster/<name>), tls.key, ca.crt   -> agent chart values
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "{0} already exists; refusing to overwrite a CA (remove it first if you mean to start over)"
    )]
    Exists(PathBuf),
    #[error("{0:?} is not a valid cluster name (lowercase letters, digits and '-', at most 63)")]
    BadName(String),
}

/// A PEM certificate and key.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tether");
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time_now();
    // A little slack for clocks that are behind.
    params.not_before = now - rcgen_duration(Duration::from_secs(300));
    params.not_after = now + rcgen_duration(valid_for);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_duration(d: Duration) -> time::Duration {
    time::Duration::seconds(d.as_secs() as i64)
}

/// A new CA.
pub fn new_ca(valid_for: Duration) -> Result<Pem, CertError> {
    new_named_ca("tether-hub-ca", valid_for)
}

/// A new CA with common name `cn`.
pub fn new_named_ca(cn: &str, valid_for: Duration) -> Result<Pem, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, valid_for);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issuer(ca: &Pem) -> Result<Issuer<'static, KeyPair>, CertError> {
    Ok(Issuer::from_ca_cert_pem(
        &ca.cert,
        KeyPair::from_pem(&ca.key)?,
    )?)
}

/// Signs a leaf certificate (fresh key, digital-signature usage, `valid_for` from now) with the CA.
fn leaf(ca: &Pem, mut params: CertificateParams, valid_for: Duration) -> Result<Pem, CertError> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, valid_for);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The hub's serving certificate for `dns` names and `ips`.
pub fn hub_cert(
    ca: &Pem,
    dns: &[String],
    ips: &[std::net::IpAddr],
    valid_for: Duration,
) -> Result<Pem, CertError> {
    let mut params = CertificateParams::new(dns.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name = dn("tether-hub");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(ca, params, valid_for)
}

/// istiod's client certificate for API access (common name `istiod`, client auth only).
pub fn istiod_cert(ca: &Pem, valid_for: Duration) -> Result<Pem, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("istiod");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, valid_for)
}

/// A hub replica's client certificate for forwarding istiod's requests to the other replicas' API
/// endpoints: from the API-access CA, URI SAN `spiffe://<trust_domain>/hub-peer/<replica>`.
pub fn peer_cert(
    ca: &Pem,
    trust_domain: &str,
    replica: &str,
    valid_for: Duration,
) -> Result<Pem, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("tether-hub-peer");
    let uri = tether_proto::identity::hub_peer_uri(trust_domain, replica);
    params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(uri)?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, valid_for)
}

/// An agent's client certificate: URI SAN `spiffe://<trust_domain>/cluster/<cluster>`.
pub fn agent_cert(
    ca: &Pem,
    cluster: &str,
    trust_domain: &str,
    valid_for: Duration,
) -> Result<Pem, CertError> {
    if !tether_proto::identity::is_dns_label(cluster) {
        return Err(CertError::BadName(cluster.into()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("tether-agent-{cluster}"));
    let uri = tether_proto::identity::spiffe_uri(trust_domain, cluster);
    params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(uri)?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, valid_for)
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 });
    std::io::Write::write_all(&mut opts.open(path).map_err(io)?, contents.as_bytes()).map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a new CA and hub certificate under `dir` (see the module docs). Refuses to replace a CA.
pub fn init(
    dir: &Path,
    dns: &[String],
    ips: &[std::net::IpAddr],
    valid_for: Duration,
) -> Result<(Pem, Pem), CertError> {
    if dir.join("ca.key").exists() {
        return Err(CertError::Exists(dir.join("ca.key")));
    }
    let ca = new_ca(valid_for)?;
    let hub = hub_cert(&ca, dns, ips, valid_for)?;
    write(&dir.join("ca.crt"), &ca.cert, false)?;
    write(&dir.join("ca.key"), &ca.key, true)?;
    write(&dir.join("hub/tls.crt"), &hub.cert, false)?;
    write(&dir.join("hub/tls.key"), &hub.key, true)?;
    write(&dir.join("hub/ca.crt"), &ca.cert, false)?;
    Ok((ca, hub))
}

/// Replaces the hub certificate under `dir` (`hub/`) with a new one from the CA `certs init` wrote
/// there. Returns (CA, new hub certificate).
pub fn reissue_hub(
    dir: &Path,
    dns: &[String],
    ips: &[std::net::IpAddr],
    valid_for: Duration,
) -> Result<(Pem, Pem), CertError> {
    let ca = load_ca(dir)?;
    let hub = hub_cert(&ca, dns, ips, valid_for)?;
    write(&dir.join("hub/tls.crt"), &hub.cert, false)?;
    write(&dir.join("hub/tls.key"), &hub.key, true)?;
    write(&dir.join("hub/ca.crt"), &ca.cert, false)?;
    Ok((ca, hub))
}

/// The CA `certs init` wrote in `dir`.
pub fn load_ca(dir: &Path) -> Result<Pem, CertError> {
    Ok(Pem {
        cert: read(&dir.join("ca.crt"))?,
        key: read(&dir.join("ca.key"))?,
    })
}

/// A `kubernetes.io/tls` Secret manifest holding the hub's certificate and the CA certificate (not its key).
pub fn hub_secret_manifest(name: &str, namespace: &str, ca: &Pem, hub: &Pem) -> String {
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"tls.crt": hub.cert, "tls.key": hub.key, "ca.crt": ca.cert},
    });
    serde_yaml::to_string(&secret).expect("secret serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificate_carries_the_cluster_identity_and_chains_to_the_ca() {
        let ca = new_ca(Duration::from_secs(3600)).unwrap();
        let agent = agent_cert(&ca, "remote-1", "mesh.local", Duration::from_secs(600)).unwrap();
        let der = first_cert_der(&agent.cert);
        assert_eq!(
            tether_proto::identity::cluster_from_cert(&der, "mesh.local").unwrap(),
            "remote-1"
        );
        // rustls accepts the chain: a server config with this CA verifies it.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(&dir.join("ca.crt"), &ca.cert, false).unwrap();
        let hub = hub_cert(&ca, &["localhost".into()], &[], Duration::from_secs(600)).unwrap();
        write(&dir.join("tls.crt"), &hub.cert, false).unwrap();
        write(&dir.join("tls.key"), &hub.key, true).unwrap();
        tether_proto::tls::server_config(&tether_proto::tls::TlsFiles::in_dir(dir)).unwrap();
        assert!(agent_cert(&ca, "Not_Valid", "mesh.local", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_peer_certificate_names_its_replica_and_no_cluster() {
        let ca = new_ca(Duration::from_secs(3600)).unwrap();
        let peer = peer_cert(&ca, "mesh.local", "hub-1", Duration::from_secs(600)).unwrap();
        let der = first_cert_der(&peer.cert);
        use tether_proto::identity::{cluster_from_cert, hub_peer_from_cert};
        assert_eq!(
            hub_peer_from_cert(&der, "mesh.local").as_deref(),
            Some("hub-1")
        );
        assert_eq!(hub_peer_from_cert(&der, "other.local"), None);
        assert!(cluster_from_cert(&der, "mesh.local").is_err());
        let istiod = first_cert_der(&istiod_cert(&ca, Duration::from_secs(600)).unwrap().cert);
        assert_eq!(hub_peer_from_cert(&istiod, "mesh.local"), None);
        let agent = agent_cert(&ca, "remote-1", "mesh.local", Duration::from_secs(600)).unwrap();
        assert_eq!(
            hub_peer_from_cert(&first_cert_der(&agent.cert), "mesh.local"),
            None
        );
    }

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_replace_a_ca() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        init(
            &dir,
            &["tether-hub.istio-system.svc".into()],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap();
        let mode = std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            init(&dir, &[], &[], Duration::from_secs(1)),
            Err(CertError::Exists(_))
        ));
        assert!(load_ca(&dir).is_ok());
    }

    fn first_cert_der(pem: &str) -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.pem");
        write(&path, pem, false).unwrap();
        tether_proto::tls::load_certs(&path)
            .unwrap()
            .remove(0)
            .to_vec()
    }
}
