package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// tcpListener proxies each accepted connection to an endpoint of its
// cluster.
type tcpListener struct {
	p   *Proxy
	ln  net.Listener
	cfg atomic.Pointer[config.Listener]

	// ctx ends when the drain deadline passes; it bounds dials.
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{} // downstream and upstream, closed at the deadline
	wg    sync.WaitGroup
}

func (p *Proxy) newTCPListener(ln net.Listener, cl *config.Listener) *tcpListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &tcpListener{p: p, ln: ln, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	l.cfg.Store(cl)
	return l
}

func (l *tcpListener) setConfig(cl *config.Listener) { l.cfg.Store(cl) }
func (l *tcpListener) addr() net.Addr                { return l.ln.Addr() }

func (l *tcpListener) serve() {
	var tempDelay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
			l.p.log.Warn("accept failed", "listener", l.cfg.Load().Name, "error", err)
			t := time.NewTimer(tempDelay)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		tempDelay = 0
		if !l.track(c) {
			_ = c.Close()
			return
		}
		l.wg.Go(func() { l.handle(c) })
	}
}

// track registers c for the drain deadline; false means the listener is
// already past its deadline.
func (l *tcpListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *tcpListener) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

func (l *tcpListener) drain(timeout time.Duration) {
	_ = l.ln.Close()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		l.cancel()
		l.mu.Lock()
		for c := range l.conns {
			_ = c.Close()
		}
		l.conns = nil
		l.mu.Unlock()
		<-done
	}
	l.cancel()
}

func (l *tcpListener) handle(down net.Conn) {
	defer l.untrack(down)
	defer down.Close()
	lcfg := l.cfg.Load()
	stat := statName(lcfg)
	m := l.p.metrics
	active := m.tcpActive.WithLabelValues(stat)
	active.Inc()
	defer active.Dec()

	cl := l.p.state.Load().clusters[lcfg.Cluster]
	if cl == nil {
		l.p.log.Debug("tcp connection refused", "listener", stat, "cluster", lcfg.Cluster, "reason", "no cluster")
		m.tcpConns.WithLabelValues(stat, lcfg.Cluster, "no_endpoint").Inc()
		return
	}
	ep := cl.bal.Pick()
	if ep == nil {
		m.tcpConns.WithLabelValues(stat, cl.name, "no_endpoint").Inc()
		return
	}
	defer ep.Done()
	d := net.Dialer{Timeout: cl.connectTimeout}
	up, err := d.DialContext(l.ctx, "tcp", ep.Address)
	if err != nil {
		l.p.log.Debug("tcp upstream connect failed", "listener", stat, "cluster", cl.name, "endpoint", ep.Address, "error", err)
		m.tcpConns.WithLabelValues(stat, cl.name, "connect_failed").Inc()
		return
	}
	if !l.track(up) {
		_ = up.Close()
		return
	}
	defer l.untrack(up)
	defer up.Close()
	m.tcpConns.WithLabelValues(stat, cl.name, "proxied").Inc()

	// Each direction copies until EOF and then half-closes its destination,
	// so a client that shuts down its write side still gets the rest of the
	// answer. io.Copy between *net.TCPConn uses splice(2) on Linux.
	var wg sync.WaitGroup
	var sent int64
	wg.Go(func() {
		sent, _ = io.Copy(up, down)
		closeWrite(up)
	})
	received, _ := io.Copy(down, up)
	closeWrite(down)
	wg.Wait()
	m.tcpBytes.WithLabelValues(stat, cl.name, "sent").Add(float64(sent))
	m.tcpBytes.WithLabelValues(stat, cl.name, "received").Add(float64(received))
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
