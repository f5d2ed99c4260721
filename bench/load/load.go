// Package load is the load generator of Verge's benchmark harness: it owns
// the client side of a measurement (connections, request pacing, latency
// recording) and the echo service both sides agree on. It does not start
// servers or proxies; bench/cmd/meshbench does.
//
// Two pacing modes over exactly Connections connections:
//   - closed loop (Rate 0): each connection is a goroutine sending request
//     after request, so throughput is what the path can carry;
//   - open loop (Rate > 0): requests are scheduled at a fixed rate spread over
//     the connections and each latency is measured from its scheduled send
//     time, so a stall delays every request queued behind it and is counted
//     (no coordinated omission).
//
// Both are bounded by Warmup+Duration and by MaxRequests.
package load

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol is what a load connection speaks.
type Protocol int

const (
	// HTTP1 is HTTP/1.1 keep-alive: POST /echo with a Size-byte body,
	// expecting 200 and a Size-byte body back.
	HTTP1 Protocol = iota + 1
	// GRPC is unary /verge.bench.Echo/Echo calls with a Size-byte
	// google.protobuf.BytesValue, one grpc.ClientConn per connection.
	GRPC
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "HTTP/1.1"
	case GRPC:
		return "gRPC"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Config describes one measurement. The caller must not change it while Run
// uses it.
type Config struct {
	Protocol Protocol
	// Addr is host:port of the first hop.
	Addr string
	// Connections is the number of connections, each driven by one goroutine.
	Connections int
	// Rate is the open-loop request rate in requests per second over all
	// connections; 0 means closed loop.
	Rate float64
	// Warmup runs load that is not recorded, so connections, pools and
	// caches are warm when measurement starts.
	Warmup time.Duration
	// Duration is how long requests are recorded after Warmup.
	Duration time.Duration
	// MaxRequests caps the recorded requests over all connections;
	// 0 means no cap beyond Duration.
	MaxRequests int64
	// Size is the request and response body size in bytes; 0 means 1024.
	Size int
	// Timeout bounds each request (and each dial); 0 means 5s.
	Timeout time.Duration
	// OnMeasureStart, if set, is called once, from Run's goroutine, when
	// recording starts (after Warmup), so the caller can sample counters
	// such as CPU time over exactly the measured window.
	OnMeasureStart func()
}

// Result is what one measurement recorded. Requests that started during
// Warmup are not in it.
type Result struct {
	// Requests is the number of successful recorded requests.
	Requests int64
	// Errors is the number of failed recorded requests (transport errors,
	// timeouts, non-200 statuses, short bodies).
	Errors int64
	// FirstError is the first recorded failure, for the report.
	FirstError error
	// Elapsed is the recording window: from the end of Warmup until the
	// last recorded request finished.
	Elapsed time.Duration
	// Latency holds successful requests only. In open loop it counts from
	// each request's scheduled send time.
	Latency Histogram
	// Service counts from the moment each request was actually sent. In
	// closed loop it equals Latency; in open loop it leaves out the time
	// the generator itself woke up late, which on a quiet Linux box is up
	// to a millisecond of timer slack and the same for every case.
	Service Histogram
}

// RequestsPerSecond is the successful request rate over Elapsed.
func (r *Result) RequestsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// caller sends one request on a connection it owns. A caller is used by one
// goroutine; after a failed call it redials on the next one if it must.
type caller interface {
	call(ctx context.Context) error
	close() error
}

// Run performs one measurement and blocks until it ends: Warmup+Duration
// elapsed (plus the requests then in flight, at most Timeout), MaxRequests
// were recorded, or ctx ended. Failed requests are counted in the Result, not
// returned; Run returns an error only for an invalid Config or when not one
// connection could be set up.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Size == 0 {
		cfg.Size = 1024
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	callers := make([]caller, cfg.Connections)
	var errs []error
	for i := range callers {
		c, err := newCaller(ctx, cfg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		callers[i] = c
	}
	defer func() {
		for _, c := range callers {
			if c != nil {
				_ = c.close()
			}
		}
	}()
	if len(errs) == len(callers) {
		return nil, fmt.Errorf("connect %s: %w", cfg.Addr, errors.Join(errs...))
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	measureStart := start.Add(cfg.Warmup)
	end := measureStart.Add(cfg.Duration)
	r := &run{cfg: cfg, measureStart: measureStart, end: end}
	workers := make([]worker, len(callers))
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		w.run, w.c = r, callers[i]
		if w.c == nil {
			// This connection never came up: count it as one failed
			// request rather than silently running with fewer.
			w.fail(errs[0])
			continue
		}
		if cfg.Rate > 0 {
			interval := time.Duration(float64(cfg.Connections) / cfg.Rate * float64(time.Second))
			first := start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			wg.Go(func() { w.openLoop(ctx, first, interval) })
		} else {
			wg.Go(func() { w.closedLoop(ctx) })
		}
	}
	if cfg.OnMeasureStart != nil {
		t := time.NewTimer(time.Until(measureStart))
		select {
		case <-t.C:
			cfg.OnMeasureStart()
		case <-ctx.Done():
			t.Stop()
		}
	}
	wg.Wait()

	res := &Result{Elapsed: time.Since(measureStart)}
	for i := range workers {
		w := &workers[i]
		res.Requests += w.ok
		res.Errors += w.errs
		if res.FirstError == nil {
			res.FirstError = w.firstErr
		}
		res.Latency.Merge(&w.hist)
		res.Service.Merge(&w.svc)
	}
	if res.Elapsed < 0 {
		res.Elapsed = 0
	}
	return res, nil
}

func (c *Config) validate() error {
	var errs []error
	if c.Protocol != HTTP1 && c.Protocol != GRPC {
		errs = append(errs, fmt.Errorf("protocol %d: unknown", c.Protocol))
	}
	if c.Addr == "" {
		errs = append(errs, errors.New("addr: empty"))
	}
	if c.Connections < 1 {
		errs = append(errs, fmt.Errorf("connections %d: must be at least 1", c.Connections))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate %v: must not be negative", c.Rate))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration %v: must be positive", c.Duration))
	}
	if c.Warmup < 0 || c.MaxRequests < 0 || c.Size < 0 || c.Timeout < 0 {
		errs = append(errs, errors.New("warmup, max requests, size and timeout: must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("load config: %w", err)
	}
	return nil
}

func newCaller(ctx context.Context, cfg Config) (caller, error) {
	switch cfg.Protocol {
	case HTTP1:
		return newHTTPCaller(ctx, cfg)
	case GRPC:
		return newGRPCCaller(ctx, cfg)
	}
	return nil, fmt.Errorf("new caller: unknown protocol %v", cfg.Protocol)
}

// run is the state the workers of one Run share.
type run struct {
	cfg          Config
	measureStart time.Time
	end          time.Time
	recorded     atomic.Int64
}

// worker drives one connection. Its counters are read by Run after the
// worker's goroutine ended.
type worker struct {
	*run
	c        caller
	hist     Histogram
	svc      Histogram
	ok, errs int64
	firstErr error
}

// errorPause is how long a closed-loop worker waits after a failure, so a
// dead path does not turn into a busy loop of refused connections.
const errorPause = 10 * time.Millisecond

func (w *worker) closedLoop(ctx context.Context) {
	for ctx.Err() == nil {
		t := time.Now()
		if !t.Before(w.end) || !w.admit(t) {
			return
		}
		if err := w.c.call(ctx); err != nil {
			if !t.Before(w.measureStart) {
				w.fail(err)
			}
			if !pause(ctx, errorPause) {
				return
			}
			continue
		}
		if !t.Before(w.measureStart) {
			d := time.Since(t)
			w.hist.Record(d)
			w.svc.Record(d)
			w.ok++
		}
	}
}

func (w *worker) openLoop(ctx context.Context, next time.Time, interval time.Duration) {
	for ; next.Before(w.end) && ctx.Err() == nil; next = next.Add(interval) {
		if !w.admit(next) {
			return
		}
		if d := time.Until(next); d > 0 && !pause(ctx, d) {
			return
		}
		// Latency counts from the scheduled time: if the previous request
		// on this connection ran late, this one waited, and that wait is
		// part of what a user at this rate would see.
		sent := time.Now()
		err := w.c.call(ctx)
		if next.Before(w.measureStart) {
			continue
		}
		if err != nil {
			w.fail(err)
			continue
		}
		w.hist.Record(time.Since(next))
		w.svc.Record(time.Since(sent))
		w.ok++
	}
}

// admit reports whether a request starting at t may be sent under
// MaxRequests; warm-up requests are always admitted.
func (w *worker) admit(t time.Time) bool {
	if w.cfg.MaxRequests == 0 || t.Before(w.measureStart) {
		return true
	}
	return w.recorded.Add(1) <= w.cfg.MaxRequests
}

func (w *worker) fail(err error) {
	w.errs++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

// pause waits for d or until ctx ends, reporting whether it waited in full.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
