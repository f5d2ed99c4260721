package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
)

type fakeSource struct {
	svcs    []registry.ServiceStatus
	wls     []registry.WorkloadStatus
	proxies []xds.ProxyStatus
}

func (f fakeSource) Status() ([]registry.ServiceStatus, []registry.WorkloadStatus) {
	return f.svcs, f.wls
}
func (f fakeSource) ProxyStatus() []xds.ProxyStatus { return f.proxies }

func TestDashboard(t *testing.T) {
	src := fakeSource{
		svcs: []registry.ServiceStatus{{
			Namespace: "default", Name: "web",
			Ports:     []v1alpha1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: v1alpha1.ProtocolHTTP}},
			Endpoints: 3, Healthy: 2,
		}},
		wls: []registry.WorkloadStatus{
			{Namespace: "default", Name: "web-1", Address: "10.0.0.1", Health: translate.HealthHealthy, Proxied: true, ProxyConnected: true},
			{Namespace: "default", Name: "db-<1>", Address: "10.0.0.9", Health: translate.HealthUnknown},
		},
		proxies: []xds.ProxyStatus{{
			ID: "web-1.default", Namespace: "default", Workload: "web-1", Connected: true, ConnectedAt: time.Now(),
			Types: map[string]xds.TypeStatus{
				resource.ListenerType: {SentVersion: "v2", AckedVersion: "v1", NACK: "listener outbound:1: bad port"},
				resource.ClusterType:  {SentVersion: "c1", AckedVersion: "c1"},
			},
		}},
	}
	srv := httptest.NewServer(Handler(src))
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		name, method, path string
		wantCode           int
		want               []string
	}{
		{
			name: "page", method: http.MethodGet, path: "/", wantCode: http.StatusOK,
			want: []string{
				`<meta http-equiv="refresh" content="2">`,
				"web.default.mesh", "80&rarr;8080/HTTP", ">2/3<",
				"default/web-1", "10.0.0.1", ">healthy<", ">connected<",
				"default/db-&lt;1&gt;", ">unknown<",
				"web-1.default", "<code>c1</code>", "<code>v1</code>", "LDS: listener outbound:1: bad port",
			},
		},
		{name: "other path", method: http.MethodGet, path: "/nope", wantCode: http.StatusNotFound},
		{name: "post", method: http.MethodPost, path: "/", wantCode: http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status = %d, want %d\n%s", resp.StatusCode, tc.wantCode, body)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(body), w) {
					t.Errorf("page lacks %q\n%s", w, body)
				}
			}
		})
	}
}

func TestDashboardEmpty(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler(fakeSource{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK || strings.Count(rec.Body.String(), ">none<") != 3 {
		t.Errorf("empty dashboard: %d\n%s", rec.Code, rec.Body)
	}
}
