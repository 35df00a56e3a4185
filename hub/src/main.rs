use clap::Parser;
use tether_hub::cli::{Cli, Command};
use tether_proto::cli::{init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("install the ring crypto provider");
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Command::Crd => print!("{}", tether_hub::cli::crd_yaml()),
        Command::Status(args) => {
            let client = kube::Client::try_default().await?;
            let code = tether_hub::report::run(client, args).await?;
            std::process::exit(code);
        }
        Command::Serve(args) => {
            let client = kube::Client::try_default().await?;
            tether_hub::serve::run(client, (*args).into_settings(), shutdown_signal()).await?;
        }
    }
    Ok(())
}
