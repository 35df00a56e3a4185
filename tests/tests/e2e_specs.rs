//! Bad RemoteCluster specs, end to end through the API server: each is refused by the CRD schema or
//! reported in status (SpecValid, or the agent's NACK), the remote keeps its last good state, and
//! the hub goes on serving the other remote, which follows a pod change made meanwhile.

use kube::Api;
use serde_json::{Value, json};
use tether_tests::eventually;
use tether_tests::faults::endpoints;
use tether_tests::fixtures::{SOON, synced_mesh};
use tether_tests::mesh::{Mesh, condition};

fn spec_valid(status: &Value) -> (String, String, String) {
    let c = condition(status, "SpecValid");
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// Waits until remote-2's SpecValid condition has `status`/`reason` for the current generation.
async fn wait_spec_valid(mesh: &Mesh, status: &str, reason: &str) -> String {
    eventually(
        &format!("remote-2 SpecValid={status} reason={reason}"),
        SOON,
        || async {
            let rc = mesh.remote_clusters().get("remote-2").await?;
            let st = rc.data["status"].clone();
            let (s, r, m) = spec_valid(&st);
            anyhow::ensure!(
                s == status
                    && r == reason
                    && st["observedGeneration"].as_i64() == rc.metadata.generation,
                "SpecValid now {s} {r}: {m}"
            );
            Ok(m)
        },
    )
    .await
}

#[tokio::test]
async fn bad_specs_are_refused_or_reported_and_other_remotes_are_served() {
    let mesh = synced_mesh().await;
    let app = format!("{}-app", mesh.ns);
    let good = json!({"injection": {"namespaces": [app]}});

    // Refused by the schema: nothing stored, nothing else disturbed.
    let refused = [
        (
            json!({"services": [{"name": "Not_A_Name"}]}),
            "spec.services[0].name",
        ),
        (
            json!({"services": [{"name": "istiod"}, {"name": "istiod"}]}),
            // Server-side apply refuses it before validation (a 500 naming the key); a create or
            // update gets 422 "Duplicate value".
            "duplicate entries for key [name=\"istiod\"]",
        ),
        (
            json!({"services": [{"name": "istiod", "ports": [{"port": 70000}]}]}),
            "spec.services[0].ports[0].port",
        ),
    ];
    let generation = mesh
        .remote_clusters()
        .get("remote-2")
        .await
        .unwrap()
        .metadata
        .generation;
    for (spec, needle) in refused {
        let err = mesh
            .create_remote_cluster("remote-2", spec.clone())
            .await
            .expect_err(&format!("the API server refuses {spec}"));
        let text = format!("{err:?}");
        assert!(text.contains(needle), "{spec}: {text}");
    }
    let stored = mesh.remote_clusters().get("remote-2").await.unwrap();
    assert_eq!(stored.metadata.generation, generation, "nothing stored");

    // Accepted by the schema, refused by the hub: SpecValid=False names the problem, the last good
    // spec stays in effect, phase Degraded.
    let reported = [
        (json!({"services": [{"name": "nope"}]}), "nope"),
        (
            json!({"services": [{"name": "istiod", "selector": {"bad key!": "x"}}]}),
            "bad key!",
        ),
        (
            json!({"injection": {"namespaces": [app], "labels": {"istio-injection": "-bad-"}}}),
            "-bad-",
        ),
        (
            json!({"injection": {"namespaces": [app], "labels": {"bad key!": "enabled"}}}),
            "bad key!",
        ),
        (
            json!({"injection": {"namespaces": ["Not_A_Namespace"]}}),
            "Not_A_Namespace",
        ),
    ];
    for (i, (spec, needle)) in reported.into_iter().enumerate() {
        mesh.create_remote_cluster("remote-2", spec.clone())
            .await
            .unwrap();
        let message = wait_spec_valid(&mesh, "False", "Invalid").await;
        assert!(message.contains(needle), "{spec}: {message}");
        // An Event too. Events of one reason form a series (the hub's recorder, like client-go's,
        // counts repeats on the first Event), so its note names the first problem; the condition
        // always names the current one.
        eventually("a Warning Event naming the problem", SOON, || async {
            let events = mesh.events_for("remote-2").await;
            anyhow::ensure!(
                events
                    .iter()
                    .any(|(r, n)| r == "Invalid" && n.contains("nope")),
                "{spec}: {events:?}"
            );
            Ok(())
        })
        .await;
        mesh.wait_phase("remote-2", "Degraded", SOON).await;
        // Meanwhile the other remote is served, and remote-2's last good spec keeps following the
        // pods: both get a new one.
        let ip = format!("10.10.2.{i}");
        mesh.create_istiod_pod(&format!("istiod-r{i}"), &ip, 15010, true)
            .await
            .unwrap();
        for r in ["remote-1", "remote-2"] {
            eventually(&format!("{r} to follow the new pod"), SOON, || async {
                let got = endpoints(&mesh, r).await?;
                anyhow::ensure!(got.iter().any(|(a, _)| *a == ip), "{got:?}");
                Ok(())
            })
            .await;
        }
        mesh.wait_phase("remote-1", "Synced", SOON).await;
    }

    // The five problems in a row are one Invalid Event whose series counts the repeats.
    eventually(
        "the Invalid Event's series to count the repeats",
        SOON,
        || async {
            let events: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(mesh.central.clone(), &mesh.ns);
            let invalid: Vec<_> = events
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("Invalid")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("remote-2")
                })
                .collect();
            let counts: Vec<i32> = invalid
                .iter()
                .map(|e| e.series.as_ref().map_or(1, |s| s.count))
                .collect();
            anyhow::ensure!(
                invalid.len() == 1 && counts[0] >= 2,
                "one Event, counted: {counts:?}"
            );
            Ok(())
        },
    )
    .await;

    // A selector that matches nothing is valid and mirrored as asked (an empty mirror), but named.
    mesh.create_remote_cluster(
        "remote-2",
        json!({"services": [{"name": "istiod", "selector": {"app": "nothing"}}],
               "injection": {"namespaces": [app]}}),
    )
    .await
    .unwrap();
    let message = wait_spec_valid(&mesh, "True", "NoEndpoints").await;
    assert!(message.contains("istiod"), "{message}");
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    assert_eq!(endpoints(&mesh, "remote-2").await.unwrap(), vec![]);
    eventually("a NoEndpoints Event on remote-2", SOON, || async {
        let events = mesh.events_for("remote-2").await;
        anyhow::ensure!(
            events
                .iter()
                .any(|(r, n)| r == "NoEndpoints" && n.contains("istiod")),
            "{events:?}"
        );
        Ok(())
    })
    .await;

    // A namespace missing on the remote: the agent reports it (NACK), and labels it once created.
    let absent = format!("{}-absent", mesh.ns);
    mesh.create_remote_cluster(
        "remote-2",
        json!({"injection": {"namespaces": [app, absent]}}),
    )
    .await
    .unwrap();
    let status = mesh.wait_phase("remote-2", "Degraded", SOON).await;
    let nack = status["sync"]["lastNack"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        nack.contains(&absent) && nack.contains("does not exist"),
        "{status}"
    );
    tether_tests::mesh::create_namespace(mesh.remote("remote-2"), &absent)
        .await
        .unwrap();
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    let ns: k8s_openapi::api::core::v1::Namespace = kube::Api::all(mesh.remote("remote-2").clone())
        .get(&absent)
        .await
        .unwrap();
    assert_eq!(
        ns.metadata
            .labels
            .unwrap_or_default()
            .get("istio-injection"),
        Some(&"enabled".to_string())
    );

    // Back to the good spec: everything as before, plus the pods added meanwhile.
    mesh.create_remote_cluster("remote-2", good).await.unwrap();
    wait_spec_valid(&mesh, "True", "Valid").await;
    mesh.wait_phase("remote-2", "Synced", SOON).await;
    assert_eq!(
        endpoints(&mesh, "remote-2").await.unwrap(),
        endpoints(&mesh, "remote-1").await.unwrap()
    );
}
