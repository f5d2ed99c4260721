package xds

import (
	"log/slog"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

func TestRequestType(t *testing.T) {
	for method, want := range map[string]any{
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources": &discovery.DiscoveryRequest{},
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources":  &discovery.DeltaDiscoveryRequest{},
		"/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners":              &discovery.DiscoveryRequest{},
		"/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters":                  &discovery.DeltaDiscoveryRequest{},
		"/envoy.service.listener.v3.ListenerDiscoveryService/FetchListeners":               nil,
		"/grpc.health.v1.Health/Watch":                                                     nil,
		"garbage":                                                                          nil,
	} {
		newMsg := requestType(method)
		switch {
		case want == nil && newMsg != nil:
			t.Errorf("%s: intercepted, want passed through", method)
		case want != nil && newMsg == nil:
			t.Errorf("%s: passed through, want %T", method, want)
		case want != nil:
			if got := newMsg(); fmtType(got) != fmtType(want) {
				t.Errorf("%s: %T, want %T", method, got, want)
			}
		}
	}
}

func fmtType(v any) string {
	switch v.(type) {
	case *discovery.DiscoveryRequest:
		return "sotw"
	case *discovery.DeltaDiscoveryRequest:
		return "delta"
	}
	return "other"
}

func TestNewAuthenticatorRequires(t *testing.T) {
	if _, err := NewAuthenticator(AuthnConfig{}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("NewAuthenticator with an empty config succeeded")
	}
}
