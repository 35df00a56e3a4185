//! The charts as real pods, installed the way the README tells a new user: `make image`, `certs init`,
//! `helm install` of the hub in central, `join`, `helm install` of the agent in the remote, on two
//! real one-node clusters (kubelet, containerd, kube-proxy, CNI bridge; see `tether_tests::realnode`)
//! whose nodes sit in network namespaces joined by one link: the agent reaches the hub's NodePort
//! across it, as across clusters. Both namespaces enforce Pod Security `restricted`.
//!
//! The "istiod" pods here are the pause image behind the `istiod` Service: what Tether mirrors is
//! their addresses, and the real istiod's use of the mirror is covered in `istio.rs`. Needs root.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tether_tests::controlplane::repo_root;
use tether_tests::realnode::{RealCluster, node_binaries};

const NS: &str = "istio-system";
const HUB_DNS: &str = "tether-hub.istio-system.svc";
const AGENT_USER: &str = "system:serviceaccount:istio-system:tether-agent";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(c: &RealCluster, args: &[&str]) -> String {
    run(Command::new(node_binaries().join("kubectl"))
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(args))
}

fn kubectl_json(c: &RealCluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(c, &all)).expect("kubectl JSON")
}

fn kubectl_apply(c: &RealCluster, yaml: &str) {
    let path = c.dir.join(format!("apply-{}.yaml", unique()));
    std::fs::write(&path, yaml).unwrap();
    kubectl(c, &["apply", "-f", path.to_str().unwrap()]);
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn helm(c: &RealCluster, args: &[&str]) -> String {
    run(Command::new(tether_tests::charts::helm())
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(args))
}

/// `tether-hub <args>` (the binary the image packs: this build's profile, see `image.sh` below)
/// with the central cluster as the current kubeconfig context, as the README's commands run.
fn hub_cli(central: &RealCluster) -> Command {
    let mut cmd = Command::new(tether_tests::mesh::bin_dir().join("tether-hub"));
    cmd.env("KUBECONFIG", central.kubeconfig());
    cmd
}

fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Pod Security `restricted`, enforced.
fn restricted_namespace(c: &RealCluster, name: &str) {
    kubectl_apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
             pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/enforce-version: latest\n"
        ),
    );
    wait_default_sa(c, name);
}

/// The controller-manager creates a namespace's `default` ServiceAccount; pods wait for it.
fn wait_default_sa(c: &RealCluster, ns: &str) {
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let sa = kubectl_json(c, &["-n", ns, "get", "serviceaccounts"]);
            let names: Vec<&str> = sa["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["metadata"]["name"].as_str())
                .collect();
            names
                .contains(&"default")
                .then_some(())
                .ok_or(format!("{names:?}"))
        },
    );
}

/// A stand-in istiod pod (pause, restricted-compliant) behind the `istiod` Service.
fn istiod_pod(c: &RealCluster, name: &str) -> String {
    let pause = &tether_tests::realnode::pause_image().1;
    kubectl_apply(
        c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: istiod}}}}
spec:
  securityContext: {{runAsNonRoot: true, runAsUser: 65535, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: discovery
    image: {pause}
    imagePullPolicy: Never
    ports: [{{name: grpc-xds, containerPort: 15010}}, {{name: https-dns, containerPort: 15012}}, {{name: https-webhook, containerPort: 15017}}]
    securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"#
        ),
    );
    eventually(&format!("{name} Ready"), Duration::from_secs(90), || {
        let pod = kubectl_json(c, &["-n", NS, "get", "pod", name]);
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        match pod["status"]["podIP"].as_str() {
            Some(ip) if ready => Ok(ip.to_string()),
            _ => Err(pod["status"].to_string()),
        }
    })
}

/// The addresses in the remote's EndpointSlices of the mirror `istiod`, sorted.
fn mirrored_addresses(remote: &RealCluster) -> Vec<String> {
    let slices = kubectl_json(
        remote,
        &[
            "-n",
            NS,
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=istiod",
        ],
    );
    let mut out: Vec<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// The one pod of a Deployment's label, once Ready: (name, uid, restarts).
fn ready_pod(c: &RealCluster, selector: &str) -> Result<(String, String, i64), String> {
    Ok(ready_pods(c, selector, 1)?.remove(0))
}

/// The hub's pods (the chart runs two replicas), once exactly `n` exist and all are Ready.
fn ready_hubs(c: &RealCluster, n: usize) -> Result<Vec<(String, String, i64)>, String> {
    ready_pods(c, HUB_PODS, n)
}

/// (name, uid, restarts) of each pod of `selector` not being deleted, sorted by name, once exactly
/// `n` exist and all are Ready.
fn ready_pods(
    c: &RealCluster,
    selector: &str,
    n: usize,
) -> Result<Vec<(String, String, i64)>, String> {
    let pods = kubectl_json(c, &["-n", NS, "get", "pods", "-l", selector]);
    let items: Vec<&Value> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    if items.len() != n {
        return Err(format!("{} pods", items.len()));
    }
    let mut out = Vec::new();
    for pod in items {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if !ready {
            return Err(format!("not Ready: {}", pod["status"]));
        }
        out.push((
            pod["metadata"]["name"].as_str().unwrap().to_string(),
            pod["metadata"]["uid"].as_str().unwrap().to_string(),
            pod["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(-1),
        ));
    }
    out.sort();
    Ok(out)
}

const HUB_PODS: &str = "app.kubernetes.io/name=tether-hub";

/// The hub replica (pod) that holds remote-1's agent, from its status.
fn remote_1_hub(central: &RealCluster) -> String {
    let rc = kubectl_json(central, &["-n", NS, "get", "remotecluster", "remote-1"]);
    rc["status"]["agent"]["hub"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `tether-hub join remote-1` as the README runs it (labelling `shop`), writing the agent's values.
fn join(central: &RealCluster, certs: &Path, hub_addr: &str, validity: Option<&str>, out: &Path) {
    let mut cmd = hub_cli(central);
    cmd.args(["join", "remote-1", "--namespace", NS, "--ca-dir"])
        .arg(certs)
        .args(["--hub-addr", hub_addr, "--hub-server-name", HUB_DNS])
        .args(["--injection-namespaces", "shop", "--out"])
        .arg(out);
    if let Some(v) = validity {
        cmd.args(["--validity", v]);
    }
    run(&mut cmd);
}

/// `tether-hub status --wait`: exit 0 and the remote SYNCED.
fn status_wait(central: &RealCluster) -> String {
    let out =
        run(hub_cli(central).args(["status", "--namespace", NS, "--wait", "--timeout", "2m"]));
    assert!(out.contains("SYNCED"), "{out}");
    out
}

/// Writes by the agent in the remote (audit log), from `since` on.
fn agent_writes(remote: &RealCluster, since: usize) -> Vec<String> {
    remote.audit_writes().unwrap()[since..]
        .iter()
        .filter(|w| w.user == AGENT_USER)
        .map(|w| format!("{} {}/{} {}", w.verb, w.resource, w.subresource, w.name))
        .collect()
}

fn serial_of(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// The serial of the certificate the hub presents at `addr` (a TLS handshake without a client
/// certificate: the server's certificate comes first).
fn presented_serial(addr: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            HUB_DNS,
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let end = text
        .find("-----END CERTIFICATE-----")
        .map(|e| e + "-----END CERTIFICATE-----".len())
        .unwrap_or(0);
    serial_of(&text[start..end])
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_charts_run_as_real_pods_installed_as_the_readme_says() {
    let repo = repo_root();
    // `make image`.
    // `make image`'s script with the debug binaries `make test` already built (the image differs
    // only in optimisation; a release compile would add minutes to every CI run).
    run(Command::new("bash")
        .arg(repo.join("tests/image.sh"))
        .env("TETHER_IMAGE_PROFILE", "debug"));
    let version = env!("CARGO_PKG_VERSION");
    let image_tar = repo.join(format!("target/image/tether-{version}.tar"));

    let (central, remote) = {
        let c = std::thread::spawn(|| RealCluster::start("central", 0));
        let r = std::thread::spawn(|| RealCluster::start("remote-1", 1));
        let c = c.join().unwrap().unwrap_or_else(|e| panic!("{e:#}"));
        let r = r.join().unwrap().unwrap_or_else(|e| panic!("{e:#}"));
        (c, r)
    };
    // The remote's node reaches the central node over one link, as across clusters.
    let (central_wan, _) = central.link(&remote).unwrap();
    // No registry: the image goes into each node's containerd, under the charts' default name.
    central.import_image(&image_tar).unwrap();
    remote.import_image(&image_tar).unwrap();
    let work: PathBuf = central.dir.join("user");
    std::fs::create_dir_all(&work).unwrap();

    // Central: Istio's namespace (restricted) with its control plane's Service and a pod.
    restricted_namespace(&central, NS);
    kubectl_apply(
        &central,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: istiod, namespace: {NS}}}\nspec:\n  selector: {{app: istiod}}\n  ports:\n  \
             - {{name: grpc-xds, port: 15010}}\n  - {{name: https-dns, port: 15012}}\n  - {{name: https-webhook, port: 443, targetPort: 15017}}\n"
        ),
    );
    let istiod_a = istiod_pod(&central, "istiod-a");

    // 1. Certificates.
    let certs = work.join("tether-certs");
    run(hub_cli(&central).args([
        "certs",
        "init",
        "--out-dir",
        certs.to_str().unwrap(),
        "--hub-dns",
        HUB_DNS,
        "--secret",
        "tether-hub-tls",
        "--namespace",
        NS,
    ]));
    kubectl(
        &central,
        &[
            "apply",
            "-f",
            certs.join("hub/secret.yaml").to_str().unwrap(),
        ],
    );
    // 2. The hub, reachable from other clusters on a NodePort.
    let hub_chart = repo.join("charts/tether-hub");
    helm(
        &central,
        &[
            "install",
            "tether-hub",
            hub_chart.to_str().unwrap(),
            "-n",
            NS,
            "--set",
            "service.type=NodePort",
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    let node_port = kubectl(
        &central,
        &[
            "-n",
            NS,
            "get",
            "svc",
            "tether-hub",
            "-o",
            "jsonpath={.spec.ports[?(@.name==\"grpc\")].nodePort}",
        ],
    );
    let hub_addr = format!("{central_wan}:{node_port}");
    // 3. The remote.
    restricted_namespace(&remote, NS);
    kubectl(&remote, &["create", "namespace", "shop"]);
    let values = work.join("tether-agent-remote-1.values.yaml");
    join(&central, &certs, &hub_addr, None, &values);
    let agent_chart = repo.join("charts/tether-agent");
    helm(
        &remote,
        &[
            "install",
            "tether-agent",
            agent_chart.to_str().unwrap(),
            "-n",
            NS,
            "-f",
            values.to_str().unwrap(),
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    // 4. Verify.
    let hubs = ready_hubs(&central, 2).unwrap();
    ready_pod(&remote, "app.kubernetes.io/name=tether-agent").unwrap();
    let out = status_wait(&central);
    println!("{out}");
    let svc = kubectl_json(&remote, &["-n", NS, "get", "svc", "istiod"]);
    assert_eq!(
        svc["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tether-agent",
        "{svc}"
    );
    assert!(
        svc["spec"]["selector"].is_null(),
        "a selector-less mirror: {svc}"
    );
    eventually("the mirror's slices", Duration::from_secs(30), || {
        let have = mirrored_addresses(&remote);
        (have == vec![istiod_a.clone()])
            .then_some(())
            .ok_or(format!("{have:?}"))
    });
    let shop = kubectl_json(&remote, &["get", "namespace", "shop"]);
    assert_eq!(shop["metadata"]["labels"]["istio-injection"], "enabled");

    // An istiod rollout in central reaches the remote.
    let istiod_b = istiod_pod(&central, "istiod-b");
    kubectl(
        &central,
        &["-n", NS, "delete", "pod", "istiod-a", "--wait=false"],
    );
    eventually(
        "the rollout in the remote's slices",
        Duration::from_secs(30),
        || {
            let have = mirrored_addresses(&remote);
            (have == vec![istiod_b.clone()])
                .then_some(())
                .ok_or(format!("{have:?}"))
        },
    );

    // The hub replica holding the agent deleted: the agent moves to the other one, the Deployment
    // replaces the pod; the remote stays SYNCED and nothing is rewritten.
    let hub_pod = remote_1_hub(&central);
    assert!(
        hubs.iter().any(|(name, _, _)| *name == hub_pod),
        "remote-1's status names its replica: {hub_pod:?} in {hubs:?}"
    );
    let before = remote.audit_writes().unwrap().len();
    kubectl(
        &central,
        &["-n", NS, "delete", "pod", &hub_pod, "--wait=false"],
    );
    eventually(
        "the agent on the other replica, a new hub pod Ready",
        Duration::from_secs(120),
        || {
            let now = ready_hubs(&central, 2)?;
            let on = remote_1_hub(&central);
            (!now.iter().any(|(name, _, _)| *name == hub_pod) && on != hub_pod && !on.is_empty())
                .then_some(())
                .ok_or(format!("{now:?}, remote-1 on {on}"))
        },
    );
    status_wait(&central);
    assert_eq!(mirrored_addresses(&remote), vec![istiod_b.clone()]);
    assert_eq!(agent_writes(&remote, before), Vec::<String>::new());

    // Agent pod deleted: once back, no write in the remote.
    let (agent_pod, _, _) = ready_pod(&remote, "app.kubernetes.io/name=tether-agent").unwrap();
    kubectl(
        &remote,
        &["-n", NS, "delete", "pod", &agent_pod, "--wait=true"],
    );
    let before = remote.audit_writes().unwrap().len();
    eventually("a new agent pod Ready", Duration::from_secs(120), || {
        ready_pod(&remote, "app.kubernetes.io/name=tether-agent").map(|_| ())
    });
    status_wait(&central);
    assert_eq!(agent_writes(&remote, before), Vec::<String>::new());

    // Certificate rotation through the Secret volumes, no restart. The hub: a new serving certificate
    // from the same CA (`certs hub`), applied as its Secret.
    let hubs = ready_hubs(&central, 2).unwrap();
    let node_port_addr = format!("{}:{node_port}", central.net.ip);
    let old_serial = presented_serial(&node_port_addr);
    assert_eq!(old_serial, serial_of(&read(&certs.join("hub/tls.crt"))));
    run(hub_cli(&central).args([
        "certs",
        "hub",
        "--ca-dir",
        certs.to_str().unwrap(),
        "--hub-dns",
        HUB_DNS,
        "--secret",
        "tether-hub-tls",
        "--namespace",
        NS,
    ]));
    let new_serial = serial_of(&read(&certs.join("hub/tls.crt")));
    assert_ne!(new_serial, old_serial);
    kubectl(
        &central,
        &[
            "apply",
            "-f",
            certs.join("hub/secret.yaml").to_str().unwrap(),
        ],
    );
    // Both replicas, whichever the NodePort picks: ten answers in a row with the new one.
    eventually(
        "the hub presenting its new certificate",
        Duration::from_secs(120),
        || {
            for _ in 0..10 {
                let now = presented_serial(&node_port_addr);
                if now != new_serial {
                    return Err(now);
                }
            }
            Ok(())
        },
    );
    assert_eq!(
        ready_hubs(&central, 2).unwrap(),
        hubs.iter()
            .map(|(name, uid, _)| (name.clone(), uid.clone(), 0))
            .collect::<Vec<_>>(),
        "the hub pods were not restarted"
    );
    // The agent: a new certificate from `join` (30 days, where the first had 90), `helm upgrade`.
    // The replica holding remote-1's stream shows it (its pod's admin port, through the API server).
    let streams = || {
        let pod = remote_1_hub(&central);
        let raw = kubectl(
            &central,
            &[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/{NS}/pods/{pod}:9090/proxy/streams"),
            ],
        );
        serde_json::from_str::<Value>(&raw).unwrap()["remote-1"].clone()
    };
    let days_left = |s: &Value| -> Result<f64, String> {
        let not_after: k8s_openapi::jiff::Timestamp = s["certificateNotAfter"]
            .as_str()
            .ok_or(format!("no certificateNotAfter in {s}"))?
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok((not_after - k8s_openapi::jiff::Timestamp::now())
            .total(k8s_openapi::jiff::Unit::Hour)
            .unwrap()
            / 24.0)
    };
    let first = days_left(&streams()).unwrap();
    assert!((89.0..=90.0).contains(&first), "{first} days");
    let rotated = work.join("tether-agent-remote-1.rotated.values.yaml");
    join(&central, &certs, &hub_addr, Some("30d"), &rotated);
    let (agent_pod, agent_uid, _) =
        ready_pod(&remote, "app.kubernetes.io/name=tether-agent").unwrap();
    helm(
        &remote,
        &[
            "upgrade",
            "tether-agent",
            agent_chart.to_str().unwrap(),
            "-n",
            NS,
            "-f",
            rotated.to_str().unwrap(),
            "--wait",
        ],
    );
    // The kubelet updates the volume in place; the agent reads it for its next connection.
    let new_cert: Value = serde_yaml::from_str(&read(&rotated)).unwrap();
    let new_cert = new_cert["tls"]["cert"].as_str().unwrap().to_string();
    let mounted = remote
        .node_path(&remote.dir.join(format!(
            "node/kubelet/pods/{agent_uid}/volumes/kubernetes.io~secret/tls/tls.crt"
        )))
        .unwrap();
    eventually(
        "the kubelet updating the agent's certificate file",
        Duration::from_secs(120),
        || {
            let now = std::fs::read_to_string(&mounted).map_err(|e| e.to_string())?;
            (now.trim() == new_cert.trim())
                .then_some(())
                .ok_or("old".to_string())
        },
    );
    // The next connection: the agent's hub pod replaced (it reconnects with what is on disk).
    let hub_pod = remote_1_hub(&central);
    kubectl(
        &central,
        &["-n", NS, "delete", "pod", &hub_pod, "--wait=false"],
    );
    eventually(
        "the agent's new certificate in use",
        Duration::from_secs(120),
        || {
            ready_hubs(&central, 2)?;
            if remote_1_hub(&central) == hub_pod {
                return Err("still on the deleted replica".into());
            }
            let s = streams();
            let left = days_left(&s)?;
            (29.0..=30.0)
                .contains(&left)
                .then_some(())
                .ok_or(format!("{s}"))
        },
    );
    assert_eq!(
        ready_pod(&remote, "app.kubernetes.io/name=tether-agent").unwrap(),
        (agent_pod, agent_uid, 0),
        "the agent pod was not restarted"
    );
    status_wait(&central);

    // Uninstall in the README's order: the RemoteCluster (the hub retires the agent: it removes
    // what it made), the agent's release, the hub's release, then what the user made themselves.
    kubectl(
        &central,
        &[
            "-n",
            NS,
            "delete",
            "remotecluster",
            "remote-1",
            "--timeout=120s",
        ],
    );
    helm(&remote, &["uninstall", "tether-agent", "-n", NS, "--wait"]);
    helm(&central, &["uninstall", "tether-hub", "-n", NS, "--wait"]);
    kubectl(&central, &["delete", "crd", "remoteclusters.tether.io"]);
    kubectl(&central, &["-n", NS, "delete", "secret", "tether-hub-tls"]);
    // Nothing of Tether's is left in either cluster.
    let leftovers = |c: &RealCluster| -> Vec<String> {
        let all = kubectl(
            c,
            &[
                "get",
                "all,configmaps,secrets,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,endpoints,endpointslices,events.events.k8s.io,poddisruptionbudgets",
                "-A",
                "-o",
                "name",
            ],
        );
        let mut out: Vec<String> = all
            .lines()
            .filter(|l| l.contains("tether") || l.contains("retired"))
            .map(str::to_string)
            .collect();
        // The Events the hub and agent wrote age out with the API server's event TTL; not objects
        // a user manages.
        out.retain(|l| !l.starts_with("event"));
        out
    };
    // (Pods end after their grace period; helm does not wait for that.)
    for c in [&central, &remote] {
        eventually(
            &format!("nothing of Tether's left in {}", c.name),
            Duration::from_secs(60),
            || {
                let left = leftovers(c);
                left.is_empty().then_some(()).ok_or(format!("{left:?}"))
            },
        );
    }
    let mirror = kubectl_json(
        &remote,
        &[
            "-n",
            NS,
            "get",
            "services,endpointslices,endpoints",
            "-l",
            "app.kubernetes.io/managed-by=tether-agent",
        ],
    );
    assert_eq!(mirror["items"], serde_json::json!([]), "the mirror is gone");
    let shop = kubectl_json(&remote, &["get", "namespace", "shop"]);
    assert!(
        shop["metadata"]["labels"]["istio-injection"].is_null(),
        "{shop}"
    );
}

/// A test binary that dies by `abort` (no destructor runs) while its node runs a pod: every process
/// of the node, the shims and the container included, dies with it, and no mount of the node is left
/// on the host; the network namespace and the cgroups it leaves are removed by the next run's sweep.
#[test]
fn a_node_dies_with_a_test_binary_that_aborts_and_the_next_run_sweeps_the_rest() {
    if std::env::var("REALNODE_CHILD").is_ok() {
        let c = Box::leak(Box::new(
            RealCluster::start("orphan", 2).unwrap_or_else(|e| panic!("{e:#}")),
        ));
        kubectl(c, &["create", "namespace", "orphan"]);
        wait_default_sa(c, "orphan");
        let pause = &tether_tests::realnode::pause_image().1;
        kubectl(
            c,
            &[
                "-n",
                "orphan",
                "run",
                "sleeper",
                &format!("--image={pause}"),
                "--image-pull-policy=Never",
            ],
        );
        eventually("the pod running", Duration::from_secs(90), || {
            let pod = kubectl_json(c, &["-n", "orphan", "get", "pod", "sleeper"]);
            (pod["status"]["phase"] == "Running")
                .then_some(())
                .ok_or(pod["status"].to_string())
        });
        println!("PIDS {:?}", c.pids());
        println!("NETNS {}", c.net.name);
        println!("DIR {}", c.dir.display());
        for d in c.cgroup_dirs() {
            println!("CGROUP {}", d.display());
        }
        std::process::abort();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([
            "a_node_dies_with_a_test_binary_that_aborts_and_the_next_run_sweeps_the_rest",
            "--exact",
            "--nocapture",
        ])
        .env("REALNODE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} ")))
            .map(str::to_string)
            .collect()
    };
    let pids: Vec<u32> = field("PIDS")
        .first()
        .unwrap_or_else(|| {
            panic!(
                "the child printed no PIDs: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    // etcd, kube-apiserver, controller-manager, scheduler, unshare; in the node: sh, containerd,
    // kubelet, kube-proxy, and the pod's shim, pause (sandbox) and pause (container).
    assert!(pids.len() >= 11, "{pids:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|p| tether_tests::procs::alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "processes {:?} outlived their test binary",
            pids.iter()
                .filter(|p| tether_tests::procs::alive(**p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = field("DIR").remove(0);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&dir),
        "a mount of the node is left on the host"
    );
    // What only a sweep removes: the network namespace (with the node's iptables rules and bridge)
    // and the cgroup folders. The next run's sweep (here, called directly) takes them.
    let netns = field("NETNS").remove(0);
    let cgroups = field("CGROUP");
    assert!(!cgroups.is_empty());
    tether_tests::netns::remove_stale();
    tether_tests::realnode::remove_stale_cgroups();
    assert!(
        !Path::new("/var/run/netns").join(&netns).exists(),
        "{netns} left"
    );
    for d in cgroups {
        assert!(!Path::new(&d).exists(), "{d} left");
    }
}
