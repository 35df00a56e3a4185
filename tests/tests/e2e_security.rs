//! End-to-end refusals: every bad client is turned away with a reason that names the problem, and the
//! well-behaved agents never notice.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use std::path::Path;
use tether_agent::client::connect;
use tether_proto::v1::sync_client::SyncClient;
use tether_proto::v1::{AgentMessage, Hello, agent_message};
use tether_tests::eventually;
use tether_tests::fixtures::{REMOTES, SOON, client_settings, synced_mesh};
use tether_tests::mesh::Mesh;
use tether_tests::pki::Ca;

/// Opens a stream with this identity and Hello; returns the hub's refusal, or the transport failure.
async fn dial(mesh: &Mesh, tls_dir: &Path, claims: &str) -> String {
    let channel = match connect(&client_settings(mesh, tls_dir, claims)).await {
        Ok(c) => c,
        Err(e) => return format!("connect: {e}"),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = Hello {
        cluster: claims.into(),
        agent_version: "test".into(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Hello(hello)),
    })
    .await
    .unwrap();
    match SyncClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(mut stream) => match stream.get_mut().message().await {
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
            Ok(m) => panic!("the hub accepted {claims:?} and sent {m:?}"),
        },
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// A TLS client built without the agent's own checks, presenting whatever certificate is in `dir`.
async fn present_anyway(mesh: &Mesh, dir: &Path) {
    use tether_proto::tls::{load_certs, load_key};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(load_certs(&dir.join("ca.crt")).unwrap().remove(0))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        load_certs(&dir.join("tls.crt")).unwrap(),
        load_key(&dir.join("tls.key")).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(mesh.hub_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // In TLS 1.3 the server judges the client certificate after the client finished: the refusal
    // arrives on the first read.
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        let mut buf = [0u8; 1];
        assert!(
            tls.read(&mut buf).await.map(|n| n == 0).unwrap_or(true),
            "the hub sent data to an expired client"
        );
    }
}

fn hub_says(mesh: &Mesh, needle: &str) -> bool {
    mesh.log("hub").contains(needle)
}

#[tokio::test]
async fn bad_clients_are_refused_with_a_reason_and_good_agents_carry_on() {
    let mesh = synced_mesh().await;

    // A valid certificate for a cluster that has no RemoteCluster.
    let ghost = mesh.write_agent_cert("ghost", "ghost", false).unwrap();
    let got = dial(&mesh, &ghost, "ghost").await;
    assert!(
        got.starts_with("PermissionDenied") && got.contains("no RemoteCluster \"ghost\""),
        "{got}"
    );

    // A certificate for remote-1 whose Hello names remote-2.
    let got = dial(&mesh, &mesh.dir.join("tls-remote-1"), "remote-2").await;
    assert!(got.starts_with("PermissionDenied"), "{got}");
    assert!(
        got.contains("identifies cluster \"remote-1\" but Hello names \"remote-2\""),
        "{got}"
    );

    // A certificate from another CA.
    let rogue_ca = Ca::new("rogue-ca").unwrap();
    let rogue_cert = rogue_ca
        .client_with_uris(
            "rogue",
            &[&format!(
                "spiffe://{}/cluster/remote-1",
                tether_tests::mesh::TRUST_DOMAIN
            )],
            false,
        )
        .unwrap();
    let rogue = mesh.dir.join("tls-rogue");
    rogue_ca.write_tls_dir(&rogue, &rogue_cert).unwrap();
    // The rogue client still trusts the real hub CA, so only the hub's check can stop it.
    std::fs::write(rogue.join("ca.crt"), &mesh.ca.cert_pem).unwrap();
    let got = dial(&mesh, &rogue, "remote-1").await;
    assert!(!got.starts_with("Ok"), "{got}");
    eventually(
        "the hub to log why it refused the rogue CA",
        SOON,
        || async {
            anyhow::ensure!(
                hub_says(&mesh, "TLS handshake refused") && hub_says(&mesh, "UnknownIssuer"),
                "not yet"
            );
            Ok(())
        },
    )
    .await;

    // An expired certificate from the right CA.
    let expired = mesh.write_agent_cert("expired", "remote-1", true).unwrap();
    // The agent will not use it, and says why...
    let got = dial(&mesh, &expired, "remote-1").await;
    assert!(got.contains("expired") && got.contains("tls.crt"), "{got}");
    // ...and a client that presents it anyway is refused by the hub.
    present_anyway(&mesh, &expired).await;
    eventually("the hub to log the expired certificate", SOON, || async {
        anyhow::ensure!(hub_says(&mesh, "certificate expired"), "not yet");
        Ok(())
    })
    .await;

    // Plaintext gRPC.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.hub_addr()))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => {
            let (_tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(1);
            SyncClient::new(channel)
                .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .is_err()
        }
    };
    assert!(refused, "a plaintext client got a stream");

    // None of it touched the real agents: still connected, still following the central pods.
    for r in REMOTES {
        let status = mesh.status(r).await.unwrap();
        assert_eq!(status["phase"], "Synced", "{r}: {status}");
    }
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    for r in REMOTES {
        eventually(&format!("{r} to see the new pod"), SOON, || async {
            let slices = Api::<EndpointSlice>::namespaced(mesh.remote(r).clone(), &mesh.ns)
                .list(&ListParams::default().labels("kubernetes.io/service-name=istiod"))
                .await?;
            let n: usize = slices.items.iter().map(|s| s.endpoints.len()).sum();
            anyhow::ensure!(n == 3, "{n} endpoints");
            Ok(())
        })
        .await;
    }
}
