//! What the API-access proxy's two ends (the hub's endpoint and the agent's tunnel) share.

/// Removes the headers a proxy must not pass on (hop-by-hop), and those that would let a caller
/// choose who it is (Authorization, Impersonate-*).
pub fn strip_headers(headers: &mut http::HeaderMap) {
    use http::header;
    for h in [
        header::AUTHORIZATION,
        header::CONNECTION,
        header::HOST,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(h);
    }
    let drop: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-") || k.as_str() == "keep-alive")
        .cloned()
        .collect();
    for k in drop {
        headers.remove(k);
    }
}

/// The JSON body of a Kubernetes `Status` failure.
pub fn status_body(code: http::StatusCode, reason: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
    .to_string()
    .into_bytes()
}
