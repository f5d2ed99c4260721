package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// ztMesh is the service the zero-trust tests call: HTTP, gRPC and TCP ports
// of one workload, app=api.
const ztMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 9000, targetPort: 9000, protocol: GRPC}
  - {name: tcp, port: 7000, targetPort: 7000, protocol: TCP}
`

// ztFixture is a control plane, the api workload (HTTP, gRPC and TCP
// servers) behind its proxy running as service account "api", and a client
// proxy per caller service account with outbound ports for all three.
type ztFixture struct {
	cp     *cp
	apiH   host
	api    *proxy
	apiDir string
	// socket is the api proxy's SPIFFE Workload API socket.
	socket  string
	callers map[string]*ztCaller
}

// ztCaller is a client-side proxy and its outbound URLs.
type ztCaller struct {
	h       host
	p       *proxy
	dir     string
	opts    proxyOpts
	httpURL string
	grpc    string
	tcp     string
}

func newZTFixture(t *testing.T, cpArgs []string, callers ...string) *ztFixture {
	t.Helper()
	f := &ztFixture{cp: startCP(t, "", cpArgs...), apiH: newHost(), apiDir: t.TempDir(), callers: map[string]*ztCaller{}}
	httpServer(t, f.apiH.addr(8080), "api")
	grpcServer(t, f.apiH.addr(9000))
	tcpEcho(t, f.apiH.addr(7000))
	f.cp.apply(t, ztMesh)
	sockDir, err := os.MkdirTemp("", "vzt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	f.socket = filepath.Join(sockDir, "api.sock")
	f.api = startProxy(t, f.cp, proxyOpts{name: "api-0", labels: "app=api", host: f.apiH, sa: "api", dataDir: f.apiDir,
		inbound: []string{"8080=15006", "9000=15090", "7000=15070"},
		extra:   []string{"--workload-api-socket", f.socket}})
	for _, sa := range callers {
		c := &ztCaller{h: newHost(), dir: t.TempDir()}
		c.opts = proxyOpts{name: sa + "-0", labels: "app=" + sa, host: c.h, sa: sa, dataDir: c.dir,
			outbound: []string{"api:80=10001", "api:9000=10002", "api:7000=10003"}}
		c.p = startProxy(t, f.cp, c.opts)
		c.httpURL, c.grpc, c.tcp = "http://"+c.h.addr(10001), c.h.addr(10002), c.h.addr(10003)
		f.callers[sa] = c
	}
	f.api.waitReady(t)
	for _, c := range f.callers {
		c.p.waitReady(t)
	}
	return f
}

// waitAPI waits until url answers from the api application.
func waitAPI(t *testing.T, c *http.Client, url string) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		code, body, err := get(c, url)
		if err != nil || code != 200 || !strings.HasPrefix(body, "api") {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})
}

// grpcCall makes one EmptyCall through addr.
func grpcCall(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = testgrpc.NewTestServiceClient(conn).EmptyCall(ctx, &testgrpc.Empty{})
	return err
}

// tcpRoundTrip writes a line through addr and reads the echo.
func tcpRoundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

// metric sums the samples of name whose labels include every pair of want,
// read from a Prometheus text exposition at url.
// waitMetric waits until the series reaches at least min: a client can see
// a refusal or an answer before the proxy has counted it, so a counter read
// right after is a race.
func waitMetric(t *testing.T, url, name string, want map[string]string, min float64) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		if n := metric(t, url, name, want); n < min {
			return fmt.Errorf("%s%v = %v, want at least %v", name, want, n, min)
		}
		return nil
	})
}

func metric(t *testing.T, url, name string, want map[string]string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for k, v := range want {
			if !strings.Contains(line, k+`="`+v+`"`) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// issued is an SVID obtained from a control plane's API outside any proxy.
type issued struct {
	cert tls.Certificate
	leaf *x509.Certificate
}

// issueSVID creates a join token for sa on c and redeems it with a CSR, as
// a proxy does, returning the certificate and key for a TLS client.
func issueSVID(t *testing.T, c *cp, sa string) issued {
	t.Helper()
	out, code := c.verge(t, "", "token", "create", "--service", sa)
	secret := tokenRE.FindString(out)
	if code != 0 || secret == "" {
		t.Fatalf("verge token create: exit %d\n%s", code, out)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	body := `{"csr":"` + base64.StdEncoding.EncodeToString(der) + `"}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, c.api+"/api/v1/certificates", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Chain []string `json:"certificateChain"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("issue certificate: %s %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || len(got.Chain) == 0 {
		t.Fatalf("issue certificate: %v %+v", err, got)
	}
	var tc tls.Certificate
	for _, p := range got.Chain {
		blk, _ := pem.Decode([]byte(p))
		if blk == nil {
			t.Fatalf("chain entry is not PEM: %q", p)
		}
		tc.Certificate = append(tc.Certificate, blk.Bytes)
	}
	tc.PrivateKey = key
	leaf, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return issued{cert: tc, leaf: leaf}
}

// mtlsDial attempts a TLS 1.3 handshake to addr presenting cert, trusting
// any server certificate (what is tested is whether the server accepts the
// client), then one HTTP/2 request, and returns the first error. The server
// may accept the handshake and refuse afterwards (TLS 1.3 verifies the
// client's certificate after the client's handshake has completed), so an
// exchange is needed to see a refusal.
func mtlsDial(addr string, cert tls.Certificate) error {
	cfg := &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // the client side is not under test
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	// The HTTP/2 preface and an empty SETTINGS frame; the server answers
	// with its SETTINGS unless it refused the certificate.
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		return err
	}
	var hdr [9]byte
	_, err = io.ReadFull(c, hdr[:])
	return err
}

// fetchWorkloadSVID reads the workload's SVID from a proxy's SPIFFE Workload
// API with go-spiffe's own client.
func fetchWorkloadSVID(t *testing.T, socket string) *x509svid.SVID {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatalf("workload API %s: %v", socket, err)
	}
	return svid
}

// bundleRoots reads the control plane's trust bundle.
func bundleRoots(t *testing.T, c *cp) []*x509.Certificate {
	t.Helper()
	resp, err := http.Get(c.api + "/api/v1/bundle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var roots []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, c)
	}
	return roots
}

// TestMutualTLSBetweenProxies: HTTP, gRPC and TCP between two proxies go
// over mutual TLS with ALPN h2 (verge-tcp for TCP); PERMISSIVE (the default)
// still accepts plaintext from outside the mesh, STRICT refuses it; a
// certificate from another CA or another trust domain is refused; the
// application reads its own SVID from the proxy's SPIFFE Workload API with
// go-spiffe's client.
func TestMutualTLSBetweenProxies(t *testing.T) {
	t.Parallel()
	f := newZTFixture(t, nil, "web")
	web := f.callers["web"]
	c := &http.Client{Timeout: 10 * time.Second}
	eventually(t, 20*time.Second, func() error {
		code, body, err := get(c, web.httpURL+"/")
		if err != nil || code != 200 || !strings.HasPrefix(body, "api") {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		if err := grpcCall(t.Context(), web.grpc); err != nil {
			return fmt.Errorf("grpc: %w", err)
		}
		return tcpRoundTrip(web.tcp)
	})
	stats := f.api.admin + "/stats/prometheus"
	for _, alpn := range []string{"h2", "verge-tcp"} {
		if n := metric(t, stats, "verge_proxy_downstream_tls_handshakes_total", map[string]string{"alpn": alpn}); n == 0 {
			t.Errorf("api proxy completed no mTLS handshake with ALPN %s", alpn)
		}
	}

	// PERMISSIVE: a client outside the mesh still reaches the inbound port.
	// Each plaintext attempt is a new connection: the mode is checked when
	// a connection is accepted.
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if code, body, err := get(plain, "http://"+f.apiH.addr(15006)+"/"); err != nil || code != 200 {
		t.Fatalf("plaintext in PERMISSIVE: %d %q %v", code, body, err)
	}

	f.cp.apply(t, `apiVersion: verge.dev/v1alpha1
kind: MeshTLS
metadata: {name: api-strict}
spec: {mode: STRICT, service: api}
`)
	eventually(t, 20*time.Second, func() error {
		if code, _, err := get(plain, "http://"+f.apiH.addr(15006)+"/"); err == nil {
			return fmt.Errorf("plaintext still answered %d in STRICT", code)
		}
		return nil
	})
	waitMetric(t, stats, "verge_proxy_downstream_tls_refused_total", map[string]string{"reason": "plaintext"}, 1)
	// Mesh traffic is unaffected.
	for range 20 {
		if code, body, err := get(c, web.httpURL+"/"); err != nil || code != 200 {
			t.Fatalf("through the mesh in STRICT: %d %q %v", code, body, err)
		}
	}

	// A valid SVID of this CA is accepted; one from another CA with the
	// same trust domain name, or from another trust domain, is not.
	own := issueSVID(t, f.cp, "probe")
	if err := mtlsDial(f.apiH.addr(15006), own.cert); err != nil {
		t.Fatalf("own CA's SVID refused: %v", err)
	}
	for _, td := range []string{"verge.local", "other.local"} {
		other := startCP(t, "", "--trust-domain", td)
		foreign := issueSVID(t, other, "web")
		if err := mtlsDial(f.apiH.addr(15006), foreign.cert); err == nil {
			t.Errorf("SVID %s from another CA accepted", foreign.leaf.URIs[0])
		}
		other.stop(10 * time.Second)
	}
	waitMetric(t, stats, "verge_proxy_downstream_tls_refused_total", map[string]string{"reason": "bad_certificate"}, 1)

	// The application's own identity, through the Workload API.
	svid := fetchWorkloadSVID(t, f.socket)
	if got := svid.ID.String(); got != "spiffe://verge.local/ns/default/sa/api" {
		t.Fatalf("workload API SVID %s", got)
	}
	bundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("verge.local"), bundleRoots(t, f.cp))
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("workload API SVID does not verify against the control plane's bundle: %v", err)
	}
}

// TestJoinTokenAbuse: a single-use token already spent, and a token for
// another service account, get no workload into the mesh.
func TestJoinTokenAbuse(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, ztMesh)
	out, code := c.verge(t, "", "token", "create", "--service", "web")
	tok := tokenRE.FindString(out)
	if code != 0 || tok == "" {
		t.Fatalf("token create: %d %s", code, out)
	}
	first := startProxy(t, c, proxyOpts{name: "web-0", labels: "app=web", host: newHost(), sa: "web", token: tok})
	first.waitReady(t)

	// The same token again: used up.
	startProxy(t, c, proxyOpts{name: "web-1", labels: "app=web", host: newHost(), sa: "web", token: tok})
	// A token for "other" presented by a proxy registering a "web" workload.
	out, _ = c.verge(t, "", "token", "create", "--service", "other")
	otherTok := tokenRE.FindString(out)
	startProxy(t, c, proxyOpts{name: "web-2", labels: "app=web", host: newHost(), sa: "web", token: otherTok})

	metrics := c.api + "/metrics"
	eventually(t, 30*time.Second, func() error {
		if n := metric(t, metrics, "verge_ca_refusals_total", map[string]string{"reason": "used_up_token"}); n == 0 {
			return fmt.Errorf("spent token not refused yet")
		}
		if n := metric(t, metrics, "verge_api_auth_refusals_total", nil); n == 0 {
			return fmt.Errorf("wrong-service registration not refused yet")
		}
		return nil
	})
	for _, name := range []string{"web-1", "web-2"} {
		if out, code := c.verge(t, "", "get", "workload", name); code == 0 {
			t.Errorf("workload %s registered with a bad token:\n%s", name, out)
		}
	}
}

// loadResult is what a bounded request loop saw.
type loadResult struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErr   string
	// wait returns when every worker has stopped.
	wait func()
}

// runLoad sends GETs to url from workers goroutines until stop is closed or
// max requests were sent, and counts every answer that is not a 200.
func runLoad(url string, workers int, max int64, stop <-chan struct{}) *loadResult {
	r := &loadResult{}
	var wg sync.WaitGroup
	c := &http.Client{Timeout: 10 * time.Second}
	var sent atomic.Int64
	for range workers {
		wg.Go(func() {
			for sent.Add(1) <= max {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := get(c, url)
				if err == nil && code == 200 {
					r.ok.Add(1)
					continue
				}
				r.failed.Add(1)
				r.mu.Lock()
				if r.firstErr == "" {
					r.firstErr = fmt.Sprintf("%d %q %v", code, body, err)
				}
				r.mu.Unlock()
			}
		})
	}
	r.wait = wg.Wait
	return r
}

// TestRenewalAndRootRotationUnderLoad: certificates live 8 s, so every proxy
// renews several times while load runs; the root is rotated in the middle.
// No request fails, a long-lived stream lives through every renewal, the
// proxies end on certificates of the new root, and a certificate past its
// expiry is refused.
func TestRenewalAndRootRotationUnderLoad(t *testing.T) {
	t.Parallel()
	f := newZTFixture(t, []string{"--svid-ttl", "8s"}, "web")
	web := f.callers["web"]
	expiring := issueSVID(t, f.cp, "probe")
	rootsBefore := bundleRoots(t, f.cp)

	c := &http.Client{Timeout: 10 * time.Second}
	waitAPI(t, c, web.httpURL+"/")

	// A server stream of 40 messages 300 ms apart outlives several
	// renewals of both proxies' certificates and the rotation.
	streamErr := make(chan error, 1)
	go func() { streamErr <- longStream(t.Context(), web.grpc, 40, 300*time.Millisecond) }()

	stop := make(chan struct{})
	load := runLoad(web.httpURL+"/", 4, 200000, stop)
	time.Sleep(5 * time.Second)
	if out, code := f.cp.verge(t, "", "ca", "rotate", "--overlap", "2m"); code != 0 {
		t.Fatalf("ca rotate: %d %s", code, out)
	}
	time.Sleep(9 * time.Second)
	close(stop)
	load.wait()
	if n := load.failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed during renewal and rotation; first: %s", n, n+load.ok.Load(), load.firstErr)
	}
	if load.ok.Load() == 0 {
		t.Fatal("no request succeeded")
	}
	if err := <-streamErr; err != nil {
		t.Errorf("long-lived gRPC stream across renewals: %v", err)
	}
	t.Logf("%d requests, none failed", load.ok.Load())
	for name, p := range map[string]*proxy{"api": f.api, "web": web.p} {
		if n := metric(t, p.admin+"/stats/prometheus", "verge_proxy_svid_renewals_total", map[string]string{"result": "success"}); n < 2 {
			t.Errorf("%s proxy renewed %v times in 14 s with 8 s certificates", name, n)
		}
	}

	// The api proxy's certificate now chains to the new root alone.
	var newRoots []*x509.Certificate
	for _, r := range bundleRoots(t, f.cp) {
		old := false
		for _, o := range rootsBefore {
			old = old || o.Equal(r)
		}
		if !old {
			newRoots = append(newRoots, r)
		}
	}
	if len(newRoots) != 1 {
		t.Fatalf("bundle after rotation has %d new roots", len(newRoots))
	}
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	eventually(t, 10*time.Second, func() error {
		svid := fetchWorkloadSVID(t, f.socket)
		_, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(td, newRoots))
		return err
	})

	// The probe's certificate, issued 14 s ago for 8 s, is refused.
	if time.Now().Before(expiring.leaf.NotAfter) {
		time.Sleep(time.Until(expiring.leaf.NotAfter) + time.Second)
	}
	if err := mtlsDial(f.apiH.addr(15006), expiring.cert); err == nil {
		t.Error("expired certificate accepted")
	}
}

// longStream reads a server stream of n messages sent interval apart
// through addr, and fails unless all of them arrive.
func longStream(ctx context.Context, addr string, n int, interval time.Duration) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n)*interval+30*time.Second)
	defer cancel()
	params := make([]*testgrpc.ResponseParameters, n)
	for i := range params {
		params[i] = &testgrpc.ResponseParameters{Size: 64, IntervalUs: int32(interval / time.Microsecond)}
	}
	st, err := testgrpc.NewTestServiceClient(conn).StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
	if err != nil {
		return err
	}
	got := 0
	for {
		_, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d of %d messages: %w", got, n, err)
		}
		got++
	}
	if got != n {
		return fmt.Errorf("%d of %d messages", got, n)
	}
	return nil
}

// TestControlPlaneOutage: the control plane is killed for longer than one
// renewal period. Traffic between the proxies goes on with the
// certificates they hold, a proxy restarted during the outage serves from
// the configuration and certificate on its disk, and once the control plane
// is back the proxies renew.
func TestControlPlaneOutage(t *testing.T) {
	t.Parallel()
	const ttl = 30 * time.Second
	f := newZTFixture(t, []string{"--svid-ttl", ttl.String()}, "web")
	web := f.callers["web"]
	c := &http.Client{Timeout: 10 * time.Second}
	waitAPI(t, c, web.httpURL+"/")

	renewals := func(p *proxy) float64 {
		return metric(t, p.admin+"/stats/prometheus", "verge_proxy_svid_renewals_total", map[string]string{"result": "success"})
	}
	// Start the outage on fresh certificates: a root rotation makes every
	// proxy renew within seconds, so each holds close to a full lifetime.
	apiBefore, webBefore := renewals(f.api), renewals(web.p)
	if out, code := f.cp.verge(t, "", "ca", "rotate", "--overlap", "10m"); code != 0 {
		t.Fatalf("ca rotate: %d %s", code, out)
	}
	eventually(t, 20*time.Second, func() error {
		if renewals(f.api) <= apiBefore || renewals(web.p) <= webBefore {
			return errors.New("proxies have not renewed after the rotation yet")
		}
		return nil
	})

	f.cp.kill()
	down := time.Now()
	// A proxy restarted now has only its disk: no token (its single-use
	// one is spent), no control plane.
	web.p.stop(10 * time.Second)
	web.p = startProxy(t, f.cp, web.opts)
	web.p.waitReady(t)
	waitAPI(t, c, web.httpURL+"/")

	// Traffic for the rest of a renewal period and a second beyond it.
	stop := make(chan struct{})
	load := runLoad(web.httpURL+"/", 2, 100000, stop)
	time.Sleep(time.Until(down.Add(ttl/2 + time.Second)))
	close(stop)
	load.wait()
	if n := load.failed.Load(); n > 0 || load.ok.Load() == 0 {
		t.Fatalf("during the outage: %d ok, %d failed; first: %s", load.ok.Load(), n, load.firstErr)
	}
	t.Logf("outage of %s: %d requests, none failed", time.Since(down).Round(time.Second), load.ok.Load())

	apiAtRestart := renewals(f.api)
	startCPAt(t, f.cp.dataDir, f.cp.api, f.cp.xds)
	eventually(t, 20*time.Second, func() error {
		if renewals(f.api) <= apiAtRestart {
			return errors.New("api proxy has not renewed since the control plane came back")
		}
		return nil
	})
	for range 20 {
		if code, body, err := get(c, web.httpURL+"/"); err != nil || code != 200 {
			t.Fatalf("after the outage: %d %q %v", code, body, err)
		}
	}
}
