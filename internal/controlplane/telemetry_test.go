package controlplane

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/telemetry"
)

// TestTelemetryReports runs the control plane and checks that a proxy's
// report is accepted only with the SVID of the workload it names, shows in
// the topology, and that the control plane's own metrics move.
func TestTelemetryReports(t *testing.T) {
	addrs, _ := startAddrs(t, Config{DataDir: t.TempDir(), CAPassphrase: passphrase, AdminToken: adminToken})
	plain := &http.Client{Timeout: waitFor}
	base := "http://" + addrs.API
	anon := cpClient{t: t, base: base, hc: plain}
	admin := cpClient{t: t, base: base, hc: plain, token: adminToken}
	if code, body := admin.do(http.MethodPut, workloadPath("default", "web-1"), workloadBody("web-1", "web")); code != http.StatusCreated {
		t.Fatalf("register web-1: %d %s", code, body)
	}
	bundlePEM := []byte(get(t, base+identity.BundlePath))
	tlsBase := "https://" + addrs.API
	web := cpClient{t: t, base: tlsBase, hc: tlsClient(t, bundlePEM, issue(t, admin, "default", "web"))}
	db := cpClient{t: t, base: tlsBase, hc: tlsClient(t, bundlePEM, issue(t, admin, "default", "db"))}

	lat := make([]uint64, len(telemetry.LatencyBuckets)+1)
	lat[4] = 7
	rep, _ := json.Marshal(telemetry.Report{Proxy: "web-1.default", Workload: "default/web-1", Service: "web", Namespace: "default",
		Start: time.Now().Add(-5 * time.Second), End: time.Now(),
		Edges: []telemetry.EdgeStats{{EdgeKey: telemetry.EdgeKey{Direction: telemetry.Outbound, Protocol: "http",
			Source: "web.default", Destination: "api.default"}, Requests: 7, Failures: 1, Latency: lat}}})

	for _, tc := range []struct {
		name string
		c    cpClient
		code int
		want string
	}{
		{"no certificate", anon, http.StatusUnauthorized, "client certificate"},
		{"admin token is no proxy", admin, http.StatusUnauthorized, "client certificate"},
		{"another identity", db, http.StatusForbidden, "runs as"},
		{"own identity", web, http.StatusOK, "{}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := tc.c.do(http.MethodPost, telemetry.ReportPath, string(rep))
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("POST report = %d %s, want %d with %q", code, body, tc.code, tc.want)
			}
		})
	}

	var topo telemetry.Topology
	if err := json.Unmarshal([]byte(get(t, base+telemetry.TopologyPath)), &topo); err != nil {
		t.Fatal(err)
	}
	if len(topo.Edges) != 1 || topo.Edges[0].Requests != 7 || topo.Edges[0].Failures != 1 {
		t.Errorf("topology edges = %+v, want web.default → api.default with 7 requests", topo.Edges)
	}
	var procs []telemetry.ProxyProcess
	if err := json.Unmarshal([]byte(get(t, base+telemetry.ProxiesPath)), &procs); err != nil || len(procs) != 1 {
		t.Errorf("proxies = %+v (%v), want web-1.default", procs, err)
	}

	for sample, want := range map[string]float64{
		`verge_telemetry_reports_total{result="accepted"}`:                                         1,
		`verge_telemetry_reports_total{result="refused"}`:                                          3,
		`verge_store_operations_total{op="update",result="ok"}`:                                    1, // the Workload PUT
		`verge_xds_connected_clients{kind="proxy"}`:                                                0,
		`verge_xds_pushes_total{type_url="type.googleapis.com/envoy.config.listener.v3.Listener"}`: 0,
		`verge_xds_push_latency_seconds_count`:                                                     0,
	} {
		if got := metric(t, anon, sample); got < want {
			t.Errorf("%s = %v, want at least %v", sample, got, want)
		}
	}
}
