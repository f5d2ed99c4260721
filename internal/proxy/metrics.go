package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the proxy's Prometheus series, on a private registry so that
// two proxies in one process (tests) never collide. Labels are bounded by
// configuration: listener stat names, cluster names, status classes; never a
// path or an address.
type metrics struct {
	reg            *prometheus.Registry
	requests       *prometheus.CounterVec
	activeRequests *prometheus.GaugeVec
	upstreamOpened *prometheus.CounterVec
	upstreamActive *prometheus.GaugeVec
	// The h1 engine's pool is keyed by address, not cluster.
	h1UpstreamOpened prometheus.Counter
	h1UpstreamActive prometheus.Gauge
	tcpConns         *prometheus.CounterVec
	tcpActive        *prometheus.GaugeVec
	tcpBytes         *prometheus.CounterVec
	// Mutual TLS: downstream handshakes by negotiated ALPN, refused
	// downstream connections by reason, failed upstream handshakes.
	tlsHandshakes     *prometheus.CounterVec
	tlsRefused        *prometheus.CounterVec
	upstreamTLSFailed *prometheus.CounterVec
	// bridgeConns counts HTTP/2 bridge connections (bridge.go) by side:
	// inbound served, outbound opened.
	bridgeConns *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_http_requests_total",
			Help: "HTTP requests by listener, cluster (empty when unrouted) and response code class.",
		}, []string{"listener", "cluster", "code_class"}),
		activeRequests: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verge_proxy_http_active_requests",
			Help: "HTTP requests being served.",
		}, []string{"listener"}),
		upstreamOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_upstream_connections_opened_total",
			Help: "Upstream HTTP connections opened by the cluster's pool.",
		}, []string{"cluster"}),
		upstreamActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verge_proxy_upstream_connections_active",
			Help: "Upstream HTTP connections open in the cluster's pool.",
		}, []string{"cluster"}),
		h1UpstreamOpened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verge_proxy_h1_upstream_connections_opened_total",
			Help: "Upstream connections opened by the HTTP/1.1 fast path's shared pool.",
		}),
		h1UpstreamActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "verge_proxy_h1_upstream_connections_active",
			Help: "Upstream connections open in the HTTP/1.1 fast path's shared pool.",
		}),
		tcpConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_tcp_connections_total",
			Help: "TCP proxy connections by outcome (proxied, no_endpoint, connect_failed).",
		}, []string{"listener", "cluster", "outcome"}),
		tcpActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verge_proxy_tcp_active_connections",
			Help: "Downstream TCP proxy connections open.",
		}, []string{"listener"}),
		tcpBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_tcp_bytes_total",
			Help: "Bytes proxied by TCP listeners, counted when a connection ends; direction sent is downstream to upstream.",
		}, []string{"listener", "cluster", "direction"}),
		tlsHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_downstream_tls_handshakes_total",
			Help: "Mutual TLS handshakes completed on listeners, by negotiated ALPN protocol.",
		}, []string{"listener", "alpn"}),
		tlsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_downstream_tls_refused_total",
			Help: "Connections refused by TLS listeners, by reason (plaintext, no_identity, no_client_certificate, bad_certificate, revoked, timeout, handshake, denied).",
		}, []string{"listener", "reason"}),
		upstreamTLSFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_upstream_tls_failures_total",
			Help: "Mutual TLS connections to cluster endpoints that failed, by reason (no_identity, config, bad_certificate, revoked, timeout, handshake, alpn).",
		}, []string{"cluster", "reason"}),
		bridgeConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_h2_bridge_connections_total",
			Help: "Mutual TLS connections carrying HTTP/1.1 between proxies over the HTTP/2 bridge, by side (inbound served, outbound opened).",
		}, []string{"side"}),
	}
	m.reg.MustRegister(m.requests, m.activeRequests, m.upstreamOpened, m.upstreamActive,
		m.h1UpstreamOpened, m.h1UpstreamActive,
		m.tcpConns, m.tcpActive, m.tcpBytes,
		m.tlsHandshakes, m.tlsRefused, m.upstreamTLSFailed, m.bridgeConns,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) request(listener, cluster string, status int) {
	m.requests.WithLabelValues(listener, cluster, codeClass(status)).Inc()
}

// deleteCluster drops every series labelled with the cluster, once the
// cluster left the configuration. A request still in flight on the old
// state may recreate its request series, which then stays until the next
// removal of that cluster name; such strays are rare and bounded by the
// configuration.
func (m *metrics) deleteCluster(name string) {
	l := prometheus.Labels{"cluster": name}
	m.requests.DeletePartialMatch(l)
	m.upstreamOpened.DeletePartialMatch(l)
	m.upstreamActive.DeletePartialMatch(l)
	m.tcpConns.DeletePartialMatch(l)
	m.tcpBytes.DeletePartialMatch(l)
	m.upstreamTLSFailed.DeletePartialMatch(l)
}
