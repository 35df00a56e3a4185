//! `tether-hub`: runs in the central cluster, watches the Istio control plane and streams each remote's
//! desired state to that remote's agent over mutually-authenticated gRPC. It holds no credentials for
//! any remote: agents dial in.
//!
//! ```text
//!  istiod Pods, Services ──watch──► index (pure) ──watch::channel per remote──► grpc (tonic, no kube)
//!  RemoteClusters ─────────watch──►   │                                            │ ACK/NACK
//!                                      └──► status writer ◄────── board ◄──────────┘
//! ```
//! `index`, `snapshot`, `board` are pure; `grpc` has no kube; `serve` wires them to Kubernetes.

pub mod board;
pub mod certs;
pub mod cli;
pub mod crd;
pub mod grpc;
pub mod index;
pub mod join;
pub mod metrics;
pub mod report;
pub mod retire;
pub mod serve;
pub mod snapshot;
pub mod status;
