//! `tether-hub status` (an operator's command, not the RemoteCluster status the hub writes): is every
//! remote synced, and if not, why? Reads the RemoteClusters (and, when
//! `--admin-url` reaches a hub, its live `/streams`) and prints a table in the spirit of
//! `istioctl proxy-status`, or JSON/YAML. `--wait` polls until every remote is SYNCED or the timeout.

use crate::crd::{RemoteCluster, condition};
use clap::{Args, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use serde::Serialize;
use std::time::{Duration, Instant};
use tether_proto::runtime::cli::parse_duration;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Namespace of the RemoteClusters (the hub's).
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// The hub's admin URL (e.g. http://127.0.0.1:9090 through `kubectl port-forward`) for live stream data.
    #[arg(long)]
    pub admin_url: Option<String>,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Wait until every remote is SYNCED. Exit code: 0 all synced, 2 timed out (the table says which).
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Synced,
    Stale,
    Nacked,
    /// Two agents share the cluster's identity (one serves, one is refused).
    Duplicate,
    Disconnected,
    NeverConnected,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Synced => "SYNCED",
            Health::Stale => "STALE",
            Health::Nacked => "NACKED",
            Health::Duplicate => "DUPLICATE AGENT",
            Health::Disconnected => "DISCONNECTED",
            Health::NeverConnected => "NEVER CONNECTED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub cluster: String,
    pub state: Health,
    pub agent_version: String,
    pub desired_version: String,
    pub acked_version: String,
    pub endpoints: i32,
    /// Where the endpoints come from: `pods`, `gateway/<Service>`, `static` (`-` before the first status).
    pub source: String,
    /// Seconds since the agent's last ACK.
    pub since_last_ack: Option<i64>,
    /// API access: `-` when not enabled, `READY`, or why not (the `APIAccess` condition's reason).
    pub api_access: String,
    pub last_error: String,
}

/// One remote's row, from its status and (if any) the hub's live view of its streams.
pub fn row(rc: &RemoteCluster, live: Option<&serde_json::Value>, now: Timestamp) -> Row {
    let status = rc.status.clone().unwrap_or_default();
    let sync = status.sync.clone().unwrap_or_default();
    let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    let mut acked = sync.acked_version.clone();
    let mut last_ack = sync.last_ack.as_ref().map(|t| t.0);
    let mut connected = cond(condition::CONNECTED).map(|c| c.status == "True");
    // The hub's memory is fresher than the coalesced status, where that hub holds the stream. (With
    // several replicas another replica may hold it: a replica without it says nothing here.)
    let live = live.filter(|l| l["streams"].as_u64().is_some_and(|n| n > 0));
    if let Some(live) = live {
        connected = Some(true);
        if let Some(v) = live["ackedVersion"].as_str().filter(|v| !v.is_empty()) {
            acked = v.to_string();
        }
        last_ack = live["lastAck"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .or(last_ack);
    }
    let nacked = sync
        .last_nack
        .as_ref()
        .is_some_and(|n| n.version == sync.desired_version);
    let state = match connected {
        None if status.agent.is_none() => Health::NeverConnected,
        Some(false) if status.agent.is_none() => Health::NeverConnected,
        Some(false) | None => Health::Disconnected,
        Some(true) if !sync.desired_version.is_empty() && acked == sync.desired_version => {
            Health::Synced
        }
        Some(true) if nacked => Health::Nacked,
        Some(true) => Health::Stale,
    };
    let duplicate = cond(condition::SINGLE_AGENT).filter(|c| c.status == "False");
    let state = match (state, duplicate) {
        (Health::Synced | Health::Stale | Health::Nacked, Some(_)) => Health::Duplicate,
        (state, _) => state,
    };
    let api = cond(condition::API_ACCESS);
    let api_access = match api {
        None => "-".to_string(),
        Some(c) if c.status == "True" => "READY".to_string(),
        Some(c) => c.reason.clone(),
    };
    let mut last_error = String::new();
    if let Some(c) = duplicate {
        last_error = c.message.clone();
    } else if let Some(c) = cond(condition::SPEC_VALID).filter(|c| c.status == "False") {
        last_error = format!("spec: {}", c.message);
    } else if state != Health::Synced
        && let Some(n) = &sync.last_nack
    {
        last_error = n.message.clone();
    } else if let Some(c) = api.filter(|c| c.status == "False") {
        last_error = format!("API access: {}", c.message);
    }
    Row {
        cluster: rc.name_any(),
        state,
        agent_version: status.agent.map(|a| a.version).unwrap_or_default(),
        desired_version: sync.desired_version,
        acked_version: acked,
        endpoints: sync.endpoints,
        source: sync.endpoint_source,
        since_last_ack: last_ack.map(|t| now.duration_since(t).as_secs()),
        api_access,
        last_error,
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:<8} {:<17} {:<17} {:>9} {:<20} {:>9}  {:<19} {}\n",
        "CLUSTER",
        "STATE",
        "AGENT",
        "DESIRED",
        "ACKED",
        "ENDPOINTS",
        "SOURCE",
        "LAST ACK",
        "API ACCESS",
        "LAST ERROR"
    );
    for r in rows {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let ack = r
            .since_last_ack
            .map(|s| format!("{s}s ago"))
            .unwrap_or_else(|| "-".into());
        let err: String = r.last_error.chars().take(160).collect();
        out.push_str(&format!(
            "{:<20} {:<16} {:<8} {:<17} {:<17} {:>9} {:<20} {:>9}  {:<19} {}\n",
            r.cluster,
            r.state.as_str(),
            dash(&r.agent_version),
            dash(&r.desired_version),
            dash(&r.acked_version),
            r.endpoints,
            dash(&r.source),
            ack,
            r.api_access,
            dash(&err)
        ));
    }
    out
}

/// Fetches `<admin_url>/streams` with a plain HTTP/1.0 GET (the admin port is local or port-forwarded).
async fn live_streams(admin_url: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = admin_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(hostport).await.ok()?;
        conn.write_all(format!("GET /streams HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = Vec::new();
        conn.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8(body).ok()?;
        let (head, json) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| serde_json::from_str(json).ok())?
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

/// Runs the command; returns the process exit code.
pub async fn run(client: kube::Client, args: StatusArgs) -> anyhow::Result<i32> {
    let StatusArgs {
        namespace,
        admin_url,
        output,
        wait,
        timeout,
    } = args;
    let api: Api<RemoteCluster> = Api::namespaced(client, &namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let live = match &admin_url {
            Some(url) => live_streams(url).await,
            None => None,
        };
        let mut rcs = api.list(&Default::default()).await?.items;
        rcs.sort_by_key(|rc| rc.name_any());
        let now = Timestamp::now();
        let rows: Vec<Row> = rcs
            .iter()
            .map(|rc| row(rc, live.as_ref().and_then(|l| l.get(rc.name_any())), now))
            .collect();
        let all_synced = rows.iter().all(|r| r.state == Health::Synced);
        if !wait || all_synced || Instant::now() >= deadline {
            match output {
                Output::Table if rows.is_empty() => {
                    println!("no RemoteClusters in namespace {namespace}")
                }
                Output::Table => print!("{}", table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Yaml => print!("{}", serde_yaml::to_string(&rows)?),
            }
            if wait && !all_synced {
                let waiting: Vec<&str> = rows
                    .iter()
                    .filter(|r| r.state != Health::Synced)
                    .map(|r| r.cluster.as_str())
                    .collect();
                eprintln!(
                    "timed out after {timeout:?}; not synced: {}",
                    waiting.join(", ")
                );
                return Ok(2);
            }
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AgentStatus, NackStatus, RemoteClusterStatus, SyncStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn rc(
        connected: Option<bool>,
        desired: &str,
        acked: &str,
        nack: Option<&str>,
    ) -> RemoteCluster {
        let mut rc = RemoteCluster::new("r1", Default::default());
        let mut status = RemoteClusterStatus {
            sync: Some(SyncStatus {
                desired_version: desired.into(),
                acked_version: acked.into(),
                last_nack: nack.map(|v| NackStatus {
                    version: v.into(),
                    message: "conflict".into(),
                    at: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(c) = connected {
            status.agent = Some(AgentStatus {
                version: "0.1.0".into(),
                ..Default::default()
            });
            status.conditions.push(Condition {
                type_: condition::CONNECTED.into(),
                status: if c { "True" } else { "False" }.into(),
                reason: String::new(),
                message: String::new(),
                last_transition_time: Time(Timestamp::now()),
                observed_generation: None,
            });
        }
        rc.status = Some(status);
        rc
    }

    #[test]
    fn states() {
        let now = Timestamp::now();
        assert_eq!(
            row(&rc(None, "v1", "", None), None, now).state,
            Health::NeverConnected
        );
        assert_eq!(
            row(&rc(Some(true), "v1", "v1", None), None, now).state,
            Health::Synced
        );
        assert_eq!(
            row(&rc(Some(true), "v2", "v1", None), None, now).state,
            Health::Stale
        );
        let nacked = row(&rc(Some(true), "v2", "v1", Some("v2")), None, now);
        assert_eq!(
            (nacked.state, nacked.last_error.as_str()),
            (Health::Nacked, "conflict")
        );
        assert_eq!(
            row(&rc(Some(false), "v1", "v1", None), None, now).state,
            Health::Disconnected
        );
        // The hub's live view wins over a stale status.
        let live = serde_json::json!({"streams": 1, "ackedVersion": "v2"});
        assert_eq!(
            row(&rc(Some(false), "v2", "v1", None), Some(&live), now).state,
            Health::Synced
        );
        // A replica that does not hold the stream (any more) does not speak for it.
        let elsewhere = serde_json::json!({"streams": 0, "ackedVersion": "v1"});
        assert_eq!(
            row(&rc(Some(true), "v2", "v2", None), Some(&elsewhere), now).state,
            Health::Synced
        );
    }

    #[test]
    fn table_has_a_row_per_remote() {
        let rows = vec![row(
            &rc(Some(true), "v1", "v1", None),
            None,
            Timestamp::now(),
        )];
        let t = table(&rows);
        assert!(t.starts_with("CLUSTER"));
        assert!(t.lines().nth(1).unwrap().contains("SYNCED"));
    }

    #[test]
    fn api_access_column_shows_the_condition() {
        let mut with = rc(Some(true), "v1", "v1", None);
        let now = Timestamp::now();
        assert_eq!(row(&with, None, now).api_access, "-");
        let status = with.status.as_mut().unwrap();
        status.conditions.push(Condition {
            type_: condition::API_ACCESS.into(),
            status: "False".into(),
            reason: "NoTunnel".into(),
            message: "run it with --api-access".into(),
            last_transition_time: Time(now),
            observed_generation: None,
        });
        let r = row(&with, None, now);
        assert_eq!(r.state, Health::Synced, "sync and API access are apart");
        assert_eq!(r.api_access, "NoTunnel");
        assert_eq!(r.last_error, "API access: run it with --api-access");
        assert!(table(&[r]).contains("NoTunnel"));
        with.status.as_mut().unwrap().conditions[1].status = "True".into();
        assert_eq!(row(&with, None, now).api_access, "READY");
    }
}
