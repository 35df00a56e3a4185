//! `make demo`: Tether doing its job on this machine. A central cluster and two remotes (real etcd and
//! kube-apiserver on loopback), the hub and two agents as processes over mTLS, and a real istiod
//! (built from the pinned Istio module; it runs in a network namespace of its own, so its pod IP is a
//! real address). The remotes mirror istiod; istiod reads both remotes through their agents (API
//! access: no remote secret made by hand, no route from istiod to a remote API server); a remote-1
//! workload gets its config and certificate; then istiod is rolled out to a new pod and the remotes
//! follow. Ctrl-C stops everything this started. Needs root (network namespaces).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use std::time::{Duration, Instant};
use tether_tests::ControlPlanes;
use tether_tests::istio::{self, Istiod, Workload};
use tether_tests::mesh::Mesh;

const NS: &str = "istio-system";
const REMOTES: &[&str] = &["remote-1", "remote-2"];

fn step(msg: &str) {
    println!("\n==> {msg}");
}

/// One line per remote: the RemoteCluster status, the hub's live view of its versions, and what its
/// EndpointSlices hold.
async fn table(mesh: &Mesh) -> anyhow::Result<String> {
    let mut out = format!(
        "{:<9} {:<13} {:<17} {:<17} {}\n",
        "CLUSTER",
        "PHASE",
        "DESIRED",
        "ACKED",
        "ENDPOINTSLICES IN THE REMOTE (istio-system/istiod)"
    );
    for r in REMOTES {
        let s = mesh.status(r).await?;
        let live = mesh.live(r).await.unwrap_or_default();
        let text = |v: &serde_json::Value, p: &str| {
            v.pointer(p)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .unwrap_or("-")
                .to_string()
        };
        let slices = Api::<EndpointSlice>::namespaced(mesh.remote(r).clone(), NS)
            .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
            .await?;
        let mut eps: Vec<String> = slices
            .items
            .iter()
            .flat_map(|sl| sl.endpoints.iter())
            .map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                format!(
                    "{}{}",
                    e.addresses[0],
                    if ready { "" } else { " (not ready)" }
                )
            })
            .collect();
        eps.sort();
        let eps = if eps.is_empty() {
            "-".to_string()
        } else {
            eps.join(", ")
        };
        out.push_str(&format!(
            "{:<9} {:<13} {:<17} {:<17} {}\n",
            r,
            text(&s, "/phase"),
            text(&live, "/desiredVersion"),
            text(&live, "/ackedVersion"),
            eps
        ));
    }
    Ok(out)
}

/// Prints the table whenever it changes, until `done` holds for it or `timeout` passes.
async fn watch(mesh: &Mesh, timeout: Duration, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let now = table(mesh).await?;
        if now != last {
            print!("{now}");
            println!("{}", "-".repeat(40));
            last = now;
        }
        if done(&last) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the remotes did not get there within {timeout:?}; see the logs in {}",
        mesh.dir.display()
    )
}

/// Every remote Synced (desired == acked) with exactly the address `ip` in its slices.
fn synced_with(table: &str, ip: &str) -> bool {
    let rows: Vec<&str> = table.lines().skip(1).collect();
    rows.len() == REMOTES.len()
        && rows.iter().all(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            cols.get(1) == Some(&"Synced")
                && cols.get(2) != Some(&"-")
                && cols.get(2) == cols.get(3)
                && cols[4..] == [ip]
        })
}

/// Asks until the answer has no error (istiod writes the root certificate into the workload's
/// namespace shortly after it syncs the remote).
async fn answered<F, Fut>(what: &str, mut ask: F) -> anyhow::Result<serde_json::Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = ask().await?;
        if v.get("error").is_none() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until istiod lists every remote as synced; returns what it lists.
async fn istiod_synced(istiod: &Istiod) -> anyhow::Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while let Err(e) = istiod.synced(REMOTES).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "istiod did not sync the remotes: {e}\n{}",
            istiod.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    istiod.clusters().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the demo runs istiod in a network namespace of its own, which needs root: run `sudo make demo`"
        );
    }
    step(
        "Building kube-apiserver and etcd from the pinned Go modules (cached after the first run)",
    );
    let bins = tokio::task::spawn_blocking(|| tether_tests::controlplane::binaries().to_path_buf())
        .await?;
    println!("    {}", bins.display());
    step(
        "Building istiod from the pinned Istio module (cached; the first build takes about 10 min)",
    );
    let started = Instant::now();
    let bins = tokio::task::spawn_blocking(|| istio::binaries().to_path_buf()).await?;
    println!(
        "    {} ({:.0} s)",
        bins.display(),
        started.elapsed().as_secs_f64()
    );
    tokio::task::spawn_blocking(tether_tests::mesh::bin_dir).await?;

    step(
        "Starting three clusters on loopback: central, remote-1, remote-2 (etcd + kube-apiserver each)",
    );
    let started = Instant::now();
    let planes = ControlPlanes::shared(&["central", "remote-1", "remote-2"]).await;
    for c in planes.all() {
        println!("    {:<9} {}", c.name, c.server);
    }
    println!("    ready in {:.1} s", started.elapsed().as_secs_f64());

    step(
        "Certificates: a hub CA, the hub's serving certificate, one client certificate per remote",
    );
    let mut mesh = Mesh::with_namespace(planes, REMOTES, NS).await?;
    println!(
        "    agent identities: spiffe://{}/cluster/remote-1, .../remote-2",
        tether_tests::mesh::TRUST_DOMAIN
    );

    step(
        "Remotes: Istio's reader ServiceAccount; remote-1 has a Service `hello` in namespace demo-app",
    );
    for r in REMOTES {
        istio::prepare_remote(&mesh, r).await?;
        tether_tests::mesh::create_namespace(mesh.remote(r), "demo-app").await?;
    }
    let hello = [
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello", "namespace": "demo-app"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "hello"}}}),
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "hello-1", "namespace": "demo-app", "labels": {"kubernetes.io/service-name": "hello",
                         "endpointslice.kubernetes.io/managed-by": "demo"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": true}}]}),
    ];
    tether_tests::charts::apply_all(mesh.remote("remote-1"), &hello).await?;

    let api_port = istio::api_access_args(&mut mesh, &[], &[]);
    step(&format!(
        "Central: Service istiod, and a real istiod (istiod-a) that reaches only the central API server \
         and the hub's API endpoint (127.0.0.1:{api_port}): no route to any remote API server"
    ));
    Istiod::create_service(&mesh, "default").await?;
    let istiod_a = Istiod::start_reaching(&mesh, "istiod-a", "default", &[api_port]).await?;
    println!("    istiod-a runs at {} (its pod IP)", istiod_a.ip);
    for r in REMOTES {
        mesh.create_remote_cluster(
            r,
            serde_json::json!({"services": [{"name": "istiod"}],
                               "injection": {"namespaces": ["demo-app"]},
                               "apiAccess": {"enabled": true}}),
        )
        .await?;
    }

    step(&format!(
        "Starting the hub on {} (API access for istiod on 127.0.0.1:{api_port}) and one agent per remote \
         (each dials the hub over mTLS, twice: its sync stream and its API-access tunnel)",
        mesh.hub_addr()
    ));
    mesh.start_hub()?;
    for r in REMOTES {
        mesh.start_agent(r)?;
    }
    let ip_a = istiod_a.ip.to_string();
    watch(&mesh, Duration::from_secs(60), |t| synced_with(t, &ip_a)).await?;

    step("istiod reads both remotes through their agents, from the remote secrets the hub wrote");
    let clusters = istiod_synced(&istiod_a).await?;
    println!("    istiod /debug/clusterz: {clusters:?}");
    let secrets = Api::<Secret>::namespaced(mesh.central.clone(), NS)
        .list(&ListParams::default().labels("istio/multiCluster=true"))
        .await?;
    for s in &secrets.items {
        let name = s.metadata.name.clone().unwrap_or_default();
        let cluster = name.trim_start_matches("istio-remote-secret-");
        let text = s
            .data
            .as_ref()
            .and_then(|d| d.get(cluster))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default();
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .unwrap_or("-");
        println!(
            "    secret {name}: server {server}, token: {}",
            if text.contains("token:") {
                "yes"
            } else {
                "none"
            }
        );
    }

    step(
        "A remote-1 workload asks istiod, found through remote-1's own istiod Service and the agent's slices",
    );
    let workload = Workload {
        cluster: "remote-1".into(),
        cluster_id: "remote-1".into(),
        namespace: "demo-app".into(),
        account: "hello".into(),
        istiod_service: "istiod".into(),
    };
    let eds = "outbound|80||hello.demo-app.svc.cluster.local";
    let config = answered("config", || workload.xds(&mesh, Some(eds))).await?;
    println!(
        "    xDS from {}: endpoints of hello.demo-app (remote-1's own Service): {}",
        config["address"], config["endpoints"]
    );
    let cert = answered("a certificate", || workload.csr(&mesh)).await?;
    println!(
        "    certificate from {}: {} (istiod reviewed the workload's token in remote-1 through the agent)",
        cert["address"], cert["uris"]
    );

    step("Rolling istiod out: istiod-b starts at a new address, then istiod-a's pod goes");
    let istiod_b = Istiod::start_reaching(&mesh, "istiod-b", "default", &[api_port]).await?;
    istiod_synced(&istiod_b).await?;
    println!("    istiod-b runs at {}", istiod_b.ip);
    mesh.central_pods()
        .delete("istiod-a", &DeleteParams::default().grace_period(0))
        .await?;
    let mut istiod_a = istiod_a;
    tokio::task::spawn_blocking(move || istiod_a.stop()).await?;
    let ip_b = istiod_b.ip.to_string();
    watch(&mesh, Duration::from_secs(60), |t| synced_with(t, &ip_b)).await?;
    let cert = answered("a certificate from istiod-b", || workload.csr(&mesh)).await?;
    println!(
        "    the workload's next certificate came from {}",
        cert["address"]
    );

    step("What an operator sees: `tether-hub status` (like istioctl proxy-status)");
    let admin = format!("http://127.0.0.1:{}", mesh.hub_admin_port);
    let (_, table, _) = mesh.hub_cli(&[
        "status",
        "--namespace",
        NS,
        "--admin-url",
        &admin,
        "--wait",
        "--timeout",
        "30s",
    ]);
    print!("{table}");

    step("Both remotes follow the central control plane. Look around with kubectl:");
    for c in planes.all() {
        println!(
            "    export KUBECONFIG={}   # {}",
            c.kubeconfig().display(),
            c.name
        );
    }
    println!("    kubectl -n istio-system get remoteclusters          # in central");
    println!("    kubectl -n istio-system get secrets -l istio/multiCluster=true   # in central");
    println!(
        "    kubectl -n istio-system get svc,endpointslices,endpoints -l app.kubernetes.io/managed-by=tether-agent   # in a remote"
    );
    println!("    kubectl get ns demo-app --show-labels               # in a remote");
    println!(
        "    logs: {}/{{hub,agent-remote-1,agent-remote-2}}.log, istiod: {}/istiod.log",
        mesh.dir.display(),
        istiod_b.dir.display()
    );
    println!("\nPress Ctrl-C to stop; every process started here stops with it.");
    tokio::signal::ctrl_c().await?;
    println!("\nStopping istiod, hub, agents and control planes.");
    drop(istiod_b);
    drop(mesh);
    Ok(())
}
