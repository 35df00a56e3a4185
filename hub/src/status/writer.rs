//! The status writer: visits the remotes whose inputs changed and writes each one's status (server-side
//! apply on the status subresource, field manager `tether-hub`) when it differs from the stored one.
//!
//! ```text
//!  Changes (index: desired state, RemoteCluster object; streams: connection, ACK/NACK) ─┐
//!  deadlines (a deferred refresh, a duplicate report expiring, a retire timeout) ─────────┴─► visit
//!  visit: retire lifecycle, or compute ─► same as stored? nothing : only versions moved and the
//!         last write is younger than --status-refresh? later : write (+ Events)
//! ```
//! Driven by changes, not by a poll: an idle hub does nothing. Changes that arrive within
//! `--status-interval` are written together (at most one write per remote per interval). Status
//! carries nothing that moves with every central change (versions are the live view's), so pod churn
//! writes nothing while agents keep up. A change that is not significant (a reconnect's new address,
//! a message) is written at most once per `--status-refresh` per remote, and only within
//! `--status-budget` writes per second, shared by the live replicas: a reconnect storm of a large
//! fleet costs a fixed rate, oldest first. Significant changes (phase, conditions, the writing
//! replica, a NACK) never wait for the budget; they spend it, so what is left for the rest shrinks.
//! Up to `--status-writers` writes are in flight at once. The writer never reads its own output back
//! as input, except to compare: the server's answer to its last write stands for the stored object
//! until the watch delivers something newer.

use super::compute::{
    ApiInput, compute, recent_duplicate, same_status, significant, synced_until, transitions,
    tunnel_expected_until,
};
use crate::apicreds::SecretProblems;
use crate::changes::Changes;
use crate::crd::{RemoteCluster, RemoteClusterStatus};
use crate::events::Recorder;
use crate::index::Index;
use crate::lease::Membership;
use crate::metrics::HubMetrics;
use crate::replicas::{Decision, View, decide};
use crate::retire::Retirements;
use crate::streams::Streams;
use crate::tunnels::Tunnels;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tether_proto::runtime::retry::ApiRetry;
use tracing::warn;

pub const FIELD_MANAGER: &str = "tether-hub";

pub struct StatusWriter {
    pub api: Api<RemoteCluster>,
    pub store: Store<RemoteCluster>,
    pub index: Arc<RwLock<Index>>,
    pub streams: Arc<Streams>,
    pub changes: Arc<Changes>,
    /// Changes arriving within this window are written together.
    pub interval: Duration,
    /// Minimum time between writes of a status that only refreshes versions and counts.
    pub refresh: Duration,
    /// Status writes in flight at once.
    pub concurrency: usize,
    /// Sustained status writes per second, all replicas together.
    pub budget: Mutex<Budget>,
    /// How long an agent may take to acknowledge a newer state and still count as Synced.
    pub sync_deadline: Duration,
    /// Finalizers and remembered retirements.
    pub retirements: Retirements,
    pub recorder: Recorder,
    pub metrics: HubMetrics,
    /// API access, when this hub serves it.
    pub api_access: Option<ApiView>,
    /// Which remotes this replica writes (see `replicas`).
    pub membership: Arc<Membership>,
    /// When this process started: a remote recorded as this replica's waits `membership.grace`
    /// from then for its agent to come back before it is reported Disconnected.
    pub started: Timestamp,
    /// Each remote's stored resourceVersion and when this writer first saw it: a takeover is
    /// decided only on Leases observed after that (see `replicas`).
    pub first_seen: Mutex<HashMap<String, (u64, Instant)>>,
}

/// What the status writer reads of API access.
pub struct ApiView {
    pub tunnels: Arc<Tunnels>,
    pub problems: Arc<SecretProblems>,
    /// Where the remote secrets are written (istiod's namespace).
    pub secret_namespace: String,
}

impl ApiView {
    /// `reported`: the agent says its tunnel is up (it may have dialled another replica).
    fn input(view: Option<&Self>, rc: &RemoteCluster, reported: bool) -> ApiInput {
        let name = rc.name_any();
        match view {
            _ if !rc.spec.api_access_enabled() => ApiInput::Disabled,
            None => ApiInput::HubNotServing,
            Some(v) => ApiInput::Serving {
                tunnel_up: reported || v.tunnels.is_up(&name),
                secret_problem: v.problems.get(&name),
                secret: format!(
                    "{}/{}",
                    v.secret_namespace,
                    crate::apicreds::secret_name(&name)
                ),
            },
        }
    }
}

/// A token bucket for status writes: `rate` per second for the whole hub, divided among the live
/// replicas; up to one second's worth saved. Significant writes spend without waiting (the bucket
/// may go into debt, down to one second's worth); the others wait for a token.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant, replicas: usize) {
        let share = self.rate / replicas.max(1) as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * share).min(share.max(1.0));
        self.last = now;
    }

    /// A write that may wait: true if a token was there (and is spent).
    fn take(&mut self, now: Instant, replicas: usize) -> bool {
        self.refill(now, replicas);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }

    /// A write that may not wait.
    fn spend(&mut self, now: Instant, replicas: usize) {
        self.refill(now, replicas);
        let share = self.rate / replicas.max(1) as f64;
        self.tokens = (self.tokens - 1.0).max(-share.max(1.0));
    }

    /// Whole tokens there now.
    fn available(&mut self, now: Instant, replicas: usize) -> usize {
        self.refill(now, replicas);
        self.tokens.max(0.0) as usize
    }

    /// When the next token is there.
    fn next_token(&self, replicas: usize) -> Instant {
        let share = (self.rate / replicas.max(1) as f64).max(f64::MIN_POSITIVE);
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64((missing / share).min(3600.0))
    }
}

/// The writer's last write of a remote's status: when, the resourceVersion the server answered
/// with, and the status written (not the whole object: a 10,000-remote hub keeps one per remote).
#[derive(Clone)]
struct Written {
    at: Instant,
    resource_version: u64,
    status: Arc<RemoteClusterStatus>,
}

/// What the writer remembers of one remote between visits.
#[derive(Default)]
struct Memory {
    /// The server's answer to our last write: newer than the store until the watch delivers it.
    written: Option<Written>,
    /// Visit again then, even without a change.
    due: Option<Instant>,
    /// Waiting in the queue for the write budget.
    deferred: bool,
}

/// Someone else changed the object since we read it (another replica claimed the remote, or our
/// watch lags): look again, nothing to report.
fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// The central API server did not answer, or answered that it cannot serve now (429, 5xx).
fn server_unavailable(error: &kube::Error) -> bool {
    match error {
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => false,
    }
}

fn resource_version(rc: &RemoteCluster) -> u64 {
    rc.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl StatusWriter {
    /// Writes statuses and runs the retire lifecycle until the task is dropped.
    pub async fn run(self) {
        let mut memory: HashMap<String, Memory> = HashMap::new();
        // Remotes waiting for the write budget, oldest first.
        let mut deferred: VecDeque<String> = VecDeque::new();
        let mut retry = ApiRetry::default();
        let mut sweep_due: Option<Instant> = None;
        let mut last_pass = Instant::now();
        loop {
            let next_due = memory.values().filter_map(|m| m.due).min();
            let budget_due = (!deferred.is_empty()).then(|| {
                let budget = self.budget.lock().expect("budget lock");
                budget.next_token(self.replicas())
            });
            let changed = tokio::select! {
                _ = self.changes.changed() => true,
                _ = sleep_until(earliest(earliest(next_due, sweep_due), budget_due)) => false,
            };
            if changed {
                // Let a burst of changes arrive: one write per remote per interval.
                tokio::time::sleep(self.interval).await;
            } else {
                // A deadline that falls due is late enough, but passes stay an interval apart
                // (deadlines of a large fleet spread over time would otherwise each cost a pass).
                sleep_until(Some(last_pass + self.interval)).await;
            }
            last_pass = Instant::now();
            let now = Instant::now();
            let mut todo = self.changes.take();
            for (name, m) in memory.iter_mut() {
                if m.due.is_some_and(|due| due <= now) {
                    m.due = None;
                    todo.insert(name.clone());
                }
            }
            // The budget's turn: as many of the oldest waiting as there are tokens.
            let tokens = self
                .budget
                .lock()
                .expect("budget lock")
                .available(now, self.replicas());
            for name in deferred.drain(..tokens.min(deferred.len())) {
                if let Some(m) = memory.get_mut(&name) {
                    m.deferred = false;
                }
                todo.insert(name);
            }
            let unreachable = self.pass(todo, &mut memory, &mut deferred).await;
            let unreachable = match unreachable {
                Some(error) => Some(error),
                // Remembered retirements are the leader's.
                None if !self.membership.leader() => None,
                None => match self
                    .retirements
                    .sweep(&self.index, &self.streams, &self.store)
                    .await
                {
                    Ok(due) => {
                        sweep_due = due;
                        None
                    }
                    Err(error) if server_unavailable(&error) => Some(error),
                    Err(error) => {
                        warn!(%error, "remembered retirements could not be updated; retrying");
                        sweep_due =
                            Some(Instant::now() + self.interval.max(Duration::from_secs(1)));
                        None
                    }
                },
            };
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

    /// Visits `todo`. Returns the error that paused the pass when the central API server is
    /// unreachable; what was not visited is marked again.
    async fn pass(
        &self,
        todo: HashSet<String>,
        memory: &mut HashMap<String, Memory>,
        deferred: &mut VecDeque<String>,
    ) -> Option<kube::Error> {
        let inputs: Vec<(String, Option<Written>)> = todo
            .iter()
            .map(|name| {
                let written = memory.get(name).and_then(|m| m.written.clone());
                (name.clone(), written)
            })
            .collect();
        let mut visits = futures::stream::iter(inputs)
            .map(|(name, written)| async move {
                let result = self.visit(&name, written).await;
                (name, result)
            })
            .buffer_unordered(self.concurrency.max(1));
        let mut done = HashSet::new();
        let mut unreachable = None;
        while let Some((name, result)) = visits.next().await {
            done.insert(name.clone());
            match result {
                Ok(Visited::Gone) => {
                    memory.remove(&name);
                    self.first_seen
                        .lock()
                        .expect("first_seen lock")
                        .remove(&name);
                    self.retirements
                        .forget_stream_state(&name, &self.index, &self.streams);
                }
                Ok(Visited::Remote { written, due }) => {
                    let m = memory.entry(name).or_default();
                    if written.is_some() {
                        m.written = written;
                    }
                    m.due = due;
                }
                Ok(Visited::Deferred) => {
                    let m = memory.entry(name.clone()).or_default();
                    if !m.deferred {
                        m.deferred = true;
                        deferred.push_back(name);
                    }
                }
                // No answer, or an overloaded server: the next writes would fail the same way.
                Err(error) if server_unavailable(&error) => {
                    done.remove(&name);
                    unreachable = Some(error);
                    break;
                }
                Err(error) if conflict(&error) => {
                    tracing::debug!(cluster = %name, "status changed meanwhile; looking again");
                    memory.entry(name).or_default().due = Some(Instant::now() + self.interval);
                }
                // This object's trouble; the others go on.
                Err(error) => {
                    warn!(cluster = %name, %error, "status update failed; retrying");
                    memory.entry(name).or_default().due = Some(Instant::now() + self.interval);
                }
            }
        }
        drop(visits);
        if unreachable.is_some() {
            self.changes
                .mark_all(todo.into_iter().filter(|n| !done.contains(n)));
        }
        unreachable
    }

    /// When this writer first saw `name` at resourceVersion `rv`.
    fn first_seen(&self, name: &str, rv: u64) -> Instant {
        let mut seen = self.first_seen.lock().expect("first_seen lock");
        match seen.get(name) {
            Some((at_rv, at)) if *at_rv == rv => *at,
            _ => {
                let now = Instant::now();
                seen.insert(name.to_string(), (rv, now));
                now
            }
        }
    }

    /// The live replicas, this one included, that share the write budget.
    fn replicas(&self) -> usize {
        self.membership.alive_replicas().len().max(1)
    }

    async fn visit(&self, name: &str, written: Option<Written>) -> kube::Result<Visited> {
        let Some(stored) = self.store.get(
            &kube::runtime::reflector::ObjectRef::new(name)
                .within(self.api.namespace().expect("RemoteClusters are namespaced")),
        ) else {
            return Ok(Visited::Gone);
        };
        // Our own newer write stands for the stored status until the watch delivers it.
        let mut rc = stored;
        if let Some(mine) = &written
            && mine.resource_version > resource_version(&rc)
        {
            Arc::make_mut(&mut rc).status = Some((*mine.status).clone());
        }
        let Some(desired) = self.index.read().expect("index lock").desired(name) else {
            // The index has not seen it yet; its watch event marks the remote again.
            return Ok(Visited::Remote {
                written: None,
                due: None,
            });
        };
        let stream = self.streams.get(name);
        let now = Timestamp::now();
        let m = &self.membership;
        let seen_at = self.first_seen(name, resource_version(&rc));
        let view = View {
            me: &m.me,
            alive: m.alive(),
            leader: m.leader(),
            // The replica that has the agent's Retired acts on it, whoever wrote last.
            serving: stream.streams > 0 || stream.retired,
            closed_at: match stream.ever_connected {
                true => stream.last_seen,
                false => Some(self.started),
            },
            recorded: rc
                .status
                .as_ref()
                .and_then(|s| s.agent.as_ref())
                .map(|a| a.hub.as_str()),
            leases_seen_since: m.leases_seen_since(seen_at),
            grace: m.grace,
            now,
        };
        let hub = match decide(view, |r| m.replica_alive(r)) {
            Decision::NotMine => {
                return Ok(Visited::Remote {
                    written: None,
                    due: None,
                });
            }
            Decision::ObserveLeases => {
                // Marked again once the Leases have been listed.
                m.observe_leases_for(name);
                return Ok(Visited::Remote {
                    written: None,
                    due: None,
                });
            }
            Decision::WaitUntil(until) => {
                let at = Instant::now() + now.duration_until(until).unsigned_abs();
                return Ok(Visited::Remote {
                    written: None,
                    due: Some(at),
                });
            }
            Decision::Write { hub } => hub,
        };
        if rc.metadata.deletion_timestamp.is_some() {
            let due = self
                .retirements
                .release(&rc, &stream, &self.streams)
                .await?;
            return Ok(Visited::Remote { written: None, due });
        }
        // The version our write must find: what we read, or our own newer write, or the finalizer's.
        let mut expected = resource_version(&rc);
        if let Some(mine) = &written {
            expected = expected.max(mine.resource_version);
        }
        if let Some(after) = self.retirements.ensure_finalizer(&rc).await? {
            expected = resource_version(&after);
        }
        let api = ApiView::input(self.api_access.as_ref(), &rc, stream.tunnel_up);
        let mut status = compute(
            &desired,
            &stream,
            &api,
            rc.status.as_ref(),
            now,
            self.sync_deadline,
        );
        if let Some(agent) = status.agent.as_mut() {
            agent.hub = hub.unwrap_or_default();
        }
        // A reported duplicate, and the wait for a tunnel, expire with time, not with an input:
        // look again then.
        let at = |until: Timestamp| Instant::now() + now.duration_until(until).unsigned_abs();
        let expires = [
            recent_duplicate(&stream, now).map(|(_, until)| at(until)),
            tunnel_expected_until(&api, &stream, now).map(at),
            synced_until(&desired, &stream, now, self.sync_deadline).map(at),
        ]
        .into_iter()
        .fold(None, earliest);
        let mut urgent = true;
        if let Some(old) = rc.status.as_ref() {
            if same_status(old, &status) {
                return Ok(Visited::Remote {
                    written: None,
                    due: expires,
                });
            }
            urgent = significant(old, &status);
            let refresh_due = written.as_ref().map(|w| w.at + self.refresh);
            if refresh_due.is_some_and(|due| Instant::now() < due) && !urgent {
                return Ok(Visited::Remote {
                    written: None,
                    due: earliest(refresh_due, expires),
                });
            }
        }
        {
            let replicas = self.replicas();
            let mut budget = self.budget.lock().expect("budget lock");
            if urgent {
                budget.spend(Instant::now(), replicas);
            } else if !budget.take(Instant::now(), replicas) {
                return Ok(Visited::Deferred);
            }
        }
        // With the resourceVersion we decided on: if another replica wrote meanwhile, 409.
        let patch = serde_json::json!({
            "apiVersion": "tether.io/v1alpha1", "kind": "RemoteCluster",
            "metadata": {"resourceVersion": expected.to_string()},
            "status": status,
        });
        let answer = self
            .api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.metrics.status_writes.inc();
        for event in transitions(rc.status.as_ref(), &status) {
            // Events are for people; failing to record one never blocks status.
            if let Err(error) = self.recorder.publish(&event, &rc.object_ref(&())).await {
                warn!(cluster = %name, %error, "could not record event");
            }
        }
        Ok(Visited::Remote {
            written: Some(Written {
                at: Instant::now(),
                resource_version: resource_version(&answer),
                status: Arc::new(status),
            }),
            due: expires,
        })
    }
}

/// What a visit found.
enum Visited {
    /// No such RemoteCluster any more.
    Gone,
    /// A write that waits for the budget.
    Deferred,
    Remote {
        /// The server's answer to a write this visit made.
        written: Option<Written>,
        /// When to look again without a change.
        due: Option<Instant>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_a_sustained_rate_shared_by_the_replicas() {
        let t0 = Instant::now();
        let mut b = Budget::new(20.0);
        b.last = t0;
        // One second's worth saved, then the rate.
        let taken = (0..100).filter(|_| b.take(t0, 1)).count();
        assert_eq!(taken, 20);
        let mut later = 0;
        for ms in (0..10_000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            later += (0..10).filter(|_| b.take(now, 1)).count();
        }
        assert!((198..=201).contains(&later), "{later} in 10 s");
        // Two replicas: each takes half.
        let mut b = Budget::new(20.0);
        b.last = t0;
        b.tokens = 0.0;
        let halves = (1..=1000)
            .filter(|ms| b.take(t0 + Duration::from_millis(ms * 10), 2))
            .count();
        assert!((99..=100).contains(&halves), "{halves} in 10 s");
        // A significant write never waits; it leaves less for the rest, down to one second's debt.
        let mut b = Budget::new(20.0);
        b.last = t0;
        for _ in 0..100 {
            b.spend(t0, 1);
        }
        assert_eq!(b.tokens, -20.0);
        assert!(!b.take(t0 + Duration::from_millis(900), 1));
        assert_eq!(b.next_token(1), t0 + Duration::from_millis(1050));
        assert_eq!(b.available(t0 + Duration::from_secs(3), 1), 20);
    }

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
}
