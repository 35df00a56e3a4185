//! What one remote should look like, as the index publishes it on the remote's `watch` channel and
//! the gRPC streams and the status writer read it.

use std::sync::Arc;
use tether_proto::v1::Snapshot;

#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// None until the remote's spec has computed once.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Why the current spec is not in effect; empty when it is.
    pub errors: Vec<String>,
    /// The RemoteCluster is being deleted (or was, while its agent was away): the agent must remove
    /// what it manages.
    pub retire: bool,
    /// Where the endpoints come from, as the spec asks: `pods`, `gateway/<name>` or `static`.
    pub source: String,
    /// `metadata.generation` of the spec these errors/this snapshot answer.
    pub generation: i64,
    /// When the index computed this state (the central change that caused it was seen just before).
    /// Not part of equality: it measures propagation, it is not state.
    pub changed_at: Option<std::time::Instant>,
}

impl PartialEq for Desired {
    fn eq(&self, other: &Self) -> bool {
        self.snapshot == other.snapshot
            && self.errors == other.errors
            && self.retire == other.retire
            && self.source == other.source
            && self.generation == other.generation
    }
}

impl Desired {
    pub fn version(&self) -> &str {
        self.snapshot
            .as_ref()
            .map(|s| s.version.as_str())
            .unwrap_or_default()
    }

    pub fn endpoints(&self) -> usize {
        self.snapshot
            .as_ref()
            .map(|s| s.services.iter().map(|svc| svc.endpoints.len()).sum())
            .unwrap_or(0)
    }
}
