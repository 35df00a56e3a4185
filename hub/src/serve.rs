//! `tether-hub serve`: the wiring, and the only module that knows every part. Watches feed the index;
//! the index feeds the gRPC streams; the index and the stream state mark remotes for the status
//! writer.
//!
//! ```text
//!  watch RemoteClusters ─┬─► reflector store ───────────────────────────► StatusWriter ─► status, finalizers
//!                        └─► Index ◄─ watch Pods, Services, tether-retired     ▲  ▲
//!                              │ watch::channel per remote    Changes::mark ───┘  │
//!  accept (TLS per handshake) ─► tonic Sync (via Discovery) ──► Streams ─────────────┘
//! ```

use crate::accept::accept;
use crate::apicreds::{Credentials, RemoteSecrets, SecretProblems};
use crate::apiproxy::{ApiLimits, ApiProxy};
use crate::central::CentralPod;
use crate::changes::Changes;
use crate::crd::RemoteCluster;
use crate::events::{Recorder, Reporter};
use crate::grpc::SyncService;
use crate::index::{Discovery, Index};
use crate::lease::{Holder, Membership};
use crate::metrics::HubMetrics;
use crate::retire::Retirements;
use crate::snapshot::Defaults;
use crate::status::StatusWriter;
use crate::status::writer::ApiView;
use crate::streams::Streams;
use crate::tunnels::Tunnels;
use crate::watch::{feed, strip_managed_fields};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tether_proto::runtime::cli::stopped;
use tether_proto::tls::ReloadingServerConfig;
use tether_proto::v1::sync_server::SyncServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Everything `serve` is told (from the command line, see `cli::ServeArgs`).
pub struct ServeConfig {
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
    pub status_budget: f64,
    pub max_connection_age: Duration,
    pub drain_timeout: Duration,
    pub sync_deadline: Duration,
    pub retire_timeout: Duration,
    pub retire_memory: Duration,
    pub replicas: crate::cli::ReplicaArgs,
    pub api: crate::cli::ApiArgs,
}

pub async fn run(
    client: Client,
    s: ServeConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let changes = Arc::new(Changes::default());
    let streams = Arc::new(Streams::new(changes.clone()));
    let index = Arc::new(RwLock::new(Index::new(
        s.defaults.clone(),
        changes.clone(),
        streams.clone(),
    )));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = HubMetrics::register(&mut registry);

    // Retried by `feed` when they fail (see tether_proto::runtime::retry).
    let cfg = watcher::Config::default;
    let remotes: Api<RemoteCluster> = Api::namespaced(client.clone(), &s.namespace);
    let (store, writer) = reflector::store();
    let rc_events = reflector(
        writer,
        watcher(remotes.clone(), cfg()).map(|e| e.map(strip_managed_fields)),
    );
    tokio::spawn(feed(rc_events, index.clone()));
    let pods = Api::<CentralPod>::namespaced(client.clone(), &s.namespace);
    tokio::spawn(feed(watcher(pods, cfg()), index.clone()));
    let services = Api::<Service>::namespaced(client.clone(), &s.namespace);
    tokio::spawn(feed(watcher(services, cfg()), index.clone()));
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &s.namespace);
    let retired = cfg().fields(&format!("metadata.name={}", crate::retire::CONFIGMAP));
    tokio::spawn(feed(watcher(configmaps.clone(), retired), index.clone()));

    // Leases: this replica's own (a heartbeat), and the leader's. A lease task never ends; if one
    // does (a panic), the process exits rather than serve without it.
    let me = s.replicas.id();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &s.namespace);
    let duration = s.replicas.lease_duration;
    let (alive_tx, alive_rx) = watch::channel(false);
    let (leader_tx, leader_rx) = watch::channel(false);
    let own = Holder {
        api: leases.clone(),
        name: crate::lease::replica_lease(&me),
        me: me.clone(),
        labels: vec![(crate::lease::REPLICA_LABEL.into(), "true".into())],
        annotations: s
            .api
            .peer_url()
            .map(|url| (crate::lease::PEER_ANNOTATION.to_string(), url))
            .into_iter()
            .collect(),
        duration,
    };
    let leader = Holder {
        api: leases.clone(),
        name: crate::lease::LEADER.into(),
        me: me.clone(),
        labels: vec![],
        annotations: vec![],
        duration,
    };
    let membership = Arc::new(Membership::new(
        me.clone(),
        alive_rx,
        leader_rx,
        s.replicas.disconnect_grace,
    ));
    let lease_tasks = [
        ("replica lease", tokio::spawn(own.run(alive_tx))),
        ("leader lease", tokio::spawn(leader.run(leader_tx))),
        (
            "replica observer",
            tokio::spawn(membership.clone().watch(
                leases.clone(),
                duration / 3,
                store.clone(),
                changes.clone(),
            )),
        ),
    ];
    tokio::spawn(async move {
        let (result, i, _) =
            futures::future::select_all(lease_tasks.into_iter().map(|(_, t)| t)).await;
        let what = ["replica lease", "leader lease", "replica observer"][i];
        tracing::error!(task = what, ?result, "a lease task ended: exiting");
        std::process::exit(70);
    });
    info!(replica = %me, "hub replica");
    // Shutting down, this replica writes no more status: its agents are moving to other replicas.
    let stopping = membership.clone();
    let mut stop_signal = shutdown.clone();
    tokio::spawn(async move {
        stopped(&mut stop_signal).await;
        stopping.stop();
    });

    let tunnels = Arc::new(Tunnels::new(
        s.trust_domain.clone(),
        s.keepalive_interval,
        s.api.api_max_in_flight,
        changes.clone(),
        metrics.api_tunnels_connected.clone(),
    ));
    let api = match s.api.api_addr {
        Some(_) => {
            let view = ApiView {
                tunnels: tunnels.clone(),
                problems: Arc::new(SecretProblems::new(changes.clone())),
                secret_namespace: s.api.istio_namespace.clone(),
            };
            serve_api(
                &client,
                &s,
                store.clone(),
                &view,
                metrics.clone(),
                membership.clone(),
                shutdown.clone(),
            )
            .await?;
            Some(view)
        }
        None => None,
    };

    let reporter = Reporter {
        controller: "tether-hub".into(),
        // kube's Recorder fell back to the controller's name too.
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "tether-hub".into()),
    };
    let status = StatusWriter {
        api: remotes.clone(),
        store,
        index: index.clone(),
        streams: streams.clone(),
        changes,
        interval: s.status_interval,
        refresh: s.status_refresh,
        concurrency: s.status_writers,
        budget: std::sync::Mutex::new(crate::status::writer::Budget::new(s.status_budget)),
        sync_deadline: s.sync_deadline,
        retirements: Retirements {
            remotes,
            configmaps,
            timeout: s.retire_timeout,
            memory: s.retire_memory,
        },
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        api_access: api,
        membership,
        started: k8s_openapi::jiff::Timestamp::now(),
        first_seen: Default::default(),
    };
    tokio::spawn(status.run());
    tokio::spawn(crate::memory::release_freed(crate::memory::INTERVAL));

    let ready_index = index.clone();
    let ready: tether_proto::runtime::admin::Ready = Arc::new(move || ready_index.ready());
    let (live_streams, live_index) = (streams.clone(), index.clone());
    let admin = tether_proto::runtime::admin::router(Arc::new(registry), ready).route(
        "/streams",
        axum::routing::get(move || async move {
            let index = live_index.read().expect("index lock");
            axum::Json(live_streams.to_json(|name| index.desired(name)))
        }),
    );
    let admin_listener = tether_proto::runtime::admin::serve(s.admin_addr, admin, shutdown.clone());
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
    let sync = SyncService::new(
        index,
        streams,
        s.trust_domain,
        s.namespace,
        shutdown.clone(),
        metrics,
    )
    .with_moves(crate::grpc::Moves {
        max_age: Some(s.max_connection_age).filter(|age| !age.is_zero()),
        drain: s.drain_timeout,
    });
    let limits = Limits {
        keepalive_interval: s.keepalive_interval,
        keepalive_timeout: s.keepalive_timeout,
        max_message_bytes: s.max_message_bytes,
        max_concurrent_streams: s.max_concurrent_streams,
    };
    let served = serve_grpc(listener, tls, sync, limits, Some(tunnels), shutdown).await;
    // Shutting down: hand leadership over now rather than after the Lease expires. The replica's
    // own Lease is left to expire: until then the others take its remotes' agents without anyone
    // reporting them Disconnected (the expiry is the grace for them to reconnect).
    Holder::release(&leases, crate::lease::LEADER, &me).await;
    served
}

/// API access: the endpoint for istiod, and the remote secrets that point it there.
async fn serve_api(
    client: &Client,
    s: &ServeConfig,
    store: reflector::Store<RemoteCluster>,
    view: &ApiView,
    metrics: HubMetrics,
    membership: Arc<Membership>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = s.api.api_addr.context("--api-addr")?;
    let advertise =
        s.api.api_advertise.clone().context(
            "--api-advertise is required with --api-addr (the URL istiod uses to reach it)",
        )?;
    let host = advertise
        .strip_prefix("https://")
        .context("--api-advertise must be an https:// URL")?
        .split('/')
        .next()
        .unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
    .trim_matches(['[', ']']);
    let (dns, ips): (Vec<String>, Vec<std::net::IpAddr>) = match host.parse() {
        Ok(ip) => (vec![], vec![ip]),
        Err(_) => (vec![host.to_string()], vec![]),
    };
    let credentials =
        Credentials::load_or_create(client.clone(), &s.namespace, s.api.api_credential_ttl)
            .await
            .context("loading the API-access CA")?;
    let serving = crate::certs::hub_cert(
        &credentials.ca,
        &dns,
        &ips,
        Duration::from_secs(365 * 86400),
    )?;
    let tls = crate::apiproxy::server_config(&credentials.ca.cert, &serving.cert, &serving.key)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    info!(addr = %listener.local_addr()?, %advertise, "serving API access for istiod");
    let limits = ApiLimits {
        max_in_flight_per_remote: s.api.api_max_in_flight,
        hold: s.api.api_hold,
        superseded_grace: s.api.api_credential_grace,
        ..ApiLimits::default()
    };
    // The other replicas: this one's client certificate for their endpoints, which carry the
    // same advertised host in their serving certificates.
    let peer = crate::certs::peer_cert(
        &credentials.ca,
        &s.trust_domain,
        &membership.me,
        Duration::from_secs(365 * 86400),
    )?;
    let peers = crate::peers::Peers::new(
        membership.clone(),
        &credentials.ca.cert,
        &peer,
        rustls::pki_types::ServerName::try_from(host.to_string())?,
        s.api.api_max_in_flight,
    )?;
    if s.api.peer_url().is_none() {
        warn!("no --api-peer-url: other hub replicas cannot pass istiod's requests to this one");
    }
    let proxy = Arc::new(ApiProxy::new(
        view.tunnels.clone(),
        store.clone(),
        s.namespace.clone(),
        limits,
        metrics,
        credentials.current(),
        Arc::new(peers),
        s.trust_domain.clone(),
    ));
    tokio::spawn(proxy.serve(listener, Arc::new(tls), shutdown));
    let secrets = RemoteSecrets {
        secrets: Api::namespaced(client.clone(), &s.api.istio_namespace),
        namespace: s.api.istio_namespace.clone(),
        store,
        credentials,
        server_base: advertise.trim_end_matches('/').to_string(),
        interval: Duration::from_secs(1),
        problems: view.problems.clone(),
        membership,
    };
    tokio::spawn(secrets.run());
    Ok(())
}

/// Transport limits of the gRPC server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// HTTP/2 ping interval; a peer silent for interval + timeout is dropped.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
}

/// Serves `sync` (with gRPC health and reflection beside it) on `listener` over mTLS until
/// `shutdown` turns true.
pub async fn serve_grpc(
    listener: TcpListener,
    tls: Arc<ReloadingServerConfig>,
    sync: SyncService,
    limits: Limits,
    tunnels: Option<Arc<Tunnels>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (conn_tx, conn_rx) = mpsc::channel(128);
    tokio::spawn(accept(listener, tls, conn_tx, tunnels, shutdown.clone()));
    // Standard probes on the same (mTLS) port: grpc.health.v1 and server reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SyncServer<SyncService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::v1::FILE_DESCRIPTOR_SET)
        // grpcurl ... grpc.health.v1.Health/Check works without a local proto file.
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let mut shutdown_signal = shutdown;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .tcp_nodelay(true)
        .add_service(
            SyncServer::new(sync)
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(limits.max_message_bytes),
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
