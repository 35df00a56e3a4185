use clap::Parser;
use tether_agent::cli::Cli;
use tether_proto::runtime::cli::{init_logging, shutdown_signal};
use tracing::Instrument;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("install the ring crypto provider");
    let (log, config) = Cli::parse().into_parts();
    init_logging(&log);
    let span = tracing::info_span!("agent", cluster = %config.stream.cluster);
    let client = kube::Client::try_default().await?;
    tether_agent::run(client, config, shutdown_signal())
        .instrument(span)
        .await
}
