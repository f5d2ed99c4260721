package h1

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// ErrPoolClosed is returned for exchanges attempted after Pool.Close.
var ErrPoolClosed = errors.New("h1: pool closed")

// PoolConfig configures a Pool. Zero fields take the defaults shown.
type PoolConfig struct {
	// MaxIdlePerAddr bounds the idle connections kept per upstream
	// address (256).
	MaxIdlePerAddr int
	// IdleTimeout is how long an idle connection may be reused (90s).
	// Expired connections are closed when the pool next touches their
	// address, by CloseExpired, or on Close; the pool starts no goroutine,
	// so its owner calls CloseExpired periodically.
	IdleTimeout time.Duration
	// DialTimeout bounds connecting (5s). An exchange's own deadline, if
	// earlier, wins.
	DialTimeout time.Duration
	// Dial connects to addr; nil means a plain TCP dial. It is the seam for
	// TLS and for tests.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Pool keeps keep-alive HTTP/1.1 connections to upstream addresses. It is
// safe for concurrent use by many Serve calls. A connection is owned by one
// exchange at a time: taken from the idle stack (most recently used first,
// so the rest age out) or dialled, and given back only when its last
// exchange ended cleanly and the upstream did not ask to close.
type Pool struct {
	cfg PoolConfig

	// mu guards closed, idle and retained. No I/O happens under it.
	mu     sync.Mutex
	closed bool
	idle   map[string]*idleStack
	// retained, once Retain was called, holds the addresses whose
	// connections may be kept idle.
	retained map[string]struct{}
}

type idleStack struct {
	conns []*upConn // oldest first
}

// upConn is one upstream connection with its buffers.
type upConn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
	// deadline records whether c has a deadline set, so that an exchange
	// without a timeout clears it only when needed.
	deadline bool
}

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.MaxIdlePerAddr <= 0 {
		cfg.MaxIdlePerAddr = 256
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	return &Pool{cfg: cfg, idle: make(map[string]*idleStack)}
}

// Close closes every idle connection and makes the pool refuse new
// exchanges. Connections in use are closed when their exchange ends.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = make(map[string]*idleStack)
	p.mu.Unlock()
	for _, s := range idle {
		for _, uc := range s.conns {
			p.discard(uc)
		}
	}
}

// Retain closes the idle connections to every address not in keep and
// forgets those addresses, so that endpoints that left the configuration
// hold no sockets. Connections in use finish their exchange; from now on a
// connection to an address outside keep is closed instead of kept idle. The
// pool keeps keep: the caller must not modify it afterwards.
func (p *Pool) Retain(keep map[string]struct{}) {
	var gone []*upConn
	p.mu.Lock()
	p.retained = keep
	for addr, s := range p.idle {
		if _, ok := keep[addr]; ok && len(s.conns) > 0 {
			continue
		}
		gone = append(gone, s.conns...)
		delete(p.idle, addr)
	}
	p.mu.Unlock()
	for _, uc := range gone {
		p.discard(uc)
	}
}

// CloseExpired closes the idle connections older than IdleTimeout and
// forgets addresses left with none. Without it, an address no request
// reaches any more would keep its expired connections open.
func (p *Pool) CloseExpired() {
	now := time.Now()
	var gone []*upConn
	p.mu.Lock()
	for addr, s := range p.idle {
		// Oldest first: the expired connections are a prefix.
		i := 0
		for i < len(s.conns) && now.Sub(s.conns[i].idleAt) > p.cfg.IdleTimeout {
			i++
		}
		gone = append(gone, s.conns[:i]...)
		n := copy(s.conns, s.conns[i:])
		clear(s.conns[n:])
		s.conns = s.conns[:n]
		if n == 0 {
			delete(p.idle, addr)
		}
	}
	p.mu.Unlock()
	for _, uc := range gone {
		p.discard(uc)
	}
}

// get returns an idle connection to addr (reused true) or, if there is none
// or fresh is set, a new one dialled before deadline (zero: DialTimeout
// only).
func (p *Pool) get(addr string, deadline time.Time, fresh bool) (*upConn, bool, error) {
	if !fresh {
		uc, stale, err := p.takeIdle(addr)
		for _, s := range stale {
			p.discard(s)
		}
		if err != nil || uc != nil {
			return uc, uc != nil, err
		}
	}
	uc, err := p.dial(addr, deadline)
	return uc, false, err
}

// takeIdle pops the most recent idle connection. If that one has expired,
// all older ones have too: they are returned as stale for the caller to
// close outside the lock.
func (p *Pool) takeIdle(addr string) (*upConn, []*upConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, ErrPoolClosed
	}
	s := p.idle[addr]
	if s == nil || len(s.conns) == 0 {
		return nil, nil, nil
	}
	n := len(s.conns)
	uc := s.conns[n-1]
	if time.Since(uc.idleAt) > p.cfg.IdleTimeout {
		stale := s.conns
		s.conns = nil
		return nil, stale, nil
	}
	s.conns[n-1] = nil
	s.conns = s.conns[:n-1]
	return uc, nil, nil
}

func (p *Pool) dial(addr string, deadline time.Time) (*upConn, error) {
	dl := time.Now().Add(p.cfg.DialTimeout)
	if !deadline.IsZero() && deadline.Before(dl) {
		dl = deadline
	}
	ctx, cancel := context.WithDeadline(context.Background(), dl)
	defer cancel()
	c, err := p.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &upConn{c: c, br: getReader(c), bw: getWriter(c)}, nil
}

// put gives a connection whose exchange ended cleanly back to the pool.
func (p *Pool) put(addr string, uc *upConn) {
	now := time.Now()
	uc.idleAt = now
	var stale *upConn
	p.mu.Lock()
	_, kept := p.retained[addr]
	if p.closed || (p.retained != nil && !kept) {
		p.mu.Unlock()
		p.discard(uc)
		return
	}
	s := p.idle[addr]
	if s == nil {
		s = &idleStack{}
		p.idle[addr] = s
	}
	if len(s.conns) > 0 && now.Sub(s.conns[0].idleAt) > p.cfg.IdleTimeout {
		// Reap the oldest lazily, one per put, so a busy address never
		// accumulates expired connections under its fresh ones.
		stale = s.conns[0]
		copy(s.conns, s.conns[1:])
		s.conns[len(s.conns)-1] = nil
		s.conns = s.conns[:len(s.conns)-1]
	}
	if len(s.conns) >= p.cfg.MaxIdlePerAddr {
		p.mu.Unlock()
		p.discard(uc)
		if stale != nil {
			p.discard(stale)
		}
		return
	}
	s.conns = append(s.conns, uc)
	p.mu.Unlock()
	if stale != nil {
		p.discard(stale)
	}
}

// discard closes a connection and recycles its buffers.
func (p *Pool) discard(uc *upConn) {
	_ = uc.c.Close()
	putReader(uc.br)
	putWriter(uc.bw)
	uc.br, uc.bw = nil, nil
}

// addrCount reports how many addresses the pool has state for (tests).
func (p *Pool) addrCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// idleCount reports the idle connections kept for addr (tests).
func (p *Pool) idleCount(addr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.idle[addr]; s != nil {
		return len(s.conns)
	}
	return 0
}

// setDeadline applies an exchange's deadline (zero: none) to uc.
func (uc *upConn) setDeadline(t time.Time) {
	if t.IsZero() && !uc.deadline {
		return
	}
	_ = uc.c.SetDeadline(t)
	uc.deadline = !t.IsZero()
}

const bufSize = 4 << 10

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

func getReader(c net.Conn) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(c)
	return br
}

func putReader(br *bufio.Reader) {
	if br == nil {
		return
	}
	br.Reset(nil)
	readerPool.Put(br)
}

func getWriter(c net.Conn) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(c)
	return bw
}

func putWriter(bw *bufio.Writer) {
	if bw == nil {
		return
	}
	bw.Reset(nil)
	writerPool.Put(bw)
}
