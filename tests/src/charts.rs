//! Helm charts against the harness: a pinned helm (built with `go install`), rendering, and applying what
//! it renders with server-side apply so the API server validates every object.

use crate::controlplane::repo_root;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The helm binary from `tests/controlplane/helm.sh` (built on first use).
pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("tests/controlplane/helm.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run helm.sh");
        assert!(
            out.status.success(),
            "building helm failed; is Go installed and the module proxy reachable?"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

pub fn chart(name: &str) -> PathBuf {
    repo_root().join("charts").join(name)
}

/// `helm <args>`: (success, stdout + stderr).
pub fn run_helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `helm template` of `chart` as release `release` in `namespace`; panics with helm's message on failure.
pub fn template(
    chart_name: &str,
    release: &str,
    namespace: &str,
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let chart = chart(chart_name);
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    let (ok, out) = run_helm(&args);
    assert!(ok, "helm template {chart_name} failed:\n{out}");
    serde_yaml::Deserializer::from_str(&out)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &serde_json::Value| v.is_object())
        .collect()
}

/// Server-side applies every object (the API server validates them); returns (kind, name) applied.
pub async fn apply_all(
    client: &kube::Client,
    objects: &[serde_json::Value],
) -> anyhow::Result<Vec<(String, String)>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut applied = Vec::new();
    for obj in objects {
        let dynobj: DynamicObject = serde_json::from_value(obj.clone())?;
        let types = dynobj
            .types
            .clone()
            .ok_or_else(|| anyhow::anyhow!("object without apiVersion/kind: {obj}"))?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)?;
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| anyhow::anyhow!("the API server does not serve {gvk:?}"))?;
        let name = dynobj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                dynobj.metadata.namespace.as_deref().unwrap_or("default"),
                &ar,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply("chart-test").force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|e| anyhow::anyhow!("applying {} {name}: {e}", types.kind))?;
        applied.push((types.kind, name));
    }
    Ok(applied)
}

/// Minimal CRDs for the third-party kinds the hub chart can render (ServiceMonitor, cert-manager), so a
/// harness without those operators can still accept the objects.
pub const THIRD_PARTY_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, plural: servicemonitors}
  scope: Namespaced
  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: issuers.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Issuer, plural: issuers}
  scope: Namespaced
  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Certificate, plural: certificates}
  scope: Namespaced
  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]
"#;
