package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// trafficPaths runs a test on the h1 fast path (HTTP/1.1 clusters) and on
// net/http (HTTP/2 clusters).
func trafficPaths(t *testing.T, fn func(t *testing.T, proto config.UpstreamProtocol)) {
	for _, tc := range []struct {
		name  string
		proto config.UpstreamProtocol
	}{{"h1", config.UpstreamHTTP1}, {"nethttp", config.UpstreamHTTP2}} {
		t.Run(tc.name, func(t *testing.T) { fn(t, tc.proto) })
	}
}

// oneRoute is a snapshot with one listener and one route to cluster "c".
func oneRoute(r *config.Route, lt *config.ListenerTraffic, clusters ...*config.Cluster) *config.Snapshot {
	if m := r.Match; m.Prefix == "" && m.Path == "" && m.PathSeparatedPrefix == "" && m.Regex == nil {
		r.Match = config.RouteMatch{Prefix: "/"}
	}
	if r.Clusters == nil && (r.Traffic == nil || r.Traffic.Redirect == nil) {
		r.Clusters = toCluster("c")
	}
	l := httpListener1("http", "rt")
	l.Traffic = lt
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{r}}}}
	return snapshot([]*config.Listener{l}, []*config.RouteTable{rt}, clusters...)
}

func get(t *testing.T, c *http.Client, url string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func TestRetryRecoversFlakyServer(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		var n atomic.Int64
		flaky := startBackend(t, "flaky", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1)%2 == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, "ok")
		}))
		r := &config.Route{Name: "r", Traffic: &config.RouteTraffic{Retry: &config.RetryPolicy{Attempts: 2, On: []string{"5xx"}, BaseInterval: time.Millisecond}}}
		tp := startProxy(t, Config{}, oneRoute(r, nil, mkCluster("c", proto, config.LBRoundRobin, flaky.addr)))
		base := "http://" + tp.addr(t, "http")
		c := h1Client(t)
		for i := range 5 {
			if res := get(t, c, base+"/x", nil); res.StatusCode != http.StatusOK {
				t.Fatalf("request %d: status %d, want 200 after a retry", i, res.StatusCode)
			}
		}
		if got := n.Load(); got != 10 {
			t.Errorf("backend hits = %d, want 10 (each request once failed, once retried)", got)
		}
	})
}

func TestHeaderEditsAndRewrite(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		echo := startBackend(t, "echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Seen-Path", r.URL.RequestURI())
			w.Header().Set("X-Seen-Added", r.Header.Get("X-Added"))
			w.Header().Set("X-Seen-Dropped", r.Header.Get("X-Drop"))
			w.Header().Set("X-Internal", "secret")
		}))
		tests := []struct {
			name, prefix, repl, path, want string
		}{
			{"prefix", "/foo", "/bar", "/foo/x?q=1", "/bar/x?q=1"},
			{"to root", "/foo", "/", "/foo/x", "/x"},
			{"whole prefix", "/foo", "/bar", "/foo", "/bar"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := &config.Route{Name: "r", Match: config.RouteMatch{PathSeparatedPrefix: tc.prefix}, Traffic: &config.RouteTraffic{
					RequestHeaders:  config.HeaderMutation{Set: []config.Header{{Name: "x-added", Value: "yes"}}, Remove: []string{"x-drop"}},
					ResponseHeaders: config.HeaderMutation{Add: []config.Header{{Name: "x-resp", Value: "1"}}, Remove: []string{"x-internal"}},
					Rewrite:         &config.Rewrite{PrefixMatch: tc.prefix, PathPrefix: tc.repl},
				}}
				tp := startProxy(t, Config{}, oneRoute(r, nil, mkCluster("c", proto, config.LBRoundRobin, echo.addr)))
				res := get(t, h1Client(t), "http://"+tp.addr(t, "http")+tc.path, map[string]string{"X-Drop": "x"})
				got := map[string]string{
					"path": res.Header.Get("X-Seen-Path"), "added": res.Header.Get("X-Seen-Added"),
					"dropped": res.Header.Get("X-Seen-Dropped"), "resp": res.Header.Get("X-Resp"), "internal": res.Header.Get("X-Internal"),
				}
				want := map[string]string{"path": tc.want, "added": "yes", "dropped": "", "resp": "1", "internal": ""}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("got %v, want %v", got, want)
				}
			})
		}
	})
}

func TestRedirect(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		a := startBackend(t, "a", nil)
		r := &config.Route{Name: "r", Match: config.RouteMatch{Prefix: "/old"}, Traffic: &config.RouteTraffic{
			Redirect: &config.Redirect{Scheme: "https", Host: "example.com", PathPrefix: "/new", PrefixMatch: "/old", Status: 301}}}
		// A second route keeps the table on the protocol under test.
		s := oneRoute(r, nil, mkCluster("c", proto, config.LBRoundRobin, a.addr))
		vh := s.Routes["rt"].VirtualHosts[0]
		vh.Routes = append(vh.Routes, &config.Route{Name: "rest", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("c")})
		tp := startProxy(t, Config{}, s)
		c := h1Client(t)
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		res := get(t, c, "http://"+tp.addr(t, "http")+"/old/p?x=1", nil)
		if res.StatusCode != 301 || res.Header.Get("Location") != "https://example.com/new/p?x=1" {
			t.Errorf("got %d Location %q, want 301 https://example.com/new/p?x=1", res.StatusCode, res.Header.Get("Location"))
		}
	})
}

func TestFaultAbortShare(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		a := startBackend(t, "a", nil)
		r := &config.Route{Name: "r", Traffic: &config.RouteTraffic{Faults: []*config.Fault{{AbortHTTPStatus: 418, AbortPercent: 50, AbortGRPCStatus: -1}}}}
		tp := startProxy(t, Config{}, oneRoute(r, nil, mkCluster("c", proto, config.LBRoundRobin, a.addr)))
		base := "http://" + tp.addr(t, "http")
		c := h1Client(t)
		const n = 400
		aborted := 0
		for range n {
			switch res := get(t, c, base+"/", nil); res.StatusCode {
			case 418:
				aborted++
			case 200:
			default:
				t.Fatalf("status %d, want 200 or 418", res.StatusCode)
			}
		}
		// 50% of 400: 200 expected, sd 10; 6 sd either side.
		if aborted < 140 || aborted > 260 {
			t.Errorf("aborted %d of %d, want about half", aborted, n)
		}
	})
}

func TestFaultDelay(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		a := startBackend(t, "a", nil)
		r := &config.Route{Name: "r", Traffic: &config.RouteTraffic{Faults: []*config.Fault{{Delay: 50 * time.Millisecond, DelayPercent: 100, AbortGRPCStatus: -1}}}}
		tp := startProxy(t, Config{}, oneRoute(r, nil, mkCluster("c", proto, config.LBRoundRobin, a.addr)))
		start := time.Now()
		if res := get(t, h1Client(t), "http://"+tp.addr(t, "http")+"/", nil); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		// A lower bound only: a delay that was not applied is a bug, a
		// slow machine is not.
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Errorf("request took %v, want the 50ms delay", d)
		}
	})
}

func TestRateLimit429(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		a := startBackend(t, "a", nil)
		r := &config.Route{Name: "r", Traffic: &config.RouteTraffic{RateLimit: &config.RateLimit{MaxTokens: 2, TokensPerFill: 1, FillInterval: time.Hour}}}
		tp := startProxy(t, Config{}, oneRoute(r, nil, mkCluster("c", proto, config.LBRoundRobin, a.addr)))
		base := "http://" + tp.addr(t, "http")
		c := h1Client(t)
		for i := range 2 {
			if res := get(t, c, base+"/", nil); res.StatusCode != 200 {
				t.Fatalf("request %d: status %d, want 200 within the burst", i, res.StatusCode)
			}
		}
		res := get(t, c, base+"/", nil)
		if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" {
			t.Errorf("got %d retry-after %q, want 429 with retry-after", res.StatusCode, res.Header.Get("Retry-After"))
		}
	})
}

func TestMirrorReceivesCopies(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		a := startBackend(t, "a", nil)
		release := make(chan struct{})
		var hosts sync.Map
		shadow := startBackend(t, "shadow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hosts.Store(r.Host, true)
			// A slow shadow must not slow the caller.
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer close(release)
		r := &config.Route{Name: "r", Traffic: &config.RouteTraffic{Mirrors: []config.Mirror{{Cluster: "shadow", Percent: 100}}}}
		tp := startProxy(t, Config{}, oneRoute(r, nil,
			mkCluster("c", proto, config.LBRoundRobin, a.addr), mkCluster("shadow", proto, config.LBRoundRobin, shadow.addr)))
		base := "http://" + tp.addr(t, "http")
		c := h1Client(t)
		for range 5 {
			res := get(t, c, base+"/m", map[string]string{"Host": "svc"})
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
		}
		waitFor(t, "mirror copies", func() bool { return shadow.hits.Load() == 5 })
		if _, ok := hosts.Load("svc-shadow"); !ok {
			t.Errorf("mirror Host not svc-shadow")
		}
	})
}

func TestRingHashAffinityByHeader(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		var addrs []string
		for i := range 3 {
			addrs = append(addrs, startBackend(t, fmt.Sprint("b", i), nil).addr)
		}
		r := &config.Route{Name: "r", Traffic: &config.RouteTraffic{Hash: []config.HashPolicy{{Header: "x-user"}}}}
		tp := startProxy(t, Config{}, oneRoute(r, nil, mkCluster("c", proto, config.LBRingHash, addrs...)))
		base := "http://" + tp.addr(t, "http")
		c := h1Client(t)
		seen := map[string]map[string]bool{}
		for i := range 60 {
			user := fmt.Sprint("user", i%6)
			res := get(t, c, base+"/", map[string]string{"X-User": user})
			if seen[user] == nil {
				seen[user] = map[string]bool{}
			}
			seen[user][res.Header.Get("X-Backend")] = true
		}
		for u, b := range seen {
			if len(b) != 1 {
				t.Errorf("%s reached %v, want one backend", u, b)
			}
		}
	})
}

func TestSheddingKeepsCritical(t *testing.T) {
	trafficPaths(t, func(t *testing.T, proto config.UpstreamProtocol) {
		release := make(chan struct{})
		entered := make(chan struct{}, 16)
		slow := startBackend(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Class") == "bulk" {
				entered <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
		}))
		lt := &config.ListenerTraffic{Overload: &config.Overload{MaxConcurrent: 2, MaxQueue: 0, MaxQueueWait: time.Second,
			Header: "x-class", Classes: []string{"critical", "bulk"}, DefaultClass: "bulk"}}
		tp := startProxy(t, Config{}, oneRoute(&config.Route{Name: "r"}, lt, mkCluster("c", proto, config.LBRoundRobin, slow.addr)))
		base := "http://" + tp.addr(t, "http")
		c := h1Client(t)
		// One bulk request holds the only slot bulk may use (one of the
		// two is reserved for the highest class).
		var wg sync.WaitGroup
		wg.Go(func() { get(t, c, base+"/", map[string]string{"X-Class": "bulk"}) })
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("bulk request did not arrive")
		}
		if res := get(t, c, base+"/", map[string]string{"X-Class": "bulk"}); res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("second bulk: status %d, want 503 (shed)", res.StatusCode)
		}
		if res := get(t, c, base+"/", map[string]string{"X-Class": "critical"}); res.StatusCode != http.StatusOK {
			t.Errorf("critical: status %d, want 200 while bulk is shed", res.StatusCode)
		}
		close(release)
		wg.Wait()
	})
}
