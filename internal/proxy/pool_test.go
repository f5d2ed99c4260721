package proxy

import (
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"verge.dev/verge/internal/proxy/config"
)

// closeCountingBackend is an HTTP/1.1 server that counts the connections
// it saw closed.
func closeCountingBackend(t *testing.T, name string) (addr string, closed *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed = new(atomic.Int64)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-Backend", name) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				closed.Add(1)
			}
		},
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), closed
}

// Endpoints that leave the configuration lose their idle h1 upstream
// connections at once, not at the (long) idle timeout.
func TestH1PoolRetainsCurrentEndpoints(t *testing.T) {
	aAddr, aClosed := closeCountingBackend(t, "a")
	bAddr, bClosed := closeCountingBackend(t, "b")
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "c", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("c")},
	}}}}
	l := httpListener1("http", "rt")
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{l}, []*config.RouteTable{rt},
		mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, aAddr)))
	base := "http://" + tp.addr(t, "http")
	client := h1Client(t)
	if got := mustDo(t, client, "GET", base+"/", nil); got.backend != "a" {
		t.Fatalf("backend %q, want a", got.backend)
	}

	tp.Update(snapshot([]*config.Listener{l}, []*config.RouteTable{rt},
		mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, bAddr)))
	waitFor(t, "a's idle connection closed", func() bool { return aClosed.Load() == 1 })
	if got := mustDo(t, client, "GET", base+"/", nil); got.backend != "b" {
		t.Errorf("after the update: backend %q, want b", got.backend)
	}
	if got := bClosed.Load(); got != 0 {
		t.Errorf("b saw %d connections closed, want 0", got)
	}
}
