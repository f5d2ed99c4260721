// Package registry owns the control plane's in-memory view of the mesh: every
// stored resource, kept current by watching the store, and the runtime health
// of workloads, which is never stored. It hands each new state to its
// consumer (the xDS server) as a translate.Mesh, coalescing bursts so that a
// slow consumer only ever sees the newest state.
//
// A workload fronted by a Verge proxy (Spec.Proxy set) is healthy only while
// its proxy has an xDS stream open (ProxyConnected/ProxyDisconnected, called
// by the xDS server) and the proxy's last report over the health endpoint, if
// any since it connected, said the application is ready. A workload without a proxy has no one to
// report for it and stays HealthUnknown.
//
// The registry does not write to the store, translate, or serve xDS.
package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/store"
	"verge.dev/verge/internal/xds/translate"
)

// ReconnectGrace is how long after the registry starts a proxied workload
// whose proxy has not connected to this control plane yet keeps its
// endpoints (health unknown, which clients treat as healthy) instead of
// losing them. After a control-plane restart every proxy reconnects within
// its xDS backoff (at most 5 s); without the grace, the first proxies back
// would be told that every other workload is gone, and traffic that never
// needed the control plane would fail.
const ReconnectGrace = 15 * time.Second

// DefaultDebounce is how long the registry waits after a change for more
// changes before it publishes a mesh.
const DefaultDebounce = 50 * time.Millisecond

// Retry bounds for a failing store (list or watch errors other than
// compaction, e.g. an unreachable etcd).
const (
	minRetry = 100 * time.Millisecond
	maxRetry = 5 * time.Second
	// healthyWatch is how long a watch must have run for its failure to
	// count as a new outage (retried from minRetry) rather than the next
	// failure of the same one.
	healthyWatch = 30 * time.Second
)

// Registry is the in-memory mesh. Create it with New and start it with Run;
// the other methods are safe for concurrent use at any time.
type Registry struct {
	st       store.Store
	logger   *slog.Logger
	debounce time.Duration
	// meshes holds at most the newest unconsumed mesh; only the publish
	// loop sends on it.
	meshes chan translate.Mesh
	// changed is a level trigger (capacity 1) for the publish loop.
	changed chan struct{}

	// mu guards the fields below.
	mu sync.Mutex
	// objs holds every stored object by kind (Kind.Kind) and store key.
	objs map[string]map[string]v1alpha1.Object
	// listed counts kinds listed at least once; a mesh is published only
	// when every kind has been, so no proxy ever gets a partial start.
	listed map[string]bool
	// ready is the last readiness each proxied workload reported, by
	// "namespace/name"; it is forgotten when the proxy disconnects.
	ready map[string]bool
	// conns counts open xDS streams per "namespace/name".
	conns map[string]int
	// seen holds the workloads whose proxy has connected since the
	// registry started; graceUntil ends the ReconnectGrace for the others.
	seen       map[string]bool
	graceUntil time.Time
	// grace is ReconnectGrace; tests of health transitions set it to 0.
	grace time.Duration
}

// New returns a registry over st. It does not touch st until Run.
func New(st store.Store, logger *slog.Logger) *Registry {
	return &Registry{
		st:       st,
		logger:   logger.With("component", "registry"),
		debounce: DefaultDebounce,
		meshes:   make(chan translate.Mesh, 1),
		changed:  make(chan struct{}, 1),
		objs:     map[string]map[string]v1alpha1.Object{},
		listed:   map[string]bool{},
		ready:    map[string]bool{},
		conns:    map[string]int{},
		seen:     map[string]bool{},
		grace:    ReconnectGrace,
	}
}

// Meshes delivers each new mesh, newest only: a mesh not yet received when a
// newer one is ready is dropped. The first arrives once every kind has been
// listed. The channel is never closed. Consumers must not modify a Mesh or
// the objects it points to.
func (r *Registry) Meshes() <-chan translate.Mesh { return r.meshes }

// Run lists and watches the store and publishes meshes until ctx ends; it
// returns nil then. Store failures are retried with backoff, so Run only
// returns an error for a bug.
func (r *Registry) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	r.mu.Lock()
	r.graceUntil = time.Now().Add(r.grace)
	r.mu.Unlock()
	// When the grace ends, workloads whose proxies never came back lose
	// their endpoints: publish again then.
	grace := time.AfterFunc(r.grace, r.signal)
	defer grace.Stop()
	for _, k := range v1alpha1.Kinds {
		g.Go(func() error { return r.watchKind(ctx, k) })
	}
	g.Go(func() error { return r.publishLoop(ctx) })
	return g.Wait()
}

// watchKind keeps objs[k] current: list, then watch from the list's
// revision; on compaction (or any failure) list again.
func (r *Registry) watchKind(ctx context.Context, k v1alpha1.Kind) error {
	logger := r.logger.With("kind", k.Kind)
	prefix := apiserver.Prefix(k)
	retry := minRetry
	for {
		start := time.Now()
		delivered, err := r.listAndWatch(ctx, k, prefix)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, store.ErrCompacted) {
			logger.Info("watch compacted, listing again")
			retry = minRetry
			continue
		}
		if delivered || time.Since(start) >= healthyWatch {
			// The store worked until now: a watch that ends after days
			// must not wait as long as the last of an earlier outage's
			// retries.
			retry = minRetry
		}
		logger.Warn("store watch failed", "err", err, "retry_in", retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		retry = min(retry*2, maxRetry)
	}
}

// listAndWatch lists k and then applies its changes until the watch ends;
// delivered tells whether the watch delivered any event.
func (r *Registry) listAndWatch(ctx context.Context, k v1alpha1.Kind, prefix string) (delivered bool, err error) {
	kvs, rev, err := r.st.List(ctx, prefix)
	if err != nil {
		return false, fmt.Errorf("list %s: %w", prefix, err)
	}
	objs := make(map[string]v1alpha1.Object, len(kvs))
	for _, kv := range kvs {
		obj, err := apiserver.DecodeStored(k, kv)
		if err != nil {
			// Values are validated before they are stored; one that does
			// not decode is skipped rather than blocking every other change.
			r.logger.Error("stored object skipped", "key", kv.Key, "err", err)
			continue
		}
		objs[kv.Key] = obj
	}
	r.mu.Lock()
	r.objs[k.Kind] = objs
	r.listed[k.Kind] = true
	r.mu.Unlock()
	r.signal()

	events, errf, err := r.st.Watch(ctx, prefix, rev)
	if err != nil {
		return false, fmt.Errorf("watch %s: %w", prefix, err)
	}
	for ev := range events {
		delivered = true
		r.apply(k, ev)
	}
	if err := errf(); err != nil {
		return delivered, fmt.Errorf("watch %s: %w", prefix, err)
	}
	if ctx.Err() == nil {
		return delivered, fmt.Errorf("watch %s: channel closed", prefix)
	}
	return delivered, nil
}

func (r *Registry) apply(k v1alpha1.Kind, ev store.Event) {
	var obj v1alpha1.Object
	if ev.Type == store.EventPut {
		var err error
		obj, err = apiserver.DecodeStored(k, ev.KV)
		if err != nil {
			r.logger.Error("stored object skipped", "key", ev.KV.Key, "err", err)
			return
		}
	}
	r.mu.Lock()
	objs := r.objs[k.Kind]
	if obj != nil {
		objs[ev.KV.Key] = obj
	} else {
		delete(objs, ev.KV.Key)
	}
	r.mu.Unlock()
	r.logger.Debug("object changed", "key", ev.KV.Key, "deleted", obj == nil, "revision", ev.KV.ModRevision)
	r.signal()
}

// signal wakes the publish loop without blocking.
func (r *Registry) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *Registry) publishLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.changed:
		}
		// Let a burst of changes (an apply of many files, a proxy
		// reconnecting) settle into one mesh.
		t := time.NewTimer(r.debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		// Changes up to here are in the mesh built below; later ones
		// trigger another round.
		select {
		case <-r.changed:
		default:
		}
		m, ok := r.Mesh()
		if !ok {
			continue
		}
		select {
		case <-r.meshes:
		default:
		}
		r.meshes <- m
		r.logger.Debug("mesh published", "services", len(m.Services), "workloads", len(m.Workloads))
	}
}

// Mesh builds the current mesh; ok is false until every kind has been listed
// once. Lists are sorted by namespace and name.
func (r *Registry) Mesh() (m translate.Mesh, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.listed) < len(v1alpha1.Kinds) {
		return translate.Mesh{}, false
	}
	m.Health = map[string]translate.Health{}
	for _, objs := range r.objs {
		for _, o := range objs {
			m.Add(o)
			if wl, ok := o.(*v1alpha1.Workload); ok {
				if h := r.healthLocked(wl); h != translate.HealthUnknown {
					m.Health[wl.Namespace+"/"+wl.Name] = h
				}
			}
		}
	}
	sortObjects(m.Services)
	sortObjects(m.Workloads)
	sortObjects(m.HTTPRoutes)
	sortObjects(m.GRPCRoutes)
	sortObjects(m.DestinationPolicies)
	sortObjects(m.MeshTLSes)
	sortObjects(m.AuthorizationPolicies)
	sortObjects(m.FaultInjections)
	sortObjects(m.Telemetries)
	return m, true
}

func sortObjects[T v1alpha1.Object](objs []T) {
	slices.SortFunc(objs, func(a, b T) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
}

// healthLocked is wl's runtime health; r.mu must be held.
func (r *Registry) healthLocked(wl *v1alpha1.Workload) translate.Health {
	if wl.Spec.Proxy == nil {
		return translate.HealthUnknown
	}
	key := wl.Namespace + "/" + wl.Name
	// A proxy that has connected but not reported yet counts as ready: after a
	// control-plane restart every proxy reconnects before it reports, and
	// treating them all as unready until then would empty every endpoint
	// set at once. An unready application is reported within a probe period.
	ready, reported := r.ready[key]
	if r.conns[key] > 0 && (ready || !reported) {
		return translate.HealthHealthy
	}
	if r.conns[key] == 0 && !r.seen[key] && time.Now().Before(r.graceUntil) {
		return translate.HealthUnknown
	}
	return translate.HealthUnhealthy
}

// workloadLocked finds a stored workload; r.mu must be held.
func (r *Registry) workloadLocked(ns, name string) (*v1alpha1.Workload, bool) {
	k, _ := v1alpha1.KindByName("Workload")
	wl, ok := r.objs[k.Kind][apiserver.Key(k, ns, name)].(*v1alpha1.Workload)
	return wl, ok
}

// updateHealth runs f under the lock and signals a change when it changed
// the health of workload ns/name.
func (r *Registry) updateHealth(ns, name string, f func(key string)) {
	key := ns + "/" + name
	r.mu.Lock()
	wl, ok := r.workloadLocked(ns, name)
	var before translate.Health
	if ok {
		before = r.healthLocked(wl)
	}
	f(key)
	var after translate.Health
	if ok {
		after = r.healthLocked(wl)
	}
	r.mu.Unlock()
	if after != before {
		r.logger.Info("workload health changed", "workload", key, "healthy", after == translate.HealthHealthy)
		r.signal()
	}
}

// ProxyConnected records one more open xDS stream of workload ns/name's
// proxy. It implements xds.ConnectionObserver; it does not block.
func (r *Registry) ProxyConnected(ns, name string) {
	r.updateHealth(ns, name, func(key string) { r.conns[key]++; r.seen[key] = true })
}

// ProxyDisconnected records the end of one xDS stream of workload ns/name's
// proxy. When the last one ends, the proxy's readiness report is forgotten:
// a reconnecting proxy reports again.
func (r *Registry) ProxyDisconnected(ns, name string) {
	r.updateHealth(ns, name, func(key string) {
		r.conns[key]--
		if r.conns[key] <= 0 {
			delete(r.conns, key)
			delete(r.ready, key)
		}
	})
}

// ReportReady records the readiness the proxy of workload ns/name reports
// for its application. It returns false, changing nothing, when no such
// workload is stored.
func (r *Registry) ReportReady(ns, name string, ready bool) bool {
	r.mu.Lock()
	_, ok := r.workloadLocked(ns, name)
	r.mu.Unlock()
	if !ok {
		return false
	}
	r.updateHealth(ns, name, func(key string) { r.ready[key] = ready })
	return true
}
