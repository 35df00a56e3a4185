//! One Kubernetes control plane on loopback: etcd + kube-apiserver as child processes, its own CA, an
//! admin kubeconfig, and an audit log of every write so tests can count API writes by user.

use crate::controlplane::{binaries, free_port, run_dir};
use crate::pki::{Ca, CertKey, key_pair_pem};
use crate::procs::{Proc, spawn};
use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

/// A running control plane. Processes are killed when it is dropped (and, through PDEATHSIG, when the
/// test binary exits however it exits).
pub struct Cluster {
    pub name: String,
    /// `https://127.0.0.1:<port>`
    pub server: String,
    pub dir: PathBuf,
    ca: Ca,
    apiserver_port: u16,
    etcd_port: u16,
    kubeconfig: PathBuf,
    etcd: Mutex<Option<Proc>>,
    apiserver: Mutex<Option<Proc>>,
    audit: AuditLog,
}

/// One write recorded by the API server's audit log.
#[derive(Debug, Clone)]
pub struct AuditWrite {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
    /// The credential the request was made with (a ServiceAccount token's `JTI=<id>`), if the API
    /// server names one.
    pub credential: String,
}

impl Cluster {
    /// Starts etcd and kube-apiserver and waits for `/readyz`. Blocking; call it off async threads.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        // Ports are picked free and then bound by the children; retry if another process won the race.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(name) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("three attempts"))
    }

    fn try_start(name: &str) -> anyhow::Result<Self> {
        let dir = run_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etcd"))?;
        let ca = Ca::new(&format!("{name}-ca"))?;
        let serving = ca.server("kube-apiserver", &["kubernetes", "kubernetes.default.svc"])?;
        write(&dir.join("ca.crt"), &ca.cert_pem)?;
        write(&dir.join("apiserver.crt"), &serving.cert_pem)?;
        write(&dir.join("apiserver.key"), &serving.key_pem)?;
        let (sa_key, sa_pub) = key_pair_pem()?;
        write(&dir.join("sa.key"), &sa_key)?;
        write(&dir.join("sa.pub"), &sa_pub)?;
        write(&dir.join("audit-policy.yaml"), AUDIT_POLICY)?;
        let apiserver_port = free_port();
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let admin = ca.client("tether-harness-admin", Some("system:masters"))?;
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, name, &server, &ca.cert_pem, &admin)?;
        let cluster = Cluster {
            name: name.to_string(),
            server,
            audit: AuditLog::new(dir.join("audit.log")),
            dir,
            ca,
            apiserver_port,
            etcd_port: free_port(),
            kubeconfig,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
        };
        *cluster.etcd.lock().unwrap() = Some(cluster.spawn_etcd()?);
        cluster.start_apiserver()?;
        Ok(cluster)
    }

    fn spawn_etcd(&self) -> anyhow::Result<Proc> {
        let peer = free_port();
        let client_url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(binaries().join("etcd"));
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}={peer_url}", self.name))
            .args(["--unsafe-no-fsync", "--log-level=warn"]);
        spawn_logged(cmd, &self.dir.join("etcd.log"))
    }

    /// Starts (or restarts, after [`Cluster::stop_apiserver`]) the API server on the same port and
    /// etcd, and waits until it is ready.
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let mut cmd = Command::new(binaries().join("kube-apiserver"));
        cmd.arg(format!(
            "--etcd-servers=http://127.0.0.1:{}",
            self.etcd_port
        ))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={}", self.apiserver_port))
        .arg(format!("--cert-dir={}", d("certs")))
        .arg(format!("--tls-cert-file={}", d("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", d("apiserver.key")))
        .arg(format!("--client-ca-file={}", d("ca.crt")))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", d("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            d("sa.key")
        ))
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--authorization-mode=RBAC")
        // No controller-manager runs, so nothing would create the `default` ServiceAccount.
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false")
        .arg(format!("--audit-policy-file={}", d("audit-policy.yaml")))
        .arg(format!("--audit-log-path={}", d("audit.log")))
        .arg("--audit-log-mode=blocking");
        let proc = spawn_logged(cmd, &self.dir.join("kube-apiserver.log"))?;
        *self.apiserver.lock().unwrap() = Some(proc);
        self.wait_ready(Duration::from_secs(90))
    }

    /// SIGKILLs the API server (etcd keeps running), as in an outage of the remote's control plane.
    pub fn stop_apiserver(&self) {
        if let Some(mut p) = self.apiserver.lock().unwrap().take() {
            p.kill();
        }
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(p) = self.apiserver.lock().unwrap().as_mut()
                && !p.is_running()
            {
                bail!(
                    "kube-apiserver of {} exited:\n{}",
                    self.name,
                    self.log_tail("kube-apiserver.log")
                );
            }
            match rt.block_on(self.readyz()) {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "{} not ready after {timeout:?} ({last}):\n{}",
            self.name,
            self.log_tail("kube-apiserver.log")
        )
    }

    async fn readyz(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let body = client.request_text(req).await?;
        if body.trim() != "ok" {
            bail!("readyz: {body}");
        }
        Ok(())
    }

    fn log_tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new client for the admin identity. Make one per test: a client's connection pool belongs to
    /// the tokio runtime that created it, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// A kubeconfig for `user` (client certificate from this cluster's CA), written under the run folder.
    /// Its permissions are whatever RBAC grants `user` and `group`.
    pub fn user_kubeconfig(&self, user: &str, group: Option<&str>) -> anyhow::Result<PathBuf> {
        let cert = self.ca.client(user, group)?;
        let path = self.dir.join(format!("kubeconfig-{user}"));
        write_kubeconfig(&path, &self.name, &self.server, &self.ca.cert_pem, &cert)?;
        Ok(path)
    }

    /// Writes recorded by the audit log so far, oldest first.
    pub fn audit_writes(&self) -> anyhow::Result<Vec<AuditWrite>> {
        Ok(self.audit.with(|w| w.to_vec()))
    }

    /// How many writes recorded so far match `pred`; cheaper than [`Cluster::audit_writes`] (only
    /// what the log gained since the last call is parsed, nothing is copied), so a benchmark can
    /// count between changes without loading the machine it measures.
    pub fn audit_count(&self, pred: impl Fn(&AuditWrite) -> bool) -> usize {
        self.audit.with(|w| w.iter().filter(|w| pred(w)).count())
    }

    /// PIDs of the processes this cluster runs (for leak checks).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in [&self.etcd, &self.apiserver] {
            if let Some(id) = slot.lock().unwrap().as_ref().and_then(|p| p.id()) {
                pids.push(id);
            }
        }
        pids
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut p) = self.etcd.lock().unwrap().take() {
            p.kill();
        }
    }
}

/// The writes in an API server's audit log (JSON lines), oldest first.
pub fn read_audit(path: &Path) -> anyhow::Result<Vec<AuditWrite>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Ok(text.lines().filter_map(parse_audit_line).collect())
}

fn parse_audit_line(line: &str) -> Option<AuditWrite> {
    let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(AuditWrite {
        user: s("/user/username"),
        verb: s("/verb"),
        resource: s("/objectRef/resource"),
        subresource: s("/objectRef/subresource"),
        namespace: s("/objectRef/namespace"),
        name: s("/objectRef/name"),
        code: v
            .pointer("/responseStatus/code")
            .and_then(|c| c.as_i64())
            .unwrap_or(0),
        credential: s("/user/extra/authentication.kubernetes.io~1credential-id/0"),
    })
}

/// An API server's audit log, read as it grows: each call parses only the complete lines added
/// since the last one. A log that shrank (the cluster's directory made anew) is read from the start.
struct AuditLog {
    path: PathBuf,
    /// Bytes consumed so far, and the writes they held.
    read: Mutex<(u64, Vec<AuditWrite>)>,
}

impl AuditLog {
    fn new(path: PathBuf) -> Self {
        AuditLog {
            path,
            read: Mutex::new((0, Vec::new())),
        }
    }

    /// Reads what the log gained, then calls `f` on every write recorded so far.
    fn with<R>(&self, f: impl FnOnce(&[AuditWrite]) -> R) -> R {
        use std::io::{Read, Seek, SeekFrom};
        let mut read = self.read.lock().unwrap();
        let (offset, writes) = &mut *read;
        if let Ok(mut file) = std::fs::File::open(&self.path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0;
                writes.clear();
            }
            let mut new = Vec::new();
            if file.seek(SeekFrom::Start(*offset)).is_ok() && file.read_to_end(&mut new).is_ok() {
                // Only whole lines: the API server may be half-way through one.
                let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                let text = String::from_utf8_lossy(&new[..whole]);
                writes.extend(text.lines().filter_map(parse_audit_line));
                *offset += whole as u64;
            }
        }
        f(writes)
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
    let file = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    spawn(cmd).with_context(|| format!("spawning {:?}", cmd_name(log)))
}

fn cmd_name(log: &Path) -> String {
    log.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes a kubeconfig with embedded certificate data.
pub fn write_kubeconfig(
    path: &Path,
    name: &str,
    server: &str,
    ca_pem: &str,
    user: &CertKey,
) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    client-certificate-data: {cert}\n    \
         client-key-data: {key}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n\
         current-context: {name}\n",
        ca = b64(ca_pem),
        cert = b64(&user.cert_pem),
        key = b64(&user.key_pem),
    );
    write(path, &yaml)
}
