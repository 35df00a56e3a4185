//! The real istiod consumes what Tether writes. istiod (`pilot-discovery` from the pinned Istio
//! module) runs in the central cluster's place as a process in a network namespace of its own, so its
//! pod IP is a real address; the agent mirrors it into remote-1; a remote-1 workload finds istiod
//! only through remote-1's own `istiod` Service and the EndpointSlices the agent wrote, and asks it
//! for configuration (xDS) and for a certificate (its CA), as a sidecar would.
//!
//! istiod reads remote-1 through a remote secret the test makes, as `istioctl create-remote-secret`
//! would (a reader ServiceAccount token and remote-1's address).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tether_tests::ControlPlanes;
use tether_tests::eventually;
use tether_tests::fixtures::{CLUSTERS, SOON};
use tether_tests::istio::{self, Istiod, Workload, service_name};
use tether_tests::mesh::Mesh;

const R: &str = "remote-1";
const LONG: Duration = Duration::from_secs(90);

/// A mesh with remote-1's agent mirroring the istiod Service of `revision`, istiod `name` running,
/// and istiod reading remote-1 through a remote secret. Returns once remote-1 is Synced and istiod
/// lists remote-1 as synced.
async fn mesh_with_istiod(revision: &str, name: &str) -> (Mesh, Istiod) {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, &[R]).await.unwrap();
    Istiod::create_service(&mesh, revision).await.unwrap();
    istio::prepare_remote(&mesh, R).await.unwrap();
    let istiod = Istiod::start(&mesh, name, revision, &[R]).await.unwrap();
    let svc = service_name(revision);
    let labels = if revision == "default" {
        json!({"istio-injection": "enabled"})
    } else {
        json!({"istio.io/rev": revision})
    };
    let app = format!("{}-app", mesh.ns);
    tether_tests::mesh::create_namespace(mesh.remote(R), &app)
        .await
        .unwrap();
    mesh.create_remote_cluster(
        R,
        json!({"services": [{"name": svc}], "injection": {"namespaces": [app], "labels": labels}}),
    )
    .await
    .unwrap();
    mesh.start_hub().unwrap();
    mesh.start_agent(R).unwrap();
    mesh.wait_phase(R, "Synced", SOON).await;
    istio::create_remote_secret(&mesh, R).await.unwrap();
    eventually("istiod to list remote-1 as synced", LONG, || {
        istiod.synced(&[R])
    })
    .await;
    (mesh, istiod)
}

/// A Service and its endpoints in remote-1 (no pods run on the harness), for istiod to serve.
async fn hello_service(mesh: &Mesh, ns: &str) {
    tether_tests::mesh::create_namespace(mesh.remote(R), ns)
        .await
        .unwrap();
    let objects = [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello", "namespace": ns},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "hello"}}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "hello-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "hello",
                            "endpointslice.kubernetes.io/managed-by": "test"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": true}}]}),
    ];
    tether_tests::charts::apply_all(mesh.remote(R), &objects)
        .await
        .unwrap();
}

fn workload(mesh: &Mesh, ns: &str, revision: &str) -> Workload {
    let _ = mesh;
    Workload {
        cluster: R.into(),
        cluster_id: R.into(),
        namespace: ns.into(),
        account: "hello".into(),
        istiod_service: service_name(revision),
    }
}

/// Asks for the workload's config until it holds `cluster` (and, with `endpoints`, that cluster's
/// endpoints): istiod watches every namespace of the shared clusters and may answer before it has
/// seen this test's Service, or with no endpoints for it yet.
async fn config_with(mesh: &Mesh, w: &Workload, cluster: &str, endpoints: bool) -> Value {
    eventually(
        &format!("{cluster} in the workload's config"),
        LONG,
        || async {
            let v = w.xds(mesh, Some(cluster)).await?;
            anyhow::ensure!(v.get("error").is_none(), "{v}");
            let has = v["clusters"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c == cluster));
            let eps = v["endpoints"].as_array().is_some_and(|e| !e.is_empty());
            anyhow::ensure!(has && (eps || !endpoints), "{v}");
            Ok(v)
        },
    )
    .await
}

/// Asks until the answer has no error (istiod writes the root certificate into the workload's
/// namespace shortly after it syncs the remote); returns the answer.
async fn until_answered<F, Fut>(what: &str, mut ask: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    eventually(what, LONG, || {
        let fut = ask();
        async move {
            let v = fut.await?;
            anyhow::ensure!(v.get("error").is_none(), "{v}");
            Ok(v)
        }
    })
    .await
}

#[tokio::test]
async fn a_remote_workload_gets_its_config_and_certificate_from_the_real_istiod_through_the_mirror()
{
    let (mesh, istiod) = mesh_with_istiod("default", "istiod-a").await;
    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "default");
    let hello = format!("outbound|80||hello.{ns}.svc.cluster.local");
    let config = config_with(&mesh, &w, &hello, true).await;
    let dialled = format!("{}:15012", istiod.ip);
    assert_eq!(config["address"], dialled.as_str(), "{config}");
    assert!(
        config["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == hello.as_str()),
        "remote-1's own service is in its config: {config}"
    );
    assert_eq!(config["endpoints"], json!(["10.1.0.5:8080"]), "{config}");

    let cert = until_answered("the workload's certificate", || w.csr(&mesh)).await;
    assert_eq!(cert["address"], dialled.as_str());
    assert_eq!(
        cert["uris"],
        json!([format!("spiffe://cluster.local/ns/{ns}/sa/hello")]),
        "{cert}"
    );
    assert_remote_profile_shape(&mesh, &istiod.ip.to_string(), "default").await;
    // The same token claiming another cluster is refused: the CA really checks with remote-1.
    let wrong = Workload {
        cluster_id: "central".into(),
        ..w
    };
    let refused = wrong.csr(&mesh).await.unwrap();
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("authenticate"),
        "{refused}"
    );
}

/// The mirror of `revision`'s istiod in remote-1 against what Istio's own chart (the `remote`
/// profile: istiodRemote with remotePilotAddress) renders for the same address, both defaulted by
/// the API server (a dry run for the chart's): names, ports, address type and addresses agree field
/// by field. (Labels differ: Tether marks what it owns; the chart adds its release labels.)
async fn assert_remote_profile_shape(mesh: &Mesh, ip: &str, revision: &str) {
    let name = service_name(revision);
    let (profile_svc, profile_slice) = istio::remote_profile(ip, revision);
    let dry = PatchParams::apply("profile").dry_run();
    let client = mesh.remote(R).clone();
    let svc_api: Api<Service> = Api::namespaced(client.clone(), &mesh.ns);
    let slice_api: Api<EndpointSlice> = Api::namespaced(client, &mesh.ns);
    let profile_name = format!("{name}-profile");
    let want_svc = svc_api
        .patch(&profile_name, &dry, &Patch::Apply(&renamed(&profile_svc)))
        .await
        .unwrap();
    let want_slice = slice_api
        .patch(&profile_name, &dry, &Patch::Apply(&renamed(&profile_slice)))
        .await
        .unwrap();
    let got_svc = svc_api.get(&name).await.unwrap();
    let spec = |s: &Service| {
        let mut v = serde_json::to_value(s.spec.clone().unwrap_or_default()).unwrap();
        for server_made in ["clusterIP", "clusterIPs"] {
            v.as_object_mut().unwrap().remove(server_made);
        }
        v
    };
    assert_eq!(spec(&got_svc), spec(&want_svc), "Service {name} spec");
    let list = slice_api
        .list(&ListParams::default().labels(&format!(
            "kubernetes.io/service-name={name},app.kubernetes.io/managed-by=tether-agent"
        )))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1, "one mirror slice of {name}");
    let got_slice = &list.items[0];
    assert_eq!(got_slice.address_type, want_slice.address_type);
    assert_eq!(
        serde_json::to_value(&got_slice.ports).unwrap(),
        serde_json::to_value(&want_slice.ports).unwrap(),
        "EndpointSlice ports of {name}"
    );
    let addrs = |s: &EndpointSlice| -> Vec<Vec<String>> {
        s.endpoints.iter().map(|e| e.addresses.clone()).collect()
    };
    assert_eq!(addrs(got_slice), addrs(&want_slice));
    // The chart leaves conditions unset (ready); the mirror says ready.
    assert!(
        got_slice
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
    );
    let label = |s: &EndpointSlice| {
        s.metadata.labels.clone().unwrap_or_default()["kubernetes.io/service-name"].clone()
    };
    assert_eq!(label(got_slice), name);
    assert_eq!(label(&want_slice), profile_name);
}

/// The profile's objects under another name (the mirror holds the real one), pointing at itself.
fn renamed(v: &Value) -> Value {
    let mut v = v.clone();
    let name = format!("{}-profile", v["metadata"]["name"].as_str().unwrap());
    v["metadata"]["name"] = name.clone().into();
    v["metadata"].as_object_mut().unwrap().remove("namespace");
    if v["kind"] == "EndpointSlice" {
        v["metadata"]["labels"]["kubernetes.io/service-name"] = name.into();
    }
    v
}

#[tokio::test]
async fn an_istiod_rollout_reaches_the_remote_workload_through_the_updated_slice() {
    let (mesh, mut old) = mesh_with_istiod("default", "istiod-old").await;
    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "default");
    let first = until_answered("a certificate from the old istiod", || w.csr(&mesh)).await;
    assert_eq!(first["address"], format!("{}:15012", old.ip).as_str());

    // A rollout: the new pod comes up at a new address, then the old one goes.
    let new = Istiod::start(&mesh, "istiod-new", "default", &[R])
        .await
        .unwrap();
    eventually("istiod-new to list remote-1 as synced", LONG, || {
        new.synced(&[R])
    })
    .await;
    let deleted = Instant::now();
    mesh.central_pods()
        .delete("istiod-old", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    // The kubelet stops the old process (SIGTERM, which istiod may sit on) while the endpoints move.
    let stopping = tokio::task::spawn_blocking(move || {
        old.stop();
        old
    });
    // Until the slice moves, the workload dials the old address and fails.
    let after = until_answered("a certificate from the new istiod", || w.csr(&mesh)).await;
    let took = deleted.elapsed();
    let _old = stopping.await.unwrap();
    assert_eq!(after["address"], format!("{}:15012", new.ip).as_str());
    println!(
        "istiod rollout: the workload's next successful request {:.2} s after the old Pod's deletion",
        took.as_secs_f64()
    );
    let config = until_answered("config from the new istiod", || w.xds(&mesh, None)).await;
    assert_eq!(config["address"], format!("{}:15012", new.ip).as_str());
}

#[tokio::test]
async fn a_revisioned_control_plane_works_the_same_way() {
    let (mesh, istiod) = mesh_with_istiod("canary", "istiod-canary-a").await;
    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "canary");
    let cert = until_answered("a certificate from istiod-canary", || w.csr(&mesh)).await;
    assert_eq!(cert["address"], format!("{}:15012", istiod.ip).as_str());
    assert_eq!(
        cert["uris"],
        json!([format!("spiffe://cluster.local/ns/{ns}/sa/hello")])
    );
    // Wait for this test's Service by name: istiod may answer before it has seen it (it watches
    // every namespace of the shared clusters, so the first answer can hold other tests' Services).
    let hello = format!("outbound|80||hello.{ns}.svc.cluster.local");
    let config = until_answered("config from istiod-canary with this test's Service", || {
        let asked = w.xds(&mesh, None);
        let hello = hello.clone();
        async move {
            let config = asked.await?;
            let clusters = config["clusters"].as_array().cloned().unwrap_or_default();
            anyhow::ensure!(clusters.iter().any(|c| c == hello.as_str()), "{config}");
            Ok(config)
        }
    })
    .await;
    assert_eq!(config["address"], format!("{}:15012", istiod.ip).as_str());
    assert_remote_profile_shape(&mesh, &istiod.ip.to_string(), "canary").await;
    // The injection label of the revision is on the remote namespace.
    let labels = Api::<k8s_openapi::api::core::v1::Namespace>::all(mesh.remote(R).clone())
        .get(&format!("{}-app", mesh.ns))
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        labels.get("istio.io/rev").map(String::as_str),
        Some("canary")
    );
}

/// API access (no remote secret made by the test, no route from istiod to remote-1's API server):
/// the hub's remote secret alone makes istiod read remote-1 through the agent's tunnel; a remote-1
/// workload gets its config and certificate; with the agent gone, certificates are refused, and
/// granted again once it is back; the central cluster holds nothing of remote-1's API server; remote-1's
/// audit log shows istiod's writes made as the reader ServiceAccount.
/// API access: remote-1's agent serves istiod's requests through its tunnel; istiod reaches the
/// central API server and the hub's endpoint only (remote-1's API server is not reachable from its
/// network namespace at all) and has no remote secret but the hub's. Returns once istiod lists
/// remote-1 as synced.
async fn mesh_with_api_access(hub_args: &[&str], agent_args: &[&str]) -> (Mesh, Istiod) {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, &[R]).await.unwrap();
    Istiod::create_service(&mesh, "default").await.unwrap();
    istio::prepare_remote(&mesh, R).await.unwrap();
    let mut hub = vec!["--api-hold", "1s"];
    hub.extend_from_slice(hub_args);
    let api_port = istio::api_access_args(&mut mesh, &hub, agent_args);
    let istiod = Istiod::start_reaching(&mesh, "istiod-a", "default", &[api_port])
        .await
        .unwrap();
    mesh.create_remote_cluster(
        R,
        json!({"services": [{"name": "istiod"}], "apiAccess": {"enabled": true}}),
    )
    .await
    .unwrap();
    mesh.start_hub().unwrap();
    mesh.start_agent(R).unwrap();
    mesh.wait_phase(R, "Synced", SOON).await;
    let synced = Instant::now();
    eventually(
        "istiod to list remote-1 as synced through the hub",
        LONG,
        || istiod.synced(&[R]),
    )
    .await;
    println!(
        "API access: istiod listed remote-1 as synced {:.2} s after the remote was Synced",
        synced.elapsed().as_secs_f64()
    );
    (mesh, istiod)
}

#[tokio::test]
async fn istiod_reaches_the_remote_through_its_agent_with_no_remote_credential_in_central() {
    // Held: istiod stops when it is dropped.
    let (mut mesh, _istiod) = mesh_with_api_access(&[], &[]).await;
    let planes = mesh.planes;
    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "default");
    let hello = format!("outbound|80||hello.{ns}.svc.cluster.local");
    let config = config_with(&mesh, &w, &hello, true).await;
    assert_eq!(config["endpoints"], json!(["10.1.0.5:8080"]), "{config}");
    let cert = until_answered("the workload's certificate", || w.csr(&mesh)).await;
    assert_eq!(
        cert["uris"],
        json!([format!("spiffe://cluster.local/ns/{ns}/sa/hello")])
    );

    // The agent goes: the CA can no longer review remote-1's tokens.
    let killed = Instant::now();
    mesh.kill_agent(R);
    eventually("certificates refused without the agent", LONG, || async {
        let v = w.csr(&mesh).await?;
        anyhow::ensure!(v.get("error").is_some(), "still granted: {v}");
        Ok(())
    })
    .await;
    let refused_after = killed.elapsed();
    let restarted = Instant::now();
    mesh.start_agent(R).unwrap();
    until_answered("a certificate once the agent is back", || w.csr(&mesh)).await;
    println!(
        "API access: certificates refused {:.2} s after the agent was killed; granted again {:.2} s after it was restarted",
        refused_after.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );

    // Nothing of remote-1's API server in the central namespace where the hub and istiod live (the
    // only one they write to): not its address, not its CA, no token. (Other tests of this binary
    // share the central cluster and make remote secrets of their own, in their own namespaces.)
    let plane = planes.get(R);
    let ca = std::fs::read_to_string(plane.dir.join("ca.crt")).unwrap();
    let ca_body: String = ca.lines().filter(|l| !l.starts_with("-----")).collect();
    let secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mesh.central.clone(), &mesh.ns)
            .list(&ListParams::default())
            .await
            .unwrap();
    let configmaps =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(mesh.central.clone(), &mesh.ns)
            .list(&ListParams::default())
            .await
            .unwrap();
    let mut texts: Vec<(String, String)> = Vec::new();
    for s in &secrets.items {
        for v in s.data.clone().unwrap_or_default().values() {
            texts.push((
                format!("Secret {:?}", s.metadata.name),
                String::from_utf8_lossy(&v.0).into_owned(),
            ));
        }
    }
    for c in &configmaps.items {
        for v in c.data.clone().unwrap_or_default().values() {
            texts.push((format!("ConfigMap {:?}", c.metadata.name), v.clone()));
        }
    }
    use base64::Engine;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&ca);
    let remote_port = plane.server.rsplit(':').next().unwrap().to_string();
    for (what, text) in &texts {
        assert!(
            !text.contains(&plane.server),
            "{what} holds remote-1's address"
        );
        assert!(
            !text.contains(&format!(":{remote_port}")),
            "{what} holds remote-1's port"
        );
        assert!(!text.contains(&ca_body[..64]), "{what} holds remote-1's CA");
        assert!(!text.contains(&ca_b64[..64]), "{what} holds remote-1's CA");
        assert!(!text.contains("token:"), "{what} holds a token");
    }
    let remote_secret = secrets
        .items
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("istio-remote-secret-remote-1"))
        .expect("the hub wrote remote-1's remote secret");
    assert_eq!(
        remote_secret.metadata.labels.clone().unwrap_or_default()["istio/multiCluster"],
        "true"
    );
    // istiod's writes in remote-1 (root certificate, token reviews) were made as the reader.
    let reader_user = format!(
        "system:serviceaccount:{}:istio-reader-service-account",
        mesh.ns
    );
    let writes = plane.audit_writes().unwrap();
    let by_reader: Vec<String> = writes
        .iter()
        .filter(|w| w.user == reader_user)
        .map(|w| format!("{} {}", w.verb, w.resource))
        .collect();
    assert!(
        by_reader.iter().any(|w| w == "create tokenreviews"),
        "token reviews as the reader: {by_reader:?}"
    );
    assert!(
        by_reader.iter().any(|w| w == "create configmaps"),
        "the root certificate written as the reader: {by_reader:?}"
    );
    // Disabling API access removes the hub's remote secret.
    mesh.create_remote_cluster(R, json!({"services": [{"name": "istiod"}]}))
        .await
        .unwrap();
    eventually("the remote secret removed", SOON, || async {
        let s =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mesh.central.clone(), &mesh.ns)
                .get_opt("istio-remote-secret-remote-1")
                .await?;
        anyhow::ensure!(s.is_none(), "still there");
        Ok(())
    })
    .await;
}

/// istiod's open watches of remote-1 through the hub (the hub's metric).
async fn open_watches(mesh: &Mesh) -> f64 {
    let (_, text) = Mesh::admin_get(mesh.hub_admin_port, "/metrics")
        .await
        .unwrap();
    tether_tests::metric(
        &text,
        &format!("tether_hub_api_open_watches{{cluster=\"{R}\"}}"),
    )
}

/// API access keeps working while both of its credentials rotate: istiod's client certificate
/// (a 15 s lifetime: renewed every 10 s, the remote secret rewritten, the old certificate's
/// connections closed 3 s later) and the agent's reader token (refreshed every 4 s). After three
/// renewals, a remote-1 workload still gets certificates (token reviews through the agent, under
/// several reader tokens), istiod still sees remote-1's changes, and istiod's old clients' watches
/// are gone.
#[tokio::test]
async fn rotating_istiods_certificate_and_the_reader_token_keeps_the_remote() {
    let (mesh, _istiod) = mesh_with_api_access(
        &[
            "--api-credential-ttl",
            "15s",
            "--api-credential-grace",
            "3s",
        ],
        &["--api-token-refresh", "4s"],
    )
    .await;
    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "default");
    until_answered("the workload's certificate", || w.csr(&mesh)).await;
    let secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mesh.central.clone(), &mesh.ns);
    let name = format!("istio-remote-secret-{R}");
    let kubeconfig =
        |s: k8s_openapi::api::core::v1::Secret| s.data.unwrap_or_default()[R].0.clone();
    let mut current = kubeconfig(secrets.get(&name).await.unwrap());
    let watches_before = open_watches(&mesh).await;
    let mut most_watches = watches_before;
    for renewal in 1..=3 {
        current = eventually("the next renewal of istiod's certificate", SOON, || {
            let (secrets, name, current) = (&secrets, &name, &current);
            async move {
                let now = kubeconfig(secrets.get(name).await?);
                anyhow::ensure!(&now != current, "not yet");
                Ok(now)
            }
        })
        .await;
        let renewed = Instant::now();
        until_answered("a certificate after the renewal", || w.csr(&mesh)).await;
        most_watches = most_watches.max(open_watches(&mesh).await);
        println!(
            "renewal {renewal}: a workload certificate granted {:.2} s after the remote secret changed",
            renewed.elapsed().as_secs_f64()
        );
    }
    // istiod still follows remote-1: a Service made now reaches the workload's config.
    let objects = [json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "late", "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "late"}}})];
    tether_tests::charts::apply_all(mesh.remote(R), &objects)
        .await
        .unwrap();
    let late = format!("outbound|80||late.{ns}.svc.cluster.local");
    config_with(&mesh, &w, &late, false).await;
    // What istiod's earlier clients opened is closed: no more watches than before the renewals.
    let settled = eventually("the old clients' watches closed", LONG, || async {
        let n = open_watches(&mesh).await;
        anyhow::ensure!(n <= watches_before, "{n} open, {watches_before} before");
        Ok(n)
    })
    .await;
    println!(
        "istiod's watches of remote-1: {watches_before} before the renewals, at most {most_watches} during, {settled} after"
    );
    // The hub closed the old certificate's connections itself (istiod would leave them for minutes):
    // one at least per renewal.
    let closed = eventually(
        "the hub to close each old certificate's connection",
        SOON,
        || async {
            let n = mesh
                .log("hub")
                .matches("closing a connection of istiod's superseded certificate")
                .count();
            anyhow::ensure!(n >= 3, "{n} closed");
            Ok(n)
        },
    )
    .await;
    println!("connections of superseded certificates closed by the hub: {closed}");
    // The token reviews were made under more than one reader token, each from the agent.
    let reader_user = format!(
        "system:serviceaccount:{}:istio-reader-service-account",
        mesh.ns
    );
    let mut tokens: Vec<String> = mesh
        .planes
        .get(R)
        .audit_writes()
        .unwrap()
        .into_iter()
        .filter(|w| w.user == reader_user && w.resource == "tokenreviews")
        .map(|w| w.credential)
        .collect();
    tokens.sort();
    tokens.dedup();
    assert!(
        tokens.len() >= 2 && tokens.iter().all(|t| t.starts_with("JTI=")),
        "token reviews under reader tokens: {tokens:?}"
    );
}

/// A remote on another network (must-show of the gateway issue): remote-1 cannot be given istiod's
/// pod IP, so its mirror's endpoint is the load-balancer address of a central east-west gateway
/// Service. The gateway's Envoy (TLS passthrough on 15012, `expose-istiod`) is stood in for by a TCP
/// forwarder of this test, listening on an address of a network namespace the test creates and
/// passing each connection, unread, to istiod's pod IP. The workload dials the gateway address from
/// its EndpointSlices, verifies istiod's certificate for `istiod.<ns>.svc` through it, and gets its
/// certificate and config.
#[tokio::test]
async fn a_remote_workload_reaches_istiod_through_the_gateway_address() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (mesh, istiod) = mesh_with_istiod("default", "istiod-gw").await;
    // The stand-in gateway: an address of its own, a passthrough forwarder on 15012.
    let gateway = tether_tests::netns::Netns::create().unwrap();
    let listener = tokio::net::TcpListener::from_std(
        gateway
            .listen(std::net::SocketAddr::from((gateway.ip, 15012)))
            .unwrap(),
    )
    .unwrap();
    let passed = Arc::new(AtomicUsize::new(0));
    let upstream = std::net::SocketAddr::from((istiod.ip, 15012));
    let count = passed.clone();
    let forwarder = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut to_istiod) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut to_istiod).await;
                }
            });
        }
    });
    // The east-west gateway Service, and its address as a cloud controller writes it.
    let services = Api::<Service>::namespaced(mesh.central.clone(), &mesh.ns);
    let gw: Service = serde_json::from_value(json!({
        "metadata": {"name": "eastwest"},
        "spec": {"type": "LoadBalancer", "selector": {"istio": "eastwestgateway"}, "ports": [
            {"name": "tls-istiod", "port": 15012, "protocol": "TCP"},
            {"name": "tls-webhook", "port": 15017, "protocol": "TCP"},
        ]}
    }))
    .unwrap();
    services.create(&Default::default(), &gw).await.unwrap();
    services
        .patch_status(
            "eastwest",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": gateway.ip.to_string()}]}}}),
            ),
        )
        .await
        .unwrap();
    let app = format!("{}-app", mesh.ns);
    mesh.create_remote_cluster(
        R,
        json!({"services": [{"name": "istiod"}], "injection": {"namespaces": [app]},
               "endpoints": {"source": "Gateway", "gateway": "eastwest"}}),
    )
    .await
    .unwrap();
    eventually("remote-1's mirror on the gateway address", SOON, || async {
        let slices = Api::<EndpointSlice>::namespaced(mesh.remote(R).clone(), &mesh.ns)
            .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
            .await?;
        let addrs: Vec<String> = slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone()))
            .collect();
        anyhow::ensure!(addrs == [gateway.ip.to_string()], "{addrs:?}");
        Ok(())
    })
    .await;
    mesh.wait_phase(R, "Synced", SOON).await;

    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "default");
    let through = format!("{}:15012", gateway.ip);
    let cert = until_answered("a certificate through the gateway", || w.csr(&mesh)).await;
    assert_eq!(cert["address"], through.as_str(), "{cert}");
    assert_eq!(
        cert["uris"],
        json!([format!("spiffe://cluster.local/ns/{ns}/sa/hello")])
    );
    let hello = format!("outbound|80||hello.{ns}.svc.cluster.local");
    let config = config_with(&mesh, &w, &hello, true).await;
    assert_eq!(config["address"], through.as_str(), "{config}");
    assert!(
        passed.load(Ordering::Relaxed) >= 2,
        "the workload's connections went through the gateway"
    );
    forwarder.abort();
}

/// API access with two hub replicas (must-show 2 of the replicas issue). istiod reaches the hub's
/// endpoint through one balancer, the agent dials through another, as Services in front of the
/// replicas would be. First istiod's balancer sends it only to hub-1 and the agent's only to hub-0:
/// remote-1 works through hub-1 passing istiod's requests on to hub-0, which holds the tunnel. Then
/// both balancers send to both replicas and each replica is restarted in turn (SIGTERM, as a rolling
/// update would), while the workload asks for a certificate every half second (each one a
/// TokenReview through the tunnel). The longest run of refusals is the bound this test states; a
/// Service created in remote-1 after the restart reaches the workload's config (istiod's watches
/// came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_keeps_the_remote_through_a_rolling_restart_of_two_hub_replicas() {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tether_tests::balancer::Balancer;
    use tether_tests::controlplane::free_port;
    const IDS: [&str; 2] = ["hub-0", "hub-1"];
    // The bound: at most this long without a certificate, restarts included.
    const BOUND: Duration = Duration::from_secs(20);
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, &[R]).await.unwrap();
    Istiod::create_service(&mesh, "default").await.unwrap();
    istio::prepare_remote(&mesh, R).await.unwrap();
    // (grpc, admin, api) per replica.
    let ports: Vec<(u16, u16, u16)> = IDS
        .iter()
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let agents = Balancer::start(vec![addr(ports[0].0)]).await.unwrap();
    let apis = Balancer::start(vec![addr(ports[1].2)]).await.unwrap();
    mesh.hub_args = vec![
        "--api-advertise".into(),
        format!("https://{}", apis.addr),
        "--istio-namespace".into(),
        mesh.ns.clone(),
    ];
    let reader = format!("{}/istio-reader-service-account", mesh.ns);
    mesh.agent_args(&["--api-access", "--api-reader", &reader]);
    mesh.agent_hub_addr
        .insert(R.to_string(), agents.addr.to_string());
    let mut incarnation = 0;
    let mut start = |mesh: &mut Mesh, i: usize| {
        incarnation += 1;
        let (grpc, admin, api) = ports[i];
        let user = format!("tether-hub-{}-{}-{incarnation}", mesh.ns, IDS[i]);
        let own = ["--api-addr".to_string(), format!("127.0.0.1:{api}")];
        mesh.start_replica_with(IDS[i], &user, grpc, admin, &own)
            .unwrap();
    };
    start(&mut mesh, 0);
    start(&mut mesh, 1);
    let istiod = Istiod::start_reaching(&mesh, "istiod-a", "default", &[apis.addr.port()])
        .await
        .unwrap();
    mesh.create_remote_cluster(
        R,
        json!({"services": [{"name": "istiod"}], "apiAccess": {"enabled": true}}),
    )
    .await
    .unwrap();
    mesh.start_agent(R).unwrap();
    mesh.wait_phase(R, "Synced", SOON).await;
    eventually(
        "istiod to list remote-1 as synced through hub-1",
        LONG,
        || istiod.synced(&[R]),
    )
    .await;
    let ns = format!("{}-demo", mesh.ns);
    hello_service(&mesh, &ns).await;
    let w = workload(&mesh, &ns, "default");
    until_answered("a certificate through hub-1 and hub-0", || w.csr(&mesh)).await;
    let forwarded = Mesh::admin_metric(ports[1].1, "tether_hub_api_forwarded_total").await;
    assert!(
        forwarded > 0.0,
        "hub-1 passed istiod's requests on to hub-0"
    );
    let tunnels_at_1 = Mesh::admin_metric(ports[1].1, "tether_hub_api_tunnels_connected").await;
    assert_eq!(tunnels_at_1, 0.0, "the tunnel is at hub-0, not hub-1");
    // The API-access condition is written by the replica holding the stream (hub-0), from what the
    // agent reports.
    eventually("APIAccess Ready", SOON, || async {
        let c = tether_tests::mesh::condition(&mesh.status(R).await?, "APIAccess");
        anyhow::ensure!(c["status"] == "True" && c["reason"] == "Ready", "{c}");
        Ok(())
    })
    .await;
    println!("API access through a peer replica: {forwarded} requests passed on by hub-1");

    // Both replicas behind both balancers, then a rolling restart under certificate requests.
    let all = |i: usize| -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|p| addr(if i == 0 { p.0 } else { p.2 }))
            .collect()
    };
    agents.set(all(0));
    apis.set(all(2));
    let outcomes: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let t = Instant::now();
    let mut restarted = Vec::new();
    let ask = |outcomes: &Arc<Mutex<Vec<(Instant, bool)>>>, v: anyhow::Result<Value>| {
        let ok = v.is_ok_and(|v| v.get("error").is_none() && v.get("uris").is_some());
        outcomes.lock().unwrap().push((Instant::now(), ok));
    };
    for i in 0..IDS.len() {
        let stop_at = Instant::now();
        // SIGTERM; certificates are asked for while the replica drains, and after.
        let pid = mesh.replica_pid(IDS[i]).unwrap();
        // SAFETY: kill(2) on the pid of the mesh's own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        while tether_tests::procs::alive(pid) && stop_at.elapsed() < Duration::from_secs(20) {
            ask(&outcomes, w.csr(&mesh).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::task::block_in_place(|| mesh.stop_replica(IDS[i], Duration::from_secs(1)));
        start(&mut mesh, i);
        let admin = ports[i].1;
        eventually(&format!("{} Ready again", IDS[i]), SOON, || async {
            let (code, _) = Mesh::admin_get(admin, "/ready").await?;
            anyhow::ensure!(code == 200, "{code}");
            Ok(())
        })
        .await;
        restarted.push((IDS[i], stop_at.elapsed()));
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            ask(&outcomes, w.csr(&mesh).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!(
        "two replicas restarted one by one in {:.1} s: {restarted:?}",
        t.elapsed().as_secs_f64()
    );
    until_answered("a certificate after the restart", || w.csr(&mesh)).await;
    let outcomes = outcomes.lock().unwrap().clone();
    let (mut longest, mut since, mut refused) = (Duration::ZERO, None::<Instant>, 0);
    for (at, ok) in &outcomes {
        match (ok, since) {
            (false, None) => {
                since = Some(*at);
                refused += 1;
            }
            (false, Some(_)) => refused += 1,
            (true, Some(s)) => {
                longest = longest.max(*at - s);
                since = None;
            }
            (true, None) => {}
        }
    }
    println!(
        "certificate requests during the rolling restart: {} asked, {refused} refused, longest run of refusals {:.1} s (bound {BOUND:?})",
        outcomes.len(),
        longest.as_secs_f64()
    );
    assert!(since.is_none(), "refused until the end: {outcomes:?}");
    assert!(longest <= BOUND, "{longest:?} without a certificate");
    // istiod's watches of remote-1 came back: a Service made now reaches the workload's config.
    let late = format!("{}-late", mesh.ns);
    hello_service(&mesh, &late).await;
    let hello = format!("outbound|80||hello.{late}.svc.cluster.local");
    let config = config_with(&mesh, &w, &hello, true).await;
    assert_eq!(config["endpoints"], json!(["10.1.0.5:8080"]), "{config}");
    istiod.synced(&[R]).await.unwrap();
}
