//! `make demo`: Tether doing its job on this machine. A central cluster and two remotes (real etcd and
//! kube-apiserver on loopback), the hub and two agents as processes over mTLS, two istiod pods; then an
//! istiod pod is replaced and the remotes follow. Ctrl-C stops everything this started.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use std::time::{Duration, Instant};
use tether_tests::ControlPlanes;
use tether_tests::mesh::Mesh;

const NS: &str = "istio-system";
const REMOTES: &[&str] = &["remote-1", "remote-2"];

fn step(msg: &str) {
    println!("\n==> {msg}");
}

/// One line per remote: the RemoteCluster status next to what its EndpointSlices hold.
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
        let text = |p: &str| {
            s.pointer(p)
                .and_then(|v| v.as_str())
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
            text("/phase"),
            text("/sync/desiredVersion"),
            text("/sync/ackedVersion"),
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

/// Every remote Synced at a version other than `not_version` (the status lags the slices by up to one
/// status interval, so the old version can still read Synced), with exactly these addresses.
fn synced_with(table: &str, ips: &[&str], not_version: &str) -> bool {
    let rows: Vec<&str> = table.lines().skip(1).collect();
    rows.len() == REMOTES.len()
        && rows.iter().all(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // Synced, desired == acked, and exactly these addresses in the remote's slices.
            cols.get(1) == Some(&"Synced")
                && cols.get(2) == cols.get(3)
                && cols.get(2) != Some(&not_version)
                && ips.iter().all(|ip| row.contains(ip))
                && row.matches("10.10.0.").count() == ips.len()
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    step(
        "Building kube-apiserver and etcd from the pinned Go modules (cached after the first run)",
    );
    let bins = tokio::task::spawn_blocking(|| tether_tests::controlplane::binaries().to_path_buf())
        .await?;
    println!("    {}", bins.display());
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
        "Central cluster: Service istiod, pods istiod-a (10.10.0.1) and istiod-b (10.10.0.2), a RemoteCluster per remote",
    );
    mesh.create_istiod().await?;
    for r in REMOTES {
        tether_tests::mesh::create_namespace(mesh.remote(r), "demo-app").await?;
        mesh.create_remote_cluster(
            r,
            serde_json::json!({"injection": {"namespaces": ["demo-app"]}}),
        )
        .await?;
    }

    step(&format!(
        "Starting the hub on {} and one agent per remote (each dials the hub over mTLS)",
        mesh.hub_addr()
    ));
    mesh.start_hub()?;
    for r in REMOTES {
        mesh.start_agent(r)?;
    }
    watch(&mesh, Duration::from_secs(60), |t| {
        synced_with(t, &["10.10.0.1", "10.10.0.2"], "-")
    })
    .await?;

    let before = mesh.status(REMOTES[0]).await?["sync"]["desiredVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    step("Replacing istiod-a (10.10.0.1) with istiod-c (10.10.0.3), as a rollout would");
    mesh.central_pods()
        .delete("istiod-a", &DeleteParams::default().grace_period(0))
        .await?;
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await?;
    watch(&mesh, Duration::from_secs(60), |t| {
        synced_with(t, &["10.10.0.2", "10.10.0.3"], &before)
    })
    .await?;

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
    println!(
        "    kubectl -n istio-system get svc,endpointslices,endpoints -l app.kubernetes.io/managed-by=tether-agent   # in a remote"
    );
    println!("    kubectl get ns demo-app --show-labels               # in a remote");
    println!(
        "    logs: {}/{{hub,agent-remote-1,agent-remote-2}}.log",
        mesh.dir.display()
    );
    println!("\nPress Ctrl-C to stop; every process started here stops with it.");
    tokio::signal::ctrl_c().await?;
    println!("\nStopping hub, agents and control planes.");
    drop(mesh);
    Ok(())
}
