// Package bolt owns the single-node store backend: one bbolt file holding
// every key, its revisions and the global revision counter, plus the
// in-process fan-out of changes to watchers.
//
// Durability: every write is one bbolt read-write transaction, and bbolt
// fsyncs the file before Update returns (NoSync stays false), so a write that
// returned is on disk and survives kill -9. A newly created file also has its
// directory entry synced.
//
// History: the file holds only current values, never old revisions. Watch
// replays from an in-memory ring of the most recent events (10,000 by
// default); a watch that starts before the ring, or before this process
// opened the file, fails with store.ErrCompacted and the caller lists again.
//
// The package does not own the file's location or its backup; the caller
// chooses the path (normally under --data-dir).
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"

	"verge.dev/verge/internal/store"
)

var (
	bucketMeta = []byte("meta")
	bucketKV   = []byte("kv")
	keyRev     = []byte("revision")
)

const (
	// defaultRingSize bounds both the replay window of Watch and how far a
	// watcher may lag behind writers before it is dropped with ErrCompacted.
	defaultRingSize = 10_000
	// watchBuffer is the channel buffer of each watcher; it only smooths
	// hand-over, the ring is what bounds the lag.
	watchBuffer = 128
	// watchBatch caps how many events a watcher copies from the ring under
	// the lock at once, so writers never wait long for it.
	watchBatch = 256
	// headerLen is the encoded prefix of a stored value: CreateRevision then
	// ModRevision, each big-endian uint64.
	headerLen = 16
	// lockTimeout bounds how long Open waits for another process's file lock.
	lockTimeout = 2 * time.Second
)

var errClosed = errors.New("bolt: store closed")

// Store is a store.Store on a bbolt file. Create it with Open; it is safe
// for concurrent use and must be closed with Close.
type Store struct {
	db     *bbolt.DB
	logger *slog.Logger
	path   string

	// writeMu serializes a write's commit with its publication so watchers
	// see events in revision order. bbolt serializes Update anyway, so this
	// costs no concurrency.
	writeMu sync.Mutex

	// mu guards everything below.
	mu sync.Mutex
	// rev is the revision of the last published write.
	rev int64
	// ring holds the events with revisions rev-count+1 .. rev, oldest at
	// ring[start]. Each write produces exactly one event and one revision, so
	// revisions in the ring are contiguous and indexable.
	ring  []store.Event
	start int
	count int
	// notify is closed and replaced on every publication to wake watchers.
	notify chan struct{}
	closed bool

	done    chan struct{} // closed by Close to stop watchers
	watches sync.WaitGroup
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the bbolt file at path. The directory must exist.
// Only one process may hold the file; Open fails after a short wait if
// another does.
func Open(path string, logger *slog.Logger) (*Store, error) {
	return open(path, logger, defaultRingSize)
}

func open(path string, logger *slog.Logger, ringSize int) (*Store, error) {
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)

	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	var rev int64
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketKV); err != nil {
			return err
		}
		rev = readRev(meta)
		return nil
	})
	if err == nil && created {
		// bbolt syncs the file but not the directory entry that names it.
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open store %q: %w", path, err), db.Close())
	}
	s := &Store{
		db:     db,
		logger: logger.With("component", "store", "backend", "bolt"),
		path:   path,
		rev:    rev,
		ring:   make([]store.Event, ringSize),
		notify: make(chan struct{}),
		done:   make(chan struct{}),
	}
	s.logger.Info("store opened", "path", path, "revision", rev)
	return s, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// checkKey enforces the key shape of store.Store: a non-empty path that
// starts with "/", so that prefixes behave the same on every backend.
func checkKey(key string) error {
	if !strings.HasPrefix(key, "/") {
		return fmt.Errorf("invalid key %q: must start with \"/\"", key)
	}
	return nil
}

func checkPrefix(prefix string) error {
	if prefix != "" && !strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("invalid prefix %q: must be empty or start with \"/\"", prefix)
	}
	return nil
}

func readRev(meta *bbolt.Bucket) int64 {
	b := meta.Get(keyRev)
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}

func encode(createRev, modRev int64, value []byte) []byte {
	b := make([]byte, headerLen+len(value))
	binary.BigEndian.PutUint64(b[0:8], uint64(createRev))
	binary.BigEndian.PutUint64(b[8:16], uint64(modRev))
	copy(b[headerLen:], value)
	return b
}

// decode copies raw, which bbolt only keeps valid for the transaction.
func decode(key string, raw []byte) (store.KeyValue, error) {
	if len(raw) < headerLen {
		return store.KeyValue{}, fmt.Errorf("decode key %q: value of %d bytes is shorter than its header", key, len(raw))
	}
	return store.KeyValue{
		Key:            key,
		Value:          bytes.Clone(raw[headerLen:]),
		CreateRevision: int64(binary.BigEndian.Uint64(raw[0:8])),
		ModRevision:    int64(binary.BigEndian.Uint64(raw[8:16])),
	}, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KeyValue, error) {
	if err := ctx.Err(); err != nil {
		return store.KeyValue{}, fmt.Errorf("get %q: %w", key, err)
	}
	var kv store.KeyValue
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketKV).Get([]byte(key))
		if raw == nil {
			return store.ErrNotFound
		}
		var err error
		kv, err = decode(key, raw)
		return err
	})
	if err != nil {
		return store.KeyValue{}, fmt.Errorf("get %q: %w", key, err)
	}
	return kv, nil
}

// List implements store.Store. The values and the revision come from one
// read transaction, so a Watch from the revision misses nothing.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KeyValue, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	if err := checkPrefix(prefix); err != nil {
		return nil, 0, fmt.Errorf("list: %w", err)
	}
	var kvs []store.KeyValue
	var rev int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		rev = readRev(tx.Bucket(bucketMeta))
		c := tx.Bucket(bucketKV).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			kv, err := decode(string(k), v)
			if err != nil {
				return err
			}
			kvs = append(kvs, kv)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	return kvs, rev, nil
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, key string, value []byte) (int64, error) {
	rev, err := s.write(ctx, key, func(old []byte, rev int64) (store.Event, error) {
		if old != nil {
			return store.Event{}, store.ErrExists
		}
		return store.Event{Type: store.EventPut, KV: store.KeyValue{Key: key, CreateRevision: rev, ModRevision: rev}}, nil
	}, value)
	if err != nil {
		return 0, fmt.Errorf("create %q: %w", key, err)
	}
	return rev, nil
}

// Update implements store.Store. With expectRevision > 0 an absent key is
// ErrConflict, since it has no ModRevision to match.
func (s *Store) Update(ctx context.Context, key string, value []byte, expectRevision int64) (int64, error) {
	rev, err := s.write(ctx, key, func(old []byte, rev int64) (store.Event, error) {
		createRev := rev
		if old != nil {
			createRev = int64(binary.BigEndian.Uint64(old[0:8]))
		}
		if expectRevision > 0 && (old == nil || int64(binary.BigEndian.Uint64(old[8:16])) != expectRevision) {
			return store.Event{}, store.ErrConflict
		}
		return store.Event{Type: store.EventPut, KV: store.KeyValue{Key: key, CreateRevision: createRev, ModRevision: rev}}, nil
	}, value)
	if err != nil {
		return 0, fmt.Errorf("update %q: %w", key, err)
	}
	return rev, nil
}

// Delete implements store.Store. An absent key is ErrNotFound whatever
// expectRevision says.
func (s *Store) Delete(ctx context.Context, key string, expectRevision int64) (int64, error) {
	rev, err := s.write(ctx, key, func(old []byte, rev int64) (store.Event, error) {
		if old == nil {
			return store.Event{}, store.ErrNotFound
		}
		prev, err := decode(key, old)
		if err != nil {
			return store.Event{}, err
		}
		if expectRevision > 0 && prev.ModRevision != expectRevision {
			return store.Event{}, store.ErrConflict
		}
		prev.ModRevision = rev
		return store.Event{Type: store.EventDelete, KV: prev}, nil
	}, nil)
	if err != nil {
		return 0, fmt.Errorf("delete %q: %w", key, err)
	}
	return rev, nil
}

// write runs one write transaction: decide is called with the key's stored
// bytes (nil if absent) and the revision the write would get, and returns the
// event to publish or an error that aborts the transaction. For EventPut the
// event's value is value.
func (s *Store) write(ctx context.Context, key string, decide func(old []byte, rev int64) (store.Event, error), value []byte) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkKey(key); err != nil {
		return 0, err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()

	var ev store.Event
	err := s.db.Update(func(tx *bbolt.Tx) error {
		meta, kvb := tx.Bucket(bucketMeta), tx.Bucket(bucketKV)
		rev := readRev(meta) + 1
		old := kvb.Get([]byte(key))
		if old != nil && len(old) < headerLen {
			return fmt.Errorf("decode key %q: value of %d bytes is shorter than its header", key, len(old))
		}
		var err error
		ev, err = decide(old, rev)
		if err != nil {
			return err
		}
		var revBuf [8]byte
		binary.BigEndian.PutUint64(revBuf[:], uint64(rev))
		if err := meta.Put(keyRev, revBuf[:]); err != nil {
			return err
		}
		if ev.Type == store.EventDelete {
			return kvb.Delete([]byte(key))
		}
		// The ring keeps its own copy: the caller may reuse value.
		ev.KV.Value = bytes.Clone(value)
		return kvb.Put([]byte(key), encode(ev.KV.CreateRevision, ev.KV.ModRevision, value))
	})
	if err != nil {
		return 0, err
	}
	s.publish(ev)
	return ev.KV.ModRevision, nil
}

// publish appends a committed event to the ring and wakes watchers. It never
// blocks on a watcher.
func (s *Store) publish(ev store.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.ring)
	if s.count < n {
		s.ring[(s.start+s.count)%n] = ev
		s.count++
	} else {
		s.ring[s.start] = ev
		s.start = (s.start + 1) % n
	}
	s.rev = ev.KV.ModRevision
	close(s.notify)
	s.notify = make(chan struct{})
}

// Watch implements store.Store. Events come from the in-memory ring; a watch
// whose afterRevision predates the ring, or that falls more than the ring's
// size behind the writers, ends with ErrCompacted (reported by errf, never
// by the returned err). Cancelling ctx closes the channel and errf reports nil.
func (s *Store) Watch(ctx context.Context, prefix string, afterRevision int64) (<-chan store.Event, func() error, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, nil, fmt.Errorf("watch: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, fmt.Errorf("watch %q: %w", prefix, errClosed)
	}
	out := make(chan store.Event, watchBuffer)
	res := &watchResult{}
	s.watches.Go(func() {
		defer close(out)
		if err := s.follow(ctx, prefix, afterRevision+1, out); err != nil {
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

// follow sends events from revision next on, copying batches out of the ring
// under the lock and sending them without it.
func (s *Store) follow(ctx context.Context, prefix string, next int64, out chan<- store.Event) error {
	batch := make([]store.Event, 0, watchBatch)
	for {
		batch = batch[:0]
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return errClosed
		}
		oldest := s.rev - int64(s.count) + 1 // oldest revision in the ring
		if next < oldest {
			s.mu.Unlock()
			return store.ErrCompacted
		}
		for rev := next; rev <= s.rev && len(batch) < watchBatch; rev++ {
			batch = append(batch, s.ring[(s.start+int(rev-oldest))%len(s.ring)])
		}
		wake := s.notify
		s.mu.Unlock()

		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-s.done:
				return errClosed
			case <-wake:
			}
			continue
		}
		for _, ev := range batch {
			next = ev.KV.ModRevision + 1
			if !strings.HasPrefix(ev.KV.Key, prefix) {
				continue
			}
			// Watchers share the ring's event; each gets its own value.
			ev.KV.Value = bytes.Clone(ev.KV.Value)
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			case <-s.done:
				return errClosed
			}
		}
	}
}

// Close stops every watcher (their errf reports the store closed), waits for
// them and closes the file. Calling it again returns nil.
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
	// Wait for an in-flight write so it is published before the file closes.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %q: %w", s.path, err)
	}
	s.logger.Info("store closed", "path", s.path)
	return nil
}
