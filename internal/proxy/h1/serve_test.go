package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testRouter sends every request to addr (or answers status locally when
// addr is empty) and records what it saw.
type testRouter struct {
	addr    string
	status  int
	timeout time.Duration

	mu     sync.Mutex
	routed []routed
	dones  []done
}

type routed struct {
	Method, Target, Path, Host, XTest string
}

type done struct {
	Status int
	Err    bool
}

func (r *testRouter) Route(req *Request) Decision {
	r.mu.Lock()
	r.routed = append(r.routed, routed{req.Method, req.Target, req.Path, req.Host, req.Header("x-test")})
	r.mu.Unlock()
	var calls atomic.Int32
	return Decision{Addr: r.addr, Status: r.status, Timeout: r.timeout, Done: func(status int, err error) {
		if calls.Add(1) != 1 {
			panic("Done called twice")
		}
		r.mu.Lock()
		r.dones = append(r.dones, done{status, err != nil})
		r.mu.Unlock()
	}}
}

// waitDones waits until Done was called n times and returns the calls.
func (r *testRouter) waitDones(t *testing.T, n int) []done {
	t.Helper()
	waitFor(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.dones) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dones) != n || len(r.routed) != n {
		t.Fatalf("Done called %d times for %d routed requests, want %d", len(r.dones), len(r.routed), n)
	}
	return slices.Clone(r.dones)
}

// waitFor polls cond until it holds; the deadline only bounds a hang.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// proxy runs Serve for every connection accepted on a loopback listener.
type proxy struct {
	addr    string
	pool    *Pool
	cancel  context.CancelFunc
	accepts atomic.Int32

	mu   sync.Mutex
	errs []error
}

func startProxy(t testing.TB, r Router, opts Options) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxy{addr: ln.Addr().String(), pool: NewPool(PoolConfig{}), cancel: cancel}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepts.Add(1)
			wg.Go(func() {
				err := Serve(ctx, c, bufio.NewReader(c), r, p.pool, opts)
				p.mu.Lock()
				p.errs = append(p.errs, err)
				p.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		wg.Wait()
		p.pool.Close()
	})
	return p
}

func (p *proxy) serveErrs() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.errs)
}

// upstream is a net/http server that counts the connections it accepts.
type upstream struct {
	*httptest.Server
	accepts atomic.Int32
}

func startUpstream(t *testing.T, h http.Handler) *upstream {
	t.Helper()
	u := &upstream{Server: httptest.NewUnstartedServer(h)}
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.accepts.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) addr() string { return u.Listener.Addr().String() }

func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxConnsPerHost: 1, DisableCompression: true, ExpectContinueTimeout: 10 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// echo reports what the upstream received in response headers and writes
// the request body back; some paths shape the response.
func echo(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h := w.Header()
	h.Set("X-Got-Method", r.Method)
	h.Set("X-Got-Target", r.RequestURI)
	h.Set("X-Got-Host", r.Host)
	h.Set("X-Got-TE", strings.Join(r.TransferEncoding, ","))
	h.Set("X-Got-Length", strconv.FormatInt(r.ContentLength, 10))
	h.Set("X-Got-Trailer", r.Trailer.Get("X-Req-Trailer"))
	h.Set("X-Got-XFF", r.Header.Get("X-Forwarded-For"))
	h.Set("X-Got-Expect", r.Header.Get("Expect"))
	var names []string
	for k := range r.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	h.Set("X-Got-Names", strings.Join(names, ","))
	switch r.URL.Path {
	case "/chunked":
		h.Set("Trailer", "X-Resp-Trailer")
		_, _ = w.Write(body)
		w.(http.Flusher).Flush()
		_, _ = w.Write([]byte("+tail"))
		h.Set("X-Resp-Trailer", "t1")
	case "/nocontent":
		w.WriteHeader(http.StatusNoContent)
	case "/notmodified":
		h.Set("Etag", `"x"`)
		w.WriteHeader(http.StatusNotModified)
	case "/close":
		h.Set("Connection", "close")
		_, _ = w.Write(body)
	case "/hop":
		h.Set("Connection", "X-Resp-Hop")
		h.Set("X-Resp-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		_, _ = w.Write(body)
	case "/big":
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		sum := sha256.Sum256(body)
		h.Set("X-Got-Sha", hex.EncodeToString(sum[:]))
		if r.URL.Query().Get("cl") != "" {
			h.Set("Content-Length", strconv.Itoa(n))
		}
		_, _ = w.Write(pattern(n))
	case "/notfound":
		http.NotFound(w, r)
	default:
		_, _ = w.Write(body)
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// onlyReader hides Len so that net/http sends the body chunked.
type onlyReader struct{ io.Reader }

func TestServeExchanges(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	router := &testRouter{addr: up.addr()}
	px := startProxy(t, router, Options{})
	client := newClient(t)

	type result struct {
		Status      int
		Body        string
		GotMethod   string
		GotTarget   string
		GotTE       string
		GotLength   string
		GotTrailer  string
		RespTE      []string
		RespTrailer string
	}
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		chunked    bool
		reqTrailer string
		want       result
	}{
		{
			name: "get", method: "GET", path: "/x?q=1",
			want: result{Status: 200, GotMethod: "GET", GotTarget: "/x?q=1", GotLength: "0"},
		},
		{
			name: "post content-length", method: "POST", path: "/p", body: "hello",
			want: result{Status: 200, Body: "hello", GotMethod: "POST", GotTarget: "/p", GotLength: "5"},
		},
		{
			name: "post chunked with trailer", method: "POST", path: "/p", body: "chunky", chunked: true, reqTrailer: "rt",
			want: result{Status: 200, Body: "chunky", GotMethod: "POST", GotTarget: "/p", GotTE: "chunked", GotLength: "-1", GotTrailer: "rt"},
		},
		{
			name: "chunked response with trailer", method: "POST", path: "/chunked", body: "abc",
			want: result{Status: 200, Body: "abc+tail", GotMethod: "POST", GotTarget: "/chunked", GotLength: "3", RespTE: []string{"chunked"}, RespTrailer: "t1"},
		},
		{
			name: "head", method: "HEAD", path: "/h",
			want: result{Status: 200, GotMethod: "HEAD", GotTarget: "/h", GotLength: "0"},
		},
		{
			name: "204", method: "GET", path: "/nocontent",
			want: result{Status: 204, GotMethod: "GET", GotTarget: "/nocontent", GotLength: "0"},
		},
		{
			name: "304", method: "GET", path: "/notmodified",
			want: result{Status: 304, GotMethod: "GET", GotTarget: "/notmodified", GotLength: "0"},
		},
		{
			name: "upstream 404", method: "GET", path: "/notfound",
			want: result{Status: 404, Body: "404 page not found\n", GotMethod: "GET", GotTarget: "/notfound", GotLength: "0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
				if tt.chunked {
					body = onlyReader{body}
				}
			}
			req, err := http.NewRequestWithContext(t.Context(), tt.method, "http://"+px.addr+tt.path, body)
			if err != nil {
				t.Fatal(err)
			}
			if tt.reqTrailer != "" {
				req.Trailer = http.Header{"X-Req-Trailer": {tt.reqTrailer}}
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			h := resp.Header
			res := result{
				Status: resp.StatusCode, Body: string(got), GotMethod: h.Get("X-Got-Method"),
				GotTarget: h.Get("X-Got-Target"), GotTE: h.Get("X-Got-TE"), GotLength: h.Get("X-Got-Length"),
				GotTrailer: h.Get("X-Got-Trailer"), RespTE: resp.TransferEncoding, RespTrailer: resp.Trailer.Get("X-Resp-Trailer"),
			}
			if diff := cmp.Diff(tt.want, res); diff != "" {
				t.Errorf("response mismatch (-want +got):\n%s", diff)
			}
		})
	}
	// One client connection, one upstream connection, every request routed
	// and reported once.
	dones := router.waitDones(t, len(tests))
	for i, d := range dones {
		if d.Err || d.Status != tests[i].want.Status {
			t.Errorf("Done #%d = %+v, want status %d without error", i, d, tests[i].want.Status)
		}
	}
	if got := px.accepts.Load(); got != 1 {
		t.Errorf("proxy accepted %d connections, want 1", got)
	}
	if got := up.accepts.Load(); got != 1 {
		t.Errorf("upstream accepted %d connections, want 1 (keep-alive reuse)", got)
	}
}

func TestServeLargeBodies(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	px := startProxy(t, &testRouter{addr: up.addr()}, Options{})
	client := newClient(t)
	const n = 4<<20 + 123
	reqBody := pattern(n)
	sum := sha256.Sum256(reqBody)
	for _, tt := range []struct {
		name, query string
		chunked     bool
	}{
		{"content-length both ways", "&cl=1", false},
		{"chunked both ways", "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(reqBody)
			if tt.chunked {
				body = onlyReader{body}
			}
			req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://"+px.addr+"/big?n="+strconv.Itoa(n)+tt.query, body)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if gotSum := resp.Header.Get("X-Got-Sha"); gotSum != hex.EncodeToString(sum[:]) {
				t.Errorf("upstream got body sha %s, want %x", gotSum, sum)
			}
			if !bytes.Equal(got, reqBody) {
				t.Errorf("response body: %d bytes, want the %d-byte pattern", len(got), n)
			}
		})
	}
}

// rawConn dials the proxy for tests that speak HTTP/1.x by hand.
func rawConn(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Bounds a hang only; no test waits for this deadline.
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// expectEOF checks that the proxy closed the connection.
func expectEOF(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err == nil {
		t.Errorf("connection still open: read %q", b)
	}
}

func TestServePipelined(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	router := &testRouter{addr: up.addr()}
	px := startProxy(t, router, Options{})
	c, br := rawConn(t, px.addr)
	_, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
		"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"+
		"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	type got struct{ Target, Body string }
	var gots []got
	for range 4 {
		resp, body := readResponse(t, br, "GET")
		gots = append(gots, got{resp.Header.Get("X-Got-Target"), body})
	}
	want := []got{{"/a", ""}, {"/b", "abc"}, {"/c", "de"}, {"/d", ""}}
	if diff := cmp.Diff(want, gots); diff != "" {
		t.Errorf("pipelined responses mismatch (-want +got):\n%s", diff)
	}
	expectEOF(t, br)
	router.waitDones(t, 4)
}

func TestServeConnectionClose(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	px := startProxy(t, &testRouter{addr: up.addr()}, Options{})

	t.Run("client asks", func(t *testing.T) {
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, _ := readResponse(t, br, "GET")
		if !resp.Close {
			t.Error("response lacks Connection: close")
		}
		expectEOF(t, br)
	})
	t.Run("upstream asks", func(t *testing.T) {
		up := startUpstream(t, http.HandlerFunc(echo))
		px := startProxy(t, &testRouter{addr: up.addr()}, Options{})
		c, br := rawConn(t, px.addr)
		for range 2 {
			_, _ = io.WriteString(c, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, _ := readResponse(t, br, "GET")
			if resp.Close || resp.StatusCode != 200 {
				t.Errorf("status %d close %v, want 200 kept alive downstream", resp.StatusCode, resp.Close)
			}
		}
		if got := up.accepts.Load(); got != 2 {
			t.Errorf("upstream accepted %d connections, want 2 (closed ones not reused)", got)
		}
	})
	t.Run("http/1.0", func(t *testing.T) {
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "POST /chunked HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
		resp, body := readResponse(t, br, "POST")
		got := []string{resp.Header.Get("X-Got-Host"), body, fmt.Sprint(resp.TransferEncoding), fmt.Sprint(resp.Close)}
		want := []string{up.addr(), "hi+tail", "[]", "true"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("HTTP/1.0 exchange mismatch (-want +got):\n%s", diff)
		}
		expectEOF(t, br)
	})
}

func TestServeHopByHop(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	px := startProxy(t, &testRouter{addr: up.addr()}, Options{XForwardedFor: true})
	c, br := rawConn(t, px.addr)
	_, _ = io.WriteString(c, "GET /hop HTTP/1.1\r\nHost: x\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\n"+
		"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\nUpgrade-Insecure-Requests: 1\r\n"+
		"X-Forwarded-For: 192.0.2.1\r\nX-Keep: yes\r\n\r\n")
	resp, _ := readResponse(t, br, "GET")
	got := []string{resp.Header.Get("X-Got-Names"), resp.Header.Get("X-Got-XFF"),
		resp.Header.Get("X-Resp-Hop"), resp.Header.Get("Keep-Alive"), resp.Header.Get("Connection")}
	want := []string{"Te,Upgrade-Insecure-Requests,X-Forwarded-For,X-Keep", "192.0.2.1, 127.0.0.1", "", "", ""}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("hop-by-hop handling mismatch (-want +got):\n%s", diff)
	}
}

func TestServeExpectContinue(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	px := startProxy(t, &testRouter{addr: up.addr()}, Options{})
	client := newClient(t)
	var got100 atomic.Bool
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{Got100Continue: func() { got100.Store(true) }})
	req, _ := http.NewRequestWithContext(ctx, "PUT", "http://"+px.addr+"/e", strings.NewReader("payload"))
	req.Header.Set("Expect", "100-continue")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	got := []string{string(body), resp.Header.Get("X-Got-Expect"), fmt.Sprint(got100.Load())}
	if diff := cmp.Diff([]string{"payload", "", "true"}, got); diff != "" {
		t.Errorf("expect-continue mismatch (-want +got):\n%s", diff)
	}
}

func TestServeMalformed(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	router := &testRouter{addr: up.addr()}
	px := startProxy(t, router, Options{})
	tests := []struct {
		name string
		req  string
		want int
	}{
		{"bad header name", "GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400},
		{"two content-lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"content-length and chunked", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n", 400},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"huge header", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 70<<10) + "\r\n\r\n", 431},
		{"unknown coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"http/2 version", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"bad chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
		{"connect without hook", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := rawConn(t, px.addr)
			if _, err := io.WriteString(c, tt.req); err != nil {
				t.Fatal(err)
			}
			resp, _ := readResponse(t, br, "GET")
			if resp.StatusCode != tt.want || !resp.Close {
				t.Errorf("status %d close %v, want %d and close", resp.StatusCode, resp.Close, tt.want)
			}
			expectEOF(t, br)
		})
	}
	// Only the bad chunk reached the router (its head was fine); Done
	// reports the 400 the client got.
	dones := router.waitDones(t, 1)
	if dones[0].Status != 400 || !dones[0].Err {
		t.Errorf("Done for bad chunk = %+v, want status 400 with error", dones[0])
	}
}

// rawUpstream accepts connections and runs serve on each; it counts them.
type rawUpstream struct {
	ln      net.Listener
	accepts atomic.Int32
}

func startRawUpstream(t testing.TB, serve func(c net.Conn, br *bufio.Reader)) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepts.Add(1)
			wg.Go(func() {
				defer c.Close()
				serve(c, bufio.NewReader(c))
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return u
}

func TestServeUpstreamFailures(t *testing.T) {
	// Answers one request per connection, then closes without saying so:
	// the pool keeps the connection, which is stale by the next request.
	oneShot := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	// Promises 100 bytes, sends 10, closes.
	truncating := startRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
	})
	release := make(chan struct{})
	slow := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release) }) // before slow's Close, which waits for handlers
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		return addr
	}()

	t.Run("stale idle connection retried", func(t *testing.T) {
		router := &testRouter{addr: oneShot.ln.Addr().String()}
		px := startProxy(t, router, Options{})
		c, br := rawConn(t, px.addr)
		for range 3 {
			_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("got %d %q, want 200 ok", resp.StatusCode, body)
			}
		}
		if got := oneShot.accepts.Load(); got != 3 {
			t.Errorf("upstream accepted %d connections, want 3", got)
		}
		// A POST with a body is not idempotent: the stale connection's
		// failure is reported, not retried.
		_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
		if resp, _ := readResponse(t, br, "POST"); resp.StatusCode != 502 || resp.Close {
			t.Errorf("POST on stale connection: status %d close %v, want 502 kept alive", resp.StatusCode, resp.Close)
		}
		dones := router.waitDones(t, 4)
		want := []done{{200, false}, {200, false}, {200, false}, {502, true}}
		if diff := cmp.Diff(want, dones); diff != "" {
			t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
		}
	})

	tests := []struct {
		name     string
		router   *testRouter
		wantCode int
		wantDone done
	}{
		{"connect refused", &testRouter{addr: refused}, 503, done{503, true}},
		{"timeout", &testRouter{addr: slow.addr(), timeout: 50 * time.Millisecond}, 504, done{504, true}},
		{"no route", &testRouter{status: 0}, 404, done{404, false}},
		{"no healthy upstream", &testRouter{status: 503}, 503, done{503, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			px := startProxy(t, tt.router, Options{})
			c, br := rawConn(t, px.addr)
			_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, _ := readResponse(t, br, "GET")
			if resp.StatusCode != tt.wantCode || resp.Close {
				t.Errorf("status %d close %v, want %d kept alive", resp.StatusCode, resp.Close, tt.wantCode)
			}
			if diff := cmp.Diff([]done{tt.wantDone}, tt.router.waitDones(t, 1)); diff != "" {
				t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("upstream closes mid-response", func(t *testing.T) {
		router := &testRouter{addr: truncating.ln.Addr().String()}
		px := startProxy(t, router, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err == nil || string(body) != "0123456789" {
			t.Errorf("body %q, err %v; want the 10 bytes sent and an error", body, err)
		}
		if diff := cmp.Diff([]done{{200, true}}, router.waitDones(t, 1)); diff != "" {
			t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestServeUpgrade(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	type handoff struct {
		c        net.Conn
		buffered []byte
	}
	handoffs := make(chan handoff, 1)
	router := &testRouter{addr: up.addr()}
	px := startProxy(t, router, Options{OnUpgrade: func(c net.Conn, buffered []byte) {
		handoffs <- handoff{c, buffered}
	}})

	for _, tt := range []struct{ name, head string }{
		{"h2c", "GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"},
		{"connect", "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := rawConn(t, px.addr)
			// A plain request first: its bytes were consumed and must not
			// be handed over.
			_, _ = io.WriteString(c, "GET /before HTTP/1.1\r\nHost: x\r\n\r\n")
			readResponse(t, br, "GET")
			tail := "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
			_, _ = io.WriteString(c, tt.head+tail)
			h := <-handoffs
			defer h.c.Close()
			want := tt.head + tail
			got := h.buffered
			if !strings.HasPrefix(want, string(got)) || len(got) < len(tt.head) {
				t.Fatalf("buffered = %q, want a prefix of %q holding the whole head", got, want)
			}
			rest := make([]byte, len(want)-len(got))
			if _, err := io.ReadFull(h.c, rest); err != nil {
				t.Fatal(err)
			}
			if got := string(got) + string(rest); got != want {
				t.Errorf("bytes after hand-off = %q, want %q", got, want)
			}
			// The connection is the caller's now: it stays open.
			_, _ = io.WriteString(h.c, "mine")
			line := make([]byte, 4)
			if _, err := io.ReadFull(br, line); err != nil || string(line) != "mine" {
				t.Errorf("read %q, %v from handed-off connection", line, err)
			}
		})
	}
	waitFor(t, func() bool { return len(px.serveErrs()) == 2 })
	for _, err := range px.serveErrs() {
		if !errors.Is(err, ErrUpgrade) {
			t.Errorf("Serve returned %v, want ErrUpgrade", err)
		}
	}
	router.waitDones(t, 2) // the two plain requests, not the upgrades
}

func TestServeDrain(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "finished")
	}))
	router := &testRouter{addr: up.addr()}
	px := startProxy(t, router, Options{})

	busy, busyBR := rawConn(t, px.addr)
	_, _ = io.WriteString(busy, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered
	_, idleBR := rawConn(t, px.addr)
	waitFor(t, func() bool { return px.accepts.Load() == 2 })

	px.cancel()
	expectEOF(t, idleBR) // the idle connection closes without waiting
	close(release)
	resp, body := readResponse(t, busyBR, "GET")
	if resp.StatusCode != 200 || body != "finished" || !resp.Close {
		t.Errorf("in-flight exchange: status %d body %q close %v, want 200 finished close", resp.StatusCode, body, resp.Close)
	}
	expectEOF(t, busyBR)
	waitFor(t, func() bool { return len(px.serveErrs()) == 2 })
	for _, err := range px.serveErrs() {
		if err != nil {
			t.Errorf("Serve returned %v after drain, want nil", err)
		}
	}
	router.waitDones(t, 1)
}

func TestServeIdleTimeout(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	px := startProxy(t, &testRouter{addr: up.addr()}, Options{IdleTimeout: 20 * time.Millisecond})
	c, br := rawConn(t, px.addr)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponse(t, br, "GET")
	expectEOF(t, br) // closed once idle; nothing else is sent
}
