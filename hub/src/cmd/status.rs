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
    /// The versions and the endpoint count are the hub's live view (`--admin-url`): status does not
    /// carry them. Empty / None without it.
    pub desired_version: String,
    pub acked_version: String,
    pub endpoints: Option<u64>,
    /// Where the endpoints come from: `pods`, `gateway/<Service>`, `static` (`-` before the first status).
    pub source: String,
    /// Seconds since the agent's last ACK (live view).
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
    let synced = cond(condition::SYNCED);
    let rejected = synced.is_some_and(|c| {
        c.status == "False"
            && (c.reason == condition::reason::NACKED || c.reason == condition::reason::CONFLICT)
    });
    let connected = cond(condition::CONNECTED).map(|c| c.status == "True");
    let state = match connected {
        None if status.agent.is_none() => Health::NeverConnected,
        Some(false) if status.agent.is_none() => Health::NeverConnected,
        Some(false) | None => Health::Disconnected,
        Some(true) if synced.is_some_and(|c| c.status == "True") => Health::Synced,
        Some(true) if rejected => Health::Nacked,
        Some(true) => Health::Stale,
    };
    // The hub's memory is exact where that hub holds the stream. (With several replicas another
    // replica may hold it: a replica without it says nothing here.)
    let live = live.filter(|l| l["streams"].as_u64().is_some_and(|n| n > 0));
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let (mut desired, mut acked, mut endpoints, mut last_ack) = Default::default();
    let state = match live {
        None => state,
        Some(live) => {
            desired = text(&live["desiredVersion"]);
            acked = text(&live["ackedVersion"]);
            endpoints = live["endpoints"].as_u64();
            last_ack = live["lastAck"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            let nacked = live["lastNack"]["version"].as_str() == Some(desired.as_str());
            if !desired.is_empty() && acked == desired {
                Health::Synced
            } else if nacked {
                Health::Nacked
            } else {
                Health::Stale
            }
        }
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
        desired_version: desired,
        acked_version: acked,
        endpoints,
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
        let endpoints = r.endpoints.map_or("-".into(), |n| n.to_string());
        out.push_str(&format!(
            "{:<20} {:<16} {:<8} {:<17} {:<17} {:>9} {:<20} {:>9}  {:<19} {}\n",
            r.cluster,
            r.state.as_str(),
            dash(&r.agent_version),
            dash(&r.desired_version),
            dash(&r.acked_version),
            endpoints,
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
        let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
        if !ok {
            tracing::warn!(
                status = head.lines().next(),
                "{admin_url}/streams did not answer 200"
            );
        }
        ok.then(|| serde_json::from_str(json).ok())?
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

    fn condition(type_: &str, status: bool, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::now()),
            observed_generation: None,
        }
    }

    /// A RemoteCluster whose status says connected (or not), and Synced with this reason (True for
    /// Acked).
    fn rc(connected: Option<bool>, synced: Option<&str>, nack: Option<&str>) -> RemoteCluster {
        let mut rc = RemoteCluster::new("r1", Default::default());
        let mut status = RemoteClusterStatus {
            sync: Some(SyncStatus {
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
            status
                .conditions
                .push(condition(condition::CONNECTED, c, ""));
        }
        if let Some(reason) = synced {
            let ok = reason == condition::reason::ACKED;
            status
                .conditions
                .push(condition(condition::SYNCED, ok, reason));
        }
        rc.status = Some(status);
        rc
    }

    #[test]
    fn states() {
        use condition::reason::{ACKED, CONFLICT, PENDING};
        let now = Timestamp::now();
        assert_eq!(
            row(&rc(None, None, None), None, now).state,
            Health::NeverConnected
        );
        assert_eq!(
            row(&rc(Some(true), Some(ACKED), None), None, now).state,
            Health::Synced
        );
        assert_eq!(
            row(&rc(Some(true), Some(PENDING), None), None, now).state,
            Health::Stale
        );
        let nacked = row(&rc(Some(true), Some(CONFLICT), Some("v2")), None, now);
        assert_eq!(
            (nacked.state, nacked.last_error.as_str()),
            (Health::Nacked, "conflict")
        );
        assert_eq!(
            row(&rc(Some(false), Some(ACKED), None), None, now).state,
            Health::Disconnected
        );
        // The hub's live view is exact: it wins over the status, and carries the versions.
        let live = serde_json::json!({"streams": 1, "desiredVersion": "v2", "ackedVersion": "v2", "endpoints": 3});
        let r = row(&rc(Some(false), Some(PENDING), None), Some(&live), now);
        assert_eq!(
            (r.state, r.desired_version.as_str(), r.endpoints),
            (Health::Synced, "v2", Some(3))
        );
        let behind =
            serde_json::json!({"streams": 1, "desiredVersion": "v3", "ackedVersion": "v2"});
        assert_eq!(
            row(&rc(Some(true), Some(ACKED), None), Some(&behind), now).state,
            Health::Stale
        );
        let refused = serde_json::json!({"streams": 1, "desiredVersion": "v3", "ackedVersion": "v2", "lastNack": {"version": "v3"}});
        assert_eq!(
            row(&rc(Some(true), Some(ACKED), None), Some(&refused), now).state,
            Health::Nacked
        );
        // A replica that does not hold the stream (any more) does not speak for it.
        let elsewhere =
            serde_json::json!({"streams": 0, "desiredVersion": "v3", "ackedVersion": "v1"});
        let r = row(&rc(Some(true), Some(ACKED), None), Some(&elsewhere), now);
        assert_eq!((r.state, r.desired_version.as_str()), (Health::Synced, ""));
    }

    #[test]
    fn table_has_a_row_per_remote() {
        let rows = vec![row(
            &rc(Some(true), Some(condition::reason::ACKED), None),
            None,
            Timestamp::now(),
        )];
        let t = table(&rows);
        assert!(t.starts_with("CLUSTER"));
        assert!(t.lines().nth(1).unwrap().contains("SYNCED"));
    }

    #[test]
    fn api_access_column_shows_the_condition() {
        let mut with = rc(Some(true), Some(condition::reason::ACKED), None);
        let now = Timestamp::now();
        assert_eq!(row(&with, None, now).api_access, "-");
        let status = with.status.as_mut().unwrap();
        let mut api = condition(condition::API_ACCESS, false, "NoTunnel");
        api.message = "run it with --api-access".into();
        status.conditions.push(api);
        let r = row(&with, None, now);
        assert_eq!(r.state, Health::Synced, "sync and API access are apart");
        assert_eq!(r.api_access, "NoTunnel");
        assert_eq!(r.last_error, "API access: run it with --api-access");
        assert!(table(&[r]).contains("NoTunnel"));
        with.status.as_mut().unwrap().conditions[2].status = "True".into();
        assert_eq!(row(&with, None, now).api_access, "READY");
    }
}
