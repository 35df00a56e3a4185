// xdsclient is a remote workload's sidecar asking istiod for its configuration: it finds istiod
// through its own cluster's istiod Service (the EndpointSlices Tether wrote), dials it over TLS with
// its ServiceAccount token, and asks for clusters (CDS) and, with -eds, one cluster's endpoints.
// Prints one line of JSON: {"address", "clusters": [...], "endpoints": [...]}.
package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"tether.test/istio/workload"
)

const (
	cdsType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	edsType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

type result struct {
	Address   string   `json:"address"`
	Clusters  []string `json:"clusters"`
	Endpoints []string `json:"endpoints"`
}

func main() {
	var f workload.Flags
	f.Register()
	eds := flag.String("eds", "", "also ask for the endpoints of this cluster (e.g. outbound|80||hello.demo.svc.cluster.local)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, addr, err := ask(ctx, &f, *eds)
	workload.Print(r, addr, err)
}

func ask(ctx context.Context, f *workload.Flags, eds string) (*result, string, error) {
	conn, ctx, addr, err := f.Istiod(ctx)
	if err != nil {
		return nil, addr, err
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, addr, err
	}
	meta, err := structpb.NewStruct(map[string]any{
		"CLUSTER_ID": f.ClusterID, "NAMESPACE": f.Namespace, "SERVICE_ACCOUNT": f.ServiceAccount,
		"ISTIO_VERSION": "1.31.0", "LABELS": map[string]any{"app": "workload"},
	})
	if err != nil {
		return nil, addr, err
	}
	node := &core.Node{
		Id:       fmt.Sprintf("sidecar~10.1.0.9~workload.%s~%s.svc.cluster.local", f.Namespace, f.Namespace),
		Metadata: meta,
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: cdsType}); err != nil {
		return nil, addr, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, addr, err
	}
	out := &result{Address: addr, Clusters: []string{}, Endpoints: []string{}}
	for _, any := range resp.Resources {
		c := &cluster.Cluster{}
		if err := any.UnmarshalTo(c); err != nil {
			return nil, addr, err
		}
		if strings.HasPrefix(c.Name, "outbound|") {
			out.Clusters = append(out.Clusters, c.Name)
		}
	}
	sort.Strings(out.Clusters)
	if eds == "" {
		return out, addr, nil
	}
	ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: cdsType, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
	if err := stream.Send(ack); err != nil {
		return nil, addr, err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: edsType, ResourceNames: []string{eds}}); err != nil {
		return nil, addr, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, addr, err
		}
		if resp.TypeUrl != edsType {
			continue
		}
		for _, any := range resp.Resources {
			cla := &endpoint.ClusterLoadAssignment{}
			if err := any.UnmarshalTo(cla); err != nil {
				return nil, addr, err
			}
			for _, l := range cla.Endpoints {
				for _, e := range l.LbEndpoints {
					sa := e.GetEndpoint().GetAddress().GetSocketAddress()
					out.Endpoints = append(out.Endpoints, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
				}
			}
		}
		sort.Strings(out.Endpoints)
		return out, addr, nil
	}
}
