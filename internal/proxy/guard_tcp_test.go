package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// roundTrip writes msg on c and reads it back.
func roundTrip(c net.Conn, msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTCPMaxConnections(t *testing.T) {
	echo, _ := startEcho(t)
	l := &config.Listener{Name: "tcp", Address: "127.0.0.1:0", Kind: config.ListenerTCP, Cluster: "echo"}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{l}, nil,
		withTraffic(mkCluster("echo", config.UpstreamTCP, config.LBRoundRobin, echo),
			&config.ClusterTraffic{CircuitBreaker: &config.CircuitBreaker{MaxConnections: 2}})))
	addr := tp.addr(t, "tcp")

	// Two connections proxied (an echo proves each has its upstream).
	held := []net.Conn{dialTCP(t, addr), dialTCP(t, addr)}
	for i, c := range held {
		if err := roundTrip(c, "hello"); err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
	}
	// The third is closed without being proxied.
	over := dialTCP(t, addr)
	_, _ = over.Write([]byte("x"))
	if n, err := over.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection over the limit read %d bytes, want it closed", n)
	}
	overflow := tp.guardMetrics.overflow.WithLabelValues("echo", "connections")
	if got := metricValue(t, overflow); got != 1 {
		t.Errorf("overflow{kind=connections} = %v, want 1", got)
	}
	if got := metricValue(t, tp.metrics.tcpConns.WithLabelValues("tcp", "echo", "overflow")); got != 1 {
		t.Errorf("tcp_connections{outcome=overflow} = %v, want 1", got)
	}

	// One ends: a new connection gets its slot.
	held[0].Close()
	waitFor(t, "a connection slot freed", func() bool {
		c := dialTCP(t, addr)
		defer c.Close()
		return roundTrip(c, "again") == nil
	})
}

func TestTCPOutlierConnectFailure(t *testing.T) {
	echo, _ := startEcho(t)
	dead := deadAddr(t)
	l := &config.Listener{Name: "tcp", Address: "127.0.0.1:0", Kind: config.ListenerTCP, Cluster: "echo"}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{l}, nil,
		withTraffic(mkCluster("echo", config.UpstreamTCP, config.LBRoundRobin, echo, dead),
			&config.ClusterTraffic{Outlier: &config.OutlierDetection{
				Consecutive5xx: 2, Interval: time.Hour, BaseEjectionTime: time.Hour, MaxEjectionPercent: 50,
			}})))
	addr := tp.addr(t, "tcp")
	_, bal := guardOf(t, tp.Proxy, "echo")
	deadEP := endpointOf(t, bal, dead)

	for i := 0; i < 20 && !deadEP.Ejected(); i++ {
		c := dialTCP(t, addr)
		_ = roundTrip(c, "ping")
		c.Close()
	}
	if !deadEP.Ejected() {
		t.Fatal("endpoint refusing connections not ejected after 20 connections")
	}
	for i := range 5 {
		c := dialTCP(t, addr)
		if err := roundTrip(c, "ping"); err != nil {
			t.Fatalf("connection %d with the dead endpoint ejected: %v", i, err)
		}
		c.Close()
	}
}

func TestTCPBandwidthLimit(t *testing.T) {
	echo, _ := startEcho(t)
	const rate = 128 << 10 // bytes per second, each direction
	l := &config.Listener{Name: "tcp", Address: "127.0.0.1:0", Kind: config.ListenerTCP, Cluster: "echo",
		Traffic: &config.ListenerTraffic{BandwidthBytesPerSecond: rate}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{l}, nil,
		mkCluster("echo", config.UpstreamTCP, config.LBRoundRobin, echo)))
	addr := tp.addr(t, "tcp")

	// Two connections share the listener's limit: 128 KiB each way in
	// total must take about a second beyond the burst (1/20 s of bytes).
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			var got []byte
			var rerr error
			var rw sync.WaitGroup
			rw.Go(func() { got, rerr = io.ReadAll(c) })
			if _, err := c.Write(payload); err != nil {
				errs <- err
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			rw.Wait()
			if rerr != nil || !bytes.Equal(got, payload) {
				errs <- io.ErrUnexpectedEOF
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("limited echo: %v", err)
	}
	// A lower bound only: the buckets cannot hand out bytes faster, so
	// this holds on any machine.
	burst := rate / 20
	if min := time.Duration(float64(2*len(payload)-burst) / rate * float64(time.Second)); time.Since(start) < min {
		t.Errorf("128 KiB each way through a %d B/s limit took %v, want at least %v", rate, time.Since(start), min)
	}

}

func TestTCPBandwidthReconfigure(t *testing.T) {
	p := New(Config{}, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	limited := func(rate int64) *config.Listener {
		return &config.Listener{Name: "tcp", Kind: config.ListenerTCP, Cluster: "c", Traffic: &config.ListenerTraffic{BandwidthBytesPerSecond: rate}}
	}
	l := p.newTCPListener(ln, limited(1000))
	first := l.bw.Load()
	if first == nil || first.rate != 1000 {
		t.Fatalf("bandwidth = %+v, want 1000 B/s", first)
	}
	l.setConfig(limited(1000))
	if l.bw.Load() != first {
		t.Error("unchanged limit replaced its buckets")
	}
	l.setConfig(limited(2000))
	if bw := l.bw.Load(); bw == first || bw.rate != 2000 {
		t.Errorf("bandwidth after a change = %+v, want new buckets at 2000 B/s", bw)
	}
	l.setConfig(&config.Listener{Name: "tcp", Kind: config.ListenerTCP, Cluster: "c"})
	if bw := l.bw.Load(); bw != nil {
		t.Errorf("bandwidth without a limit = %+v, want none (the unlimited copy)", bw)
	}
}
