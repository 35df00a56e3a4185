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

pub mod apply;
pub mod cli;
pub mod client;
pub mod live;
pub mod objects;
pub mod reconcile;

use tokio::sync::{mpsc, watch};

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    kube: kube::Client,
    namespace: String,
    field_manager: String,
    settings: client::Settings,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let live = live::Live::start(&kube, &namespace);
    let applier = apply::Applier::new(kube, namespace, field_manager, live);
    let (commands_tx, commands_rx) = watch::channel(None);
    let (results_tx, results_rx) = mpsc::channel(4);
    let (state_tx, state_rx) = watch::channel(reconcile::State::default());
    let reconciler = tokio::spawn(reconcile::run(applier, commands_rx, results_tx, state_tx));
    let stream = tokio::spawn(client::run(settings, commands_tx, results_rx, state_rx));
    tether_proto::cli::stopped(&mut shutdown).await;
    // Fail-static: stopping changes nothing in the cluster.
    stream.abort();
    reconciler.abort();
    Ok(())
}
