//! Section 1 of `make bench`: a central cluster and 3 remotes, 600 changes to the istiod pods on
//! Tether and 600 on the prior art's direct push, in alternating rounds, from the central write to
//! the remote's EndpointSlice watch event; against the floor (one server-side apply and its watch
//! event on the same API servers). Twice, each time with both sides writing the same objects: (a) the
//! EndpointSlice and the legacy Endpoints (Tether as installed), (b) the EndpointSlice only (Tether
//! with `legacyEndpoints: false`). Part (a) also measures the agents' footprint (section 2) and
//! their API writes (section 3).

use super::direct::DirectPush;
use super::{Usage, ms, percentile, usage};
use crate::ControlPlanes;
use crate::mesh::Mesh;
use crate::pods::set_pod_status;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub const REMOTES: &[&str] = &["remote-1", "remote-2", "remote-3"];
/// Changes measured on each side. 200 left the p50 ratio moving by 0.05x from run to run (the
/// median of a few hundred samples of two clusters, near 12 and 21 ms); with three times as many the
/// p50 ratio's interval (`Comparison::interval`) is about +-0.05x, the target's own size, and p99's
/// still about +-0.15x (measured in docs/benchmarks.md).
pub const CHANGES: usize = 600;

/// Tether against the prior art's direct push (`bench::direct`), both writing the same objects, in
/// alternating rounds.
pub struct Comparison {
    /// Central write -> remote EndpointSlice event, seconds (each change x each remote).
    pub tether: Vec<f64>,
    /// As many changes through the direct push, in the rounds between.
    pub direct: Vec<f64>,
    /// The kind of change of each Tether sample (0 readiness flip, 1 new pod, 2 deleted pod).
    pub kinds: Vec<usize>,
    /// The kind of change of each direct-push sample.
    pub direct_kinds: Vec<usize>,
    /// Each agent's writes for Tether's changes, and the direct push's for its changes, per remote.
    pub writes: Vec<usize>,
    pub direct_writes: Vec<usize>,
    /// CPU per change, milliseconds: the hub and agents in Tether's rounds, the direct push in its
    /// own; the central API server and etcd, and the remotes', in Tether's rounds and in the
    /// direct push's.
    pub cpu_ms: CpuPerChange,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPerChange {
    pub tether: f64,
    pub direct: f64,
    pub central: [f64; 2],
    pub remotes: [f64; 2],
}

impl std::fmt::Display for CpuPerChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hub and agents {:.2} ms, direct push {:.2} ms; the central API server and etcd {:.2} ms in Tether's rounds, {:.2} ms in the direct push's; the remotes' {:.2} ms and {:.2} ms",
            self.tether,
            self.direct,
            self.central[0],
            self.central[1],
            self.remotes[0],
            self.remotes[1]
        )
    }
}

impl Comparison {
    /// Tether / direct push at percentile `p`.
    pub fn ratio(&self, p: f64) -> f64 {
        percentile(&self.tether, p) / percentile(&self.direct, p)
    }

    /// A 95% interval of [`Comparison::ratio`], by resampling whole pairs of rounds (a Tether round
    /// and the direct push's round after it) with replacement: the samples of one change, and of
    /// changes close in time, are not independent, and a round keeps them together.
    pub fn interval(&self, p: f64) -> (f64, f64) {
        ratio_interval(&self.tether, &self.direct, ROUND * REMOTES.len(), p)
    }

    fn of(churn: &Churn) -> Self {
        let per_sample = |kinds: &[usize]| -> Vec<usize> {
            kinds
                .iter()
                .flat_map(|k| std::iter::repeat_n(*k, REMOTES.len()))
                .collect()
        };
        Comparison {
            tether: churn.latencies.clone(),
            direct: churn.direct.clone(),
            kinds: per_sample(&churn.kinds),
            direct_kinds: per_sample(&churn.direct_kinds),
            writes: churn.writes.clone(),
            direct_writes: churn.direct_writes.clone(),
            cpu_ms: churn.cpu_per_change(),
        }
    }
}

pub struct Propagation {
    /// Tether as installed (EndpointSlices and legacy Endpoints) against a direct push that writes
    /// both too, as the prior art did.
    pub with_endpoints: Comparison,
    /// Tether with `legacyEndpoints: false` against a direct push that writes only the slice.
    pub slices_only: Comparison,
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
        // kube's store swaps a relist in whole once it is done: no partial set is ever shown.
        let (slices, writer) = reflector::store();
        let mut stream = reflector(writer, watcher(api, cfg)).boxed();
        while let Some(ev) = stream.next().await {
            let at = Instant::now();
            if !matches!(
                ev,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
            ) {
                continue;
            }
            let set = slices
                .state()
                .iter()
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

/// Central + 3 remotes, [`CHANGES`] changes: propagation, and from the same run the footprint and the write
/// amplification.
pub async fn run(planes: &'static ControlPlanes) -> anyhow::Result<Propagation> {
    println!("== propagation: central + 3 remotes, {CHANGES} pod changes");
    let mut mesh = synced_mesh(planes).await?;
    let mut watches: Vec<_> = REMOTES
        .iter()
        .map(|r| watch_endpoints(mesh.remote(r).clone(), &mesh.ns, "istiod"))
        .collect();
    let direct_ns = super::direct::namespace(&mesh.ns);
    for r in REMOTES {
        crate::mesh::create_namespace(mesh.remote(r), &direct_ns).await?;
    }
    let direct = DirectPush::start(&mesh, REMOTES, true)?;
    let mut direct_watches: Vec<_> = REMOTES
        .iter()
        .map(|r| watch_endpoints(mesh.remote(r).clone(), &direct_ns, super::direct::SERVICE))
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
    let hub_before = usage(hub);
    let cut_before = cut_short(&mesh).await;

    let churn = churn(
        &mesh,
        &direct,
        &mut watches,
        &mut direct_watches,
        &mut want,
        &agents,
    )
    .await?;
    let churned: Vec<Usage> = agents.iter().map(|p| usage(*p)).collect();
    let hub_churn = usage(hub);
    let per_kind = churn.writes_per_kind();
    let per_change = |c: &f64| format!("{:.2} ms", c * 1000.0 / CHANGES as f64);
    println!(
        "  CPU per change in Tether's rounds: agents {}; hub {}. Agents' RSS steady {:?} KiB, peak {:?} KiB",
        churn.cpu[..agents.len()]
            .iter()
            .map(per_change)
            .collect::<Vec<_>>()
            .join(", "),
        per_change(&churn.cpu[agents.len()]),
        steady.iter().map(|u| u.rss_kib).collect::<Vec<_>>(),
        churned.iter().map(|u| u.peak_kib).collect::<Vec<_>>(),
    );
    let with_endpoints = Comparison::of(&churn);
    println!("  with legacy Endpoints: {}", by_kind(&with_endpoints));
    let cut: Vec<f64> = cut_short(&mesh)
        .await
        .iter()
        .zip(cut_before)
        .map(|(a, b)| a - b)
        .collect();
    println!(
        "  the agents in those rounds: {} states cut short after their slices, {} of them while their Endpoints write was out; {} applied while a newer one waited",
        cut[0], cut[1], cut[2]
    );
    println!("  CPU per change: {}", with_endpoints.cpu_ms);
    // The same again with EndpointSlices only, on both sides.
    slices_only(&mesh).await?;
    drop(direct);
    let direct = DirectPush::start(&mesh, REMOTES, false)?;
    let slim = self::churn(
        &mesh,
        &direct,
        &mut watches,
        &mut direct_watches,
        &mut want,
        &agents,
    )
    .await?;
    drop(direct);
    let slices_only = Comparison::of(&slim);
    println!("  slices only: {}", by_kind(&slices_only));
    println!("  CPU per change: {}", slices_only.cpu_ms);
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
                churn_cpu: churn.cpu[i] / churn.secs,
            })
            .collect(),
        hub_rss_kib: hub_before.rss_kib,
        hub_peak_kib: hub_churn.peak_kib,
        hub_churn_cpu: churn.cpu[agents.len()] / churn.secs,
    };
    for (what, c) in [
        ("with legacy Endpoints", &with_endpoints),
        ("slices only", &slices_only),
    ] {
        let (i50, i99) = (c.interval(50.0), c.interval(99.0));
        println!(
            "propagation, {what}: p50/p99 {} / {}; direct push {} / {}; ratio {:.2}x ({:.2}-{:.2}) / {:.2}x ({:.2}-{:.2}); writes {:?}, direct push {:?}",
            ms(percentile(&c.tether, 50.0)),
            ms(percentile(&c.tether, 99.0)),
            ms(percentile(&c.direct, 50.0)),
            ms(percentile(&c.direct, 99.0)),
            c.ratio(50.0),
            i50.0,
            i50.1,
            c.ratio(99.0),
            i99.0,
            i99.1,
            c.writes,
            c.direct_writes,
        );
    }
    println!(
        "floor {} / {}; reconnect writes {reconnect}",
        ms(percentile(&floor, 50.0)),
        ms(percentile(&floor, 99.0)),
    );
    Ok(Propagation {
        with_endpoints,
        slices_only,
        floor,
        floor_warm,
        footprint,
        writes: Writes {
            per_kind,
            reconnect,
        },
    })
}

/// The agents' states cut short, overtaken while their Endpoints write was out, and applied while
/// a newer one waited, summed over the remotes (from their metrics).
async fn cut_short(mesh: &Mesh) -> [f64; 3] {
    let mut sum = [0.0; 3];
    for r in REMOTES {
        let port = mesh.agent_admin_ports[*r];
        for (i, name) in [
            "tether_agent_snapshots_superseded_total",
            "tether_agent_snapshots_overtaken_total",
            "tether_agent_snapshots_answered_by_newer_total",
        ]
        .into_iter()
        .enumerate()
        {
            sum[i] += Mesh::admin_metric(port, name).await;
        }
    }
    sum
}

/// The hub (production defaults) and an agent per remote, every remote Synced.
async fn synced_mesh(planes: &'static ControlPlanes) -> anyhow::Result<Mesh> {
    let mut mesh = Mesh::new(planes, REMOTES).await?;
    mesh.test_timing = false;
    // TETHER_BENCH_LOG: the hub's and agents' log filter, for a timeline of one run (debug logs
    // cost time on the path measured).
    mesh.log_filter = Some(std::env::var("TETHER_BENCH_LOG").unwrap_or_else(|_| "info".into()));
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

/// Sets `legacyEndpoints: false` on every remote and waits until each agent removed its Endpoints
/// and acknowledged the state.
async fn slices_only(mesh: &Mesh) -> anyhow::Result<()> {
    for r in REMOTES {
        mesh.create_remote_cluster(r, json!({"legacyEndpoints": false}))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in REMOTES {
        let endpoints: Api<Endpoints> = Api::namespaced(mesh.remote(r).clone(), &mesh.ns);
        while endpoints.get_opt("istiod").await?.is_some() || mesh.live_synced(r).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{r} kept its Endpoints 30 s after legacyEndpoints: false"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Percentile-bootstrap 95% interval of `percentile(a, p) / percentile(b, p)`, resampling blocks of
/// `block` samples, the i-th block of `a` with the i-th of `b`. Seeded: a rerun on the same samples
/// gives the same interval. (0, 0) when either side has less than one block.
pub fn ratio_interval(a: &[f64], b: &[f64], block: usize, p: f64) -> (f64, f64) {
    const RESAMPLES: usize = 2000;
    let blocks = a.len().min(b.len()) / block.max(1);
    if blocks == 0 {
        return (0.0, 0.0);
    }
    let mut rng = fastrand::Rng::with_seed(0x7e7e);
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            ra.clear();
            rb.clear();
            for _ in 0..blocks {
                let i = rng.usize(..blocks) * block;
                ra.extend_from_slice(&a[i..i + block]);
                rb.extend_from_slice(&b[i..i + block]);
            }
            percentile(&ra, p) / percentile(&rb, p)
        })
        .collect();
    ratios.sort_by(|x, y| x.total_cmp(y));
    (
        ratios[RESAMPLES * 25 / 1000],
        ratios[RESAMPLES * 975 / 1000 - 1],
    )
}

/// p50 / p99 of each kind of change, Tether against the direct push.
pub fn by_kind(c: &Comparison) -> String {
    ["readiness flip", "new pod", "deleted pod"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let pick = |v: &[f64], kinds: &[usize]| -> Vec<f64> {
                v.iter()
                    .zip(kinds)
                    .filter(|(_, kind)| **kind == k)
                    .map(|(x, _)| *x)
                    .collect()
            };
            let (t, d) = (pick(&c.tether, &c.kinds), pick(&c.direct, &c.direct_kinds));
            format!(
                "{name} {} / {} against {} / {}",
                ms(percentile(&t, 50.0)),
                ms(percentile(&t, 99.0)),
                ms(percentile(&d, 50.0)),
                ms(percentile(&d, 99.0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Changes in a row on one architecture before the other takes over.
pub const ROUND: usize = 10;
// Whole rounds, the last one the direct push's, so the run ends with the hub stopped.
const _: () = assert!((2 * CHANGES).is_multiple_of(2 * ROUND));

/// What the changes measured: [`CHANGES`] on Tether and as many on the direct push, in alternating
/// rounds of [`ROUND`].
struct Churn {
    latencies: Vec<f64>,
    /// The direct push's latencies for its changes.
    direct: Vec<f64>,
    /// Time spent in Tether's rounds.
    secs: f64,
    /// CPU seconds in Tether's rounds: each agent, then the hub.
    cpu: Vec<f64>,
    /// CPU seconds of the direct push process in its rounds.
    direct_cpu: f64,
    /// CPU seconds of the central API server and etcd, and of the remotes', in Tether's rounds
    /// (`[0]`) and in the direct push's (`[1]`).
    planes_cpu: [[f64; 2]; 2],
    /// The kind of each change (0 readiness flip, 1 new pod, 2 deleted pod), in order, per side.
    kinds: Vec<usize>,
    direct_kinds: Vec<usize>,
    /// remote-1's writes by the kind of change that caused them.
    by_kind: [usize; 3],
    /// Each agent's writes for Tether's changes, and the direct push's for its changes, per remote.
    writes: Vec<usize>,
    direct_writes: Vec<usize>,
}

impl Churn {
    /// CPU per change on each side: its own processes, and the API servers with their etcds.
    fn cpu_per_change(&self) -> CpuPerChange {
        let per = |secs: f64| secs * 1000.0 / CHANGES as f64;
        CpuPerChange {
            tether: per(self.cpu.iter().sum()),
            direct: per(self.direct_cpu),
            central: [per(self.planes_cpu[0][0]), per(self.planes_cpu[1][0])],
            remotes: [per(self.planes_cpu[0][1]), per(self.planes_cpu[1][1])],
        }
    }

    /// remote-1's writes per change of each kind.
    fn writes_per_kind(&self) -> Vec<f64> {
        (0..3)
            .map(|k| {
                self.by_kind[k] as f64
                    / self.kinds.iter().filter(|x| **x == k).count().max(1) as f64
            })
            .collect()
    }
}

/// A side stopped (SIGSTOP) while the other is measured, so it neither competes for the machine nor
/// writes; continued when dropped, also if the benchmark fails mid-round.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        // SAFETY: kill(2) on the pid of a child the mesh started and has not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// Tether's counters at the start of one of its rounds.
struct Mark {
    at: Instant,
    usage: Vec<Usage>,
    writes: Vec<usize>,
}

fn mark(pids: &[u32], writes: Vec<usize>) -> Mark {
    Mark {
        at: Instant::now(),
        usage: pids.iter().map(|p| usage(*p)).collect(),
        writes,
    }
}

/// Writes of a change are done when the count stays still this long after the remote showed it.
const WRITES_SETTLE: Duration = Duration::from_millis(100);

/// Waits until `count` (writes per remote) stays still for [`WRITES_SETTLE`], and returns it: a
/// write is counted when it returns, which may be after the watch event a latency is measured at
/// (for an agent, its second write, the legacy Endpoints, comes after the EndpointSlice).
async fn settled(count: impl Fn() -> Vec<usize>) -> Vec<usize> {
    let mut last = count();
    loop {
        tokio::time::sleep(WRITES_SETTLE).await;
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Adds `now - since` to `total`, remote by remote.
fn add_since(total: &mut [usize], now: &[usize], since: &[usize]) {
    for (t, (n, s)) in total.iter_mut().zip(now.iter().zip(since)) {
        *t += n - s;
    }
}

/// 2 x [`CHANGES`] changes, one at a time: readiness flips, new pods (a new IP), deleted pods (an IP
/// gone). Tether and the direct push take turns, [`ROUND`] changes each, so each is measured with
/// the machine and the remote API servers to itself: run side by side, the second writer of each
/// change queues behind the first's write on the same API server. In Tether's rounds the direct push
/// is stopped; in its rounds the hub is. Each round starts once the side taking over has
/// caught up with the pods; what catching up wrote and cost is not counted.
async fn churn(
    mesh: &Mesh,
    push: &DirectPush,
    watches: &mut [tokio::sync::watch::Receiver<(Instant, EndpointSet)>],
    direct: &mut [tokio::sync::watch::Receiver<(Instant, EndpointSet)>],
    want: &mut EndpointSet,
    agents: &[u32],
) -> anyhow::Result<Churn> {
    let pods = mesh.central_pods();
    let hub = mesh.hub_pid().expect("hub running");
    let pids: Vec<u32> = agents.iter().copied().chain([hub]).collect();
    let mut out = Churn {
        latencies: Vec::new(),
        direct: Vec::new(),
        secs: 0.0,
        cpu: vec![0.0; pids.len()],
        direct_cpu: 0.0,
        planes_cpu: [[0.0; 2]; 2],
        kinds: Vec::new(),
        direct_kinds: Vec::new(),
        by_kind: [0; 3],
        writes: vec![0; REMOTES.len()],
        direct_writes: vec![0; REMOTES.len()],
    };
    let direct_count = || push.writes();
    let agent_count =
        || -> Vec<usize> { REMOTES.iter().map(|r| mesh.agent_write_count(r)).collect() };
    let mut b_ready = want.contains(&("10.10.0.2".to_string(), true));
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
    // One side stopped at a time: the direct push in Tether's rounds, the hub in its own.
    let mut direct_frozen = Some(Frozen::new(push.pid()));
    let mut hub_frozen: Option<Frozen> = None;
    let mut tether_mark = Some(mark(&pids, agent_count()));
    let mut direct_mark: Vec<usize> = Vec::new();
    let mut written = tether_mark.as_ref().expect("set").writes[0];
    // The API servers' and etcds' CPU, and the direct push's, since the current round began.
    let central = mesh.planes.get("central").pids();
    let remotes: Vec<u32> = REMOTES
        .iter()
        .flat_map(|c| mesh.planes.get(c).pids())
        .collect();
    let sum = |pids: &[u32]| -> f64 { pids.iter().map(|p| usage(*p).cpu_secs).sum() };
    let cpu_of = || [sum(&central), sum(&remotes)];
    let add = |total: &mut [f64; 2], since: [f64; 2]| {
        let now = cpu_of();
        total[0] += now[0] - since[0];
        total[1] += now[1] - since[1];
    };
    let mut planes_mark = cpu_of();
    let mut direct_cpu_mark = 0.0;
    for i in 0..2 * CHANGES {
        let tether = (i / ROUND).is_multiple_of(2);
        if i > 0 && i % ROUND == 0 {
            if tether {
                add_since(
                    &mut out.direct_writes,
                    &settled(direct_count).await,
                    &direct_mark,
                );
                out.direct_cpu += usage(push.pid()).cpu_secs - direct_cpu_mark;
                add(&mut out.planes_cpu[1], planes_mark);
                direct_frozen = Some(Frozen::new(push.pid()));
                hub_frozen = None;
                for w in watches.iter_mut() {
                    wait_set(w, want).await?;
                }
                let m = mark(&pids, settled(agent_count).await);
                written = m.writes[0];
                tether_mark = Some(m);
                planes_mark = cpu_of();
            } else {
                let now = settled(agent_count).await;
                let m = tether_mark.take().expect("in a Tether round");
                out.by_kind[(i - 1) % 3] += now[0] - written;
                add_since(&mut out.writes, &now, &m.writes);
                for (c, (p, u)) in out.cpu.iter_mut().zip(pids.iter().zip(&m.usage)) {
                    *c += usage(*p).cpu_secs - u.cpu_secs;
                }
                out.secs += (m.at.elapsed() - WRITES_SETTLE).as_secs_f64();
                add(&mut out.planes_cpu[0], planes_mark);
                hub_frozen = Some(Frozen::new(hub));
                direct_frozen = None;
                for w in direct.iter_mut() {
                    wait_set(w, want).await?;
                }
                direct_mark = settled(direct_count).await;
                direct_cpu_mark = usage(push.pid()).cpu_secs;
                planes_mark = cpu_of();
            }
        } else if tether && i > 0 {
            let now = mesh.agent_write_count("remote-1");
            out.by_kind[(i - 1) % 3] += now - written;
            written = now;
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
        let (rxs, samples, kinds) = if tether {
            (&mut *watches, &mut out.latencies, &mut out.kinds)
        } else {
            (&mut *direct, &mut out.direct, &mut out.direct_kinds)
        };
        for w in rxs.iter_mut() {
            let at = wait_set(w, want).await?;
            samples.push((at - t0).as_secs_f64());
        }
        kinds.push(i % 3);
        // A pause as between real changes, so each is measured on its own.
        tokio::time::sleep(pause).await;
    }
    // The last round is the direct push's (see the assertion under ROUND).
    add_since(
        &mut out.direct_writes,
        &settled(direct_count).await,
        &direct_mark,
    );
    out.direct_cpu += usage(push.pid()).cpu_secs - direct_cpu_mark;
    add(&mut out.planes_cpu[1], planes_mark);
    let _direct_frozen = Frozen::new(push.pid());
    drop((direct_frozen, hub_frozen));
    for w in watches.iter_mut() {
        wait_set(w, want).await?;
    }
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
    let w0: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_write_count(r)).collect();
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
        .map(|(r, b)| mesh.agent_write_count(r) - b)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::ratio_interval;

    #[test]
    fn the_ratio_interval_holds_the_true_ratio_and_narrows_with_more_rounds() {
        // Two sides with the same spread, one 4% slower.
        let side = |scale: f64, n: usize| -> Vec<f64> {
            let mut rng = fastrand::Rng::with_seed(n as u64);
            (0..n).map(|_| scale * (10.0 + 10.0 * rng.f64())).collect()
        };
        let (lo, hi) = ratio_interval(&side(1.04, 600), &side(1.0, 601), 30, 50.0);
        assert!(lo < 1.04 && 1.04 < hi, "({lo}, {hi})");
        let (lo3, hi3) = ratio_interval(&side(1.04, 1800), &side(1.0, 1801), 30, 50.0);
        assert!(lo3 < 1.04 && 1.04 < hi3, "({lo3}, {hi3})");
        assert!(hi3 - lo3 < hi - lo, "({lo3}, {hi3}) against ({lo}, {hi})");
        // The same samples on both sides: exactly 1.
        let same = side(1.0, 300);
        assert_eq!(ratio_interval(&same, &same, 30, 50.0), (1.0, 1.0));
        // Fewer samples than a block: no interval.
        assert_eq!(ratio_interval(&same[..10], &same, 30, 50.0), (0.0, 0.0));
    }
}
