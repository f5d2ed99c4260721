package registry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/store"
	"verge.dev/verge/internal/store/bolt"
	"verge.dev/verge/internal/xds/translate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 10 * time.Second

func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func put(t *testing.T, st store.Store, obj v1alpha1.Object) {
	t.Helper()
	k, ok := v1alpha1.KindByName(obj.GetObjectKind().GroupVersionKind().Kind)
	if !ok {
		t.Fatalf("no kind for %T", obj)
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(t.Context(), apiserver.Key(k, obj.GetNamespace(), obj.GetName()), b, 0); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, st store.Store, kind, ns, name string) {
	t.Helper()
	k, _ := v1alpha1.KindByName(kind)
	if _, err := st.Delete(t.Context(), apiserver.Key(k, ns, name), 0); err != nil {
		t.Fatal(err)
	}
}

func service(name string) *v1alpha1.Service {
	return &v1alpha1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1alpha1.ServiceSpec{
			Ports:    []v1alpha1.ServicePort{{Name: "http", Port: 80, Protocol: v1alpha1.ProtocolHTTP, TargetPort: 8080}},
			Selector: map[string]string{"app": name},
		},
	}
}

func workload(name, app string, proxied bool) *v1alpha1.Workload {
	wl := &v1alpha1.Workload{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Workload"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"app": app}},
		Spec:       v1alpha1.WorkloadSpec{Address: "127.0.0.1", Ports: []v1alpha1.WorkloadPort{{Port: 8080}}},
	}
	if proxied {
		wl.Spec.Proxy = &v1alpha1.WorkloadProxy{}
		wl.Spec.Ports[0].InboundPort = 15006
	}
	return wl
}

func run(t *testing.T, st store.Store) *Registry {
	t.Helper()
	return runGrace(t, st, 0)
}

// runGrace runs a registry whose ReconnectGrace is grace.
func runGrace(t *testing.T, st store.Store, grace time.Duration) *Registry {
	t.Helper()
	r := New(st, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	r.debounce = 5 * time.Millisecond
	r.grace = grace
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// summary is a mesh reduced to names and health, for comparison.
type summary struct {
	Services, Workloads []string
	Health              map[string]translate.Health
}

func summarize(m translate.Mesh) summary {
	s := summary{Health: m.Health}
	for _, o := range m.Services {
		s.Services = append(s.Services, o.Namespace+"/"+o.Name)
	}
	for _, o := range m.Workloads {
		s.Workloads = append(s.Workloads, o.Namespace+"/"+o.Name)
	}
	return s
}

// waitMesh reads meshes until one matches want; intermediate meshes (a
// burst not yet coalesced) are skipped.
func waitMesh(t *testing.T, r *Registry, want summary) translate.Mesh {
	t.Helper()
	deadline := time.After(waitFor)
	var last summary
	for {
		select {
		case m := <-r.Meshes():
			last = summarize(m)
			if cmp.Equal(want, last) {
				return m
			}
		case <-deadline:
			t.Fatalf("no matching mesh; last (-want +got):\n%s", cmp.Diff(want, last))
		}
	}
}

func TestMeshFollowsStore(t *testing.T) {
	st := newStore(t)
	put(t, st, service("a"))
	put(t, st, workload("a-1", "a", false))
	r := run(t, st)

	waitMesh(t, r, summary{
		Services:  []string{"default/a"},
		Workloads: []string{"default/a-1"},
		Health:    map[string]translate.Health{},
	})

	put(t, st, workload("a-2", "a", true))
	put(t, st, service("b"))
	m := waitMesh(t, r, summary{
		Services:  []string{"default/a", "default/b"},
		Workloads: []string{"default/a-1", "default/a-2"},
		Health:    map[string]translate.Health{"default/a-2": translate.HealthUnhealthy},
	})
	if m.Workloads[1].ResourceVersion == "" {
		t.Error("workload has no resourceVersion")
	}

	del(t, st, "Workload", "default", "a-1")
	waitMesh(t, r, summary{
		Services:  []string{"default/a", "default/b"},
		Workloads: []string{"default/a-2"},
		Health:    map[string]translate.Health{"default/a-2": translate.HealthUnhealthy},
	})

	svcs, wls := r.Status()
	if diff := cmp.Diff([]ServiceStatus{
		{Namespace: "default", Name: "a", Ports: service("a").Spec.Ports, Endpoints: 1, Healthy: 0},
		{Namespace: "default", Name: "b", Ports: service("b").Spec.Ports},
	}, svcs); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]WorkloadStatus{
		{Namespace: "default", Name: "a-2", Address: "127.0.0.1", Health: translate.HealthUnhealthy, Proxied: true},
	}, wls); diff != "" {
		t.Errorf("workloads (-want +got):\n%s", diff)
	}
}

// TestMeshCarriesDestinationPolicies: the registry watches the kind like
// every other and hands its objects to the translator.
func TestMeshCarriesDestinationPolicies(t *testing.T) {
	st := newStore(t)
	put(t, st, service("a"))
	r := run(t, st)
	waitMesh(t, r, summary{Services: []string{"default/a"}, Health: map[string]translate.Health{}})

	dp := &v1alpha1.DestinationPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "DestinationPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "a-lb"},
		Spec: v1alpha1.DestinationPolicySpec{
			TargetRef:    v1alpha1.PolicyTargetReference{Kind: "Service", Name: "a"},
			LoadBalancer: &v1alpha1.LoadBalancer{Policy: v1alpha1.LoadBalancerLeastRequest},
		},
	}
	put(t, st, dp)
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-r.Meshes():
			if len(m.DestinationPolicies) == 0 {
				continue
			}
			got := m.DestinationPolicies[0]
			if len(m.DestinationPolicies) != 1 || got.Name != "a-lb" || !cmp.Equal(dp.Spec, got.Spec) {
				t.Fatalf("mesh policies = %+v, want only a-lb with spec %+v", m.DestinationPolicies, dp.Spec)
			}
		case <-deadline:
			t.Fatal("no mesh with the DestinationPolicy")
		}
		break
	}

	del(t, st, "DestinationPolicy", "default", "a-lb")
	deadline = time.After(waitFor)
	for {
		select {
		case m := <-r.Meshes():
			if len(m.DestinationPolicies) > 0 {
				continue
			}
		case <-deadline:
			t.Fatal("the deleted DestinationPolicy stayed in the mesh")
		}
		break
	}
}

func TestCoalescing(t *testing.T) {
	st := newStore(t)
	r := run(t, st)
	waitMesh(t, r, summary{Health: map[string]translate.Health{}})
	const n = 50
	var want []string
	for i := range n {
		name := "w-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		put(t, st, workload(name, "x", false))
		want = append(want, "default/"+name)
	}
	// Whatever intermediate meshes were dropped, the newest arrives.
	waitMesh(t, r, summary{Workloads: want, Health: map[string]translate.Health{}})
}

// TestReconnectGrace: after a (re)start, a proxied workload whose proxy has
// not connected yet keeps its endpoints (health unknown) for the grace, and
// is unhealthy once the grace is over; one that connected is healthy at once.
func TestReconnectGrace(t *testing.T) {
	st := newStore(t)
	put(t, st, workload("p", "p", true))
	put(t, st, workload("q", "q", true))
	r := runGrace(t, st, 500*time.Millisecond)
	waitMesh(t, r, summary{Workloads: []string{"default/p", "default/q"}, Health: map[string]translate.Health{}})
	r.ProxyConnected("default", "q")
	waitMesh(t, r, summary{Workloads: []string{"default/p", "default/q"},
		Health: map[string]translate.Health{"default/q": translate.HealthHealthy}})
	waitMesh(t, r, summary{Workloads: []string{"default/p", "default/q"},
		Health: map[string]translate.Health{"default/p": translate.HealthUnhealthy, "default/q": translate.HealthHealthy}})
}

func TestHealth(t *testing.T) {
	st := newStore(t)
	put(t, st, workload("p", "p", true))
	put(t, st, workload("plain", "plain", false))
	r := run(t, st)
	unhealthy := summary{
		Workloads: []string{"default/p", "default/plain"},
		Health:    map[string]translate.Health{"default/p": translate.HealthUnhealthy},
	}
	healthy := summary{
		Workloads: []string{"default/p", "default/plain"},
		Health:    map[string]translate.Health{"default/p": translate.HealthHealthy},
	}
	waitMesh(t, r, unhealthy)
	srv := httptest.NewServer(r.HealthHandler())
	t.Cleanup(srv.Close)

	report := func(path, body string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	for _, tc := range []struct {
		name, path, body string
		want             int
	}{
		{"unknown workload", "/api/v1/health/default/nope", `{"ready":true}`, http.StatusNotFound},
		{"bad body", "/api/v1/health/default/p", `{"ready":"yes"}`, http.StatusBadRequest},
		{"unknown field", "/api/v1/health/default/p", `{"ready":true,"x":1}`, http.StatusBadRequest},
		{"missing ready", "/api/v1/health/default/p", `{}`, http.StatusBadRequest},
		{"too deep", "/api/v1/health/default/p/x", `{"ready":true}`, http.StatusNotFound},
		{"ready", "/api/v1/health/default/p", `{"ready":true}`, http.StatusNoContent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := report(tc.path, tc.body); got != tc.want {
				t.Errorf("status = %d, want %d", got, tc.want)
			}
		})
	}
	resp, err := srv.Client().Get(srv.URL + "/api/v1/health/default/p")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET status = %d, want 405", resp.StatusCode)
	}

	// Ready but not connected is still unhealthy; connected and ready is
	// healthy; losing the stream makes it unhealthy and forgets readiness.
	r.ProxyConnected("default", "p")
	waitMesh(t, r, healthy)
	r.ProxyConnected("default", "p") // a second stream
	r.ProxyDisconnected("default", "p")
	r.ProxyDisconnected("default", "p")
	waitMesh(t, r, unhealthy)
	// Connected again without a report yet counts as ready, so that a
	// restarted control plane does not empty every endpoint set.
	r.ProxyConnected("default", "p")
	if _, wls := r.Status(); wls[0].Health != translate.HealthHealthy || !wls[0].ProxyConnected {
		t.Errorf("reconnected without a report: %+v, want healthy and connected", wls[0])
	}
	waitMesh(t, r, healthy)
	if got := report("/api/v1/health/default/p", `{"ready":false}`); got != http.StatusNoContent {
		t.Fatalf("report: %d", got)
	}
	waitMesh(t, r, unhealthy)
}

// compactingStore fails the first watch of every prefix with ErrCompacted,
// as a backend does when it no longer holds the history asked for.
type compactingStore struct {
	store.Store
	failed atomic.Int32
}

func (s *compactingStore) Watch(ctx context.Context, prefix string, after int64) (<-chan store.Event, func() error, error) {
	if strings.Contains(prefix, "workloads") && s.failed.Add(1) == 1 {
		ch := make(chan store.Event)
		close(ch)
		return ch, func() error { return store.ErrCompacted }, nil
	}
	return s.Store.Watch(ctx, prefix, after)
}

func TestRelistOnCompaction(t *testing.T) {
	st := &compactingStore{Store: newStore(t)}
	put(t, st, workload("a", "a", false))
	r := run(t, st)
	waitMesh(t, r, summary{Workloads: []string{"default/a"}, Health: map[string]translate.Health{}})
	put(t, st, workload("b", "b", false))
	waitMesh(t, r, summary{Workloads: []string{"default/a", "default/b"}, Health: map[string]translate.Health{}})
	if st.failed.Load() < 2 {
		t.Errorf("workloads watched %d times, want a second watch after compaction", st.failed.Load())
	}
}

// TestStatusServiceWithoutSelector: a service stored without a selector
// selects nothing, as translate has it, not the workloads labelled with its
// name.
func TestStatusServiceWithoutSelector(t *testing.T) {
	st := newStore(t)
	bare := service("a")
	bare.Spec.Selector = nil
	put(t, st, bare)
	put(t, st, workload("a-1", "a", false))
	r := run(t, st)
	waitMesh(t, r, summary{Services: []string{"default/a"}, Workloads: []string{"default/a-1"}, Health: map[string]translate.Health{}})
	svcs, _ := r.Status()
	if diff := cmp.Diff([]ServiceStatus{{Namespace: "default", Name: "a", Ports: bare.Spec.Ports}}, svcs); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
}

// flakyStore serves List from nothing and runs one scripted Watch per call;
// it records when each watch started.
type flakyStore struct {
	store.Store
	watches []func(ctx context.Context, ch chan<- store.Event) error
	starts  []time.Time
	cancel  context.CancelFunc
}

func (s *flakyStore) List(context.Context, string) ([]store.KeyValue, int64, error) {
	return nil, 1, nil
}

func (s *flakyStore) Watch(ctx context.Context, _ string, _ int64) (<-chan store.Event, func() error, error) {
	s.starts = append(s.starts, time.Now())
	if len(s.starts) > len(s.watches) {
		s.cancel()
		return nil, nil, ctx.Err()
	}
	run := s.watches[len(s.starts)-1]
	ch := make(chan store.Event)
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		err = run(ctx, ch)
	}()
	return ch, func() error { <-done; return err }, nil
}

// TestRetryResetsAfterHealthyWatch: backoff doubles while the store keeps
// failing and starts over after a watch that delivered events or ran long.
func TestRetryResetsAfterHealthyWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errDown := errors.New("store down")
		fail := func(context.Context, chan<- store.Event) error { return errDown }
		wlKind, _ := v1alpha1.KindByName("Workload")
		val, err := json.Marshal(workload("w", "w", false))
		if err != nil {
			t.Fatal(err)
		}
		deliver := func(ctx context.Context, ch chan<- store.Event) error {
			ch <- store.Event{Type: store.EventPut, KV: store.KeyValue{Key: apiserver.Key(wlKind, "default", "w"), Value: val, CreateRevision: 2, ModRevision: 2}}
			return errDown
		}
		runLong := func(context.Context, chan<- store.Event) error {
			time.Sleep(time.Minute) // fake time: the watch stays up for a minute
			return errDown
		}
		st := &flakyStore{watches: []func(context.Context, chan<- store.Event) error{
			fail, fail, fail, deliver, fail, runLong, fail,
		}}
		ctx, cancel := context.WithCancel(t.Context())
		st.cancel = cancel
		r := New(st, slog.New(slog.NewTextHandler(t.Output(), nil)))
		if err := r.watchKind(ctx, wlKind); err != nil {
			t.Fatalf("watchKind: %v", err)
		}
		var gaps []time.Duration
		for i := 1; i < len(st.starts); i++ {
			gaps = append(gaps, st.starts[i].Sub(st.starts[i-1]))
		}
		ms := time.Millisecond
		want := []time.Duration{
			100 * ms, 200 * ms, 400 * ms, // failing: doubles
			100 * ms,             // after a watch that delivered an event
			200 * ms,             // failing again: doubles
			time.Minute + 100*ms, // after a watch that ran a minute
			200 * ms,
		}
		if diff := cmp.Diff(want, gaps); diff != "" {
			t.Errorf("gaps between watches (-want +got):\n%s", diff)
		}
	})
}
