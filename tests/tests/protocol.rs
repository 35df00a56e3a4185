//! Protocol behaviour between the agent's real stream client and the hub's real gRPC service, in
//! this process over real mTLS, with no API server ([`tether_tests::fakes`]): pacing and latest
//! wins, reconnects, one agent per identity, re-reports, Retire. Each test takes milliseconds.

use std::time::Duration;
use tether_agent::reconcile::{Answer, Command};
use tether_hub::desired::Desired;
use tether_tests::eventually;
use tether_tests::fakes::{FakeAgent, FakeHub};

const SOON: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn two_snapshots_in_flight_then_only_the_newest_state_follows_an_answer() {
    let hub = FakeHub::start().await.unwrap();
    hub.set_version("r1", "v1");
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), false);
    let first = agent.next_snapshot(SOON).await;
    assert_eq!(first.version, "v1");
    hub.set_version("r1", "v2");
    let second = agent.next_snapshot(SOON).await;
    assert_eq!(second.version, "v2", "a second state leaves while v1 waits");
    for i in 3..=10 {
        hub.set_version("r1", &format!("v{i}"));
    }
    assert!(
        agent.nothing_within(QUIET).await.is_none(),
        "nothing more leaves while v1 and v2 wait for their answers"
    );
    // An agent that skipped the rest of v1 for v2 answers v2 only: that frees both places.
    agent.ack(&second).await;
    let next = agent.next_snapshot(SOON).await;
    assert_eq!(next.version, "v10", "the newest, not the queue");
    hub.set_version("r1", "v11");
    let after = agent.next_snapshot(SOON).await;
    assert_eq!(after.version, "v11", "both places were freed");
    agent.ack(&after).await;
    assert!(agent.nothing_within(QUIET).await.is_none());
    eventually("the hub to record the ACK", SOON, || async {
        anyhow::ensure!(hub.stream_state("r1").acked_version == "v11");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_restarted_hub_is_dialled_again_and_told_what_the_agent_applied() {
    let hub = FakeHub::start().await.unwrap();
    let addr = hub.addr;
    hub.set_version("r1", "v1");
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), true);
    assert_eq!(agent.next_snapshot(SOON).await.version, "v1");
    let ca = hub.stop().await;
    let hub = FakeHub::start_on(addr, Some(ca)).await.unwrap();
    hub.set_version("r1", "v1");
    // The new hub learns from the Hello that the agent holds v1, an ACK it never asked for.
    eventually("the agent to dial the new hub", SOON, || async {
        let s = hub.stream_state("r1");
        anyhow::ensure!(s.streams == 1 && s.acked_version == "v1", "{s:?}");
        Ok(())
    })
    .await;
    // Every new stream starts with the whole desired state (the agent compares before writing).
    assert_eq!(agent.next_snapshot(SOON).await.version, "v1");
    hub.set_version("r1", "v2");
    assert_eq!(agent.next_snapshot(SOON).await.version, "v2");
}

#[tokio::test]
async fn a_second_agent_takes_over_the_first_stands_by_and_is_refused_until_the_second_goes() {
    let hub = FakeHub::start().await.unwrap();
    hub.set_version("r1", "v1");
    let mut first = FakeAgent::start(hub.agent_config("r1").unwrap(), true);
    assert_eq!(first.next_snapshot(SOON).await.version, "v1");
    let mut second = FakeAgent::start(hub.agent_config("r1").unwrap(), true);
    assert_eq!(second.next_snapshot(SOON).await.version, "v1");
    // The first is told to stand down, then asks again as a standby and is refused.
    let stood_down = loop {
        match first.next(SOON).await {
            Some(Command::StandDown) => break true,
            Some(_) => continue,
            None => break false,
        }
    };
    assert!(stood_down, "the replaced agent stands down");
    eventually("the standby to be refused", SOON, || async {
        anyhow::ensure!(first.reconnects("duplicate") >= 1, "not yet");
        anyhow::ensure!(hub.stream_state("r1").duplicate.is_some());
        Ok(())
    })
    .await;
    assert_eq!(first.reconnects("replaced"), 1);
    // A change reaches only the serving agent.
    hub.set_version("r1", "v2");
    assert_eq!(second.next_snapshot(SOON).await.version, "v2");
    assert!(
        !matches!(first.nothing_within(QUIET).await, Some(Command::Apply(_))),
        "the standby gets nothing to apply"
    );
    // The serving one goes: the standby is admitted, gets the state, and the report ends.
    second.stop();
    assert_eq!(first.next_snapshot(SOON).await.version, "v2");
    eventually("the duplicate to be over", SOON, || async {
        anyhow::ensure!(hub.stream_state("r1").duplicate.is_none());
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_reconnect_of_the_same_agent_is_not_a_second_agent() {
    let hub = FakeHub::start().await.unwrap();
    let addr = hub.addr;
    hub.set_version("r1", "v1");
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), true);
    agent.next_snapshot(SOON).await;
    // The hub goes and comes back while the agent's old stream looked alive to it.
    let ca = hub.stop().await;
    let hub = FakeHub::start_on(addr, Some(ca)).await.unwrap();
    hub.set_version("r1", "v2");
    agent.next_snapshot(SOON).await;
    assert_eq!(agent.reconnects("replaced"), 0);
    assert_eq!(agent.reconnects("duplicate"), 0);
    assert!(hub.stream_state("r1").duplicate.is_none());
}

/// A draining hub asks its agent to move. The first tries to open the new stream fail (the draining
/// hub's listener is closed, and nothing else listens yet, as when the load balancer still sends to
/// a pod on its way out): the agent stays on its stream and tries again, and moves once a hub
/// answers, long before the old hub's drain timeout (10 s) would close the old stream on it.
#[tokio::test]
async fn an_agent_whose_move_fails_stays_and_tries_again() {
    let hub = FakeHub::start().await.unwrap();
    let addr = hub.addr;
    hub.set_version("r1", "v1");
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), true);
    assert_eq!(agent.next_snapshot(SOON).await.version, "v1");
    let (ca, old) = hub.drain();
    // Several tries fail meanwhile (the agent's backoff here is 50-200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hub = FakeHub::start_on(addr, Some(ca)).await.unwrap();
    hub.set_version("r1", "v1");
    let moved = Duration::from_secs(5);
    eventually("the agent to move to the new hub", moved, || async {
        let s = hub.stream_state("r1");
        anyhow::ensure!(s.streams == 1 && s.acked_version == "v1", "{s:?}");
        Ok(())
    })
    .await;
    assert_eq!(agent.reconnects("moved"), 1);
    for reason in ["closed", "broken", "connect", "refused"] {
        assert_eq!(
            agent.reconnects(reason),
            0,
            "the old stream was not closed on ({reason})"
        );
    }
    // The old hub's stream ended with the move, so it stops.
    tokio::time::timeout(SOON, old)
        .await
        .expect("the old hub stopped")
        .unwrap();
    // The new stream began with the whole state; the new hub serves what follows.
    assert_eq!(agent.next_snapshot(SOON).await.version, "v1");
    hub.set_version("r1", "v2");
    assert_eq!(agent.next_snapshot(SOON).await.version, "v2");
}

#[tokio::test]
async fn an_agent_may_report_again_that_its_state_no_longer_holds_and_then_holds() {
    let hub = FakeHub::start().await.unwrap();
    hub.set_version("r1", "v1");
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), false);
    let snap = agent.next_snapshot(SOON).await;
    agent.ack(&snap).await;
    let acked = || async {
        let s = hub.stream_state("r1");
        Ok::<_, anyhow::Error>((s.acked_version, s.last_nack.map(|n| n.message)))
    };
    eventually("ACK", SOON, || async {
        anyhow::ensure!(acked().await?.0 == "v1");
        Ok(())
    })
    .await;
    agent.nack(&snap, "namespace app deleted").await;
    eventually("the re-reported NACK", SOON, || async {
        let (version, nack) = acked().await?;
        anyhow::ensure!(version.is_empty(), "still acked {version}");
        anyhow::ensure!(nack.unwrap_or_default().contains("namespace app deleted"));
        Ok(())
    })
    .await;
    agent.ack(&snap).await;
    eventually("the ACK again", SOON, || async {
        anyhow::ensure!(acked().await?.0 == "v1");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn retire_is_answered_with_retired_and_recorded() {
    let hub = FakeHub::start().await.unwrap();
    hub.set_version("r1", "v1");
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), true);
    agent.next_snapshot(SOON).await;
    hub.set(
        "r1",
        Desired {
            retire: true,
            ..Default::default()
        },
    );
    let nonce = loop {
        match agent.next(SOON).await {
            Some(Command::Retire { nonce }) => break nonce,
            Some(_) => continue,
            None => panic!("no Retire"),
        }
    };
    agent
        .answer(Answer::Retired {
            nonce,
            failures: vec![],
        })
        .await;
    eventually("the hub to record the retirement", SOON, || async {
        anyhow::ensure!(hub.stream_state("r1").retired);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_unknown_cluster_is_refused_and_the_agent_keeps_asking() {
    let hub = FakeHub::start().await.unwrap();
    let mut agent = FakeAgent::start(hub.agent_config("nobody").unwrap(), true);
    eventually("refusals", SOON, || async {
        anyhow::ensure!(agent.reconnects("permission_denied") >= 2, "not yet");
        Ok(())
    })
    .await;
    // Once the hub knows the cluster, the same agent gets in.
    hub.set_version("nobody", "v1");
    assert_eq!(agent.next_snapshot(SOON).await.version, "v1");
}

#[tokio::test]
async fn a_snapshot_far_larger_than_the_stream_buffers_crosses_whole_and_the_stream_goes_on() {
    use tether_proto::v1::{Endpoint, Port, Service};
    // The codec starts each stream with 1 KiB buffers (tether_proto::codec). This state is over a
    // hundred times that (about 190 KiB, many HTTP/2 frames); a small one follows on the same stream.
    let hub = FakeHub::start().await.unwrap();
    let mut big = tether_tests::fakes::snapshot("big");
    big.services = vec![Service {
        name: "istiod".into(),
        ports: vec![Port {
            name: "grpc-xds".into(),
            protocol: "TCP".into(),
            port: 15010,
            ..Default::default()
        }],
        endpoints: (0..5_000)
            .map(|i| Endpoint {
                ip: format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
                ready: i % 3 != 0,
                serving: true,
                pod_name: format!("istiod-{i:05}"),
                zone: "zone-a".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }];
    let size = prost::Message::encoded_len(&big);
    assert!(
        size > 100 * tether_proto::codec::BUFFER_BYTES,
        "{size} bytes"
    );
    hub.set(
        "r1",
        Desired {
            snapshot: Some(std::sync::Arc::new(big.clone())),
            ..Default::default()
        },
    );
    let mut agent = FakeAgent::start(hub.agent_config("r1").unwrap(), false);
    let got = agent.next_snapshot(SOON).await;
    assert_eq!(got.services, big.services, "every endpoint, in order");
    agent.ack(&got).await;
    hub.set_version("r1", "small");
    let small = agent.next_snapshot(SOON).await;
    assert_eq!(small.version, "small");
    assert!(small.services.is_empty());
    agent.ack(&small).await;
    eventually("the hub to record the ACK", SOON, || async {
        anyhow::ensure!(hub.stream_state("r1").acked_version == "small");
        Ok(())
    })
    .await;
}
