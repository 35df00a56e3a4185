//! In-process stand-ins for the other side of the protocol, for tests that need no API server.
//!
//! ```text
//!  FakeHub:   the hub's real gRPC service (mTLS, pacing, one agent per identity) on 127.0.0.1:0,
//!             with desired state scripted per cluster instead of computed from watches
//!  FakeAgent: the agent's real stream client (TLS, Hello, backoff, standby), with the applier
//!             replaced by the test: snapshots arrive on a channel, the test answers
//! ```
//! Start-up is milliseconds, so protocol behaviour (reconnects, latest wins, duplicates, re-reports)
//! is tested without harness start-up. As ztunnel's `test_helpers/xds.rs` does for its xDS client.

use crate::controlplane::run_dir;
use crate::pki::Ca;
use crate::unique_name;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_agent::client::StreamConfig;
use tether_agent::metrics::AgentMetrics;
use tether_agent::reconcile::{Answer, Command, Progress};
use tether_hub::changes::Changes;
use tether_hub::desired::Desired;
use tether_hub::grpc::SyncService;
use tether_hub::index::Discovery;
use tether_hub::metrics::HubMetrics;
use tether_hub::serve::{Limits, serve_grpc};
use tether_hub::streams::{StreamState, Streams};
use tether_proto::tls::{ReloadingServerConfig, TlsFiles};
use tether_proto::v1::{ObjectFailure, Snapshot};
use tokio::sync::{mpsc, watch};

pub const TRUST_DOMAIN: &str = "tether.test";

/// Desired state by cluster, set by the test.
#[derive(Default)]
struct Script {
    clusters: Mutex<HashMap<String, watch::Sender<Arc<Desired>>>>,
}

impl Discovery for Script {
    fn ready(&self) -> bool {
        true
    }

    fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<Arc<Desired>>> {
        let clusters = self.clusters.lock().unwrap();
        clusters.get(cluster).map(|tx| tx.subscribe())
    }
}

/// A hub in this process: the real gRPC service over mTLS, desired state scripted per cluster.
pub struct FakeHub {
    pub addr: SocketAddr,
    pub ca: Ca,
    dir: PathBuf,
    script: Arc<Script>,
    streams: Arc<Streams>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeHub {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, None).await
    }

    /// Starts on `addr` (to restart a stopped hub where its agents dial), with `ca` if given.
    pub async fn start_on(addr: SocketAddr, ca: Option<Ca>) -> anyhow::Result<Self> {
        let ca = match ca {
            Some(ca) => ca,
            None => Ca::new("fake-hub-ca")?,
        };
        let dir = run_dir().join(unique_name("fake-hub"));
        ca.write_tls_dir(&dir.join("hub"), &ca.server("tether-hub", &[])?)?;
        let tls = ReloadingServerConfig::load(TlsFiles::in_dir(&dir.join("hub")))?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Script::default());
        let streams = Arc::new(Streams::new(Arc::new(Changes::default())));
        let (shutdown, stop) = watch::channel(false);
        let metrics = HubMetrics::register(&mut Default::default());
        let sync = SyncService::new(
            script.clone(),
            streams.clone(),
            TRUST_DOMAIN.into(),
            "fake".into(),
            stop.clone(),
            metrics,
        );
        let limits = Limits {
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            max_message_bytes: tether_proto::limits::MAX_MESSAGE_BYTES,
            max_concurrent_streams: 4,
        };
        let server = tokio::spawn(async move {
            if let Err(e) = serve_grpc(listener, tls, sync, limits, None, stop).await {
                eprintln!("fake hub: {e:#}");
            }
        });
        Ok(Self {
            addr,
            ca,
            dir,
            script,
            streams,
            shutdown,
            server,
        })
    }

    /// Stops serving (open streams end with UNAVAILABLE); returns the CA for a restart.
    pub async fn stop(self) -> Ca {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.ca
    }

    /// Begins to stop as a hub does on SIGTERM: its listener closes and every open stream is asked
    /// to move, and closed if its agent has not moved within the drain timeout (10 s). Returns the
    /// CA for a hub started in its place, and the old server, which ends once its streams have.
    pub fn drain(self) -> (Ca, tokio::task::JoinHandle<()>) {
        let _ = self.shutdown.send(true);
        (self.ca, self.server)
    }

    /// The state the hub wants for `cluster` from now on (a cluster the hub did not know becomes
    /// known).
    pub fn set(&self, cluster: &str, desired: Desired) {
        let mut clusters = self.script.clusters.lock().unwrap();
        let tx = clusters
            .entry(cluster.to_string())
            .or_insert_with(|| watch::Sender::new(Arc::new(Desired::default())));
        tx.send_replace(Arc::new(desired));
    }

    /// A snapshot of `version` for `cluster` (its content says only the version).
    pub fn set_version(&self, cluster: &str, version: &str) {
        self.set(
            cluster,
            Desired {
                snapshot: Some(Arc::new(snapshot(version))),
                ..Default::default()
            },
        );
    }

    /// What the hub knows of `cluster`'s streams.
    pub fn stream_state(&self, cluster: &str) -> StreamState {
        self.streams.get(cluster)
    }

    /// A TLS folder with a client certificate for `cluster` from this hub's CA.
    pub fn agent_tls(&self, cluster: &str) -> anyhow::Result<TlsFiles> {
        let uri = format!("spiffe://{TRUST_DOMAIN}/cluster/{cluster}");
        let cert = self
            .ca
            .client_with_uris(&format!("agent-{cluster}"), &[&uri], false)?;
        let dir = self.dir.join(unique_name(&format!("agent-{cluster}")));
        self.ca.write_tls_dir(&dir, &cert)?;
        Ok(TlsFiles::in_dir(&dir))
    }

    /// Stream settings for an agent of `cluster` dialing this hub (test timing).
    pub fn agent_config(&self, cluster: &str) -> anyhow::Result<StreamConfig> {
        Ok(StreamConfig {
            cluster: cluster.into(),
            hub_addr: self.addr.to_string(),
            server_name: None,
            tls: self.agent_tls(cluster)?,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            standby_retry: Duration::from_millis(200),
            max_message_bytes: tether_proto::limits::MAX_MESSAGE_BYTES,
        })
    }
}

/// A well-formed snapshot whose content is only its version (so distinct versions differ).
pub fn snapshot(version: &str) -> Snapshot {
    Snapshot {
        version: version.into(),
        nonce: String::new(),
        namespace: format!("ns-{}", version.to_lowercase().replace(['.', '_'], "-")),
        services: vec![],
        injection: None,
        skip_legacy_endpoints: false,
    }
}

/// Called with each command a [`FakeAgent`] started with it receives.
pub type Report = Box<dyn Fn(&Command) + Send + Sync>;

/// An agent in this process: the real stream client, the applier replaced by the test.
pub struct FakeAgent {
    /// What the stream client handed to the applier, in order.
    commands: mpsc::UnboundedReceiver<Command>,
    answers: mpsc::Sender<Answer>,
    progress: watch::Sender<Progress>,
    tasks: tokio::task::JoinSet<()>,
    /// The agent's metrics (reconnects by reason, connected).
    pub metrics: AgentMetrics,
}

impl FakeAgent {
    /// Starts the stream client. With `auto_ack`, every snapshot is ACKed (and recorded as applied)
    /// as it arrives.
    pub fn start(config: StreamConfig, auto_ack: bool) -> Self {
        Self::start_with(config, auto_ack, None)
    }

    /// As [`FakeAgent::start`]; with `report`, each command goes to it instead of [`FakeAgent::next`]
    /// (load generators run thousands and only count arrivals).
    pub fn start_with(config: StreamConfig, auto_ack: bool, report: Option<Report>) -> Self {
        let (commands_tx, mut commands_rx) = watch::channel::<Option<Command>>(None);
        let (answers, results) = mpsc::channel::<Answer>(4);
        let (progress, progress_rx) = watch::channel(Progress::default());
        let metrics = AgentMetrics::register(&mut Default::default());
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(tether_agent::client::run(
            config,
            commands_tx,
            results,
            progress_rx,
            None,
            metrics.clone(),
        ));
        let (seen_tx, commands) = mpsc::unbounded_channel();
        let auto = answers.clone();
        let applied = progress.clone();
        tasks.spawn(async move {
            while commands_rx.changed().await.is_ok() {
                let Some(cmd) = commands_rx.borrow_and_update().clone() else {
                    continue;
                };
                if auto_ack && let Command::Apply(snap) = &cmd {
                    applied.send_modify(|p| p.applied_version = snap.version.clone());
                    let answer = Answer::Applied {
                        version: snap.version.clone(),
                        nonce: snap.nonce.clone(),
                        failures: vec![],
                    };
                    if auto.send(answer).await.is_err() {
                        return;
                    }
                }
                match &report {
                    Some(report) => report(&cmd),
                    None => {
                        if seen_tx.send(cmd).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            commands,
            answers,
            progress,
            tasks,
            metrics,
        }
    }

    /// The next command the stream client hands to the applier, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Command> {
        tokio::time::timeout(timeout, self.commands.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next snapshot, skipping other commands; panics after `timeout`.
    pub async fn next_snapshot(&mut self, timeout: Duration) -> Arc<Snapshot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Command::Apply(snap)) => return snap,
                Some(_) => continue,
                None => panic!("no snapshot within {timeout:?}"),
            }
        }
    }

    /// Nothing more arrives within `quiet`.
    pub async fn nothing_within(&mut self, quiet: Duration) -> Option<Command> {
        self.next(quiet).await
    }

    /// Answers `snap` as applied (ACK), and records it as this agent's applied version.
    pub async fn ack(&self, snap: &Snapshot) {
        self.progress
            .send_modify(|p| p.applied_version = snap.version.clone());
        self.answer(Answer::Applied {
            version: snap.version.clone(),
            nonce: snap.nonce.clone(),
            failures: vec![],
        })
        .await
    }

    /// Answers `snap` as not applied (NACK) because of `why`.
    pub async fn nack(&self, snap: &Snapshot, why: &str) {
        let failure = ObjectFailure {
            kind: "Namespace".into(),
            namespace: String::new(),
            name: "app".into(),
            message: why.into(),
            conflict: false,
        };
        self.answer(Answer::Applied {
            version: snap.version.clone(),
            nonce: snap.nonce.clone(),
            failures: vec![failure],
        })
        .await
    }

    pub async fn answer(&self, answer: Answer) {
        self.answers
            .send(answer)
            .await
            .expect("stream client alive");
    }

    /// Times the previous stream ended for `reason` (`replaced`, `duplicate`, `connect`, ...).
    pub fn reconnects(&self, reason: &str) -> u64 {
        self.metrics
            .reconnects
            .get_or_create(&tether_agent::metrics::Reason {
                reason: reason.into(),
            })
            .get()
    }

    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}
