//! The hub's index: pure, synchronous state. Central Pods and Services, RemoteClusters and
//! remembered retirements go in, each through [`Watched`] for its kind; out comes, per remote, the
//! desired state on a `watch` channel (latest wins, no-op updates dropped). No tonic, no I/O.
//!
//! ```text
//!  Pod/Service events ──► Watched::{apply,delete,reset} ──► recompute every remote ─┐
//!  RemoteCluster events ─► Watched::{apply,delete,reset} ──► recompute that remote ─┴─► watch::Sender<Arc<Desired>>
//!  tether-retired ──────► Watched<ConfigMap> ──► a Retire channel per remembered cluster     │
//!                                                     Changes::mark(remote) ◄──────────────────┘ (status writer)
//! ```
//! A spec that cannot be computed (unknown service, bad selector...) keeps the remote on its last good
//! spec, still following pod changes, and carries the errors for the `SpecValid` condition.

use crate::central::{CentralPod, CentralService, PodInfo};
use crate::changes::Changes;
use crate::crd::{RemoteCluster, RemoteClusterSpec};
use crate::desired::Desired;
use crate::snapshot::{Defaults, build};
use crate::streams::Streams;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use tether_proto::v1::Snapshot;
use tokio::sync::watch;

/// How a watched kind changes the index (as linkerd's `IndexNamespacedResource`): the watch feed
/// calls these and nothing else, so no caller routes events by kind.
pub trait Watched<K> {
    fn apply(&mut self, object: &K);
    fn delete(&mut self, name: &str);
    /// The whole list after a (re)list: what is not in it is gone.
    fn reset(&mut self, all: &[K]);
}

struct Remote {
    spec: RemoteClusterSpec,
    /// `spec` as JSON: the key under which remotes with the same spec share one computation (kept
    /// with the spec, so a central change does not serialise every remote's spec again).
    spec_key: String,
    generation: i64,
    deleting: bool,
    /// The last spec that computed without errors, with its key. Replaced only when the good spec
    /// changes: a central change does not copy every remote's spec.
    last_good: Option<(String, RemoteClusterSpec)>,
    tx: watch::Sender<Arc<Desired>>,
}

/// A cluster whose RemoteCluster was released before its agent acknowledged Retire.
struct Retired {
    since: Timestamp,
    /// Always `retire`: a returning agent is told to remove what it manages.
    tx: watch::Sender<Arc<Desired>>,
}

/// Computed snapshots by spec (JSON) within one recompute pass.
type Memo = HashMap<String, Result<Arc<Snapshot>, Vec<String>>>;

fn spec_key(spec: &RemoteClusterSpec) -> String {
    serde_json::to_string(spec).expect("spec serializes")
}

/// Which watches delivered their first list.
#[derive(Default)]
struct Synced {
    remotes: bool,
    pods: bool,
    services: bool,
    retired: bool,
}

pub struct Index {
    defaults: Defaults,
    synced: Synced,
    pods: HashMap<String, PodInfo>,
    services: HashMap<String, CentralService>,
    remotes: HashMap<String, Remote>,
    retired: HashMap<String, Retired>,
    /// Told of every remote whose desired state or RemoteCluster changed (the status writer's input).
    changes: Arc<Changes>,
    /// Told when a remote's desired state moves on from a version, before `changes` is.
    streams: Arc<Streams>,
}

impl Index {
    pub fn new(defaults: Defaults, changes: Arc<Changes>, streams: Arc<Streams>) -> Self {
        Self {
            streams,
            defaults,
            synced: Synced::default(),
            pods: HashMap::new(),
            services: HashMap::new(),
            remotes: HashMap::new(),
            retired: HashMap::new(),
            changes,
        }
    }

    /// True once every watch has delivered its first list: before that, "no such RemoteCluster" or
    /// "no endpoints" may only mean "not listed yet".
    pub fn is_synced(&self) -> bool {
        let s = &self.synced;
        s.remotes && s.pods && s.services && s.retired
    }

    /// The desired-state channel of a remote: its RemoteCluster's, or, for a cluster whose
    /// RemoteCluster was released while its agent was away, one that says Retire.
    pub fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<Arc<Desired>>> {
        self.remotes
            .get(cluster)
            .map(|r| r.tx.subscribe())
            .or_else(|| self.retired.get(cluster).map(|r| r.tx.subscribe()))
    }

    /// A RemoteCluster or a remembered retirement of this name exists.
    pub fn knows(&self, cluster: &str) -> bool {
        self.remotes.contains_key(cluster) || self.retired.contains_key(cluster)
    }

    pub fn desired(&self, cluster: &str) -> Option<Arc<Desired>> {
        self.remotes.get(cluster).map(|r| r.tx.borrow().clone())
    }

    pub fn remote_names(&self) -> Vec<String> {
        self.remotes.keys().cloned().collect()
    }

    /// Remembered retirements: (cluster, since).
    pub fn retired(&self) -> Vec<(String, Timestamp)> {
        self.retired
            .iter()
            .map(|(name, r)| (name.clone(), r.since))
            .collect()
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
        let mut compute = |key: &str, spec: &RemoteClusterSpec| {
            if let Some(known) = memo.get(key) {
                return known.clone();
            }
            let computed = build(spec, &self.defaults, &self.services, &self.pods).map(Arc::new);
            memo.insert(key.to_string(), computed.clone());
            computed
        };
        let (snapshot, errors, good) = match compute(&remote.spec_key, &remote.spec) {
            Ok(snap) => (Some(snap), Vec::new(), true),
            Err(errors) => {
                let fallback = remote
                    .last_good
                    .as_ref()
                    .and_then(|(key, spec)| compute(key, spec).ok());
                (fallback, errors, false)
            }
        };
        let desired = Desired {
            snapshot,
            errors,
            source: crate::crd::EndpointsSpec::describe(remote.spec.endpoints.as_ref()),
            retire: remote.deleting,
            generation: remote.generation,
            changed_at: Some(std::time::Instant::now()),
        };
        let remote = self.remotes.get_mut(name).expect("present above");
        if good && remote.last_good.as_ref().map(|(key, _)| key) != Some(&remote.spec_key) {
            remote.last_good = Some((remote.spec_key.clone(), remote.spec.clone()));
        }
        let mut replaced = None;
        let changed = remote.tx.send_if_modified(|current| {
            if **current == desired {
                return false;
            }
            if !current.version().is_empty() && current.version() != desired.version() {
                replaced = Some(current.version().to_string());
            }
            *current = Arc::new(desired);
            true
        });
        // Before the status writer hears of the change: an agent that holds the replaced state was
        // up to date until this moment, not only when it acknowledged it (which may be long ago).
        if let Some(version) = replaced {
            self.streams.replaced(name, &version, Timestamp::now());
        }
        if changed {
            self.changes.mark(name);
        }
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
}

/// A central kind the index keeps a summary of, keyed by name. Any change may move every remote.
trait Central: ResourceExt {
    type Info: PartialEq;
    fn info(&self) -> Self::Info;
    fn map(index: &mut Index) -> &mut HashMap<String, Self::Info>;
    fn listed(synced: &mut Synced) -> &mut bool;
}

impl Central for CentralPod {
    type Info = PodInfo;
    fn info(&self) -> PodInfo {
        PodInfo::from_pod(self)
    }
    fn map(index: &mut Index) -> &mut HashMap<String, PodInfo> {
        &mut index.pods
    }
    fn listed(synced: &mut Synced) -> &mut bool {
        &mut synced.pods
    }
}

impl Central for Service {
    type Info = CentralService;
    fn info(&self) -> CentralService {
        CentralService::from_service(self)
    }
    fn map(index: &mut Index) -> &mut HashMap<String, CentralService> {
        &mut index.services
    }
    fn listed(synced: &mut Synced) -> &mut bool {
        &mut synced.services
    }
}

impl<K: Central> Watched<K> for Index {
    fn apply(&mut self, object: &K) {
        let info = object.info();
        let map = K::map(self);
        if map.get(&object.name_any()) != Some(&info) {
            map.insert(object.name_any(), info);
            self.recompute_all();
        }
    }

    fn delete(&mut self, name: &str) {
        if K::map(self).remove(name).is_some() {
            self.recompute_all();
        }
    }

    fn reset(&mut self, all: &[K]) {
        *K::listed(&mut self.synced) = true;
        *K::map(self) = all.iter().map(|o| (o.name_any(), o.info())).collect();
        self.recompute_all();
    }
}

impl Watched<RemoteCluster> for Index {
    fn apply(&mut self, rc: &RemoteCluster) {
        let name = rc.name_any();
        let generation = rc.metadata.generation.unwrap_or_default();
        let deleting = rc.metadata.deletion_timestamp.is_some();
        let key = spec_key(&rc.spec);
        let remote = self.remotes.entry(name.clone()).or_insert_with(|| Remote {
            spec: rc.spec.clone(),
            spec_key: key.clone(),
            generation,
            deleting,
            last_good: None,
            tx: watch::Sender::new(Arc::new(Desired::default())),
        });
        remote.spec = rc.spec.clone();
        remote.spec_key = key;
        remote.generation = generation;
        remote.deleting = deleting;
        self.recompute(&name);
        // Its status or finalizers may have changed too: the status writer looks again.
        self.changes.mark(&name);
    }

    /// The RemoteCluster is gone: its channel closes, which ends its streams.
    fn delete(&mut self, name: &str) {
        if self.remotes.remove(name).is_some() {
            self.changes.mark(name);
        }
    }

    fn reset(&mut self, rcs: &[RemoteCluster]) {
        self.synced.remotes = true;
        let keep: HashSet<String> = rcs.iter().map(|r| r.name_any()).collect();
        let gone: Vec<String> = self
            .remotes
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            Watched::<RemoteCluster>::delete(self, &name);
        }
        for rc in rcs {
            Watched::<RemoteCluster>::apply(self, rc);
        }
    }
}

/// The ConfigMap of remembered retirements (`crate::retire`); the watch selects it by name.
impl Watched<ConfigMap> for Index {
    fn apply(&mut self, cm: &ConfigMap) {
        self.set_retired(Some(cm));
    }

    fn delete(&mut self, _name: &str) {
        self.set_retired(None);
    }

    fn reset(&mut self, cms: &[ConfigMap]) {
        self.synced.retired = true;
        self.set_retired(cms.first());
    }
}

/// What the gRPC layer may ask of the index (it depends on this, never on [`Index`]).
pub trait Discovery: Send + Sync + 'static {
    /// False until every watch has listed: refusals would only mean "not listed yet".
    fn ready(&self) -> bool;
    /// The desired-state channel of `cluster`; None when the hub knows no such cluster.
    fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<Arc<Desired>>>;
}

impl Discovery for RwLock<Index> {
    fn ready(&self) -> bool {
        self.read().expect("index lock").is_synced()
    }

    fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<Arc<Desired>>> {
        self.read().expect("index lock").subscribe(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceMirror;
    use crate::fixtures::{defaults, mk_pod, mk_remote, mk_service};

    /// A ready istiod pod at `ip`, serving grpc-xds.
    fn ready_pod(name: &str, ip: &str) -> CentralPod {
        (&mk_pod(name, "istiod", &[ip], true, &[("grpc-xds", 15010)])).into()
    }

    fn ready_index() -> Index {
        let mut index = Index::new(defaults(), Default::default(), Default::default());
        index.apply(&mk_service(
            "istiod",
            &[("app", "istiod")],
            &[("grpc-xds", 15010, "grpc-xds")],
        ));
        index.apply(&ready_pod("istiod-a", "10.0.0.1"));
        index
    }

    #[test]
    fn synced_only_after_every_watch_listed() {
        let mut index = Index::new(defaults(), Default::default(), Default::default());
        Watched::<RemoteCluster>::reset(&mut index, &[]);
        Watched::<CentralPod>::reset(&mut index, &[]);
        Watched::<Service>::reset(&mut index, &[]);
        assert!(!index.is_synced());
        Watched::<ConfigMap>::reset(&mut index, &[]);
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
        Watched::<ConfigMap>::reset(
            &mut index,
            &[cm(serde_json::json!({"gone": "2026-11-25T10:00:00Z"}))],
        );
        let rx = index
            .subscribe("gone")
            .expect("a channel for the returning agent");
        assert!(rx.borrow().retire && rx.borrow().snapshot.is_none());
        // A RemoteCluster of that name again wins.
        index.apply(&mk_remote("gone", Default::default()));
        assert!(!index.subscribe("gone").unwrap().borrow().retire);
        Watched::<RemoteCluster>::delete(&mut index, "gone");
        index.apply(&cm(serde_json::json!({})));
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
        index.apply(&mk_remote("r1", Default::default()));
        index.apply(&mk_remote("r2", Default::default()));
        let mut rx1 = index.subscribe("r1").unwrap();
        let mut rx2 = index.subscribe("r2").unwrap();
        rx1.mark_unchanged();
        rx2.mark_unchanged();
        let v1 = rx1.borrow().version().to_string();

        // Same pod again: nothing to send.
        index.apply(&ready_pod("istiod-a", "10.0.0.1"));
        assert!(!rx1.has_changed().unwrap());

        index.apply(&ready_pod("istiod-b", "10.0.0.2"));
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
    fn remotes_share_a_computation_only_while_their_specs_are_the_same() {
        let mut index = ready_index();
        index.apply(&mk_remote("r1", Default::default()));
        index.apply(&mk_remote("r2", Default::default()));
        let legacy = |index: &Index, name: &str| {
            let d = index.desired(name).unwrap();
            !d.snapshot.as_ref().unwrap().skip_legacy_endpoints
        };
        assert!(legacy(&index, "r1") && legacy(&index, "r2"));
        // r2's spec changes; a pod change then recomputes both in one pass.
        let spec = RemoteClusterSpec {
            legacy_endpoints: Some(false),
            ..Default::default()
        };
        index.apply(&mk_remote("r2", spec));
        index.apply(&ready_pod("istiod-b", "10.0.0.2"));
        assert!(legacy(&index, "r1"), "r1 keeps its own spec's state");
        assert!(!legacy(&index, "r2"), "r2 has its new spec's state");
        // And back: the same spec shares the same state again.
        index.apply(&mk_remote("r2", Default::default()));
        assert!(legacy(&index, "r2"));
        assert_eq!(
            index.desired("r1").unwrap().version(),
            index.desired("r2").unwrap().version()
        );
    }

    /// Before the burst that follows a quiet hour, an agent's last ACK is an hour old; it still held
    /// the hub's state until the first change of the burst, so it counts as Synced for the deadline
    /// after that change, not after its ACK.
    #[test]
    fn an_agent_holding_the_replaced_state_held_it_until_the_replacement() {
        use crate::status::compute::synced_until;
        let streams = Arc::new(Streams::default());
        let mut index = Index::new(defaults(), Default::default(), streams.clone());
        index.apply(&mk_service(
            "istiod",
            &[("app", "istiod")],
            &[("grpc-xds", 15010, "grpc-xds")],
        ));
        index.apply(&ready_pod("istiod-a", "10.0.0.1"));
        index.apply(&mk_remote("r1", Default::default()));
        let v1 = index.desired("r1").unwrap().version().to_string();
        let hour_ago = Timestamp::now() - jiff_hours(1);
        streams.connected("r1", &Default::default(), "p", None, "");
        streams.acked("r1", &v1, Some(hour_ago));
        let deadline = std::time::Duration::from_secs(10);

        let before = Timestamp::now();
        index.apply(&ready_pod("istiod-b", "10.0.0.2"));
        let d2 = index.desired("r1").unwrap();
        assert_ne!(d2.version(), v1);
        let s = streams.get("r1");
        assert!(s.caught_up_at.unwrap() >= before, "{s:?}");
        assert!(
            synced_until(&d2, &s, Timestamp::now(), deadline).is_some(),
            "held the hub's state until just now: Synced while v2 is on its way"
        );

        // A second change: the agent still holds v1, which it held only until the first.
        let held = s.caught_up_at;
        index.apply(&ready_pod("istiod-c", "10.0.0.3"));
        assert_eq!(streams.get("r1").caught_up_at, held);
        // Once v1 is held past the deadline after its replacement, no longer Synced.
        let d3 = index.desired("r1").unwrap();
        let later = held.unwrap() + deadline + std::time::Duration::from_secs(1);
        assert!(synced_until(&d3, &streams.get("r1"), later, deadline).is_none());

        // A disconnected agent is not known to hold anything.
        streams.acked("r1", d3.version(), Some(hour_ago));
        streams.disconnected("r1");
        index.apply(&ready_pod("istiod-d", "10.0.0.4"));
        assert_eq!(streams.get("r1").caught_up_at, held);
    }

    fn jiff_hours(h: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_hours(h)
    }

    #[test]
    fn invalid_spec_keeps_last_good_state_and_reports_why() {
        let mut index = ready_index();
        index.apply(&mk_remote("r1", Default::default()));
        let good = index.desired("r1").unwrap();
        assert!(good.errors.is_empty() && good.snapshot.is_some());

        let bad = RemoteClusterSpec {
            services: vec![ServiceMirror {
                name: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        index.apply(&mk_remote("r1", bad.clone()));
        let d = index.desired("r1").unwrap();
        assert_eq!(d.version(), good.version(), "previous state kept");
        assert!(d.errors[0].contains("nope"), "{:?}", d.errors);

        // Another good spec is the one kept from then on.
        let labelled = RemoteClusterSpec {
            injection: crate::crd::InjectionSpec {
                namespaces: vec!["apps".into()],
                labels: None,
            },
            ..Default::default()
        };
        index.apply(&mk_remote("r1", labelled));
        let second = index.desired("r1").unwrap();
        assert!(second.errors.is_empty());
        assert_ne!(second.version(), good.version());
        index.apply(&mk_remote("r1", bad));
        assert_eq!(index.desired("r1").unwrap().version(), second.version());

        // The kept state still follows pods.
        index.apply(&ready_pod("istiod-b", "10.0.0.2"));
        assert_eq!(index.desired("r1").unwrap().endpoints(), 2);
    }

    #[test]
    fn deleting_remote_asks_for_retire_and_delete_closes_channel() {
        let mut index = ready_index();
        index.apply(&mk_remote("r1", Default::default()));
        let rx = index.subscribe("r1").unwrap();
        let mut rc = mk_remote("r1", Default::default());
        rc.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        index.apply(&rc);
        assert!(rx.borrow().retire);
        Watched::<RemoteCluster>::delete(&mut index, "r1");
        assert!(rx.has_changed().is_err(), "sender dropped");
    }

    #[test]
    fn reset_drops_remotes_that_are_gone() {
        let mut index = ready_index();
        index.apply(&mk_remote("r1", Default::default()));
        index.apply(&mk_remote("r2", Default::default()));
        Watched::<RemoteCluster>::reset(&mut index, &[mk_remote("r2", Default::default())]);
        assert_eq!(index.remote_names(), ["r2"]);
    }
}
