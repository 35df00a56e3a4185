//! What the hub knows about each remote's stream(s): connected or not, which agent, what it acked or
//! nacked. One owner: the gRPC layer changes it, through the named mutators below and nothing else;
//! the status writer and the admin `/streams` read it. Every change marks the remote for the status
//! writer. Pure state under a mutex, never held across an await.

use crate::changes::Changes;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tether_proto::v1::Hello;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamState {
    /// Open streams from this cluster's agent(s); 0 = disconnected. Briefly 2 while a newer stream
    /// replaces an older one.
    pub streams: u32,
    pub ever_connected: bool,
    pub agent_version: String,
    pub peer: String,
    /// The serving agent's process (Hello.instance).
    pub instance: String,
    pub connected_since: Option<Timestamp>,
    /// When the serving agent's client certificate expires (the one its newest stream presented).
    pub cert_not_after: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// The version the agent last reported applied; cleared when it reports that version no longer
    /// holds.
    pub acked_version: String,
    /// When the agent last acknowledged a snapshot.
    pub last_ack: Option<Timestamp>,
    /// The last moment the agent is known to have held the hub's desired state of that moment: an
    /// ACK or a Hello naming the version the hub wanted then, or, for an acknowledged version the hub
    /// has since replaced, when it was replaced. `Synced` may stand for `--sync-deadline` after it
    /// while a newer state is on its way.
    pub caught_up_at: Option<Timestamp>,
    pub last_nack: Option<Nacked>,
    /// The agent acknowledged `Retire`: it no longer manages anything.
    pub retired: bool,
    /// Another agent with this identity asked to serve while one was connected.
    pub duplicate: Option<Duplicate>,
    /// The connected agent reports its API-access tunnel up (to this replica or another one).
    pub tunnel_up: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Nacked {
    pub version: String,
    pub message: String,
    pub at: Timestamp,
    /// Some object exists on the remote without Tether's managed-by label.
    pub conflict: bool,
}

/// The last refusal of a second agent with the same identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Duplicate {
    pub peer: String,
    pub instance: String,
    pub at: Timestamp,
}

#[derive(Default)]
pub struct Streams {
    remotes: Mutex<HashMap<String, StreamState>>,
    changes: Arc<Changes>,
}

impl Streams {
    pub fn new(changes: Arc<Changes>) -> Self {
        Self {
            remotes: Mutex::default(),
            changes,
        }
    }

    pub fn get(&self, cluster: &str) -> StreamState {
        self.remotes
            .lock()
            .expect("streams lock")
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, cluster: &str, f: impl FnOnce(&mut StreamState)) {
        let mut remotes = self.remotes.lock().expect("streams lock");
        f(remotes.entry(cluster.to_string()).or_default());
        drop(remotes);
        self.changes.mark(cluster);
    }

    /// A stream from agent `instance` was admitted. A standby admitted means the other agent is gone:
    /// the duplicate is over.
    pub fn connected(
        &self,
        cluster: &str,
        hello: &Hello,
        peer: &str,
        cert_not_after: Option<Timestamp>,
        current: &str,
    ) {
        let now = Timestamp::now();
        self.update(cluster, |s| {
            s.cert_not_after = cert_not_after;
            if s.streams == 0 {
                s.connected_since = Some(now);
            }
            s.streams += 1;
            s.ever_connected = true;
            s.agent_version = hello.agent_version.clone();
            s.peer = peer.to_string();
            s.instance = hello.instance.clone();
            s.last_seen = Some(now);
            s.retired = false;
            if !hello.applied_version.is_empty() {
                s.acked_version = hello.applied_version.clone();
                if hello.applied_version == current {
                    s.caught_up_at = Some(now);
                }
            }
            if hello.standby {
                s.duplicate = None;
            }
        });
    }

    pub fn disconnected(&self, cluster: &str) {
        self.update(cluster, |s| {
            s.streams = s.streams.saturating_sub(1);
            s.last_seen = Some(Timestamp::now());
            if s.streams == 0 {
                s.connected_since = None;
                s.tunnel_up = false;
            }
        });
    }

    /// The agent reports its API-access tunnel up or down.
    pub fn tunnel(&self, cluster: &str, up: bool) {
        self.update(cluster, |s| s.tunnel_up = up);
    }

    /// The agent applied `version` completely; `held_until`: until when `version` was the hub's
    /// desired state (now, if it still is; None if not known).
    pub fn acked(&self, cluster: &str, version: &str, held_until: Option<Timestamp>) {
        let now = Timestamp::now();
        self.update(cluster, |s| {
            s.last_seen = Some(now);
            s.acked_version = version.to_string();
            s.last_ack = Some(now);
            if let Some(until) = held_until {
                s.caught_up_at = s.caught_up_at.max(Some(until));
            }
        });
    }

    /// The hub's desired state for `cluster` moved on from `version` at `at`: a connected agent that
    /// holds `version` held the hub's state until then. The caller marks the remote (the desired state
    /// changed).
    pub fn replaced(&self, cluster: &str, version: &str, at: Timestamp) {
        let mut remotes = self.remotes.lock().expect("streams lock");
        if let Some(s) = remotes.get_mut(cluster)
            && s.streams > 0
            && s.acked_version == version
        {
            s.caught_up_at = s.caught_up_at.max(Some(at));
        }
    }

    /// The agent removed everything it managed (the answer to Retire).
    pub fn retired(&self, cluster: &str) {
        self.update(cluster, |s| {
            s.last_seen = Some(Timestamp::now());
            s.retired = true;
        });
    }

    /// The agent could not apply `nack.version`, or reports that it no longer holds it.
    pub fn nacked(&self, cluster: &str, nack: Nacked) {
        self.update(cluster, |s| {
            s.last_seen = Some(nack.at);
            if s.acked_version == nack.version {
                s.acked_version.clear();
            }
            s.last_nack = Some(nack);
        });
    }

    /// A standby agent with this identity was refused while another serves.
    pub fn duplicate_refused(&self, cluster: &str, peer: &str, instance: &str) {
        self.update(cluster, |s| {
            s.duplicate = Some(Duplicate {
                peer: peer.to_string(),
                instance: instance.to_string(),
                at: Timestamp::now(),
            })
        });
    }

    /// Every remote's live stream state, with what the hub wants it to hold (`desired`: the index's
    /// view of a remote), for the admin server's `/streams`.
    pub fn to_json(
        &self,
        desired: impl Fn(&str) -> Option<std::sync::Arc<crate::desired::Desired>>,
    ) -> serde_json::Value {
        let remotes = self.remotes.lock().expect("streams lock");
        let mut out = serde_json::Map::new();
        for (name, s) in remotes.iter() {
            let t = |t: &Option<Timestamp>| t.map(|t| t.to_string());
            let d = desired(name);
            out.insert(
                name.clone(),
                serde_json::json!({
                    "streams": s.streams,
                    "agentVersion": s.agent_version,
                    "peer": s.peer,
                    "instance": s.instance,
                    "connectedSince": t(&s.connected_since),
                    "certificateNotAfter": t(&s.cert_not_after),
                    "lastSeen": t(&s.last_seen),
                    "lastAck": t(&s.last_ack),
                    "ackedVersion": s.acked_version,
                    "caughtUpAt": t(&s.caught_up_at),
                    "desiredVersion": d.as_ref().map(|d| d.version().to_string()).unwrap_or_default(),
                    "endpoints": d.as_ref().map(|d| d.endpoints()).unwrap_or_default(),
                    "lastNack": s.last_nack.as_ref().map(|n| serde_json::json!({"version": n.version, "message": n.message})),
                    "duplicate": s.duplicate.as_ref().map(|d| serde_json::json!({"peer": d.peer, "instance": d.instance, "at": d.at.to_string()})),
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// Forget a remote whose RemoteCluster is gone.
    pub fn remove(&self, cluster: &str) {
        self.remotes.lock().expect("streams lock").remove(cluster);
    }

    /// The remotes this hub has stream state for.
    pub fn names(&self) -> Vec<String> {
        self.remotes
            .lock()
            .expect("streams lock")
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_marks_the_remote_for_the_status_writer() {
        let changes = Arc::new(Changes::default());
        let streams = Streams::new(changes.clone());
        streams.connected("r1", &hello("a", ""), "p", None, "");
        streams.acked("r2", "v1", Some(Timestamp::now()));
        let _ = streams.get("r3");
        let _ = streams.to_json(|_| None);
        let mut marked: Vec<String> = changes.take().into_iter().collect();
        marked.sort();
        assert_eq!(marked, ["r1", "r2"], "reads mark nothing");
    }

    #[test]
    fn second_stream_keeps_remote_connected_until_both_close() {
        let streams = Streams::default();
        streams.connected("r1", &hello("a", ""), "127.0.0.1:1", None, "");
        streams.connected("r1", &hello("a", ""), "127.0.0.1:2", None, "");
        streams.disconnected("r1");
        assert_eq!(streams.get("r1").streams, 1);
        assert!(streams.get("r1").connected_since.is_some());
        streams.disconnected("r1");
        assert_eq!(streams.get("r1").streams, 0);
        assert!(streams.get("r1").ever_connected);
    }

    #[test]
    fn hello_applied_version_counts_as_acked() {
        let streams = Streams::default();
        streams.connected("r1", &hello("a", "abc"), "p", None, "");
        assert_eq!(streams.get("r1").acked_version, "abc");
    }

    #[test]
    fn a_nack_of_the_acked_version_means_it_no_longer_holds() {
        let streams = Streams::default();
        streams.acked("r1", "v1", Some(Timestamp::now()));
        let nack = |v: &str| Nacked {
            version: v.into(),
            message: "namespace gone".into(),
            at: Timestamp::now(),
            conflict: false,
        };
        streams.nacked("r1", nack("v0"));
        assert_eq!(
            streams.get("r1").acked_version,
            "v1",
            "an older version's NACK"
        );
        streams.nacked("r1", nack("v1"));
        assert_eq!(streams.get("r1").acked_version, "");
        streams.acked("r1", "v1", Some(Timestamp::now()));
        assert_eq!(streams.get("r1").acked_version, "v1");
    }

    #[test]
    fn an_admitted_standby_ends_the_duplicate() {
        let streams = Streams::default();
        streams.connected("r1", &hello("a", ""), "p1", None, "");
        streams.duplicate_refused("r1", "p2", "b");
        assert_eq!(streams.get("r1").duplicate.as_ref().unwrap().instance, "b");
        streams.connected("r1", &hello("c", ""), "p3", None, "");
        assert!(
            streams.get("r1").duplicate.is_some(),
            "a newer agent is no proof"
        );
        let standby = Hello {
            standby: true,
            ..hello("b", "")
        };
        streams.connected("r1", &standby, "p2", None, "");
        assert!(streams.get("r1").duplicate.is_none());
    }

    fn hello(instance: &str, applied: &str) -> Hello {
        Hello {
            cluster: "r1".into(),
            agent_version: "0.2.0".into(),
            applied_version: applied.into(),
            instance: instance.into(),
            standby: false,
        }
    }
}
