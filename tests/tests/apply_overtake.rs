//! The agent's applier against a real API server, when a newer snapshot comes while an older one's
//! writes after its EndpointSlices (here the legacy Endpoints) are out. The newer snapshot's slice
//! is written at once, beside that write, and the newer snapshot still ends exactly as it wants:
//! including when it wants back what the older one's write in flight is changing, which a plan made
//! before that write landed would have found already in place. A retire that comes then removes
//! everything, the object that write was changing included.

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use std::future::Future;
use tether_agent::apply::{Applier, Never, Newer};
use tether_agent::live::Live;
use tether_agent::metrics::AgentMetrics;
use tether_proto::v1::Snapshot;
use tether_tests::fixtures::istiod_like_service;
use tether_tests::{ControlPlanes, fresh_namespace};

const MANAGER: &str = "tether-agent-overtake";

/// A newer command is there the moment the writes after the slices go out, and not before: the
/// applier starts them, then sees it.
struct ComesDuringTheRest;

impl Newer for ComesDuringTheRest {
    fn waits(&self) -> bool {
        false
    }

    fn arrives(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

fn snapshot(ns: &str, version: &str, ready: bool) -> Snapshot {
    Snapshot {
        version: version.into(),
        nonce: version.into(),
        namespace: ns.into(),
        services: vec![istiod_like_service(
            "istiod",
            &[("10.10.0.1".to_string(), ready)],
        )],
        injection: None,
        skip_legacy_endpoints: false,
    }
}

/// (ready addresses, not-ready addresses) of the slice and of the legacy Endpoints.
async fn on_the_server(client: &kube::Client, ns: &str) -> anyhow::Result<[(usize, usize); 2]> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
        .await?;
    let mut slice = (0, 0);
    for e in list.items.iter().flat_map(|s| s.endpoints.iter()) {
        match e.conditions.as_ref().and_then(|c| c.ready) {
            Some(true) => slice.0 += 1,
            _ => slice.1 += 1,
        }
    }
    let ep = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get("istiod")
        .await?;
    let subsets = ep.subsets.unwrap_or_default();
    let legacy = (
        subsets
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum(),
        subsets
            .iter()
            .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
            .sum(),
    );
    Ok([slice, legacy])
}

/// A fresh namespace on remote-1 and an applier for it, with its metrics.
async fn applier() -> (kube::Client, String, Applier, AgentMetrics) {
    let planes = ControlPlanes::shared(&["remote-1"]).await;
    let client = planes.get("remote-1").client().await.unwrap();
    let ns = fresh_namespace(&client, "overtake").await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let live = Live::start(&client, &ns);
    live.ready().await;
    let applier = Applier::new(
        client.clone(),
        ns.clone(),
        MANAGER.into(),
        live,
        metrics.clone(),
    );
    (client, ns, applier, metrics)
}

#[tokio::test]
async fn a_newer_snapshot_overtakes_the_older_ones_endpoints_write_and_ends_right() {
    let (client, ns, mut applier, metrics) = applier().await;

    // Ready: Service, slice and Endpoints created, and in effect.
    let ready = snapshot(&ns, "ready", true);
    let out = applier.apply(&ready, &Never).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert!(!out.superseded);
    assert_eq!(out.writes, 3, "the Service, its slice and its Endpoints");
    assert_eq!(on_the_server(&client, &ns).await.unwrap(), [(1, 0); 2]);

    // Not ready: the slice is written, then a newer command comes while the Endpoints write is out.
    let out = applier
        .apply(&snapshot(&ns, "not-ready", false), &ComesDuringTheRest)
        .await;
    assert!(out.superseded, "cut short for the newer command");
    assert_eq!(out.writes, 1, "only the slice's answer is in: {out:?}");
    assert_eq!(metrics.snapshots_overtaken.get(), 1);
    assert_eq!(metrics.snapshots_superseded.get(), 1);

    // Ready again, planned while the not-ready Endpoints write may still be out. Its slice goes
    // at once; then that write lands and the rest is planned again with it: the Endpoints it left
    // not ready are made ready again.
    let out = applier.apply(&ready, &Never).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert!(!out.superseded);
    assert_eq!(
        on_the_server(&client, &ns).await.unwrap(),
        [(1, 0); 2],
        "the slice and the legacy Endpoints as the newest snapshot wants them"
    );
    assert_eq!(
        out.writes, 3,
        "its slice, the older snapshot's Endpoints landing, its own Endpoints: {out:?}"
    );
    assert_eq!(metrics.snapshots_applied.get(), 2);

    // Nothing left to do: another pass writes nothing, whether or not the watches caught up.
    let out = applier.apply(&ready, &Never).await;
    assert_eq!(out.writes, 0, "{out:?}");
}

#[tokio::test]
async fn a_retire_behind_an_overtaken_write_removes_what_that_write_changes() {
    let (client, ns, mut applier, metrics) = applier().await;
    let out = applier.apply(&snapshot(&ns, "ready", true), &Never).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let out = applier
        .apply(&snapshot(&ns, "not-ready", false), &ComesDuringTheRest)
        .await;
    assert!(out.superseded);
    assert_eq!(metrics.snapshots_overtaken.get(), 1);

    // The Endpoints write is still out: the retire lets it land first, then deletes the Endpoints
    // with the rest. Deleted first, the landing apply would create it again, and nothing would
    // remove it.
    let out = applier.retire().await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(
        out.writes, 4,
        "the landing Endpoints write, then the Service, the slice and the Endpoints deleted: {out:?}"
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let left = slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), &ns)
        .get_opt("istiod")
        .await
        .unwrap();
    let service = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client, &ns)
        .get_opt("istiod")
        .await
        .unwrap();
    assert_eq!(left, 0, "no EndpointSlice left");
    assert!(endpoints.is_none(), "no Endpoints left");
    assert!(service.is_none(), "no Service left");
}
