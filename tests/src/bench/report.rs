//! docs/benchmarks.md from the measurements, sections in order: 1 propagation, 2 footprint, 3 write
//! amplification, 4 fan-out, 5 reconnect storm, 6 API access, 7 failover between replicas, 8 sustained
//! churn, 9 status settle, 10 the agent's plan. The hand-written analysis below the marker survives.

use super::apiaccess::{ApiAccess, PODS};
use super::fleet::{FANOUT_CHANGES, FanoutRow, Storm, secs};
use super::plan::{NAMESPACES, PLANS, PlanCost, SERVICES};
use super::propagation::{CHANGES, Comparison, Propagation, ROUND, by_kind};
use super::replicas::{Failover, Settle, Sustained};
use super::{ms, percentile};
use std::fmt::Write as _;

/// Hand-written analysis lives below this marker and survives a rerun.
pub const MARKER: &str = "<!-- analysis -->";

pub struct Results {
    pub propagation: Propagation,
    pub api_access: Result<ApiAccess, String>,
    /// One row per fan-out size; Err names a size that failed.
    pub fanout: Vec<Result<FanoutRow, String>>,
    pub storms: Vec<Storm>,
    pub failover: Result<Failover, String>,
    pub sustained: Vec<Result<Sustained, String>>,
    pub settle: Vec<Result<Settle, String>>,
    pub plan: Result<PlanCost, String>,
    pub took_secs: f64,
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn summary(v: &[f64]) -> String {
    format!(
        "| {} | {} | {} | {} |",
        ms(percentile(v, 50.0)),
        ms(percentile(v, 90.0)),
        ms(percentile(v, 99.0)),
        ms(percentile(v, 100.0))
    )
}

/// The document above the analysis marker.
pub fn render(r: &Results, date: &str) -> String {
    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "# Benchmarks\n\nWritten by `make bench` (`cargo run --release -p tether-tests --bin tether-bench`) on \
         {date}; the whole run took {:.0} s. Machine: {}. Hub and agents are release builds, run as separate \
         processes with production defaults (keepalive 5 s, status interval 250 ms, 2 status writers, agent backoff 0.5 s..30 s \
         with 50% jitter), mTLS on every stream. Figures are from one run; rerun to compare.\n",
        r.took_secs,
        machine()
    );
    propagation(&mut doc, &r.propagation);
    footprint(&mut doc, &r.propagation);
    writes(&mut doc, &r.propagation);
    fanout(&mut doc, &r.fanout);
    for s in &r.storms {
        storm(&mut doc, s);
    }
    api_access(&mut doc, &r.api_access);
    failover(&mut doc, &r.failover);
    sustained(&mut doc, &r.sustained);
    settle(&mut doc, &r.settle);
    plan_cost(&mut doc, &r.plan);
    doc
}

fn plan_cost(doc: &mut String, r: &Result<PlanCost, String>) {
    let _ = writeln!(
        doc,
        "## 10. The agent's plan for one snapshot
"
    );
    let p = match r {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(doc, "The run failed: {e}\n");
            return;
        }
    };
    let row = |v: &[f64]| {
        format!(
            "{:.3} ms | {:.3} ms",
            percentile(v, 50.0) * 1000.0,
            percentile(v, 99.0) * 1000.0
        )
    };
    let _ = writeln!(
        doc,
        "`plan::snapshot` for a remote with {SERVICES} Services ({} objects: each Service, its \
         EndpointSlice and its Endpoints), every object already as the snapshot wants it, as after \
         most pod changes. The objects are applied with server-side apply to remote-1's API server and \
         read back, managedFields and all; {PLANS} plans timed each way (warm caches; the two ways with \
         the record in alternating blocks of 10). \
         Nothing recorded: every live object is serialised and its owned fields walked, as every plan \
         did before; with the record: what the previous plan found in effect, at the same \
         resourceVersion and body, is not checked again.\n\n\
         | | p50 | p99 |\n| --- | --- | --- |\n\
         | nothing recorded | {} |\n| with the previous plan's record | {} |\n\
         | with the record, and {NAMESPACES} other namespaces on the remote | {} |\n\n\
         Ratio at p50: {:.1}x faster with the record. Every plan also looks at each namespace \
         for injection labels to release: {NAMESPACES} namespaces (in memory, as the API server \
         keeps them: a name, a resourceVersion, the name label; none listed, none labelled) add \
         {:.3} ms at p50.\n",
        p.objects,
        row(&p.unrecorded),
        row(&p.recorded),
        row(&p.many_namespaces),
        percentile(&p.unrecorded, 50.0) / percentile(&p.recorded, 50.0).max(1e-9),
        (percentile(&p.many_namespaces, 50.0) - percentile(&p.recorded, 50.0)) * 1000.0
    );
}

fn settle(doc: &mut String, rows: &[Result<Settle, String>]) {
    let _ = writeln!(
        doc,
        "## 9. Status settle after a burst, 1 and 3 replicas\n\n\
         N load-generator streams spread over the replicas (stream i dials replica i mod R); 20 readiness \
         flips, one every 500 ms. Settled: from the last flip until every RemoteCluster reads Synced and \
         the replicas' live views have every stream acknowledging the last state (polled every 500 ms). \
         Status writes during the burst and the settling, all replicas together. Target: 10,000 remotes \
         settled within 10 s.\n\n\
         | streams | replicas | settled | status writes | central API server CPU per change (beyond its idle) | its idle CPU |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        match r {
            Ok(s) => {
                let _ = writeln!(
                    doc,
                    "| {} | {} | {} | {} | {:.0} ms | {:.0}% of a core |",
                    s.n,
                    s.replicas,
                    secs(s.settled_secs),
                    s.writes,
                    s.apiserver_cpu_per_change * 1000.0,
                    s.apiserver_idle * 100.0
                );
            }
            Err(e) => {
                let _ = writeln!(doc, "| failed: {e} | | | | | |");
            }
        }
    }
    let _ = writeln!(
        doc,
        "\nWhat the writes changed (a watch on the RemoteClusters diffs each written status against the \
         one before), and the stream clients' reconnects meanwhile:\n"
    );
    for s in rows.iter().flatten() {
        let causes: Vec<String> = s.causes.iter().map(|(c, n)| format!("{n}: {c}")).collect();
        let _ = writeln!(
            doc,
            "- {} streams, {} replica(s): {}; reconnects {:?}",
            s.n,
            s.replicas,
            if causes.is_empty() {
                "no writes".into()
            } else {
                causes.join(" / ")
            },
            s.reconnects
        );
    }
    let _ = writeln!(doc);
}

fn failover(doc: &mut String, r: &Result<Failover, String>) {
    let _ = writeln!(doc, "## 7. Failover between hub replicas\n");
    let f = match r {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(doc, "Failed: {e}\n");
            return;
        }
    };
    let t = &f.times;
    let _ = writeln!(
        doc,
        "Three hub replicas behind a TCP balancer (as a Service); {n} load-generator streams all on the \
         first (the other two started after them, Ready), then the first killed (-9). Time from the kill \
         until each stream had a snapshot from another replica (it ACKs at once).\n\n\
         | streams | back | p50 | p99 | all |\n| --- | --- | --- | --- | --- |\n\
         | {n} | {} | {:.2} s | {:.2} s | {:.2} s |\n",
        f.back,
        percentile(t, 50.0),
        percentile(t, 99.0),
        t.last().copied().unwrap_or(f64::NAN),
        n = f.n,
    );
}

fn sustained(doc: &mut String, rows: &[Result<Sustained, String>]) {
    let _ = writeln!(
        doc,
        "## 8. Sustained churn: status writes and memory\n\n\
         One hub, N load-generator streams and one real agent (remote-1); one istiod readiness flip per \
         second. RemoteCluster status writes (`tether_hub_status_writes_total`) per second over the run, \
         and resident memory sampled during it.\n"
    );
    for r in rows {
        let s = match r {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(doc, "Failed: {e}\n");
                continue;
            }
        };
        let _ = writeln!(
            doc,
            "{} streams, {} changes in {} s: **{:.2} status writes per second**; {} remotes not Synced \
             at the end.\n\n\
             | time | status writes so far | hub RSS | agent RSS | central API server RSS |\n\
             | --- | --- | --- | --- | --- |",
            s.n, s.changes, s.secs, s.writes_per_sec, s.not_synced
        );
        for x in &s.samples {
            let _ = writeln!(
                doc,
                "| {:.0} s | {} | {:.0} MiB | {:.1} MiB | {:.0} MiB |",
                x.at_secs,
                x.writes,
                x.hub_kib as f64 / 1024.0,
                x.agent_kib as f64 / 1024.0,
                x.apiserver_kib as f64 / 1024.0
            );
        }
        let _ = writeln!(doc);
    }
}

fn api_access(doc: &mut String, r: &Result<ApiAccess, String>) {
    let a = match r {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(doc, "## 6. API access\n\nThe run failed: {e}\n");
            return;
        }
    };
    let direct: Vec<f64> = a.watch.iter().map(|w| w.0).collect();
    let agent: Vec<f64> = a.watch.iter().map(|w| w.1).collect();
    let added: Vec<f64> = a.watch.iter().map(|w| w.1 - w.0).collect();
    let _ = writeln!(
        doc,
        "## 6. API access: through the agent vs direct\n\n\
         remote-1's API server read two ways in the same run: directly (its admin client, as a remote \
         secret's token would), and as istiod reads it through the hub's endpoint and the agent's tunnel \
         (the kubeconfig of the remote secret the hub wrote; release builds, production defaults).\n\n\
         Watch: both watches open at once on one ConfigMap, {} replaces; time from just before the write \
         to the event on each.\n\n\
         | | p50 | p90 | p99 | max |\n| --- | --- | --- | --- | --- |\n\
         | direct | {}\n| through the agent | {}\n| added (per event) | {}\n\n\
         LIST of {PODS} pods, protobuf, {} rounds of each, alternating direct / through the agent: as \
         istiod asks (Go's HTTP transport, under client-go, adds `Accept-Encoding: gzip`, and the API server \
         compresses answers over 128 KiB), then without compression (a client that does not ask; every \
         byte through both hops). Time to the whole answer; the first byte's p50 in brackets; the \
         ratios' 95% intervals (a bootstrap over the rounds) after them.\n\n\
         | | size | direct p50 | through the agent p50 | direct p99 | through the agent p99 | ratio p50 | ratio p99 |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |",
        a.watch.len(),
        &summary(&direct)[2..],
        &summary(&agent)[2..],
        &summary(&added)[2..],
        a.lists.first().map_or(0, |l| l.direct.len()),
    );
    // Judged on the LIST istiod asks for; none measured is not met.
    let mut list_met = false;
    for l in &a.lists {
        let (d, g) = l.totals();
        let (fd, fg) = l.first_bytes();
        let ratio = |p| percentile(&g, p) / percentile(&d, p);
        let interval = |p| {
            let (lo, hi) = super::propagation::ratio_interval(&g, &d, 1, p);
            format!("{lo:.2}-{hi:.2}")
        };
        if l.gzip {
            list_met = ratio(50.0) <= 1.5 && ratio(99.0) <= 1.5;
        }
        let _ = writeln!(
            doc,
            "| {} | {:.2} MiB | {} ({}) | {} ({}) | {} | {} | {:.2}x ({}) | {:.2}x ({}) |",
            if l.gzip {
                "as istiod asks (gzip)"
            } else {
                "uncompressed"
            },
            l.bytes as f64 / (1 << 20) as f64,
            ms(percentile(&d, 50.0)),
            ms(percentile(&fd, 50.0)),
            ms(percentile(&g, 50.0)),
            ms(percentile(&fg, 50.0)),
            ms(percentile(&d, 99.0)),
            ms(percentile(&g, 99.0)),
            ratio(50.0),
            interval(50.0),
            ratio(99.0),
            interval(99.0),
        );
    }
    let _ = writeln!(
        doc,
        "\nTargets: under 2 ms added at p99 for watch events ({}); LIST as istiod asks within 1.5x of \
         direct at p50 and p99 ({}).\n",
        met(percentile(&added, 99.0) < 0.002),
        met(list_met),
    );
}

fn propagation(doc: &mut String, p: &Propagation) {
    let (a, b, floor) = (&p.with_endpoints, &p.slices_only, &p.floor);
    let p99 = percentile(&a.tether, 99.0);
    let ratio50 = percentile(&a.tether, 50.0) / percentile(floor, 50.0);
    let ratio99 = p99 / percentile(floor, 99.0);
    let vs = |c: &Comparison| (c.ratio(50.0), c.ratio(99.0));
    let ((a50, a99), (b50, b99)) = (vs(a), vs(b));
    // Each ratio with its 95% interval, and whether the target is met: at the estimate, and
    // whether the whole interval is under it too.
    let interval = |c: &Comparison, p: f64| {
        let (lo, hi) = c.interval(p);
        format!("{lo:.2}-{hi:.2}")
    };
    let target = |c: &Comparison| {
        let top = c.interval(50.0).1.max(c.interval(99.0).1);
        match (c.ratio(50.0) <= 1.05 && c.ratio(99.0) <= 1.05, top <= 1.05) {
            (true, true) => "met, the intervals too".to_string(),
            (true, false) => format!("met at the estimates; the intervals reach {top:.2}x"),
            (false, _) => "not met".to_string(),
        }
    };
    let per_change =
        |w: &[usize]| w.iter().sum::<usize>() as f64 / (CHANGES * w.len().max(1)) as f64;
    let _ = writeln!(
        doc,
        "## 1. Propagation latency (central + 3 remotes)\n\n\
         Changes to the central istiod pods, one at a time (a readiness flip, a new pod with a new IP, \
         a deleted pod, in turn). Time from just before the central write until a watch on the remote \
         delivers the EndpointSlice that shows it (each change x 3 remotes). Baseline: the prior art's \
         architecture (`bench::direct`, process `tether-direct-push`), one central process that watches the \
         same pods and writes each remote's objects itself with a credential for every remote API server, \
         one state in flight per remote and the newest state next; a process of its own, like the hub, \
         writing in a namespace of its own, which the agents do not watch. Both sides write the same objects, in two parts of the run: \
         **(a)** Tether as installed, the EndpointSlice and then the legacy Endpoints, against a direct push \
         that writes both too (the prior art wrote Endpoints), each side skipping a state's Endpoints when a \
         newer state already waits; **(b)** EndpointSlices only: Tether with `legacyEndpoints: false` \
         against a direct push of the slice alone. The slice is the same object on both sides (the \
         Service's two ports, three conditions, managed-by labels). In each part, {CHANGES} changes on each \
         side ({} and {} samples in (a), {} and {} in (b)), taking turns in rounds of {ROUND} changes on the \
         same machine and API servers, each with them to itself: in Tether's rounds the direct push \
         process is stopped (SIGSTOP), in its rounds the hub process is; each round starts once the side taking \
         over has caught up, and catching up is not counted. Floor: one server-side apply of an \
         EndpointSlice on the remote API servers and its watch event ({} samples; without each remote's \
         first apply, which creates the object: {} samples).\n\n\
         | | p50 | p90 | p99 | max |\n| --- | --- | --- | --- | --- |\n\
         | (a) Tether, slice and Endpoints: central write -> remote EndpointSlice event | {}\n\
         | (a) prior art, direct push, slice and Endpoints: the same | {}\n\
         | (b) Tether, slices only | {}\n\
         | (b) prior art, direct push, slice only | {}\n\
         | floor: SSA write -> watch event | {}\n\
         | floor without each remote's first write | {}\n\n\
         Tether / direct push, the same objects written: **(a) {a50:.2}x at p50, {a99:.2}x at p99; \
         (b) {b50:.2}x at p50, {b99:.2}x at p99** (target: within 1.05x: (a) {}, (b) {}). 95% intervals \
         (bootstrap over pairs of rounds, 2,000 resamples): (a) {} at p50, {} at p99; (b) {} at p50, {} \
         at p99. Writes per change and remote: (a) Tether {:.2}, direct push {:.2}; (b) Tether {:.2}, direct push {:.2}.\n\n\
         Tether as installed (a), latency / floor: **{ratio50:.1}x at p50, {ratio99:.1}x at p99**. \
         Target: p99 under 50 ms ({}); within 3x of the floor: at p50 {}, at p99 {}.\n\n\
         By kind of change, p50 / p99, Tether against direct push: (a) {}; (b) {}.\n\n\
         CPU per change, each side's own processes in its rounds and the API servers with their etcds \
         in each side's rounds (from /proc, 10 ms ticks summed over the rounds): (a) {}; (b) {}.\n",
        a.tether.len(),
        a.direct.len(),
        b.tether.len(),
        b.direct.len(),
        floor.len(),
        p.floor_warm.len(),
        &summary(&a.tether)[2..],
        &summary(&a.direct)[2..],
        &summary(&b.tether)[2..],
        &summary(&b.direct)[2..],
        &summary(floor)[2..],
        &summary(&p.floor_warm)[2..],
        target(a),
        target(b),
        interval(a, 50.0),
        interval(a, 99.0),
        interval(b, 50.0),
        interval(b, 99.0),
        per_change(&a.writes),
        per_change(&a.direct_writes),
        per_change(&b.writes),
        per_change(&b.direct_writes),
        met(p99 < 0.050),
        met(ratio50 <= 3.0),
        met(ratio99 <= 3.0),
        by_kind(a),
        by_kind(b),
        a.cpu_ms,
        b.cpu_ms,
    );
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn footprint(doc: &mut String, p: &Propagation) {
    let f = &p.footprint;
    let _ = writeln!(
        doc,
        "## 2. Footprint (release build)\n\n\
         | process | RSS steady | peak RSS | CPU steady (10 s idle) | CPU during Tether's {CHANGES} changes ({:.1} s) |\n\
         | --- | --- | --- | --- | --- |",
        f.churn_secs
    );
    for a in &f.agents {
        let _ = writeln!(
            doc,
            "| agent {} | {} | {} | {:.2}% of a core | {:.1}% of a core |",
            a.name,
            mib(a.steady_rss_kib),
            mib(a.peak_kib),
            a.steady_cpu * 100.0,
            a.churn_cpu * 100.0
        );
    }
    let _ = writeln!(
        doc,
        "| hub (3 remotes) | {} | {} | | {:.1}% of a core |\n\nTarget: agent RSS under 20 MiB ({}).\n",
        mib(f.hub_rss_kib),
        mib(f.hub_peak_kib),
        f.hub_churn_cpu * 100.0,
        met(f.agents.iter().all(|a| a.peak_kib < 20 * 1024))
    );
}

fn writes(doc: &mut String, p: &Propagation) {
    let w = &p.writes;
    let per = |n: usize| n as f64 / CHANGES as f64;
    // Section 1's part (a): Tether as installed.
    let cells = |f: &dyn Fn(usize) -> String| {
        p.with_endpoints
            .writes
            .iter()
            .map(|n| f(*n))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(
        doc,
        "## 3. Write amplification\n\n\
         API writes by each agent, from the remote API server's audit log.\n\n\
         | | remote-1 | remote-2 | remote-3 |\n| --- | --- | --- | --- |\n\
         | writes for {CHANGES} changes | {} |\n\
         | writes per change | {} |\n\n\
         By kind of change (remote-1): readiness flip {:.2}, new pod {:.2}, deleted pod {:.2} writes. A flip \
         or a new pod changes two objects (the istiod EndpointSlice and the legacy Endpoints). A deletion \
         is two states, as with the Kubernetes EndpointSlice controller: the endpoint first turns \
         terminating (pods are deleted gracefully), then goes; so up to 4 writes, 3 when the second \
         state reaches the agent while the first's slice is written (the agent skips the first's \
         Endpoints), 2 when both states arrive together and are coalesced. Writes after a hub restart and a restart of every agent, \
         nothing changed: **{}** (should be 0).\n",
        cells(&|n| n.to_string()),
        cells(&|n| format!("{:.2}", per(n))),
        w.per_kind[0],
        w.per_kind[1],
        w.per_kind[2],
        w.reconnect,
    );
}

fn fanout(doc: &mut String, rows: &[Result<FanoutRow, String>]) {
    let _ = writeln!(
        doc,
        "## 4. Fan-out (one hub, N streams)\n\n\
         A load generator runs N copies of the agent's real stream client (TLS 1.3 with its own client \
         certificate, keepalive, backoff, Hello, ACK) whose applier is replaced by an immediate ACK: no \
         API server behind them. N RemoteClusters exist on the central API server. {FANOUT_CHANGES} readiness \
         flips of one istiod pod; for each, the time from just before the central write until the last of \
         the N streams received the new snapshot (it ACKs at once).\n\n\
         | streams | connect all | all received, p50 | p99 | streams missing | hub RSS | hub RSS per stream | hub CPU idle per stream | hub CPU per change | central API server CPU per change | status writes | statuses settled |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in rows {
        match row {
            Ok(r) => {
                let _ = writeln!(
                    doc,
                    "| {} | {:.1} s | {} | {} | {} | {:.0} MiB | {:.1} KiB | {:.1} µs/s | {:.0} ms | {:.0} ms | {:.0} | {} |",
                    r.n,
                    r.connect_secs,
                    ms(percentile(&r.all_acked, 50.0)),
                    ms(percentile(&r.all_acked, 99.0)),
                    r.missing,
                    r.hub_rss_kib as f64 / 1024.0,
                    r.kib_per_stream,
                    r.idle_cpu_per_stream * 1e6,
                    r.cpu_per_change * 1000.0,
                    r.apiserver_cpu_per_change * 1000.0,
                    r.status_writes,
                    secs(r.status_lag)
                );
            }
            Err(e) => {
                let _ = writeln!(doc, "| failed: {e} | | | | | | | | | | | |");
            }
        }
    }
    let _ = writeln!(
        doc,
        "\nTargets: 10,000 streams on one hub, all acked within 1 s; under 64 KiB of hub memory per stream.\n"
    );
}

fn storm(doc: &mut String, s: &Storm) {
    let _ = writeln!(
        doc,
        "## 5. Reconnect storm ({} streams)\n\n\
         The hub killed (-9) and started again at once. {} of {} streams had a snapshot again after \
         {:.1} s (time from the kill). Peak hub CPU (100 ms samples): {:.0}% of one core. Streams back, \
         per 0.5 s since the kill: {:?}.\n",
        s.n,
        s.back,
        s.n,
        s.all_back_secs,
        s.peak_cpu * 100.0,
        s.buckets
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM, Linux; kube-apiserver v1.34.4 and etcd v3.6.4 on loopback",
        mem as f64 / 1024.0 / 1024.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::apiaccess::{Fetch, List};

    fn lists(gzip_agent: f64, plain_agent: f64) -> ApiAccess {
        let list = |gzip, agent: f64| List {
            gzip,
            direct: (0..20)
                .map(|i| Fetch {
                    first_byte: 0.01,
                    total: 0.05 + f64::from(i) * 1e-4,
                })
                .collect(),
            agent: (0..20)
                .map(|i| Fetch {
                    first_byte: 0.01,
                    total: agent + f64::from(i) * 1e-4,
                })
                .collect(),
            bytes: 1 << 20,
        };
        ApiAccess {
            watch: vec![(0.002, 0.0025); 10],
            lists: vec![list(true, gzip_agent), list(false, plain_agent)],
        }
    }

    #[test]
    fn the_list_target_is_judged_on_the_list_istiod_asks_for() {
        let target = "LIST as istiod asks within 1.5x of direct at p50 and p99";
        let mut doc = String::new();
        // Through the agent 1.2x as istiod asks, 2x uncompressed: met, and both rows shown.
        api_access(&mut doc, &Ok(lists(0.06, 0.1)));
        assert!(doc.contains(&format!("{target} (met)")), "{doc}");
        assert!(
            doc.contains("| as istiod asks (gzip) | 1.00 MiB |"),
            "{doc}"
        );
        assert!(doc.contains("| uncompressed | 1.00 MiB |"), "{doc}");
        let mut doc = String::new();
        api_access(&mut doc, &Ok(lists(0.08, 0.06)));
        assert!(doc.contains(&format!("{target} (not met)")), "{doc}");
    }
}
