//! The agents' tunnel connections (API access): one HTTP/2 client per remote, over the connection
//! the agent dialled. The accept loop hands each connection that chose the tunnel protocol here; the
//! API proxy takes a sender out to forward istiod's requests.
//!
//! A newer connection from the same remote replaces the older one (the old one's requests finish on
//! it). A request for a remote whose tunnel is down waits a short bound for it to come back, so that
//! a brief agent reconnect is not an error that puts istiod's watches into a long backoff.

use crate::changes::Changes;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

pub type Sender = SendRequest<Full<Bytes>>;

/// What the hub takes in of one answer (a watch, say) before its reader (istiod) reads it: HTTP/2
/// flow control holds the rest back at the agent, which holds back its API server.
pub const STREAM_WINDOW: u32 = 256 << 10;
type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

struct Tunnel {
    id: u64,
    sender: Sender,
}

/// Every remote's tunnel.
pub struct Tunnels {
    trust_domain: String,
    keepalive: Duration,
    /// Requests in flight per remote: the connection window lets that many answers stall at once
    /// without stalling the others.
    max_streams: usize,
    tunnels: Mutex<HashMap<String, Tunnel>>,
    next_id: AtomicU64,
    /// Bumped whenever a tunnel comes or goes.
    changed: watch::Sender<u64>,
    /// Marks the remote for the status writer when its tunnel comes or goes.
    status: Arc<Changes>,
    /// Tunnels up (a metric).
    up: prometheus_client::metrics::gauge::Gauge,
}

impl Tunnels {
    pub fn new(
        trust_domain: String,
        keepalive: Duration,
        max_streams: usize,
        status: Arc<Changes>,
        up: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        Self {
            status,
            up,
            trust_domain,
            keepalive,
            max_streams,
            tunnels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }

    /// Takes over an accepted connection: the agent's identity from its certificate, then the
    /// HTTP/2 handshake (the hub is the client), kept until the connection ends.
    pub async fn attach(self: Arc<Self>, stream: Stream) {
        let peer = stream.get_ref().0.peer_addr().ok();
        let cluster = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_string())
            .and_then(|der| {
                tether_proto::identity::cluster_from_cert(der.as_ref(), &self.trust_domain)
                    .map_err(|e| e.to_string())
            });
        let cluster = match cluster {
            Ok(c) => c,
            Err(error) => {
                warn!(?peer, %error, "API-access tunnel refused: no agent identity");
                return;
            }
        };
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(
                (self.max_streams.max(1) as u32).saturating_mul(STREAM_WINDOW),
            )
            .handshake(TokioIo::new(stream))
            .await;
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%cluster, ?peer, %error, "API-access tunnel handshake failed");
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.tunnels
            .lock()
            .expect("tunnels lock")
            .insert(cluster.clone(), Tunnel { id, sender });
        self.changed.send_modify(|n| *n += 1);
        self.status.mark(&cluster);
        self.up.inc();
        info!(%cluster, ?peer, "API-access tunnel up");
        let result = connection.await;
        self.up.dec();
        let mut tunnels = self.tunnels.lock().expect("tunnels lock");
        if tunnels.get(&cluster).is_some_and(|t| t.id == id) {
            tunnels.remove(&cluster);
        }
        drop(tunnels);
        self.changed.send_modify(|n| *n += 1);
        self.status.mark(&cluster);
        info!(%cluster, ?peer, result = ?result.err(), "API-access tunnel down");
    }

    /// Whether `cluster`'s tunnel is up now.
    pub fn is_up(&self, cluster: &str) -> bool {
        self.tunnels
            .lock()
            .expect("tunnels lock")
            .get(cluster)
            .is_some_and(|t| !t.sender.is_closed())
    }

    /// `cluster`'s tunnel, waiting up to `hold` for one to come up.
    pub async fn get(&self, cluster: &str, hold: Duration) -> Option<Sender> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            if let Some(t) = self.tunnels.lock().expect("tunnels lock").get(cluster)
                && !t.sender.is_closed()
            {
                return Some(t.sender.clone());
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Remotes with a tunnel up.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tunnels
            .lock()
            .expect("tunnels lock")
            .iter()
            .filter(|(_, t)| !t.sender.is_closed())
            .map(|(c, _)| c.clone())
            .collect();
        v.sort();
        v
    }
}
