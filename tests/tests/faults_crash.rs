//! Crashes in the middle of work: the hub killed (-9) while it pushes a large change, an agent
//! killed while it applies one. The desired state changes again while the process is down (half
//! the new Services leave the spec, a pod is deleted). After the restart every remote holds exactly
//! the desired objects: nothing duplicated, nothing left over from the interrupted work.

use tether_tests::eventually;
use tether_tests::faults::{
    Inventory, expected_inventory, inventory, more_central_services, set_mirrored_services,
    wait_mid_apply,
};
use tether_tests::fixtures::{REMOTES, SOON, synced_mesh};
use tether_tests::mesh::Mesh;

/// 61 mirrored Services (istiod + 60) make one change of about 180 objects: long enough to crash in.
const EXTRA: usize = 60;

/// istiod and every second extra Service: the snapshot applies them in name order (svc-0, svc-1,
/// svc-10, ...), so whatever was applied first is partly kept and partly dropped.
fn every_other(all: &[String]) -> Vec<String> {
    all.iter()
        .filter(|s| {
            s.strip_prefix("svc-")
                .is_none_or(|i| i.parse::<usize>().unwrap() % 2 == 1)
        })
        .cloned()
        .collect()
}

async fn converges_to(mesh: &Mesh, cluster: &str, want: &Inventory) {
    eventually(
        &format!("{cluster} to hold exactly the desired objects"),
        SOON,
        || async {
            let got = inventory(mesh, cluster).await?;
            anyhow::ensure!(&got == want, "{got:?}");
            Ok(())
        },
    )
    .await;
    mesh.wait_phase(cluster, "Synced", SOON).await;
}

#[tokio::test]
async fn agent_killed_mid_apply_converges_with_nothing_orphaned_or_duplicated() {
    let mut mesh = synced_mesh().await;
    let extra = more_central_services(&mesh, EXTRA).await;
    let all: Vec<String> = std::iter::once("istiod".to_string())
        .chain(extra.iter().cloned())
        .collect();
    set_mirrored_services(&mesh, "remote-1", &all).await;
    wait_mid_apply(&mesh, "remote-1", &extra).await;
    mesh.kill_agent("remote-1");
    let at_kill = inventory(&mesh, "remote-1").await.unwrap();
    assert!(
        at_kill.services.len() < all.len(),
        "the agent was killed mid-apply ({} of {} Services there)",
        at_kill.services.len(),
        all.len()
    );
    println!(
        "killed with {} of {} Services, {} slices, {} Endpoints applied",
        at_kill.services.len(),
        all.len(),
        at_kill.slices.len(),
        at_kill.endpoints.len()
    );

    // While the agent is down: half of what it was creating is no longer wanted, and a pod is gone.
    let keep = every_other(&all);
    // Objects of one Service are applied concurrently, so the first orphan may be a slice or an
    // Endpoints whose Service was still in flight.
    let orphan = at_kill
        .services
        .iter()
        .chain(at_kill.slices.iter().map(|(s, _)| s))
        .chain(at_kill.endpoints.iter())
        .any(|s| !keep.contains(s));
    assert!(
        orphan,
        "something applied before the crash must now be an orphan: {at_kill:?}"
    );
    set_mirrored_services(&mesh, "remote-1", &keep).await;
    mesh.central_pods()
        .delete("istiod-b", &Default::default())
        .await
        .unwrap();
    mesh.start_agent("remote-1").unwrap();
    converges_to(
        &mesh,
        "remote-1",
        &expected_inventory(&keep, &["10.10.0.1"]),
    )
    .await;
    // The other remote never had the extra Services and still follows the pods.
    converges_to(
        &mesh,
        "remote-2",
        &expected_inventory(&["istiod".into()], &["10.10.0.1"]),
    )
    .await;
}

#[tokio::test]
async fn hub_killed_mid_push_converges_with_nothing_orphaned_or_duplicated() {
    let mut mesh = synced_mesh().await;
    let extra = more_central_services(&mesh, EXTRA).await;
    let all: Vec<String> = std::iter::once("istiod".to_string())
        .chain(extra.iter().cloned())
        .collect();
    for r in REMOTES {
        set_mirrored_services(&mesh, r, &all).await;
    }
    wait_mid_apply(&mesh, "remote-1", &extra).await;
    mesh.kill_hub();
    for r in REMOTES {
        let got = inventory(&mesh, r).await.unwrap();
        println!(
            "hub killed; {r} had {} of {} Services",
            got.services.len(),
            all.len()
        );
    }

    // While the hub is down: the spec shrinks and a pod is deleted. Agents keep what they have.
    let keep = every_other(&all);
    for r in REMOTES {
        set_mirrored_services(&mesh, r, &keep).await;
    }
    mesh.central_pods()
        .delete("istiod-b", &Default::default())
        .await
        .unwrap();
    let before_restart = inventory(&mesh, "remote-1").await.unwrap();
    assert!(
        before_restart.services.contains(&"istiod".to_string())
            && before_restart.services.iter().any(|s| !keep.contains(s)),
        "nothing removed while the hub is away: {before_restart:?}"
    );
    mesh.start_hub().unwrap();
    let want = expected_inventory(&keep, &["10.10.0.1"]);
    for r in REMOTES {
        converges_to(&mesh, r, &want).await;
    }
}
