//! Command line. The remote cluster is reached through the usual kube inference: in-cluster config
//! (the agent's ServiceAccount), or `$KUBECONFIG`.

use crate::client::StreamConfig;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tether_proto::runtime::cli::{LogArgs, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether agent: keeps this cluster's Istio control-plane mirrors in sync with the hub"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    /// This cluster's name; must match the URI SAN of the client certificate and a RemoteCluster on the hub.
    #[arg(long, env = "TETHER_CLUSTER")]
    pub cluster: String,
    /// The hub's gRPC address (host:port).
    #[arg(long, env = "TETHER_HUB_ADDR")]
    pub hub_addr: String,
    /// Name to verify in the hub's certificate; default: the host part of --hub-addr.
    #[arg(long, env = "TETHER_HUB_SERVER_NAME")]
    pub hub_server_name: Option<String>,
    /// Folder with tls.crt, tls.key (this agent's client certificate) and ca.crt (the hub CA).
    #[arg(long, env = "TETHER_TLS_DIR", default_value = "/etc/tether/tls")]
    pub tls_dir: PathBuf,
    /// Namespace the mirrors live in (where the agent's Role grants access).
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// Admin HTTP address: /live, /ready (first snapshot applied), /metrics.
    #[arg(long, env = "TETHER_ADMIN_ADDR", default_value = "0.0.0.0:9091")]
    pub admin_addr: std::net::SocketAddr,
    /// Server-side apply field manager. Give each agent its own when several share a cluster: an agent
    /// only ever removes namespace labels its own manager applied.
    #[arg(long, env = "TETHER_FIELD_MANAGER", default_value = crate::objects::DEFAULT_FIELD_MANAGER)]
    pub field_manager: String,
    #[arg(long, env = "TETHER_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    #[arg(long, env = "TETHER_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    #[arg(long, env = "TETHER_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles (with ±50% jitter) up to --backoff-max, which bounds every
    /// wait; reset after a healthy stream.
    #[arg(long, env = "TETHER_BACKOFF_INITIAL", default_value = "500ms", value_parser = parse_duration)]
    pub backoff_initial: Duration,
    #[arg(long, env = "TETHER_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// While another agent with this cluster's identity serves (two agents share one identity), how
    /// often this one asks to take over.
    #[arg(long, env = "TETHER_STANDBY_RETRY", default_value = "30s", value_parser = parse_duration)]
    pub standby_retry: Duration,
    #[arg(long, env = "TETHER_MAX_MESSAGE_BYTES", default_value_t = tether_proto::limits::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// API access: serve central istiod's requests for this cluster's API server over a second
    /// connection to the hub (see README, "API access"). Off by default.
    #[arg(long, env = "TETHER_API_ACCESS")]
    pub api_access: bool,
    /// `namespace/name` of the ServiceAccount whose token forwarded requests carry (Istio's reader).
    #[arg(
        long,
        env = "TETHER_API_READER",
        default_value = "istio-system/istio-reader-service-account"
    )]
    pub api_reader: String,
    /// Lifetime of the reader token (the API server's minimum is 10m); refreshed at two thirds of it.
    #[arg(long, env = "TETHER_API_TOKEN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub api_token_ttl: Duration,
    /// Refresh the reader token this often instead (shorter than two thirds of its lifetime).
    #[arg(long, env = "TETHER_API_TOKEN_REFRESH", value_parser = parse_duration)]
    pub api_token_refresh: Option<Duration>,
    /// Largest request body forwarded (istiod sends token reviews and ConfigMaps).
    #[arg(long, env = "TETHER_API_MAX_BODY_BYTES", default_value_t = 3 << 20)]
    pub api_max_body_bytes: usize,
}

impl Cli {
    pub fn into_parts(self) -> (LogArgs, crate::Config) {
        let Cli {
            log,
            cluster,
            hub_addr,
            hub_server_name,
            tls_dir,
            namespace,
            field_manager,
            admin_addr,
            keepalive_interval,
            keepalive_timeout,
            connect_timeout,
            backoff_initial,
            backoff_max,
            standby_retry,
            max_message_bytes,
            api_access,
            api_reader,
            api_token_ttl,
            api_token_refresh,
            api_max_body_bytes,
        } = self;
        let tunnel = api_access.then(|| crate::tunnel::TunnelConfig {
            hub_addr: hub_addr.clone(),
            server_name: hub_server_name.clone(),
            tls: tether_proto::tls::TlsFiles::in_dir(&tls_dir),
            reader: api_reader
                .split_once('/')
                .map(|(ns, name)| (ns.to_string(), name.to_string()))
                .unwrap_or_else(|| ("istio-system".into(), api_reader.clone())),
            token_ttl: api_token_ttl,
            token_refresh: api_token_refresh
                .unwrap_or(api_token_ttl * 2 / 3)
                .min(api_token_ttl * 2 / 3),
            max_body_bytes: api_max_body_bytes,
            backoff_initial,
            backoff_max,
            keepalive: keepalive_interval,
        });
        let settings = StreamConfig {
            cluster,
            hub_addr,
            server_name: hub_server_name,
            tls: tether_proto::tls::TlsFiles::in_dir(&tls_dir),
            keepalive_interval,
            keepalive_timeout,
            connect_timeout,
            backoff_initial,
            backoff_max,
            standby_retry,
            max_message_bytes,
        };
        (
            log,
            crate::Config {
                namespace,
                field_manager,
                admin_addr,
                stream: settings,
                tunnel,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
