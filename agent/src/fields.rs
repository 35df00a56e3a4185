//! Would a server-side apply change this object? Pure, from the object's own field ownership.
//!
//! An apply sets every field of the applied configuration *and removes every field the same manager
//! applied before but leaves out now*. So "nothing to write" needs two things: every desired field
//! has its value in the live object, and the fields this manager owns (its `managedFields` entry,
//! operation `Apply`) are exactly the desired ones. Checking only the first misses a field or list
//! that disappears (an Endpoints subset's `notReadyAddresses`, a port's `appProtocol`, a label),
//! which then stays on the remote forever while the agent reports success.
//!
//! The owned set is the API server's `FieldsV1` tree: `f:<field>` for an object field, `k:<json>`
//! for an element of a list keyed by some of its fields, `v:<json>` for a set element, `.` for the
//! element itself. A leaf (`{}`) holding an object or a list means the whole value is atomic: it is
//! compared whole, and replaced whole by an apply.

use serde_json::{Map, Value};

/// The fields `manager` owns through server-side apply on the object's main resource (not on a
/// subresource such as status), as a `FieldsV1` tree; None when it owns none.
pub fn owned<'a>(object: &'a Value, manager: &str) -> Option<&'a Value> {
    object
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .find(|e| {
            e["manager"] == manager
                && e["operation"] == "Apply"
                && e.get("subresource")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })
        .and_then(|e| e.get("fieldsV1"))
}

/// True when applying `desired` as `manager` would leave `live` as it is (see the module docs).
/// `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` identify the object and are not
/// fields anyone owns.
pub fn in_effect(live: &Value, desired: &Value, manager: &str) -> bool {
    let empty = Value::Object(Map::new());
    let owned = owned(live, manager).unwrap_or(&empty);
    match identity_stripped(desired) {
        // The object itself is never atomic, even when nothing of it is owned or desired.
        Value::Object(d) => same_fields(&d, live, owned),
        other => same(&other, live, owned),
    }
}

fn identity_stripped(desired: &Value) -> Value {
    let mut d = desired.clone();
    if let Some(m) = d.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    d
}

/// The children of a `FieldsV1` node other than `.` (the node itself).
fn children(owned: &Value) -> impl Iterator<Item = (&String, &Value)> {
    owned
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != ".")
}

/// `desired` equals `live` on exactly the fields `owned` names, and `owned` names exactly the
/// fields of `desired`.
fn same(desired: &Value, live: &Value, owned: &Value) -> bool {
    let atomic = children(owned).next().is_none();
    match desired {
        Value::Object(d) if !atomic => same_fields(d, live, owned),
        Value::Array(d) if !atomic => {
            let Some(l) = live.as_array() else {
                return false;
            };
            let elements: Vec<(&String, &Value)> = children(owned).collect();
            elements.len() == d.len()
                && elements.iter().all(|(key, node)| {
                    let (Some(de), Some(le)) = (element(d, key), element(l, key)) else {
                        return false;
                    };
                    same(de, le, node)
                })
        }
        // A scalar, or an atomic object or list: compared whole. An empty desired object or list
        // is owned as a leaf too.
        _ => desired == live,
    }
}

/// The fields `owned` names are exactly those of `desired`, each the same in `live`.
fn same_fields(desired: &Map<String, Value>, live: &Value, owned: &Value) -> bool {
    let mut count = 0;
    for (key, node) in children(owned) {
        let Some(name) = key.strip_prefix("f:") else {
            return false;
        };
        count += 1;
        match (desired.get(name), live.get(name)) {
            (Some(d), Some(l)) if same(d, l, node) => {}
            _ => return false,
        }
    }
    count == desired.len()
}

/// The element of `list` that a `FieldsV1` list key (`k:{..}` or `v:<value>`) names.
fn element<'a>(list: &'a [Value], key: &str) -> Option<&'a Value> {
    if let Some(fields) = key.strip_prefix("k:") {
        let fields: Map<String, Value> = serde_json::from_str(fields).ok()?;
        list.iter()
            .find(|e| fields.iter().all(|(k, v)| e.get(k) == Some(v)))
    } else if let Some(value) = key.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        list.iter().find(|e| **e == value)
    } else {
        // `i:<index>` (positional lists) is not used by the kinds the agent writes.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ME: &str = "tether-agent";

    fn with_owned(mut object: Value, fields: Value) -> Value {
        object["metadata"]["managedFields"] = json!([
            {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
            {"manager": ME, "operation": "Apply", "fieldsV1": fields},
        ]);
        object
    }

    fn endpoints(subsets: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Endpoints",
               "metadata": {"name": "istiod", "namespace": "ns", "labels": {"a": "1"}},
               "subsets": subsets})
    }

    fn endpoints_fields() -> Value {
        json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:subsets": {}})
    }

    #[test]
    fn live_equal_to_desired_on_owned_fields_needs_no_write() {
        let subsets = json!([{"addresses": [{"ip": "10.0.0.1"}]}]);
        let mut live = with_owned(endpoints(subsets.clone()), endpoints_fields());
        // Fields others own or the server set do not matter.
        live["metadata"]["labels"]["team"] = "x".into();
        live["metadata"]["uid"] = "u".into();
        assert!(in_effect(&live, &endpoints(subsets), ME));
    }

    #[test]
    fn an_atomic_list_is_compared_whole_so_a_vanished_inner_list_is_a_change() {
        let live = with_owned(
            endpoints(
                json!([{"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.3"}]}]),
            ),
            endpoints_fields(),
        );
        let desired = endpoints(json!([{"addresses": [{"ip": "10.0.0.1"}]}]));
        assert!(!in_effect(&live, &desired, ME));
    }

    #[test]
    fn an_owned_field_left_out_of_desired_is_a_change() {
        let live = with_owned(
            endpoints(json!([{"addresses": [{"ip": "10.0.0.1"}]}])),
            endpoints_fields(),
        );
        let mut desired = endpoints(Value::Null);
        desired.as_object_mut().unwrap().remove("subsets");
        assert!(!in_effect(&live, &desired, ME));
    }

    #[test]
    fn keyed_list_elements_match_by_key_and_a_vanished_field_is_a_change() {
        let port = |app: Option<&str>| {
            let mut p =
                json!({"name": "grpc", "port": 15010, "protocol": "TCP", "targetPort": 15010});
            if let Some(a) = app {
                p["appProtocol"] = a.into();
            }
            p
        };
        let fields = |app: bool| {
            let mut f =
                json!({".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}});
            if app {
                f["f:appProtocol"] = json!({});
            }
            json!({"f:spec": {"f:type": {}, "f:ports": {"k:{\"port\":15010,\"protocol\":\"TCP\"}": f}}})
        };
        let svc = |p: Value| json!({"metadata": {"name": "istiod"}, "spec": {"type": "ClusterIP", "ports": [p]}});
        let stored = |p: Value, owned: Value| {
            let mut live = with_owned(svc(p), owned);
            live["spec"]["clusterIP"] = "10.96.0.9".into(); // the server's, not ours
            live
        };
        let live = stored(port(Some("grpc")), fields(true));
        assert!(in_effect(&live, &svc(port(Some("grpc"))), ME));
        assert!(
            !in_effect(&live, &svc(port(None)), ME),
            "appProtocol dropped"
        );
        let live_after = stored(port(None), fields(false));
        assert!(in_effect(&live_after, &svc(port(None)), ME));
        // A port someone else added is not ours; one of ours that is missing is.
        let mut extra = live_after.clone();
        extra["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"port": 1, "protocol": "TCP"}));
        assert!(in_effect(&extra, &svc(port(None)), ME));
        let mut missing = live_after;
        missing["spec"]["ports"] = json!([]);
        assert!(!in_effect(&missing, &svc(port(None)), ME));
    }

    #[test]
    fn a_label_we_applied_and_no_longer_want_is_a_change() {
        let ns = |labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": labels}});
        let live = with_owned(
            ns(json!({"istio.io/rev": "canary", "istio-injection": "disabled"})),
            json!({"f:metadata": {"f:labels": {"f:istio.io/rev": {}, "f:istio-injection": {}}}}),
        );
        assert!(!in_effect(
            &live,
            &ns(json!({"istio.io/rev": "canary"})),
            ME
        ));
        assert!(in_effect(
            &live,
            &ns(json!({"istio.io/rev": "canary", "istio-injection": "disabled"})),
            ME
        ));
        // Releasing everything: nothing desired, something owned.
        let release = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}});
        assert!(!in_effect(&live, &release, ME));
        let not_mine = ns(json!({"istio-injection": "enabled"}));
        assert!(
            in_effect(&not_mine, &release, ME),
            "nothing owned, nothing desired"
        );
    }

    #[test]
    fn without_ownership_the_apply_is_needed_even_when_values_match() {
        let subsets = json!([{"addresses": [{"ip": "10.0.0.1"}]}]);
        let live = endpoints(subsets.clone());
        assert!(!in_effect(&live, &endpoints(subsets), ME));
    }

    #[test]
    fn only_our_apply_entry_on_the_main_resource_counts() {
        let live = json!({"metadata": {"managedFields": [
            {"manager": ME, "operation": "Update", "fieldsV1": {"f:a": {}}},
            {"manager": ME, "operation": "Apply", "subresource": "status", "fieldsV1": {"f:b": {}}},
            {"manager": "other", "operation": "Apply", "fieldsV1": {"f:c": {}}},
            {"manager": ME, "operation": "Apply", "fieldsV1": {"f:d": {}}},
        ]}});
        assert_eq!(owned(&live, ME), Some(&json!({"f:d": {}})));
    }
}
