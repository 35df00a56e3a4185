//! The applier: computes the plan for a snapshot ([`crate::plan`]) against what the agent sees and
//! executes it, one API call at a time. A failed call is reported for its object and the rest goes
//! on, so one bad object never blocks the others.
//!
//! Freshness: the stores lag our own writes by one watch event, so the server's answer to each write is
//! kept as an overlay until the store catches up. Without it a second pass right after a write would
//! see stale state and write again. The overlay also tells the echo of our own write (the same
//! object at the resourceVersion the server answered with) from a change someone else made: a drift
//! pass for echoes alone would find nothing to do, and is not run.

use crate::live::{Events, Live};
use crate::metrics::{AgentMetrics, ObjectKind};
use crate::objects::Kind;
use crate::plan::{self, InEffect, Plan, View, Write, failure};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tether_proto::v1::{ObjectFailure, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// What one pass did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failures: Vec<ObjectFailure>,
    /// API writes (patch, delete) this pass made.
    pub writes: u32,
    /// A newer command was waiting once the EndpointSlices were written, or came while the writes
    /// after them were out, so the rest of the plan was skipped or left to go on: the snapshot is
    /// not applied, and the newer one's plan covers what it did not finish.
    pub superseded: bool,
    /// Superseded while its writes after the slices were out ([`Applier::behind`]).
    overtaken: bool,
    /// Writes of an older snapshot landed after this plan was made: plan again before the rest.
    replan: bool,
}

/// A newer command for the applier: whether one waits, and a way to wait for one.
pub trait Newer {
    /// A newer command waits now.
    fn waits(&self) -> bool;
    /// Resolves once a newer command waits (at once if one does); never, if none can come.
    fn arrives(&self) -> impl Future<Output = ()> + Send;
}

/// The reconciler's command channel: anything sent after what it last took is newer.
impl<T: Send + Sync> Newer for watch::Receiver<T> {
    fn waits(&self) -> bool {
        self.has_changed().unwrap_or(false)
    }

    fn arrives(&self) -> impl Future<Output = ()> + Send {
        // A clone starts at the same version: it sees what this one has not taken yet.
        let mut commands = self.clone();
        async move {
            if commands.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Nothing newer can come: the plan runs to its end (a retire).
pub struct Never;

impl Newer for Never {
    fn waits(&self) -> bool {
        false
    }

    fn arrives(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

#[derive(Clone)]
enum Written {
    /// The server's answer to our apply.
    Applied(Arc<Applied>),
    /// We deleted the object at this resourceVersion.
    Deleted(String),
}

/// The server's answer to one of our applies: its resourceVersion read at once, the object parsed
/// only when a plan asks for it before the watch has delivered the echo. The echo usually comes
/// first and the entry is dropped unread; parsing every answer into an object was a twentieth of
/// the agent's CPU in section 1 of the benchmarks.
struct Applied {
    resource_version: Option<String>,
    text: String,
    object: OnceLock<Option<Arc<DynamicObject>>>,
}

impl Applied {
    /// Reads the resourceVersion of an answer (all that is read of it until a plan needs more).
    fn read(text: String) -> serde_json::Result<Self> {
        #[derive(serde::Deserialize)]
        struct Answer {
            metadata: Meta,
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            #[serde(rename = "resourceVersion", default)]
            resource_version: Option<String>,
        }
        let answer: Answer = serde_json::from_str(&text)?;
        Ok(Self {
            resource_version: answer.metadata.resource_version,
            text,
            object: OnceLock::new(),
        })
    }

    /// The object, parsed on first use.
    fn object(&self) -> Option<Arc<DynamicObject>> {
        self.object
            .get_or_init(|| serde_json::from_str(&self.text).ok().map(Arc::new))
            .clone()
    }

    fn rv(&self) -> u64 {
        number(self.resource_version.as_deref())
    }
}

pub struct Applier {
    writer: Writer,
    live: Live,
    overlay: HashMap<(Kind, String), Written>,
    /// What the last plan found in effect, for the next one.
    in_effect: HashMap<(Kind, String), InEffect>,
    /// The writes after the EndpointSlices of a snapshot that a newer one cut short while they
    /// were out. They go on while the newer one's slices are written (never the same objects:
    /// those writes are all of other kinds) and land before any of its other writes.
    behind: Option<JoinHandle<Vec<Done>>>,
}

/// What a write needs; a copy goes with the writes that go on in the background.
#[derive(Clone)]
struct Writer {
    client: Client,
    namespace: String,
    /// Server-side apply field manager; also decides which fields (and namespace labels) are ours.
    field_manager: String,
    metrics: AgentMetrics,
}

fn rv(o: &DynamicObject) -> u64 {
    number(o.metadata.resource_version.as_deref())
}

/// resourceVersions are opaque, but etcd-backed ones are increasing integers; a non-number (0) just
/// means the overlay is never preferred.
fn number(resource_version: Option<&str>) -> u64 {
    resource_version.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// What the API server said, without the client's wrapping: this goes to the hub and into status.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// The stores, overlaid with our own writes they have not caught up with.
struct Current<'a> {
    live: &'a Live,
    overlay: &'a HashMap<(Kind, String), Written>,
    in_effect: &'a HashMap<(Kind, String), InEffect>,
}

impl View for Current<'_> {
    fn in_effect_before(&self, kind: Kind, name: &str) -> Option<&InEffect> {
        self.in_effect.get(&(kind, name.to_string()))
    }

    fn get(&self, kind: Kind, name: &str) -> Option<Arc<DynamicObject>> {
        let stored = self.live.get(kind, name);
        match (self.overlay.get(&(kind, name.to_string())), stored) {
            (Some(Written::Applied(mine)), Some(s)) if mine.rv() > rv(&s) => {
                mine.object().or(Some(s))
            }
            // Not in the store: either it has not seen our write yet, or it saw it and then the
            // object's deletion (someone deleted what we just wrote).
            (Some(Written::Applied(mine)), None) if !self.live.has_seen(kind, mine.rv()) => {
                mine.object()
            }
            (Some(Written::Deleted(at)), Some(s))
                if s.resource_version().as_deref() == Some(at) =>
            {
                None
            }
            (_, stored) => stored,
        }
    }

    fn all(&self, kind: Kind) -> Vec<Arc<DynamicObject>> {
        // Names from the store and from our own applies; each at its freshest.
        let mut names: Vec<String> = self.live.all(kind).iter().map(|o| o.name_any()).collect();
        names.extend(
            self.overlay
                .iter()
                .filter(|((k, _), w)| *k == kind && matches!(w, Written::Applied(_)))
                .map(|((_, name), _)| name.clone()),
        );
        names.sort();
        names.dedup();
        names.iter().filter_map(|n| self.get(kind, n)).collect()
    }
}

impl Applier {
    pub fn new(
        client: Client,
        namespace: String,
        field_manager: String,
        live: Live,
        metrics: AgentMetrics,
    ) -> Self {
        Self {
            writer: Writer {
                client,
                namespace,
                field_manager,
                metrics,
            },
            live,
            overlay: HashMap::new(),
            in_effect: HashMap::new(),
            behind: None,
        }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    fn view(&self) -> Current<'_> {
        Current {
            live: &self.live,
            overlay: &self.overlay,
            in_effect: &self.in_effect,
        }
    }

    /// Drops overlay entries the stores have caught up with.
    fn prune_overlay(&mut self) {
        let live = &self.live;
        self.overlay
            .retain(|(kind, name), w| match (w, live.get(*kind, name)) {
                (Written::Applied(mine), Some(s)) => mine.rv() > rv(&s),
                (Written::Applied(mine), None) => !live.has_seen(*kind, mine.rv()),
                (Written::Deleted(at), Some(s)) => {
                    s.resource_version().as_deref() == Some(at.as_str())
                }
                (Written::Deleted(_), None) => false,
            });
    }

    /// Counts a snapshot applied completely but left unanswered: a newer one waited.
    pub fn answered_by_newer(&self) {
        self.writer.metrics.snapshots_answered_by_newer.inc();
    }

    /// True when every change the watches showed since the last pass is the echo of one of this
    /// agent's own applies: a pass would find the cluster as the last one left it. Takes the events.
    pub fn only_own_writes_seen(&self) -> bool {
        echoes_only(&self.live.take_events(), &self.overlay)
    }

    /// The plan for `snap` against what the agent sees now; what it finds in effect is kept for
    /// the next plan.
    fn plan(&mut self, snap: &Snapshot) -> Plan {
        // This pass reads the stores as they are: it covers every event so far.
        self.live.take_events();
        self.prune_overlay();
        let w = &self.writer;
        let mut plan = plan::snapshot(snap, &w.namespace, &w.field_manager, &self.view());
        self.in_effect = std::mem::take(&mut plan.in_effect).into_iter().collect();
        plan
    }

    /// Makes the remote match `snap`. Failures are per object; everything else is applied. When
    /// `newer` says, after the EndpointSlices or while the writes after them are out, that a newer
    /// command waits, the rest is skipped or left to finish on its own ([`Outcome::superseded`]).
    pub async fn apply(&mut self, snap: &Snapshot, newer: &impl Newer) -> Outcome {
        let plan = self.plan(snap);
        if let Some(refused) = plan.failures.iter().find(|f| f.kind == "Snapshot") {
            warn!(version = %snap.version, message = %refused.message);
        }
        let mut out = self.execute(plan, newer).await;
        if out.replan {
            // The older snapshot's writes landed after the plan was made: what it planned beyond
            // the slices may be stale (an object the older one just changed, that the plan found
            // as this snapshot wants it). Plan again, with them.
            debug!(version = %snap.version, "the older snapshot's writes landed; planning the rest again");
            let plan = self.plan(snap);
            let rest = self.execute(plan, newer).await;
            out = Outcome {
                writes: out.writes + rest.writes,
                ..rest
            };
        }
        let metrics = &self.writer.metrics;
        if out.superseded {
            metrics.snapshots_superseded.inc();
            if out.overtaken {
                metrics.snapshots_overtaken.inc();
                debug!(version = %snap.version, writes = out.writes, "superseded while its writes after the slices are out; they go on");
            } else {
                debug!(version = %snap.version, writes = out.writes, "superseded after its EndpointSlices");
            }
            return out;
        }
        metrics.snapshots_applied.inc();
        for f in &out.failures {
            metrics
                .apply_errors
                .get_or_create(&ObjectKind {
                    kind: f.kind.clone(),
                })
                .inc();
        }
        if out.writes > 0 || !out.failures.is_empty() {
            info!(version = %snap.version, writes = out.writes, failures = out.failures.len(), "snapshot applied");
        }
        out
    }

    /// Removes everything this agent manages: the answer to `Retire`.
    pub async fn retire(&mut self) -> Outcome {
        let mut out = Outcome::default();
        if let Some(behind) = self.behind.take() {
            self.land(behind, &mut out).await;
        }
        self.live.take_events();
        self.prune_overlay();
        let mut plan = plan::retire(&self.writer.field_manager, &self.view());
        self.in_effect = std::mem::take(&mut plan.in_effect).into_iter().collect();
        let landed = out.writes;
        let mut out = self.execute(plan, &Never).await;
        out.writes += landed;
        info!(
            writes = out.writes,
            failures = out.failures.len(),
            "retired: removed everything this agent managed"
        );
        out
    }

    /// Runs the plan's writes in two phases: the EndpointSlices, then the rest (Services, legacy
    /// Endpoints, namespace labels). Slices are what istiod and kube-proxy read, so a change reaches
    /// them in one write's time on an API server that is not also busy with the Endpoints write
    /// (measured in docs/benchmarks.md, section 1). Within a phase each write is to a different
    /// object, so up to [`WRITES_AT_ONCE`] go to the API server together: a large plan (a retire,
    /// many Services) takes the time of its slowest writes, not their sum, and does not become a
    /// burst of hundreds of requests.
    ///
    /// A newer state does not wait for this one's second phase: when `newer` has one before it
    /// starts, it is skipped; when one comes while it is out, it goes on as [`Applier::behind`] and
    /// the newer state's slices are written at once. (A pod's deletion is two states close together:
    /// its endpoint turns terminating, then goes.) Their writes land before the newer state's
    /// second phase, which is planned again with them.
    async fn execute(&mut self, plan: Plan, newer: &impl Newer) -> Outcome {
        let mut out = Outcome {
            failures: plan.failures,
            ..Outcome::default()
        };
        let (slices, rest) = phases(plan.writes);
        let done = batch(&self.writer, slices).await;
        self.record(done, &mut out);
        if let Some(behind) = self.behind.take() {
            if newer.waits() {
                // Newer still: it plans after these land.
                self.behind = Some(behind);
                out.superseded = true;
                return out;
            }
            self.land(behind, &mut out).await;
            out.replan = true;
            return out;
        }
        if rest.is_empty() {
            return out;
        }
        if newer.waits() {
            out.superseded = true;
            return out;
        }
        let writer = self.writer.clone();
        let mut writes = tokio::spawn(async move { batch(&writer, rest).await });
        tokio::select! {
            biased;
            done = &mut writes => self.record(joined(done), &mut out),
            () = newer.arrives() => {
                self.behind = Some(writes);
                out.superseded = true;
                out.overtaken = true;
            }
        }
        out
    }

    /// Keeps what writes did: their answers in the overlay and the record of what is in effect,
    /// their calls and failures in `out`.
    fn record(&mut self, done: Vec<Done>, out: &mut Outcome) {
        for d in done {
            out.writes += d.calls;
            self.overlay.extend(d.written);
            self.in_effect.extend(d.in_effect);
            if let Some(f) = d.failure {
                out.failures.push(f);
            }
        }
    }

    /// Waits for an older snapshot's writes and keeps what they did. Their failures were the older
    /// snapshot's, which goes unanswered: the newer one's plan tries those objects again.
    async fn land(&mut self, behind: JoinHandle<Vec<Done>>, out: &mut Outcome) {
        let mut done = joined(behind.await);
        for d in &mut done {
            d.failure = None;
        }
        self.record(done, out);
    }
}

/// A phase's writes, up to [`WRITES_AT_ONCE`] at a time.
async fn batch(writer: &Writer, writes: Vec<Write>) -> Vec<Done> {
    use futures::StreamExt;
    futures::stream::iter(writes)
        .map(|w| writer.run(w))
        .buffer_unordered(WRITES_AT_ONCE)
        .collect()
        .await
}

/// The writes a task made; a panic in one goes on as the reconciler's own.
fn joined(result: Result<Vec<Done>, tokio::task::JoinError>) -> Vec<Done> {
    match result {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels it.
        Err(_) => Vec::new(),
    }
}

impl Writer {
    /// One write of a plan (a recreate is two calls, in order).
    async fn run(&self, write: Write) -> Done {
        let (kind, name) = (write.kind(), write.name());
        let ns = if kind == Kind::Namespace {
            String::new()
        } else {
            self.namespace.clone()
        };
        let mut done = Done::default();
        let result = match write {
            Write::Apply {
                kind,
                name,
                body,
                force,
            } => self
                .write(kind, &name, body, force, &mut done)
                .await
                .map_err(|e| apply_failure(kind, &e)),
            Write::Delete { kind, object } => self
                .delete(kind, &object, &mut done)
                .await
                .map_err(|e| (format!("delete: {}", reason(&e)), false)),
            Write::Recreate { kind, object, body } => {
                match self.delete(kind, &object, &mut done).await {
                    Err(e) => Err((format!("recreate: {}", reason(&e)), false)),
                    Ok(()) => self
                        .write(kind, &name, body, true, &mut done)
                        .await
                        .map_err(|e| apply_failure(kind, &e)),
                }
            }
        };
        if let Err((message, conflict)) = result {
            done.failure = Some(failure(kind, &ns, &name, message, conflict));
        }
        done
    }

    /// Server-side apply. The answer is read as text: only its resourceVersion is needed now.
    async fn write(
        &self,
        kind: Kind,
        name: &str,
        body: Value,
        force: bool,
        done: &mut Done,
    ) -> kube::Result<()> {
        let mut params = PatchParams::apply(&self.field_manager);
        params.force = force;
        let api = kind.api(&self.client, &self.namespace);
        let mut request = kube::core::Request::new(api.resource_url())
            .patch(name, &params, &Patch::Apply(&body))
            .map_err(kube::Error::BuildRequest)?;
        request.extensions_mut().insert("patch");
        let answer = self.client.request_text(request).await;
        done.calls += 1;
        self.metrics.write(kind.as_str(), "apply");
        let answer = Applied::read(answer?).map_err(kube::Error::SerdeError)?;
        debug!(kind = kind.as_str(), name, "applied");
        // What an apply returns has the body in effect: the next plan need not check it again.
        if let Some(resource_version) = answer.resource_version.clone() {
            done.in_effect.push((
                (kind, name.to_string()),
                InEffect {
                    resource_version,
                    body,
                },
            ));
        }
        done.written
            .push(((kind, name.to_string()), Written::Applied(Arc::new(answer))));
        Ok(())
    }

    async fn delete(&self, kind: Kind, obj: &DynamicObject, done: &mut Done) -> kube::Result<()> {
        let name = obj.name_any();
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: obj.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let res = kind
            .api(&self.client, &self.namespace)
            .delete(&name, &dp)
            .await;
        done.calls += 1;
        self.metrics.write(kind.as_str(), "delete");
        match res {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
        .map(|()| {
            debug!(kind = kind.as_str(), %name, "deleted");
            let at = obj.resource_version().unwrap_or_default();
            done.written.push(((kind, name), Written::Deleted(at)));
        })
    }
}

/// Every change in `events` is an object at the resourceVersion our own apply of it returned, and
/// nothing else happened.
fn echoes_only(events: &Events, overlay: &HashMap<(Kind, String), Written>) -> bool {
    !events.other
        && events.changed.iter().all(|(kind, name, rv)| {
            matches!(overlay.get(&(*kind, name.clone())),
                Some(Written::Applied(mine)) if mine.resource_version.as_deref() == Some(rv.as_str()))
        })
}

/// The plan's writes split into the phases [`Applier::execute`] runs in order: EndpointSlices, then
/// everything else; each phase in plan order.
fn phases(writes: Vec<Write>) -> (Vec<Write>, Vec<Write>) {
    writes
        .into_iter()
        .partition(|w| w.kind() == Kind::EndpointSlice)
}

/// Writes of one plan in flight at once.
const WRITES_AT_ONCE: usize = 8;

/// What one write of a plan did: API calls made, what it leaves in the overlay and in the record of
/// what is in effect, its failure.
#[derive(Default)]
struct Done {
    calls: u32,
    written: Vec<((Kind, String), Written)>,
    in_effect: Vec<((Kind, String), InEffect)>,
    failure: Option<ObjectFailure>,
}

/// (message, conflict) for a failed apply. Only namespaces are applied without force, so only they
/// can conflict with another manager.
fn apply_failure(kind: Kind, e: &kube::Error) -> (String, bool) {
    let conflict = matches!(e, kube::Error::Api(status) if status.is_conflict());
    if conflict && kind == Kind::Namespace {
        (
            format!(
                "another manager set an injection label to a different value; Tether does not overwrite it ({})",
                reason(e)
            ),
            true,
        )
    } else {
        (reason(e), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(kind: Kind, name: &str) -> Write {
        Write::Apply {
            kind,
            name: name.into(),
            body: Value::Null,
            force: true,
        }
    }

    fn applied(name: &str, rv: &str) -> ((Kind, String), Written) {
        let mut o = DynamicObject::new(name, &Kind::EndpointSlice.api_resource());
        o.metadata.resource_version = Some(rv.into());
        let answer = Applied::read(serde_json::to_string(&o).unwrap()).unwrap();
        (
            (Kind::EndpointSlice, name.into()),
            Written::Applied(Arc::new(answer)),
        )
    }

    #[test]
    fn an_apply_answer_is_parsed_whole_only_when_asked_for() {
        let text = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"istiod-v4-0","namespace":"istio-system","resourceVersion":"42",
                "labels":{"app.kubernetes.io/managed-by":"tether"}},
            "addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]}]}"#;
        let answer = Applied::read(text.to_string()).unwrap();
        assert_eq!(answer.resource_version.as_deref(), Some("42"));
        assert_eq!(answer.rv(), 42);
        assert!(answer.object.get().is_none(), "not parsed yet");
        let object = answer.object().expect("an object");
        assert_eq!(object.name_any(), "istiod-v4-0");
        assert_eq!(object.data["endpoints"][0]["addresses"][0], "10.0.0.1");
        assert!(
            Arc::ptr_eq(&object, &answer.object().unwrap()),
            "parsed once"
        );
        // An answer without a resourceVersion is still an answer; it is never preferred to the store.
        let bare = Applied::read(r#"{"metadata":{"name":"x"}}"#.into()).unwrap();
        assert_eq!((bare.resource_version.as_deref(), bare.rv()), (None, 0));
        // Not JSON at all is an error, as it was when the answer was parsed whole.
        assert!(Applied::read("<html>".into()).is_err());
    }

    fn changed(name: &str, rv: &str) -> (Kind, String, String) {
        (Kind::EndpointSlice, name.into(), rv.into())
    }

    #[test]
    fn only_the_echoes_of_our_own_applies_skip_a_drift_pass() {
        let overlay: HashMap<_, _> = [applied("a-v4-0", "10"), applied("b-v4-0", "12")].into();
        let events = |changed: Vec<(Kind, String, String)>, other| Events { changed, other };
        assert!(echoes_only(&events(vec![], false), &overlay));
        assert!(echoes_only(
            &events(
                vec![changed("a-v4-0", "10"), changed("b-v4-0", "12")],
                false
            ),
            &overlay
        ));
        // Someone changed it after our write, or we never wrote it: a pass must look.
        assert!(!echoes_only(
            &events(vec![changed("a-v4-0", "11")], false),
            &overlay
        ));
        assert!(!echoes_only(
            &events(vec![changed("c-v4-0", "13")], false),
            &overlay
        ));
        // Another kind's object of the same name and resourceVersion is not what we applied.
        let endpoints = (Kind::Endpoints, "a-v4-0".to_string(), "10".to_string());
        assert!(!echoes_only(&events(vec![endpoints], false), &overlay));
        // A deletion or a relist went by: never taken for an echo.
        assert!(!echoes_only(
            &events(vec![changed("a-v4-0", "10")], true),
            &overlay
        ));
        // Deleted by us is no echo of an apply.
        let deleted: HashMap<_, _> = [(
            (Kind::EndpointSlice, "a-v4-0".to_string()),
            Written::Deleted("10".into()),
        )]
        .into();
        assert!(!echoes_only(
            &events(vec![changed("a-v4-0", "10")], false),
            &deleted
        ));
    }

    #[test]
    fn endpoint_slices_are_written_before_everything_else_in_plan_order() {
        let writes = vec![
            apply(Kind::Service, "a"),
            apply(Kind::Endpoints, "a"),
            apply(Kind::EndpointSlice, "a-v4-0"),
            apply(Kind::Namespace, "apps"),
            apply(Kind::EndpointSlice, "b-v4-0"),
        ];
        let (slices, rest) = phases(writes);
        let names = |w: &[Write]| -> Vec<(Kind, String)> {
            w.iter().map(|w| (w.kind(), w.name())).collect()
        };
        assert_eq!(
            names(&slices),
            [
                (Kind::EndpointSlice, "a-v4-0".to_string()),
                (Kind::EndpointSlice, "b-v4-0".to_string())
            ]
        );
        assert_eq!(
            names(&rest),
            [
                (Kind::Service, "a".to_string()),
                (Kind::Endpoints, "a".to_string()),
                (Kind::Namespace, "apps".to_string())
            ]
        );
    }
}
