//! Certificate rotation without restarts. The hub's TLS folder is laid out exactly as Kubernetes lays out
//! a Secret volume (each file a symlink through `..data`, which is swapped atomically), and replaced
//! while agent streams are up.

use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use tether_proto::tls::{TlsFiles, client_config};
use tether_tests::fixtures::{CLUSTERS, REMOTES, SOON};
use tether_tests::mesh::Mesh;
use tether_tests::pki::Ca;
use tether_tests::{ControlPlanes, eventually};

/// Writes `files` as a new generation of a Secret volume in `dir`, the way the kubelet's AtomicWriter does.
fn secret_volume(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let gen_dir = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    for (name, contents) in files {
        std::fs::write(gen_dir.join(name), contents).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

/// The serving certificate a fresh TLS connection to the hub gets.
async fn served_certificate(mesh: &Mesh, client_tls: &Path) -> Vec<u8> {
    let config = Arc::new(client_config(&TlsFiles::in_dir(client_tls)).unwrap());
    let tcp = tokio::net::TcpStream::connect(mesh.hub_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn replaced_certificates_are_used_by_the_next_connection_without_restarts() {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, REMOTES).await.unwrap();
    mesh.create_istiod_service().await.unwrap();
    mesh.create_istiod_pod("istiod-a", "10.10.0.1", 15010, true)
        .await
        .unwrap();
    for r in REMOTES {
        mesh.create_remote_cluster(r, json!({})).await.unwrap();
    }
    let volume = mesh.dir.join("hub-secret-volume");
    let serving1 = mesh.ca.server("tether-hub", &[]).unwrap();
    secret_volume(
        &volume,
        1,
        &[
            ("tls.crt", &serving1.cert_pem),
            ("tls.key", &serving1.key_pem),
            ("ca.crt", &mesh.ca.cert_pem),
        ],
    );
    mesh.hub_tls_dir = volume.clone();
    mesh.start_hub().unwrap();
    for r in REMOTES {
        mesh.start_agent(r).unwrap();
    }
    for r in REMOTES {
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    let agent1_tls = mesh.dir.join("tls-remote-1");
    let first = served_certificate(&mesh, &agent1_tls).await;

    // 1. The hub's serving certificate is replaced while streams are up.
    let serving2 = mesh.ca.server("tether-hub", &[]).unwrap();
    secret_volume(
        &volume,
        2,
        &[
            ("tls.crt", &serving2.cert_pem),
            ("tls.key", &serving2.key_pem),
            ("ca.crt", &mesh.ca.cert_pem),
        ],
    );
    eventually(
        "a new connection to get the new serving certificate",
        SOON,
        || async {
            let now = served_certificate(&mesh, &agent1_tls).await;
            anyhow::ensure!(now != first, "still the old certificate");
            Ok(())
        },
    )
    .await;
    let log = mesh.log("hub");
    assert_eq!(
        count(&log, "serving certificate reloaded"),
        1,
        "reloaded once, by the file watch"
    );
    assert_eq!(
        count(&log, "agent connected"),
        2,
        "the existing streams were not touched"
    );
    for r in REMOTES {
        assert_eq!(mesh.status(r).await.unwrap()["phase"], "Synced");
    }

    // 2. A new CA: the hub trusts only it from now on, and remote-1's agent gets a certificate from it
    //    on disk. Neither process restarts for this; open streams stay up.
    let ca2 = Ca::new("tether-hub-ca-2").unwrap();
    let uri = format!(
        "spiffe://{}/cluster/remote-1",
        tether_tests::mesh::TRUST_DOMAIN
    );
    let agent_cert = ca2
        .client_with_uris("agent-remote-1", &[&uri], false)
        .unwrap();
    std::fs::write(agent1_tls.join("tls.crt"), &agent_cert.cert_pem).unwrap();
    std::fs::write(agent1_tls.join("tls.key"), &agent_cert.key_pem).unwrap();
    secret_volume(
        &volume,
        3,
        &[
            ("tls.crt", &serving2.cert_pem),
            ("tls.key", &serving2.key_pem),
            ("ca.crt", &ca2.cert_pem),
        ],
    );
    eventually("the hub to load the new CA", SOON, || async {
        anyhow::ensure!(
            count(&mesh.log("hub"), "serving certificate reloaded") == 2,
            "not yet"
        );
        Ok(())
    })
    .await;
    assert_eq!(
        count(&mesh.log("hub"), "agent connected"),
        2,
        "open streams survive a CA change"
    );

    // Every agent must now dial again. Only the one holding the new certificate gets in: proof that
    // it picked its rotated files up by itself (the agent process was never restarted).
    mesh.kill_hub();
    mesh.start_hub().unwrap();
    eventually(
        "remote-1 to reconnect with its new certificate",
        SOON,
        || async {
            anyhow::ensure!(
                mesh.log("hub").contains("agent connected cluster=remote-1"),
                "not yet"
            );
            Ok(())
        },
    )
    .await;
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    eventually("remote-2's old certificate to be refused", SOON, || async {
        anyhow::ensure!(mesh.log("hub").contains("UnknownIssuer"), "not yet");
        Ok(())
    })
    .await;
    assert!(!mesh.log("hub").contains("agent connected cluster=remote-2"));
}
