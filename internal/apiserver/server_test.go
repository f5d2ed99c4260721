package apiserver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/store/bolt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var clock = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

type env struct {
	t   *testing.T
	url string
	st  *bolt.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiserver.New(st, logger, apiserver.WithClock(func() time.Time { return clock }))
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return &env{t: t, url: hs.URL, st: st}
}

// do sends a request and returns the status code and the decoded JSON body.
func (e *env) do(method, path, contentType, body string) (int, map[string]any) {
	e.t.Helper()
	code, raw := e.doRaw(method, path, contentType, body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		e.t.Fatalf("%s %s: decode response %q: %v", method, path, raw, err)
	}
	return code, m
}

func (e *env) doRaw(method, path, contentType, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, raw
}

func field(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}

func rv(t *testing.T, m map[string]any) int64 {
	t.Helper()
	s, _ := field(m, "metadata", "resourceVersion").(string)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q: %v", s, err)
	}
	return n
}

const (
	svcPath  = "/apis/verge.dev/v1alpha1/namespaces/default/services"
	svcYAML  = "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n"
	svcYAML2 = "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 8080\n"
)

func TestCRUD(t *testing.T) {
	tests := []struct {
		name     string
		path     string // list path in namespace "default"
		allPath  string
		listKind string
		body     string // YAML of an object named "x"
		changed  string // the same object with another spec
	}{
		{
			name: "service", path: svcPath, allPath: "/apis/verge.dev/v1alpha1/services", listKind: "ServiceList",
			body:    "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80}]}\n",
			changed: "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 81}]}\n",
		},
		{
			name: "workload", path: "/apis/verge.dev/v1alpha1/namespaces/default/workloads",
			allPath: "/apis/verge.dev/v1alpha1/workloads", listKind: "WorkloadList",
			body:    "apiVersion: verge.dev/v1alpha1\nkind: Workload\nmetadata: {name: x, labels: {app: x}}\nspec: {address: 10.0.0.1, ports: [{port: 8080}]}\n",
			changed: "apiVersion: verge.dev/v1alpha1\nkind: Workload\nmetadata: {name: x, labels: {app: x}}\nspec: {address: 10.0.0.2, ports: [{port: 8080}]}\n",
		},
		{
			name: "httproute", path: "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes",
			allPath: "/apis/gateway.networking.k8s.io/v1/httproutes", listKind: "HTTPRouteList",
			body:    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  parentRefs: [{name: web, kind: Service, group: \"\", port: 80}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n",
			changed: "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  parentRefs: [{name: web, kind: Service, group: \"\", port: 80}]\n  rules: [{backendRefs: [{name: web2, port: 80}]}]\n",
		},
		{
			name: "grpcroute", path: "/apis/gateway.networking.k8s.io/v1/namespaces/default/grpcroutes",
			allPath: "/apis/gateway.networking.k8s.io/v1/grpcroutes", listKind: "GRPCRouteList",
			body:    "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: x}\nspec:\n  parentRefs: [{name: web, port: 9000}]\n  rules: [{backendRefs: [{name: web, port: 9000}]}]\n",
			changed: "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: x}\nspec:\n  parentRefs: [{name: web, port: 9000}]\n  rules: [{backendRefs: [{name: web2, port: 9000}]}]\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			code, created := e.do("POST", tc.path, "application/yaml", tc.body)
			if code != http.StatusCreated {
				t.Fatalf("create: code %d, body %v", code, created)
			}
			meta := created["metadata"].(map[string]any)
			if meta["uid"] == "" || meta["generation"] != float64(1) || meta["creationTimestamp"] != "2026-05-01T12:00:00Z" || meta["namespace"] != "default" {
				t.Errorf("create: server-set metadata wrong: %v", meta)
			}
			if code, body := e.do("POST", tc.path, "application/yaml", tc.body); code != http.StatusConflict || body["reason"] != "AlreadyExists" {
				t.Errorf("create again: code %d, body %v; want 409 AlreadyExists", code, body)
			}
			code, got := e.do("GET", tc.path+"/x", "", "")
			if code != http.StatusOK {
				t.Fatalf("get: code %d", code)
			}
			if diff := cmp.Diff(created, got); diff != "" {
				t.Errorf("get differs from create (-create +get):\n%s", diff)
			}

			code, replaced := e.do("PUT", tc.path+"/x", "", tc.changed)
			if code != http.StatusOK {
				t.Fatalf("replace: code %d, body %v", code, replaced)
			}
			if field(replaced, "metadata", "uid") != meta["uid"] || field(replaced, "metadata", "generation") != float64(2) || rv(t, replaced) <= rv(t, created) {
				t.Errorf("replace: metadata %v, created %v", replaced["metadata"], meta)
			}
			// Applying the same object again changes nothing, not even the resourceVersion.
			if _, again := e.do("PUT", tc.path+"/x", "", tc.changed); rv(t, again) != rv(t, replaced) {
				t.Errorf("no-op replace: resourceVersion %d, want %d", rv(t, again), rv(t, replaced))
			}

			for _, p := range []string{tc.path, tc.allPath} {
				code, list := e.do("GET", p, "", "")
				items, _ := list["items"].([]any)
				if code != http.StatusOK || list["kind"] != tc.listKind || len(items) != 1 || field(list, "metadata", "resourceVersion") == "" {
					t.Errorf("list %s: code %d, body %v", p, code, list)
				}
			}

			if code, body := e.do("DELETE", tc.path+"/x", "", ""); code != http.StatusOK {
				t.Errorf("delete: code %d, body %v", code, body)
			}
			if code, body := e.do("GET", tc.path+"/x", "", ""); code != http.StatusNotFound || body["reason"] != "NotFound" {
				t.Errorf("get after delete: code %d, body %v", code, body)
			}
			if code, _ := e.do("DELETE", tc.path+"/x", "", ""); code != http.StatusNotFound {
				t.Errorf("delete again: code %d, want 404", code)
			}
		})
	}
}

func TestInvalid(t *testing.T) {
	e := newEnv(t)
	body := `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"web"},
		"spec":{"ports":[{"port":70000,"targetPort":8080},{"port":80,"protocol":"SMTP"}]}}`
	code, raw := e.doRaw("POST", svcPath, "application/json", body)
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("code %d, body %s", code, raw)
	}
	var got metav1.Status
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   "Failure",
		Reason:   "Invalid",
		Code:     422,
		Message: `Service "web" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535; ` +
			`spec.ports[1].protocol: Unsupported value: "SMTP": supported values: "HTTP", "HTTP2", "GRPC", "TCP"`,
		Details: &metav1.StatusDetails{Name: "web", Group: "verge.dev", Kind: "Service", Causes: []metav1.StatusCause{
			{Type: "FieldValueInvalid", Field: "spec.ports[0].port", Message: "Invalid value: 70000: must be between 1 and 65535"},
			{Type: "FieldValueNotSupported", Field: "spec.ports[1].protocol", Message: `Unsupported value: "SMTP": supported values: "HTTP", "HTTP2", "GRPC", "TCP"`},
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
	if code, _ := e.do("GET", svcPath+"/web", "", ""); code != http.StatusNotFound {
		t.Errorf("get after 422: code %d, want 404 (nothing stored)", code)
	}
	if kvs, _, err := e.st.List(t.Context(), "/"); err != nil || len(kvs) != 0 {
		t.Errorf("store holds %d keys after 422 (err %v)", len(kvs), err)
	}
}

func TestDryRun(t *testing.T) {
	e := newEnv(t)
	code, body := e.do("POST", svcPath+"?dryRun=All", "", svcYAML)
	if code != http.StatusCreated || field(body, "spec", "selector", "app") != "web" {
		t.Fatalf("dry-run create: code %d, body %v (want defaults applied)", code, body)
	}
	if code, _ := e.do("GET", svcPath+"/web", "", ""); code != http.StatusNotFound {
		t.Fatalf("dry-run create stored the object: get code %d", code)
	}
	_, created := e.do("PUT", svcPath+"/web", "", svcYAML)
	code, body = e.do("PUT", svcPath+"/web?dryRun=All", "", svcYAML2)
	if code != http.StatusOK || field(body, "metadata", "generation") != float64(2) {
		t.Fatalf("dry-run replace: code %d, body %v", code, body)
	}
	_, got := e.do("GET", svcPath+"/web", "", "")
	if diff := cmp.Diff(created, got); diff != "" {
		t.Errorf("dry-run replace changed the stored object (-before +after):\n%s", diff)
	}
	if code, _ := e.do("DELETE", svcPath+"/web?dryRun=All", "", ""); code != http.StatusOK {
		t.Errorf("dry-run delete: code %d", code)
	}
	if code, _ := e.do("GET", svcPath+"/web", "", ""); code != http.StatusOK {
		t.Errorf("dry-run delete removed the object: get code %d", code)
	}
}

func TestConflict(t *testing.T) {
	e := newEnv(t)
	_, created := e.do("POST", svcPath, "", svcYAML)
	stale := rv(t, created)
	withRV := func(rv int64, port int) string {
		return `{"metadata":{"name":"web","resourceVersion":"` + strconv.FormatInt(rv, 10) + `"},"spec":{"ports":[{"port":` + strconv.Itoa(port) + `}]}}`
	}
	code, updated := e.do("PUT", svcPath+"/web", "application/json", withRV(stale, 81))
	if code != http.StatusOK {
		t.Fatalf("conditional update with current resourceVersion: code %d, body %v", code, updated)
	}
	if code, body := e.do("PUT", svcPath+"/web", "application/json", withRV(stale, 82)); code != http.StatusConflict || body["reason"] != "Conflict" {
		t.Errorf("update with stale resourceVersion: code %d, body %v; want 409 Conflict", code, body)
	}
	if code, body := e.do("DELETE", svcPath+"/web?resourceVersion="+strconv.FormatInt(stale, 10), "", ""); code != http.StatusConflict {
		t.Errorf("delete with stale resourceVersion: code %d, body %v; want 409", code, body)
	}
	if code, _ := e.do("DELETE", svcPath+"/web?resourceVersion="+strconv.FormatInt(rv(t, updated), 10), "", ""); code != http.StatusOK {
		t.Errorf("delete with current resourceVersion: code %d", code)
	}
	if code, _ := e.do("PUT", svcPath+"/web", "application/json", withRV(stale, 82)); code != http.StatusNotFound {
		t.Errorf("conditional update of a missing object: code %d, want 404", code)
	}
}

func TestBodies(t *testing.T) {
	tests := []struct {
		name, method, path, contentType, body string
	}{
		{"json", "POST", svcPath, "application/json", `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}}`},
		{"json sniffed", "POST", svcPath, "", `{"metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}}`},
		{"yaml", "POST", svcPath, "application/yaml", svcYAML},
		{"yaml sniffed, type filled from the path", "PUT", svcPath + "/web", "text/plain", "metadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n"},
		{"yaml with a leading separator and comment", "PUT", svcPath + "/web", "", "# web\n---\n" + svcYAML},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			code, body := e.do(tc.method, tc.path, tc.contentType, tc.body)
			if code != http.StatusCreated {
				t.Fatalf("code %d, body %v", code, body)
			}
			if field(body, "kind") != "Service" || field(body, "metadata", "name") != "web" || field(body, "spec", "ports") == nil {
				t.Errorf("body %v", body)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	tests := []struct {
		name, method, path, body string
		wantCode                 int
		wantReason               string
		wantMessage              string // substring
	}{
		{"name differs from path", "PUT", svcPath + "/other", svcYAML, 400, "BadRequest", `metadata.name "web" does not match the path's name "other"`},
		{"namespace differs from path", "POST", "/apis/verge.dev/v1alpha1/namespaces/prod/services",
			"metadata: {name: web, namespace: default}\nspec: {ports: [{port: 80}]}\n", 400, "BadRequest", `metadata.namespace "default" does not match the path's namespace "prod"`},
		{"kind differs from path", "POST", "/apis/verge.dev/v1alpha1/namespaces/default/workloads", svcYAML, 400, "BadRequest", `kind "Service" does not match`},
		{"apiVersion differs from path", "POST", svcPath, "apiVersion: verge.dev/v2\n" + strings.SplitN(svcYAML, "\n", 2)[1], 400, "BadRequest", `apiVersion "verge.dev/v2" does not match`},
		{"garbage", "POST", svcPath, "\x00\x01 not: [yaml", 400, "BadRequest", "decode"},
		{"json garbage", "POST", svcPath, "{not json", 400, "BadRequest", "decode"},
		{"a list, not an object", "POST", svcPath, "- a\n- b\n", 400, "BadRequest", "decode"},
		{"empty", "POST", svcPath, "", 400, "BadRequest", "empty body"},
		{"two documents", "POST", svcPath, svcYAML + "---\n" + svcYAML2, 400, "BadRequest", "several YAML documents"},
		{"unknown field", "POST", svcPath, svcYAML + "  color: red\n", 400, "BadRequest", `unknown field "color"`},
		{"oversize", "POST", svcPath, svcYAML + "# " + strings.Repeat("x", apiserver.MaxBodyBytes) + "\n", 413, "RequestEntityTooLarge", "too large"},
		{"unknown resource", "GET", "/apis/verge.dev/v1alpha1/namespaces/default/gadgets", "", 404, "NotFound", `"gadgets"`},
		{"bad dryRun", "POST", svcPath + "?dryRun=Some", svcYAML, 400, "BadRequest", "dryRun"},
		{"bad resourceVersion", "PUT", svcPath + "/web", `{"metadata":{"name":"web","resourceVersion":"abc"},"spec":{"ports":[{"port":80}]}}`, 400, "BadRequest", "resourceVersion"},
		{"unsupported method", "PATCH", svcPath + "/web", svcYAML, 405, "MethodNotAllowed", "PATCH"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			code, body := e.do(tc.method, tc.path, "", tc.body)
			msg, _ := body["message"].(string)
			if code != tc.wantCode || body["reason"] != tc.wantReason || body["kind"] != "Status" || !strings.Contains(msg, tc.wantMessage) {
				t.Errorf("got %d %v %q, want %d %s containing %q", code, body["reason"], msg, tc.wantCode, tc.wantReason, tc.wantMessage)
			}
			if kvs, _, err := e.st.List(t.Context(), "/"); err != nil || len(kvs) != 0 {
				t.Errorf("store holds %d keys after a refused request (err %v)", len(kvs), err)
			}
		})
	}
}

func TestDiscovery(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/apis", "/apis/"} {
		code, raw := e.doRaw("GET", p, "", "")
		var d apiserver.Discovery
		if err := json.Unmarshal(raw, &d); err != nil || code != http.StatusOK {
			t.Fatalf("GET %s: code %d, err %v", p, code, err)
		}
		var got []string
		for _, r := range d.Resources {
			got = append(got, r.Group+"/"+r.Version+"/"+r.Plural+"="+r.Kind+"("+strings.Join(r.ShortNames, ",")+")")
		}
		want := []string{
			"verge.dev/v1alpha1/services=Service(svc)",
			"verge.dev/v1alpha1/workloads=Workload(wl)",
			"gateway.networking.k8s.io/v1/httproutes=HTTPRoute(hr)",
			"gateway.networking.k8s.io/v1/grpcroutes=GRPCRoute(gr)",
			"verge.dev/v1alpha1/destinationpolicies=DestinationPolicy(dp)",
			"verge.dev/v1alpha1/faultinjections=FaultInjection(fi)",
			"verge.dev/v1alpha1/meshtlses=MeshTLS(mtls)",
			"verge.dev/v1alpha1/authorizationpolicies=AuthorizationPolicy(ap)",
			"verge.dev/v1alpha1/telemetries=Telemetry(tel)",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("GET %s (-want +got):\n%s", p, diff)
		}
	}
}

// watchStream reads a watch response line by line.
type watchStream struct {
	t      *testing.T
	sc     *bufio.Scanner
	cancel context.CancelFunc
	body   io.Closer
}

func (e *env) watch(path string) *watchStream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.t.Context())
	req, err := http.NewRequestWithContext(ctx, "GET", e.url+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("watch %s: code %d", path, resp.StatusCode)
	}
	w := &watchStream{t: e.t, sc: bufio.NewScanner(resp.Body), cancel: cancel, body: resp.Body}
	e.t.Cleanup(w.close)
	return w
}

func (w *watchStream) close() { w.cancel(); w.body.Close() }

// next returns the next event as "TYPE name generation" or "ERROR code".
func (w *watchStream) next() string {
	w.t.Helper()
	if !w.sc.Scan() {
		w.t.Fatalf("watch ended: %v", w.sc.Err())
	}
	var ev struct {
		Type   string         `json:"type"`
		Object map[string]any `json:"object"`
	}
	if err := json.Unmarshal(w.sc.Bytes(), &ev); err != nil {
		w.t.Fatalf("decode event %q: %v", w.sc.Bytes(), err)
	}
	if ev.Type == "ERROR" {
		return ev.Type + " " + strconv.Itoa(int(ev.Object["code"].(float64))) + " " + ev.Object["reason"].(string)
	}
	return ev.Type + " " + field(ev.Object, "metadata", "name").(string) + " " + strconv.Itoa(int(field(ev.Object, "metadata", "generation").(float64)))
}

func TestWatch(t *testing.T) {
	e := newEnv(t)
	e.do("PUT", svcPath+"/a", "", "spec: {ports: [{port: 80}]}")
	w := e.watch(svcPath + "?watch=1")
	all := e.watch("/apis/verge.dev/v1alpha1/services?watch=1")
	if got := w.next(); got != "ADDED a 1" {
		t.Errorf("initial event %q, want ADDED a 1", got)
	}
	_, b := e.do("POST", svcPath, "", "metadata: {name: b}\nspec: {ports: [{port: 80}]}")
	e.do("PUT", svcPath+"/b", "", "spec: {ports: [{port: 81}]}")
	e.do("POST", "/apis/verge.dev/v1alpha1/namespaces/other/services", "", "metadata: {name: c}\nspec: {ports: [{port: 80}]}")
	e.do("DELETE", svcPath+"/b", "", "")
	e.do("DELETE", svcPath+"/a", "", "")

	want := []string{"ADDED b 1", "MODIFIED b 2", "DELETED b 2", "DELETED a 1"}
	var got []string
	for range want {
		got = append(got, w.next())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("namespace watch (-want +got):\n%s", diff)
	}
	wantAll := []string{"ADDED a 1", "ADDED b 1", "MODIFIED b 2", "ADDED c 1", "DELETED b 2", "DELETED a 1"}
	got = nil
	for range wantAll {
		got = append(got, all.next())
	}
	if diff := cmp.Diff(wantAll, got); diff != "" {
		t.Errorf("all-namespace watch (-want +got):\n%s", diff)
	}

	// Resuming after b's creation replays what followed.
	resumed := e.watch(svcPath + "?watch=1&resourceVersion=" + strconv.FormatInt(rv(t, b), 10))
	got = nil
	for range 3 {
		got = append(got, resumed.next())
	}
	if diff := cmp.Diff(want[1:], got); diff != "" {
		t.Errorf("resumed watch (-want +got):\n%s", diff)
	}
}

func TestWatchCompacted(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	path := filepath.Join(t.TempDir(), "verge.db")
	st, err := bolt.Open(path, logger)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if _, err := st.Create(t.Context(), "/verge.dev/services/default/"+name, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// A reopened bolt store holds no history: watching from revision 1 is too old.
	st, err = bolt.Open(path, logger)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(apiserver.New(st, logger).Handler())
	t.Cleanup(func() { hs.Close(); st.Close() })
	e := &env{t: t, url: hs.URL, st: st}
	w := e.watch(svcPath + "?watch=1&resourceVersion=1")
	if got := w.next(); got != "ERROR 410 Expired" {
		t.Errorf("event %q, want ERROR 410 Expired", got)
	}
	if w.sc.Scan() {
		t.Errorf("stream continued after ERROR: %q", w.sc.Text())
	}
}

// stuckWriter is a client connection that stops reading: a write blocks
// until the write deadline passes (and for good without one, as a real
// connection would).
type stuckWriter struct {
	header   http.Header
	mu       sync.Mutex
	deadline time.Time
	blocked  chan struct{} // closed when a write first blocks
	once     sync.Once
}

func (w *stuckWriter) Header() http.Header { return w.header }
func (w *stuckWriter) WriteHeader(int)     {}
func (w *stuckWriter) Flush() error        { return nil }

func (w *stuckWriter) SetWriteDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deadline = t
	return nil
}

func (w *stuckWriter) Write([]byte) (int, error) {
	w.once.Do(func() { close(w.blocked) })
	w.mu.Lock()
	d := w.deadline
	w.mu.Unlock()
	if d.IsZero() {
		select {} // what a stuck client does to a handler without deadlines
	}
	time.Sleep(time.Until(d))
	return 0, os.ErrDeadlineExceeded
}

// TestWatchDropsStuckClient: a watcher that stops reading is dropped after
// the write timeout, so its handler and store watch do not linger.
func TestWatchDropsStuckClient(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Create(t.Context(), "/verge.dev/services/default/a", []byte(`{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"a","namespace":"default"},"spec":{"ports":[{"port":80}]}}`)); err != nil {
		t.Fatal(err)
	}
	h := apiserver.New(st, logger, apiserver.WithWatchWriteTimeout(50*time.Millisecond)).Handler()
	w := &stuckWriter{header: http.Header{}, blocked: make(chan struct{})}
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, svcPath+"?watch=1", nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(w, req)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watch handler still blocked on a client that stopped reading")
	}
	select {
	case <-w.blocked:
	default:
		t.Error("the handler returned without writing")
	}
}
