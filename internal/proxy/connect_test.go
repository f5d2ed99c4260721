package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// httpProxySnapshot is what the translator sends for spec.httpProxy, as the
// xDS client converts it: web on port 80 (bare name and :80) over HTTP and
// CONNECT (and "web.default.mesh:*" without routes, so that other ports of
// the name are not taken for 80), echo on 5432 over CONNECT only.
func httpProxySnapshot(webAddr, echoAddr string) *config.Snapshot {
	connect := func(cluster string) *config.Route {
		return &config.Route{
			Name:     "connect",
			Match:    config.RouteMatch{Headers: []config.HeaderMatch{{Name: ":method", Exact: http.MethodConnect}}},
			Clusters: toCluster(cluster), TotalWeight: 1,
		}
	}
	const web, echo = "web.default.mesh:80", "echo.default.mesh:5432"
	rt := &config.RouteTable{Name: "http_proxy", VirtualHosts: []*config.VirtualHost{{
		Name:    web,
		Domains: []string{"web.default.mesh", web},
		Routes: []*config.Route{connect(web), {
			Name: "default", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster(web), TotalWeight: 1,
		}},
	}, {
		Name: "web.default.mesh:*", Domains: []string{"web.default.mesh:*"},
	}, {
		Name: echo, Domains: []string{echo}, Routes: []*config.Route{connect(echo)},
	}}}
	return snapshot([]*config.Listener{httpListener1("outbound_http_proxy", "http_proxy")}, []*config.RouteTable{rt},
		mkCluster(web, config.UpstreamHTTP1, config.LBRoundRobin, webAddr),
		mkCluster(echo, config.UpstreamHTTP1, config.LBRoundRobin, echoAddr))
}

// TestHTTPProxyAbsoluteForm: an unmodified client with HTTP_PROXY reaches a
// service by its mesh name through the real listener; other hosts get 404.
func TestHTTPProxyAbsoluteForm(t *testing.T) {
	web := startBackend(t, "web", nil)
	tp := startProxy(t, Config{}, httpProxySnapshot(web.addr, deadAddr(t)))
	proxyURL := &url.URL{Scheme: "http", Host: tp.addr(t, "outbound_http_proxy")}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL)}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	for _, u := range []string{"http://web.default.mesh/x?q=1", "http://web.default.mesh:80/x?q=1"} {
		res := mustDo(t, c, "GET", u, nil)
		if res.status != http.StatusOK || res.backend != "web" {
			t.Errorf("GET %s = %d from %q, want 200 from web", u, res.status, res.backend)
		}
	}
	for _, u := range []string{"http://nope.default.mesh/", "http://example.com/", "http://web.default.mesh:8080/"} {
		if res := mustDo(t, c, "GET", u, nil); res.status != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", u, res.status)
		}
	}
}

// TestHTTPProxyConnect tunnels to a TCP echo by mesh name and refuses any
// other authority without dialling it. The CONNECT handler is served
// alone by a loopback server over the running proxy's state, so that the
// test pins exactly its answers; the e2e suite covers it behind the real
// listener.
func TestHTTPProxyConnect(t *testing.T) {
	echo, echoConns := startEcho(t)
	tp := startProxy(t, Config{}, httpProxySnapshot(deadAddr(t), echo))
	l := &httpListener{p: tp.Proxy}
	l.cfg.Store(httpListener1("outbound_http_proxy", "http_proxy"))
	h := listenerHandler{p: tp.Proxy, l: l}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(h.serveConnect)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	connect := func(authority string) (net.Conn, *bufio.Reader, int) {
		t.Helper()
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatalf("CONNECT %s: %v", authority, err)
		}
		return c, br, res.StatusCode
	}

	c, br, status := connect("echo.default.mesh:5432")
	if status != http.StatusOK {
		t.Fatalf("CONNECT echo = %d, want 200", status)
	}
	for _, msg := range []string{"ping\n", "pong and more\n"} {
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo through tunnel = %q, %v; want %q", got, err, msg)
		}
	}
	// Half-close: the echo sees EOF and the tunnel ends both ways.
	_ = c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after half-close read %q, %v; want EOF", rest, err)
	}

	for _, a := range []string{"example.com:443", "127.0.0.1:22", "nope.default.mesh:80", "echo.default.mesh:5433", "echo.default.mesh"} {
		if _, _, status := connect(a); status != http.StatusNotFound {
			t.Errorf("CONNECT %s = %d, want 404", a, status)
		}
	}
	if n := echoConns(); n != 1 {
		t.Errorf("echo accepted %d connections, want 1 (refused CONNECTs must not dial)", n)
	}
}
