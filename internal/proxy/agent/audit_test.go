package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/proxy"
	"verge.dev/verge/internal/xds/translate"
)

// syncBuffer is an io.Writer the test reads while the recorder writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeConfigCache translates yaml for workload ns/name and stores it as
// the xDS client's cache in dir, so the agent serves it at start with no
// control plane.
func writeConfigCache(t *testing.T, dir, doc, name string) {
	t.Helper()
	objs, err := v1alpha1.Decode([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var m translate.Mesh
	var wl *v1alpha1.Workload
	for _, o := range objs {
		v1alpha1.Default(o)
		if errs := v1alpha1.Validate(o); len(errs) > 0 {
			t.Fatalf("%s: %v", o.GetName(), errs)
		}
		m.Add(o)
		if w, ok := o.(*v1alpha1.Workload); ok && w.Name == name {
			wl = w
		}
	}
	res := translate.NewIndex(m).ForWorkload(wl)
	var buf bytes.Buffer
	add := func(typ string, msgs []proto.Message) {
		resp := &discoveryv3.DiscoveryResponse{VersionInfo: "1", TypeUrl: typ}
		for _, msg := range msgs {
			b, err := proto.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			resp.Resources = append(resp.Resources, &anypb.Any{TypeUrl: typ, Value: b})
		}
		if _, err := protodelim.MarshalTo(&buf, resp); err != nil {
			t.Fatal(err)
		}
	}
	add(resourcev3.ClusterType, msgs(res.Clusters))
	add(resourcev3.EndpointType, msgs(res.Endpoints))
	add(resourcev3.ListenerType, msgs(res.Listeners))
	add(resourcev3.RouteType, msgs(res.Routes))
	if err := os.WriteFile(filepath.Join(dir, "xds-cache.pb"), buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func msgs[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// TestAuditLogAndMetrics: a request denied by a CEL condition is refused
// with 403, written to the audit log handed to Run, and counted on the
// admin port's /stats/prometheus beside the proxy's own series.
func TestAuditLogAndMetrics(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer app.Close()
	appPort := app.Listener.Addr().(*net.TCPAddr).Port
	inbound := freePort(t)
	dir := t.TempDir()
	writeConfigCache(t, dir, fmt.Sprintf(`
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: default}
spec: {ports: [{port: 80, targetPort: %[1]d}], selector: {app: api}}
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: default, labels: {app: api}}
spec: {address: 127.0.0.1, ports: [{port: %[1]d, inboundPort: %[2]d}], proxy: {}}
---
apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: default}
spec:
  action: DENY
  rules: [{name: debug-header, cel: 'request.headers["x-debug"] == "1" && request.path.startsWith("/api/")'}]
`, appPort, inbound), "api-1")

	cp := &fakeControlPlane{}
	srv := httptest.NewServer(cp)
	defer srv.Close()
	audit := &syncBuffer{}
	cfg := Config{
		Server: srv.URL, XDSAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), Name: "api-1", Namespace: "default",
		Address: "127.0.0.1", AdminAddr: "127.0.0.1:0", DataDir: dir, AuditLog: audit,
		Proxy: proxy.Config{DrainTimeout: time.Second},
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, logger, func(a Addrs) { admin <- a.Admin }) }()
	adminAddr := <-admin

	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string, debug bool) int {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", inbound, path), nil)
		if err != nil {
			t.Fatal(err)
		}
		if debug {
			req.Header.Set("X-Debug", "1")
		}
		res, err := client.Do(req)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	waitFor(t, "the inbound listener to serve", func() bool { return get("/", false) == http.StatusOK })
	if code := get("/api/x", true); code != http.StatusForbidden {
		t.Errorf("GET /api/x with x-debug = %d, want 403", code)
	}
	if code := get("/other", true); code != http.StatusOK {
		t.Errorf("GET /other with x-debug = %d, want 200 (condition false)", code)
	}

	res, err := client.Get("http://" + adminAddr + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, m := range []string{
		`verge_authz_decisions_total{action="deny",listener="inbound:` + fmt.Sprint(appPort) + `",policy="default/no-debug/debug-header"} 1`,
		"verge_authz_audit_dropped_total 0",
		"verge_proxy_http_requests_total",
	} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/stats/prometheus lacks %s", m)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// Run closed the recorder: the line is written.
	lines := strings.Split(strings.TrimSpace(audit.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("audit log has %d lines, want 1:\n%s", len(lines), audit.String())
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &line); err != nil {
		t.Fatalf("audit line %q: %v", lines[0], err)
	}
	for k, want := range map[string]any{"decision": "deny", "policy": "default/no-debug", "rule": "debug-header", "path": "/api/x", "method": "GET"} {
		if line[k] != want {
			t.Errorf("audit %s = %v, want %v", k, line[k], want)
		}
	}
}

func TestOpenAuditLog(t *testing.T) {
	var out, errw bytes.Buffer
	if w, _, _ := openAuditLog("", &out, &errw); w != &errw {
		t.Error(`"" is not stderr`)
	}
	if w, _, _ := openAuditLog("-", &out, &errw); w != &out {
		t.Error(`"-" is not stdout`)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	w, closeFn, err := openAuditLog(path, &out, &errw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "x\n"); err != nil {
		t.Fatal(err)
	}
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("audit file: %v, mode %v, want 0600", err, fi.Mode())
	}
	if _, _, err := openAuditLog(filepath.Join(path, "nope"), &out, &errw); err == nil || !strings.HasPrefix(err.Error(), "--audit-log: ") {
		t.Errorf("openAuditLog(bad path) = %v, want an --audit-log error", err)
	}
}
