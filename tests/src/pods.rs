//! Pods as a kubelet would leave them. Nothing runs them here, so tests set their status themselves.

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use std::collections::BTreeMap;

/// A Pod with one container exposing `ports` (name, containerPort).
pub fn mk_pod(name: &str, labels: &[(&str, &str)], ports: &[(&str, i32)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "discovery".into(),
                image: Some("istio/pilot:test".into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ContainerPort {
                            name: Some(n.to_string()),
                            container_port: *p,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets phase Running, `podIP`/`podIPs` and the Ready condition through the status subresource.
pub async fn set_pod_status(
    pods: &Api<Pod>,
    name: &str,
    ips: &[&str],
    ready: bool,
) -> kube::Result<Pod> {
    let status = serde_json::json!({
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.1",
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            }],
        }
    });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
}

/// Creates a pod and makes it running with `ips` and the given readiness.
pub async fn create_running_pod(
    pods: &Api<Pod>,
    pod: &Pod,
    ips: &[&str],
    ready: bool,
) -> kube::Result<Pod> {
    pods.create(&Default::default(), pod).await?;
    set_pod_status(
        pods,
        pod.metadata.name.as_deref().unwrap_or_default(),
        ips,
        ready,
    )
    .await
}
