package etcd

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"verge.dev/verge/internal/store"
	"verge.dev/verge/internal/store/etcd/etcdtest"
	"verge.dev/verge/internal/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var prefixes atomic.Int64

// newStore opens a Store under a prefix no other test uses.
func newStore(t *testing.T, endpoints []string) *Store {
	t.Helper()
	prefix := fmt.Sprintf("/test-%d-%s", prefixes.Add(1), strings.ReplaceAll(t.Name(), "/", "_"))
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := New(t.Context(), Config{Endpoints: endpoints, Prefix: prefix}, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	endpoints := etcdtest.Start(t)
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t, endpoints) })
}

// TestSiblingPrefix checks that an empty store prefix lists only this
// Store's keys, not those of a Store whose Prefix merely starts the same.
func TestSiblingPrefix(t *testing.T) {
	endpoints := etcdtest.Start(t)
	ctx := t.Context()
	logger := slog.New(slog.DiscardHandler)
	a, err := New(ctx, Config{Endpoints: endpoints, Prefix: "/sib/"}, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := New(ctx, Config{Endpoints: endpoints, Prefix: "/sib2"}, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := b.Create(ctx, "/x", []byte("b")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	kvs, _, err := a.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(kvs) != 0 {
		t.Errorf("List under /sib returned %v, want nothing", kvs)
	}
}

func TestWatchCompacted(t *testing.T) {
	endpoints := etcdtest.Start(t)
	ctx := t.Context()
	s := newStore(t, endpoints)
	first, err := s.Create(ctx, "/k", []byte("1"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	last, err := s.Update(ctx, "/k", []byte("2"), 0)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	defer cli.Close()
	if _, err := cli.Compact(ctx, last, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	ch, errf, err := s.Watch(ctx, "/", first-1)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	for ev := range ch {
		t.Errorf("compacted watch delivered %v", ev)
	}
	if err := errf(); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("errf = %v, want %v", err, store.ErrCompacted)
	}
}

func TestNewUnreachable(t *testing.T) {
	_, err := New(t.Context(), Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 200 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("New with an unreachable endpoint succeeded")
	}
}
