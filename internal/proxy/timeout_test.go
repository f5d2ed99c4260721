package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// A client that stops reading a streaming response on the net/http path
// gets its stream reset within StreamIdleTimeout, and the proxy lets go of
// the request and its upstream.
func TestStreamWriteTimeout(t *testing.T) {
	upstreamDone := make(chan struct{})
	up := startBackend(t, "stream", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(upstreamDone)
		w.WriteHeader(200)
		chunk := make([]byte, 32<<10)
		// Bounded: 1 GiB is far more than every buffer on the way.
		for range 32 << 10 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "s", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("stream")},
	}}}}
	tp := startProxy(t, Config{StreamIdleTimeout: 200 * time.Millisecond}, snapshot([]*config.Listener{httpListener1("http", "rt")},
		[]*config.RouteTable{rt}, mkCluster("stream", config.UpstreamHTTP2, config.LBRoundRobin, up.addr)))
	addr := tp.addr(t, "http")

	for name, client := range map[string]*http.Client{"h2c": h2cClient(t), "h1": h1Client(t)} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+addr+"/", nil)
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			// Stop reading. The proxy's writes block, time out, and it
			// abandons the request, which cancels the upstream's.
			select {
			case <-upstreamDone:
			case <-time.After(20 * time.Second):
				t.Fatal("upstream handler still streaming: the proxy never gave up writing to the client")
			}
			waitFor(t, "no active request", func() bool {
				return metricValue(t, tp.metrics.activeRequests.WithLabelValues("http")) == 0
			})
			if _, err := io.Copy(io.Discard, res.Body); err == nil {
				t.Error("the client read a complete body, want the stream cut")
			}
		})
		upstreamDone = make(chan struct{})
	}
}

// The h1 engine's own replies count in the metrics with the status the
// client got: a request whose body ends early gets 400, counted as 4xx.
func TestH1LocalReplyMetrics(t *testing.T) {
	a := startBackend(t, "a", nil)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "a", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("a")},
	}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		mkCluster("a", config.UpstreamHTTP1, config.LBRoundRobin, a.addr)))
	var d net.Dialer
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", tp.addr(t, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	_ = c.(*net.TCPConn).CloseWrite()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 400 || strings.TrimSpace(string(body)) != "bad request" {
		t.Fatalf("truncated body: %d %q, want 400 bad request", res.StatusCode, body)
	}
	waitFor(t, "request counted", func() bool {
		return metricValue(t, tp.metrics.requests.WithLabelValues("http", "a", "4xx")) == 1
	})
	if got := metricValue(t, tp.metrics.requests.WithLabelValues("http", "a", "5xx")); got != 0 {
		t.Errorf("5xx count %v, want 0", got)
	}
}
