package h1

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"
	"testing"
	"time"
)

// The benchmarks put one proxy hop between a raw client and a raw upstream
// on loopback, both written with this package's own parser so that they
// allocate nothing: allocs/op is then the proxy's. Each request and each
// response carries a 1 KiB body. BenchmarkReverseProxy runs the same
// traffic through a stock httputil.ReverseProxy for the ratio.

const benchBodySize = 1024

var benchRequest = append([]byte("POST /bench/items?id=42 HTTP/1.1\r\nHost: bench.default.mesh\r\n"+
	"User-Agent: verge-bench\r\nAccept: */*\r\nContent-Type: application/octet-stream\r\n"+
	"Content-Length: 1024\r\n\r\n"), pattern(benchBodySize)...)

var benchResponse = append([]byte("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"+
	"Content-Length: 1024\r\n\r\n"), pattern(benchBodySize)...)

func startBenchUpstream(b *testing.B) string {
	u := startRawUpstream(b, func(c net.Conn, br *bufio.Reader) {
		bw := bufio.NewWriter(c)
		var head []byte
		var h reqHead
		for {
			var err error
			if head, err = readHead(br, head[:0], defaultMaxHeaderBytes, true); err != nil {
				return
			}
			if err := parseRequestHead(head, &h); err != nil || h.chunked {
				return
			}
			if _, err := br.Discard(int(max(h.contentLength, 0))); err != nil {
				return
			}
			_, _ = bw.Write(benchResponse)
			if br.Buffered() == 0 {
				if err := bw.Flush(); err != nil {
					return
				}
			}
		}
	})
	return u.ln.Addr().String()
}

type benchClient struct {
	c    net.Conn
	br   *bufio.Reader
	head []byte
	h    respHead
}

func dialBench(b *testing.B, addr string) *benchClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return &benchClient{c: c, br: bufio.NewReader(c)}
}

func (bc *benchClient) do() error {
	if _, err := bc.c.Write(benchRequest); err != nil {
		return err
	}
	var err error
	if bc.head, err = readHead(bc.br, bc.head[:0], defaultMaxHeaderBytes, false); err != nil {
		return err
	}
	if err := parseResponseHead(bc.head, &bc.h); err != nil {
		return err
	}
	if bc.h.status != 200 || bc.h.contentLength != benchBodySize {
		return fmt.Errorf("response %d with length %d", bc.h.status, bc.h.contentLength)
	}
	_, err = bc.br.Discard(benchBodySize)
	return err
}

type benchRouter struct{ addr string }

func (r benchRouter) Route(*Request) Decision { return Decision{Addr: r.addr} }

func BenchmarkServe(b *testing.B) {
	px := startProxy(b, benchRouter{startBenchUpstream(b)}, Options{})
	runBench(b, px.addr)
}

func BenchmarkReverseProxy(b *testing.B) {
	target := &url.URL{Scheme: "http", Host: startBenchUpstream(b)}
	rp := httputil.NewSingleHostReverseProxy(target)
	// DefaultTransport's setup, with enough idle connections for 16
	// clients so that the stock proxy is not measured redialling.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	rp.Transport = tr
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: rp}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	b.Cleanup(func() {
		_ = srv.Close()
		<-done
		tr.CloseIdleConnections()
	})
	runBench(b, ln.Addr().String())
}

// runBench measures sequential requests on one connection, then 16
// connections in parallel.
func runBench(b *testing.B, addr string) {
	b.Run("conns=1", func(b *testing.B) {
		bc := dialBench(b, addr)
		b.SetBytes(2 * benchBodySize)
		b.ReportAllocs()
		for b.Loop() {
			if err := bc.do(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("conns=16", func(b *testing.B) {
		b.SetBytes(2 * benchBodySize)
		b.ReportAllocs()
		procs := runtime.GOMAXPROCS(0)
		b.SetParallelism((16 + procs - 1) / procs)
		b.RunParallel(func(pb *testing.PB) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			bc := &benchClient{c: c, br: bufio.NewReader(c)}
			for pb.Next() {
				if err := bc.do(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkServeTraffic is BenchmarkServe with a route's typical traffic
// management that does not fire: retries armed (the 200 is not retried),
// a per-try timeout and header edits both ways.
func BenchmarkServeTraffic(b *testing.B) {
	tr := &Traffic{
		Attempts:      2,
		PerTryTimeout: time.Minute,
		RetryOn:       func(status int, f Failure) bool { return status >= 500 || f != FailureNone },
		Backoff:       func(int) time.Duration { return time.Millisecond },
		RequestHeaders: &HeaderEdits{
			Set:    []Field{{"x-route", "bench"}},
			Remove: []string{"user-agent"},
		},
		ResponseHeaders: &HeaderEdits{Add: []Field{{"x-served-by", "verge"}}},
	}
	px := startProxy(b, trafficBenchRouter{startBenchUpstream(b), tr}, Options{})
	runBench(b, px.addr)
}

type trafficBenchRouter struct {
	addr string
	tr   *Traffic
}

func (r trafficBenchRouter) Route(*Request) Decision { return Decision{Addr: r.addr, Traffic: r.tr} }
