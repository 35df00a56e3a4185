//! API access with several replicas: istiod's request for a remote whose agent dialled another
//! replica is passed on to that replica's API endpoint, which sends it down the tunnel it holds.
//!
//! ```text
//!  istiod ─► replica A: no tunnel for X ─► the replica that had X last, then the others alive
//!            (peer certificate from the API-access CA)      │
//!                                                            ▼
//!                                 replica B: X's tunnel here? ─► down it, answer streams back
//!                                            none ─► 503 + `tether-no-tunnel` at once (never
//!                                                    passed on again)
//! ```
//! Each replica learns the others' endpoints from their Leases (`tether.io/api-peer`). It opens
//! one HTTP/2 connection per (replica, remote), as istiod opens one per remote: a remote whose
//! watches istiod stops reading holds back only its own flow-control window. A connection is kept
//! (HTTP/2 pings) until it fails or its replica goes; a failed one is dialled again on next use.

use crate::certs::Pem;
use crate::lease::Membership;
use crate::tunnels::{STREAM_WINDOW, connection_window};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info};

/// Header of a replica's answer when it does not hold the remote's tunnel.
pub const NO_TUNNEL: &str = "tether-no-tunnel";

type Sender = SendRequest<Full<Bytes>>;

pub struct Peers {
    membership: Arc<Membership>,
    tls: tokio_rustls::TlsConnector,
    /// The name every replica's serving certificate carries (the advertised host).
    server_name: ServerName<'static>,
    /// Requests in flight per remote (sizes the connection window, as for tunnels).
    max_streams: usize,
    conns: Mutex<HashMap<(String, String), Sender>>,
    /// The replica whose endpoint last answered for each remote: asked first next time.
    last: Mutex<HashMap<String, String>>,
}

impl Peers {
    /// `ca`: the API-access CA (trusted for the peers' serving certificates); `me`: this replica's
    /// client certificate from it ([`crate::certs::peer_cert`]).
    pub fn new(
        membership: Arc<Membership>,
        ca: &str,
        me: &Pem,
        server_name: ServerName<'static>,
        max_streams: usize,
    ) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c?)?;
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(me.cert.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(me.key.as_bytes())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            membership,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            max_streams,
            conns: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
        })
    }

    /// Sends the request `make(base)` builds (`base`: a replica's URL) to the replica that holds
    /// `cluster`'s tunnel: the one that answered last first, then the other live ones. None when
    /// no replica holds it now.
    pub async fn send(
        &self,
        cluster: &str,
        make: impl Fn(&str) -> http::Request<Full<Bytes>>,
    ) -> Option<http::Response<Incoming>> {
        let mut peers = self.membership.peers();
        let last = self.last.lock().expect("peers lock").get(cluster).cloned();
        if let Some(last) = last {
            peers.sort_by_key(|(id, _)| *id != last);
        }
        for (id, url) in peers {
            let answer = async {
                let mut sender = self.connection(&url, cluster).await?;
                sender.ready().await?;
                anyhow::Ok(sender.send_request(make(&url)).await?)
            }
            .await;
            match answer {
                Ok(response) if response.headers().contains_key(NO_TUNNEL) => continue,
                Ok(response) => {
                    self.last
                        .lock()
                        .expect("peers lock")
                        .insert(cluster.to_string(), id);
                    return Some(response);
                }
                Err(error) => {
                    debug!(peer = %id, %url, %cluster, %error, "API access: a peer replica did not answer");
                    self.conns
                        .lock()
                        .expect("peers lock")
                        .remove(&(url.clone(), cluster.to_string()));
                }
            }
        }
        None
    }

    /// The connection to `url` for `cluster`'s requests, dialled if there is none.
    async fn connection(&self, url: &str, cluster: &str) -> anyhow::Result<Sender> {
        let key = (url.to_string(), cluster.to_string());
        if let Some(s) = self.conns.lock().expect("peers lock").get(&key)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let addr = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("{url}: not an https:// URL"))?
            .trim_end_matches('/');
        let tcp =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await??;
        tcp.set_nodelay(true)?;
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await??;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(connection_window(self.max_streams))
            .handshake(TokioIo::new(tls))
            .await?;
        info!(peer = %url, %cluster, "API access: connected to a peer replica");
        let (peer, remote) = (url.to_string(), cluster.to_string());
        tokio::spawn(async move {
            let result = connection.await;
            debug!(%peer, cluster = %remote, result = ?result.err(), "API access: peer connection ended");
        });
        let mut conns = self.conns.lock().expect("peers lock");
        // Connections to replicas that are gone end; their entries go when the next one is dialled.
        conns.retain(|_, s| !s.is_closed());
        conns.insert(key, sender.clone());
        Ok(sender)
    }
}
