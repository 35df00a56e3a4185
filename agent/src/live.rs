//! The agent's view of its cluster: reflector stores of the Services, EndpointSlices and Endpoints in
//! its namespace and of all Namespaces. Every watch event rings the drift bell, so a hand edit or a
//! deletion is repaired without any periodic re-apply. The events are also kept until the next pass
//! takes them ([`Live::take_events`]): when they are only the echoes of the agent's own writes, no
//! pass is needed.

use crate::objects::Kind;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tether_proto::runtime::retry::ApiRetry;
use tokio::sync::Notify;
use tracing::warn;

pub struct Live {
    namespace: String,
    stores: HashMap<Kind, (ApiResource, Store<DynamicObject>)>,
    /// Per kind, the highest resourceVersion any watch event carried (a deletion's included).
    seen: HashMap<Kind, Arc<AtomicU64>>,
    /// Rung on every change the watches see.
    pub drift: Arc<Notify>,
    events: Arc<Mutex<Events>>,
}

/// What the watches delivered since [`Live::take_events`] was last called.
#[derive(Debug, Default, PartialEq)]
pub struct Events {
    /// Each object a watch event showed changed: (kind, name, resourceVersion).
    pub changed: Vec<(Kind, String, String)>,
    /// Anything else happened too (a deletion, a relist, more changes than are kept): only a pass
    /// can tell what it means.
    pub other: bool,
}

/// Changes kept between two passes; past this, [`Events::other`] is set instead.
const EVENTS_KEPT: usize = 64;

impl Events {
    fn record(&mut self, event: &watcher::Event<DynamicObject>, kind: Kind) {
        match event {
            watcher::Event::Apply(o) if self.changed.len() < EVENTS_KEPT => {
                let rv = o.metadata.resource_version.clone().unwrap_or_default();
                self.changed.push((kind, o.name_any(), rv));
            }
            _ => self.other = true,
        }
    }
}

fn rv_of(o: &DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Live {
    /// Starts the watches; [`Live::ready`] resolves once each delivered its first list.
    pub fn start(client: &Client, namespace: &str) -> Self {
        let drift = Arc::new(Notify::new());
        let events_kept = Arc::new(Mutex::new(Events::default()));
        let mut stores = HashMap::new();
        let mut seen = HashMap::new();
        for kind in [
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Endpoints,
            Kind::Namespace,
        ] {
            let ar = kind.api_resource();
            let writer = Writer::new(ar.clone());
            let store = writer.as_reader();
            let events = reflector(
                writer,
                watcher(kind.api(client, namespace), watcher::Config::default()),
            );
            let bell = drift.clone();
            let kept = events_kept.clone();
            let seen_rv = Arc::new(AtomicU64::new(0));
            seen.insert(kind, seen_rv.clone());
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let mut events = std::pin::pin!(events);
                let mut retry = ApiRetry::default();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            retry.succeeded();
                            if let watcher::Event::Apply(o)
                            | watcher::Event::Delete(o)
                            | watcher::Event::InitApply(o) = &event
                            {
                                seen_rv.fetch_max(rv_of(o), Ordering::AcqRel);
                            }
                            kept.lock().expect("events lock").record(&event, kind);
                            bell.notify_one()
                        }
                        Err(error) => {
                            // 410 Gone: the watch fell behind (as after an outage); a relist follows.
                            let gone =
                                matches!(&error, watcher::Error::WatchError(s) if s.code == 410);
                            let wait = retry.failed(gone);
                            warn!(kind = kind.as_str(), %error, ?wait, hint = watch_hint(&error),
                                "watch failed; retrying with backoff");
                            // The watcher retries when polled again.
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }));
            stores.insert(kind, (ar, store));
        }
        Self {
            namespace: namespace.to_string(),
            stores,
            seen,
            drift,
            events: events_kept,
        }
    }

    /// The watch events since the last call (each store already holds what its events showed).
    pub fn take_events(&self) -> Events {
        std::mem::take(&mut *self.events.lock().expect("events lock"))
    }

    pub async fn ready(&self) {
        for (_, store) in self.stores.values() {
            let _ = store.wait_until_ready().await;
        }
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>> {
        let (ar, store) = &self.stores[&kind];
        let mut key = ObjectRef::new_with(name, ar.clone());
        if kind != Kind::Namespace {
            key = key.within(&self.namespace);
        }
        store.get(&key)
    }

    /// True once the `kind` watch delivered an event at or after resourceVersion `rv`: events come
    /// in order, so the store has seen the write at `rv` (and anything before it).
    pub fn has_seen(&self, kind: Kind, rv: u64) -> bool {
        self.seen[&kind].load(Ordering::Acquire) >= rv
    }

    pub fn all(&self, kind: Kind) -> Vec<Arc<DynamicObject>> {
        self.stores[&kind].1.state()
    }
}

/// What an operator should check for a failed watch: permissions only when the API server said so.
fn watch_hint(error: &watcher::Error) -> &'static str {
    let code = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        },
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::NoResourceVersion => None,
    };
    match code {
        Some(401) => "the API server refused the agent's credentials (its ServiceAccount token)",
        Some(403) => "the API server denied it: check the agent's Role and ClusterRole",
        Some(410) => "the watch fell behind; it relists",
        Some(_) => "the API server answered with an error",
        None => "the API server could not be reached or the connection broke",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            ..Default::default()
        })
    }

    #[test]
    fn a_watch_failure_points_at_rbac_only_when_the_api_server_denied_it() {
        let denied = watcher::Error::InitialListFailed(kube::Error::Api(status(403)));
        assert!(watch_hint(&denied).contains("Role"));
        let unreachable = watcher::Error::WatchStartFailed(kube::Error::Service(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )));
        assert!(!watch_hint(&unreachable).contains("Role"));
        assert!(watch_hint(&watcher::Error::WatchError(status(401))).contains("credentials"));
    }
}
