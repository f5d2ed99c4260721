package h1

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Upstream carries an exchange over something other than an HTTP/1.1
// connection of the Pool: package proxy's HTTP/2 bridge to a peer proxy.
// The Router returns one in Decision.Upstream.
type Upstream interface {
	// Exchange forwards the request x describes and writes the response
	// through x. It runs on the downstream connection's goroutine and may
	// block. It returns nil once the whole response body was written.
	//
	// An error before x.WriteHead makes Serve answer itself: 400 or 408
	// when reading the request body failed, else the status an
	// *UpstreamError names, 504 for a timeout, 502 otherwise. An error
	// after it closes the downstream connection, so that a cut response
	// does not look complete.
	Exchange(x *Exchange) error
}

// UpstreamError lets an Upstream choose the status of the local reply
// (503 when nothing could be connected, say).
type UpstreamError struct {
	Status int
	Err    error
}

func (e *UpstreamError) Error() string { return e.Err.Error() }
func (e *UpstreamError) Unwrap() error { return e.Err }

// Exchange is the request an Upstream forwards and the writer of its
// response. It is valid only during the Exchange call.
type Exchange struct {
	cs       *conn
	addr     string
	deadline time.Time
	// t is the exchange's traffic management (nil: none).
	t *trafficState

	// Request body state.
	left     int64 // fixed length still to read
	chunks   chunkedReader
	bodyDone bool
	bodyErr  error
	// replay, when not nil, is the whole body, read from there (not from
	// the connection) so that a retry can send it again; off is how much
	// of it was read.
	replay []byte
	off    int

	// Response state.
	started  bool // status line written
	headDone bool
	status   int
	noBody   bool
	chunkOut bool // body re-encoded chunked
	length   int64
	written  int64
	close    bool
	// retrying: WriteHead decided on a retry; nothing was written and the
	// Upstream's further writes fail with errRetry.
	retrying bool
}

func (x *Exchange) reset(cs *conn, addr string, deadline time.Time) {
	*x = Exchange{cs: cs, addr: addr, deadline: deadline, length: -1}
	// An attempt replaying the body counts it again from the start.
	cs.bytesIn = 0
	rh := &cs.rh
	switch {
	case rh.chunked:
	case rh.contentLength > 0:
		x.left = rh.contentLength
	default:
		x.bodyDone = true
	}
}

// Addr is the endpoint the Router chose (Decision.Addr).
func (x *Exchange) Addr() string { return x.addr }

// Method is the request method.
func (x *Exchange) Method() string { return x.cs.req.Method }

// Target is the request-target in origin-form ("/p?q"), as rewritten by
// the route (Traffic.Target).
func (x *Exchange) Target() string {
	if t := x.t; t != nil && t.tr.Target != "" {
		return t.tr.Target
	}
	rh := &x.cs.rh
	if rh.slash {
		return "/" + string(rh.origin)
	}
	return bstr(rh.origin)
}

// Host is the request's authority, as rewritten by the route
// (Traffic.Host); "" when an HTTP/1.0 client sent none.
func (x *Exchange) Host() string {
	if t := x.t; t != nil && t.tr.Host != "" {
		return t.tr.Host
	}
	rh := &x.cs.rh
	if rh.hasHost || rh.absolute {
		return bstr(rh.host)
	}
	return ""
}

// VisitFields calls fn for each end-to-end request field (hop-by-hop,
// framing, Host and Expect left out) in order, with the route's edits
// applied (Traffic.RequestHeaders: the fields it sets or adds come last),
// until fn returns false. The slices are valid during the Exchange call
// only and must not be modified.
func (x *Exchange) VisitFields(fn func(name, value []byte) bool) {
	if x.t != nil {
		x.cs.visitFields(x.t.tr.RequestHeaders, false, fn)
		return
	}
	rh := &x.cs.rh
	for i := range rh.fields {
		f := &rh.fields[i]
		if f.hop || (f.kind != kindOther && f.kind != kindXForwardedFor) {
			continue
		}
		if !fn(f.name, f.value) {
			return
		}
	}
}

// TETrailers reports whether the client sent "TE: trailers".
func (x *Exchange) TETrailers() bool { return x.cs.rh.teTrailers }

// ContentLength is the request body's length: 0 without a body, -1 for a
// chunked one.
func (x *Exchange) ContentLength() int64 {
	rh := &x.cs.rh
	if rh.chunked {
		return -1
	}
	return max(rh.contentLength, 0)
}

// Deadline bounds the exchange (Decision.Timeout); zero means none.
func (x *Exchange) Deadline() time.Time { return x.deadline }

// Read reads the request body, decoded; io.EOF at its end.
func (x *Exchange) Read(p []byte) (int, error) {
	if x.bodyDone {
		return 0, io.EOF
	}
	if x.bodyErr != nil {
		return 0, x.bodyErr
	}
	if x.replay != nil {
		n := copy(p, x.replay[x.off:])
		x.off += n
		x.cs.bytesIn += int64(n)
		if x.off == len(x.replay) {
			x.bodyDone = true
			return n, io.EOF
		}
		return n, nil
	}
	cs := x.cs
	if cs.rh.expectContinue {
		cs.rh.expectContinue = false
		// Answered here, not relayed: the upstream never sees Expect.
		_, _ = cs.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := cs.bw.Flush(); err != nil {
			x.bodyErr = fmt.Errorf("write 100 continue: %w", err)
			return 0, x.bodyErr
		}
	}
	var n int
	var err error
	if cs.rh.chunked {
		n, err = x.chunks.read(cs.br, p)
		if err == io.EOF {
			x.bodyDone = true
		}
	} else {
		if int64(len(p)) > x.left {
			p = p[:x.left]
		}
		n, err = cs.br.Read(p)
		x.left -= int64(n)
		if x.left == 0 {
			x.bodyDone = true
			err = io.EOF
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil && err != io.EOF {
		x.bodyErr = err
	}
	cs.bytesIn += int64(n)
	return n, err
}

// WriteHead writes the response head: status line, the fields fields
// yields (framing and connection-management fields are dropped; the
// engine writes its own) with the route's edits applied, then
// Content-Length when length >= 0, else chunked framing for an HTTP/1.1
// client. Nothing is flushed yet.
//
// When the route retries responses of this status and may still do so,
// WriteHead writes nothing: the response is discarded, and Write and
// Flush fail from then on so that the Upstream stops and returns; the
// engine then makes the next attempt.
func (x *Exchange) WriteHead(status int, length int64, fields func(yield func(name, value string) bool)) {
	if t := x.t; t != nil {
		t.sent()
		if t.retry(status, FailureNone) {
			x.retrying = true
			return
		}
	}
	cs := x.cs
	rh := &cs.rh
	edits := x.t.respEdits()
	x.started, x.status, x.length = true, status, length
	x.noBody = isHead(rh.method) || status == http.StatusNoContent || status == http.StatusNotModified
	raw := !x.noBody && length < 0 && rh.minor == 0 // HTTP/1.0: body until close
	x.chunkOut = !x.noBody && length < 0 && !raw
	x.close = rh.close || raw || cs.stopping()

	bw := cs.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeInt(bw, int64(status))
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(http.StatusText(status))
	_, _ = bw.WriteString("\r\n")
	for name, value := range fields {
		switch classify(sbytes(name)) {
		case kindOther, kindXForwardedFor:
		default:
			continue
		}
		if edits != nil && edits.drops(name) {
			continue
		}
		writeStringField(bw, name, value)
	}
	if edits != nil {
		writeEdits(bw, edits, false)
	}
	switch {
	case x.noBody:
		if length >= 0 && status != http.StatusNoContent {
			writeContentLength(bw, length)
		}
	case length >= 0:
		writeContentLength(bw, length)
	case x.chunkOut:
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if x.close {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	x.headDone = true
}

// errBodyLength: the upstream sent more or less than it declared.
var errBodyLength = errors.New("h1: response body does not match its content-length")

// Write writes response body bytes (chunk-encoded when the head said
// so). Writes to a response without body are dropped.
func (x *Exchange) Write(p []byte) (int, error) {
	if x.retrying {
		return 0, errRetry
	}
	if x.noBody || len(p) == 0 {
		return len(p), nil
	}
	if x.length >= 0 && x.written+int64(len(p)) > x.length {
		return 0, errBodyLength
	}
	x.written += int64(len(p))
	bw := x.cs.bw
	if x.chunkOut {
		if err := writeChunkSize(bw, int64(len(p))); err != nil {
			return 0, err
		}
	}
	n, err := bw.Write(p)
	x.cs.bytesOut += int64(n)
	if err != nil {
		return n, err
	}
	if x.chunkOut {
		_, err = bw.WriteString("\r\n")
	}
	return n, err
}

// Flush sends what was written so far to the client.
func (x *Exchange) Flush() error {
	if x.retrying {
		return errRetry
	}
	return x.cs.bw.Flush()
}

// bridge runs an exchange through up (the endpoint addr names). It returns
// what pooled returns and, with t, makes one attempt as pooled does.
func (cs *conn) bridge(addr string, up Upstream, deadline time.Time, t *trafficState) (status int, keep bool, err error) {
	x := &cs.x
	x.reset(cs, addr, deadline)
	if t != nil {
		x.t = t
		if t.body != nil {
			x.replay, x.bodyDone = t.body, false
		}
	}
	defer func() { x.cs, x.t, x.replay = nil, nil, nil }()
	err = up.Exchange(x)
	if x.retrying {
		return 0, false, nil
	}
	if t != nil {
		t.sent()
	}
	if err == nil && !x.headDone {
		err = errors.New("h1: upstream wrote no response")
	}
	if err == nil && !x.noBody && x.length >= 0 && x.written != x.length {
		err = errBodyLength
	}
	if err != nil {
		if x.started {
			return x.status, false, fmt.Errorf("exchange with upstream %s: %w", addr, err)
		}
		if x.bodyErr != nil {
			return cs.bodyFailed(x.bodyErr)
		}
		status, failure := http.StatusBadGateway, FailureReset
		if ue, ok := errors.AsType[*UpstreamError](err); ok {
			status = ue.Status
		} else if isTimeout(err) {
			status = http.StatusGatewayTimeout
		}
		switch status {
		case http.StatusServiceUnavailable:
			failure = FailureConnect
		case http.StatusGatewayTimeout:
			failure = FailureTimeout
		}
		if t != nil && t.retry(0, failure) {
			return 0, false, nil
		}
		return cs.fail(status, t.consumeBody(x.bodyDone), fmt.Errorf("exchange with upstream %s: %w", addr, err))
	}
	if x.chunkOut {
		_, _ = cs.bw.WriteString("0\r\n\r\n")
	}
	if err := cs.bw.Flush(); err != nil {
		return x.status, false, fmt.Errorf("write response: %w", err)
	}
	return x.status, !x.close && t.consumeBody(x.bodyDone), nil
}
