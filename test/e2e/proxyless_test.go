package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// whoDesc is a one-method gRPC service declared by hand (no generated code):
// /e2e.Who/Name answers with the server's name.
func whoDesc(name string) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "e2e.Who",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Name",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				return wrapperspb.String(name), nil
			},
		}},
	}
}

func whoServer(t *testing.T, addr, name string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	s.RegisterService(whoDesc(name), nil)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
}

// TestProxylessGRPCClient runs grpc-go's own xDS client (xds:/// target)
// against the control plane: it resolves the service, balances across two
// real gRPC servers, and follows a GRPCRoute's header match and weighted split.
func TestProxylessGRPCClient(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	h1, h2 := newHost(), newHost()
	whoServer(t, h1.addr(9000), "v1")
	whoServer(t, h2.addr(9000), "v2")
	c.apply(t, fmt.Sprintf(`apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: who}
spec:
  ports: [{port: 9000, protocol: GRPC}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: who-v1}
spec:
  selector: {app: who, version: v1}
  ports: [{port: 9000, protocol: GRPC}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: who-v2}
spec:
  selector: {app: who, version: v2}
  ports: [{port: 9000, protocol: GRPC}]
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: who-1, labels: {app: who, version: v1}}
spec:
  address: %s
  ports: [{port: 9000}]
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: who-2, labels: {app: who, version: v2}}
spec:
  address: %s
  ports: [{port: 9000}]
`, h1, h2))

	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "proxyless-e2e", "cluster": "e2e"}
}`, c.xds)
	builder, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///who.default.mesh:9000", grpc.WithResolvers(builder),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := func(hdr ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if len(hdr) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, hdr...)
		}
		out := new(wrapperspb.StringValue)
		err := conn.Invoke(ctx, "/e2e.Who/Name", wrapperspb.String("x"), out)
		return out.GetValue(), err
	}
	count := func(n int, hdr ...string) (map[string]int, error) {
		m := map[string]int{}
		for range n {
			v, err := call(hdr...)
			if err != nil {
				return m, err
			}
			m[v]++
		}
		return m, nil
	}

	// No route: round robin over both servers.
	eventually(t, 30*time.Second, func() error {
		m, err := count(20)
		if err != nil {
			return err
		}
		if m["v1"] == 0 || m["v2"] == 0 {
			return fmt.Errorf("not balanced over both: %v", m)
		}
		return nil
	})

	c.apply(t, `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: who}
spec:
  parentRefs: [{group: "", kind: Service, name: who, port: 9000}]
  rules:
  - matches: [{method: {service: e2e.Who}, headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: who-v2, port: 9000}]
  - matches: [{method: {service: e2e.Who}}]
    backendRefs:
    - {name: who-v1, port: 9000, weight: 80}
    - {name: who-v2, port: 9000, weight: 20}
`)
	eventually(t, 30*time.Second, func() error {
		m, err := count(20, "x-canary", "true")
		if err != nil {
			return err
		}
		if m["v2"] != 20 {
			return fmt.Errorf("header match not in effect yet: %v", m)
		}
		return nil
	})
	const n = 1000
	m, err := count(n)
	if err != nil {
		t.Fatal(err)
	}
	// Binomial(1000, 0.2): mean 200, sd 12.6; accept ±5 sd.
	if m["v2"] < 137 || m["v2"] > 263 {
		t.Errorf("80/20 split over %d calls = %v", n, m)
	}
}
