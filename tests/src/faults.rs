//! Shared pieces of the fault tests: a mesh whose remote-1 agent dials the hub through a proxy, pod
//! churn running in the background, and what a remote's EndpointSlices hold.

use crate::ControlPlanes;
use crate::fixtures::{CLUSTERS, REMOTES, SOON};
use crate::mesh::Mesh;
use crate::proxy::Proxy;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::Duration;

/// Hub, agents, istiod pods a (10.10.0.1) and b (10.10.0.2); remote-1's agent goes through `Proxy`.
pub async fn mesh_through_proxy() -> (Mesh, Proxy) {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, REMOTES).await.unwrap();
    mesh.create_istiod().await.unwrap();
    for r in REMOTES {
        mesh.create_remote_cluster(r, json!({})).await.unwrap();
    }
    let proxy = Proxy::start(mesh.hub_addr()).await.unwrap();
    mesh.agent_hub_addr
        .insert("remote-1".into(), proxy.addr.to_string());
    mesh.start_hub().unwrap();
    for r in REMOTES {
        mesh.start_agent(r).unwrap();
    }
    for r in REMOTES {
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    (mesh, proxy)
}

/// Flips istiod-b's readiness every `every` until the returned handle is aborted; returns the handle.
pub fn churn(mesh: &Mesh, every: Duration) -> tokio::task::JoinHandle<()> {
    let pods = mesh.central_pods();
    tokio::spawn(async move {
        let mut ready = false;
        loop {
            let _ = crate::pods::set_pod_status(&pods, "istiod-b", &["10.10.0.2"], ready).await;
            ready = !ready;
            tokio::time::sleep(every).await;
        }
    })
}

/// (ip, ready) of every endpoint in the remote's istiod EndpointSlices, sorted.
pub async fn endpoints(mesh: &Mesh, cluster: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let api: Api<EndpointSlice> = Api::namespaced(mesh.remote(cluster).clone(), &mesh.ns);
    let list = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
        .await?;
    let mut out: Vec<(String, bool)> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The (address, ready) pairs of the legacy Endpoints `istiod` on `cluster`, sorted: the same set
/// as [`endpoints`] once the agent has applied a state completely.
pub async fn legacy_endpoints(mesh: &Mesh, cluster: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let api: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(mesh.remote(cluster).clone(), &mesh.ns);
    let ep = api.get("istiod").await?;
    let mut out: Vec<(String, bool)> = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| {
            let ready = s.addresses.iter().flatten().map(|a| (a.ip.clone(), true));
            let not = s
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a.ip.clone(), false));
            ready.chain(not).collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Creates `n` more ready istiod pods (`istiod-N`, 10.10.1.N..) serving the named port on 15010,
/// eight at a time.
pub async fn more_istiod_pods(mesh: &Mesh, n: usize) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| async move {
            let ip = format!("10.10.{}.{}", 1 + i / 250, 1 + i % 250);
            mesh.create_istiod_pod(&format!("istiod-{i}"), &ip, 15010, true)
                .await
                .unwrap();
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

/// What Tether manages in the mesh namespace on `cluster`: Service names, EndpointSlices as
/// (service, addresses), Endpoints names — each sorted. Found by the managed-by label, so orphans show.
#[derive(Debug, PartialEq, Eq)]
pub struct Inventory {
    pub services: Vec<String>,
    pub slices: Vec<(String, Vec<String>)>,
    pub endpoints: Vec<String>,
}

pub async fn inventory(mesh: &Mesh, cluster: &str) -> anyhow::Result<Inventory> {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    let client = mesh.remote(cluster).clone();
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=tether-agent");
    let names = |items: Vec<Option<String>>| {
        let mut v: Vec<String> = items.into_iter().flatten().collect();
        v.sort();
        v
    };
    let services = Api::<Service>::namespaced(client.clone(), &mesh.ns)
        .list(&managed)
        .await?;
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), &mesh.ns)
        .list(&managed)
        .await?;
    let mut slices: Vec<(String, Vec<String>)> = Api::<EndpointSlice>::namespaced(client, &mesh.ns)
        .list(&managed)
        .await?
        .items
        .into_iter()
        .map(|s| {
            let svc = s
                .metadata
                .labels
                .unwrap_or_default()
                .remove("kubernetes.io/service-name")
                .unwrap_or_default();
            let mut ips: Vec<String> = s.endpoints.into_iter().flat_map(|e| e.addresses).collect();
            ips.sort();
            (svc, ips)
        })
        .collect();
    slices.sort();
    Ok(Inventory {
        services: names(
            services
                .items
                .into_iter()
                .map(|s| s.metadata.name)
                .collect(),
        ),
        slices,
        endpoints: names(
            endpoints
                .items
                .into_iter()
                .map(|s| s.metadata.name)
                .collect(),
        ),
    })
}

/// The inventory of a remote that mirrors `services`, each backed by exactly the pods at `ips`
/// (one IPv4 slice per service: fewer than 100 endpoints).
pub fn expected_inventory(services: &[String], ips: &[&str]) -> Inventory {
    let mut services = services.to_vec();
    services.sort();
    let mut ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    ips.sort();
    Inventory {
        slices: services.iter().map(|s| (s.clone(), ips.clone())).collect(),
        endpoints: services.clone(),
        services,
    }
}

/// Creates central Services `svc-0`..`svc-{n-1}`, each selecting the istiod pods on port 15010.
pub async fn more_central_services(mesh: &Mesh, n: usize) -> Vec<String> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Service;
    let api: Api<Service> = Api::namespaced(mesh.central.clone(), &mesh.ns);
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i}")).collect();
    futures::stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"selector": {"app": "istiod"},
                             "ports": [{"name": "grpc", "port": 15010, "protocol": "TCP"}]}
                }))
                .unwrap();
                api.create(&Default::default(), &svc).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    names
}

/// Sets the RemoteCluster's mirrored services (by name).
pub async fn set_mirrored_services(mesh: &Mesh, cluster: &str, services: &[String]) {
    let services: Vec<serde_json::Value> = services.iter().map(|s| json!({"name": s})).collect();
    mesh.remote_clusters()
        .patch(
            cluster,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"services": services}})),
        )
        .await
        .unwrap();
}

/// Polls (every 10 ms) until some but not all of `services` are mirrored on `cluster`: the agent is
/// in the middle of applying them. Returns how many were there.
pub async fn wait_mid_apply(mesh: &Mesh, cluster: &str, services: &[String]) -> usize {
    use k8s_openapi::api::core::v1::Service;
    let api: Api<Service> = Api::namespaced(mesh.remote(cluster).clone(), &mesh.ns);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=tether-agent");
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let n = api
            .list(&managed)
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|s| services.contains(s.metadata.name.as_ref().unwrap()))
                    .count()
            })
            .unwrap_or(0);
        if n > 0 {
            return n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new Service appeared on {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
