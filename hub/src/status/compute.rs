//! The RemoteCluster status a remote should have, from its desired state and its stream state: pure
//! functions. Which status changes are worth writing at once, and which Events they raise.

use crate::crd::condition::{self, reason};
use crate::crd::{AgentStatus, NackStatus, Phase, RemoteClusterStatus, SyncStatus};
use crate::desired::Desired;
use crate::streams::{Duplicate, StreamState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use std::time::Duration;

/// How long a refused second agent with the same identity keeps the remote reported as having two
/// agents. A standby agent asks again every 30 s by default, so this spans several refusals; an
/// admitted standby (the other agent is gone) ends it at once.
pub const DUPLICATE_MEMORY: Duration = Duration::from_secs(120);

/// How long after the agent's stream connects a missing API-access tunnel is still expected (the
/// agent dials both at start; the tunnel may come a moment later).
pub const TUNNEL_GRACE: Duration = Duration::from_secs(10);

/// What the hub knows of a remote's API access, beyond its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiInput {
    /// `apiAccess.enabled` is not set: no condition.
    Disabled,
    /// Enabled, but this hub serves no API endpoint.
    HubNotServing,
    Serving {
        /// The agent's tunnel is up.
        tunnel_up: bool,
        /// Why the remote secret could not be written, if it could not.
        secret_problem: Option<String>,
        /// The remote secret's `namespace/name`.
        secret: String,
    },
}

/// The refused duplicate still worth reporting at `now`, and when it stops being so.
pub fn recent_duplicate(stream: &StreamState, now: Timestamp) -> Option<(&Duplicate, Timestamp)> {
    let d = stream.duplicate.as_ref()?;
    let until = d.at + DUPLICATE_MEMORY;
    (stream.streams > 0 && now < until).then_some((d, until))
}

/// What this hub knows of the remote's agent, or, for an agent it has not seen since it started,
/// what the status recorded: a restarted hub shows a remote whose agent is still away as
/// Disconnected (with its last ACK), not as never connected.
fn known(stream: &StreamState, recorded: Option<&RemoteClusterStatus>) -> StreamState {
    if stream.ever_connected {
        return stream.clone();
    }
    let Some(agent) = recorded.and_then(|r| r.agent.as_ref()) else {
        return stream.clone();
    };
    StreamState {
        ever_connected: true,
        agent_version: agent.version.clone(),
        peer: agent.peer.clone(),
        last_seen: agent.last_seen.as_ref().map(|t| t.0),
        ..stream.clone()
    }
}

/// Until when a remote whose agent has not acknowledged the hub's newest state still counts as
/// Synced: `deadline` after it last held the hub's state of that moment, while it is connected and
/// has not rejected the newest one. None: it acknowledged the newest, or it no longer counts.
pub fn synced_until(
    desired: &Desired,
    stream: &StreamState,
    now: Timestamp,
    deadline: Duration,
) -> Option<Timestamp> {
    let version = desired.version();
    if version.is_empty() || stream.acked_version == version || stream.acked_version.is_empty() {
        return None;
    }
    if stream.streams == 0
        || stream
            .last_nack
            .as_ref()
            .is_some_and(|n| n.version == version)
    {
        return None;
    }
    let until = stream.caught_up_at? + deadline;
    (now < until).then_some(until)
}

/// The status a remote should have at `now`. `previous` (the status as stored) keeps the transition
/// times of conditions that did not change, and stands in for an agent this hub has not seen yet.
/// `deadline`: how long the agent may take to acknowledge a newer state and still count as Synced.
pub fn compute(
    desired: &Desired,
    stream: &StreamState,
    api: &ApiInput,
    previous: Option<&RemoteClusterStatus>,
    now: Timestamp,
    deadline: Duration,
) -> RemoteClusterStatus {
    let stream = &known(stream, previous);
    let version = desired.version();
    let duplicate = recent_duplicate(stream, now).map(|(d, _)| d);
    let synced = !version.is_empty()
        && (stream.acked_version == version
            || synced_until(desired, stream, now, deadline).is_some());
    let nacked = stream
        .last_nack
        .as_ref()
        .filter(|n| n.version == version && !synced);
    let phase = if desired.snapshot.is_none() && !desired.errors.is_empty() {
        Phase::Degraded
    } else if !stream.ever_connected {
        Phase::Pending
    } else if stream.streams == 0 {
        Phase::Disconnected
    } else if nacked.is_some() || !desired.errors.is_empty() || duplicate.is_some() {
        Phase::Degraded
    } else if synced {
        Phase::Synced
    } else {
        Phase::Connected
    };
    let connected = if stream.streams > 0 {
        let msg = format!(
            "agent {} connected from {}",
            stream.agent_version, stream.peer
        );
        cond(condition::CONNECTED, true, reason::AGENT_CONNECTED, &msg)
    } else if stream.ever_connected {
        let msg = "the agent's stream is closed";
        cond(condition::CONNECTED, false, reason::AGENT_DISCONNECTED, msg)
    } else {
        let msg = "no agent has connected for this cluster yet";
        cond(condition::CONNECTED, false, reason::NEVER_CONNECTED, msg)
    };
    let synced_cond = match (synced, nacked) {
        (true, _) => cond(
            condition::SYNCED,
            true,
            reason::ACKED,
            "the agent holds the hub's desired state",
        ),
        (false, Some(n)) => {
            let why = if n.conflict {
                reason::CONFLICT
            } else {
                reason::NACKED
            };
            cond(condition::SYNCED, false, why, &n.message)
        }
        (false, None) if version.is_empty() => cond(
            condition::SYNCED,
            false,
            reason::NO_DESIRED_STATE,
            "nothing to send yet",
        ),
        (false, None) if stream.caught_up_at.is_some() && stream.streams > 0 => {
            let msg = format!(
                "the agent has not acknowledged the hub's desired state for over {}s",
                deadline.as_secs_f64()
            );
            cond(condition::SYNCED, false, reason::PENDING, &msg)
        }
        (false, None) => cond(
            condition::SYNCED,
            false,
            reason::PENDING,
            "waiting for the agent to apply the hub's desired state",
        ),
    };
    let mut conditions = vec![
        connected,
        synced_cond,
        spec_valid(desired),
        single_agent(stream, duplicate),
    ];
    conditions.extend(api_access(api, stream, now));
    for c in &mut conditions {
        c.observed_generation = Some(desired.generation);
        if let Some(old) = previous.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    RemoteClusterStatus {
        phase: Some(phase),
        conditions,
        agent: stream.ever_connected.then(|| AgentStatus {
            version: stream.agent_version.clone(),
            peer: stream.peer.clone(),
            connected_since: stream.connected_since.map(time),
            // While connected it moves with every ACK: the live view has it.
            last_seen: stream.last_seen.filter(|_| stream.streams == 0).map(time),
            // Which replica writes is the writer's decision (replicas::decide); kept as recorded.
            hub: previous
                .and_then(|p| p.agent.as_ref())
                .map(|a| a.hub.clone())
                .unwrap_or_default(),
        }),
        sync: Some(SyncStatus {
            last_nack: stream.last_nack.as_ref().map(|n| NackStatus {
                version: n.version.clone(),
                message: n.message.clone(),
                at: Some(time(n.at)),
            }),
            endpoint_source: desired.source.clone(),
        }),
        observed_generation: Some(desired.generation),
    }
}

fn spec_valid(desired: &Desired) -> Condition {
    let empty: Vec<&str> = desired
        .snapshot
        .iter()
        .flat_map(|s| s.services.iter())
        .filter(|svc| svc.endpoints.is_empty() && svc.external_name.is_empty())
        .map(|svc| svc.name.as_str())
        .collect();
    if desired.errors.is_empty() && empty.is_empty() {
        cond(condition::SPEC_VALID, true, reason::VALID, "spec computed")
    } else if desired.errors.is_empty() {
        // Valid, and mirrored as asked, but probably not what was meant: say so where people look.
        let msg = format!(
            "no running pod with an IP matches the selector of: {}; their mirrors have no endpoints",
            empty.join(", ")
        );
        cond(condition::SPEC_VALID, true, reason::NO_ENDPOINTS, &msg)
    } else {
        let kept = if desired.snapshot.is_some() {
            " (the previous spec stays in effect)"
        } else {
            ""
        };
        let msg = format!("{}{kept}", desired.errors.join("; "));
        // A gateway that is missing or has no address yet is no mistake in the spec: say which.
        let waiting = desired
            .errors
            .iter()
            .all(|e| e.contains(crate::snapshot::GATEWAY_NOT_READY));
        let why = if waiting {
            reason::GATEWAY_NOT_READY
        } else {
            reason::INVALID
        };
        cond(condition::SPEC_VALID, false, why, &msg)
    }
}

/// Until when a missing tunnel is still expected, when it is.
pub fn tunnel_expected_until(
    api: &ApiInput,
    stream: &StreamState,
    now: Timestamp,
) -> Option<Timestamp> {
    let ApiInput::Serving {
        tunnel_up: false, ..
    } = api
    else {
        return None;
    };
    let until = stream.connected_since? + TUNNEL_GRACE;
    (stream.streams > 0 && now < until).then_some(until)
}

fn api_access(api: &ApiInput, stream: &StreamState, now: Timestamp) -> Option<Condition> {
    use condition::API_ACCESS;
    let c = match api {
        ApiInput::Disabled => return None,
        ApiInput::HubNotServing => cond(
            API_ACCESS,
            false,
            reason::HUB_NOT_SERVING,
            "apiAccess.enabled, but this hub serves no API endpoint: start it with --api-addr and --api-advertise (hub chart value apiAccess.enabled)",
        ),
        ApiInput::Serving {
            secret_problem: Some(problem),
            ..
        } => cond(API_ACCESS, false, reason::REMOTE_SECRET_BLOCKED, problem),
        ApiInput::Serving {
            tunnel_up: true,
            secret,
            ..
        } => {
            let msg = format!(
                "istiod reaches this cluster's API server through its agent (remote secret {secret})"
            );
            cond(API_ACCESS, true, reason::READY, &msg)
        }
        ApiInput::Serving { .. } if stream.streams == 0 => cond(
            API_ACCESS,
            false,
            reason::AGENT_DISCONNECTED,
            "the agent is not connected: istiod's requests for this cluster are answered 503",
        ),
        ApiInput::Serving { .. } if tunnel_expected_until(api, stream, now).is_some() => cond(
            API_ACCESS,
            false,
            reason::TUNNEL_PENDING,
            "waiting for the agent's API-access tunnel",
        ),
        ApiInput::Serving { .. } => cond(
            API_ACCESS,
            false,
            reason::NO_TUNNEL,
            "the agent is connected but has opened no API-access tunnel: run it with --api-access (agent chart value apiAccess.enabled)",
        ),
    };
    Some(c)
}

fn single_agent(stream: &StreamState, duplicate: Option<&Duplicate>) -> Condition {
    match duplicate {
        None => cond(
            condition::SINGLE_AGENT,
            true,
            reason::ONE_AGENT,
            "one agent serves this cluster's identity",
        ),
        Some(d) => {
            let msg = format!(
                "two agents share this cluster's identity: agent {} from {} serves; agent {} from {} was refused at {} and stands by. Stop one of them: each cluster needs its own name and certificate",
                stream.instance,
                stream.peer,
                d.instance,
                d.peer,
                time(d.at).0
            );
            cond(
                condition::SINGLE_AGENT,
                false,
                reason::DUPLICATE_AGENT,
                &msg,
            )
        }
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        // Replaced by the stored status's time when the condition's status did not change.
        last_transition_time: time(Timestamp::now()),
        observed_generation: None,
    }
}

/// Whole seconds: what the API server stores, so a computed status compares equal to the stored one.
pub fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).expect("in range"))
}

fn find<'a>(s: Option<&'a RemoteClusterStatus>, type_: &str) -> Option<&'a Condition> {
    s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Events for what changed between two statuses: agent connected or disconnected, a new spec problem
/// (invalid, or a mirror with no endpoints), a second agent, a new NACK.
pub fn transitions(old: Option<&RemoteClusterStatus>, new: &RemoteClusterStatus) -> Vec<Event> {
    let status_of = |s, t| find(s, t).map(|c| c.status.clone());
    let mut events = Vec::new();
    let event = |type_, c: &Condition, action: &str| Event {
        type_,
        reason: c.reason.clone(),
        // The API server caps an event note at 1 KiB.
        note: Some(c.message.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if status_of(old, condition::CONNECTED) != status_of(Some(new), condition::CONNECTED)
        && let Some(c) = find(Some(new), condition::CONNECTED)
        && c.reason != reason::NEVER_CONNECTED
    {
        let type_ = if c.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        events.push(event(type_, c, "Stream"));
    }
    let whole = |s, t| find(s, t).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    if whole(old, condition::SPEC_VALID) != whole(Some(new), condition::SPEC_VALID)
        && let Some(c) = find(Some(new), condition::SPEC_VALID)
        && c.reason != reason::VALID
    {
        events.push(event(EventType::Warning, c, "ComputeSpec"));
    }
    // The gateway is back: say so where the warning was.
    if find(old, condition::SPEC_VALID).is_some_and(|c| c.reason == reason::GATEWAY_NOT_READY)
        && let Some(c) = find(Some(new), condition::SPEC_VALID)
        && c.reason != reason::GATEWAY_NOT_READY
        && c.status == "True"
    {
        events.push(event(EventType::Normal, c, "ComputeSpec"));
    }
    if status_of(old, condition::SINGLE_AGENT) != status_of(Some(new), condition::SINGLE_AGENT)
        && let Some(c) = find(Some(new), condition::SINGLE_AGENT)
        && c.status == "False"
    {
        events.push(event(EventType::Warning, c, "Stream"));
    }
    // API access: a problem of its own (not the agent's disconnect, which has its event), and every
    // return to Ready.
    let problem = |c: &Condition| {
        c.status == "False"
            && c.reason != reason::AGENT_DISCONNECTED
            && c.reason != reason::TUNNEL_PENDING
    };
    if whole(old, condition::API_ACCESS) != whole(Some(new), condition::API_ACCESS)
        && let Some(c) = find(Some(new), condition::API_ACCESS)
    {
        if problem(c) {
            events.push(event(EventType::Warning, c, "APIAccess"));
        } else if c.status == "True"
            && find(old, condition::API_ACCESS).is_some_and(|o| o.status != "True")
        {
            // Ready again (also after a reconnect that passed through a pending state: the
            // recovery from a problem must not depend on which states the writer saw between).
            events.push(event(EventType::Normal, c, "APIAccess"));
        }
    }
    let nack = |s: Option<&RemoteClusterStatus>| {
        s.and_then(|s| s.sync.as_ref())
            .and_then(|s| s.last_nack.clone())
    };
    if let Some(n) = nack(Some(new))
        && nack(old) != Some(n.clone())
    {
        let reason = find(Some(new), condition::SYNCED)
            .map(|c| c.reason.clone())
            .filter(|r| r == reason::CONFLICT)
            .unwrap_or_else(|| reason::NACKED.into());
        let note = format!("agent rejected version {}: {}", n.version, n.message);
        events.push(Event {
            type_: EventType::Warning,
            reason,
            note: Some(note.chars().take(1000).collect()),
            action: "Apply".into(),
            secondary: None,
        });
    }
    events
}

/// A change someone watching must see at once: phase, a condition's status or reason, the spec
/// generation answered, the replica that writes it, a new NACK. The agent's address, version and
/// connection time (a reconnect within the grace), and condition messages alone, wait for the refresh
/// and the write budget.
pub fn significant(old: &RemoteClusterStatus, new: &RemoteClusterStatus) -> bool {
    let conditions = |s: &RemoteClusterStatus| -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    };
    let agent = |s: &RemoteClusterStatus| s.agent.as_ref().map(|a| a.hub.clone());
    let nack = |s: &RemoteClusterStatus| s.sync.as_ref().and_then(|x| x.last_nack.clone());
    old.phase != new.phase
        || conditions(old) != conditions(new)
        || old.observed_generation != new.observed_generation
        || agent(old) != agent(new)
        || nack(old) != nack(new)
}

/// Equal as the API server would store them. Field by field first: times are whole seconds on both
/// sides ([`time`]), so a status that did not change compares equal without being serialised (the
/// status writer asks this of every remote after every central change). Only statuses that differ
/// as values are compared as the JSON the API server would keep (an empty list and none, say).
pub fn same_status(a: &RemoteClusterStatus, b: &RemoteClusterStatus) -> bool {
    a == b || serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mk_desired as desired;
    use crate::streams::Nacked;
    use std::sync::Arc;
    use tether_proto::v1::Snapshot;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn connected(acked: &str) -> StreamState {
        StreamState {
            streams: 1,
            ever_connected: true,
            acked_version: acked.into(),
            ..Default::default()
        }
    }

    /// The status now, without API access and without a stored status.
    fn fresh(d: &Desired, s: &StreamState) -> RemoteClusterStatus {
        compute(d, s, &ApiInput::Disabled, None, Timestamp::now(), DEADLINE)
    }

    fn phase(d: &Desired, s: &StreamState) -> Phase {
        compute(d, s, &ApiInput::Disabled, None, Timestamp::now(), DEADLINE)
            .phase
            .unwrap()
    }

    #[test]
    fn phases() {
        assert_eq!(
            phase(&desired("v1"), &StreamState::default()),
            Phase::Pending
        );
        assert_eq!(phase(&desired("v1"), &connected("")), Phase::Connected);
        assert_eq!(phase(&desired("v1"), &connected("v1")), Phase::Synced);
        assert_eq!(phase(&desired("v2"), &connected("v1")), Phase::Connected);
        let mut gone = connected("v1");
        gone.streams = 0;
        assert_eq!(phase(&desired("v1"), &gone), Phase::Disconnected);
        let mut nacked = connected("v1");
        nacked.last_nack = Some(Nacked {
            version: "v2".into(),
            message: "x".into(),
            at: Timestamp::now(),
            conflict: true,
        });
        assert_eq!(phase(&desired("v2"), &nacked), Phase::Degraded);
        let status = fresh(&desired("v2"), &nacked);
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
        let status = compute(&desired("v1"), &s, &ApiInput::Disabled, None, at, DEADLINE);
        assert_eq!(status.phase, Some(Phase::Degraded));
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
            Some(&compute(
                &desired("v1"),
                &connected("v1"),
                &ApiInput::Disabled,
                None,
                at,
                DEADLINE,
            )),
            &status,
        );
        assert!(events.iter().any(|e| e.reason == "DuplicateAgent"));
        let later = compute(
            &desired("v1"),
            &s,
            &ApiInput::Disabled,
            Some(&status),
            at + DUPLICATE_MEMORY,
            DEADLINE,
        );
        assert_eq!(
            later.phase,
            Some(Phase::Synced),
            "forgotten after the memory"
        );
    }

    #[test]
    fn spec_errors_show_in_spec_valid_and_degrade() {
        let mut d = desired("v1");
        d.errors = vec!["service \"nope\": no such Service".into()];
        let status = fresh(&d, &connected("v1"));
        assert_eq!(status.phase, Some(Phase::Degraded));
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
    fn a_gateway_not_ready_is_its_own_reason_with_a_warning_then_a_recovery_event() {
        let mut d = desired("v1");
        d.errors = vec![format!(
            "service \"istiod\": {}Service \"eastwest\" not found",
            crate::snapshot::GATEWAY_NOT_READY
        )];
        let before = fresh(&desired("v1"), &connected("v1"));
        let waiting = fresh(&d, &connected("v1"));
        let c = waiting
            .conditions
            .iter()
            .find(|c| c.type_ == "SpecValid")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "GatewayNotReady")
        );
        let reasons = |es: &[Event]| es.iter().map(|e| e.reason.clone()).collect::<Vec<_>>();
        let warned = transitions(Some(&before), &waiting);
        assert!(
            warned.iter().any(|e| e.reason == "GatewayNotReady"),
            "{:?}",
            reasons(&warned)
        );
        let back = transitions(Some(&waiting), &before);
        assert!(
            back.iter()
                .any(|e| e.reason == "Valid" && e.type_ == EventType::Normal),
            "{:?}",
            reasons(&back)
        );
        // A spec mistake beside it is a spec mistake.
        d.errors.push("service \"nope\": no such Service".into());
        let c = fresh(&d, &connected("v1")).conditions;
        assert_eq!(
            c.iter().find(|c| c.type_ == "SpecValid").unwrap().reason,
            "Invalid"
        );
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let first = fresh(&desired("v1"), &connected("v1"));
        let second = compute(
            &desired("v1"),
            &connected("v1"),
            &ApiInput::Disabled,
            Some(&first),
            Timestamp::now(),
            DEADLINE,
        );
        assert!(same_status(&first, &second));
    }

    #[test]
    fn same_status_is_equality_as_stored() {
        let stored = fresh(&desired("v1"), &connected("v1"));
        // Equal field by field: the common case, answered without serialising.
        assert!(same_status(&stored, &stored.clone()));
        // Times the API server would keep at whole seconds: equal as stored, not as values.
        let mut precise = stored.clone();
        let t = &mut precise.conditions[0].last_transition_time.0;
        *t = t
            .checked_add(k8s_openapi::jiff::SignedDuration::from_millis(250))
            .unwrap();
        assert_ne!(precise, stored);
        assert!(same_status(&precise, &stored));
        let mut other = stored.clone();
        other.conditions[0].message.push_str(" (changed)");
        assert!(!same_status(&other, &stored));
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
        let status = fresh(&d, &connected("v1"));
        assert_eq!(status.phase, Some(Phase::Synced), "valid and applied");
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
        let before = fresh(&desired("v1"), &connected("v1"));
        let events = transitions(Some(&before), &status);
        assert_eq!(
            events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            ["NoEndpoints"]
        );
        assert!(transitions(Some(&status), &status).is_empty(), "once");
    }

    #[test]
    fn only_phase_condition_connection_and_nack_changes_are_significant() {
        let v1 = fresh(&desired("v1"), &connected("v1"));
        let v2 = compute(
            &desired("v2"),
            &connected("v2"),
            &ApiInput::Disabled,
            Some(&v1),
            Timestamp::now(),
            DEADLINE,
        );
        assert!(!significant(&v1, &v2), "Synced v1 -> Synced v2 can wait");
        // Waiting for the agent is a phase of its own (Connected): shown at once.
        let pending = compute(
            &desired("v3"),
            &connected("v2"),
            &ApiInput::Disabled,
            Some(&v2),
            Timestamp::now(),
            DEADLINE,
        );
        assert!(significant(&v2, &pending));
        let mut gone = connected("v2");
        gone.streams = 0;
        let disconnected = compute(
            &desired("v2"),
            &gone,
            &ApiInput::Disabled,
            Some(&v2),
            Timestamp::now(),
            DEADLINE,
        );
        assert!(significant(&v2, &disconnected));
    }

    #[test]
    fn a_newer_state_on_its_way_stays_synced_until_the_deadline_and_churn_changes_nothing() {
        let t0 = Timestamp::now();
        let mut s = connected("v1");
        s.caught_up_at = Some(t0);
        let synced = compute(&desired("v1"), &s, &ApiInput::Disabled, None, t0, DEADLINE);
        let at = |secs: i64| t0 + Duration::from_secs(secs as u64);
        let on_its_way = compute(
            &desired("v2"),
            &s,
            &ApiInput::Disabled,
            Some(&synced),
            at(9),
            DEADLINE,
        );
        assert_eq!(on_its_way.phase, Some(Phase::Synced));
        assert!(
            same_status(&synced, &on_its_way),
            "a new central state writes nothing while the agent keeps up"
        );
        let text = serde_json::to_string(&on_its_way).unwrap();
        assert!(
            !text.contains("\"v1\"") && !text.contains("\"v2\""),
            "{text}"
        );
        assert_eq!(
            synced_until(&desired("v2"), &s, at(9), DEADLINE),
            Some(t0 + DEADLINE)
        );
        // Behind for the deadline: Connected, at once.
        let behind = compute(
            &desired("v2"),
            &s,
            &ApiInput::Disabled,
            Some(&synced),
            at(10),
            DEADLINE,
        );
        assert_eq!(behind.phase, Some(Phase::Connected));
        assert!(significant(&synced, &behind));
        let c = behind
            .conditions
            .iter()
            .find(|c| c.type_ == "Synced")
            .unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Pending"));
        assert!(c.message.contains("over 10s"), "{}", c.message);
        // A rejection of the newest state, or a closed stream, ends it before the deadline.
        let mut refused = s.clone();
        refused.last_nack = Some(Nacked {
            version: "v2".into(),
            message: "no".into(),
            at: t0,
            conflict: false,
        });
        assert_eq!(
            synced_until(&desired("v2"), &refused, at(1), DEADLINE),
            None
        );
        let mut gone = s.clone();
        gone.streams = 0;
        assert_eq!(synced_until(&desired("v2"), &gone, at(1), DEADLINE), None);
        // Never caught up (it acked an old state only): not synced.
        let mut old = s.clone();
        old.caught_up_at = None;
        assert_eq!(
            compute(
                &desired("v2"),
                &old,
                &ApiInput::Disabled,
                None,
                at(1),
                DEADLINE
            )
            .phase,
            Some(Phase::Connected)
        );
    }

    #[test]
    fn a_restarted_hub_shows_an_agent_it_has_not_seen_as_disconnected_from_the_record() {
        let recorded = fresh(&desired("v1"), &connected("v1"));
        let unseen = StreamState::default();
        let status = compute(
            &desired("v1"),
            &unseen,
            &ApiInput::Disabled,
            Some(&recorded),
            Timestamp::now(),
            DEADLINE,
        );
        assert_eq!(status.phase, Some(Phase::Disconnected));
        assert_eq!(status.agent, recorded.agent);
        // Without a record: never connected.
        assert_eq!(phase(&desired("v1"), &unseen), Phase::Pending);
    }

    #[test]
    fn api_access_condition_names_what_is_missing() {
        let serving = |up: bool, problem: Option<&str>| ApiInput::Serving {
            tunnel_up: up,
            secret_problem: problem.map(String::from),
            secret: "istio-system/istio-remote-secret-r".into(),
        };
        let at = Timestamp::now();
        let mut s = connected("v1");
        s.connected_since = Some(at);
        let api = |api: &ApiInput, s: &StreamState, now| {
            let st = compute(&desired("v1"), s, api, None, now, DEADLINE);
            assert_eq!(
                st.phase,
                Some(Phase::Synced),
                "API access never moves the phase"
            );
            st.conditions
                .iter()
                .find(|c| c.type_ == "APIAccess")
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        assert_eq!(api(&ApiInput::Disabled, &s, at), None);
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(api(&serving(true, None), &s, at), pair("True", "Ready"));
        assert_eq!(
            api(&serving(false, None), &s, at),
            pair("False", "TunnelPending")
        );
        assert_eq!(
            tunnel_expected_until(&serving(false, None), &s, at),
            Some(at + TUNNEL_GRACE)
        );
        let later = at + TUNNEL_GRACE;
        assert_eq!(
            api(&serving(false, None), &s, later),
            pair("False", "NoTunnel")
        );
        assert_eq!(
            api(&serving(true, Some("foreign secret")), &s, at),
            pair("False", "RemoteSecretBlocked")
        );
        assert_eq!(
            api(&ApiInput::HubNotServing, &s, at),
            pair("False", "HubNotServing")
        );
        let mut gone = s.clone();
        gone.streams = 0;
        let st = compute(
            &desired("v1"),
            &gone,
            &serving(false, None),
            None,
            later,
            DEADLINE,
        );
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "APIAccess")
            .unwrap();
        assert_eq!(c.reason, "AgentDisconnected");

        // Events: a problem of its own, and every arrival at Ready (whatever the writer saw between).
        let status = |api: &ApiInput, now| compute(&desired("v1"), &s, api, None, now, DEADLINE);
        let reasons = |old: &RemoteClusterStatus, new: &RemoteClusterStatus| {
            transitions(Some(old), new)
                .into_iter()
                .map(|e| e.reason)
                .collect::<Vec<_>>()
        };
        let pending = status(&serving(false, None), at);
        let ready = status(&serving(true, None), at);
        let missing = status(&serving(false, None), later);
        assert_eq!(reasons(&pending, &ready), ["Ready"]);
        assert_eq!(reasons(&ready, &missing), ["NoTunnel"]);
        assert_eq!(reasons(&missing, &ready), ["Ready"]);
        assert!(reasons(&missing, &missing).is_empty());
    }
}
