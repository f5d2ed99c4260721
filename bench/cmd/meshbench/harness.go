package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"verge.dev/verge/bench/load"
	"verge.dev/verge/internal/proxy/tracing/otlpsink"
)

// options is the harness's configuration, read once from flags.
type options struct {
	out              string
	warmup, duration time.Duration
	maxRequests      int64
	cases            *regexp.Regexp
	loads            *regexp.Regexp // names of the loads to run
	http, grpc       bool
	proxyBinary      string
	root             string
	keep, skipScale  bool
	skipTopology     bool
	command          string
	// rounds is how many interleaved rounds the open-loop load runs: a
	// difference of p50s between processes drifts with the machine's state
	// more than within one 5 s measurement, so the latency floor takes the
	// median over rounds that alternate the cases.
	rounds int
	// pairs is how many back-to-back pairs measure each throughput floor
	// (0: the floors take the rounds' ratios); pairDuration is the
	// recorded time of each side.
	pairs        int
	pairDuration time.Duration
}

// Loopback addresses of the non-Verge processes.
const (
	ipBackend = "127.88.0.1"
	ipStock   = "127.88.1." // + hop number
	ipHAProxy = "127.88.2." // + hop number
)

// tunedIdle is MaxIdleConnsPerHost of the tuned stock proxies: the largest
// connection count of any load, so no load's connections outgrow the idle
// pool (for a load of C connections it is the same as C).
const tunedIdle = 64

// loadDef is one load shape.
type loadDef struct {
	name  string
	conns int
	rate  float64 // req/s; 0: closed loop
}

var loads = []loadDef{
	{"closed loop, 1 connection", 1, 0},
	{"closed loop, 16 connections", 16, 0},
	{"closed loop, 64 connections", 64, 0},
	{"open loop, 1,000 req/s over 16 connections", 16, 1000},
}

// caseDef is one path from the load generator to the backend.
type caseDef struct {
	key   string // for -cases and the floors
	title string
	path  string
	// First-hop addresses; empty when the case doesn't carry the protocol.
	http, grpc string
	// pids are every process in the path except the load generator: their
	// CPU time is charged to the case.
	pids []int
	// noGRPC marks cases that carry HTTP/1.1 only.
	noGRPC bool
	// vergeProxies are watched for RSS under load.
	vergeProxies []*proc
	setupErr     error
	// logs are the access log files of the case's proxies: measure reads
	// how much they grew and empties them afterwards.
	logs []string
	// sink receives the case's spans; verify, when set, checks after the
	// probes that the case's Telemetry took effect.
	sink   *otlpsink.Receiver
	verify func(context.Context) error
}

func (c *caseDef) addr(p load.Protocol) string {
	if p == load.GRPC {
		return c.grpc
	}
	return c.http
}

// cell is one measurement: a load on a case for a protocol.
type cell struct {
	res       *load.Result
	cpuPerReq float64 // µs per request; NaN when unknown
	// cpuByProc splits cpuPerReq by the case's pids (same order).
	cpuByProc []float64
	maxRSS    []int64 // per vergeProxies entry
	// logBytes is how much the case's access logs grew over the recorded
	// window; -1 when the case has none.
	logBytes int64
	err      error
}

type cellKey struct {
	proto load.Protocol
	load  int // index in loads
	key   string
}

// run is the whole harness: set up every case, measure, report, tear down.
func run(ctx context.Context, o options, logger *slog.Logger) error {
	want := func(key string) bool { return o.cases.MatchString(key) }
	if want("haproxy2") {
		if _, err := exec.LookPath("haproxy"); err != nil {
			return fmt.Errorf("haproxy not found (%w): install it with `sudo bench/setup.sh` (Debian package haproxy), or leave it out with -cases", err)
		}
	}
	dir, err := os.MkdirTemp("", "meshbench-")
	if err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	if o.keep {
		logger.Info("keeping work dir", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	var procs []*proc
	defer func() {
		// Reverse start order: proxies before what they front.
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	r := newReport(o)

	// Backend.
	backend, err := startProc(dir, "backend", self, "backend", "-http", ipBackend+":0", "-grpc", ipBackend+":0")
	if err != nil {
		return err
	}
	procs = append(procs, backend)
	line, err := backend.waitLine(ctx, "ready ", 30*time.Second)
	if err != nil {
		return err
	}
	var bHTTP, bGRPC string
	if _, err := fmt.Sscanf(line, "ready http=%s grpc=%s", &bHTTP, &bGRPC); err != nil {
		return fmt.Errorf("backend ready line %q: %w", line, err)
	}

	add := func(c *caseDef) {
		if want(c.key) {
			r.cases = append(r.cases, c)
		}
	}
	add(&caseDef{key: "direct", title: "direct", path: "client → backend", http: bHTTP, grpc: bGRPC, pids: []int{backend.pid()}})

	// Stock proxies. Each hop is one process serving an HTTP/1.1 listener
	// and, for the untuned ones, an h2c listener for gRPC.
	stock := func(name string, hop int, idle int, target, grpcTarget string) (http, grpc string, pid int, err error) {
		args := []string{self, "stock-proxy", "-listen", fmt.Sprintf("%s%d:0", ipStock, hop), "-target", target, "-idle", fmt.Sprint(idle)}
		if grpcTarget != "" {
			args = append(args, "-grpc-listen", fmt.Sprintf("%s%d:0", ipStock, hop), "-grpc-target", grpcTarget)
		}
		p, err := startProc(dir, name, args...)
		if err != nil {
			return "", "", 0, err
		}
		procs = append(procs, p)
		line, err := p.waitLine(ctx, "ready ", 30*time.Second)
		if err != nil {
			return "", "", 0, err
		}
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "http="); ok {
				http = v
			}
			if v, ok := strings.CutPrefix(f, "grpc="); ok {
				grpc = v
			}
		}
		return http, grpc, p.pid(), nil
	}
	if want("stock1") {
		c := &caseDef{key: "stock1", title: "stock 1 hop", path: "client → httputil.ReverseProxy → backend"}
		var pid int
		c.http, c.grpc, pid, c.setupErr = stock("stock1", 1, 0, bHTTP, bGRPC)
		c.pids = []int{backend.pid(), pid}
		add(c)
	}
	stockPair := func(key, title string, idle int, hopA, hopB int, withGRPC bool) {
		if !want(key) {
			return
		}
		c := &caseDef{key: key, title: title, path: "client → ReverseProxy → ReverseProxy → backend", noGRPC: !withGRPC}
		if idle > 0 {
			c.path += fmt.Sprintf(" (MaxIdleConnsPerHost=%d)", idle)
		}
		grpcTarget := ""
		if withGRPC {
			grpcTarget = bGRPC
		}
		hB, gB, pidB, err := stock(key+"-b", hopB, idle, bHTTP, grpcTarget)
		if err != nil {
			c.setupErr = err
			add(c)
			return
		}
		grpcTarget = ""
		if withGRPC {
			grpcTarget = gB
		}
		hA, gA, pidA, err := stock(key+"-a", hopA, idle, hB, grpcTarget)
		c.http, c.grpc, c.setupErr = hA, gA, err
		c.pids = []int{backend.pid(), pidB, pidA}
		add(c)
	}
	stockPair("stock2", "stock 2 hops", 0, 2, 3, true)
	stockPair("stock2-tuned", "stock 2 hops, tuned", tunedIdle, 4, 5, false)

	if want("haproxy2") {
		c := &caseDef{key: "haproxy2", title: "HAProxy 2 hops", path: "client → HAProxy → HAProxy → backend", noGRPC: true}
		c.http, c.pids, c.setupErr = startHAProxyPair(ctx, dir, bHTTP, &procs)
		c.pids = append(c.pids, backend.pid())
		add(c)
	}

	// Verge.
	wantVerge := want("verge1") || want("verge2") || want("verge2-mtls") || want("verge2-policy")
	for _, tc := range telemetryCases {
		wantVerge = wantVerge || want(tc.key)
	}
	if wantVerge {
		r.verge = setupVerge(ctx, o, dir, bHTTP, bGRPC, &procs, logger)
		v := r.verge
		c1 := &caseDef{key: "verge1", title: "Verge 1 hop", path: "client → Verge proxy (inbound) → backend", setupErr: v.err}
		c2 := &caseDef{key: "verge2", title: "Verge 2 hops", path: "client → Verge proxy (outbound) → Verge proxy (inbound) → backend", setupErr: v.err}
		if v.err == nil {
			env := v.env
			c1.http, c1.grpc = env.inHTTP, env.inGRPC
			c1.pids = []int{backend.pid(), env.server.pid(), env.cp.pid()}
			c1.vergeProxies = []*proc{env.server}
			c2.http, c2.grpc = env.outHTTP, env.outGRPC
			c2.pids = []int{backend.pid(), env.server.pid(), env.client.pid(), env.cp.pid()}
			c2.vergeProxies = []*proc{env.server, env.client}
		}
		add(c1)
		add(c2)
		c3 := &caseDef{key: "verge2-mtls", title: "Verge 2 hops, mTLS",
			path: "client → Verge proxy (outbound) → HTTP/2 over mTLS → Verge proxy (inbound) → backend", setupErr: v.err}
		if v.err == nil {
			c3.setupErr = v.mtlsErr
		}
		if env := v.mtls; c3.setupErr == nil && env != nil {
			c3.http, c3.grpc = env.outHTTP, env.outGRPC
			c3.pids = []int{backend.pid(), env.server.pid(), env.client.pid(), env.cp.pid()}
			c3.vergeProxies = []*proc{env.server, env.client}
		}
		add(c3)
		c4 := &caseDef{key: "verge2-policy", title: "Verge 2 hops, policy set",
			path: "client → Verge proxy (20 routes, retries, breaker, outlier detection) → Verge proxy (rate limit) → backend", setupErr: v.err}
		if v.err == nil {
			c4.setupErr = v.policyErr
		}
		if env := v.policy; c4.setupErr == nil && env != nil {
			c4.http, c4.grpc = env.outHTTP, env.outGRPC
			c4.pids = []int{backend.pid(), env.server.pid(), env.client.pid(), env.cp.pid()}
			c4.vergeProxies = []*proc{env.server, env.client}
		}
		add(c4)
		for _, tc := range telemetryCases {
			c := &caseDef{key: tc.key, title: tc.title, path: tc.path, setupErr: v.err}
			if te := v.telemetry[tc.key]; te != nil {
				if te.sink != nil {
					defer te.sink.Close()
				}
				if c.setupErr == nil {
					c.setupErr = te.err
				}
				if env := te.env; c.setupErr == nil {
					c.http, c.grpc = env.outHTTP, env.outGRPC
					c.pids = []int{backend.pid(), env.server.pid(), env.client.pid(), env.cp.pid()}
					c.vergeProxies = []*proc{env.server, env.client}
					c.logs, c.sink = te.logs, te.sink
					c.verify = func(ctx context.Context) error { return te.verify(ctx, tc) }
				}
			}
			add(c)
		}
	}

	// Every case must carry one request of each protocol before it is
	// measured; Verge's config may take a moment to reach both proxies.
	for _, c := range r.cases {
		if c.setupErr != nil {
			logger.Warn("case not set up", "case", c.key, "error", c.setupErr)
			continue
		}
		for _, p := range r.protocols {
			addr := c.addr(p)
			if addr == "" {
				continue
			}
			err := waitFor(ctx, fmt.Sprintf("%s %v probe", c.key, p), 30*time.Second, func() error {
				res, err := load.Run(ctx, load.Config{Protocol: p, Addr: addr, Connections: 1, Duration: 2 * time.Second, MaxRequests: 1, Timeout: 2 * time.Second})
				if err != nil {
					return err
				}
				if res.Requests != 1 {
					return fmt.Errorf("probe: %v", res.FirstError)
				}
				return nil
			})
			if err != nil {
				c.setupErr = err
				logger.Warn("case probe failed", "case", c.key, "protocol", p, "error", err)
				break
			}
		}
		if c.setupErr == nil && c.verify != nil {
			if err := c.verify(ctx); err != nil {
				c.setupErr = err
				logger.Warn("case telemetry not in effect", "case", c.key, "error", err)
			}
		}
	}

	if v := r.verge; v != nil && v.err == nil {
		for _, p := range []*proc{v.env.server, v.env.client} {
			n, err := rss(p.pid())
			anon, _ := rssAnon(p.pid())
			r.idleRSS = append(r.idleRSS, namedRSS{name: p.name, rss: n, anon: anon, err: err})
		}
	}

	for _, p := range r.protocols {
		for li, l := range loads {
			if !o.loads.MatchString(l.name) {
				continue
			}
			// The open loop and the 64-connection closed loop (whose
			// ratios between Verge cases are floors) run in interleaved
			// rounds: one sample per case is at the mercy of whatever else
			// the shared cores do in those seconds.
			n := 1
			if (l.rate > 0 || l.conns == 64) && o.rounds > 1 {
				n = o.rounds
			}
			for round := range n {
				for _, c := range r.cases {
					if c.setupErr != nil || c.addr(p) == "" {
						continue
					}
					if ctx.Err() != nil {
						return ctx.Err()
					}
					m := measure(ctx, o, c, p, l)
					key := cellKey{p, li, c.key}
					r.rounds[key] = append(r.rounds[key], m)
					attrs := []any{"protocol", p, "load", l.name, "case", c.key, "round", round + 1}
					if m.err != nil {
						logger.Warn("measurement failed", append(attrs, "error", m.err)...)
						continue
					}
					logger.Info("measured", append(attrs, "rps", int(m.res.RequestsPerSecond()),
						"p50", m.res.Latency.Quantile(0.5), "p50_from_send", m.res.Service.Quantile(0.5), "p99", m.res.Latency.Quantile(0.99),
						"cpu_us_per_req", math.Round(m.cpuPerReq), "cpu_by_process", fmtSplit(m.cpuByProc), "errors", m.res.Errors)...)
				}
			}
			for _, c := range r.cases {
				key := cellKey{p, li, c.key}
				if ms := r.rounds[key]; len(ms) > 0 {
					r.cells[key] = medianCell(ms, l.rate == 0)
				}
			}
		}
	}
	if err := measurePairs(ctx, o, r, logger); err != nil {
		return err
	}
	for _, c := range r.cases {
		for _, p := range c.vergeProxies {
			if !p.alive() {
				r.notes = append(r.notes, fmt.Sprintf("%s exited during the run: %s", p.name, p.tail()))
			}
		}
	}

	r.notes = append(r.notes, telemetryNotes(ctx, r)...)
	if !o.skipTopology {
		logger.Info("running the topology benchmark", "command", topologyCommand)
		res := runTopologyBench(ctx, o.root)
		r.topology = &res
		if res.err != nil {
			logger.Warn("topology benchmark failed", "error", res.err)
		}
	}

	if v := r.verge; !o.skipScale && v != nil && v.err == nil {
		logger.Info("measuring idle proxy memory", "services", scaleServices, "endpoints_per_service", scaleEndpoints)
		res, err := measureScale(ctx, dir, v.proxyBin, v.env, &procs)
		r.scale, r.scaleErr = &res, err
		if err != nil {
			logger.Warn("scale measurement incomplete", "error", err)
		}
	}

	md := r.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// vergeSetup is the outcome of building and starting Verge.
type vergeSetup struct {
	bin      binaries
	proxyBin string
	env      *vergeEnv
	err      error
	// mtls is the zero-trust environment; mtlsErr its setup error.
	mtls    *vergeEnv
	mtlsErr error
	// policy is the plaintext environment with the policy set.
	policy    *vergeEnv
	policyErr error
	// telemetry holds the environments of the telemetryCases run, by key.
	telemetry map[string]*telemetryEnv
}

func setupVerge(ctx context.Context, o options, dir, bHTTP, bGRPC string, procs *[]*proc, logger *slog.Logger) *vergeSetup {
	v := &vergeSetup{}
	logger.Info("building verge and verge-proxy", "root", o.root)
	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		v.err = err
		return v
	}
	v.bin, v.err = buildVerge(ctx, o.root, binDir)
	if v.err != nil {
		return v
	}
	v.proxyBin = v.bin.vergeProxy
	if o.proxyBinary == "verge" {
		v.proxyBin = v.bin.verge
	}
	logger.Info("starting verge control plane and proxies")
	v.env, v.err = startVerge(ctx, dir, "plain", plainIPs, false, nil, v.bin, v.proxyBin, bHTTP, bGRPC, procs)
	if v.err == nil && o.cases.MatchString("verge2-mtls") {
		logger.Info("starting the zero-trust verge control plane and proxies")
		v.mtls, v.mtlsErr = startVerge(ctx, dir, "mtls", mtlsIPs, true, nil, v.bin, v.proxyBin, bHTTP, bGRPC, procs)
	}
	if v.err == nil && o.cases.MatchString("verge2-policy") {
		logger.Info("starting the verge control plane and proxies with the policy set")
		v.policy, v.policyErr = startVerge(ctx, dir, "policy", policyIPs, false, policySet(), v.bin, v.proxyBin, bHTTP, bGRPC, procs)
	}
	// Issue 6's telemetry cases: one environment each, like the policy
	// set's, so that every round measures them back to back under the
	// same machine state while the others idle.
	v.telemetry = map[string]*telemetryEnv{}
	for _, tc := range telemetryCases {
		if v.err != nil || !o.cases.MatchString(tc.key) {
			continue
		}
		logger.Info("starting a verge control plane and proxies with telemetry", "case", tc.key)
		v.telemetry[tc.key] = startTelemetryCase(tc, dir, func(name string, ips vergeIPs, resources []apiResource) (*vergeEnv, error) {
			return startVerge(ctx, dir, name, ips, false, resources, v.bin, v.proxyBin, bHTTP, bGRPC, procs)
		})
	}
	return v
}

// measure runs one load on one case, charging the CPU time of the case's
// processes over the recorded window to its requests, and sampling the RSS
// of its Verge proxies.
func measure(ctx context.Context, o options, c *caseDef, p load.Protocol, l loadDef) *cell {
	m := &cell{cpuPerReq: math.NaN(), maxRSS: make([]int64, len(c.vergeProxies)), logBytes: -1}
	var cpu0 []time.Duration
	var log0 int64
	var cpuErr error
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			for i, p := range c.vergeProxies {
				if n, err := rss(p.pid()); err == nil {
					m.maxRSS[i] = max(m.maxRSS[i], n)
				}
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
		}
	})
	res, err := load.Run(ctx, load.Config{
		Protocol: p, Addr: c.addr(p), Connections: l.conns, Rate: l.rate,
		Warmup: o.warmup, Duration: o.duration, MaxRequests: o.maxRequests,
		OnMeasureStart: func() {
			cpu0, cpuErr = cpuTimes(c.pids)
			log0 = logSizes(c.logs)
		},
	})
	cpu1, cpuErr1 := cpuTimes(c.pids)
	if len(c.logs) > 0 {
		m.logBytes = logSizes(c.logs) - log0
		if terr := truncateLogs(c.logs); terr != nil && err == nil {
			err = terr
		}
	}
	stopSampling()
	wg.Wait()
	if err != nil {
		m.err = err
		return m
	}
	m.res = res
	if n := res.Requests + res.Errors; n > 0 && errors.Join(cpuErr, cpuErr1) == nil {
		var sum time.Duration
		m.cpuByProc = make([]float64, len(c.pids))
		for i := range c.pids {
			d := cpu1[i] - cpu0[i]
			sum += d
			m.cpuByProc[i] = float64(d.Microseconds()) / float64(n)
		}
		m.cpuPerReq = float64(sum.Microseconds()) / float64(n)
	}
	return m
}

// medianCell is the round whose p50 from send (closed loop: whose req/s)
// is the median of the rounds (the first failed round when any failed), so
// the tables show one real measurement rather than a blend.
func medianCell(ms []*cell, closed bool) *cell {
	ok := make([]*cell, 0, len(ms))
	for _, m := range ms {
		if m.err != nil || m.res == nil {
			return m
		}
		ok = append(ok, m)
	}
	slices.SortFunc(ok, func(a, b *cell) int {
		if closed {
			return cmp.Compare(a.res.RequestsPerSecond(), b.res.RequestsPerSecond())
		}
		return cmp.Compare(a.res.Service.Quantile(0.5), b.res.Service.Quantile(0.5))
	})
	return ok[len(ok)/2]
}

// fmtSplit formats a cell's CPU µs/req per process, in the order of the
// case's pids (for Verge 2 hops: backend, server-side proxy, client-side
// proxy, control plane).
func fmtSplit(us []float64) string {
	parts := make([]string, len(us))
	for i, v := range us {
		parts[i] = strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strings.Join(parts, "/")
}

// measurePairs measures each throughput floor's two cases back to back,
// o.pairs times, alternating which goes first. A floor's margin (5% for
// the access logs) is smaller than how much this machine's speed drifts
// over the minute a round of every case takes; two measurements a few
// seconds apart see nearly the same machine.
func measurePairs(ctx context.Context, o options, r *report, logger *slog.Logger) error {
	if o.pairs <= 0 || !o.http || !o.loads.MatchString(loads[closed64].name) {
		return nil
	}
	po := o
	po.duration = o.pairDuration
	ready := func(key string) *caseDef {
		for _, c := range r.cases {
			if c.key == key && c.setupErr == nil && c.http != "" {
				return c
			}
		}
		return nil
	}
	for _, tf := range throughputFloors {
		num, den := ready(tf.num), ready(tf.den)
		if num == nil || den == nil {
			continue
		}
		for i := range o.pairs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var s pairSample
			if i%2 == 0 {
				s.den = measure(ctx, po, den, load.HTTP1, loads[closed64])
				s.num = measure(ctx, po, num, load.HTTP1, loads[closed64])
			} else {
				s.num = measure(ctx, po, num, load.HTTP1, loads[closed64])
				s.den = measure(ctx, po, den, load.HTTP1, loads[closed64])
			}
			key := tf.num + "/" + tf.den
			r.pairs[key] = append(r.pairs[key], s)
			if err := errors.Join(s.num.err, s.den.err); err != nil {
				logger.Warn("pair measurement failed", "floor", tf.name, "pair", i+1, "error", err)
				continue
			}
			logger.Info("measured pair", "floor", tf.name, "pair", i+1,
				"ratio", fmt.Sprintf("%.3f", s.num.res.RequestsPerSecond()/s.den.res.RequestsPerSecond()),
				"num_rps", int(s.num.res.RequestsPerSecond()), "den_rps", int(s.den.res.RequestsPerSecond()),
				"num_cpu", fmtSplit(s.num.cpuByProc), "den_cpu", fmtSplit(s.den.cpuByProc))
		}
	}
	return nil
}
