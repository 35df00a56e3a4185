//! `tether-hub join <cluster>`: with the operator's central kubeconfig, creates or updates the
//! RemoteCluster, mints the agent's client certificate from the hub CA and writes a values file for the
//! agent chart. The CA key is read locally and never written anywhere else.

use crate::certs;
use clap::Args;
use kube::Api;
use kube::api::{Patch, PatchParams};
use std::path::PathBuf;
use std::time::Duration;
use tether_proto::runtime::cli::parse_duration;

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The remote cluster's name: its identity in the certificate and the RemoteCluster's name.
    pub cluster: String,
    /// Namespace of the hub and its RemoteClusters.
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// Folder written by `tether-hub certs init` (ca.crt, ca.key).
    #[arg(long, default_value = "tether-certs")]
    pub ca_dir: PathBuf,
    /// The hub's gRPC address as the remote reaches it (host:port).
    #[arg(long)]
    pub hub_addr: String,
    /// Name to verify in the hub's certificate, when it differs from the host in --hub-addr.
    #[arg(long)]
    pub hub_server_name: Option<String>,
    #[arg(long, env = "TETHER_TRUST_DOMAIN", default_value = "tether.local")]
    pub trust_domain: String,
    /// Remote namespaces to label for sidecar injection (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub injection_namespaces: Vec<String>,
    /// Lifetime of the agent's certificate.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub validity: Duration,
    /// Values file to write; default `tether-agent-<cluster>.values.yaml`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The agent chart's values for one cluster.
pub fn agent_values(args: &JoinArgs, cert: &certs::Pem, ca_cert: &str) -> String {
    let mut values = serde_json::json!({
        "cluster": args.cluster,
        "hub": {"address": args.hub_addr},
        "tls": {"create": true, "cert": cert.cert, "key": cert.key, "ca": ca_cert},
    });
    if let Some(name) = &args.hub_server_name {
        values["hub"]["serverName"] = name.clone().into();
    }
    format!(
        "# tether-agent values for cluster {:?}, written by `tether-hub join`.\n# Holds the agent's private key: keep it like a Secret.\n{}",
        args.cluster,
        serde_yaml::to_string(&values).expect("values serialize")
    )
}

pub async fn run(client: kube::Client, args: JoinArgs) -> anyhow::Result<()> {
    let ca = certs::load_ca(&args.ca_dir)?;
    let cert = certs::agent_cert(&ca, &args.cluster, &args.trust_domain, args.validity)?;
    let api: Api<crate::crd::RemoteCluster> = Api::namespaced(client, &args.namespace);
    let mut spec = serde_json::json!({});
    if !args.injection_namespaces.is_empty() {
        spec["injection"] = serde_json::json!({"namespaces": args.injection_namespaces});
    }
    let rc = serde_json::json!({
        "apiVersion": "tether.io/v1alpha1", "kind": "RemoteCluster",
        "metadata": {"name": args.cluster, "namespace": args.namespace},
        "spec": spec,
    });
    api.patch(&args.cluster, &PatchParams::apply("tether-join"), &Patch::Apply(&rc))
        .await
        .map_err(|e| anyhow::anyhow!("creating RemoteCluster {}/{}: {e} (is the CRD installed and may you write RemoteClusters?)", args.namespace, args.cluster))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("tether-agent-{}.values.yaml", args.cluster)));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&out)?;
        std::io::Write::write_all(&mut f, agent_values(&args, &cert, &ca.cert).as_bytes())?;
    }
    println!(
        "RemoteCluster {}/{} is ready for its agent.",
        args.namespace, args.cluster
    );
    println!(
        "Agent certificate: spiffe://{}/cluster/{} (valid {}), written to {}",
        args.trust_domain,
        args.cluster,
        tether_proto::runtime::cli::format_duration(args.validity),
        out.display()
    );
    println!(
        "Next, with kubectl pointing at the remote cluster {:?}:",
        args.cluster
    );
    println!(
        "  helm install tether-agent charts/tether-agent --namespace {} --create-namespace -f {}",
        args.namespace,
        out.display()
    );
    Ok(())
}
