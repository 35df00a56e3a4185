//! API access: the agent's second connection to the hub, on which the roles flip. The agent dials
//! (mTLS, ALPN `tether-tunnel/1`) and serves HTTP/2 on it; the hub sends central istiod's requests
//! for this cluster's API server down it. Each request is checked against the allowlist ([`allow`])
//! and forwarded to the local API server with the reader ServiceAccount's token, which the agent
//! requests here (TokenRequest) and refreshes; it never leaves this cluster.
//!
//! ```text
//!  hub (HTTP/2 client) ══mTLS, agent dials══► serve_connection ─► allow::check ─► kube::Client (reader
//!                                             (hyper, per request)   403 │          token) ─► API server
//! ```
//! Streaming and flow control are HTTP/2's on both hops: a response body is read from the API server
//! only as fast as the hub (and istiod behind it) reads it.

use crate::allow::{self, Rule};
use backoff::backoff::Backoff;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tether_proto::runtime::proxy::{status_response, strip_headers};
use tether_proto::tls::{TlsFiles, tunnel_client_config};
use tracing::{debug, info, warn};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// API access settings (agent command line).
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    pub hub_addr: String,
    pub server_name: Option<String>,
    pub tls: TlsFiles,
    /// `namespace/name` of the ServiceAccount whose token the forwarded requests carry.
    pub reader: (String, String),
    /// Lifetime asked for the reader token.
    pub token_ttl: Duration,
    /// How often it is refreshed (two thirds of the lifetime unless told more often).
    pub token_refresh: Duration,
    pub max_body_bytes: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub keepalive: Duration,
}

/// The local API server as the reader ServiceAccount: rebuilt whenever its token is refreshed.
#[derive(Clone)]
struct Reader(Arc<RwLock<Result<kube::Client, String>>>);

impl Reader {
    fn get(&self) -> Result<kube::Client, String> {
        self.0.read().expect("reader lock").clone()
    }
}

/// Runs API access forever: the reader token's refresh and the tunnel (redialled with backoff).
/// `up` says whether the tunnel is connected (the stream reports it to the hub).
pub async fn run(own: kube::Client, config: TunnelConfig, up: tokio::sync::watch::Sender<bool>) {
    let reader = Reader(Arc::new(RwLock::new(Err(
        "the reader token has not been issued yet".into(),
    ))));
    tokio::spawn(refresh_token(own, config.clone(), reader.clone()));
    let mut backoff =
        tether_proto::runtime::retry::jittered(config.backoff_initial, config.backoff_max);
    loop {
        let result = serve_once(&config, &reader, &up).await;
        up.send_if_modified(|u| std::mem::replace(u, false));
        match result {
            Ok(()) => {
                info!("API-access tunnel closed by the hub; redialling");
                backoff.reset();
            }
            Err(error) => warn!(%error, "API-access tunnel failed"),
        }
        let delay = backoff.next_backoff().unwrap_or(backoff.longest());
        tokio::time::sleep(delay).await;
    }
}

/// Requests the reader token, builds its client, and does it again every `token_refresh`. Watches
/// under the previous token go on (the API server checked it when they began); new requests carry
/// the new one.
async fn refresh_token(own: kube::Client, config: TunnelConfig, reader: Reader) {
    let (namespace, name) = config.reader.clone();
    let api: Api<ServiceAccount> = Api::namespaced(own, &namespace);
    loop {
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": {"expirationSeconds": config.token_ttl.as_secs()}
        }))
        .expect("a valid TokenRequest");
        let issued = async {
            let tr = api
                .create_token_request(&name, &PostParams::default(), &request)
                .await
                .map_err(|e| format!("TokenRequest for {namespace}/{name}: {e}"))?;
            let token = tr.status.map(|s| s.token).unwrap_or_default();
            let mut cfg = kube::Config::infer()
                .await
                .map_err(|e| format!("kube config: {e}"))?;
            cfg.auth_info = kube::config::AuthInfo {
                token: Some(token.into()),
                ..Default::default()
            };
            // Watches are held for minutes; the API server ends them. Never retry a forwarded write.
            cfg.read_timeout = None;
            cfg.default_retry = false;
            kube::Client::try_from(cfg).map_err(|e| format!("client: {e}"))
        }
        .await;
        let next = match issued {
            Ok(client) => {
                info!(account = %format!("{namespace}/{name}"), ttl = ?config.token_ttl, "reader token issued");
                *reader.0.write().expect("reader lock") = Ok(client);
                config.token_refresh
            }
            Err(error) => {
                warn!(%error, "cannot issue the reader token; API access answers 503 until it can");
                // Keep a token that still works; only a first failure leaves none.
                if reader.get().is_err() {
                    *reader.0.write().expect("reader lock") = Err(error);
                }
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// One tunnel connection: dial, then serve the hub's requests until it ends.
async fn serve_once(
    config: &TunnelConfig,
    reader: &Reader,
    up: &tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    let tls = Arc::new(tunnel_client_config(&config.tls)?);
    let host = config
        .hub_addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&config.hub_addr)
        .trim_matches(['[', ']'])
        .to_string();
    let name = rustls::pki_types::ServerName::try_from(config.server_name.clone().unwrap_or(host))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&config.hub_addr),
    )
    .await??;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    if stream.get_ref().1.alpn_protocol() != Some(tether_proto::tls::TUNNEL_ALPN) {
        anyhow::bail!(
            "the hub does not offer API access (no tunnel protocol in its TLS handshake)"
        );
    }
    info!(hub = %config.hub_addr, "API-access tunnel up");
    up.send_if_modified(|u| !std::mem::replace(u, true));
    let max_body = config.max_body_bytes;
    let reader = reader.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let reader = reader.clone();
        async move {
            Ok::<_, std::convert::Infallible>(forward(req, &reader, allow::DEFAULT, max_body).await)
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive)
        .keep_alive_timeout(config.keepalive)
        .max_concurrent_streams(1024)
        .serve_connection(TokioIo::new(stream), service)
        .await?;
    Ok(())
}

/// A Kubernetes `Status` answer.
pub fn status(code: http::StatusCode, reason: &str, message: &str) -> http::Response<Body> {
    status_response(code, reason, message).map(|b| {
        Full::new(Bytes::from(b))
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

/// Checks one request against the allowlist and forwards it to the API server as the reader.
async fn forward(
    req: http::Request<Incoming>,
    reader: &Reader,
    rules: &[Rule],
    max_body: usize,
) -> http::Response<Body> {
    use http::StatusCode;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    if let Err(refused) = allow::check(rules, &parts.method, &path, &query) {
        warn!(method = %parts.method, %path, reason = %refused, "API request refused");
        return status(StatusCode::FORBIDDEN, "Forbidden", &refused.to_string());
    }
    let client = match reader.get() {
        Ok(c) => c,
        Err(error) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &error,
            );
        }
    };
    let body = match Limited::new(body, max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(error) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("request body over {max_body} bytes or unreadable: {error}"),
            );
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .body(kube::client::Body::from(body))
        .expect("a valid request");
    *out.headers_mut() = parts.headers;
    strip_headers(out.headers_mut());
    debug!(method = %parts.method, %path, "forwarding API request");
    match client.send(out).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_headers(&mut parts.headers);
            http::Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
        }
        Err(error) => status(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            &format!("the remote API server: {error}"),
        ),
    }
}
