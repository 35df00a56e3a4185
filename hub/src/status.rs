//! RemoteCluster status: computed from the index (desired state, spec errors) and the board (streams,
//! ACK/NACK), written with server-side apply on the status subresource under field manager `tether-hub`.
//! Coalesced: one pass every `interval` writes only the remotes whose status differs from what the API
//! server already has; a difference in versions and counts alone (pod churn: every remote's desired
//! version moves with each change) is written at most once per `refresh`, so churn costs O(remotes)
//! writes per refresh instead of per change. The same pass releases the
//! finalizer of deleted remotes once their agent acknowledged `Retire` (or the retire timeout passed).
//!
//! Cheap when nothing moves: a remote whose inputs (desired state, stream state, resourceVersion)
//! are those of a pass that had nothing to write is skipped, and a whole pass is skipped while the
//! index and board revisions stand still. Up to `concurrency` writes are in flight at once.

use crate::board::{Board, Duplicate, StreamState};
use crate::crd::{
    AgentStatus, FINALIZER, NackStatus, RemoteCluster, RemoteClusterStatus, SyncStatus,
};
use crate::index::{Desired, Index};
use crate::metrics::HubMetrics;
use crate::retire::Retirements;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tether_proto::retry::ApiRetry;
use tracing::warn;

pub const FIELD_MANAGER: &str = "tether-hub";

/// How long a refused second agent with the same identity keeps the remote reported as having two
/// agents. A standby agent asks again every 30 s by default, so this spans several refusals; an
/// admitted standby (the other agent is gone) ends it at once.
pub const DUPLICATE_MEMORY: std::time::Duration = std::time::Duration::from_secs(120);

/// The refused duplicate still worth reporting at `now`, and when it stops being so.
pub fn recent_duplicate(stream: &StreamState, now: Timestamp) -> Option<(&Duplicate, Timestamp)> {
    let d = stream.duplicate.as_ref()?;
    let until = d.at + DUPLICATE_MEMORY;
    (stream.streams > 0 && now < until).then_some((d, until))
}

/// The status `rc` should have at `now`. `previous` keeps condition transition times that did not
/// change.
pub fn compute(
    desired: &Desired,
    stream: &StreamState,
    previous: Option<&RemoteClusterStatus>,
    now: Timestamp,
) -> RemoteClusterStatus {
    let version = desired.version();
    let duplicate = recent_duplicate(stream, now).map(|(d, _)| d);
    let synced = !version.is_empty() && stream.acked_version == version;
    let nacked = stream
        .last_nack
        .as_ref()
        .filter(|n| n.version == version && !synced);
    let phase = if desired.snapshot.is_none() && !desired.errors.is_empty() {
        "Degraded"
    } else if !stream.ever_connected {
        "Pending"
    } else if stream.streams == 0 {
        "Disconnected"
    } else if nacked.is_some() || !desired.errors.is_empty() || duplicate.is_some() {
        "Degraded"
    } else if synced {
        "Synced"
    } else {
        "Connected"
    };
    let connected = if stream.streams > 0 {
        cond(
            "Connected",
            true,
            "AgentConnected",
            &format!(
                "agent {} connected from {}",
                stream.agent_version, stream.peer
            ),
        )
    } else if stream.ever_connected {
        cond(
            "Connected",
            false,
            "AgentDisconnected",
            "the agent's stream is closed",
        )
    } else {
        cond(
            "Connected",
            false,
            "NeverConnected",
            "no agent has connected for this cluster yet",
        )
    };
    let synced_cond = match (synced, nacked) {
        (true, _) => cond(
            "Synced",
            true,
            "Acked",
            &format!("agent applied version {version}"),
        ),
        (false, Some(n)) => {
            let reason = if n.conflict { "Conflict" } else { "Nacked" };
            cond("Synced", false, reason, &n.message)
        }
        (false, None) if version.is_empty() => {
            cond("Synced", false, "NoDesiredState", "nothing to send yet")
        }
        (false, None) => cond(
            "Synced",
            false,
            "Pending",
            &format!("waiting for the agent to apply version {version}"),
        ),
    };
    let empty: Vec<&str> = desired
        .snapshot
        .iter()
        .flat_map(|s| s.services.iter())
        .filter(|svc| svc.endpoints.is_empty())
        .map(|svc| svc.name.as_str())
        .collect();
    let spec = if desired.errors.is_empty() && empty.is_empty() {
        cond("SpecValid", true, "Valid", "spec computed")
    } else if desired.errors.is_empty() {
        // Valid, and mirrored as asked, but probably not what was meant: say so where people look.
        cond(
            "SpecValid",
            true,
            "NoEndpoints",
            &format!(
                "no running pod with an IP matches the selector of: {}; their mirrors have no endpoints",
                empty.join(", ")
            ),
        )
    } else {
        let kept = if desired.snapshot.is_some() {
            " (the previous spec stays in effect)"
        } else {
            ""
        };
        cond(
            "SpecValid",
            false,
            "Invalid",
            &format!("{}{kept}", desired.errors.join("; ")),
        )
    };
    let single = match duplicate {
        None => cond(
            "SingleAgent",
            true,
            "OneAgent",
            "one agent serves this cluster's identity",
        ),
        Some(d) => cond(
            "SingleAgent",
            false,
            "DuplicateAgent",
            &format!(
                "two agents share this cluster's identity: agent {} from {} serves; agent {} from {} was refused at {} and stands by. Stop one of them: each cluster needs its own name and certificate",
                stream.instance,
                stream.peer,
                d.instance,
                d.peer,
                time(d.at).0
            ),
        ),
    };
    let mut conditions = vec![connected, synced_cond, spec, single];
    for c in &mut conditions {
        c.observed_generation = Some(desired.generation);
        if let Some(old) = previous.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    RemoteClusterStatus {
        phase: Some(phase.into()),
        conditions,
        agent: stream.ever_connected.then(|| AgentStatus {
            version: stream.agent_version.clone(),
            peer: stream.peer.clone(),
            connected_since: stream.connected_since.map(time),
            last_seen: stream.last_seen.map(time),
        }),
        sync: Some(SyncStatus {
            desired_version: version.to_string(),
            acked_version: stream.acked_version.clone(),
            last_ack: stream.last_ack.map(time),
            last_nack: stream.last_nack.as_ref().map(|n| NackStatus {
                version: n.version.clone(),
                message: n.message.clone(),
                at: Some(time(n.at)),
            }),
            endpoints: desired.endpoints() as i32,
        }),
        observed_generation: Some(desired.generation),
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        // Replaced by the previous status's time when the status did not change.
        last_transition_time: time(Timestamp::now()),
        observed_generation: None,
    }
}

/// Whole seconds: what the API server stores, so a computed status compares equal to the stored one.
fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).expect("in range"))
}

/// The writer's memory of one remote.
#[derive(Default)]
pub struct Seen {
    /// When its status was last written.
    written: Option<Instant>,
    /// The inputs of the last pass that had nothing to write, and until when that holds (a deferred
    /// refresh falls due). A pass whose inputs are the same skips the remote: no status computed, no
    /// comparison. Holding the `Desired` keeps its address from being reused by a later one.
    settled: Option<Settled>,
}

struct Settled {
    desired: Arc<Desired>,
    stream: StreamState,
    resource_version: Option<String>,
    until: Option<Instant>,
}

impl Settled {
    fn holds(&self, desired: &Arc<Desired>, stream: &StreamState, rc: &RemoteCluster) -> bool {
        Arc::ptr_eq(&self.desired, desired)
            && self.stream == *stream
            && self.resource_version == rc.metadata.resource_version
            && self.until.is_none_or(|until| Instant::now() < until)
    }
}

/// What a pass did for one remote.
enum Visit {
    /// Nothing to write while its inputs stay the same; until the instant, if any (a deferred
    /// refresh falls due then).
    Settled(Option<Instant>),
    /// Wrote, or waits on time (a deleted remote's retire timeout): the next pass looks again.
    Busy,
}

/// The central API server did not answer, or answered that it cannot serve now (429, 5xx).
fn server_unavailable(error: &kube::Error) -> bool {
    match error {
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => false,
    }
}

/// Writes statuses and releases finalizers until the task is dropped.
pub struct StatusWriter {
    pub api: Api<RemoteCluster>,
    pub store: Store<RemoteCluster>,
    pub index: Arc<RwLock<Index>>,
    pub board: Arc<Board>,
    pub interval: Duration,
    /// Status writes in flight at once.
    pub concurrency: usize,
    /// Minimum time between writes of a status that only refreshes versions and counts.
    pub refresh: Duration,
    /// What the writer remembers of each remote between passes.
    pub seen: Mutex<HashMap<String, Seen>>,
    /// Finalizers and remembered retirements.
    pub retirements: Retirements,
    pub recorder: Recorder,
    pub metrics: HubMetrics,
}

impl StatusWriter {
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = ApiRetry::default();
        // The revisions (index, board) seen by the last pass that found every remote settled, and
        // the earliest deferred refresh then. While neither moves nor falls due, a pass would
        // compute what it computed before: skip it (an idle 10,000-remote hub spent ~9% of a core
        // on passes that found nothing to do).
        let mut quiet: Option<((u64, u64), Option<Instant>)> = None;
        loop {
            tick.tick().await;
            let inputs = (
                self.index.read().expect("index lock").revision(),
                self.board.revision(),
            );
            if let Some((seen, due)) = quiet
                && seen == inputs
                && due.is_none_or(|due| Instant::now() < due)
            {
                continue;
            }
            quiet = Some((inputs, None));
            let mut unreachable = None;
            let remotes = self.store.state();
            // A few writes in flight: one at a time, a 10,000-remote hub managed ~70 writes/s and its
            // statuses lagged minutes behind the streams under churn.
            let this = &self;
            let mut passes = futures::stream::iter(remotes.iter().cloned())
                .map(|rc| async move {
                    let result = this.reconcile(&rc).await;
                    (rc, result)
                })
                .buffer_unordered(self.concurrency.max(1));
            while let Some((rc, result)) = passes.next().await {
                match result {
                    Ok(Visit::Settled(until)) => {
                        if let Some((_, due)) = &mut quiet
                            && let Some(until) = until
                        {
                            *due = Some(due.map_or(until, |d| d.min(until)));
                        }
                    }
                    Ok(Visit::Busy) => quiet = None,
                    // No answer, or an overloaded server: the next writes would fail the same way.
                    // One warning, then wait.
                    Err(error) if server_unavailable(&error) => {
                        unreachable = Some(error);
                        quiet = None;
                        break;
                    }
                    // This object's trouble; the others go on.
                    Err(error) => {
                        quiet = None;
                        warn!(cluster = %rc.name_any(), %error, "status update failed; retrying next pass")
                    }
                }
            }
            drop(passes);
            self.forget_gone(&remotes);
            if unreachable.is_none() {
                match self
                    .retirements
                    .sweep(&self.index, &self.board, &remotes)
                    .await
                {
                    Ok(due) => {
                        if let (Some((_, quiet_due)), Some(due)) = (&mut quiet, due) {
                            *quiet_due = Some(quiet_due.map_or(due, |d| d.min(due)));
                        }
                    }
                    Err(error) if server_unavailable(&error) => {
                        unreachable = Some(error);
                        quiet = None;
                    }
                    Err(error) => {
                        quiet = None;
                        warn!(%error, "remembered retirements could not be updated; retrying next pass")
                    }
                }
            }
            match unreachable {
                None => retry.succeeded(),
                Some(error) => {
                    let wait = retry.failed(false);
                    warn!(%error, ?wait, "central API server unreachable; status writes paused");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn reconcile(&self, rc: &RemoteCluster) -> kube::Result<Visit> {
        let name = rc.name_any();
        let Some(desired) = self.index.read().expect("index lock").desired(&name) else {
            // The index has not seen it yet; its watch event will move the index revision.
            return Ok(Visit::Settled(None));
        };
        // A restarted hub knows nothing of the streams before it: start from what the status recorded,
        // so a remote reads Disconnected until its agent is back, not "never connected".
        self.board.seed(&name, rc.status.as_ref());
        let stream = self.board.get(&name);
        if rc.metadata.deletion_timestamp.is_some() {
            // Waits on the agent or on the retire timeout: look again next pass.
            if self.retirements.release(rc, &stream, &self.board).await? {
                self.seen.lock().expect("seen lock").remove(&name);
            }
            return Ok(Visit::Busy);
        }
        if !rc.finalizers().iter().any(|f| f == FINALIZER) {
            let mut finalizers = rc.finalizers().to_vec();
            finalizers.push(FINALIZER.into());
            let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": rc.resource_version()}});
            self.api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let settled = |until| Settled {
            desired: desired.clone(),
            stream: stream.clone(),
            resource_version: rc.metadata.resource_version.clone(),
            until,
        };
        {
            let mut seen = self.seen.lock().expect("seen lock");
            let seen = seen.entry(name.clone()).or_default();
            if let Some(settled) = &seen.settled
                && settled.holds(&desired, &stream, rc)
            {
                return Ok(Visit::Settled(settled.until));
            }
        }
        let now = Timestamp::now();
        let status = compute(&desired, &stream, rc.status.as_ref(), now);
        // A reported duplicate expires with time, not with an input: look again then.
        let expires = recent_duplicate(&stream, now)
            .map(|(_, until)| Instant::now() + now.duration_until(until).unsigned_abs());
        if let Some(old) = rc.status.as_ref() {
            let mut seen = self.seen.lock().expect("seen lock");
            let seen = seen.entry(name.clone()).or_default();
            if same_status(old, &status) {
                seen.settled = Some(settled(expires));
                return Ok(Visit::Settled(expires));
            }
            let due = seen.written.map(|at| at + self.refresh);
            if due.is_some_and(|due| Instant::now() < due) && !significant(old, &status) {
                let until = match (due, expires) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                seen.settled = Some(settled(until));
                return Ok(Visit::Settled(until));
            }
        }
        let patch = serde_json::json!({
            "apiVersion": "tether.io/v1alpha1", "kind": "RemoteCluster", "status": status,
        });
        self.api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.metrics.status_writes.inc();
        {
            let mut seen = self.seen.lock().expect("seen lock");
            let seen = seen.entry(name.clone()).or_default();
            seen.written = Some(Instant::now());
            // Until the watch brings the written object (a new resourceVersion), these inputs need
            // nothing more: without this a lagging watch made the next pass write the same again.
            seen.settled = Some(settled(expires));
        }
        for event in transitions(rc.status.as_ref(), &status) {
            // Events are for people; failing to record one never blocks status.
            if let Err(error) = self.recorder.publish(&event, &rc.object_ref(&())).await {
                warn!(cluster = %name, %error, "could not record event");
            }
        }
        Ok(Visit::Busy)
    }

    /// Drops what the writer remembers of remotes no longer in the store (deleted without the
    /// finalizer's help).
    fn forget_gone(&self, remotes: &[Arc<RemoteCluster>]) {
        let mut seen = self.seen.lock().expect("seen lock");
        if seen.len() > remotes.len() {
            let names: HashSet<String> = remotes.iter().map(|rc| rc.name_any()).collect();
            seen.retain(|name, _| names.contains(name));
        }
    }
}

/// Events for what changed between two statuses: agent connected or disconnected, a new spec problem
/// (invalid, or a mirror with no endpoints), a new NACK.
pub fn transitions(old: Option<&RemoteClusterStatus>, new: &RemoteClusterStatus) -> Vec<Event> {
    let cond = |s: Option<&RemoteClusterStatus>, t: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let mut events = Vec::new();
    let (was, now) = (cond(old, "Connected"), cond(Some(new), "Connected"));
    if was.as_ref().map(|c| &c.0) != now.as_ref().map(|c| &c.0)
        && let Some((status, reason, message)) = now
        && reason != "NeverConnected"
    {
        let type_ = if status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        events.push(Event {
            type_,
            reason,
            note: Some(message),
            action: "Stream".into(),
            secondary: None,
        });
    }
    let (was, now) = (cond(old, "SpecValid"), cond(Some(new), "SpecValid"));
    if was != now
        && let Some((_, reason, message)) = now
        && reason != "Valid"
    {
        events.push(Event {
            type_: EventType::Warning,
            reason,
            note: Some(message.chars().take(1000).collect()),
            action: "ComputeSpec".into(),
            secondary: None,
        });
    }
    let (was, now) = (cond(old, "SingleAgent"), cond(Some(new), "SingleAgent"));
    if was.as_ref().map(|c| &c.0) != now.as_ref().map(|c| &c.0)
        && let Some((status, reason, message)) = now
        && status == "False"
    {
        events.push(Event {
            type_: EventType::Warning,
            reason,
            note: Some(message.chars().take(1000).collect()),
            action: "Stream".into(),
            secondary: None,
        });
    }
    let nack = |s: Option<&RemoteClusterStatus>| {
        s.and_then(|s| s.sync.as_ref())
            .and_then(|s| s.last_nack.clone())
    };
    if let Some(n) = nack(Some(new))
        && nack(old) != Some(n.clone())
    {
        let reason = cond(Some(new), "Synced")
            .map(|c| c.1)
            .filter(|r| r == "Conflict")
            .unwrap_or_else(|| "Nacked".into());
        let note = format!("agent rejected version {}: {}", n.version, n.message);
        // The API server caps an event note at 1 KiB.
        let note: String = note.chars().take(1000).collect();
        events.push(Event {
            type_: EventType::Warning,
            reason,
            note: Some(note),
            action: "Apply".into(),
            secondary: None,
        });
    }
    events
}

/// A change someone watching must see at once: phase, a condition's status or reason, the spec
/// generation answered, the agent's connection, a new NACK. Versions, the endpoint count and the last
/// ACK time alone can wait for the refresh.
pub fn significant(old: &RemoteClusterStatus, new: &RemoteClusterStatus) -> bool {
    let conditions = |s: &RemoteClusterStatus| -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    };
    let agent = |s: &RemoteClusterStatus| {
        s.agent
            .as_ref()
            .map(|a| (a.peer.clone(), a.version.clone(), a.connected_since.clone()))
    };
    let nack = |s: &RemoteClusterStatus| s.sync.as_ref().and_then(|x| x.last_nack.clone());
    old.phase != new.phase
        || conditions(old) != conditions(new)
        || old.observed_generation != new.observed_generation
        || agent(old) != agent(new)
        || nack(old) != nack(new)
}

/// Equal as the API server would store them.
fn same_status(a: &RemoteClusterStatus, b: &RemoteClusterStatus) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Nacked;
    use tether_proto::v1::Snapshot;

    #[test]
    fn only_an_unavailable_server_pauses_all_status_writes() {
        let answered = |code| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "y").with_code(code),
            ))
        };
        assert!(server_unavailable(&answered(503)));
        assert!(server_unavailable(&answered(429)));
        assert!(
            !server_unavailable(&answered(409)),
            "a conflict is one object's"
        );
        assert!(
            !server_unavailable(&answered(422)),
            "an invalid status is one object's"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(server_unavailable(&kube::Error::Service(Box::new(refused))));
        let bad_json = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(!server_unavailable(&kube::Error::SerdeError(bad_json)));
    }

    fn desired(version: &str) -> Desired {
        Desired {
            snapshot: Some(Arc::new(Snapshot {
                version: version.into(),
                ..Default::default()
            })),
            generation: 3,
            ..Default::default()
        }
    }

    fn connected(acked: &str) -> StreamState {
        StreamState {
            streams: 1,
            ever_connected: true,
            acked_version: acked.into(),
            ..Default::default()
        }
    }

    fn phase(d: &Desired, s: &StreamState) -> String {
        compute(d, s, None, Timestamp::now()).phase.unwrap()
    }

    #[test]
    fn phases() {
        assert_eq!(phase(&desired("v1"), &StreamState::default()), "Pending");
        assert_eq!(phase(&desired("v1"), &connected("")), "Connected");
        assert_eq!(phase(&desired("v1"), &connected("v1")), "Synced");
        assert_eq!(phase(&desired("v2"), &connected("v1")), "Connected");
        let mut gone = connected("v1");
        gone.streams = 0;
        assert_eq!(phase(&desired("v1"), &gone), "Disconnected");
        let mut nacked = connected("v1");
        nacked.last_nack = Some(Nacked {
            version: "v2".into(),
            message: "x".into(),
            at: Timestamp::now(),
            conflict: true,
        });
        assert_eq!(phase(&desired("v2"), &nacked), "Degraded");
        let status = compute(&desired("v2"), &nacked, None, Timestamp::now());
        let synced = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Synced")
            .unwrap();
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "Conflict")
        );
    }

    #[test]
    fn a_refused_second_agent_degrades_and_is_named_until_it_is_old_news() {
        let mut s = connected("v1");
        s.instance = "aaaa".into();
        s.peer = "10.0.0.1:1".into();
        let at = Timestamp::now();
        s.duplicate = Some(Duplicate {
            peer: "10.0.0.2:2".into(),
            instance: "bbbb".into(),
            at,
        });
        let status = compute(&desired("v1"), &s, None, at);
        assert_eq!(status.phase.as_deref(), Some("Degraded"));
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "SingleAgent")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DuplicateAgent")
        );
        assert!(
            c.message.contains("bbbb") && c.message.contains("10.0.0.2:2"),
            "{}",
            c.message
        );
        let events = transitions(
            Some(&compute(&desired("v1"), &connected("v1"), None, at)),
            &status,
        );
        assert!(events.iter().any(|e| e.reason == "DuplicateAgent"));
        let later = compute(&desired("v1"), &s, Some(&status), at + DUPLICATE_MEMORY);
        assert_eq!(
            later.phase.as_deref(),
            Some("Synced"),
            "forgotten after the memory"
        );
    }

    #[test]
    fn spec_errors_show_in_spec_valid_and_degrade() {
        let mut d = desired("v1");
        d.errors = vec!["service \"nope\": no such Service".into()];
        let status = compute(&d, &connected("v1"), None, Timestamp::now());
        assert_eq!(status.phase.as_deref(), Some("Degraded"));
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "SpecValid")
            .unwrap();
        assert_eq!(c.status, "False");
        assert!(c.message.contains("nope") && c.message.contains("previous spec"));
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let first = compute(&desired("v1"), &connected("v1"), None, Timestamp::now());
        let second = compute(
            &desired("v1"),
            &connected("v1"),
            Some(&first),
            Timestamp::now(),
        );
        assert!(same_status(&first, &second));
    }

    #[test]
    fn a_mirror_without_endpoints_is_named_and_announced_once() {
        let mut d = desired("v1");
        d.snapshot = Some(Arc::new(Snapshot {
            version: "v1".into(),
            services: vec![tether_proto::v1::Service {
                name: "istiod-canary".into(),
                ..Default::default()
            }],
            ..Default::default()
        }));
        let status = compute(&d, &connected("v1"), None, Timestamp::now());
        assert_eq!(status.phase.as_deref(), Some("Synced"), "valid and applied");
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "SpecValid")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "NoEndpoints")
        );
        assert!(c.message.contains("istiod-canary"));
        let before = compute(&desired("v1"), &connected("v1"), None, Timestamp::now());
        let events = transitions(Some(&before), &status);
        assert_eq!(
            events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            ["NoEndpoints"]
        );
        assert!(transitions(Some(&status), &status).is_empty(), "once");
    }

    #[test]
    fn only_phase_condition_connection_and_nack_changes_are_significant() {
        let v1 = compute(&desired("v1"), &connected("v1"), None, Timestamp::now());
        let v2 = compute(
            &desired("v2"),
            &connected("v2"),
            Some(&v1),
            Timestamp::now(),
        );
        assert!(!significant(&v1, &v2), "Synced v1 -> Synced v2 can wait");
        // Waiting for the agent is a phase of its own (Connected): shown at once.
        let pending = compute(
            &desired("v3"),
            &connected("v2"),
            Some(&v2),
            Timestamp::now(),
        );
        assert!(significant(&v2, &pending));
        let mut gone = connected("v2");
        gone.streams = 0;
        let disconnected = compute(&desired("v2"), &gone, Some(&v2), Timestamp::now());
        assert!(significant(&v2, &disconnected));
    }
}
