//! The real Istio control plane on the harness: istiod (`pilot-discovery`, built from the Istio Go
//! module pinned in `tests/istio/go.mod`) as a process in its own network namespace, so that its
//! pod IP is a real address that EndpointSlices may hold; and a remote workload's two clients.
//!
//! ```text
//!  tests/istio/build.sh ─► target/istio/<version>/{pilot-discovery, xdsclient, csrclient, crd-all.gen.yaml}
//!  Istiod::start(mesh, "istiod-a", "default")
//!     netns 198.18.x.2 ── bridges ──► 127.0.0.1:<central>, <remotes> (the host's API servers)
//!     pilot-discovery discovery --kubeconfig central (EXTERNAL_ISTIOD, CLUSTER_ID=central), cwd its folder
//!     central Pod istiod-a: podIP 198.18.x.2, Ready (as a kubelet would), labels app=istiod, istio.io/rev
//!  Workload::xds / Workload::csr: a remote workload's sidecar: finds istiod through its own cluster's
//!     istiod Service (the EndpointSlices the agent wrote), TLS with the mesh root, SA token (istio-ca)
//! ```

use crate::controlplane::repo_root;
use crate::mesh::Mesh;
use crate::netns::Netns;
use crate::procs::Proc;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The istiod ports, as in its Deployment (each istiod has its own network namespace).
pub const XDS_PLAINTEXT: u16 = 15010;
pub const XDS_SECURE: u16 = 15012;
pub const MONITORING: u16 = 15014;
pub const WEBHOOK: u16 = 15017;
pub const HTTP: u16 = 8080;

/// Folder holding pilot-discovery, xdsclient, csrclient and crd-all.gen.yaml (`TETHER_ISTIO_DIR`
/// overrides; otherwise `tests/istio/build.sh`, which returns at once when they are cached).
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("tests/istio/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed; is Go (1.26+) installed and the Go module proxy reachable?",
            script.display()
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
    })
}

/// Installs the Istio CRDs in `client`'s cluster (once per test binary).
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_try_init(|| async {
            use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
            let text = std::fs::read_to_string(binaries().join("crd-all.gen.yaml"))?;
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc)?;
                if v.is_null() {
                    continue;
                }
                let crd: CustomResourceDefinition = serde_json::from_value(v)?;
                let name = crd.metadata.name.clone().unwrap_or_default();
                api.patch(&name, &PatchParams::apply("tether-tests").force(), &Patch::Apply(&crd))
                    .await
                    .with_context(|| format!("installing CRD {name}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map(|_| ())
}

/// One istiod: a process in its own network namespace, and its central Pod.
pub struct Istiod {
    pub name: String,
    pub revision: String,
    /// Its pod IP (inside its namespace).
    pub ip: std::net::Ipv4Addr,
    pub dir: PathBuf,
    /// Dropped before the namespace (declaration order).
    proc: Option<Proc>,
    netns: Netns,
}

impl Istiod {
    /// The central istiod Service of `revision` (`istiod` for "default", else `istiod-<revision>`),
    /// as Istio's chart makes it: grpc-xds 15010, https-dns 15012, https-webhook 443 -> 15017,
    /// http-monitoring 15014.
    pub async fn create_service(mesh: &Mesh, revision: &str) -> anyhow::Result<()> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": service_name(revision), "labels": {"app": "istiod", "istio.io/rev": revision}},
            "spec": {"selector": {"app": "istiod", "istio.io/rev": revision}, "ports": [
                {"name": "grpc-xds", "port": XDS_PLAINTEXT, "protocol": "TCP"},
                {"name": "https-dns", "port": XDS_SECURE, "protocol": "TCP"},
                {"name": "https-webhook", "port": 443, "targetPort": WEBHOOK, "protocol": "TCP"},
                {"name": "http-monitoring", "port": MONITORING, "protocol": "TCP"},
            ]}
        }))?;
        match Api::<Service>::namespaced(mesh.central.clone(), &mesh.ns)
            .create(&PostParams::default(), &svc)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts istiod `name` of `revision` against the mesh's central cluster, in a namespace of its
    /// own that reaches the host's API servers (`remotes` too, for remote secrets that name them),
    /// waits until it is ready, then creates its Pod, running and Ready, with its address.
    pub async fn start(
        mesh: &Mesh,
        name: &str,
        revision: &str,
        remotes: &[&str],
    ) -> anyhow::Result<Self> {
        let mut ports = Vec::new();
        for cluster in remotes {
            ports.push(port_of(&mesh.planes.get(cluster).server)?);
        }
        Self::start_reaching(mesh, name, revision, &ports).await
    }

    /// As [`Istiod::start`], reaching the central API server and only the host's loopback `ports`
    /// besides (the hub's API endpoint, say): no remote API server unless its port is listed.
    pub async fn start_reaching(
        mesh: &Mesh,
        name: &str,
        revision: &str,
        ports: &[u16],
    ) -> anyhow::Result<Self> {
        install_crds(&mesh.central).await?;
        let mut netns = Netns::create()?;
        netns.bridge_loopback(port_of(&mesh.planes.get("central").server)?)?;
        for port in ports {
            netns.bridge_loopback(*port)?;
        }
        let dir = mesh.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        write_mesh_ca(&dir.join("etc/cacerts"))?;
        let log = std::fs::File::create(dir.join("istiod.log"))?;
        let mut cmd = Command::new(binaries().join("pilot-discovery"));
        cmd.arg("discovery")
            .arg("--kubeconfig")
            .arg(mesh.planes.get("central").kubeconfig())
            .args(["--httpAddr", &format!(":{HTTP}")])
            .args(["--grpcAddr", &format!(":{XDS_PLAINTEXT}")])
            .args(["--secureGRPCAddr", &format!(":{XDS_SECURE}")])
            .args(["--monitoringAddr", &format!(":{MONITORING}")])
            .args(["--httpsAddr", &format!(":{WEBHOOK}")])
            .args([
                "--ctrlz_address",
                "127.0.0.1",
                "--log_output_level",
                "default:info",
            ])
            .current_dir(&dir)
            .env("POD_NAMESPACE", &mesh.ns)
            .env("POD_NAME", name)
            .env("REVISION", revision)
            .env("CLUSTER_ID", "central")
            // Write istio-ca-root-cert into remotes it reads (the primary-remote set-up).
            .env("EXTERNAL_ISTIOD", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = netns.spawn(cmd)?;
        let mut istiod = Self {
            name: name.into(),
            revision: revision.into(),
            ip: netns.ip,
            dir,
            proc: Some(proc),
            netns,
        };
        let started = Instant::now();
        istiod.wait_ready(Duration::from_secs(60)).await?;
        eprintln!(
            "istiod {name} ({}) ready in {:.2} s",
            istiod.ip,
            started.elapsed().as_secs_f64()
        );
        let pod = crate::pods::mk_pod(
            name,
            &[("app", "istiod"), ("istio.io/rev", revision)],
            &[
                ("grpc-xds", XDS_PLAINTEXT as i32),
                ("https-dns", XDS_SECURE as i32),
            ],
        );
        let ip = istiod.ip.to_string();
        crate::pods::create_running_pod(&mesh.central_pods(), &pod, &[&ip], true).await?;
        Ok(istiod)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get(HTTP, "/ready").await {
                return Ok(());
            }
            if let Some(p) = &mut self.proc
                && !p.is_running()
            {
                bail!("istiod {} exited:\n{}", self.name, self.log_tail(30));
            }
            if Instant::now() > deadline {
                bail!(
                    "istiod {} not ready after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET http://127.0.0.1:<port><path>` from inside istiod's namespace (as its own pod would;
    /// istiod serves its debug pages unauthenticated only there): (status, body).
    pub async fn get(&self, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fetch = async {
            let mut conn = self.netns.connect_loopback(port).await?;
            conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: istiod\r\n\r\n").as_bytes())
                .await?;
            let mut raw = Vec::new();
            conn.read_to_end(&mut raw).await?;
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Ok::<_, anyhow::Error>((code, body.to_string()))
        };
        tokio::time::timeout(Duration::from_secs(5), fetch).await?
    }

    /// istiod's `/debug/<what>` (on the monitoring port) as JSON.
    pub async fn debug(&self, what: &str) -> anyhow::Result<Value> {
        let (code, body) = self.get(MONITORING, &format!("/debug/{what}")).await?;
        anyhow::ensure!(code == 200, "/debug/{what}: {code} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The clusters istiod has, with their sync status (`/debug/clusterz`).
    pub async fn clusters(&self) -> anyhow::Result<Vec<(String, String)>> {
        let v = self.debug("clusterz").await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["syncStatus"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Ok once istiod lists every one of `clusters` as synced; else what it lists.
    pub async fn synced(&self, clusters: &[&str]) -> anyhow::Result<()> {
        let have = self.clusters().await?;
        anyhow::ensure!(
            clusters
                .iter()
                .all(|c| have.contains(&(c.to_string(), "synced".to_string()))),
            "{have:?}"
        );
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("istiod.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 5 s (istiod can hang on SIGTERM once its API server is gone).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} istiod.log (last 30 lines) ----", self.name);
            eprintln!("{}", self.log_tail(30));
        }
        self.stop();
    }
}

/// One mesh CA for every istiod of this test binary, plugged in as Istio's `cacerts` files (istiod
/// reads `./etc/cacerts` from its working directory). Every istiod that reads remote-1 writes its root
/// certificate into each of remote-1's namespaces (`istio-ca-root-cert`); with a CA of its own each,
/// concurrent tests' istiods would overwrite each other's roots and a workload would verify one
/// istiod against another's root.
fn write_mesh_ca(dir: &Path) -> anyhow::Result<()> {
    static CA: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (cert, key) = CA.get_or_init(|| {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a CA certificate");
        (cert.pem(), key.serialize_pem())
    });
    std::fs::create_dir_all(dir)?;
    for (file, text) in [
        ("ca-cert.pem", cert),
        ("ca-key.pem", key),
        ("root-cert.pem", cert),
        ("cert-chain.pem", cert),
    ] {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(())
}

/// What Istio's own chart puts in a remote for an istiod at `address` (the `remote` profile:
/// `istiodRemote.enabled` with `global.remotePilotAddress`): its Service and its EndpointSlice,
/// rendered by helm from the chart of the pinned Istio module.
pub fn remote_profile(address: &str, revision: &str) -> (Value, Value) {
    let chart = binaries().join("istio-discovery");
    let rev = if revision == "default" { "" } else { revision };
    let (ok, out) = crate::charts::run_helm(&[
        "template",
        "istiod",
        chart.to_str().expect("utf-8 path"),
        "--set",
        "istiodRemote.enabled=true",
        "--set",
        &format!("global.remotePilotAddress={address}"),
        "--set",
        &format!("revision={rev}"),
    ]);
    assert!(ok, "helm template of the istiod chart failed:\n{out}");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    let name = service_name(revision);
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
    };
    (find("Service"), find("EndpointSlice"))
}

/// The Service name of a revision's istiod.
pub fn service_name(revision: &str) -> String {
    if revision == "default" {
        "istiod".into()
    } else {
        format!("istiod-{revision}")
    }
}

fn port_of(server: &str) -> anyhow::Result<u16> {
    server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {server}"))
}

/// Makes `cluster` readable by istiod the way Istio's remote install does (the reader
/// ServiceAccount and its ClusterRole in the remote) and marks the mesh namespace there as
/// controlled by the central cluster (so istiod writes the root certificate into it).
pub async fn prepare_remote(mesh: &Mesh, cluster: &str) -> anyhow::Result<()> {
    let client = mesh.remote(cluster);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": mesh.ns,
        "annotations": {"topology.istio.io/controlPlaneClusters": "central"}}});
    Api::<Namespace>::all(client.clone())
        .patch(
            &mesh.ns,
            &PatchParams::apply("tether-tests"),
            &Patch::Apply(&ns),
        )
        .await?;
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "istio-reader-service-account", "namespace": mesh.ns}});
    Api::<ServiceAccount>::namespaced(client.clone(), &mesh.ns)
        .patch(
            "istio-reader-service-account",
            &PatchParams::apply("tether-tests"),
            &Patch::Apply(&sa),
        )
        .await?;
    let role = format!("istio-reader-{}", mesh.ns);
    let rules = json!([
        {"apiGroups": ["config.istio.io", "security.istio.io", "networking.istio.io", "authentication.istio.io",
                       "rbac.istio.io", "telemetry.istio.io", "extensions.istio.io"],
         "resources": ["*"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["endpoints", "pods", "services", "nodes", "replicationcontrollers",
                                          "namespaces", "secrets", "configmaps"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "list", "watch", "update"]},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations",
                       "validatingwebhookconfigurations"], "verbs": ["get", "list", "watch", "update", "patch"]},
    ]);
    crate::charts::apply_all(
        client,
        &[
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": role}, "rules": rules}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": role},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                   "subjects": [{"kind": "ServiceAccount", "name": "istio-reader-service-account", "namespace": mesh.ns}]}),
        ],
    )
    .await?;
    Ok(())
}

/// Hub and agent arguments for API access (started after this): the hub serves istiod's endpoint on
/// a free loopback port and writes remote secrets into the test's namespace; agents forward as the
/// namespace's `istio-reader-service-account` (see [`prepare_remote`]). Returns the endpoint's port.
pub fn api_access_args(mesh: &mut Mesh, hub: &[&str], agent: &[&str]) -> u16 {
    let port = crate::controlplane::free_port();
    let api = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--api-addr".to_string(),
        api.clone(),
        "--api-advertise".into(),
        format!("https://{api}"),
        "--istio-namespace".into(),
        mesh.ns.clone(),
    ];
    args.extend(hub.iter().map(|s| s.to_string()));
    mesh.hub_args = args;
    let reader = format!("{}/istio-reader-service-account", mesh.ns);
    let mut args = vec!["--api-access", "--api-reader", &reader];
    args.extend_from_slice(agent);
    mesh.agent_args(&args);
    port
}

/// A token for `namespace/account` on `cluster` (TokenRequest), for `audience`.
pub async fn token(
    mesh: &Mesh,
    cluster: &str,
    namespace: &str,
    account: &str,
    audience: &str,
) -> anyhow::Result<String> {
    let api = Api::<ServiceAccount>::namespaced(mesh.remote(cluster).clone(), namespace);
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}});
    api.patch(
        account,
        &PatchParams::apply("tether-tests"),
        &Patch::Apply(&sa),
    )
    .await?;
    let req: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(
        json!({"spec": {"audiences": [audience], "expirationSeconds": 3600}}),
    )?;
    let tr = api
        .create_token_request(account, &PostParams::default(), &req)
        .await?;
    Ok(tr.status.map(|s| s.token).unwrap_or_default())
}

/// The remote secret `istioctl create-remote-secret` would make for `cluster`: a kubeconfig with the
/// reader ServiceAccount's token and the remote API server's address and CA, in the central cluster.
pub async fn create_remote_secret(mesh: &Mesh, cluster: &str) -> anyhow::Result<()> {
    let token = token(
        mesh,
        cluster,
        &mesh.ns,
        "istio-reader-service-account",
        "https://kubernetes.default.svc.cluster.local",
    )
    .await?;
    let plane = mesh.planes.get(cluster);
    let ca = std::fs::read(plane.dir.join("ca.crt"))?;
    use base64::Engine;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
         users:\n- name: {cluster}\n  user:\n    token: {token}\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {cluster}\n\
         current-context: {cluster}\n",
        plane.server,
        base64::engine::general_purpose::STANDARD.encode(ca)
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("istio-remote-secret-{cluster}"), "namespace": mesh.ns,
                     "labels": {"istio/multiCluster": "true"},
                     "annotations": {"networking.istio.io/cluster": cluster}},
        "stringData": {cluster: kubeconfig}});
    crate::charts::apply_all(&mesh.central, &[secret]).await?;
    Ok(())
}

/// A workload on a remote cluster: its namespace and ServiceAccount there.
pub struct Workload {
    /// Its cluster: where its ServiceAccount, token and istiod Service live.
    pub cluster: String,
    /// The ClusterID it tells istiod (its cluster's name, unless a test claims another).
    pub cluster_id: String,
    pub namespace: String,
    pub account: String,
    /// The istiod Service it looks up in its cluster (in the mesh namespace).
    pub istiod_service: String,
}

impl Workload {
    async fn run(&self, mesh: &Mesh, client: &str, extra: &[&str], token: &Path) -> Value {
        let kubeconfig = mesh.planes.get(&self.cluster).kubeconfig();
        let out = tokio::process::Command::new(binaries().join(client))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--cluster", &self.cluster_id])
            .args(["--istiod-namespace", &mesh.ns])
            .args(["--istiod-service", &self.istiod_service])
            .args(["--namespace", &self.namespace])
            .args(["--service-account", &self.account])
            .arg("--token")
            .arg(token)
            .args(extra)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run a workload client");
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim()).unwrap_or_else(|_| {
            json!({"error": format!("{client}: {line} {}", String::from_utf8_lossy(&out.stderr))})
        })
    }

    async fn token_file(&self, mesh: &Mesh) -> anyhow::Result<PathBuf> {
        let token = token(
            mesh,
            &self.cluster,
            &self.namespace,
            &self.account,
            "istio-ca",
        )
        .await?;
        let path = mesh
            .dir
            .join(format!("token-{}-{}", self.cluster, self.account));
        std::fs::write(&path, token)?;
        Ok(path)
    }

    /// Asks istiod for its configuration (and the endpoints of `eds`, if given), as its sidecar
    /// would. The JSON answer: `address` dialled, `clusters`, `endpoints`; or `error`.
    pub async fn xds(&self, mesh: &Mesh, eds: Option<&str>) -> anyhow::Result<Value> {
        let token = self.token_file(mesh).await?;
        let extra: Vec<&str> = eds.map(|e| vec!["--eds", e]).unwrap_or_default();
        Ok(self.run(mesh, "xdsclient", &extra, &token).await)
    }

    /// Asks istiod's CA for a workload certificate. The JSON answer: `address`, `uris`, `issuer`,
    /// `chain`; or `error`.
    pub async fn csr(&self, mesh: &Mesh) -> anyhow::Result<Value> {
        let token = self.token_file(mesh).await?;
        Ok(self.run(mesh, "csrclient", &[], &token).await)
    }
}
