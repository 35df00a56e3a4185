//! The applier: computes the plan for a snapshot ([`crate::plan`]) against what the agent sees and
//! executes it, one API call at a time. A failed call is reported for its object and the rest goes
//! on, so one bad object never blocks the others.
//!
//! Freshness: the stores lag our own writes by one watch event, so the server's answer to each write is
//! kept as an overlay until the store catches up. Without it a second pass right after a write would
//! see stale state and write again. The overlay also tells the echo of our own write (the same
//! object at the resourceVersion the server answered with) from a change someone else made: a drift
//! pass for echoes alone would find nothing to do, and is not run.

use crate::live::{Events, Live};
use crate::metrics::{AgentMetrics, ObjectKind};
use crate::objects::Kind;
use crate::plan::{self, InEffect, Plan, View, Write, failure};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tether_proto::v1::{ObjectFailure, Snapshot};
use tracing::{debug, info, warn};

/// What one pass did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failures: Vec<ObjectFailure>,
    /// API writes (patch, delete) this pass made.
    pub writes: u32,
    /// A newer command was waiting once the EndpointSlices were written, so the rest of the plan
    /// was skipped: the snapshot is not applied, and the newer one's plan covers what was skipped.
    pub superseded: bool,
}

#[derive(Clone)]
enum Written {
    /// The server's answer to our apply.
    Applied(Arc<DynamicObject>),
    /// We deleted the object at this resourceVersion.
    Deleted(String),
}

pub struct Applier {
    client: Client,
    namespace: String,
    /// Server-side apply field manager; also decides which fields (and namespace labels) are ours.
    field_manager: String,
    live: Live,
    overlay: HashMap<(Kind, String), Written>,
    /// What the last plan found in effect, for the next one.
    in_effect: HashMap<(Kind, String), InEffect>,
    metrics: AgentMetrics,
}

fn rv(o: &DynamicObject) -> u64 {
    // resourceVersions are opaque, but etcd-backed ones are increasing integers; a non-number just
    // means the overlay is never preferred.
    o.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the API server said, without the client's wrapping: this goes to the hub and into status.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// The stores, overlaid with our own writes they have not caught up with.
struct Current<'a> {
    live: &'a Live,
    overlay: &'a HashMap<(Kind, String), Written>,
    in_effect: &'a HashMap<(Kind, String), InEffect>,
}

impl View for Current<'_> {
    fn in_effect_before(&self, kind: Kind, name: &str) -> Option<&InEffect> {
        self.in_effect.get(&(kind, name.to_string()))
    }

    fn get(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>> {
        let stored = self.live.get(kind, name);
        match (self.overlay.get(&(kind, name.to_string())), stored) {
            (Some(Written::Applied(mine)), Some(s)) if rv(mine) > rv(&s) => Some(mine.clone()),
            // Not in the store: either it has not seen our write yet, or it saw it and then the
            // object's deletion (someone deleted what we just wrote).
            (Some(Written::Applied(mine)), None) if !self.live.has_seen(kind, rv(mine)) => {
                Some(mine.clone())
            }
            (Some(Written::Deleted(at)), Some(s))
                if s.resource_version().as_deref() == Some(at) =>
            {
                None
            }
            (_, stored) => stored,
        }
    }

    fn all(&self, kind: Kind) -> Vec<Arc<DynamicObject>> {
        // Names from the store and from our own applies; each at its freshest.
        let mut names: Vec<String> = self.live.all(kind).iter().map(|o| o.name_any()).collect();
        names.extend(
            self.overlay
                .iter()
                .filter(|((k, _), w)| *k == kind && matches!(w, Written::Applied(_)))
                .map(|((_, name), _)| name.clone()),
        );
        names.sort();
        names.dedup();
        names.iter().filter_map(|n| self.get(kind, n)).collect()
    }
}

impl Applier {
    pub fn new(
        client: Client,
        namespace: String,
        field_manager: String,
        live: Live,
        metrics: AgentMetrics,
    ) -> Self {
        Self {
            client,
            namespace,
            field_manager,
            live,
            overlay: HashMap::new(),
            in_effect: HashMap::new(),
            metrics,
        }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    fn view(&self) -> Current<'_> {
        Current {
            live: &self.live,
            overlay: &self.overlay,
            in_effect: &self.in_effect,
        }
    }

    /// Drops overlay entries the stores have caught up with.
    fn prune_overlay(&mut self) {
        let live = &self.live;
        self.overlay
            .retain(|(kind, name), w| match (w, live.get(*kind, name)) {
                (Written::Applied(mine), Some(s)) => rv(mine) > rv(&s),
                (Written::Applied(mine), None) => !live.has_seen(*kind, rv(mine)),
                (Written::Deleted(at), Some(s)) => {
                    s.resource_version().as_deref() == Some(at.as_str())
                }
                (Written::Deleted(_), None) => false,
            });
    }

    /// Counts a snapshot applied completely but left unanswered: a newer one waited.
    pub fn answered_by_newer(&self) {
        self.metrics.snapshots_answered_by_newer.inc();
    }

    /// True when every change the watches showed since the last pass is the echo of one of this
    /// agent's own applies: a pass would find the cluster as the last one left it. Takes the events.
    pub fn only_own_writes_seen(&self) -> bool {
        echoes_only(&self.live.take_events(), &self.overlay)
    }

    /// Makes the remote match `snap`. Failures are per object; everything else is applied. When
    /// `newer` says, after the EndpointSlices, that a newer command waits, the rest is skipped
    /// ([`Outcome::superseded`]).
    pub async fn apply(&mut self, snap: &Snapshot, newer: impl Fn() -> bool) -> Outcome {
        // This pass reads the stores as they are: it covers every event so far.
        self.live.take_events();
        self.prune_overlay();
        let mut plan = plan::snapshot(snap, &self.namespace, &self.field_manager, &self.view());
        self.in_effect = std::mem::take(&mut plan.in_effect).into_iter().collect();
        if let Some(refused) = plan.failures.iter().find(|f| f.kind == "Snapshot") {
            warn!(version = %snap.version, message = %refused.message);
        }
        let out = self.execute(plan, newer).await;
        if out.superseded {
            self.metrics.snapshots_superseded.inc();
            debug!(version = %snap.version, writes = out.writes, "superseded after its EndpointSlices");
            return out;
        }
        self.metrics.snapshots_applied.inc();
        for f in &out.failures {
            self.metrics
                .apply_errors
                .get_or_create(&ObjectKind {
                    kind: f.kind.clone(),
                })
                .inc();
        }
        if out.writes > 0 || !out.failures.is_empty() {
            info!(version = %snap.version, writes = out.writes, failures = out.failures.len(), "snapshot applied");
        }
        out
    }

    /// Removes everything this agent manages: the answer to `Retire`.
    pub async fn retire(&mut self) -> Outcome {
        self.live.take_events();
        self.prune_overlay();
        let mut plan = plan::retire(&self.field_manager, &self.view());
        self.in_effect = std::mem::take(&mut plan.in_effect).into_iter().collect();
        let out = self.execute(plan, || false).await;
        info!(
            writes = out.writes,
            failures = out.failures.len(),
            "retired: removed everything this agent managed"
        );
        out
    }

    /// Runs the plan's writes in two phases: the EndpointSlices, then the rest (Services, legacy
    /// Endpoints, namespace labels). Slices are what istiod and kube-proxy read, so a change reaches
    /// them in one write's time on an API server that is not also busy with the Endpoints write
    /// (measured in docs/benchmarks.md, section 1). Within a phase each write is to a different
    /// object, so up to [`WRITES_AT_ONCE`] go to the API server together: a large plan (a retire,
    /// many Services) takes the time of its slowest writes, not their sum, and does not become a
    /// burst of hundreds of requests. Between the phases, `newer` may cut the plan short: the hub
    /// has sent a newer state, whose slices should not wait for this one's Endpoints.
    async fn execute(&mut self, plan: Plan, newer: impl Fn() -> bool) -> Outcome {
        use futures::StreamExt;
        let mut out = Outcome {
            failures: plan.failures,
            ..Outcome::default()
        };
        let (slices, rest) = phases(plan.writes);
        let mut done: Vec<Done> = Vec::new();
        for (i, phase) in [slices, rest].into_iter().enumerate() {
            if i > 0 && !phase.is_empty() && newer() {
                out.superseded = true;
                break;
            }
            let d: Vec<Done> = futures::stream::iter(phase)
                .map(|w| self.run(w))
                .buffer_unordered(WRITES_AT_ONCE)
                .collect()
                .await;
            done.extend(d);
        }
        for d in done {
            out.writes += d.calls;
            self.overlay.extend(d.written);
            self.in_effect.extend(d.in_effect);
            if let Some(f) = d.failure {
                out.failures.push(f);
            }
        }
        out
    }

    /// One write of a plan (a recreate is two calls, in order).
    async fn run(&self, write: Write) -> Done {
        let (kind, name) = (write.kind(), write.name());
        let ns = if kind == Kind::Namespace {
            String::new()
        } else {
            self.namespace.clone()
        };
        let mut done = Done::default();
        let result = match write {
            Write::Apply {
                kind,
                name,
                body,
                force,
            } => self
                .write(kind, &name, &body, force, &mut done)
                .await
                .map_err(|e| apply_failure(kind, &e)),
            Write::Delete { kind, object } => self
                .delete(kind, &object, &mut done)
                .await
                .map_err(|e| (format!("delete: {}", reason(&e)), false)),
            Write::Recreate { kind, object, body } => {
                match self.delete(kind, &object, &mut done).await {
                    Err(e) => Err((format!("recreate: {}", reason(&e)), false)),
                    Ok(()) => self
                        .write(kind, &name, &body, true, &mut done)
                        .await
                        .map_err(|e| apply_failure(kind, &e)),
                }
            }
        };
        if let Err((message, conflict)) = result {
            done.failure = Some(failure(kind, &ns, &name, message, conflict));
        }
        done
    }

    /// Server-side apply.
    async fn write(
        &self,
        kind: Kind,
        name: &str,
        body: &Value,
        force: bool,
        done: &mut Done,
    ) -> kube::Result<()> {
        let mut params = PatchParams::apply(&self.field_manager);
        params.force = force;
        let obj = kind
            .api(&self.client, &self.namespace)
            .patch(name, &params, &Patch::Apply(body))
            .await;
        done.calls += 1;
        self.metrics.write(kind.as_str(), "apply");
        let obj = obj?;
        debug!(kind = kind.as_str(), name, "applied");
        // What an apply returns has the body in effect: the next plan need not check it again.
        if let Some(resource_version) = obj.resource_version() {
            done.in_effect.push((
                (kind, name.to_string()),
                InEffect {
                    resource_version,
                    body: body.clone(),
                },
            ));
        }
        done.written
            .push(((kind, name.to_string()), Written::Applied(Arc::new(obj))));
        Ok(())
    }

    async fn delete(&self, kind: Kind, obj: &DynamicObject, done: &mut Done) -> kube::Result<()> {
        let name = obj.name_any();
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: obj.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let res = kind
            .api(&self.client, &self.namespace)
            .delete(&name, &dp)
            .await;
        done.calls += 1;
        self.metrics.write(kind.as_str(), "delete");
        match res {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
        .map(|()| {
            debug!(kind = kind.as_str(), %name, "deleted");
            let at = obj.resource_version().unwrap_or_default();
            done.written.push(((kind, name), Written::Deleted(at)));
        })
    }
}

/// Every change in `events` is an object at the resourceVersion our own apply of it returned, and
/// nothing else happened.
fn echoes_only(events: &Events, overlay: &HashMap<(Kind, String), Written>) -> bool {
    !events.other
        && events.changed.iter().all(|(kind, name, rv)| {
            matches!(overlay.get(&(*kind, name.clone())),
                Some(Written::Applied(mine)) if mine.resource_version().as_deref() == Some(rv.as_str()))
        })
}

/// The plan's writes split into the phases [`Applier::execute`] runs in order: EndpointSlices, then
/// everything else; each phase in plan order.
fn phases(writes: Vec<Write>) -> (Vec<Write>, Vec<Write>) {
    writes
        .into_iter()
        .partition(|w| w.kind() == Kind::EndpointSlice)
}

/// Writes of one plan in flight at once.
const WRITES_AT_ONCE: usize = 8;

/// What one write of a plan did: API calls made, what it leaves in the overlay and in the record of
/// what is in effect, its failure.
#[derive(Default)]
struct Done {
    calls: u32,
    written: Vec<((Kind, String), Written)>,
    in_effect: Vec<((Kind, String), InEffect)>,
    failure: Option<ObjectFailure>,
}

/// (message, conflict) for a failed apply. Only namespaces are applied without force, so only they
/// can conflict with another manager.
fn apply_failure(kind: Kind, e: &kube::Error) -> (String, bool) {
    let conflict = matches!(e, kube::Error::Api(status) if status.is_conflict());
    if conflict && kind == Kind::Namespace {
        (
            format!(
                "another manager set an injection label to a different value; Tether does not overwrite it ({})",
                reason(e)
            ),
            true,
        )
    } else {
        (reason(e), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(kind: Kind, name: &str) -> Write {
        Write::Apply {
            kind,
            name: name.into(),
            body: Value::Null,
            force: true,
        }
    }

    fn applied(name: &str, rv: &str) -> ((Kind, String), Written) {
        let mut o = DynamicObject::new(name, &Kind::EndpointSlice.api_resource());
        o.metadata.resource_version = Some(rv.into());
        (
            (Kind::EndpointSlice, name.into()),
            Written::Applied(Arc::new(o)),
        )
    }

    fn changed(name: &str, rv: &str) -> (Kind, String, String) {
        (Kind::EndpointSlice, name.into(), rv.into())
    }

    #[test]
    fn only_the_echoes_of_our_own_applies_skip_a_drift_pass() {
        let overlay: HashMap<_, _> = [applied("a-v4-0", "10"), applied("b-v4-0", "12")].into();
        let events = |changed: Vec<(Kind, String, String)>, other| Events { changed, other };
        assert!(echoes_only(&events(vec![], false), &overlay));
        assert!(echoes_only(
            &events(
                vec![changed("a-v4-0", "10"), changed("b-v4-0", "12")],
                false
            ),
            &overlay
        ));
        // Someone changed it after our write, or we never wrote it: a pass must look.
        assert!(!echoes_only(
            &events(vec![changed("a-v4-0", "11")], false),
            &overlay
        ));
        assert!(!echoes_only(
            &events(vec![changed("c-v4-0", "13")], false),
            &overlay
        ));
        // Another kind's object of the same name and resourceVersion is not what we applied.
        let endpoints = (Kind::Endpoints, "a-v4-0".to_string(), "10".to_string());
        assert!(!echoes_only(&events(vec![endpoints], false), &overlay));
        // A deletion or a relist went by: never taken for an echo.
        assert!(!echoes_only(
            &events(vec![changed("a-v4-0", "10")], true),
            &overlay
        ));
        // Deleted by us is no echo of an apply.
        let deleted: HashMap<_, _> = [(
            (Kind::EndpointSlice, "a-v4-0".to_string()),
            Written::Deleted("10".into()),
        )]
        .into();
        assert!(!echoes_only(
            &events(vec![changed("a-v4-0", "10")], false),
            &deleted
        ));
    }

    #[test]
    fn endpoint_slices_are_written_before_everything_else_in_plan_order() {
        let writes = vec![
            apply(Kind::Service, "a"),
            apply(Kind::Endpoints, "a"),
            apply(Kind::EndpointSlice, "a-v4-0"),
            apply(Kind::Namespace, "apps"),
            apply(Kind::EndpointSlice, "b-v4-0"),
        ];
        let (slices, rest) = phases(writes);
        let names = |w: &[Write]| -> Vec<(Kind, String)> {
            w.iter().map(|w| (w.kind(), w.name())).collect()
        };
        assert_eq!(
            names(&slices),
            [
                (Kind::EndpointSlice, "a-v4-0".to_string()),
                (Kind::EndpointSlice, "b-v4-0".to_string())
            ]
        );
        assert_eq!(
            names(&rest),
            [
                (Kind::Service, "a".to_string()),
                (Kind::Endpoints, "a".to_string()),
                (Kind::Namespace, "apps".to_string())
            ]
        );
    }
}
