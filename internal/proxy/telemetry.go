package proxy

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/observe"
	"verge.dev/verge/internal/proxy/tracing"
	"verge.dev/verge/internal/telemetry"
)

// Request telemetry (issue 6): each request path (h1 engine, HTTP/2
// bridge, net/http) and the TCP path hands a finished request or
// connection to the Observer (package observe: golden metrics, the
// control plane's edge counters, taps, access log) and, with tracing on,
// makes this hop's span (package tracing). This file resolves what those
// need per listener: which side of the edge the local workload is, the
// edge objects (cached, so that the request path does not rebuild label
// sets), the access logger and the tracer, opened and closed as listeners'
// configurations change.

// Peer metadata the outbound proxy adds to a request it sends to a peer
// proxy over mutual TLS, so that the inbound side can label the request
// with its caller's service and zone (the SPIFFE ID names only the service
// account). The inbound proxy reads them only from mutual TLS connections
// and strips them before the application sees the request.
const (
	hdrSource     = "x-verge-source"
	hdrSourceZone = "x-verge-source-zone"
)

// peerMetaFields are the bridge's peer metadata fields for the local
// service and zone; nil when the service is unknown.
func peerMetaFields(service, zone string) *[]hpack.HeaderField {
	if service == "" || service == unknownPeer {
		return nil
	}
	f := []hpack.HeaderField{{Name: hdrSource, Value: service}}
	if zone != "" {
		f = append(f, hpack.HeaderField{Name: hdrSourceZone, Value: zone})
	}
	return &f
}

// isPeerMeta reports whether a (lower-case) field name is peer metadata,
// which only proxies may set.
func isPeerMeta(name string) bool {
	return len(name) >= len(hdrSource) && name[:len(hdrSource)] == hdrSource
}

// unknownPeer names a caller the inbound side cannot name.
const unknownPeer = "unknown"

// listenerTelemetry is one listener's telemetry state, rebuilt with each
// snapshot; edges survive in telemetryHub.edges across snapshots.
type listenerTelemetry struct {
	inbound bool
	// local is the workload's own side: the destination of inbound
	// requests, the source of outbound ones.
	local  observe.Peer
	log    *observe.AccessLogger
	tracer *tracing.Tracer
	// metricsOff: the listener's Telemetry turned metrics off; requests
	// are then neither counted nor reported.
	metricsOff bool
	edges      *sync.Map // edgeKey → *observe.Edge
	// unnamed memoizes the inbound edges from unnamed callers.
	unnamed edgeMemo
}

// edgeKey names a cached edge of one listener. For an outbound listener
// the peer is the destination (from the cluster), for an inbound one the
// source.
type edgeKey struct {
	route, proto string
	peer         string
	zone         string
	identity     string
}

// edge returns the cached edge for a request on route to or from peer.
func (t *listenerTelemetry) edge(route, proto string, peer observe.Peer) *observe.Edge {
	k := edgeKey{route: route, proto: proto, peer: peer.Service, zone: peer.Zone, identity: peer.Identity}
	if e, ok := t.edges.Load(k); ok {
		return e.(*observe.Edge)
	}
	e := &observe.Edge{Protocol: proto, Route: route}
	if t.inbound {
		e.Direction, e.Source, e.Destination = telemetry.Inbound, peer, t.local
	} else {
		e.Direction, e.Source, e.Destination = telemetry.Outbound, t.local, peer
	}
	v, _ := t.edges.LoadOrStore(k, e)
	return v.(*observe.Edge)
}

// edgeMemo is the last edge one lookup site resolved. Requests through a
// cluster (outbound) or a listener (inbound) mostly repeat their route
// and peer, and hashing edgeKey's five strings for the shared map was a
// percent of a busy proxy's CPU; a miss costs the map lookup as before
// and one small allocation.
type edgeMemo struct{ last atomic.Pointer[edgeMemoEntry] }

type edgeMemoEntry struct {
	lt                 *listenerTelemetry
	route, proto, zone string
	edge               *observe.Edge
}

func (m *edgeMemo) get(lt *listenerTelemetry, route, proto, zone string) *observe.Edge {
	if e := m.last.Load(); e != nil && e.lt == lt && e.route == route && e.proto == proto && e.zone == zone {
		return e.edge
	}
	return nil
}

func (m *edgeMemo) put(lt *listenerTelemetry, route, proto, zone string, e *observe.Edge) *observe.Edge {
	m.last.Store(&edgeMemoEntry{lt: lt, route: route, proto: proto, zone: zone, edge: e})
	return e
}

// outboundEdge is lt.edge for a request that cl carried to addr.
func (c *cluster) outboundEdge(lt *listenerTelemetry, route, proto, addr string) *observe.Edge {
	zone := c.zoneOf(addr)
	if e := c.edges.get(lt, route, proto, zone); e != nil {
		return e
	}
	return c.edges.put(lt, route, proto, zone, lt.edge(route, proto, clusterPeer(c.name, zone)))
}

// unnamedSourceEdge is lt.edge for an inbound request whose caller cannot
// be named (plaintext).
func (t *listenerTelemetry) unnamedSourceEdge(route, proto string) *observe.Edge {
	if e := t.unnamed.get(t, route, proto, ""); e != nil {
		return e
	}
	return t.unnamed.put(t, route, proto, "", t.edge(route, proto, sourcePeer("", "", "")))
}

// clusterPeer is the destination named by an outbound cluster
// "NAME.NS.mesh:PORT"; other clusters (the HTTP_PROXY listener's, static
// ones) are named as they are.
func clusterPeer(name, zone string) observe.Peer {
	host, _, _ := strings.Cut(name, ":")
	host = strings.TrimSuffix(host, ".mesh")
	_, ns, _ := strings.Cut(host, ".")
	return observe.Peer{Service: host, Namespace: ns, Zone: zone}
}

// sourcePeer is the caller of an inbound request: named by the peer
// proxy's metadata when the connection is mutual TLS (principal set),
// else unknown.
func sourcePeer(principal, service, zone string) observe.Peer {
	if principal == "" || service == "" {
		return observe.Peer{Service: unknownPeer, Identity: principal}
	}
	_, ns, _ := strings.Cut(service, ".")
	return observe.Peer{Service: service, Namespace: ns, Identity: principal, Zone: zone}
}

// telemetryHub owns the access loggers and tracers the listeners use,
// shared between listeners with the same settings, and the edge caches.
type telemetryHub struct {
	p *Proxy

	mu      sync.Mutex
	logs    map[string]*observe.AccessLogger
	tracers map[tracerKey]*tracing.Tracer
	edges   map[string]*sync.Map // by listener name
}

type tracerKey struct {
	collector   string // resolved address
	serviceName string
	percent     float64
}

func newTelemetryHub(p *Proxy) *telemetryHub {
	return &telemetryHub{p: p, logs: map[string]*observe.AccessLogger{},
		tracers: map[tracerKey]*tracing.Tracer{}, edges: map[string]*sync.Map{}}
}

// compile builds the listeners' telemetry for snapshot s, opening the
// access logs and tracers it needs. It returns the ones s no longer uses,
// for the caller to close once requests routed on the previous state are
// done with them.
func (h *telemetryHub) compile(s *config.Snapshot) (map[string]*listenerTelemetry, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]*listenerTelemetry, len(s.Listeners))
	usedLogs := map[string]bool{}
	usedTracers := map[tracerKey]bool{}
	usedEdges := map[string]bool{}
	for _, l := range s.Listeners {
		lt := &listenerTelemetry{inbound: strings.HasPrefix(l.Name, "inbound:")}
		svc := h.p.cfg.Service
		if tc := l.Telemetry; tc != nil {
			if tc.Service != "" {
				svc = tc.Service
			}
			lt.metricsOff = tc.MetricsDisabled
			if al := tc.AccessLog; al != nil {
				lg := h.logs[al.Path]
				if lg == nil {
					var err error
					if lg, err = observe.OpenAccessLog(al.Path, h.p.metrics.reg); err != nil {
						h.p.warnOnce("accesslog/"+al.Path, "access log not opened", "path", al.Path, "error", err)
					} else {
						h.logs[al.Path] = lg
					}
				}
				if lg != nil {
					lt.log = lg
					usedLogs[al.Path] = true
				}
			}
			if tr := tc.Tracing; tr != nil {
				key := tracerKey{collector: collectorAddr(s, tr.Collector), serviceName: tr.ServiceName, percent: tr.SamplePercent}
				if key.serviceName == "" {
					key.serviceName = svc
				}
				t := h.tracers[key]
				if t == nil && key.collector != "" {
					var err error
					if t, err = tracing.New(tracing.Options{ServiceName: key.serviceName, Collector: key.collector, SamplePercent: key.percent}); err != nil {
						h.p.warnOnce("tracing/"+key.collector, "tracer not started", "collector", key.collector, "error", err)
					} else {
						h.tracers[key] = t
					}
				}
				if t != nil {
					lt.tracer = t
					usedTracers[key] = true
				}
			}
		}
		_, ns, _ := strings.Cut(svc, ".")
		lt.local = observe.Peer{Service: svc, Namespace: ns, Zone: h.p.cfg.Zone}
		if lt.local.Service == "" {
			lt.local.Service = unknownPeer
		}
		em := h.edges[l.Name]
		if em == nil || !sameLocal(em, lt) {
			em = new(sync.Map)
			h.edges[l.Name] = em
		}
		lt.edges = em
		usedEdges[l.Name] = true
		out[l.Name] = lt
	}
	var closeLogs []*observe.AccessLogger
	for path, lg := range h.logs {
		if !usedLogs[path] {
			closeLogs = append(closeLogs, lg)
			delete(h.logs, path)
		}
	}
	var stopTracers []*tracing.Tracer
	for k, t := range h.tracers {
		if !usedTracers[k] {
			stopTracers = append(stopTracers, t)
			delete(h.tracers, k)
		}
	}
	for name := range h.edges {
		if !usedEdges[name] {
			delete(h.edges, name)
		}
	}
	if len(closeLogs) == 0 && len(stopTracers) == 0 {
		return out, nil
	}
	return out, func() { closeTelemetry(closeLogs, stopTracers) }
}

// sameLocal reports whether the edges cached in em were made for lt's
// local side (a new service name or zone starts a new cache).
func sameLocal(em *sync.Map, lt *listenerTelemetry) bool {
	same := true
	em.Range(func(_, v any) bool {
		e := v.(*observe.Edge)
		local := e.Source
		if lt.inbound {
			local = e.Destination
		}
		same = local == lt.local
		return false
	})
	return same
}

// closeAll closes every access log and tracer (shutdown).
func (h *telemetryHub) closeAll() {
	h.mu.Lock()
	var logs []*observe.AccessLogger
	var tracers []*tracing.Tracer
	for k, lg := range h.logs {
		logs = append(logs, lg)
		delete(h.logs, k)
	}
	for k, t := range h.tracers {
		tracers = append(tracers, t)
		delete(h.tracers, k)
	}
	h.mu.Unlock()
	closeTelemetry(logs, tracers)
}

func closeTelemetry(logs []*observe.AccessLogger, tracers []*tracing.Tracer) {
	for _, lg := range logs {
		_ = lg.Close()
	}
	if len(tracers) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, t := range tracers {
		_ = t.Shutdown(ctx)
	}
}

// collectorAddr is the address of the trace collector cluster's first
// endpoint ("" when the snapshot has none).
func collectorAddr(s *config.Snapshot, cluster string) string {
	c := s.Clusters[cluster]
	if c == nil || len(c.Endpoints) == 0 {
		return ""
	}
	return c.Endpoints[0].Address
}
