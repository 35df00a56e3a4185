//! The agent's metrics. One registry, built in `run` and passed to the admin server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Write {
    pub kind: String,
    /// apply | delete
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectKind {
    pub kind: String,
}

/// The `reason` label values of `tether_agent_reconnects_total`: how the previous stream ended
/// (`moved`: the hub asked the agent to move and the new stream replaced the old one).
pub const RECONNECT_REASONS: [&str; 9] = [
    "tls_files",
    "connect",
    "refused",
    "permission_denied",
    "replaced",
    "duplicate",
    "broken",
    "closed",
    "moved",
];

#[derive(Clone)]
pub struct AgentMetrics {
    pub connected: Gauge,
    /// By how the previous stream ended: one of [`RECONNECT_REASONS`].
    pub reconnects: Family<Reason, Counter>,
    pub snapshots_applied: Counter,
    /// Snapshots cut short after their EndpointSlices because a newer one waited.
    pub snapshots_superseded: Counter,
    /// Of those, the ones cut short while their writes after the slices were out: the newer
    /// snapshot's slices went ahead of them.
    pub snapshots_overtaken: Counter,
    /// Snapshots applied completely while a newer one already waited: the newer one's answer
    /// answers for them.
    pub snapshots_answered_by_newer: Counter,
    pub apply_errors: Family<ObjectKind, Counter>,
    /// API writes by kind and verb; a failed write counts too (it reached the API server).
    pub api_writes: Family<Write, Counter>,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connected: Gauge::default(),
            reconnects: Family::default(),
            snapshots_applied: Counter::default(),
            snapshots_superseded: Counter::default(),
            snapshots_overtaken: Counter::default(),
            snapshots_answered_by_newer: Counter::default(),
            apply_errors: Family::default(),
            api_writes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tether_agent");
        r.register(
            "connected",
            "1 while a stream to the hub is open",
            m.connected.clone(),
        );
        r.register(
            "reconnects",
            "Stream reconnects, by how the previous one ended",
            m.reconnects.clone(),
        );
        r.register(
            "snapshots_applied",
            "Snapshots applied completely (ACKed or NACKed, unless a newer one waited)",
            m.snapshots_applied.clone(),
        );
        r.register(
            "snapshots_superseded",
            "Snapshots cut short after their EndpointSlices for a newer one (not answered; the newer is)",
            m.snapshots_superseded.clone(),
        );
        r.register(
            "snapshots_overtaken",
            "Snapshots cut short while their writes after the EndpointSlices were out: a newer one's slices went ahead (counted as superseded too)",
            m.snapshots_overtaken.clone(),
        );
        r.register(
            "snapshots_answered_by_newer",
            "Snapshots applied while a newer one already waited (not answered; the newer is)",
            m.snapshots_answered_by_newer.clone(),
        );
        r.register(
            "apply_errors",
            "Objects that failed to apply, by kind",
            m.apply_errors.clone(),
        );
        r.register(
            "api_writes",
            "Writes to the local API server, by kind and verb",
            m.api_writes.clone(),
        );
        m
    }

    pub fn write(&self, kind: &str, verb: &str) {
        self.api_writes
            .get_or_create(&Write {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }
}
