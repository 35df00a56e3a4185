//! Section 6 of `make bench`: what API access adds. The same remote API server read two ways in one
//! run: directly (the remote's admin client, as a remote secret's token would) and as istiod reads it
//! through the hub's endpoint and the agent's tunnel (the kubeconfig of the remote secret the hub
//! wrote). A watch event's latency (both watches open at once, the same writes) and a LIST of 5,000
//! pods (rounds alternated): protobuf with `Accept-Encoding: gzip`, as istiod asks (27 of 27 of the
//! real istiod's requests carried it in one run of the API-access test, with the agent's forwarding
//! log extended by that header for the run; docs/benchmarks.md), then uncompressed.

use super::{ms, percentile};
use crate::ControlPlanes;
use crate::mesh::Mesh;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::time::{Duration, Instant};

const R: &str = "remote-1";
pub const WATCH_CHANGES: usize = 300;
pub const PODS: usize = 5000;
/// Rounds of each LIST (direct, then through the agent): enough that the p99 is not just the
/// slowest one, and that a bootstrap over the rounds gives its ratio an interval.
pub const LIST_ROUNDS: usize = 100;

pub struct ApiAccess {
    /// Write -> watch event, seconds: (direct, through the agent), per change.
    pub watch: Vec<(f64, f64)>,
    /// The LIST of all pods as istiod asks (protobuf, gzip), then without compression.
    pub lists: Vec<List>,
}

/// One LIST's times, seconds from the request.
#[derive(Clone, Copy, Debug)]
pub struct Fetch {
    pub first_byte: f64,
    pub total: f64,
}

/// LIST rounds of one encoding: `direct[i]` and `agent[i]` one after the other.
pub struct List {
    /// Asked with `Accept-Encoding: gzip`, as istiod's client does (Go's HTTP transport adds it).
    pub gzip: bool,
    pub direct: Vec<Fetch>,
    pub agent: Vec<Fetch>,
    /// The answer's size on the wire.
    pub bytes: usize,
}

impl List {
    pub fn totals(&self) -> (Vec<f64>, Vec<f64>) {
        let t = |v: &[Fetch]| v.iter().map(|f| f.total).collect();
        (t(&self.direct), t(&self.agent))
    }

    pub fn first_bytes(&self) -> (Vec<f64>, Vec<f64>) {
        let t = |v: &[Fetch]| v.iter().map(|f| f.first_byte).collect();
        (t(&self.direct), t(&self.agent))
    }
}

async fn istiod_client(mesh: &Mesh) -> anyhow::Result<kube::Client> {
    let secrets: Api<Secret> = Api::namespaced(mesh.central.clone(), &mesh.ns);
    let name = format!("istio-remote-secret-{R}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let secret = loop {
        if let Some(s) = secrets.get_opt(&name).await? {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "no remote secret from the hub");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = &secret.data.unwrap_or_default()[R].0;
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_slice(text)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.read_timeout = None;
    Ok(kube::Client::try_from(config)?)
}

pub async fn run(planes: &'static ControlPlanes) -> anyhow::Result<ApiAccess> {
    println!("== API access: through the agent vs direct ({R})");
    let mut mesh = Mesh::new(planes, &[R]).await?;
    mesh.test_timing = false;
    mesh.log_filter = Some("info".into());
    mesh.create_istiod().await?;
    crate::istio::prepare_remote(&mesh, R).await?;
    crate::istio::api_access_args(&mut mesh, &[], &[]);
    mesh.create_remote_cluster(R, json!({"apiAccess": {"enabled": true}}))
        .await?;
    mesh.start_hub()?;
    mesh.start_agent(R)?;
    super::propagation::wait_synced(&mesh, &[R], Duration::from_secs(60)).await?;
    let direct = mesh.remote(R).clone();
    let via = istiod_client(&mesh).await?;
    // The tunnel may come a moment after the stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Api::<ConfigMap>::namespaced(via.clone(), &mesh.ns)
        .list(&Default::default())
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "API access never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let watch = watch_latency(&mesh, &direct, &via).await?;
    let lists = list_pods(&mesh, &direct, &via).await?;
    let direct_watch: Vec<f64> = watch.iter().map(|w| w.0).collect();
    let agent_watch: Vec<f64> = watch.iter().map(|w| w.1).collect();
    let added: Vec<f64> = watch.iter().map(|(d, a)| a - d).collect();
    let p = |v: &[f64], q| ms(percentile(v, q));
    println!(
        "watch p50/p99 direct {} / {}, through the agent {} / {} (added p99 {})",
        p(&direct_watch, 50.0),
        p(&direct_watch, 99.0),
        p(&agent_watch, 50.0),
        p(&agent_watch, 99.0),
        p(&added, 99.0),
    );
    for l in &lists {
        let (d, a) = l.totals();
        println!(
            "LIST of {PODS} pods ({}): p50 direct {} agent {} ({:.2}x), p99 direct {} agent {} ({:.2}x)",
            if l.gzip { "gzip" } else { "uncompressed" },
            p(&d, 50.0),
            p(&a, 50.0),
            percentile(&a, 50.0) / percentile(&d, 50.0),
            p(&d, 99.0),
            p(&a, 99.0),
            percentile(&a, 99.0) / percentile(&d, 99.0),
        );
    }
    Ok(ApiAccess { watch, lists })
}

/// The `n` of the marker in a watched ConfigMap.
fn marker(event: &WatchEvent<ConfigMap>) -> Option<usize> {
    match event {
        WatchEvent::Added(c) | WatchEvent::Modified(c) => c.data.as_ref()?.get("n")?.parse().ok(),
        _ => None,
    }
}

async fn watch_latency(
    mesh: &Mesh,
    direct: &kube::Client,
    via: &kube::Client,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let writer: Api<ConfigMap> = Api::namespaced(direct.clone(), &mesh.ns);
    let mut cm: ConfigMap =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "bench-watch"}, "data": {"n": "0"}}))?;
    writer.create(&PostParams::default(), &cm).await?;
    let wp = WatchParams::default().fields("metadata.name=bench-watch");
    let mut streams = Vec::new();
    for client in [direct, via] {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &mesh.ns);
        let rv = api
            .get("bench-watch")
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        streams.push(api.watch(&wp, &rv).await?.boxed());
    }
    let mut samples = Vec::new();
    for n in 1..=WATCH_CHANGES {
        cm.data = Some([("n".to_string(), n.to_string())].into());
        cm.metadata.resource_version = None;
        let at = Instant::now();
        writer
            .replace("bench-watch", &PostParams::default(), &cm)
            .await?;
        let mut got = [0.0; 2];
        for (i, s) in streams.iter_mut().enumerate() {
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(10), s.try_next())
                    .await
                    .map_err(|_| anyhow::anyhow!("no watch event in 10 s"))??
                    .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
                if marker(&ev) == Some(n) {
                    got[i] = at.elapsed().as_secs_f64();
                    break;
                }
            }
        }
        samples.push((got[0], got[1]));
    }
    Ok(samples)
}

async fn list_pods(
    mesh: &Mesh,
    direct: &kube::Client,
    via: &kube::Client,
) -> anyhow::Result<Vec<List>> {
    let ns = format!("{}-pods", mesh.ns);
    crate::mesh::create_namespace(direct, &ns).await?;
    let pods: Api<Pod> = Api::namespaced(direct.clone(), &ns);
    futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let mut pod = crate::pods::mk_pod(
                    &format!("bench-{i}"),
                    &[("app", "bench")],
                    &[("http", 8080)],
                );
                pod.metadata.namespace = None;
                pods.create(&PostParams::default(), &pod).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let path = format!("/api/v1/namespaces/{ns}/pods");
    let list = |client: kube::Client, gzip: bool| {
        let path = path.clone();
        async move {
            let mut req = http::Request::get(path.as_str()).header(
                "accept",
                "application/vnd.kubernetes.protobuf,application/json",
            );
            if gzip {
                req = req.header("accept-encoding", "gzip");
            }
            let req = req.body(kube::client::Body::empty())?;
            let at = Instant::now();
            let res = client.send(req).await?;
            anyhow::ensure!(res.status().is_success(), "LIST: {}", res.status());
            let encoding = res.headers().get("content-encoding").cloned();
            anyhow::ensure!(
                gzip == (encoding.as_ref().is_some_and(|e| e == "gzip")),
                "LIST asked {} gzip answered with content-encoding {encoding:?}",
                if gzip { "with" } else { "without" }
            );
            let mut body = res.into_body();
            let (mut first, mut bytes) = (None, 0);
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    first.get_or_insert_with(|| at.elapsed().as_secs_f64());
                    bytes += data.len();
                }
            }
            let sample = Fetch {
                first_byte: first.unwrap_or_default(),
                total: at.elapsed().as_secs_f64(),
            };
            Ok::<_, anyhow::Error>((sample, bytes))
        }
    };
    let mut lists = Vec::new();
    for gzip in [true, false] {
        // One of each to warm caches, then alternating rounds.
        list(direct.clone(), gzip).await?;
        list(via.clone(), gzip).await?;
        let mut l = List {
            gzip,
            direct: Vec::new(),
            agent: Vec::new(),
            bytes: 0,
        };
        for _ in 0..LIST_ROUNDS {
            let (d, n) = list(direct.clone(), gzip).await?;
            let (a, m) = list(via.clone(), gzip).await?;
            // Uncompressed, the two answers are the same pods byte for byte (the list's
            // resourceVersion aside); gzip's length may move by a few bytes with that.
            anyhow::ensure!(gzip || n == m, "the two LISTs differ in size: {n} vs {m}");
            l.direct.push(d);
            l.agent.push(a);
            l.bytes = n;
        }
        lists.push(l);
    }
    Ok(lists)
}
