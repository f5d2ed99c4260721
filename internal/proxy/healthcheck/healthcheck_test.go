package healthcheck

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor is how long a test waits for a transition: generous, since
// probes run every few milliseconds.
const waitFor = 20 * time.Second

type event struct {
	addr    string
	healthy bool
}

// recorder collects OnChange calls.
type recorder struct{ ch chan event }

func newRecorder() *recorder { return &recorder{ch: make(chan event, 100)} }

func (r *recorder) onChange(addr string, healthy bool) { r.ch <- event{addr, healthy} }

// next waits for the next transition and checks it.
func (r *recorder) next(t *testing.T, addr string, healthy bool) {
	t.Helper()
	select {
	case e := <-r.ch:
		if e != (event{addr, healthy}) {
			t.Fatalf("transition %+v, want %+v", e, event{addr, healthy})
		}
	case <-time.After(waitFor):
		t.Fatalf("no transition of %s to healthy=%v within %v", addr, healthy, waitFor)
	}
}

// none checks that no transition is pending.
func (r *recorder) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-r.ch:
		t.Fatalf("unexpected transition %+v", e)
	default:
	}
}

func baseConfig() Config {
	return Config{
		Interval:           5 * time.Millisecond,
		Timeout:            5 * time.Second,
		Jitter:             time.Millisecond,
		HealthyThreshold:   2,
		UnhealthyThreshold: 3,
	}
}

func newChecker(t *testing.T, cfg Config, opts Options) *Checker {
	t.Helper()
	c, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// statusServer answers its current status and counts, per status, the
// answers given since the last reset.
type statusServer struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	counts map[int]int
	paths  map[string]bool
	hosts  map[string]bool
}

func newStatusServer(t *testing.T, status int) *statusServer {
	s := &statusServer{status: status, counts: map[int]int{}, paths: map[string]bool{}, hosts: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		st := s.status
		s.counts[st]++
		s.paths[r.URL.RequestURI()] = true
		s.hosts[r.Host] = true
		s.mu.Unlock()
		w.WriteHeader(st)
	}))
	t.Cleanup(s.Close)
	return s
}

// set changes the status and resets the counts.
func (s *statusServer) set(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
	s.counts = map[int]int{}
}

func (s *statusServer) count(status int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[status]
}

func TestHTTPThresholds(t *testing.T) {
	srv := newStatusServer(t, http.StatusOK)
	addr := srv.Listener.Addr().String()
	var dials atomic.Int64
	dial := func(ctx context.Context, network, a string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, a)
	}
	rec := newRecorder()
	cfg := baseConfig()
	cfg.HTTP = &HTTPCheck{Path: "/healthz?full=1", Host: "web.default.mesh"}
	c := newChecker(t, cfg, Options{Dial: dial, OnChange: rec.onChange})
	c.Update([]string{addr})

	// A new endpoint needs one success.
	rec.next(t, addr, true)
	if !c.Healthy(addr) {
		t.Error("Healthy = false after the healthy transition")
	}

	srv.set(http.StatusServiceUnavailable)
	rec.next(t, addr, false)
	if n := srv.count(http.StatusServiceUnavailable); n < 3 {
		t.Errorf("unhealthy after %d failed probes, want at least the threshold of 3", n)
	}
	if c.Healthy(addr) {
		t.Error("Healthy = true after the unhealthy transition")
	}

	srv.set(http.StatusOK)
	rec.next(t, addr, true)
	if n := srv.count(http.StatusOK); n < 2 {
		t.Errorf("healthy again after %d good probes, want at least the threshold of 2", n)
	}
	rec.none(t)

	srv.mu.Lock()
	defer srv.mu.Unlock()
	if !srv.paths["/healthz?full=1"] || len(srv.paths) != 1 {
		t.Errorf("paths requested = %v, want only /healthz?full=1", srv.paths)
	}
	if !srv.hosts["web.default.mesh"] || len(srv.hosts) != 1 {
		t.Errorf("Host headers = %v, want only web.default.mesh", srv.hosts)
	}
	if dials.Load() == 0 {
		t.Error("the injected dial function was not used")
	}
}

func TestHTTPExpectedStatuses(t *testing.T) {
	srv := newStatusServer(t, http.StatusNotFound)
	addr := srv.Listener.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.UnhealthyThreshold = 1
	cfg.HTTP = &HTTPCheck{Path: "/", ExpectedStatuses: []StatusRange{{404, 405}}}
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})
	c.Update([]string{addr})
	rec.next(t, addr, true)
	// 200 is outside the configured range, 302 outside the default.
	srv.set(http.StatusOK)
	rec.next(t, addr, false)
}

func TestHTTPTimeout(t *testing.T) {
	var hang atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hang.Load() {
			<-r.Context().Done() // until the checker gives up
		}
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.Timeout = 50 * time.Millisecond
	cfg.UnhealthyThreshold = 1
	cfg.HTTP = &HTTPCheck{Path: "/"}
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})
	c.Update([]string{addr})
	rec.next(t, addr, true)
	hang.Store(true)
	rec.next(t, addr, false)
	c.Close() // before srv.Close, which waits for handlers
}

func TestGRPCHealthProtocol(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var checks atomic.Int64
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		checks.Add(1)
		return h(ctx, req)
	}))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("verge.test.Greeter", healthpb.HealthCheckResponse_SERVING)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	defer wg.Wait()
	defer srv.Stop()

	addr := lis.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.GRPC = &GRPCCheck{Service: "verge.test.Greeter"}
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})
	c.Update([]string{addr})
	rec.next(t, addr, true)

	before := checks.Load()
	hs.SetServingStatus("verge.test.Greeter", healthpb.HealthCheckResponse_NOT_SERVING)
	rec.next(t, addr, false)
	if n := checks.Load() - before; n < 3 {
		t.Errorf("unhealthy after %d checks, want at least the threshold of 3", n)
	}
	hs.SetServingStatus("verge.test.Greeter", healthpb.HealthCheckResponse_SERVING)
	rec.next(t, addr, true)
	c.Close()
}

func TestGRPCUnknownServiceIsUnhealthy(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	defer wg.Wait()
	defer srv.Stop()

	addr := lis.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.UnhealthyThreshold = 1
	cfg.GRPC = &GRPCCheck{} // the server as a whole: SERVING by default
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})
	c.Update([]string{addr})
	rec.next(t, addr, true)
	hs.Shutdown() // every service NOT_SERVING
	rec.next(t, addr, false)
	c.Close()
}

// tcpServer accepts on a loopback address; with reply set, it answers
// every line it reads with reply.
type tcpServer struct {
	lis   net.Listener
	reply atomic.Pointer[string]
	wg    sync.WaitGroup
}

func startTCP(t *testing.T, addr string) *tcpServer {
	t.Helper()
	var lis net.Listener
	var err error
	// Reopening a port just closed can fail briefly; bounded retries.
	for range 50 {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{lis: lis}
	s.wg.Go(func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(waitFor))
				if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
					return
				}
				if r := s.reply.Load(); r != nil {
					_, _ = conn.Write([]byte(*r))
				}
			})
		}
	})
	t.Cleanup(s.close)
	return s
}

func (s *tcpServer) close() {
	s.lis.Close()
	s.wg.Wait()
}

func TestTCPConnect(t *testing.T) {
	srv := startTCP(t, "127.0.0.1:0")
	addr := srv.lis.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.TCP = &TCPCheck{}
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})
	c.Update([]string{addr})
	rec.next(t, addr, true)

	srv.close()
	rec.next(t, addr, false)

	startTCP(t, addr)
	rec.next(t, addr, true)
}

func TestTCPSendExpect(t *testing.T) {
	srv := startTCP(t, "127.0.0.1:0")
	pong := "+PONG\r\n"
	srv.reply.Store(&pong)
	addr := srv.lis.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.UnhealthyThreshold = 2
	cfg.TCP = &TCPCheck{Send: []byte("PING\n"), Expect: []byte("PONG")}
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})
	c.Update([]string{addr})
	rec.next(t, addr, true)

	wrong := "-ERR loading\r\n"
	srv.reply.Store(&wrong)
	rec.next(t, addr, false)
	srv.reply.Store(&pong)
	rec.next(t, addr, true)
	c.Close()
}

func TestUpdateStopsAndStarts(t *testing.T) {
	a := newStatusServer(t, http.StatusOK)
	b := newStatusServer(t, http.StatusOK)
	addrA, addrB := a.Listener.Addr().String(), b.Listener.Addr().String()
	rec := newRecorder()
	cfg := baseConfig()
	cfg.HTTP = &HTTPCheck{Path: "/"}
	c := newChecker(t, cfg, Options{OnChange: rec.onChange})

	c.Update([]string{addrA})
	rec.next(t, addrA, true)
	c.Update([]string{addrA}) // no change: no restart, no event
	c.Update([]string{addrB})
	if c.Healthy(addrA) {
		t.Error("removed endpoint still healthy")
	}
	// Update returned: A's goroutine is gone, so A gets no more probes
	// while B becomes healthy and then fails. (Counted from B's first
	// transition: a probe of A cancelled by Update may still reach A's
	// handler just after.)
	rec.next(t, addrB, true)
	probesA := a.count(http.StatusOK)
	b.set(http.StatusInternalServerError)
	rec.next(t, addrB, false)
	if n := a.count(http.StatusOK); n != probesA {
		t.Errorf("removed endpoint probed %d more times", n-probesA)
	}
	rec.none(t)

	c.Close()
	c.Update([]string{addrA}) // after Close: nothing starts
	if c.Healthy(addrA) {
		t.Error("Update after Close started a check")
	}
}

func TestUpdateCancelsProbeInFlight(t *testing.T) {
	started := make(chan struct{}, 1)
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done() // a connect that never completes
		return nil, ctx.Err()
	}
	cfg := baseConfig()
	cfg.Timeout = time.Hour
	cfg.TCP = &TCPCheck{}
	c := newChecker(t, cfg, Options{Dial: dial})
	c.Update([]string{"127.0.0.1:9"})
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("probe did not start")
	}
	done := make(chan struct{})
	go func() {
		c.Update(nil)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("Update did not cancel the probe in flight")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want []string // substrings, one per problem
	}{
		{name: "valid", edit: func(c *Config) { c.HTTP = &HTTPCheck{Path: "/"} }},
		{name: "no kind", edit: func(*Config) {}, want: []string{"exactly one of http, grpc and tcp must be set, have 0"}},
		{name: "two kinds", edit: func(c *Config) { c.TCP = &TCPCheck{}; c.GRPC = &GRPCCheck{} }, want: []string{"have 2"}},
		{name: "everything wrong", edit: func(c *Config) {
			c.Interval, c.Timeout, c.Jitter = 0, -1, -1
			c.HealthyThreshold, c.UnhealthyThreshold = 0, 0
			c.HTTP = &HTTPCheck{Path: "healthz", ExpectedStatuses: []StatusRange{{200, 300}, {400, 400}}}
		}, want: []string{"interval 0s", "timeout -1ns", "jitter -1ns", "healthyThreshold 0", "unhealthyThreshold 0",
			`http.path "healthz"`, "http.expectedStatuses[1] [400, 400)"}},
		{name: "header injection", edit: func(c *Config) { c.HTTP = &HTTPCheck{Path: "/", Host: "a\r\nX: y"} }, want: []string{"line breaks"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			tt.edit(&cfg)
			_, err := New(cfg, Options{})
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded, want errors")
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tt.want) {
				t.Fatalf("errors:\n%v\nwant %d of them", err, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("error %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}
