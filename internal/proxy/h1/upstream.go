package h1

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
	"unsafe"
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

	// Request body state.
	left     int64 // fixed length still to read
	chunks   chunkedReader
	bodyDone bool
	bodyErr  error

	// Response state.
	started  bool // status line written
	headDone bool
	status   int
	noBody   bool
	chunkOut bool // body re-encoded chunked
	length   int64
	written  int64
	close    bool
}

func (x *Exchange) reset(cs *conn, addr string, deadline time.Time) {
	*x = Exchange{cs: cs, addr: addr, deadline: deadline, length: -1}
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

// Target is the request-target in origin-form ("/p?q").
func (x *Exchange) Target() string {
	rh := &x.cs.rh
	if rh.slash {
		return "/" + string(rh.origin)
	}
	return bstr(rh.origin)
}

// Host is the request's authority, "" when an HTTP/1.0 client sent none.
func (x *Exchange) Host() string {
	rh := &x.cs.rh
	if rh.hasHost || rh.absolute {
		return bstr(rh.host)
	}
	return ""
}

// VisitFields calls fn for each end-to-end request field (hop-by-hop,
// framing, Host and Expect left out) in order, until fn returns false.
// The slices are valid during the Exchange call only.
func (x *Exchange) VisitFields(fn func(name, value []byte) bool) {
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
	return n, err
}

// WriteHead writes the response head: status line, the fields fields
// yields (framing and connection-management fields are dropped; the
// engine writes its own), then Content-Length when length >= 0, else
// chunked framing for an HTTP/1.1 client. Nothing is flushed yet.
func (x *Exchange) WriteHead(status int, length int64, fields func(yield func(name, value string) bool)) {
	cs := x.cs
	rh := &cs.rh
	x.started, x.status, x.length = true, status, length
	x.noBody = isHead(rh.method) || status == http.StatusNoContent || status == http.StatusNotModified
	raw := !x.noBody && length < 0 && rh.minor == 0 // HTTP/1.0: body until close
	x.chunkOut = !x.noBody && length < 0 && !raw
	x.close = rh.close || raw || cs.draining.Load()

	bw := cs.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeInt(bw, int64(status))
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(http.StatusText(status))
	_, _ = bw.WriteString("\r\n")
	for name, value := range fields {
		switch classify(unsafe.Slice(unsafe.StringData(name), len(name))) {
		case kindOther, kindXForwardedFor:
		default:
			continue
		}
		_, _ = bw.WriteString(name)
		_, _ = bw.WriteString(": ")
		_, _ = bw.WriteString(value)
		_, _ = bw.WriteString("\r\n")
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
	if err != nil {
		return n, err
	}
	if x.chunkOut {
		_, err = bw.WriteString("\r\n")
	}
	return n, err
}

// Flush sends what was written so far to the client.
func (x *Exchange) Flush() error { return x.cs.bw.Flush() }

// bridge runs an exchange through d.Upstream. It returns what exchange
// returns.
func (cs *conn) bridge(d *Decision, deadline time.Time) (status int, keep bool, err error) {
	x := &cs.x
	x.reset(cs, d.Addr, deadline)
	defer func() { x.cs = nil }()
	err = d.Upstream.Exchange(x)
	if err == nil && !x.headDone {
		err = errors.New("h1: upstream wrote no response")
	}
	if err == nil && !x.noBody && x.length >= 0 && x.written != x.length {
		err = errBodyLength
	}
	if err != nil {
		if x.started {
			return x.status, false, fmt.Errorf("exchange with upstream %s: %w", d.Addr, err)
		}
		if x.bodyErr != nil {
			status := http.StatusBadRequest
			if isTimeout(x.bodyErr) {
				status = http.StatusRequestTimeout
			}
			sent := 0
			if cs.writeLocal(status, LocalBody(status), true, false) == nil {
				sent = status
			}
			return sent, false, fmt.Errorf("read request body: %w", x.bodyErr)
		}
		status := http.StatusBadGateway
		if ue, ok := errors.AsType[*UpstreamError](err); ok {
			status = ue.Status
		} else if isTimeout(err) {
			status = http.StatusGatewayTimeout
		}
		return cs.fail(status, x.bodyDone, fmt.Errorf("exchange with upstream %s: %w", d.Addr, err))
	}
	if x.chunkOut {
		_, _ = cs.bw.WriteString("0\r\n\r\n")
	}
	if err := cs.bw.Flush(); err != nil {
		return x.status, false, fmt.Errorf("write response: %w", err)
	}
	return x.status, !x.close && x.bodyDone, nil
}
