//! What a well-formed snapshot is, checked by the agent before it touches its cluster (a malformed
//! snapshot is refused whole: NACKed, nothing applied) and by the hub on what it builds. Label syntax
//! is shared with the hub's spec validation.

use crate::identity::is_dns_label;

/// A DNS-1123 subdomain (an ExternalName's target): dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}
use crate::v1::Snapshot;
use std::collections::HashSet;
use std::net::IpAddr;

/// Every problem with `snap`; empty when it can be applied.
pub fn snapshot(snap: &Snapshot) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_dns_label(&snap.namespace) {
        problems.push(format!("namespace {:?} is not a DNS label", snap.namespace));
    }
    let mut names = HashSet::new();
    for svc in &snap.services {
        let at = |what: String| format!("service {:?}: {what}", svc.name);
        if !is_service_name(&svc.name) {
            problems.push(at("name must be a DNS label starting with a letter".into()));
        }
        if !names.insert(svc.name.as_str()) {
            problems.push(at("listed twice".into()));
        }
        let mut port_names = HashSet::new();
        for p in &svc.ports {
            if !(1..=65535).contains(&p.port) {
                problems.push(at(format!("port {} out of range", p.port)));
            }
            if !matches!(p.protocol.as_str(), "" | "TCP" | "UDP" | "SCTP") {
                problems.push(at(format!("protocol {:?} unknown", p.protocol)));
            }
            let unnamed_ok = p.name.is_empty() && svc.ports.len() == 1;
            if !(unnamed_ok || is_dns_label(&p.name)) {
                problems.push(at(format!(
                    "port name {:?} must be a DNS label (and may be empty only for a single port)",
                    p.name
                )));
            }
            if !port_names.insert(p.name.as_str()) {
                problems.push(at(format!("port name {:?} used twice", p.name)));
            }
        }
        if !svc.external_name.is_empty() {
            if !is_dns_subdomain(&svc.external_name) {
                problems.push(at(format!(
                    "external name {:?} is not a DNS name",
                    svc.external_name
                )));
            }
            if !svc.endpoints.is_empty() || svc.headless {
                problems.push(at(
                    "an ExternalName mirror has no endpoints and is not headless".into(),
                ));
            }
        }
        // One address may serve on different ports (pods on the host network), but not twice alike.
        let mut seen = HashSet::new();
        for ep in &svc.endpoints {
            if ep.ip.parse::<IpAddr>().is_err() {
                problems.push(at(format!("endpoint address {:?} is not an IP", ep.ip)));
            } else if !seen.insert((ep.ip.as_str(), &ep.target_ports)) {
                problems.push(at(format!("endpoint address {} listed twice", ep.ip)));
            }
            if ep.target_ports.len() != svc.ports.len() {
                problems.push(at(format!(
                    "endpoint {} has {} target ports for {} ports",
                    ep.ip,
                    ep.target_ports.len(),
                    svc.ports.len()
                )));
            }
            if ep.target_ports.iter().any(|t| !(0..=65535).contains(t)) {
                problems.push(at(format!(
                    "endpoint {} has a target port out of range",
                    ep.ip
                )));
            }
        }
    }
    if let Some(inj) = &snap.injection {
        for ns in &inj.namespaces {
            if !is_dns_label(ns) {
                problems.push(format!("injection namespace {ns:?} is not a DNS label"));
            }
        }
        for (k, v) in &inj.labels {
            if let Err(e) = validate_label(k, v) {
                problems.push(format!("injection label {k}={v}: {e}"));
            }
        }
    }
    problems
}

/// A Service name: an RFC 1035 label (a DNS label that starts with a letter).
pub fn is_service_name(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Kubernetes label syntax: `[prefix/]name` with a DNS-subdomain prefix; value up to 63 characters.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns_label))
    {
        return Err(format!("key prefix {p:?} is not a DNS subdomain"));
    }
    if !is_label_name(name, false) {
        return Err(format!(
            "key name {name:?} must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    if !is_label_name(value, true) {
        return Err(format!(
            "value {value:?} must be at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn is_label_name(s: &str, empty_ok: bool) -> bool {
    if s.is_empty() {
        return empty_ok;
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Endpoint, Injection, Port, Service};

    fn good() -> Snapshot {
        Snapshot {
            namespace: "istio-system".into(),
            services: vec![Service {
                name: "istiod".into(),
                ports: vec![Port {
                    name: "grpc-xds".into(),
                    port: 15010,
                    protocol: "TCP".into(),
                    ..Default::default()
                }],
                endpoints: vec![Endpoint {
                    ip: "10.0.0.1".into(),
                    target_ports: vec![15010],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            injection: Some(Injection {
                namespaces: vec!["app".into()],
                labels: [("istio-injection".to_string(), "enabled".to_string())].into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_external_name_is_a_dns_name_with_no_endpoints() {
        let mut s = good();
        s.services[0].endpoints.clear();
        s.services[0].external_name = "a1b2.elb.us-east-1.amazonaws.com".into();
        assert_eq!(snapshot(&s), Vec::<String>::new());
        s.services[0].external_name = "Not_A_Name".into();
        assert_eq!(snapshot(&s).len(), 1, "{:?}", snapshot(&s));
        let mut s = good();
        s.services[0].external_name = "gw.example.com".into();
        assert_eq!(snapshot(&s).len(), 1, "endpoints beside an external name");
    }

    #[test]
    fn a_well_formed_snapshot_passes() {
        assert_eq!(snapshot(&good()), Vec::<String>::new());
    }

    #[test]
    fn each_malformation_is_named() {
        type Break = fn(&mut Snapshot);
        let cases: Vec<(Break, &str)> = vec![
            (|s| s.namespace = "Bad NS".into(), "namespace"),
            (
                |s| s.services[0].name = "1stiod".into(),
                "starting with a letter",
            ),
            (
                |s| {
                    let svc = s.services[0].clone();
                    s.services.push(svc)
                },
                "listed twice",
            ),
            (|s| s.services[0].ports[0].port = 0, "out of range"),
            (
                |s| s.services[0].ports[0].protocol = "HTTP".into(),
                "protocol",
            ),
            (
                |s| s.services[0].endpoints[0].ip = "10.0.0".into(),
                "not an IP",
            ),
            (
                |s| {
                    let ep = s.services[0].endpoints[0].clone();
                    s.services[0].endpoints.push(ep)
                },
                "10.0.0.1 listed twice",
            ),
            (
                |s| s.services[0].endpoints[0].target_ports.clear(),
                "0 target ports",
            ),
            (
                |s| s.services[0].endpoints[0].target_ports[0] = 70000,
                "target port",
            ),
            (
                |s| s.injection.as_mut().unwrap().namespaces[0] = "A".into(),
                "injection namespace",
            ),
            (
                |s| {
                    s.injection
                        .as_mut()
                        .unwrap()
                        .labels
                        .insert("bad key!".into(), "x".into());
                },
                "injection label",
            ),
        ];
        for (break_it, needle) in cases {
            let mut s = good();
            break_it(&mut s);
            let problems = snapshot(&s);
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:?}"
            );
        }
    }

    #[test]
    fn label_syntax() {
        assert!(validate_label("istio.io/rev", "canary-1").is_ok());
        assert!(validate_label("istio-injection", "").is_ok());
        for (k, v) in [
            ("", "x"),
            ("a/", "x"),
            ("/a", "x"),
            ("a b", "x"),
            ("k", "-x"),
            ("k", &"v".repeat(64)),
        ] {
            assert!(validate_label(k, v).is_err(), "{k}={v}");
        }
    }
}
