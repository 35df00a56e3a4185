//! Property test (bounded number of cases): over random sequences of desired states, the agent's
//! decision to write ([`tether_agent::fields::in_effect`]) keeps every field it owns equal to the
//! desired state, field by field, including fields and lists that disappear; and when nothing changed
//! it decides to write nothing.
//!
//! The cluster is a model of server-side apply for the kinds the agent writes, with the API server's
//! list semantics for them (Service ports keyed by port and protocol; EndpointSlice endpoints and
//! ports, Endpoints subsets atomic; labels a granular map), owned fields recorded per manager in the
//! server's `FieldsV1` form, and other managers that add labels, edit fields the agent owns, or
//! remove its labels between states, as people and controllers do.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tether_agent::fields::in_effect;
use tether_agent::objects::{DesiredObject, INJECTION_MARKER, Kind, objects_for};
use tether_proto::v1::{Endpoint, Port, Service};

const AGENT: &str = "tether-agent";
const NS: &str = "istio-system";

/// One step of a path to a field: an object field, or a list element named by its key fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    F(String),
    K(String),
}

type Path = Vec<Seg>;

/// Keys of the keyed lists among the kinds' fields; every other list is atomic.
fn list_keys(kind: Kind, at: &[Seg]) -> Option<&'static [&'static str]> {
    match (kind, at) {
        (Kind::Service, [Seg::F(spec), Seg::F(ports)]) if spec == "spec" && ports == "ports" => {
            Some(&["port", "protocol"])
        }
        _ => None,
    }
}

fn key_of(element: &Value, keys: &[&str]) -> String {
    let m: Map<String, Value> = keys
        .iter()
        .map(|k| (k.to_string(), element[*k].clone()))
        .collect();
    Value::Object(m).to_string()
}

/// The field paths an applied configuration sets (what its manager owns afterwards). Element paths
/// name the element itself; leaves are scalars, atomic lists or empty objects.
fn fieldset(kind: Kind, config: &Value) -> BTreeSet<Path> {
    fn walk(kind: Kind, at: &mut Path, v: &Value, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    at.push(Seg::F(k.clone()));
                    walk(kind, at, child, out);
                    at.pop();
                }
            }
            Value::Array(items) => match list_keys(kind, at) {
                Some(keys) => {
                    for item in items {
                        at.push(Seg::K(key_of(item, keys)));
                        out.insert(at.clone());
                        walk(kind, at, item, out);
                        at.pop();
                    }
                }
                None => {
                    out.insert(at.clone());
                }
            },
            _ => {
                out.insert(at.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(kind, &mut Vec::new(), &identity_stripped(config), &mut out);
    out
}

fn identity_stripped(v: &Value) -> Value {
    let mut v = v.clone();
    let m = v.as_object_mut().unwrap();
    m.remove("apiVersion");
    m.remove("kind");
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("name");
        meta.remove("namespace");
    }
    v
}

/// The `FieldsV1` tree the API server records for a set of paths.
fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for p in paths {
        let mut node = &mut root;
        for seg in p {
            let key = match seg {
                Seg::F(f) => format!("f:{f}"),
                Seg::K(k) => format!("k:{k}"),
            };
            if matches!(seg, Seg::K(_)) {
                node[".".to_string()] = json!({}); // the list itself
            }
            node = node
                .as_object_mut()
                .unwrap()
                .entry(key)
                .or_insert_with(|| json!({}));
        }
        if matches!(p.last(), Some(Seg::K(_))) {
            node[".".to_string()] = json!({});
        }
    }
    root
}

fn get<'a>(v: &'a Value, kind: Kind, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        cur = match seg {
            Seg::F(f) => cur.get(f)?,
            Seg::K(k) => {
                let keys = list_keys(kind, &path[..i]).expect("keyed list");
                cur.as_array()?.iter().find(|e| key_of(e, keys) == *k)?
            }
        };
    }
    Some(cur)
}

/// Removes the field or element at `path` (nothing if absent).
fn remove(v: &mut Value, kind: Kind, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for (i, seg) in parent.iter().enumerate() {
        let next = match seg {
            Seg::F(f) => cur.get_mut(f),
            Seg::K(k) => {
                let keys = list_keys(kind, &parent[..i]).expect("keyed list");
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|e| key_of(e, keys) == *k))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Seg::F(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Seg::K(k) => {
            let keys = list_keys(kind, parent).expect("keyed list");
            if let Some(a) = cur.as_array_mut() {
                a.retain(|e| key_of(e, keys) != *k);
            }
        }
    }
}

/// Sets the value at `path`, creating objects and keyed elements on the way.
fn set(v: &mut Value, kind: Kind, path: &[Seg], value: Value) {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        cur = match seg {
            Seg::F(f) => {
                if !cur.is_object() {
                    *cur = json!({});
                }
                cur.as_object_mut()
                    .unwrap()
                    .entry(f.clone())
                    .or_insert(Value::Null)
            }
            Seg::K(k) => {
                let keys = list_keys(kind, &path[..i]).expect("keyed list");
                if !cur.is_array() {
                    *cur = json!([]);
                }
                let list = cur.as_array_mut().unwrap();
                let at = match list.iter().position(|e| key_of(e, keys) == *k) {
                    Some(at) => at,
                    None => {
                        let key: Value = serde_json::from_str(k).unwrap();
                        list.push(key);
                        list.len() - 1
                    }
                };
                &mut list[at]
            }
        };
    }
    if !value.is_null() || !cur.is_object() {
        *cur = value;
    }
}

/// One stored object under the model of server-side apply.
#[derive(Clone, Debug)]
struct Stored {
    kind: Kind,
    value: Value,
    owners: BTreeMap<String, BTreeSet<Path>>,
}

impl Stored {
    fn new(kind: Kind, name: &str) -> Self {
        let mut value = json!({"metadata": {"name": name, "namespace": NS}});
        if kind == Kind::Service {
            // Server defaults nobody owns.
            value["spec"] = json!({"clusterIP": "10.96.0.10", "sessionAffinity": "None"});
        }
        Stored {
            kind,
            value,
            owners: BTreeMap::new(),
        }
    }

    fn owned_elsewhere(&self, manager: &str, p: &Path) -> bool {
        self.owners
            .iter()
            .any(|(m, ps)| m != manager && ps.iter().any(|q| q.starts_with(p)))
    }

    /// Server-side apply with force, as the agent does.
    fn apply(&mut self, manager: &str, config: &Value) {
        let new = fieldset(self.kind, config);
        let old = self.owners.remove(manager).unwrap_or_default();
        // Fields this manager applied before and leaves out now go, unless another owns them.
        let mut gone: Vec<&Path> = old.difference(&new).collect();
        gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in gone {
            if !self.owned_elsewhere(manager, p) {
                remove(&mut self.value, self.kind, p);
            }
        }
        let stripped = identity_stripped(config);
        for p in &new {
            let leaf = get(&stripped, self.kind, p).cloned().unwrap();
            let element = matches!(p.last(), Some(Seg::K(_)));
            set(
                &mut self.value,
                self.kind,
                p,
                if element { Value::Null } else { leaf },
            );
        }
        // Forced: the fields are this manager's alone now.
        for ps in self.owners.values_mut() {
            ps.retain(|q| !new.contains(q));
        }
        self.owners.insert(manager.to_string(), new);
    }

    /// Another manager writes one field (an update: it takes the field over).
    fn update(&mut self, manager: &str, path: Path, value: Value) {
        for ps in self.owners.values_mut() {
            ps.retain(|q| !q.starts_with(&path));
        }
        set(&mut self.value, self.kind, &path, value);
        self.owners
            .entry(manager.to_string())
            .or_default()
            .insert(path);
    }

    /// Another manager removes one field (`kubectl label x-`): gone for every owner.
    fn delete_field(&mut self, path: &Path) {
        remove(&mut self.value, self.kind, path);
        for ps in self.owners.values_mut() {
            ps.retain(|q| !q.starts_with(path));
        }
    }

    /// The object as a watch delivers it: value and managedFields.
    fn live(&self) -> Value {
        let mut v = self.value.clone();
        v["metadata"]["managedFields"] = self
            .owners
            .iter()
            .filter(|(_, ps)| !ps.is_empty())
            .map(|(m, ps)| {
                let operation = if m == AGENT { "Apply" } else { "Update" };
                json!({"manager": m, "operation": operation, "fieldsV1": fields_v1(ps)})
            })
            .collect::<Vec<_>>()
            .into();
        v
    }

    /// What the agent owns equals `desired`, field by field.
    fn agent_fields_equal(&self, desired: &Value) -> Result<(), String> {
        let want = fieldset(self.kind, desired);
        let have = self.owners.get(AGENT).cloned().unwrap_or_default();
        if want != have {
            return Err(format!(
                "owned fields differ:\n want {want:?}\n have {have:?}\n object {}",
                self.value
            ));
        }
        let stripped = identity_stripped(desired);
        for p in &want {
            if matches!(p.last(), Some(Seg::K(_))) {
                continue;
            }
            let (d, l) = (get(&stripped, self.kind, p), get(&self.value, self.kind, p));
            if d != l {
                return Err(format!("{p:?}: desired {d:?}, stored {l:?}"));
            }
        }
        Ok(())
    }
}

/// A disturbance between two states, by someone other than the agent.
#[derive(Clone, Debug)]
enum Disturb {
    /// A label of someone else's on every object.
    ForeignLabel(String),
    /// A controller or a person edits the first field the agent owns on one object.
    EditOwnedField(usize),
    /// `kubectl label <obj> <label>-` of a label the agent set (not its managed-by label, without
    /// which the object would be foreign and left alone).
    DropOwnLabel(usize),
}

fn service(name: &'static str) -> impl Strategy<Value = Service> {
    let port = (0usize..3, any::<bool>(), any::<bool>()).prop_map(|(i, app, target)| Port {
        name: format!("p{i}"),
        protocol: "TCP".into(),
        port: 15010 + i as i32,
        app_protocol: if app { "grpc".into() } else { String::new() },
        target_port: if target { 16010 + i as i32 } else { 0 },
    });
    (
        proptest::collection::vec(port, 1..3),
        proptest::collection::vec((0u8..6, any::<bool>(), any::<bool>(), any::<bool>()), 0..6),
        any::<bool>(),
    )
        .prop_map(move |(mut ports, eps, resolved)| {
            ports.sort_by(|a, b| a.name.cmp(&b.name));
            ports.dedup_by(|a, b| a.name == b.name);
            let n = ports.len();
            let mut endpoints: Vec<Endpoint> = eps
                .into_iter()
                .map(|(host, v6, ready, terminating)| Endpoint {
                    ip: if v6 {
                        format!("fd00::{host}")
                    } else {
                        format!("10.0.0.{host}")
                    },
                    ready,
                    serving: ready || terminating,
                    terminating,
                    pod_name: format!("pod-{host}"),
                    zone: if host % 3 == 0 {
                        "z1".into()
                    } else {
                        String::new()
                    },
                    target_ports: (0..n)
                        .map(|i| {
                            if resolved || i == 0 {
                                15010 + i as i32
                            } else {
                                0
                            }
                        })
                        .collect(),
                })
                .collect();
            endpoints.sort_by(|a, b| a.ip.cmp(&b.ip));
            endpoints.dedup_by(|a, b| a.ip == b.ip);
            // (ExternalName mirrors recreate the Service; plan.rs's unit tests cover them.)
            Service {
                name: name.into(),
                headless: false,
                ports,
                endpoints,
                external_name: String::new(),
            }
        })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![Just("istio-injection"), Just("istio.io/rev"), Just("team")],
        prop_oneof![Just("enabled"), Just("canary"), Just("disabled")],
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
}

/// The namespace body the agent applies for injection labels (see `plan::injection`).
fn namespace_body(labels: &BTreeMap<String, String>) -> DesiredObject {
    let mut wanted = labels.clone();
    wanted.insert(INJECTION_MARKER.into(), "true".into());
    DesiredObject {
        kind: Kind::Namespace,
        name: "app".into(),
        service: String::new(),
        body: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": wanted}}),
    }
}

fn state() -> impl Strategy<Value = (Service, BTreeMap<String, String>)> {
    (service("istiod"), labels())
}

fn disturb() -> impl Strategy<Value = Vec<Disturb>> {
    proptest::collection::vec(
        prop_oneof![
            "[a-z]{1,6}".prop_map(Disturb::ForeignLabel),
            (0usize..8).prop_map(Disturb::EditOwnedField),
            (0usize..8).prop_map(Disturb::DropOwnLabel),
        ],
        0..3,
    )
}

/// Applies the disturbances to the stored objects (in name order).
fn disturb_all(cluster: &mut BTreeMap<(Kind, String), Stored>, ds: &[Disturb]) {
    let keys: Vec<(Kind, String)> = cluster.keys().cloned().collect();
    if keys.is_empty() {
        return;
    }
    for d in ds {
        match d {
            Disturb::ForeignLabel(l) => {
                for s in cluster.values_mut() {
                    let path = vec![
                        Seg::F("metadata".into()),
                        Seg::F("labels".into()),
                        Seg::F(format!("example.com/{l}")),
                    ];
                    s.update("someone", path, "x".into());
                }
            }
            Disturb::EditOwnedField(i) => {
                let s = cluster.get_mut(&keys[i % keys.len()]).unwrap();
                let owned: Vec<Path> = s
                    .owners
                    .get(AGENT)
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| !matches!(p.last(), Some(Seg::K(_))))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(p) = owned.first() {
                    s.update("kubectl-edit", p.clone(), json!("edited"));
                }
            }
            Disturb::DropOwnLabel(i) => {
                let s = cluster.get_mut(&keys[i % keys.len()]).unwrap();
                let ours: Vec<Path> = s
                    .owners
                    .get(AGENT)
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p.len() == 3 && p[1] == Seg::F("labels".into()))
                            .filter(|p| p[2] != Seg::F("app.kubernetes.io/managed-by".into()))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(p) = ours.last() {
                    s.delete_field(p);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn owned_fields_follow_the_desired_state_and_nothing_is_written_when_nothing_changed(
        steps in proptest::collection::vec((state(), disturb()), 1..8)
    ) {
        let mut cluster: BTreeMap<(Kind, String), Stored> = BTreeMap::new();
        for ((svc, injection), disturbances) in steps {
            disturb_all(&mut cluster, &disturbances);
            let mut desired: Vec<DesiredObject> = objects_for(NS, &svc, true);
            desired.push(namespace_body(&injection));
            // Objects no longer desired are deleted by the agent's garbage collection.
            let names: BTreeSet<(Kind, String)> =
                desired.iter().map(|o| (o.kind, o.name.clone())).collect();
            cluster.retain(|k, _| names.contains(k));
            for obj in &desired {
                let stored = cluster
                    .entry((obj.kind, obj.name.clone()))
                    .or_insert_with(|| Stored::new(obj.kind, &obj.name));
                if !in_effect(&stored.live(), &obj.body, AGENT) {
                    stored.apply(AGENT, &obj.body);
                }
                let key = (obj.kind, obj.name.clone());
                prop_assert!(
                    cluster[&key].agent_fields_equal(&obj.body).is_ok(),
                    "{:?} {}: {}",
                    obj.kind,
                    obj.name,
                    cluster[&key].agent_fields_equal(&obj.body).unwrap_err()
                );
                prop_assert!(
                    in_effect(&cluster[&key].live(), &obj.body, AGENT),
                    "{:?} {} would be written again with nothing changed",
                    obj.kind,
                    obj.name
                );
            }
        }
    }
}
