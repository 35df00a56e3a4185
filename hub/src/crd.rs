//! The `RemoteCluster` resource (`tether.io/v1alpha1`): one per remote, in the hub's namespace.
//! What a schema can check is checked by the API server; the rest is reported in the `SpecValid` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Finalizer the hub keeps on every RemoteCluster so that deletion can first retire the agent.
pub const FINALIZER: &str = "tether.io/retire";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "RemoteCluster",
    namespaced,
    status = "RemoteClusterStatus",
    // `rc` is ReplicationController's; `kubectl get tether` lists every Tether kind.
    shortname = "trc",
    category = "tether",
    doc = "A remote cluster joined to the mesh: what the hub mirrors into it (spec) and where its agent stands (status). One per remote, in the hub's namespace; `tether-hub join` creates it.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].reason"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.sync.endpointSource"}"#,
    printcolumn = r#"{"name":"API","type":"string","jsonPath":".status.conditions[?(@.type==\"APIAccess\")].reason"}"#,
    printcolumn = r#"{"name":"Hub","type":"string","priority":1,"jsonPath":".status.agent.hub"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
/// What the hub mirrors into this remote: control-plane Services with their endpoints, namespace
/// injection labels, and (opt-in) API access for central istiod.
pub struct RemoteClusterSpec {
    /// Control-plane Services to mirror into the remote. Empty: the hub's defaults (istiod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceMirror>,
    /// Remote namespaces to label for sidecar injection.
    #[serde(default)]
    pub injection: InjectionSpec,
    /// Reserved for multi-network meshes (gateway endpoints); must be empty for now.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Where the mirrors' endpoints come from: the central pods (default), the load-balancer address
    /// of a central Service (the east-west gateway, for a remote on another network), or a fixed list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsSpec>,
    /// API access: central istiod reaches this remote's API server through its agent (the hub writes
    /// the Istio remote secret; the agent must run with `--api-access`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_access: Option<ApiAccess>,
    /// Also mirror each Service's legacy v1 Endpoints object (default true). Kubernetes deprecated
    /// that API in 1.33; istiod, kube-proxy and CoreDNS read EndpointSlices. false: the agent
    /// writes only EndpointSlices (one write per change instead of two) and removes the Endpoints
    /// objects it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_endpoints: Option<bool>,
}

/// Where a remote's mirror endpoints come from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsSpec {
    /// `Pods` (default): the central pods' IPs, for a remote that routes to them. `Gateway`: the
    /// load-balancer ingress of the central Service `gateway` (Istio's east-west gateway exposing
    /// istiod); a hostname-only ingress makes the mirror an ExternalName Service. `Static`: `addresses`.
    #[serde(default)]
    pub source: EndpointSource,
    /// Gateway: the central Service (in the hub's namespace) whose `.status.loadBalancer.ingress` the
    /// remote dials.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Static: IP addresses, or a single DNS name (the mirror becomes an ExternalName Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Gateway and Static: the port to dial for a mirror port, by the mirror port's name. Default: the
    /// port numbered like the mirror port's target (15012, 15017), which for a gateway must exist on it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, i32>,
}

/// See [`EndpointsSpec::source`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EndpointSource {
    #[default]
    Pods,
    Gateway,
    Static,
}

impl EndpointsSpec {
    /// How `kubectl get` and `tether-hub status` name the source: `pods`, `gateway/<name>`, `static`.
    pub fn describe(spec: Option<&EndpointsSpec>) -> String {
        match spec.map(|e| (e.source, e.gateway.as_str())) {
            None | Some((EndpointSource::Pods, _)) => "pods".into(),
            Some((EndpointSource::Gateway, g)) => format!("gateway/{g}"),
            Some((EndpointSource::Static, _)) => "static".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiAccess {
    /// Serve istiod's requests for this remote through its agent, and write its remote secret.
    #[serde(default)]
    pub enabled: bool,
}

impl RemoteClusterSpec {
    /// Whether istiod may reach this remote's API server through its agent.
    pub fn api_access_enabled(&self) -> bool {
        self.api_access.as_ref().is_some_and(|a| a.enabled)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMirror {
    /// Name of the central Service (in the control-plane namespace) and of its mirror.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Pods backing the mirror. Default: the central Service's selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Ports of the mirror. Default: the central Service's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<MirrorPort>>,
    /// `clusterIP: None` instead of a ClusterIP Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headless: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorPort {
    /// The port's name (required when there are several).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The mirror Service's port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Number or name of the pod's port; named ports are resolved per pod. Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port's application protocol (e.g. `grpc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionSpec {
    /// Namespaces of the remote to label (they must exist there; a missing one is reported in the NACK).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Default `istio-injection: enabled`; use `istio.io/rev: <rev>` for revision-based installs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Where a remote stands, in one word.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// No agent has connected for this cluster yet.
    Pending,
    /// An agent is connected and has not applied the desired version yet.
    Connected,
    /// The agent applied the desired version.
    Synced,
    /// Something needs a person: a NACK, a spec that does not compute, two agents.
    Degraded,
    /// The agent's stream is closed.
    Disconnected,
}

/// Condition types and reasons of the RemoteCluster status.
pub mod condition {
    pub const CONNECTED: &str = "Connected";
    pub const SYNCED: &str = "Synced";
    pub const SPEC_VALID: &str = "SpecValid";
    pub const SINGLE_AGENT: &str = "SingleAgent";
    /// Only on remotes with `apiAccess.enabled`.
    pub const API_ACCESS: &str = "APIAccess";

    pub mod reason {
        pub const AGENT_CONNECTED: &str = "AgentConnected";
        pub const AGENT_DISCONNECTED: &str = "AgentDisconnected";
        pub const NEVER_CONNECTED: &str = "NeverConnected";
        pub const ACKED: &str = "Acked";
        pub const NACKED: &str = "Nacked";
        pub const CONFLICT: &str = "Conflict";
        pub const NO_DESIRED_STATE: &str = "NoDesiredState";
        pub const PENDING: &str = "Pending";
        pub const VALID: &str = "Valid";
        pub const NO_ENDPOINTS: &str = "NoEndpoints";
        pub const INVALID: &str = "Invalid";
        /// The endpoint source's gateway Service is missing or has no load-balancer address yet.
        pub const GATEWAY_NOT_READY: &str = "GatewayNotReady";
        pub const ONE_AGENT: &str = "OneAgent";
        pub const DUPLICATE_AGENT: &str = "DuplicateAgent";
        pub const READY: &str = "Ready";
        pub const TUNNEL_PENDING: &str = "TunnelPending";
        pub const NO_TUNNEL: &str = "NoTunnel";
        pub const HUB_NOT_SERVING: &str = "HubNotServing";
        pub const REMOTE_SECRET_BLOCKED: &str = "RemoteSecretBlocked";
    }
}

/// Written by the hub: the phase, conditions (Connected, Synced, SpecValid, APIAccess), the agent and
/// its last rejection. `Synced` means the agent held the hub's desired state within the hub's
/// `--sync-deadline` (10 s). The versions themselves are the hub's live view: `tether-hub status`
/// shows both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Address the agent's stream came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<Time>,
    /// When the agent was last heard from; written once its stream has closed (while it is
    /// connected, the hub's live view has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// The hub replica that holds (or last held) the agent's stream, and writes this status. Empty:
    /// no live replica holds it (the leader writes it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hub: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    // What moves with every central change (the desired and acknowledged versions, the endpoint
    // count, the last ACK) is not here: it is the hub's live view (`/streams`, `tether-hub status
    // --admin-url`). A status carries what changes with the remote's state, so pod churn costs no
    // status writes (docs/architecture.md, "What status carries").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<NackStatus>,
    /// Where the endpoints come from: `pods`, `gateway/<Service>` or `static` (spec.endpoints).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint_source: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NackStatus {
    pub version: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}
