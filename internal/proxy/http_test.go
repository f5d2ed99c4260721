package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/config"
)

func TestHTTP1Routing(t *testing.T) {
	// With cluster c on HTTP/2 the listener is served by net/http; with all
	// clusters on HTTP/1.1 its connections go to the h1 fast path.
	for _, tc := range []struct {
		name   string
		proto  config.UpstreamProtocol
		cProto string
	}{{"net/http", config.UpstreamHTTP2, "HTTP/2.0"}, {"h1 fast path", config.UpstreamHTTP1, "HTTP/1.1"}} {
		t.Run(tc.name, func(t *testing.T) { testHTTP1Routing(t, tc.proto, tc.cProto) })
	}
}

func testHTTP1Routing(t *testing.T, cProtocol config.UpstreamProtocol, cProto string) {
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	c := startBackend(t, "c", nil)
	release := make(chan struct{})
	defer close(release)
	slow := startBackend(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{
		{Name: "api", Domains: []string{"api.example.com", "*.api.example.com"}, Routes: []*config.Route{
			{Name: "api", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("c")},
		}},
		{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
			{Name: "exact", Match: config.RouteMatch{Path: "/exact"}, Clusters: toCluster("b")},
			{Name: "regex", Match: config.RouteMatch{Regex: regexp.MustCompile(`^/re/[0-9]+$`)}, Clusters: toCluster("c")},
			{Name: "post", Match: config.RouteMatch{Prefix: "/m", Headers: []config.HeaderMatch{{Name: ":method", Exact: "POST"}}}, Clusters: toCluster("b")},
			{Name: "hdr", Match: config.RouteMatch{Prefix: "/h", Headers: []config.HeaderMatch{{Name: "x-canary", Exact: "1"}}}, Clusters: toCluster("b")},
			{Name: "empty", Match: config.RouteMatch{Prefix: "/empty"}, Clusters: toCluster("empty")},
			{Name: "missing", Match: config.RouteMatch{Prefix: "/missing"}, Clusters: toCluster("nosuch")},
			{Name: "dead", Match: config.RouteMatch{Prefix: "/dead"}, Clusters: toCluster("dead")},
			{Name: "slow", Match: config.RouteMatch{Prefix: "/slow"}, Clusters: toCluster("slow"), Timeout: 200 * time.Millisecond},
			{Name: "a", Match: config.RouteMatch{Prefix: "/a"}, Clusters: toCluster("a")},
			{Name: "h-default", Match: config.RouteMatch{Prefix: "/h"}, Clusters: toCluster("a")},
			{Name: "m-default", Match: config.RouteMatch{Prefix: "/m"}, Clusters: toCluster("a")},
		}},
	}}
	s := snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr),
		mkCluster("b", config.UpstreamHTTP1, config.LBRoundRobin, b.addr),
		mkCluster("c", cProtocol, config.LBLeastRequest, c.addr),
		mkCluster("empty", config.UpstreamHTTP1, config.LBRoundRobin),
		mkCluster("dead", config.UpstreamHTTP1, config.LBRoundRobin, deadAddr(t)),
		mkCluster("slow", config.UpstreamHTTP1, config.LBRoundRobin, slow.addr),
	)
	tp := startProxy(t, Config{}, s)
	base := "http://" + tp.addr(t, "http")
	client := h1Client(t)

	tests := []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		want   result
	}{
		{"prefix", "GET", "/a/x?q=1", nil, result{status: 200, backend: "a", body: "a GET 0", proto: "HTTP/1.1"}},
		{"exact path", "GET", "/exact", nil, result{status: 200, backend: "b", body: "b GET 0", proto: "HTTP/1.1"}},
		{"exact path does not prefix", "GET", "/exact/more", nil, result{status: 404, body: "no route\n"}},
		{"regex", "GET", "/re/42", nil, result{status: 200, backend: "c", body: "c GET 0", proto: cProto}},
		{"method match", "POST", "/m", nil, result{status: 200, backend: "b", body: "b POST 0", proto: "HTTP/1.1"}},
		{"method mismatch", "GET", "/m", nil, result{status: 200, backend: "a", body: "a GET 0", proto: "HTTP/1.1"}},
		{"header match", "GET", "/h", map[string]string{"X-Canary": "1"}, result{status: 200, backend: "b", body: "b GET 0", proto: "HTTP/1.1"}},
		{"header mismatch", "GET", "/h", map[string]string{"X-Canary": "2"}, result{status: 200, backend: "a", body: "a GET 0", proto: "HTTP/1.1"}},
		{"vhost exact", "GET", "/a", map[string]string{"Host": "api.example.com"}, result{status: 200, backend: "c", body: "c GET 0", proto: cProto}},
		{"vhost wildcard with port", "GET", "/a", map[string]string{"Host": "x.API.example.com:8080"}, result{status: 200, backend: "c", body: "c GET 0", proto: cProto}},
		{"hop headers removed", "GET", "/a", map[string]string{"Connection": "X-Hop", "X-Hop": "1"}, result{status: 200, backend: "a", body: "a GET 0", proto: "HTTP/1.1"}},
		{"no route", "GET", "/zzz", nil, result{status: 404, body: "no route\n"}},
		{"no endpoint", "GET", "/empty", nil, result{status: 503, body: "upstream connect error or no healthy upstream\n"}},
		{"no cluster", "GET", "/missing", nil, result{status: 503, body: "upstream connect error or no healthy upstream\n"}},
		{"connect failure", "GET", "/dead", nil, result{status: 503, body: "upstream connect error or no healthy upstream\n"}},
		{"timeout", "GET", "/slow", nil, result{status: 504, body: "upstream timeout\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustDo(t, client, tt.method, base+tt.path, tt.hdr)
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(result{})); diff != "" {
				t.Errorf("%s %s (-want +got):\n%s", tt.method, tt.path, diff)
			}
		})
	}

	t.Run("carried by the expected engine", func(t *testing.T) {
		h1Conns := metricValue(t, tp.metrics.h1UpstreamOpened)
		if want := cProtocol == config.UpstreamHTTP1; (h1Conns > 0) != want {
			t.Errorf("h1 engine opened %v upstream connections, want some: %v", h1Conns, want)
		}
	})

	t.Run("query and body forwarded", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", base+"/a/p%20q?x=1&y=2", strings.NewReader("hello"))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if got, want := res.Header.Get("X-Seen-Path"), "/a/p%20q?x=1&y=2"; got != want {
			t.Errorf("upstream saw %q, want %q", got, want)
		}
		if got, want := string(body), "a POST 5"; got != want {
			t.Errorf("body %q, want %q", got, want)
		}
		if res.Header.Get("X-Hop-Leaked") != "" {
			t.Errorf("hop-by-hop header reached the upstream")
		}
	})
}

func TestWeightedSplit(t *testing.T) {
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "split", Match: config.RouteMatch{Prefix: "/"}, TotalWeight: 100,
			Clusters: []config.WeightedCluster{{Name: "a", Weight: 80}, {Name: "b", Weight: 20}}},
	}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr),
		mkCluster("b", config.UpstreamHTTP1, config.LBRoundRobin, b.addr)))
	base := "http://" + tp.addr(t, "http")
	client := h1Client(t)
	const n = 1000
	got := map[string]int{}
	for range n {
		got[mustDo(t, client, "GET", base+"/", nil).backend]++
	}
	// Binomial(1000, 0.2) has a standard deviation of about 13; 8 of them
	// make a false failure practically impossible.
	if got["b"] < 200-100 || got["b"] > 200+100 || got["a"]+got["b"] != n {
		t.Errorf("split a=%d b=%d of %d, want about 800/200", got["a"], got["b"], n)
	}
}

func TestRoundRobinAndLeastRequest(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	blocking := startBackend(t, "blocking", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		w.Header().Set("X-Backend", "blocking")
	}))
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "rr", Match: config.RouteMatch{Prefix: "/rr"}, Clusters: toCluster("rr")},
		{Name: "lr", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("lr")},
	}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("rr", config.UpstreamHTTP1, config.LBRoundRobin, a.addr, b.addr),
		mkCluster("lr", config.UpstreamHTTP1, config.LBLeastRequest, blocking.addr, a.addr)))
	base := "http://" + tp.addr(t, "http")
	client := h1Client(t)

	t.Run("round robin", func(t *testing.T) {
		got := map[string]int{}
		for range 10 {
			got[mustDo(t, client, "GET", base+"/rr", nil).backend]++
		}
		if diff := cmp.Diff(map[string]int{"a": 5, "b": 5}, got); diff != "" {
			t.Errorf("round robin (-want +got):\n%s", diff)
		}
	})

	t.Run("least request avoids the busy endpoint", func(t *testing.T) {
		// Park a request on the blocking endpoint; from then on it is busier.
		var wg sync.WaitGroup
		defer wg.Wait()
		defer unblock()
		before0 := blocking.hits.Load() + a.hits.Load()
		for i := 0; blocking.hits.Load() < 1; i++ {
			if i == 200 {
				t.Fatalf("blocking endpoint got %d requests after %d tries", blocking.hits.Load(), i)
			}
			wg.Go(func() { _, _ = do(t, client, "GET", base+"/block", nil) })
			waitFor(t, "request parked", func() bool { return blocking.hits.Load()+a.hits.Load()-before0 > int64(i) })
		}
		before := blocking.hits.Load()
		for range 20 {
			if got := mustDo(t, client, "GET", base+"/x", nil); got.backend != "a" {
				t.Errorf("request went to %q, want the idle endpoint a", got.backend)
			}
		}
		if blocking.hits.Load() != before {
			t.Errorf("busy endpoint got %d more requests, want 0", blocking.hits.Load()-before)
		}
	})
}

func TestHTTP2PriorKnowledge(t *testing.T) {
	a := startBackend(t, "a", nil)
	c := startBackend(t, "c", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "c", Match: config.RouteMatch{Prefix: "/c"}, Clusters: toCluster("c")},
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr),
		mkCluster("c", config.UpstreamHTTP2, config.LBRoundRobin, c.addr)))
	base := "http://" + tp.addr(t, "http")
	client := h2cClient(t)
	for _, tc := range []struct{ path, backend, upstreamProto string }{
		{"/x", "a", "HTTP/1.1"}, {"/c", "c", "HTTP/2.0"},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", base+tc.path, strings.NewReader("abc"))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		got := []string{res.Proto, res.Header.Get("X-Backend"), res.Header.Get("X-Proto"), string(body)}
		want := []string{"HTTP/2.0", tc.backend, tc.upstreamProto, tc.backend + " POST 3"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.path, diff)
		}
	}
}

// TestH2CUpgrade speaks the RFC 7540 3.2 upgrade by hand: Go's clients do
// not implement it.
func TestH2CUpgrade(t *testing.T) {
	a := startBackend(t, "a", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr)))
	conn, err := net.Dial("tcp", tp.addr(t, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET /up HTTP/1.1\r\nHost: example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAA\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %s, want 101", res.Status)
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, br)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var headers []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { headers = append(headers, f) })
	var body bytes.Buffer
	for done := false; !done; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if f.StreamID != 1 {
				t.Fatalf("headers on stream %d, want 1", f.StreamID)
			}
			if _, err := dec.Write(f.HeaderBlockFragment()); err != nil {
				t.Fatal(err)
			}
			done = f.StreamEnded()
		case *http2.DataFrame:
			body.Write(f.Data())
			done = f.StreamEnded()
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		}
	}
	got := map[string]string{}
	for _, h := range headers {
		if h.Name == ":status" || h.Name == "x-backend" {
			got[h.Name] = h.Value
		}
	}
	if diff := cmp.Diff(map[string]string{":status": "200", "x-backend": "a"}, got); diff != "" {
		t.Errorf("upgraded response headers (-want +got):\n%s", diff)
	}
	if got, want := body.String(), "a GET 0"; got != want {
		t.Errorf("body %q, want %q", got, want)
	}
}

func TestTrailersAndStreaming(t *testing.T) {
	up := startBackend(t, "up", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Req-Trailer", r.Trailer.Get("X-Client-Trailer"))
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Sum", fmt.Sprint(n))
	}))
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "up", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("up")},
	}}}}
	for _, proto := range []config.UpstreamProtocol{config.UpstreamHTTP1, config.UpstreamHTTP2} {
		t.Run(fmt.Sprint("upstream protocol ", proto), func(t *testing.T) {
			tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
				mkCluster("up", proto, config.LBRoundRobin, up.addr)))
			for name, client := range map[string]*http.Client{"h1": h1Client(t), "h2c": h2cClient(t)} {
				req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://"+tp.addr(t, "http")+"/", io.NopCloser(strings.NewReader("12345")))
				req.ContentLength = -1
				req.Trailer = http.Header{"X-Client-Trailer": {"ct"}}
				res, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				got := []string{string(body), res.Trailer.Get("X-Sum"), res.Header.Get("X-Req-Trailer")}
				if diff := cmp.Diff([]string{"body", "5", "ct"}, got); diff != "" {
					t.Errorf("%s: body, response trailer, request trailer (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

func TestHotUpdateDuringRequests(t *testing.T) {
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	rt := func(cl string) *config.RouteTable {
		return &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
			{Name: "r", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster(cl)},
		}}}}
	}
	// Updates alternate the route's cluster, its balancer policy, its
	// endpoints and its connect timeout (which replaces its connection pool).
	// Every cluster speaks HTTP/1.1 so that the h1 fast path keeps carrying
	// the h1 client (see h1Router.Route for the HTTP/2 switch).
	snap := func(i int) *config.Snapshot {
		cl := []string{"x", "y"}[i%2]
		x := mkCluster("x", config.UpstreamHTTP1, config.LBRoundRobin, a.addr, b.addr)
		x.ConnectTimeout = time.Duration(1+i%3) * time.Second
		y := mkCluster("y", config.UpstreamHTTP1, config.LBLeastRequest, []string{a.addr, b.addr}[i%4/2:]...)
		return snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt(cl)}, x, y)
	}
	tp := startProxy(t, Config{}, snap(0))
	base := "http://" + tp.addr(t, "http")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var count int
	for _, client := range []*http.Client{h1Client(t), h2cClient(t)} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := do(t, client, "GET", base+"/", nil)
				mu.Lock()
				count++
				if err != nil || r.status != 200 {
					failures = append(failures, fmt.Sprintf("status %d err %v", r.status, err))
				}
				mu.Unlock()
			}
		})
	}
	for i := 1; i <= 50; i++ {
		tp.Update(snap(i))
		target := i * 4
		waitFor(t, "requests between updates", func() bool { mu.Lock(); defer mu.Unlock(); return count >= target })
	}
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Errorf("%d of %d requests failed across 50 updates, first: %s", len(failures), count, failures[0])
	}
}

func TestListenerReconcileAndAdmin(t *testing.T) {
	a := startBackend(t, "a", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	ca := mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr)
	one := httpListener1("one", "rt")
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{one}, []*config.RouteTable{rt}, ca))
	addrOne := tp.addr(t, "one")
	client := h1Client(t)

	two := httpListener1("two", "rt")
	tp.Update(snapshot([]*config.Listener{one, two}, []*config.RouteTable{rt}, ca))
	addrTwo := tp.addr(t, "two")
	if tp.addr(t, "one") != addrOne {
		t.Errorf("listener one moved from %s to %s on an unrelated update", addrOne, tp.addr(t, "one"))
	}
	if got := mustDo(t, client, "GET", "http://"+addrTwo+"/", nil); got.backend != "a" {
		t.Errorf("new listener: backend %q, want a", got.backend)
	}

	tp.Update(snapshot([]*config.Listener{two}, []*config.RouteTable{rt}, ca))
	waitFor(t, "listener one closed", func() bool {
		c, err := net.Dial("tcp", addrOne)
		if err == nil {
			c.Close()
			return false
		}
		return true
	})

	admin := startAdmin(t, tp.AdminHandler(AdminSources{HasConfig: func() bool { return true }, Status: func() any { return map[string]string{"xds": "connected"} }}))
	t.Run("ready", func(t *testing.T) {
		if got := mustDo(t, client, "GET", admin+"/ready", nil); got.status != 200 {
			t.Errorf("/ready = %d, want 200", got.status)
		}
		notYet := startAdmin(t, tp.AdminHandler(AdminSources{HasConfig: func() bool { return false }}))
		if got := mustDo(t, client, "GET", notYet+"/ready", nil); got.status != 503 {
			t.Errorf("/ready without xDS config = %d, want 503", got.status)
		}
	})
	t.Run("stats", func(t *testing.T) {
		// The h1 engine counts a request when the exchange ends, which
		// can be just after the client has read the response.
		for _, want := range []string{`verge_proxy_http_requests_total{cluster="a",code_class="2xx",listener="two"} 1`, "verge_proxy_upstream_connections_active"} {
			waitFor(t, "/stats/prometheus to have "+want, func() bool {
				return strings.Contains(mustDo(t, client, "GET", admin+"/stats/prometheus", nil).body, want)
			})
		}
	})
	t.Run("config_dump", func(t *testing.T) {
		got := mustDo(t, client, "GET", admin+"/config_dump", nil)
		var dump struct {
			Snapshot  config.Snapshot
			Listeners []struct{ Name, Bound string }
			Status    map[string]string
		}
		if err := json.Unmarshal([]byte(got.body), &dump); err != nil {
			t.Fatalf("config_dump is not JSON: %v", err)
		}
		if len(dump.Snapshot.Listeners) != 1 || dump.Snapshot.Listeners[0].Name != "two" || dump.Status["xds"] != "connected" ||
			len(dump.Listeners) != 1 || dump.Listeners[0].Bound != addrTwo {
			t.Errorf("config_dump = %s", got.body)
		}
	})
	t.Run("pprof", func(t *testing.T) {
		if got := mustDo(t, client, "GET", admin+"/debug/pprof/", nil); got.status != 200 || !strings.Contains(got.body, "goroutine") {
			t.Errorf("/debug/pprof/ = %d", got.status)
		}
	})
}

func startAdmin(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

func TestGracefulDrain(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := startBackend(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "finished")
	}))
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "slow", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("slow")},
	}}}}
	tp := startProxy(t, Config{DrainTimeout: 30 * time.Second}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("slow", config.UpstreamHTTP1, config.LBRoundRobin, slow.addr)))
	addr := tp.addr(t, "http")
	type outcome struct {
		r   result
		err error
	}
	results := make(chan outcome, 2)
	for _, client := range []*http.Client{h1Client(t), h2cClient(t)} {
		go func() {
			r, err := do(t, client, "GET", "http://"+addr+"/", nil)
			results <- outcome{r, err}
		}()
		<-arrived
	}
	tp.cancel()
	waitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return false
		}
		return isConnRefused(err)
	})
	if tp.Ready() {
		t.Errorf("Ready() = true while draining")
	}
	close(release)
	for range 2 {
		o := <-results
		if o.err != nil || o.r.status != 200 || o.r.body != "finished" {
			t.Errorf("in-flight request during drain: %+v, %v; want 200 finished", o.r, o.err)
		}
	}
	select {
	case err := <-tp.done:
		if err != nil {
			t.Errorf("Run() = %v", err)
		}
		close(tp.done)
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after drain")
	}
}

func TestDirectResponse(t *testing.T) {
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "pong", Match: config.RouteMatch{Path: "/ping"}, DirectResponse: &config.DirectResponse{Status: 200, Body: "pong"}},
		{Name: "gone", Match: config.RouteMatch{Path: "/gone"}, DirectResponse: &config.DirectResponse{Status: 410}},
	}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt}))
	base := "http://" + tp.addr(t, "http")
	for _, client := range []*http.Client{h1Client(t), h2cClient(t)} {
		got := []result{mustDo(t, client, "GET", base+"/ping", nil), mustDo(t, client, "GET", base+"/gone", nil)}
		if diff := cmp.Diff([]result{{status: 200, body: "pong"}, {status: 410}}, got, cmp.AllowUnexported(result{})); diff != "" {
			t.Errorf("direct responses (-want +got):\n%s", diff)
		}
	}
}
