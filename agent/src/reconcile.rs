//! The reconciler owns the applier. It applies the newest command (latest wins: a snapshot that
//! arrives while another is being applied replaces any older one still waiting, and cuts the one
//! being applied short once its EndpointSlices are written; writes of it already out go on beside
//! the newer one's slices) and repairs drift when the watches ring,
//! with the snapshot it last applied. Results go back to the stream as ACK/NACK; a snapshot cut short,
//! or applied while a newer one already waits, is not answered (the hub takes the newer one's answer
//! for both).
//! Watch events that are only the echoes of the agent's own writes bring no pass.
//! A snapshot that did not apply completely is retried with capped exponential backoff, and ACKed
//! (same version and nonce) once it applies: a NACK never sticks after its cause is gone. The other
//! way round too: when a later pass (drift, a namespace deleted) finds the snapshot no longer in
//! effect, it NACKs it again, so the hub never reports Synced for a state the cluster left.

use crate::apply::Applier;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::v1::{ObjectFailure, Snapshot};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// What the stream asks of the reconciler.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Apply(Arc<Snapshot>),
    Retire {
        nonce: String,
    },
    /// Another agent with this cluster's identity serves: stop applying and repairing until a
    /// snapshot comes again.
    StandDown,
}

/// The answer the stream forwards to the hub.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A snapshot's outcome: ACK when `failures` is empty, else NACK.
    Applied {
        version: String,
        nonce: String,
        failures: Vec<ObjectFailure>,
    },
    /// A Retire's outcome: Retired when `failures` is empty, else NACK (no version).
    Retired {
        nonce: String,
        failures: Vec<ObjectFailure>,
    },
}

/// Shared with the stream client and the admin side: how far the agent got.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Version of the last snapshot applied without failures.
    pub applied_version: String,
    /// Set once a snapshot has been applied.
    pub first_applied: bool,
    pub retired: bool,
    /// Another agent with this identity serves; this one applies nothing.
    pub standing_by: bool,
}

impl Progress {
    /// What `/ready` says: a snapshot applied, and this agent serving.
    pub fn ready(&self) -> bool {
        self.first_applied && !self.standing_by
    }
}

/// First retry of a snapshot that did not apply completely; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long watch events may keep arriving before a drift pass runs.
const DRIFT_SETTLE: Duration = Duration::from_millis(50);

pub async fn run(
    mut applier: Applier,
    mut commands: watch::Receiver<Option<Command>>,
    results: mpsc::Sender<Answer>,
    progress: watch::Sender<Progress>,
) {
    applier.live().ready().await;
    info!("local watches synced");
    let drift = applier.live().drift.clone();
    let mut current: Option<Arc<Snapshot>> = None;
    // Set while the current snapshot has failures: when to try again, and the next delay.
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    // Whether the hub last heard that the current snapshot is fully applied.
    let mut reported_ok = false;
    // When the pending drift pass runs: a burst of someone else's changes (a relist, a script's
    // edits) settles into one pass, and a snapshot from the hub never waits for it.
    let mut drift_at: Option<tokio::time::Instant> = None;
    loop {
        let retry_at = retry.map(|(at, _)| at);
        let from_hub = tokio::select! {
            changed = commands.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(cmd) = commands.borrow_and_update().clone() else { continue };
                match cmd {
                    Command::Apply(snap) => {
                        current = Some(snap);
                        progress.send_if_modified(|s| std::mem::replace(&mut s.standing_by, false));
                        true
                    }
                    Command::StandDown => {
                        current = None;
                        retry = None;
                        drift_at = None;
                        progress.send_modify(|s| s.standing_by = true);
                        continue;
                    }
                    Command::Retire { nonce } => {
                        let outcome = applier.retire().await;
                        current = None;
                        retry = None;
                        progress.send_modify(|s| {
                            s.retired = true;
                            s.applied_version.clear();
                        });
                        let _ = results.send(Answer::Retired { nonce, failures: outcome.failures }).await;
                        continue;
                    }
                }
            }
            _ = drift.notified(), if current.is_some() && drift_at.is_none() => {
                // Told apart as they come: the echoes of this agent's own writes (most events)
                // arm no timer, so a change costs no wake-up 50 ms later. Writes still out (an
                // overtaken snapshot's) are not in the overlay yet: their echoes bring a pass,
                // which finds them in effect.
                if applier.only_own_writes_seen() {
                    debug!("the watches showed only this agent's own writes; no drift pass");
                } else {
                    drift_at = Some(tokio::time::Instant::now() + DRIFT_SETTLE);
                }
                continue;
            }
            _ = sleep_until(drift_at), if drift_at.is_some() => {
                drift_at = None;
                false
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => false,
        };
        let Some(snap) = current.clone() else {
            continue;
        };
        // This pass reads the live state afresh: it covers any drift noticed so far.
        drift_at = None;
        let outcome = applier.apply(&snap, &commands).await;
        if outcome.superseded {
            // The newer command is taken on the next turn, at once.
            continue;
        }
        let ok = outcome.failures.is_empty();
        if !from_hub && outcome.writes > 0 {
            info!(writes = outcome.writes, "repaired drift");
        }
        retry = match (ok, retry) {
            (true, _) => None,
            (false, Some((_, delay))) if !from_hub => {
                let next = (delay * 2).min(RETRY_MAX);
                Some((tokio::time::Instant::now() + next, next))
            }
            (false, _) => Some((tokio::time::Instant::now() + RETRY_FIRST, RETRY_FIRST)),
        };
        if let Some((_, delay)) = retry {
            warn!(
                failures = outcome.failures.len(),
                ?delay,
                "snapshot not fully applied; retrying"
            );
        }
        progress.send_modify(|s| {
            s.first_applied = true;
            s.retired = false;
            if ok {
                s.applied_version = snap.version.clone();
            }
        });
        // A newer snapshot already waits (a pod's deletion is two states in a row): its answer
        // frees this one too, so this one goes unanswered and the newer one's writes do not wait
        // behind sending it. What it would have said is stale by then anyway.
        let newer_waits = commands.has_changed().unwrap_or(false)
            && matches!(*commands.borrow(), Some(Command::Apply(_)));
        if from_hub && newer_waits {
            applier.answered_by_newer();
            debug!(version = %snap.version, "applied; a newer snapshot waits, which answers for it");
            continue;
        }
        // Answer every snapshot from the hub; answer again whenever the snapshot's state changes
        // (a failing one finally applied, or an applied one no longer in effect).
        if from_hub || ok != reported_ok {
            reported_ok = ok;
            let answer = Answer::Applied {
                version: snap.version.clone(),
                nonce: snap.nonce.clone(),
                failures: outcome.failures,
            };
            let _ = results.send(answer).await;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
