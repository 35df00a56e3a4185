//! `make bench`: how fast and how cheaply Tether moves a changed control-plane pod into every remote.
//! Real kube-apiservers and etcd on loopback, the hub and agents as release-built processes over
//! mTLS. Prints figures and rewrites docs/benchmarks.md. Not a test: nothing here passes or fails.
//!
//! 1. propagation: central + 3 remotes, 200 pod changes, central write -> remote watch event;
//!    against the floor (one server-side apply and its watch event on the same API servers).
//!    The same run gives agent footprint and write amplification.
//! 2. fan-out: N load-generator streams (the agent's stream client, ACKing without an API server).
//! 3. reconnect storm: the hub killed and restarted under 1,000 streams.
//!
//! `TETHER_BENCH_STREAMS` (default `100,1000,10000`) sets the fan-out sizes.

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tether_tests::ControlPlanes;
use tether_tests::bench::{CpuPeak, LoadGen, ms, percentile, usage};
use tether_tests::mesh::Mesh;
use tether_tests::pods::set_pod_status;

const REMOTES: &[&str] = &["remote-1", "remote-2", "remote-3"];
const CHANGES: usize = 200;
const FANOUT_CHANGES: usize = 20;

type EndpointSet = BTreeSet<(String, bool)>;

/// The latest endpoint set of `service` on a cluster, and when the watch event that made it arrived.
fn watch_endpoints(
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

fn summary(v: &[f64]) -> String {
    format!(
        "| {} | {} | {} | {} |",
        ms(percentile(v, 50.0)),
        ms(percentile(v, 90.0)),
        ms(percentile(v, 99.0)),
        ms(percentile(v, 100.0))
    )
}

async fn metric(port: u16, name: &str) -> f64 {
    match Mesh::admin_get(port, "/metrics").await {
        Ok((_, text)) => tether_tests::metric(&text, name),
        Err(_) => 0.0,
    }
}

async fn wait_synced(mesh: &Mesh, names: &[&str], timeout: Duration) -> anyhow::Result<()> {
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

/// Central + 3 remotes, 200 changes. Also agent footprint and write amplification.
async fn propagation(planes: &'static ControlPlanes, out: &mut String) -> anyhow::Result<()> {
    println!("== propagation: central + 3 remotes, {CHANGES} pod changes");
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
    let mut watches: Vec<_> = REMOTES
        .iter()
        .map(|r| watch_endpoints(mesh.remote(r).clone(), &mesh.ns, "istiod"))
        .collect();
    let mut want: EndpointSet = [("10.10.0.1".into(), true), ("10.10.0.2".into(), true)].into();
    for w in &mut watches {
        wait_set(w, &want).await?;
    }

    // Steady footprint: 10 s with nothing changing.
    let agent_pids: Vec<u32> = REMOTES.iter().filter_map(|r| mesh.agent_pid(r)).collect();
    let hub_pid = mesh.hub_pid().expect("hub running");
    let before: Vec<_> = agent_pids.iter().map(|p| usage(*p)).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady: Vec<_> = agent_pids.iter().map(|p| usage(*p)).collect();
    let steady_cpu: Vec<f64> = before
        .iter()
        .zip(&steady)
        .map(|(a, b)| (b.cpu_secs - a.cpu_secs) / 10.0)
        .collect();
    let writes_before: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_writes(r).len()).collect();
    let hub_before = usage(hub_pid);

    // 200 changes: readiness flips, new pods (a new IP), deleted pods (an IP gone).
    let pods = mesh.central_pods();
    let mut latencies: Vec<f64> = Vec::new();
    let started = Instant::now();
    let mut b_ready = true;
    let mut extra: Option<(String, String)> = None;
    let mut k = 0usize;
    let mut kinds = Vec::new();
    // API writes on remote-1 by the kind of change that caused them.
    let mut by_kind = [0usize; 3];
    let mut last_writes = mesh.agent_writes("remote-1").len();
    for i in 0..CHANGES {
        if let Some(prev) = kinds.last() {
            let now = mesh.agent_writes("remote-1").len();
            by_kind[*prev] += now - last_writes;
            last_writes = now;
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
                let pod =
                    tether_tests::pods::mk_pod(&name, &[("app", "istiod")], &[("grpc-xds", 15010)]);
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
        for w in &mut watches {
            let at = wait_set(w, &want).await?;
            latencies.push((at - t0).as_secs_f64());
        }
        kinds.push(i % 3);
        // A pause as between real changes, so each is measured on its own.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let churn_secs = started.elapsed().as_secs_f64();
    let churned: Vec<_> = agent_pids.iter().map(|p| usage(*p)).collect();
    let churn_cpu: Vec<f64> = steady
        .iter()
        .zip(&churned)
        .map(|(a, b)| (b.cpu_secs - a.cpu_secs) / churn_secs)
        .collect();
    let hub_churn = usage(hub_pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(prev) = kinds.last() {
        by_kind[*prev] += mesh.agent_writes("remote-1").len() - last_writes;
    }
    let per_kind: Vec<f64> = (0..3)
        .map(|k| by_kind[k] as f64 / kinds.iter().filter(|x| **x == k).count().max(1) as f64)
        .collect();
    let writes: Vec<usize> = REMOTES
        .iter()
        .zip(&writes_before)
        .map(|(r, b)| mesh.agent_writes(r).len() - b)
        .collect();

    // Floor: one server-side apply of an EndpointSlice and its watch event, same API servers.
    let mut floor = Vec::new();
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
            api.patch(
                "floor",
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&body),
            )
            .await?;
            let at = wait_set(&mut rx, &[("10.99.0.1".to_string(), ready)].into()).await?;
            floor.push((at - t0).as_secs_f64());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Reconnects with nothing changed: hub restart, then each agent restarted.
    let w0: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_writes(r).len()).collect();
    mesh.kill_hub();
    mesh.start_hub()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_synced(&mesh, REMOTES, Duration::from_secs(60)).await?;
    for r in REMOTES {
        mesh.kill_agent(r);
        mesh.start_agent(r)?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_synced(&mesh, REMOTES, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reconnect_writes: usize = REMOTES
        .iter()
        .zip(&w0)
        .map(|(r, b)| mesh.agent_writes(r).len() - b)
        .sum();

    let p99 = percentile(&latencies, 99.0);
    let floor_p99 = percentile(&floor, 99.0);
    let ratio50 = percentile(&latencies, 50.0) / percentile(&floor, 50.0);
    let ratio99 = p99 / floor_p99;
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let _ = writeln!(
        out,
        "## 1. Propagation latency (central + 3 remotes)\n\n\
         {CHANGES} changes to the central istiod pods, one at a time (a readiness flip, a new pod with a new IP, \
         a deleted pod, in turn), {} samples (each change x 3 remotes). Time from just before the central \
         write until a watch on the remote delivers the EndpointSlice that shows it. Floor: one server-side \
         apply of an EndpointSlice on the remote API servers and its watch event ({} samples).\n\n\
         | | p50 | p90 | p99 | max |\n| --- | --- | --- | --- | --- |\n\
         | central write -> remote EndpointSlice event | {}\n\
         | floor: SSA write -> watch event | {}\n\n\
         Latency / floor: **{ratio50:.1}x at p50, {ratio99:.1}x at p99**. \
         Target: p99 under 50 ms ({}); within 3x of the floor: at p50 {}, at p99 {}.\n",
        latencies.len(),
        floor.len(),
        &summary(&latencies)[2..],
        &summary(&floor)[2..],
        if p99 < 0.050 { "met" } else { "not met" },
        if ratio50 <= 3.0 { "met" } else { "not met" },
        if ratio99 <= 3.0 { "met" } else { "not met" },
    );
    let _ = writeln!(
        out,
        "## 3. Footprint (release build)\n\n\
         | process | RSS steady | peak RSS | CPU steady (10 s idle) | CPU during the {CHANGES} changes ({churn_secs:.1} s) |\n\
         | --- | --- | --- | --- | --- |"
    );
    for (i, r) in REMOTES.iter().enumerate() {
        let _ = writeln!(
            out,
            "| agent {r} | {} | {} | {:.2}% of a core | {:.1}% of a core |",
            mib(steady[i].rss_kib),
            mib(churned[i].peak_kib),
            steady_cpu[i] * 100.0,
            churn_cpu[i] * 100.0
        );
    }
    let _ = writeln!(
        out,
        "| hub (3 remotes) | {} | {} | | {:.1}% of a core |\n\nTarget: agent RSS under 20 MiB ({}).\n",
        mib(hub_before.rss_kib),
        mib(hub_churn.peak_kib),
        (hub_churn.cpu_secs - hub_before.cpu_secs) / churn_secs * 100.0,
        if churned.iter().all(|u| u.peak_kib < 20 * 1024) {
            "met"
        } else {
            "not met"
        }
    );
    let _ = writeln!(
        out,
        "## 5. Write amplification\n\n\
         API writes by each agent, from the remote API server's audit log.\n\n\
         | | remote-1 | remote-2 | remote-3 |\n| --- | --- | --- | --- |\n\
         | writes for {CHANGES} changes | {} | {} | {} |\n\
         | writes per change | {:.2} | {:.2} | {:.2} |\n\n\
         By kind of change (remote-1): readiness flip {:.2}, new pod {:.2}, deleted pod {:.2} writes. A flip \
         or a new pod changes two objects (the istiod EndpointSlice and the legacy Endpoints). A deletion \
         is two states, as with the Kubernetes EndpointSlice controller: the endpoint first turns \
         terminating (pods are deleted gracefully), then goes; so up to 4 writes (2 when both states \
         arrive together and are coalesced). Writes after a hub restart and a restart of every agent, \
         nothing changed: **{reconnect_writes}** (should be 0).\n",
        writes[0],
        writes[1],
        writes[2],
        writes[0] as f64 / CHANGES as f64,
        writes[1] as f64 / CHANGES as f64,
        writes[2] as f64 / CHANGES as f64,
        per_kind[0],
        per_kind[1],
        per_kind[2],
    );
    println!(
        "propagation p50/p99 {} / {}; floor {} / {}; writes {writes:?}; reconnect writes {reconnect_writes}",
        ms(percentile(&latencies, 50.0)),
        ms(p99),
        ms(percentile(&floor, 50.0)),
        ms(floor_p99)
    );
    Ok(())
}

/// A hub with `n` RemoteClusters and `n` load-generator streams.
struct Fleet {
    mesh: Mesh,
    load: LoadGen,
    n: usize,
    hub_idle_kib: u64,
    connect_secs: f64,
}

async fn fleet(planes: &'static ControlPlanes, n: usize) -> anyhow::Result<Fleet> {
    let mut mesh = Mesh::new(planes, &[]).await?;
    mesh.test_timing = false;
    mesh.log_filter = Some("warn".into());
    mesh.create_istiod().await?;
    let t = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("lg-{i}")).collect();
    let mut settings = Vec::new();
    for name in &names {
        let dir = mesh.write_agent_cert(name, name, false)?;
        settings.push(tether_agent::client::StreamConfig {
            cluster: name.clone(),
            hub_addr: mesh.hub_addr(),
            server_name: None,
            tls: tether_proto::tls::TlsFiles::in_dir(&dir),
            // The agent's defaults.
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            standby_retry: Duration::from_secs(30),
            max_message_bytes: tether_proto::limits::MAX_MESSAGE_BYTES,
        });
    }
    let m = &mesh;
    futures::stream::iter(&names)
        .map(|name| async move { m.create_remote_cluster(name, json!({})).await })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    println!("  {n} identities and RemoteClusters in {:?}", t.elapsed());
    mesh.start_hub()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Mesh::admin_get(mesh.hub_admin_port, "/ready")
        .await
        .map(|r| r.0)
        .ok()
        != Some(200)
    {
        anyhow::ensure!(Instant::now() < deadline, "hub not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hub_idle_kib = usage(mesh.hub_pid().unwrap()).rss_kib;
    let t = Instant::now();
    let mut load = LoadGen::start(settings);
    let got = load.wait_all(n, Duration::from_secs(300), |_| true).await;
    let connect_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        got.len() == n,
        "only {} of {n} streams got a snapshot within 300 s",
        got.len()
    );
    println!("  {n} streams connected and answered in {connect_secs:.1} s");
    Ok(Fleet {
        mesh,
        load,
        n,
        hub_idle_kib,
        connect_secs,
    })
}

struct FanoutRow {
    n: usize,
    all_acked: Vec<f64>,
    missing: usize,
    connect_secs: f64,
    kib_per_stream: f64,
    hub_rss_kib: u64,
    idle_cpu_per_stream: f64,
    cpu_per_change: f64,
    apiserver_cpu_per_change: f64,
    status_writes: f64,
    /// From the last change until every RemoteCluster's status shows it acked; None past the timeout.
    status_lag: Option<f64>,
}

/// When every one of the `n` RemoteClusters' status says `version` (any, if None) is desired and
/// acked (polled every second, up to 5 minutes).
async fn status_settled(
    mesh: &Mesh,
    version: Option<&str>,
    n: usize,
) -> anyhow::Result<Option<Instant>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let list = mesh.remote_clusters().list(&Default::default()).await?;
        let settled = list
            .items
            .iter()
            .filter(|rc| {
                let sync = &rc.data["status"]["sync"];
                let desired = sync["desiredVersion"].as_str().unwrap_or("");
                !desired.is_empty()
                    && sync["ackedVersion"] == desired
                    && version.is_none_or(|v| v == desired)
            })
            .count();
        if settled == n {
            return Ok(Some(Instant::now()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(None)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("> 300 s".into(), |s| format!("{s:.1} s"))
}

async fn fanout(f: &mut Fleet) -> anyhow::Result<FanoutRow> {
    println!("== fan-out: {} streams, {FANOUT_CHANGES} changes", f.n);
    let hub_pid = f.mesh.hub_pid().unwrap();
    let central_pids = f.mesh.planes.get("central").pids();
    let cpu = |pids: &[u32]| pids.iter().map(|p| usage(*p).cpu_secs).sum::<f64>();
    // Idle means after the first statuses are written too (10,000 of them take tens of seconds).
    let t = Instant::now();
    anyhow::ensure!(
        status_settled(&f.mesh, None, f.n).await?.is_some(),
        "statuses did not settle after connecting"
    );
    println!(
        "  statuses settled {:.1} s after the streams",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = usage(hub_pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = usage(hub_pid);
    let idle_cpu_per_stream = (idle.cpu_secs - settled.cpu_secs) / 10.0 / f.n as f64;
    let kib_per_stream = (idle.rss_kib.saturating_sub(f.hub_idle_kib)) as f64 / f.n as f64;
    while f.load.seen.try_recv().is_ok() {}
    let status_before = metric(f.mesh.hub_admin_port, "tether_hub_status_writes_total").await;
    let (hub0, api0) = (usage(hub_pid).cpu_secs, cpu(&central_pids));
    let pods = f.mesh.central_pods();
    let mut all_acked = Vec::new();
    let mut missing = 0;
    let mut last_version = String::new();
    let mut last_change = Instant::now();
    for i in 0..FANOUT_CHANGES {
        let ready = i % 2 == 1;
        while f.load.seen.try_recv().is_ok() {}
        let t0 = Instant::now();
        set_pod_status(&pods, "istiod-b", &["10.10.0.2"], ready).await?;
        // The first version seen after the change is this change's (every stream acked the one
        // before, whose reports were drained above).
        let mut version: Option<String> = None;
        let got = f
            .load
            .wait_all(f.n, Duration::from_secs(30), |s| {
                version.get_or_insert_with(|| s.version.clone()) == &s.version
            })
            .await;
        missing += f.n - got.len();
        if let Some(last) = got.values().max() {
            all_acked.push((*last - t0).as_secs_f64());
        }
        last_version = version.unwrap_or_default();
        last_change = t0;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (hub1, api1) = (usage(hub_pid).cpu_secs, cpu(&central_pids));
    let status_lag = status_settled(&f.mesh, Some(&last_version), f.n).await?;
    let status_lag = status_lag.map(|at| (at - last_change).as_secs_f64());
    let status_writes =
        metric(f.mesh.hub_admin_port, "tether_hub_status_writes_total").await - status_before;
    let row = FanoutRow {
        n: f.n,
        missing,
        connect_secs: f.connect_secs,
        kib_per_stream,
        hub_rss_kib: idle.rss_kib,
        idle_cpu_per_stream,
        cpu_per_change: (hub1 - hub0) / FANOUT_CHANGES as f64,
        apiserver_cpu_per_change: (api1 - api0) / FANOUT_CHANGES as f64,
        status_writes,
        status_lag,
        all_acked,
    };
    println!(
        "  all acked p50 {} p99 {}; missing {}; {:.1} KiB/stream; hub CPU/change {:.3} s; status writes {}; statuses settled {}",
        ms(percentile(&row.all_acked, 50.0)),
        ms(percentile(&row.all_acked, 99.0)),
        row.missing,
        row.kib_per_stream,
        row.cpu_per_change,
        row.status_writes,
        secs(row.status_lag)
    );
    Ok(row)
}

struct Storm {
    n: usize,
    all_back_secs: f64,
    back: usize,
    peak_cpu: f64,
    buckets: Vec<usize>,
}

/// Kill -9 the hub under `f`'s streams and start it again at once.
async fn storm(f: &mut Fleet) -> anyhow::Result<Storm> {
    println!("== reconnect storm: hub restarted under {} streams", f.n);
    while f.load.seen.try_recv().is_ok() {}
    let t0 = Instant::now();
    f.mesh.kill_hub();
    f.mesh.start_hub()?;
    let peak = CpuPeak::start(f.mesh.hub_pid().unwrap(), Duration::from_millis(100));
    let got = f
        .load
        .wait_all(f.n, Duration::from_secs(120), |_| true)
        .await;
    let all_back_secs = t0.elapsed().as_secs_f64();
    let peak_cpu = peak.finish().await;
    let mut buckets = vec![0usize; 1 + (all_back_secs / 0.5) as usize];
    for at in got.values() {
        let b = ((*at - t0).as_secs_f64() / 0.5) as usize;
        let last = buckets.len() - 1;
        buckets[b.min(last)] += 1;
    }
    println!(
        "  {} of {} back in {all_back_secs:.1} s; peak hub CPU {:.0}%; per 0.5 s: {buckets:?}",
        got.len(),
        f.n,
        peak_cpu * 100.0
    );
    Ok(Storm {
        n: f.n,
        all_back_secs,
        back: got.len(),
        peak_cpu,
        buckets,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM, Linux; kube-apiserver v1.34.4 and etcd v3.6.4 on loopback",
        mem as f64 / 1024.0 / 1024.0
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("TETHER_BENCH_STREAMS")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let started = Instant::now();
    let mut names = vec!["central"];
    names.extend(REMOTES);
    let planes: &'static ControlPlanes = Box::leak(Box::new(ControlPlanes::start(&names)?));
    tether_tests::mesh::bin_dir();
    let mut prop = String::new();
    propagation(planes, &mut prop).await?;

    let mut rows = Vec::new();
    let mut storms = Vec::new();
    for n in &sizes {
        println!("== fleet of {n}");
        let mut f = match fleet(planes, *n).await {
            Ok(f) => f,
            Err(e) => {
                println!("  fleet of {n} failed: {e:#}");
                rows.push(Err(format!("{n} streams: {e:#}")));
                continue;
            }
        };
        rows.push(fanout(&mut f).await.map_err(|e| format!("{n}: {e:#}")));
        if *n == 1000 {
            storms.push(storm(&mut f).await?);
        }
        f.load.stop();
    }

    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "# Benchmarks\n\nWritten by `make bench` (`cargo run --release -p tether-tests --bin tether-bench`) on \
         {}; the whole run took {:.0} s. Machine: {}. Hub and agents are release builds, run as separate \
         processes with production defaults (keepalive 5 s, status interval 250 ms, 2 status writers, agent backoff 0.5 s..30 s \
         with 50% jitter), mTLS on every stream. Figures are from one run; rerun to compare.\n",
        std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        started.elapsed().as_secs_f64() + 0.0,
        machine()
    );
    doc.push_str(&prop);
    let _ = writeln!(
        doc,
        "## 2. Fan-out (one hub, N streams)\n\n\
         A load generator runs N copies of the agent's real stream client (TLS 1.3 with its own client \
         certificate, keepalive, backoff, Hello, ACK) whose applier is replaced by an immediate ACK: no \
         API server behind them. N RemoteClusters exist on the central API server. {FANOUT_CHANGES} readiness \
         flips of one istiod pod; for each, the time from just before the central write until the last of \
         the N streams received the new snapshot (it ACKs at once).\n\n\
         | streams | connect all | all received, p50 | p99 | streams missing | hub RSS | hub RSS per stream | hub CPU idle per stream | hub CPU per change | central API server CPU per change | status writes | statuses settled |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in &rows {
        match row {
            Ok(r) => {
                let _ = writeln!(
                    doc,
                    "| {} | {:.1} s | {} | {} | {} | {:.0} MiB | {:.1} KiB | {:.1} µs/s | {:.0} ms | {:.0} ms | {:.0} | {} |",
                    r.n,
                    r.connect_secs,
                    ms(percentile(&r.all_acked, 50.0)),
                    ms(percentile(&r.all_acked, 99.0)),
                    r.missing,
                    r.hub_rss_kib as f64 / 1024.0,
                    r.kib_per_stream,
                    r.idle_cpu_per_stream * 1e6,
                    r.cpu_per_change * 1000.0,
                    r.apiserver_cpu_per_change * 1000.0,
                    r.status_writes,
                    secs(r.status_lag)
                );
            }
            Err(e) => {
                let _ = writeln!(doc, "| failed: {e} | | | | | | | | | | | |");
            }
        }
    }
    let _ = writeln!(
        doc,
        "\nTargets: 10,000 streams on one hub, all acked within 1 s; under 64 KiB of hub memory per stream.\n"
    );
    for s in &storms {
        let _ = writeln!(
            doc,
            "## 4. Reconnect storm ({} streams)\n\n\
             The hub killed (-9) and started again at once. {} of {} streams had a snapshot again after \
             {:.1} s (time from the kill). Peak hub CPU (100 ms samples): {:.0}% of one core. Streams back, \
             per 0.5 s since the kill: {:?}.\n",
            s.n,
            s.back,
            s.n,
            s.all_back_secs,
            s.peak_cpu * 100.0,
            s.buckets
        );
    }
    let path = tether_tests::controlplane::repo_root().join("docs/benchmarks.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    // Hand-written analysis lives below this marker and survives a rerun.
    let marker = "<!-- analysis -->";
    if let Some(i) = existing.find(marker) {
        doc.push_str(&existing[i..]);
    } else {
        doc.push_str(marker);
        doc.push('\n');
    }
    std::fs::write(&path, &doc)?;
    println!(
        "\nwrote {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
