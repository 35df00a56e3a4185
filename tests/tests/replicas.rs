//! Several hub replicas (`tether-hub serve --replica-id`) behind a TCP balancer, as a Service in
//! front of a Deployment would be. Two real agents (remote-1, remote-2) and a fleet of stream
//! clients (the agent's real client, ACKing at once) connect through it, so each replica holds some
//! streams. With pod churn running, the leader is killed (-9), then, after it came back, the replica
//! holding the most streams. Every remote ends exact; no remote ever reads Disconnected (its agent
//! was always connected to some replica, or back within the balancer's reconnect); each remote's
//! status writes, from the central audit log (each replica incarnation is its own API user), come
//! in runs of one writer: a replica never writes again once another took over. Then a failover
//! with nothing changed costs the remotes zero writes.

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_tests::balancer::Balancer;
use tether_tests::bench::LoadGen;
use tether_tests::controlplane::free_port;
use tether_tests::faults::{churn, endpoints};
use tether_tests::fixtures::{CLUSTERS, REMOTES, SOON, client_settings};
use tether_tests::mesh::Mesh;
use tether_tests::{ControlPlanes, eventually};

/// Stream clients beside the two real agents.
const FLEET: usize = 24;
const IDS: [&str; 3] = ["hub-0", "hub-1", "hub-2"];

struct Replicas {
    ports: HashMap<&'static str, (u16, u16)>,
    incarnation: HashMap<&'static str, u32>,
}

impl Replicas {
    fn user(&self, mesh: &Mesh, id: &str) -> String {
        format!("tether-hub-{}-{id}-{}", mesh.ns, self.incarnation[id])
    }

    fn start(&mut self, mesh: &mut Mesh, id: &'static str) {
        *self.incarnation.entry(id).or_default() += 1;
        let (grpc, admin) = self.ports[id];
        let user = self.user(mesh, id);
        mesh.start_replica(id, &user, grpc, admin).unwrap();
    }

    fn upstreams(&self) -> Vec<SocketAddr> {
        IDS.iter()
            .map(|id| SocketAddr::from(([127, 0, 0, 1], self.ports[id].0)))
            .collect()
    }
}

async fn leader(mesh: &Mesh) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(mesh.central.clone(), &mesh.ns);
    let lease = leases.get_opt("tether-hub-leader").await.ok()??;
    lease.spec?.holder_identity
}

/// Every remote's status, by name.
async fn statuses(mesh: &Mesh) -> anyhow::Result<BTreeMap<String, Value>> {
    let list = mesh.remote_clusters().list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .map(|rc| {
            let name = rc.metadata.name.clone().unwrap_or_default();
            (name, rc.data.get("status").cloned().unwrap_or(Value::Null))
        })
        .collect())
}

/// Every remote Synced, written by a live replica, and (the live view of the replica holding its
/// stream) acked on one and the same desired version; returns the replica each is on.
async fn all_synced(
    mesh: &Mesh,
    n: usize,
    live: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    let all = statuses(mesh).await?;
    anyhow::ensure!(all.len() == n, "{} remotes", all.len());
    let mut versions = std::collections::BTreeSet::new();
    let mut hubs = BTreeMap::new();
    for (name, s) in &all {
        anyhow::ensure!(s["phase"] == "Synced", "{name}: {}", s["phase"]);
        let view = mesh.live_synced(name).await?;
        versions.insert(view["desiredVersion"].to_string());
        let hub = s["agent"]["hub"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(live.contains(&hub.as_str()), "{name} on {hub:?}");
        hubs.insert(name.clone(), hub);
    }
    anyhow::ensure!(versions.len() == 1, "desired versions differ: {versions:?}");
    Ok(hubs)
}

/// Every remote served: its agent on a live replica that wrote its status (Connected or Synced:
/// under churn a remote is briefly between versions). Returns the replica each is on.
async fn all_served(
    mesh: &Mesh,
    n: usize,
    live: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    let all = statuses(mesh).await?;
    anyhow::ensure!(all.len() == n, "{} remotes", all.len());
    let mut hubs = BTreeMap::new();
    for (name, s) in &all {
        anyhow::ensure!(
            s["phase"] == "Synced" || s["phase"] == "Connected",
            "{name}: {}",
            s["phase"]
        );
        let hub = s["agent"]["hub"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(live.contains(&hub.as_str()), "{name} on {hub:?}");
        hubs.insert(name.clone(), hub);
    }
    Ok(hubs)
}

/// Stops the churn in a known state (both istiod pods ready) and waits until both real remotes
/// hold exactly it.
async fn end_churn_exactly(mesh: &Mesh, churning: tokio::task::JoinHandle<()>) {
    churning.abort();
    let _ = churning.await;
    tether_tests::pods::set_pod_status(&mesh.central_pods(), "istiod-b", &["10.10.0.2"], true)
        .await
        .unwrap();
    let want = vec![
        ("10.10.0.1".to_string(), true),
        ("10.10.0.2".to_string(), true),
    ];
    for r in REMOTES {
        eventually(&format!("{r} exact"), SOON, || async {
            let got = endpoints(mesh, r).await?;
            anyhow::ensure!(got == want, "{got:?}");
            Ok(())
        })
        .await;
    }
}

fn count_by_hub(hubs: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for h in hubs.values() {
        *by.entry(h.clone()).or_default() += 1;
    }
    by
}

/// Records every RemoteCluster that reads Disconnected, from a watch.
fn watch_disconnected(mesh: &Mesh) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = mesh.watch_remote_clusters("0".into(), move |rc| {
        if rc.data["status"]["phase"] == "Disconnected" {
            let name = rc.metadata.name.clone().unwrap_or_default();
            let hub = rc.data["status"]["agent"]["hub"].to_string();
            out.lock().unwrap().push(format!("{name} (hub {hub})"));
        }
    });
    (seen, task)
}

/// The real agents' reconnects by reason (`tether_agent_reconnects_total`), summed over both.
async fn agent_reconnects(mesh: &Mesh) -> BTreeMap<String, f64> {
    let mut by = BTreeMap::new();
    for r in REMOTES {
        let (_, text) = Mesh::admin_get(mesh.agent_admin_ports[*r], "/metrics")
            .await
            .unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("tether_agent_reconnects_total{reason=\"")
                && let Some((reason, value)) = rest.split_once("\"} ")
            {
                *by.entry(reason.to_string()).or_default() += value.parse::<f64>().unwrap();
            }
        }
    }
    by
}

/// Three replicas behind a balancer, the two real agents and the stream fleet connected through it.
struct Fleet {
    mesh: Mesh,
    replicas: Replicas,
    _balancer: Balancer,
    load: LoadGen,
    n: usize,
}

/// The two tests run one after the other: each is three hubs, 26 streams and churn on two cores,
/// and keepalives that time out under a doubled load would be the machine's doing, not the hub's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn fleet() -> Fleet {
    fleet_of(&IDS, &[]).await
}

/// The fleet with only the replicas `start` running, each with `hub_args`.
async fn fleet_of(start: &[&'static str], hub_args: &[&str]) -> Fleet {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, REMOTES).await.unwrap();
    mesh.create_istiod_service().await.unwrap();
    mesh.create_istiod_pod("istiod-a", "10.10.0.1", 15010, true)
        .await
        .unwrap();
    mesh.create_istiod_pod("istiod-b", "10.10.0.2", 16010, true)
        .await
        .unwrap();
    let fleet: Vec<String> = (0..FLEET).map(|i| format!("lg-{i}")).collect();
    for name in REMOTES.iter().map(|r| r.to_string()).chain(fleet.clone()) {
        mesh.create_remote_cluster(&name, json!({})).await.unwrap();
    }
    let n = REMOTES.len() + FLEET;

    let mut replicas = Replicas {
        ports: IDS
            .iter()
            .map(|id| (*id, (free_port(), free_port())))
            .collect(),
        incarnation: HashMap::new(),
    };
    mesh.hub_args = hub_args.iter().map(|a| a.to_string()).collect();
    for id in start {
        replicas.start(&mut mesh, id);
    }
    let balancer = Balancer::start(replicas.upstreams()).await.unwrap();
    for r in REMOTES {
        mesh.agent_hub_addr
            .insert(r.to_string(), balancer.addr.to_string());
        mesh.start_agent(r).unwrap();
    }
    let configs = fleet
        .iter()
        .map(|name| {
            let dir = mesh.write_agent_cert(name, name, false).unwrap();
            let mut c = client_settings(&mesh, &dir, name);
            c.hub_addr = balancer.addr.to_string();
            c
        })
        .collect();
    let load = LoadGen::start(configs);

    Fleet {
        mesh,
        replicas,
        _balancer: balancer,
        load,
        n,
    }
}

// Multi-threaded: the balancer runs on the test's runtime and must keep forwarding while the test
// waits for a stopped replica to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fail_over_under_churn_and_no_two_write_one_status() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Fleet {
        mut mesh,
        mut replicas,
        _balancer,
        load,
        n,
    } = fleet().await;
    let planes = mesh.planes;
    let hubs = eventually("every remote Synced", SOON, || all_synced(&mesh, n, &IDS)).await;
    let by_hub = count_by_hub(&hubs);
    println!("streams by replica: {by_hub:?}");
    assert!(
        by_hub.len() >= 2,
        "the balancer spread the streams: {by_hub:?}"
    );
    let (disconnected, watcher) = watch_disconnected(&mesh);
    let churning = churn(&mesh, Duration::from_millis(700));

    // 1. kill -9 the leader.
    let first = eventually("a leader", SOON, || async {
        leader(&mesh).await.ok_or_else(|| anyhow::anyhow!("none"))
    })
    .await;
    let first: &'static str = IDS.iter().find(|id| **id == first).unwrap();
    let t = Instant::now();
    mesh.kill_replica(first);
    let live: Vec<&str> = IDS.iter().copied().filter(|id| *id != first).collect();
    let next = eventually("another leader", SOON, || async {
        match leader(&mesh).await {
            Some(l) if l != first => Ok(l),
            other => anyhow::bail!("{other:?}"),
        }
    })
    .await;
    let leader_after = t.elapsed();
    eventually("every remote served by a live replica", SOON, || {
        all_served(&mesh, n, &live)
    })
    .await;
    println!(
        "leader {first} killed: {next} leads after {leader_after:?}; every remote served by a live replica after {:?}",
        t.elapsed()
    );
    replicas.start(&mut mesh, first);

    // 2. kill -9 the replica holding the most streams.
    let hubs = eventually("every remote served", SOON, || all_served(&mesh, n, &IDS)).await;
    let (busiest, held) = count_by_hub(&hubs)
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .unwrap();
    let busiest: &'static str = IDS.iter().find(|id| **id == busiest).unwrap();
    let t = Instant::now();
    mesh.kill_replica(busiest);
    let live: Vec<&str> = IDS.iter().copied().filter(|id| *id != busiest).collect();
    eventually("every remote served by a live replica", SOON, || {
        all_served(&mesh, n, &live)
    })
    .await;
    println!(
        "{busiest} (holding {held} streams) killed: every remote served by a live replica after {:?}",
        t.elapsed()
    );

    // The churn ends in a known state; every remote gets exactly it.
    end_churn_exactly(&mesh, churning).await;
    let hubs = eventually("every remote Synced", SOON, || all_synced(&mesh, n, &live)).await;
    watcher.abort();
    let disconnected = disconnected.lock().unwrap().clone();
    assert!(
        disconnected.is_empty(),
        "remotes read Disconnected while their agents were connected: {disconnected:?}"
    );

    // One writer at a time: per remote, the successful status writes form runs by API user, and
    // no user has two runs (a replica that lost a remote never writes it again).
    let writes = planes.get("central").audit_writes().unwrap();
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut conflicts = 0;
    for w in writes.iter().filter(|w| {
        w.namespace == mesh.ns && w.resource == "remoteclusters" && w.subresource == "status"
    }) {
        if w.code == 409 {
            conflicts += 1;
            continue;
        }
        let r = runs.entry(w.name.clone()).or_default();
        if r.last() != Some(&w.user) {
            r.push(w.user.clone());
        }
    }
    for (name, users) in &runs {
        let mut distinct = users.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            users.len(),
            "{name}: a replica wrote again after another took over: {users:?}"
        );
    }
    let total: usize = runs.values().map(|r| r.len()).sum();
    println!(
        "status writers per remote: {} remotes, {total} runs in all (at most {}), {conflicts} writes refused with 409",
        runs.len(),
        runs.values().map(|r| r.len()).max().unwrap_or(0)
    );

    // 3. A failover with nothing changed: the real agents move replica and write nothing.
    let before: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_write_count(r)).collect();
    let on: &'static str = IDS.iter().find(|id| **id == hubs["remote-1"]).unwrap();
    mesh.kill_replica(on);
    replicas.start(&mut mesh, busiest);
    let live: Vec<&str> = IDS.iter().copied().filter(|id| *id != on).collect();
    eventually("every remote Synced on a live replica", SOON, || {
        all_synced(&mesh, n, &live)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<usize> = REMOTES.iter().map(|r| mesh.agent_write_count(r)).collect();
    assert_eq!(before, after, "writes on the remotes when nothing changed");
    load.stop();
}

/// A rolling restart (SIGTERM, then a new process, one replica at a time, as the chart's
/// RollingUpdate does) under churn: the agents of each stopped replica move to the others, the
/// leader hands over, and every remote ends on the final state without reading Disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_churn_loses_no_remote() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Fleet {
        mut mesh,
        mut replicas,
        _balancer,
        load,
        n,
    } = fleet().await;
    eventually("every remote Synced", SOON, || all_synced(&mesh, n, &IDS)).await;
    let (disconnected, watcher) = watch_disconnected(&mesh);
    let reconnects_before = agent_reconnects(&mesh).await;
    let churning = churn(&mesh, Duration::from_millis(700));
    let t = Instant::now();
    let mut logs = Vec::new();
    for id in IDS {
        logs.push(format!("hub-{}", replicas.user(&mesh, id)));
        // SIGTERM, then wait for the exit (a blocking wait: off the balancer's way).
        tokio::task::block_in_place(|| mesh.stop_replica(id, Duration::from_secs(10)));
        replicas.start(&mut mesh, id);
        let admin = replicas.ports[id].1;
        eventually(&format!("{id} Ready again"), SOON, || async {
            let (code, _) = Mesh::admin_get(admin, "/ready").await?;
            anyhow::ensure!(code == 200, "{code}");
            Ok(())
        })
        .await;
    }
    println!("three replicas restarted one by one in {:?}", t.elapsed());
    // Drained, not dropped: each stopped replica asked its agents to move, and each moved (opened its
    // new stream before closing the old one) within the drain timeout.
    let reconnects = agent_reconnects(&mesh).await;
    let more = |reason: &str| {
        reconnects.get(reason).copied().unwrap_or(0.0)
            - reconnects_before.get(reason).copied().unwrap_or(0.0)
    };
    println!(
        "real agents' reconnects during the restart: {reconnects:?} (before {reconnects_before:?})"
    );
    assert!(
        more("moved") >= REMOTES.len() as f64,
        "every real agent moved at least once: {reconnects:?}"
    );
    for reason in reconnects.keys().filter(|r| *r != "moved") {
        assert_eq!(
            more(reason),
            0.0,
            "no agent lost its stream ({reason}): {reconnects:?}"
        );
    }
    let mut asked = 0;
    for log in &logs {
        let text = mesh.log(log);
        asked += text.matches("asking the agent to move").count();
        assert!(
            !text.contains("did not move in time"),
            "{log}: an agent was closed on instead of moving"
        );
    }
    assert!(asked >= n, "{asked} moves asked for {n} streams");
    end_churn_exactly(&mesh, churning).await;
    let hubs = eventually("every remote Synced", SOON, || all_synced(&mesh, n, &IDS)).await;
    println!(
        "streams by replica after the restart: {:?}",
        count_by_hub(&hubs)
    );
    watcher.abort();
    let disconnected = disconnected.lock().unwrap().clone();
    assert!(
        disconnected.is_empty(),
        "remotes read Disconnected during the rolling restart: {disconnected:?}"
    );
    load.stop();
}

/// Streams rebalance after a scale-up: with a maximum connection age, streams that all went to the
/// one replica there was spread over the replica started after them, with no remote disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_spread_to_a_new_replica_by_their_maximum_age() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Fleet {
        mut mesh,
        mut replicas,
        _balancer: balancer,
        load,
        n,
    } = fleet_of(&["hub-0"], &["--max-connection-age", "4s"]).await;
    let hubs = eventually("every remote Synced on hub-0", SOON, || {
        all_synced(&mesh, n, &["hub-0"])
    })
    .await;
    assert_eq!(
        count_by_hub(&hubs),
        BTreeMap::from([("hub-0".to_string(), n)])
    );
    let (disconnected, watcher) = watch_disconnected(&mesh);
    let before = agent_reconnects(&mesh).await;
    replicas.start(&mut mesh, "hub-1");
    // Every stream moves about every 4 s; the balancer sends one new connection in three to hub-1
    // (hub-2 is not running: its turn goes to hub-0).
    let spread = eventually(
        "streams on both replicas",
        Duration::from_secs(30),
        || async {
            let hubs = all_synced(&mesh, n, &["hub-0", "hub-1"]).await?;
            let by = count_by_hub(&hubs);
            anyhow::ensure!(
                by.values().len() == 2 && by.values().all(|c| *c >= n / 8),
                "{by:?}"
            );
            Ok(by)
        },
    )
    .await;
    println!("streams by replica after the scale-up: {spread:?}");
    watcher.abort();
    let disconnected = disconnected.lock().unwrap().clone();
    assert!(
        disconnected.is_empty(),
        "remotes read Disconnected while their streams moved: {disconnected:?}"
    );
    // Each real agent's stream reaches its age too (4 s) and moves, whichever replica it lands on.
    let reconnects = eventually("each real agent moved", SOON, || async {
        let by = agent_reconnects(&mesh).await;
        let moved = by.get("moved").copied().unwrap_or(0.0);
        anyhow::ensure!(moved >= REMOTES.len() as f64, "{by:?}");
        Ok(by)
    })
    .await;
    println!("real agents' reconnects: {reconnects:?} (before the scale-up {before:?})");
    for reason in reconnects.keys().filter(|r| *r != "moved") {
        assert_eq!(
            reconnects[reason],
            before.get(reason).copied().unwrap_or(0.0),
            "a real agent lost its stream: {reconnects:?}"
        );
    }
    drop(balancer);
    load.stop();
}
