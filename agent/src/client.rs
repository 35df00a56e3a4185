//! The stream client, in three levels (as ztunnel's xDS client): [`run`] loops forever;
//! `run_loop` classifies each failure and sleeps with jittered exponential backoff (reset after a
//! healthy stream); `run_internal` is one connection, in its own span.
//!
//! ```text
//!  TLS (fresh config per connect) ─► h2 ─► Sync.Stream
//!     Hello ─►                 ◄─ Snapshot/Retire ──► commands (watch, latest wins) ──► reconciler
//!     Ack/Nack ◄── results (mpsc) ◄──────────────────────────────────────────────────────┘
//! ```

use crate::metrics::{AgentMetrics, Reason};
use crate::reconcile::{Applied, Command, State};
use backoff::backoff::Backoff;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::tls::{TlsFiles, client_config};
use tether_proto::v1::sync_client::SyncClient;
use tether_proto::v1::{Ack, AgentMessage, Hello, Nack, agent_message, hub_message};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Endpoint, Uri};
use tracing::{Instrument, debug, info, warn};

#[derive(Clone, Debug)]
pub struct Settings {
    pub cluster: String,
    /// host:port of the hub.
    pub hub_addr: String,
    /// Name to verify in the hub's certificate; default: the host of `hub_addr`.
    pub server_name: Option<String>,
    pub tls: TlsFiles,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_message_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("TLS files: {0}")]
    Tls(#[from] tether_proto::tls::TlsError),
    #[error(
        "connecting to the hub at {addr}: {source} (is the hub address reachable from this cluster?)"
    )]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("hub refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("stream broke: {0}")]
    Broken(tonic::Status),
    #[error("hub closed the stream")]
    Closed,
}

impl StreamError {
    fn reason(&self) -> &'static str {
        match self {
            StreamError::Tls(_) => "tls_files",
            StreamError::Connect { .. } => "connect",
            StreamError::Refused(s) if s.code() == tonic::Code::PermissionDenied => {
                "permission_denied"
            }
            StreamError::Refused(_) => "refused",
            StreamError::Broken(_) => "broken",
            StreamError::Closed => "closed",
        }
    }
}

/// Runs the stream forever, reconnecting.
pub async fn run(
    s: Settings,
    commands: watch::Sender<Option<Command>>,
    mut results: mpsc::Receiver<Applied>,
    state: watch::Receiver<State>,
    metrics: AgentMetrics,
) {
    let mut backoff = backoff::ExponentialBackoff {
        initial_interval: s.backoff_initial,
        max_interval: s.backoff_max,
        multiplier: 2.0,
        randomization_factor: 0.5,
        max_elapsed_time: None,
        ..Default::default()
    };
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let span = tracing::info_span!("stream", cluster = %s.cluster, attempt);
        let result = run_internal(&s, &commands, &mut results, &state, &metrics)
            .instrument(span)
            .await;
        metrics.connected.set(0);
        let reason = match &result {
            Ok(_) => "closed",
            Err(e) => e.reason(),
        };
        metrics
            .reconnects
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
        run_loop_wait(result, &mut backoff).await;
    }
}

/// Classifies how a connection ended and waits before the next one.
async fn run_loop_wait(
    result: Result<bool, StreamError>,
    backoff: &mut backoff::ExponentialBackoff,
) {
    let (healthy, error) = match result {
        Ok(healthy) => (healthy, StreamError::Closed),
        Err(e) => (false, e),
    };
    if healthy {
        // The stream worked: the next failure starts the backoff over.
        backoff.reset();
    }
    let delay = backoff.next_backoff().unwrap_or(backoff.max_interval);
    match &error {
        StreamError::Closed if healthy => info!(?delay, "hub closed the stream; reconnecting"),
        StreamError::Refused(status) => {
            warn!(reason = error.reason(), message = %status.message(), ?delay, "hub refused this agent")
        }
        _ => warn!(reason = error.reason(), %error, ?delay, "stream ended; reconnecting"),
    }
    tokio::time::sleep(delay).await;
}

/// One connection. Ok(true) when the stream was healthy (a snapshot answered) before it ended.
async fn run_internal(
    s: &Settings,
    commands: &watch::Sender<Option<Command>>,
    results: &mut mpsc::Receiver<Applied>,
    state: &watch::Receiver<State>,
    metrics: &AgentMetrics,
) -> Result<bool, StreamError> {
    let channel = connect(s).await?;
    let mut client = SyncClient::new(channel)
        .max_decoding_message_size(s.max_message_bytes)
        .max_encoding_message_size(s.max_message_bytes);
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(8);
    let applied_version = state.borrow().applied_version.clone();
    let hello = Hello {
        cluster: s.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        applied_version,
    };
    out_tx
        .send(msg(agent_message::Message::Hello(hello)))
        .await
        .expect("fresh channel");
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(StreamError::Refused)?
        .into_inner();
    info!(hub = %s.hub_addr, "connected");
    metrics.connected.set(1);
    // Answers for a previous connection are stale: the hub resends on this one.
    while results.try_recv().is_ok() {}
    let mut healthy = false;
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => match m.message {
                    Some(hub_message::Message::Snapshot(snap)) => {
                        debug!(version = %snap.version, nonce = %snap.nonce, "snapshot");
                        commands.send_replace(Some(Command::Apply(Arc::new(snap))));
                    }
                    Some(hub_message::Message::Retire(r)) => {
                        warn!(reason = %r.reason, "hub retired this cluster; removing everything this agent manages");
                        commands.send_replace(Some(Command::Retire { nonce: r.nonce }));
                    }
                    None => warn!("empty message from the hub; ignored"),
                },
                Ok(None) => return Ok(healthy),
                Err(status) if !healthy && status.code() == tonic::Code::PermissionDenied => return Err(StreamError::Refused(status)),
                Err(status) => return if healthy { Ok(true) } else { Err(StreamError::Broken(status)) },
            },
            Some(done) = results.recv() => {
                let m = if done.failures.is_empty() {
                    agent_message::Message::Ack(Ack { version: done.version, nonce: done.nonce })
                } else {
                    let detail = format!("{} object(s) not applied", done.failures.len());
                    agent_message::Message::Nack(Nack { version: done.version, nonce: done.nonce, error_detail: detail, failures: done.failures })
                };
                if out_tx.send(msg(m)).await.is_err() {
                    return Ok(healthy);
                }
                healthy = true;
            }
        }
    }
}

fn msg(m: agent_message::Message) -> AgentMessage {
    AgentMessage { message: Some(m) }
}

/// Dials the hub over TLS with a config built from the files now on disk (so rotated certificates are
/// used by the next connection).
pub async fn connect(s: &Settings) -> Result<tonic::transport::Channel, StreamError> {
    let config = Arc::new(client_config(&s.tls)?);
    let addr = s.hub_addr.clone();
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&addr)
        .trim_matches(['[', ']'])
        .to_string();
    let server_name = s.server_name.clone().unwrap_or(host);
    let connector = tower::service_fn(move |_: Uri| {
        let (config, addr, server_name) = (config.clone(), addr.clone(), server_name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(server_name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    // The scheme is only a placeholder: TLS is done by the connector above.
    Endpoint::from_shared(format!("http://{}", s.hub_addr))
        .map_err(|source| StreamError::Connect {
            addr: s.hub_addr.clone(),
            source,
        })?
        .connect_timeout(s.connect_timeout)
        .http2_keep_alive_interval(s.keepalive_interval)
        .keep_alive_timeout(s.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_with_connector(connector)
        .await
        .map_err(|source| StreamError::Connect {
            addr: s.hub_addr.clone(),
            source,
        })
}
