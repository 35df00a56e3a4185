//! `make bench` (`src/bin/tether-bench.rs`): the measurements, by section, and the helpers they
//! share: process CPU and memory from /proc, percentiles, and a load generator of agent streams that
//! answer without an API server.

pub mod apiaccess;
pub mod direct;
pub mod fleet;
pub mod plan;
pub mod propagation;
pub mod replicas;
pub mod report;

use crate::fakes::{FakeAgent, Report};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tether_agent::client::StreamConfig;
use tether_agent::reconcile::Command;
use tokio::sync::{mpsc, watch};

/// CPU seconds used so far and memory of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub rss_kib: u64,
    /// Peak resident set (VmHWM).
    pub peak_kib: u64,
}

pub fn usage(pid: u32) -> Usage {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_secs = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) start at field 3.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        cpu_secs,
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    }
}

/// Samples a process's CPU every `every` until stopped; the highest share of one core seen.
pub struct CpuPeak {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<f64>,
}

impl CpuPeak {
    pub fn start(pid: u32, every: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            let mut last = (Instant::now(), usage(pid).cpu_secs);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return peak,
                }
                let now = (Instant::now(), usage(pid).cpu_secs);
                let share = (now.1 - last.1) / (now.0 - last.0).as_secs_f64();
                peak = peak.max(share);
                last = now;
            }
        });
        Self { stop, task }
    }

    /// Peak CPU as a fraction of one core (1.0 = one core busy).
    pub async fn finish(self) -> f64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0.0)
    }
}

/// Nearest-rank percentile of `values` (sorted here); 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn ms(d: f64) -> String {
    format!("{:.1} ms", d * 1000.0)
}

/// What one load-generator stream saw: a snapshot version, when it arrived.
#[derive(Clone, Debug)]
pub struct Seen {
    pub stream: usize,
    pub version: String,
    pub at: Instant,
}

/// N agent streams: [`FakeAgent`]s (the real agent stream client: TLS, keepalive, backoff with
/// jitter, Hello, ACK) that ACK every snapshot at once. Every snapshot is reported on `seen`.
pub struct LoadGen {
    agents: Vec<FakeAgent>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl LoadGen {
    pub fn start(configs: Vec<StreamConfig>) -> Self {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let agents = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let seen_tx = seen_tx.clone();
                let report: Report = Box::new(move |cmd| {
                    if let Command::Apply(snap) = cmd {
                        let _ = seen_tx.send(Seen {
                            stream: i,
                            version: snap.version.clone(),
                            at: Instant::now(),
                        });
                    }
                });
                FakeAgent::start_with(config, true, Some(report))
            })
            .collect();
        Self { agents, seen }
    }

    /// Waits until `n` distinct streams saw a snapshot that satisfies `pred`, or `timeout`.
    /// Returns the arrival time at each stream that got there.
    pub async fn wait_all(
        &mut self,
        n: usize,
        timeout: Duration,
        mut pred: impl FnMut(&Seen) -> bool,
    ) -> HashMap<usize, Instant> {
        let mut got = HashMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) if pred(&s) => {
                    got.entry(s.stream).or_insert(s.at);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        got
    }

    /// The stream clients' reconnects so far, summed, by how the previous stream ended.
    pub fn reconnects(&self) -> std::collections::BTreeMap<String, u64> {
        tether_agent::metrics::RECONNECT_REASONS
            .iter()
            .map(|r| {
                let n = self.agents.iter().map(|a| a.reconnects(r)).sum();
                (r.to_string(), n)
            })
            .collect()
    }

    pub fn stop(self) {
        self.agents.into_iter().for_each(FakeAgent::stop);
    }
}
