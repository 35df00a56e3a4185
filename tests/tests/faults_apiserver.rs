//! A remote API server stopped for 30 s and restarted on the same etcd, with the hub changing the
//! desired state meanwhile: the agent reports the failure (NACK, status), retries with backoff, and
//! converges. Its own binary: it stops a control plane the other tests would share.

use std::time::Duration;
use tether_tests::eventually;
use tether_tests::faults::endpoints;
use tether_tests::fixtures::{SOON, synced_mesh};

#[tokio::test]
async fn remote_api_server_outage_is_reported_then_converges() {
    let mesh = synced_mesh().await;
    let remote = mesh.planes.get("remote-1");
    tokio::task::spawn_blocking(move || remote.stop_apiserver())
        .await
        .unwrap();
    let stopped_at = std::time::Instant::now();
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    let status = mesh.wait_phase("remote-1", "Degraded", SOON).await;
    let message = status["sync"]["lastNack"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!message.is_empty(), "the NACK says what failed: {status}");
    println!("while the remote API server is down: {message}");
    let remaining = Duration::from_secs(30).saturating_sub(stopped_at.elapsed());
    tokio::time::sleep(remaining).await;
    assert_eq!(
        mesh.status("remote-1").await.unwrap()["phase"],
        "Degraded",
        "still failing while down"
    );

    tokio::task::spawn_blocking(move || remote.start_apiserver())
        .await
        .unwrap()
        .unwrap();
    mesh.wait_phase("remote-1", "Synced", Duration::from_secs(60))
        .await;
    eventually("remote-1 to hold the new pod", SOON, || async {
        let ips: Vec<String> = endpoints(&mesh, "remote-1")
            .await?
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        anyhow::ensure!(ips == ["10.10.0.1", "10.10.0.2", "10.10.0.3"], "{ips:?}");
        Ok(())
    })
    .await;
    assert_eq!(
        mesh.status("remote-2").await.unwrap()["phase"],
        "Synced",
        "the other remote never noticed"
    );
}
