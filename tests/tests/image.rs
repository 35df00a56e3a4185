//! `make image`: the OCI image built without a Docker engine (tests/image.sh: umoci + skopeo). Checks
//! what a registry and a kubelet would see: the config (non-root user, entrypoint), exactly the files
//! meant to be there, and that both binaries run inside the image's root as uid 65532 (chroot: every
//! library they need is in the image). Needs root (chroot), as the rest of `make test`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files(root, &e.path(), out);
        } else {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            out.insert(format!("/{rel}"));
        }
    }
}

#[test]
fn the_image_holds_both_binaries_and_what_they_need_and_runs_them_as_non_root() {
    let repo = tether_tests::controlplane::repo_root();
    // `make image`'s script with the debug binaries `make test` already built (the image differs
    // only in optimisation; a release compile would add minutes to every CI run).
    run(Command::new("bash")
        .arg(repo.join("tests/image.sh"))
        .env("TETHER_IMAGE_PROFILE", "debug"));
    let version = env!("CARGO_PKG_VERSION");
    let layout = format!("oci:{}:{version}", repo.join("target/image/oci").display());
    let config: Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", "--config", &layout])
    ))
    .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/tether-agent"])
    );
    // The docker-archive carries the charts' default name.
    let archive = repo.join(format!("target/image/tether-{version}.tar"));
    let manifest: Value = serde_json::from_str(&run(Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("manifest.json")))
    .unwrap();
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!([format!("ghcr.io/tether/tether:{version}")]),
        "{manifest}"
    );
    let values = std::fs::read_to_string(repo.join("charts/tether-agent/values.yaml")).unwrap();
    assert!(
        values.contains("repository: ghcr.io/tether/tether")
            && values.contains(&format!("tag: \"{version}\""))
    );

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(repo.join(format!("target/image/oci:{version}")))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let mut got = BTreeSet::new();
    files(&rootfs, &rootfs, &mut got);
    let extra: Vec<&String> = got
        .iter()
        .filter(|f| {
            !([
                "/tether-hub",
                "/tether-agent",
                "/etc/passwd",
                "/etc/group",
                "/etc/ssl/certs/ca-certificates.crt",
            ]
            .contains(&f.as_str())
                || (f.starts_with("/lib") && f.contains(".so")))
        })
        .collect();
    assert!(extra.is_empty(), "unexpected files in the image: {extra:?}");
    for must in [
        "/tether-hub",
        "/tether-agent",
        "/etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(got.contains(must), "{must} missing: {got:?}");
    }
    for bin in ["tether-hub", "tether-agent"] {
        let out = run(Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg(format!("/{bin}"))
            .arg("--version"));
        assert_eq!(out.trim(), format!("{bin} {version}"));
    }
}
