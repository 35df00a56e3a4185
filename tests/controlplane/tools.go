//go:build tools

// Package controlplane only pins the binaries the harness builds; it has no code of its own.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
