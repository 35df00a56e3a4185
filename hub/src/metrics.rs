//! The hub's metrics. One registry, built in the wiring and passed to the admin server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

impl Reason {
    pub fn of(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
        }
    }
}

/// One API-access request, as counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequest {
    pub cluster: String,
    /// get, list, watch, create, update, patch, delete, ... (RBAC's verb), or "invalid".
    pub verb: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Verb {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cluster {
    pub cluster: String,
}

#[derive(Clone)]
pub struct HubMetrics {
    pub streams_connected: Gauge,
    pub snapshots_pushed: Counter,
    pub acks: Counter,
    /// reason: conflict | rejected
    pub nacks: Family<Reason, Counter>,
    /// Snapshot sent -> its ACK received.
    pub push_ack_seconds: Histogram,
    /// The hub saw the central change (watch event) -> the agent ACKed the state containing it.
    pub propagation_seconds: Histogram,
    /// Streams refused, by reason: unknown_cluster | identity_mismatch | no_hello | not_ready | bad_certificate
    pub streams_refused: Family<Reason, Counter>,
    /// Agents asked to move to a new stream, by reason: max_age | drain
    pub streams_moved: Family<Reason, Counter>,
    pub status_writes: Counter,
    /// API access: istiod's requests by remote, verb and answer.
    pub api_requests: Family<ApiRequest, Counter>,
    /// API access: request -> head of the answer (a watch's first byte of headers), by verb.
    pub api_request_seconds: Family<Verb, Histogram, fn() -> Histogram>,
    /// API access: watches streaming now, by remote.
    pub api_open_watches: Family<Cluster, Gauge>,
    /// API access: agents' tunnels up now.
    pub api_tunnels_connected: Gauge,
    /// API access: istiod's requests this replica passed to the replica holding the tunnel.
    pub api_forwarded: Counter,
}

impl HubMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let m = Self {
            streams_connected: Gauge::default(),
            snapshots_pushed: Counter::default(),
            acks: Counter::default(),
            nacks: Family::default(),
            push_ack_seconds: latency(),
            propagation_seconds: latency(),
            streams_refused: Family::default(),
            streams_moved: Family::default(),
            status_writes: Counter::default(),
            api_requests: Family::default(),
            api_request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            }),
            api_open_watches: Family::default(),
            api_tunnels_connected: Gauge::default(),
            api_forwarded: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("tether_hub");
        r.register(
            "streams_connected",
            "Agent streams open now",
            m.streams_connected.clone(),
        );
        r.register(
            "snapshots_pushed",
            "Snapshots sent to agents",
            m.snapshots_pushed.clone(),
        );
        r.register("acks", "Snapshots acknowledged by agents", m.acks.clone());
        r.register(
            "nacks",
            "Snapshots rejected by agents, by reason",
            m.nacks.clone(),
        );
        r.register(
            "push_ack_seconds",
            "Time from sending a snapshot to its ACK",
            m.push_ack_seconds.clone(),
        );
        r.register(
            "propagation_seconds",
            "Time from the hub seeing a central change to the agent's ACK of it",
            m.propagation_seconds.clone(),
        );
        r.register(
            "streams_refused",
            "Agent streams refused, by reason",
            m.streams_refused.clone(),
        );
        r.register(
            "streams_moved",
            "Agents asked to move to a new stream (Reconnect), by reason",
            m.streams_moved.clone(),
        );
        r.register(
            "status_writes",
            "RemoteCluster status writes",
            m.status_writes.clone(),
        );
        r.register(
            "api_requests",
            "API access: requests from istiod, by remote, verb and status code",
            m.api_requests.clone(),
        );
        r.register(
            "api_request_seconds",
            "API access: time from istiod's request to the head of the remote's answer, by verb",
            m.api_request_seconds.clone(),
        );
        r.register(
            "api_open_watches",
            "API access: watches streaming from a remote to istiod now",
            m.api_open_watches.clone(),
        );
        r.register(
            "api_tunnels_connected",
            "API access: agents' tunnels up now",
            m.api_tunnels_connected.clone(),
        );
        r.register(
            "api_forwarded",
            "API access: istiod's requests passed to the hub replica that holds the remote's tunnel",
            m.api_forwarded.clone(),
        );
        m
    }
}
