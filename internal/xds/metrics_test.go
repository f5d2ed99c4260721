package xds

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestMetrics checks that connected clients, pushes and push latency move
// with real streams.
func TestMetrics(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())
	c1 := h.dial(t, "c1.default", "default/c1")
	c1.sync()
	waitUntil(t, "one proxy connected", func() bool { return value(t, h.srv.connected.WithLabelValues(kindProxy)) == 1 })
	if got := value(t, h.srv.connected.WithLabelValues(kindProxyless)); got != 0 {
		t.Errorf("proxyless clients = %v, want 0", got)
	}
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.EndpointType} {
		if got := value(t, h.srv.pushes.WithLabelValues(typ)); got < 1 {
			t.Errorf("pushes of %s = %v, want at least 1", typ, got)
		}
	}
	eds := value(t, h.srv.pushes.WithLabelValues(resource.EndpointType))
	before := latencyCount(t, h)

	// A change that affects c1 is pushed and timed.
	m := baseMesh()
	m.Workloads = append(m.Workloads, backend("a-2", "a", "10.0.0.2", 8080))
	h.send(t, m)
	r := c1.recv()
	c1.ack(r, []string{"a.default.mesh:80"})
	waitUntil(t, "EDS push counted", func() bool { return value(t, h.srv.pushes.WithLabelValues(resource.EndpointType)) == eds+1 })
	// The latency is observed after the cache has handed the response to the
	// stream, so the push can be counted a moment before it.
	waitUntil(t, "push latency observed", func() bool { return latencyCount(t, h) > before })
	// The same mesh again changes nothing: no latency observed.
	after := latencyCount(t, h)
	h.send(t, m)
	h.send(t, m) // the second send returns once the first was applied
	if got := latencyCount(t, h); got != after {
		t.Errorf("push latency observations after an unchanged mesh = %d, want %d", got, after)
	}

	c1.close()
	waitUntil(t, "no proxy connected", func() bool { return value(t, h.srv.connected.WithLabelValues(kindProxy)) == 0 })
}

func latencyCount(t *testing.T, h *harness) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.srv.pushLatency.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// value reads a counter's or gauge's value.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}
