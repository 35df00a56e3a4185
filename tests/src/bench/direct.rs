//! The prior art's architecture, as a baseline for section 1: one central process
//! (`tether-direct-push`, this module's [`run`]) that watches the istiod pods and writes each
//! remote's EndpointSlice itself, with a kubeconfig for every remote API server (what Tether exists
//! to remove). A process of its own, as the hub is: in the load generator's process it would share
//! that process's wake-ups and runtime with the writes it measures. Same latest-wins pacing as
//! Tether's streams: one state in flight per remote, and the newest state next. It writes its own
//! objects (`istiod-direct`, in a namespace the agents do not watch); section 1 stops it (SIGSTOP)
//! in Tether's rounds as it stops the hub in the direct push's, and counts its writes in the remote
//! API servers' audit logs, as it counts the agents'. With `legacy_endpoints` it also writes the
//! legacy Endpoints after the slice, as the prior art did and as Tether's agent does by default
//! (and, like the agent, skips that second write when a newer state is already waiting).

use crate::ControlPlanes;
use crate::mesh::{Mesh, bin_dir};
use crate::procs::{Proc, spawn};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tether_agent::objects::{MANAGED_BY, SERVICE_NAME, SKIP_MIRROR, SLICE_MANAGED_BY};

pub const SERVICE: &str = "istiod-direct";

/// The EndpointSlice for the istiod pods now, as complete as the one Tether's agent writes for the
/// same pods, so that both architectures write the same object: the Service's two ports, the three
/// conditions, the managed-by labels. An endpoint per running pod with an IP; while a pod
/// terminates, serving as its readiness says but neither ready nor gone.
fn slice(pods: &[Arc<Pod>]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let serving = p
                .status
                .as_ref()?
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let terminating = p.metadata.deletion_timestamp.is_some();
            Some(json!({"addresses": [ip], "conditions": {
                "ready": serving && !terminating, "serving": serving, "terminating": terminating}}))
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": SERVICE, "labels": {
            SERVICE_NAME: SERVICE,
            SLICE_MANAGED_BY: "direct-push.bench",
            MANAGED_BY: "direct-push"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc-xds", "port": 15010, "protocol": "TCP"},
                  {"name": "https-webhook", "port": 15017, "protocol": "TCP"}],
        "endpoints": endpoints})
}

/// The legacy Endpoints for `slice`, as the agent writes them: one subset with the two ports, ready
/// and not-ready addresses apart, the skip-mirror label.
fn endpoints(slice: &Value) -> Value {
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for e in slice["endpoints"].as_array().into_iter().flatten() {
        let address = json!({"ip": e["addresses"][0]});
        if e["conditions"]["ready"] == true {
            ready.push(address);
        } else {
            not_ready.push(address);
        }
    }
    let mut subset = json!({"ports": slice["ports"]});
    if !ready.is_empty() {
        subset["addresses"] = ready.into();
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = not_ready.into();
    }
    json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": SERVICE, "labels": {SKIP_MIRROR: "true", MANAGED_BY: "direct-push"}},
        "subsets": [subset]})
}

/// Where the direct push writes on each remote for a mesh whose namespace is `ns`: a namespace of
/// its own, so that Tether's agents (which watch theirs) neither see nor answer its writes.
pub fn namespace(ns: &str) -> String {
    format!("{ns}-direct")
}

/// Follows the pods in `ns` on the central API server and writes every remote's objects in
/// `remote_ns` until the process ends.
pub async fn run(
    central: kube::Client,
    ns: &str,
    remotes: Vec<kube::Client>,
    remote_ns: &str,
    legacy: bool,
) {
    let (tx, rx) = tokio::sync::watch::channel(None::<Value>);
    let pods: Api<Pod> = Api::namespaced(central, ns);
    for client in remotes {
        let mut rx = rx.clone();
        let eps: Api<k8s_openapi::api::core::v1::Endpoints> =
            Api::namespaced(client.clone(), remote_ns);
        let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(client, remote_ns);
        tokio::spawn(async move {
            let apply = PatchParams::apply("direct-push").force();
            let (mut written, mut written_eps): (Option<Value>, Option<Value>) = (None, None);
            loop {
                let body = rx.borrow_and_update().clone();
                let Some(b) = body else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                let wrote = if written.as_ref() != Some(&b) {
                    api.patch(SERVICE, &apply, &Patch::Apply(&b))
                        .await
                        .map(|_| written = Some(b.clone()))
                } else if let Some(e) = legacy
                    .then(|| endpoints(&b))
                    .filter(|e| written_eps.as_ref() != Some(e))
                    && !rx.has_changed().unwrap_or(true)
                {
                    eps.patch(SERVICE, &apply, &Patch::Apply(&e))
                        .await
                        .map(|_| written_eps = Some(e))
                } else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                if let Err(e) = wrote {
                    eprintln!("direct push: write failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        });
    }
    // kube's store swaps a relist in whole once it is done, so no partial list is ever pushed.
    let (known, writer) = reflector::store();
    let cfg = watcher::Config::default().labels("app=istiod");
    let mut stream = reflector(writer, watcher(pods, cfg)).boxed();
    while let Some(ev) = stream.next().await {
        if !matches!(
            ev,
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
        ) {
            continue;
        }
        let mut pods = known.state();
        pods.sort_by_key(|p| p.name_any());
        let next = slice(&pods);
        tx.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(&next);
            *cur = Some(next);
            changed
        });
    }
}

/// The running `tether-direct-push` process of a mesh: killed when dropped.
pub struct DirectPush {
    process: Proc,
    planes: &'static ControlPlanes,
    remotes: Vec<String>,
    ns: String,
}

impl DirectPush {
    /// Starts the process against the mesh's central and remote API servers (their admin
    /// kubeconfigs), logging to `direct-push.log` in the mesh's directory. It writes in
    /// [`namespace`], which must exist on every remote.
    pub fn start(mesh: &Mesh, remotes: &[&str], legacy_endpoints: bool) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(mesh.dir.join("direct-push.log"))?;
        let mut cmd = Command::new(bin_dir().join("tether-direct-push"));
        let ns = namespace(&mesh.ns);
        cmd.args(["--namespace", &mesh.ns])
            .args(["--remote-namespace", &ns])
            .arg("--central")
            .arg(mesh.planes.get("central").kubeconfig());
        for r in remotes {
            cmd.arg("--remote").arg(mesh.planes.get(r).kubeconfig());
        }
        if legacy_endpoints {
            cmd.arg("--legacy-endpoints");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(DirectPush {
            process: spawn(cmd)?,
            planes: mesh.planes,
            remotes: remotes.iter().map(|r| r.to_string()).collect(),
            ns,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id().expect("running")
    }

    /// Its writes so far on each remote (patches and deletes of `istiod-direct` in its namespace,
    /// from the audit log).
    pub fn writes(&self) -> Vec<usize> {
        self.remotes
            .iter()
            .map(|r| {
                self.planes.get(r).audit_count(|w| {
                    w.name == SERVICE
                        && w.namespace == self.ns
                        && matches!(w.verb.as_str(), "patch" | "create" | "update" | "delete")
                })
            })
            .collect()
    }
}
