package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// freeAddr returns a loopback address the kernel just handed out and that
// nothing listens on, for tests that must reuse one address.
func freeAddr(t *testing.T) string {
	t.Helper()
	return deadAddr(t)
}

// tcpEcho sends msg over a new connection to addr, half-closes, and returns
// what came back.
func tcpEcho(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// boundAs waits until the proxy has reconciled a listener named name.
func boundAs(t *testing.T, tp *testProxy, name string) {
	t.Helper()
	waitFor(t, "listener "+name+" bound", func() bool { return tp.ListenerAddr(name) != nil })
}

// A listener that keeps its name and address but changes kind is reopened
// with the new kind, in both directions.
func TestListenerKindChange(t *testing.T) {
	echo, _ := startEcho(t)
	addr := freeAddr(t)
	asHTTP := &config.Listener{Name: "l", Address: addr, Kind: config.ListenerHTTP, RouteName: "missing"}
	asTCP := &config.Listener{Name: "l", Address: addr, Kind: config.ListenerTCP, Cluster: "echo"}
	echoCluster := mkCluster("echo", config.UpstreamTCP, config.LBRoundRobin, echo)
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{asHTTP}, nil, echoCluster))
	client := h1Client(t)
	if got := mustDo(t, client, "GET", "http://"+addr+"/", nil); got.status != http.StatusNotFound {
		t.Fatalf("HTTP listener: status %d, want 404", got.status)
	}

	tp.Update(snapshot([]*config.Listener{asTCP}, nil, echoCluster))
	var got string
	var err error
	waitFor(t, "raw TCP echoed through the listener", func() bool {
		got, err = tcpEcho(addr, "hello\n")
		return err == nil && got == "hello\n"
	})

	client.CloseIdleConnections()
	tp.Update(snapshot([]*config.Listener{asHTTP}, nil, echoCluster))
	waitFor(t, "HTTP served again", func() bool {
		r, err := do(t, client, "GET", "http://"+addr+"/", nil)
		return err == nil && r.status == http.StatusNotFound
	})
	if !tp.Ready() {
		t.Error("Ready() = false after the kind changes")
	}
}

// A listener renamed on the same address binds at once: the old socket is
// closed before the new one opens.
func TestListenerRenameSameAddress(t *testing.T) {
	a := startBackend(t, "a", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	ca := mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr)
	addr := freeAddr(t)
	old := &config.Listener{Name: "old", Address: addr, Kind: config.ListenerHTTP, RouteName: "rt"}
	renamed := &config.Listener{Name: "new", Address: addr, Kind: config.ListenerHTTP, RouteName: "rt"}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{old}, []*config.RouteTable{rt}, ca))
	client := h1Client(t)
	if got := mustDo(t, client, "GET", "http://"+addr+"/", nil); got.backend != "a" {
		t.Fatalf("before the rename: backend %q, want a", got.backend)
	}

	tp.Update(snapshot([]*config.Listener{renamed}, []*config.RouteTable{rt}, ca))
	boundAs(t, tp, "new")
	if !tp.Ready() {
		t.Errorf("Ready() = false after the rename: the new listener did not bind")
	}
	client.CloseIdleConnections()
	if got := mustDo(t, client, "GET", "http://"+addr+"/", nil); got.backend != "a" {
		t.Errorf("after the rename: backend %q, want a", got.backend)
	}
}

// A listener whose address is taken is retried until it binds.
func TestListenerRetry(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := holder.Addr().String()
	p := startProxy(t, Config{}, snapshot(nil, nil))
	p.Update(snapshot([]*config.Listener{{Name: "l", Address: addr, Kind: config.ListenerHTTP, RouteName: "rt"}}, nil))
	waitFor(t, "not ready while the address is taken", func() bool { return !p.Ready() })
	holder.Close()
	boundAs(t, p, "l")
	waitFor(t, "ready once the listener is retried", p.Ready)
}

// On shutdown the proxy reports not ready at once, keeps serving new
// connections for DrainDelay, and only then refuses connects.
func TestShutdownDrainDelay(t *testing.T) {
	const delay = 3 * time.Second
	a := startBackend(t, "a", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	tp := startProxy(t, Config{DrainDelay: delay}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr)))
	addr := tp.addr(t, "http")
	admin := startAdmin(t, tp.AdminHandler(AdminSources{}))
	adminClient := h1Client(t)
	if got := mustDo(t, adminClient, "GET", admin+"/ready", nil); got.status != 200 {
		t.Fatalf("/ready = %d before shutdown, want 200", got.status)
	}

	start := time.Now()
	tp.cancel()
	waitFor(t, "not ready", func() bool { return !tp.Ready() })
	ready := mustDo(t, adminClient, "GET", admin+"/ready", nil)
	// A fresh client, so that the request needs a new connection.
	served, err := do(t, h1Client(t), "GET", "http://"+addr+"/", nil)
	// The assertions hold only inside the delay; a machine too slow to
	// get here in time proves nothing either way.
	if time.Since(start) < delay {
		if ready.status != http.StatusServiceUnavailable {
			t.Errorf("/ready = %d during the drain delay, want 503", ready.status)
		}
		if err != nil || served.backend != "a" {
			t.Errorf("new connection during the drain delay: %+v, %v; want served by a", served, err)
		}
	} else {
		t.Logf("drain delay passed before the checks (%v); skipped them", time.Since(start))
	}
	waitFor(t, "connects refused after the delay", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return false
		}
		return isConnRefused(err)
	})
	if elapsed := time.Since(start); elapsed < delay {
		t.Errorf("listener closed after %v, before the %v drain delay", elapsed, delay)
	}
}

// Series of a cluster that left the configuration are no longer exported.
func TestClusterMetricsDeleted(t *testing.T) {
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	route := func(clusters ...string) *config.RouteTable {
		var routes []*config.Route
		for _, c := range clusters {
			routes = append(routes, &config.Route{Name: c, Match: config.RouteMatch{Prefix: "/" + c}, Clusters: toCluster(c)})
		}
		return &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: routes}}}
	}
	l := httpListener1("http", "rt")
	ca := mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr)
	cb := mkCluster("b", config.UpstreamHTTP2, config.LBRoundRobin, b.addr)
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{l}, []*config.RouteTable{route("a", "b")}, ca, cb))
	base := "http://" + tp.addr(t, "http")
	client := h1Client(t)
	for _, path := range []string{"/a", "/b"} {
		if got := mustDo(t, client, "GET", base+path, nil); got.status != 200 {
			t.Fatalf("GET %s: %d", path, got.status)
		}
	}
	admin := startAdmin(t, tp.AdminHandler(AdminSources{}))
	stats := func() string { return mustDo(t, client, "GET", admin+"/stats/prometheus", nil).body }
	if s := stats(); !strings.Contains(s, `cluster="b"`) || !strings.Contains(s, `cluster="a"`) {
		t.Fatalf("/stats/prometheus lacks the clusters' series:\n%s", s)
	}

	tp.Update(snapshot([]*config.Listener{l}, []*config.RouteTable{route("a")}, ca))
	s := stats()
	if strings.Contains(s, `cluster="b"`) {
		t.Errorf("/stats/prometheus still exports removed cluster b:\n%s", grepLines(s, `cluster="b"`))
	}
	if !strings.Contains(s, `cluster="a"`) {
		t.Errorf("/stats/prometheus lost kept cluster a")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}
