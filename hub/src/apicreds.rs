//! Credentials of API access, and the Istio remote secrets that carry them to istiod.
//!
//! The hub keeps its own small CA for API access in a Secret of its namespace (`tether-api-access`:
//! the CA, and istiod's current client certificate). From it come the API endpoint's serving
//! certificate and the client certificate istiod presents. Only that CA is trusted on the endpoint, so
//! an agent's certificate (signed by the hub CA) cannot be used there. Nothing of any remote's API
//! server (token, CA, address) is stored in the central cluster.
//!
//! For each RemoteCluster with `apiAccess.enabled`, the hub writes Istio's remote secret
//! (`istio-remote-secret-<name>`, label `istio/multiCluster: "true"`, annotation
//! `networking.istio.io/cluster`): a kubeconfig whose server is `<advertise>/clusters/<name>` and
//! whose credentials are embedded. The client certificate is renewed at two thirds of its lifetime;
//! the secrets are rewritten with it. A secret of that name the hub did not make is left alone and
//! reported; disabling access or deleting the RemoteCluster removes the hub's secret.

use crate::certs::{self, Pem};
use crate::changes::Changes;
use crate::crd::RemoteCluster;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The Secret (in the hub's namespace) holding the API-access CA and istiod's client certificate.
pub const CA_SECRET: &str = "tether-api-access";
/// Label on every remote secret the hub writes.
pub const MANAGED_LABEL: &str = "tether.io/remote-secret";
const MANAGER: &str = "tether-hub";

/// istiod's client certificate, and when it was issued.
#[derive(Clone, Debug)]
pub struct IstiodCert {
    pub pem: Pem,
    pub issued: SystemTime,
}

/// istiod's current client certificate as the endpoint compares it (DER), and since when this hub
/// has known it as current (a restarted hub: since it started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub der: Vec<u8>,
    pub since: tokio::time::Instant,
}

impl Current {
    fn of(pem: &Pem) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(pem.cert.as_bytes())?;
        Ok(Self {
            der: der.as_ref().to_vec(),
            since: tokio::time::Instant::now(),
        })
    }

    /// When a client presenting `peer` stops being served: None while `peer` is current.
    pub fn retired_at(&self, peer: &[u8], grace: Duration) -> Option<tokio::time::Instant> {
        (self.der != peer).then(|| self.since + grace)
    }
}

/// The CA and istiod's current certificate.
pub struct Credentials {
    pub ca: Pem,
    istiod: RwLock<IstiodCert>,
    current: tokio::sync::watch::Sender<Current>,
    ttl: Duration,
    secrets: Api<Secret>,
    namespace: String,
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?;
    String::from_utf8(data.get(key)?.0.clone()).ok()
}

fn issued_at(secret: &Secret) -> Option<SystemTime> {
    let secs: u64 = secret
        .metadata
        .annotations
        .as_ref()?
        .get("tether.io/istiod-issued")?
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

impl Credentials {
    /// Reads the CA Secret, creating it (a new CA) when it is missing; reuses istiod's certificate
    /// while it has more than a third of its lifetime left, so a hub restart does not rotate it.
    pub async fn load_or_create(
        client: kube::Client,
        namespace: &str,
        ttl: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        for _ in 0..3 {
            let secrets = secrets.clone();
            if let Some(s) = secrets.get_opt(CA_SECRET).await? {
                let ca = Pem {
                    cert: field(&s, "ca.crt").unwrap_or_default(),
                    key: field(&s, "ca.key").unwrap_or_default(),
                };
                anyhow::ensure!(
                    !ca.cert.is_empty() && !ca.key.is_empty(),
                    "Secret {namespace}/{CA_SECRET} has no ca.crt/ca.key"
                );
                let istiod = match (
                    field(&s, "istiod.crt"),
                    field(&s, "istiod.key"),
                    issued_at(&s),
                ) {
                    (Some(cert), Some(key), Some(issued)) => IstiodCert {
                        pem: Pem { cert, key },
                        issued,
                    },
                    _ => IstiodCert {
                        pem: certs::istiod_cert(&ca, ttl)?,
                        issued: SystemTime::now(),
                    },
                };
                let current = tokio::sync::watch::channel(Current::of(&istiod.pem)?).0;
                let creds = Arc::new(Self {
                    ca,
                    current,
                    istiod: RwLock::new(istiod),
                    ttl,
                    secrets,
                    namespace: namespace.to_string(),
                });
                if creds.due() {
                    creds.renew().await?;
                }
                return Ok(creds);
            }
            let ca = certs::new_named_ca(
                "tether-api-access-ca",
                Duration::from_secs(10 * 365 * 86400),
            )?;
            let istiod = IstiodCert {
                pem: certs::istiod_cert(&ca, ttl)?,
                issued: SystemTime::now(),
            };
            let secret = secret_of(namespace, &ca, &istiod);
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => info!(namespace, secret = CA_SECRET, "created the API-access CA"),
                Err(kube::Error::Api(e)) if e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("could not read or create Secret {namespace}/{CA_SECRET}")
    }

    /// istiod's current certificate, as it changes.
    pub fn current(&self) -> tokio::sync::watch::Receiver<Current> {
        self.current.subscribe()
    }

    pub fn istiod(&self) -> IstiodCert {
        self.istiod.read().expect("credentials lock").clone()
    }

    /// Whether istiod's certificate is past two thirds of its lifetime.
    pub fn due(&self) -> bool {
        let age = self.istiod().issued.elapsed().unwrap_or_default();
        age >= self.ttl * 2 / 3
    }

    /// Issues istiod a new certificate and stores it.
    pub async fn renew(&self) -> anyhow::Result<()> {
        let next = IstiodCert {
            pem: certs::istiod_cert(&self.ca, self.ttl)?,
            issued: SystemTime::now(),
        };
        let secret = secret_of(&self.namespace, &self.ca, &next);
        self.secrets
            .patch(
                CA_SECRET,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let current = Current::of(&next.pem)?;
        *self.istiod.write().expect("credentials lock") = next;
        self.current.send_replace(current);
        info!("renewed istiod's API-access client certificate");
        Ok(())
    }
}

fn secret_of(namespace: &str, ca: &Pem, istiod: &IstiodCert) -> Secret {
    let issued = istiod
        .issued
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let data: BTreeMap<String, ByteString> = [
        ("ca.crt", &ca.cert),
        ("ca.key", &ca.key),
        ("istiod.crt", &istiod.pem.cert),
        ("istiod.key", &istiod.pem.key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CA_SECRET, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": MANAGER},
                     "annotations": {"tether.io/istiod-issued": issued.to_string()}},
        "type": "Opaque",
        "data": data,
    }))
    .expect("a valid Secret")
}

/// The kubeconfig istiod reads for `cluster`.
pub fn kubeconfig(cluster: &str, server_base: &str, ca: &str, istiod: &Pem) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server_base}/clusters/{cluster}\n    certificate-authority-data: {}\n\
         users:\n- name: tether-istiod\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: tether-istiod\ncurrent-context: {cluster}\n",
        b64(ca),
        b64(&istiod.cert),
        b64(&istiod.key),
    )
}

/// The name of `cluster`'s remote secret (as `istioctl create-remote-secret` names it).
pub fn secret_name(cluster: &str) -> String {
    format!("istio-remote-secret-{cluster}")
}

/// Why a remote's secret could not be written, per remote, for its `APIAccess` condition.
pub struct SecretProblems {
    problems: Mutex<HashMap<String, String>>,
    status: Arc<Changes>,
}

impl SecretProblems {
    pub fn new(status: Arc<Changes>) -> Self {
        Self {
            problems: Mutex::new(HashMap::new()),
            status,
        }
    }

    pub fn get(&self, cluster: &str) -> Option<String> {
        self.problems
            .lock()
            .expect("problems lock")
            .get(cluster)
            .cloned()
    }

    /// Forgets the problems of remotes no longer enabled.
    fn retain(&self, wanted: impl Fn(&str) -> bool) {
        self.problems
            .lock()
            .expect("problems lock")
            .retain(|c, _| wanted(c));
    }

    /// Records `cluster`'s problem (or its absence); true when that is news.
    fn set(&self, cluster: &str, problem: Option<String>) -> bool {
        let mut problems = self.problems.lock().expect("problems lock");
        let news = problems.get(cluster) != problem.as_ref();
        match problem {
            Some(p) => problems.insert(cluster.to_string(), p),
            None => problems.remove(cluster),
        };
        drop(problems);
        if news {
            self.status.mark(cluster);
        }
        news
    }
}

/// Keeps the remote secrets equal to the enabled RemoteClusters.
pub struct RemoteSecrets {
    pub secrets: Api<Secret>,
    pub namespace: String,
    pub store: Store<RemoteCluster>,
    pub credentials: Arc<Credentials>,
    /// `https://host:port` of the API endpoint, as istiod reaches it.
    pub server_base: String,
    pub interval: Duration,
    pub problems: Arc<SecretProblems>,
    /// Only the leader renews istiod's certificate and writes the remote secrets.
    pub membership: Arc<crate::lease::Membership>,
}

impl RemoteSecrets {
    /// Runs forever: once per `interval`, renews istiod's certificate when due and writes what differs.
    pub async fn run(self) {
        // What the hub last wrote, per cluster (seeded from the API so a restart writes nothing new).
        let mut written: HashMap<String, String> = HashMap::new();
        let mut seeded = false;
        loop {
            if !seeded {
                match self
                    .secrets
                    .list(&ListParams::default().labels(&format!("{MANAGED_LABEL}=true")))
                    .await
                {
                    Ok(list) => {
                        for s in list.items {
                            if let Some(cluster) = s
                                .metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get("networking.istio.io/cluster"))
                            {
                                written.insert(
                                    cluster.clone(),
                                    field(&s, cluster).unwrap_or_default(),
                                );
                            }
                        }
                        seeded = true;
                    }
                    Err(error) => warn!(%error, "listing remote secrets"),
                }
            }
            if seeded && self.membership.leader() {
                if self.credentials.due()
                    && let Err(error) = self.credentials.renew().await
                {
                    warn!(%error, "renewing istiod's API-access certificate");
                }
                self.pass(&mut written).await;
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    async fn pass(&self, written: &mut HashMap<String, String>) {
        let istiod = self.credentials.istiod().pem;
        let wanted: BTreeMap<String, String> = self
            .store
            .state()
            .iter()
            .filter(|rc| rc.spec.api_access_enabled() && rc.metadata.deletion_timestamp.is_none())
            .filter_map(|rc| rc.metadata.name.clone())
            .map(|c| {
                let k = kubeconfig(&c, &self.server_base, &self.credentials.ca.cert, &istiod);
                (c, k)
            })
            .collect();
        for (cluster, config) in &wanted {
            if written.get(cluster) == Some(config) {
                continue;
            }
            match self.write(cluster, config).await {
                Ok(()) => {
                    info!(%cluster, secret = %secret_name(cluster), "wrote the Istio remote secret");
                    written.insert(cluster.clone(), config.clone());
                    self.problems.set(cluster, None);
                }
                Err(error) => {
                    if self.problems.set(cluster, Some(error.clone())) {
                        warn!(%cluster, %error, "cannot write the Istio remote secret");
                    }
                }
            }
        }
        self.problems.retain(|c| wanted.contains_key(c));
        let gone: Vec<String> = written
            .keys()
            .filter(|c| !wanted.contains_key(*c))
            .cloned()
            .collect();
        for cluster in gone {
            let name = secret_name(&cluster);
            match self.secrets.get_opt(&name).await {
                Ok(Some(s)) if !ours(&s) => {
                    written.remove(&cluster);
                }
                Ok(None) => {
                    written.remove(&cluster);
                }
                Ok(Some(_)) => match self.secrets.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        info!(%cluster, secret = %name, "removed the Istio remote secret");
                        written.remove(&cluster);
                    }
                    Err(error) => warn!(%cluster, %error, "removing the Istio remote secret"),
                },
                Err(error) => warn!(%cluster, %error, "reading the Istio remote secret"),
            }
        }
    }

    async fn write(&self, cluster: &str, config: &str) -> Result<(), String> {
        let name = secret_name(cluster);
        match self.secrets.get_opt(&name).await {
            Ok(Some(existing)) if !ours(&existing) => {
                return Err(format!(
                    "Secret {}/{name} exists and was not made by the hub (no label {MANAGED_LABEL}); \
                     remove it (for example the output of istioctl create-remote-secret) to let the hub manage it",
                    self.namespace
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"istio/multiCluster": "true", MANAGED_LABEL: "true",
                                    "app.kubernetes.io/managed-by": MANAGER},
                         "annotations": {"networking.istio.io/cluster": cluster}},
            "type": "Opaque",
            "data": {cluster: ByteString(config.as_bytes().to_vec())},
        }))
        .expect("a valid Secret");
        self.secrets
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn ours(s: &Secret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(MANAGED_LABEL).map(String::as_str) == Some("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_superseded_certificate_retires_and_after_the_grace() {
        let since = tokio::time::Instant::now();
        let current = Current {
            der: b"new".to_vec(),
            since,
        };
        let grace = Duration::from_secs(60);
        assert_eq!(current.retired_at(b"new", grace), None);
        assert_eq!(current.retired_at(b"old", grace), Some(since + grace));
    }

    #[test]
    fn kubeconfig_embeds_credentials_and_points_at_the_hub() {
        let pem = Pem {
            cert: "CERT".into(),
            key: "KEY".into(),
        };
        let k = kubeconfig("remote-1", "https://hub:8443", "CA", &pem);
        let v: serde_json::Value = serde_yaml::from_str(&k).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://hub:8443/clusters/remote-1"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["users"][0]["user"]["client-certificate-data"], "Q0VSVA==");
        assert!(v["users"][0]["user"].get("token").is_none());
        assert_eq!(v["current-context"], "remote-1");
    }
}
