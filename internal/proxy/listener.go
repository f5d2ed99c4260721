package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
)

// httpListener serves one ListenerHTTP. Its accept loop sniffs each
// connection: HTTP/1.1 goes to the h1 fast path when the route table only
// reaches HTTP/1.1 clusters; everything else goes to net/http: HTTP/1.1,
// HTTP/2 with prior knowledge (http.Server.Protocols) and the HTTP/1.1
// "Upgrade: h2c" path, which net/http does not implement and which
// maybeUpgradeH2C handles with x/net's HTTP/2 server.
type httpListener struct {
	p   *Proxy
	ln  net.Listener
	cfg atomic.Pointer[config.Listener]
	// port is the bound port, the destination port authorization sees.
	port uint32
	// tls serves the listener's mutual TLS when its config has a TLS
	// context: such connections are sniffed first (a TLS record or, in
	// permissive mode, plaintext), and TLS ones go to net/http, which
	// serves HTTP/2 on them when "h2" was negotiated.
	tls downstreamTLS

	// netMu guards the net/http side: nh is built by the first connection
	// that needs it, and never once draining is set. A mesh with many
	// outbound listeners mostly serves HTTP/1.1 through the h1 engine, so
	// an idle listener is spared an http.Server, an HTTP/2 server and the
	// goroutine serving them. nhWG tracks that goroutine.
	netMu    sync.Mutex
	nh       *netHTTP
	draining bool
	nhWG     sync.WaitGroup
	// Upgraded connections are hijacked away from nh.srv, so its Shutdown
	// neither waits for nor closes them; these track them instead (upgraded
	// is guarded by netMu).
	upgraded   map[net.Conn]struct{}
	upgradedWG sync.WaitGroup

	// accepted is closed when serve returns, so drain knows no connection
	// joins conns any more.
	accepted chan struct{}
	conns    sync.WaitGroup // connections owned by the accept loop
	// connsMu guards live, h1Conns, bridgeConns and netConns.
	connsMu sync.Mutex
	live    map[net.Conn]struct{} // nil once drain has given up waiting
	// h1Conns holds the cancels of the connections the h1 engine serves.
	// They are cancelled (so they finish their exchange and close) when the
	// listener's route table stops being HTTP/1.1-only, so that their
	// clients reconnect and get net/http, or when their peer may no
	// longer be served (enforce).
	h1Conns map[net.Conn]servedConn
	// bridgeConns does the same for the connections the HTTP/2 bridge
	// serves, cancelled when the table stops being one it can serve.
	bridgeConns map[net.Conn]servedConn
	// netConns are the connections handed to net/http, by the conn it
	// serves, so that enforce can close them once idle (trackNet).
	netConns map[net.Conn]*netConn
	// inbound: the listener takes calls to the workload (its name never
	// changes, and with it the side).
	inbound bool
}

// servedConn is a connection the h1 engine or the bridge serves: cancel
// drains it.
type servedConn struct {
	cancel context.CancelFunc
	peer   downstreamPeer
}

// netConn is a connection net/http serves. net/http cannot close one
// connection gracefully, so a connection to close is closed at its next
// idle state (no request in flight; no stream, for HTTP/2).
type netConn struct {
	peer downstreamPeer
	// raw is the socket: closing it never blocks, unlike a TLS close.
	raw     net.Conn
	idle    bool
	closing bool
}

// netHTTP is the net/http side of an httpListener.
type netHTTP struct {
	srv *http.Server
	// h2srv serves connections upgraded from HTTP/1.1 (h2c). h2shadow is
	// never served: it exists so that h2srv registers its graceful shutdown
	// (GOAWAY) hook on it, which h2shadow.Shutdown then fires.
	h2srv    *http2.Server
	h2shadow *http.Server
	// handoff feeds srv the connections the accept loop does not give to
	// the h1 engine.
	handoff *handoffListener
}

// Timeouts of HTTP listeners, shared by the h1 engine and net/http.
const (
	listenerReadHeaderTimeout = 30 * time.Second
	listenerIdleTimeout       = 5 * time.Minute
)

func (p *Proxy) newHTTPListener(ln net.Listener, cl *config.Listener) *httpListener {
	l := &httpListener{p: p, ln: ln, port: addrPort(ln.Addr()), accepted: make(chan struct{}),
		live: map[net.Conn]struct{}{}, h1Conns: map[net.Conn]servedConn{},
		bridgeConns: map[net.Conn]servedConn{}, netConns: map[net.Conn]*netConn{},
		inbound: strings.HasPrefix(cl.Name, "inbound:")}
	l.cfg.Store(cl)
	l.tls.update(p, cl)
	return l
}

// netHTTP returns the listener's net/http side, starting it on first use,
// or nil once the listener is draining.
func (l *httpListener) netHTTP() *netHTTP {
	l.netMu.Lock()
	defer l.netMu.Unlock()
	if l.draining {
		return nil
	}
	if l.nh != nil {
		return l.nh
	}
	cl := l.cfg.Load()
	errLog := slog.NewLogLogger(l.p.log.With("listener", cl.Name).Handler(), slog.LevelDebug)
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	// HTTP/2 over the TLS connections the accept loop completed the
	// handshake of: srv sees a *tls.Conn that negotiated "h2".
	protos.SetHTTP2(true)
	nh := &netHTTP{
		srv: &http.Server{
			Handler:           listenerHandler{p: l.p, l: l},
			Protocols:         protos,
			ConnContext:       connContext,
			ConnState:         l.netConnState,
			ReadHeaderTimeout: listenerReadHeaderTimeout,
			IdleTimeout:       listenerIdleTimeout,
			ErrorLog:          errLog,
			HTTP2: &http.HTTP2Config{
				MaxConcurrentStreams:          1000,
				MaxReceiveBufferPerConnection: 4 << 20,
				MaxReceiveBufferPerStream:     1 << 20,
			},
		},
		h2srv: &http2.Server{
			MaxConcurrentStreams:         1000,
			MaxUploadBufferPerConnection: 4 << 20,
			MaxUploadBufferPerStream:     1 << 20,
			IdleTimeout:                  listenerIdleTimeout,
		},
		h2shadow: &http.Server{ErrorLog: errLog},
		handoff:  newHandoffListener(l.ln.Addr()),
	}
	// ConfigureServer only errors on TLS cipher settings, which are unset.
	_ = http2.ConfigureServer(nh.h2shadow, nh.h2srv)
	l.nh = nh
	l.upgraded = map[net.Conn]struct{}{}
	l.nhWG.Go(func() {
		err := nh.srv.Serve(nh.handoff)
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.p.log.Error("listener stopped", "listener", l.cfg.Load().Name, "error", err)
		}
	})
	return nh
}

func (l *httpListener) setConfig(cl *config.Listener) {
	l.cfg.Store(cl)
	l.tls.update(l.p, cl)
	if !l.h1Eligible() {
		l.connsMu.Lock()
		for c, sc := range l.h1Conns {
			sc.cancel()
			delete(l.h1Conns, c)
		}
		l.connsMu.Unlock()
	}
	if !l.bridgeIn() {
		// Cancelling a bridge connection drains it with GOAWAY; the peer's
		// next connection gets net/http.
		l.connsMu.Lock()
		for c, sc := range l.bridgeConns {
			sc.cancel()
			delete(l.bridgeConns, c)
		}
		l.connsMu.Unlock()
	}
}

func (l *httpListener) addr() net.Addr { return l.ln.Addr() }

// h1Eligible reports whether new HTTP/1.1 connections may go to the h1
// engine: enabled, and every cluster the route table reaches speaks
// HTTP/1.1 (a missing table only yields 404s, which h1 answers too).
func (l *httpListener) h1Eligible() bool {
	if l.p.cfg.DisableH1FastPath || l.p.h1Pool == nil {
		return false
	}
	st := l.p.state.Load()
	rt := st.routes[l.cfg.Load().RouteName]
	return rt == nil || (rt.h1Only && (!rt.tlsEndpoints || l.p.bridgeOut()))
}

// serve runs the accept loop, which sends each connection either to the h1
// engine or to net/http.
func (l *httpListener) serve(ctx context.Context) {
	defer close(l.accepted)
	acceptLoop(ctx, l.ln, l.p.log, func() string { return l.cfg.Load().Name }, func(c net.Conn) bool {
		if !l.track(c) {
			_ = c.Close()
			return false
		}
		l.conns.Go(func() { l.dispatch(ctx, c) })
		return true
	})
}

// acceptLoop accepts on ln until it is closed, ctx ends or handle returns
// false. Temporary failures (out of file descriptors and the like) back off
// from 5 ms to 1 s, as net/http does. HTTP and TCP listeners share it.
func acceptLoop(ctx context.Context, ln net.Listener, log *slog.Logger, name func() string, handle func(net.Conn) bool) {
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
			log.Warn("accept failed", "listener", name(), "error", err)
			t := time.NewTimer(tempDelay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		tempDelay = 0
		if !handle(c) {
			return
		}
	}
}

func (l *httpListener) track(c net.Conn) bool {
	l.connsMu.Lock()
	defer l.connsMu.Unlock()
	if l.live == nil {
		return false
	}
	l.live[c] = struct{}{}
	return true
}

func (l *httpListener) untrack(c net.Conn) {
	l.connsMu.Lock()
	defer l.connsMu.Unlock()
	delete(l.live, c)
}

// h2Preface starts every HTTP/2 prior-knowledge connection; no HTTP/1.1
// request line starts with it, and every valid one is longer.
const h2Preface = "PRI *"

// aLongTimeAgo is a past deadline: setting it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// dispatch sniffs the first bytes of c: an HTTP/2 preface, or any
// connection while the route table needs net/http, goes to srv; other
// HTTP/1.1 connections are served by the h1 engine, which hands back
// upgrade requests (h2c, WebSocket) through OnUpgrade.
//
// ctx ends when the listener starts draining: a connection still being
// sniffed is closed, and one served by h1 finishes its exchange and closes.
func (l *httpListener) dispatch(ctx context.Context, c net.Conn) {
	// raw is the accepted connection, as tracked; c may become a view of
	// it that replays sniffed bytes.
	raw := c
	tracked := true
	defer func() {
		if tracked {
			l.untrack(raw)
		}
	}()
	var peer downstreamPeer
	if cl := l.cfg.Load(); tlsMode(cl) != config.TLSDisabled {
		var sc net.Conn
		sc, peer = l.p.acceptTLS(ctx, c, cl, &l.tls)
		switch {
		case sc == nil:
			return
		case peer.tls && l.bridgeIn() && sc.(*tls.Conn).ConnectionState().NegotiatedProtocol == "h2":
			l.dispatchBridge(ctx, raw, sc, peer)
			return
		case peer.tls:
			tracked = false
			l.untrack(raw)
			l.toNetHTTP(sc, raw, peer)
			return
		}
		// Permissive plaintext: today's path, with the sniffed byte.
		c = sc
	}
	if !l.h1Eligible() {
		tracked = false
		l.untrack(raw)
		l.toNetHTTP(c, raw, peer)
		return
	}
	br := bufio.NewReaderSize(c, 4<<10)
	// Wait for the first bytes, but not forever and not past a drain.
	_ = c.SetReadDeadline(time.Now().Add(listenerReadHeaderTimeout))
	stopWatch := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(aLongTimeAgo) })
	head, err := br.Peek(len(h2Preface))
	if !stopWatch() || err != nil {
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	// Registered before the last eligibility check, so that a setConfig
	// that makes the table need net/http either is seen by that check or
	// cancels this connection.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l.connsMu.Lock()
	l.h1Conns[raw] = servedConn{cancel: cancel, peer: peer}
	l.connsMu.Unlock()
	defer func() {
		l.connsMu.Lock()
		delete(l.h1Conns, raw)
		l.connsMu.Unlock()
	}()
	if string(head) == h2Preface || !l.h1Eligible() {
		tracked = false
		l.untrack(raw)
		l.toNetHTTP(&bufferedConn{Conn: c, r: br}, raw, peer)
		return
	}
	if l.p.mustClose(l.cfg.Load(), peer) {
		// The listener's mode changed since the sniff and its enforce
		// may have missed the registration above.
		cancel()
	}
	var upgraded net.Conn
	opts := h1.Options{
		IdleTimeout: listenerIdleTimeout,
		OnUpgrade: func(c net.Conn, buffered []byte) {
			upgraded = &prefixConn{Conn: c, prefix: buffered}
		},
	}
	err = h1.Serve(hctx, c, br, h1Router{p: l.p, l: l, src: remoteIP(raw)}, l.p.h1Pool, opts)
	if upgraded != nil {
		tracked = false
		l.untrack(raw)
		l.toNetHTTP(upgraded, raw, peer)
		return
	}
	if err != nil && l.p.log.Enabled(ctx, slog.LevelDebug) {
		l.p.log.Debug("h1 connection ended", "listener", l.cfg.Load().Name, "error", err)
	}
}

// dispatchBridge serves a TLS connection with the HTTP/2 bridge. It stays
// tracked (drain closes it past the deadline) and is registered in
// bridgeConns, so that a table the bridge cannot serve drains it.
func (l *httpListener) dispatchBridge(ctx context.Context, raw, tc net.Conn, peer downstreamPeer) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l.connsMu.Lock()
	l.bridgeConns[raw] = servedConn{cancel: cancel, peer: peer}
	l.connsMu.Unlock()
	defer func() {
		l.connsMu.Lock()
		delete(l.bridgeConns, raw)
		l.connsMu.Unlock()
	}()
	if !l.bridgeIn() || l.p.mustClose(l.cfg.Load(), peer) {
		// The table or the revoked set changed since the check; the
		// registration above makes any later change cancel hctx.
		cancel()
	}
	l.serveBridge(hctx, tc, remoteIP(raw), peer.principal)
}

// toNetHTTP gives c, accepted as raw from peer, to net/http, or closes it
// when the listener is draining.
func (l *httpListener) toNetHTTP(c, raw net.Conn, peer downstreamPeer) {
	nh := l.netHTTP()
	if nh == nil {
		_ = c.Close()
		return
	}
	l.connsMu.Lock()
	// Registered before the hand-off so that net/http's first state
	// change finds it; closing is decided now for the same reason as in
	// dispatchBridge.
	l.netConns[c] = &netConn{peer: peer, raw: raw, closing: l.p.mustClose(l.cfg.Load(), peer)}
	l.connsMu.Unlock()
	if !nh.handoff.push(c) {
		l.connsMu.Lock()
		delete(l.netConns, c)
		l.connsMu.Unlock()
		_ = c.Close()
	}
}

// netConnState is net/http's ConnState hook: it keeps netConns and closes
// a connection marked closing once it is idle. A hijacked connection (an
// h2c upgrade) leaves netConns: it is plaintext, and enforce closes every
// upgraded connection.
func (l *httpListener) netConnState(c net.Conn, state http.ConnState) {
	l.connsMu.Lock()
	nc := l.netConns[c]
	if nc == nil {
		l.connsMu.Unlock()
		return
	}
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(l.netConns, c)
		nc = nil
	case http.StateNew, http.StateIdle:
		nc.idle = true
	default:
		nc.idle = false
	}
	closeNow := nc != nil && nc.idle && nc.closing
	l.connsMu.Unlock()
	if closeNow {
		_ = nc.raw.Close()
	}
}

// enforce closes, gracefully, the connections that l's current config or
// the revoked set no longer allow (revoke.go). It runs on Run's goroutine
// after setConfig.
func (l *httpListener) enforce() {
	cl := l.cfg.Load()
	if !l.p.enforcing(cl) {
		return
	}
	var closeNow []net.Conn
	strictUpgraded := false
	l.connsMu.Lock()
	for c, sc := range l.h1Conns {
		if l.p.mustClose(cl, sc.peer) {
			sc.cancel()
			delete(l.h1Conns, c)
		}
	}
	for c, sc := range l.bridgeConns {
		if l.p.mustClose(cl, sc.peer) {
			sc.cancel()
			delete(l.bridgeConns, c)
		}
	}
	for _, nc := range l.netConns {
		if !nc.closing && l.p.mustClose(cl, nc.peer) {
			nc.closing = true
			if nc.idle {
				closeNow = append(closeNow, nc.raw)
			}
		}
	}
	l.connsMu.Unlock()
	if tlsMode(cl) == config.TLSStrict {
		l.netMu.Lock()
		strictUpgraded = l.nh != nil && len(l.upgraded) > 0
		nh := l.nh
		l.netMu.Unlock()
		if strictUpgraded {
			// Upgraded (h2c) connections are all plaintext. h2shadow's
			// shutdown hook sends them GOAWAY; they close after their
			// streams. It returns at once: h2shadow serves nothing.
			_ = nh.h2shadow.Shutdown(context.Background())
		}
	}
	for _, c := range closeNow {
		_ = c.Close()
	}
}

// closeSocket stops accepting; from now on no net/http side is started.
func (l *httpListener) closeSocket() {
	l.netMu.Lock()
	l.draining = true
	l.netMu.Unlock()
	_ = l.ln.Close()
}

func (l *httpListener) drain(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The accept loop ends promptly once the socket is closed; after it, no
	// connection joins conns.
	<-l.accepted
	l.netMu.Lock()
	nh := l.nh
	l.netMu.Unlock()

	var wg sync.WaitGroup
	if nh != nil {
		wg.Go(func() {
			// Shutdown closes the handoff listener, sends GOAWAY on HTTP/2
			// connections and waits for idle; past the deadline, Close cuts
			// the rest.
			if err := nh.srv.Shutdown(ctx); err != nil {
				_ = nh.srv.Close()
			}
		})
		wg.Go(func() {
			_ = nh.h2shadow.Shutdown(ctx) // starts GOAWAY on upgraded conns
			waitOrClose(ctx, &l.upgradedWG, &l.netMu, func() {
				for c := range l.upgraded {
					_ = c.Close()
				}
			})
		})
	}
	wg.Go(func() {
		waitOrClose(ctx, &l.conns, &l.connsMu, func() {
			for c := range l.live {
				_ = c.Close()
			}
			l.live = nil
		})
	})
	wg.Wait()
	l.nhWG.Wait()
}

// waitOrClose waits for wg; if ctx ends first it runs closeAll under mu and
// waits again, which then returns promptly.
func waitOrClose(ctx context.Context, wg *sync.WaitGroup, mu *sync.Mutex, closeAll func()) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		mu.Lock()
		closeAll()
		mu.Unlock()
		<-done
	}
}

// maybeUpgradeH2C takes over an HTTP/1.1 request carrying "Upgrade: h2c"
// (RFC 7540 3.2) and serves the connection as HTTP/2 from then on, with the
// upgrade request as stream 1. It reports whether it took the request.
//
// x/net's h2c package did this but is deprecated in favour of net/http's
// Protocols, which only supports prior knowledge; so the upgrade is done here.
// Requests with a body are answered over HTTP/1.1 instead (the RFC lets a
// server ignore Upgrade), which spares buffering the body in memory.
func (l *httpListener) maybeUpgradeH2C(w http.ResponseWriter, r *http.Request, h http.Handler) bool {
	if r.ProtoMajor != 1 || r.ContentLength != 0 ||
		!httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "h2c") ||
		!httpguts.HeaderValuesContainsToken(r.Header["Connection"], "HTTP2-Settings") ||
		len(r.Header["Http2-Settings"]) != 1 {
		return false
	}
	settings, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(r.Header.Get("Http2-Settings"), "="))
	if err != nil {
		return false
	}
	l.netMu.Lock()
	nh := l.nh
	if l.draining || nh == nil {
		l.netMu.Unlock()
		return false
	}
	l.upgradedWG.Add(1)
	l.netMu.Unlock()
	defer l.upgradedWG.Done()

	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	if _, err := rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"); err != nil {
		_ = conn.Close()
		return true
	}
	if err := rw.Flush(); err != nil {
		_ = conn.Close()
		return true
	}
	l.netMu.Lock()
	l.upgraded[conn] = struct{}{}
	l.netMu.Unlock()
	defer func() {
		l.netMu.Lock()
		delete(l.upgraded, conn)
		l.netMu.Unlock()
		_ = conn.Close()
	}()

	for _, k := range []string{"Upgrade", "Connection", "Http2-Settings"} {
		r.Header.Del(k)
	}
	r.Body = http.NoBody
	// The client may already have sent its preface; it sits in rw.Reader.
	c := &bufferedConn{Conn: conn, r: rw.Reader}
	nh.h2srv.ServeConn(c, &http2.ServeConnOpts{
		Context:        context.WithoutCancel(r.Context()),
		BaseConfig:     nh.h2shadow,
		Handler:        h,
		UpgradeRequest: r,
		Settings:       settings,
	})
	return true
}

// bufferedConn reads what the HTTP/1.1 server buffered before the hijack.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection underneath, so that a TCP proxy
// or a lingering close still can.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// prefixConn replays bytes the h1 engine read before handing c back.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// handoffListener is the net.Listener srv serves: the accept loop pushes the
// connections net/http should handle.
type handoffListener struct {
	address net.Addr
	ch      chan net.Conn
	done    chan struct{}
	once    sync.Once
}

func newHandoffListener(a net.Addr) *handoffListener {
	return &handoffListener{address: a, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoffListener) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoffListener) Addr() net.Addr { return h.address }

// push hands c to whoever Accepts; false means the listener is closed.
func (h *handoffListener) push(c net.Conn) bool {
	select {
	case h.ch <- c:
		return true
	case <-h.done:
		return false
	}
}
