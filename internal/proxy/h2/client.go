package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ClientConfig configures a Client. Dial is required.
type ClientConfig struct {
	// Dial opens a connection to addr that speaks HTTP/2 (for the mesh: a
	// mutual TLS connection that negotiated "h2"). It is called without
	// locks held; ctx carries the connect deadline.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// ConnsPerAddr is how many connections requests to one address are
	// spread over before streams share them (2). Each connection's frames
	// are read by one goroutine on each side, so a few let both cores work;
	// more dilute the batching of writes.
	ConnsPerAddr int
	// IdleTimeout closes a connection without streams for this long (90s).
	IdleTimeout time.Duration
	// ConnectTimeout bounds Dial (5s); a request's earlier deadline wins.
	ConnectTimeout time.Duration
}

// Client sends requests as HTTP/2 streams over pooled connections, per
// address. It is safe for concurrent use. Close it to release its
// connections and their reader and flusher goroutines.
type Client struct {
	cfg ClientConfig

	// mu guards addrs, closed and retired.
	mu     sync.Mutex
	addrs  map[string]*addrConns
	closed bool
	// retired: close connections as soon as they have no stream.
	retired bool
	// readers tracks the connections' reader and flusher goroutines.
	readers sync.WaitGroup
}

// addrConns are the connections to one address.
type addrConns struct {
	conns []*clientConn
	// dialing is the pending dial, if any: callers that need a connection
	// wait for it rather than dial too.
	dialing *pendingDial
}

type pendingDial struct {
	done chan struct{}
	err  error
}

// NewClient returns a client that dials on first use.
func NewClient(cfg ClientConfig) *Client {
	if cfg.ConnsPerAddr <= 0 {
		cfg.ConnsPerAddr = 2
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	return &Client{cfg: cfg, addrs: map[string]*addrConns{}}
}

// Request is one request to send. Header holds the regular fields with
// lower-case names and no connection-specific ones; the client adds the
// pseudo-header fields and content-length.
type Request struct {
	Method    string
	Authority string
	// Path is the origin-form target ("/p?q").
	Path   string
	Header []hpack.HeaderField
	// Body is read until EOF (nil: no body). ContentLength is its length,
	// -1 when unknown.
	Body          io.Reader
	ContentLength int64
	// Deadline bounds the whole exchange, response body included; zero
	// means none.
	Deadline time.Time
}

// Response is a response being received. Its body must be read to EOF
// or the response closed.
type Response struct {
	Status int
	// Header holds the regular fields as received (lower-case names);
	// content-length among them.
	Header []hpack.HeaderField
	// ContentLength is the declared length, -1 when none.
	ContentLength int64

	cs *clientStream
}

// DialError is a failure to open a connection: nothing was sent.
type DialError struct{ Err error }

func (e *DialError) Error() string { return "h2: dial: " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// maxBufferedBody is the largest request body with a known length that is
// read before the request is sent, so that it leaves with its HEADERS in
// one write and can be sent again when the stream is refused.
const maxBufferedBody = 16 << 10

var bodyBufPool = sync.Pool{New: func() any { b := make([]byte, maxBufferedBody); return &b }}

// headerPool recycles header field slices of requests, whose fields live
// only until their HEADERS frame is encoded.
var headerPool = sync.Pool{New: func() any { f := make([]hpack.HeaderField, 0, 24); return &f }}

// HeaderFields returns an empty field slice from the pool; give it back
// with PutHeaderFields once nothing refers to its fields any more.
func HeaderFields() *[]hpack.HeaderField { return headerPool.Get().(*[]hpack.HeaderField) }

// PutHeaderFields returns f to the pool, dropping its strings so the pool
// does not keep request data alive.
func PutHeaderFields(f *[]hpack.HeaderField) {
	clear((*f)[:cap(*f)])
	*f = (*f)[:0]
	headerPool.Put(f)
}

// RoundTrip sends req to addr and returns the response head once it
// arrived; the body streams. Refused streams (GOAWAY, REFUSED_STREAM) are
// retried on another connection while the request body was not consumed.
// Errors: *DialError when no connection could be opened, ErrTimeout at the
// deadline, ErrRefused, or the connection's or stream's error.
func (c *Client) RoundTrip(addr string, req *Request) (*Response, error) {
	var small []byte
	var bp *[]byte
	buffered := req.Body == nil || (req.ContentLength >= 0 && req.ContentLength <= maxBufferedBody)
	if req.Body != nil && buffered {
		bp = bodyBufPool.Get().(*[]byte)
		defer bodyBufPool.Put(bp)
		n, err := io.ReadFull(req.Body, (*bp)[:req.ContentLength])
		if err != nil {
			return nil, &bodyError{err}
		}
		small = (*bp)[:n]
	}
	for attempt := 0; ; attempt++ {
		res, err := c.roundTrip(addr, req, small, buffered)
		if err != nil && buffered && attempt < 2 && errors.Is(err, ErrRefused) {
			continue
		}
		return res, err
	}
}

// bodyError is a failure to read the request body: the caller's side.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "h2: read request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// IsBodyError reports whether err came from reading the request body.
func IsBodyError(err error) bool {
	var be *bodyError
	return errors.As(err, &be)
}

func (c *Client) roundTrip(addr string, req *Request, small []byte, buffered bool) (*Response, error) {
	cc, err := c.conn(addr, req.Deadline)
	if err != nil {
		return nil, err
	}
	cs := &clientStream{cc: cc, headers: make(chan struct{})}
	endWithHeaders := buffered && len(small) == 0
	if err := cc.open(cs, req, endWithHeaders); err != nil {
		cc.release(cs)
		return nil, err
	}
	if !req.Deadline.IsZero() {
		cs.timer = time.AfterFunc(time.Until(req.Deadline), func() { cs.abort(&streamError{err: ErrTimeout}) })
	}
	switch {
	case endWithHeaders:
		cs.sent = true
	case buffered:
		err = cc.writeData(&cs.st, small, true, true)
		cs.sent = err == nil
	default:
		err = cs.sendBody(req.Body)
	}
	if err != nil {
		cs.abort(err)
		cs.close()
		return nil, err
	}
	select {
	case <-cs.headers:
	case <-cc.dead:
	}
	if cs.res == nil {
		err := cs.st.failed()
		if err == nil {
			err = cc.deadErr()
		}
		cs.close()
		return nil, err
	}
	return cs.res, nil
}

// conn returns a connection to addr with a stream slot reserved.
func (c *Client) conn(addr string, deadline time.Time) (*clientConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		ac := c.addrs[addr]
		if ac == nil {
			ac = &addrConns{}
			c.addrs[addr] = ac
		}
		var best *clientConn
		for _, cc := range ac.conns {
			if cc.usable() && (best == nil || cc.active < best.active) {
				best = cc
			}
		}
		if best != nil && (best.active == 0 || len(ac.conns) >= c.cfg.ConnsPerAddr || ac.dialing != nil) {
			best.active++
			c.mu.Unlock()
			return best, nil
		}
		if pd := ac.dialing; pd != nil {
			c.mu.Unlock()
			<-pd.done
			if pd.err != nil {
				return nil, pd.err
			}
			continue
		}
		pd := &pendingDial{done: make(chan struct{})}
		ac.dialing = pd
		c.mu.Unlock()

		cc, err := c.dial(addr, deadline)
		c.mu.Lock()
		ac.dialing = nil
		if err == nil {
			if c.closed {
				err = ErrClosed
			} else {
				ac.conns = append(ac.conns, cc)
				cc.active++
			}
		}
		pd.err = err
		close(pd.done)
		c.mu.Unlock()
		if err != nil {
			if cc != nil {
				cc.shutdown(ErrClosed)
			}
			return nil, err
		}
		return cc, nil
	}
}

func (c *Client) dial(addr string, deadline time.Time) (*clientConn, error) {
	dl := time.Now().Add(c.cfg.ConnectTimeout)
	if !deadline.IsZero() && deadline.Before(dl) {
		dl = deadline
	}
	ctx, cancel := context.WithDeadline(context.Background(), dl)
	defer cancel()
	nc, err := c.cfg.Dial(ctx, addr)
	if err != nil {
		return nil, &DialError{Err: err}
	}
	cc := &clientConn{client: c, addr: addr, streams: map[uint32]*clientStream{}, nextID: 1,
		maxStreams: 1000, dead: make(chan struct{}), settings: make(chan struct{})}
	cc.init(nc)
	if err := cc.writePreamble(true, false, 0); err != nil {
		_ = nc.Close()
		return nil, &DialError{Err: err}
	}
	cc.idle = time.AfterFunc(c.cfg.IdleTimeout, cc.closeIfIdle)
	c.readers.Go(cc.readLoop)
	c.readers.Go(func() { cc.runFlusher(cc.dead) })
	// Streams wait for the peer's SETTINGS: until then its concurrency
	// limit is unknown, and a stream beyond it would be refused after its
	// body was sent. A server sends them first thing, so this costs a new
	// connection one round trip at most.
	if err := cc.flushPreamble(); err != nil {
		cc.shutdown(err)
		return nil, &DialError{Err: err}
	}
	select {
	case <-cc.settings:
		return cc, nil
	case <-cc.dead:
		return nil, &DialError{Err: fmt.Errorf("waiting for peer settings: %w", cc.deadErr())}
	case <-ctx.Done():
		cc.shutdown(ctx.Err())
		return nil, &DialError{Err: fmt.Errorf("waiting for peer settings: %w", ctx.Err())}
	}
}

// flushPreamble sends the buffered preface and SETTINGS.
func (cc *clientConn) flushPreamble() error {
	cc.lock()
	return cc.unlock(true)
}

// forget removes cc from the pool.
func (c *Client) forget(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ac := c.addrs[cc.addr]
	if ac == nil {
		return
	}
	for i, x := range ac.conns {
		if x == cc {
			ac.conns = append(ac.conns[:i], ac.conns[i+1:]...)
			break
		}
	}
	if len(ac.conns) == 0 && ac.dialing == nil {
		delete(c.addrs, cc.addr)
	}
}

// CloseIdle closes the connections without streams now and the others
// when their last stream ends; new requests open new connections. It is
// what a configuration change that retires this client calls.
func (c *Client) CloseIdle() {
	c.mu.Lock()
	c.retired = true
	var all []*clientConn
	for _, ac := range c.addrs {
		all = append(all, ac.conns...)
	}
	c.mu.Unlock()
	for _, cc := range all {
		cc.closeIfIdle()
	}
}

// Retain closes the connections to addresses not in keep once idle.
func (c *Client) Retain(keep map[string]struct{}) {
	c.mu.Lock()
	var gone []*clientConn
	for addr, ac := range c.addrs {
		if _, ok := keep[addr]; !ok {
			gone = append(gone, ac.conns...)
		}
	}
	c.mu.Unlock()
	for _, cc := range gone {
		cc.goingAway()
	}
}

// Close closes every connection, failing their streams, and waits for the
// reader goroutines.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	var all []*clientConn
	for _, ac := range c.addrs {
		all = append(all, ac.conns...)
	}
	c.addrs = map[string]*addrConns{}
	c.mu.Unlock()
	for _, cc := range all {
		cc.shutdown(ErrClosed)
	}
	c.readers.Wait()
}

// clientConn is one connection of a Client.
type clientConn struct {
	wire
	client *Client
	addr   string
	idle   *time.Timer

	// mu guards the fields below; Client.mu is taken before it when both
	// are needed (active is guarded by Client.mu).
	mu      sync.Mutex
	streams map[uint32]*clientStream
	nextID  uint32
	// goaway: no new streams (the peer sent GOAWAY, or we retire it).
	goaway bool
	closed bool
	err    error
	// maxStreams is the peer's SETTINGS_MAX_CONCURRENT_STREAMS.
	maxStreams uint32

	// active counts reserved and open streams; guarded by Client.mu.
	active int
	// dead is closed when the reader goroutine ends; settings when the
	// peer's first SETTINGS frame was applied (reader goroutine only).
	dead         chan struct{}
	settings     chan struct{}
	settingsSeen bool
}

// usable reports whether cc takes another stream; Client.mu held.
func (cc *clientConn) usable() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return !cc.goaway && !cc.closed && uint32(cc.active) < cc.maxStreams
}

func (cc *clientConn) deadErr() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return cc.err
	}
	return ErrClosed
}

// open assigns the stream its ID and writes the request's HEADERS, in
// that order under the write lock so that IDs go out increasing.
func (cc *clientConn) open(cs *clientStream, req *Request, end bool) error {
	// The fields only live until they are encoded below.
	hp := HeaderFields()
	defer PutHeaderFields(hp)
	hdr := append((*hp)[:0],
		hpack.HeaderField{Name: ":method", Value: req.Method},
		hpack.HeaderField{Name: ":scheme", Value: "https"},
		hpack.HeaderField{Name: ":authority", Value: req.Authority},
		hpack.HeaderField{Name: ":path", Value: req.Path})
	hdr = append(hdr, req.Header...)
	if req.ContentLength > 0 || (req.ContentLength == 0 && methodWantsLength(req.Method)) {
		hdr = append(hdr, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(req.ContentLength, 10)})
	}

	cc.lock()
	cc.mu.Lock()
	if cc.goaway || cc.closed {
		cc.mu.Unlock()
		_ = cc.unlock(false)
		return &streamError{err: fmt.Errorf("connection going away: %w", ErrRefused)}
	}
	id := cc.nextID
	cc.nextID += 2
	if cc.nextID >= 1<<31 {
		cc.goaway = true
	}
	cc.fmu.Lock()
	cs.st.init(&cc.wire, id, cc.peerInit)
	cc.fmu.Unlock()
	cc.streams[id] = cs
	cc.mu.Unlock()
	cc.writeHeadersLocked(id, hdr, end)
	*hp = hdr
	if end {
		return cc.unlockBatched()
	}
	return cc.unlock(false)
}

// methodWantsLength: a zero length is worth stating for methods that
// usually carry a body.
func methodWantsLength(m string) bool {
	return m == "POST" || m == "PUT" || m == "PATCH"
}

// release returns cs's slot and removes it from the connection.
func (cc *clientConn) release(cs *clientStream) {
	cc.mu.Lock()
	if cs.st.w != nil { // opened
		delete(cc.streams, cs.st.id)
	}
	cc.mu.Unlock()
	c := cc.client
	c.mu.Lock()
	cc.active--
	idle := cc.active == 0
	retired := c.retired
	c.mu.Unlock()
	if idle {
		cc.mu.Lock()
		goaway := cc.goaway
		cc.mu.Unlock()
		if goaway || retired {
			cc.shutdown(ErrClosed)
			return
		}
		cc.idle.Reset(c.cfg.IdleTimeout)
	}
}

// closeIfIdle closes cc when it has no stream, and otherwise stops it
// from taking new ones.
func (cc *clientConn) closeIfIdle() {
	c := cc.client
	c.mu.Lock()
	idle := cc.active == 0
	c.mu.Unlock()
	if idle {
		cc.shutdown(ErrClosed)
		return
	}
	cc.goingAway()
}

// goingAway stops new streams on cc; it closes when the last one ends.
func (cc *clientConn) goingAway() {
	cc.mu.Lock()
	cc.goaway = true
	cc.mu.Unlock()
	c := cc.client
	c.mu.Lock()
	idle := cc.active == 0
	c.mu.Unlock()
	if idle {
		cc.shutdown(ErrClosed)
	}
}

// shutdown closes the connection; the reader goroutine then fails every
// stream and leaves.
func (cc *clientConn) shutdown(err error) {
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
	}
	cc.goaway = true
	cc.mu.Unlock()
	_ = cc.c.Close()
}

// readLoop reads frames until the connection fails, dispatching them to
// streams.
func (cc *clientConn) readLoop() {
	err := cc.readFrames()
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
	}
	cc.closed = true
	cc.goaway = true
	streams := cc.streams
	cc.streams = map[uint32]*clientStream{}
	cerr := cc.err
	cc.mu.Unlock()
	cc.idle.Stop()
	_ = cc.c.Close()
	cc.die(cerr)
	for _, cs := range streams {
		cs.st.connDied(&streamError{err: fmt.Errorf("%w: %w", ErrClosed, cerr)})
	}
	close(cc.dead)
	cc.client.forget(cc)
}

func (cc *clientConn) readFrames() error {
	for {
		f, hb, err := cc.readFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if cs := cc.stream(se.StreamID); cs != nil {
					cs.st.fail(resetError(se.Code))
					cc.writeRST(se.StreamID, se.Code)
				}
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				cc.goAway(0, http2.ErrCode(ce))
			}
			return err
		}
		if hb != nil {
			cc.onHeaders(hb)
			continue
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			cs := cc.stream(f.StreamID)
			flow := int64(f.Length)
			if err := cc.takeConnWindow(flow); err != nil {
				return err
			}
			if cs == nil {
				cc.consumed(flow)
				continue
			}
			if err := cs.st.deliver(f.Data(), flow, f.StreamEnded()); err != nil {
				cs.st.fail(err)
				cc.writeRST(f.StreamID, http2.ErrCodeFlowControl)
			}
		case *http2.SettingsFrame:
			err := cc.applySettings(f, cc.openStreams, func(n uint32) {
				cc.mu.Lock()
				cc.maxStreams = n
				cc.mu.Unlock()
			})
			if err != nil {
				return err
			}
			if !cc.settingsSeen && !f.IsAck() {
				cc.settingsSeen = true
				close(cc.settings)
			}
		case *http2.WindowUpdateFrame:
			var st *stream
			if f.StreamID != 0 {
				cs := cc.stream(f.StreamID)
				if cs == nil {
					continue
				}
				st = &cs.st
			}
			if err := cc.applyWindowUpdate(st, f.Increment); err != nil {
				return err
			}
		case *http2.RSTStreamFrame:
			if cs := cc.stream(f.StreamID); cs != nil {
				cs.st.fail(resetError(f.ErrCode))
				cs.signalHeaders()
			}
		case *http2.PingFrame:
			cc.ping(f)
		case *http2.GoAwayFrame:
			cc.onGoAway(f)
		case *http2.PushPromiseFrame:
			cc.goAway(0, http2.ErrCodeProtocol)
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
	}
}

// takeConnWindow accounts a DATA frame against the connection window.
func (cc *clientConn) takeConnWindow(n int64) error {
	if cc.recvWin.Add(-n) < 0 {
		cc.goAway(0, http2.ErrCodeFlowControl)
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	return nil
}

func (cc *clientConn) stream(id uint32) *clientStream {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.streams[id]
}

// openStreams lists the open streams.
func (cc *clientConn) openStreams() []*stream {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	list := make([]*stream, 0, len(cc.streams))
	for _, cs := range cc.streams {
		list = append(list, &cs.st)
	}
	return list
}

func (cc *clientConn) onHeaders(f *headerBlock) {
	cs := cc.stream(f.streamID)
	if cs == nil {
		return
	}
	if cs.res != nil {
		// Trailers: read and dropped (HTTP/1.1 downstream).
		if f.ended {
			cs.st.endStream()
		}
		return
	}
	status, err := strconv.Atoi(f.pseudo(":status"))
	if err != nil || status < 100 || status > 999 {
		cs.st.fail(&streamError{code: http2.ErrCodeProtocol, err: errors.New("h2: malformed response status")})
		cc.writeRST(f.streamID, http2.ErrCodeProtocol)
		cs.signalHeaders()
		return
	}
	if status < 200 {
		return // informational: not relayed
	}
	res := &Response{Status: status, Header: f.regular(), ContentLength: -1, cs: cs}
	for _, h := range res.Header {
		if h.Name == "content-length" {
			if n, err := strconv.ParseInt(h.Value, 10, 64); err == nil && n >= 0 {
				res.ContentLength = n
			}
		}
	}
	cs.res = res
	if f.ended {
		cs.st.endStream()
	}
	cs.signalHeaders()
}

func (cc *clientConn) onGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	cc.goaway = true
	var refused []*clientStream
	for id, cs := range cc.streams {
		if id > f.LastStreamID {
			refused = append(refused, cs)
		}
	}
	cc.mu.Unlock()
	for _, cs := range refused {
		cs.st.fail(&streamError{code: f.ErrCode, err: fmt.Errorf("peer going away: %w", ErrRefused)})
		cs.signalHeaders()
	}
	c := cc.client
	c.mu.Lock()
	idle := cc.active == 0
	c.mu.Unlock()
	if idle {
		cc.shutdown(ErrClosed)
	}
}

// clientStream is a request in flight.
type clientStream struct {
	cc *clientConn
	// st is set up by open, under the connection's locks; a part of
	// clientStream to save an allocation per request.
	st stream
	// headers is closed once res is set or the stream failed.
	headers     chan struct{}
	headersOnce sync.Once
	res         *Response
	timer       *time.Timer
	// sent: the request's END_STREAM went out.
	sent   bool
	closed bool
}

func (cs *clientStream) signalHeaders() {
	cs.headersOnce.Do(func() { close(cs.headers) })
}

// abort fails the stream with err and resets it on the wire.
func (cs *clientStream) abort(err error) {
	if cs.st.fail(err) {
		cs.cc.writeRST(cs.st.id, http2.ErrCodeCancel)
	}
	cs.signalHeaders()
}

// sendBody streams body as DATA, ending the stream at EOF.
func (cs *clientStream) sendBody(body io.Reader) error {
	bp := bodyBufPool.Get().(*[]byte)
	defer bodyBufPool.Put(bp)
	buf := *bp
	for {
		n, err := body.Read(buf)
		if err != nil && err != io.EOF {
			return &bodyError{err}
		}
		end := err == io.EOF
		if n > 0 || end {
			if werr := cs.cc.writeData(&cs.st, buf[:n], end, true); werr != nil {
				return werr
			}
		}
		if end {
			cs.sent = true
			return nil
		}
	}
}

// close ends the stream: reset when either side is unfinished.
func (cs *clientStream) close() {
	if cs.closed {
		return
	}
	cs.closed = true
	if cs.timer != nil {
		cs.timer.Stop()
	}
	if !cs.sent || !cs.st.allRead() {
		if cs.st.fail(&streamError{err: ErrClosed}) {
			cs.cc.writeRST(cs.st.id, http2.ErrCodeCancel)
		}
	}
	cs.cc.release(cs)
}

// Read reads the response body; it returns io.EOF at its end (possibly
// with the last bytes).
func (r *Response) Read(p []byte) (int, error) { return r.cs.st.read(p, nil) }

// ReadFlushing is Read that calls beforeWait before it blocks for data,
// so that a relay flushes what it wrote downstream first.
func (r *Response) ReadFlushing(p []byte, beforeWait func()) (int, error) {
	return r.cs.st.read(p, beforeWait)
}

// Close releases the stream, resetting it when the body was not read to
// its end. It must be called once, after the last Read.
func (r *Response) Close() { r.cs.close() }
