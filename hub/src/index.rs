//! The hub's index: pure, synchronous state. Pods, Services and RemoteClusters go in; out comes, per
//! remote, the desired state on a `watch` channel (latest wins, no-op updates dropped). No tonic, no I/O.
//!
//! ```text
//!  Pod/Service events ──► apply/delete/reset ──► recompute every remote ─┐
//!  RemoteCluster events ─► apply/delete/reset ──► recompute that remote ─┴─► watch::Sender<Arc<Desired>>
//! ```
//! A spec that cannot be computed (unknown service, bad selector...) keeps the remote on its last good
//! spec, still following pod changes, and carries the errors for the `SpecValid` condition.

use crate::crd::{RemoteCluster, RemoteClusterSpec};
use crate::snapshot::{CentralService, PodInfo, build};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tether_proto::v1::Snapshot;
use tokio::sync::watch;

/// What one remote should look like, as published to its stream.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// None until the remote's spec has computed once.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Why the current spec is not in effect; empty when it is.
    pub errors: Vec<String>,
    /// The RemoteCluster is being deleted: the agent must remove what it manages.
    pub retire: bool,
    /// `metadata.generation` of the spec these errors/this snapshot answer.
    pub generation: i64,
    /// When the index computed this state (the central change that caused it was seen just before).
    /// Not part of equality: it measures propagation, it is not state.
    pub changed_at: Option<std::time::Instant>,
}

impl PartialEq for Desired {
    fn eq(&self, other: &Self) -> bool {
        self.snapshot == other.snapshot
            && self.errors == other.errors
            && self.retire == other.retire
            && self.generation == other.generation
    }
}

impl Desired {
    pub fn version(&self) -> &str {
        self.snapshot
            .as_ref()
            .map(|s| s.version.as_str())
            .unwrap_or_default()
    }

    pub fn endpoints(&self) -> usize {
        self.snapshot
            .as_ref()
            .map(|s| s.services.iter().map(|svc| svc.endpoints.len()).sum())
            .unwrap_or(0)
    }
}

/// Settings that apply to every remote.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Remote namespace for the mirrored Services (usually the same name as the central one).
    pub remote_namespace: String,
    /// Services mirrored when a spec lists none.
    pub services: Vec<String>,
    /// Injection labels when a spec gives none.
    pub injection_labels: BTreeMap<String, String>,
}

struct Remote {
    spec: RemoteClusterSpec,
    generation: i64,
    deleting: bool,
    /// The last spec that computed without errors.
    last_good: Option<RemoteClusterSpec>,
    tx: watch::Sender<Arc<Desired>>,
}

/// Computed snapshots by spec (JSON) within one recompute pass.
type Memo = HashMap<String, Result<Arc<Snapshot>, Vec<String>>>;

/// A cluster whose RemoteCluster was released before its agent acknowledged Retire.
struct Retired {
    since: k8s_openapi::jiff::Timestamp,
    /// Always `retire`: a returning agent is told to remove what it manages.
    tx: watch::Sender<Arc<Desired>>,
}

pub struct Index {
    defaults: Defaults,
    /// Which watches delivered their first list: [remotes, pods, services, retirements].
    synced: [bool; 4],
    pods: HashMap<String, PodInfo>,
    services: HashMap<String, CentralService>,
    remotes: HashMap<String, Remote>,
    retired: HashMap<String, Retired>,
    /// Counts the watch events applied (see [`Index::revision`]).
    revision: u64,
}

impl Index {
    /// Moves with every watch event applied, including a RemoteCluster's own status: a reader that
    /// saw the same revision saw the same central state.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Called by the watch feed after it applied an event.
    pub fn note_change(&mut self) {
        self.revision += 1;
    }

    pub fn new(defaults: Defaults) -> Self {
        Self {
            defaults,
            synced: [false; 4],
            pods: HashMap::new(),
            services: HashMap::new(),
            remotes: HashMap::new(),
            retired: HashMap::new(),
            revision: 0,
        }
    }

    /// True once every watch has delivered its first list: before that, "no such RemoteCluster" or
    /// "no endpoints" may only mean "not listed yet".
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    // --- pods and services: every remote may depend on them ---

    pub fn apply_pod(&mut self, pod: &Pod) {
        let info = PodInfo::from_pod(pod);
        if self.pods.get(&pod.name_any()) != Some(&info) {
            self.pods.insert(pod.name_any(), info);
            self.recompute_all();
        }
    }

    pub fn delete_pod(&mut self, name: &str) {
        if self.pods.remove(name).is_some() {
            self.recompute_all();
        }
    }

    pub fn reset_pods(&mut self, pods: &[Pod]) {
        self.synced[1] = true;
        self.pods = pods
            .iter()
            .map(|p| (p.name_any(), PodInfo::from_pod(p)))
            .collect();
        self.recompute_all();
    }

    pub fn apply_service(&mut self, svc: &Service) {
        let info = CentralService::from_service(svc);
        if self.services.get(&svc.name_any()) != Some(&info) {
            self.services.insert(svc.name_any(), info);
            self.recompute_all();
        }
    }

    pub fn delete_service(&mut self, name: &str) {
        if self.services.remove(name).is_some() {
            self.recompute_all();
        }
    }

    pub fn reset_services(&mut self, services: &[Service]) {
        self.synced[2] = true;
        self.services = services
            .iter()
            .map(|s| (s.name_any(), CentralService::from_service(s)))
            .collect();
        self.recompute_all();
    }

    // --- remotes ---

    pub fn apply_remote(&mut self, rc: &RemoteCluster) {
        let name = rc.name_any();
        let generation = rc.metadata.generation.unwrap_or_default();
        let deleting = rc.metadata.deletion_timestamp.is_some();
        let remote = self.remotes.entry(name.clone()).or_insert_with(|| Remote {
            spec: rc.spec.clone(),
            generation,
            deleting,
            last_good: None,
            tx: watch::Sender::new(Arc::new(Desired::default())),
        });
        remote.spec = rc.spec.clone();
        remote.generation = generation;
        remote.deleting = deleting;
        self.recompute(&name);
    }

    /// The RemoteCluster is gone: its channel closes, which ends its streams.
    pub fn delete_remote(&mut self, name: &str) {
        self.remotes.remove(name);
    }

    pub fn reset_remotes(&mut self, rcs: &[RemoteCluster]) {
        self.synced[0] = true;
        let keep: std::collections::HashSet<String> = rcs.iter().map(|r| r.name_any()).collect();
        self.remotes.retain(|name, _| keep.contains(name));
        for rc in rcs {
            self.apply_remote(rc);
        }
    }

    // --- retirements remembered (the ConfigMap of `crate::retire`) ---

    pub fn apply_retired(&mut self, cm: &ConfigMap) {
        self.set_retired(Some(cm));
    }

    pub fn delete_retired(&mut self, _name: &str) {
        self.set_retired(None);
    }

    pub fn reset_retired(&mut self, cms: &[ConfigMap]) {
        self.synced[3] = true;
        self.set_retired(cms.first());
    }

    fn set_retired(&mut self, cm: Option<&ConfigMap>) {
        let entries = cm.map(crate::retire::parse).unwrap_or_default();
        self.retired.retain(|name, _| entries.contains_key(name));
        for (name, since) in entries {
            self.retired
                .entry(name)
                .or_insert_with(|| Retired {
                    since,
                    tx: watch::Sender::new(Arc::new(Desired {
                        retire: true,
                        ..Default::default()
                    })),
                })
                .since = since;
        }
    }

    /// Remembered retirements: (cluster, since).
    pub fn retired(&self) -> Vec<(String, k8s_openapi::jiff::Timestamp)> {
        self.retired
            .iter()
            .map(|(name, r)| (name.clone(), r.since))
            .collect()
    }

    /// The desired-state channel of a remote: its RemoteCluster's, or, for a cluster whose
    /// RemoteCluster was released while its agent was away, one that says Retire.
    pub fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<Arc<Desired>>> {
        self.remotes
            .get(cluster)
            .map(|r| r.tx.subscribe())
            .or_else(|| self.retired.get(cluster).map(|r| r.tx.subscribe()))
    }

    pub fn desired(&self, cluster: &str) -> Option<Arc<Desired>> {
        self.remotes.get(cluster).map(|r| r.tx.borrow().clone())
    }

    pub fn remote_names(&self) -> Vec<String> {
        self.remotes.keys().cloned().collect()
    }

    fn recompute_all(&mut self) {
        // Remotes with the same spec share one computation (the common case: all on the defaults).
        let mut memo = Memo::new();
        let names: Vec<String> = self.remotes.keys().cloned().collect();
        for name in names {
            self.recompute_with(&name, &mut memo);
        }
    }

    fn recompute(&mut self, name: &str) {
        self.recompute_with(name, &mut HashMap::new());
    }

    fn recompute_with(&mut self, name: &str, memo: &mut Memo) {
        let Some(remote) = self.remotes.get(name) else {
            return;
        };
        let mut compute = |spec: &RemoteClusterSpec| {
            let key = serde_json::to_string(spec).expect("spec serializes");
            memo.entry(key)
                .or_insert_with(|| {
                    build(spec, &self.defaults, &self.services, &self.pods).map(Arc::new)
                })
                .clone()
        };
        let (snapshot, errors, good) = match compute(&remote.spec) {
            Ok(snap) => (Some(snap), Vec::new(), Some(remote.spec.clone())),
            Err(errors) => {
                let fallback = remote
                    .last_good
                    .as_ref()
                    .and_then(|spec| compute(spec).ok());
                (fallback, errors, None)
            }
        };
        let desired = Desired {
            snapshot,
            errors,
            retire: remote.deleting,
            generation: remote.generation,
            changed_at: Some(std::time::Instant::now()),
        };
        let remote = self.remotes.get_mut(name).expect("present above");
        if good.is_some() {
            remote.last_good = good;
        }
        remote.tx.send_if_modified(|current| {
            if **current == desired {
                return false;
            }
            *current = Arc::new(desired);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceMirror;
    use crate::snapshot::tests::{mk_pod, mk_service};

    fn defaults() -> Defaults {
        Defaults {
            remote_namespace: "istio-system".into(),
            services: vec!["istiod".into()],
            injection_labels: [("istio-injection".to_string(), "enabled".to_string())].into(),
        }
    }

    fn mk_remote(name: &str, spec: RemoteClusterSpec) -> RemoteCluster {
        let mut rc = RemoteCluster::new(name, spec);
        rc.metadata.generation = Some(1);
        rc
    }

    fn ready_index() -> Index {
        let mut index = Index::new(defaults());
        index.apply_service(&mk_service(
            "istiod",
            &[("app", "istiod")],
            &[("grpc-xds", 15010, "grpc-xds")],
        ));
        index.apply_pod(&mk_pod(
            "istiod-a",
            "istiod",
            &["10.0.0.1"],
            true,
            &[("grpc-xds", 15010)],
        ));
        index
    }

    #[test]
    fn synced_only_after_every_watch_listed() {
        let mut index = Index::new(defaults());
        index.reset_remotes(&[]);
        index.reset_pods(&[]);
        index.reset_services(&[]);
        assert!(!index.is_synced());
        index.reset_retired(&[]);
        assert!(index.is_synced());
    }

    #[test]
    fn a_remembered_retirement_tells_a_returning_agent_to_retire_until_forgotten() {
        let mut index = ready_index();
        assert!(index.subscribe("gone").is_none());
        let cm = |data: serde_json::Value| -> ConfigMap {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "tether-retired"}, "data": data}),
            )
            .unwrap()
        };
        index.reset_retired(&[cm(serde_json::json!({"gone": "2026-11-25T10:00:00Z"}))]);
        let rx = index
            .subscribe("gone")
            .expect("a channel for the returning agent");
        assert!(rx.borrow().retire && rx.borrow().snapshot.is_none());
        // A RemoteCluster of that name again wins.
        index.apply_remote(&mk_remote("gone", Default::default()));
        assert!(!index.subscribe("gone").unwrap().borrow().retire);
        index.delete_remote("gone");
        index.apply_retired(&cm(serde_json::json!({})));
        assert!(index.subscribe("gone").is_none());
        assert!(rx.has_changed().is_err(), "the retire channel closed");
    }

    #[test]
    fn unknown_cluster_has_no_channel() {
        assert!(ready_index().subscribe("nobody").is_none());
    }

    #[test]
    fn pod_change_reaches_every_remote_and_noop_is_dropped() {
        let mut index = ready_index();
        index.apply_remote(&mk_remote("r1", Default::default()));
        index.apply_remote(&mk_remote("r2", Default::default()));
        let mut rx1 = index.subscribe("r1").unwrap();
        let mut rx2 = index.subscribe("r2").unwrap();
        rx1.mark_unchanged();
        rx2.mark_unchanged();
        let v1 = rx1.borrow().version().to_string();

        // Same pod again: nothing to send.
        index.apply_pod(&mk_pod(
            "istiod-a",
            "istiod",
            &["10.0.0.1"],
            true,
            &[("grpc-xds", 15010)],
        ));
        assert!(!rx1.has_changed().unwrap());

        index.apply_pod(&mk_pod(
            "istiod-b",
            "istiod",
            &["10.0.0.2"],
            true,
            &[("grpc-xds", 15010)],
        ));
        assert!(rx1.has_changed().unwrap() && rx2.has_changed().unwrap());
        let d = rx1.borrow_and_update().clone();
        assert_ne!(d.version(), v1);
        assert_eq!(d.endpoints(), 2);
        assert_eq!(
            rx2.borrow().version(),
            d.version(),
            "same spec, same state, same version"
        );
    }

    #[test]
    fn invalid_spec_keeps_last_good_state_and_reports_why() {
        let mut index = ready_index();
        index.apply_remote(&mk_remote("r1", Default::default()));
        let good = index.desired("r1").unwrap();
        assert!(good.errors.is_empty() && good.snapshot.is_some());

        let bad = RemoteClusterSpec {
            services: vec![ServiceMirror {
                name: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        index.apply_remote(&mk_remote("r1", bad));
        let d = index.desired("r1").unwrap();
        assert_eq!(d.version(), good.version(), "previous state kept");
        assert!(d.errors[0].contains("nope"), "{:?}", d.errors);

        // The kept state still follows pods.
        index.apply_pod(&mk_pod(
            "istiod-b",
            "istiod",
            &["10.0.0.2"],
            true,
            &[("grpc-xds", 15010)],
        ));
        assert_eq!(index.desired("r1").unwrap().endpoints(), 2);
    }

    #[test]
    fn deleting_remote_asks_for_retire_and_delete_closes_channel() {
        let mut index = ready_index();
        index.apply_remote(&mk_remote("r1", Default::default()));
        let rx = index.subscribe("r1").unwrap();
        let mut rc = mk_remote("r1", Default::default());
        rc.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        index.apply_remote(&rc);
        assert!(rx.borrow().retire);
        index.delete_remote("r1");
        assert!(rx.has_changed().is_err(), "sender dropped");
    }

    #[test]
    fn reset_drops_remotes_that_are_gone() {
        let mut index = ready_index();
        index.apply_remote(&mk_remote("r1", Default::default()));
        index.apply_remote(&mk_remote("r2", Default::default()));
        index.reset_remotes(&[mk_remote("r2", Default::default())]);
        assert_eq!(index.remote_names(), ["r2"]);
    }
}
