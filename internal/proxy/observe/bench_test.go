package observe

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func benchRequest(e *Edge) *Request {
	return &Request{
		Edge:       e,
		Start:      time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC),
		Duration:   1234567 * time.Nanosecond,
		Status:     200,
		GRPCStatus: -1,
		BytesIn:    120,
		BytesOut:   4096,
		Method:     "GET",
		Authority:  "cart.shop.mesh:8080",
		Path:       "/api/v1/cart/items?user=42",
		UserAgent:  "curl/8.5.0",
		RequestID:  "6f1c3a2e-0d7b-4c8e-9a51-2b7e4f0c9d13",
		Upstream:   "10.0.3.17:8080",
		TraceID:    "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanID:     "00f067aa0ba902b7",
	}
}

// BenchmarkRequest is the per-request cost of metrics and edge stats.
func BenchmarkRequest(b *testing.B) {
	o := New(Options{Registry: prometheus.NewRegistry()})
	r := benchRequest(testEdge())
	b.ReportAllocs()
	for b.Loop() {
		o.Request(r)
	}
}

// BenchmarkRequestParallel shows contention on shared counters when every
// core records on one edge.
func BenchmarkRequestParallel(b *testing.B) {
	o := New(Options{Registry: prometheus.NewRegistry()})
	e := testEdge()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := benchRequest(e)
		for pb.Next() {
			o.Request(r)
		}
	})
}

// BenchmarkRequestWithAccessLog adds formatting and queueing a line: the
// cost on the request path. The writer goroutine's writes are not in it
// when it runs on another core (see BenchmarkAccessLogWriter for them).
// The loop logs far faster than any proxy serves requests, so the bounded
// buffer drops lines (dropped/op), which is the behaviour under test.
func BenchmarkRequestWithAccessLog(b *testing.B) {
	reg := prometheus.NewRegistry()
	o := New(Options{Registry: reg})
	l, err := OpenAccessLog(filepath.Join(b.TempDir(), "access.log"), reg)
	if err != nil {
		b.Fatal(err)
	}
	r := benchRequest(testEdge())
	r.Log = l
	b.ReportAllocs()
	for b.Loop() {
		o.Request(r)
	}
	b.StopTimer()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(testDropped(b, reg)/float64(b.N), "dropped/op")
}

// BenchmarkAccessLogWriter is the writer goroutine's cost per line: one
// write of a full batch to a file. Request-path cost plus this is the
// CPU an access log line costs in all. It rewrites the file's first
// batch, so that the benchmark measures the write call rather than the
// disk's sustained rate (and does not fill the disk).
func BenchmarkAccessLogWriter(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	line := appendRequestLine(nil, benchRequest(testEdge()))
	n := maxPendingBytes / len(line)
	batch := bytes.Repeat(line, n)
	b.SetBytes(int64(len(batch)))
	for b.Loop() {
		if _, err := f.WriteAt(batch, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/line")
}

// BenchmarkAppendRequestLine is the formatting alone.
func BenchmarkAppendRequestLine(b *testing.B) {
	r := benchRequest(testEdge())
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendRequestLine(buf[:0], r)
	}
	b.SetBytes(int64(len(buf)))
}

func testDropped(tb testing.TB, reg *prometheus.Registry) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "verge_access_log_dropped_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
