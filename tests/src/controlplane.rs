//! Locating (and if needed building) the pinned `kube-apiserver` and `etcd` binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Folder holding `kube-apiserver` and `etcd`. `TETHER_CONTROLPLANE_DIR` overrides; otherwise
/// `tests/controlplane/build.sh` is run, which returns at once when the binaries are cached.
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("TETHER_CONTROLPLANE_DIR") {
            let dir = PathBuf::from(dir);
            if dir.join("kube-apiserver").exists() && dir.join("etcd").exists() {
                return dir;
            }
        }
        let script = repo_root().join("tests/controlplane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed; is Go (1.24+) installed and the Go module proxy reachable?",
            script.display()
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
    })
}

/// Folder for per-run state (data dirs, certificates, kubeconfigs, logs) under `target/harness/<pid>`.
/// Folders left by earlier runs whose process is gone are removed first.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = repo_root().join("target/harness");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let stale = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create harness run dir");
        dir
    })
}

/// A TCP port free on 127.0.0.1 at the time of the call, for a child process to listen on. Taken
/// from below the kernel's ephemeral range (`ip_local_port_range`), where no outgoing connection's
/// local port can land on it between this call and the child's bind (with dozens of clients
/// connecting, a port from `bind(:0)` was taken that way: the hub failed with "Address already in
/// use"), and never the same one twice in this process; each process starts at its own offset.
/// Below 30000 too: the real nodes' NodePorts (30000-32767) are never in the way.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const NODE_PORTS: u32 = 30_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static HIGH: OnceLock<u32> = OnceLock::new();
    let high = *HIGH.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768)
            .min(NODE_PORTS)
    });
    if high > LOW + 1_000 {
        let span = high - LOW;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
