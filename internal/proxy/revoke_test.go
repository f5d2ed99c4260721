package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// withRevoked adds to s the trust bundle secret revoking the leaf
// certificates of ids, as the xDS client builds it from the CRL.
func withRevoked(s *config.Snapshot, ids ...*testIdentity) *config.Snapshot {
	set := map[string]struct{}{}
	for _, id := range ids {
		set[id.svid.Certificates[0].SerialNumber.Text(16)] = struct{}{}
	}
	s.Secrets = map[string]*config.Secret{config.SecretTrustBundle: {
		Name: config.SecretTrustBundle, TrustDomain: "verge.local", Revoked: set,
	}}
	return s
}

func TestRevokedPeerRefused(t *testing.T) {
	mesh, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)
	o := meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict, in: in, out: out}
	m := startMesh(t, o)

	t.Run("inbound refuses a revoked client", func(t *testing.T) {
		m.in.Update(withRevoked(inboundSnapshot(o), out))
		if _, err := mtlsClient(t, m.inAddr, out, "h2"); err == nil {
			t.Fatal("revoked client accepted")
		}
		waitFor(t, "revoked refusal counted", func() bool {
			return metricValue(t, m.in.metrics.tlsRefused.WithLabelValues("inbound", refusedRevoked)) == 1
		})
		// Another member of the mesh is still accepted.
		if _, err := mtlsClient(t, m.inAddr, mesh.identity(t, "default", "other"), "h2"); err != nil {
			t.Errorf("unrevoked client refused: %v", err)
		}
		m.in.Update(inboundSnapshot(o))
		if _, err := mtlsClient(t, m.inAddr, out, "h2"); err != nil {
			t.Errorf("client refused after its serial left the list: %v", err)
		}
	})

	t.Run("outbound refuses a revoked server", func(t *testing.T) {
		m.out.Update(withRevoked(outboundSnapshot(o, m.inAddr), in))
		if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil); r.status != http.StatusBadGateway {
			t.Errorf("status %d, want 502", r.status)
		}
		if got := metricValue(t, m.out.metrics.upstreamTLSFailed.WithLabelValues("svc", refusedRevoked)); got < 1 {
			t.Errorf("upstream revoked failures = %v, want at least 1", got)
		}
		m.out.Update(outboundSnapshot(o, m.inAddr))
		if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil); r.status != http.StatusOK {
			t.Errorf("status %d after the serial left the list, want 200", r.status)
		}
	})
}

// TestRevocationClosesOpenConns opens connections from two peers, revokes
// one, and checks that only its connections close, on both paths between
// proxies (the bridge for HTTP/1.1 applications, net/http's HTTP/2 for
// HTTP/2 ones) and for TCP.
func TestRevocationClosesOpenConns(t *testing.T) {
	for _, tc := range []struct {
		name     string
		kind     config.ListenerKind
		appProto config.UpstreamProtocol
	}{
		{"bridge", config.ListenerHTTP, config.UpstreamHTTP1},
		{"net/http", config.ListenerHTTP, config.UpstreamHTTP2},
	} {
		t.Run("inbound "+tc.name, func(t *testing.T) {
			mesh, in, outA := meshIdentities(t)
			outB := mesh.identity(t, "default", "other")
			app := startBackend(t, "app", nil)
			o := meshOpts{appAddr: app.addr, kind: tc.kind, appProto: tc.appProto, mode: config.TLSStrict, in: in, out: outA}
			m := startMesh(t, o)
			b := startProxy(t, identityConfig(outB), outboundSnapshot(o, m.inAddr))
			bAddr := b.addr(t, "outbound")

			client := h1Client(t)
			// net/http's path spreads requests over a connection per
			// transport: open them all, so that later requests need none.
			for range tlsConnsPerEndpoint {
				for _, addr := range []string{m.outAddr, bAddr} {
					if r := mustDo(t, client, "GET", "http://"+addr+"/", nil); r.status != http.StatusOK {
						t.Fatalf("GET via %s: status %d, want 200", addr, r.status)
					}
				}
			}
			activeA := m.out.metrics.upstreamActive.WithLabelValues("svc")
			activeB := b.metrics.upstreamActive.WithLabelValues("svc")
			openedB := b.metrics.upstreamOpened.WithLabelValues("svc")
			if metricValue(t, activeA) < 1 || metricValue(t, activeB) < 1 {
				t.Fatalf("connections between proxies: A %v, B %v; want both open", metricValue(t, activeA), metricValue(t, activeB))
			}
			openedBefore := metricValue(t, openedB)

			m.in.Update(withRevoked(inboundSnapshot(o), outA))
			waitFor(t, "revoked peer's connections closed", func() bool { return metricValue(t, activeA) == 0 })

			if r := mustDo(t, client, "GET", "http://"+m.outAddr+"/", nil); r.status == http.StatusOK {
				t.Errorf("revoked peer served after revocation")
			}
			for range tlsConnsPerEndpoint {
				if r := mustDo(t, client, "GET", "http://"+bAddr+"/", nil); r.status != http.StatusOK {
					t.Errorf("other peer: status %d, want 200", r.status)
				}
			}
			if got := metricValue(t, openedB); got != openedBefore {
				t.Errorf("other peer opened %v connections, want %v: its connection must stay", got, openedBefore)
			}
		})
	}

	t.Run("outbound", func(t *testing.T) {
		_, in, out := meshIdentities(t)
		app := startBackend(t, "app", nil)
		o := meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict, in: in, out: out}
		m := startMesh(t, o)
		if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil); r.status != http.StatusOK {
			t.Fatalf("status %d, want 200", r.status)
		}
		active := m.out.metrics.upstreamActive.WithLabelValues("svc")
		if metricValue(t, active) < 1 {
			t.Fatal("no connection between the proxies")
		}
		m.out.Update(withRevoked(outboundSnapshot(o, m.inAddr), in))
		waitFor(t, "connections to the revoked server closed", func() bool { return metricValue(t, active) == 0 })
	})

	t.Run("inbound tcp", func(t *testing.T) {
		mesh, in, outA := meshIdentities(t)
		outB := mesh.identity(t, "default", "other")
		echo, _ := startEcho(t)
		o := meshOpts{appAddr: echo, kind: config.ListenerTCP, mode: config.TLSStrict, in: in, out: outA}
		m := startMesh(t, o)
		b := startProxy(t, identityConfig(outB), outboundSnapshot(o, m.inAddr))

		ca := dialEcho(t, m.outAddr)
		cb := dialEcho(t, b.addr(t, "outbound"))
		m.in.Update(withRevoked(inboundSnapshot(o), outA))
		_ = ca.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := ca.Read(make([]byte, 8)); !closedByPeer(err) {
			t.Errorf("revoked peer's connection read %d bytes, %v; want it closed", n, err)
		}
		// The other one still echoes.
		echoOnce(t, cb)
	})
}

// dialEcho opens a connection through a TCP listener to the echo server
// and checks it echoes.
func dialEcho(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	echoOnce(t, c)
	return c
}

func echoOnce(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q, %v; want ping", buf, err)
	}
	_ = c.SetDeadline(time.Time{})
}

// TestStrictClosesPlaintext checks that plaintext keep-alive connections
// accepted while PERMISSIVE close once the listener is STRICT, on both the
// h1 engine's and net/http's paths, while connections over mutual TLS
// stay.
func TestStrictClosesPlaintext(t *testing.T) {
	for _, tc := range []struct {
		name     string
		appProto config.UpstreamProtocol
	}{
		{"h1 engine", config.UpstreamHTTP1},
		{"net/http", config.UpstreamHTTP2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, in, out := meshIdentities(t)
			app := startBackend(t, "app", nil)
			o := meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: tc.appProto, mode: config.TLSPermissive, in: in, out: out}
			m := startMesh(t, o)

			plain, err := net.Dial("tcp", m.inAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close()
			br := bufio.NewReader(plain)
			plainGet(t, plain, br)
			for range tlsConnsPerEndpoint {
				if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil); r.status != http.StatusOK {
					t.Fatalf("through mTLS: status %d, want 200", r.status)
				}
			}
			opened := m.out.metrics.upstreamOpened.WithLabelValues("svc")
			openedBefore := metricValue(t, opened)

			o.mode = config.TLSStrict
			m.in.Update(inboundSnapshot(o))

			_ = plain.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := br.ReadByte(); !closedByPeer(err) {
				t.Errorf("plaintext connection read %q, %v after STRICT; want it closed", b, err)
			}
			for range tlsConnsPerEndpoint {
				if r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil); r.status != http.StatusOK {
					t.Errorf("through mTLS after STRICT: status %d, want 200", r.status)
				}
			}
			if got := metricValue(t, opened); got != openedBefore {
				t.Errorf("outbound opened %v connections, want %v: the TLS connection must stay", got, openedBefore)
			}
		})
	}
}

// closedByPeer reports whether a read error says the other end closed the
// connection (not a deadline of ours).
func closedByPeer(err error) bool {
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// plainGet sends one keep-alive HTTP/1.1 request on c and reads the
// response.
func plainGet(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, "GET /plain HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Close || !strings.HasPrefix(string(body), "app GET") {
		t.Fatalf("plaintext GET: status %d, close %v, body %q; want 200 from app, kept alive", res.StatusCode, res.Close, body)
	}
}
