// Package store owns durable storage of accepted resources: one small
// interface, Store, and its backends (bbolt in store/bolt, etcd in store/etcd).
// The store keeps opaque bytes under keys with a monotonically increasing
// revision; it knows nothing of resource kinds, decoding or validation, which
// happen before a value reaches it (api/v1alpha1 and the API server).
//
// Contract shared by every backend, checked by the conformance suite in
// store/storetest:
//   - A write that returned without error is durable: it survives kill -9 of
//     the process at any later moment.
//   - Every successful write gets a revision greater than any before it, across
//     all keys. A value's ModRevision is the revision of its last write; it is
//     the resource's resourceVersion.
//   - Watch delivers every change after the given revision, in revision order,
//     without gaps; when the backend no longer holds history that old it fails
//     with ErrCompacted and the caller lists again.
package store

import (
	"context"
	"errors"
)

// Sentinel errors; backends wrap them so callers test with errors.Is.
var (
	ErrNotFound  = errors.New("store: not found")
	ErrExists    = errors.New("store: already exists")
	ErrConflict  = errors.New("store: revision conflict")
	ErrCompacted = errors.New("store: revision compacted")
)

// KeyValue is one stored value.
type KeyValue struct {
	Key   string
	Value []byte
	// CreateRevision is the revision of the write that created the key.
	CreateRevision int64
	// ModRevision is the revision of the last write to the key.
	ModRevision int64
}

// EventType says what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change delivered by Watch. For EventDelete, KV.Value holds the
// value before deletion when the backend has it (nil otherwise) and
// KV.ModRevision is the revision of the delete.
type Event struct {
	Type EventType
	KV   KeyValue
}

// Store is the interface every backend implements. Keys are slash-separated
// paths that start with "/" ("/verge.dev/services/default/web"); a prefix
// ends with "/", and the empty prefix means every key. Backends refuse keys
// and non-empty prefixes that do not start with "/".
// All methods are safe for concurrent use; returned slices are owned by the
// caller.
type Store interface {
	// Get returns the value at key, or ErrNotFound.
	Get(ctx context.Context, key string) (KeyValue, error)
	// List returns every key under prefix in key order, and the store's
	// revision at the time of the read (to start a Watch from without gaps).
	List(ctx context.Context, prefix string) (kvs []KeyValue, revision int64, err error)
	// Create writes key only if it does not exist (ErrExists otherwise) and
	// returns the new revision.
	Create(ctx context.Context, key string, value []byte) (revision int64, err error)
	// Update writes key. With expectRevision > 0 the write happens only if
	// the key's ModRevision equals it (ErrConflict otherwise, also when the
	// key is absent); with 0 it creates or overwrites unconditionally.
	// Returns the new revision.
	Update(ctx context.Context, key string, value []byte, expectRevision int64) (revision int64, err error)
	// Delete removes key (ErrNotFound if absent, whatever expectRevision),
	// with the same expectRevision rule as Update. Returns the revision of
	// the delete.
	Delete(ctx context.Context, key string, expectRevision int64) (revision int64, err error)
	// Watch streams changes to keys under prefix with revisions greater than
	// afterRevision. The channel is closed when ctx ends or the watch fails;
	// the error, if any, is then reported by the function returned as errf
	// (ErrCompacted when afterRevision is too old; it is never returned as
	// err, which is only for a bad prefix or a closed store). Cancelling ctx
	// closes the channel and errf reports nil. A slow reader is not allowed
	// to block writers: a backend that cannot keep up closes the channel and
	// reports ErrCompacted. One goroutine per watch, owned by the backend,
	// ends before Close returns.
	Watch(ctx context.Context, prefix string, afterRevision int64) (events <-chan Event, errf func() error, err error)
	// Close ends every watch, then releases the backend. A second call
	// returns nil.
	Close() error
}
