//! Snapshot versions: a hash of the content, so the same state has the same version across hub restarts
//! and replicas, and an agent can tell "nothing changed" without comparing objects.

use crate::v1::Snapshot;
use prost::Message;
use sha2::{Digest, Sha256};

/// Version of a snapshot's content (`version` and `nonce` excluded): 16 hex digits of SHA-256 over the
/// protobuf encoding. Encoding is deterministic because maps are BTreeMaps and the builder sorts every
/// list, so callers must pass snapshots built in canonical order.
pub fn of(snapshot: &Snapshot) -> String {
    let content = Snapshot {
        version: String::new(),
        nonce: String::new(),
        ..snapshot.clone()
    };
    let digest = Sha256::digest(content.encode_to_vec());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Injection, Service};

    fn snap(ns: &str) -> Snapshot {
        Snapshot {
            namespace: ns.into(),
            services: vec![Service {
                name: "istiod".into(),
                ..Default::default()
            }],
            injection: Some(Injection {
                namespaces: vec!["a".into(), "b".into()],
                labels: [("istio-injection".to_string(), "enabled".to_string())].into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn version_ignores_nonce_and_previous_version() {
        let a = snap("istio-system");
        let b = Snapshot {
            nonce: "7".into(),
            version: "old".into(),
            ..a.clone()
        };
        assert_eq!(of(&a), of(&b));
        assert_eq!(of(&a).len(), 16);
    }

    #[test]
    fn version_changes_with_content() {
        assert_ne!(of(&snap("istio-system")), of(&snap("other")));
    }
}
