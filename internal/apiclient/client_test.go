package apiclient_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiclient"
	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/store/bolt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const proxiesJSON = `[{"id":"web-1.default","namespace":"default","workload":"web-1","connected":true,
"connectedAt":"2026-05-01T12:00:00Z","types":{"type.googleapis.com/envoy.config.cluster.v3.Cluster":
{"sentVersion":"3","ackedVersion":"2","nack":"cluster web: bad","updatedAt":"2026-05-01T12:01:00Z"}}}]`

func newClient(t *testing.T) *apiclient.Client {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api := apiserver.New(st, logger).Handler()
	mux.Handle("/apis/", api)
	mux.Handle("/apis", api)
	mux.HandleFunc("GET /api/v1/proxies", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(proxiesJSON))
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"version":"v9.9.9"}`))
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(func() {
		hs.Close()
		st.Close()
	})
	return apiclient.New(hs.URL+"/", hs.Client())
}

func service(name string, port int32) *v1alpha1.Service {
	return &v1alpha1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.ServiceSpec{Ports: []v1alpha1.ServicePort{{Port: port}}},
	}
}

var svcKind, _ = v1alpha1.KindByName("services")

func TestResources(t *testing.T) {
	c := newClient(t)
	ctx := t.Context()

	// Objects built in code need no TypeMeta or namespace.
	created, err := c.Create(ctx, service("web", 80))
	if err != nil {
		t.Fatal(err)
	}
	if created.GetNamespace() != "default" || created.GetResourceVersion() == "" || created.GetUID() == "" {
		t.Errorf("created metadata %+v", created)
	}
	if got := created.(*v1alpha1.Service).Spec.Selector; !cmp.Equal(got, map[string]string{"app": "web"}) {
		t.Errorf("defaulted selector %v", got)
	}
	if _, err := c.Create(ctx, service("web", 80)); !apiclient.IsAlreadyExists(err) {
		t.Errorf("create again: %v, want AlreadyExists", err)
	}

	got, err := c.Get(ctx, svcKind, "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(created, got); diff != "" {
		t.Errorf("get (-created +got):\n%s", diff)
	}

	// Update needs the current resourceVersion; Apply does not.
	staleCopy := *got.(*v1alpha1.Service)
	staleCopy.Spec.Ports = slices.Clone(staleCopy.Spec.Ports)
	stale := &staleCopy
	got.(*v1alpha1.Service).Spec.Ports[0].Port = 81
	updated, err := c.Update(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	stale.Spec.Ports[0].Port = 82
	if _, err := c.Update(ctx, stale); !apiclient.IsConflict(err) {
		t.Errorf("update with stale resourceVersion: %v, want Conflict", err)
	}
	applied, err := c.Apply(ctx, stale)
	if err != nil {
		t.Fatal(err)
	}
	if applied.GetResourceVersion() == updated.GetResourceVersion() || applied.GetGeneration() != 3 {
		t.Errorf("apply: resourceVersion %s (update had %s), generation %d", applied.GetResourceVersion(), updated.GetResourceVersion(), applied.GetGeneration())
	}
	if stale.ResourceVersion != created.GetResourceVersion() {
		t.Errorf("Apply modified its argument's resourceVersion: %q", stale.ResourceVersion)
	}

	dry, err := c.Apply(ctx, service("other", 90), apiclient.DryRun())
	if err != nil || dry.GetName() != "other" {
		t.Fatalf("dry-run apply: %v, %v", dry, err)
	}
	if _, err := c.Get(ctx, svcKind, "", "other"); !apiclient.IsNotFound(err) {
		t.Errorf("get after dry-run: %v, want NotFound", err)
	}

	other := service("api", 80)
	other.Namespace = "prod"
	if _, err := c.Apply(ctx, other); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns   string
		want []string
	}{{"default", []string{"default/web"}}, {"prod", []string{"prod/api"}}, {"", []string{"default/web", "prod/api"}}} {
		objs, err := c.List(ctx, svcKind, tc.ns)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, o := range objs {
			names = append(names, o.GetNamespace()+"/"+o.GetName())
		}
		if diff := cmp.Diff(tc.want, names); diff != "" {
			t.Errorf("list %q (-want +got):\n%s", tc.ns, diff)
		}
	}

	if err := c.Delete(ctx, svcKind, "default", "web"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, svcKind, "default", "web"); !apiclient.IsNotFound(err) {
		t.Errorf("delete again: %v, want NotFound", err)
	}
}

func TestInvalid(t *testing.T) {
	c := newClient(t)
	bad := service("web", 0)
	bad.Spec.Ports[0].TargetPort = 80
	bad.Spec.Ports = append(bad.Spec.Ports, v1alpha1.ServicePort{Port: 70000, TargetPort: 80})
	_, err := c.Apply(t.Context(), bad)
	se, ok := errors.AsType[*apiclient.StatusError](err)
	if !ok || !apiclient.IsInvalid(err) {
		t.Fatalf("apply invalid: %v, want an Invalid StatusError", err)
	}
	want := &apiclient.StatusError{
		Code: 422, Reason: "Invalid", Kind: "Service", Name: "web",
		Message: `Service "web" is invalid: spec.ports[0].port: Required value; spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535`,
		Causes: []apiclient.Cause{
			{Field: "spec.ports[0].port", Reason: "FieldValueRequired", Message: "Required value"},
			{Field: "spec.ports[1].port", Reason: "FieldValueInvalid", Message: "Invalid value: 70000: must be between 1 and 65535"},
		},
	}
	if diff := cmp.Diff(want, se); diff != "" {
		t.Errorf("error (-want +got):\n%s", diff)
	}
}

func TestWatch(t *testing.T) {
	c := newClient(t)
	ctx := t.Context()
	if _, err := c.Apply(ctx, service("a", 80)); err != nil {
		t.Fatal(err)
	}
	events, err := c.Watch(ctx, svcKind, "default", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Apply(ctx, service("a", 81)); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, svcKind, "default", "a"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 3 {
		ev, ok := <-events
		if !ok {
			t.Fatal("watch closed early")
		}
		got = append(got, string(ev.Type)+" "+ev.Object.GetName())
	}
	if diff := cmp.Diff([]string{"ADDED a", "MODIFIED a", "DELETED a"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestWatchCancel(t *testing.T) {
	c := newClient(t)
	ctx, cancel := context.WithCancel(t.Context())
	events, err := c.Watch(ctx, svcKind, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range events { // closes once the stream's goroutine has ended
	}
}

func TestProxyStatusAndVersion(t *testing.T) {
	c := newClient(t)
	ps, err := c.ProxyStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []apiclient.ProxyStatus{{
		ID: "web-1.default", Namespace: "default", Workload: "web-1", Connected: true,
		ConnectedAt: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC),
		Types: map[string]apiclient.TypeStatus{"type.googleapis.com/envoy.config.cluster.v3.Cluster": {
			SentVersion: "3", AckedVersion: "2", Nack: "cluster web: bad", UpdatedAt: time.Date(2026, 5, 1, 12, 1, 0, 0, time.UTC),
		}},
	}}
	if diff := cmp.Diff(want, ps); diff != "" {
		t.Errorf("proxy status (-want +got):\n%s", diff)
	}
	v, err := c.ServerVersion(t.Context())
	if err != nil || v != "v9.9.9" {
		t.Errorf("server version %q, %v", v, err)
	}
}

func TestNonStatusError(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	t.Cleanup(hs.Close)
	_, err := apiclient.New(hs.URL, nil).Get(t.Context(), svcKind, "default", "web")
	se, ok := errors.AsType[*apiclient.StatusError](err)
	if !ok || se.Code != http.StatusBadGateway || se.Message != "server answered 502: upstream down" {
		t.Errorf("error %#v", err)
	}
}
