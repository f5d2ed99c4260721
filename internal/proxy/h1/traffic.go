package h1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"
	"unsafe"
)

// This file runs Decision.Traffic: the delay, the retry loop around the
// attempts (pooled HTTP/1.1 connections and Upstreams alike, the kind may
// change between attempts), the mirror, and the header edits. Requests
// without Traffic never come here.
//
// A request body is replayable when it has a Content-Length and sits whole
// in the connection's bufio.Reader: each attempt writes it from there
// (Peek) and only the final outcome consumes it (Discard). When a route
// retries or mirrors, a body that fits in that buffer is read into it
// before the first attempt; a chunked body, one sent with Expect:
// 100-continue or one larger than the buffer streams through once and is
// neither retried nor mirrored.

// trafficState is the per-request state of an exchange with Traffic. It
// lives in conn (no allocation) and is cleared when the exchange ends.
type trafficState struct {
	cs *conn
	tr *Traffic
	// deadline is the whole exchange's (Decision.Timeout); zero: none.
	deadline time.Time
	// replay: the request can be sent again; body is its bytes in cs.br
	// (nil without a body or when not replayable).
	replay bool
	body   []byte
	// addr and up are where the current attempt goes.
	addr string
	up   Upstream
	// retries counts the retries made so far (the first try is not one).
	retries int
	// again is set by retry: the attempt's outcome was discarded and the
	// next attempt goes to addr/up after pause.
	again bool
	pause time.Duration
	// mirrored: the mirror was handed its copy (or skipped).
	mirrored bool
}

// errRetry is what Exchange.Write and Flush return once WriteHead decided
// that the response is discarded for a retry, so that the Upstream stops
// relaying it.
var errRetry = errors.New("h1: response discarded for a retry")

// traffic runs the current request with d.Traffic. It returns what
// exchange returns.
func (cs *conn) traffic(d *Decision, deadline time.Time) (status int, keep bool, err error) {
	t := &cs.tx
	tr := d.Traffic
	*t = trafficState{cs: cs, tr: tr, deadline: deadline, addr: d.Addr, up: d.Upstream}
	defer func() {
		cs.retries, cs.finalAddr = t.retries, t.addr
		*t = trafficState{}
	}()

	rh := &cs.rh
	hasBody := rh.hasBody()
	t.replay = !hasBody
	if hasBody && !rh.chunked && !rh.expectContinue {
		n := rh.contentLength
		fill := (tr.Attempts > 0 || tr.Mirror != nil) && n <= int64(cs.br.Size())
		if int64(cs.br.Buffered()) >= n || fill {
			// Peek waits for the rest of the body when it fits; the
			// exchange's deadline on c bounds that wait.
			body, perr := cs.br.Peek(int(n))
			if perr != nil {
				return cs.bodyFailed(perr)
			}
			t.body, t.replay = body, true
		}
	}

	if tr.Delay > 0 && !cs.sleep(tr.Delay, deadline) {
		return cs.fail(http.StatusGatewayTimeout, t.consumeBody(!hasBody),
			fmt.Errorf("delay request to %s: %w", d.Addr, os.ErrDeadlineExceeded))
	}
	for {
		try := deadline
		if tr.PerTryTimeout > 0 {
			if pt := time.Now().Add(tr.PerTryTimeout); try.IsZero() || pt.Before(try) {
				try = pt
			}
		}
		if t.up != nil {
			status, keep, err = cs.bridge(t.addr, t.up, try, t)
		} else {
			status, keep, err = cs.pooled(t.addr, try, t)
		}
		if !t.again {
			return status, keep, err
		}
		t.again = false
		t.retries++
		if t.pause > 0 {
			// retry checked that the pause ends before the deadline.
			cs.sleep(t.pause, deadline)
		}
	}
}

// retry decides, for an attempt whose outcome is status (0: no response
// head) and failure, whether another attempt follows: retries are left,
// the body can be sent again, RetryOn accepts the outcome, the backoff
// ends before the deadline and Next names a target. It then sets again,
// the target and the pause, and the caller discards the outcome;
// otherwise the outcome stands and is what the client gets.
func (t *trafficState) retry(status int, failure Failure) bool {
	tr := t.tr
	if !t.replay || t.retries >= tr.Attempts || tr.RetryOn == nil || !tr.RetryOn(status, failure) {
		return false
	}
	var pause time.Duration
	if tr.Backoff != nil {
		pause = max(tr.Backoff(t.retries+1), 0)
	}
	if !t.deadline.IsZero() && !time.Now().Add(pause).Before(t.deadline) {
		return false
	}
	addr, up := t.addr, t.up
	if tr.Next != nil {
		var ok bool
		addr, up, ok = tr.Next(status, failure)
		if !ok || (addr == "" && up == nil) {
			return false
		}
	}
	t.addr, t.up, t.pause, t.again = addr, up, pause, true
	return true
}

// consumeBody drops a replayable body from the connection once the
// exchange's outcome is final, and reports whether the request body is
// now fully read (done tells for a body that was not replayable).
func (t *trafficState) consumeBody(done bool) bool {
	if t == nil || t.body == nil {
		return done
	}
	_, _ = t.cs.br.Discard(len(t.body))
	t.body = nil
	return true
}

// sent is called once the first attempt sent its request (or failed to
// connect): the mirror gets its copy then.
func (t *trafficState) sent() {
	if t.mirrored {
		return
	}
	t.mirrored = true
	if t.tr.Mirror == nil || !t.replay {
		return
	}
	t.tr.Mirror(t.cs.mirrorRequest(t))
}

// mirrorRequest copies the request as sent upstream: everything it holds
// is its own, since the connection's buffers are reused by the next
// request.
func (cs *conn) mirrorRequest(t *trafficState) *OutRequest {
	rh, tr := &cs.rh, t.tr
	req := &OutRequest{Method: string(rh.method), Deadline: t.deadline}
	switch {
	case tr.Target != "":
		req.Target = tr.Target
	case rh.slash:
		req.Target = "/" + string(rh.origin)
	default:
		req.Target = string(rh.origin)
	}
	switch {
	case tr.Host != "":
		req.Host = tr.Host
	case rh.hasHost || rh.absolute:
		req.Host = string(rh.host)
	default:
		req.Host = t.addr
	}
	xff := cs.opts.XForwardedFor
	var fields []Field
	cs.visitFields(tr.RequestHeaders, xff, func(name, value []byte) bool {
		fields = append(fields, Field{string(name), string(value)})
		return true
	})
	if xff {
		var b []byte
		for i := range rh.fields {
			if f := &rh.fields[i]; f.kind == kindXForwardedFor && len(f.value) > 0 {
				b = append(append(b, f.value...), ", "...)
			}
		}
		fields = append(fields, Field{"X-Forwarded-For", string(append(b, cs.clientIP()...))})
	}
	req.Fields = func(yield func(name, value string) bool) {
		for _, f := range fields {
			if !yield(f.Name, f.Value) {
				return
			}
		}
	}
	if len(t.body) > 0 {
		req.Body = bytes.NewReader(bytes.Clone(t.body))
		req.ContentLength = int64(len(t.body))
	}
	return req
}

// visitFields calls fn with each end-to-end request field as sent
// upstream (hop-by-hop, framing, Host and Expect left out; with xffOwned
// X-Forwarded-For too, the engine writes it), after edits, until fn
// returns false. The slices are valid until the next request is read.
func (cs *conn) visitFields(edits *HeaderEdits, xffOwned bool, fn func(name, value []byte) bool) {
	rh := &cs.rh
	for i := range rh.fields {
		f := &rh.fields[i]
		if f.hop || !(f.kind == kindOther || f.kind == kindXForwardedFor && !xffOwned) {
			continue
		}
		if edits != nil && edits.drops(bstr(f.name)) {
			continue
		}
		if !fn(f.name, f.value) {
			return
		}
	}
	if edits == nil {
		return
	}
	for _, list := range [2][]Field{edits.Set, edits.Add} {
		for _, f := range list {
			if edits.adds(f, xffOwned) && !fn(sbytes(f.Name), sbytes(f.Value)) {
				return
			}
		}
	}
}

// sleep pauses the exchange for d on a timer. It reports false when the
// exchange's deadline came first (the pause then ends there). A drain ends
// the pause early (true): the exchange in flight should finish soon.
func (cs *conn) sleep(d time.Duration, deadline time.Time) bool {
	ok := true
	if !deadline.IsZero() {
		if left := time.Until(deadline); left <= d {
			d, ok = left, false
		}
	}
	if d <= 0 {
		return ok
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return ok
	case <-cs.wakeup():
		return true
	}
}

// wakeup returns a channel closed when the connection drains, made on
// first use so that connections that never pause do not pay for it.
func (cs *conn) wakeup() <-chan struct{} {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.wake == nil {
		cs.wake = make(chan struct{})
		if cs.draining.Load() {
			close(cs.wake) // drain ran before the channel existed
		}
	}
	return cs.wake
}

// bodyFailed answers a request whose body could not be read (400, or 408
// for a timeout) and closes the connection.
func (cs *conn) bodyFailed(rerr error) (int, bool, error) {
	status := http.StatusBadRequest
	if isTimeout(rerr) {
		status = http.StatusRequestTimeout
	}
	sent := 0
	if cs.writeLocal(status, LocalBody(status), true, false, nil) == nil {
		sent = status
	}
	return sent, false, fmt.Errorf("read request body: %w", rerr)
}

// reqEdits and respEdits are nil-safe accessors for the fast path.
func (tr *Traffic) reqEdits() *HeaderEdits {
	if tr == nil {
		return nil
	}
	return tr.RequestHeaders
}

func (t *trafficState) respEdits() *HeaderEdits {
	if t == nil {
		return nil
	}
	return t.tr.ResponseHeaders
}

func (t *trafficState) traffic() *Traffic {
	if t == nil {
		return nil
	}
	return t.tr
}

// drops reports whether the edits replace (Set) or remove a field named
// name, so that the original is not sent.
func (e *HeaderEdits) drops(name string) bool {
	for i := range e.Set {
		if foldEqual(name, e.Set[i].Name) {
			return true
		}
	}
	for _, r := range e.Remove {
		if foldEqual(name, r) {
			return true
		}
	}
	return false
}

// adds reports whether a Set or Add field f is written: its name is one
// the edits may touch and not removed, and it cannot break the message.
func (e *HeaderEdits) adds(f Field, xffOwned bool) bool {
	if !editable(f.Name, xffOwned) || !validField(f) {
		return false
	}
	for _, r := range e.Remove {
		if foldEqual(f.Name, r) {
			return false
		}
	}
	return true
}

// writeEdits writes the Set then the Add fields of e.
func writeEdits(bw *bufio.Writer, e *HeaderEdits, xffOwned bool) {
	for _, list := range [2][]Field{e.Set, e.Add} {
		for _, f := range list {
			if e.adds(f, xffOwned) {
				writeStringField(bw, f.Name, f.Value)
			}
		}
	}
}

// writeExtra writes the extra fields of a local reply (Decision.Header).
func writeExtra(bw *bufio.Writer, fields []Field) {
	for _, f := range fields {
		if editable(f.Name, false) && validField(f) {
			writeStringField(bw, f.Name, f.Value)
		}
	}
}

func writeStringField(bw *bufio.Writer, name, value string) {
	_, _ = bw.WriteString(name)
	_, _ = bw.WriteString(": ")
	_, _ = bw.WriteString(value)
	_, _ = bw.WriteString("\r\n")
}

// editable reports whether configuration may set a field of this name:
// not one the engine owns (Host, framing, connection management, Expect,
// and X-Forwarded-For when the engine writes it).
func editable(name string, xffOwned bool) bool {
	switch classify(sbytes(name)) {
	case kindOther:
		return true
	case kindXForwardedFor:
		return !xffOwned
	}
	return false
}

// validField reports a field that can be written as is: a token name and
// a value without control characters, so that configuration (or a value
// derived from a request) cannot split the message.
func validField(f Field) bool {
	if !isToken(sbytes(f.Name)) {
		return false
	}
	for i := 0; i < len(f.Value); i++ {
		if c := f.Value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// foldEqual compares two ASCII field names ignoring case.
func foldEqual(a, b string) bool {
	return len(a) == len(b) && equalFold(sbytes(a), b)
}

// sbytes views s as bytes without copying; the bytes must not be written.
func sbytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
