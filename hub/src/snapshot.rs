//! Building one remote's snapshot from the central state: which pods back each mirrored Service, with
//! which addresses, conditions and (per pod) resolved target ports. Pure functions; every list is sorted
//! so that the content hash (the version) does not depend on event order.

use crate::central::{CentralService, PodInfo};
use crate::crd::{EndpointSource, EndpointsSpec, MirrorPort, RemoteClusterSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tether_proto::check::{is_service_name, validate_label};
use tether_proto::identity::is_dns_label;
use tether_proto::v1::{Endpoint, Injection, Port, Service as SnapService, Snapshot};

/// Settings that apply to every remote.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Remote namespace for the mirrored Services (usually the same name as the central one).
    pub remote_namespace: String,
    /// Services mirrored when a spec lists none.
    pub services: Vec<String>,
    /// Injection labels when a spec gives none.
    pub injection_labels: BTreeMap<String, String>,
}

/// The snapshot for `spec`, or every reason it cannot be built.
pub fn build(
    spec: &RemoteClusterSpec,
    defaults: &Defaults,
    services: &HashMap<String, CentralService>,
    pods: &HashMap<String, PodInfo>,
) -> Result<Snapshot, Vec<String>> {
    let mut errors = Vec::new();
    if !spec.network.is_empty() {
        errors.push(format!(
            "spec.network {:?} is reserved; leave it empty (a remote on another network reaches istiod through a gateway: spec.endpoints.source Gateway)",
            spec.network
        ));
    }
    let wanted: Vec<crate::crd::ServiceMirror> = if spec.services.is_empty() {
        defaults
            .services
            .iter()
            .map(|n| crate::crd::ServiceMirror {
                name: n.clone(),
                ..Default::default()
            })
            .collect()
    } else {
        spec.services.clone()
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for mirror in &wanted {
        if !seen.insert(mirror.name.clone()) {
            errors.push(format!("service {:?} is listed twice", mirror.name));
            continue;
        }
        match mirror_service(mirror, spec.endpoints.as_ref(), services, pods) {
            Ok(svc) => out.push(svc),
            Err(e) => errors.push(format!("service {:?}: {e}", mirror.name)),
        }
    }
    let labels = spec
        .injection
        .labels
        .clone()
        .unwrap_or_else(|| defaults.injection_labels.clone());
    for (k, v) in &labels {
        if let Err(e) = validate_label(k, v) {
            errors.push(format!("injection label {k}={v}: {e}"));
        }
    }
    let namespaces: BTreeSet<String> = spec.injection.namespaces.iter().cloned().collect();
    for ns in &namespaces {
        if !is_dns_label(ns) {
            errors.push(format!(
                "injection namespace {ns:?} is not a valid namespace name"
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let mut snap = Snapshot {
        version: String::new(),
        nonce: String::new(),
        namespace: defaults.remote_namespace.clone(),
        services: out,
        injection: Some(Injection {
            namespaces: namespaces.into_iter().collect(),
            labels,
        }),
        skip_legacy_endpoints: spec.legacy_endpoints == Some(false),
    };
    // What the agent would refuse is reported here instead (the central objects come from an API
    // server that validated them, so this is a safety net).
    let problems = tether_proto::check::snapshot(&snap);
    if !problems.is_empty() {
        return Err(problems);
    }
    snap.version = tether_proto::version::of(&snap);
    Ok(snap)
}

/// How an error about a gateway that is missing or has no address yet begins (the status tells it
/// from a spec mistake: the spec is fine, the gateway is not there yet).
pub const GATEWAY_NOT_READY: &str = "gateway not ready: ";

fn mirror_service(
    mirror: &crate::crd::ServiceMirror,
    source: Option<&EndpointsSpec>,
    services: &HashMap<String, CentralService>,
    pods: &HashMap<String, PodInfo>,
) -> Result<SnapService, String> {
    if !is_service_name(&mirror.name) {
        return Err("not a valid Service name".into());
    }
    let central = services.get(&mirror.name);
    let ports = mirror
        .ports
        .clone()
        .or_else(|| central.map(|c| default_ports(&mirror.name, c)));
    let (endpoints, external_name) = match source {
        None
        | Some(EndpointsSpec {
            source: EndpointSource::Pods,
            ..
        }) => {
            let selector = mirror
                .selector
                .clone()
                .or_else(|| central.and_then(|c| c.selector.clone()));
            let (Some(selector), Some(ports)) = (selector, ports.as_ref()) else {
                return Err("no such Service in the control-plane namespace; create it, or give selector and ports in the spec".into());
            };
            validate_ports(ports)?;
            (pod_endpoints(&selector, ports, pods)?, String::new())
        }
        Some(e) => {
            let Some(ports) = ports.as_ref() else {
                return Err("no such Service in the control-plane namespace; create it, or give ports in the spec".into());
            };
            validate_ports(ports)?;
            let found = fixed_endpoints(e, ports, services)?;
            if !found.1.is_empty() && mirror.headless == Some(true) {
                return Err("a headless mirror cannot be an ExternalName Service".into());
            }
            found
        }
    };
    let ports = ports.expect("checked above");
    Ok(SnapService {
        name: mirror.name.clone(),
        headless: mirror.headless.unwrap_or(false),
        ports: ports
            .iter()
            .map(|p| Port {
                name: p.name.clone(),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: p.port,
                app_protocol: p.app_protocol.clone().unwrap_or_default(),
                target_port: match p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
                    _ => 0,
                },
            })
            .collect(),
        endpoints,
        external_name,
    })
}

/// The pods matching `selector`, each with its resolved target ports.
fn pod_endpoints(
    selector: &BTreeMap<String, String>,
    ports: &[MirrorPort],
    pods: &HashMap<String, PodInfo>,
) -> Result<Vec<Endpoint>, String> {
    if selector.is_empty() {
        return Err("empty selector would match every pod".into());
    }
    for (k, v) in selector {
        validate_label(k, v).map_err(|e| format!("selector {k}={v}: {e}"))?;
    }
    let mut endpoints = Vec::new();
    for (name, pod) in pods {
        if pod.finished || !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
            continue;
        }
        let target_ports: Vec<i32> = ports.iter().map(|p| pod.target_port(p)).collect();
        for ip in &pod.ips {
            endpoints.push(Endpoint {
                ip: ip.clone(),
                ready: pod.ready && !pod.terminating,
                serving: pod.ready,
                terminating: pod.terminating,
                pod_name: name.clone(),
                zone: String::new(),
                target_ports: target_ports.clone(),
            });
        }
    }
    // One endpoint per address and ports: two live pods can claim one IP (a pod the kubelet lost
    // touch with, its IP reused). The ready one wins.
    endpoints.sort_by(|a, b| {
        (&a.ip, &a.target_ports, !a.ready, &a.pod_name).cmp(&(
            &b.ip,
            &b.target_ports,
            !b.ready,
            &b.pod_name,
        ))
    });
    endpoints
        .dedup_by(|later, kept| later.ip == kept.ip && later.target_ports == kept.target_ports);
    Ok(endpoints)
}

/// A gateway's load-balancer address or a fixed list: (endpoints, or an ExternalName's host).
fn fixed_endpoints(
    e: &EndpointsSpec,
    ports: &[MirrorPort],
    services: &HashMap<String, CentralService>,
) -> Result<(Vec<Endpoint>, String), String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let target = |p: &MirrorPort| match &p.target_port {
        None => p.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(_)) => 0,
    };
    let (ips, hosts, dial): (Vec<String>, Vec<String>, Vec<i32>) = match e.source {
        EndpointSource::Gateway => {
            if e.gateway.is_empty() {
                return Err("spec.endpoints.gateway names no Service".into());
            }
            let Some(gw) = services.get(&e.gateway) else {
                return Err(format!(
                    "{GATEWAY_NOT_READY}Service {:?} not found in the control-plane namespace; the remote keeps its previous endpoints",
                    e.gateway
                ));
            };
            if gw.ingress_ips.is_empty() && gw.ingress_hostnames.is_empty() {
                return Err(format!(
                    "{GATEWAY_NOT_READY}Service {:?} has no load-balancer address yet; the remote keeps its previous endpoints",
                    e.gateway
                ));
            }
            let mut dial = Vec::new();
            for p in ports {
                let want = e.ports.get(&p.name).copied().unwrap_or(target(p));
                if !gw.ports.iter().any(|g| g.port == want) {
                    return Err(format!(
                        "port {:?}: the gateway Service {:?} has no port {want}; add it there, or map the port in spec.endpoints.ports",
                        p.name, e.gateway
                    ));
                }
                dial.push(want);
            }
            (gw.ingress_ips.clone(), gw.ingress_hostnames.clone(), dial)
        }
        EndpointSource::Static => {
            if e.addresses.is_empty() {
                return Err("spec.endpoints.addresses is empty".into());
            }
            let (ips, hosts): (Vec<String>, Vec<String>) = e
                .addresses
                .iter()
                .cloned()
                .partition(|a| a.parse::<std::net::IpAddr>().is_ok());
            if !hosts.is_empty() && (hosts.len() > 1 || !ips.is_empty()) {
                return Err("spec.endpoints.addresses: IP addresses, or a single DNS name".into());
            }
            let mut dial = Vec::new();
            for p in ports {
                let want = e.ports.get(&p.name).copied().unwrap_or(target(p));
                if !(1..=65535).contains(&want) {
                    return Err(format!(
                        "port {:?} has a named target; give its number in spec.endpoints.ports",
                        p.name
                    ));
                }
                dial.push(want);
            }
            (ips, hosts, dial)
        }
        EndpointSource::Pods => unreachable!("pods are handled by the caller"),
    };
    if ips.is_empty() {
        // Only hostnames (a cloud load balancer such as AWS's): a DNS alias, first name in order.
        let host = hosts.into_iter().min().expect("checked non-empty");
        if !tether_proto::check::is_dns_subdomain(&host) {
            return Err(format!("address {host:?} is neither an IP nor a DNS name"));
        }
        return Ok((Vec::new(), host));
    }
    let mut endpoints: Vec<Endpoint> = ips
        .into_iter()
        .map(|ip| Endpoint {
            ip,
            ready: true,
            serving: true,
            terminating: false,
            pod_name: String::new(),
            zone: String::new(),
            target_ports: dial.clone(),
        })
        .collect();
    endpoints.sort_by(|a, b| a.ip.cmp(&b.ip));
    Ok((endpoints, String::new()))
}

/// The secure xDS and CA port of istiod.
const ISTIOD_SECURE: i32 = 15012;

/// A mirror's ports when its spec gives none: the central Service's, except for Istio's control
/// plane (`istiod` or `istiod-<revision>`, serving 15012), whose mirror takes the shape Istio's own
/// `remote` profile puts in a remote: `tcp-istiod` 15012 and `tcp-webhook` 443, each to the central
/// Service's target of that port.
fn default_ports(name: &str, central: &CentralService) -> Vec<MirrorPort> {
    let control_plane = name == "istiod" || name.starts_with("istiod-");
    let port = |number: i32| central.ports.iter().find(|p| p.port == number);
    if !control_plane || port(ISTIOD_SECURE).is_none() {
        return central.ports.clone();
    }
    let mirrored = |mirror_name: &str, number: i32| {
        port(number).map(|p| MirrorPort {
            name: mirror_name.into(),
            port: number,
            target_port: p.target_port.clone(),
            protocol: Some("TCP".into()),
            app_protocol: None,
        })
    };
    [
        mirrored("tcp-istiod", ISTIOD_SECURE),
        mirrored("tcp-webhook", 443),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn validate_ports(ports: &[MirrorPort]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("no ports".into());
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for p in ports {
        if !(1..=65535).contains(&p.port) {
            return Err(format!("port {} out of range 1-65535", p.port));
        }
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            return Err(format!(
                "port {}: protocol {protocol:?} is not TCP, UDP or SCTP",
                p.port
            ));
        }
        if !names.insert(p.name.clone()) {
            return Err(format!("port name {:?} used twice", p.name));
        }
        if !numbers.insert((p.port, protocol.to_string())) {
            return Err(format!("port {}/{protocol} used twice", p.port));
        }
        if ports.len() > 1 && p.name.is_empty() {
            return Err(format!(
                "port {} needs a name when a Service has several ports",
                p.port
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceMirror;
    use crate::fixtures::{defaults, mk_pod, mk_service};
    use k8s_openapi::api::core::v1::Pod;

    fn state(pods: &[Pod]) -> (HashMap<String, CentralService>, HashMap<String, PodInfo>) {
        let svc = mk_service(
            "istiod",
            &[("app", "istiod")],
            &[("grpc-xds", 15010, "xds"), ("https-webhook", 443, "15017")],
        );
        let services = [("istiod".to_string(), CentralService::from_service(&svc))].into();
        let pods = pods
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap(),
                    PodInfo::from_pod(&p.into()),
                )
            })
            .collect();
        (services, pods)
    }

    /// Central: istiod (15012, 443 -> 15017) and an east-west gateway with these ingress entries
    /// (`ip` or `host:<name>`).
    fn gateway_state(ingress: &[&str]) -> HashMap<String, CentralService> {
        let istiod = mk_service(
            "istiod",
            &[("app", "istiod")],
            &[
                ("grpc-xds", 15010, "15010"),
                ("https-dns", 15012, "15012"),
                ("https-webhook", 443, "15017"),
            ],
        );
        let mut gw = mk_service(
            "eastwest",
            &[("istio", "eastwestgateway")],
            &[
                ("status-port", 15021, "15021"),
                ("tls", 15443, "15443"),
                ("tls-istiod", 15012, "15012"),
                ("tls-webhook", 15017, "15017"),
            ],
        );
        use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        gw.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|i| match i.strip_prefix("host:") {
                            Some(h) => LoadBalancerIngress {
                                hostname: Some(h.into()),
                                ..Default::default()
                            },
                            None => LoadBalancerIngress {
                                ip: Some(i.to_string()),
                                ..Default::default()
                            },
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        [
            ("istiod".to_string(), CentralService::from_service(&istiod)),
            ("eastwest".to_string(), CentralService::from_service(&gw)),
        ]
        .into()
    }

    fn via(source: EndpointSource, gateway: &str, addresses: &[&str]) -> RemoteClusterSpec {
        RemoteClusterSpec {
            endpoints: Some(EndpointsSpec {
                source,
                gateway: gateway.into(),
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
                ports: Default::default(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_gateway_source_mirrors_its_load_balancer_address_on_its_ports() {
        let pods = [mk_pod("a", "istiod", &["10.0.0.1"], true, &[])];
        let (_, pods) = state(&pods);
        let spec = via(EndpointSource::Gateway, "eastwest", &[]);
        let snap = build(&spec, &defaults(), &gateway_state(&["203.0.113.10"]), &pods).unwrap();
        let svc = &snap.services[0];
        let ports: Vec<(&str, i32)> = svc
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect();
        assert_eq!(ports, [("tcp-istiod", 15012), ("tcp-webhook", 443)]);
        let eps: Vec<(&str, &[i32], bool)> = svc
            .endpoints
            .iter()
            .map(|e| (e.ip.as_str(), &e.target_ports[..], e.ready))
            .collect();
        assert_eq!(
            eps,
            [("203.0.113.10", &[15012, 15017][..], true)],
            "not the pod IP"
        );
        assert!(svc.external_name.is_empty());
        // Another address is another version; the same address the same.
        let moved = build(&spec, &defaults(), &gateway_state(&["203.0.113.20"]), &pods).unwrap();
        assert_ne!(moved.version, snap.version);
        let again = build(&spec, &defaults(), &gateway_state(&["203.0.113.10"]), &pods).unwrap();
        assert_eq!(again.version, snap.version);
        // A hostname-only load balancer: an ExternalName mirror, no endpoints.
        let named = build(
            &spec,
            &defaults(),
            &gateway_state(&["host:gw.elb.example.com"]),
            &pods,
        )
        .unwrap();
        assert_eq!(named.services[0].external_name, "gw.elb.example.com");
        assert!(named.services[0].endpoints.is_empty());
        // IPs win over hostnames when both are there.
        let both = build(
            &spec,
            &defaults(),
            &gateway_state(&["host:gw.example.com", "203.0.113.10"]),
            &pods,
        )
        .unwrap();
        assert_eq!(both.version, snap.version);
    }

    #[test]
    fn a_gateway_that_is_missing_or_has_no_address_is_not_ready_and_a_missing_port_is_a_spec_error()
    {
        let spec = via(EndpointSource::Gateway, "eastwest", &[]);
        let no_pods = HashMap::new();
        for services in [gateway_state(&[]), {
            let mut s = gateway_state(&["203.0.113.10"]);
            s.remove("eastwest");
            s
        }] {
            let errors = build(&spec, &defaults(), &services, &no_pods).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains(GATEWAY_NOT_READY), "{errors:?}");
        }
        // The gateway exposes 15012 and 15017; a mirror port targeting 15010 must be mapped.
        let mut spec = via(EndpointSource::Gateway, "eastwest", &[]);
        spec.services = vec![crate::crd::ServiceMirror {
            name: "istiod".into(),
            ports: Some(vec![MirrorPort {
                name: "grpc-xds".into(),
                port: 15010,
                ..Default::default()
            }]),
            ..Default::default()
        }];
        let errors = build(
            &spec,
            &defaults(),
            &gateway_state(&["203.0.113.10"]),
            &no_pods,
        )
        .unwrap_err();
        assert!(
            !errors[0].contains(GATEWAY_NOT_READY) && errors[0].contains("spec.endpoints.ports"),
            "{errors:?}"
        );
        spec.endpoints.as_mut().unwrap().ports = [("grpc-xds".to_string(), 15443)].into();
        let snap = build(
            &spec,
            &defaults(),
            &gateway_state(&["203.0.113.10"]),
            &no_pods,
        )
        .unwrap();
        assert_eq!(snap.services[0].endpoints[0].target_ports, [15443]);
    }

    #[test]
    fn a_static_source_takes_ips_or_one_name() {
        let services = gateway_state(&[]);
        let no_pods = HashMap::new();
        let spec = via(EndpointSource::Static, "", &["192.0.2.2", "192.0.2.1"]);
        let snap = build(&spec, &defaults(), &services, &no_pods).unwrap();
        let ips: Vec<&str> = snap.services[0]
            .endpoints
            .iter()
            .map(|e| e.ip.as_str())
            .collect();
        assert_eq!(ips, ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(snap.services[0].endpoints[0].target_ports, [15012, 15017]);
        let spec = via(EndpointSource::Static, "", &["istiod.mesh.example.com"]);
        let snap = build(&spec, &defaults(), &services, &no_pods).unwrap();
        assert_eq!(snap.services[0].external_name, "istiod.mesh.example.com");
        for bad in [
            &["a.example.com", "192.0.2.1"][..],
            &[][..],
            &["Not A Name"][..],
        ] {
            let spec = via(EndpointSource::Static, "", bad);
            assert!(
                build(&spec, &defaults(), &services, &no_pods).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn legacy_endpoints_are_on_unless_the_spec_turns_them_off_and_the_default_keeps_the_version() {
        let pods = [mk_pod("a", "istiod", &["10.0.0.1"], true, &[])];
        let (services, pods) = state(&pods);
        let with = |legacy: Option<bool>| {
            let spec = RemoteClusterSpec {
                legacy_endpoints: legacy,
                ..Default::default()
            };
            build(&spec, &defaults(), &services, &pods).unwrap()
        };
        let (default, on, off) = (with(None), with(Some(true)), with(Some(false)));
        assert!(!default.skip_legacy_endpoints && !on.skip_legacy_endpoints);
        assert!(off.skip_legacy_endpoints);
        // A hub upgraded to this field sends the same version for an unchanged spec: no re-apply.
        assert_eq!(default.version, on.version);
        assert_ne!(default.version, off.version);
    }

    #[test]
    fn endpoints_follow_ready_terminating_and_phase() {
        let mut terminating = mk_pod("c", "istiod", &["10.0.0.3"], true, &[]);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let mut failed = mk_pod("d", "istiod", &["10.0.0.4"], false, &[]);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [
            mk_pod("a", "istiod", &["10.0.0.1"], true, &[]),
            mk_pod("b", "istiod", &["10.0.0.2"], false, &[]),
            terminating,
            failed,
            mk_pod("e", "istiod", &[], true, &[]),
            mk_pod("other", "gateway", &["10.0.0.9"], true, &[]),
        ];
        let (services, pods) = state(&pods);
        let snap = build(&Default::default(), &defaults(), &services, &pods).unwrap();
        let eps = &snap.services[0].endpoints;
        let got: Vec<(&str, bool, bool, bool)> = eps
            .iter()
            .map(|e| (e.ip.as_str(), e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, false, false),
                ("10.0.0.3", false, true, true)
            ]
        );
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pods = [
            mk_pod("a", "istiod", &["10.0.0.1"], true, &[("xds", 15010)]),
            mk_pod("b", "istiod", &["10.0.0.2"], true, &[("xds", 16010)]),
            mk_pod("c", "istiod", &["10.0.0.3"], true, &[]),
        ];
        let (services, pods) = state(&pods);
        let snap = build(&Default::default(), &defaults(), &services, &pods).unwrap();
        let ports: Vec<Vec<i32>> = snap.services[0]
            .endpoints
            .iter()
            .map(|e| e.target_ports.clone())
            .collect();
        assert_eq!(
            ports,
            [vec![15010, 15017], vec![16010, 15017], vec![0, 15017]]
        );
    }

    #[test]
    fn two_pods_claiming_one_address_give_one_endpoint_the_ready_one() {
        let pods = [
            mk_pod("lost", "istiod", &["10.0.0.1"], false, &[("xds", 15010)]),
            mk_pod("new", "istiod", &["10.0.0.1"], true, &[("xds", 15010)]),
            // Same address on other ports (host network): a separate endpoint.
            mk_pod("host", "istiod", &["10.0.0.1"], true, &[("xds", 16010)]),
        ];
        let (services, pods) = state(&pods);
        let snap = build(&Default::default(), &defaults(), &services, &pods).unwrap();
        let got: Vec<(&str, bool, i32)> = snap.services[0]
            .endpoints
            .iter()
            .map(|e| (e.pod_name.as_str(), e.ready, e.target_ports[0]))
            .collect();
        assert_eq!(got, [("new", true, 15010), ("host", true, 16010)]);
        assert_eq!(tether_proto::check::snapshot(&snap), Vec::<String>::new());
    }

    #[test]
    fn dual_stack_pod_gives_one_endpoint_per_ip() {
        let (services, pods) = state(&[mk_pod("a", "istiod", &["10.0.0.1", "fd00::1"], true, &[])]);
        let snap = build(&Default::default(), &defaults(), &services, &pods).unwrap();
        let ips: Vec<&str> = snap.services[0]
            .endpoints
            .iter()
            .map(|e| e.ip.as_str())
            .collect();
        assert_eq!(ips, ["10.0.0.1", "fd00::1"]);
    }

    #[test]
    fn version_is_stable_under_reordering() {
        let a = [
            mk_pod("a", "istiod", &["10.0.0.1"], true, &[]),
            mk_pod("b", "istiod", &["10.0.0.2"], true, &[]),
        ];
        let b = [a[1].clone(), a[0].clone()];
        let spec = RemoteClusterSpec {
            injection: crate::crd::InjectionSpec {
                namespaces: vec!["z".into(), "a".into()],
                labels: None,
            },
            ..Default::default()
        };
        let mut spec2 = spec.clone();
        spec2.injection.namespaces.reverse();
        let (s1, p1) = state(&a);
        let (s2, p2) = state(&b);
        let v1 = build(&spec, &defaults(), &s1, &p1).unwrap().version;
        let v2 = build(&spec2, &defaults(), &s2, &p2).unwrap().version;
        assert_eq!(v1, v2);
        let (s3, p3) = state(&a[..1]);
        assert_ne!(build(&spec, &defaults(), &s3, &p3).unwrap().version, v1);
    }

    #[test]
    fn istiods_mirror_takes_the_remote_profile_ports() {
        let real = mk_service(
            "istiod-canary",
            &[("app", "istiod")],
            &[
                ("grpc-xds", 15010, "15010"),
                ("https-dns", 15012, "15012"),
                ("https-webhook", 443, "15017"),
                ("http-monitoring", 15014, "15014"),
            ],
        );
        let services = [(
            "istiod-canary".to_string(),
            CentralService::from_service(&real),
        )]
        .into();
        let pods = [mk_pod("a", "istiod", &["10.0.0.1"], true, &[])]
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap(),
                    PodInfo::from_pod(&p.into()),
                )
            })
            .collect();
        let spec = RemoteClusterSpec {
            services: vec![ServiceMirror {
                name: "istiod-canary".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let snap = build(&spec, &defaults(), &services, &pods).unwrap();
        let svc = &snap.services[0];
        let ports: Vec<(&str, i32)> = svc
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect();
        assert_eq!(ports, [("tcp-istiod", 15012), ("tcp-webhook", 443)]);
        assert_eq!(svc.endpoints[0].target_ports, [15012, 15017]);
        // A Service that does not serve 15012 keeps its own ports (and so does any other name).
        let (services, pods) = state(&[mk_pod("a", "istiod", &["10.0.0.1"], true, &[])]);
        let snap = build(&Default::default(), &defaults(), &services, &pods).unwrap();
        assert_eq!(snap.services[0].ports[0].name, "grpc-xds");
    }

    #[test]
    fn spec_overrides_selector_ports_and_headless() {
        let (services, pods) = state(&[mk_pod("gw", "gateway", &["10.0.0.5"], true, &[])]);
        let spec = RemoteClusterSpec {
            services: vec![ServiceMirror {
                name: "eastwest".into(),
                selector: Some([("app".to_string(), "gateway".to_string())].into()),
                ports: Some(vec![MirrorPort {
                    name: "tls".into(),
                    port: 15443,
                    ..Default::default()
                }]),
                headless: Some(true),
            }],
            ..Default::default()
        };
        let snap = build(&spec, &defaults(), &services, &pods).unwrap();
        let svc = &snap.services[0];
        assert!(svc.headless);
        assert_eq!(svc.endpoints[0].target_ports, [15443]);
    }

    #[test]
    fn bad_specs_are_reported_not_built() {
        let (services, pods) = state(&[]);
        let cases: Vec<(RemoteClusterSpec, &str)> = vec![
            (
                RemoteClusterSpec {
                    services: vec![ServiceMirror {
                        name: "missing".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "no such Service",
            ),
            (
                RemoteClusterSpec {
                    services: vec![ServiceMirror {
                        name: "istiod".into(),
                        selector: Some([("bad key!".to_string(), "x".to_string())].into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "selector",
            ),
            (
                RemoteClusterSpec {
                    services: vec![
                        ServiceMirror {
                            name: "istiod".into(),
                            ..Default::default()
                        },
                        ServiceMirror {
                            name: "istiod".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                "listed twice",
            ),
            (
                RemoteClusterSpec {
                    injection: crate::crd::InjectionSpec {
                        namespaces: vec!["ok".into()],
                        labels: Some([("istio-injection".to_string(), "-bad-".to_string())].into()),
                    },
                    ..Default::default()
                },
                "injection label",
            ),
            (
                RemoteClusterSpec {
                    injection: crate::crd::InjectionSpec {
                        namespaces: vec!["Not_A_Namespace".into()],
                        labels: None,
                    },
                    ..Default::default()
                },
                "not a valid namespace",
            ),
        ];
        for (spec, want) in cases {
            let errs = build(&spec, &defaults(), &services, &pods).unwrap_err();
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
    }
}
