package controlplane

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/store"
)

// Results of verge_store_operations_total: the store's sentinel errors,
// which callers expect, apart from other failures.
var storeResults = []string{"ok", "not_found", "exists", "conflict", "compacted", "error"}

var storeOps = []string{"get", "list", "create", "update", "delete", "watch"}

// meteredStore counts every operation on the store by operation and result,
// whichever backend it is, so that the metric means the same on bolt and
// etcd.
type meteredStore struct {
	store.Store
	ops *prometheus.CounterVec
}

// newMeteredStore wraps st and registers verge_store_operations_total.
func newMeteredStore(st store.Store, reg prometheus.Registerer) *meteredStore {
	m := &meteredStore{Store: st, ops: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "verge_store_operations_total",
		Help: "Store operations by operation (get, list, create, update, delete, watch) and result (ok, not_found, exists, conflict, compacted, error).",
	}, []string{"op", "result"})}
	for _, op := range storeOps {
		for _, r := range storeResults {
			m.ops.WithLabelValues(op, r)
		}
	}
	reg.MustRegister(m.ops)
	return m
}

func (m *meteredStore) count(op string, err error) {
	r := "ok"
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		r = "not_found"
	case errors.Is(err, store.ErrExists):
		r = "exists"
	case errors.Is(err, store.ErrConflict):
		r = "conflict"
	case errors.Is(err, store.ErrCompacted):
		r = "compacted"
	default:
		r = "error"
	}
	m.ops.WithLabelValues(op, r).Inc()
}

func (m *meteredStore) Get(ctx context.Context, key string) (store.KeyValue, error) {
	kv, err := m.Store.Get(ctx, key)
	m.count("get", err)
	return kv, err
}

func (m *meteredStore) List(ctx context.Context, prefix string) ([]store.KeyValue, int64, error) {
	kvs, rev, err := m.Store.List(ctx, prefix)
	m.count("list", err)
	return kvs, rev, err
}

func (m *meteredStore) Create(ctx context.Context, key string, value []byte) (int64, error) {
	rev, err := m.Store.Create(ctx, key, value)
	m.count("create", err)
	return rev, err
}

func (m *meteredStore) Update(ctx context.Context, key string, value []byte, expectRevision int64) (int64, error) {
	rev, err := m.Store.Update(ctx, key, value, expectRevision)
	m.count("update", err)
	return rev, err
}

func (m *meteredStore) Delete(ctx context.Context, key string, expectRevision int64) (int64, error) {
	rev, err := m.Store.Delete(ctx, key, expectRevision)
	m.count("delete", err)
	return rev, err
}

// Watch counts the start of a watch; a watch that later fails (compacted)
// is seen by its caller, which lists again, counted as a list.
func (m *meteredStore) Watch(ctx context.Context, prefix string, afterRevision int64) (<-chan store.Event, func() error, error) {
	ch, errf, err := m.Store.Watch(ctx, prefix, afterRevision)
	m.count("watch", err)
	return ch, errf, err
}
