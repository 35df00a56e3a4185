//! Hostile or broken clients against the hub: silence instead of Hello, garbage bytes, an oversized
//! message, a thousand abandoned connections, a TLS 1.2-only client. The hub stays up, says why, and
//! keeps serving the well-behaved agents.

use std::sync::Arc;
use std::time::Duration;
use tether_proto::tls::{load_certs, load_key};
use tether_proto::v1::sync_client::SyncClient;
use tether_proto::v1::{AgentMessage, Hello, agent_message};
use tether_tests::eventually;
use tether_tests::fixtures::{REMOTES, SOON, agent_channel, synced_mesh};
use tether_tests::mesh::Mesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rustls_client(
    mesh: &Mesh,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let dir = mesh.dir.join("tls-remote-1");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(load_certs(&dir.join("ca.crt")).unwrap().remove(0))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        load_certs(&dir.join("tls.crt")).unwrap(),
        load_key(&dir.join("tls.key")).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    mesh: &Mesh,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(mesh.hub_addr()).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

fn hub_says(mesh: &Mesh, needle: &str) -> bool {
    mesh.log("hub").contains(needle)
}

#[tokio::test]
async fn the_hub_survives_bad_clients_and_keeps_serving_good_ones() {
    let mesh = synced_mesh().await;

    // 1. A stream that never says Hello is ended after the Hello timeout.
    let channel = agent_channel(&mesh, "remote-1").await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(1);
    let silent = SyncClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let status = silent.expect_err("a stream without Hello is refused");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("Hello"), "{status:?}");

    // 2. A message over the size limit.
    let channel = agent_channel(&mesh, "remote-1").await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let huge = Hello {
        cluster: "remote-1".into(),
        agent_version: "x".repeat(5 * 1024 * 1024),
        ..Default::default()
    };
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Hello(huge)),
    })
    .await
    .unwrap();
    let status = SyncClient::new(channel)
        .max_encoding_message_size(16 * 1024 * 1024)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("an oversized Hello is refused");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );

    // 3. Garbage after a good handshake: the connection is dropped, nothing else.
    let mut tls = tls_connect(&mesh, rustls_client(&mesh, &[&rustls::version::TLS13]))
        .await
        .unwrap();
    tls.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(4096))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue, // an HTTP/2 GOAWAY may come first
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the hub closes a connection that speaks garbage");

    // 4. A TLS 1.2-only client never gets in.
    let refused = tls_connect(&mesh, rustls_client(&mesh, &[&rustls::version::TLS12])).await;
    assert!(refused.is_err(), "TLS 1.2 must be refused");
    eventually("the hub to log the protocol refusal", SOON, || async {
        anyhow::ensure!(
            hub_says(&mesh, "TLS handshake refused") && hub_says(&mesh, "does not speak TLS 1.3"),
            "not yet"
        );
        Ok(())
    })
    .await;

    // 5. A thousand connections opened and abandoned (half without a byte, half mid-handshake).
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut tcp = tokio::net::TcpStream::connect(mesh.hub_addr())
            .await
            .unwrap();
        if i % 2 == 0 {
            tcp.write_all(b"\x16\x03\x01\x00\xff").await.unwrap(); // the start of a ClientHello, then nothing
        }
        held.push(tcp);
    }
    drop(held);

    // Through all of that the real agents stayed connected and keep following the central pods.
    for r in REMOTES {
        assert_eq!(mesh.status(r).await.unwrap()["phase"], "Synced");
    }
    assert_eq!(
        Mesh::admin_get(mesh.hub_admin_port, "/ready")
            .await
            .unwrap()
            .0,
        200
    );
    mesh.create_istiod_pod("istiod-c", "10.10.0.3", 15010, true)
        .await
        .unwrap();
    for r in REMOTES {
        eventually(
            &format!("{r} to take a change after the abuse"),
            SOON,
            || async {
                let s = mesh.status(r).await?;
                anyhow::ensure!(s["phase"] == "Synced", "{s}");
                let live = mesh.live_synced(r).await?;
                anyhow::ensure!(live["endpoints"] == 3, "{live}");
                Ok(())
            },
        )
        .await;
    }
    let metrics = Mesh::admin_get(mesh.hub_admin_port, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("tether_hub_streams_refused_total{reason=\"no_hello\"}"),
        "refusals are counted"
    );
}
