//! The API endpoint istiod uses for each remote: `https://<hub>/clusters/<name>/<Kubernetes API path>`.
//! TLS with a certificate from the API-access CA, and a client certificate from that same CA required
//! (only istiod's; an agent's certificate comes from the hub CA and is refused in the handshake).
//! Each request goes down `<name>`'s tunnel to its agent, unchanged but for the prefix and the
//! headers a proxy must not pass on; the agent checks it against its allowlist and forwards it.
//!
//! ```text
//!  istiod ══mTLS══► serve (hyper, h2 or HTTP/1.1) ─► route: /clusters/<name>/<path> ─► Tunnels::get ─►
//!                   limits: header size, body size, requests in flight per remote     agent (h2 client)
//! ```
//! Limits answer with a Kubernetes `Status` naming the limit: 404 for a remote without API access,
//! 503 when its agent's tunnel is down (after a short hold), 429 over the in-flight bound, 413 for
//! an oversized body, 400 for a path that is not plainly `/clusters/<name>/...`.
//!
//! With several replicas, the agent's tunnel may be at another one: the request is passed on
//! (`peers`). A request from a peer replica (its certificate names it) is only ever sent down a
//! tunnel held here, or answered 503 `tether-no-tunnel` at once.

use crate::apicreds::Current;
use crate::crd::RemoteCluster;
use crate::metrics::{ApiRequest, Cluster, HubMetrics, Verb};
use crate::peers::{NO_TUNNEL, Peers};
use crate::tunnels::Tunnels;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_proto::runtime::cli::stopped;
use tether_proto::runtime::proxy::{status_response, strip_headers};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Limits of the API endpoint.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    pub max_in_flight_per_remote: usize,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// How long a request waits for a remote's tunnel to come back.
    pub hold: Duration,
    /// How long a request waits for the head of its answer.
    pub response_timeout: Duration,
    /// How long istiod's previous certificate still works after a renewal.
    pub superseded_grace: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_in_flight_per_remote: 256,
            max_body_bytes: 3 << 20,
            max_header_bytes: 64 << 10,
            hold: Duration::from_secs(3),
            response_timeout: Duration::from_secs(30),
            superseded_grace: Duration::from_secs(60),
        }
    }
}

/// Routes istiod's requests to the remotes' tunnels.
pub struct ApiProxy {
    pub tunnels: Arc<Tunnels>,
    pub remotes: Store<RemoteCluster>,
    pub namespace: String,
    pub limits: ApiLimits,
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    metrics: HubMetrics,
    /// istiod's current certificate: connections with an older one end after the grace.
    current: watch::Receiver<Current>,
    /// The other replicas, for remotes whose tunnel is at one of them.
    peers: Arc<Peers>,
    /// Peer replicas' certificates name them in this trust domain.
    trust_domain: String,
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str, message: &str) -> http::Response<Body> {
    status_response(code, reason, message).map(|b| {
        Full::new(Bytes::from(b))
            .map_err(|never| match never {})
            .boxed()
    })
}

/// 503: the remote's agent has no tunnel up (here or at another replica), after the hold.
fn not_connected(cluster: &str) -> http::Response<Body> {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        &format!("the agent of {cluster} is not connected for API access"),
    )
}

/// A peer replica's request for a remote whose tunnel is not here: 503 at once, marked so that the
/// asking replica tries the next one.
fn no_tunnel(what: &str) -> http::Response<Body> {
    let mut answer = status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        &format!("{what}: no tunnel at this hub replica"),
    );
    answer
        .headers_mut()
        .insert(NO_TUNNEL, http::HeaderValue::from_static("true"));
    answer
}

fn timed_out(cluster: &str, after: Duration) -> http::Response<Body> {
    status(
        StatusCode::GATEWAY_TIMEOUT,
        "Timeout",
        &format!("no answer from the agent of {cluster} within {after:?}"),
    )
}

/// The remote's answer, passed on as it streams; the remote's in-flight permit is held until
/// istiod has it all (or drops it).
fn answer(
    response: http::Response<Incoming>,
    permit: OwnedSemaphorePermit,
) -> http::Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_headers(&mut parts.headers);
    let body = Guarded {
        body: body.map_err(Into::into).boxed(),
        _permit: Some(permit),
        watch: None,
    };
    http::Response::from_parts(parts, body.boxed())
}

/// Splits `/clusters/<name>/<rest>` into the remote and the API path. Anything that is not plainly
/// that (encoded characters in the name, dot segments, empty segments) is refused, so no spelling of
/// a path reaches a remote other than the one it names.
pub fn route(path: &str) -> Result<(&str, &str), String> {
    let rest = path
        .strip_prefix("/clusters/")
        .ok_or_else(|| format!("{path:?}: the API endpoint serves /clusters/<name>/..."))?;
    let (cluster, api_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if !tether_proto::identity::is_dns_label(cluster) {
        return Err(format!("{cluster:?} is not a cluster name"));
    }
    if api_path
        .split('/')
        .skip(1)
        .any(|seg| seg == "." || seg == ".." || seg.contains('%'))
        || (api_path.len() > 1 && api_path.split('/').skip(1).any(str::is_empty))
    {
        return Err(format!(
            "{api_path:?}: dot segments, encoded characters and empty segments are refused"
        ));
    }
    Ok((cluster, api_path))
}

/// A response body that holds its remote's in-flight permit until it is dropped, and counts a
/// streaming watch as open until then.
struct Guarded {
    body: Body,
    _permit: Option<OwnedSemaphorePermit>,
    watch: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(open) = &self.watch {
            open.dec();
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl ApiProxy {
    /// `peers`: the other replicas, whose certificates name them in `trust_domain`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tunnels: Arc<Tunnels>,
        remotes: Store<RemoteCluster>,
        namespace: String,
        limits: ApiLimits,
        metrics: HubMetrics,
        current: watch::Receiver<Current>,
        peers: Arc<Peers>,
        trust_domain: String,
    ) -> Self {
        Self {
            current,
            tunnels,
            remotes,
            namespace,
            limits,
            in_flight: Mutex::new(HashMap::new()),
            metrics,
            peers,
            trust_domain,
        }
    }

    fn permit(&self, cluster: &str) -> Option<OwnedSemaphorePermit> {
        let sem = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .entry(cluster.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_in_flight_per_remote)))
            .clone();
        sem.try_acquire_owned().ok()
    }

    fn enabled(&self, cluster: &str) -> bool {
        self.remotes
            .get(&ObjectRef::new(cluster).within(&self.namespace))
            .is_some_and(|rc| rc.spec.api_access_enabled())
    }

    /// One request from istiod, counted: by remote (only remotes with API access: a name from the
    /// path alone would let any client grow the metric), verb and answer.
    /// `from_peer`: another replica passed it on (counted there, not here).
    pub async fn handle(
        &self,
        req: http::Request<Incoming>,
        from_peer: bool,
    ) -> http::Response<Body> {
        let started = std::time::Instant::now();
        let path = req.uri().path().to_string();
        debug!(method = %req.method(), %path, from_peer, "API endpoint: request");
        if from_peer {
            return match route(&path) {
                Ok((cluster, api_path)) if self.enabled(cluster) => {
                    self.forward(req, cluster, api_path, true).await
                }
                _ => no_tunnel(&path),
            };
        }
        let (cluster, verb, response) = match route(&path) {
            Err(message) => (
                String::new(),
                "invalid".to_string(),
                status(StatusCode::BAD_REQUEST, "BadRequest", &message),
            ),
            Ok((cluster, _)) if !self.enabled(cluster) => (
                String::new(),
                "invalid".to_string(),
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("no RemoteCluster {cluster} with apiAccess.enabled"),
                ),
            ),
            Ok((cluster, api_path)) => {
                let query = req.uri().query().unwrap_or_default();
                let verb = tether_proto::runtime::proxy::attributes(req.method(), api_path, query)
                    .map(|a| a.verb)
                    .unwrap_or_else(|| "invalid".into());
                let response = self.forward(req, cluster, api_path, false).await;
                (cluster.to_string(), verb, response)
            }
        };
        let code = response.status();
        self.metrics
            .api_requests
            .get_or_create(&ApiRequest {
                cluster: cluster.clone(),
                verb: verb.clone(),
                code: code.as_u16(),
            })
            .inc();
        self.metrics
            .api_request_seconds
            .get_or_create(&Verb { verb: verb.clone() })
            .observe(started.elapsed().as_secs_f64());
        if verb == "watch" && code.is_success() {
            let open = self
                .metrics
                .api_open_watches
                .get_or_create(&Cluster { cluster })
                .clone();
            open.inc();
            // Counted as open until the body is dropped (istiod closed it, or the remote ended it).
            let (parts, body) = response.into_parts();
            let body = Guarded {
                body,
                _permit: None,
                watch: Some(open),
            };
            return http::Response::from_parts(parts, body.boxed());
        }
        response
    }

    /// Forwards a request for an enabled remote down its tunnel (here, or at the replica that holds
    /// it), within the limits.
    async fn forward(
        &self,
        req: http::Request<Incoming>,
        cluster: &str,
        api_path: &str,
        from_peer: bool,
    ) -> http::Response<Body> {
        let Some(permit) = self.permit(cluster) else {
            return status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                &format!(
                    "more than {} requests in flight for {cluster}",
                    self.limits.max_in_flight_per_remote
                ),
            );
        };
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes as u64) {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!(
                    "request body of {} bytes is over {} bytes",
                    declared.unwrap_or_default(),
                    self.limits.max_body_bytes
                ),
            );
        }
        let body = match Limited::new(body, self.limits.max_body_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(error) => {
                return status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    &format!(
                        "request body over {} bytes or unreadable: {error}",
                        self.limits.max_body_bytes
                    ),
                );
            }
        };
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{api_path}?{q}"),
            None => api_path.to_string(),
        };
        let mut headers = parts.headers;
        strip_headers(&mut headers);
        let method = parts.method;
        debug!(%cluster, %method, path = %api_path, "API request");
        // The same request for each try (the body is in memory: it is bounded, and small).
        let make = |uri: String| {
            let mut out = http::Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(Full::new(body.clone()))
                .expect("a valid request");
            *out.headers_mut() = headers.clone();
            out
        };
        // The authority is only a label for the agent's logs: the tunnel decides where it goes.
        let down_the_tunnel = || make(format!("https://{cluster}.tether{path_and_query}"));
        // Another replica's request: a tunnel held here, or none (never passed on again).
        if from_peer {
            return match self.tunnels.get(cluster, Duration::ZERO).await {
                Some(sender) => self.send(sender, down_the_tunnel(), cluster, permit).await,
                None => no_tunnel(cluster),
            };
        }
        // Here, or at another replica; while neither, a short hold for the agent to come back.
        let deadline = tokio::time::Instant::now() + self.limits.hold;
        loop {
            if let Some(sender) = self.tunnels.get(cluster, Duration::ZERO).await {
                return self.send(sender, down_the_tunnel(), cluster, permit).await;
            }
            let passed = tokio::time::timeout(
                self.limits.response_timeout,
                self.peers.send(cluster, |base| {
                    make(format!("{base}/clusters/{cluster}{path_and_query}"))
                }),
            )
            .await;
            match passed {
                Ok(Some(response)) => {
                    self.metrics.api_forwarded.inc();
                    return answer(response, permit);
                }
                Ok(None) => {}
                Err(_) => return timed_out(cluster, self.limits.response_timeout),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return not_connected(cluster);
            }
            // Wakes at once for a tunnel here; a tunnel at another replica is asked for again.
            self.tunnels
                .get(cluster, left.min(Duration::from_millis(250)))
                .await;
        }
    }

    /// Sends a request down a tunnel held here.
    async fn send(
        &self,
        mut sender: crate::tunnels::Sender,
        out: http::Request<Full<Bytes>>,
        cluster: &str,
        permit: OwnedSemaphorePermit,
    ) -> http::Response<Body> {
        if sender.ready().await.is_err() {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("the agent of {cluster} went away"),
            );
        }
        // The response head comes at once for every request istiod makes (a watch streams its body);
        // a tunnel that dies under a request must not hold it for the client's own timeout.
        let head =
            tokio::time::timeout(self.limits.response_timeout, sender.send_request(out)).await;
        match head {
            Err(_) => timed_out(cluster, self.limits.response_timeout),
            Ok(Ok(response)) => answer(response, permit),
            Ok(Err(error)) => status(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                &format!("the agent of {cluster}: {error}"),
            ),
        }
    }

    /// Serves the endpoint on `listener` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(error) => {
                        warn!(%error, "API endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, proxy) = (acceptor.clone(), self.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    // A client that left mid-handshake is noise (scanners, probes, floods).
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        debug!(%peer, %error, "API endpoint: client left during the TLS handshake");
                        return;
                    }
                    Ok(Err(error)) => {
                        warn!(%peer, %error, "API endpoint: TLS handshake refused (only istiod's certificate from the API-access CA is accepted)");
                        return;
                    }
                    Err(_) => return,
                };
                let peer_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec())
                    .unwrap_or_default();
                let limits = proxy.limits;
                let mut current = proxy.current.clone();
                // Another replica passing istiod's requests on: not istiod's certificate, never
                // superseded (it lives as long as that replica's process).
                let from_peer =
                    tether_proto::identity::hub_peer_from_cert(&peer_cert, &proxy.trust_domain)
                        .is_some();
                let retired_at = move |c: &Current| {
                    c.retired_at(&peer_cert, limits.superseded_grace)
                        .filter(|_| !from_peer)
                };
                let retired = retired_at.clone();
                let watched = current.clone();
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    let superseded = retired(&watched.borrow())
                        .filter(|at| *at <= tokio::time::Instant::now())
                        .is_some();
                    async move {
                        if superseded {
                            return Ok::<_, std::convert::Infallible>(superseded_answer());
                        }
                        Ok(proxy.handle(req, from_peer).await)
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .max_buf_size(proxy_limits_buf(&limits));
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_header_list_size(limits.max_header_bytes as u32)
                    .keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10));
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                tokio::pin!(connection);
                // A connection of a superseded certificate (istiod's old client, whose watches
                // istiod leaves open) ends when the grace runs out. One opened after that is
                // answered 401 (the service above) and ends with its client.
                let refused = retired_at(&current.borrow())
                    .is_some_and(|at| at <= tokio::time::Instant::now());
                loop {
                    let deadline = retired_at(&current.borrow()).filter(|_| !refused);
                    tokio::select! {
                        result = &mut connection => {
                            if let Err(error) = result {
                                debug!(%peer, %error, "API endpoint: connection ended");
                            }
                            return;
                        }
                        _ = sleep_until(deadline) => {
                            info!(%peer, "API endpoint: closing a connection of istiod's superseded certificate");
                            return;
                        }
                        changed = current.changed() => if changed.is_err() {
                            // No more renewals: serve the connection to its end.
                            if let Err(error) = connection.await {
                                debug!(%peer, %error, "API endpoint: connection ended");
                            }
                            return;
                        },
                    }
                }
            });
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The answer on a connection whose client certificate was superseded more than the grace ago.
fn superseded_answer() -> http::Response<Body> {
    status(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "this client certificate was superseded by a newer one: istiod reads it from the current remote secret",
    )
}

fn proxy_limits_buf(limits: &ApiLimits) -> usize {
    // hyper's HTTP/1 read buffer bounds the request head; it must be at least 8 KiB.
    limits.max_header_bytes.max(8192)
}

/// The endpoint's TLS config: its serving certificate, istiod's client certificate (from `ca`)
/// required, h2 or HTTP/1.1.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes_only_plain_paths() {
        assert_eq!(
            route("/clusters/remote-1/api/v1/pods").unwrap(),
            ("remote-1", "/api/v1/pods")
        );
        assert_eq!(route("/clusters/remote-1").unwrap(), ("remote-1", "/"));
        assert_eq!(route("/clusters/remote-1/").unwrap(), ("remote-1", "/"));
        for bad in [
            "/api/v1/pods",
            "/clusters/",
            "/clusters/Remote-1/api",
            "/clusters/remote%2d1/api",
            "/clusters/remote-1/../remote-2/api/v1/pods",
            "/clusters/remote-1/api/v1/namespaces/%2e%2e/pods",
            "/clusters/remote-1/api//v1",
            "/clusters/remote-1/./api",
            "/clusters/../clusters/remote-2/api",
        ] {
            assert!(route(bad).is_err(), "{bad}");
        }
    }
}
