package proxy

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/observe"
	"verge.dev/verge/internal/proxy/ratelimit"
	"verge.dev/verge/internal/proxy/resilience"
)

// tcpListener proxies each accepted connection to an endpoint of its
// cluster.
type tcpListener struct {
	p   *Proxy
	ln  net.Listener
	cfg atomic.Pointer[config.Listener]
	// port is the bound port, the destination port authorization sees.
	port uint32
	// tls serves the listener's mutual TLS (ALPN "verge-tcp" between
	// proxies) when its config has a TLS context.
	tls downstreamTLS
	// bw is the listener's bandwidth limit, shared by its connections;
	// nil when it has none.
	bw atomic.Pointer[tcpBandwidth]

	// accepted is closed when serve returns.
	accepted chan struct{}
	mu       sync.Mutex
	// conns holds the downstream connections, with the cancel of their
	// context (which bounds the dial), and the upstream ones (nil cancel);
	// all are cut at the drain deadline, after which conns is nil.
	conns map[net.Conn]tcpConn
	wg    sync.WaitGroup
}

// tcpConn is a tracked connection of a TCP listener.
type tcpConn struct {
	cancel context.CancelFunc
	// peer is set once a downstream connection's peer is known; enforce
	// closes the connection when it may no longer be served.
	peer *downstreamPeer
}

func (p *Proxy) newTCPListener(ln net.Listener, cl *config.Listener) *tcpListener {
	l := &tcpListener{p: p, ln: ln, port: addrPort(ln.Addr()), accepted: make(chan struct{}), conns: map[net.Conn]tcpConn{}}
	l.cfg.Store(cl)
	l.tls.update(p, cl)
	l.updateBandwidth(cl)
	return l
}

func (l *tcpListener) setConfig(cl *config.Listener) {
	l.cfg.Store(cl)
	l.tls.update(l.p, cl)
	l.updateBandwidth(cl)
}

// tcpBandwidth is a TCP listener's byte-rate limit: one bucket per
// direction, each shared by every connection of the listener (Envoy's
// tcp_bandwidth_limit has a read and a write limit per filter chain).
type tcpBandwidth struct {
	rate int64
	// up limits downstream-to-upstream bytes, down the answers.
	up, down *ratelimit.Bucket
}

// bandwidthFillInterval is Envoy's tcp_bandwidth_limit fill interval: the
// buckets hold this long's worth of bytes, the burst a connection may send
// at once.
const bandwidthFillInterval = 50 * time.Millisecond

// updateBandwidth applies cl's limit; an unchanged rate keeps the buckets
// (and the debt of connections waiting on them).
func (l *tcpListener) updateBandwidth(cl *config.Listener) {
	var rate int64
	if cl.Traffic != nil {
		rate = cl.Traffic.BandwidthBytesPerSecond
	}
	if old := l.bw.Load(); (old == nil && rate <= 0) || (old != nil && old.rate == rate) {
		return
	}
	if rate <= 0 {
		l.bw.Store(nil)
		return
	}
	bc := ratelimit.BucketConfig{
		Rate:  float64(rate),
		Burst: int(max(1, min(rate*int64(bandwidthFillInterval)/int64(time.Second), 1<<30))),
	}
	up, err := ratelimit.NewBucket(bc)
	if err == nil {
		var down *ratelimit.Bucket
		if down, err = ratelimit.NewBucket(bc); err == nil {
			l.bw.Store(&tcpBandwidth{rate: rate, up: up, down: down})
			return
		}
	}
	// Out of the bucket's range (above 1 GB/s): serve unlimited rather
	// than refuse the listener.
	l.p.log.Warn("tcp bandwidth limit not applied", "listener", cl.Name, "bytes_per_second", rate, "error", err)
	l.bw.Store(nil)
}
func (l *tcpListener) addr() net.Addr { return l.ln.Addr() }
func (l *tcpListener) closeSocket()   { _ = l.ln.Close() }

func (l *tcpListener) serve(ctx context.Context) {
	defer close(l.accepted)
	acceptLoop(ctx, l.ln, l.p.log, func() string { return l.cfg.Load().Name }, func(c net.Conn) bool {
		// A drain lets connections finish: only its deadline, through
		// cancel, ends their context.
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		if !l.track(c, cancel) {
			cancel()
			_ = c.Close()
			return false
		}
		l.wg.Go(func() {
			defer cancel()
			l.handle(cctx, c)
		})
		return true
	})
}

// track registers c for the drain deadline; false means the listener is
// already past its deadline.
func (l *tcpListener) track(c net.Conn, cancel context.CancelFunc) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[c] = tcpConn{cancel: cancel}
	return true
}

// identify records the peer of the downstream connection c. It reports
// false when the connection may not be served any more: the listener's
// mode or the revoked set changed since the handshake, and enforce may
// have run before the peer was known.
func (l *tcpListener) identify(c net.Conn, peer downstreamPeer) bool {
	l.mu.Lock()
	if tc, ok := l.conns[c]; ok {
		tc.peer = &peer
		l.conns[c] = tc
	}
	l.mu.Unlock()
	return !l.p.mustClose(l.cfg.Load(), peer)
}

// enforce closes the connections whose peer l's current config or the
// revoked set no longer allow (revoke.go); a byte stream has no graceful
// end the proxy could choose, so they are cut. It runs on Run's
// goroutine after setConfig.
func (l *tcpListener) enforce() {
	cl := l.cfg.Load()
	if !l.p.enforcing(cl) {
		return
	}
	var cut []net.Conn
	l.mu.Lock()
	for c, tc := range l.conns {
		if tc.peer != nil && l.p.mustClose(cl, *tc.peer) {
			tc.cancel()
			cut = append(cut, c)
		}
	}
	l.mu.Unlock()
	for _, c := range cut {
		// The socket: its handler sees the failure, closes the upstream
		// side and untracks both.
		_ = c.Close()
	}
}

func (l *tcpListener) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

func (l *tcpListener) drain(timeout time.Duration) {
	<-l.accepted
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		l.mu.Lock()
		for c, tc := range l.conns {
			if tc.cancel != nil {
				tc.cancel()
			}
			_ = c.Close()
		}
		l.conns = nil
		l.mu.Unlock()
		<-done
	}
}

func (l *tcpListener) handle(ctx context.Context, down net.Conn) {
	defer l.untrack(down)
	defer down.Close()
	lcfg := l.cfg.Load()
	stat := statName(lcfg)
	m := l.p.metrics
	var obs *tcpObs
	var sentBytes, receivedBytes int64
	// raw stays the socket the drain and the idle timer cut; down may
	// become the TLS connection over it.
	raw := down
	principal := ""
	if tlsMode(lcfg) != config.TLSDisabled {
		sc, peer := l.p.acceptTLS(ctx, down, lcfg, &l.tls)
		if sc == nil {
			return
		}
		down, principal = sc, peer.principal
		// Closes the TLS connection too (close_notify), then raw again,
		// which is harmless.
		defer down.Close()
		if !l.identify(raw, peer) {
			return
		}
	}
	if lt := l.p.state.Load().tel[lcfg.Name]; lt != nil && (!lt.metricsOff || lt.log != nil) {
		to := &tcpObs{p: l.p, lt: lt, start: time.Now(), principal: principal, failed: true}
		defer to.done()
		defer func() { to.sent, to.received = sentBytes, receivedBytes }()
		obs = to
	}
	if lcfg.Authz != nil && !l.p.authorizeConn(lcfg, principal, remoteIP(raw), l.port) {
		l.p.log.Debug("tcp connection denied", "listener", stat, "principal", principal)
		m.tcpConns.WithLabelValues(stat, lcfg.Cluster, "denied").Inc()
		return
	}
	active := m.tcpActive.WithLabelValues(stat)
	active.Inc()
	defer active.Dec()

	cl := l.p.state.Load().clusters[lcfg.Cluster]
	if cl == nil {
		l.p.log.Debug("tcp connection refused", "listener", stat, "cluster", lcfg.Cluster, "reason", "no cluster")
		m.tcpConns.WithLabelValues(stat, lcfg.Cluster, "no_endpoint").Inc()
		return
	}
	// The breaker's connection cap counts downstream connections being
	// proxied, as Envoy's max_connections does for tcp_proxy's upstream
	// connections (one each). A refused connection is closed at once.
	g := cl.guard
	if !g.admitConn() {
		l.p.log.Debug("tcp connection refused", "listener", stat, "cluster", cl.name, "reason", "overflow")
		m.tcpConns.WithLabelValues(stat, cl.name, "overflow").Inc()
		return
	}
	defer g.connDone()
	ep := cl.bal.Pick()
	if ep == nil {
		m.tcpConns.WithLabelValues(stat, cl.name, "no_endpoint").Inc()
		return
	}
	defer ep.Done()
	if obs != nil {
		obs.cl, obs.addr = cl, ep.Address
	}
	up, upRaw, err := l.dialUpstream(ctx, cl, ep.Address)
	if err != nil {
		l.p.log.Debug("tcp upstream connect failed", "listener", stat, "cluster", cl.name, "endpoint", ep.Address, "error", err)
		m.tcpConns.WithLabelValues(stat, cl.name, "connect_failed").Inc()
		if ctx.Err() == nil {
			g.observe(ep.Address, resilience.ResultLocalFailure)
		}
		return
	}
	g.observe(ep.Address, resilience.ResultSuccess)
	if obs != nil {
		obs.connected(cl, ep.Address)
	}
	if !l.track(upRaw, nil) {
		_ = up.Close()
		return
	}
	defer l.untrack(upRaw)
	defer up.Close()
	m.tcpConns.WithLabelValues(stat, cl.name, "proxied").Inc()

	// The idle timer closes both sides once neither direction has moved a
	// byte for the timeout: after a half-close whose peer never finishes,
	// or when both ends went silent, the copies would otherwise wait
	// forever. One timer per connection, re-armed from the last progress,
	// costs less than a deadline set on every read.
	idle := l.p.cfg.TCPIdleTimeout
	var last atomic.Int64 // nanoseconds since start of the last progress
	start := time.Now()
	// timerMu orders the callback's use of timer after its assignment,
	// and keeps it from re-arming a timer the handler has stopped.
	var timerMu sync.Mutex
	var timer *time.Timer
	ended := false
	timerMu.Lock()
	timer = time.AfterFunc(idle, func() {
		quiet := time.Since(start) - time.Duration(last.Load())
		if quiet < idle {
			timerMu.Lock()
			if !ended {
				timer.Reset(idle - quiet)
			}
			timerMu.Unlock()
			return
		}
		l.p.log.Debug("tcp connection idle", "listener", stat, "cluster", cl.name, "timeout", idle)
		// The sockets, not the TLS connections: closing those would
		// first try to send close_notify.
		_ = raw.Close()
		_ = upRaw.Close()
	})
	timerMu.Unlock()
	defer func() {
		timerMu.Lock()
		ended = true
		timer.Stop()
		timerMu.Unlock()
	}()
	progress := func() { last.Store(int64(time.Since(start))) }

	// Each direction copies until EOF and then half-closes its destination,
	// so a client that shuts down its write side still gets the rest of the
	// answer. The copy is by hand, not io.Copy, whose splice(2) between
	// sockets would hide the progress the idle timer needs. A listener
	// with a bandwidth limit copies through its buckets instead.
	var wg sync.WaitGroup
	var sent, received int64
	if bw := l.bw.Load(); bw != nil {
		wg.Go(func() {
			sent, _ = ratelimit.Copy(ctx, progressWriter{up, progress}, down, bw.up)
			closeWrite(up)
		})
		received, _ = ratelimit.Copy(ctx, progressWriter{down, progress}, up, bw.down)
	} else {
		wg.Go(func() {
			sent = copyProgress(up, down, progress)
			closeWrite(up)
		})
		received = copyProgress(down, up, progress)
	}
	closeWrite(down)
	wg.Wait()
	m.tcpBytes.WithLabelValues(stat, cl.name, "sent").Add(float64(sent))
	m.tcpBytes.WithLabelValues(stat, cl.name, "received").Add(float64(received))
	sentBytes, receivedBytes = sent, received
}

// tcpObs observes one TCP connection: opened once an upstream connection
// is made, recorded (with the access log line) when it ends.
type tcpObs struct {
	p         *Proxy
	lt        *listenerTelemetry
	start     time.Time
	principal string
	cl        *cluster
	addr      string
	edge      *observe.Edge
	failed    bool
	// sent went upstream (from the downstream), received came back.
	sent, received int64
}

func (t *tcpObs) peer() observe.Peer {
	switch {
	case t.lt.inbound:
		// Plain TCP carries no peer metadata: the identity only.
		return sourcePeer(t.principal, "", "")
	case t.cl != nil:
		return clusterPeer(t.cl.name, t.cl.zoneOf(t.addr))
	}
	return observe.Peer{Service: unknownPeer}
}

func (t *tcpObs) connected(cl *cluster, addr string) {
	t.cl, t.addr, t.failed = cl, addr, false
	t.edge = t.lt.edge("", "tcp", t.peer())
	if !t.lt.metricsOff {
		t.p.obs.ConnOpened(t.edge)
	}
}

func (t *tcpObs) done() {
	if t.edge == nil {
		t.edge = t.lt.edge("", "tcp", t.peer())
	}
	c := observe.Conn{Edge: t.edge, Start: t.start, Duration: time.Since(t.start),
		BytesIn: t.sent, BytesOut: t.received, Upstream: t.addr, Failed: t.failed, Log: t.lt.log}
	if t.failed {
		c.Flags = "UF"
		if t.cl == nil || t.addr == "" {
			c.Flags = "UH"
		}
	}
	if t.lt.metricsOff {
		if c.Log != nil {
			c.Log.LogConn(&c)
		}
		return
	}
	if t.failed {
		// TCP pairs with ConnOpened, which a connection that reached no
		// upstream did not call.
		t.p.obs.ConnOpened(t.edge)
	}
	t.p.obs.TCP(&c)
}

// dialUpstream connects to addr, with mutual TLS when the cluster reaches
// it so. It returns the connection to proxy to and the socket under it.
func (l *tcpListener) dialUpstream(ctx context.Context, cl *cluster, addr string) (net.Conn, net.Conn, error) {
	d := net.Dialer{Timeout: cl.connectTimeout}
	if !cl.isTLS(addr) {
		c, err := d.DialContext(ctx, "tcp", addr)
		return c, c, err
	}
	u := cl.tls
	if u.err != nil {
		l.p.warnOnce("cluster/"+cl.name, "tls endpoints not reached", "cluster", cl.name, "error", u.err)
		return nil, nil, u.unusable(cl.name, addr)
	}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tc, err := u.handshake(ctx, cl.name, addr, raw)
	if err != nil {
		return nil, nil, err
	}
	return tc, raw, nil
}

// copyProgress copies src to dst until EOF or an error, with a pooled
// buffer, calling progress after every read and write that moved bytes.
// It returns the bytes written.
func copyProgress(dst io.Writer, src io.Reader, progress func()) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			progress()
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n
			}
			progress()
		}
		if rerr != nil {
			return n
		}
	}
}

// progressWriter calls progress after every write that moved bytes, for
// the idle timer of a rate-limited copy (which reads in between waits for
// tokens, so a write follows every read).
type progressWriter struct {
	w        io.Writer
	progress func()
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if n > 0 {
		p.progress()
	}
	return n, err
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
