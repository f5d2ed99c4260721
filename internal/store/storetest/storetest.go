// Package storetest owns the conformance suite for store.Store: every
// backend's tests call Run, so the contract written in package store is
// checked the same way on each. It holds no backend of its own.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"verge.dev/verge/internal/store"
)

// waitLimit bounds how long the suite waits for an event that should come.
// It only turns a hang into a failure; a healthy backend answers in
// milliseconds, so no test depends on it for timing.
const waitLimit = 30 * time.Second

// Run runs the conformance suite. open returns a fresh, empty store for one
// subtest (a new file, or a new key prefix on a shared server); the suite
// closes it, and open may register its own cleanup too, so Close must be
// safe to call twice.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateGet", testCreateGet},
		{"Errors", testErrors},
		{"UpdateDelete", testUpdateDelete},
		{"OptimisticConcurrency", testOptimisticConcurrency},
		{"RevisionsIncrease", testRevisionsIncrease},
		{"ListPrefix", testListPrefix},
		{"WatchFromList", testWatchFromList},
		{"WatchOldRevision", testWatchOldRevision},
		{"WatchCancel", testWatchCancel},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

var cmpOpts = cmp.Options{cmpopts.EquateEmpty()}

func mustCreate(t *testing.T, s store.Store, key, value string) int64 {
	t.Helper()
	rev, err := s.Create(t.Context(), key, []byte(value))
	if err != nil {
		t.Fatalf("Create(%q): %v", key, err)
	}
	return rev
}

func mustUpdate(t *testing.T, s store.Store, key, value string, expect int64) int64 {
	t.Helper()
	rev, err := s.Update(t.Context(), key, []byte(value), expect)
	if err != nil {
		t.Fatalf("Update(%q, %d): %v", key, expect, err)
	}
	return rev
}

func mustDelete(t *testing.T, s store.Store, key string, expect int64) int64 {
	t.Helper()
	rev, err := s.Delete(t.Context(), key, expect)
	if err != nil {
		t.Fatalf("Delete(%q, %d): %v", key, expect, err)
	}
	return rev
}

func testCreateGet(t *testing.T, s store.Store) {
	ctx := t.Context()
	value := []byte("v1")
	rev := mustCreate(t, s, "/a/x", string(value))
	if rev <= 0 {
		t.Fatalf("Create revision = %d, want > 0", rev)
	}
	value[0] = 'X' // the store must have copied the caller's slice
	got, err := s.Get(ctx, "/a/x")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want := store.KeyValue{Key: "/a/x", Value: []byte("v1"), CreateRevision: rev, ModRevision: rev}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}
	got.Value[0] = 'Y' // returned slices are the caller's
	again, err := s.Get(ctx, "/a/x")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if diff := cmp.Diff(want, again, cmpOpts); diff != "" {
		t.Errorf("Get after mutating a returned value (-want +got):\n%s", diff)
	}
	empty := mustCreate(t, s, "/a/empty", "")
	got, err = s.Get(ctx, "/a/empty")
	if err != nil {
		t.Fatalf("Get empty: %v", err)
	}
	if diff := cmp.Diff(store.KeyValue{Key: "/a/empty", CreateRevision: empty, ModRevision: empty}, got, cmpOpts); diff != "" {
		t.Errorf("Get empty value (-want +got):\n%s", diff)
	}
}

func testErrors(t *testing.T, s store.Store) {
	ctx := t.Context()
	rev := mustCreate(t, s, "/e/present", "v")
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"get absent", func() error { _, err := s.Get(ctx, "/e/absent"); return err }, store.ErrNotFound},
		{"create existing", func() error { _, err := s.Create(ctx, "/e/present", []byte("w")); return err }, store.ErrExists},
		{"update stale", func() error { _, err := s.Update(ctx, "/e/present", []byte("w"), rev+100); return err }, store.ErrConflict},
		{"update absent with expect", func() error { _, err := s.Update(ctx, "/e/absent", []byte("w"), rev); return err }, store.ErrConflict},
		{"delete absent", func() error { _, err := s.Delete(ctx, "/e/absent", 0); return err }, store.ErrNotFound},
		{"delete absent with expect", func() error { _, err := s.Delete(ctx, "/e/absent", rev); return err }, store.ErrNotFound},
		{"delete stale", func() error { _, err := s.Delete(ctx, "/e/present", rev+100); return err }, store.ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Errorf("error = %v, want errors.Is %v", err, tt.want)
			}
		})
	}
	// Failed writes change nothing.
	got, err := s.Get(ctx, "/e/present")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want := store.KeyValue{Key: "/e/present", Value: []byte("v"), CreateRevision: rev, ModRevision: rev}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("Get after failed writes (-want +got):\n%s", diff)
	}
}

func testUpdateDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	created := mustUpdate(t, s, "/u/k", "v1", 0) // unconditional update creates
	updated := mustUpdate(t, s, "/u/k", "v2", 0) // and overwrites
	got, err := s.Get(ctx, "/u/k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want := store.KeyValue{Key: "/u/k", Value: []byte("v2"), CreateRevision: created, ModRevision: updated}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("Get after updates (-want +got):\n%s", diff)
	}
	deleted := mustDelete(t, s, "/u/k", 0)
	if deleted <= updated {
		t.Errorf("Delete revision %d, want > %d", deleted, updated)
	}
	if _, err := s.Get(ctx, "/u/k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete: error = %v, want %v", err, store.ErrNotFound)
	}
	// A re-created key starts a new life.
	again := mustCreate(t, s, "/u/k", "v3")
	got, err = s.Get(ctx, "/u/k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want = store.KeyValue{Key: "/u/k", Value: []byte("v3"), CreateRevision: again, ModRevision: again}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("Get after re-create (-want +got):\n%s", diff)
	}
}

func testOptimisticConcurrency(t *testing.T, s store.Store) {
	ctx := t.Context()
	rev := mustCreate(t, s, "/o/k", "v1")
	rev2 := mustUpdate(t, s, "/o/k", "v2", rev)
	// A second writer holding the old revision loses.
	if _, err := s.Update(ctx, "/o/k", []byte("lost"), rev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Update with stale revision: error = %v, want %v", err, store.ErrConflict)
	}
	if _, err := s.Delete(ctx, "/o/k", rev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Delete with stale revision: error = %v, want %v", err, store.ErrConflict)
	}
	got, err := s.Get(ctx, "/o/k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if string(got.Value) != "v2" || got.ModRevision != rev2 {
		t.Errorf("Get = %q at %d, want \"v2\" at %d", got.Value, got.ModRevision, rev2)
	}
	mustDelete(t, s, "/o/k", rev2)
}

func testRevisionsIncrease(t *testing.T, s store.Store) {
	var last int64
	for i := range 10 {
		key := fmt.Sprintf("/r/k%d", i%3)
		var rev int64
		switch {
		case i < 3:
			rev = mustCreate(t, s, key, "c")
		case i == 9:
			rev = mustDelete(t, s, key, 0)
		default:
			rev = mustUpdate(t, s, key, fmt.Sprint(i), 0)
		}
		if rev <= last {
			t.Fatalf("write %d (%s) got revision %d, want > %d", i, key, rev, last)
		}
		last = rev
	}
	_, listRev, err := s.List(t.Context(), "/r/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if listRev < last {
		t.Errorf("List revision %d, want >= last write %d", listRev, last)
	}
}

func testListPrefix(t *testing.T, s store.Store) {
	ctx := t.Context()
	revs := map[string]int64{}
	for _, k := range []string{"/a/c", "/ab", "/a/b/deep", "/b/x", "/a/a", "/a"} {
		revs[k] = mustCreate(t, s, k, "v"+k)
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"/a/", []string{"/a/a", "/a/b/deep", "/a/c"}},
		{"/a/b/", []string{"/a/b/deep"}},
		{"/b/", []string{"/b/x"}},
		{"/none/", nil},
		{"", []string{"/a", "/a/a", "/a/b/deep", "/a/c", "/ab", "/b/x"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("prefix %q", tt.prefix), func(t *testing.T) {
			kvs, rev, err := s.List(ctx, tt.prefix)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			var want []store.KeyValue
			for _, k := range tt.want {
				want = append(want, store.KeyValue{Key: k, Value: []byte("v" + k), CreateRevision: revs[k], ModRevision: revs[k]})
			}
			if diff := cmp.Diff(want, kvs, cmpOpts); diff != "" {
				t.Errorf("List (-want +got):\n%s", diff)
			}
			if rev < revs["/a"] {
				t.Errorf("List revision %d, want >= %d", rev, revs["/a"])
			}
		})
	}
}

// recv receives one event, failing the test if the channel closes first.
func recv(t *testing.T, ch <-chan store.Event, errf func() error) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("watch channel closed early: %v", errf())
		}
		return ev
	case <-time.After(waitLimit):
		t.Fatalf("no watch event within %v", waitLimit)
	}
	return store.Event{}
}

// drainClosed reads until the channel closes and returns what it read.
func drainClosed(t *testing.T, ch <-chan store.Event) []store.Event {
	t.Helper()
	var evs []store.Event
	timeout := time.After(waitLimit)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("watch channel not closed within %v", waitLimit)
		}
	}
}

func put(key, value string, create, mod int64) store.Event {
	return store.Event{Type: store.EventPut, KV: store.KeyValue{Key: key, Value: []byte(value), CreateRevision: create, ModRevision: mod}}
}

func del(key, prev string, create, mod int64) store.Event {
	return store.Event{Type: store.EventDelete, KV: store.KeyValue{Key: key, Value: []byte(prev), CreateRevision: create, ModRevision: mod}}
}

// eventOpts compare a delete's value only when the backend kept it, as the
// contract allows nil.
var eventOpts = cmp.Options{cmpOpts, cmp.Comparer(func(a, b store.Event) bool {
	if a.Type != b.Type || a.KV.Key != b.KV.Key || a.KV.ModRevision != b.KV.ModRevision {
		return false
	}
	if a.Type == store.EventDelete && (a.KV.Value == nil || b.KV.Value == nil) {
		return true
	}
	return string(a.KV.Value) == string(b.KV.Value) && a.KV.CreateRevision == b.KV.CreateRevision
})}

func testWatchFromList(t *testing.T, s store.Store) {
	ctx := t.Context()
	c1 := mustCreate(t, s, "/w/a", "a1")
	mustCreate(t, s, "/wx", "outside") // shares the string prefix, not the path
	_, rev, err := s.List(ctx, "/w/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	ch, errf, err := s.Watch(ctx, "/w/", rev)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	u1 := mustUpdate(t, s, "/w/a", "a2", c1)
	mustUpdate(t, s, "/wx", "outside2", 0)
	c2 := mustCreate(t, s, "/w/b", "b1")
	d1 := mustDelete(t, s, "/w/a", u1)
	u2 := mustUpdate(t, s, "/w/b", "b2", 0)
	want := []store.Event{
		put("/w/a", "a2", c1, u1),
		put("/w/b", "b1", c2, c2),
		del("/w/a", "a2", c1, d1),
		put("/w/b", "b2", c2, u2),
	}
	var got []store.Event
	for range want {
		got = append(got, recv(t, ch, errf))
	}
	if diff := cmp.Diff(want, got, eventOpts); diff != "" {
		t.Errorf("watched events (-want +got):\n%s", diff)
	}
	if err := errf(); err != nil {
		t.Errorf("errf while running = %v, want nil", err)
	}
}

// testWatchOldRevision watches from before the first write: the backend
// either replays every change since then or reports ErrCompacted. Backends
// test their own compaction cases beside this.
func testWatchOldRevision(t *testing.T, s store.Store) {
	ctx := t.Context()
	c1 := mustCreate(t, s, "/h/a", "1")
	u1 := mustUpdate(t, s, "/h/a", "2", 0)
	d1 := mustDelete(t, s, "/h/a", 0)
	ch, errf, err := s.Watch(ctx, "/h/", c1-1)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	want := []store.Event{put("/h/a", "1", c1, c1), put("/h/a", "2", c1, u1), del("/h/a", "2", c1, d1)}
	var got []store.Event
	for range want {
		ev, ok := <-ch
		if !ok {
			if err := errf(); !errors.Is(err, store.ErrCompacted) {
				t.Fatalf("watch closed with %v, want a replay or %v", err, store.ErrCompacted)
			}
			if len(got) > 0 {
				t.Fatalf("watch replayed %d events and then reported compaction", len(got))
			}
			return
		}
		got = append(got, ev)
	}
	if diff := cmp.Diff(want, got, eventOpts); diff != "" {
		t.Errorf("replayed events (-want +got):\n%s", diff)
	}
}

func testWatchCancel(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	_, rev, err := s.List(ctx, "/c/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	ch, errf, err := s.Watch(ctx, "/c/", rev)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	c1 := mustCreate(t, s, "/c/a", "1")
	if diff := cmp.Diff(put("/c/a", "1", c1, c1), recv(t, ch, errf), eventOpts); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	cancel()
	drainClosed(t, ch)
	if err := errf(); err != nil {
		t.Errorf("errf after cancel = %v, want nil", err)
	}
}

func testConcurrentWriters(t *testing.T, s store.Store) {
	const writers, writes = 8, 50
	ctx := t.Context()
	_, start, err := s.List(ctx, "/p/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	ch, errf, err := s.Watch(ctx, "/p/", start)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var (
		mu   sync.Mutex
		revs = map[int64]string{}
		wg   sync.WaitGroup
	)
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range writes {
				// Half the writers share one hot key, half write their own.
				key := fmt.Sprintf("/p/w%d", w)
				if w%2 == 0 {
					key = "/p/hot"
				}
				value := fmt.Sprintf("%d-%d", w, i)
				rev, err := s.Update(ctx, key, []byte(value), 0)
				if err != nil {
					errs <- fmt.Errorf("writer %d: Update(%q): %w", w, key, err)
					return
				}
				mu.Lock()
				dup, ok := revs[rev]
				revs[rev] = value
				mu.Unlock()
				if ok {
					errs <- fmt.Errorf("writer %d: revision %d already given to %s", w, rev, dup)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	// The watch sees every write once, in revision order.
	var last int64
	for range writers * writes {
		ev := recv(t, ch, errf)
		if ev.KV.ModRevision <= last {
			t.Fatalf("event revision %d after %d", ev.KV.ModRevision, last)
		}
		last = ev.KV.ModRevision
		if want, ok := revs[ev.KV.ModRevision]; !ok || want != string(ev.KV.Value) {
			t.Fatalf("event %s=%q at revision %d, want value %q", ev.KV.Key, ev.KV.Value, ev.KV.ModRevision, want)
		}
		delete(revs, ev.KV.ModRevision)
	}
	if len(revs) != 0 {
		missing := make([]int64, 0, len(revs))
		for r := range revs {
			missing = append(missing, r)
		}
		slices.Sort(missing)
		t.Errorf("watch missed revisions %v", missing)
	}
}

func testClose(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustCreate(t, s, "/z/a", "1")
	_, rev, err := s.List(ctx, "/z/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	ch, _, err := s.Watch(ctx, "/z/", rev)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	drainClosed(t, ch) // Close ends watches
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
