//! Installing on clusters: the Helm charts (lint, render, accepted by a real API server, exactly the
//! design's RBAC), an agent running with exactly the chart's permissions, `certs init` + `join`, and
//! certificate rotation without restarts.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use tether_tests::charts::{THIRD_PARTY_CRDS, apply_all, chart, run_helm, template};
use tether_tests::fixtures::{CLUSTERS, REMOTES, SOON, synced_mesh_with};
use tether_tests::mesh::Mesh;
use tether_tests::{ControlPlanes, eventually, fresh_namespace};

/// (apiGroup, resource, verb) triples of a set of rules.
/// (group, resource, verb) of every grant; a grant limited to named objects reads `resource#name`.
fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        let names: Vec<String> = r.resource_names.clone().unwrap_or_default();
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                let targets: Vec<String> = if names.is_empty() {
                    vec![res.clone()]
                } else {
                    names.iter().map(|n| format!("{res}#{n}")).collect()
                };
                for t in &targets {
                    for v in &r.verbs {
                        out.insert((g.clone(), t.clone(), v.clone()));
                    }
                }
            }
        }
    }
    out
}

fn set(items: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

fn agent_role() -> BTreeSet<(String, String, String)> {
    let rw: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    set(&[
        ("", "services", rw),
        ("", "endpoints", rw),
        ("discovery.k8s.io", "endpointslices", rw),
    ])
}

fn agent_cluster_role() -> BTreeSet<(String, String, String)> {
    set(&[("", "namespaces", &["get", "list", "watch", "patch"])])
}

#[tokio::test]
async fn charts_lint_render_and_are_accepted_by_the_api_server_with_exactly_the_designed_rbac() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let client = planes.get("central").client().await.unwrap();
    let (ok, out) = run_helm(&["lint", chart("tether-hub").to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = run_helm(&[
        "lint",
        chart("tether-agent").to_str().unwrap(),
        "--set",
        "cluster=r1",
        "--set",
        "hub.address=hub:15012",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run_helm(&["lint", chart("tether-agent").to_str().unwrap()]);
    assert!(
        !ok && out.contains("cluster"),
        "the agent chart requires a cluster name:\n{out}"
    );

    let crds: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(THIRD_PARTY_CRDS)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    apply_all(&client, &crds).await.unwrap();
    let crd: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart("tether-hub").join("crds/remoteclusters.tether.io.yaml"))
            .unwrap(),
    )
    .unwrap();
    apply_all(&client, &[crd]).await.unwrap();

    let full_hub = tether_tests::controlplane::repo_root().join("tests/charts/hub-full.yaml");
    let full_agent = tether_tests::controlplane::repo_root().join("tests/charts/agent-full.yaml");
    let renders = [
        ("tether-hub", vec![]),
        ("tether-hub", vec!["-f", full_hub.to_str().unwrap()]),
        (
            "tether-agent",
            vec![
                "--set",
                "cluster=remote-1",
                "--set",
                "hub.address=hub.example.com:15012",
            ],
        ),
        ("tether-agent", vec!["-f", full_agent.to_str().unwrap()]),
    ];
    for (chart_name, extra) in renders {
        let ns = fresh_namespace(&client, "chart").await.unwrap();
        let full = !extra.is_empty() && extra[0] == "-f";
        // The full values enable API access: its Roles go to the namespace under test.
        let here = [
            format!("apiAccess.istioNamespace={ns}"),
            format!("apiAccess.reader.namespace={ns}"),
        ];
        let mut extra = extra.clone();
        if full {
            let i = if chart_name == "tether-hub" { 0 } else { 1 };
            extra.extend(["--set", here[i].as_str()]);
        }
        let objects = template(chart_name, chart_name, &ns, &extra);
        // The third-party CRDs take a moment to be served.
        let applied = eventually(&format!("{chart_name} {extra:?} applied"), SOON, || {
            apply_all(&client, &objects)
        })
        .await;
        let kinds: BTreeSet<&str> = applied.iter().map(|(k, _)| k.as_str()).collect();
        match (chart_name, extra.is_empty()) {
            ("tether-hub", true) => assert_eq!(
                kinds,
                BTreeSet::from([
                    "Deployment",
                    "PodDisruptionBudget",
                    "Role",
                    "RoleBinding",
                    "Service",
                    "ServiceAccount"
                ])
            ),
            ("tether-hub", false) => {
                for k in ["ServiceMonitor", "Issuer", "Certificate", "ConfigMap"] {
                    assert!(kinds.contains(k), "{k} missing from {kinds:?}");
                }
            }
            (_, _) => assert!(
                kinds.contains("ClusterRole")
                    && kinds.contains("Role")
                    && kinds.contains("Deployment")
            ),
        }
        let roles = Api::<Role>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap();
        let names: BTreeSet<String> = roles
            .items
            .iter()
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        let api_role = format!("{chart_name}-api-access");
        let want_names = if full {
            BTreeSet::from([chart_name.to_string(), api_role.clone()])
        } else {
            BTreeSet::from([chart_name.to_string()])
        };
        assert_eq!(names, want_names, "the chart's Roles");
        let role = |name: &str| {
            let r = roles
                .items
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .unwrap();
            grants(r.rules.as_deref().unwrap_or_default())
        };
        if full && chart_name == "tether-hub" {
            let rw: &[&str] = &["get", "list", "create", "patch", "delete"];
            assert_eq!(
                role(&api_role),
                set(&[("", "secrets", rw)]),
                "hub API-access Role: istiod's remote secrets and the API-access CA"
            );
        }
        if full && chart_name == "tether-agent" {
            assert_eq!(
                role(&api_role),
                set(&[(
                    "",
                    "serviceaccounts/token#istio-reader-service-account",
                    &["create"]
                )]),
                "agent API-access Role: the reader's token and nothing else"
            );
        }
        let got = role(chart_name);
        if chart_name == "tether-hub" {
            let want = set(&[
                ("", "pods", &["get", "list", "watch"]),
                ("", "services", &["get", "list", "watch"]),
                (
                    "tether.io",
                    "remoteclusters",
                    &["get", "list", "watch", "patch"],
                ),
                ("tether.io", "remoteclusters/status", &["patch"]),
                ("tether.io", "remoteclusters/finalizers", &["update"]),
                ("events.k8s.io", "events", &["create", "patch"]),
                (
                    "",
                    "configmaps#tether-retired",
                    &["get", "list", "watch", "patch"],
                ),
                ("", "configmaps", &["create"]),
                (
                    "coordination.k8s.io",
                    "leases",
                    &["get", "list", "watch", "create", "update"],
                ),
            ]);
            assert_eq!(got, want, "hub Role");
            assert!(
                !applied.iter().any(|(k, _)| k == "ClusterRole"),
                "the hub needs no cluster-wide access"
            );
        } else {
            assert_eq!(got, agent_role(), "agent Role");
            let name = &applied
                .iter()
                .find(|(k, n)| k == "ClusterRole" && n.ends_with("-namespaces"))
                .unwrap()
                .1;
            let cr = Api::<ClusterRole>::all(client.clone())
                .get(name)
                .await
                .unwrap();
            assert_eq!(
                grants(cr.rules.as_deref().unwrap_or_default()),
                agent_cluster_role(),
                "agent ClusterRole"
            );
        }
    }
}

/// What the charts render for the values a real install needs: the admin port off the exposed
/// Service, certificate names from the release, the mirror namespace on both sides, extra flags.
#[test]
fn chart_values_for_a_real_install_render_as_documented() {
    let find = |objs: &[serde_json::Value], kind: &str, name: &str| {
        objs.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let full_hub = tether_tests::controlplane::repo_root().join("tests/charts/hub-full.yaml");
    let hub = template(
        "tether-hub",
        "mesh-hub",
        "mesh",
        &["-f", full_hub.to_str().unwrap()],
    );
    // Exposed: gRPC and API access only. Admin (unauthenticated /streams, /metrics): ClusterIP.
    let exposed = find(&hub, "Service", "mesh-hub");
    assert_eq!(exposed["spec"]["type"], "LoadBalancer");
    let ports: Vec<&str> = exposed["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["grpc", "https-api"]);
    let admin = find(&hub, "Service", "mesh-hub-admin");
    assert_eq!(admin["spec"]["type"], "ClusterIP");
    assert_eq!(admin["spec"]["ports"][0]["name"], "http-admin");
    let monitor = find(&hub, "ServiceMonitor", "mesh-hub");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "admin"
    );
    let cert = find(&hub, "Certificate", "mesh-hub");
    assert_eq!(
        cert["spec"]["dnsNames"],
        json!([
            "mesh-hub",
            "mesh-hub.mesh.svc",
            "mesh-hub.mesh.svc.cluster.local",
            "hub.example.com"
        ])
    );
    let deploy = find(&hub, "Deployment", "mesh-hub");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--remote-namespace=mesh-system"), "{args:?}");
    assert!(args.contains(&"--status-refresh=5s"), "{args:?}");
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RUST_BACKTRACE"),
        "{container}"
    );
    let node_port = template(
        "tether-hub",
        "tether-hub",
        "istio-system",
        &[
            "--set",
            "service.type=NodePort",
            "--set",
            "service.nodePort=30412",
        ],
    );
    assert_eq!(
        find(&node_port, "Service", "tether-hub")["spec"]["ports"][0]["nodePort"],
        30412
    );
    // Replicas by default: two, rolled one at a time, spread across nodes when possible, a PDB,
    // and the Leases they coordinate through; API access with more than one is refused, saying why.
    let deploy = find(&node_port, "Deployment", "tether-hub");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(
        deploy["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let anti = &deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert_eq!(
        anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        find(&node_port, "PodDisruptionBudget", "tether-hub")["spec"]["maxUnavailable"],
        1
    );
    let rules = find(&node_port, "Role", "tether-hub")["rules"].clone();
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["apiGroups"][0] == "coordination.k8s.io"
                && r["verbs"] == json!(["get", "list", "watch", "create", "update"])),
        "{rules}"
    );
    // API access with two replicas: each tells the others where its endpoint is.
    let api = template(
        "tether-hub",
        "tether-hub",
        "istio-system",
        &["--set", "apiAccess.enabled=true"],
    );
    let hub = find(&api, "Deployment", "tether-hub");
    assert_eq!(hub["spec"]["replicas"], 2);
    let container = &hub["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--api-peer-url=https://$(POD_IP):15443")),
        "{container}"
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_IP"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"),
        "{container}"
    );

    // The agent's mirror namespace: its flag and its Role, apart from the release namespace.
    let agent = template(
        "tether-agent",
        "tether-agent",
        "tether",
        &[
            "--set",
            "cluster=remote-1",
            "--set",
            "hub.address=hub:15012",
            "--set",
            "mirrorNamespace=mesh-system",
        ],
    );
    let role = find(&agent, "Role", "tether-agent");
    assert_eq!(role["metadata"]["namespace"], "mesh-system");
    assert_eq!(
        find(&agent, "RoleBinding", "tether-agent")["metadata"]["namespace"],
        "mesh-system"
    );
    let deploy = find(&agent, "Deployment", "tether-agent");
    assert_eq!(deploy["metadata"]["namespace"], "tether");
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--namespace=mesh-system"),
        "{args}"
    );

    // The CRD's short name is not ReplicationController's `rc`; `kubectl explain` has text.
    let crd: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart("tether-hub").join("crds/remoteclusters.tether.io.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["trc"]));
    assert_eq!(crd["spec"]["names"]["categories"], json!(["tether"]));
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for part in ["spec", "status"] {
        let text = schema["properties"][part]["description"]
            .as_str()
            .unwrap_or("");
        assert!(text.len() > 40, "{part} has no description: {text:?}");
    }
}

/// A kubeconfig for a ServiceAccount: a real token from the API server's TokenRequest.
async fn service_account_kubeconfig(mesh: &Mesh, cluster: &str, sa: &str) -> std::path::PathBuf {
    let c = mesh.planes.get(cluster);
    let client = c.client().await.unwrap();
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client, &mesh.ns)
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let ca = std::fs::read_to_string(c.dir.join("ca.crt")).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca);
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {b64}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
        c.server
    );
    let path = mesh.dir.join(format!("kubeconfig-sa-{cluster}"));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test]
async fn agent_with_exactly_the_chart_permissions_syncs_and_reports_a_denial() {
    let mut mesh = synced_mesh_with(|mesh| {
        // With API access on: the chart's Role for the reader's token, and the reader itself.
        let reader_ns = format!("apiAccess.reader.namespace={}", mesh.ns);
        let objects = template(
            "tether-agent",
            "tether-agent",
            &mesh.ns,
            &[
                "--set",
                "cluster=remote-1",
                "--set",
                "hub.address=unused:1",
                "--set",
                "apiAccess.enabled=true",
                "--set",
                "apiAccess.createReader=true",
                "--set",
                &reader_ns,
            ],
        );
        let client = mesh.remote("remote-1").clone();
        async move {
            apply_all(&client, &objects).await.unwrap();
        }
    })
    .await;
    // Replace remote-1's agent with one that runs as the chart's ServiceAccount.
    mesh.kill_agent("remote-1");
    let kubeconfig = service_account_kubeconfig(&mesh, "remote-1", "tether-agent").await;
    mesh.agent_kubeconfig.insert("remote-1".into(), kubeconfig);
    let reader = format!("{}/istio-reader-service-account", mesh.ns);
    mesh.agent_args(&["--api-access", "--api-reader", &reader]);
    mesh.start_agent("remote-1").unwrap();
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    // The chart's one grant for API access is enough to request the reader's token.
    eventually(
        "the reader token issued under the chart's RBAC",
        SOON,
        || async {
            let log = mesh.log("agent-remote-1");
            anyhow::ensure!(
                log.contains("reader token issued"),
                "not yet; cannot issue: {}",
                log.contains("cannot issue the reader token")
            );
            Ok(())
        },
    )
    .await;
    let writes_by_sa = mesh
        .planes
        .get("remote-1")
        .audit_writes()
        .unwrap()
        .into_iter()
        .filter(|w| {
            w.user == format!("system:serviceaccount:{}:tether-agent", mesh.ns) && w.code < 300
        })
        .count();
    assert!(writes_by_sa > 0, "the ServiceAccount did the writing");

    // Take away one permission: EndpointSlices. The next change is refused and says why.
    let roles: Api<Role> = Api::namespaced(mesh.remote("remote-1").clone(), &mesh.ns);
    let narrowed = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "tether-agent"},
        "rules": [{"apiGroups": [""], "resources": ["services", "endpoints"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]});
    roles
        .patch(
            "tether-agent",
            &PatchParams::apply("chart-test").force(),
            &Patch::Apply(&narrowed),
        )
        .await
        .unwrap();
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    let status = mesh.wait_phase("remote-1", "Degraded", SOON).await;
    let message = status["sync"]["lastNack"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("forbidden") && message.contains("endpointslices"),
        "{message}"
    );
    // The other remote, with its own permissions intact, takes the same change.
    eventually("remote-2 to take the change", SOON, || async {
        let s = mesh.status("remote-2").await?;
        anyhow::ensure!(s["phase"] == "Synced", "{s}");
        let live = mesh.live_synced("remote-2").await?;
        anyhow::ensure!(live["endpoints"] == 3, "{live}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn certs_init_and_join_then_the_generated_values_sync_a_remote() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, REMOTES).await.unwrap();
    let certs = mesh.dir.join("tether-certs");
    let (code, out, err) = mesh.hub_cli(&[
        "certs",
        "init",
        "--out-dir",
        certs.to_str().unwrap(),
        "--hub-ip",
        "127.0.0.1",
        "--hub-dns",
        "localhost",
        "--secret",
        "tether-hub-tls",
        "--namespace",
        &mesh.ns,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(certs.join("hub/secret.yaml").exists());
    let (code, _, err) = mesh.hub_cli(&["certs", "init", "--out-dir", certs.to_str().unwrap()]);
    assert_ne!(code, 0, "a second init must not replace the CA");
    assert!(err.contains("refusing to overwrite"), "{err}");

    mesh.create_istiod_service().await.unwrap();
    mesh.create_istiod_pod("istiod-a", "10.10.0.1", 15010, true)
        .await
        .unwrap();
    mesh.hub_tls_dir = certs.join("hub");
    mesh.start_hub().unwrap();

    let values = mesh.dir.join("remote-2.values.yaml");
    let (code, out, err) = mesh.hub_cli(&[
        "join",
        "remote-2",
        "--namespace",
        &mesh.ns,
        "--ca-dir",
        certs.to_str().unwrap(),
        "--hub-addr",
        &mesh.hub_addr(),
        "--trust-domain",
        tether_tests::mesh::TRUST_DOMAIN,
        "--validity",
        "1d",
        "--out",
        values.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("helm install tether-agent"),
        "join prints the next step:\n{out}"
    );
    let v: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&values).unwrap()).unwrap();
    assert!(v["tls"]["key"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(
        !std::fs::read_to_string(&values)
            .unwrap()
            .contains(&std::fs::read_to_string(certs.join("ca.key")).unwrap()),
        "the CA key never leaves"
    );

    // The values render with the agent chart...
    let objects = template(
        "tether-agent",
        "tether-agent",
        &mesh.ns,
        &["-f", values.to_str().unwrap()],
    );
    assert!(objects.iter().any(|o| o["kind"] == "Secret"));
    // ...and the agent started from them (files as the Secret volume would hold them) syncs.
    let tls = mesh.dir.join("tls-from-values");
    std::fs::create_dir_all(&tls).unwrap();
    for (file, key) in [("tls.crt", "cert"), ("tls.key", "key"), ("ca.crt", "ca")] {
        std::fs::write(tls.join(file), v["tls"][key].as_str().unwrap()).unwrap();
    }
    mesh.agent_tls_dir.insert("remote-2".into(), tls);
    mesh.start_agent("remote-2").unwrap();
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    let live = eventually("remote-2 acked", SOON, || mesh.live_synced("remote-2")).await;
    assert_eq!(live["endpoints"], 1);
}
