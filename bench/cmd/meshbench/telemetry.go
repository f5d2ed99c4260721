package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"verge.dev/verge/internal/proxy/tracing/otlpsink"
)

// telemetryCase is one of issue 6's observability cases: Verge 2 hops
// (plaintext between the proxies, as verge2) in an environment of its own
// whose mesh carries one Telemetry setting. Each is compared with
// verge2-telemetry-off, the same path with the golden metrics off.
type telemetryCase struct {
	key, title, path string
	ips              vergeIPs
	metricsOff       bool
	accessLog        bool
	// samplePercent > 0 turns tracing on, exported to a counting OTLP
	// receiver of the harness.
	samplePercent float64
}

var telemetryCases = []telemetryCase{
	{key: "verge2-telemetry-off", title: "Verge 2 hops, telemetry off",
		path:       "as Verge 2 hops, mesh-wide Telemetry metrics.enabled: false (no golden metrics, no traffic in the reports to the control plane)",
		ips:        vergeIPs{control: "127.88.3.1", server: "127.88.3.2", client: "127.88.3.3"},
		metricsOff: true},
	{key: "verge2-metrics-logs", title: "Verge 2 hops, metrics + access logs",
		path:      "as Verge 2 hops, metrics on and a JSON access log per proxy (a file each)",
		ips:       vergeIPs{control: "127.88.3.5", server: "127.88.3.6", client: "127.88.3.7"},
		accessLog: true},
	{key: "verge2-trace1", title: "Verge 2 hops, tracing 1%",
		path:          "as Verge 2 hops, metrics on, tracing at 1% exported over OTLP/gRPC to the harness",
		ips:           vergeIPs{control: "127.88.3.9", server: "127.88.3.10", client: "127.88.3.11"},
		samplePercent: 1},
	{key: "verge2-trace100", title: "Verge 2 hops, tracing 100%",
		path:          "as Verge 2 hops, metrics on, tracing at 100% exported over OTLP/gRPC to the harness",
		ips:           vergeIPs{control: "127.88.3.13", server: "127.88.3.14", client: "127.88.3.15"},
		samplePercent: 100},
}

// telemetryEnv is a running telemetry case: its Verge environment, the
// access log files its proxies write, and the receiver of its spans.
type telemetryEnv struct {
	env  *vergeEnv
	logs []string
	sink *otlpsink.Receiver
	err  error
}

// accessLogPaths are the files the case's server-side and client-side
// proxies log to; one each, so that two writers never share a file.
func (tc telemetryCase) accessLogPaths(dir string) (server, client string) {
	return filepath.Join(dir, tc.key+"-server-access.log"), filepath.Join(dir, tc.key+"-client-access.log")
}

// resources are the Telemetry objects of the case. The mesh-wide one
// (verge-system, no service) reaches the client-side proxy, whose workload
// no Service selects; with an access log, a second one scoped to Service
// backend gives the server-side proxy its own file (the most specific
// Telemetry wins whole, so it repeats the rest of the mesh-wide one).
func (tc telemetryCase) resources(dir, collector string) []apiResource {
	spec := func(logPath string) map[string]any {
		s := map[string]any{"metrics": map[string]any{"enabled": !tc.metricsOff}}
		if tc.accessLog {
			s["accessLog"] = map[string]any{"enabled": true, "path": logPath}
		}
		if tc.samplePercent > 0 {
			s["tracing"] = map[string]any{"samplingPercent": tc.samplePercent, "collector": collector}
		}
		return s
	}
	telemetry := func(ns, name string, spec map[string]any) apiResource {
		return apiResource{plural: "telemetries", obj: map[string]any{
			"apiVersion": "verge.dev/v1alpha1", "kind": "Telemetry",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec":     spec,
		}}
	}
	serverLog, clientLog := tc.accessLogPaths(dir)
	out := []apiResource{telemetry("verge-system", "mesh", spec(clientLog))}
	if tc.accessLog {
		s := spec(serverLog)
		s["service"] = "backend"
		out = append(out, telemetry("default", "backend", s))
	}
	return out
}

// startTelemetryCase starts the case's span receiver (when it traces) and
// its Verge environment.
func startTelemetryCase(tc telemetryCase, dir string, start func(name string, ips vergeIPs, resources []apiResource) (*vergeEnv, error)) *telemetryEnv {
	te := &telemetryEnv{}
	collector := ""
	if tc.samplePercent > 0 {
		// Counting only: at 100% a run exports millions of spans, and the
		// receiver shares the cores with the load generator, so it must
		// neither keep them nor decode them.
		te.sink, te.err = otlpsink.StartCounting()
		if te.err != nil {
			return te
		}
		collector = te.sink.Addr()
	}
	if tc.accessLog {
		s, c := tc.accessLogPaths(dir)
		te.logs = []string{s, c}
	}
	te.env, te.err = start(tc.key, tc.ips, tc.resources(dir, collector))
	return te
}

// verify checks, after the case carried its probe requests, that its
// Telemetry took effect: both access logs have lines, and at 100% the
// receiver got spans (the SDK exports in batches, every few seconds).
// At 1% a probe is most likely not sampled, so that case is not checked.
func (te *telemetryEnv) verify(ctx context.Context, tc telemetryCase) error {
	for _, path := range te.logs {
		err := waitFor(ctx, "access log "+filepath.Base(path), 30*time.Second, func() error {
			n, err := fileBytes(path)
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("%s is empty", path)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if te.sink != nil && tc.samplePercent == 100 {
		return waitFor(ctx, "spans at the OTLP receiver", 30*time.Second, func() error {
			if te.sink.Received() == 0 {
				return fmt.Errorf("no span received")
			}
			return nil
		})
	}
	return nil
}

// fileBytes is the size of path.
func fileBytes(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// logSizes sums the sizes of the access logs (missing files count 0).
func logSizes(paths []string) int64 {
	var n int64
	for _, p := range paths {
		if s, err := fileBytes(p); err == nil {
			n += s
		}
	}
	return n
}

// truncateLogs empties the access logs between measurements, so the disk
// they take stays bounded by one measurement's lines (~300 bytes per
// request per proxy). The proxies open them O_APPEND, so their next write
// lands at the new end rather than leaving a hole.
func truncateLogs(paths []string) error {
	for _, p := range paths {
		if err := os.Truncate(p, 0); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("truncate access log: %w", err)
		}
	}
	return nil
}

// accessLogDropped sums verge_access_log_dropped_total over the proxies'
// /stats/prometheus: lines the background writer dropped because it fell
// behind, which would make the access log case cheaper than it should be.
func accessLogDropped(ctx context.Context, admins ...string) (float64, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	var total float64
	for _, admin := range admins {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/stats/prometheus", nil)
		if err != nil {
			return 0, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, fmt.Errorf("scrape %s: %w", admin, err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "verge_access_log_dropped_total") {
				continue
			}
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				total += v
			}
		}
		err = sc.Err()
		resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("scrape %s: %w", admin, err)
		}
	}
	return total, nil
}

// telemetryNotes say, per telemetry case run, how many spans its receiver
// got and how many access log lines its proxies dropped: a tracing or
// logging case that exported or wrote less than it should would look
// cheaper than it is.
func telemetryNotes(ctx context.Context, r *report) []string {
	if r.verge == nil {
		return nil
	}
	var notes []string
	for _, tc := range telemetryCases {
		te := r.verge.telemetry[tc.key]
		c := r.caseByKey(tc.key)
		if te == nil || te.err != nil || c.setupErr != nil {
			continue
		}
		var recorded int64
		for k, ms := range r.rounds {
			if k.key != tc.key {
				continue
			}
			for _, m := range ms {
				if m.res != nil {
					recorded += m.res.Requests
				}
			}
		}
		if te.sink != nil {
			notes = append(notes, fmt.Sprintf("%s: the harness's OTLP receiver counted %d spans over the run, for %d recorded requests plus warm-ups (each sampled request makes one span per proxy)",
				c.title, te.sink.Received(), recorded))
		}
		if len(te.logs) > 0 {
			dropped, err := accessLogDropped(ctx, te.env.serverAdmin, te.env.clientAdmin)
			if err != nil {
				notes = append(notes, fmt.Sprintf("%s: access log lines dropped: unknown (%v)", c.title, err))
			} else {
				notes = append(notes, fmt.Sprintf("%s: access log lines dropped by the proxies' writers (verge_access_log_dropped_total): %.0f", c.title, dropped))
			}
		}
	}
	return notes
}
