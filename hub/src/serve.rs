//! `tether-hub serve`: the wiring. Watches feed the index; the index feeds the gRPC streams; the board
//! and the index feed the status writer. Only this module knows all of them.
//!
//! ```text
//!  watch RemoteClusters ─┬─► reflector store ──────────────► StatusWriter ─► RemoteCluster status
//!                        └─► Index ◄─ watch Pods, Services         ▲
//!                              │ watch::channel per remote          │
//!  TLS accept (per-handshake config) ─► tonic Sync ───► streams ───► Board
//! ```

use crate::board::Board;
use crate::crd::RemoteCluster;
use crate::grpc::SyncService;
use crate::index::{Defaults, Index};
use crate::metrics::HubMetrics;
use crate::retire::Retirements;
use crate::status::StatusWriter;
use anyhow::Context;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tether_proto::cli::stopped;
use tether_proto::retry::ApiRetry;
use tether_proto::tls::ReloadingServerConfig;
use tether_proto::v1::sync_server::SyncServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub struct Settings {
    pub namespace: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tls: tether_proto::tls::TlsFiles,
    pub trust_domain: String,
    pub defaults: Defaults,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub status_interval: Duration,
    pub status_refresh: Duration,
    pub status_writers: usize,
    pub retire_timeout: Duration,
    pub retire_memory: Duration,
}

pub async fn run(
    client: Client,
    s: Settings,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let index = Arc::new(RwLock::new(Index::new(s.defaults.clone())));
    let board = Arc::new(Board::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = HubMetrics::register(&mut registry);

    let rc_api: Api<RemoteCluster> = Api::namespaced(client.clone(), &s.namespace);
    // Retried by `feed` when they fail (see tether_proto::retry).
    let cfg = watcher::Config::default;
    let (store, writer) = reflector::store();
    let rc_events = reflector(
        writer,
        watcher(rc_api.clone(), cfg()).map(|e| e.map(strip_managed_fields)),
    );
    tokio::spawn(feed(rc_events, index.clone(), Kind::Remotes, board.clone()));
    let pods = watcher(Api::<Pod>::namespaced(client.clone(), &s.namespace), cfg());
    tokio::spawn(feed(pods, index.clone(), Kind::Pods, board.clone()));
    let services = watcher(
        Api::<Service>::namespaced(client.clone(), &s.namespace),
        cfg(),
    );
    tokio::spawn(feed(services, index.clone(), Kind::Services, board.clone()));
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &s.namespace);
    let retired = watcher(
        configmaps.clone(),
        cfg().fields(&format!("metadata.name={}", crate::retire::CONFIGMAP)),
    );
    tokio::spawn(feed(retired, index.clone(), Kind::Retired, board.clone()));

    let reporter = Reporter {
        controller: "tether-hub".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let status = StatusWriter {
        api: rc_api.clone(),
        store,
        index: index.clone(),
        board: board.clone(),
        interval: s.status_interval,
        refresh: s.status_refresh,
        concurrency: s.status_writers,
        seen: Default::default(),
        retirements: Retirements {
            remotes: rc_api.clone(),
            configmaps,
            timeout: s.retire_timeout,
            memory: s.retire_memory,
        },
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
    };
    tokio::spawn(status.run());

    let ready_index = index.clone();
    let ready: tether_proto::admin::Ready =
        Arc::new(move || ready_index.read().expect("index lock").is_synced());
    let streams_board = board.clone();
    let admin = tether_proto::admin::router(Arc::new(registry), ready).route(
        "/streams",
        axum::routing::get(move || async move { axum::Json(streams_board.to_json()) }),
    );
    let admin_listener = tether_proto::admin::serve(s.admin_addr, admin, shutdown.clone());
    tokio::spawn(async move {
        if let Err(error) = admin_listener.await {
            warn!(%error, "admin server failed");
        }
    });

    let tls = ReloadingServerConfig::load(s.tls.clone()).context("loading the hub's TLS files")?;
    tokio::spawn(tls.clone().watch(Duration::from_secs(2)));
    let listener = TcpListener::bind(s.grpc_addr)
        .await
        .with_context(|| format!("binding {}", s.grpc_addr))?;
    info!(addr = %listener.local_addr()?, namespace = %s.namespace, "serving tether.sync.v1 over mTLS");
    let (conn_tx, conn_rx) = mpsc::channel(128);
    tokio::spawn(accept(listener, tls, conn_tx, shutdown.clone()));

    // Standard probes on the same (mTLS) port: grpc.health.v1 and server reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SyncServer<SyncService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let sync = SyncService::new(
        index,
        board,
        s.trust_domain,
        s.namespace,
        shutdown.clone(),
        metrics,
    );
    let mut shutdown_signal = shutdown.clone();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(s.keepalive_interval))
        .http2_keepalive_timeout(Some(s.keepalive_timeout))
        .max_concurrent_streams(Some(s.max_concurrent_streams))
        .tcp_nodelay(true)
        .add_service(
            SyncServer::new(sync)
                .max_decoding_message_size(s.max_message_bytes)
                .max_encoding_message_size(s.max_message_bytes),
        )
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>),
            async move { stopped(&mut shutdown_signal).await },
        )
        .await?;
    Ok(())
}

/// `410 Gone`: the watch fell behind the server's history (as after an outage); a relist follows.
fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

fn strip_managed_fields<K: Resource>(mut event: Event<K>) -> Event<K> {
    let strip = |o: &mut K| o.meta_mut().managed_fields = None;
    match &mut event {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => strip(o),
        Event::Init | Event::InitDone => {}
    }
    event
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Remotes,
    Pods,
    Services,
    Retired,
}

/// Applies one watch's events to the index. Lists are applied whole at `InitDone` (a relist replaces
/// what the index had, so objects deleted while the watch was down disappear).
async fn feed<K>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    index: Arc<RwLock<Index>>,
    kind: Kind,
    board: Arc<Board>,
) where
    K: Resource + ResourceExt + Clone + 'static,
    Kind: Apply<K>,
{
    let mut events = std::pin::pin!(events);
    let mut listing: Vec<K> = Vec::new();
    let mut retry = ApiRetry::default();
    while let Some(event) = events.next().await {
        if event.is_ok() {
            retry.succeeded();
        }
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => listing.push(o),
            Ok(Event::InitDone) => {
                let mut index = index.write().expect("index lock");
                kind.reset(&mut index, &listing);
                index.note_change();
                debug!(?kind, objects = listing.len(), "watch listed");
                listing.clear();
            }
            Ok(Event::Apply(o)) => {
                let mut index = index.write().expect("index lock");
                kind.apply(&mut index, &o);
                index.note_change();
            }
            Ok(Event::Delete(o)) => {
                let mut index = index.write().expect("index lock");
                kind.delete(&mut index, &o.name_any());
                index.note_change();
                if matches!(kind, Kind::Remotes) {
                    board.remove(&o.name_any());
                }
            }
            // Say so once per failure so operators see RBAC or network trouble; the watcher retries
            // when polled again.
            Err(error) => {
                let wait = retry.failed(is_gone(&error));
                warn!(?kind, %error, ?wait, "watch failed; retrying with backoff (check the hub's RBAC and API server)");
                tokio::time::sleep(wait).await;
            }
        }
    }
    debug!(?kind, "watch ended");
}

/// Dispatch from a watched kind to the index (keeps `feed` generic).
trait Apply<K> {
    fn apply(&self, index: &mut Index, o: &K);
    fn delete(&self, index: &mut Index, name: &str);
    fn reset(&self, index: &mut Index, all: &[K]);
}

impl Apply<RemoteCluster> for Kind {
    fn apply(&self, index: &mut Index, o: &RemoteCluster) {
        index.apply_remote(o)
    }
    fn delete(&self, index: &mut Index, name: &str) {
        index.delete_remote(name)
    }
    fn reset(&self, index: &mut Index, all: &[RemoteCluster]) {
        index.reset_remotes(all)
    }
}

impl Apply<Pod> for Kind {
    fn apply(&self, index: &mut Index, o: &Pod) {
        index.apply_pod(o)
    }
    fn delete(&self, index: &mut Index, name: &str) {
        index.delete_pod(name)
    }
    fn reset(&self, index: &mut Index, all: &[Pod]) {
        index.reset_pods(all)
    }
}

impl Apply<Service> for Kind {
    fn apply(&self, index: &mut Index, o: &Service) {
        index.apply_service(o)
    }
    fn delete(&self, index: &mut Index, name: &str) {
        index.delete_service(name)
    }
    fn reset(&self, index: &mut Index, all: &[Service]) {
        index.reset_services(all)
    }
}

impl Apply<ConfigMap> for Kind {
    fn apply(&self, index: &mut Index, o: &ConfigMap) {
        index.apply_retired(o)
    }
    fn delete(&self, index: &mut Index, name: &str) {
        index.delete_retired(name)
    }
    fn reset(&self, index: &mut Index, all: &[ConfigMap]) {
        index.reset_retired(all)
    }
}

/// What a refused handshake most likely means, in an operator's words.
fn handshake_hint(error: &std::io::Error) -> &'static str {
    let e = error.to_string();
    if e.contains("Tls12NotOffered") || e.contains("ProtocolVersion") {
        "the client does not speak TLS 1.3, which Tether requires"
    } else if e.contains("UnknownIssuer") || e.contains("BadSignature") {
        "the client certificate is not signed by the hub CA"
    } else if e.contains("xpired") {
        "the client certificate has expired; mint a new one with `tether-hub join`"
    } else if e.contains("NoCertificatesPresented") || e.contains("CertificateRequired") {
        "the client presented no certificate"
    } else if e.contains("InvalidContentType")
        || e.contains("corrupt message")
        || e.contains("InvalidMessage")
    {
        "not TLS: a plaintext client, or something else on this port"
    } else {
        "see the error"
    }
}

/// Accepts TCP connections and runs each TLS handshake on its own task with the config current at that
/// moment, so a slow or hostile client never holds up the others and rotated certificates apply to the
/// next connection.
async fn accept(
    listener: TcpListener,
    tls: Arc<ReloadingServerConfig>,
    out: mpsc::Sender<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let out = out.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = out.send(stream).await;
                }
                // A client that left mid-handshake is noise (scanners, probes, floods), not a refusal.
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    debug!(%peer, %error, "client left during the TLS handshake")
                }
                Ok(Err(error)) => {
                    warn!(%peer, %error, hint = handshake_hint(&error), "TLS handshake refused")
                }
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
