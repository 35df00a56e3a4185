# Tether. `make demo` runs the local demo; `make test` runs every test (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps controlplane nodes helm istio image test lint deny fmt demo bench clean-harness

all: build

build:
	$(CARGO) build --workspace --bins

## kube-apiserver + etcd from the pinned Go module, cached under target/controlplane/
controlplane:
	@bash tests/controlplane/build.sh >/dev/null

## The real-node tests' kubelet, kube-proxy, controller-manager, scheduler and kubectl (same module and
## folder), and their pause image (tests/realnode/pause-image.sh)
nodes: controlplane
	@bash tests/controlplane/build.sh node >/dev/null
	@bash tests/realnode/pause-image.sh >/dev/null

## Debian packages the harness needs (network namespaces, containerd and CNI for the real nodes, image
## tools); installs them as root, otherwise prints the command to run
deps:
	@bash tests/deps.sh

## istiod (pilot-discovery) and the remote-workload clients from the pinned Istio module, cached under
## target/istio/ (the real-istiod tests use them)
istio:
	@bash tests/istio/build.sh >/dev/null

## helm, pinned, from `go install` (the chart tests use it)
helm:
	@bash tests/controlplane/helm.sh >/dev/null

## The OCI image of both binaries (no Docker engine: umoci + skopeo), under target/image/
image: deps
	@bash tests/image.sh

## Every test: unit tests, harness tests and end-to-end tests against real API servers.
## The end-to-end tests run the hub and agent binaries, so those are built first.
test: deps controlplane nodes helm istio build
	$(CARGO) test --workspace --no-fail-fast

## Benchmarks (release build): prints figures and rewrites docs/benchmarks.md. Not part of `make test`.
bench: controlplane
	$(CARGO) build --release --workspace --bins
	./target/release/tether-bench

lint: deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Supply chain: advisories, licences, sources, duplicate versions (cargo-deny, installed on first use)
deny:
	@bash tests/deny.sh

fmt:
	$(CARGO) fmt --all

## Remove per-run harness folders (control-plane data, logs) left by earlier runs.
clean-harness:
	rm -rf target/harness

## The local demo: central + two remotes on loopback, hub and agents over mTLS, a real istiod reading
## the remotes through the agents (Ctrl-C stops it all). Needs root (istiod's network namespace).
## (The binary is run directly: `cargo run -p` would compile the dependencies with another feature set.)
demo: deps controlplane istio build
	./target/debug/tether-demo
