#!/usr/bin/env bash
# `make image`: the OCI image of both binaries, built without a Docker engine (umoci + skopeo).
# FROM scratch: tether-hub and tether-agent (release), the shared libraries they link (from ldd), the
# CA bundle, /etc/passwd and /etc/group for uid 65532, /tmp. Runs as 65532:65532; entrypoint
# /tether-agent (the hub chart runs /tether-hub). The image is named as the charts' default
# (ghcr.io/tether/tether:<version>); out:
#   target/image/oci                     OCI layout, tag <version>  (skopeo copy oci:... docker://...)
#   target/image/tether-<version>.tar    docker-archive             (ctr -n k8s.io images import ...)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name=${TETHER_IMAGE:-ghcr.io/tether/tether}
out=target/image
# TETHER_IMAGE_PROFILE=debug takes the binaries `make test` builds anyway (the tests use it: the
# image is the same but for optimisation, and CI is spared a release compile); default release,
# the same set as `make bench` (one compile of the dependencies for both).
profile=${TETHER_IMAGE_PROFILE:-release}
case "$profile" in
  release) cargo build --release --locked --workspace --bins ;;
  debug) cargo build --locked --workspace --bins ;;
  *) echo "image.sh: TETHER_IMAGE_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
rm -rf "$out"
mkdir -p "$out"
rootfs=$(mktemp -d)
chmod 0755 "$rootfs"   # the image's / : mktemp makes it 0700, which uid 65532 could not enter
work=$(mktemp -d)
trap 'rm -rf "$rootfs" "$work"' EXIT
install -m 0755 "target/$profile/tether-hub" "target/$profile/tether-agent" "$rootfs/"
# The dynamic loader and every library the binaries link, at the paths they are linked with.
for lib in $(ldd "target/$profile/tether-hub" "target/$profile/tether-agent" \
  | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$version"
umoci unpack --image "$work/oci:$version" "$work/bundle" >/dev/null
cp -a "$rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$work/oci:$version" "$work/bundle"
umoci config --image "$work/oci:$version" --config.entrypoint /tether-agent \
  --config.user 65532:65532 --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label org.opencontainers.image.source=https://github.com/tether/tether \
  --config.label org.opencontainers.image.version="$version" --os linux --architecture amd64
umoci gc --layout "$work/oci"
cp -a "$work/oci" "$out/oci"
skopeo copy -q "oci:$out/oci:$version" "docker-archive:$out/tether-$version.tar:$name:$version"
echo "$out/oci:$version ($name:$version), $out/tether-$version.tar"
