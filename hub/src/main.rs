use clap::Parser;
use tether_hub::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("install the ring crypto provider");
    let cli = Cli::parse();
    cli::init_logging(&cli.log);
    match cli.command {
        Command::Crd => print!("{}", cli::crd_yaml()),
        Command::Serve(args) => {
            let (kube, settings) = args.into_settings();
            let client = cli::kube_client(&kube).await?;
            tether_hub::serve::run(client, settings, cli::shutdown_signal()).await?;
        }
    }
    Ok(())
}
