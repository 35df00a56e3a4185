//go:build tools

// Package controlplane only pins the binaries the harness builds; it has no code of its own.
// kube-apiserver and etcd run in every test binary; the node binaries (kubelet, kube-proxy,
// kube-controller-manager, kube-scheduler) and kubectl run in the real-node tests (`build.sh node`).
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
