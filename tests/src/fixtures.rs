//! Scenario set-ups shared by the end-to-end test files.

use crate::ControlPlanes;
use crate::mesh::Mesh;
use serde_json::json;
use std::time::Duration;

pub const CLUSTERS: &[&str] = &["central", "remote-1", "remote-2"];
pub const REMOTES: &[&str] = &["remote-1", "remote-2"];
/// Deadline for anything the system should do "soon".
pub const SOON: Duration = Duration::from_secs(30);

/// A mesh with the istiod Service, two ready istiod pods (10.10.0.1 serving the named port on 15010,
/// 10.10.0.2 on 16010) and a RemoteCluster per remote labelling namespace `<ns>-app`; hub and agents
/// up, and every remote Synced. `before_start` runs after the central objects exist and before any
/// process starts.
pub async fn synced_mesh_with<F, Fut>(before_start: F) -> Mesh
where
    F: FnOnce(&Mesh) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, REMOTES).await.unwrap();
    mesh.create_istiod_service().await.unwrap();
    mesh.create_istiod_pod("istiod-a", "10.10.0.1", 15010, true)
        .await
        .unwrap();
    mesh.create_istiod_pod("istiod-b", "10.10.0.2", 16010, true)
        .await
        .unwrap();
    let app_ns = format!("{}-app", mesh.ns);
    for r in REMOTES {
        crate::mesh::create_namespace(mesh.remote(r), &app_ns)
            .await
            .unwrap();
        mesh.create_remote_cluster(r, json!({"injection": {"namespaces": [app_ns]}}))
            .await
            .unwrap();
    }
    before_start(&mesh).await;
    mesh.start_hub().unwrap();
    for r in REMOTES {
        mesh.start_agent(r).unwrap();
    }
    mesh
}

pub async fn synced_mesh() -> Mesh {
    let mesh = synced_mesh_with(|_| async {}).await;
    for r in REMOTES {
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    mesh
}

/// Stream settings for a test-side client dialing the mesh's hub with the TLS folder `tls_dir`.
pub fn client_settings(
    mesh: &Mesh,
    tls_dir: &std::path::Path,
    claims: &str,
) -> tether_agent::client::StreamConfig {
    tether_agent::client::StreamConfig {
        cluster: claims.into(),
        hub_addr: mesh.hub_addr(),
        server_name: None,
        tls: tether_proto::tls::TlsFiles::in_dir(tls_dir),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        standby_retry: Duration::from_secs(1),
        max_message_bytes: tether_proto::limits::MAX_MESSAGE_BYTES,
    }
}

/// A TLS channel to the mesh's hub with `cluster`'s agent certificate (folder `tls-<cluster>`).
pub async fn agent_channel(mesh: &Mesh, cluster: &str) -> tonic::transport::Channel {
    let tls = mesh.dir.join(format!("tls-{cluster}"));
    tether_agent::client::connect(&client_settings(mesh, &tls, cluster))
        .await
        .expect("connect to the hub")
}

/// A Service as the hub sends it for istiod: ports grpc-xds 15010 and https-webhook 15017, and an
/// endpoint per `(ip, ready)` serving both (serving as ready).
pub fn istiod_like_service(name: &str, endpoints: &[(String, bool)]) -> tether_proto::v1::Service {
    use tether_proto::v1::{Endpoint, Port, Service};
    let port = |name: &str, port: i32| Port {
        name: name.into(),
        protocol: "TCP".into(),
        port,
        app_protocol: String::new(),
        target_port: 0,
    };
    Service {
        name: name.into(),
        headless: false,
        external_name: String::new(),
        ports: vec![port("grpc-xds", 15010), port("https-webhook", 15017)],
        endpoints: endpoints
            .iter()
            .map(|(ip, ready)| Endpoint {
                ip: ip.clone(),
                ready: *ready,
                serving: *ready,
                target_ports: vec![15010, 15017],
                ..Default::default()
            })
            .collect(),
    }
}
