//! End-to-end lifecycle: foreign objects, crashes and restarts (counting API writes in the remotes'
//! audit logs), disconnection, and retirement when a RemoteCluster is deleted.

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::time::Duration;
use tether_tests::eventually;
use tether_tests::fixtures::{REMOTES, SOON, synced_mesh, synced_mesh_with};
use tether_tests::mesh::{Mesh, condition};

/// Waits until the agent on `cluster` has made no new write for a second, and returns its count.
async fn settled_writes(mesh: &Mesh, cluster: &str) -> usize {
    let mut last = usize::MAX;
    eventually(&format!("{cluster}'s agent to stop writing"), SOON, || {
        let now = mesh.agent_write_count(cluster);
        let changed = now != last;
        last = now;
        async move {
            anyhow::ensure!(!changed, "still writing ({now} so far)");
            Ok(())
        }
    })
    .await;
    // eventually polls every 50 ms: make the quiet period a full second.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            mesh.agent_write_count(cluster),
            last,
            "{cluster}'s agent wrote while settling"
        );
    }
    last
}

fn acks_in_hub_log(mesh: &Mesh, cluster: &str) -> usize {
    mesh.log("hub")
        .lines()
        .filter(|l| l.contains("agent acked") && l.contains(&format!("cluster={cluster}")))
        .count()
}

/// Nothing the agent managed is left on `cluster`: no Service, no slice, no injection label.
async fn cleaned_up(mesh: &Mesh, cluster: &str) -> anyhow::Result<()> {
    let client = mesh.remote(cluster);
    let svcs = Api::<Service>::namespaced(client.clone(), &mesh.ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tether-agent"))
        .await?;
    anyhow::ensure!(svcs.items.is_empty(), "services remain");
    anyhow::ensure!(managed_slices(mesh, cluster).await == 0, "slices remain");
    let labels = Api::<Namespace>::all(client.clone())
        .get(&format!("{}-app", mesh.ns))
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    anyhow::ensure!(
        !labels.contains_key("tether.io/managed-injection")
            && !labels.contains_key("istio-injection"),
        "{labels:?}"
    );
    Ok(())
}

async fn managed_slices(mesh: &Mesh, cluster: &str) -> usize {
    Api::<EndpointSlice>::namespaced(mesh.remote(cluster).clone(), &mesh.ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tether-agent"))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test]
async fn foreign_service_is_never_overwritten_and_the_conflict_shows_in_status() {
    let foreign: Service = serde_json::from_value(json!({
        "metadata": {"name": "istiod", "labels": {"owner": "someone-else"}},
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap();
    let mesh = synced_mesh_with(|mesh| {
        let api: Api<Service> = Api::namespaced(mesh.remote("remote-2").clone(), &mesh.ns);
        let foreign = foreign.clone();
        async move {
            api.create(&PostParams::default(), &foreign).await.unwrap();
        }
    })
    .await;
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    let status = mesh.wait_phase("remote-2", "Degraded", SOON).await;
    let synced = condition(&status, "Synced");
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], "Conflict");
    assert!(
        synced["message"]
            .as_str()
            .unwrap()
            .contains("without label app.kubernetes.io/managed-by"),
        "{synced}"
    );
    assert!(
        status["sync"]["lastNack"]["message"]
            .as_str()
            .unwrap()
            .contains("Service")
    );

    let svc = Api::<Service>::namespaced(mesh.remote("remote-2").clone(), &mesh.ns)
        .get("istiod")
        .await
        .unwrap();
    assert_eq!(
        svc.metadata
            .labels
            .unwrap()
            .get("owner")
            .map(String::as_str),
        Some("someone-else")
    );
    let ports: Vec<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080], "foreign Service untouched");
    assert_eq!(
        managed_slices(&mesh, "remote-2").await,
        0,
        "no endpoints injected into someone else's Service"
    );
    assert!(
        mesh.agent_writes("remote-2")
            .iter()
            .all(|w| !(w.resource == "services" && w.name == "istiod")),
        "the agent wrote to the foreign Service"
    );
}

#[tokio::test]
async fn hub_crash_changes_nothing_and_reconnecting_to_an_unchanged_hub_writes_nothing() {
    let mut mesh = synced_mesh().await;
    let before: Vec<usize> =
        futures::future::join_all(REMOTES.iter().map(|r| settled_writes(&mesh, r))).await;
    let slices_before = managed_slices(&mesh, "remote-1").await;
    assert!(slices_before > 0);

    mesh.kill_hub();
    for r in REMOTES {
        mesh.wait_phase(r, "Synced", SOON).await; // nobody updates status while the hub is down
    }
    assert_eq!(
        managed_slices(&mesh, "remote-1").await,
        slices_before,
        "fail-static: nothing removed"
    );

    mesh.start_hub().unwrap();
    for r in REMOTES {
        eventually(
            &format!("{r} to reconnect and ack the new hub"),
            SOON,
            || async {
                anyhow::ensure!(acks_in_hub_log(&mesh, r) >= 1, "no ack yet");
                Ok(())
            },
        )
        .await;
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    for (r, before) in REMOTES.iter().zip(before) {
        let after = settled_writes(&mesh, r).await;
        assert_eq!(
            after,
            before,
            "{r}: reconnecting to an unchanged hub wrote {} time(s)",
            after - before
        );
    }
}

#[tokio::test]
async fn agent_restart_converges_without_writes_when_nothing_changed() {
    let mut mesh = synced_mesh().await;
    let before = settled_writes(&mesh, "remote-1").await;
    let acks = acks_in_hub_log(&mesh, "remote-1");
    mesh.kill_agent("remote-1");
    mesh.start_agent("remote-1").unwrap();
    eventually("the restarted agent to ack", SOON, || async {
        anyhow::ensure!(acks_in_hub_log(&mesh, "remote-1") > acks, "no new ack");
        Ok(())
    })
    .await;
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    assert_eq!(
        settled_writes(&mesh, "remote-1").await,
        before,
        "restart with nothing changed must not write"
    );

    // And a restarted agent does converge when something did change while it was down.
    mesh.kill_agent("remote-1");
    mesh.central_pods()
        .delete("istiod-b", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    mesh.start_agent("remote-1").unwrap();
    eventually("the restarted agent to catch up", SOON, || async {
        let slices = Api::<EndpointSlice>::namespaced(mesh.remote("remote-1").clone(), &mesh.ns)
            .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
            .await?;
        let ips: Vec<String> = slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| e.addresses[0].clone())
            .collect();
        anyhow::ensure!(ips == ["10.10.0.1"], "{ips:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn killed_agent_shows_disconnected_within_the_keepalive_timeout() {
    let mut mesh = synced_mesh().await;
    mesh.kill_agent("remote-2");
    // Keepalive here is 1 s interval + 2 s timeout; a killed process also closes its socket at once.
    let status = mesh
        .wait_phase("remote-2", "Disconnected", Duration::from_secs(5))
        .await;
    let connected = condition(&status, "Connected");
    assert_eq!(
        (connected["status"].as_str(), connected["reason"].as_str()),
        (Some("False"), Some("AgentDisconnected"))
    );
    assert_eq!(
        mesh.status("remote-1").await.unwrap()["phase"],
        "Synced",
        "the other remote is unaffected"
    );
}

#[tokio::test]
async fn deleting_a_remote_cluster_retires_its_agent_then_lets_go() {
    let mesh = synced_mesh().await;
    let rcs = mesh.remote_clusters();
    rcs.delete("remote-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("remote-1 cleaned up", SOON, || {
        cleaned_up(&mesh, "remote-1")
    })
    .await;
    eventually("the RemoteCluster to be gone", SOON, || async {
        anyhow::ensure!(rcs.get_opt("remote-1").await?.is_none(), "still there");
        Ok(())
    })
    .await;
    assert!(
        mesh.log("hub").contains("agent retired"),
        "released because the agent acknowledged, not by timeout"
    );
    assert!(
        managed_slices(&mesh, "remote-2").await > 0,
        "remote-2 keeps its mirrors"
    );
    assert_eq!(mesh.status("remote-2").await.unwrap()["phase"], "Synced");
}

/// Two agents with one cluster identity: the newer stream serves, the older stands by (it stops
/// applying and repairing) and is refused while the other is connected; status, an Event, the hub's
/// log and `tether-hub status` say so. When the serving one goes, the standby takes over.
#[tokio::test]
async fn a_second_agent_with_the_same_identity_is_reported_and_only_one_writes() {
    let mut mesh = synced_mesh().await;
    let r = "remote-1";
    mesh.agent_args(&["--standby-retry", "1s"]);
    mesh.kill_agent(r);
    mesh.start_agent(r).unwrap();
    eventually("the restarted agent connected", SOON, || async {
        anyhow::ensure!(
            mesh.log(&format!("agent-{r}")).matches("connected").count() >= 2,
            "not yet"
        );
        Ok(())
    })
    .await;
    mesh.wait_phase(r, "Synced", SOON).await;

    mesh.start_twin_agent(r, "remote-1-twin").unwrap();
    let status = eventually("status to report two agents", SOON, || async {
        let status = mesh.status(r).await?;
        let c = condition(&status, "SingleAgent");
        anyhow::ensure!(
            c["status"] == "False" && c["reason"] == "DuplicateAgent",
            "{status}"
        );
        Ok(status)
    })
    .await;
    assert_eq!(status["phase"], "Degraded", "{status}");
    let message = condition(&status, "SingleAgent")["message"].to_string();
    assert!(message.contains("share"), "{message}");
    eventually("a DuplicateAgent event", SOON, || async {
        let events = mesh.events_for(r).await;
        anyhow::ensure!(
            events.iter().any(|(reason, _)| reason == "DuplicateAgent"),
            "{events:?}"
        );
        Ok(())
    })
    .await;
    assert!(
        mesh.log("hub").contains("two agents share"),
        "the hub logs the duplicate"
    );
    let (_, table, _) = mesh.hub_cli(&["status", "--namespace", &mesh.ns]);
    let row = table.lines().find(|l| l.starts_with(r)).unwrap_or_default();
    assert!(row.contains("DUPLICATE"), "{table}");
    assert!(
        mesh.log(&format!("agent-{r}")).contains("standing by"),
        "the replaced agent says it stands by"
    );

    // The state changes: the serving agent deletes a slice; the standby must neither write nor
    // bring it back from its older snapshot.
    let standby_writes = mesh.agent_write_count(r);
    mesh.central_pods()
        .delete("istiod-b", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("only istiod-a's slice left", SOON, || async {
        anyhow::ensure!(managed_slices(&mesh, r).await == 1, "not yet");
        Ok(())
    })
    .await;
    let twin_user = mesh.twin_user("remote-1-twin");
    let mut quiet = 0;
    eventually("the twin to stop writing", SOON, || {
        let n = mesh
            .planes
            .get(r)
            .audit_writes()
            .unwrap()
            .iter()
            .filter(|w| w.user == twin_user)
            .count();
        let settled = n == quiet;
        quiet = n;
        async move {
            anyhow::ensure!(settled, "writing");
            Ok(())
        }
    })
    .await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            managed_slices(&mesh, r).await,
            1,
            "a deleted slice came back"
        );
    }
    assert_eq!(
        mesh.agent_write_count(r),
        standby_writes,
        "the standby agent wrote"
    );

    // The serving twin goes away: the standby takes over and the report clears.
    mesh.kill_agent("remote-1-twin");
    eventually("the standby to take over", SOON, || async {
        let status = mesh.status(r).await?;
        anyhow::ensure!(
            status["phase"] == "Synced" && condition(&status, "SingleAgent")["status"] == "True",
            "{status}"
        );
        Ok(())
    })
    .await;
}

/// A RemoteCluster deleted while its agent is away: the finalizer lets go after the retire timeout,
/// and the hub remembers the retirement (in a ConfigMap, across hub restarts) until the agent comes
/// back and removes what it manages.
#[tokio::test]
async fn a_remote_cluster_deleted_while_its_agent_is_away_is_retired_when_it_returns() {
    let mut mesh = synced_mesh().await;
    let r = "remote-1";
    mesh.kill_hub();
    mesh.hub_args = vec!["--retire-timeout".into(), "2s".into()];
    mesh.start_hub().unwrap();
    mesh.kill_agent(r);
    let rcs = mesh.remote_clusters();
    rcs.delete(r, &DeleteParams::default()).await.unwrap();
    eventually("the RemoteCluster to be released", SOON, || async {
        anyhow::ensure!(rcs.get_opt(r).await?.is_none(), "still there");
        Ok(())
    })
    .await;
    // The hub's memory outlives the hub.
    mesh.kill_hub();
    mesh.start_hub().unwrap();
    assert!(managed_slices(&mesh, r).await > 0, "nothing removed yet");

    mesh.start_agent(r).unwrap();
    eventually(
        "the returning agent to remove what it managed",
        SOON,
        || cleaned_up(&mesh, r),
    )
    .await;
    eventually(
        "the hub to forget the retirement once acknowledged",
        SOON,
        || async {
            anyhow::ensure!(
                mesh.log("hub").contains("retirement acknowledged"),
                "not yet"
            );
            Ok(())
        },
    )
    .await;
    assert!(
        mesh.log(&format!("agent-{r}")).contains("retired"),
        "the agent says why it removed everything"
    );
    assert!(managed_slices(&mesh, "remote-2").await > 0);
    // (Its agent reconnected after the hub restarts.)
    mesh.wait_phase("remote-2", "Synced", SOON).await;
}
