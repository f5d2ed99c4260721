package proxy

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// TestLazyNetHTTPAndTransports checks that what an idle proxy does not need
// is built on first use only: a listener's net/http side when a connection
// needs it, a cluster's transport when net/http forwards to it. HTTP/1.1 to
// HTTP/1.1 clusters needs neither.
func TestLazyNetHTTPAndTransports(t *testing.T) {
	a := startBackend(t, "a", nil)
	c := startBackend(t, "c", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "c", Match: config.RouteMatch{Prefix: "/c"}, Clusters: toCluster("c")},
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	cl := httpListener1("http", "rt")
	p := New(Config{}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	// Both clusters speak HTTP/1.1 at first, so the listener is h1-only.
	p.Update(snapshot([]*config.Listener{cl}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr),
		mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, c.addr)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := p.newHTTPListener(ln, cl)
	var wg sync.WaitGroup
	ctx, stop := context.WithCancel(context.Background())
	wg.Go(func() { l.serve(ctx) })
	t.Cleanup(func() {
		l.closeSocket()
		stop()
		l.drain(5 * time.Second)
		wg.Wait()
		for _, pl := range p.pools {
			pl.up.closeIdle()
		}
		p.h1Pool.Close()
	})
	base := "http://" + ln.Addr().String()
	hasNetHTTP := func() bool {
		l.netMu.Lock()
		defer l.netMu.Unlock()
		return l.nh != nil
	}
	built := func(cluster string) bool { return p.state.Load().clusters[cluster].up.t.Load() != nil }

	if got := mustDo(t, h1Client(t), "GET", base+"/", nil); got.backend != "a" {
		t.Fatalf("HTTP/1.1 request: backend %q, want a", got.backend)
	}
	if hasNetHTTP() || built("a") || built("c") {
		t.Errorf("after HTTP/1.1 through the h1 engine: net/http started %v, transports built a=%v c=%v; want none",
			hasNetHTTP(), built("a"), built("c"))
	}

	// HTTP/2 upstream for c: the listener leaves the h1 engine.
	p.Update(snapshot([]*config.Listener{cl}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr),
		mkCluster("c", config.UpstreamHTTP2, config.LBRoundRobin, c.addr)))
	l.setConfig(cl)
	if got := mustDo(t, h2cClient(t), "GET", base+"/c", nil); got.backend != "c" {
		t.Fatalf("HTTP/2 request: backend %q, want c", got.backend)
	}
	if !hasNetHTTP() || built("a") || !built("c") {
		t.Errorf("after HTTP/2 to c: net/http started %v, transports built a=%v c=%v; want net/http and c only",
			hasNetHTTP(), built("a"), built("c"))
	}
}
