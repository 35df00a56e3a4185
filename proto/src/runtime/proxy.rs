//! What the API-access proxy's two ends (the hub's endpoint and the agent's tunnel) share.

/// What a request asks for, in RBAC's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection; or the HTTP method in lower
    /// case for a non-resource path.
    pub verb: String,
    /// API group ("" for the core group); None for a non-resource path (/version, /api, /apis/...).
    pub group: Option<String>,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// The verb of `method` on a resource path (`named`: the path names one object; `watch`: the query
/// asks for a watch).
fn verb(method: &http::Method, named: bool, watch: bool) -> &'static str {
    match *method {
        http::Method::GET | http::Method::HEAD if watch => "watch",
        http::Method::GET | http::Method::HEAD if named => "get",
        http::Method::GET | http::Method::HEAD => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// Parses a request as the API server would for authorization (the agent's allowlist checks it; the
/// hub's metrics count by its verb). None for a path with `.`/`..`, encoded or empty segments (the
/// API server would clean them; we do not guess) or too many segments.
pub fn attributes(method: &http::Method, path: &str, query: &str) -> Option<Attributes> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('%'))
    {
        return None;
    }
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let non_resource = |verb: &str| Attributes {
        verb: verb.into(),
        group: None,
        resource: path.into(),
        subresource: String::new(),
        name: String::new(),
    };
    // /api/v1/..., /apis/<group>/<version>/...
    let (group, after) = match parts.as_slice() {
        ["api", "v1", after @ ..] if !after.is_empty() => ("", after),
        ["apis", group, _version, after @ ..] if !after.is_empty() => (*group, after),
        _ => return Some(non_resource(&method.as_str().to_ascii_lowercase())),
    };
    // [namespaces/<ns>/]<resource>[/<name>[/<subresource>]]; "namespaces/<name>" is the namespace.
    let after = match after {
        ["namespaces", _ns, resource, rest @ ..] => {
            let mut v = vec![*resource];
            v.extend_from_slice(rest);
            v
        }
        other => other.to_vec(),
    };
    let (resource, name, subresource) = match after.as_slice() {
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s] => (*r, *n, *s),
        _ => return None,
    };
    Some(Attributes {
        verb: verb(method, !name.is_empty(), watch).into(),
        group: Some(group.into()),
        resource: resource.into(),
        subresource: subresource.into(),
        name: name.into(),
    })
}

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

/// A Kubernetes `Status` failure as an answer (JSON); each end puts the bytes in its body type.
pub fn status_response(
    code: http::StatusCode,
    reason: &str,
    message: &str,
) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(status_body(code, reason, message))
        .expect("a valid response")
}

/// The JSON body of a Kubernetes `Status` failure.
fn status_body(code: http::StatusCode, reason: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
    .to_string()
    .into_bytes()
}
