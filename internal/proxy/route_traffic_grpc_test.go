package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"verge.dev/verge/internal/proxy/config"
)

// flakyService fails every other UnaryCall with UNAVAILABLE.
type flakyService struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64
}

func (s *flakyService) UnaryCall(ctx context.Context, in *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if s.calls.Add(1)%2 == 1 {
		return nil, status.Error(codes.Unavailable, "try again")
	}
	return &testgrpc.SimpleResponse{Hostname: "flaky"}, nil
}

func startFlakyGRPC(t *testing.T) (string, *flakyService) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &flakyService{}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, svc)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() { srv.Stop(); wg.Wait() })
	return ln.Addr().String(), svc
}

func TestGRPCTraffic(t *testing.T) {
	addr, svc := startFlakyGRPC(t)
	retry := &config.RetryPolicy{Attempts: 2, On: []string{"unavailable"}, BaseInterval: time.Millisecond}
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "limited", Match: config.RouteMatch{Prefix: "/grpc.testing.TestService/UnaryCall", Headers: []config.HeaderMatch{{Name: "x-limit", Present: true}}},
			Clusters: toCluster("grpc"), Traffic: &config.RouteTraffic{RateLimit: &config.RateLimit{MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Hour}}},
		{Name: "abort", Match: config.RouteMatch{Prefix: "/grpc.testing.TestService/UnaryCall", Headers: []config.HeaderMatch{{Name: "x-abort", Present: true}}},
			Clusters: toCluster("grpc"), Traffic: &config.RouteTraffic{Faults: []*config.Fault{{AbortHTTPStatus: 503, AbortGRPCStatus: int(codes.PermissionDenied), AbortPercent: 100}}}},
		{Name: "svc", Match: config.RouteMatch{Prefix: "/grpc.testing.TestService/"}, Clusters: toCluster("grpc"), Traffic: &config.RouteTraffic{Retry: retry}},
	}}}}
	s := snapshot([]*config.Listener{httpListener1("grpc", "rt")}, []*config.RouteTable{rt},
		mkCluster("grpc", config.UpstreamHTTP2, config.LBRoundRobin, addr))
	tp := startProxy(t, Config{}, s)
	client, _ := grpcClient(t, tp.addr(t, "grpc"))

	t.Run("unavailable retried", func(t *testing.T) {
		before := svc.calls.Load()
		for i := range 4 {
			if _, err := client.UnaryCall(t.Context(), &testgrpc.SimpleRequest{}); err != nil {
				t.Fatalf("call %d: %v, want success after a retry", i, err)
			}
		}
		if got := svc.calls.Load() - before; got != 8 {
			t.Errorf("server calls = %d, want 8", got)
		}
	})
	t.Run("rate limit", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "x-limit", "1")
		var last error
		// A trailers-only response: gRPC hands its fields as trailers.
		var hdr metadata.MD
		for range 2 {
			_, last = client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Trailer(&hdr))
		}
		if status.Code(last) != codes.ResourceExhausted || len(hdr.Get("retry-after")) == 0 {
			t.Errorf("second call: %v retry-after %v, want RESOURCE_EXHAUSTED with retry-after", last, hdr.Get("retry-after"))
		}
	})
	t.Run("fault abort", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "x-abort", "1")
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("got %v, want PERMISSION_DENIED from the fault", err)
		}
	})
}
