//! The apply plan: a snapshot and what the agent sees of its cluster go in; out come the writes that
//! make the cluster match, in order, and the objects left alone with the reason (conflicts, missing
//! namespaces). Pure: the applier executes a plan and reports what failed.
//!
//! ```text
//!  Snapshot ─► objects::objects_for ─► desired objects ─┐
//!  View (watch stores + our own newer writes) ──────────┼─► Plan { writes, failures, in_effect }
//!  field manager (which fields are ours) ───────────────┘
//! ```
//! Rules, each in one place below:
//! - an object without `app.kubernetes.io/managed-by: tether-agent` is never written or deleted; a
//!   desired one of that name is a conflict (a foreign Service blocks its whole mirror);
//! - an object is written only when an apply would change it ([`fields::in_effect`]);
//! - managed objects no longer desired are deleted (precondition: the uid seen);
//! - a Service switching between headless and ClusterIP, or to or from ExternalName, is recreated
//!   (clusterIP is immutable, and an ExternalName Service has none);
//! - namespaces get the injection labels and the marker without force (another manager's value
//!   is reported, not overwritten); labels are released only where this field manager put them.

use crate::fields::in_effect;
use crate::objects::{self, DesiredObject, INJECTION_MARKER, Kind};
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use tether_proto::v1::{Injection, ObjectFailure, Snapshot};

/// What the agent knows of its cluster: the watch stores, overlaid with its own newer writes.
pub trait View {
    fn get(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>>;
    fn all(&self, kind: Kind) -> Vec<Arc<DynamicObject>>;
    /// What the last plan found in effect for this object (its [`Plan::in_effect`]), if anything.
    fn in_effect_before(&self, _kind: Kind, _name: &str) -> Option<&InEffect> {
        None
    }
}

/// An object an apply would leave as it is: the live object's resourceVersion and the body
/// checked against it. The same object at the same resourceVersion and the same body give the same
/// answer, so the next plan need not check again: serialising the live object and walking its
/// fields is most of a plan's time, and most objects (the Service, the namespaces) stay the same
/// from one snapshot to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct InEffect {
    pub resource_version: String,
    pub body: Value,
}

/// One API call.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Server-side apply. `force` takes back fields someone else changed on an object we own;
    /// without it a field another manager holds at another value is a conflict.
    Apply {
        kind: Kind,
        name: String,
        body: Value,
        force: bool,
    },
    /// Delete, with the uid seen as a precondition (never an object that replaced it).
    Delete {
        kind: Kind,
        object: Arc<DynamicObject>,
    },
    /// Delete, then apply `body` (a field that cannot change in place changed).
    Recreate {
        kind: Kind,
        object: Arc<DynamicObject>,
        body: Value,
    },
}

impl Write {
    pub fn kind(&self) -> Kind {
        match self {
            Write::Apply { kind, .. }
            | Write::Delete { kind, .. }
            | Write::Recreate { kind, .. } => *kind,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Write::Apply { name, .. } => name.clone(),
            Write::Delete { object, .. } | Write::Recreate { object, .. } => object.name_any(),
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Objects not made to match, and why. Everything else is in `writes` or already matches.
    pub failures: Vec<ObjectFailure>,
    /// The objects that already match, for the next plan's [`View::in_effect_before`].
    pub in_effect: Vec<((Kind, String), InEffect)>,
}

/// Why an object of a desired name is left alone.
pub const FOREIGN: &str =
    "exists without label app.kubernetes.io/managed-by=tether-agent; Tether does not overwrite it";

pub fn failure(
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

fn managed(o: &DynamicObject) -> bool {
    objects::is_managed(o.metadata.labels.as_ref())
}

fn json_of(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or_default()
}

/// `body` back when applying it as `manager` would change `live`; None when it would leave it as
/// it is ([`in_effect`]). Answered from the record when that has the same resourceVersion (the
/// previous plan found it in effect, or the agent's own apply left it): the same body is in effect;
/// for the kinds the agent owns whole, another body is not, since the record's body is exactly what
/// the agent's fields hold. An object in effect is recorded (with `body`) for the next plan.
fn changed(
    kind: Kind,
    live: &DynamicObject,
    body: Value,
    manager: &str,
    view: &impl View,
    plan: &mut Plan,
) -> Option<Value> {
    let name = live.name_any();
    let rv = live.resource_version();
    let record = view
        .in_effect_before(kind, &name)
        .filter(|k| rv.as_ref() == Some(&k.resource_version));
    let effective = match record {
        Some(k) if k.body == body => true,
        // A new state for a mirror: the record spares serialising the live object and walking its
        // fields on the way to the write, most of a plan's time for one pod change.
        Some(_) if Kind::OWNED.contains(&kind) => false,
        _ => in_effect(&json_of(live), &body, manager),
    };
    if !effective {
        return Some(body);
    }
    if let Some(resource_version) = rv {
        plan.in_effect.push((
            (kind, name),
            InEffect {
                resource_version,
                body,
            },
        ));
    }
    None
}

/// The plan that makes the cluster match `snap`, for an agent managing `namespace` as `manager`.
pub fn snapshot(snap: &Snapshot, namespace: &str, manager: &str, view: &impl View) -> Plan {
    let mut plan = Plan::default();
    let problems = tether_proto::check::snapshot(snap);
    if !problems.is_empty() {
        // Refused whole: applying part of a malformed state could remove what is right.
        let message = format!(
            "malformed snapshot refused, nothing applied: {}",
            problems.join("; ")
        );
        plan.failures.push(ObjectFailure {
            kind: "Snapshot".into(),
            namespace: snap.namespace.clone(),
            name: snap.version.clone(),
            message,
            conflict: false,
        });
        return plan;
    }
    if snap.namespace != namespace {
        let msg = format!(
            "the hub sends mirrors for namespace {:?} but this agent manages {namespace:?}; set the agent's --namespace to match the hub's --remote-namespace",
            snap.namespace
        );
        plan.failures
            .push(failure(Kind::Namespace, "", &snap.namespace, msg, false));
    } else if view.get(Kind::Namespace, namespace).is_none() {
        let msg = format!(
            "namespace {namespace:?} does not exist on this cluster; create it (the agent never creates namespaces)"
        );
        plan.failures
            .push(failure(Kind::Namespace, "", namespace, msg, false));
    } else {
        services(snap, namespace, manager, view, &mut plan);
    }
    injection(snap.injection.as_ref(), manager, view, &mut plan);
    plan
}

/// The plan that removes everything this agent manages: the answer to `Retire`.
pub fn retire(manager: &str, view: &impl View) -> Plan {
    let mut plan = Plan::default();
    collect_garbage(&HashSet::new(), view, &mut plan);
    injection(None, manager, view, &mut plan);
    plan
}

fn services(snap: &Snapshot, namespace: &str, manager: &str, view: &impl View, plan: &mut Plan) {
    // Names that must survive garbage collection: desired, or blocked by a conflict.
    let mut keep: HashSet<(Kind, String)> = HashSet::new();
    for svc in &snap.services {
        let objects = objects::objects_for(namespace, svc, !snap.skip_legacy_endpoints);
        keep.extend(objects.iter().map(|o| (o.kind, o.name.clone())));
        if view
            .get(Kind::Service, &svc.name)
            .is_some_and(|live| !managed(&live))
        {
            // Someone else's Service: writing its endpoints would hijack it. Leave all of it alone.
            plan.failures.push(failure(
                Kind::Service,
                namespace,
                &svc.name,
                FOREIGN.into(),
                true,
            ));
            continue;
        }
        for obj in objects {
            object(obj, namespace, manager, view, plan);
        }
    }
    collect_garbage(&keep, view, plan);
}

fn object(obj: DesiredObject, namespace: &str, manager: &str, view: &impl View, plan: &mut Plan) {
    let DesiredObject {
        kind, name, body, ..
    } = obj;
    let Some(live) = view.get(kind, &name) else {
        plan.writes.push(Write::Apply {
            kind,
            name,
            body,
            force: true,
        });
        return;
    };
    if !managed(&live) {
        plan.failures
            .push(failure(kind, namespace, &name, FOREIGN.into(), true));
        return;
    }
    let Some(body) = changed(kind, &live, body, manager, view, plan) else {
        return;
    };
    // clusterIP is immutable: switching between headless and ClusterIP needs a new Service, and so
    // does switching to or from ExternalName (which has none).
    if kind == Kind::Service {
        let live_json = json_of(&live);
        if is_headless(&live_json) != is_headless(&body)
            || is_external_name(&live_json) != is_external_name(&body)
        {
            plan.writes.push(Write::Recreate {
                kind,
                object: live,
                body,
            });
            return;
        }
    }
    plan.writes.push(Write::Apply {
        kind,
        name,
        body,
        force: true,
    });
}

/// Deletes every managed object of the owned kinds whose (kind, name) is not in `keep`.
fn collect_garbage(keep: &HashSet<(Kind, String)>, view: &impl View, plan: &mut Plan) {
    for kind in Kind::OWNED {
        let mut gone: Vec<Arc<DynamicObject>> = view
            .all(kind)
            .into_iter()
            .filter(|o| managed(o) && !keep.contains(&(kind, o.name_any())))
            .collect();
        gone.sort_by_key(|o| o.name_any());
        plan.writes.extend(
            gone.into_iter()
                .map(|object| Write::Delete { kind, object }),
        );
    }
}

/// Injection labels plus the marker on listed namespaces that exist; both released from namespaces
/// this manager labelled that are no longer listed. Listed namespaces that do not exist are
/// failures: the spec is not in effect there until they are created.
fn injection(injection: Option<&Injection>, manager: &str, view: &impl View, plan: &mut Plan) {
    let (listed, labels): (BTreeSet<&str>, BTreeMap<String, String>) = match injection {
        Some(i) => (
            i.namespaces.iter().map(String::as_str).collect(),
            i.labels.clone(),
        ),
        None => (BTreeSet::new(), BTreeMap::new()),
    };
    let mut wanted = labels;
    wanted.insert(INJECTION_MARKER.into(), "true".into());
    // A remote may have thousands of namespaces and this runs on every plan: each one that is
    // neither listed nor labelled costs a look at its name and labels, nothing more.
    let mut existing: Vec<Arc<DynamicObject>> = view.all(Kind::Namespace);
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for name in listed
        .iter()
        .filter(|n| view.get(Kind::Namespace, n).is_none())
    {
        // The namespace watch brings a new pass (and the ACK) when it is created.
        let msg = format!(
            "namespace {name:?} is listed for injection but does not exist on this cluster; it is labelled once it is created"
        );
        plan.failures
            .push(failure(Kind::Namespace, "", name, msg, false));
    }
    for ns in existing {
        let Some(name) = ns.metadata.name.as_deref() else {
            continue;
        };
        let body = if listed.contains(name) {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": wanted}})
        } else if ns.labels().contains_key(INJECTION_MARKER) {
            // An apply without the labels releases them; the server removes what only we owned.
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        } else {
            continue;
        };
        if let Some(body) = changed(Kind::Namespace, &ns, body, manager, view, plan) {
            plan.writes.push(Write::Apply {
                kind: Kind::Namespace,
                name: name.to_string(),
                body,
                force: false,
            });
        }
    }
}

fn is_headless(obj: &Value) -> bool {
    obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None")
}

fn is_external_name(obj: &Value) -> bool {
    obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tether_proto::v1::{Endpoint, Port, Service};

    const ME: &str = "tether-agent";
    const NS: &str = "istio-system";

    /// A cluster as the agent sees it.
    #[derive(Default)]
    struct Cluster(
        HashMap<(Kind, String), Arc<DynamicObject>>,
        HashMap<(Kind, String), InEffect>,
    );

    impl View for Cluster {
        fn in_effect_before(&self, kind: Kind, name: &str) -> Option<&InEffect> {
            self.1.get(&(kind, name.to_string()))
        }
        fn get(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>> {
            self.0.get(&(kind, name.to_string())).cloned()
        }
        fn all(&self, kind: Kind) -> Vec<Arc<DynamicObject>> {
            self.0
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, o)| o.clone())
                .collect()
        }
    }

    impl Cluster {
        fn with_namespace(name: &str) -> Self {
            let mut c = Self::default();
            c.put(Kind::Namespace, json!({"metadata": {"name": name}}));
            c
        }

        fn put(&mut self, kind: Kind, object: Value) {
            let o: DynamicObject = serde_json::from_value(object).unwrap();
            self.0.insert((kind, o.name_any()), Arc::new(o));
        }

        /// What an apply of `obj` by this agent leaves: its body, and its fields owned by us.
        fn applied(&mut self, obj: &DesiredObject, owned: Value) {
            let mut body = obj.body.clone();
            body["metadata"]["uid"] = format!("uid-{}", obj.name).into();
            body["metadata"]["managedFields"] =
                json!([{"manager": ME, "operation": "Apply", "fieldsV1": owned}]);
            self.put(obj.kind, body);
        }

        /// Namespace `apps` with the injection label and the marker, both applied by us.
        fn labelled_apps(&mut self) {
            self.put(
                Kind::Namespace,
                json!({"metadata": {"name": "apps", "labels": {"istio-injection": "enabled", INJECTION_MARKER: "true"},
                    "managedFields": [{"manager": ME, "operation": "Apply", "fieldsV1": {"f:metadata": {"f:labels": {
                        "f:istio-injection": {}, format!("f:{INJECTION_MARKER}"): {}}}}}]}}),
            );
        }

        /// Every object at resourceVersion `rv`.
        fn set_rv(&mut self, rv: &str) {
            for o in self.0.values_mut() {
                Arc::make_mut(o).metadata.resource_version = Some(rv.into());
            }
        }
    }

    fn snap(endpoints: &[(&str, bool)], namespaces: &[&str]) -> Snapshot {
        Snapshot {
            version: "v1".into(),
            nonce: "1".into(),
            namespace: NS.into(),
            services: vec![Service {
                name: "istiod".into(),
                headless: false,
                external_name: String::new(),
                ports: vec![Port {
                    name: "grpc-xds".into(),
                    protocol: "TCP".into(),
                    port: 15010,
                    app_protocol: String::new(),
                    target_port: 0,
                }],
                endpoints: endpoints
                    .iter()
                    .map(|(ip, ready)| Endpoint {
                        ip: ip.to_string(),
                        ready: *ready,
                        serving: *ready,
                        target_ports: vec![15010],
                        ..Default::default()
                    })
                    .collect(),
            }],
            injection: Some(Injection {
                namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
                labels: [("istio-injection".to_string(), "enabled".to_string())].into(),
            }),
            skip_legacy_endpoints: false,
        }
    }

    /// The owned-fields tree the API server records for each object the agent writes.
    fn owned_by_apply(obj: &DesiredObject) -> Value {
        let labels: serde_json::Map<String, Value> = obj.body["metadata"]["labels"]
            .as_object()
            .map(|m| m.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
            .unwrap_or_default();
        let mut owned = json!({"f:metadata": {"f:labels": labels}});
        match obj.kind {
            Kind::Service => {
                let ports: serde_json::Map<String, Value> = obj.body["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        let key = json!({"port": p["port"], "protocol": p["protocol"]});
                        let mut node = json!({".": {}});
                        for f in p.as_object().unwrap().keys() {
                            node[format!("f:{f}")] = json!({});
                        }
                        (format!("k:{key}"), node)
                    })
                    .collect();
                owned["f:spec"] = json!({"f:ports": ports});
                for f in obj.body["spec"].as_object().unwrap().keys() {
                    if f != "ports" {
                        owned["f:spec"][format!("f:{f}")] = json!({});
                    }
                }
            }
            Kind::EndpointSlice => {
                for f in ["addressType", "endpoints", "ports"] {
                    if obj.body.get(f).is_some() {
                        owned[format!("f:{f}")] = json!({});
                    }
                }
            }
            Kind::Endpoints => {
                if obj.body.get("subsets").is_some() {
                    owned["f:subsets"] = json!({});
                }
            }
            Kind::Namespace => {}
        }
        owned
    }

    fn all_objects(s: &Snapshot) -> Vec<DesiredObject> {
        s.services
            .iter()
            .flat_map(|svc| objects::objects_for(NS, svc, true))
            .collect()
    }

    fn applied_cluster(s: &Snapshot) -> Cluster {
        let mut c = Cluster::with_namespace(NS);
        for obj in all_objects(s) {
            c.applied(&obj, owned_by_apply(&obj));
        }
        c
    }

    fn applies(plan: &Plan) -> Vec<(Kind, String)> {
        plan.writes.iter().map(|w| (w.kind(), w.name())).collect()
    }

    #[test]
    fn an_empty_cluster_gets_every_object_in_order() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let plan = snapshot(&s, NS, ME, &Cluster::with_namespace(NS));
        assert_eq!(
            applies(&plan),
            [
                (Kind::Service, "istiod".to_string()),
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
                (Kind::Endpoints, "istiod".to_string()),
            ]
        );
        assert!(plan.failures.is_empty());
    }

    #[test]
    fn a_cluster_that_matches_gets_no_writes() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let plan = snapshot(&s, NS, ME, &applied_cluster(&s));
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn an_object_found_in_effect_is_checked_again_only_when_it_or_its_body_changes() {
        let s = snap(&[("10.0.0.1", true)], &["apps"]);
        let mut c = applied_cluster(&s);
        c.labelled_apps();
        c.set_rv("7");
        let first = snapshot(&s, NS, ME, &c);
        assert!(first.writes.is_empty(), "{first:?}");
        let mut found: Vec<(Kind, String)> =
            first.in_effect.iter().map(|(k, _)| k.clone()).collect();
        found.sort();
        let mut all: Vec<(Kind, String)> = all_objects(&s)
            .iter()
            .map(|o| (o.kind, o.name.clone()))
            .collect();
        all.push((Kind::Namespace, "apps".into()));
        all.sort();
        assert_eq!(found, all, "every matching object is recorded");
        assert!(
            first
                .in_effect
                .iter()
                .all(|(_, k)| k.resource_version == "7")
        );

        // The live objects change behind the record's back, at the same resourceVersion (which the
        // API server never does): the record answers, so nothing is checked again.
        c.1 = first.in_effect.iter().cloned().collect();
        let stripped = |c: &mut Cluster| {
            for o in c.0.values_mut() {
                Arc::make_mut(o).metadata.managed_fields = None;
            }
        };
        stripped(&mut c);
        let again = snapshot(&s, NS, ME, &c);
        assert!(again.writes.is_empty(), "{again:?}");
        assert_eq!(again.in_effect.len(), first.in_effect.len());

        // A new resourceVersion is checked again: nothing is ours any more, so all is written.
        c.set_rv("8");
        assert_eq!(snapshot(&s, NS, ME, &c).writes.len(), all.len());

        // So is a new body at the same resourceVersion: the new address is written.
        c.set_rv("7");
        let next = snap(&[("10.0.0.2", true)], &["apps"]);
        let plan = snapshot(&next, NS, ME, &c);
        assert_eq!(
            applies(&plan),
            [
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
                (Kind::Endpoints, "istiod".to_string()),
            ]
        );
    }

    #[test]
    fn a_recorded_mirror_with_a_new_body_is_written_unchecked_and_a_namespace_is_checked() {
        let (s, next) = (
            snap(&[("10.0.0.1", true)], &["apps"]),
            snap(&[("10.0.0.2", true)], &["apps"]),
        );
        // The cluster holds `next` already, as the agent's apply of it would leave it, all at
        // resourceVersion 7; the record says that at 7 the objects hold `s` (and the namespace
        // another label). The API server never does this; it shows which answers the record gives.
        let mut c = applied_cluster(&next);
        c.labelled_apps();
        c.set_rv("7");
        let record = |kind, name: &str, body: Value| {
            let rv = "7".to_string();
            (
                (kind, name.to_string()),
                InEffect {
                    resource_version: rv,
                    body,
                },
            )
        };
        c.1 = all_objects(&s)
            .into_iter()
            .map(|o| record(o.kind, &o.name, o.body))
            .collect();
        let (ns, old) = record(
            Kind::Namespace,
            "apps",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        );
        c.1.insert(ns, old);

        let plan = snapshot(&next, NS, ME, &c);
        // The mirrors the agent owns whole: a body other than the recorded one is written, without
        // looking at the live object. The Service's body is the recorded one: left alone.
        assert_eq!(
            applies(&plan),
            [
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
                (Kind::Endpoints, "istiod".to_string()),
            ]
        );
        // A namespace is shared with other managers: its new body is checked, found in effect, and
        // recorded with that body.
        let apps = plan
            .in_effect
            .iter()
            .find(|(k, _)| *k == (Kind::Namespace, "apps".to_string()))
            .expect("the namespace is recorded");
        assert_eq!(
            apps.1.body["metadata"]["labels"]["istio-injection"],
            "enabled"
        );
    }

    #[test]
    fn an_emptied_address_list_rewrites_the_endpoints() {
        let before = snap(&[("10.0.0.1", true), ("10.0.0.3", false)], &[]);
        let after = snap(&[("10.0.0.1", true)], &[]);
        let plan = snapshot(&after, NS, ME, &applied_cluster(&before));
        assert_eq!(
            applies(&plan),
            [
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
                (Kind::Endpoints, "istiod".to_string()),
            ]
        );
        let none = snap(&[], &[]);
        let plan = snapshot(&none, NS, ME, &applied_cluster(&before));
        assert_eq!(
            applies(&plan),
            [
                (Kind::Endpoints, "istiod".to_string()),
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
            ],
            "subsets removed; the slice with no endpoints left is deleted"
        );
        assert!(matches!(plan.writes[1], Write::Delete { .. }));
    }

    #[test]
    fn a_foreign_service_blocks_its_mirror_and_is_a_conflict() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let mut c = Cluster::with_namespace(NS);
        c.put(
            Kind::Service,
            json!({"metadata": {"name": "istiod", "labels": {"owner": "someone"}}}),
        );
        let plan = snapshot(&s, NS, ME, &c);
        assert!(plan.writes.is_empty(), "{plan:?}");
        assert_eq!(plan.failures.len(), 1);
        assert!(plan.failures[0].conflict && plan.failures[0].kind == "Service");
    }

    #[test]
    fn a_foreign_slice_of_a_desired_name_is_a_conflict_and_never_deleted() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let mut c = applied_cluster(&s);
        c.put(
            Kind::EndpointSlice,
            json!({"metadata": {"name": "istiod-v4-0"}, "addressType": "IPv4", "endpoints": []}),
        );
        c.put(
            Kind::EndpointSlice,
            json!({"metadata": {"name": "someone-elses"}, "addressType": "IPv4", "endpoints": []}),
        );
        let plan = snapshot(&s, NS, ME, &c);
        assert!(plan.writes.is_empty(), "{plan:?}");
        assert_eq!(plan.failures.len(), 1);
        assert_eq!(plan.failures[0].name, "istiod-v4-0");
    }

    #[test]
    fn managed_objects_no_longer_desired_are_deleted() {
        let two = Snapshot {
            services: vec![
                snap(&[("10.0.0.1", true)], &[]).services[0].clone(),
                Service {
                    name: "other".into(),
                    ..snap(&[("10.0.0.2", true)], &[]).services[0].clone()
                },
            ],
            ..snap(&[], &[])
        };
        let one = snap(&[("10.0.0.1", true)], &[]);
        let plan = snapshot(&one, NS, ME, &applied_cluster(&two));
        let deleted: Vec<(Kind, String)> = plan
            .writes
            .iter()
            .filter(|w| matches!(w, Write::Delete { .. }))
            .map(|w| (w.kind(), w.name()))
            .collect();
        assert_eq!(
            deleted,
            [
                (Kind::Service, "other".to_string()),
                (Kind::EndpointSlice, "other-v4-0".to_string()),
                (Kind::Endpoints, "other".to_string()),
            ]
        );
        assert_eq!(deleted.len(), plan.writes.len());
    }

    #[test]
    fn without_legacy_endpoints_ours_are_deleted_and_none_written_until_asked_again() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let slices_only = Snapshot {
            skip_legacy_endpoints: true,
            ..s.clone()
        };
        let plan = snapshot(&slices_only, NS, ME, &applied_cluster(&s));
        assert!(
            matches!(
                &plan.writes[..],
                [Write::Delete {
                    kind: Kind::Endpoints,
                    ..
                }]
            ),
            "{plan:?}"
        );
        // On an empty cluster: the Service and its slice, no Endpoints.
        let plan = snapshot(&slices_only, NS, ME, &Cluster::with_namespace(NS));
        assert_eq!(
            applies(&plan),
            [
                (Kind::Service, "istiod".to_string()),
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
            ]
        );
        // Someone else's Endpoints of that name are not ours to delete.
        let mut c = Cluster::with_namespace(NS);
        c.put(
            Kind::Endpoints,
            json!({"metadata": {"name": "istiod", "labels": {"owner": "someone"}}}),
        );
        let plan = snapshot(&slices_only, NS, ME, &c);
        assert!(
            plan.writes.iter().all(|w| w.kind() != Kind::Endpoints),
            "{plan:?}"
        );
        // Asked again: written again.
        let mut without = applied_cluster(&s);
        without.0.remove(&(Kind::Endpoints, "istiod".to_string()));
        let plan = snapshot(&s, NS, ME, &without);
        assert_eq!(applies(&plan), [(Kind::Endpoints, "istiod".to_string())]);
    }

    #[test]
    fn switching_to_headless_recreates_the_service() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let mut c = applied_cluster(&s);
        let mut headless = s.clone();
        headless.services[0].headless = true;
        // The server gave the live Service a cluster IP.
        let mut svc = serde_json::to_value(&*c.get(Kind::Service, "istiod").unwrap()).unwrap();
        svc["spec"]["clusterIP"] = "10.96.0.7".into();
        c.put(Kind::Service, svc);
        let plan = snapshot(&headless, NS, ME, &c);
        assert!(
            matches!(
                &plan.writes[..],
                [Write::Recreate {
                    kind: Kind::Service,
                    ..
                }]
            ),
            "{plan:?}"
        );
    }

    #[test]
    fn an_external_name_recreates_the_service_and_removes_our_slices_and_endpoints() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let mut c = applied_cluster(&s);
        let mut svc = serde_json::to_value(&*c.get(Kind::Service, "istiod").unwrap()).unwrap();
        svc["spec"]["clusterIP"] = "10.96.0.7".into();
        c.put(Kind::Service, svc);
        let mut alias = s.clone();
        alias.services[0].endpoints.clear();
        alias.services[0].external_name = "gw.example.com".into();
        let plan = snapshot(&alias, NS, ME, &c);
        let recreated: Vec<&Value> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Recreate { body, .. } => Some(body),
                _ => None,
            })
            .collect();
        assert_eq!(recreated.len(), 1, "{plan:?}");
        assert_eq!(recreated[0]["spec"]["type"], "ExternalName");
        assert_eq!(recreated[0]["spec"]["externalName"], "gw.example.com");
        let mut deleted: Vec<Kind> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect();
        deleted.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(deleted, [Kind::EndpointSlice, Kind::Endpoints], "{plan:?}");
        assert_eq!(plan.writes.len(), 3);
        // And back: addresses again recreate a ClusterIP Service with its slices and Endpoints.
        let mut c = applied_cluster(&alias);
        let back = snapshot(&s, NS, ME, &c);
        assert!(
            back.writes.iter().any(
                |w| matches!(w, Write::Recreate { body, .. } if body["spec"]["type"] == "ClusterIP")
            ),
            "{back:?}"
        );
        // Applied as it is, nothing to write.
        c = applied_cluster(&alias);
        let again = snapshot(&alias, NS, ME, &c);
        assert!(again.writes.is_empty(), "{again:?}");
    }

    #[test]
    fn a_malformed_snapshot_is_refused_whole() {
        let mut s = snap(&[("10.0.0.1", true)], &["app"]);
        s.services[0].endpoints[0].ip = "not-an-ip".into();
        let plan = snapshot(&s, NS, ME, &Cluster::with_namespace(NS));
        assert!(plan.writes.is_empty());
        assert!(plan.failures[0].message.contains("malformed"));
    }

    #[test]
    fn a_missing_mirror_namespace_fails_the_services_but_not_injection() {
        let s = snap(&[("10.0.0.1", true)], &["app"]);
        let mut c = Cluster::default();
        c.put(Kind::Namespace, json!({"metadata": {"name": "app"}}));
        let plan = snapshot(&s, NS, ME, &c);
        assert_eq!(applies(&plan), [(Kind::Namespace, "app".to_string())]);
        assert!(plan.failures[0].message.contains("does not exist"));
    }

    #[test]
    fn injection_labels_missing_namespaces_and_releases() {
        let s = snap(&[], &["app", "later"]);
        let mut c = Cluster::with_namespace(NS);
        c.put(Kind::Namespace, json!({"metadata": {"name": "app"}}));
        // Labelled by us earlier, no longer listed.
        c.put(
            Kind::Namespace,
            json!({"metadata": {"name": "old", "labels": {"istio-injection": "enabled", INJECTION_MARKER: "true"},
                   "managedFields": [{"manager": ME, "operation": "Apply", "fieldsV1":
                     {"f:metadata": {"f:labels": {"f:istio-injection": {}, "f:tether.io/managed-injection": {}}}}}]}}),
        );
        // Labelled by another agent (another field manager): not ours to release.
        c.put(
            Kind::Namespace,
            json!({"metadata": {"name": "theirs", "labels": {"istio-injection": "enabled", INJECTION_MARKER: "true"},
                   "managedFields": [{"manager": "tether-agent-2", "operation": "Apply", "fieldsV1":
                     {"f:metadata": {"f:labels": {"f:istio-injection": {}, "f:tether.io/managed-injection": {}}}}}]}}),
        );
        let plan = snapshot(&s, NS, ME, &c);
        let writes: Vec<(String, Value, bool)> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Apply {
                    kind: Kind::Namespace,
                    name,
                    body,
                    force,
                } => Some((name.clone(), body["metadata"]["labels"].clone(), *force)),
                _ => None,
            })
            .collect();
        assert_eq!(
            writes,
            [
                (
                    "app".to_string(),
                    json!({"istio-injection": "enabled", INJECTION_MARKER: "true"}),
                    false
                ),
                ("old".to_string(), Value::Null, false),
            ]
        );
        assert_eq!(plan.failures.len(), 1);
        assert_eq!(plan.failures[0].name, "later");
    }

    #[test]
    fn retire_deletes_what_is_managed_and_releases_labels() {
        let s = snap(&[("10.0.0.1", true)], &[]);
        let mut c = applied_cluster(&s);
        c.put(
            Kind::Service,
            json!({"metadata": {"name": "foreign"}, "spec": {}}),
        );
        let plan = retire(ME, &c);
        let mut deleted: Vec<(Kind, String)> = applies(&plan);
        deleted.sort();
        assert_eq!(
            deleted,
            [
                (Kind::Service, "istiod".to_string()),
                (Kind::EndpointSlice, "istiod-v4-0".to_string()),
                (Kind::Endpoints, "istiod".to_string()),
            ]
        );
    }
}
