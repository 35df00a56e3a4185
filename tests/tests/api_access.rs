//! API access under bad input and abuse, with real API servers, the real hub and agents, and a client
//! that is istiod as far as the hub can tell: the kubeconfig of the remote secret the hub wrote.
//! (The real istiod using the same path is in `istio.rs`.)

use base64::Engine;
use http::{Request, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tether_tests::fixtures::{CLUSTERS, SOON};
use tether_tests::mesh::Mesh;
use tether_tests::{ControlPlanes, eventually, istio};

/// remote-1 and remote-2 with agents serving API access; remote-1 enabled on the hub, remote-2 not.
async fn mesh() -> (Mesh, u16) {
    let planes = ControlPlanes::shared(CLUSTERS).await;
    let mut mesh = Mesh::new(planes, &["remote-1", "remote-2"]).await.unwrap();
    mesh.create_istiod().await.unwrap();
    for r in ["remote-1", "remote-2"] {
        istio::prepare_remote(&mesh, r).await.unwrap();
    }
    let port = istio::api_access_args(
        &mut mesh,
        &["--api-hold", "500ms", "--api-max-in-flight", "8"],
        &[],
    );
    mesh.create_remote_cluster("remote-1", json!({"apiAccess": {"enabled": true}}))
        .await
        .unwrap();
    mesh.create_remote_cluster("remote-2", json!({}))
        .await
        .unwrap();
    mesh.start_hub().unwrap();
    for r in ["remote-1", "remote-2"] {
        mesh.start_agent(r).unwrap();
    }
    for r in ["remote-1", "remote-2"] {
        mesh.wait_phase(r, "Synced", SOON).await;
    }
    (mesh, port)
}

/// The kubeconfig the hub wrote for `cluster` (waits for it).
async fn remote_secret(mesh: &Mesh, cluster: &str) -> Value {
    let secrets: Api<Secret> = Api::namespaced(mesh.central.clone(), &mesh.ns);
    let name = format!("istio-remote-secret-{cluster}");
    let secret = eventually("the hub's remote secret", SOON, || async {
        secrets
            .get_opt(&name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    })
    .await;
    let text = &secret.data.unwrap()[cluster].0;
    serde_yaml::from_slice(text).unwrap()
}

/// A client as istiod: the remote secret's kubeconfig, optionally with another client certificate.
async fn istiod_client(kubeconfig: &Value, cert: Option<(&str, &str)>) -> kube::Client {
    let mut k = kubeconfig.clone();
    if let Some((c, key)) = cert {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        k["users"][0]["user"]["client-certificate-data"] = b64(c).into();
        k["users"][0]["user"]["client-key-data"] = b64(key).into();
    }
    let parsed: kube::config::Kubeconfig = serde_json::from_value(k).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .unwrap();
    // Every answer as the endpoint gives it (kube's own client would retry a 503 for minutes).
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

/// A TLS connection to the endpoint with istiod's credentials from `kubeconfig`, offering `alpn`.
async fn istiod_tls(
    kubeconfig: &Value,
    port: u16,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let ca = b64(&kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]);
    let cert = b64(&kubeconfig["users"][0]["user"]["client-certificate-data"]);
    let key = b64(&kubeconfig["users"][0]["user"]["client-key-data"]);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(&key).unwrap())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// Writes `bytes` as they are on a connection with istiod's credentials, and returns what comes
/// back before the endpoint closes (or 5 s pass).
async fn send_raw(kubeconfig: &Value, port: u16, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = istiod_tls(kubeconfig, port, &[]).await;
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

type H2Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// One HTTP/2 request as istiod sends it (istiod speaks only HTTP/2 to API servers): its status.
async fn h2_status(kubeconfig: &Value, port: u16, req: Request<H2Body>) -> StatusCode {
    let tls = istiod_tls(kubeconfig, port, &[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap().status()
}

/// Sends a raw request and returns (status, body).
async fn raw(client: &kube::Client, req: Request<Vec<u8>>) -> anyhow::Result<(StatusCode, String)> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, kube::client::Body::from(body));
    let res = client.send(req).await?;
    let code = res.status();
    let body = res.into_body().collect_bytes().await?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn istiods_requests_reach_only_the_named_remote_and_bad_ones_are_refused() {
    let (mut mesh, port) = mesh().await;
    let kubeconfig = remote_secret(&mesh, "remote-1").await;
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["server"],
        format!("https://127.0.0.1:{port}/clusters/remote-1")
    );
    let istiod = istiod_client(&kubeconfig, None).await;

    // A ConfigMap only remote-1 has is read through remote-1's agent.
    let marker =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "only-in-remote-1"}});
    Api::<ConfigMap>::namespaced(mesh.remote("remote-1").clone(), &mesh.ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(marker).unwrap(),
        )
        .await
        .unwrap();
    let via_hub: Api<ConfigMap> = Api::namespaced(istiod.clone(), &mesh.ns);
    via_hub.get("only-in-remote-1").await.unwrap();

    // The allowlist refuses at the agent what RBAC would allow (the reader may not, but the agent
    // says so first, naming the request).
    let err = Api::<Namespace>::all(istiod.clone())
        .delete(&mesh.ns, &Default::default())
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains("delete namespaces is not in the agent's API-access allowlist"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }

    // No spelling of a path reaches another remote.
    for path in [
        format!("/../remote-2/api/v1/namespaces/{}/configmaps", mesh.ns),
        format!("/%2e%2e/remote-2/api/v1/namespaces/{}/configmaps", mesh.ns),
        "/api/v1/namespaces/%2e%2e/configmaps".to_string(),
        "/api//v1/namespaces".to_string(),
    ] {
        let (code, body) = raw(&istiod, Request::get(path.as_str()).body(vec![]).unwrap())
            .await
            .unwrap();
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    // remote-2 has no API access on the hub: 404, and no secret for it.
    let mut to_remote_2 = kubeconfig.clone();
    to_remote_2["clusters"][0]["cluster"]["server"] =
        format!("https://127.0.0.1:{port}/clusters/remote-2").into();
    let remote_2 = istiod_client(&to_remote_2, None).await;
    let (code, body) = raw(
        &remote_2,
        Request::get("/api/v1/namespaces").body(vec![]).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("apiAccess.enabled"), "{body}");
    assert!(
        Api::<Secret>::namespaced(mesh.central.clone(), &mesh.ns)
            .get_opt("istio-remote-secret-remote-2")
            .await
            .unwrap()
            .is_none()
    );

    // An oversized body is refused before it goes anywhere.
    // Over HTTP/2, as istiod sends: an answer before the whole body is read is a clean end of the
    // stream there (over HTTP/1.1 the client may see the connection close before it reads it).
    use http_body_util::BodyExt;
    let path = "/clusters/remote-1/apis/authentication.k8s.io/v1/tokenreviews";
    let whole = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 4 << 20])).boxed();
    // 64 chunks of 64 KiB with no length announced.
    let chunks = futures::stream::iter((0..64).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
            vec![b'x'; 64 << 10],
        )))
    }));
    let streamed = http_body_util::StreamBody::new(chunks).boxed();
    for (what, body) in [("declared length", whole), ("streamed", streamed)] {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let code = h2_status(&kubeconfig, port, req).await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{what}");
    }
    // Oversized headers: refused by the endpoint (431 or the connection reset), never forwarded.
    let header = "y".repeat(200 << 10);
    let r = raw(
        &istiod,
        Request::get("/api/v1/namespaces")
            .header("x-big", header)
            .body(vec![])
            .unwrap(),
    )
    .await;
    assert!(
        !matches!(&r, Ok((code, _)) if code.is_success()),
        "an oversized header went through: {r:?}"
    );

    // Wrong client identities fail the handshake: an agent's certificate (the hub CA), another CA's,
    // none at all.
    let agent_dir = mesh.dir.join("tls-remote-1");
    let agent_cert = std::fs::read_to_string(agent_dir.join("tls.crt")).unwrap();
    let agent_key = std::fs::read_to_string(agent_dir.join("tls.key")).unwrap();
    let other = tether_tests::pki::Ca::new("another-ca").unwrap();
    let other_cert = other.client("istiod", None).unwrap();
    for (what, client) in [
        (
            "an agent's certificate",
            istiod_client(&kubeconfig, Some((&agent_cert, &agent_key))).await,
        ),
        (
            "another CA's certificate",
            istiod_client(
                &kubeconfig,
                Some((&other_cert.cert_pem, &other_cert.key_pem)),
            )
            .await,
        ),
    ] {
        let r = Api::<ConfigMap>::namespaced(client, &mesh.ns)
            .get("only-in-remote-1")
            .await;
        assert!(
            matches!(
                r,
                Err(kube::Error::HyperError(_)) | Err(kube::Error::Service(_))
            ),
            "{what}: {r:?}"
        );
    }
    let mut anonymous = kubeconfig.clone();
    anonymous["users"][0]["user"] = json!({});
    let r = Api::<ConfigMap>::namespaced(istiod_client(&anonymous, None).await, &mesh.ns)
        .get("only-in-remote-1")
        .await;
    assert!(r.is_err(), "no client certificate: {r:?}");

    // Malformed HTTP from a client with istiod's own certificate: the connection ends, nothing else.
    for garbage in [
        &b"\x00\x01\x02GARBAGE\r\n\r\n"[..],
        &b"GET /clusters/remote-1/api HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
    ] {
        let answer = send_raw(&kubeconfig, port, garbage).await;
        assert!(
            !answer.contains(" 200 "),
            "malformed request answered 200: {answer}"
        );
    }
    via_hub.get("only-in-remote-1").await.unwrap();

    // 1,000 abandoned connections: the endpoint and every sync stream carry on.
    let mut abandoned = Vec::new();
    for _ in 0..1000 {
        if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            abandoned.push(c);
        }
    }
    via_hub.get("only-in-remote-1").await.unwrap();
    drop(abandoned);
    for r in ["remote-1", "remote-2"] {
        mesh.wait_phase(r, "Synced", SOON).await;
    }

    // The agent goes: 503 within the hold, not a hang; back: served again.
    mesh.kill_agent("remote-1");
    let asked = Instant::now();
    let (code, body) = eventually("503 without the agent", SOON, || async {
        let r = raw(
            &istiod,
            Request::get("/api/v1/namespaces").body(vec![]).unwrap(),
        )
        .await?;
        anyhow::ensure!(r.0 == StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
        Ok(r)
    })
    .await;
    assert!(body.contains("not connected"), "{code} {body}");
    println!(
        "API access: 503 {:.2} s after the agent was killed",
        asked.elapsed().as_secs_f64()
    );
    mesh.start_agent("remote-1").unwrap();
    eventually("served again with the agent back", SOON, || async {
        via_hub.get("only-in-remote-1").await?;
        Ok(())
    })
    .await;
    // The endpoint lists what it holds in the remote: nothing leaks across (remote-2 never saw the
    // marker).
    let list = Api::<ConfigMap>::namespaced(mesh.remote("remote-2").clone(), &mesh.ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        list.items
            .iter()
            .all(|c| c.metadata.name.as_deref() != Some("only-in-remote-1"))
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn hub_metrics(mesh: &Mesh) -> String {
    let (code, body) = Mesh::admin_get(mesh.hub_admin_port, "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    body
}

/// Watches of `resource` the remote API server holds now.
async fn watches_held(client: &kube::Client, resource: &str) -> f64 {
    let text = client
        .request_text(Request::get("/metrics").body(vec![]).unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{")
                && l.contains(&format!("resource=\"{resource}\""))
                && l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_reader_that_stops_reading_holds_back_the_remote_not_the_hubs_or_agents_memory() {
    let (mesh, _) = mesh().await;
    let kubeconfig = remote_secret(&mesh, "remote-1").await;
    let istiod = istiod_client(&kubeconfig, None).await;
    let remote = mesh.remote("remote-1").clone();
    let configmaps: Api<ConfigMap> = Api::namespaced(remote.clone(), &mesh.ns);
    let mut big: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}}),
    )
    .unwrap();
    configmaps
        .create(&PostParams::default(), &big)
        .await
        .unwrap();

    // istiod opens a watch and stops reading it.
    let path = format!("/api/v1/namespaces/{}/configmaps?watch=true", mesh.ns);
    let stalled = istiod
        .send(
            Request::get(path.as_str())
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    let open = |text: &str| {
        tether_tests::metric(text, "tether_hub_api_open_watches{cluster=\"remote-1\"}")
    };
    assert_eq!(open(&hub_metrics(&mesh).await), 1.0);
    let (hub, agent) = (mesh.hub_pid().unwrap(), mesh.agent_pid("remote-1").unwrap());
    let before = (rss_kib(hub), rss_kib(agent));

    // 100 MiB of events for it: 200 updates of 512 KiB each.
    let chunk = "x".repeat(512 << 10);
    for i in 0..200 {
        big.data = Some([("blob".to_string(), format!("{i}{chunk}"))].into());
        big.metadata.resource_version = None;
        configmaps
            .replace("big", &PostParams::default(), &big)
            .await
            .unwrap();
    }
    // The remote is still served for everything else while that watch is stuck (a connection
    // window the stuck watch could fill would hold this answer's body back for good).
    tokio::time::timeout(
        Duration::from_secs(30),
        Api::<ConfigMap>::namespaced(istiod.clone(), &mesh.ns).get("big"),
    )
    .await
    .expect("another request answered while a watch is stuck")
    .unwrap();
    let after = (rss_kib(hub), rss_kib(agent));
    let grown = |b: u64, a: u64| a.saturating_sub(b) / 1024;
    println!(
        "100 MiB of events to a reader that stopped: hub grew {} MiB ({} -> {} KiB), agent {} MiB ({} -> {} KiB)",
        grown(before.0, after.0),
        before.0,
        after.0,
        grown(before.1, after.1),
        before.1,
        after.1
    );
    // Flow control: the hub takes in at most a stream window, each end sends at most its send
    // buffer; a proxy that buffered would have grown by the 100 MiB.
    assert!(
        grown(before.0, after.0) < 32,
        "hub: {before:?} -> {after:?}"
    );
    assert!(
        grown(before.1, after.1) < 32,
        "agent: {before:?} -> {after:?}"
    );

    // istiod closes the watch: the hub counts it closed, and the remote API server's watch ends.
    drop(stalled);
    eventually("the hub to count the watch closed", SOON, || async {
        let text = hub_metrics(&mesh).await;
        anyhow::ensure!(open(&text) == 0.0, "{}", open(&text));
        Ok(())
    })
    .await;
    let held = watches_held(&remote, "nodes").await;
    let nodes = istiod
        .send(
            Request::get("/api/v1/nodes?watch=true")
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    eventually(
        "the remote to hold istiod's watch of nodes",
        SOON,
        || async {
            let now = watches_held(&remote, "nodes").await;
            anyhow::ensure!(now == held + 1.0, "{held} -> {now}");
            Ok(())
        },
    )
    .await;
    drop(nodes);
    eventually("the remote's watch to end with istiod's", SOON, || async {
        let now = watches_held(&remote, "nodes").await;
        anyhow::ensure!(now == held, "{held} -> {now}");
        Ok(())
    })
    .await;
}

/// Waits for `cluster`'s APIAccess condition to have (status, reason); ("", "") for none.
async fn wait_api(mesh: &Mesh, cluster: &str, want: (&str, &str)) {
    eventually(&format!("{cluster} APIAccess {want:?}"), SOON, || async {
        let c = tether_tests::mesh::condition(&mesh.status(cluster).await?, "APIAccess");
        let got = (
            c["status"].as_str().unwrap_or_default(),
            c["reason"].as_str().unwrap_or_default(),
        );
        anyhow::ensure!(got == want, "{got:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_api_access_condition_says_what_is_missing_and_metrics_count_requests() {
    let (mut mesh, _) = mesh().await;
    wait_api(&mesh, "remote-1", ("True", "Ready")).await;
    wait_api(&mesh, "remote-2", ("", "")).await;

    // Requests are counted by remote, verb and code.
    let kubeconfig = remote_secret(&mesh, "remote-1").await;
    let istiod = istiod_client(&kubeconfig, None).await;
    Api::<Namespace>::all(istiod.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let _ = Api::<Namespace>::all(istiod.clone())
        .delete(&mesh.ns, &Default::default())
        .await;
    let text = hub_metrics(&mesh).await;
    for (series, at_least) in [
        (
            "tether_hub_api_requests_total{cluster=\"remote-1\",verb=\"list\",code=\"200\"}",
            1.0,
        ),
        (
            "tether_hub_api_requests_total{cluster=\"remote-1\",verb=\"delete\",code=\"403\"}",
            1.0,
        ),
        ("tether_hub_api_tunnels_connected", 2.0),
        ("tether_hub_api_request_seconds_count{verb=\"list\"}", 1.0),
    ] {
        let v = tether_tests::metric(&text, series);
        assert!(v >= at_least, "{series} = {v}\n{text}");
    }

    // The agent without --api-access: the hub says so once the tunnel is overdue, and the
    // operator's table shows it.
    mesh.kill_agent("remote-1");
    mesh.agent_args(&[]);
    mesh.start_agent("remote-1").unwrap();
    mesh.wait_phase("remote-1", "Synced", SOON).await;
    wait_api(&mesh, "remote-1", ("False", "NoTunnel")).await;
    let (code, out, err) = mesh.hub_cli(&["status", "--namespace", &mesh.ns]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("remote-1")).unwrap();
    assert!(
        line.contains("SYNCED") && line.contains("NoTunnel") && line.contains("--api-access"),
        "{out}"
    );
    let reader = format!("{}/istio-reader-service-account", mesh.ns);
    mesh.kill_agent("remote-1");
    mesh.agent_args(&["--api-access", "--api-reader", &reader]);
    mesh.start_agent("remote-1").unwrap();
    wait_api(&mesh, "remote-1", ("True", "Ready")).await;
    // The hub records the Events after the status write that carries the transition.
    eventually("Events for NoTunnel and Ready", SOON, || async {
        let reasons: Vec<String> = mesh
            .events_for("remote-1")
            .await
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        anyhow::ensure!(
            reasons.iter().any(|r| r == "NoTunnel") && reasons.iter().any(|r| r == "Ready"),
            "{reasons:?}"
        );
        Ok(())
    })
    .await;

    // A remote secret of that name that the hub did not make: kept, and named in the condition.
    let secrets: Api<Secret> = Api::namespaced(mesh.central.clone(), &mesh.ns);
    let foreign: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-remote-2", "labels": {"istio/multiCluster": "true"}},
        "stringData": {"remote-2": "made by hand"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    mesh.remote_clusters()
        .patch(
            "remote-2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"apiAccess": {"enabled": true}}})),
        )
        .await
        .unwrap();
    wait_api(&mesh, "remote-2", ("False", "RemoteSecretBlocked")).await;
    let kept = secrets.get("istio-remote-secret-remote-2").await.unwrap();
    assert_eq!(kept.data.unwrap()["remote-2"].0, b"made by hand");
    secrets
        .delete("istio-remote-secret-remote-2", &Default::default())
        .await
        .unwrap();
    wait_api(&mesh, "remote-2", ("True", "Ready")).await;

    // Access disabled: the condition and the secret go.
    mesh.remote_clusters()
        .patch(
            "remote-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"apiAccess": null}})),
        )
        .await
        .unwrap();
    wait_api(&mesh, "remote-1", ("", "")).await;
    eventually("remote-1's secret removed", SOON, || async {
        let s = secrets.get_opt("istio-remote-secret-remote-1").await?;
        anyhow::ensure!(s.is_none(), "still there");
        Ok(())
    })
    .await;
}
