use clap::Parser;
use tether_agent::cli::Cli;
use tether_proto::runtime::cli::{init_logging, shutdown_signal};
use tracing::Instrument;

// One thread: the agent's work is a few small writes per change and the bytes of the API tunnel,
// all waiting on I/O. On a multi-thread runtime each hop between its tasks (gRPC stream, planner,
// HTTP client, watches) can wake another worker; on one thread it is a queue push. Measured in
// `make bench` section 1, runs alternated: CPU per change 1.40-1.60 ms -> 1.15-1.40 ms, RSS
// 13.7-14.0 -> 13.2-13.4 MiB (docs/benchmarks.md).
#[tokio::main(flavor = "current_thread")]
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
