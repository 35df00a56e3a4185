//! End-to-end observability: `tether-hub status` in every state, the admin servers' metrics moving as
//! the system acts, readiness, gRPC health, and Kubernetes Events on the RemoteCluster.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::time::Duration;
use tether_agent::client::connect;
use tether_proto::v1::sync_client::SyncClient;
use tether_proto::v1::{AgentMessage, Hello, HubMessage, agent_message};
use tether_tests::fixtures::{
    REMOTES, SOON, agent_channel, client_settings, synced_mesh, synced_mesh_with,
};
use tether_tests::mesh::Mesh;
use tether_tests::{eventually, metric};

/// An agent that says Hello, takes snapshots and never answers: a stuck agent, as the hub sees it.
async fn silent_agent(
    mesh: &Mesh,
    cluster: &str,
) -> (
    tokio::sync::mpsc::Sender<AgentMessage>,
    tonic::Streaming<HubMessage>,
) {
    mesh.write_agent_cert(cluster, cluster, false).unwrap();
    let channel = connect(&client_settings(
        mesh,
        &mesh.dir.join(format!("tls-{cluster}")),
        cluster,
    ))
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello {
        cluster: cluster.into(),
        agent_version: "9.9.9-silent".into(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Hello(hello)),
    })
    .await
    .unwrap();
    let mut stream = SyncClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap();
    assert!(first.is_some(), "the hub sends a snapshot");
    (tx, stream)
}

fn state_of<'a>(table: &'a str, cluster: &str) -> &'a str {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cluster))
        .unwrap_or_else(|| panic!("no row for {cluster}:\n{table}"));
    let rest = line[cluster.len()..].trim_start();
    if rest.starts_with("NEVER CONNECTED") {
        "NEVER CONNECTED"
    } else {
        rest.split_whitespace().next().unwrap()
    }
}

#[tokio::test]
async fn status_command_reports_every_state_with_its_reason() {
    let foreign: Service = serde_json::from_value(
        json!({"metadata": {"name": "istiod"}, "spec": {"ports": [{"port": 8080}]}}),
    )
    .unwrap();
    let mut mesh = synced_mesh_with(|mesh| {
        let api: Api<Service> = Api::namespaced(mesh.remote("remote-2").clone(), &mesh.ns);
        let foreign = foreign.clone();
        async move {
            api.create(&PostParams::default(), &foreign).await.unwrap();
        }
    })
    .await;
    mesh.create_remote_cluster("slow", json!({})).await.unwrap();
    mesh.create_remote_cluster("never", json!({}))
        .await
        .unwrap();
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    mesh.wait_phase("remote-2", "Degraded", SOON).await;
    let _silent = silent_agent(&mesh, "slow").await;
    mesh.wait_phase("slow", "Connected", SOON).await;
    mesh.wait_phase("never", "Pending", SOON).await;

    let admin = format!("http://127.0.0.1:{}", mesh.hub_admin_port);
    let (code, table, _) =
        mesh.hub_cli(&["status", "--namespace", &mesh.ns, "--admin-url", &admin]);
    assert_eq!(code, 0, "{table}");
    assert_eq!(state_of(&table, "remote-1"), "SYNCED", "{table}");
    assert_eq!(state_of(&table, "remote-2"), "NACKED", "{table}");
    assert_eq!(state_of(&table, "slow"), "STALE", "{table}");
    assert_eq!(state_of(&table, "never"), "NEVER CONNECTED", "{table}");
    let nacked_row = table.lines().find(|l| l.starts_with("remote-2")).unwrap();
    assert!(
        nacked_row.contains("managed-by"),
        "the last error says why: {nacked_row}"
    );

    let (code, json_out, err) = mesh.hub_cli(&[
        "status",
        "--namespace",
        &mesh.ns,
        "--admin-url",
        &admin,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let rows: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    let by_name = |n: &str| rows.iter().find(|r| r["cluster"] == n).unwrap().clone();
    assert_eq!(by_name("remote-1")["state"], "SYNCED", "{err}");
    // The versions are the live view's.
    let r1 = by_name("remote-1");
    assert!(
        r1["desiredVersion"].as_str().is_some_and(|v| !v.is_empty()),
        "{r1} {err}"
    );
    assert_eq!(r1["ackedVersion"], r1["desiredVersion"]);
    assert_eq!(r1["endpoints"], 2);
    // From the status alone: the state, without versions.
    let (code, json_out, _) = mesh.hub_cli(&["status", "--namespace", &mesh.ns, "-o", "json"]);
    assert_eq!(code, 0);
    let rows: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    let r1 = rows.iter().find(|r| r["cluster"] == "remote-1").unwrap();
    assert_eq!(
        (r1["state"].as_str(), r1["desiredVersion"].as_str()),
        (Some("SYNCED"), Some(""))
    );
    let slow = rows.iter().find(|r| r["cluster"] == "slow").unwrap();
    assert_eq!(slow["state"], "STALE", "{slow}");
    assert_eq!(
        by_name("remote-1")["agentVersion"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(by_name("slow")["agentVersion"], "9.9.9-silent");
    assert_eq!(by_name("never")["state"], "NEVER_CONNECTED");
    let (code, yaml_out, _) = mesh.hub_cli(&["status", "--namespace", &mesh.ns, "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml_out.contains("state: NACKED"), "{yaml_out}");

    // Server reflection lists every service on the port (grpcurl needs no proto file for health).
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(agent_channel(&mesh, "remote-1").await);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let listed = match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l,
        other => panic!("{other:?}"),
    };
    let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "tether.sync.v1.Sync"
        ]
    );

    let (code, _, stderr) = mesh.hub_cli(&[
        "status",
        "--namespace",
        &mesh.ns,
        "--wait",
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, 2, "--wait times out when remotes are not synced");
    for r in ["remote-2", "slow", "never"] {
        assert!(stderr.contains(r), "{stderr}");
    }

    let status = mesh.status("remote-2").await.unwrap();
    assert!(
        status["sync"]["lastNack"]["message"]
            .as_str()
            .unwrap()
            .contains("managed-by")
    );
    eventually("Events on the RemoteClusters", SOON, || async {
        let r1 = mesh.events_for("remote-1").await;
        let r2 = mesh.events_for("remote-2").await;
        anyhow::ensure!(
            r1.iter().any(|(reason, _)| reason == "AgentConnected"),
            "remote-1: {r1:?}"
        );
        anyhow::ensure!(
            r2.iter()
                .any(|(reason, note)| reason == "Conflict" && note.contains("managed-by")),
            "remote-2: {r2:?}"
        );
        Ok(())
    })
    .await;

    mesh.kill_agent("remote-1");
    mesh.wait_phase("remote-1", "Disconnected", Duration::from_secs(10))
        .await;
    let (_, table, _) = mesh.hub_cli(&["status", "--namespace", &mesh.ns]);
    assert_eq!(state_of(&table, "remote-1"), "DISCONNECTED", "{table}");
    eventually("a disconnect Event", SOON, || async {
        let r1 = mesh.events_for("remote-1").await;
        anyhow::ensure!(
            r1.iter().any(|(reason, _)| reason == "AgentDisconnected"),
            "{r1:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn metrics_move_as_the_system_acts_and_health_says_serving() {
    let mesh = synced_mesh().await;
    let hub = mesh.hub_admin_port;
    let agent = mesh.agent_admin_ports["remote-1"];
    for port in [hub, agent] {
        assert_eq!(Mesh::admin_get(port, "/ready").await.unwrap().0, 200);
        assert_eq!(Mesh::admin_get(port, "/live").await.unwrap().0, 200);
    }
    let (code, before) = Mesh::admin_get(hub, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        metric(&before, "tether_hub_streams_connected"),
        2.0,
        "{before}"
    );
    let agent_before = Mesh::admin_get(agent, "/metrics").await.unwrap().1;
    assert_eq!(metric(&agent_before, "tether_agent_connected"), 1.0);

    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    eventually("hub counters to move", SOON, || async {
        let now = Mesh::admin_get(hub, "/metrics").await?.1;
        for name in [
            "tether_hub_snapshots_pushed_total",
            "tether_hub_acks_total",
            "tether_hub_propagation_seconds_count",
            "tether_hub_push_ack_seconds_count",
        ] {
            anyhow::ensure!(
                metric(&now, name) >= metric(&before, name) + 2.0,
                "{name} did not grow by one per remote"
            );
        }
        Ok(())
    })
    .await;
    eventually("agent write counters to move", SOON, || async {
        let now = Mesh::admin_get(agent, "/metrics").await?.1;
        let slice_writes = |t: &str| {
            metric(
                t,
                "tether_agent_api_writes_total{kind=\"EndpointSlice\",verb=\"apply\"}",
            )
        };
        anyhow::ensure!(
            slice_writes(&now) > slice_writes(&agent_before),
            "no EndpointSlice write counted:\n{now}"
        );
        anyhow::ensure!(
            metric(&now, "tether_agent_snapshots_applied_total")
                > metric(&agent_before, "tether_agent_snapshots_applied_total")
        );
        Ok(())
    })
    .await;

    let (code, streams) = Mesh::admin_get(hub, "/streams").await.unwrap();
    assert_eq!(code, 200);
    let streams: Value = serde_json::from_str(&streams).unwrap();
    assert_eq!(streams["remote-1"]["streams"], 1);
    // When the agent's certificate expires (in the future: the harness mints long-lived ones).
    let not_after: k8s_openapi::jiff::Timestamp = streams["remote-1"]["certificateNotAfter"]
        .as_str()
        .unwrap_or_else(|| panic!("{streams}"))
        .parse()
        .unwrap();
    assert!(not_after > k8s_openapi::jiff::Timestamp::now(), "{streams}");

    // grpc.health.v1 on the hub's mTLS port, with an agent's certificate.
    let channel = agent_channel(&mesh, "remote-1").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "tether.sync.v1.Sync"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            resp.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    let (code, _, stderr) = mesh.hub_cli(&[
        "status",
        "--namespace",
        &mesh.ns,
        "--wait",
        "--timeout",
        "30s",
    ]);
    assert_eq!(
        code, 0,
        "--wait returns 0 once every remote is synced: {stderr}"
    );
}

/// RemoteCluster status is written when the remote's state changes, not on every pass of the writer
/// and not for a central change its agent keeps up with: nothing while idle, nothing for a pod
/// change the agents acknowledge (the versions are the live view's; an agent behind for longer than
/// `--sync-deadline` turns Connected: unit-tested in `hub/src/status/compute.rs`).
#[tokio::test]
async fn status_is_written_per_change_not_per_pass() {
    let mesh = synced_mesh().await;
    let hub = mesh.hub_admin_port;
    let writes = || async {
        let text = Mesh::admin_get(hub, "/metrics").await.unwrap().1;
        metric(&text, "tether_hub_status_writes_total")
    };
    let mut before = Vec::new();
    for r in REMOTES {
        mesh.wait_phase(r, "Synced", SOON).await;
        let live = eventually(&format!("{r} acked"), SOON, || mesh.live_synced(r)).await;
        before.push(live["ackedVersion"].clone());
    }
    // Settle: anything the start-up left is written within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_start = writes().await;
    // 30 passes of the writer (--status-interval 100ms in tests).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(writes().await, idle_start, "an idle hub writes no status");

    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    for (r, old) in REMOTES.iter().zip(&before) {
        eventually(
            &format!("{r} to acknowledge the new version"),
            SOON,
            || async {
                let live = mesh.live_synced(r).await?;
                anyhow::ensure!(
                    live["ackedVersion"] != *old && live["endpoints"] == 3,
                    "{live}"
                );
                Ok(())
            },
        )
        .await;
    }
    // More than the writer's interval, less than the sync deadline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in REMOTES {
        assert_eq!(mesh.status(r).await.unwrap()["phase"], "Synced");
    }
    assert_eq!(
        writes().await,
        idle_start,
        "a central change the agents acknowledge writes no status"
    );
}
