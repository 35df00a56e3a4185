//! Section 1 of `make bench`: a central cluster and 3 remotes, 200 changes to the istiod pods, from
//! the central write to the remote's EndpointSlice watch event, against the floor (one server-side
//! apply and its watch event on the same API servers). The same run measures the agents' footprint
//! (section 2) and their API writes (section 3).

use super::{Usage, ms, percentile, usage};
use crate::ControlPlanes;
use crate::mesh::Mesh;
use crate::pods::set_pod_status;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub const REMOTES: &[&str] = &["remote-1", "remote-2", "remote-3"];
pub const CHANGES: usize = 200;

pub struct Propagation {
    /// Central write -> remote EndpointSlice event, seconds (each change x each remote).
    pub latencies: Vec<f64>,
    /// The same changes through the prior art's direct push (`bench::direct`), at the same moments.
    pub direct: Vec<f64>,
    /// The direct push's writes for the changes, per remote.
    pub direct_writes: Vec<usize>,
    /// The kind of change of each sample (0 readiness flip, 1 new pod, 2 deleted pod).
    pub kinds: Vec<usize>,
    /// One server-side apply -> its watch event, seconds.
    pub floor: Vec<f64>,
    /// The floor without each remote's first write (the first apply of an object is the slow one).
    pub floor_warm: Vec<f64>,
    pub footprint: Footprint,
    pub writes: Writes,
}

pub struct AgentFootprint {
    pub name: String,
    pub steady_rss_kib: u64,
    pub peak_kib: u64,
    /// Cores used while idle, and during the changes.
    pub steady_cpu: f64,
    pub churn_cpu: f64,
}

pub struct Footprint {
    pub churn_secs: f64,
    pub agents: Vec<AgentFootprint>,
    pub hub_rss_kib: u64,
    pub hub_peak_kib: u64,
    pub hub_churn_cpu: f64,
}

pub struct Writes {
    /// API writes of each agent for the changes.
    pub per_remote: Vec<usize>,
    /// remote-1's writes per change, by kind: readiness flip, new pod, deleted pod.
    pub per_kind: Vec<f64>,
    /// Writes after a hub restart and a restart of every agent, nothing changed.
    pub reconnect: usize,
}

type EndpointSet = BTreeSet<(String, bool)>;

/// The latest endpoint set of `service` on a cluster, and when the watch event that made it arrived.
pub fn watch_endpoints(
    client: kube::Client,
    ns: &str,
    service: &str,
) -> tokio::sync::watch::Receiver<(Instant, EndpointSet)> {
    let (tx, rx) = tokio::sync::watch::channel((Instant::now(), EndpointSet::new()));
    let api: Api<EndpointSlice> = Api::namespaced(client, ns);
    let cfg = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    tokio::spawn(async move {
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut stream = watcher(api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            let at = Instant::now();
            match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                    slices.insert(s.metadata.name.clone().unwrap_or_default(), s);
                }
                Ok(watcher::Event::Delete(s)) => {
                    slices.remove(s.metadata.name.as_deref().unwrap_or_default());
                }
                Ok(watcher::Event::Init) => slices.clear(),
                Ok(watcher::Event::InitDone) | Err(_) => {}
            }
            let set = slices
                .values()
                .flat_map(|s| s.endpoints.iter())
                .map(|e| {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                    (e.addresses[0].clone(), ready)
                })
                .collect();
            tx.send_replace((at, set));
        }
    });
    rx
}

async fn wait_set(
    rx: &mut tokio::sync::watch::Receiver<(Instant, EndpointSet)>,
    want: &EndpointSet,
) -> anyhow::Result<Instant> {
    let got = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|(_, s)| s == want))
        .await
        .map_err(|_| anyhow::anyhow!("a remote did not reach the state within 30 s"))??;
    Ok(got.0)
}

pub async fn wait_synced(mesh: &Mesh, names: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for r in names {
        loop {
            if mesh.status(r).await?["phase"] == "Synced" {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{r} not Synced in {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Central + 3 remotes, 200 changes: propagation, and from the same run the footprint and the write
/// amplification.
pub async fn run(planes: &'static ControlPlanes) -> anyhow::Result<Propagation> {
    println!("== propagation: central + 3 remotes, {CHANGES} pod changes");
    let mut mesh = synced_mesh(planes).await?;
    let mut watches: Vec<_> = REMOTES
        .iter()
        .map(|r| watch_endpoints(mesh.remote(r).clone(), &mesh.ns, "istiod"))
        .collect();
    let direct = super::direct::start(
        mesh.central.clone(),
        &mesh.ns,
        REMOTES.iter().map(|r| mesh.remote(r).clone()).collect(),
    );
    let mut direct_watches: Vec<_> = REMOTES
        .iter()
        .map(|r| watch_endpoints(mesh.remote(r).clone(), &mesh.ns, super::direct::SERVICE))
        .collect();
    let mut want: EndpointSet = [("10.10.0.1".into(), true), ("10.10.0.2".into(), true)].into();
    for w in watches.iter_mut().chain(direct_watches.iter_mut()) {
        wait_set(w, &want).await?;
    }
    let agents: Vec<u32> = REMOTES.iter().filter_map(|r| mesh.agent_pid(r)).collect();
    let hub = mesh.hub_pid().expect("hub running");
    // Steady footprint: 10 s with nothing changing.
    let before: Vec<Usage> = agents.iter().map(|p| usage(*p)).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady: Vec<Usage> = agents.iter().map(|p| usage(*p)).collect();
    let writes_before: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_writes(r).len()).collect();
    let hub_before = usage(hub);
    let direct_before: Vec<usize> = direct
        .writes
        .iter()
        .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
        .collect();

    let churn = churn(&mesh, &mut watches, &mut direct_watches, &mut want).await?;
    let direct_writes: Vec<usize> = direct
        .writes
        .iter()
        .zip(&direct_before)
        .map(|(w, b)| w.load(std::sync::atomic::Ordering::Relaxed) - b)
        .collect();
    drop(direct);
    let churned: Vec<Usage> = agents.iter().map(|p| usage(*p)).collect();
    let hub_churn = usage(hub);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_remote: Vec<usize> = REMOTES
        .iter()
        .zip(&writes_before)
        .map(|(r, b)| mesh.agent_writes(r).len() - b)
        .collect();
    let per_kind = churn.writes_per_kind(mesh.agent_writes("remote-1").len());
    let (floor, floor_warm) = floor(&mesh).await?;
    let reconnect = reconnect_writes(&mut mesh).await?;

    let cpu = |a: &Usage, b: &Usage, secs: f64| (b.cpu_secs - a.cpu_secs) / secs;
    let footprint = Footprint {
        churn_secs: churn.secs,
        agents: REMOTES
            .iter()
            .enumerate()
            .map(|(i, r)| AgentFootprint {
                name: r.to_string(),
                steady_rss_kib: steady[i].rss_kib,
                peak_kib: churned[i].peak_kib,
                steady_cpu: cpu(&before[i], &steady[i], 10.0),
                churn_cpu: cpu(&steady[i], &churned[i], churn.secs),
            })
            .collect(),
        hub_rss_kib: hub_before.rss_kib,
        hub_peak_kib: hub_churn.peak_kib,
        hub_churn_cpu: cpu(&hub_before, &hub_churn, churn.secs),
    };
    println!(
        "propagation p50/p99 {} / {}; direct push {} / {} ({direct_writes:?} writes); floor {} / {}; writes {per_remote:?}; reconnect writes {reconnect}",
        ms(percentile(&churn.latencies, 50.0)),
        ms(percentile(&churn.latencies, 99.0)),
        ms(percentile(&churn.direct, 50.0)),
        ms(percentile(&churn.direct, 99.0)),
        ms(percentile(&floor, 50.0)),
        ms(percentile(&floor, 99.0))
    );
    Ok(Propagation {
        kinds: churn
            .kinds
            .iter()
            .flat_map(|k| std::iter::repeat_n(*k, REMOTES.len()))
            .collect(),
        latencies: churn.latencies,
        direct: churn.direct,
        direct_writes,
        floor,
        floor_warm,
        footprint,
        writes: Writes {
            per_remote,
            per_kind,
            reconnect,
        },
    })
}

/// The hub (production defaults) and an agent per remote, every remote Synced.
async fn synced_mesh(planes: &'static ControlPlanes) -> anyhow::Result<Mesh> {
    let mut mesh = Mesh::new(planes, REMOTES).await?;
    mesh.test_timing = false;
    mesh.log_filter = Some("info".into());
    mesh.create_istiod().await?;
    for r in REMOTES {
        mesh.create_remote_cluster(r, json!({})).await?;
    }
    mesh.start_hub()?;
    for r in REMOTES {
        mesh.start_agent(r)?;
    }
    wait_synced(&mesh, REMOTES, Duration::from_secs(60)).await?;
    Ok(mesh)
}

/// What the 200 changes measured.
struct Churn {
    latencies: Vec<f64>,
    /// The direct push's latencies for the same changes.
    direct: Vec<f64>,
    secs: f64,
    /// The kind of each change (0 readiness flip, 1 new pod, 2 deleted pod), in order.
    kinds: Vec<usize>,
    /// remote-1's writes by the kind of change that caused them, up to the last change.
    by_kind: [usize; 3],
    last_writes: usize,
}

impl Churn {
    /// remote-1's writes per change of each kind, the last change's writes counted up to `now_writes`.
    fn writes_per_kind(&self, now_writes: usize) -> Vec<f64> {
        let mut by_kind = self.by_kind;
        if let Some(last) = self.kinds.last() {
            by_kind[*last] += now_writes - self.last_writes;
        }
        (0..3)
            .map(|k| {
                by_kind[k] as f64 / self.kinds.iter().filter(|x| **x == k).count().max(1) as f64
            })
            .collect()
    }
}

/// 200 changes, one at a time: readiness flips, new pods (a new IP), deleted pods (an IP gone).
async fn churn(
    mesh: &Mesh,
    watches: &mut [tokio::sync::watch::Receiver<(Instant, EndpointSet)>],
    direct: &mut [tokio::sync::watch::Receiver<(Instant, EndpointSet)>],
    want: &mut EndpointSet,
) -> anyhow::Result<Churn> {
    let pods = mesh.central_pods();
    let started = Instant::now();
    let mut out = Churn {
        latencies: Vec::new(),
        direct: Vec::new(),
        secs: 0.0,
        kinds: Vec::new(),
        by_kind: [0; 3],
        last_writes: mesh.agent_writes("remote-1").len(),
    };
    let mut b_ready = true;
    let mut extra: Option<(String, String)> = None;
    let mut k = 0usize;
    // TETHER_BENCH_PAUSE_MS: a longer pause tells whether a change waited for the previous one's
    // answer (Tether's agent acknowledges once both of its writes are done).
    let pause = Duration::from_millis(
        std::env::var("TETHER_BENCH_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    for i in 0..CHANGES {
        if let Some(prev) = out.kinds.last() {
            let now = mesh.agent_writes("remote-1").len();
            out.by_kind[*prev] += now - out.last_writes;
            out.last_writes = now;
        }
        let t0;
        match (i % 3, extra.take()) {
            (0, e) => {
                extra = e;
                b_ready = !b_ready;
                want.insert(("10.10.0.2".into(), b_ready));
                want.remove(&("10.10.0.2".into(), !b_ready));
                t0 = Instant::now();
                set_pod_status(&pods, "istiod-b", &["10.10.0.2"], b_ready).await?;
            }
            (1, _) => {
                k += 1;
                let (name, ip) = (format!("churn-{k}"), format!("10.10.1.{}", k % 250 + 1));
                let pod = crate::pods::mk_pod(&name, &[("app", "istiod")], &[("grpc-xds", 15010)]);
                pods.create(&Default::default(), &pod).await?;
                want.insert((ip.clone(), true));
                t0 = Instant::now();
                set_pod_status(&pods, &name, &[&ip], true).await?;
                extra = Some((name, ip));
            }
            (_, Some((name, ip))) => {
                want.remove(&(ip, true));
                t0 = Instant::now();
                pods.delete(&name, &Default::default()).await?;
            }
            (_, None) => unreachable!("a pod was created the step before"),
        }
        for w in watches.iter_mut() {
            let at = wait_set(w, want).await?;
            out.latencies.push((at - t0).as_secs_f64());
        }
        for w in direct.iter_mut() {
            let at = wait_set(w, want).await?;
            out.direct.push((at - t0).as_secs_f64());
        }
        out.kinds.push(i % 3);
        // A pause as between real changes, so each is measured on its own.
        tokio::time::sleep(pause).await;
    }
    out.secs = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One server-side apply of an EndpointSlice and its watch event, on the same API servers; and the
/// same without each remote's first apply (which creates the object).
async fn floor(mesh: &Mesh) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut floor = Vec::new();
    let mut warm = Vec::new();
    for (j, r) in REMOTES.iter().enumerate() {
        let client = mesh.remote(r).clone();
        let mut rx = watch_endpoints(client.clone(), &mesh.ns, "floor");
        let api: Api<EndpointSlice> = Api::namespaced(client, &mesh.ns);
        for i in 0..CHANGES / REMOTES.len() + usize::from(j < CHANGES % REMOTES.len()) {
            let ready = i % 2 == 0;
            let body = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "floor", "labels": {"kubernetes.io/service-name": "floor"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.99.0.1"], "conditions": {"ready": ready}}]});
            let t0 = Instant::now();
            let apply = PatchParams::apply("bench").force();
            api.patch("floor", &apply, &Patch::Apply(&body)).await?;
            let at = wait_set(&mut rx, &[("10.99.0.1".to_string(), ready)].into()).await?;
            floor.push((at - t0).as_secs_f64());
            if i > 0 {
                warm.push((at - t0).as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((floor, warm))
}

/// Writes when nothing changed: the hub restarted, then each agent restarted.
async fn reconnect_writes(mesh: &mut Mesh) -> anyhow::Result<usize> {
    let w0: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_writes(r).len()).collect();
    mesh.kill_hub();
    mesh.start_hub()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_synced(mesh, REMOTES, Duration::from_secs(60)).await?;
    for r in REMOTES {
        mesh.kill_agent(r);
        mesh.start_agent(r)?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_synced(mesh, REMOTES, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(REMOTES
        .iter()
        .zip(&w0)
        .map(|(r, b)| mesh.agent_writes(r).len() - b)
        .sum())
}
