//! Section 10 of `make bench`: the agent's plan for one snapshot of a remote with many Services,
//! against the objects as a real API server keeps them (applied with server-side apply, read back
//! with their managedFields). Every object already matches, as after most of a pod's changes, where
//! only the changed Service's slice and Endpoints differ. Two ways in the same run: with nothing
//! recorded, so every object is serialised and its owned fields walked (what each plan did before
//! the record), and with what the previous plan found in effect ([`plan::InEffect`]).

use super::percentile;
use crate::ControlPlanes;
use crate::fixtures::istiod_like_service;
use kube::ResourceExt;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tether_agent::objects::{self, Kind};
use tether_agent::plan::{self, InEffect, View};
use tether_proto::v1::Snapshot;

pub const SERVICES: usize = 100;
/// Plans timed each way.
pub const PLANS: usize = 200;
/// Other namespaces on the remote in the third way: none listed for injection, none labelled.
pub const NAMESPACES: usize = 2000;
const NS: &str = "plan-bench";
const MANAGER: &str = "tether-agent-bench";

pub struct PlanCost {
    /// Objects in the snapshot (a Service, its EndpointSlice and its Endpoints per Service).
    pub objects: usize,
    /// Seconds per plan: nothing recorded, and with the previous plan's record.
    pub unrecorded: Vec<f64>,
    pub recorded: Vec<f64>,
    /// With the record, on a remote with [`NAMESPACES`] other namespaces (each plan looks at every
    /// namespace for injection labels to release).
    pub many_namespaces: Vec<f64>,
}

/// The cluster as read back from the API server, and what a previous plan recorded.
struct Listed {
    objects: HashMap<(Kind, String), Arc<DynamicObject>>,
    record: HashMap<(Kind, String), InEffect>,
}

impl View for Listed {
    fn get(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>> {
        self.objects.get(&(kind, name.to_string())).cloned()
    }
    fn all(&self, kind: Kind) -> Vec<Arc<DynamicObject>> {
        // In name order, as the agent's own view gives them.
        let mut all: Vec<_> = self
            .objects
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect();
        all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        all
    }
    fn in_effect_before(&self, kind: Kind, name: &str) -> Option<&InEffect> {
        self.record.get(&(kind, name.to_string()))
    }
}

/// [`SERVICES`] Services like istiod's: two ports, three endpoints each.
fn snapshot() -> Snapshot {
    Snapshot {
        version: "bench".into(),
        nonce: "1".into(),
        namespace: NS.into(),
        services: (0..SERVICES)
            .map(|i| {
                let endpoints: Vec<(String, bool)> =
                    (1..=3).map(|e| (format!("10.20.{i}.{e}"), true)).collect();
                istiod_like_service(&format!("svc-{i:03}"), &endpoints)
            })
            .collect(),
        injection: None,
        skip_legacy_endpoints: false,
    }
}

pub async fn run(planes: &'static ControlPlanes) -> anyhow::Result<PlanCost> {
    println!("== the agent's plan: {SERVICES} Services in effect, {PLANS} plans each way");
    let client = planes.get("remote-1").client().await?;
    crate::mesh::create_namespace(&client, NS).await?;
    let snap = snapshot();
    let desired: Vec<_> = snap
        .services
        .iter()
        .flat_map(|svc| objects::objects_for(NS, svc, true))
        .collect();
    let apply = PatchParams::apply(MANAGER).force();
    for o in &desired {
        o.kind
            .api(&client, NS)
            .patch(&o.name, &apply, &Patch::Apply(&o.body))
            .await?;
    }
    let mut objects = HashMap::new();
    for kind in Kind::OWNED {
        for o in kind.api(&client, NS).list(&ListParams::default()).await? {
            objects.insert((kind, o.name_any()), Arc::new(o));
        }
    }
    let ns = Kind::Namespace.api(&client, NS).get(NS).await?;
    objects.insert((Kind::Namespace, NS.to_string()), Arc::new(ns));
    let mut view = Listed {
        objects,
        record: HashMap::new(),
    };
    let time = |view: &Listed, plans: usize| -> anyhow::Result<(Vec<f64>, plan::Plan)> {
        let mut samples = Vec::with_capacity(plans);
        let mut last = plan::Plan::default();
        for _ in 0..plans {
            let t = Instant::now();
            last = plan::snapshot(&snap, NS, MANAGER, view);
            samples.push(t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            last.writes.is_empty() && last.failures.is_empty(),
            "the applied objects do not match their snapshot: {} writes, {:?}",
            last.writes.len(),
            last.failures
        );
        Ok((samples, last))
    };
    let (unrecorded, first) = time(&view, PLANS)?;
    view.record = first.in_effect.into_iter().collect();
    anyhow::ensure!(
        view.record.len() == desired.len(),
        "{} objects recorded in effect of {}",
        view.record.len(),
        desired.len()
    );
    // The same plans on a remote with many namespaces too: each plan timed on one view then the
    // other, so that the machine's drift falls on both alike.
    let mut crowded = Listed {
        objects: view.objects.clone(),
        record: view.record.clone(),
    };
    // Namespaces as the API server keeps them: a name, a resourceVersion, the name label.
    for i in 0..NAMESPACES {
        let name = format!("team-{i:04}");
        let ns: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "resourceVersion": (1000 + i).to_string(),
                "labels": {"kubernetes.io/metadata.name": name},
            },
        }))?;
        crowded
            .objects
            .insert((Kind::Namespace, name), Arc::new(ns));
    }
    let (mut recorded, mut many_namespaces) = (Vec::new(), Vec::new());
    for _ in 0..PLANS / 10 {
        recorded.extend(time(&view, 10)?.0);
        many_namespaces.extend(time(&crowded, 10)?.0);
    }
    let cost = PlanCost {
        objects: desired.len(),
        unrecorded,
        recorded,
        many_namespaces,
    };
    println!(
        "plan of {} objects, p50: nothing recorded {:.2} ms, with the record {:.2} ms, and {NAMESPACES} other namespaces {:.2} ms",
        cost.objects,
        percentile(&cost.unrecorded, 50.0) * 1000.0,
        percentile(&cost.recorded, 50.0) * 1000.0,
        percentile(&cost.many_namespaces, 50.0) * 1000.0
    );
    Ok(cost)
}
