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
    mesh.create_istiod_service().await.unwrap();
    mesh.create_istiod_pod("istiod-a", "10.10.0.1", 15010, true)
        .await
        .unwrap();
    mesh.create_istiod_pod("istiod-b", "10.10.0.2", 15010, true)
        .await
        .unwrap();
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
