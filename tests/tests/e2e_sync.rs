//! End-to-end: one central and two remote API servers, the hub and two agents as processes over real
//! mTLS. Every test works in its own namespace on shared control planes.

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeSet;
use tether_tests::eventually;
use tether_tests::mesh::Mesh;
use tether_tests::pods::set_pod_status;

use tether_tests::fixtures::{REMOTES, SOON as T, synced_mesh};

/// (ip, ready, serving, terminating, port numbers) of every endpoint in the service's slices, sorted.
type SliceView = Vec<(String, bool, bool, bool, Vec<i32>)>;

async fn slices(client: &Client, ns: &str, svc: &str) -> anyhow::Result<SliceView> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await?;
    let mut out = Vec::new();
    for s in list {
        let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
        for e in s.endpoints {
            let c = e.conditions.unwrap_or_default();
            out.push((
                e.addresses[0].clone(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
                ports.clone(),
            ));
        }
    }
    out.sort();
    Ok(out)
}

fn ep(ip: &str, ready: bool, xds: i32) -> (String, bool, bool, bool, Vec<i32>) {
    (ip.to_string(), ready, ready, false, vec![xds, 15017])
}

async fn wait_slices(mesh: &Mesh, want: &SliceView) {
    for r in REMOTES {
        eventually(&format!("{r} slices {want:?}"), T, || async {
            let got = slices(mesh.remote(r), &mesh.ns, "istiod").await?;
            anyhow::ensure!(&got == want, "got {got:?}");
            Ok(())
        })
        .await;
    }
}

async fn ns_labels(
    client: &Client,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    Ok(Api::<Namespace>::all(client.clone())
        .get(ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default())
}

async fn wait_injection_label(client: &Client, ns: &str, what: &str) {
    eventually(what, T, || async {
        let labels = ns_labels(client, ns).await?;
        anyhow::ensure!(
            labels.get("istio-injection").map(String::as_str) == Some("enabled"),
            "{labels:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn remotes_get_service_slices_endpoints_and_injection_labels() {
    let mesh = synced_mesh().await;
    wait_slices(
        &mesh,
        &vec![ep("10.10.0.1", true, 15010), ep("10.10.0.2", true, 16010)],
    )
    .await;
    for r in REMOTES {
        let client = mesh.remote(r);
        let svc = Api::<Service>::namespaced(client.clone(), &mesh.ns)
            .get("istiod")
            .await
            .unwrap();
        let spec = svc.spec.unwrap();
        assert!(spec.selector.is_none(), "mirror is selector-less");
        let ports: Vec<(String, i32)> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("grpc-xds".to_string(), 15010),
                ("https-webhook".to_string(), 443)
            ]
        );
        assert_eq!(
            svc.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "tether-agent"
        );

        let eps = Api::<Endpoints>::namespaced(client.clone(), &mesh.ns)
            .get("istiod")
            .await
            .unwrap();
        assert_eq!(
            eps.metadata.labels.unwrap()["endpointslice.kubernetes.io/skip-mirror"],
            "true"
        );
        let mut ips: Vec<String> = eps
            .subsets
            .unwrap()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .collect();
        ips.sort();
        assert_eq!(ips, ["10.10.0.1", "10.10.0.2"]);

        let labels = ns_labels(client, &format!("{}-app", mesh.ns))
            .await
            .unwrap();
        assert_eq!(
            labels.get("istio-injection").map(String::as_str),
            Some("enabled")
        );
        assert_eq!(
            labels
                .get("tether.io/managed-injection")
                .map(String::as_str),
            Some("true")
        );

        let status = mesh.status(r).await.unwrap();
        let live = mesh.live_synced(r).await.unwrap();
        assert_eq!(live["endpoints"], 2);
        assert_eq!(status["agent"]["version"], env!("CARGO_PKG_VERSION"));
        let conds: BTreeSet<(String, String)> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_string(),
                    c["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            conds.contains(&("Connected".into(), "True".into()))
                && conds.contains(&("Synced".into(), "True".into())),
            "{conds:?}"
        );
    }
}

#[tokio::test]
async fn pod_replaced_turning_not_ready_and_deleted_shows_in_both_remotes() {
    let mesh = synced_mesh().await;
    let pods = mesh.central_pods();
    // Replaced with a new IP: delete and recreate under a new name, as a Deployment would.
    pods.delete("istiod-a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    wait_slices(
        &mesh,
        &vec![ep("10.10.0.2", true, 16010), ep("10.10.0.3", true, 15010)],
    )
    .await;

    set_pod_status(&pods, "istiod-b", &["10.10.0.2"], false)
        .await
        .unwrap();
    wait_slices(
        &mesh,
        &vec![ep("10.10.0.2", false, 16010), ep("10.10.0.3", true, 15010)],
    )
    .await;
    // Legacy Endpoints are written after the slices in the same pass: wait for them too.
    for r in REMOTES {
        eventually(
            &format!("{r} Endpoints to list 10.10.0.2 as not ready"),
            T,
            || async {
                let eps = Api::<Endpoints>::namespaced(mesh.remote(r).clone(), &mesh.ns)
                    .get("istiod")
                    .await?;
                let not_ready: Vec<String> = eps
                    .subsets
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|s| s.not_ready_addresses.unwrap_or_default())
                    .map(|a| a.ip)
                    .collect();
                anyhow::ensure!(not_ready == ["10.10.0.2"], "{not_ready:?}");
                Ok(())
            },
        )
        .await;
    }

    pods.delete("istiod-b", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_slices(&mesh, &vec![ep("10.10.0.3", true, 15010)]).await;
}

#[tokio::test]
async fn namespaces_follow_the_spec_and_unmarked_ones_are_never_touched() {
    let mesh = synced_mesh().await;
    let r = "remote-1";
    let client = mesh.remote(r);
    let app_ns = format!("{}-app", mesh.ns);
    let manual_ns = format!("{}-manual", mesh.ns);
    let later_ns = format!("{}-later", mesh.ns);
    // Someone labelled a namespace by hand, without the marker.
    tether_tests::mesh::create_namespace(client, &manual_ns)
        .await
        .unwrap();
    let label = json!({"metadata": {"labels": {"istio-injection": "enabled"}}});
    Api::<Namespace>::all(client.clone())
        .patch(&manual_ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();

    // Drop app_ns, add one that does not exist yet.
    mesh.create_remote_cluster(r, json!({"injection": {"namespaces": [later_ns]}}))
        .await
        .unwrap();
    eventually("labels gone from the dropped namespace", T, || async {
        let labels = ns_labels(client, &app_ns).await?;
        anyhow::ensure!(
            !labels.contains_key("istio-injection")
                && !labels.contains_key("tether.io/managed-injection"),
            "{labels:?}"
        );
        Ok(())
    })
    .await;
    tether_tests::mesh::create_namespace(client, &later_ns)
        .await
        .unwrap();
    eventually("a namespace created later is labelled", T, || async {
        let labels = ns_labels(client, &later_ns).await?;
        anyhow::ensure!(
            labels
                .get("tether.io/managed-injection")
                .map(String::as_str)
                == Some("true"),
            "{labels:?}"
        );
        Ok(())
    })
    .await;
    mesh.wait_phase(r, "Synced", T).await;
    let manual = ns_labels(client, &manual_ns).await.unwrap();
    assert_eq!(
        manual.get("istio-injection").map(String::as_str),
        Some("enabled"),
        "hand-set label kept"
    );
    assert!(!manual.contains_key("tether.io/managed-injection"));
    assert!(
        mesh.agent_writes(r).iter().all(|w| w.name != manual_ns),
        "the agent wrote to a namespace it does not manage"
    );
}

#[tokio::test]
async fn hand_edits_and_deletions_on_a_remote_are_repaired() {
    let mesh = synced_mesh().await;
    let r = "remote-2";
    let client = mesh.remote(r);
    let want = vec![ep("10.10.0.1", true, 15010), ep("10.10.0.2", true, 16010)];
    let slices_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &mesh.ns);
    for s in slices_api
        .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
        .await
        .unwrap()
    {
        slices_api
            .delete(&s.metadata.name.unwrap(), &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_slices(&mesh, &want).await;

    let svc_api: Api<Service> = Api::namespaced(client.clone(), &mesh.ns);
    let edit = json!({"spec": {"ports": [{"name": "grpc-xds", "port": 15010, "targetPort": 15010, "protocol": "TCP"}]}});
    svc_api
        .patch("istiod", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("the Service's ports restored", T, || async {
        let ports = svc_api.get("istiod").await?.spec.unwrap().ports.unwrap();
        anyhow::ensure!(ports.len() == 2, "{ports:?}");
        Ok(())
    })
    .await;

    let app_ns = format!("{}-app", mesh.ns);
    let remove = json!({"metadata": {"labels": {"istio-injection": null}}});
    Api::<Namespace>::all(client.clone())
        .patch(&app_ns, &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .unwrap();
    wait_injection_label(client, &app_ns, "the injection label put back").await;
}

/// The remote's `istiod` Endpoints subsets as stored, or Null when it has none.
async fn endpoints_subsets(client: &Client, ns: &str) -> anyhow::Result<serde_json::Value> {
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get("istiod")
        .await?;
    Ok(serde_json::to_value(eps.subsets)?)
}

async fn wait_subsets(mesh: &Mesh, remotes: &[&str], want: serde_json::Value) {
    for r in remotes {
        eventually(&format!("{r} Endpoints subsets {want}"), T, || async {
            let got = endpoints_subsets(mesh.remote(r), &mesh.ns).await?;
            anyhow::ensure!(got == want, "got {got}");
            Ok(())
        })
        .await;
    }
}

fn subset(ready: &[&str], not_ready: &[&str], xds: i32) -> serde_json::Value {
    let addrs = |ips: &[&str]| ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>();
    let mut s = json!({"ports": [
        {"name": "grpc-xds", "port": xds, "protocol": "TCP"},
        {"name": "https-webhook", "port": 15017, "protocol": "TCP"},
    ]});
    if !ready.is_empty() {
        s["addresses"] = addrs(ready).into();
    }
    if !not_ready.is_empty() {
        s["notReadyAddresses"] = addrs(not_ready).into();
    }
    s
}

/// Every field the agent owns follows the desired state when lists, subsets, ports and labels
/// disappear, not only when they appear or change (an apply that leaves a field out removes it;
/// the compare before writing must see that as a difference).
#[tokio::test]
async fn fields_and_lists_that_disappear_are_removed_from_the_remote() {
    let mesh = synced_mesh().await;
    let pods = mesh.central_pods();
    let gone = DeleteParams::default().grace_period(0);
    // A not-ready pod beside the ready one on 15010: one subset with both lists.
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, false)
        .await
        .unwrap();
    wait_subsets(
        &mesh,
        REMOTES,
        json!([
            subset(&["10.10.0.1"], &["10.10.0.3"], 15010),
            subset(&["10.10.0.2"], &[], 16010)
        ]),
    )
    .await;
    // The only ready pod of that subset leaves the selector: its ready list empties.
    let relabel = json!({"metadata": {"labels": {"app": "not-istiod"}}});
    pods.patch("istiod-a", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    wait_subsets(
        &mesh,
        REMOTES,
        json!([
            subset(&[], &["10.10.0.3"], 15010),
            subset(&["10.10.0.2"], &[], 16010)
        ]),
    )
    .await;
    // The not-ready pod is deleted: the whole subset goes.
    pods.delete("istiod-c", &gone).await.unwrap();
    wait_subsets(&mesh, REMOTES, json!([subset(&["10.10.0.2"], &[], 16010)])).await;
    // The last pod goes: no subsets at all, and no slices.
    pods.delete("istiod-b", &gone).await.unwrap();
    wait_subsets(&mesh, REMOTES, serde_json::Value::Null).await;
    wait_slices(&mesh, &vec![]).await;

    // A port's appProtocol, then a slice's ports (no pod resolves the named target port), then an
    // injection label disappear from remote-1's spec.
    mesh.create_istiod_pod("istiod-d", "10.10.0.4", 15010, true)
        .await
        .unwrap();
    let r = "remote-1";
    let client = mesh.remote(r);
    let app_ns = format!("{}-app", mesh.ns);
    let spec = |app_protocol: Option<&str>, target: &str, labels: serde_json::Value| {
        let mut port = json!({"name": "grpc-xds", "port": 15010, "targetPort": target});
        if let Some(p) = app_protocol {
            port["appProtocol"] = p.into();
        }
        json!({"services": [{"name": "istiod", "ports": [port]}],
               "injection": {"namespaces": [app_ns], "labels": labels}})
    };
    let two_labels = json!({"istio.io/rev": "canary", "istio-injection": "disabled"});
    mesh.create_remote_cluster(r, spec(Some("grpc"), "grpc-xds", two_labels.clone()))
        .await
        .unwrap();
    let svc_ports = || async {
        let svc = Api::<Service>::namespaced(client.clone(), &mesh.ns)
            .get("istiod")
            .await?;
        Ok::<_, anyhow::Error>(serde_json::to_value(svc.spec.unwrap_or_default().ports)?)
    };
    let port = |app_protocol: Option<&str>| {
        let mut p =
            json!({"name": "grpc-xds", "port": 15010, "protocol": "TCP", "targetPort": 15010});
        if let Some(a) = app_protocol {
            p["appProtocol"] = a.into();
        }
        json!([p])
    };
    eventually("appProtocol set", T, || async {
        let got = svc_ports().await?;
        anyhow::ensure!(got == port(Some("grpc")), "{got}");
        Ok(())
    })
    .await;
    mesh.create_remote_cluster(r, spec(None, "grpc-xds", two_labels.clone()))
        .await
        .unwrap();
    eventually("appProtocol removed", T, || async {
        let got = svc_ports().await?;
        anyhow::ensure!(got == port(None), "{got}");
        Ok(())
    })
    .await;
    let slice_ports = || async {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &mesh.ns);
        let list = api
            .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
            .await?;
        let ports: Vec<serde_json::Value> = list
            .items
            .into_iter()
            .map(|s| serde_json::to_value(s.ports))
            .collect::<Result<_, _>>()?;
        Ok::<_, anyhow::Error>(ports)
    };
    eventually("one slice with the resolved port", T, || async {
        let got = slice_ports().await?;
        anyhow::ensure!(
            got == [json!([{"name": "grpc-xds", "port": 15010, "protocol": "TCP"}])],
            "{got:?}"
        );
        Ok(())
    })
    .await;
    mesh.create_remote_cluster(r, spec(None, "no-such-port", two_labels))
        .await
        .unwrap();
    eventually("the slice's ports removed", T, || async {
        let got = slice_ports().await?;
        anyhow::ensure!(got == [serde_json::Value::Null], "{got:?}");
        Ok(())
    })
    .await;
    eventually("both injection labels set", T, || async {
        let labels = ns_labels(client, &app_ns).await?;
        anyhow::ensure!(
            labels.get("istio.io/rev").map(String::as_str) == Some("canary")
                && labels.get("istio-injection").map(String::as_str) == Some("disabled"),
            "{labels:?}"
        );
        Ok(())
    })
    .await;
    let one_label = json!({"istio.io/rev": "canary"});
    mesh.create_remote_cluster(r, spec(None, "no-such-port", one_label))
        .await
        .unwrap();
    mesh.wait_phase(r, "Synced", T).await;
    eventually("the dropped injection label removed", T, || async {
        let labels = ns_labels(client, &app_ns).await?;
        anyhow::ensure!(
            !labels.contains_key("istio-injection")
                && labels.get("istio.io/rev").map(String::as_str) == Some("canary"),
            "{labels:?}"
        );
        Ok(())
    })
    .await;
}

/// Deletes a namespace as the namespace controller would finish it (none runs on the harness):
/// delete, then clear its finalizers through the `finalize` subresource.
async fn delete_namespace_fully(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    api.delete(name, &DeleteParams::default()).await?;
    let mut ns = api.get(name).await?;
    ns.spec.get_or_insert_with(Default::default).finalizers = Some(vec![]);
    api.replace_subresource("finalize", name, &Default::default(), &ns)
        .await?;
    eventually(&format!("namespace {name} gone"), T, || async {
        anyhow::ensure!(api.get_opt(name).await?.is_none(), "still there");
        Ok(())
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn an_injection_namespace_deleted_after_labelling_degrades_the_remote_until_it_returns() {
    let mesh = synced_mesh().await;
    let r = "remote-1";
    let client = mesh.remote(r);
    let app_ns = format!("{}-app", mesh.ns);
    delete_namespace_fully(client, &app_ns).await.unwrap();
    let status = mesh.wait_phase(r, "Degraded", T).await;
    let nack = status["sync"]["lastNack"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(nack.contains(&app_ns), "{status}");
    let synced = tether_tests::mesh::condition(&status, "Synced");
    assert_eq!(synced["status"], "False", "{synced}");
    assert_eq!(mesh.status("remote-2").await.unwrap()["phase"], "Synced");

    tether_tests::mesh::create_namespace(client, &app_ns)
        .await
        .unwrap();
    wait_injection_label(client, &app_ns, "the recreated namespace labelled").await;
    mesh.wait_phase(r, "Synced", T).await;
}

/// `legacyEndpoints: false` on one remote: its agent removes the Endpoints it wrote and from then on
/// writes only EndpointSlices (one write per change); the other remote keeps both. Turned on again,
/// the Endpoints come back as they should be.
#[tokio::test]
async fn legacy_endpoints_turned_off_are_removed_and_changes_then_write_only_slices() {
    let mesh = synced_mesh().await;
    let both = json!([
        subset(&["10.10.0.1"], &[], 15010),
        subset(&["10.10.0.2"], &[], 16010)
    ]);
    wait_subsets(&mesh, REMOTES, both.clone()).await;
    let (r, other) = ("remote-1", "remote-2");
    let app_ns = format!("{}-app", mesh.ns);
    let spec =
        |legacy: bool| json!({"injection": {"namespaces": [app_ns]}, "legacyEndpoints": legacy});
    mesh.create_remote_cluster(r, spec(false)).await.unwrap();
    let endpoints = Api::<Endpoints>::namespaced(mesh.remote(r).clone(), &mesh.ns);
    eventually("remote-1's Endpoints removed", T, || async {
        anyhow::ensure!(endpoints.get_opt("istiod").await?.is_none(), "still there");
        Ok(())
    })
    .await;
    eventually("remote-1 acked the slices-only state", T, || async {
        mesh.live_synced(r).await.map(|_| ())
    })
    .await;

    // A readiness flip: remote-1 writes its slice and nothing else; remote-2 both.
    let before = mesh.agent_write_count(r);
    set_pod_status(&mesh.central_pods(), "istiod-b", &["10.10.0.2"], false)
        .await
        .unwrap();
    wait_slices(
        &mesh,
        &vec![ep("10.10.0.1", true, 15010), ep("10.10.0.2", false, 16010)],
    )
    .await;
    let flipped = json!([
        subset(&["10.10.0.1"], &[], 15010),
        subset(&[], &["10.10.0.2"], 16010)
    ]);
    wait_subsets(&mesh, &[other], flipped.clone()).await;
    eventually("remote-1 acked the flip", T, || async {
        mesh.live_synced(r).await.map(|_| ())
    })
    .await;
    let writes: Vec<String> = mesh.agent_writes(r)[before..]
        .iter()
        .map(|w| format!("{} {}", w.verb, w.resource))
        .collect();
    assert_eq!(writes, ["patch endpointslices"], "one write: the slice");
    assert!(endpoints.get_opt("istiod").await.unwrap().is_none());

    // On again: remote-1's Endpoints come back with the current state.
    mesh.create_remote_cluster(r, spec(true)).await.unwrap();
    wait_subsets(&mesh, &[r], flipped).await;
}
