//! Test support for Tether: real Kubernetes control planes on loopback.
//!
//! ```text
//!  tests/controlplane (Go module, pinned)  ──build.sh──►  target/controlplane/k8s-<v>-etcd-<v>/
//!                                                              │ kube-apiserver, etcd
//!  ControlPlanes::shared(["central", "remote-1", ..]) ─spawn──►  etcd + kube-apiserver per cluster
//!        │  (once per test binary; killed with it)                 TLS, admin kubeconfig, audit log
//!        └──► cluster.client() ─► kube::Client per test;  fresh namespaces per test
//! ```
//! There is no kubelet, scheduler or controller-manager: tests make Pods look running with
//! [`pods::set_pod_status`], exactly as a kubelet would through the status subresource.

pub mod balancer;
pub mod bench;
pub mod charts;
pub mod cluster;
pub mod controlplane;
pub mod fakes;
pub mod faults;
pub mod fixtures;
pub mod istio;
pub mod mesh;
pub mod netns;
pub mod pki;
pub mod pods;
pub mod procs;
pub mod proxy;
pub mod realnode;

pub use cluster::{AuditWrite, Cluster};

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The clusters of one test binary.
pub struct ControlPlanes {
    clusters: Vec<Cluster>,
}

impl ControlPlanes {
    /// Starts clusters with these names, in parallel. Blocking.
    pub fn start(names: &[&str]) -> anyhow::Result<Self> {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let n = n.to_string();
                std::thread::spawn(move || Cluster::start(&n))
            })
            .collect();
        let mut clusters = Vec::new();
        for h in handles {
            clusters.push(h.join().expect("cluster start thread panicked")?);
        }
        Ok(Self { clusters })
    }

    /// The control planes shared by every test in this binary, started on first use. Later calls must
    /// ask for the same names. The processes die with the test binary (see [`procs`]).
    pub async fn shared(names: &'static [&'static str]) -> &'static ControlPlanes {
        static SHARED: OnceLock<ControlPlanes> = OnceLock::new();
        // Started on a plain thread: starting waits with its own small runtime.
        let planes = tokio::task::spawn_blocking(move || {
            SHARED.get_or_init(|| {
                std::thread::spawn(move || ControlPlanes::start(names))
                    .join()
                    .expect("start thread")
                    .unwrap_or_else(|e| panic!("starting control planes {names:?}: {e:#}"))
            })
        })
        .await
        .expect("spawn_blocking");
        let have: Vec<&str> = planes.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            have, names,
            "every test in one binary must share the same clusters"
        );
        planes
    }

    pub fn get(&self, name: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    pub fn all(&self) -> &[Cluster] {
        &self.clusters
    }
}

/// A name unique within this process and across runs: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh namespace and returns its name.
pub async fn fresh_namespace(client: &kube::Client, prefix: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let name = unique_name(prefix);
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    kube::Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await?;
    Ok(name)
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with the last error.
/// This is how tests wait: on a condition with a deadline, never on a bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Sum of the samples of `name` (a metric name, or a name with its labels) in a Prometheus text page.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
