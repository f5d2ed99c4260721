package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
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

// TestHTTPProxyConnectMTLS: a CONNECT tunnel to an HTTP/1.1 service whose
// endpoint is a peer proxy with STRICT mutual TLS carries the
// application's HTTP/1.1 requests to the peer's application, and the peer
// served them as HTTP/1.1 over TLS (no protocol negotiated), not as h2;
// a tunnel to a TCP service's peer still offers verge-tcp.
func TestHTTPProxyConnectMTLS(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "web", nil)
	echo, _ := startEcho(t)
	peer := startProxy(t, identityConfig(in), inboundSnapshot(meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict}))
	tcpPeer := startProxy(t, identityConfig(in), inboundSnapshot(meshOpts{appAddr: echo, kind: config.ListenerTCP, mode: config.TLSStrict}))
	s := httpProxySnapshot(peer.addr(t, "inbound"), tcpPeer.addr(t, "inbound"))
	for name, alpn := range map[string]string{"web.default.mesh:80": "h2", "echo.default.mesh:5432": "verge-tcp"} {
		cl := s.Clusters[name]
		cl.Endpoints[0].TLS = true
		cl.TLS = &config.UpstreamTLS{CertSecret: config.SecretIdentity, CASecret: config.SecretTrustBundle,
			PeerIDs: []string{"spiffe://verge.local/ns/default/sa/backend"}, ALPN: []string{alpn}, SNI: name}
	}
	tp := startProxy(t, identityConfig(out), s)
	if err := connectEcho(tp.addr(t, "outbound_http_proxy"), "echo.default.mesh:5432"); err != nil {
		t.Errorf("tunnel to the TCP service: %v", err)
	}

	c, err := net.DialTimeout("tcp", tp.addr(t, "outbound_http_proxy"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	const authority = "web.default.mesh:80"
	if _, err := io.WriteString(c, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %v %v, want 200", authority, res, err)
	}
	// Two requests on the tunnel: it stays an HTTP/1.1 connection.
	for i, path := range []string{"/one", "/two"} {
		req, _ := http.NewRequest(http.MethodPost, "http://web.default.mesh"+path, strings.NewReader("hello"))
		if err := req.Write(c); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		res, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || string(body) != "web POST 5" || res.Header.Get("X-Seen-Path") != path {
			t.Fatalf("response %d: %d %q seen at %q, want 200 \"web POST 5\" at %s", i, res.StatusCode, body, res.Header.Get("X-Seen-Path"), path)
		}
	}
	if got := metricValue(t, peer.metrics.tlsHandshakes.WithLabelValues("inbound", "")); got != 1 {
		t.Errorf("peer's handshakes without a protocol = %v, want 1 (the tunnel)", got)
	}
}

// connectEcho opens a CONNECT tunnel to target through the HTTP proxy at
// proxyAddr and echoes a line through it.
func connectEcho(proxyAddr, target string) error {
	c, err := net.DialTimeout("tcp", proxyAddr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("CONNECT %s: %s", target, res.Status)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	if got, err := br.ReadString('\n'); err != nil || got != "ping\n" {
		return fmt.Errorf("echo through the tunnel: %q, %v", got, err)
	}
	return nil
}
