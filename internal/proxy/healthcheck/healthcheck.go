// Package healthcheck owns the proxy's active health checking of upstream
// endpoints, after Envoy's HealthCheck: an HTTP GET, a gRPC health-protocol
// Check (grpc.health.v1) or a TCP connect (optionally sending bytes and
// expecting others) every interval, with healthy and unhealthy thresholds
// deciding when an endpoint changes state.
//
// It does not decide what an unhealthy endpoint means for load balancing,
// nor where endpoints or settings come from: the proxy creates one Checker
// per cluster, feeds it the cluster's endpoint addresses with Update, and
// applies the transitions it reports. Passive outlier detection lives in
// package resilience.
//
// Usage, for one cluster:
//
//	c, err := healthcheck.New(healthcheck.Config{
//		Interval: 5 * time.Second, Timeout: time.Second, Jitter: time.Second,
//		HealthyThreshold: 2, UnhealthyThreshold: 3,
//		HTTP: &healthcheck.HTTPCheck{Path: "/healthz"},
//	}, healthcheck.Options{
//		Dial:     mtlsDial, // nil dials plain TCP
//		OnChange: func(addr string, healthy bool) { /* mark the endpoint */ },
//		Logger:   logger,
//	})
//	c.Update([]string{"10.0.0.1:8080", "10.0.0.2:8080"}) // on every EDS change
//	defer c.Close()
//
// Each endpoint gets one goroutine that probes, sleeps Interval plus a
// random share of Jitter, and repeats; the goroutines of a cluster's
// endpoints therefore drift apart instead of probing in lockstep.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is one cluster's health check. Exactly one of HTTP, GRPC and TCP
// is set.
type Config struct {
	// Interval is the time between the end of one probe and the start of
	// the next, > 0.
	Interval time.Duration
	// Timeout bounds one probe (connecting included), > 0.
	Timeout time.Duration
	// Jitter, >= 0, adds a random [0, Jitter) to every wait, the first
	// included (Envoy's interval_jitter).
	Jitter time.Duration
	// HealthyThreshold is the number of consecutive successes that make
	// an unhealthy endpoint healthy, >= 1. A new endpoint needs only one
	// (Envoy: "during startup, only a single successful health check is
	// required to mark a host healthy").
	HealthyThreshold uint32
	// UnhealthyThreshold is the number of consecutive failures that make
	// a healthy endpoint unhealthy, >= 1.
	UnhealthyThreshold uint32

	HTTP *HTTPCheck
	GRPC *GRPCCheck
	TCP  *TCPCheck
}

// HTTPCheck probes with an HTTP/1.1 GET, reusing its connection between
// probes.
type HTTPCheck struct {
	// Path, with an optional query, starts with "/".
	Path string
	// Host is the Host header; empty means the endpoint's address.
	Host string
	// ExpectedStatuses are the healthy statuses, each range half-open
	// [Start, End) as Envoy's expected_statuses; empty means 200-399.
	ExpectedStatuses []StatusRange
}

// StatusRange is the HTTP statuses from Start up to, not including, End.
type StatusRange struct{ Start, End int }

// GRPCCheck calls grpc.health.v1.Health/Check over HTTP/2; the endpoint is
// healthy when it answers SERVING.
type GRPCCheck struct {
	// Service is the service name asked about; empty asks about the
	// server as a whole.
	Service string
	// Authority is the :authority of the call; empty means the address.
	Authority string
}

// TCPCheck connects; with Send it writes those bytes, and with Expect it
// reads until those bytes have been received (anywhere in the first 64 KiB
// read).
type TCPCheck struct {
	Send   []byte
	Expect []byte
}

// Validate reports every problem in c, each naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("health check: "+format, args...)) }
	if c.Interval <= 0 {
		bad("interval %v: must be positive", c.Interval)
	}
	if c.Timeout <= 0 {
		bad("timeout %v: must be positive", c.Timeout)
	}
	if c.Jitter < 0 {
		bad("jitter %v: must not be negative", c.Jitter)
	}
	if c.HealthyThreshold == 0 {
		bad("healthyThreshold 0: must be at least 1")
	}
	if c.UnhealthyThreshold == 0 {
		bad("unhealthyThreshold 0: must be at least 1")
	}
	kinds := 0
	if c.HTTP != nil {
		kinds++
		if !strings.HasPrefix(c.HTTP.Path, "/") {
			bad("http.path %q: must start with /", c.HTTP.Path)
		}
		if strings.ContainsAny(c.HTTP.Path+c.HTTP.Host, " \r\n") {
			bad("http: path and host must not contain spaces or line breaks")
		}
		for i, r := range c.HTTP.ExpectedStatuses {
			if r.Start < 100 || r.End > 600 || r.Start >= r.End {
				bad("http.expectedStatuses[%d] [%d, %d): must be a non-empty range within [100, 600)", i, r.Start, r.End)
			}
		}
	}
	if c.GRPC != nil {
		kinds++
	}
	if c.TCP != nil {
		kinds++
	}
	if kinds != 1 {
		bad("exactly one of http, grpc and tcp must be set, have %d", kinds)
	}
	return errors.Join(errs...)
}

// DialFunc opens a connection to an endpoint; net.Dialer.DialContext has
// this shape. It must honour ctx's deadline and cancellation.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Options are a Checker's collaborators.
type Options struct {
	// Dial connects to endpoints; nil dials plain TCP. The proxy passes
	// its mutual-TLS dialer for endpoints behind a peer proxy (its ALPN
	// must match the check: http/1.1 for HTTP, h2 for gRPC).
	Dial DialFunc
	// OnChange receives every transition. For one address calls are
	// sequential and in order; calls for different addresses may run
	// concurrently. It must not block for long nor call Update or Close.
	OnChange func(addr string, healthy bool)
	// Logger gets transitions at Info; nil discards them.
	Logger *slog.Logger
}

// prober runs one kind of probe against one endpoint. It is used by its
// endpoint's goroutine only.
type prober interface {
	probe(ctx context.Context) error
	close()
}

// target is one checked endpoint.
type target struct {
	cancel  context.CancelFunc
	done    chan struct{} // closed when its goroutine has returned
	healthy atomic.Bool
}

// Checker health-checks a cluster's endpoints. Its methods are safe for
// concurrent use.
type Checker struct {
	cfg  Config
	opts Options

	mu      sync.Mutex
	closed  bool
	targets map[string]*target
	wg      sync.WaitGroup // the targets' goroutines
}

// New returns a Checker with no endpoints, or cfg's validation error.
func New(cfg Config, opts Options) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	if opts.OnChange == nil {
		opts.OnChange = func(string, bool) {}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTP != nil && len(cfg.HTTP.ExpectedStatuses) == 0 {
		cfg.HTTP = &HTTPCheck{Path: cfg.HTTP.Path, Host: cfg.HTTP.Host, ExpectedStatuses: []StatusRange{{200, 400}}}
	}
	return &Checker{cfg: cfg, opts: opts, targets: map[string]*target{}}, nil
}

// Update sets the endpoints to check. New addresses start unhealthy, as in
// Envoy, without a callback: their first successful probe reports them
// healthy. Checks of removed addresses stop, and have stopped when Update
// returns (a probe in flight is cancelled), so no callback for them comes
// after. Addresses that stay keep their state. After Close, Update does
// nothing.
func (c *Checker) Update(addrs []string) {
	var stopped []*target
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	keep := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		keep[a] = true
		if c.targets[a] == nil {
			c.targets[a] = c.startLocked(a)
		}
	}
	for a, t := range c.targets {
		if !keep[a] {
			t.cancel()
			stopped = append(stopped, t)
			delete(c.targets, a)
		}
	}
	c.mu.Unlock()
	for _, t := range stopped {
		<-t.done
	}
}

// Healthy reports whether addr is checked and healthy now.
func (c *Checker) Healthy(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.targets[addr]
	return t != nil && t.healthy.Load()
}

// Close stops every check and returns when all have stopped.
func (c *Checker) Close() {
	c.mu.Lock()
	c.closed = true
	for a, t := range c.targets {
		t.cancel()
		delete(c.targets, a)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *Checker) startLocked(addr string) *target {
	// The goroutine's context is its own, not a caller's: a target lives
	// from the Update that adds it to the Update or Close that removes it.
	ctx, cancel := context.WithCancel(context.Background())
	t := &target{cancel: cancel, done: make(chan struct{})}
	c.wg.Go(func() {
		defer close(t.done)
		c.run(ctx, addr, t)
	})
	return t
}

func (c *Checker) newProber(addr string) (prober, error) {
	switch {
	case c.cfg.HTTP != nil:
		return newHTTPProber(c.cfg.HTTP, addr, c.opts.Dial), nil
	case c.cfg.GRPC != nil:
		return newGRPCProber(c.cfg.GRPC, addr, c.opts.Dial, c.cfg.Interval)
	default:
		return &tcpProber{check: c.cfg.TCP, addr: addr, dial: c.opts.Dial}, nil
	}
}

func (c *Checker) wait() time.Duration {
	if c.cfg.Jitter <= 0 {
		return 0
	}
	return rand.N(c.cfg.Jitter)
}

// run probes addr until ctx ends, applying the thresholds.
func (c *Checker) run(ctx context.Context, addr string, t *target) {
	log := c.opts.Logger.With("endpoint", addr)
	p, err := c.newProber(addr)
	if err != nil {
		// Only a malformed address gets here; it stays unhealthy.
		log.Warn("health check not started", "error", err)
		return
	}
	defer p.close()
	var successes, failures uint32
	healthy, first := false, true
	timer := time.NewTimer(c.wait())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		err := p.probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return // removed mid-probe: its result is nobody's business
		}
		if err == nil {
			failures = 0
			successes++
			if !healthy && (first || successes >= c.cfg.HealthyThreshold) {
				healthy = true
				t.healthy.Store(true)
				log.Info("endpoint healthy")
				c.opts.OnChange(addr, true)
			}
		} else {
			successes = 0
			failures++
			if healthy && failures >= c.cfg.UnhealthyThreshold {
				healthy = false
				t.healthy.Store(false)
				log.Info("endpoint unhealthy", "error", err)
				c.opts.OnChange(addr, false)
			}
		}
		first = false
		timer.Reset(c.cfg.Interval + c.wait())
	}
}
