//! The central API server stopped and restarted on the same etcd. The hub keeps serving the last
//! state it knows (a restarted agent gets it, with no writes), then resumes following the pods.
//! Its own binary: it stops the control plane the other tests would share.

use std::time::Duration;
use tether_tests::eventually;
use tether_tests::faults::endpoints;
use tether_tests::fixtures::{REMOTES, SOON, synced_mesh};
use tether_tests::mesh::Mesh;

#[tokio::test]
async fn central_api_server_outage_keeps_remotes_served_then_resumes() {
    let mut mesh = synced_mesh().await;
    let agent_port = mesh.agent_admin_ports["remote-1"];
    let before = endpoints(&mesh, "remote-1").await.unwrap();

    let central = mesh.planes.get("central");
    tokio::task::spawn_blocking(move || central.stop_apiserver())
        .await
        .unwrap();
    // The hub is alive and still serves: an agent restarted now gets the last known state.
    let (live, _) = Mesh::admin_get(mesh.hub_admin_port, "/live").await.unwrap();
    assert_eq!(live, 200, "hub alive without its API server");
    let writes_before = mesh.agent_write_count("remote-1");
    mesh.kill_agent("remote-1");
    mesh.start_agent("remote-1").unwrap();
    eventually(
        "the restarted agent to apply the hub's last known state",
        SOON,
        || async {
            let (code, body) = Mesh::admin_get(agent_port, "/ready").await?;
            anyhow::ensure!(code == 200, "{code} {body}");
            Ok(())
        },
    )
    .await;
    assert_eq!(endpoints(&mesh, "remote-1").await.unwrap(), before);
    assert_eq!(
        mesh.agent_write_count("remote-1"),
        writes_before,
        "the last known state is what the remote has: no writes"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        endpoints(&mesh, "remote-2").await.unwrap(),
        before,
        "nothing removed during the outage"
    );
    let hub_log = mesh.log("hub");
    assert!(hub_log.contains("watch failed"), "the outage is logged");
    // Said, not shouted: the status writer pauses instead of failing every remote on every pass
    // (it logged ~10 lines a second per remote before).
    let paused = hub_log.matches("status writes paused").count();
    assert!(
        (1..=15).contains(&paused),
        "{paused} 'status writes paused' warnings in ~12 s of outage"
    );
    assert!(
        !hub_log.contains("status update failed"),
        "an unreachable server is not blamed on each remote"
    );

    let central = mesh.planes.get("central");
    tokio::task::spawn_blocking(move || central.start_apiserver())
        .await
        .unwrap()
        .unwrap();
    let back = std::time::Instant::now();
    // Re-listing after the outage changes nothing: no new state is pushed.
    let writes_after_outage = mesh.agent_write_count("remote-1");
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    for r in REMOTES {
        eventually(&format!("{r} to follow pods again"), SOON, || async {
            let got = endpoints(&mesh, r).await?;
            anyhow::ensure!(got.iter().any(|(ip, _)| ip == "10.10.0.3"), "{got:?}");
            Ok(())
        })
        .await;
    }
    eprintln!(
        "remotes followed a pod created after the API server came back in {:?}",
        back.elapsed()
    );
    for r in REMOTES {
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    let new_writes: Vec<_> = mesh.agent_writes("remote-1")[writes_after_outage..].to_vec();
    assert!(
        new_writes.iter().all(|w| w.resource != "services"),
        "only the new endpoint was written, not a re-push of everything: {new_writes:?}"
    );
}
