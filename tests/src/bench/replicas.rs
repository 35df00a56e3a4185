//! Sections 7 to 9 of `make bench`: several hub replicas. A failover (kill -9 of the replica that
//! serves every stream, two others ready behind the balancer): time until each stream is served
//! again. Sustained churn (one istiod pod change per second) under one hub: RemoteCluster status
//! writes per second, and hub, agent and central API server memory over time. Status settle after a
//! burst of changes with 1 and 3 replicas.

use super::{LoadGen, percentile, usage};
use crate::ControlPlanes;
use crate::balancer::Balancer;
use crate::controlplane::free_port;
use crate::mesh::Mesh;
use futures::StreamExt;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A mesh with `n` RemoteClusters and their identities; the load generator's settings for each,
/// dialling `hub_addr` (set later).
async fn identities(
    planes: &'static ControlPlanes,
    n: usize,
    remotes: &[&str],
) -> anyhow::Result<(Mesh, Vec<tether_agent::client::StreamConfig>)> {
    let mut mesh = Mesh::new(planes, remotes).await?;
    mesh.test_timing = false;
    mesh.log_filter = Some("warn".into());
    mesh.create_istiod().await?;
    let names: Vec<String> = (0..n).map(|i| format!("lg-{i}")).collect();
    let settings = super::fleet::stream_settings(&mesh, &names)?;
    let m = &mesh;
    futures::stream::iter(
        names
            .iter()
            .map(String::as_str)
            .chain(remotes.iter().copied()),
    )
    .map(|name| async move { m.create_remote_cluster(name, json!({})).await })
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<()>>>()?;
    Ok((mesh, settings))
}

/// The central kube-apiserver's pid (the first of the cluster's processes is etcd).
fn central_apiserver(mesh: &Mesh) -> u32 {
    *mesh
        .planes
        .get("central")
        .pids()
        .last()
        .expect("central runs")
}

async fn ready(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Mesh::admin_get(port, "/ready").await.map(|r| r.0).ok() != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "hub on admin port {port} not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub struct Failover {
    pub n: usize,
    pub back: usize,
    /// Per stream, from the kill to its first snapshot from another replica.
    pub times: Vec<f64>,
}

/// Three replicas behind a balancer; `n` streams all on the first (the others start after them);
/// kill -9 of that one.
pub async fn failover(planes: &'static ControlPlanes, n: usize) -> anyhow::Result<Failover> {
    println!("== failover: kill -9 of the replica serving {n} streams, two others ready");
    let (mut mesh, mut settings) = identities(planes, n, &[]).await?;
    let ids = ["hub-0", "hub-1", "hub-2"];
    let ports: Vec<(u16, u16)> = ids.iter().map(|_| (free_port(), free_port())).collect();
    let ns = mesh.ns.clone();
    let user = |id: &str| format!("tether-hub-{ns}-{id}");
    let (u0, (g0, a0)) = (user(ids[0]), ports[0]);
    mesh.start_replica(ids[0], &u0, g0, a0)?;
    ready(a0).await?;
    let upstreams = ports
        .iter()
        .map(|(g, _)| SocketAddr::from(([127, 0, 0, 1], *g)))
        .collect();
    let balancer = Balancer::start(upstreams).await?;
    for s in &mut settings {
        s.hub_addr = balancer.addr.to_string();
    }
    let mut load = LoadGen::start(settings);
    let got = load.wait_all(n, Duration::from_secs(300), |_| true).await;
    anyhow::ensure!(got.len() == n, "only {} of {n} connected", got.len());
    for (id, (g, a)) in ids.iter().zip(&ports).skip(1) {
        let u = user(id);
        mesh.start_replica(id, &u, *g, *a)?;
    }
    for (_, a) in &ports[1..] {
        ready(*a).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while load.seen.try_recv().is_ok() {}
    let t0 = Instant::now();
    mesh.kill_replica(ids[0]);
    let got = load.wait_all(n, Duration::from_secs(120), |_| true).await;
    let mut times: Vec<f64> = got.values().map(|at| (*at - t0).as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "  {} of {n} served again; p50 {:.2} s, p99 {:.2} s, all {:.2} s",
        got.len(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN)
    );
    load.stop();
    drop(balancer);
    Ok(Failover {
        n,
        back: got.len(),
        times,
    })
}

/// One sample of the sustained-churn run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at_secs: f64,
    pub writes: f64,
    pub hub_kib: u64,
    pub agent_kib: u64,
    pub apiserver_kib: u64,
}

pub struct Sustained {
    pub n: usize,
    pub secs: u64,
    pub changes: u64,
    /// Status writes per second over the whole run.
    pub writes_per_sec: f64,
    pub samples: Vec<Sample>,
    /// Remotes whose status did not read Synced at the end, and live views not acked.
    pub not_synced: usize,
}

/// One hub, `n` load-generator streams and one real agent (remote-1); one istiod pod change per
/// second for `secs`, sampled every `every`.
pub async fn sustained(
    planes: &'static ControlPlanes,
    n: usize,
    secs: u64,
    every: Duration,
) -> anyhow::Result<Sustained> {
    println!("== sustained churn: {n} streams, one change per second for {secs} s");
    let (mut mesh, settings) = identities(planes, n, &["remote-1"]).await?;
    mesh.start_hub()?;
    ready(mesh.hub_admin_port).await?;
    mesh.start_agent("remote-1")?;
    let mut load = LoadGen::start(settings);
    let got = load.wait_all(n, Duration::from_secs(300), |_| true).await;
    anyhow::ensure!(got.len() == n, "only {} of {n} connected", got.len());
    // The first statuses (Pending -> Synced; at 10,000 remotes they take minutes) are written
    // before the run starts.
    anyhow::ensure!(
        settled(&mesh, &[mesh.hub_admin_port], None, n + 1)
            .await?
            .is_some(),
        "statuses did not settle after connecting"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hub_pid = mesh.hub_pid().expect("started");
    let agent_pid = mesh.agent_pid("remote-1").expect("started");
    let apiserver = central_apiserver(&mesh);
    let writes = || Mesh::admin_metric(mesh.hub_admin_port, "tether_hub_status_writes_total");
    let w0 = writes().await;
    let t0 = Instant::now();
    let pods = mesh.central_pods();
    let mut samples = Vec::new();
    let mut changes = 0;
    let mut next_sample = t0;
    let mut ready_flag = false;
    while t0.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_sample {
            samples.push(Sample {
                at_secs: t0.elapsed().as_secs_f64(),
                writes: writes().await - w0,
                hub_kib: usage(hub_pid).rss_kib,
                agent_kib: usage(agent_pid).rss_kib,
                apiserver_kib: usage(apiserver).rss_kib,
            });
            next_sample += every;
        }
        crate::pods::set_pod_status(&pods, "istiod-b", &["10.10.0.2"], ready_flag).await?;
        ready_flag = !ready_flag;
        changes += 1;
        let next = t0 + Duration::from_secs(changes);
        tokio::time::sleep_until(next.into()).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let total = writes().await - w0;
    samples.push(Sample {
        at_secs: elapsed,
        writes: total,
        hub_kib: usage(hub_pid).rss_kib,
        agent_kib: usage(agent_pid).rss_kib,
        apiserver_kib: usage(apiserver).rss_kib,
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = mesh.remote_clusters().list(&Default::default()).await?;
    let not_synced = list
        .items
        .iter()
        .filter(|rc| rc.data["status"]["phase"] != "Synced")
        .count();
    let writes_per_sec = total / elapsed;
    println!(
        "  {changes} changes in {elapsed:.0} s: {total} status writes ({writes_per_sec:.2}/s); hub {} MiB, agent {} MiB, central API server {} MiB at the end; {not_synced} not Synced",
        samples.last().map_or(0, |s| s.hub_kib / 1024),
        samples.last().map_or(0, |s| s.agent_kib / 1024),
        samples.last().map_or(0, |s| s.apiserver_kib / 1024),
    );
    load.stop();
    Ok(Sustained {
        n,
        secs,
        changes,
        writes_per_sec,
        samples,
        not_synced,
    })
}

pub struct Settle {
    pub n: usize,
    pub replicas: usize,
    /// From the last of the burst's changes until every status reads Synced and every agent
    /// acknowledged the last state (the live views of all replicas); None past 5 minutes.
    pub settled_secs: Option<f64>,
    /// Status writes during the burst and until settled, all replicas together.
    pub writes: f64,
    /// Central API server CPU per change (the burst and the settling), beyond its idle rate.
    pub apiserver_cpu_per_change: f64,
    /// Its CPU with nothing changing, in cores.
    pub apiserver_idle: f64,
    /// The status writes by what they changed, most first.
    pub causes: Vec<(String, usize)>,
    /// The stream clients' reconnects meanwhile, by reason.
    pub reconnects: Vec<(String, u64)>,
}

/// `n` streams spread over `replicas` hub replicas; a burst of 20 readiness flips
/// (one every 500 ms); the time until every status and every agent has the last one.
pub async fn settle(
    planes: &'static ControlPlanes,
    n: usize,
    replicas: usize,
) -> anyhow::Result<Settle> {
    const CHANGES: usize = 20;
    println!("== status settle: {n} streams on {replicas} replica(s), {CHANGES} changes");
    let (mut mesh, mut settings) = identities(planes, n, &[]).await?;
    let ns = mesh.ns.clone();
    let ports: Vec<(u16, u16)> = (0..replicas).map(|_| (free_port(), free_port())).collect();
    for (i, (g, a)) in ports.iter().enumerate() {
        let id = format!("hub-{i}");
        mesh.start_replica(&id, &format!("tether-hub-{ns}-{id}"), *g, *a)?;
    }
    for (_, a) in &ports {
        ready(*a).await?;
    }
    // Each stream dials one replica, in turn, as a balancer would spread them (an in-process
    // balancer would hold three sockets per stream: 30,000 at 10,000 streams, over this process's
    // limit of open files).
    for (i, s) in settings.iter_mut().enumerate() {
        s.hub_addr = format!("127.0.0.1:{}", ports[i % replicas].0);
    }
    let mut load = LoadGen::start(settings);
    let got = load.wait_all(n, Duration::from_secs(300), |_| true).await;
    anyhow::ensure!(got.len() == n, "only {} of {n} connected", got.len());
    let admin: Vec<u16> = ports.iter().map(|(_, a)| *a).collect();
    let writes = || async {
        let mut sum = 0.0;
        for port in &admin {
            sum += Mesh::admin_metric(*port, "tether_hub_status_writes_total").await;
        }
        sum
    };
    // Every status first written (Pending -> Synced), then quiet.
    anyhow::ensure!(
        settled(&mesh, &admin, None, n).await?.is_some(),
        "statuses did not settle after connecting"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let apiserver = central_apiserver(&mesh);
    // What the central API server spends with nothing changing (Leases, watches, this bench's
    // polls), per second: subtracted below.
    let idle0 = (Instant::now(), usage(apiserver).cpu_secs);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_per_sec = (usage(apiserver).cpu_secs - idle0.1) / idle0.0.elapsed().as_secs_f64();
    let causes = WriteCauses::start(&mesh).await?;
    let reconnects0 = load.reconnects();
    let (w0, cpu0, t0) = (writes().await, usage(apiserver).cpu_secs, Instant::now());
    let pods = mesh.central_pods();
    let mut last_change = Instant::now();
    for i in 0..CHANGES {
        last_change = Instant::now();
        crate::pods::set_pod_status(&pods, "istiod-b", &["10.10.0.2"], i % 2 == 1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The last state's version, as the hub computes it: what every agent must have acknowledged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = Mesh::admin_get(admin[0], "/streams").await?;
    let live: serde_json::Value = serde_json::from_str(&body)?;
    let version = live
        .as_object()
        .and_then(|all| all.values().next())
        .and_then(|s| s["desiredVersion"].as_str())
        .unwrap_or_default()
        .to_string();
    let at = settled(&mesh, &admin, Some(&version), n).await?;
    let settled_secs = at.map(|at| (at - last_change).as_secs_f64());
    let (w1, cpu1) = (writes().await, usage(apiserver).cpu_secs);
    let causes = causes.stop();
    let reconnects: Vec<(String, u64)> = load
        .reconnects()
        .into_iter()
        .map(|(reason, n)| {
            (
                reason.clone(),
                n - reconnects0.get(&reason).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let beyond_idle = (cpu1 - cpu0) - idle_per_sec * t0.elapsed().as_secs_f64();
    let per_change = beyond_idle.max(0.0) / CHANGES as f64;
    println!(
        "  settled {}; {} status writes; central API server CPU per change {:.3} s beyond its idle {:.0}% of a core",
        settled_secs.map_or("> 300 s".into(), |s| format!("{s:.1} s")),
        w1 - w0,
        per_change,
        idle_per_sec * 100.0
    );
    for (cause, n) in &causes {
        println!("    {n} writes changed: {cause}");
    }
    println!("    stream clients' reconnects meanwhile: {reconnects:?}");
    load.stop();
    Ok(Settle {
        n,
        replicas,
        settled_secs,
        writes: w1 - w0,
        apiserver_cpu_per_change: per_change,
        apiserver_idle: idle_per_sec,
        causes,
        reconnects,
    })
}

/// When every one of the `n` RemoteClusters reads Synced and the live views of the replicas on
/// `admin` have every stream acknowledging `version` (any, if None); polled every 500 ms, up to 5
/// minutes.
async fn settled(
    mesh: &Mesh,
    admin: &[u16],
    version: Option<&str>,
    n: usize,
) -> anyhow::Result<Option<Instant>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let list = mesh.remote_clusters().list(&Default::default()).await?;
        let synced = list
            .items
            .iter()
            .filter(|rc| rc.data["status"]["phase"] == "Synced")
            .count();
        let mut acked = std::collections::HashSet::new();
        for port in admin {
            let Ok((200, body)) = Mesh::admin_get(*port, "/streams").await else {
                continue;
            };
            let live: serde_json::Value = serde_json::from_str(&body)?;
            for (name, s) in live.as_object().into_iter().flatten() {
                let desired = s["desiredVersion"].as_str().unwrap_or("");
                if s["streams"].as_u64().is_some_and(|c| c > 0)
                    && !desired.is_empty()
                    && s["ackedVersion"] == desired
                    && version.is_none_or(|v| v == desired)
                {
                    acked.insert(name.clone());
                }
            }
        }
        if synced == n && acked.len() == n {
            return Ok(Some(Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(None)
}

/// What each status write changed, counted by what it changed together ("phase Synced ->
/// Connected; Synced True/Acked -> False/Pending", "agent.hub", ...): started before a burst, read
/// after it, so the report says what the writes were for, not only how many.
pub struct WriteCauses {
    counts: std::sync::Arc<std::sync::Mutex<Causes>>,
    task: tokio::task::JoinHandle<()>,
}

/// By what a write changed: how many, the first and the last (seconds from the start).
type Causes = std::collections::BTreeMap<String, (usize, f64, f64)>;

impl WriteCauses {
    pub async fn start(mesh: &Mesh) -> anyhow::Result<Self> {
        let list = mesh.remote_clusters().list(&Default::default()).await?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let mut last: std::collections::HashMap<String, serde_json::Value> = list
            .items
            .into_iter()
            .map(|rc| {
                (
                    rc.metadata.name.clone().unwrap_or_default(),
                    rc.data["status"].clone(),
                )
            })
            .collect();
        let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let started = Instant::now();
        let out = counts.clone();
        let task = mesh.watch_remote_clusters(version, move |rc| {
            let name = rc.metadata.name.clone().unwrap_or_default();
            let new = rc.data["status"].clone();
            let old = last.insert(name, new.clone()).unwrap_or_default();
            let cause = status_changes(&old, &new).join("; ");
            let at = started.elapsed().as_secs_f64();
            let mut out = out.lock().unwrap();
            let e = out.entry(cause).or_insert((0, at, at));
            e.0 += 1;
            e.2 = at;
        });
        Ok(Self { counts, task })
    }

    /// Writes by what they changed, most first, each with when the first and the last were seen.
    pub fn stop(self) -> Vec<(String, usize)> {
        self.task.abort();
        let mut all: Vec<_> = self
            .counts
            .lock()
            .unwrap()
            .iter()
            .map(|(c, (n, first, last))| (format!("{c} (from {first:.1} s to {last:.1} s)"), *n))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }
}

/// What changed between two statuses of one RemoteCluster: the phase and each condition with their
/// values, other fields by path; "(nothing)" when the status is equal.
fn status_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if old["phase"] != new["phase"] {
        out.push(format!("phase {} -> {}", old["phase"], new["phase"]));
    }
    let conditions =
        |s: &serde_json::Value| -> std::collections::BTreeMap<String, serde_json::Value> {
            s["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["type"].as_str().unwrap_or("").to_string(), c.clone()))
                .collect()
        };
    let (before, after) = (conditions(old), conditions(new));
    let summary = |c: Option<&serde_json::Value>| {
        c.map_or("none".to_string(), |c| {
            format!(
                "{}/{} ({:?})",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
    };
    for ty in before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (b, a) = (before.get(ty), after.get(ty));
        if summary(b) != summary(a) {
            out.push(format!("{ty} {} -> {}", summary(b), summary(a)));
        } else if b != a {
            let fields = ["lastTransitionTime", "observedGeneration"];
            for f in fields
                .iter()
                .filter(|f| b.map(|b| &b[**f]) != a.map(|a| &a[**f]))
            {
                out.push(format!("{ty}.{f}"));
            }
        }
    }
    for (key, value) in new.as_object().into_iter().flatten() {
        if key != "phase" && key != "conditions" && old[key] != *value {
            match (value.as_object(), old[key].as_object()) {
                (Some(n), Some(o)) => out.extend(
                    n.keys()
                        .chain(o.keys())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .filter(|k| n.get(*k) != o.get(*k))
                        .map(|k| format!("{key}.{k}")),
                ),
                _ => out.push(key.clone()),
            }
        }
    }
    if out.is_empty() {
        out.push("(nothing)".into());
    }
    out
}
