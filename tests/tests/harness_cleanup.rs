//! Processes the harness starts end with it: a dropped cluster leaves no etcd or kube-apiserver, and a
//! test binary that panics or aborts takes its shared control planes along (PDEATHSIG).

use std::path::Path;
use std::process::Command;
use tether_tests::Cluster;
use tether_tests::procs::alive;

#[test]
fn dropped_cluster_leaves_no_process_behind() {
    let cluster = Cluster::start("cleanup").expect("start cluster");
    let pids = cluster.pids();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(pids.iter().all(|p| alive(*p)));
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived its Cluster");
    }
}

/// Runs this test binary again as a child that starts a cluster, prints its PIDs and panics from a
/// test thread without dropping anything; once the child is gone, so must be its control plane.
#[test]
fn control_plane_dies_with_a_test_binary_that_panics() {
    if std::env::var("HARNESS_CHILD").is_ok() {
        let cluster = Box::leak(Box::new(Cluster::start("orphan").expect("start")));
        println!("PIDS {:?}", cluster.pids());
        std::process::abort();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([
            "control_plane_dies_with_a_test_binary_that_panics",
            "--exact",
            "--nocapture",
        ])
        .env("HARNESS_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PIDS "))
        .unwrap_or_else(|| panic!("child printed no PIDs: {stdout}"));
    let pids: Vec<u32> = line[5..]
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "control plane {pids:?} outlived its test binary"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(Path::new(&exe).exists());
}
