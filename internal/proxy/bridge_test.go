package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"

	"verge.dev/verge/internal/proxy/config"
)

// echoApp is an HTTP/1.1 application that reads the whole request body and
// answers with it: with a Content-Length, or chunked when the query says
// chunked=1. It reports what it saw in headers.
func echoApp(t *testing.T) *backend {
	t.Helper()
	return startBackend(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		w.Header().Set("X-Proto", r.Proto)
		w.Header().Set("X-Req-Len", strconv.Itoa(len(body)))
		w.Header().Set("X-Req-Chunked", strconv.FormatBool(len(r.TransferEncoding) > 0))
		w.Header().Set("X-Req-Sum", fmt.Sprintf("%x", sum))
		if r.URL.Query().Get("chunked") == "1" {
			for len(body) > 0 {
				n := min(len(body), 64<<10)
				_, _ = w.Write(body[:n])
				w.(http.Flusher).Flush()
				body = body[n:]
			}
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
}

// bridgeMesh starts two proxies with mutual TLS between them in front of
// app and checks, when the test ends, that both sides used the bridge.
func bridgeMesh(t *testing.T, appAddr string) *meshPair {
	t.Helper()
	_, in, out := meshIdentities(t)
	m := startMesh(t, meshOpts{appAddr: appAddr, in: in, out: out})
	t.Cleanup(func() {
		if got := metricValue(t, m.out.metrics.bridgeConns.WithLabelValues("outbound")); got < 1 {
			t.Errorf("outbound bridge connections = %v, want at least 1", got)
		}
		if got := metricValue(t, m.in.metrics.bridgeConns.WithLabelValues("inbound")); got < 1 {
			t.Errorf("inbound bridge connections = %v, want at least 1", got)
		}
	})
	return m
}

// pattern is n bytes that are not all alike, so a misplaced chunk shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// unsized hides a reader's length, so that net/http sends it chunked.
type unsized struct{ r io.Reader }

func (u unsized) Read(p []byte) (int, error) { return u.r.Read(p) }

func TestBridgeBodies(t *testing.T) {
	app := echoApp(t)
	m := bridgeMesh(t, app.addr)
	client := h1Client(t)
	tests := []struct {
		name                    string
		size                    int
		chunkedReq, chunkedResp bool
		method                  string
	}{
		{name: "get without body", method: "GET"},
		{name: "small", size: 1 << 10, method: "POST"},
		{name: "empty post", method: "POST"},
		{name: "large both ways", size: 5 << 20, method: "PUT"},
		{name: "chunked request", size: 3<<20 + 17, chunkedReq: true, method: "POST"},
		{name: "chunked response", size: 3<<20 + 5, chunkedResp: true, method: "POST"},
		{name: "chunked both", size: 100 << 10, chunkedReq: true, chunkedResp: true, method: "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := pattern(tt.size)
			var body io.Reader = bytes.NewReader(payload)
			if tt.chunkedReq {
				body = unsized{bytes.NewReader(payload)}
			}
			if tt.method == "GET" {
				body = nil
			}
			url := "http://" + m.outAddr + "/echo"
			if tt.chunkedResp {
				url += "?chunked=1"
			}
			req, err := http.NewRequestWithContext(t.Context(), tt.method, url, body)
			if err != nil {
				t.Fatal(err)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			if res.StatusCode != http.StatusOK || res.Header.Get("X-Proto") != "HTTP/1.1" {
				t.Fatalf("status %d, app saw %q; want 200 over HTTP/1.1", res.StatusCode, res.Header.Get("X-Proto"))
			}
			if want := fmt.Sprintf("%x", sha256.Sum256(payload)); res.Header.Get("X-Req-Sum") != want || res.Header.Get("X-Req-Len") != strconv.Itoa(tt.size) {
				t.Errorf("app received %s bytes (sum %s), want %d (sum %s)", res.Header.Get("X-Req-Len"), res.Header.Get("X-Req-Sum"), tt.size, want)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("response body: %d bytes, want the %d sent", len(got), len(payload))
			}
			chunked := len(res.TransferEncoding) > 0
			if tt.chunkedResp && tt.size > 0 {
				if !chunked || res.ContentLength != -1 {
					t.Errorf("response framing: chunked %v, length %d; want chunked", chunked, res.ContentLength)
				}
			} else if chunked || res.ContentLength != int64(tt.size) {
				t.Errorf("response framing: chunked %v, length %d; want length %d", chunked, res.ContentLength, tt.size)
			}
		})
	}
}

func TestBridgeStreamingResponse(t *testing.T) {
	const chunks = 6
	ack := make(chan struct{})
	var stalled atomic.Bool
	app := startBackend(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range chunks {
			fmt.Fprintf(w, "chunk %d\n", i)
			w.(http.Flusher).Flush()
			// The next chunk only after the client read this one: a
			// bridge that buffered the stream would stall here.
			select {
			case <-ack:
			case <-time.After(20 * time.Second):
				stalled.Store(true)
				return
			}
			time.Sleep(300 * time.Millisecond) // spread over a few seconds
		}
	}))
	m := bridgeMesh(t, app.addr)
	res, err := h1Client(t).Get("http://" + m.outAddr + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	for i := range chunks {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("chunk %d: %v (app stalled: %v)", i, err, stalled.Load())
		}
		if want := fmt.Sprintf("chunk %d\n", i); line != want {
			t.Fatalf("chunk %d: %q, want %q", i, line, want)
		}
		ack <- struct{}{}
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the last chunk: %q, %v; want a clean end", rest, err)
	}
	if stalled.Load() {
		t.Error("app stalled waiting for the client to see a chunk")
	}
}

func TestBridgeConcurrentClients(t *testing.T) {
	app := echoApp(t)
	m := bridgeMesh(t, app.addr)
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 100}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for c := range 100 {
		wg.Go(func() {
			for i := range 5 {
				payload := []byte(strings.Repeat(fmt.Sprintf("client %d request %d;", c, i), c+1))
				res, err := client.Post("http://"+m.outAddr+"/c", "text/plain", bytes.NewReader(payload))
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || res.StatusCode != http.StatusOK || !bytes.Equal(got, payload) {
					errs <- fmt.Errorf("client %d request %d: status %d, %d bytes, %v", c, i, res.StatusCode, len(got), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := app.hits.Load(); got != 500 {
		t.Errorf("app served %d requests, want 500", got)
	}
	// Streams share a few connections rather than one per request.
	if got := metricValue(t, m.out.metrics.bridgeConns.WithLabelValues("outbound")); got > 2*bridgeConnsPerEndpoint {
		t.Errorf("outbound bridge connections = %v, want at most %d", got, 2*bridgeConnsPerEndpoint)
	}
}

func TestBridgeUpstreamFailures(t *testing.T) {
	broken := startBackend(t, "broken", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close() // no response at all
		}
	}))
	t.Run("application closes without answering", func(t *testing.T) {
		m := bridgeMesh(t, broken.addr)
		for _, method := range []string{"GET", "POST"} {
			r := mustDo(t, h1Client(t), method, "http://"+m.outAddr+"/", nil)
			if r.status != http.StatusBadGateway || r.body != "upstream error\n" {
				t.Errorf("%s: status %d body %q, want 502 %q", method, r.status, r.body, "upstream error\n")
			}
		}
	})
	t.Run("application down", func(t *testing.T) {
		m := bridgeMesh(t, deadAddr(t))
		r := mustDo(t, h1Client(t), "GET", "http://"+m.outAddr+"/", nil)
		if r.status != http.StatusServiceUnavailable {
			t.Errorf("status %d, want 503", r.status)
		}
	})
	t.Run("peer proxy down", func(t *testing.T) {
		_, _, out := meshIdentities(t)
		o := meshOpts{kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1}
		tp := startProxy(t, identityConfig(out), outboundSnapshot(o, deadAddr(t)))
		r := mustDo(t, h1Client(t), "GET", "http://"+tp.addr(t, "outbound")+"/", nil)
		if r.status != http.StatusServiceUnavailable {
			t.Errorf("status %d, want 503", r.status)
		}
	})
}

func TestBridgeAuthzDeny(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)
	o := meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict}
	inbound := startProxy(t, identityConfig(in), withAuthz(inboundSnapshot(o), allowRBAC(t, true, frontendID, "/allowed")))
	outbound := startProxy(t, identityConfig(out), outboundSnapshot(o, inbound.addr(t, "inbound")))
	client := h1Client(t)
	base := "http://" + outbound.addr(t, "outbound")

	if r := mustDo(t, client, "GET", base+"/allowed/x", nil); r.status != http.StatusOK || r.backend != "app" {
		t.Errorf("allowed path: %+v, want 200 from app", r)
	}
	r := mustDo(t, client, "POST", base+"/other", nil)
	if r.status != http.StatusForbidden || r.body != deniedBody {
		t.Errorf("other path: status %d body %q, want 403 %q", r.status, r.body, deniedBody)
	}
	if got := app.hits.Load(); got != 1 {
		t.Errorf("app served %d requests, want 1", got)
	}
	if got := metricValue(t, inbound.metrics.bridgeConns.WithLabelValues("inbound")); got < 1 {
		t.Errorf("inbound bridge connections = %v, want at least 1", got)
	}
}

// TestBridgeStandardClient drives the inbound bridge with x/net's HTTP/2
// client, which no Verge code wrote.
func TestBridgeStandardClient(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := echoApp(t)
	tp := startProxy(t, identityConfig(in), inboundSnapshot(meshOpts{appAddr: app.addr, kind: config.ListenerHTTP,
		appProto: config.UpstreamHTTP1, mode: config.TLSStrict}))
	cfg := tlsconfig.MTLSClientConfig(out, out, tlsconfig.AuthorizeAny())
	cfg.MinVersion = tls.VersionTLS13
	tr := &http2.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	base := "https://" + tp.addr(t, "inbound")

	payload := pattern(2 << 20)
	for i, body := range []io.Reader{nil, bytes.NewReader(payload), unsized{bytes.NewReader(payload)}} {
		method := "GET"
		if body != nil {
			method = "POST"
		}
		req, err := http.NewRequestWithContext(t.Context(), method, base+"/std?chunked="+strconv.Itoa(i%2), body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Add("Cookie", "a=1")
		req.Header.Add("Cookie", "b=2")
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatalf("request %d: read body: %v", i, err)
		}
		if res.StatusCode != http.StatusOK || res.ProtoMajor != 2 || res.Header.Get("X-Proto") != "HTTP/1.1" {
			t.Errorf("request %d: status %d over %s, app saw %q; want 200 over HTTP/2, HTTP/1.1 at the app", i, res.StatusCode, res.Proto, res.Header.Get("X-Proto"))
		}
		want := payload
		if body == nil {
			want = nil
		}
		if !bytes.Equal(got, want) {
			t.Errorf("request %d: response %d bytes, want %d", i, len(got), len(want))
		}
	}
	if got := metricValue(t, tp.metrics.bridgeConns.WithLabelValues("inbound")); got != 1 {
		t.Errorf("inbound bridge connections = %v, want 1", got)
	}
}

func TestBridgeDrainFinishesInFlight(t *testing.T) {
	const inflight = 5
	release := make(chan struct{})
	var started atomic.Int32
	app := startBackend(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
		_, _ = io.WriteString(w, "done")
	}))
	m := bridgeMesh(t, app.addr)
	client := h1Client(t)
	results := make(chan result, inflight)
	for range inflight {
		go func() {
			r, err := do(t, client, "GET", "http://"+m.outAddr+"/slow", nil)
			if err != nil {
				r.body = err.Error()
			}
			results <- r
		}()
	}
	waitFor(t, "requests at the app", func() bool { return started.Load() == inflight })

	stopped := make(chan struct{})
	go func() { m.in.stop(t); close(stopped) }()
	// The listener's socket closes as the drain starts.
	waitFor(t, "inbound listener closed", func() bool {
		c, err := net.DialTimeout("tcp", m.inAddr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	for range inflight {
		if r := <-results; r.status != http.StatusOK || r.body != "done" {
			t.Errorf("in-flight request: status %d body %q, want 200 done", r.status, r.body)
		}
	}
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("inbound proxy did not stop after its requests finished")
	}
}

// TestBridgeSelection checks which path carries what: HTTP/2 services and
// a disabled bridge keep net/http.
func TestBridgeSelection(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)
	t.Run("disabled", func(t *testing.T) {
		o := meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict}
		cfgIn, cfgOut := identityConfig(in), identityConfig(out)
		cfgIn.DisableH2Bridge, cfgOut.DisableH2Bridge = true, true
		inbound := startProxy(t, cfgIn, inboundSnapshot(o))
		outbound := startProxy(t, cfgOut, outboundSnapshot(o, inbound.addr(t, "inbound")))
		if r := mustDo(t, h1Client(t), "GET", "http://"+outbound.addr(t, "outbound")+"/", nil); r.status != http.StatusOK || r.proto != "HTTP/1.1" {
			t.Errorf("%+v, want 200 over HTTP/1.1 at the app", r)
		}
		for _, p := range []*testProxy{inbound, outbound} {
			for _, side := range []string{"inbound", "outbound"} {
				if got := metricValue(t, p.metrics.bridgeConns.WithLabelValues(side)); got != 0 {
					t.Errorf("%s bridge connections = %v with the bridge disabled", side, got)
				}
			}
		}
	})
	t.Run("http2 service", func(t *testing.T) {
		m := startMesh(t, meshOpts{appAddr: startGRPCBackend(t, "g1"), appProto: config.UpstreamHTTP2, in: in, out: out})
		client, _ := grpcClient(t, m.outAddr)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if _, err := client.UnaryCall(ctx, nil); err != nil {
			t.Fatalf("unary: %v", err)
		}
		if got := metricValue(t, m.in.metrics.bridgeConns.WithLabelValues("inbound")); got != 0 {
			t.Errorf("inbound bridge connections = %v for a gRPC service, want 0", got)
		}
	})
}
