//! One stream's side of the protocol, pure: which message moves the agent to the desired state, what
//! is in flight, and what an answer from the agent means. No I/O, no locks: the stream loop in
//! `grpc` sends what this returns and applies the [`Answer`]s to the stream state and metrics.
//!
//! ```text
//!  Desired ─message_for─► Snapshot/Retire (new nonce) ─mark_sent─► in flight (up to WINDOW)
//!  AgentMessage ─answer─► Answer::{Acked, Nacked, Retired, RetireFailed, Ignored}, frees its message
//!                         and every older one
//! ```
//! Nonces are numbers here; the wire carries them as decimal strings.

use crate::desired::Desired;
use k8s_openapi::jiff::Timestamp;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tether_proto::v1::{AgentMessage, HubMessage, Retire, agent_message, hub_message};

/// Sent-but-unacknowledged messages remembered per stream (latest wins, so few are ever outstanding).
const MAX_OUTSTANDING: usize = 16;

/// Messages in flight at once: the state the agent is applying and the newest one behind it. With
/// the newer state at hand, the agent skips what it has not yet written of the older one (after the
/// EndpointSlices) and applies the newer at once, instead of finishing the older, answering, and
/// waiting a round trip for the newer. The agent answers the newer only, which frees both, so it
/// always applies one state completely before the hub sends another: a stream of changes cannot
/// starve the writes that come after the slices. Further states wait, latest wins.
pub const WINDOW: usize = 2;

/// What the agent's message means for the remote.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The agent holds `version` (first answer, or a re-report that it holds again).
    Acked {
        version: String,
        /// Message sent -> this answer (None for a re-report).
        push_ack: Option<Duration>,
        /// Central change seen -> this answer (None for a re-report or a stream's first message).
        propagation: Option<Duration>,
    },
    /// The agent could not apply `version`, or reports that it no longer holds.
    Nacked {
        version: String,
        message: String,
        conflict: bool,
    },
    /// The agent removed everything it managed.
    Retired,
    /// The agent could not remove everything; it keeps trying.
    RetireFailed { message: String },
    /// The agent's API-access tunnel came up or went down (at whichever replica it dialled).
    Tunnel { up: bool },
    /// Not an answer to anything this stream sent (logged, otherwise ignored).
    Ignored(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Carried {
    Snapshot(String),
    Retire,
}

#[derive(Debug)]
struct Sent {
    nonce: u64,
    carried: Carried,
    /// When the message left (None while it waits for the agent's flow control).
    sent_at: Option<Instant>,
    /// When the index computed the state this message carries.
    changed_at: Option<Instant>,
}

/// What one stream sent and still expects an answer for.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Sent and not answered yet, oldest first.
    sent: VecDeque<Sent>,
    next_nonce: u64,
    last_version: String,
    retire_sent: bool,
    /// The messages that left and have no answer yet, oldest first: nonce and when each left.
    in_flight: VecDeque<(u64, Instant)>,
    /// The newest message answered: the agent may report on it again.
    last_answered: Option<(u64, Carried)>,
}

fn nonce_of(msg: &HubMessage) -> u64 {
    let text = match &msg.message {
        Some(hub_message::Message::Snapshot(s)) => &s.nonce,
        Some(hub_message::Message::Retire(r)) => &r.nonce,
        Some(hub_message::Message::Reconnect(_)) | None => "",
    };
    text.parse().unwrap_or(0)
}

impl Outbox {
    /// The message that moves the agent to `d`, if it differs from what was last sent.
    pub fn message_for(&mut self, d: &Desired) -> Option<HubMessage> {
        if d.retire {
            if self.retire_sent {
                return None;
            }
            self.retire_sent = true;
            let nonce = self.record(Carried::Retire, d.changed_at);
            let retire = Retire {
                reason: "RemoteCluster deleted".into(),
                nonce: nonce.to_string(),
            };
            return Some(HubMessage {
                message: Some(hub_message::Message::Retire(retire)),
            });
        }
        let snap = d.snapshot.as_ref()?;
        if snap.version == self.last_version {
            return None;
        }
        self.last_version = snap.version.clone();
        let mut msg = (**snap).clone();
        msg.nonce = self
            .record(Carried::Snapshot(snap.version.clone()), d.changed_at)
            .to_string();
        Some(HubMessage {
            message: Some(hub_message::Message::Snapshot(msg)),
        })
    }

    fn record(&mut self, carried: Carried, changed_at: Option<Instant>) -> u64 {
        self.next_nonce += 1;
        if self.sent.len() == MAX_OUTSTANDING {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            nonce: self.next_nonce,
            carried,
            sent_at: None,
            changed_at,
        });
        self.next_nonce
    }

    /// The first message of a stream is no change of state: it does not measure propagation.
    pub fn first_message_is_no_change(&mut self) {
        if let Some(first) = self.sent.back_mut() {
            first.changed_at = None;
        }
    }

    /// Records that `msg` left now: it is in flight until the agent answers it or a newer one.
    pub fn mark_sent(&mut self, msg: &HubMessage) {
        let nonce = nonce_of(msg);
        let now = Instant::now();
        if let Some(sent) = self.sent.iter_mut().find(|s| s.nonce == nonce) {
            sent.sent_at = Some(now);
        }
        self.in_flight.push_back((nonce, now));
    }

    /// With [`WINDOW`] messages in flight, when the oldest left: nothing more leaves until an answer
    /// (or until the stream gives up waiting). None while another message may leave.
    pub fn window_full_since(&self) -> Option<Instant> {
        (self.in_flight.len() >= WINDOW)
            .then(|| self.in_flight.front().map(|(_, at)| *at))
            .flatten()
    }

    /// The agent takes too long: let the next (newer) message leave anyway.
    pub fn give_up_waiting(&mut self) {
        self.in_flight.clear();
    }

    /// `new` replaces `old` before `old` was sent: `old` is forgotten (it never left), and since the
    /// change it carried is first delivered by `new`, `new` measures propagation from that change.
    pub fn superseded(&mut self, old: &HubMessage, new: &HubMessage) {
        let first = self
            .sent
            .iter()
            .position(|s| s.nonce == nonce_of(old))
            .and_then(|i| self.sent.remove(i))
            .and_then(|s| s.changed_at);
        if let Some(s) = self.sent.iter_mut().find(|s| s.nonce == nonce_of(new)) {
            s.changed_at = match (first, s.changed_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// What the agent's message means. An answer for the message in flight (or a newer one) frees the
    /// stream; answers to messages a newer one superseded are dropped with it.
    pub fn answer(&mut self, m: AgentMessage) -> Answer {
        match m.message {
            Some(agent_message::Message::Ack(ack)) => {
                let carried = Carried::Snapshot(ack.version.clone());
                match self.take(&ack.nonce, &carried, true) {
                    Some(Some(sent)) => Answer::Acked {
                        version: ack.version,
                        push_ack: sent.sent_at.map(|t| t.elapsed()),
                        propagation: sent.changed_at.map(|t| t.elapsed()),
                    },
                    Some(None) => Answer::Acked {
                        version: ack.version,
                        push_ack: None,
                        propagation: None,
                    },
                    None => ignored(&ack.nonce, &ack.version),
                }
            }
            Some(agent_message::Message::Nack(nack)) => {
                let mut message = nack.error_detail.clone();
                for f in &nack.failures {
                    message.push_str(&format!(
                        "; {} {}/{}: {}",
                        f.kind, f.namespace, f.name, f.message
                    ));
                }
                let carried = if nack.version.is_empty() {
                    Carried::Retire
                } else {
                    Carried::Snapshot(nack.version.clone())
                };
                // A NACKed message stays answerable: the agent retries and ACKs it once it holds.
                if self.take(&nack.nonce, &carried, false).is_none() {
                    return ignored(&nack.nonce, &nack.version);
                }
                match carried {
                    Carried::Retire => Answer::RetireFailed { message },
                    Carried::Snapshot(version) => Answer::Nacked {
                        version,
                        message,
                        conflict: nack.failures.iter().any(|f| f.conflict),
                    },
                }
            }
            Some(agent_message::Message::Retired(r)) => {
                match self.take(&r.nonce, &Carried::Retire, true) {
                    Some(_) => Answer::Retired,
                    None => ignored(&r.nonce, "retired"),
                }
            }
            Some(agent_message::Message::Tunnel(t)) => Answer::Tunnel { up: t.up },
            Some(agent_message::Message::Hello(_)) => {
                Answer::Ignored("a second Hello on one stream".into())
            }
            None => Answer::Ignored("an empty message".into()),
        }
    }

    /// Finds the message the answer is for. Some(Some(sent)) for a message in `sent` (forgotten with
    /// everything older when `done`, else only the older ones); Some(None) for a re-report on the last
    /// answered message; None for a nonce this stream did not send.
    fn take(&mut self, nonce: &str, carried: &Carried, done: bool) -> Option<Option<Sent>> {
        let nonce: u64 = nonce.parse().ok()?;
        match self
            .sent
            .iter()
            .position(|s| s.nonce == nonce && s.carried == *carried)
        {
            Some(i) => {
                // An answer frees its message and the older ones: the agent skipped those.
                self.in_flight.retain(|(waiting, _)| *waiting > nonce);
                self.last_answered = Some((nonce, carried.clone()));
                if done {
                    Some(self.sent.drain(..=i).next_back())
                } else {
                    self.sent.drain(..i);
                    Some(None)
                }
            }
            None if self.last_answered == Some((nonce, carried.clone())) => Some(None),
            None => None,
        }
    }
}

fn ignored(nonce: &str, version: &str) -> Answer {
    Answer::Ignored(format!(
        "an answer (nonce {nonce:?}, version {version:?}) for a message this stream did not send"
    ))
}

/// The versions a stream's remote was recently desired at, and when each stopped being desired: an
/// agent that acknowledges a version a newer one has just replaced held the hub's desired state of
/// that moment (it is behind by the time since, which `--sync-deadline` bounds).
#[derive(Debug, Default)]
pub struct Superseded {
    current: String,
    recent: std::collections::VecDeque<(String, Timestamp)>,
}

impl Superseded {
    /// How many replaced versions are remembered (more than the messages a stream has in flight).
    const KEEP: usize = 16;

    /// The desired version is `version` from `now` on.
    pub fn desired(&mut self, version: &str, now: Timestamp) {
        if version == self.current {
            return;
        }
        let old = std::mem::replace(&mut self.current, version.to_string());
        if !old.is_empty() {
            if self.recent.len() == Self::KEEP {
                self.recent.pop_front();
            }
            self.recent.push_back((old, now));
        }
    }

    /// Until when `version` was the desired state: `now` while it is; None if unknown.
    pub fn held_until(&self, version: &str, now: Timestamp) -> Option<Timestamp> {
        if version == self.current {
            return Some(now);
        }
        self.recent
            .iter()
            .rev()
            .find(|(v, _)| v == version)
            .map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_version_was_held_until_it_was_replaced() {
        let t = |s: i64| Timestamp::from_second(1_000 + s).unwrap();
        let mut s = Superseded::default();
        s.desired("v1", t(0));
        assert_eq!(s.held_until("v1", t(1)), Some(t(1)), "current: held now");
        s.desired("v2", t(2));
        s.desired("v2", t(3));
        s.desired("v3", t(4));
        assert_eq!(s.held_until("v1", t(5)), Some(t(2)));
        assert_eq!(s.held_until("v2", t(5)), Some(t(4)));
        assert_eq!(s.held_until("v3", t(5)), Some(t(5)));
        assert_eq!(s.held_until("v0", t(5)), None, "never desired here");
        for i in 0..40 {
            s.desired(&format!("w{i}"), t(10 + i));
        }
        assert_eq!(s.held_until("v1", t(60)), None, "forgotten: bounded");
        assert_eq!(s.held_until("w38", t(60)), Some(t(49)));
    }
    use crate::fixtures::mk_desired as desired;
    use tether_proto::v1::{Ack, Nack, Retired};

    fn ack(version: &str, nonce: u64) -> AgentMessage {
        AgentMessage {
            message: Some(agent_message::Message::Ack(Ack {
                version: version.into(),
                nonce: nonce.to_string(),
            })),
        }
    }

    fn nack(version: &str, nonce: u64) -> AgentMessage {
        AgentMessage {
            message: Some(agent_message::Message::Nack(Nack {
                version: version.into(),
                nonce: nonce.to_string(),
                error_detail: "API server down".into(),
                failures: vec![],
            })),
        }
    }

    fn acked(a: &Answer) -> Option<&str> {
        match a {
            Answer::Acked { version, .. } => Some(version),
            _ => None,
        }
    }

    #[test]
    fn same_version_is_sent_once_with_fresh_nonces_per_message() {
        let mut out = Outbox::default();
        assert!(out.message_for(&desired("v1")).is_some());
        assert!(out.message_for(&desired("v1")).is_none());
        let Some(HubMessage {
            message: Some(hub_message::Message::Snapshot(s)),
        }) = out.message_for(&desired("v2"))
        else {
            panic!("snapshot expected")
        };
        assert_eq!((s.version.as_str(), s.nonce.as_str()), ("v2", "2"));
    }

    #[test]
    fn an_answer_for_a_nonce_not_sent_is_ignored_and_a_replay_is_a_re_report() {
        let mut out = Outbox::default();
        out.message_for(&desired("v1"));
        assert!(matches!(out.answer(ack("v1", 99)), Answer::Ignored(_)));
        assert!(
            matches!(out.answer(ack("v2", 1)), Answer::Ignored(_)),
            "wrong version"
        );
        let first = out.answer(ack("v1", 1));
        assert_eq!(acked(&first), Some("v1"));
        let Answer::Acked { push_ack, .. } = out.answer(ack("v1", 1)) else {
            panic!("a re-report is an ACK")
        };
        assert_eq!(push_ack, None, "a re-report measures nothing");
    }

    #[test]
    fn a_nacked_snapshot_can_still_be_acked_once_the_agent_recovers() {
        let mut out = Outbox::default();
        out.message_for(&desired("v1"));
        assert!(matches!(out.answer(nack("v1", 1)), Answer::Nacked { .. }));
        assert_eq!(acked(&out.answer(ack("v1", 1))), Some("v1"));
    }

    #[test]
    fn the_agent_may_report_again_on_the_last_answered_snapshot_only() {
        let mut out = Outbox::default();
        out.message_for(&desired("v1"));
        assert_eq!(acked(&out.answer(ack("v1", 1))), Some("v1"));
        assert!(matches!(out.answer(nack("v1", 1)), Answer::Nacked { .. }));
        assert_eq!(acked(&out.answer(ack("v1", 1))), Some("v1"));
        out.message_for(&desired("v2"));
        assert_eq!(acked(&out.answer(ack("v2", 2))), Some("v2"));
        assert!(matches!(out.answer(ack("v1", 1)), Answer::Ignored(_)));
    }

    #[test]
    fn retire_is_sent_once_and_answered_with_retired() {
        let mut out = Outbox::default();
        let d = Desired {
            retire: true,
            ..desired("v1")
        };
        let Some(HubMessage {
            message: Some(hub_message::Message::Retire(r)),
        }) = out.message_for(&d)
        else {
            panic!("retire expected")
        };
        assert!(out.message_for(&d).is_none());
        let failed = out.answer(nack("", 1));
        assert!(matches!(failed, Answer::RetireFailed { .. }), "{failed:?}");
        let retired = AgentMessage {
            message: Some(agent_message::Message::Retired(Retired { nonce: r.nonce })),
        };
        assert_eq!(out.answer(retired), Answer::Retired);
    }

    #[test]
    fn two_messages_in_flight_and_an_answer_frees_its_own_and_the_older() {
        let mut out = Outbox::default();
        let v1 = out.message_for(&desired("v1")).unwrap();
        out.mark_sent(&v1);
        assert!(out.window_full_since().is_none(), "a second may leave");
        let v2 = out.message_for(&desired("v2")).unwrap();
        out.mark_sent(&v2);
        assert!(out.window_full_since().is_some(), "v1 and v2 wait");
        let mut pending = out.message_for(&desired("v3")).unwrap();
        // However many states replace each other while the window is full, v1 and v2 stay answerable.
        for i in 4..40 {
            let newer = out.message_for(&desired(&format!("v{i}"))).unwrap();
            out.superseded(&pending, &newer);
            pending = newer;
        }
        assert_eq!(out.sent.len(), 3, "v1, v2 in flight and the newest pending");
        out.answer(ack("v1", 999));
        assert!(
            out.window_full_since().is_some(),
            "a nonce never sent frees nothing"
        );
        // The agent skipped the rest of v1 for v2: v2's answer frees both.
        assert_eq!(acked(&out.answer(ack("v2", 2))), Some("v2"));
        assert!(out.window_full_since().is_none());
        assert!(matches!(out.answer(ack("v1", 1)), Answer::Ignored(_)));
        out.mark_sent(&pending);
        let v40 = out.message_for(&desired("v40")).unwrap();
        out.mark_sent(&v40);
        assert!(out.window_full_since().is_some());
        // An answer to the older frees one place; a NACK is an answer too.
        out.answer(nack("v39", nonce_of(&pending)));
        assert!(out.window_full_since().is_none());
        let v41 = out.message_for(&desired("v41")).unwrap();
        out.mark_sent(&v41);
        assert!(out.window_full_since().is_some());
        out.give_up_waiting();
        assert!(out.window_full_since().is_none(), "a stuck agent");
    }

    #[test]
    fn a_coalesced_message_measures_from_the_first_change_it_carries() {
        let mut out = Outbox::default();
        let early = Instant::now();
        let d2 = Desired {
            changed_at: Some(early),
            ..desired("v2")
        };
        let d3 = Desired {
            changed_at: Some(early + Duration::from_millis(40)),
            ..desired("v3")
        };
        let v2 = out.message_for(&d2).unwrap();
        let v3 = out.message_for(&d3).unwrap();
        out.superseded(&v2, &v3);
        let carried = out.sent.iter().find(|s| s.nonce == nonce_of(&v3)).unwrap();
        assert_eq!(carried.changed_at, Some(early));
    }
}
