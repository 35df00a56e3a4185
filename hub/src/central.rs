//! What the hub keeps of the central cluster's objects: the parts of Pods and Services that a
//! snapshot is built from. Built from the watched objects, stored by the index.

use crate::crd::MirrorPort;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

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
    pub fn from_pod(pod: &Pod) -> Self {
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
