//! Which remotes' status inputs changed since the status writer last looked: the index marks a
//! remote when its desired state or its RemoteCluster object changes, the stream state marks it on
//! every change of its streams. The writer takes the set and visits only those; nothing changes, it
//! sleeps (no polling).

use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Changes {
    dirty: Mutex<HashSet<String>>,
    notify: Notify,
}

impl Changes {
    pub fn mark(&self, cluster: &str) {
        let added = self
            .dirty
            .lock()
            .expect("changes lock")
            .insert(cluster.to_string());
        if added {
            self.notify.notify_one();
        }
    }

    pub fn mark_all(&self, clusters: impl IntoIterator<Item = String>) {
        let mut dirty = self.dirty.lock().expect("changes lock");
        let before = dirty.len();
        dirty.extend(clusters);
        if dirty.len() > before {
            self.notify.notify_one();
        }
    }

    /// The remotes marked since the last call.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().expect("changes lock"))
    }

    /// Resolves once something is marked (at once if something was marked since the last take).
    pub async fn changed(&self) {
        loop {
            if !self.dirty.lock().expect("changes lock").is_empty() {
                return;
            }
            // A wake-up left from marks already taken finds the set empty: wait again.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_are_taken_once_and_wake_the_waiter() {
        let c = Changes::default();
        c.mark("a");
        c.mark("a");
        c.mark_all(["b".to_string()]);
        c.changed().await;
        let mut got: Vec<String> = c.take().into_iter().collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert!(c.take().is_empty());
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), c.changed()).await;
        assert!(waiting.is_err(), "nothing marked: still waiting");
    }
}
