//! The harness itself, against real control planes: three clusters, isolation, kubelet-style pod status,
//! CRDs with a status subresource, and no process left behind.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::ApiResource;
use std::time::Duration;
use tether_tests::pods::{create_running_pod, mk_pod};
use tether_tests::{ControlPlanes, eventually, fresh_namespace};

const CLUSTERS: &[&str] = &["central", "remote-1", "remote-2"];

#[tokio::test]
async fn three_clusters_start_and_report_their_kubernetes_version() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut servers = std::collections::HashSet::new();
    for cluster in planes.all() {
        let version = cluster
            .client()
            .await
            .unwrap()
            .apiserver_version()
            .await
            .unwrap();
        assert_eq!(version.major, "1");
        assert!(
            version.git_version.starts_with("v1.3"),
            "{} reports {}",
            cluster.name,
            version.git_version
        );
        assert_ne!(
            version.git_version, "v0.0.0-master+$Format:%H$",
            "version variables were not set"
        );
        servers.insert(cluster.server.clone());
    }
    assert_eq!(servers.len(), 3, "each cluster has its own API server");
}

#[tokio::test]
async fn namespace_created_in_one_cluster_is_absent_from_the_others() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let central = planes.get("central").client().await.unwrap();
    let ns = fresh_namespace(&central, "isolation").await.unwrap();
    Api::<Namespace>::all(central)
        .get(&ns)
        .await
        .expect("present where created");
    for other in ["remote-1", "remote-2"] {
        let client = planes.get(other).client().await.unwrap();
        let got = Api::<Namespace>::all(client).get_opt(&ns).await.unwrap();
        assert!(got.is_none(), "{ns} leaked into {other}");
    }
}

#[tokio::test]
async fn pod_given_ready_status_and_ip_reads_back_with_them() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let client = planes.get("remote-1").client().await.unwrap();
    let ns = fresh_namespace(&client, "pods").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod = mk_pod("istiod-a", &[("app", "istiod")], &[("grpc-xds", 15010)]);
    create_running_pod(&pods, &pod, &["10.1.0.7", "fd00::7"], true)
        .await
        .unwrap();

    let got = pods.get("istiod-a").await.unwrap();
    let status = got.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.1.0.7"));
    let ips: Vec<String> = status.pod_ips.unwrap().into_iter().map(|p| p.ip).collect();
    assert_eq!(ips, ["10.1.0.7", "fd00::7"]);
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");

    tether_tests::pods::set_pod_status(&pods, "istiod-a", &["10.1.0.8"], false)
        .await
        .unwrap();
    let status = pods.get("istiod-a").await.unwrap().status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.1.0.8"));
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
}

#[tokio::test]
async fn crd_installs_and_custom_object_status_can_be_written() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let client = planes.get("central").client().await.unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.harness.tether.io}
spec:
  group: harness.tether.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {phase: {type: string}}}
"#,
    )
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "widgets.harness.tether.io",
        &PatchParams::apply("harness").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let ns = fresh_namespace(&client, "crd").await.unwrap();
    let gvk = GroupVersionKind::gvk("harness.tether.io", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);
    let obj = serde_json::json!({"apiVersion": "harness.tether.io/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}});
    // The CRD is served a moment after it is created.
    eventually(
        "the Widget CRD to be served",
        Duration::from_secs(20),
        || async {
            Ok(widgets
                .patch("w", &PatchParams::apply("harness"), &Patch::Apply(&obj))
                .await?)
        },
    )
    .await;
    let status = serde_json::json!({"apiVersion": "harness.tether.io/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "status": {"phase": "Ready"}});
    widgets
        .patch_status("w", &PatchParams::apply("harness"), &Patch::Apply(&status))
        .await
        .unwrap();
    let got = widgets.get("w").await.unwrap();
    assert_eq!(got.data["status"]["phase"], "Ready");
    assert_eq!(
        got.data["spec"]["size"], 3,
        "a status write leaves the spec alone"
    );
}
