package cli

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/store/bolt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var created = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

const proxiesJSON = `[
{"id":"web-1.default","namespace":"default","workload":"web-1","connected":true,"connectedAt":"2026-05-01T12:00:00Z",
 "types":{"type.googleapis.com/envoy.config.listener.v3.Listener":{"sentVersion":"4","ackedVersion":"4","nack":"","updatedAt":"2026-05-01T12:00:00Z"},
  "type.googleapis.com/envoy.config.cluster.v3.Cluster":{"sentVersion":"5","ackedVersion":"4","nack":"cluster web.default.mesh: bad lb policy","updatedAt":"2026-05-01T12:00:00Z"}}},
{"id":"api-1.default","namespace":"default","workload":"api-1","connected":false,"types":{}}]`

// server starts the real API on a bolt store, plus stand-ins for the
// control plane's other endpoints, and returns its URL.
func server(t *testing.T) string {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/apis/", apiserver.New(st, logger, apiserver.WithClock(func() time.Time { return created })).Handler())
	mux.HandleFunc("GET /api/v1/proxies", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, proxiesJSON) })
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"version":"v0.1.0"}`) })
	hs := httptest.NewServer(mux)
	t.Cleanup(func() {
		hs.Close()
		st.Close()
	})
	return hs.URL
}

// run executes verge with args against url and returns stdout, stderr and
// the error Execute returned.
func run(t *testing.T, url, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCommand("v0.0.1-test", &out, &errOut, strings.NewReader(stdin), func() time.Time { return created.Add(5 * time.Minute) })
	root.SetArgs(append([]string{"--server", url}, args...))
	err := root.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// mustRun is run for commands that must succeed.
func mustRun(t *testing.T, url, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := run(t, url, stdin, args...)
	if err != nil {
		t.Fatalf("verge %s: %s(stderr %q)", strings.Join(args, " "), FormatError(err), errOut)
	}
	return out
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const (
	servicesYAML = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
    targetPort: 8080
---
# the API, HTTP and gRPC
apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: api
spec:
  selector: {app: api, tier: back}
  ports:
  - port: 8080
  - port: 9000
    protocol: GRPC
`
	workloadsYAML = `apiVersion: verge.dev/v1alpha1
kind: Workload
metadata:
  name: web-1
  labels: {app: web}
spec:
  address: 10.0.0.1
  ports:
  - port: 8080
    inboundPort: 15006
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata:
  name: db
spec:
  address: 10.0.0.9
  serviceAccount: database
  ports:
  - port: 5432
`
	routeJSON = `{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"web-split"},
"spec":{"parentRefs":[{"group":"","kind":"Service","name":"web","port":80}],
"rules":[{"backendRefs":[{"name":"web","port":80,"weight":90}]},{"backendRefs":[{"name":"api","port":8080}]}]}}`
)

func applyDemo(t *testing.T, url string) {
	t.Helper()
	dir := writeFiles(t, map[string]string{
		"01-services.yaml": servicesYAML,
		"02-workloads.yml": workloadsYAML,
		"03-route.json":    routeJSON,
		"README.md":        "not a resource",
		"04-notes.txt":     "neither",
	})
	mustRun(t, url, "", "apply", "-f", dir)
}

func TestGetDestinationPolicies(t *testing.T) {
	url := server(t)
	const policies = `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: web-lb}
spec:
  targetRef: {name: web}
  loadBalancer: {policy: LeastRequest}
---
apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: api-grpc}
spec:
  targetRef: {group: verge.dev, kind: Service, name: api, port: 9000}
  loadBalancer: {}
`
	if diff := cmp.Diff("destinationpolicy/web-lb created\ndestinationpolicy/api-grpc created\n",
		mustRun(t, url, policies, "apply", "-f", "-")); diff != "" {
		t.Errorf("apply (-want +got):\n%s", diff)
	}
	want := `NAME       TARGET             POLICY         AGE
api-grpc   service/api:9000   RoundRobin     5m
web-lb     service/web        LeastRequest   5m
`
	for _, args := range [][]string{{"get", "destinationpolicies"}, {"get", "dp"}} {
		if diff := cmp.Diff(want, mustRun(t, url, "", args...)); diff != "" {
			t.Errorf("verge %v (-want +got):\n%s", args, diff)
		}
	}
	want = `NAME                       TARGET        POLICY         AGE
destinationpolicy/web-lb   service/web   LeastRequest   5m
`
	if _, _, err := run(t, url, "", "delete", "dp", "api-grpc"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if diff := cmp.Diff(want, mustRun(t, url, "", "get", "all")); diff != "" {
		t.Errorf("get all (-want +got):\n%s", diff)
	}
}

func TestApply(t *testing.T) {
	url := server(t)
	dir := writeFiles(t, map[string]string{
		"01-services.yaml": servicesYAML,
		"02-workloads.yml": workloadsYAML,
		"03-route.json":    routeJSON,
		"README.md":        "not a resource",
	})
	want := `service/web created
service/api created
workload/web-1 created
workload/db created
httproute/web-split created
`
	if diff := cmp.Diff(want, mustRun(t, url, "", "apply", "-f", dir)); diff != "" {
		t.Errorf("first apply (-want +got):\n%s", diff)
	}
	want = strings.ReplaceAll(want, "created", "unchanged")
	if diff := cmp.Diff(want, mustRun(t, url, "", "apply", "-f", dir)); diff != "" {
		t.Errorf("second apply (-want +got):\n%s", diff)
	}

	changed := strings.Replace(servicesYAML, "port: 80\n", "port: 81\n", 1)
	want = "service/web configured\nservice/api unchanged\n"
	if diff := cmp.Diff(want, mustRun(t, url, changed, "apply", "-f", "-")); diff != "" {
		t.Errorf("apply from stdin (-want +got):\n%s", diff)
	}

	dryChange := strings.Replace(servicesYAML, "port: 80\n", "port: 82\n", 1)
	want = "service/web configured (server dry run)\nservice/api unchanged (server dry run)\n"
	if diff := cmp.Diff(want, mustRun(t, url, dryChange, "apply", "--dry-run", "-f", "-")); diff != "" {
		t.Errorf("dry-run apply (-want +got):\n%s", diff)
	}
	if out := mustRun(t, url, "", "get", "svc", "web", "-o", "json"); !strings.Contains(out, `"port": 81`) {
		t.Errorf("dry run changed the stored service:\n%s", out)
	}

	if out := mustRun(t, url, strings.Replace(servicesYAML, "name: web\n", "name: web\n  namespace: prod\n", 1), "apply", "-f", "-"); !strings.HasPrefix(out, "service/web created\n") {
		t.Errorf("apply to another namespace: %q", out)
	}
}

func TestApplyInvalid(t *testing.T) {
	url := server(t)
	bad := servicesYAML + `---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: broken
spec:
  ports:
  - port: 70000
    targetPort: 80
  - port: 81
    protocol: SMTP
`
	dir := writeFiles(t, map[string]string{"svc.yaml": bad})
	out, _, err := run(t, url, "", "apply", "-f", filepath.Join(dir, "svc.yaml"))
	if err == nil {
		t.Fatal("apply of an invalid file succeeded")
	}
	if code := ExitCode(err); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	want := "error: " + filepath.Join(dir, "svc.yaml") + `: document 3: Service "broken" is invalid:
  spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535
  spec.ports[1].protocol: Unsupported value: "SMTP": supported values: "HTTP", "HTTP2", "GRPC", "TCP"
`
	if diff := cmp.Diff(want, FormatError(err)); diff != "" {
		t.Errorf("error (-want +got):\n%s", diff)
	}
	// The valid objects of the file are applied; the invalid one is not.
	if out != "service/web created\nservice/api created\n" {
		t.Errorf("output %q", out)
	}
	if _, _, err := run(t, url, "", "get", "svc", "broken"); err == nil || !strings.Contains(err.Error(), `services "broken" not found`) {
		t.Errorf("get broken: %v, want not found", err)
	}

	// A decoding error names the file and document, and nothing is sent.
	_, _, err = run(t, url, servicesYAML+"---\napiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, colour: red}]}\n", "apply", "-f", "-")
	if got := FormatError(err); got != "error: stdin: document 3: spec.ports[0]: unknown field \"colour\"\n" {
		t.Errorf("decode error %q", got)
	}
}

func TestGet(t *testing.T) {
	url := server(t)
	applyDemo(t, url)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"services", []string{"get", "services"}, `NAME   PORTS                 SELECTOR            AGE
api    8080/HTTP,9000/GRPC   app=api,tier=back   5m
web    80:8080/HTTP          app=web             5m
`},
		{"workloads by short name", []string{"get", "wl"}, `NAME    ADDRESS    PORTS         SERVICEACCOUNT   AGE
db      10.0.0.9   5432          database         5m
web-1   10.0.0.1   8080(15006)   default          5m
`},
		{"one route", []string{"get", "httproute", "web-split"}, `NAME        PARENTS   RULES   AGE
web-split   web:80    2       5m
`},
		{"all namespaces", []string{"get", "svc", "-A"}, `NAMESPACE   NAME   PORTS                 SELECTOR            AGE
default     api    8080/HTTP,9000/GRPC   app=api,tier=back   5m
default     web    80:8080/HTTP          app=web             5m
`},
		{"all", []string{"get", "all"}, `NAME          PORTS                 SELECTOR            AGE
service/api   8080/HTTP,9000/GRPC   app=api,tier=back   5m
service/web   80:8080/HTTP          app=web             5m

NAME             ADDRESS    PORTS         SERVICEACCOUNT   AGE
workload/db      10.0.0.9   5432          database         5m
workload/web-1   10.0.0.1   8080(15006)   default          5m

NAME                  PARENTS   RULES   AGE
httproute/web-split   web:80    2       5m
`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, mustRun(t, url, "", tc.args...)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	// -o yaml shows the stored object with defaults and server-set metadata.
	out := mustRun(t, url, "", "get", "service", "web", "-o", "yaml")
	for _, want := range []string{"apiVersion: verge.dev/v1alpha1", "kind: Service", "resourceVersion: \"", "generation: 1",
		"creationTimestamp: \"2026-05-01T12:00:00Z\"", "name: http-80", "protocol: HTTP", "selector:\n    app: web", "uid: "} {
		if !strings.Contains(out, want) {
			t.Errorf("get -o yaml lacks %q:\n%s", want, out)
		}
	}
	out = mustRun(t, url, "", "get", "svc", "-o", "json")
	if !strings.Contains(out, `"kind": "List"`) || strings.Count(out, `"kind": "Service"`) != 2 {
		t.Errorf("get -o json:\n%s", out)
	}

	if _, errOut, err := run(t, url, "", "get", "svc", "-n", "empty"); err != nil || errOut != "No resources found in empty namespace.\n" {
		t.Errorf("get in an empty namespace: %v, stderr %q", err, errOut)
	}
	_, _, err := run(t, url, "", "get", "svc", "nope")
	if got := FormatError(err); got != "error: services \"nope\" not found\n" || ExitCode(err) != 1 {
		t.Errorf("get missing: %q, exit %d", got, ExitCode(err))
	}
}

func TestUsageErrors(t *testing.T) {
	url := server(t)
	for _, args := range [][]string{
		{"get", "gadgets"},
		{"get"},
		{"get", "svc", "-o", "xml"},
		{"get", "svc", "--bogus"},
		{"delete", "svc"},
		{"apply"},
		{"describe", "svc"},
		{"nonsense"},
	} {
		_, _, err := run(t, url, "", args...)
		if ExitCode(err) != 2 {
			t.Errorf("verge %s: exit %d (%v), want 2", strings.Join(args, " "), ExitCode(err), err)
		}
	}
}

func TestDescribe(t *testing.T) {
	url := server(t)
	applyDemo(t, url)
	out := mustRun(t, url, "", "describe", "svc", "web")
	for _, want := range []string{
		"Name:             web\n", "Namespace:        default\n", "Kind:             Service (verge.dev/v1alpha1)\n",
		"Created:          2026-05-01T12:00:00Z (5m ago)\n", "Generation:       1\n",
		"Spec:\n  ports:\n  - name: http-80\n",
		"Workloads:\n  NAME    ADDRESS    ENDPOINTS\n  web-1   10.0.0.1   http-80=10.0.0.1:15006\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("describe svc web lacks %q:\n%s", want, out)
		}
	}
	if out := mustRun(t, url, "", "describe", "svc/api"); !strings.Contains(out, "Workloads: <none>\n") {
		t.Errorf("describe svc/api:\n%s", out)
	}
	if out := mustRun(t, url, "", "describe", "workload", "web-1"); !strings.Contains(out, "Services: web\n") {
		t.Errorf("describe workload web-1:\n%s", out)
	}
}

func TestDelete(t *testing.T) {
	url := server(t)
	applyDemo(t, url)
	if out := mustRun(t, url, "", "delete", "svc", "web"); out != "service \"web\" deleted\n" {
		t.Errorf("delete: %q", out)
	}
	_, _, err := run(t, url, "", "delete", "svc", "web")
	if got := FormatError(err); got != "error: services \"web\" not found\n" {
		t.Errorf("delete again: %q", got)
	}
	want := "workload \"web-1\" deleted\nworkload \"db\" deleted\n"
	if diff := cmp.Diff(want, mustRun(t, url, workloadsYAML, "delete", "-f", "-")); diff != "" {
		t.Errorf("delete -f (-want +got):\n%s", diff)
	}
	if _, errOut, _ := run(t, url, "", "get", "workloads"); errOut != "No resources found in default namespace.\n" {
		t.Errorf("workloads left: %q", errOut)
	}
}

func TestProxyStatus(t *testing.T) {
	url := server(t)
	want := `PROXY           NAMESPACE   CONNECTED   LDS   RDS   CDS      EDS
api-1.default   default     no          -     -     -        -
web-1.default   default     yes         4     -     4 NACK   -

web-1.default CDS NACK of version 5: cluster web.default.mesh: bad lb policy
`
	if diff := cmp.Diff(want, mustRun(t, url, "", "proxy-status")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestVersion(t *testing.T) {
	url := server(t)
	if got := mustRun(t, url, "", "version"); got != "Client Version: v0.0.1-test\nServer Version: v0.1.0\n" {
		t.Errorf("version: %q", got)
	}
	// An unreachable server is reported, not an error.
	hs := httptest.NewServer(http.NotFoundHandler())
	hs.Close()
	got := mustRun(t, hs.URL, "", "version")
	if !strings.HasPrefix(got, "Client Version: v0.0.1-test\nServer Version: unavailable (") {
		t.Errorf("version without server: %q", got)
	}
}
