package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/proxy/config"
)

// testCA issues SVIDs with the control plane's own CA code.
type testCA struct {
	td spiffeid.TrustDomain
	ca *ca.CA
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(td)
	c, err := ca.New(ca.Config{TrustDomain: d})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{td: d, ca: c}
}

// svid makes a key and has the CA sign it for ns/sa, as a proxy does.
func (c *testCA) svid(t testing.TB, ns, sa string) *x509svid.SVID {
	t.Helper()
	id := spiffeid.RequireFromPathf(c.td, "/ns/%s/sa/%s", ns, sa)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.ca.SignCSR(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// testIdentity is an x509svid.Source and x509bundle.Source whose SVID can
// be replaced while in use, as proxy/svid's is on renewal.
type testIdentity struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

// identity returns an SVID of c for ns/sa trusting c and the trust domains
// of federated.
func (c *testCA) identity(t testing.TB, ns, sa string, federated ...*testCA) *testIdentity {
	t.Helper()
	set := x509bundle.NewSet(c.ca.Bundle())
	for _, f := range federated {
		set.Add(f.ca.Bundle())
	}
	return &testIdentity{svid: c.svid(t, ns, sa), bundles: set}
}

func (i *testIdentity) GetX509SVID() (*x509svid.SVID, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.svid, nil
}

func (i *testIdentity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return i.bundles.GetX509BundleForTrustDomain(td)
}

func (i *testIdentity) setSVID(s *x509svid.SVID) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.svid = s
}

// mtlsClient dials addr with mutual TLS as id, trusting any peer of id's
// bundles, and reports whether the server accepted the connection: in TLS
// 1.3 the client finishes its handshake before the server has checked the
// client's certificate, so acceptance shows only in what the server sends
// next (an HTTP/2 SETTINGS frame; a refusal is an alert).
func mtlsClient(t *testing.T, addr string, id *testIdentity, alpn string) (*tls.ConnectionState, error) {
	t.Helper()
	cfg := tlsconfig.MTLSClientConfig(id, id, tlsconfig.AuthorizeAny())
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{alpn}
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	if alpn == "h2" {
		_, _ = io.WriteString(tc, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	}
	_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Read(make([]byte, 16)); err != nil {
		return nil, err
	}
	st := tc.ConnectionState()
	return &st, nil
}

// meshOpts describes a pair of proxies: an outbound one that the test's
// client talks to, and an inbound one in front of the application,
// connected with mutual TLS.
type meshOpts struct {
	appAddr  string
	kind     config.ListenerKind
	appProto config.UpstreamProtocol
	mode     config.TLSMode
	peerIDs  []string
	// in and out are the proxies' identities; nil means none.
	in, out *testIdentity
	noTLS   bool // plaintext between the proxies (benchmark baseline)
	// noBridge: net/http's HTTP/2 between the proxies, not the bridge.
	noBridge bool
	// policy applies issue 5's realistic policy set (policySet).
	policy bool
	// tel, when set, is both proxies' listeners' telemetry; a tracer's
	// collector cluster gets the endpoint collector.
	tel       *config.ListenerTelemetry
	collector string
}

// applyTelemetry sets o's telemetry on every listener of s.
func applyTelemetry(s *config.Snapshot, o meshOpts) *config.Snapshot {
	if o.tel == nil {
		return s
	}
	for _, l := range s.Listeners {
		l.Telemetry = o.tel
	}
	if tr := o.tel.Tracing; tr != nil {
		s.Clusters[tr.Collector] = &config.Cluster{Name: tr.Collector, LB: config.LBRoundRobin,
			Protocol: config.UpstreamHTTP2, Endpoints: []config.Endpoint{{Address: o.collector, Weight: 1}}}
	}
	return s
}

type meshPair struct {
	in, out         *testProxy
	inAddr, outAddr string
}

func alpnFor(kind config.ListenerKind) []string {
	if kind == config.ListenerTCP {
		return []string{"verge-tcp"}
	}
	return []string{"h2"}
}

func inboundSnapshot(o meshOpts) *config.Snapshot {
	l := &config.Listener{Name: "inbound", Address: "127.0.0.1:0", Kind: o.kind}
	if !o.noTLS {
		l.TLS = &config.DownstreamTLS{Mode: o.mode, CertSecret: config.SecretIdentity, CASecret: config.SecretTrustBundle, ALPN: alpnFor(o.kind)}
	}
	app := mkCluster("inbound:app", o.appProto, config.LBRoundRobin, o.appAddr)
	if o.kind == config.ListenerTCP {
		l.Cluster = app.Name
		return snapshot([]*config.Listener{l}, nil, app)
	}
	l.RouteName = "inbound"
	rt := &config.RouteTable{Name: "inbound", VirtualHosts: []*config.VirtualHost{{Name: "app", Domains: []string{"*"},
		Routes: []*config.Route{{Name: "all", Clusters: toCluster(app.Name)}}}}}
	if o.policy {
		// A rate limit that never refuses: its cost is what is measured.
		rt.VirtualHosts[0].Routes[0].Traffic = &config.RouteTraffic{RateLimit: &config.RateLimit{
			MaxTokens: 1_000_000, TokensPerFill: 1_000_000, FillInterval: time.Second}}
	}
	return snapshot([]*config.Listener{l}, []*config.RouteTable{rt}, app)
}

func outboundSnapshot(o meshOpts, inAddr string) *config.Snapshot {
	proto := o.appProto
	if o.kind == config.ListenerTCP {
		proto = config.UpstreamTCP
	}
	svc := mkCluster("svc", proto, config.LBRoundRobin)
	svc.Endpoints = []config.Endpoint{{Address: inAddr, Weight: 1, TLS: !o.noTLS}}
	if !o.noTLS {
		svc.TLS = &config.UpstreamTLS{CertSecret: config.SecretIdentity, CASecret: config.SecretTrustBundle,
			PeerIDs: o.peerIDs, ALPN: alpnFor(o.kind), SNI: "svc.default.mesh"}
	}
	l := &config.Listener{Name: "outbound", Address: "127.0.0.1:0", Kind: o.kind}
	if o.kind == config.ListenerTCP {
		l.Cluster = svc.Name
		return snapshot([]*config.Listener{l}, nil, svc)
	}
	l.RouteName = "svc"
	rt := &config.RouteTable{Name: "svc", VirtualHosts: []*config.VirtualHost{{Name: "svc", Domains: []string{"*"},
		Routes: []*config.Route{{Name: "all", Clusters: toCluster(svc.Name)}}}}}
	if o.policy {
		applyPolicySet(rt.VirtualHosts[0], svc)
	}
	return snapshot([]*config.Listener{l}, []*config.RouteTable{rt}, svc)
}

// applyPolicySet is the client side of issue 5's realistic policy set, as
// bench/cmd/meshbench applies it through the API: 20 routes (the request
// matches the last), retries, a breaker and outlier detection, none of
// them refusing a request.
func applyPolicySet(vh *config.VirtualHost, svc *config.Cluster) {
	all := vh.Routes[len(vh.Routes)-1]
	all.Traffic = &config.RouteTraffic{Retry: &config.RetryPolicy{Attempts: 2, On: []string{"5xx", "connect-failure", "reset"},
		BaseInterval: 25 * time.Millisecond, MaxInterval: 250 * time.Millisecond}}
	routes := make([]*config.Route, 0, 20)
	for i := 1; i < 20; i++ {
		routes = append(routes, &config.Route{Name: fmt.Sprintf("r%d", i), Clusters: toCluster(svc.Name),
			Match:   config.RouteMatch{PathSeparatedPrefix: fmt.Sprintf("/api/v%d", i), Headers: []config.HeaderMatch{{Name: "x-tenant", Exact: fmt.Sprintf("t%d", i)}}},
			Traffic: all.Traffic})
	}
	vh.Routes = append(routes, all)
	svc.Traffic = &config.ClusterTraffic{
		CircuitBreaker: &config.CircuitBreaker{MaxConnections: 100000, MaxPendingRequests: 100000, MaxRequests: 100000, MaxRetries: 1000},
		RetryBudget:    &config.RetryBudget{Percent: 20, MinRetriesPerSecond: 10},
		Outlier:        &config.OutlierDetection{Consecutive5xx: 5, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10},
	}
}

func identityConfig(id *testIdentity) Config {
	if id == nil {
		return Config{}
	}
	return Config{SVID: id, Bundle: id}
}

func startMesh(t testing.TB, o meshOpts) *meshPair {
	t.Helper()
	if o.kind == 0 {
		o.kind = config.ListenerHTTP
	}
	if o.appProto == 0 {
		o.appProto = config.UpstreamHTTP1
	}
	if o.mode == 0 {
		o.mode = config.TLSStrict
	}
	m := &meshPair{}
	cfgIn, cfgOut := identityConfig(o.in), identityConfig(o.out)
	cfgIn.DisableH2Bridge, cfgOut.DisableH2Bridge = o.noBridge, o.noBridge
	m.in = startProxy(t, cfgIn, applyTelemetry(inboundSnapshot(o), o))
	m.inAddr = m.in.addr(t, "inbound")
	m.out = startProxy(t, cfgOut, applyTelemetry(outboundSnapshot(o, m.inAddr), o))
	m.outAddr = m.out.addr(t, "outbound")
	return m
}

// meshIdentities returns the two proxies' identities from one CA.
func meshIdentities(t testing.TB) (c *testCA, in, out *testIdentity) {
	c = newTestCA(t, "verge.local")
	return c, c.identity(t, "default", "backend"), c.identity(t, "default", "frontend")
}

func TestMTLSHTTP1CarriedOverHTTP2(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)
	m := startMesh(t, meshOpts{appAddr: app.addr, in: in, out: out, peerIDs: []string{"spiffe://verge.local/ns/default/sa/backend"}})
	client := h1Client(t)

	for i := range 50 {
		method := "GET"
		if i%2 == 1 {
			method = "POST"
		}
		req, err := http.NewRequestWithContext(t.Context(), method, "http://"+m.outAddr+"/p?q=1", strings.NewReader(strings.Repeat("x", i)))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "svc.default.mesh"
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Header.Get("X-Proto") != "HTTP/1.1" || res.Header.Get("X-Seen-Path") != "/p?q=1" {
			t.Fatalf("request %d: status %d, app saw %q %q, body %q; want 200 over HTTP/1.1 at /p?q=1",
				i, res.StatusCode, res.Header.Get("X-Proto"), res.Header.Get("X-Seen-Path"), body)
		}
		if want := "app " + method; !strings.HasPrefix(string(body), want) {
			t.Fatalf("request %d: body %q, want prefix %q", i, body, want)
		}
	}
	// The hop between the proxies was HTTP/2 over TLS, multiplexed over a
	// few connections rather than one per request.
	if got := metricValue(t, m.in.metrics.tlsHandshakes.WithLabelValues("inbound", "h2")); got < 1 || got > tlsConnsPerEndpoint {
		t.Errorf("inbound h2 handshakes = %v, want 1..%d", got, tlsConnsPerEndpoint)
	}
	if got := metricValue(t, m.out.metrics.upstreamOpened.WithLabelValues("svc")); got < 1 || got > tlsConnsPerEndpoint {
		t.Errorf("outbound connections opened = %v, want 1..%d", got, tlsConnsPerEndpoint)
	}
	if got := app.hits.Load(); got != 50 {
		t.Errorf("app served %d requests, want 50", got)
	}
}

func TestMTLSStrictRefusesPlaintext(t *testing.T) {
	_, in, _ := meshIdentities(t)
	app := startBackend(t, "app", nil)
	tp := startProxy(t, identityConfig(in), inboundSnapshot(meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict}))
	addr := tp.addr(t, "inbound")

	for i, probe := range []string{"GET / HTTP/1.1\r\nHost: app\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, probe)
		n, err := c.Read(make([]byte, 64))
		c.Close()
		if n != 0 || err == nil {
			t.Errorf("probe %d: read %d bytes, err %v; want the connection closed unanswered", i, n, err)
		}
	}
	if got := metricValue(t, tp.metrics.tlsRefused.WithLabelValues("inbound", refusedPlaintext)); got != 2 {
		t.Errorf("plaintext refusals = %v, want 2", got)
	}
	if app.hits.Load() != 0 {
		t.Errorf("app reached by plaintext")
	}
}

func TestMTLSPermissiveAcceptsBoth(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)
	m := startMesh(t, meshOpts{appAddr: app.addr, in: in, out: out, mode: config.TLSPermissive})

	if r := mustDo(t, h1Client(t), "GET", "http://"+m.inAddr+"/plain", nil); r.status != http.StatusOK || r.backend != "app" {
		t.Errorf("plaintext HTTP/1.1: %+v, want 200 from app", r)
	}
	if r := mustDo(t, h2cClient(t), "GET", "http://"+m.inAddr+"/h2c", nil); r.status != http.StatusOK || r.backend != "app" {
		t.Errorf("plaintext h2c: %+v, want 200 from app", r)
	}
	if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/tls", nil); r.status != http.StatusOK || r.backend != "app" {
		t.Errorf("through mTLS: %+v, want 200 from app", r)
	}
	if got := metricValue(t, m.in.metrics.tlsHandshakes.WithLabelValues("inbound", "h2")); got < 1 {
		t.Errorf("inbound h2 handshakes = %v, want at least 1", got)
	}
}

func TestMTLSGRPC(t *testing.T) {
	_, in, out := meshIdentities(t)
	m := startMesh(t, meshOpts{appAddr: startGRPCBackend(t, "g1"), appProto: config.UpstreamHTTP2, in: in, out: out})
	client, _ := grpcClient(t, m.outAddr)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	res, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 100})
	if err != nil || res.GetHostname() != "g1" || len(res.GetPayload().GetBody()) != 100 {
		t.Fatalf("unary: %v, %v; want 100 bytes from g1", res, err)
	}
	stream, err := client.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}, {Size: 2}, {Size: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("server stream: %v", err)
		}
		n++
	}
	if n != 3 {
		t.Errorf("server stream: %d messages, want 3", n)
	}
	bidi, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchangeFullDuplex(t, bidi, 5)
	if err := bidi.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bidi.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("bidi end: %v, want EOF", err)
	}
}

// exchangeFullDuplex sends n requests on s, each answered before the next.
func exchangeFullDuplex(t *testing.T, s grpc.BidiStreamingClient[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse], n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if err := s.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: int32(i)}}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		msg, err := s.Recv()
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if len(msg.GetPayload().GetBody()) != i {
			t.Fatalf("recv %d: %d bytes", i, len(msg.GetPayload().GetBody()))
		}
	}
}

func TestMTLSTCP(t *testing.T) {
	_, in, out := meshIdentities(t)
	echo, _ := startEcho(t)
	m := startMesh(t, meshOpts{appAddr: echo, kind: config.ListenerTCP, in: in, out: out})

	payload := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB
	c, err := net.Dial("tcp", m.outAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var got []byte
	var wg sync.WaitGroup
	wg.Go(func() { got, _ = io.ReadAll(c) })
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	wg.Wait()
	if !bytes.Equal(got, payload) {
		t.Errorf("echoed %d bytes, want the %d sent", len(got), len(payload))
	}
	if got := metricValue(t, m.in.metrics.tlsHandshakes.WithLabelValues("inbound", "verge-tcp")); got != 1 {
		t.Errorf("inbound verge-tcp handshakes = %v, want 1", got)
	}

	// Plaintext to the strict TCP listener is closed before the echo.
	pc, err := net.Dial("tcp", m.inAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(pc, "hello")
	if n, err := pc.Read(make([]byte, 8)); n != 0 || err == nil {
		t.Errorf("plaintext to strict tcp listener read %d bytes, err %v; want closed", n, err)
	}
}

func TestMTLSRefusesPeers(t *testing.T) {
	mesh, in, out := meshIdentities(t)
	other := newTestCA(t, "verge.local") // same trust domain, another root
	foreign := newTestCA(t, "other.local")
	app := startBackend(t, "app", nil)
	// The inbound proxy trusts other.local's root (federation), so a
	// certificate of that trust domain verifies and is refused only for
	// not being a member of verge.local.
	in.bundles.Add(foreign.ca.Bundle())
	m := startMesh(t, meshOpts{appAddr: app.addr, in: in, out: out})

	t.Run("peer id not in PeerIDs", func(t *testing.T) {
		o := meshOpts{kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, peerIDs: []string{"spiffe://verge.local/ns/default/sa/someone-else"}}
		wrong := startProxy(t, identityConfig(out), outboundSnapshot(o, m.inAddr))
		r := mustDo(t, h1Client(t), "GET", "http://"+wrong.addr(t, "outbound")+"/", nil)
		if r.status != http.StatusBadGateway {
			t.Errorf("status %d, want 502", r.status)
		}
		if got := metricValue(t, wrong.metrics.upstreamTLSFailed.WithLabelValues("svc", refusedBadCert)); got < 1 {
			t.Errorf("upstream bad_certificate failures = %v, want at least 1", got)
		}
	})

	clientWith := func(svid *x509svid.SVID) *testIdentity {
		return &testIdentity{svid: svid, bundles: x509bundle.NewSet(mesh.ca.Bundle())}
	}
	tests := []struct {
		name   string
		id     *testIdentity
		reason string
	}{
		{"certificate of another ca", clientWith(other.svid(t, "default", "frontend")), refusedBadCert},
		{"certificate of another trust domain", clientWith(foreign.svid(t, "default", "frontend")), refusedBadCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := metricValue(t, m.in.metrics.tlsRefused.WithLabelValues("inbound", tt.reason))
			if _, err := mtlsClient(t, m.inAddr, tt.id, "h2"); err == nil {
				t.Fatal("connection accepted, want refused")
			}
			waitFor(t, "refusal counted", func() bool {
				return metricValue(t, m.in.metrics.tlsRefused.WithLabelValues("inbound", tt.reason)) == before+1
			})
		})
	}

	t.Run("no client certificate", func(t *testing.T) {
		cfg := tlsconfig.TLSClientConfig(in, tlsconfig.AuthorizeAny())
		cfg.NextProtos = []string{"h2"}
		c, err := tls.Dial("tcp", m.inAddr, cfg)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Fatal("connection accepted, want refused")
		}
		waitFor(t, "refusal counted", func() bool {
			return metricValue(t, m.in.metrics.tlsRefused.WithLabelValues("inbound", refusedNoClientCert)) == 1
		})
	})

	t.Run("mesh member accepted", func(t *testing.T) {
		st, err := mtlsClient(t, m.inAddr, out, "h2")
		if err != nil {
			t.Fatal(err)
		}
		if st.NegotiatedProtocol != "h2" || st.Version != tls.VersionTLS13 {
			t.Errorf("negotiated %q version %x, want h2 over TLS 1.3", st.NegotiatedProtocol, st.Version)
		}
	})
	if app.hits.Load() != 0 {
		t.Errorf("app reached by a refused peer")
	}
}

func TestMTLSWithoutIdentity(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)

	// An inbound proxy without identity refuses TLS, never downgrades.
	noIn := startProxy(t, Config{}, inboundSnapshot(meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict}))
	if _, err := mtlsClient(t, noIn.addr(t, "inbound"), out, "h2"); err == nil {
		t.Error("TLS accepted by a proxy without identity")
	}
	if got := metricValue(t, noIn.metrics.tlsRefused.WithLabelValues("inbound", refusedNoIdentity)); got != 1 {
		t.Errorf("no_identity refusals = %v, want 1", got)
	}

	// An outbound proxy without identity fails requests to TLS endpoints.
	m := startMesh(t, meshOpts{appAddr: app.addr, in: in, out: nil})
	for range 2 {
		if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil); r.status != http.StatusBadGateway {
			t.Errorf("status %d, want 502", r.status)
		}
	}
	if app.hits.Load() != 0 {
		t.Errorf("app reached without identity")
	}
}

func TestMTLSRotationKeepsStreams(t *testing.T) {
	mesh, in, out := meshIdentities(t)
	m := startMesh(t, meshOpts{appAddr: startGRPCBackend(t, "g1"), appProto: config.UpstreamHTTP2, in: in, out: out})
	client, _ := grpcClient(t, m.outAddr)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchangeFullDuplex(t, stream, 3)

	oldSerial := in.svid.Certificates[0].SerialNumber
	renewedIn := mesh.svid(t, "default", "backend")
	in.setSVID(renewedIn)
	out.setSVID(mesh.svid(t, "default", "frontend"))

	// The stream opened under the old certificates goes on.
	exchangeFullDuplex(t, stream, 3)
	// A new handshake gets the renewed certificate.
	st, err := mtlsClient(t, m.inAddr, out, "h2")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.PeerCertificates[0].SerialNumber, renewedIn.Certificates[0].SerialNumber; got.Cmp(want) != 0 || got.Cmp(oldSerial) == 0 {
		t.Errorf("new handshake got certificate serial %v, want the renewed %v", got, want)
	}
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
		t.Errorf("unary after renewal: %v", err)
	}
	exchangeFullDuplex(t, stream, 2)
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("stream end: %v, want EOF", err)
	}
}
