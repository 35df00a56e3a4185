//! What the hub knows about each remote's stream(s): connected or not, which agent, what it acked or
//! nacked. Written by the gRPC layer, read by the status writer. Pure state under a mutex, never held
//! across an await.

use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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
    pub last_seen: Option<Timestamp>,
    /// The version the agent last reported applied; cleared when it reports that version no longer
    /// holds.
    pub acked_version: String,
    /// When the agent last acknowledged a snapshot.
    pub last_ack: Option<Timestamp>,
    pub last_nack: Option<Nacked>,
    /// The agent acknowledged `Retire`: it no longer manages anything.
    pub retired: bool,
    /// Another agent with this identity asked to serve while one was connected.
    pub duplicate: Option<Duplicate>,
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
pub struct Board {
    remotes: Mutex<HashMap<String, StreamState>>,
    /// Counts changes (see [`Board::revision`]); bumped under the lock, after the change.
    revision: AtomicU64,
}

impl Board {
    /// Moves with every change to any remote's state: a reader that saw the same revision saw the
    /// same board.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.revision.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, cluster: &str) -> StreamState {
        self.remotes
            .lock()
            .expect("board lock")
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, cluster: &str, f: impl FnOnce(&mut StreamState)) {
        let mut remotes = self.remotes.lock().expect("board lock");
        f(remotes.entry(cluster.to_string()).or_default());
        self.changed();
    }

    /// A stream from agent `instance` was admitted. A standby admitted means the other agent is gone:
    /// the duplicate is over.
    pub fn connected(&self, cluster: &str, hello: &Hello, peer: &str) {
        let now = Timestamp::now();
        self.update(cluster, |s| {
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
            }
        });
    }

    /// The agent applied `version` completely (or `Retire`).
    pub fn acked(&self, cluster: &str, version: &str) {
        let now = Timestamp::now();
        self.update(cluster, |s| {
            s.last_seen = Some(now);
            if version == tether_proto::RETIRED_VERSION {
                s.retired = true;
            } else {
                s.acked_version = version.to_string();
                s.last_ack = Some(now);
            }
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

    /// Every remote's live stream state, for the admin server's `/streams`.
    pub fn to_json(&self) -> serde_json::Value {
        let remotes = self.remotes.lock().expect("board lock");
        let mut out = serde_json::Map::new();
        for (name, s) in remotes.iter() {
            let t = |t: &Option<Timestamp>| t.map(|t| t.to_string());
            out.insert(
                name.clone(),
                serde_json::json!({
                    "streams": s.streams,
                    "agentVersion": s.agent_version,
                    "peer": s.peer,
                    "instance": s.instance,
                    "connectedSince": t(&s.connected_since),
                    "lastSeen": t(&s.last_seen),
                    "lastAck": t(&s.last_ack),
                    "ackedVersion": s.acked_version,
                    "lastNack": s.last_nack.as_ref().map(|n| serde_json::json!({"version": n.version, "message": n.message})),
                    "duplicate": s.duplicate.as_ref().map(|d| serde_json::json!({"peer": d.peer, "instance": d.instance, "at": d.at.to_string()})),
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// The first time this hub sees `cluster`, takes the agent and ACK it last recorded in status.
    pub fn seed(&self, cluster: &str, status: Option<&crate::crd::RemoteClusterStatus>) {
        let mut remotes = self.remotes.lock().expect("board lock");
        if remotes.contains_key(cluster) {
            return;
        }
        let mut state = StreamState::default();
        if let Some(status) = status
            && let Some(agent) = &status.agent
        {
            state.ever_connected = true;
            state.agent_version = agent.version.clone();
            state.peer = agent.peer.clone();
            state.last_seen = agent.last_seen.as_ref().map(|t| t.0);
            if let Some(sync) = &status.sync {
                state.acked_version = sync.acked_version.clone();
                state.last_ack = sync.last_ack.as_ref().map(|t| t.0);
            }
        }
        remotes.insert(cluster.to_string(), state);
        self.changed();
    }

    /// Forget a remote whose RemoteCluster is gone.
    pub fn remove(&self, cluster: &str) {
        let mut remotes = self.remotes.lock().expect("board lock");
        if remotes.remove(cluster).is_some() {
            self.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_moves_with_every_change_and_only_then() {
        let board = Board::default();
        let r0 = board.revision();
        board.seed("r1", None);
        let r1 = board.revision();
        assert!(r1 > r0, "a seeded remote is a change");
        board.seed("r1", None);
        assert_eq!(
            board.revision(),
            r1,
            "seeding a known remote changes nothing"
        );
        let _ = board.get("r1");
        let _ = board.to_json();
        assert_eq!(board.revision(), r1, "reading changes nothing");
        board.acked("r1", "v1");
        let r2 = board.revision();
        assert!(r2 > r1);
        board.remove("r2");
        assert_eq!(
            board.revision(),
            r2,
            "removing an unknown remote changes nothing"
        );
        board.remove("r1");
        assert!(board.revision() > r2);
    }

    #[test]
    fn second_stream_keeps_remote_connected_until_both_close() {
        let board = Board::default();
        board.connected("r1", &hello("a", ""), "127.0.0.1:1");
        board.connected("r1", &hello("a", ""), "127.0.0.1:2");
        board.disconnected("r1");
        assert_eq!(board.get("r1").streams, 1);
        assert!(board.get("r1").connected_since.is_some());
        board.disconnected("r1");
        assert_eq!(board.get("r1").streams, 0);
        assert!(board.get("r1").ever_connected);
    }

    #[test]
    fn a_restarted_hub_remembers_an_agent_from_status_as_disconnected() {
        use crate::crd::{AgentStatus, RemoteClusterStatus, SyncStatus};
        let board = Board::default();
        let status = RemoteClusterStatus {
            agent: Some(AgentStatus {
                version: "0.1.0".into(),
                ..Default::default()
            }),
            sync: Some(SyncStatus {
                acked_version: "v1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        board.seed("r1", Some(&status));
        let s = board.get("r1");
        assert!(s.ever_connected && s.streams == 0 && s.acked_version == "v1");
        // Only the first time: live state wins afterwards.
        board.connected("r1", &hello("a", ""), "p");
        board.seed("r1", Some(&status));
        assert_eq!(board.get("r1").agent_version, "0.2.0");
    }

    #[test]
    fn hello_applied_version_counts_as_acked() {
        let board = Board::default();
        board.connected("r1", &hello("a", "abc"), "p");
        assert_eq!(board.get("r1").acked_version, "abc");
    }

    #[test]
    fn a_nack_of_the_acked_version_means_it_no_longer_holds() {
        let board = Board::default();
        board.acked("r1", "v1");
        let nack = |v: &str| Nacked {
            version: v.into(),
            message: "namespace gone".into(),
            at: Timestamp::now(),
            conflict: false,
        };
        board.nacked("r1", nack("v0"));
        assert_eq!(
            board.get("r1").acked_version,
            "v1",
            "an older version's NACK"
        );
        board.nacked("r1", nack("v1"));
        assert_eq!(board.get("r1").acked_version, "");
        board.acked("r1", "v1");
        assert_eq!(board.get("r1").acked_version, "v1");
    }

    #[test]
    fn an_admitted_standby_ends_the_duplicate() {
        let board = Board::default();
        board.connected("r1", &hello("a", ""), "p1");
        board.duplicate_refused("r1", "p2", "b");
        assert_eq!(board.get("r1").duplicate.as_ref().unwrap().instance, "b");
        board.connected("r1", &hello("c", ""), "p3");
        assert!(
            board.get("r1").duplicate.is_some(),
            "a newer agent is no proof"
        );
        let standby = Hello {
            standby: true,
            ..hello("b", "")
        };
        board.connected("r1", &standby, "p2");
        assert!(board.get("r1").duplicate.is_none());
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
