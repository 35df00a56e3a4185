//! The applier: makes the remote match a snapshot, one object at a time, writing only where live
//! state differs. Foreign objects (no managed-by label) are never touched and come back as conflicts;
//! every other failure is collected per object, so one bad object never blocks the rest.
//!
//! Freshness: the stores lag our own writes by one watch event, so the server's answer to each write is
//! kept as an overlay until the store catches up. Without it a second pass right after a write would
//! see stale state and write again.

use crate::live::{Live, api};
use crate::metrics::{AgentMetrics, ObjectKind};
use crate::objects::{self, DesiredObject, INJECTION_MARKER, Kind, covers};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tether_proto::v1::{Injection, ObjectFailure, Snapshot};
use tracing::{debug, info, warn};

/// What one pass did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failures: Vec<ObjectFailure>,
    /// API writes (patch, delete) this pass made.
    pub writes: u32,
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
    /// Server-side apply field manager; also decides which namespace labels are ours to remove.
    field_manager: String,
    live: Live,
    overlay: HashMap<(Kind, String), Written>,
    metrics: AgentMetrics,
}

fn rv(o: &DynamicObject) -> u64 {
    // resourceVersions are opaque, but etcd-backed ones are increasing integers; a non-number just
    // means the overlay is never preferred.
    o.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Why an object of a desired name is left alone.
const FOREIGN: &str =
    "exists without label app.kubernetes.io/managed-by=tether-agent; Tether does not overwrite it";

/// What the API server said, without the client's wrapping: this goes to the hub and into status.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

fn failure(
    kind: Kind,
    namespace: &str,
    name: &str,
    message: String,
    conflict: bool,
) -> ObjectFailure {
    ObjectFailure {
        kind: kind.as_str().into(),
        namespace: namespace.into(),
        name: name.into(),
        message,
        conflict,
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
            metrics,
        }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The freshest state of an object we know: the store, or our own newer write.
    fn current(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>> {
        let stored = self.live.get(kind, name);
        match (self.overlay.get(&(kind, name.to_string())), stored) {
            (Some(Written::Applied(mine)), Some(s)) if rv(mine) > rv(&s) => Some(mine.clone()),
            (Some(Written::Applied(mine)), None) => Some(mine.clone()),
            (Some(Written::Deleted(at)), Some(s))
                if s.resource_version().as_deref() == Some(at) =>
            {
                None
            }
            (_, stored) => stored,
        }
    }

    /// Drops overlay entries the stores have caught up with.
    fn prune_overlay(&mut self) {
        let live = &self.live;
        self.overlay
            .retain(|(kind, name), w| match (w, live.get(*kind, name)) {
                (Written::Applied(mine), Some(s)) => rv(mine) > rv(&s),
                (Written::Applied(_), None) => true,
                (Written::Deleted(at), Some(s)) => {
                    s.resource_version().as_deref() == Some(at.as_str())
                }
                (Written::Deleted(_), None) => false,
            });
    }

    /// Server-side apply. `force` takes back fields someone else changed on an object we own.
    async fn write(
        &mut self,
        kind: Kind,
        name: &str,
        body: &Value,
        force: bool,
        out: &mut Outcome,
    ) -> kube::Result<()> {
        let mut params = PatchParams::apply(&self.field_manager);
        params.force = force;
        let obj = api(&self.client, &self.namespace, kind)
            .patch(name, &params, &Patch::Apply(body))
            .await;
        out.writes += 1;
        self.metrics.write(kind.as_str(), "apply");
        let obj = obj?;
        debug!(kind = kind.as_str(), name, "applied");
        self.overlay
            .insert((kind, name.to_string()), Written::Applied(Arc::new(obj)));
        Ok(())
    }

    async fn delete(
        &mut self,
        kind: Kind,
        obj: &DynamicObject,
        out: &mut Outcome,
    ) -> kube::Result<()> {
        let name = obj.name_any();
        // Precondition on uid: never delete an object that replaced the one we saw.
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: obj.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let res = api(&self.client, &self.namespace, kind)
            .delete(&name, &dp)
            .await;
        out.writes += 1;
        self.metrics.write(kind.as_str(), "delete");
        match res {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
        .map(|()| {
            debug!(kind = kind.as_str(), %name, "deleted");
            let at = obj.resource_version().unwrap_or_default();
            self.overlay.insert((kind, name), Written::Deleted(at));
        })
    }

    /// Makes the remote match `snap`. Failures are per object; everything else is applied.
    pub async fn apply(&mut self, snap: &Snapshot) -> Outcome {
        self.prune_overlay();
        let mut out = Outcome::default();
        let problems = tether_proto::check::snapshot(snap);
        if !problems.is_empty() {
            // Refused whole: applying part of a malformed state could remove what is right.
            let message = format!(
                "malformed snapshot refused, nothing applied: {}",
                problems.join("; ")
            );
            warn!(version = %snap.version, %message);
            out.failures.push(ObjectFailure {
                kind: "Snapshot".into(),
                namespace: snap.namespace.clone(),
                name: snap.version.clone(),
                message,
                conflict: false,
            });
            return out;
        }
        let ns = self.namespace.clone();
        if snap.namespace != ns {
            let msg = format!(
                "the hub sends mirrors for namespace {:?} but this agent manages {ns:?}; set the agent's --namespace to match the hub's --remote-namespace",
                snap.namespace
            );
            out.failures
                .push(failure(Kind::Namespace, "", &snap.namespace, msg, false));
        } else if self.current(Kind::Namespace, &ns).is_none() {
            let msg = format!(
                "namespace {ns:?} does not exist on this cluster; create it (the agent never creates namespaces)"
            );
            out.failures
                .push(failure(Kind::Namespace, "", &ns, msg, false));
        } else {
            self.apply_services(snap, &mut out).await;
        }
        self.apply_injection(snap.injection.as_ref(), &mut out)
            .await;
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

    async fn apply_services(&mut self, snap: &Snapshot, out: &mut Outcome) {
        let ns = self.namespace.clone();
        // Names that must survive garbage collection: desired, or blocked by a conflict.
        let mut keep: HashSet<(Kind, String)> = HashSet::new();
        for svc in &snap.services {
            let objects = objects::objects_for(&ns, svc);
            keep.extend(objects.iter().map(|o| (o.kind, o.name.clone())));
            if let Some(live) = self.current(Kind::Service, &svc.name)
                && !objects::is_managed(live.metadata.labels.as_ref())
            {
                // Someone else's Service: writing its endpoints would hijack it. Leave all of it alone.
                let msg = FOREIGN.to_string();
                out.failures
                    .push(failure(Kind::Service, &ns, &svc.name, msg, true));
                continue;
            }
            for obj in objects {
                if let Err(f) = self.apply_object(&obj, out).await {
                    out.failures.push(f);
                }
            }
        }
        for kind in Kind::OWNED {
            for obj in self.live.all(kind) {
                let name = obj.name_any();
                if keep.contains(&(kind, name.clone()))
                    || !objects::is_managed(obj.metadata.labels.as_ref())
                {
                    continue;
                }
                let Some(obj) = self.current(kind, &name) else {
                    continue;
                };
                if let Err(e) = self.delete(kind, &obj, out).await {
                    out.failures.push(failure(
                        kind,
                        &ns,
                        &name,
                        format!("delete: {}", reason(&e)),
                        false,
                    ));
                }
            }
        }
    }

    async fn apply_object(
        &mut self,
        obj: &DesiredObject,
        out: &mut Outcome,
    ) -> Result<(), ObjectFailure> {
        let ns = self.namespace.clone();
        let fail = |message: String, conflict| failure(obj.kind, &ns, &obj.name, message, conflict);
        let live = self.current(obj.kind, &obj.name);
        if let Some(live) = &live {
            if !objects::is_managed(live.metadata.labels.as_ref()) {
                let msg = FOREIGN.to_string();
                return Err(fail(msg, true));
            }
            let live_json = serde_json::to_value(&**live).unwrap_or_default();
            // Objects from a watch list carry no apiVersion/kind; the name and namespace say enough.
            let mut wanted = obj.body.clone();
            if let Some(m) = wanted.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            if covers(&live_json, &wanted) {
                return Ok(());
            }
            // clusterIP is immutable: switching between headless and ClusterIP needs a new Service.
            if obj.kind == Kind::Service && is_headless(&live_json) != is_headless(&obj.body) {
                self.delete(Kind::Service, live, out)
                    .await
                    .map_err(|e| fail(format!("recreate: {}", reason(&e)), false))?;
            }
        }
        self.write(obj.kind, &obj.name, &obj.body, true, out)
            .await
            .map_err(|e| fail(reason(&e), false))
    }

    /// Injection labels plus the marker on listed namespaces that exist; both taken away from namespaces
    /// Tether labelled that are no longer listed. Applied without force: a label someone else set to
    /// another value is reported, not overwritten.
    async fn apply_injection(&mut self, injection: Option<&Injection>, out: &mut Outcome) {
        let (listed, labels): (HashSet<&str>, BTreeMap<String, String>) = match injection {
            Some(i) => (
                i.namespaces.iter().map(String::as_str).collect(),
                i.labels.clone(),
            ),
            None => (HashSet::new(), BTreeMap::new()),
        };
        let mut wanted = labels.clone();
        wanted.insert(INJECTION_MARKER.into(), "true".into());
        let mut names: Vec<String> = self
            .live
            .all(Kind::Namespace)
            .iter()
            .map(|n| n.name_any())
            .collect();
        names.sort();
        let mut missing: Vec<&str> = listed
            .iter()
            .copied()
            .filter(|n| names.binary_search_by(|x| x.as_str().cmp(n)).is_err())
            .collect();
        missing.sort();
        for name in missing {
            // Not an error of ours to fix, but the spec is not in effect there: the namespace watch
            // brings a new pass (and the ACK) when it is created.
            let msg = format!(
                "namespace {name:?} is listed for injection but does not exist on this cluster; it is labelled once it is created"
            );
            out.failures
                .push(failure(Kind::Namespace, "", name, msg, false));
        }
        for name in names {
            let Some(live) = self.current(Kind::Namespace, &name) else {
                continue;
            };
            let have = live.metadata.labels.clone().unwrap_or_default();
            let body = if listed.contains(name.as_str()) {
                if wanted.iter().all(|(k, v)| have.get(k) == Some(v)) {
                    continue;
                }
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": wanted}})
            } else if have.contains_key(INJECTION_MARKER) && owns_fields(&live, &self.field_manager)
            {
                // An apply without the labels releases them; the server removes what only we owned.
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            } else {
                continue;
            };
            if let Err(e) = self.write(Kind::Namespace, &name, &body, false, out).await {
                let conflict = matches!(&e, kube::Error::Api(status) if status.is_conflict());
                let msg = if conflict {
                    format!(
                        "another manager set an injection label to a different value; Tether does not overwrite it ({})",
                        reason(&e)
                    )
                } else {
                    reason(&e)
                };
                out.failures
                    .push(failure(Kind::Namespace, "", &name, msg, conflict));
            }
        }
    }

    /// Removes everything this agent manages: the answer to `Retire`.
    pub async fn retire(&mut self) -> Outcome {
        self.prune_overlay();
        let mut out = Outcome::default();
        for kind in Kind::OWNED {
            for obj in self.live.all(kind) {
                if !objects::is_managed(obj.metadata.labels.as_ref()) {
                    continue;
                }
                let Some(obj) = self.current(kind, &obj.name_any()) else {
                    continue;
                };
                if let Err(e) = self.delete(kind, &obj, &mut out).await {
                    out.failures.push(failure(
                        kind,
                        &self.namespace,
                        &obj.name_any(),
                        format!("delete: {}", reason(&e)),
                        false,
                    ));
                }
            }
        }
        self.apply_injection(None, &mut out).await;
        info!(
            writes = out.writes,
            failures = out.failures.len(),
            "retired: removed everything this agent managed"
        );
        out
    }
}

fn is_headless(obj: &Value) -> bool {
    obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None")
}

/// True when `manager` applied fields on this object. Another agent's marker is not ours to remove.
fn owns_fields(obj: &DynamicObject, manager: &str) -> bool {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply"))
}
