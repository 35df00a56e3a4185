#!/usr/bin/env bash
# Builds kube-apiserver and etcd at the versions pinned in go.mod into a cache folder keyed by version:
#   <repo>/target/controlplane/k8s-<version>-etcd-<version>/{kube-apiserver,etcd}
# `build.sh node` also builds the node binaries of the real-node tests into the same folder:
#   kubelet, kube-proxy, kube-controller-manager, kube-scheduler, kubectl
# Prints that folder on stdout. A second run with the binaries present returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v go >/dev/null || { echo "build.sh: 'go' not found; install Go 1.24 or newer (https://go.dev/doc/install)" >&2; exit 1; }
cd "$here"
k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
out="${TETHER_CONTROLPLANE_DIR:-$root/target/controlplane/k8s-$k8s-etcd-$etcd}"
node=(kubelet kube-proxy kube-controller-manager kube-scheduler kubectl)
want=(kube-apiserver etcd)
[ "${1:-}" = node ] && want+=("${node[@]}")
missing=()
for b in "${want[@]}"; do [ -x "$out/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$out"; exit 0; fi
mkdir -p "$out"
minor=$(echo "$k8s" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$k8s"
echo "build.sh: building ${missing[*]} (Kubernetes $k8s, etcd $etcd) into $out (cold build takes minutes)" >&2
for b in "${missing[@]}"; do
  case $b in
    etcd) CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 ;;
    *) CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b" ;;
  esac
  mv "$out/$b.tmp" "$out/$b"
done
echo "$out"
