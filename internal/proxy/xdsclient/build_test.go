package xdsclient

import (
	"regexp"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/internal/proxy/config"
)

const (
	svc     = "web.default.mesh:80"
	svcGRPC = "api.default.mesh:9090"
	db      = "db.default.mesh:5432"
)

func TestBuild(t *testing.T) {
	type input struct {
		listeners []*listenerv3.Listener
		routes    []*routev3.RouteConfiguration
		clusters  []*clusterv3.Cluster
		cla       []*endpointv3.ClusterLoadAssignment
	}
	healthy := corev3.HealthStatus_HEALTHY
	tests := []struct {
		name    string
		in      input
		want    *config.Snapshot
		wantErr string
	}{
		{
			name: "http listener over rds with eds clusters",
			in: input{
				listeners: []*listenerv3.Listener{httpListener("outbound:10001", 10001, svc)},
				routes:    []*routev3.RouteConfiguration{routeConfig(svc, clusterRoute("/", svc))},
				clusters:  []*clusterv3.Cluster{edsCluster(svc, false), edsCluster(svcGRPC, true)},
				cla: []*endpointv3.ClusterLoadAssignment{loadAssignment(svc,
					testEndpoint{host: "10.0.0.1", port: 8080, health: healthy},
					testEndpoint{host: "10.0.0.2", port: 8080, weight: 3},
					testEndpoint{host: "10.0.0.3", port: 8080, health: corev3.HealthStatus_UNHEALTHY},
					testEndpoint{host: "10.0.0.4", port: 8080, health: corev3.HealthStatus_DRAINING},
				)},
			},
			want: &config.Snapshot{
				Listeners: []*config.Listener{{Name: "outbound:10001", Address: "127.0.0.1:10001", Kind: config.ListenerHTTP, RouteName: svc, StatPrefix: "outbound:10001"}},
				Routes: map[string]*config.RouteTable{svc: {Name: svc, VirtualHosts: []*config.VirtualHost{{
					Name: svc, Domains: []string{"*"},
					Routes: []*config.Route{{Match: config.RouteMatch{Prefix: "/"}, Clusters: []config.WeightedCluster{{Name: svc, Weight: 1}}, TotalWeight: 1, Timeout: 15 * time.Second}},
				}}}},
				Clusters: map[string]*config.Cluster{
					svc: {Name: svc, Protocol: config.UpstreamHTTP1, LB: config.LBLeastRequest, ConnectTimeout: 2 * time.Second, Endpoints: []config.Endpoint{
						{Address: "10.0.0.1:8080", Weight: 1}, {Address: "10.0.0.2:8080", Weight: 3},
					}},
					// No ClusterLoadAssignment: zero endpoints.
					svcGRPC: {Name: svcGRPC, Protocol: config.UpstreamHTTP2, LB: config.LBLeastRequest, ConnectTimeout: 2 * time.Second},
				},
			},
		},
		{
			name: "tcp listener and static cluster",
			in: input{
				listeners: []*listenerv3.Listener{tcpListener("outbound:5432", 5432, db)},
				clusters:  []*clusterv3.Cluster{staticCluster(db, testEndpoint{host: "::1", port: 5432})},
			},
			want: &config.Snapshot{
				Listeners: []*config.Listener{{Name: "outbound:5432", Address: "127.0.0.1:5432", Kind: config.ListenerTCP, Cluster: db, StatPrefix: "outbound:5432"}},
				Routes:    map[string]*config.RouteTable{},
				Clusters: map[string]*config.Cluster{db: {Name: db, Protocol: config.UpstreamHTTP1, LB: config.LBRoundRobin, ConnectTimeout: 5 * time.Second,
					Endpoints: []config.Endpoint{{Address: "[::1]:5432", Weight: 1}}}},
			},
		},
		{
			name: "every priority is kept for the balancer to spill over",
			in: input{
				clusters: []*clusterv3.Cluster{edsCluster(svc, false)},
				cla: []*endpointv3.ClusterLoadAssignment{loadAssignment(svc,
					testEndpoint{host: "10.0.0.1", port: 80, health: corev3.HealthStatus_UNHEALTHY},
					testEndpoint{host: "10.1.0.1", port: 80, priority: 1},
					testEndpoint{host: "10.2.0.1", port: 80, priority: 2},
				)},
			},
			want: &config.Snapshot{
				Routes: map[string]*config.RouteTable{},
				Clusters: map[string]*config.Cluster{svc: {Name: svc, Protocol: config.UpstreamHTTP1, LB: config.LBLeastRequest, ConnectTimeout: 2 * time.Second,
					Endpoints: []config.Endpoint{{Address: "10.1.0.1:80", Weight: 1, Priority: 1}, {Address: "10.2.0.1:80", Weight: 1, Priority: 2}}}},
			},
		},
		{
			name: "inline route config with every match and action",
			in: input{
				listeners: []*listenerv3.Listener{listenerWith("inbound:8080", 15006, hcmFilter(&hcmv3.HttpConnectionManager{
					StatPrefix: "inbound",
					RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
						Name: "inbound",
						VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"web", "web.default.mesh"}, Routes: []*routev3.Route{
							{
								Name: "exact",
								Match: &routev3.RouteMatch{
									PathSpecifier: &routev3.RouteMatch_Path{Path: "/healthz"},
									Headers: []*routev3.HeaderMatcher{
										{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}}}},
										{Name: "X-Canary", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "yes|true"}}}}},
										{Name: "x-debug", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
										{Name: "x-env", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "prod"}, IgnoreCase: true}}},
									},
									QueryParameters: []*routev3.QueryParameterMatcher{
										{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "2"}}}},
										{Name: "trace", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}},
									},
								},
								Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "ok"}}}},
							},
							{
								Name:  "regex",
								Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/v[0-9]+/.*"}}},
								Action: &routev3.Route_Route{Route: &routev3.RouteAction{
									ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
										{Name: svc, Weight: wrapperspb.UInt32(90)}, {Name: svcGRPC, Weight: wrapperspb.UInt32(10)},
									}}},
									Timeout: durationpb.New(0),
								}},
							},
							{
								Name:  "separated",
								Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/foo"}},
								Action: &routev3.Route_Route{Route: &routev3.RouteAction{
									ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: svc},
									Timeout:          durationpb.New(3 * time.Second),
								}},
							},
						}}},
					}},
					HttpFilters: []*hcmv3.HttpFilter{{Name: "verge.fault", IsOptional: true}, routerFilter()},
				}))},
			},
			want: &config.Snapshot{
				Listeners: []*config.Listener{{Name: "inbound:8080", Address: "127.0.0.1:15006", Kind: config.ListenerHTTP, RouteName: "listener/inbound:8080", StatPrefix: "inbound"}},
				Routes: map[string]*config.RouteTable{"listener/inbound:8080": {Name: "inbound", VirtualHosts: []*config.VirtualHost{{
					Name: "all", Domains: []string{"web", "web.default.mesh"},
					Routes: []*config.Route{
						{
							Name: "exact",
							Match: config.RouteMatch{
								Path: "/healthz",
								Headers: []config.HeaderMatch{
									{Name: ":method", Exact: "GET"},
									{Name: "x-canary", Regex: regexp.MustCompile("^(?:yes|true)$")},
									{Name: "x-debug", Present: true, Invert: true},
									{Name: "x-env", Regex: regexp.MustCompile("(?i)^prod")},
								},
								QueryParams: []config.QueryParamMatch{{Name: "v", Exact: "2"}, {Name: "trace", Present: true}},
							},
							DirectResponse: &config.DirectResponse{Status: 200, Body: "ok"},
						},
						{
							Name:        "regex",
							Match:       config.RouteMatch{Regex: regexp.MustCompile("^(?:/v[0-9]+/.*)$")},
							Clusters:    []config.WeightedCluster{{Name: svc, Weight: 90}, {Name: svcGRPC, Weight: 10}},
							TotalWeight: 100,
						},
						{
							Name:        "separated",
							Match:       config.RouteMatch{PathSeparatedPrefix: "/foo"},
							Clusters:    []config.WeightedCluster{{Name: svc, Weight: 1}},
							TotalWeight: 1,
							Timeout:     3 * time.Second,
						},
					},
				}}}},
				Clusters: map[string]*config.Cluster{},
			},
		},
		{
			name:    "unsupported network filter",
			in:      input{listeners: []*listenerv3.Listener{redisListener("outbound:10001", 10001)}},
			wantErr: `listener "outbound:10001": filter_chains[0].filters[0]: unsupported filter "envoy.filters.network.redis_proxy"`,
		},
		{
			name: "unsupported http filter",
			in: input{listeners: []*listenerv3.Listener{listenerWith("l", 1, hcmFilter(&hcmv3.HttpConnectionManager{
				StatPrefix:     "l",
				RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig("r", clusterRoute("/", svc))},
				HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.rbac"}, routerFilter()},
			}))}},
			wantErr: `listener "l": filter_chains[0].filters[0].typed_config.http_filters[0]: unsupported http filter "envoy.filters.http.rbac"`,
		},
		{
			name: "rds not over ads",
			in: input{listeners: []*listenerv3.Listener{listenerWith("l", 1, hcmFilter(&hcmv3.HttpConnectionManager{
				StatPrefix: "l",
				RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "r", ConfigSource: &corev3.ConfigSource{
					ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{PathConfigSource: &corev3.PathConfigSource{Path: "/etc/routes.yaml"}},
				}}},
				HttpFilters: []*hcmv3.HttpFilter{routerFilter()},
			}))}},
			wantErr: `listener "l": filter_chains[0].filters[0].typed_config.rds.config_source: only ads is supported`,
		},
		{
			name:    "route configuration missing",
			in:      input{listeners: []*listenerv3.Listener{httpListener("outbound:10001", 10001, svc)}},
			wantErr: `listener "outbound:10001": route configuration "web.default.mesh:80" not present`,
		},
		{
			name: "two listeners on one address",
			in: input{
				listeners: []*listenerv3.Listener{tcpListener("a", 7000, db), tcpListener("b", 7000, db)},
			},
			wantErr: `listener "b": address "127.0.0.1:7000" already used by listener "a"`,
		},
		{
			name:    "cluster_header route",
			in:      input{routes: []*routev3.RouteConfiguration{routeConfig("r", clusterHeaderRoute())}},
			wantErr: `route configuration "r": virtual_hosts[0].routes[0].route.cluster_specifier: unsupported cluster specifier "cluster_header"`,
		},
		{
			name: "bad regex",
			in: input{routes: []*routev3.RouteConfiguration{routeConfig("r", &routev3.Route{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(["}}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: svc}}},
			})}},
			wantErr: `route configuration "r": virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex "(["`,
		},
		{
			name: "proto validation",
			in:   input{routes: []*routev3.RouteConfiguration{{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v"}}}}},
			// PGV: domains needs at least one item.
			wantErr: `route configuration "r": invalid RouteConfiguration.VirtualHosts[0]`,
		},
		{
			name: "unsupported lb policy and discovery type",
			in: input{clusters: []*clusterv3.Cluster{
				func() *clusterv3.Cluster {
					c := edsCluster("a", false)
					c.LbPolicy = clusterv3.Cluster_RANDOM
					return c
				}(),
				func() *clusterv3.Cluster {
					c := staticCluster("b")
					c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
					return c
				}(),
			}},
			wantErr: "cluster \"a\": lb_policy: unsupported policy RANDOM\ncluster \"b\": type: unsupported discovery type LOGICAL_DNS",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Build(tt.in.listeners, tt.in.routes, tt.in.clusters, tt.in.cla, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Build() error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build() error = %v", err)
			}
			if diff := cmp.Diff(tt.want, got, regexpComparer); diff != "" {
				t.Errorf("Build() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateDoesNotModifyInput(t *testing.T) {
	l := httpListener("outbound:10001", 10001, svc)
	before := proto.Clone(l)
	if err := ValidateListener(l); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before, l) {
		t.Error("ValidateListener modified its input")
	}
}

// FuzzBuild feeds arbitrary bytes, decoded as each resource type, to the
// validators and Build: they must never panic.
func FuzzBuild(f *testing.F) {
	seed := func(a, b proto.Message) {
		ab, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		bb, err := proto.Marshal(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ab, bb)
	}
	seed(httpListener("outbound:10001", 10001, svc), routeConfig(svc, clusterRoute("/", svc)))
	seed(tcpListener("outbound:5432", 5432, db), staticCluster(db, testEndpoint{host: "10.0.0.1", port: 5432}))
	seed(redisListener("x", 1), loadAssignment(svc, testEndpoint{host: "10.0.0.1", port: 80, weight: 2}))
	seed(edsCluster(svc, false), &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"}},
	}}})
	seed(edsCluster(svcGRPC, true), &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "a+"}}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
	}}}}})
	// Traffic management: every route, listener and cluster field of
	// docs/xds-traffic.md, and localities.
	tl, tr, tc, te := trafficSeeds()
	seed(tl, tr)
	seed(tc, te)
	// Telemetry: a listener with access log, tracing and metadata, and
	// the collector's STRICT_DNS cluster.
	seed(telemetrySeeds(f))

	f.Fuzz(func(t *testing.T, a, b []byte) {
		l := &listenerv3.Listener{}
		r := &routev3.RouteConfiguration{}
		c := &clusterv3.Cluster{}
		e := &endpointv3.ClusterLoadAssignment{}
		if proto.Unmarshal(a, l) != nil || proto.Unmarshal(b, r) != nil {
			return
		}
		_ = ValidateListener(l)
		_ = ValidateRouteConfiguration(r)
		if proto.Unmarshal(a, c) == nil {
			_ = ValidateCluster(c)
		} else {
			c = nil
		}
		if sec := (&tlsv3.Secret{}); proto.Unmarshal(b, sec) == nil {
			_ = ValidateSecret(sec)
		}
		if proto.Unmarshal(b, e) == nil {
			_ = ValidateClusterLoadAssignment(e)
		} else {
			e = nil
		}
		snap, err := Build([]*listenerv3.Listener{l}, []*routev3.RouteConfiguration{r}, nil, nil, nil)
		if err == nil && snap == nil {
			t.Fatal("Build returned neither a snapshot nor an error")
		}
		if c != nil && e != nil {
			_, _ = Build(nil, nil, []*clusterv3.Cluster{c}, []*endpointv3.ClusterLoadAssignment{e}, nil)
		}
	})
}

// TestBuildFromLeavesResourcesUnchanged checks the invariant the client
// relies on when it keeps converted resources instead of protos: Snapshots
// share them, and what differs per Snapshot (an EDS cluster's endpoints, an
// inline route configuration's key) is set on copies.
func TestBuildFromLeavesResourcesUnchanged(t *testing.T) {
	convert := func(m proto.Message) *resource {
		t.Helper()
		r, err := convertResource(m)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	inline := convert(listenerWith("l", 7000, hcmFilter(&hcmv3.HttpConnectionManager{
		StatPrefix:     "l",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig("r", clusterRoute("/", svc))},
		HttpFilters:    []*hcmv3.HttpFilter{routerFilter()},
	})))
	cluster := convert(edsCluster(svc, false))
	first := convert(loadAssignment(svc, testEndpoint{host: "10.0.0.1", port: 8080}))
	second := convert(loadAssignment(svc, testEndpoint{host: "10.0.0.2", port: 8080}))
	wantListener, wantCluster := *inline.listener, *cluster.cluster

	var snaps []*config.Snapshot
	for _, eds := range []*resource{first, second} {
		snap, err := buildFrom(map[string][]*resource{
			TypeListener: {inline}, TypeCluster: {cluster}, TypeEndpoint: {eds},
		})
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	if diff := cmp.Diff(wantListener, *inline.listener); diff != "" {
		t.Errorf("listener resource modified (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantCluster, *cluster.cluster); diff != "" {
		t.Errorf("cluster resource modified (-want +got):\n%s", diff)
	}
	got := []string{snaps[0].Listeners[0].RouteName, snaps[0].Clusters[svc].Endpoints[0].Address, snaps[1].Clusters[svc].Endpoints[0].Address}
	want := []string{inlineRoutePrefix + "l", "10.0.0.1:8080", "10.0.0.2:8080"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("snapshots (-want +got):\n%s", diff)
	}
}
