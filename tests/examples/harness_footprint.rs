//! Measures the harness: time to start three control planes (etcd + kube-apiserver each, in parallel,
//! until `/readyz`), and the peak resident memory of every process after a little work.
//! Run: `cargo run --release -p tether-tests --example harness_footprint`

use std::time::Instant;
use tether_tests::ControlPlanes;

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn main() -> anyhow::Result<()> {
    tether_tests::controlplane::binaries(); // build outside the timed part
    let start = Instant::now();
    let planes = ControlPlanes::start(&["central", "remote-1", "remote-2"])?;
    let took = start.elapsed();
    println!("three clusters ready in {:.2} s", took.as_secs_f64());
    // Some work so the figures are not just the idle start: a namespace and 50 pods per cluster.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for cluster in planes.all() {
            let client = cluster.client().await?;
            let ns = tether_tests::fresh_namespace(&client, "footprint").await?;
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client, &ns);
            for i in 0..50 {
                let pod = tether_tests::pods::mk_pod(
                    &format!("p{i}"),
                    &[("app", "x")],
                    &[("http", 8080)],
                );
                tether_tests::pods::create_running_pod(
                    &pods,
                    &pod,
                    &[&format!("10.0.0.{i}")],
                    true,
                )
                .await?;
            }
        }
        anyhow::Ok(())
    })?;
    let mut total = 0;
    for cluster in planes.all() {
        for pid in cluster.pids() {
            let kib = peak_rss_kib(pid);
            total += kib;
            println!(
                "{:<10} {:<15} peak RSS {:>6.1} MiB",
                cluster.name,
                comm(pid),
                kib as f64 / 1024.0
            );
        }
    }
    println!(
        "all six processes: peak RSS sum {:.1} MiB",
        total as f64 / 1024.0
    );
    Ok(())
}
