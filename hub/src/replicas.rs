//! Several hub replicas: who writes a remote's status, and which replicas are alive. Pure.
//!
//! Every replica serves agents. A remote's status (and its finalizer) has one writer at a time: the
//! replica that holds its agent's stream claims it by writing its own name into `status.agent.hub`;
//! that replica keeps writing it (also `Disconnected`, after a grace in which the agent may come back
//! to another replica) until another replica claims it or it dies. Remotes whose recorded replica is
//! dead, and remotes no replica ever claimed, are written by the leader. Every write carries the
//! resourceVersion the writer saw, so of two replicas deciding on different views, one gets 409 and
//! looks again.
//!
//! ```text
//!  this replica serves the agent's stream ─────────────────────────────► write, agent.hub = me
//!  agent.hub == me, stream closed < grace ago ─────────────────────────► wait (it may come back)
//!  agent.hub == me ────────────────────────────────────────────────────► write, agent.hub = me
//!  agent.hub == another replica that is alive ─────────────────────────► not mine
//!  not the leader ─────────────────────────────────────────────────────► not mine
//!  agent.hub a dead replica, Leases not looked at since this status came ► look at them first
//!  agent.hub empty or a dead replica ──────────────────────────────────► write, agent.hub cleared
//! ```
//! A replica is dead when its Lease stopped moving as seen here; the Leases are observed every third
//! of a Lease. A replica that has just come back renews its Lease before it claims anything, so the
//! leader takes a remote over only on an observation that started after it saw the claim: a
//! replica that restarted between two observations is never taken for dead over its fresh claims.
//! A replica that does not hold its own Lease (it cannot renew it: cut off from the central API
//! server, or replaced) writes nothing at all.

use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::time::Duration;

/// What a replica knows when it decides about one remote.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub me: &'a str,
    /// This replica holds its own Lease.
    pub alive: bool,
    /// This replica holds the leader Lease.
    pub leader: bool,
    /// This replica has the remote's serving stream now.
    pub serving: bool,
    /// When this replica's last stream for the remote closed (if it had one).
    pub closed_at: Option<Timestamp>,
    /// `status.agent.hub` as stored.
    pub recorded: Option<&'a str>,
    /// The replicas' Leases were observed (a list that started) after this status was first seen
    /// here.
    pub leases_seen_since: bool,
    pub grace: Duration,
    pub now: Timestamp,
}

/// Who writes a remote's status now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This replica writes it, with `status.agent.hub` set to this.
    Write { hub: Option<String> },
    /// This replica writes it, but not before then.
    WaitUntil(Timestamp),
    /// The recorded replica looks dead, but on Leases observed before this status: observe them
    /// again, then decide.
    ObserveLeases,
    /// Another replica does (or nobody may, for now).
    NotMine,
}

pub fn decide(v: View<'_>, replica_alive: impl Fn(&str) -> bool) -> Decision {
    if !v.alive {
        return Decision::NotMine;
    }
    let mine = || Decision::Write {
        hub: Some(v.me.to_string()),
    };
    if v.serving {
        return mine();
    }
    match v.recorded.filter(|h| !h.is_empty()) {
        Some(hub) if hub == v.me => match v.closed_at {
            Some(closed) if v.now < closed + v.grace => Decision::WaitUntil(closed + v.grace),
            _ => mine(),
        },
        Some(hub) if replica_alive(hub) => Decision::NotMine,
        _ if !v.leader => Decision::NotMine,
        Some(_) if !v.leases_seen_since => Decision::ObserveLeases,
        _ => Decision::Write { hub: None },
    }
}

/// The other replicas' Leases as this replica observed them. A Lease is alive while its renew time
/// keeps changing: the time a change was seen here is what counts, never the renew time itself, so
/// clocks that disagree between replicas do not matter (as client-go's leader election does).
#[derive(Debug, Default)]
pub struct Observed {
    leases: HashMap<String, Seen>,
    /// When the last list was observed.
    last: Option<std::time::Instant>,
    /// When the newest list observed was asked for.
    asked: Option<std::time::Instant>,
}

#[derive(Debug)]
struct Seen {
    renew: String,
    at: std::time::Instant,
    duration: Duration,
}

impl Observed {
    /// Records a list of replica Leases (holder, renew time as written, duration) asked for at
    /// `asked` and seen at `at`. Returns the replicas that are newly dead or newly gone since the
    /// last call.
    pub fn observe(
        &mut self,
        leases: impl IntoIterator<Item = (String, String, Duration)>,
        asked: std::time::Instant,
        at: std::time::Instant,
    ) -> Vec<String> {
        self.asked = Some(self.asked.map_or(asked, |a| a.max(asked)));
        // Alive as of the previous observation: what died since is reported once.
        let before = self.last.unwrap_or(at);
        let was_alive: Vec<String> = self
            .leases
            .keys()
            .filter(|h| self.alive(h, before))
            .cloned()
            .collect();
        self.last = Some(at);
        let mut seen = HashMap::new();
        for (holder, renew, duration) in leases {
            let changed_at = match self.leases.get(&holder) {
                Some(s) if s.renew == renew => s.at,
                _ => at,
            };
            seen.insert(
                holder,
                Seen {
                    renew,
                    at: changed_at,
                    duration,
                },
            );
        }
        self.leases = seen;
        was_alive
            .into_iter()
            .filter(|h| !self.alive(h, at))
            .collect()
    }

    /// Whether a list of the Leases asked for at `since` or later was observed.
    pub fn seen_since(&self, since: std::time::Instant) -> bool {
        self.asked.is_some_and(|a| a >= since)
    }

    /// Whether `holder`'s Lease was renewed within its duration, as seen here.
    pub fn alive(&self, holder: &str, now: std::time::Instant) -> bool {
        self.leases
            .get(holder)
            .is_some_and(|s| now.duration_since(s.at) < s.duration)
    }

    /// The replicas alive at `now`, sorted.
    pub fn alive_replicas(&self, now: std::time::Instant) -> Vec<String> {
        let mut v: Vec<String> = self
            .leases
            .keys()
            .filter(|h| self.alive(h, now))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn view<'a>(me: &'a str, recorded: Option<&'a str>) -> View<'a> {
        View {
            me,
            alive: true,
            leader: false,
            serving: false,
            closed_at: None,
            recorded,
            leases_seen_since: true,
            grace: Duration::from_secs(5),
            now: Timestamp::now(),
        }
    }

    fn write(hub: &str) -> Decision {
        Decision::Write {
            hub: Some(hub.into()),
        }
    }

    #[test]
    fn the_replica_serving_the_agent_claims_the_remote() {
        let v = View {
            serving: true,
            ..view("a", Some("b"))
        };
        assert_eq!(decide(v, |_| true), write("a"), "even from a live replica");
        let v = View {
            serving: true,
            ..view("a", None)
        };
        assert_eq!(decide(v, |_| true), write("a"));
    }

    #[test]
    fn the_recorded_replica_keeps_writing_after_a_grace_for_the_agent_to_move() {
        let now = Timestamp::now();
        let closed = now - Duration::from_secs(2);
        let v = View {
            closed_at: Some(closed),
            now,
            ..view("a", Some("a"))
        };
        assert_eq!(
            decide(v, |_| true),
            Decision::WaitUntil(closed + Duration::from_secs(5))
        );
        let v = View {
            closed_at: Some(now - Duration::from_secs(6)),
            now,
            ..view("a", Some("a"))
        };
        assert_eq!(decide(v, |_| true), write("a"), "then Disconnected, by a");
        assert_eq!(
            decide(view("a", Some("a")), |_| true),
            write("a"),
            "a restarted replica of the same name never saw the stream: no grace to wait"
        );
    }

    #[test]
    fn a_live_replicas_remote_is_left_alone_and_a_dead_ones_goes_to_the_leader() {
        assert_eq!(decide(view("a", Some("b")), |_| true), Decision::NotMine);
        let leader = View {
            leader: true,
            ..view("a", Some("b"))
        };
        assert_eq!(
            decide(leader, |_| true),
            Decision::NotMine,
            "not even the leader"
        );
        assert_eq!(
            decide(leader, |_| false),
            Decision::Write { hub: None },
            "b is dead"
        );
        assert_eq!(decide(view("a", Some("b")), |_| false), Decision::NotMine);
        let unobserved = View {
            leases_seen_since: false,
            ..leader
        };
        assert_eq!(
            decide(unobserved, |_| false),
            Decision::ObserveLeases,
            "b may have come back and claimed it since the Leases were last seen"
        );
        assert_eq!(decide(unobserved, |_| true), Decision::NotMine);
        let unclaimed = View {
            leader: true,
            ..view("a", None)
        };
        assert_eq!(decide(unclaimed, |_| true), Decision::Write { hub: None });
        let unclaimed_unobserved = View {
            leases_seen_since: false,
            ..unclaimed
        };
        assert_eq!(
            decide(unclaimed_unobserved, |_| true),
            Decision::Write { hub: None },
            "nobody to take for dead: a claim meanwhile makes this write a conflict"
        );
        assert_eq!(
            decide(view("a", Some("")), |_| true),
            Decision::NotMine,
            "unclaimed, not the leader"
        );
    }

    #[test]
    fn a_replica_without_its_own_lease_writes_nothing() {
        let v = View {
            alive: false,
            leader: true,
            serving: true,
            ..view("a", Some("a"))
        };
        assert_eq!(decide(v, |_| true), Decision::NotMine);
    }

    #[test]
    fn a_lease_is_alive_while_its_renew_time_changes_as_seen_here() {
        let mut o = Observed::default();
        let t0 = Instant::now();
        let d = Duration::from_secs(10);
        let lease = |h: &str, r: &str| (h.to_string(), r.to_string(), d);
        assert!(!o.seen_since(t0));
        assert!(
            o.observe([lease("a", "1"), lease("b", "1")], t0, t0)
                .is_empty()
        );
        assert!(o.seen_since(t0) && !o.seen_since(t0 + Duration::from_millis(1)));
        assert_eq!(o.alive_replicas(t0), ["a", "b"]);
        // a renews, b does not: b dies once its duration has passed since its last change was seen.
        let t1 = t0 + Duration::from_secs(6);
        assert!(
            o.observe([lease("a", "2"), lease("b", "1")], t1, t1)
                .is_empty()
        );
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(o.observe([lease("a", "2"), lease("b", "1")], t2, t2), ["b"]);
        assert!(o.alive("a", t2) && !o.alive("b", t2));
        assert_eq!(
            o.observe([lease("a", "3"), lease("b", "1")], t2, t2),
            Vec::<String>::new(),
            "reported once"
        );
        // A Lease that disappears is dead; one that renews again is alive again.
        assert_eq!(o.observe([lease("b", "2")], t2, t2), ["a"]);
        assert!(o.alive("b", t2));
    }
}
