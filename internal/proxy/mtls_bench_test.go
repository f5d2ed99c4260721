package proxy

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/tracing/otlpsink"
)

// BenchmarkTwoProxies measures the two-proxy path (client -> outbound
// proxy -> inbound proxy -> application) with 64 concurrent HTTP/1.1
// clients posting 1 KiB and reading 1 KiB, with plaintext HTTP/1.1 between
// the proxies and with mutual TLS (HTTP/2), on loopback. Compare the two
// sub-benchmarks' ns/op: the floor is mTLS at 85% or more of the
// plaintext throughput. mtls-nethttp is mTLS with the HTTP/2 bridge off
// (net/http's HTTP/2 client and server between the proxies), the path the
// bridge replaced. cpu-ns/op is the CPU time of the whole process (client,
// proxies, application) per request, which a busy shared box distorts
// less than wall time. reads/op and writes/op count the process's read and
// write system calls per request (/proc/self/io), which show how well the
// HTTP/2 hop batches frames of concurrent streams.
//
//	go test -run '^$' -bench TwoProxies -benchtime 5s ./internal/proxy/
func BenchmarkTwoProxies(b *testing.B) {
	const clients = 64
	payload := bytes.Repeat([]byte("x"), 1<<10)
	app := startBackend(b, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write(payload)
	}))
	sink, err := otlpsink.StartCounting()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(sink.Close)
	noMetrics := &config.ListenerTelemetry{MetricsDisabled: true}
	trace := func(percent float64) *config.ListenerTelemetry {
		return &config.ListenerTelemetry{Tracing: &config.Tracing{SamplePercent: percent, Collector: "verge-otlp", ServiceName: "bench"}}
	}
	for _, bc := range []struct {
		name     string
		noTLS    bool
		noBridge bool
		policy   bool
		tel      *config.ListenerTelemetry
	}{{"plaintext", true, false, false, nil}, {"plaintext-policy", true, false, true, nil}, {"mtls", false, false, false, nil},
		{"mtls-nethttp", false, true, false, nil},
		// Issue 6: metrics are on by default; these turn them off or add
		// tracing at 1% and 100%.
		{"plaintext-nometrics", true, false, false, noMetrics},
		{"plaintext-trace1", true, false, false, trace(1)},
		{"plaintext-trace100", true, false, false, trace(100)},
		{"plaintext-logs", true, false, false, &config.ListenerTelemetry{AccessLog: &config.AccessLog{Path: filepath.Join(b.TempDir(), "access.log")}}}} {
		b.Run(bc.name, func(b *testing.B) {
			o := meshOpts{appAddr: app.addr, noTLS: bc.noTLS, noBridge: bc.noBridge, policy: bc.policy, tel: bc.tel, collector: sink.Addr()}
			if !bc.noTLS {
				_, o.in, o.out = meshIdentities(b)
			}
			m := startMesh(b, o)
			tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
			b.Cleanup(tr.CloseIdleConnections)
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			url := "http://" + m.outAddr + "/bench"
			b.ReportAllocs()
			b.SetBytes(2 << 10)
			b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			cpu0 := processCPU()
			r0, w0 := processSyscalls()
			b.Cleanup(func() {
				b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
				if r1, w1 := processSyscalls(); r1 > 0 {
					b.ReportMetric(float64(r1-r0)/float64(b.N), "reads/op")
					b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/op")
				}
			})
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := client.Post(url, "application/octet-stream", bytes.NewReader(payload))
					if err != nil {
						b.Error(err)
						return
					}
					n, _ := io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK || n != int64(len(payload)) {
						b.Errorf("status %d, %d bytes", res.StatusCode, n)
						return
					}
				}
			})
		})
	}
}

// processSyscalls is the number of read and write system calls the
// process made so far (Linux's /proc/self/io; zeros elsewhere). Each
// request crosses six connections (client, two proxies, application), so
// six writes per request is no coalescing at all; the plaintext and mTLS
// runs differ only on the proxy-to-proxy hop.
func processSyscalls() (reads, writes int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		name, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch name {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

// processCPU is the user and system CPU time the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
