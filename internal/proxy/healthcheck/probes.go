package healthcheck

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// httpProber keeps one HTTP/1.1 connection to its endpoint across probes,
// as Envoy's HTTP health checker does (reuse_connection), so a check costs
// a request, not a handshake.
type httpProber struct {
	check *HTTPCheck
	url   string
	tr    *http.Transport
	cl    *http.Client
}

func newHTTPProber(check *HTTPCheck, addr string, dial DialFunc) *httpProber {
	tr := &http.Transport{
		DialContext:         dial,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     0,
	}
	return &httpProber{
		check: check,
		url:   "http://" + addr + check.Path,
		tr:    tr,
		cl: &http.Client{
			Transport: tr,
			// A redirect's status is the answer; following it would
			// check some other server.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

func (p *httpProber) probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return fmt.Errorf("http check %s: %w", p.url, err)
	}
	if p.check.Host != "" {
		req.Host = p.check.Host
	}
	req.Header.Set("User-Agent", "verge-healthcheck")
	resp, err := p.cl.Do(req)
	if err != nil {
		return fmt.Errorf("http check: %w", err)
	}
	// Drain a little so the connection can be reused; a larger body
	// costs a new connection next time, which is fine.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	for _, r := range p.check.ExpectedStatuses {
		if resp.StatusCode >= r.Start && resp.StatusCode < r.End {
			return nil
		}
	}
	return fmt.Errorf("http check %s: status %d not expected", p.url, resp.StatusCode)
}

func (p *httpProber) close() { p.tr.CloseIdleConnections() }

// grpcProber keeps one gRPC client connection to its endpoint.
type grpcProber struct {
	check  *GRPCCheck
	conn   *grpc.ClientConn
	health healthpb.HealthClient
}

func newGRPCProber(check *GRPCCheck, addr string, dial DialFunc, interval time.Duration) (*grpcProber, error) {
	opts := []grpc.DialOption{
		// The dialer brings any TLS; gRPC sees a ready connection.
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return dial(ctx, "tcp", a)
		}),
		// gRPC's reconnect backoff grows to 120 s by default; an
		// endpoint back from a restart would stay unhealthy that long.
		// Reconnecting at most one interval apart matches the checks.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: min(interval, time.Second), Multiplier: 1.6, Jitter: 0.2, MaxDelay: interval},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if check.Authority != "" {
		opts = append(opts, grpc.WithAuthority(check.Authority))
	}
	// passthrough: the address is already resolved; no DNS lookup.
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("grpc check %s: %w", addr, err)
	}
	return &grpcProber{check: check, conn: conn, health: healthpb.NewHealthClient(conn)}, nil
}

func (p *grpcProber) probe(ctx context.Context) error {
	resp, err := p.health.Check(ctx, &healthpb.HealthCheckRequest{Service: p.check.Service})
	if err != nil {
		return fmt.Errorf("grpc check service %q: %w", p.check.Service, err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc check service %q: status %v", p.check.Service, s)
	}
	return nil
}

func (p *grpcProber) close() { _ = p.conn.Close() }

// maxExpectRead bounds what a TCP check reads while looking for Expect.
const maxExpectRead = 64 << 10

// tcpProber opens a new connection per probe: a TCP check is about
// accepting connections.
type tcpProber struct {
	check *TCPCheck
	addr  string
	dial  DialFunc
}

func (p *tcpProber) probe(ctx context.Context) error {
	conn, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return fmt.Errorf("tcp check: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// Cancellation (the endpoint removed) interrupts reads and writes.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if len(p.check.Send) > 0 {
		if _, err := conn.Write(p.check.Send); err != nil {
			return fmt.Errorf("tcp check %s: send: %w", p.addr, err)
		}
	}
	if len(p.check.Expect) == 0 {
		return nil
	}
	buf := make([]byte, 0, 512)
	for len(buf) < maxExpectRead {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if bytes.Contains(buf, p.check.Expect) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tcp check %s: expected bytes not received: %w", p.addr, err)
		}
	}
	return fmt.Errorf("tcp check %s: expected bytes not in the first %d bytes", p.addr, maxExpectRead)
}

func (p *tcpProber) close() {}
