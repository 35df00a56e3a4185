//! The stream client, in three levels (as ztunnel's xDS client): [`run`] loops forever;
//! `run_loop_wait` classifies each failure and sleeps with jittered exponential backoff (reset after
//! a healthy stream); `run_internal` is one connection, in its own span.
//!
//! One agent per cluster identity: when the hub says another agent with this identity took over
//! (ABORTED) or is connected (ALREADY_EXISTS, to a standby), this agent stands by: it stops applying
//! and repairing (its snapshot may be older than the other's), turns not ready, and asks again every
//! `standby_retry` as a standby, which the hub admits only when no other agent is connected.
//!
//! ```text
//!  TLS (fresh config per connect) ─► h2 ─► Sync.Stream
//!     Hello ─►                 ◄─ Snapshot/Retire ──► commands (watch, latest wins) ──► reconciler
//!     Ack/Nack ◄── results (mpsc) ◄──────────────────────────────────────────────────────┘
//! ```

use crate::metrics::{AgentMetrics, Reason};
use crate::reconcile::{Answer, Command, Progress};
use backoff::backoff::Backoff;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::tls::{TlsFiles, client_config};
use tether_proto::v1::sync_client::SyncClient;
use tether_proto::v1::{
    Ack, AgentMessage, Hello, HubMessage, Nack, ObjectFailure, Retired, TunnelState, agent_message,
    hub_message,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Endpoint, Uri};
use tracing::{Instrument, debug, error, info, warn};

#[derive(Clone, Debug)]
pub struct StreamConfig {
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
    /// How often an agent that another agent of the same identity replaced asks to serve again.
    pub standby_retry: Duration,
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
    #[error("another agent with this cluster's identity took over: {}", .0.message())]
    Replaced(tonic::Status),
    #[error("another agent with this cluster's identity is connected: {}", .0.message())]
    Duplicate(tonic::Status),
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
            StreamError::Replaced(_) => "replaced",
            StreamError::Duplicate(_) => "duplicate",
            StreamError::Broken(_) => "broken",
            StreamError::Closed => "closed",
        }
    }
}

/// A random name for this process, so the hub can tell a reconnect of the same agent from another
/// agent with the same identity.
fn instance_id() -> String {
    use std::hash::BuildHasher;
    let seed = (std::process::id(), std::time::SystemTime::now());
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(seed)
    )
}

/// Runs the stream forever, reconnecting.
pub async fn run(
    s: StreamConfig,
    commands: watch::Sender<Option<Command>>,
    mut results: mpsc::Receiver<Answer>,
    progress: watch::Receiver<Progress>,
    mut tunnel: Option<watch::Receiver<bool>>,
    metrics: AgentMetrics,
) {
    let mut backoff = tether_proto::runtime::retry::jittered(s.backoff_initial, s.backoff_max);
    let instance = instance_id();
    info!(%instance, "agent instance");
    let mut standby = false;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let span = tracing::info_span!("stream", cluster = %s.cluster, attempt);
        let hello = Hello {
            cluster: s.cluster.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            applied_version: progress.borrow().applied_version.clone(),
            instance: instance.clone(),
            standby,
        };
        let result = run_internal(
            &s,
            hello,
            &commands,
            &mut results,
            &progress,
            tunnel.as_mut(),
            &metrics,
        )
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
        standby = match &result {
            Err(StreamError::Replaced(_) | StreamError::Duplicate(_)) => {
                // The other agent's snapshot may be newer: applying or repairing with ours would
                // undo its work. Stand by until the hub lets this agent serve again.
                commands.send_replace(Some(Command::StandDown));
                true
            }
            // Admitted (even if the stream ended since): serving again.
            Ok(_) | Err(StreamError::Broken(_) | StreamError::Closed) => false,
            Err(_) => standby,
        };
        run_loop_wait(result, &mut backoff, s.standby_retry).await;
    }
}

/// Classifies how a connection ended and waits before the next one.
async fn run_loop_wait(
    result: Result<bool, StreamError>,
    backoff: &mut tether_proto::runtime::retry::Jittered,
    standby_retry: Duration,
) {
    let (healthy, error) = match result {
        Ok(healthy) => (healthy, StreamError::Closed),
        Err(e) => (false, e),
    };
    if healthy {
        // The stream worked: the next failure starts the backoff over.
        backoff.reset();
    }
    let delay = backoff.next_backoff().unwrap_or(backoff.longest());
    match &error {
        StreamError::Closed if healthy => info!(?delay, "hub closed the stream; reconnecting"),
        StreamError::Replaced(status) => {
            warn!(message = %status.message(), retry = ?standby_retry,
                "another agent with this cluster's identity took over; standing by (not applying or repairing) until it is gone")
        }
        StreamError::Duplicate(status) => {
            error!(message = %status.message(), retry = ?standby_retry,
                "two agents share this cluster's identity and the other one serves; standing by. Stop one of them: each cluster needs its own name and certificate")
        }
        StreamError::Refused(status) => {
            warn!(reason = error.reason(), message = %status.message(), ?delay, "hub refused this agent")
        }
        _ => warn!(reason = error.reason(), %error, ?delay, "stream ended; reconnecting"),
    }
    let delay = match &error {
        StreamError::Replaced(_) | StreamError::Duplicate(_) => standby_retry,
        _ => delay,
    };
    tokio::time::sleep(delay).await;
}

/// The longest wait between two tries to open the new stream of a move.
const MOVE_RETRY_MAX: Duration = Duration::from_secs(2);

type Opened = (tonic::Streaming<HubMessage>, mpsc::Sender<AgentMessage>);
/// A new stream being opened while the old one serves.
type Opening<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Opened, StreamError>> + Send + 'a>>;

/// After a move: answers for the old stream are stale (the hub resends on the new one).
fn settle_move(results: &mut mpsc::Receiver<Answer>, metrics: &AgentMetrics, hub: &str) {
    while results.try_recv().is_ok() {}
    metrics
        .reconnects
        .get_or_create(&Reason {
            reason: "moved".into(),
        })
        .inc();
    info!(%hub, "moved to a new stream");
}

/// The new stream of a move under way, once it is open (None: no move, or it failed).
async fn moved(moving: Option<Opening<'_>>) -> Option<Opened> {
    match moving?.await {
        Ok(opened) => Some(opened),
        Err(error) => {
            warn!(%error, "could not open the new stream");
            None
        }
    }
}

/// Opens the new stream of a move after `delay`, saying Hello with what the agent has applied by
/// then (the hub resumes from it).
fn open_move<'a>(
    s: &'a StreamConfig,
    hello: &Hello,
    progress: &'a watch::Receiver<Progress>,
    tunnel: Option<bool>,
    delay: Duration,
) -> Opening<'a> {
    let hello = Hello {
        standby: false,
        ..hello.clone()
    };
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        let hello = Hello {
            applied_version: progress.borrow().applied_version.clone(),
            ..hello
        };
        open(s, hello, tunnel).await
    })
}

/// Opens a stream and says Hello (then, with API access on, whether the tunnel is up); returns
/// once the hub admitted it.
async fn open(s: &StreamConfig, hello: Hello, tunnel: Option<bool>) -> Result<Opened, StreamError> {
    let channel = connect(s).await?;
    let mut client = SyncClient::new(channel)
        .max_decoding_message_size(s.max_message_bytes)
        .max_encoding_message_size(s.max_message_bytes);
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(8);
    out_tx
        .send(msg(agent_message::Message::Hello(hello)))
        .await
        .expect("fresh channel");
    if let Some(up) = tunnel {
        out_tx
            .send(msg(agent_message::Message::Tunnel(TunnelState { up })))
            .await
            .expect("fresh channel");
    }
    let inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::AlreadyExists => StreamError::Duplicate(status),
            _ => StreamError::Refused(status),
        })?
        .into_inner();
    Ok((inbound, out_tx))
}

/// One connection (and the streams it moves to when the hub asks). Ok(true) when the stream was
/// healthy (a snapshot answered) before it ended.
async fn run_internal(
    s: &StreamConfig,
    hello: Hello,
    commands: &watch::Sender<Option<Command>>,
    results: &mut mpsc::Receiver<Answer>,
    progress: &watch::Receiver<Progress>,
    mut tunnel: Option<&mut watch::Receiver<bool>>,
    metrics: &AgentMetrics,
) -> Result<bool, StreamError> {
    let tunnel_up = |t: &mut Option<&mut watch::Receiver<bool>>| {
        t.as_deref_mut().map(|t| *t.borrow_and_update())
    };
    let (mut inbound, mut out_tx) = open(s, hello.clone(), tunnel_up(&mut tunnel)).await?;
    info!(hub = %s.hub_addr, "connected");
    metrics.connected.set(1);
    // Answers for a previous connection are stale: the hub resends on this one.
    while results.try_recv().is_ok() {}
    let mut healthy = false;
    // The hub asked this agent to move: the new stream, opening while this one still serves.
    let mut moving: Option<Opening<'_>> = None;
    // A move has until the hub's drain timeout (10 s by default): tries stay a few seconds apart
    // at most, whatever the reconnect backoff's ceiling.
    let mut move_retry = tether_proto::runtime::retry::jittered(
        s.backoff_initial,
        s.backoff_max.min(MOVE_RETRY_MAX),
    );
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
                    Some(hub_message::Message::Reconnect(r)) if moving.is_none() => {
                        info!(reason = %r.reason, "the hub asks this agent to move; opening a new stream before closing this one");
                        move_retry.reset();
                        moving = Some(open_move(s, &hello, progress, tunnel_up(&mut tunnel), Duration::ZERO));
                    }
                    Some(hub_message::Message::Reconnect(_)) => {}
                    None => warn!("empty message from the hub; ignored"),
                },
                Ok(None) => {
                    let ended = Ok(healthy);
                    match moved(moving.take()).await {
                        Some((i, o)) => {
                            (inbound, out_tx) = (i, o);
                            settle_move(results, metrics, &s.hub_addr);
                        }
                        None => return ended,
                    }
                }
                Err(status) => {
                    let ended = match status.code() {
                        tonic::Code::Aborted => Err(StreamError::Replaced(status)),
                        tonic::Code::AlreadyExists => Err(StreamError::Duplicate(status)),
                        tonic::Code::PermissionDenied if !healthy => Err(StreamError::Refused(status)),
                        _ if healthy => Ok(true),
                        _ => Err(StreamError::Broken(status)),
                    };
                    // The hub may close the old stream before this end sees the new one admitted.
                    match moved(moving.take()).await {
                        Some((i, o)) => {
                            (inbound, out_tx) = (i, o);
                            settle_move(results, metrics, &s.hub_addr);
                        }
                        None => return ended,
                    }
                }
            },
            opened = async { moving.as_mut().expect("guarded").await }, if moving.is_some() => {
                moving = None;
                match opened {
                    // Dropping the old stream's halves closes it: the hub that asked sees it end.
                    Ok((new_inbound, new_out)) => (inbound, out_tx) = (new_inbound, new_out),
                    // The old stream serves on while the agent tries again: the new stream may have
                    // reached the replica that asked (draining, its listener closing) before the
                    // load balancer stopped sending there. If no try succeeds, the hub closes the old
                    // stream after its drain timeout and the agent reconnects as after any close.
                    Err(error) => {
                        let delay = move_retry.next_backoff().unwrap_or(move_retry.longest());
                        warn!(%error, ?delay, "could not open the new stream; staying on this one and trying again");
                        moving = Some(open_move(s, &hello, progress, tunnel_up(&mut tunnel), delay));
                        continue;
                    }
                }
                settle_move(results, metrics, &s.hub_addr);
            }
            Ok(()) = async { tunnel.as_deref_mut().expect("guarded").changed().await }, if tunnel.is_some() => {
                let up = *tunnel.as_deref_mut().expect("guarded").borrow_and_update();
                debug!(up, "API-access tunnel");
                if out_tx.send(msg(agent_message::Message::Tunnel(TunnelState { up }))).await.is_err() {
                    return Ok(healthy);
                }
            }
            Some(done) = results.recv() => {
                let m = match done {
                    Answer::Applied { version, nonce, failures } if failures.is_empty() => {
                        agent_message::Message::Ack(Ack { version, nonce })
                    }
                    Answer::Retired { nonce, failures } if failures.is_empty() => {
                        agent_message::Message::Retired(Retired { nonce })
                    }
                    Answer::Applied { version, nonce, failures } => nack(version, nonce, failures),
                    Answer::Retired { nonce, failures } => nack(String::new(), nonce, failures),
                };
                if out_tx.send(msg(m)).await.is_err() {
                    return Ok(healthy);
                }
                healthy = true;
            }
        }
    }
}

fn nack(version: String, nonce: String, failures: Vec<ObjectFailure>) -> agent_message::Message {
    let error_detail = format!("{} object(s) not applied", failures.len());
    agent_message::Message::Nack(Nack {
        version,
        nonce,
        error_detail,
        failures,
    })
}

fn msg(m: agent_message::Message) -> AgentMessage {
    AgentMessage { message: Some(m) }
}

/// Dials the hub over TLS with a config built from the files now on disk (so rotated certificates are
/// used by the next connection).
pub async fn connect(s: &StreamConfig) -> Result<tonic::transport::Channel, StreamError> {
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
