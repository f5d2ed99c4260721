package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"verge.dev/verge/internal/proxy/config"
)

// testService is a small grpc.testing.TestService: echo sizes, return the
// status asked for, and name the server in trailers.
type testService struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (s *testService) UnaryCall(ctx context.Context, in *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-server", s.name))
	if st := in.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testgrpc.SimpleResponse{Hostname: s.name, Payload: &testgrpc.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
}

func (s *testService) StreamingOutputCall(in *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	for _, p := range in.GetResponseParameters() {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

func (s *testService) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	var sum int32
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: sum})
		}
		if err != nil {
			return err
		}
		sum += int32(len(in.GetPayload().GetBody()))
	}
}

func (s *testService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if st := in.GetResponseStatus(); st != nil && st.Code != 0 {
			return status.Error(codes.Code(st.Code), st.Message)
		}
		for _, p := range in.GetResponseParameters() {
			if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
				return err
			}
		}
	}
}

func startGRPCBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, &testService{name: name})
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() { srv.Stop(); wg.Wait() })
	return ln.Addr().String()
}

func grpcClient(t *testing.T, addr string) (testgrpc.TestServiceClient, *grpc.ClientConn) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc), cc
}

func grpcSnapshot(backends ...string) *config.Snapshot {
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "empty", Match: config.RouteMatch{Prefix: "/grpc.testing.TestService/EmptyCall"}, Clusters: toCluster("empty")},
		{Name: "svc", Match: config.RouteMatch{Prefix: "/grpc.testing.TestService/"}, Clusters: toCluster("grpc")},
	}}}}
	return snapshot([]*config.Listener{httpListener1("grpc", "rt")}, []*config.RouteTable{rt},
		mkCluster("grpc", config.UpstreamHTTP2, config.LBLeastRequest, backends...),
		mkCluster("empty", config.UpstreamHTTP2, config.LBRoundRobin))
}

func TestGRPC(t *testing.T) {
	backend := startGRPCBackend(t, "g1")
	tp := startProxy(t, Config{}, grpcSnapshot(backend))
	client, cc := grpcClient(t, tp.addr(t, "grpc"))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	t.Run("unary with trailers", func(t *testing.T) {
		var trailer metadata.MD
		res, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 10}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		got := []any{res.GetHostname(), len(res.GetPayload().GetBody()), trailer.Get("x-server")}
		if diff := cmp.Diff([]any{"g1", 10, []string{"g1"}}, got); diff != "" {
			t.Errorf("unary (-want +got):\n%s", diff)
		}
	})

	t.Run("status codes pass through", func(t *testing.T) {
		tests := []struct {
			name     string
			msg      string
			call     func() error
			wantCode codes.Code
		}{
			{name: "not found from upstream", wantCode: codes.NotFound, msg: "no such thing", call: func() error {
				_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing"}})
				return err
			}},
			{name: "no route is unimplemented", wantCode: codes.Unimplemented, msg: "no route", call: func() error {
				// No route matches grpc.testing.UnimplementedService.
				_, err := testgrpc.NewUnimplementedServiceClient(cc).UnimplementedCall(ctx, &testgrpc.Empty{})
				return err
			}},
			{name: "no endpoint is unavailable", wantCode: codes.Unavailable, msg: "no healthy upstream", call: func() error {
				_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
				return err
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				st := status.Convert(tt.call())
				if diff := cmp.Diff([]any{tt.wantCode, tt.msg}, []any{st.Code(), st.Message()}); diff != "" {
					t.Errorf("status (-want +got):\n%s", diff)
				}
			})
		}
	})

	t.Run("large message", func(t *testing.T) {
		res, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 3 << 20, Payload: &testgrpc.Payload{Body: make([]byte, 3<<20)}})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(res.GetPayload().GetBody()); got != 3<<20 {
			t.Errorf("payload %d bytes, want %d", got, 3<<20)
		}
	})

	t.Run("server streaming", func(t *testing.T) {
		stream, err := client.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}, {Size: 2}, {Size: 3}}})
		if err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, len(m.GetPayload().GetBody()))
		}
		if diff := cmp.Diff([]int{1, 2, 3}, sizes); diff != "" {
			t.Errorf("sizes (-want +got):\n%s", diff)
		}
	})

	t.Run("client streaming", func(t *testing.T) {
		stream, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{10, 20, 30} {
			if err := stream.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, n)}}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if got := res.GetAggregatedPayloadSize(); got != 60 {
			t.Errorf("aggregated size %d, want 60", got)
		}
	})

	t.Run("bidi streaming", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Ping-pong proves both directions are open at once: each answer
		// arrives before the client half-closes.
		for i := range 20 {
			if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: int32(i + 1)}}}); err != nil {
				t.Fatal(err)
			}
			m, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got := len(m.GetPayload().GetBody()); got != i+1 {
				t.Errorf("message %d: %d bytes, want %d", i, got, i+1)
			}
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "stop"}}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "stop" {
			t.Errorf("stream ended with %v, want FailedPrecondition stop", err)
		}
	})
}

func TestGRPCHotUpdateDuringStream(t *testing.T) {
	b1 := startGRPCBackend(t, "g1")
	b2 := startGRPCBackend(t, "g2")
	tp := startProxy(t, Config{}, grpcSnapshot(b1))
	client, _ := grpcClient(t, tp.addr(t, "grpc"))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(i int) {
		t.Helper()
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: int32(i)}}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if len(m.GetPayload().GetBody()) != i {
			t.Fatalf("recv %d: %d bytes", i, len(m.GetPayload().GetBody()))
		}
	}
	exchange(1)
	// Move the cluster to the other backend, then remove the first from it
	// entirely: the open stream keeps its upstream connection.
	for i, eps := range [][]string{{b1, b2}, {b2}, {b2}} {
		tp.Update(grpcSnapshot(eps...))
		exchange(i + 2)
		res, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatalf("unary after update %d: %v", i, err)
		}
		if i > 0 && res.GetHostname() != "g2" {
			t.Errorf("unary after update %d went to %s, want g2", i, res.GetHostname())
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("stream end: %v, want EOF", err)
	}
}
