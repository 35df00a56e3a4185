//! Test fixtures shared by the hub's unit tests: central objects and RemoteClusters as the
//! watches would deliver them.

use crate::crd::{RemoteCluster, RemoteClusterSpec};
use crate::desired::Desired;
use crate::snapshot::Defaults;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

pub fn mk_pod(name: &str, app: &str, ips: &[&str], ready: bool, ports: &[(&str, i32)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "discovery".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ContainerPort {
                            name: Some(n.to_string()),
                            container_port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// ports: (name, port, targetPort name or number as text)
pub fn mk_service(name: &str, selector: &[(&str, &str)], ports: &[(&str, i32, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(
                selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: Some(n.to_string()),
                        port: *p,
                        protocol: Some("TCP".into()),
                        target_port: Some(match t.parse::<i32>() {
                            Ok(num) => IntOrString::Int(num),
                            Err(_) => IntOrString::String(t.to_string()),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn defaults() -> Defaults {
    Defaults {
        remote_namespace: "istio-system".into(),
        services: vec!["istiod".into()],
        injection_labels: [("istio-injection".to_string(), "enabled".to_string())].into(),
    }
}

/// A RemoteCluster at generation 1, as the watch delivers it.
pub fn mk_remote(name: &str, spec: RemoteClusterSpec) -> RemoteCluster {
    let mut rc = RemoteCluster::new(name, spec);
    rc.metadata.generation = Some(1);
    rc
}

/// A desired state whose snapshot says only `version`, for spec generation 3.
pub fn mk_desired(version: &str) -> Desired {
    Desired {
        snapshot: Some(std::sync::Arc::new(tether_proto::v1::Snapshot {
            version: version.into(),
            ..Default::default()
        })),
        generation: 3,
        ..Default::default()
    }
}
