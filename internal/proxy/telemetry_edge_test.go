package proxy

import (
	"sync"
	"testing"

	"verge.dev/verge/internal/proxy/observe"
)

// TestEdgeMemo: the memoized edges are the listener's own, whatever order
// routes, protocols, zones and listeners come in.
func TestEdgeMemo(t *testing.T) {
	newLT := func(inbound bool) *listenerTelemetry {
		return &listenerTelemetry{inbound: inbound, local: observe.Peer{Service: "web.default"}, edges: &sync.Map{}}
	}
	out, out2 := newLT(false), newLT(false)
	cl := &cluster{pool: &pool{name: "api.default.mesh:80"}, zones: map[string]string{"10.0.0.1:80": "a", "10.0.0.2:80": "b"}}
	for range 2 {
		for _, c := range []struct {
			lt               *listenerTelemetry
			route, proto, ep string
			wantZone         string
		}{
			{out, "r1", "http", "10.0.0.1:80", "a"},
			{out, "r1", "http", "10.0.0.1:80", "a"},
			{out, "r1", "http", "10.0.0.2:80", "b"},
			{out, "r2", "http", "10.0.0.2:80", "b"},
			{out, "r2", "grpc", "10.0.0.2:80", "b"},
			{out, "r2", "grpc", "10.0.0.3:80", ""},
			{out2, "r2", "grpc", "10.0.0.3:80", ""},
		} {
			got := cl.outboundEdge(c.lt, c.route, c.proto, c.ep)
			want := c.lt.edge(c.route, c.proto, clusterPeer(cl.name, c.wantZone))
			if got != want {
				t.Errorf("%s %s via %s: got %+v, want %+v", c.route, c.proto, c.ep, got, want)
			}
			if got.Destination.Service != "api.default" || got.Destination.Zone != c.wantZone || got.Route != c.route || got.Protocol != c.proto {
				t.Errorf("%s %s via %s: edge %+v", c.route, c.proto, c.ep, got)
			}
		}
	}
	in := newLT(true)
	for _, route := range []string{"r1", "r1", "r2", "r1"} {
		got := in.unnamedSourceEdge(route, "http")
		if want := in.edge(route, "http", sourcePeer("", "", "")); got != want || got.Route != route || got.Source.Service != unknownPeer {
			t.Errorf("inbound %s: got %+v, want %+v", route, got, want)
		}
	}
}
