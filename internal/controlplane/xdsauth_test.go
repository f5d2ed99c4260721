package controlplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store/bolt"
	"verge.dev/verge/internal/xds"
)

// TestXDSAuth serves go-control-plane's ADS server behind the xDS port's
// listener, credentials and interceptor, and checks which proxies get a
// workload's configuration.
func TestXDSAuth(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx := t.Context()
	td := spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	wk, _ := v1alpha1.KindByName("Workload")
	for _, w := range []struct{ name, sa string }{{"web-1", "web"}, {"db-1", "db"}} {
		b, _ := json.Marshal(map[string]any{"apiVersion": wk.APIVersion(), "kind": "Workload",
			"metadata": map[string]any{"name": w.name, "namespace": "default"},
			"spec":     map[string]any{"address": "127.0.0.1", "serviceAccount": w.sa}})
		if _, err := st.Create(ctx, apiserver.Key(wk, "default", w.name), b); err != nil {
			t.Fatal(err)
		}
	}

	authority, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	cpSVID, err := newSelfSVID(ctx, authority, nil, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	bundle := caBundle{ca: authority}
	metrics := prometheus.NewRegistry()
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refused"}, []string{"port", "reason"})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := newDualListener(raw, portConfig{name: "xds", tls: serverTLS(cpSVID, bundle, td, []string{"h2"}, nil),
		plaintextOK: xdsPlaintextOK, plaintextPeek: len(http2Preface), refused: refused, logger: logger})
	opts, err := xdsServerOptions(st, td, bundle, false, metrics, logger)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	snaps := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	sctx, stopXDS := context.WithCancel(context.Background())
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(sctx, snaps, nil))
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { stopXDS(); gs.Stop(); <-served })
	for _, node := range []string{"web-1.default", "proxyless"} {
		snap, err := cache.NewSnapshot("1", map[resource.Type][]types.Resource{
			resource.ListenerType: {&listenerv3.Listener{Name: "for-" + node}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := snaps.SetSnapshot(ctx, node, snap); err != nil {
			t.Fatal(err)
		}
	}

	svidFor := func(sa string) *x509svid.SVID {
		id, _ := ca.WorkloadID(td, "default", sa)
		key, csr := newCSR(t)
		chain, err := authority.SignCSR(csr, id)
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	}
	cpID, _ := ca.WorkloadID(td, SystemNamespace, ControlPlaneServiceAccount)
	dial := func(svid *x509svid.SVID, useTLS bool) *grpc.ClientConn {
		creds := insecure.NewCredentials()
		if useTLS {
			var tc *tls.Config
			if svid != nil {
				tc = tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(cpID))
			} else {
				tc = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(cpID))
			}
			tc.MinVersion = tls.VersionTLS13
			creds = credentials.NewTLS(tc)
		}
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	node := func(id, workload string) *corev3.Node {
		n := &corev3.Node{Id: id}
		if workload != "" {
			md, _ := structpb.NewStruct(map[string]any{xds.MetadataWorkload: workload})
			n.Metadata = md
		}
		return n
	}
	// ask opens an ADS stream, sends the requests and returns the first
	// response or the stream's error.
	ask := func(conn *grpc.ClientConn, nodes ...*corev3.Node) (*discovery.DiscoveryResponse, error) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			return nil, err
		}
		var resp *discovery.DiscoveryResponse
		for i, n := range nodes {
			if err := stream.Send(&discovery.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType,
				VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
				return nil, err
			}
			if resp, err = stream.Recv(); err != nil {
				return nil, err
			}
			if i == len(nodes)-1 {
				break
			}
		}
		return resp, nil
	}

	web, db := svidFor("web"), svidFor("db")
	if resp, err := ask(dial(web, true), node("web-1.default", "default/web-1")); err != nil || len(resp.GetResources()) != 1 {
		t.Errorf("web proxy with web svid: %v %v", resp, err)
	}
	if resp, err := ask(dial(nil, true), node("proxyless", "")); err != nil || len(resp.GetResources()) != 1 {
		t.Errorf("proxyless over tls without certificate: %v %v", resp, err)
	}
	if resp, err := ask(dial(nil, false), node("proxyless", "")); err != nil || len(resp.GetResources()) != 1 {
		t.Errorf("proxyless over loopback plaintext: %v %v", resp, err)
	}
	for _, tc := range []struct {
		name  string
		conn  *grpc.ClientConn
		nodes []*corev3.Node
		want  string
	}{
		{"no certificate", dial(nil, true), []*corev3.Node{node("web-1.default", "default/web-1")}, "client certificate"},
		{"plaintext", dial(nil, false), []*corev3.Node{node("web-1.default", "default/web-1")}, "client certificate"},
		{"another service's svid", dial(db, true), []*corev3.Node{node("web-1.default", "default/web-1")}, `service account "db", workload default/web-1 runs as "web"`},
		{"unknown workload", dial(web, true), []*corev3.Node{node("web-9.default", "default/web-9")}, "does not exist"},
		{"another namespace", dial(web, true), []*corev3.Node{node("web-1.prod", "prod/web-1")}, `namespace "default"`},
		{"switch workload mid-stream", dial(web, true), []*corev3.Node{node("web-1.default", "default/web-1"), node("web-1.default", "default/db-1")}, `runs as "db"`},
	} {
		_, err := ask(tc.conn, tc.nodes...)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("%s: %v, want PermissionDenied naming %q", tc.name, err, tc.want)
		}
	}
	for reason, want := range map[string]float64{
		xds.AuthNoCertificate: 2, xds.AuthIdentityMismatch: 3, xds.AuthWorkloadNotFound: 1,
	} {
		if got := gathered(t, metrics, "verge_xds_auth_refusals_total", reason); got != want {
			t.Errorf("verge_xds_auth_refusals_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	refusals := prometheus.NewRegistry()
	refusals.MustRegister(refused)
	if mfs, _ := refusals.Gather(); len(mfs) != 0 {
		t.Errorf("connections refused at the listener: %v", mfs)
	}
}

func gathered(t *testing.T, g prometheus.Gatherer, name, reason string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}
