package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// OutRequest is a request Pool.RoundTrip sends: package proxy's HTTP/2
// bridge forwards the streams it receives from peer proxies with it.
type OutRequest struct {
	Method string
	// Target is the origin-form request-target ("/p?q").
	Target string
	Host   string
	// Fields yields the end-to-end fields to send; the caller leaves out
	// connection-specific ones, Host and framing.
	Fields func(yield func(name, value string) bool)
	// Body is read until EOF; nil means none. ContentLength is its length,
	// -1 when unknown (sent chunked).
	Body          io.Reader
	ContentLength int64
	// Deadline bounds the whole exchange, response body included; zero
	// means none.
	Deadline time.Time
}

// Response is an upstream response whose body streams from the pooled
// connection. Read the body to EOF, then Close, which gives the
// connection back when the exchange ended cleanly.
type Response struct {
	Status int
	// ContentLength is the body's declared length, -1 when unknown.
	ContentLength int64

	p    *Pool
	addr string
	uc   *upConn
	head []byte
	resp respHead

	noBody bool
	left   int64 // fixed length still to read
	chunks chunkedReader
	eof    bool // body read to its end
	err    error
}

var responsePool = sync.Pool{New: func() any { return new(Response) }}

// maxReplayBody is the largest request body with a known length that
// RoundTrip reads before sending, so that a request can be sent again on a
// fresh connection after a stale keep-alive one failed.
const maxReplayBody = 16 << 10

var replayPool = sync.Pool{New: func() any { b := make([]byte, maxReplayBody); return &b }}

// errBody marks a failure to read the request body (the caller's side).
type bodyReadError struct{ err error }

func (e *bodyReadError) Error() string { return "read request body: " + e.err.Error() }
func (e *bodyReadError) Unwrap() error { return e.err }

// IsBodyError reports whether a RoundTrip error came from reading the
// request body rather than from the upstream.
func IsBodyError(err error) bool {
	_, ok := errors.AsType[*bodyReadError](err)
	return ok
}

// RoundTrip sends req to addr over a pooled connection and returns the
// response once its head arrived (1xx heads skipped). A request that
// could not be delivered on a reused connection is retried once on a fresh
// one when that is safe (no body or a small one read beforehand, and an
// idempotent method when it has a body). Errors before a response are an
// *UpstreamError naming the status to answer (503: no connection, 504:
// deadline, 502: anything else), or a body error (IsBodyError).
func (p *Pool) RoundTrip(addr string, req *OutRequest) (*Response, error) {
	hasBody := req.Body != nil && req.ContentLength != 0
	var replay []byte
	if hasBody && req.ContentLength > 0 && req.ContentLength <= maxReplayBody {
		bp := replayPool.Get().(*[]byte)
		defer replayPool.Put(bp)
		n, err := io.ReadFull(req.Body, (*bp)[:req.ContentLength])
		if err != nil {
			return nil, &bodyReadError{err}
		}
		replay = (*bp)[:n]
	}
	retry := !hasBody || (replay != nil && idempotent([]byte(req.Method)))
	r := responsePool.Get().(*Response)
	for attempt := 0; ; attempt++ {
		uc, reused, err := p.get(addr, req.Deadline, attempt > 0)
		if err != nil {
			status := http.StatusServiceUnavailable
			if isTimeout(err) || (!req.Deadline.IsZero() && !time.Now().Before(req.Deadline)) {
				status = http.StatusGatewayTimeout
			}
			r.release()
			return nil, &UpstreamError{Status: status, Err: fmt.Errorf("connect upstream %s: %w", addr, err)}
		}
		uc.setDeadline(req.Deadline)
		writeOutHead(uc.bw, req, hasBody)
		var werr error
		switch {
		case !hasBody:
		case replay != nil:
			_, werr = uc.bw.Write(replay)
		default:
			var rerr error
			rerr, werr = sendBody(uc.bw, req.Body, req.ContentLength)
			if rerr != nil {
				p.discard(uc)
				r.release()
				return nil, &bodyReadError{rerr}
			}
		}
		if werr == nil {
			werr = uc.bw.Flush()
		}
		if werr == nil {
			werr = r.readHead(uc, req.Method)
			if werr == nil {
				r.p, r.addr, r.uc = p, addr, uc
				return r, nil
			}
			if len(r.head) > 0 {
				retry = false // the upstream answered something
			}
		}
		p.discard(uc)
		if reused && retry && attempt == 0 && !isTimeout(werr) {
			continue
		}
		status := http.StatusBadGateway
		if isTimeout(werr) {
			status = http.StatusGatewayTimeout
		}
		r.release()
		return nil, &UpstreamError{Status: status, Err: fmt.Errorf("exchange with upstream %s: %w", addr, werr)}
	}
}

// writeOutHead writes req's head with its framing fields.
func writeOutHead(bw *bufio.Writer, req *OutRequest, hasBody bool) {
	_, _ = bw.WriteString(req.Method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(req.Target)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(req.Host)
	_, _ = bw.WriteString("\r\n")
	if req.Fields != nil {
		for name, value := range req.Fields {
			_, _ = bw.WriteString(name)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(value)
			_, _ = bw.WriteString("\r\n")
		}
	}
	switch {
	case hasBody && req.ContentLength < 0:
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	case hasBody || methodHasBody(req.Method):
		writeContentLength(bw, max(req.ContentLength, 0))
	}
	_, _ = bw.WriteString("\r\n")
}

// methodHasBody: methods whose empty body is worth a Content-Length: 0.
func methodHasBody(m string) bool { return m == "POST" || m == "PUT" || m == "PATCH" }

// sendBody copies a streamed body, chunk-encoding it when n < 0.
func sendBody(bw *bufio.Writer, body io.Reader, n int64) (rerr, werr error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	var sent int64
	for {
		k, err := body.Read(buf)
		if k > 0 {
			if n >= 0 && sent+int64(k) > n {
				return errors.New("body longer than its content-length"), nil
			}
			sent += int64(k)
			if n < 0 {
				if werr := writeChunkSize(bw, int64(k)); werr != nil {
					return nil, werr
				}
			}
			if _, werr := bw.Write(buf[:k]); werr != nil {
				return nil, werr
			}
			if n < 0 {
				_, _ = bw.WriteString("\r\n")
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err, nil
		}
		if k == 0 {
			continue
		}
		// Streamed bodies go out as they come.
		if werr := bw.Flush(); werr != nil {
			return nil, werr
		}
	}
	if n >= 0 && sent != n {
		return io.ErrUnexpectedEOF, nil
	}
	if n < 0 {
		_, werr = bw.WriteString("0\r\n\r\n")
	}
	return nil, werr
}

// readHead reads the final response head from uc and sets up the body.
func (r *Response) readHead(uc *upConn, method string) error {
	for {
		head, err := readHead(uc.br, r.head[:0], defaultMaxHeaderBytes, false)
		r.head = head
		if err != nil {
			return err
		}
		if err := parseResponseHead(head, &r.resp); err != nil {
			return err
		}
		if r.resp.status == http.StatusSwitchingProtocols {
			return errors.New("h1: unrequested 101 response")
		}
		if r.resp.status >= 200 {
			break
		}
	}
	rs := &r.resp
	r.Status = rs.status
	r.noBody = method == "HEAD" || rs.status == http.StatusNoContent || rs.status == http.StatusNotModified
	r.ContentLength = rs.contentLength
	r.left = rs.contentLength
	r.eof = r.noBody || rs.contentLength == 0
	r.chunks = chunkedReader{}
	r.err = nil
	if r.noBody && rs.status == http.StatusNoContent {
		r.ContentLength = -1
	}
	return nil
}

// VisitFields calls fn for each end-to-end response field in order
// (framing and connection-management fields left out) until it returns
// false. The slices are valid until Close.
func (r *Response) VisitFields(fn func(name, value []byte) bool) {
	for i := range r.resp.fields {
		f := &r.resp.fields[i]
		if f.hop || (f.kind != kindOther && f.kind != kindXForwardedFor) {
			continue
		}
		if !fn(f.name, f.value) {
			return
		}
	}
}

// NoBody reports a response that has no body whatever its fields say
// (HEAD, 204, 304).
func (r *Response) NoBody() bool { return r.noBody }

// Buffered reports how many body bytes the next Read returns without
// blocking, as far as known: 0 for a chunked body, whose framing may need
// more input than is buffered. A relay flushes before a Read when it is 0.
func (r *Response) Buffered() int {
	if r.eof || r.resp.chunked {
		return 0
	}
	return r.uc.br.Buffered()
}

// Read reads the body; the last bytes may come with io.EOF.
func (r *Response) Read(p []byte) (int, error) {
	if r.eof {
		return 0, io.EOF
	}
	if r.err != nil {
		return 0, r.err
	}
	br := r.uc.br
	var n int
	var err error
	switch {
	case r.resp.chunked:
		n, err = r.chunks.read(br, p)
		if err == io.EOF {
			r.eof = true
		}
	case r.left >= 0:
		if int64(len(p)) > r.left {
			p = p[:r.left]
		}
		n, err = br.Read(p)
		r.left -= int64(n)
		if r.left == 0 {
			r.eof, err = true, io.EOF
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	default:
		n, err = br.Read(p)
		if err == io.EOF {
			r.eof = true
		}
	}
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// Abort closes the connection under the response, so that a blocked Read
// returns at once (the stream it feeds was reset). Safe to call from
// another goroutine, once or more.
func (r *Response) Abort() { _ = r.uc.c.Close() }

// Close gives the connection back to the pool when the body was read to
// its end and the upstream may keep it, and closes it otherwise. r must not
// be used afterwards.
func (r *Response) Close() {
	uc := r.uc
	rs := &r.resp
	clean := r.eof && r.err == nil && !rs.close && (rs.chunked || rs.contentLength >= 0 || r.noBody) && uc.br.Buffered() == 0
	if clean {
		uc.setDeadline(time.Time{})
		r.p.put(r.addr, uc)
	} else {
		r.p.discard(uc)
	}
	r.release()
}

func (r *Response) release() {
	head := r.head
	if cap(head) > 8<<10 {
		head = nil
	}
	*r = Response{head: head[:0], resp: respHead{fields: r.resp.fields[:0]}}
	responsePool.Put(r)
}
