//! 1,000 pod changes in 10 s across 52 control-plane pods. The hub keeps at most two states in flight
//! per agent and sends only the newest once the agent answers, so the changes coalesce; an agent
//! that holds a newer state once an older one's EndpointSlices are written skips the rest of the
//! older, and when the newer one comes while the older one's Endpoints write is out, writes the
//! newer one's slice at once beside it. Every remote ends exactly on the final state, slices and
//! legacy Endpoints, and the agents write at most the two objects a change touches per state
//! applied or overtaken that way, and only the slice of a state they skipped.

use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tether_tests::faults::{endpoints, legacy_endpoints, more_istiod_pods};
use tether_tests::fixtures::{REMOTES, SOON, synced_mesh};
use tether_tests::mesh::Mesh;
use tether_tests::{eventually, metric};

const CHANGES: usize = 1000;
const PODS: usize = 50;
const WORKERS: usize = 10;

#[tokio::test]
async fn a_thousand_pod_changes_in_ten_seconds_coalesce_and_end_right() {
    let mesh = synced_mesh().await;
    more_istiod_pods(&mesh, PODS).await;
    for r in REMOTES {
        eventually(&format!("{r} to have every pod"), SOON, || async {
            let n = endpoints(&mesh, r).await?.len();
            anyhow::ensure!(n == PODS + 2, "{n}");
            Ok(())
        })
        .await;
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    let hub_metric = |name: &'static str| async move {
        let (_, text) = Mesh::admin_get(mesh.hub_admin_port, "/metrics")
            .await
            .unwrap();
        metric(&text, name)
    };
    let hub_metrics = || hub_metric("tether_hub_snapshots_pushed_total");
    let acks = || hub_metric("tether_hub_acks_total");
    let pushed_before = hub_metrics().await;
    let acks_before = acks().await;
    let writes_before: BTreeMap<&str, usize> = REMOTES
        .iter()
        .map(|r| (*r, mesh.agent_write_count(r)))
        .collect();
    let mut applied_before = BTreeMap::new();
    let mut superseded_before = BTreeMap::new();
    let mut by_newer_before = BTreeMap::new();
    let mut overtaken_before = BTreeMap::new();
    for r in REMOTES {
        applied_before.insert(*r, applied(&mesh, r).await);
        superseded_before.insert(*r, superseded(&mesh, r).await);
        by_newer_before.insert(*r, answered_by_newer(&mesh, r).await);
        overtaken_before.insert(*r, overtaken(&mesh, r).await);
    }

    // Each worker owns PODS / WORKERS pods and flips their readiness at 10 changes/s.
    let started = Instant::now();
    let pods = mesh.central_pods();
    let finals: Vec<Vec<(String, bool)>> = futures::stream::iter(0..WORKERS)
        .map(|w| {
            let pods = pods.clone();
            async move {
                let mine: Vec<usize> = (0..PODS).filter(|i| i % WORKERS == w).collect();
                let mut ready: BTreeMap<usize, bool> = mine.iter().map(|i| (*i, true)).collect();
                let mut tick = tokio::time::interval(Duration::from_millis(
                    10_000 * WORKERS as u64 / CHANGES as u64,
                ));
                for n in 0..CHANGES / WORKERS {
                    tick.tick().await;
                    let i = mine[n % mine.len()];
                    let r = !ready[&i];
                    let ip = format!("10.10.1.{}", 1 + i);
                    tether_tests::pods::set_pod_status(&pods, &format!("istiod-{i}"), &[&ip], r)
                        .await
                        .unwrap();
                    ready.insert(i, r);
                }
                ready
                    .into_iter()
                    .map(|(i, r)| (format!("10.10.1.{}", 1 + i), r))
                    .collect()
            }
        })
        .buffer_unordered(WORKERS)
        .collect()
        .await;
    let took = started.elapsed();
    let mut want: Vec<(String, bool)> = finals.into_iter().flatten().collect();
    want.push(("10.10.0.1".into(), true));
    want.push(("10.10.0.2".into(), true));
    want.sort();

    for r in REMOTES {
        eventually(&format!("{r} to end on the final state"), SOON, || async {
            let got = endpoints(&mesh, r).await?;
            anyhow::ensure!(
                got == want,
                "{} of {} right",
                got.iter().filter(|e| want.contains(e)).count(),
                want.len()
            );
            let legacy = legacy_endpoints(&mesh, r).await?;
            anyhow::ensure!(legacy == want, "legacy Endpoints: {legacy:?}");
            Ok(())
        })
        .await;
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    let pushed = (hub_metrics().await - pushed_before) as usize;
    let acked = (acks().await - acks_before) as usize;
    println!(
        "{CHANGES} changes written in {took:?}; hub pushed {pushed} snapshots to {} remotes",
        REMOTES.len()
    );
    let mut total_writes = 0;
    let mut total_skipped = 0;
    let mut total_by_newer = 0;
    let mut total_overtaken = 0;
    for r in REMOTES {
        let writes = mesh.agent_write_count(r) - writes_before[r];
        total_writes += writes;
        let applied = applied(&mesh, r).await - applied_before[r];
        let skipped = superseded(&mesh, r).await - superseded_before[r];
        total_skipped += skipped;
        let by_newer = answered_by_newer(&mesh, r).await - by_newer_before[r];
        total_by_newer += by_newer;
        let overtaken = overtaken(&mesh, r).await - overtaken_before[r];
        total_overtaken += overtaken;
        println!(
            "{r}: {applied} snapshots applied ({by_newer} of them while a newer one waited) and \
             {skipped} cut short after their slice ({overtaken} of them while their Endpoints \
             write was out), {writes} API writes for {CHANGES} changes"
        );
        assert!(
            applied + skipped < CHANGES,
            "{r}: changes were coalesced ({applied} + {skipped} snapshots for {CHANGES} changes)"
        );
        // Each state applied changes one EndpointSlice and the legacy Endpoints, a state cut short
        // only its EndpointSlice, or both when its Endpoints write was already out: never more.
        assert!(
            writes <= 2 * applied + skipped + overtaken,
            "{r}: {writes} writes for {applied} snapshots applied and {skipped} cut short \
             ({overtaken} with their Endpoints write out)"
        );
    }
    assert!(
        total_skipped > 0,
        "under 100 changes/s an agent holds a newer state after some slice phase"
    );
    // A state overtaken, or applied while a newer one already waited, goes unanswered too: the
    // newer one's answer frees it at the hub (`Outbox::answer` frees every older message; its unit
    // test). Which of the two a state meets is a race (the newer state coming while the Endpoints
    // write is out, or with its answer): only the first is common enough to count on.
    println!("hub: {acked} ACKs for {pushed} snapshots pushed");
    assert!(
        total_overtaken > 0,
        "under 100 changes/s a newer state arrives while some Endpoints are written \
         ({total_by_newer} applied while a newer one waited)"
    );
    // Exactly the objects a change touches: one EndpointSlice and one Endpoints per state pushed.
    assert!(
        total_writes <= 2 * pushed,
        "{total_writes} writes for {pushed} snapshots pushed"
    );

    // Quiet again, one more change: one pass per agent. The watch events of the agent's own writes
    // (its slice, its Endpoints) bring no drift pass. (Alone in its test binary: no other test
    // creates namespaces on these remotes, whose events would.)
    tokio::time::sleep(QUIET).await;
    for r in REMOTES {
        applied_before.insert(*r, applied(&mesh, r).await);
    }
    let ip = format!("10.10.1.{}", 1 + PODS - 1);
    let flipped = !want.contains(&(ip.clone(), true));
    tether_tests::pods::set_pod_status(&pods, &format!("istiod-{}", PODS - 1), &[&ip], flipped)
        .await
        .unwrap();
    for r in REMOTES {
        eventually(&format!("{r} to show the last change"), SOON, || async {
            let got = endpoints(&mesh, r).await?;
            anyhow::ensure!(got.contains(&(ip.clone(), flipped)), "not yet");
            mesh.live_synced(r).await.map(|_| ())
        })
        .await;
    }
    tokio::time::sleep(QUIET).await;
    for r in REMOTES {
        let passes = applied(&mesh, r).await - applied_before[r];
        assert_eq!(
            passes, 1,
            "{r}: one pass for one change, none for its own writes' echoes"
        );
    }
}

/// Longer than the agent's drift settle (50 ms) with room: a drift pass due has run by then.
const QUIET: Duration = Duration::from_millis(500);

/// Apply passes the agent on `cluster` made (from its own metrics).
async fn applied(mesh: &Mesh, cluster: &str) -> usize {
    agent_metric(mesh, cluster, "tether_agent_snapshots_applied_total").await
}

/// Snapshots the agent on `cluster` applied completely but left for a newer one to answer.
async fn answered_by_newer(mesh: &Mesh, cluster: &str) -> usize {
    agent_metric(
        mesh,
        cluster,
        "tether_agent_snapshots_answered_by_newer_total",
    )
    .await
}

/// Snapshots the agent on `cluster` cut short while their Endpoints write was out: the newer one's
/// slice went ahead of it.
async fn overtaken(mesh: &Mesh, cluster: &str) -> usize {
    agent_metric(mesh, cluster, "tether_agent_snapshots_overtaken_total").await
}

/// Snapshots the agent on `cluster` cut short for a newer one.
async fn superseded(mesh: &Mesh, cluster: &str) -> usize {
    agent_metric(mesh, cluster, "tether_agent_snapshots_superseded_total").await
}

async fn agent_metric(mesh: &Mesh, cluster: &str, name: &str) -> usize {
    Mesh::admin_metric(mesh.agent_admin_ports[cluster], name).await as usize
}
