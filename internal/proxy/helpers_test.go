package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/proxy/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor polls cond until it holds or the deadline passes. It never fails on
// timing alone: the caller fails with what it observed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testProxy struct {
	*Proxy
	cancel context.CancelFunc
	done   chan error
}

// startProxy runs a proxy with s applied and waits for it to be ready.
func startProxy(t testing.TB, cfg Config, s *config.Snapshot) *testProxy {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	p := New(cfg, logger)
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testProxy{Proxy: p, cancel: cancel, done: make(chan error, 1)}
	go func() { tp.done <- p.Run(ctx) }()
	p.Update(s)
	waitFor(t, "proxy ready", p.Ready)
	t.Cleanup(func() { tp.stop(t) })
	return tp
}

func (tp *testProxy) stop(t testing.TB) {
	t.Helper()
	tp.cancel()
	select {
	case err, ok := <-tp.done:
		if ok && err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
		if ok {
			close(tp.done)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("Run did not return after cancel")
	}
}

func (tp *testProxy) addr(t testing.TB, listener string) string {
	t.Helper()
	var a net.Addr
	waitFor(t, "listener "+listener+" bound", func() bool { a = tp.ListenerAddr(listener); return a != nil })
	return a.String()
}

// backend is a real HTTP server on loopback that answers with its name.
type backend struct {
	name string
	addr string
	hits atomic.Int64
}

// startBackend serves h (or an echo handler when nil) on 127.0.0.1:0 with
// HTTP/1.1 and h2c prior knowledge.
func startBackend(t testing.TB, name string, h http.Handler) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, addr: ln.Addr().String()}
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", name)
			w.Header().Set("X-Proto", r.Proto)
			w.Header().Set("X-Seen-Path", r.URL.RequestURI())
			if r.Header.Get("Connection") != "" || r.Header.Get("X-Hop") != "" {
				w.Header().Set("X-Hop-Leaked", "yes")
			}
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %d", name, r.Method, len(body))
		})
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		h.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: counting, Protocols: protos}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	})
	return b
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func h1Client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func h2cClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

type result struct {
	status  int
	body    string
	backend string
	proto   string
}

func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string) (result, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		return result{}, err
	}
	for k, v := range hdr {
		if strings.EqualFold(k, "host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return result{}, err
	}
	return result{status: res.StatusCode, body: string(body), backend: res.Header.Get("X-Backend"), proto: res.Header.Get("X-Proto")}, nil
}

func mustDo(t *testing.T, c *http.Client, method, url string, hdr map[string]string) result {
	t.Helper()
	r, err := do(t, c, method, url, hdr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func httpListener1(name, route string) *config.Listener {
	return &config.Listener{Name: name, Address: "127.0.0.1:0", Kind: config.ListenerHTTP, RouteName: route}
}

func mkCluster(name string, proto config.UpstreamProtocol, lb config.LBPolicy, addrs ...string) *config.Cluster {
	c := &config.Cluster{Name: name, Protocol: proto, LB: lb, ConnectTimeout: 2 * time.Second}
	for _, a := range addrs {
		c.Endpoints = append(c.Endpoints, config.Endpoint{Address: a, Weight: 1})
	}
	return c
}

func toCluster(name string) []config.WeightedCluster {
	return []config.WeightedCluster{{Name: name, Weight: 1}}
}

func snapshot(listeners []*config.Listener, routes []*config.RouteTable, clusters ...*config.Cluster) *config.Snapshot {
	s := &config.Snapshot{Listeners: listeners, Routes: map[string]*config.RouteTable{}, Clusters: map[string]*config.Cluster{}}
	for _, r := range routes {
		s.Routes[r.Name] = r
	}
	for _, c := range clusters {
		s.Clusters[c.Name] = c
	}
	return s
}

func isConnRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// metricValue reads a counter or gauge.
func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("metric is neither counter nor gauge")
	return 0
}
