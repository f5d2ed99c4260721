package load

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// EchoMethod is the full method name of the benchmark's unary echo call.
const EchoMethod = "/verge.bench.Echo/Echo"

// echoServer is the handler type of EchoServiceDesc; the service has no
// state, so any value implements it.
type echoServer interface{}

// EchoServiceDesc declares verge.bench.Echo by hand: one unary method Echo
// taking and returning google.protobuf.BytesValue. Generated code would need
// a .proto and protoc in the build for one method.
var EchoServiceDesc = grpc.ServiceDesc{
	ServiceName: "verge.bench.Echo",
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return in, nil
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: EchoMethod}
			return interceptor(ctx, in, info, func(_ context.Context, req any) (any, error) { return req, nil })
		},
	}},
	Metadata: "verge/bench/echo.proto",
}

// RegisterEcho registers the echo service on s.
func RegisterEcho(s *grpc.Server) { s.RegisterService(&EchoServiceDesc, struct{}{}) }

type grpcCaller struct {
	cc      *grpc.ClientConn
	timeout time.Duration
	size    int
	req     *wrapperspb.BytesValue
	resp    wrapperspb.BytesValue
}

func newGRPCCaller(ctx context.Context, cfg Config) (*grpcCaller, error) {
	// passthrough: the address is dialled as given, no DNS resolver.
	cc, err := grpc.NewClient("passthrough:///"+cfg.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("grpc client %s: %w", cfg.Addr, err)
	}
	c := &grpcCaller{
		cc:      cc,
		timeout: cfg.Timeout,
		size:    cfg.Size,
		req:     wrapperspb.Bytes(bytes.Repeat([]byte{'x'}, cfg.Size)),
	}
	// One call connects the ClientConn, so measurement starts on a live
	// connection and a dead address fails here.
	if err := c.call(ctx); err != nil {
		_ = cc.Close()
		return nil, err
	}
	return c, nil
}

func (c *grpcCaller) call(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	c.resp.Value = c.resp.Value[:0]
	if err := c.cc.Invoke(ctx, EchoMethod, c.req, &c.resp); err != nil {
		return fmt.Errorf("call %s: %w", EchoMethod, err)
	}
	if len(c.resp.Value) != c.size {
		return fmt.Errorf("call %s: got %d bytes, want %d", EchoMethod, len(c.resp.Value), c.size)
	}
	return nil
}

func (c *grpcCaller) close() error { return c.cc.Close() }
