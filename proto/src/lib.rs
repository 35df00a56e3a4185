//! `tether-proto`: the wire protocol between hub and agent (`tether.sync.v1`) and what both sides share
//! about it. No kube, no k8s-openapi here. The process runtime both binaries share (admin server,
//! logging, shutdown, retry pacing) is the separate [`runtime`] half, behind the `runtime` feature.
//!
//! ```text
//!  sync.proto ──protox + tonic-prost-build──► v1::{Snapshot, Ack, Nack, ..}, v1::sync_{client,server}
//!  identity   cluster name  ◄── URI SAN spiffe://<trust-domain>/cluster/<name> of the peer certificate
//!  check      is a Snapshot well formed (the agent refuses one that is not, whole)
//!  codec      prost's gRPC codec with 1 KiB buffers (a hub holds one stream per remote)
//!  version    Snapshot content ──sha256──► version string (same state, same version, on any replica)
//!  tls        cert/key/CA files ──► rustls configs (TLS 1.3, client cert required), reloaded on change
//! ```

pub mod check;
pub mod codec;
pub mod identity;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod tls;
pub mod version;

/// Generated protobuf and gRPC code.
pub mod v1 {
    tonic::include_proto!("tether.sync.v1");

    /// Encoded `FileDescriptorSet` of sync.proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sync_descriptor.bin"));
}

/// Default limits both sides configure explicitly.
pub mod limits {
    /// Largest message either side decodes. A snapshot of 10 services with 1,000 endpoints each is ~1 MiB.
    pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
}
