#!/usr/bin/env bash
# The pause image of the real-node tests, built offline: `pause` from the pinned k8s.io/kubernetes module
# (build/pause/linux/pause.c, `gcc -static`), FROM scratch, as a docker-archive for `ctr images import`.
# Prints the archive's path; a second run with it present returns at once.
#   target/realnode/pause-<k8s version>.tar   (image tether.local/pause:<k8s version>)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root/tests/controlplane"
k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
out="$root/target/realnode/pause-$k8s.tar"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
[ -f "$src" ] || go mod download k8s.io/kubernetes
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs"
gcc -Os -static -DVERSION="$k8s" -o "$work/rootfs/pause" "$src"
strip "$work/rootfs/pause"
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:$k8s" >/dev/null
umoci unpack --image "$work/oci:$k8s" "$work/bundle" >/dev/null
cp -a "$work/rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$work/oci:$k8s" "$work/bundle" >/dev/null
umoci config --image "$work/oci:$k8s" --config.entrypoint /pause --config.user 65535:65535 \
  --os linux --architecture amd64 >/dev/null
skopeo copy -q "oci:$work/oci:$k8s" "docker-archive:$out.tmp:tether.local/pause:$k8s"
mv "$out.tmp" "$out"
echo "$out"
