//! The hub's listener: accepts TCP connections and completes each TLS handshake on its own task
//! with the server config current at that moment (certificates reloaded from their files), then
//! hands the connection to the gRPC server. A refused handshake is logged with what it most likely
//! means, in an operator's words.

use crate::tunnels::Tunnels;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::runtime::cli::stopped;
use tether_proto::tls::{ReloadingServerConfig, TUNNEL_ALPN};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// What a refused handshake most likely means, in an operator's words.
fn handshake_hint(error: &std::io::Error) -> &'static str {
    let e = error.to_string();
    if e.contains("Tls12NotOffered") || e.contains("ProtocolVersion") {
        "the client does not speak TLS 1.3, which Tether requires"
    } else if e.contains("UnknownIssuer") || e.contains("BadSignature") {
        "the client certificate is not signed by the hub CA"
    } else if e.contains("xpired") {
        "the client certificate has expired; mint a new one with `tether-hub join`"
    } else if e.contains("NoCertificatesPresented") || e.contains("CertificateRequired") {
        "the client presented no certificate"
    } else if e.contains("InvalidContentType")
        || e.contains("corrupt message")
        || e.contains("InvalidMessage")
    {
        "not TLS: a plaintext client, or something else on this port"
    } else {
        "see the error"
    }
}

/// Accepts TCP connections and runs each TLS handshake on its own task with the config current at that
/// moment, so a slow or hostile client never holds up the others and rotated certificates apply to the
/// next connection.
///
/// A connection that chose the tunnel protocol (ALPN) is an agent's API-access tunnel: it goes to
/// `tunnels` (refused when there are none); every other one to the gRPC server.
pub async fn accept(
    listener: TcpListener,
    tls: Arc<ReloadingServerConfig>,
    out: mpsc::Sender<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    tunnels: Option<Arc<Tunnels>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let out = out.clone();
        let tunnels = tunnels.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(TUNNEL_ALPN) => {
                    match tunnels {
                        Some(tunnels) => tunnels.attach(stream).await,
                        None => debug!(%peer, "API-access tunnel refused: not served here"),
                    }
                }
                Ok(Ok(stream)) => {
                    let _ = out.send(stream).await;
                }
                // A client that left mid-handshake is noise (scanners, probes, floods), not a refusal.
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    debug!(%peer, %error, "client left during the TLS handshake")
                }
                Ok(Err(error)) => {
                    warn!(%peer, %error, hint = handshake_hint(&error), "TLS handshake refused")
                }
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
