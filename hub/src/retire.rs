//! The retire lifecycle, in one place.
//!
//! ```text
//!  RemoteCluster deleted ─► index: Desired{retire} ─► stream sends Retire ─► agent removes all, ACKs
//!        │                                                                        │
//!        └─ finalizer released when the agent ACKed ◄─────────────────────────────┘
//!           or after --retire-timeout: then remembered in ConfigMap tether-retired
//!  agent comes back, no RemoteCluster, remembered ─► index: Desired{retire} ─► Retire ─► ACK ─► forgotten
//! ```
//! A RemoteCluster deleted while its agent is away would otherwise leave the remote's mirrors and
//! labels forever, pointing at addresses that go stale. The memory is a ConfigMap (cluster name ->
//! when it was released) so a restarted hub remembers too; it is forgotten once the agent
//! acknowledged, when a RemoteCluster of that name is created again, or after `--retire-memory`.
//! The finalizer is put on every RemoteCluster here too.

use crate::crd::{FINALIZER, RemoteCluster};
use crate::index::Index;
use crate::streams::{StreamState, Streams};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The ConfigMap (in the hub's namespace) that remembers retirements.
pub const CONFIGMAP: &str = "tether-retired";

/// Remembered retirements: cluster -> when its RemoteCluster was released without the agent's ACK.
/// Entries that do not parse are skipped (and never sent a Retire).
pub fn parse(cm: &ConfigMap) -> BTreeMap<String, Timestamp> {
    cm.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.parse().ok()?)))
        .collect()
}

pub struct Retirements {
    pub remotes: Api<RemoteCluster>,
    pub configmaps: Api<ConfigMap>,
    /// How long a deleted RemoteCluster waits for its agent's ACK of Retire.
    pub timeout: Duration,
    /// How long a retirement the agent has not acknowledged is remembered.
    pub memory: Duration,
}

impl Retirements {
    /// Every RemoteCluster carries the finalizer, so that its deletion can retire the agent first.
    /// Returns the object as patched, when it was.
    pub async fn ensure_finalizer(
        &self,
        rc: &RemoteCluster,
    ) -> kube::Result<Option<RemoteCluster>> {
        if rc.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        let mut finalizers = rc.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": rc.resource_version()}});
        let patched = self
            .remotes
            .patch(
                &rc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(Some(patched))
    }

    /// Lets a deleted RemoteCluster go once its agent retired, or after the retire timeout (then
    /// remembered first, so the agent is retired when it comes back). While it waits, returns when
    /// the timeout falls due (the agent's ACK marks the remote before that).
    pub async fn release(
        &self,
        rc: &RemoteCluster,
        stream: &StreamState,
        streams: &Streams,
    ) -> kube::Result<Option<Instant>> {
        if !rc.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        let deleted_at = rc
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let waited = Timestamp::now().duration_since(deleted_at).unsigned_abs();
        if !stream.retired && waited < self.timeout {
            return Ok(Some(Instant::now() + (self.timeout - waited)));
        }
        let name = rc.name_any();
        if stream.retired {
            info!(cluster = %name, "agent retired; releasing the RemoteCluster");
        } else {
            warn!(cluster = %name, ?waited, "agent did not acknowledge Retire in time; releasing the RemoteCluster and remembering to retire the agent when it returns");
            self.remember(&name).await?;
        }
        let finalizers: Vec<&String> = rc.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": rc.resource_version()}});
        self.remotes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        streams.remove(&name);
        Ok(None)
    }

    /// Forgets the retirements that are done: acknowledged by the returning agent, superseded by a
    /// new RemoteCluster of the same name, or older than the memory. Returns when the next one falls
    /// due by age.
    pub async fn sweep(
        &self,
        index: &RwLock<Index>,
        streams: &Streams,
        store: &Store<RemoteCluster>,
    ) -> kube::Result<Option<Instant>> {
        let retired = index.read().expect("index lock").retired();
        if retired.is_empty() {
            return Ok(None);
        }
        let remotes = store.state();
        // A RemoteCluster being deleted is the one just retired, not a new one.
        let live: HashSet<String> = remotes
            .iter()
            .filter(|rc| rc.metadata.deletion_timestamp.is_none())
            .map(|rc| rc.name_any())
            .collect();
        let now = Timestamp::now();
        let mut next_due = None;
        for (cluster, since) in retired {
            let age = now.duration_since(since).unsigned_abs();
            if streams.get(&cluster).retired {
                info!(%cluster, "retirement acknowledged by the returning agent; forgetting it");
            } else if live.contains(&cluster) {
                info!(%cluster, "a RemoteCluster of this name exists again; forgetting its retirement");
            } else if age >= self.memory {
                warn!(%cluster, ?age, "the agent never came back to be retired; forgetting it (its mirrors stay on that cluster)");
            } else {
                let due = Instant::now() + (self.memory - age);
                next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)));
                continue;
            }
            self.forget(&cluster).await?;
            if !live.contains(&cluster) {
                streams.remove(&cluster);
            }
        }
        Ok(next_due)
    }

    /// Drops the stream state of a cluster whose RemoteCluster is gone, unless a retirement is
    /// remembered for it or its agent is connected (a RemoteCluster deleted while no finalizer held
    /// it).
    pub fn forget_stream_state(&self, cluster: &str, index: &RwLock<Index>, streams: &Streams) {
        let known = index.read().expect("index lock").knows(cluster);
        if !known && streams.get(cluster).streams == 0 {
            streams.remove(cluster);
        }
    }

    async fn remember(&self, cluster: &str) -> kube::Result<()> {
        let at = Timestamp::from_second(Timestamp::now().as_second()).expect("in range");
        let patch = serde_json::json!({"data": {cluster: at.to_string()}});
        match self
            .configmaps
            .patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": CONFIGMAP, "labels": {"app.kubernetes.io/managed-by": "tether-hub"}},
                    "data": {cluster: at.to_string()},
                }))
                .expect("configmap");
                self.configmaps.create(&PostParams::default(), &cm).await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    async fn forget(&self, cluster: &str) -> kube::Result<()> {
        let patch = serde_json::json!({"data": {cluster: null}});
        match self
            .configmaps
            .patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_retirements_parse_and_bad_entries_are_skipped() {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": CONFIGMAP},
            "data": {"remote-1": "2026-11-25T10:00:00Z", "remote-2": "yesterday"},
        }))
        .unwrap();
        let got = parse(&cm);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["remote-1"]);
        assert_eq!(got["remote-1"].to_string(), "2026-11-25T10:00:00Z");
    }
}
