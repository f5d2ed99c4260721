package controlplane

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/internal/store/etcd/etcdtest"
	"verge.dev/verge/internal/xds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 15 * time.Second

func TestBolt(t *testing.T) {
	testControlPlane(t, Config{APIAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0", DataDir: t.TempDir(), CAPassphrase: passphrase, AdminToken: adminToken})
}

func TestEtcd(t *testing.T) {
	eps := etcdtest.Start(t)
	testControlPlane(t, Config{
		APIAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		Store: "etcd", EtcdEndpoints: eps, EtcdPrefix: "/cptest",
		// The CA material lives in the data dir whatever the store.
		DataDir: t.TempDir(), CAPassphrase: passphrase, AdminToken: adminToken,
	})
}

func TestBadStore(t *testing.T) {
	err := Run(t.Context(), Config{Store: "zookeeper", DataDir: t.TempDir()}, slog.New(slog.NewTextHandler(t.Output(), nil)), nil)
	if err == nil || !strings.Contains(err.Error(), `unknown backend "zookeeper"`) {
		t.Errorf("Run = %v, want an unknown backend error", err)
	}
}

var resources = []struct{ path, body string }{
	{"/apis/verge.dev/v1alpha1/namespaces/default/services", `{"apiVersion":"verge.dev/v1alpha1","kind":"Service",
		"metadata":{"name":"web","namespace":"default"},
		"spec":{"ports":[{"port":80,"protocol":"HTTP","targetPort":8080}]}}`},
	{"/apis/verge.dev/v1alpha1/namespaces/default/workloads", `{"apiVersion":"verge.dev/v1alpha1","kind":"Workload",
		"metadata":{"name":"web-1","namespace":"default","labels":{"app":"web"}},
		"spec":{"address":"127.0.0.1","ports":[{"port":8080,"inboundPort":15006}],"proxy":{}}}`},
	{"/apis/verge.dev/v1alpha1/namespaces/default/workloads", `{"apiVersion":"verge.dev/v1alpha1","kind":"Workload",
		"metadata":{"name":"client","namespace":"default","labels":{"app":"client"}},
		"spec":{"address":"127.0.0.1","proxy":{},"upstreams":[{"service":"web","port":80,"localPort":15001}]}}`},
}

// testControlPlane exercises the role's wiring with an xDS client that has
// no certificate, so it runs with AllowAnonymous; refusals of such streams
// are tested in xdsauth_test.go and security_test.go.
func testControlPlane(t *testing.T, cfg Config) {
	cfg.AllowAnonymous = true
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	addrsCh := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, logger, func(a Addrs) { addrsCh <- a }) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)

	var addrs Addrs
	select {
	case addrs = <-addrsCh:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(waitFor):
		t.Fatal("control plane not ready")
	}
	for _, a := range []string{addrs.API, addrs.XDS, addrs.Sync} {
		if !strings.HasPrefix(a, "127.0.0.1:") || strings.HasSuffix(a, ":0") {
			t.Errorf("bound address %q", a)
		}
	}
	base := "http://" + addrs.API
	hc := &http.Client{Timeout: waitFor}

	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+cfg.AdminToken)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}

	if code, body := do(http.MethodGet, "/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz = %d %s", code, body)
	}
	if code, body := do(http.MethodGet, "/version", ""); code != http.StatusOK || !strings.Contains(body, `"version"`) {
		t.Errorf("/version = %d %s", code, body)
	}
	for _, r := range resources {
		if code, body := do(http.MethodPost, r.path, r.body); code != http.StatusCreated {
			t.Fatalf("POST %s = %d %s", r.path, code, body)
		}
	}

	// A Verge proxy for workload "client" connects and gets its outbound
	// listener once the registry has seen the workload.
	conn, err := grpc.NewClient(addrs.XDS, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithCancel(t.Context())
	defer scancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	md, err := structpb.NewStruct(map[string]any{xds.MetadataWorkload: "default/client"})
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "client.default", Metadata: md}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resps := make(chan *discovery.DiscoveryResponse)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case resps <- r:
			case <-sctx.Done():
				return
			}
		}
	}()
	defer func() { scancel(); <-recvDone }()

	deadline := time.After(waitFor)
	var names []string
	for !slices.Contains(names, "outbound:15001") {
		select {
		case r := <-resps:
			names = names[:0]
			for _, a := range r.GetResources() {
				l := &listenerv3.Listener{}
				if err := a.UnmarshalTo(l); err != nil {
					t.Fatal(err)
				}
				if err := l.Validate(); err != nil {
					t.Errorf("listener %s: %v", l.GetName(), err)
				}
				names = append(names, l.GetName())
			}
			if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatalf("no outbound listener; last listeners %v", names)
		}
	}

	// The proxy shows up in /api/v1/proxies with its ACK.
	var proxies []xds.ProxyStatus
	for end := time.Now().Add(waitFor); ; {
		code, body := do(http.MethodGet, "/api/v1/proxies", "")
		if code != http.StatusOK {
			t.Fatalf("/api/v1/proxies = %d %s", code, body)
		}
		if err := json.Unmarshal([]byte(body), &proxies); err != nil {
			t.Fatal(err)
		}
		if len(proxies) == 1 && proxies[0].Types[resource.ListenerType].AckedVersion != "" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("proxies = %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := proxies[0]; p.ID != "client.default" || p.Workload != "client" || !p.Connected {
		t.Errorf("proxy status = %+v", p)
	}

	if code, body := do(http.MethodPut, "/api/v1/health/default/client", `{"ready":true}`); code != http.StatusNoContent {
		t.Errorf("health report = %d %s", code, body)
	}
	if code, _ := do(http.MethodPut, "/api/v1/health/default/nobody", `{"ready":true}`); code != http.StatusNotFound {
		t.Errorf("health report for unknown workload = %d, want 404", code)
	}
	// Each kind has its own store watch, so the registry may hold the
	// workloads (and the proxy its listener) before it sees the service.
	for end := time.Now().Add(waitFor); ; {
		code, body := do(http.MethodGet, "/", "")
		if code == http.StatusOK && strings.Contains(body, "web.default.mesh") && strings.Contains(body, "client.default") {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("dashboard = %d\n%s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := do(http.MethodGet, "/api/v1/bundle", ""); code != http.StatusOK || !strings.HasPrefix(body, "-----BEGIN CERTIFICATE-----") {
		t.Errorf("/api/v1/bundle = %d\n%s", code, body)
	}
	if code, body := do(http.MethodGet, "/metrics", ""); code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "verge_ca_refusals_total") {
		t.Errorf("/metrics = %d\n%s", code, body)
	}

	scancel()
	<-recvDone
	conn.Close()
	stop()
}

// TestShutdownWithOpenWatch: an open ?watch=1 stream ends when shutdown
// starts instead of holding it for the whole drain timeout.
func TestShutdownWithOpenWatch(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := Config{APIAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0", DataDir: t.TempDir(), CAPassphrase: passphrase}
	addrsCh := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, logger, func(a Addrs) { addrsCh <- a }) }()
	var addrs Addrs
	select {
	case addrs = <-addrsCh:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(waitFor):
		t.Fatal("control plane not ready")
	}

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addrs.API+"/apis/verge.dev/v1alpha1/namespaces/default/services?watch=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The response headers come once the handler has opened its store watch.
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: status %d", resp.StatusCode)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return after cancel")
	}
	if took := time.Since(start); took >= drainTimeout {
		t.Errorf("shutdown with an open watch took %v, want less than the %v drain timeout", took, drainTimeout)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Logf("watch body ended with %v", err)
	}
}
