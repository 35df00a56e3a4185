//! Command line: `tether-hub serve | crd`.

use crate::index::Defaults;
use crate::serve::Settings;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    Serve(ServeArgs),
    /// Print the RemoteCluster CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "TETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "TETHER_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct KubeArgs {
    /// Kubeconfig for the central cluster; default: in-cluster config or $KUBECONFIG.
    #[arg(long, env = "TETHER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
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
    pub kube: KubeArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Namespace of the control plane and of the RemoteClusters (the hub's own).
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// Namespace the mirrors are created in on remotes. Default: the same name as --namespace.
    #[arg(long, env = "TETHER_REMOTE_NAMESPACE")]
    pub remote_namespace: Option<String>,
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
    /// How long a deleted RemoteCluster waits for its agent to acknowledge Retire.
    #[arg(long, env = "TETHER_RETIRE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub retire_timeout: Duration,
}

impl ServeArgs {
    pub fn into_settings(self) -> (KubeArgs, Settings) {
        let ServeArgs {
            kube,
            tls: TlsArgs {
                tls_dir,
                trust_domain,
            },
            namespace,
            remote_namespace,
            grpc_addr,
            default_services,
            default_injection_labels,
            keepalive_interval,
            keepalive_timeout,
            max_message_bytes,
            max_concurrent_streams,
            status_interval,
            retire_timeout,
        } = self;
        let defaults = Defaults {
            remote_namespace: remote_namespace.unwrap_or_else(|| namespace.clone()),
            services: default_services,
            injection_labels: default_injection_labels
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        };
        let settings = Settings {
            namespace,
            grpc_addr,
            tls: tether_proto::tls::TlsFiles::in_dir(&tls_dir),
            trust_domain,
            defaults,
            keepalive_interval,
            keepalive_timeout,
            max_message_bytes,
            max_concurrent_streams,
            status_interval,
            retire_timeout,
        };
        (kube, settings)
    }
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    crate::snapshot::validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// `250ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s or m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crate::crd::RemoteCluster::crd()).expect("CRD serializes")
}

pub fn init_logging(args: &LogArgs) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

pub async fn kube_client(args: &KubeArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// A watch that turns true on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
