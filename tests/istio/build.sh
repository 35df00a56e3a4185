#!/usr/bin/env bash
# Builds the real istiod (pilot-discovery, from the istio.io/istio version pinned in go.mod) and the two
# remote-workload clients (xdsclient, csrclient) into a cache folder keyed by that version:
#   <repo>/target/istio/<version>/{pilot-discovery,xdsclient,csrclient,crd-all.gen.yaml,istio-discovery/}
# Prints the folder on stdout. A second run with everything present returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v go >/dev/null || { echo "istio/build.sh: 'go' not found; install Go 1.26 or newer" >&2; exit 1; }
cd "$here"
version=$(go list -m -f '{{.Version}}' istio.io/istio)
out="${TETHER_ISTIO_DIR:-$root/target/istio/$version}"
want=(pilot-discovery xdsclient csrclient crd-all.gen.yaml istio-discovery/Chart.yaml)
have=1; for f in "${want[@]}"; do [ -e "$out/$f" ] || have=0; done
if [ $have = 1 ]; then echo "$out"; exit 0; fi
mkdir -p "$out"
echo "istio/build.sh: building istiod $version and the workload clients into $out (cold: minutes)" >&2
export CGO_ENABLED=0
go build -trimpath -ldflags "-s -w" -o "$out/pilot-discovery.tmp" istio.io/istio/pilot/cmd/pilot-discovery
go build -trimpath -ldflags "-s -w" -o "$out/xdsclient.tmp" ./cmd/xdsclient
go build -trimpath -ldflags "-s -w" -o "$out/csrclient.tmp" ./cmd/csrclient
# From the same module: the Istio CRDs istiod watches, and istiod's chart (the tests render its remote
# profile to compare Tether's mirrors with).
module=$(go list -m -f '{{.Dir}}' istio.io/istio)
cp "$module/manifests/charts/base/files/crd-all.gen.yaml" "$out/crd-all.gen.yaml.tmp"
rm -rf "$out/istio-discovery"
cp -r "$module/manifests/charts/istio-control/istio-discovery" "$out/istio-discovery"
chmod -R u+w "$out/istio-discovery"
for f in pilot-discovery xdsclient csrclient crd-all.gen.yaml; do mv "$out/$f.tmp" "$out/$f"; done
echo "$out"
