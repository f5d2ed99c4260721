package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/tracing/otlpsink"
	"verge.dev/verge/internal/telemetry"
)

// chainApp answers a request after calling the next service through its
// own proxy's outbound listener (next empty: it answers at once),
// forwarding the trace context as an instrumented application would.
type chainApp struct {
	name string
	host host
	next string // "http://HOST:PORT" of the outbound listener, or ""
}

func (a *chainApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if a.next != "" {
		req, _ := http.NewRequest(http.MethodGet, a.next+r.URL.Path, nil)
		for _, h := range []string{"Traceparent", "Tracestate"} {
			if v := r.Header.Get(h); v != "" {
				req.Header.Set(h, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		fmt.Fprintf(w, "%s>%s", a.name, body)
		return
	}
	fmt.Fprint(w, a.name)
}

const chainMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: client}
spec:
  selector: {app: client}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: a}
spec:
  selector: {app: a}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: b}
spec:
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: c}
spec:
  selector: {app: c}
  ports: [{port: 80, targetPort: 8080}]
`

// telemetryFor is a Telemetry for one service (or the mesh when svc is
// empty): traces at 100% to collector, and an access log when logPath is
// set.
func telemetryFor(name, svc, collector, logPath string) string {
	ns, scope := "default", ""
	if svc == "" {
		ns = "verge-system"
	} else {
		scope = "\n  service: " + svc
	}
	y := fmt.Sprintf(`apiVersion: verge.dev/v1alpha1
kind: Telemetry
metadata: {name: %s, namespace: %s}
spec:%s
  tracing: {samplingPercent: 100, collector: "%s"}
`, name, ns, scope, collector)
	if logPath != "" {
		y += fmt.Sprintf("  accessLog: {enabled: true, path: %q}\n", logPath)
	}
	return y
}

// TestObservability runs one mesh, client → a → b → c, with tracing at
// 100% and access logs on a, b and c, and checks what each signal says
// about the same requests: one trace of six spans per request, access log
// lines, exact request counts in the proxies' metrics and in a real
// Prometheus server, the control plane's topology, `verge top`, `verge
// tap` and `verge profile`.
func TestObservability(t *testing.T) {
	t.Parallel()
	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)

	c := startCP(t, "")
	logs := t.TempDir()
	c.apply(t, chainMesh+"---\n"+telemetryFor("mesh", "", sink.Addr(), "")+"---\n"+
		telemetryFor("a", "a", sink.Addr(), filepath.Join(logs, "a.log"))+"---\n"+
		telemetryFor("b", "b", sink.Addr(), filepath.Join(logs, "b.log"))+"---\n"+
		telemetryFor("c", "c", sink.Addr(), filepath.Join(logs, "c.log")))

	apps := map[string]*chainApp{}
	var proxies []*proxy
	fast := []string{"--report-interval", "1s"}
	for _, name := range []string{"c", "b", "a"} {
		a := &chainApp{name: name, host: newHost()}
		var outbound []string
		if next := map[string]string{"a": "b", "b": "c"}[name]; next != "" {
			a.next = "http://" + a.host.addr(10001)
			outbound = []string{next + ":80=10001"}
		}
		serveHTTP(t, a.host.addr(8080), a)
		apps[name] = a
		proxies = append(proxies, startProxy(t, c, proxyOpts{name: name, labels: "app=" + name + ",zone=z1",
			host: a.host, inbound: []string{"8080=15006"}, outbound: outbound, extra: fast}))
	}
	ch := newHost()
	client := startProxy(t, c, proxyOpts{name: "client", labels: "app=client,zone=z2", host: ch,
		outbound: []string{"a:80=10001"}, extra: fast})
	proxies = append(proxies, client)
	waitAllReady(t, proxies...)
	pc, pb := proxies[0], proxies[1]

	url := "http://" + ch.addr(10001) + "/chain"
	hc := &http.Client{Timeout: 10 * time.Second}
	// The chain works once every proxy has its peers' endpoints.
	eventually(t, 30*time.Second, func() error {
		code, body, err := get(hc, url)
		if err != nil || code != 200 || body != "a>b>c" {
			return fmt.Errorf("GET %s: %d %q %v", url, code, body, err)
		}
		return nil
	})
	// Count from a clean slate: the probes above are in the counters.
	before := map[string]float64{}
	for name, p := range map[string]*proxy{"b": pb, "c": pc} {
		before[name] = metric(t, p.admin+"/stats/prometheus", "verge_requests_total",
			map[string]string{"direction": "inbound", "destination_service": name + ".default"})
	}
	sink.Reset()
	// Spans of the probes above may still be in the proxies' export
	// batches: the trace check counts only spans started from here.
	t0 := time.Now()
	const n = 20
	for i := range n {
		code, body, err := get(hc, url)
		if err != nil || code != 200 || body != "a>b>c" {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}

	t.Run("one trace per request across three services", func(t *testing.T) {
		byTrace := map[string][]otlpsink.Span{}
		eventually(t, 30*time.Second, func() error {
			clear(byTrace)
			got := 0
			for _, s := range sink.Spans() {
				if !s.Start.Before(t0) {
					byTrace[s.TraceID] = append(byTrace[s.TraceID], s)
					got++
				}
			}
			if got < 6*n {
				return fmt.Errorf("%d spans since the requests started, want %d", got, 6*n)
			}
			return nil
		})
		if len(byTrace) != n {
			t.Fatalf("%d traces, want %d traces of 6 spans", len(byTrace), n)
		}
		for id, tr := range byTrace {
			if err := checkChainTrace(tr); err != nil {
				t.Fatalf("trace %s: %v", id, err)
			}
		}
	})

	t.Run("access log lines", func(t *testing.T) {
		for _, name := range []string{"a", "b", "c"} {
			path := filepath.Join(logs, name+".log")
			var lines []map[string]any
			eventually(t, 10*time.Second, func() error {
				lines = readLogLines(t, path)
				if in := countLines(lines, "inbound"); in < n {
					return fmt.Errorf("%s: %d inbound lines, want at least %d", path, in, n)
				}
				return nil
			})
			last := lines[len(lines)-1]
			for _, f := range []string{"start_time", "duration_ms", "method", "path", "status", "source", "destination", "trace_id", "retries", "bytes_sent"} {
				if _, ok := last[f]; !ok {
					t.Errorf("%s: line without %q: %v", name, f, last)
				}
			}
			for _, l := range lines {
				if l["direction"] == "inbound" && l["path"] == "/chain" && l["status"] != float64(200) {
					t.Errorf("%s: inbound /chain line with status %v: %v", name, l["status"], l)
				}
			}
		}
	})

	t.Run("metrics count exactly", func(t *testing.T) {
		for name, p := range map[string]*proxy{"b": pb, "c": pc} {
			labels := map[string]string{"direction": "inbound", "destination_service": name + ".default"}
			got := metric(t, p.admin+"/stats/prometheus", "verge_requests_total", labels) - before[name]
			if got != n {
				t.Errorf("%s: verge_requests_total%v grew by %v, want %d", name, labels, got, n)
			}
		}
		// Latencies within bounds: every request took more than nothing and
		// less than the client's timeout.
		lat := map[string]string{"direction": "inbound", "destination_service": "c.default"}
		count := metric(t, pc.admin+"/stats/prometheus", "verge_request_duration_seconds_count", lat)
		sum := metric(t, pc.admin+"/stats/prometheus", "verge_request_duration_seconds_sum", lat)
		if count < n || sum <= 0 || sum/count > 1 {
			t.Errorf("c: verge_request_duration_seconds%v count %v sum %v: want at least %d requests averaging (0, 1s]", lat, count, sum, n)
		}
		src := map[string]string{"direction": "inbound", "source_service": "b.default", "response_code_class": "2xx"}
		if got := metric(t, pc.admin+"/stats/prometheus", "verge_requests_total", src); got < n {
			t.Errorf("c: verge_requests_total%v = %v, want at least %d (the caller named by its proxy)", src, got, n)
		}
	})

	t.Run("prometheus scrapes the mesh", func(t *testing.T) {
		prom := startPrometheus(t, c, proxies)
		want := `sum(verge_requests_total{direction="inbound",destination_service="c.default",source_service="b.default"})`
		eventually(t, 60*time.Second, func() error {
			v, err := promQuery(prom, want)
			if err != nil {
				return err
			}
			if v < n {
				return fmt.Errorf("%s = %v, want at least %d", want, v, n)
			}
			return nil
		})
		eventually(t, 30*time.Second, func() error {
			q := `sum(verge_xds_connected_clients{kind="proxy"})`
			v, err := promQuery(prom, q)
			if err != nil {
				return err
			}
			if v < 4 {
				return fmt.Errorf("%s = %v, want 4", q, v)
			}
			return nil
		})
	})

	t.Run("topology", func(t *testing.T) {
		var topo telemetry.Topology
		eventually(t, 30*time.Second, func() error {
			topo = telemetry.Topology{}
			if err := c.getJSON(t, telemetry.TopologyPath+"?window=5m", &topo); err != nil {
				return err
			}
			for _, pair := range [][2]string{{"a.default", "b.default"}, {"b.default", "c.default"}} {
				e := findEdge(topo, pair[0], pair[1])
				if e == nil || e.Requests < n {
					return fmt.Errorf("edge %s → %s: %+v, want at least %d requests", pair[0], pair[1], e, n)
				}
				if e.SuccessRate != 1 || e.P50 <= 0 {
					return fmt.Errorf("edge %s → %s: success %v p50 %v", pair[0], pair[1], e.SuccessRate, e.P50)
				}
			}
			return nil
		})
		for _, svc := range []string{"a.default", "b.default", "c.default"} {
			if findNode(topo, svc) == nil {
				t.Errorf("no node %s in %+v", svc, topo.Nodes)
			}
		}
		// The client's workload is in zone z2, a's in z1.
		if e := findEdge(topo, "client.default", "a.default"); e == nil || !e.CrossZone {
			t.Errorf("edge client → a: %+v, want a cross-zone edge", e)
		}
	})

	t.Run("dashboard data", func(t *testing.T) {
		resp, err := http.Get(c.api + "/dashboard/api/topology?window=5m")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("dashboard topology: %s: %s", resp.Status, body)
		}
		for _, svc := range []string{"a.default", "b.default", "c.default"} {
			if !bytes.Contains(body, []byte(`"`+svc+`"`)) {
				t.Errorf("the dashboard's topology does not name %s: %s", svc, body)
			}
		}
	})

	t.Run("dashboard in Chromium", func(t *testing.T) {
		checkDashboard(t, c, []string{"a.default", "b.default", "c.default"}, "b.default")
	})

	t.Run("verge top", func(t *testing.T) {
		out, code := c.verge(t, "", "top", "--once", "--window", "5m")
		if code != 0 {
			t.Fatalf("verge top --once: exit %d\n%s", code, out)
		}
		for _, svc := range []string{"a.default", "b.default", "c.default"} {
			if !strings.Contains(out, svc) {
				t.Errorf("verge top does not show %s:\n%s", svc, out)
			}
		}
	})

	t.Run("verge tap", func(t *testing.T) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; i < 600; i++ {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				_, _, _ = get(hc, url)
			}
		}()
		out, code := c.verge(t, "", "tap", "b.default", "--max", "3")
		close(stop)
		<-done
		if code != 0 {
			t.Fatalf("verge tap: exit %d\n%s", code, out)
		}
		if got := strings.Count(out, "/chain"); got < 3 {
			t.Errorf("verge tap b.default --max 3 printed %d requests:\n%s", got, out)
		}
	})

	t.Run("verge profile", func(t *testing.T) {
		dir := t.TempDir()
		out, code := c.verge(t, "", "profile", "b.default", "--seconds", "1", "--out", dir)
		if code != 0 {
			t.Fatalf("verge profile: exit %d\n%s", code, out)
		}
		for _, f := range []string{"cpu.pprof", "heap.pprof"} {
			data, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if _, err := gzip.NewReader(bytes.NewReader(data)); err != nil {
				t.Errorf("%s is not a gzipped profile: %v", f, err)
			}
		}
	})
}

// checkChainTrace checks one request's spans: the client's proxy (client
// span, root), then per service a server span on its inbound proxy and,
// for a and b, a client span on its outbound proxy, each the parent of
// the next.
func checkChainTrace(spans []otlpsink.Span) error {
	if len(spans) != 6 {
		return fmt.Errorf("%d spans, want 6: %v", len(spans), spanNames(spans))
	}
	byID := map[string]otlpsink.Span{}
	var root *otlpsink.Span
	for i, s := range spans {
		byID[s.SpanID] = s
		if s.ParentSpanID == "" {
			if root != nil {
				return fmt.Errorf("two roots: %v", spanNames(spans))
			}
			root = &spans[i]
		}
	}
	if root == nil {
		return fmt.Errorf("no root: %v", spanNames(spans))
	}
	// Walk the chain from the root: each span has exactly one child.
	want := []struct{ kind, service string }{
		{"client", "client.default"}, {"server", "a.default"}, {"client", "a.default"},
		{"server", "b.default"}, {"client", "b.default"}, {"server", "c.default"},
	}
	cur := *root
	for i, w := range want {
		if kind := strings.ToLower(cur.Kind.String()); !strings.Contains(kind, w.kind) {
			return fmt.Errorf("span %d (%s of %s) has kind %s, want %s: %v", i, cur.Name, cur.Service, cur.Kind, w.kind, spanNames(spans))
		}
		if cur.Service != w.service {
			return fmt.Errorf("span %d is from %q, want %q: %v", i, cur.Service, w.service, spanNames(spans))
		}
		if i == len(want)-1 {
			break
		}
		var next *otlpsink.Span
		for j, s := range spans {
			if s.ParentSpanID == cur.SpanID {
				if next != nil {
					return fmt.Errorf("span %d has two children: %v", i, spanNames(spans))
				}
				next = &spans[j]
			}
		}
		if next == nil {
			return fmt.Errorf("span %d (%s %s) has no child: %v", i, cur.Service, cur.Kind, spanNames(spans))
		}
		cur = *next
	}
	return nil
}

func spanNames(spans []otlpsink.Span) []string {
	var out []string
	for _, s := range spans {
		out = append(out, fmt.Sprintf("%s/%s/%s(parent %s)", s.Service, s.Kind, s.SpanID, s.ParentSpanID))
	}
	return out
}

func readLogLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: line %q does not parse: %v", path, sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func countLines(lines []map[string]any, direction string) int {
	n := 0
	for _, l := range lines {
		if l["direction"] == direction && l["path"] == "/chain" {
			n++
		}
	}
	return n
}

func findEdge(t telemetry.Topology, src, dst string) *telemetry.Edge {
	for i, e := range t.Edges {
		if e.Source == src && e.Destination == dst {
			return &t.Edges[i]
		}
	}
	return nil
}

func findNode(t telemetry.Topology, svc string) *telemetry.Node {
	for i, n := range t.Nodes {
		if n.Service == svc {
			return &t.Nodes[i]
		}
	}
	return nil
}

// getJSON GETs path from the control plane's API as the admin.
func (c *cp) getJSON(t *testing.T, path string, v any) error {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.api+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.adminToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// startPrometheus runs Debian's Prometheus server on loopback, scraping
// the control plane and the proxies every second, and returns its URL.
// scripts/test.sh installs it; the test fails when it is missing.
func startPrometheus(t *testing.T, c *cp, proxies []*proxy) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus is not installed (scripts/test.sh installs Debian's package): %v", err)
	}
	var targets []string
	for _, p := range proxies {
		targets = append(targets, strconv.Quote(strings.TrimPrefix(p.admin, "http://")))
	}
	cpAddr := strings.TrimPrefix(c.api, "http://")
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: proxies
    metrics_path: /stats/prometheus
    static_configs: [{targets: [%s]}]
  - job_name: control-plane
    metrics_path: /metrics
    static_configs: [{targets: [%q]}]
`, strings.Join(targets, ", "), cpAddr)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", stderr.String())
		}
	})
	u := "http://" + addr
	eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(u + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("prometheus /-/ready: %s", resp.Status)
		}
		return nil
	})
	return u
}

// promQuery evaluates an instant PromQL query returning one number.
func promQuery(prom, q string) (float64, error) {
	resp, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("query %s: %s", q, r.Error)
	}
	if len(r.Data.Result) == 0 {
		return 0, fmt.Errorf("query %s: no result yet", q)
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}
