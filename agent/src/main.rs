use clap::Parser;
use tether_agent::cli::Cli;
use tether_proto::cli::{init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("install the ring crypto provider");
    let (log, namespace, field_manager, settings) = Cli::parse().into_parts();
    init_logging(&log);
    let client = kube::Client::try_default().await?;
    tether_agent::run(
        client,
        namespace,
        field_manager,
        settings,
        shutdown_signal(),
    )
    .await
}
