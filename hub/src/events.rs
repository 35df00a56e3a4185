//! Kubernetes Events (`events.k8s.io/v1`) about RemoteClusters, for people.
//!
//! As kube's `Recorder` and client-go's: the same event (type, reason, action, object) again
//! within [`SERIES_TTL`] counts on the first Event's series instead of creating another. Unlike
//! kube's, what this remembers of each event is its key, name, count and time, not the whole Event
//! object. A hub reports on every remote at once after a restart, and kube's cache kept 1.4 KiB per
//! remote inline in a table that never shrinks (2.95 MB at 1,000 remotes, measured with
//! heaptrack). Here it is about 200 bytes each, and the table shrinks once the entries expire.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a repeat joins the first Event's series (client-go's and kube's value).
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Who reports: the Event's `reportingController` and `reportingInstance`.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    seen: Mutex<Seen>,
}

/// The events recorded in the last [`SERIES_TTL`], by key.
#[derive(Debug, Default)]
struct Seen {
    series: HashMap<String, Series>,
    pruned: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
struct Series {
    /// The first Event's name.
    name: String,
    count: i32,
    last: Timestamp,
}

impl Seen {
    /// The series a new occurrence at `now` joins, if any; drops what expired (at most once a
    /// minute, giving the table's memory back when most of it expired).
    fn repeat_of(&mut self, key: &str, now: Timestamp) -> Option<Series> {
        if self
            .pruned
            .is_none_or(|at| now.duration_since(at) >= SignedDuration::from_mins(1))
        {
            self.series
                .retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
            if self.series.len() < self.series.capacity() / 4 {
                self.series.shrink_to_fit();
            }
            self.pruned = Some(now);
        }
        self.series
            .get(key)
            .filter(|s| now.duration_since(s.last) < SERIES_TTL)
            .cloned()
    }

    fn recorded(&mut self, key: String, series: Series) {
        self.series.insert(key, series);
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// What makes two events the same occurrence (the note may differ: the series keeps the first's).
fn key(ev: &Event, regarding: &ObjectReference) -> String {
    let part = |s: &Option<String>| s.clone().unwrap_or_default();
    format!(
        "{}/{}/{}/{}/{}/{}",
        part(&regarding.namespace),
        part(&regarding.name),
        part(&regarding.uid),
        type_name(ev.type_),
        ev.reason,
        ev.action
    )
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            seen: Mutex::default(),
        }
    }

    /// Records `ev` about `regarding`: a new Event, or one more on the series of the same event
    /// within [`SERIES_TTL`] (a new Event when that one is gone).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = key(ev, regarding);
        let repeat = self.seen.lock().expect("events lock").repeat_of(&key, now);
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        if let Some(s) = repeat {
            let count = s.count + 1;
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let patch = serde_json::json!({ "series": series });
            match api
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let next = Series {
                        count,
                        last: now,
                        ..s
                    };
                    self.seen.lock().expect("events lock").recorded(key, next);
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(ev, regarding, now);
        let created = api.create(&PostParams::default(), &event).await?;
        let series = Series {
            name: created.metadata.name.unwrap_or_default(),
            count: 1,
            last: now,
        };
        self.seen.lock().expect("events lock").recorded(key, series);
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let name = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            type_: Some(type_name(ev.type_).into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "ComputeSpec".into(),
            secondary: None,
        }
    }

    fn rc(name: &str) -> ObjectReference {
        ObjectReference {
            namespace: Some("istio-system".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn the_same_event_is_one_key_whatever_its_note_and_another_object_or_reason_is_not() {
        let a = key(&ev("Invalid", "first problem"), &rc("remote-1"));
        assert_eq!(a, key(&ev("Invalid", "second problem"), &rc("remote-1")));
        assert_ne!(a, key(&ev("Invalid", "first problem"), &rc("remote-2")));
        assert_ne!(a, key(&ev("NoEndpoints", "first problem"), &rc("remote-1")));
        let recreated = ObjectReference {
            uid: Some("another uid".into()),
            ..rc("remote-1")
        };
        assert_ne!(a, key(&ev("Invalid", "first problem"), &recreated));
    }

    #[test]
    fn a_repeat_joins_the_series_until_it_expires_and_expired_entries_give_their_memory_back() {
        let mut seen = Seen::default();
        let first = Series {
            name: "remote-1.abc".into(),
            count: 1,
            last: at(0),
        };
        assert_eq!(seen.repeat_of("k", at(0)), None);
        seen.recorded("k".into(), first.clone());
        assert_eq!(seen.repeat_of("k", at(300)), Some(first.clone()));
        // Six minutes after the last occurrence: a new Event.
        assert_eq!(seen.repeat_of("k", at(360)), None);

        for i in 0..1000 {
            seen.recorded(
                format!("r{i}"),
                Series {
                    last: at(400),
                    ..first.clone()
                },
            );
        }
        let full = seen.series.capacity();
        assert!(full >= 1000);
        assert!(
            seen.repeat_of("r1", at(700)).is_some(),
            "still in its series"
        );
        assert_eq!(seen.repeat_of("r1", at(800)), None);
        assert!(seen.series.is_empty(), "pruned: {}", seen.series.len());
        assert!(
            seen.series.capacity() < full / 4,
            "{}",
            seen.series.capacity()
        );
    }
}
