//! rustls configurations for both ends: TLS 1.3 only, ALPN h2, the client certificate required and
//! verified against the hub CA. Certificates are files (Secret volumes) and are re-read when they change:
//! the server takes its config per handshake from a [`ReloadingServerConfig`], the client builds a fresh
//! config on every connect.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source} (is the certificate Secret mounted?)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: malformed PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(
        "{path}: the certificate expired at {not_after}; mint a new one (`tether-hub join` for an agent)"
    )]
    Expired { path: PathBuf, not_after: String },
}

/// (modified time, size, inode) of each file, as last loaded; None where a file was unreadable.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

/// Where one side's certificate, key and trusted CA live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `tls.crt`, `tls.key` and `ca.crt` in `dir`: the layout of a Kubernetes TLS Secret volume.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: dir.join("ca.crt"),
        }
    }

    fn stamp(&self) -> Stamp {
        // metadata() follows symlinks, so a Secret volume's `..data` swap shows as new files (inodes).
        use std::os::unix::fs::MetadataExt;
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
            })
            .collect()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_path_buf(),
            what: "private key",
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// ALPN of an agent's tunnel connection (API access): on it the roles flip, the hub is the HTTP/2
/// client and the agent the server. The sync stream's connection offers `h2`.
pub const TUNNEL_ALPN: &[u8] = b"tether-tunnel/1";

/// The hub's config: TLS 1.3, h2 (the sync stream) or the tunnel, a client certificate signed by
/// the CA required.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(&files.ca)?), provider())
            .build()?;
    let certs = load_certs(&files.cert)?;
    check_not_expired(&files.cert, &certs)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), TUNNEL_ALPN.to_vec()];
    Ok(config)
}

/// Refuses a leaf certificate whose validity has ended, so the operator reads "expired" here instead of
/// a handshake alert from the other side.
fn check_not_expired(path: &Path, certs: &[CertificateDer<'_>]) -> Result<(), TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some(leaf) = certs.first() else {
        return Ok(());
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Ok(());
    };
    let not_after = cert.validity().not_after;
    if not_after.timestamp() < x509_parser::time::ASN1Time::now().timestamp() {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_after: not_after.to_string(),
        });
    }
    Ok(())
}

/// The agent's config: TLS 1.3, h2, the hub verified against the CA, our certificate presented.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    check_not_expired(&files.cert, &certs)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(certs, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The agent's config for its tunnel connection: as [`client_config`], offering only the tunnel.
pub fn tunnel_client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let mut config = client_config(files)?;
    config.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
    Ok(config)
}

/// A server config that follows its files: [`current`](Self::current) per handshake, and
/// [`watch`](Self::watch) re-reads the files when they change. A bad replacement is logged and the
/// previous config kept, so a half-written Secret never takes the hub down.
pub struct ReloadingServerConfig {
    files: TlsFiles,
    state: RwLock<(Arc<ServerConfig>, Stamp)>,
}

impl ReloadingServerConfig {
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.stamp();
        let config = Arc::new(server_config(&files)?);
        Ok(Arc::new(Self {
            files,
            state: RwLock::new((config, stamp)),
        }))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.state.read().expect("tls lock").0.clone()
    }

    /// Re-reads the files if they changed since the last load. Returns true when a new config is in use.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = self.files.stamp();
        if self.state.read().expect("tls lock").1 == stamp {
            return false;
        }
        match server_config(&self.files) {
            Ok(config) => {
                *self.state.write().expect("tls lock") = (Arc::new(config), stamp);
                tracing::info!(cert = %self.files.cert.display(), "serving certificate reloaded");
                true
            }
            Err(error) => {
                // Remember the stamp so a broken file is reported once, not every tick.
                self.state.write().expect("tls lock").1 = stamp;
                tracing::warn!(%error, "new certificate files rejected; keeping the previous ones");
                false
            }
        }
    }

    /// Polls the files every `every` until the task is dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_files(dir: &Path, expired: bool) -> TlsFiles {
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        TlsFiles::in_dir(dir)
    }

    #[test]
    fn expired_certificate_is_refused_at_load_with_a_clear_reason() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_files(dir.path(), true);
        let err = client_config(&files).unwrap_err().to_string();
        assert!(err.contains("expired") && err.contains("tls.crt"), "{err}");
        assert!(server_config(&files).is_err());
        let good = write_files(dir.path(), false);
        client_config(&good).unwrap();
        server_config(&good).unwrap();
    }

    #[test]
    fn empty_and_malformed_pem_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        assert!(matches!(load_key(&empty), Err(TlsError::Empty { .. })));
        assert!(matches!(load_certs(&empty), Err(TlsError::Empty { .. })));
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_certs(&broken).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = client_config(&TlsFiles::in_dir(Path::new("/nonexistent/tls")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/tls/tls.crt") && err.contains("mounted"),
            "{err}"
        );
    }

    #[test]
    fn reload_picks_up_replaced_files_and_keeps_the_old_config_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_files(dir.path(), false);
        let reloading = ReloadingServerConfig::load(files).unwrap();
        let first = reloading.current();
        assert!(!reloading.reload_if_changed(), "nothing changed");
        std::thread::sleep(std::time::Duration::from_millis(10));
        write_files(dir.path(), false);
        assert!(reloading.reload_if_changed());
        assert!(!Arc::ptr_eq(&first, &reloading.current()));
        let second = reloading.current();
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        assert!(!reloading.reload_if_changed(), "a broken file is not taken");
        assert!(Arc::ptr_eq(&second, &reloading.current()));
    }
}
