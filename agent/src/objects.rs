//! Translating a snapshot into the Kubernetes objects the agent owns. Pure functions, no I/O: the
//! plan compares what these return with live state and writes only the difference.
//!
//! Per mirrored service: one selector-less Service; EndpointSlices split by address family and by the
//! set of resolved ports, at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each; one legacy Endpoints.
//! Empty lists and unset fields are left out, as the API server leaves them out when it stores the
//! object: otherwise a stored object would never "cover" the desired one and every pass would write.

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use tether_proto::v1::{Endpoint, Port, Service as SnapService};

pub const DEFAULT_FIELD_MANAGER: &str = "tether-agent";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tether-agent";
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// DESIGN.md said `tether.io/agent`, which the API server rejects (a label value cannot hold '/'). This
/// has the shape of Kubernetes' own `endpointslice-controller.k8s.io`.
pub const SLICE_MANAGED_BY_VALUE: &str = "agent.tether.io";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Marks namespaces whose injection labels Tether put there (and may therefore take away).
pub const INJECTION_MARKER: &str = "tether.io/managed-injection";
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
    Namespace,
}

impl Kind {
    /// The namespaced kinds the agent owns whole objects of.
    pub const OWNED: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Endpoints];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Namespace => "Namespace",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
            Kind::Endpoints => ApiResource::erase::<Endpoints>(&()),
            Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        }
    }

    /// The API for objects of this kind the agent manages: in `namespace`, or cluster-wide for
    /// Namespaces. The watches and the applier both use it.
    pub fn api(self, client: &Client, namespace: &str) -> Api<DynamicObject> {
        let ar = self.api_resource();
        match self {
            Kind::Namespace => Api::all_with(client.clone(), &ar),
            _ => Api::namespaced_with(client.clone(), namespace, &ar),
        }
    }
}

/// One object the agent wants to exist.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredObject {
    pub kind: Kind,
    pub name: String,
    /// The Service this object belongs to (itself, for a Service).
    pub service: String,
    pub body: Value,
}

fn labels(extra: &[(&str, &str)]) -> Value {
    let mut m = Map::new();
    m.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    for (k, v) in extra {
        m.insert(k.to_string(), Value::from(*v));
    }
    Value::Object(m)
}

fn port_json(p: &Port, number: i32) -> Value {
    let mut v = json!({"name": p.name, "port": number, "protocol": p.protocol});
    if p.name.is_empty() {
        v.as_object_mut().expect("object").remove("name");
    }
    if !p.app_protocol.is_empty() {
        v["appProtocol"] = p.app_protocol.clone().into();
    }
    v
}

/// Every object for one mirrored service, Service first; the legacy Endpoints only with
/// `legacy_endpoints` (the snapshot's `!skip_legacy_endpoints`).
pub fn objects_for(
    namespace: &str,
    svc: &SnapService,
    legacy_endpoints: bool,
) -> Vec<DesiredObject> {
    let mut out = vec![service(namespace, svc)];
    // An ExternalName Service is a DNS alias: no slices, no Endpoints (the plan removes ours).
    if !svc.external_name.is_empty() {
        return out;
    }
    out.extend(endpoint_slices(namespace, svc));
    if legacy_endpoints {
        out.push(endpoints(namespace, svc));
    }
    out
}

pub fn service(namespace: &str, svc: &SnapService) -> DesiredObject {
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            // A selector-less Service's targetPort is not used for routing (the endpoints carry the pod
            // ports): the central Service's number when it has one, else the port; never a pod's,
            // so it stays put while pods come and go.
            let mut v = port_json(p, p.port);
            v["targetPort"] = if p.target_port > 0 {
                p.target_port
            } else {
                p.port
            }
            .into();
            v
        })
        .collect();
    let mut spec = json!({"type": "ClusterIP", "ports": ports});
    if !svc.external_name.is_empty() {
        spec = json!({"type": "ExternalName", "externalName": svc.external_name, "ports": spec["ports"]});
    } else if svc.headless {
        spec["clusterIP"] = "None".into();
    }
    DesiredObject {
        kind: Kind::Service,
        name: svc.name.clone(),
        service: svc.name.clone(),
        body: json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc.name, "namespace": namespace, "labels": labels(&[])},
            "spec": spec,
        }),
    }
}

fn is_ipv6(ip: &str) -> bool {
    ip.contains(':')
}

/// Groups endpoints by (family, resolved ports), each group sorted by IP; groups in a stable order.
fn groups(svc: &SnapService) -> BTreeMap<(bool, Vec<i32>), Vec<&Endpoint>> {
    let mut groups: BTreeMap<(bool, Vec<i32>), Vec<&Endpoint>> = BTreeMap::new();
    for ep in &svc.endpoints {
        groups
            .entry((is_ipv6(&ep.ip), ep.target_ports.clone()))
            .or_default()
            .push(ep);
    }
    for eps in groups.values_mut() {
        eps.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    groups
}

fn slice_ports(svc: &SnapService, targets: &[i32]) -> Vec<Value> {
    svc.ports
        .iter()
        .zip(targets)
        .filter(|(_, t)| **t > 0)
        .map(|(p, t)| port_json(p, *t))
        .collect()
}

pub fn endpoint_slices(namespace: &str, svc: &SnapService) -> Vec<DesiredObject> {
    let mut out = Vec::new();
    let mut counters = [0usize; 2];
    for ((v6, targets), eps) in groups(svc) {
        let family = if v6 { "IPv6" } else { "IPv4" };
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            let n = &mut counters[v6 as usize];
            let name = format!("{}-{}-{}", svc.name, if v6 { "v6" } else { "v4" }, n);
            *n += 1;
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|ep| {
                    let mut v = json!({
                        "addresses": [ep.ip],
                        "conditions": {"ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating},
                    });
                    if !ep.zone.is_empty() {
                        v["zone"] = ep.zone.clone().into();
                    }
                    v
                })
                .collect();
            let mut body = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": namespace, "labels": labels(&[
                    (SERVICE_NAME, &svc.name), (SLICE_MANAGED_BY, SLICE_MANAGED_BY_VALUE),
                ])},
                "addressType": family,
                "endpoints": endpoints,
            });
            let ports = slice_ports(svc, &targets);
            if !ports.is_empty() {
                body["ports"] = ports.into();
            }
            out.push(DesiredObject {
                kind: Kind::EndpointSlice,
                name,
                service: svc.name.clone(),
                body,
            });
        }
    }
    out
}

/// Legacy Endpoints: one address family (IPv4 if any, as the Kubernetes controller does for the
/// primary family), ready pods in `addresses`, the others in `notReadyAddresses`.
pub fn endpoints(namespace: &str, svc: &SnapService) -> DesiredObject {
    let any_v4 = svc.endpoints.iter().any(|e| !is_ipv6(&e.ip));
    let mut subsets = Vec::new();
    for ((v6, targets), eps) in groups(svc) {
        if v6 == any_v4 {
            continue;
        }
        let addr = |e: &&Endpoint| json!({"ip": e.ip});
        let ready: Vec<Value> = eps.iter().filter(|e| e.ready).map(addr).collect();
        let not_ready: Vec<Value> = eps.iter().filter(|e| !e.ready).map(addr).collect();
        let mut subset = Map::new();
        if !ready.is_empty() {
            subset.insert("addresses".into(), ready.into());
        }
        if !not_ready.is_empty() {
            subset.insert("notReadyAddresses".into(), not_ready.into());
        }
        let ports = slice_ports(svc, &targets);
        if !ports.is_empty() {
            subset.insert("ports".into(), ports.into());
        }
        subsets.push(Value::Object(subset));
    }
    let mut body = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": svc.name, "namespace": namespace, "labels": labels(&[(SKIP_MIRROR, "true")])},
    });
    if !subsets.is_empty() {
        body["subsets"] = subsets.into();
    }
    DesiredObject {
        kind: Kind::Endpoints,
        name: svc.name.clone(),
        service: svc.name.clone(),
        body,
    }
}

/// True when the object carries Tether's managed-by label.
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, ready: bool, ports: &[i32]) -> Endpoint {
        Endpoint {
            ip: ip.into(),
            ready,
            serving: ready,
            terminating: false,
            pod_name: format!("pod-{ip}"),
            zone: String::new(),
            target_ports: ports.to_vec(),
        }
    }

    fn svc(endpoints: Vec<Endpoint>) -> SnapService {
        SnapService {
            name: "istiod".into(),
            headless: false,
            external_name: String::new(),
            ports: vec![
                Port {
                    name: "grpc-xds".into(),
                    protocol: "TCP".into(),
                    port: 15010,
                    app_protocol: String::new(),
                    target_port: 0,
                },
                Port {
                    name: "https-webhook".into(),
                    protocol: "TCP".into(),
                    port: 443,
                    app_protocol: "https".into(),
                    target_port: 15017,
                },
            ],
            endpoints,
        }
    }

    #[test]
    fn service_is_selectorless_and_labelled() {
        let s = service("istio-system", &svc(vec![]));
        assert!(s.body["spec"].get("selector").is_none());
        assert_eq!(s.body["metadata"]["labels"][MANAGED_BY], MANAGED_BY_VALUE);
        assert_eq!(s.body["spec"]["ports"][1]["appProtocol"], "https");
        // The central Service's numeric target, else the port itself.
        assert_eq!(s.body["spec"]["ports"][0]["targetPort"], 15010);
        assert_eq!(s.body["spec"]["ports"][1]["targetPort"], 15017);
        assert!(s.body["spec"].get("clusterIP").is_none());
        let headless = service(
            "istio-system",
            &SnapService {
                headless: true,
                ..svc(vec![])
            },
        );
        assert_eq!(headless.body["spec"]["clusterIP"], "None");
    }

    #[test]
    fn slices_split_by_family_and_hold_at_most_100() {
        let mut eps: Vec<Endpoint> = (0..250)
            .map(|i| {
                ep(
                    &format!("10.0.{}.{}", i / 256, i % 256),
                    true,
                    &[15010, 15017],
                )
            })
            .collect();
        eps.push(ep("fd00::1", true, &[15010, 15017]));
        let slices = endpoint_slices("ns", &svc(eps));
        let summary: Vec<(String, &str, usize)> = slices
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.body["addressType"].as_str().unwrap(),
                    s.body["endpoints"].as_array().unwrap().len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("istiod-v4-0".to_string(), "IPv4", 100),
                ("istiod-v4-1".to_string(), "IPv4", 100),
                ("istiod-v4-2".to_string(), "IPv4", 50),
                ("istiod-v6-0".to_string(), "IPv6", 1),
            ]
        );
        for s in &slices {
            assert_eq!(s.body["metadata"]["labels"][SERVICE_NAME], "istiod");
            assert_eq!(
                s.body["metadata"]["labels"][SLICE_MANAGED_BY],
                SLICE_MANAGED_BY_VALUE
            );
        }
    }

    #[test]
    fn pods_with_different_resolved_ports_get_separate_slices() {
        let slices = endpoint_slices(
            "ns",
            &svc(vec![
                ep("10.0.0.1", true, &[15010, 15017]),
                ep("10.0.0.2", true, &[16010, 0]),
            ]),
        );
        assert_eq!(slices.len(), 2);
        let ports: Vec<Value> = slices.iter().map(|s| s.body["ports"].clone()).collect();
        assert_eq!(ports[0][0]["port"], 15010);
        assert_eq!(
            ports[1].as_array().unwrap().len(),
            1,
            "unresolved port left out"
        );
        assert_eq!(ports[1][0]["port"], 16010);
    }

    #[test]
    fn slice_conditions_carry_ready_serving_terminating() {
        let mut t = ep("10.0.0.3", false, &[15010, 15017]);
        t.serving = true;
        t.terminating = true;
        let slices = endpoint_slices("ns", &svc(vec![t]));
        assert_eq!(
            slices[0].body["endpoints"][0]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn legacy_endpoints_split_ready_and_not_ready_and_skip_mirroring() {
        let e = endpoints(
            "ns",
            &svc(vec![
                ep("10.0.0.1", true, &[15010, 15017]),
                ep("10.0.0.2", false, &[15010, 15017]),
                ep("fd00::1", true, &[15010, 15017]),
            ]),
        );
        assert_eq!(e.body["metadata"]["labels"][SKIP_MIRROR], "true");
        let subsets = e.body["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 1, "IPv4 only when there is IPv4");
        assert_eq!(subsets[0]["addresses"], json!([{"ip": "10.0.0.1"}]));
        assert_eq!(subsets[0]["notReadyAddresses"], json!([{"ip": "10.0.0.2"}]));
        let empty = endpoints("ns", &svc(vec![]));
        assert!(
            empty.body.get("subsets").is_none(),
            "no empty lists: the server would drop them"
        );
    }
}
