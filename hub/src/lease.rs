//! `coordination.k8s.io` Leases: each replica holds its own (`tether-hub-replica-<id>`, a heartbeat
//! the others observe), and one replica at a time holds `tether-hub-leader`. The loop that holds a
//! Lease publishes on a `watch` channel whether it holds it; a holder that cannot renew within two
//! thirds of the duration says so at once, before anyone else may take it over. If a loop ends (it
//! never does on its own; a panic would), `serve` exits the process: a replica never stays Ready
//! without its Leases.

use crate::changes::Changes;
use crate::crd::RemoteCluster;
use crate::replicas::Observed;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

pub const LEADER: &str = "tether-hub-leader";
/// Label of the replicas' own Leases.
pub const REPLICA_LABEL: &str = "tether.io/hub-replica";
/// Annotation of a replica's own Lease: where the other replicas reach its API endpoint.
pub const PEER_ANNOTATION: &str = "tether.io/api-peer";

pub fn replica_lease(me: &str) -> String {
    format!("tether-hub-replica-{me}")
}

/// What to do with a Lease as found.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Create,
    Renew,
    /// Held by nobody, or by a holder that stopped renewing: take it.
    TakeOver,
    /// Someone else holds it.
    Wait,
}

/// `observed`: the (holder, renew time) last seen and when it was first seen like that.
fn step(
    me: &str,
    lease: Option<&Lease>,
    observed: &mut Option<(String, Instant)>,
    now: Instant,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let key = format!(
        "{holder}@{}",
        spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default()
    );
    let seen_at = match observed {
        Some((k, at)) if *k == key => *at,
        _ => {
            *observed = Some((key, now));
            now
        }
    };
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if now.duration_since(seen_at) >= duration {
        Step::TakeOver
    } else {
        Step::Wait
    }
}

/// Holds the Lease `name` as `me` for as long as the task runs; `held` says whether it holds it.
pub struct Holder {
    pub api: Api<Lease>,
    pub name: String,
    pub me: String,
    pub labels: Vec<(String, String)>,
    /// Written on every renewal (a restarted replica's new address replaces the old one).
    pub annotations: Vec<(String, String)>,
    pub duration: Duration,
}

impl Holder {
    pub async fn run(self, held: watch::Sender<bool>) {
        let renew_every = self.duration / 3;
        let deadline = self.duration * 2 / 3;
        let mut last_renewed: Option<Instant> = None;
        let mut observed = None;
        loop {
            match self.attempt(&mut observed).await {
                Ok(true) => {
                    last_renewed = Some(Instant::now());
                    if !*held.borrow() {
                        info!(lease = %self.name, holder = %self.me, "lease acquired");
                    }
                    held.send_if_modified(|h| !std::mem::replace(h, true));
                }
                Ok(false) => {
                    if *held.borrow() {
                        warn!(lease = %self.name, "lease taken by another replica");
                    }
                    held.send_if_modified(|h| std::mem::replace(h, false));
                }
                Err(error) => {
                    let expired = last_renewed.is_none_or(|t| t.elapsed() >= deadline);
                    if expired && *held.borrow() {
                        warn!(lease = %self.name, %error, "lease not renewed in time: let go");
                        held.send_replace(false);
                        last_renewed = None;
                    } else {
                        warn!(lease = %self.name, %error, "lease renewal failed; retrying");
                    }
                }
            }
            tokio::time::sleep(renew_every).await;
        }
    }

    /// Ok(true): this replica holds the Lease now.
    async fn attempt(&self, observed: &mut Option<(String, Instant)>) -> kube::Result<bool> {
        let found = self.api.get_opt(&self.name).await?;
        let now = MicroTime(Timestamp::now());
        let seconds = self.duration.as_secs().max(1) as i32;
        match step(&self.me, found.as_ref(), observed, Instant::now()) {
            Step::Wait => Ok(false),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: Some(self.labels.iter().cloned().collect()),
                        annotations: Some(self.annotations.iter().cloned().collect()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.me.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            step @ (Step::Renew | Step::TakeOver) => {
                let mut lease = found.expect("found");
                if !self.annotations.is_empty() {
                    lease
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .extend(self.annotations.iter().cloned());
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                if step == Step::TakeOver {
                    spec.holder_identity = Some(self.me.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(seconds);
                // Replace carries the resourceVersion read: a concurrent change wins, we look again.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the Lease up (a replica shutting down): the next holder need not wait for it to expire.
    pub async fn release(api: &Api<Lease>, name: &str, me: &str) {
        let Ok(Some(mut lease)) = api.get_opt(name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(me) {
            return;
        }
        spec.holder_identity = None;
        if let Err(error) = api.replace(name, &PostParams::default(), &lease).await {
            warn!(lease = name, %error, "could not release the lease");
        }
    }
}

/// This replica's place among the replicas: its own Lease, the leader Lease, the others' Leases as
/// observed. Read by the status writer and the leader's duties.
pub struct Membership {
    pub me: String,
    /// Set when the process shuts down: it writes nothing more (its agents are moving to other
    /// replicas, which take their statuses over).
    stopping: std::sync::atomic::AtomicBool,
    alive: watch::Receiver<bool>,
    leader: watch::Receiver<bool>,
    observed: Mutex<Observed>,
    /// Remotes whose writer waits for the next observation of the Leases (see
    /// `replicas::Decision::ObserveLeases`), and the nudge that asks for it now.
    awaiting: Mutex<HashSet<String>>,
    observe_now: Notify,
    /// No other replica exists (nothing to observe).
    alone: bool,
    /// The other replicas' API endpoints, from their Leases.
    peer_urls: Mutex<Vec<(String, String)>>,
    /// How long a replica whose agent's stream closed waits before it reports Disconnected.
    pub grace: Duration,
}

impl Membership {
    pub fn new(
        me: String,
        alive: watch::Receiver<bool>,
        leader: watch::Receiver<bool>,
        grace: Duration,
    ) -> Self {
        Self {
            me,
            stopping: Default::default(),
            alive,
            leader,
            observed: Mutex::default(),
            awaiting: Mutex::default(),
            observe_now: Notify::new(),
            alone: false,
            peer_urls: Mutex::default(),
            grace,
        }
    }

    /// A replica on its own that needs no Lease (the in-process test hub): alive and leader.
    pub fn alone(me: &str) -> Self {
        let (_, alive) = watch::channel(true);
        let (_, leader) = watch::channel(true);
        Self {
            alone: true,
            ..Self::new(me.to_string(), alive, leader, Duration::ZERO)
        }
    }

    pub fn alive(&self) -> bool {
        !self.stopping.load(std::sync::atomic::Ordering::Relaxed) && *self.alive.borrow()
    }

    /// This replica is shutting down: from now on it writes nothing.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn leader(&self) -> bool {
        self.alive() && *self.leader.borrow()
    }

    pub fn replica_alive(&self, replica: &str) -> bool {
        if replica == self.me {
            return self.alive();
        }
        self.observed
            .lock()
            .expect("observed lock")
            .alive(replica, Instant::now())
    }

    pub fn alive_replicas(&self) -> Vec<String> {
        self.observed
            .lock()
            .expect("observed lock")
            .alive_replicas(Instant::now())
    }

    /// Whether the other replicas' Leases were observed by a list asked for at `since` or later.
    pub fn leases_seen_since(&self, since: Instant) -> bool {
        self.alone
            || self
                .observed
                .lock()
                .expect("observed lock")
                .seen_since(since)
    }

    /// The API endpoints of the other replicas alive now, as (replica, URL).
    pub fn peers(&self) -> Vec<(String, String)> {
        let alive = self.alive_replicas();
        self.peer_urls
            .lock()
            .expect("peers lock")
            .iter()
            .filter(|(id, _)| *id != self.me && alive.contains(id))
            .cloned()
            .collect()
    }

    /// Asks for an observation of the Leases now; `remote` is marked changed once one is made.
    pub fn observe_leases_for(&self, remote: &str) {
        self.awaiting
            .lock()
            .expect("awaiting lock")
            .insert(remote.to_string());
        self.observe_now.notify_one();
    }

    /// Changes of this replica's own Lease or its leadership from now on. (A fresh clone of a
    /// receiver that nobody marks as seen reports every earlier change again: waiting on clones in
    /// a loop spun the observer, listing the Leases without pause, until it held its own.)
    pub fn changes(&self) -> MembershipChanges {
        let (mut alive, mut leader) = (self.alive.clone(), self.leader.clone());
        alive.mark_unchanged();
        leader.mark_unchanged();
        MembershipChanges { alive, leader }
    }

    /// Observes the replicas' Leases every `every`, and at once when the writer asks; when one
    /// dies, or this replica's leadership or Lease changes, every remote is visited again (its
    /// writer may have changed), and after every observation the remotes that waited for one.
    pub async fn watch(
        self: Arc<Self>,
        api: Api<Lease>,
        every: Duration,
        remotes: Store<RemoteCluster>,
        changes: Arc<Changes>,
    ) {
        let list = ListParams::default().labels(&format!("{REPLICA_LABEL}=true"));
        let mut was = (self.alive(), self.leader());
        let mut mine = self.changes();
        loop {
            let asked = Instant::now();
            let listed = api.list(&list).await;
            let died = match &listed {
                Ok(leases) => {
                    let seen = leases.items.iter().filter_map(|l| {
                        let spec = l.spec.as_ref()?;
                        let holder = spec.holder_identity.clone()?;
                        let renew = spec.renew_time.as_ref()?.0.to_string();
                        let secs = spec.lease_duration_seconds.unwrap_or(15).max(1) as u64;
                        Some((holder, renew, Duration::from_secs(secs)))
                    });
                    *self.peer_urls.lock().expect("peers lock") = leases
                        .items
                        .iter()
                        .filter_map(|l| {
                            let holder = l.spec.as_ref()?.holder_identity.clone()?;
                            let url = l.annotations().get(PEER_ANNOTATION)?.clone();
                            Some((holder, url))
                        })
                        .collect();
                    self.observed.lock().expect("observed lock").observe(
                        seen,
                        asked,
                        Instant::now(),
                    )
                }
                Err(error) => {
                    warn!(%error, "could not list the hub replicas' leases");
                    Vec::new()
                }
            };
            let now = (self.alive(), self.leader());
            if !died.is_empty() {
                info!(?died, "hub replicas stopped renewing their leases");
            }
            if listed.is_ok() {
                let awaiting = std::mem::take(&mut *self.awaiting.lock().expect("awaiting lock"));
                changes.mark_all(awaiting);
            }
            if (!died.is_empty() && now.1) || now != was {
                changes.mark_all(remotes.state().iter().map(|rc| rc.name_any()));
            }
            was = now;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = mine.next() => {}
                _ = self.observe_now.notified() => {}
            }
        }
    }
}

/// See [`Membership::changes`].
pub struct MembershipChanges {
    alive: watch::Receiver<bool>,
    leader: watch::Receiver<bool>,
}

impl MembershipChanges {
    /// Resolves at the next change (never, once both senders are gone).
    pub async fn next(&mut self) {
        tokio::select! {
            Ok(()) = self.alive.changed() => {}
            Ok(()) = self.leader.changed() => {}
            else => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_reported_once() {
        let (alive_tx, alive) = watch::channel(false);
        let (leader_tx, leader) = watch::channel(false);
        let m = Membership::new("a".into(), alive, leader, Duration::ZERO);
        // Changes before the watcher was made are not its news.
        alive_tx.send_replace(true);
        let mut changes = m.changes();
        let soon = Duration::from_millis(50);
        assert!(tokio::time::timeout(soon, changes.next()).await.is_err());
        leader_tx.send_replace(true);
        assert!(tokio::time::timeout(soon, changes.next()).await.is_ok());
        assert!(
            tokio::time::timeout(soon, changes.next()).await.is_err(),
            "reported once, not on every wait"
        );
    }

    fn lease(holder: Option<&str>, renew: Timestamp, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renew)),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_created_renewed_waited_for_and_taken_over_when_it_stops_moving() {
        let t0 = Instant::now();
        let mut seen = None;
        assert_eq!(step("a", None, &mut seen, t0), Step::Create);
        let renewed = Timestamp::now();
        let mine = lease(Some("a"), renewed, 15);
        assert_eq!(step("a", Some(&mine), &mut seen, t0), Step::Renew);
        let theirs = lease(Some("b"), renewed, 15);
        assert_eq!(step("a", Some(&theirs), &mut seen, t0), Step::Wait);
        let t1 = t0 + Duration::from_secs(14);
        assert_eq!(step("a", Some(&theirs), &mut seen, t1), Step::Wait);
        // b renews: the clock starts again from when that was seen.
        let renewed_again = lease(Some("b"), renewed + Duration::from_secs(5), 15);
        assert_eq!(step("a", Some(&renewed_again), &mut seen, t1), Step::Wait);
        let t2 = t1 + Duration::from_secs(14);
        assert_eq!(step("a", Some(&renewed_again), &mut seen, t2), Step::Wait);
        let t3 = t1 + Duration::from_secs(15);
        assert_eq!(
            step("a", Some(&renewed_again), &mut seen, t3),
            Step::TakeOver
        );
        let released = lease(None, renewed, 15);
        assert_eq!(step("a", Some(&released), &mut seen, t0), Step::TakeOver);
    }

    #[test]
    fn a_replica_alone_is_alive_and_leads_until_it_stops() {
        let m = Membership::alone("hub");
        assert!(m.alive() && m.leader());
        assert!(m.replica_alive("hub"));
        assert!(!m.replica_alive("other"));
        m.stop();
        assert!(!m.alive() && !m.leader());
    }
}
