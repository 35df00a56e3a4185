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
            let h = &a.hub;
            let (ca, hub) = tether_hub::certs::init(&a.out_dir, &h.hub_dns, &h.hub_ip, h.validity)?;
            println!(
                "Wrote the hub CA ({0}/ca.crt, {0}/ca.key) and its serving certificate ({0}/hub/).",
                a.out_dir.display()
            );
            write_hub_secret(&a.out_dir, h, &ca, &hub)?;
            println!(
                "Keep ca.key on the central side: `tether-hub join` uses it to mint agent certificates."
            );
        }
        Command::Certs(CertsCommand::Hub(a)) => {
            let h = &a.hub;
            let (ca, hub) =
                tether_hub::certs::reissue_hub(&a.ca_dir, &h.hub_dns, &h.hub_ip, h.validity)?;
            println!(
                "Wrote a new serving certificate for the hub ({}/hub/), valid {}, from the existing CA.",
                a.ca_dir.display(),
                tether_proto::runtime::cli::format_duration(h.validity)
            );
            write_hub_secret(&a.ca_dir, h, &ca, &hub)?;
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

/// `hub/secret.yaml` when `--secret` names one.
fn write_hub_secret(
    dir: &std::path::Path,
    h: &tether_hub::cli::HubCertArgs,
    ca: &tether_hub::certs::Pem,
    hub: &tether_hub::certs::Pem,
) -> anyhow::Result<()> {
    if let Some(name) = &h.secret {
        let path = dir.join("hub/secret.yaml");
        std::fs::write(
            &path,
            tether_hub::certs::hub_secret_manifest(name, &h.namespace, ca, hub),
        )?;
        println!(
            "Wrote {} (Secret {}/{name}); apply it in the central cluster (the hub reloads it, no restart).",
            path.display(),
            h.namespace
        );
    }
    Ok(())
}
