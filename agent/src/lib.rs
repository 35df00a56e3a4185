//! `tether-agent`: runs in a remote cluster, dials the hub, and makes the local API server match the
//! desired state it streams: selector-less Services, EndpointSlices and Endpoints with the central
//! control-plane pod IPs, and injection labels on namespaces.
//!
//! ```text
//!  hub ══mTLS gRPC══► client ──commands (latest wins)──► reconcile ──► apply ──SSA──► API server
//!        ◄═ACK/NACK═══   ◄──────── results ──────────────┘   ▲                          │
//!                                                      live (watches) ◄──── events ─────┘
//! ```
//! Fail-static: losing the hub changes nothing here; only `Retire` removes what the agent manages.

pub mod allow;
pub mod apply;
pub mod cli;
pub mod client;
pub mod fields;
pub mod live;
pub mod metrics;
pub mod objects;
pub mod plan;
pub mod reconcile;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Everything the agent is told on its command line, apart from logging.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace the mirrors live in.
    pub namespace: String,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// Admin HTTP address: /live, /ready, /metrics.
    pub admin_addr: SocketAddr,
    pub stream: client::StreamConfig,
    /// API access for central istiod (None: off).
    pub tunnel: Option<tunnel::TunnelConfig>,
}

/// Runs the agent until `shutdown` turns true. Run it inside a span that names the cluster: every
/// task it starts logs within that span.
pub async fn run(
    kube: kube::Client,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Config {
        namespace,
        field_manager,
        admin_addr,
        stream,
        tunnel,
    } = config;
    let (tunnel_tx, tunnel_rx) = watch::channel(false);
    let tunnel_up = tunnel.is_some().then_some(tunnel_rx);
    let api_access =
        tunnel.map(|t| tokio::spawn(tunnel::run(kube.clone(), t, tunnel_tx).in_current_span()));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::AgentMetrics::register(&mut registry);
    let live = live::Live::start(&kube, &namespace);
    let applier = apply::Applier::new(kube, namespace, field_manager, live, metrics.clone());
    let (commands_tx, commands_rx) = watch::channel(None);
    let (results_tx, results_rx) = mpsc::channel(4);
    let (progress_tx, progress_rx) = watch::channel(reconcile::Progress::default());

    let ready_progress = progress_rx.clone();
    let ready: tether_proto::runtime::admin::Ready =
        Arc::new(move || ready_progress.borrow().ready());
    let admin = tether_proto::runtime::admin::serve(
        admin_addr,
        tether_proto::runtime::admin::router(Arc::new(registry), ready),
        shutdown.clone(),
    );
    tokio::spawn(
        async move {
            if let Err(error) = admin.await {
                tracing::warn!(%error, "admin server failed");
            }
        }
        .in_current_span(),
    );

    let reconciler = tokio::spawn(
        reconcile::run(applier, commands_rx, results_tx, progress_tx).in_current_span(),
    );
    let stream = tokio::spawn(
        client::run(
            stream,
            commands_tx,
            results_rx,
            progress_rx,
            tunnel_up,
            metrics,
        )
        .in_current_span(),
    );
    tether_proto::runtime::cli::stopped(&mut shutdown).await;
    // Fail-static: stopping changes nothing in the cluster.
    stream.abort();
    reconciler.abort();
    if let Some(t) = api_access {
        t.abort();
    }
    Ok(())
}
