package xdsclient

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"verge.dev/verge/internal/proxy/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const nodeID = "sidecar~10.0.0.9~web-1.default~default.svc.cluster.local"

// waitLimit bounds every wait for progress; tests never depend on how fast
// that progress is.
const waitLimit = 30 * time.Second

// controlPlane is a real go-control-plane ADS server on loopback.
type controlPlane struct {
	addr  string
	cache cache.SnapshotCache
	stop  func()
}

func startControlPlane(t *testing.T, addr string) *controlPlane {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	snapshots := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	gs := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, server.NewServer(ctx, snapshots, nil))
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	var once sync.Once
	cp := &controlPlane{addr: lis.Addr().String(), cache: snapshots, stop: func() {
		once.Do(func() {
			gs.Stop()
			cancel()
			wg.Wait()
		})
	}}
	t.Cleanup(cp.stop)
	return cp
}

type resources struct {
	listeners, routes, clusters, endpoints []types.Resource
}

func (cp *controlPlane) set(t *testing.T, version string, r resources) {
	t.Helper()
	snap, err := cache.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: r.listeners,
		resourcev3.RouteType:    r.routes,
		resourcev3.ClusterType:  r.clusters,
		resourcev3.EndpointType: r.endpoints,
	})
	if err != nil {
		t.Fatalf("new snapshot: %v", err)
	}
	if err := cp.cache.SetSnapshot(t.Context(), nodeID, snap); err != nil {
		t.Fatalf("set snapshot: %v", err)
	}
}

// recorder keeps the newest Snapshot the client published.
type recorder struct {
	mu      sync.Mutex
	latest  *config.Snapshot
	changed chan struct{}
}

func (r *recorder) update(s *config.Snapshot) {
	r.mu.Lock()
	r.latest = s
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) waitFor(t *testing.T, what string, cond func(*config.Snapshot) bool) *config.Snapshot {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		s := r.latest
		r.mu.Unlock()
		if s != nil && cond(s) {
			return s
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			t.Fatalf("no published snapshot with %s; latest: %+v", what, s)
		}
	}
}

func waitStatus(t *testing.T, c *Client, what string, cond func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s := c.Status()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never had %s; last: %+v", what, s)
		}
		<-tick.C
	}
}

func startClient(t *testing.T, addr, cacheDir string, fetchTimeout time.Duration) (*Client, *recorder) {
	t.Helper()
	rec := &recorder{changed: make(chan struct{}, 1)}
	c := New(Config{
		ServerAddr:          addr,
		Node:                &corev3.Node{Id: nodeID, Cluster: "web"},
		CacheDir:            cacheDir,
		DialOptions:         []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		InitialFetchTimeout: fetchTimeout,
	}, rec.update, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	})
	return c, rec
}

// versionIs holds when every type the snapshot carries is at version v.
func versionIs(v string) func(*config.Snapshot) bool {
	return func(s *config.Snapshot) bool {
		for _, got := range s.Versions {
			if got != v {
				return false
			}
		}
		return len(s.Versions) > 0
	}
}

func baseResources(endpointHost string) resources {
	return resources{
		listeners: []types.Resource{httpListener("outbound:10001", 10001, svc), tcpListener("outbound:5432", 5432, db)},
		routes:    []types.Resource{routeConfig(svc, clusterRoute("/", svc))},
		clusters:  []types.Resource{edsCluster(svc, true), staticCluster(db, testEndpoint{host: "10.0.1.1", port: 5432})},
		endpoints: []types.Resource{loadAssignment(svc,
			testEndpoint{host: endpointHost, port: 8080},
			testEndpoint{host: "10.0.0.99", port: 8080, health: corev3.HealthStatus_UNHEALTHY},
		)},
	}
}

func TestClientFollowsControlPlane(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	dir := t.TempDir()
	c, rec := startClient(t, cp.addr, dir, 0)

	cp.set(t, "1", baseResources("10.0.0.1"))
	got := rec.waitFor(t, "version 1", versionIs("1"))
	want := &config.Snapshot{
		Versions: map[string]string{TypeListener: "1", TypeRoute: "1", TypeCluster: "1", TypeEndpoint: "1"},
		Listeners: []*config.Listener{
			{Name: "outbound:10001", Address: "127.0.0.1:10001", Kind: config.ListenerHTTP, RouteName: svc, StatPrefix: "outbound:10001"},
			{Name: "outbound:5432", Address: "127.0.0.1:5432", Kind: config.ListenerTCP, Cluster: db, StatPrefix: "outbound:5432"},
		},
		Routes: map[string]*config.RouteTable{svc: {Name: svc, VirtualHosts: []*config.VirtualHost{{
			Name: svc, Domains: []string{"*"},
			Routes: []*config.Route{{Match: config.RouteMatch{Prefix: "/"}, Clusters: []config.WeightedCluster{{Name: svc, Weight: 1}}, TotalWeight: 1, Timeout: 15 * time.Second}},
		}}}},
		Clusters: map[string]*config.Cluster{
			svc: {Name: svc, Protocol: config.UpstreamHTTP2, LB: config.LBLeastRequest, ConnectTimeout: 2 * time.Second, Endpoints: []config.Endpoint{{Address: "10.0.0.1:8080", Weight: 1}}},
			db:  {Name: db, Protocol: config.UpstreamHTTP1, LB: config.LBRoundRobin, ConnectTimeout: 5 * time.Second, Endpoints: []config.Endpoint{{Address: "10.0.1.1:5432", Weight: 1}}},
		},
	}
	if diff := cmp.Diff(want, got, regexpComparer); diff != "" {
		t.Fatalf("published snapshot mismatch (-want +got):\n%s", diff)
	}
	cached, err := LoadCache(dir)
	if err != nil {
		t.Fatalf("LoadCache() error = %v", err)
	}
	if diff := cmp.Diff(want, cached, regexpComparer); diff != "" {
		t.Errorf("LoadCache() mismatch (-want +got):\n%s", diff)
	}
	st := waitStatus(t, c, "connected", func(s Status) bool { return s.Connected })
	if diff := cmp.Diff(want.Versions, st.Versions); diff != "" {
		t.Errorf("Status().Versions mismatch (-want +got):\n%s", diff)
	}

	// An endpoint change.
	cp.set(t, "2", baseResources("10.0.0.2"))
	got = rec.waitFor(t, "version 2", versionIs("2"))
	if diff := cmp.Diff([]config.Endpoint{{Address: "10.0.0.2:8080", Weight: 1}}, got.Clusters[svc].Endpoints); diff != "" {
		t.Errorf("endpoints after update mismatch (-want +got):\n%s", diff)
	}

	// A new listener with a new route configuration.
	r := baseResources("10.0.0.2")
	r.listeners = append(r.listeners, httpListener("outbound:9090", 9090, svcGRPC))
	r.routes = append(r.routes, routeConfig(svcGRPC, clusterRoute("/pkg.Service/", svcGRPC)))
	r.clusters = append(r.clusters, edsCluster(svcGRPC, true))
	r.endpoints = append(r.endpoints, loadAssignment(svcGRPC, testEndpoint{host: "10.0.2.1", port: 9090}))
	cp.set(t, "3", r)
	got = rec.waitFor(t, "version 3", versionIs("3"))
	if len(got.Listeners) != 3 || got.Routes[svcGRPC] == nil || len(got.Clusters[svcGRPC].Endpoints) != 1 {
		t.Errorf("version 3 incomplete: listeners %d, route %v, cluster %+v", len(got.Listeners), got.Routes[svcGRPC], got.Clusters[svcGRPC])
	}
	cached, err = LoadCache(dir)
	if err != nil {
		t.Fatalf("LoadCache() error = %v", err)
	}
	if diff := cmp.Diff(got, cached, regexpComparer); diff != "" {
		t.Errorf("LoadCache() after update mismatch (-want +got):\n%s", diff)
	}
}

func TestClientNACKKeepsLastGoodConfig(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	c, rec := startClient(t, cp.addr, "", 0)

	cp.set(t, "1", baseResources("10.0.0.1"))
	good := rec.waitFor(t, "version 1", versionIs("1"))

	bad := baseResources("10.0.0.1")
	bad.listeners[0] = redisListener("outbound:10001", 10001)
	cp.set(t, "2", bad)
	st := waitStatus(t, c, "a listener NACK", func(s Status) bool { return s.LastNACK != nil && s.LastNACK.TypeURL == TypeListener })
	wantMsg := `listener "outbound:10001": filter_chains[0].filters[0]: unsupported filter "envoy.filters.network.redis_proxy"`
	if !strings.Contains(st.LastNACK.Error, wantMsg) || st.LastNACK.Version != "2" {
		t.Errorf("LastNACK = %+v, want version 2 and error containing %q", st.LastNACK, wantMsg)
	}
	if st.Versions[TypeListener] != "1" {
		t.Errorf("accepted listener version = %q, want 1", st.Versions[TypeListener])
	}

	// A bad route configuration is refused too; the listeners stay.
	badRoute := baseResources("10.0.0.1")
	badRoute.routes[0] = routeConfig(svc, clusterHeaderRoute())
	cp.set(t, "3", badRoute)
	st = waitStatus(t, c, "a route NACK", func(s Status) bool { return s.LastNACK != nil && s.LastNACK.TypeURL == TypeRoute })
	wantMsg = `route configuration "web.default.mesh:80": virtual_hosts[0].routes[0].route.cluster_specifier: unsupported cluster specifier "cluster_header"`
	if !strings.Contains(st.LastNACK.Error, wantMsg) {
		t.Errorf("LastNACK = %+v, want error containing %q", st.LastNACK, wantMsg)
	}
	latest := rec.waitFor(t, "listeners of version 3", func(s *config.Snapshot) bool { return s.Versions[TypeListener] == "3" })
	if diff := cmp.Diff(good.Listeners, latest.Listeners); diff != "" {
		t.Errorf("listeners changed by rejected updates (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(good.Routes, latest.Routes, regexpComparer); diff != "" {
		t.Errorf("routes changed by a rejected update (-want +got):\n%s", diff)
	}
	// Version 2's route configuration was valid (only its listener was not).
	if latest.Versions[TypeRoute] != "2" {
		t.Errorf("route version = %q, want 2", latest.Versions[TypeRoute])
	}

	// A good version clears the NACK.
	cp.set(t, "4", baseResources("10.0.0.4"))
	rec.waitFor(t, "version 4", versionIs("4"))
	waitStatus(t, c, "no NACK", func(s Status) bool { return s.LastNACK == nil })
}

func TestClientReconnects(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	dir := t.TempDir()
	c, rec := startClient(t, cp.addr, dir, 0)
	cp.set(t, "1", baseResources("10.0.0.1"))
	rec.waitFor(t, "version 1", versionIs("1"))
	waitStatus(t, c, "connected", func(s Status) bool { return s.Connected })

	cp.stop()
	waitStatus(t, c, "disconnected", func(s Status) bool { return !s.Connected })
	// The last good config is still on disk while the control plane is away.
	cached, err := LoadCache(dir)
	if err != nil || cached.Versions[TypeListener] != "1" {
		t.Fatalf("LoadCache() = %+v, %v; want version 1", cached, err)
	}

	restarted := startControlPlane(t, cp.addr)
	restarted.set(t, "2", baseResources("10.0.0.2"))
	got := rec.waitFor(t, "version 2 from the restarted server", versionIs("2"))
	if diff := cmp.Diff([]config.Endpoint{{Address: "10.0.0.2:8080", Weight: 1}}, got.Clusters[svc].Endpoints); diff != "" {
		t.Errorf("endpoints mismatch (-want +got):\n%s", diff)
	}
	waitStatus(t, c, "connected again", func(s Status) bool { return s.Connected })
}

func TestClientPublishesAfterFetchTimeout(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	_, rec := startClient(t, cp.addr, "", 50*time.Millisecond)
	r := baseResources("10.0.0.1")
	// The second listener's route configuration never comes (the ADS
	// snapshot cache does not answer for names it lacks).
	r.listeners = append(r.listeners, httpListener("outbound:9090", 9090, svcGRPC))
	cp.set(t, "1", r)
	got := rec.waitFor(t, "version 1", versionIs("1"))
	var names []string
	for _, l := range got.Listeners {
		names = append(names, l.Name)
	}
	if diff := cmp.Diff([]string{"outbound:10001", "outbound:5432"}, names); diff != "" {
		t.Errorf("published listeners mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadCacheMissing(t *testing.T) {
	_, err := LoadCache(t.TempDir())
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadCache() error = %v, want fs.ErrNotExist", err)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no address", cfg: Config{Node: &corev3.Node{Id: "x"}}, wantErr: "server address required"},
		{name: "no node", cfg: Config{ServerAddr: "127.0.0.1:1"}, wantErr: "node required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := New(tt.cfg, func(*config.Snapshot) {}, slog.New(slog.DiscardHandler)).Run(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Run() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
