//! The allowlist of API access: which requests from central istiod this agent forwards to its API
//! server. Pure: a request's method and path in, the rule that admits it (or why none does) out. The
//! remote API server's RBAC for the reader ServiceAccount still applies after this.
//!
//! The default is what Istio's reader role and the `remote` profile's writes need (what a real istiod
//! sent, recorded through a proxy): reads of the core kinds it watches and of Istio's config, token and
//! access reviews, the root-certificate and CRL ConfigMaps and its leader-election ConfigMap, and the
//! injector's webhook configurations (caBundle).

pub use tether_proto::runtime::proxy::Attributes;

/// One rule: any of `verbs` on any of `resources` in any of `groups` ("*" matches any).
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: &'static str,
    pub groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];

/// The default allowlist.
pub const DEFAULT: &[Rule] = &[
    Rule {
        name: "read core kinds",
        groups: &[""],
        resources: &[
            "pods",
            "services",
            "endpoints",
            "namespaces",
            "nodes",
            "secrets",
            "configmaps",
        ],
        verbs: READ,
    },
    Rule {
        name: "read endpointslices",
        groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: READ,
    },
    Rule {
        name: "read Istio and Gateway API config",
        groups: &[
            "networking.istio.io",
            "security.istio.io",
            "telemetry.istio.io",
            "extensions.istio.io",
            "gateway.networking.k8s.io",
            "gateway.networking.x-k8s.io",
        ],
        resources: &["*"],
        verbs: READ,
    },
    Rule {
        name: "read CRDs",
        groups: &["apiextensions.k8s.io"],
        resources: &["customresourcedefinitions"],
        verbs: READ,
    },
    Rule {
        name: "read replicasets",
        groups: &["apps"],
        resources: &["replicasets"],
        verbs: READ,
    },
    Rule {
        name: "token and access reviews",
        groups: &["authentication.k8s.io", "authorization.k8s.io"],
        resources: &["tokenreviews", "subjectaccessreviews"],
        verbs: &["create"],
    },
    Rule {
        name: "write configmaps (root certificate, CRL, leader election)",
        groups: &[""],
        resources: &["configmaps"],
        verbs: &["create", "update", "patch"],
    },
    Rule {
        name: "webhook configurations (caBundle)",
        groups: &["admissionregistration.k8s.io"],
        resources: &[
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ],
        verbs: &["get", "list", "watch", "update", "patch"],
    },
];

/// Why a request is refused (the 403's message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the path {0:?} is not a Kubernetes API path")]
    BadPath(String),
    #[error(
        "{} {} is not in the agent's API-access allowlist (rules: {})",
        .0.verb,
        resource_name(.0),
        .1
    )]
    NotAllowed(Box<Attributes>, String),
}

fn resource_name(a: &Attributes) -> String {
    let mut r = a.resource.clone();
    if !a.subresource.is_empty() {
        r = format!("{r}/{}", a.subresource);
    }
    match a.group.as_deref() {
        Some("") | None => r,
        Some(g) => format!("{r}.{g}"),
    }
}

/// Parses a request as the API server would for authorization (see
/// [`tether_proto::runtime::proxy::attributes`]).
pub fn attributes(method: &http::Method, path: &str, query: &str) -> Result<Attributes, Refused> {
    tether_proto::runtime::proxy::attributes(method, path, query)
        .ok_or_else(|| Refused::BadPath(path.to_string()))
}

/// The rule that admits the request, or why none does. Non-resource paths (discovery, /version) are
/// allowed for GET only; subresources only where a rule names them (`resource/subresource`).
pub fn check(
    rules: &[Rule],
    method: &http::Method,
    path: &str,
    query: &str,
) -> Result<&'static str, Refused> {
    let a = attributes(method, path, query)?;
    let Some(group) = a.group.as_deref() else {
        return if a.verb == "get" || a.verb == "head" {
            Ok("discovery (GET of a non-resource path)")
        } else {
            Err(Refused::NotAllowed(Box::new(a), names(rules)))
        };
    };
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let hit = rules.iter().find(|r| {
        r.groups.iter().any(|g| *g == "*" || *g == group)
            && r.verbs.contains(&a.verb.as_str())
            && r.resources
                .iter()
                .any(|x| *x == resource || (*x == "*" && a.subresource.is_empty()))
    });
    match hit {
        Some(r) => Ok(r.name),
        None => Err(Refused::NotAllowed(Box::new(a), names(rules))),
    }
}

fn names(rules: &[Rule]) -> String {
    rules.iter().map(|r| r.name).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn ok(method: Method, path: &str, query: &str) -> &'static str {
        check(DEFAULT, &method, path, query)
            .unwrap_or_else(|e| panic!("{method} {path}?{query}: {e}"))
    }

    fn refused(method: Method, path: &str) -> Refused {
        check(DEFAULT, &method, path, "").expect_err(path)
    }

    #[test]
    fn what_istiod_sends_is_allowed() {
        let watch = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan";
        for path in [
            "/api/v1/services",
            "/api/v1/pods",
            "/api/v1/nodes",
            "/api/v1/namespaces",
            "/api/v1/secrets",
            "/api/v1/namespaces/istio-system/configmaps",
            "/apis/discovery.k8s.io/v1/endpointslices",
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "/apis/networking.istio.io/v1/virtualservices",
        ] {
            ok(Method::GET, path, watch);
            ok(Method::GET, path, "limit=500");
        }
        assert_eq!(
            ok(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                ""
            ),
            "token and access reviews"
        );
        ok(Method::POST, "/api/v1/namespaces/demo/configmaps", "");
        ok(
            Method::PUT,
            "/api/v1/namespaces/istio-system/configmaps/istio-leader",
            "",
        );
        ok(
            Method::PUT,
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector",
            "",
        );
        ok(Method::GET, "/version", "");
        ok(Method::GET, "/apis", "");
        ok(Method::GET, "/api/v1", "");
    }

    #[test]
    fn everything_else_is_refused_naming_the_request() {
        let e = refused(Method::DELETE, "/api/v1/namespaces/istio-system");
        assert!(
            e.to_string()
                .starts_with("delete namespaces is not in the agent's API-access allowlist"),
            "{e}"
        );
        for (m, p) in [
            (Method::POST, "/api/v1/namespaces/demo/pods"),
            (Method::PATCH, "/api/v1/namespaces/demo/services/hello"),
            (Method::DELETE, "/api/v1/namespaces/demo/configmaps/x"),
            (
                Method::POST,
                "/api/v1/namespaces/demo/serviceaccounts/x/token",
            ),
            (Method::GET, "/api/v1/namespaces/demo/pods/x/exec"),
            (Method::GET, "/api/v1/namespaces/demo/pods/x/log"),
            (
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            ),
            (
                Method::GET,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            ),
            (Method::POST, "/version"),
        ] {
            assert!(
                matches!(refused(m.clone(), p), Refused::NotAllowed(..)),
                "{m} {p}"
            );
        }
    }

    #[test]
    fn odd_paths_are_refused_not_guessed() {
        for p in [
            "api/v1/pods",
            "/api/v1/../v1/namespaces/x/secrets",
            "/api/v1/namespaces/x/./pods",
            "/api/v1//pods",
            "/api/v1/namespaces/%2e%2e/pods",
            "/api/v1/namespaces/a/pods/b/c/d",
        ] {
            assert!(
                matches!(refused(Method::GET, p), Refused::BadPath(_)),
                "{p}"
            );
        }
    }

    #[test]
    fn attributes_follow_the_api_servers_rules() {
        let a = attributes(&Method::GET, "/api/v1/namespaces/demo/pods/p1/status", "").unwrap();
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str()
            ),
            ("get", "pods", "p1", "status")
        );
        let ns = attributes(&Method::GET, "/api/v1/namespaces/demo", "").unwrap();
        assert_eq!(
            (ns.resource.as_str(), ns.name.as_str()),
            ("namespaces", "demo")
        );
        let watch = attributes(&Method::GET, "/api/v1/pods", "watch=1").unwrap();
        assert_eq!(watch.verb, "watch");
    }
}
