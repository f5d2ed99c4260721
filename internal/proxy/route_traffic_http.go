package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/fault"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/ratelimit"
	"verge.dev/verge/internal/proxy/resilience"
)

// Traffic management on the net/http path (HTTP/2, gRPC, h2c): admission
// before the cluster is picked, and the pieces forward uses for retries.

// gRPC codes the proxy answers with.
const (
	grpcResourceExhausted = 8
	grpcUnavailable       = 14
)

// admit runs the route's redirect, rate limit, the listener's shedder and
// the route's faults for r. It answers r itself and returns false when r
// goes no further; otherwise end must be called when r is done.
func (h listenerHandler) admit(w http.ResponseWriter, r *http.Request, grpc bool, stat string, lcfg *config.Listener, rte *route, head *requestHead) (end func(), ok bool) {
	p := h.p
	tm := p.trafficMetrics
	rt := rte.traffic
	get := func(_, canonical string) string { return r.Header.Get(canonical) }
	if rt != nil && rt.redirect != nil {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		status := redirectStatus(rt.redirect)
		w.Header().Set("Location", redirectLocation(rt.redirect, scheme, r.Host, head.path, head.query))
		w.WriteHeader(status)
		tm.redirects.WithLabelValues(stat).Inc()
		p.metrics.request(stat, "", status)
		return nil, false
	}
	if rt != nil && rt.limit != nil {
		source := principalOf(r)
		if source == "" {
			source = sourceIP(r.RemoteAddr).String()
		}
		if ok, wait := rt.limit.allow(source, get); !ok {
			tm.ratelimited.WithLabelValues(stat).Inc()
			w.Header().Set("Retry-After", strconv.FormatInt(ratelimit.RetryAfterSeconds(wait), 10))
			h.reply(w, grpc, stat, http.StatusTooManyRequests, grpcResourceExhausted, "local rate limit")
			return nil, false
		}
	}
	var release func()
	if ls := p.shedderFor(lcfg); ls != nil {
		rel, ok := ls.acquire(r.Context(), ls.classOf(rt, get))
		if !ok {
			h.reply(w, grpc, stat, http.StatusServiceUnavailable, grpcUnavailable, "overloaded")
			return nil, false
		}
		release = rel
	}
	var rf *routeFault
	if rt != nil && len(rt.faults) > 0 {
		var d fault.Decision
		d, rf = rt.faultFor(head)
		if rf != nil {
			if d.Delay > 0 {
				tm.faults.WithLabelValues(stat, "delay").Inc()
				t := time.NewTimer(d.Delay)
				select {
				case <-t.C:
				case <-r.Context().Done():
					t.Stop()
				}
			}
			if hs, gs := rf.abortStatus(d, grpc); hs != 0 {
				tm.faults.WithLabelValues(stat, "abort").Inc()
				rf.filter.Done()
				if release != nil {
					release()
				}
				h.reply(w, grpc && gs >= 0, stat, hs, gs, "fault filter abort")
				return nil, false
			}
		}
	}
	return func() {
		if rf != nil {
			rf.filter.Done()
		}
		if release != nil {
			release()
		}
	}, true
}

// reply answers r locally: for gRPC a trailers-only response with
// grpcCode, else httpStatus with the proxy's small body.
func (h listenerHandler) reply(w http.ResponseWriter, grpc bool, stat string, httpStatus, grpcCode int, msg string) {
	hd := w.Header()
	if grpc {
		hd.Set("Content-Type", "application/grpc")
		hd.Set("Grpc-Status", strconv.Itoa(grpcCode))
		hd.Set("Grpc-Message", msg)
		w.WriteHeader(http.StatusOK)
		h.p.metrics.request(stat, "", http.StatusOK)
		return
	}
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(httpStatus)
	_, _ = io.WriteString(w, h1.LocalBody(httpStatus))
	h.p.metrics.request(stat, "", httpStatus)
}

// pickByHash picks r's endpoint by the route's hash policy; setCookie is
// a new affinity cookie for the response, if the policy makes one.
func pickByHash(rt *routeTraffic, cl *cluster, r *http.Request) (*balancer.Endpoint, string) {
	view := requestView{
		get: func(_, canonical string) string { return r.Header.Get(canonical) },
		src: func() string { return sourceIP(r.RemoteAddr).String() },
	}
	hash, ok, setCookie := rt.hashKey(&view)
	if hp, isHash := cl.bal.(balancer.HashPicker); ok && isHash {
		return hp.PickHash(hash), setCookie
	}
	return cl.bal.Pick(), setCookie
}

// applyEdits applies header edits to a net/http header.
func applyEdits(hd http.Header, e *h1.HeaderEdits) {
	if e == nil {
		return
	}
	for _, f := range e.Set {
		hd.Set(f.Name, f.Value)
	}
	for _, f := range e.Add {
		hd.Add(f.Name, f.Value)
	}
	for _, n := range e.Remove {
		hd.Del(n)
	}
}

// rewriteURLPath applies a path rewrite to u, returning the new Path and
// RawPath (the wire form when it differs from Path).
func rewriteURLPath(rw *config.Rewrite, u *url.URL) (path, rawPath string) {
	escaped := u.EscapedPath()
	np := rewritePath(rw, escaped)
	if np == escaped {
		return u.Path, u.RawPath
	}
	dec, err := url.PathUnescape(np)
	if err != nil {
		return np, ""
	}
	if dec == np {
		return dec, ""
	}
	return dec, np
}

// failureOfLocal maps a local failure to resilience's kind.
func failureOfLocal(f failure) resilience.Failure {
	switch f {
	case failConnect:
		return resilience.FailureConnect
	case failTimeout:
		return resilience.FailureTimeout
	default:
		return resilience.FailureReset
	}
}

// perTryTimer ends one attempt's context after the per-try timeout,
// unless the response head arrived first.
type perTryTimer struct {
	t      *time.Timer
	cancel context.CancelFunc
}

func startPerTry(ctx context.Context, d time.Duration) (context.Context, *perTryTimer) {
	actx, cancel := context.WithCancel(ctx)
	return actx, &perTryTimer{t: time.AfterFunc(d, cancel), cancel: cancel}
}

// stop disarms the timer; it reports whether the timeout fired first.
// With ok false (the attempt failed) the attempt's context is released
// at once; with a response its body keeps the context until the
// request's own end (the context is a child of the request's).
func (pt *perTryTimer) stop(ok bool) (fired bool) {
	if pt == nil {
		return false
	}
	fired = !pt.t.Stop()
	if !ok {
		pt.cancel()
	}
	return fired
}

// retry prepares retry n (1-based) after the attempt on prev ended with
// status and fl: it reports prev to the guard, takes a retry slot, waits
// the backoff and picks the next endpoint. ok false: no retry, and prev
// is still the caller's to report.
func (h listenerHandler) retry(ctx context.Context, cl *cluster, rt *routeTraffic, n int, replay *replayBody, length int64, prev *balancer.Endpoint, status int, fl resilience.Failure, start time.Time, retried *bool) (*balancer.Endpoint, bool) {
	if replay != nil {
		if !replay.rewindable() {
			return nil, false
		}
	} else if length != 0 {
		return nil, false
	}
	if *retried {
		cl.guard.retryDone()
		*retried = false
	}
	if !cl.guard.tryRetry() {
		return nil, false
	}
	if d := rt.backoff.Delay(n); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	ep := pickOther(cl.bal, prev.Address)
	if ep == nil {
		cl.guard.retryDone()
		return nil, false
	}
	cl.guard.report(prev, status, fl, time.Since(start))
	*retried = true
	return ep, true
}

// mirror sends copies of r to the route's mirrors, when its body is known
// whole (no body, or kept for replay and read to its end).
func (h listenerHandler) mirror(r *http.Request, rt *routeTraffic, path, rawPath, host string, replay *replayBody) {
	var body []byte
	if r.ContentLength != 0 {
		var ok bool
		if body, ok = replay.whole(); !ok {
			return
		}
	}
	var cp *mirrorCopy
	st := h.p.state.Load()
	for i := range rt.mirrors {
		m := &rt.mirrors[i]
		if !mirrorHits(m) {
			continue
		}
		if cp == nil {
			target := (&url.URL{Path: path, RawPath: rawPath, RawQuery: r.URL.RawQuery}).RequestURI()
			cp = copyHTTPRequest(r, target, host, r.Header, body)
		}
		h.p.mirrorTo(st, m.Cluster, cp)
	}
}

// errRetried ends the body read of an attempt that was given up for a
// retry.
var errRetried = errors.New("request body: attempt abandoned for a retry")

// replayBody keeps a copy of a request body (up to maxRetryBody) as it is
// sent, so that a retry can send it again: the new attempt reads the copy,
// then what the client has not sent yet. Envoy buffers a retried request
// the same way.
type replayBody struct {
	// mu is held during a read of src, so rewindable, which must not wait
	// for a client still sending, only TryLocks it.
	mu   sync.Mutex
	src  io.Reader
	buf  []byte
	eof  bool
	over bool // more than maxRetryBody read: no retry
	gen  int
}

// reader returns the body of a new attempt; the previous attempt's reader
// fails from now on.
func (rb *replayBody) reader() io.ReadCloser {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.gen++
	return &replayReader{rb: rb, gen: rb.gen}
}

// rewindable reports whether the body can be sent again now.
func (rb *replayBody) rewindable() bool {
	if !rb.mu.TryLock() {
		return false
	}
	defer rb.mu.Unlock()
	return !rb.over
}

// whole returns the whole body when it has been read to its end and kept.
func (rb *replayBody) whole() ([]byte, bool) {
	if rb == nil || !rb.mu.TryLock() {
		return nil, false
	}
	defer rb.mu.Unlock()
	if !rb.eof || rb.over {
		return nil, false
	}
	return bytes.Clone(rb.buf), true
}

type replayReader struct {
	rb  *replayBody
	gen int
	off int
}

func (r *replayReader) Read(p []byte) (int, error) {
	rb := r.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if r.gen != rb.gen {
		return 0, errRetried
	}
	if r.off < len(rb.buf) {
		n := copy(p, rb.buf[r.off:])
		r.off += n
		return n, nil
	}
	if rb.eof {
		return 0, io.EOF
	}
	n, err := rb.src.Read(p)
	if n > 0 && !rb.over {
		if len(rb.buf)+n <= maxRetryBody {
			rb.buf = append(rb.buf, p[:n]...)
			r.off += n
		} else {
			rb.over, rb.buf = true, nil
		}
	}
	if err == io.EOF {
		rb.eof = true
	}
	return n, err
}

// Close leaves the client's body to the server, which closes it.
func (r *replayReader) Close() error { return nil }
