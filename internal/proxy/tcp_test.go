package proxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// startEcho serves a TCP echo on loopback that half-closes after echoing
// everything, and reports its connections.
func startEcho(t *testing.T) (addr string, conns func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestTCPProxy(t *testing.T) {
	e1, n1 := startEcho(t)
	e2, n2 := startEcho(t)
	l := &config.Listener{Name: "tcp", Address: "127.0.0.1:0", Kind: config.ListenerTCP, Cluster: "echo", StatPrefix: "tcp_echo"}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{l}, nil,
		mkCluster("echo", config.UpstreamTCP, config.LBRoundRobin, e1, e2)))
	addr := tp.addr(t, "tcp")

	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	for i := range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		var got []byte
		var rerr error
		var wg sync.WaitGroup
		wg.Go(func() { got, rerr = io.ReadAll(c) })
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		// Half-close: the echo must still come back in full.
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		c.Close()
		if rerr != nil || !bytes.Equal(got, payload) {
			t.Fatalf("connection %d: echoed %d bytes (err %v), want %d", i, len(got), rerr, len(payload))
		}
	}
	if n1() != 2 || n2() != 2 {
		t.Errorf("round robin over echo servers: %d and %d connections, want 2 and 2", n1(), n2())
	}
	waitFor(t, "byte counters", func() bool {
		return metricValue(t, tp.metrics.tcpBytes.WithLabelValues("tcp_echo", "echo", "received")) == float64(4*len(payload))
	})
	if got := metricValue(t, tp.metrics.tcpBytes.WithLabelValues("tcp_echo", "echo", "sent")); got != float64(4*len(payload)) {
		t.Errorf("sent bytes %v, want %d", got, 4*len(payload))
	}

	t.Run("no endpoint closes the connection", func(t *testing.T) {
		tp.Update(snapshot([]*config.Listener{l}, nil, mkCluster("echo", config.UpstreamTCP, config.LBRoundRobin)))
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("read %d bytes, want the connection closed", n)
		}
	})
}

// A proxied TCP connection with no progress in either direction for
// TCPIdleTimeout is closed on both sides: when both ends went silent, and
// when the client half-closed but the upstream never finishes.
func TestTCPIdleTimeout(t *testing.T) {
	// silent reads what it is sent and never answers nor closes, until
	// the test ends.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})

	l := &config.Listener{Name: "tcp", Address: "127.0.0.1:0", Kind: config.ListenerTCP, Cluster: "silent"}
	tp := startProxy(t, Config{TCPIdleTimeout: 200 * time.Millisecond}, snapshot([]*config.Listener{l}, nil,
		mkCluster("silent", config.UpstreamTCP, config.LBRoundRobin, ln.Addr().String())))
	addr := tp.addr(t, "tcp")
	for _, halfClose := range []bool{false, true} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		if halfClose {
			_ = c.(*net.TCPConn).CloseWrite()
		}
		// Far beyond the idle timeout: a read that ends on this deadline
		// means the proxy never closed.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		if err != io.EOF {
			t.Errorf("half-closed %v: read %d bytes, %v; want EOF from the idle timeout", halfClose, n, err)
		}
	}
	waitFor(t, "no active TCP connection", func() bool {
		return metricValue(t, tp.metrics.tcpActive.WithLabelValues("tcp")) == 0
	})
}
