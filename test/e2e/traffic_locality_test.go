package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// holdApp is an app whose /hold requests wait until release is closed (or
// a minute passes), so that a test can keep a server's concurrency taken
// for as long as it needs; every other path is the app's.
type holdApp struct {
	*app
	held    atomic.Int64
	release chan struct{}
}

func (h *holdApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/hold" {
		h.app.ServeHTTP(w, r)
		return
	}
	h.held.Add(1)
	defer h.held.Add(-1)
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-h.release:
	case <-t.C:
	case <-r.Context().Done():
	}
	fmt.Fprintf(w, "%s %s %s", h.name, r.Method, r.URL.Path)
}

// TestLocalityOverload: a caller in zone a reaches only the endpoint in
// zone a while it has capacity. When a slow request takes all of that
// endpoint's inbound concurrency (overload maxConcurrent 1, queue 1 for
// 50 ms), its proxy sheds with 503, the caller marks it overloaded, and
// traffic spills to zone b (the retry on 5xx already avoids it, so the
// caller sees no error); when the slow request ends, traffic comes back.
func TestLocalityOverload(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-overload}
spec:
  targetRef: {kind: Service, name: backend}
  overload: {maxConcurrent: 1, maxQueue: 1, maxQueueWait: 50ms}
  retry: {attempts: 2, retryOn: [5xx]}
`)
	near := &holdApp{app: &app{name: "near", host: newHost()}, release: make(chan struct{})}
	serveHTTP(t, near.host.addr(8080), near)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(near.release) }) }
	t.Cleanup(release)
	far := startApp(t, "far")
	pn := startWorkload(t, c, near.app, "app=backend,zone=a,region=r1")
	pf := startWorkload(t, c, far, "app=backend,zone=b,region=r1")
	client, fe := startClient(t, c, "app=client,zone=a,region=r1", "backend:80=10001")
	waitAllReady(t, pn, pf, client)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 20 * time.Second}
	waitConfig(t, client, "endpoints at priorities 0 (zone a) and 1 (zone b) with a retry", func(d *dumpSnap) error {
		if err := d.hasRoute("a 5xx retry", func(tr *config.RouteTraffic) bool { return tr.Retry != nil }); err != nil {
			return err
		}
		return d.cluster("backend.default.mesh:80", func(_ config.LBPolicy, eps []config.Endpoint, _ *config.ClusterTraffic) error {
			prio := map[string]uint32{}
			for _, e := range eps {
				prio[e.Zone] = e.Priority
			}
			if len(eps) != 2 || prio["a"] != 0 || prio["b"] != 1 {
				return fmt.Errorf("endpoints %+v, want zone a at priority 0 and zone b at 1", eps)
			}
			return nil
		})
	})
	waitConfig(t, pn, "inbound overload shedder", func(d *dumpSnap) error {
		for _, l := range d.Listeners {
			if l.Traffic != nil && l.Traffic.Overload != nil {
				return nil
			}
		}
		return fmt.Errorf("no listener with an overload shedder")
	})
	// window sends n requests one after another and counts the answers by
	// server; failures are counted under "error".
	window := func(n int) map[string]int {
		counts := map[string]int{}
		for range n {
			code, body, err := get(hc, base+"/")
			if err != nil || code != 200 {
				counts["error"]++
				continue
			}
			counts[servedBy(body)]++
		}
		return counts
	}
	eventually(t, 20*time.Second, func() error {
		if got := window(30); got["near"] != 30 {
			return fmt.Errorf("answers %v, want all 30 from near", got)
		}
		return nil
	})
	t.Logf("zone a serves everything while it has capacity")

	// A slow request takes near's concurrency (with maxConcurrent 1 no
	// slot is reserved for the critical class); the caller sends it to
	// near, its priority 0 endpoint with capacity.
	var holds sync.WaitGroup
	holdCtx, cancelHolds := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancelHolds()
	holds.Go(func() {
		req, _ := http.NewRequestWithContext(holdCtx, http.MethodGet, base+"/hold", nil)
		if resp, err := (&http.Client{}).Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	// On a failure below, release before waiting for the holds.
	defer holds.Wait()
	defer release()
	eventually(t, 20*time.Second, func() error {
		if n := near.held.Load(); n != 1 {
			return fmt.Errorf("near holds %d slow requests, want 1", n)
		}
		return nil
	})

	start := time.Now()
	nearBefore := near.hits.Load()
	var spilled map[string]int
	eventually(t, 20*time.Second, func() error {
		spilled = window(30)
		if spilled["far"] < 28 {
			return fmt.Errorf("answers %v with zone a overloaded, want (nearly) all 30 from far", spilled)
		}
		return nil
	})
	t.Logf("zone a overloaded: traffic spilled to zone b after %s (last window %v; near served %d meanwhile)",
		time.Since(start).Round(100*time.Millisecond), spilled, near.hits.Load()-nearBefore)
	if spilled["near"] != 0 {
		t.Errorf("near served %d requests while its concurrency was taken", spilled["near"])
	}

	release()
	holds.Wait()
	start = time.Now()
	eventually(t, 30*time.Second, func() error {
		if got := window(30); got["near"] != 30 {
			return fmt.Errorf("answers %v after the load dropped, want all 30 from near", got)
		}
		return nil
	})
	t.Logf("load dropped: traffic back in zone a after %s", time.Since(start).Round(100*time.Millisecond))
}

// TestHTTPProxyConnectMTLS: an application using HTTP_PROXY opens a
// CONNECT tunnel to an HTTP service whose endpoint's proxy is STRICT
// (mutual TLS only) and speaks HTTP/1.1 through it.
func TestHTTPProxyConnectMTLS(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	srv := newHost()
	httpServer(t, srv.addr(8080), "web")
	c.apply(t, `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: MeshTLS
metadata: {name: web-strict}
spec: {mode: STRICT, service: web}
`)
	ps := startProxy(t, c, proxyOpts{name: "server", labels: "app=server", host: srv, inbound: []string{"8080=15006"}})
	fe := newHost()
	client := startProxy(t, c, proxyOpts{name: "client", labels: "app=client", host: fe, extra: []string{"--http-proxy-port", "15080"}})
	waitAllReady(t, ps, client)
	// STRICT in force: plaintext to the server's inbound port is refused.
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	eventually(t, 20*time.Second, func() error {
		if code, _, err := get(plain, "http://"+srv.addr(15006)+"/"); err == nil {
			return fmt.Errorf("plaintext to the inbound port answered %d, want STRICT to refuse it", code)
		}
		return nil
	})
	proxyAddr := fe.addr(15080)
	eventually(t, 30*time.Second, func() error {
		return connectHTTP(proxyAddr, "web.default.mesh:80", "/one", "/two")
	})
}

// connectHTTP opens a CONNECT tunnel through the HTTP proxy at proxyAddr
// to target and sends a GET for each path through it, one after another
// on the same tunnel, expecting the "web" server's answers.
func connectHTTP(proxyAddr, target string, paths ...string) error {
	conn, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("CONNECT %s: %s", target, resp.Status)
	}
	for _, p := range paths {
		req, _ := http.NewRequest(http.MethodGet, "http://"+target+p, nil)
		if err := req.Write(conn); err != nil {
			return fmt.Errorf("GET %s through the tunnel: %w", p, err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return fmt.Errorf("GET %s through the tunnel: %w", p, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "web GET "+p) {
			return fmt.Errorf("GET %s through the tunnel: %d %q", p, resp.StatusCode, body)
		}
	}
	return nil
}

const hashPolicy = `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-affinity}
spec:
  targetRef: {kind: Service, name: backend}
  loadBalancer:
    policy: RingHash
    consistentHash: %s
`

// startHashed starts four backends behind a RingHash policy hashing what
// consistentHash says and a client with an outbound port to them, and
// waits until the client's route carries the hash policy.
func startHashed(t *testing.T, consistentHash string) (base string) {
	t.Helper()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, fmt.Sprintf(hashPolicy, consistentHash))
	var proxies []*proxy
	for i := range 4 {
		proxies = append(proxies, startWorkload(t, c, startApp(t, fmt.Sprintf("b%d", i)), "app=backend"))
	}
	client, fe := startClient(t, c, "app=client", "backend:80=10001")
	waitAllReady(t, append(proxies, client)...)
	waitConfig(t, client, "RingHash over 4 endpoints with a hash policy", func(d *dumpSnap) error {
		if err := d.hasRoute("a hash policy", func(tr *config.RouteTraffic) bool { return len(tr.Hash) > 0 }); err != nil {
			return err
		}
		return d.cluster("backend.default.mesh:80", func(lb config.LBPolicy, eps []config.Endpoint, _ *config.ClusterTraffic) error {
			if lb != config.LBRingHash || len(eps) != 4 {
				return fmt.Errorf("lb %d with %d endpoints, want %d with 4", lb, len(eps), config.LBRingHash)
			}
			return nil
		})
	})
	return "http://" + fe.addr(10001) + "/"
}

// checkAffinity runs rounds of one request per key through send and fails
// unless every key stays on one endpoint across all rounds and the keys
// spread over at least two endpoints. A mismatch starts over (the first
// answers may predate the policy on the data path) until limit.
func checkAffinity(t *testing.T, keys, rounds int, send func(key int) (string, error)) {
	t.Helper()
	owner := map[int]string{}
	eventually(t, 30*time.Second, func() error {
		clear(owner)
		for r := range rounds {
			for k := range keys {
				got, err := send(k)
				if err != nil {
					return err
				}
				if prev, ok := owner[k]; ok && prev != got {
					return fmt.Errorf("round %d: key %d went to %s, earlier to %s", r, k, got, prev)
				}
				owner[k] = got
			}
		}
		return nil
	})
	perEndpoint := map[string]int{}
	for _, e := range owner {
		perEndpoint[e]++
	}
	t.Logf("%d keys × %d rounds, each key on one endpoint; keys per endpoint: %v", keys, rounds, perEndpoint)
	if len(perEndpoint) < 2 {
		t.Errorf("%d keys hashed onto only %d of 4 endpoints: %v", keys, len(perEndpoint), perEndpoint)
	}
}

// TestCookieAffinity: with consistentHash by cookie, a request without the
// cookie gets one set by the proxy (HttpOnly, with the policy's TTL), and
// each client that sends its cookie back stays on the endpoint that
// answered its first request, across a thousand requests.
func TestCookieAffinity(t *testing.T) {
	t.Parallel()
	base := startHashed(t, "{cookie: {name: verge-sticky, ttl: 1h, path: /}}")
	hc := &http.Client{Timeout: 20 * time.Second}
	const users = 20
	cookies := make([]string, users)
	firstBy := make([]string, users)
	eventually(t, 30*time.Second, func() error {
		for u := range users {
			resp, err := hc.Get(base)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var sticky *http.Cookie
			for _, ck := range resp.Cookies() {
				if ck.Name == "verge-sticky" {
					sticky = ck
				}
			}
			if resp.StatusCode != 200 || sticky == nil || sticky.Value == "" {
				return fmt.Errorf("first request of user %d: %d %q, Set-Cookie %q; want 200 and a verge-sticky cookie", u, resp.StatusCode, body, resp.Header.Values("Set-Cookie"))
			}
			if sticky.MaxAge != 3600 || !sticky.HttpOnly || sticky.Path != "/" {
				return fmt.Errorf("cookie %q: want Max-Age 3600, HttpOnly, Path /", resp.Header.Get("Set-Cookie"))
			}
			cookies[u] = sticky.Name + "=" + sticky.Value
			firstBy[u] = servedBy(string(body))
		}
		return nil
	})
	checkAffinity(t, users, 50, func(u int) (string, error) {
		code, body, err := get(hc, base, "Cookie", "other=1; "+cookies[u])
		if err != nil || code != 200 {
			return "", fmt.Errorf("GET with cookie %s: %d %q %v", cookies[u], code, body, err)
		}
		return servedBy(body), nil
	})
	// The first answer, which set the cookie, came from the endpoint the
	// cookie then leads to.
	for u := range users {
		code, body, err := get(hc, base, "Cookie", cookies[u])
		if err != nil || code != 200 {
			t.Fatalf("GET with cookie %s: %d %q %v", cookies[u], code, body, err)
		}
		if got := servedBy(body); got != firstBy[u] {
			t.Errorf("user %d: first answer from %s, its cookie leads to %s", u, firstBy[u], got)
		}
	}
}

// TestSourceIPAffinity: with consistentHash by source IP, clients on
// twenty loopback addresses (127.0.0.2 to 127.0.0.21) each stay on one
// endpoint across a thousand requests, on new connections as on kept ones.
func TestSourceIPAffinity(t *testing.T) {
	t.Parallel()
	base := startHashed(t, "{sourceIP: true}")
	const sources = 20
	clients := make([]*http.Client, sources)
	for i := range clients {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}}
		tr := &http.Transport{DialContext: d.DialContext}
		if i%2 == 1 {
			// Half the sources use a new connection for every request:
			// the hash follows the address, not the connection.
			tr.DisableKeepAlives = true
		}
		t.Cleanup(tr.CloseIdleConnections)
		clients[i] = &http.Client{Timeout: 20 * time.Second, Transport: tr}
	}
	checkAffinity(t, sources, 50, func(i int) (string, error) {
		code, body, err := get(clients[i], base)
		if err != nil || code != 200 {
			return "", fmt.Errorf("GET from 127.0.0.%d: %d %q %v", 2+i, code, body, err)
		}
		return servedBy(body), nil
	})
}
