//! Command line: `tether-hub serve | crd`. The central cluster is reached through the usual kube
//! inference: in-cluster config, or `$KUBECONFIG`.

use crate::serve::ServeConfig;
use crate::snapshot::Defaults;
use clap::{Args, Parser, Subcommand};
use kube::CustomResourceExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tether_proto::runtime::cli::{LogArgs, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "tether-hub",
    version,
    about = "Tether hub: streams the Istio control plane's addresses to remote clusters"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch the control plane and serve agents.
    Serve(Box<ServeArgs>),
    /// Print the RemoteCluster CustomResourceDefinition as YAML.
    Crd,
    /// Show whether every remote is synced (like `istioctl proxy-status`).
    Status(crate::cmd::status::StatusArgs),
    /// Certificates: `certs init` makes the hub CA and the hub's serving certificate.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Add a remote: create its RemoteCluster, mint its agent certificate, write the agent chart values.
    Join(crate::cmd::join::JoinArgs),
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create the hub CA and the hub's serving certificate as files (and optionally a Secret manifest).
    Init(CertsInitArgs),
    /// Issue a new serving certificate for the hub from the existing CA (renewal, new DNS names),
    /// and optionally its Secret manifest. Agents keep their certificates.
    Hub(CertsHubArgs),
}

#[derive(Args, Debug)]
pub struct CertsInitArgs {
    /// Where to write ca.crt, ca.key and hub/{tls.crt,tls.key,ca.crt}. Keep ca.key safe: it mints agents.
    #[arg(long, default_value = "tether-certs")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub hub: HubCertArgs,
}

#[derive(Args, Debug)]
pub struct CertsHubArgs {
    /// Folder written by `certs init` (ca.crt, ca.key); hub/ in it is rewritten.
    #[arg(long, default_value = "tether-certs")]
    pub ca_dir: PathBuf,
    #[command(flatten)]
    pub hub: HubCertArgs,
}

/// The hub's serving certificate.
#[derive(Args, Debug)]
pub struct HubCertArgs {
    /// DNS names of the hub's serving certificate (how agents address the hub).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tether-hub,tether-hub.istio-system.svc"
    )]
    pub hub_dns: Vec<String>,
    /// IP addresses of the hub's serving certificate.
    #[arg(long, value_delimiter = ',')]
    pub hub_ip: Vec<std::net::IpAddr>,
    /// Lifetime of the certificate(s) made (`certs init`: the CA's too).
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub validity: Duration,
    /// Also write hub/secret.yaml: a kubernetes.io/tls Secret with this name for the hub chart.
    #[arg(long)]
    pub secret: Option<String>,
    /// Namespace of that Secret.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Folder with tls.crt, tls.key and ca.crt (a TLS Secret volume). Re-read when the files change.
    #[arg(long, env = "TETHER_TLS_DIR", default_value = "/etc/tether/tls")]
    pub tls_dir: PathBuf,
    /// SPIFFE trust domain of agent certificates (URI SAN spiffe://<domain>/cluster/<name>).
    #[arg(long, env = "TETHER_TRUST_DOMAIN", default_value = "tether.local")]
    pub trust_domain: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Namespace of the control plane and of the RemoteClusters (the hub's own).
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// Namespace the mirrors are created in on remotes. Default: the same name as --namespace.
    #[arg(long, env = "TETHER_REMOTE_NAMESPACE")]
    pub remote_namespace: Option<String>,
    /// Admin HTTP address: /live, /ready, /metrics, /streams.
    #[arg(long, env = "TETHER_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// gRPC listen address (mTLS only).
    #[arg(long, env = "TETHER_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Services mirrored when a RemoteCluster lists none.
    #[arg(
        long,
        env = "TETHER_DEFAULT_SERVICES",
        value_delimiter = ',',
        default_value = "istiod"
    )]
    pub default_services: Vec<String>,
    /// Injection labels when a RemoteCluster gives none (key=value, comma-separated).
    #[arg(long, env = "TETHER_DEFAULT_INJECTION_LABELS", value_delimiter = ',', default_value = "istio-injection=enabled", value_parser = parse_label)]
    pub default_injection_labels: Vec<(String, String)>,
    /// HTTP/2 ping interval; a peer silent for interval + timeout is dropped.
    #[arg(long, env = "TETHER_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    #[arg(long, env = "TETHER_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    #[arg(long, env = "TETHER_MAX_MESSAGE_BYTES", default_value_t = tether_proto::limits::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may open (an agent needs one).
    #[arg(long, env = "TETHER_MAX_CONCURRENT_STREAMS", default_value_t = 4)]
    pub max_concurrent_streams: u32,
    /// Status writes are coalesced to at most one per remote per interval.
    #[arg(long, env = "TETHER_STATUS_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub status_interval: Duration,
    /// A status whose phase, conditions and writer did not change (only the agent's address, version
    /// or connection time, or a message) is rewritten at most this often per remote. Phase or
    /// condition changes are written at the next interval.
    #[arg(long, env = "TETHER_STATUS_REFRESH", default_value = "10s", value_parser = parse_duration)]
    pub status_refresh: Duration,
    /// Status writes in flight at once against the central API server. More settles a large fleet's
    /// statuses sooner at the cost of central API server CPU (see docs/benchmarks.md).
    #[arg(long, env = "TETHER_STATUS_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub status_writers: u16,
    /// Status writes per second that are not phase or condition changes, for all replicas together
    /// (each takes its share): a reconnect storm of a large fleet costs this rate, not the fleet's
    /// size. Phase and condition changes are never held back; they use up the budget first.
    #[arg(long, env = "TETHER_STATUS_BUDGET", default_value_t = 20.0, value_parser = positive)]
    pub status_budget: f64,
    /// How long a connected agent may take to acknowledge the hub's newest state and still be
    /// reported Synced. Status carries no versions (the live view does), so pod churn writes no
    /// status; an agent that falls behind for longer turns Connected (Synced=False) at once.
    #[arg(long, env = "TETHER_SYNC_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub sync_deadline: Duration,
    /// An agent's stream older than this (less up to a tenth, at random) is asked to move to a new
    /// one (make before break), so streams spread over replicas added since. 0: never.
    #[arg(long, env = "TETHER_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,
    /// On SIGTERM, every agent is asked to move to a new stream (another replica); the hub exits once
    /// they have, or after this long. Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "TETHER_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long a deleted RemoteCluster waits for its agent to acknowledge Retire. Then it is
    /// released, and the hub retires the agent when it comes back (see --retire-memory).
    #[arg(long, env = "TETHER_RETIRE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub retire_timeout: Duration,
    /// How long the hub remembers, in ConfigMap tether-retired, to retire an agent whose
    /// RemoteCluster was released while it was away.
    #[arg(long, env = "TETHER_RETIRE_MEMORY", default_value = "30d", value_parser = parse_duration)]
    pub retire_memory: Duration,
    #[command(flatten)]
    pub replicas: ReplicaArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Several replicas: every one serves agents; Leases decide who writes what (docs/architecture.md).
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// This replica's name among the hub's replicas (its Lease is tether-hub-replica-<id>). Default:
    /// $POD_NAME, else the host name.
    #[arg(long, env = "TETHER_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Lease duration: a replica that has not renewed its Lease for this long is dead to the others
    /// (its remotes' statuses go to the leader), and the leader Lease changes hands after it.
    /// Renewed every third of it; a holder that cannot renew within two thirds lets go.
    #[arg(long, env = "TETHER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long after an agent's stream closes its replica waits before reporting it Disconnected
    /// (the agent may be reconnecting, possibly to another replica).
    #[arg(long, env = "TETHER_DISCONNECT_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub disconnect_grace: Duration,
}

impl ReplicaArgs {
    /// `--replica-id`, `$POD_NAME`, or the host name: a Lease name part (lower case, `-` for others).
    pub fn id(&self) -> String {
        let raw = self
            .replica_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_else(|| "hub".into());
        let id: String = raw
            .trim()
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let id = id.trim_matches(['-', '.']).to_string();
        if id.is_empty() { "hub".into() } else { id }
    }
}

/// API access: the endpoint istiod uses to reach each remote's API server through its agent.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the API endpoint for istiod (HTTPS). Unset: API access is off.
    #[arg(long, env = "TETHER_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// The endpoint's base URL as istiod reaches it (goes into the remote secrets), e.g.
    /// https://tether-hub.istio-system.svc:15443. Its host is in the serving certificate.
    #[arg(long, env = "TETHER_API_ADVERTISE")]
    pub api_advertise: Option<String>,
    /// Where istiod reads its remote secrets (its own namespace).
    #[arg(long, env = "TETHER_ISTIO_NAMESPACE", default_value = "istio-system")]
    pub istio_namespace: String,
    /// Lifetime of istiod's client certificate; renewed (and the remote secrets rewritten) at two
    /// thirds of it.
    #[arg(long, env = "TETHER_API_CREDENTIAL_TTL", default_value = "24h", value_parser = parse_duration)]
    pub api_credential_ttl: Duration,
    /// After istiod's certificate is renewed, how long the previous one still works: then the
    /// connections it opened (and their watches) are closed and it is refused (401).
    #[arg(long, env = "TETHER_API_CREDENTIAL_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub api_credential_grace: Duration,
    /// Requests in flight per remote; more are answered 429.
    #[arg(long, env = "TETHER_API_MAX_IN_FLIGHT", default_value_t = 256)]
    pub api_max_in_flight: usize,
    /// How long a request waits for a remote's tunnel to come back before 503.
    #[arg(long, env = "TETHER_API_HOLD", default_value = "3s", value_parser = parse_duration)]
    pub api_hold: Duration,
    /// Where the other hub replicas reach this replica's API endpoint (https://<pod IP>:<port>):
    /// istiod's request for a remote whose agent dialled another replica is passed on there.
    /// Default: https://<--api-addr> when that is a specific address.
    #[arg(long, env = "TETHER_API_PEER_URL")]
    pub api_peer_url: Option<String>,
}

impl ApiArgs {
    /// This replica's URL for the other replicas, if it has one.
    pub fn peer_url(&self) -> Option<String> {
        let addr = self.api_addr?;
        match &self.api_peer_url {
            Some(url) => Some(url.trim_end_matches('/').to_string()),
            None if addr.ip().is_unspecified() => None,
            None => Some(format!("https://{addr}")),
        }
    }
}

impl ServeArgs {
    pub fn into_config(self) -> ServeConfig {
        let ServeArgs {
            tls: TlsArgs {
                tls_dir,
                trust_domain,
            },
            namespace,
            remote_namespace,
            grpc_addr,
            admin_addr,
            default_services,
            default_injection_labels,
            keepalive_interval,
            keepalive_timeout,
            max_message_bytes,
            max_concurrent_streams,
            status_interval,
            status_refresh,
            status_writers,
            status_budget,
            sync_deadline,
            max_connection_age,
            drain_timeout,
            retire_timeout,
            retire_memory,
            replicas,
            api,
        } = self;
        let defaults = Defaults {
            remote_namespace: remote_namespace.unwrap_or_else(|| namespace.clone()),
            services: default_services,
            injection_labels: default_injection_labels
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        };
        ServeConfig {
            namespace,
            grpc_addr,
            admin_addr,
            tls: tether_proto::tls::TlsFiles::in_dir(&tls_dir),
            trust_domain,
            defaults,
            keepalive_interval,
            keepalive_timeout,
            max_message_bytes,
            max_concurrent_streams,
            status_interval,
            status_refresh,
            status_writers: status_writers.into(),
            status_budget,
            sync_deadline,
            max_connection_age,
            drain_timeout,
            retire_timeout,
            retire_memory,
            replicas,
            api,
        }
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    tether_proto::check::validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crate::crd::RemoteCluster::crd()).expect("CRD serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
