#!/usr/bin/env bash
# Installs the Debian packages the test harness needs, when they are missing:
#   iproute2  `ip netns` and veth pairs: istiod, and every other "pod" with a real address, runs in a
#             network namespace the harness creates
#   umoci, skopeo  `make image`: the OCI image built without a Docker engine
#   containerd, runc, containernetworking-plugins, iptables, conntrack
#             the real-node tests: each node's container runtime, CNI bridge and kube-proxy
# As root it runs apt-get; otherwise it stops with the exact command to run.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null; }
have ip || need+=(iproute2)
have umoci || need+=(umoci)
have skopeo || need+=(skopeo)
have containerd || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
have iptables || need+=(iptables)
have conntrack || need+=(conntrack)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: missing Debian packages; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
