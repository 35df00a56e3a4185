//! Sections 4 and 5 of `make bench`: one hub and N load-generator streams (the agent's real stream
//! client, ACKing without an API server): fan-out latency, memory and CPU per stream, status writes
//! and settle time; then the hub killed and restarted under 1,000 streams.

use super::{CpuPeak, LoadGen, ms, percentile, usage};
use crate::ControlPlanes;
use crate::mesh::Mesh;
use crate::pods::set_pod_status;
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

pub const FANOUT_CHANGES: usize = 20;

/// A load-generator stream for each of `names`, with its own client certificate and the agent's
/// defaults, dialling the mesh's hub.
pub fn stream_settings(
    mesh: &Mesh,
    names: &[String],
) -> anyhow::Result<Vec<tether_agent::client::StreamConfig>> {
    let mut settings = Vec::new();
    for name in names {
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
    Ok(settings)
}

/// A hub with `n` RemoteClusters and `n` load-generator streams.
pub struct Fleet {
    mesh: Mesh,
    pub load: LoadGen,
    n: usize,
    hub_idle_kib: u64,
    connect_secs: f64,
}

pub async fn fleet(planes: &'static ControlPlanes, n: usize) -> anyhow::Result<Fleet> {
    let mut mesh = Mesh::new(planes, &[]).await?;
    mesh.test_timing = false;
    mesh.log_filter = Some("warn".into());
    mesh.create_istiod().await?;
    let t = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("lg-{i}")).collect();
    let settings = stream_settings(&mesh, &names)?;
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

pub struct FanoutRow {
    pub n: usize,
    pub all_acked: Vec<f64>,
    pub missing: usize,
    pub connect_secs: f64,
    pub kib_per_stream: f64,
    pub hub_rss_kib: u64,
    pub idle_cpu_per_stream: f64,
    pub cpu_per_change: f64,
    pub apiserver_cpu_per_change: f64,
    pub status_writes: f64,
    /// From the last change until every RemoteCluster's status shows it acked; None past the timeout.
    pub status_lag: Option<f64>,
}

/// When every one of the `n` RemoteClusters' status reads Synced and the hub's live view has every
/// agent acknowledging `version` (any, if None) as the desired one (polled every second, up to 5
/// minutes). Status carries no versions: a central change its agents keep up with leaves it as it
/// was, so this is when the hub has nothing left to write and every agent holds the change.
async fn status_settled(
    mesh: &Mesh,
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
        let live: serde_json::Value = match Mesh::admin_get(mesh.hub_admin_port, "/streams").await {
            Ok((200, body)) => serde_json::from_str(&body)?,
            _ => serde_json::Value::Null,
        };
        let acked = live
            .as_object()
            .map(|all| {
                all.values()
                    .filter(|s| {
                        let desired = s["desiredVersion"].as_str().unwrap_or("");
                        !desired.is_empty()
                            && s["ackedVersion"] == desired
                            && version.is_none_or(|v| v == desired)
                    })
                    .count()
            })
            .unwrap_or(0);
        if synced == n && acked == n {
            return Ok(Some(Instant::now()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(None)
}

pub fn secs(v: Option<f64>) -> String {
    v.map_or("> 300 s".into(), |s| format!("{s:.1} s"))
}

pub async fn fanout(f: &mut Fleet) -> anyhow::Result<FanoutRow> {
    println!("== fan-out: {} streams, {FANOUT_CHANGES} changes", f.n);
    let hub_pid = f.mesh.hub_pid().unwrap();
    let central_pids = f.mesh.planes.get("central").pids();
    let cpu = |pids: &[u32]| pids.iter().map(|p| usage(*p).cpu_secs).sum::<f64>();
    // Idle means after the first statuses are written too (10,000 of them take tens of seconds).
    let t = Instant::now();
    let answered_kib = usage(hub_pid).rss_kib;
    anyhow::ensure!(
        status_settled(&f.mesh, None, f.n).await?.is_some(),
        "statuses did not settle after connecting"
    );
    println!(
        "  statuses settled {:.1} s after the streams; hub RSS {} KiB before the streams, {answered_kib} KiB once they were answered, {} KiB once the statuses settled",
        t.elapsed().as_secs_f64(),
        f.hub_idle_kib,
        usage(hub_pid).rss_kib,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = usage(hub_pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = usage(hub_pid);
    let idle_cpu_per_stream = (idle.cpu_secs - settled.cpu_secs) / 10.0 / f.n as f64;
    let kib_per_stream = (idle.rss_kib.saturating_sub(f.hub_idle_kib)) as f64 / f.n as f64;
    while f.load.seen.try_recv().is_ok() {}
    let status_before =
        Mesh::admin_metric(f.mesh.hub_admin_port, "tether_hub_status_writes_total").await;
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
    let status_writes = Mesh::admin_metric(f.mesh.hub_admin_port, "tether_hub_status_writes_total")
        .await
        - status_before;
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

pub struct Storm {
    pub n: usize,
    pub all_back_secs: f64,
    pub back: usize,
    pub peak_cpu: f64,
    pub buckets: Vec<usize>,
}

/// Kill -9 the hub under `f`'s streams and start it again at once.
pub async fn storm(f: &mut Fleet) -> anyhow::Result<Storm> {
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
