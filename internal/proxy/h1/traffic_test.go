package h1

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// routeFunc is a Router that asks a function; the Decision it returns gets
// a Done that records into outcomes.
type routeFunc struct {
	decide func(req *Request) Decision

	mu    sync.Mutex
	dones []done
}

func (r *routeFunc) Route(req *Request) Decision {
	d := r.decide(req)
	d.Done = func(status int, err error) {
		r.mu.Lock()
		r.dones = append(r.dones, done{status, err != nil})
		r.mu.Unlock()
	}
	return d
}

func (r *routeFunc) waitDones(t *testing.T, n int) []done {
	t.Helper()
	waitFor(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.dones) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dones)
}

// scripted is an upstream whose n-th request (from 0) is answered with
// statuses[n] (the last one repeats) and a body naming the try.
type scripted struct {
	*upstream
	hits atomic.Int32
}

func startScripted(t *testing.T, statuses ...int) *scripted {
	t.Helper()
	s := &scripted{}
	s.upstream = startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		n := int(s.hits.Add(1)) - 1
		status := statuses[min(n, len(statuses)-1)]
		w.Header().Set("X-Got-Body", string(body))
		w.Header().Set("X-Got-Target", r.RequestURI)
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, "try %d status %d", n, status)
	}))
	return s
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// retryOn5xx retries 503 and any failure, recording what it was asked.
type retryLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *retryLog) retryOn(status int, f Failure) bool {
	l.mu.Lock()
	l.calls = append(l.calls, fmt.Sprintf("%d/%d", status, f))
	l.mu.Unlock()
	return status == 503 || f != FailureNone
}

func (l *retryLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

func TestTrafficLocalReplyHeader(t *testing.T) {
	r := &routeFunc{decide: func(req *Request) Decision {
		if req.Path == "/old" {
			return Decision{Status: 301, Header: []Field{{"Location", "http://x/new"}, {"Content-Length", "99"}, {"Bad", "a\r\nInjected: 1"}}}
		}
		return Decision{Status: 429, Header: []Field{{"Retry-After", "2"}}}
	}}
	px := startProxy(t, r, Options{})
	c, br := rawConn(t, px.addr)
	_, _ = io.WriteString(c, "GET /old HTTP/1.1\r\nHost: x\r\n\r\nGET /limited HTTP/1.1\r\nHost: x\r\n\r\n")
	resp1, body1 := readResponse(t, br, "GET")
	resp2, body2 := readResponse(t, br, "GET")
	got := []string{fmt.Sprint(resp1.StatusCode), resp1.Header.Get("Location"), fmt.Sprint(resp1.ContentLength),
		body1, resp1.Header.Get("Bad"), resp1.Header.Get("Injected"),
		fmt.Sprint(resp2.StatusCode), resp2.Header.Get("Retry-After"), body2}
	want := []string{"301", "http://x/new", "0", "", "", "", "429", "2", "local_rate_limited"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("local replies mismatch (-want +got):\n%s", diff)
	}
}

func TestTrafficRewriteAndEdits(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Got-Target", r.RequestURI)
		h.Set("X-Got-Host", r.Host)
		h.Set("X-Got-A", strings.Join(r.Header.Values("X-A"), ","))
		h.Set("X-Got-B", strings.Join(r.Header.Values("X-B"), ","))
		h.Set("X-Got-C", strings.Join(r.Header.Values("X-C"), ","))
		h.Set("X-Got-Length", fmt.Sprint(r.ContentLength))
		h["X-Resp-Drop"] = []string{"1"}
		h["X-Resp-Set"] = []string{"old1", "old2"}
		h.Set("X-Resp-Keep", "k")
		_, _ = io.Copy(w, r.Body)
	}))
	tr := &Traffic{
		Target: "/rewritten?q=1",
		Host:   "backend.mesh",
		RequestHeaders: &HeaderEdits{
			Set:    []Field{{"x-a", "set"}, {"content-length", "999"}, {"host", "evil"}},
			Add:    []Field{{"x-b", "added"}, {"x-c", "gone"}},
			Remove: []string{"x-c", "host"},
		},
		ResponseHeaders: &HeaderEdits{
			Set:    []Field{{"x-resp-set", "new"}, {"connection", "close"}},
			Add:    []Field{{"x-resp-add", "a"}},
			Remove: []string{"X-RESP-DROP"},
		},
	}
	r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
	px := startProxy(t, r, Options{})
	c, br := rawConn(t, px.addr)
	// Mixed-case names in the request: edits match case-insensitively.
	_, _ = io.WriteString(c, "POST /orig HTTP/1.1\r\nHost: front\r\nx-A: 1\r\nX-a: 2\r\nX-B: orig\r\nX-C: orig\r\nContent-Length: 5\r\n\r\nhello")
	resp, body := readResponse(t, br, "POST")
	h := resp.Header
	got := map[string]string{
		"target": h.Get("X-Got-Target"), "host": h.Get("X-Got-Host"), "a": h.Get("X-Got-A"), "b": h.Get("X-Got-B"),
		"c": h.Get("X-Got-C"), "length": h.Get("X-Got-Length"), "body": body,
		"drop": strings.Join(h.Values("X-Resp-Drop"), ","), "set": strings.Join(h.Values("X-Resp-Set"), ","),
		"add": h.Get("X-Resp-Add"), "keep": h.Get("X-Resp-Keep"), "close": fmt.Sprint(resp.Close),
	}
	want := map[string]string{
		"target": "/rewritten?q=1", "host": "backend.mesh", "a": "set", "b": "orig,added",
		"c": "", "length": "5", "body": "hello",
		"drop": "", "set": "new", "add": "a", "keep": "k", "close": "false",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rewrite and edits mismatch (-want +got):\n%s", diff)
	}
	// Local replies get no response edits.
	r2 := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: deadAddr(t), Traffic: tr} }}
	px2 := startProxy(t, r2, Options{})
	c2, br2 := rawConn(t, px2.addr)
	_, _ = io.WriteString(c2, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp2, _ := readResponse(t, br2, "GET")
	if resp2.StatusCode != 503 || resp2.Header.Get("X-Resp-Add") != "" {
		t.Errorf("local reply: status %d X-Resp-Add %q, want 503 without edits", resp2.StatusCode, resp2.Header.Get("X-Resp-Add"))
	}
}

func TestTrafficRetries(t *testing.T) {
	t.Run("503 then 200", func(t *testing.T) {
		up := startScripted(t, 503, 200)
		var log retryLog
		var backoffs []int
		tr := &Traffic{Attempts: 2, RetryOn: log.retryOn, Backoff: func(n int) time.Duration {
			backoffs = append(backoffs, n)
			return time.Millisecond
		}}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		// A POST with a body: replayed from the connection's buffer.
		_, _ = io.WriteString(c, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
		resp, body := readResponse(t, br, "POST")
		got := []string{fmt.Sprint(resp.StatusCode), body, resp.Header.Get("X-Got-Body"), fmt.Sprint(resp.Close)}
		if diff := cmp.Diff([]string{"200", "try 1 status 200", "body", "false"}, got); diff != "" {
			t.Errorf("response mismatch (-want +got):\n%s", diff)
		}
		// The connection carries on: the next request is read cleanly.
		_, _ = io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 200 || body != "try 2 status 200" {
			t.Errorf("next request: %d %q", resp.StatusCode, body)
		}
		if diff := cmp.Diff([]string{"503/0", "200/0", "200/0"}, log.get()); diff != "" {
			t.Errorf("RetryOn calls mismatch (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]int{1}, backoffs); diff != "" {
			t.Errorf("Backoff calls mismatch (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]done{{200, false}, {200, false}}, r.waitDones(t, 2)); diff != "" {
			t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("connect failure then another endpoint", func(t *testing.T) {
		up := startScripted(t, 200)
		dead := deadAddr(t)
		var log retryLog
		var nexts atomic.Int32
		tr := &Traffic{Attempts: 1, RetryOn: log.retryOn, Next: func(status int, f Failure) (string, Upstream, bool) {
			nexts.Add(1)
			return up.addr(), nil, true
		}}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: dead, Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != 200 || body != "try 0 status 200" {
			t.Errorf("got %d %q, want 200 from the second endpoint", resp.StatusCode, body)
		}
		if diff := cmp.Diff([]string{fmt.Sprintf("0/%d", FailureConnect)}, log.get()); diff != "" {
			t.Errorf("RetryOn calls mismatch (-want +got):\n%s", diff)
		}
		if nexts.Load() != 1 {
			t.Errorf("Next called %d times, want 1", nexts.Load())
		}
	})

	t.Run("attempts exhausted relays the last response", func(t *testing.T) {
		up := startScripted(t, 503)
		var log retryLog
		tr := &Traffic{Attempts: 2, RetryOn: log.retryOn}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != 503 || body != "try 2 status 503" {
			t.Errorf("got %d %q, want the third try's 503 relayed", resp.StatusCode, body)
		}
		if got := up.hits.Load(); got != 3 {
			t.Errorf("upstream saw %d requests, want 3", got)
		}
		if diff := cmp.Diff([]done{{503, false}}, r.waitDones(t, 1)); diff != "" {
			t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("next stops", func(t *testing.T) {
		up := startScripted(t, 503, 200)
		var log retryLog
		tr := &Traffic{Attempts: 3, RetryOn: log.retryOn, Next: func(int, Failure) (string, Upstream, bool) {
			return "", nil, false
		}}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != 503 || body != "try 0 status 503" {
			t.Errorf("got %d %q, want the first 503 relayed", resp.StatusCode, body)
		}
		if got := up.hits.Load(); got != 1 {
			t.Errorf("upstream saw %d requests, want 1", got)
		}
		// A failure with Next stopping gets the failure's local reply.
		r2 := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: deadAddr(t), Traffic: tr} }}
		px2 := startProxy(t, r2, Options{})
		c2, br2 := rawConn(t, px2.addr)
		_, _ = io.WriteString(c2, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := readResponse(t, br2, "GET"); resp.StatusCode != 503 || body != LocalBody(503) {
			t.Errorf("got %d %q, want the local 503", resp.StatusCode, body)
		}
	})

	t.Run("no retry with a chunked body", func(t *testing.T) {
		up := startScripted(t, 503, 200)
		var log retryLog
		tr := &Traffic{Attempts: 2, RetryOn: log.retryOn}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
		resp, body := readResponse(t, br, "POST")
		if resp.StatusCode != 503 || body != "try 0 status 503" || resp.Header.Get("X-Got-Body") != "abc" {
			t.Errorf("got %d %q body %q, want the 503 relayed after the body went through once",
				resp.StatusCode, body, resp.Header.Get("X-Got-Body"))
		}
		if got := up.hits.Load(); got != 1 {
			t.Errorf("upstream saw %d requests, want 1", got)
		}
	})

	t.Run("body filled into the buffer for a retry", func(t *testing.T) {
		up := startScripted(t, 503, 200)
		var log retryLog
		tr := &Traffic{Attempts: 1, RetryOn: log.retryOn}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		// The body follows the head late: the engine waits for it.
		_, _ = io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
		time.Sleep(20 * time.Millisecond)
		_, _ = io.WriteString(c, "late!!")
		resp, body := readResponse(t, br, "PUT")
		if resp.StatusCode != 200 || body != "try 1 status 200" || resp.Header.Get("X-Got-Body") != "late!!" {
			t.Errorf("got %d %q body %q, want the retried 200 with the body", resp.StatusCode, body, resp.Header.Get("X-Got-Body"))
		}
	})

	t.Run("per-try timeout", func(t *testing.T) {
		release := make(chan struct{})
		slow := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(func() { close(release) })
		fast := startScripted(t, 200)
		var log retryLog
		tr := &Traffic{Attempts: 1, PerTryTimeout: 50 * time.Millisecond, RetryOn: log.retryOn,
			Next: func(int, Failure) (string, Upstream, bool) { return fast.addr(), nil, true }}
		r := &routeFunc{decide: func(*Request) Decision {
			return Decision{Addr: slow.addr(), Timeout: 20 * time.Second, Traffic: tr}
		}}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != 200 || body != "try 0 status 200" {
			t.Errorf("got %d %q, want 200 from the second try", resp.StatusCode, body)
		}
		if diff := cmp.Diff([]string{fmt.Sprintf("0/%d", FailureTimeout)}, log.get()); diff != "" {
			t.Errorf("RetryOn calls mismatch (-want +got):\n%s", diff)
		}
	})
}

// fakeUpstream is an Upstream whose n-th call answers answers[n] (the last
// repeats): a status, or err for a failure before the response.
type fakeUpstream struct {
	answers []fakeAnswer

	mu    sync.Mutex
	calls []fakeCall
}

type fakeAnswer struct {
	status int
	err    error
}

type fakeCall struct {
	Method, Target, Host, Body string
	Fields                     []string
}

func (u *fakeUpstream) Exchange(x *Exchange) error {
	var fields []string
	x.VisitFields(func(name, value []byte) bool {
		fields = append(fields, string(name)+"="+string(value))
		return true
	})
	body, err := io.ReadAll(x)
	if err != nil {
		return err
	}
	u.mu.Lock()
	n := len(u.calls)
	u.calls = append(u.calls, fakeCall{x.Method(), x.Target(), x.Host(), string(body), fields})
	u.mu.Unlock()
	a := u.answers[min(n, len(u.answers)-1)]
	if a.err != nil {
		return a.err
	}
	resp := fmt.Sprintf("fake %d status %d", n, a.status)
	x.WriteHead(a.status, int64(len(resp)), func(yield func(name, value string) bool) {
		yield("X-Fake", "1")
	})
	if _, err := x.Write([]byte(resp)); err != nil {
		return err
	}
	return x.Flush()
}

func (u *fakeUpstream) get() []fakeCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.calls)
}

func TestTrafficUpstreamPath(t *testing.T) {
	t.Run("retry 503 with the body replayed", func(t *testing.T) {
		fu := &fakeUpstream{answers: []fakeAnswer{{status: 503}, {status: 200}}}
		var log retryLog
		tr := &Traffic{Attempts: 2, RetryOn: log.retryOn, Target: "/new", Host: "h.mesh",
			RequestHeaders:  &HeaderEdits{Set: []Field{{"x-set", "v"}}, Remove: []string{"x-drop"}},
			ResponseHeaders: &HeaderEdits{Add: []Field{{"x-added", "r"}}, Remove: []string{"x-fake"}}}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: "peer:1", Upstream: fu, Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "POST /old HTTP/1.1\r\nHost: x\r\nX-Drop: 1\r\nX-Keep: k\r\nX-Set: old\r\nContent-Length: 3\r\n\r\nabc")
		resp, body := readResponse(t, br, "POST")
		got := []string{fmt.Sprint(resp.StatusCode), body, resp.Header.Get("X-Fake"), resp.Header.Get("X-Added"), fmt.Sprint(resp.Close)}
		if diff := cmp.Diff([]string{"200", "fake 1 status 200", "", "r", "false"}, got); diff != "" {
			t.Errorf("response mismatch (-want +got):\n%s", diff)
		}
		call := fakeCall{"POST", "/new", "h.mesh", "abc", []string{"X-Keep=k", "x-set=v"}}
		if diff := cmp.Diff([]fakeCall{call, call}, fu.get()); diff != "" {
			t.Errorf("Upstream calls mismatch (-want +got):\n%s", diff)
		}
		// The body was consumed once: the next request parses.
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, _ := readResponse(t, br, "GET"); resp.StatusCode != 200 {
			t.Errorf("next request: %d", resp.StatusCode)
		}
		if diff := cmp.Diff([]done{{200, false}, {200, false}}, r.waitDones(t, 2)); diff != "" {
			t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("failure then a pooled endpoint", func(t *testing.T) {
		fu := &fakeUpstream{answers: []fakeAnswer{{err: &UpstreamError{Status: 503, Err: errors.New("no peer")}}}}
		up := startScripted(t, 200)
		var log retryLog
		tr := &Traffic{Attempts: 1, RetryOn: log.retryOn, Next: func(int, Failure) (string, Upstream, bool) {
			return up.addr(), nil, true
		}}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: "peer:1", Upstream: fu, Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
		resp, body := readResponse(t, br, "PUT")
		if resp.StatusCode != 200 || body != "try 0 status 200" || resp.Header.Get("X-Got-Body") != "hi" {
			t.Errorf("got %d %q body %q, want 200 from the pooled endpoint with the body", resp.StatusCode, body, resp.Header.Get("X-Got-Body"))
		}
		if diff := cmp.Diff([]string{fmt.Sprintf("0/%d", FailureConnect)}, log.get()); diff != "" {
			t.Errorf("RetryOn calls mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("last attempt relays the 503", func(t *testing.T) {
		fu := &fakeUpstream{answers: []fakeAnswer{{status: 503}}}
		var log retryLog
		tr := &Traffic{Attempts: 1, RetryOn: log.retryOn}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: "peer:1", Upstream: fu, Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != 503 || body != "fake 1 status 503" {
			t.Errorf("got %d %q, want the second 503 relayed", resp.StatusCode, body)
		}
	})
}

func TestTrafficMirror(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echo))
	mirrored := make(chan *OutRequest, 4)
	tr := &Traffic{
		Target: "/shadowed", Host: "svc.mesh",
		RequestHeaders: &HeaderEdits{Add: []Field{{"x-added", "1"}}},
		Mirror:         func(req *OutRequest) { mirrored <- req },
	}
	r := &routeFunc{decide: func(req *Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
	px := startProxy(t, r, Options{XForwardedFor: true})
	c, br := rawConn(t, px.addr)
	_, _ = io.WriteString(c, "PATCH /orig HTTP/1.1\r\nHost: x\r\nX-Orig: o\r\nContent-Length: 5\r\n\r\nfirst")
	resp, body := readResponse(t, br, "PATCH")
	if resp.StatusCode != 200 || body != "first" || resp.Header.Get("X-Got-Target") != "/shadowed" {
		t.Errorf("client got %d %q target %q, want the upstream's echo", resp.StatusCode, body, resp.Header.Get("X-Got-Target"))
	}
	// A second request on the connection reuses its buffers; the first
	// mirror's copy must not change.
	_, _ = io.WriteString(c, "POST /zzzzz HTTP/1.1\r\nHost: y\r\nX-Orig: p\r\nContent-Length: 6\r\n\r\nsecond")
	readResponse(t, br, "POST")
	// A chunked body is not replayable: no mirror.
	_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: y\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
	readResponse(t, br, "POST")

	type copyOf struct {
		Method, Target, Host, Body string
		Fields                     []string
		Length                     int64
	}
	var got []copyOf
	for range 2 {
		req := <-mirrored
		var fields []string
		for name, value := range req.Fields {
			fields = append(fields, name+"="+value)
		}
		b, _ := io.ReadAll(req.Body)
		got = append(got, copyOf{req.Method, req.Target, req.Host, string(b), fields, req.ContentLength})
	}
	want := []copyOf{
		{"PATCH", "/shadowed", "svc.mesh", "first", []string{"X-Orig=o", "x-added=1", "X-Forwarded-For=127.0.0.1"}, 5},
		{"POST", "/shadowed", "svc.mesh", "second", []string{"X-Orig=p", "x-added=1", "X-Forwarded-For=127.0.0.1"}, 6},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mirrored requests mismatch (-want +got):\n%s", diff)
	}
	select {
	case req := <-mirrored:
		t.Errorf("chunked request mirrored: %+v", req)
	default:
	}
}

func TestTrafficDelay(t *testing.T) {
	up := startScripted(t, 200)
	t.Run("honoured", func(t *testing.T) {
		const delay = 50 * time.Millisecond
		tr := &Traffic{Delay: delay}
		r := &routeFunc{decide: func(*Request) Decision { return Decision{Addr: up.addr(), Traffic: tr} }}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		start := time.Now()
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, _ := readResponse(t, br, "GET")
		if resp.StatusCode != 200 {
			t.Errorf("status %d, want 200", resp.StatusCode)
		}
		if el := time.Since(start); el < delay {
			t.Errorf("answered after %v, before the %v delay", el, delay)
		}
	})
	t.Run("bounded by the timeout", func(t *testing.T) {
		tr := &Traffic{Delay: time.Hour}
		r := &routeFunc{decide: func(*Request) Decision {
			return Decision{Addr: up.addr(), Timeout: 50 * time.Millisecond, Traffic: tr}
		}}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
		resp, body := readResponse(t, br, "POST")
		if resp.StatusCode != 504 || body != LocalBody(504) || resp.Close {
			t.Errorf("got %d %q close %v, want the local 504 kept alive", resp.StatusCode, body, resp.Close)
		}
		if diff := cmp.Diff([]done{{504, true}}, r.waitDones(t, 1)); diff != "" {
			t.Errorf("Done calls mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("cut short by a drain", func(t *testing.T) {
		tr := &Traffic{Delay: time.Hour}
		routed := make(chan struct{}, 1)
		r := &routeFunc{decide: func(*Request) Decision {
			routed <- struct{}{}
			return Decision{Addr: up.addr(), Traffic: tr}
		}}
		px := startProxy(t, r, Options{})
		c, br := rawConn(t, px.addr)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		<-routed // the delay starts now, or the drain is seen when it does
		px.cancel()
		resp, _ := readResponse(t, br, "GET")
		if resp.StatusCode != 200 || !resp.Close {
			t.Errorf("got %d close %v, want 200 with close", resp.StatusCode, resp.Close)
		}
	})
}
