package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Handler serves the request streams of one connection.
type Handler interface {
	// ServeStream is called on a goroutine of its own for each request
	// stream, concurrently for the streams of a connection. It must answer
	// with WriteHeader (and WriteData until a write with end set), and may
	// read the request body meanwhile; when it returns, a stream it did not
	// end is reset. s is not used after ServeStream returns.
	ServeStream(s *Stream)
}

// ServerConfig configures ServeConn. Zero fields take the defaults shown.
type ServerConfig struct {
	// MaxConcurrentStreams is announced to the client; streams beyond it
	// are refused (1000).
	MaxConcurrentStreams uint32
	// IdleTimeout closes a connection without streams for this long (5m).
	IdleTimeout time.Duration
}

// ServeConn serves HTTP/2 on c, whose client preface has not been read,
// until the client closes it, a protocol error closes it, or ctx ends.
// When ctx ends the server drains: GOAWAY names the last stream it took,
// streams in flight finish, then the connection is closed. ServeConn closes
// c and returns once every handler returned: nil after a clean end, else
// why the connection ended.
func ServeConn(ctx context.Context, c net.Conn, h Handler, cfg ServerConfig) error {
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 1000
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	sc := &serverConn{cfg: cfg, h: h, streams: map[uint32]*Stream{}, idleSince: time.Now(),
		work: make(chan *Stream), done: make(chan struct{})}
	sc.init(c)
	defer sc.handlers.Wait()
	defer close(sc.done)
	defer c.Close()

	_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if !readPreface(sc.br) {
		// Not HTTP/2: answer as RFC 9113 3.4 asks, then close.
		_ = sc.writePreamble(false, false, cfg.MaxConcurrentStreams)
		sc.goAway(0, http2.ErrCodeProtocol)
		return errors.New("h2: bad client preface")
	}
	if err := sc.writePreamble(false, true, cfg.MaxConcurrentStreams); err != nil {
		return err
	}
	f, err := sc.fr.ReadFrame()
	if err != nil {
		sc.goAway(0, http2.ErrCodeProtocol)
		return fmt.Errorf("h2: read client settings: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		sc.goAway(0, http2.ErrCodeProtocol)
		return errors.New("h2: client preface not followed by SETTINGS")
	}
	if err := sc.applySettings(sf, sc.openStreams, nil); err != nil {
		sc.connError(err)
		return err
	}
	_ = c.SetReadDeadline(time.Time{})
	sc.handlers.Go(func() { sc.runFlusher(sc.done) })

	sc.idle = time.AfterFunc(cfg.IdleTimeout, sc.checkIdle)
	defer sc.idle.Stop()
	stop := context.AfterFunc(ctx, sc.drain)
	defer stop()

	err = sc.readFrames()
	sc.mu.Lock()
	done := sc.closing
	streams := make([]*Stream, 0, len(sc.streams))
	for _, s := range sc.streams {
		streams = append(streams, s)
	}
	sc.mu.Unlock()
	_ = c.Close()
	cerr := fmt.Errorf("%w: %w", ErrClosed, err)
	sc.die(cerr)
	for _, s := range streams {
		s.st.connDied(&streamError{err: cerr})
	}
	if done || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// serverConn is one connection ServeConn serves.
type serverConn struct {
	wire
	cfg ServerConfig
	h   Handler
	// handlers tracks the stream workers and the flusher.
	handlers sync.WaitGroup
	idle     *time.Timer
	// work hands a new stream to an idle worker; done is closed when the
	// connection ended, which makes idle workers leave.
	work chan *Stream
	done chan struct{}

	// mu guards the fields below.
	mu      sync.Mutex
	streams map[uint32]*Stream
	// maxID is the highest stream ID taken so far.
	maxID uint32
	// draining: GOAWAY sent, no new streams; closing: the connection is
	// being closed by us.
	draining  bool
	closing   bool
	idleSince time.Time
}

func (sc *serverConn) openStreams() []*stream {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	list := make([]*stream, 0, len(sc.streams))
	for _, s := range sc.streams {
		list = append(list, &s.st)
	}
	return list
}

func (sc *serverConn) stream(id uint32) *Stream {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.streams[id]
}

// drain starts the graceful close: GOAWAY with the last stream taken, and
// the connection closes when the last stream ends.
func (sc *serverConn) drain() {
	sc.mu.Lock()
	if sc.draining {
		sc.mu.Unlock()
		return
	}
	sc.draining = true
	last := sc.maxID
	idle := len(sc.streams) == 0
	if idle {
		sc.closing = true
	}
	sc.mu.Unlock()
	sc.goAway(last, http2.ErrCodeNo)
	if idle {
		sc.flushNow()
		_ = sc.c.Close()
	}
}

// checkIdle closes the connection after IdleTimeout without streams.
func (sc *serverConn) checkIdle() {
	sc.mu.Lock()
	wait := time.Duration(0)
	if len(sc.streams) > 0 {
		wait = sc.cfg.IdleTimeout
	} else if since := time.Since(sc.idleSince); since < sc.cfg.IdleTimeout {
		wait = sc.cfg.IdleTimeout - since
	}
	sc.mu.Unlock()
	if wait > 0 {
		sc.idle.Reset(wait)
		return
	}
	sc.drain()
}

// connError answers a connection error with GOAWAY.
func (sc *serverConn) connError(err error) {
	code := http2.ErrCodeProtocol
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		code = http2.ErrCode(ce)
	case errors.Is(err, http2.ErrFrameTooLarge):
		code = http2.ErrCodeFrameSize
	}
	sc.mu.Lock()
	last := sc.maxID
	sc.closing = true
	sc.mu.Unlock()
	sc.goAway(last, code)
}

// protocolError is a connection error of the peer's making.
func protocolError(format string, args ...any) error {
	return fmt.Errorf("h2: %s: %w", fmt.Sprintf(format, args...), http2.ConnectionError(http2.ErrCodeProtocol))
}

func (sc *serverConn) readFrames() error {
	for {
		f, hb, err := sc.readFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				sc.resetStream(se.StreamID, se.Code)
				continue
			}
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return err
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) || errors.Is(err, http2.ErrFrameTooLarge) {
				sc.connError(err)
			}
			return err
		}
		if hb != nil {
			err = sc.onHeaders(hb)
		} else {
			err = sc.onFrame(f)
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				sc.resetStream(se.StreamID, se.Code)
				continue
			}
			sc.connError(err)
			return err
		}
	}
}

func (sc *serverConn) onFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return sc.onData(f)
	case *http2.SettingsFrame:
		return sc.applySettings(f, sc.openStreams, nil)
	case *http2.WindowUpdateFrame:
		var st *stream
		if f.StreamID != 0 {
			s := sc.stream(f.StreamID)
			if s == nil {
				if sc.idleID(f.StreamID) {
					return protocolError("WINDOW_UPDATE on idle stream %d", f.StreamID)
				}
				return nil
			}
			st = &s.st
		}
		return sc.applyWindowUpdate(st, f.Increment)
	case *http2.RSTStreamFrame:
		if s := sc.stream(f.StreamID); s != nil {
			s.st.fail(resetError(f.ErrCode))
		} else if sc.idleID(f.StreamID) {
			return protocolError("RST_STREAM on idle stream %d", f.StreamID)
		}
	case *http2.PingFrame:
		sc.ping(f)
	case *http2.PushPromiseFrame:
		return protocolError("PUSH_PROMISE from a client")
	case *http2.GoAwayFrame:
		// The client opens no more streams; those in flight finish.
	}
	// PRIORITY and unknown frame types are ignored (RFC 9113 5.5, 5.3.2).
	return nil
}

// idleID reports whether id names a stream not opened yet.
func (sc *serverConn) idleID(id uint32) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return id > sc.maxID
}

// resetStream resets stream id after a stream error.
func (sc *serverConn) resetStream(id uint32, code http2.ErrCode) {
	if s := sc.stream(id); s != nil {
		s.st.fail(&streamError{code: code, err: fmt.Errorf("h2: stream error %v", code)})
	}
	sc.writeRST(id, code)
}

func (sc *serverConn) onData(f *http2.DataFrame) error {
	flow := int64(f.Length)
	if sc.recvWin.Add(-flow) < 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	s := sc.stream(f.StreamID)
	if s == nil || s.remoteDone {
		sc.consumed(flow)
		if sc.idleID(f.StreamID) {
			return protocolError("DATA on idle stream %d", f.StreamID)
		}
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeStreamClosed}
	}
	end := f.StreamEnded()
	if err := s.st.deliver(f.Data(), flow, end); err != nil {
		return err
	}
	if end {
		s.remoteDone = true
		if s.ContentLength >= 0 && s.st.received != s.ContentLength {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
	} else if s.ContentLength >= 0 && s.st.received > s.ContentLength {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
	}
	return nil
}

// connectionHeaders are the fields RFC 9113 8.2.2 forbids in HTTP/2.
var connectionHeaders = []string{"connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"}

func (sc *serverConn) onHeaders(f *headerBlock) error {
	id := f.streamID
	if id%2 == 0 {
		return protocolError("HEADERS on even stream %d", id)
	}
	if s := sc.stream(id); s != nil {
		// Trailers: they end the request; their fields are dropped.
		if s.remoteDone {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		}
		if !f.ended {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		s.remoteDone = true
		s.st.endStream()
		return nil
	}
	sc.mu.Lock()
	if id <= sc.maxID {
		sc.mu.Unlock()
		return fmt.Errorf("h2: HEADERS on closed stream %d: %w", id, http2.ConnectionError(http2.ErrCodeStreamClosed))
	}
	sc.maxID = id
	refuse := sc.draining || uint32(len(sc.streams)) >= sc.cfg.MaxConcurrentStreams
	sc.mu.Unlock()
	if refuse {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	}

	s := &Stream{
		Method:        f.pseudo(":method"),
		Scheme:        f.pseudo(":scheme"),
		Authority:     f.pseudo(":authority"),
		Path:          f.pseudo(":path"),
		Header:        f.regular(),
		ContentLength: -1,
		sc:            sc,
	}
	if s.Method == "" || s.Method == "CONNECT" || s.Path == "" || s.Scheme == "" || f.truncated {
		// CONNECT is not proxied here; the others are malformed.
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	for _, h := range s.Header {
		switch h.Name {
		case "content-length":
			n, err := strconv.ParseInt(h.Value, 10, 64)
			if err != nil || n < 0 || (s.ContentLength >= 0 && s.ContentLength != n) {
				return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
			}
			s.ContentLength = n
		case "te":
			if h.Value != "trailers" {
				return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
			}
		case "host":
			if s.Authority == "" {
				s.Authority = h.Value
			}
		default:
			for _, c := range connectionHeaders {
				if h.Name == c {
					return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
				}
			}
		}
	}
	if f.ended && s.ContentLength > 0 {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	sc.fmu.Lock()
	s.st.init(&sc.wire, id, sc.peerInit)
	sc.fmu.Unlock()
	if f.ended {
		s.remoteDone = true
		s.st.ended = true
	}
	sc.mu.Lock()
	sc.streams[id] = s
	sc.mu.Unlock()
	select {
	case sc.work <- s:
	default:
		sc.handlers.Go(func() { sc.worker(s) })
	}
	return nil
}

// workerIdle is how long a stream's goroutine waits for another stream
// before it leaves. Reusing it spares a new goroutine the stack growth that
// serving a stream (TLS sealing at its deepest) costs.
const workerIdle = 5 * time.Second

// worker serves s, then the streams handed to it while it is idle.
func (sc *serverConn) worker(s *Stream) {
	var t *time.Timer
	for {
		sc.h.ServeStream(s)
		sc.finish(s)
		if t == nil {
			t = time.NewTimer(workerIdle)
			defer t.Stop()
		} else {
			t.Reset(workerIdle)
		}
		select {
		case s = <-sc.work:
		case <-t.C:
			return
		case <-sc.done:
			return
		}
	}
}

// finish ends a stream whose handler returned.
func (sc *serverConn) finish(s *Stream) {
	switch {
	case !s.ended:
		// The handler gave up midway: the client must not take a
		// truncated response for a whole one.
		if s.st.fail(&streamError{err: errors.New("h2: handler did not end the stream")}) {
			sc.writeRST(s.st.id, http2.ErrCodeInternal)
		}
	case !s.st.allRead() && s.st.failed() == nil:
		// Response complete, request body not read: stop the client
		// sending it (RFC 9113 8.1).
		s.st.fail(&streamError{err: ErrClosed})
		sc.writeRST(s.st.id, http2.ErrCodeNo)
	}
	sc.mu.Lock()
	delete(sc.streams, s.st.id)
	last := len(sc.streams) == 0
	if last {
		sc.idleSince = time.Now()
	}
	closeNow := last && sc.draining
	if closeNow {
		sc.closing = true
	}
	sc.mu.Unlock()
	if closeNow {
		sc.flushNow()
		_ = sc.c.Close()
	}
}

// Stream is one request a Handler serves.
type Stream struct {
	// Method, Scheme, Authority (or the host field) and Path (origin-form
	// target, query included) are the request's pseudo-header fields.
	Method, Scheme, Authority, Path string
	// Header holds the regular fields in order, names in lower case.
	Header []hpack.HeaderField
	// ContentLength is the declared body length, -1 when not declared.
	ContentLength int64

	sc *serverConn
	// st is set up before the stream is published; a part of Stream to
	// save an allocation per request.
	st stream
	// remoteDone: END_STREAM arrived (reader goroutine only).
	remoteDone bool
	// wrote and ended are the handler's: head sent, END_STREAM sent.
	wrote, ended bool
	// read and written count the body bytes the handler read and wrote,
	// for telemetry.
	read, written int64
	// status is the response status sent (0: none yet).
	status int
}

// Status is the response status sent, 0 before WriteHeader.
func (s *Stream) Status() int { return s.status }

// BodyBytes returns the request body bytes read and the response body
// bytes written so far.
func (s *Stream) BodyBytes() (read, written int64) { return s.read, s.written }

// Get returns the first value of the named field (lower-case name).
func (s *Stream) Get(name string) string {
	for _, h := range s.Header {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

// Read reads the request body; io.EOF at its end.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.st.read(p, nil)
	s.read += int64(n)
	return n, err
}

// BodyDone reports whether the request body was read to its end.
func (s *Stream) BodyDone() bool { return s.st.allRead() }

// WriteHeader sends the response head: status and fields (regular fields,
// lower-case names, no connection-specific ones), which are encoded before
// it returns. end ends the stream (a
// response without body); flush false leaves it buffered for WriteData
// that follows at once.
func (s *Stream) WriteHeader(status int, fields []hpack.HeaderField, end, flush bool) error {
	if s.wrote {
		return errors.New("h2: response head written twice")
	}
	if err := s.st.failed(); err != nil {
		return err
	}
	s.wrote, s.status = true, status
	// The fields only live until they are encoded below.
	hp := HeaderFields()
	defer PutHeaderFields(hp)
	hdr := append((*hp)[:0], hpack.HeaderField{Name: ":status", Value: statusValue(status)})
	hdr = append(hdr, fields...)
	*hp = hdr
	sc := s.sc
	sc.lock()
	sc.writeHeadersLocked(s.st.id, hdr, end)
	var err error
	if flush || end {
		err = sc.unlockBatched()
	} else {
		err = sc.unlock(false)
	}
	if end && err == nil {
		s.ended = true
	}
	return err
}

// WriteData sends body bytes within the flow-control windows, ending the
// stream with the last ones when end is set. It blocks while the client
// grants no window, until the stream or connection fails.
func (s *Stream) WriteData(p []byte, end, flush bool) error {
	if !s.wrote || s.ended {
		return errors.New("h2: data outside a response body")
	}
	err := s.sc.writeData(&s.st, p, end, flush || end)
	if err == nil {
		s.written += int64(len(p))
		if end {
			s.ended = true
		}
	}
	return err
}

// statusValue formats a status code, without allocating for common ones.
func statusValue(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 206:
		return "206"
	case 301:
		return "301"
	case 302:
		return "302"
	case 304:
		return "304"
	case 400:
		return "400"
	case 403:
		return "403"
	case 404:
		return "404"
	case 500:
		return "500"
	case 502:
		return "502"
	case 503:
		return "503"
	case 504:
		return "504"
	}
	return strconv.Itoa(code)
}

// lowerNames maps the common header field names to their lower-case form,
// so that forwarding an HTTP/1.1 head allocates no name.
var lowerNames = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{"Accept", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Content-Encoding", "Content-Language", "Content-Type", "Cookie", "Date",
		"ETag", "Expires", "Last-Modified", "Location", "Origin", "Pragma", "Referer", "Server",
		"Set-Cookie", "User-Agent", "Vary", "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id",
		"Traceparent", "Tracestate", "Content-Disposition", "Age", "Etag", "Allow", "Range",
		"Content-Range", "Accept-Ranges", "If-None-Match", "If-Modified-Since", "Via", "Link",
		"Strict-Transport-Security", "Www-Authenticate", "X-Content-Type-Options"} {
		l := strings.ToLower(n)
		m[n] = l
		m[l] = l
	}
	return m
}()

// LowerName returns name in lower case as a string that may be kept (for
// the hpack tables): common names without allocating.
func LowerName(name []byte) string {
	if l, ok := lowerNames[string(name)]; ok {
		return l
	}
	return strings.ToLower(string(name))
}
