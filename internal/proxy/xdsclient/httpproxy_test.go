package xdsclient

import (
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"verge.dev/verge/internal/proxy/config"
)

// proxyListener is the HTTP_PROXY listener as the translator sends it.
func proxyListener(upgrades ...string) *hcmv3.HttpConnectionManager {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix:     "outbound_http_proxy",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: "http_proxy"}},
		HttpFilters:    []*hcmv3.HttpFilter{routerFilter()},
	}
	for _, u := range upgrades {
		m.UpgradeConfigs = append(m.UpgradeConfigs, &hcmv3.HttpConnectionManager_UpgradeConfig{UpgradeType: u})
	}
	return m
}

func connectRoute(cluster string, ups ...*routev3.RouteAction_UpgradeConfig) *routev3.Route {
	return &routev3.Route{
		Name:  "connect",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          durationpb.New(0),
			UpgradeConfigs:   ups,
		}},
	}
}

func terminate() *routev3.RouteAction_UpgradeConfig {
	return &routev3.RouteAction_UpgradeConfig{UpgradeType: "CONNECT", ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{}}
}

func TestHTTPProxyListener(t *testing.T) {
	rc := &routev3.RouteConfiguration{Name: "http_proxy", VirtualHosts: []*routev3.VirtualHost{{
		Name:    svc,
		Domains: []string{"web.default.mesh", svc},
		Routes:  []*routev3.Route{connectRoute(svc, terminate()), clusterRoute("/", svc)},
	}, {
		Name:    db,
		Domains: []string{db},
		Routes:  []*routev3.Route{connectRoute(db, terminate())},
	}}}
	snap, err := Build(
		[]*listenerv3.Listener{listenerWith("outbound_http_proxy", 15080, hcmFilter(proxyListener("CONNECT")))},
		[]*routev3.RouteConfiguration{rc}, nil, nil, nil)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if got := snap.Listeners[0].RouteName; got != "http_proxy" {
		t.Errorf("RouteName = %q, want http_proxy", got)
	}
	connect := func(cluster string) *config.Route {
		return &config.Route{
			Name:        "connect",
			Match:       config.RouteMatch{Headers: []config.HeaderMatch{{Name: ":method", Exact: "CONNECT"}}},
			Clusters:    []config.WeightedCluster{{Name: cluster, Weight: 1}},
			TotalWeight: 1,
		}
	}
	want := &config.RouteTable{Name: "http_proxy", VirtualHosts: []*config.VirtualHost{{
		Name:    svc,
		Domains: []string{"web.default.mesh", svc},
		Routes: []*config.Route{connect(svc), {
			Match:       config.RouteMatch{Prefix: "/"},
			Clusters:    []config.WeightedCluster{{Name: svc, Weight: 1}},
			TotalWeight: 1,
			Timeout:     defaultRouteTimeout,
		}},
	}, {
		Name:    db,
		Domains: []string{db},
		Routes:  []*config.Route{connect(db)},
	}}}
	if diff := cmp.Diff(want, snap.Routes["http_proxy"]); diff != "" {
		t.Errorf("route table (-want +got):\n%s", diff)
	}
}

func TestHTTPProxyRefused(t *testing.T) {
	forward := &routev3.RouteAction_UpgradeConfig{UpgradeType: "CONNECT"}
	withPost := terminate()
	withPost.ConnectConfig.AllowPost = true
	onPlainRoute := clusterRoute("/", svc)
	onPlainRoute.GetRoute().UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket"}}
	tests := []struct {
		name    string
		hcm     *hcmv3.HttpConnectionManager
		route   *routev3.Route
		wantErr string
	}{
		{"websocket on the listener", proxyListener("websocket"), connectRoute(svc, terminate()),
			`upgrade_configs[0].upgrade_type: unsupported upgrade "websocket" (only CONNECT)`},
		{"connect forwarded upstream", proxyListener("CONNECT"), connectRoute(svc, forward),
			"upgrade_configs[0].connect_config: required"},
		{"connect without upgrade", proxyListener("CONNECT"), connectRoute(svc),
			"upgrade_configs: a connect_matcher route needs exactly one"},
		{"connect with post", proxyListener("CONNECT"), connectRoute(svc, withPost),
			"upgrade_configs[0].connect_config.allow_post: unsupported"},
		{"upgrade on a plain route", proxyListener("CONNECT"), onPlainRoute,
			"upgrade_configs: unsupported outside a connect_matcher route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(
				[]*listenerv3.Listener{listenerWith("outbound_http_proxy", 15080, hcmFilter(tt.hcm))},
				[]*routev3.RouteConfiguration{routeConfig("http_proxy", tt.route)}, nil, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Build error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
