//! Feeds a Kubernetes watch into the index through [`Watched`]: lists are applied whole when they
//! end (a relist replaces what the index had, so objects deleted while the watch was down go), and a
//! failed watch is polled again after [`ApiRetry`]'s wait.

use crate::index::{Index, Watched};
use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use std::sync::{Arc, RwLock};
use tether_proto::runtime::retry::ApiRetry;
use tracing::{debug, warn};

/// `410 Gone`: the watch fell behind the server's history (as after an outage); a relist follows.
fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// Drops `managedFields` (the index never reads them; they are most of a cached object).
pub fn strip_managed_fields<K: Resource>(mut event: Event<K>) -> Event<K> {
    let strip = |o: &mut K| o.meta_mut().managed_fields = None;
    match &mut event {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => strip(o),
        Event::Init | Event::InitDone => {}
    }
    event
}

/// Applies one watch's events to the index until the watch ends.
pub async fn feed<K>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    index: Arc<RwLock<Index>>,
) where
    K: Resource<DynamicType = ()> + ResourceExt + Clone + 'static,
    Index: Watched<K>,
{
    let kind = K::kind(&());
    let mut events = std::pin::pin!(events);
    let mut listing: Vec<K> = Vec::new();
    let mut retry = ApiRetry::default();
    while let Some(event) = events.next().await {
        if event.is_ok() {
            retry.succeeded();
        }
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => listing.push(o),
            Ok(Event::InitDone) => {
                index.write().expect("index lock").reset(&listing);
                debug!(%kind, objects = listing.len(), "watch listed");
                listing.clear();
            }
            Ok(Event::Apply(o)) => index.write().expect("index lock").apply(&o),
            Ok(Event::Delete(o)) => index.write().expect("index lock").delete(&o.name_any()),
            // Say so once per failure so operators see RBAC or network trouble; the watcher retries
            // when polled again.
            Err(error) => {
                let wait = retry.failed(is_gone(&error));
                warn!(%kind, %error, ?wait, "watch failed; retrying with backoff (check the hub's RBAC and API server)");
                tokio::time::sleep(wait).await;
            }
        }
    }
    debug!(%kind, "watch ended");
}
