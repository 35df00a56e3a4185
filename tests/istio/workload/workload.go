// Package workload is what a remote workload's sidecar needs before it can talk to istiod: the
// address of istiod as its own cluster publishes it (the Service's EndpointSlices, which Tether's
// agent wrote), the mesh's root certificate (the istio-ca-root-cert ConfigMap istiod writes into the
// workload's namespace) and its ServiceAccount token. There is no DNS or kube-proxy on the test
// harness, so the address comes from the EndpointSlices directly, as kube-proxy would pick it.
package workload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Flags every client takes.
type Flags struct {
	Kubeconfig     string
	ClusterID      string
	IstiodNS       string
	IstiodService  string
	PortName       string
	Namespace      string
	ServiceAccount string
	TokenFile      string
}

// Register adds the common flags.
func (f *Flags) Register() {
	flag.StringVar(&f.Kubeconfig, "kubeconfig", "", "the workload's own cluster")
	flag.StringVar(&f.ClusterID, "cluster", "", "the workload's cluster name (ClusterID)")
	flag.StringVar(&f.IstiodNS, "istiod-namespace", "istio-system", "namespace of the istiod Service in the workload's cluster")
	flag.StringVar(&f.IstiodService, "istiod-service", "istiod", "the istiod Service in the workload's cluster")
	flag.StringVar(&f.PortName, "port-name", "tcp-istiod", "the EndpointSlice port to dial")
	flag.StringVar(&f.Namespace, "namespace", "default", "the workload's namespace")
	flag.StringVar(&f.ServiceAccount, "service-account", "default", "the workload's ServiceAccount")
	flag.StringVar(&f.TokenFile, "token", "", "file with the ServiceAccount token (audience istio-ca)")
}

// Istiod resolves istiod's address and dials it as a sidecar would: TLS verified against the mesh
// root (server name <service>.<namespace>.svc), the token and the ClusterID on every call.
func (f *Flags) Istiod(ctx context.Context) (*grpc.ClientConn, context.Context, string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", f.Kubeconfig)
	if err != nil {
		return nil, nil, "", err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, "", err
	}
	addr, err := resolve(ctx, kube, f.IstiodNS, f.IstiodService, f.PortName)
	if err != nil {
		return nil, nil, "", err
	}
	root, err := kube.CoreV1().ConfigMaps(f.Namespace).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		return nil, nil, addr, fmt.Errorf("the mesh root certificate in namespace %s: %w", f.Namespace, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(root.Data["root-cert.pem"])) {
		return nil, nil, addr, fmt.Errorf("istio-ca-root-cert holds no certificate")
	}
	token, err := os.ReadFile(f.TokenFile)
	if err != nil {
		return nil, nil, addr, err
	}
	name := fmt.Sprintf("%s.%s.svc", f.IstiodService, f.IstiodNS)
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: name})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, addr, err
	}
	md := metadata.Pairs("authorization", "Bearer "+strings.TrimSpace(string(token)), "ClusterID", f.ClusterID)
	return conn, metadata.NewOutgoingContext(ctx, md), addr, nil
}

// resolve picks a ready endpoint of the Service from its EndpointSlices and the port named
// portName there (the lowest address, so repeated calls agree).
func resolve(ctx context.Context, kube *kubernetes.Clientset, ns, service, portName string) (string, error) {
	slices, err := kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: "kubernetes.io/service-name=" + service,
	})
	if err != nil {
		return "", err
	}
	var candidates []string
	for _, s := range slices.Items {
		port := int32(0)
		for _, p := range s.Ports {
			if p.Name != nil && *p.Name == portName && p.Port != nil {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				candidates = append(candidates, net.JoinHostPort(a, strconv.Itoa(int(port))))
			}
		}
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("no ready endpoint with port %q in the EndpointSlices of %s/%s", portName, ns, service)
	}
	sort.Strings(candidates)
	return candidates[0], nil
}

// Print writes v as one line of JSON on stdout, or the error (with the address tried) and exits 1.
func Print(v any, addr string, err error) {
	if err != nil {
		out, _ := json.Marshal(map[string]string{"error": err.Error(), "address": addr})
		fmt.Println(string(out))
		os.Exit(1)
	}
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}
