//! `tether-hub`: runs in the central cluster, watches the Istio control plane and streams each remote's
//! desired state to that remote's agent over mutually-authenticated gRPC. It holds no credentials for
//! any remote: agents dial in.
//!
//! ```text
//!  istiod Pods, Services ─watch─► index ─watch::channel per remote─► grpc ─► agents
//!  RemoteClusters, tether-retired ─►  │ (pure)                          │ (tonic, no kube)
//!                                     │ marks                    Outbox::answer
//!                                     ▼                                 ▼
//!                               Changes ◄──────── marks ─────────── Streams
//!                                     └──► status writer ─► RemoteCluster status, Events
//!                                                └──► retire lifecycle ─► finalizers, tether-retired
//! ```
//! Start reading at `serve` (the wiring). Pure parts: `central`, `snapshot`, `index`, `desired`,
//! `outbox`, `streams`, `status::compute`. Loops that drive them: `watch::feed`, `grpc`,
//! `status::writer`, `retire`. Operator commands: `cmd`.

pub mod accept;
pub mod apicreds;
pub mod apiproxy;
pub mod central;
pub mod certs;
pub mod changes;
pub mod cli;
pub mod cmd;
pub mod crd;
pub mod desired;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod grpc;
pub mod index;
pub mod lease;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod peers;
pub mod replicas;
pub mod retire;
pub mod serve;
pub mod snapshot;
pub mod status;
pub mod streams;
pub mod tunnels;
pub mod watch;
