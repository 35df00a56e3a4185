//! The `tether.sync.v1.Sync` service: one bidirectional stream per agent. It reads desired state
//! through [`Discovery`] (never the index type) and records what agents answer on [`Streams`]; it
//! never talks to Kubernetes.
//!
//! ```text
//!  peer cert ─identity─► cluster ── Hello must agree ──► Discovery::subscribe(cluster) ── admit (one agent)
//!  watch::Receiver<Desired> ─latest wins─► Outbox ─(window not full)─► Snapshot/Retire ─► agent
//!  agent ─► Ack/Nack/Retired ─► Outbox::answer ─► Streams (named mutators), metrics
//! ```
//! Paced by the agent's answers: at most [`WINDOW`](crate::outbox::WINDOW) messages are in flight
//! per stream (the state being applied and the newest behind it). An idle stream sends at once; a
//! busy or slow one (churn, a thin link, a slow remote API server) gets only the newest state when it
//! answers, instead of a queue of states that are stale on arrival.

use crate::desired::Desired;
use crate::index::Discovery;
use crate::metrics::{HubMetrics, Reason};
use crate::outbox::{Answer, Outbox, Superseded};
use crate::streams::{Nacked, Streams};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_proto::v1::sync_server::Sync;
use tether_proto::v1::{AgentMessage, Hello, HubMessage, Reconnect, agent_message, hub_message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream with its window full waits for an answer before it sends a newer state anyway.
/// The agent answers every snapshot it applies (a NACK when it fails), and one it cut short for a
/// newer one through the newer one's answer, so this only matters for a stuck agent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SyncService {
    discovery: Arc<dyn Discovery>,
    streams: Arc<Streams>,
    /// The serving stream of each cluster (one agent at a time).
    serving: Arc<Mutex<HashMap<String, Serving>>>,
    trust_domain: String,
    /// Where RemoteClusters live, for error messages.
    namespace: String,
    next_stream: AtomicU64,
    shutdown: watch::Receiver<bool>,
    metrics: HubMetrics,
    moves: Moves,
}

/// When the hub asks an agent to move to a new stream (`Reconnect`, make before break): once a
/// stream is `max_age` old (less up to a tenth, at random, so the streams of one start do not move
/// together) and when the hub shuts down. A stream whose agent has not moved `drain` after the ask is
/// closed.
#[derive(Clone, Copy, Debug)]
pub struct Moves {
    pub max_age: Option<Duration>,
    pub drain: Duration,
}

impl Default for Moves {
    fn default() -> Self {
        Self {
            max_age: None,
            drain: Duration::from_secs(10),
        }
    }
}

/// `age` less up to a tenth, at random.
fn jittered_age(age: Duration) -> Duration {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let fraction = (r % 10_000) as f64 / 10_000.0;
    age.mul_f64(1.0 - 0.1 * fraction)
}

/// The stream that serves a cluster now.
struct Serving {
    id: u64,
    instance: String,
    peer: String,
    since: Timestamp,
    /// Closes that stream, with the status its agent reads.
    kick: oneshot::Sender<Status>,
}

impl SyncService {
    pub fn new(
        discovery: Arc<dyn Discovery>,
        streams: Arc<Streams>,
        trust_domain: String,
        namespace: String,
        shutdown: watch::Receiver<bool>,
        metrics: HubMetrics,
    ) -> Self {
        Self {
            discovery,
            streams,
            serving: Default::default(),
            trust_domain,
            namespace,
            next_stream: AtomicU64::new(1),
            shutdown,
            metrics,
            moves: Moves::default(),
        }
    }

    pub fn with_moves(mut self, moves: Moves) -> Self {
        self.moves = moves;
        self
    }

    /// Counts a refusal by reason and returns the status to send.
    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.metrics
            .streams_refused
            .get_or_create(&Reason::of(reason))
            .inc();
        status
    }

    fn identify<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        tether_proto::identity::cluster_from_cert(leaf.as_ref(), &self.trust_domain)
            .map_err(|e| Status::permission_denied(e.to_string()))
    }

    async fn hello(&self, inbound: &mut Streaming<AgentMessage>) -> Result<Hello, Status> {
        let refused = |status| Err(self.refuse("no_hello", status));
        match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => refused(Status::deadline_exceeded("no Hello within 10s")),
            Ok(Err(status)) => refused(status),
            Ok(Ok(None)) => refused(Status::cancelled("stream closed before Hello")),
            Ok(Ok(Some(AgentMessage {
                message: Some(agent_message::Message::Hello(h)),
            }))) => Ok(h),
            Ok(Ok(Some(_))) => refused(Status::invalid_argument("the first message must be Hello")),
        }
    }

    /// One agent serves a cluster at a time. A new stream replaces the serving one (a restarted or
    /// reconnecting agent, or a rollout's new pod, never waits for the old connection to time out);
    /// the replaced agent stands by and comes back as a standby, which is refused while another
    /// agent serves: two live agents with one identity settle into one serving, one refused, and the
    /// refusal is what status reports. Returns the receiver that tells this stream it was replaced.
    fn admit(
        &self,
        cluster: &str,
        id: u64,
        hello: &Hello,
        peer: &str,
    ) -> Result<oneshot::Receiver<Status>, Status> {
        let mut serving = self.serving.lock().expect("serving lock");
        if let Some(current) = serving.get(cluster)
            && hello.standby
            && current.instance != hello.instance
        {
            let msg = format!(
                "two agents share the identity of cluster {cluster:?}: agent {} from {} serves it since {}; this agent ({}, from {peer}) stands by. Stop one of them: each cluster needs its own name and certificate",
                current.instance, current.peer, current.since, hello.instance
            );
            warn!(%cluster, %peer, instance = %hello.instance, serving = %current.instance, serving_peer = %current.peer,
                "two agents share the identity of one cluster; refusing the standby");
            self.streams
                .duplicate_refused(cluster, peer, &hello.instance);
            return Err(self.refuse("duplicate", Status::already_exists(msg)));
        }
        let (kick, kicked) = oneshot::channel();
        let new = Serving {
            id,
            instance: hello.instance.clone(),
            peer: peer.to_string(),
            since: Timestamp::now(),
            kick,
        };
        if let Some(old) = serving.insert(cluster.to_string(), new) {
            if old.instance != hello.instance {
                info!(%cluster, replaced = %old.instance, replaced_peer = %old.peer, by = %hello.instance, by_peer = %peer,
                    "another agent of this cluster connected; the previous one stands by");
            }
            // Its own newer stream (a move, or a reconnect over a connection that died unnoticed)
            // is no rival: ABORTED would make it stand by.
            let status = if old.instance == hello.instance {
                Status::unavailable("this agent moved to a newer stream")
            } else {
                Status::aborted(format!(
                    "replaced by a newer stream of cluster {cluster:?} (agent {} from {peer})",
                    hello.instance
                ))
            };
            let _ = old.kick.send(status);
        }
        Ok(kicked)
    }
}

#[tonic::async_trait]
impl Sync for SyncService {
    type StreamStream =
        futures::stream::Map<ReceiverStream<Outgoing>, fn(Outgoing) -> Result<HubMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let cluster = self
            .identify(&req)
            .inspect_err(|e| warn!(%peer, error = %e.message(), "stream refused"))
            .map_err(|e| self.refuse("bad_certificate", e))?;
        let cert_not_after = req
            .peer_certs()
            .and_then(|c| {
                c.first()
                    .and_then(|leaf| tether_proto::identity::not_after(leaf))
            })
            .and_then(|secs| Timestamp::from_second(secs).ok());
        let mut inbound = req.into_inner();
        let hello = self.hello(&mut inbound).await?;
        if hello.cluster != cluster {
            let msg = format!(
                "client certificate identifies cluster {cluster:?} but Hello names {:?}; check the agent's --cluster",
                hello.cluster
            );
            warn!(%cluster, %peer, "{msg}");
            return Err(self.refuse("identity_mismatch", Status::permission_denied(msg)));
        }
        if !self.discovery.ready() {
            return Err(self.refuse(
                "not_ready",
                Status::unavailable("hub is starting (watches not synced yet); retry shortly"),
            ));
        }
        let Some(desired) = self.discovery.subscribe(&cluster) else {
            let msg = format!(
                "no RemoteCluster {cluster:?} in namespace {:?}; create it with `tether-hub join {cluster}`",
                self.namespace
            );
            warn!(%cluster, %peer, "{msg}");
            return Err(self.refuse("unknown_cluster", Status::permission_denied(msg)));
        };
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let kicked = self.admit(&cluster, id, &hello, &peer)?;
        let (tx, rx) = mpsc::channel(2);
        let current = desired.borrow().version().to_string();
        self.streams
            .connected(&cluster, &hello, &peer, cert_not_after, &current);
        info!(%cluster, stream = id, %peer, agent_version = %hello.agent_version, instance = %hello.instance, "agent connected");
        let stream = Stream {
            cluster: cluster.clone(),
            streams: self.streams.clone(),
            desired,
            inbound,
            tx,
            kicked,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            max_age: self.moves.max_age.map(jittered_age),
            drain: self.moves.drain,
        };
        let serving = self.serving.clone();
        let span = tracing::info_span!("stream", %cluster, stream = id);
        tokio::spawn(
            async move {
                stream.run().await;
                let mut serving = serving.lock().expect("serving lock");
                if serving.get(&cluster).is_some_and(|s| s.id == id) {
                    serving.remove(&cluster);
                }
            }
            .instrument(span),
        );
        let unbox: fn(Outgoing) -> Result<HubMessage, Status> = |m| *m;
        Ok(Response::new(ReceiverStream::new(rx).map(unbox)))
    }
}

/// What a stream's task hands to its response body. Boxed: the channel allocates its slots in
/// blocks of 32 whatever its capacity, and 32 unboxed messages were 4.9 KiB per stream (49 MiB of
/// heap at 10,000).
type Outgoing = Box<Result<HubMessage, Status>>;

struct Stream {
    cluster: String,
    streams: Arc<Streams>,
    desired: watch::Receiver<Arc<Desired>>,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Outgoing>,
    /// Resolves when a newer stream of the same cluster replaced this one.
    kicked: oneshot::Receiver<Status>,
    shutdown: watch::Receiver<bool>,
    metrics: HubMetrics,
    /// Ask the agent to move after this long.
    max_age: Option<Duration>,
    drain: Duration,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Stream {
    async fn run(self) {
        let Stream {
            cluster,
            streams,
            mut desired,
            mut inbound,
            tx,
            mut kicked,
            mut shutdown,
            metrics,
            max_age,
            drain,
        } = self;
        metrics.streams_connected.inc();
        // One timer for the stream's life: made anew on every turn of the loop (several per change),
        // it would be put into the runtime's timer wheel and taken out again each time. Without a
        // maximum age its branch stays off, so the timer is never polled.
        let mut aging = max_age.is_some();
        let aged = tokio::time::sleep(max_age.unwrap_or(Duration::MAX));
        tokio::pin!(aged);
        // Asked to move: closed then if the agent has not.
        let mut moving: Option<Instant> = None;
        // Not from the current value: a stream admitted after the hub began to drain sees the change
        // as new (its receiver has not seen it) and is asked to move at once.
        let mut draining = false;
        let ask = |why: &'static str| {
            let m = HubMessage {
                message: Some(hub_message::Message::Reconnect(Reconnect {
                    reason: why.into(),
                })),
            };
            let tx = tx.clone();
            async move {
                info!(why, "asking the agent to move to a new stream");
                tokio::time::timeout(drain, tx.send(Box::new(Ok(m))))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            }
        };
        let mut out = Outbox::default();
        let mut history = Superseded::default();
        history.desired(desired.borrow().version(), Timestamp::now());
        let mut next: Option<HubMessage> = out.message_for(&desired.borrow_and_update().clone());
        out.first_message_is_no_change();
        let reason = loop {
            let stalled = out.window_full_since().map(|t| t + ANSWER_TIMEOUT);
            tokio::select! {
                changed = desired.changed() => match changed {
                    Ok(()) => {
                        let d = desired.borrow_and_update().clone();
                        history.desired(d.version(), Timestamp::now());
                        // Latest wins: a newer state replaces one not yet sent.
                        if let Some(m) = out.message_for(&d)
                            && let Some(old) = next.replace(m)
                        {
                            out.superseded(&old, next.as_ref().expect("just set"));
                        }
                    }
                    Err(_) => {
                        let gone = Status::permission_denied("RemoteCluster deleted");
                        let _ = tx.send(Box::new(Err(gone))).await;
                        break "RemoteCluster deleted";
                    }
                },
                permit = tx.reserve(), if next.is_some() && stalled.is_none() => match permit {
                    Ok(permit) => {
                        let msg = next.take().expect("guarded");
                        match &msg.message {
                            Some(hub_message::Message::Snapshot(s)) => {
                                debug!(version = %s.version, nonce = %s.nonce, "sending snapshot");
                                metrics.snapshots_pushed.inc();
                            }
                            Some(hub_message::Message::Retire(r)) => debug!(nonce = %r.nonce, "sending Retire"),
                            Some(hub_message::Message::Reconnect(_)) | None => {}
                        }
                        out.mark_sent(&msg);
                        permit.send(Box::new(Ok(msg)));
                    }
                    Err(_) => break "agent went away",
                },
                _ = tokio::time::sleep_until(stalled.unwrap_or_else(Instant::now).into()),
                    if next.is_some() && stalled.is_some() => {
                    warn!(timeout = ?ANSWER_TIMEOUT, "agent has not answered; sending the newer state anyway");
                    out.give_up_waiting();
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => record(out.answer(m), &streams, &cluster, &history, &metrics),
                    Ok(None) => break "agent closed the stream",
                    Err(status) => {
                        debug!(error = %status, "inbound error");
                        break "stream error";
                    }
                },
                Ok(status) = &mut kicked => {
                    let _ = tx.send(Box::new(Err(status))).await;
                    break "replaced by a newer stream";
                }
                () = &mut aged, if aging && moving.is_none() => {
                    aging = false;
                    if ask("maximum connection age").await.is_none() {
                        break "agent not reading";
                    }
                    metrics.streams_moved.get_or_create(&Reason::of("max_age")).inc();
                    moving = Some(Instant::now() + drain);
                }
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                    if moving.is_none() {
                        if ask("hub shutting down").await.is_none() {
                            break "agent not reading";
                        }
                        metrics.streams_moved.get_or_create(&Reason::of("drain")).inc();
                        moving = Some(Instant::now() + drain);
                    }
                }
                _ = sleep_until(moving), if moving.is_some() => {
                    let why = "the hub asked this agent to move to a new stream and it did not; closing this one";
                    let _ = tx.send(Box::new(Err(Status::unavailable(why)))).await;
                    break "did not move in time";
                }
            }
        };
        streams.disconnected(&cluster);
        metrics.streams_connected.dec();
        info!(reason, "agent disconnected");
    }
}

/// Applies what an agent's answer means to the remote's stream state and the metrics.
fn record(
    answer: Answer,
    streams: &Streams,
    cluster: &str,
    history: &Superseded,
    metrics: &HubMetrics,
) {
    match answer {
        Answer::Acked {
            version,
            push_ack,
            propagation,
        } => {
            debug!(%version, "agent acked");
            metrics.acks.inc();
            if let Some(d) = push_ack {
                metrics.push_ack_seconds.observe(d.as_secs_f64());
            }
            if let Some(d) = propagation {
                metrics.propagation_seconds.observe(d.as_secs_f64());
            }
            let held_until = history.held_until(&version, Timestamp::now());
            streams.acked(cluster, &version, held_until);
        }
        Answer::Nacked {
            version,
            message,
            conflict,
        } => {
            let reason = if conflict { "conflict" } else { "rejected" };
            metrics.nacks.get_or_create(&Reason::of(reason)).inc();
            warn!(%version, %message, "agent rejected snapshot");
            let at = Timestamp::now();
            streams.nacked(
                cluster,
                Nacked {
                    version,
                    message,
                    at,
                    conflict,
                },
            );
        }
        Answer::Retired => {
            info!("agent retired: it removed everything it managed");
            streams.retired(cluster);
        }
        Answer::RetireFailed { message } => {
            warn!(%message, "agent could not remove everything yet; it keeps trying")
        }
        Answer::Tunnel { up } => {
            debug!(up, "agent's API-access tunnel");
            streams.tunnel(cluster, up);
        }
        Answer::Ignored(what) => warn!("ignored {what}"),
    }
}
