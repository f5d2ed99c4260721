package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestCopySharedBandwidth proxies two real TCP connections on loopback
// through Copy with one shared 1 MiB/s limit for 2 s and checks, with
// generous bounds, that together they get about the limit and split it
// about evenly.
func TestCopySharedBandwidth(t *testing.T) {
	const (
		rate   = 1 << 20
		burst  = 16 << 10
		window = 2 * time.Second
	)
	lim, err := NewBucket(BucketConfig{Rate: rate, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	// The sink counts bytes per upstream connection, in accept order.
	sink := listen(t)
	var received [2]atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 2 {
			c, err := sink.Accept()
			if err != nil {
				t.Errorf("sink accept: %v", err)
				return
			}
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					received[i].Add(int64(n))
					if err != nil {
						return
					}
				}
			})
		}
	})

	// The proxy copies each accepted connection to its own upstream
	// connection through the shared limit.
	front := listen(t)
	var conns sync.Map // every conn, closed when the test ends
	track := func(c net.Conn) { conns.Store(c, struct{}{}) }
	wg.Go(func() {
		for range 2 {
			down, err := front.Accept()
			if err != nil {
				t.Errorf("proxy accept: %v", err)
				return
			}
			track(down)
			// Dial in accept order so that sink connection i belongs to client i.
			up, err := net.Dial("tcp", sink.Addr().String())
			if err != nil {
				t.Errorf("proxy dial: %v", err)
				return
			}
			track(up)
			wg.Go(func() {
				_, err := Copy(ctx, up, down, lim)
				if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) {
					t.Errorf("Copy: %v", err)
				}
				up.Close()
			})
		}
	})

	// Two clients write as fast as the proxy takes it.
	payload := bytes.Repeat([]byte("x"), 64<<10)
	for range 2 {
		c, err := net.Dial("tcp", front.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		track(c)
		// Wait until the proxy has taken this one so accept order is client order.
		waitFor(t, func() bool { n := 0; conns.Range(func(any, any) bool { n++; return true }); return n%3 == 0 })
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := c.Write(payload); err != nil {
					return
				}
			}
		})
	}

	start := time.Now()
	timer := time.NewTimer(window)
	<-timer.C
	elapsed := time.Since(start)
	got := [2]int64{received[0].Load(), received[1].Load()}

	cancel()
	conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
	wg.Wait()

	total := got[0] + got[1]
	want := int64(elapsed.Seconds()*rate) + burst
	t.Logf("in %v: conn 0 %d B, conn 1 %d B, total %d B (%.0f KiB/s), expected about %d B",
		elapsed, got[0], got[1], total, float64(total)/elapsed.Seconds()/1024, want)
	if total < want/2 || total > want*3/2 {
		t.Errorf("total %d B, want within [%d, %d]", total, want/2, want*3/2)
	}
	for i, n := range got {
		if n < total/4 {
			t.Errorf("conn %d got %d of %d B: starved", i, n, total)
		}
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
	}
}

func TestCopyPacesAndCancels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 10 KiB/s with a 1 KiB burst: 5 KiB take 4 s after the first KiB.
		lim, err := NewBucket(BucketConfig{Rate: 10 << 10, Burst: 1 << 10})
		if err != nil {
			t.Fatal(err)
		}
		var dst bytes.Buffer
		start := time.Now()
		n, err := Copy(t.Context(), &dst, strings.NewReader(strings.Repeat("a", 5<<10)), lim)
		if err != nil || n != 5<<10 || dst.Len() != 5<<10 {
			t.Fatalf("Copy = %d, %v (dst %d B); want 5120, nil", n, err, dst.Len())
		}
		// Fake time in the bubble: exact, not a timing assertion.
		if d := time.Since(start); d != 400*time.Millisecond {
			t.Fatalf("Copy took %v, want 400ms", d)
		}

		// A copy waiting for tokens ends when its context does.
		ctx, cancel := context.WithCancel(t.Context())
		r, w := io.Pipe()
		errc := make(chan error, 1)
		go func() {
			_, err := Copy(ctx, io.Discard, r, lim)
			errc <- err
		}()
		go func() {
			w.Write(make([]byte, 1<<10)) // 100 ms of debt already, then waits
			w.Write(make([]byte, 1<<10))
		}()
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Copy after cancel = %v, want context.Canceled", err)
		}
		r.Close()
	})
}

func TestCopyUnlimited(t *testing.T) {
	var dst bytes.Buffer
	if n, err := Copy(t.Context(), &dst, strings.NewReader("hello"), nil); n != 5 || err != nil || dst.String() != "hello" {
		t.Fatalf("Copy(nil limit) = %d, %v, %q", n, err, dst.String())
	}
}
