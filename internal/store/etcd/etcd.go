// Package etcd owns the highly available store backend: store.Store mapped
// onto an etcd cluster through go.etcd.io/etcd/client/v3, for sites that run
// several control-plane replicas. It does not run etcd; the operator does
// (tests start one with etcd/etcdtest).
//
// Durability is etcd's: a write returns once the cluster's raft log has
// committed it on a quorum of members, each of which fsyncs its WAL, so a
// returned write survives kill -9 of any minority of members. Revisions are
// etcd's own (global to the cluster, shared with anything else stored there),
// and Watch history lasts until the cluster compacts it, after which Watch
// reports store.ErrCompacted.
//
// Every key is stored under Config.Prefix, so several deployments (or tests)
// can share one cluster.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"verge.dev/verge/internal/store"
)

const (
	defaultPrefix      = "/verge"
	defaultDialTimeout = 5 * time.Second
	// maxPending bounds the events a watcher holds for a slow reader, the
	// same lag the bolt backend allows; beyond it the watch ends with
	// ErrCompacted and the reader lists again.
	maxPending  = 10_000
	watchBuffer = 128
)

var errClosed = errors.New("etcd: store closed")

// Config says where the etcd cluster is.
type Config struct {
	// Endpoints are the cluster's client URLs; at least one is required.
	Endpoints []string
	// Prefix is prepended to every key; default "/verge". A trailing "/" is
	// ignored.
	Prefix string
	// DialTimeout bounds connecting and the first request New makes;
	// default 5s.
	DialTimeout time.Duration
}

// Store is a store.Store on etcd. Create it with New; it is safe for
// concurrent use and must be closed with Close.
type Store struct {
	cli    *clientv3.Client
	prefix string
	logger *slog.Logger

	mu      sync.Mutex // guards closed and the Add side of watches
	closed  bool
	done    chan struct{} // closed by Close to end watches
	watches sync.WaitGroup
}

var _ store.Store = (*Store)(nil)

// New connects to etcd and checks the cluster answers within DialTimeout
// (or before ctx ends), so a wrong endpoint fails here, not at first use.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("connect etcd: no endpoints")
	}
	prefix := strings.TrimSuffix(cfg.Prefix, "/")
	if cfg.Prefix == "" {
		prefix = defaultPrefix
	}
	if prefix != "" && !strings.HasPrefix(prefix, "/") {
		return nil, fmt.Errorf("connect etcd: invalid prefix %q: must start with \"/\"", cfg.Prefix)
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = defaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: timeout,
		// The client logs with zap; Verge logs with slog, and reports the
		// client's errors through its own return values instead.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect etcd %v: %w", cfg.Endpoints, err)
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Get(pctx, prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		return nil, errors.Join(fmt.Errorf("connect etcd %v: %w", cfg.Endpoints, err), cli.Close())
	}
	s := &Store{
		cli:    cli,
		prefix: prefix,
		logger: logger.With("component", "store", "backend", "etcd"),
		done:   make(chan struct{}),
	}
	s.logger.Info("store opened", "endpoints", cfg.Endpoints, "prefix", prefix)
	return s, nil
}

// key maps a store key to its etcd key. Keys must start with "/" so that
// the prefix and the key stay distinct path segments.
func (s *Store) key(key string) (string, error) {
	if !strings.HasPrefix(key, "/") {
		return "", fmt.Errorf("invalid key %q: must start with \"/\"", key)
	}
	return s.prefix + key, nil
}

// rangePrefix maps a store prefix to an etcd prefix; "" means every key,
// which is everything under s.prefix+"/", not s.prefix alone ("/verge"
// would also match "/verge2/...").
func (s *Store) rangePrefix(prefix string) (string, error) {
	if prefix == "" {
		return s.prefix + "/", nil
	}
	if !strings.HasPrefix(prefix, "/") {
		return "", fmt.Errorf("invalid prefix %q: must be empty or start with \"/\"", prefix)
	}
	return s.prefix + prefix, nil
}

func (s *Store) keyValue(kv *mvccpb.KeyValue) store.KeyValue {
	return store.KeyValue{
		Key:            strings.TrimPrefix(string(kv.Key), s.prefix),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
	}
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KeyValue, error) {
	k, err := s.key(key)
	if err != nil {
		return store.KeyValue{}, fmt.Errorf("get: %w", err)
	}
	resp, err := s.cli.Get(ctx, k)
	if err != nil {
		return store.KeyValue{}, fmt.Errorf("get %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KeyValue{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	return s.keyValue(resp.Kvs[0]), nil
}

// List implements store.Store with one range read, whose header revision
// matches the values returned. etcd returns a range in key order.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KeyValue, int64, error) {
	p, err := s.rangePrefix(prefix)
	if err != nil {
		return nil, 0, fmt.Errorf("list: %w", err)
	}
	resp, err := s.cli.Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	kvs := make([]store.KeyValue, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs = append(kvs, s.keyValue(kv))
	}
	return kvs, resp.Header.Revision, nil
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, key string, value []byte) (int64, error) {
	k, err := s.key(key)
	if err != nil {
		return 0, fmt.Errorf("create: %w", err)
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(value))).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("create %q: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("create %q: %w", key, store.ErrExists)
	}
	return resp.Header.Revision, nil
}

// Update implements store.Store. With expectRevision > 0 an absent key is
// ErrConflict, since it has no ModRevision to match.
func (s *Store) Update(ctx context.Context, key string, value []byte, expectRevision int64) (int64, error) {
	k, err := s.key(key)
	if err != nil {
		return 0, fmt.Errorf("update: %w", err)
	}
	if expectRevision <= 0 {
		resp, err := s.cli.Put(ctx, k, string(value))
		if err != nil {
			return 0, fmt.Errorf("update %q: %w", key, err)
		}
		return resp.Header.Revision, nil
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", expectRevision)).
		Then(clientv3.OpPut(k, string(value))).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("update %q: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("update %q at revision %d: %w", key, expectRevision, store.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// Delete implements store.Store. An absent key is ErrNotFound whatever
// expectRevision says.
func (s *Store) Delete(ctx context.Context, key string, expectRevision int64) (int64, error) {
	k, err := s.key(key)
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	if expectRevision <= 0 {
		resp, err := s.cli.Delete(ctx, k)
		if err != nil {
			return 0, fmt.Errorf("delete %q: %w", key, err)
		}
		if resp.Deleted == 0 {
			return 0, fmt.Errorf("delete %q: %w", key, store.ErrNotFound)
		}
		return resp.Header.Revision, nil
	}
	// The Else read tells a missing key from a stale revision in the same
	// round trip.
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", expectRevision)).
		Then(clientv3.OpDelete(k)).
		Else(clientv3.OpGet(k, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("delete %q: %w", key, err)
	}
	if !resp.Succeeded {
		if r := resp.Responses[0].GetResponseRange(); r == nil || r.Count == 0 {
			return 0, fmt.Errorf("delete %q: %w", key, store.ErrNotFound)
		}
		return 0, fmt.Errorf("delete %q at revision %d: %w", key, expectRevision, store.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// Watch implements store.Store on an etcd watch from afterRevision+1 with
// previous values, so deletes carry the deleted value. Compaction and
// failures end the watch and are reported by errf (never by the returned
// err); cancelling ctx closes the channel and errf reports nil. The watch
// requires a leader: a member cut off from its quorum ends the watch rather
// than silently stalling it.
func (s *Store) Watch(ctx context.Context, prefix string, afterRevision int64) (<-chan store.Event, func() error, error) {
	p, err := s.rangePrefix(prefix)
	if err != nil {
		return nil, nil, fmt.Errorf("watch: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, fmt.Errorf("watch %q: %w", prefix, errClosed)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.cli.Watch(wctx, p, clientv3.WithPrefix(), clientv3.WithRev(afterRevision+1), clientv3.WithPrevKV())
	out := make(chan store.Event, watchBuffer)
	res := &watchResult{}
	s.watches.Go(func() {
		defer close(out)
		defer cancel()
		if err := s.follow(ctx, wch, out); err != nil {
			res.set(fmt.Errorf("watch %q after revision %d: %w", prefix, afterRevision, err))
		}
	})
	return out, res.get, nil
}

type watchResult struct {
	mu  sync.Mutex
	err error
}

func (r *watchResult) set(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

func (r *watchResult) get() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// follow moves events from the etcd watch to out through a queue, so the
// etcd client is always drained and what a slow reader costs is bounded by
// maxPending.
func (s *Store) follow(ctx context.Context, wch clientv3.WatchChan, out chan<- store.Event) error {
	var queue []store.Event
	for {
		var sendc chan<- store.Event
		var head store.Event
		if len(queue) > 0 {
			sendc, head = out, queue[0]
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return errClosed
		case sendc <- head:
			queue[0] = store.Event{}
			queue = queue[1:]
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("etcd watch channel closed")
			}
			if err := wr.Err(); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(err, rpctypes.ErrCompacted) {
					return fmt.Errorf("%w (etcd compacted to revision %d)", store.ErrCompacted, wr.CompactRevision)
				}
				return err
			}
			for _, ev := range wr.Events {
				queue = append(queue, s.event(ev))
			}
			if len(queue) > maxPending {
				s.logger.Warn("watcher dropped", "reason", "reader too slow", "pending", len(queue))
				return fmt.Errorf("%w (reader more than %d events behind)", store.ErrCompacted, maxPending)
			}
		}
	}
}

func (s *Store) event(ev *clientv3.Event) store.Event {
	if ev.Type == clientv3.EventTypeDelete {
		// etcd's delete event has the tombstone's ModRevision and no value or
		// CreateRevision; those come from the previous KeyValue.
		kv := store.KeyValue{Key: strings.TrimPrefix(string(ev.Kv.Key), s.prefix), ModRevision: ev.Kv.ModRevision}
		if ev.PrevKv != nil {
			kv.Value = ev.PrevKv.Value
			kv.CreateRevision = ev.PrevKv.CreateRevision
		}
		return store.Event{Type: store.EventDelete, KV: kv}
	}
	return store.Event{Type: store.EventPut, KV: s.keyValue(ev.Kv)}
}

// Close ends every watch (their errf reports the store closed), waits for
// them and closes the client. Calling it again returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()

	s.watches.Wait()
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	s.logger.Info("store closed", "prefix", s.prefix)
	return nil
}
