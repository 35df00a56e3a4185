//! What the hub knows about each remote's stream(s): connected or not, which agent, what it acked or
//! nacked. Written by the gRPC layer, read by the status writer. Pure state under a mutex, never held
//! across an await.

use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamState {
    /// Open streams from this cluster's agent(s); 0 = disconnected.
    pub streams: u32,
    pub ever_connected: bool,
    pub agent_version: String,
    pub peer: String,
    pub connected_since: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub acked_version: String,
    /// When the agent last acknowledged a snapshot.
    pub last_ack: Option<Timestamp>,
    pub last_nack: Option<Nacked>,
    /// The agent acknowledged `Retire`: it no longer manages anything.
    pub retired: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Nacked {
    pub version: String,
    pub message: String,
    pub at: Timestamp,
    /// Some object exists on the remote without Tether's managed-by label.
    pub conflict: bool,
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

    pub fn update(&self, cluster: &str, f: impl FnOnce(&mut StreamState)) {
        let mut remotes = self.remotes.lock().expect("board lock");
        f(remotes.entry(cluster.to_string()).or_default());
        self.changed();
    }

    pub fn connected(&self, cluster: &str, agent_version: &str, peer: &str, applied_version: &str) {
        let now = Timestamp::now();
        self.update(cluster, |s| {
            if s.streams == 0 {
                s.connected_since = Some(now);
            }
            s.streams += 1;
            s.ever_connected = true;
            s.agent_version = agent_version.to_string();
            s.peer = peer.to_string();
            s.last_seen = Some(now);
            s.retired = false;
            if !applied_version.is_empty() {
                s.acked_version = applied_version.to_string();
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
                    "connectedSince": t(&s.connected_since),
                    "lastSeen": t(&s.last_seen),
                    "lastAck": t(&s.last_ack),
                    "ackedVersion": s.acked_version,
                    "lastNack": s.last_nack.as_ref().map(|n| serde_json::json!({"version": n.version, "message": n.message})),
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
        board.update("r1", |s| s.acked_version = "v1".into());
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
        board.connected("r1", "0.1.0", "127.0.0.1:1", "");
        board.connected("r1", "0.1.0", "127.0.0.1:2", "");
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
        board.connected("r1", "0.2.0", "p", "");
        board.seed("r1", Some(&status));
        assert_eq!(board.get("r1").agent_version, "0.2.0");
    }

    #[test]
    fn hello_applied_version_counts_as_acked() {
        let board = Board::default();
        board.connected("r1", "0.1.0", "p", "abc");
        assert_eq!(board.get("r1").acked_version, "abc");
    }
}
