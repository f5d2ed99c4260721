package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// ErrUpgrade is returned by Serve after it handed the connection to
// Options.OnUpgrade.
var ErrUpgrade = errors.New("h1: connection upgraded")

// Options configures Serve. The zero value is usable.
type Options struct {
	// XForwardedFor appends the client's IP to X-Forwarded-For (creating
	// the header if absent). Prior values are kept, comma-joined, as
	// net/http/httputil.ReverseProxy does.
	XForwardedFor bool
	// IdleTimeout bounds the wait for a kept-alive connection's next
	// request and the reading of its head; zero means no limit.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request head (beyond it: 431) and a response
	// head (beyond it: 502); zero means 64 KiB.
	MaxHeaderBytes int
	// OnUpgrade, if set, receives the connection when a request carries an
	// Upgrade header (h2c, WebSocket) or is a CONNECT, which this package
	// does not proxy. buffered holds every byte read from c and not yet
	// consumed: the whole head of that request, then whatever followed it.
	// The hook owns c from then on (Serve does not close it) and is called
	// on Serve's goroutine just before Serve returns ErrUpgrade; the Router
	// is not consulted for that request.
	//
	// Without a hook, Upgrade is ignored (RFC 9110 7.8 allows it: the
	// header is hop-by-hop and not forwarded) and CONNECT gets 501.
	OnUpgrade func(c net.Conn, buffered []byte)
}

const defaultMaxHeaderBytes = 64 << 10

// Serve serves HTTP/1.1 requests read from c, forwarding each to the
// upstream its Router picks through p, until the client closes or asks to
// close, the idle timeout passes, a request cannot be served on this
// connection any more, or ctx ends. When ctx ends Serve drains: an exchange
// in flight finishes (its response says "Connection: close"), an idle
// connection is closed at once.
//
// br reads from c and may already hold bytes the caller peeked; Serve takes
// it over. Everything happens on the calling goroutine. Serve closes c when
// it returns, except with ErrUpgrade (see Options.OnUpgrade).
//
// It returns nil when the connection ended normally, ErrUpgrade, or the
// error that made it close the connection (a malformed request, which got
// its 4xx first, or an exchange that failed after its response started).
// Upstream failures that were answered with 502, 503 or 504 and left the
// connection usable are reported only to Decision.Done:
//
//   - 503 "upstream connect error": connecting failed (refused, dial
//     timeout), as Envoy answers;
//   - 504 "upstream timeout": Decision.Timeout passed before the response
//     head arrived;
//   - 502 "upstream error": anything else before the response head.
//
// After the response head was sent, an upstream failure closes c.
//
// A Decision with Traffic is carried out around the exchange (rewrites,
// edits, delay, retries, mirror; see Traffic); its local replies are the
// same, for the last attempt's failure.
//
// Request bodies are sent whole before the response is read, so an
// upstream that answers early without reading the body, or echoes a body
// larger than the socket buffers while still reading it, is not supported.
func Serve(ctx context.Context, c net.Conn, br *bufio.Reader, r Router, p *Pool, opts Options) error {
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = defaultMaxHeaderBytes
	}
	cs := connPool.Get().(*conn)
	cs.c, cs.br, cs.router, cs.pool, cs.opts = c, br, r, p, opts
	cs.bw = getWriter(c)

	cs.ctxDone = ctx.Done()
	stop := context.AfterFunc(ctx, cs.drain)
	err := cs.serve()
	// If drain already started it may still hold cs: leave cs to the GC
	// rather than hand it to another connection.
	reusable := stop()

	putWriter(cs.bw)
	hook, buffered, linger := cs.opts.OnUpgrade, cs.upgraded, cs.linger
	if reusable {
		cs.reset()
		connPool.Put(cs)
	}
	if errors.Is(err, ErrUpgrade) {
		hook(c, buffered)
		return err
	}
	if linger {
		lingerClose(c, br)
	}
	_ = c.Close()
	return err
}

// lingerClose half-closes c and reads what the client still sends, bounded
// in time and bytes, before c is closed. Closing a socket with unread input
// makes the kernel send a reset, which can destroy the error reply still in
// flight to the client; net/http's closeWriteAndWait exists for the same
// reason.
func lingerClose(c net.Conn, br *bufio.Reader) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = br.Discard(256 << 10)
}

// conn is the state of one downstream connection. It is recycled through
// connPool so that a new connection costs no allocation beyond its first.
type conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	router Router
	pool   *Pool
	opts   Options

	req  Request // handed to the Router; Header is bound once
	rh   reqHead
	resp respHead
	head []byte // current request head; rh aliases it
	rsp  []byte // current response head; resp aliases it
	buf  copyBuf
	ip   string // client IP for X-Forwarded-For, computed once
	x    Exchange
	tx   trafficState

	// readDeadline records that c has a read deadline to clear.
	readDeadline bool
	// downDeadline records that c carries an exchange's deadline.
	downDeadline bool
	// linger records that a local reply asked to close while the client
	// may still be sending.
	linger   bool
	upgraded []byte
	// bytesIn and bytesOut count the current exchange's body bytes from
	// and to the client (Decision.Stats).
	bytesIn, bytesOut int64
	// ctxDone is Serve's ctx.Done(), for stopping.
	ctxDone <-chan struct{}
	// retries and finalAddr are the last Traffic exchange's (traffic.go).
	retries   int
	finalAddr string

	// mu orders drain against the idle state, so that drain interrupts
	// only a connection waiting for a request, never one mid-exchange.
	mu       sync.Mutex
	idle     bool
	draining atomic.Bool
	// wake, made on the first pause (Traffic's delay or backoff), is
	// closed by drain so that a pause ends early.
	wake chan struct{}
}

var connPool = sync.Pool{New: func() any {
	cs := new(conn)
	cs.req.Header = cs.header
	cs.req.VisitHeaders = cs.visitHeaders
	return cs
}}

func (cs *conn) reset() {
	cs.c, cs.br, cs.bw, cs.router, cs.pool = nil, nil, nil, nil, nil
	cs.opts, cs.ctxDone = Options{}, nil
	cs.req = Request{Header: cs.req.Header, VisitHeaders: cs.req.VisitHeaders}
	cs.rh = reqHead{fields: cs.rh.fields[:0]}
	cs.resp = respHead{fields: cs.resp.fields[:0]}
	// Keep typical buffers; let an outsized head's buffer go.
	if cap(cs.head) > 8<<10 {
		cs.head = nil
	}
	if cap(cs.rsp) > 8<<10 {
		cs.rsp = nil
	}
	cs.ip, cs.upgraded, cs.readDeadline, cs.linger, cs.idle = "", nil, false, false, false
	cs.wake = nil
	cs.draining.Store(false)
}

// aLongTimeAgo is a deadline that has passed: setting it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// drain runs when Serve's ctx ends. Setting the deadline happens under mu
// (it does not block) so that it cannot land after waitRequest has left
// the idle state and started a request.
// stopping reports whether the connection must close after the current
// exchange: Serve's ctx ended. drain sets draining in its own goroutine, a
// moment after ctx ends; reading ctx here as well makes the answer exact
// from the moment the caller cancelled.
func (cs *conn) stopping() bool {
	if cs.draining.Load() {
		return true
	}
	select {
	case <-cs.ctxDone:
		return true
	default:
		return false
	}
}

func (cs *conn) drain() {
	cs.mu.Lock()
	cs.draining.Store(true)
	if cs.idle {
		_ = cs.c.SetReadDeadline(aLongTimeAgo)
	}
	if cs.wake != nil {
		close(cs.wake)
	}
	cs.mu.Unlock()
}

// waitRequest blocks until the next request starts to arrive. It reports
// false when the connection should end: the client closed or went silent
// past IdleTimeout, or the server is draining.
func (cs *conn) waitRequest() bool {
	if cs.opts.IdleTimeout > 0 {
		_ = cs.c.SetReadDeadline(time.Now().Add(cs.opts.IdleTimeout))
		cs.readDeadline = true
	}
	cs.mu.Lock()
	if cs.draining.Load() {
		cs.mu.Unlock()
		return false
	}
	cs.idle = true
	cs.mu.Unlock()

	_, err := cs.br.Peek(1)

	cs.mu.Lock()
	cs.idle = false
	cs.mu.Unlock()
	if err != nil {
		return false
	}
	if cs.draining.Load() {
		// A request arrived as the drain began: serve it, then stop. drain
		// may have set a past deadline; replace it.
		_ = cs.c.SetReadDeadline(time.Time{})
		cs.readDeadline = false
	}
	return true
}

func (cs *conn) serve() error {
	for {
		if !cs.waitRequest() {
			return nil
		}
		head, err := readHead(cs.br, cs.head[:0], cs.opts.MaxHeaderBytes, true)
		cs.head = head
		if err != nil {
			if se, ok := errors.AsType[*statusError](err); ok {
				_ = cs.writeLocal(se.status, LocalBody(se.status), true, false, nil)
			} else if len(head) == 0 {
				return nil // only empty lines before the client closed
			}
			return fmt.Errorf("read request head: %w", err)
		}
		if cs.readDeadline {
			_ = cs.c.SetReadDeadline(time.Time{})
			cs.readDeadline = false
		}
		if err := parseRequestHead(head, &cs.rh); err != nil {
			status := errorStatus(err)
			_ = cs.writeLocal(status, LocalBody(status), true, false, nil)
			return fmt.Errorf("parse request head: %w", err)
		}
		if cs.rh.upgrade || string(cs.rh.method) == "CONNECT" {
			if cs.opts.OnUpgrade != nil {
				n := cs.br.Buffered()
				rest, _ := cs.br.Peek(n)
				cs.upgraded = append(append(make([]byte, 0, len(head)+n), head...), rest...)
				return ErrUpgrade
			}
			if string(cs.rh.method) == "CONNECT" {
				_ = cs.writeLocal(http.StatusNotImplemented, LocalBody(http.StatusNotImplemented), true, false, nil)
				return nil
			}
		}
		keep, err := cs.handle()
		if !keep {
			return err
		}
	}
}

// handle routes the current request and answers it. keep reports whether
// the connection may serve another request.
func (cs *conn) handle() (keep bool, err error) {
	rh := &cs.rh
	cs.req.Method = methodString(rh.method)
	cs.req.Target = bstr(rh.target)
	cs.req.Path = bstr(rh.path)
	cs.req.Host = bstr(rh.host)
	d := cs.router.Route(&cs.req)

	if d.Addr == "" {
		status := d.Status
		if status == 0 {
			status = http.StatusNotFound
		}
		// An unread body would be taken for the next request: close.
		keep = !rh.close && !rh.hasBody() && !cs.stopping()
		err = cs.writeLocal(status, LocalBody(status), !keep, isHead(rh.method), d.Header)
		if d.Stats != nil {
			*d.Stats = Stats{BytesOut: int64(len(LocalBody(status)))}
		}
		if d.Done != nil {
			d.Done(status, nil)
		}
		return keep && err == nil, err
	}

	var status int
	var deadline time.Time
	if d.Timeout > 0 {
		// The deadline covers the downstream side too, so that a client
		// trickling its body or not reading the response cannot hold an
		// upstream connection past it.
		deadline = time.Now().Add(d.Timeout)
		_ = cs.c.SetDeadline(deadline)
		cs.downDeadline = true
	}
	cs.bytesIn, cs.bytesOut, cs.buf.n = 0, 0, 0
	switch {
	case d.Traffic != nil:
		status, keep, err = cs.traffic(&d, deadline)
	case d.Upstream != nil:
		status, keep, err = cs.bridge(d.Addr, d.Upstream, deadline, nil)
	default:
		status, keep, err = cs.pooled(d.Addr, deadline, nil)
	}
	if cs.downDeadline {
		_ = cs.c.SetDeadline(time.Time{})
		cs.downDeadline = false
	}
	cs.buf.release()
	if d.Stats != nil {
		*d.Stats = Stats{BytesIn: cs.bytesIn, BytesOut: cs.bytesOut, Addr: d.Addr}
		if d.Traffic != nil {
			d.Stats.Retries, d.Stats.Addr = cs.retries, cs.finalAddr
		}
	}
	if d.Done != nil {
		d.Done(status, err)
	}
	return keep, err
}

// pooled forwards the current request to addr over a pooled connection
// and relays the response. It returns the status sent downstream (the
// upstream's or a local reply's, 0 if none was sent), whether the
// downstream connection may be kept, and the exchange's error.
//
// With t (Decision.Traffic) it is one attempt of several: it applies the
// rewrites and edits, hands the mirror its copy, and may instead set
// t.again, having discarded the outcome and sent nothing downstream.
func (cs *conn) pooled(addr string, deadline time.Time, t *trafficState) (status int, keep bool, err error) {
	rh := &cs.rh
	tr := t.traffic()
	hasBody := rh.hasBody()
	// A Content-Length body that already sits in br is written from there
	// and consumed only once the outcome is final, so it can be sent
	// again after a stale keep-alive connection failed (or for a retry).
	replay := !hasBody || (!rh.chunked && !rh.expectContinue && int64(cs.br.Buffered()) >= rh.contentLength)
	stale := replay && (!hasBody || idempotent(rh.method))
	bodyDone := !hasBody

	// The outcome of an attempt that got no response head.
	var (
		failStatus int
		failure    Failure
		failErr    error
	)
	for sub := 0; ; sub++ {
		uc, reused, err := cs.pool.get(addr, deadline, sub > 0)
		if err != nil {
			failStatus, failure = http.StatusServiceUnavailable, FailureConnect
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				failStatus, failure = http.StatusGatewayTimeout, FailureTimeout
			}
			failErr = fmt.Errorf("connect upstream %s: %w", addr, err)
			if t != nil {
				t.sent()
			}
			break
		}
		uc.setDeadline(deadline)
		cs.writeRequestHead(uc.bw, addr, tr)

		var rerr, werr error
		switch {
		case !hasBody:
			werr = uc.bw.Flush()
		case replay:
			p, _ := cs.br.Peek(int(rh.contentLength))
			_, _ = uc.bw.Write(p)
			werr = uc.bw.Flush()
			cs.bytesIn = int64(len(p))
		default:
			if rh.expectContinue {
				// Answer 100 here rather than relay it: the upstream never
				// sees Expect, and the body follows on this goroutine.
				_, _ = cs.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
				if err := cs.bw.Flush(); err != nil {
					cs.pool.discard(uc)
					return 0, false, fmt.Errorf("write 100 continue: %w", err)
				}
			}
			cs.buf.n = 0
			if rh.chunked {
				rerr, werr = copyChunked(uc.bw, cs.br, &cs.buf, true)
			} else {
				rerr, werr = copyFixed(uc.bw, cs.br, rh.contentLength, &cs.buf)
			}
			cs.bytesIn = cs.buf.n
			if rerr == nil && werr == nil {
				werr = uc.bw.Flush()
				bodyDone = true
			}
		}
		if rerr != nil {
			cs.pool.discard(uc)
			return cs.bodyFailed(rerr)
		}
		if t != nil {
			t.sent()
		}
		if werr == nil {
			var head []byte
			head, err = readHead(uc.br, cs.rsp[:0], cs.opts.MaxHeaderBytes, false)
			cs.rsp = head
			if err == nil {
				upErr, downErr := cs.finalHead(uc)
				if downErr != nil {
					cs.pool.discard(uc)
					return cs.resp.status, false, downErr
				}
				if upErr == nil {
					if t != nil && t.retry(cs.resp.status, FailureNone) {
						cs.pool.discard(uc)
						return 0, false, nil
					}
					if replay && hasBody {
						_, _ = cs.br.Discard(int(rh.contentLength))
					}
					return cs.relay(addr, uc, t.respEdits())
				}
				cs.pool.discard(uc)
				failStatus, failure = http.StatusBadGateway, FailureReset
				if isTimeout(upErr) {
					failStatus, failure = http.StatusGatewayTimeout, FailureTimeout
				}
				failErr = fmt.Errorf("read response head from %s: %w", addr, upErr)
				break
			}
			werr = err
			if len(head) > 0 {
				stale = false // the upstream answered something
			}
		}
		cs.pool.discard(uc)
		if reused && stale && sub == 0 && !isTimeout(werr) {
			continue // the classic stale keep-alive race: try a fresh one
		}
		failStatus, failure = http.StatusBadGateway, FailureReset
		if isTimeout(werr) {
			failStatus, failure = http.StatusGatewayTimeout, FailureTimeout
		}
		failErr = fmt.Errorf("exchange with upstream %s: %w", addr, werr)
		break
	}
	if t != nil && t.retry(0, failure) {
		return 0, false, nil
	}
	if replay && hasBody {
		_, _ = cs.br.Discard(int(rh.contentLength))
		bodyDone = true
	}
	return cs.fail(failStatus, bodyDone, failErr)
}

// fail answers locally for an exchange that got no response head, and
// returns the status sent (0 if the reply could not be written).
func (cs *conn) fail(status int, bodyDone bool, err error) (int, bool, error) {
	keep := bodyDone && !cs.rh.close && !cs.stopping()
	if werr := cs.writeLocal(status, LocalBody(status), !keep, isHead(cs.rh.method), nil); werr != nil {
		return 0, false, err
	}
	return status, keep, err
}

// errUnrequested101 is an upstream switching protocols unasked.
var errUnrequested101 = errors.New("h1: unrequested 101 response")

// finalHead parses the response head in cs.rsp, relaying 1xx heads
// downstream and reading on until the final head, which cs.resp then
// holds. upErr is the upstream's failure (malformed head, read error),
// downErr a failed write of an interim response.
func (cs *conn) finalHead(uc *upConn) (upErr, downErr error) {
	rh, resp := &cs.rh, &cs.resp
	for {
		if err := parseResponseHead(cs.rsp, resp); err != nil {
			return err, nil
		}
		if resp.status >= 200 {
			return nil, nil
		}
		if resp.status == http.StatusSwitchingProtocols {
			return errUnrequested101, nil
		}
		if rh.minor >= 1 { // 1xx must not reach an HTTP/1.0 client
			cs.writeStatusLine()
			cs.writeResponseFields(nil)
			_, _ = cs.bw.WriteString("\r\n")
			if err := cs.bw.Flush(); err != nil {
				return nil, fmt.Errorf("write interim response: %w", err)
			}
		}
		head, err := readHead(uc.br, cs.rsp[:0], cs.opts.MaxHeaderBytes, false)
		cs.rsp = head
		if err != nil {
			return err, nil
		}
	}
}

// relay sends the final response whose head is in cs.resp back
// downstream, with edits applied to its fields.
func (cs *conn) relay(addr string, uc *upConn, edits *HeaderEdits) (int, bool, error) {
	rh, resp := &cs.rh, &cs.resp
	status := resp.status
	noBody := isHead(rh.method) || status == http.StatusNoContent || status == http.StatusNotModified
	untilClose := !noBody && !resp.chunked && resp.contentLength < 0
	dechunk := resp.chunked && rh.minor == 0
	closeDown := rh.close || untilClose || dechunk || cs.stopping()

	cs.writeStatusLine()
	cs.writeResponseFields(edits)
	bw := cs.bw
	switch {
	case noBody:
		if resp.contentLength >= 0 && status != http.StatusNoContent {
			writeContentLength(bw, resp.contentLength)
		}
	case resp.contentLength >= 0:
		writeContentLength(bw, resp.contentLength)
	case resp.chunked && !dechunk:
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if closeDown {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	_, _ = bw.WriteString("\r\n")

	var rerr, werr error
	cs.buf.n = 0
	switch {
	case noBody:
	case resp.contentLength >= 0:
		rerr, werr = copyFixed(bw, uc.br, resp.contentLength, &cs.buf)
	case resp.chunked:
		rerr, werr = copyChunked(bw, uc.br, &cs.buf, !dechunk)
	default:
		rerr, werr = copyUntilEOF(bw, uc.br, &cs.buf)
	}
	cs.bytesOut = cs.buf.n
	if rerr == nil && werr == nil {
		werr = bw.Flush()
	}
	if rerr != nil || werr != nil || resp.close || untilClose || uc.br.Buffered() > 0 {
		cs.pool.discard(uc)
	} else {
		cs.pool.put(addr, uc)
	}
	switch {
	case rerr != nil:
		return status, false, fmt.Errorf("read response body from %s: %w", addr, rerr)
	case werr != nil:
		return status, false, fmt.Errorf("write response: %w", werr)
	}
	return status, !closeDown, nil
}

// writeRequestHead writes the current request's head for the upstream:
// origin-form target, HTTP/1.1, Host first, end-to-end fields in order,
// then the framing and forwarding fields this proxy owns. tr, when set,
// rewrites the target and Host and edits the end-to-end fields.
func (cs *conn) writeRequestHead(bw *bufio.Writer, addr string, tr *Traffic) {
	rh := &cs.rh
	_, _ = bw.Write(rh.method)
	_ = bw.WriteByte(' ')
	switch {
	case tr != nil && tr.Target != "":
		_, _ = bw.WriteString(tr.Target)
	case rh.slash:
		_ = bw.WriteByte('/')
		_, _ = bw.Write(rh.origin)
	default:
		_, _ = bw.Write(rh.origin)
	}
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	switch {
	case tr != nil && tr.Host != "":
		_, _ = bw.WriteString(tr.Host)
	case rh.hasHost || rh.absolute:
		_, _ = bw.Write(rh.host)
	default:
		_, _ = bw.WriteString(addr) // an HTTP/1.0 client sent none
	}
	_, _ = bw.WriteString("\r\n")
	edits := tr.reqEdits()
	for i := range rh.fields {
		f := &rh.fields[i]
		if f.hop {
			continue
		}
		switch f.kind {
		case kindOther:
		case kindXForwardedFor:
			if cs.opts.XForwardedFor {
				continue // rewritten below
			}
		default:
			// Host and framing are written here; the rest is hop-by-hop
			// (RFC 9110 7.6.1), and Expect was answered by us.
			continue
		}
		if edits != nil && edits.drops(bstr(f.name)) {
			continue
		}
		writeField(bw, f)
	}
	if edits != nil {
		writeEdits(bw, edits, cs.opts.XForwardedFor)
	}
	if rh.chunked {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	} else if rh.contentLength >= 0 {
		writeContentLength(bw, rh.contentLength)
	}
	if rh.teTrailers {
		_, _ = bw.WriteString("TE: trailers\r\n")
	}
	if cs.opts.XForwardedFor {
		_, _ = bw.WriteString("X-Forwarded-For: ")
		for i := range rh.fields {
			if f := &rh.fields[i]; f.kind == kindXForwardedFor && len(f.value) > 0 {
				_, _ = bw.Write(f.value)
				_, _ = bw.WriteString(", ")
			}
		}
		_, _ = bw.WriteString(cs.clientIP())
		_, _ = bw.WriteString("\r\n")
	}
	_, _ = bw.WriteString("\r\n")
}

func (cs *conn) writeStatusLine() {
	_, _ = cs.bw.WriteString("HTTP/1.1 ")
	_, _ = cs.bw.Write(cs.resp.statusRest)
	_, _ = cs.bw.WriteString("\r\n")
}

// writeResponseFields writes the response's end-to-end fields, with edits
// (nil: none) applied; framing and connection management are the
// caller's.
func (cs *conn) writeResponseFields(edits *HeaderEdits) {
	for i := range cs.resp.fields {
		f := &cs.resp.fields[i]
		if f.hop {
			continue
		}
		switch f.kind {
		case kindContentLength, kindTransferEncoding, kindConnection, kindKeepAlive,
			kindProxyConnection, kindTE, kindUpgrade:
			continue
		}
		if edits != nil && edits.drops(bstr(f.name)) {
			continue
		}
		writeField(cs.bw, f)
	}
	if edits != nil {
		writeEdits(cs.bw, edits, false)
	}
}

func writeField(bw *bufio.Writer, f *field) {
	_, _ = bw.Write(f.name)
	_, _ = bw.WriteString(": ")
	_, _ = bw.Write(f.value)
	_, _ = bw.WriteString("\r\n")
}

func writeContentLength(bw *bufio.Writer, n int64) {
	_, _ = bw.WriteString("Content-Length: ")
	writeInt(bw, n)
	_, _ = bw.WriteString("\r\n")
}

// writeInt formats n straight into bw's buffer, without allocating.
func writeInt(bw *bufio.Writer, n int64) {
	if bw.Available() < 20 {
		_ = bw.Flush()
	}
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), n, 10))
}

// writeLocal sends a reply generated by the proxy, with the extra fields
// (Decision.Header; those the engine owns are left out), and flushes it.
func (cs *conn) writeLocal(status int, body string, closeConn, head bool, extra []Field) error {
	if cs.downDeadline {
		// The exchange's deadline may be what failed it; the reply saying
		// so must still go out.
		_ = cs.c.SetWriteDeadline(time.Time{})
	}
	bw := cs.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeInt(bw, int64(status))
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(http.StatusText(status))
	_, _ = bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\n")
	if extra != nil {
		writeExtra(bw, extra)
	}
	writeContentLength(bw, int64(len(body)))
	if closeConn {
		_, _ = bw.WriteString("Connection: close\r\n")
		cs.linger = true
	}
	_, _ = bw.WriteString("\r\n")
	if !head {
		_, _ = bw.WriteString(body)
	}
	return bw.Flush()
}

// LocalBody is the small fixed body of a reply the proxy makes itself. It
// is the one table of such bodies: package proxy's net/http path answers
// with it too, so that a client sees the same words whichever path served
// it.
func LocalBody(status int) string {
	switch status {
	case http.StatusForbidden:
		// Envoy's words for a request its RBAC filter refused.
		return "RBAC: access denied"
	case http.StatusNotFound:
		return "no route\n"
	case http.StatusServiceUnavailable:
		return "upstream connect error or no healthy upstream\n"
	case http.StatusBadGateway:
		return "upstream error\n"
	case http.StatusGatewayTimeout:
		return "upstream timeout\n"
	case http.StatusBadRequest:
		return "bad request\n"
	case http.StatusRequestTimeout:
		return "request timeout\n"
	case http.StatusRequestHeaderFieldsTooLarge:
		return "request header fields too large\n"
	case http.StatusNotImplemented:
		return "not implemented\n"
	case http.StatusTooManyRequests:
		// Envoy's words for its local rate limit.
		return "local_rate_limited"
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return "" // a redirect says it all in Location, as Envoy's does
	case http.StatusHTTPVersionNotSupported:
		return "http version not supported\n"
	}
	return "error\n"
}

// header implements Request.Header over the current request's fields.
func (cs *conn) header(name string) string {
	for i := range cs.rh.fields {
		f := &cs.rh.fields[i]
		if len(f.name) == len(name) && equalFold(f.name, name) {
			return bstr(f.value)
		}
	}
	return ""
}

// visitHeaders implements Request.VisitHeaders over the current request's
// fields. Only names with upper-case letters are copied to lower case.
func (cs *conn) visitHeaders(fn func(name, value string) bool) {
	for i := range cs.rh.fields {
		f := &cs.rh.fields[i]
		if !fn(strings.ToLower(bstr(f.name)), bstr(f.value)) {
			return
		}
	}
}

func (cs *conn) clientIP() string {
	if cs.ip == "" {
		switch a := cs.c.RemoteAddr().(type) {
		case *net.TCPAddr:
			cs.ip = a.IP.String()
		default:
			if host, _, err := net.SplitHostPort(a.String()); err == nil {
				cs.ip = host
			} else {
				cs.ip = a.String()
			}
		}
	}
	return cs.ip
}

// bstr views b as a string without copying. Request's contract (valid only
// during Route) is what makes this safe: the head buffer is not touched
// until the next request is read.
func bstr(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// methodString returns the common methods as constants, so a Router that
// keeps req.Method keeps a string that stays valid.
func methodString(m []byte) string {
	switch string(m) {
	case "GET":
		return "GET"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "DELETE":
		return "DELETE"
	case "HEAD":
		return "HEAD"
	case "OPTIONS":
		return "OPTIONS"
	case "PATCH":
		return "PATCH"
	}
	return bstr(m)
}

func isHead(m []byte) bool { return string(m) == "HEAD" }

// idempotent reports the RFC 9110 9.2.2 idempotent methods.
func idempotent(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// copyBuf lends a 32 KiB buffer from a shared pool only while a body is
// too large to go through the bufio buffers, so that idle connections do
// not each hold one.
// copyBuf lends a copy buffer to the body copies and counts the body
// bytes they moved (n), for Decision.Stats.
type copyBuf struct {
	b *[]byte
	n int64
}

var copyBufPool = sync.Pool{New: func() any {
	b := make([]byte, 32<<10)
	return &b
}}

func (cb *copyBuf) get() []byte {
	if cb.b == nil {
		cb.b = copyBufPool.Get().(*[]byte)
	}
	return *cb.b
}

func (cb *copyBuf) release() {
	if cb.b != nil {
		copyBufPool.Put(cb.b)
		cb.b = nil
	}
}
