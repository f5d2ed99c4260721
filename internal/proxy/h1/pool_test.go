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
