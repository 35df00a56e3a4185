//! The prior art's architecture, as a baseline for section 1: one central process that watches the
//! istiod pods and writes each remote's EndpointSlice itself, with a kubeconfig for every remote API
//! server (what Tether exists to remove). Same latest-wins pacing as Tether's streams: one state in
//! flight per remote, and the newest state next. It writes its own objects (`istiod-direct`) and can
//! be paused, so section 1 measures it and Tether in alternating rounds, each with the machine to
//! itself. With [`DirectPush::legacy_endpoints`] it also writes the legacy Endpoints after the slice,
//! as the prior art did and as Tether's agent does by default (and, like the agent, skips that second
//! write when a newer state is already waiting).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tether_agent::objects::{MANAGED_BY, SERVICE_NAME, SKIP_MIRROR, SLICE_MANAGED_BY};

pub const SERVICE: &str = "istiod-direct";

/// The running baseline: its writes per remote; stops when dropped.
pub struct DirectPush {
    pub writes: Vec<Arc<AtomicUsize>>,
    paused: tokio::sync::watch::Sender<bool>,
    legacy: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DirectPush {
    /// Paused, it follows the pods but writes nothing; resumed, it writes the newest state at once.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Whether each state also writes the legacy Endpoints (off at the start).
    pub fn legacy_endpoints(&self, on: bool) {
        self.legacy.store(on, Ordering::Relaxed);
    }
}

impl Drop for DirectPush {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The EndpointSlice for the istiod pods now, as complete as the one Tether's agent writes for the
/// same pods, so that both architectures write the same object: the Service's two ports, the three
/// conditions, the managed-by labels. An endpoint per running pod with an IP; while a pod
/// terminates, serving as its readiness says but neither ready nor gone.
fn slice(pods: &BTreeMap<String, Pod>) -> Value {
    let endpoints: Vec<Value> = pods
        .values()
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

pub fn start(central: kube::Client, ns: &str, remotes: Vec<kube::Client>) -> DirectPush {
    let (tx, rx) = tokio::sync::watch::channel(None::<Value>);
    let mut tasks = Vec::new();
    let pods: Api<Pod> = Api::namespaced(central, ns);
    tasks.push(tokio::spawn(async move {
        let mut known: BTreeMap<String, Pod> = BTreeMap::new();
        let cfg = watcher::Config::default().labels("app=istiod");
        let mut stream = watcher(pods, cfg).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    known.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    known.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                Ok(watcher::Event::Init) => known.clear(),
                Ok(watcher::Event::InitDone) | Err(_) => {}
            }
            let next = slice(&known);
            tx.send_if_modified(|cur| {
                let changed = cur.as_ref() != Some(&next);
                *cur = Some(next);
                changed
            });
        }
    }));
    let mut writes = Vec::new();
    let (paused, paused_rx) = tokio::sync::watch::channel(false);
    let legacy = Arc::new(AtomicBool::new(false));
    for client in remotes {
        let count = Arc::new(AtomicUsize::new(0));
        writes.push(count.clone());
        let mut rx = rx.clone();
        let mut paused = paused_rx.clone();
        let legacy = legacy.clone();
        let eps: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), ns);
        let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client, ns);
        tasks.push(tokio::spawn(async move {
            let apply = PatchParams::apply("direct-push").force();
            let (mut written, mut written_eps): (Option<Value>, Option<Value>) = (None, None);
            loop {
                if paused.wait_for(|p| !*p).await.is_err() {
                    return;
                }
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
                        .is_ok()
                } else if let Some(e) = legacy
                    .load(Ordering::Relaxed)
                    .then(|| endpoints(&b))
                    .filter(|e| written_eps.as_ref() != Some(e))
                    && !rx.has_changed().unwrap_or(true)
                {
                    eps.patch(SERVICE, &apply, &Patch::Apply(&e))
                        .await
                        .map(|_| written_eps = Some(e))
                        .is_ok()
                } else {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        r = paused.changed() => if r.is_err() { return },
                    }
                    continue;
                };
                if wrote {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }));
    }
    DirectPush {
        writes,
        paused,
        legacy,
        tasks,
    }
}
