//! A whole Tether deployment on the harness, for end-to-end tests: the hub and one agent per remote as
//! real processes with real mTLS, a fresh namespace per test, and write counting per agent.
//!
//! The test's namespace name is used for everything: RemoteClusters and istiod pods in the central
//! cluster, and the mirrors in each remote, so tests sharing control planes never see each other.

use crate::controlplane::{free_port, repo_root, run_dir};
use crate::pki::Ca;
use crate::procs::{Proc, spawn};
use crate::{ControlPlanes, eventually, unique_name};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const TRUST_DOMAIN: &str = "tether.test";

/// `target/<profile>/`, where cargo put the hub and agent binaries (built once per test binary).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let exe = std::env::current_exe().expect("current exe");
        let release = exe.components().any(|c| c.as_os_str() == "release");
        let status = Command::new(cargo)
            .current_dir(repo_root())
            // The same set as `make build`, so both share one compile of the dependencies; release
            // binaries for a release build (the benchmarks).
            .args(["build", "--workspace", "--bins"])
            .args(release.then_some("--release"))
            .status()
            .expect("running cargo build for the hub and agent binaries");
        assert!(
            status.success(),
            "building tether-hub and tether-agent failed"
        );
        // target/<profile>/deps/<test-binary>, or target/<profile>/<binary> for the demo.
        let dir = exe.parent().expect("exe has a folder");
        let dir = if dir.ends_with("deps") {
            dir.parent().expect("target/<profile>")
        } else {
            dir
        };
        dir.to_path_buf()
    })
}

/// The RemoteCluster API.
pub fn remote_cluster_resource() -> ApiResource {
    ApiResource {
        group: "tether.io".into(),
        version: "v1alpha1".into(),
        api_version: "tether.io/v1alpha1".into(),
        kind: "RemoteCluster".into(),
        plural: "remoteclusters".into(),
    }
}

pub struct Mesh {
    pub planes: &'static ControlPlanes,
    /// The test's namespace (central and remotes alike).
    pub ns: String,
    pub dir: PathBuf,
    pub ca: Ca,
    pub hub_port: u16,
    /// Admin HTTP port of the hub; of each agent in `agent_admin_ports`.
    pub hub_admin_port: u16,
    pub agent_admin_ports: HashMap<String, u16>,
    pub central: Client,
    pub remotes: HashMap<String, Client>,
    hub: Option<Proc>,
    /// Hub replicas started with [`Mesh::start_replica`], by replica id, with their log's name and
    /// admin port.
    replicas: HashMap<String, (Proc, String, u16)>,
    agents: HashMap<String, Proc>,
    /// Extra arguments for the next hub start.
    pub hub_args: Vec<String>,
    /// The hub's TLS folder (tls.crt, tls.key, ca.crt); default `<dir>/hub-tls`.
    pub hub_tls_dir: PathBuf,
    /// Per-cluster overrides for the next agent start: its kubeconfig and its TLS folder.
    pub agent_kubeconfig: HashMap<String, PathBuf>,
    pub agent_tls_dir: HashMap<String, PathBuf>,
    /// Where an agent dials instead of the hub (a proxy).
    pub agent_hub_addr: HashMap<String, String>,
    /// Short keepalives, backoff and status interval so tests see effects in seconds. Benchmarks
    /// turn this off to run with the production defaults.
    pub test_timing: bool,
    /// `TETHER_LOG` for the hub and agents.
    pub log_filter: Option<String>,
    extra_agent_args: Vec<String>,
}

impl Mesh {
    /// Fresh namespace everywhere, the CRD installed, certificates written; nothing started yet.
    pub async fn new(planes: &'static ControlPlanes, remotes: &[&str]) -> anyhow::Result<Self> {
        Self::with_namespace(planes, remotes, &unique_name("e2e")).await
    }

    /// As [`Mesh::new`], in the namespace `ns` (created where missing).
    pub async fn with_namespace(
        planes: &'static ControlPlanes,
        remotes: &[&str],
        ns: &str,
    ) -> anyhow::Result<Self> {
        let ns = ns.to_string();
        let dir = run_dir().join(&ns);
        std::fs::create_dir_all(&dir)?;
        let central = planes.get("central").client().await?;
        install_crd(&central).await?;
        create_namespace(&central, &ns).await?;
        let mut remote_clients = HashMap::new();
        for r in remotes {
            let client = planes.get(r).client().await?;
            create_namespace(&client, &ns).await?;
            remote_clients.insert(r.to_string(), client);
        }
        let ca = Ca::new("tether-hub-ca")?;
        ca.write_tls_dir(&dir.join("hub-tls"), &ca.server("tether-hub", &[])?)?;
        let mesh = Self {
            planes,
            ns,
            dir: dir.clone(),
            ca,
            hub_port: free_port(),
            hub_admin_port: free_port(),
            agent_admin_ports: remotes
                .iter()
                .map(|r| (r.to_string(), free_port()))
                .collect(),
            central,
            remotes: remote_clients,
            hub: None,
            replicas: HashMap::new(),
            agents: HashMap::new(),
            hub_args: Vec::new(),
            hub_tls_dir: dir.join("hub-tls"),
            agent_kubeconfig: HashMap::new(),
            agent_tls_dir: HashMap::new(),
            agent_hub_addr: HashMap::new(),
            test_timing: true,
            log_filter: None,
            extra_agent_args: Vec::new(),
        };
        for r in remotes {
            mesh.write_agent_cert(r, r, false)?;
        }
        Ok(mesh)
    }

    pub fn hub_addr(&self) -> String {
        format!("127.0.0.1:{}", self.hub_port)
    }

    /// Writes a client certificate for `cluster` into the TLS folder `tls-<dir_name>`.
    pub fn write_agent_cert(
        &self,
        dir_name: &str,
        cluster: &str,
        expired: bool,
    ) -> anyhow::Result<PathBuf> {
        let uri = format!("spiffe://{TRUST_DOMAIN}/cluster/{cluster}");
        let cert = self
            .ca
            .client_with_uris(&format!("agent-{cluster}"), &[&uri], expired)?;
        let dir = self.dir.join(format!("tls-{dir_name}"));
        self.ca.write_tls_dir(&dir, &cert)?;
        Ok(dir)
    }

    pub fn remote(&self, name: &str) -> &Client {
        &self.remotes[name]
    }

    /// The agent's API user on `cluster` (what the audit log records its writes under).
    pub fn agent_user(&self, cluster: &str) -> String {
        format!("tether-agent-{}-{cluster}", self.ns)
    }

    pub fn start_hub(&mut self) -> anyhow::Result<()> {
        let cmd = self.hub_command(
            &self.hub_addr(),
            self.hub_admin_port,
            self.planes.get("central").kubeconfig(),
            "hub.log",
        )?;
        self.hub = Some(spawn(cmd)?);
        Ok(())
    }

    /// One more hub replica, `id`, serving gRPC on `grpc_port` and admin on `admin_port`, talking to
    /// the central API server as user `user` (its own, so the audit log tells replicas apart); log
    /// `hub-<user>.log`. Stopped with the mesh, or by [`Mesh::kill_replica`].
    pub fn start_replica(
        &mut self,
        id: &str,
        user: &str,
        grpc_port: u16,
        admin_port: u16,
    ) -> anyhow::Result<()> {
        self.start_replica_with(id, user, grpc_port, admin_port, &[])
    }

    /// As [`Mesh::start_replica`], with arguments of this replica's own (its API address, say).
    pub fn start_replica_with(
        &mut self,
        id: &str,
        user: &str,
        grpc_port: u16,
        admin_port: u16,
        own: &[String],
    ) -> anyhow::Result<()> {
        let kubeconfig = self
            .planes
            .get("central")
            .user_kubeconfig(user, Some("system:masters"))?;
        let mut cmd = self.hub_command(
            &format!("127.0.0.1:{grpc_port}"),
            admin_port,
            &kubeconfig,
            &format!("hub-{user}.log"),
        )?;
        cmd.args(["--replica-id", id]).args(own);
        self.replicas.insert(
            id.to_string(),
            (spawn(cmd)?, format!("hub-{user}"), admin_port),
        );
        Ok(())
    }

    pub fn replica_pid(&self, id: &str) -> Option<u32> {
        self.replicas.get(id).and_then(|(p, ..)| p.id())
    }

    /// SIGKILL of replica `id`, as a crash would.
    pub fn kill_replica(&mut self, id: &str) {
        if let Some((mut p, ..)) = self.replicas.remove(id) {
            p.kill();
        }
    }

    /// SIGTERM of replica `id`, as a rolling update would; waits up to `grace` for it to exit.
    pub fn stop_replica(&mut self, id: &str, grace: Duration) {
        if let Some((mut p, ..)) = self.replicas.remove(id) {
            p.terminate(grace);
        }
    }

    fn hub_command(
        &self,
        grpc_addr: &str,
        admin_port: u16,
        kubeconfig: &Path,
        log_name: &str,
    ) -> anyhow::Result<Command> {
        let path = self.dir.join(log_name);
        // A restarted hub starts a fresh log (tests read what the running hub said); the earlier
        // run's log stays beside it as `<name>.1`, `<name>.2`, ... in the order they ran.
        if path.exists() {
            let kept = (1..)
                .map(|n| self.dir.join(format!("{log_name}.{n}")))
                .find(|p| !p.exists())
                .expect("a free name");
            std::fs::rename(&path, kept)?;
        }
        let log = std::fs::File::create(&path)?;
        let mut cmd = Command::new(bin_dir().join("tether-hub"));
        cmd.arg("serve")
            .args(["--namespace", &self.ns])
            .args(["--grpc-addr", grpc_addr])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .arg("--tls-dir")
            .arg(&self.hub_tls_dir)
            .args(["--trust-domain", TRUST_DOMAIN]);
        if self.test_timing {
            cmd.args(["--keepalive-interval", "1s", "--keepalive-timeout", "2s"])
                .args(["--status-interval", "100ms", "--status-refresh", "100ms"])
                .args(["--lease-duration", "3s", "--disconnect-grace", "1s"]);
            if !self.hub_args.iter().any(|a| a == "--retire-timeout") {
                cmd.args(["--retire-timeout", "20s"]);
            }
        }
        cmd.args(&self.hub_args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "TETHER_LOG",
                self.log_filter
                    .as_deref()
                    .unwrap_or("info,tether_hub=debug"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    pub fn hub_pid(&self) -> Option<u32> {
        self.hub.as_ref().and_then(|p| p.id())
    }

    pub fn agent_pid(&self, cluster: &str) -> Option<u32> {
        self.agents.get(cluster).and_then(|p| p.id())
    }

    /// SIGKILL, as a crash would.
    pub fn kill_hub(&mut self) {
        if let Some(mut p) = self.hub.take() {
            p.kill();
        }
    }

    pub fn start_agent(&mut self, cluster: &str) -> anyhow::Result<()> {
        self.start_agent_with(cluster, cluster, cluster)
    }

    /// Starts an agent on `cluster` claiming to be `claims` with the certificate folder `tls-<tls>`.
    pub fn start_agent_with(
        &mut self,
        cluster: &str,
        claims: &str,
        tls: &str,
    ) -> anyhow::Result<()> {
        self.spawn_agent(cluster, cluster, claims, tls)
    }

    /// Starts a second agent on `cluster` with the same identity and certificate as the first (a
    /// misconfiguration the hub must make visible), under its own API user, process key and log
    /// (`agent-<key>.log`).
    pub fn start_twin_agent(&mut self, cluster: &str, key: &str) -> anyhow::Result<()> {
        let kubeconfig = self
            .planes
            .get(cluster)
            .user_kubeconfig(&self.twin_user(key), Some("system:masters"))?;
        self.agent_kubeconfig
            .insert(key.to_string(), kubeconfig.clone());
        self.spawn_agent(key, cluster, cluster, cluster)
    }

    /// The API user of a twin agent started with [`Mesh::start_twin_agent`].
    pub fn twin_user(&self, key: &str) -> String {
        format!("tether-agent-{}-{key}", self.ns)
    }

    /// Extra arguments for agents started from now on.
    pub fn agent_args(&mut self, args: &[&str]) {
        self.extra_agent_args = args.iter().map(|a| a.to_string()).collect();
    }

    fn spawn_agent(
        &mut self,
        key: &str,
        cluster: &str,
        claims: &str,
        tls: &str,
    ) -> anyhow::Result<()> {
        let kubeconfig = match self.agent_kubeconfig.get(key) {
            Some(path) => path.clone(),
            None => self
                .planes
                .get(cluster)
                .user_kubeconfig(&self.agent_user(cluster), Some("system:masters"))?,
        };
        let tls_dir = self
            .agent_tls_dir
            .get(cluster)
            .cloned()
            .unwrap_or_else(|| self.dir.join(format!("tls-{tls}")));
        // Appended: a restarted agent's log follows the previous one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("agent-{key}.log")))?;
        let mut cmd = Command::new(bin_dir().join("tether-agent"));
        cmd.args(["--cluster", claims])
            .args([
                "--hub-addr",
                self.agent_hub_addr.get(cluster).unwrap_or(&self.hub_addr()),
            ])
            .args([
                "--admin-addr",
                &format!(
                    "127.0.0.1:{}",
                    self.agent_admin_ports
                        .get(key)
                        .copied()
                        .unwrap_or_else(free_port)
                ),
            ])
            .arg("--tls-dir")
            .arg(tls_dir)
            .args(["--namespace", &self.ns])
            // Tests share remote clusters: one field manager per test keeps their agents apart.
            .args(["--field-manager", &format!("tether-agent-{}", self.ns)]);
        if self.test_timing {
            cmd.args(["--keepalive-interval", "1s", "--keepalive-timeout", "2s"])
                .args(["--backoff-initial", "100ms", "--backoff-max", "1s"]);
        }
        cmd.args(&self.extra_agent_args);
        cmd.env("KUBECONFIG", kubeconfig)
            .env(
                "TETHER_LOG",
                self.log_filter
                    .as_deref()
                    .unwrap_or("info,tether_agent=debug"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.agents.insert(key.to_string(), spawn(cmd)?);
        Ok(())
    }

    pub fn kill_agent(&mut self, cluster: &str) {
        if let Some(mut p) = self.agents.remove(cluster) {
            p.kill();
        }
    }

    /// The sum of metric `name` on the admin port `port` (see [`crate::metric`]); 0 when the page
    /// cannot be read.
    pub async fn admin_metric(port: u16, name: &str) -> f64 {
        match Self::admin_get(port, "/metrics").await {
            Ok((_, text)) => crate::metric(&text, name),
            Err(_) => 0.0,
        }
    }

    /// `GET http://127.0.0.1:<port><path>` on an admin server: (status code, body).
    pub async fn admin_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no HTTP header end"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line"))?;
        Ok((code, body.to_string()))
    }

    /// Runs `tether-hub <args>` against the central cluster; (exit code, stdout, stderr).
    pub fn hub_cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin_dir().join("tether-hub"))
            .args(args)
            .env("KUBECONFIG", self.planes.get("central").kubeconfig())
            .output()
            .expect("run tether-hub");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Passes every RemoteCluster added or modified after `version` ("0": all of them first) to
    /// `seen`, until the task is aborted; a watch that ends is started again where it stopped.
    pub fn watch_remote_clusters(
        &self,
        mut version: String,
        mut seen: impl FnMut(DynamicObject) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        use futures::StreamExt;
        use kube::api::{WatchEvent, WatchParams};
        let api = self.remote_clusters();
        tokio::spawn(async move {
            loop {
                if let Ok(events) = api.watch(&WatchParams::default(), &version).await {
                    let mut events = Box::pin(events);
                    while let Some(Ok(event)) = events.next().await {
                        if let WatchEvent::Added(rc) | WatchEvent::Modified(rc) = event {
                            version = rc.metadata.resource_version.clone().unwrap_or(version);
                            seen(rc);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    pub fn remote_clusters(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.central.clone(), &self.ns, &remote_cluster_resource())
    }

    pub async fn create_remote_cluster(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        let body = json!({"apiVersion": "tether.io/v1alpha1", "kind": "RemoteCluster",
            "metadata": {"name": name}, "spec": spec});
        self.remote_clusters()
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&body),
            )
            .await?;
        Ok(())
    }

    pub async fn status(&self, name: &str) -> anyhow::Result<Value> {
        let rc = self.remote_clusters().get(name).await?;
        Ok(rc.data.get("status").cloned().unwrap_or(Value::Null))
    }

    /// The hub's live view of remote `name` (`/streams`: desired and acked versions, endpoints), from
    /// whichever running hub or replica holds its agent's stream.
    pub async fn live(&self, name: &str) -> anyhow::Result<Value> {
        let mut ports: Vec<u16> = self.replicas.values().map(|(.., port)| *port).collect();
        if self.hub.is_some() {
            ports.push(self.hub_admin_port);
        }
        for port in ports {
            let Ok((200, body)) = Self::admin_get(port, "/streams").await else {
                continue;
            };
            let all: Value = serde_json::from_str(&body)?;
            if all[name]["streams"].as_u64().is_some_and(|n| n > 0) {
                return Ok(all[name].clone());
            }
        }
        anyhow::bail!("no running hub holds a stream of {name}")
    }

    /// The live view of `name` when its agent acknowledged the hub's desired state (else an error).
    pub async fn live_synced(&self, name: &str) -> anyhow::Result<Value> {
        let live = self.live(name).await?;
        let desired = live["desiredVersion"].as_str().unwrap_or_default();
        anyhow::ensure!(
            !desired.is_empty() && live["ackedVersion"] == desired,
            "{name} not acked: {live}"
        );
        Ok(live)
    }

    /// Waits until `name` reports `phase`; returns the status.
    pub async fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> Value {
        eventually(
            &format!("RemoteCluster {name} phase {phase}"),
            timeout,
            || async {
                let status = self.status(name).await?;
                anyhow::ensure!(status["phase"] == phase, "status now {status}");
                Ok(status)
            },
        )
        .await
    }

    pub fn central_pods(&self) -> Api<Pod> {
        Api::namespaced(self.central.clone(), &self.ns)
    }

    /// The usual central control plane: Service `istiod` and two ready pods, istiod-a (10.10.0.1) and
    /// istiod-b (10.10.0.2), on 15010.
    pub async fn create_istiod(&self) -> anyhow::Result<()> {
        self.create_istiod_service().await?;
        self.create_istiod_pod("istiod-a", "10.10.0.1", 15010, true)
            .await?;
        self.create_istiod_pod("istiod-b", "10.10.0.2", 15010, true)
            .await
    }

    /// The central `istiod` Service: grpc-xds 15010 -> named port `grpc-xds`, https-webhook 443 -> 15017.
    pub async fn create_istiod_service(&self) -> anyhow::Result<()> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "istiod"},
            "spec": {"selector": {"app": "istiod"}, "ports": [
                {"name": "grpc-xds", "port": 15010, "targetPort": "grpc-xds", "protocol": "TCP"},
                {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
            ]}
        }))?;
        Api::<Service>::namespaced(self.central.clone(), &self.ns)
            .create(&PostParams::default(), &svc)
            .await?;
        Ok(())
    }

    /// An istiod pod whose `grpc-xds` container port is `xds_port`, running with `ip`.
    pub async fn create_istiod_pod(
        &self,
        name: &str,
        ip: &str,
        xds_port: i32,
        ready: bool,
    ) -> anyhow::Result<()> {
        let pod = crate::pods::mk_pod(name, &[("app", "istiod")], &[("grpc-xds", xds_port)]);
        crate::pods::create_running_pod(&self.central_pods(), &pod, &[ip], ready).await?;
        Ok(())
    }

    /// (reason, note) of the Events regarding the RemoteCluster `rc`.
    pub async fn events_for(&self, rc: &str) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.central.clone(), &self.ns);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(rc))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// How many writes `cluster`'s agent made so far: [`Mesh::agent_writes`]' length, without the copy.
    pub fn agent_write_count(&self, cluster: &str) -> usize {
        let user = self.agent_user(cluster);
        self.planes.get(cluster).audit_count(|w| w.user == user)
    }

    /// Writes the agent on `cluster` made (API calls that change state), from the audit log.
    pub fn agent_writes(&self, cluster: &str) -> Vec<crate::AuditWrite> {
        let user = self.agent_user(cluster);
        let mut writes = self.planes.get(cluster).audit_writes().expect("audit log");
        writes.retain(|w| w.user == user);
        writes
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Show what the processes said: the first thing one wants when an end-to-end test fails.
            for name in std::iter::once("hub".to_string())
                .chain(self.replicas.values().map(|(_, log, _)| log.clone()))
                .chain(self.agents.keys().map(|a| format!("agent-{a}")))
            {
                let log = self.log(&name);
                // A process that exited with an error: its message comes before the backtrace
                // that would fill the tail.
                for (i, line) in log
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.starts_with("Error: "))
                {
                    let error: Vec<&str> = log.lines().skip(i).take(8).collect();
                    eprintln!("---- {name}.log: {line} ----\n{}", error[1..].join("\n"));
                }
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {name}.log (last 40 lines, newest last) ----");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The condition of `type_` in a RemoteCluster status (as JSON), or Null.
pub fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_default()
}

pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Installs the RemoteCluster CRD from `tether-hub crd` and waits until it is served.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_try_init(|| async {
            let out = Command::new(bin_dir().join("tether-hub")).arg("crd").output()?;
            anyhow::ensure!(out.status.success(), "tether-hub crd failed");
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde_yaml::from_slice(&out.stdout)?;
            let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
                Api::all(client.clone());
            api.patch("remoteclusters.tether.io", &PatchParams::apply("e2e-test").force(), &Patch::Apply(&crd))
                .await?;
            let rcs: Api<DynamicObject> = Api::all_with(client.clone(), &remote_cluster_resource());
            eventually("the RemoteCluster CRD to be served", Duration::from_secs(30), || async {
                Ok(rcs.list(&Default::default()).await?)
            })
            .await;
            Ok(())
        })
        .await
        .map(|_| ())
}
