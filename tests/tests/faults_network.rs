//! Network faults between an agent and the hub, with pod churn running: a 30 s cut, a half-open
//! connection, added latency. The remote keeps its last state while cut off and reaches the latest
//! state soon after the network heals.

use std::time::{Duration, Instant};
use tether_tests::eventually;
use tether_tests::faults::{churn, endpoints, mesh_through_proxy, more_istiod_pods};
use tether_tests::fixtures::SOON;
use tether_tests::proxy::Mode;

/// The state decided last: istiod-b ready again and a new pod istiod-c.
async fn final_state(mesh: &tether_tests::mesh::Mesh) {
    tether_tests::pods::set_pod_status(&mesh.central_pods(), "istiod-b", &["10.10.0.2"], true)
        .await
        .unwrap();
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
}

fn ep(ip: &str, ready: bool) -> (String, bool) {
    (ip.to_string(), ready)
}

#[tokio::test]
async fn a_cut_keeps_the_remote_static_and_healing_brings_the_latest_state() {
    let (mesh, proxy) = mesh_through_proxy().await;
    let churning = churn(&mesh, Duration::from_millis(300));
    proxy.set(Mode::Cut);
    let cut_at = Instant::now();
    mesh.wait_phase("remote-1", "Disconnected", Duration::from_secs(8))
        .await;
    let noticed = cut_at.elapsed();

    // 30 s cut off: nothing the agent manages disappears, whatever the hub's side does meanwhile.
    while cut_at.elapsed() < Duration::from_secs(30) {
        let eps = endpoints(&mesh, "remote-1").await.unwrap();
        let ips: Vec<&str> = eps.iter().map(|(ip, _)| ip.as_str()).collect();
        assert_eq!(
            ips,
            ["10.10.0.1", "10.10.0.2"],
            "fail-static broken during the cut"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    churning.abort();
    // The latest state, decided while remote-1 could not hear about it.
    final_state(&mesh).await;
    let want = vec![
        ep("10.10.0.1", true),
        ep("10.10.0.2", true),
        ep("10.10.0.3", true),
    ];
    eventually(
        "remote-2 (never cut) to have the latest state",
        SOON,
        || async {
            anyhow::ensure!(endpoints(&mesh, "remote-2").await? == want, "not yet");
            Ok(())
        },
    )
    .await;

    proxy.set(Mode::Pass);
    let healed_at = Instant::now();
    eventually(
        "remote-1 to reach the latest state after healing",
        Duration::from_secs(15),
        || async {
            let got = endpoints(&mesh, "remote-1").await?;
            anyhow::ensure!(got == want, "{got:?}");
            Ok(())
        },
    )
    .await;
    mesh.wait_phase("remote-1", "Synced", Duration::from_secs(15))
        .await;
    println!(
        "cut noticed in {noticed:?}; latest state {:?} after healing",
        healed_at.elapsed()
    );
}

#[tokio::test]
async fn a_half_open_connection_is_noticed_by_keepalive_and_recovers() {
    let (mesh, proxy) = mesh_through_proxy().await;
    let churning = churn(&mesh, Duration::from_millis(300));
    // Bytes vanish but no connection closes: only HTTP/2 keepalive can tell.
    proxy.set(Mode::Blackhole);
    // Keepalive (1 s + 2 s), then the hub's --disconnect-grace (1 s in tests).
    mesh.wait_phase("remote-1", "Disconnected", Duration::from_secs(10))
        .await;
    churning.abort();
    tether_tests::pods::set_pod_status(&mesh.central_pods(), "istiod-b", &["10.10.0.2"], false)
        .await
        .unwrap();
    let eps = endpoints(&mesh, "remote-1").await.unwrap();
    assert_eq!(eps.len(), 2, "nothing removed while half-open: {eps:?}");
    proxy.set(Mode::Pass);
    eventually(
        "remote-1 to converge after the network heals",
        Duration::from_secs(20),
        || async {
            let got = endpoints(&mesh, "remote-1").await?;
            anyhow::ensure!(
                got == vec![ep("10.10.0.1", true), ep("10.10.0.2", false)],
                "{got:?}"
            );
            Ok(())
        },
    )
    .await;
    mesh.wait_phase("remote-1", "Synced", SOON).await;
}

#[tokio::test]
async fn latency_slows_nothing_down_into_stream_churn() {
    let (mesh, proxy) = mesh_through_proxy().await;
    proxy.set(Mode::Delay(Duration::from_millis(200)));
    let churning = churn(&mesh, Duration::from_millis(250));
    tokio::time::sleep(Duration::from_secs(5)).await;
    churning.abort();
    final_state(&mesh).await;
    eventually(
        "remote-1 to converge through 200 ms each way",
        SOON,
        || async {
            let got = endpoints(&mesh, "remote-1").await?;
            anyhow::ensure!(
                got == vec![
                    ep("10.10.0.1", true),
                    ep("10.10.0.2", true),
                    ep("10.10.0.3", true)
                ],
                "{got:?}"
            );
            Ok(())
        },
    )
    .await;
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    let connects = hub_connects(&mesh, "remote-1");
    assert_eq!(
        connects, 1,
        "the stream survived the latency (no reconnects)"
    );
}

#[tokio::test]
async fn a_thin_link_gets_the_newest_state_without_stream_churn() {
    let (mesh, proxy) = mesh_through_proxy().await;
    // ~150 endpoints make each snapshot several KiB: at 16 KiB/s one takes a good part of a second,
    // far longer than the 250 ms between changes. Queuing every state would back the link up for
    // minutes and starve the 2 s keepalive; the hub must send only the newest state when one is answered.
    let t = Instant::now();
    more_istiod_pods(&mesh, 150).await;
    println!("150 pods created in {:?}", t.elapsed());
    eventually("remote-1 to have all 152 endpoints", SOON, || async {
        let n = endpoints(&mesh, "remote-1").await?.len();
        anyhow::ensure!(n == 152, "{n}");
        Ok(())
    })
    .await;
    proxy.set(Mode::Throttle(16 * 1024));
    let churning = churn(&mesh, Duration::from_millis(250));
    tokio::time::sleep(Duration::from_secs(10)).await;
    churning.abort();
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, false)
        .await
        .unwrap();
    let last_change = Instant::now();
    eventually(
        "remote-1 to reach the final state through 16 KiB/s",
        SOON,
        || async {
            let got = endpoints(&mesh, "remote-1").await?;
            let c = got.iter().find(|(ip, _)| ip == "10.10.0.3");
            anyhow::ensure!(
                got.len() == 153 && c == Some(&ep("10.10.0.3", false)),
                "{c:?}"
            );
            Ok(())
        },
    )
    .await;
    let took = last_change.elapsed();
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    let connects = hub_connects(&mesh, "remote-1");
    assert_eq!(
        connects, 1,
        "the stream survived the thin link (no reconnects)"
    );
    println!("final state {took:?} after the last change through 16 KiB/s");
}

/// Streams the hub accepted from `cluster`'s agent (one per connection, from the hub's log).
fn hub_connects(mesh: &tether_tests::mesh::Mesh, cluster: &str) -> usize {
    let needle = format!("agent connected cluster={cluster} ");
    mesh.log("hub")
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}
