package observe

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/telemetry"
)

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestAccessLogLines(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := New(Options{Registry: reg})
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := OpenAccessLog(path, reg)
	if err != nil {
		t.Fatal(err)
	}
	r := benchRequest(testEdge())
	r.Log = l
	r.Retries = 2
	r.Flags = "URX"
	r.Path = "/a\"b\\c\n\x00\xff€"
	o.Request(r)

	g := testEdge()
	g.Protocol = "grpc"
	o.Request(&Request{Edge: g, Start: r.Start, Status: 200, GRPCStatus: 14, Method: "POST", Path: "/pkg.Svc/Get", Log: l})

	tcp := &Edge{Direction: telemetry.Inbound, Protocol: "tcp", Source: Peer{Service: "unknown"}, Destination: Peer{Service: "db.shop"}}
	o.ConnOpened(tcp)
	o.TCP(&Conn{Edge: tcp, Start: r.Start, Duration: 1500 * time.Millisecond, BytesIn: 10, BytesOut: 20, Upstream: "127.0.0.1:5432", Log: l})
	o.ConnOpened(tcp)
	o.TCP(&Conn{Edge: tcp, Start: r.Start, Failed: true, Log: l})
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	peers := map[string]any{
		"direction": "outbound", "source": "web.shop", "source_identity": "spiffe://verge.local/ns/shop/sa/web",
		"destination": "cart.shop", "route": "cart",
	}
	with := func(base map[string]any, m map[string]any) map[string]any {
		out := map[string]any{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	tcpBase := map[string]any{
		"start_time": "2026-05-01T12:00:00.123456789Z", "direction": "inbound", "protocol": "tcp",
		"source": "unknown", "source_identity": "", "destination": "db.shop", "route": "",
	}
	want := []map[string]any{
		with(peers, map[string]any{
			"start_time": "2026-05-01T12:00:00.123456789Z", "duration_ms": 1.234, "protocol": "http",
			"method": "GET", "authority": "cart.shop.mesh:8080", "path": "/a\"b\\c\n\x00\uFFFD€",
			"status": 200.0, "grpc_status": "", "bytes_received": 120.0, "bytes_sent": 4096.0,
			"upstream_host": "10.0.3.17:8080", "retries": 2.0, "response_flags": "URX",
			"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
			"request_id": "6f1c3a2e-0d7b-4c8e-9a51-2b7e4f0c9d13", "user_agent": "curl/8.5.0",
		}),
		with(peers, map[string]any{
			"start_time": "2026-05-01T12:00:00.123456789Z", "duration_ms": 0.0, "protocol": "grpc",
			"method": "POST", "authority": "", "path": "/pkg.Svc/Get",
			"status": 200.0, "grpc_status": "UNAVAILABLE", "bytes_received": 0.0, "bytes_sent": 0.0,
			"upstream_host": "", "retries": 0.0, "response_flags": "",
			"trace_id": "", "span_id": "", "request_id": "", "user_agent": "",
		}),
		with(tcpBase, map[string]any{
			"duration_ms": 1500.0, "bytes_received": 10.0, "bytes_sent": 20.0,
			"upstream_host": "127.0.0.1:5432", "response_flags": "",
		}),
		with(tcpBase, map[string]any{
			"duration_ms": 0.0, "bytes_received": 0.0, "bytes_sent": 0.0,
			"upstream_host": "", "response_flags": "UF",
		}),
	}
	if diff := cmp.Diff(want, readLines(t, path)); diff != "" {
		t.Errorf("access log (-want +got):\n%s", diff)
	}
}

// TestAccessLogManyWriters checks that concurrent writers lose nothing and
// interleave no lines, and that Close flushes.
func TestAccessLogManyWriters(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := New(Options{Registry: reg})
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := OpenAccessLog(path, reg)
	if err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 4, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			e := testEdge()
			for i := range perWorker {
				o.Request(&Request{Edge: e, Status: 200, GRPCStatus: -1, Retries: w, BytesIn: int64(i), Log: l})
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	dropped := testDropped(t, reg)
	if got := float64(len(lines)) + dropped; got != workers*perWorker {
		t.Fatalf("lines written + dropped = %d + %v, want %d", len(lines), dropped, workers*perWorker)
	}
	seen := map[[2]float64]bool{}
	for _, m := range lines {
		k := [2]float64{m["retries"].(float64), m["bytes_received"].(float64)}
		if seen[k] {
			t.Errorf("line %v written twice", k)
		}
		seen[k] = true
	}

	// Lines after Close are dropped and counted.
	o.Request(&Request{Edge: testEdge(), Status: 200, GRPCStatus: -1, Log: l})
	if d := testDropped(t, reg); d != dropped+1 {
		t.Errorf("dropped after a line past Close = %v, want %v", d, dropped+1)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

// blockingWriter holds every Write until release is closed, standing in
// for a stalled disk.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestAccessLogDropsWhenFull(t *testing.T) {
	reg := prometheus.NewRegistry()
	w := &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	line := appendRequestLine(nil, benchRequest(testEdge()))
	// Room for exactly three lines.
	l := newAccessLogger(w, nil, droppedCounter(reg), 3*len(line), time.Millisecond)
	r := benchRequest(testEdge())
	r.Log = l
	o := New(Options{})

	o.Request(r) // taken by the writer, which then blocks in Write
	select {
	case <-w.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("writer did not start writing")
	}
	for range 5 {
		o.Request(r) // three fit, two are dropped
	}
	if d := testDropped(t, reg); d != 2 {
		t.Errorf("dropped = %v, want 2", d)
	}
	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(w.buf.String(), "\n"); n != 4 {
		t.Errorf("lines written = %d, want 4", n)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestAccessLogWriteErrorOnClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := newAccessLogger(failingWriter{}, nil, droppedCounter(reg), 1<<16, time.Millisecond)
	l.enqueue([]byte("{}\n"))
	if err := l.Close(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Close = %v, want the write error", err)
	}
	if d := testDropped(t, reg); d != 1 {
		t.Errorf("dropped = %v, want 1 (the line that failed to write)", d)
	}
}

func TestOpenAccessLogErrors(t *testing.T) {
	if _, err := OpenAccessLog("", nil); err == nil || !strings.Contains(err.Error(), "path is empty") {
		t.Errorf("OpenAccessLog(\"\") = %v, want path is empty", err)
	}
	dir := filepath.Join(t.TempDir(), "missing", "access.log")
	if _, err := OpenAccessLog(dir, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenAccessLog(missing dir) = %v, want os.ErrNotExist", err)
	}
}

// FuzzAccessLogLine checks that any strings give one line of valid JSON
// that decodes back to the same strings, invalid UTF-8 replaced by U+FFFD
// per byte as encoding/json does.
func FuzzAccessLogLine(f *testing.F) {
	f.Add("GET", "/a?b=c", "curl/8", "UF,URX", "svc.ns")
	f.Add("\x00\x1f\"\\", "\xff\xfe\xc0", "\u2028\u2029", "\t\r\n", "é€𝄞")
	f.Fuzz(func(t *testing.T, method, path, ua, flags, service string) {
		e := &Edge{Direction: "outbound", Protocol: "http", Source: Peer{Service: service}, Route: flags}
		r := &Request{Edge: e, Method: method, Path: path, UserAgent: ua, Flags: flags, Authority: ua, TraceID: service}
		line := appendRequestLine(nil, r)
		if bytes.Count(line, []byte{'\n'}) != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("line %q is not exactly one line", line)
		}
		if !utf8.Valid(line) {
			t.Fatalf("line %q is not valid UTF-8", line)
		}
		var got map[string]any
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		valid := func(s string) string { return string([]rune(s)) }
		for field, want := range map[string]string{
			"method": method, "path": path, "user_agent": ua, "response_flags": flags,
			"source": service, "route": flags, "authority": ua, "trace_id": service,
		} {
			if got[field] != valid(want) {
				t.Errorf("%s = %q, want %q", field, got[field], valid(want))
			}
		}
	})
}

// FuzzRFC3339Nano: the cached-second formatting of start_time is
// time.RFC3339Nano's, for any instant, in any order.
func FuzzRFC3339Nano(f *testing.F) {
	for _, s := range [][2]int64{{0, 0}, {1700000000, 123456789}, {1700000000, 100}, {1700000001, 0}, {-62135596800, 1}, {253402300800, 5}, {-100, 999999999}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, sec, nsec int64) {
		tm := time.Unix(sec, nsec%1e9)
		want := tm.UTC().Format(time.RFC3339Nano)
		if got := string(appendRFC3339Nano(nil, tm)); got != want {
			t.Fatalf("%v: %q, want %q", tm, got, want)
		}
		// Again, now that the second is cached.
		if got := string(appendRFC3339Nano(nil, tm)); got != want {
			t.Fatalf("%v (cached): %q, want %q", tm, got, want)
		}
	})
}

// FuzzPlainPrefix: the eight-bytes-at-a-time scan stops where the
// byte-at-a-time one does.
func FuzzPlainPrefix(f *testing.F) {
	for _, s := range []string{"", "GET", "/reviews/1?x=\"y\"", "a\\b", "0123456789abcdef\x1f", "héllo wörld, long enough", "\x7f\x80abcdefgh", "abcdefg\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := 0
		for want < len(s) && s[want] < utf8.RuneSelf && plain[s[want]] {
			want++
		}
		if got := plainPrefix(s); got != want {
			t.Fatalf("plainPrefix(%q) = %d, want %d", s, got, want)
		}
	})
}
