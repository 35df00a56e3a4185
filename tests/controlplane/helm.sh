#!/usr/bin/env bash
# Installs the pinned helm into target/tools/helm-<version>/helm (go install; no release download).
# Prints the binary's path. A second run returns at once.
set -euo pipefail
version=v3.19.5
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/target/tools/helm-$version"
if [ -x "$dir/helm" ]; then echo "$dir/helm"; exit 0; fi
command -v go >/dev/null || { echo "helm.sh: 'go' not found; install Go 1.24 or newer" >&2; exit 1; }
echo "helm.sh: building helm $version (go install, first run only)" >&2
GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$version"
echo "$dir/helm"
