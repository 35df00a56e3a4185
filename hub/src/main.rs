use clap::Parser;
use tether_hub::cli::{CertsCommand, Cli, Command};
use tether_proto::runtime::cli::{init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("install the ring crypto provider");
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Command::Crd => print!("{}", tether_hub::cli::crd_yaml()),
        Command::Certs(CertsCommand::Init(a)) => {
            let (ca, hub) = tether_hub::certs::init(&a.out_dir, &a.hub_dns, &a.hub_ip, a.validity)?;
            println!(
                "Wrote the hub CA ({0}/ca.crt, {0}/ca.key) and its serving certificate ({0}/hub/).",
                a.out_dir.display()
            );
            if let Some(name) = a.secret {
                let path = a.out_dir.join("hub/secret.yaml");
                std::fs::write(
                    &path,
                    tether_hub::certs::hub_secret_manifest(&name, &a.namespace, &ca, &hub),
                )?;
                println!(
                    "Wrote {} (Secret {}/{name}); apply it in the central cluster.",
                    path.display(),
                    a.namespace
                );
            }
            println!(
                "Keep ca.key on the central side: `tether-hub join` uses it to mint agent certificates."
            );
        }
        Command::Join(args) => {
            let client = kube::Client::try_default().await?;
            tether_hub::cmd::join::run(client, args).await?;
        }
        Command::Status(args) => {
            let client = kube::Client::try_default().await?;
            let code = tether_hub::cmd::status::run(client, args).await?;
            std::process::exit(code);
        }
        Command::Serve(args) => {
            let client = kube::Client::try_default().await?;
            tether_hub::serve::run(client, (*args).into_config(), shutdown_signal()).await?;
        }
    }
    Ok(())
}
