//! Remotes on another network: remote-2's mirror takes its endpoints from the load-balancer address
//! of a central east-west gateway Service, remote-1's from the istiod pods, both served by one hub.
//! The test writes the gateway's `.status.loadBalancer` as a cloud controller would.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tether_tests::eventually;
use tether_tests::faults::endpoints;
use tether_tests::fixtures::{SOON, synced_mesh};
use tether_tests::mesh::{Mesh, condition};

const GATEWAY: &str = "eastwest";

/// Istio's east-west gateway Service, as its chart makes it (the ports that expose istiod).
async fn create_gateway(mesh: &Mesh) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": GATEWAY},
        "spec": {"type": "LoadBalancer", "selector": {"istio": "eastwestgateway"}, "ports": [
            {"name": "status-port", "port": 15021, "protocol": "TCP"},
            {"name": "tls", "port": 15443, "protocol": "TCP"},
            {"name": "tls-istiod", "port": 15012, "protocol": "TCP"},
            {"name": "tls-webhook", "port": 15017, "protocol": "TCP"},
        ]}
    }))
    .unwrap();
    Api::<Service>::namespaced(mesh.central.clone(), &mesh.ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// What a cloud controller writes: `ip` entries, or `host:<name>` for a hostname-only one.
async fn set_ingress(mesh: &Mesh, ingress: &[&str]) {
    let entries: Vec<Value> = ingress
        .iter()
        .map(|i| match i.strip_prefix("host:") {
            Some(h) => json!({"hostname": h}),
            None => json!({"ip": i}),
        })
        .collect();
    Api::<Service>::namespaced(mesh.central.clone(), &mesh.ns)
        .patch_status(
            GATEWAY,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": entries}}})),
        )
        .await
        .unwrap();
}

/// remote-2's mirror: (type, externalName, slice addresses with their ports, Endpoints present).
async fn remote2_mirror(mesh: &Mesh) -> anyhow::Result<(String, String, Vec<String>, bool)> {
    let client = mesh.remote("remote-2").clone();
    let svc = Api::<Service>::namespaced(client.clone(), &mesh.ns)
        .get("istiod")
        .await?;
    let spec = svc.spec.unwrap_or_default();
    let slices =
        Api::<EndpointSlice>::namespaced(client.clone(), &mesh.ns)
            .list(&ListParams::default().labels(
                "kubernetes.io/service-name=istiod,app.kubernetes.io/managed-by=tether-agent",
            ))
            .await?;
    let mut addrs: Vec<String> = slices
        .items
        .iter()
        .flat_map(|s| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}={}",
                        p.name.clone().unwrap_or_default(),
                        p.port.unwrap_or(0)
                    )
                })
                .collect();
            s.endpoints
                .iter()
                .map(move |e| format!("{} {}", e.addresses[0], ports.join(",")))
        })
        .collect();
    addrs.sort();
    let legacy = Api::<Endpoints>::namespaced(client, &mesh.ns)
        .get_opt("istiod")
        .await?
        .is_some();
    Ok((
        spec.type_.unwrap_or_default(),
        spec.external_name.unwrap_or_default(),
        addrs,
        legacy,
    ))
}

async fn wait_remote2(mesh: &Mesh, want: (&str, &str, &[&str], bool)) {
    let want = (
        want.0.to_string(),
        want.1.to_string(),
        want.2.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        want.3,
    );
    eventually(&format!("remote-2's mirror {want:?}"), SOON, || async {
        let have = remote2_mirror(mesh).await?;
        anyhow::ensure!(have == want, "now {have:?}");
        Ok(())
    })
    .await;
}

fn pod_ips(ips: &[&str]) -> Vec<(String, bool)> {
    ips.iter().map(|ip| (ip.to_string(), true)).collect()
}

#[tokio::test]
async fn a_mixed_fleet_follows_pods_and_a_gateway_and_the_gateway_address_through_every_change() {
    let mesh = synced_mesh().await;
    // remote-2 moves to the gateway (both on pod IPs until now).
    create_gateway(&mesh).await;
    set_ingress(&mesh, &["192.0.2.10"]).await;
    let app = format!("{}-app", mesh.ns);
    // xds is a named port on the pods; through the gateway it is the gateway's 15443.
    mesh.create_remote_cluster(
        "remote-2",
        json!({"injection": {"namespaces": [app]},
               "endpoints": {"source": "Gateway", "gateway": GATEWAY, "ports": {"grpc-xds": 15443}}}),
    )
    .await
    .unwrap();
    let through = |ip: &str| format!("{ip} grpc-xds=15443,https-webhook=15017");
    let first = through("192.0.2.10");
    wait_remote2(&mesh, ("ClusterIP", "", &[&first], true)).await;
    for r in ["remote-1", "remote-2"] {
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    assert_eq!(
        endpoints(&mesh, "remote-1").await.unwrap(),
        pod_ips(&["10.10.0.1", "10.10.0.2"])
    );
    // The mirror follows the new spec first; the status that says so is written within the status
    // interval after (phase Synced held throughout, so waiting for the phase proves nothing here).
    eventually("remote-2's status on the gateway", SOON, || async {
        let status = mesh.status("remote-2").await?;
        anyhow::ensure!(
            status["sync"]["endpointSource"] == "gateway/eastwest",
            "{status}"
        );
        Ok(())
    })
    .await;
    assert_eq!(
        mesh.status("remote-1").await.unwrap()["sync"]["endpointSource"],
        "pods"
    );
    let (code, table, _) = mesh.hub_cli(&["status", "--namespace", &mesh.ns]);
    assert_eq!(code, 0, "{table}");
    let source_of = |cluster: &str| {
        table
            .lines()
            .find(|l| l.starts_with(cluster))
            .map(|l| l.split_whitespace().nth(6).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(source_of("remote-1"), "pods", "{table}");
    assert_eq!(source_of("remote-2"), "gateway/eastwest", "{table}");

    // A foreign slice for the same Service in remote-2: never touched through what follows.
    let foreign: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "istiod-by-hand", "labels": {"kubernetes.io/service-name": "istiod"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.99"]}],
    }))
    .unwrap();
    let slices = Api::<EndpointSlice>::namespaced(mesh.remote("remote-2").clone(), &mesh.ns);
    let foreign_rv = slices
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap()
        .metadata
        .resource_version;

    // A pod rollout reaches remote-1; remote-2's agent writes nothing.
    let before = mesh.agent_write_count("remote-2");
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    mesh.central_pods()
        .delete("istiod-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the rollout in remote-1", SOON, || async {
        let have = endpoints(&mesh, "remote-1").await?;
        anyhow::ensure!(have == pod_ips(&["10.10.0.2", "10.10.0.3"]), "{have:?}");
        Ok(())
    })
    .await;
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    assert_eq!(
        mesh.agent_write_count("remote-2"),
        before,
        "remote-2 disturbed"
    );

    // A gateway address change reaches remote-2; remote-1's agent writes nothing.
    let before = mesh.agent_write_count("remote-1");
    set_ingress(&mesh, &["192.0.2.20"]).await;
    let second = through("192.0.2.20");
    wait_remote2(&mesh, ("ClusterIP", "", &[&second], true)).await;
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    assert_eq!(
        mesh.agent_write_count("remote-1"),
        before,
        "remote-1 disturbed"
    );

    // IP -> hostname: an ExternalName Service, our slices and Endpoints gone.
    set_ingress(&mesh, &["host:gw.elb.example.com"]).await;
    wait_remote2(&mesh, ("ExternalName", "gw.elb.example.com", &[], false)).await;
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    // hostname -> IP: a ClusterIP Service again, with its slices and Endpoints.
    set_ingress(&mesh, &["192.0.2.30"]).await;
    let third = through("192.0.2.30");
    wait_remote2(&mesh, ("ClusterIP", "", &[&third], true)).await;
    mesh.wait_phase("remote-2", "Synced", SOON).await;

    // The gateway deleted: remote-2 keeps its endpoints, and says why.
    let before = mesh.agent_write_count("remote-2");
    Api::<Service>::namespaced(mesh.central.clone(), &mesh.ns)
        .delete(GATEWAY, &DeleteParams::default())
        .await
        .unwrap();
    let waiting = eventually("remote-2 GatewayNotReady", SOON, || async {
        let st = mesh.status("remote-2").await?;
        let c = condition(&st, "SpecValid");
        anyhow::ensure!(
            c["reason"] == "GatewayNotReady" && c["status"] == "False",
            "{st}"
        );
        Ok(c)
    })
    .await;
    assert!(
        waiting["message"].as_str().unwrap().contains("not found"),
        "{waiting}"
    );
    // The hub records an Event after the status write that carries the transition.
    eventually("an Event saying why", SOON, || async {
        let events = mesh.events_for("remote-2").await;
        anyhow::ensure!(
            events
                .iter()
                .any(|(reason, note)| reason == "GatewayNotReady" && note.contains(GATEWAY)),
            "{events:?}"
        );
        Ok(())
    })
    .await;
    // Restored (same address): recovered, and the remote never saw a write.
    create_gateway(&mesh).await;
    set_ingress(&mesh, &["192.0.2.30"]).await;
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    let st = mesh.status("remote-2").await.unwrap();
    assert_eq!(condition(&st, "SpecValid")["status"], "True", "{st}");
    eventually("an Event saying it recovered", SOON, || async {
        let events = mesh.events_for("remote-2").await;
        anyhow::ensure!(
            events.iter().any(|(reason, _)| reason == "Valid"),
            "{events:?}"
        );
        Ok(())
    })
    .await;
    wait_remote2(&mesh, ("ClusterIP", "", &[&third], true)).await;
    assert_eq!(
        mesh.agent_write_count("remote-2"),
        before,
        "kept, not rewritten"
    );
    assert_eq!(
        endpoints(&mesh, "remote-1").await.unwrap(),
        pod_ips(&["10.10.0.2", "10.10.0.3"])
    );
    let foreign_now = slices.get("istiod-by-hand").await.unwrap();
    assert_eq!(
        foreign_now.metadata.resource_version, foreign_rv,
        "the foreign slice untouched"
    );
}
