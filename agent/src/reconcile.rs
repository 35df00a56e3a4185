//! The reconciler owns the applier. It applies the newest command (latest wins: a snapshot that
//! arrives while another is being applied replaces any older one still waiting) and repairs drift
//! when the watches ring, with the snapshot it last applied. Results go back to the stream as ACK/NACK.

use crate::apply::Applier;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::v1::{ObjectFailure, Snapshot};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// What the stream asks of the reconciler.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Apply(Arc<Snapshot>),
    Retire { nonce: String },
}

/// The answer the stream forwards to the hub.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub version: String,
    pub nonce: String,
    pub failures: Vec<ObjectFailure>,
}

/// Shared with the stream client and the admin side: what is applied.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Version of the last snapshot applied without failures.
    pub applied_version: String,
    /// Set once a snapshot has been applied (ready).
    pub first_applied: bool,
    pub retired: bool,
}

pub async fn run(
    mut applier: Applier,
    mut commands: watch::Receiver<Option<Command>>,
    results: mpsc::Sender<Applied>,
    state: watch::Sender<State>,
) {
    applier.live().ready().await;
    info!("local watches synced");
    let drift = applier.live().drift.clone();
    let mut current: Option<Arc<Snapshot>> = None;
    loop {
        tokio::select! {
            changed = commands.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(cmd) = commands.borrow_and_update().clone() else { continue };
                match cmd {
                    Command::Apply(snap) => {
                        let outcome = applier.apply(&snap).await;
                        let ok = outcome.failures.is_empty();
                        state.send_modify(|s| {
                            s.first_applied = true;
                            s.retired = false;
                            if ok {
                                s.applied_version = snap.version.clone();
                            }
                        });
                        let _ = results.send(Applied { version: snap.version.clone(), nonce: snap.nonce.clone(), failures: outcome.failures }).await;
                        current = Some(snap);
                    }
                    Command::Retire { nonce } => {
                        let outcome = applier.retire().await;
                        current = None;
                        state.send_modify(|s| { s.retired = true; s.applied_version.clear(); });
                        let _ = results.send(Applied { version: tether_proto::RETIRED_VERSION.into(), nonce, failures: outcome.failures }).await;
                    }
                }
            }
            _ = drift.notified(), if current.is_some() => {
                // Let a burst of watch events (a list, our own writes) settle into one pass.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let snap = current.clone().expect("guarded");
                let outcome = applier.apply(&snap).await;
                if outcome.writes > 0 {
                    info!(writes = outcome.writes, "repaired drift");
                }
                for f in &outcome.failures {
                    warn!(kind = %f.kind, name = %f.name, message = %f.message, "drift repair failed for object");
                }
            }
        }
    }
}
