//! `make bench`: how fast and how cheaply Tether moves a changed control-plane pod into every remote.
//! Real kube-apiservers and etcd on loopback, the hub and agents as release-built processes over
//! mTLS. Prints figures and rewrites docs/benchmarks.md (`tether_tests::bench::report`). Not a test:
//! nothing here passes or fails.
//!
//! - `bench::propagation`: central + 3 remotes, 600 pod changes (sections 1-3);
//! - `bench::fleet`: N load-generator streams, then a reconnect storm under 1,000 (sections 4-5);
//! - `bench::apiaccess`: istiod's reads through the agent against direct reads (section 6);
//! - `bench::replicas`: failover of 1,000 streams between replicas (7), sustained churn (8), status
//!   settle after a burst with 1 and 3 replicas (9).
//!
//! `TETHER_BENCH_STREAMS` (default `100,1000,10000`) sets the fan-out sizes; `TETHER_BENCH_ONLY=api`
//! (or `propagation`, `fanout`, `replicas`, `settle`) runs section 6 (or 1-3, 4, 7-9, 9) alone and
//! only prints it.
//! `TETHER_BENCH_CHURN` (default `1000,10000`) sets the sustained-churn sizes and
//! `TETHER_BENCH_CHURN_SECS` (default 600) its length; `TETHER_BENCH_SETTLE` (default `10000`) the
//! settle sizes, and with `TETHER_BENCH_ONLY=settle`, `TETHER_BENCH_SETTLE_REPLICAS` (default `1,3`)
//! the replica counts. `TETHER_BENCH_PAUSE_MS` (default 20) is the pause between two changes in
//! section 1, and `TETHER_BENCH_LOG` (default `info`) the log filter of its hub and agents (their
//! logs and the API servers' audit logs stay in `target/harness/<pid>` until the next run).

use std::time::Instant;
use tether_tests::ControlPlanes;
use tether_tests::bench::report::{MARKER, Results, render};
use tether_tests::bench::{apiaccess, fleet, plan, propagation, replicas};

type ReplicaSections = (
    Result<replicas::Failover, String>,
    Vec<Result<replicas::Sustained, String>>,
    Vec<Result<replicas::Settle, String>>,
);

/// A failed section's error, printed and kept for the document.
fn failed(e: anyhow::Error, what: String) -> String {
    let m = format!("{what}{e:#}");
    println!("  failed: {m}");
    m
}

fn sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Sections 7 to 9.
async fn replica_sections(planes: &'static ControlPlanes) -> ReplicaSections {
    let failover = replicas::failover(planes, 1000)
        .await
        .map_err(|e| failed(e, String::new()));
    let mut settle = Vec::new();
    for n in sizes("TETHER_BENCH_SETTLE", "10000") {
        for r in [1, 3] {
            settle.push(
                replicas::settle(planes, n, r)
                    .await
                    .map_err(|e| failed(e, format!("{n} streams, {r} replicas: "))),
            );
        }
    }
    let secs = std::env::var("TETHER_BENCH_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut sustained = Vec::new();
    for n in sizes("TETHER_BENCH_CHURN", "1000,10000") {
        let every = std::time::Duration::from_secs((secs / 10).max(10));
        sustained.push(
            replicas::sustained(planes, n, secs, every)
                .await
                .map_err(|e| failed(e, format!("{n} streams: "))),
        );
    }
    (failover, sustained, settle)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fanout_sizes = sizes("TETHER_BENCH_STREAMS", "100,1000,10000");
    let started = Instant::now();
    let mut names = vec!["central"];
    names.extend(propagation::REMOTES);
    let planes: &'static ControlPlanes = Box::leak(Box::new(ControlPlanes::start(&names)?));
    tether_tests::mesh::bin_dir();
    // One section alone, printed and not written: for trying a change.
    match std::env::var("TETHER_BENCH_ONLY").as_deref() {
        Ok("api") => {
            apiaccess::run(planes).await?;
            return Ok(());
        }
        Ok("settle") => {
            for n in sizes("TETHER_BENCH_SETTLE", "10000") {
                for r in sizes("TETHER_BENCH_SETTLE_REPLICAS", "1,3") {
                    replicas::settle(planes, n, r).await?;
                }
            }
            return Ok(());
        }
        Ok("replicas") => {
            let _ = replica_sections(planes).await;
            return Ok(());
        }
        Ok("fanout") => {
            for n in &fanout_sizes {
                let mut f = fleet::fleet(planes, *n).await?;
                fleet::fanout(&mut f).await?;
                f.load.stop();
            }
            return Ok(());
        }
        Ok("propagation") => {
            propagation::run(planes).await?;
            return Ok(());
        }
        Ok("plan") => {
            plan::run(planes).await?;
            return Ok(());
        }
        _ => {}
    }
    let propagation = propagation::run(planes).await?;
    let api_access = apiaccess::run(planes).await.map_err(|e| {
        println!("  API access failed: {e:#}");
        format!("{e:#}")
    });
    let plan = plan::run(planes).await.map_err(|e| {
        println!("  the plan section failed: {e:#}");
        format!("{e:#}")
    });
    let mut rows = Vec::new();
    let mut storms = Vec::new();
    for n in &fanout_sizes {
        println!("== fleet of {n}");
        let mut f = match fleet::fleet(planes, *n).await {
            Ok(f) => f,
            Err(e) => {
                println!("  fleet of {n} failed: {e:#}");
                rows.push(Err(format!("{n} streams: {e:#}")));
                continue;
            }
        };
        rows.push(
            fleet::fanout(&mut f)
                .await
                .map_err(|e| format!("{n}: {e:#}")),
        );
        if *n == 1000 {
            storms.push(fleet::storm(&mut f).await?);
        }
        f.load.stop();
    }
    let (failover, sustained, settle) = replica_sections(planes).await;
    let results = Results {
        propagation,
        api_access,
        fanout: rows,
        storms,
        failover,
        sustained,
        settle,
        plan,
        took_secs: started.elapsed().as_secs_f64(),
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut doc = render(&results, &date);
    let path = tether_tests::controlplane::repo_root().join("docs/benchmarks.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    match existing.find(MARKER) {
        Some(i) => doc.push_str(&existing[i..]),
        None => {
            doc.push_str(MARKER);
            doc.push('\n');
        }
    }
    std::fs::write(&path, &doc)?;
    println!("\nwrote {} ({:.0} s)", path.display(), results.took_secs);
    Ok(())
}
