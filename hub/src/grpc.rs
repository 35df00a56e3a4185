//! The `tether.sync.v1.Sync` service: one bidirectional stream per agent. It reads desired state from
//! the index's watch channels and records ACK/NACK on the [`Board`]; it never talks to Kubernetes.
//!
//! ```text
//!  peer cert ─identity─► cluster ── Hello must agree ──► index.subscribe(cluster)
//!  watch::Receiver<Desired> ─latest wins─► next ─(nothing in flight)─► Snapshot/Retire ─► agent
//!  agent ─► Ack/Nack (nonce must be one we sent) ─► Board, and frees the stream for `next`
//! ```
//! Paced by the agent's answers: at most one message is in flight per stream. An idle stream sends at
//! once; a busy or slow one (churn, a thin link, a slow remote API server) gets only the newest state
//! when it answers, instead of a queue of states that are stale on arrival.

use crate::board::{Board, Nacked};
use crate::index::{Desired, Index};
use crate::metrics::{HubMetrics, Reason};
use k8s_openapi::jiff::Timestamp;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tether_proto::v1::sync_server::Sync;
use tether_proto::v1::{AgentMessage, Hello, HubMessage, Retire, agent_message, hub_message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent-but-unacknowledged snapshots remembered per stream (latest wins, so few are ever outstanding).
const MAX_OUTSTANDING: usize = 16;
/// How long a stream waits for the answer to its message in flight before it sends a newer state anyway.
/// The agent answers every snapshot (a NACK when it fails), so this only matters for a stuck agent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SyncService {
    index: Arc<RwLock<Index>>,
    board: Arc<Board>,
    /// The serving stream of each cluster (one agent at a time).
    serving: Arc<Mutex<HashMap<String, Serving>>>,
    trust_domain: String,
    /// Where RemoteClusters live, for error messages.
    namespace: String,
    next_stream: AtomicU64,
    shutdown: watch::Receiver<bool>,
    metrics: HubMetrics,
}

impl SyncService {
    pub fn new(
        index: Arc<RwLock<Index>>,
        board: Arc<Board>,
        trust_domain: String,
        namespace: String,
        shutdown: watch::Receiver<bool>,
        metrics: HubMetrics,
    ) -> Self {
        Self {
            index,
            board,
            serving: Default::default(),
            trust_domain,
            namespace,
            next_stream: AtomicU64::new(1),
            shutdown,
            metrics,
        }
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
}

#[tonic::async_trait]
impl Sync for SyncService {
    type StreamStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let cluster = self
            .identify(&req)
            .inspect_err(|e| warn!(%peer, error = %e.message(), "stream refused"))
            .map_err(|e| self.refuse("bad_certificate", e))?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(
                    self.refuse("no_hello", Status::deadline_exceeded("no Hello within 10s"))
                );
            }
            Ok(Err(status)) => return Err(self.refuse("no_hello", status)),
            Ok(Ok(None)) => {
                return Err(
                    self.refuse("no_hello", Status::cancelled("stream closed before Hello"))
                );
            }
            Ok(Ok(Some(AgentMessage {
                message: Some(agent_message::Message::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return Err(self.refuse(
                    "no_hello",
                    Status::invalid_argument("the first message must be Hello"),
                ));
            }
        };
        if hello.cluster != cluster {
            let msg = format!(
                "client certificate identifies cluster {cluster:?} but Hello names {:?}; check the agent's --cluster",
                hello.cluster
            );
            warn!(%cluster, %peer, "{msg}");
            return Err(self.refuse("identity_mismatch", Status::permission_denied(msg)));
        }
        let desired = {
            let index = self.index.read().expect("index lock");
            if !index.is_synced() {
                return Err(self.refuse(
                    "not_ready",
                    Status::unavailable("hub is starting (watches not synced yet); retry shortly"),
                ));
            }
            index.subscribe(&cluster)
        };
        let Some(desired) = desired else {
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
        self.board.connected(&cluster, &hello, &peer);
        info!(%cluster, stream = id, %peer, agent_version = %hello.agent_version, instance = %hello.instance, "agent connected");
        let stream = Stream {
            cluster: cluster.clone(),
            board: self.board.clone(),
            desired,
            inbound,
            tx,
            kicked,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
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
        Ok(Response::new(ReceiverStream::new(rx)))
    }
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
            self.board.duplicate_refused(cluster, peer, &hello.instance);
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
            let _ = old.kick.send(Status::aborted(format!(
                "replaced by a newer stream of cluster {cluster:?} (agent {} from {peer})",
                hello.instance
            )));
        }
        Ok(kicked)
    }
}

struct Stream {
    cluster: String,
    board: Arc<Board>,
    desired: watch::Receiver<Arc<Desired>>,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<HubMessage, Status>>,
    /// Resolves when a newer stream of the same cluster replaced this one.
    kicked: oneshot::Receiver<Status>,
    shutdown: watch::Receiver<bool>,
    metrics: HubMetrics,
}

impl Stream {
    async fn run(self) {
        let Stream {
            cluster,
            board,
            mut desired,
            mut inbound,
            tx,
            mut kicked,
            mut shutdown,
            metrics,
        } = self;
        metrics.streams_connected.inc();
        let mut out = Outbox::default();
        let mut next: Option<HubMessage> = out.message_for(&desired.borrow_and_update().clone());
        // What a new stream gets first is no change of state: it does not measure propagation.
        if let Some(first) = out.sent.back_mut() {
            first.changed_at = None;
        }
        let reason = loop {
            let stalled = out.in_flight_since().map(|t| t + ANSWER_TIMEOUT);
            tokio::select! {
                changed = desired.changed() => match changed {
                    Ok(()) => {
                        let d = desired.borrow_and_update().clone();
                        // Latest wins: a newer state replaces one not yet sent.
                        if let Some(m) = out.message_for(&d)
                            && let Some(old) = next.replace(m)
                        {
                            out.superseded(&old, next.as_ref().expect("just set"));
                        }
                    }
                    Err(_) => {
                        let _ = tx.send(Err(Status::permission_denied("RemoteCluster deleted"))).await;
                        break "RemoteCluster deleted";
                    }
                },
                permit = tx.reserve(), if next.is_some() && stalled.is_none() => match permit {
                    Ok(permit) => {
                        let msg = next.take().expect("guarded");
                        out.mark_sent(&msg, &metrics);
                        permit.send(Ok(msg));
                    }
                    Err(_) => break "agent went away",
                },
                _ = tokio::time::sleep_until(stalled.unwrap_or_else(Instant::now).into()),
                    if next.is_some() && stalled.is_some() => {
                    warn!(timeout = ?ANSWER_TIMEOUT, "agent has not answered; sending the newer state anyway");
                    out.give_up_waiting();
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => out.on_agent_message(m, &board, &cluster, &metrics),
                    Ok(None) => break "agent closed the stream",
                    Err(status) => {
                        debug!(error = %status, "inbound error");
                        break "stream error";
                    }
                },
                Ok(status) = &mut kicked => {
                    let _ = tx.send(Err(status)).await;
                    break "replaced by a newer stream";
                }
                _ = shutdown.changed() => {
                    let _ = tx.send(Err(Status::unavailable("hub shutting down"))).await;
                    break "hub shutting down";
                }
            }
        };
        board.disconnected(&cluster);
        metrics.streams_connected.dec();
        info!(reason, "agent disconnected");
    }
}

/// What one stream sent and still expects an answer for.
#[derive(Default)]
struct Outbox {
    /// Sent and not answered yet, oldest first.
    sent: VecDeque<Sent>,
    next_nonce: u64,
    last_sent: String,
    retire_sent: bool,
    /// The message that left and has no answer yet: its nonce and when it left.
    in_flight: Option<(u64, Instant)>,
    /// (nonce, version) of the newest message answered: the agent may report on it again.
    last_answered: Option<(String, String)>,
}

struct Sent {
    nonce: String,
    version: String,
    /// When the message left (None while it waits for the agent's flow control).
    sent_at: Option<Instant>,
    /// When the index computed the state this message carries.
    changed_at: Option<Instant>,
}

impl Outbox {
    /// The message that moves the agent to `d`, if it differs from what was last sent.
    fn message_for(&mut self, d: &Desired) -> Option<HubMessage> {
        if d.retire {
            if self.retire_sent {
                return None;
            }
            self.retire_sent = true;
            let nonce = self.nonce(tether_proto::RETIRED_VERSION, d.changed_at);
            debug!(nonce = %nonce, "sending Retire");
            let retire = Retire {
                reason: "RemoteCluster deleted".into(),
                nonce,
            };
            return Some(HubMessage {
                message: Some(hub_message::Message::Retire(retire)),
            });
        }
        let snap = d.snapshot.as_ref()?;
        if snap.version == self.last_sent {
            return None;
        }
        self.last_sent = snap.version.clone();
        let mut msg = (**snap).clone();
        msg.nonce = self.nonce(&snap.version, d.changed_at);
        debug!(version = %msg.version, nonce = %msg.nonce, "sending snapshot");
        Some(HubMessage {
            message: Some(hub_message::Message::Snapshot(msg)),
        })
    }

    fn nonce(&mut self, version: &str, changed_at: Option<Instant>) -> String {
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        if self.sent.len() == MAX_OUTSTANDING {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            nonce: nonce.clone(),
            version: version.to_string(),
            sent_at: None,
            changed_at,
        });
        nonce
    }

    /// Records that `msg` left now: nothing else leaves until the agent answers it.
    fn mark_sent(&mut self, msg: &HubMessage, metrics: &HubMetrics) {
        if matches!(msg.message, Some(hub_message::Message::Snapshot(_))) {
            metrics.snapshots_pushed.inc();
        }
        let nonce = nonce_of(msg);
        let now = Instant::now();
        if let Some(sent) = self.sent.iter_mut().find(|s| s.nonce == nonce) {
            sent.sent_at = Some(now);
        }
        self.in_flight = nonce.parse().ok().map(|n| (n, now));
    }

    /// When the message in flight left, if it has no answer yet.
    fn in_flight_since(&self) -> Option<Instant> {
        self.in_flight.map(|(_, at)| at)
    }

    fn give_up_waiting(&mut self) {
        self.in_flight = None;
    }

    /// `new` replaces `old` before `old` was sent: `old` is forgotten (it never left), and since the
    /// change it carried is first delivered by `new`, `new` measures propagation from that change.
    fn superseded(&mut self, old: &HubMessage, new: &HubMessage) {
        let first = self
            .sent
            .iter()
            .position(|s| s.nonce == nonce_of(old))
            .and_then(|i| self.sent.remove(i))
            .and_then(|s| s.changed_at);
        if let Some(s) = self.sent.iter_mut().find(|s| s.nonce == nonce_of(new)) {
            s.changed_at = match (first, s.changed_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// An answer for `nonce` (or a newer one) frees the stream.
    fn answer_arrived(&mut self, nonce: &str) {
        if let (Some((waiting, _)), Ok(n)) = (self.in_flight, nonce.parse::<u64>())
            && n >= waiting
        {
            self.in_flight = None;
        }
    }

    /// A NACKed snapshot stays answerable: the agent retries what failed and ACKs the same nonce once it
    /// applied everything. Older entries are dropped. False for a nonce this stream did not send.
    fn nacked(&mut self, nonce: &str, version: &str) -> bool {
        match self
            .sent
            .iter()
            .position(|s| s.nonce == nonce && s.version == version)
        {
            Some(i) => {
                self.sent.drain(..i);
                self.answer_arrived(nonce);
                self.last_answered = Some((nonce.to_string(), version.to_string()));
                true
            }
            None if self.is_last_answered(nonce, version) => true,
            None => {
                warn!(%nonce, %version, "answer for a nonce this stream did not send; ignored");
                false
            }
        }
    }

    /// A re-report on the newest answered message: the agent's state of it changed.
    fn is_last_answered(&self, nonce: &str, version: &str) -> bool {
        self.last_answered
            .as_ref()
            .is_some_and(|(n, v)| n == nonce && v == version)
    }

    /// Forgets `nonce` (and anything older) and returns it. None for a nonce this stream did not send.
    fn answered(&mut self, nonce: &str, version: &str) -> Option<Sent> {
        match self
            .sent
            .iter()
            .position(|s| s.nonce == nonce && s.version == version)
        {
            Some(i) => {
                self.answer_arrived(nonce);
                self.last_answered = Some((nonce.to_string(), version.to_string()));
                self.sent.drain(..=i).next_back()
            }
            None if self.is_last_answered(nonce, version) => Some(Sent {
                nonce: nonce.to_string(),
                version: version.to_string(),
                sent_at: None,
                changed_at: None,
            }),
            None => {
                warn!(%nonce, %version, "answer for a nonce this stream did not send; ignored");
                None
            }
        }
    }

    fn on_agent_message(
        &mut self,
        m: AgentMessage,
        board: &Board,
        cluster: &str,
        metrics: &HubMetrics,
    ) {
        match m.message {
            Some(agent_message::Message::Ack(ack)) => {
                let Some(sent) = self.answered(&ack.nonce, &ack.version) else {
                    return;
                };
                debug!(version = %ack.version, "agent acked");
                metrics.acks.inc();
                if let Some(t) = sent.sent_at {
                    metrics.push_ack_seconds.observe(t.elapsed().as_secs_f64());
                }
                if let Some(t) = sent.changed_at {
                    metrics
                        .propagation_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                board.acked(cluster, &ack.version);
            }
            Some(agent_message::Message::Nack(nack)) => {
                if !self.nacked(&nack.nonce, &nack.version) {
                    return;
                }
                let conflict = nack.failures.iter().any(|f| f.conflict);
                metrics
                    .nacks
                    .get_or_create(&Reason::of(if conflict { "conflict" } else { "rejected" }))
                    .inc();
                let mut message = nack.error_detail.clone();
                for f in &nack.failures {
                    message.push_str(&format!(
                        "; {} {}/{}: {}",
                        f.kind, f.namespace, f.name, f.message
                    ));
                }
                warn!(version = %nack.version, %message, "agent rejected snapshot");
                board.nacked(
                    cluster,
                    Nacked {
                        version: nack.version,
                        message,
                        at: Timestamp::now(),
                        conflict,
                    },
                );
            }
            Some(agent_message::Message::Hello(_)) => warn!("second Hello on one stream; ignored"),
            None => warn!("empty message; ignored"),
        }
    }
}

fn nonce_of(msg: &HubMessage) -> &str {
    match &msg.message {
        Some(hub_message::Message::Snapshot(s)) => &s.nonce,
        Some(hub_message::Message::Retire(r)) => &r.nonce,
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::v1::{Ack, Snapshot};

    fn desired(version: &str) -> Desired {
        Desired {
            snapshot: Some(Arc::new(Snapshot {
                version: version.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn ack(version: &str, nonce: &str) -> AgentMessage {
        AgentMessage {
            message: Some(agent_message::Message::Ack(Ack {
                version: version.into(),
                nonce: nonce.into(),
            })),
        }
    }

    #[test]
    fn same_version_is_sent_once_with_fresh_nonces_per_message() {
        let mut out = Outbox::default();
        assert!(out.message_for(&desired("v1")).is_some());
        assert!(out.message_for(&desired("v1")).is_none());
        let Some(HubMessage {
            message: Some(hub_message::Message::Snapshot(s)),
        }) = out.message_for(&desired("v2"))
        else {
            panic!("snapshot expected")
        };
        assert_eq!((s.version.as_str(), s.nonce.as_str()), ("v2", "2"));
    }

    #[test]
    fn ack_for_unknown_nonce_is_ignored() {
        let board = Board::default();
        let m = HubMetrics::register(&mut Default::default());
        let mut out = Outbox::default();
        out.message_for(&desired("v1"));
        out.on_agent_message(ack("v1", "99"), &board, "r1", &m);
        assert_eq!(board.get("r1").acked_version, "");
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
        assert_eq!(board.get("r1").acked_version, "v1");
        // A replayed answer is not accepted twice.
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
    }

    #[test]
    fn a_nacked_snapshot_can_still_be_acked_once_the_agent_recovers() {
        let board = Board::default();
        let m = HubMetrics::register(&mut Default::default());
        let mut out = Outbox::default();
        out.message_for(&desired("v1"));
        let nack = AgentMessage {
            message: Some(agent_message::Message::Nack(tether_proto::v1::Nack {
                version: "v1".into(),
                nonce: "1".into(),
                error_detail: "API server down".into(),
                failures: vec![],
            })),
        };
        out.on_agent_message(nack, &board, "r1", &m);
        assert!(board.get("r1").last_nack.is_some());
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
        assert_eq!(board.get("r1").acked_version, "v1");
    }

    #[test]
    fn the_agent_may_report_again_on_the_last_answered_snapshot() {
        let board = Board::default();
        let m = HubMetrics::register(&mut Default::default());
        let mut out = Outbox::default();
        out.message_for(&desired("v1"));
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
        assert_eq!(board.get("r1").acked_version, "v1");
        // Later the namespace it labelled is deleted: the agent NACKs the same snapshot again.
        let nack = AgentMessage {
            message: Some(agent_message::Message::Nack(tether_proto::v1::Nack {
                version: "v1".into(),
                nonce: "1".into(),
                error_detail: "namespace gone".into(),
                failures: vec![],
            })),
        };
        out.on_agent_message(nack, &board, "r1", &m);
        let s = board.get("r1");
        assert_eq!(s.acked_version, "", "v1 no longer holds");
        assert_eq!(s.last_nack.unwrap().version, "v1");
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
        assert_eq!(board.get("r1").acked_version, "v1", "and holds again");
        // Only the newest answered message can be reported on.
        out.message_for(&desired("v2"));
        out.on_agent_message(ack("v2", "2"), &board, "r1", &m);
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
        assert_eq!(board.get("r1").acked_version, "v2");
    }

    #[test]
    fn retire_is_sent_once_and_its_ack_marks_retired() {
        let board = Board::default();
        let m = HubMetrics::register(&mut Default::default());
        let mut out = Outbox::default();
        let d = Desired {
            retire: true,
            ..desired("v1")
        };
        let Some(HubMessage {
            message: Some(hub_message::Message::Retire(r)),
        }) = out.message_for(&d)
        else {
            panic!("retire expected")
        };
        assert!(out.message_for(&d).is_none());
        out.on_agent_message(
            ack(tether_proto::RETIRED_VERSION, &r.nonce),
            &board,
            "r1",
            &m,
        );
        assert!(board.get("r1").retired);
    }

    #[test]
    fn one_message_in_flight_until_the_agent_answers() {
        let board = Board::default();
        let m = HubMetrics::register(&mut Default::default());
        let mut out = Outbox::default();
        let first = out.message_for(&desired("v1")).unwrap();
        out.mark_sent(&first, &m);
        assert!(out.in_flight_since().is_some(), "v1 waits for its answer");
        let mut pending = out.message_for(&desired("v2")).unwrap();
        // However many states replace each other while v1 waits, v1 stays answerable.
        for i in 3..40 {
            let newer = out.message_for(&desired(&format!("v{i}"))).unwrap();
            out.superseded(&pending, &newer);
            pending = newer;
        }
        assert_eq!(out.sent.len(), 2, "v1 in flight and the newest pending");
        // An answer for a nonce never sent does not free the stream; the real one does.
        out.on_agent_message(ack("v1", "999"), &board, "r1", &m);
        assert!(out.in_flight_since().is_some());
        out.on_agent_message(ack("v1", "1"), &board, "r1", &m);
        assert!(out.in_flight_since().is_none());
        let v39 = pending;
        out.mark_sent(&v39, &m);
        // A NACK is an answer too.
        let nack = AgentMessage {
            message: Some(agent_message::Message::Nack(tether_proto::v1::Nack {
                version: "v39".into(),
                nonce: nonce_of(&v39).into(),
                ..Default::default()
            })),
        };
        out.on_agent_message(nack, &board, "r1", &m);
        assert!(out.in_flight_since().is_none());
    }

    #[test]
    fn a_coalesced_message_measures_from_the_first_change_it_carries() {
        let mut out = Outbox::default();
        let early = Instant::now();
        let d2 = Desired {
            changed_at: Some(early),
            ..desired("v2")
        };
        let d3 = Desired {
            changed_at: Some(early + Duration::from_millis(40)),
            ..desired("v3")
        };
        let v2 = out.message_for(&d2).unwrap();
        let v3 = out.message_for(&d3).unwrap();
        out.superseded(&v2, &v3);
        let carried = out.sent.iter().find(|s| s.nonce == nonce_of(&v3)).unwrap();
        assert_eq!(carried.changed_at, Some(early));
    }
}
