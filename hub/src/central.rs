//! What the hub keeps of the central cluster's objects: the parts of Pods and Services that a
//! snapshot is built from. Built from the watched objects, stored by the index.

use crate::crd::MirrorPort;
use k8s_openapi::api::core::v1::{ContainerPort, PodIP, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A central Pod as the hub decodes it from its watch: the fields [`PodInfo`] reads and the
/// metadata a watch needs, nothing else. A Pod is mostly what the hub never reads (containers'
/// images, env, probes, volumes; managedFields; most of its status); the decoder skips those
/// without building them. Decoding the whole Pod was a fifth of the hub's CPU between reading a pod
/// event and its first send (docs/benchmarks.md, the analysis of section 1).
#[derive(Clone, Debug, Deserialize)]
pub struct CentralPod {
    #[serde(deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    pub spec: Option<LeanPodSpec>,
    pub status: Option<LeanPodStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LeanPodSpec {
    #[serde(default)]
    pub containers: Vec<LeanContainer>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LeanContainer {
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
    pub conditions: Option<Vec<LeanCondition>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LeanCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

/// The metadata a watch and the index use; managedFields, annotations and owner references are
/// skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    deletion_timestamp: Option<Time>,
}

fn lean_metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = LeanMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl k8s_openapi::Resource for CentralPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CentralPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A full Pod as the hub would decode it (test fixtures are built as Pods).
#[cfg(test)]
impl From<&k8s_openapi::api::core::v1::Pod> for CentralPod {
    fn from(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        serde_json::from_value(serde_json::to_value(pod).expect("a Pod serialises"))
            .expect("a Pod decodes as a CentralPod")
    }
}

/// What the index keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: BTreeMap<String, String>,
    /// Every pod IP (dual stack gives two).
    pub ips: Vec<String>,
    pub ready: bool,
    pub terminating: bool,
    /// Succeeded or Failed: never an endpoint.
    pub finished: bool,
    /// (name, protocol, containerPort) of every named container port.
    pub ports: Vec<(String, String, i32)>,
}

impl PodInfo {
    pub fn from_pod(pod: &CentralPod) -> Self {
        let status = pod.status.as_ref();
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|p| p.ip.clone()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.clone())
        {
            ips.push(ip);
        }
        ips.retain(|ip| !ip.is_empty());
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some((
                    p.name.clone()?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.container_port,
                ))
            })
            .collect();
        Self {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            finished: matches!(phase, "Succeeded" | "Failed"),
            ports,
        }
    }

    pub fn target_port(&self, port: &MirrorPort) -> i32 {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        match &port.target_port {
            None => port.port,
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(name)) => self
                .ports
                .iter()
                .find(|(n, p, _)| n == name && p == protocol)
                .map(|(_, _, number)| *number)
                .unwrap_or(0),
        }
    }
}

/// What the index keeps of a central Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CentralService {
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<MirrorPort>,
    /// `.status.loadBalancer.ingress`: the IPs, and the hostnames of entries without an IP.
    pub ingress_ips: Vec<String>,
    pub ingress_hostnames: Vec<String>,
}

impl CentralService {
    pub fn from_service(svc: &Service) -> Self {
        let spec = svc.spec.as_ref();
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .map(|p| MirrorPort {
                        name: p.name.clone().unwrap_or_default(),
                        port: p.port,
                        target_port: p.target_port.clone(),
                        protocol: p.protocol.clone(),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        let mut ingress_ips: Vec<String> = ingress.iter().filter_map(|i| i.ip.clone()).collect();
        let mut ingress_hostnames: Vec<String> = ingress
            .iter()
            .filter(|i| i.ip.is_none())
            .filter_map(|i| i.hostname.clone())
            .collect();
        ingress_ips.sort();
        ingress_ips.dedup();
        ingress_hostnames.sort();
        ingress_hostnames.dedup();
        Self {
            selector: spec.and_then(|s| s.selector.clone()),
            ports,
            ingress_ips,
            ingress_hostnames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    /// An istiod pod as the API server sends it in a watch event, trimmed but with each kind of
    /// field the decoder skips: managedFields, annotations, owner references, env, volumes,
    /// container statuses.
    fn istiod_pod(deleting: bool, phase: &str) -> serde_json::Value {
        let mut pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": "istiod-7d4b9c-x2x8q", "namespace": "istio-system",
                "uid": "0b7c3f3e-1111-4c2e-9a53-2f0a7e0f9d11", "resourceVersion": "48213",
                "labels": {"app": "istiod", "istio.io/rev": "default"},
                "annotations": {"prometheus.io/scrape": "true", "sidecar.istio.io/inject": "false"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "istiod-7d4b9c",
                    "uid": "9f0e", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-11-27T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
            },
            "spec": {
                "containers": [{
                    "name": "discovery", "image": "docker.io/istio/pilot:1.28.0",
                    "args": ["discovery", "--monitoringAddr=:15014"],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"name": "grpc-xds", "containerPort": 15010, "protocol": "TCP"},
                              {"name": "https-dns", "containerPort": 15012, "protocol": "TCP"},
                              {"containerPort": 15014, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                    "volumeMounts": [{"name": "istio-token", "mountPath": "/var/run/secrets/tokens"}]
                }],
                "volumes": [{"name": "istio-token", "projected": {"sources": [{"serviceAccountToken":
                    {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}}],
                "nodeName": "node-1"
            },
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-27T10:00:00Z"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T10:00:05Z"}
                ],
                "podIP": "10.244.0.7",
                "podIPs": [{"ip": "10.244.0.7"}, {"ip": "fd00::7"}],
                "containerStatuses": [{"name": "discovery", "ready": true, "restartCount": 0,
                    "image": "docker.io/istio/pilot:1.28.0", "imageID": "sha256:ab",
                    "state": {"running": {"startedAt": "2026-11-27T10:00:02Z"}}}]
            }
        });
        if deleting {
            pod["metadata"]["deletionTimestamp"] = "2026-11-27T11:00:00Z".into();
        }
        pod
    }

    #[test]
    fn a_central_pod_keeps_what_the_index_reads_and_skips_the_rest() {
        let pod: CentralPod = serde_json::from_value(istiod_pod(false, "Running")).unwrap();
        assert_eq!(pod.name_any(), "istiod-7d4b9c-x2x8q");
        assert_eq!(pod.namespace().as_deref(), Some("istio-system"));
        assert_eq!(pod.resource_version().as_deref(), Some("48213"));
        assert_eq!(
            pod.uid().as_deref(),
            Some("0b7c3f3e-1111-4c2e-9a53-2f0a7e0f9d11")
        );
        assert!(pod.metadata.managed_fields.is_none());
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.metadata.owner_references.is_none());
        assert_eq!(
            PodInfo::from_pod(&pod),
            PodInfo {
                labels: [("app", "istiod"), ("istio.io/rev", "default")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                ips: vec!["10.244.0.7".into(), "fd00::7".into()],
                ready: true,
                terminating: false,
                finished: false,
                ports: vec![
                    ("grpc-xds".into(), "TCP".into(), 15010),
                    ("https-dns".into(), "TCP".into(), 15012),
                ],
            }
        );
    }

    #[test]
    fn a_deleting_or_finished_central_pod_says_so() {
        let deleting: CentralPod = serde_json::from_value(istiod_pod(true, "Running")).unwrap();
        assert!(PodInfo::from_pod(&deleting).terminating);
        let failed: CentralPod = serde_json::from_value(istiod_pod(false, "Failed")).unwrap();
        assert!(PodInfo::from_pod(&failed).finished);
        // A pod just created: no status, no spec ports.
        let bare: CentralPod = serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
        )
        .unwrap();
        let info = PodInfo::from_pod(&bare);
        assert!(info.ips.is_empty() && !info.ready && info.ports.is_empty());
    }
}
