//! The prior art's architecture as a process of its own, section 1's baseline in `make bench`
//! (`tether_tests::bench::direct`): watches the istiod pods on the central API server and writes
//! every remote's EndpointSlice (and with `--legacy-endpoints` the Endpoints) itself.
//!
//! `tether-direct-push --namespace NS --central KUBECONFIG --remote-namespace NS --remote KUBECONFIG...
//! [--legacy-endpoints]`

use anyhow::Context;
use std::path::PathBuf;
use tether_tests::bench::direct;
use tether_tests::cluster::client_from;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut ns, mut central, mut remotes, mut legacy) = (None, None, Vec::new(), false);
    let mut remote_ns = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--namespace" => ns = Some(value()?),
            "--central" => central = Some(PathBuf::from(value()?)),
            "--remote" => remotes.push(PathBuf::from(value()?)),
            "--remote-namespace" => remote_ns = Some(value()?),
            "--legacy-endpoints" => legacy = true,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let ns = ns.context("--namespace is required")?;
    let remote_ns = remote_ns.context("--remote-namespace is required")?;
    let central = client_from(&central.context("--central is required")?).await?;
    let mut clients = Vec::new();
    for r in &remotes {
        clients.push(client_from(r).await?);
    }
    direct::run(central, &ns, clients, &remote_ns, legacy).await;
    anyhow::bail!("the watch of the central pods ended")
}
