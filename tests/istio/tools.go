//go:build tools

// Pins the real control plane the end-to-end tests run: istiod (pilot-discovery) from the
// istio.io/istio module at the version in go.mod.
package tools

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
