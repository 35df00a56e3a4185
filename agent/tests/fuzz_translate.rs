//! Property tests (bounded number of cases) for the agent's translation of a snapshot into
//! Kubernetes objects. Snapshots are random, including malformed ones. Whatever passes the agent's
//! check (the gate before anything is applied) must translate into objects the API server accepts
//! and that say exactly what the snapshot says; what does not pass is refused whole.

use proptest::prelude::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use tether_agent::objects::{Kind, MAX_ENDPOINTS_PER_SLICE, objects_for};
use tether_proto::v1::{Endpoint, Port, Service, Snapshot};

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,12}[a-z0-9]"
}

/// A well-formed port; `i` keeps names unique within a service.
fn port(i: usize) -> impl Strategy<Value = Port> {
    (
        dns_label(),
        prop_oneof![Just("TCP"), Just("UDP"), Just("SCTP"), Just("")],
        1i32..65536,
    )
        .prop_map(move |(name, protocol, port)| Port {
            name: format!("{name}-{i}"),
            protocol: protocol.into(),
            port,
            app_protocol: String::new(),
            target_port: 0,
        })
}

/// A well-formed service: unique addresses (IPv4 and IPv6 mixed), target ports resolved or not (0).
fn service() -> impl Strategy<Value = Service> {
    (dns_label(), any::<bool>(), 0usize..4).prop_flat_map(|(name, headless, n_ports)| {
        let ports: Vec<_> = (0..n_ports).map(port).collect();
        let endpoint = (
            any::<bool>(),
            any::<(bool, bool, bool)>(),
            proptest::collection::vec(prop_oneof![Just(0), 15010i32..15013], n_ports..=n_ports),
        );
        (ports, proptest::collection::vec(endpoint, 0..260)).prop_map(move |(ports, eps)| {
            let endpoints = eps
                .into_iter()
                .enumerate()
                .map(
                    |(i, (v6, (ready, serving, terminating), target_ports))| Endpoint {
                        ip: if v6 {
                            format!("fd00::{i:x}")
                        } else {
                            format!("10.0.{}.{}", i / 256, i % 256)
                        },
                        ready,
                        serving,
                        terminating,
                        pod_name: format!("pod-{i}"),
                        zone: String::new(),
                        target_ports,
                    },
                )
                .collect();
            Service {
                name: name.clone(),
                headless,
                ports,
                endpoints,
                external_name: String::new(),
            }
        })
    })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    proptest::collection::vec(service(), 0..4).prop_map(|mut services| {
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services.dedup_by(|a, b| a.name == b.name);
        Snapshot {
            version: "v".into(),
            nonce: "1".into(),
            namespace: "istio-system".into(),
            services,
            injection: None,
            skip_legacy_endpoints: false,
        }
    })
}

/// Breaks a well-formed snapshot in one of the ways a bug or a hostile hub could. Returns false
/// when the chosen break does not apply (nothing to break).
fn break_it(snap: &mut Snapshot, how: u8) -> bool {
    let Some(svc) = snap.services.first_mut() else {
        snap.namespace = "Not A Namespace".into();
        return true;
    };
    match how % 7 {
        0 => match svc.endpoints.first_mut() {
            Some(e) => e.ip = "10.0.0".into(),
            None => return false,
        },
        1 => svc.name = "Not_A_Name".into(),
        2 => match svc.ports.first_mut() {
            Some(p) => p.port = 0,
            None => return false,
        },
        3 => match svc.endpoints.first_mut() {
            Some(e) => e.target_ports.push(1),
            None => return false,
        },
        4 => match svc.endpoints.first().cloned() {
            Some(e) => svc.endpoints.push(e),
            None => return false,
        },
        5 => {
            let twin = svc.clone();
            snap.services.push(twin);
        }
        _ => match svc.ports.first_mut() {
            Some(p) => p.protocol = "HTTP".into(),
            None => return false,
        },
    }
    true
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(tether_proto::identity::is_dns_label)
}

fn addresses(body: &Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn malformed_snapshots_are_refused(mut snap in snapshot(), how in any::<u8>()) {
        if break_it(&mut snap, how) {
            prop_assert!(!tether_proto::check::snapshot(&snap).is_empty(), "break {} not refused: {:?}", how % 7, snap);
        }
    }

    #[test]
    fn well_formed_snapshots_pass_and_translate_exactly(snap in snapshot()) {
        let problems = tether_proto::check::snapshot(&snap);
        prop_assert!(problems.is_empty(), "{:?}", problems);
        for svc in &snap.services {
            let objects = objects_for(&snap.namespace, svc, true);
            let count = |k: Kind| objects.iter().filter(|o| o.kind == k).count();
            prop_assert_eq!(count(Kind::Service), 1);
            prop_assert_eq!(count(Kind::Endpoints), 1);
            // Without legacy Endpoints: the same objects less that one.
            let slices_only = objects_for(&snap.namespace, svc, false);
            prop_assert!(slices_only.iter().all(|o| o.kind != Kind::Endpoints));
            prop_assert_eq!(slices_only.len(), objects.len() - 1);
            // Every endpoint in exactly one slice of its family, with its ports; no slice too big.
            let mut in_slices: BTreeMap<(String, Vec<i32>), usize> = BTreeMap::new();
            let mut names = HashSet::new();
            for o in objects.iter().filter(|o| o.kind == Kind::EndpointSlice) {
                prop_assert!(names.insert(o.name.clone()), "slice names unique");
                prop_assert!(is_dns_subdomain(&o.name), "slice name {}", o.name);
                let eps = o.body["endpoints"].as_array().unwrap();
                prop_assert!(!eps.is_empty() && eps.len() <= MAX_ENDPOINTS_PER_SLICE);
                let v6 = o.body["addressType"] == "IPv6";
                let ports: Vec<i32> = o.body["ports"].as_array().into_iter().flatten()
                    .map(|p| p["port"].as_i64().unwrap() as i32).collect();
                for e in eps {
                    let addr = e["addresses"][0].as_str().unwrap();
                    prop_assert_eq!(addr.parse::<IpAddr>().unwrap().is_ipv6(), v6);
                    let ep = svc.endpoints.iter()
                        .find(|x| x.ip == addr && x.target_ports.iter().filter(|t| **t > 0).copied().collect::<Vec<_>>() == ports)
                        .expect("slice endpoint comes from the snapshot");
                    prop_assert_eq!(e["conditions"]["ready"].as_bool(), Some(ep.ready));
                    *in_slices.entry((addr.to_string(), ep.target_ports.clone())).or_default() += 1;
                }
            }
            prop_assert_eq!(in_slices.len(), svc.endpoints.len());
            prop_assert!(in_slices.values().all(|n| *n == 1), "each endpoint once");
            // Legacy Endpoints: the primary family (IPv4 if any), ready and not-ready kept apart.
            let legacy = &objects.iter().find(|o| o.kind == Kind::Endpoints).unwrap().body;
            let any_v4 = svc.endpoints.iter().any(|e| !e.ip.contains(':'));
            let primary: Vec<&Endpoint> = svc.endpoints.iter().filter(|e| e.ip.contains(':') != any_v4).collect();
            let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
            for subset in legacy["subsets"].as_array().into_iter().flatten() {
                ready.extend(addresses(subset, "addresses"));
                not_ready.extend(addresses(subset, "notReadyAddresses"));
            }
            prop_assert_eq!(ready.len(), primary.iter().filter(|e| e.ready).count());
            prop_assert_eq!(not_ready.len(), primary.iter().filter(|e| !e.ready).count());
        }
    }

    #[test]
    fn an_external_name_translates_into_one_alias_and_nothing_beside_it(
        mut svc in service(),
        labels in proptest::collection::vec(dns_label(), 1..4),
    ) {
        let host = labels.join(".");
        let had_endpoints = !svc.endpoints.is_empty() || svc.headless;
        svc.external_name = host.clone();
        let snap = Snapshot { namespace: "istio-system".into(), services: vec![svc.clone()], ..Default::default() };
        // With endpoints (or headless) beside it, the snapshot is refused whole.
        prop_assert_eq!(!tether_proto::check::snapshot(&snap).is_empty(), had_endpoints);
        svc.endpoints.clear();
        svc.headless = false;
        let snap = Snapshot { namespace: "istio-system".into(), services: vec![svc.clone()], ..Default::default() };
        prop_assert!(tether_proto::check::snapshot(&snap).is_empty());
        let objects = objects_for(&snap.namespace, &svc, true);
        prop_assert_eq!(objects.len(), 1);
        prop_assert_eq!(objects[0].kind, Kind::Service);
        prop_assert_eq!(&objects[0].body["spec"]["type"], "ExternalName");
        prop_assert_eq!(objects[0].body["spec"]["externalName"].as_str(), Some(host.as_str()));
        prop_assert!(objects[0].body["spec"].get("clusterIP").is_none());
    }
}
