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
/// flow control holds the rest back at the agent, which holds back its API server. Large enough
/// that a big answer (a LIST of thousands of pods) flows while the window updates make their way
/// back through two busy processes. A LIST of 5,000 pods through the agent took 1.30-1.36x the
/// direct time with 256 KiB (3 runs), 1.15-1.33x with 2 MiB (11 runs, median 1.26x).
/// (`TETHER_BENCH_ONLY=api`, section 6 of docs/benchmarks.md.)
pub const STREAM_WINDOW: u32 = 2 << 20;

/// The connection window per request allowed in flight: with many allowed (256 by default), the
/// bound on what one remote's answers can hold in the hub is this times their number (64 MiB).
const PER_REQUEST: u32 = 256 << 10;

/// Answers that may each fill their whole [`STREAM_WINDOW`] without holding up the remote's other
/// requests (all of them when fewer are allowed in flight).
const FULL_ANSWERS: u32 = 32;

/// The HTTP/2 connection window for `max_streams` requests in flight: what all of a remote's
/// answers can hold in the hub at once. Never less than the stream windows of
/// `min(max_streams, FULL_ANSWERS)` answers, so one stalled answer (a watch nobody reads) can never
/// take the whole window and stall the rest. At most HTTP/2's largest window (h2 panics above it).
pub fn connection_window(max_streams: usize) -> u32 {
    const HTTP2_MAX_WINDOW: u32 = (1 << 31) - 1;
    let n = u32::try_from(max_streams.max(1)).unwrap_or(u32::MAX);
    n.saturating_mul(PER_REQUEST)
        .max(n.min(FULL_ANSWERS) * STREAM_WINDOW)
        .min(HTTP2_MAX_WINDOW)
}
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
            .initial_connection_window_size(connection_window(self.max_streams))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_answer_never_takes_the_whole_connection_window() {
        // The default: the per-remote bound stays 64 MiB.
        assert_eq!(connection_window(256), 64 << 20);
        for n in [0, 1, 2, 8, 31, 32, 33, 100, 256, 1000] {
            let window = u64::from(connection_window(n));
            // Every allowed answer but one filled: the last still has its whole stream window,
            // up to FULL_ANSWERS - 1 stalled ones.
            let stalled = n.saturating_sub(1).min(FULL_ANSWERS as usize - 1) as u64;
            assert!(
                window >= (stalled + 1) * u64::from(STREAM_WINDOW),
                "{n} in flight: window {window}"
            );
        }
        assert_eq!(connection_window(8), 8 * STREAM_WINDOW);
        // A huge --api-max-in-flight stays within what HTTP/2 allows.
        assert_eq!(connection_window(usize::MAX), (1 << 31) - 1);
        assert_eq!(connection_window(100_000), (1 << 31) - 1);
    }
}
