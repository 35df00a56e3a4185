//! rustls configurations for both ends: TLS 1.3 only, ALPN h2, the client certificate required and
//! verified against the hub CA. Certificates are files (Secret volumes) and are re-read when they change:
//! the server takes its config per handshake from a [`ReloadingServerConfig`], the client builds a fresh
//! config on every connect.

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
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// (modified time, size) of each file, as last loaded; None where a file was unreadable.
type Stamp = Vec<Option<(SystemTime, u64)>>;

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
        // metadata() follows symlinks, so a Secret volume's `..data` swap shows as a new mtime/size.
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
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
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
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
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            path: path.to_path_buf(),
            what: "private key",
        })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The hub's config: TLS 1.3, h2, a client certificate signed by the CA required.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(&files.ca)?), provider())
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The agent's config: TLS 1.3, h2, the hub verified against the CA, our certificate presented.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
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
