package h1

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// pipeDialer hands out net.Pipe ends and keeps the far ends, so that a
// test can see which connections the pool closed.
type pipeDialer struct {
	mu  sync.Mutex
	far []net.Conn
}

func (d *pipeDialer) dial(context.Context, string, string) (net.Conn, error) {
	near, far := net.Pipe()
	d.mu.Lock()
	d.far = append(d.far, far)
	d.mu.Unlock()
	return near, nil
}

// closed reports whether the pool closed the i-th dialled connection.
func (d *pipeDialer) closed(i int) bool {
	d.mu.Lock()
	far := d.far[i]
	d.mu.Unlock()
	_ = far.SetReadDeadline(time.Now())
	_, err := far.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

func TestPool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{}
		p := NewPool(PoolConfig{MaxIdlePerAddr: 2, IdleTimeout: time.Minute, Dial: d.dial})
		defer p.Close()
		const addr = "upstream:80"
		get := func(wantReused bool) *upConn {
			t.Helper()
			uc, reused, err := p.get(addr, time.Time{}, false)
			if err != nil {
				t.Fatal(err)
			}
			if reused != wantReused {
				t.Fatalf("get() reused = %v, want %v", reused, wantReused)
			}
			return uc
		}

		a, b, c := get(false), get(false), get(false)
		p.put(addr, a)
		p.put(addr, b)
		p.put(addr, c) // over MaxIdlePerAddr: closed
		if got := p.idleCount(addr); got != 2 {
			t.Errorf("idle = %d, want 2", got)
		}
		if !d.closed(2) || d.closed(0) || d.closed(1) {
			t.Error("want only the third connection closed")
		}
		if got := get(true); got != b {
			t.Error("get() did not return the most recently used connection")
		}
		p.put(addr, b)

		time.Sleep(2 * time.Minute)
		get(false) // both idle ones expired: a fresh dial
		if !d.closed(0) || !d.closed(1) {
			t.Error("expired connections not closed")
		}

		p.Close()
		if _, _, err := p.get(addr, time.Time{}, false); !errors.Is(err, ErrPoolClosed) {
			t.Errorf("get() after Close error = %v, want ErrPoolClosed", err)
		}
	})
}

func TestPoolRetainAndCloseExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{}
		p := NewPool(PoolConfig{MaxIdlePerAddr: 4, IdleTimeout: time.Minute, Dial: d.dial})
		defer p.Close()
		idle := func(addr string) {
			t.Helper()
			uc, _, err := p.get(addr, time.Time{}, true)
			if err != nil {
				t.Fatal(err)
			}
			p.put(addr, uc)
		}
		idle("a:80") // far end 0
		idle("b:80") // 1
		idle("b:80") // 2: a fresh dial, so b holds two

		p.Retain(map[string]struct{}{"a:80": {}, "c:80": {}})
		if !d.closed(1) || !d.closed(2) || d.closed(0) {
			t.Error("Retain(a, c) must close exactly b's idle connections")
		}
		if got := p.addrCount(); got != 1 {
			t.Errorf("addresses after Retain = %d, want 1", got)
		}

		time.Sleep(30 * time.Second)
		idle("c:80") // 3, newer than a's
		time.Sleep(45 * time.Second)
		p.CloseExpired()
		if !d.closed(0) || d.closed(3) {
			t.Error("CloseExpired must close a's expired connection and keep c's")
		}
		if got, want := p.addrCount(), 1; got != want {
			t.Errorf("addresses after CloseExpired = %d, want %d", got, want)
		}
		if got := p.idleCount("c:80"); got != 1 {
			t.Errorf("idle connections to c = %d, want 1", got)
		}
	})
}

func TestPoolRetainRefusesDeparted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{}
		p := NewPool(PoolConfig{Dial: d.dial})
		defer p.Close()
		uc, _, err := p.get("gone:80", time.Time{}, false)
		if err != nil {
			t.Fatal(err)
		}
		// The address leaves while its connection is in use.
		p.Retain(map[string]struct{}{"kept:80": {}})
		p.put("gone:80", uc)
		if !d.closed(0) || p.addrCount() != 0 {
			t.Error("a connection given back to a departed address must be closed")
		}
	})
}
