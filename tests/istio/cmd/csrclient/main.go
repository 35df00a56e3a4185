// csrclient is a remote workload asking istiod's CA for its certificate: it finds istiod through its
// own cluster's istiod Service (the EndpointSlices Tether wrote), dials it over TLS and sends a CSR
// for spiffe://<trust domain>/ns/<namespace>/sa/<service account> with its ServiceAccount token.
// Prints one line of JSON: {"address", "uris": [...], "issuer", "chain"}.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"net/url"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"tether.test/istio/workload"
)

type result struct {
	Address string   `json:"address"`
	URIs    []string `json:"uris"`
	Issuer  string   `json:"issuer"`
	Chain   int      `json:"chain"`
}

func main() {
	var f workload.Flags
	f.Register()
	trustDomain := flag.String("trust-domain", "cluster.local", "the mesh trust domain")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, addr, err := ask(ctx, &f, *trustDomain)
	workload.Print(r, addr, err)
}

func ask(ctx context.Context, f *workload.Flags, trustDomain string) (*result, string, error) {
	conn, ctx, addr, err := f.Istiod(ctx)
	if err != nil {
		return nil, addr, err
	}
	defer conn.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, addr, err
	}
	id, err := url.Parse(fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, f.Namespace, f.ServiceAccount))
	if err != nil {
		return nil, addr, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{"tether-test"}},
		URIs:    []*url.URL{id},
	}, key)
	if err != nil {
		return nil, addr, err
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	meta, err := structpb.NewStruct(map[string]any{"ClusterID": f.ClusterID})
	if err != nil {
		return nil, addr, err
	}
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx,
		&pb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: 3600, Metadata: meta})
	if err != nil {
		return nil, addr, err
	}
	block, _ := pem.Decode([]byte(resp.CertChain[0]))
	if block == nil {
		return nil, addr, fmt.Errorf("the CA answered no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, addr, err
	}
	out := &result{Address: addr, Issuer: leaf.Issuer.String(), Chain: len(resp.CertChain), URIs: []string{}}
	for _, u := range leaf.URIs {
		out.URIs = append(out.URIs, u.String())
	}
	return out, addr, nil
}
