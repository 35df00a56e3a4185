//! Real one-node Kubernetes clusters: the charts run as real pods (kubelet, containerd, kube-proxy, a
//! CNI bridge), the way a user installs them.
//!
//! ```text
//!  host (root namespaces)                       network namespace tether-<pid>-<n>  ("the node")
//!  test ── https://<node ip>:6443 ─veth pair──► etcd, kube-apiserver, controller-manager, scheduler
//!                                               unshare(pid, mount) ─► containerd, kubelet, kube-proxy
//!                                                  cni0 10.24x.0.1/24 ─► pods (hub, agent, ...)
//!                                               wan veth ◄────────────► the other cluster's node
//! ```
//! Every non-loopback address lives in a namespace created here: the node's address (the host's end
//! of its veth pair is the only address on the host side), the pods' bridge, and the link between two
//! nodes over which a remote's agent reaches the central hub's NodePort, as it would across clusters.
//!
//! Cleanup, also when a test panics or the binary is killed: every process is spawned with
//! PDEATHSIG (see [`crate::procs`]); containerd, the kubelet, kube-proxy and everything they start
//! (shims, containers) run in a PID namespace of their own, so killing its `unshare` takes all of them
//! (the kernel kills a PID namespace's processes when its init dies); their mounts (overlays, Secret
//! volumes, pod network namespaces, a tmpfs over `/run` and `/var/lib/cni`) live in a private mount
//! namespace that goes with them; iptables rules and the bridge live in the node's network namespace,
//! deleted on drop. What remains on the host is the kubelet's cgroup tree (`/sys/fs/cgroup/<ctl>/
//! tether-<pid>-<name>`), removed on drop and by the next run when its process is gone.

use crate::cluster::{client_from, write_kubeconfig};
use crate::controlplane::{repo_root, run_dir};
use crate::netns::Netns;
use crate::pki::{Ca, key_pair_pem};
use crate::procs::Proc;
use anyhow::{Context, bail};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The API server's port on the node's address.
pub const API_PORT: u16 = 6443;
const CGROUP_FS: &str = "/sys/fs/cgroup";

/// Folder with the node binaries (kubelet, kube-proxy, controller-manager, scheduler) next to
/// kube-apiserver and etcd: `tests/controlplane/build.sh node`.
pub fn node_binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(script_output("tests/controlplane/build.sh", &["node"])))
}

/// The pause image as a docker-archive (`tests/realnode/pause-image.sh`) and its name.
pub fn pause_image() -> &'static (PathBuf, String) {
    static IMG: OnceLock<(PathBuf, String)> = OnceLock::new();
    IMG.get_or_init(|| {
        let tar = PathBuf::from(script_output("tests/realnode/pause-image.sh", &[]));
        let version = tar
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("pause-"))
            .expect("pause-<version>.tar")
            .to_string();
        (tar, format!("tether.local/pause:{version}"))
    })
}

fn script_output(script: &str, args: &[&str]) -> String {
    let path = repo_root().join(script);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(out.status.success(), "{} failed", path.display());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Removes cgroup trees of earlier test processes that are gone (`tether-<pid>-...`).
pub fn remove_stale_cgroups() {
    for ctl in cgroup_controllers() {
        let Ok(entries) = std::fs::read_dir(Path::new(CGROUP_FS).join(ctl)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("tether-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                rmdir_tree(&e.path());
            }
        }
    }
}

/// Removes a cgroup folder and its children, deepest first (a cgroup folder holds only the kernel's
/// files, which go with `rmdir`).
fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// One real cluster of one node.
pub struct RealCluster {
    pub name: String,
    /// The Node's name (`<name>-node`).
    pub node_name: String,
    /// The node's network namespace; `net.ip` is the node's address.
    pub net: Netns,
    pub dir: PathBuf,
    /// `https://<node ip>:6443`
    pub server: String,
    /// The pod network (`10.24x.0.0/24`).
    pub pod_cidr: String,
    kubeconfig: PathBuf,
    cgroup_root: String,
    procs: Mutex<Vec<(&'static str, Proc)>>,
}

impl RealCluster {
    /// Starts the control plane and the node, and waits for the Node to be Ready. Blocking. Needs root.
    /// `index` picks the pod network (`10.244+index.0.0/24`), so two clusters' pods differ.
    pub fn start(name: &str, index: u8) -> anyhow::Result<Self> {
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(remove_stale_cgroups);
        let bins = node_binaries();
        let (pause_tar, pause) = pause_image();
        let dir = run_dir().join(format!("realnode-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let net = Netns::create()?;
        let ip = net.ip;
        let node_name = format!("{name}-node");
        let pod_cidr = format!("10.{}.0.0/24", 244 + u16::from(index));
        let cgroup_root = format!("tether-{}-{name}", std::process::id());
        let server = format!("https://{ip}:{API_PORT}");
        let cluster = RealCluster {
            name: name.to_string(),
            node_name: node_name.clone(),
            net,
            dir: dir.clone(),
            server: server.clone(),
            pod_cidr: pod_cidr.clone(),
            kubeconfig: dir.join("admin.kubeconfig"),
            cgroup_root: cgroup_root.clone(),
            procs: Mutex::new(Vec::new()),
        };
        sysctl(&cluster.net, "net.ipv4.ip_forward", "1")?;

        // PKI: one CA for the API server, the clients and the kubelet's client CA.
        let ca = Ca::new(&format!("{name}-ca"))?;
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        let w = |f: &str, s: &str| std::fs::write(pki.join(f), s);
        w("ca.crt", &ca.cert_pem)?;
        let serving = ca.server_for(
            "kube-apiserver",
            &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ],
            &[
                IpAddr::V4(ip),
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
        )?;
        w("apiserver.crt", &serving.cert_pem)?;
        w("apiserver.key", &serving.key_pem)?;
        let (sa_key, sa_pub) = key_pair_pem()?;
        w("sa.key", &sa_key)?;
        w("sa.pub", &sa_pub)?;
        let admin = ca.client("tether-harness-admin", Some("system:masters"))?;
        w("admin.crt", &admin.cert_pem)?;
        w("admin.key", &admin.key_pem)?;
        write_kubeconfig(&cluster.kubeconfig, name, &server, &ca.cert_pem, &admin)?;
        for (file, user, group) in [
            ("kcm", "system:kube-controller-manager", None),
            ("scheduler", "system:kube-scheduler", None),
            (
                "kubelet",
                &*format!("system:node:{node_name}"),
                Some("system:nodes"),
            ),
            ("kube-proxy", "system:kube-proxy", None),
        ] {
            let cert = ca.client(user, group)?;
            write_kubeconfig(
                &pki.join(format!("{file}.kubeconfig")),
                name,
                &server,
                &ca.cert_pem,
                &cert,
            )?;
        }
        let p = |f: &str| pki.join(f).display().to_string();
        std::fs::write(dir.join("audit-policy.yaml"), crate::cluster::AUDIT_POLICY)?;

        // Control plane, in the node's network namespace.
        let mut etcd = Command::new(crate::controlplane::binaries().join("etcd"));
        etcd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .args([
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            ])
            .arg(format!("--initial-cluster={name}=http://127.0.0.1:2380"))
            .args(["--unsafe-no-fsync", "--log-level=warn"]);
        cluster.run("etcd", etcd)?;
        let mut api = Command::new(crate::controlplane::binaries().join("kube-apiserver"));
        api.arg("--etcd-servers=http://127.0.0.1:2379")
            .arg("--bind-address=0.0.0.0")
            .arg(format!("--advertise-address={ip}"))
            .arg(format!("--secure-port={API_PORT}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!("--kubelet-client-certificate={}", p("admin.crt")))
            .arg(format!("--kubelet-client-key={}", p("admin.key")))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--service-node-port-range=30000-32767")
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg(format!(
                "--audit-policy-file={}",
                dir.join("audit-policy.yaml").display()
            ))
            .arg(format!(
                "--audit-log-path={}",
                dir.join("audit.log").display()
            ))
            .arg("--audit-log-mode=blocking");
        cluster.run("kube-apiserver", api)?;
        cluster.wait_api(Duration::from_secs(120))?;
        let mut kcm = Command::new(bins.join("kube-controller-manager"));
        let kcm_kc = p("kcm.kubeconfig");
        kcm.arg(format!("--kubeconfig={kcm_kc}"))
            .arg(format!("--authentication-kubeconfig={kcm_kc}"))
            .arg(format!("--authorization-kubeconfig={kcm_kc}"))
            .arg(format!(
                "--service-account-private-key-file={}",
                p("sa.key")
            ))
            .arg(format!("--root-ca-file={}", p("ca.crt")))
            .args([
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--service-cluster-ip-range=10.96.0.0/16",
                // The node's pods must not wait for the default 40 s node grace.
                "--node-monitor-grace-period=20s",
            ]);
        cluster.run("kube-controller-manager", kcm)?;
        let mut sched = Command::new(bins.join("kube-scheduler"));
        let s_kc = p("scheduler.kubeconfig");
        sched
            .arg(format!("--kubeconfig={s_kc}"))
            .arg(format!("--authentication-kubeconfig={s_kc}"))
            .arg(format!("--authorization-kubeconfig={s_kc}"))
            .args(["--leader-elect=false", "--bind-address=127.0.0.1"]);
        cluster.run("kube-scheduler", sched)?;

        // The node: containerd, kubelet and kube-proxy in their own PID and mount namespaces.
        let node = dir.join("node");
        for sub in ["cni", "cni-ipam", "pod-logs", "kubelet", "containerd"] {
            std::fs::create_dir_all(node.join(sub))?;
        }
        for ctl in cgroup_controllers() {
            std::fs::create_dir_all(Path::new(CGROUP_FS).join(&ctl).join(&cgroup_root))
                .with_context(|| format!("creating the node's {ctl} cgroup"))?;
        }
        let n = |f: &str| node.join(f).display().to_string();
        let sock = n("containerd/containerd.sock");
        std::fs::write(
            node.join("containerd.toml"),
            containerd_config(&node, &sock, pause),
        )?;
        std::fs::write(
            node.join("cni/10-bridge.conflist"),
            format!(
                r#"{{"cniVersion": "0.4.0", "name": "{name}", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{pod_cidr}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}],
             "dataDir": "{ipam}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}
"#,
                ipam = n("cni-ipam")
            ),
        )?;
        // No cluster DNS: pods address the API server and the hub by IP.
        std::fs::write(node.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        std::fs::write(
            node.join("kubelet.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failSwapOn: false
failCgroupV1: false
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
clusterDomain: cluster.local
resolvConf: {resolv}
# Secret volumes follow their Secret within seconds (the default sync is 1 min).
syncFrequency: 5s
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {logs}
serializeImagePulls: false
maxPods: 30
",
                ca = p("ca.crt"),
                resolv = n("resolv.conf"),
                logs = n("pod-logs"),
            ),
        )?;
        std::fs::write(
            node.join("kube-proxy.yaml"),
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kc}}}
mode: iptables
clusterCIDR: {pod_cidr}
hostnameOverride: {node_name}
conntrack: {{maxPerCore: 0}}
# A pod reaching a Service backed by a pod on the same bridge gets its answer through the node.
iptables: {{masqueradeAll: true}}
metricsBindAddress: 127.0.0.1:10249
",
                kc = p("kube-proxy.kubeconfig"),
            ),
        )?;
        let script = format!(
            r#"#!/bin/sh
# PID 1 of the node's PID namespace: when it dies, the kernel kills every process of the node.
set -e
# The node's own /run (containerd's shim sockets) and /var/lib/cni (CNI's cache), gone with the
# mount namespace.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /var/lib/cni && mount -t tmpfs tmpfs /var/lib/cni
containerd --config {node}/containerd.toml >{node}/containerd.log 2>&1 &
i=0; until [ -S {sock} ]; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done
{bins}/kubelet --config={node}/kubelet.yaml --kubeconfig={kubelet_kc} --root-dir={node}/kubelet \
  --hostname-override={node_name} --node-ip={ip} --v=1 >{node}/kubelet.log 2>&1 &
{bins}/kube-proxy --config={node}/kube-proxy.yaml --v=1 >{node}/kube-proxy.log 2>&1 &
wait
"#,
            node = node.display(),
            bins = bins.display(),
            kubelet_kc = p("kubelet.kubeconfig"),
        );
        std::fs::write(node.join("node.sh"), script)?;
        let mut unshare = Command::new("unshare");
        unshare
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--propagation",
                "private",
                "--mount-proc",
                "sh",
            ])
            .arg(node.join("node.sh"));
        cluster.run("node", unshare)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Path::new(&sock).exists() {
            if Instant::now() > deadline {
                bail!(
                    "containerd of {name} did not start:\n{}",
                    cluster.tail("node/containerd.log")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.import_image(pause_tar)?;
        cluster.wait_node_ready(Duration::from_secs(120))?;
        Ok(cluster)
    }

    fn run(&self, what: &'static str, cmd: Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{what}.log")))?;
        let mut cmd = cmd;
        cmd.stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = self
            .net
            .spawn(cmd)
            .with_context(|| format!("starting {what}"))?;
        self.procs.lock().unwrap().push((what, proc));
        Ok(())
    }

    /// The last 30 lines of a log under the cluster's folder.
    pub fn tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_api(&self, timeout: Duration) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let ready = rt.block_on(async {
                let c = self.client().await?;
                let req = http::Request::get("/readyz").body(Vec::new())?;
                anyhow::Ok(c.request_text(req).await?)
            });
            match ready {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "API server of {} not ready after {timeout:?} ({last}):\n{}",
            self.name,
            self.tail("kube-apiserver.log")
        )
    }

    fn wait_node_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ready = rt.block_on(async {
                let nodes = kube::Api::<Node>::all(self.client().await?);
                let node = nodes.get_opt(&self.node_name).await?;
                anyhow::Ok(node.is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }))
            });
            if matches!(ready, Ok(true)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "node {} not Ready after {timeout:?}:\n{}",
            self.node_name,
            self.tail("node/kubelet.log")
        )
    }

    /// `ctr images import` of a docker-archive into the node's containerd (as `ctr -n k8s.io` does for
    /// a user without a registry).
    pub fn import_image(&self, tar: &Path) -> anyhow::Result<()> {
        let sock = self.dir.join("node/containerd/containerd.sock");
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tar)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr images import {}: {}",
                tar.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Host PIDs of everything this cluster runs: the control plane, the node's `unshare` and all its
    /// descendants (containerd, kubelet, kube-proxy, shims, containers: a shim that daemonizes is
    /// re-parented to the node's init, so it stays a descendant).
    pub fn pids(&self) -> Vec<u32> {
        let procs = self.procs.lock().unwrap();
        let mut pids: Vec<u32> = procs.iter().filter_map(|(_, p)| p.id()).collect();
        let mut todo = pids.clone();
        while let Some(pid) = todo.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for c in children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok())
                {
                    pids.push(c);
                    todo.push(c);
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The kubelet's cgroup folders on the host (one per cgroup v1 controller).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_controllers()
            .iter()
            .map(|c| Path::new(CGROUP_FS).join(c).join(&self.cgroup_root))
            .collect()
    }

    /// `path` as the node's processes see it (through their mount namespace): a Secret volume's
    /// files as the kubelet updated them, for example.
    pub fn node_path(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let procs = self.procs.lock().unwrap();
        let unshare = procs
            .iter()
            .find(|(what, _)| *what == "node")
            .and_then(|(_, p)| p.id())
            .context("the node is not running")?;
        // `unshare --fork`'s one child is the node's PID 1 (in the node's mount namespace).
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))?;
        let init = children
            .split_whitespace()
            .next()
            .context("the node has no init process")?;
        Ok(
            PathBuf::from(format!("/proc/{init}/root"))
                .join(path.strip_prefix("/").unwrap_or(path)),
        )
    }

    /// The admin kubeconfig (`system:masters`), server `https://<node ip>:6443`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new admin client (one per test runtime).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// Writes recorded by this API server's audit log so far.
    pub fn audit_writes(&self) -> anyhow::Result<Vec<crate::AuditWrite>> {
        crate::cluster::read_audit(&self.dir.join("audit.log"))
    }

    /// Joins two nodes with a veth pair (`192.0.2.1/30` on this node, `.2` on `other`): the path from
    /// one cluster's nodes to the other's, as between two networks. Returns (this end, other end).
    pub fn link(&self, other: &RealCluster) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
        let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        crate::netns::veth_between(&self.net, a, &other.net, b, 30)?;
        Ok((a, b))
    }

    /// Stops the node and the control plane, then removes the node's cgroups. (Dropping does this.)
    pub fn stop(&self) {
        let mut procs = self.procs.lock().unwrap();
        // The node first (it may still talk to the API server), then the control plane.
        while let Some((_, mut p)) = procs.pop() {
            p.kill();
        }
        // The kernel tears the node's PID namespace down asynchronously; its cgroups empty then.
        let deadline = Instant::now() + Duration::from_secs(10);
        for ctl in cgroup_controllers() {
            let root = Path::new(CGROUP_FS).join(&ctl).join(&self.cgroup_root);
            while root.exists() {
                rmdir_tree(&root);
                if Instant::now() > deadline {
                    break;
                }
                if root.exists() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cgroup v1 hierarchies the kubelet uses (every mounted controller folder but the v2 one); on
/// a unified (v2) host, the one hierarchy at the root.
fn cgroup_controllers() -> Vec<String> {
    if Path::new(CGROUP_FS).join("cgroup.controllers").exists() {
        return vec![String::new()];
    }
    let Ok(entries) = std::fs::read_dir(CGROUP_FS) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "unified")
        .collect();
    out.sort();
    out
}

fn sysctl(net: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.name, "sysctl", "-qw"])
        .arg(format!("{key}={value}"))
        .output()?;
    if !out.status.success() {
        bail!("sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn containerd_config(node: &Path, sock: &str, pause: &str) -> String {
    let n = node.display();
    format!(
        r#"version = 2
root = "{n}/containerd/root"
state = "{n}/containerd/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine has no CAP_SYS_RESOURCE: runc could not lower the sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{n}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#
    )
}
